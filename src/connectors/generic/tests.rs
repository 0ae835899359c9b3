//! The generic connector as an administrator meets it: the file format's validation, parsing of
//! awkward deliveries, and the worked Zendesk example against the Zendesk simulator (confirmation
//! through audits, internal-note and status writebacks, rate limits, error envelopes, host
//! pinning).

use std::path::Path;
use std::time::Duration;

use jitbridge_sim::zendesk::{self as zd, NewTicket, ZendeskSim, ZendeskSimConfig, users};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::connectors::{RawDelivery, WritebackAction};
use crate::ticket::EventKind;

const EXAMPLE: &str = include_str!("../../../connectors/zendesk.toml.example");
const SHARED_KEYS: [&str; 7] = [
    "id",
    "kind",
    "base_url",
    "inbound",
    "outbound",
    "confirm_approvals",
    "timeout",
];

/// The kind-specific tables of a connector file, as the config loader hands them over.
fn options_table(text: &str) -> toml::Table {
    let mut t: toml::Table = toml::from_str(text).expect("valid TOML");
    for k in SHARED_KEYS {
        t.remove(k);
    }
    t
}

fn example() -> Options {
    Options::from_table(
        &options_table(EXAMPLE),
        Path::new("connectors/zendesk.toml"),
    )
    .unwrap_or_else(|ps| panic!("the example must load: {ps:#?}"))
}

fn problems(text: &str) -> Vec<(String, String)> {
    match Options::from_table(&options_table(text), Path::new("x.toml")) {
        Ok(_) => Vec::new(),
        Err(ps) => ps.into_iter().map(|p| (p.key, p.why)).collect(),
    }
}

fn has(ps: &[(String, String)], key: &str, needle: &str) -> bool {
    ps.iter().any(|(k, w)| k == key && w.contains(needle))
}

fn connector(base: &str, options: Options) -> GenericConnector {
    connector_with_token(base, options, users::API_TOKEN)
}

fn connector_with_token(base: &str, options: Options, token: &str) -> GenericConnector {
    GenericConnector::new(
        "zendesk".into(),
        reqwest::Url::parse(base).expect("url"),
        OutboundAuth::Basic {
            username: format!("{}/token", users::API_EMAIL),
            password: secrecy::SecretString::from(token.to_owned()),
        },
        Duration::from_secs(5),
        reqwest::Client::new(),
        options,
    )
}

fn delivery(body: &Value) -> RawDelivery {
    RawDelivery {
        headers: vec![(
            "X-Zendesk-Webhook-Invocation-Id".into(),
            "8000000001".into(),
        )],
        body: serde_json::to_vec(body).expect("json"),
    }
}

fn zendesk_body(event: &str, approval: &str) -> Value {
    json!({"event": event,
           "ticket": {"id": "35436", "status": "Open", "type": "Task", "link": "https://elsewhere.example/t/1",
                      "updated_at": "2025-03-14T08:41:37Z", "approval": approval,
                      "target": "WS-0042", "duration": "2h"},
           "requester": {"id": "1001", "email": "alice@example.com", "name": "Alice Requester"},
           "current_user": {"id": "1002", "email": "bob@example.com", "name": "Bob Approver"}})
}

fn ticket_ref(id: u64) -> TicketRef {
    TicketRef {
        connector: "zendesk".into(),
        id: id.to_string(),
        key: id.to_string(),
        url: None,
    }
}

// ---- the file format --------------------------------------------------------------------------

#[test]
fn the_worked_example_loads_and_compiles() {
    let o = example();
    assert_eq!(o.confirm.as_ref().map(|c| c.requests.len()), Some(4));
    assert!(o.comment.is_some() && o.status.is_some() && o.healthcheck.is_some());
    assert_eq!(o.errors.rate_limit_status, vec![429]);
}

#[test]
fn a_file_without_parse_or_with_unknown_tables_is_refused() {
    let ps = problems("[pasre]\nticket_id = \"$.id\"\n");
    assert!(
        has(&ps, "pasre", "unknown key for a generic connector"),
        "{ps:?}"
    );
    assert!(has(&ps, "parse", "missing"), "{ps:?}");
}

