//! The embedded SQLite store: the default backend, so a single jitbridge runs with nothing but
//! a file.
//!
//! Durability and exclusivity come first:
//! - WAL journal with `synchronous=FULL`: a commit that returned survives a power cut, and
//!   readers never block the writer.
//! - Every read-then-write transaction (claims, grant commits, audit appends) starts with
//!   `BEGIN IMMEDIATE`, taking SQLite's single write lock up front, so two writers can never
//!   interleave a read and a write (no lost updates, no duplicate claims, no forked audit chain).
//! - One process per database file: an exclusive OS lock on `<db>.lock` is held for the life of
//!   the store. Several instances sharing work must use PostgreSQL.
//! - "At most one live grant per (connector, ticket, mapping)" is a partial unique index, so
//!   the database itself refuses a second one even if two approvals race.
//!
//! - Inbox inserts are group-committed by one writer task ([`GroupCommit`]): many concurrent
//!   deliveries share one transaction and one fsync, and each caller is answered only after
//!   that commit returned.
//!
//! The schema lives in `migrations/sqlite/` and is embedded at compile time.

mod ingest;
mod rows;

pub use ingest::{GroupCommit, IngestStats};

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::{SignedDuration, Timestamp};
use sqlx::error::ErrorKind;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlSafeStr, SqliteConnection, SqlitePool, SqliteTransaction};
use uuid::Uuid;

use crate::audit::{AuditRecord, GENESIS_HASH, NewAudit, chain_hash};
use crate::clock::{SharedClock, SystemClock};
use crate::grants::state::ALL_STATES;
use crate::grants::{Grant, GrantState};
use crate::store::{
    Commit, Delivery, DeliveryOutcome, GrantFilter, InsertOutcome, Job, JobState, Lane,
    LiveGrantCounts, NewDelivery, NewJob, OutboxStats, Store, StoreError,
};

use rows::{GrantColumns, at_storage_precision, bounded, duration_ms, ms, to_json};

/// Grant columns in decode and bind order (a macro so queries stay `&'static str`).
macro_rules! grant_columns {
    () => {
        "id, connector, ticket_id, ticket_key, ticket_url, mapping, state, subject, target, \
         scope, provider, duration_secs, requester, approvers, requested_at, approved_at, \
         starts_at, expires_at, ended_at, revoke_cause, reason, last_event_at, context, version"
    };
}

/// Job columns in decode order.
macro_rules! job_columns {
    () => {
        "seq, id, lane, queue_key, payload, state, attempts, next_at, last_error, created_at"
    };
}

/// `last_error` of a job whose worker never reported back (crash, kill, lapsed lease): the next
/// run is a re-attempt, since the call may have reached the other side.
const LEASE_LAPSED: &str = "the previous attempt ended without a result (lease lapsed)";

/// Audit columns in decode order.
macro_rules! audit_columns {
    () => {
        "seq, at, kind, grant_id, connector, ticket_key, actor, detail, prev_hash, hash"
    };
}

/// The states in which a grant is finished; must match the `grants_one_live` index predicate.
macro_rules! live_grant_predicate {
    () => {
        "state NOT IN ('expired', 'revoked', 'denied', 'failed', 'cancelled')"
    };
}

/// How long a statement waits for SQLite's write lock before giving up with `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// SQLite has one writer; a few connections let readers (admin API, metrics) proceed meanwhile.
const MAX_CONNECTIONS: u32 = 4;
/// Upper bound on rows returned by any one claim or listing.
const MAX_ROWS: u32 = 1000;
/// Rows listed when a filter does not say.
const DEFAULT_LIST_LIMIT: u32 = 100;
/// Longest error text kept on a row.
const MAX_ERROR_BYTES: usize = 2000;

/// The SQLite schema, embedded so the binary needs no migration files at run time.
fn migrator() -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        1,
        "init".into(),
        MigrationType::Simple,
        include_str!("../../migrations/sqlite/0001_init.sql").into_sql_str(),
        false,
    )])
}

/// Tuning knobs of the SQLite store, separate from the path and clock so the daemon can keep
/// the defaults while tests and benchmarks vary them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteTuning {
    /// How long a statement waits for SQLite's write lock before failing with `Unavailable`.
    pub busy_timeout: Duration,
    /// How inbox inserts are batched into shared commits.
    pub group_commit: GroupCommit,
}

impl Default for SqliteTuning {
    fn default() -> Self {
        Self {
            busy_timeout: BUSY_TIMEOUT,
            group_commit: GroupCommit::default(),
        }
    }
}

/// The embedded store: one SQLite database file, owned exclusively by this process.
///
/// Dropping it (or [`SqliteStore::close`]) releases the instance lock once the inbox writer
/// has answered its last queued delivery.
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The group-commit writer every `insert_delivery` goes through.
    ingest: ingest::Ingest,
    /// Where new job rows get their `created_at` (the backlog-age metric); injectable so
    /// simulated time in tests gives meaningful ages.
    clock: SharedClock,
    /// The database file, for error messages.
    path: PathBuf,
    /// Held (exclusively locked) for the lifetime of the store and of its inbox writer; the OS
    /// drops the lock with the last of them.
    _instance_lock: Arc<File>,
}

