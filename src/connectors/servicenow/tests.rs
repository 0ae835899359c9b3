//! The connector against a tiny in-test ServiceNow instance that answers in the Table API's
//! documented shapes (`itsm-wire-formats.md` 2.2): `{"result": ...}` records and lists, PATCH
//! 200 with the updated record, `{"error": {message, detail}, "status": "failure"}` envelopes,
//! 429 with `Retry-After` and a Unix `X-RateLimit-Reset`, and v1's 404 for an empty list.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::*;
use crate::ticket::{EventKind, Person};

const PASSWORD: &str = "s3cr3t-snow-password";
const USER: &str = "svc_jitbridge";
const TOKEN: &str = "oauth-access-token-xyz";

const RITM: &str = "3f1d6b9f1b2231d0a8b4ed7bbc4bcb22";
const INC: &str = "9d385017c611228701d22104cc95c371";
const OTHER: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
const ALICE: &str = "46d44a5e1b2231d0a8b4ed7bbc4bcb33";
const BOB: &str = "5137153cc611227c000bbd1bd8cd2005";
const CAROL: &str = "62826bf03710200044e0bfc8bcbe5df1";
const GHOST: &str = "ffffffffffffffffffffffffffffffff";

/// A canned answer: status, extra headers, JSON body.
type Canned = (StatusCode, Vec<(&'static str, String)>, Value);

/// What the fake instance holds.
#[derive(Default)]
struct Instance {
    /// `(table, sys_id)` → record.
    records: HashMap<(String, String), Value>,
    /// `sysapproval_approver` rows.
    approvers: Vec<Value>,
    /// `sys_user` records by sys_id.
    users: HashMap<String, Value>,
    /// When set, every call answers with this instead.
    fail: Option<Canned>,
    /// Answer an empty list with 404, as Table API v1 does.
    v1_lists: bool,
    /// Return every approval row whatever the query says.
    ignore_query: bool,
    /// Answers slower than any sane timeout.
    slow: bool,
    /// `(table, sys_id, body)` of every successful PATCH.
    patches: Vec<(String, String, Value)>,
    /// `METHOD path?query` of every authenticated call, in order.
    calls: Vec<String>,
    unauthenticated_calls: usize,
}

type Shared = Arc<Mutex<Instance>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Instance> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn envelope(status: StatusCode, message: &str, detail: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"message": message, "detail": detail}, "status": "failure"})),
    )
        .into_response()
}

fn no_record() -> Response {
    envelope(
        StatusCode::NOT_FOUND,
        "No Record found",
        "Record doesn't exist or ACL restricts the record retrieval",
    )
}

