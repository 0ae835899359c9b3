//! The simulated Support API v2, behind Basic auth (`email/token:api_token`), fault injection and
//! the request log. Errors use Zendesk's envelope: `{"error": "RecordNotFound", "description":
//! "Not found"}`, `{"error": "RecordInvalid", "description": "Record validation errors",
//! "details": {...}}`, `{"error": "Couldn't authenticate you"}`.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::{Core, Refusal, RequestRecord, Update, push_bounded};

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The account's requests per minute, as `X-Rate-Limit` reports it (Zendesk Suite Professional).
const RATE_LIMIT_PER_MINUTE: &str = "400";

/// The authenticated API user's id.
#[derive(Clone, Copy)]
struct Agent(u64);

pub(super) fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/api/v2/tickets/{file}", get(get_ticket).put(put_ticket))
        .route("/api/v2/tickets/{id}/audits.json", get(get_audits))
        .route("/api/v2/tickets/{id}/comments.json", get(get_comments))
        .route("/api/v2/users/{file}", get(get_user))
        .fallback(|| async { not_found() })
        .layer(middleware::from_fn_with_state(core.clone(), gatekeeper))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(core)
}

fn envelope(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn not_found() -> Response {
    envelope(
        StatusCode::NOT_FOUND,
        json!({"error": "RecordNotFound", "description": "Not found"}),
    )
}

fn invalid(field: &str, description: &str) -> Response {
    envelope(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({"error": "RecordInvalid", "description": "Record validation errors",
               "details": {field: [{"description": description, "error": "InvalidValue"}]}}),
    )
}

/// `35436.json` → 35436.
fn id_of(file: &str) -> Option<u64> {
    file.strip_suffix(".json")?.parse().ok()
}

/// Decodes `Authorization: Basic base64(email/token:api_token)`.
fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let text = String::from_utf8(B64.decode(encoded.trim()).ok()?).ok()?;
    let (user, token) = text.split_once(':')?;
    Some((user.to_owned(), token.to_owned()))
}

/// Applies injected faults, authenticates, runs the handler and records the request.
async fn gatekeeper(State(core): State<Arc<Core>>, request: Request, next: Next) -> Response {
    let at = jiff::Timestamp::now();
    let instant = tokio::time::Instant::now();
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let presented = credentials(request.headers());
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .unwrap_or_default();
    let logged_body = serde_json::from_slice::<Value>(&bytes).ok();
    let mut request = Request::from_parts(parts, Body::from(bytes));

    let fault = {
        let mut state = core.state.lock().await;
        if let Some((n, secs)) = state.faults.rate_limit.filter(|(n, _)| *n > 0) {
            state.faults.rate_limit = Some((n - 1, secs));
            Some(Err(secs))
        } else if let Some(n) = state.faults.outage.filter(|n| *n > 0) {
            state.faults.outage = Some(n - 1);
            Some(Ok(()))
        } else {
            None
        }
    };
    let agent = {
        let state = core.state.lock().await;
        presented.as_ref().and_then(|(user, token)| {
            let email = user.strip_suffix("/token")?;
            state
                .tokens
                .iter()
                .any(|t| t.email.eq_ignore_ascii_case(email) && t.token == *token)
                .then(|| {
                    state
                        .users
                        .iter()
                        .find(|u| u.email.eq_ignore_ascii_case(email))
                        .map(|u| u.id)
                })
                .flatten()
        })
    };
    let response = match (fault, agent) {
        (Some(Err(secs)), _) => {
            let mut r = envelope(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": "APIRateLimitExceeded", "description": "Number of allowed API requests per minute exceeded"}),
            );
            // Zendesk's account-wide limit headers come with the 429 and its Retry-After.
            let headers = r.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                headers.insert("retry-after", v);
            }
            headers.insert(
                "x-rate-limit",
                HeaderValue::from_static(RATE_LIMIT_PER_MINUTE),
            );
            headers.insert("x-rate-limit-remaining", HeaderValue::from_static("0"));
            r
        }
        (Some(Ok(())), _) => envelope(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "ServiceUnavailable", "description": "Zendesk is temporarily unavailable"}),
        ),
        (None, None) => envelope(
            StatusCode::UNAUTHORIZED,
            json!({"error": "Couldn't authenticate you"}),
        ),
        (None, Some(id)) => {
            request.extensions_mut().insert(Agent(id));
            next.run(request).await
        }
    };
    let record = RequestRecord {
        method,
        path,
        status: response.status().as_u16(),
        user: presented.map(|(u, _)| u),
        body: logged_body,
        at,
        instant,
    };
    push_bounded(&mut core.state.lock().await.requests, record);
    response
}

