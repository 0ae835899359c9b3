//! Several daemons on one PostgreSQL database: the deployment the PostgreSQL store exists for.
//! Runs when `JITBRIDGE_TEST_POSTGRES_URL` names a database (`scripts/test-postgres.sh` starts
//! one; CI always does); otherwise each test prints a "skipped" line and returns.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use jitbridge::app::Running;
use jitbridge::audit::{GENESIS_HASH, verify_chain};
use jitbridge::clock::{Clock, SystemClock};
use jitbridge::grants::GrantState;
use jitbridge::store::{GrantFilter, Store};
use jitbridge_sim::jira::users::{ALICE, BOB};
use jitbridge_sim::jira::{JiraSim, JiraSimConfig, NewIssue};
use jitbridge_sim::receiver::{CallKind, CallOutcome, ElevationReceiver};
use serde_json::json;
use sqlx::postgres::PgPool;

use crate::harness::{
    ELEVATION_SECRET, Harness, MAPPING, Options, WEBHOOK_SECRET, eventually, jira_connector,
    write_main_config,
};

/// A fresh schema on the test database, or `None` (having said so) when none is configured.
async fn test_database(test: &str) -> Option<(String, PgPool)> {
    let Ok(url) = std::env::var("JITBRIDGE_TEST_POSTGRES_URL") else {
        let _ = writeln!(
            std::io::stderr(),
            "skipped: {test} (JITBRIDGE_TEST_POSTGRES_URL is not set; scripts/test-postgres.sh \
             starts a throwaway server)"
        );
        return None;
    };
    let schema = format!("it_{}", uuid::Uuid::now_v7().simple());
    let admin = PgPool::connect(&url)
        .await
        .expect("test database reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .expect("create schema");
    admin.close().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}options[search_path]={schema}");
    let pool = PgPool::connect(&url).await.expect("connect to schema");
    Some((url, pool))
}

/// What the instances of one test share: the database, the Jira simulator, the receiver.
struct Fleet {
    url: String,
    pool: PgPool,
    jira: JiraSim,
    receiver: ElevationReceiver,
}

impl Fleet {
    /// A fresh database schema and simulators, or `None` when no test database is configured.
    async fn start(test: &str) -> Option<Fleet> {
        let (url, pool) = test_database(test).await?;
        let jira = JiraSim::start(JiraSimConfig::default())
            .await
            .expect("jira sim");
        let receiver = ElevationReceiver::start(ELEVATION_SECRET)
            .await
            .expect("receiver");
        Some(Fleet {
            url,
            pool,
            jira,
            receiver,
        })
    }

    /// Starts one more instance, configured in `dir`.
    async fn instance(&self, dir: &Path, opts: &Options, clock: Arc<dyn Clock>) -> Running {
        start_instance(dir, &self.url, &self.jira, &self.receiver, opts, clock).await
    }
}

/// A clock running `ahead` of the system clock: an instance observing time after a lease lapsed,
/// without the test waiting out the two-minute worker leases.
#[derive(Debug)]
struct AheadClock(SignedDuration);

impl Clock for AheadClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
            .saturating_add(self.0)
            .unwrap_or(Timestamp::MAX)
    }
}

/// Starts one daemon of the fleet: its own config directory and listeners, the shared database,
/// the shared Jira simulator and elevation receiver.
async fn start_instance(
    dir: &Path,
    database_url: &str,
    jira: &JiraSim,
    receiver: &ElevationReceiver,
    opts: &Options,
    clock: Arc<dyn Clock>,
) -> Running {
    let config_path = write_main_config(dir, receiver, opts);
    let text = std::fs::read_to_string(&config_path).expect("read config");
    let text = text.replace(
        "url = \"sqlite://data/jitbridge.db\"",
        &format!("url = {}", toml::Value::String(database_url.to_owned())),
    );
    assert!(text.contains("postgres://"), "the store URL was replaced");
    std::fs::write(&config_path, text).expect("write config");
    std::fs::write(
        dir.join("connectors/jira.toml"),
        jira_connector(jira.base_url()),
    )
    .expect("write connector");
    let config = jitbridge::config::load(&config_path, &HashMap::new(), &Harness::secrets())
        .expect("valid config");
    jitbridge::app::start(config, clock)
        .await
        .expect("instance starts")
}

fn webhook_url(d: &Running) -> String {
    format!("http://{}/webhooks/jira", d.webhook_addr)
}

async fn raise(jira: &JiraSim, target: &str, duration: &str) -> String {
    let issue = NewIssue::new(ALICE, "Need local admin to install a driver")
        .field(
            "customfield_10050",
            json!({"value": "Local admin", "id": "10100"}),
        )
        .field("customfield_10060", json!(target))
        .field("customfield_10070", json!(duration))
        .approval(jitbridge_sim::jira::model::ApprovalSpec::any_of(&[BOB]));
    jira.create_issue(issue).await.expect("issue created").key
}

/// Every grant of the ticket, newest first.
async fn grants_of(store: &dyn Store, key: &str) -> Vec<jitbridge::grants::Grant> {
    store
        .list_grants(&GrantFilter {
            ticket_key: Some(key.to_owned()),
            ..Default::default()
        })
        .await
        .expect("list grants")
}

