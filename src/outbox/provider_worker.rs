//! Runs provider jobs: applies approved grants and revokes ending ones at their elevation
//! provider. Applies give up after the apply window (the grant fails, and a clean-up revoke is
//! sent in case the endpoint applied it after all); revokes never give up: after
//! `revoke_alarm_after` failures the grant turns `revoke_failed` (alarm) and retries continue at
//! a capped interval until the provider confirms.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::SignedDuration;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{ProviderJob, backoff, next_attempt};
use crate::config::WorkerSettings;
use crate::config::live::LiveProviders;
use crate::grants::service::{GrantService, ServiceError};
use crate::grants::{Grant, GrantState};
use crate::providers::{ProviderAction, call_for};
use crate::store::{Job, Lane};
use uuid::Uuid;

/// How long a claimed provider job is leased (longer than any provider timeout).
const LEASE: SignedDuration = SignedDuration::from_secs(120);
/// How many jobs are claimed at once; the revokes among them that succeed are recorded with one
/// batch commit (one fsync), so a burst of expiries is not paced by the disk.
const BATCH: u32 = 256;
/// How many provider calls run at once.
const CONCURRENCY: usize = 32;
/// Longest idle sleep between polls (new work also wakes the worker at once).
const IDLE_POLL: Duration = Duration::from_millis(500);

/// The provider-lane worker.
pub struct ProviderWorker {
    service: GrantService,
    providers: LiveProviders,
    settings: WorkerSettings,
    wake: Arc<Notify>,
    id: String,
}

