//! Operations endpoints: `/healthz` (process up), `/readyz` (store reachable, config loaded,
//! connector health reported), `/metrics` (Prometheus), and the admin API under `/api/v1/`
//! (grants, dead letters, audit verification), which needs the admin bearer token and is
//! disabled while none is configured.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::RwLock;
use uuid::Uuid;

use crate::audit::{GENESIS_HASH, verify_chain};
use crate::grants::GrantState;
use crate::grants::service::{GrantService, ServiceError};
use crate::http::ApiError;
use crate::store::{GrantFilter, JobState, Lane, Store, StoreError};

/// Latest health-check result per connector (`"ok"` or the error), shown by `/readyz`.
pub type ConnectorHealth = Arc<RwLock<BTreeMap<String, String>>>;

/// What the admin routes need.
#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<dyn Store>,
    pub service: GrantService,
    pub token: Option<SecretString>,
    pub health: ConnectorHealth,
    pub metrics: PrometheusHandle,
    /// Applies a re-read configuration (`POST /api/v1/config/reload`).
    pub reloader: crate::reload::Reloader,
}

/// The process-wide Prometheus recorder (installed once; later calls share it).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = || {
                PrometheusBuilder::new()
                    .set_buckets(&[
                        0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    ])
                    .unwrap_or_else(|_| PrometheusBuilder::new())
            };
            builder()
                .install_recorder()
                .unwrap_or_else(|_| builder().build_recorder().handle())
        })
        .clone()
}

/// Health, readiness and metrics routes (no token: they reveal no grant data).
pub fn ops_router(state: AdminState) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The admin API routes (bearer token).
pub fn api_router(state: AdminState) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/grants", get(list_grants))
        .route("/api/v1/grants/{id}", get(get_grant))
        .route("/api/v1/grants/{id}/revoke", post(revoke_grant))
        .route("/api/v1/outbox", get(list_jobs))
        .route("/api/v1/outbox/{id}/retry", post(retry_job))
        .route("/api/v1/audit/verify", get(audit_verify))
        .route("/api/v1/audit", get(audit_export))
        .route("/api/v1/config/reload", post(reload_config))
        .with_state(state)
}

fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_api_disabled",
            "no admin token is configured (set the variable named by [admin] token_env)",
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare digests so neither content nor length leaks through timing.
    use sha2::{Digest, Sha256};
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(token.expose_secret().as_bytes());
    if given.is_empty() || !bool::from(a.as_slice().ct_eq(b.as_slice())) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong admin bearer token",
        ));
    }
    Ok(())
}

fn store_error(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "admin request failed in the store");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the store could not answer; retry later",
    )
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let connectors = state.health.read().await.clone();
    match state.store.ping().await {
        Ok(()) => Json(json!({"status": "ready", "store": "ok", "config": "loaded", "connectors": connectors})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "error": "store_unavailable", "detail": e.to_string(), "connectors": connectors})),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    // Gauges that describe stored state are refreshed at scrape time.
    if let Ok(counts) = state.store.count_grants_by_state().await {
        for s in crate::grants::state::ALL_STATES {
            let n = counts
                .iter()
                .find(|(st, _)| *st == s)
                .map_or(0, |(_, n)| *n);
            metrics::gauge!("jitbridge_grants", "state" => s.as_str()).set(n as f64);
        }
    }
    let now = state.service.clock().now();
    for lane in [Lane::Provider, Lane::Writeback] {
        if let Ok(st) = state.store.outbox_stats(lane, now).await {
            metrics::gauge!("jitbridge_outbox_pending", "lane" => lane.as_str())
                .set(st.pending as f64);
            metrics::gauge!("jitbridge_outbox_dead", "lane" => lane.as_str()).set(st.dead as f64);
            metrics::gauge!("jitbridge_outbox_oldest_pending_age_seconds", "lane" => lane.as_str())
                .set(st.oldest_pending_age.map_or(0.0, |d| d.as_secs_f64()));
        }
    }
    state.metrics.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct GrantQuery {
    state: Option<String>,
    ticket: Option<String>,
    limit: Option<u32>,
}

async fn list_grants(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<GrantQuery>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let st = match q.state.as_deref() {
        None => None,
        Some(s) => Some(
            s.parse::<GrantState>()
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_state", e.to_string()))?,
        ),
    };
    let filter = GrantFilter {
        state: st,
        ticket_key: q.ticket,
        limit: Some(q.limit.unwrap_or(500).min(5000)),
        ..Default::default()
    };
    let grants = state
        .store
        .list_grants(&filter)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({"grants": grants})).into_response())
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_id",
            format!("{id:?} is not a grant id (UUID)"),
        )
    })
}

