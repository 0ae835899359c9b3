//! The Store conformance suite: the behaviour every backend must show, written once against
//! `dyn Store` and run on SQLite always and on PostgreSQL when `JITBRIDGE_TEST_POSTGRES_URL`
//! names a database (each test gets its own schema there). Without the variable the PostgreSQL
//! runs print a "skipped" line straight to the terminal (past the test harness's capture)
//! rather than passing silently. The multi-instance cases at the end need two stores on one
//! database, which only PostgreSQL allows.

use std::collections::HashSet;
use std::io::Write as _;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::{Arc, Once};

use proptest::prelude::*;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use uuid::Uuid;

use crate::audit::{AuditRecord, GENESIS_HASH, NewAudit, verify_chain};
use crate::clock::ManualClock;
use crate::grants::state::ALL_STATES;
use crate::grants::{Grant, GrantState};
use crate::store::postgres::{PgStore, PgTuning};
use crate::store::sqlite::SqliteStore;
use crate::store::{
    Commit, Delivery, DeliveryOutcome, GrantFilter, InboxTurn, InsertOutcome, Job, JobState, Lane,
    LiveGrantCounts, NewDelivery, NewJob, NextClaim, OutboxStats, Store, StoreError,
};
use crate::ticket::{Person, TicketRef};

/// The environment variable naming the PostgreSQL database the suite may use.
pub(super) const POSTGRES_URL_VAR: &str = "JITBRIDGE_TEST_POSTGRES_URL";

/// Raw SQL access to the fixture's database, for setup and counts the trait does not offer.
enum Raw {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// A fresh, empty store of one backend, its clock at `at(0)`.
pub(super) struct Fixture {
    store: Arc<dyn Store>,
    raw: Raw,
    /// PostgreSQL: connect options of this fixture's schema (for a second instance).
    pg: Option<PgConnectOptions>,
    _dir: Option<tempfile::TempDir>,
}

impl Deref for Fixture {
    type Target = dyn Store;
    fn deref(&self) -> &(dyn Store + 'static) {
        &*self.store
    }
}

impl Fixture {
    /// A SQLite store in a temporary directory.
    pub(super) async fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(at(0)));
        let store =
            SqliteStore::open_with_clock(&dir.path().join("data").join("jitbridge.db"), clock)
                .await
                .unwrap();
        let raw = Raw::Sqlite(store.pool().clone());
        Fixture {
            store: Arc::new(store),
            raw,
            pg: None,
            _dir: Some(dir),
        }
    }

    /// A PostgreSQL store in a schema of its own, or `None` (after saying so) when no test
    /// database is configured.
    pub(super) async fn postgres() -> Option<Fixture> {
        let Ok(url) = std::env::var(POSTGRES_URL_VAR) else {
            static SAID: Once = Once::new();
            SAID.call_once(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped: PostgreSQL store conformance tests ({POSTGRES_URL_VAR} is not set; \
                     scripts/test-postgres.sh starts a throwaway server)"
                );
            });
            return None;
        };
        let base = PgConnectOptions::from_str(&url).expect("valid test URL");
        let schema = format!("t_{}", Uuid::now_v7().simple());
        let admin = sqlx::PgPool::connect_with(base.clone())
            .await
            .expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let options = base.options([("search_path", schema.as_str())]);
        let store = Self::pg_instance(&options).await;
        let raw = Raw::Postgres(store.pool().clone());
        Some(Fixture {
            store: Arc::new(store),
            raw,
            pg: Some(options),
            _dir: None,
        })
    }

    async fn pg_instance(options: &PgConnectOptions) -> PgStore {
        let clock = Arc::new(ManualClock::new(at(0)));
        let tuning = PgTuning {
            max_connections: 8,
            ..PgTuning::default()
        };
        PgStore::connect_with(options.clone(), clock, tuning)
            .await
            .expect("PostgreSQL store opens")
    }

    /// Another instance on the same database (PostgreSQL only): its own pool, as another
    /// process would have.
    pub(super) async fn second_instance(&self) -> Option<Arc<dyn Store>> {
        let options = self.pg.as_ref()?;
        Some(Arc::new(Self::pg_instance(options).await))
    }

    /// The store, shareable across tasks.
    pub(super) fn shared(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The stored state of a job.
    async fn job_state(&self, id: Uuid) -> String {
        const SQL: &str = "SELECT state FROM jobs WHERE id = $1";
        match &self.raw {
            Raw::Sqlite(pool) => {
                sqlx::query_scalar(SQL)
                    .bind(id.to_string())
                    .fetch_one(pool)
                    .await
            }
            Raw::Postgres(pool) => {
                sqlx::query_scalar(SQL)
                    .bind(id.to_string())
                    .fetch_one(pool)
                    .await
            }
        }
        .unwrap()
    }

    /// SQLite, and PostgreSQL when configured: what a property runs each case on.
    pub(super) async fn all() -> Vec<Fixture> {
        let mut all = vec![Fixture::sqlite().await];
        all.extend(Fixture::postgres().await);
        all
    }

    /// Runs one SQL statement that returns a count.
    async fn count(&self, sql: &'static str) -> i64 {
        match &self.raw {
            Raw::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
            Raw::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        }
    }
}

/// Enqueues jobs directly (pending, created at `at(0)`), as a commit would.
pub(super) async fn enqueue(store: &Fixture, jobs: &[NewJob]) {
    const SQL: &str = "INSERT INTO jobs (id, lane, queue_key, payload, state, attempts, next_at, \
                       created_at) VALUES ($1, $2, $3, $4, 'pending', 0, $5, $6)";
    for j in jobs {
        let payload = serde_json::to_string(&j.payload).unwrap();
        let (id, lane, not_before, created) = (
            j.id.to_string(),
            j.lane.as_str(),
            j.not_before.as_millisecond(),
            at(0).as_millisecond(),
        );
        match &store.raw {
            Raw::Sqlite(pool) => {
                sqlx::query(SQL)
                    .bind(id)
                    .bind(lane)
                    .bind(j.queue_key.as_str())
                    .bind(payload)
                    .bind(not_before)
                    .bind(created)
                    .execute(pool)
                    .await
                    .unwrap();
            }
            Raw::Postgres(pool) => {
                sqlx::query(SQL)
                    .bind(id)
                    .bind(lane)
                    .bind(j.queue_key.as_str())
                    .bind(payload)
                    .bind(not_before)
                    .bind(created)
                    .execute(pool)
                    .await
                    .unwrap();
            }
        }
    }
}

pub(super) async fn all_audit(store: &dyn Store) -> Vec<AuditRecord> {
    store.audit_records(0, 1000).await.unwrap()
}

pub(super) async fn job_count(store: &Fixture) -> i64 {
    store.count("SELECT COUNT(*) FROM jobs").await
}

pub(super) async fn delivery_count(store: &Fixture) -> i64 {
    store.count("SELECT COUNT(*) FROM deliveries").await
}

pub(super) const T0: i64 = 1_800_000_000;

pub(super) fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(T0 + secs).unwrap()
}

pub(super) fn secs(n: i64) -> SignedDuration {
    SignedDuration::from_secs(n)
}

pub(super) fn delivery(key: &str, received: i64) -> NewDelivery {
    NewDelivery {
        id: Uuid::now_v7(),
        connector: "jira".into(),
        dedupe_key: key.into(),
        received_at: at(received),
        headers: vec![("x-atlassian-webhook-identifier".into(), key.into())],
        body: format!("{{\"key\":\"{key}\"}}").into_bytes(),
    }
}

