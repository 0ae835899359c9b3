//! The child side of [`crate::targets`]: runs one server until stdin closes. Also writes the
//! configuration directory a jitbridge child reads, so the daemon under test is configured
//! exactly as a user would configure it (files + secrets).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use jiff::{SignedDuration, Timestamp};
use jitbridge::clock::{Clock, SharedClock, SystemClock};
use jitbridge::config::{MapSecrets, StoreLocation};
use jitbridge::store::sqlite::{GroupCommit, SqliteStore, SqliteTuning};
use jitbridge::store::{InsertOutcome, NewDelivery, Store};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::targets::{JitbridgeArgs, ServeKind};

/// The Jira webhook secret every target verifies with (a bench constant, not a real secret).
pub const WEBHOOK_SECRET: &str = "bench-jira-webhook-secret";
/// The Standard Webhooks key jitbridge signs provider calls with.
pub const PROVIDER_SECRET: &str = "whsec_YmVuY2gtZWxldmF0aW9uLXNlY3JldC1rZXk=";
/// The admin API token of the bench daemon.
pub const ADMIN_TOKEN: &str = "bench-admin-token";

/// A mapping that grants local admin on Jira "Elevation Request" tickets (P2's approvals), and
/// whose grants P4/P5 seed directly. No writebacks, so expiry measures revocation alone.
pub const MAPPING: &str = r#"
[[mapping]]
name = "bench-local-admin"
connector = "jira"
when = 'ticket.type == "Elevation Request" && fields.customfield_10050.value == "Local admin"'

[mapping.grant]
subject  = "{{ requester.email }}"
target   = "{{ fields.customfield_10060 }}"
scope    = "local-admin"
duration = "{{ fields.customfield_10070 | default('60m') }}"
max_duration = "4h"
provider = "endpoint-agent"

[mapping.on]
approve = { status = ["Approved"] }
deny    = { status = ["Declined"] }
revoke  = { status = ["Done", "Cancelled"] }

[mapping.policy]
distinct_approver = true
requesters = ["*@example.com"]
targets = ["WS-*", "LT-*"]
"#;

/// Writes `jitbridge.toml`, `connectors/jira.toml` and `mappings/` into `dir`.
pub fn write_jitbridge_dir(dir: &Path, jira_url: &str, provider_url: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("connectors"))?;
    std::fs::create_dir_all(dir.join("mappings"))?;
    std::fs::write(
        dir.join("jitbridge.toml"),
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 65536

[store]
url = "sqlite://data/jitbridge.db"

[admin]
token_env = "BENCH_ADMIN_TOKEN"

[providers.endpoint-agent]
kind = "webhook"
url = "{provider_url}"
secret_env = "BENCH_PROVIDER_SECRET"
timeout = "5s"
"#
        ),
    )?;
    std::fs::write(
        dir.join("connectors/jira.toml"),
        format!(
            r#"
id = "jira"
kind = "jira"
base_url = "{jira_url}"
timeout = "5s"

[inbound]
auth = "hmac-sha256"
secret_env = "BENCH_JIRA_WEBHOOK_SECRET"

[outbound]
auth = "basic"
username = "{user}"
token_env = "BENCH_JIRA_API_TOKEN"
"#,
            user = jitbridge_sim::jira::users::API_EMAIL
        ),
    )?;
    std::fs::write(dir.join("mappings/bench.toml"), MAPPING)?;
    Ok(())
}

/// The secrets the bench daemon resolves (no process environment is read).
fn secrets() -> MapSecrets {
    MapSecrets::from_pairs([
        ("BENCH_JIRA_WEBHOOK_SECRET", WEBHOOK_SECRET),
        (
            "BENCH_JIRA_API_TOKEN",
            jitbridge_sim::jira::users::API_TOKEN,
        ),
        ("BENCH_PROVIDER_SECRET", PROVIDER_SECRET),
        ("BENCH_ADMIN_TOKEN", ADMIN_TOKEN),
    ])
}

/// Real time shifted by a fixed amount, so deadlines seeded before the daemon started fall
/// where the scenario wants them relative to the daemon's start.
#[derive(Debug)]
struct ShiftedClock {
    shift: SignedDuration,
}

impl Clock for ShiftedClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
            .checked_add(self.shift)
            .unwrap_or_else(|_| Timestamp::now())
    }
}

/// Runs the server `kind` until stdin closes.
pub async fn serve(kind: ServeKind) -> anyhow::Result<()> {
    match kind {
        ServeKind::Bare => {
            let app = axum::Router::new().fallback(post(|| async { StatusCode::OK }));
            serve_router(app).await
        }
        ServeKind::Hmac { secret } => {
            let app = axum::Router::new().fallback(post(move |headers: HeaderMap, body: Bytes| {
                let secret = secret.clone();
                async move { verify_only(&secret, &headers, &body) }
            }));
            serve_router(app).await
        }
        ServeKind::StoreOnly(args) => serve_store_only(args).await,
        ServeKind::Jitbridge(args) => serve_jitbridge(args).await,
    }
}

