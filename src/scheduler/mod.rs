//! The expiry scheduler: sleeps until the earliest deadline among active grants (or until a
//! grant becomes active), then starts the revoke of every grant that is due. Deadlines live in
//! the store, so after a restart the first pass revokes everything that expired while the daemon
//! was down.
//!
//! Due grants are taken in batches and their `active → expiring` transitions committed together
//! (one durable write per batch), so a burst of same-second expiries is not paced by fsync.
//!
//! When the store cannot commit a deadline, the privilege must still go away on time: the
//! scheduler then calls the provider's revoke itself, from the grant it read (same stable
//! webhook id as the outbox job will use, so the receiver deduplicates the later durable call),
//! and keeps retrying the commit until it is durable; the normal path then records the revoke.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::grants::Grant;
use crate::grants::service::{GrantService, ServiceError};
use crate::providers::{ElevationProvider, ProviderAction, call_for};
use crate::store::StoreError;

/// Grants handled per pass (and per batch commit).
const BATCH: u32 = 256;
/// Longest sleep without re-reading the store (bounds the effect of wall-clock jumps).
const MAX_SLEEP: Duration = Duration::from_secs(5);
/// How soon a deadline commit that failed is tried again.
const COMMIT_RETRY: Duration = Duration::from_millis(250);
/// Provider calls made at once while revoking ahead of a failing store.
const AHEAD_CONCURRENCY: usize = 16;
/// Grants remembered as revoked ahead; beyond this the memory is reset (a repeated call is
/// harmless: revokes are idempotent per webhook id).
const AHEAD_MEMORY: usize = 100_000;

/// Revokes grants at their deadlines.
pub struct Scheduler {
    service: GrantService,
    wake: Arc<Notify>,
    /// Providers to call directly when the store cannot commit a deadline.
    providers: BTreeMap<String, Arc<dyn ElevationProvider>>,
    /// Grants whose revoke was already made ahead of their (still failing) deadline commit.
    revoked_ahead: Mutex<HashSet<Uuid>>,
}

impl Scheduler {
    /// A scheduler driving `service`, woken early by `wake`.
    pub fn new(service: GrantService, wake: Arc<Notify>) -> Self {
        Self {
            service,
            wake,
            providers: BTreeMap::new(),
            revoked_ahead: Mutex::new(HashSet::new()),
        }
    }

    /// Lets the scheduler revoke at `providers` directly while the store cannot commit (without
    /// them, a failing store delays revokes until it recovers).
    pub fn with_providers(
        mut self,
        providers: BTreeMap<String, Arc<dyn ElevationProvider>>,
    ) -> Self {
        self.providers = providers;
        self
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let sleep = match self.pass().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "expiry pass failed; retrying shortly");
                    Duration::from_millis(500)
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Starts the revoke of every due grant; returns how long to sleep until the next deadline.
    pub async fn pass(&self) -> Result<Duration, ServiceError> {
        let store = self.service.store().clone();
        loop {
            let now = self.service.clock().now();
            let due = store.due_grants(now, BATCH).await?;
            let n = due.len();
            let results = self.service.deadlines(due.clone()).await;
            let mut not_durable = Vec::new();
            for (grant, result) in due.into_iter().zip(results) {
                match result {
                    Ok(_) => self.forget_ahead(grant.id),
                    // Changed under us (e.g. revoked early at the same moment): the next pass re-reads.
                    Err(ServiceError::Store(StoreError::Conflict(_))) => {
                        self.forget_ahead(grant.id)
                    }
                    Err(e) if e.is_retryable() => {
                        tracing::error!(grant = %grant.id, error = %e, "cannot record the deadline; revoking at the provider now and retrying the record");
                        not_durable.push(grant);
                    }
                    Err(e) => {
                        tracing::error!(grant = %grant.id, error = %e, "cannot start the deadline revoke")
                    }
                }
            }
            if !not_durable.is_empty() {
                self.revoke_ahead(not_durable).await;
                return Ok(COMMIT_RETRY);
            }
            if (n as u32) < BATCH {
                break;
            }
        }
        let now = self.service.clock().now();
        Ok(match store.next_deadline().await? {
            // Still due after the pass (a conflict): look again soon.
            Some(at) if at <= now => Duration::from_millis(10),
            Some(at) => now.duration_until(at).unsigned_abs().min(MAX_SLEEP),
            None => MAX_SLEEP,
        })
    }

    /// Calls the provider's revoke for due grants whose deadline could not be committed, once
    /// each (until it succeeds). The durable outbox job sends the same webhook id later.
    async fn revoke_ahead(&self, grants: Vec<Grant>) {
        let todo: Vec<Grant> = {
            let done = self.lock_ahead();
            grants
                .into_iter()
                .filter(|g| !done.contains(&g.id))
                .collect()
        };
        let calls = todo.into_iter().map(|grant| async move {
            let Some(provider) = self.providers.get(&grant.provider) else {
                tracing::error!(grant = %grant.id, provider = %grant.provider, "no provider to revoke at while the store is failing");
                return None;
            };
            match provider
                .revoke(&call_for(&grant, ProviderAction::Revoke))
                .await
            {
                Ok(()) => {
                    metrics::counter!("jitbridge_provider_calls_total", "provider" => grant.provider.clone(), "action" => "revoke", "outcome" => "ok").increment(1);
                    tracing::warn!(grant = %grant.id, subject = %grant.subject, target = %grant.target, provider = %grant.provider,
                        "revoked ahead of its record: the store could not commit the deadline");
                    Some(grant.id)
                }
                Err(e) => {
                    metrics::counter!("jitbridge_provider_calls_total", "provider" => grant.provider.clone(), "action" => "revoke", "outcome" => "error").increment(1);
                    tracing::error!(grant = %grant.id, provider = %grant.provider, error = %e,
                        "REVOKE FAILED while the store cannot commit; retrying");
                    None
                }
            }
        });
        let revoked: Vec<Option<Uuid>> = futures::stream::iter(calls)
            .buffer_unordered(AHEAD_CONCURRENCY)
            .collect()
            .await;
        let mut done = self.lock_ahead();
        if done.len() >= AHEAD_MEMORY {
            done.clear();
        }
        done.extend(revoked.into_iter().flatten());
    }

    fn forget_ahead(&self, id: Uuid) {
        self.lock_ahead().remove(&id);
    }

    fn lock_ahead(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        // The set holds no invariant a panicking holder could break.
        self.revoked_ahead
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