#[test]
fn every_parse_problem_is_reported_with_its_key() {
    let ps = problems(
        r#"
[parse]
ticket_id = "fixed"
occurred_at = "$.when["
summary = ""
previous_status = "$.prev"
fields = "ticket"
dedupe = "header:Bad Header"
ticket_url = "https://evil.example/{{ ticket.id }}"
[parse.approval_values]
rejected = ["no", "NO ", " "]
pending = ["no"]
[parse.events]
approved = ["yes"]
"#,
    );
    assert!(has(&ps, "parse.ticket_id", "must be a JSONPath"), "{ps:?}");
    assert!(
        has(&ps, "parse.occurred_at", "not an RFC 9535 JSONPath"),
        "{ps:?}"
    );
    assert!(has(&ps, "parse.summary", "must not be empty"), "{ps:?}");
    assert!(
        has(&ps, "parse.previous_status", "needs `status`"),
        "{ps:?}"
    );
    assert!(has(&ps, "parse.fields", "must be a JSONPath"), "{ps:?}");
    assert!(
        has(&ps, "parse.dedupe", "not a valid header name"),
        "{ps:?}"
    );
    assert!(has(&ps, "parse.ticket_url", "must start with"), "{ps:?}");
    assert!(
        has(&ps, "parse.approval_values.rejected[2]", "blank"),
        "{ps:?}"
    );
    assert!(
        has(
            &ps,
            "parse.approval_values.pending[0]",
            "also listed under rejected"
        ),
        "{ps:?}"
    );
    assert!(
        has(&ps, "parse.approval_values.approved", "at least one"),
        "{ps:?}"
    );
    assert!(has(&ps, "parse.events", "no `event`"), "{ps:?}");
}

#[test]
fn required_parse_keys_and_unknown_keys_are_reported() {
    let ps = problems("[parse]\nticket_idd = \"$.id\"\n");
    assert!(
        has(&ps, "parse.ticket_idd", "unknown field `ticket_idd`"),
        "{ps:?}"
    );
    let ps = problems("[parse]\nstatus = \"$.s\"\n");
    assert!(has(&ps, "parse.ticket_id", "missing"), "{ps:?}");
    assert!(has(&ps, "parse.occurred_at", "missing"), "{ps:?}");
    let ps = problems(
        "[parse]\nticket_id = \"$.id\"\noccurred_at = \"$.t\"\n[parse.events]\nexploded = [\"x\"]\n",
    );
    assert!(
        has(&ps, "parse.events.exploded", "unknown field `exploded`"),
        "{ps:?}"
    );
}

const MIN_PARSE: &str = "[parse]\nticket_id = \"$.id\"\noccurred_at = \"$.t\"\n";

#[test]
fn every_confirm_problem_is_reported_with_its_key() {
    let ps = problems(&format!(
        r#"{MIN_PARSE}
[[confirm.request]]
url = "https://evil.example/api/{{{{ ticket.id }}}}"
extract.approver_ids = "$.a"
[[confirm.request]]
url = "{{{{ base_url }}}}/users/{{{{ item }}}}/{{{{ later }}}}"
for_each = "nobody"
extract.approver_ids = "$.b"
extract.ticket = "$.c"
extract.Bad-Name = "$.d"
extract.later = "not a path"
[[confirm.request]]
url = "{{{{ base_url }}}}/x/{{{{ "
"#
    ));
    assert!(
        has(&ps, "confirm.request[0].url", "must start with"),
        "{ps:?}"
    );
    assert!(
        has(
            &ps,
            "confirm.request[1].for_each",
            "not extracted by an earlier request"
        ),
        "{ps:?}"
    );
    assert!(
        has(&ps, "confirm.request[1].url", "`item`, `later`"),
        "{ps:?}"
    );
    assert!(
        has(
            &ps,
            "confirm.request[1].extract.approver_ids",
            "already extracted"
        ),
        "{ps:?}"
    );
    assert!(
        has(&ps, "confirm.request[1].extract.ticket", "reserved"),
        "{ps:?}"
    );
    assert!(
        has(&ps, "confirm.request[1].extract.Bad-Name", "lower-case"),
        "{ps:?}"
    );
    assert!(
        has(
            &ps,
            "confirm.request[1].extract.later",
            "must be a JSONPath"
        ),
        "{ps:?}"
    );
    assert!(
        has(&ps, "confirm.request[2].url", "does not compile"),
        "{ps:?}"
    );
    assert!(
        has(&ps, "confirm.request[2].extract", "extracts nothing"),
        "{ps:?}"
    );
    assert!(
        has(&ps, "confirm.request", "nothing would be confirmed"),
        "{ps:?}"
    );
    assert!(
        has(
            &ps,
            "confirm.request",
            "`approver_ids` is extracted but `approval` is not"
        ),
        "{ps:?}"
    );
}

