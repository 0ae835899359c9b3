//! The simulated REST API: Jira platform v2/v3 (`/rest/api/{2|3}/...`) and the servicedesk
//! approval API (`/rest/servicedeskapi/...`), behind Basic auth, fault injection and the request
//! log. Error bodies use Jira's ErrorCollection (`{"errorMessages":[...],"errors":{...}}`) on the
//! platform API and JSM's `{"errorMessage":...,"i18nErrorMessage":...}` on the servicedesk API.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Core, InjectedFault, RequestRecord, adf, model};
use crate::error::SimError;

/// Largest request body the API accepts.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Jira's cap on `maxResults` for comment pages.
const MAX_PAGE: usize = 5000;

/// The authenticated caller's account id.
#[derive(Clone)]
struct Viewer(String);

pub(super) fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/rest/api/{ver}/issue/{key}", get(get_issue))
        .route(
            "/rest/api/{ver}/issue/{key}/transitions",
            get(get_transitions).post(post_transition),
        )
        .route(
            "/rest/api/{ver}/issue/{key}/comment",
            get(get_comments).post(post_comment),
        )
        .route("/rest/api/{ver}/myself", get(get_myself))
        .route(
            "/rest/servicedeskapi/request/{key}/approval",
            get(get_approvals),
        )
        .route(
            "/rest/servicedeskapi/request/{key}/approval/{id}",
            get(get_approval).post(post_approval),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(core.clone(), gatekeeper))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(core)
}

/// Jira's ErrorCollection.
pub(super) fn error_collection(status: StatusCode, messages: &[&str], errors: Value) -> Response {
    (
        status,
        axum::Json(json!({"errorMessages": messages, "errors": errors})),
    )
        .into_response()
}

fn servicedesk_error(status: StatusCode, message: &str, i18n_key: &str) -> Response {
    (
        status,
        axum::Json(json!({"errorMessage": message,
                          "i18nErrorMessage": {"i18nKey": i18n_key, "parameters": []}})),
    )
        .into_response()
}

fn issue_not_found() -> Response {
    error_collection(
        StatusCode::NOT_FOUND,
        &["Issue does not exist or you do not have permission to see it."],
        json!({}),
    )
}

fn platform_error(err: SimError) -> Response {
    match err {
        SimError::UnknownIssue(_) => issue_not_found(),
        SimError::TransitionNotAvailable { transition, .. } => error_collection(
            StatusCode::BAD_REQUEST,
            &[&format!(
                "Transition id '{transition}' is not valid for this issue."
            )],
            json!({}),
        ),
        SimError::InvalidInput(msg) => {
            error_collection(StatusCode::BAD_REQUEST, &[], json!({"comment": msg}))
        }
        other => error_collection(
            StatusCode::INTERNAL_SERVER_ERROR,
            &[&other.to_string()],
            json!({}),
        ),
    }
}

fn api_version(ver: &str) -> Option<u8> {
    match ver {
        "2" => Some(2),
        "3" | "latest" => Some(3),
        _ => None,
    }
}

/// The minute-precision ISO 8601 form Jira uses for `X-RateLimit-Reset`, rounded up so it is never
/// earlier than `Retry-After` implies.
fn reset_header(reset: Timestamp) -> String {
    let secs = reset.as_second();
    let rounded = secs.saturating_add(59).div_euclid(60).saturating_mul(60);
    Timestamp::from_second(rounded)
        .unwrap_or(reset)
        .strftime("%Y-%m-%dT%H:%MZ")
        .to_string()
}

fn fault_response(fault: InjectedFault) -> Response {
    match fault {
        InjectedFault::RateLimited {
            retry_after,
            reset,
            limit,
            reason,
        } => {
            let mut response = error_collection(
                StatusCode::TOO_MANY_REQUESTS,
                &["Rate limit exceeded."],
                json!({}),
            );
            let headers = response.headers_mut();
            let pairs = [
                ("retry-after", retry_after.to_string()),
                ("x-ratelimit-reset", reset_header(reset)),
                ("x-ratelimit-limit", limit.to_string()),
                ("x-ratelimit-remaining", "0".to_owned()),
                ("ratelimit-reason", reason.to_owned()),
            ];
            for (name, value) in pairs {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            }
            response
        }
        InjectedFault::Unavailable { retry_after } => {
            let mut response = error_collection(
                StatusCode::SERVICE_UNAVAILABLE,
                &["Service Unavailable"],
                json!({}),
            );
            if let Some(secs) = retry_after
                && let Ok(value) = HeaderValue::from_str(&secs.to_string())
            {
                response.headers_mut().insert("retry-after", value);
            }
            response
        }
    }
}

/// Decodes `Authorization: Basic base64(email:token)`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = B64.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (email, token) = text.split_once(':')?;
    Some((email.to_owned(), token.to_owned()))
}

