//! The connector against a tiny in-test Jira that answers in Jira's documented shapes
//! (`itsm-wire-formats.md` 1.3): 201 comments that must be ADF, 204 transitions, paged JSM
//! approvals, ErrorCollection bodies, 429/503 with `Retry-After`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::*;
use crate::ticket::EventKind;

const TOKEN: &str = "s3cr3t-api-token";
const USER: &str = "jitbridge@example.com";

/// A canned answer: status, extra headers, JSON body.
type Canned = (StatusCode, Vec<(&'static str, &'static str)>, Value);

/// What the fake site holds for its one issue, `ACCESS-87`.
#[derive(Default)]
struct Site {
    status: String,
    /// `None`: the approvals endpoint answers 404 (not a JSM request).
    approvals: Option<Vec<Value>>,
    /// When set, every endpoint answers with this instead.
    fail: Option<Canned>,
    comments: Vec<Value>,
    transitions_posted: Vec<String>,
    approval_pages_served: usize,
    unauthenticated_calls: usize,
}

type Shared = Arc<Mutex<Site>>;

fn site(status: &str) -> Shared {
    Arc::new(Mutex::new(Site {
        status: status.to_owned(),
        ..Site::default()
    }))
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Site> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks credentials and the injected failure; `Some(response)` short-circuits the handler.
fn gate(s: &Shared, headers: &HeaderMap) -> Option<Response> {
    use base64::Engine;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{TOKEN}"))
    );
    let mut site = lock(s);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        site.unauthenticated_calls += 1;
        return Some(
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"errorMessages": ["Unauthorized"], "errors": {}})),
            )
                .into_response(),
        );
    }
    let (status, hdrs, body) = site.fail.clone()?;
    let mut resp = (status, axum::Json(body)).into_response();
    for (k, v) in hdrs {
        resp.headers_mut()
            .insert(k, axum::http::HeaderValue::from_static(v));
    }
    Some(resp)
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, axum::Json(json!({"errorMessages": ["Issue does not exist or you do not have permission to see it."], "errors": {}}))).into_response()
}

/// The workflow: which transitions leave which status.
fn transitions_from(status: &str) -> Vec<Value> {
    match status {
        "Waiting for approval" => vec![
            json!({"id": "11", "name": "Approve", "to": {"id": "10012", "name": "Approved", "statusCategory": {"key": "indeterminate"}}}),
            json!({"id": "21", "name": "Start work", "to": {"id": "3", "name": "In Progress", "statusCategory": {"key": "indeterminate"}}}),
        ],
        "In Progress" => {
            vec![json!({"id": 31, "name": "Resolve", "to": {"id": "5", "name": "Resolved"}})]
        }
        _ => vec![],
    }
}

async fn myself(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    axum::Json(json!({"accountId": "bot", "emailAddress": USER, "active": true})).into_response()
}

async fn issue(State(s): State<Shared>, headers: HeaderMap, Path(key): Path<String>) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    if key != "ACCESS-87" {
        return not_found();
    }
    let status = lock(&s).status.clone();
    axum::Json(json!({"id": "10234", "key": "ACCESS-87", "self": "https://elsewhere.example/rest/api/3/issue/10234",
        "fields": {"status": {"id": "1", "name": status, "statusCategory": {"key": "indeterminate"}},
                   "reporter": {"accountId": "712020:requester", "displayName": "Requester", "emailAddress": "req@example.com"}}}))
    .into_response()
}

/// Serves one approval per page so that pagination is exercised.
async fn approvals(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let mut site = lock(&s);
    let Some(all) = site.approvals.clone().filter(|_| key == "ACCESS-87") else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(
                json!({"errorMessage": "The request could not be found", "i18nErrorMessage": {}}),
            ),
        )
            .into_response();
    };
    site.approval_pages_served += 1;
    let start: usize = q.get("start").and_then(|v| v.parse().ok()).unwrap_or(0);
    let values: Vec<Value> = all.iter().skip(start).take(1).cloned().collect();
    axum::Json(json!({"size": values.len(), "start": start, "limit": 1, "isLastPage": start + 1 >= all.len(), "values": values}))
        .into_response()
}

