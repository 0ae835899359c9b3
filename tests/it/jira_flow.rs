//! Whole tickets through Jira: the approval loop, refusals, early ends, replays and restarts.

use std::time::Duration;

use jitbridge::grants::GrantState;
use jitbridge_sim::jira::users::{ALICE, BOB, CAROL};

use crate::harness::{Harness, eventually};

#[tokio::test]
async fn approved_request_is_granted_written_back_and_revoked_at_its_deadline() {
    let h = Harness::start().await;
    let key = h.raise(ALICE, "WS-0042", "3s", &[BOB]).await;
    // The ticket is tracked as soon as it is created.
    h.wait_state(&key, GrantState::Requested).await;

    h.jira.approve(&key, BOB).await.expect("approve");
    let active = h.wait_state(&key, GrantState::Active).await;
    assert_eq!(active.subject, "alice@example.com");
    assert_eq!(active.target, "WS-0042");
    assert_eq!(active.scope, "local-admin");
    assert_eq!(
        active.approvers.first().and_then(|p| p.email.as_deref()),
        Some("bob@example.com")
    );

    // The endpoint received a correctly signed apply and now holds the privilege.
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

    // Comment + transition on the issue.
    h.wait_comment(
        &key,
        "Local admin granted to alice@example.com on WS-0042 until",
    )
    .await;
    h.wait_status(&key, "In Progress").await;

    // Deadline → revoke → comment + transition.
    let expired = h.wait_state(&key, GrantState::Expired).await;
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
    let deadline = expired.expires_at.expect("deadline");
    assert!(revoked_at >= deadline, "revoked before the deadline");
    h.wait_comment(&key, "Local admin on WS-0042 expired and was revoked.")
        .await;
    h.wait_status(&key, "Done").await;

    // The audit chain holds the whole story and verifies.
    let kinds: Vec<String> = h
        .store()
        .audit_records(0, 1000)
        .await
        .unwrap()
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
        .unwrap();
    assert_eq!(verdict["ok"], true, "{verdict}");
}

#[tokio::test]
async fn declined_request_is_denied_and_commented_without_any_provider_call() {
    let h = Harness::start().await;
    let key = h.raise(ALICE, "WS-0043", "10m", &[BOB]).await;
    h.wait_state(&key, GrantState::Requested).await;
    h.jira.decline(&key, BOB).await.expect("decline");
    let g = h.wait_state(&key, GrantState::Denied).await;
    assert!(
        g.reason.as_deref().unwrap_or_default().contains("declined"),
        "{:?}",
        g.reason
    );
    h.wait_comment(
        &key,
        "Elevation refused: declined in the ticket by bob@example.com",
    )
    .await;
    h.settle().await;
    assert!(h.receiver.calls().await.is_empty());
}

#[tokio::test]
async fn approval_by_requester_is_denied_and_commented() {
    let h = Harness::start().await;
    // Alice may answer the approval in Jira (she is listed as an approver) but she raised the ticket.
    let key = h.raise(ALICE, "WS-0044", "10m", &[ALICE, BOB]).await;
    h.wait_state(&key, GrantState::Requested).await;
    h.jira
        .approve(&key, ALICE)
        .await
        .expect("self-approve in Jira");
    let g = h.wait_state(&key, GrantState::Denied).await;
    let reason = g.reason.unwrap_or_default();
    assert!(
        reason.contains("requester"),
        "reason should explain self-approval: {reason}"
    );
    h.wait_comment(&key, "Elevation refused:").await;
    h.settle().await;
    assert!(
        h.receiver.calls().await.is_empty(),
        "a self-approved request reached the provider"
    );
}

#[tokio::test]
async fn request_cancelled_before_approval_never_reaches_the_provider() {
    let h = Harness::start().await;
    let key = h.raise(ALICE, "WS-0045", "10m", &[BOB]).await;
    h.wait_state(&key, GrantState::Requested).await;
    h.jira
        .transition_to(&key, "Cancelled", CAROL)
        .await
        .expect("cancel");
    h.wait_state(&key, GrantState::Cancelled).await;
    h.wait_comment(&key, "Request cancelled before approval.")
        .await;
    // A late approval replayed after the cancellation grants nothing.
    h.settle().await;
    assert!(h.receiver.calls().await.is_empty());
}

#[tokio::test]
async fn ticket_resolved_early_revokes_the_grant_before_its_deadline() {
    let h = Harness::start().await;
    let key = h.raise(ALICE, "LT-0007", "2h", &[BOB]).await;
    h.jira.approve(&key, BOB).await.expect("approve");
    let active = h.wait_state(&key, GrantState::Active).await;
    h.wait_status(&key, "In Progress").await;

    h.jira
        .transition_to(&key, "Done", CAROL)
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
    h.wait_comment(
        &key,
        "Local admin on LT-0007 revoked: the ticket reached status Done.",
    )
    .await;
}

