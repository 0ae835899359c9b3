//! Pure parsing of the Freshservice Workflow Automator "Trigger Webhook" body into
//! [`TicketEvent`]s.
//!
//! Freshservice cannot sign deliveries and has no fixed webhook schema: the body is JSON an
//! admin wrote, with `{{ticket.*}}` placeholders substituted as *text*. Numbers therefore arrive
//! quoted or bare, values that did not render arrive as `""`, and admins add keys of their own.
//! The shipped body (`connectors/freshservice/workflow-webhook.json`) is:
//!
//! ```json
//! {"ticket_id": "{{ticket.id}}", "event": "approval_updated|ticket_created|ticket_updated|status_changed",
//!  "status": "{{ticket.status}}", "approval_status": "{{ticket.approval_status}}",
//!  "requester_email": "{{ticket.requester.email}}", "updated_at": "{{ticket.updated_at}}"}
//! ```
//!
//! The body is only a trigger: the connector re-reads the ticket through the API before anything
//! is granted. This module still refuses a body that cannot name a ticket, performs no I/O, and
//! never panics on any input.

use jiff::Timestamp;
use serde_json::{Map, Value};

use super::options::StatusTable;
use crate::connectors::ParseError;
use crate::ticket::{Approval, EventKind, Person, StatusChange, Ticket, TicketEvent};

/// Most digits in a ticket id (a `u64` has 20; Freshservice's ids are far shorter).
const MAX_ID_DIGITS: usize = 19;
/// Longest ticket prefix accepted before the digits (`SR-`, `INC-`, `CHN-`...).
const MAX_PREFIX_LEN: usize = 10;
/// Longest e-mail address accepted (RFC 5321 path limit).
const MAX_EMAIL_LEN: usize = 254;
/// Longest `updated_at` / `event` text used in a dedupe key.
const MAX_KEY_PART: usize = 64;

/// The `event` values the shipped workflow sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    ApprovalUpdated,
    TicketCreated,
    TicketUpdated,
    StatusChanged,
}

impl Trigger {
    fn from_text(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "approval_updated" => Some(Self::ApprovalUpdated),
            "ticket_created" => Some(Self::TicketCreated),
            "ticket_updated" => Some(Self::TicketUpdated),
            "status_changed" => Some(Self::StatusChanged),
            _ => None,
        }
    }
}

/// What the rendered `approval_status` says, when it rendered as something we recognize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApprovalName {
    Approved,
    Rejected,
    Requested,
    NotRequested,
    Cancelled,
}

impl ApprovalName {
    /// Reads an approval status *name* (case-insensitive, `_`/`-` as spaces). Numbers are not
    /// names: apart from `4` ("Not Requested") their meaning is unconfirmed, so they are
    /// deliberately not recognized here.
    pub(crate) fn from_name(s: &str) -> Option<Self> {
        let normalized: String = s
            .trim()
            .chars()
            .map(|c| if c == '_' || c == '-' { ' ' } else { c })
            .collect::<String>()
            .to_lowercase();
        match normalized
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .as_str()
        {
            "approved" => Some(Self::Approved),
            "rejected" => Some(Self::Rejected),
            "requested" | "pending" | "waiting for approval" => Some(Self::Requested),
            "not requested" => Some(Self::NotRequested),
            "cancelled" | "canceled" => Some(Self::Cancelled),
            _ => None,
        }
    }

    /// Reads the rendered `{{ticket.approval_status}}` of a *trigger* body: a name as
    /// [`ApprovalName::from_name`], or one of the numeric codes, since the placeholder may
    /// render the code rather than the name (`itsm-wire-formats.md` 3.1 marks this [U]).
    ///
    /// Codes are `0` Requested, `1` Approved, `2` Rejected, `3` Cancelled, `4` Not Requested:
    /// `4` is documented, `0`/`3` come from approval records, `1`/`2` are inferred. Reading them
    /// here is safe even if the inference is wrong, because this only decides which path an
    /// event takes, never whether anything is granted: an "approved" trigger is confirmed
    /// against the API's `approval_status_name` before any grant (a wrong code yields
    /// `approval.unconfirmed`, nothing granted), and a "rejected" trigger can only refuse.
    /// Without codes, a Freshservice account whose placeholder renders numbers would never
    /// trigger an approval at all. Any other number is unknown.
    pub(crate) fn from_trigger(s: &str) -> Option<Self> {
        Self::from_name(s).or_else(|| match s.trim() {
            "0" => Some(Self::Requested),
            "1" => Some(Self::Approved),
            "2" => Some(Self::Rejected),
            "3" => Some(Self::Cancelled),
            "4" => Some(Self::NotRequested),
            _ => None,
        })
    }

