//! The `/_sim/...` control API of the ServiceNow simulator: lets a person or a script play
//! requester, approver and fulfiller against a running demo instance without Rust. It is
//! unauthenticated and therefore only mounted when
//! [`super::ServiceNowSimConfig::control_api`] is set (the demo binary). Documented in
//! `sim/README.md`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    Core, Delivery, FaultWindow, NewRequest, Outage, PendingEvent, RateLimitRule, RateState,
    Remaining, unix_after,
};
use crate::error::SimError;

pub(super) fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/_sim/ritms", post(create_ritm))
        .route("/_sim/records/{table}/{id}", get(get_record))
        .route("/_sim/tasks/{id}/approval", post(approval))
        .route("/_sim/tasks/{id}/update", post(update))
        .route("/_sim/faults/rate-limit", post(rate_limit))
        .route("/_sim/faults/outage", post(outage))
        .route("/_sim/faults", delete(clear_faults))
        .route("/_sim/requests", get(requests))
        .route("/_sim/deliveries", get(deliveries))
        .layer(DefaultBodyLimit::max(256 * 1024))
        .with_state(core)
}

fn problem(status: StatusCode, detail: String) -> Response {
    (
        status,
        axum::Json(json!({"error": "refused", "detail": detail})),
    )
        .into_response()
}

fn sim_error(err: SimError) -> Response {
    let status = match err {
        SimError::UnknownIssue(_) => StatusCode::NOT_FOUND,
        SimError::UnknownUser(_)
        | SimError::NoPendingApproval { .. }
        | SimError::InvalidInput(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    problem(status, err.to_string())
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

async fn answer(
    core: &Core,
    result: Result<(super::Outcome, Vec<PendingEvent>), SimError>,
    status: StatusCode,
) -> Response {
    match result {
        Ok((outcome, events)) => {
            let deliveries = core.emit(events).await;
            (
                status,
                axum::Json(json!({"sys_id": outcome.sys_id, "number": outcome.number,
                                  "approvals": outcome.approvals,
                                  "deliveries": summary(&deliveries)})),
            )
                .into_response()
        }
        Err(err) => sim_error(err),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRitm {
    requested_for: String,
    short_description: String,
    elevation_type: Option<String>,
    target: Option<String>,
    duration: Option<String>,
    #[serde(default)]
    approvers: Vec<String>,
    #[serde(default)]
    all_must_approve: bool,
}

async fn create_ritm(
    State(core): State<Arc<Core>>,
    axum::Json(req): axum::Json<CreateRitm>,
) -> Response {
    let mut new = NewRequest::new(&req.requested_for, &req.short_description);
    for (field, value) in [
        ("u_elevation_type", req.elevation_type),
        ("u_target", req.target),
        ("u_duration", req.duration),
    ] {
        if let Some(v) = value {
            new = new.field(field, &v);
        }
    }
    new.approvers = req.approvers;
    if req.all_must_approve {
        new = new.all_must_approve();
    }
    let result = core.create_request(new).await;
    answer(&core, result, StatusCode::CREATED).await
}

async fn get_record(
    State(core): State<Arc<Core>>,
    Path((table, id)): Path<(String, String)>,
) -> Response {
    let state = core.state.lock().await;
    match state.index(&table, &id) {
        Ok(idx) => match Core::snapshot(&state, idx) {
            Some(snapshot) => {
                let journal: Vec<_> = state
                    .journal
                    .iter()
                    .filter(|j| j.element_id == snapshot.sys_id)
                    .cloned()
                    .collect();
                axum::Json(json!({"record": snapshot, "journal": journal})).into_response()
            }
            None => sim_error(SimError::UnknownIssue(id)),
        },
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
    Path(id): Path<String>,
    axum::Json(req): axum::Json<ApprovalReq>,
) -> Response {
    let approve = match req.decision.as_str() {
        "approve" => true,
        "reject" => false,
        _ => {
            return problem(
                StatusCode::BAD_REQUEST,
                "decision must be approve or reject".into(),
            );
        }
    };
    let result = core.decide(&id, &req.actor, approve).await;
    answer(&core, result, StatusCode::OK).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateReq {
    #[serde(rename = "as")]
    actor: String,
    fields: Map<String, Value>,
}

async fn update(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    axum::Json(req): axum::Json<UpdateReq>,
) -> Response {
    let result = core.update_as("task", &id, &req.fields, &req.actor).await;
    answer(&core, result, StatusCode::OK).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateReq {
    limit: u32,
    /// Window length; an hour when absent.
    seconds: Option<u64>,
    /// Count only this user_name.
    user: Option<String>,
}

async fn rate_limit(
    State(core): State<Arc<Core>>,
    axum::Json(req): axum::Json<RateReq>,
) -> Response {
    let mut rule = RateLimitRule::per_hour(req.limit);
    if let Some(s) = req.seconds {
        rule = rule.with_window(Duration::from_secs(s.max(1)));
    }
    rule.user = req.user;
    core.state.lock().await.rate = Some(RateState {
        window_end: tokio::time::Instant::now() + rule.window,
        reset_unix: unix_after(rule.window),
        rule,
        used: 0,
    });
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutageReq {
    requests: Option<u32>,
    seconds: Option<u64>,
    retry_after: Option<u64>,
}

async fn outage(State(core): State<Arc<Core>>, axum::Json(req): axum::Json<OutageReq>) -> Response {
    let window = match (req.requests, req.seconds) {
        (Some(n), _) => FaultWindow::Requests(n),
        (None, Some(s)) => FaultWindow::For(Duration::from_secs(s)),
        (None, None) => FaultWindow::UntilCleared,
    };
    let outage = Outage {
        window,
        retry_after_secs: req.retry_after,
    };
    core.state.lock().await.outage = Some((outage, Remaining::from_window(window)));
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_faults(State(core): State<Arc<Core>>) -> Response {
    let mut state = core.state.lock().await;
    state.outage = None;
    state.rate = None;
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
