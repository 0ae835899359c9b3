//! A grant's lifetime through the whole loop with Jira: auto-approval on creation, a reopen that
//! never approves, an approval withdrawn that revokes, and renewals (a second approval) that
//! extend the deadline but never beyond `max_duration` from the first approval.

use std::time::Duration;

use jitbridge::grants::{Grant, GrantState};
use jitbridge_sim::jira::model::{ApprovalSpec, Transition, Workflow, ids};
use jitbridge_sim::jira::users::{ALICE, BOB, CAROL};
use jitbridge_sim::jira::{FaultWindow, JiraSimConfig, NewIssue, Outage};
use jitbridge_sim::receiver::CallKind;
use serde_json::json;

use crate::harness::{Harness, MAPPING, Options, WEBHOOK_SECRET, eventually};

/// The default JSM workflow plus what an extension process needs: an approver may extend a
/// request in progress ("Extend": In Progress → Approved), an agent may ask for approval again
/// ("Ask again": In Progress → Waiting for approval), and work may start without an approval
/// ("Start work": Waiting for approval → In Progress, for auto-approved requests).
fn extension_workflow() -> JiraSimConfig {
    let base = Workflow::elevation_request();
    let mut transitions = base.transitions().to_vec();
    transitions.push(Transition::new(
        "81",
        "Extend",
        &[ids::IN_PROGRESS],
        ids::APPROVED,
    ));
    transitions.push(Transition::new(
        "82",
        "Ask again",
        &[ids::IN_PROGRESS],
        ids::WAITING_FOR_APPROVAL,
    ));
    transitions.push(Transition::new(
        "83",
        "Start work",
        &[ids::WAITING_FOR_APPROVAL],
        ids::IN_PROGRESS,
    ));
    let workflow = Workflow::new(
        base.statuses().to_vec(),
        transitions,
        ids::WAITING_FOR_APPROVAL,
    )
    .expect("workflow");
    JiraSimConfig {
        workflow,
        ..Default::default()
    }
}

/// The harness mapping with `replace` swapped for `with` (asserting it was there).
fn mapping_with(replace: &str, with: &str) -> Options {
    assert!(
        MAPPING.contains(replace),
        "harness mapping changed: {replace}"
    );
    Options {
        mapping: MAPPING.replacen(replace, with, 1),
        ..Default::default()
    }
}

/// Auto-approval for 30-minute local-admin requests, listed explicitly.
const AUTO: &str = r#"[mapping.auto_approve]
enabled = true
condition = 'fields.customfield_10070 == "30m"'
scopes = ["local-admin"]
max_duration = "30m"

[mapping.policy]"#;

/// An elevation request without JSM approval records: approval is by status alone.
async fn raise_without_approvals(h: &Harness, target: &str, duration: &str) -> String {
    let issue = NewIssue::new(ALICE, "Need local admin to install a driver")
        .field(
            "customfield_10050",
            json!({"value": "Local admin", "id": "10100"}),
        )
        .field("customfield_10060", json!(target))
        .field("customfield_10070", json!(duration));
    h.jira.create_issue(issue).await.expect("issue").key
}

async fn applies(h: &Harness) -> usize {
    h.receiver
        .calls()
        .await
        .into_iter()
        .filter(|c| c.kind == Some(CallKind::Apply))
        .count()
}

/// Waits until the ticket's newest grant satisfies `pred`.
async fn wait_grant(h: &Harness, key: &str, what: &str, pred: impl Fn(&Grant) -> bool) -> Grant {
    eventually(Duration::from_secs(15), || async {
        h.grants(key).await.into_iter().next().filter(|g| pred(g))
    })
    .await
    .unwrap_or_else(|| panic!("{key}: {what} never happened"))
}

/// Waits for an audit record of `kind` about `key` whose detail mentions `needle`.
async fn wait_audit(h: &Harness, kind: &str, key: &str, needle: &str) -> serde_json::Value {
    eventually(Duration::from_secs(15), || async {
        h.audit(kind)
            .await
            .into_iter()
            .filter(|r| r.record.ticket_key.as_deref() == Some(key))
            .map(|r| serde_json::to_value(&r.record).expect("json"))
            .find(|r| r.to_string().contains(needle))
    })
    .await
    .unwrap_or_else(|| panic!("{key}: no {kind} audit record mentioning {needle:?}"))
}

