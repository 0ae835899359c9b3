//! The grant service: the only code that changes grants. It turns an evaluated ticket event
//! into a decision (confirming approvals with the ITSM and checking policy), and worker results
//! (provider applied, deadline passed, revoke confirmed) into transitions. Each transition is
//! committed as one [`Commit`]: the new grant row, its audit records and its outbox jobs.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use tokio::sync::Notify;
use uuid::Uuid;

use super::lifetime::{self, Renewal};
use super::{Grant, GrantEvent, GrantState, InvalidTransition, RevokeCause, next_state};
use crate::audit::NewAudit;
use crate::clock::SharedClock;
use crate::config::live::{LiveConnectors, LiveMappings};
use crate::connectors::{Confirmation, ConnectorError, Writeback, WritebackAction};
use crate::mapping::{GrantSpec, Mapping, Note, Trigger, stored_context, template_context};
use crate::outbox::{provider_job, writeback_job};
use crate::policy::auto::AutoApprove;
use crate::policy::{ApproverSource, Facts, PolicyInput, UnresolvedRevoke, Verdict};
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
    /// A second approval moved the active grant's deadline.
    Renewed(Uuid),
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
    mappings: LiveMappings,
    connectors: LiveConnectors,
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
        mappings: LiveMappings,
        connectors: LiveConnectors,
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
        // One snapshot for the whole event, so a reload cannot swap mappings mid-decision.
        let mappings = self.mappings.current();
        for evaluation in mappings.evaluate(event) {
            if evaluation.matched != Ok(true) {
                continue;
            }
            let Some(mapping) = mappings.get(&evaluation.mapping) else {
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
                    self.request_then_auto(event, mapping).await
                }
                Some(g)
                    if mapping.revokes_on_reassign()
                        && g.state.may_hold_privilege()
                        && reassignment(mapping, event, &g).is_some() =>
                {
                    let why = reassignment(mapping, event, &g).unwrap_or_default();
                    self.end_early(g, why, who(event.actor.as_ref()), Some(event))
                        .await
                        .map(|g| Outcome::Ending(g.id))
                }
                // The event that recorded the grant, delivered again (e.g. retried after the
                // ITSM could not be reached to confirm it): try the auto-approval again.
                Some(g)
                    if g.state == GrantState::Requested
                        && is_replay_of_last(&g, event)
                        && let Some(auto) = mapping.auto_approve() =>
                {
                    self.approve_as(event, mapping, Some(g), ApprovedBy::Mapping(auto))
                        .await
                }
                // An auto-approved grant has no approval to withdraw (the ITSM's may be pending).
                Some(g)
                    if mapping.revokes_on_withdrawn_approval()
                        && matches!(g.state, GrantState::Approved | GrantState::Active)
                        && g.context.get(AUTO_APPROVED).is_none()
                        && (event.status_change.is_some() || event.approval.is_some()) =>
                {
                    self.check_withdrawn(event, mapping, g).await
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
        let spec = mapping.render_grant(event).map_err(|e| e.to_string());
        let mut grant = match &spec {
            Ok(spec) => self.new_grant_from(event, mapping, spec),
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
        let Ok(spec) = spec else {
            return Ok(Outcome::Ignored(
                "unreachable: the grant was rendered".into(),
            ));
        };
        let scope = mapping.policy().resolve_scope(&spec.scope).ok();
        if let Some(def) = &scope {
            store_scope_definition(&mut grant, def);
        }
        let blockers = self.check_before_approval(event, mapping, &spec).await?;
        let summary = mapping.request_summary(&spec, &blockers);
        let mut rows = Rows::default();
        rows.audit.push(self.audit_for(
            &grant,
            "grant.requested",
            who(event.actor.as_ref()),
            json!({
                "event": event.kind.as_str(), "subject": grant.subject, "target": grant.target,
                "scope": grant.scope, "duration_secs": grant.duration.as_secs(),
                "blocked_by": verdict_json(&blockers).as_array().map(|a| a.iter().filter(|c| c["passed"] == false).cloned().collect::<Vec<_>>()),
            }),
        ));
        rows.jobs
            .extend(self.writebacks_with(mapping, &grant, None, Some(&summary)));
        let id = grant.id;
        self.commit(grant, None, rows, None).await?;
        Ok(Outcome::Requested(id))
    }

    /// The [`Facts`] policy needs now: the clock, and live-grant counts when a limit is set.
    async fn facts(
        &self,
        mapping: &Mapping,
        spec: &GrantSpec,
        approvers_from: ApproverSource,
    ) -> Result<Facts, ServiceError> {
        let live = if mapping.policy().needs_live_counts() {
            Some(
                self.store
                    .count_live_grants(&spec.subject, &spec.target)
                    .await?,
            )
        } else {
            None
        };
        // Always asked: a grant that could not be revoked blocks its subject and its target.
        let unresolved_revoke = self
            .store
            .unresolved_revoke(&spec.subject, &spec.target)
            .await?
            .map(|g| UnresolvedRevoke {
                grant: g.id,
                ticket_key: g.ticket.key,
                subject: g.subject,
                target: g.target,
            });
        Ok(Facts {
            now: self.clock.now(),
            live_for_subject: live.map(|c| c.by_subject),
            live_for_target: live.map(|c| c.by_target),
            approvers_from,
            unresolved_revoke,
        })
    }

    /// The policy rules that can be judged before anyone approved (for the summary comment).
    async fn check_before_approval(
        &self,
        event: &TicketEvent,
        mapping: &Mapping,
        spec: &GrantSpec,
    ) -> Result<Verdict, ServiceError> {
        let facts = self.facts(mapping, spec, ApproverSource::Confirmed).await?;
        let input = PolicyInput {
            requester: event.requester.as_ref(),
            approvers: &[],
            subject: &spec.subject,
            target: &spec.target,
            scope: &spec.scope,
            duration: spec.duration,
        };
        Ok(mapping.check_before_approval(event, &input, &facts))
    }

    /// The approval path: confirm with the ITSM, check policy, then approve or deny.
    async fn approve(
        &self,
        event: &TicketEvent,
        mapping: &Mapping,
        live: Option<Grant>,
    ) -> Result<Outcome, ServiceError> {
        self.approve_as(event, mapping, live, ApprovedBy::Person)
            .await
    }

    /// [`Self::approve`] by a person or by the mapping's auto-approval. A person's approval of
    /// an active grant is a renewal; an auto-approval only ever approves a `requested` grant.
    async fn approve_as(
        &self,
        event: &TicketEvent,
        mapping: &Mapping,
        live: Option<Grant>,
        kind: ApprovedBy<'_>,
    ) -> Result<Outcome, ServiceError> {
        let renewing = matches!(kind, ApprovedBy::Person)
            && live.as_ref().is_some_and(|g| g.state == GrantState::Active);
        if let Some(g) = &live
            && g.state != GrantState::Requested
            && !renewing
        {
            return self
                .ignore(event, mapping, Some(g), &format!("already {}", g.state))
                .await;
        }
        // The approval that granted (or last renewed) must not renew again when replayed.
        if let Some(g) = live.as_ref().filter(|_| renewing)
            && is_replay_of_last(g, event)
        {
            return self
                .ignore(
                    event,
                    mapping,
                    Some(g),
                    "replay of the approval already applied to this grant",
                )
                .await;
        }
        let confirmation = self.confirm(event).await?;
        let refused = match kind {
            ApprovedBy::Person => unconfirmed(mapping, event, confirmation.as_ref()),
            ApprovedBy::Mapping(_) => ended_in_itsm(mapping, event, confirmation.as_ref()),
        };
        if let Some(why) = refused {
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
                if let ApprovedBy::Mapping(_) = kind {
                    // A person may still approve once the ticket is fixed.
                    let id = live.as_ref().map(|g| g.id);
                    let why = format!("the ticket cannot be turned into a grant: {why}");
                    return self.auto_skipped(event, mapping, id, &why, None).await;
                }
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

        let mut spec = spec;
        let mut auto_grant = None;
        if let ApprovedBy::Mapping(auto) = kind {
            let grant_id = live.as_ref().map(|g| g.id);
            match auto.decide(&template_context(event), &spec.scope, spec.duration) {
                Ok(a) => {
                    spec.duration = a.duration;
                    spec.capped |= a.capped;
                    auto_grant = Some(a);
                }
                Err(why) => {
                    return self
                        .auto_skipped(event, mapping, grant_id, &why, None)
                        .await;
                }
            }
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
            // Nobody approved: approver rules are dropped from the verdict below.
            _ if auto_grant.is_some() => (Vec::new(), ApproverSource::Confirmed),
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

        // A renewal keeps the grant it renews: it never changes who, where or what.
        if renewing
            && let Some(g) = &live
            && (g.subject != spec.subject || g.target != spec.target || g.scope != spec.scope)
        {
            let why = format!(
                "not renewed: the ticket now describes a different grant ({} on {} as {}); \
                 end this one and raise a new request",
                spec.subject, spec.target, spec.scope
            );
            return self.ignore(event, mapping, Some(g), &why).await;
        }
        let mut grant = match live {
            Some(g) => g,
            None => self.new_grant_from(event, mapping, &spec),
        };
        let expected = (grant.version > 0).then_some(grant.version);
        if !renewing {
            apply_spec(&mut grant, &spec);
            grant.requester = requester.clone();
            grant.approvers = approvers.clone();
        }
        if let (Some(_), Some(ctx)) = (auto_grant, grant.context.as_object_mut()) {
            ctx.insert(AUTO_APPROVED.into(), json!(true));
        }

        let mut facts = self.facts(mapping, &spec, approvers_from).await?;
        // A renewed grant is live already: it does not count against its own renewal.
        let own = u64::from(renewing);
        facts.live_for_subject = facts.live_for_subject.map(|n| n.saturating_sub(own));
        facts.live_for_target = facts.live_for_target.map(|n| n.saturating_sub(own));
        let verdict = mapping.check_policy_at(
            event,
            &PolicyInput {
                requester: requester.as_ref(),
                approvers: &approvers,
                subject: &spec.subject,
                target: &spec.target,
                scope: &spec.scope,
                duration: spec.duration,
            },
            &facts,
        );
        let verdict = match auto_grant {
            Some(_) => crate::policy::auto::without_approver_rules(verdict),
            None => verdict,
        };
        if !verdict.allowed() {
            let reason = verdict
                .refusal()
                .unwrap_or_else(|| "refused by policy".into());
            if auto_grant.is_some() {
                // A person may still approve it (e.g. later, inside the allowed hours).
                return self
                    .auto_skipped(event, mapping, Some(grant.id), &reason, Some(&verdict))
                    .await;
            }
            if renewing {
                let why = format!("renewal refused: {reason}");
                return self.ignore(event, mapping, Some(&grant), &why).await;
            }
            return self
                .deny(event, mapping, grant, reason, Some(&verdict))
                .await;
        }
        if renewing {
            return self
                .renew(event, mapping, grant, &spec, &approvers, &verdict)
                .await;
        }

        // The definition applied is the one in force at approval; revokes reuse it.
        if let Ok(def) = mapping.policy().resolve_scope(&spec.scope) {
            store_scope_definition(&mut grant, &def);
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
        let auto_detail = match kind {
            ApprovedBy::Mapping(auto) => json!({
                "mapping": mapping.name(), "condition": auto.condition_source(),
                "max_duration_secs": auto.max_duration().as_secs(),
            }),
            ApprovedBy::Person => serde_json::Value::Null,
        };
        let input = TransitionInput {
            actor: match kind {
                ApprovedBy::Mapping(_) => Some(AUTO_APPROVER.into()),
                ApprovedBy::Person => who(approvers.first()),
            },
            reason: auto_grant.map(|_| {
                format!(
                    "auto-approved by mapping {} (condition {})",
                    mapping.name(),
                    auto_detail["condition"].as_str().unwrap_or_default()
                )
            }),
            occurred_at: Some(event.occurred_at),
            digest: Some(event_digest(event)),
            detail: json!({
                "approvers": approvers, "requester": requester, "confirmed": confirmation,
                "policy": verdict_json(&verdict), "requested_duration_secs": spec.requested.as_secs(), "capped": spec.capped,
                "auto_approved": auto_detail,
            }),
            note: auto_grant.map(|_| (Note::AutoApproved, json!({"auto_approve": {
                "mapping": mapping.name(), "condition": auto_detail["condition"],
                "max_duration": auto_detail["max_duration_secs"].as_i64().map(|s| humantime::format_duration(std::time::Duration::from_secs(s.unsigned_abs())).to_string()),
            }}))),
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
            note: None,
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
                    note: None,
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
                    note: None,
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
        let input = deadline_input(&grant);
        self.step_and_commit_simple(grant, GrantEvent::Deadline, input, None)
            .await
    }

    /// The deadlines of many due grants, committed together (one durable write for the batch,
    /// so a burst of expiries is not paced by the disk's fsync). One result per grant, in order.
    pub async fn deadlines(&self, grants: Vec<Grant>) -> Vec<Result<Grant, ServiceError>> {
        let steps = grants
            .into_iter()
            .map(|g| {
                let input = deadline_input(&g);
                (g, GrantEvent::Deadline, input, None)
            })
            .collect();
        self.step_and_commit_many(steps).await
    }

    /// The provider confirmed the revoke: the grant has ended.
    pub async fn revoke_succeeded(&self, grant: Grant, job: Uuid) -> Result<Grant, ServiceError> {
        let mut results = self.revokes_succeeded(vec![(grant, job)]).await;
        results.pop().unwrap_or_else(|| {
            Err(ServiceError::Store(StoreError::Unavailable(
                "the batch commit answered nothing".into(),
            )))
        })
    }

    /// Many confirmed revokes (each with the provider job that did it), committed together.
    /// One result per grant, in order.
    pub async fn revokes_succeeded(
        &self,
        done: Vec<(Grant, Uuid)>,
    ) -> Vec<Result<Grant, ServiceError>> {
        let now = self.clock.now();
        let mut lateness = Vec::with_capacity(done.len());
        let steps = done
            .into_iter()
            .map(|(grant, job)| {
                let late = grant.expires_at.map(|e| now.duration_since(e));
                lateness.push(late.filter(|_| grant.revoke_cause == Some(RevokeCause::Deadline)));
                let input = TransitionInput::system(
                    grant.reason.clone(),
                    json!({"provider": grant.provider, "lateness_ms": late.map(|l| l.as_millis())}),
                );
                (grant, GrantEvent::RevokeSucceeded, input, Some(job))
            })
            .collect();
        let results = self.step_and_commit_many(steps).await;
        for (result, late) in results.iter().zip(lateness) {
            if let (Ok(_), Some(l)) = (result, late) {
                metrics::histogram!("jitbridge_expiry_lateness_seconds")
                    .record(l.as_secs_f64().max(0.0));
            }
        }
        results
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
                mapping.annotate(&mut ctx);
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
        grant: Grant,
        expected: Option<i64>,
        event: GrantEvent,
        input: TransitionInput,
        rows: Rows,
        complete_job: Option<Uuid>,
    ) -> Result<Grant, ServiceError> {
        let from = grant.state;
        let (grant, rows) = self.step(grant, event, input, rows)?;
        let saved = grant.clone();
        self.commit(grant, expected, rows, complete_job).await?;
        log_transition(&saved, from);
        Ok(saved)
    }

    /// Applies many system steps (each `(grant, event, input, job it completes)`) and commits
    /// them with one [`Store::commit_many`]: one durable write for the batch instead of one per
    /// grant. One result per step, in order; a step that fails does not hold back the others.
    async fn step_and_commit_many(
        &self,
        steps: Vec<(Grant, GrantEvent, TransitionInput, Option<Uuid>)>,
    ) -> Vec<Result<Grant, ServiceError>> {
        let mut results: Vec<Result<Grant, ServiceError>> = Vec::with_capacity(steps.len());
        let mut commits = Vec::new();
        let mut committed = Vec::new(); // (index in results, state before)
        for (grant, event, input, complete_job) in steps {
            let (from, expected) = (grant.state, Some(grant.version));
            match self.step(grant, event, input, Rows::default()) {
                Ok((grant, rows)) => {
                    committed.push((results.len(), from));
                    results.push(Ok(grant.clone()));
                    commits.push(Commit {
                        grant,
                        expected_version: expected,
                        audit: rows.audit,
                        jobs: rows.jobs,
                        complete_job,
                    });
                }
                Err(e) => results.push(Err(e)),
            }
        }
        let (has_provider, has_writeback) = lanes_of(commits.iter().flat_map(|c| &c.jobs));
        let outcomes = self.store.commit_many(commits).await;
        if outcomes.iter().any(Result::is_ok) {
            crate::failpoint!(crate::failpoint::GRANT_COMMIT);
        }
        let mut any_ok = false;
        for ((index, from), outcome) in committed.into_iter().zip(outcomes) {
            match (outcome, &results[index]) {
                (Ok(()), Ok(saved)) => {
                    any_ok = true;
                    log_transition(saved, from);
                }
                (Err(e), _) => results[index] = Err(e.into()),
                (Ok(()), Err(_)) => {}
            }
        }
        if any_ok && has_provider {
            self.wakers.provider.notify_one();
        }
        if any_ok && has_writeback {
            self.wakers.writeback.notify_one();
        }
        results
    }

    /// One state-machine step of `grant` (no I/O): the grant as it becomes and the rows its
    /// commit writes (audit record, provider job, writebacks).
    fn step(
        &self,
        mut grant: Grant,
        event: GrantEvent,
        input: TransitionInput,
        mut rows: Rows,
    ) -> Result<(Grant, Rows), ServiceError> {
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
        if let Some(mapping) = self.mappings.current().get(&grant.mapping) {
            rows.jobs
                .extend(self.writebacks(mapping, &grant, input.reason.as_deref()));
            if let Some((note, extra)) = &input.note {
                rows.jobs
                    .extend(self.note_writeback(mapping, &grant, *note, extra));
            }
        }
        Ok((grant, rows))
    }

    async fn commit(
        &self,
        grant: Grant,
        expected: Option<i64>,
        rows: Rows,
        complete_job: Option<Uuid>,
    ) -> Result<(), ServiceError> {
        let (has_provider, has_writeback) = lanes_of(&rows.jobs);
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
        self.writebacks_with(mapping, grant, reason, None)
    }

    /// [`Self::writebacks`], with the request's `summary` for templates (`{{ summary }}`): when
    /// the mapping has no writeback for the state, the summary itself is the comment.
    fn writebacks_with(
        &self,
        mapping: &Mapping,
        grant: &Grant,
        reason: Option<&str>,
        summary: Option<&str>,
    ) -> Vec<NewJob> {
        let ctx = grant_writeback_context(grant, reason);
        let texts = match mapping.render_writeback_with_summary(grant.state, &ctx, summary) {
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

    /// The comment job for `note` (auto-approval, renewal), rendered with the writeback names
    /// plus `extra`. Its marker is unique per grant, note and deadline, so a renewal to a new
    /// deadline is a new comment and a retried job is recognized.
    fn note_writeback(
        &self,
        mapping: &Mapping,
        grant: &Grant,
        note: Note,
        extra: &serde_json::Value,
    ) -> Option<NewJob> {
        let mut ctx = grant_writeback_context(grant, None);
        if let (Some(obj), Some(more)) = (ctx.as_object_mut(), extra.as_object()) {
            obj.extend(more.clone());
        }
        let text = match mapping.render_note(note, &ctx) {
            Ok(t) => t?,
            Err(e) => {
                tracing::error!(grant = %grant.id, mapping = mapping.name(), error = %e, "writeback template failed; no comment for this note");
                return None;
            }
        };
        let deadline = grant
            .expires_at
            .map(|t| t.as_millisecond())
            .unwrap_or_default();
        let wb = Writeback {
            ticket: grant.ticket.clone(),
            action: WritebackAction::Comment { text },
            marker: format!(
                "jitbridge:{}:{}:{deadline}:comment",
                grant.id,
                note.as_str()
            ),
        };
        Some(writeback_job(&wb, self.clock.now()))
    }

    /// Records a new grant for this event and, when the mapping auto-approves and this request
    /// qualifies, approves it at once.
    async fn request_then_auto(
        &self,
        event: &TicketEvent,
        mapping: &Mapping,
    ) -> Result<Outcome, ServiceError> {
        let outcome = self.request(event, mapping).await?;
        let (Outcome::Requested(id), Some(auto)) = (&outcome, mapping.auto_approve()) else {
            return Ok(outcome);
        };
        if mapping.is_reopen(event) {
            // The first event seen of a ticket may be its reopening (raised before jitbridge
            // watched it): a reopen is never an approval, not even an automatic one.
            return self
                .auto_skipped(
                    event,
                    mapping,
                    Some(*id),
                    "a reopened ticket is never auto-approved; a person must approve it",
                    None,
                )
                .await;
        }
        let Some(grant) = self.store.get_grant(*id).await? else {
            return Ok(outcome);
        };
        self.approve_as(event, mapping, Some(grant), ApprovedBy::Mapping(auto))
            .await
    }

    /// An auto-approval did not apply: the grant keeps waiting for a person; the audit says why.
    async fn auto_skipped(
        &self,
        event: &TicketEvent,
        mapping: &Mapping,
        grant_id: Option<Uuid>,
        why: &str,
        verdict: Option<&Verdict>,
    ) -> Result<Outcome, ServiceError> {
        self.store
            .append_audit(vec![NewAudit {
                at: self.clock.now(),
                kind: "auto_approve.skipped".into(),
                grant_id,
                connector: Some(event.connector.clone()),
                ticket_key: Some(event.ticket.key.clone()),
                actor: Some(AUTO_APPROVER.into()),
                detail: json!({"mapping": mapping.name(), "why": why, "policy": verdict.map(verdict_json)}),
            }])
            .await?;
        tracing::info!(connector = %event.connector, ticket = %event.ticket.key, mapping = mapping.name(), why, "not auto-approved; waiting for a person");
        Ok(match grant_id {
            Some(id) => Outcome::Requested(id),
            None => Outcome::Ignored(why.to_owned()),
        })
    }

    /// A person approved an active grant again: move its deadline, capped at `max_duration`
    /// from the first approval ([`lifetime::renew`]), audited as `grant.renewed`.
    async fn renew(
        &self,
        event: &TicketEvent,
        mapping: &Mapping,
        mut grant: Grant,
        spec: &GrantSpec,
        approvers: &[Person],
        verdict: &Verdict,
    ) -> Result<Outcome, ServiceError> {
        let now = self.clock.now();
        let (Some(approved_at), Some(expires_at)) = (grant.approved_at, grant.expires_at) else {
            return self
                .ignore(
                    event,
                    mapping,
                    Some(&grant),
                    "not renewed: the grant has no deadline",
                )
                .await;
        };
        let max = mapping.max_duration();
        let (new_expires, duration, capped) =
            match lifetime::renew(approved_at, expires_at, now, spec.duration, max) {
                Renewal::Extend {
                    expires_at,
                    duration,
                    capped,
                } => (expires_at, duration, capped),
                Renewal::Unchanged { cap } => {
                    let why = format!(
                        "not renewed: the grant already ends at {expires_at}, and it may last at \
                         most until {cap} ({max:#} from its first approval)"
                    );
                    return self.ignore(event, mapping, Some(&grant), &why).await;
                }
            };
        let approver = who(approvers.first()).or_else(|| who(event.actor.as_ref()));
        let expected = Some(grant.version);
        grant.expires_at = Some(new_expires);
        grant.duration = duration;
        for p in approvers {
            if !grant.approvers.iter().any(|a| a.same_identity(p)) {
                grant.approvers.push(p.clone());
            }
        }
        let mut rows = Rows::default();
        rows.audit.push(self.audit_for(
            &grant,
            "grant.renewed",
            approver.clone(),
            json!({
                "previous_expires_at": expires_at, "expires_at": new_expires, "capped": capped,
                "max_duration_secs": max.as_secs(), "requested_duration_secs": spec.duration.as_secs(),
                "approvers": approvers, "policy": verdict_json(verdict),
            }),
        ));
        let extra = json!({"renewal": {
            "approver": approver.clone().unwrap_or_else(|| "an approver".into()), "capped": capped,
            "max_duration": humantime::format_duration(max.unsigned_abs()).to_string(),
        }});
        rows.jobs
            .extend(self.note_writeback(mapping, &grant, Note::Renewed, &extra));
        if event.occurred_at >= grant.last_event_at {
            grant.last_event_at = event.occurred_at;
            if let Some(ctx) = grant.context.as_object_mut() {
                ctx.insert(LAST_EVENT_DIGEST.into(), json!(event_digest(event)));
            }
        }
        // The state machine allows this step (active -> active) only for an active grant.
        next_state(grant.state, GrantEvent::Renew, None)?;
        grant.version += 1;
        let id = grant.id;
        self.commit(grant, expected, rows, None).await?;
        // The scheduler may be sleeping towards the old deadline.
        self.wakers.scheduler.notify_one();
        metrics::counter!("jitbridge_grants_renewed_total", "connector" => event.connector.clone())
            .increment(1);
        tracing::info!(grant = %id, ticket = %event.ticket.key, expires_at = %new_expires, capped, "grant renewed");
        Ok(Outcome::Renewed(id))
    }

    /// An event without a trigger for a grant that may hold its privilege: when the mapping
    /// revokes on a withdrawn approval, ask the ITSM whether the approval still stands.
    async fn check_withdrawn(
        &self,
        event: &TicketEvent,
        mapping: &Mapping,
        grant: Grant,
    ) -> Result<Outcome, ServiceError> {
        let confirmation = self.confirm(event).await?;
        let approval = match &confirmation {
            Some(c) => c.approval.as_ref(),
            // No API confirmation: only the delivery can tell.
            None => event.approval.as_ref(),
        };
        match lifetime::withdrawn(approval) {
            Some(why) => self
                .end_early(grant, why, who(event.actor.as_ref()), Some(event))
                .await
                .map(|g| Outcome::Ending(g.id)),
            None => {
                self.ignore(
                    event,
                    mapping,
                    Some(&grant),
                    "no trigger; the approval still stands",
                )
                .await
            }
        }
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

/// Who approves a grant: a person in the ITSM, or the mapping's `[mapping.auto_approve]`.
#[derive(Clone, Copy)]
enum ApprovedBy<'a> {
    Person,
    Mapping(&'a AutoApprove),
}

/// The actor recorded for an auto-approval.
const AUTO_APPROVER: &str = "jitbridge (auto-approval)";

/// True when `event` is the very event last applied to `grant` (same instant, same content).
fn is_replay_of_last(grant: &Grant, event: &TicketEvent) -> bool {
    event.occurred_at == grant.last_event_at
        && grant
            .context
            .get(LAST_EVENT_DIGEST)
            .and_then(|d| d.as_str())
            .is_none_or(|d| d == event_digest(event))
}

/// The names writeback templates see: the stored ticket context plus `grant` and `reason`.
fn grant_writeback_context(grant: &Grant, reason: Option<&str>) -> serde_json::Value {
    let mut ctx = grant.context.clone();
    if let Some(obj) = ctx.as_object_mut() {
        obj.insert("grant".into(), json!({
            "id": grant.id.to_string(), "subject": grant.subject, "target": grant.target, "scope": grant.scope,
            "starts_at": grant.starts_at.map(|t| t.to_string()), "expires_at": grant.expires_at.map(|t| t.to_string()),
            "state": grant.state.as_str(), "provider": grant.provider, "duration": humantime::format_duration(grant.duration.unsigned_abs()).to_string(),
            "scope_definition": crate::providers::scope_definition(grant),
        }));
        obj.insert("reason".into(), json!(reason.unwrap_or_default()));
    }
    ctx
}

/// Rows a transition writes besides the grant.
#[derive(Default)]
struct Rows {
    audit: Vec<NewAudit>,
    jobs: Vec<NewJob>,
}

/// What the audit says about a deadline revoke.
fn deadline_input(grant: &Grant) -> TransitionInput {
    TransitionInput::system(
        Some("the granted time is over".into()),
        json!({"expires_at": grant.expires_at}),
    )
}

/// Whether `jobs` hold provider and writeback work (which workers to wake).
fn lanes_of<'a>(jobs: impl IntoIterator<Item = &'a NewJob>) -> (bool, bool) {
    jobs.into_iter().fold((false, false), |(p, w), j| {
        (
            p || j.lane == crate::store::Lane::Provider,
            w || j.lane == crate::store::Lane::Writeback,
        )
    })
}

/// Logs a committed transition.
fn log_transition(saved: &Grant, from: GrantState) {
    tracing::info!(grant = %saved.id, ticket = %saved.ticket.key, subject = %saved.subject, target = %saved.target,
        from = %from, to = %saved.state, "grant transition");
}

/// What a caller knows about a transition.
struct TransitionInput {
    actor: Option<String>,
    reason: Option<String>,
    occurred_at: Option<Timestamp>,
    detail: serde_json::Value,
    /// Content digest of the ticket event that caused this transition, if one did.
    digest: Option<String>,
    /// A comment that is not tied to the new state (auto-approval), with its extra names.
    note: Option<(Note, serde_json::Value)>,
}

impl TransitionInput {
    fn system(reason: Option<String>, detail: serde_json::Value) -> Self {
        Self {
            actor: Some("system".into()),
            reason,
            occurred_at: None,
            digest: None,
            detail,
            note: None,
        }
    }

    fn by_event(event: &TicketEvent, reason: &str) -> Self {
        Self {
            actor: who(event.actor.as_ref()),
            reason: Some(reason.into()),
            occurred_at: Some(event.occurred_at),
            digest: Some(event_digest(event)),
            detail: json!({"event": event.kind.as_str()}),
            note: None,
        }
    }
}

/// Why `grant` must end because `event` renders another subject, if it must. A ticket that can
/// no longer be rendered at all does not count as reassigned (the status rules decide).
fn reassignment(mapping: &Mapping, event: &TicketEvent, grant: &Grant) -> Option<String> {
    let spec = mapping.render_grant(event).ok()?;
    lifetime::reassigned(&grant.subject, &spec.subject)
}

/// Key in a grant's stored context marking a grant the mapping auto-approved.
const AUTO_APPROVED: &str = "_auto_approved";

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

/// Keeps the resolved scope definition with the grant (in its stored context), so the revoke
/// carries the definition that was applied even after the allow-list changed.
fn store_scope_definition(g: &mut Grant, def: &crate::policy::scope::ScopeDefinition) {
    if let Some(obj) = g.context.as_object_mut() {
        obj.insert(
            crate::providers::SCOPE_DEFINITION_KEY.into(),
            serde_json::to_value(def).unwrap_or_default(),
        );
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

/// Why a ticket cannot be auto-approved because the ITSM reports it already ended or refused.
/// (No approval is expected: nobody approved an auto-approved ticket.)
pub fn ended_in_itsm(
    mapping: &Mapping,
    event: &TicketEvent,
    confirmation: Option<&Confirmation>,
) -> Option<String> {
    let status = confirmation?.status.as_ref()?;
    mapping.ends_or_denies_status(status).then(|| {
        format!(
            "the ticket's status is {status:?} in {}, which ends or refuses a grant",
            event.connector
        )
    })
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
    use crate::mapping::{Known, MappingSet};
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
            ..Default::default()
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
        /// Mappings, the API's approval state, its status, whether it stands, and why.
        type Case<'a> = (
            &'a MappingSet,
            Option<&'a str>,
            Option<&'a str>,
            bool,
            &'a str,
        );
        let cases: &[Case] = &[
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
