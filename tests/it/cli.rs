//! The command line: `check` reports precise problems, `explain` is a dry run.

use std::process::Command;

use crate::harness::Harness;

fn jitbridge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_jitbridge"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

#[test]
fn check_accepts_the_shipped_configuration_with_its_secrets_set() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = jitbridge()
        .current_dir(root)
        .args(["check"])
        .env("JIRA_WEBHOOK_SECRET", "x")
        .env("JIRA_API_TOKEN", "x")
        .env(
            "ELEVATION_WEBHOOK_SECRET",
            "whsec_ZGV2LW9ubHktZWxldmF0aW9uLXNlY3JldA==",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
}

#[test]
fn check_names_the_missing_secret_variable_and_fails() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = jitbridge()
        .current_dir(root)
        .args(["check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connectors/jira.toml: inbound.secret_env")
            && err.contains("JIRA_WEBHOOK_SECRET"),
        "{err}"
    );
    assert!(
        !err.contains("unknown connector"),
        "one missing secret must not cascade: {err}"
    );
}

#[test]
fn check_reports_file_line_key_and_why_for_a_typo() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("connectors")).unwrap();
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("jitbridge.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_byte = 10\n",
    )
    .unwrap();
    let out = jitbridge()
        .current_dir(dir.path())
        .args(["check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("jitbridge.toml:3") && err.contains("max_body_byte"),
        "{err}"
    );
}

