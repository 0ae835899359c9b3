//! Whole tickets through Zendesk Support: the shipped generic connector file
//! (`connectors/zendesk.toml.example`) against the Zendesk simulator, whose triggers notify the
//! real daemon with a bearer token exactly as `connectors/zendesk/install.md` sets them up.

use std::time::Duration;

use jitbridge::grants::{Grant, GrantState};
use jitbridge_sim::receiver::CallKind;
use jitbridge_sim::zendesk::{
    DURATION_FIELD, NewTicket, TARGET_FIELD, TRIGGER_BODY, ZendeskSim, ZendeskSimConfig, users,
};
use serde_json::{Value, json};

use crate::harness::{Daemon, Options, eventually};

/// The bearer token the Zendesk webhook sends (the trigger side and jitbridge share it).
const WEBHOOK_TOKEN: &str = "test-zendesk-webhook-bearer-token";

/// The worked example exactly as shipped; only its base URL is pointed at the simulator.
const CONNECTOR: &str = include_str!("../../connectors/zendesk.toml.example");

/// A mapping written in Zendesk's terms: its `type`/`status` names and the trigger body's
/// `target`/`duration` keys under `fields`, approval and refusal by the trigger's event word,
/// Zendesk status names in writebacks.
const MAPPING: &str = r#"
[[mapping]]
name = "zendesk-local-admin"
connector = "zendesk"
when = 'fields.type == "Task" && fields.target != ""'

[mapping.grant]
subject  = "{{ requester.email }}"
target   = "{{ fields.target }}"
scope    = "local-admin"
duration = "{{ fields.duration | default('60m', true) }}"
max_duration = "4h"
provider = "endpoint-agent"

[mapping.on]
approve = { event = ["approved"] }
deny    = { event = ["rejected"] }
revoke  = { event = ["resolved", "cancelled"] }

[mapping.policy]
distinct_approver = true
requesters = ["*@example.com"]
targets = ["WS-*", "LT-*"]

[mapping.writeback]
active    = { comment = "Local admin granted to {{ grant.subject }} on {{ grant.target }} until {{ grant.expires_at }}.", status = "open" }
expired   = { comment = "Local admin on {{ grant.target }} expired and was revoked.", status = "solved" }
revoked   = { comment = "Local admin on {{ grant.target }} revoked: {{ reason }}." }
denied    = { comment = "Elevation refused: {{ reason }}." }
cancelled = { comment = "Request cancelled before approval." }
failed    = { comment = "Elevation could not be applied: {{ reason }}." }
"#;

/// The daemon with the Zendesk connector, plus a simulated Zendesk account whose triggers
/// notify it.
struct Zd {
    d: Daemon,
    zd: ZendeskSim,
}

impl std::ops::Deref for Zd {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.d
    }
}

impl Zd {
    async fn start() -> Self {
        Self::start_with(Options {
            mapping: MAPPING.into(),
            ..Options::default()
        })
        .await
    }

    async fn start_with(opts: Options) -> Self {
        let zd = ZendeskSim::start(ZendeskSimConfig::default())
            .await
            .expect("zendesk sim");
        let connector = CONNECTOR.replace("https://example.zendesk.com", zd.base_url());
        assert_ne!(connector, CONNECTOR, "the example's base_url was replaced");
        let d = Daemon::start(
            &[("zendesk.toml", connector)],
            &opts,
            &[
                ("ZENDESK_WEBHOOK_TOKEN", WEBHOOK_TOKEN),
                ("ZENDESK_API_TOKEN", users::API_TOKEN),
            ],
        )
        .await;
        zd.set_webhook(&d.webhook_url_for("zendesk"), WEBHOOK_TOKEN)
            .await;
        Self { d, zd }
    }

    /// Raises an elevation request as `requester` (the "ticket created" trigger fires).
    async fn raise(&self, requester: u64, target: &str, duration: &str) -> u64 {
        let mut ticket = NewTicket::new(requester, "Need local admin to install a driver")
            .field(TARGET_FIELD, json!(target));
        if !duration.is_empty() {
            ticket = ticket.field(DURATION_FIELD, json!(duration));
        }
        let outcome = self.zd.create_ticket(ticket).await.expect("ticket created");
        assert_eq!(
            outcome.deliveries.first().and_then(|d| d.response.status),
            Some(202),
            "the created trigger was accepted: {:?}",
            outcome.deliveries
        );
        outcome.ticket_id
    }

