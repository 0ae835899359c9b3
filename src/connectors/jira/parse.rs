//! Pure parsing of Jira Cloud / JSM webhook bodies into [`TicketEvent`]s, plus the approval
//! normalization shared with the REST confirmation.
//!
//! Jira's webhook bodies are loosely typed: `user` and `changelog` may be missing, custom fields are
//! `null` on most issues, rich text may be a wiki string or an ADF object, and admins can invent new
//! `issue_event_type_name` values. This module therefore reads the body as a [`serde_json::Value`]
//! and picks out only what it needs, tolerating everything else. It performs no I/O and never
//! panics on any input; a body that cannot describe a ticket is a [`ParseError`] naming the field.

use jiff::Timestamp;
use serde_json::{Map, Value};

use crate::connectors::ParseError;
use crate::ticket::{Approval, EventKind, Person, StatusChange, Ticket, TicketEvent};

/// Longest issue key or id accepted; Jira's own are far shorter.
const MAX_IDENT_LEN: usize = 255;

/// Parses one verified delivery body. `base_url` is the connector's configured site, used for the
/// ticket link (never the payload's `self`, which a sender controls).
pub(crate) fn parse_body(
    connector: &str,
    base_url: &reqwest::Url,
    body: &[u8],
) -> Result<Vec<TicketEvent>, ParseError> {
    let err = |reason: String| ParseError {
        connector: connector.to_owned(),
        reason,
    };
    let payload: Value = serde_json::from_slice(body).map_err(|e| {
        err(format!(
            "body is not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let top = payload
        .as_object()
        .ok_or_else(|| err("body is not a JSON object".to_owned()))?;
    let event = match top.get("webhookEvent") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(err("field `webhookEvent` is not a string".to_owned())),
        None => return Err(err("missing field `webhookEvent`".to_owned())),
    };
    let issue = object(top.get("issue"));
    let fields = object(issue.and_then(|i| i.get("fields")));

    let (kind, status_change) = match event {
        "jira:issue_created" => (EventKind::Created, None),
        "jira:issue_deleted" => (EventKind::Cancelled, None),
        "comment_created" => (EventKind::Commented, None),
        "jira:issue_updated" => match status_change(top, fields) {
            Some(change) => (EventKind::Updated, Some(change)),
            None if object(top.get("comment")).is_some() => (EventKind::Commented, None),
            None => (EventKind::Updated, None),
        },
        // Worklogs, sprints, projects, comment edits...: not ticket changes we act on.
        _ => return Ok(Vec::new()),
    };

    let issue = issue.ok_or_else(|| err("missing field `issue`".to_owned()))?;
    let id = ident(issue.get("id")).ok_or_else(|| err("missing field `issue.id`".to_owned()))?;
    if !is_safe_ident(&id) {
        return Err(err("field `issue.id` is not a Jira issue id".to_owned()));
    }
    let key = text(issue.get("key")).ok_or_else(|| err("missing field `issue.key`".to_owned()))?;
    if !is_safe_ident(&key) {
        return Err(err("field `issue.key` is not a Jira issue key".to_owned()));
    }

    let ticket = Ticket {
        url: browse_url(base_url, &key),
        id,
        key,
        kind: fields.and_then(|f| name_of(f.get("issuetype"))),
        status: fields.and_then(|f| name_of(f.get("status"))),
        summary: fields.and_then(|f| text(f.get("summary"))),
        project: fields
            .and_then(|f| object(f.get("project")))
            .and_then(|p| text(p.get("key"))),
    };
    let occurred_at = top
        .get("timestamp")
        .and_then(epoch_millis)
        .or_else(|| fields.and_then(|f| f.get("updated")).and_then(date))
        .unwrap_or(Timestamp::UNIX_EPOCH);

    Ok(vec![TicketEvent {
        connector: connector.to_owned(),
        kind,
        requester: fields.and_then(|f| person(f.get("reporter"))),
        actor: person(top.get("user")),
        approval: fields.and_then(approval_in_fields),
        status_change,
        occurred_at,
        ticket,
        fields: fields.map_or_else(|| Value::Object(Map::new()), |f| Value::Object(f.clone())),
        payload,
    }])
}

/// True when `s` can be placed in a REST path as an issue key or id: non-empty, bounded, and made
/// only of ASCII letters, digits, `-` and `_` (so never `..`, `/`, `?` or `#`).
pub(crate) fn is_safe_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_IDENT_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `{base_url}/browse/{key}`: the link a person opens.
fn browse_url(base_url: &reqwest::Url, key: &str) -> Option<String> {
    super::endpoint(base_url, &["browse", key])
        .ok()
        .map(String::from)
}

/// The status change carried by the changelog: the last item whose `field` is `status` (a
/// custom field that an admin happened to name "status" does not count).
fn status_change(
    top: &Map<String, Value>,
    fields: Option<&Map<String, Value>>,
) -> Option<StatusChange> {
    let items = object(top.get("changelog"))?.get("items")?.as_array()?;
    let item = items
        .iter()
        .filter_map(Value::as_object)
        .rev()
        .find(|item| {
            item.get("field").and_then(Value::as_str) == Some("status")
                && item.get("fieldtype").and_then(Value::as_str) != Some("custom")
        })?;
    let to =
        text(item.get("toString")).or_else(|| fields.and_then(|f| name_of(f.get("status"))))?;
    Some(StatusChange {
        from: text(item.get("fromString")),
        to,
    })
}

/// The JSM approvals found in the issue's fields, located by shape (an array of objects with
/// `finalDecision` and `approvers`) because the custom field id differs from site to site.
fn approval_in_fields(fields: &Map<String, Value>) -> Option<Approval> {
    fields
        .values()
        .filter_map(Value::as_array)
        .find(|a| is_approval_list(a))
        .and_then(|a| derive_approval(a))
}

/// True for a non-empty array of JSM `ApprovalDTO`-shaped objects.
fn is_approval_list(values: &[Value]) -> bool {
    !values.is_empty()
        && values.iter().all(|v| {
            v.as_object()
                .is_some_and(|o| o.contains_key("finalDecision") && o.contains_key("approvers"))
        })
}

/// A JSM approval's final decision. Anything unrecognized counts as still pending, so that an
/// unexpected value can never read as an approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Pending,
    Approved,
    Declined,
}

fn decision(v: Option<&Value>) -> Decision {
    match v
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("approved") => Decision::Approved,
        Some("declined") => Decision::Declined,
        _ => Decision::Pending,
    }
}

/// Normalizes a list of JSM approval records (`ApprovalDTO`s) into one [`Approval`].
///
/// `None` when there are no records. `pending` (with no approvers) when any record is still
/// pending; otherwise the most recently completed record (by `completedDate`, else `createdDate`,
/// else its position) decides `approved` or `rejected`, listing the approvers whose own
/// `approverDecision` matches that outcome.
pub(crate) fn derive_approval(records: &[Value]) -> Option<Approval> {
    if records.is_empty() {
        return None;
    }
    if records
        .iter()
        .any(|r| decision(r.get("finalDecision")) == Decision::Pending)
    {
        return Some(Approval {
            state: "pending".to_owned(),
            approvers: Vec::new(),
            decided_at: None,
        });
    }
    let (_, deciding) = records.iter().enumerate().max_by_key(|(i, r)| {
        (
            r.get("completedDate")
                .and_then(date)
                .or_else(|| r.get("createdDate").and_then(date)),
            *i,
        )
    })?;
    let outcome = decision(deciding.get("finalDecision"));
    let (state, wanted) = match outcome {
        Decision::Approved => ("approved", "approved"),
        _ => ("rejected", "declined"),
    };
    let approvers = deciding
        .get("approvers")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter(|a| {
                    a.get("approverDecision")
                        .and_then(Value::as_str)
                        .is_some_and(|d| d.eq_ignore_ascii_case(wanted))
                })
                .filter_map(|a| person(a.get("approver")))
                .collect()
        })
        .unwrap_or_default();
    Some(Approval {
        state: state.to_owned(),
        approvers,
        decided_at: deciding.get("completedDate").and_then(date),
    })
}

