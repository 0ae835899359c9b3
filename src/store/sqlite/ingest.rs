//! Group commit for the inbox: one writer task turns many concurrent `insert_delivery` calls
//! into one `BEGIN IMMEDIATE … COMMIT`.
//!
//! Why: with `synchronous=FULL` every commit waits for an fsync, so committing each delivery on
//! its own caps ingest at a few thousand rows per second no matter how fast the rest of the path
//! is. Sharing one fsync between up to [`GroupCommit::max_batch`] rows lifts that cap by an order
//! of magnitude while keeping the one promise ingress makes: **no caller hears anything before
//! the commit that holds its row has returned.**
//!
//! How a batch forms: the writer sleeps until a request arrives, then keeps taking requests
//! until it holds `max_batch` of them or `window` has passed since the first one *was queued*,
//! whichever comes first. Requests that arrive while a batch commits simply queue (the queue is
//! bounded, so a stalled disk pushes back on the HTTP handlers instead of growing memory); by
//! the time the writer is free they have usually waited out the window, so they are committed
//! straight away with whatever else is queued: under load the commits follow each other back to
//! back, and no row waits longer than one window plus the commit in progress.
//!
//! What each caller hears, only after the commit:
//! - `Accepted(own id)` for a new (connector, dedupe key);
//! - `Duplicate(first id)` for a repeat, including a repeat of a row earlier in the *same*
//!   batch (rows are inserted in arrival order, so the first one wins);
//! - the row's own error when only that row was refused (its id is already used);
//! - `Unavailable` for every caller of a batch whose transaction could not begin, write or
//!   commit, so ingress answers 503 and the sender retries. Nothing of that batch is stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::db_error;
use super::gate::WriteGate;
use crate::store::{InsertOutcome, StoreError};

/// How the inbox writer batches inserts. The defaults suit SQLite on one local disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    /// Most rows committed together. Larger batches share an fsync among more callers but make
    /// each caller wait for more rows to be written first.
    pub max_batch: usize,
    /// Longest wait for more rows after the first one of a batch arrived. `Duration::ZERO`
    /// commits whatever is already queued without waiting (still batching under load, because
    /// requests queue while the previous batch commits).
    pub window: Duration,
    /// Requests that may wait for the writer; when full, callers wait for room (backpressure).
    pub queue: usize,
}

impl Default for GroupCommit {
    fn default() -> Self {
        Self {
            max_batch: 128,
            window: Duration::from_millis(2),
            queue: 4096,
        }
    }
}

impl GroupCommit {
    /// The same settings with every bound at least 1, so a zero in a configuration can neither
    /// stall the writer nor build a channel that cannot hold a request.
    fn sanitized(self) -> Self {
        Self {
            max_batch: self.max_batch.max(1),
            window: self.window,
            queue: self.queue.max(1),
        }
    }
}

/// Counters of the writer's work, so benchmarks and metrics can see how well batching works.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestStats {
    /// Transactions committed (or attempted) by the writer.
    pub batches: u64,
    /// Requests answered.
    pub rows: u64,
    /// Largest batch seen so far.
    pub largest_batch: u64,
    /// Batches that failed as a whole (every caller got `Unavailable`).
    pub failed_batches: u64,
}

/// Shared counters behind [`IngestStats`].
#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    rows: AtomicU64,
    largest_batch: AtomicU64,
    failed_batches: AtomicU64,
}

/// A delivery already encoded for its row, so encoding errors reach the caller at once and the
/// writer only runs SQL.
#[derive(Debug)]
pub(super) struct PreparedDelivery {
    pub(super) id: Uuid,
    pub(super) connector: String,
    pub(super) dedupe_key: String,
    /// Unix milliseconds.
    pub(super) received_at: i64,
    /// JSON array of `[name, value]` pairs.
    pub(super) headers: String,
    pub(super) body: Vec<u8>,
}

