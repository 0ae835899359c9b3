//! Scenarios P1–P5 of issue 5. Each starts its baselines and jitbridge in the same run, drives
//! them with the same load, and returns rows for the results table.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use jiff::{SignedDuration, Timestamp};
use jitbridge::audit::NewAudit;
use jitbridge::clock::SystemClock;
use jitbridge::grants::{Grant, GrantState};
use jitbridge::store::sqlite::SqliteStore;
use jitbridge::store::{Commit, Store};
use jitbridge::ticket::{Person, TicketRef};
use jitbridge_sim::jira::users::{ALICE, BOB};
use jitbridge_sim::jira::{JiraSim, JiraSimConfig, NewIssue};
use serde_json::json;
use uuid::Uuid;

use crate::load::{self, Deliveries, Mix, Outcome, Pace, Run};
use crate::report::{Row, Table};
use crate::serve::{WEBHOOK_SECRET, write_jitbridge_dir};
use crate::sink::Sink;
use crate::targets::{self, JitbridgeArgs, ServeKind, Target};

/// Sizes and durations of a whole run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    /// Connections of the closed-loop runs.
    pub connections: usize,
    /// Length of each load run.
    pub duration: Duration,
    /// Open-loop rate of P2.
    pub rate: u32,
    /// Approvals timed in P2.
    pub approvals: usize,
    /// P4: grants with deadlines spread over `expiry_spread`, then a burst in one second.
    pub expiry_spread_grants: usize,
    pub expiry_spread: Duration,
    pub expiry_burst_grants: usize,
    /// Longest P4 waits for the last revoke after the burst second.
    pub expiry_cap: Duration,
    /// P5: grants in the store at restart.
    pub restart_grants: usize,
    /// Group commit of the jitbridge under test.
    pub max_batch: usize,
    pub window_us: u64,
    /// Where scratch stores live (a directory on the disk being measured).
    pub work: PathBuf,
}

impl Settings {
    /// Defaults: the issue's sizes, or small ones for `--quick`.
    pub fn new(quick: bool, work: PathBuf) -> Self {
        Self {
            quick,
            connections: 32,
            duration: if quick {
                Duration::from_secs(2)
            } else {
                Duration::from_secs(10)
            },
            rate: 500,
            approvals: if quick { 10 } else { 50 },
            expiry_spread_grants: if quick { 1_000 } else { 100_000 },
            expiry_spread: if quick {
                Duration::from_secs(5)
            } else {
                Duration::from_secs(60)
            },
            expiry_burst_grants: if quick { 500 } else { 10_000 },
            expiry_cap: if quick {
                Duration::from_secs(10)
            } else {
                Duration::from_secs(120)
            },
            restart_grants: if quick { 5_000 } else { 100_000 },
            max_batch: 128,
            window_us: 0,
            work,
        }
    }

    fn run(&self, target: &Target, pace: Pace) -> Run {
        Run {
            addr: target.addr,
            connections: self.connections,
            duration: self.duration,
            max_requests: 5_000_000,
            pace,
        }
    }
}

/// The shared fixtures of a run: a Jira simulator (the daemon's ITSM) and a provider sink.
pub struct World {
    pub settings: Settings,
    pub jira: JiraSim,
    pub sink: Sink,
    scratch: tempfile::TempDir,
    next_dir: std::sync::atomic::AtomicU32,
}

impl World {
    pub async fn start(settings: Settings) -> anyhow::Result<World> {
        std::fs::create_dir_all(&settings.work)?;
        let scratch = tempfile::tempdir_in(&settings.work)?;
        Ok(World {
            jira: JiraSim::start(JiraSimConfig::default()).await?,
            sink: Sink::start().await?,
            settings,
            scratch,
            next_dir: Default::default(),
        })
    }

    /// A fresh configuration directory for one jitbridge.
    fn jitbridge_dir(&self) -> anyhow::Result<PathBuf> {
        let n = self
            .next_dir
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.scratch.path().join(format!("jitbridge-{n}"));
        write_jitbridge_dir(&dir, self.jira.base_url(), &self.sink.url())?;
        Ok(dir)
    }