pub(super) fn grant(ticket: &str, mapping: &str, state: GrantState) -> Grant {
    let approved = state != GrantState::Requested;
    Grant {
        id: Uuid::now_v7(),
        ticket: TicketRef {
            connector: "jira".into(),
            id: format!("100{ticket}"),
            key: format!("ACCESS-{ticket}"),
            url: Some(format!(
                "https://example.atlassian.net/browse/ACCESS-{ticket}"
            )),
        },
        mapping: mapping.into(),
        state,
        subject: "alice@example.com".into(),
        target: "LAPTOP-042".into(),
        scope: "local-admin".into(),
        provider: "intune".into(),
        duration: secs(3600),
        requester: Some(Person {
            id: Some("acc-alice".into()),
            email: Some("alice@example.com".into()),
            name: Some("Alice".into()),
        }),
        approvers: vec![Person {
            id: Some("acc-bob".into()),
            email: None,
            name: Some("Bob".into()),
        }],
        requested_at: at(0),
        approved_at: approved.then(|| at(10)),
        starts_at: (state == GrantState::Active).then(|| at(20)),
        expires_at: approved.then(|| at(3610)),
        ended_at: state.is_terminal().then(|| at(3700)),
        revoke_cause: None,
        reason: None,
        last_event_at: at(10),
        context: json!({"ticket": {"key": format!("ACCESS-{ticket}")}}),
        version: 1,
    }
}

pub(super) fn audit(kind: &str, grant_id: Option<Uuid>) -> NewAudit {
    NewAudit {
        at: at(10),
        kind: kind.into(),
        grant_id,
        connector: Some("jira".into()),
        ticket_key: Some("ACCESS-87".into()),
        actor: Some("acc-bob".into()),
        detail: json!({"from": "requested", "to": "approved"}),
    }
}

pub(super) fn job(lane: Lane, key: &str, not_before: i64) -> NewJob {
    NewJob {
        id: Uuid::now_v7(),
        lane,
        queue_key: key.into(),
        payload: json!({"op": "apply", "key": key}),
        not_before: at(not_before),
    }
}

pub(super) fn insert(g: &Grant) -> Commit {
    Commit {
        grant: g.clone(),
        expected_version: None,
        audit: vec![audit("grant.requested", Some(g.id))],
        jobs: vec![],
        complete_job: None,
    }
}

/// Moves `g` to `state` as the next version, ready to commit over version `g.version`.
pub(super) fn transition(g: &Grant, state: GrantState) -> Commit {
    let mut next = g.clone();
    next.state = state;
    next.version += 1;
    if state.is_terminal() {
        next.ended_at = Some(at(4000));
    }
    Commit {
        grant: next,
        expected_version: Some(g.version),
        audit: vec![audit(&format!("grant.{state}"), Some(g.id))],
        jobs: vec![],
        complete_job: None,
    }
}

pub(super) fn ids(jobs: &[Job]) -> Vec<Uuid> {
    jobs.iter().map(|j| j.id).collect()
}

/// The ids of leased deliveries, in the order they were leased.
pub(super) fn delivery_ids(deliveries: &[Delivery]) -> Vec<Uuid> {
    deliveries.iter().map(|d| d.id).collect()
}

/// The ids an inbox turn leased, after checking that every mark it carried committed.
pub(super) fn leased_after_marks(turn: InboxTurn) -> Vec<Uuid> {
    assert!(
        turn.finished.iter().all(Result::is_ok),
        "{:?}",
        turn.finished
    );
    delivery_ids(&turn.claimed.unwrap())
}

// ---- the suite ----

pub(super) async fn duplicate_delivery_returns_the_first_id_and_inserts_nothing(store: &Fixture) {
    let first = delivery("evt-1", 0);
    assert_eq!(
        store.insert_delivery(first.clone()).await.unwrap(),
        InsertOutcome::Accepted(first.id)
    );

    let mut repeat = delivery("evt-1", 3);
    repeat.body = b"a different body".to_vec();
    assert_eq!(
        store.insert_delivery(repeat).await.unwrap(),
        InsertOutcome::Duplicate(first.id)
    );

    let count = delivery_count(store).await;
    assert_eq!(count, 1);
    let claimed = store
        .claim_deliveries("w", at(10), secs(30), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        claimed[0].body, first.body,
        "the first body is kept byte for byte"
    );
    assert_eq!(claimed[0].headers, first.headers);

    // Same dedupe key on another connector is a different delivery.
    let mut other = delivery("evt-1", 4);
    other.connector = "servicenow".into();
    assert_eq!(
        store.insert_delivery(other.clone()).await.unwrap(),
        InsertOutcome::Accepted(other.id)
    );
}

pub(super) async fn lapsed_delivery_lease_makes_it_claimable_again(store: &Fixture) {
    let old = delivery("evt-old", 0);
    let new = delivery("evt-new", 1);
    store.insert_delivery(new.clone()).await.unwrap();
    store.insert_delivery(old.clone()).await.unwrap();

    let first = store
        .claim_deliveries("w1", at(5), secs(30), 10)
        .await
        .unwrap();
    assert_eq!(delivery_ids(&first), vec![old.id, new.id], "oldest first");
    assert!(first.iter().all(|d| d.attempts == 1));

    assert!(
        store
            .claim_deliveries("w2", at(20), secs(30), 10)
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );

    let again = store
        .claim_deliveries("w2", at(35), secs(30), 1)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, old.id);
    assert_eq!(again[0].attempts, 2);

    store
        .finish_delivery(old.id, DeliveryOutcome::Processed)
        .await
        .unwrap();
    store
        .retry_delivery(new.id, at(100), "ITSM API returned 503")
        .await
        .unwrap();
    assert!(
        store
            .claim_deliveries("w3", at(99), secs(30), 10)
            .await
            .unwrap()
            .is_empty(),
        "backing off"
    );
    let retried = store
        .claim_deliveries("w3", at(100), secs(30), 10)
        .await
        .unwrap();
    assert_eq!(delivery_ids(&retried), vec![new.id]);

    store
        .finish_delivery(
            new.id,
            DeliveryOutcome::Rejected("unknown issue type".into()),
        )
        .await
        .unwrap();
    assert!(
        store
            .claim_deliveries("w3", at(1000), secs(30), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let err = store
        .finish_delivery(new.id, DeliveryOutcome::Processed)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(ref m) if m.contains("rejected")),
        "{err:?}"
    );
}

pub(super) async fn a_reused_delivery_id_fails_only_its_own_caller(store: &Fixture) {
    let original = delivery("evt-1", 0);
    store.insert_delivery(original.clone()).await.unwrap();

    let mut clash = delivery("evt-2", 1);
    clash.id = original.id;
    let fine = delivery("evt-3", 1);
    let outcomes =
        futures::future::join_all([&clash, &fine].map(|d| store.insert_delivery(d.clone()))).await;
    assert!(
        matches!(&outcomes[0], Err(StoreError::Conflict(m)) if m.contains("already used")),
        "{:?}",
        outcomes[0]
    );
    assert_eq!(
        outcomes[1].as_ref().unwrap(),
        &InsertOutcome::Accepted(fine.id)
    );
    assert_eq!(delivery_count(store).await, 2);
}

