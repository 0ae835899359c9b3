//! The simulated helpdesk's data: requesters, agents, service-request tickets, their approvals
//! and notes, and their API v2 JSON shapes (`itsm-wire-formats.md` §3).
//!
//! Tags as in the wire-format document: shapes marked **\[U\]** are unverified guesses that the
//! simulator uses while jitbridge's parser must tolerate alternatives.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value, json};

/// Ticket `status` codes \[S\].
pub mod status {
    /// Open.
    pub const OPEN: u8 = 2;
    /// Pending.
    pub const PENDING: u8 = 3;
    /// Resolved.
    pub const RESOLVED: u8 = 4;
    /// Closed.
    pub const CLOSED: u8 = 5;
    /// Every valid code.
    pub const ALL: [u8; 4] = [OPEN, PENDING, RESOLVED, CLOSED];
}

/// An approval state, on a ticket (`approval_status` + `approval_status_name`) and on an
/// approval row (`approval_status: {id, name}`).
///
/// Codes: `4 = Not Requested` is \[S\] (the "View a ticket" sample); `0 requested` and
/// `3 cancelled` on approval rows are \[S\] (a public PowerShell client's sample output);
/// `1 approved` and `2 rejected` are \[U\], inferred from that numbering. Parsers key off the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ApprovalStatus {
    /// Waiting for the approver.
    Requested,
    /// Approved.
    Approved,
    /// Rejected.
    Rejected,
    /// Withdrawn (or mooted by another approver's decision).
    Cancelled,
    /// No approval was asked for.
    NotRequested,
}

impl ApprovalStatus {
    /// The numeric code.
    pub fn code(self) -> u8 {
        match self {
            ApprovalStatus::Requested => 0,
            ApprovalStatus::Approved => 1,
            ApprovalStatus::Rejected => 2,
            ApprovalStatus::Cancelled => 3,
            ApprovalStatus::NotRequested => 4,
        }
    }

    /// `approval_status_name` on a ticket ("Approved").
    pub fn ticket_name(self) -> &'static str {
        match self {
            ApprovalStatus::Requested => "Requested",
            ApprovalStatus::Approved => "Approved",
            ApprovalStatus::Rejected => "Rejected",
            ApprovalStatus::Cancelled => "Cancelled",
            ApprovalStatus::NotRequested => "Not Requested",
        }
    }

    /// `approval_status.name` on an approval row ("approved", lowercase as in the sample).
    pub fn row_name(self) -> &'static str {
        match self {
            ApprovalStatus::Requested => "requested",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Rejected => "rejected",
            ApprovalStatus::Cancelled => "cancelled",
            ApprovalStatus::NotRequested => "not_requested",
        }
    }
}

/// A requester (`GET /api/v2/requesters/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Requester {
    /// Numeric id.
    pub id: u64,
    /// `primary_email`.
    pub primary_email: String,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
}

/// An agent (`GET /api/v2/agents/{id}`); approvers and fulfillers are agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Agent {
    /// Numeric id.
    pub id: u64,
    /// `email`.
    pub email: String,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
}

/// One approval row of a ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approval {
    /// Numeric id.
    pub id: u64,
    /// The approving agent.
    pub approver_id: u64,
    /// Current state.
    pub status: ApprovalStatus,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
}

/// A note (`conversation`) on a ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    /// Numeric id.
    pub id: u64,
    /// HTML body as sent.
    pub body: String,
    /// The body with tags stripped.
    pub body_text: String,
    /// Private (agents only) or public.
    pub private: bool,
    /// Whether it came in from outside (always false for API notes).
    pub incoming: bool,
    /// The agent who wrote it.
    pub user_id: u64,
    /// The ticket.
    pub ticket_id: u64,
    /// When.
    pub created_at: Timestamp,
}

/// A service-request ticket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ticket {
    /// Numeric id.
    pub id: u64,
    /// Subject.
    pub subject: String,
    /// HTML description.
    pub description: String,
    /// Status code ([`status`]).
    pub status: u8,
    /// Priority 1–4.
    pub priority: u8,
    /// The requester.
    pub requester_id: u64,
    /// The assigned agent.
    pub responder_id: Option<u64>,
    /// The ticket-level approval state.
    pub approval_status: ApprovalStatus,
    /// `custom_fields` (internal names → values).
    pub custom_fields: Map<String, Value>,
    /// Tags.
    pub tags: Vec<String>,
    /// Approval rows.
    pub approvals: Vec<Approval>,
    /// Notes, oldest first.
    pub notes: Vec<Note>,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
}