#[test]
fn an_empty_confirm_table_is_refused() {
    let ps = problems(&format!("{MIN_PARSE}[confirm]\n"));
    assert!(has(&ps, "confirm.request", "at least one"), "{ps:?}");
    let ps = problems(&format!(
        "{MIN_PARSE}[[confirm.request]]\nurl = \"{{{{ base_url }}}}/t\"\nextract.status = \"$.s\"\nmethod = \"POST\"\n"
    ));
    assert!(
        has(&ps, "confirm.request[0].method", "unknown field `method`"),
        "{ps:?}"
    );
    assert!(
        ps.iter().all(|(_, why)| !why.contains('\n')),
        "one line per problem: {ps:?}"
    );
}

#[test]
fn every_writeback_and_errors_problem_is_reported_with_its_key() {
    let ps = problems(&format!(
        r#"{MIN_PARSE}
[writeback.comment]
method = "TELEPORT"
url = "{{{{ base_url }}}}/t/{{{{ ticket.id }}}}"
headers = {{ Authorization = "Bearer abc", "X-Note" = "{{{{ secret }}}}", "Bad Header" = "x" }}
body = '{{"comment": "{{{{ text }}}}"}}'
[writeback.status]
body = '{{"status": {{{{ status | tojson }}}}}}'
[errors]
message = ["error"]
rate_limit_status = [200, 429]
retry_after_header = "Retry After"
"#
    ));
    assert!(has(&ps, "writeback.comment.method", "not one of"), "{ps:?}");
    assert!(
        has(
            &ps,
            "writeback.comment.headers.Authorization",
            "credentials come only from [outbound]"
        ),
        "{ps:?}"
    );
    assert!(
        has(&ps, "writeback.comment.headers.X-Note", "`secret`"),
        "{ps:?}"
    );
    assert!(
        has(
            &ps,
            "writeback.comment.headers.Bad Header",
            "not a valid header name"
        ),
        "{ps:?}"
    );
    assert!(has(&ps, "writeback.status.url", "missing"), "{ps:?}");
    assert!(
        has(&ps, "errors.message[0]", "must be a JSONPath"),
        "{ps:?}"
    );
    assert!(
        has(
            &ps,
            "errors.rate_limit_status[0]",
            "not an HTTP error status"
        ),
        "{ps:?}"
    );
    assert!(
        has(&ps, "errors.retry_after_header", "not a valid header name"),
        "{ps:?}"
    );
}

#[test]
fn a_body_that_forgets_tojson_is_caught_by_check() {
    let ps = problems(&format!(
        "{MIN_PARSE}[writeback.comment]\nurl = \"{{{{ base_url }}}}/t\"\nbody = '{{\"comment\": \"{{{{ text }}}}\"}}'\n"
    ));
    assert!(has(&ps, "writeback.comment.body", "tojson"), "{ps:?}");
}

#[test]
fn a_type_error_names_the_nested_key() {
    let ps = problems(&format!(
        "{MIN_PARSE}[errors]\nrate_limit_status = \"429\"\n"
    ));
    assert!(
        ps.iter()
            .any(|(k, _)| k.starts_with("errors.rate_limit_status")),
        "{ps:?}"
    );
}

// ---- parsing ----------------------------------------------------------------------------------

fn parse_with(options: Options, body: &Value) -> Result<Vec<TicketEvent>, ParseError> {
    connector("https://acme.zendesk.com", options).parse(&delivery(body))
}