#[tokio::test]
async fn auto_approval_grants_on_creation_and_says_so_in_the_ticket() {
    let h =
        Harness::start_with_sim(mapping_with("[mapping.policy]", AUTO), extension_workflow()).await;
    let key = raise_without_approvals(&h, "WS-0201", "30m").await;

    let g = h.wait_state(&key, GrantState::Active).await;
    assert!(g.approvers.is_empty(), "nobody approved: {:?}", g.approvers);
    assert_eq!(
        g.expires_at.unwrap().duration_since(g.approved_at.unwrap()),
        jiff::SignedDuration::from_mins(30)
    );
    assert!(
        h.receiver
            .holds("alice@example.com", "WS-0201", "local-admin")
            .await
    );
    let comments = h.wait_comment(&key, "Auto-approved by jitbridge").await;
    let note = comments
        .iter()
        .find(|c| c.contains("Auto-approved"))
        .unwrap();
    assert!(
        note.contains("mapping helpdesk-local-admin marks this request low-risk")
            && note.contains(r#"fields.customfield_10070 == "30m""#)
            && note.contains("no person approved it"),
        "{note}"
    );
    let approved = wait_audit(&h, "grant.approved", &key, "auto-approved by mapping").await;
    assert_eq!(approved["actor"], "jitbridge (auto-approval)");
}

#[tokio::test]
async fn auto_approval_waits_out_an_itsm_outage_instead_of_dropping_to_a_person() {
    let h =
        Harness::start_with_sim(mapping_with("[mapping.policy]", AUTO), extension_workflow()).await;
    // Jira's API cannot confirm the ticket for a moment: the delivery is retried.
    h.jira
        .outage(Outage {
            window: FaultWindow::UntilCleared,
            retry_after_secs: Some(1),
        })
        .await;
    let key = raise_without_approvals(&h, "WS-0208", "30m").await;
    h.wait_state(&key, GrantState::Requested).await;
    h.settle().await;
    assert_eq!(
        applies(&h).await,
        0,
        "nothing granted before the API confirms"
    );
    h.jira.clear_faults().await;
    h.wait_state(&key, GrantState::Active).await;
    h.wait_comment(&key, "Auto-approved by jitbridge").await;
}

#[tokio::test]
async fn a_request_the_auto_condition_does_not_cover_waits_for_a_person() {
    let h =
        Harness::start_with_sim(mapping_with("[mapping.policy]", AUTO), extension_workflow()).await;
    // Two hours is more than the low-risk rule covers.
    let key = raise_without_approvals(&h, "WS-0202", "2h").await;
    h.wait_state(&key, GrantState::Requested).await;
    wait_audit(
        &h,
        "auto_approve.skipped",
        &key,
        "is not met by this ticket",
    )
    .await;
    // A target outside the policy's allow-list is not auto-approved either (policy still runs).
    let other = raise_without_approvals(&h, "SRV-0001", "30m").await;
    h.wait_state(&other, GrantState::Requested).await;
    wait_audit(&h, "auto_approve.skipped", &other, "SRV-0001").await;
    h.settle().await;
    assert_eq!(applies(&h).await, 0);
    assert!(
        !h.comments(&key)
            .await
            .iter()
            .any(|c| c.contains("Auto-approved"))
    );

    // A person approves: granted as usual.
    h.jira
        .transition_to(&key, "Approved", BOB)
        .await
        .expect("approve");
    let g = h.wait_state(&key, GrantState::Active).await;
    assert_eq!(g.approvers[0].email.as_deref(), Some("bob@example.com"));
}

#[tokio::test]
async fn a_reopen_never_approves_even_when_its_status_is_listed() {
    // An administrator's slip: "Reopened" listed as an approval status.
    let h = Harness::start_with(mapping_with(
        r#"approve = { status = ["Approved"] }"#,
        r#"approve = { status = ["Approved", "Reopened"] }"#,
    ))
    .await;
    let key = h.raise(ALICE, "WS-0203", "1h", &[BOB]).await;
    h.jira.approve(&key, BOB).await.expect("approve");
    let first = h.wait_state(&key, GrantState::Active).await;
    h.wait_status(&key, "In Progress").await;

    // Resolving ends the grant early.
    h.jira
        .transition_to(&key, "Done", CAROL)
        .await
        .expect("resolve");
    h.wait_state(&key, GrantState::Revoked).await;

    // Reopening (Done → Reopened) grants nothing.
    h.jira
        .transition_to(&key, "Reopened", CAROL)
        .await
        .expect("reopen");
    wait_audit(&h, "event.ignored", &key, "Reopened").await;
    h.settle().await;
    let grants = h.grants(&key).await;
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0].id, first.id);
    assert_eq!(grants[0].state, GrantState::Revoked);
    assert_eq!(applies(&h).await, 1);
}

