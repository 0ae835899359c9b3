//! Crash during ingest: signed Jira approval deliveries are sent by a sender that retries every
//! non-2xx answer, timeout and connection error with the same delivery id, while the real daemon
//! process is killed with `SIGKILL` at random moments and restarted. Each delivery approves a
//! distinct simulator issue, so each must end in exactly one grant, applied once at the provider
//! and announced once in the ticket.
//!
//! "Duplicated provider apply": one approval's privilege applied under two *different*
//! `webhook-id`s: the provider holds its target (each approval has its own) for two grants, or
//! one grant was applied under two ids (the daemon sent the apply twice as separate calls). A
//! retry with the same `webhook-id` is legitimate at-least-once delivery (the receiver dedupes
//! it) and is counted separately.
//!
//! The short run is part of `cargo test`; the full one (README, "Reliability"):
//! `CRASH_DELIVERIES=10000 CRASH_KILLS=50 cargo test --release -p jitbridge --test it crash_ingest_full -- --ignored --nocapture`

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jitbridge_sim::jira::model::ApprovalSpec;
use jitbridge_sim::jira::users::{ALICE, BOB};
use jitbridge_sim::jira::{Delivery, JiraSim, NewIssue};
use jitbridge_sim::receiver::{CallKind, CallOutcome};
use serde_json::json;

use crate::harness::{MAPPING, Options, WEBHOOK_SECRET, write_config};
use crate::process::{DaemonProcess, send_until_acked};

/// Knobs of one run.
struct Run {
    deliveries: usize,
    kills: usize,
    senders: usize,
    /// Pause of each sender between two deliveries, so sending overlaps the kills.
    send_gap: Duration,
    /// Random pause before each kill, in ms: `min..max`.
    kill_gap_ms: (u64, u64),
    seed: u64,
}

/// What a run observed.
#[derive(Debug, Default)]
struct Summary {
    kills: usize,
    deliveries: usize,
    acked: usize,
    send_attempts: u64,
    grants: usize,
    active_grants: usize,
    /// Acknowledged deliveries whose issue has no grant.
    missing: usize,
    /// Issues with more than one grant.
    duplicated_grants: usize,
    grants_applied: usize,
    /// Approvals (targets) applied for more than one grant, plus grants applied under more than
    /// one distinct `webhook-id`.
    duplicated_applies: usize,
    /// Calls the receiver answered as same-id redeliveries.
    same_id_redeliveries: u64,
    /// Tickets whose "granted" comment appears other than exactly once.
    comments_not_once: usize,
    elapsed: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "crash-ingest: kills survived {}, deliveries {}, acked {} ({} POSTs), grants {} ({} active), \
             missing {}, duplicated grants {}, grants applied {}, duplicated applies (different webhook-id) {}, \
             same-id redeliveries {}, tickets without exactly one grant comment {}, took {:.1?}",
            self.kills,
            self.deliveries,
            self.acked,
            self.send_attempts,
            self.grants,
            self.active_grants,
            self.missing,
            self.duplicated_grants,
            self.grants_applied,
            self.duplicated_applies,
            self.same_id_redeliveries,
            self.comments_not_once,
            self.elapsed
        )
    }
}

/// A small deterministic generator for the kill schedule (xorshift64).
struct Rng(u64);

impl Rng {
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo).max(1)
    }
}

/// Answers 200 to anything: where the simulator's own webhooks go while the approvals are
/// prepared (the run re-sends their exact bytes itself).
async fn capture_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(|| async { axum::http::StatusCode::OK });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/capture")
}

