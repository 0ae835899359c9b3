//! The connector against a tiny in-test Freshservice that answers in API v2's documented shapes
//! (`itsm-wire-formats.md` 3.2): `{"ticket": ...}` views with `approval_status_name`, requester
//! and agent look-ups, approval records (or `404`), `201` notes, `200` PUT updates, the
//! `description` + `errors[]` validation envelope, `429` with `Retry-After`, and the
//! `X-RateLimit-*` headers on every response.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::options::StatusTable;
use super::*;
use crate::ticket::EventKind;

const API_KEY: &str = "fs-4p1-k3y-very-secret";

/// A canned answer: status, extra headers, JSON body.
type Canned = (StatusCode, Vec<(&'static str, &'static str)>, Value);

/// What the fake account holds.
#[derive(Default)]
struct Account {
    tickets: HashMap<String, Value>,
    requesters: HashMap<String, Value>,
    agents: HashMap<String, Value>,
    /// Approval records per ticket; a ticket missing here answers `404`.
    approvals: HashMap<String, Vec<Value>>,
    /// Codes a PUT may set (the built-ins plus the account's custom statuses).
    valid_statuses: Vec<u64>,
    /// When set, every endpoint answers with this instead.
    fail: Option<Canned>,
    /// When set, every response carries `X-RateLimit-Total: .0` and `X-RateLimit-Remaining`
    /// counting down from `.1` by one per request (never below zero).
    budget: Option<(u32, u32)>,
    /// `/api/v2/agents/me` answers 404 (older accounts).
    no_me: bool,
    notes: Vec<(String, Value)>,
    updates: Vec<(String, Value)>,
    /// Every authenticated request: when it arrived and its path.
    seen: Vec<(Instant, String)>,
    unauthenticated_calls: usize,
}

type Shared = Arc<Mutex<Account>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Account> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Ticket 123: a service request by requester 42, approved by agent 7, with custom fields.
fn account() -> Shared {
    let mut a = Account {
        valid_statuses: vec![2, 3, 4, 5, 6],
        ..Account::default()
    };
    a.tickets
        .insert("123".into(), ticket_view("Approved", 1, 2));
    a.requesters.insert(
        "42".into(),
        json!({"requester": {"id": 42, "first_name": "Rita", "last_name": "Requester",
            "primary_email": "rita@example.com", "secondary_emails": [], "active": true}}),
    );
    a.agents.insert(
        "7".into(),
        json!({"agent": {"id": 7, "first_name": "Alex", "last_name": "Approver",
            "email": "alex@example.com", "active": true}}),
    );
    a.agents.insert(
        "8".into(),
        json!({"agent": {"id": 8, "first_name": "Other", "email": "other@example.com"}}),
    );
    a.approvals.insert(
        "123".into(),
        vec![
            approval_record(1, 7, "Alex", "approved", "2025-03-14T08:41:37Z"),
            approval_record(2, 8, "Other", "requested", "2025-03-14T08:00:00Z"),
        ],
    );
    Arc::new(Mutex::new(a))
}

fn ticket_view(approval_name: &str, approval_code: u64, status: u64) -> Value {
    json!({"ticket": {
        "id": 123, "type": "Service Request", "subject": "Local admin on WS-0042",
        "description": "<div>please</div>", "description_text": "please",
        "requester_id": 42, "requested_for_id": 42, "responder_id": null, "group_id": null,
        "status": status, "priority": 2, "source": 2,
        "approval_status": approval_code, "approval_status_name": approval_name,
        "workspace_id": 2, "department_id": null, "category": null,
        "custom_fields": {"target_machine": "WS-0042", "duration": "2h", "elevation_type": "Local admin"},
        "created_at": "2025-03-14T08:00:00Z", "updated_at": "2025-03-14T08:41:37Z"
    }})
}

fn approval_record(id: u64, approver: u64, name: &str, status: &str, updated: &str) -> Value {
    json!({"id": id, "approver_id": approver, "approver_name": name, "approval_type": 2,
        "user_id": 42, "level": 1, "approval_status": {"id": 0, "name": status},
        "delegatee": null, "latest_remark": null, "created_at": "2025-03-14T08:00:00Z",
        "updated_at": updated})
}

