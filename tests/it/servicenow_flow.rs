//! Whole tickets through ServiceNow: the daemon against the ServiceNow simulator over real HTTP.
//! Requested items are ordered and decided in the simulator, which posts the shipped Business
//! Rule's signed payload to the daemon; the daemon confirms through the Table API, grants through
//! the elevation receiver and writes back with `PATCH` (journal entry plus `state` code).

use std::time::Duration;

use jitbridge::grants::GrantState;
use jitbridge::store::GrantFilter;
use jitbridge_sim::receiver::CallKind;
use jitbridge_sim::servicenow::users::{
    self, ALICE, ALICE_SYS_ID, BOB, BOB_SYS_ID, CAROL, JITBRIDGE,
};
use jitbridge_sim::servicenow::webhook::servicenow_headers;
use jitbridge_sim::servicenow::{
    JournalEntry, NewRequest, RateLimitRule, RenderOptions, ServiceNowSim, ServiceNowSimConfig,
};
use serde_json::{Value, json};

use crate::harness::{Daemon, Options, eventually};

/// The shared secret of the Business Rule (`x_jitbridge.webhook_secret`).
const SNOW_SECRET: &str = "test-servicenow-webhook-secret";

/// A mapping written in ServiceNow's own terms: the request is a `sc_req_item` whose catalog
/// variables were copied into `u_*` fields; the Business Rule's approval change approves, its
/// rejection denies, closing ends; writebacks name the item's states.
const MAPPING: &str = r#"
[[mapping]]
name = "snow-local-admin"
connector = "servicenow"
when = 'ticket.type == "sc_req_item" && fields.u_elevation_type == "Local admin"'

[mapping.grant]
subject  = "{{ fields.u_account }}"
target   = "{{ fields.u_target }}"
scope    = "local-admin"
duration = "{{ fields.u_duration | default('60m') }}"
max_duration = "4h"
provider = "endpoint-agent"

[mapping.on]
approve = { event = ["approved"] }
deny    = { event = ["rejected"] }
revoke  = { event = ["cancelled", "resolved"] }

[mapping.policy]
distinct_approver = true
requesters = ["*@example.com"]
targets = ["WS-*", "LT-*"]

[mapping.writeback]
active    = { comment = "Local admin granted to {{ grant.subject }} on {{ grant.target }} until {{ grant.expires_at }} ({{ ticket.key }}).", status = "Work in Progress" }
expired   = { comment = "Local admin on {{ grant.target }} expired and was revoked.", status = "Closed Complete" }
revoked   = { comment = "Local admin on {{ grant.target }} revoked: {{ reason }}." }
denied    = { comment = "Elevation refused: {{ reason }}." }
cancelled = { comment = "Request cancelled before approval." }
failed    = { comment = "Elevation could not be applied: {{ reason }}.", status = "Closed Incomplete" }
"#;

/// How the connector file authenticates its Table API calls, which journal it writes, and the
/// mapping in force.
#[derive(Clone)]
struct Setup {
    bearer: bool,
    journal: &'static str,
    mapping: String,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            bearer: false,
            journal: "work_notes",
            mapping: MAPPING.to_owned(),
        }
    }
}

/// The ServiceNow connector file for a simulator at `base`.
fn connector_file(base: &str, setup: &Setup) -> String {
    let outbound = if setup.bearer {
        "auth = \"bearer\"\ntoken_env = \"SNOW_TOKEN\"".to_owned()
    } else {
        format!("auth = \"basic\"\nusername = \"{JITBRIDGE}\"\ntoken_env = \"SNOW_PASSWORD\"")
    };
    format!(
        r#"
id = "servicenow"
kind = "servicenow"
base_url = "{base}"
timeout = "2s"
journal_field = "{journal}"

[inbound]
auth = "hmac-sha256"
secret_env = "SNOW_WEBHOOK_SECRET"

[outbound]
{outbound}
"#,
        journal = setup.journal
    )
}

/// The daemon plus the ServiceNow simulator, its Business Rule pointed at the daemon.
struct Snow {
    d: Daemon,
    snow: ServiceNowSim,
}

impl std::ops::Deref for Snow {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.d
    }
}

impl Snow {
    async fn start() -> Self {
        Self::start_with(Setup::default()).await
    }

