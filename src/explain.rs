//! `jitbridge explain`: a dry run of one delivery through the same parser, mappings and policy
//! the daemon uses. It shows the normalized events, every mapping considered (its `when`
//! expression and value, and why it did or did not match), for a match the trigger, the rendered
//! grant, each policy check, the decision and the writebacks that would be made.
//! Pure: nothing is read from an ITSM, written to the store, or sent to a provider; the instant
//! policy `hours` are evaluated at is given by the caller.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::json;

use crate::connectors::{RawDelivery, Registered};
use crate::grants::GrantState;
use crate::mapping::{GrantSpec, Mapping, MappingSet, Trigger, template_context};
use crate::policy::{ApproverSource, Facts, PolicyInput, Verdict};
use crate::ticket::TicketEvent;

/// What a dry run assumes and cannot check; printed once with every explanation.
pub const ASSUMPTIONS: &str = "dry run: assumes the ITSM confirms the approvers named in the delivery (the daemon checks that first) and that no other grant is live for the subject or target";

/// The whole explanation of one delivery. Serialized as the `--json` output: field names and
/// order are a stable interface for tooling.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The connector the delivery was parsed by.
    pub connector: String,
    /// The instant policy checks (`hours`) were evaluated at.
    pub at: Timestamp,
    /// What the dry run assumes.
    pub assumptions: &'static str,
    /// One entry per normalized event of the delivery.
    pub events: Vec<EventExplanation>,
}

/// One normalized event and what each mapping would do with it.
#[derive(Debug, Clone, Serialize)]
pub struct EventExplanation {
    /// The event exactly as the engine would see it.
    pub event: TicketEvent,
    /// Every mapping of the connector, in file order.
    pub mappings: Vec<MappingExplanation>,
}

/// One mapping's view of one event.
#[derive(Debug, Clone, Serialize)]
pub struct MappingExplanation {
    /// The mapping's name.
    pub mapping: String,
    /// The `when` expression as written.
    pub when: String,
    /// Its value: `true`, `false` or `error`.
    pub when_value: &'static str,
    /// True when `when` is true for this event.
    pub matched: bool,
    /// Why it did not match (the `when` value or its error).
    pub why_not: Option<String>,
    /// The `[mapping.on]` rule the event fires (`approve`, `deny`, `revoke`), if any.
    pub trigger: Option<Trigger>,
    /// The grant the mapping renders, duration already capped.
    pub grant: Option<GrantView>,
    /// Each policy check, in evaluation order (only for an approval).
    pub policy: Vec<PolicyCheck>,
    /// What the daemon would do, in words.
    pub decision: String,
    /// The ITSM call the daemon makes before granting, which a dry run does not make.
    pub confirmation: Option<String>,
    /// The ticket writebacks the decision would queue.
    pub writebacks: Vec<serde_json::Value>,
}

/// The rendered grant, as `explain` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct GrantView {
    pub subject: String,
    pub target: String,
    pub scope: String,
    pub provider: String,
    /// The duration that would be granted (`requested`, capped at `max_duration`).
    pub duration: String,
    /// What the ticket asked for.
    pub requested_duration: String,
    /// The mapping's cap.
    pub max_duration: String,
    /// True when the request was longer than the cap and was cut.
    pub capped_at_max_duration: bool,
}

/// One policy rule's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyCheck {
    pub rule: &'static str,
    pub passed: bool,
    /// The value compared and why it passed or failed.
    pub detail: String,
}

/// Explains `body` arriving on `connector`, evaluating time-dependent policy at `at`.
pub fn explain(
    connector: &Registered,
    mappings: &MappingSet,
    body: &[u8],
    at: Timestamp,
) -> Result<Explanation, String> {
    let events = connector
        .connector
        .parse(&RawDelivery {
            headers: Vec::new(),
            body: body.to_vec(),
        })
        .map_err(|e| e.to_string())?;
    let events = events
        .into_iter()
        .map(|event| explain_event(connector, mappings, event, at))
        .collect();
    Ok(Explanation {
        connector: connector.connector.id().to_owned(),
        at,
        assumptions: ASSUMPTIONS,
        events,
    })
}