/// Adds the rate-limit headers (counting the budget down) to a response.
fn with_budget(s: &Shared, mut resp: Response) -> Response {
    let mut account = lock(s);
    if let Some((total, remaining)) = account.budget {
        let h = resp.headers_mut();
        h.insert("x-ratelimit-total", total.into());
        h.insert("x-ratelimit-remaining", remaining.into());
        h.insert("x-ratelimit-used-currentrequest", 1u32.into());
        account.budget = Some((total, remaining.saturating_sub(1)));
    }
    resp
}

/// Checks credentials (Basic `key:X`), logs the call and applies the injected failure;
/// `Some(response)` short-circuits the handler.
fn gate(s: &Shared, headers: &HeaderMap, path: String) -> Option<Response> {
    use base64::Engine;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{API_KEY}:X"))
    );
    let mut account = lock(s);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        account.unauthenticated_calls += 1;
        return Some(
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"code": "invalid_credentials",
                    "message": "You have to be logged in to perform this action."})),
            )
                .into_response(),
        );
    }
    account.seen.push((Instant::now(), path));
    let (status, hdrs, body) = account.fail.clone()?;
    let mut resp = (status, axum::Json(body)).into_response();
    for (k, v) in hdrs {
        resp.headers_mut()
            .insert(k, axum::http::HeaderValue::from_static(v));
    }
    Some(resp)
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"code": "access_denied", "message": "Record not found"})),
    )
        .into_response()
}

async fn me(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let resp = match gate(&s, &headers, "/api/v2/agents/me".into()) {
        Some(r) => r,
        None if lock(&s).no_me => not_found(),
        None => axum::Json(json!({"agent": {"id": 1, "email": "bot@example.com"}})).into_response(),
    };
    with_budget(&s, resp)
}

async fn list_tickets(
    State(s): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let resp = gate(&s, &headers, "/api/v2/tickets".into()).unwrap_or_else(|| {
        let per_page: usize = q.get("per_page").and_then(|v| v.parse().ok()).unwrap_or(30);
        let tickets: Vec<Value> = lock(&s)
            .tickets
            .values()
            .take(per_page)
            .map(|t| t["ticket"].clone())
            .collect();
        axum::Json(json!({"tickets": tickets})).into_response()
    });
    with_budget(&s, resp)
}

async fn view_ticket(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let resp = gate(&s, &headers, format!("/api/v2/tickets/{id}")).unwrap_or_else(|| {
        match lock(&s).tickets.get(&id) {
            Some(t) => axum::Json(t.clone()).into_response(),
            None => not_found(),
        }
    });
    with_budget(&s, resp)
}

async fn update_ticket(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::Json<Value>,
) -> Response {
    let resp = gate(&s, &headers, format!("PUT /api/v2/tickets/{id}")).unwrap_or_else(|| {
        let mut account = lock(&s);
        if !account.tickets.contains_key(&id) {
            return not_found();
        }
        let code = body.0["status"].as_u64();
        if !code.is_some_and(|c| account.valid_statuses.contains(&c)) {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"description": "Validation failed", "errors": [
                    {"field": "status", "message": "It should be one of these values: '2,3,4,5,6'", "code": "invalid_value"}]})),
            )
                .into_response();
        }
        account.updates.push((id.clone(), body.0.clone()));
        let ticket = account.tickets.get_mut(&id).map(|t| {
            t["ticket"]["status"] = body.0["status"].clone();
            t["ticket"].clone()
        });
        axum::Json(json!({"ticket": ticket})).into_response()
    });
    with_budget(&s, resp)
}

async fn approvals(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let resp = gate(&s, &headers, format!("/api/v2/tickets/{id}/approvals")).unwrap_or_else(|| {
        let per_page: usize = q.get("per_page").and_then(|v| v.parse().ok()).unwrap_or(30);
        let page: usize = q.get("page").and_then(|v| v.parse().ok()).unwrap_or(1);
        match lock(&s).approvals.get(&id) {
            Some(all) => {
                let values: Vec<Value> = all
                    .iter()
                    .skip(per_page * page.saturating_sub(1))
                    .take(per_page)
                    .cloned()
                    .collect();
                axum::Json(json!({"approvals": values})).into_response()
            }
            None => not_found(),
        }
    });
    with_budget(&s, resp)
}

