//! The grant service: the only code that changes grants. It turns an evaluated ticket event
//! into a decision (confirming approvals with the ITSM and checking policy), and worker results
//! (provider applied, deadline passed, revoke confirmed) into transitions. Each transition is
//! committed as one [`Commit`]: the new grant row, its audit records and its outbox jobs.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{Grant, GrantEvent, GrantState, InvalidTransition, RevokeCause, next_state};
use crate::audit::NewAudit;
use crate::clock::SharedClock;
use crate::connectors::{Confirmation, ConnectorError, Registry, Writeback, WritebackAction};
use crate::mapping::{GrantSpec, Mapping, MappingSet, Trigger, stored_context};
use crate::outbox::{provider_job, writeback_job};
use crate::policy::{ApproverSource, Facts, PolicyInput, Verdict};
use crate::providers::ProviderAction;
use crate::store::{Commit, NewJob, Store, StoreError};
use crate::ticket::{EventKind, Person, TicketEvent};

/// Why the service could not finish handling something.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The store failed; the caller retries.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The ITSM could not confirm the approval right now; the delivery is retried.
    #[error("could not confirm the approval with connector {connector}: {source}")]
    Confirm {
        connector: String,
        source: ConnectorError,
    },
    /// No such grant.
    #[error("grant {0} not found")]
    NotFound(Uuid),
    /// The grant has already ended.
    #[error("grant {id} is {state}: it has already ended")]
    Ended { id: Uuid, state: GrantState },
    /// The state machine refused (a bug or a race that re-reading did not settle).
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
}

impl ServiceError {
    /// Whether the same work may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            ServiceError::Store(StoreError::Corrupt(_)) => false,
            ServiceError::Store(_) => true,
            ServiceError::Confirm { source, .. } => source.is_retryable(),
            _ => false,
        }
    }
}

/// What handling one event did for one mapping (for logs, tests and `explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A grant was recorded in `requested`.
    Requested(Uuid),
    /// Approved; the provider job is queued.
    Approved(Uuid),
    /// Refused by an approver or by policy.
    Denied(Uuid, String),
    /// The ticket ended before approval.
    Cancelled(Uuid),
    /// The grant is being revoked early.
    Ending(Uuid),
    /// The event claimed an approval the ITSM's API does not confirm: nothing granted.
    Unconfirmed(String),
    /// Nothing to do (stale, duplicate, or no grant to act on); recorded in the audit.
    Ignored(String),
}

/// Wake-ups for the workers after a commit, so new work starts at once instead of at the next poll.
#[derive(Debug, Default, Clone)]
pub struct Wakers {
    pub provider: Arc<Notify>,
    pub writeback: Arc<Notify>,
    pub scheduler: Arc<Notify>,
}

/// Settings the service needs.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// How long a provider may keep failing to apply before the grant is `failed`.
    pub apply_window: SignedDuration,
}

/// Drives grants through their states. Cheap to clone.
#[derive(Clone)]
pub struct GrantService {
    store: Arc<dyn Store>,
    clock: SharedClock,
    mappings: Arc<MappingSet>,
    connectors: Registry,
    wakers: Wakers,
    settings: ServiceSettings,
}

/// Who did something, as recorded in the audit.
fn who(p: Option<&Person>) -> Option<String> {
    p.and_then(|p| {
        p.email
            .clone()
            .or_else(|| p.id.clone())
            .or_else(|| p.name.clone())
    })
}

impl GrantService {
    /// A service over `store`, deciding with `mappings` and confirming through `connectors`.
    pub fn new(
        store: Arc<dyn Store>,
        clock: SharedClock,
        mappings: Arc<MappingSet>,
        connectors: Registry,
        wakers: Wakers,
        settings: ServiceSettings,
    ) -> Self {
        Self {
            store,
            clock,
            mappings,
            connectors,
            wakers,
            settings,
        }
    }