fn explain_event(
    connector: &Registered,
    mappings: &MappingSet,
    event: TicketEvent,
    at: Timestamp,
) -> EventExplanation {
    let mut out = Vec::new();
    for ev in mappings.evaluate(&event) {
        let Some(mapping) = mappings.get(&ev.mapping) else {
            continue;
        };
        let (when_value, why_not) = match &ev.matched {
            Ok(true) => ("true", None),
            Ok(false) => ("false", Some("`when` is false for this ticket".to_owned())),
            // The error already names the mapping and says `when` could not be evaluated.
            Err(e) => ("error", Some(e.clone())),
        };
        let mut m = MappingExplanation {
            mapping: ev.mapping.clone(),
            when: mapping.when_source().to_owned(),
            when_value,
            matched: ev.matched == Ok(true),
            why_not,
            trigger: ev.trigger,
            grant: None,
            policy: Vec::new(),
            decision: "no match: nothing happens".into(),
            confirmation: None,
            writebacks: Vec::new(),
        };
        if m.matched {
            explain_match(connector, mapping, &event, ev.trigger, at, &mut m);
        }
        out.push(m);
    }
    EventExplanation {
        event,
        mappings: out,
    }
}

/// Fills in what a matching mapping would do: grant, policy, decision, writebacks.
fn explain_match(
    connector: &Registered,
    mapping: &Mapping,
    event: &TicketEvent,
    trigger: Option<Trigger>,
    at: Timestamp,
    m: &mut MappingExplanation,
) {
    let spec = match mapping.render_grant(event) {
        Ok(s) => s,
        Err(e) => {
            m.decision = format!("the grant cannot be described: {e}");
            return;
        }
    };
    m.grant = Some(grant_view(&spec, mapping));
    let (decision, state, reason) = match trigger {
        None => (
            "request: a grant would be recorded as requested, waiting for approval".to_owned(),
            GrantState::Requested,
            String::new(),
        ),
        Some(Trigger::Approve) => {
            if connector.confirm_approvals {
                m.confirmation = Some(format!(
                    "would confirm the approval with the {} API before deciding (not performed in a dry run)",
                    connector.connector.id()
                ));
            }
            let verdict = policy_at(mapping, event, &spec, at);
            m.policy = verdict
                .checks
                .iter()
                .map(|c| PolicyCheck {
                    rule: c.rule,
                    passed: c.passed,
                    detail: c.detail.clone(),
                })
                .collect();
            if verdict.allowed() {
                (
                    format!(
                        "approve: the grant would be applied through provider {}",
                        spec.provider
                    ),
                    GrantState::Approved,
                    String::new(),
                )
            } else {
                let r = verdict
                    .refusal()
                    .unwrap_or_else(|| "refused by policy".into());
                (format!("deny: {r}"), GrantState::Denied, r)
            }
        }
        Some(Trigger::Deny) => (
            "deny: the approver declined".to_owned(),
            GrantState::Denied,
            "declined in the ticket".to_owned(),
        ),
        Some(Trigger::Revoke) => (
            "end: a live grant would be revoked now (or cancelled if not yet approved)".to_owned(),
            GrantState::Revoking,
            format!(
                "the ticket reached status {}",
                event.ticket.status.clone().unwrap_or_default()
            ),
        ),
    };
    m.decision = decision;
    let mut ctx = template_context(event);
    if let Some(obj) = ctx.as_object_mut() {
        obj.insert(
            "grant".into(),
            json!({
                "id": "(assigned when stored)", "subject": spec.subject, "target": spec.target,
                "scope": spec.scope, "provider": spec.provider,
                "duration": format!("{:#}", spec.duration), "state": state.as_str(),
                "starts_at": "(when applied)", "expires_at": "(start + duration)",
            }),
        );
        obj.insert("reason".into(), json!(reason));
    }
    match mapping.render_writeback(state, &ctx) {
        Ok(Some(t)) => {
            if let Some(c) = t.comment {
                m.writebacks.push(json!({"comment": c}));
            }
            if let Some(s) = t.status {
                m.writebacks.push(json!({"status": s}));
            }
        }
        Ok(None) => {}
        Err(e) => m.writebacks.push(json!({"error": e.to_string()})),
    }
}