pub(super) async fn grant_round_trips_and_updates_only_at_the_expected_version(store: &Fixture) {
    let g = grant("87", "laptop-admin", GrantState::Requested);
    store.commit(insert(&g)).await.unwrap();
    assert_eq!(store.get_grant(g.id).await.unwrap().as_ref(), Some(&g));

    let approve = transition(&g, GrantState::Approved);
    store.commit(approve.clone()).await.unwrap();
    assert_eq!(
        store.get_grant(g.id).await.unwrap(),
        Some(approve.grant.clone())
    );

    // A writer that read version 1 loses.
    let stale = transition(&g, GrantState::Denied);
    let err = store.commit(stale).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(ref m) if m.contains("version 1")),
        "{err:?}"
    );
    assert_eq!(
        store.get_grant(g.id).await.unwrap().map(|g| g.state),
        Some(GrantState::Approved)
    );
}

pub(super) async fn commit_is_atomic_a_conflict_leaves_no_audit_rows_and_no_jobs(store: &Fixture) {
    let g = grant("87", "laptop-admin", GrantState::Requested);
    store.commit(insert(&g)).await.unwrap();

    let mut stale = transition(&g, GrantState::Approved);
    stale.expected_version = Some(7);
    stale.jobs = vec![
        job(Lane::Provider, &g.id.to_string(), 0),
        job(Lane::Writeback, "jira:10087", 0),
    ];
    stale.audit.push(audit("grant.approved", Some(g.id)));
    assert!(matches!(
        store.commit(stale).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        all_audit(&**store).await.len(),
        1,
        "only the insert's record"
    );
    assert_eq!(job_count(store).await, 0);

    // A failure after the grant, audit and jobs were written rolls all of them back too.
    let h = grant("88", "laptop-admin", GrantState::Requested);
    let mut c = insert(&h);
    c.jobs = vec![job(Lane::Writeback, "jira:10088", 0)];
    c.complete_job = Some(Uuid::now_v7());
    let err = store.commit(c).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(ref m) if m.contains("does not exist")),
        "{err:?}"
    );
    assert_eq!(store.get_grant(h.id).await.unwrap(), None);
    assert_eq!(all_audit(&**store).await.len(), 1);
    assert_eq!(job_count(store).await, 0);
}

pub(super) async fn a_batch_commit_fails_only_its_conflicting_member_and_chains_the_rest_in_order(
    store: &Fixture,
) {
    let a = grant("91", "laptop-admin", GrantState::Requested);
    let b = grant("92", "laptop-admin", GrantState::Requested);
    let c = grant("93", "laptop-admin", GrantState::Requested);
    for g in [&a, &b, &c] {
        store.commit(insert(g)).await.unwrap();
    }
    let mut stale = transition(&b, GrantState::Approved);
    stale.expected_version = Some(7);
    stale.jobs = vec![job(Lane::Provider, &b.id.to_string(), 0)];
    let mut approve_a = transition(&a, GrantState::Approved);
    approve_a.jobs = vec![job(Lane::Provider, &a.id.to_string(), 0)];
    approve_a.audit.push(audit("policy.passed", Some(a.id)));

    let approved_a = approve_a.grant.clone();
    let results = store
        .commit_many(vec![approve_a, stale, transition(&c, GrantState::Approved)])
        .await;
    // Every column survives the batched write (it binds them apart from the single commit).
    assert_eq!(store.get_grant(a.id).await.unwrap(), Some(approved_a));

    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(
        matches!(results[1], Err(StoreError::Conflict(_))),
        "{results:?}"
    );
    let state = |g: &Grant| {
        let id = g.id;
        async move { store.get_grant(id).await.unwrap().unwrap().state }
    };
    assert_eq!(state(&a).await, GrantState::Approved);
    assert_eq!(state(&b).await, GrantState::Requested);
    assert_eq!(state(&c).await, GrantState::Approved);
    assert_eq!(
        job_count(store).await,
        1,
        "only a's job; b's was rolled back"
    );
    let records = all_audit(&**store).await;
    let kinds: Vec<_> = records
        .iter()
        .map(|r| (r.record.kind.as_str(), r.record.grant_id))
        .collect();
    assert_eq!(
        kinds[3..],
        [
            ("grant.approved", Some(a.id)),
            ("policy.passed", Some(a.id)),
            ("grant.approved", Some(c.id)),
        ]
    );
    assert_eq!(
        verify_chain((0, GENESIS_HASH.to_owned()), &records)
            .unwrap()
            .0,
        6
    );
    assert!(store.commit_many(vec![]).await.is_empty());
}

/// The members that fail *after* their grant row was written (a job they complete is gone, a
/// job id already used) are undone alone too; the rest commit with a chain that verifies.
pub(super) async fn a_batch_member_failing_after_its_grant_row_is_undone_alone(store: &Fixture) {
    let a = grant("94", "laptop-admin", GrantState::Requested);
    let b = grant("95", "laptop-admin", GrantState::Requested);
    let c = grant("96", "laptop-admin", GrantState::Requested);
    let d = grant("97", "laptop-admin", GrantState::Requested);
    for g in [&a, &b, &c, &d] {
        store.commit(insert(g)).await.unwrap();
    }
    let before = all_audit(&**store).await.len();
    let used = job(Lane::Provider, &a.id.to_string(), 0);
    let mut approve_a = transition(&a, GrantState::Approved);
    approve_a.jobs = vec![used.clone()];
    let mut missing_job = transition(&b, GrantState::Approved);
    missing_job.complete_job = Some(Uuid::now_v7());
    let mut reused_job = transition(&c, GrantState::Approved);
    reused_job.jobs = vec![used];
    // A second live grant for a's ticket is refused by the database itself.
    let mut twin = grant("94", "laptop-admin", GrantState::Requested);
    twin.ticket = a.ticket.clone();
    let approve_d = transition(&d, GrantState::Approved);

    let results = store
        .commit_many(vec![
            approve_a,
            missing_job,
            reused_job,
            insert(&twin),
            approve_d,
        ])
        .await;

    assert!(results[0].is_ok() && results[4].is_ok(), "{results:?}");
    for (n, what) in [
        (1, "does not exist"),
        (2, "already exists"),
        (3, "live grant"),
    ] {
        assert!(
            matches!(&results[n], Err(StoreError::Conflict(m)) if m.contains(what)),
            "member {n}: {:?}",
            results[n]
        );
    }
    let state = |g: &Grant| {
        let id = g.id;
        async move { store.get_grant(id).await.unwrap().unwrap().state }
    };
    assert_eq!(state(&a).await, GrantState::Approved);
    assert_eq!(state(&b).await, GrantState::Requested);
    assert_eq!(state(&c).await, GrantState::Requested);
    assert_eq!(state(&d).await, GrantState::Approved);
    assert_eq!(store.get_grant(twin.id).await.unwrap(), None);
    assert_eq!(job_count(store).await, 1, "only a's job");
    let records = all_audit(&**store).await;
    let kinds: Vec<_> = records[before..]
        .iter()
        .map(|r| (r.record.kind.as_str(), r.record.grant_id))
        .collect();
    assert_eq!(
        kinds,
        [
            ("grant.approved", Some(a.id)),
            ("grant.approved", Some(d.id))
        ]
    );
    assert!(verify_chain((0, GENESIS_HASH.to_owned()), &records).is_ok());
}

pub(super) async fn grants_are_read_together_by_id_and_unknown_ids_are_left_out(store: &Fixture) {
    let a = grant("98", "laptop-admin", GrantState::Requested);
    let b = grant("99", "laptop-admin", GrantState::Requested);
    for g in [&a, &b] {
        store.commit(insert(g)).await.unwrap();
    }
    let mut found = store
        .get_grants(&[b.id, Uuid::now_v7(), a.id])
        .await
        .unwrap();
    found.sort_by_key(|g| g.id);
    assert_eq!(found, vec![a.clone(), b.clone()]);
    assert!(store.get_grants(&[]).await.unwrap().is_empty());
}