    /// The store this service commits to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The clock this service reads.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Handles one normalized event for every mapping of its connector that matches it.
    pub async fn handle_event(&self, event: &TicketEvent) -> Result<Vec<Outcome>, ServiceError> {
        let mut outcomes = Vec::new();
        for evaluation in self.mappings.evaluate(event) {
            if evaluation.matched != Ok(true) {
                continue;
            }
            let Some(mapping) = self.mappings.get(&evaluation.mapping) else {
                continue;
            };
            // A conflict means another worker changed the grant between our read and our commit:
            // decide again on fresh state (bounded, so a livelock cannot hide).
            let mut attempt = 0;
            let outcome = loop {
                match self
                    .handle_for_mapping(event, mapping, evaluation.trigger)
                    .await
                {
                    Err(ServiceError::Store(StoreError::Conflict(_))) if attempt < 3 => {
                        attempt += 1
                    }
                    other => break other?,
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn handle_for_mapping(
        &self,
        event: &TicketEvent,
        mapping: &Mapping,
        trigger: Option<Trigger>,
    ) -> Result<Outcome, ServiceError> {
        let connector = &event.connector;
        let live = self
            .store
            .live_grant(connector, &event.ticket.id, mapping.name())
            .await?;
        let latest = match &live {
            Some(_) => None,
            None => {
                self.store
                    .latest_grant(connector, &event.ticket.id, mapping.name())
                    .await?
            }
        };
        // Out-of-order or replayed events never undo a newer state.
        let newest_seen = live.as_ref().or(latest.as_ref()).map(|g| g.last_event_at);
        if let Some(seen) = newest_seen
            && event.occurred_at < seen
        {
            return self
                .ignore(
                    event,
                    mapping,
                    live.as_ref().or(latest.as_ref()),
                    "stale: older than the last change applied to this grant",
                )
                .await;
        }
        // Same instant as the event that ended the previous grant: a replay if it is the same
        // event (same content), a genuine new event otherwise (ITSMs with whole-second times).
        if let (None, Some(ended)) = (&live, &latest)
            && event.occurred_at == ended.last_event_at
            && ended
                .context
                .get(LAST_EVENT_DIGEST)
                .and_then(|d| d.as_str())
                .is_none_or(|d| d == event_digest(event))
        {
            return self
                .ignore(
                    event,
                    mapping,
                    Some(ended),
                    "replay of the event that ended the previous grant",
                )
                .await;
        }

        match trigger {
            None => match live {
                None if event.kind == EventKind::Created || latest.is_none() => {
                    self.request(event, mapping).await
                }
                Some(g) => {
                    self.ignore(
                        event,
                        mapping,
                        Some(&g),
                        "no trigger; the grant is unchanged",
                    )
                    .await
                }
                None => {
                    self.ignore(
                        event,
                        mapping,
                        latest.as_ref(),
                        "no trigger and no live grant",
                    )
                    .await
                }
            },
            Some(Trigger::Approve) => self.approve(event, mapping, live).await,
            Some(Trigger::Deny) => match live {
                Some(g) if g.state == GrantState::Requested => {
                    let reason = format!(
                        "declined in the ticket by {}",
                        who(event.actor.as_ref()).unwrap_or_else(|| "an approver".into())
                    );
                    self.deny(event, mapping, g, reason, None).await
                }
                // A decision withdrawn after approval: never leave the privilege in place.
                Some(g) => self
                    .end_early(
                        g,
                        "the approval was declined after it had been granted".into(),
                        who(event.actor.as_ref()),
                        Some(event),
                    )
                    .await
                    .map(|g| Outcome::Ending(g.id)),
                None => {
                    let reason = format!(
                        "declined in the ticket by {}",
                        who(event.actor.as_ref()).unwrap_or_else(|| "an approver".into())
                    );
                    match self.new_grant(event, mapping) {
                        Ok(g) => self.deny(event, mapping, g, reason, None).await,
                        Err(why) => {
                            self.ignore(
                                event,
                                mapping,
                                None,
                                &format!("declined, and no grant could be described: {why}"),
                            )
                            .await
                        }
                    }
                }
            },
            Some(Trigger::Revoke) => match live {
                Some(g) if g.state == GrantState::Requested => {
                    let g = self
                        .transition(
                            g,
                            GrantEvent::Cancel,
                            TransitionInput::by_event(
                                event,
                                "the ticket was closed before approval",
                            ),
                        )
                        .await?;
                    Ok(Outcome::Cancelled(g.id))
                }
                Some(g) => {
                    let reason = format!(
                        "the ticket reached status {}",
                        event.ticket.status.clone().unwrap_or_default()
                    );
                    self.end_early(g, reason, who(event.actor.as_ref()), Some(event))
                        .await
                        .map(|g| Outcome::Ending(g.id))
                }
                None => {
                    self.ignore(event, mapping, latest.as_ref(), "no live grant to end")
                        .await
                }
            },
        }
    }

    /// Records a new grant in `requested`.
    async fn request(
        &self,
        event: &TicketEvent,
        mapping: &Mapping,
    ) -> Result<Outcome, ServiceError> {
        let grant = match self.new_grant(event, mapping) {
            Ok(g) => g,
            Err(why) => {
                return self
                    .ignore(
                        event,
                        mapping,
                        None,
                        &format!("matched, but the grant cannot be described: {why}"),
                    )
                    .await;
            }
        };
        let mut rows = Rows::default();
        rows.audit.push(self.audit_for(
            &grant,
            "grant.requested",
            who(event.actor.as_ref()),
            json!({
                "event": event.kind.as_str(), "subject": grant.subject, "target": grant.target,
                "scope": grant.scope, "duration_secs": grant.duration.as_secs(),
            }),
        ));
        rows.jobs.extend(self.writebacks(mapping, &grant, None));
        let id = grant.id;
        self.commit(grant, None, rows, None).await?;
        Ok(Outcome::Requested(id))
    }

    /// The approval path: confirm with the ITSM, check policy, then approve or deny.
    async fn approve(
        &self,
        event: &TicketEvent,
        mapping: &Mapping,
        live: Option<Grant>,
    ) -> Result<Outcome, ServiceError> {
        if let Some(g) = &live
            && g.state != GrantState::Requested
        {
            return self
                .ignore(event, mapping, Some(g), &format!("already {}", g.state))
                .await;
        }
        let confirmation = self.confirm(event).await?;
        if let Some(why) = unconfirmed(mapping, event, confirmation.as_ref()) {
            let record = NewAudit {
                at: self.clock.now(),
                kind: "approval.unconfirmed".into(),
                grant_id: live.as_ref().map(|g| g.id),
                connector: Some(event.connector.clone()),
                ticket_key: Some(event.ticket.key.clone()),
                actor: who(event.actor.as_ref()),
                detail: json!({"mapping": mapping.name(), "why": why, "event_status": event.ticket.status,
                    "confirmed": confirmation}),
            };
            self.store.append_audit(vec![record]).await?;
            tracing::warn!(connector = %event.connector, ticket = %event.ticket.key, %why, "approval not confirmed by the ITSM; nothing granted");
            metrics::counter!("jitbridge_approvals_unconfirmed_total", "connector" => event.connector.clone()).increment(1);
            return Ok(Outcome::Unconfirmed(why));
        }

        // Render from what the ITSM confirmed: a delivery may name people by id only (ServiceNow,
        // Freshservice), while the API look-up supplies their e-mail addresses.
        let confirmed_event;
        let event: &TicketEvent = match confirmation.as_ref() {
            Some(c) if c.requester.is_some() || c.approval.is_some() || c.fields.is_some() => {
                let mut e = event.clone();
                if let (
                    Some(serde_json::Value::Object(confirmed)),
                    serde_json::Value::Object(delivered),
                ) = (&c.fields, &mut e.fields)
                {
                    for (k, v) in confirmed {
                        delivered.insert(k.clone(), v.clone());
                    }
                }
                if let Some(r) = &c.requester {
                    e.requester = Some(merge_person(e.requester.take(), r));
                }
                if let Some(a) = &c.approval {
                    e.approval = Some(a.clone());
                }
                confirmed_event = e;
                &confirmed_event
            }
            _ => event,
        };
        let spec = match mapping.render_grant(event) {
            Ok(s) => s,
            Err(e) => {
                let why = e.to_string();
                return match live {
                    Some(g) => {
                        self.deny(
                            event,
                            mapping,
                            g,
                            format!("the request cannot be turned into a grant: {why}"),
                            None,
                        )
                        .await
                    }
                    None => {
                        self.ignore(
                            event,
                            mapping,
                            None,
                            &format!("approved, but the grant cannot be described: {why}"),
                        )
                        .await
                    }
                };
            }
        };

        if confirmation.as_ref().is_some_and(|c| c.fields.is_some())
            && mapping.matches(event) != Ok(true)
        {
            let why = "the ticket as the ITSM reports it does not match this mapping".to_owned();
            self.store
                .append_audit(vec![NewAudit {
                    at: self.clock.now(),
                    kind: "approval.unconfirmed".into(),
                    grant_id: live.as_ref().map(|g| g.id),
                    connector: Some(event.connector.clone()),
                    ticket_key: Some(event.ticket.key.clone()),
                    actor: who(event.actor.as_ref()),
                    detail: json!({"mapping": mapping.name(), "why": why}),
                }])
                .await?;
            return Ok(Outcome::Unconfirmed(why));
        }

        let confirmed_approvers: Vec<Person> = confirmation
            .as_ref()
            .and_then(|c| c.approval.as_ref())
            .map(|a| a.approvers.clone())
            .unwrap_or_default();
        // Where the approvers come from decides what policy may conclude from them: only the
        // ITSM's own record (or a delivery the admin chose to trust) can show that an allowed
        // person approved; a delivery's actor can still show that the requester did.
        let (approvers, approvers_from) = match (&confirmation, confirmed_approvers.is_empty()) {
            (_, false) => (confirmed_approvers, ApproverSource::Confirmed),
            (None, true) => (
                event.actor.iter().cloned().collect(),
                ApproverSource::Delivery,
            ),
            (Some(_), true) => (
                event.actor.iter().cloned().collect(),
                ApproverSource::Unconfirmed,
            ),
        };
        let requester = confirmation
            .as_ref()
            .and_then(|c| c.requester.clone())
            .or_else(|| event.requester.clone());

        let mut grant = match live {
            Some(g) => g,
            None => self.new_grant_from(event, mapping, &spec),
        };
        let expected = (grant.version > 0).then_some(grant.version);
        apply_spec(&mut grant, &spec);
        grant.requester = requester.clone();
        grant.approvers = approvers.clone();

        let live = if mapping.policy().needs_live_counts() {
            Some(
                self.store
                    .count_live_grants(&spec.subject, &spec.target)
                    .await?,
            )
        } else {
            None
        };
        let facts = Facts {
            now: self.clock.now(),
            live_for_subject: live.map(|c| c.by_subject),
            live_for_target: live.map(|c| c.by_target),
            approvers_from,
        };
        let verdict = mapping.check_policy_at(
            event,
            &PolicyInput {
                requester: requester.as_ref(),
                approvers: &approvers,
                subject: &spec.subject,
                target: &spec.target,
                duration: spec.duration,
            },
            &facts,
        );
        if !verdict.allowed() {
            let reason = verdict
                .refusal()
                .unwrap_or_else(|| "refused by policy".into());
            return self
                .deny(event, mapping, grant, reason, Some(&verdict))
                .await;
        }

        let mut rows = Rows::default();
        if expected.is_none() {
            rows.audit.push(self.audit_for(
                &grant,
                "grant.requested",
                who(event.requester.as_ref()),
                json!({"event": event.kind.as_str()}),
            ));
        }
        let input = TransitionInput {
            actor: who(approvers.first()),
            reason: None,
            occurred_at: Some(event.occurred_at),
            digest: Some(event_digest(event)),
            detail: json!({
                "approvers": approvers, "requester": requester, "confirmed": confirmation,
                "policy": verdict_json(&verdict), "requested_duration_secs": spec.requested.as_secs(), "capped": spec.capped,
            }),
        };
        let grant = self
            .step_and_commit(grant, expected, GrantEvent::Approve, input, rows, None)
            .await?;
        metrics::counter!("jitbridge_grants_approved_total", "connector" => event.connector.clone()).increment(1);
        Ok(Outcome::Approved(grant.id))
    }

    async fn confirm(&self, event: &TicketEvent) -> Result<Option<Confirmation>, ServiceError> {
        let Some(reg) = self.connectors.get(&event.connector) else {
            return Ok(None);
        };
        if !reg.confirm_approvals {
            return Ok(None);
        }
        reg.connector
            .confirm(&event.ticket_ref())
            .await
            .map(Some)
            .map_err(|source| ServiceError::Confirm {
                connector: event.connector.clone(),
                source,
            })
    }

    async fn deny(
        &self,
        event: &TicketEvent,
        mapping: &Mapping,
        grant: Grant,
        reason: String,
        verdict: Option<&Verdict>,
    ) -> Result<Outcome, ServiceError> {
        let expected = (grant.version > 0).then_some(grant.version);
        let mut rows = Rows::default();
        if expected.is_none() {
            rows.audit.push(self.audit_for(
                &grant,
                "grant.requested",
                who(event.requester.as_ref()),
                json!({"event": event.kind.as_str()}),
            ));
        }
        let input = TransitionInput {
            actor: who(event.actor.as_ref()),
            reason: Some(reason.clone()),
            occurred_at: Some(event.occurred_at),
            digest: Some(event_digest(event)),
            detail: json!({"policy": verdict.map(verdict_json), "mapping": mapping.name()}),
        };
        let grant = self
            .step_and_commit(grant, expected, GrantEvent::Deny, input, rows, None)
            .await?;
        metrics::counter!("jitbridge_grants_denied_total", "connector" => event.connector.clone())
            .increment(1);
        Ok(Outcome::Denied(grant.id, reason))
    }

    /// Starts an early revoke (ticket resolved, decision withdrawn, admin).
    async fn end_early(
        &self,
        grant: Grant,
        reason: String,
        actor: Option<String>,
        event: Option<&TicketEvent>,
    ) -> Result<Grant, ServiceError> {
        match grant.state {
            GrantState::Expiring | GrantState::Revoking | GrantState::RevokeFailed => Ok(grant),
            GrantState::Requested => {
                let input = TransitionInput {
                    actor,
                    reason: Some(reason),
                    occurred_at: event.map(|e| e.occurred_at),
                    digest: event.map(event_digest),
                    detail: json!({}),
                };
                self.transition(grant, GrantEvent::Cancel, input).await
            }
            s if s.is_terminal() => Err(ServiceError::Ended {
                id: grant.id,
                state: s,
            }),
            _ => {
                let input = TransitionInput {
                    actor,
                    reason: Some(reason),
                    occurred_at: event.map(|e| e.occurred_at),
                    digest: event.map(event_digest),
                    detail: json!({}),
                };
                self.transition(grant, GrantEvent::EndEarly, input).await
            }
        }
    }

    /// An admin's revoke (`POST /api/v1/grants/{id}/revoke`, `jitbridge grants revoke`).
    pub async fn admin_revoke(
        &self,
        id: Uuid,
        reason: &str,
        actor: &str,
    ) -> Result<Grant, ServiceError> {
        for _ in 0..3 {
            let grant = self
                .store
                .get_grant(id)
                .await?
                .ok_or(ServiceError::NotFound(id))?;
            match self
                .end_early(
                    grant,
                    format!("revoked by an administrator: {reason}"),
                    Some(actor.to_owned()),
                    None,
                )
                .await
            {
                Err(ServiceError::Store(StoreError::Conflict(_))) => continue,
                other => return other,
            }
        }
        Err(ServiceError::Store(StoreError::Conflict(format!(
            "grant {id} kept changing; try again"
        ))))
    }

    /// The provider confirmed the apply: the grant is active.
    pub async fn provider_applied(&self, grant: Grant, job: Uuid) -> Result<Grant, ServiceError> {
        let input = TransitionInput::system(None, json!({"provider": grant.provider}));
        let g = self
            .step_and_commit_simple(grant, GrantEvent::ProviderApplied, input, Some(job))
            .await?;
        self.wakers.scheduler.notify_one();
        Ok(g)
    }

    /// The provider kept failing past the apply window.
    pub async fn provider_failed(
        &self,
        grant: Grant,
        job: Uuid,
        reason: String,
    ) -> Result<Grant, ServiceError> {
        let input = TransitionInput::system(Some(reason), json!({"provider": grant.provider}));
        self.step_and_commit_simple(grant, GrantEvent::ProviderFailed, input, Some(job))
            .await
    }

    /// The deadline passed: start the revoke.
    pub async fn deadline(&self, grant: Grant) -> Result<Grant, ServiceError> {
        let input = TransitionInput::system(
            Some("the granted time is over".into()),
            json!({"expires_at": grant.expires_at}),
        );
        self.step_and_commit_simple(grant, GrantEvent::Deadline, input, None)
            .await
    }

    /// The provider confirmed the revoke: the grant has ended.
    pub async fn revoke_succeeded(&self, grant: Grant, job: Uuid) -> Result<Grant, ServiceError> {
        let now = self.clock.now();
        let lateness = grant.expires_at.map(|e| now.duration_since(e));
        let input = TransitionInput::system(
            grant.reason.clone(),
            json!({"provider": grant.provider, "lateness_ms": lateness.map(|l| l.as_millis())}),
        );
        let cause = grant.revoke_cause;
        let g = self
            .step_and_commit_simple(grant, GrantEvent::RevokeSucceeded, input, Some(job))
            .await?;
        if cause == Some(RevokeCause::Deadline)
            && let Some(l) = lateness
        {
            metrics::histogram!("jitbridge_expiry_lateness_seconds")
                .record(l.as_secs_f64().max(0.0));
        }
        Ok(g)
    }

    /// The revoke failed too often: raise the alarm (state, audit, ticket comment) and keep trying.
    pub async fn revoke_exhausted(
        &self,
        grant: Grant,
        attempts: i32,
        error: &str,
    ) -> Result<Grant, ServiceError> {
        let input = TransitionInput::system(
            grant.reason.clone(),
            json!({"provider": grant.provider, "attempts": attempts, "last_error": error}),
        );
        self.step_and_commit_simple(grant, GrantEvent::RevokeExhausted, input, None)
            .await
    }

    async fn ignore(
        &self,
        event: &TicketEvent,
        mapping: &Mapping,
        grant: Option<&Grant>,
        why: &str,
    ) -> Result<Outcome, ServiceError> {
        let record = NewAudit {
            at: self.clock.now(),
            kind: "event.ignored".into(),
            grant_id: grant.map(|g| g.id),
            connector: Some(event.connector.clone()),
            ticket_key: Some(event.ticket.key.clone()),
            actor: who(event.actor.as_ref()),
            detail: json!({"mapping": mapping.name(), "why": why, "event": event.kind.as_str(),
                "occurred_at": event.occurred_at, "status": event.ticket.status}),
        };
        self.store.append_audit(vec![record]).await?;
        tracing::debug!(connector = %event.connector, ticket = %event.ticket.key, mapping = mapping.name(), why, "event ignored");
        Ok(Outcome::Ignored(why.to_owned()))
    }

    /// A fresh grant (not yet stored) for this event, or why it cannot be described.
    fn new_grant(&self, event: &TicketEvent, mapping: &Mapping) -> Result<Grant, String> {
        let spec = mapping.render_grant(event).map_err(|e| e.to_string())?;
        Ok(self.new_grant_from(event, mapping, &spec))
    }

    fn new_grant_from(&self, event: &TicketEvent, mapping: &Mapping, spec: &GrantSpec) -> Grant {
        let mut g = Grant {
            id: Uuid::now_v7(),
            ticket: event.ticket_ref(),
            mapping: mapping.name().to_owned(),
            state: GrantState::Requested,
            subject: String::new(),
            target: String::new(),
            scope: String::new(),
            provider: String::new(),
            duration: SignedDuration::ZERO,
            requester: event.requester.clone(),
            approvers: Vec::new(),
            requested_at: self.clock.now(),
            approved_at: None,
            starts_at: None,
            expires_at: None,
            ended_at: None,
            revoke_cause: None,
            reason: None,
            last_event_at: event.occurred_at,
            context: {
                let mut ctx = stored_context(event);
                if let Some(obj) = ctx.as_object_mut() {
                    obj.insert(LAST_EVENT_DIGEST.into(), json!(event_digest(event)));
                }
                ctx
            },
            version: 0,
        };
        apply_spec(&mut g, spec);
        g
    }

    async fn transition(
        &self,
        grant: Grant,
        event: GrantEvent,
        input: TransitionInput,
    ) -> Result<Grant, ServiceError> {
        self.step_and_commit_simple(grant, event, input, None).await
    }

    async fn step_and_commit_simple(
        &self,
        grant: Grant,
        event: GrantEvent,
        input: TransitionInput,
        complete_job: Option<Uuid>,
    ) -> Result<Grant, ServiceError> {
        let expected = Some(grant.version);
        self.step_and_commit(grant, expected, event, input, Rows::default(), complete_job)
            .await
    }

    /// Applies one state-machine step to `grant` and commits it with its audit record, the
    /// provider job it implies and the writebacks its new state asks for.
    async fn step_and_commit(
        &self,
        mut grant: Grant,
        expected: Option<i64>,
        event: GrantEvent,
        input: TransitionInput,
        mut rows: Rows,
        complete_job: Option<Uuid>,
    ) -> Result<Grant, ServiceError> {
        let now = self.clock.now();
        let from = grant.state;
        let next = next_state(from, event, grant.revoke_cause)?;
        grant.state = next;
        if let Some(at) = input.occurred_at
            && at >= grant.last_event_at
        {
            grant.last_event_at = at;
            if let (Some(d), Some(ctx)) = (&input.digest, grant.context.as_object_mut()) {
                ctx.insert(LAST_EVENT_DIGEST.into(), json!(d));
            }
        }
        if let Some(r) = &input.reason {
            grant.reason = Some(r.clone());
        }
        match event {
            GrantEvent::Approve => {
                grant.approved_at = Some(now);
                // The deadline is fixed at approval: a slow apply shortens the grant, never extends it.
                grant.expires_at = now.checked_add(grant.duration).ok();
                rows.jobs
                    .push(provider_job(&grant, ProviderAction::Apply, now));
            }
            GrantEvent::ProviderApplied => grant.starts_at = Some(now),
            // The endpoint may have applied it after all (a lost answer): clean up with a revoke.
            GrantEvent::ProviderFailed => {
                rows.jobs
                    .push(provider_job(&grant, ProviderAction::Revoke, now))
            }
            GrantEvent::Deadline => {
                grant.revoke_cause = Some(RevokeCause::Deadline);
                rows.jobs
                    .push(provider_job(&grant, ProviderAction::Revoke, now));
            }
            GrantEvent::EndEarly | GrantEvent::Cancel if next == GrantState::Revoking => {
                grant.revoke_cause = Some(RevokeCause::Early);
                rows.jobs
                    .push(provider_job(&grant, ProviderAction::Revoke, now));
            }
            _ => {}
        }
        if next.is_terminal() {
            grant.ended_at = Some(now);
        }
        grant.version += 1;
        rows.audit.push(self.audit_for(&grant, &format!("grant.{next}"), input.actor.clone(), json!({
            "from": from, "to": next, "event": event, "reason": input.reason, "detail": input.detail,
        })));
        if let Some(mapping) = self.mappings.get(&grant.mapping) {
            rows.jobs
                .extend(self.writebacks(mapping, &grant, input.reason.as_deref()));
        }
        let saved = grant.clone();
        self.commit(grant, expected, rows, complete_job).await?;
        tracing::info!(grant = %saved.id, ticket = %saved.ticket.key, subject = %saved.subject, target = %saved.target,
            from = %from, to = %next, "grant transition");
        Ok(saved)
    }

    async fn commit(
        &self,
        grant: Grant,
        expected: Option<i64>,
        rows: Rows,
        complete_job: Option<Uuid>,
    ) -> Result<(), ServiceError> {
        let (has_provider, has_writeback) = rows.jobs.iter().fold((false, false), |(p, w), j| {
            (
                p || j.lane == crate::store::Lane::Provider,
                w || j.lane == crate::store::Lane::Writeback,
            )
        });
        let mut grant = grant;
        if expected.is_none() && grant.version == 0 {
            grant.version = 1;
        }
        self.store
            .commit(Commit {
                grant,
                expected_version: expected,
                audit: rows.audit,
                jobs: rows.jobs,
                complete_job,
            })
            .await?;
        crate::failpoint!(crate::failpoint::GRANT_COMMIT);
        if has_provider {
            self.wakers.provider.notify_one();
        }
        if has_writeback {
            self.wakers.writeback.notify_one();
        }
        Ok(())
    }

    fn audit_for(
        &self,
        grant: &Grant,
        kind: &str,
        actor: Option<String>,
        detail: serde_json::Value,
    ) -> NewAudit {
        NewAudit {
            at: self.clock.now(),
            kind: kind.to_owned(),
            grant_id: Some(grant.id),
            connector: Some(grant.ticket.connector.clone()),
            ticket_key: Some(grant.ticket.key.clone()),
            actor: actor.or_else(|| Some("system".into())),
            detail: json!({
                "state": grant.state, "subject": grant.subject, "target": grant.target, "scope": grant.scope,
                "provider": grant.provider, "expires_at": grant.expires_at, "info": detail,
            }),
        }
    }

    /// The writeback jobs the mapping asks for when `grant` enters its current state.
    fn writebacks(&self, mapping: &Mapping, grant: &Grant, reason: Option<&str>) -> Vec<NewJob> {
        let mut ctx = grant.context.clone();
        if let Some(obj) = ctx.as_object_mut() {
            obj.insert("grant".into(), json!({
                "id": grant.id.to_string(), "subject": grant.subject, "target": grant.target, "scope": grant.scope,
                "starts_at": grant.starts_at.map(|t| t.to_string()), "expires_at": grant.expires_at.map(|t| t.to_string()),
                "state": grant.state.as_str(), "provider": grant.provider, "duration": humantime::format_duration(grant.duration.unsigned_abs()).to_string(),
            }));
            obj.insert("reason".into(), json!(reason.unwrap_or_default()));
        }
        let texts = match mapping.render_writeback(grant.state, &ctx) {
            Ok(Some(t)) => t,
            Ok(None) => return Vec::new(),
            Err(e) => {
                tracing::error!(grant = %grant.id, mapping = mapping.name(), error = %e, "writeback template failed; no writeback for this state");
                return Vec::new();
            }
        };
        let now = self.clock.now();
        let mut jobs = Vec::new();
        if let Some(text) = texts.comment.filter(|t| !t.trim().is_empty()) {
            let wb = Writeback {
                ticket: grant.ticket.clone(),
                action: WritebackAction::Comment { text },
                marker: format!("jitbridge:{}:{}:comment", grant.id, grant.state),
            };
            jobs.push(writeback_job(&wb, now));
        }
        if let Some(name) = texts.status.filter(|t| !t.trim().is_empty()) {
            let wb = Writeback {
                ticket: grant.ticket.clone(),
                action: WritebackAction::Status { name },
                marker: format!("jitbridge:{}:{}:status", grant.id, grant.state),
            };
            jobs.push(writeback_job(&wb, now));
        }
        jobs
    }

    /// The apply window from config.
    pub fn apply_window(&self) -> SignedDuration {
        self.settings.apply_window
    }

    /// The moment after which a pending apply of `grant` is given up.
    pub fn apply_deadline(&self, grant: &Grant) -> Timestamp {
        let from = grant.approved_at.unwrap_or(grant.requested_at);
        let window_end = from
            .checked_add(self.settings.apply_window)
            .unwrap_or(Timestamp::MAX);
        // Never keep trying to apply a grant whose own deadline has passed.
        grant.expires_at.map_or(window_end, |e| e.min(window_end))
    }
}

/// Rows a transition writes besides the grant.
#[derive(Default)]
struct Rows {
    audit: Vec<NewAudit>,
    jobs: Vec<NewJob>,
}

/// What a caller knows about a transition.
struct TransitionInput {
    actor: Option<String>,
    reason: Option<String>,
    occurred_at: Option<Timestamp>,
    detail: serde_json::Value,
    /// Content digest of the ticket event that caused this transition, if one did.
    digest: Option<String>,
}

impl TransitionInput {
    fn system(reason: Option<String>, detail: serde_json::Value) -> Self {
        Self {
            actor: Some("system".into()),
            reason,
            occurred_at: None,
            digest: None,
            detail,
        }
    }

    fn by_event(event: &TicketEvent, reason: &str) -> Self {
        Self {
            actor: who(event.actor.as_ref()),
            reason: Some(reason.into()),
            occurred_at: Some(event.occurred_at),
            digest: Some(event_digest(event)),
            detail: json!({"event": event.kind.as_str()}),
        }
    }
}

/// Key in a grant's stored context holding the digest of the last ticket event applied.
const LAST_EVENT_DIGEST: &str = "_last_event_digest";

/// SHA-256 of the event's raw delivery (canonical JSON), to tell a replay from a new event that
/// happens to carry the same timestamp.
fn event_digest(event: &TicketEvent) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(
        serde_json::to_vec(&event.payload).unwrap_or_default(),
    ))
}

/// `confirmed` with any attribute it lacks taken from what the delivery said.
fn merge_person(delivered: Option<Person>, confirmed: &Person) -> Person {
    let d = delivered.unwrap_or_default();
    Person {
        id: confirmed.id.clone().or(d.id),
        email: confirmed.email.clone().or(d.email),
        name: confirmed.name.clone().or(d.name),
    }
}

fn apply_spec(g: &mut Grant, spec: &GrantSpec) {
    g.subject = spec.subject.clone();
    g.target = spec.target.clone();
    g.scope = spec.scope.clone();
    g.provider = spec.provider.clone();
    g.duration = spec.duration;
}

fn verdict_json(v: &Verdict) -> serde_json::Value {
    json!(
        v.checks
            .iter()
            .map(|c| json!({"rule": c.rule, "passed": c.passed, "detail": c.detail}))
            .collect::<Vec<_>>()
    )
}

/// Why the ITSM's own record does not back the approval the event claims, if it does not.
/// Pure: the webhook is a trigger, the API is the truth.
pub fn unconfirmed(
    mapping: &Mapping,
    event: &TicketEvent,
    confirmation: Option<&Confirmation>,
) -> Option<String> {
    let c = confirmation?;
    if let Some(approval) = &c.approval
        && approval.state != "approved"
    {
        return Some(format!(
            "the ticket's approval is {} in {}, not approved",
            approval.state, event.connector
        ));
    }
    if let Some(status) = &c.status
        && mapping.ends_or_denies_status(status)
    {
        return Some(format!(
            "the ticket's status is {status:?} in {}, which ends or refuses a grant",
            event.connector
        ));
    }
    if let Some(status) = &c.status
        && mapping.approves_by_status()
        && !mapping.approves_status(status)
    {
        return Some(format!(
            "the ticket's status is {status:?} in {}, which is not an approval status",
            event.connector
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::mapping::Known;
    use crate::ticket::{Approval, EventKind, Ticket};

    fn mappings(on_approve: &str) -> MappingSet {
        let text = format!(
            r#"
[[mapping]]
name = "m"
connector = "c"
when = 'true'
[mapping.grant]
subject = "s@example.com"
target = "WS-1"
scope = "local-admin"
duration = "1h"
max_duration = "4h"
provider = "p"
[mapping.on]
approve = {on_approve}
deny = {{ status = ["Declined"] }}
revoke = {{ status = ["Done", "Cancelled"] }}
"#
        );
        let known = Known {
            connectors: vec!["c".into()],
            providers: vec!["p".into()],
        };
        MappingSet::from_files(&[(PathBuf::from("m.toml"), text)], &known)
            .expect("test mapping loads")
    }

    fn event() -> TicketEvent {
        TicketEvent {
            connector: "c".into(),
            kind: EventKind::Approved,
            ticket: Ticket {
                id: "1".into(),
                key: "T-1".into(),
                ..Default::default()
            },
            requester: None,
            actor: None,
            approval: None,
            status_change: None,
            occurred_at: Timestamp::UNIX_EPOCH,
            fields: json!({}),
            payload: json!({}),
        }
    }

    fn confirmed(status: Option<&str>, approval: Option<&str>) -> Confirmation {
        Confirmation {
            status: status.map(str::to_owned),
            approval: approval.map(|s| Approval {
                state: s.into(),
                ..Default::default()
            }),
            requester: None,
            fields: None,
        }
    }

    #[test]
    fn the_api_record_decides_whether_an_approval_stands() {
        let by_status = mappings(r#"{ status = ["Approved"] }"#);
        let by_event = mappings(r#"{ event = ["approved"] }"#);
        let cases: &[(&MappingSet, Option<&str>, Option<&str>, bool, &str)] = &[
            (
                &by_status,
                Some("Approved"),
                Some("approved"),
                true,
                "status and approval agree",
            ),
            (
                &by_status,
                Some("approved"),
                None,
                true,
                "status names compare case-insensitively",
            ),
            (
                &by_status,
                Some("Approved"),
                Some("pending"),
                false,
                "approval still pending",
            ),
            (
                &by_status,
                Some("Approved"),
                Some("rejected"),
                false,
                "approval rejected",
            ),
            (
                &by_status,
                Some("Waiting for approval"),
                None,
                false,
                "status is not an approval status",
            ),
            (
                &by_status,
                Some("Done"),
                Some("approved"),
                false,
                "ticket already finished",
            ),
            (
                &by_event,
                Some("In Progress"),
                Some("approved"),
                true,
                "event rule: any open status",
            ),
            (
                &by_event,
                Some("Cancelled"),
                Some("approved"),
                false,
                "event rule: finished ticket never grants",
            ),
            (
                &by_event,
                Some("Declined"),
                Some("approved"),
                false,
                "event rule: declined ticket never grants",
            ),
            (
                &by_event,
                None,
                Some("unknown"),
                false,
                "unknown approval words never approve",
            ),
        ];
        for (set, status, approval, stands, why) in cases {
            let m = set.get("m").expect("mapping");
            let verdict = unconfirmed(m, &event(), Some(&confirmed(*status, *approval)));
            assert_eq!(verdict.is_none(), *stands, "{why}: {verdict:?}");
        }
    }

    #[test]
    fn without_confirmation_the_delivery_stands_alone() {
        let set = mappings(r#"{ status = ["Approved"] }"#);
        assert_eq!(
            unconfirmed(set.get("m").expect("mapping"), &event(), None),
            None
        );
    }

    #[test]
    fn replay_digest_changes_with_the_delivery_content() {
        let a = event();
        let mut b = event();
        b.payload = json!({"user": "someone else"});
        assert_eq!(event_digest(&a), event_digest(&event()));
        assert_ne!(event_digest(&a), event_digest(&b));
    }
}