async fn get_grant(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let id = parse_id(&id)?;
    match state.store.get_grant(id).await.map_err(store_error)? {
        Some(g) => Ok(Json(g).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no grant {id}"),
        )),
    }
}

#[derive(Debug, Deserialize)]
struct RevokeBody {
    reason: String,
}

async fn revoke_grant(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<RevokeBody>>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let id = parse_id(&id)?;
    let Some(Json(body)) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "reason_required",
            "send a JSON body {\"reason\": \"...\"}",
        ));
    };
    if body.reason.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "reason_required",
            "the reason must not be empty",
        ));
    }
    match state
        .service
        .admin_revoke(id, body.reason.trim(), "admin")
        .await
    {
        Ok(g) => Ok((StatusCode::ACCEPTED, Json(g)).into_response()),
        Err(ServiceError::NotFound(_)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no grant {id}"),
        )),
        Err(e @ ServiceError::Ended { .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_ended",
            e.to_string(),
        )),
        Err(ServiceError::Store(e)) => Err(store_error(e)),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )),
    }
}

#[derive(Debug, Deserialize)]
struct JobQuery {
    state: Option<String>,
    limit: Option<u32>,
}

async fn list_jobs(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<JobQuery>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let st = match q.state.as_deref().unwrap_or("dead") {
        "dead" => JobState::Dead,
        "pending" => JobState::Pending,
        "done" => JobState::Done,
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_state",
                format!("{other:?}: expected dead, pending or done"),
            ));
        }
    };
    let jobs = state
        .store
        .list_jobs(st, q.limit.unwrap_or(500).min(5000))
        .await
        .map_err(store_error)?;
    Ok(Json(json!({"jobs": jobs})).into_response())
}

async fn retry_job(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let id = parse_id(&id)?;
    let now = state.service.clock().now();
    if state
        .store
        .retry_dead_job(id, now)
        .await
        .map_err(store_error)?
    {
        Ok((
            StatusCode::ACCEPTED,
            Json(json!({"job": id, "status": "pending"})),
        )
            .into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no dead job {id}"),
        ))
    }
}

async fn audit_verify(
    State(state): State<AdminState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    Ok(Json(
        verify_audit(state.store.as_ref())
            .await
            .map_err(store_error)?,
    )
    .into_response())
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    ticket: String,
}

async fn audit_export(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let records = ticket_story(state.store.as_ref(), &q.ticket)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({"ticket": q.ticket, "records": records})).into_response())
}

/// Every audit record of one ticket, in order: request, approval evidence, policy decision,
/// apply, revoke and writebacks — the ticket's whole story.
pub async fn ticket_story(
    store: &dyn Store,
    ticket_key: &str,
) -> Result<Vec<crate::audit::AuditRecord>, StoreError> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store.audit_records(after, 1000).await?;
        let Some(last) = page.last() else {
            return Ok(out);
        };
        after = last.seq;
        out.extend(
            page.into_iter()
                .filter(|r| r.record.ticket_key.as_deref() == Some(ticket_key)),
        );
    }
}

/// Walks the whole audit chain; `{"ok": true, "records": N}` or `{"ok": false, "error": ...}`.
pub async fn verify_audit(store: &dyn Store) -> Result<serde_json::Value, StoreError> {
    let mut prev = (0, GENESIS_HASH.to_owned());
    loop {
        let page = store.audit_records(prev.0, 1000).await?;
        if page.is_empty() {
            return Ok(json!({"ok": true, "records": prev.0}));
        }
        match verify_chain(prev.clone(), &page) {
            Ok(next) => prev = next,
            Err(e) => {
                return Ok(json!({"ok": false, "records_checked": prev.0, "error": e.to_string()}));
            }
        }
    }
}

/// `POST /api/v1/config/reload`: what SIGHUP does, with the outcome in the answer. `200` with
/// what is now in force (and the warnings); `422` when the files are invalid, `409` when the
/// change needs a restart or removes what live grants use; the running configuration is then
/// unchanged.
async fn reload_config(
    State(state): State<AdminState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    use crate::reload::ReloadError;
    authorize(&state, &headers)?;
    match state.reloader.reload().await {
        Ok(r) => Ok(Json(json!({
            "status": "reloaded", "connectors": r.connectors, "mappings": r.mappings,
            "providers": r.providers,
            "warnings": r.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }))
        .into_response()),
        Err(e) => {
            let (status, code) = match &e {
                ReloadError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "config_invalid"),
                ReloadError::RestartNeeded(_) => (StatusCode::CONFLICT, "restart_needed"),
                ReloadError::InUse(_) => (StatusCode::CONFLICT, "in_use_by_live_grants"),
                ReloadError::Store(_) | ReloadError::Load(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "reload_failed")
                }
            };
            Err(ApiError::new(status, code, e.to_string()))
        }
    }
}
