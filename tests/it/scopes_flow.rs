//! Scopes, identities and the summary comment through the whole loop with Jira: an `app:`
//! grant reaches the endpoint with its path and hash; a scope the mapping may not grant is
//! refused in words; the approver sees what they would grant as soon as the ticket is raised;
//! `group:` approvers come from the identity map, and a second ITSM account of the requester
//! cannot approve.

use jitbridge::grants::GrantState;
use jitbridge_sim::jira::NewIssue;
use jitbridge_sim::jira::model::ApprovalSpec;
use jitbridge_sim::jira::users::{ALICE, BOB, CAROL};
use jitbridge_sim::receiver::CallKind;
use serde_json::json;

use crate::harness::{Harness, MAPPING, Options};

const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// The allow-list every test daemon here has.
fn allow_list() -> String {
    format!(
        r#"
[scopes.app.7zip]
path = 'C:\Program Files\7-Zip\7z.exe'
sha256 = "{HASH}"
args = ["x"]

[scopes.service.spooler]
name = "Spooler"
actions = ["restart"]
"#
    )
}

/// Bob leads the helpdesk. Carol is herself, or (`carol_is_alice`) her Jira account is
/// Alice's second account.
fn identity_map(carol_is_alice: bool) -> String {
    let carol = if carol_is_alice {
        String::new()
    } else {
        "[[person]]\nsubject = 'CORP\\carol'\nmatch = [\"carol@example.com\"]\n".to_owned()
    };
    let alice_accounts = if carol_is_alice {
        format!("\"alice@example.com\", \"jira:{CAROL}\"")
    } else {
        "\"alice@example.com\"".to_owned()
    };
    format!(
        r#"
[[person]]
subject = 'CORP\alice'
match = [{alice_accounts}]

[[person]]
subject = 'CORP\bob'
match = ["bob@example.com"]
groups = ["helpdesk-leads"]

{carol}
"#
    )
}

/// The harness mapping with the scope taken from the ticket (`customfield_10080`, default
/// `local-admin`) and extra policy keys.
fn options(policy: &str) -> Options {
    options_with(policy, false)
}

fn options_with(policy: &str, carol_is_alice: bool) -> Options {
    let scope = "scope    = \"local-admin\"";
    let targets = "targets = [\"WS-*\", \"LT-*\"]";
    assert!(
        MAPPING.contains(scope) && MAPPING.contains(targets),
        "harness mapping changed"
    );
    let mapping = MAPPING
        .replacen(
            scope,
            "scope    = \"{{ fields.customfield_10080 | default('local-admin') }}\"",
            1,
        )
        .replacen(targets, &format!("{targets}\n{policy}"), 1);
    Options {
        mapping,
        main_extra: format!("{}\n[identity]\nmap = \"identities.toml\"\n", allow_list()),
        files: vec![("identities.toml".into(), identity_map(carol_is_alice))],
        ..Default::default()
    }
}

/// Alice asks for `scope` on `target`, approvable by `approvers`.
async fn raise(h: &Harness, scope: Option<&str>, target: &str, approvers: &[&str]) -> String {
    let mut issue = NewIssue::new(ALICE, "Need to unpack an archive")
        .field(
            "customfield_10050",
            json!({"value": "Local admin", "id": "10100"}),
        )
        .field("customfield_10060", json!(target))
        .field("customfield_10070", json!("1h"))
        .approval(ApprovalSpec::any_of(approvers));
    if let Some(scope) = scope {
        issue = issue.field("customfield_10080", json!(scope));
    }
    h.jira.create_issue(issue).await.expect("issue created").key
}

async fn applies(h: &Harness) -> Vec<serde_json::Value> {
    h.receiver
        .calls()
        .await
        .into_iter()
        .filter(|c| c.kind == Some(CallKind::Apply))
        .filter_map(|c| c.grant)
        .collect()
}

