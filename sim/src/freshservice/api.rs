//! The simulated API v2: tickets (`GET`, `PUT`), ticket approvals, notes, requesters and agents,
//! behind Basic `<api_key>:X` auth, the injected outage, the per-minute budget (whose headers go
//! on every response) and the request log. Validation errors use
//! `{"description":"Validation failed","errors":[{field,message,code}]}`; auth errors
//! `{"code":"invalid_credentials","message":...}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{BudgetVerdict, Core, MAX_NOTE_CHARS, PendingEvent, RequestRecord, status};

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The agent id behind the API key used.
#[derive(Clone, Copy)]
struct Caller(u64);

pub(super) fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/api/v2/tickets", get(list_tickets))
        .route("/api/v2/tickets/{id}", get(get_ticket).put(put_ticket))
        .route("/api/v2/tickets/{id}/approvals", get(get_approvals))
        .route("/api/v2/tickets/{id}/notes", post(post_note))
        .route("/api/v2/tickets/{id}/conversations", get(get_conversations))
        .route("/api/v2/requesters/{id}", get(get_requester))
        .route("/api/v2/agents/{id}", get(get_agent))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(core.clone(), gatekeeper))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(core)
}

/// One entry of a validation error.
struct FieldError {
    field: String,
    message: String,
    code: &'static str,
}

fn validation_failed(errors: Vec<FieldError>) -> Response {
    let errors: Vec<Value> = errors
        .into_iter()
        .map(|e| json!({"field": e.field, "message": e.message, "code": e.code}))
        .collect();
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"description": "Validation failed", "errors": errors})),
    )
        .into_response()
}

/// 404 body; shape [U] (Freshworks' `{code, message}` family).
async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"code": "not_found", "message": "The requested resource was not found"})),
    )
        .into_response()
}

fn set_header(response: &mut Response, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

fn budget_headers(response: &mut Response, verdict: BudgetVerdict) {
    set_header(response, "x-ratelimit-total", &verdict.total.to_string());
    set_header(
        response,
        "x-ratelimit-remaining",
        &verdict.remaining.to_string(),
    );
    set_header(response, "x-ratelimit-used-currentrequest", "1");
}

/// The API key from `Authorization: Basic base64(key:X)` (any password is accepted).
fn api_key(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = B64.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (key, _) = text.split_once(':')?;
    Some(key.to_owned())
}

/// Records the request, applies the outage, spends the budget, then authenticates.
async fn gatekeeper(State(core): State<Arc<Core>>, mut request: Request, next: Next) -> Response {
    let at = Timestamp::now();
    let instant = Instant::now();
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);

    let response = if let Some(retry_after) = core.take_outage().await {
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"code": "service_unavailable",
                              "message": "The service is temporarily unavailable"})),
        )
            .into_response();
        if let Some(secs) = retry_after {
            set_header(&mut response, "retry-after", &secs.to_string());
        }
        response
    } else {
        let verdict = core.spend().await;
        let mut response = if let Some(retry_after) = verdict.exceeded {
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(json!({"message":
                    "You have exceeded the limit of requests per minute"})),
            )
                .into_response();
            set_header(&mut response, "retry-after", &retry_after.to_string());
            core.record_rate_limited(super::RateLimited {
                method: method.clone(),
                path: path.clone(),
                instant,
                retry_after: std::time::Duration::from_secs(retry_after),
            })
            .await;
            response
        } else {
            let caller = match api_key(request.headers()) {
                Some(key) => core.authenticate(&key).await,
                None => None,
            };
            match caller {
                Some(agent) => {
                    request.extensions_mut().insert(Caller(agent));
                    next.run(request).await
                }
                None => (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"code": "invalid_credentials",
                                      "message": "You have to be logged in to perform this action."})),
                )
                    .into_response(),
            }
        };
        budget_headers(&mut response, verdict);
        response
    };
    core.record_request(RequestRecord {
        method,
        path,
        query,
        status: response.status().as_u16(),
        at,
        instant,
    })
    .await;
    response
}

fn parse_id(raw: &str) -> Option<u64> {
    raw.parse().ok()
}

/// Default and largest `per_page` of a listing (`itsm-wire-formats.md` 3.2: pages up to 100).
const DEFAULT_PAGE_SIZE: usize = 30;
const MAX_PAGE_SIZE: usize = 100;

/// `GET /api/v2/tickets[?per_page=&page=]`: newest first, `{"tickets": [...]}`. What a client
/// calls to check that its key works without knowing any ticket.
async fn list_tickets(State(core): State<Arc<Core>>, request: Request) -> Response {
    let mut per_page = DEFAULT_PAGE_SIZE;
    let mut page = 1usize;
    let mut errors = Vec::new();
    for pair in request.uri().query().unwrap_or_default().split('&') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        let parsed = value.parse::<usize>().ok();
        match (key, parsed) {
            ("per_page", Some(n)) if (1..=MAX_PAGE_SIZE).contains(&n) => per_page = n,
            ("page", Some(n)) if n >= 1 => page = n,
            ("per_page" | "page", _) => errors.push(FieldError {
                field: key.to_owned(),
                message: format!(
                    "It should be a/an Positive Integer (per_page at most {MAX_PAGE_SIZE})"
                ),
                code: "invalid_value",
            }),
            _ => {}
        }
    }
    if !errors.is_empty() {
        return validation_failed(errors);
    }
    let state = core.state.lock().await;
    let tickets: Vec<Value> = state
        .tickets
        .iter()
        .rev()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .map(super::Ticket::json)
        .collect();
    axum::Json(json!({"tickets": tickets})).into_response()
}

