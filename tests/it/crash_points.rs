//! Crash at every persistence point: the daemon process runs with one failpoint armed
//! (`failpoints` feature, `JITBRIDGE_FAILPOINTS`), which aborts it right after that step; it is
//! then restarted without it. Afterwards the ledger (grant states, audit chain), the provider's
//! view (the receiver: applied once, revoked) and the ticket (each comment once, final status)
//! must agree, for a whole grant lifetime: request, approval, apply, writebacks, expiry, revoke.

use std::time::Duration;

use jitbridge::failpoint;
use jitbridge::grants::GrantState;
use jitbridge::store::{GrantFilter, Store};
use jitbridge_sim::jira::model::ApprovalSpec;
use jitbridge_sim::jira::users::{ALICE, BOB};
use jitbridge_sim::jira::{Delivery, NewIssue};
use jitbridge_sim::receiver::{CallKind, CallOutcome};
use serde_json::json;

use crate::harness::{Options, WEBHOOK_SECRET, eventually, write_config};
use crate::process::{DaemonProcess, send_until_acked};

/// Runs one grant's whole life with `point` armed, crashing there once, and checks that ledger,
/// provider and ticket agree after the restart.
async fn crash_once_at(point: &str) {
    let (dir, jira, receiver) = crate::process::simulators().await;
    let config = write_config(dir.path(), &jira, &receiver, &Options::default());
    let mut daemon = DaemonProcess::new(&config);
    jira.add_webhook(&daemon.jira_webhook_url(), Some(WEBHOOK_SECRET))
        .await;
    daemon.start(point).await;

    // The request, then (if the daemon still runs) the approval; deliveries the crash swallowed
    // are re-sent after the restart, as Jira would retry them.
    let mut sent: Vec<Delivery> = Vec::new();
    let raised = jira
        .create_issue(
            NewIssue::new(ALICE, "Need local admin to install a driver")
                .field(
                    "customfield_10050",
                    json!({"value": "Local admin", "id": "10100"}),
                )
                .field("customfield_10060", json!("WS-0042"))
                .field("customfield_10070", json!("3s"))
                .approval(ApprovalSpec::any_of(&[BOB])),
        )
        .await
        .expect("issue");
    let key = raised.key.clone();
    sent.extend(raised.deliveries);
    let mut approved = false;
    if daemon.is_running() {
        sent.extend(jira.approve(&key, BOB).await.expect("approve").deliveries);
        approved = true;
    }
    assert!(
        daemon.wait_exit(Duration::from_secs(30)).await,
        "{point}: the failpoint never crashed the daemon; logs:\n{}",
        daemon.logs()
    );
    assert!(
        daemon
            .logs()
            .contains(&format!("failpoint {point} reached"))
    );

    daemon.start("").await;
    let http = reqwest::Client::new();
    for d in sent.iter().filter(|d| !d.delivered()) {
        send_until_acked(&http, &daemon.jira_webhook_url(), d).await;
    }
    if !approved {
        let d = jira.approve(&key, BOB).await.expect("approve").deliveries;
        for d in d.iter().filter(|d| !d.delivered()) {
            send_until_acked(&http, &daemon.jira_webhook_url(), d).await;
        }
    }

    // The ticket: the whole story, each comment once.
    let done = eventually(Duration::from_secs(60), || async {
        let issue = jira.issue(&key).await.expect("issue");
        let expired = issue
            .comments
            .iter()
            .any(|c| c.text.contains("expired and was revoked"));
        (issue.status == "Done" && expired).then_some(issue)
    })
    .await;
    let Some(issue) = done else {
        panic!(
            "{point}: the grant's story never completed in the ticket: {:?}\nlogs:\n{}",
            jira.issue(&key).await.map(|i| (i.status, i.comments)),
            daemon.logs()
        );
    };
    let comments: Vec<&str> = issue.comments.iter().map(|c| c.text.as_str()).collect();
    for needle in ["Local admin granted", "expired and was revoked"] {
        let n = comments.iter().filter(|t| t.contains(needle)).count();
        assert_eq!(n, 1, "{point}: {needle:?} appears {n} times: {comments:#?}");
    }

    // The ledger.
    let store = daemon.stop_and_open_store().await;
    let grants = store
        .list_grants(&GrantFilter {
            ticket_key: Some(key.clone()),
            ..Default::default()
        })
        .await
        .expect("grants");
    assert_eq!(grants.len(), 1, "{point}: one grant for the ticket");
    let grant = &grants[0];
    assert_eq!(grant.state, GrantState::Expired, "{point}");
    let audit = store.audit_records(0, 10_000).await.expect("audit");
    let kinds: Vec<&str> = audit.iter().map(|r| r.record.kind.as_str()).collect();
    for kind in ["grant.active", "grant.expiring", "grant.expired"] {
        assert_eq!(
            kinds.iter().filter(|k| **k == kind).count(),
            1,
            "{point}: {kind} once in {kinds:?}"
        );
    }
    jitbridge::audit::verify_chain((0, jitbridge::audit::GENESIS_HASH.to_owned()), &audit)
        .unwrap_or_else(|e| panic!("{point}: audit chain broken: {e}"));

    // The provider's view: applied under one webhook-id, then revoked; nothing held.
    let id = grant.id.to_string();
    let calls = receiver.calls().await;
    let applied: std::collections::HashSet<_> = calls
        .iter()
        .filter(|c| c.kind == Some(CallKind::Apply) && c.outcome == CallOutcome::Applied)
        .filter(|c| c.grant.as_ref().and_then(|g| g["id"].as_str()) == Some(id.as_str()))
        .map(|c| c.webhook_id.clone())
        .collect();
    assert_eq!(applied.len(), 1, "{point}: applied once: {applied:?}");
    assert!(receiver.revoked_at(&id).await.is_some(), "{point}: revoked");
    assert!(
        receiver.holdings().await.is_empty(),
        "{point}: nothing held"
    );
}

#[tokio::test]
async fn crash_after_inbox_insert_commit_loses_nothing() {
    crash_once_at(failpoint::INBOX_INSERT).await;
}

#[tokio::test]
async fn crash_after_grant_transition_commit_loses_nothing() {
    crash_once_at(failpoint::GRANT_COMMIT).await;
}

#[tokio::test]
async fn crash_after_outbox_claim_loses_nothing() {
    crash_once_at(failpoint::OUTBOX_CLAIM).await;
}

#[tokio::test]
async fn crash_after_provider_call_applies_once() {
    crash_once_at(failpoint::PROVIDER_CALL).await;
}

#[tokio::test]
async fn crash_after_outbox_ack_loses_nothing() {
    crash_once_at(failpoint::OUTBOX_ACK).await;
}

#[tokio::test]
async fn crash_after_writeback_call_posts_the_comment_once() {
    crash_once_at(failpoint::WRITEBACK_CALL).await;
}
