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
//! - Inbox writes are group-committed by one writer task ([`GroupCommit`]): many concurrent
//!   deliveries, and the inbox worker's claims and processed marks, share one transaction and
//!   one fsync, and each caller is answered only after that commit returned.
//!
//! The schema lives in `migrations/sqlite/` and is embedded at compile time.

mod gate;
mod ingest;

pub use ingest::{GroupCommit, IngestStats};

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::{SignedDuration, Timestamp};
use sqlx::error::ErrorKind;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlSafeStr, SqliteConnection, SqlitePool};
use uuid::Uuid;

use crate::audit::{AuditRecord, GENESIS_HASH, NewAudit, chain_hash};
use crate::clock::{SharedClock, SystemClock};
use crate::grants::{Grant, GrantState};
use crate::store::reads::{Reads, bounded_limit, jobs_from};
use crate::store::{
    Commit, Delivery, DeliveryOutcome, GrantFilter, InboxTurn, InsertOutcome, Job, JobState, Lane,
    LiveGrantCounts, NewDelivery, NewJob, NextClaim, OutboxStats, Store, StoreError,
};

use crate::store::LEASE_LAPSED;
use crate::store::rows::{
    self, GrantColumns, at_storage_precision, bounded, duration_ms, ms, to_json,
};

/// How long a statement waits for SQLite's write lock before giving up with `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// SQLite has one writer; a few connections let readers (admin API, metrics) proceed meanwhile.
const MAX_CONNECTIONS: u32 = 4;
/// Longest error text kept on a row.
const MAX_ERROR_BYTES: usize = 2000;

/// The SQLite schema, embedded so the binary needs no migration files at run time.
fn migrator() -> Migrator {
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            "init".into(),
            MigrationType::Simple,
            include_str!("../../migrations/sqlite/0001_init.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            2,
            "claim and policy indexes".into(),
            MigrationType::Simple,
            include_str!("../../migrations/sqlite/0002_claim_and_policy_indexes.sql")
                .into_sql_str(),
            false,
        ),
    ])
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
    /// The group-commit writer every inbox write (`insert_delivery`, `claim_deliveries`,
    /// `finish_deliveries`) goes through.
    ingest: ingest::Ingest,
    /// Every write of this process waits here for its turn (FIFO) before taking SQLite's lock.
    gate: gate::WriteGate,
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
            // A connection to a local file cannot drop like a network one, so sqlx's default
            // ping before every acquire would only add a round trip to the connection's
            // thread to every statement (measured: a fifth of each inbox commit).
            .test_before_acquire(false)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
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
        let gate = gate::WriteGate::new(tuning.busy_timeout);
        let ingest = ingest::Ingest::start(
            pool.clone(),
            options,
            clock.clone(),
            gate.clone(),
            tuning.group_commit,
            ACQUIRE_TIMEOUT,
            instance_lock.clone(),
        );
        Ok(SqliteStore {
            pool,
            ingest,
            gate,
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

    /// The pool, for tests that need raw SQL.
    #[cfg(test)]
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The database file this store owns.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The queries shared with the PostgreSQL store.
    fn reads(&self) -> Reads<'_, sqlx::Sqlite> {
        Reads {
            pool: &self.pool,
            db_error,
        }
    }

    /// Waits for this process's write turn, then starts a transaction holding SQLite's write
    /// lock from its first statement.
    async fn begin_immediate(&self) -> Result<gate::WriteTx, StoreError> {
        self.gate.begin(&self.pool).await
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

/// Claims the head job of each (lane, queue key): `$1` worker, `$2` lease end, `$3` lane,
/// `$4` now, `$5` limit, `$6` the re-attempt marker. Walks the pending-only index in `seq`
/// order and stops at the limit, so its cost follows the jobs it returns, not the backlog.
const CLAIM_JOBS: &str = concat!(
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
);

/// Rows per multi-row INSERT: far below SQLite's limit on bound parameters (32,766), large
/// enough that a batch of hundreds of rows costs a handful of statements instead of one each.
const ROWS_PER_INSERT: usize = 200;
/// Grant rows per batched UPDATE (25 parameters each).
const ROWS_PER_UPDATE: usize = 200;

/// Appends `records` to the audit chain inside the caller's (write-locked) transaction:
/// reads the chain head there, so no other writer can fork it.
async fn append_chained(
    conn: &mut SqliteConnection,
    records: &[&NewAudit],
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
    let mut chained = Vec::with_capacity(records.len());
    for &record in records {
        // Hash exactly what will read back: instants are stored to the millisecond.
        let mut record = record.clone();
        record.at = at_storage_precision(record.at);
        seq += 1;
        let hash = chain_hash(&prev_hash, seq, &record);
        let detail = to_json("audit detail", &record.detail)?;
        chained.push((
            seq,
            record,
            detail,
            std::mem::replace(&mut prev_hash, hash.clone()),
            hash,
        ));
    }
    for chunk in chained.chunks(ROWS_PER_INSERT) {
        let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO audit (seq, at, kind, grant_id, connector, ticket_key, actor, detail, \
             prev_hash, hash) ",
        );
        insert.push_values(chunk, |mut row, (seq, record, detail, prev_hash, hash)| {
            row.push_bind(*seq)
                .push_bind(ms(record.at))
                .push_bind(record.kind.as_str())
                .push_bind(record.grant_id.map(|id| id.to_string()))
                .push_bind(record.connector.as_deref())
                .push_bind(record.ticket_key.as_deref())
                .push_bind(record.actor.as_deref())
                .push_bind(detail.as_str())
                .push_bind(prev_hash.as_str())
                .push_bind(hash.as_str());
        });
        insert.build().execute(&mut *conn).await.map_err(db_error)?;
    }
    Ok(())
}

/// Inserts `jobs` (pending, unleased) in order inside the caller's transaction, a few
/// statements for any number of jobs. Any failure (e.g. an id already used) fails them all.
async fn insert_jobs(
    conn: &mut SqliteConnection,
    jobs: &[&NewJob],
    created_at: i64,
) -> Result<(), StoreError> {
    let payloads = jobs
        .iter()
        .map(|job| to_json("job payload", &job.payload))
        .collect::<Result<Vec<_>, _>>()?;
    let rows: Vec<(&NewJob, String)> = jobs.iter().copied().zip(payloads).collect();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO jobs (id, lane, queue_key, payload, state, attempts, next_at, created_at) ",
        );
        insert.push_values(chunk, |mut row, (job, payload)| {
            row.push_bind(job.id.to_string())
                .push_bind(job.lane.as_str())
                .push_bind(job.queue_key.as_str())
                .push_bind(payload.as_str())
                .push_bind("pending")
                .push_bind(0_i32)
                .push_bind(ms(job.not_before))
                .push_bind(created_at);
        });
        insert.build().execute(&mut *conn).await.map_err(db_error)?;
    }
    Ok(())
}

