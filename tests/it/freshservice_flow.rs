//! Whole tickets through Freshservice: the real daemon against the Freshservice simulator over
//! real HTTP. The simulator's Workflow Automator posts the trigger body with the shared secret in
//! `X-Api-Key`; the daemon confirms every approval through API v2 (ticket, requester, approvals,
//! agents), writes back private HTML notes and status codes, and lives within the account's
//! per-minute budget.
//!
//! The mapping names Freshservice's own fields: the request's custom fields by their internal
//! names (`elevation_type`, `target_device`, `duration`), which the admin adds to the workflow
//! body under `custom_fields` (see `/connectors/freshservice/install.md`, step 3.6).

use std::ops::Deref;
use std::time::Duration;

use jitbridge::grants::GrantState;
use jitbridge_sim::freshservice::{
    FreshserviceSim, FreshserviceSimConfig, NewServiceRequest, Rendering, Requester, RetryPolicy,
    status, users,
};
use jitbridge_sim::receiver::CallKind;
use serde_json::json;

use crate::harness::{Daemon, Options, eventually};

/// What the Workflow Automator sends in `X-Api-Key` (the connector's `FRESHSERVICE_WEBHOOK_SECRET`).
const FS_SECRET: &str = "test-fs-shared-secret";

/// The custom fields the workflow body carries, by their Freshservice internal names.
const BODY_FIELDS: [&str; 3] = ["elevation_type", "target_device", "duration"];

/// A mapping for Freshservice service requests in Freshservice's own terms: custom fields by
/// internal name, approval by the approval trigger (confirmed through the API), the built-in
/// statuses by name (Pending 3, Resolved 4, Closed 5).
const MAPPING: &str = r#"
[[mapping]]
name = "freshservice-local-admin"
connector = "freshservice"
when = 'fields.custom_fields.elevation_type == "Local admin"'

[mapping.grant]
subject  = "{{ requester.email }}"
target   = "{{ fields.custom_fields.target_device }}"
scope    = "local-admin"
duration = "{{ fields.custom_fields.duration | default('60m', true) }}"
max_duration = "4h"
provider = "endpoint-agent"

[mapping.on]
approve = { event = ["approved"] }
deny    = { event = ["rejected"] }
revoke  = { status = ["Resolved", "Closed"] }

[mapping.policy]
distinct_approver = true
requesters = ["*@example.com"]
targets = ["WS-*", "LT-*"]

[mapping.writeback]
active    = { comment = "Local admin granted to {{ grant.subject }} on {{ grant.target }} until {{ grant.expires_at }}.", status = "Pending" }
expired   = { comment = "Local admin on {{ grant.target }} expired and was revoked.", status = "Resolved" }
revoked   = { comment = "Local admin on {{ grant.target }} revoked: {{ reason }}." }
denied    = { comment = "Elevation refused: {{ reason }}." }
failed    = { comment = "Elevation could not be applied: {{ reason }}." }
cancelled = { comment = "Request cancelled before approval." }
"#;

/// The connector file for a simulator at `base`, with `extra` kind-specific keys.
fn connector_file(base: &str, extra: &str) -> String {
    format!(
        r#"
id = "freshservice"
kind = "freshservice"
base_url = "{base}"
timeout = "2s"
{extra}

[inbound]
auth = "header"
header = "X-Api-Key"
secret_env = "FRESHSERVICE_WEBHOOK_SECRET"

[outbound]
auth = "api-key"
token_env = "FRESHSERVICE_API_KEY"
"#
    )
}

/// The simulator as the tests want it: the workflow body carries the elevation fields, and
/// failed deliveries are retried quickly.
fn sim_config() -> FreshserviceSimConfig {
    FreshserviceSimConfig {
        body_custom_fields: BODY_FIELDS.iter().map(|s| (*s).to_owned()).collect(),
        retry: RetryPolicy {
            max_retries: 2,
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            attempt_timeout: Duration::from_secs(5),
        },
        ..FreshserviceSimConfig::default()
    }
}

/// The daemon wired to a Freshservice simulator whose workflow posts to it.
struct Fs {
    d: Daemon,
    fs: FreshserviceSim,
}

impl Deref for Fs {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.d
    }
}

impl Fs {
    async fn start() -> Self {
        Self::start_with(sim_config(), "").await
    }

