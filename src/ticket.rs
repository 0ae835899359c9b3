//! The normalized ticket event. Every connector turns its system's raw delivery into
//! [`TicketEvent`]s, so that one mapping format and one policy engine serve every ITSM.
//! These names are exactly what mapping expressions and templates see (DESIGN.md,
//! "Names available to mappings").

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// One change to one ticket, as every connector reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketEvent {
    /// The connector (file `id`) the delivery arrived on.
    pub connector: String,
    /// What kind of change this was.
    pub kind: EventKind,
    /// The ticket as it is after this change.
    pub ticket: Ticket,
    /// Who raised the ticket (the reporter / caller / requester).
    pub requester: Option<Person>,
    /// Who caused this event; on an approval, the approver. `None` for system changes.
    pub actor: Option<Person>,
    /// Approval state carried by the delivery or confirmed through the API.
    pub approval: Option<Approval>,
    /// A status change carried by this event, when there was one.
    pub status_change: Option<StatusChange>,
    /// When the ITSM says the change happened (used to ignore stale, out-of-order events).
    pub occurred_at: Timestamp,
    /// The ticket's own fields, named as the ITSM names them.
    pub fields: serde_json::Value,
    /// The raw delivery body.
    pub payload: serde_json::Value,
}

/// The ticket's identity and headline attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The ITSM's stable internal id (Jira issue id, ServiceNow sys_id, Freshservice id).
    pub id: String,
    /// The human key (`ACCESS-87`, `RITM0010001`, `#123`); equal to `id` where there is none.
    pub key: String,
    /// A link a person can open.
    pub url: Option<String>,
    /// Issue / request type name.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Current status name.
    pub status: Option<String>,
    /// One-line summary.
    pub summary: Option<String>,
    /// Project / table / workspace.
    pub project: Option<String>,
}

/// A person as the ITSM identifies them. Compared by `id` or `email`, never by `name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// The ITSM's stable user id (Jira accountId, ServiceNow sys_id, ...).
    pub id: Option<String>,
    /// E-mail address, when the ITSM discloses it.
    pub email: Option<String>,
    /// Display name: for people reading comments only, never for identity checks.
    pub name: Option<String>,
}

impl Person {
    /// True when both sides name the same identity by id or by e-mail (case-insensitive).
    /// Display names are deliberately ignored: they are neither unique nor stable.
    pub fn same_identity(&self, other: &Person) -> bool {
        let same_id =
            matches!((&self.id, &other.id), (Some(a), Some(b)) if !a.is_empty() && a == b);
        let same_email = matches!((&self.email, &other.email),
            (Some(a), Some(b)) if !a.is_empty() && a.eq_ignore_ascii_case(b));
        same_id || same_email
    }

    /// True when nothing identifies this person.
    pub fn is_anonymous(&self) -> bool {
        self.id.as_deref().is_none_or(str::is_empty)
            && self.email.as_deref().is_none_or(str::is_empty)
    }
}

/// What happened to the ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Updated,
    Approved,
    Rejected,
    Cancelled,
    Resolved,
    Reopened,
    Commented,
}

impl EventKind {
    /// The snake_case name mappings use.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Updated => "updated",
            EventKind::Approved => "approved",
            EventKind::Rejected => "rejected",
            EventKind::Cancelled => "cancelled",
            EventKind::Resolved => "resolved",
            EventKind::Reopened => "reopened",
            EventKind::Commented => "commented",
        }
    }
}

/// A status transition carried by the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    /// Previous status name, when known.
    pub from: Option<String>,
    /// New status name.
    pub to: String,
}

/// Approval information: as delivered, or as confirmed through the ITSM's API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// `pending`, `approved`, `rejected` (normalized, lower case).
    pub state: String,
    /// The people who approved (or declined).
    pub approvers: Vec<Person>,
    /// When the decision was made.
    pub decided_at: Option<Timestamp>,
}

/// A pointer back to the ticket, enough for writebacks and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketRef {
    /// Connector id.
    pub connector: String,
    /// ITSM internal id.
    pub id: String,
    /// Human key.
    pub key: String,
    /// Link for people.
    pub url: Option<String>,
}

impl TicketEvent {
    /// The pointer to this event's ticket.
    pub fn ticket_ref(&self) -> TicketRef {
        TicketRef {
            connector: self.connector.clone(),
            id: self.ticket.id.clone(),
            key: self.ticket.key.clone(),
            url: self.ticket.url.clone(),
        }
    }
}