/// True when `doc` is an ADF document of paragraphs holding non-empty text and hard breaks.
fn valid_adf(doc: &Value) -> bool {
    doc["type"] == "doc"
        && doc["version"] == 1
        && doc["content"].as_array().is_some_and(|ps| {
            !ps.is_empty()
                && ps.iter().all(|p| {
                    p["type"] == "paragraph"
                        && p["content"].as_array().is_some_and(|ns| {
                            ns.iter().all(|n| match n["type"].as_str() {
                                Some("text") => n["text"].as_str().is_some_and(|t| !t.is_empty()),
                                Some("hardBreak") => true,
                                _ => false,
                            })
                        })
                })
        })
}

async fn add_comment(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(key): Path<String>,
    body: axum::Json<Value>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    if key != "ACCESS-87" {
        return not_found();
    }
    if !valid_adf(&body.0["body"]) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"errorMessages": [], "errors": {"comment": "Comment body is not valid!"}}),
            ),
        )
            .into_response();
    }
    lock(&s).comments.push(body.0["body"].clone());
    (StatusCode::CREATED, axum::Json(json!({"id": "10000", "body": body.0["body"], "created": "2025-03-14T10:01:37.640+0000"})))
        .into_response()
}

/// `GET .../comment`: pages of 2 (whatever `maxResults` says) so paging is exercised.
async fn list_comments(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    if key != "ACCESS-87" {
        return not_found();
    }
    let start: usize = q.get("startAt").and_then(|v| v.parse().ok()).unwrap_or(0);
    let site = lock(&s);
    let page: Vec<Value> = site
        .comments
        .iter()
        .skip(start)
        .take(2)
        .map(|b| json!({"id": "1", "body": b}))
        .collect();
    axum::Json(
        json!({"startAt": start, "maxResults": 2, "total": site.comments.len(), "comments": page}),
    )
    .into_response()
}

async fn list_transitions(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    if key != "ACCESS-87" {
        return not_found();
    }
    let status = lock(&s).status.clone();
    axum::Json(json!({"expand": "transitions", "transitions": transitions_from(&status)}))
        .into_response()
}

async fn do_transition(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(key): Path<String>,
    body: axum::Json<Value>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    if key != "ACCESS-87" {
        return not_found();
    }
    let Some(id) = body.0["transition"]["id"].as_str().map(str::to_owned) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"errorMessages": ["Missing transition id"], "errors": {}})),
        )
            .into_response();
    };
    let mut site = lock(&s);
    let to = transitions_from(&site.status)
        .into_iter()
        .find(|t| {
            t["id"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| t["id"].as_u64().map(|n| n.to_string()))
                == Some(id.clone())
        })
        .and_then(|t| t["to"]["name"].as_str().map(str::to_owned));
    let Some(to) = to else {
        let msg = format!("Transition id '{id}' is not valid for this issue.");
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"errorMessages": [msg], "errors": {}})),
        )
            .into_response();
    };
    site.status = to;
    site.transitions_posted.push(id);
    StatusCode::NO_CONTENT.into_response()
}

