//! Outages on either side: the ITSM's API and the elevation provider.

use std::time::Duration;

use jitbridge::grants::GrantState;
use jitbridge_sim::jira::users::{ALICE, BOB, CAROL};
use jitbridge_sim::jira::{FaultWindow, Outage, RateLimit};

use crate::harness::{Harness, eventually};

#[tokio::test]
async fn writeback_outage_delays_comments_but_loses_none_and_keeps_their_order() {
    let h = Harness::start().await;
    let key = h.raise(ALICE, "WS-0100", "2s", &[BOB]).await;
    h.wait_state(&key, GrantState::Requested).await;
    // The request's summary comment is written before the outage starts.
    h.wait_comment(&key, "Elevation request received.").await;
    // Jira's REST API fails for a while: first 503s with Retry-After, then 429s.
    h.jira
        .outage(Outage {
            window: FaultWindow::Requests(4),
            retry_after_secs: Some(1),
        })
        .await;
    h.jira.rate_limit(RateLimit::next(3, 1)).await;

    h.jira.approve(&key, BOB).await.expect("approve");
    // The grant goes on regardless of the ITSM: apply and deadline revoke happen on time.
    let expired = h.wait_state(&key, GrantState::Expired).await;
    assert!(
        h.receiver
            .revoked_at(&expired.id.to_string())
            .await
            .is_some()
    );

    let comments = eventually(Duration::from_secs(30), || async {
        let c = h.comments(&key).await;
        c.iter()
            .any(|t| t.contains("expired and was revoked"))
            .then_some(c)
    })
    .await
    .expect("all writebacks arrive after the outage");
    let granted: Vec<_> = comments
        .iter()
        .filter(|t| t.contains("Local admin granted"))
        .collect();
    let expired_c: Vec<_> = comments
        .iter()
        .filter(|t| t.contains("expired and was revoked"))
        .collect();
    assert_eq!(
        granted.len(),
        1,
        "granted comment exactly once: {comments:?}"
    );
    assert_eq!(
        expired_c.len(),
        1,
        "expired comment exactly once: {comments:?}"
    );
    let pos = |needle: &str| comments.iter().position(|t| t.contains(needle));
    assert!(
        pos("Local admin granted") < pos("expired and was revoked"),
        "in order: {comments:?}"
    );
    h.wait_status(&key, "Done").await;

    // The client honoured Retry-After: no two consecutive API calls inside a rate-limit pause
    // closer than the 1 s the simulator asked for, right after a 429/503.
    let reqs = h.jira.requests().await;
    for w in reqs.windows(2) {
        if matches!(w[0].status, 429 | 503) {
            let gap = w[1].instant.duration_since(w[0].instant);
            assert!(
                gap >= Duration::from_millis(900),
                "retried {gap:?} after a {} (asked 1 s)",
                w[0].status
            );
        }
    }
}

#[tokio::test]
async fn failing_revoke_raises_revoke_failed_alarm_and_completes_on_recovery() {
    let h = Harness::start().await;
    let key = h.raise(ALICE, "WS-0101", "2h", &[BOB]).await;
    h.jira.approve(&key, BOB).await.expect("approve");
    h.wait_state(&key, GrantState::Active).await;
    h.wait_status(&key, "In Progress").await;
    h.receiver.set_down(true).await;
    h.jira
        .transition_to(&key, "Done", CAROL)
        .await
        .expect("resolve");
    let g = h.wait_state(&key, GrantState::RevokeFailed).await;
    h.wait_comment(&key, "ALERT: revoking local admin on WS-0101 keeps failing")
        .await;
    let m = h
        .http
        .get(h.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("jitbridge_revoke_failures_total"), "{m}");
    assert!(
        m.contains("jitbridge_grants{state=\"revoke_failed\"} 1"),
        "{m}"
    );
    // Still retried: once the endpoint is back, the revoke lands and the grant ends.
    h.receiver.set_down(false).await;
    let revoked = h.wait_state(&key, GrantState::Revoked).await;
    assert_eq!(revoked.id, g.id);
    assert!(
        !h.receiver
            .holds("alice@example.com", "WS-0101", "local-admin")
            .await
    );
}