/// Records the request, applies injected faults, then authenticates.
async fn gatekeeper(State(core): State<Arc<Core>>, mut request: Request, next: Next) -> Response {
    let at = Timestamp::now();
    let instant = Instant::now();
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);

    let response = if let Some(fault) = core.take_fault().await {
        fault_response(fault)
    } else {
        let viewer = match basic_credentials(request.headers()) {
            Some((email, token)) => core.authenticate(&email, &token).await,
            None => None,
        };
        match viewer {
            Some(account) => {
                request.extensions_mut().insert(Viewer(account));
                next.run(request).await
            }
            None => error_collection(
                StatusCode::UNAUTHORIZED,
                &["Client must be authenticated to access this resource."],
                json!({}),
            ),
        }
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

async fn not_found() -> Response {
    error_collection(
        StatusCode::NOT_FOUND,
        &["The requested resource could not be found."],
        json!({}),
    )
}

/// Applies Jira's `fields=` selection (`*all`, `*navigable`, `name`, `-name`) to a fields object.
fn select_fields(fields: &mut serde_json::Map<String, Value>, spec: Option<&String>) {
    let Some(spec) = spec else { return };
    let parts: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        return;
    }
    let include_all = parts.iter().any(|p| *p == "*all" || *p == "*navigable");
    let includes: Vec<&str> = parts
        .iter()
        .filter(|p| !p.starts_with('-') && !p.starts_with('*'))
        .copied()
        .collect();
    let excludes: Vec<&str> = parts.iter().filter_map(|p| p.strip_prefix('-')).collect();
    fields.retain(|k, _| {
        (include_all || includes.contains(&k.as_str())) && !excludes.contains(&k.as_str())
    });
}

async fn get_issue(
    State(core): State<Arc<Core>>,
    Extension(viewer): Extension<Viewer>,
    Path((ver, key)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(api) = api_version(&ver) else {
        return not_found().await;
    };
    let state = core.state.lock().await;
    let Ok(idx) = state.issue_index(&key) else {
        return issue_not_found();
    };
    let Some(issue) = state.issues.get(idx) else {
        return issue_not_found();
    };
    let mut doc = issue.json(&state.users, &state.workflow, &core.site(), api, &viewer.0);
    if let Some(fields) = doc.get_mut("fields").and_then(Value::as_object_mut) {
        select_fields(fields, query.get("fields"));
    }
    let expand = query.get("expand").map(String::as_str).unwrap_or("");
    if expand.split(',').any(|e| e.trim() == "changelog")
        && let Some(obj) = doc.as_object_mut()
    {
        let histories: Vec<Value> = issue
            .history
            .iter()
            .map(|h| {
                json!({"id": h.id,
                       "author": h.author.as_deref().map(|a| model::account_json(&state.users, a, &core.base, api, core.hide_emails)),
                       "created": model::jira_time(h.created),
                       "items": h.items.iter().map(model::ChangeItem::json).collect::<Vec<_>>()})
            })
            .collect();
        obj.insert(
            "changelog".into(),
            json!({"startAt": 0, "maxResults": histories.len(), "total": histories.len(),
                   "histories": histories}),
        );
    }
    (StatusCode::OK, axum::Json(doc)).into_response()
}

async fn get_transitions(
    State(core): State<Arc<Core>>,
    Path((ver, key)): Path<(String, String)>,
) -> Response {
    let Some(api) = api_version(&ver) else {
        return not_found().await;
    };
    let state = core.state.lock().await;
    let Some(issue) = state
        .issue_index(&key)
        .ok()
        .and_then(|idx| state.issues.get(idx))
    else {
        return issue_not_found();
    };
    let transitions: Vec<Value> = state
        .workflow
        .available(&issue.status_id)
        .into_iter()
        .map(|t| {
            let to = state
                .workflow
                .status(&t.to)
                .map(|s| s.json(&core.base, api))
                .unwrap_or(Value::Null);
            json!({"id": t.id, "name": t.name, "to": to, "hasScreen": false,
                   "isGlobal": t.from.is_empty(), "isInitial": false, "isAvailable": true,
                   "isConditional": false, "isLooped": false})
        })
        .collect();
    (
        StatusCode::OK,
        axum::Json(json!({"expand": "transitions", "transitions": transitions})),
    )
        .into_response()
}

/// The body as JSON, or Jira's 400 error collection ready to send (a handler returns it as is,
/// so its size on the error path does not matter).
#[allow(clippy::result_large_err)]
fn parse_json(body: &Bytes) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|_| {
        error_collection(
            StatusCode::BAD_REQUEST,
            &["Unexpected character in request body: the body is not valid JSON."],
            json!({}),
        )
    })
}