async fn add_note(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::Json<Value>,
) -> Response {
    let resp = gate(&s, &headers, format!("POST /api/v2/tickets/{id}/notes")).unwrap_or_else(|| {
        let mut account = lock(&s);
        if !account.tickets.contains_key(&id) {
            return not_found();
        }
        if !body.0["body"].is_string() {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"description": "Validation failed", "errors": [
                    {"field": "body", "message": "It should be a/an String", "code": "datatype_mismatch"}]})),
            )
                .into_response();
        }
        account.notes.push((id.clone(), body.0.clone()));
        (
            StatusCode::CREATED,
            axum::Json(json!({"conversation": {"id": 1, "body": body.0["body"],
                "private": body.0["private"], "incoming": false, "ticket_id": id.parse::<u64>().unwrap_or(0),
                "created_at": "2025-03-14T09:00:00Z"}})),
        )
            .into_response()
    });
    with_budget(&s, resp)
}

/// `GET .../conversations`: pages of `per_page` notes, as Freshservice pages them.
async fn conversations(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let resp = gate(
        &s,
        &headers,
        format!("GET /api/v2/tickets/{id}/conversations"),
    )
    .unwrap_or_else(|| {
        let per_page: usize = q.get("per_page").and_then(|v| v.parse().ok()).unwrap_or(30);
        let page: usize = q.get("page").and_then(|v| v.parse().ok()).unwrap_or(1);
        let account = lock(&s);
        let notes: Vec<Value> = account
            .notes
            .iter()
            .filter(|(t, _)| *t == id)
            .skip(page.saturating_sub(1) * per_page)
            .take(per_page)
            .map(|(_, n)| json!({"id": 1, "body": n["body"], "private": n["private"]}))
            .collect();
        axum::Json(json!({ "conversations": notes })).into_response()
    });
    with_budget(&s, resp)
}

async fn requester(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let resp =
        gate(&s, &headers, format!("/api/v2/requesters/{id}")).unwrap_or_else(|| {
            match lock(&s).requesters.get(&id) {
                Some(r) => axum::Json(r.clone()).into_response(),
                None => not_found(),
            }
        });
    with_budget(&s, resp)
}

async fn agent(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let resp = gate(&s, &headers, format!("/api/v2/agents/{id}")).unwrap_or_else(|| {
        match lock(&s).agents.get(&id) {
            Some(a) => axum::Json(a.clone()).into_response(),
            None => not_found(),
        }
    });
    with_budget(&s, resp)
}

/// Starts the fake account on `127.0.0.1:0` and returns its base URL.
async fn serve(s: Shared) -> Url {
    let app = Router::new()
        .route("/api/v2/agents/me", get(me))
        .route("/api/v2/agents/{id}", get(agent))
        .route("/api/v2/requesters/{id}", get(requester))
        .route("/api/v2/tickets", get(list_tickets))
        .route("/api/v2/tickets/{id}", get(view_ticket).put(update_ticket))
        .route("/api/v2/tickets/{id}/approvals", get(approvals))
        .route("/api/v2/tickets/{id}/notes", axum::routing::post(add_note))
        .route("/api/v2/tickets/{id}/conversations", get(conversations))
        .with_state(s);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Url::parse(&format!("http://{addr}")).expect("url")
}

fn connector_with(base: Url, options: Options, window: Duration) -> FreshserviceConnector {
    FreshserviceConnector::with_rate_window(
        "freshservice".to_owned(),
        base,
        OutboundAuth::ApiKey {
            key: API_KEY.into(),
        },
        Duration::from_secs(5),
        reqwest::Client::new(),
        options,
        window,
    )
}

fn connector(base: Url) -> FreshserviceConnector {
    connector_with(base, Options::default(), Duration::from_secs(60))
}

fn ticket(id: &str) -> TicketRef {
    TicketRef {
        connector: "freshservice".into(),
        id: id.into(),
        key: format!("#{id}"),
        url: None,
    }
}

fn comment(text: &str) -> Writeback {
    Writeback {
        ticket: ticket("123"),
        action: WritebackAction::Comment { text: text.into() },
        marker: "g1:active:comment".into(),
    }
}

fn status(name: &str) -> Writeback {
    Writeback {
        ticket: ticket("123"),
        action: WritebackAction::Status { name: name.into() },
        marker: "g1:active:status".into(),
    }
}

fn paths(s: &Shared) -> Vec<String> {
    lock(s).seen.iter().map(|(_, p)| p.clone()).collect()
}