    async fn start_with(setup: Setup) -> Self {
        let snow = ServiceNowSim::start(ServiceNowSimConfig::default())
            .await
            .expect("servicenow sim");
        let opts = Options {
            mapping: setup.mapping.clone(),
            ..Options::default()
        };
        let d = Daemon::start(
            &[("servicenow.toml", connector_file(snow.base_url(), &setup))],
            &opts,
            &[
                ("SNOW_WEBHOOK_SECRET", SNOW_SECRET),
                ("SNOW_PASSWORD", users::API_PASSWORD),
                ("SNOW_TOKEN", users::API_BEARER),
            ],
        )
        .await;
        snow.add_webhook(&d.webhook_url_for("servicenow"), Some(SNOW_SECRET))
            .await;
        Self { d, snow }
    }

    fn webhook_url(&self) -> String {
        self.webhook_url_for("servicenow")
    }

    /// `requester` orders local admin for themselves on `target`; returns the RITM number.
    async fn raise(
        &self,
        requester: &str,
        target: &str,
        duration: &str,
        approvers: &[&str],
    ) -> String {
        let account = format!(
            "{}@example.com",
            requester.split('.').next().unwrap_or(requester)
        );
        let ritm = self
            .snow
            .create_request(
                NewRequest::new(requester, &format!("Local admin on {target}"))
                    .elevation("Local admin", target, duration)
                    .field("u_account", &account)
                    .approvers(approvers),
            )
            .await
            .expect("request created");
        let insert = ritm.deliveries.first().expect("insert delivered");
        assert_eq!(
            insert.responses.last().and_then(|r| r.status),
            Some(202),
            "the daemon accepts the Business Rule's signed insert"
        );
        ritm.number
    }

    /// The RITM's journal (work notes and comments), oldest first.
    async fn journal(&self, number: &str) -> Vec<JournalEntry> {
        self.snow
            .journal("sc_req_item", number)
            .await
            .expect("journal")
    }

    /// Waits until the RITM has a journal entry containing `needle`; returns the whole journal.
    async fn wait_note(&self, number: &str, needle: &str) -> Vec<JournalEntry> {
        eventually(Duration::from_secs(15), || async {
            let j = self.journal(number).await;
            j.iter().any(|e| e.value.contains(needle)).then_some(j)
        })
        .await
        .unwrap_or_else(|| panic!("{number}: no journal entry containing {needle:?}"))
    }

    /// A raw field of the RITM (`state` is the code).
    async fn field(&self, number: &str, field: &str) -> String {
        self.snow
            .record("sc_req_item", number)
            .await
            .expect("record")
            .get(field)
            .to_owned()
    }

    /// Waits until the RITM's `state` code is `code`.
    async fn wait_state_code(&self, number: &str, code: &str) {
        let ok = eventually(Duration::from_secs(15), || async {
            (self.field(number, "state").await == code).then_some(())
        })
        .await;
        assert!(
            ok.is_some(),
            "{number}: state never became {code} (is {})",
            self.field(number, "state").await
        );
    }

    /// Apply calls the elevation receiver got.
    async fn applies(&self) -> usize {
        self.receiver
            .calls()
            .await
            .into_iter()
            .filter(|c| c.kind == Some(CallKind::Apply))
            .count()
    }

    /// `PATCH`es the daemon made to the RITM.
    async fn patches(&self, number: &str) -> usize {
        let sys_id = self
            .snow
            .record("sc_req_item", number)
            .await
            .expect("record")
            .sys_id;
        self.snow
            .requests()
            .await
            .into_iter()
            .filter(|r| r.method == "PATCH" && r.path.ends_with(&sys_id) && r.status == 200)
            .count()
    }

    /// A Business Rule body for the RITM as it is now, edited to claim that its approval just
    /// became `approved` (what a leaked secret or an edited replay could send), naming the change
    /// `ahead` modifications after the record's current one.
    async fn forged_approval_ahead(&self, number: &str, ahead: u64) -> Vec<u8> {
        let mut record = self
            .snow
            .api_record("sc_req_item", number, &RenderOptions::default())
            .await
            .expect("record");
        let sys_id = record["sys_id"].as_str().expect("sys_id").to_owned();
        let count = record["sys_mod_count"]
            .as_str()
            .and_then(|c| c.parse::<u64>().ok())
            .expect("sys_mod_count")
            + ahead;
        record["approval"] = json!("approved");
        record["state"] = json!("2");
        record["sys_mod_count"] = json!(count.to_string());
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string();
        json!({
            "event_id": format!("{sys_id}:{count}"), "table": "sc_req_item", "sys_id": sys_id,
            "sys_mod_count": count.to_string(), "operation": "update",
            "sys_updated_on": now, "sys_updated_by": BOB,
            "record": record,
            "changes": {"approval": {"previous": "requested", "current": "approved"},
                        "state": {"previous": "1", "current": "2"}}
        })
        .to_string()
        .into_bytes()
    }