async fn get_ticket(State(core): State<Arc<Core>>, Path(id): Path<String>) -> Response {
    let state = core.state.lock().await;
    match parse_id(&id).and_then(|id| state.tickets.iter().find(|t| t.id == id)) {
        Some(ticket) => axum::Json(json!({"ticket": ticket.json()})).into_response(),
        None => not_found().await,
    }
}

/// `GET /api/v2/tickets/{id}/conversations?page=&per_page=`: the ticket's notes, oldest first,
/// `per_page` at most 100 (default 30), pages from 1.
async fn get_conversations(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let page: usize = q
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let per_page: usize = q
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let state = core.state.lock().await;
    let Some(ticket) = parse_id(&id).and_then(|id| state.tickets.iter().find(|t| t.id == id))
    else {
        return not_found().await;
    };
    let conversations: Vec<Value> = ticket
        .notes
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(super::model::Note::json)
        .collect();
    axum::Json(json!({ "conversations": conversations })).into_response()
}

async fn get_approvals(State(core): State<Arc<Core>>, Path(id): Path<String>) -> Response {
    let state = core.state.lock().await;
    let Some(ticket) = parse_id(&id).and_then(|id| state.tickets.iter().find(|t| t.id == id))
    else {
        return not_found().await;
    };
    let approvals: Vec<Value> = ticket
        .approvals
        .iter()
        .map(|a| {
            let name = state
                .agents
                .iter()
                .find(|g| g.id == a.approver_id)
                .map(|g| {
                    format!("{} {}", g.first_name, g.last_name)
                        .trim()
                        .to_owned()
                })
                .unwrap_or_default();
            a.json(&name, ticket.requester_id)
        })
        .collect();
    axum::Json(json!({"approvals": approvals})).into_response()
}

async fn get_requester(State(core): State<Arc<Core>>, Path(id): Path<String>) -> Response {
    let state = core.state.lock().await;
    match parse_id(&id).and_then(|id| state.requesters.iter().find(|r| r.id == id)) {
        Some(r) => axum::Json(json!({"requester": r.json()})).into_response(),
        None => not_found().await,
    }
}

async fn get_agent(State(core): State<Arc<Core>>, Path(id): Path<String>) -> Response {
    let state = core.state.lock().await;
    match parse_id(&id).and_then(|id| state.agents.iter().find(|a| a.id == id)) {
        Some(a) => axum::Json(json!({"agent": a.json()})).into_response(),
        None => not_found().await,
    }
}

/// The body as a JSON object, if it is one.
fn parse_object(body: &Bytes) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

fn bad_json() -> Response {
    validation_failed(vec![FieldError {
        field: String::new(),
        message: "Request body has invalid json format".into(),
        code: "invalid_json",
    }])
}

