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
            crate::failpoint!(crate::failpoint::OUTBOX_CLAIM);
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
        match deliver(reg.connector.as_ref(), &wb, is_reattempt(job)).await {
            Ok(outcome) => {
                crate::failpoint!(crate::failpoint::WRITEBACK_CALL);
                metrics::counter!("jitbridge_writebacks_total", "connector" => connector_id, "outcome" => "ok").increment(1);
                self.store.complete_job(job.id).await?;
                crate::failpoint!(crate::failpoint::OUTBOX_ACK);
                let kind = match outcome {
                    Delivered::Posted => "writeback.delivered",
                    Delivered::AlreadyPresent => "writeback.already_present",
                };
                self.audit(&wb, kind, None).await
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

/// How a writeback ended up in the ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivered {
    /// This attempt made the call.
    Posted,
    /// An earlier attempt had already posted the comment (its acknowledgement was lost).
    AlreadyPresent,
}

/// Whether an earlier attempt of `job` may have reached the ITSM: it failed before, or its lease
/// lapsed (the store notes that in `last_error` when it hands the job out again), e.g. because
/// the daemon crashed between the ITSM's success and the acknowledgement.
fn is_reattempt(job: &Job) -> bool {
    job.attempts > 0 || job.last_error.is_some()
}

/// Performs `wb`; on a re-attempt of a comment, first asks the ticket whether the comment carrying
/// its marker is already there, so each comment appears once. Status changes are idempotent.
async fn deliver(
    connector: &dyn crate::connectors::Connector,
    wb: &Writeback,
    reattempt: bool,
) -> Result<Delivered, crate::connectors::ConnectorError> {
    let is_comment = matches!(
        wb.action,
        crate::connectors::WritebackAction::Comment { .. }
    );
    if reattempt && is_comment && connector.has_comment(wb).await? {
        return Ok(Delivered::AlreadyPresent);
    }
    connector.write_back(wb).await?;
    Ok(Delivered::Posted)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::connectors::{
        Confirmation, Connector, ConnectorError, ParseError, RawDelivery, WritebackAction,
    };
    use crate::store::JobState;
    use crate::ticket::{TicketEvent, TicketRef};

    /// A ticket that remembers the markers of the comments posted to it.
    #[derive(Default)]
    struct Ticket {
        markers: Mutex<Vec<String>>,
        lookups: Mutex<usize>,
    }

    #[async_trait]
    impl Connector for Ticket {
        fn id(&self) -> &str {
            "t"
        }
        fn kind(&self) -> &'static str {
            "generic"
        }
        fn dedupe_key(&self, _: &RawDelivery) -> String {
            String::new()
        }
        fn parse(&self, _: &RawDelivery) -> Result<Vec<TicketEvent>, ParseError> {
            Ok(Vec::new())
        }
        async fn confirm(&self, _: &TicketRef) -> Result<Confirmation, ConnectorError> {
            Ok(Confirmation::default())
        }
        async fn write_back(&self, wb: &Writeback) -> Result<(), ConnectorError> {
            self.markers.lock().unwrap().push(wb.marker.clone());
            Ok(())
        }
        async fn has_comment(&self, wb: &Writeback) -> Result<bool, ConnectorError> {
            *self.lookups.lock().unwrap() += 1;
            Ok(self.markers.lock().unwrap().contains(&wb.marker))
        }
        async fn healthcheck(&self) -> Result<(), ConnectorError> {
            Ok(())
        }
    }

    fn comment() -> Writeback {
        Writeback {
            ticket: TicketRef {
                connector: "t".into(),
                id: "1".into(),
                key: "T-1".into(),
                url: None,
            },
            action: WritebackAction::Comment {
                text: "granted".into(),
            },
            marker: "jitbridge:g1:active:comment".into(),
        }
    }

    fn job(attempts: i32, last_error: Option<&str>) -> Job {
        let now = Timestamp::from_second(1_000).unwrap();
        Job {
            id: uuid::Uuid::nil(),
            seq: 1,
            lane: Lane::Writeback,
            queue_key: "t:1".into(),
            payload: serde_json::Value::Null,
            state: JobState::Pending,
            attempts,
            next_at: now,
            last_error: last_error.map(str::to_owned),
            created_at: now,
        }
    }

    #[test]
    fn a_job_that_failed_or_whose_lease_lapsed_is_a_reattempt() {
        assert!(!is_reattempt(&job(0, None)));
        assert!(is_reattempt(&job(2, Some("HTTP 503"))));
        assert!(is_reattempt(&job(0, Some("lease lapsed"))));
    }

    #[tokio::test]
    async fn a_first_attempt_posts_without_looking() {
        let t = Ticket::default();
        assert_eq!(
            deliver(&t, &comment(), false).await.unwrap(),
            Delivered::Posted
        );
        assert_eq!(*t.lookups.lock().unwrap(), 0);
    }

    #[tokio::test]
    async fn a_reattempted_comment_already_in_the_ticket_is_not_posted_again() {
        let t = Ticket::default();
        deliver(&t, &comment(), false).await.unwrap();
        assert_eq!(
            deliver(&t, &comment(), true).await.unwrap(),
            Delivered::AlreadyPresent
        );
        assert_eq!(t.markers.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_reattempted_comment_missing_from_the_ticket_is_posted() {
        let t = Ticket::default();
        assert_eq!(
            deliver(&t, &comment(), true).await.unwrap(),
            Delivered::Posted
        );
        assert_eq!(t.markers.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn status_changes_are_never_looked_up() {
        let t = Ticket::default();
        let status = Writeback {
            action: WritebackAction::Status {
                name: "Done".into(),
            },
            ..comment()
        };
        deliver(&t, &status, true).await.unwrap();
        assert_eq!(*t.lookups.lock().unwrap(), 0);
    }
}