/// Raises and approves `n` issues; returns each issue's key and its signed approval delivery.
async fn prepare_approvals(jira: &JiraSim, n: usize) -> Vec<(String, Delivery)> {
    jira.add_webhook(&capture_endpoint().await, Some(WEBHOOK_SECRET))
        .await;
    let prepared: Vec<(String, Delivery)> = futures::stream::iter(0..n)
        .map(|i| async move {
            let issue = NewIssue::new(ALICE, "Need local admin")
                .field(
                    "customfield_10050",
                    json!({"value": "Local admin", "id": "10100"}),
                )
                .field("customfield_10060", json!(format!("WS-{i:05}")))
                .field("customfield_10070", json!("60m"))
                .approval(ApprovalSpec::any_of(&[BOB]));
            let key = jira.create_issue(issue).await.expect("issue").key;
            let approved = jira.approve(&key, BOB).await.expect("approve");
            let delivery = approved
                .deliveries
                .into_iter()
                .find(|d| d.event == "jira:issue_updated")
                .expect("approval delivery");
            (key, delivery)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    jira.clear_webhooks().await;
    prepared
}

/// Number of pending inbox rows plus pending outbox jobs, read beside the running daemon.
async fn outstanding(db: &std::path::Path) -> Option<i64> {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .read_only(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.ok()?;
    let n: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM deliveries WHERE state = 'pending') \
         + (SELECT count(*) FROM jobs WHERE state = 'pending')",
    )
    .fetch_one(&pool)
    .await
    .ok()?;
    pool.close().await;
    Some(n)
}

async fn crash_ingest(run: Run) -> Summary {
    let started = Instant::now();
    let (dir, jira, receiver) = crate::process::simulators().await;
    let prepared = prepare_approvals(&jira, run.deliveries).await;
    let opts = Options {
        workers: "retry_initial = \"100ms\"\nretry_max = \"1s\"\napply_window = \"1h\"\n".into(),
        mapping: MAPPING.into(),
        ..Default::default()
    };
    let config = write_config(dir.path(), &jira, &receiver, &opts);
    let mut daemon = DaemonProcess::new(&config);
    let url = daemon.jira_webhook_url();
    daemon.start("").await;

    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(AtomicU64::new(0));
    let prepared = Arc::new(prepared);
    let http = reqwest::Client::new();
    let senders: Vec<_> = (0..run.senders)
        .map(|_| {
            let gap = run.send_gap;
            let (next, acked, attempts, prepared, http, url) = (
                next.clone(),
                acked.clone(),
                attempts.clone(),
                prepared.clone(),
                http.clone(),
                url.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((_, d)) = prepared.get(i) else {
                        return;
                    };
                    attempts.fetch_add(send_until_acked(&http, &url, d).await, Ordering::Relaxed);
                    acked.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(gap).await;
                }
            })
        })
        .collect();

    let mut rng = Rng(run.seed.max(1));
    let mut kills = 0;
    while kills < run.kills || senders.iter().any(|s| !s.is_finished()) {
        if kills < run.kills {
            let gap = rng.between(run.kill_gap_ms.0, run.kill_gap_ms.1);
            tokio::time::sleep(Duration::from_millis(gap)).await;
            daemon.kill();
            kills += 1;
            daemon.start("").await;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for s in senders {
        s.await.expect("sender");
    }

    let db = dir.path().join("data/jitbridge.db");
    // Generous: the whole backlog (confirmations, applies, writebacks) drains after the last kill.
    let drain = Duration::from_secs(120) + Duration::from_millis(200) * run.deliveries as u32;
    let quiet = crate::harness::eventually(drain, || async {
        (outstanding(&db).await == Some(0)).then_some(())
    })
    .await;
    assert!(quiet.is_some(), "work still outstanding after {drain:?}");
    daemon.kill();

    // The ledger.
    let pool = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&db)
            .read_only(true),
    )
    .await
    .expect("open ledger");
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT id, ticket_key, state FROM grants")
            .fetch_all(&pool)
            .await
            .expect("grants");
    let mut by_issue: HashMap<&str, usize> = HashMap::new();
    for (_, key, _) in &rows {
        *by_issue.entry(key.as_str()).or_default() += 1;
    }
    // The provider's view. Holdings (one per applied grant; nothing is revoked in this run) and
    // the redelivery count cover the receiver's whole life; its call log keeps only the latest
    // calls, so it serves only to look for one grant applied under two webhook-ids.
    let holdings = receiver.holdings().await;
    let mut grants_by_target: HashMap<&str, HashSet<&str>> = HashMap::new();
    for h in &holdings {
        grants_by_target
            .entry(h.target.as_str())
            .or_default()
            .insert(h.grant_id.as_str());
    }
    let mut apply_ids: HashMap<String, HashSet<String>> = HashMap::new();
    for call in receiver.calls().await {
        if call.kind == Some(CallKind::Apply) && call.outcome == CallOutcome::Applied {
            let grant = call
                .grant
                .as_ref()
                .and_then(|g| g["id"].as_str())
                .unwrap_or_default()
                .to_owned();
            apply_ids
                .entry(grant)
                .or_default()
                .insert(call.webhook_id.unwrap_or_default());
        }
    }
    // The tickets.
    let mut comments_not_once = 0;
    for (key, _) in prepared.iter() {
        let granted = jira
            .comments(key)
            .await
            .expect("comments")
            .iter()
            .filter(|c| c.text.contains("Local admin granted"))
            .count();
        if granted != 1 {
            comments_not_once += 1;
        }
    }
    let summary = Summary {
        kills,
        deliveries: run.deliveries,
        acked: acked.load(Ordering::Relaxed),
        send_attempts: attempts.load(Ordering::Relaxed),
        grants: rows.len(),
        active_grants: rows.iter().filter(|(_, _, s)| s == "active").count(),
        missing: prepared
            .iter()
            .filter(|(k, _)| !by_issue.contains_key(k.as_str()))
            .count(),
        duplicated_grants: by_issue.values().filter(|n| **n > 1).count(),
        grants_applied: holdings
            .iter()
            .map(|h| h.grant_id.as_str())
            .collect::<HashSet<_>>()
            .len(),
        duplicated_applies: grants_by_target.values().filter(|g| g.len() > 1).count()
            + apply_ids.values().filter(|ids| ids.len() > 1).count(),
        same_id_redeliveries: receiver.total_redeliveries().await,
        comments_not_once,
        elapsed: started.elapsed(),
    };
    println!("{summary}");
    summary
}