    /// Sets Approval as `who`; the "approval changed" trigger's delivery must be accepted.
    async fn set_approval(&self, id: u64, tag: &str, who: u64) -> jitbridge_sim::zendesk::Delivery {
        let outcome = self
            .zd
            .set_approval(id, tag, who)
            .await
            .expect("approval set");
        let delivery = outcome
            .deliveries
            .into_iter()
            .next()
            .expect("the approval trigger fired");
        assert_eq!(
            delivery.response.status,
            Some(202),
            "{:?}",
            delivery.response
        );
        delivery
    }

    async fn wait(&self, id: u64, state: GrantState) -> Grant {
        self.wait_state(&id.to_string(), state).await
    }

    /// The ticket's comments as (body, public, author).
    async fn comments(&self, id: u64) -> Vec<(String, bool, u64)> {
        self.zd
            .comments(id)
            .await
            .expect("comments")
            .into_iter()
            .map(|c| (c.body, c.public, c.author_id))
            .collect()
    }

    /// Waits for a comment containing `needle`; it must be an internal note by the API user.
    async fn wait_note(&self, id: u64, needle: &str) -> Vec<(String, bool, u64)> {
        let all = eventually(Duration::from_secs(20), || async {
            let c = self.comments(id).await;
            c.iter().any(|(b, _, _)| b.contains(needle)).then_some(c)
        })
        .await
        .unwrap_or_else(|| panic!("ticket {id}: no comment containing {needle:?}"));
        for (body, public, author) in all.iter().filter(|(b, _, _)| b.contains(needle)) {
            assert!(!public, "jitbridge's notes are internal: {body}");
            assert_eq!(*author, users::JITBRIDGE, "written by the API user: {body}");
        }
        all
    }

    async fn wait_status(&self, id: u64, status: &str) {
        let ok = eventually(Duration::from_secs(20), || async {
            (self.zd.ticket(id).await.expect("ticket").status == status).then_some(())
        })
        .await;
        let now = self.zd.ticket(id).await.expect("ticket").status;
        assert!(
            ok.is_some(),
            "ticket {id}: status never became {status}; it is {now}"
        );
    }

    /// The successful writes to the ticket, in arrival order: `comment:<text>` or `status:<name>`.
    async fn writes(&self, id: u64) -> Vec<String> {
        let path = format!("/api/v2/tickets/{id}.json");
        self.zd
            .requests()
            .await
            .into_iter()
            .filter(|r| r.method == "PUT" && r.path == path && r.status == 200)
            .filter_map(|r| {
                let t = r.body?.get("ticket")?.clone();
                match (t.get("comment"), t.get("status")) {
                    (Some(c), _) => Some(format!("comment:{}", c["body"].as_str()?)),
                    (None, Some(s)) => Some(format!("status:{}", s.as_str()?)),
                    _ => None,
                }
            })
            .collect()
    }

    /// Waits until `n` successful writes to the ticket are logged (the simulator logs a request
    /// after answering it, so a status may show before its request does), and returns them.
    async fn wait_writes(&self, id: u64, n: usize) -> Vec<String> {
        eventually(Duration::from_secs(20), || async {
            let w = self.writes(id).await;
            (w.len() >= n).then_some(w)
        })
        .await;
        self.writes(id).await
    }

    /// Provider apply calls received so far.
    async fn applies(&self) -> usize {
        self.receiver
            .calls()
            .await
            .into_iter()
            .filter(|c| c.kind == Some(CallKind::Apply))
            .count()
    }

    /// GETs the connector made against this ticket's API record.
    async fn confirm_reads(&self, id: u64) -> usize {
        let path = format!("/api/v2/tickets/{id}.json");
        self.zd
            .requests()
            .await
            .into_iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .count()
    }
}

/// The example's trigger body with the Approval value and event word forced to `tag`, whatever
/// the ticket really holds (what an attacker who knows the bearer token could send).
fn body_claiming(tag: &str) -> String {
    TRIGGER_BODY
        .replace("EVENT", &format!("approval:{tag}"))
        .replace("{{ticket.ticket_field_360001234567}}", tag)
}

