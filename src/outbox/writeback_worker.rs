//! Delivers writebacks (comments, state changes) to the ITSMs: in order per ticket (the store's
//! claim guarantees it), with exponential backoff stored on the row, honouring `429`/`Retry-After`
//! for the whole connector (one rate-limited answer pauses every row of that system, so a busy
//! ITSM is not hammered through other tickets), and parking permanent failures as dead letters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use super::{backoff, next_attempt};
use crate::clock::SharedClock;
use crate::config::WorkerSettings;
use crate::config::live::LiveConnectors;
use crate::connectors::Writeback;
use crate::store::{Job, Lane, Store, StoreError};

const LEASE: SignedDuration = SignedDuration::from_secs(120);
const BATCH: u32 = 16;
const IDLE_POLL: Duration = Duration::from_millis(500);

/// The writeback-lane worker.
pub struct WritebackWorker {
    store: Arc<dyn Store>,
    clock: SharedClock,
    connectors: LiveConnectors,
    settings: WorkerSettings,
    wake: Arc<Notify>,
    id: String,
    /// Per connector: no calls before this instant (set by rate-limit answers).
    paused_until: Mutex<HashMap<String, Timestamp>>,
}

impl WritebackWorker {
    /// A worker delivering through `connectors`.
    pub fn new(
        store: Arc<dyn Store>,
        clock: SharedClock,
        connectors: LiveConnectors,
        settings: WorkerSettings,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            clock,
            connectors,
            settings,
            wake,
            id: format!("writeback-{}", uuid::Uuid::now_v7().simple()),
            paused_until: Mutex::new(HashMap::new()),
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let now = self.clock.now();
            let jobs = match self
                .store
                .claim_jobs(Lane::Writeback, &self.id, now, LEASE, BATCH)
                .await
            {
                Ok(j) => j,
                Err(e) => {
                    tracing::error!(error = %e, "cannot claim writeback jobs; retrying");
                    Vec::new()
                }
            };
            if jobs.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                }
                continue;
            }
            futures::future::join_all(jobs.into_iter().map(|j| self.handle(j))).await;
            if shutdown.is_cancelled() {
                return;
            }
        }
    }

    async fn handle(&self, job: Job) {
        if let Err(e) = self.try_handle(&job).await {
            tracing::warn!(job = %job.id, error = %e, "writeback result not recorded; running it again shortly");
            let again = next_attempt(self.clock.now(), Duration::from_millis(500), None);
            if let Err(e) = self
                .store
                .reschedule_job(job.id, job.attempts, again, &e.to_string())
                .await
            {
                tracing::error!(job = %job.id, error = %e, "cannot release the writeback job; it runs again when its lease lapses");
            }
        }
    }

    async fn try_handle(&self, job: &Job) -> Result<(), StoreError> {
        let wb: Writeback = match serde_json::from_value(job.payload.clone()) {
            Ok(w) => w,
            Err(e) => {
                return self
                    .store
                    .dead_letter_job(
                        job.id,
                        job.attempts,
                        &format!("unreadable writeback job: {e}"),
                    )
                    .await;
            }
        };
        let connector_id = wb.ticket.connector.clone();
        let Some(reg) = self.connectors.get(&connector_id) else {
            return self
                .store
                .dead_letter_job(
                    job.id,
                    job.attempts,
                    &format!("connector {connector_id:?} is not configured"),
                )
                .await;
        };
        let now = self.clock.now();
        if let Some(until) = self.paused_until.lock().await.get(&connector_id).copied()
            && until > now
        {
            // Not an attempt: the system asked us to wait.
            return self
                .store
                .reschedule_job(
                    job.id,
                    job.attempts,
                    until,
                    job.last_error
                        .as_deref()
                        .unwrap_or("waiting for the rate limit to reset"),
                )
                .await;
        }
        match reg.connector.write_back(&wb).await {
            Ok(()) => {
                metrics::counter!("jitbridge_writebacks_total", "connector" => connector_id, "outcome" => "ok").increment(1);
                self.store.complete_job(job.id).await?;
                self.audit(&wb, "writeback.delivered", None).await
            }
            Err(e)
                if e.is_retryable()
                    && job.attempts + 1 < self.settings.writeback_max_attempts as i32 =>
            {
                let attempts = job.attempts + 1;
                let now = self.clock.now();
                let delay = backoff(
                    attempts,
                    self.settings.retry_initial,
                    self.settings.retry_max,
                    job.id.as_u128(),
                );
                let next = next_attempt(now, delay, e.retry_after());
                if let Some(ra) = e.retry_after() {
                    let until = next_attempt(now, Duration::ZERO, Some(ra));
                    self.paused_until
                        .lock()
                        .await
                        .insert(connector_id.clone(), until);
                }
                metrics::counter!("jitbridge_writebacks_total", "connector" => connector_id.clone(), "outcome" => "retry").increment(1);
                tracing::warn!(connector = %connector_id, ticket = %wb.ticket.key, attempts, error = %e, next = %next, "writeback failed; will retry");
                self.store
                    .reschedule_job(job.id, attempts, next, &e.to_string())
                    .await
            }
            Err(e) => {
                metrics::counter!("jitbridge_writebacks_total", "connector" => connector_id.clone(), "outcome" => "dead").increment(1);
                tracing::error!(connector = %connector_id, ticket = %wb.ticket.key, error = %e, job = %job.id,
                    "writeback failed permanently; parked as dead letter (retry with `jitbridge outbox retry`)");
                self.store
                    .dead_letter_job(job.id, job.attempts + 1, &e.to_string())
                    .await?;
                self.audit(&wb, "writeback.dead", Some(e.to_string())).await
            }
        }
    }

    /// Records a writeback's fate in the ticket's audit story.
    async fn audit(
        &self,
        wb: &Writeback,
        kind: &str,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        let grant_id = wb
            .marker
            .split(':')
            .nth(1)
            .and_then(|id| uuid::Uuid::parse_str(id).ok());
        self.store
            .append_audit(vec![crate::audit::NewAudit {
                at: self.clock.now(),
                kind: kind.to_owned(),
                grant_id,
                connector: Some(wb.ticket.connector.clone()),
                ticket_key: Some(wb.ticket.key.clone()),
                actor: Some("system".into()),
                detail: serde_json::json!({"action": wb.action, "marker": wb.marker, "error": error}),
            }])
            .await
    }
}
