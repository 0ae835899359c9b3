//! Pure readers of Freshservice API v2 responses: the ticket view, requester and agent records,
//! and ticket approval records.
//!
//! The shapes are only partly documented (`itsm-wire-formats.md` 3.1/3.2: `approval_status_name`
//! is known, the other approval codes and the approvals endpoint are not), so every reader
//! tolerates the plausible alternatives and, where it must decide, decides *against* approval:
//! only an approval status explicitly named "Approved" reads as approved.

use jiff::Timestamp;
use serde_json::{Map, Value};

use super::parse::{ApprovalName, numeric_id, object, scalar, text, timestamp};
use crate::ticket::Person;

/// The documented numeric `approval_status` for "Not Requested"; every other number is
/// unconfirmed and therefore read as unknown.
const NOT_REQUESTED_CODE: &str = "4";

/// The record inside a `{"<wrapper>": {...}}` envelope (`ticket`, `requester`, `agent`), or the
/// body itself when it is already the record.
pub(crate) fn unwrap_record<'a>(body: &'a Value, wrapper: &str) -> Option<&'a Map<String, Value>> {
    object(body.get(wrapper)).or_else(|| body.as_object().filter(|o| o.contains_key("id")))
}

/// The ticket's approval state, keyed on `approval_status_name` (case-insensitive):
/// `approved`, `rejected`, `pending` (Requested), `not_requested`, `cancelled`, or `unknown` for
/// anything else, including numeric codes nobody has confirmed. `None` only when the ticket
/// carries no approval status at all.
pub(crate) fn ticket_approval_state(ticket: &Map<String, Value>) -> Option<&'static str> {
    if let Some(name) = text(ticket.get("approval_status_name")) {
        return Some(ApprovalName::from_name(&name).map_or("unknown", ApprovalName::state));
    }
    let raw = match ticket.get("approval_status") {
        None | Some(Value::Null) => return None,
        Some(Value::Object(o)) => text(o.get("name")).or_else(|| scalar(o.get("id"))),
        Some(v) => scalar(Some(v)),
    };
    let Some(raw) = raw else {
        return Some("unknown");
    };
    if raw == NOT_REQUESTED_CODE {
        return Some("not_requested");
    }
    Some(ApprovalName::from_name(&raw).map_or("unknown", ApprovalName::state))
}

/// The ticket's status as a name: the `status` code through the status table's `display`, or a
/// `status_name` / textual status when the account sends one.
pub(crate) fn ticket_status(
    ticket: &Map<String, Value>,
    statuses: &super::options::StatusTable,
) -> Option<String> {
    scalar(ticket.get("status"))
        .and_then(|s| statuses.display(&s))
        .or_else(|| text(ticket.get("status_name")))
}

/// One approver's decision, read from an approval record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    /// `approver_id` (or `member_id`).
    pub(crate) approver_id: Option<String>,
    /// `approver_name`, for people reading comments only.
    pub(crate) approver_name: Option<String>,
    /// A delegatee who answered in the approver's place, if the record names one.
    pub(crate) delegatee_id: Option<String>,
    /// The record's status, normalized like the ticket's (`approved`, `rejected`, ...).
    pub(crate) state: &'static str,
    /// When the record last changed.
    pub(crate) updated_at: Option<Timestamp>,
}