#[tokio::test]
async fn approved_ticket_is_granted_noted_and_revoked_at_its_deadline() {
    let z = Zd::start().await;
    let id = z.raise(users::ALICE, "WS-0042", "4s").await;
    let requested = z.wait(id, GrantState::Requested).await;
    assert_eq!(requested.subject, "alice@example.com");
    // The helpdesk parks the ticket while it waits for the approver.
    z.zd.set_status(id, "pending", users::CAROL)
        .await
        .expect("pending");

    z.set_approval(id, "jit_approved", users::BOB).await;
    let active = z.wait(id, GrantState::Active).await;
    assert_eq!(
        active.id, requested.id,
        "the requested grant is the one approved"
    );
    assert_eq!(active.target, "WS-0042");
    assert_eq!(active.scope, "local-admin");
    assert_eq!(active.duration, jiff::SignedDuration::from_secs(4));
    // The approver and requester come from the API (audits, users), with their e-mails.
    assert_eq!(
        active
            .approvers
            .iter()
            .map(|p| p.email.clone())
            .collect::<Vec<_>>(),
        vec![Some("bob@example.com".to_owned())]
    );
    assert_eq!(
        active.requester.as_ref().and_then(|p| p.email.as_deref()),
        Some("alice@example.com")
    );
    assert!(
        z.confirm_reads(id).await >= 1,
        "the approval was read back from the API"
    );

    // The endpoint holds the privilege, through correctly signed calls.
    assert!(
        z.receiver
            .holds("alice@example.com", "WS-0042", "local-admin")
            .await
    );
    let calls = z.receiver.calls().await;
    assert!(!calls.is_empty());
    assert!(calls.iter().all(|c| c.signature_valid), "{calls:?}");
    let apply = calls
        .iter()
        .find(|c| c.kind == Some(CallKind::Apply))
        .expect("apply call");
    let grant = apply.grant.clone().unwrap_or(Value::Null);
    assert_eq!(grant["ticket"]["connector"], "zendesk");
    assert_eq!(grant["ticket"]["key"], id.to_string());
    assert_eq!(
        grant["ticket"]["url"],
        format!("{}/agent/tickets/{id}", z.zd.base_url())
    );

    // Internal note + status back on the ticket.
    z.wait_note(
        id,
        "Local admin granted to alice@example.com on WS-0042 until",
    )
    .await;
    z.wait_status(id, "open").await;

    // Deadline → revoke → note + solved.
    let expired = z.wait(id, GrantState::Expired).await;
    assert_eq!(expired.id, active.id);
    assert!(
        !z.receiver
            .holds("alice@example.com", "WS-0042", "local-admin")
            .await
    );
    let revoked_at = z
        .receiver
        .revoked_at(&expired.id.to_string())
        .await
        .expect("revoke call");
    assert!(
        revoked_at >= expired.expires_at.expect("deadline"),
        "revoked early"
    );
    z.wait_note(id, "Local admin on WS-0042 expired and was revoked.")
        .await;
    z.wait_status(id, "solved").await;
    let writes = z.wait_writes(id, 5).await;
    assert_eq!(writes.len(), 5, "{writes:?}");
    assert!(
        writes[0].starts_with("comment:Elevation request received."),
        "{writes:?}"
    );
    assert!(
        writes[1].starts_with("comment:Local admin granted"),
        "{writes:?}"
    );
    // Each note ends with its marker, which `[writeback.exists]` looks for before a re-post.
    assert!(
        writes[1].ends_with(":active:comment") && writes[1].contains("\n\njitbridge:"),
        "{writes:?}"
    );
    assert_eq!(writes[2], "status:open");
    assert!(
        writes[3].starts_with("comment:Local admin on WS-0042 expired"),
        "{writes:?}"
    );
    assert_eq!(writes[4], "status:solved");

    // Our own "solved" ran the solved trigger: recorded and ignored, no second grant.
    z.settle().await;
    assert_eq!(z.grants(&id.to_string()).await.len(), 1);
    assert_eq!(z.applies().await, 1);

    let kinds: Vec<String> = z
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
    let verdict = jitbridge::admin::verify_audit(z.store().as_ref())
        .await
        .expect("verify");
    assert_eq!(verdict["ok"], true, "{verdict}");
}

#[tokio::test]
async fn rejected_ticket_is_denied_and_noted_without_any_provider_call() {
    let z = Zd::start().await;
    let id = z.raise(users::ALICE, "WS-0043", "10m").await;
    z.wait(id, GrantState::Requested).await;
    z.set_approval(id, "jit_rejected", users::BOB).await;
    let g = z.wait(id, GrantState::Denied).await;
    let reason = g.reason.unwrap_or_default();
    assert!(
        reason.contains("declined") && reason.contains("bob@example.com"),
        "{reason}"
    );
    z.wait_note(
        id,
        "Elevation refused: declined in the ticket by bob@example.com",
    )
    .await;
    z.settle().await;
    assert!(
        z.receiver.calls().await.is_empty(),
        "a rejected request reached the provider"
    );
}

