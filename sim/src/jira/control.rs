//! The `/_sim/...` control API: lets a person (or a script) play requester and approver against
//! a running demo simulator without Rust, e.g. `curl -XPOST .../_sim/issues/ACCESS-1/approval`.
//! It is unauthenticated and therefore only mounted when [`super::JiraSimConfig::control_api`] is
//! set (the demo binary); tests use the Rust handle instead. Documented in `sim/README.md`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    ApprovalSpec, Core, Delivery, FaultWindow, NewIssue, Outage, RateLimit, RateLimitReason,
    Remaining,
};
use crate::error::SimError;

pub(super) fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/_sim/issues", post(create_issue))
        .route("/_sim/issues/{key}", get(get_issue))
        .route("/_sim/issues/{key}/transition", post(transition))
        .route("/_sim/issues/{key}/approval", post(approval))
        .route("/_sim/issues/{key}/comment", post(comment))
        .route("/_sim/faults/rate-limit", post(rate_limit))
        .route("/_sim/faults/outage", post(outage))
        .route("/_sim/faults", axum::routing::delete(clear_faults))
        .route("/_sim/requests", get(requests))
        .route("/_sim/deliveries", get(deliveries))
        .layer(DefaultBodyLimit::max(256 * 1024))
        .with_state(core)
}

fn problem(status: StatusCode, error: &str, detail: String) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "detail": detail})),
    )
        .into_response()
}