impl SqliteStore {
    /// Opens (creating the directory and file if missing) and migrates the database at `path`,
    /// taking the exclusive instance lock. Fails with [`StoreError::Locked`] when another
    /// jitbridge process already uses the file.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_with_clock(path, Arc::new(SystemClock)).await
    }

    /// Like [`SqliteStore::open`], but stamps job creation times from `clock`, so that the
    /// outbox backlog age agrees with the clock the rest of the daemon (or a test) uses.
    pub async fn open_with_clock(
        path: &Path,
        clock: SharedClock,
    ) -> Result<SqliteStore, StoreError> {
        Self::open_with_tuning(path, clock, SqliteTuning::default()).await
    }

    /// Like [`SqliteStore::open_with_clock`], with explicit [`SqliteTuning`] (busy timeout and
    /// group-commit batching). Must be called inside a tokio runtime: it spawns the inbox writer.
    pub async fn open_with_tuning(
        path: &Path,
        clock: SharedClock,
        tuning: SqliteTuning,
    ) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot create directory {}: {e}",
                    parent.display()
                ))
            })?;
        }
        let instance_lock = lock_instance(path)?;

        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(tuning.busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| match db_error(e) {
                StoreError::Unavailable(msg) => {
                    StoreError::Unavailable(format!("cannot open {}: {msg}", path.display()))
                }
                other => other,
            })?;
        migrator()
            .run(&pool)
            .await
            .map_err(|e| migrate_error(path, e))?;

        let instance_lock = Arc::new(instance_lock);
        let ingest = ingest::Ingest::start(
            pool.clone(),
            tuning.group_commit,
            ACQUIRE_TIMEOUT,
            instance_lock.clone(),
        );
        Ok(SqliteStore {
            pool,
            ingest,
            clock,
            path: path.to_path_buf(),
            _instance_lock: instance_lock,
        })
    }

    /// Lets the inbox writer commit and answer what is queued, closes every connection
    /// (checkpointing the WAL) and then releases the instance lock, so the next process can
    /// open the file straight away.
    pub async fn close(self) {
        let SqliteStore {
            pool,
            ingest,
            _instance_lock,
            ..
        } = self;
        ingest.shutdown().await;
        pool.close().await;
        drop(_instance_lock);
    }

    /// How the group-commit writer has batched inbox inserts so far (for benchmarks and
    /// diagnostics: rows per batch is the fsync amortization actually achieved).
    pub fn ingest_stats(&self) -> IngestStats {
        self.ingest.stats()
    }

    /// The database file this store owns.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts a transaction holding SQLite's write lock from its first statement.
    async fn begin_immediate(&self) -> Result<SqliteTransaction<'static>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)
    }

    /// Reads the state of a job, to explain why an update matched no row.
    async fn job_state_of(&self, id: Uuid) -> Result<Option<JobState>, StoreError> {
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        state.as_deref().map(rows::job_state).transpose()
    }

    /// Explains why a pending-only job update matched nothing.
    async fn job_not_pending(&self, id: Uuid) -> StoreError {
        match self.job_state_of(id).await {
            Ok(Some(state)) => {
                StoreError::Conflict(format!("job {id} is {}, no longer pending", state.as_str()))
            }
            Ok(None) => StoreError::Conflict(format!("job {id} does not exist")),
            Err(e) => e,
        }
    }

    /// Explains why a pending-only delivery update matched nothing.
    async fn delivery_not_pending(&self, id: Uuid) -> StoreError {
        let state = sqlx::query_scalar::<_, String>("SELECT state FROM deliveries WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await;
        match state {
            Ok(Some(state)) => {
                StoreError::Conflict(format!("delivery {id} is {state}, no longer pending"))
            }
            Ok(None) => StoreError::Conflict(format!("delivery {id} does not exist")),
            Err(e) => db_error(e),
        }
    }
}

