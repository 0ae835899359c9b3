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

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::live::LiveProviders;
use crate::grants::Grant;
use crate::grants::service::{GrantService, ServiceError};
use crate::providers::{ProviderAction, call_for};
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
    providers: Option<LiveProviders>,
    /// Grants whose revoke was already made ahead of their (still failing) deadline commit.
    revoked_ahead: Mutex<HashSet<Uuid>>,
}

impl Scheduler {
    /// A scheduler driving `service`, woken early by `wake`.
    pub fn new(service: GrantService, wake: Arc<Notify>) -> Self {
        Self {
            service,
            wake,
            providers: None,
            revoked_ahead: Mutex::new(HashSet::new()),
        }
    }

    /// Lets the scheduler revoke at `providers` directly while the store cannot commit (without
    /// them, a failing store delays revokes until it recovers).
    pub fn with_providers(mut self, providers: LiveProviders) -> Self {
        self.providers = Some(providers);
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
            let Some(provider) = self.providers.as_ref().and_then(|p| p.get(&grant.provider))
            else {
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

#[cfg(test)]
mod revoke_ahead_tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use jiff::{SignedDuration, Timestamp};

    use super::*;
    use crate::audit::{AuditRecord, NewAudit};
    use crate::clock::{ManualClock, SharedClock};
    use crate::config::WorkerSettings;
    use crate::config::live::{Active, LiveConfig};
    use crate::connectors::Registry;
    use crate::grants::GrantState;
    use crate::grants::service::{ServiceSettings, Wakers};
    use crate::mapping::MappingSet;
    use crate::outbox::provider_worker::ProviderWorker;
    use crate::providers::ElevationProvider;
    use crate::providers::{ProviderCall, ProviderError};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{
        Commit, Delivery, DeliveryOutcome, GrantFilter, InsertOutcome, Job, JobState, Lane,
        LiveGrantCounts, NewDelivery, OutboxStats, Store,
    };
    use crate::ticket::TicketRef;
    use std::collections::BTreeMap;

    /// A SQLite store whose grant commits fail while `failing` is set (a full disk, a lost
    /// volume): reads still work, as they do when only writes break.
    struct CommitsFailWhile {
        inner: SqliteStore,
        failing: AtomicBool,
    }

    impl CommitsFailWhile {
        fn refused(&self) -> Option<StoreError> {
            self.failing
                .load(Ordering::SeqCst)
                .then(|| StoreError::Unavailable("disk I/O error (simulated)".into()))
        }
    }

    #[async_trait]
    impl Store for CommitsFailWhile {
        async fn ping(&self) -> Result<(), StoreError> {
            self.inner.ping().await
        }
        async fn release_stale_leases(&self) -> Result<u64, StoreError> {
            self.inner.release_stale_leases().await
        }
        async fn insert_delivery(&self, d: NewDelivery) -> Result<InsertOutcome, StoreError> {
            self.inner.insert_delivery(d).await
        }
        async fn claim_deliveries(
            &self,
            worker: &str,
            now: Timestamp,
            lease: SignedDuration,
            limit: u32,
        ) -> Result<Vec<Delivery>, StoreError> {
            self.inner.claim_deliveries(worker, now, lease, limit).await
        }
        async fn finish_delivery(
            &self,
            id: Uuid,
            outcome: DeliveryOutcome,
        ) -> Result<(), StoreError> {
            self.inner.finish_delivery(id, outcome).await
        }
        async fn retry_delivery(
            &self,
            id: Uuid,
            not_before: Timestamp,
            error: &str,
        ) -> Result<(), StoreError> {
            self.inner.retry_delivery(id, not_before, error).await
        }
        async fn commit(&self, c: Commit) -> Result<(), StoreError> {
            match self.refused() {
                Some(e) => Err(e),
                None => self.inner.commit(c).await,
            }
        }
        async fn commit_many(&self, commits: Vec<Commit>) -> Vec<Result<(), StoreError>> {
            if self.refused().is_some() {
                return commits
                    .iter()
                    .filter_map(|_| self.refused())
                    .map(Err)
                    .collect();
            }
            self.inner.commit_many(commits).await
        }
        async fn get_grant(&self, id: Uuid) -> Result<Option<Grant>, StoreError> {
            self.inner.get_grant(id).await
        }
        async fn live_grant(
            &self,
            connector: &str,
            ticket_id: &str,
            mapping: &str,
        ) -> Result<Option<Grant>, StoreError> {
            self.inner.live_grant(connector, ticket_id, mapping).await
        }
        async fn latest_grant(
            &self,
            connector: &str,
            ticket_id: &str,
            mapping: &str,
        ) -> Result<Option<Grant>, StoreError> {
            self.inner.latest_grant(connector, ticket_id, mapping).await
        }
        async fn list_grants(&self, filter: &GrantFilter) -> Result<Vec<Grant>, StoreError> {
            self.inner.list_grants(filter).await
        }
        async fn count_grants_by_state(&self) -> Result<Vec<(GrantState, i64)>, StoreError> {
            self.inner.count_grants_by_state().await
        }
        async fn due_grants(&self, now: Timestamp, limit: u32) -> Result<Vec<Grant>, StoreError> {
            self.inner.due_grants(now, limit).await
        }
        async fn next_deadline(&self) -> Result<Option<Timestamp>, StoreError> {
            self.inner.next_deadline().await
        }
        async fn count_live_grants(
            &self,
            subject: &str,
            target: &str,
        ) -> Result<LiveGrantCounts, StoreError> {
            self.inner.count_live_grants(subject, target).await
        }
        async fn unresolved_revoke(
            &self,
            subject: &str,
            target: &str,
        ) -> Result<Option<Grant>, StoreError> {
            self.inner.unresolved_revoke(subject, target).await
        }
        async fn claim_jobs(
            &self,
            lane: Lane,
            worker: &str,
            now: Timestamp,
            lease: SignedDuration,
            limit: u32,
        ) -> Result<Vec<Job>, StoreError> {
            self.inner.claim_jobs(lane, worker, now, lease, limit).await
        }
        async fn complete_job(&self, id: Uuid) -> Result<(), StoreError> {
            self.inner.complete_job(id).await
        }
        async fn reschedule_job(
            &self,
            id: Uuid,
            attempts: i32,
            next_at: Timestamp,
            error: &str,
        ) -> Result<(), StoreError> {
            self.inner
                .reschedule_job(id, attempts, next_at, error)
                .await
        }
        async fn dead_letter_job(
            &self,
            id: Uuid,
            attempts: i32,
            error: &str,
        ) -> Result<(), StoreError> {
            self.inner.dead_letter_job(id, attempts, error).await
        }
        async fn retry_dead_job(&self, id: Uuid, now: Timestamp) -> Result<bool, StoreError> {
            self.inner.retry_dead_job(id, now).await
        }
        async fn list_jobs(&self, state: JobState, limit: u32) -> Result<Vec<Job>, StoreError> {
            self.inner.list_jobs(state, limit).await
        }
        async fn outbox_stats(
            &self,
            lane: Lane,
            now: Timestamp,
        ) -> Result<OutboxStats, StoreError> {
            self.inner.outbox_stats(lane, now).await
        }
        async fn append_audit(&self, records: Vec<NewAudit>) -> Result<(), StoreError> {
            self.inner.append_audit(records).await
        }
        async fn audit_records(
            &self,
            after: i64,
            limit: u32,
        ) -> Result<Vec<AuditRecord>, StoreError> {
            self.inner.audit_records(after, limit).await
        }
    }

    /// An elevation endpoint that records the webhook id of every revoke it receives.
    #[derive(Default)]
    struct RecordingProvider {
        revokes: Mutex<Vec<String>>,
    }

    impl RecordingProvider {
        fn revoke_ids(&self) -> Vec<String> {
            self.revokes.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl ElevationProvider for RecordingProvider {
        fn name(&self) -> &str {
            "p"
        }
        async fn apply(&self, _call: &ProviderCall) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn revoke(&self, call: &ProviderCall) -> Result<(), ProviderError> {
            self.revokes.lock().unwrap().push(call.webhook_id.clone());
            Ok(())
        }
    }

    fn active_grant(expires_at: Timestamp) -> Grant {
        Grant {
            id: Uuid::now_v7(),
            ticket: TicketRef {
                connector: "jira".into(),
                id: "10087".into(),
                key: "IT-87".into(),
                url: None,
            },
            mapping: "laptop-admin".into(),
            state: GrantState::Active,
            subject: "ana@example.com".into(),
            target: "WS-1".into(),
            scope: "local-admin".into(),
            provider: "p".into(),
            duration: SignedDuration::from_hours(1),
            requester: None,
            approvers: Vec::new(),
            requested_at: expires_at - SignedDuration::from_hours(1),
            approved_at: Some(expires_at - SignedDuration::from_hours(1)),
            starts_at: Some(expires_at - SignedDuration::from_hours(1)),
            expires_at: Some(expires_at),
            ended_at: None,
            revoke_cause: None,
            reason: None,
            last_event_at: expires_at - SignedDuration::from_hours(1),
            context: serde_json::json!({}),
            version: 1,
        }
    }

    /// A grant service over `store` whose only provider, `p`, is `provider`; with the live
    /// config its workers read providers from.
    fn service_over(
        store: Arc<dyn Store>,
        clock: SharedClock,
        provider: Arc<RecordingProvider>,
    ) -> (LiveConfig, GrantService) {
        let live = LiveConfig::new(Active {
            mappings: Arc::new(MappingSet::default()),
            connectors: Registry::default(),
            providers: BTreeMap::from([("p".to_owned(), provider as Arc<dyn ElevationProvider>)]),
        });
        let service = GrantService::new(
            store,
            clock,
            live.mappings(),
            live.connectors(),
            Wakers::default(),
            ServiceSettings {
                apply_window: SignedDuration::from_mins(10),
            },
        );
        (live, service)
    }

    fn worker_settings() -> WorkerSettings {
        WorkerSettings {
            apply_window: Duration::from_secs(600),
            retry_initial: Duration::from_millis(10),
            retry_max: Duration::from_millis(100),
            revoke_retry_max: Duration::from_millis(100),
            revoke_alarm_after: 10,
            writeback_max_attempts: 3,
        }
    }

    #[tokio::test]
    async fn a_deadline_the_store_cannot_commit_is_still_revoked_and_recorded_once_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let start = Timestamp::from_second(1_800_000_000).unwrap();
        let clock: SharedClock = Arc::new(ManualClock::new(start));
        let sqlite = SqliteStore::open_with_clock(&dir.path().join("j.db"), clock.clone())
            .await
            .unwrap();
        let grant = active_grant(start - SignedDuration::from_secs(1));
        sqlite
            .commit(Commit {
                grant: grant.clone(),
                expected_version: None,
                audit: Vec::new(),
                jobs: Vec::new(),
                complete_job: None,
            })
            .await
            .unwrap();
        let store = Arc::new(CommitsFailWhile {
            inner: sqlite,
            failing: AtomicBool::new(true),
        });
        let provider = Arc::new(RecordingProvider::default());
        let (live, service) = service_over(store.clone(), clock, provider.clone());
        let scheduler = Scheduler::new(service.clone(), Arc::new(Notify::new()))
            .with_providers(live.providers());
        let revoke_id = format!("msg_{}_revoke", grant.id.simple());

        // The store cannot commit: the provider is called anyway, and the commit is retried soon.
        assert_eq!(scheduler.pass().await.unwrap(), COMMIT_RETRY);
        assert_eq!(provider.revoke_ids(), vec![revoke_id.clone()]);
        let unrecorded = store.get_grant(grant.id).await.unwrap().unwrap();
        assert_eq!(
            unrecorded.state,
            GrantState::Active,
            "nothing was recorded yet"
        );
        // Still failing: the commit is retried, the provider is not called again.
        assert_eq!(scheduler.pass().await.unwrap(), COMMIT_RETRY);
        assert_eq!(provider.revoke_ids().len(), 1);

        // The store recovers: the deadline is recorded and the durable revoke job completes it.
        store.failing.store(false, Ordering::SeqCst);
        scheduler.pass().await.unwrap();
        assert_eq!(
            store.get_grant(grant.id).await.unwrap().unwrap().state,
            GrantState::Expiring
        );
        let shutdown = CancellationToken::new();
        let worker = ProviderWorker::new(
            service.clone(),
            live.providers(),
            worker_settings(),
            Arc::new(Notify::new()),
        );
        let running = tokio::spawn(worker.run(shutdown.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let ended = loop {
            let g = store.get_grant(grant.id).await.unwrap().unwrap();
            if g.state.is_terminal() || tokio::time::Instant::now() > deadline {
                break g;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        shutdown.cancel();
        running.await.unwrap();

        assert_eq!(ended.state, GrantState::Expired);
        let kinds: Vec<String> = store
            .audit_records(0, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.record.grant_id == Some(grant.id))
            .map(|r| r.record.kind)
            .collect();
        assert_eq!(kinds, ["grant.expiring", "grant.expired"]);
        let ids: HashSet<String> = provider.revoke_ids().into_iter().collect();
        assert_eq!(
            ids,
            HashSet::from([revoke_id]),
            "one revoke id: the receiver deduplicates the durable call"
        );
    }

    /// One claimed batch with an unreadable job and a job for a grant that does not exist:
    /// both are parked as dead letters with the reason, and the valid revoke beside them still
    /// runs and is recorded (the batched grant read must not hide either failure).
    #[tokio::test]
    async fn unreadable_and_orphaned_provider_jobs_are_dead_lettered_beside_a_valid_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let start = Timestamp::from_second(1_800_000_000).unwrap();
        let clock: SharedClock = Arc::new(ManualClock::new(start));
        let store = Arc::new(
            SqliteStore::open_with_clock(&dir.path().join("p.db"), clock.clone())
                .await
                .unwrap(),
        );
        let mut ending = active_grant(start - SignedDuration::from_secs(1));
        ending.state = GrantState::Expiring;
        ending.revoke_cause = Some(crate::grants::RevokeCause::Deadline);
        let mut unreadable = crate::outbox::provider_job(&ending, ProviderAction::Revoke, start);
        unreadable.queue_key = "unreadable".into();
        unreadable.payload = serde_json::json!({"not": "a provider job"});
        let orphan_of = active_grant(start);
        let mut orphaned = crate::outbox::provider_job(&orphan_of, ProviderAction::Revoke, start);
        orphaned.queue_key = "orphaned".into();
        let valid = crate::outbox::provider_job(&ending, ProviderAction::Revoke, start);
        store
            .commit(Commit {
                grant: ending.clone(),
                expected_version: None,
                audit: Vec::new(),
                jobs: vec![unreadable.clone(), orphaned.clone(), valid],
                complete_job: None,
            })
            .await
            .unwrap();
        let provider = Arc::new(RecordingProvider::default());
        let (live, service) = service_over(store.clone(), clock, provider.clone());
        let worker = ProviderWorker::new(
            service,
            live.providers(),
            worker_settings(),
            Arc::new(Notify::new()),
        );
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(worker.run(shutdown.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let (dead, state) = loop {
            let dead = store.list_jobs(JobState::Dead, 10).await.unwrap();
            let state = store.get_grant(ending.id).await.unwrap().unwrap().state;
            if (dead.len() == 2 && state.is_terminal()) || tokio::time::Instant::now() > deadline {
                break (dead, state);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        shutdown.cancel();
        running.await.unwrap();

        assert_eq!(
            state,
            GrantState::Expired,
            "the valid revoke ran and was recorded"
        );
        assert_eq!(provider.revoke_ids().len(), 1);
        let reason = |id: Uuid| {
            dead.iter()
                .find(|j| j.id == id)
                .and_then(|j| j.last_error.clone())
                .unwrap_or_default()
        };
        assert!(
            reason(unreadable.id).contains("unreadable provider job"),
            "{dead:?}"
        );
        assert_eq!(reason(orphaned.id), "grant not found", "{dead:?}");
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use jiff::{SignedDuration, Timestamp};
    use serde_json::json;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::grants::GrantState;
    use crate::grants::service::{Outcome, ServiceSettings, Wakers};
    use crate::mapping::{Known, MappingSet};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Commit, Store};
    use crate::ticket::{EventKind, Person, StatusChange, Ticket, TicketEvent};

    const MAPPING: &str = r#"
[[mapping]]
name = "m"
connector = "c"
when = 'true'
[mapping.grant]
subject = "{{ requester.email }}"
target = "WS-1"
scope = "local-admin"
duration = "{{ fields.duration }}"
max_duration = "3h"
provider = "p"
[mapping.on]
approve = { status = ["Approved"] }
revoke = { status = ["Done"] }
"#;

    fn person(email: &str) -> Person {
        Person {
            id: Some(email.into()),
            email: Some(email.into()),
            name: None,
        }
    }

    /// An event on ticket T-1 raised by alice, at `at`, by `actor`, moving it to `to`.
    fn event(kind: EventKind, at: Timestamp, actor: &str, to: Option<&str>) -> TicketEvent {
        TicketEvent {
            connector: "c".into(),
            kind,
            ticket: Ticket {
                id: "1".into(),
                key: "T-1".into(),
                status: to.map(str::to_owned),
                ..Default::default()
            },
            requester: Some(person("alice@example.com")),
            actor: Some(person(actor)),
            approval: None,
            status_change: to.map(|t| StatusChange {
                from: None,
                to: t.into(),
            }),
            occurred_at: at,
            fields: json!({"duration": "1h"}),
            payload: json!({"at": at.to_string(), "actor": actor}),
        }
    }

    async fn setup() -> (tempfile::TempDir, ManualClock, GrantService, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new("2026-11-26T10:00:00Z".parse().unwrap());
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open_with_clock(&dir.path().join("db.sqlite"), Arc::new(clock.clone()))
                .await
                .unwrap(),
        );
        let known = Known {
            connectors: vec!["c".into()],
            providers: vec!["p".into()],
            ..Default::default()
        };
        let mappings =
            MappingSet::from_files(&[(PathBuf::from("m.toml"), MAPPING.to_owned())], &known)
                .unwrap();
        let live = crate::config::live::LiveConfig::new(crate::config::live::Active {
            mappings: Arc::new(mappings),
            connectors: Default::default(),
            providers: Default::default(),
        });
        let service = GrantService::new(
            store.clone(),
            Arc::new(clock.clone()),
            live.mappings(),
            live.connectors(),
            Wakers::default(),
            ServiceSettings {
                apply_window: SignedDuration::from_secs(30),
            },
        );
        (dir, clock, service, store)
    }

    /// Marks the ticket's grant active, as the provider worker does after a confirmed apply.
    async fn activate(store: &Arc<dyn Store>, now: Timestamp) {
        let mut g = store.live_grant("c", "1", "m").await.unwrap().unwrap();
        let expected = g.version;
        g.state = GrantState::Active;
        g.starts_at = Some(now);
        g.version += 1;
        store
            .commit(Commit {
                grant: g,
                expected_version: Some(expected),
                audit: vec![],
                jobs: vec![],
                complete_job: None,
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_renewed_deadline_is_the_one_the_scheduler_honours() {
        let (_dir, clock, service, store) = setup().await;
        let t0 = clock.now();
        let sec = |s: i64| t0.checked_add(SignedDuration::from_secs(s)).unwrap();
        service
            .handle_event(&event(EventKind::Created, t0, "alice@example.com", None))
            .await
            .unwrap();
        let out = service
            .handle_event(&event(
                EventKind::Updated,
                sec(1),
                "bob@example.com",
                Some("Approved"),
            ))
            .await
            .unwrap();
        assert!(matches!(out[..], [Outcome::Approved(_)]), "{out:?}");
        activate(&store, t0).await;
        let scheduler = Scheduler::new(service.clone(), Arc::new(Notify::new()));

        // 50 minutes in, carol approves again: one more hour from now.
        clock.advance(SignedDuration::from_mins(50));
        let renewal = event(
            EventKind::Updated,
            clock.now(),
            "carol@example.com",
            Some("Approved"),
        );
        let out = service.handle_event(&renewal).await.unwrap();
        assert!(matches!(out[..], [Outcome::Renewed(_)]), "{out:?}");
        let g = store.live_grant("c", "1", "m").await.unwrap().unwrap();
        assert_eq!(g.expires_at, Some(sec(50 * 60 + 3600)));
        assert_eq!(g.state, GrantState::Active);

        // The same event again is a replay: nothing moves.
        let out = service.handle_event(&renewal).await.unwrap();
        assert!(
            matches!(&out[..], [Outcome::Ignored(why)] if why.contains("replay")),
            "{out:?}"
        );

        // The first deadline passes: the grant is not due any more.
        clock.advance(SignedDuration::from_mins(11));
        scheduler.pass().await.unwrap();
        let g = store.live_grant("c", "1", "m").await.unwrap().unwrap();
        assert_eq!(g.state, GrantState::Active, "revoked at the old deadline");

        // The renewed deadline passes: the revoke starts.
        clock.advance(SignedDuration::from_mins(50));
        scheduler.pass().await.unwrap();
        let g = store.live_grant("c", "1", "m").await.unwrap().unwrap();
        assert_eq!(g.state, GrantState::Expiring);
    }

    #[tokio::test]
    async fn renewals_by_the_requester_or_beyond_the_cap_do_not_move_the_deadline() {
        let (_dir, clock, service, store) = setup().await;
        let t0 = clock.now();
        service
            .handle_event(&event(EventKind::Created, t0, "alice@example.com", None))
            .await
            .unwrap();
        service
            .handle_event(&event(
                EventKind::Updated,
                t0,
                "bob@example.com",
                Some("Approved"),
            ))
            .await
            .unwrap();
        activate(&store, t0).await;
        let cap = t0.checked_add(SignedDuration::from_hours(3)).unwrap();
        let mut deadline = t0.checked_add(SignedDuration::from_hours(1)).unwrap();
        // (minutes since start, approver, the deadline afterwards)
        let steps: &[(i64, &str, Option<Timestamp>)] = &[
            (30, "alice@example.com", None), // the requester: refused
            (
                59,
                "bob@example.com",
                Some(t0.checked_add(SignedDuration::from_mins(119)).unwrap()),
            ),
            (
                118,
                "carol@example.com",
                Some(t0.checked_add(SignedDuration::from_mins(178)).unwrap()),
            ),
            (170, "bob@example.com", Some(cap)), // capped at 3h from the first approval
            (175, "carol@example.com", None),    // at the cap: unchanged
        ];
        for (minutes, approver, want) in steps {
            let at = t0.checked_add(SignedDuration::from_mins(*minutes)).unwrap();
            clock.advance(clock.now().duration_until(at));
            service
                .handle_event(&event(
                    EventKind::Updated,
                    clock.now(),
                    approver,
                    Some("Approved"),
                ))
                .await
                .unwrap();
            let g = store.live_grant("c", "1", "m").await.unwrap().unwrap();
            if let Some(w) = want {
                deadline = *w;
            }
            assert_eq!(g.expires_at, Some(deadline), "at +{minutes}m by {approver}");
            assert!(g.expires_at.unwrap() <= cap);
            assert_eq!(g.expires_at.unwrap().duration_since(t0), g.duration);
        }
    }
}