pub(super) async fn finishing_deliveries_in_a_batch_fails_only_those_no_longer_pending(
    store: &Fixture,
) {
    let mut ids = Vec::new();
    for key in ["k1", "k2", "k3"] {
        match store.insert_delivery(delivery(key, 1000)).await.unwrap() {
            InsertOutcome::Accepted(id) => ids.push(id),
            other => panic!("{other:?}"),
        }
    }
    store
        .finish_delivery(ids[1], DeliveryOutcome::Processed)
        .await
        .unwrap();

    let results = store
        .finish_deliveries(vec![
            (ids[0], DeliveryOutcome::Processed),
            (ids[1], DeliveryOutcome::Processed),
            (ids[2], DeliveryOutcome::Rejected("unreadable".into())),
            (Uuid::now_v7(), DeliveryOutcome::Processed),
        ])
        .await;

    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(
        matches!(&results[1], Err(StoreError::Conflict(m)) if m.contains("processed")),
        "{results:?}"
    );
    assert!(
        matches!(&results[3], Err(StoreError::Conflict(m)) if m.contains("does not exist")),
        "{results:?}"
    );
    let pending = store
        .claim_deliveries("w", at(5000), secs(60), 10)
        .await
        .unwrap();
    assert!(pending.is_empty(), "nothing is left pending: {pending:?}");
}

pub(super) async fn the_inbox_turn_marks_before_it_claims_and_a_claim_without_patience_answers_at_once(
    store: &Fixture,
) {
    let mut ids = Vec::new();
    for (key, received) in [("k1", 1), ("k2", 2), ("k3", 3)] {
        match store
            .insert_delivery(delivery(key, received))
            .await
            .unwrap()
        {
            InsertOutcome::Accepted(id) => ids.push(id),
            other => panic!("{other:?}"),
        }
    }
    let first = store
        .claim_deliveries("w", at(10), secs(60), 1)
        .await
        .unwrap();
    assert_eq!(delivery_ids(&first), vec![ids[0]]);
    let next = |now| NextClaim {
        worker: "w",
        now,
        lease: secs(60),
        limit: 10,
        patience: std::time::Duration::ZERO,
    };

    let turn = store
        .finish_and_claim(vec![(ids[0], DeliveryOutcome::Processed)], next(at(10)))
        .await;

    assert!(!turn.waited);
    assert_eq!(turn.finished.len(), 1);
    assert_eq!(
        leased_after_marks(turn),
        vec![ids[1], ids[2]],
        "the marked delivery is not leased again; the rest are, oldest first"
    );

    // Everything is leased or processed: an impatient claim hears "nothing" at once, and a
    // mark of a delivery no longer pending fails alone.
    let turn = store
        .finish_and_claim(vec![(ids[0], DeliveryOutcome::Processed)], next(at(11)))
        .await;
    assert!(
        matches!(turn.finished.as_slice(), [Err(StoreError::Conflict(_))]),
        "{:?}",
        turn.finished
    );
    assert!(turn.claimed.unwrap().is_empty());
    assert!(!turn.waited, "no patience, no wait");
}