    /// [`Self::forged_approval_ahead`] far enough ahead never to name a real change of the test.
    async fn forged_approval(&self, number: &str) -> Vec<u8> {
        self.forged_approval_ahead(number, 1000).await
    }
}

#[tokio::test]
async fn approved_request_is_granted_written_back_and_revoked_at_its_deadline() {
    let h = Snow::start().await;
    let number = h.raise(ALICE, "WS-0042", "3s", &[BOB]).await;
    h.wait_state(&number, GrantState::Requested).await;

    let approved = h.snow.approve(&number, BOB).await.expect("approve");
    // The approver row's delivery, then the item's: both signed and accepted.
    assert_eq!(approved.deliveries.len(), 2);
    for d in &approved.deliveries {
        assert_eq!(
            d.responses.last().and_then(|r| r.status),
            Some(202),
            "{}",
            d.event
        );
    }

    let active = h.wait_state(&number, GrantState::Active).await;
    assert_eq!(active.subject, "alice@example.com");
    assert_eq!(active.target, "WS-0042");
    assert_eq!(active.scope, "local-admin");
    // Who approved comes from the sysapproval_approver row and sys_user, not from the body.
    let approver = active.approvers.first().expect("an approver");
    assert_eq!(approver.email.as_deref(), Some("bob@example.com"));
    assert_eq!(approver.id.as_deref(), Some(BOB_SYS_ID));
    let requester = active.requester.as_ref().expect("requester");
    assert_eq!(requester.email.as_deref(), Some("alice@example.com"));
    assert_eq!(requester.id.as_deref(), Some(ALICE_SYS_ID));

    assert!(
        h.receiver
            .holds("alice@example.com", "WS-0042", "local-admin")
            .await
    );
    let calls = h.receiver.calls().await;
    assert!(
        calls.iter().all(|c| c.signature_valid),
        "every provider call is signed: {calls:?}"
    );

    // The work note, written as the integration user, and the state.
    let journal = h
        .wait_note(
            &number,
            "Local admin granted to alice@example.com on WS-0042 until",
        )
        .await;
    let note = journal
        .iter()
        .find(|e| e.value.contains("Local admin granted"))
        .expect("note");
    assert_eq!(note.element, "work_notes");
    assert_eq!(note.sys_created_by, JITBRIDGE);
    assert!(
        note.value.contains(&format!("({number})")),
        "{}",
        note.value
    );
    assert_eq!(h.field(&number, "state").await, "2", "Work in Progress");

    // Deadline → revoke at the endpoint → note + Closed Complete.
    let expired = h.wait_state(&number, GrantState::Expired).await;
    assert_eq!(expired.id, active.id);
    assert!(
        !h.receiver
            .holds("alice@example.com", "WS-0042", "local-admin")
            .await
    );
    let revoked_at = h
        .receiver
        .revoked_at(&expired.id.to_string())
        .await
        .expect("revoke call arrived");
    assert!(
        revoked_at >= expired.expires_at.expect("deadline"),
        "revoked before the deadline"
    );
    let journal = h
        .wait_note(&number, "Local admin on WS-0042 expired and was revoked.")
        .await;
    h.wait_state_code(&number, "3").await;
    assert_eq!(
        h.field(&number, "active").await,
        "false",
        "closing ends the item"
    );

    // Our own PATCH that closed the item comes back through the Business Rule: it must not start
    // anything new.
    h.settle().await;
    assert_eq!(h.grants(&number).await.len(), 1);
    assert_eq!(h.applies().await, 1);
    let ours: Vec<&str> = journal
        .iter()
        .filter(|e| e.sys_created_by == JITBRIDGE)
        .map(|e| e.value.as_str())
        .collect();
    assert_eq!(ours.len(), 3, "one note per writeback: {ours:?}");
    assert!(
        ours[0].starts_with("Elevation request received."),
        "the summary comes first: {ours:?}"
    );
    assert_eq!(
        h.patches(&number).await,
        5,
        "three notes (summary, granted, expired) and two states, each once"
    );

    let kinds: Vec<String> = h
        .store()
        .audit_records(0, 1000)
        .await
        .expect("audit")
        .into_iter()
        .filter(|r| r.record.grant_id == Some(expired.id))
        .map(|r| r.record.kind)
        .collect();
    for k in [
        "grant.requested",
        "grant.approved",
        "grant.active",
        "grant.expiring",
        "grant.expired",
    ] {
        assert!(kinds.iter().any(|x| x == k), "audit lacks {k}: {kinds:?}");
    }
    let verdict = jitbridge::admin::verify_audit(h.store().as_ref())
        .await
        .expect("verify");
    assert_eq!(verdict["ok"], true, "{verdict}");
}

