//! Reloading a running daemon (what SIGHUP does; the signal wiring itself is proven through the
//! binary in `cli.rs`): a new mapping takes effect for new tickets, an invalid or unsafe new
//! configuration is refused with the old one still granting, and live grants keep their stored
//! deadline and provider.

use std::collections::HashMap;
use std::sync::Arc;

use jitbridge::grants::GrantState;
use jitbridge::reload::{ReloadError, ReloadReport};
use jitbridge_sim::jira::users::{ALICE, BOB, CAROL};

use crate::harness::{ADMIN_TOKEN, Harness, MAPPING};

/// The mapping file the harness writes.
fn mapping_file(h: &Harness) -> std::path::PathBuf {
    h.dir.path().join("mappings/local-admin.toml")
}

/// Points the daemon's reloader at the test secrets (instead of the process environment).
fn read_with_test_secrets(h: &Harness) {
    let path = h.config_path.clone();
    h.daemon().reloader().set_source(Arc::new(move || {
        jitbridge::config::load(&path, &HashMap::new(), &Harness::secrets())
    }));
}

/// Reads the files as they are now into the running daemon: what SIGHUP does.
async fn reload(h: &Harness) -> Result<ReloadReport, ReloadError> {
    read_with_test_secrets(h);
    h.daemon().reloader().reload().await
}

async fn raise_and_approve(h: &Harness, target: &str, duration: &str) -> String {
    let key = h.raise(ALICE, target, duration, &[BOB]).await;
    h.wait_state(&key, GrantState::Requested).await;
    h.jira.approve(&key, BOB).await.expect("approve");
    key
}

#[tokio::test]
async fn a_reloaded_mapping_governs_new_tickets_while_a_live_grant_keeps_its_deadline() {
    let h = Harness::start().await;
    let first = raise_and_approve(&h, "WS-0101", "2h").await;
    let before = h.wait_state(&first, GrantState::Active).await;

    // Under the running mapping a server target is refused.
    let refused = raise_and_approve(&h, "SRV-0001", "30m").await;
    h.wait_state(&refused, GrantState::Denied).await;

    // The new mapping allows servers, caps at 1h and names the grant differently in comments.
    let new_mapping = MAPPING
        .replace(
            r#"targets = ["WS-*", "LT-*"]"#,
            r#"targets = ["WS-*", "LT-*", "SRV-*"]"#,
        )
        .replace(r#"max_duration = "4h""#, r#"max_duration = "1h""#)
        .replace("Local admin granted to", "Reloaded: local admin granted to");
    std::fs::write(mapping_file(&h), new_mapping).unwrap();
    let report = reload(&h).await.expect("the new configuration is valid");
    assert_eq!(report.mappings, 1);

    let second = raise_and_approve(&h, "SRV-0002", "2h").await;
    let granted = h.wait_state(&second, GrantState::Active).await;
    assert_eq!(
        granted.duration,
        jiff::SignedDuration::from_hours(1),
        "the new max_duration caps new grants"
    );
    h.wait_comment(
        &second,
        "Reloaded: local admin granted to alice@example.com on SRV-0002",
    )
    .await;

    // The grant made under the old mapping is untouched: same deadline, provider and duration.
    let after = h
        .store()
        .get_grant(before.id)
        .await
        .unwrap()
        .expect("grant");
    assert_eq!(after.state, GrantState::Active);
    assert_eq!(after.expires_at, before.expires_at);
    assert_eq!(after.duration, jiff::SignedDuration::from_hours(2));
    assert_eq!(after.provider, before.provider);
}

#[tokio::test]
async fn an_invalid_mapping_is_refused_with_its_file_and_line_and_the_old_mapping_still_grants() {
    let h = Harness::start().await;
    let broken = MAPPING.replace(
        r#"when = 'ticket.type == "Elevation Request" && fields.customfield_10050.value == "Local admin"'"#,
        r#"when = 'ticket.type == "Elevation Request" &&'"#,
    );
    std::fs::write(mapping_file(&h), broken).unwrap();
    let err = reload(&h).await.expect_err("a CEL syntax error is refused");
    let text = err.to_string();
    assert!(matches!(err, ReloadError::Invalid(_)), "{text}");
    assert!(
        text.contains("local-admin.toml:5") && text.contains("mapping[0].when"),
        "{text}"
    );

    let key = raise_and_approve(&h, "WS-0102", "30m").await;
    let active = h.wait_state(&key, GrantState::Active).await;
    assert_eq!(active.target, "WS-0102");
    let metrics = h
        .http
        .get(h.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"jitbridge_config_reload_total{result="invalid"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn removing_the_provider_of_an_active_grant_is_refused_naming_the_grant_and_its_revoke_still_runs()
 {
    let h = Harness::start().await;
    let key = raise_and_approve(&h, "WS-0103", "2h").await;
    let active = h.wait_state(&key, GrantState::Active).await;

    // Rename the provider (and point the mapping at the new name): the active grant's revoke
    // would have no provider left.
    let main = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        main.replace(
            "[providers.endpoint-agent]",
            "[providers.endpoint-agent-v2]",
        ),
    )
    .unwrap();
    std::fs::write(
        mapping_file(&h),
        MAPPING.replace(
            r#"provider = "endpoint-agent""#,
            r#"provider = "endpoint-agent-v2""#,
        ),
    )
    .unwrap();
    let err = reload(&h).await.expect_err("refused");
    let text = err.to_string();
    assert!(matches!(err, ReloadError::InUse(_)), "{text}");
    assert!(
        text.contains(r#"provider "endpoint-agent""#) && text.contains(&active.id.to_string()),
        "{text}"
    );

    // Jira offers "Done" only from "In Progress", which the `active` writeback sets.
    h.wait_status(&key, "In Progress").await;
    // The old configuration is still in force: ending the ticket revokes through the old provider.
    h.jira
        .transition_to(&key, "Done", CAROL)
        .await
        .expect("done");
    h.wait_state(&key, GrantState::Revoked).await;
    assert!(
        !h.receiver
            .holds("alice@example.com", "WS-0103", "local-admin")
            .await
    );
}

#[tokio::test]
async fn a_changed_listener_address_is_not_reloaded_and_says_a_restart_is_needed() {
    let h = Harness::start().await;
    let main = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        main.replace(r#"listen = "127.0.0.1:0""#, r#"listen = "127.0.0.1:1""#),
    )
    .unwrap();
    let err = reload(&h).await.expect_err("refused");
    assert!(
        matches!(&err, ReloadError::RestartNeeded(keys) if keys == &vec!["server.listen"]),
        "{err}"
    );
    assert!(err.to_string().contains("restart needed"), "{err}");
}

#[tokio::test]
async fn the_reload_endpoint_needs_the_admin_token_and_answers_with_the_outcome() {
    let h = Harness::start().await;
    read_with_test_secrets(&h);
    let url = h.admin_url("/api/v1/config/reload");
    let anonymous = h.http.post(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    let ok = h
        .http
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let body: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(body["status"], "reloaded");
    assert_eq!(body["mappings"], 1);
    assert_eq!(body["connectors"], 1);

    std::fs::write(
        mapping_file(&h),
        MAPPING.replace("requester.email", "requester.mail"),
    )
    .unwrap();
    let refused = h
        .http
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "config_invalid");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("local-admin.toml:8") && detail.contains("`requester` has no `mail`"),
        "{detail}"
    );
}
