//! The PostgreSQL store: the backend for running several jitbridge instances on one database.
//!
//! The same tables and row conventions as the SQLite store (see `migrations/postgres/`), with
//! concurrency made safe for many processes instead of one:
//! - Claims lock candidate rows with `FOR UPDATE SKIP LOCKED` inside the claiming `UPDATE`, so
//!   two instances polling at once take disjoint rows and never wait on each other. A lease
//!   (`claimed_by`, `claimed_until`) makes a row claimable again once it lapses, which is how a
//!   crashed instance's work is taken over.
//! - [`Store::release_stale_leases`] releases only leases that have already lapsed: another
//!   instance may be alive and working on the rest.
//! - Audit appends take a transaction-scoped advisory lock before reading the chain head, so
//!   appends from every instance form one chain.
//! - "At most one live grant per (connector, ticket, mapping)" is a partial unique index.
//! - Every statement is bounded by `statement_timeout`, every pool checkout by an acquire
//!   timeout: a stuck database makes calls fail with `Unavailable`, never hang.
//!
//! Inbox inserts are single-row transactions (`ON CONFLICT DO NOTHING` on the dedupe key): the
//! pool already lets concurrent deliveries commit in parallel, so no group commit is needed.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::{SignedDuration, Timestamp};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{PgPool, Row, SqlSafeStr};
use uuid::Uuid;

use crate::audit::{AuditRecord, GENESIS_HASH, NewAudit, chain_hash};
use crate::clock::{SharedClock, SystemClock};
use crate::grants::{Grant, GrantState};
use crate::store::LEASE_LAPSED;
use crate::store::reads::{Reads, bounded_limit, jobs_from};
use crate::store::rows::{
    self, GrantColumns, at_storage_precision, bounded, duration_ms, ms, to_json,
};
use crate::store::{
    Commit, Delivery, DeliveryOutcome, GrantFilter, InsertOutcome, Job, JobState, Lane,
    LiveGrantCounts, NewDelivery, NewJob, OutboxStats, Store, StoreError,
};

/// Longest error text kept on a row.
const MAX_ERROR_BYTES: usize = 2000;
/// The advisory lock key that serializes audit appends across instances ("jitaudit" in ASCII).
const AUDIT_CHAIN_LOCK: i64 = 0x6a69_7461_7564_6974;

/// The PostgreSQL schema, embedded so the binary needs no migration files at run time. sqlx
/// takes an advisory lock while migrating, so instances starting together migrate once.
fn migrator() -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        1,
        "init".into(),
        MigrationType::Simple,
        include_str!("../../migrations/postgres/0001_init.sql").into_sql_str(),
        false,
    )])
}

/// Connection-pool limits and timeouts of the PostgreSQL store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgTuning {
    /// Connections per instance. The inbox, two outbox lanes, the scheduler and the admin API
    /// each hold at most one at a time, plus concurrent webhook inserts.
    pub max_connections: u32,
    /// How long a caller waits for a pooled connection before `Unavailable`.
    pub acquire_timeout: Duration,
    /// Server-side bound on every statement (including waits for row locks).
    pub statement_timeout: Duration,
}

impl Default for PgTuning {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(15),
        }
    }
}

