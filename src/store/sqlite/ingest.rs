//! Group commit for the inbox: one writer task turns every inbox write of this process — new
//! deliveries from concurrent `insert_delivery` calls, and the inbox worker's claims and
//! processed marks — into one `BEGIN IMMEDIATE … COMMIT`.
//!
//! Why: with `synchronous=FULL` every commit waits for an fsync, and SQLite has one write lock.
//! Committing each delivery on its own caps ingest at a few thousand rows per second no matter
//! how fast the rest of the path is; and when the inbox worker takes its own write turns to
//! claim and mark what ingest just stored, ingest spends most of its time queueing behind it
//! (the P1 benchmark measured 2.5 of those turns per ingest commit). Sharing one transaction
//! and one fsync between up to [`GroupCommit::max_batch`] requests of either kind lifts both
//! caps while keeping the one promise ingress makes: **no caller hears anything before the
//! commit that holds its row has returned.**
//!
//! How a batch forms: the writer sleeps until a request arrives, then keeps taking requests
//! until it holds `max_batch` of them or `window` has passed since the first one *was queued*,
//! whichever comes first (the default window is zero: take whatever is queued). Requests that
//! arrive while a batch commits simply queue (the queue is bounded, so a stalled disk pushes
//! back on the HTTP handlers instead of growing memory); by the time the writer is free they
//! have usually waited out the window, so they are committed straight away with whatever else
//! is queued: under load the commits follow each other back to back, and no row waits longer
//! than one window plus the commit in progress.
//!
//! Inside the transaction, in this order: processed marks (so a claim in the same batch cannot
//! hand out a delivery that is being marked), new deliveries in arrival order, then claims (so a
//! claim can take the rows committed with it, sparing the worker a round). The whole
//! transaction normally goes to SQLite's thread as one command ([`write_in_one_trip`]), on a
//! connection the writer keeps for itself ([`WriterConnection`]); a refused row sends it
//! statement by statement instead.
//!
//! The inbox worker sends its processed marks together with its next claim, and the claim may
//! wait. When it could find nothing (every delivery stored so far has been claimed), the writer
//! holds it, marks and all, without writing ([`Held`]): it joins the next transaction that
//! stores new deliveries, so the worker gets them from the commit that stores them, or runs on
//! its own when its patience is up (this is the worker's idle poll). At a light load that is one
//! transaction per delivery instead of three or four.
//!
//! What each caller hears, only after the commit:
//! - `Accepted(own id)` for a new (connector, dedupe key);
//! - `Duplicate(first id)` for a repeat, including a repeat of a row earlier in the *same*
//!   batch (rows are inserted in arrival order, so the first one wins);
//! - the row's own error when only that row was refused (its id is already used);
//! - a claim: its leased deliveries, or its own error when a claimed row cannot be read (that
//!   claim is undone alone); a claim that may wait is answered by the first transaction that
//!   leases it something, or with nothing once its patience is up;
//! - processed marks: one result per delivery (one no longer pending fails alone);
//! - `Unavailable` for every caller of a batch whose transaction could not begin, write or
//!   commit, so ingress answers 503 and the sender retries. Nothing of that batch is stored.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use sqlx::sqlite::{SqliteConnectOptions, SqliteRow};
use sqlx::{ConnectOptions, Connection, Either, Executor, Row, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::gate::WriteGate;
use super::{db_error, execute, write_finish};
use crate::clock::SharedClock;
use crate::store::rows::{self, ms};
use crate::store::{Delivery, DeliveryOutcome, InsertOutcome, StoreError};

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
            // Measured (P1, P2): once the inbox worker's writes ride in the same commits, waiting
            // for company only adds latency. Under load, requests queue while the previous
            // commit runs, and those form the next batch.
            window: Duration::ZERO,
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
    /// Transactions committed (or attempted) by the writer, with or without new deliveries.
    pub transactions: u64,
    /// Transactions holding at least one new delivery.
    pub batches: u64,
    /// Transactions written statement by statement instead of as one command (a row was
    /// refused, a mark carried a rejection, or the rows did not fit one INSERT).
    pub stepwise: u64,
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
    transactions: AtomicU64,
    batches: AtomicU64,
    stepwise: AtomicU64,
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

/// What a caller wants done in the next transaction, and where its answer goes.
enum Work {
    /// A new delivery.
    Insert {
        row: PreparedDelivery,
        reply: oneshot::Sender<Result<InsertOutcome, StoreError>>,
    },
    /// The inbox worker leasing its next deliveries.
    Claim(WaitingClaim),
    /// The inbox worker marking what it handled.
    Finish {
        outcomes: Vec<(Uuid, DeliveryOutcome)>,
        /// Unix milliseconds, stamped as `finished_at`.
        now: i64,
        reply: oneshot::Sender<Vec<Result<(), StoreError>>>,
        /// The worker's next claim, sent with the marks so both share one transaction. The
        /// writer splits it off as the next request of the same batch.
        then: Option<WaitingClaim>,
    },
}

/// A claim and where its leased deliveries go.
struct WaitingClaim {
    claim: Claim,
    /// Until when the writer may hold this claim if it finds nothing, adding it to each batch
    /// that commits new deliveries, so the worker gets them from the transaction that stores
    /// them. `None`: answer after the first transaction, even with nothing.
    hold_until: Option<tokio::time::Instant>,
    reply: oneshot::Sender<Result<Vec<Delivery>, StoreError>>,
}

impl WaitingClaim {
    /// Whether the writer may still hold this claim instead of answering it empty.
    fn may_wait(&self) -> bool {
        self.may_wait_at(tokio::time::Instant::now())
    }

    fn may_wait_at(&self, at: tokio::time::Instant) -> bool {
        self.hold_until.is_some_and(|t| t > at)
    }
}

impl Request {
    fn is_insert(&self) -> bool {
        matches!(self.work, Work::Insert { .. })
    }

    /// The claim this request makes, on its own or after its marks.
    fn waiting_claim(&self) -> Option<&WaitingClaim> {
        match &self.work {
            Work::Claim(claim)
            | Work::Finish {
                then: Some(claim), ..
            } => Some(claim),
            _ => None,
        }
    }

    fn waiting_claim_mut(&mut self) -> Option<&mut WaitingClaim> {
        match &mut self.work {
            Work::Claim(claim)
            | Work::Finish {
                then: Some(claim), ..
            } => Some(claim),
            _ => None,
        }
    }

    /// Whether the writer may hold this request while no claim could find anything.
    fn may_wait(&self) -> bool {
        self.waiting_claim().is_some_and(WaitingClaim::may_wait)
    }

    /// Drops a held claim whose caller stopped listening (the worker was shut down), so it
    /// cannot lease deliveries to nobody; marks sent along are kept. `None` if nothing is left.
    fn without_abandoned_claim(mut self) -> Option<Request> {
        if !self.waiting_claim().is_some_and(|c| c.reply.is_closed()) {
            return Some(self);
        }
        match &mut self.work {
            Work::Finish { then, .. } => {
                *then = None;
                Some(self)
            }
            _ => None,
        }
    }
}

impl Claim {
    /// Moves a held claim's clock reading to `now`, keeping its lease length, so it leases what
    /// is due when it runs rather than when it was asked.
    fn refresh(&mut self, now: jiff::Timestamp) {
        let lease = self.until.saturating_sub(self.now);
        self.now = self.now.max(ms(now));
        self.until = self.now.saturating_add(lease);
    }
}

/// A claim as `claim_deliveries` asked for it, in the units of the row.
#[derive(Debug, Clone)]
pub(super) struct Claim {
    pub(super) worker: String,
    /// Unix milliseconds.
    pub(super) now: i64,
    /// Unix milliseconds.
    pub(super) until: i64,
    pub(super) limit: i64,
}

/// One caller waiting for its batch.
struct Request {
    work: Work,
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
        let kind = match &self.work {
            Work::Insert { .. } => "insert",
            Work::Claim(_) => "claim",
            Work::Finish { .. } => "finish",
        };
        f.debug_struct("Request")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

/// The error every caller of a batch that could not commit hears.
fn unavailable(e: &StoreError) -> StoreError {
    StoreError::Unavailable(match e {
        StoreError::Unavailable(m) => m.clone(),
        other => other.to_string(),
    })
}

impl Ingest {
    /// Spawns the writer on the current tokio runtime. `keep_alive` is held by the writer until
    /// it has answered its last request (the store passes its instance lock, so another process
    /// cannot open the file while a final batch is still being committed).
    pub(super) fn start<K: Send + Sync + 'static>(
        pool: SqlitePool,
        options: SqliteConnectOptions,
        clock: SharedClock,
        gate: WriteGate,
        config: GroupCommit,
        enqueue_timeout: Duration,
        keep_alive: Arc<K>,
    ) -> Ingest {
        let config = config.sanitized();
        let (queue, rx) = mpsc::channel(config.queue);
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            pool,
            clock,
            gate,
            connection: WriterConnection::new(options),
        };
        let writer = tokio::spawn(run(writer, rx, config, counters.clone(), keep_alive));
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
        self.submit(Work::Insert { row, reply }).await?;
        answer.await.unwrap_or_else(|_| Err(writer_died()))
    }

    /// Queues a claim and waits for the deliveries it leased, once their lease is committed.
    pub(super) async fn claim(&self, claim: Claim) -> Result<Vec<Delivery>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Work::Claim(WaitingClaim {
            claim,
            hold_until: None,
            reply,
        }))
        .await?;
        answer.await.unwrap_or_else(|_| Err(writer_died()))
    }

    /// Queues processed marks together with the worker's next claim, which the writer may hold
    /// for up to `patience` while it finds nothing (see [`WaitingClaim::hold_until`]). Answers
    /// the marks' results and the claim's, both after their commits.
    pub(super) async fn finish_and_claim(
        &self,
        outcomes: Vec<(Uuid, DeliveryOutcome)>,
        now: i64,
        claim: Claim,
        patience: Duration,
    ) -> (
        Vec<Result<(), StoreError>>,
        Result<Vec<Delivery>, StoreError>,
    ) {
        let n = outcomes.len();
        let (reply, finished) = oneshot::channel();
        let (claim_reply, claimed) = oneshot::channel();
        let then = WaitingClaim {
            claim,
            hold_until: (!patience.is_zero()).then(|| tokio::time::Instant::now() + patience),
            reply: claim_reply,
        };
        let work = if outcomes.is_empty() {
            drop(reply); // nothing to mark: `finished` hears no results
            Work::Claim(then)
        } else {
            Work::Finish {
                outcomes,
                now,
                reply,
                then: Some(then),
            }
        };
        if let Err(e) = self.submit(work).await {
            let finished = (0..n).map(|_| Err(unavailable(&e))).collect();
            return (finished, Err(e));
        }
        let finished = match finished.await {
            Ok(results) => results,
            Err(_) => (0..n).map(|_| Err(writer_died())).collect(),
        };
        let claimed = claimed.await.unwrap_or_else(|_| Err(writer_died()));
        (finished, claimed)
    }

    /// Queues processed marks and waits for one result per delivery, after their commit.
    pub(super) async fn finish(
        &self,
        outcomes: Vec<(Uuid, DeliveryOutcome)>,
        now: i64,
    ) -> Vec<Result<(), StoreError>> {
        let n = outcomes.len();
        let (reply, answer) = oneshot::channel();
        let failed = match self
            .submit(Work::Finish {
                outcomes,
                now,
                reply,
                then: None,
            })
            .await
        {
            Ok(()) => match answer.await {
                Ok(results) => return results,
                Err(_) => writer_died(),
            },
            Err(e) => e,
        };
        (0..n).map(|_| Err(unavailable(&failed))).collect()
    }

    /// Puts `work` in the writer's queue, waiting at most `enqueue_timeout` for room.
    async fn submit(&self, work: Work) -> Result<(), StoreError> {
        let request = Request {
            work,
            queued_at: tokio::time::Instant::now(),
        };
        match tokio::time::timeout(self.enqueue_timeout, self.queue.send(request)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Unavailable(
                "the inbox writer has stopped".to_owned(),
            )),
            Err(_) => Err(StoreError::Unavailable(format!(
                "the inbox writer queue stayed full for {} ms",
                self.enqueue_timeout.as_millis()
            ))),
        }
    }

    /// Current counters.
    pub(super) fn stats(&self) -> IngestStats {
        IngestStats {
            transactions: self.counters.transactions.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            stepwise: self.counters.stepwise.load(Ordering::Relaxed),
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

/// The writer answers every request it takes; a dropped answer means it died mid-batch, in
/// which case the batch never committed.
fn writer_died() -> StoreError {
    StoreError::Unavailable("the inbox writer stopped before committing".to_owned())
}

/// What the writer writes with: its own connection for the one-command path, the pool for the
/// rare statement-by-statement path and undoing a damaged claim, and the process's write turn.
struct Writer {
    pool: SqlitePool,
    /// Re-reads the time for claims that waited.
    clock: SharedClock,
    gate: WriteGate,
    connection: WriterConnection,
}

/// The connection the one-command path writes on, kept by the writer rather than borrowed
/// from the pool. Why: SQLite keeps a page cache per connection and drops it whenever another
/// connection has written since; rotating through the pool made nearly every batch start
/// cold, and each borrow and return cost hand-offs of its own. Owning it also lets the
/// batches' compiled statements stay cached between commits.
struct WriterConnection {
    options: SqliteConnectOptions,
    open: Option<SqliteConnection>,
}

/// Distinct batch shapes (marks, rows, claims) whose compiled statements stay cached: the
/// shapes a steady load produces, without holding one for every possible batch size.
const WRITER_STATEMENT_CACHE: usize = 64;

impl WriterConnection {
    fn new(options: SqliteConnectOptions) -> Self {
        Self {
            options: options.statement_cache_capacity(WRITER_STATEMENT_CACHE),
            open: None,
        }
    }

    /// The open connection, opening it first if there is none (at the first batch, or after
    /// one was discarded): a failure to open fails this batch only.
    async fn get(&mut self) -> Result<&mut SqliteConnection, StoreError> {
        if self.open.is_none() {
            self.open = Some(self.options.connect().await.map_err(db_error)?);
        }
        self.open
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("inbox writer has no connection".to_owned()))
    }

    /// Rolls back what a failed command left open; a connection that cannot even roll back is
    /// dropped (closing it undoes its transaction) and the next batch opens a new one.
    async fn undo(&mut self) {
        let Some(conn) = self.open.as_mut() else {
            return;
        };
        if let Err(e) = execute(conn, "ROLLBACK").await {
            tracing::warn!(error = %e, "inbox batch could not roll back; closing its connection");
            self.open = None;
        }
    }

    /// Closes the connection cleanly, so its close cannot race the pool's final checkpoint.
    async fn close(&mut self) {
        if let Some(conn) = self.open.take()
            && let Err(e) = conn.close().await
        {
            tracing::warn!(error = %e, "inbox writer's connection did not close cleanly");
        }
    }
}

/// The writer loop: form a batch, commit it, answer it; until every sender is gone.
async fn run<K>(
    mut writer: Writer,
    mut rx: mpsc::Receiver<Request>,
    config: GroupCommit,
    counters: Arc<Counters>,
    keep_alive: Arc<K>,
) {
    let mut batch: Vec<Request> = Vec::with_capacity(config.max_batch);
    let mut held = Held::default();
    loop {
        let first = match held.next_due() {
            None => rx.recv().await,
            Some(due) => tokio::select! {
                first = rx.recv() => first,
                () = tokio::time::sleep_until(due) => {
                    // Patience is up: claim once more (a retry may have come due meanwhile)
                    // and answer, found or not.
                    held.take_due(&mut batch, writer.clock.now());
                    if !batch.is_empty() {
                        commit_batch(&mut writer, &mut batch, &mut held, &counters).await;
                    }
                    continue;
                }
            },
        };
        let Some(first) = first else {
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
        if batch.iter().any(Request::is_insert) {
            // New deliveries: held claims lease them in the transaction that stores them.
            held.join(&mut batch, writer.clock.now());
        } else {
            held.keep_if_nothing_to_claim(&mut batch);
        }
        split_claims(&mut batch);
        if !batch.is_empty() {
            commit_batch(&mut writer, &mut batch, &mut held, &counters).await;
        }
    }
    // No request can come any more, so nothing new will arrive for the held claims; their
    // marks are still written.
    held.take_marks(&mut batch);
    if !batch.is_empty() {
        commit_batch(&mut writer, &mut batch, &mut held, &counters).await;
    }
    writer.connection.close().await;
    drop(keep_alive);
}

/// The inbox worker's requests the writer holds instead of writing them at once: claims that
/// would find nothing, with the processed marks sent along. They join the next transaction that
/// commits new deliveries, or run on their own when their patience is up. A light load thus
/// costs one transaction per delivery (its insert, the last batch's marks and the next claim)
/// instead of three or four (insert, claim, marks, an empty claim). Until the marks commit a
/// crash runs those deliveries again, which handling tolerates (replays are recognized).
#[derive(Debug)]
struct Held {
    requests: Vec<Request>,
    /// Whether a claim could find something now: deliveries were committed since the last claim
    /// ran, or the last claim stopped at its limit. Unknown at start-up, hence true. Deliveries
    /// that become claimable by time (a retry coming due, a lapsed lease) or by a write outside
    /// the writer are found when a held claim's patience is up, as the worker's idle poll did.
    claimable: bool,
}

impl Default for Held {
    fn default() -> Self {
        Self {
            requests: Vec::new(),
            claimable: true,
        }
    }
}

impl Held {
    /// When the earliest held claim must be answered.
    fn next_due(&self) -> Option<tokio::time::Instant> {
        self.requests
            .iter()
            .filter_map(|r| r.waiting_claim()?.hold_until)
            .min()
    }

    /// Moves the held requests whose patience is up into `batch`, to be answered after it
    /// whatever they find.
    fn take_due(&mut self, batch: &mut Vec<Request>, now: jiff::Timestamp) {
        let at = tokio::time::Instant::now();
        let (due, waiting) = std::mem::take(&mut self.requests)
            .into_iter()
            .partition(|r| r.waiting_claim().is_none_or(|c| !c.may_wait_at(at)));
        self.requests = waiting;
        for mut request in due {
            if let Some(claim) = request.waiting_claim_mut() {
                claim.hold_until = None;
                claim.claim.refresh(now);
            }
            batch.push(request);
        }
        split_claims(batch);
    }

    /// Moves every held request into `batch`, which commits new deliveries.
    fn join(&mut self, batch: &mut Vec<Request>, now: jiff::Timestamp) {
        for mut request in self.requests.drain(..) {
            if let Some(claim) = request.waiting_claim_mut() {
                claim.claim.refresh(now);
            }
            batch.push(request);
        }
    }

    /// When no claim could find anything, takes the claims of `batch` that may wait (with the
    /// marks sent along) out of it, to be held instead of written.
    fn keep_if_nothing_to_claim(&mut self, batch: &mut Vec<Request>) {
        if self.claimable || !batch.iter().any(Request::may_wait) {
            return;
        }
        let (wait, now): (Vec<_>, Vec<_>) = std::mem::take(batch)
            .into_iter()
            .partition(Request::may_wait);
        *batch = now;
        self.requests.extend(wait);
    }

    /// Answers every held claim with nothing and moves the marks sent along into `batch`.
    fn take_marks(&mut self, batch: &mut Vec<Request>) {
        for Request { work, queued_at } in self.requests.drain(..) {
            let work = match work {
                Work::Claim(claim) => {
                    drop(claim.reply.send(Ok(Vec::new())));
                    continue;
                }
                Work::Finish {
                    outcomes,
                    now,
                    reply,
                    then,
                } => {
                    if let Some(claim) = then {
                        drop(claim.reply.send(Ok(Vec::new())));
                    }
                    Work::Finish {
                        outcomes,
                        now,
                        reply,
                        then: None,
                    }
                }
                insert @ Work::Insert { .. } => insert,
            };
            batch.push(Request { work, queued_at });
        }
    }
}

/// Splits the claim sent along with processed marks off as the request right after them, so
/// the rest of the writer sees only plain requests (and the claim still follows the marks).
/// Claims whose caller stopped listening are dropped first: they would lease deliveries to
/// nobody until the lease lapsed.
fn split_claims(batch: &mut Vec<Request>) {
    let abandoned = |r: &Request| r.waiting_claim().is_some_and(|c| c.reply.is_closed());
    if !batch
        .iter()
        .any(|r| matches!(r.work, Work::Finish { then: Some(_), .. }) || abandoned(r))
    {
        return;
    }
    for request in std::mem::take(batch) {
        let Some(mut request) = request.without_abandoned_claim() else {
            continue;
        };
        let then = match &mut request.work {
            Work::Finish { then, .. } => then.take(),
            _ => None,
        };
        let queued_at = request.queued_at;
        batch.push(request);
        if let Some(claim) = then {
            batch.push(Request {
                work: Work::Claim(claim),
                queued_at,
            });
        }
    }
}

/// What one request of a committed batch is answered.
enum Answer {
    Insert(Result<InsertOutcome, StoreError>),
    Claim(Result<Vec<Delivery>, StoreError>),
    Finish(Vec<Result<(), StoreError>>),
}

/// Writes `batch` in one transaction and answers every request in it, emptying it; a claim
/// that found nothing and may still wait goes to `held` instead of being answered.
async fn commit_batch(
    writer: &mut Writer,
    batch: &mut Vec<Request>,
    held: &mut Held,
    counters: &Counters,
) {
    let rows = batch
        .iter()
        .filter(|r| matches!(r.work, Work::Insert { .. }))
        .count() as u64;
    counters.transactions.fetch_add(1, Ordering::Relaxed);
    if rows > 0 {
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters.rows.fetch_add(rows, Ordering::Relaxed);
        counters.largest_batch.fetch_max(rows, Ordering::Relaxed);
        metrics::histogram!("jitbridge_ingest_batch_rows").record(rows as f64);
    }

    let started = std::time::Instant::now();
    let written = write_batch(writer, batch, counters).await;
    // From asking for the write turn to the commit's return: what every request of the batch
    // waited for on top of the window.
    metrics::histogram!("jitbridge_ingest_commit_seconds").record(started.elapsed().as_secs_f64());
    match written {
        Ok(answers) => {
            // Claims run after the new rows, so the last one tells whether anything is left
            // to claim; without a claim, new rows leave something.
            let mut last_claim_full = None;
            let mut stored = false;
            // A caller that gave up (request timeout) no longer listens; its row is stored
            // all the same and a retry will be told it is a duplicate.
            for (request, answer) in batch.drain(..).zip(answers) {
                let queued_at = request.queued_at;
                match (request.work, answer) {
                    (Work::Insert { reply, .. }, Answer::Insert(a)) => {
                        stored |= matches!(a, Ok(InsertOutcome::Accepted(_)));
                        drop(reply.send(a));
                    }
                    (Work::Claim(claim), Answer::Claim(a)) => {
                        last_claim_full = Some(match &a {
                            Ok(found) => {
                                i64::try_from(found.len()).unwrap_or(i64::MAX) >= claim.claim.limit
                            }
                            Err(_) => true,
                        });
                        match a {
                            // Found nothing and may wait: held until new deliveries commit.
                            Ok(found) if found.is_empty() && claim.may_wait() => {
                                held.requests.push(Request {
                                    work: Work::Claim(claim),
                                    queued_at,
                                });
                            }
                            a => drop(claim.reply.send(a)),
                        }
                    }
                    (Work::Finish { reply, .. }, Answer::Finish(a)) => drop(reply.send(a)),
                    // `write_batch` answers each request in its own kind. Should that ever
                    // break, the dropped reply tells the caller the batch failed (503, so a
                    // sender retries and is told "duplicate"), and the log says why.
                    _ => tracing::error!(
                        "inbox writer answered a request with another kind of answer; \
                         its caller is told the batch failed"
                    ),
                }
            }
            held.claimable = last_claim_full.unwrap_or(held.claimable || stored);
        }
        Err(e) => {
            held.claimable = true; // whatever the failed claims would have taken is still there
            if rows > 0 {
                counters.failed_batches.fetch_add(1, Ordering::Relaxed);
            }
            tracing::warn!(requests = batch.len(), rows, error = %e, "inbox batch failed; every delivery in it answered 503");
            for request in batch.drain(..) {
                match request.work {
                    Work::Insert { reply, .. } => drop(reply.send(Err(unavailable(&e)))),
                    Work::Claim(claim) => drop(claim.reply.send(Err(unavailable(&e)))),
                    Work::Finish {
                        outcomes, reply, ..
                    } => drop(reply.send(outcomes.iter().map(|_| Err(unavailable(&e))).collect())),
                }
            }
        }
    }
}

/// Writes `batch` in one transaction: as a single command when it can (see [`write_in_one_trip`]),
/// otherwise statement by statement. Returns each request's answer, in batch order, once the
/// commit returned, or the error that sank the batch.
async fn write_batch(
    writer: &mut Writer,
    batch: &[Request],
    counters: &Counters,
) -> Result<Vec<Answer>, StoreError> {
    if fits_one_trip(batch) {
        match write_in_one_trip(writer, batch).await {
            Ok(answers) => return Ok(answers),
            Err(RowError::Batch(e)) => return Err(e),
            // A constraint refused a new row (its id is already used) and the transaction was
            // rolled back: redo it statement by statement, where only that row fails.
            Err(RowError::Row(_)) => {}
        }
    }
    counters.stepwise.fetch_add(1, Ordering::Relaxed);
    write_batch_stepwise(&writer.pool, &writer.gate, batch).await
}

/// Whether [`write_in_one_trip`] can take the batch: its new rows fit one INSERT, and its marks
/// are all `Processed` (a rejection keeps its reason, written row by row).
fn fits_one_trip(batch: &[Request]) -> bool {
    let mut rows = 0;
    for request in batch {
        match &request.work {
            Work::Insert { .. } => rows += 1,
            Work::Finish { outcomes, .. } => {
                if !outcomes
                    .iter()
                    .all(|(_, o)| matches!(o, DeliveryOutcome::Processed))
                {
                    return false;
                }
            }
            Work::Claim(_) => {}
        }
    }
    rows <= ROWS_PER_INSERT
}

/// The new deliveries of `batch`, in arrival order.
fn new_rows(batch: &[Request]) -> Vec<&PreparedDelivery> {
    batch
        .iter()
        .filter_map(|r| match &r.work {
            Work::Insert { row, .. } => Some(row),
            _ => None,
        })
        .collect()
}

/// What one statement of the single command is for, so its rows reach the right request.
#[derive(Clone, Copy)]
enum Statement {
    /// `BEGIN IMMEDIATE` or `COMMIT`: no rows.
    Control,
    /// The processed marks of request `n`: the ids it marked.
    Finish(usize),
    /// Every new row of the batch: the ids inserted.
    Insert,
    /// The claim of request `n`: the deliveries it leased.
    Claim(usize),
}

/// The whole transaction as one command to the connection's thread: `BEGIN IMMEDIATE`, one
/// `UPDATE` per request of marks, one multi-row `INSERT`, one `UPDATE … RETURNING` per claim,
/// `COMMIT`. Each statement sent on its own costs a hand-off to SQLite's thread and back, and
/// on a busy 2-core machine those round trips, not SQLite, were most of a commit's time (the
/// P1 benchmark measured ≈ 0.3 ms each, five to eight per batch). sqlx runs the statements of
/// one query in order, binding its `?` parameters across them, and reports where each ends.
///
/// Anything a statement leaves unexplained is looked up after the commit, outside the write
/// lock: the first holder of a duplicate's dedupe key, the state of a delivery that was no
/// longer pending. Neither can change by then (deliveries are never deleted, and a delivery
/// that left `pending` never returns to it). A claim whose rows cannot be decoded is undone by
/// a second short write and answered with the error, as the statement-by-statement path does.
async fn write_in_one_trip(
    writer: &mut Writer,
    batch: &[Request],
) -> Result<Vec<Answer>, RowError> {
    let mut statements = vec![Statement::Control];
    let mut command = sqlx::QueryBuilder::<sqlx::Sqlite>::new("BEGIN IMMEDIATE; ");
    for (n, request) in batch.iter().enumerate() {
        if let Work::Finish { outcomes, now, .. } = &request.work {
            let ids: Vec<String> = outcomes.iter().map(|(id, _)| id.to_string()).collect();
            let ids = serde_json::to_string(&ids)
                .map_err(|e| RowError::Batch(StoreError::Unavailable(e.to_string())))?;
            command
                .push(
                    "UPDATE deliveries SET state = 'processed', claimed_by = NULL, \
                     claimed_until = NULL, finished_at = ",
                )
                .push_bind(*now)
                .push(" WHERE state = 'pending' AND id IN (SELECT value FROM json_each(")
                .push_bind(ids)
                .push(")) RETURNING id; ");
            statements.push(Statement::Finish(n));
        }
    }
    let rows = new_rows(batch);
    if !rows.is_empty() {
        push_insert(&mut command, &rows);
        command.push("; ");
        statements.push(Statement::Insert);
    }
    for (n, request) in batch.iter().enumerate() {
        if let Work::Claim(WaitingClaim { claim, .. }) = &request.work {
            push_claim(&mut command, claim);
            command.push("; ");
            statements.push(Statement::Claim(n));
        }
    }
    command.push("COMMIT");
    statements.push(Statement::Control);

    let mut marked: Vec<HashSet<String>> = batch.iter().map(|_| HashSet::new()).collect();
    let mut inserted = HashSet::with_capacity(rows.len());
    let mut claimed: Vec<Vec<SqliteRow>> = batch.iter().map(|_| Vec::new()).collect();
    {
        let _turn = writer.gate.turn().await.map_err(RowError::Batch)?;
        let conn = writer.connection.get().await.map_err(RowError::Batch)?;
        let mut done = 0; // statements finished so far
        let mut failed = None;
        {
            // Cached on the writer's own connection: a steady load repeats a few shapes.
            let mut results = conn.fetch_many(command.build());
            while let Some(item) = results.next().await {
                match item {
                    Ok(Either::Left(_)) => done += 1,
                    Ok(Either::Right(row)) => match statements.get(done) {
                        Some(Statement::Finish(n)) => {
                            marked[*n].insert(row.try_get::<String, _>(0).unwrap_or_default());
                        }
                        Some(Statement::Insert) => {
                            inserted.insert(row.try_get::<String, _>(0).unwrap_or_default());
                        }
                        Some(Statement::Claim(n)) => claimed[*n].push(row),
                        Some(Statement::Control) | None => {}
                    },
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
        }
        if let Some(e) = failed {
            // `BEGIN` itself failing leaves no transaction to undo.
            if done > 0 {
                writer.connection.undo().await;
            }
            return Err(row_error(e));
        }
    }

    // Committed: from here on a failure concerns only the request it meets, never the batch
    // (redoing or refusing a committed batch would answer its rows wrongly).
    let mut answers = Vec::with_capacity(batch.len());
    let mut rows = rows.into_iter();
    for (n, request) in batch.iter().enumerate() {
        answers.push(match &request.work {
            Work::Insert { .. } => Answer::Insert(match rows.next() {
                Some(d) if inserted.contains(&d.id.to_string()) => {
                    Ok(InsertOutcome::Accepted(d.id))
                }
                Some(d) => match writer.connection.get().await {
                    Ok(conn) => match first_of(conn, d).await {
                        Ok(Ok(first)) if first == d.id => Ok(InsertOutcome::Accepted(first)),
                        Ok(Ok(first)) => Ok(InsertOutcome::Duplicate(first)),
                        Ok(Err(e)) | Err(RowError::Row(e) | RowError::Batch(e)) => Err(e),
                    },
                    Err(e) => Err(e),
                },
                None => Err(StoreError::Unavailable("inbox batch lost a row".to_owned())),
            }),
            Work::Finish { outcomes, .. } => {
                let mut results = Vec::with_capacity(outcomes.len());
                for (id, _) in outcomes {
                    results.push(if marked[n].contains(&id.to_string()) {
                        Ok(())
                    } else {
                        Err(match writer.connection.get().await {
                            Ok(conn) => not_pending(conn, *id).await.unwrap_or_else(|e| e),
                            Err(e) => e,
                        })
                    });
                }
                Answer::Finish(results)
            }
            Work::Claim(WaitingClaim { claim, .. }) => {
                let rows = std::mem::take(&mut claimed[n]);
                Answer::Claim(decode_claim(&writer.pool, &writer.gate, claim, rows).await)
            }
        });
    }
    Ok(answers)
}

/// Why a delivery the marks did not change is not pending.
async fn not_pending(conn: &mut SqliteConnection, id: Uuid) -> Result<StoreError, StoreError> {
    let state = sqlx::query_scalar::<_, String>("SELECT state FROM deliveries WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(StoreError::Conflict(match state {
        Some(state) => format!("delivery {id} is {state}, no longer pending"),
        None => format!("delivery {id} does not exist"),
    }))
}

/// Decodes a committed claim. If a row cannot be decoded, the claim is given back (leases
/// released, attempts restored) and answered with the error, so a damaged row neither hands
/// the worker half a claim nor leaves deliveries leased to nobody. Should even that write fail,
/// its error is the answer and the leases lapse as after a crash.
async fn decode_claim(
    pool: &SqlitePool,
    gate: &WriteGate,
    claim: &Claim,
    rows: Vec<SqliteRow>,
) -> Result<Vec<Delivery>, StoreError> {
    let decoded = rows
        .iter()
        .map(rows::delivery)
        .collect::<Result<Vec<_>, _>>();
    let error = match decoded {
        Ok(mut claimed) => {
            claimed.sort_by_key(|d| (d.received_at, d.id));
            return Ok(claimed);
        }
        Err(e) => e,
    };
    let ids: Vec<String> = rows
        .iter()
        .filter_map(|r| r.try_get::<String, _>("id").ok())
        .collect();
    let ids = serde_json::to_string(&ids).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let _turn = gate.turn().await?;
    sqlx::query(
        "UPDATE deliveries SET claimed_by = NULL, claimed_until = NULL, attempts = attempts - 1 \
         WHERE claimed_by = $1 AND claimed_until = $2 AND id IN (SELECT value FROM json_each($3))",
    )
    .bind(claim.worker.as_str())
    .bind(claim.until)
    .bind(ids)
    .execute(pool)
    .await
    .map_err(db_error)?;
    Err(error)
}

/// Writes every request of `batch` inside one `BEGIN IMMEDIATE` transaction, one statement at
/// a time: processed marks, then new rows in arrival order, then claims.
async fn write_batch_stepwise(
    pool: &SqlitePool,
    gate: &WriteGate,
    batch: &[Request],
) -> Result<Vec<Answer>, StoreError> {
    let mut tx = gate.begin(pool).await?;
    let mut answers: Vec<Option<Answer>> = batch.iter().map(|_| None).collect();
    for (slot, request) in answers.iter_mut().zip(batch) {
        if let Work::Finish { outcomes, now, .. } = &request.work {
            *slot = Some(Answer::Finish(finish_all(&mut tx, outcomes, *now).await?));
        }
    }
    let rows = new_rows(batch);
    let mut inserted = insert_rows(&mut tx, &rows).await?.into_iter();
    for (slot, request) in answers.iter_mut().zip(batch) {
        match &request.work {
            Work::Insert { .. } => {
                *slot = inserted.next().map(Answer::Insert);
            }
            Work::Claim(WaitingClaim { claim, .. }) => {
                *slot = Some(Answer::Claim(claim_rows(&mut tx, claim).await?));
            }
            Work::Finish { .. } => {}
        }
    }
    tx.commit().await?;
    answers
        .into_iter()
        .map(|a| a.ok_or_else(|| StoreError::Unavailable("inbox batch lost an answer".to_owned())))
        .collect()
}

/// Inserts `rows` in arrival order; the batch-level error sinks the transaction.
async fn insert_rows(
    conn: &mut SqliteConnection,
    rows: &[&PreparedDelivery],
) -> Result<Vec<Result<InsertOutcome, StoreError>>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    match insert_all(&mut *conn, rows).await {
        Ok(outcomes) => Ok(outcomes),
        // Anything else (busy, I/O, a damaged file) sinks the batch; dropping the transaction
        // rolls back whatever was written.
        Err(RowError::Batch(e)) => Err(e),
        // A constraint refused a row (its id is already used), which undid that multi-row
        // statement: insert row by row, so that only that row fails (rows an earlier statement
        // of the batch wrote are recognized as this batch's own).
        Err(RowError::Row(_)) => {
            let mut outcomes = Vec::with_capacity(rows.len());
            for row in rows {
                match insert_one(&mut *conn, row).await {
                    Ok(outcome) => outcomes.push(Ok(outcome)),
                    // SQLite undid that one statement; the transaction goes on for the others.
                    Err(RowError::Row(e)) => outcomes.push(Err(e)),
                    Err(RowError::Batch(e)) => return Err(e),
                }
            }
            Ok(outcomes)
        }
    }
}

/// Leases the oldest claimable deliveries inside a savepoint, so a claimed row that cannot be
/// decoded undoes this claim alone (it is answered with the error and nothing is leased)
/// instead of sinking the deliveries committed with it. The outer error sinks the batch.
async fn claim_rows(
    conn: &mut SqliteConnection,
    claim: &Claim,
) -> Result<Result<Vec<Delivery>, StoreError>, StoreError> {
    execute(&mut *conn, "SAVEPOINT claim").await?;
    let mut statement = sqlx::QueryBuilder::<sqlx::Sqlite>::new("");
    push_claim(&mut statement, claim);
    let rows = statement
        .build()
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
    let decoded = rows
        .iter()
        .map(rows::delivery)
        .collect::<Result<Vec<_>, _>>();
    if decoded.is_err() {
        execute(&mut *conn, "ROLLBACK TO claim").await?;
    }
    execute(&mut *conn, "RELEASE claim").await?;
    Ok(decoded.map(|mut claimed| {
        claimed.sort_by_key(|d| (d.received_at, d.id));
        claimed
    }))
}

/// Marks deliveries processed or rejected: the processed ones (nearly all) with a few
/// statements; whatever those did not mark (rejections, rows no longer pending) one by one,
/// which also explains the failures. A delivery that is no longer pending fails alone; the
/// outer error sinks the batch.
async fn finish_all(
    conn: &mut SqliteConnection,
    outcomes: &[(Uuid, DeliveryOutcome)],
    now: i64,
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let processed: Vec<String> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, DeliveryOutcome::Processed))
        .map(|(id, _)| id.to_string())
        .collect();
    let mut marked = HashSet::with_capacity(processed.len());
    for chunk in processed.chunks(ROWS_PER_INSERT) {
        let mut update = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "UPDATE deliveries SET state = 'processed', claimed_by = NULL, \
             claimed_until = NULL, finished_at = ",
        );
        update
            .push_bind(now)
            .push(" WHERE state = 'pending' AND id IN (");
        let mut ids = update.separated(", ");
        for id in chunk {
            ids.push_bind(id.as_str());
        }
        update.push(") RETURNING id");
        let ids = update
            .build_query_scalar::<String>()
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
        marked.extend(ids);
    }
    let mut results = Vec::with_capacity(outcomes.len());
    for (id, outcome) in outcomes {
        if matches!(outcome, DeliveryOutcome::Processed) && marked.remove(&id.to_string()) {
            results.push(Ok(()));
            continue;
        }
        // One UPDATE is atomic on its own, so no savepoint is needed.
        results.push(match write_finish(&mut *conn, *id, outcome, now).await {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict(m)) => Err(StoreError::Conflict(m)),
            Err(other) => return Err(other),
        });
    }
    Ok(results)
}