#[tokio::test]
async fn rejected_request_is_denied_and_commented_without_any_provider_call() {
    // Bearer (OAuth) credentials and the requester-visible `comments` journal this time.
    let h = Snow::start_with(Setup {
        bearer: true,
        journal: "comments",
        ..Setup::default()
    })
    .await;
    let number = h.raise(ALICE, "WS-0043", "10m", &[BOB]).await;
    h.wait_state(&number, GrantState::Requested).await;
    h.snow.reject(&number, BOB).await.expect("reject");

    let g = h.wait_state(&number, GrantState::Denied).await;
    let reason = g.reason.unwrap_or_default();
    assert!(reason.contains("declined"), "{reason}");
    let journal = h.wait_note(&number, "Elevation refused: declined").await;
    let note = journal
        .iter()
        .find(|e| e.value.contains("Elevation refused"))
        .expect("note");
    assert_eq!(note.element, "comments", "journal_field = \"comments\"");
    assert_eq!(
        note.sys_created_by, JITBRIDGE,
        "authenticated by the bearer token"
    );
    h.settle().await;
    assert!(
        h.receiver.calls().await.is_empty(),
        "a rejected request reached the provider"
    );
}

#[tokio::test]
async fn approval_by_the_requester_is_denied_and_commented() {
    let h = Snow::start().await;
    // Alice is one of the approvers of her own request, and she answers first.
    let number = h.raise(ALICE, "WS-0044", "10m", &[ALICE, BOB]).await;
    h.wait_state(&number, GrantState::Requested).await;
    h.snow
        .approve(&number, ALICE)
        .await
        .expect("self-approve in ServiceNow");
    assert_eq!(
        h.field(&number, "approval").await,
        "approved",
        "ServiceNow let her"
    );

    let g = h.wait_state(&number, GrantState::Denied).await;
    let reason = g.reason.unwrap_or_default();
    assert!(
        reason.contains("requester"),
        "reason should explain self-approval: {reason}"
    );
    assert_eq!(
        g.approvers.first().and_then(|p| p.email.as_deref()),
        Some("alice@example.com"),
        "the approver as the API reports it"
    );
    h.wait_note(&number, "Elevation refused:").await;
    h.settle().await;
    assert!(
        h.receiver.calls().await.is_empty(),
        "a self-approved request reached the provider"
    );
}

#[tokio::test]
async fn request_closed_before_approval_is_cancelled_and_never_reaches_the_provider() {
    let h = Snow::start().await;
    // Closed Incomplete by a fulfiller, and Closed Complete by another: both end the request.
    let incomplete = h.raise(ALICE, "WS-0045", "10m", &[BOB]).await;
    let complete = h.raise(ALICE, "WS-0046", "10m", &[BOB]).await;
    h.wait_state(&incomplete, GrantState::Requested).await;
    h.wait_state(&complete, GrantState::Requested).await;
    h.snow
        .set_state(&incomplete, "Closed Incomplete", CAROL)
        .await
        .expect("close");
    h.snow
        .set_state(&complete, "3", CAROL)
        .await
        .expect("close");

    for number in [&incomplete, &complete] {
        let g = h.wait_state(number, GrantState::Cancelled).await;
        assert!(g.ended_at.is_some());
        h.wait_note(number, "Request cancelled before approval.")
            .await;
    }

    // An approval claimed afterwards (a signed body) grants nothing: the item's own approval
    // records never said approved.
    let sent = h
        .snow
        .send_signed(
            &h.webhook_url(),
            Some(SNOW_SECRET),
            &h.forged_approval(&incomplete).await,
        )
        .await;
    assert_eq!(sent.responses.first().and_then(|r| r.status), Some(202));
    h.settle().await;
    assert_eq!(h.grants(&incomplete).await.len(), 1);
    assert_eq!(h.grants(&incomplete).await[0].state, GrantState::Cancelled);
    assert!(h.receiver.calls().await.is_empty());
}