/// Takes the exclusive instance lock on `<db>.lock`, creating the file if needed.
fn lock_instance(db: &Path) -> Result<File, StoreError> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot open lock file {}: {e}",
                lock_path.display()
            ))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked(format!(
            "{} is in use by another jitbridge instance; SQLite serves one instance per \
             database file (use PostgreSQL to run several instances)",
            db.display()
        ))),
        Err(TryLockError::Error(e)) => Err(StoreError::Unavailable(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

/// Maps a driver error to the store's vocabulary: busy/locked and I/O are retryable
/// (`Unavailable`), unique violations are `Conflict`, other constraint and decode failures mean
/// a bad row (`Corrupt`). Messages carry SQLite's short text only, never bound values.
fn db_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(d) => {
            let code = d.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
            // Extended result codes carry the primary code in their low byte.
            match code & 0xff {
                // SQLITE_BUSY, SQLITE_LOCKED
                5 | 6 => StoreError::Unavailable(format!("database is busy: {}", d.message())),
                // SQLITE_CORRUPT, SQLITE_NOTADB
                11 | 26 => {
                    StoreError::Corrupt(format!("database file is damaged: {}", d.message()))
                }
                // SQLITE_CONSTRAINT
                19 if d.kind() == ErrorKind::UniqueViolation => {
                    StoreError::Conflict(d.message().to_owned())
                }
                19 => StoreError::Corrupt(format!("row refused by the schema: {}", d.message())),
                _ => StoreError::Unavailable(format!("database error: {}", d.message())),
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
fn migrate_error(path: &Path, e: sqlx::migrate::MigrateError) -> StoreError {
    use sqlx::migrate::MigrateError as M;
    match e {
        M::Execute(e) | M::ExecuteMigration(e, _) => match db_error(e) {
            StoreError::Unavailable(msg) => {
                StoreError::Unavailable(format!("migrating {}: {msg}", path.display()))
            }
            other => other,
        },
        M::VersionMissing(v) => StoreError::Corrupt(format!(
            "{} has schema version {v}, which this jitbridge does not know (written by a newer release?)",
            path.display()
        )),
        other => StoreError::Corrupt(format!("migrating {}: {other}", path.display())),
    }
}

/// `now + lease` in unix milliseconds, saturating.
fn lease_until(now: Timestamp, lease: SignedDuration) -> i64 {
    ms(now).saturating_add(duration_ms(lease))
}

/// A caller's limit, bounded.
fn bounded_limit(limit: u32) -> i64 {
    i64::from(limit.min(MAX_ROWS))
}

/// Inserts `job` (pending, unleased) inside the caller's transaction.
async fn insert_job(
    conn: &mut SqliteConnection,
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

/// Marks a job done and releases its lease (idempotent: a done job stays done; a dead job
/// whose work did succeed becomes done). Fails with `Conflict` when there is no such job.
async fn mark_job_done(conn: &mut SqliteConnection, id: Uuid, at: i64) -> Result<(), StoreError> {
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

/// Appends `records` to the audit chain inside the caller's (write-locked) transaction:
/// reads the chain head there, so no other writer can fork it.
async fn append_chained(
    conn: &mut SqliteConnection,
    records: &[NewAudit],
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
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
        let mut record = record.clone();
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

fn grants_from(rows: Vec<SqliteRow>) -> Result<Vec<Grant>, StoreError> {
    rows.iter().map(rows::grant).collect()
}

fn jobs_from(rows: Vec<SqliteRow>) -> Result<Vec<Job>, StoreError> {
    rows.iter().map(rows::job).collect()
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn release_stale_leases(&self) -> Result<u64, StoreError> {
        // Only the holder of the `.lock` file gets here, so no other process can own a lease.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)?;
        let deliveries = sqlx::query("UPDATE deliveries SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by IS NOT NULL")
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected();
        let jobs = sqlx::query(
            "UPDATE jobs SET claimed_by = NULL, claimed_until = NULL, \
             last_error = COALESCE(last_error, $1) WHERE claimed_by IS NOT NULL",
        )
        .bind(LEASE_LAPSED)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected();
        tx.commit().await.map_err(db_error)?;
        Ok(deliveries + jobs)
    }

    // ---- inbox ----

    /// Goes through the group-commit writer: answered only after the batch holding this row
    /// committed; `Unavailable` for every row of a batch that could not commit.
    async fn insert_delivery(&self, d: NewDelivery) -> Result<InsertOutcome, StoreError> {
        let row = ingest::PreparedDelivery {
            headers: to_json("delivery headers", &d.headers)?,
            received_at: ms(d.received_at),
            id: d.id,
            connector: d.connector,
            dedupe_key: d.dedupe_key,
            body: d.body,
        };
        self.ingest.insert(row).await
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
        let now_ms = ms(now);
        let mut tx = self.begin_immediate().await?;
        // `attempts` counts claims, so a delivery that crashes its worker is still counted.
        let rows = sqlx::query(
            "UPDATE deliveries SET claimed_by = $1, claimed_until = $2, attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM deliveries WHERE state = 'pending' AND next_at <= $3 \
               AND (claimed_until IS NULL OR claimed_until <= $3) \
               ORDER BY received_at, id LIMIT $4) \
             RETURNING id, connector, dedupe_key, received_at, headers, body, attempts",
        )
        .bind(worker)
        .bind(lease_until(now, lease))
        .bind(now_ms)
        .bind(bounded_limit(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let mut claimed = rows
            .iter()
            .map(rows::delivery)
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await.map_err(db_error)?;
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
            return Err(self.delivery_not_pending(id).await);
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
            return Err(self.delivery_not_pending(id).await);
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
        let mut tx = self.begin_immediate().await?;

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
                        StoreError::Conflict(msg) if msg.contains("grants.id") => {
                            StoreError::Conflict(format!("grant {} already exists", g.id))
                        }
                        StoreError::Conflict(_) => live_exists(),
                        other => other,
                    })?;
            }
            Some(expected) => {
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
        let row = sqlx::query(concat!(
            "SELECT ",
            grant_columns!(),
            " FROM grants WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        row.as_ref().map(rows::grant).transpose()
    }

    async fn live_grant(
        &self,
        connector: &str,
        ticket_id: &str,
        mapping: &str,
    ) -> Result<Option<Grant>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            grant_columns!(),
            " FROM grants WHERE connector = $1 AND ticket_id = $2 AND mapping = $3 AND ",
            live_grant_predicate!()
        ))
        .bind(connector)
        .bind(ticket_id)
        .bind(mapping)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        row.as_ref().map(rows::grant).transpose()
    }

    async fn latest_grant(
        &self,
        connector: &str,
        ticket_id: &str,
        mapping: &str,
    ) -> Result<Option<Grant>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            grant_columns!(),
            " FROM grants WHERE connector = $1 AND ticket_id = $2 AND mapping = $3 \
             ORDER BY requested_at DESC, id DESC LIMIT 1"
        ))
        .bind(connector)
        .bind(ticket_id)
        .bind(mapping)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        row.as_ref().map(rows::grant).transpose()
    }

    async fn list_grants(&self, filter: &GrantFilter) -> Result<Vec<Grant>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            grant_columns!(),
            " FROM grants WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR connector = $2) \
             AND ($3 IS NULL OR ticket_key = $3) ORDER BY requested_at DESC, id DESC LIMIT $4"
        ))
        .bind(filter.state.map(GrantState::as_str))
        .bind(filter.connector.as_deref())
        .bind(filter.ticket_key.as_deref())
        .bind(bounded_limit(filter.limit.unwrap_or(DEFAULT_LIST_LIMIT)))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        grants_from(rows)
    }

    /// Every state, in [`ALL_STATES`] order, zeros included (so gauges drop back to 0).
    async fn count_grants_by_state(&self) -> Result<Vec<(GrantState, i64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM grants GROUP BY state")
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let mut counts: Vec<(GrantState, i64)> = ALL_STATES.iter().map(|s| (*s, 0)).collect();
        for row in &rows {
            let state = rows::grant_state(&row.try_get::<String, _>("state").map_err(db_error)?)?;
            let n: i64 = row.try_get("n").map_err(db_error)?;
            if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == state) {
                slot.1 = n;
            }
        }
        Ok(counts)
    }

    async fn due_grants(&self, now: Timestamp, limit: u32) -> Result<Vec<Grant>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            grant_columns!(),
            " FROM grants WHERE state = 'active' AND expires_at <= $1 \
             ORDER BY expires_at, id LIMIT $2"
        ))
        .bind(ms(now))
        .bind(bounded_limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        grants_from(rows)
    }

    async fn next_deadline(&self) -> Result<Option<Timestamp>, StoreError> {
        let min: Option<i64> =
            sqlx::query_scalar("SELECT MIN(expires_at) FROM grants WHERE state = 'active'")
                .fetch_one(&self.pool)
                .await
                .map_err(db_error)?;
        min.map(|v| {
            Timestamp::from_millisecond(v)
                .map_err(|e| StoreError::Corrupt(format!("grants.expires_at: {v}: {e}")))
        })
        .transpose()
    }

    async fn count_live_grants(
        &self,
        subject: &str,
        target: &str,
    ) -> Result<LiveGrantCounts, StoreError> {
        // `lower` folds ASCII only, which is what the contract promises. `requested` grants hold
        // nothing yet and are not counted.
        let row = sqlx::query(
            "SELECT \
               COALESCE(SUM(CASE WHEN lower(trim(subject)) = lower(trim($1)) THEN 1 ELSE 0 END), 0) AS by_subject, \
               COALESCE(SUM(CASE WHEN lower(trim(target)) = lower(trim($2)) THEN 1 ELSE 0 END), 0) AS by_target \
             FROM grants \
             WHERE state IN ('approved', 'active', 'expiring', 'revoking', 'revoke_failed')",
        )
        .bind(subject)
        .bind(target)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        let count = |column: &str| -> Result<u64, StoreError> {
            let n: i64 = row.try_get(column).map_err(db_error)?;
            u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{column}: {n}")))
        };
        Ok(LiveGrantCounts {
            by_subject: count("by_subject")?,
            by_target: count("by_target")?,
        })
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
        let mut tx = self.begin_immediate().await?;
        // Only the head (lowest seq) pending job of each (lane, queue key) is eligible, so a
        // claim can never take two jobs of one key, nor overtake a backing-off or leased one.
        // A job still carrying an (expired) claim was taken by a worker that never reported
        // back (crash, kill): `last_error` says so, and the next worker treats the run as a
        // re-attempt (e.g. checks for an already-posted comment).
        let rows = sqlx::query(concat!(
            "UPDATE jobs SET claimed_by = $1, claimed_until = $2, \
             last_error = CASE WHEN claimed_until IS NULL THEN last_error \
               ELSE COALESCE(last_error, $6) END \
             WHERE seq IN (SELECT j.seq FROM jobs j \
               WHERE j.lane = $3 AND j.state = 'pending' AND j.next_at <= $4 \
               AND (j.claimed_until IS NULL OR j.claimed_until <= $4) \
               AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.lane = j.lane \
                 AND e.queue_key = j.queue_key AND e.state = 'pending' AND e.seq < j.seq) \
               ORDER BY j.seq LIMIT $5) \
             RETURNING ",
            job_columns!()
        ))
        .bind(worker)
        .bind(lease_until(now, lease))
        .bind(lane.as_str())
        .bind(ms(now))
        .bind(bounded_limit(limit))
        .bind(LEASE_LAPSED)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let mut claimed = jobs_from(rows)?;
        tx.commit().await.map_err(db_error)?;
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
            return Err(self.job_not_pending(id).await);
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
            return Err(self.job_not_pending(id).await);
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
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE state = $1 ORDER BY seq DESC LIMIT $2"
        ))
        .bind(state.as_str())
        .bind(bounded_limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        jobs_from(rows)
    }

    async fn outbox_stats(&self, lane: Lane, now: Timestamp) -> Result<OutboxStats, StoreError> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), 0) AS pending, \
             COALESCE(SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END), 0) AS dead, \
             MIN(CASE WHEN state = 'pending' THEN created_at END) AS oldest \
             FROM jobs WHERE lane = $1 AND state IN ('pending', 'dead')",
        )
        .bind(lane.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        let oldest: Option<i64> = row.try_get("oldest").map_err(db_error)?;
        Ok(OutboxStats {
            pending: row.try_get("pending").map_err(db_error)?,
            dead: row.try_get("dead").map_err(db_error)?,
            // A job stamped by a clock ahead of `now` is not negatively old.
            oldest_pending_age: oldest
                .map(|created| SignedDuration::from_millis(ms(now).saturating_sub(created).max(0))),
        })
    }

    // ---- audit ----

    async fn append_audit(&self, records: Vec<NewAudit>) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_immediate().await?;
        append_chained(&mut tx, &records).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn audit_records(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            audit_columns!(),
            " FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(after)
        .bind(bounded_limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter().map(rows::audit).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::audit::{ChainError, verify_chain};
    use crate::clock::ManualClock;
    use crate::store::GrantFilter;
    use crate::ticket::{Person, TicketRef};

    const T0: i64 = 1_800_000_000;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(T0 + secs).unwrap()
    }

    fn secs(n: i64) -> SignedDuration {
        SignedDuration::from_secs(n)
    }

    async fn open_at(dir: &tempfile::TempDir) -> SqliteStore {
        let clock = Arc::new(ManualClock::new(at(0)));
        SqliteStore::open_with_clock(&dir.path().join("data").join("jitbridge.db"), clock)
            .await
            .unwrap()
    }

    async fn fresh() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = open_at(&dir).await;
        (dir, store)
    }

    fn delivery(key: &str, received: i64) -> NewDelivery {
        NewDelivery {
            id: Uuid::now_v7(),
            connector: "jira".into(),
            dedupe_key: key.into(),
            received_at: at(received),
            headers: vec![("x-atlassian-webhook-identifier".into(), key.into())],
            body: format!("{{\"key\":\"{key}\"}}").into_bytes(),
        }
    }

    fn grant(ticket: &str, mapping: &str, state: GrantState) -> Grant {
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

    fn audit(kind: &str, grant_id: Option<Uuid>) -> NewAudit {
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

    fn job(lane: Lane, key: &str, not_before: i64) -> NewJob {
        NewJob {
            id: Uuid::now_v7(),
            lane,
            queue_key: key.into(),
            payload: json!({"op": "apply", "key": key}),
            not_before: at(not_before),
        }
    }

    fn insert(g: &Grant) -> Commit {
        Commit {
            grant: g.clone(),
            expected_version: None,
            audit: vec![audit("grant.requested", Some(g.id))],
            jobs: vec![],
            complete_job: None,
        }
    }

    /// Moves `g` to `state` as the next version, ready to commit over version `g.version`.
    fn transition(g: &Grant, state: GrantState) -> Commit {
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

    async fn enqueue(store: &SqliteStore, jobs: &[NewJob]) {
        let mut conn = store.pool.acquire().await.unwrap();
        for j in jobs {
            insert_job(&mut conn, j, ms(at(0))).await.unwrap();
        }
    }

    async fn all_audit(store: &SqliteStore) -> Vec<AuditRecord> {
        store.audit_records(0, 1000).await.unwrap()
    }

    async fn job_count(store: &SqliteStore) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
            .fetch_one(&store.pool)
            .await
            .unwrap()
    }

    fn ids(jobs: &[Job]) -> Vec<Uuid> {
        jobs.iter().map(|j| j.id).collect()
    }

    // ---- opening ----

    #[tokio::test]
    async fn open_creates_directory_and_file_with_wal_and_full_sync() {
        let (dir, store) = fresh().await;
        assert!(dir.path().join("data/jitbridge.db").is_file());
        assert!(dir.path().join("data/jitbridge.db.lock").is_file());
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(fk, 1);
        store.ping().await.unwrap();
    }

    #[tokio::test]
    async fn second_open_of_the_same_file_is_locked_until_the_first_closes() {
        let (dir, store) = fresh().await;
        let path = dir.path().join("data/jitbridge.db");
        let err = SqliteStore::open(&path).await.unwrap_err();
        let StoreError::Locked(msg) = &err else {
            panic!("expected Locked, got {err:?}")
        };
        assert!(msg.contains("jitbridge.db"), "{msg}");
        assert!(msg.contains("another jitbridge instance"), "{msg}");
        assert!(msg.contains("PostgreSQL"), "{msg}");

        store.close().await;
        let again = SqliteStore::open(&path).await.unwrap();
        again.ping().await.unwrap();
    }

    #[tokio::test]
    async fn rows_survive_close_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_at(&dir).await;
        let g = grant("87", "laptop-admin", GrantState::Requested);
        let d = delivery("evt-1", 0);
        let j = job(Lane::Writeback, "jira:10087", 0);
        store.insert_delivery(d.clone()).await.unwrap();
        let mut c = insert(&g);
        c.jobs.push(j.clone());
        store.commit(c).await.unwrap();
        store.close().await;

        // A second open also re-runs the (already applied) migrations harmlessly.
        let store = open_at(&dir).await;
        assert_eq!(store.get_grant(g.id).await.unwrap(), Some(g));
        assert_eq!(
            store.insert_delivery(delivery("evt-1", 5)).await.unwrap(),
            InsertOutcome::Duplicate(d.id)
        );
        let claimed = store
            .claim_jobs(Lane::Writeback, "w", at(0), secs(30), 10)
            .await
            .unwrap();
        assert_eq!(ids(&claimed), vec![j.id]);
        assert_eq!(claimed[0].payload, j.payload);
        let records = all_audit(&store).await;
        assert_eq!(records.len(), 1);
        verify_chain((0, GENESIS_HASH.to_owned()), &records).unwrap();
    }

    // ---- inbox ----

    #[tokio::test]
    async fn duplicate_delivery_returns_the_first_id_and_inserts_nothing() {
        let (_dir, store) = fresh().await;
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

        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
            .fetch_one(&store.pool)
            .await
            .unwrap();
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

    #[tokio::test]
    async fn lapsed_delivery_lease_makes_it_claimable_again() {
        let (_dir, store) = fresh().await;
        let old = delivery("evt-old", 0);
        let new = delivery("evt-new", 1);
        store.insert_delivery(new.clone()).await.unwrap();
        store.insert_delivery(old.clone()).await.unwrap();

        let first = store
            .claim_deliveries("w1", at(5), secs(30), 10)
            .await
            .unwrap();
        assert_eq!(
            first.iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![old.id, new.id],
            "oldest first"
        );
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
        assert_eq!(
            retried.iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![new.id]
        );

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

    // ---- group commit ----

    async fn delivery_count(store: &SqliteStore) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
            .fetch_one(&store.pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn many_concurrent_inserts_share_commits_and_are_all_accepted() {
        let (_dir, store) = fresh().await;
        let deliveries: Vec<NewDelivery> =
            (0..500).map(|i| delivery(&format!("evt-{i}"), i)).collect();
        let before = store.ingest_stats();
        let outcomes =
            futures::future::join_all(deliveries.iter().map(|d| store.insert_delivery(d.clone())))
                .await;
        for (d, outcome) in deliveries.iter().zip(outcomes) {
            assert_eq!(outcome.unwrap(), InsertOutcome::Accepted(d.id));
        }
        assert_eq!(delivery_count(&store).await, 500);

        let stats = store.ingest_stats();
        let batches = stats.batches - before.batches;
        assert_eq!(stats.rows - before.rows, 500);
        assert!(
            batches < 500,
            "concurrent inserts share transactions ({batches} batches for 500 rows)"
        );
        assert_eq!(
            stats.largest_batch,
            GroupCommit::default().max_batch as u64,
            "a batch never exceeds max_batch, and 500 queued rows fill one"
        );
        assert_eq!(stats.failed_batches, 0);
    }

    #[tokio::test]
    async fn duplicates_within_one_batch_resolve_to_the_first_delivery() {
        let (_dir, store) = fresh().await;
        let first = delivery("evt-1", 0);
        let other = delivery("evt-2", 0);
        let mut repeat = delivery("evt-1", 1);
        repeat.body = b"a later body".to_vec();
        let again = delivery("evt-1", 2);
        let batches_before = store.ingest_stats().batches;

        let outcomes = futures::future::join_all(
            [&first, &repeat, &other, &again].map(|d| store.insert_delivery(d.clone())),
        )
        .await;
        let outcomes: Vec<InsertOutcome> = outcomes.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            outcomes,
            vec![
                InsertOutcome::Accepted(first.id),
                InsertOutcome::Duplicate(first.id),
                InsertOutcome::Accepted(other.id),
                InsertOutcome::Duplicate(first.id),
            ]
        );
        assert_eq!(
            store.ingest_stats().batches - batches_before,
            1,
            "all four were in one transaction"
        );
        assert_eq!(delivery_count(&store).await, 2);
        let claimed = store
            .claim_deliveries("w", at(10), secs(30), 10)
            .await
            .unwrap();
        let kept = claimed.iter().find(|d| d.id == first.id).unwrap();
        assert_eq!(kept.body, first.body, "the first body wins");
    }

    #[tokio::test]
    async fn a_reused_delivery_id_fails_only_its_own_caller() {
        let (_dir, store) = fresh().await;
        let original = delivery("evt-1", 0);
        store.insert_delivery(original.clone()).await.unwrap();

        let mut clash = delivery("evt-2", 1);
        clash.id = original.id;
        let fine = delivery("evt-3", 1);
        let outcomes =
            futures::future::join_all([&clash, &fine].map(|d| store.insert_delivery(d.clone())))
                .await;
        assert!(
            matches!(&outcomes[0], Err(StoreError::Conflict(m)) if m.contains("already used")),
            "{:?}",
            outcomes[0]
        );
        assert_eq!(
            outcomes[1].as_ref().unwrap(),
            &InsertOutcome::Accepted(fine.id)
        );
        assert_eq!(delivery_count(&store).await, 2);
    }

    #[tokio::test]
    async fn a_batch_that_cannot_commit_fails_every_caller_with_unavailable_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.db");
        let tuning = SqliteTuning {
            busy_timeout: Duration::from_millis(200),
            ..SqliteTuning::default()
        };
        let store = SqliteStore::open_with_tuning(&path, Arc::new(ManualClock::new(at(0))), tuning)
            .await
            .unwrap();
        // Another connection holds the write lock past the busy timeout.
        let mut blocker =
            sqlx::SqlitePool::connect_with(SqliteConnectOptions::new().filename(&path))
                .await
                .unwrap()
                .acquire()
                .await
                .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *blocker)
            .await
            .unwrap();

        let deliveries: Vec<NewDelivery> =
            (0..20).map(|i| delivery(&format!("evt-{i}"), i)).collect();
        let outcomes =
            futures::future::join_all(deliveries.iter().map(|d| store.insert_delivery(d.clone())))
                .await;
        for outcome in &outcomes {
            assert!(
                matches!(outcome, Err(StoreError::Unavailable(m)) if m.contains("busy")),
                "{outcome:?}"
            );
        }
        assert!(store.ingest_stats().failed_batches >= 1);

        sqlx::query("ROLLBACK")
            .execute(&mut *blocker)
            .await
            .unwrap();
        assert_eq!(delivery_count(&store).await, 0, "nothing of a failed batch");
        // The sender's retry of a refused delivery is new, not a duplicate.
        assert_eq!(
            store.insert_delivery(deliveries[3].clone()).await.unwrap(),
            InsertOutcome::Accepted(deliveries[3].id)
        );
    }

    #[tokio::test]
    async fn zero_window_and_zero_sizes_still_commit_everything() {
        let dir = tempfile::tempdir().unwrap();
        let tuning = SqliteTuning {
            group_commit: GroupCommit {
                max_batch: 0,
                window: Duration::ZERO,
                queue: 0,
            },
            ..SqliteTuning::default()
        };
        let store = SqliteStore::open_with_tuning(
            &dir.path().join("z.db"),
            Arc::new(ManualClock::new(at(0))),
            tuning,
        )
        .await
        .unwrap();
        let deliveries: Vec<NewDelivery> =
            (0..10).map(|i| delivery(&format!("evt-{i}"), i)).collect();
        let outcomes =
            futures::future::join_all(deliveries.iter().map(|d| store.insert_delivery(d.clone())))
                .await;
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Ok(InsertOutcome::Accepted(_))))
        );
        assert_eq!(store.ingest_stats().largest_batch, 1);
        assert_eq!(delivery_count(&store).await, 10);
    }

    #[tokio::test]
    async fn close_answers_queued_inserts_before_releasing_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open_at(&dir).await);
        let inserts: Vec<_> = (0..50)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .insert_delivery(delivery(&format!("evt-{i}"), i))
                        .await
                })
            })
            .collect();
        for insert in inserts {
            assert!(matches!(
                insert.await.unwrap(),
                Ok(InsertOutcome::Accepted(_))
            ));
        }
        let store = Arc::try_unwrap(store).unwrap();
        store.close().await;
        let store = open_at(&dir).await;
        assert_eq!(delivery_count(&store).await, 50);
    }

    // ---- grants ----

    #[tokio::test]
    async fn grant_round_trips_and_updates_only_at_the_expected_version() {
        let (_dir, store) = fresh().await;
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

    #[tokio::test]
    async fn commit_is_atomic_a_conflict_leaves_no_audit_rows_and_no_jobs() {
        let (_dir, store) = fresh().await;
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
        assert_eq!(all_audit(&store).await.len(), 1, "only the insert's record");
        assert_eq!(job_count(&store).await, 0);

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
        assert_eq!(all_audit(&store).await.len(), 1);
        assert_eq!(job_count(&store).await, 0);
    }

    #[tokio::test]
    async fn commit_completes_the_job_that_caused_it() {
        let (_dir, store) = fresh().await;
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

    #[tokio::test]
    async fn second_live_grant_for_the_same_ticket_conflicts_until_the_first_is_terminal() {
        let (_dir, store) = fresh().await;
        let first = grant("87", "laptop-admin", GrantState::Requested);
        store.commit(insert(&first)).await.unwrap();

        let second = grant("87", "laptop-admin", GrantState::Requested);
        let err = store.commit(insert(&second)).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict(ref m) if m.contains("live grant")),
            "{err:?}"
        );
        assert_eq!(all_audit(&store).await.len(), 1);

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

    #[tokio::test]
    async fn live_grants_are_counted_by_subject_and_by_target_across_tickets() {
        let (_dir, store) = fresh().await;
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

    #[tokio::test]
    async fn active_grant_without_a_deadline_is_refused() {
        let (_dir, store) = fresh().await;
        let mut g = grant("87", "laptop-admin", GrantState::Active);
        g.expires_at = None;
        assert!(matches!(
            store.commit(insert(&g)).await,
            Err(StoreError::Corrupt(_))
        ));
        assert_eq!(store.get_grant(g.id).await.unwrap(), None);
    }

    #[tokio::test]
    async fn due_grants_are_active_ones_past_their_deadline_earliest_first() {
        let (_dir, store) = fresh().await;
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

    #[tokio::test]
    async fn list_and_count_grants() {
        let (_dir, store) = fresh().await;
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

    // ---- outbox ----

    #[tokio::test]
    async fn later_job_waits_for_an_earlier_pending_job_of_its_queue_key_but_not_a_dead_one() {
        let (_dir, store) = fresh().await;
        let j1 = job(Lane::Provider, "grant-a", 0);
        let j2 = job(Lane::Provider, "grant-a", 0);
        let j3 = job(Lane::Provider, "grant-b", 0);
        let other_lane = job(Lane::Writeback, "grant-a", 0);
        enqueue(
            &store,
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

    #[tokio::test]
    async fn lapsed_job_lease_makes_it_claimable_again_and_finished_jobs_cannot_be_revived() {
        let (_dir, store) = fresh().await;
        let j = job(Lane::Writeback, "jira:1", 0);
        enqueue(&store, std::slice::from_ref(&j)).await;
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

    #[tokio::test]
    async fn concurrent_claims_never_return_the_same_job() {
        let (_dir, store) = fresh().await;
        let jobs: Vec<NewJob> = (0..40)
            .map(|i| job(Lane::Provider, &format!("grant-{}", i % 25), 0))
            .collect();
        enqueue(&store, &jobs).await;
        let store = Arc::new(store);
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

    #[tokio::test]
    async fn outbox_stats_count_pending_and_dead_and_age_the_oldest_pending() {
        let (_dir, store) = fresh().await;
        let a = job(Lane::Provider, "a", 0);
        let b = job(Lane::Provider, "b", 0);
        let w = job(Lane::Writeback, "w", 0);
        enqueue(&store, &[a.clone(), b.clone(), w]).await;
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

    // ---- audit ----

    #[tokio::test]
    async fn audit_chain_written_by_commits_verifies_and_detects_a_raw_sql_edit() {
        let (_dir, store) = fresh().await;
        let g = grant("87", "laptop-admin", GrantState::Requested);
        store.commit(insert(&g)).await.unwrap();
        let mut approve = transition(&g, GrantState::Approved);
        approve.audit.push(audit("policy.passed", Some(g.id)));
        store.commit(approve).await.unwrap();
        store
            .append_audit(vec![audit("event.ignored", None)])
            .await
            .unwrap();
        store.append_audit(vec![]).await.unwrap();

        let records = all_audit(&store).await;
        assert_eq!(
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(
            verify_chain((0, GENESIS_HASH.to_owned()), &records)
                .unwrap()
                .0,
            4
        );
        // Paging continues the chain.
        let page = store.audit_records(2, 10).await.unwrap();
        let head = (records[1].seq, records[1].hash.clone());
        assert_eq!(verify_chain(head, &page).unwrap().0, 4);

        // The append-only triggers refuse a casual edit...
        let edit = "UPDATE audit SET actor = 'mallory' WHERE seq = 2";
        assert!(sqlx::query(edit).execute(&store.pool).await.is_err());
        assert!(
            sqlx::query("DELETE FROM audit WHERE seq = 3")
                .execute(&store.pool)
                .await
                .is_err()
        );
        // ...and the chain catches one that bypasses them.
        sqlx::query("DROP TRIGGER audit_no_update")
            .execute(&store.pool)
            .await
            .unwrap();
        sqlx::query(edit).execute(&store.pool).await.unwrap();
        let tampered = all_audit(&store).await;
        assert_eq!(
            verify_chain((0, GENESIS_HASH.to_owned()), &tampered),
            Err(ChainError::Tampered { seq: 2 })
        );
    }

    #[tokio::test]
    async fn concurrent_audit_appends_never_fork_the_chain() {
        let (_dir, store) = fresh().await;
        let store = Arc::new(store);
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
        let records = all_audit(&store).await;
        assert_eq!(records.len(), 16);
        verify_chain((0, GENESIS_HASH.to_owned()), &records).unwrap();
    }

    #[test]
    fn busy_and_constraint_errors_map_to_the_store_vocabulary() {
        let unavailable = db_error(sqlx::Error::PoolTimedOut);
        assert!(matches!(unavailable, StoreError::Unavailable(_)));
        assert!(matches!(
            db_error(sqlx::Error::Io(std::io::Error::other("disk"))),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            db_error(sqlx::Error::ColumnNotFound("x".into())),
            StoreError::Corrupt(_)
        ));
    }

    #[tokio::test]
    async fn a_writer_holding_the_lock_too_long_yields_unavailable_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.db");
        let store = SqliteStore::open(&path).await.unwrap();
        // A raw connection (not through the store) holds the write lock past the busy timeout.
        let mut blocker =
            sqlx::SqlitePool::connect_with(SqliteConnectOptions::new().filename(&path))
                .await
                .unwrap()
                .acquire()
                .await
                .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *blocker)
            .await
            .unwrap();
        let err = store
            .append_audit(vec![audit("x", None)])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Unavailable(ref m) if m.contains("busy")),
            "{err:?}"
        );
        sqlx::query("ROLLBACK")
            .execute(&mut *blocker)
            .await
            .unwrap();
        store.append_audit(vec![audit("x", None)]).await.unwrap();
    }

    // ---- properties ----

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
                let (_dir, store) = fresh().await;
                store.append_audit(records.clone()).await.unwrap();
                let stored = all_audit(&store).await;
                prop_assert_eq!(stored.len(), records.len());
                prop_assert!(verify_chain((0, GENESIS_HASH.to_owned()), &stored).is_ok());
                for (s, r) in stored.iter().zip(&records) {
                    prop_assert_eq!(&s.record.detail, &r.detail);
                    prop_assert_eq!(s.record.at.as_millisecond(), r.at.as_millisecond());
                }
                Ok(())
            })?;
        }

        /// Any mix of new and repeated dedupe keys arriving together: each key's first
        /// delivery is accepted and every later one is told the first one's id.
        #[test]
        fn concurrent_inserts_resolve_duplicates_first_wins(keys in proptest::collection::vec(0u8..6, 1..60)) {
            runtime().block_on(async {
                let (_dir, store) = fresh().await;
                let deliveries: Vec<NewDelivery> = keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| delivery(&format!("evt-{k}"), i as i64))
                    .collect();
                let outcomes = futures::future::join_all(
                    deliveries.iter().map(|d| store.insert_delivery(d.clone())),
                )
                .await;
                let mut first: std::collections::HashMap<u8, Uuid> = Default::default();
                for ((k, d), outcome) in keys.iter().zip(&deliveries).zip(outcomes) {
                    let expected = match first.get(k) {
                        Some(id) => InsertOutcome::Duplicate(*id),
                        None => {
                            first.insert(*k, d.id);
                            InsertOutcome::Accepted(d.id)
                        }
                    };
                    prop_assert_eq!(outcome.unwrap(), expected);
                }
                prop_assert_eq!(delivery_count(&store).await, first.len() as i64);
                Ok(())
            })?;
        }

        /// Random sequences of enqueue / claim / complete / reschedule / dead-letter / retry /
        /// time steps: every claim returns exactly what the ordering and lease rules allow.
        #[test]
        fn job_claims_follow_queue_order_and_leases(ops in proptest::collection::vec(op(), 1..40)) {
            runtime().block_on(async {
                let (_dir, store) = fresh().await;
                let mut model: Vec<ModelJob> = Vec::new();
                let mut now = 0i64;
                for op in ops {
                    match op {
                        Op::Enqueue { writeback, key, delay } => {
                            let lane = if writeback { Lane::Writeback } else { Lane::Provider };
                            let j = job(lane, &format!("key-{key}"), now + delay);
                            enqueue(&store, std::slice::from_ref(&j)).await;
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
                    let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
                        .bind(m.id.to_string()).fetch_one(&store.pool).await.unwrap();
                    prop_assert_eq!(state.as_str(), m.state.as_str());
                }
                Ok(())
            })?;
        }
    }
}