#[tokio::test]
async fn ticket_solved_before_approval_is_cancelled_without_any_provider_call() {
    let z = Zd::start().await;
    let id = z.raise(users::ALICE, "WS-0044", "10m").await;
    z.wait(id, GrantState::Requested).await;
    let solved =
        z.zd.set_status(id, "solved", users::CAROL)
            .await
            .expect("solve");
    assert_eq!(solved.deliveries.len(), 1, "the solved trigger fired");
    let g = z.wait(id, GrantState::Cancelled).await;
    assert!(g.approved_at.is_none());
    z.wait_note(id, "Request cancelled before approval.").await;
    z.settle().await;
    assert!(z.receiver.calls().await.is_empty());
}

#[tokio::test]
async fn approval_by_the_requester_is_denied_even_when_an_agent_approves_again() {
    let z = Zd::start().await;
    // Carol is an agent: Zendesk lets her set Approval on the ticket she raised herself.
    let id = z.raise(users::CAROL, "LT-0007", "10m").await;
    z.wait(id, GrantState::Requested).await;
    z.set_approval(id, "jit_approved", users::CAROL).await;
    let g = z.wait(id, GrantState::Denied).await;
    let reason = g.reason.unwrap_or_default();
    assert!(
        reason.contains("carol@example.com") && reason.contains("requester"),
        "the reason names the self-approval: {reason}"
    );
    z.wait_note(
        id,
        "Elevation refused: approver carol@example.com is the requester",
    )
    .await;
    z.settle().await;
    assert!(
        z.receiver.calls().await.is_empty(),
        "a self-approval reached the provider"
    );

    // Bob resets and approves again: the audits still show Carol's approval, which counts.
    z.set_approval(id, "jit_pending", users::BOB).await;
    z.set_approval(id, "jit_approved", users::BOB).await;
    let ok = eventually(Duration::from_secs(10), || async {
        let g = z.grants(&id.to_string()).await;
        (g.len() == 2 && g.iter().all(|g| g.state == GrantState::Denied)).then_some(g)
    })
    .await;
    let all = z.grants(&id.to_string()).await;
    let audit: Vec<(String, String)> = z
        .store()
        .audit_records(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.record.kind, r.record.detail["why"].to_string()))
        .collect();
    assert!(
        ok.is_some(),
        "the second approval is denied too: {:?}; audit: {audit:?}",
        all.iter()
            .map(|g| (g.state, g.reason.clone()))
            .collect::<Vec<_>>()
    );
    z.settle().await;
    assert!(
        z.receiver.calls().await.is_empty(),
        "an earlier self-approval was hidden by a later one"
    );
}

