//! The simulated Table API: `GET` one record or a list (`sysparm_query`, `sysparm_limit`,
//! `sysparm_offset`, `sysparm_fields`, `sysparm_display_value`, `sysparm_exclude_reference_link`),
//! `PATCH`/`PUT` a record (`sysparm_input_display_value`), `POST` a record — under
//! `/api/now/table`, `/api/now/v1/table` and `/api/now/v2/table` — behind Basic/Bearer auth, the
//! injected outage, the inbound rate-limit rule and the request log. Errors use the platform's
//! `{"error":{"message","detail"},"status":"failure"}` envelope.

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
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::model::{self, DisplayValue, Lookup, RenderOptions, WriteError};
use super::query;
use super::{Core, RateVerdict, RequestRecord};

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The platform's default and our cap for `sysparm_limit`.
const MAX_LIMIT: usize = 10_000;

/// Credentials presented in `Authorization`.
pub(crate) enum Auth {
    /// `Basic base64(user:password)`.
    Basic(String, String),
    /// `Bearer <token>`.
    Bearer(String),
}

/// The authenticated caller's `user_name`.
#[derive(Clone)]
struct Viewer(String);

pub(super) fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/api/now/table/{table}", get(list).post(insert))
        .route(
            "/api/now/table/{table}/{sys_id}",
            get(get_record).patch(update).put(update),
        )
        .route("/api/now/{ver}/table/{table}", get(list).post(insert))
        .route(
            "/api/now/{ver}/table/{table}/{sys_id}",
            get(get_record).patch(update).put(update),
        )
        .fallback(bad_uri)
        .layer(middleware::from_fn_with_state(core.clone(), gatekeeper))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(core)
}

/// The platform's error envelope.
pub(super) fn envelope(status: StatusCode, message: &str, detail: Option<&str>) -> Response {
    (
        status,
        axum::Json(json!({"error": {"message": message, "detail": detail}, "status": "failure"})),
    )
        .into_response()
}

fn write_rejected(e: WriteError) -> Response {
    if e.message == "No Record found" {
        return envelope(StatusCode::NOT_FOUND, &e.message, Some(&e.detail));
    }
    envelope(StatusCode::BAD_REQUEST, &e.message, Some(&e.detail))
}

fn no_record() -> Response {
    envelope(
        StatusCode::NOT_FOUND,
        "No Record found",
        Some("Record doesn't exist or ACL restricts the record retrieval"),
    )
}

fn invalid_table(table: &str) -> Response {
    envelope(
        StatusCode::BAD_REQUEST,
        &format!("Invalid table {table}"),
        None,
    )
}

async fn bad_uri() -> Response {
    envelope(
        StatusCode::BAD_REQUEST,
        "Requested URI does not represent any resource",
        None,
    )
}

fn parse_auth(headers: &HeaderMap) -> Option<Auth> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(Auth::Bearer(rest.trim().to_owned()));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = B64.decode(rest.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some(Auth::Basic(user.to_owned(), password.to_owned()))
}

fn set_header(response: &mut Response, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

fn rate_headers(response: &mut Response, verdict: &RateVerdict) {
    set_header(response, "x-ratelimit-limit", &verdict.limit.to_string());
    set_header(
        response,
        "x-ratelimit-reset",
        &verdict.reset_unix.to_string(),
    );
    set_header(response, "x-ratelimit-rule", &verdict.rule);
}

fn over_limit(verdict: &RateVerdict, retry_after: u64) -> Response {
    let period = if verdict.window.as_secs() == 3600 {
        "hour".to_owned()
    } else {
        format!("{} seconds", verdict.window.as_secs())
    };
    let mut response = envelope(
        StatusCode::TOO_MANY_REQUESTS,
        "Rate limit exceeded",
        Some(&format!(
            "Rate limit of {} requests per {period} for Table API exceeded",
            verdict.limit
        )),
    );
    set_header(&mut response, "retry-after", &retry_after.to_string());
    rate_headers(&mut response, verdict);
    response
}

/// Records the request, applies the outage, authenticates, then applies the rate-limit rule.
async fn gatekeeper(State(core): State<Arc<Core>>, mut request: Request, next: Next) -> Response {
    let at = Timestamp::now();
    let instant = Instant::now();
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);

    let response = if let Some(retry_after) = core.take_outage().await {
        let mut response = envelope(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            Some("The instance is temporarily unavailable"),
        );
        if let Some(secs) = retry_after {
            set_header(&mut response, "retry-after", &secs.to_string());
        }
        response
    } else {
        let user = match parse_auth(request.headers()) {
            Some(auth) => core.authenticate(&auth).await,
            None => None,
        };
        match user {
            None => envelope(
                StatusCode::UNAUTHORIZED,
                "User Not Authenticated",
                Some("Required to provide Auth information"),
            ),
            Some(user) => {
                let verdict = core.count_rate(&user).await;
                match verdict {
                    Some(v) if v.exceeded.is_some() => over_limit(&v, v.exceeded.unwrap_or(1)),
                    _ => {
                        request.extensions_mut().insert(Viewer(user));
                        let mut response = next.run(request).await;
                        if let Some(v) = verdict {
                            rate_headers(&mut response, &v);
                        }
                        response
                    }
                }
            }
        }
    };
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    core.record_request(
        RequestRecord {
            method,
            path,
            query,
            status: response.status().as_u16(),
            at,
            instant,
        },
        retry_after,
    )
    .await;
    response
}