    /// The normalized approval state used in [`Approval::state`]: only `Approved` is
    /// `approved`, so nothing else can ever read as an approval.
    pub(crate) fn state(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Requested => "pending",
            Self::NotRequested => "not_requested",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Parses one verified delivery body. `base_url` is the connector's configured account, used for
/// the ticket link (never anything from the payload).
pub(crate) fn parse_body(
    connector: &str,
    base_url: &reqwest::Url,
    statuses: &StatusTable,
    body: &[u8],
) -> Result<Vec<TicketEvent>, ParseError> {
    let err = |reason: String| ParseError {
        connector: connector.to_owned(),
        reason,
    };
    let payload: Value = serde_json::from_slice(body).map_err(|e| {
        err(format!(
            "body is not JSON (line {}, column {}); check the workflow's webhook body, a rendered value may contain an unescaped quote",
            e.line(),
            e.column()
        ))
    })?;
    let top = payload
        .as_object()
        .ok_or_else(|| err("body is not a JSON object".to_owned()))?;
    let event_text = match top.get("event") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.as_str(),
        Some(Value::String(_)) => return Err(err("field `event` is empty".to_owned())),
        Some(_) => return Err(err("field `event` is not a string".to_owned())),
        None => return Err(err("missing field `event`".to_owned())),
    };
    let Some(trigger) = Trigger::from_text(event_text) else {
        // Another workflow posting to the same URL: not a change we act on.
        return Ok(Vec::new());
    };
    let id =
        ticket_id(top.get("ticket_id")).map_err(|why| err(format!("field `ticket_id` {why}")))?;

    let status = scalar(top.get("status")).and_then(|s| statuses.display(&s));
    let approval_name = scalar(top.get("approval_status"))
        .as_deref()
        .and_then(ApprovalName::from_trigger);
    let (kind, status_change) = match trigger {
        Trigger::TicketCreated => (EventKind::Created, None),
        Trigger::TicketUpdated => (EventKind::Updated, None),
        Trigger::ApprovalUpdated => match approval_name {
            Some(ApprovalName::Approved) => (EventKind::Approved, None),
            Some(ApprovalName::Rejected) => (EventKind::Rejected, None),
            _ => (EventKind::Updated, None),
        },
        Trigger::StatusChanged => match &status {
            Some(to) => {
                let kind = if statuses.is_resolved(to) {
                    EventKind::Resolved
                } else {
                    EventKind::Updated
                };
                (
                    kind,
                    Some(StatusChange {
                        from: None,
                        to: to.clone(),
                    }),
                )
            }
            None => (EventKind::Updated, None),
        },
    };

    let ticket = Ticket {
        url: ticket_url(base_url, &id),
        key: format!("#{id}"),
        id,
        kind: text(top.get("type")),
        status,
        summary: text(top.get("subject")),
        project: None,
    };
    let occurred_at = top
        .get("updated_at")
        .and_then(timestamp)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let requester = text(top.get("requester_email"))
        .filter(|e| is_plausible_email(e))
        .map(|email| Person {
            id: None,
            email: Some(email),
            name: None,
        });
    let approval = approval_name.map(|a| Approval {
        state: a.state().to_owned(),
        approvers: Vec::new(),
        decided_at: None,
    });

    Ok(vec![TicketEvent {
        connector: connector.to_owned(),
        kind,
        ticket,
        requester,
        actor: None,
        approval,
        status_change,
        occurred_at,
        fields: Value::Object(top.clone()),
        payload: payload.clone(),
    }])
}

/// `freshservice:<ticket_id>:<updated_at>:<event>:<status>:<approval_status>` when the body
/// names the first three (Freshservice gives no delivery id); `None` otherwise, and the caller
/// hashes the body.
///
/// A retried delivery of one change is byte-identical, so it maps to the same key. `updated_at`
/// alone is not enough to tell changes apart: it renders to the second, and two changes in the
/// same second (an approver's click and jitbridge's own status writeback, or a technician
/// resolving the ticket right after) would collapse into one key and the second would be dropped
/// as a "duplicate". The rendered status and approval status (lower-cased, `-` when they did not
/// render) keep such changes distinct.
pub(crate) fn dedupe_key(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let top = v.as_object()?;
    let id = ticket_id(top.get("ticket_id")).ok()?;
    let updated = key_part(scalar(top.get("updated_at"))?)?;
    let event = key_part(scalar(top.get("event"))?.to_ascii_lowercase())?;
    let optional = |name: &str| -> Option<String> {
        match scalar(top.get(name)) {
            None => Some("-".to_owned()),
            Some(s) => key_part(s.to_lowercase()),
        }
    };
    let status = optional("status")?;
    let approval = optional("approval_status")?;
    Some(format!(
        "freshservice:{id}:{updated}:{event}:{status}:{approval}"
    ))
}

/// A dedupe-key component: trimmed, non-empty, bounded, printable ASCII.
fn key_part(s: String) -> Option<String> {
    let s = s.trim();
    (!s.is_empty() && s.len() <= MAX_KEY_PART && s.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .then(|| s.to_owned())
}

/// The ticket id as digits: a JSON number, or a string of digits (surrounding spaces, a leading
/// `#` and a type prefix such as `SR-` or `INC-` are tolerated, since `{{ticket.id}}` may render
/// the display id). The error completes "field `ticket_id` ...".
pub(crate) fn ticket_id(v: Option<&Value>) -> Result<String, &'static str> {
    let raw = match v {
        None => return Err("is missing"),
        Some(Value::Null) => return Err("is null"),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) if n > 0 && n.to_string().len() <= MAX_ID_DIGITS => return Ok(n.to_string()),
            _ => return Err("is not a Freshservice ticket id (a positive whole number)"),
        },
        Some(Value::String(s)) => s.trim(),
        Some(_) => return Err("is not a number or a string"),
    };
    if raw.is_empty() {
        return Err("is empty (the workflow placeholder rendered nothing)");
    }
    let raw = raw.strip_prefix('#').unwrap_or(raw);
    let digits = match raw.split_once('-') {
        Some((prefix, rest))
            if !prefix.is_empty()
                && prefix.len() <= MAX_PREFIX_LEN
                && prefix.bytes().all(|b| b.is_ascii_alphabetic()) =>
        {
            rest
        }
        _ => raw,
    };
    if digits.is_empty()
        || digits.len() > MAX_ID_DIGITS
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err("is not a Freshservice ticket id (digits)");
    }
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        return Err("is not a Freshservice ticket id (zero)");
    }
    Ok(trimmed.to_owned())
}