#[tokio::test]
async fn explain_shows_mapping_policy_decision_and_writebacks_without_writing_anything() {
    let h = Harness::start().await;
    let payload = h.dir.path().join("approval.json");
    std::fs::write(
        &payload,
        serde_json::json!({
            "timestamp": 1741941697640u64, "webhookEvent": "jira:issue_updated",
            "user": {"accountId": "u-alice", "emailAddress": "alice@example.com"},
            "issue": {"id": "10234", "key": "ACCESS-87", "fields": {
                "issuetype": {"name": "Elevation Request"}, "status": {"name": "Approved"},
                "reporter": {"accountId": "u-alice", "emailAddress": "alice@example.com"},
                "customfield_10050": {"value": "Local admin"}, "customfield_10060": "WS-0001", "customfield_10070": "9h"}},
            "changelog": {"items": [{"field": "status", "fromString": "Waiting for approval", "toString": "Approved"}]}
        })
        .to_string(),
    )
    .unwrap();
    let config = h.config_path.to_str().unwrap().to_owned();
    let out = jitbridge()
        .args([
            "explain",
            "--config",
            &config,
            "--connector",
            "jira",
            "--payload",
            payload.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let x: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &x["events"][0]["mappings"][0];
    assert_eq!(m["matched"], true);
    assert_eq!(m["trigger"], "approve");
    assert_eq!(
        m["grant"]["capped_at_max_duration"], true,
        "9h asked, 4h max: {m}"
    );
    assert!(
        m["decision"].as_str().unwrap().starts_with("deny"),
        "self-approval is denied: {m}"
    );
    assert!(
        m["writebacks"][0]["comment"]
            .as_str()
            .unwrap()
            .contains("Elevation refused"),
        "{m}"
    );
    // Dry run: the daemon's store saw nothing of it.
    assert!(h.store().audit_records(0, 10).await.unwrap().is_empty());
}

/// The CLI pointed at the harness daemon (its port comes from an environment override).
fn cli_for(h: &Harness) -> Command {
    let mut c = jitbridge();
    c.env(
        "JITBRIDGE__SERVER__LISTEN",
        h.daemon().webhook_addr.to_string(),
    )
    .env("TEST_ADMIN_TOKEN", crate::harness::ADMIN_TOKEN)
    .arg("--log-format")
    .arg("text");
    c
}

#[tokio::test]
async fn grants_list_and_revoke_drive_the_running_daemon() {
    use jitbridge::grants::GrantState;
    use jitbridge_sim::jira::users::{ALICE, BOB};
    let h = Harness::start().await;
    let key = h.raise(ALICE, "WS-0060", "2h", &[BOB]).await;
    h.jira.approve(&key, BOB).await.expect("approve");
    let g = h.wait_state(&key, GrantState::Active).await;
    let config = h.config_path.to_str().unwrap().to_owned();

    let out = tokio::task::spawn_blocking({
        let mut c = cli_for(&h);
        c.args([
            "grants", "list", "--config", &config, "--state", "active", "--json",
        ]);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["id"], g.id.to_string());

    let out = tokio::task::spawn_blocking({
        let mut c = cli_for(&h);
        c.args([
            "grants",
            "revoke",
            "--config",
            &config,
            &g.id.to_string(),
            "--reason",
            "done early",
        ]);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revoking"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    h.wait_state(&key, GrantState::Revoked).await;

    let out = tokio::task::spawn_blocking({
        let mut c = cli_for(&h);
        c.args(["audit", "verify", "--config", &config]);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("audit chain intact"));

    let out = tokio::task::spawn_blocking({
        let mut c = cli_for(&h);
        c.args(["outbox", "list", "--config", &config]);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 job(s)"));
}

/// `jitbridge serve` (JSON logs on a piped stderr) in a fresh directory holding only a
/// `jitbridge.toml` with an ephemeral port and empty `connectors/` and `mappings/`.
fn serve_empty_config() -> (tempfile::TempDir, std::process::Child) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("connectors")).unwrap();
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("jitbridge.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let child = jitbridge()
        .current_dir(dir.path())
        .args(["--log-format", "json", "serve"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    (dir, child)
}

/// Waits (up to 10 s) for the child to exit, and asserts it exited successfully.
fn wait_for_clean_exit(child: &mut std::process::Child) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn serve_logs_json_and_shuts_down_gracefully_on_sigterm() {
    let (dir, mut child) = serve_empty_config();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let running = lines
        .by_ref()
        .take(50)
        .map_while(Result::ok)
        .find(|l| l.contains("jitbridge is running"))
        .expect("start-up line");
    let parsed: serde_json::Value = serde_json::from_str(&running).expect("JSON log line");
    assert_eq!(parsed["level"], "INFO");
    signal(&child, "TERM");
    wait_for_clean_exit(&mut child);
    assert!(
        dir.path().join("data/jitbridge.db").exists(),
        "the embedded store was created under data/"
    );
}

#[tokio::test]
async fn audit_export_tells_one_tickets_whole_story_in_order() {
    use jitbridge::grants::GrantState;
    use jitbridge_sim::jira::users::{ALICE, BOB};
    let h = Harness::start().await;
    let key = h.raise(ALICE, "WS-0061", "1s", &[BOB]).await;
    h.jira.approve(&key, BOB).await.expect("approve");
    h.wait_state(&key, GrantState::Expired).await;
    h.wait_comment(&key, "expired and was revoked").await;
    let config = h.config_path.to_str().unwrap().to_owned();
    let out = tokio::task::spawn_blocking({
        let mut c = cli_for(&h);
        c.args(["audit", "export", "--config", &config, "--ticket", &key]);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kinds: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| x == k)
            .unwrap_or_else(|| panic!("{k} missing from {kinds:?}"))
    };
    assert!(pos("grant.requested") < pos("grant.approved"));
    assert!(pos("grant.approved") < pos("grant.active"));
    assert!(pos("grant.active") < pos("grant.expired"));
    // The request's summary comment is delivered first; the last writeback follows the grant.
    let last_delivered = kinds
        .iter()
        .rposition(|x| x == "writeback.delivered")
        .expect("writebacks delivered");
    assert!(pos("grant.active") < last_delivered);
    // The approval evidence: who approved, confirmed through Jira, and the policy checks.
    let approved = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("\"grant.approved\""))
        .unwrap()
        .to_owned();
    assert!(
        approved.contains("bob@example.com") && approved.contains("distinct_approver"),
        "{approved}"
    );
}

/// Lines of a child's stderr, readable with a deadline.
fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits (generously) for a line containing `needle`; returns it.
fn wait_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(_) => {}
            Err(e) => panic!("no log line containing {needle:?}: {e}"),
        }
    }
}

fn signal(child: &std::process::Child, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[test]
fn sighup_reloads_a_valid_configuration_and_refuses_an_invalid_one_keeping_the_daemon_up() {
    let (dir, mut child) = serve_empty_config();
    let lines = stderr_lines(&mut child);
    wait_line(&lines, "jitbridge is running");

    signal(&child, "HUP");
    let ok = wait_line(&lines, "configuration reloaded");
    assert!(ok.contains("\"mappings\":0"), "{ok}");

    std::fs::write(
        dir.path().join("mappings/broken.toml"),
        "[[mapping]]\nname = \"x\"\nconnector = \"nowhere\"\n",
    )
    .unwrap();
    signal(&child, "HUP");
    let refused = wait_line(&lines, "configuration reload refused");
    assert!(refused.contains("broken.toml"), "{refused}");
    assert!(child.try_wait().unwrap().is_none(), "still running");

    signal(&child, "TERM");
    wait_for_clean_exit(&mut child);
}

/// A configuration directory for `check`: one webhook provider, the Jira connector and the
/// given mapping files; returns the directory (paths in the output are relative to it).
fn check_dir(mappings: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("connectors")).unwrap();
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("jitbridge.toml"),
        "[providers.agent]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/elevations\"\nsecret_env = \"AGENT_SECRET\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("connectors/jira.toml"),
        crate::harness::jira_connector("https://example.atlassian.net"),
    )
    .unwrap();
    for (name, text) in mappings {
        std::fs::write(dir.path().join("mappings").join(name), text).unwrap();
    }
    dir
}

/// Runs `jitbridge check` in `dir`; (exit code, stdout + stderr).
fn run_check(dir: &tempfile::TempDir) -> (i32, String) {
    let out = jitbridge()
        .current_dir(dir.path())
        .env("AGENT_SECRET", crate::harness::ELEVATION_SECRET)
        .env("JIRA_WEBHOOK_SECRET", "s")
        .env("JIRA_API_TOKEN", "t")
        .args(["check", "--config", "jitbridge.toml"])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A mapping of the Jira connector with `when` and the grant/extra lines given.
fn check_mapping(name: &str, when: &str, grant: &str, extra: &str) -> String {
    format!(
        "[[mapping]]\nname = \"{name}\"\nconnector = \"jira\"\nwhen = '{when}'\n\n[mapping.grant]\n{grant}\nmax_duration = \"4h\"\nprovider = \"agent\"\n\n[mapping.on]\napprove = {{ status = [\"Approved\"] }}\n{extra}"
    )
}

const CHECK_GRANT: &str = "subject = \"{{ requester.email }}\"\ntarget = \"{{ fields.customfield_10060 }}\"\nscope = \"local-admin\"\nduration = \"{{ fields.customfield_10070 | default('60m') }}\"";

#[test]
fn check_lists_every_error_of_a_broken_mapping_set_with_file_line_and_hint() {
    let typos = check_mapping(
        "typos",
        r#"tickt.type == "Elevation Request""#,
        &CHECK_GRANT.replace("requester.email", "requester.mail"),
        "\n[mapping.writeback]\nexpired = { comment = \"{{ payload.issue.key }}: local admin expired\" }\n",
    );
    let unknown_key = check_mapping(
        "unknown-key",
        "true",
        &format!("{CHECK_GRANT}\nscopes = \"x\""),
        "",
    );
    let bad_cel = check_mapping("bad-cel", r#"ticket.type == "#, CHECK_GRANT, "");
    let too_long = check_mapping(
        "too-long",
        r#"ticket.type == "Server""#,
        &CHECK_GRANT.replace("max_duration", "unused"),
        "",
    )
    .replace("max_duration = \"4h\"", "max_duration = \"48h\"");
    let dir = check_dir(&[
        ("a-typos.toml", &typos),
        ("b-unknown-key.toml", &unknown_key),
        ("c-bad-cel.toml", &bad_cel),
        ("d-too-long.toml", &too_long),
    ]);
    let (code, out) = run_check(&dir);
    assert_eq!(code, 1, "{out}");
    insta::assert_snapshot!("check_broken_mapping_set", out);
}

#[test]
fn check_passes_with_warnings_for_overlapping_mappings_and_a_duration_above_its_cap() {
    let a = check_mapping(
        "local-admin",
        r#"ticket.type == "Elevation Request""#,
        CHECK_GRANT,
        "",
    );
    let b = check_mapping(
        "driver-install",
        r#"fields.customfield_10050.value == "Driver""#,
        &CHECK_GRANT.replace(
            "duration = \"{{ fields.customfield_10070 | default('60m') }}\"",
            "duration = \"8h\"",
        ),
        "",
    );
    let dir = check_dir(&[("a.toml", &a), ("b.toml", &b)]);
    let (code, out) = run_check(&dir);
    assert_eq!(code, 0, "{out}");
    insta::assert_snapshot!("check_warnings", out);
}