/// ISO 8601 in UTC with a `Z`, as API v2 writes times.
pub fn iso(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Strips HTML tags and decodes the common entities, for `body_text` / `description_text`.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
        .trim()
        .to_owned()
}

impl Ticket {
    /// The object inside `{"ticket": ...}`.
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "workspace_id": 2,
            "subject": self.subject,
            "description": self.description,
            "description_text": html_to_text(&self.description),
            "type": "Service Request",
            "status": self.status,
            "priority": self.priority,
            "source": 2,
            "urgency": 1,
            "impact": 1,
            "requester_id": self.requester_id,
            "requested_for_id": self.requester_id,
            "responder_id": self.responder_id,
            "group_id": null,
            "department_id": null,
            "category": null,
            "sub_category": null,
            "item_category": null,
            "sla_policy_id": 1,
            "is_escalated": false,
            "fr_escalated": false,
            "spam": false,
            "deleted": false,
            "cc_emails": [],
            "fwd_emails": [],
            "reply_cc_emails": [],
            "to_emails": null,
            "email_config_id": null,
            "tags": self.tags,
            "attachments": [],
            "approval_status": self.approval_status.code(),
            "approval_status_name": self.approval_status.ticket_name(),
            "custom_fields": self.custom_fields,
            "due_by": iso(self.created_at.checked_add(jiff::SignedDuration::from_hours(72)).unwrap_or(self.created_at)),
            "fr_due_by": iso(self.created_at.checked_add(jiff::SignedDuration::from_hours(24)).unwrap_or(self.created_at)),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        })
    }
}

impl Approval {
    /// One element of `{"approvals": [...]}`. Shape **\[U\]** beyond `id`, `approver_id` and
    /// `approval_status {id, name}` (\[S\], a public client's sample): `approval_type`, `level`,
    /// `user_id`, `delegatee`, `latest_remark` follow that sample; there is no `member_id`.
    pub fn json(&self, approver_name: &str, requester_id: u64) -> Value {
        json!({
            "id": self.id,
            "approver_id": self.approver_id,
            "approver_name": approver_name,
            "approval_type": 2,
            "level": 1,
            "user_id": requester_id,
            "approval_status": {"id": self.status.code(), "name": self.status.row_name()},
            "delegatee": null,
            "latest_remark": null,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        })
    }
}

impl Note {
    /// The object inside `{"conversation": ...}` (shape \[U\]).
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "body": self.body,
            "body_text": self.body_text,
            "private": self.private,
            "incoming": self.incoming,
            "user_id": self.user_id,
            "ticket_id": self.ticket_id,
            "support_email": null,
            "to_emails": [],
            "attachments": [],
            "created_at": iso(self.created_at),
            "updated_at": iso(self.created_at),
        })
    }
}

impl Requester {
    /// The object inside `{"requester": ...}`.
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "primary_email": self.primary_email,
            "secondary_emails": [],
            "job_title": null,
            "active": true,
            "language": "en",
            "time_zone": "UTC",
        })
    }
}

impl Agent {
    /// The object inside `{"agent": ...}`.
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "email": self.email,
            "active": true,
            "occasional": false,
            "job_title": null,
            "language": "en",
            "time_zone": "UTC",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn not_requested_is_four_and_names_differ_by_level() {
        assert_eq!(ApprovalStatus::NotRequested.code(), 4);
        assert_eq!(ApprovalStatus::NotRequested.ticket_name(), "Not Requested");
        assert_eq!(ApprovalStatus::Cancelled.row_name(), "cancelled");
        assert_eq!(ApprovalStatus::Cancelled.code(), 3);
    }

    #[test]
    fn html_is_flattened_for_body_text() {
        assert_eq!(
            html_to_text("<p>Grant <b>issued</b> &amp; logged</p>"),
            "Grant issued & logged"
        );
    }

    #[test]
    fn iso_has_a_z() {
        let at: Timestamp = "2025-03-14T08:41:37Z".parse().unwrap();
        assert_eq!(iso(at), "2025-03-14T08:41:37Z");
    }

    proptest! {
        #[test]
        fn html_to_text_never_panics_and_drops_tags(s in ".{0,200}") {
            let text = html_to_text(&s);
            if !s.contains('&') {
                prop_assert!(!text.contains('<'));
            }
        }
    }
}