    async fn jitbridge(
        &self,
        name: &str,
        dir: &Path,
        max_batch: usize,
        epoch_ms: Option<i64>,
    ) -> anyhow::Result<Target> {
        targets::spawn_self(
            name,
            &ServeKind::Jitbridge(JitbridgeArgs {
                dir: dir.to_path_buf(),
                max_batch,
                window_us: self.settings.window_us,
                epoch_ms,
            }),
            "/webhooks/jira",
        )
        .await
    }

    /// The HMAC baseline committing each delivery through jitbridge's inbox writer, and nothing
    /// else, on a store in `dir`.
    async fn store_only(&self, dir: &Path) -> anyhow::Result<Target> {
        targets::spawn_self(
            STORE_ONLY,
            &ServeKind::StoreOnly(JitbridgeArgs {
                dir: dir.to_path_buf(),
                max_batch: self.settings.max_batch,
                window_us: self.settings.window_us,
                epoch_ms: None,
            }),
            "/webhooks/jira",
        )
        .await
    }

    async fn bare(&self) -> anyhow::Result<Target> {
        targets::spawn_self("bare axum 200", &ServeKind::Bare, "/webhooks/jira").await
    }

    async fn hmac(&self) -> anyhow::Result<Target> {
        targets::spawn_self(
            "axum HMAC 202",
            &ServeKind::Hmac {
                secret: WEBHOOK_SECRET.into(),
            },
            "/webhooks/jira",
        )
        .await
    }

    async fn webhook(&self) -> anyhow::Result<Option<Target>> {
        targets::spawn_webhook(self.scratch.path(), WEBHOOK_SECRET).await
    }
}

/// P1's name for the store-only target (see [`crate::targets`]).
const STORE_ONLY: &str = "HMAC + jitbridge inbox (store only)";

fn deliveries(target: &Target, run: &str, mix: Mix) -> Deliveries {
    Deliveries {
        path: target.path.clone(),
        secret: WEBHOOK_SECRET.into(),
        run: run.into(),
        mix,
    }
}

/// P1's closed-loop run of a target that stores its deliveries in `dir`, stopped afterwards.
/// The row is named with the rows committed, and any difference between those rows and the 2xx
/// answers counts as unexpected (every 2xx was sent after its commit, so the two must match).
async fn drive_and_count(
    s: &Settings,
    target: Target,
    dir: &Path,
) -> anyhow::Result<(String, Outcome)> {
    let mut o = load::drive(
        &s.run(&target, Pace::Closed),
        &deliveries(&target, "p1", Mix::default()),
    )
    .await?;
    let name = target.name.clone();
    target.stop().await;
    let rows = inbox_rows(dir).await?;
    o.unexpected += u64::try_from((rows - o.ok_2xx as i64).abs()).unwrap_or(0);
    Ok((format!("{name} [{rows} rows]"), o))
}

/// Rows in the inbox of a stopped jitbridge (read after the daemon released the file).
async fn inbox_rows(dir: &Path) -> anyhow::Result<i64> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("data/jitbridge.db"))
        .read_only(true);
    let pool = sqlx::SqlitePool::connect_with(options).await?;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(n)
}

fn load_row(scenario: &str, target: &str, o: &Outcome) -> Row {
    Row::new(scenario, target)
        .metric("req/s", o.throughput())
        .metric("p50 ms", o.ms_at(0.50))
        .metric("p99 ms", o.ms_at(0.99))
        .metric("max ms", o.max_ms())
        .note(format!(
            "2xx {} 401 {} 5xx {} err {} unexpected {}",
            o.ok_2xx, o.status_401, o.status_5xx, o.errors, o.unexpected
        ))
}