/// Which API version a path names: `None` (no segment) and `v1` behave alike.
fn version(params: &HashMap<String, String>) -> Option<u8> {
    match params.get("ver").map(String::as_str) {
        None | Some("v1") => Some(1),
        Some("v2") => Some(2),
        _ => None,
    }
}

fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    query
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn render_options(query: &HashMap<String, String>) -> RenderOptions {
    RenderOptions {
        display: DisplayValue::parse(query.get("sysparm_display_value").map(String::as_str)),
        exclude_reference_link: flag(query, "sysparm_exclude_reference_link"),
        fields: query.get("sysparm_fields").map(|f| {
            f.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        }),
    }
}

/// Whether `table` is served (`task` is the union of task tables).
/// Table API v1's answer to a list query without matches (v2 answers an empty list).
fn no_match_v1() -> Response {
    envelope(
        StatusCode::NOT_FOUND,
        "No Record found",
        Some("Records matching query not found. Check query parameter or offset parameter"),
    )
}

/// The table holding journal entries (`work_notes`, `comments`), read-only here.
const JOURNAL_TABLE: &str = "sys_journal_field";

/// `GET /api/now/table/sys_journal_field`: the journal entries matching the query (fields
/// `element`, `name`, `element_id`, `value`, `sys_created_by`, `sys_created_on`), oldest first.
async fn list_journal(core: &Core, parsed: &query::Query, ver: u8) -> Response {
    let state = core.state.lock().await;
    let page: Vec<Value> = state
        .journal
        .iter()
        .filter(|j| {
            parsed.matches(&|field: &str| {
                Some(match field {
                    "element" => j.element.clone(),
                    "name" => j.name.clone(),
                    "element_id" => j.element_id.clone(),
                    "value" => j.value.clone(),
                    "sys_created_by" => j.sys_created_by.clone(),
                    "sys_created_on" => j.sys_created_on.clone(),
                    _ => return None,
                })
            })
        })
        .map(|j| serde_json::to_value(j).unwrap_or_default())
        .collect();
    drop(state);
    if page.is_empty() && ver == 1 {
        return no_match_v1();
    }
    (StatusCode::OK, axum::Json(json!({"result": page}))).into_response()
}

fn known_table(table: &str) -> bool {
    table == "task" || model::schema(table).is_some()
}

async fn list(
    State(core): State<Arc<Core>>,
    Path(params): Path<HashMap<String, String>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(ver) = version(&params) else {
        return bad_uri().await;
    };
    let table = params.get("table").cloned().unwrap_or_default();
    if !known_table(&table) && table != JOURNAL_TABLE {
        return invalid_table(&table);
    }
    let parsed = match query::parse(q.get("sysparm_query").map(String::as_str).unwrap_or("")) {
        Ok(p) => p,
        Err(e) => {
            return envelope(
                StatusCode::BAD_REQUEST,
                "Invalid query",
                Some(&e.to_string()),
            );
        }
    };
    if table == JOURNAL_TABLE {
        return list_journal(&core, &parsed, ver).await;
    }
    let limit = q
        .get("sysparm_limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(MAX_LIMIT)
        .min(MAX_LIMIT);
    let offset = q
        .get("sysparm_offset")
        .and_then(|o| o.parse::<usize>().ok())
        .unwrap_or(0);
    let opts = render_options(&q);
    let state = core.state.lock().await;
    let mut matching: Vec<&model::Record> = state
        .records
        .iter()
        .filter(|r| r.schema.name == table || (table == "task" && r.schema.is_task))
        .filter(|r| {
            parsed.matches(&|field: &str| r.schema.kind(field).map(|_| r.get(field).to_owned()))
        })
        .collect();
    for (field, descending) in parsed.order.iter().rev() {
        matching.sort_by(|a, b| {
            let ord = a.get(field).cmp(b.get(field));
            if *descending { ord.reverse() } else { ord }
        });
    }
    let total = matching.len();
    let page: Vec<Value> = matching
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|r| model::render(&*state as &dyn Lookup, &core.base, r, &opts))
        .collect();
    drop(state);
    if page.is_empty() && ver == 1 {
        return no_match_v1();
    }
    let mut response = (StatusCode::OK, axum::Json(json!({"result": page}))).into_response();
    set_header(&mut response, "x-total-count", &total.to_string());
    response
}

