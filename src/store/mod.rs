//! Durable state behind one small trait: the inbox of deliveries, the grant ledger, the outbox
//! of provider and writeback jobs, and the audit chain. [`sqlite`] is the embedded default;
//! [`postgres`] lets several instances share one database.
//!
//! Every grant transition is one [`Commit`]: new grant row + audit records + outbox jobs in one
//! transaction, so a crash can delay work but never lose or duplicate it. Work is taken by
//! leased claims, so several workers (or instances on PostgreSQL) never run the same job at once.

#[cfg(test)]
mod conformance;
#[macro_use]
mod rows;
pub mod postgres;
mod reads;
pub mod sqlite;

use async_trait::async_trait;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit::{AuditRecord, NewAudit};
use crate::grants::{Grant, GrantState};

/// `last_error` of a job whose worker never reported back (crash, kill, lapsed lease): the next
/// run is a re-attempt, since the call may have reached the other side (e.g. a comment posted
/// just before the crash), so the writeback worker checks before posting again.
pub(crate) const LEASE_LAPSED: &str = "the previous attempt ended without a result (lease lapsed)";

/// Errors from a store backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An optimistic-concurrency check failed (the grant changed since it was read), or a
    /// live grant already exists for the (connector, ticket, mapping). Re-read and decide again.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database could not be reached or could not commit. Retryable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A row could not be decoded: a bug or a hand-edited database.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Another process holds the database (SQLite exclusive lock).
    #[error("store is locked by another process: {0}")]
    Locked(String),
}

/// A verified delivery, ready for the inbox.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// UUID v7, returned to the sender in the 202 body.
    pub id: Uuid,
    /// Connector id.
    pub connector: String,
    /// Unique per (connector, dedupe_key): a repeat is a duplicate.
    pub dedupe_key: String,
    /// When ingress accepted it.
    pub received_at: Timestamp,
    /// Non-secret headers the parser may need (authentication headers are never stored).
    pub headers: Vec<(String, String)>,
    /// The raw body, byte for byte as signed.
    pub body: Vec<u8>,
}

/// Result of an inbox insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Newly committed.
    Accepted(Uuid),
    /// Already in the inbox (this is the first delivery's id).
    Duplicate(Uuid),
}

/// A delivery taken from the inbox for processing.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: Uuid,
    pub connector: String,
    pub dedupe_key: String,
    pub received_at: Timestamp,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Processing attempts so far (confirmations can fail while an ITSM is down).
    pub attempts: i32,
}

/// How processing of a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Parsed and applied (even if it changed nothing).
    Processed,
    /// Could not be parsed or referred to an unknown connector; kept for inspection.
    Rejected(String),
}

/// The inbox worker's next lease, as [`Store::finish_and_claim`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct NextClaim<'a> {
    /// The worker the deliveries are leased to.
    pub worker: &'a str,
    /// The caller's clock reading: deliveries due by then may be leased.
    pub now: Timestamp,
    /// How long the lease lasts before another claim may take the delivery again.
    pub lease: SignedDuration,
    /// Most deliveries leased at once.
    pub limit: u32,
    /// How long a backend that sees new deliveries arrive may hold a claim that found nothing,
    /// to lease them in the transaction that commits them. Zero answers at once.
    pub patience: std::time::Duration,
}

/// What [`Store::finish_and_claim`] answers.
#[derive(Debug)]
pub struct InboxTurn {
    /// One result per finished delivery, in order.
    pub finished: Vec<Result<(), StoreError>>,
    /// The deliveries now leased to the worker.
    pub claimed: Result<Vec<Delivery>, StoreError>,
    /// The backend already waited (up to the claim's patience) for new deliveries before
    /// answering an empty claim, so the worker may ask again at once instead of sleeping.
    pub waited: bool,
}

/// Which worker a job belongs to. Lanes are independent so writebacks never delay provider calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// Elevation provider apply / revoke calls.
    Provider,
    /// Comments and state changes in the ITSM.
    Writeback,
}

impl Lane {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Provider => "provider",
            Lane::Writeback => "writeback",
        }
    }
}

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// UUID v7.
    pub id: Uuid,
    pub lane: Lane,
    /// Jobs with the same key run strictly in enqueue order (grant id for provider jobs,
    /// `connector:ticket id` for writebacks).
    pub queue_key: String,
    /// Job payload (see [`crate::outbox`] for the shapes).
    pub payload: serde_json::Value,
    /// Earliest time to run.
    pub not_before: Timestamp,
}

/// Lifecycle of an outbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting to run (possibly backing off until `next_at`).
    Pending,
    /// Done; kept for the record.
    Done,
    /// Failed permanently; an admin may retry it.
    Dead,
}

impl JobState {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Done => "done",
            JobState::Dead => "dead",
        }
    }
}