/// P1: maximum rate of verified, deduplicated, committed deliveries, against the baselines.
pub async fn p1(world: &World, table: &mut Table) -> anyhow::Result<()> {
    let s = &world.settings;
    let mut results: Vec<(String, Outcome)> = Vec::new();
    for target in [world.bare().await?, world.hmac().await?] {
        let o = load::drive(
            &s.run(&target, Pace::Closed),
            &deliveries(&target, "p1", Mix::default()),
        )
        .await?;
        results.push((target.name.clone(), o));
        target.stop().await;
    }
    if let Some(target) = world.webhook().await? {
        // adnanh/webhook forks /bin/true per request: fewer connections keep it from timing out.
        let o = load::drive(
            &s.run(&target, Pace::Closed),
            &deliveries(&target, "p1", Mix::default()),
        )
        .await?;
        results.push((target.name.clone(), o));
        target.stop().await;
    }
    for (name, batch) in [
        ("jitbridge (group commit)", s.max_batch),
        ("jitbridge (1 row/commit)", 1),
    ] {
        let dir = world.jitbridge_dir()?;
        let target = world.jitbridge(name, &dir, batch, None).await?;
        results.push(drive_and_count(s, target, &dir).await?);
    }
    // Last, so the daemon runs under the same conditions as before this target existed.
    let dir = world.jitbridge_dir()?;
    let target = world.store_only(&dir).await?;
    results.push(drive_and_count(s, target, &dir).await?);
    let find = |prefix: &str| {
        results
            .iter()
            .find(|(n, _)| n.starts_with(prefix))
            .map(|(_, o)| o.throughput())
    };
    let hmac = find("axum HMAC");
    let webhook = find("adnanh");
    let store_only = find(STORE_ONLY);
    for (name, o) in &results {
        let mut row = load_row("P1 durable accept", name, o);
        if (name.starts_with("jitbridge") || name.starts_with(STORE_ONLY))
            && let Some(h) = hmac
        {
            row = row.ratio("vs HMAC", o.throughput() / h);
        }
        if name.starts_with("jitbridge") {
            if let Some(w) = webhook {
                row = row.ratio("vs webhook", o.throughput() / w);
            }
            if let Some(st) = store_only {
                row = row.ratio("vs store only", o.throughput() / st);
            }
        }
        table.push(row);
    }
    if webhook.is_none() {
        table.push(
            Row::new("P1 durable accept", "adnanh/webhook")
                .note("not installed (/usr/bin/webhook): not measured".to_owned()),
        );
    }
    Ok(())
}

/// P3: rejection throughput of forged signatures; jitbridge must store nothing.
pub async fn p3(world: &World, table: &mut Table) -> anyhow::Result<()> {
    let s = &world.settings;
    let forged = Mix {
        forged_pct: 100,
        duplicate_pct: 0,
    };
    let bare = world.bare().await?;
    let bare_o = load::drive(
        &s.run(&bare, Pace::Closed),
        &deliveries(&bare, "p3", forged),
    )
    .await?;
    bare.stop().await;
    let hmac = world.hmac().await?;
    let hmac_o = load::drive(
        &s.run(&hmac, Pace::Closed),
        &deliveries(&hmac, "p3", forged),
    )
    .await?;
    hmac.stop().await;
    let dir = world.jitbridge_dir()?;
    let jb = world
        .jitbridge("jitbridge", &dir, s.max_batch, None)
        .await?;
    let jb_o = load::drive(&s.run(&jb, Pace::Closed), &deliveries(&jb, "p3", forged)).await?;
    jb.stop().await;
    let rows = inbox_rows(&dir).await?;
    table.push(load_row(
        "P3 forged rejection",
        "bare axum 200 (answers 200)",
        &bare_o,
    ));
    table.push(load_row("P3 forged rejection", "axum HMAC 202", &hmac_o));
    table.push(
        load_row(
            "P3 forged rejection",
            &format!("jitbridge [{rows} rows written]"),
            &jb_o,
        )
        .ratio(
            "vs bare",
            jb_o.throughput() / bare_o.throughput().max(f64::MIN_POSITIVE),
        ),
    );
    Ok(())
}