#[tokio::test]
async fn admin_revoke_through_the_api_ends_the_grant_and_is_audited() {
    let h = Harness::start().await;
    let key = h.raise(ALICE, "WS-0046", "2h", &[BOB]).await;
    h.jira.approve(&key, BOB).await.expect("approve");
    let g = h.wait_state(&key, GrantState::Active).await;

    let url = h.admin_url(&format!("/api/v1/grants/{}/revoke", g.id));
    let unauthorized = h
        .http
        .post(&url)
        .json(&serde_json::json!({"reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let body: serde_json::Value = unauthorized.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");

    let resp = h
        .http
        .post(&url)
        .bearer_auth(crate::harness::ADMIN_TOKEN)
        .json(&serde_json::json!({"reason": "technician left the site"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    h.wait_state(&key, GrantState::Revoked).await;
    h.wait_comment(
        &key,
        "revoked: revoked by an administrator: technician left the site",
    )
    .await;
    assert!(
        !h.receiver
            .holds("alice@example.com", "WS-0046", "local-admin")
            .await
    );

    let list: serde_json::Value = h
        .http
        .get(h.admin_url("/api/v1/grants?state=revoked"))
        .bearer_auth(crate::harness::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["grants"].as_array().map(Vec::len), Some(1));
    let again = h
        .http
        .post(&url)
        .bearer_auth(crate::harness::ADMIN_TOKEN)
        .json(&serde_json::json!({"reason": "again"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
}

#[tokio::test]
async fn duplicate_delivery_answers_duplicate_and_applies_once() {
    let h = Harness::start().await;
    let key = h.raise(ALICE, "WS-0047", "2h", &[BOB]).await;
    let approval = h.jira.approve(&key, BOB).await.expect("approve");
    h.wait_state(&key, GrantState::Active).await;
    let delivery = approval
        .deliveries
        .first()
        .expect("approval webhook")
        .clone();
    let again = h.jira.resend(&delivery).await;
    assert_eq!(again.status, Some(200));
    assert!(again.body.contains("\"duplicate\""), "{}", again.body);
    h.settle().await;
    let applies = h
        .receiver
        .calls()
        .await
        .into_iter()
        .filter(|c| c.kind == Some(jitbridge_sim::receiver::CallKind::Apply))
        .count();
    assert_eq!(applies, 1);
    assert_eq!(h.grants(&key).await.len(), 1);
}

#[tokio::test]
async fn body_claiming_approval_that_the_api_does_not_confirm_grants_nothing() {
    let h = Harness::start().await;
    let key = h.raise(ALICE, "WS-0048", "2h", &[BOB]).await;
    h.wait_state(&key, GrantState::Requested).await;
    // A correctly signed body (the secret leaked, or a replay edited) says "Approved",
    // but Jira's own record still waits for approval.
    let issue = h.jira.issue(&key).await.unwrap();
    let body = serde_json::json!({
        "timestamp": jiff::Timestamp::now().as_millisecond(),
        "webhookEvent": "jira:issue_updated",
        "issue_event_type_name": "issue_generic",
        "user": {"accountId": BOB, "emailAddress": "bob@example.com", "displayName": "Bob"},
        "issue": {"id": issue.id, "key": key, "fields": {
            "issuetype": {"name": "Elevation Request"}, "status": {"name": "Approved"},
            "reporter": {"accountId": ALICE, "emailAddress": "alice@example.com"},
            "customfield_10050": {"value": "Local admin"}, "customfield_10060": "WS-0048", "customfield_10070": "2h"}},
        "changelog": {"items": [{"field": "status", "fieldtype": "jira", "fromString": "Waiting for approval", "toString": "Approved"}]}
    });
    let sent = h
        .jira
        .send_signed(
            &h.webhook_url(),
            Some(crate::harness::WEBHOOK_SECRET),
            body.to_string().as_bytes(),
        )
        .await;
    assert_eq!(sent.responses.first().and_then(|r| r.status), Some(202));
    let audited = eventually(Duration::from_secs(10), || async {
        let a = h.audit("approval.unconfirmed").await;
        (!a.is_empty()).then_some(a)
    })
    .await
    .expect("the unconfirmed approval is audited");
    assert_eq!(audited[0].record.ticket_key.as_deref(), Some(key.as_str()));
    assert_eq!(h.grants(&key).await[0].state, GrantState::Requested);
    assert!(h.receiver.calls().await.is_empty());
}

#[tokio::test]
async fn overdue_grant_is_revoked_at_start_after_downtime() {
    let mut h = Harness::start().await;
    let key = h.raise(ALICE, "WS-0049", "2s", &[BOB]).await;
    h.jira.approve(&key, BOB).await.expect("approve");
    let g = h.wait_state(&key, GrantState::Active).await;
    h.stop_daemon().await;
    // The deadline passes while nothing runs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        h.receiver
            .holds("alice@example.com", "WS-0049", "local-admin")
            .await
    );
    let restarted = jiff::Timestamp::now();
    h.start_daemon().await;
    let expired = h.wait_state(&key, GrantState::Expired).await;
    assert_eq!(expired.id, g.id);
    let revoked_at = h
        .receiver
        .revoked_at(&g.id.to_string())
        .await
        .expect("revoke call");
    assert!(
        revoked_at.duration_since(restarted) < jiff::SignedDuration::from_secs(5),
        "revoked {revoked_at}, restarted {restarted}"
    );
    assert!(
        !h.receiver
            .holds("alice@example.com", "WS-0049", "local-admin")
            .await
    );
}

#[tokio::test]
async fn reopened_ticket_gets_a_new_grant_only_after_a_new_approval() {
    let h = Harness::start().await;
    let key = h.raise(ALICE, "WS-0050", "2h", &[BOB]).await;
    h.jira.approve(&key, BOB).await.expect("approve");
    h.wait_state(&key, GrantState::Active).await;
    h.wait_status(&key, "In Progress").await;
    h.jira
        .transition_to(&key, "Done", CAROL)
        .await
        .expect("resolve");
    h.wait_state(&key, GrantState::Revoked).await;
    // Reopening is never an approval.
    h.jira
        .transition_to(&key, "Reopened", ALICE)
        .await
        .expect("reopen");
    h.settle().await;
    assert_eq!(h.grants(&key).await.len(), 1);
    assert_eq!(h.grants(&key).await[0].state, GrantState::Revoked);
    let applies = h
        .receiver
        .calls()
        .await
        .into_iter()
        .filter(|c| c.kind == Some(jitbridge_sim::receiver::CallKind::Apply))
        .count();
    assert_eq!(applies, 1);
}

#[tokio::test]
async fn replayed_approval_with_a_fresh_delivery_id_after_the_grant_ended_grants_nothing() {
    let h = Harness::start().await;
    let key = h.raise(ALICE, "WS-0051", "2h", &[BOB]).await;
    let approval = h.jira.approve(&key, BOB).await.expect("approve");
    h.wait_state(&key, GrantState::Active).await;
    h.wait_status(&key, "In Progress").await;
    h.jira
        .transition_to(&key, "Done", CAROL)
        .await
        .expect("resolve");
    h.wait_state(&key, GrantState::Revoked).await;

    // An attacker replays the captured (validly signed) approval body under a new delivery id,
    // which Jira does not sign: it passes authentication and dedupe, but is older than the end.
    let original = approval
        .deliveries
        .first()
        .expect("approval webhook")
        .clone();
    let headers: Vec<(String, String)> = original
        .headers
        .iter()
        .map(|(k, v)| {
            if k.eq_ignore_ascii_case("X-Atlassian-Webhook-Identifier") {
                (k.clone(), "replayed-id-1".to_owned())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    let sent = h
        .jira
        .send_raw(&h.webhook_url(), &headers, &original.body)
        .await;
    assert_eq!(sent.status, Some(202), "{}", sent.body);
    let ignored = eventually(Duration::from_secs(10), || async {
        let a = h.audit("event.ignored").await;
        a.into_iter().find(|r| {
            r.record.detail["why"]
                .as_str()
                .is_some_and(|w| w.contains("stale"))
        })
    })
    .await;
    assert!(ignored.is_some(), "the replay is recorded as stale");
    assert_eq!(h.grants(&key).await.len(), 1, "no second grant");
    let applies = h
        .receiver
        .calls()
        .await
        .into_iter()
        .filter(|c| c.kind == Some(jitbridge_sim::receiver::CallKind::Apply))
        .count();
    assert_eq!(applies, 1);
}

#[tokio::test]
async fn permanently_failing_writeback_is_parked_as_dead_letter_and_can_be_retried() {
    let opts = crate::harness::Options {
        mapping: crate::harness::MAPPING
            .replace("status = \"In Progress\"", "status = \"No Such Status\""),
        ..Default::default()
    };
    let h = crate::harness::Harness::start_with(opts).await;
    let key = h.raise(ALICE, "WS-0052", "2h", &[BOB]).await;
    h.jira.approve(&key, BOB).await.expect("approve");
    // The provider call is not held up by the failing writeback.
    h.wait_state(&key, GrantState::Active).await;
    h.wait_comment(&key, "Local admin granted").await;
    let dead = eventually(Duration::from_secs(10), || async {
        let body: serde_json::Value = h
            .http
            .get(h.admin_url("/api/v1/outbox?state=dead"))
            .bearer_auth(crate::harness::ADMIN_TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let jobs = body["jobs"].as_array()?.clone();
        (!jobs.is_empty()).then_some(jobs)
    })
    .await
    .expect("a dead letter appears in the admin API");
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("No Such Status"),
        "{}",
        dead[0]
    );
    let id = dead[0]["id"].as_str().unwrap().to_owned();
    let retried = h
        .http
        .post(h.admin_url(&format!("/api/v1/outbox/{id}/retry")))
        .bearer_auth(crate::harness::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), 202);
}