pub(super) async fn commit_completes_the_job_that_caused_it(store: &Fixture) {
    let g = grant("87", "laptop-admin", GrantState::Approved);
    let apply = job(Lane::Provider, &g.id.to_string(), 0);
    let mut c = insert(&g);
    c.jobs.push(apply.clone());
    store.commit(c).await.unwrap();
    let claimed = store
        .claim_jobs(Lane::Provider, "w", at(0), secs(30), 10)
        .await
        .unwrap();
    assert_eq!(ids(&claimed), vec![apply.id]);

    let mut active = transition(&g, GrantState::Active);
    active.grant.starts_at = Some(at(20));
    active.complete_job = Some(apply.id);
    store.commit(active).await.unwrap();
    let done = store.list_jobs(JobState::Done, 10).await.unwrap();
    assert_eq!(ids(&done), vec![apply.id]);
    assert!(
        store
            .claim_jobs(Lane::Provider, "w", at(100), secs(30), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub(super) async fn second_live_grant_for_the_same_ticket_conflicts_until_the_first_is_terminal(
    store: &Fixture,
) {
    let first = grant("87", "laptop-admin", GrantState::Requested);
    store.commit(insert(&first)).await.unwrap();

    let second = grant("87", "laptop-admin", GrantState::Requested);
    let err = store.commit(insert(&second)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(ref m) if m.contains("live grant")),
        "{err:?}"
    );
    assert_eq!(all_audit(&**store).await.len(), 1);

    // Another mapping on the same ticket is independent.
    store
        .commit(insert(&grant("87", "server-admin", GrantState::Requested)))
        .await
        .unwrap();

    store
        .commit(transition(&first, GrantState::Denied))
        .await
        .unwrap();
    store.commit(insert(&second)).await.unwrap();
    assert_eq!(
        store
            .live_grant("jira", "10087", "laptop-admin")
            .await
            .unwrap()
            .map(|g| g.id),
        Some(second.id)
    );
    assert_eq!(
        store
            .latest_grant("jira", "10087", "laptop-admin")
            .await
            .unwrap()
            .map(|g| g.id),
        Some(second.id)
    );

    // A terminal grant cannot be brought back to life next to the live one.
    let mut revived = transition(&first, GrantState::Requested);
    revived.expected_version = Some(2);
    revived.grant.version = 3;
    assert!(matches!(
        store.commit(revived).await,
        Err(StoreError::Conflict(_))
    ));
}

pub(super) async fn live_grants_are_counted_by_subject_and_by_target_across_tickets(
    store: &Fixture,
) {
    let mut states = vec![
        GrantState::Requested,
        GrantState::Approved,
        GrantState::Active,
        GrantState::Expiring,
        GrantState::Revoking,
        GrantState::RevokeFailed,
        GrantState::Expired,
        GrantState::Revoked,
        GrantState::Denied,
        GrantState::Failed,
        GrantState::Cancelled,
    ];
    for (n, state) in states.drain(..).enumerate() {
        let mut g = grant(&n.to_string(), "m", state);
        if n % 2 == 1 {
            g.target = "WS-9".into();
        }
        store.commit(insert(&g)).await.unwrap();
    }
    // Another subject on another mapping, on the same target.
    let mut other = grant("99", "other-mapping", GrantState::Active);
    other.subject = "bob@example.com".into();
    other.target = "ws-9".into();
    store.commit(insert(&other)).await.unwrap();

    // Live: approved(1), active(2), expiring(3), revoking(4), revoke_failed(5).
    let counts = store
        .count_live_grants("ALICE@example.com", "LAPTOP-042")
        .await
        .unwrap();
    assert_eq!(counts.by_subject, 5);
    // Even numbers keep LAPTOP-042: active(2), revoking(4).
    assert_eq!(counts.by_target, 2);
    let counts = store
        .count_live_grants("bob@example.com", "WS-9")
        .await
        .unwrap();
    // approved(1), expiring(3), revoke_failed(5) and Bob's active one, any case.
    assert_eq!(
        counts,
        LiveGrantCounts {
            by_subject: 1,
            by_target: 4
        }
    );
    let none = store
        .count_live_grants("carol@example.com", "SRV-1")
        .await
        .unwrap();
    assert_eq!(none, LiveGrantCounts::default());
}

pub(super) async fn unresolved_revoke_names_the_oldest_revoke_failed_grant_of_a_subject_or_target(
    store: &Fixture,
) {
    // Live and ended grants of Alice on LAPTOP-042 that are not revoke_failed do not block.
    for (n, state) in [
        GrantState::Active,
        GrantState::Revoking,
        GrantState::Revoked,
    ]
    .into_iter()
    .enumerate()
    {
        store
            .commit(insert(&grant(&n.to_string(), "m", state)))
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .unresolved_revoke("alice@example.com", "LAPTOP-042")
            .await
            .unwrap(),
        None
    );

    // Bob's revoke on WS-9 failed twice; the older one is named, to Bob or to anyone on WS-9.
    let mut older = grant("10", "m", GrantState::RevokeFailed);
    older.subject = "bob@example.com".into();
    older.target = "WS-9".into();
    older.requested_at = at(0);
    let mut newer = older.clone();
    newer.id = Uuid::now_v7();
    newer.ticket.id = "10011".into();
    newer.requested_at = at(50);
    store.commit(insert(&newer)).await.unwrap();
    store.commit(insert(&older)).await.unwrap();
    let by_subject = store
        .unresolved_revoke(" BOB@example.com ", "SRV-1")
        .await
        .unwrap();
    assert_eq!(by_subject.map(|g| g.id), Some(older.id));
    let by_target = store
        .unresolved_revoke("carol@example.com", "ws-9")
        .await
        .unwrap();
    assert_eq!(by_target.map(|g| g.id), Some(older.id));
    assert_eq!(
        store
            .unresolved_revoke("carol@example.com", "SRV-1")
            .await
            .unwrap(),
        None
    );

    // Once both revokes complete, nothing blocks.
    for g in [&older, &newer] {
        store
            .commit(transition(g, GrantState::Revoked))
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .unresolved_revoke("bob@example.com", "WS-9")
            .await
            .unwrap(),
        None
    );
}

pub(super) async fn active_grant_without_a_deadline_is_refused(store: &Fixture) {
    let mut g = grant("87", "laptop-admin", GrantState::Active);
    g.expires_at = None;
    assert!(matches!(
        store.commit(insert(&g)).await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(store.get_grant(g.id).await.unwrap(), None);
}

pub(super) async fn due_grants_are_active_ones_past_their_deadline_earliest_first(store: &Fixture) {
    let mut late = grant("1", "m", GrantState::Active);
    late.expires_at = Some(at(300));
    let mut early = grant("2", "m", GrantState::Active);
    early.expires_at = Some(at(100));
    let mut future = grant("3", "m", GrantState::Active);
    future.expires_at = Some(at(900));
    let mut expiring = grant("4", "m", GrantState::Expiring);
    expiring.expires_at = Some(at(50));
    for g in [&late, &early, &future, &expiring] {
        store.commit(insert(g)).await.unwrap();
    }
    assert_eq!(store.next_deadline().await.unwrap(), Some(at(100)));
    let due = store.due_grants(at(300), 10).await.unwrap();
    assert_eq!(
        due.iter().map(|g| g.id).collect::<Vec<_>>(),
        vec![early.id, late.id]
    );
    assert_eq!(store.due_grants(at(300), 1).await.unwrap().len(), 1);
    assert!(store.due_grants(at(99), 10).await.unwrap().is_empty());
}

pub(super) async fn list_and_count_grants(store: &Fixture) {
    let mut older = grant("1", "m", GrantState::Active);
    older.requested_at = at(0);
    let mut newer = grant("2", "m", GrantState::Requested);
    newer.requested_at = at(50);
    let mut other = grant("3", "m", GrantState::Active);
    other.ticket.connector = "servicenow".into();
    other.requested_at = at(100);
    for g in [&older, &newer, &other] {
        store.commit(insert(g)).await.unwrap();
    }
    let all = store.list_grants(&GrantFilter::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|g| g.id).collect::<Vec<_>>(),
        vec![other.id, newer.id, older.id]
    );

    let active_jira = GrantFilter {
        state: Some(GrantState::Active),
        connector: Some("jira".into()),
        ..GrantFilter::default()
    };
    assert_eq!(
        store.list_grants(&active_jira).await.unwrap(),
        vec![older.clone()]
    );
    let by_key = GrantFilter {
        ticket_key: Some("ACCESS-2".into()),
        ..GrantFilter::default()
    };
    assert_eq!(
        store.list_grants(&by_key).await.unwrap(),
        vec![newer.clone()]
    );
    let one = GrantFilter {
        limit: Some(1),
        ..GrantFilter::default()
    };
    assert_eq!(store.list_grants(&one).await.unwrap().len(), 1);

    let counts = store.count_grants_by_state().await.unwrap();
    assert_eq!(
        counts.len(),
        ALL_STATES.len(),
        "every state, zeros included"
    );
    let count = |s| counts.iter().find(|(st, _)| *st == s).map(|(_, n)| *n);
    assert_eq!(count(GrantState::Active), Some(2));
    assert_eq!(count(GrantState::Requested), Some(1));
    assert_eq!(count(GrantState::Expired), Some(0));
}

pub(super) async fn later_job_waits_for_an_earlier_pending_job_of_its_queue_key_but_not_a_dead_one(
    store: &Fixture,
) {
    let j1 = job(Lane::Provider, "grant-a", 0);
    let j2 = job(Lane::Provider, "grant-a", 0);
    let j3 = job(Lane::Provider, "grant-b", 0);
    let other_lane = job(Lane::Writeback, "grant-a", 0);
    enqueue(
        store,
        &[j1.clone(), j2.clone(), j3.clone(), other_lane.clone()],
    )
    .await;

    let claimed = store
        .claim_jobs(Lane::Provider, "w1", at(0), secs(30), 10)
        .await
        .unwrap();
    assert_eq!(
        ids(&claimed),
        vec![j1.id, j3.id],
        "one per queue key, in order"
    );
    store.complete_job(j3.id).await.unwrap();
    // Lanes are independent: the writeback with the same key is not held back.
    let wb = store
        .claim_jobs(Lane::Writeback, "w1", at(0), secs(30), 10)
        .await
        .unwrap();
    assert_eq!(ids(&wb), vec![other_lane.id]);

    // While j1 backs off, j2 still waits.
    store
        .reschedule_job(j1.id, 1, at(60), "provider returned 503")
        .await
        .unwrap();
    assert!(
        store
            .claim_jobs(Lane::Provider, "w2", at(10), secs(30), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let retried = store
        .claim_jobs(Lane::Provider, "w2", at(60), secs(30), 10)
        .await
        .unwrap();
    assert_eq!(ids(&retried), vec![j1.id]);
    assert_eq!(retried[0].attempts, 1);
    assert_eq!(
        retried[0].last_error.as_deref(),
        Some("provider returned 503")
    );

    // Once j1 is dead, j2 may run.
    store.dead_letter_job(j1.id, 5, "gave up").await.unwrap();
    let next = store
        .claim_jobs(Lane::Provider, "w2", at(61), secs(30), 10)
        .await
        .unwrap();
    assert_eq!(ids(&next), vec![j2.id]);
    store.complete_job(j2.id).await.unwrap();
    store.complete_job(j2.id).await.unwrap(); // idempotent

    // An admin retry puts j1 back, attempts kept, due now.
    assert!(store.retry_dead_job(j1.id, at(70)).await.unwrap());
    assert!(
        !store.retry_dead_job(j1.id, at(70)).await.unwrap(),
        "no longer dead"
    );
    let back = store
        .claim_jobs(Lane::Provider, "w3", at(70), secs(30), 10)
        .await
        .unwrap();
    assert_eq!(ids(&back), vec![j1.id]);
    assert_eq!(back[0].attempts, 5);
    assert_eq!(back[0].state, JobState::Pending);
}

pub(super) async fn lapsed_job_lease_makes_it_claimable_again_and_finished_jobs_cannot_be_revived(
    store: &Fixture,
) {
    let j = job(Lane::Writeback, "jira:1", 0);
    enqueue(store, std::slice::from_ref(&j)).await;
    assert_eq!(
        store
            .claim_jobs(Lane::Writeback, "w1", at(0), secs(30), 1)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .claim_jobs(Lane::Writeback, "w2", at(29), secs(30), 1)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .claim_jobs(Lane::Writeback, "w2", at(30), secs(30), 1)
            .await
            .unwrap()
            .len(),
        1
    );

    store.complete_job(j.id).await.unwrap();
    let err = store
        .reschedule_job(j.id, 1, at(99), "late failure")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(ref m) if m.contains("done")),
        "{err:?}"
    );
    assert!(matches!(
        store.dead_letter_job(j.id, 1, "x").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.complete_job(Uuid::now_v7()).await,
        Err(StoreError::Conflict(_))
    ));
}

pub(super) async fn concurrent_claims_never_return_the_same_job(store: &Fixture) {
    let jobs: Vec<NewJob> = (0..40)
        .map(|i| job(Lane::Provider, &format!("grant-{}", i % 25), 0))
        .collect();
    enqueue(store, &jobs).await;
    let store = store.shared();
    let mut seen = Vec::new();
    // Several rounds: each round completes what it claimed, unblocking the next job of a key.
    for round in 0..4 {
        let tasks: Vec<_> = (0..6)
            .map(|w| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    store
                        .claim_jobs(
                            Lane::Provider,
                            &format!("w{round}-{w}"),
                            at(round),
                            secs(600),
                            3,
                        )
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut batch = Vec::new();
        for t in tasks {
            let claimed = t.await.unwrap();
            let keys: HashSet<_> = claimed.iter().map(|j| j.queue_key.clone()).collect();
            assert_eq!(
                keys.len(),
                claimed.len(),
                "two jobs of one key in one claim"
            );
            batch.extend(claimed);
        }
        let keys: HashSet<_> = batch.iter().map(|j| j.queue_key.clone()).collect();
        assert_eq!(
            keys.len(),
            batch.len(),
            "two jobs of one key leased at once"
        );
        for j in &batch {
            store.complete_job(j.id).await.unwrap();
        }
        seen.extend(ids(&batch));
    }
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a job was handed out twice");
    assert_eq!(
        seen.len(),
        jobs.len(),
        "every job was eventually handed out"
    );
}

pub(super) async fn outbox_stats_count_pending_and_dead_and_age_the_oldest_pending(
    store: &Fixture,
) {
    let a = job(Lane::Provider, "a", 0);
    let b = job(Lane::Provider, "b", 0);
    let w = job(Lane::Writeback, "w", 0);
    enqueue(store, &[a.clone(), b.clone(), w]).await;
    store.dead_letter_job(b.id, 3, "boom").await.unwrap();
    let stats = store.outbox_stats(Lane::Provider, at(90)).await.unwrap();
    assert_eq!(
        stats,
        OutboxStats {
            pending: 1,
            dead: 1,
            oldest_pending_age: Some(secs(90))
        }
    );
    store.complete_job(a.id).await.unwrap();
    let stats = store.outbox_stats(Lane::Provider, at(90)).await.unwrap();
    assert_eq!(
        stats,
        OutboxStats {
            pending: 0,
            dead: 1,
            oldest_pending_age: None
        }
    );
    assert_eq!(
        ids(&store.list_jobs(JobState::Dead, 10).await.unwrap()),
        vec![b.id]
    );
}

pub(super) async fn concurrent_audit_appends_never_fork_the_chain(store: &Fixture) {
    let store = store.shared();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .append_audit(vec![
                        audit(&format!("test.{i}"), None),
                        audit("test.second", None),
                    ])
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let records = all_audit(&*store).await;
    assert_eq!(records.len(), 16);
    verify_chain((0, GENESIS_HASH.to_owned()), &records).unwrap();
}

// ---- several instances on one database (PostgreSQL) ----

/// Two instances poll the same inbox and outbox at once: every row goes to exactly one.
pub(super) async fn two_instances_claim_disjoint_work(store: &Fixture) {
    let other = store.second_instance().await.expect("a second instance");
    for n in 0..60 {
        store
            .insert_delivery(delivery(&format!("evt-{n}"), n))
            .await
            .unwrap();
    }
    let jobs: Vec<NewJob> = (0..60)
        .map(|i| job(Lane::Provider, &format!("grant-{i}"), 0))
        .collect();
    enqueue(store, &jobs).await;

    let instances = [store.shared(), other];
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let s = instances[w % 2].clone();
            tokio::spawn(async move {
                let mut deliveries = Vec::new();
                let mut jobs = Vec::new();
                for _ in 0..10 {
                    let d = s
                        .claim_deliveries(&format!("i{w}"), at(100), secs(600), 3)
                        .await
                        .unwrap();
                    deliveries.extend(d.into_iter().map(|d| d.id));
                    let j = s
                        .claim_jobs(Lane::Provider, &format!("i{w}"), at(100), secs(600), 3)
                        .await
                        .unwrap();
                    jobs.extend(ids(&j));
                }
                (deliveries, jobs)
            })
        })
        .collect();
    let (mut deliveries, mut claimed_jobs) = (Vec::new(), Vec::new());
    for t in tasks {
        let (d, j) = t.await.unwrap();
        deliveries.extend(d);
        claimed_jobs.extend(j);
    }
    let unique: HashSet<_> = deliveries.iter().collect();
    assert_eq!(
        unique.len(),
        deliveries.len(),
        "a delivery was claimed twice"
    );
    assert_eq!(deliveries.len(), 60, "every delivery was claimed");
    let unique: HashSet<_> = claimed_jobs.iter().collect();
    assert_eq!(unique.len(), claimed_jobs.len(), "a job was claimed twice");
    assert_eq!(claimed_jobs.len(), 60, "every job was claimed");
}

/// Appenders on two instances extend one chain: no fork, no gap, every record kept.
pub(super) async fn concurrent_appenders_on_two_instances_keep_one_chain(store: &Fixture) {
    let other = store.second_instance().await.expect("a second instance");
    let instances = [store.shared(), other];
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let s = instances[i % 2].clone();
            tokio::spawn(async move {
                for round in 0..5 {
                    s.append_audit(vec![
                        audit(&format!("test.{i}.{round}"), None),
                        audit("test.second", None),
                    ])
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let records = store.audit_records(0, 1000).await.unwrap();
    assert_eq!(records.len(), 120);
    assert_eq!(
        verify_chain((0, GENESIS_HASH.to_owned()), &records)
            .unwrap()
            .0,
        120
    );
}

/// Two instances insert a live grant for the same ticket and mapping at once: the database
/// lets exactly one through, and the loser's audit records and jobs are rolled back.
pub(super) async fn racing_instances_create_one_live_grant(store: &Fixture) {
    let other = store.second_instance().await.expect("a second instance");
    let instances = [store.shared(), other];
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let s = instances[i % 2].clone();
            tokio::spawn(async move {
                let g = grant("87", "laptop-admin", GrantState::Approved);
                let mut c = insert(&g);
                c.jobs.push(job(Lane::Provider, &g.id.to_string(), 0));
                s.commit(c).await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::Conflict(m)) => assert!(m.contains("live grant"), "{m}"),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(job_count(store).await, 1);
    assert_eq!(all_audit(&**store).await.len(), 1);
}

/// A starting instance releases only lapsed leases: work another live instance holds stays
/// its own until its lease runs out, and then the other instance takes it over.
pub(super) async fn start_up_release_leaves_a_live_instances_leases_alone(store: &Fixture) {
    let other = store.second_instance().await.expect("a second instance");
    let j = job(Lane::Writeback, "jira:1", 0);
    enqueue(store, std::slice::from_ref(&j)).await;
    store.insert_delivery(delivery("evt-1", 0)).await.unwrap();
    // The first instance works with a long lease; the clocks of both stand at at(0).
    assert_eq!(
        other
            .claim_jobs(Lane::Writeback, "alive", at(0), secs(3600), 1)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        other
            .claim_deliveries("alive", at(0), secs(3600), 1)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.release_stale_leases().await.unwrap(), 0);
    assert!(
        store
            .claim_jobs(Lane::Writeback, "newcomer", at(10), secs(60), 1)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .claim_deliveries("newcomer", at(10), secs(60), 1)
            .await
            .unwrap()
            .is_empty()
    );
    // The first instance dies; once its lease lapses the newcomer takes its work over.
    let taken = store
        .claim_jobs(Lane::Writeback, "newcomer", at(3600), secs(60), 1)
        .await
        .unwrap();
    assert_eq!(ids(&taken), vec![j.id]);
    let taken = store
        .claim_deliveries("newcomer", at(3600), secs(60), 1)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].attempts, 2);
}

/// PostgreSQL: the audit trigger refuses edits, and the chain catches one that bypasses it.
pub(super) async fn audit_rows_are_append_only_and_edits_break_the_chain(store: &Fixture) {
    let Raw::Postgres(pool) = &store.raw else {
        panic!("PostgreSQL only")
    };
    store
        .append_audit(vec![audit("a", None), audit("b", None), audit("c", None)])
        .await
        .unwrap();
    let edit = "UPDATE audit SET actor = 'mallory' WHERE seq = 2";
    assert!(sqlx::query(edit).execute(pool).await.is_err());
    assert!(
        sqlx::query("DELETE FROM audit WHERE seq = 3")
            .execute(pool)
            .await
            .is_err()
    );
    sqlx::query("ALTER TABLE audit DISABLE TRIGGER audit_no_update")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(edit).execute(pool).await.unwrap();
    assert_eq!(
        verify_chain((0, GENESIS_HASH.to_owned()), &all_audit(&**store).await),
        Err(crate::audit::ChainError::Tampered { seq: 2 })
    );
}

/// PostgreSQL: a statement blocked past `statement_timeout` (here by a table lock another
/// session holds) fails with `Unavailable` instead of hanging the caller.
pub(super) async fn a_statement_blocked_past_its_timeout_fails_unavailable(store: &Fixture) {
    let (Raw::Postgres(pool), Some(options)) = (&store.raw, &store.pg) else {
        panic!("PostgreSQL only")
    };
    let impatient = PgStore::connect_with(
        options.clone(),
        Arc::new(ManualClock::new(at(0))),
        PgTuning {
            max_connections: 2,
            statement_timeout: std::time::Duration::from_millis(300),
            ..PgTuning::default()
        },
    )
    .await
    .unwrap();
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE grants IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let err = impatient.get_grant(Uuid::now_v7()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable(ref m) if m.contains("timed out")),
        "{err:?}"
    );
    blocker.rollback().await.unwrap();
    assert_eq!(impatient.get_grant(Uuid::now_v7()).await.unwrap(), None);
}

// ---- properties (each case on every configured backend) ----

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn new_audit() -> impl Strategy<Value = NewAudit> {
    (
        -1_000_000_000_000_000_000i64..4_000_000_000_000_000_000i64,
        "[a-z]{1,8}\\.[a-z]{1,8}",
        proptest::option::of(any::<u128>().prop_map(Uuid::from_u128)),
        proptest::option::of(".{0,10}"),
        proptest::option::of(".{0,10}"),
        proptest::option::of(".{0,10}"),
        json_value(),
    )
        .prop_map(
            |(nanos, kind, grant_id, connector, ticket_key, actor, detail)| NewAudit {
                at: Timestamp::from_nanosecond(i128::from(nanos)).unwrap(),
                kind,
                grant_id,
                connector,
                ticket_key,
                actor,
                detail,
            },
        )
}

/// One step against the outbox, indices taken modulo the number of enqueued jobs.
#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        writeback: bool,
        key: u8,
        delay: i64,
    },
    Claim {
        writeback: bool,
        limit: u32,
    },
    Complete(usize),
    Reschedule(usize, i64),
    Dead(usize),
    RetryDead(usize),
    Advance(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<bool>(), 0u8..3, 0i64..3).prop_map(|(writeback, key, delay)| Op::Enqueue { writeback, key, delay }),
        3 => (any::<bool>(), 1u32..4).prop_map(|(writeback, limit)| Op::Claim { writeback, limit }),
        1 => any::<usize>().prop_map(Op::Complete),
        1 => (any::<usize>(), 0i64..30).prop_map(|(i, d)| Op::Reschedule(i, d)),
        1 => any::<usize>().prop_map(Op::Dead),
        1 => any::<usize>().prop_map(Op::RetryDead),
        2 => (0i64..25).prop_map(Op::Advance),
    ]
}