/// A Jira user object as a [`Person`]; `None` when absent, `null` or carrying no identity at all.
pub(crate) fn person(v: Option<&Value>) -> Option<Person> {
    let o = object(v)?;
    let p = Person {
        id: text(o.get("accountId")),
        email: text(o.get("emailAddress")),
        name: text(o.get("displayName")),
    };
    (p.id.is_some() || p.email.is_some() || p.name.is_some()).then_some(p)
}

/// `{ "name": ... }` of a status, issue type, etc.
pub(crate) fn name_of(v: Option<&Value>) -> Option<String> {
    object(v).and_then(|o| text(o.get("name")))
}

/// The value as an object, treating `null` and other types as absent.
pub(crate) fn object(v: Option<&Value>) -> Option<&Map<String, Value>> {
    v.and_then(Value::as_object)
}

/// A non-empty string value.
pub(crate) fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// An identifier sent as a string or, tolerated, as a number.
pub(crate) fn ident(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// Epoch milliseconds as a number (or a string of digits).
fn epoch_millis(v: &Value) -> Option<Timestamp> {
    let ms = match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 1e17)
                .map(|f| f as i64)
        })?,
        Value::String(s) => s.trim().parse::<i64>().ok()?,
        _ => return None,
    };
    Timestamp::from_millisecond(ms).ok()
}

