//! Pure parsing of a delivery into a [`TicketEvent`] by the rules of a generic connector file.
//!
//! The body is read as JSON and every field is taken from where `[parse]` says it is. Nothing
//! here trusts the delivery more than it must: the ticket id must look like an id (it ends up in
//! API paths, although those are encoded too), unknown event words are ignored rather than
//! guessed at, and an approval word the file does not map is `unknown`, never approved. No I/O,
//! no panics, whatever the body.

use serde_json::{Map, Value};

use super::extract::{Expr, scalar_text, timestamp};
use super::options::{Dedupe, Options, PersonSpec, UrlSource};
use super::template::{Kind, base_url_value};
use crate::connectors::{ParseError, RawDelivery, body_hash_key};
use crate::ticket::{Approval, EventKind, Person, StatusChange, Ticket, TicketEvent};

/// Longest ticket id or key accepted.
pub(crate) const MAX_ID_LEN: usize = 255;
/// Longest dedupe value used verbatim.
const MAX_DEDUPE_LEN: usize = 200;

/// Parses one verified delivery into zero events (an event word the file does not map) or one.
pub(crate) fn parse(
    connector: &str,
    base_url: &reqwest::Url,
    options: &Options,
    delivery: &RawDelivery,
) -> Result<Vec<TicketEvent>, ParseError> {
    let err = |reason: String| ParseError {
        connector: connector.to_owned(),
        reason,
    };
    let spec = &options.parse;
    let payload: Value = serde_json::from_slice(&delivery.body).map_err(|e| {
        err(format!(
            "body is not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    if !payload.is_object() {
        return Err(err("body is not a JSON object".to_owned()));
    }

    let kind = match &spec.event {
        None => EventKind::Updated,
        Some(expr) => {
            let Some(word) = expr.text(&payload) else {
                return Err(err("parse.event selects nothing in this body".to_owned()));
            };
            let word = word.to_lowercase();
            match spec.events.iter().find(|(w, _)| *w == word) {
                Some((_, kind)) => *kind,
                // An event the file does not map is not one jitbridge acts on.
                None => return Ok(Vec::new()),
            }
        }
    };

    let id = spec
        .ticket_id
        .text(&payload)
        .ok_or_else(|| err("parse.ticket_id selects no value in this body".to_owned()))?;
    if !is_plausible_id(&id) {
        return Err(err(
            "parse.ticket_id selects a value that is not a ticket id (too long or has control characters)".to_owned(),
        ));
    }
    let key = match &spec.ticket_key {
        Some(expr) => match expr.text(&payload) {
            Some(k) if is_plausible_id(&k) => k,
            Some(_) => {
                return Err(err(
                    "parse.ticket_key selects a value that is not a ticket key".to_owned(),
                ));
            }
            None => id.clone(),
        },
        None => id.clone(),
    };
    let occurred_text = spec
        .occurred_at
        .text(&payload)
        .ok_or_else(|| err("parse.occurred_at selects no value in this body".to_owned()))?;
    let occurred_at = timestamp(&occurred_text).ok_or_else(|| {
        err("parse.occurred_at is not a date-time (RFC 3339, \"YYYY-MM-DD HH:MM:SS\" UTC or Unix time)".to_owned())
    })?;

    let text = |e: &Option<Expr>| e.as_ref().and_then(|e| e.text(&payload));
    let status = text(&spec.status);
    let status_change = match (&status, text(&spec.previous_status)) {
        (Some(to), Some(from)) if !from.eq_ignore_ascii_case(to) => Some(StatusChange {
            from: Some(from),
            to: to.clone(),
        }),
        _ => None,
    };
    let url = match &spec.ticket_url {
        None => None,
        Some(UrlSource::Path(p)) => p.query(&payload).iter().find_map(|v| scalar_text(v)),
        Some(UrlSource::Template(name)) => {
            let ctx = minijinja::context! {
                base_url => base_url_value(base_url),
                ticket => minijinja::context! { id => id.clone(), key => key.clone() },
            };
            options.templates.render(Kind::Url, name, &ctx).ok()
        }
    };
    let actor = person(&spec.actor, &payload);
    let approval = spec
        .approval
        .as_ref()
        .and_then(|e| e.text(&payload))
        .map(|word| {
            let state = spec.approval_values.normalize(&word);
            let decided = matches!(state, "approved" | "rejected");
            Approval {
                state: state.to_owned(),
                approvers: if decided {
                    actor.clone().into_iter().collect()
                } else {
                    Vec::new()
                },
                decided_at: decided.then_some(occurred_at),
            }
        });
    let fields = match &spec.fields {
        None => payload.clone(),
        Some(p) => match p.query(&payload).first() {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => {
                return Err(err(
                    "parse.fields selects a value that is not an object".to_owned()
                ));
            }
        },
    };

    Ok(vec![TicketEvent {
        connector: connector.to_owned(),
        kind,
        ticket: Ticket {
            id,
            key,
            url,
            kind: text(&spec.ticket_type),
            status,
            summary: text(&spec.summary),
            project: text(&spec.project),
        },
        requester: person(&spec.requester, &payload),
        actor,
        approval,
        status_change,
        occurred_at,
        fields,
        payload,
    }])
}

/// The delivery's dedupe key as the file says (`generic-header:`/`generic-path:` prefixed), or
/// the body hash when the value is absent or implausible.
pub(crate) fn dedupe_key(options: &Options, delivery: &RawDelivery) -> String {
    let plausible = |v: &str| {
        !v.is_empty() && v.len() <= MAX_DEDUPE_LEN && v.bytes().all(|b| b.is_ascii_graphic())
    };
    match &options.parse.dedupe {
        Dedupe::Body => body_hash_key(&delivery.body),
        Dedupe::Header(name) => match delivery.header(name).map(str::trim) {
            Some(v) if plausible(v) => format!("generic-header:{v}"),
            _ => body_hash_key(&delivery.body),
        },
        Dedupe::Path(p) => serde_json::from_slice::<Value>(&delivery.body)
            .ok()
            .and_then(|doc| p.query(&doc).iter().find_map(|v| scalar_text(v)))
            .filter(|v| plausible(v))
            .map_or_else(
                || body_hash_key(&delivery.body),
                |v| format!("generic-path:{v}"),
            ),
    }
}

/// Non-empty, bounded, no control characters.
fn is_plausible_id(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= MAX_ID_LEN && !s.chars().any(char::is_control)
}

/// A person from the delivery; `None` when nothing about them is there.
fn person(spec: &PersonSpec, doc: &Value) -> Option<Person> {
    let get = |e: &Option<Expr>| e.as_ref().and_then(|e| e.text(doc));
    let p = Person {
        id: get(&spec.id),
        email: get(&spec.email),
        name: get(&spec.name),
    };
    (p.id.is_some() || p.email.is_some() || p.name.is_some()).then_some(p)
}