#[tokio::test]
async fn item_closed_while_active_revokes_the_grant_before_its_deadline() {
    let h = Snow::start().await;
    let number = h.raise(ALICE, "LT-0007", "2h", &[BOB]).await;
    h.snow.approve(&number, BOB).await.expect("approve");
    let active = h.wait_state(&number, GrantState::Active).await;
    h.wait_note(&number, "Local admin granted").await;

    h.snow
        .set_state(&number, "Closed Complete", CAROL)
        .await
        .expect("close");
    let revoked = h.wait_state(&number, GrantState::Revoked).await;
    assert_eq!(revoked.id, active.id);
    assert!(revoked.ended_at.expect("ended") < revoked.expires_at.expect("deadline"));
    assert!(
        !h.receiver
            .holds("alice@example.com", "LT-0007", "local-admin")
            .await
    );
    h.wait_note(
        &number,
        "Local admin on LT-0007 revoked: the ticket reached status Closed Complete.",
    )
    .await;
}

#[tokio::test]
async fn forged_or_unauthenticated_deliveries_get_401_and_store_nothing() {
    let h = Snow::start().await;
    let sys_id = "3f1d6b9f1b2231d0a8b4ed7bbc4bcb22";
    let body = json!({
        "event_id": format!("{sys_id}:4"), "table": "sc_req_item", "sys_id": sys_id,
        "sys_mod_count": "4", "operation": "update", "sys_updated_on": "2025-03-14 08:41:37",
        "sys_updated_by": BOB,
        "record": {"sys_id": sys_id, "number": "RITM0099999", "state": "2", "approval": "approved",
                   "requested_for": ALICE_SYS_ID, "u_elevation_type": "Local admin",
                   "u_target": "WS-0666", "u_account": "mallory@example.com", "u_duration": "4h",
                   "sys_class_name": "sc_req_item"},
        "changes": {"approval": {"previous": "requested", "current": "approved"}}
    })
    .to_string()
    .into_bytes();

    let status =
        |d: &jitbridge_sim::servicenow::Delivery| d.responses.first().and_then(|r| r.status);
    let wrong = h
        .snow
        .send_signed(&h.webhook_url(), Some("not-the-secret"), &body)
        .await;
    assert_eq!(status(&wrong), Some(401), "signed with the wrong secret");
    let error: Value = serde_json::from_str(&wrong.responses[0].body).expect("JSON error");
    assert_eq!(error["error"], "unauthorized");
    assert!(error["detail"].is_string());
    assert!(!wrong.responses[0].body.contains(SNOW_SECRET));

    let unsigned = h.snow.send_signed(&h.webhook_url(), None, &body).await;
    assert_eq!(status(&unsigned), Some(401), "no signature header");

    // The right secret's signature, but one byte changed after signing.
    let headers = servicenow_headers("X-Signature", Some(SNOW_SECRET), &body);
    let mut tampered = body.clone();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    let changed = h.snow.send_raw(&h.webhook_url(), &headers, &tampered).await;
    assert_eq!(changed.status, Some(401), "tampered body");
    // A hex digest (Jira's encoding) of the right secret is not what this connector accepts.
    let hex = jitbridge_sim::sign::jira_hub_signature(SNOW_SECRET, &body);
    let headers = vec![
        ("Content-Type".to_owned(), "application/json".to_owned()),
        (
            "X-Signature".to_owned(),
            hex.trim_start_matches("sha256=").to_owned(),
        ),
    ];
    let hexed = h.snow.send_raw(&h.webhook_url(), &headers, &body).await;
    assert_eq!(hexed.status, Some(401), "hex instead of base64");

    h.settle().await;
    assert!(
        h.store()
            .list_grants(&GrantFilter::default())
            .await
            .expect("grants")
            .is_empty()
    );
    let audit = h.store().audit_records(0, 100).await.expect("audit");
    assert!(
        audit.is_empty(),
        "a rejected delivery left audit records: {audit:?}"
    );
    assert!(h.receiver.calls().await.is_empty());
    assert!(
        h.snow
            .requests()
            .await
            .iter()
            .all(|r| r.method == "GET" && r.path.ends_with("/sys_user")),
        "only the health check reached the Table API"
    );
}