#[tokio::test]
async fn approved_ticket_is_confirmed_with_requester_and_approver_emails() {
    let s = account();
    let c = connector(serve(s.clone()).await);
    let confirmation = c.confirm(&ticket("123")).await.expect("confirmed");
    assert_eq!(confirmation.status.as_deref(), Some("Open"));
    let requester = confirmation.requester.expect("requester");
    assert_eq!(requester.id.as_deref(), Some("42"));
    assert_eq!(requester.email.as_deref(), Some("rita@example.com"));
    assert_eq!(requester.name.as_deref(), Some("Rita Requester"));
    let approval = confirmation.approval.expect("approval");
    assert_eq!(approval.state, "approved");
    assert_eq!(
        approval.approvers.len(),
        1,
        "only the approver who approved"
    );
    assert_eq!(approval.approvers[0].id.as_deref(), Some("7"));
    assert_eq!(
        approval.approvers[0].email.as_deref(),
        Some("alex@example.com")
    );
    assert_eq!(approval.decided_at, "2025-03-14T08:41:37Z".parse().ok());
    assert_eq!(lock(&s).unauthenticated_calls, 0);
    assert_eq!(
        paths(&s),
        [
            "/api/v2/tickets/123",
            "/api/v2/requesters/42",
            "/api/v2/tickets/123/approvals",
            "/api/v2/agents/7"
        ]
    );
}

#[tokio::test]
async fn snapshot_returns_the_tickets_custom_fields() {
    let s = account();
    let c = connector(serve(s.clone()).await);
    let snap = c.snapshot(&ticket("123")).await.expect("snapshot");
    assert_eq!(snap.custom_fields["target_machine"], "WS-0042");
    assert_eq!(snap.custom_fields["duration"], "2h");
    assert_eq!(
        snap.confirmation.approval.map(|a| a.state).as_deref(),
        Some("approved")
    );
}

#[tokio::test]
async fn requester_who_is_an_agent_is_found_through_the_agents_endpoint() {
    let s = account();
    lock(&s).tickets.get_mut("123").expect("t")["ticket"]["requester_id"] = json!(8);
    let c = connector(serve(s.clone()).await);
    let requester = c
        .confirm(&ticket("123"))
        .await
        .expect("confirmed")
        .requester
        .expect("requester");
    assert_eq!(requester.email.as_deref(), Some("other@example.com"));
    assert!(paths(&s).contains(&"/api/v2/requesters/8".to_owned()));
    assert!(paths(&s).contains(&"/api/v2/agents/8".to_owned()));
}

#[tokio::test]
async fn unknown_requester_keeps_the_id_only() {
    let s = account();
    lock(&s).tickets.get_mut("123").expect("t")["ticket"]["requester_id"] = json!(999);
    let c = connector(serve(s.clone()).await);
    let requester = c
        .confirm(&ticket("123"))
        .await
        .expect("confirmed")
        .requester
        .expect("requester");
    assert_eq!(requester.id.as_deref(), Some("999"));
    assert_eq!(requester.email, None);
}

#[tokio::test]
async fn approvals_endpoint_404_leaves_approvers_empty_but_keeps_the_decision() {
    let s = account();
    lock(&s).approvals.clear();
    let c = connector(serve(s.clone()).await);
    let approval = c
        .confirm(&ticket("123"))
        .await
        .expect("confirmed")
        .approval
        .expect("approval");
    assert_eq!(approval.state, "approved");
    assert!(approval.approvers.is_empty());
}

#[tokio::test]
async fn requested_approval_is_pending_and_skips_the_approvals_endpoint() {
    let s = account();
    lock(&s)
        .tickets
        .insert("123".into(), ticket_view("Requested", 0, 2));
    let c = connector(serve(s.clone()).await);
    let approval = c
        .confirm(&ticket("123"))
        .await
        .expect("confirmed")
        .approval
        .expect("approval");
    assert_eq!(approval.state, "pending");
    assert!(approval.approvers.is_empty());
    assert!(!paths(&s).iter().any(|p| p.ends_with("/approvals")));
}

#[tokio::test]
async fn unknown_approval_status_is_not_approved() {
    let s = account();
    {
        let mut a = lock(&s);
        let t = a.tickets.get_mut("123").expect("t");
        t["ticket"]["approval_status"] = json!(1);
        t["ticket"]
            .as_object_mut()
            .expect("obj")
            .remove("approval_status_name");
    }
    let c = connector(serve(s.clone()).await);
    let approval = c
        .confirm(&ticket("123"))
        .await
        .expect("confirmed")
        .approval
        .expect("approval");
    assert_ne!(approval.state, "approved");
    lock(&s)
        .tickets
        .insert("123".into(), ticket_view("Not Requested", 4, 2));
    let approval = c
        .confirm(&ticket("123"))
        .await
        .expect("confirmed")
        .approval
        .expect("approval");
    assert_eq!(approval.state, "not_requested");
}