#[tokio::test]
async fn late_approval_of_a_cancelled_ticket_grants_nothing() {
    let z = Zd::start().await;
    let id = z.raise(users::ALICE, "WS-0049", "10m").await;
    z.wait(id, GrantState::Requested).await;
    z.zd.set_status(id, "solved", users::CAROL)
        .await
        .expect("solve");
    z.wait(id, GrantState::Cancelled).await;
    z.wait_note(id, "Request cancelled before approval.").await;
    // Zendesk stamps updates to the second; a later second keeps the approval from being taken
    // for a replay of the solving event, so it really is decided on.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    z.set_approval(id, "jit_approved", users::BOB).await;
    let audited = eventually(Duration::from_secs(10), || async {
        let a = z.audit("approval.unconfirmed").await;
        (!a.is_empty()).then_some(a)
    })
    .await
    .expect("the approval of a solved ticket is audited as unconfirmed");
    let why = audited[0].record.detail["why"].as_str().unwrap_or_default();
    assert!(why.contains("unknown"), "{why}");
    z.settle().await;
    assert_eq!(
        z.zd.ticket(id).await.expect("ticket").status,
        "solved",
        "not reopened"
    );
    let all = z.grants(&id.to_string()).await;
    assert!(
        z.receiver.calls().await.is_empty(),
        "a solved ticket was granted: {:?}",
        all.iter()
            .map(|g| (g.state, g.reason.clone()))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn forged_or_unauthenticated_deliveries_get_401_and_store_nothing() {
    let z = Zd::start().await;
    let body = json!({
        "event": "approval:jit_approved",
        "ticket": {"id": "77", "status": "Open", "type": "Task", "updated_at": "2025-03-14T08:41:37Z",
                   "approval": "jit_approved", "target": "WS-0666", "duration": "4h"},
        "requester": {"id": "1001", "email": "alice@example.com", "name": "Alice"},
        "current_user": {"id": "1002", "email": "bob@example.com", "name": "Bob"}
    })
    .to_string();
    let attempts: [(&str, Option<(&str, String)>); 5] = [
        ("no credentials", None),
        (
            "wrong bearer token",
            Some(("Authorization", "Bearer not-the-token".into())),
        ),
        (
            "empty bearer token",
            Some(("Authorization", "Bearer ".into())),
        ),
        (
            "the token as Basic credentials",
            Some(("Authorization", format!("Basic {WEBHOOK_TOKEN}"))),
        ),
        (
            "the token in another header",
            Some(("X-Api-Key", WEBHOOK_TOKEN.into())),
        ),
    ];
    for (what, header) in attempts {
        let mut rb = z
            .http
            .post(z.webhook_url_for("zendesk"))
            .header("Content-Type", "application/json")
            .header("X-Zendesk-Webhook-Invocation-Id", "8999999999")
            .body(body.clone());
        if let Some((k, v)) = header {
            rb = rb.header(k, v);
        }
        let resp = rb.send().await.expect("request");
        assert_eq!(resp.status(), 401, "{what}");
        let err: Value = resp.json().await.expect("json error body");
        assert_eq!(err["error"], "unauthorized", "{what}");
        let text = err.to_string();
        assert!(
            !text.contains(WEBHOOK_TOKEN),
            "{what}: the error echoes the secret"
        );
    }
    z.settle().await;
    let grants = z
        .store()
        .list_grants(&jitbridge::store::GrantFilter::default())
        .await
        .expect("grants");
    assert!(grants.is_empty(), "{grants:?}");
    let audit = z.store().audit_records(0, 100).await.expect("audit");
    assert!(
        audit.is_empty(),
        "a refused delivery left audit records: {audit:?}"
    );
    let ticket_calls =
        z.zd.requests()
            .await
            .into_iter()
            .filter(|r| r.path.starts_with("/api/v2/tickets"))
            .count();
    assert_eq!(ticket_calls, 0, "a refused delivery caused API calls");
    assert!(z.receiver.calls().await.is_empty());
}

#[tokio::test]
async fn delivery_claiming_an_approval_the_api_does_not_hold_grants_nothing_and_is_audited() {
    let z = Zd::start().await;
    let id = z.raise(users::ALICE, "WS-0045", "2h").await;
    z.wait(id, GrantState::Requested).await;
    // Properly authenticated (the token leaked), but the ticket's Approval is still Pending.
    let sent =
        z.zd.emit(id, users::BOB, &body_claiming("jit_approved"))
            .await
            .expect("emitted");
    assert_eq!(sent.json()["ticket"]["approval"], "jit_approved");
    assert_eq!(sent.response.status, Some(202), "{:?}", sent.response);
    let audited = eventually(Duration::from_secs(10), || async {
        let a = z.audit("approval.unconfirmed").await;
        (!a.is_empty()).then_some(a)
    })
    .await
    .expect("the unconfirmed approval is audited");
    assert_eq!(audited.len(), 1);
    let key = id.to_string();
    assert_eq!(audited[0].record.ticket_key.as_deref(), Some(key.as_str()));
    let why = audited[0].record.detail["why"].as_str().unwrap_or_default();
    assert!(why.contains("pending"), "{why}");
    assert!(
        z.confirm_reads(id).await >= 1,
        "the API record was consulted"
    );
    z.settle().await;
    let grants = z.grants(&key).await;
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].state, GrantState::Requested);
    assert!(z.receiver.calls().await.is_empty());
    assert!(
        z.comments(id)
            .await
            .iter()
            .filter(|(body, _, _)| !body.starts_with("Elevation request received."))
            .all(|(_, _, a)| *a != users::JITBRIDGE),
        "nothing but the request's summary was written back"
    );
}