#[tokio::test]
async fn a_ticket_first_seen_when_reopened_is_never_auto_approved() {
    let h = Harness::start_with_sim(
        mapping_with("[mapping.policy]", AUTO),
        JiraSimConfig::default(),
    )
    .await;
    // Raised and cancelled while jitbridge was not yet watching: no delivery reaches it.
    h.jira.clear_webhooks().await;
    let key = raise_without_approvals(&h, "WS-0209", "30m").await;
    h.jira
        .transition_to(&key, "Cancelled", CAROL)
        .await
        .expect("cancel");
    h.jira
        .add_webhook(&h.webhook_url(), Some(WEBHOOK_SECRET))
        .await;

    // Its reopening is the first event jitbridge sees; the auto rule would otherwise cover it.
    h.jira
        .transition_to(&key, "Reopened", CAROL)
        .await
        .expect("reopen");
    wait_audit(
        &h,
        "auto_approve.skipped",
        &key,
        "reopened ticket is never auto-approved",
    )
    .await;
    h.settle().await;
    assert_eq!(h.grants(&key).await[0].state, GrantState::Requested);
    assert_eq!(applies(&h).await, 0);
}

/// A request Bob approved in JSM, granted and in progress, which the agent then sends back for
/// approval: JSM opens a new, pending approval (Carol's).
async fn granted_then_sent_back_for_approval(h: &Harness, target: &str) -> String {
    let key = h.raise(ALICE, target, "2h", &[BOB]).await;
    h.jira.approve(&key, BOB).await.expect("approve");
    h.wait_state(&key, GrantState::Active).await;
    h.wait_status(&key, "In Progress").await;
    h.jira
        .request_approval(&key, ApprovalSpec::any_of(&[CAROL]), "Ask again", CAROL)
        .await
        .expect("ask again");
    key
}

#[tokio::test]
async fn an_approval_withdrawn_in_the_ticket_revokes_the_grant() {
    let h = Harness::start_with_sim(Options::default(), extension_workflow()).await;
    let key = granted_then_sent_back_for_approval(&h, "WS-0204").await;
    let g = h.wait_state(&key, GrantState::Revoked).await;
    assert!(
        g.reason
            .as_deref()
            .unwrap_or_default()
            .contains("the approval was withdrawn in the ticket (it is now pending)"),
        "{:?}",
        g.reason
    );
    h.wait_comment(&key, "revoked: the approval was withdrawn")
        .await;
    assert!(
        !h.receiver
            .holds("alice@example.com", "WS-0204", "local-admin")
            .await
    );
}

#[tokio::test]
async fn with_withdrawal_revokes_off_the_grant_survives_a_new_approval_round() {
    let h = Harness::start_with_sim(
        mapping_with(
            r#"revoke  = { status = ["Done", "Cancelled"] }"#,
            "revoke  = { status = [\"Done\", \"Cancelled\"] }\nrevoke_on_withdrawn_approval = false",
        ),
        extension_workflow(),
    )
    .await;
    let key = granted_then_sent_back_for_approval(&h, "WS-0205").await;
    wait_audit(&h, "event.ignored", &key, "Waiting for approval").await;
    h.settle().await;
    assert_eq!(h.grants(&key).await[0].state, GrantState::Active);
}