#[tokio::test]
async fn body_claiming_approval_that_the_table_api_does_not_confirm_grants_nothing() {
    let h = Snow::start().await;
    let number = h.raise(ALICE, "WS-0048", "2h", &[BOB]).await;
    h.wait_state(&number, GrantState::Requested).await;
    // Correctly signed (the secret leaked), but the instance's own record still waits for Bob.
    let sent = h
        .snow
        .send_signed(
            &h.webhook_url(),
            Some(SNOW_SECRET),
            &h.forged_approval(&number).await,
        )
        .await;
    assert_eq!(sent.responses.first().and_then(|r| r.status), Some(202));

    let audited = eventually(Duration::from_secs(10), || async {
        let a = h.audit("approval.unconfirmed").await;
        (!a.is_empty()).then_some(a)
    })
    .await
    .expect("the unconfirmed approval is audited");
    assert_eq!(audited.len(), 1);
    assert_eq!(
        audited[0].record.ticket_key.as_deref(),
        Some(number.as_str())
    );
    let why = audited[0].record.detail["why"].as_str().unwrap_or_default();
    assert!(why.contains("pending"), "{why}");
    assert_eq!(h.grants(&number).await[0].state, GrantState::Requested);
    assert!(h.receiver.calls().await.is_empty());

    // The confirmation really asked the instance: the item and its approval rows were read.
    let reqs = h.snow.requests().await;
    assert!(
        reqs.iter()
            .any(|r| r.method == "GET" && r.path.contains("/sc_req_item/"))
    );
    assert!(
        reqs.iter()
            .any(|r| r.method == "GET" && r.path.ends_with("/sysapproval_approver"))
    );

    // Bob's real approval afterwards still works.
    let approved = h.snow.approve(&number, BOB).await.expect("approve");
    for d in &approved.deliveries {
        assert_eq!(
            d.responses.last().and_then(|r| r.status),
            Some(202),
            "{}",
            d.event
        );
    }
    h.wait_state(&number, GrantState::Active).await;
    assert_eq!(h.applies().await, 1);
}

#[tokio::test]
async fn rate_limited_table_api_is_waited_out_and_writebacks_arrive_once_in_order() {
    let h = Snow::start().await;
    let number = h.raise(ALICE, "WS-0100", "3s", &[BOB]).await;
    h.wait_state(&number, GrantState::Requested).await;
    // The request's summary note lands before the counting starts (it is not counted below).
    h.wait_note(&number, "Elevation request received").await;
    // An inbound REST rate-limit rule on the integration user: 4 requests per 2 s (an hour on a
    // real instance). A confirmation takes 4 reads, so every writeback in the same window and
    // some reads meet 429 + Retry-After + X-RateLimit-*.
    h.snow.clear_requests().await;
    h.snow
        .set_rate_limit(Some(RateLimitRule {
            user: Some(JITBRIDGE.to_owned()),
            ..RateLimitRule::per_hour(4).with_window(Duration::from_secs(2))
        }))
        .await;

    h.snow.approve(&number, BOB).await.expect("approve");
    // The grant runs its course regardless of the ITSM's limits.
    let expired = eventually(Duration::from_secs(30), || async {
        h.grants(&number)
            .await
            .into_iter()
            .next()
            .filter(|g| g.state == GrantState::Expired)
    })
    .await
    .expect("the grant expires");
    assert!(
        h.receiver
            .revoked_at(&expired.id.to_string())
            .await
            .is_some()
    );

    let journal = eventually(Duration::from_secs(30), || async {
        let j = h.journal(&number).await;
        j.iter()
            .any(|e| e.value.contains("expired and was revoked"))
            .then_some(j)
    })
    .await
    .expect("every writeback arrives once the limit allows");
    h.wait_state_code(&number, "3").await;
    let texts: Vec<&str> = journal.iter().map(|e| e.value.as_str()).collect();
    let count = |needle: &str| texts.iter().filter(|t| t.contains(needle)).count();
    assert_eq!(
        count("Local admin granted"),
        1,
        "granted note once: {texts:?}"
    );
    assert_eq!(
        count("expired and was revoked"),
        1,
        "expired note once: {texts:?}"
    );
    let pos = |needle: &str| texts.iter().position(|t| t.contains(needle));
    assert!(
        pos("Local admin granted") < pos("expired and was revoked"),
        "in order: {texts:?}"
    );
    h.settle().await;
    assert_eq!(
        h.patches(&number).await,
        4,
        "two notes and two states, each once"
    );

    // The limit was really hit, and after every 429 nothing called before its Retry-After.
    let pauses = h.snow.pauses().await;
    assert!(
        pauses.iter().any(|p| p.status == 429),
        "the rule never refused a call: {pauses:?}"
    );
    let reqs = h.snow.requests().await;
    for p in &pauses {
        let next = reqs.iter().find(|r| r.instant > p.instant);
        if let Some(next) = next {
            let gap = next.instant.duration_since(p.instant);
            assert!(
                gap + Duration::from_millis(20) >= p.retry_after,
                "{} {} called {gap:?} after a {} that asked for {:?}",
                next.method,
                next.path,
                p.status,
                p.retry_after
            );
        }
    }
}

