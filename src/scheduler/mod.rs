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