/// True when `id` can be placed in a REST path: 1–19 ASCII digits.
pub(crate) fn is_ticket_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_DIGITS && id.bytes().all(|b| b.is_ascii_digit())
}

/// `{base_url}/a/tickets/{id}`: the agent-portal link a person opens.
pub(crate) fn ticket_url(base_url: &reqwest::Url, id: &str) -> Option<String> {
    super::endpoint(base_url, &["a", "tickets", id])
        .ok()
        .map(String::from)
}

/// A minimal sanity check, not validation: one `@` with text on both sides, no spaces or
/// control characters, bounded length. Keeps a rendering accident from becoming an identity.
pub(crate) fn is_plausible_email(s: &str) -> bool {
    s.len() <= MAX_EMAIL_LEN
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(s.split_once('@'), Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !domain.contains('@'))
}

/// The value as an object, treating `null` and other types as absent.
pub(crate) fn object(v: Option<&Value>) -> Option<&Map<String, Value>> {
    v.and_then(Value::as_object)
}

/// A non-empty (after trimming) string value.
pub(crate) fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A string or a number, as text (placeholders render numbers either way); `None` for empty.
pub(crate) fn scalar(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An id the API returns as a number (or, tolerated, a digit string).
pub(crate) fn numeric_id(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Number(n) => n.as_u64().filter(|n| *n > 0).map(|n| n.to_string()),
        Value::String(s) => {
            let s = s.trim();
            is_ticket_id(s).then(|| s.to_owned())
        }
        _ => None,
    }
}