fn integer_in(field: &str, value: &Value, allowed: &[u8]) -> Result<u8, FieldError> {
    let Some(n) = value.as_u64() else {
        return Err(FieldError {
            field: field.to_owned(),
            message: "It should be a/an Integer".into(),
            code: "datatype_mismatch",
        });
    };
    allowed
        .iter()
        .copied()
        .find(|a| u64::from(*a) == n)
        .ok_or_else(|| FieldError {
            field: field.to_owned(),
            message: format!(
                "It should be one of these values: '{}'",
                allowed
                    .iter()
                    .map(u8::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            code: "invalid_value",
        })
}

fn unexpected(field: &str) -> FieldError {
    FieldError {
        field: field.to_owned(),
        message: "Unexpected/invalid field in request".into(),
        code: "invalid_field",
    }
}

async fn put_ticket(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Some(input) = parse_object(&body) else {
        return bad_json();
    };
    let (doc, event) = {
        let mut state = core.state.lock().await;
        let Some(idx) = parse_id(&id).and_then(|id| state.tickets.iter().position(|t| t.id == id))
        else {
            return not_found().await;
        };
        let mut errors = Vec::new();
        let mut new_status = None;
        let mut new_priority = None;
        let mut new_responder = None;
        let mut new_subject = None;
        let mut new_description = None;
        let mut new_custom = Vec::new();
        let mut new_tags = None;
        for (field, value) in &input {
            match field.as_str() {
                "status" => match integer_in(field, value, &status::ALL) {
                    Ok(s) => new_status = Some(s),
                    Err(e) => errors.push(e),
                },
                "priority" => match integer_in(field, value, &[1, 2, 3, 4]) {
                    Ok(p) => new_priority = Some(p),
                    Err(e) => errors.push(e),
                },
                "responder_id" => match value {
                    Value::Null => new_responder = Some(None),
                    v => match v.as_u64() {
                        Some(a) if state.agents.iter().any(|g| g.id == a) => {
                            new_responder = Some(Some(a));
                        }
                        Some(_) => errors.push(FieldError {
                            field: field.clone(),
                            message: "There is no agent matching the given responder_id".into(),
                            code: "invalid_value",
                        }),
                        None => errors.push(FieldError {
                            field: field.clone(),
                            message: "It should be a/an Integer".into(),
                            code: "datatype_mismatch",
                        }),
                    },
                },
                "subject" | "description" => match value.as_str() {
                    Some(s) if field == "subject" => new_subject = Some(s.to_owned()),
                    Some(s) => new_description = Some(s.to_owned()),
                    None => errors.push(FieldError {
                        field: field.clone(),
                        message: "It should be a/an String".into(),
                        code: "datatype_mismatch",
                    }),
                },
                "tags" => match value.as_array() {
                    Some(tags) if tags.iter().all(Value::is_string) => {
                        new_tags = Some(
                            tags.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_owned)
                                .collect::<Vec<_>>(),
                        );
                    }
                    _ => errors.push(FieldError {
                        field: field.clone(),
                        message: "It should be a/an Array of Strings".into(),
                        code: "datatype_mismatch",
                    }),
                },
                "custom_fields" => match value.as_object() {
                    Some(fields) => {
                        for (k, v) in fields {
                            if state.custom_fields.contains_key(k) {
                                new_custom.push((k.clone(), v.clone()));
                            } else {
                                errors.push(unexpected(k));
                            }
                        }
                    }
                    None => errors.push(FieldError {
                        field: field.clone(),
                        message: "It should be a/an key/value pair".into(),
                        code: "datatype_mismatch",
                    }),
                },
                other => errors.push(unexpected(other)),
            }
        }
        if !errors.is_empty() {
            return validation_failed(errors);
        }
        let Some(ticket) = state.tickets.get_mut(idx) else {
            return not_found().await;
        };
        let status_changed = new_status.is_some_and(|s| s != ticket.status);
        if let Some(s) = new_status {
            ticket.status = s;
        }
        if let Some(p) = new_priority {
            ticket.priority = p;
        }
        if let Some(r) = new_responder {
            ticket.responder_id = r;
        }
        if let Some(s) = new_subject {
            ticket.subject = s;
        }
        if let Some(d) = new_description {
            ticket.description = d;
        }
        if let Some(t) = new_tags {
            ticket.tags = t;
        }
        for (k, v) in new_custom {
            ticket.custom_fields.insert(k, v);
        }
        ticket.updated_at = Timestamp::now();
        let event = PendingEvent {
            event: if status_changed {
                "status_changed"
            } else {
                "ticket_updated"
            },
            ticket_id: ticket.id,
        };
        (ticket.json(), event)
    };
    core.emit_for_api(Some(event)).await;
    axum::Json(json!({"ticket": doc})).into_response()
}

async fn post_note(
    State(core): State<Arc<Core>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Some(input) = parse_object(&body) else {
        return bad_json();
    };
    let mut errors = Vec::new();
    let mut private = true;
    let mut text = None;
    for (field, value) in &input {
        match field.as_str() {
            "body" => match value.as_str() {
                Some(s) if !s.trim().is_empty() && s.chars().count() <= MAX_NOTE_CHARS => {
                    text = Some(s.to_owned());
                }
                Some(_) => errors.push(FieldError {
                    field: "body".into(),
                    message: "It should not be blank or longer than allowed".into(),
                    code: "invalid_value",
                }),
                None => errors.push(FieldError {
                    field: "body".into(),
                    message: "It should be a/an String".into(),
                    code: "datatype_mismatch",
                }),
            },
            "private" | "incoming" => match value.as_bool() {
                Some(b) if field == "private" => private = b,
                Some(_) => {}
                None => errors.push(FieldError {
                    field: field.clone(),
                    message: "It should be a/an Boolean".into(),
                    code: "datatype_mismatch",
                }),
            },
            "notify_emails" => {
                if !value
                    .as_array()
                    .is_some_and(|a| a.iter().all(Value::is_string))
                {
                    errors.push(FieldError {
                        field: field.clone(),
                        message: "It should be a/an Array of Strings".into(),
                        code: "datatype_mismatch",
                    });
                }
            }
            other => errors.push(unexpected(other)),
        }
    }
    if text.is_none() && !input.contains_key("body") {
        errors.push(FieldError {
            field: "body".into(),
            message: "It should be a/an String".into(),
            code: "missing_field",
        });
    }
    let Some(text) = text.filter(|_| errors.is_empty()) else {
        return validation_failed(errors);
    };
    let Some(ticket_id) = parse_id(&id) else {
        return not_found().await;
    };
    match core.add_note(ticket_id, caller.0, &text, private).await {
        Ok(note) => (
            StatusCode::CREATED,
            axum::Json(json!({"conversation": note.json()})),
        )
            .into_response(),
        Err(crate::SimError::UnknownIssue(_)) => not_found().await,
        Err(e) => validation_failed(vec![FieldError {
            field: "body".into(),
            message: e.to_string(),
            code: "invalid_value",
        }]),
    }
}