fn sim_error(err: SimError) -> Response {
    let status = match err {
        SimError::UnknownIssue(_) => StatusCode::NOT_FOUND,
        SimError::UnknownUser(_)
        | SimError::TransitionNotAvailable { .. }
        | SimError::NoPendingApproval { .. }
        | SimError::InvalidInput(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    problem(status, "refused", err.to_string())
}

fn summary(deliveries: &[Delivery]) -> Vec<Value> {
    deliveries
        .iter()
        .map(|d| {
            json!({"id": d.id, "url": d.url, "event": d.event,
                   "statuses": d.responses.iter().map(|r| r.status).collect::<Vec<_>>(),
                   "delivered": d.delivered()})
        })
        .collect()
}

/// Accepts an account id or an email address.
async fn resolve(core: &Core, who: &str) -> Result<String, Response> {
    let state = core.state.lock().await;
    state
        .users
        .iter()
        .find(|u| u.account_id == who || u.email.eq_ignore_ascii_case(who))
        .map(|u| u.account_id.clone())
        .ok_or_else(|| {
            problem(
                StatusCode::CONFLICT,
                "refused",
                format!("unknown user {who}"),
            )
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateIssue {
    reporter: String,
    summary: String,
    description: Option<String>,
    #[serde(default)]
    fields: Map<String, Value>,
    #[serde(default)]
    approvers: Vec<String>,
}

async fn create_issue(
    State(core): State<Arc<Core>>,
    axum::Json(req): axum::Json<CreateIssue>,
) -> Response {
    let reporter = match resolve(&core, &req.reporter).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    let mut approvers = Vec::new();
    for a in &req.approvers {
        match resolve(&core, a).await {
            Ok(id) => approvers.push(id),
            Err(response) => return response,
        }
    }
    let mut new = NewIssue::new(&reporter, &req.summary);
    new.description = req.description;
    new.fields = req.fields;
    if !approvers.is_empty() {
        new.approval = Some(ApprovalSpec::any_of(&approvers));
    }
    match core.create_issue(new).await {
        Ok((key, event)) => {
            let deliveries = core.emit(event).await;
            (
                StatusCode::CREATED,
                axum::Json(json!({"key": key, "deliveries": summary(&deliveries)})),
            )
                .into_response()
        }
        Err(err) => sim_error(err),
    }
}

async fn get_issue(State(core): State<Arc<Core>>, Path(key): Path<String>) -> Response {
    match core.snapshot(&key).await {
        Ok(snapshot) => (StatusCode::OK, axum::Json(snapshot)).into_response(),
        Err(err) => sim_error(err),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransitionReq {
    /// Transition id or name.
    transition: Option<String>,
    /// Destination status name.
    to: Option<String>,
    #[serde(rename = "as")]
    actor: String,
}

async fn transition(
    State(core): State<Arc<Core>>,
    Path(key): Path<String>,
    axum::Json(req): axum::Json<TransitionReq>,
) -> Response {
    let actor = match resolve(&core, &req.actor).await {
        Ok(a) => a,
        Err(response) => return response,
    };
    let transition = match (req.transition, req.to) {
        (Some(t), _) => t,
        (None, Some(status)) => {
            let state = core.state.lock().await;
            let current = state
                .issue_index(&key)
                .ok()
                .and_then(|idx| state.issues.get(idx))
                .map(|i| i.status_id.clone());
            let Some(current) = current else {
                return sim_error(SimError::UnknownIssue(key));
            };
            let target = state.workflow.status_named(&status).map(|s| s.id.clone());
            match state
                .workflow
                .available(&current)
                .into_iter()
                .find(|t| Some(&t.to) == target.as_ref())
            {
                Some(t) => t.id.clone(),
                None => {
                    return problem(
                        StatusCode::CONFLICT,
                        "refused",
                        format!("no transition to {status:?} from the current status"),
                    );
                }
            }
        }
        (None, None) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad request",
                "give \"transition\" or \"to\"".into(),
            );
        }
    };
    match core.transition(&key, &transition, &actor).await {
        Ok(event) => {
            let deliveries = core.emit(event).await;
            axum::Json(json!({"key": key, "deliveries": summary(&deliveries)})).into_response()
        }
        Err(err) => sim_error(err),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalReq {
    #[serde(rename = "as")]
    actor: String,
    decision: String,
}

async fn approval(
    State(core): State<Arc<Core>>,
    Path(key): Path<String>,
    axum::Json(req): axum::Json<ApprovalReq>,
) -> Response {
    let actor = match resolve(&core, &req.actor).await {
        Ok(a) => a,
        Err(response) => return response,
    };
    let approve = match req.decision.as_str() {
        "approve" => true,
        "decline" => false,
        _ => {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad request",
                "decision must be approve or decline".into(),
            );
        }
    };
    match core.answer_approval(&key, None, &actor, approve).await {
        Ok((id, event)) => {
            let deliveries = core.emit(event).await;
            axum::Json(json!({"key": key, "approval": id, "deliveries": summary(&deliveries)}))
                .into_response()
        }
        Err(err) => sim_error(err),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommentReq {
    #[serde(rename = "as")]
    actor: String,
    text: String,
}

async fn comment(
    State(core): State<Arc<Core>>,
    Path(key): Path<String>,
    axum::Json(req): axum::Json<CommentReq>,
) -> Response {
    let actor = match resolve(&core, &req.actor).await {
        Ok(a) => a,
        Err(response) => return response,
    };
    match core
        .comment(&key, &actor, super::adf::from_plain_text(&req.text))
        .await
    {
        Ok((id, event)) => {
            let deliveries = core.emit(event).await;
            (
                StatusCode::CREATED,
                axum::Json(json!({"key": key, "comment": id, "deliveries": summary(&deliveries)})),
            )
                .into_response()
        }
        Err(err) => sim_error(err),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultReq {
    /// Affect the next N requests.
    requests: Option<u32>,
    /// Affect every request for this many seconds.
    seconds: Option<u64>,
    /// `Retry-After` seconds.
    retry_after: Option<u64>,
}

impl FaultReq {
    fn window(&self) -> FaultWindow {
        match (self.requests, self.seconds) {
            (Some(n), _) => FaultWindow::Requests(n),
            (None, Some(s)) => FaultWindow::For(Duration::from_secs(s)),
            (None, None) => FaultWindow::UntilCleared,
        }
    }
}

async fn rate_limit(
    State(core): State<Arc<Core>>,
    axum::Json(req): axum::Json<FaultReq>,
) -> Response {
    let limit = RateLimit {
        window: req.window(),
        retry_after_secs: req.retry_after.unwrap_or(5),
        limit: 100,
        reason: RateLimitReason::CostBased,
    };
    core.state.lock().await.faults.rate_limit = Some((limit, Remaining::from_window(limit.window)));
    StatusCode::NO_CONTENT.into_response()
}

async fn outage(State(core): State<Arc<Core>>, axum::Json(req): axum::Json<FaultReq>) -> Response {
    let outage = Outage {
        window: req.window(),
        retry_after_secs: req.retry_after,
    };
    core.state.lock().await.faults.outage = Some((outage, Remaining::from_window(outage.window)));
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_faults(State(core): State<Arc<Core>>) -> Response {
    core.state.lock().await.faults = Default::default();
    StatusCode::NO_CONTENT.into_response()
}

async fn requests(State(core): State<Arc<Core>>) -> Response {
    let state = core.state.lock().await;
    axum::Json(state.requests.iter().collect::<Vec<_>>()).into_response()
}

async fn deliveries(State(core): State<Arc<Core>>) -> Response {
    let state = core.state.lock().await;
    axum::Json(summary(
        &state.deliveries.iter().cloned().collect::<Vec<_>>(),
    ))
    .into_response()
}
