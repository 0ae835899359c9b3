//! `jitbridge explain` output, snapshot-tested: the text an administrator reads and the JSON
//! tooling consumes, for Jira deliveries that request, approve, self-approve and miss. The
//! configuration has a fixed base URL and the policy instant is fixed (`--at`), so the output
//! is the same on every run. Snapshots live in `tests/it/snapshots/`; review a change with
//! `cargo insta review` or by reading the `.snap.new` file a failing run leaves.

use std::path::{Path, PathBuf};

use jitbridge::config::MapSecrets;
use serde_json::{Value, json};

use crate::harness::MAPPING;

/// A second mapping with a time window, so `--at` decides its `hours` check.
const SERVER_MAPPING: &str = r#"
[[mapping]]
name = "server-admin-office-hours"
connector = "jira"
when = 'ticket.type == "Server Access"'

[mapping.grant]
subject  = "{{ requester.email }}"
target   = "{{ fields.customfield_10060 }}"
scope    = "local-admin"
duration = "2h"
max_duration = "2h"
provider = "endpoint-agent"

[mapping.on]
approve = { status = ["Approved"] }
revoke  = { status = ["Done"] }

[mapping.policy]
hours = ["Mon-Fri 07:00-19:00 Europe/Berlin"]
targets = ["SRV-*"]

[mapping.writeback]
denied = { comment = "Server access refused: {{ reason }}." }
"#;

/// A mapping that auto-approves installing 7-Zip (an `app:` scope from the allow-list) for an
/// hour at most, without a person; other software waits for an approver.
const SOFTWARE_MAPPING: &str = r#"
[[mapping]]
name = "software-install"
connector = "jira"
when = 'ticket.type == "Software Install"'

[mapping.grant]
subject  = "{{ requester.email }}"
target   = "{{ fields.customfield_10060 }}"
scope    = "app:7zip"
duration = "{{ fields.customfield_10070 | default('30m') }}"
max_duration = "4h"
provider = "endpoint-agent"

[mapping.on]
approve = { status = ["Approved"] }
revoke  = { status = ["Done"] }

[mapping.auto_approve]
enabled = true
condition = 'fields.customfield_10080 == "7-Zip"'
scopes = ["app:*"]
max_duration = "1h"

[mapping.policy]
requesters = ["*@example.com"]
targets = ["WS-*"]
scopes = ["app:*"]
"#;

/// The allow-list entry `app:7zip` resolves to.
const ALLOW_LIST: &str = r#"
[scopes.app.7zip]
path = 'C:\Program Files\7-Zip\7z.exe'
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
args = ["x"]
"#;

/// Writes a complete configuration with a fixed Jira base URL into `dir`.
fn write_fixed_config(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("connectors")).unwrap();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(
        dir.join("jitbridge.toml"),
        r#"
[server]
listen = "127.0.0.1:0"
[store]
url = "sqlite://data/jitbridge.db"
[providers.endpoint-agent]
kind = "webhook"
url = "http://127.0.0.1:9/elevations"
secret_env = "ELEVATION_WEBHOOK_SECRET"
"#
        .to_owned()
            + ALLOW_LIST,
    )
    .unwrap();
    std::fs::write(
        dir.join("connectors/jira.toml"),
        crate::harness::jira_connector("https://example.atlassian.net"),
    )
    .unwrap();
    std::fs::write(dir.join("mappings/a-local-admin.toml"), MAPPING).unwrap();
    std::fs::write(dir.join("mappings/b-server.toml"), SERVER_MAPPING).unwrap();
    dir.join("jitbridge.toml")
}

fn secrets() -> MapSecrets {
    MapSecrets::from_pairs([
        ("JIRA_WEBHOOK_SECRET", "s"),
        ("JIRA_API_TOKEN", "t"),
        ("ELEVATION_WEBHOOK_SECRET", crate::harness::ELEVATION_SECRET),
    ])
}

/// A Jira `issue_updated` delivery moving the ticket to Approved, by `actor`.
fn approval(issue_type: &str, actor: &str, target: &str, duration: Value) -> Value {
    json!({
        "timestamp": 1741941697640u64, "webhookEvent": "jira:issue_updated",
        "user": {"accountId": format!("u-{actor}"), "emailAddress": format!("{actor}@example.com")},
        "issue": {"id": "10234", "key": "ACCESS-87", "fields": {
            "issuetype": {"name": issue_type}, "status": {"name": "Approved"},
            "reporter": {"accountId": "u-alice", "emailAddress": "alice@example.com"},
            "customfield_10050": {"value": "Local admin"}, "customfield_10060": target,
            "customfield_10070": duration}},
        "changelog": {"items": [{"field": "status", "fromString": "Waiting for approval", "toString": "Approved"}]}
    })
}

/// Explains `payload` with the fixed configuration at `at`: (text, JSON).
fn explain(payload: &Value, at: &str) -> (String, String) {
    explain_with(payload, at, &[])
}

/// [`explain`] with `extra` mapping files (name, contents) added to the configuration.
fn explain_with(payload: &Value, at: &str, extra: &[(&str, &str)]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_fixed_config(dir.path());
    for (name, text) in extra {
        std::fs::write(dir.path().join("mappings").join(name), text).unwrap();
    }
    let cfg = jitbridge::config::load(&config, &Default::default(), &secrets()).unwrap();
    let client = jitbridge::app::http_client().unwrap();
    let registry = jitbridge::connectors::Registry::build(&cfg.connectors, &client);
    let x = jitbridge::explain::explain(
        registry.get("jira").unwrap(),
        &cfg.mappings,
        payload.to_string().as_bytes(),
        at.parse().unwrap(),
    )
    .unwrap();
    (
        jitbridge::explain::render_text(&x),
        serde_json::to_string_pretty(&x).unwrap(),
    )
}