#[tokio::test]
async fn app_grant_reaches_the_endpoint_with_its_path_and_hash() {
    let h = Harness::start_with(options(r#"scopes = ["local-admin", "app:*"]"#)).await;
    let key = raise(&h, Some("app:7zip"), "WS-0201", &[BOB]).await;
    h.wait_state(&key, GrantState::Requested).await;
    h.jira.approve(&key, BOB).await.expect("approve");
    h.wait_state(&key, GrantState::Active).await;

    let calls = applies(&h).await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    let grant = &calls[0];
    assert_eq!(grant["scope"], "app:7zip");
    let def = &grant["scope_definition"];
    assert_eq!(def["kind"], "app");
    assert_eq!(def["name"], "7zip");
    assert_eq!(def["path"], r"C:\Program Files\7-Zip\7z.exe");
    assert_eq!(def["sha256"], HASH);
    assert_eq!(def["args"], json!(["x"]));
    assert!(
        h.receiver
            .holds("alice@example.com", "WS-0201", "app:7zip")
            .await
    );

    // The revoke carries the same definition.
    h.wait_status(&key, "In Progress").await;
    h.jira
        .transition_to(&key, "Done", ALICE)
        .await
        .expect("resolve");
    h.wait_state(&key, GrantState::Revoked).await;
    let revoke = h
        .receiver
        .calls()
        .await
        .into_iter()
        .find(|c| c.kind == Some(CallKind::Revoke))
        .and_then(|c| c.grant)
        .expect("revoke call");
    assert_eq!(revoke["scope_definition"], *def);
}

#[tokio::test]
async fn scope_not_in_the_allow_list_is_refused_and_commented() {
    let h = Harness::start_with(options(r#"scopes = ["local-admin", "app:*"]"#)).await;
    let key = raise(&h, Some("app:foo"), "WS-0202", &[BOB]).await;
    // The summary already says what would block it.
    h.wait_comment(
        &key,
        "app:foo is not in the allow-list [scopes.app] of jitbridge.toml (scopes)",
    )
    .await;
    h.jira.approve(&key, BOB).await.expect("approve");
    let g = h.wait_state(&key, GrantState::Denied).await;
    assert_eq!(
        g.reason.as_deref(),
        Some("app:foo is not in the allow-list [scopes.app] of jitbridge.toml")
    );
    h.wait_comment(
        &key,
        "Elevation refused: app:foo is not in the allow-list [scopes.app] of jitbridge.toml.",
    )
    .await;

    // A listed scope the mapping does not allow is refused too.
    let key = raise(&h, Some("service:spooler"), "WS-0203", &[BOB]).await;
    h.jira.approve(&key, BOB).await.expect("approve");
    h.wait_state(&key, GrantState::Denied).await;
    h.wait_comment(
        &key,
        "Elevation refused: scope service:spooler may not be granted by this elevation (allowed \
         scopes: local-admin, app:*).",
    )
    .await;
    h.settle().await;
    assert!(
        applies(&h).await.is_empty(),
        "nothing refused reaches the endpoint"
    );
}

#[tokio::test]
async fn summary_comment_appears_when_the_ticket_is_raised() {
    let h = Harness::start_with(options(
        "scopes = [\"app:*\"]\napprovers = [\"group:helpdesk-leads\"]",
    ))
    .await;
    let key = raise(&h, Some("app:7zip"), "WS-0204", &[BOB]).await;
    let comments = h.wait_comment(&key, "Elevation request received.").await;
    let summary = comments
        .iter()
        .find(|c| c.contains("Elevation request received."))
        .expect("summary");
    for needle in [
        "Subject: alice@example.com",
        "Target: WS-0204",
        r"Scope: app:7zip (C:\Program Files\7-Zip\7z.exe, SHA-256 9f86d081",
        "Duration: 1h",
        r"Who may approve: group helpdesk-leads (CORP\bob)",
        "Needs: 1 approval",
        "Nothing would block this request right now.",
    ] {
        assert!(
            summary.contains(needle),
            "{needle:?} missing in:\n{summary}"
        );
    }
    assert_eq!(h.grants(&key).await[0].state, GrantState::Requested);
}

#[tokio::test]
async fn group_approver_grants_and_a_non_member_is_refused() {
    let h = Harness::start_with(options(r#"approvers = ["group:helpdesk-leads"]"#)).await;

    let granted = raise(&h, None, "WS-0205", &[BOB]).await;
    h.jira.approve(&granted, BOB).await.expect("approve");
    h.wait_state(&granted, GrantState::Active).await;

    // Jira lets Carol approve (she is on the ticket), but she is not a helpdesk lead.
    let refused = raise(&h, None, "WS-0206", &[CAROL]).await;
    h.jira.approve(&refused, CAROL).await.expect("approve");
    let g = h.wait_state(&refused, GrantState::Denied).await;
    assert!(
        g.reason.as_deref().unwrap_or_default().contains(
            "who may not approve this elevation (allowed approvers: group:helpdesk-leads)"
        ),
        "{:?}",
        g.reason
    );
    h.wait_comment(&refused, "who may not approve this elevation")
        .await;
    h.settle().await;
    assert!(
        !h.receiver
            .holds("alice@example.com", "WS-0206", "local-admin")
            .await
    );
}

#[tokio::test]
async fn self_approval_through_a_second_account_of_the_requester_is_refused() {
    let h = Harness::start_with(options_with("", true)).await;
    let key = raise(&h, None, "WS-0207", &[CAROL]).await;
    h.wait_state(&key, GrantState::Requested).await;
    // Carol's Jira account is mapped to CORP\alice: Alice approving her own request.
    h.jira.approve(&key, CAROL).await.expect("approve");
    let g = h.wait_state(&key, GrantState::Denied).await;
    let reason = g.reason.unwrap_or_default();
    assert!(
        reason.contains(r"are the same person (CORP\alice in the identity map)"),
        "{reason}"
    );
    h.wait_comment(
        &key,
        "a request cannot be approved by the person who raised it",
    )
    .await;
    h.settle().await;
    assert!(applies(&h).await.is_empty());
}

#[test]
fn check_reports_scopes_outside_the_allow_list_and_bad_identity_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("connectors")).expect("mkdir");
    std::fs::create_dir_all(root.join("mappings")).expect("mkdir");
    std::fs::write(
        root.join("jitbridge.toml"),
        r#"[providers.endpoint-agent]
kind = "webhook"
url = "http://127.0.0.1:9/elevations"
secret_env = "ELEVATION_WEBHOOK_SECRET"

[scopes.app.7zip]
path = 'C:\Program Files\7-Zip\7z.exe'
sha256 = "not-a-hash"

[identity]
map = "identities.toml"
"#,
    )
    .expect("write config");
    std::fs::write(
        root.join("connectors/jira.toml"),
        crate::harness::jira_connector("http://127.0.0.1:9"),
    )
    .expect("write connector");
    std::fs::write(
        root.join("identities.toml"),
        "[[person]]\nsubject = 'CORP\\alice'\nmatch = [\"alice@example.com\"]\n\n\
         [[person]]\nsubject = 'CORP\\alice2'\nmatch = [\"ALICE@example.com\"]\n",
    )
    .expect("write identities");
    let mapping = MAPPING.replacen("scope    = \"local-admin\"", "scope    = \"app:foo\"", 1);
    std::fs::write(root.join("mappings/m.toml"), mapping).expect("write mapping");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jitbridge"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("JIRA_WEBHOOK_SECRET", "x")
        .env("JIRA_API_TOKEN", "x")
        .env("ELEVATION_WEBHOOK_SECRET", crate::harness::ELEVATION_SECRET)
        .current_dir(root)
        .args(["check"])
        .output()
        .expect("run jitbridge check");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "jitbridge.toml:8: scopes.app.7zip.sha256: must be 64 hexadecimal characters",
        "identities.toml:7: person[1].match[0]: \"ALICE@example.com\" is already mapped to person[0] (line 3)",
        "m.toml:10: mapping[0].grant.scope: mapping \"helpdesk-local-admin\": app:foo is not in the \
         allow-list [scopes.app] of jitbridge.toml",
    ] {
        assert!(err.contains(needle), "{needle:?} missing in:\n{err}");
    }
}

#[tokio::test]
async fn an_empty_requested_writeback_silences_the_summary() {
    let mut opts = options("");
    opts.mapping = opts.mapping.replacen(
        "[mapping.writeback]\n",
        "[mapping.writeback]\nrequested = { comment = \"\" }\n",
        1,
    );
    let h = Harness::start_with(opts).await;
    let key = raise(&h, None, "WS-0208", &[BOB]).await;
    h.wait_state(&key, GrantState::Requested).await;
    h.jira.approve(&key, BOB).await.expect("approve");
    h.wait_state(&key, GrantState::Active).await;
    let comments = h.wait_comment(&key, "Local admin granted").await;
    assert!(
        comments
            .iter()
            .all(|c| !c.contains("Elevation request received.")),
        "{comments:?}"
    );
}