#[test]
fn an_approval_delivery_becomes_an_approved_event_with_the_actor_as_approver() {
    let events = parse_with(
        example(),
        &zendesk_body("approval:jit_approved", "jit_approved"),
    )
    .expect("parses");
    let [e] = events.as_slice() else {
        panic!("one event: {events:?}")
    };
    assert_eq!(e.kind, EventKind::Approved);
    assert_eq!(e.ticket.id, "35436");
    assert_eq!(e.ticket.key, "35436");
    assert_eq!(
        e.ticket.url.as_deref(),
        Some("https://acme.zendesk.com/agent/tickets/35436"),
        "the link comes from base_url, not from the body"
    );
    assert_eq!(e.ticket.status.as_deref(), Some("Open"));
    assert_eq!(e.ticket.kind.as_deref(), Some("Task"));
    assert_eq!(
        e.requester.as_ref().and_then(|p| p.email.as_deref()),
        Some("alice@example.com")
    );
    assert_eq!(e.actor.as_ref().and_then(|p| p.id.as_deref()), Some("1002"));
    let approval = e.approval.as_ref().expect("approval");
    assert_eq!(approval.state, "approved");
    assert_eq!(
        approval.approvers.first().and_then(|p| p.email.as_deref()),
        Some("bob@example.com")
    );
    assert_eq!(
        e.occurred_at,
        "2025-03-14T08:41:37Z"
            .parse::<jiff::Timestamp>()
            .expect("ts")
    );
    assert_eq!(e.fields["target"], "WS-0042");
    assert_eq!(e.payload["event"], "approval:jit_approved");
}

#[test]
fn unmapped_events_are_ignored_and_unmapped_approval_words_are_never_approved() {
    assert_eq!(
        parse_with(example(), &zendesk_body("ticket_merged", "")).expect("parses"),
        vec![]
    );
    let events =
        parse_with(example(), &zendesk_body("ticket_created", "Approved!")).expect("parses");
    assert_eq!(events.first().map(|e| e.kind), Some(EventKind::Created));
    assert_eq!(
        events
            .first()
            .and_then(|e| e.approval.as_ref())
            .map(|a| a.state.as_str()),
        Some("unknown")
    );
    let events = parse_with(
        example(),
        &zendesk_body("APPROVAL:JIT_REJECTED", "JIT_REJECTED"),
    )
    .expect("parses");
    assert_eq!(
        events.first().map(|e| e.kind),
        Some(EventKind::Rejected),
        "words match case-insensitively"
    );
}

#[test]
fn deliveries_without_what_the_file_requires_are_parse_errors() {
    let mut body = zendesk_body("ticket_created", "");
    body["ticket"]["id"] = json!("");
    let err = parse_with(example(), &body).expect_err("empty id");
    assert!(err.reason.contains("parse.ticket_id"), "{err}");
    let mut body = zendesk_body("ticket_created", "");
    body["ticket"]["updated_at"] = json!("last tuesday");
    assert!(
        parse_with(example(), &body)
            .expect_err("bad time")
            .reason
            .contains("occurred_at")
    );
    let mut body = zendesk_body("ticket_created", "");
    body["ticket"]["id"] = json!("1\u{0}2");
    assert!(
        parse_with(example(), &body).is_err(),
        "control characters in ids are refused"
    );
    let body = json!({"ticket": {"id": 1}});
    assert!(
        parse_with(example(), &body)
            .expect_err("no event")
            .reason
            .contains("parse.event")
    );
    let c = connector("https://acme.zendesk.com", example());
    for raw in [&b"not json"[..], b"[1,2]", b"\"s\"", b""] {
        assert!(
            c.parse(&RawDelivery {
                headers: vec![],
                body: raw.to_vec()
            })
            .is_err()
        );
    }
}

#[test]
fn awkward_bodies_parse_numbers_nulls_and_status_changes() {
    let o = Options::from_table(
        &options_table(
            r#"
[parse]
ticket_id = "$.data.record.number"
ticket_key = "$.data.record.key"
status = "$.data.record.state.display_value"
previous_status = "$.data.previous.state"
occurred_at = "$.data.ts"
requester_email = "$.data.record.caller[0].email"
fields = "$.data.record"
summary = "$.data.record.title"
project = "Service desk"
dedupe = "$.data.delivery"
"#,
        ),
        Path::new("x.toml"),
    )
    .expect("valid");
    let body = json!({"data": {"record": {"number": 4711, "key": null, "title": null,
                                          "state": {"display_value": "Approved", "value": "3"},
                                          "caller": [{"email": "dora@example.com"}]},
                               "previous": {"state": "Waiting"}, "ts": 1741941697000u64, "delivery": 99}});
    let c = connector("https://acme.example", o);
    let events = c.parse(&delivery(&body)).expect("parses");
    let e = events.first().expect("one");
    assert_eq!(
        (e.ticket.id.as_str(), e.ticket.key.as_str()),
        ("4711", "4711")
    );
    assert_eq!(e.kind, EventKind::Updated);
    assert_eq!(e.ticket.summary, None);
    assert_eq!(e.ticket.project.as_deref(), Some("Service desk"));
    assert_eq!(
        e.status_change
            .as_ref()
            .map(|s| (s.from.as_deref(), s.to.as_str())),
        Some((Some("Waiting"), "Approved"))
    );
    assert_eq!(
        e.requester.as_ref().and_then(|p| p.email.as_deref()),
        Some("dora@example.com")
    );
    assert_eq!(e.occurred_at.as_second(), 1_741_941_697);
    assert_eq!(e.fields["number"], 4711);
    assert_eq!(c.dedupe_key(&delivery(&body)), "generic-path:99");
    let no_id = json!({"data": {"ts": 1}});
    assert_eq!(
        c.dedupe_key(&delivery(&no_id)),
        crate::connectors::body_hash_key(&serde_json::to_vec(&no_id).expect("json"))
    );
}