/// P2: ack latency at a fixed rate, and approval → provider apply latency, under that load.
pub async fn p2(world: &World, table: &mut Table) -> anyhow::Result<()> {
    let s = &world.settings;
    let pace = Pace::Open { rate: s.rate };
    let hmac = world.hmac().await?;
    let hmac_o = load::drive(
        &s.run(&hmac, pace),
        &deliveries(&hmac, "p2", Mix::default()),
    )
    .await?;
    hmac.stop().await;

    let dir = world.jitbridge_dir()?;
    let jb = world
        .jitbridge("jitbridge", &dir, s.max_batch, None)
        .await?;
    world.jira.clear_webhooks().await;
    world
        .jira
        .add_webhook(
            &format!("http://{}/webhooks/jira", jb.addr),
            Some(WEBHOOK_SECRET),
        )
        .await;
    let mut keys = Vec::new();
    for i in 0..s.approvals {
        let issue = NewIssue::new(ALICE, "Need local admin to install a driver")
            .field(
                "customfield_10050",
                json!({"value": "Local admin", "id": "10100"}),
            )
            .field("customfield_10060", json!(format!("WS-{i:04}")))
            .field("customfield_10070", json!("60m"))
            .approval(jitbridge_sim::jira::model::ApprovalSpec::any_of(&[BOB]));
        keys.push(world.jira.create_issue(issue).await?.key);
    }
    // Let the daemon record the requests before approvals start.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let run = s.run(&jb, pace);
    let d = deliveries(&jb, "p2", Mix::default());
    let load = tokio::spawn(async move { load::drive(&run, &d).await });
    let gap = s.duration / u32::try_from(s.approvals.max(1)).unwrap_or(1);
    let mut approved_at = Vec::new();
    for key in &keys {
        tokio::time::sleep(gap).await;
        approved_at.push((key.clone(), Timestamp::now()));
        world.jira.approve(key, BOB).await?;
    }
    let jb_o = load.await.context("load task")??;
    // Bounded wait for the last applies.
    let deadline = Instant::now() + Duration::from_secs(30);
    while world.sink.calls("grant.apply").len() < keys.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let applies = world.sink.calls("grant.apply");
    let mut lat = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for (key, at) in &approved_at {
        if let Some(c) = applies.iter().find(|c| &c.ticket_key == key) {
            let us = c.received_at.duration_since(*at).as_micros().max(1);
            lat.saturating_record(u64::try_from(us).unwrap_or(u64::MAX));
        }
    }
    jb.stop().await;

    table.push(load_row(
        "P2 ack @ rate",
        &format!("axum HMAC 202 @{}/s", s.rate),
        &hmac_o,
    ));
    table.push(
        load_row("P2 ack @ rate", &format!("jitbridge @{}/s", s.rate), &jb_o).ratio(
            "p99 vs HMAC",
            jb_o.ms_at(0.99) / hmac_o.ms_at(0.99).max(0.001),
        ),
    );
    table.push(
        Row::new("P2 approval→provider", "jitbridge (Jira sim → sink)")
            .metric("p50 ms", lat.value_at_quantile(0.5) as f64 / 1000.0)
            .metric("p99 ms", lat.value_at_quantile(0.99) as f64 / 1000.0)
            .metric("max ms", lat.max() as f64 / 1000.0)
            .note(format!("{} of {} approvals applied", lat.len(), keys.len())),
    );
    Ok(())
}

/// A seeded active grant for ticket `key`, expiring at `expires_at`.
fn active_grant(key: &str, n: usize, expires_at: Timestamp, now: Timestamp) -> Grant {
    Grant {
        id: Uuid::now_v7(),
        ticket: TicketRef {
            connector: "jira".into(),
            id: format!("{}", 500_000 + n),
            key: key.into(),
            url: None,
        },
        mapping: "bench-local-admin".into(),
        state: GrantState::Active,
        subject: "alice@example.com".into(),
        target: format!("WS-{n}"),
        scope: "local-admin".into(),
        provider: "endpoint-agent".into(),
        duration: SignedDuration::from_hours(1),
        requester: Some(Person {
            id: Some(ALICE.into()),
            email: Some("alice@example.com".into()),
            name: Some("Alice".into()),
        }),
        approvers: vec![Person {
            id: Some(BOB.into()),
            email: Some("bob@example.com".into()),
            name: Some("Bob".into()),
        }],
        requested_at: now,
        approved_at: Some(now),
        starts_at: Some(now),
        expires_at: Some(expires_at),
        ended_at: None,
        revoke_cause: None,
        reason: None,
        last_event_at: now,
        context: json!({"ticket": {"key": key}}),
        version: 1,
    }
}

