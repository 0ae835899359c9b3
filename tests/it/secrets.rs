//! Secrets never leak: a full run of the real binary with debug logging, plus its error bodies,
//! metrics, `explain` and `check` output, searched for every configured secret.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use jitbridge_sim::jira::users::{ALICE, API_EMAIL, API_TOKEN, BOB};
use jitbridge_sim::jira::{JiraSim, JiraSimConfig, NewIssue};
use jitbridge_sim::receiver::ElevationReceiver;

use crate::harness::{
    ADMIN_TOKEN, ELEVATION_SECRET, Options, WEBHOOK_SECRET, eventually, write_config,
};

fn secret_forms() -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64
        .decode(ELEVATION_SECRET.trim_start_matches("whsec_"))
        .unwrap();
    vec![
        WEBHOOK_SECRET.to_owned(),
        API_TOKEN.to_owned(),
        ELEVATION_SECRET.to_owned(),
        ELEVATION_SECRET.trim_start_matches("whsec_").to_owned(),
        String::from_utf8_lossy(&key).into_owned(),
        ADMIN_TOKEN.to_owned(),
        b64.encode(format!("{API_EMAIL}:{API_TOKEN}")),
    ]
}

fn with_secrets(c: &mut Command) -> &mut Command {
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "debug")
        .env("JIRA_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("JIRA_API_TOKEN", API_TOKEN)
        .env("ELEVATION_WEBHOOK_SECRET", ELEVATION_SECRET)
        .env("TEST_ADMIN_TOKEN", ADMIN_TOKEN)
}

#[tokio::test]
async fn no_configured_secret_appears_in_logs_errors_metrics_explain_or_check() {
    let dir = tempfile::tempdir().unwrap();
    let jira = JiraSim::start(JiraSimConfig::default()).await.unwrap();
    let receiver = ElevationReceiver::start(ELEVATION_SECRET).await.unwrap();
    let config = write_config(dir.path(), &jira, &receiver, &Options::default());
    let mut seen = String::new();

    let mut child = with_secrets(&mut Command::new(env!("CARGO_BIN_EXE_jitbridge")))
        .args([
            "--log-format",
            "json",
            "serve",
            "--config",
            config.to_str().unwrap(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(String::new()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let reader = {
        let logs = logs.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("jitbridge is running")
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                {
                    let _ = addr_tx.send(
                        v["fields"]["webhook_addr"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
                logs.lock().unwrap().push_str(&line);
                logs.lock().unwrap().push('\n');
            }
        })
    };
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("daemon started");
    jira.add_webhook(
        &format!("http://{addr}/webhooks/jira"),
        Some(WEBHOOK_SECRET),
    )
    .await;
    let http = reqwest::Client::new();

    // A whole ticket: request, approval (confirmed through the API with Basic auth), grant
    // (signed provider call), writebacks, deadline revoke.
    let key = jira
        .create_issue(
            NewIssue::new(ALICE, "driver")
                .field(
                    "customfield_10050",
                    serde_json::json!({"value": "Local admin"}),
                )
                .field("customfield_10060", serde_json::json!("WS-0070"))
                .field("customfield_10070", serde_json::json!("1s"))
                .approval(jitbridge_sim::jira::model::ApprovalSpec::any_of(&[BOB])),
        )
        .await
        .unwrap()
        .key;
    jira.approve(&key, BOB).await.unwrap();
    let done = eventually(Duration::from_secs(20), || async {
        let c = jira.comments(&key).await.ok()?;
        c.iter()
            .any(|c| c.text.contains("expired and was revoked"))
            .then_some(())
    })
    .await;
    assert!(done.is_some(), "the ticket went through its whole life");

    // Error bodies: forged delivery, wrong admin token, bad request.
    for r in [
        http.post(format!("http://{addr}/webhooks/jira"))
            .header("X-Hub-Signature", "sha256=00")
            .body("{}")
            .send()
            .await
            .unwrap(),
        http.get(format!("http://{addr}/api/v1/grants"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap(),
        http.post(format!("http://{addr}/api/v1/grants/not-a-uuid/revoke"))
            .bearer_auth(ADMIN_TOKEN)
            .body("{}")
            .send()
            .await
            .unwrap(),
    ] {
        seen.push_str(&r.text().await.unwrap());
    }
    seen.push_str(
        &http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    seen.push_str(
        &http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );

    // explain and check, with secrets set and with one broken.
    let payload = dir.path().join("p.json");
    std::fs::write(
        &payload,
        jira.deliveries().await.last().unwrap().body.clone(),
    )
    .unwrap();
    for args in [
        vec![
            "explain",
            "--config",
            config.to_str().unwrap(),
            "--connector",
            "jira",
            "--payload",
            payload.to_str().unwrap(),
        ],
        vec![
            "explain",
            "--json",
            "--config",
            config.to_str().unwrap(),
            "--connector",
            "jira",
            "--payload",
            payload.to_str().unwrap(),
        ],
    ] {
        let out = with_secrets(&mut Command::new(env!("CARGO_BIN_EXE_jitbridge")))
            .args(&args)
            .output()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&out.stdout));
        seen.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let out = with_secrets(&mut Command::new(env!("CARGO_BIN_EXE_jitbridge")))
        .env(
            "ELEVATION_WEBHOOK_SECRET",
            format!("{ELEVATION_SECRET}!broken"),
        )
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a broken secret fails the check"
    );
    seen.push_str(&String::from_utf8_lossy(&out.stderr));

    // Stop, then search everything.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    reader.join().unwrap();
    seen.push_str(&logs.lock().unwrap());
    assert!(
        seen.contains("grant transition"),
        "debug logs were captured"
    );
    for secret in secret_forms() {
        assert!(
            !seen.contains(&secret),
            "a secret leaked: {}…",
            &secret[..4]
        );
    }
}
