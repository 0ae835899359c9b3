//! Shared HTTP plumbing: every error answer is JSON `{"error": "...", "detail": "..."}` with the
//! right status, so ITSM retry logic and admins' scripts can tell failures apart.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answer. `detail` must never contain a secret.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Short machine-readable code (`unauthorized`, `not_found`, ...).
    pub error: &'static str,
    /// What went wrong, for a person.
    pub detail: String,
}

impl ApiError {
    /// An error with this status, code and detail.
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            error,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.error, "detail": self.detail})),
        )
            .into_response()
    }
}

/// The JSON 404 for paths no route serves.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// Bounds a whole request (reading the body included) by `limit`, answering the JSON `408` so a
/// sender trickling its body cannot hold a connection; the unread rest of the body makes the
/// server close the connection after the answer.
pub async fn request_timeout(
    axum::extract::State(limit): axum::extract::State<std::time::Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request was not received and answered within server.request_timeout",
        )
        .into_response(),
    }
}