fn assert_nothing_lost_or_duplicated(s: &Summary, run_kills: usize) {
    assert_eq!(s.kills, run_kills, "{s}");
    assert_eq!(s.acked, s.deliveries, "{s}");
    assert_eq!(
        s.missing, 0,
        "every acknowledged approval has its grant: {s}"
    );
    assert_eq!(s.duplicated_grants, 0, "{s}");
    assert_eq!(s.grants, s.deliveries, "{s}");
    assert_eq!(s.active_grants, s.grants, "{s}");
    assert_eq!(s.grants_applied, s.grants, "every grant applied: {s}");
    assert_eq!(s.duplicated_applies, 0, "{s}");
    assert_eq!(s.comments_not_once, 0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_survive_random_sigkills_without_loss_or_duplicates() {
    let run = Run {
        deliveries: 300,
        kills: 5,
        senders: 8,
        send_gap: Duration::from_millis(100),
        kill_gap_ms: (300, 1500),
        seed: 0x5eed,
    };
    let kills = run.kills;
    let s = crash_ingest(run).await;
    assert_nothing_lost_or_duplicated(&s, kills);
}

/// The full run (README, "Reliability"); sized by `CRASH_DELIVERIES`, `CRASH_KILLS`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "long: run on demand (README, Reliability)"]
async fn crash_ingest_full() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let run = Run {
        deliveries: env("CRASH_DELIVERIES", 10_000),
        kills: env("CRASH_KILLS", 50),
        senders: env("CRASH_SENDERS", 32),
        send_gap: Duration::from_millis(300),
        kill_gap_ms: (200, 2500),
        seed: env("CRASH_SEED", 0x5eed) as u64,
    };
    let kills = run.kills;
    let s = crash_ingest(run).await;
    assert_nothing_lost_or_duplicated(&s, kills);
}
