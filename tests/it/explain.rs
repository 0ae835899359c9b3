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
"#,
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
    let dir = tempfile::tempdir().unwrap();
    let config = write_fixed_config(dir.path());
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