/// Seeds active grants through the `Store` trait into `dir/data/jitbridge.db`. Seeding runs on
/// a RAM-backed copy when `/dev/shm` exists (100,000 single commits at ~6 ms fsync each would
/// take ten minutes on this disk) and the finished file is copied onto the measured disk.
async fn seed(dir: &Path, grants: Vec<Grant>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let shm = Path::new("/dev/shm");
    let seed_dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)?
    } else {
        tempfile::tempdir_in(dir)?
    };
    let seed_db = seed_dir.path().join("seed.db");
    let store = SqliteStore::open_with_clock(&seed_db, Arc::new(SystemClock)).await?;
    for g in grants {
        let audit = NewAudit {
            at: g.requested_at,
            kind: "grant.active".into(),
            grant_id: Some(g.id),
            connector: Some("jira".into()),
            ticket_key: Some(g.ticket.key.clone()),
            actor: Some("system".into()),
            detail: json!({"seeded": true}),
        };
        store
            .commit(Commit {
                grant: g,
                expected_version: None,
                audit: vec![audit],
                jobs: vec![],
                complete_job: None,
            })
            .await?;
    }
    store.close().await;
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    std::fs::copy(&seed_db, data.join("jitbridge.db"))?;
    let wal = seed_dir.path().join("seed.db-wal");
    if wal.is_file() {
        std::fs::copy(&wal, data.join("jitbridge.db-wal"))?;
    }
    Ok(started.elapsed())
}