/// One caller waiting for its batch.
struct Request {
    row: PreparedDelivery,
    reply: oneshot::Sender<Result<InsertOutcome, StoreError>>,
    /// When the caller queued it: the window counts from here, not from when the writer got
    /// to it, so rows that queued during the previous commit do not wait a second time.
    queued_at: tokio::time::Instant,
}

/// The handle the store keeps: the queue into the writer, and the writer itself.
#[derive(Debug)]
pub(super) struct Ingest {
    queue: mpsc::Sender<Request>,
    writer: JoinHandle<()>,
    counters: Arc<Counters>,
    /// How long a caller waits for room in a full queue before giving up with `Unavailable`.
    enqueue_timeout: Duration,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Bodies and headers stay out of debug output.
        f.debug_struct("Request")
            .field("id", &self.row.id)
            .finish_non_exhaustive()
    }
}

impl Ingest {
    /// Spawns the writer on the current tokio runtime. `keep_alive` is held by the writer until
    /// it has answered its last request (the store passes its instance lock, so another process
    /// cannot open the file while a final batch is still being committed).
    pub(super) fn start<K: Send + Sync + 'static>(
        pool: SqlitePool,
        gate: WriteGate,
        config: GroupCommit,
        enqueue_timeout: Duration,
        keep_alive: Arc<K>,
    ) -> Ingest {
        let config = config.sanitized();
        let (queue, rx) = mpsc::channel(config.queue);
        let counters = Arc::new(Counters::default());
        let writer = tokio::spawn(run(pool, gate, rx, config, counters.clone(), keep_alive));
        Ingest {
            queue,
            writer,
            counters,
            enqueue_timeout,
        }
    }

    /// Queues `row` and waits until the batch holding it has committed (or failed).
    pub(super) async fn insert(&self, row: PreparedDelivery) -> Result<InsertOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            row,
            reply,
            queued_at: tokio::time::Instant::now(),
        };
        match tokio::time::timeout(self.enqueue_timeout, self.queue.send(request)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(StoreError::Unavailable(
                    "the inbox writer has stopped".to_owned(),
                ));
            }
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "the inbox writer queue stayed full for {} ms",
                    self.enqueue_timeout.as_millis()
                )));
            }
        }
        // The writer answers every request it takes; a dropped sender means it died mid-batch,
        // in which case the batch never committed.
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the inbox writer stopped before committing".to_owned(),
            ))
        })
    }

    /// Current counters.
    pub(super) fn stats(&self) -> IngestStats {
        IngestStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            rows: self.counters.rows.load(Ordering::Relaxed),
            largest_batch: self.counters.largest_batch.load(Ordering::Relaxed),
            failed_batches: self.counters.failed_batches.load(Ordering::Relaxed),
        }
    }

    /// Stops taking requests, lets the writer commit and answer what is queued, and waits for it.
    pub(super) async fn shutdown(self) {
        drop(self.queue);
        // A writer that panicked has nothing left to answer; its callers already got errors.
        let _ = self.writer.await;
    }
}