#[tokio::test]
async fn rate_limited_writebacks_arrive_once_in_order_and_respect_retry_after() {
    let z = Zd::start().await;
    let id = z.raise(users::ALICE, "WS-0046", "4s").await;
    z.set_approval(id, "jit_approved", users::BOB).await;
    z.wait(id, GrantState::Active).await;
    let settled = eventually(Duration::from_secs(10), || async {
        (z.writes(id).await.len() == 3).then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "the summary and the active writebacks arrived: {:?}",
        z.writes(id).await
    );

    // Zendesk answers the next three calls with 429 + Retry-After: 1 (and its X-Rate-Limit headers).
    z.zd.rate_limit(3, 1).await;
    let expired = z.wait(id, GrantState::Expired).await;
    // The provider side does not wait for the ITSM.
    assert!(
        z.receiver
            .revoked_at(&expired.id.to_string())
            .await
            .is_some()
    );
    z.wait_note(id, "expired and was revoked").await;
    z.wait_status(id, "solved").await;

    z.wait_writes(id, 5).await;
    z.settle().await;
    let writes = z.writes(id).await;
    assert_eq!(writes.len(), 5, "each writeback exactly once: {writes:?}");
    assert!(
        writes[0].starts_with("comment:Elevation request received."),
        "{writes:?}"
    );
    assert!(
        writes[1].starts_with("comment:Local admin granted"),
        "{writes:?}"
    );
    assert_eq!(writes[2], "status:open");
    assert!(
        writes[3].starts_with("comment:Local admin on WS-0046 expired"),
        "{writes:?}"
    );
    assert_eq!(writes[4], "status:solved");

    let reqs = z.zd.requests().await;
    let limited = reqs.iter().filter(|r| r.status == 429).count();
    assert_eq!(limited, 3, "the three 429s were met");
    for w in reqs.windows(2) {
        if w[0].status == 429 {
            let gap = w[1].instant.duration_since(w[0].instant);
            assert!(
                gap >= Duration::from_millis(950),
                "a call came {gap:?} after a 429 that asked for 1 s: {} {}",
                w[1].method,
                w[1].path
            );
        }
    }
}

#[tokio::test]
async fn duplicate_delivery_answers_duplicate_and_applies_once() {
    let z = Zd::start().await;
    let id = z.raise(users::ALICE, "WS-0047", "2h").await;
    let approval = z.set_approval(id, "jit_approved", users::BOB).await;
    z.wait(id, GrantState::Active).await;
    let again = z.zd.resend(&approval).await;
    assert_eq!(again.status, Some(200), "{}", again.body);
    let body: Value = serde_json::from_str(&again.body).expect("json");
    assert_eq!(body["status"], "duplicate");
    z.settle().await;
    assert_eq!(z.applies().await, 1);
    assert_eq!(z.grants(&id.to_string()).await.len(), 1);
    let granted = z
        .comments(id)
        .await
        .into_iter()
        .filter(|(b, _, _)| b.contains("Local admin granted"))
        .count();
    assert_eq!(granted, 1);
}

#[tokio::test]
async fn ticket_solved_early_revokes_and_a_missing_duration_defaults_to_an_hour() {
    let z = Zd::start().await;
    // Duration left empty: the placeholder renders "", the mapping's default applies.
    let id = z.raise(users::ALICE, "LT-0008", "").await;
    z.set_approval(id, "jit_approved", users::BOB).await;
    let active = z.wait(id, GrantState::Active).await;
    assert_eq!(active.duration, jiff::SignedDuration::from_secs(3600));
    z.wait_note(id, "Local admin granted").await;
    z.zd.set_status(id, "solved", users::CAROL)
        .await
        .expect("solve");
    let revoked = z.wait(id, GrantState::Revoked).await;
    assert_eq!(revoked.id, active.id);
    assert!(revoked.ended_at.expect("ended") < revoked.expires_at.expect("deadline"));
    assert!(
        !z.receiver
            .holds("alice@example.com", "LT-0008", "local-admin")
            .await
    );
    z.wait_note(
        id,
        "Local admin on LT-0008 revoked: the ticket reached status Solved.",
    )
    .await;
}

#[tokio::test]
async fn provider_that_never_applies_fails_the_grant_and_notes_the_ticket() {
    let z = Zd::start_with(Options {
        mapping: MAPPING.into(),
        workers: "retry_initial = \"100ms\"\nretry_max = \"300ms\"\napply_window = \"2s\"\n".into(),
        ..Options::default()
    })
    .await;
    z.receiver.set_down(true).await;
    let id = z.raise(users::ALICE, "WS-0048", "2h").await;
    z.set_approval(id, "jit_approved", users::BOB).await;
    let g = z.wait(id, GrantState::Failed).await;
    assert!(g.reason.unwrap_or_default().contains("in time"));
    z.wait_note(id, "Elevation could not be applied:").await;
}
