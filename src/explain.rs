//! `jitbridge explain`: a dry run of one delivery through the same parser, mappings and policy
//! the daemon uses. It shows the normalized events, every mapping considered (and why it did or
//! did not match), the policy checks, the decision and the writebacks that would be made.
//! Pure: nothing is read from an ITSM, written to the store, or sent to a provider.

use serde::Serialize;
use serde_json::json;

use crate::connectors::{Connector, RawDelivery};
use crate::grants::GrantState;
use crate::mapping::{MappingSet, Trigger, template_context};
use crate::policy::PolicyInput;
use crate::ticket::TicketEvent;

/// The whole explanation.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub connector: String,
    pub events: Vec<EventExplanation>,
}

/// One normalized event and what each mapping would do with it.
#[derive(Debug, Clone, Serialize)]
pub struct EventExplanation {
    pub event: TicketEvent,
    pub mappings: Vec<MappingExplanation>,
}

/// One mapping's view of one event.
#[derive(Debug, Clone, Serialize)]
pub struct MappingExplanation {
    pub mapping: String,
    pub matched: bool,
    /// Why it did not match (the `when` value or its error).
    pub why_not: Option<String>,
    pub trigger: Option<String>,
    pub grant: Option<serde_json::Value>,
    pub policy: Vec<serde_json::Value>,
    pub decision: String,
    pub writebacks: Vec<serde_json::Value>,
    /// What a dry run cannot know.
    pub note: &'static str,
}

/// Explains `body` arriving on `connector`.
pub fn explain(
    connector: &dyn Connector,
    mappings: &MappingSet,
    body: &[u8],
) -> Result<Explanation, String> {
    let events = connector
        .parse(&RawDelivery {
            headers: Vec::new(),
            body: body.to_vec(),
        })
        .map_err(|e| e.to_string())?;
    let events = events
        .into_iter()
        .map(|event| explain_event(mappings, event))
        .collect();
    Ok(Explanation {
        connector: connector.id().to_owned(),
        events,
    })
}

fn explain_event(mappings: &MappingSet, event: TicketEvent) -> EventExplanation {
    let mut out = Vec::new();
    for ev in mappings.evaluate(&event) {
        let matched = ev.matched == Ok(true);
        let why_not = match &ev.matched {
            Ok(true) => None,
            Ok(false) => Some("`when` is false for this ticket".to_owned()),
            Err(e) => Some(format!("`when` could not be evaluated: {e}")),
        };
        let mut m = MappingExplanation {
            mapping: ev.mapping.clone(),
            matched,
            why_not,
            trigger: ev.trigger.map(|t| format!("{t:?}").to_lowercase()),
            grant: None,
            policy: Vec::new(),
            decision: "no match: nothing happens".into(),
            writebacks: Vec::new(),
            note: "dry run: assumes the ITSM confirms the approvers named in the delivery (the daemon checks that first) and that no other grant is live for the subject or target",
        };
        let Some(mapping) = mappings.get(&ev.mapping) else {
            continue;
        };
        if matched {
            let spec = match mapping.render_grant(&event) {
                Ok(s) => s,
                Err(e) => {
                    m.decision = format!("the grant cannot be described: {e}");
                    out.push(m);
                    continue;
                }
            };
            m.grant = Some(json!({
                "subject": spec.subject, "target": spec.target, "scope": spec.scope, "provider": spec.provider,
                "duration": humantime::format_duration(spec.duration.unsigned_abs()).to_string(),
                "requested_duration": humantime::format_duration(spec.requested.unsigned_abs()).to_string(),
                "capped_at_max_duration": spec.capped,
            }));
            let approvers: Vec<_> = event.actor.iter().cloned().collect();
            let verdict = mapping.check_policy_at(
                &event,
                &PolicyInput {
                    requester: event.requester.as_ref(),
                    approvers: &approvers,
                    subject: &spec.subject,
                    target: &spec.target,
                    scope: &spec.scope,
                    duration: spec.duration,
                },
                &crate::policy::Facts {
                    now: jiff::Timestamp::now(),
                    // A dry run reads no store: limits are shown as if no other grant were live.
                    live_for_subject: Some(0),
                    live_for_target: Some(0),
                    approvers_from: crate::policy::ApproverSource::Confirmed,
                },
            );
            m.policy = verdict
                .checks
                .iter()
                .map(|c| json!({"rule": c.rule, "passed": c.passed, "detail": c.detail}))
                .collect();
            let (decision, state, reason) = match ev.trigger {
                None => ("request: a grant would be recorded as requested, waiting for approval".to_owned(), GrantState::Requested, String::new()),
                Some(Trigger::Approve) if verdict.allowed() => (
                    "approve: after the ITSM's API confirms the approval, the grant would be applied through the provider".to_owned(),
                    GrantState::Approved,
                    String::new(),
                ),
                Some(Trigger::Approve) => {
                    let r = verdict.refusal().unwrap_or_else(|| "refused by policy".into());
                    (format!("deny: {r}"), GrantState::Denied, r)
                }
                Some(Trigger::Deny) => ("deny: the approver declined".to_owned(), GrantState::Denied, "declined in the ticket".to_owned()),
                Some(Trigger::Revoke) => (
                    "end: a live grant would be revoked now (or cancelled if not yet approved)".to_owned(),
                    GrantState::Revoking,
                    format!("the ticket reached status {}", event.ticket.status.clone().unwrap_or_default()),
                ),
            };
            m.decision = decision;
            let mut ctx = template_context(&event);
            if let Some(obj) = ctx.as_object_mut() {
                obj.insert("grant".into(), json!({
                    "id": "(assigned when stored)", "subject": spec.subject, "target": spec.target, "scope": spec.scope,
                    "state": state.as_str(), "starts_at": "(when applied)", "expires_at": "(approval time + duration)",
                }));
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
        out.push(m);
    }
    EventExplanation {
        event,
        mappings: out,
    }
}

/// A human-readable rendering of an explanation.
pub fn render_text(x: &Explanation) -> String {
    let mut s = String::new();
    if x.events.is_empty() {
        s.push_str(&format!(
            "connector {}: the payload holds no ticket event this connector acts on\n",
            x.connector
        ));
    }
    for e in &x.events {
        let ev = &e.event;
        s.push_str(&format!(
            "event: {} {} (status {:?}, type {:?}) by {} at {}\n",
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
            s.push_str(&format!(
                "  mapping {}: {}\n",
                m.mapping,
                if m.matched {
                    "matches"
                } else {
                    "does not match"
                }
            ));
            if let Some(w) = &m.why_not {
                s.push_str(&format!("    why: {w}\n"));
            }
            if let Some(t) = &m.trigger {
                s.push_str(&format!("    trigger: {t}\n"));
            }
            if let Some(g) = &m.grant {
                s.push_str(&format!("    grant: {g}\n"));
            }
            for p in &m.policy {
                let ok = p["passed"].as_bool().unwrap_or(false);
                s.push_str(&format!(
                    "    policy {} {}: {}\n",
                    if ok { "PASS" } else { "FAIL" },
                    p["rule"].as_str().unwrap_or(""),
                    p["detail"].as_str().unwrap_or("")
                ));
            }
            s.push_str(&format!("    decision: {}\n", m.decision));
            for w in &m.writebacks {
                s.push_str(&format!("    writeback: {w}\n"));
            }
        }
    }
    s
}