impl ProviderWorker {
    /// A worker that calls `providers` on behalf of `service`.
    pub fn new(
        service: GrantService,
        providers: LiveProviders,
        settings: WorkerSettings,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            service,
            providers,
            settings,
            wake,
            id: format!("provider-{}", uuid::Uuid::now_v7().simple()),
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let now = self.service.clock().now();
            let claimed = self
                .service
                .store()
                .claim_jobs(Lane::Provider, &self.id, now, LEASE, BATCH)
                .await;
            let jobs = match claimed {
                Ok(j) => j,
                Err(e) => {
                    tracing::error!(error = %e, "cannot claim provider jobs; retrying");
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
            self.handle_batch(jobs).await;
            if shutdown.is_cancelled() {
                return;
            }
        }
    }

    /// Runs the claimed jobs' provider calls concurrently (bounded), then records every
    /// confirmed revoke of an ending grant in one batch commit.
    async fn handle_batch(&self, jobs: Vec<Job>) {
        let jobs: Vec<(Job, Result<ProviderJob, serde_json::Error>)> = jobs
            .into_iter()
            .map(|job| {
                let payload = ProviderJob::deserialize(&job.payload);
                (job, payload)
            })
            .collect();
        let grants = self.read_grants(&jobs).await;
        let grants = &grants;
        let handled: Vec<(Job, Result<Handled, ServiceError>)> =
            futures::stream::iter(jobs.into_iter().map(|(job, payload)| async move {
                let result = self.try_handle(&job, payload, grants).await;
                (job, result)
            }))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let (mut revoked_jobs, mut done) = (Vec::new(), Vec::new());
        for (job, result) in handled {
            match result {
                Ok(Handled::Recorded) => {}
                Ok(Handled::Revoked(grant)) => {
                    done.push((*grant, job.id));
                    revoked_jobs.push(job);
                }
                Err(e) => self.release(&job, e).await,
            }
        }
        if done.is_empty() {
            return;
        }
        let results = self.service.revokes_succeeded(done).await;
        for (job, result) in revoked_jobs.into_iter().zip(results) {
            match result {
                Ok(_) => {
                    crate::failpoint!(crate::failpoint::OUTBOX_ACK);
                }
                Err(e) => self.release(&job, e).await,
            }
        }
    }

    /// Puts back a job whose result could not be recorded. Usually a concurrent change to the
    /// grant (e.g. resolved while the apply ran): put it back at once rather than letting its
    /// lease run out, since provider calls are idempotent per webhook-id and a revoke queued
    /// behind this job must not wait.
    async fn release(&self, job: &Job, e: ServiceError) {
        tracing::warn!(job = %job.id, error = %e, "provider job result not recorded; running it again shortly");
        let again = next_attempt(self.service.clock().now(), Duration::from_millis(200), None);
        if let Err(e) = self
            .service
            .store()
            .reschedule_job(job.id, job.attempts, again, &e.to_string())
            .await
        {
            tracing::error!(job = %job.id, error = %e, "cannot release the provider job; it runs again when its lease lapses");
        }
    }

    /// The grants of the claimed jobs, read together (one query instead of one per job). A
    /// grant missing here, or all of them if the read fails, is read again by its own job.
    async fn read_grants(
        &self,
        jobs: &[(Job, Result<ProviderJob, serde_json::Error>)],
    ) -> HashMap<Uuid, Grant> {
        let ids: Vec<Uuid> = jobs
            .iter()
            .filter_map(|(_, payload)| payload.as_ref().ok())
            .map(|payload| payload.grant_id)
            .collect();
        match self.service.store().get_grants(&ids).await {
            Ok(grants) => grants.into_iter().map(|g| (g.id, g)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the claimed jobs' grants together; reading them one by one");
                HashMap::new()
            }
        }
    }

    async fn try_handle(
        &self,
        job: &Job,
        payload: Result<ProviderJob, serde_json::Error>,
        grants: &HashMap<Uuid, Grant>,
    ) -> Result<Handled, ServiceError> {
        let store = self.service.store();
        let payload = match payload {
            Ok(p) => p,
            Err(e) => {
                store
                    .dead_letter_job(
                        job.id,
                        job.attempts,
                        &format!("unreadable provider job: {e}"),
                    )
                    .await?;
                return Ok(Handled::Recorded);
            }
        };
        let grant = match grants.get(&payload.grant_id) {
            Some(grant) => Some(grant.clone()),
            None => store.get_grant(payload.grant_id).await?,
        };
        let Some(grant) = grant else {
            store
                .dead_letter_job(job.id, job.attempts, "grant not found")
                .await?;
            return Ok(Handled::Recorded);
        };
        match payload.action {
            ProviderAction::Apply => self.apply(job, grant).await.map(|()| Handled::Recorded),
            ProviderAction::Revoke => self.revoke(job, grant).await,
        }
    }

    async fn apply(&self, job: &Job, grant: Grant) -> Result<(), ServiceError> {
        let store = self.service.store();
        if grant.state != GrantState::Approved {
            // Ended (or already applied) before this job ran: nothing to apply.
            store.complete_job(job.id).await?;
            return Ok(());
        }
        let now = self.service.clock().now();
        let give_up_at = self.service.apply_deadline(&grant);
        let Some(provider) = self.providers.get(&grant.provider) else {
            let reason = format!("provider {:?} is not configured", grant.provider);
            self.service.provider_failed(grant, job.id, reason).await?;
            return Ok(());
        };
        if now >= give_up_at {
            let reason = job.last_error.clone().map_or_else(
                || "the grant could not be applied before its deadline".to_owned(),
                |e| format!("the provider did not apply it in time: {e}"),
            );
            self.service.provider_failed(grant, job.id, reason).await?;
            return Ok(());
        }
        let call = call_for(&grant, ProviderAction::Apply);
        match provider.apply(&call).await {
            Ok(()) => {
                crate::failpoint!(crate::failpoint::PROVIDER_CALL);
                metrics::counter!("jitbridge_provider_calls_total", "provider" => grant.provider.clone(), "action" => "apply", "outcome" => "ok").increment(1);
                self.service.provider_applied(grant, job.id).await?;
                crate::failpoint!(crate::failpoint::OUTBOX_ACK);
            }
            Err(e) => {
                metrics::counter!("jitbridge_provider_calls_total", "provider" => grant.provider.clone(), "action" => "apply", "outcome" => "error").increment(1);
                let attempts = job.attempts + 1;
                let now = self.service.clock().now();
                let delay = backoff(
                    attempts,
                    self.settings.retry_initial,
                    self.settings.retry_max,
                    job.id.as_u128(),
                );
                let next = next_attempt(now, delay, None).min(give_up_at);
                tracing::warn!(grant = %grant.id, provider = %grant.provider, attempts, error = %e, "apply failed; will retry");
                store
                    .reschedule_job(job.id, attempts, next, &e.to_string())
                    .await?;
            }
        }
        Ok(())
    }

    async fn revoke(&self, job: &Job, grant: Grant) -> Result<Handled, ServiceError> {
        let store = self.service.store();
        let ending = matches!(
            grant.state,
            GrantState::Expiring | GrantState::Revoking | GrantState::RevokeFailed
        );
        // A failed apply is cleaned up with a revoke too: the endpoint may have applied it late.
        if !ending && grant.state != GrantState::Failed {
            store.complete_job(job.id).await?;
            return Ok(Handled::Recorded);
        }
        let result = match self.providers.get(&grant.provider) {
            Some(p) => p
                .revoke(&call_for(&grant, ProviderAction::Revoke))
                .await
                .map_err(|e| e.to_string()),
            None => Err(format!(
                "provider {:?} is not configured; restore it so the revoke can run",
                grant.provider
            )),
        };
        match result {
            Ok(()) => {
                crate::failpoint!(crate::failpoint::PROVIDER_CALL);
                metrics::counter!("jitbridge_provider_calls_total", "provider" => grant.provider.clone(), "action" => "revoke", "outcome" => "ok").increment(1);
                if ending {
                    // Recorded with the rest of the batch.
                    return Ok(Handled::Revoked(Box::new(grant)));
                }
                store.complete_job(job.id).await?;
                crate::failpoint!(crate::failpoint::OUTBOX_ACK);
            }
            Err(error) => {
                metrics::counter!("jitbridge_provider_calls_total", "provider" => grant.provider.clone(), "action" => "revoke", "outcome" => "error").increment(1);
                metrics::counter!("jitbridge_revoke_failures_total", "provider" => grant.provider.clone()).increment(1);
                let attempts = job.attempts + 1;
                tracing::error!(grant = %grant.id, subject = %grant.subject, target = %grant.target, provider = %grant.provider, attempts, %error,
                    "REVOKE FAILED: the privilege may still be held; retrying");
                let now = self.service.clock().now();
                let delay = backoff(
                    attempts,
                    self.settings.retry_initial,
                    self.settings.revoke_retry_max,
                    job.id.as_u128(),
                );
                if ending
                    && grant.state != GrantState::RevokeFailed
                    && attempts >= self.settings.revoke_alarm_after as i32
                {
                    self.service
                        .revoke_exhausted(grant, attempts, &error)
                        .await?;
                }
                store
                    .reschedule_job(job.id, attempts, next_attempt(now, delay, None), &error)
                    .await?;
            }
        }
        Ok(Handled::Recorded)
    }
}

/// What running one job left to do.
enum Handled {
    /// Its outcome is already in the store.
    Recorded,
    /// The provider confirmed the revoke of this ending grant; the `expired`/`revoked`
    /// transition is committed with the batch.
    Revoked(Box<Grant>),
}
