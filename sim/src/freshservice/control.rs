//! The `/_sim/...` control API of the Freshservice simulator: play requester and agent against
//! a running demo helpdesk with curl. Unauthenticated, so only mounted when
//! [`super::FreshserviceSimConfig::control_api`] is set (the demo binary). Documented in
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
    Budget, Core, Delivery, FaultWindow, NewServiceRequest, Outage, PendingEvent, Remaining,
    Rendering,
};
use crate::error::SimError;

pub(super) fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/_sim/tickets", post(create_ticket))
        .route("/_sim/tickets/{id}", get(get_ticket))
        .route("/_sim/tickets/{id}/approval", post(approval))
        .route("/_sim/tickets/{id}/status", post(set_status))
        .route("/_sim/tickets/{id}/emit", post(emit))
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

/// An agent or requester given by id or email.
async fn resolve(core: &Core, who: &Value) -> Result<u64, Response> {
    if let Some(id) = who.as_u64() {
        return Ok(id);
    }
    let text = who.as_str().unwrap_or_default();
    if let Ok(id) = text.parse::<u64>() {
        return Ok(id);
    }
    let state = core.state.lock().await;
    state
        .agents
        .iter()
        .find(|a| a.email.eq_ignore_ascii_case(text))
        .map(|a| a.id)
        .or_else(|| {
            state
                .requesters
                .iter()
                .find(|r| r.primary_email.eq_ignore_ascii_case(text))
                .map(|r| r.id)
        })
        .ok_or_else(|| problem(StatusCode::CONFLICT, format!("unknown person {text}")))
}

async fn fire(core: &Core, ticket_id: u64, event: &'static str, status: StatusCode) -> Response {
    let deliveries = core
        .emit(Some(PendingEvent { event, ticket_id }), None)
        .await;
    (
        status,
        axum::Json(json!({"ticket_id": ticket_id, "deliveries": summary(&deliveries)})),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTicket {
    requester: Value,
    subject: String,
    #[serde(default)]
    custom_fields: Map<String, Value>,
    #[serde(default)]
    approvers: Vec<Value>,
}

async fn create_ticket(
    State(core): State<Arc<Core>>,
    axum::Json(req): axum::Json<CreateTicket>,
) -> Response {
    let requester = match resolve(&core, &req.requester).await {
        Ok(id) => id,
        Err(response) => return response,
    };
    let mut new = NewServiceRequest::new(requester, &req.subject);
    new.custom_fields = req.custom_fields;
    for a in &req.approvers {
        match resolve(&core, a).await {
            Ok(id) => new.approvers.push(id),
            Err(response) => return response,
        }
    }
    match core.create_request(new).await {
        Ok(id) => fire(&core, id, "ticket_created", StatusCode::CREATED).await,
        Err(err) => sim_error(err),
    }
}

async fn get_ticket(State(core): State<Arc<Core>>, Path(id): Path<u64>) -> Response {
    let state = core.state.lock().await;
    match state.tickets.iter().find(|t| t.id == id) {
        Some(ticket) => axum::Json(ticket).into_response(),
        None => sim_error(SimError::UnknownIssue(id.to_string())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalReq {
    #[serde(rename = "as")]
    actor: Value,
    decision: String,
}

async fn approval(
    State(core): State<Arc<Core>>,
    Path(id): Path<u64>,
    axum::Json(req): axum::Json<ApprovalReq>,
) -> Response {
    let agent = match resolve(&core, &req.actor).await {
        Ok(a) => a,
        Err(response) => return response,
    };
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
    match core.decide(id, agent, approve).await {
        Ok(()) => fire(&core, id, "approval_updated", StatusCode::OK).await,
        Err(err) => sim_error(err),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusReq {
    #[serde(rename = "as")]
    actor: Value,
    status: u8,
}

async fn set_status(
    State(core): State<Arc<Core>>,
    Path(id): Path<u64>,
    axum::Json(req): axum::Json<StatusReq>,
) -> Response {
    let agent = match resolve(&core, &req.actor).await {
        Ok(a) => a,
        Err(response) => return response,
    };
    match core.set_status(id, req.status, agent).await {
        Ok(()) => fire(&core, id, "status_changed", StatusCode::OK).await,
        Err(err) => sim_error(err),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmitReq {
    event: String,
    /// `quoted`, `bare` or `broken`.
    rendering: Option<String>,
}

async fn emit(
    State(core): State<Arc<Core>>,
    Path(id): Path<u64>,
    axum::Json(req): axum::Json<EmitReq>,
) -> Response {
    let event = match req.event.as_str() {
        "approval_updated" => "approval_updated",
        "ticket_created" => "ticket_created",
        "ticket_updated" => "ticket_updated",
        "status_changed" => "status_changed",
        _ => return problem(StatusCode::BAD_REQUEST, "unknown event".into()),
    };
    let rendering = match req.rendering.as_deref() {
        None | Some("quoted") => Rendering::Quoted,
        Some("bare") => Rendering::Bare,
        Some("broken") => Rendering::Broken,
        Some(_) => return problem(StatusCode::BAD_REQUEST, "unknown rendering".into()),
    };
    if core.state.lock().await.ticket_index(id).is_err() {
        return sim_error(SimError::UnknownIssue(id.to_string()));
    }
    let deliveries = core
        .emit(
            Some(PendingEvent {
                event,
                ticket_id: id,
            }),
            Some(rendering),
        )
        .await;
    axum::Json(json!({"ticket_id": id, "deliveries": summary(&deliveries)})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateReq {
    per_minute: u32,
    seconds: Option<u64>,
}

async fn rate_limit(
    State(core): State<Arc<Core>>,
    axum::Json(req): axum::Json<RateReq>,
) -> Response {
    let window = Duration::from_secs(req.seconds.unwrap_or(60).max(1));
    core.state.lock().await.budget = Budget {
        total: req.per_minute,
        window,
        used: 0,
        window_end: tokio::time::Instant::now() + window,
    };
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
    core.state.lock().await.outage = None;
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