#[test]
fn dedupe_uses_the_configured_header_or_the_body_hash() {
    let c = connector("https://acme.zendesk.com", example());
    let d = delivery(&zendesk_body("ticket_created", ""));
    assert_eq!(c.dedupe_key(&d), "generic-header:8000000001");
    let without = RawDelivery {
        headers: vec![(
            "x-zendesk-webhook-invocation-id".into(),
            "has spaces in it".into(),
        )],
        body: d.body.clone(),
    };
    assert_eq!(
        c.dedupe_key(&without),
        crate::connectors::body_hash_key(&d.body)
    );
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "(?s).{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("35436"),
            Just("approval:jit_approved"),
            Just("2025-03-14T08:41:37Z"),
            Just("jit_approved")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("ticket".to_owned()),
                    Just("id".to_owned()),
                    Just("event".to_owned()),
                    Just("updated_at".to_owned()),
                    Just("approval".to_owned()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_json_never_panics_the_parser(doc in arb_json()) {
        let c = connector("https://acme.zendesk.com", example());
        let d = delivery(&doc);
        let _ = c.dedupe_key(&d);
        if let Ok(events) = c.parse(&d) {
            for e in events {
                prop_assert!(!e.ticket.id.is_empty());
                prop_assert!(e.approval.as_ref().is_none_or(|a| a.state != "approved" || doc.to_string().contains("jit_approved")));
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parser(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let c = connector("https://acme.zendesk.com", example());
        let d = RawDelivery { headers: vec![], body };
        let _ = c.dedupe_key(&d);
        let _ = c.parse(&d);
    }
}

// ---- against the Zendesk simulator --------------------------------------------------------------

async fn sim() -> ZendeskSim {
    ZendeskSim::start(ZendeskSimConfig::default())
        .await
        .expect("sim starts")
}

async fn raised_ticket(zd: &ZendeskSim) -> u64 {
    zd.create_ticket(
        NewTicket::new(users::ALICE, "Local admin on WS-0042")
            .field(zd::TARGET_FIELD, json!("WS-0042"))
            .field(zd::DURATION_FIELD, json!("2h")),
    )
    .await
    .expect("ticket")
    .ticket_id
}

#[tokio::test]
async fn approval_is_confirmed_through_the_ticket_its_audits_and_the_users() {
    let zd = sim().await;
    let id = raised_ticket(&zd).await;
    zd.set_approval(id, "jit_approved", users::BOB)
        .await
        .expect("approve");
    let c = connector(zd.base_url(), example());
    let conf = c.confirm(&ticket_ref(id)).await.expect("confirms");
    assert_eq!(conf.status.as_deref(), Some("open"));
    let approval = conf.approval.expect("approval");
    assert_eq!(approval.state, "approved");
    assert_eq!(approval.approvers.len(), 1, "{:?}", approval.approvers);
    assert_eq!(approval.approvers[0].id.as_deref(), Some("1002"));
    assert_eq!(
        approval.approvers[0].email.as_deref(),
        Some("bob@example.com")
    );
    let requester = conf.requester.expect("requester");
    assert_eq!(requester.email.as_deref(), Some("alice@example.com"));
    assert_eq!(requester.id.as_deref(), Some("1001"));
    let paths: Vec<String> = zd
        .requests()
        .await
        .into_iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        paths,
        vec![
            format!("GET /api/v2/tickets/{id}.json"),
            format!("GET /api/v2/tickets/{id}/audits.json"),
            "GET /api/v2/users/1001.json".to_owned(),
            "GET /api/v2/users/1002.json".to_owned(),
        ]
    );
}

#[tokio::test]
async fn an_earlier_self_approval_stays_visible_among_the_approvers() {
    let zd = sim().await;
    let id = raised_ticket(&zd).await;
    zd.set_approval(id, "jit_approved", users::ALICE)
        .await
        .expect("self-approve");
    zd.set_approval(id, "jit_pending", users::CAROL)
        .await
        .expect("reset");
    zd.set_approval(id, "jit_approved", users::BOB)
        .await
        .expect("approve");
    let conf = connector(zd.base_url(), example())
        .confirm(&ticket_ref(id))
        .await
        .expect("confirms");
    let approval = conf.approval.expect("approval");
    let emails: Vec<_> = approval
        .approvers
        .iter()
        .filter_map(|p| p.email.clone())
        .collect();
    assert_eq!(emails, vec!["alice@example.com", "bob@example.com"]);
    let requester = conf.requester.expect("requester");
    assert!(
        approval
            .approvers
            .iter()
            .any(|a| a.same_identity(&requester)),
        "the SoD policy will see it"
    );
}

#[tokio::test]
async fn a_pending_or_rejected_approval_is_not_confirmed() {
    let zd = sim().await;
    let id = raised_ticket(&zd).await;
    let c = connector(zd.base_url(), example());
    let conf = c.confirm(&ticket_ref(id)).await.expect("confirms");
    let a = conf.approval.expect("approval");
    assert_eq!((a.state.as_str(), a.approvers.len()), ("pending", 0));
    zd.set_approval(id, "jit_rejected", users::BOB)
        .await
        .expect("reject");
    let a = c
        .confirm(&ticket_ref(id))
        .await
        .expect("confirms")
        .approval
        .expect("approval");
    assert_eq!(a.state, "rejected");
    assert!(
        a.approvers.is_empty(),
        "only those who set `approved` are approvers"
    );
}

#[tokio::test]
async fn comment_and_status_writebacks_reach_the_ticket() {
    let zd = sim().await;
    let id = raised_ticket(&zd).await;
    let c = connector(zd.base_url(), example());
    let text =
        "Local admin granted to alice@example.com on \"WS-0042\"\nuntil 18:00 <UTC> & C:\\Temp";
    let wb = |action| Writeback {
        ticket: ticket_ref(id),
        action,
        marker: "jitbridge:g1:active:comment".into(),
    };
    c.write_back(&wb(WritebackAction::Comment { text: text.into() }))
        .await
        .expect("comment");
    c.write_back(&wb(WritebackAction::Status {
        name: "Solved".into(),
    }))
    .await
    .expect("status");
    let t = zd.ticket(id).await.expect("ticket");
    let last = t.comments.last().expect("comment");
    assert_eq!(
        last.body,
        format!("{text}\n\njitbridge:g1:active:comment"),
        "text survives JSON escaping intact and ends with its marker"
    );
    assert!(!last.public, "written as an internal note");
    assert_eq!(last.author_id, users::JITBRIDGE);
    assert_eq!(t.status, "solved");
    let puts: Vec<_> = zd
        .requests()
        .await
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 2);
    assert_eq!(puts[1].body, Some(json!({"ticket": {"status": "solved"}})));
    assert_eq!(puts[0].user.as_deref(), Some("jitbridge@example.com/token"));
}

#[tokio::test]
async fn writeback_exists_finds_a_comment_by_the_marker_it_carries() {
    let zd = sim().await;
    let id = raised_ticket(&zd).await;
    // The shipped example itself marks its notes and looks for the marker before a re-post.
    let text = EXAMPLE;
    assert!(
        text.contains("~ marker") && text.contains("[writeback.exists]"),
        "the example no longer marks its comments"
    );
    let options = Options::from_table(&options_table(text), Path::new("z.toml"))
        .unwrap_or_else(|ps| panic!("{ps:#?}"));
    let c = connector(zd.base_url(), options);
    let wb = Writeback {
        ticket: ticket_ref(id),
        action: WritebackAction::Comment {
            text: "Local admin granted.".into(),
        },
        marker: "jitbridge:g1:active:comment".into(),
    };
    assert!(!c.has_comment(&wb).await.expect("lookup"), "not posted yet");
    c.write_back(&wb).await.expect("comment");
    assert!(c.has_comment(&wb).await.expect("lookup"));
    let other = Writeback {
        marker: "jitbridge:g2:active:comment".into(),
        ..wb.clone()
    };
    assert!(!c.has_comment(&other).await.expect("lookup"));
}

#[tokio::test]
async fn without_writeback_exists_a_comment_is_never_reported_as_posted() {
    let zd = sim().await;
    let id = raised_ticket(&zd).await;
    let c = connector(zd.base_url(), example());
    let wb = Writeback {
        ticket: ticket_ref(id),
        action: WritebackAction::Comment { text: "x".into() },
        marker: "jitbridge:g1:active:comment".into(),
    };
    assert!(!c.has_comment(&wb).await.expect("no lookup configured"));
}

#[tokio::test]
async fn rate_limits_carry_retry_after_and_outages_are_retryable() {
    let zd = sim().await;
    let id = raised_ticket(&zd).await;
    let c = connector(zd.base_url(), example());
    zd.rate_limit(1, 42).await;
    let err = c.confirm(&ticket_ref(id)).await.expect_err("429");
    assert!(
        matches!(err, ConnectorError::RateLimited { status: 429, .. }),
        "{err:?}"
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(42)));
    assert!(err.to_string().contains("APIRateLimitExceeded"), "{err}");
    zd.outage(1).await;
    let err = c
        .write_back(&Writeback {
            ticket: ticket_ref(id),
            action: WritebackAction::Comment { text: "x".into() },
            marker: "m".into(),
        })
        .await
        .expect_err("503");
    assert!(
        matches!(
            err,
            ConnectorError::Unavailable {
                status: Some(503),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    c.confirm(&ticket_ref(id))
        .await
        .expect("works again after the faults");
}

#[tokio::test]
async fn error_envelopes_become_rejections_with_zendesks_message() {
    let zd = sim().await;
    let id = raised_ticket(&zd).await;
    let c = connector(zd.base_url(), example());
    let err = c.confirm(&ticket_ref(999_999)).await.expect_err("404");
    assert!(
        matches!(&err, ConnectorError::Rejected { status: 404, detail } if detail.contains("RecordNotFound: Not found")),
        "{err:?}"
    );
    zd.set_status(id, "closed", users::CAROL)
        .await
        .expect("close");
    let err = c
        .write_back(&Writeback {
            ticket: ticket_ref(id),
            action: WritebackAction::Status {
                name: "open".into(),
            },
            marker: "m".into(),
        })
        .await
        .expect_err("422");
    assert!(
        matches!(&err, ConnectorError::Rejected { status: 422, detail } if detail.contains("Status: closed prevents ticket update")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn bad_credentials_are_rejected_without_echoing_the_token() {
    let zd = sim().await;
    let c = connector_with_token(zd.base_url(), example(), "wrong-s3cret-token");
    let err = c.healthcheck().await.expect_err("401");
    assert!(
        matches!(err, ConnectorError::Rejected { status: 401, .. }),
        "{err:?}"
    );
    let text = format!("{err} {err:?} {c:?}");
    assert!(!text.contains("wrong-s3cret-token"), "{text}");
    let port = zd.addr().port().to_string();
    assert!(
        !format!("{err}").contains(&port),
        "errors name the path, not the host: {err}"
    );
    connector(zd.base_url(), example())
        .healthcheck()
        .await
        .expect("good credentials");
}

#[tokio::test]
async fn requests_never_leave_the_base_host() {
    let zd = sim().await;
    raised_ticket(&zd).await;
    // A template cannot put anything before the path: the file is refused by `jitbridge check`.
    let steer = format!(
        "{MIN_PARSE}[[confirm.request]]\nurl = \"{{{{ base_url }}}}@evil.example/api/v2/tickets/{{{{ ticket.id }}}}.json\"\nextract.status = \"$.ticket.status\"\n"
    );
    let ps = problems(&steer);
    assert!(
        has(&ps, "confirm.request[0].url", "must start with"),
        "{ps:?}"
    );
    // And a delivery cannot move the host through a value: `@evil.example` is encoded.
    let c = connector(zd.base_url(), example());
    zd.clear_requests().await;
    let err = c
        .confirm(&ticket_ref_str("@evil.example"))
        .await
        .expect_err("not a ticket");
    assert!(
        matches!(err, ConnectorError::Rejected { status: 404, .. }),
        "{err:?}"
    );
    assert_eq!(
        zd.requests().await.first().map(|r| r.path.clone()),
        Some("/api/v2/tickets/%40evil.example.json".to_owned())
    );
    // An id crafted to climb out of its path segment stays inside it.
    zd.clear_requests().await;
    let err = c
        .confirm(&ticket_ref_str("1/../../users/me"))
        .await
        .expect_err("not a ticket");
    assert!(
        matches!(err, ConnectorError::Rejected { status: 404, .. }),
        "{err:?}"
    );
    assert_eq!(
        zd.requests().await.first().map(|r| r.path.clone()),
        Some("/api/v2/tickets/1%2F..%2F..%2Fusers%2Fme.json".to_owned())
    );
}

fn ticket_ref_str(id: &str) -> TicketRef {
    TicketRef {
        connector: "zendesk".into(),
        id: id.into(),
        key: id.into(),
        url: None,
    }
}

#[tokio::test]
async fn without_confirm_or_writeback_tables_the_calls_explain_themselves() {
    let o =
        Options::from_table(&options_table(MIN_PARSE), Path::new("x.toml")).expect("minimal file");
    let c = connector("http://127.0.0.1:9", o);
    let err = c.confirm(&ticket_ref(1)).await.expect_err("no confirm");
    assert!(
        matches!(&err, ConnectorError::Invalid(why) if why.contains("confirm_approvals = false")),
        "{err:?}"
    );
    let err = c
        .write_back(&Writeback {
            ticket: ticket_ref(1),
            action: WritebackAction::Comment { text: "x".into() },
            marker: "m".into(),
        })
        .await
        .expect_err("no writeback");
    assert!(
        matches!(&err, ConnectorError::Invalid(why) if why.contains("[writeback.comment]")),
        "{err:?}"
    );
    c.healthcheck()
        .await
        .expect("no healthcheck configured is healthy");
}

#[tokio::test]
async fn unreachable_systems_are_unavailable() {
    let c = connector("http://127.0.0.1:9", example());
    let err = c.confirm(&ticket_ref(1)).await.expect_err("refused");
    assert!(
        matches!(err, ConnectorError::Unavailable { status: None, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_simulators_trigger_webhooks_parse_into_the_events_the_mappings_expect() {
    let zd = sim().await;
    // Nothing listens on port 9: the deliveries are recorded with their exact bytes anyway.
    zd.set_webhook("http://127.0.0.1:9/webhooks/zendesk", "zendesk-bearer")
        .await;
    let created = zd
        .create_ticket(
            NewTicket::new(users::ALICE, "Local admin").field(zd::TARGET_FIELD, json!("WS-0042")),
        )
        .await
        .expect("ticket");
    let approved = zd
        .set_approval(created.ticket_id, "jit_approved", users::BOB)
        .await
        .expect("approve");
    let solved = zd
        .set_status(created.ticket_id, "solved", users::CAROL)
        .await
        .expect("solve");
    let c = connector(zd.base_url(), example());
    let mut seen = Vec::new();
    for d in created
        .deliveries
        .iter()
        .chain(&approved.deliveries)
        .chain(&solved.deliveries)
    {
        assert!(
            d.headers
                .iter()
                .any(|(k, v)| k == "Authorization" && v == "Bearer zendesk-bearer")
        );
        let raw = RawDelivery {
            headers: d.headers.clone(),
            body: d.body.clone(),
        };
        assert_eq!(
            c.dedupe_key(&raw),
            format!("generic-header:{}", d.invocation_id)
        );
        let events = c
            .parse(&raw)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&d.body)));
        let e = events.first().expect("one event");
        assert_eq!(e.ticket.id, created.ticket_id.to_string());
        seen.push((e.kind, e.actor.as_ref().and_then(|a| a.email.clone())));
    }
    assert_eq!(
        seen,
        vec![
            (EventKind::Created, Some("alice@example.com".to_owned())),
            (EventKind::Approved, Some("bob@example.com".to_owned())),
            (EventKind::Resolved, Some("carol@example.com".to_owned())),
        ]
    );
}

#[test]
fn the_install_guide_shows_the_trigger_body_the_simulator_sends() {
    let guide = include_str!("../../../connectors/zendesk/install.md");
    assert!(
        guide.contains(zd::TRIGGER_BODY),
        "install.md and the simulator must agree on the trigger body"
    );
}