fn fields_not_on_screen(doc: &Value) -> Option<Response> {
    let mut errors = serde_json::Map::new();
    for section in ["fields", "update"] {
        if let Some(obj) = doc.get(section).and_then(Value::as_object) {
            for name in obj.keys() {
                errors.insert(
                    name.clone(),
                    Value::String(format!(
                        "Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."
                    )),
                );
            }
        }
    }
    (!errors.is_empty())
        .then(|| error_collection(StatusCode::BAD_REQUEST, &[], Value::Object(errors)))
}

async fn post_transition(
    State(core): State<Arc<Core>>,
    Extension(viewer): Extension<Viewer>,
    Path((ver, key)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if api_version(&ver).is_none() {
        return not_found().await;
    }
    let doc = match parse_json(&body) {
        Ok(doc) => doc,
        Err(response) => return response,
    };
    let id = match doc.pointer("/transition/id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            return error_collection(
                StatusCode::BAD_REQUEST,
                &["Missing 'transition' identifier"],
                json!({}),
            );
        }
    };
    // Our transitions have no screens, so Jira would refuse any field set with them.
    if let Some(response) = fields_not_on_screen(&doc) {
        return response;
    }
    // Transitions through the API are by id only.
    let exists = {
        let state = core.state.lock().await;
        if state.issue_index(&key).is_err() {
            return issue_not_found();
        }
        state.workflow.transitions().iter().any(|t| t.id == id)
    };
    if !exists {
        return error_collection(
            StatusCode::BAD_REQUEST,
            &[&format!(
                "Transition id '{id}' is not valid for this issue."
            )],
            json!({}),
        );
    }
    match core.transition(&key, &id, &viewer.0).await {
        Ok(event) => {
            core.emit_for_api(event).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(err) => platform_error(err),
    }
}

