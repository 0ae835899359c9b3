//! The expiry scheduler: sleeps until the earliest deadline among active grants (or until a
//! grant becomes active), then starts the revoke of every grant that is due. Deadlines live in
//! the store, so after a restart the first pass revokes everything that expired while the daemon
//! was down.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::grants::service::{GrantService, ServiceError};
use crate::store::StoreError;

/// Grants handled per pass.
const BATCH: u32 = 256;
/// Longest sleep without re-reading the store (bounds the effect of wall-clock jumps).
const MAX_SLEEP: Duration = Duration::from_secs(5);

/// Revokes grants at their deadlines.
pub struct Scheduler {
    service: GrantService,
    wake: Arc<Notify>,
}

impl Scheduler {
    /// A scheduler driving `service`, woken early by `wake`.
    pub fn new(service: GrantService, wake: Arc<Notify>) -> Self {
        Self { service, wake }
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
            for grant in due {
                let id = grant.id;
                match self.service.deadline(grant).await {
                    Ok(_) => {}
                    // Changed under us (e.g. revoked early at the same moment): the next pass re-reads.
                    Err(ServiceError::Store(StoreError::Conflict(_))) => {}
                    Err(e) => {
                        tracing::error!(grant = %id, error = %e, "cannot start the deadline revoke")
                    }
                }
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
}
