//! Ingress: `POST /webhooks/{connector_id}`. Authenticates the raw delivery with the connector's
//! inbound auth ([`auth`]), enforces the body limit, and commits it to the inbox before answering
//! `202`. A body declared (`Content-Length`) over the limit is refused with `413` before any of
//! it is read; an undeclared (chunked) one as soon as the limit is passed. A repeated delivery
//! (same dedupe key) answers `200 {"status":"duplicate"}` and changes nothing. Nothing is stored
//! before authentication succeeds; a delivery the store cannot commit gets `503`.

pub mod auth;

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::config::live::LiveConnectors;
use crate::connectors::RawDelivery;
use crate::http::ApiError;
use crate::store::{InsertOutcome, NewDelivery, Store};
use auth::{Inbound, Unverified};

/// What the webhook route needs.
#[derive(Clone)]
pub struct IngressState {
    pub store: Arc<dyn Store>,
    pub clock: SharedClock,
    pub connectors: LiveConnectors,
    /// Wakes the inbox worker after a commit.
    pub inbox_wake: Arc<Notify>,
}

/// The webhook router, with the body limit applied.
pub fn router(state: IngressState, max_body_bytes: usize) -> axum::Router {
    axum::Router::new()
        .route("/webhooks/{connector_id}", post(receive))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .route_layer(middleware::from_fn_with_state(
            max_body_bytes,
            refuse_declared_oversize,
        ))
        .with_state(state)
}

/// The `413` answer of an over-limit body.
fn too_large(connector_id: &str) -> Response {
    count(connector_id, "too_large");
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the body exceeds server.max_body_bytes",
    )
    .into_response()
}

/// Refuses a body whose `Content-Length` is over the limit before reading any of it: the body
/// limit alone only notices once that many bytes have arrived, so a sender declaring a huge
/// body and trickling it would hold the connection until the request timeout.
async fn refuse_declared_oversize(
    State(max_body_bytes): State<usize>,
    Path(connector_id): Path<String>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > max_body_bytes as u64 => too_large(&connector_id),
        _ => next.run(request).await,
    }
}

fn count(connector: &str, outcome: &'static str) {
    metrics::counter!("jitbridge_deliveries_total", "connector" => connector.to_owned(), "outcome" => outcome).increment(1);
}

async fn receive(
    State(state): State<IngressState>,
    Path(connector_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(reg) = state.connectors.get(&connector_id) else {
        count("unknown", "unknown_connector");
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_connector",
            format!("no connector with id {connector_id:?}"),
        )
        .into_response();
    };
    let body = match body {
        Ok(b) => b,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return too_large(&connector_id);
        }
        Err(rejection) => {
            count(&connector_id, "bad_request");
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                rejection.body_text(),
            )
            .into_response();
        }
    };
    let verified = match Inbound::<Unverified>::new(headers, body)
        .verify(&reg.inbound, state.clock.now())
    {
        Ok(v) => v,
        Err(e) => {
            count(&connector_id, "unauthorized");
            tracing::warn!(connector = %connector_id, error = %e, "delivery rejected: authentication failed");
            return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
                .into_response();
        }
    };
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(verified.body()) {
        count(&connector_id, "bad_request");
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "unparseable_body",
            format!("the body is not JSON: {e}"),
        )
        .into_response();
    }
    let headers = verified.storable_headers(&reg.inbound);
    let raw = RawDelivery {
        headers,
        body: verified.into_body().to_vec(),
    };
    let dedupe_key = reg.connector.dedupe_key(&raw);
    let delivery = NewDelivery {
        id: Uuid::now_v7(),
        connector: connector_id.clone(),
        dedupe_key,
        received_at: state.clock.now(),
        headers: raw.headers,
        body: raw.body,
    };
    let inserted = state.store.insert_delivery(delivery).await;
    crate::failpoint!(crate::failpoint::INBOX_INSERT);
    match inserted {
        Ok(InsertOutcome::Accepted(id)) => {
            count(&connector_id, "accepted");
            state.inbox_wake.notify_one();
            (
                StatusCode::ACCEPTED,
                Json(json!({"delivery": id.to_string(), "status": "accepted"})),
            )
                .into_response()
        }
        Ok(InsertOutcome::Duplicate(id)) => {
            count(&connector_id, "duplicate");
            (
                StatusCode::OK,
                Json(json!({"delivery": id.to_string(), "status": "duplicate"})),
            )
                .into_response()
        }
        Err(e) => {
            count(&connector_id, "store_error");
            tracing::error!(connector = %connector_id, error = %e, "delivery could not be committed; answering 503 so the sender retries");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the delivery could not be stored; retry later",
            )
            .into_response()
        }
    }
}