/// The reference model of one outbox row.
#[derive(Debug, Clone)]
struct ModelJob {
    id: Uuid,
    lane: Lane,
    key: u8,
    state: JobState,
    next_at: i64,
    leased_until: Option<i64>,
    attempts: i32,
}

const LEASE: i64 = 20;

fn model_claim(jobs: &mut [ModelJob], lane: Lane, now: i64, limit: u32) -> Vec<Uuid> {
    let mut out = Vec::new();
    for i in 0..jobs.len() {
        let j = &jobs[i];
        let blocked = jobs[..i]
            .iter()
            .any(|e| e.lane == j.lane && e.key == j.key && e.state == JobState::Pending);
        let eligible = j.lane == lane
            && j.state == JobState::Pending
            && j.next_at <= now
            && j.leased_until.is_none_or(|u| u <= now)
            && !blocked;
        if eligible && out.len() < limit as usize {
            out.push(j.id);
            jobs[i].leased_until = Some(now + LEASE);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any audit record, whatever its timestamp precision and detail, chains and verifies
    /// after a trip through the database.
    #[test]
    fn any_audit_record_verifies_after_a_round_trip(records in proptest::collection::vec(new_audit(), 1..6)) {
        runtime().block_on(async {
            for store in &Fixture::all().await {
                store.append_audit(records.clone()).await.unwrap();
                let stored = all_audit(&**store).await;
                prop_assert_eq!(stored.len(), records.len());
                prop_assert!(verify_chain((0, GENESIS_HASH.to_owned()), &stored).is_ok());
                for (s, r) in stored.iter().zip(&records) {
                    prop_assert_eq!(&s.record.detail, &r.detail);
                    prop_assert_eq!(s.record.at.as_millisecond(), r.at.as_millisecond());
                }
            }
            Ok(())
        })?;
    }

    /// Any mix of new and repeated dedupe keys arriving together: each key's first
    /// delivery is accepted and every later one is told the first one's id.
    #[test]
    fn concurrent_inserts_accept_one_per_key_and_name_it_to_the_rest(keys in proptest::collection::vec(0u8..6, 1..60)) {
        runtime().block_on(async {
            for store in &Fixture::all().await {
                let deliveries: Vec<NewDelivery> = keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| delivery(&format!("evt-{k}"), i as i64))
                    .collect();
                let outcomes = futures::future::join_all(
                    deliveries.iter().map(|d| store.insert_delivery(d.clone())),
                )
                .await;
                // Concurrent callers are not ordered: whichever commits first is accepted and
                // every other delivery of its key is told that one's id.
                let mut accepted: std::collections::HashMap<u8, Uuid> = Default::default();
                for ((k, d), outcome) in keys.iter().zip(&deliveries).zip(&outcomes) {
                    if outcome.as_ref().unwrap() == &InsertOutcome::Accepted(d.id) {
                        prop_assert!(accepted.insert(*k, d.id).is_none(), "two accepted for one key");
                    }
                }
                for (k, outcome) in keys.iter().zip(outcomes) {
                    let winner = accepted.get(k).copied();
                    prop_assert!(winner.is_some(), "no delivery of a key was accepted");
                    let outcome = outcome.unwrap();
                    prop_assert!(
                        outcome == InsertOutcome::Accepted(winner.unwrap_or_default())
                            || outcome == InsertOutcome::Duplicate(winner.unwrap_or_default()),
                        "{:?} does not name the accepted delivery", outcome
                    );
                }
                let first = accepted;
                prop_assert_eq!(delivery_count(store).await, first.len() as i64);
            }
            Ok(())
        })?;
    }

    /// Random sequences of enqueue / claim / complete / reschedule / dead-letter / retry /
    /// time steps: every claim returns exactly what the ordering and lease rules allow.
    #[test]
    fn job_claims_follow_queue_order_and_leases(ops in proptest::collection::vec(op(), 1..40)) {
        runtime().block_on(async {
            for store in &Fixture::all().await {
                let mut model: Vec<ModelJob> = Vec::new();
                let mut now = 0i64;
                for op in ops.clone() {
                    match op {
                        Op::Enqueue { writeback, key, delay } => {
                            let lane = if writeback { Lane::Writeback } else { Lane::Provider };
                            let j = job(lane, &format!("key-{key}"), now + delay);
                            enqueue(store, std::slice::from_ref(&j)).await;
                            model.push(ModelJob { id: j.id, lane, key, state: JobState::Pending,
                                next_at: now + delay, leased_until: None, attempts: 0 });
                        }
                        Op::Claim { writeback, limit } => {
                            let lane = if writeback { Lane::Writeback } else { Lane::Provider };
                            let got = store.claim_jobs(lane, "w", at(now), secs(LEASE), limit).await.unwrap();
                            let expected = model_claim(&mut model, lane, now, limit);
                            prop_assert_eq!(ids(&got), expected);
                            let keys: HashSet<_> = got.iter().map(|j| j.queue_key.clone()).collect();
                            prop_assert_eq!(keys.len(), got.len());
                        }
                        Op::Complete(i) if !model.is_empty() => {
                            let n = model.len();
                            let m = &mut model[i % n];
                            store.complete_job(m.id).await.unwrap();
                            m.state = JobState::Done;
                            m.leased_until = None;
                        }
                        Op::Reschedule(i, delay) if !model.is_empty() => {
                            let n = model.len();
                            let m = &mut model[i % n];
                            let res = store.reschedule_job(m.id, m.attempts + 1, at(now + delay), "retry").await;
                            prop_assert_eq!(res.is_ok(), m.state == JobState::Pending);
                            if m.state == JobState::Pending {
                                m.attempts += 1;
                                m.next_at = now + delay;
                                m.leased_until = None;
                            }
                        }
                        Op::Dead(i) if !model.is_empty() => {
                            let n = model.len();
                            let m = &mut model[i % n];
                            let res = store.dead_letter_job(m.id, m.attempts, "dead").await;
                            prop_assert_eq!(res.is_ok(), m.state == JobState::Pending);
                            if m.state == JobState::Pending {
                                m.state = JobState::Dead;
                                m.leased_until = None;
                            }
                        }
                        Op::RetryDead(i) if !model.is_empty() => {
                            let n = model.len();
                            let m = &mut model[i % n];
                            let changed = store.retry_dead_job(m.id, at(now)).await.unwrap();
                            prop_assert_eq!(changed, m.state == JobState::Dead);
                            if changed {
                                m.state = JobState::Pending;
                                m.next_at = now;
                            }
                        }
                        Op::Advance(by) => now += by,
                        Op::Complete(_) | Op::Reschedule(..) | Op::Dead(_) | Op::RetryDead(_) => {}
                    }
                }
                // The stored rows agree with the model at the end.
                for m in &model {
                    let state = store.job_state(m.id).await;
                    prop_assert_eq!(state.as_str(), m.state.as_str());
                }
            }
            Ok(())
        })?;
    }
}

/// Generates, in module `$module`, one `#[tokio::test]` per suite function, each running it on
/// the fixture `$fixture` (an `Option<Fixture>`: `None` means skipped, and said so).
macro_rules! run_on {
    ($module:ident, $fixture:expr, [$($name:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(f) = $fixture {
                        super::$name(&f).await;
                    }
                }
            )*
        }
    };
}