#[tokio::test]
async fn forged_body_naming_the_next_change_cannot_use_up_the_real_approvals_dedupe_key() {
    let h = Snow::start().await;
    let number = h.raise(ALICE, "WS-0049", "2h", &[BOB]).await;
    h.wait_state(&number, GrantState::Requested).await;
    // Signed with the shared secret, it names the very change Bob's approval will make next.
    let forged = h.forged_approval_ahead(&number, 1).await;
    let sent = h
        .snow
        .send_signed(&h.webhook_url(), Some(SNOW_SECRET), &forged)
        .await;
    assert_eq!(sent.responses.first().and_then(|r| r.status), Some(202));
    let forged_event: Value = serde_json::from_slice(&forged).expect("JSON");

    let approved = h.snow.approve(&number, BOB).await.expect("approve");
    let real_item_change = approved
        .deliveries
        .iter()
        .filter_map(|d| serde_json::from_slice::<Value>(&d.body).ok())
        .any(|body| body["event_id"] == forged_event["event_id"]);
    assert!(
        real_item_change,
        "the forged body named the same change as the real delivery"
    );
    for d in &approved.deliveries {
        assert_eq!(
            d.responses.last().and_then(|r| r.status),
            Some(202),
            "the real delivery is accepted, not taken for a duplicate: {}",
            d.event
        );
    }
    h.wait_state(&number, GrantState::Active).await;
    assert_eq!(h.applies().await, 1);
}

#[tokio::test]
async fn duplicate_delivery_answers_duplicate_and_applies_once() {
    let h = Snow::start().await;
    let number = h.raise(ALICE, "WS-0047", "2h", &[BOB]).await;
    let approval = h.snow.approve(&number, BOB).await.expect("approve");
    h.wait_state(&number, GrantState::Active).await;
    for delivery in &approval.deliveries {
        let again = h.snow.resend(delivery).await;
        assert_eq!(again.status, Some(200), "{}", again.body);
        let body: Value = serde_json::from_str(&again.body).expect("JSON");
        assert_eq!(body["status"], "duplicate");
    }
    h.settle().await;
    assert_eq!(h.applies().await, 1);
    assert_eq!(h.grants(&number).await.len(), 1);
    let notes = h.journal(&number).await;
    assert_eq!(
        notes
            .iter()
            .filter(|e| e.value.contains("Local admin granted"))
            .count(),
        1
    );
}

/// The mapping in `connectors/servicenow/install.md` takes the subject from
/// `{{ requester.email }}`. The Business Rule's body names the requester by sys_id only; the
/// e-mail is known after the Table API confirmation, but the grant service renders the grant
/// from the delivery before confirming, so this mapping never describes a grant.
#[tokio::test]
async fn subject_from_the_confirmed_requester_email_is_granted() {
    let h = Snow::start_with(Setup {
        mapping: MAPPING.replace("{{ fields.u_account }}", "{{ requester.email }}"),
        ..Setup::default()
    })
    .await;
    let number = h.raise(ALICE, "WS-0049", "2h", &[BOB]).await;
    h.snow.approve(&number, BOB).await.expect("approve");
    let active = h.wait_state(&number, GrantState::Active).await;
    assert_eq!(active.subject, "alice@example.com");
}