/// Waits until every ticket's only grant is in `state`.
async fn wait_all(store: &dyn Store, keys: &[String], state: GrantState) {
    let done = eventually(Duration::from_secs(30), || async {
        for key in keys {
            let grants = grants_of(store, key).await;
            if grants.len() != 1 || grants[0].state != state {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(done.is_some(), "not every ticket reached {state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_database_grant_each_approval_once_and_revoke_each_expiry_once() {
    let Some(fleet) = Fleet::start(
        "two_instances_on_one_database_grant_each_approval_once_and_revoke_each_expiry_once",
    )
    .await
    else {
        return;
    };
    let Fleet {
        pool,
        jira,
        receiver,
        ..
    } = &fleet;
    let opts = Options::default();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = fleet
        .instance(dir_a.path(), &opts, Arc::new(SystemClock))
        .await;
    let b = fleet
        .instance(dir_b.path(), &opts, Arc::new(SystemClock))
        .await;
    let store = a.service.store().clone();

    // Half the tickets arrive through instance A, half through B...
    let mut keys = Vec::new();
    for (instance, targets) in [
        (&a, ["WS-0101", "WS-0102", "WS-0103"]),
        (&b, ["WS-0104", "WS-0105", "WS-0106"]),
    ] {
        jira.clear_webhooks().await;
        jira.add_webhook(&webhook_url(instance), Some(WEBHOOK_SECRET))
            .await;
        for target in targets {
            keys.push(raise(jira, target, "3s").await);
        }
    }
    wait_all(&*store, &keys, GrantState::Requested).await;

    // ...and the approvals reach both (as a load balancer retrying on the other would): the
    // shared inbox keeps one copy of each, and both instances work the queues.
    jira.clear_webhooks().await;
    for instance in [&a, &b] {
        jira.add_webhook(&webhook_url(instance), Some(WEBHOOK_SECRET))
            .await;
    }
    for key in &keys {
        jira.approve(key, BOB).await.expect("approve");
    }
    wait_all(&*store, &keys, GrantState::Expired).await;

    let calls = receiver.calls().await;
    for key in &keys {
        let grant = grants_of(&*store, key).await.remove(0);
        let id = grant.id.to_string();
        let of_kind = |kind: CallKind| {
            calls
                .iter()
                .filter(|c| {
                    c.kind == Some(kind)
                        && c.outcome == CallOutcome::Applied
                        && c.grant.as_ref().and_then(|g| g["id"].as_str()) == Some(id.as_str())
                })
                .count()
        };
        assert_eq!(of_kind(CallKind::Apply), 1, "{key}: applied exactly once");
        assert_eq!(of_kind(CallKind::Revoke), 1, "{key}: revoked exactly once");
    }
    // One delivery row per event although the approvals were sent to both instances.
    let dupes: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT connector, dedupe_key FROM deliveries \
         GROUP BY connector, dedupe_key HAVING COUNT(*) > 1) d",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(dupes, 0);
    // Both instances appended to one audit chain.
    let records = store.audit_records(0, 10_000).await.unwrap();
    verify_chain((0, GENESIS_HASH.to_owned()), &records).expect("one unbroken chain");

    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_instances_leased_apply_is_taken_over_by_the_other_once_the_lease_lapses() {
    let Some(fleet) = Fleet::start(
        "a_killed_instances_leased_apply_is_taken_over_by_the_other_once_the_lease_lapses",
    )
    .await
    else {
        return;
    };
    let Fleet {
        pool,
        jira,
        receiver,
        ..
    } = &fleet;
    // The survivor's clock runs past the two-minute lease; a wide apply window keeps the
    // approval valid at that time.
    let opts = Options {
        workers: Options::default()
            .workers
            .replace("apply_window = \"30s\"", "apply_window = \"30m\""),
        mapping: MAPPING.into(),
        ..Default::default()
    };
    let dir_a = tempfile::tempdir().unwrap();
    let a = fleet
        .instance(dir_a.path(), &opts, Arc::new(SystemClock))
        .await;
    jira.add_webhook(&webhook_url(&a), Some(WEBHOOK_SECRET))
        .await;
    let key = raise(jira, "WS-0201", "30m").await;
    wait_all(
        &*a.service.store().clone(),
        std::slice::from_ref(&key),
        GrantState::Requested,
    )
    .await;

    // The provider answers slowly, so A is inside the apply call when it dies.
    receiver
        .set_latency(Some(Duration::from_millis(1500)))
        .await;
    jira.approve(&key, BOB).await.expect("approve");
    let leased = eventually(Duration::from_secs(15), || async {
        sqlx::query_scalar::<_, String>(
            "SELECT claimed_by FROM jobs WHERE lane = 'provider' AND state = 'pending' \
             AND claimed_by IS NOT NULL",
        )
        .fetch_optional(pool)
        .await
        .unwrap()
    })
    .await
    .expect("instance A leased the apply job");
    drop(a); // killed: every task aborted mid-flight, no clean shutdown, the lease stays
    receiver.set_latency(None).await;

    let still_leased: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE lane = 'provider' AND state = 'pending' \
         AND claimed_by = $1",
    )
    .bind(&leased)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(still_leased, 1, "the dead instance's lease outlives it");

    // B observes time after the lease lapsed and takes the apply over.
    let dir_b = tempfile::tempdir().unwrap();
    let b = fleet
        .instance(
            dir_b.path(),
            &opts,
            Arc::new(AheadClock(SignedDuration::from_secs(150))),
        )
        .await;
    let store = b.service.store().clone();
    wait_all(&*store, std::slice::from_ref(&key), GrantState::Active).await;
    let grant = grants_of(&*store, &key).await.remove(0);
    assert!(
        receiver
            .holds("alice@example.com", "WS-0201", "local-admin")
            .await
    );
    let applies = receiver
        .calls()
        .await
        .into_iter()
        .filter(|c| {
            c.kind == Some(CallKind::Apply)
                && c.grant.as_ref().and_then(|g| g["id"].as_str())
                    == Some(grant.id.to_string().as_str())
        })
        .count();
    assert!(applies >= 1, "the apply reached the provider");
    let pending: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE lane = 'provider' AND state = 'pending'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(pending, 0, "the taken-over apply is done");
    b.stop().await;
}