/// Runs suite functions on both backends.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        run_on!(on_sqlite, Some(super::Fixture::sqlite().await), [$($name),*]);
        run_on!(on_postgres, super::Fixture::postgres().await, [$($name),*]);
    };
}

conformance!(
    duplicate_delivery_returns_the_first_id_and_inserts_nothing,
    lapsed_delivery_lease_makes_it_claimable_again,
    a_reused_delivery_id_fails_only_its_own_caller,
    grant_round_trips_and_updates_only_at_the_expected_version,
    commit_is_atomic_a_conflict_leaves_no_audit_rows_and_no_jobs,
    commit_completes_the_job_that_caused_it,
    a_batch_commit_fails_only_its_conflicting_member_and_chains_the_rest_in_order,
    a_batch_member_failing_after_its_grant_row_is_undone_alone,
    grants_are_read_together_by_id_and_unknown_ids_are_left_out,
    finishing_deliveries_in_a_batch_fails_only_those_no_longer_pending,
    the_inbox_turn_marks_before_it_claims_and_a_claim_without_patience_answers_at_once,
    second_live_grant_for_the_same_ticket_conflicts_until_the_first_is_terminal,
    live_grants_are_counted_by_subject_and_by_target_across_tickets,
    unresolved_revoke_names_the_oldest_revoke_failed_grant_of_a_subject_or_target,
    active_grant_without_a_deadline_is_refused,
    due_grants_are_active_ones_past_their_deadline_earliest_first,
    list_and_count_grants,
    later_job_waits_for_an_earlier_pending_job_of_its_queue_key_but_not_a_dead_one,
    lapsed_job_lease_makes_it_claimable_again_and_finished_jobs_cannot_be_revived,
    concurrent_claims_never_return_the_same_job,
    outbox_stats_count_pending_and_dead_and_age_the_oldest_pending,
    concurrent_audit_appends_never_fork_the_chain,
);

// Several instances on one database: PostgreSQL only.
run_on!(
    on_postgres_only,
    super::Fixture::postgres().await,
    [
        two_instances_claim_disjoint_work,
        concurrent_appenders_on_two_instances_keep_one_chain,
        racing_instances_create_one_live_grant,
        start_up_release_leaves_a_live_instances_leases_alone,
        audit_rows_are_append_only_and_edits_break_the_chain,
        a_statement_blocked_past_its_timeout_fails_unavailable,
    ]
);
