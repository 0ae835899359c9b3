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
//! The schema lives in `migrations/sqlite/` and is embedded at compile time.

mod rows;

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
    NewDelivery, NewJob, OutboxStats, Store, StoreError,
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

/// The embedded store: one SQLite database file, owned exclusively by this process.
///
/// Dropping it (or [`SqliteStore::close`]) releases the instance lock.
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Where new job rows get their `created_at` (the backlog-age metric); injectable so
    /// simulated time in tests gives meaningful ages.
    clock: SharedClock,
    /// The database file, for error messages.
    path: PathBuf,
    /// Held (exclusively locked) for the lifetime of the store; the OS drops the lock with it.
    _instance_lock: File,
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
            .busy_timeout(BUSY_TIMEOUT);
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

        Ok(SqliteStore {
            pool,
            clock,
            path: path.to_path_buf(),
            _instance_lock: instance_lock,
        })
    }

    /// Closes every connection (checkpointing the WAL) and then releases the instance lock,
    /// so the next process can open the file straight away.
    pub async fn close(self) {
        self.pool.close().await;
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

    // ---- inbox ----

    async fn insert_delivery(&self, d: NewDelivery) -> Result<InsertOutcome, StoreError> {
        let headers = to_json("delivery headers", &d.headers)?;
        let received_at = ms(d.received_at);
        let mut tx = self.begin_immediate().await?;
        let inserted = sqlx::query(
            "INSERT INTO deliveries (id, connector, dedupe_key, received_at, headers, body, state, \
             attempts, next_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $4) \
             ON CONFLICT (connector, dedupe_key) DO NOTHING",
        )
        .bind(d.id.to_string())
        .bind(d.connector.as_str())
        .bind(d.dedupe_key.as_str())
        .bind(received_at)
        .bind(headers)
        .bind(d.body.as_slice())
        .execute(&mut *tx)
        .await
        .map_err(|e| match db_error(e) {
            StoreError::Conflict(_) => {
                StoreError::Conflict(format!("delivery id {} is already used", d.id))
            }
            other => other,
        })?;
        if inserted.rows_affected() == 1 {
            tx.commit().await.map_err(db_error)?;
            return Ok(InsertOutcome::Accepted(d.id));
        }
        let first: String = sqlx::query_scalar(
            "SELECT id FROM deliveries WHERE connector = $1 AND dedupe_key = $2",
        )
        .bind(d.connector.as_str())
        .bind(d.dedupe_key.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.rollback().await.map_err(db_error)?;
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
        claimed.sort_by(|a, b| (a.received_at, a.id).cmp(&(b.received_at, b.id)));
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
        let rows = sqlx::query(concat!(
            "UPDATE jobs SET claimed_by = $1, claimed_until = $2 \
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