/// A Jira date: an ISO 8601 string (`2024-03-14T10:01:37.640+0000`), epoch milliseconds, or a
/// JSM date object (`{epochMillis, iso8601, ...}`).
pub(crate) fn date(v: &Value) -> Option<Timestamp> {
    match v {
        Value::String(s) => s
            .trim()
            .parse::<Timestamp>()
            .ok()
            .or_else(|| epoch_millis(v)),
        Value::Number(_) => epoch_millis(v),
        Value::Object(o) => o
            .get("epochMillis")
            .and_then(epoch_millis)
            .or_else(|| o.get("iso8601").and_then(date)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const CONNECTOR: &str = "jira";

    fn base() -> reqwest::Url {
        reqwest::Url::parse("https://example.atlassian.net").expect("url")
    }

    fn parse(body: &Value) -> Result<Vec<TicketEvent>, ParseError> {
        parse_body(CONNECTOR, &base(), &serde_json::to_vec(body).expect("json"))
    }

    fn one(body: &Value) -> TicketEvent {
        let mut events = parse(body).expect("parses");
        assert_eq!(events.len(), 1);
        events.remove(0)
    }

    fn approvals_field(final_decision: &str, approver_decision: &str) -> Value {
        json!([{
            "id": "1", "name": "Manager approval", "finalDecision": final_decision, "canAnswerApproval": false,
            "approvers": [
                {"approver": {"accountId": "acc-approver", "displayName": "Approver", "emailAddress": "boss@example.com"},
                 "approverDecision": approver_decision},
                {"approver": {"accountId": "acc-other", "displayName": "Other"}, "approverDecision": "pending"}
            ],
            "createdDate": {"epochMillis": 1741940000000_i64, "iso8601": "2025-03-14T08:13:20+0000"},
            "completedDate": {"epochMillis": 1741941697000_i64, "iso8601": "2025-03-14T08:41:37+0000"}
        }])
    }

    /// The documented `jira:issue_updated` body of a granted JSM approval.
    fn approval_update() -> Value {
        json!({
          "timestamp": 1741941697640_i64,
          "webhookEvent": "jira:issue_updated",
          "issue_event_type_name": "issue_generic",
          "user": {"accountId": "5b10ac8d82e05b22cc7d4ef5", "displayName": "Approver", "active": true},
          "issue": {"id": "10234", "key": "ACCESS-87", "self": "https://evil.example/rest/api/2/10234",
            "fields": {"status": {"id": "10012", "name": "Approved", "statusCategory": {"id": 4, "key": "indeterminate"}},
              "issuetype": {"id": "10008", "name": "Service Request with Approvals"},
              "project": {"id": "10002", "key": "ACCESS"},
              "summary": "Local admin on WS-0042",
              "reporter": {"accountId": "712020:requester", "displayName": "Requester", "emailAddress": "req@example.com"},
              "customfield_10050": "justification text", "customfield_10053": null,
              "customfield_10099": approvals_field("approved", "approved")}},
          "changelog": {"id": "10619", "items": [{"field": "status", "fieldtype": "jira", "fieldId": "status",
            "from": "10005", "fromString": "Waiting for approval", "to": "10012", "toString": "Approved"}]}
        })
    }

    #[test]
    fn approval_update_becomes_updated_event_with_status_change_and_approval() {
        let e = one(&approval_update());
        assert_eq!(e.connector, "jira");
        assert_eq!(e.kind, EventKind::Updated);
        assert_eq!(
            e.status_change,
            Some(StatusChange {
                from: Some("Waiting for approval".into()),
                to: "Approved".into()
            })
        );
        assert_eq!(e.ticket.id, "10234");
        assert_eq!(e.ticket.key, "ACCESS-87");
        assert_eq!(
            e.ticket.url.as_deref(),
            Some("https://example.atlassian.net/browse/ACCESS-87")
        );
        assert_eq!(
            e.ticket.kind.as_deref(),
            Some("Service Request with Approvals")
        );
        assert_eq!(e.ticket.status.as_deref(), Some("Approved"));
        assert_eq!(e.ticket.summary.as_deref(), Some("Local admin on WS-0042"));
        assert_eq!(e.ticket.project.as_deref(), Some("ACCESS"));
        let requester = e.requester.expect("requester");
        assert_eq!(requester.id.as_deref(), Some("712020:requester"));
        assert_eq!(requester.email.as_deref(), Some("req@example.com"));
        assert_eq!(requester.name.as_deref(), Some("Requester"));
        assert_eq!(
            e.actor.and_then(|a| a.id).as_deref(),
            Some("5b10ac8d82e05b22cc7d4ef5")
        );
        assert_eq!(
            e.occurred_at,
            Timestamp::from_millisecond(1741941697640).expect("ts")
        );
        assert_eq!(e.fields["customfield_10050"], "justification text");
        assert_eq!(e.fields["customfield_10053"], Value::Null);
        assert_eq!(e.payload["issue_event_type_name"], "issue_generic");

        let approval = e.approval.expect("approval found by shape");
        assert_eq!(approval.state, "approved");
        assert_eq!(
            approval.approvers.len(),
            1,
            "only the approver who approved is listed"
        );
        assert_eq!(approval.approvers[0].id.as_deref(), Some("acc-approver"));
        assert_eq!(
            approval.decided_at,
            Timestamp::from_millisecond(1741941697000).ok()
        );
    }

    #[test]
    fn ticket_url_comes_from_configured_base_never_from_payload_self() {
        let base = reqwest::Url::parse("http://127.0.0.1:4010/").expect("url");
        let events = parse_body(
            CONNECTOR,
            &base,
            &serde_json::to_vec(&approval_update()).expect("json"),
        )
        .expect("parses");
        assert_eq!(
            events[0].ticket.url.as_deref(),
            Some("http://127.0.0.1:4010/browse/ACCESS-87")
        );
    }

    #[test]
    fn status_change_is_keyed_on_changelog_not_on_event_type_name() {
        let mut body = approval_update();
        body["issue_event_type_name"] = json!("issue_commented");
        let e = one(&body);
        assert_eq!(e.kind, EventKind::Updated);
        assert_eq!(e.status_change.map(|s| s.to).as_deref(), Some("Approved"));
    }

    #[test]
    fn custom_field_named_status_is_not_a_status_change() {
        let mut body = approval_update();
        body["changelog"]["items"] = json!([{"field": "status", "fieldtype": "custom", "fieldId": "customfield_10111",
            "fromString": "a", "toString": "Approved"}]);
        let e = one(&body);
        assert_eq!(e.kind, EventKind::Updated);
        assert_eq!(e.status_change, None);
    }

    #[test]
    fn declined_approval_is_rejected_with_the_decliner() {
        let mut body = approval_update();
        body["issue"]["fields"]["customfield_10099"] = approvals_field("declined", "declined");
        let approval = one(&body).approval.expect("approval");
        assert_eq!(approval.state, "rejected");
        assert_eq!(
            approval.approvers[0].email.as_deref(),
            Some("boss@example.com")
        );
    }

    #[test]
    fn pending_approval_has_no_approvers() {
        let mut body = approval_update();
        body["issue"]["fields"]["customfield_10099"] = approvals_field("pending", "approved");
        let approval = one(&body).approval.expect("approval");
        assert_eq!(approval.state, "pending");
        assert!(approval.approvers.is_empty());
    }

    #[test]
    fn unknown_final_decision_never_reads_as_approved() {
        let mut body = approval_update();
        body["issue"]["fields"]["customfield_10099"] =
            approvals_field("APPROVED_BY_ATTACKER", "approved");
        assert_eq!(one(&body).approval.expect("approval").state, "pending");
    }

    #[test]
    fn created_event_without_changelog_is_created() {
        let body = json!({
            "timestamp": 1741940000000_i64, "webhookEvent": "jira:issue_created", "issue_event_type_name": "issue_created",
            "user": {"accountId": "712020:requester"},
            "issue": {"id": "10234", "key": "ACCESS-87", "fields": {"status": {"name": "Waiting for approval"},
                "description": "wiki *markup* string", "customfield_10099": approvals_field("pending", "pending")}}
        });
        let e = one(&body);
        assert_eq!(e.kind, EventKind::Created);
        assert_eq!(e.status_change, None);
        assert_eq!(e.ticket.status.as_deref(), Some("Waiting for approval"));
        assert_eq!(e.approval.map(|a| a.state).as_deref(), Some("pending"));
    }

    #[test]
    fn comment_only_update_is_commented() {
        let body = json!({
            "timestamp": 1741942000000_i64, "webhookEvent": "jira:issue_updated", "issue_event_type_name": "issue_commented",
            "user": {"accountId": "acc-1"},
            "issue": {"id": "10234", "key": "ACCESS-87", "fields": {"status": {"name": "Waiting for approval"}}},
            "comment": {"id": "100", "body": {"type": "doc", "version": 1, "content": []}, "author": {"accountId": "acc-1"}}
        });
        let e = one(&body);
        assert_eq!(e.kind, EventKind::Commented);
        assert_eq!(e.status_change, None);
    }

    #[test]
    fn comment_with_status_change_is_still_a_status_update() {
        let mut body = approval_update();
        body["comment"] = json!({"id": "100", "body": "approved, see ticket"});
        assert_eq!(one(&body).kind, EventKind::Updated);
    }

    #[test]
    fn field_edit_without_status_change_is_updated() {
        let mut body = approval_update();
        body["changelog"]["items"] =
            json!([{"field": "summary", "fieldtype": "jira", "fromString": "a", "toString": "b"}]);
        let e = one(&body);
        assert_eq!(e.kind, EventKind::Updated);
        assert_eq!(e.status_change, None);
    }

    #[test]
    fn missing_user_and_changelog_are_tolerated() {
        let body = json!({
            "webhookEvent": "jira:issue_updated",
            "issue": {"id": "10234", "key": "ACCESS-87", "fields": {"updated": "2025-03-14T10:01:37.640+0000"}}
        });
        let e = one(&body);
        assert_eq!(e.kind, EventKind::Updated);
        assert_eq!(e.actor, None);
        assert_eq!(e.requester, None);
        assert_eq!(
            e.occurred_at,
            "2025-03-14T10:01:37.640Z".parse::<Timestamp>().expect("ts")
        );
    }

    #[test]
    fn nulls_where_objects_are_expected_are_tolerated() {
        let body = json!({
            "timestamp": null, "webhookEvent": "jira:issue_updated", "user": null, "changelog": null, "comment": null,
            "issue": {"id": "10234", "key": "ACCESS-87", "fields": {"status": null, "issuetype": null, "project": null,
                "reporter": null, "summary": null, "customfield_10010": null, "customfield_10099": null, "updated": null}}
        });
        let e = one(&body);
        assert_eq!(e.kind, EventKind::Updated);
        assert_eq!(e.ticket.status, None);
        assert_eq!(e.approval, None);
        assert_eq!(e.occurred_at, Timestamp::UNIX_EPOCH);
    }

    #[test]
    fn issue_without_fields_gets_empty_fields_object() {
        let body = json!({"webhookEvent": "jira:issue_deleted", "issue": {"id": 10234, "key": "ACCESS-87"}});
        let e = one(&body);
        assert_eq!(e.kind, EventKind::Cancelled);
        assert_eq!(e.ticket.id, "10234");
        assert_eq!(e.fields, json!({}));
    }

    #[test]
    fn deleted_issue_is_cancelled() {
        let mut body = approval_update();
        body["webhookEvent"] = json!("jira:issue_deleted");
        body.as_object_mut().expect("object").remove("changelog");
        assert_eq!(one(&body).kind, EventKind::Cancelled);
    }

    #[test]
    fn comment_created_is_commented() {
        let body = json!({"timestamp": 1, "webhookEvent": "comment_created",
            "comment": {"id": "1", "body": "hi", "author": {"accountId": "a"}},
            "issue": {"id": "10234", "key": "ACCESS-87", "fields": {"summary": "s"}}});
        assert_eq!(one(&body).kind, EventKind::Commented);
    }

    #[test]
    fn unknown_event_is_ignored_not_an_error() {
        let body = json!({"webhookEvent": "worklog_created", "worklog": {"id": "1"}});
        assert_eq!(parse(&body), Ok(vec![]));
    }

    #[test]
    fn garbage_bodies_are_parse_errors_naming_the_problem() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"not json", "not JSON"),
            (b"[1,2,3]", "not a JSON object"),
            (b"\"jira:issue_created\"", "not a JSON object"),
            (b"{}", "`webhookEvent`"),
            (br#"{"webhookEvent": 5}"#, "`webhookEvent`"),
            (br#"{"webhookEvent": "jira:issue_created"}"#, "`issue`"),
            (br#"{"webhookEvent": "jira:issue_created", "issue": {"key": "A-1"}}"#, "`issue.id`"),
            (br#"{"webhookEvent": "jira:issue_created", "issue": {"id": "1"}}"#, "`issue.key`"),
            (br#"{"webhookEvent": "jira:issue_created", "issue": {"id": "1", "key": null}}"#, "`issue.key`"),
            (br#"{"webhookEvent": "jira:issue_created", "issue": {"id": "1", "key": "../../myself"}}"#, "`issue.key`"),
            (br#"{"webhookEvent": "jira:issue_created", "issue": {"id": "1?x", "key": "A-1"}}"#, "`issue.id`"),
        ];
        for (body, expected) in cases {
            let e = parse_body(CONNECTOR, &base(), body).expect_err("must fail");
            assert_eq!(e.connector, "jira");
            assert!(
                e.reason.contains(expected),
                "{:?}: {}",
                String::from_utf8_lossy(body),
                e.reason
            );
        }
    }

    #[test]
    fn most_recent_completed_approval_decides() {
        let older_declined = json!({"finalDecision": "declined", "approvers": [],
            "completedDate": {"epochMillis": 1000}});
        let newer_approved = json!({"finalDecision": "approved",
            "approvers": [{"approver": {"accountId": "b"}, "approverDecision": "approved"}],
            "completedDate": {"iso8601": "2025-01-01T00:00:00+0000"}});
        let a =
            derive_approval(&[newer_approved.clone(), older_declined.clone()]).expect("approval");
        assert_eq!(a.state, "approved");
        assert_eq!(a.approvers[0].id.as_deref(), Some("b"));
        let mut newer_declined = older_declined;
        newer_declined["completedDate"] = json!({"epochMillis": 1_800_000_000_000_i64});
        assert_eq!(
            derive_approval(&[newer_approved, newer_declined])
                .expect("approval")
                .state,
            "rejected"
        );
        assert_eq!(derive_approval(&[]), None);
    }

    #[test]
    fn timestamp_as_string_or_float_is_tolerated() {
        let mut body = approval_update();
        body["timestamp"] = json!("1741941697640");
        assert_eq!(
            one(&body).occurred_at,
            Timestamp::from_millisecond(1741941697640).expect("ts")
        );
        body["timestamp"] = json!(1741941697640.0);
        assert_eq!(
            one(&body).occurred_at,
            Timestamp::from_millisecond(1741941697640).expect("ts")
        );
        body["timestamp"] = json!(1e300);
        body["issue"]["fields"]["updated"] = json!("garbage");
        assert_eq!(one(&body).occurred_at, Timestamp::UNIX_EPOCH);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            prop_oneof![
                Just("jira:issue_updated".to_owned()),
                Just("jira:issue_created".to_owned()),
                Just("status".to_owned()),
                Just("approved".to_owned()),
                "[a-zA-Z0-9_:./-]{0,12}",
            ]
            .prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let keys = prop_oneof![
                Just("webhookEvent".to_owned()),
                Just("issue".to_owned()),
                Just("fields".to_owned()),
                Just("id".to_owned()),
                Just("key".to_owned()),
                Just("changelog".to_owned()),
                Just("items".to_owned()),
                Just("field".to_owned()),
                Just("toString".to_owned()),
                Just("finalDecision".to_owned()),
                Just("approvers".to_owned()),
                Just("completedDate".to_owned()),
                Just("timestamp".to_owned()),
                Just("user".to_owned()),
                "[a-z]{1,6}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(keys, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_json_never_panics(v in arb_json()) {
            let _ = parse(&v);
        }

        #[test]
        fn arbitrary_json_inside_a_known_event_never_panics(
            event in prop_oneof![Just("jira:issue_updated"), Just("jira:issue_created"), Just("comment_created"), Just("jira:issue_deleted")],
            fields in arb_json(), changelog in arb_json(), user in arb_json(), ts in arb_json(),
        ) {
            let body = json!({"webhookEvent": event, "timestamp": ts, "user": user, "changelog": changelog,
                "issue": {"id": "1", "key": "A-1", "fields": fields}});
            let events = parse(&body).expect("a well-identified issue always parses");
            prop_assert_eq!(events.len(), 1);
            if let Some(a) = &events[0].approval {
                prop_assert!(["pending", "approved", "rejected"].contains(&a.state.as_str()));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_body(CONNECTOR, &base(), &bytes);
        }
    }
}