#[tokio::test]
async fn rejected_approval_lists_who_rejected() {
    let s = account();
    {
        let mut a = lock(&s);
        a.tickets
            .insert("123".into(), ticket_view("Rejected", 2, 2));
        a.approvals.insert(
            "123".into(),
            vec![approval_record(
                1,
                8,
                "Other",
                "rejected",
                "2025-03-14T09:00:00Z",
            )],
        );
    }
    let c = connector(serve(s.clone()).await);
    let approval = c
        .confirm(&ticket("123"))
        .await
        .expect("confirmed")
        .approval
        .expect("approval");
    assert_eq!(approval.state, "rejected");
    assert_eq!(
        approval.approvers[0].email.as_deref(),
        Some("other@example.com")
    );
}

#[tokio::test]
async fn approvals_are_read_across_pages() {
    let s = account();
    {
        let mut a = lock(&s);
        let mut records: Vec<Value> = (0..client::APPROVAL_PAGE_SIZE as u64)
            .map(|i| approval_record(100 + i, 8, "Other", "requested", "2025-03-14T08:00:00Z"))
            .collect();
        records.push(approval_record(
            1,
            7,
            "Alex",
            "approved",
            "2025-03-14T08:41:37Z",
        ));
        a.approvals.insert("123".into(), records);
    }
    let c = connector(serve(s.clone()).await);
    let approval = c
        .confirm(&ticket("123"))
        .await
        .expect("confirmed")
        .approval
        .expect("approval");
    assert_eq!(approval.approvers.len(), 1);
    assert_eq!(approval.approvers[0].id.as_deref(), Some("7"));
    let approval_calls = paths(&s)
        .iter()
        .filter(|p| p.ends_with("/approvals"))
        .count();
    assert_eq!(approval_calls, 2);
}

