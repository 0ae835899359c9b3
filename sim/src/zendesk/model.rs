//! The simulated Zendesk account's data — users, ticket fields, tickets, comments, audits — and
//! how it renders as Zendesk Support API v2 JSON (`{"ticket": {...}}`, `{"audits": [...]}`,
//! `{"user": {...}}`), with Zendesk's second-precision `YYYY-MM-DDTHH:MM:SSZ` timestamps.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Value, json};

/// The ticket statuses Zendesk knows, in workflow order.
pub const STATUSES: [&str; 6] = ["new", "open", "pending", "hold", "solved", "closed"];

/// A Zendesk user (end user, agent or admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Numeric user id.
    pub id: u64,
    /// Display name.
    pub name: String,
    /// Primary e-mail.
    pub email: String,
    /// `end-user`, `agent` or `admin`.
    pub role: String,
}

impl User {
    /// A user with `role`.
    pub fn new(id: u64, name: &str, email: &str, role: &str) -> Self {
        Self {
            id,
            name: name.to_owned(),
            email: email.to_owned(),
            role: role.to_owned(),
        }
    }

    pub(crate) fn json(&self, base: &str) -> Value {
        json!({"id": self.id, "url": format!("{base}/api/v2/users/{}.json", self.id),
               "name": self.name, "email": self.email, "role": self.role, "active": true,
               "verified": true, "time_zone": "Europe/Paris", "locale": "en-US",
               "created_at": "2024-01-02T09:00:00Z", "updated_at": "2024-01-02T09:00:00Z",
               "organization_id": null, "suspended": false, "user_fields": {}})
    }
}

/// A custom ticket field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketField {
    /// Numeric field id (what `custom_fields[].id` and audit `field_name` carry).
    pub id: u64,
    /// Title agents see.
    pub title: String,
    /// Drop-down options as `(tag value, title)`; empty for a text field.
    pub options: Vec<(String, String)>,
}

impl TicketField {
    /// A free-text field.
    pub fn text(id: u64, title: &str) -> Self {
        Self {
            id,
            title: title.to_owned(),
            options: Vec::new(),
        }
    }

    /// A drop-down field with `(tag, title)` options.
    pub fn dropdown(id: u64, title: &str, options: &[(&str, &str)]) -> Self {
        Self {
            id,
            title: title.to_owned(),
            options: options
                .iter()
                .map(|(v, t)| ((*v).to_owned(), (*t).to_owned()))
                .collect(),
        }
    }

    /// Whether `value` may be stored in this field.
    pub(crate) fn accepts(&self, value: &Value) -> bool {
        match value {
            Value::Null => true,
            Value::String(s) if self.options.is_empty() => s.chars().count() <= 65_535,
            Value::String(s) => self.options.iter().any(|(v, _)| v == s),
            Value::Number(_) | Value::Bool(_) => self.options.is_empty(),
            _ => false,
        }
    }
}

/// A ticket comment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Comment {
    /// Comment id.
    pub id: u64,
    /// Author user id.
    pub author_id: u64,
    /// Plain-text body.
    pub body: String,
    /// Public reply (`true`) or internal note (`false`).
    pub public: bool,
    /// When it was written.
    pub created_at: Timestamp,
}

impl Comment {
    pub(crate) fn json(&self) -> Value {
        let escaped = self
            .body
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        json!({"id": self.id, "type": "Comment", "author_id": self.author_id, "body": self.body,
               "html_body": format!("<div class=\"zd-comment\"><p>{}</p></div>", escaped.replace('\n', "<br>")),
               "plain_body": self.body, "public": self.public, "attachments": [],
               "audit_id": self.id, "via": {"channel": "api", "source": {"from": {}, "to": {}, "rel": null}},
               "created_at": zendesk_time(self.created_at)})
    }
}

/// One audit: everything one update changed, and who made it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Audit {
    /// Audit id.
    pub id: u64,
    /// Ticket id.
    pub ticket_id: u64,
    /// Who made the update.
    pub author_id: u64,
    /// When.
    pub created_at: Timestamp,
    /// `Create`, `Change`, `Comment` events as Zendesk renders them.
    pub events: Vec<Value>,
    /// `web` for the handle's humans, `api` for REST calls.
    pub channel: String,
}