#[tokio::test]
async fn a_second_approval_renews_within_the_cap_and_a_replay_or_the_requester_cannot() {
    let h = Harness::start_with_sim(
        mapping_with(r#"max_duration = "4h""#, r#"max_duration = "3h""#),
        extension_workflow(),
    )
    .await;
    let key = raise_without_approvals(&h, "WS-0206", "2h").await;
    h.wait_state(&key, GrantState::Requested).await;
    h.jira
        .transition_to(&key, "Approved", BOB)
        .await
        .expect("approve");
    let first = h.wait_state(&key, GrantState::Active).await;
    h.wait_status(&key, "In Progress").await;
    let approved_at = first.approved_at.unwrap();
    let cap = approved_at
        .checked_add(jiff::SignedDuration::from_hours(3))
        .unwrap();
    let first_deadline = first.expires_at.unwrap();
    assert_eq!(first_deadline.duration_since(approved_at).as_secs(), 7200);

    // The requester cannot renew her own grant.
    h.jira
        .transition(&key, "Extend", ALICE)
        .await
        .expect("extend");
    wait_audit(&h, "event.ignored", &key, "renewal refused").await;
    assert_eq!(h.grants(&key).await[0].expires_at, Some(first_deadline));
    h.jira
        .transition(&key, "Start progress", CAROL)
        .await
        .expect("back to work");

    // Bob approves again: two more hours from now, within three from the first approval.
    let extend = h
        .jira
        .transition(&key, "Extend", BOB)
        .await
        .expect("extend");
    let renewed = wait_grant(&h, &key, "a renewal", |g| {
        g.expires_at.is_some_and(|e| e > first_deadline)
    })
    .await;
    assert_eq!(renewed.id, first.id);
    assert_eq!(renewed.state, GrantState::Active);
    let deadline = renewed.expires_at.unwrap();
    assert!(deadline <= cap, "{deadline} beyond {cap}");
    let audit = wait_audit(&h, "grant.renewed", &key, "previous_expires_at").await;
    assert_eq!(audit["actor"], "bob@example.com");
    h.wait_comment(&key, "Elevation renewed by bob@example.com")
        .await;

    // The same approval delivered again (a replay with a fresh delivery id) renews nothing.
    let body = &extend.deliveries[0].body;
    let replay = h
        .jira
        .send_signed(&h.webhook_url(), Some(crate::harness::WEBHOOK_SECRET), body)
        .await;
    assert!(replay.delivered(), "{:?}", replay.responses);
    wait_audit(
        &h,
        "event.ignored",
        &key,
        "replay of the approval already applied",
    )
    .await;
    assert_eq!(h.grants(&key).await[0].expires_at, Some(deadline));

    // The ticket now asks for ten hours; the next renewal stops at three from the first approval.
    h.jira
        .set_field(&key, "customfield_10070", json!("10h"), CAROL)
        .await
        .expect("set duration");
    h.jira
        .transition(&key, "Start progress", CAROL)
        .await
        .expect("back to work");
    h.jira
        .transition(&key, "Extend", BOB)
        .await
        .expect("extend");
    let capped = wait_grant(&h, &key, "a capped renewal", |g| g.expires_at == Some(cap)).await;
    assert_eq!(capped.duration.as_secs(), 3 * 3600);
    h.wait_comment(&key, "(capped: at most 3h from the first approval)")
        .await;

    // At the cap, a further approval changes nothing.
    h.jira
        .transition(&key, "Start progress", CAROL)
        .await
        .expect("back to work");
    h.jira
        .transition(&key, "Extend", CAROL)
        .await
        .expect("extend");
    wait_audit(
        &h,
        "event.ignored",
        &key,
        "not renewed: the grant already ends at",
    )
    .await;
    assert_eq!(h.grants(&key).await[0].expires_at, Some(cap));
    assert_eq!(h.audit("grant.renewed").await.len(), 2);
    assert_eq!(applies(&h).await, 1, "a renewal is not a new apply");
}

#[tokio::test]
async fn reassigning_the_ticket_to_another_technician_revokes_when_configured() {
    let opts = mapping_with(
        r#"subject  = "{{ requester.email }}""#,
        r#"subject  = "{{ fields.customfield_10080 }}""#,
    );
    let opts = Options {
        mapping: opts.mapping.replacen(
            r#"revoke  = { status = ["Done", "Cancelled"] }"#,
            "revoke  = { status = [\"Done\", \"Cancelled\"] }\nrevoke_on_reassign = true",
            1,
        ),
        ..opts
    };
    let h = Harness::start_with(opts).await;
    let issue = NewIssue::new(ALICE, "Need local admin to install a driver")
        .field(
            "customfield_10050",
            json!({"value": "Local admin", "id": "10100"}),
        )
        .field("customfield_10060", json!("WS-0207"))
        .field("customfield_10070", json!("2h"))
        .field("customfield_10080", json!("tech1@example.com"))
        .approval(ApprovalSpec::any_of(&[BOB]));
    let key = h.jira.create_issue(issue).await.expect("issue").key;
    h.jira.approve(&key, BOB).await.expect("approve");
    h.wait_state(&key, GrantState::Active).await;

    // Editing another field changes nothing.
    h.jira
        .set_field(&key, "summary", json!("Driver for the plotter"), CAROL)
        .await
        .expect("edit");
    h.settle().await;
    assert_eq!(h.grants(&key).await[0].state, GrantState::Active);

    // The work goes to another technician: the first one's rights end.
    h.jira
        .set_field(&key, "customfield_10080", json!("tech2@example.com"), CAROL)
        .await
        .expect("reassign");
    let g = h.wait_state(&key, GrantState::Revoked).await;
    assert_eq!(
        g.reason.as_deref(),
        Some(
            "the ticket was reassigned: the elevation is now for tech2@example.com, not tech1@example.com"
        )
    );
    assert!(
        !h.receiver
            .holds("tech1@example.com", "WS-0207", "local-admin")
            .await
    );
}
