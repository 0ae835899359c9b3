//! Webhook emission the way a Zendesk trigger does it: a trigger whose conditions match an update
//! "notifies" a webhook, whose request is a POST of the JSON body written in the trigger action,
//! with Zendesk placeholders (`{{ticket.id}}`, `{{current_user.email}}`,
//! `{{ticket.ticket_field_<id>}}`, ...) substituted as plain text, and authenticated with the
//! webhook's bearer token. Zendesk also sends `X-Zendesk-Webhook-Id` and a per-invocation
//! `X-Zendesk-Webhook-Invocation-Id`.
//!
//! Placeholders are substituted as text, exactly like Zendesk: a value with a quote breaks the
//! JSON, which the receiver must reject rather than misread. Unknown placeholders render empty.

use serde_json::Value;

use super::model::{Ticket, TicketField, User, status_title, zendesk_time};

/// Longest placeholder name considered.
const MAX_PLACEHOLDER: usize = 128;

/// When a trigger fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerOn {
    /// "Ticket is Created".
    Created,
    /// "Ticket is Updated" and the custom field with this id "Changed".
    FieldChanged(u64),
    /// "Status Changed to" one of these (lower-case status names).
    StatusChangedTo(Vec<String>),
}

/// A trigger with a "Notify active webhook" action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// Title, for people.
    pub title: String,
    /// Condition.
    pub on: TriggerOn,
    /// The JSON body of the action, with placeholders.
    pub body: String,
}

/// The webhook the triggers notify.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Endpoint URL (e.g. `http://127.0.0.1:8080/webhooks/zendesk`).
    pub url: String,
    /// Bearer token sent as `Authorization: Bearer <token>`.
    pub bearer_token: String,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("bearer_token", &"<redacted>")
            .finish()
    }
}

/// What a placeholder may read.
pub(crate) struct Scope<'a> {
    pub(crate) base: &'a str,
    pub(crate) ticket: &'a Ticket,
    pub(crate) fields: &'a [TicketField],
    pub(crate) users: &'a [User],
    pub(crate) current_user: u64,
}

impl Scope<'_> {
    fn user(&self, id: Option<u64>) -> Option<&User> {
        id.and_then(|id| self.users.iter().find(|u| u.id == id))
    }

    fn field_text(&self, id: u64) -> String {
        match self.ticket.fields.get(&id) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    }

    /// The value of one placeholder name (without braces).
    fn value(&self, name: &str) -> String {
        let t = self.ticket;
        let host = self
            .base
            .split_once("://")
            .map_or(self.base, |(_, rest)| rest);
        let person = |prefix: &str, id: Option<u64>| -> Option<String> {
            let field = name.strip_prefix(prefix)?;
            let u = self.user(id)?;
            Some(match field {
                "id" => u.id.to_string(),
                "email" => u.email.clone(),
                "name" => u.name.clone(),
                "first_name" => u.name.split(' ').next().unwrap_or_default().to_owned(),
                _ => String::new(),
            })
        };
        if let Some(v) = person("ticket.requester.", Some(t.requester_id))
            .or_else(|| person("ticket.assignee.", t.assignee_id))
            .or_else(|| person("current_user.", Some(self.current_user)))
        {
            return v;
        }
        if let Some(id) = name
            .strip_prefix("ticket.ticket_field_option_title_")
            .and_then(|s| s.parse::<u64>().ok())
        {
            let value = self.field_text(id);
            return self
                .fields
                .iter()
                .find(|f| f.id == id)
                .and_then(|f| f.options.iter().find(|(v, _)| *v == value))
                .map(|(_, title)| title.clone())
                .unwrap_or_default();
        }
        if let Some(id) = name
            .strip_prefix("ticket.ticket_field_")
            .and_then(|s| s.parse::<u64>().ok())
        {
            return self.field_text(id);
        }
        match name {
            "ticket.id" => t.id.to_string(),
            "ticket.title" => t.subject.clone(),
            "ticket.description" => t.description.clone(),
            "ticket.status" => status_title(&t.status),
            "ticket.ticket_type" => t.kind.as_deref().map(status_title).unwrap_or_default(),
            "ticket.url" => format!("{host}/agent/tickets/{}", t.id),
            "ticket.link" => format!("{}/agent/tickets/{}", self.base, t.id),
            "ticket.tags" => t.tags.join(" "),
            "ticket.created_at_with_timestamp" => zendesk_time(t.created_at),
            "ticket.updated_at_with_timestamp" => zendesk_time(t.updated_at),
            "ticket.account" => "jitbridge-sim".to_owned(),
            _ => String::new(),
        }
    }
}

/// Substitutes every `{{name}}` (spaces allowed inside the braces) in `template`.
pub(crate) fn render(template: &str, scope: &Scope<'_>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(rest.get(..start).unwrap_or_default());
        let after = rest.get(start + 2..).unwrap_or_default();
        match after.find("}}") {
            Some(end) if end <= MAX_PLACEHOLDER => {
                let name = after.get(..end).unwrap_or_default().trim();
                out.push_str(&scope.value(name));
                rest = after.get(end + 2..).unwrap_or_default();
            }
            _ => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}