    /// Starts the simulator with `config`, the daemon with the connector file (plus `extra`
    /// keys) and the mapping above, and points the workflow webhook at the daemon.
    async fn start_with(config: FreshserviceSimConfig, extra: &str) -> Self {
        let fs = FreshserviceSim::start(config)
            .await
            .expect("freshservice sim");
        let opts = Options {
            mapping: MAPPING.into(),
            ..Options::default()
        };
        let d = Daemon::start(
            &[("freshservice.toml", connector_file(fs.base_url(), extra))],
            &opts,
            &[
                ("FRESHSERVICE_WEBHOOK_SECRET", FS_SECRET),
                ("FRESHSERVICE_API_KEY", users::API_KEY),
            ],
        )
        .await;
        let h = Self { d, fs };
        h.fs.add_webhook(&h.webhook_url(), Some(FS_SECRET)).await;
        h
    }

    fn webhook_url(&self) -> String {
        self.webhook_url_for("freshservice")
    }

    /// `requester` raises a local-admin request for `target`, approvable by `approvers`;
    /// returns the ticket id once the daemon tracks it.
    async fn raise(&self, requester: u64, target: &str, duration: &str, approvers: &[u64]) -> u64 {
        let created = self
            .fs
            .create_request(
                NewServiceRequest::new(requester, &format!("Local admin on {target}"))
                    .elevation("Local admin", target, duration)
                    .approvers(approvers),
            )
            .await
            .expect("request raised");
        assert!(
            created.deliveries.iter().all(|d| d.delivered()),
            "the workflow's delivery was accepted: {:?}",
            created.deliveries
        );
        created.ticket_id
    }

    /// The daemon's key for a Freshservice ticket.
    fn key(id: u64) -> String {
        format!("#{id}")
    }

    /// The ticket's notes as text, oldest first.
    async fn notes(&self, id: u64) -> Vec<String> {
        self.fs
            .notes(id)
            .await
            .expect("notes")
            .into_iter()
            .map(|n| n.body_text)
            .collect()
    }

    /// Waits until the ticket has a note containing `needle`; returns all notes.
    async fn wait_note(&self, id: u64, needle: &str) -> Vec<String> {
        eventually(Duration::from_secs(15), || async {
            let notes = self.notes(id).await;
            notes.iter().any(|t| t.contains(needle)).then_some(notes)
        })
        .await
        .unwrap_or_else(|| panic!("#{id}: no note containing {needle:?}"))
    }

    /// Waits until the ticket's status code is `code`.
    async fn wait_status(&self, id: u64, code: u8) {
        let ok = eventually(Duration::from_secs(15), || async {
            (self.fs.ticket(id).await.expect("ticket").status == code).then_some(())
        })
        .await;
        let now = self.fs.ticket(id).await.expect("ticket").status;
        assert!(ok.is_some(), "#{id}: status never became {code} (is {now})");
    }

    /// Every API call the daemon made was authenticated (the API key was accepted).
    async fn assert_api_calls_authenticated(&self) {
        let refused: Vec<_> = self
            .fs
            .requests()
            .await
            .into_iter()
            .filter(|r| r.status == 401)
            .collect();
        assert!(refused.is_empty(), "API calls refused: {refused:?}");
    }
}