/// The approval records of a `GET /api/v2/tickets/{id}/approvals` response (`{"approvals":
/// [...]}`, or a bare array), each as a [`Decision`]. Records that are not objects are skipped.
pub(crate) fn decisions(body: &Value) -> Vec<Decision> {
    let list = body
        .get("approvals")
        .and_then(Value::as_array)
        .or_else(|| body.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    list.iter()
        .filter_map(Value::as_object)
        .map(decision)
        .collect()
}

/// How many records a page of the approvals listing held (for pagination).
pub(crate) fn page_len(body: &Value) -> usize {
    body.get("approvals")
        .and_then(Value::as_array)
        .or_else(|| body.as_array())
        .map_or(0, Vec::len)
}

fn decision(record: &Map<String, Value>) -> Decision {
    let status_name = match record.get("approval_status") {
        Some(Value::Object(o)) => text(o.get("name")),
        Some(v @ Value::String(_)) => text(Some(v)),
        _ => None,
    }
    .or_else(|| text(record.get("approval_status_name")))
    .or_else(|| text(record.get("status")));
    let state = status_name
        .as_deref()
        .and_then(ApprovalName::from_name)
        .map_or("unknown", ApprovalName::state);
    let delegatee_id = match record.get("delegatee") {
        Some(Value::Object(o)) => numeric_id(o.get("id")),
        other => numeric_id(other),
    }
    .or_else(|| numeric_id(record.get("delegatee_id")));
    Decision {
        approver_id: numeric_id(record.get("approver_id"))
            .or_else(|| numeric_id(record.get("member_id"))),
        approver_name: text(record.get("approver_name")),
        delegatee_id,
        state,
        updated_at: record.get("updated_at").and_then(timestamp),
    }
}

/// A requester or agent record as a [`Person`]: requesters carry `primary_email`, agents
/// `email`; the name is `first_name last_name`. `None` when the record names nobody.
pub(crate) fn person(record: &Map<String, Value>) -> Option<Person> {
    let email = text(record.get("primary_email"))
        .or_else(|| text(record.get("email")))
        .filter(|e| super::parse::is_plausible_email(e));
    let name = [
        text(record.get("first_name")),
        text(record.get("last_name")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ");
    let p = Person {
        id: numeric_id(record.get("id")),
        email,
        name: (!name.is_empty()).then_some(name),
    };
    (p.id.is_some() || p.email.is_some()).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ticket(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn approval_state_is_keyed_on_the_status_name() {
        let cases = [
            (
                json!({"approval_status": 1, "approval_status_name": "Approved"}),
                Some("approved"),
            ),
            (
                json!({"approval_status": 1, "approval_status_name": "APPROVED"}),
                Some("approved"),
            ),
            (
                json!({"approval_status": 2, "approval_status_name": "Rejected"}),
                Some("rejected"),
            ),
            (
                json!({"approval_status": 0, "approval_status_name": "Requested"}),
                Some("pending"),
            ),
            (
                json!({"approval_status": 4, "approval_status_name": "Not Requested"}),
                Some("not_requested"),
            ),
            (
                json!({"approval_status": 1, "approval_status_name": "Approved-ish"}),
                Some("unknown"),
            ),
            (json!({"approval_status": 4}), Some("not_requested")),
            (json!({"approval_status": 1}), Some("unknown")),
            (json!({"approval_status": "approved"}), Some("approved")),
            (
                json!({"approval_status": {"id": 1, "name": "Approved"}}),
                Some("approved"),
            ),
            (json!({"approval_status": null}), None),
            (json!({}), None),
        ];
        for (t, expected) in cases {
            assert_eq!(ticket_approval_state(&ticket(t.clone())), expected, "{t}");
        }
    }

    #[test]
    fn a_number_never_reads_as_approved_even_when_the_name_is_missing() {
        for code in 0..20 {
            let state = ticket_approval_state(&ticket(json!({"approval_status": code})));
            assert_ne!(state, Some("approved"), "code {code}");
        }
    }

    #[test]
    fn approval_records_in_documented_shape_are_read() {
        let body = json!({"approvals": [
            {"id": 1, "approver_id": 21001931878_u64, "approver_name": "Alex", "approval_type": 2,
             "user_id": 21000418005_u64, "level": 1, "approval_status": {"id": 1, "name": "approved"},
             "delegatee": null, "updated_at": "2025-03-14T08:41:37Z"},
            {"id": 2, "member_id": "55", "approval_status_name": "Rejected"},
            {"id": 3, "approver_id": 56, "approval_status": "requested", "delegatee": {"id": 57, "name": "D"}},
            "not an object"
        ]});
        let d = decisions(&body);
        assert_eq!(page_len(&body), 4);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].approver_id.as_deref(), Some("21001931878"));
        assert_eq!(d[0].approver_name.as_deref(), Some("Alex"));
        assert_eq!(d[0].state, "approved");
        assert_eq!(d[0].updated_at, "2025-03-14T08:41:37Z".parse().ok());
        assert_eq!(d[1].approver_id.as_deref(), Some("55"));
        assert_eq!(d[1].state, "rejected");
        assert_eq!(d[2].state, "pending");
        assert_eq!(d[2].delegatee_id.as_deref(), Some("57"));
    }

    #[test]
    fn requester_and_agent_records_become_people() {
        let r = person(&ticket(json!({"id": 42, "first_name": "Rita", "last_name": "Q", "primary_email": "rita@example.com"})))
            .expect("person");
        assert_eq!(r.id.as_deref(), Some("42"));
        assert_eq!(r.email.as_deref(), Some("rita@example.com"));
        assert_eq!(r.name.as_deref(), Some("Rita Q"));
        let a = person(&ticket(
            json!({"id": 7, "first_name": "Ann", "email": "ann@example.com"}),
        ))
        .expect("person");
        assert_eq!(a.email.as_deref(), Some("ann@example.com"));
        assert_eq!(person(&ticket(json!({"first_name": "Nobody"}))), None);
    }

    #[test]
    fn envelopes_are_unwrapped() {
        let wrapped = json!({"ticket": {"id": 1, "status": 2}});
        assert_eq!(
            unwrap_record(&wrapped, "ticket").and_then(|t| t.get("status")),
            Some(&json!(2))
        );
        let bare = json!({"id": 1, "status": 3});
        assert_eq!(
            unwrap_record(&bare, "ticket").and_then(|t| t.get("status")),
            Some(&json!(3))
        );
        assert_eq!(unwrap_record(&json!({"nothing": 1}), "ticket"), None);
    }

    proptest! {
        #[test]
        fn readers_never_panic(s in "(?s).{0,64}", n in any::<i64>()) {
            for v in [json!({"approvals": [{"approval_status": s, "approver_id": n}]}), json!([s, n]), json!(s)] {
                let _ = decisions(&v);
                let _ = page_len(&v);
                if let Some(o) = v.as_object() {
                    let _ = ticket_approval_state(o);
                    let _ = person(o);
                }
            }
            let t = ticket(json!({"approval_status_name": s, "approval_status": n}));
            let state = ticket_approval_state(&t);
            if state == Some("approved") {
                prop_assert!(s.to_lowercase().contains("approved"));
            }
        }
    }
}