/// P4: deadlines spread over the run (lateness), then a burst expiring in one second.
pub async fn p4(world: &World, table: &mut Table) -> anyhow::Result<()> {
    let s = &world.settings;
    let epoch = Timestamp::now();
    let lead = SignedDuration::from_secs(2);
    let spread_ms = i64::try_from(s.expiry_spread.as_millis()).unwrap_or(i64::MAX);
    let n_spread = s.expiry_spread_grants;
    let burst_at =
        epoch + lead + SignedDuration::from_millis(spread_ms) + SignedDuration::from_secs(1);
    let mut grants = Vec::with_capacity(n_spread + s.expiry_burst_grants);
    for n in 0..n_spread {
        let offset =
            spread_ms * i64::try_from(n).unwrap_or(0) / i64::try_from(n_spread.max(1)).unwrap_or(1);
        let at = epoch + lead + SignedDuration::from_millis(offset);
        grants.push(active_grant(&format!("SPREAD-{n}"), n, at, epoch));
    }
    for n in 0..s.expiry_burst_grants {
        // Every one of them inside the same second.
        let offset = 999 * i64::try_from(n).unwrap_or(0)
            / i64::try_from(s.expiry_burst_grants.max(1)).unwrap_or(1);
        let at = burst_at + SignedDuration::from_millis(offset);
        grants.push(active_grant(&format!("BURST-{n}"), n_spread + n, at, epoch));
    }
    let dir = world.jitbridge_dir()?;
    let seeded_in = seed(&dir, grants).await?;
    // The daemon's clock starts at `epoch`, however long seeding took.
    let jb = world
        .jitbridge("jitbridge", &dir, s.max_batch, Some(epoch.as_millisecond()))
        .await?;
    let shift = SignedDuration::from_millis(jb.clock_offset_ms);
    let total = n_spread + s.expiry_burst_grants;
    let cap = Instant::now()
        + Duration::from_millis(u64::try_from(spread_ms).unwrap_or(0))
        + Duration::from_secs(4)
        + s.expiry_cap;
    while world.sink.calls("grant.revoke").len() < total && Instant::now() < cap {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let revokes = world.sink.calls("grant.revoke");
    jb.stop().await;

    let mut spread = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut burst_last: Option<Timestamp> = None;
    let mut burst_done = 0usize;
    // A retried call (e.g. after a timeout) counts once, at its first arrival.
    let mut seen = std::collections::HashSet::new();
    for c in &revokes {
        if !seen.insert(c.grant_id.as_str()) {
            continue;
        }
        let Some(deadline) = c.expires_at else {
            continue;
        };
        let virtual_at = c.received_at + shift;
        if c.ticket_key.starts_with("SPREAD-") {
            let late = virtual_at.duration_since(deadline).as_micros().max(1);
            spread.saturating_record(u64::try_from(late).unwrap_or(u64::MAX));
        } else if c.ticket_key.starts_with("BURST-") {
            burst_done += 1;
            burst_last = Some(burst_last.map_or(virtual_at, |b: Timestamp| b.max(virtual_at)));
        }
    }
    table.push(
        Row::new(
            "P4 expiry lateness",
            &format!("{n_spread} over {:?}", s.expiry_spread),
        )
        .metric("p50 ms", spread.value_at_quantile(0.5) as f64 / 1000.0)
        .metric("p99 ms", spread.value_at_quantile(0.99) as f64 / 1000.0)
        .metric("max ms", spread.max() as f64 / 1000.0)
        .note(format!(
            "{} of {n_spread} revoked in time cap; seeded in {:.1}s",
            spread.len(),
            seeded_in.as_secs_f64()
        )),
    );
    let burst_s = burst_last.map(|l| l.duration_since(burst_at).as_secs_f64());
    let mut row = Row::new(
        "P4 same-second burst",
        &format!("{} in 1 s", s.expiry_burst_grants),
    )
    .note(format!(
        "{burst_done} of {} revoked within the cap",
        s.expiry_burst_grants
    ));
    if let Some(b) = burst_s {
        row = row.metric("all revoked s", b);
    }
    if burst_done > 0 {
        row = row.metric(
            "revokes/s",
            burst_done as f64 / burst_s.unwrap_or(1.0).max(0.001),
        );
    }
    table.push(row);
    Ok(())
}

/// P5: time to ready and memory, empty and with many active grants.
pub async fn p5(world: &World, table: &mut Table) -> anyhow::Result<()> {
    let s = &world.settings;
    let settle = Duration::from_secs(2);

    let empty_dir = world.jitbridge_dir()?;
    let empty = world
        .jitbridge("jitbridge", &empty_dir, s.max_batch, None)
        .await?;
    let empty_ready = empty.ready_after;
    tokio::time::sleep(settle).await;
    let idle_rss = empty.rss_bytes();
    empty.stop().await;

    let now = Timestamp::now();
    let far = now + SignedDuration::from_hours(24);
    let grants = (0..s.restart_grants)
        .map(|n| {
            active_grant(
                &format!("HELD-{n}"),
                n,
                far + SignedDuration::from_secs(i64::try_from(n).unwrap_or(0)),
                now,
            )
        })
        .collect();
    let dir = world.jitbridge_dir()?;
    let seeded_in = seed(&dir, grants).await?;
    let loaded = world
        .jitbridge("jitbridge", &dir, s.max_batch, None)
        .await?;
    let loaded_ready = loaded.ready_after;
    tokio::time::sleep(settle).await;
    let loaded_rss = loaded.rss_bytes();
    loaded.stop().await;

    let mib = |b: Option<u64>| b.map_or(f64::NAN, |b| b as f64 / (1024.0 * 1024.0));
    table.push(
        Row::new("P5 restart", "jitbridge, empty store")
            .metric("ready ms", empty_ready.as_secs_f64() * 1000.0)
            .metric("RSS MiB", mib(idle_rss)),
    );
    table.push(
        Row::new(
            "P5 restart",
            &format!("jitbridge, {} active grants", s.restart_grants),
        )
        .metric("ready ms", loaded_ready.as_secs_f64() * 1000.0)
        .metric("RSS MiB", mib(loaded_rss))
        .note(format!(
            "seeded in {:.1}s; ready = spawn → listening",
            seeded_in.as_secs_f64()
        )),
    );
    Ok(())
}