/// Rows per multi-row INSERT (9 parameters each, far below SQLite's limit of 32,766).
const ROWS_PER_INSERT: usize = 200;

/// Inserts the whole batch with a few multi-row statements (`ON CONFLICT … DO NOTHING
/// RETURNING id`), in arrival order, so a repeat of an earlier row of the same batch is the
/// duplicate. Rows that were not inserted are duplicates: their first id is looked up.
async fn insert_all(
    conn: &mut SqliteConnection,
    batch: &[&PreparedDelivery],
) -> Result<Vec<Result<InsertOutcome, StoreError>>, RowError> {
    let mut inserted = HashSet::with_capacity(batch.len());
    for chunk in batch.chunks(ROWS_PER_INSERT) {
        let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new("");
        push_insert(&mut insert, chunk);
        let ids: Vec<String> = insert
            .build_query_scalar()
            .fetch_all(&mut *conn)
            .await
            .map_err(row_error)?;
        inserted.extend(ids);
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for d in batch {
        if inserted.contains(&d.id.to_string()) {
            outcomes.push(Ok(InsertOutcome::Accepted(d.id)));
            continue;
        }
        outcomes.push(first_of(&mut *conn, d).await?.map(InsertOutcome::Duplicate));
    }
    Ok(outcomes)
}

/// Appends the claim statement: leases the oldest claimable pending deliveries to the worker
/// and returns them. It walks the pending-only index in arrival order and stops at the limit
/// (the plan is pinned by a test). `attempts` counts claims, so a delivery that crashes its
/// worker is still counted.
pub(super) fn push_claim(command: &mut sqlx::QueryBuilder<sqlx::Sqlite>, claim: &Claim) {
    command
        .push("UPDATE deliveries SET claimed_by = ")
        .push_bind(claim.worker.clone())
        .push(", claimed_until = ")
        .push_bind(claim.until)
        .push(
            ", attempts = attempts + 1 WHERE id IN (SELECT id FROM deliveries \
             WHERE state = 'pending' AND next_at <= ",
        )
        .push_bind(claim.now)
        .push(" AND (claimed_until IS NULL OR claimed_until <= ")
        .push_bind(claim.now)
        .push(") ORDER BY received_at, id LIMIT ")
        // Written into the text, not bound: SQLite lets a bound LIMIT shape the plan, so every
        // new binding would expire the cached statement and compile it again. It is an
        // integer (nothing to inject), and the inbox worker always asks for the same
        // `BATCH`, so the text stays the same from one claim to the next.
        .push(claim.limit.max(0))
        .push(") RETURNING id, connector, dedupe_key, received_at, headers, body, attempts");
}

/// Appends one multi-row `INSERT … ON CONFLICT (connector, dedupe_key) DO NOTHING RETURNING
/// id` of `rows`, in order (9 bound values per row).
fn push_insert(command: &mut sqlx::QueryBuilder<sqlx::Sqlite>, rows: &[&PreparedDelivery]) {
    command.push(
        "INSERT INTO deliveries (id, connector, dedupe_key, received_at, headers, body, \
         state, attempts, next_at) ",
    );
    command.push_values(rows, |mut row, d| {
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
    command.push(" ON CONFLICT (connector, dedupe_key) DO NOTHING RETURNING id");
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