/// The shared store: a connection pool to one PostgreSQL database that any number of
/// jitbridge instances use at once.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Where new job rows get their `created_at` and finished rows their `finished_at`.
    clock: SharedClock,
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/db?…`) with default tuning and
    /// migrates the schema.
    pub async fn connect(url: &str, clock: SharedClock) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| {
            // The URL may hold a password; the parser's message never echoes it.
            StoreError::Unavailable(format!("invalid PostgreSQL URL: {e}"))
        })?;
        Self::connect_with(options, clock, PgTuning::default()).await
    }

    /// Like [`PgStore::connect`] with explicit connect options (e.g. a `search_path`) and
    /// tuning. A `statement_timeout` already given in `options` is kept.
    pub async fn connect_with(
        options: PgConnectOptions,
        clock: SharedClock,
        tuning: PgTuning,
    ) -> Result<PgStore, StoreError> {
        let has_timeout = options
            .get_options()
            .is_some_and(|o| o.contains("statement_timeout"));
        let options = if has_timeout {
            options
        } else {
            options.options([(
                "statement_timeout",
                format!("{}ms", tuning.statement_timeout.as_millis()),
            )])
        };
        let pool = PgPoolOptions::new()
            .max_connections(tuning.max_connections.max(1))
            .acquire_timeout(tuning.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(|e| match db_error(e) {
                StoreError::Unavailable(msg) => {
                    StoreError::Unavailable(format!("cannot connect to PostgreSQL: {msg}"))
                }
                other => other,
            })?;
        migrator().run(&pool).await.map_err(migrate_error)?;
        Ok(PgStore { pool, clock })
    }

    /// Connects with the system clock (for tools).
    pub async fn connect_system(url: &str) -> Result<PgStore, StoreError> {
        Self::connect(url, Arc::new(SystemClock)).await
    }

    /// Closes every pooled connection.
    pub async fn close(self) {
        self.pool.close().await;
    }

    /// The pool, for tests and tools that need raw SQL (e.g. tamper checks).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The queries shared with the SQLite store.
    fn reads(&self) -> Reads<'_, sqlx::Postgres> {
        Reads {
            pool: &self.pool,
            db_error,
        }
    }

    /// Explains why a pending-only update of `table` matched no row.
    async fn not_pending(&self, table: &'static str, id: Uuid) -> StoreError {
        let sql = match table {
            "jobs" => "SELECT state FROM jobs WHERE id = $1",
            _ => "SELECT state FROM deliveries WHERE id = $1",
        };
        let noun = if table == "jobs" { "job" } else { "delivery" };
        match sqlx::query_scalar::<_, String>(sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
        {
            Ok(Some(state)) => {
                StoreError::Conflict(format!("{noun} {id} is {state}, no longer pending"))
            }
            Ok(None) => StoreError::Conflict(format!("{noun} {id} does not exist")),
            Err(e) => db_error(e),
        }
    }
}

/// Maps a driver error to the store's vocabulary by SQLSTATE: unique violations are
/// `Conflict`; other integrity violations and data corruption `Corrupt`; serialization
/// failures, deadlocks, timeouts, lost connections and the rest `Unavailable` (retryable).
/// Messages carry the server's primary text only, never the DETAIL that echoes key values.
fn db_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or_default().into_owned();
            match code.as_str() {
                "23505" => StoreError::Conflict(match d.constraint() {
                    Some(constraint) => format!("{} ({constraint})", d.message()),
                    None => d.message().to_owned(),
                }),
                // U+0000 in a TEXT value: the input, not the database, is at fault.
                "22021" => StoreError::Corrupt(format!(
                    "value refused by PostgreSQL (text cannot contain U+0000): {}",
                    d.message()
                )),
                c if c.starts_with("23") => {
                    StoreError::Corrupt(format!("row refused by the schema: {}", d.message()))
                }
                "XX001" | "XX002" => {
                    StoreError::Corrupt(format!("database is damaged: {}", d.message()))
                }
                "57014" => StoreError::Unavailable(format!(
                    "statement timed out or was cancelled: {}",
                    d.message()
                )),
                _ => StoreError::Unavailable(format!("database error {code}: {}", d.message())),
            }
        }
        sqlx::Error::PoolTimedOut => {
            StoreError::Unavailable("timed out waiting for a database connection".to_owned())
        }
        sqlx::Error::PoolClosed => StoreError::Unavailable("the store is closed".to_owned()),
        sqlx::Error::Io(io) => StoreError::Unavailable(format!("I/O error: {io}")),
        e @ (sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. }) => StoreError::Corrupt(e.to_string()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Maps a migration failure; a schema from a newer or modified release is not retryable.
fn migrate_error(e: sqlx::migrate::MigrateError) -> StoreError {
    use sqlx::migrate::MigrateError as M;
    match e {
        M::Execute(e) | M::ExecuteMigration(e, _) => match db_error(e) {
            StoreError::Unavailable(msg) => {
                StoreError::Unavailable(format!("migrating the PostgreSQL schema: {msg}"))
            }
            other => other,
        },
        M::VersionMissing(v) => StoreError::Corrupt(format!(
            "the PostgreSQL database has schema version {v}, which this jitbridge does not \
             know (written by a newer release?)"
        )),
        other => StoreError::Corrupt(format!("migrating the PostgreSQL schema: {other}")),
    }
}

/// `now + lease` in unix milliseconds, saturating.
fn lease_until(now: Timestamp, lease: SignedDuration) -> i64 {
    ms(now).saturating_add(duration_ms(lease))
}

/// Inserts `job` (pending, unleased) inside the caller's transaction.
async fn insert_job(
    conn: &mut PgConnection,
    job: &NewJob,
    created_at: i64,
) -> Result<(), StoreError> {
    let payload = to_json("job payload", &job.payload)?;
    sqlx::query(
        "INSERT INTO jobs (id, lane, queue_key, payload, state, attempts, next_at, created_at) \
         VALUES ($1, $2, $3, $4, 'pending', 0, $5, $6)",
    )
    .bind(job.id.to_string())
    .bind(job.lane.as_str())
    .bind(job.queue_key.as_str())
    .bind(payload)
    .bind(ms(job.not_before))
    .bind(created_at)
    .execute(&mut *conn)
    .await
    .map_err(|e| match db_error(e) {
        StoreError::Conflict(_) => StoreError::Conflict(format!("job {} already exists", job.id)),
        other => other,
    })?;
    Ok(())
}

/// Marks a job done and releases its lease (idempotent, as in the SQLite store).
async fn mark_job_done(conn: &mut PgConnection, id: Uuid, at: i64) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE jobs SET state = 'done', claimed_by = NULL, claimed_until = NULL, \
         finished_at = COALESCE(finished_at, $2) WHERE id = $1",
    )
    .bind(id.to_string())
    .bind(at)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    if done.rows_affected() == 0 {
        return Err(StoreError::Conflict(format!("job {id} does not exist")));
    }
    Ok(())
}

/// The record as PostgreSQL can store it: a TEXT value cannot hold U+0000, which an ITSM
/// payload may carry in a name or key, so it becomes U+FFFD. The chain hashes this form, so it
/// verifies after a round trip. (`detail` is JSON text, where U+0000 is escaped and kept.)
fn storable_audit(record: &NewAudit) -> NewAudit {
    let clean = |text: &Option<String>| text.as_ref().map(|t| t.replace('\0', "\u{FFFD}"));
    NewAudit {
        kind: record.kind.replace('\0', "\u{FFFD}"),
        connector: clean(&record.connector),
        ticket_key: clean(&record.ticket_key),
        actor: clean(&record.actor),
        ..record.clone()
    }
}

/// Appends `records` to the audit chain inside the caller's transaction. The advisory lock is
/// held until that transaction ends, so no other instance can read the same head and fork
/// the chain.
async fn append_chained(conn: &mut PgConnection, records: &[NewAudit]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(AUDIT_CHAIN_LOCK)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    let head = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    let (mut seq, mut prev_hash) = match head {
        Some(row) => (
            row.try_get::<i64, _>("seq").map_err(db_error)?,
            row.try_get::<String, _>("hash").map_err(db_error)?,
        ),
        None => (0, GENESIS_HASH.to_owned()),
    };
    for record in records {
        // Hash exactly what will read back: instants are stored to the millisecond.
        let mut record = storable_audit(record);
        record.at = at_storage_precision(record.at);
        seq += 1;
        let hash = chain_hash(&prev_hash, seq, &record);
        let detail = to_json("audit detail", &record.detail)?;
        sqlx::query(
            "INSERT INTO audit (seq, at, kind, grant_id, connector, ticket_key, actor, detail, \
             prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(seq)
        .bind(ms(record.at))
        .bind(record.kind.as_str())
        .bind(record.grant_id.map(|id| id.to_string()))
        .bind(record.connector.as_deref())
        .bind(record.ticket_key.as_deref())
        .bind(record.actor.as_deref())
        .bind(detail)
        .bind(prev_hash.as_str())
        .bind(hash.as_str())
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
        prev_hash = hash;
    }
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Other instances may be alive and holding leases, so only leases that have lapsed by this
    /// instance's clock are cleared (such rows are claimable anyway; clearing them just keeps
    /// `claimed_by` honest for operators). A crashed instance's work is taken over when its
    /// leases lapse, never earlier.
    async fn release_stale_leases(&self) -> Result<u64, StoreError> {
        let now = ms(self.clock.now());
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let mut released = 0;
        released += sqlx::query(
            "UPDATE deliveries SET claimed_by = NULL, claimed_until = NULL \
             WHERE state = 'pending' AND claimed_until IS NOT NULL AND claimed_until <= $1",
        )
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected();
        // A lapsed job's next run is a re-attempt: its worker never reported back.
        released += sqlx::query(
            "UPDATE jobs SET claimed_by = NULL, claimed_until = NULL, \
             last_error = COALESCE(last_error, $2) \
             WHERE state = 'pending' AND claimed_until IS NOT NULL AND claimed_until <= $1",
        )
        .bind(now)
        .bind(LEASE_LAPSED)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected();
        tx.commit().await.map_err(db_error)?;
        Ok(released)
    }

    // ---- inbox ----

    /// One autocommit statement: answered after the row committed. A concurrent insert of the
    /// same dedupe key waits for the first to commit and then reads its id.
    async fn insert_delivery(&self, d: NewDelivery) -> Result<InsertOutcome, StoreError> {
        let headers = to_json("delivery headers", &d.headers)?;
        let inserted = sqlx::query(
            "INSERT INTO deliveries (id, connector, dedupe_key, received_at, headers, body, \
             state, attempts, next_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $4) \
             ON CONFLICT (connector, dedupe_key) DO NOTHING",
        )
        .bind(d.id.to_string())
        .bind(d.connector.as_str())
        .bind(d.dedupe_key.as_str())
        .bind(ms(d.received_at))
        .bind(headers)
        .bind(d.body.as_slice())
        .execute(&self.pool)
        .await
        .map_err(|e| match db_error(e) {
            StoreError::Conflict(_) => {
                StoreError::Conflict(format!("delivery id {} is already used", d.id))
            }
            other => other,
        })?;
        if inserted.rows_affected() == 1 {
            return Ok(InsertOutcome::Accepted(d.id));
        }
        let first: String = sqlx::query_scalar(
            "SELECT id FROM deliveries WHERE connector = $1 AND dedupe_key = $2",
        )
        .bind(d.connector.as_str())
        .bind(d.dedupe_key.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        let first = Uuid::parse_str(&first)
            .map_err(|e| StoreError::Corrupt(format!("deliveries.id: not a UUID: {e}")))?;
        Ok(InsertOutcome::Duplicate(first))
    }

    async fn claim_deliveries(
        &self,
        worker: &str,
        now: Timestamp,
        lease: SignedDuration,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Rows another instance is claiming right now are skipped, not waited for; a row that
        // instance committed meanwhile is re-checked against the WHERE clause by PostgreSQL.
        // The pick is a MATERIALIZED CTE: as an `IN (subquery)` the planner may run the
        // LIMITed locking subquery more than once and lease more rows than asked for.
        let rows = sqlx::query(
            "WITH picked AS MATERIALIZED (SELECT id FROM deliveries \
               WHERE state = 'pending' AND next_at <= $3 \
               AND (claimed_until IS NULL OR claimed_until <= $3) \
               ORDER BY received_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) \
             UPDATE deliveries d SET claimed_by = $1, claimed_until = $2, \
               attempts = d.attempts + 1 \
             FROM picked WHERE d.id = picked.id \
             RETURNING d.id, d.connector, d.dedupe_key, d.received_at, d.headers, d.body, \
               d.attempts",
        )
        .bind(worker)
        .bind(lease_until(now, lease))
        .bind(ms(now))
        .bind(bounded_limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut claimed = rows
            .iter()
            .map(rows::delivery)
            .collect::<Result<Vec<_>, _>>()?;
        claimed.sort_by_key(|d| (d.received_at, d.id));
        Ok(claimed)
    }

    async fn finish_delivery(&self, id: Uuid, outcome: DeliveryOutcome) -> Result<(), StoreError> {
        let (state, reason) = match &outcome {
            DeliveryOutcome::Processed => ("processed", None),
            DeliveryOutcome::Rejected(reason) => {
                ("rejected", Some(bounded(reason, MAX_ERROR_BYTES)))
            }
        };
        let done = sqlx::query(
            "UPDATE deliveries SET state = $2, last_error = COALESCE($3, last_error), \
             claimed_by = NULL, claimed_until = NULL, finished_at = $4 \
             WHERE id = $1 AND state = 'pending'",
        )
        .bind(id.to_string())
        .bind(state)
        .bind(reason)
        .bind(ms(self.clock.now()))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(self.not_pending("deliveries", id).await);
        }
        Ok(())
    }

    async fn retry_delivery(
        &self,
        id: Uuid,
        not_before: Timestamp,
        error: &str,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE deliveries SET next_at = $2, last_error = $3, claimed_by = NULL, \
             claimed_until = NULL WHERE id = $1 AND state = 'pending'",
        )
        .bind(id.to_string())
        .bind(ms(not_before))
        .bind(bounded(error, MAX_ERROR_BYTES))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(self.not_pending("deliveries", id).await);
        }
        Ok(())
    }

    // ---- grants ----

    async fn commit(&self, c: Commit) -> Result<(), StoreError> {
        let g = &c.grant;
        if g.state == GrantState::Active && g.expires_at.is_none() {
            return Err(StoreError::Corrupt(format!(
                "refusing to store active grant {} without a deadline",
                g.id
            )));
        }
        let columns = GrantColumns::new(g)?;
        let live_exists = || {
            StoreError::Conflict(format!(
                "a live grant already exists for {} ticket {} mapping {}",
                g.ticket.connector, g.ticket.key, g.mapping
            ))
        };
        let now = ms(self.clock.now());
        let mut tx = self.pool.begin().await.map_err(db_error)?;

        match c.expected_version {
            None => {
                columns
                    .bind(sqlx::query(concat!(
                        "INSERT INTO grants (",
                        grant_columns!(),
                        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
                         $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)"
                    )))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| match db_error(e) {
                        StoreError::Conflict(msg) if msg.contains("grants_pkey") => {
                            StoreError::Conflict(format!("grant {} already exists", g.id))
                        }
                        StoreError::Conflict(_) => live_exists(),
                        other => other,
                    })?;
            }
            Some(expected) => {
                // A concurrent commit of the same grant waits on the row lock and then finds
                // the version moved on: optimistic concurrency across instances.
                let updated = columns
                    .bind(sqlx::query(
                        "UPDATE grants SET connector = $2, ticket_id = $3, ticket_key = $4, \
                         ticket_url = $5, mapping = $6, state = $7, subject = $8, target = $9, \
                         scope = $10, provider = $11, duration_secs = $12, requester = $13, \
                         approvers = $14, requested_at = $15, approved_at = $16, starts_at = $17, \
                         expires_at = $18, ended_at = $19, revoke_cause = $20, reason = $21, \
                         last_event_at = $22, context = $23, version = $24 \
                         WHERE id = $1 AND version = $25",
                    ))
                    .bind(expected)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| match db_error(e) {
                        StoreError::Conflict(_) => live_exists(),
                        other => other,
                    })?;
                if updated.rows_affected() == 0 {
                    return Err(StoreError::Conflict(format!(
                        "grant {} is no longer at version {expected} (changed or missing)",
                        g.id
                    )));
                }
            }
        }

        append_chained(&mut tx, &c.audit).await?;
        for job in &c.jobs {
            insert_job(&mut tx, job, now).await?;
        }
        if let Some(job) = c.complete_job {
            mark_job_done(&mut tx, job, now).await?;
        }
        tx.commit().await.map_err(db_error)
    }

    async fn get_grant(&self, id: Uuid) -> Result<Option<Grant>, StoreError> {
        self.reads().get_grant(id).await
    }

    async fn get_grants(&self, ids: &[Uuid]) -> Result<Vec<Grant>, StoreError> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let rows = sqlx::query(concat!(
            "SELECT ",
            grant_columns!(),
            " FROM grants WHERE id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter().map(rows::grant).collect()
    }

    async fn live_grant(
        &self,
        connector: &str,
        ticket_id: &str,
        mapping: &str,
    ) -> Result<Option<Grant>, StoreError> {
        self.reads().live_grant(connector, ticket_id, mapping).await
    }

    async fn latest_grant(
        &self,
        connector: &str,
        ticket_id: &str,
        mapping: &str,
    ) -> Result<Option<Grant>, StoreError> {
        self.reads()
            .latest_grant(connector, ticket_id, mapping)
            .await
    }

    async fn list_grants(&self, filter: &GrantFilter) -> Result<Vec<Grant>, StoreError> {
        self.reads().list_grants(filter).await
    }

    /// Every state, in [`ALL_STATES`](crate::grants::state::ALL_STATES) order, zeros included (so gauges drop back to 0).
    async fn count_grants_by_state(&self) -> Result<Vec<(GrantState, i64)>, StoreError> {
        self.reads().count_grants_by_state().await
    }

    async fn due_grants(&self, now: Timestamp, limit: u32) -> Result<Vec<Grant>, StoreError> {
        self.reads().due_grants(now, limit).await
    }

    async fn next_deadline(&self) -> Result<Option<Timestamp>, StoreError> {
        self.reads().next_deadline().await
    }

    /// Counts what is committed now. Two instances approving for the same subject at the same
    /// instant can each see the count below the cap (the `Commit` does not carry the caps, so
    /// they cannot be re-checked inside it), so such a race can exceed a cap.
    async fn count_live_grants(
        &self,
        subject: &str,
        target: &str,
    ) -> Result<LiveGrantCounts, StoreError> {
        self.reads().count_live_grants(subject, target).await
    }

    async fn unresolved_revoke(
        &self,
        subject: &str,
        target: &str,
    ) -> Result<Option<Grant>, StoreError> {
        self.reads().unresolved_revoke(subject, target).await
    }

    // ---- outbox ----

    async fn claim_jobs(
        &self,
        lane: Lane,
        worker: &str,
        now: Timestamp,
        lease: SignedDuration,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Only the head (lowest seq) pending job of each (lane, queue key) is eligible, so a
        // claim never takes two jobs of one key nor overtakes a backing-off or leased one. A
        // head another instance is locking is skipped, and its successors are not eligible.
        let rows = sqlx::query(
            "WITH picked AS MATERIALIZED (SELECT j.seq FROM jobs j \
               WHERE j.lane = $3 AND j.state = 'pending' AND j.next_at <= $4 \
               AND (j.claimed_until IS NULL OR j.claimed_until <= $4) \
               AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.lane = j.lane \
                 AND e.queue_key = j.queue_key AND e.state = 'pending' AND e.seq < j.seq) \
               ORDER BY j.seq LIMIT $5 FOR UPDATE OF j SKIP LOCKED) \
             UPDATE jobs u SET claimed_by = $1, claimed_until = $2, \
               last_error = CASE WHEN u.claimed_until IS NULL THEN u.last_error \
                 ELSE COALESCE(u.last_error, $6) END \
             FROM picked WHERE u.seq = picked.seq \
             RETURNING u.seq, u.id, u.lane, u.queue_key, u.payload, u.state, u.attempts, \
               u.next_at, u.last_error, u.created_at",
        )
        .bind(worker)
        .bind(lease_until(now, lease))
        .bind(lane.as_str())
        .bind(ms(now))
        .bind(bounded_limit(limit))
        .bind(LEASE_LAPSED)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut claimed = jobs_from(rows)?;
        claimed.sort_by_key(|j| j.seq);
        Ok(claimed)
    }

    async fn complete_job(&self, id: Uuid) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        mark_job_done(&mut conn, id, ms(self.clock.now())).await
    }

    async fn reschedule_job(
        &self,
        id: Uuid,
        attempts: i32,
        next_at: Timestamp,
        error: &str,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET attempts = $2, next_at = $3, last_error = $4, claimed_by = NULL, \
             claimed_until = NULL WHERE id = $1 AND state = 'pending'",
        )
        .bind(id.to_string())
        .bind(attempts)
        .bind(ms(next_at))
        .bind(bounded(error, MAX_ERROR_BYTES))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(self.not_pending("jobs", id).await);
        }
        Ok(())
    }

    async fn dead_letter_job(
        &self,
        id: Uuid,
        attempts: i32,
        error: &str,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET state = 'dead', attempts = $2, last_error = $3, claimed_by = NULL, \
             claimed_until = NULL, finished_at = $4 WHERE id = $1 AND state = 'pending'",
        )
        .bind(id.to_string())
        .bind(attempts)
        .bind(bounded(error, MAX_ERROR_BYTES))
        .bind(ms(self.clock.now()))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(self.not_pending("jobs", id).await);
        }
        Ok(())
    }

    async fn retry_dead_job(&self, id: Uuid, now: Timestamp) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET state = 'pending', next_at = $2, claimed_by = NULL, \
             claimed_until = NULL, finished_at = NULL WHERE id = $1 AND state = 'dead'",
        )
        .bind(id.to_string())
        .bind(ms(now))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_jobs(&self, state: JobState, limit: u32) -> Result<Vec<Job>, StoreError> {
        self.reads().list_jobs(state, limit).await
    }

    async fn outbox_stats(&self, lane: Lane, now: Timestamp) -> Result<OutboxStats, StoreError> {
        self.reads().outbox_stats(lane, now).await
    }

    // ---- audit ----

    async fn append_audit(&self, records: Vec<NewAudit>) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        append_chained(&mut tx, &records).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn audit_records(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        self.reads().audit_records(after, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_server_is_unavailable_and_the_password_is_never_echoed() {
        let options =
            PgConnectOptions::from_str("postgres://jitbridge:hunter2-secret@127.0.0.1:1/jitbridge")
                .unwrap();
        let tuning = PgTuning {
            acquire_timeout: Duration::from_secs(2),
            ..PgTuning::default()
        };
        let err = PgStore::connect_with(options, Arc::new(SystemClock), tuning)
            .await
            .unwrap_err();
        let StoreError::Unavailable(msg) = &err else {
            panic!("expected Unavailable, got {err:?}")
        };
        assert!(msg.contains("cannot connect to PostgreSQL"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[tokio::test]
    async fn a_malformed_url_is_refused_without_echoing_it() {
        let err = PgStore::connect_system("postgres://jitbridge:hunter2@[::1/db")
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Unavailable(ref m) if m.contains("invalid PostgreSQL URL") && !m.contains("hunter2")),
            "{err:?}"
        );
    }

    #[test]
    fn pool_and_decode_errors_map_to_the_store_vocabulary() {
        assert!(matches!(
            db_error(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            db_error(sqlx::Error::Io(std::io::Error::other("reset"))),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            db_error(sqlx::Error::ColumnNotFound("x".into())),
            StoreError::Corrupt(_)
        ));
    }
}