impl Audit {
    pub(crate) fn json(&self) -> Value {
        json!({"id": self.id, "ticket_id": self.ticket_id, "created_at": zendesk_time(self.created_at),
               "author_id": self.author_id,
               "metadata": {"system": {"client": "jitbridge-sim", "ip_address": "127.0.0.1"}, "custom": {}},
               "via": {"channel": self.channel, "source": {"from": {}, "to": {}, "rel": null}},
               "events": self.events})
    }
}

/// A ticket.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    pub(crate) id: u64,
    pub(crate) subject: String,
    pub(crate) description: String,
    pub(crate) status: String,
    pub(crate) kind: Option<String>,
    pub(crate) requester_id: u64,
    pub(crate) submitter_id: u64,
    pub(crate) assignee_id: Option<u64>,
    pub(crate) fields: BTreeMap<u64, Value>,
    pub(crate) tags: Vec<String>,
    pub(crate) created_at: Timestamp,
    pub(crate) updated_at: Timestamp,
    pub(crate) comments: Vec<Comment>,
    pub(crate) audits: Vec<Audit>,
}

impl Ticket {
    /// The API representation (`GET /api/v2/tickets/{id}.json` wraps it in `{"ticket": ...}`).
    pub(crate) fn json(&self, base: &str, fields: &[TicketField]) -> Value {
        let custom: Vec<Value> = fields
            .iter()
            .map(|f| json!({"id": f.id, "value": self.fields.get(&f.id).cloned().unwrap_or(Value::Null)}))
            .collect();
        json!({"url": format!("{base}/api/v2/tickets/{}.json", self.id), "id": self.id,
               "external_id": null, "via": {"channel": "web", "source": {"from": {}, "to": {}, "rel": null}},
               "created_at": zendesk_time(self.created_at), "updated_at": zendesk_time(self.updated_at),
               "generated_timestamp": self.updated_at.as_second(),
               "type": self.kind, "subject": self.subject, "raw_subject": self.subject,
               "description": self.description, "priority": null, "status": self.status,
               "recipient": null, "requester_id": self.requester_id, "submitter_id": self.submitter_id,
               "assignee_id": self.assignee_id, "organization_id": null, "group_id": null,
               "collaborator_ids": [], "follower_ids": [], "email_cc_ids": [], "forum_topic_id": null,
               "problem_id": null, "has_incidents": false, "is_public": true, "due_at": null,
               "tags": self.tags, "custom_fields": custom.clone(), "satisfaction_rating": null,
               "sharing_agreement_ids": [], "fields": custom, "followup_ids": [],
               "ticket_form_id": 360000000001u64, "brand_id": 360000000002u64,
               "allow_channelback": false, "allow_attachments": true, "from_messaging_channel": false})
    }

    /// Tags follow drop-down values, as in Zendesk.
    pub(crate) fn retag(&mut self, fields: &[TicketField]) {
        let option_tags: Vec<&String> = fields
            .iter()
            .flat_map(|f| f.options.iter().map(|(v, _)| v))
            .collect();
        self.tags.retain(|t| !option_tags.contains(&t));
        for f in fields.iter().filter(|f| !f.options.is_empty()) {
            if let Some(Value::String(v)) = self.fields.get(&f.id)
                && !self.tags.contains(v)
            {
                self.tags.push(v.clone());
            }
        }
    }
}

/// Zendesk's timestamp form: UTC, second precision, `Z`.
pub fn zendesk_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `{{ticket.status}}` as Zendesk renders it for people: the title-cased status.
pub(crate) fn status_title(status: &str) -> String {
    let mut chars = status.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_uppercase().collect::<String>() + chars.as_str()
    })
}

/// The `Change` audit event Zendesk records for a field update.
pub(crate) fn change_event(id: u64, field_name: &str, value: &Value, previous: &Value) -> Value {
    json!({"id": id, "type": "Change", "field_name": field_name, "value": value, "previous_value": previous})
}