#[tokio::test]
async fn unresolved_revoke_refuses_new_grants_on_its_target_until_the_revoke_completes() {
    let h = Harness::start().await;
    let first = h.raise(ALICE, "WS-0104", "2h", &[BOB]).await;
    h.jira.approve(&first, BOB).await.expect("approve");
    h.wait_state(&first, GrantState::Active).await;
    // Jira offers "Done" only from "In Progress", which the `active` writeback sets.
    h.wait_status(&first, "In Progress").await;
    h.receiver.set_down(true).await;
    h.jira
        .transition_to(&first, "Done", CAROL)
        .await
        .expect("resolve");
    let stuck = h.wait_state(&first, GrantState::RevokeFailed).await;

    // Carol asks for the same machine while Alice's privilege may still be there.
    let second = h.raise(CAROL, "WS-0104", "1h", &[BOB]).await;
    h.wait_state(&second, GrantState::Requested).await;
    let blocked = format!(
        "grant {} (ticket {first}) for alice@example.com on WS-0104 could not be revoked yet \
         (revoke_failed); no new grant for this subject or target until it is revoked",
        stuck.id
    );
    // The request's summary already says what would block it.
    h.wait_comment(&second, &blocked).await;
    h.jira.approve(&second, BOB).await.expect("approve");
    let denied = h.wait_state(&second, GrantState::Denied).await;
    assert_eq!(denied.reason.as_deref(), Some(blocked.as_str()));
    h.wait_comment(&second, &format!("Elevation refused: {blocked}"))
        .await;
    assert!(
        !h.receiver
            .holds("carol@example.com", "WS-0104", "local-admin")
            .await
    );

    // The endpoint recovers, the revoke completes, and the machine may be granted again.
    h.receiver.set_down(false).await;
    h.wait_state(&first, GrantState::Revoked).await;
    let third = h.raise(CAROL, "WS-0104", "1h", &[BOB]).await;
    h.jira.approve(&third, BOB).await.expect("approve");
    h.wait_state(&third, GrantState::Active).await;
    assert!(
        h.receiver
            .holds("carol@example.com", "WS-0104", "local-admin")
            .await
    );
}

#[tokio::test]
async fn provider_that_never_applies_fails_the_grant_after_the_apply_window() {
    let opts = crate::harness::Options {
        workers: "retry_initial = \"100ms\"\nretry_max = \"300ms\"\napply_window = \"2s\"\n".into(),
        ..Default::default()
    };
    let h = Harness::start_with(opts).await;
    h.receiver.set_down(true).await;
    let key = h.raise(ALICE, "WS-0102", "2h", &[BOB]).await;
    h.jira.approve(&key, BOB).await.expect("approve");
    let g = h.wait_state(&key, GrantState::Failed).await;
    assert!(g.reason.unwrap_or_default().contains("in time"));
    h.wait_comment(&key, "Elevation could not be applied:")
        .await;
    // A clean-up revoke follows, in case the endpoint applied it after all.
    h.receiver.set_down(false).await;
    let cleaned = eventually(Duration::from_secs(10), || async {
        h.receiver
            .calls()
            .await
            .into_iter()
            .any(|c| c.kind == Some(jitbridge_sim::receiver::CallKind::Revoke) && c.status == 200)
            .then_some(())
    })
    .await;
    assert!(cleaned.is_some());
}

#[tokio::test]
async fn grant_revoked_while_its_apply_is_in_flight_ends_revoked_at_the_endpoint_promptly() {
    let h = Harness::start().await;
    h.receiver
        .set_latency(Some(Duration::from_millis(1500)))
        .await;
    let key = h.raise(ALICE, "WS-0103", "2h", &[BOB]).await;
    h.jira.approve(&key, BOB).await.expect("approve");
    let g = h.wait_state(&key, GrantState::Approved).await;
    // The apply call is on the wire; an admin revokes meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = h
        .http
        .post(h.admin_url(&format!("/api/v1/grants/{}/revoke", g.id)))
        .bearer_auth(crate::harness::ADMIN_TOKEN)
        .json(&serde_json::json!({"reason": "wrong device"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    h.receiver.set_latency(None).await;
    // The late apply must be followed by the revoke without waiting for any lease to lapse.
    let revoked = h.wait_state(&key, GrantState::Revoked).await;
    assert_eq!(revoked.id, g.id);
    assert!(
        !h.receiver
            .holds("alice@example.com", "WS-0103", "local-admin")
            .await
    );
}

#[tokio::test]
async fn second_instance_on_the_same_sqlite_store_refuses_to_start() {
    let h = Harness::start().await;
    let config = jitbridge::config::load(
        &h.config_path,
        &std::collections::HashMap::new(),
        &Harness::secrets(),
    )
    .unwrap();
    let second =
        jitbridge::app::start(config, std::sync::Arc::new(jitbridge::clock::SystemClock)).await;
    let err = match second {
        Ok(_) => panic!("a second daemon started on the same store"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("another jitbridge instance") || err.contains("locked"),
        "{err}"
    );
    // The first keeps serving.
    assert_eq!(
        h.http
            .get(h.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