/// An outbox row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: Uuid,
    /// Insertion order; defines the order within a queue key.
    pub seq: i64,
    pub lane: Lane,
    pub queue_key: String,
    pub payload: serde_json::Value,
    pub state: JobState,
    /// Failed attempts so far.
    pub attempts: i32,
    /// When it may run next (the durable retry schedule).
    pub next_at: Timestamp,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
}

/// Everything one grant transition changes, committed atomically.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The grant as it is after the transition (its `version` is the new version).
    pub grant: Grant,
    /// `None` inserts a new grant (fails with [`StoreError::Conflict`] if a live grant exists for
    /// the same connector, ticket and mapping). `Some(v)` updates the row only if its version is
    /// still `v`, else [`StoreError::Conflict`].
    pub expected_version: Option<i64>,
    /// Audit records to append, in order.
    pub audit: Vec<NewAudit>,
    /// Outbox jobs to enqueue.
    pub jobs: Vec<NewJob>,
    /// An outbox job this transition completes (the provider call that caused it).
    pub complete_job: Option<Uuid>,
}

/// Which grants to list.
#[derive(Debug, Clone, Default)]
pub struct GrantFilter {
    pub state: Option<GrantState>,
    pub connector: Option<String>,
    pub ticket_key: Option<String>,
    pub limit: Option<u32>,
}

/// Live grants (approved, active, expiring, revoking, revoke_failed) that already hold a
/// privilege for a subject or on a target, across every ticket, mapping and connector: what
/// `max_active_per_subject` / `max_active_per_target` limit. Subjects and targets are compared
/// without regard to ASCII case, as e-mail addresses and host names are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveGrantCounts {
    /// Live grants whose subject is the one asked about.
    pub by_subject: u64,
    /// Live grants whose target is the one asked about.
    pub by_target: u64,
}

/// Queue health for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxStats {
    pub pending: i64,
    pub dead: i64,
    /// Age of the oldest pending job.
    pub oldest_pending_age: Option<SignedDuration>,
}

