//! Drains the inbox: takes committed deliveries in arrival order, has their connector parse them
//! into ticket events, and hands each event to the grant service. A delivery whose processing
//! fails for a passing reason (the ITSM API is down while confirming an approval, the store is
//! busy) is retried with backoff; one that cannot be parsed is rejected and audited.

use std::sync::Arc;
use std::time::Duration;

use jiff::SignedDuration;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::audit::NewAudit;
use crate::config::WorkerSettings;
use crate::config::live::LiveConnectors;
use crate::connectors::RawDelivery;
use crate::grants::service::GrantService;
use crate::outbox::{backoff, next_attempt};
use crate::store::{Delivery, DeliveryOutcome, NextClaim, StoreError};

const LEASE: SignedDuration = SignedDuration::from_secs(120);
/// Deliveries claimed at once; their processed marks share one commit.
const BATCH: u32 = 256;
/// How long an idle worker waits before looking again for deliveries that came due by time
/// (retries after backoff, lapsed leases). New deliveries wake it at once: SQLite's inbox writer
/// holds the waiting claim and fills it in the commit that stores them; other stores notify.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Processes inbox deliveries one at a time, in order, marking them processed in batches
/// (each batch's marks share a write with the next claim).
pub struct InboxWorker {
    service: GrantService,
    connectors: LiveConnectors,
    settings: WorkerSettings,
    wake: Arc<Notify>,
    id: String,
}

impl InboxWorker {
    /// A worker feeding `service` from the inbox.
    pub fn new(
        service: GrantService,
        connectors: LiveConnectors,
        settings: WorkerSettings,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            service,
            connectors,
            settings,
            wake,
            id: format!("inbox-{}", uuid::Uuid::now_v7().simple()),
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut processed: Vec<(uuid::Uuid, String)> = Vec::new();
        loop {
            if shutdown.is_cancelled() {
                self.finish_processed(processed).await;
                return;
            }
            // The last batch's marks travel with the next claim: one write per turn.
            let outcomes = processed
                .iter()
                .map(|(id, _)| (*id, DeliveryOutcome::Processed))
                .collect();
            let next = NextClaim {
                worker: &self.id,
                now: self.service.clock().now(),
                lease: LEASE,
                limit: BATCH,
                patience: IDLE_POLL,
            };
            let turn = tokio::select! {
                // The turn is polled first, so its marks reach the store before a shutdown is
                // heeded; they commit even if the claim's answer is no longer awaited. (Marks
                // that could not be handed over run again after a restart, which handling
                // tolerates: replays are recognized.)
                biased;
                turn = self.service.store().finish_and_claim(outcomes, next) => turn,
                () = shutdown.cancelled() => return,
            };
            Self::record_finished(std::mem::take(&mut processed), turn.finished);
            let batch = match turn.claimed {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(error = %e, "cannot claim inbox deliveries; retrying");
                    Vec::new()
                }
            };
            if batch.is_empty() {
                if !turn.waited {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(IDLE_POLL) => {}
                    }
                }
                continue;
            }
            for d in batch {
                if shutdown.is_cancelled() {
                    break; // the rest's leases lapse and they are taken again after restart
                }
                let id = d.id;
                match self.process(d).await {
                    Ok(Some(connector)) => processed.push((id, connector)),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(delivery = %id, error = %e, "delivery outcome could not be recorded; it runs again when its lease lapses")
                    }
                }
            }
        }
    }

    /// Marks the last batch's processed deliveries when no claim follows (shutdown). Until they
    /// are marked a crash makes them run again, which handling tolerates (replays are
    /// recognized), exactly as a crash between handling and marking one delivery always did.
    async fn finish_processed(&self, processed: Vec<(uuid::Uuid, String)>) {
        if processed.is_empty() {
            return;
        }
        let outcomes = processed
            .iter()
            .map(|(id, _)| (*id, DeliveryOutcome::Processed))
            .collect();
        let results = self.service.store().finish_deliveries(outcomes).await;
        Self::record_finished(processed, results);
    }

    /// Counts the deliveries whose processed mark committed, and logs the ones that failed.
    fn record_finished(processed: Vec<(uuid::Uuid, String)>, results: Vec<Result<(), StoreError>>) {
        for ((id, connector), result) in processed.into_iter().zip(results) {
            match result {
                Ok(()) => {
                    metrics::counter!("jitbridge_deliveries_processed_total", "connector" => connector).increment(1)
                }
                Err(e) => {
                    tracing::error!(delivery = %id, error = %e, "delivery outcome could not be recorded; it runs again when its lease lapses")
                }
            }
        }
    }

    /// Handles one delivery. A delivery that was processed is returned (with its connector) to
    /// be marked with the rest of the batch; retries and rejections are recorded here.
    async fn process(&self, d: Delivery) -> Result<Option<String>, StoreError> {
        let store = self.service.store();
        let Some(reg) = self.connectors.get(&d.connector) else {
            return self
                .reject(
                    &d,
                    format!("connector {:?} is no longer configured", d.connector),
                )
                .await
                .map(|()| None);
        };
        let raw = RawDelivery {
            headers: d.headers.clone(),
            body: d.body.clone(),
        };
        let events = match reg.connector.parse(&raw) {
            Ok(e) => e,
            Err(e) => return self.reject(&d, e.to_string()).await.map(|()| None),
        };
        for event in &events {
            match self.service.handle_event(event).await {
                Ok(outcomes) => {
                    tracing::debug!(delivery = %d.id, ticket = %event.ticket.key, ?outcomes, "event handled");
                }
                Err(e) if e.is_retryable() => {
                    let attempts = d.attempts + 1;
                    let now = self.service.clock().now();
                    let delay = backoff(
                        attempts,
                        self.settings.retry_initial,
                        self.settings.retry_max,
                        d.id.as_u128(),
                    );
                    let retry_after = match &e {
                        crate::grants::service::ServiceError::Confirm { source, .. } => {
                            source.retry_after()
                        }
                        _ => None,
                    };
                    tracing::warn!(delivery = %d.id, ticket = %event.ticket.key, attempts, error = %e, "delivery will be retried");
                    return store
                        .retry_delivery(d.id, next_attempt(now, delay, retry_after), &e.to_string())
                        .await
                        .map(|()| None);
                }
                Err(e) => {
                    tracing::error!(delivery = %d.id, ticket = %event.ticket.key, error = %e, "event could not be applied");
                    return self.reject(&d, e.to_string()).await.map(|()| None);
                }
            }
        }
        Ok(Some(d.connector))
    }

    async fn reject(&self, d: &Delivery, why: String) -> Result<(), StoreError> {
        let store = self.service.store();
        tracing::warn!(delivery = %d.id, connector = %d.connector, %why, "delivery rejected");
        metrics::counter!("jitbridge_deliveries_rejected_total", "connector" => d.connector.clone()).increment(1);
        store
            .append_audit(vec![NewAudit {
                at: self.service.clock().now(),
                kind: "delivery.rejected".into(),
                grant_id: None,
                connector: Some(d.connector.clone()),
                ticket_key: None,
                actor: None,
                detail: json!({"delivery": d.id, "dedupe_key": d.dedupe_key, "why": why}),
            }])
            .await?;
        store
            .finish_delivery(d.id, DeliveryOutcome::Rejected(why))
            .await
    }
}
