//! HTTP plumbing shared by every connector's client: bounded body reads, JSON responses,
//! transport failures classified as retryable, and error details cleaned for logs and audit
//! records (control characters removed, length capped, URLs left out).

use std::time::Duration;

use reqwest::Response;
use serde_json::Value;

use super::ConnectorError;

/// Longest error detail kept, in characters.
pub(crate) const MAX_DETAIL_CHARS: usize = 300;

/// `s` without control characters, cut to [`MAX_DETAIL_CHARS`] (an ellipsis marks the cut).
pub(crate) fn clean(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_DETAIL_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().nth(MAX_DETAIL_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// A connect error, timeout or broken body as a retryable [`ConnectorError::Unavailable`]
/// naming the operation and the causes, never the URL.
pub(crate) fn transport(op: &str, err: reqwest::Error) -> ConnectorError {
    if err.is_builder() {
        return ConnectorError::Invalid(clean(&format!(
            "{op}: cannot build request: {}",
            err.without_url()
        )));
    }
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut detail = format!("{op}: {what}");
    let mut source = std::error::Error::source(&err);
    for _ in 0..4 {
        let Some(s) = source else { break };
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    ConnectorError::Unavailable {
        status: None,
        retry_after: None,
        detail: clean(&detail),
    }
}

/// Reads a successful response as JSON, refusing oversized bodies.
pub(crate) async fn json_body(
    op: &str,
    mut resp: Response,
    limit: usize,
) -> Result<Value, ConnectorError> {
    let bytes = read_limited(&mut resp, limit, true)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge => {
                ConnectorError::Invalid(format!("{op}: response larger than {limit} bytes"))
            }
            ReadError::Transport(e) => transport(op, e),
        })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ConnectorError::Invalid(format!(
            "{op}: response is not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// Why a bounded body read stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    TooLarge,
    Transport(reqwest::Error),
}

/// Reads at most `limit` bytes of the body. With `strict`, a longer body is an error; without,
/// it is cut (enough for an error message).
pub(crate) async fn read_limited(
    resp: &mut Response,
    limit: usize,
    strict: bool,
) -> Result<Vec<u8>, ReadError> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Transport)? {
        let room = limit.saturating_sub(buf.len());
        if chunk.len() > room {
            if strict {
                return Err(ReadError::TooLarge);
            }
            buf.extend_from_slice(chunk.get(..room).unwrap_or_default());
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Maps a non-success HTTP status onto the retry classes: `429` is rate limiting, `408`, `409`,
/// `425` and `5xx` are transient, every other status is a permanent refusal.
pub(crate) fn classify(
    status: u16,
    retry_after: Option<Duration>,
    detail: String,
) -> ConnectorError {
    match status {
        429 => ConnectorError::RateLimited {
            status,
            retry_after,
            detail,
        },
        408 | 409 | 425 | 500..=599 => ConnectorError::Unavailable {
            status: Some(status),
            retry_after,
            detail,
        },
        _ => ConnectorError::Rejected { status, detail },
    }
}

/// Longest error body read for its message.
pub(crate) const MAX_ERROR_BODY: usize = 64 * 1024;

/// Passes a successful response through; turns any other into a classified
/// [`ConnectorError`], with the delay the system asked for (`retry_after`, read by the caller
/// in its system's terms) and the message of its error envelope (`error_detail`).
pub(crate) async fn check_status(
    op: &str,
    mut resp: Response,
    retry_after: impl FnOnce(&reqwest::header::HeaderMap) -> Option<Duration>,
    error_detail: fn(&[u8]) -> Option<String>,
) -> Result<Response, ConnectorError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = retry_after(resp.headers());
    let body = read_limited(&mut resp, MAX_ERROR_BODY, false)
        .await
        .unwrap_or_default();
    let detail = format!(
        "{op}: {}",
        error_detail(&body).unwrap_or_else(|| reason(status))
    );
    Err(classify(status.as_u16(), retry_after, clean(&detail)))
}

/// `HTTP 503 Service Unavailable`: the status when the body says nothing useful.
pub(crate) fn reason(status: reqwest::StatusCode) -> String {
    format!(
        "HTTP {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_owned()
}
