//! The names mappings see (DESIGN.md, "Names available to mappings"), built from a
//! [`TicketEvent`]. One function builds them so CEL conditions, grant templates, stored grant
//! contexts and `jitbridge explain` can never disagree about what a name means.

use serde_json::{Map, Value, json};

use crate::grants::Grant;
use crate::ticket::{Approval, Person, TicketEvent};

fn person(p: Option<&Person>) -> Value {
    match p {
        // `subject` is the identity map's directory account; the mapping fills it in.
        Some(p) => json!({ "id": p.id, "email": p.email, "name": p.name, "subject": null }),
        None => Value::Null,
    }
}

fn approval(a: Option<&Approval>) -> Value {
    match a {
        Some(a) => json!({
            "state": a.state,
            "approvers": a.approvers.iter().map(|p| person(Some(p))).collect::<Vec<_>>(),
            "decided_at": a.decided_at.map(|t| t.to_string()),
        }),
        None => Value::Null,
    }
}

/// Every name but `fields` and `payload`: the small part of a context, cheap to build.
fn names(event: &TicketEvent) -> Map<String, Value> {
    let t = &event.ticket;
    let mut m = Map::new();
    m.insert(
        "ticket".into(),
        json!({
            "id": t.id, "key": t.key, "url": t.url, "type": t.kind,
            "status": t.status, "summary": t.summary, "project": t.project,
        }),
    );
    m.insert("requester".into(), person(event.requester.as_ref()));
    m.insert("actor".into(), person(event.actor.as_ref()));
    m.insert("approval".into(), approval(event.approval.as_ref()));
    m.insert(
        "event".into(),
        json!({ "kind": event.kind.as_str(), "occurred_at": event.occurred_at.to_string() }),
    );
    m
}

fn base(event: &TicketEvent) -> Map<String, Value> {
    let mut m = names(event);
    m.insert("fields".into(), event.fields.clone());
    m
}

/// [`template_context`] without `fields` and `payload`, for conditions that read those two
/// from the event itself (see `CelVariables::with_event_data`): evaluating every delivery
/// against the mappings then copies neither.
pub(crate) fn condition_context(event: &TicketEvent) -> Value {
    Value::Object(names(event))
}

/// Everything a `when` condition and a grant template can name: `ticket`, `requester`, `actor`,
/// `approval`, `fields`, `event` and the raw `payload`. Absent people and approvals are `null`.
pub fn template_context(event: &TicketEvent) -> Value {
    let mut m = base(event);
    m.insert("payload".into(), event.payload.clone());
    Value::Object(m)
}

/// [`template_context`] without `payload`: small enough to store on the grant
/// ([`Grant::context`]) so writebacks rendered hours later (at expiry) see the same names.
pub fn stored_context(event: &TicketEvent) -> Value {
    Value::Object(base(event))
}

/// The context of a writeback template: the grant's stored context plus `grant`
/// {id, subject, target, scope, provider, duration, starts_at, expires_at, state} and `reason`
/// (`null` when there is none). Times are RFC 3339 UTC; `duration` is friendly (`1h 30m`).
pub fn writeback_context(grant: &Grant, reason: Option<&str>) -> Value {
    let mut m = match &grant.context {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    m.insert(
        "grant".into(),
        json!({
            "id": grant.id.to_string(),
            "subject": grant.subject,
            "target": grant.target,
            "scope": grant.scope,
            "provider": grant.provider,
            "duration": format!("{:#}", grant.duration),
            "starts_at": grant.starts_at.map(|t| t.to_string()),
            "expires_at": grant.expires_at.map(|t| t.to_string()),
            "state": grant.state.as_str(),
        }),
    );
    m.insert(
        "reason".into(),
        reason.map_or(Value::Null, |r| Value::String(r.to_owned())),
    );
    Value::Object(m)
}