/// The writer loop: form a batch, commit it, answer it; until every sender is gone.
async fn run<K>(
    pool: SqlitePool,
    gate: WriteGate,
    mut rx: mpsc::Receiver<Request>,
    config: GroupCommit,
    counters: Arc<Counters>,
    keep_alive: Arc<K>,
) {
    let mut batch: Vec<Request> = Vec::with_capacity(config.max_batch);
    loop {
        let Some(first) = rx.recv().await else {
            break;
        };
        let deadline = first.queued_at + config.window;
        batch.push(first);
        while batch.len() < config.max_batch {
            let room = config.max_batch - batch.len();
            // Whatever is already queued joins without waiting.
            if let Some(taken) = rx.recv_many(&mut batch, room).now_or_never() {
                if taken == 0 {
                    break; // every sender is gone; commit what we hold
                }
                continue;
            }
            if config.window.is_zero() {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        commit_batch(&pool, &gate, &mut batch, &counters).await;
    }
    drop(keep_alive);
}

/// Writes `batch` in one transaction and answers every request in it, emptying it.
async fn commit_batch(
    pool: &SqlitePool,
    gate: &WriteGate,
    batch: &mut Vec<Request>,
    counters: &Counters,
) {
    let n = batch.len() as u64;
    counters.batches.fetch_add(1, Ordering::Relaxed);
    counters.rows.fetch_add(n, Ordering::Relaxed);
    counters.largest_batch.fetch_max(n, Ordering::Relaxed);
    metrics::histogram!("jitbridge_ingest_batch_rows").record(n as f64);

    let started = std::time::Instant::now();
    let written = write_batch(pool, gate, batch).await;
    // From asking for the write turn to the commit's return: what every row of the batch
    // waited for on top of the window.
    metrics::histogram!("jitbridge_ingest_commit_seconds").record(started.elapsed().as_secs_f64());
    match written {
        Ok(outcomes) => {
            for (request, outcome) in batch.drain(..).zip(outcomes) {
                // A caller that gave up (request timeout) no longer listens; its row is stored
                // all the same and a retry will be told it is a duplicate.
                let _ = request.reply.send(outcome);
            }
        }
        Err(e) => {
            counters.failed_batches.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(rows = n, error = %e, "inbox batch failed; every delivery in it answered 503");
            let msg = match e {
                StoreError::Unavailable(m) => m,
                other => other.to_string(),
            };
            for request in batch.drain(..) {
                let _ = request
                    .reply
                    .send(Err(StoreError::Unavailable(msg.clone())));
            }
        }
    }
}

/// Inserts every row of `batch` in arrival order inside one `BEGIN IMMEDIATE` transaction.
/// Returns each row's outcome once the commit returned, or the error that sank the batch.
async fn write_batch(
    pool: &SqlitePool,
    gate: &WriteGate,
    batch: &[Request],
) -> Result<Vec<Result<InsertOutcome, StoreError>>, StoreError> {
    let mut tx = gate.begin(pool).await?;
    let outcomes = match insert_all(&mut tx, batch).await {
        Ok(outcomes) => outcomes,
        // Anything else (busy, I/O, a damaged file) sinks the batch; dropping `tx` rolls back
        // whatever was written.
        Err(RowError::Batch(e)) => return Err(e),
        // A constraint refused a row (its id is already used), which undid that multi-row
        // statement: insert row by row, so that only that row fails (rows an earlier statement
        // of the batch wrote are recognized as this batch's own).
        Err(RowError::Row(_)) => {
            let mut outcomes = Vec::with_capacity(batch.len());
            for request in batch {
                match insert_one(&mut tx, &request.row).await {
                    Ok(outcome) => outcomes.push(Ok(outcome)),
                    // SQLite undid that one statement; the transaction goes on for the others.
                    Err(RowError::Row(e)) => outcomes.push(Err(e)),
                    Err(RowError::Batch(e)) => return Err(e),
                }
            }
            outcomes
        }
    };
    tx.commit().await?;
    Ok(outcomes)
}

/// Rows per multi-row INSERT (7 parameters each).
const ROWS_PER_INSERT: usize = 200;

/// Inserts the whole batch with a few multi-row statements (`ON CONFLICT … DO NOTHING
/// RETURNING id`), in arrival order, so a repeat of an earlier row of the same batch is the
/// duplicate. Rows that were not inserted are duplicates: their first id is looked up.
async fn insert_all(
    conn: &mut SqliteConnection,
    batch: &[Request],
) -> Result<Vec<Result<InsertOutcome, StoreError>>, RowError> {
    let mut inserted = std::collections::HashSet::with_capacity(batch.len());
    for chunk in batch.chunks(ROWS_PER_INSERT) {
        let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO deliveries (id, connector, dedupe_key, received_at, headers, body, \
             state, attempts, next_at) ",
        );
        insert.push_values(chunk, |mut row, request| {
            let d = &request.row;
            row.push_bind(d.id.to_string())
                .push_bind(d.connector.as_str())
                .push_bind(d.dedupe_key.as_str())
                .push_bind(d.received_at)
                .push_bind(d.headers.as_str())
                .push_bind(d.body.as_slice())
                .push_bind("pending")
                .push_bind(0_i32)
                .push_bind(d.received_at);
        });
        insert.push(" ON CONFLICT (connector, dedupe_key) DO NOTHING RETURNING id");
        let ids: Vec<String> = insert
            .build_query_scalar()
            .fetch_all(&mut *conn)
            .await
            .map_err(row_error)?;
        inserted.extend(ids);
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for request in batch {
        let d = &request.row;
        if inserted.contains(&d.id.to_string()) {
            outcomes.push(Ok(InsertOutcome::Accepted(d.id)));
            continue;
        }
        outcomes.push(first_of(&mut *conn, d).await?.map(InsertOutcome::Duplicate));
    }
    Ok(outcomes)
}

/// Whether a failure concerns one row or the whole transaction.
enum RowError {
    Row(StoreError),
    Batch(StoreError),
}

/// Classifies a driver error: constraint violations are the row's own problem.
fn row_error(e: sqlx::Error) -> RowError {
    let constraint = matches!(
        &e,
        sqlx::Error::Database(d)
            if d.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0) & 0xff == 19
    );
    if constraint {
        RowError::Row(db_error(e))
    } else {
        RowError::Batch(db_error(e))
    }
}

/// Inserts one row, or finds the id of the row that already holds its (connector, dedupe key)
/// — possibly one inserted earlier in this same transaction.
async fn insert_one(
    conn: &mut SqliteConnection,
    d: &PreparedDelivery,
) -> Result<InsertOutcome, RowError> {
    let inserted = sqlx::query(
        "INSERT INTO deliveries (id, connector, dedupe_key, received_at, headers, body, state, \
         attempts, next_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $4) \
         ON CONFLICT (connector, dedupe_key) DO NOTHING",
    )
    .bind(d.id.to_string())
    .bind(d.connector.as_str())
    .bind(d.dedupe_key.as_str())
    .bind(d.received_at)
    .bind(d.headers.as_str())
    .bind(d.body.as_slice())
    .execute(&mut *conn)
    .await
    .map_err(|e| match row_error(e) {
        RowError::Row(StoreError::Conflict(_)) => RowError::Row(StoreError::Conflict(format!(
            "delivery id {} is already used",
            d.id
        ))),
        other => other,
    })?;
    if inserted.rows_affected() == 1 {
        return Ok(InsertOutcome::Accepted(d.id));
    }
    match first_of(conn, d).await? {
        // Written by an earlier statement of this same transaction (the multi-row insert
        // before a later one of its statements was refused): this row is the new one.
        Ok(first) if first == d.id => Ok(InsertOutcome::Accepted(d.id)),
        Ok(first) => Ok(InsertOutcome::Duplicate(first)),
        Err(e) => Err(RowError::Row(e)),
    }
}

/// The id of the row already holding `d`'s (connector, dedupe key); an `Err` inside when that
/// id is unreadable (only that row's problem).
async fn first_of(
    conn: &mut SqliteConnection,
    d: &PreparedDelivery,
) -> Result<Result<Uuid, StoreError>, RowError> {
    let first: String =
        sqlx::query_scalar("SELECT id FROM deliveries WHERE connector = $1 AND dedupe_key = $2")
            .bind(d.connector.as_str())
            .bind(d.dedupe_key.as_str())
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| RowError::Batch(db_error(e)))?;
    Ok(Uuid::parse_str(&first)
        .map_err(|e| StoreError::Corrupt(format!("deliveries.id: not a UUID: {e}"))))
}