/// The durable-store ceiling: the HMAC baseline, then the delivery committed through
/// jitbridge's SQLite inbox writer (group commit, `synchronous=FULL`) before the 202, as the
/// daemon's ingress does, and nothing else: no inbox worker claims, handles or marks it. What
/// the real daemon reaches of this is what its ingress, worker and mappings cost on top of the
/// store; what this reaches of the HMAC baseline is what durability costs on this disk.
async fn serve_store_only(args: JitbridgeArgs) -> anyhow::Result<()> {
    let data = args.dir.join("data");
    std::fs::create_dir_all(&data)?;
    let store = Arc::new(
        SqliteStore::open_with_tuning(
            &data.join("jitbridge.db"),
            Arc::new(SystemClock),
            group_commit(&args),
        )
        .await
        .context("opening the store-only bench store")?,
    );
    let for_requests: Arc<dyn Store> = store.clone();
    let app = axum::Router::new().fallback(post(move |headers: HeaderMap, body: Bytes| {
        let store = for_requests.clone();
        async move { verify_and_store(&store, &headers, body).await }
    }));
    serve_router(app).await?;
    // Every answer went out after its commit; closing checkpoints the WAL and releases the
    // instance lock before the driver counts the rows.
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close().await;
    }
    Ok(())
}

/// [`verify_only`], then the insert: 202 once a new delivery committed, 200 for a repeat of a
/// stored one, 503 when the store failed.
async fn verify_and_store(store: &Arc<dyn Store>, headers: &HeaderMap, body: Bytes) -> StatusCode {
    let verdict = verify_only(WEBHOOK_SECRET, headers, &body);
    if verdict != StatusCode::ACCEPTED {
        return verdict;
    }
    let Some(dedupe_key) = headers
        .get("x-atlassian-webhook-identifier")
        .and_then(|v| v.to_str().ok())
    else {
        return StatusCode::BAD_REQUEST;
    };
    // Stored like the daemon stores them: every header but the credential.
    let stored_headers = headers
        .iter()
        .filter(|(name, _)| name.as_str() != "x-hub-signature")
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let delivery = NewDelivery {
        id: uuid::Uuid::now_v7(),
        connector: "jira".to_owned(),
        dedupe_key: dedupe_key.to_owned(),
        received_at: Timestamp::now(),
        headers: stored_headers,
        body: body.to_vec(),
    };
    match store.insert_delivery(delivery).await {
        Ok(InsertOutcome::Accepted(_)) => StatusCode::ACCEPTED,
        Ok(InsertOutcome::Duplicate(_)) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The HMAC baseline: constant-time check of `X-Hub-Signature`, then 202 without storing.
fn verify_only(secret: &str, headers: &HeaderMap, body: &[u8]) -> StatusCode {
    use hmac::{Hmac, KeyInit, Mac};
    let Some(hex_sig) = headers
        .get("x-hub-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
    else {
        return StatusCode::UNAUTHORIZED;
    };
    let Ok(tag) = hex::decode(hex_sig) else {
        return StatusCode::UNAUTHORIZED;
    };
    let Ok(mut mac) = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) else {
        return StatusCode::INTERNAL_SERVER_ERROR;
    };
    mac.update(body);
    if mac.verify_slice(&tag).is_err() {
        return StatusCode::UNAUTHORIZED;
    }
    // Like any receiver, insist the body is JSON before acknowledging it.
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
        return StatusCode::BAD_REQUEST;
    }
    StatusCode::ACCEPTED
}

async fn serve_router(app: axum::Router) -> anyhow::Result<()> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    println!("READY {} 0", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(stdin_closed())
        .await?;
    Ok(())
}

/// Resolves when the driver closes our stdin (or dies).
async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn serve_jitbridge(args: JitbridgeArgs) -> anyhow::Result<()> {
    let config = jitbridge::config::load(
        &args.dir.join("jitbridge.toml"),
        &HashMap::new(),
        &secrets(),
    )
    .map_err(|p| anyhow::anyhow!("bench config is invalid: {p}"))?;
    let StoreLocation::Sqlite(path) = &config.store else {
        bail!("the bench runs jitbridge on SQLite");
    };
    let shift = match args.epoch_ms {
        Some(ms) => Timestamp::from_millisecond(ms)?.duration_since(Timestamp::now()),
        None => SignedDuration::ZERO,
    };
    let clock: SharedClock = Arc::new(ShiftedClock { shift });
    let store = SqliteStore::open_with_tuning(path, clock.clone(), group_commit(&args))
        .await
        .context("opening the bench store")?;
    let running = jitbridge::app::start_with_store(config, Arc::new(store), clock)
        .await
        .context("starting jitbridge")?;
    println!("READY {} {}", running.webhook_addr, shift.as_millis());
    stdin_closed().await;
    running.stop().await;
    Ok(())
}

/// The store tuning a child runs with: the group commit the driver asked for, defaults
/// otherwise.
fn group_commit(args: &JitbridgeArgs) -> SqliteTuning {
    SqliteTuning {
        group_commit: GroupCommit {
            max_batch: args.max_batch,
            window: Duration::from_micros(args.window_us),
            ..GroupCommit::default()
        },
        ..SqliteTuning::default()
    }
}