/// Checks credentials (Basic or Bearer) and the injected failure, and logs the call;
/// `Some(response)` short-circuits the handler.
fn gate(s: &Shared, headers: &HeaderMap, call: String) -> Option<Response> {
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let bearer = format!("Bearer {TOKEN}");
    let mut inst = lock(s);
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(basic.as_str()) && auth != Some(bearer.as_str()) {
        inst.unauthenticated_calls += 1;
        return Some(envelope(
            StatusCode::UNAUTHORIZED,
            "User Not Authenticated",
            "Required to provide Auth information",
        ));
    }
    inst.calls.push(call);
    let (status, hdrs, body) = inst.fail.clone()?;
    let mut resp = (status, axum::Json(body)).into_response();
    for (k, v) in hdrs {
        if let Ok(v) = axum::http::HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    Some(resp)
}

fn query_string(q: &HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join("&")
}

async fn pause_if_slow(s: &Shared) {
    let slow = lock(s).slow;
    if slow {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// `GET /api/now/table/{table}`: approval rows (filtered by `sysparm_query`) or users.
async fn list(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(table): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&s, &headers, format!("GET {table}?{}", query_string(&q))) {
        return r;
    }
    pause_if_slow(&s).await;
    let inst = lock(&s);
    let rows: Vec<Value> = match table.as_str() {
        "sysapproval_approver" => {
            let filter = q
                .get("sysparm_query")
                .and_then(|f| f.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()));
            inst.approvers
                .iter()
                .filter(|row| {
                    inst.ignore_query
                        || filter.as_ref().is_some_and(|(k, v)| {
                            row[k.as_str()].as_str() == Some(v.as_str())
                                || row[k.as_str()]["value"].as_str() == Some(v.as_str())
                        })
                })
                .cloned()
                .collect()
        }
        "sys_user" => inst.users.values().cloned().collect(),
        // Every journal write, whatever the query asks (the client must check for itself).
        "sys_journal_field" => inst
            .patches
            .iter()
            .flat_map(|(_, id, body)| {
                ["work_notes", "comments"].into_iter().filter_map(move |f| {
                    body.get(f)
                        .map(|v| json!({"element_id": id, "element": f, "value": v}))
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    let limit: usize = q
        .get("sysparm_limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(10_000);
    let rows: Vec<Value> = rows.into_iter().take(limit).collect();
    if rows.is_empty() && inst.v1_lists {
        return no_record();
    }
    axum::Json(json!({ "result": rows })).into_response()
}

/// `GET /api/now/table/{table}/{sys_id}`.
async fn read(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((table, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(
        &s,
        &headers,
        format!("GET {table}/{id}?{}", query_string(&q)),
    ) {
        return r;
    }
    pause_if_slow(&s).await;
    let inst = lock(&s);
    let found = if table == "sys_user" {
        inst.users.get(&id).cloned()
    } else {
        inst.records.get(&(table, id)).cloned()
    };
    match found {
        Some(record) => axum::Json(json!({ "result": record })).into_response(),
        None => no_record(),
    }
}

/// `PATCH /api/now/table/{table}/{sys_id}`: applies the name/value pairs and answers 200 with
/// the full record. Journal fields read back as `""`, as on a real instance.
async fn update(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((table, id)): Path<(String, String)>,
    body: axum::Json<Value>,
) -> Response {
    if let Some(r) = gate(&s, &headers, format!("PATCH {table}/{id}")) {
        return r;
    }
    let mut inst = lock(&s);
    let Some(record) = inst.records.get_mut(&(table.clone(), id.clone())) else {
        return no_record();
    };
    let Some(pairs) = body.0.as_object() else {
        return envelope(
            StatusCode::BAD_REQUEST,
            "Exception while reading request",
            "The payload is not valid JSON.",
        );
    };
    for (k, v) in pairs {
        if k.starts_with("sys_") {
            continue;
        }
        record[k.as_str()] = if k == "work_notes" || k == "comments" {
            json!("")
        } else {
            v.clone()
        };
    }
    let record = record.clone();
    inst.patches.push((table, id, body.0));
    axum::Json(json!({ "result": record })).into_response()
}

/// Starts the fake instance on `127.0.0.1:0` and returns its base URL.
async fn serve(s: Shared) -> Url {
    let app = Router::new()
        .route("/api/now/table/{table}", get(list))
        .route("/api/now/table/{table}/{id}", get(read).patch(update))
        .with_state(s);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Url::parse(&format!("http://{addr}")).expect("url")
}

fn user(id: &str, user_name: &str, email: &str, name: &str) -> Value {
    json!({"sys_id": id, "user_name": user_name, "email": email, "name": name})
}

fn row(sys_id: &str, state: &str, approver: &str, target: &str, updated: &str) -> Value {
    json!({"sys_id": sys_id, "state": state, "approver": approver, "sysapproval": target,
           "document_id": target, "source_table": "sc_req_item", "sys_updated_on": updated})
}

/// An RITM for ALICE whose approval is `approval`, with its users.
fn instance(approval: &str) -> Shared {
    let mut inst = Instance::default();
    inst.records.insert(
        ("sc_req_item".into(), RITM.into()),
        json!({"sys_id": RITM, "number": "RITM0010001", "state": "2", "approval": approval,
               "requested_for": ALICE, "opened_by": CAROL, "sys_class_name": "sc_req_item",
               "short_description": "Local admin on WS-0042", "u_target": "WS-0042",
               "work_notes": "", "comments": "", "sys_updated_on": "2025-03-14 08:41:37"}),
    );
    inst.records.insert(
        ("incident".into(), INC.into()),
        json!({"sys_id": INC, "number": "INC0010002", "state": "1", "approval": "not requested",
               "caller_id": CAROL, "opened_by": CAROL, "sys_class_name": "incident"}),
    );
    for u in [
        user(
            ALICE,
            "alice.requester",
            "alice@example.com",
            "Alice Requester",
        ),
        user(BOB, "bob.approver", "bob@example.com", "Bob Approver"),
        user(CAROL, "carol", "carol@example.com", "Carol Example"),
    ] {
        let id = u["sys_id"].as_str().expect("id").to_owned();
        inst.users.insert(id, u);
    }
    Arc::new(Mutex::new(inst))
}

fn basic() -> OutboundAuth {
    OutboundAuth::Basic {
        username: USER.to_owned(),
        password: PASSWORD.into(),
    }
}

fn connector_with(base: Url, auth: OutboundAuth, options: Options) -> ServiceNowConnector {
    ServiceNowConnector::new(
        "servicenow".to_owned(),
        base,
        auth,
        Duration::from_secs(5),
        reqwest::Client::new(),
        options,
    )
}

fn connector(base: Url) -> ServiceNowConnector {
    connector_with(base, basic(), Options::default())
}

fn ticket(id: &str, url: Option<String>) -> TicketRef {
    TicketRef {
        connector: "servicenow".into(),
        id: id.into(),
        key: "RITM0010001".into(),
        url,
    }
}

fn writeback(id: &str, action: WritebackAction) -> Writeback {
    Writeback {
        ticket: ticket(id, None),
        action,
        marker: "jitbridge:g1:active:comment".into(),
    }
}

fn comment(text: &str) -> Writeback {
    writeback(RITM, WritebackAction::Comment { text: text.into() })
}

fn status(name: &str) -> Writeback {
    writeback(RITM, WritebackAction::Status { name: name.into() })
}

fn delivery(body: &Value) -> RawDelivery {
    RawDelivery {
        headers: vec![("X-Signature".into(), "ignored-here".into())],
        body: serde_json::to_vec(body).expect("json"),
    }
}

fn fail_with(s: &Shared, status: StatusCode, headers: Vec<(&'static str, String)>, body: Value) {
    lock(s).fail = Some((status, headers, body));
}

#[tokio::test]
async fn approval_is_confirmed_through_approver_rows_and_sys_user_lookups() {
    let s = instance("approved");
    {
        let mut inst = lock(&s);
        inst.approvers = vec![
            row("a1", "approved", BOB, RITM, "2025-03-14 08:41:37"),
            row("a2", "requested", CAROL, RITM, "2025-03-14 08:00:00"),
            row("a3", "approved", CAROL, OTHER, "2025-03-14 09:00:00"),
        ];
    }
    let c = connector(serve(s.clone()).await);
    let confirmation = c.confirm(&ticket(RITM, None)).await.expect("confirmed");
    assert_eq!(confirmation.status.as_deref(), Some("Work in Progress"));
    let approval = confirmation.approval.expect("approval");
    assert_eq!(approval.state, "approved");
    assert_eq!(
        approval.approvers,
        vec![Person {
            id: Some(BOB.into()),
            email: Some("bob@example.com".into()),
            name: Some("Bob Approver".into()),
        }],
        "only the rows of this ticket that approved"
    );
    assert_eq!(
        approval.decided_at,
        Some("2025-03-14T08:41:37Z".parse().expect("ts"))
    );
    assert_eq!(
        confirmation.requester,
        Some(Person {
            id: Some(ALICE.into()),
            email: Some("alice@example.com".into()),
            name: Some("Alice Requester".into()),
        })
    );
    let calls = lock(&s).calls.clone();
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("GET sysapproval_approver?")
                && c.contains(&format!("sysparm_query=sysapproval={RITM}"))),
        "{calls:?}"
    );
    assert_eq!(lock(&s).unauthenticated_calls, 0);
}

#[tokio::test]
async fn the_ticket_field_alone_does_not_approve() {
    let s = instance("approved");
    lock(&s).approvers = vec![row("a1", "requested", BOB, RITM, "2025-03-14 08:00:00")];
    let c = connector(serve(s).await);
    let approval = c
        .confirm(&ticket(RITM, None))
        .await
        .expect("confirmed")
        .approval
        .expect("approval");
    assert_eq!(approval.state, "pending");
    assert!(approval.approvers.is_empty());
}

#[tokio::test]
async fn an_approved_row_alone_does_not_approve() {
    let s = instance("requested");
    lock(&s).approvers = vec![row("a1", "approved", BOB, RITM, "2025-03-14 08:00:00")];
    let c = connector(serve(s).await);
    let approval = c
        .confirm(&ticket(RITM, None))
        .await
        .expect("confirmed")
        .approval
        .expect("approval");
    assert_eq!(approval.state, "pending");
}

#[tokio::test]
async fn any_rejected_row_rejects() {
    let s = instance("approved");
    lock(&s).approvers = vec![
        row("a1", "approved", BOB, RITM, "2025-03-14 08:00:00"),
        row("a2", "rejected", CAROL, RITM, "2025-03-14 08:30:00"),
    ];
    let c = connector(serve(s).await);
    let approval = c
        .confirm(&ticket(RITM, None))
        .await
        .expect("confirmed")
        .approval
        .expect("approval");
    assert_eq!(approval.state, "rejected");
    assert_eq!(
        approval.approvers[0].email.as_deref(),
        Some("carol@example.com")
    );
}

#[tokio::test]
async fn rows_of_other_tickets_never_approve_even_if_the_server_ignores_the_query() {
    let s = instance("approved");
    {
        let mut inst = lock(&s);
        inst.ignore_query = true;
        inst.approvers = vec![row("a3", "approved", BOB, OTHER, "2025-03-14 09:00:00")];
    }
    let c = connector(serve(s).await);
    let approval = c
        .confirm(&ticket(RITM, None))
        .await
        .expect("confirmed")
        .approval
        .expect("approval");
    assert_eq!(approval.state, "pending");
}

#[tokio::test]
async fn document_id_is_tried_when_no_row_names_the_ticket_as_sysapproval() {
    let s = instance("approved");
    {
        let mut inst = lock(&s);
        inst.v1_lists = true;
        let mut r = row("a1", "approved", BOB, RITM, "2025-03-14 08:00:00");
        r["sysapproval"] = json!("");
        inst.approvers = vec![r];
    }
    let c = connector(serve(s.clone()).await);
    let approval = c
        .confirm(&ticket(RITM, None))
        .await
        .expect("confirmed")
        .approval
        .expect("approval");
    assert_eq!(approval.state, "approved");
    let calls = lock(&s).calls.clone();
    assert!(
        calls
            .iter()
            .any(|c| c.contains(&format!("sysparm_query=document_id={RITM}"))),
        "{calls:?}"
    );
}

#[tokio::test]
async fn incidents_without_approvals_are_confirmed_by_status_alone() {
    let s = instance("approved");
    let c = connector(serve(s.clone()).await);
    let confirmation = c.confirm(&ticket(INC, None)).await.expect("confirmed");
    assert_eq!(confirmation.status.as_deref(), Some("New"));
    assert_eq!(confirmation.approval, None, "no rows, not requested");
    assert_eq!(
        confirmation.requester.and_then(|p| p.email).as_deref(),
        Some("carol@example.com"),
        "caller_id when there is no requested_for"
    );
    let calls = lock(&s).calls.clone();
    assert!(
        calls[0].starts_with(&format!("GET sc_req_item/{INC}")),
        "{calls:?}"
    );
    assert!(
        calls[1].starts_with(&format!("GET incident/{INC}")),
        "{calls:?}"
    );
}

#[tokio::test]
async fn the_table_in_the_ticket_link_is_tried_first() {
    let s = instance("approved");
    let base = serve(s.clone()).await;
    let c = connector(base.clone());
    let url = format!("{base}nav_to.do?uri=incident.do?sys_id={INC}");
    c.confirm(&ticket(INC, Some(url))).await.expect("confirmed");
    let calls = lock(&s).calls.clone();
    assert!(
        calls[0].starts_with(&format!("GET incident/{INC}")),
        "{calls:?}"
    );
}

#[tokio::test]
async fn a_parsed_approver_row_is_confirmed_against_its_ticket() {
    let s = instance("approved");
    lock(&s).approvers = vec![row("a1", "approved", BOB, RITM, "2025-03-14 08:41:37")];
    let base = serve(s.clone()).await;
    let c = connector(base);
    let body = json!({"table": "sysapproval_approver", "sys_id": "6e4a6b9f1b2231d0a8b4ed7bbc4bcb11",
        "state": "approved", "previous_state": "requested",
        "approver": {"link": "https://INSTANCE.service-now.com/api/now/table/sys_user/x", "value": CAROL},
        "sysapproval": {"link": "https://INSTANCE.service-now.com/api/now/table/task/x", "value": RITM},
        "document_id": RITM, "source_table": "sc_req_item", "sys_updated_on": "2025-03-14 08:41:37"});
    let events = c.parse(&delivery(&body)).expect("parses");
    assert_eq!(events[0].kind, EventKind::Approved);
    assert_eq!(
        events[0].actor.as_ref().and_then(|a| a.id.as_deref()),
        Some(CAROL)
    );
    let confirmation = c.confirm(&events[0].ticket_ref()).await.expect("confirmed");
    let approvers = confirmation.approval.expect("approval").approvers;
    assert_eq!(
        approvers
            .iter()
            .map(|p| p.id.as_deref())
            .collect::<Vec<_>>(),
        vec![Some(BOB)],
        "the approver comes from the approval record, never from the body"
    );
}

#[tokio::test]
async fn people_the_instance_does_not_disclose_keep_their_sys_id() {
    let s = instance("approved");
    {
        let mut inst = lock(&s);
        inst.approvers = vec![row("a1", "approved", GHOST, RITM, "2025-03-14 08:00:00")];
        if let Some(r) = inst.records.get_mut(&("sc_req_item".into(), RITM.into())) {
            r["requested_for"] = json!({"link": "x", "value": GHOST});
        }
    }
    let c = connector(serve(s).await);
    let confirmation = c.confirm(&ticket(RITM, None)).await.expect("confirmed");
    let ghost = Person {
        id: Some(GHOST.into()),
        email: None,
        name: None,
    };
    assert_eq!(
        confirmation.approval.expect("approval").approvers,
        vec![ghost.clone()]
    );
    assert_eq!(confirmation.requester, Some(ghost));
}

#[tokio::test]
async fn a_missing_ticket_is_a_permanent_404() {
    let c = connector(serve(instance("approved")).await);
    let err = c.confirm(&ticket(OTHER, None)).await.expect_err("missing");
    assert!(
        matches!(&err, ConnectorError::Rejected { status: 404, detail } if detail.contains("sc_req_item, incident")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_comment_is_patched_into_work_notes() {
    let s = instance("approved");
    let c = connector(serve(s.clone()).await);
    c.write_back(&comment("Local admin granted until 10:00."))
        .await
        .expect("written");
    let patches = lock(&s).patches.clone();
    assert_eq!(
        patches,
        vec![(
            "sc_req_item".to_owned(),
            RITM.to_owned(),
            json!({"work_notes": "Local admin granted until 10:00.\n\njitbridge:g1:active:comment"})
        )]
    );
}

#[tokio::test]
async fn a_posted_journal_entry_is_found_again_by_its_marker() {
    let s = instance("approved");
    let c = connector(serve(s.clone()).await);
    let wb = comment("Local admin granted until 10:00.");
    assert!(!c.has_comment(&wb).await.expect("lookup"), "not posted yet");
    c.write_back(&wb).await.expect("written");
    assert!(c.has_comment(&wb).await.expect("lookup"));
    let mut other = wb.clone();
    other.marker = "jitbridge:g2:active:comment".into();
    assert!(
        !c.has_comment(&other).await.expect("lookup"),
        "another grant's marker"
    );
    let calls = lock(&s).calls.clone();
    assert!(
        calls.iter().any(|c| c.starts_with("GET sys_journal_field?")
            && c.contains(&format!(
                "element_id={RITM}^element=work_notes^valueLIKEjitbridge:g1:active:comment"
            ))),
        "{calls:?}"
    );
}

#[tokio::test]
async fn no_journal_match_answered_with_v1_404_means_not_posted() {
    let s = instance("approved");
    lock(&s).v1_lists = true;
    let c = connector(serve(s.clone()).await);
    assert!(!c.has_comment(&comment("x")).await.expect("lookup"));
}

#[tokio::test]
async fn the_journal_field_is_configurable_and_other_tables_are_tried() {
    let s = instance("approved");
    let options = Options {
        journal_field: JournalField::Comments,
        ..Options::default()
    };
    let c = connector_with(serve(s.clone()).await, basic(), options);
    c.write_back(&writeback(
        INC,
        WritebackAction::Comment {
            text: "Elevation refused.".into(),
        },
    ))
    .await
    .expect("written");
    let inst = lock(&s);
    assert_eq!(
        inst.patches,
        vec![(
            "incident".to_owned(),
            INC.to_owned(),
            json!({"comments": "Elevation refused.\n\njitbridge:g1:active:comment"})
        )]
    );
    assert_eq!(
        inst.calls,
        vec![
            format!("PATCH sc_req_item/{INC}"),
            format!("PATCH incident/{INC}")
        ]
    );
}

#[tokio::test]
async fn a_status_is_written_as_its_state_code() {
    let s = instance("approved");
    let options = Options {
        states: [("Fulfilled".to_owned(), "3".to_owned())].into(),
        ..Options::default()
    };
    let c = connector_with(serve(s.clone()).await, basic(), options);
    c.write_back(&status("Closed Complete"))
        .await
        .expect("built-in name");
    c.write_back(&status("fulfilled"))
        .await
        .expect("configured name");
    c.write_back(&status("-5")).await.expect("bare code");
    let bodies: Vec<Value> = lock(&s).patches.iter().map(|p| p.2.clone()).collect();
    assert_eq!(
        bodies,
        vec![
            json!({"state": "3"}),
            json!({"state": "3"}),
            json!({"state": "-5"})
        ]
    );
    let state = lock(&s).records[&("sc_req_item".to_owned(), RITM.to_owned())]["state"].clone();
    assert_eq!(state, "-5");
}

#[tokio::test]
async fn an_unknown_status_name_is_invalid_and_sends_nothing() {
    let s = instance("approved");
    let c = connector(serve(s.clone()).await);
    let err = c
        .write_back(&status("Resolved-ish"))
        .await
        .expect_err("unknown");
    assert!(
        matches!(&err, ConnectorError::Invalid(m) if m.contains("Resolved-ish") && m.contains("states")),
        "{err:?}"
    );
    assert!(lock(&s).calls.is_empty());
}

#[tokio::test]
async fn rate_limiting_honours_retry_after() {
    let s = instance("approved");
    fail_with(
        &s,
        StatusCode::TOO_MANY_REQUESTS,
        vec![
            ("Retry-After", "30".into()),
            ("X-RateLimit-Limit", "10".into()),
            ("X-RateLimit-Reset", "1741945600".into()),
            (
                "X-RateLimit-Rule",
                "2c6f1c4fdb2b1010a8b4ed7bbc4bcb99".into(),
            ),
        ],
        json!({"error": {"message": "Rate limit exceeded", "detail": "Rate limit of 10 requests per hour for Table API exceeded"}, "status": "failure"}),
    );
    let c = connector(serve(s).await);
    let err = c.write_back(&comment("hello")).await.expect_err("limited");
    assert_eq!(
        err,
        ConnectorError::RateLimited {
            status: 429,
            retry_after: Some(Duration::from_secs(30)),
            detail: format!(
                "PATCH /api/now/table/sc_req_item/{RITM}: Rate limit exceeded: Rate limit of 10 requests per hour for Table API exceeded"
            ),
        }
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn rate_limiting_without_retry_after_waits_for_the_unix_reset() {
    let s = instance("approved");
    let reset = jiff::Timestamp::now().as_second() + 120;
    fail_with(
        &s,
        StatusCode::TOO_MANY_REQUESTS,
        vec![("X-RateLimit-Reset", reset.to_string())],
        json!({"error": {"message": "Rate limit exceeded", "detail": ""}, "status": "failure"}),
    );
    let c = connector(serve(s).await);
    let err = c.confirm(&ticket(RITM, None)).await.expect_err("limited");
    let wait = err.retry_after().expect("hint");
    assert!(
        wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
        "{wait:?}"
    );
}

#[tokio::test]
async fn client_errors_are_permanent_and_carry_the_envelope() {
    for (code, message, detail) in [
        (
            StatusCode::BAD_REQUEST,
            "Exception while reading request",
            "Invalid field",
        ),
        (
            StatusCode::FORBIDDEN,
            "Operation Failed",
            "Data Policy Exception: State is mandatory",
        ),
    ] {
        let s = instance("approved");
        fail_with(
            &s,
            code,
            vec![],
            json!({"error": {"message": message, "detail": detail}, "status": "failure"}),
        );
        let c = connector(serve(s).await);
        let err = c
            .write_back(&status("Closed Complete"))
            .await
            .expect_err("refused");
        assert_eq!(
            err,
            ConnectorError::Rejected {
                status: code.as_u16(),
                detail: format!("PATCH /api/now/table/sc_req_item/{RITM}: {message}: {detail}"),
            }
        );
        assert!(!err.is_retryable());
    }
}

#[tokio::test]
async fn a_record_missing_from_every_table_is_a_404_rejection() {
    let s = instance("approved");
    let c = connector(serve(s.clone()).await);
    let err = c
        .write_back(&writeback(
            OTHER,
            WritebackAction::Comment { text: "x".into() },
        ))
        .await
        .expect_err("missing");
    assert!(
        matches!(&err, ConnectorError::Rejected { status: 404, detail } if detail.contains(OTHER)),
        "{err:?}"
    );
    assert_eq!(lock(&s).calls.len(), 2, "sc_req_item, then incident");
}

#[tokio::test]
async fn server_errors_are_retryable() {
    let s = instance("approved");
    fail_with(
        &s,
        StatusCode::SERVICE_UNAVAILABLE,
        vec![("Retry-After", "7".into())],
        json!({"error": {"message": "Service Unavailable", "detail": "Instance is hibernating"}, "status": "failure"}),
    );
    let c = connector(serve(s).await);
    let err = c.write_back(&comment("x")).await.expect_err("down");
    assert!(
        matches!(&err, ConnectorError::Unavailable { status: Some(503), retry_after: Some(d), .. } if *d == Duration::from_secs(7)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_slow_instance_times_out_as_unavailable() {
    let s = instance("approved");
    lock(&s).slow = true;
    let c = ServiceNowConnector::new(
        "servicenow".into(),
        serve(s).await,
        basic(),
        Duration::from_millis(200),
        reqwest::Client::new(),
        Options::default(),
    );
    let err = c.healthcheck().await.expect_err("slow");
    assert!(
        matches!(&err, ConnectorError::Unavailable { status: None, detail, .. } if detail.contains("timed out")),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unreachable_instance_is_unavailable() {
    let c = connector(Url::parse("http://127.0.0.1:9").expect("url"));
    let err = c.healthcheck().await.expect_err("down");
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn healthcheck_accepts_basic_and_bearer_and_never_leaks_the_secret() {
    let s = instance("approved");
    let base = serve(s.clone()).await;
    connector(base.clone()).healthcheck().await.expect("basic");
    let bearer = OutboundAuth::Bearer {
        token: TOKEN.into(),
    };
    connector_with(base.clone(), bearer, Options::default())
        .healthcheck()
        .await
        .expect("bearer");
    assert!(
        lock(&s)
            .calls
            .iter()
            .all(|c| c == "GET sys_user?sysparm_limit=1"),
        "{:?}",
        lock(&s).calls
    );

    let wrong = OutboundAuth::Basic {
        username: USER.into(),
        password: "wrong-password-123".into(),
    };
    let mut with_creds = base.clone();
    let _ = with_creds.set_password(Some("url-secret-456"));
    let c = connector_with(with_creds, wrong, Options::default());
    let err = c.healthcheck().await.expect_err("unauthorized");
    assert!(
        matches!(err, ConnectorError::Rejected { status: 401, .. }),
        "{err:?}"
    );
    let text = format!("{err} {err:?} {c:?}");
    for secret in ["wrong-password-123", "url-secret-456", PASSWORD] {
        assert!(!text.contains(secret), "secret leaked: {text}");
    }
    assert!(text.contains("User Not Authenticated"), "{text}");
}

#[test]
fn dedupe_keys_name_the_change_and_the_body() {
    let c = connector(Url::parse("https://example.service-now.com").expect("url"));
    let br = json!({"event_id": format!("{RITM}:4"), "sys_id": RITM, "sys_mod_count": "4", "record": {}});
    let key = c.dedupe_key(&delivery(&br));
    assert!(key.starts_with(&format!("servicenow:{RITM}:4:")), "{key}");
    assert_eq!(
        key,
        c.dedupe_key(&delivery(&br)),
        "a retried delivery deduplicates"
    );
    let forged_claim = json!({"event_id": format!("{RITM}:4"), "sys_id": RITM, "sys_mod_count": "4",
        "record": {"approval": "approved"}});
    assert_ne!(
        c.dedupe_key(&delivery(&forged_claim)),
        key,
        "a body claiming the same change cannot use up the real delivery's key"
    );
    let table_api =
        json!({"result": {"sys_id": {"value": RITM, "display_value": RITM}, "sys_mod_count": 9}});
    assert!(
        c.dedupe_key(&delivery(&table_api))
            .starts_with(&format!("servicenow:{RITM}:9:"))
    );
    let flat = json!({"table": "sysapproval_approver", "sys_id": RITM, "state": "approved"});
    let d = delivery(&flat);
    assert_eq!(c.dedupe_key(&d), body_hash_key(&d.body));
    let hostile = json!({"event_id": "a b\nc", "sys_id": "x/y", "sys_mod_count": "4"});
    let d = delivery(&hostile);
    assert_eq!(c.dedupe_key(&d), body_hash_key(&d.body));
    let garbage = RawDelivery {
        headers: vec![],
        body: b"\xff not json".to_vec(),
    };
    assert_eq!(c.dedupe_key(&garbage), body_hash_key(&garbage.body));
    assert_eq!(c.kind(), "servicenow");
    assert_eq!(c.id(), "servicenow");
}

#[test]
fn inbound_defaults_match_the_shipped_business_rule() {
    assert_eq!(INBOUND_DEFAULTS.header, "X-Signature");
    assert_eq!(INBOUND_DEFAULTS.prefix, "");
    assert_eq!(INBOUND_DEFAULTS.encoding, Encoding::Base64);
}

#[test]
fn refs_that_could_escape_the_path_are_refused_before_any_call() {
    for id in ["", "../sys_user", "a^b", "x=y", &"a".repeat(65)] {
        assert!(
            matches!(
                sys_id_of(&ticket(id, None)),
                Err(ConnectorError::Invalid(_))
            ),
            "{id:?}"
        );
    }
    assert_eq!(sys_id_of(&ticket(RITM, None)), Ok(RITM));
}

/// A body produced by running `connectors/servicenow/business-rule.js` under a mock of the Glide
/// APIs (approval requested → approved on RITM0010001), with the `X-Signature` it computed for
/// the secret `topsecret`.
const BR_BODY: &str = include_str!("testdata/business-rule-ritm-approved.json");
const BR_SIGNATURE: &str = "NqQAx422YctGEr1AxOOwmM6Vs/wxrVx6iNu4WhHM2W0=";

#[test]
fn the_shipped_business_rule_payload_verifies_and_parses() {
    let tag = INBOUND_DEFAULTS
        .encoding
        .decode(
            BR_SIGNATURE
                .strip_prefix(INBOUND_DEFAULTS.prefix)
                .expect("prefix"),
        )
        .expect("base64");
    crate::signatures::verify_hmac_sha256(b"topsecret", BR_BODY.as_bytes(), &tag)
        .expect("the Business Rule's signature verifies with the kind's defaults");

    let c = connector(Url::parse("https://dev1234.service-now.com").expect("url"));
    let d = RawDelivery {
        headers: vec![("X-Signature".into(), BR_SIGNATURE.into())],
        body: BR_BODY.as_bytes().to_vec(),
    };
    assert!(
        c.dedupe_key(&d)
            .starts_with(&format!("servicenow:{RITM}:5:"))
    );
    let events = c.parse(&d).expect("parses");
    let e = &events[0];
    assert_eq!(e.kind, EventKind::Approved);
    assert_eq!(e.ticket.key, "RITM0010001");
    assert_eq!(
        e.ticket.summary.as_deref(),
        Some("Local admin on WS-0042 — café")
    );
    assert_eq!(
        e.status_change.as_ref().map(|s| s.to.as_str()),
        Some("Work in Progress")
    );
    assert_eq!(
        e.requester.as_ref().and_then(|p| p.id.as_deref()),
        Some(ALICE)
    );
    assert_eq!(e.fields["u_target"], "WS-0042");
    assert!(
        e.fields.get("work_notes").is_none(),
        "journal fields are not sent"
    );
    assert!(
        e.fields.get("u_secret").is_none(),
        "password fields are not sent"
    );
}
