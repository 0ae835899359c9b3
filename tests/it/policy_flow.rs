//! Policy through the whole loop with Jira: allowed hours, the live-grant limit per subject,
//! `min_approvals` and the approvers allow-list. Every refusal must reach the ticket as a comment
//! a person understands, and nothing refused may reach the elevation provider.

use jitbridge::grants::GrantState;
use jitbridge_sim::jira::NewIssue;
use jitbridge_sim::jira::model::ApprovalSpec;
use jitbridge_sim::jira::users::{ALICE, BOB, CAROL};
use serde_json::json;

use crate::harness::{Harness, MAPPING, Options};

/// The harness mapping with extra `[mapping.policy]` keys.
fn mapping_with(policy: &str) -> Options {
    let targets = "targets = [\"WS-*\", \"LT-*\"]";
    assert!(MAPPING.contains(targets), "harness mapping changed");
    Options {
        mapping: MAPPING.replacen(targets, &format!("{targets}\n{policy}"), 1),
        ..Default::default()
    }
}

/// `HH:MM` of `minutes` after midnight, wrapped into one day.
fn clock(minutes: i64) -> String {
    let m = minutes.rem_euclid(24 * 60);
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// Every day, from `from` to `to` minutes relative to the current wall-clock time in `zone`.
fn window_around_now(zone: &str, from: i64, to: i64) -> String {
    let now = jiff::Timestamp::now().in_tz(zone).expect("zone");
    let minute = i64::from(now.hour()) * 60 + i64::from(now.minute());
    format!(
        "Mon-Sun {}-{} {zone}",
        clock(minute + from),
        clock(minute + to)
    )
}

async fn provider_applies(h: &Harness) -> usize {
    h.receiver
        .calls()
        .await
        .into_iter()
        .filter(|c| c.kind == Some(jitbridge_sim::receiver::CallKind::Apply))
        .count()
}

#[tokio::test]
async fn approval_outside_the_allowed_hours_is_denied_and_the_window_written_back() {
    // A window that starts two hours from now and lasts one hour: now is outside it.
    let window = window_around_now("UTC", 120, 180);
    let h = Harness::start_with(mapping_with(&format!("hours = [{window:?}]"))).await;
    let key = h.raise(ALICE, "WS-0101", "1h", &[BOB]).await;
    h.wait_state(&key, GrantState::Requested).await;
    h.jira.approve(&key, BOB).await.expect("approve");

    let g = h.wait_state(&key, GrantState::Denied).await;
    let reason = g.reason.unwrap_or_default();
    assert!(
        reason.contains("outside the hours this elevation may be granted")
            && reason.contains(&window),
        "{reason}"
    );
    h.wait_comment(
        &key,
        &format!("outside the hours this elevation may be granted ({window})"),
    )
    .await;
    h.settle().await;
    assert_eq!(provider_applies(&h).await, 0);
}

#[tokio::test]
async fn approval_inside_the_allowed_hours_is_granted() {
    // Two hours either side of the current Berlin wall clock (wrapping over midnight).
    let window = window_around_now("Europe/Berlin", -120, 120);
    let h = Harness::start_with(mapping_with(&format!("hours = [{window:?}]"))).await;
    let key = h.raise(ALICE, "WS-0102", "1h", &[BOB]).await;
    h.jira.approve(&key, BOB).await.expect("approve");
    h.wait_state(&key, GrantState::Active).await;
    assert!(
        h.receiver
            .holds("alice@example.com", "WS-0102", "local-admin")
            .await
    );
}

#[tokio::test]
async fn second_concurrent_grant_for_one_subject_is_refused_until_the_first_ends() {
    let h = Harness::start_with(mapping_with("max_active_per_subject = 1")).await;

    let first = h.raise(ALICE, "WS-0103", "2h", &[BOB]).await;
    h.jira.approve(&first, BOB).await.expect("approve first");
    let active = h.wait_state(&first, GrantState::Active).await;
    h.wait_status(&first, "In Progress").await;

    // Alice asks for a second machine while she still holds the first grant.
    let second = h.raise(ALICE, "WS-0104", "2h", &[BOB]).await;
    h.jira.approve(&second, BOB).await.expect("approve second");
    let denied = h.wait_state(&second, GrantState::Denied).await;
    assert!(
        denied
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("alice@example.com already holds 1 live grant"),
        "{:?}",
        denied.reason
    );
    h.wait_comment(
        &second,
        "Elevation refused: alice@example.com already holds 1 live grant, and this elevation \
         allows at most 1 live grant for one subject at a time; ask again when one has ended",
    )
    .await;
    assert!(
        !h.receiver
            .holds("alice@example.com", "WS-0104", "local-admin")
            .await
    );

    // Jira offers "Done" only from "In Progress", which the `active` writeback sets.
    h.wait_status(&first, "In Progress").await;
    // The first grant ends; now a new request is granted.
    h.jira
        .transition_to(&first, "Done", CAROL)
        .await
        .expect("resolve first");
    let revoked = h.wait_state(&first, GrantState::Revoked).await;
    assert_eq!(revoked.id, active.id);

    let third = h.raise(ALICE, "WS-0105", "2h", &[BOB]).await;
    h.jira.approve(&third, BOB).await.expect("approve third");
    h.wait_state(&third, GrantState::Active).await;
    assert!(
        h.receiver
            .holds("alice@example.com", "WS-0105", "local-admin")
            .await
    );
    assert_eq!(provider_applies(&h).await, 2);
}

#[tokio::test]
async fn min_approvals_two_with_a_single_approver_is_denied() {
    // Jira decides the approval with one answer (its approval needs one), so the approval is
    // complete there: jitbridge refuses rather than wait for a second approval that cannot come.
    let h = Harness::start_with(mapping_with("min_approvals = 2")).await;
    let key = h.raise(ALICE, "WS-0106", "1h", &[BOB, CAROL]).await;
    h.jira.approve(&key, BOB).await.expect("approve");
    let g = h.wait_state(&key, GrantState::Denied).await;
    assert!(
        g.reason
            .as_deref()
            .unwrap_or_default()
            .contains("needs 2 distinct approvers"),
        "{:?}",
        g.reason
    );
    h.wait_comment(
        &key,
        "Elevation refused: this elevation needs 2 distinct approvers, but only 1 approver other \
         than the requester and the subject approved (bob@example.com)",
    )
    .await;
    h.settle().await;
    assert_eq!(provider_applies(&h).await, 0);
}

#[tokio::test]
async fn min_approvals_two_waits_while_jira_waits_and_grants_after_the_second_approval() {
    let h = Harness::start_with(mapping_with("min_approvals = 2")).await;
    let approval = ApprovalSpec {
        required: 2,
        ..ApprovalSpec::any_of(&[BOB, CAROL])
    };
    let issue = NewIssue::new(ALICE, "Need local admin to install a driver")
        .field(
            "customfield_10050",
            json!({"value": "Local admin", "id": "10100"}),
        )
        .field("customfield_10060", json!("WS-0107"))
        .field("customfield_10070", json!("1h"))
        .approval(approval);
    let key = h.jira.create_issue(issue).await.expect("issue").key;
    h.wait_state(&key, GrantState::Requested).await;

    // One of two answers: Jira still waits, and so does the grant.
    h.jira.approve(&key, BOB).await.expect("first approval");
    h.settle().await;
    assert_eq!(h.grants(&key).await[0].state, GrantState::Requested);

    h.jira.approve(&key, CAROL).await.expect("second approval");
    let active = h.wait_state(&key, GrantState::Active).await;
    let mut emails: Vec<&str> = active
        .approvers
        .iter()
        .filter_map(|p| p.email.as_deref())
        .collect();
    emails.sort_unstable();
    assert_eq!(emails, ["bob@example.com", "carol@example.com"]);
}

#[tokio::test]
async fn approval_by_someone_not_listed_is_denied_with_the_reason_written_back() {
    let h = Harness::start_with(mapping_with("approvers = [\"carol@example.com\"]")).await;
    // Bob can answer the approval in Jira, but the mapping only accepts Carol.
    let key = h.raise(ALICE, "WS-0108", "1h", &[BOB, CAROL]).await;
    h.jira.approve(&key, BOB).await.expect("approve");
    h.wait_state(&key, GrantState::Denied).await;
    h.wait_comment(
        &key,
        "Elevation refused: approved by bob@example.com, who may not approve this elevation \
         (allowed approvers: carol@example.com).",
    )
    .await;
    h.settle().await;
    assert_eq!(provider_applies(&h).await, 0);

    // Carol's approval on another request is granted.
    let key = h.raise(ALICE, "WS-0109", "1h", &[BOB, CAROL]).await;
    h.jira.approve(&key, CAROL).await.expect("approve");
    h.wait_state(&key, GrantState::Active).await;
}