/// Writes one grant transition (see [`Commit`]) inside the caller's write-locked transaction.
async fn write_commit(conn: &mut SqliteConnection, c: &Commit, now: i64) -> Result<(), StoreError> {
    write_grant_row(&mut *conn, c).await?;
    let audit: Vec<&NewAudit> = c.audit.iter().collect();
    append_chained(&mut *conn, &audit).await?;
    for job in &c.jobs {
        insert_job(&mut *conn, job, now).await?;
    }
    if let Some(job) = c.complete_job {
        mark_job_done(&mut *conn, job, now).await?;
    }
    Ok(())
}

/// Inserts or updates (at the expected version) the grant row of `c`, and nothing else.
async fn write_grant_row(conn: &mut SqliteConnection, c: &Commit) -> Result<(), StoreError> {
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

    match c.expected_version {
        None => {
            columns
                .bind(sqlx::query(concat!(
                    "INSERT INTO grants (",
                    grant_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
                     $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)"
                )))
                .execute(&mut *conn)
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
                .execute(&mut *conn)
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

    Ok(())
}

/// Updates the grant rows of a batch's version-checked transitions with one statement per
/// [`ROWS_PER_UPDATE`] rows (`UPDATE … FROM (VALUES …) … RETURNING id`), instead of one each.
/// Answers per commit: `Some(Ok)` updated, `Some(Err(Conflict))` its version had moved on (or
/// the row is gone), `None` left for the caller to write one by one (inserts, and every commit
/// of a batch that touches one grant twice, whose order matters).
async fn update_grant_rows(
    conn: &mut SqliteConnection,
    commits: &[Commit],
) -> Result<Vec<Option<Result<(), StoreError>>>, StoreError> {
    let mut results: Vec<Option<Result<(), StoreError>>> = commits.iter().map(|_| None).collect();
    let mut seen = std::collections::HashSet::with_capacity(commits.len());
    if !commits.iter().all(|c| seen.insert(c.grant.id)) {
        return Ok(results);
    }
    let mut updates = Vec::with_capacity(commits.len());
    for (n, c) in commits.iter().enumerate() {
        let Some(expected) = c.expected_version else {
            continue;
        };
        if c.grant.state == GrantState::Active && c.grant.expires_at.is_none() {
            continue; // refused with its own error by the row-by-row write
        }
        match GrantColumns::new(&c.grant) {
            Ok(columns) => updates.push((n, columns, expected)),
            Err(e) => results[n] = Some(Err(e)),
        }
    }
    for chunk in updates.chunks(ROWS_PER_UPDATE) {
        let mut update = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "UPDATE grants SET connector = v.column2, ticket_id = v.column3, \
             ticket_key = v.column4, ticket_url = v.column5, mapping = v.column6, \
             state = v.column7, subject = v.column8, target = v.column9, scope = v.column10, \
             provider = v.column11, duration_secs = v.column12, requester = v.column13, \
             approvers = v.column14, requested_at = v.column15, approved_at = v.column16, \
             starts_at = v.column17, expires_at = v.column18, ended_at = v.column19, \
             revoke_cause = v.column20, reason = v.column21, last_event_at = v.column22, \
             context = v.column23, version = v.column24 FROM (",
        );
        update.push_values(chunk, |mut row, (_, columns, expected)| {
            columns.push_values(&mut row);
            row.push_bind(*expected);
        });
        update.push(
            ") AS v WHERE grants.id = v.column1 AND grants.version = v.column25 \
             RETURNING grants.id",
        );
        let updated: Vec<String> = update
            .build_query_scalar()
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
        let updated: std::collections::HashSet<String> = updated.into_iter().collect();
        for (n, columns, expected) in chunk {
            let id = columns.grant.id;
            results[*n] = Some(if updated.contains(&id.to_string()) {
                Ok(())
            } else {
                Err(StoreError::Conflict(format!(
                    "grant {id} is no longer at version {expected} (changed or missing)"
                )))
            });
        }
    }
    Ok(results)
}