/// Starts the fake site on `127.0.0.1:0` and returns its base URL.
async fn serve(s: Shared) -> Url {
    let app = Router::new()
        .route("/rest/api/3/myself", get(myself))
        .route("/rest/api/3/issue/{key}", get(issue))
        .route(
            "/rest/api/3/issue/{key}/comment",
            get(list_comments).post(add_comment),
        )
        .route(
            "/rest/api/3/issue/{key}/transitions",
            get(list_transitions).post(do_transition),
        )
        .route(
            "/rest/servicedeskapi/request/{key}/approval",
            get(approvals),
        )
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

fn connector(base: Url) -> JiraConnector {
    let auth = OutboundAuth::Basic {
        username: USER.to_owned(),
        password: TOKEN.into(),
    };
    JiraConnector::new(
        "jira".to_owned(),
        base,
        auth,
        Duration::from_secs(5),
        reqwest::Client::new(),
    )
}

fn ticket() -> TicketRef {
    TicketRef {
        connector: "jira".into(),
        id: "10234".into(),
        key: "ACCESS-87".into(),
        url: None,
    }
}

fn comment(text: &str) -> Writeback {
    Writeback {
        ticket: ticket(),
        action: WritebackAction::Comment { text: text.into() },
        marker: "g1:active:comment".into(),
    }
}

fn status(name: &str) -> Writeback {
    Writeback {
        ticket: ticket(),
        action: WritebackAction::Status { name: name.into() },
        marker: "g1:active:status".into(),
    }
}

fn approval_record(
    id: &str,
    final_decision: &str,
    completed_ms: Option<i64>,
    approvers: Value,
) -> Value {
    let mut r = json!({"id": id, "name": "Manager approval", "finalDecision": final_decision, "canAnswerApproval": false,
        "approvers": approvers, "createdDate": {"epochMillis": 1_741_000_000_000_i64, "iso8601": "2025-03-03T11:06:40+0000"}});
    if let Some(ms) = completed_ms {
        r["completedDate"] = json!({"epochMillis": ms});
    }
    r
}

#[tokio::test]
async fn comment_is_posted_as_adf_and_accepted_with_201() {
    let s = site("In Progress");
    let c = connector(serve(s.clone()).await);
    c.write_back(&comment(
        "Local admin granted to req@example.com on WS-0042.\nUntil 18:00.\n\nAudit id: 42",
    ))
    .await
    .expect("201");
    let site = lock(&s);
    assert_eq!(site.comments.len(), 1);
    let doc = &site.comments[0];
    assert_eq!(
        doc["content"].as_array().map(Vec::len),
        Some(3),
        "two paragraphs of text and the marker's"
    );
    assert_eq!(
        doc["content"][0]["content"][1],
        json!({"type": "hardBreak"})
    );
    assert_eq!(doc["content"][1]["content"][0]["text"], "Audit id: 42");
    assert_eq!(doc["content"][2]["content"][0]["text"], "g1:active:comment");
    assert_eq!(site.unauthenticated_calls, 0);
}

#[tokio::test]
async fn a_posted_comment_is_found_again_by_its_marker_across_pages() {
    let s = site("In Progress");
    let c = connector(serve(s.clone()).await);
    for i in 0..4 {
        let mut other = comment(&format!("earlier comment {i}"));
        other.marker = format!("g0:state{i}:comment");
        c.write_back(&other).await.expect("201");
    }
    let wb = comment("Local admin granted.");
    assert!(
        !c.has_comment(&wb).await.expect("listing"),
        "not posted yet"
    );
    c.write_back(&wb).await.expect("201");
    assert!(
        c.has_comment(&wb).await.expect("listing"),
        "on the third page"
    );
}

#[tokio::test]
async fn status_writeback_finds_transition_by_target_status_name_case_insensitively() {
    let s = site("Waiting for approval");
    let c = connector(serve(s.clone()).await);
    c.write_back(&status("in progress")).await.expect("204");
    let site = lock(&s);
    assert_eq!(site.transitions_posted, vec!["21".to_owned()]);
    assert_eq!(site.status, "In Progress");
}

#[tokio::test]
async fn status_writeback_falls_back_to_the_transition_name() {
    let s = site("Waiting for approval");
    let c = connector(serve(s.clone()).await);
    c.write_back(&status("Start work")).await.expect("204");
    assert_eq!(lock(&s).status, "In Progress");
}

#[tokio::test]
async fn numeric_transition_ids_are_sent_as_strings() {
    let s = site("In Progress");
    let c = connector(serve(s.clone()).await);
    c.write_back(&status("Resolved")).await.expect("204");
    assert_eq!(lock(&s).transitions_posted, vec!["31".to_owned()]);
}

#[tokio::test]
async fn status_writeback_is_idempotent_when_issue_already_has_the_status() {
    let s = site("In Progress");
    let c = connector(serve(s.clone()).await);
    c.write_back(&status("In Progress"))
        .await
        .expect("already there");
    assert!(lock(&s).transitions_posted.is_empty());
}

#[tokio::test]
async fn unreachable_status_is_invalid_and_lists_reachable_statuses() {
    let s = site("Waiting for approval");
    let c = connector(serve(s.clone()).await);
    let err = c
        .write_back(&status("Done"))
        .await
        .expect_err("no transition to Done");
    let ConnectorError::Invalid(msg) = &err else {
        panic!("expected Invalid, got {err:?}")
    };
    assert!(
        msg.contains("\"Approved\"") && msg.contains("\"In Progress\""),
        "{msg}"
    );
    assert!(msg.contains("Waiting for approval"), "{msg}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn rate_limit_429_is_retryable_with_retry_after() {
    let s = site("In Progress");
    lock(&s).fail = Some((
        StatusCode::TOO_MANY_REQUESTS,
        vec![
            ("retry-after", "30"),
            ("ratelimit-reason", "jira-quota-based"),
        ],
        json!({"errorMessages": ["Rate limit exceeded."], "errors": {}}),
    ));
    let c = connector(serve(s.clone()).await);
    let err = c.write_back(&comment("hello")).await.expect_err("429");
    assert!(
        matches!(err, ConnectorError::RateLimited { status: 429, .. }),
        "{err:?}"
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    assert!(err.is_retryable());
}

#[tokio::test]
async fn rate_limit_429_without_retry_after_uses_the_reset_time() {
    let s = site("In Progress");
    lock(&s).fail = Some((
        StatusCode::TOO_MANY_REQUESTS,
        vec![("x-ratelimit-reset", "2999-01-01T00:00Z")],
        json!({"errorMessages": ["Rate limit exceeded."], "errors": {}}),
    ));
    let c = connector(serve(s.clone()).await);
    let err = c.confirm(&ticket()).await.expect_err("429");
    assert!(matches!(err, ConnectorError::RateLimited { .. }));
    assert!(
        err.retry_after().is_some_and(|d| d > Duration::ZERO),
        "{err:?}"
    );
}

#[tokio::test]
async fn outage_503_is_unavailable_and_keeps_retry_after() {
    let s = site("In Progress");
    lock(&s).fail = Some((
        StatusCode::SERVICE_UNAVAILABLE,
        vec![("retry-after", "7")],
        json!({}),
    ));
    let c = connector(serve(s.clone()).await);
    let err = c.write_back(&status("Resolved")).await.expect_err("503");
    assert_eq!(
        err,
        ConnectorError::Unavailable {
            status: Some(503),
            retry_after: Some(Duration::from_secs(7)),
            detail: "GET /rest/api/3/issue/ACCESS-87/transitions: HTTP 503 Service Unavailable"
                .into(),
        }
    );
    let lookup = c.has_comment(&comment("x")).await.expect_err("503");
    assert!(
        lookup.is_retryable(),
        "looking for a marker retries too: {lookup}"
    );
}

#[tokio::test]
async fn bad_request_400_error_collection_is_rejected_with_jiras_message() {
    let s = site("In Progress");
    lock(&s).fail = Some((
        StatusCode::BAD_REQUEST,
        vec![],
        json!({"errorMessages": ["Field 'x' cannot be set."], "errors": {"comment": "Comment body is not valid!"}}),
    ));
    let c = connector(serve(s.clone()).await);
    let err = c.write_back(&comment("hello")).await.expect_err("400");
    let ConnectorError::Rejected {
        status: 400,
        detail,
    } = &err
    else {
        panic!("expected Rejected, got {err:?}")
    };
    assert!(
        detail.starts_with("POST /rest/api/3/issue/ACCESS-87/comment: "),
        "{detail}"
    );
    assert!(
        detail.contains("Field 'x' cannot be set.")
            && detail.contains("comment: Comment body is not valid!"),
        "{detail}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn wrong_credentials_are_rejected_without_echoing_them() {
    let s = site("In Progress");
    let base = serve(s.clone()).await;
    let auth = OutboundAuth::Basic {
        username: USER.to_owned(),
        password: "wrong-secret-value".into(),
    };
    let c = JiraConnector::new(
        "jira".into(),
        base,
        auth,
        Duration::from_secs(5),
        reqwest::Client::new(),
    );
    let err = c.healthcheck().await.expect_err("401");
    assert!(
        matches!(err, ConnectorError::Rejected { status: 401, .. }),
        "{err:?}"
    );
    let shown = format!("{err} {err:?} {c:?}");
    assert!(!shown.contains("wrong-secret-value"), "{shown}");
}

#[tokio::test]
async fn healthcheck_accepts_valid_credentials() {
    let c = connector(serve(site("In Progress")).await);
    c.healthcheck().await.expect("myself 200");
}

#[tokio::test]
async fn credentials_in_the_base_url_are_dropped_and_never_shown() {
    let s = site("In Progress");
    let mut base = serve(s.clone()).await;
    base.set_username("leaky").expect("user");
    base.set_password(Some("url-password")).expect("password");
    let c = connector(base);
    c.healthcheck()
        .await
        .expect("the configured auth is used, not the URL's");
    let dead = connector(Url::parse("http://leaky:url-password@127.0.0.1:9/").expect("url"));
    let err = dead
        .healthcheck()
        .await
        .expect_err("nothing listens on port 9");
    assert!(!format!("{err} {dead:?}").contains("url-password"));
}

#[tokio::test]
async fn confirm_reads_status_requester_and_approval_across_pages() {
    let s = site("Approved");
    lock(&s).approvals = Some(vec![
        approval_record(
            "1",
            "declined",
            Some(1_741_100_000_000),
            json!([
            {"approver": {"accountId": "acc-old"}, "approverDecision": "declined"}]),
        ),
        approval_record(
            "2",
            "approved",
            Some(1_741_941_697_000),
            json!([
            {"approver": {"accountId": "acc-boss", "emailAddress": "boss@example.com"}, "approverDecision": "approved"},
            {"approver": {"accountId": "acc-idle"}, "approverDecision": "pending"}]),
        ),
    ]);
    let c = connector(serve(s.clone()).await);
    let conf = c.confirm(&ticket()).await.expect("confirm");
    assert_eq!(conf.status.as_deref(), Some("Approved"));
    assert_eq!(
        conf.requester.and_then(|p| p.id).as_deref(),
        Some("712020:requester")
    );
    let approval = conf.approval.expect("approval");
    assert_eq!(approval.state, "approved");
    assert_eq!(
        approval
            .approvers
            .iter()
            .filter_map(|p| p.id.as_deref())
            .collect::<Vec<_>>(),
        vec!["acc-boss"]
    );
    assert_eq!(
        approval.decided_at,
        jiff::Timestamp::from_millisecond(1_741_941_697_000).ok()
    );
    assert_eq!(lock(&s).approval_pages_served, 2, "both pages were read");
}

#[tokio::test]
async fn confirm_reports_pending_when_any_approval_is_pending() {
    let s = site("Waiting for approval");
    lock(&s).approvals = Some(vec![
        approval_record("1", "approved", Some(1_741_100_000_000), json!([])),
        approval_record(
            "2",
            "pending",
            None,
            json!([{"approver": {"accountId": "a"}, "approverDecision": "pending"}]),
        ),
    ]);
    let c = connector(serve(s.clone()).await);
    assert_eq!(
        c.confirm(&ticket())
            .await
            .expect("confirm")
            .approval
            .map(|a| a.state)
            .as_deref(),
        Some("pending")
    );
}

#[tokio::test]
async fn confirm_without_jsm_approvals_404_has_no_approval() {
    let s = site("Approved");
    let c = connector(serve(s.clone()).await);
    let conf = c.confirm(&ticket()).await.expect("confirm");
    assert_eq!(conf.status.as_deref(), Some("Approved"));
    assert_eq!(conf.approval, None);
}

#[tokio::test]
async fn confirm_of_a_missing_issue_is_rejected() {
    let c = connector(serve(site("Approved")).await);
    let missing = TicketRef {
        key: "NOPE-1".into(),
        id: "99".into(),
        ..ticket()
    };
    let err = c.confirm(&missing).await.expect_err("404");
    assert!(
        matches!(err, ConnectorError::Rejected { status: 404, ref detail } if detail.contains("Issue does not exist")),
        "{err:?}"
    );
}

#[tokio::test]
async fn unreachable_site_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let c = connector(Url::parse(&format!("http://{addr}")).expect("url"));
    let err = c.confirm(&ticket()).await.expect_err("refused");
    assert!(
        matches!(err, ConnectorError::Unavailable { status: None, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn slow_site_times_out_as_unavailable() {
    let app = Router::new().route(
        "/rest/api/3/myself",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let auth = OutboundAuth::Bearer {
        token: TOKEN.into(),
    };
    let c = JiraConnector::new(
        "jira".into(),
        Url::parse(&format!("http://{addr}")).expect("url"),
        auth,
        Duration::from_millis(200),
        reqwest::Client::new(),
    );
    let err = c.healthcheck().await.expect_err("timeout");
    assert!(
        matches!(&err, ConnectorError::Unavailable { status: None, detail, .. } if detail.contains("timed out")),
        "{err:?}"
    );
}

#[tokio::test]
async fn writeback_for_a_ticket_key_that_could_escape_the_path_is_refused() {
    let s = site("In Progress");
    let c = connector(serve(s.clone()).await);
    let evil = TicketRef {
        connector: "jira".into(),
        id: "../..".into(),
        key: "../../myself".into(),
        url: None,
    };
    let err = c
        .write_back(&Writeback {
            ticket: evil,
            ..comment("x")
        })
        .await
        .expect_err("refused");
    assert!(matches!(err, ConnectorError::Invalid(_)));
    assert!(lock(&s).comments.is_empty());
}

fn delivery(headers: &[(&str, &str)], body: &[u8]) -> RawDelivery {
    RawDelivery {
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        body: body.to_vec(),
    }
}

#[test]
fn dedupe_key_uses_the_webhook_identifier_in_any_case() {
    let c = connector(Url::parse("https://example.atlassian.net").expect("url"));
    let lower = delivery(&[("x-atlassian-webhook-identifier", "a1b2c3-42")], b"{}");
    let canonical = delivery(
        &[("X-Atlassian-Webhook-Identifier", "a1b2c3-42")],
        b"{\"other\":1}",
    );
    assert_eq!(c.dedupe_key(&lower), "jira-webhook:a1b2c3-42");
    assert_eq!(
        c.dedupe_key(&canonical),
        c.dedupe_key(&lower),
        "retries keep the id even if bytes differ"
    );
}

#[test]
fn dedupe_key_falls_back_to_the_body_hash() {
    let c = connector(Url::parse("https://example.atlassian.net").expect("url"));
    let body = br#"{"webhookEvent":"jira:issue_created"}"#;
    assert_eq!(c.dedupe_key(&delivery(&[], body)), body_hash_key(body));
    assert_eq!(
        c.dedupe_key(&delivery(&[("x-atlassian-webhook-identifier", "  ")], body)),
        body_hash_key(body)
    );
    let huge = "x".repeat(5000);
    assert_eq!(
        c.dedupe_key(&delivery(
            &[("x-atlassian-webhook-identifier", &huge)],
            body
        )),
        body_hash_key(body)
    );
}

#[test]
fn connector_identity_and_inbound_defaults() {
    let c = connector(Url::parse("https://example.atlassian.net").expect("url"));
    assert_eq!(c.id(), "jira");
    assert_eq!(c.kind(), "jira");
    assert_eq!(INBOUND_DEFAULTS.header, "X-Hub-Signature");
    assert_eq!(INBOUND_DEFAULTS.prefix, "sha256=");
    assert_eq!(INBOUND_DEFAULTS.encoding, crate::signatures::Encoding::Hex);
}

#[test]
fn parse_through_the_connector_links_to_the_configured_site() {
    let c = connector(Url::parse("https://example.atlassian.net/").expect("url"));
    let body = json!({"timestamp": 1, "webhookEvent": "jira:issue_created",
        "issue": {"id": "10234", "key": "ACCESS-87", "self": "https://phish.example/rest/api/2/issue/10234", "fields": {}}});
    let events = c
        .parse(&delivery(&[], &serde_json::to_vec(&body).expect("json")))
        .expect("parses");
    assert_eq!(events[0].kind, EventKind::Created);
    assert_eq!(
        events[0].ticket.url.as_deref(),
        Some("https://example.atlassian.net/browse/ACCESS-87")
    );
    assert_eq!(events[0].ticket_ref().key, "ACCESS-87");
}