async fn get_comments(
    State(core): State<Arc<Core>>,
    Path((ver, key)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(api) = api_version(&ver) else {
        return not_found().await;
    };
    let start: usize = query
        .get("startAt")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let max: usize = query
        .get("maxResults")
        .and_then(|s| s.parse().ok())
        .unwrap_or(MAX_PAGE)
        .min(MAX_PAGE);
    let state = core.state.lock().await;
    let Some(issue) = state
        .issue_index(&key)
        .ok()
        .and_then(|idx| state.issues.get(idx))
    else {
        return issue_not_found();
    };
    let comments: Vec<Value> = issue
        .comments
        .iter()
        .skip(start)
        .take(max)
        .map(|c| c.json(&state.users, &core.base, issue.id, api))
        .collect();
    (
        StatusCode::OK,
        axum::Json(
            json!({"startAt": start, "maxResults": max, "total": issue.comments.len(),
                          "comments": comments}),
        ),
    )
        .into_response()
}

async fn post_comment(
    State(core): State<Arc<Core>>,
    Extension(viewer): Extension<Viewer>,
    Path((ver, key)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Some(api) = api_version(&ver) else {
        return not_found().await;
    };
    let doc = match parse_json(&body) {
        Ok(doc) => doc,
        Err(response) => return response,
    };
    let adf_body = match (api, doc.get("body")) {
        (_, None | Some(Value::Null)) => {
            return error_collection(
                StatusCode::BAD_REQUEST,
                &[],
                json!({"comment": "Comment body can not be empty!"}),
            );
        }
        (2, Some(Value::String(text))) if !text.trim().is_empty() => adf::from_plain_text(text),
        (2, Some(_)) => {
            return error_collection(
                StatusCode::BAD_REQUEST,
                &[],
                json!({"comment": "Comment body can not be empty!"}),
            );
        }
        (_, Some(Value::String(_))) => {
            return error_collection(
                StatusCode::BAD_REQUEST,
                &[
                    "Operation value must be an Atlassian Document (see the Atlassian Document Format)",
                ],
                json!({}),
            );
        }
        (_, Some(adf_doc)) => {
            if let Err(e) = adf::validate(adf_doc) {
                return error_collection(
                    StatusCode::BAD_REQUEST,
                    &[],
                    json!({"comment": format!("Comment body is not valid! {e}")}),
                );
            }
            adf_doc.clone()
        }
    };
    match core.comment(&key, &viewer.0, adf_body).await {
        Ok((id, event)) => {
            let rendered = {
                let state = core.state.lock().await;
                state
                    .issue_index(&key)
                    .ok()
                    .and_then(|idx| state.issues.get(idx))
                    .and_then(|issue| {
                        issue
                            .comments
                            .iter()
                            .find(|c| c.id == id)
                            .map(|c| c.json(&state.users, &core.base, issue.id, api))
                    })
                    .unwrap_or(Value::Null)
            };
            core.emit_for_api(event).await;
            (StatusCode::CREATED, axum::Json(rendered)).into_response()
        }
        Err(err) => platform_error(err),
    }
}

async fn get_myself(
    State(core): State<Arc<Core>>,
    Extension(viewer): Extension<Viewer>,
    Path(ver): Path<String>,
) -> Response {
    let Some(api) = api_version(&ver) else {
        return not_found().await;
    };
    let state = core.state.lock().await;
    let mut me = model::account_json(&state.users, &viewer.0, &core.base, api, false);
    if let Some(obj) = me.as_object_mut() {
        obj.insert("locale".into(), "en_US".into());
    }
    (StatusCode::OK, axum::Json(me)).into_response()
}

fn no_approvals(key: &str) -> Response {
    servicedesk_error(
        StatusCode::NOT_FOUND,
        &format!("Request {key} does not exist or has no approvals."),
        "sd.request.approval.error.not.found",
    )
}

/// Rendered approvals of `key` as `viewer` sees them, or the 404 to answer.
async fn approvals_of(core: &Core, key: &str, viewer: &str) -> Result<Vec<Value>, Response> {
    let state = core.state.lock().await;
    let issue = state
        .issue_index(key)
        .ok()
        .and_then(|idx| state.issues.get(idx))
        .filter(|issue| !issue.approvals.is_empty())
        .ok_or_else(|| no_approvals(key))?;
    Ok(issue
        .approvals
        .iter()
        .map(|a| a.json(&state.users, &core.site(), &issue.key, viewer))
        .collect())
}

async fn get_approvals(
    State(core): State<Arc<Core>>,
    Extension(viewer): Extension<Viewer>,
    Path(key): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let values = match approvals_of(&core, &key, &viewer.0).await {
        Ok(values) => values,
        Err(response) => return response,
    };
    let start: usize = query.get("start").and_then(|s| s.parse().ok()).unwrap_or(0);
    let limit: usize = query
        .get("limit")
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
        .clamp(1, 100);
    let page: Vec<Value> = values.iter().skip(start).take(limit).cloned().collect();
    let last = start.saturating_add(page.len()) >= values.len();
    (
        StatusCode::OK,
        axum::Json(json!({"size": page.len(), "start": start, "limit": limit, "isLastPage": last,
                          "values": page,
                          "_links": {"base": core.base, "context": "",
                                     "self": format!("{}/rest/servicedeskapi/request/{key}/approval", core.base)}})),
    )
        .into_response()
}

async fn get_approval(
    State(core): State<Arc<Core>>,
    Extension(viewer): Extension<Viewer>,
    Path((key, id)): Path<(String, String)>,
) -> Response {
    match approvals_of(&core, &key, &viewer.0).await {
        Ok(values) => match values
            .into_iter()
            .find(|v| v.get("id").and_then(Value::as_str) == Some(id.as_str()))
        {
            Some(v) => (StatusCode::OK, axum::Json(v)).into_response(),
            None => no_approvals(&key),
        },
        Err(response) => response,
    }
}

async fn post_approval(
    State(core): State<Arc<Core>>,
    Extension(viewer): Extension<Viewer>,
    Path((key, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let approve = match serde_json::from_slice::<Value>(&body)
        .ok()
        .as_ref()
        .and_then(|d| d.get("decision"))
        .and_then(Value::as_str)
    {
        Some("approve") => true,
        Some("decline") => false,
        _ => {
            return servicedesk_error(
                StatusCode::BAD_REQUEST,
                "The decision must be 'approve' or 'decline'.",
                "sd.request.approval.error.invalid.decision",
            );
        }
    };
    match approvals_of(&core, &key, &viewer.0).await {
        Ok(values) => {
            if !values
                .iter()
                .any(|v| v.get("id").and_then(Value::as_str) == Some(id.as_str()))
            {
                return no_approvals(&key);
            }
        }
        Err(response) => return response,
    }
    match core
        .answer_approval(&key, Some(&id), &viewer.0, approve)
        .await
    {
        Ok((approval_id, event)) => {
            core.emit_for_api(event).await;
            match approvals_of(&core, &key, &viewer.0).await {
                Ok(values) => values
                    .into_iter()
                    .find(|v| v.get("id").and_then(Value::as_str) == Some(approval_id.as_str()))
                    .map_or_else(
                        || no_approvals(&key),
                        |v| (StatusCode::OK, axum::Json(v)).into_response(),
                    ),
                Err(response) => response,
            }
        }
        Err(SimError::NoPendingApproval { .. }) => servicedesk_error(
            StatusCode::FORBIDDEN,
            "You cannot answer this approval: you are not a pending approver, or it is already decided.",
            "sd.request.approval.error.cannot.answer",
        ),
        Err(err) => servicedesk_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &err.to_string(),
            "sd.internal.error",
        ),
    }
}