/// The fast path of [`Store::commit_many`], for the usual batch where nothing conflicts: every
/// grant row first (a commit whose row is refused, e.g. a version that moved on, wrote nothing
/// and gets its own error), then the audit records of the commits that went through with one
/// chain-head read and multi-row inserts, their jobs likewise, and the jobs they complete with
/// one UPDATE. No savepoints. Any other failure returns `Err`; the caller then rolls back and
/// redoes the batch one savepoint per commit, which pins each failure on its own commit.
async fn write_batch_fast(
    conn: &mut SqliteConnection,
    commits: &[Commit],
    now: i64,
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut results = update_grant_rows(&mut *conn, commits).await?;
    for (c, result) in commits.iter().zip(results.iter_mut()) {
        if result.is_some() {
            continue;
        }
        *result = match write_grant_row(&mut *conn, c).await {
            Ok(()) => Some(Ok(())),
            // SQLite undid only the refused statement; the transaction goes on.
            Err(e @ (StoreError::Conflict(_) | StoreError::Corrupt(_))) => Some(Err(e)),
            Err(e) => return Err(e),
        };
    }
    let results: Vec<Result<(), StoreError>> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(StoreError::Corrupt("grant row not written".into()))))
        .collect();
    let written: Vec<&Commit> = commits
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_ok())
        .map(|(c, _)| c)
        .collect();
    let audit: Vec<&NewAudit> = written.iter().flat_map(|c| &c.audit).collect();
    append_chained(&mut *conn, &audit).await?;
    let jobs: Vec<&NewJob> = written.iter().flat_map(|c| &c.jobs).collect();
    insert_jobs(&mut *conn, &jobs, now).await?;
    let mut done: Vec<String> = written
        .iter()
        .filter_map(|c| c.complete_job)
        .map(|id| id.to_string())
        .collect();
    done.sort_unstable();
    done.dedup();
    for chunk in done.chunks(ROWS_PER_INSERT) {
        let mut update = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "UPDATE jobs SET state = 'done', claimed_by = NULL, claimed_until = NULL, \
             finished_at = COALESCE(finished_at, ",
        );
        update.push_bind(now).push(") WHERE id IN (");
        let mut ids = update.separated(", ");
        for id in chunk {
            ids.push_bind(id.as_str());
        }
        update.push(")");
        let marked = update.build().execute(&mut *conn).await.map_err(db_error)?;
        if marked.rows_affected() != chunk.len() as u64 {
            return Err(StoreError::Conflict(
                "a job completed by this batch does not exist".to_owned(),
            ));
        }
    }
    Ok(results)
}

/// Marks a pending delivery processed or rejected on `conn`; `Conflict` when it is not pending.
async fn write_finish(
    conn: &mut SqliteConnection,
    id: Uuid,
    outcome: &DeliveryOutcome,
    now: i64,
) -> Result<(), StoreError> {
    let (state, reason) = match outcome {
        DeliveryOutcome::Processed => ("processed", None),
        DeliveryOutcome::Rejected(reason) => ("rejected", Some(bounded(reason, MAX_ERROR_BYTES))),
    };
    let done = sqlx::query(
        "UPDATE deliveries SET state = $2, last_error = COALESCE($3, last_error), \
         claimed_by = NULL, claimed_until = NULL, finished_at = $4 \
         WHERE id = $1 AND state = 'pending'",
    )
    .bind(id.to_string())
    .bind(state)
    .bind(reason)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    if done.rows_affected() > 0 {
        return Ok(());
    }
    let state = sqlx::query_scalar::<_, String>("SELECT state FROM deliveries WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    Err(match state {
        Some(state) => StoreError::Conflict(format!("delivery {id} is {state}, no longer pending")),
        None => StoreError::Conflict(format!("delivery {id} does not exist")),
    })
}

/// Runs one commit of a batch inside a savepoint, so its failure undoes only its own rows.
/// The outer error means the batch transaction itself is no longer usable.
async fn write_in_savepoint(
    conn: &mut SqliteConnection,
    c: &Commit,
    now: i64,
) -> Result<Result<(), StoreError>, StoreError> {
    execute(&mut *conn, "SAVEPOINT one_commit").await?;
    let result = write_commit(&mut *conn, c, now).await;
    if result.is_err() {
        execute(&mut *conn, "ROLLBACK TO one_commit").await?;
    }
    execute(&mut *conn, "RELEASE one_commit").await?;
    Ok(result)
}

/// Runs a statement without parameters or results.
async fn execute(conn: &mut SqliteConnection, sql: &'static str) -> Result<(), StoreError> {
    sqlx::query(sql)
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(db_error)
}