async fn get_record(
    State(core): State<Arc<Core>>,
    Path(params): Path<HashMap<String, String>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if version(&params).is_none() {
        return bad_uri().await;
    }
    let table = params.get("table").cloned().unwrap_or_default();
    let sys_id = params.get("sys_id").cloned().unwrap_or_default();
    if !known_table(&table) {
        return invalid_table(&table);
    }
    let state = core.state.lock().await;
    let Some(record) = state.find(&table, &sys_id) else {
        return no_record();
    };
    let doc = model::render(
        &*state as &dyn Lookup,
        &core.base,
        record,
        &render_options(&q),
    );
    (StatusCode::OK, axum::Json(json!({"result": doc}))).into_response()
}

/// The body as a JSON object, if it is one.
fn parse_object(body: &Bytes) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

fn bad_json() -> Response {
    envelope(
        StatusCode::BAD_REQUEST,
        "Exception while reading request",
        Some("The payload is not valid JSON."),
    )
}

fn suppress_body(headers: &HeaderMap) -> bool {
    headers
        .get("x-no-response-body")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

async fn update(
    State(core): State<Arc<Core>>,
    Extension(viewer): Extension<Viewer>,
    Path(params): Path<HashMap<String, String>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if version(&params).is_none() {
        return bad_uri().await;
    }
    let table = params.get("table").cloned().unwrap_or_default();
    let sys_id = params.get("sys_id").cloned().unwrap_or_default();
    if !known_table(&table) {
        return invalid_table(&table);
    }
    let Some(input) = parse_object(&body) else {
        return bad_json();
    };
    let display_input = flag(&q, "sysparm_input_display_value");
    let (doc, events) = {
        let mut state = core.state.lock().await;
        let Some(idx) = state.records.iter().position(|r| {
            (r.schema.name == table || (table == "task" && r.schema.is_task))
                && r.sys_id() == sys_id
        }) else {
            return no_record();
        };
        let events = match core.update_locked(&mut state, idx, &input, display_input, &viewer.0) {
            Ok(events) => events,
            Err(e) => return write_rejected(e),
        };
        (core.render(&state, idx, &render_options(&q)), events)
    };
    core.emit_for_api(events).await;
    if suppress_body(&headers) {
        return StatusCode::OK.into_response();
    }
    (StatusCode::OK, axum::Json(json!({"result": doc}))).into_response()
}

async fn insert(
    State(core): State<Arc<Core>>,
    Extension(viewer): Extension<Viewer>,
    Path(params): Path<HashMap<String, String>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if version(&params).is_none() {
        return bad_uri().await;
    }
    let table = params.get("table").cloned().unwrap_or_default();
    let Some(schema) = model::schema(&table) else {
        return invalid_table(&table);
    };
    let Some(input) = parse_object(&body) else {
        return bad_json();
    };
    let display_input = flag(&q, "sysparm_input_display_value");
    let (doc, sys_id, events) = {
        let mut state = core.state.lock().await;
        let (idx, events) =
            match core.insert_locked(&mut state, schema, &input, display_input, &viewer.0) {
                Ok(done) => done,
                Err(e) => return write_rejected(e),
            };
        let sys_id = state
            .records
            .get(idx)
            .map(|r| r.sys_id().to_owned())
            .unwrap_or_default();
        (
            core.render(&state, idx, &render_options(&q)),
            sys_id,
            events,
        )
    };
    core.emit_for_api(events).await;
    let mut response = if suppress_body(&headers) {
        StatusCode::CREATED.into_response()
    } else {
        (StatusCode::CREATED, axum::Json(json!({"result": doc}))).into_response()
    };
    set_header(
        &mut response,
        "location",
        &model::reference_link(&core.base, &table, &sys_id),
    );
    response
}