async fn get_ticket(State(core): State<Arc<Core>>, Path(file): Path<String>) -> Response {
    let Some(id) = id_of(&file) else {
        return not_found();
    };
    let state = core.state.lock().await;
    match state.tickets.iter().find(|t| t.id == id) {
        Some(t) => envelope(
            StatusCode::OK,
            json!({"ticket": t.json(&core.base, &state.fields)}),
        ),
        None => not_found(),
    }
}

async fn put_ticket(
    State(core): State<Arc<Core>>,
    axum::Extension(agent): axum::Extension<Agent>,
    Path(file): Path<String>,
    body: Bytes,
) -> Response {
    let Some(id) = id_of(&file) else {
        return not_found();
    };
    let Ok(doc) = serde_json::from_slice::<Value>(&body) else {
        return envelope(
            StatusCode::BAD_REQUEST,
            json!({"error": "Unprocessable Entity", "description": "The request body is not valid JSON"}),
        );
    };
    let Some(t) = doc.get("ticket").and_then(Value::as_object) else {
        return envelope(
            StatusCode::BAD_REQUEST,
            json!({"error": "InvalidParameter", "description": "Parameter ticket is required"}),
        );
    };
    let mut update = Update::default();
    match t.get("status") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => update.status = Some(s.clone()),
        Some(_) => return invalid("status", "Status: is not a valid value"),
    }
    if let Some(comment) = t.get("comment") {
        let text = comment
            .get("body")
            .or_else(|| comment.get("html_body"))
            .and_then(Value::as_str);
        let Some(text) = text else {
            return invalid("comment", "Comment: Body can't be blank");
        };
        let public = comment
            .get("public")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        update.comment = Some((text.to_owned(), public));
    }
    if let Some(fields) = t.get("custom_fields").and_then(Value::as_array) {
        for f in fields {
            let Some(fid) = f.get("id").and_then(Value::as_u64) else {
                return invalid("custom_fields", "Custom field id is missing");
            };
            update
                .fields
                .push((fid, f.get("value").cloned().unwrap_or(Value::Null)));
        }
    }
    match core.update(id, agent.0, update, "api").await {
        Ok((doc, fired)) => {
            core.notify(fired).await;
            envelope(StatusCode::OK, doc)
        }
        Err(Refusal::NotFound) => not_found(),
        Err(Refusal::Invalid { field, description }) => invalid(&field, &description),
    }
}

async fn get_audits(State(core): State<Arc<Core>>, Path(id): Path<String>) -> Response {
    let state = core.state.lock().await;
    let Some(t) = id
        .parse::<u64>()
        .ok()
        .and_then(|id| state.tickets.iter().find(|t| t.id == id))
    else {
        return not_found();
    };
    let audits: Vec<Value> = t.audits.iter().map(super::model::Audit::json).collect();
    envelope(
        StatusCode::OK,
        json!({"audits": audits, "next_page": null, "previous_page": null, "count": t.audits.len()}),
    )
}

async fn get_comments(State(core): State<Arc<Core>>, Path(id): Path<String>) -> Response {
    let state = core.state.lock().await;
    let Some(t) = id
        .parse::<u64>()
        .ok()
        .and_then(|id| state.tickets.iter().find(|t| t.id == id))
    else {
        return not_found();
    };
    let comments: Vec<Value> = t.comments.iter().map(super::model::Comment::json).collect();
    envelope(
        StatusCode::OK,
        json!({"comments": comments, "next_page": null, "previous_page": null, "count": t.comments.len()}),
    )
}

async fn get_user(
    State(core): State<Arc<Core>>,
    axum::Extension(agent): axum::Extension<Agent>,
    Path(file): Path<String>,
) -> Response {
    let id = if file == "me.json" {
        Some(agent.0)
    } else {
        id_of(&file)
    };
    let state = core.state.lock().await;
    match id.and_then(|id| state.users.iter().find(|u| u.id == id)) {
        Some(u) => envelope(StatusCode::OK, json!({"user": u.json(&core.base)})),
        None => not_found(),
    }
}