#[tokio::test]
async fn missing_ticket_is_rejected_not_retried() {
    let s = account();
    let c = connector(serve(s.clone()).await);
    let err = c.confirm(&ticket("404")).await.expect_err("no such ticket");
    assert!(
        matches!(&err, ConnectorError::Rejected { status: 404, detail } if detail.contains("Record not found")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn comment_is_posted_as_a_private_note_of_escaped_html() {
    let s = account();
    let c = connector(serve(s.clone()).await);
    c.write_back(&comment(
        "Local admin granted to <b>rita</b>\nuntil 18:00 & no later.",
    ))
    .await
    .expect("201");
    let a = lock(&s);
    assert_eq!(a.notes.len(), 1);
    let (id, note) = &a.notes[0];
    assert_eq!(id, "123");
    assert_eq!(
        note,
        &json!({"body": "<p>Local admin granted to &lt;b&gt;rita&lt;/b&gt;<br>until 18:00 &amp; no later.</p><p>g1:active:comment</p>",
            "private": true})
    );
}

#[tokio::test]
async fn a_posted_note_is_found_again_by_its_marker() {
    let s = account();
    let c = connector(serve(s.clone()).await);
    let wb = comment("Local admin granted.");
    assert!(
        !c.has_comment(&wb).await.expect("listing"),
        "not posted yet"
    );
    c.write_back(&wb).await.expect("201");
    assert!(c.has_comment(&wb).await.expect("listing"));
    let mut other = wb.clone();
    other.marker = "g2:active:comment".into();
    assert!(!c.has_comment(&other).await.expect("listing"));
}

#[tokio::test]
async fn public_notes_when_configured() {
    let s = account();
    let options = Options {
        private_notes: false,
        ..Options::default()
    };
    let c = connector_with(serve(s.clone()).await, options, Duration::from_secs(60));
    c.write_back(&comment("hello")).await.expect("201");
    assert_eq!(lock(&s).notes[0].1["private"], json!(false));
}

#[tokio::test]
async fn status_writeback_puts_the_code_of_the_named_status() {
    let s = account();
    let c = connector(serve(s.clone()).await);
    c.write_back(&status("resolved")).await.expect("200");
    c.write_back(&status("3")).await.expect("code as is");
    let a = lock(&s);
    assert_eq!(
        a.updates,
        vec![
            ("123".to_owned(), json!({"status": 4})),
            ("123".to_owned(), json!({"status": 3}))
        ]
    );
    assert_eq!(a.tickets["123"]["ticket"]["status"], json!(3));
}

#[tokio::test]
async fn custom_status_from_options_is_written_by_name() {
    let s = account();
    let options = Options {
        statuses: [("In Progress".to_owned(), 6)].into_iter().collect(),
        ..Options::default()
    };
    let c = connector_with(serve(s.clone()).await, options, Duration::from_secs(60));
    c.write_back(&status("In Progress")).await.expect("200");
    assert_eq!(lock(&s).updates[0].1, json!({"status": 6}));
}

#[tokio::test]
async fn unknown_status_name_is_invalid_without_any_call() {
    let s = account();
    let c = connector(serve(s.clone()).await);
    let err = c
        .write_back(&status("Approved"))
        .await
        .expect_err("unknown");
    let ConnectorError::Invalid(msg) = &err else {
        panic!("expected Invalid, got {err:?}")
    };
    assert!(
        msg.contains("\"Approved\"") && msg.contains("Resolved"),
        "{msg}"
    );
    assert!(!err.is_retryable());
    assert!(paths(&s).is_empty());
}

#[tokio::test]
async fn validation_failure_400_is_rejected_with_the_field_errors() {
    let s = account();
    let c = connector(serve(s.clone()).await);
    let err = c.write_back(&status("17")).await.expect_err("400");
    let ConnectorError::Rejected {
        status: 400,
        detail,
    } = &err
    else {
        panic!("expected Rejected, got {err:?}")
    };
    assert_eq!(
        detail,
        "PUT /api/v2/tickets/123: Validation failed; status: It should be one of these values: '2,3,4,5,6'"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn rate_limit_429_is_retryable_with_retry_after() {
    let s = account();
    lock(&s).fail = Some((
        StatusCode::TOO_MANY_REQUESTS,
        vec![("retry-after", "27")],
        json!({"message": "You have exceeded the limit of requests per minute"}),
    ));
    let c = connector(serve(s.clone()).await);
    let err = c.write_back(&comment("hello")).await.expect_err("429");
    assert!(
        matches!(err, ConnectorError::RateLimited { status: 429, .. }),
        "{err:?}"
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(27)));
    assert!(err.is_retryable());
}

#[tokio::test]
async fn outage_503_is_unavailable() {
    let s = account();
    lock(&s).fail = Some((
        StatusCode::SERVICE_UNAVAILABLE,
        vec![("retry-after", "5")],
        json!({}),
    ));
    let c = connector(serve(s.clone()).await);
    let err = c.confirm(&ticket("123")).await.expect_err("503");
    assert_eq!(
        err,
        ConnectorError::Unavailable {
            status: Some(503),
            retry_after: Some(Duration::from_secs(5)),
            detail: "GET /api/v2/tickets/123: HTTP 503 Service Unavailable".into(),
        }
    );
}

#[tokio::test]
async fn unreachable_account_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let c = connector(Url::parse(&format!("http://{addr}")).expect("url"));
    let err = c.healthcheck().await.expect_err("nobody listens");
    assert!(
        matches!(&err, ConnectorError::Unavailable { status: None, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn wrong_api_key_is_rejected_without_echoing_any_key() {
    let s = account();
    let base = serve(s.clone()).await;
    let c = FreshserviceConnector::new(
        "freshservice".into(),
        base,
        OutboundAuth::ApiKey {
            key: "wrong-key-123".into(),
        },
        Duration::from_secs(5),
        reqwest::Client::new(),
        Options::default(),
    );
    let err = c.healthcheck().await.expect_err("401");
    let text = err.to_string();
    assert!(
        matches!(err, ConnectorError::Rejected { status: 401, .. }),
        "{text}"
    );
    assert!(text.contains("You have to be logged in"), "{text}");
    assert!(
        !text.contains("wrong-key-123") && !text.contains(API_KEY),
        "{text}"
    );
    assert!(!format!("{c:?}").contains("wrong-key-123"));
    assert_eq!(lock(&s).unauthenticated_calls, 1);
}

#[tokio::test]
async fn credentials_in_the_base_url_are_never_used() {
    let s = account();
    let mut base = serve(s.clone()).await;
    base.set_username("leaky").expect("user");
    base.set_password(Some("pw")).expect("pw");
    let c = connector(base);
    c.healthcheck().await.expect("API key from auth only");
    assert!(!format!("{c:?}").contains("pw"));
}

#[tokio::test]
async fn healthcheck_uses_agents_me_and_falls_back_to_listing_tickets() {
    let s = account();
    let c = connector(serve(s.clone()).await);
    c.healthcheck().await.expect("ok");
    assert_eq!(paths(&s), ["/api/v2/agents/me"]);
    lock(&s).no_me = true;
    c.healthcheck().await.expect("ok via tickets");
    assert_eq!(
        paths(&s),
        ["/api/v2/agents/me", "/api/v2/agents/me", "/api/v2/tickets"]
    );
}

#[tokio::test]
async fn ticket_refs_that_are_not_numeric_ids_are_refused_before_any_call() {
    let s = account();
    let c = connector(serve(s.clone()).await);
    let mut r = ticket("../agents/me");
    r.key = "#../agents/me".into();
    assert!(matches!(
        c.confirm(&r).await,
        Err(ConnectorError::Invalid(_))
    ));
    let mut only_key = ticket("");
    only_key.key = "#123".into();
    c.confirm(&only_key)
        .await
        .expect("the key's digits are enough");
    assert_eq!(
        paths(&s).first().map(String::as_str),
        Some("/api/v2/tickets/123")
    );
}

#[tokio::test]
async fn low_remaining_budget_spaces_out_requests_before_the_limit_is_hit() {
    let s = account();
    // Remaining starts below the floor of 5 and drops by one per call: with a 600 ms window the
    // rest of the window is spread evenly, about 120 ms per call.
    lock(&s).budget = Some((100, 4));
    let window = Duration::from_millis(600);
    let c = connector_with(serve(s.clone()).await, Options::default(), window);
    let started = Instant::now();
    for _ in 0..4 {
        c.healthcheck().await.expect("ok");
    }
    let seen: Vec<Instant> = lock(&s).seen.iter().map(|(t, _)| *t).collect();
    assert_eq!(seen.len(), 4);
    for pair in seen.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(90),
            "calls must be spread out once the budget is low: {gap:?}"
        );
    }
    assert!(
        started.elapsed() < window + Duration::from_millis(200),
        "never waits past the window"
    );
    let budget = c.rate_budget().await;
    assert_eq!(budget.total, Some(100));
    assert_eq!(budget.remaining, Some(1));
    assert!(budget.interval > Duration::ZERO);
    assert_eq!(
        lock(&s).budget,
        Some((100, 0)),
        "the limit itself was never hit"
    );
}

#[tokio::test]
async fn ample_budget_is_not_paced() {
    let s = account();
    lock(&s).budget = Some((100, 90));
    let c = connector_with(
        serve(s.clone()).await,
        Options::default(),
        Duration::from_millis(600),
    );
    let started = Instant::now();
    for _ in 0..4 {
        c.healthcheck().await.expect("ok");
    }
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!(c.rate_budget().await.interval, Duration::ZERO);
}

#[test]
fn delivery_is_parsed_and_deduplicated_through_the_trait() {
    let c = connector(Url::parse("https://example.freshservice.com").expect("url"));
    let delivery = RawDelivery {
        headers: vec![("X-Api-Key".into(), "ignored-here".into())],
        body: br#"{"ticket_id": 123, "event": "approval_updated", "status": "2", "approval_status": "Approved", "requester_email": "rita@example.com", "updated_at": "2025-03-14T08:41:37Z"}"#.to_vec(),
    };
    assert_eq!(c.kind(), "freshservice");
    assert_eq!(c.id(), "freshservice");
    assert_eq!(
        c.dedupe_key(&delivery),
        "freshservice:123:2025-03-14T08:41:37Z:approval_updated:2:approved"
    );
    let events = c.parse(&delivery).expect("parses");
    assert_eq!(events[0].kind, EventKind::Approved);
    assert_eq!(events[0].ticket.status.as_deref(), Some("Open"));
    assert_eq!(
        events[0].ticket.url.as_deref(),
        Some("https://example.freshservice.com/a/tickets/123")
    );
    let no_time = RawDelivery {
        headers: vec![],
        body: br#"{"ticket_id": 123, "event": "ticket_created", "updated_at": ""}"#.to_vec(),
    };
    assert!(c.dedupe_key(&no_time).starts_with("sha256:"));
    let empty = RawDelivery {
        headers: vec![],
        body: br#"{"ticket_id": "", "event": "approval_updated"}"#.to_vec(),
    };
    assert!(c.parse(&empty).is_err());
}

#[test]
fn inbound_defaults_are_the_x_api_key_header() {
    assert_eq!(INBOUND_DEFAULTS.header, "X-Api-Key");
    assert_eq!(INBOUND_DEFAULTS.prefix, "");
}

/// The keys every connector kind shares; the rest of a file is the kind's own options.
const SHARED_KEYS: [&str; 7] = [
    "id",
    "kind",
    "base_url",
    "inbound",
    "outbound",
    "confirm_approvals",
    "timeout",
];

fn example_file(uncomment_options: bool) -> toml::Table {
    let text = include_str!("../../../connectors/freshservice.toml.example");
    let text: String = if uncomment_options {
        text.lines()
            .map(|l| {
                ["private_notes", "min_remaining", "statuses"]
                    .iter()
                    .find_map(|k| l.strip_prefix("# ").filter(|rest| rest.starts_with(k)))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        text.to_owned()
    };
    text.parse().expect("the example is TOML")
}

#[test]
fn shipped_example_connector_file_is_valid_with_and_without_its_options() {
    let path = std::path::Path::new("connectors/freshservice.toml");
    for uncomment in [false, true] {
        let mut file = example_file(uncomment);
        assert_eq!(file["kind"].as_str(), Some("freshservice"));
        let inbound: crate::ingress::auth::InboundConfig =
            file["inbound"].clone().try_into().expect("inbound");
        let secrets = crate::config::MapSecrets::from_pairs([
            ("FRESHSERVICE_WEBHOOK_SECRET", "shared-secret"),
            ("FRESHSERVICE_API_KEY", API_KEY),
        ]);
        crate::ingress::auth::InboundAuth::from_config(&inbound, &INBOUND_DEFAULTS, &secrets, path)
            .expect("header auth resolves");
        let outbound: crate::connectors::OutboundConfig =
            file["outbound"].clone().try_into().expect("outbound");
        assert!(matches!(
            OutboundAuth::resolve(&outbound, &secrets).expect("resolves"),
            OutboundAuth::ApiKey { .. }
        ));
        for k in SHARED_KEYS {
            file.remove(k);
        }
        assert_eq!(file.is_empty(), !uncomment);
        let options = Options::from_table(&file, path).expect("valid options");
        assert_eq!(options.private_notes, Options::default().private_notes);
        assert_eq!(options.min_remaining, Options::default().min_remaining);
        assert_eq!(options.status_table(), StatusTable::default());
    }
}

/// Renders the shipped workflow body the way Freshservice substitutes placeholders: as text.
fn render_workflow_body(values: &[(&str, &str)]) -> Vec<u8> {
    let mut body =
        include_str!("../../../connectors/freshservice/workflow-webhook.json").to_owned();
    for (placeholder, value) in values {
        body = body.replace(placeholder, value);
    }
    body.into_bytes()
}

#[test]
fn shipped_workflow_body_renders_into_an_approval_trigger() {
    let c = connector(Url::parse("https://example.freshservice.com").expect("url"));
    let body = render_workflow_body(&[
        ("{{ticket.id}}", "123"),
        ("{{ticket.status}}", "Open"),
        ("{{ticket.approval_status}}", "Approved"),
        ("{{ticket.requester.email}}", "rita@example.com"),
        ("{{ticket.updated_at}}", "2025-03-14T08:41:37Z"),
    ]);
    assert!(
        !String::from_utf8_lossy(&body).contains("{{"),
        "every placeholder rendered"
    );
    let delivery = RawDelivery {
        headers: vec![],
        body,
    };
    let events = c.parse(&delivery).expect("parses");
    assert_eq!(events[0].kind, EventKind::Approved);
    assert_eq!(events[0].ticket.id, "123");
    assert_eq!(
        events[0]
            .requester
            .as_ref()
            .and_then(|r| r.email.as_deref()),
        Some("rita@example.com")
    );
    assert_eq!(
        c.dedupe_key(&delivery),
        "freshservice:123:2025-03-14T08:41:37Z:approval_updated:open:approved"
    );
}

#[test]
fn shipped_workflow_body_with_nothing_rendered_is_refused() {
    let c = connector(Url::parse("https://example.freshservice.com").expect("url"));
    let body = render_workflow_body(&[
        ("{{ticket.id}}", ""),
        ("{{ticket.status}}", ""),
        ("{{ticket.approval_status}}", ""),
        ("{{ticket.requester.email}}", ""),
        ("{{ticket.updated_at}}", ""),
    ]);
    let err = c
        .parse(&RawDelivery {
            headers: vec![],
            body,
        })
        .expect_err("an approval naming no ticket");
    assert!(err.reason.contains("`ticket_id`"), "{err}");
}