/// The durable state of jitbridge. Implemented by [`sqlite::SqliteStore`] and
/// [`postgres::PgStore`].
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Is the database reachable? (for `/readyz`)
    async fn ping(&self) -> Result<(), StoreError>;

    /// Called at start-up. SQLite (the sole instance, by its exclusive lock) releases every
    /// lease, so work a crashed run had claimed is taken again at once instead of after its
    /// lease lapses. PostgreSQL, where other instances may be alive, releases only leases that
    /// have already lapsed. Returns rows released.
    async fn release_stale_leases(&self) -> Result<u64, StoreError>;

    // ---- inbox ----
    /// Commits a verified delivery, or reports that (connector, dedupe_key) is already there.
    async fn insert_delivery(&self, d: NewDelivery) -> Result<InsertOutcome, StoreError>;
    /// Leases up to `limit` unprocessed deliveries whose retry time has come, oldest first.
    async fn claim_deliveries(
        &self,
        worker: &str,
        now: Timestamp,
        lease: SignedDuration,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError>;
    /// Marks a delivery processed or rejected (releases the lease for good).
    async fn finish_delivery(&self, id: Uuid, outcome: DeliveryOutcome) -> Result<(), StoreError>;
    /// Marks several deliveries processed or rejected, one result per delivery, in order. A
    /// backend may make them durable with one write, so the inbox worker does not pay a commit
    /// per delivery. The default finishes them one by one.
    async fn finish_deliveries(
        &self,
        outcomes: Vec<(Uuid, DeliveryOutcome)>,
    ) -> Vec<Result<(), StoreError>> {
        let mut results = Vec::with_capacity(outcomes.len());
        for (id, outcome) in outcomes {
            results.push(self.finish_delivery(id, outcome).await);
        }
        results
    }
    /// The inbox worker's turn: marks what it finished, then leases its next deliveries, so a
    /// busy inbox costs one write per batch instead of two. A backend may also hold a claim
    /// that finds nothing for up to `next.patience` and lease the next new deliveries in the
    /// transaction that commits them (SQLite's inbox writer does), sparing the worker both a
    /// wake-up and a transaction per delivery. The default finishes, then claims, and never
    /// waits.
    async fn finish_and_claim(
        &self,
        finished: Vec<(Uuid, DeliveryOutcome)>,
        next: NextClaim<'_>,
    ) -> InboxTurn {
        let finished = if finished.is_empty() {
            Vec::new()
        } else {
            self.finish_deliveries(finished).await
        };
        let claimed = self
            .claim_deliveries(next.worker, next.now, next.lease, next.limit)
            .await;
        InboxTurn {
            finished,
            claimed,
            waited: false,
        }
    }
    /// Releases a delivery to be tried again at `not_before` (e.g. ITSM API down).
    async fn retry_delivery(
        &self,
        id: Uuid,
        not_before: Timestamp,
        error: &str,
    ) -> Result<(), StoreError>;

    // ---- grants ----
    /// Applies one transition atomically (see [`Commit`]).
    async fn commit(&self, c: Commit) -> Result<(), StoreError>;
    /// Applies several independent transitions, each atomically as [`Store::commit`] would,
    /// and answers one result per commit, in order. A backend may make the whole batch durable
    /// with one write (SQLite does: one fsync), which is what lets a burst of deadlines be
    /// revoked in seconds; a failed commit never undoes the others. Audit records are chained
    /// in batch order. The default commits one by one.
    async fn commit_many(&self, commits: Vec<Commit>) -> Vec<Result<(), StoreError>> {
        let mut results = Vec::with_capacity(commits.len());
        for c in commits {
            results.push(self.commit(c).await);
        }
        results
    }
    async fn get_grant(&self, id: Uuid) -> Result<Option<Grant>, StoreError>;
    /// The grants with these ids, in any order; unknown ids are left out. One read where the
    /// backend can: the provider worker looks up the grants of a whole claimed batch at once.
    async fn get_grants(&self, ids: &[Uuid]) -> Result<Vec<Grant>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            found.extend(self.get_grant(*id).await?);
        }
        Ok(found)
    }
    /// The non-terminal grant for (connector, ticket id, mapping), if any.
    async fn live_grant(
        &self,
        connector: &str,
        ticket_id: &str,
        mapping: &str,
    ) -> Result<Option<Grant>, StoreError>;
    /// The newest grant (any state) for (connector, ticket id, mapping), to recognize replays.
    async fn latest_grant(
        &self,
        connector: &str,
        ticket_id: &str,
        mapping: &str,
    ) -> Result<Option<Grant>, StoreError>;
    /// Grants, newest first.
    async fn list_grants(&self, filter: &GrantFilter) -> Result<Vec<Grant>, StoreError>;
    async fn count_grants_by_state(&self) -> Result<Vec<(GrantState, i64)>, StoreError>;
    /// Active grants whose deadline is at or before `now`, earliest first.
    async fn due_grants(&self, now: Timestamp, limit: u32) -> Result<Vec<Grant>, StoreError>;
    /// The earliest deadline among active grants.
    async fn next_deadline(&self) -> Result<Option<Timestamp>, StoreError>;
    /// How many live grants (see [`LiveGrantCounts`]) `subject` holds and `target` carries.
    /// Policy decides with these counts; `requested` grants are not counted.
    async fn count_live_grants(
        &self,
        subject: &str,
        target: &str,
    ) -> Result<LiveGrantCounts, StoreError>;

    /// The oldest grant in `revoke_failed` whose subject is `subject` or whose target is
    /// `target` (compared as [`Store::count_live_grants`] compares them). While one exists,
    /// policy refuses new grants for that subject and that target: a privilege that could not
    /// be taken away is not handed out again.
    async fn unresolved_revoke(
        &self,
        subject: &str,
        target: &str,
    ) -> Result<Option<Grant>, StoreError>;

    // ---- outbox ----
    /// Leases up to `limit` pending jobs of `lane` that are due, never two of the same queue key,
    /// and never a job while an earlier pending job of its queue key exists.
    async fn claim_jobs(
        &self,
        lane: Lane,
        worker: &str,
        now: Timestamp,
        lease: SignedDuration,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError>;
    /// Marks a job done.
    async fn complete_job(&self, id: Uuid) -> Result<(), StoreError>;
    /// Records a failed attempt and the next try (the durable retry schedule).
    async fn reschedule_job(
        &self,
        id: Uuid,
        attempts: i32,
        next_at: Timestamp,
        error: &str,
    ) -> Result<(), StoreError>;
    /// Parks a permanently failing job.
    async fn dead_letter_job(&self, id: Uuid, attempts: i32, error: &str)
    -> Result<(), StoreError>;
    /// Puts a dead job back in the queue (admin action).
    async fn retry_dead_job(&self, id: Uuid, now: Timestamp) -> Result<bool, StoreError>;
    /// Jobs in a state (newest first), for the admin API and CLI.
    async fn list_jobs(&self, state: JobState, limit: u32) -> Result<Vec<Job>, StoreError>;
    async fn outbox_stats(&self, lane: Lane, now: Timestamp) -> Result<OutboxStats, StoreError>;

    // ---- audit ----
    /// Appends records outside a grant transition (ignored events, rejected deliveries).
    async fn append_audit(&self, records: Vec<NewAudit>) -> Result<(), StoreError>;
    /// Audit records with `seq > after`, in order.
    async fn audit_records(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;
}