fn grant_view(spec: &GrantSpec, mapping: &Mapping) -> GrantView {
    GrantView {
        subject: spec.subject.clone(),
        target: spec.target.clone(),
        scope: spec.scope.clone(),
        provider: spec.provider.clone(),
        duration: format!("{:#}", spec.duration),
        requested_duration: format!("{:#}", spec.requested),
        max_duration: format!("{:#}", mapping.max_duration()),
        capped_at_max_duration: spec.capped,
    }
}

/// The policy verdict the engine would reach at `at`, with the delivery's actor as the approver.
fn policy_at(mapping: &Mapping, event: &TicketEvent, spec: &GrantSpec, at: Timestamp) -> Verdict {
    let approvers: Vec<_> = event.actor.iter().cloned().collect();
    mapping.check_policy_at(
        event,
        &PolicyInput {
            requester: event.requester.as_ref(),
            approvers: &approvers,
            subject: &spec.subject,
            target: &spec.target,
            scope: &spec.scope,
            duration: spec.duration,
        },
        &Facts {
            now: at,
            // A dry run reads no store: limits are shown as if no other grant were live.
            live_for_subject: Some(0),
            live_for_target: Some(0),
            approvers_from: ApproverSource::Confirmed,
            unresolved_revoke: None,
        },
    )
}

/// A human-readable rendering of an explanation.
pub fn render_text(x: &Explanation) -> String {
    let mut s = format!(
        "connector {} at {}\n({})\n",
        x.connector, x.at, x.assumptions
    );
    if x.events.is_empty() {
        s.push_str("the payload holds no ticket event this connector acts on\n");
    }
    for e in &x.events {
        let ev = &e.event;
        s.push_str(&format!(
            "\nevent: {} {} (status {:?}, type {:?}) by {} at {}\n",
            ev.kind.as_str(),
            ev.ticket.key,
            ev.ticket.status.clone().unwrap_or_default(),
            ev.ticket.kind.clone().unwrap_or_default(),
            ev.actor
                .as_ref()
                .and_then(|a| a.email.clone().or_else(|| a.id.clone()))
                .unwrap_or_else(|| "(nobody)".into()),
            ev.occurred_at
        ));
        if e.mappings.is_empty() {
            s.push_str("  no mapping is configured for this connector\n");
        }
        for m in &e.mappings {
            render_mapping(&mut s, m);
        }
    }
    s
}

fn render_mapping(s: &mut String, m: &MappingExplanation) {
    s.push_str(&format!(
        "  mapping {}: {}\n    when: {} => {}\n",
        m.mapping,
        if m.matched {
            "matches"
        } else {
            "does not match"
        },
        m.when,
        m.when_value
    ));
    if let Some(w) = &m.why_not {
        s.push_str(&format!("    why: {w}\n"));
    }
    if m.matched {
        let trigger = match m.trigger {
            Some(Trigger::Approve) => "approve",
            Some(Trigger::Deny) => "deny",
            Some(Trigger::Revoke) => "revoke",
            None => "none (no [mapping.on] rule fires)",
        };
        s.push_str(&format!("    trigger: {trigger}\n"));
    }
    if let Some(g) = &m.grant {
        s.push_str(&format!(
            "    grant: subject {} | target {} | scope {} | provider {} | duration {}{}\n",
            g.subject,
            g.target,
            g.scope,
            g.provider,
            g.duration,
            if g.capped_at_max_duration {
                format!(
                    " (asked {}, capped at max_duration {})",
                    g.requested_duration, g.max_duration
                )
            } else {
                String::new()
            }
        ));
    }
    if let Some(c) = &m.confirmation {
        s.push_str(&format!("    confirmation: {c}\n"));
    }
    for p in &m.policy {
        s.push_str(&format!(
            "    policy {} {}: {}\n",
            if p.passed { "PASS" } else { "FAIL" },
            p.rule,
            p.detail
        ));
    }
    s.push_str(&format!("    decision: {}\n", m.decision));
    for w in &m.writebacks {
        s.push_str(&format!("    writeback: {w}\n"));
    }
}