/// A Freshservice timestamp: RFC 3339 (`2025-03-14T08:41:37Z`, what the API returns), RFC 2822,
/// `YYYY-MM-DD HH:MM:SS` taken as UTC, or epoch seconds. `None` for anything else.
pub(crate) fn timestamp(v: &Value) -> Option<Timestamp> {
    let s = match v {
        Value::String(s) => s.trim(),
        Value::Number(n) => return n.as_i64().and_then(|s| Timestamp::from_second(s).ok()),
        _ => return None,
    };
    if s.is_empty() || s.len() > MAX_KEY_PART {
        return None;
    }
    if let Ok(t) = s.parse::<Timestamp>() {
        return Some(t);
    }
    if let Ok(z) = jiff::fmt::rfc2822::parse(s) {
        return Some(z.timestamp());
    }
    if let Ok(dt) = s.parse::<jiff::civil::DateTime>()
        && let Ok(z) = dt.to_zoned_datetime(jiff::tz::TimeZone::UTC)
    {
        return Some(z.timestamp());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<i64>()
            .ok()
            .and_then(|n| Timestamp::from_second(n).ok());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const CONNECTOR: &str = "freshservice";

    fn base() -> reqwest::Url {
        reqwest::Url::parse("https://example.freshservice.com").expect("url")
    }

    fn parse(body: &Value) -> Result<Vec<TicketEvent>, ParseError> {
        parse_body(
            CONNECTOR,
            &base(),
            &StatusTable::default(),
            &serde_json::to_vec(body).expect("json"),
        )
    }

    fn one(body: &Value) -> TicketEvent {
        let mut events = parse(body).expect("parses");
        assert_eq!(events.len(), 1, "{events:?}");
        events.remove(0)
    }

    /// The shipped workflow body as Freshservice renders it for an approved request.
    fn approved() -> Value {
        json!({"ticket_id": "123", "event": "approval_updated", "status": "Open",
               "approval_status": "Approved", "requester_email": "req@example.com",
               "updated_at": "2025-03-14T08:41:37Z"})
    }

    #[test]
    fn approved_request_becomes_approved_event() {
        let e = one(&approved());
        assert_eq!(e.connector, "freshservice");
        assert_eq!(e.kind, EventKind::Approved);
        assert_eq!(e.ticket.id, "123");
        assert_eq!(e.ticket.key, "#123");
        assert_eq!(
            e.ticket.url.as_deref(),
            Some("https://example.freshservice.com/a/tickets/123")
        );
        assert_eq!(e.ticket.status.as_deref(), Some("Open"));
        assert_eq!(
            e.requester.and_then(|r| r.email).as_deref(),
            Some("req@example.com")
        );
        assert_eq!(e.actor, None, "the body names no approver; the API does");
        assert_eq!(e.approval.map(|a| a.state).as_deref(), Some("approved"));
        assert_eq!(e.status_change, None);
        assert_eq!(
            e.occurred_at,
            "2025-03-14T08:41:37Z".parse::<Timestamp>().expect("ts")
        );
        assert_eq!(e.fields["approval_status"], "Approved");
        assert_eq!(e.payload, approved());
    }

    #[test]
    fn unquoted_numeric_ticket_id_is_accepted() {
        let mut body = approved();
        body["ticket_id"] = json!(123);
        assert_eq!(one(&body).ticket.id, "123");
    }

    #[test]
    fn quoted_ticket_id_with_spaces_or_display_prefix_is_accepted() {
        for raw in [" 123 ", "#123", "SR-123", "#INC-123", "000123"] {
            let mut body = approved();
            body["ticket_id"] = json!(raw);
            assert_eq!(one(&body).ticket.id, "123", "{raw:?}");
        }
    }

    #[test]
    fn approval_update_with_empty_ticket_id_is_rejected_naming_the_field() {
        let mut body = approved();
        body["ticket_id"] = json!("");
        let e = parse(&body).expect_err("empty placeholder");
        assert_eq!(e.connector, "freshservice");
        assert!(
            e.reason.contains("`ticket_id`") && e.reason.contains("empty"),
            "{e}"
        );
    }

    #[test]
    fn ticket_ids_that_are_not_numbers_are_rejected() {
        for bad in [
            json!("{{ticket.id}}"),
            json!("12a"),
            json!("../agents/me"),
            json!("1/2"),
            json!("-5"),
            json!(-5),
            json!(1.5),
            json!(0),
            json!("0"),
            json!("SR-"),
            json!("SR-12-3"),
            json!(null),
            json!(true),
            json!({"id": 1}),
            json!("99999999999999999999999"),
        ] {
            let mut body = approved();
            body["ticket_id"] = bad.clone();
            let e = parse(&body).expect_err("must be refused");
            assert!(e.reason.contains("`ticket_id`"), "{bad}: {e}");
        }
        let mut body = approved();
        body.as_object_mut().expect("obj").remove("ticket_id");
        assert!(
            parse(&body)
                .expect_err("missing")
                .reason
                .contains("missing")
        );
    }

    #[test]
    fn rejected_approval_becomes_rejected_event() {
        let mut body = approved();
        body["approval_status"] = json!("rejected");
        let e = one(&body);
        assert_eq!(e.kind, EventKind::Rejected);
        assert_eq!(e.approval.map(|a| a.state).as_deref(), Some("rejected"));
    }

    #[test]
    fn approval_update_whose_status_did_not_render_is_only_an_update() {
        for raw in [
            json!(""),
            json!("0"),
            json!(3),
            json!("7"),
            json!("-1"),
            json!("Requested"),
            json!("Something else"),
        ] {
            let mut body = approved();
            body["approval_status"] = raw.clone();
            let e = one(&body);
            assert_eq!(e.kind, EventKind::Updated, "{raw}");
            assert_ne!(
                e.approval.map(|a| a.state).as_deref(),
                Some("approved"),
                "{raw}"
            );
        }
        let mut body = approved();
        body.as_object_mut().expect("obj").remove("approval_status");
        assert_eq!(one(&body).kind, EventKind::Updated);
    }

    #[test]
    fn approval_codes_rendered_by_the_placeholder_still_trigger() {
        for (raw, kind, state) in [
            (json!("1"), EventKind::Approved, "approved"),
            (json!(1), EventKind::Approved, "approved"),
            (json!(" 2 "), EventKind::Rejected, "rejected"),
            (json!(2), EventKind::Rejected, "rejected"),
            (json!("0"), EventKind::Updated, "pending"),
            (json!("3"), EventKind::Updated, "cancelled"),
            (json!("4"), EventKind::Updated, "not_requested"),
        ] {
            let mut body = approved();
            body["approval_status"] = raw.clone();
            let e = one(&body);
            assert_eq!(e.kind, kind, "{raw}");
            assert_eq!(e.approval.map(|a| a.state).as_deref(), Some(state), "{raw}");
        }
        // Only on an approval trigger: a ticket_updated carrying code 1 approves nothing.
        let mut body = approved();
        body["event"] = json!("ticket_updated");
        body["approval_status"] = json!("1");
        assert_eq!(one(&body).kind, EventKind::Updated);
    }

    #[test]
    fn created_ticket_is_created() {
        let mut body = approved();
        body["event"] = json!("ticket_created");
        body["approval_status"] = json!("Not Requested");
        let e = one(&body);
        assert_eq!(e.kind, EventKind::Created);
        assert_eq!(
            e.approval.map(|a| a.state).as_deref(),
            Some("not_requested")
        );
    }

    #[test]
    fn status_change_maps_codes_to_names() {
        let cases = [
            (json!("2"), "Open", EventKind::Updated),
            (json!(3), "Pending", EventKind::Updated),
            (json!("4"), "Resolved", EventKind::Resolved),
            (json!(5), "Closed", EventKind::Resolved),
            (json!("Closed"), "Closed", EventKind::Resolved),
            (
                json!("Awaiting parts"),
                "Awaiting parts",
                EventKind::Updated,
            ),
            (json!("17"), "17", EventKind::Updated),
        ];
        for (raw, name, kind) in cases {
            let mut body = approved();
            body["event"] = json!("status_changed");
            body["status"] = raw.clone();
            let e = one(&body);
            assert_eq!(e.kind, kind, "{raw}");
            assert_eq!(
                e.status_change,
                Some(StatusChange {
                    from: None,
                    to: name.into()
                }),
                "{raw}"
            );
            assert_eq!(e.ticket.status.as_deref(), Some(name));
        }
    }

    #[test]
    fn custom_status_names_come_from_the_configured_table() {
        let overrides = [("Awaiting Approval".to_owned(), 6)].into_iter().collect();
        let table = StatusTable::with_overrides(&overrides);
        let body = json!({"ticket_id": 9, "event": "status_changed", "status": "6"});
        let events = parse_body(
            CONNECTOR,
            &base(),
            &table,
            &serde_json::to_vec(&body).expect("json"),
        )
        .expect("parses");
        assert_eq!(
            events[0].status_change.as_ref().map(|s| s.to.as_str()),
            Some("Awaiting Approval")
        );
    }

    #[test]
    fn status_change_that_did_not_render_is_a_plain_update() {
        let body = json!({"ticket_id": "5", "event": "status_changed", "status": ""});
        let e = one(&body);
        assert_eq!(e.kind, EventKind::Updated);
        assert_eq!(e.status_change, None);
        assert_eq!(e.ticket.status, None);
    }

    #[test]
    fn ticket_updated_is_updated_without_status_change() {
        let mut body = approved();
        body["event"] = json!("ticket_updated");
        let e = one(&body);
        assert_eq!(e.kind, EventKind::Updated);
        assert_eq!(e.status_change, None);
    }

    #[test]
    fn event_names_are_case_insensitive() {
        let mut body = approved();
        body["event"] = json!(" Approval_Updated ");
        assert_eq!(one(&body).kind, EventKind::Approved);
    }

    #[test]
    fn unknown_keys_and_empty_strings_are_tolerated() {
        let body = json!({"ticket_id": "77", "event": "ticket_updated", "status": "", "approval_status": "",
            "requester_email": "", "updated_at": "", "u_target": "WS-0042", "nested": {"a": [1, 2]},
            "subject": "Local admin please", "type": "Service Request"});
        let e = one(&body);
        assert_eq!(e.ticket.id, "77");
        assert_eq!(e.requester, None);
        assert_eq!(e.approval, None);
        assert_eq!(e.ticket.status, None);
        assert_eq!(
            e.occurred_at,
            Timestamp::UNIX_EPOCH,
            "no updated_at: epoch 0"
        );
        assert_eq!(e.fields["u_target"], "WS-0042");
        assert_eq!(e.ticket.summary.as_deref(), Some("Local admin please"));
        assert_eq!(e.ticket.kind.as_deref(), Some("Service Request"));
    }

    #[test]
    fn implausible_requester_email_is_dropped() {
        for bad in [
            "{{ticket.requester.email}}",
            "a b@example.com",
            "no-at-sign",
            "@example.com",
            "a@",
        ] {
            let mut body = approved();
            body["requester_email"] = json!(bad);
            assert_eq!(one(&body).requester, None, "{bad}");
        }
    }

    #[test]
    fn updated_at_in_other_renderings_is_understood() {
        let cases = [
            ("2025-03-14T08:41:37+01:00", "2025-03-14T07:41:37Z"),
            ("2025-03-14 08:41:37", "2025-03-14T08:41:37Z"),
            ("Fri, 14 Mar 2025 08:41:37 +0000", "2025-03-14T08:41:37Z"),
            ("1741941697", "2025-03-14T08:41:37Z"),
        ];
        for (raw, expected) in cases {
            let mut body = approved();
            body["updated_at"] = json!(raw);
            assert_eq!(
                one(&body).occurred_at,
                expected.parse::<Timestamp>().expect("ts"),
                "{raw}"
            );
        }
        let mut body = approved();
        body["updated_at"] = json!("last Tuesday");
        assert_eq!(one(&body).occurred_at, Timestamp::UNIX_EPOCH);
    }

    #[test]
    fn unknown_event_is_ignored_not_an_error() {
        let body = json!({"ticket_id": "1", "event": "note_added"});
        assert_eq!(parse(&body), Ok(vec![]));
    }

    #[test]
    fn garbage_bodies_are_parse_errors_naming_the_problem() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "not JSON"),
            (b"not json", "not JSON"),
            (
                br#"{"ticket_id": "12"3", "event": "ticket_created"}"#,
                "not JSON",
            ),
            (b"[1,2]", "not a JSON object"),
            (b"null", "not a JSON object"),
            (b"{}", "`event`"),
            (br#"{"ticket_id": "1", "event": ""}"#, "`event`"),
            (br#"{"ticket_id": "1", "event": 3}"#, "`event`"),
            (br#"{"event": "ticket_created"}"#, "`ticket_id`"),
            (
                br#"{"event": "status_changed", "ticket_id": ""}"#,
                "`ticket_id`",
            ),
        ];
        for (body, expected) in cases {
            let e = parse_body(CONNECTOR, &base(), &StatusTable::default(), body)
                .expect_err("must fail");
            assert_eq!(e.connector, "freshservice");
            assert!(
                e.reason.contains(expected),
                "{:?}: {}",
                String::from_utf8_lossy(body),
                e.reason
            );
        }
    }

    #[test]
    fn dedupe_key_uses_ticket_update_time_event_and_states() {
        let body = serde_json::to_vec(&approved()).expect("json");
        assert_eq!(
            dedupe_key(&body).as_deref(),
            Some("freshservice:123:2025-03-14T08:41:37Z:approval_updated:open:approved")
        );
        let mut other = approved();
        other["requester_email"] = json!("x@example.com");
        assert_eq!(
            dedupe_key(&serde_json::to_vec(&other).expect("json")),
            dedupe_key(&body),
            "same ticket, same change, same event"
        );
        let mut same_second = approved();
        same_second["event"] = json!("status_changed");
        let first = dedupe_key(&serde_json::to_vec(&same_second).expect("json"));
        same_second["status"] = json!("Resolved");
        assert_ne!(
            dedupe_key(&serde_json::to_vec(&same_second).expect("json")),
            first,
            "two status changes in the same second are two changes"
        );
        let mut unrendered = approved();
        unrendered["status"] = json!("");
        unrendered
            .as_object_mut()
            .expect("obj")
            .remove("approval_status");
        assert_eq!(
            dedupe_key(&serde_json::to_vec(&unrendered).expect("json")).as_deref(),
            Some("freshservice:123:2025-03-14T08:41:37Z:approval_updated:-:-")
        );
        let mut later = approved();
        later["updated_at"] = json!("2025-03-14T08:41:38Z");
        assert_ne!(
            dedupe_key(&serde_json::to_vec(&later).expect("json")),
            dedupe_key(&body)
        );
        let mut empty = approved();
        empty["updated_at"] = json!("");
        assert_eq!(dedupe_key(&serde_json::to_vec(&empty).expect("json")), None);
        assert_eq!(dedupe_key(b"garbage"), None);
        let mut hostile = approved();
        hostile["updated_at"] = json!("x\ny");
        assert_eq!(
            dedupe_key(&serde_json::to_vec(&hostile).expect("json")),
            None
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            "(?s).{0,24}".prop_map(Value::String),
            "[0-9]{0,22}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("ticket_id".to_owned()),
                        Just("event".to_owned()),
                        Just("status".to_owned()),
                        Just("approval_status".to_owned()),
                        Just("requester_email".to_owned()),
                        Just("updated_at".to_owned()),
                        "[a-z_]{0,10}",
                    ],
                    inner,
                    0..8
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_event() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!("approval_updated")),
            Just(json!("ticket_created")),
            Just(json!("ticket_updated")),
            Just(json!("status_changed")),
            "(?s).{0,16}".prop_map(Value::String),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_json_never_panics(v in arb_json()) {
            let bytes = serde_json::to_vec(&v).expect("json");
            let _ = parse_body(CONNECTOR, &base(), &StatusTable::default(), &bytes);
            let _ = dedupe_key(&bytes);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_body(CONNECTOR, &base(), &StatusTable::default(), &bytes);
            let _ = dedupe_key(&bytes);
        }

        #[test]
        fn shaped_bodies_never_panic_and_ids_are_always_digits(
            id in arb_json(), event in arb_event(), status in arb_json(),
            approval in arb_json(), email in arb_json(), updated in arb_json(),
        ) {
            let body = json!({"ticket_id": id, "event": event, "status": status,
                "approval_status": approval, "requester_email": email, "updated_at": updated});
            if let Ok(events) = parse(&body) {
                for e in events {
                    prop_assert!(is_ticket_id(&e.ticket.id), "{:?}", e.ticket.id);
                    prop_assert_eq!(&e.ticket.key, &format!("#{}", e.ticket.id));
                    // Only a rendered "approved" may ever produce an Approved event.
                    if e.kind == EventKind::Approved {
                        prop_assert_eq!(e.approval.map(|a| a.state), Some("approved".to_owned()));
                    }
                }
            }
        }

        #[test]
        fn ticket_id_round_trips_for_every_positive_number(n in 1u64..=999_999_999_999_999_999) {
            prop_assert_eq!(ticket_id(Some(&json!(n))), Ok(n.to_string()));
            prop_assert_eq!(ticket_id(Some(&json!(n.to_string()))), Ok(n.to_string()));
            prop_assert_eq!(ticket_id(Some(&json!(format!("SR-{n}")))), Ok(n.to_string()));
        }
    }
}