/// A workflow body as the shipped template renders it, with the custom fields added.
fn trigger_body(id: u64, event: &str, approval: &str, target: &str) -> Vec<u8> {
    json!({
        "ticket_id": id.to_string(), "event": event, "status": "2",
        "approval_status": approval, "requester_email": "alice@example.com",
        "updated_at": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "custom_fields": {"elevation_type": "Local admin", "target_device": target, "duration": "2h"},
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn approved_request_is_granted_noted_and_revoked_at_its_deadline() {
    let h = Fs::start().await;
    let id = h.raise(users::ALICE, "WS-0042", "3s", &[users::BOB]).await;
    let key = Fs::key(id);
    h.wait_state(&key, GrantState::Requested).await;

    h.fs.approve(id, users::BOB).await.expect("approve");
    let active = h.wait_state(&key, GrantState::Active).await;
    assert_eq!(active.subject, "alice@example.com");
    assert_eq!(active.target, "WS-0042");
    assert_eq!(active.scope, "local-admin");
    assert_eq!(active.duration, jiff::SignedDuration::from_secs(3));
    // The approver and requester come from the API, not from the (unsigned) body.
    let approver = active.approvers.first().expect("an approver");
    assert_eq!(approver.email.as_deref(), Some("bob@example.com"));
    assert_eq!(
        approver.id.as_deref(),
        Some(users::BOB.to_string().as_str())
    );
    assert_eq!(
        active.requester.as_ref().and_then(|p| p.id.as_deref()),
        Some(users::ALICE.to_string().as_str())
    );

    // The endpoint holds the privilege, and every provider call was correctly signed.
    assert!(
        h.receiver
            .holds("alice@example.com", "WS-0042", "local-admin")
            .await
    );
    let calls = h.receiver.calls().await;
    assert!(calls.iter().all(|c| c.signature_valid), "{calls:?}");

    // A private note by jitbridge's agent, in HTML, and the ticket moved to Pending.
    h.wait_note(
        id,
        "Local admin granted to alice@example.com on WS-0042 until",
    )
    .await;
    let note = h.fs.notes(id).await.expect("notes").remove(0);
    assert!(note.private, "grant details are private notes by default");
    assert_eq!(note.user_id, users::JITBRIDGE);
    assert!(note.body.starts_with("<p>"), "{}", note.body);
    h.wait_status(id, status::PENDING).await;

    // Deadline → revoke at the endpoint → note + Resolved.
    let expired = h.wait_state(&key, GrantState::Expired).await;
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
    assert!(revoked_at >= expired.expires_at.expect("deadline"));
    let notes = h
        .wait_note(id, "Local admin on WS-0042 expired and was revoked.")
        .await;
    assert_eq!(
        notes.len(),
        3,
        "the summary, then one note per written state: {notes:?}"
    );
    h.wait_status(id, status::RESOLVED).await;

    // Our own status writebacks come back as workflow deliveries and change nothing.
    h.settle().await;
    assert_eq!(h.grants(&key).await.len(), 1);
    assert_eq!(h.provider_calls(CallKind::Apply).await, 1);
    assert_eq!(h.provider_calls(CallKind::Revoke).await, 1);

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
    h.assert_api_calls_authenticated().await;
}

#[tokio::test]
async fn ticket_resolved_early_revokes_the_grant_and_notes_why() {
    let h = Fs::start().await;
    let id = h.raise(users::ALICE, "LT-0007", "2h", &[users::BOB]).await;
    let key = Fs::key(id);
    h.wait_state(&key, GrantState::Requested).await;
    h.fs.approve(id, users::BOB).await.expect("approve");
    let active = h.wait_state(&key, GrantState::Active).await;
    h.wait_status(id, status::PENDING).await;

    h.fs.set_status(id, status::RESOLVED, users::CAROL)
        .await
        .expect("resolve");
    let revoked = h.wait_state(&key, GrantState::Revoked).await;
    assert_eq!(revoked.id, active.id);
    assert!(revoked.ended_at.expect("ended") < revoked.expires_at.expect("deadline"));
    assert!(
        !h.receiver
            .holds("alice@example.com", "LT-0007", "local-admin")
            .await
    );
    h.wait_note(
        id,
        "Local admin on LT-0007 revoked: the ticket reached status Resolved.",
    )
    .await;
    // The revoked writeback names no status: the technician's Resolved stays.
    h.settle().await;
    assert_eq!(
        h.fs.ticket(id).await.expect("ticket").status,
        status::RESOLVED
    );
}

#[tokio::test]
async fn rejected_request_is_denied_and_noted_without_any_provider_call() {
    let h = Fs::start().await;
    let id = h.raise(users::ALICE, "WS-0043", "10m", &[users::BOB]).await;
    let key = Fs::key(id);
    h.wait_state(&key, GrantState::Requested).await;

    let rejected = h.fs.reject(id, users::BOB).await.expect("reject");
    assert_eq!(rejected.deliveries[0].json()["approval_status"], "2");
    let g = h.wait_state(&key, GrantState::Denied).await;
    let reason = g.reason.unwrap_or_default();
    assert!(reason.contains("declined"), "{reason}");
    h.wait_note(id, "Elevation refused: declined in the ticket")
        .await;
    h.settle().await;
    assert!(
        h.receiver.calls().await.is_empty(),
        "a rejected request reached the provider"
    );
    assert_eq!(h.grants(&key).await.len(), 1);
}

#[tokio::test]
async fn request_closed_before_approval_is_cancelled_and_never_reaches_the_provider() {
    let h = Fs::start().await;
    let id = h.raise(users::ALICE, "WS-0045", "10m", &[users::BOB]).await;
    let key = Fs::key(id);
    h.wait_state(&key, GrantState::Requested).await;

    h.fs.set_status(id, status::CLOSED, users::CAROL)
        .await
        .expect("close");
    let g = h.wait_state(&key, GrantState::Cancelled).await;
    assert!(g.approved_at.is_none());
    h.wait_note(id, "Request cancelled before approval.").await;
    h.settle().await;
    assert!(h.receiver.calls().await.is_empty());
    // Nothing was approved, so nothing needed confirming: no approvals were even read.
    let reads: Vec<_> =
        h.fs.requests()
            .await
            .into_iter()
            .filter(|r| r.path.ends_with("/approvals"))
            .collect();
    assert!(reads.is_empty(), "{reads:?}");
}

#[tokio::test]
async fn approval_by_the_requester_is_denied_and_noted() {
    // Carol is an agent who also raises requests: the same Freshservice user id on both sides.
    let mut config = sim_config();
    config.requesters.push(Requester {
        id: users::CAROL,
        primary_email: "carol@example.com".into(),
        first_name: "Carol".into(),
        last_name: "Agent".into(),
    });
    let h = Fs::start_with(config, "").await;
    let id = h
        .raise(users::CAROL, "WS-0044", "10m", &[users::CAROL, users::BOB])
        .await;
    let key = Fs::key(id);
    h.wait_state(&key, GrantState::Requested).await;

    h.fs.approve(id, users::CAROL)
        .await
        .expect("self-approve in Freshservice");
    let g = h.wait_state(&key, GrantState::Denied).await;
    let reason = g.reason.unwrap_or_default();
    assert!(reason.contains("requester"), "{reason}");
    h.wait_note(id, "Elevation refused: approver").await;
    h.settle().await;
    assert!(
        h.receiver.calls().await.is_empty(),
        "a self-approved request reached the provider"
    );
}

#[tokio::test]
async fn forged_or_unauthenticated_delivery_is_refused_with_401_and_nothing_is_stored() {
    let h = Fs::start().await;
    h.fs.clear_webhooks().await;
    // A real, approved request: only the delivery's authentication is wrong.
    let id = h.raise(users::ALICE, "WS-0046", "2h", &[users::BOB]).await;
    h.fs.approve(id, users::BOB).await.expect("approve");
    let body = trigger_body(id, "approval_updated", "Approved", "WS-0046");
    let url = h.webhook_url();

    let wrong = h.fs.send_signed(&url, Some("not-the-secret"), &body).await;
    let answer = &wrong.responses[0];
    assert_eq!(answer.status, Some(401), "wrong secret: {}", answer.body);
    let err: serde_json::Value = serde_json::from_str(&answer.body).expect("json error");
    assert_eq!(err["error"], "unauthorized");
    assert!(
        !answer.body.contains("not-the-secret") && !answer.body.contains(FS_SECRET),
        "the error echoes a secret: {}",
        answer.body
    );
    let missing = h.fs.send_signed(&url, None, &body).await;
    assert_eq!(missing.responses[0].status, Some(401), "no secret");
    // The right secret in the wrong place (Basic auth, as the node's own auth option sends it).
    let elsewhere =
        h.fs.send_raw(
            &url,
            &[
                ("Content-Type".into(), "application/json".into()),
                ("Authorization".into(), format!("Bearer {FS_SECRET}")),
            ],
            &body,
        )
        .await;
    assert_eq!(elsewhere.status, Some(401), "secret outside X-Api-Key");

    h.settle().await;
    assert!(h.grants(&Fs::key(id)).await.is_empty());
    let audit = h.store().audit_records(0, 100).await.expect("audit");
    assert!(
        audit.is_empty(),
        "a refused delivery left audit records: {audit:?}"
    );
    let ticket_calls: Vec<_> =
        h.fs.requests()
            .await
            .into_iter()
            .filter(|r| r.path.contains(&id.to_string()))
            .collect();
    assert!(
        ticket_calls.is_empty(),
        "a refused delivery caused API calls: {ticket_calls:?}"
    );
    assert!(h.receiver.calls().await.is_empty());

    // The same body with the right secret is accepted: the refusals were about authentication.
    let right = h.fs.send_signed(&url, Some(FS_SECRET), &body).await;
    assert_eq!(
        right.responses[0].status,
        Some(202),
        "{}",
        right.responses[0].body
    );
}

#[tokio::test]
async fn body_claiming_approval_that_the_api_does_not_confirm_grants_nothing() {
    let h = Fs::start().await;
    let id = h.raise(users::ALICE, "WS-0048", "2h", &[users::BOB]).await;
    let key = Fs::key(id);
    h.wait_state(&key, GrantState::Requested).await;
    // The shared secret leaked: a well-authenticated body says "Approved", but Freshservice
    // still waits for Bob.
    let body = trigger_body(id, "approval_updated", "Approved", "WS-0048");
    let sent =
        h.fs.send_signed(&h.webhook_url(), Some(FS_SECRET), &body)
            .await;
    assert_eq!(sent.responses[0].status, Some(202));
    let audited = eventually(Duration::from_secs(10), || async {
        let a = h.audit("approval.unconfirmed").await;
        (!a.is_empty()).then_some(a)
    })
    .await
    .expect("the unconfirmed approval is audited");
    assert_eq!(audited[0].record.ticket_key.as_deref(), Some(key.as_str()));
    let why = audited[0].record.detail["why"].as_str().unwrap_or_default();
    assert!(why.contains("pending"), "{why}");
    assert_eq!(
        audited[0].record.detail["confirmed"]["approval"]["state"],
        "pending"
    );
    h.settle().await;
    assert_eq!(h.grants(&key).await[0].state, GrantState::Requested);
    assert!(h.receiver.calls().await.is_empty());
    // The ticket was read, through the API, with the API key.
    assert!(h.fs.requests().await.iter().any(|r| r.method == "GET"
        && r.path == format!("/api/v2/tickets/{id}")
        && r.status == 200));

    // Bob's real approval afterwards is granted as usual.
    h.fs.approve(id, users::BOB).await.expect("approve");
    h.wait_state(&key, GrantState::Active).await;
}

#[tokio::test]
async fn duplicate_delivery_answers_duplicate_and_applies_once() {
    let h = Fs::start().await;
    let id = h.raise(users::ALICE, "WS-0047", "2h", &[users::BOB]).await;
    let key = Fs::key(id);
    let approval = h.fs.approve(id, users::BOB).await.expect("approve");
    h.wait_state(&key, GrantState::Active).await;
    let delivery = approval
        .deliveries
        .first()
        .expect("approval webhook")
        .clone();
    let again = h.fs.resend(&delivery).await;
    assert_eq!(again.status, Some(200), "{}", again.body);
    assert!(again.body.contains("\"duplicate\""), "{}", again.body);
    h.settle().await;
    assert_eq!(h.provider_calls(CallKind::Apply).await, 1);
    assert_eq!(h.grants(&key).await.len(), 1);
}

#[tokio::test]
async fn approval_whose_placeholders_rendered_empty_is_rejected_and_grants_nothing() {
    let h = Fs::start().await;
    let id = h.raise(users::ALICE, "WS-0049", "2h", &[users::BOB]).await;
    let key = Fs::key(id);
    h.wait_state(&key, GrantState::Requested).await;
    let broken =
        h.fs.emit(id, "approval_updated", Rendering::Broken)
            .await
            .expect("emit");
    assert_eq!(broken[0].json()["ticket_id"], "");
    // Authenticated and JSON, so stored; the parser then refuses it, naming the field.
    let rejected = eventually(Duration::from_secs(10), || async {
        let a = h.audit("delivery.rejected").await;
        (!a.is_empty()).then_some(a)
    })
    .await
    .expect("the broken body is rejected and audited");
    let why = rejected[0].record.detail["why"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("ticket_id") && why.contains("empty"), "{why}");
    h.settle().await;
    assert_eq!(h.grants(&key).await[0].state, GrantState::Requested);
    assert!(h.receiver.calls().await.is_empty());
}

#[tokio::test]
async fn rate_limited_api_is_waited_out_and_writebacks_arrive_once_in_order() {
    // Pre-emptive pacing works on Freshservice's one-minute window and is proven in the
    // connector's unit tests; here it is off so the simulator's short window can be used, and
    // what is proven is that every 429's Retry-After is honoured, by confirmations and
    // writebacks alike.
    let h = Fs::start_with(sim_config(), "min_remaining = 0").await;
    let id = h.raise(users::ALICE, "WS-0100", "3s", &[users::BOB]).await;
    let key = Fs::key(id);
    h.wait_state(&key, GrantState::Requested).await;

    // Four calls per two seconds: exactly one confirmation (ticket, requester, approvals,
    // approver), or the writebacks of one state. Another integration on the account has just
    // spent one, so the confirmation runs into a 429 and must wait for the next window.
    h.fs.set_rate_limit(4, Duration::from_secs(2)).await;
    let other = reqwest::Client::new()
        .get(format!("{}/api/v2/tickets/{id}", h.fs.base_url()))
        .basic_auth(users::API_KEY, Some("X"))
        .send()
        .await
        .expect("other integration");
    assert_eq!(other.headers()["x-ratelimit-remaining"], "3");
    h.fs.approve(id, users::BOB).await.expect("approve");

    let expired = h.wait_state(&key, GrantState::Expired).await;
    assert!(
        h.receiver
            .revoked_at(&expired.id.to_string())
            .await
            .is_some()
    );
    let notes = h
        .wait_note(id, "Local admin on WS-0100 expired and was revoked.")
        .await;
    h.wait_status(id, status::RESOLVED).await;

    // Each writeback exactly once, in the order of the grant's states.
    let granted = notes
        .iter()
        .filter(|t| t.contains("Local admin granted"))
        .count();
    let ended = notes
        .iter()
        .filter(|t| t.contains("expired and was revoked"))
        .count();
    assert_eq!((granted, ended), (1, 1), "{notes:?}");
    let pos = |needle: &str| notes.iter().position(|t| t.contains(needle));
    assert!(
        pos("Local admin granted") < pos("expired and was revoked"),
        "{notes:?}"
    );
    let puts =
        h.fs.requests()
            .await
            .into_iter()
            .filter(|r| r.method == "PUT" && r.status == 200)
            .count();
    assert_eq!(puts, 2, "Pending, then Resolved: one successful PUT each");

    // The limit was hit, and no call at all was made inside any Retry-After window.
    let limited = h.fs.rate_limited().await;
    assert!(!limited.is_empty(), "the scenario never ran into the limit");
    let requests = h.fs.requests().await;
    for l in &limited {
        let early: Vec<_> = requests
            .iter()
            .filter(|r| r.instant > l.instant && r.instant < l.instant + l.retry_after)
            .map(|r| (r.method.clone(), r.path.clone(), r.instant - l.instant))
            .collect();
        assert!(
            early.is_empty(),
            "calls within {:?} of a 429 on {} {}: {early:?}",
            l.retry_after,
            l.method,
            l.path
        );
    }
    h.assert_api_calls_authenticated().await;
}

/// Core bug, reported rather than patched (it lives in `grants::service`, outside this
/// connector): the grant is rendered from the *event* — the unsigned workflow body — and the
/// confirmation only vets the approval state, requester (for policy) and approvers. Someone
/// holding the shared secret can therefore replay an approval of a genuinely approved request
/// with another `target_device` or `requester_email`, and the grant follows the body.
/// The fix: render the grant (and `when`) from the confirmed ticket — e.g. a
/// `Confirmation::fields` carrying the API's `custom_fields`, and the confirmed requester in
/// place of the event's — before `render_grant`.
#[tokio::test]
async fn approved_request_replayed_with_another_target_grants_only_the_requested_target() {
    let h = Fs::start().await;
    let id = h.raise(users::ALICE, "WS-0050", "2h", &[users::BOB]).await;
    let key = Fs::key(id);
    h.wait_state(&key, GrantState::Requested).await;
    h.fs.clear_webhooks().await;
    h.fs.approve(id, users::BOB).await.expect("approve");
    // Before Bob's real delivery arrives, a forged one names a server instead of the laptop.
    let body = trigger_body(id, "approval_updated", "Approved", "WS-DOMAIN-CONTROLLER");
    let sent =
        h.fs.send_signed(&h.webhook_url(), Some(FS_SECRET), &body)
            .await;
    assert_eq!(sent.responses[0].status, Some(202));
    h.settle().await;
    assert!(
        !h.receiver
            .holds("alice@example.com", "WS-DOMAIN-CONTROLLER", "local-admin")
            .await,
        "the body chose the target"
    );
}