/// The same error again, for every member of a batch that failed as a whole.
fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        StoreError::Locked(m) => StoreError::Locked(m.clone()),
    }
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
        let mut tx = self.begin_immediate().await?;
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
        tx.commit().await?;
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
        // Through the inbox writer: the lease shares the transaction (and fsync) of the
        // deliveries being ingested meanwhile, and may take them at once.
        self.ingest
            .claim(ingest::Claim {
                worker: worker.to_owned(),
                now: ms(now),
                until: lease_until(now, lease),
                limit: bounded_limit(limit),
            })
            .await
    }

    async fn finish_delivery(&self, id: Uuid, outcome: DeliveryOutcome) -> Result<(), StoreError> {
        let _turn = self.gate.turn().await?;
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        write_finish(&mut conn, id, &outcome, ms(self.clock.now())).await
    }

    /// Through the inbox writer: the marks share the transaction (and fsync) of the deliveries
    /// being ingested meanwhile; a delivery that is no longer pending fails alone.
    async fn finish_deliveries(
        &self,
        outcomes: Vec<(Uuid, DeliveryOutcome)>,
    ) -> Vec<Result<(), StoreError>> {
        if outcomes.is_empty() {
            return Vec::new();
        }
        self.ingest.finish(outcomes, ms(self.clock.now())).await
    }

    /// Through the inbox writer, in one transaction. A claim that finds nothing is held there
    /// (up to its patience) and joins the next transaction that commits new deliveries, so
    /// the worker gets them from the commit that stores them.
    async fn finish_and_claim(
        &self,
        finished: Vec<(Uuid, DeliveryOutcome)>,
        next: NextClaim<'_>,
    ) -> InboxTurn {
        if next.limit == 0 {
            return InboxTurn {
                finished: self.finish_deliveries(finished).await,
                claimed: Ok(Vec::new()),
                waited: false,
            };
        }
        let claim = ingest::Claim {
            worker: next.worker.to_owned(),
            now: ms(next.now),
            until: lease_until(next.now, next.lease),
            limit: bounded_limit(next.limit),
        };
        let (finished, claimed) = self
            .ingest
            .finish_and_claim(finished, ms(self.clock.now()), claim, next.patience)
            .await;
        // The writer answers a claim that may wait with nothing only once its patience is up.
        let waited = !next.patience.is_zero() && matches!(&claimed, Ok(found) if found.is_empty());
        InboxTurn {
            finished,
            claimed,
            waited,
        }
    }

    async fn retry_delivery(
        &self,
        id: Uuid,
        not_before: Timestamp,
        error: &str,
    ) -> Result<(), StoreError> {
        let _turn = self.gate.turn().await?;
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
        let now = ms(self.clock.now());
        let mut tx = self.begin_immediate().await?;
        write_commit(&mut tx, &c, now).await?;
        tx.commit().await
    }

    /// One transaction and one fsync for the batch. Tried first without savepoints (a few
    /// statements per batch, see `write_batch_fast`); if anything but a refused grant row goes
    /// wrong, redone with one savepoint per commit, so a commit that fails is rolled back alone.
    async fn commit_many(&self, commits: Vec<Commit>) -> Vec<Result<(), StoreError>> {
        if commits.is_empty() {
            return Vec::new();
        }
        let now = ms(self.clock.now());
        let mut tx = match self.begin_immediate().await {
            Ok(tx) => tx,
            Err(e) => return commits.iter().map(|_| Err(same_error(&e))).collect(),
        };
        match write_batch_fast(&mut tx, &commits, now).await {
            Ok(results) => {
                return match tx.commit().await {
                    Ok(()) => results,
                    Err(e) => commits.iter().map(|_| Err(same_error(&e))).collect(),
                };
            }
            Err(e) => {
                tracing::debug!(error = %e, commits = commits.len(), "batch commit redone one savepoint per commit");
                // Dropping the transaction rolls the fast attempt back.
                drop(tx);
            }
        }
        let mut tx = match self.begin_immediate().await {
            Ok(tx) => tx,
            Err(e) => return commits.iter().map(|_| Err(same_error(&e))).collect(),
        };
        let mut results = Vec::with_capacity(commits.len());
        for c in &commits {
            match write_in_savepoint(&mut tx, c, now).await {
                Ok(result) => results.push(result),
                // Dropping the transaction rolls every commit of the batch back.
                Err(e) => return commits.iter().map(|_| Err(same_error(&e))).collect(),
            }
        }
        if let Err(e) = tx.commit().await {
            return commits.iter().map(|_| Err(same_error(&e))).collect();
        }
        results
    }

    async fn get_grant(&self, id: Uuid) -> Result<Option<Grant>, StoreError> {
        self.reads().get_grant(id).await
    }

    async fn get_grants(&self, ids: &[Uuid]) -> Result<Vec<Grant>, StoreError> {
        let ids = serde_json::Value::from(ids.iter().map(Uuid::to_string).collect::<Vec<_>>());
        let rows = sqlx::query(concat!(
            "SELECT ",
            grant_columns!(),
            " FROM grants WHERE id IN (SELECT value FROM json_each($1))"
        ))
        .bind(ids.to_string())
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
        let mut tx = self.begin_immediate().await?;
        // Only the head (lowest seq) pending job of each (lane, queue key) is eligible, so a
        // claim can never take two jobs of one key, nor overtake a backing-off or leased one.
        // A job still carrying an (expired) claim was taken by a worker that never reported
        // back (crash, kill): `last_error` says so, and the next worker treats the run as a
        // re-attempt (e.g. checks for an already-posted comment).
        let rows = sqlx::query(CLAIM_JOBS)
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
        tx.commit().await?;
        claimed.sort_by_key(|j| j.seq);
        Ok(claimed)
    }

    async fn complete_job(&self, id: Uuid) -> Result<(), StoreError> {
        let _turn = self.gate.turn().await?;
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
        let _turn = self.gate.turn().await?;
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
        let _turn = self.gate.turn().await?;
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
        let _turn = self.gate.turn().await?;
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
        let mut tx = self.begin_immediate().await?;
        let records: Vec<&NewAudit> = records.iter().collect();
        append_chained(&mut tx, &records).await?;
        tx.commit().await
    }

    async fn audit_records(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        self.reads().audit_records(after, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{ChainError, verify_chain};
    use crate::clock::ManualClock;
    use crate::store::conformance::{
        at, audit, delivery, delivery_ids, grant, ids, insert, job, leased_after_marks, secs,
        transition,
    };

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

    async fn all_audit(store: &SqliteStore) -> Vec<AuditRecord> {
        store.audit_records(0, 1000).await.unwrap()
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

    /// A store in `dir` whose inbox writer batches as `group_commit` says.
    async fn open_batching(dir: &tempfile::TempDir, group_commit: GroupCommit) -> SqliteStore {
        let tuning = SqliteTuning {
            group_commit,
            ..SqliteTuning::default()
        };
        SqliteStore::open_with_tuning(
            &dir.path().join("batching.db"),
            Arc::new(ManualClock::new(at(0))),
            tuning,
        )
        .await
        .unwrap()
    }

    /// A store whose inbox writer waits `window` for company, so requests made together
    /// surely share one transaction.
    async fn open_with_window(dir: &tempfile::TempDir, window: Duration) -> SqliteStore {
        open_batching(
            dir,
            GroupCommit {
                window,
                ..GroupCommit::default()
            },
        )
        .await
    }

    #[tokio::test]
    async fn the_inbox_workers_claim_and_marks_ride_in_the_commit_of_deliveries_ingested_meanwhile()
    {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with_window(&dir, Duration::from_millis(300)).await;
        let handled = delivery("evt-handled", 0);
        store.insert_delivery(handled.clone()).await.unwrap();
        let before = store.ingest_stats();
        let new: Vec<NewDelivery> = (1..=3).map(|i| delivery(&format!("evt-{i}"), i)).collect();

        let (marked, inserted, claimed) = tokio::join!(
            store.finish_deliveries(vec![(handled.id, DeliveryOutcome::Processed)]),
            futures::future::join_all(new.iter().map(|d| store.insert_delivery(d.clone()))),
            store.claim_deliveries("w", at(10), secs(30), 10),
        );

        let after = store.ingest_stats();
        assert_eq!(
            after.transactions - before.transactions,
            1,
            "marks, rows and claim shared one transaction"
        );
        assert_eq!(after.stepwise, before.stepwise, "sent as one command");
        assert!(marked.iter().all(Result::is_ok), "{marked:?}");
        assert!(
            inserted
                .iter()
                .all(|o| matches!(o, Ok(InsertOutcome::Accepted(_))))
        );
        let claimed = claimed.unwrap();
        assert_eq!(
            delivery_ids(&claimed),
            new.iter().map(|d| d.id).collect::<Vec<_>>(),
            "the claim takes the rows committed with it, oldest first, and not the one being marked"
        );
        assert!(claimed.iter().all(|d| d.attempts == 1));
        assert_eq!(state_of(&store, handled.id).await, "processed");
    }

    #[tokio::test]
    async fn a_batch_sent_as_one_command_explains_each_refusal_and_falls_back_when_a_row_is_refused()
     {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with_window(&dir, Duration::from_millis(300)).await;
        let original = delivery("evt-original", 0);
        let pending = delivery("evt-pending", 1);
        let done = delivery("evt-done", 2);
        for d in [&original, &pending, &done] {
            store.insert_delivery(d.clone()).await.unwrap();
        }
        store
            .finish_delivery(done.id, DeliveryOutcome::Processed)
            .await
            .unwrap();
        let before = store.ingest_stats();

        // One command: marks (one no longer pending, one unknown), a repeat, a new row, a claim.
        let repeat = delivery("evt-original", 3);
        let new = delivery("evt-new", 4);
        let unknown = Uuid::now_v7();
        let (marked, inserted, claimed) = tokio::join!(
            store.finish_deliveries(vec![
                (pending.id, DeliveryOutcome::Processed),
                (done.id, DeliveryOutcome::Processed),
                (unknown, DeliveryOutcome::Processed),
            ]),
            futures::future::join_all([&repeat, &new].map(|d| store.insert_delivery(d.clone()))),
            store.claim_deliveries("w", at(10), secs(30), 10),
        );
        assert_eq!(store.ingest_stats().stepwise, before.stepwise);
        assert!(marked[0].is_ok(), "{marked:?}");
        assert!(
            matches!(&marked[1], Err(StoreError::Conflict(m)) if m.contains("is processed")),
            "{marked:?}"
        );
        assert!(
            matches!(&marked[2], Err(StoreError::Conflict(m)) if m.contains("does not exist")),
            "{marked:?}"
        );
        let inserted: Vec<InsertOutcome> = inserted.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            inserted,
            vec![
                InsertOutcome::Duplicate(original.id),
                InsertOutcome::Accepted(new.id)
            ]
        );
        assert_eq!(delivery_ids(&claimed.unwrap()), vec![original.id, new.id]);

        // A reused id makes SQLite refuse the command: it is rolled back and redone statement
        // by statement, where only that row fails.
        let mut clash = delivery("evt-clash", 5);
        clash.id = original.id;
        let fine = delivery("evt-fine", 6);
        let (inserted, claimed) = tokio::join!(
            futures::future::join_all([&clash, &fine].map(|d| store.insert_delivery(d.clone()))),
            store.claim_deliveries("w", at(10), secs(30), 10),
        );
        assert_eq!(store.ingest_stats().stepwise, before.stepwise + 1);
        assert!(
            matches!(&inserted[0], Err(StoreError::Conflict(m)) if m.contains("already used")),
            "{inserted:?}"
        );
        assert_eq!(
            inserted[1].as_ref().unwrap(),
            &InsertOutcome::Accepted(fine.id)
        );
        assert_eq!(delivery_ids(&claimed.unwrap()), vec![fine.id]);

        // Neither the writer's own connection (which sent the refused command) nor a pooled
        // one (which redid it) was left inside a transaction: the next batches go as one
        // command again and commit, and every pooled connection can still write.
        for n in 0..2 * MAX_CONNECTIONS {
            let d = delivery(&format!("evt-after-{n}"), 7);
            assert_eq!(
                store.insert_delivery(d.clone()).await.unwrap(),
                InsertOutcome::Accepted(d.id)
            );
        }
        assert_eq!(store.ingest_stats().stepwise, before.stepwise + 1);
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut conn = store.pool().acquire().await.unwrap();
            sqlx::query("BEGIN IMMEDIATE; ROLLBACK")
                .execute(&mut *conn)
                .await
                .unwrap();
            held.push(conn);
        }
    }

    #[tokio::test]
    async fn a_claim_meeting_an_unreadable_row_is_refused_alone_and_leases_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with_window(&dir, Duration::from_millis(300)).await;
        let damaged = delivery("evt-damaged", 0);
        store.insert_delivery(damaged.clone()).await.unwrap();
        sqlx::query("UPDATE deliveries SET headers = 'not json' WHERE id = $1")
            .bind(damaged.id.to_string())
            .execute(store.pool())
            .await
            .unwrap();
        let fresh_row = delivery("evt-new", 1);

        let (inserted, claimed) = tokio::join!(
            store.insert_delivery(fresh_row.clone()),
            store.claim_deliveries("w", at(10), secs(30), 10),
        );

        assert_eq!(inserted.unwrap(), InsertOutcome::Accepted(fresh_row.id));
        assert!(
            matches!(&claimed, Err(StoreError::Corrupt(m)) if m.contains("headers")),
            "{claimed:?}"
        );
        let leased: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deliveries WHERE claimed_by IS NOT NULL OR attempts > 0",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(leased, 0, "the refused claim was undone, the insert kept");
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
        let (outcomes, claimed, marked) = tokio::join!(
            futures::future::join_all(deliveries.iter().map(|d| store.insert_delivery(d.clone()))),
            store.claim_deliveries("w", at(10), secs(30), 10),
            store.finish_deliveries(vec![(deliveries[0].id, DeliveryOutcome::Processed)]),
        );
        for outcome in &outcomes {
            assert!(
                matches!(outcome, Err(StoreError::Unavailable(m)) if m.contains("busy")),
                "{outcome:?}"
            );
        }
        assert!(
            matches!(&claimed, Err(StoreError::Unavailable(m)) if m.contains("busy")),
            "{claimed:?}"
        );
        assert!(
            matches!(&marked[..], [Err(StoreError::Unavailable(m))] if m.contains("busy")),
            "{marked:?}"
        );
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

    /// A batch larger than one multi-row INSERT whose second statement is refused (a reused
    /// delivery id) is redone row by row: rows its first statement already wrote are still
    /// answered `Accepted`, not mistaken for duplicates of themselves.
    #[tokio::test]
    async fn a_refused_row_late_in_a_large_batch_leaves_the_rest_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_batching(
            &dir,
            GroupCommit {
                max_batch: 512,
                window: Duration::from_millis(500),
                queue: 1024,
            },
        )
        .await;
        let taken = delivery("evt-taken", 0);
        store.insert_delivery(taken.clone()).await.unwrap();
        let deliveries: Vec<NewDelivery> =
            (0..299).map(|i| delivery(&format!("evt-{i}"), i)).collect();
        let mut reused = delivery("evt-reused", 299);
        reused.id = taken.id;

        // The reused id queues last, inside the same window: it lands in the second statement.
        let (outcomes, refused) = tokio::join!(
            futures::future::join_all(deliveries.iter().map(|d| store.insert_delivery(d.clone()))),
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                store.insert_delivery(reused.clone()).await
            }
        );

        for (n, (d, outcome)) in deliveries.iter().zip(outcomes).enumerate() {
            assert_eq!(outcome.unwrap(), InsertOutcome::Accepted(d.id), "row {n}");
        }
        assert!(
            matches!(refused, Err(StoreError::Conflict(_))),
            "{refused:?}"
        );
        assert_eq!(
            delivery_count(&store).await,
            300,
            "299 new rows and the first one"
        );
        assert_eq!(
            store.ingest_stats().largest_batch,
            300,
            "one batch, two statements"
        );
    }

    #[tokio::test]
    async fn zero_window_and_zero_sizes_still_commit_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_batching(
            &dir,
            GroupCommit {
                max_batch: 0,
                window: Duration::ZERO,
                queue: 0,
            },
        )
        .await;
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

    /// The inbox worker's turn with `patience`, as it asks at `now`.
    fn patient_claim(now: Timestamp, patience: Duration) -> NextClaim<'static> {
        NextClaim {
            worker: "w",
            now,
            lease: secs(60),
            limit: 10,
            patience,
        }
    }

    /// A delivery the inbox worker has claimed (and, in the tests, handled), with nothing else
    /// left to claim.
    async fn handled_by_the_worker(store: &SqliteStore) -> NewDelivery {
        let handled = delivery("evt-handled", 1);
        store.insert_delivery(handled.clone()).await.unwrap();
        let taken = store
            .claim_deliveries("w", at(2), secs(60), 10)
            .await
            .unwrap();
        assert_eq!(taken.len(), 1);
        handled
    }

    async fn state_of(store: &SqliteStore, id: Uuid) -> String {
        sqlx::query_scalar("SELECT state FROM deliveries WHERE id = $1")
            .bind(id.to_string())
            .fetch_one(store.pool())
            .await
            .unwrap()
    }

    /// Waits (bounded) until the inbox writer has run more than `n` transactions.
    async fn writer_passes(store: &SqliteStore, n: u64) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while store.ingest_stats().transactions <= n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the inbox writer ran");
    }

    /// Stores `new` while `held` (a spawned `finish_and_claim`) waits, and returns the turn its
    /// commit answered; `answered` says why it must come within the timeout.
    async fn insert_into_held_turn(
        store: &SqliteStore,
        new: &NewDelivery,
        held: tokio::task::JoinHandle<InboxTurn>,
        answered: &str,
    ) -> InboxTurn {
        let inserted = store.insert_delivery(new.clone()).await.unwrap();
        assert_eq!(inserted, InsertOutcome::Accepted(new.id));
        tokio::time::timeout(Duration::from_secs(10), held)
            .await
            .expect(answered)
            .unwrap()
    }

    #[tokio::test]
    async fn a_claim_that_finds_nothing_waits_and_leases_the_next_delivery_in_the_commit_that_stores_it()
     {
        let (_dir, store) = fresh().await;
        let store = Arc::new(store);
        let before = store.ingest_stats().transactions;
        let waiting = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .finish_and_claim(Vec::new(), patient_claim(at(10), Duration::from_secs(60)))
                    .await
            }
        });
        writer_passes(&store, before).await; // the claim ran once and found nothing
        assert!(
            !waiting.is_finished(),
            "an empty claim with patience is held"
        );

        let new = delivery("evt-new", 5);
        let turn = insert_into_held_turn(
            &store,
            &new,
            waiting,
            "the held claim is answered with the delivery, not after its patience",
        )
        .await;

        let claimed = turn.claimed.unwrap();
        assert_eq!(delivery_ids(&claimed), vec![new.id]);
        assert_eq!(claimed[0].attempts, 1);
        assert!(!turn.waited);
        assert_eq!(
            store.ingest_stats().transactions - before,
            2,
            "the empty claim, then the insert with the held claim in its transaction"
        );
    }

    #[tokio::test]
    async fn a_claim_that_could_find_nothing_costs_no_transaction_and_claims_at_the_clock_of_its_deadline()
     {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(at(0)));
        let store = Arc::new(
            SqliteStore::open_with_clock(&dir.path().join("held.db"), clock.clone())
                .await
                .unwrap(),
        );
        let later = delivery("evt-retry", 1);
        store.insert_delivery(later.clone()).await.unwrap();
        let taken = store
            .claim_deliveries("w", at(2), secs(60), 10)
            .await
            .unwrap();
        assert_eq!(taken.len(), 1, "the claim took everything there was");
        store
            .retry_delivery(later.id, at(100), "ITSM down")
            .await
            .unwrap();

        let before = store.ingest_stats().transactions;
        let waiting = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .finish_and_claim(Vec::new(), patient_claim(at(10), Duration::from_secs(2)))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            store.ingest_stats().transactions,
            before,
            "nothing was committed since the last claim: the claim is held without writing"
        );
        clock.advance(secs(200)); // the retry comes due while the claim is held
        let turn = waiting.await.unwrap();

        let claimed = turn.claimed.unwrap();
        assert_eq!(delivery_ids(&claimed), vec![later.id]);
        assert!(!turn.waited);
        assert_eq!(store.ingest_stats().transactions - before, 1);
        let until: i64 = sqlx::query_scalar("SELECT claimed_until FROM deliveries WHERE id = $1")
            .bind(later.id.to_string())
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(
            until,
            ms(at(260)),
            "the lease counts from the time the claim ran"
        );

        // Nothing left: the claim is answered empty once its patience is up, and says it waited.
        let turn = store
            .finish_and_claim(
                Vec::new(),
                patient_claim(at(200), Duration::from_millis(50)),
            )
            .await;
        assert!(turn.claimed.unwrap().is_empty());
        assert!(turn.waited);
    }

    #[tokio::test]
    async fn marks_sent_with_a_claim_that_could_find_nothing_commit_with_the_next_delivery() {
        let (_dir, store) = fresh().await;
        let store = Arc::new(store);
        let handled = handled_by_the_worker(&store).await;
        let before = store.ingest_stats().transactions;

        let turn = tokio::spawn({
            let store = store.clone();
            async move {
                let marks = vec![(handled.id, DeliveryOutcome::Processed)];
                store
                    .finish_and_claim(marks, patient_claim(at(10), Duration::from_secs(60)))
                    .await
            }
        });
        let new = delivery("evt-new", 5);
        let turn = insert_into_held_turn(
            &store,
            &new,
            turn,
            "the turn is answered by the commit that stores the new delivery",
        )
        .await;

        assert_eq!(turn.finished.len(), 1);
        assert_eq!(leased_after_marks(turn), vec![new.id]);
        assert_eq!(
            store.ingest_stats().transactions - before,
            1,
            "the marks, the new delivery and the claim share one transaction"
        );
        assert_eq!(state_of(&store, handled.id).await, "processed");
    }

    #[tokio::test]
    async fn a_held_claim_whose_worker_stopped_leases_nothing_and_its_marks_still_commit() {
        let (_dir, store) = fresh().await;
        let handled = handled_by_the_worker(&store).await;
        {
            let marks = vec![(handled.id, DeliveryOutcome::Processed)];
            let mut turn = std::pin::pin!(
                store.finish_and_claim(marks, patient_claim(at(10), Duration::from_secs(60)))
            );
            assert!(futures::poll!(&mut turn).is_pending());
        } // the worker stops listening

        let new = delivery("evt-new", 5);
        store.insert_delivery(new.clone()).await.unwrap();

        let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT dedupe_key, state, claimed_by FROM deliveries ORDER BY dedupe_key",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        assert_eq!(
            rows,
            vec![
                ("evt-handled".into(), "processed".into(), None),
                ("evt-new".into(), "pending".into(), None),
            ],
            "the marks commit with the next delivery, which is left for a live worker"
        );
    }

    #[tokio::test]
    async fn held_marks_are_written_when_the_store_closes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_at(&dir).await;
        let handled = handled_by_the_worker(&store).await;
        let before = store.ingest_stats().transactions;
        {
            // The inbox worker hands over its marks with a claim, and is stopped while it waits.
            let marks = vec![(handled.id, DeliveryOutcome::Processed)];
            let mut turn = std::pin::pin!(
                store.finish_and_claim(marks, patient_claim(at(10), Duration::from_secs(60)))
            );
            assert!(
                futures::poll!(&mut turn).is_pending(),
                "handed to the writer, which holds it"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            store.ingest_stats().transactions,
            before,
            "the marks were held"
        );

        store.close().await;
        let store = open_at(&dir).await;
        assert_eq!(state_of(&store, handled.id).await, "processed");
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

    // ---- outbox ----

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

    /// The plan of a query: one line per step, as `EXPLAIN QUERY PLAN` prints them.
    async fn plan_of(store: &SqliteStore, sql: &str, binds: usize) -> String {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
        for _ in 0..binds {
            query = query.bind(1_i64);
        }
        let rows = query.fetch_all(store.pool()).await.unwrap();
        rows.iter()
            .map(|r| r.get::<String, _>("detail"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Found by the 100,000-grant benchmark: claims that sort the whole backlog inside the
    /// write lock make every claim slower as work piles up. The hot queries must walk an index
    /// in the order they return rows.
    #[tokio::test]
    async fn claims_and_policy_lookups_use_their_indexes_without_sorting_the_backlog() {
        let (_dir, store) = fresh().await;
        let jobs = plan_of(&store, CLAIM_JOBS, 6).await;
        assert!(jobs.contains("USING INDEX jobs_claimable"), "{jobs}");
        assert!(jobs.contains("jobs_queue_order"), "{jobs}");
        assert!(!jobs.contains("TEMP B-TREE"), "{jobs}");
        let mut claim = sqlx::QueryBuilder::new("");
        ingest::push_claim(
            &mut claim,
            &ingest::Claim {
                worker: "w".into(),
                now: 1,
                until: 1,
                limit: 1,
            },
        );
        let deliveries = plan_of(&store, claim.sql().as_str(), 4).await;
        assert!(deliveries.contains("deliveries_claimable"), "{deliveries}");
        assert!(!deliveries.contains("TEMP B-TREE"), "{deliveries}");
        let counts = plan_of(&store, crate::store::reads::COUNT_LIVE_GRANTS, 2).await;
        assert!(
            counts.contains("SEARCH grants USING INDEX grants_live_subject")
                && counts.contains("SEARCH grants USING INDEX grants_live_target"),
            "{counts}"
        );
        let unresolved = plan_of(
            &store,
            "SELECT id FROM grants WHERE state = 'revoke_failed' \
             AND (lower(trim(subject)) = lower(trim($1)) OR lower(trim(target)) = lower(trim($2))) \
             ORDER BY requested_at, id LIMIT 1",
            2,
        )
        .await;
        assert!(unresolved.contains("grants_revoke_failed"), "{unresolved}");
    }

    /// A bound LIMIT lets SQLite plan around its value, so each new binding expired the cached
    /// claim and compiled it again (the P1 profile showed it). The claim's text, and so its
    /// compiled statement, must be the same from one claim to the next.
    #[test]
    fn the_inbox_claim_reads_the_same_from_one_claim_to_the_next() {
        let text = |worker: &str, now: i64| {
            let mut claim = sqlx::QueryBuilder::new("");
            ingest::push_claim(
                &mut claim,
                &ingest::Claim {
                    worker: worker.into(),
                    now,
                    until: now + 30_000,
                    limit: 64,
                },
            );
            claim.sql().as_str().to_owned()
        };
        assert_eq!(text("a", 1), text("b", 1_700_000_000_000));
        assert!(text("a", 1).ends_with(
            "LIMIT 64) RETURNING id, connector, dedupe_key, received_at, headers, body, attempts"
        ));
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
}