const TUESDAY_MORNING: &str = "2025-03-11T09:00:00Z";
const SATURDAY_NIGHT: &str = "2025-03-15T23:00:00Z";

#[test]
fn explain_shows_an_approval_by_someone_else_granted_with_its_duration_capped() {
    let (text, json) = explain(
        &approval("Elevation Request", "bob", "WS-0001", json!("9h")),
        TUESDAY_MORNING,
    );
    insta::assert_snapshot!("approved_by_bob_text", text);
    insta::assert_snapshot!("approved_by_bob_json", json);
}

#[test]
fn explain_shows_a_self_approval_denied_with_the_refusal_written_back() {
    let (text, json) = explain(
        &approval("Elevation Request", "alice", "WS-0001", json!("30m")),
        TUESDAY_MORNING,
    );
    insta::assert_snapshot!("self_approval_text", text);
    insta::assert_snapshot!("self_approval_json", json);
}

#[test]
fn explain_evaluates_office_hours_at_the_given_instant() {
    let payload = approval("Server Access", "bob", "SRV-0042", Value::Null);
    let (inside, _) = explain(&payload, TUESDAY_MORNING);
    let (outside, json) = explain(&payload, SATURDAY_NIGHT);
    assert!(inside.contains("policy PASS hours"), "{inside}");
    insta::assert_snapshot!("server_access_saturday_text", outside);
    insta::assert_snapshot!("server_access_saturday_json", json);
}

#[test]
fn explain_shows_a_created_ticket_as_a_request_and_a_missing_field_as_a_when_error() {
    let created = json!({
        "timestamp": 1741940000000u64, "webhookEvent": "jira:issue_created",
        "user": {"accountId": "u-alice", "emailAddress": "alice@example.com"},
        "issue": {"id": "10235", "key": "ACCESS-88", "fields": {
            "issuetype": {"name": "Elevation Request"}, "status": {"name": "Waiting for approval"},
            "reporter": {"accountId": "u-alice", "emailAddress": "alice@example.com"},
            "customfield_10060": "LT-0007"}}
    });
    let (text, _) = explain(&created, TUESDAY_MORNING);
    insta::assert_snapshot!("created_without_field_text", text);
}

/// A Jira `issue_created` delivery for software `software` on WS-0001, raised by Alice.
fn software_request(software: &str, duration: &str) -> Value {
    json!({
        "timestamp": 1741940000000u64, "webhookEvent": "jira:issue_created",
        "user": {"accountId": "u-alice", "emailAddress": "alice@example.com"},
        "issue": {"id": "10236", "key": "ACCESS-89", "fields": {
            "issuetype": {"name": "Software Install"}, "status": {"name": "Waiting for approval"},
            "reporter": {"accountId": "u-alice", "emailAddress": "alice@example.com"},
            "customfield_10060": "WS-0001", "customfield_10070": duration,
            "customfield_10080": software}}
    })
}

/// Explains `payload` with the software mapping (and its `app:7zip` scope) added.
fn explain_software(payload: &Value) -> (String, String) {
    explain_with(
        payload,
        TUESDAY_MORNING,
        &[("c-software.toml", SOFTWARE_MAPPING)],
    )
}

#[test]
fn explain_shows_a_creation_the_mapping_auto_approves_with_its_summary_and_note() {
    let (text, json) = explain_software(&software_request("7-Zip", "3h"));
    assert!(
        text.contains("auto-approve: mapping software-install approves it at once"),
        "{text}"
    );
    assert!(
        text.contains("for 1h (capped at auto_approve.max_duration 1h)"),
        "{text}"
    );
    assert!(text.contains("Elevation request received."), "{text}");
    assert!(text.contains("Auto-approved by jitbridge"), "{text}");
    insta::assert_snapshot!("auto_approved_creation_text", text);
    insta::assert_snapshot!("auto_approved_creation_json", json);
}

#[test]
fn explain_shows_a_creation_whose_auto_approval_condition_is_false_waiting_for_a_person() {
    let (text, _) = explain_software(&software_request("Some other tool", "30m"));
    assert!(
        text.contains("condition fields.customfield_10080 == \"7-Zip\" => false"),
        "{text}"
    );
    assert!(
        text.contains("waits for a person because the auto-approval condition"),
        "{text}"
    );
    assert!(!text.contains("Auto-approved by jitbridge"), "{text}");
    insta::assert_snapshot!("auto_approve_condition_false_text", text);
}

#[test]
fn explain_shows_an_app_scope_grant_with_its_definition_and_what_a_renewal_would_do() {
    let mut payload = approval("Software Install", "bob", "WS-0001", json!("2h"));
    payload["issue"]["fields"]["customfield_10080"] = json!("Some other tool");
    let (text, _) = explain_software(&payload);
    assert!(
        text.contains(
            "scope definition: app:7zip (C:\\Program Files\\7-Zip\\7z.exe, SHA-256 9f86d081"
        ),
        "{text}"
    );
    assert!(
        text.contains("renewal: if this ticket's grant is already active"),
        "{text}"
    );
    insta::assert_snapshot!("app_scope_approval_text", text);
}

#[test]
fn explain_says_a_reopen_into_an_approve_status_never_approves() {
    let mut payload = approval("Elevation Request", "bob", "WS-0001", json!("1h"));
    payload["changelog"]["items"][0]["fromString"] = json!("Done");
    let (text, _) = explain(&payload, TUESDAY_MORNING);
    assert!(
        text.contains("decision: reopen never approves: status Approved is an approve status"),
        "{text}"
    );
    assert!(!text.contains("decision: approve:"), "{text}");
}
