//! The Freshservice API v2 calls behind confirmation, writeback and the health check.
//!
//! Every request goes through one place ([`FreshserviceClient::send`]) so that every call waits
//! its turn with the [`Pacer`], carries the credentials and the per-call timeout, and feeds the
//! rate-limit headers of its response back to the pacer; every failure is classified the same
//! way ([`classify`]) for the outbox's retry logic. Error details name the method and path only
//! (never the host, a header or the credentials) and are sanitized and truncated, since they end
//! up in logs, the audit trail and ticket comments.

#[cfg(test)]
use crate::connectors::http::MAX_DETAIL_CHARS;
#[cfg(test)]
use crate::connectors::http::classify;
pub(crate) use crate::connectors::http::clean;
use crate::connectors::http::{check_status, json_body, transport};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, Response, StatusCode, Url, header::HeaderMap};
use serde_json::{Map, Value};

use super::model;
use super::pace::Pacer;
use crate::connectors::{ConnectorError, OutboundAuth};
use crate::ticket::Person;

/// Longest error detail kept, in characters.
/// Largest error body read to extract a detail from.
/// Largest successful JSON response accepted (a ticket view with a long HTML description fits).
const MAX_JSON_BODY: usize = 4 * 1024 * 1024;
/// Page size asked for when listing approvals (Freshservice's maximum).
pub(crate) const APPROVAL_PAGE_SIZE: usize = 100;
/// Most approval pages followed before refusing to decide on a partial list.
const MAX_APPROVAL_PAGES: usize = 5;
/// Page size asked for when looking for an already-posted note (Freshservice's maximum).
const CONVERSATION_PAGE_SIZE: usize = 100;
/// Most note pages read before giving up.
const MAX_CONVERSATION_PAGES: usize = 20;
/// Longest `Retry-After` honoured; a longer hint is clamped so a bad header cannot park work
/// forever.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Most field errors quoted from one validation envelope.
const MAX_FIELD_ERRORS: usize = 10;

/// Where a user id is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Directory {
    /// `GET /api/v2/requesters/{id}` (`{"requester": {..., "primary_email"}}`).
    Requesters,
    /// `GET /api/v2/agents/{id}` (`{"agent": {..., "email"}}`).
    Agents,
}

impl Directory {
    fn path(self) -> (&'static str, &'static str) {
        match self {
            Directory::Requesters => ("requesters", "requester"),
            Directory::Agents => ("agents", "agent"),
        }
    }
}

/// An authenticated, paced client for one Freshservice account.
#[derive(Debug, Clone)]
pub(crate) struct FreshserviceClient {
    base: Url,
    auth: OutboundAuth,
    timeout: Duration,
    http: reqwest::Client,
    pacer: Arc<Pacer>,
}

impl FreshserviceClient {
    /// A client for the account at `base` (already stripped of credentials, query and fragment).
    pub(crate) fn new(
        base: Url,
        auth: OutboundAuth,
        timeout: Duration,
        http: reqwest::Client,
        pacer: Arc<Pacer>,
    ) -> Self {
        Self {
            base,
            auth,
            timeout,
            http,
            pacer,
        }
    }

    /// The pacer shared by every call of this connector.
    pub(crate) fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    /// `GET /api/v2/agents/me`, falling back to `GET /api/v2/tickets?per_page=1` when the
    /// account does not serve the former: are the base URL and API key accepted?
    pub(crate) async fn healthcheck(&self) -> Result<(), ConnectorError> {
        let (op, resp) = self
            .send(Method::GET, &["api", "v2", "agents", "me"], &[], None)
            .await?;
        if resp.status() != StatusCode::NOT_FOUND {
            return check(&op, resp).await.map(drop);
        }
        let (op, resp) = self
            .send(
                Method::GET,
                &["api", "v2", "tickets"],
                &[("per_page", "1".to_owned())],
                None,
            )
            .await?;
        check(&op, resp).await.map(drop)
    }

    /// `GET /api/v2/tickets/{id}`: the ticket record (unwrapped from `{"ticket": ...}`).
    pub(crate) async fn ticket(&self, id: &str) -> Result<Map<String, Value>, ConnectorError> {
        let (op, resp) = self
            .send(Method::GET, &["api", "v2", "tickets", id], &[], None)
            .await?;
        let body = json_body(&op, check(&op, resp).await?, MAX_JSON_BODY).await?;
        model::unwrap_record(&body, "ticket")
            .cloned()
            .ok_or_else(|| ConnectorError::Invalid(format!("{op}: the response holds no ticket")))
    }

    /// The user `id` as a [`Person`], asking each directory in `order` until one knows them.
    /// `Ok(None)` when every directory answers `404`.
    pub(crate) async fn user(
        &self,
        id: &str,
        order: &[Directory],
    ) -> Result<Option<Person>, ConnectorError> {
        for directory in order {
            let (segment, wrapper) = directory.path();
            let (op, resp) = self
                .send(Method::GET, &["api", "v2", segment, id], &[], None)
                .await?;
            if resp.status() == StatusCode::NOT_FOUND {
                continue;
            }
            let body = json_body(&op, check(&op, resp).await?, MAX_JSON_BODY).await?;
            if let Some(p) = model::unwrap_record(&body, wrapper).and_then(model::person) {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    /// Every approval record of the ticket, following pagination; `None` when the endpoint
    /// answers `404` (the account or ticket has no approvals API).
    pub(crate) async fn approvals(
        &self,
        id: &str,
    ) -> Result<Option<Vec<model::Decision>>, ConnectorError> {
        let path = ["api", "v2", "tickets", id, "approvals"];
        let mut all = Vec::new();
        for page in 1..=MAX_APPROVAL_PAGES {
            let query = [
                ("per_page", APPROVAL_PAGE_SIZE.to_string()),
                ("page", page.to_string()),
            ];
            let (op, resp) = self.send(Method::GET, &path, &query, None).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let body = json_body(&op, check(&op, resp).await?, MAX_JSON_BODY).await?;
            let len = model::page_len(&body);
            all.extend(model::decisions(&body));
            if len < APPROVAL_PAGE_SIZE {
                return Ok(Some(all));
            }
        }
        Err(ConnectorError::Invalid(format!(
            "ticket {id}: more than {} approval records; refusing to decide on a partial list",
            MAX_APPROVAL_PAGES * APPROVAL_PAGE_SIZE
        )))
    }

    /// Whether a note (conversation) of the ticket contains `marker`, in its HTML or text body:
    /// pages through `GET /api/v2/tickets/{id}/conversations`.
    pub(crate) async fn has_note(&self, id: &str, marker: &str) -> Result<bool, ConnectorError> {
        let path = ["api", "v2", "tickets", id, "conversations"];
        for page in 1..=MAX_CONVERSATION_PAGES {
            let query = [
                ("per_page", CONVERSATION_PAGE_SIZE.to_string()),
                ("page", page.to_string()),
            ];
            let (op, resp) = self.send(Method::GET, &path, &query, None).await?;
            let body = json_body(&op, check(&op, resp).await?, MAX_JSON_BODY).await?;
            let notes = body
                .get("conversations")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let has = |n: &Value, field: &str| {
                n.get(field)
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.contains(marker))
            };
            if notes.iter().any(|n| has(n, "body") || has(n, "body_text")) {
                return Ok(true);
            }
            if notes.len() < CONVERSATION_PAGE_SIZE {
                return Ok(false);
            }
        }
        Err(ConnectorError::Invalid(format!(
            "ticket {id}: more than {} notes; cannot tell whether the note was already posted",
            MAX_CONVERSATION_PAGES * CONVERSATION_PAGE_SIZE
        )))
    }

    /// `POST /api/v2/tickets/{id}/notes` with an HTML body (Freshservice answers `201`).
    pub(crate) async fn add_note(
        &self,
        id: &str,
        html: &str,
        private: bool,
    ) -> Result<(), ConnectorError> {
        let body = serde_json::json!({ "body": html, "private": private });
        let (op, resp) = self
            .send(
                Method::POST,
                &["api", "v2", "tickets", id, "notes"],
                &[],
                Some(&body),
            )
            .await?;
        check(&op, resp).await.map(drop)
    }

    /// `PUT /api/v2/tickets/{id}` with `{"status": code}` (Freshservice updates with PUT, not
    /// PATCH, and answers `200`).
    pub(crate) async fn set_status(&self, id: &str, code: u16) -> Result<(), ConnectorError> {
        let body = serde_json::json!({ "status": code });
        let (op, resp) = self
            .send(Method::PUT, &["api", "v2", "tickets", id], &[], Some(&body))
            .await?;
        check(&op, resp).await.map(drop)
    }

    /// Sends one request: waits for the pacer, adds credentials and the timeout, and reports the
    /// response's rate-limit headers back. Returns the operation label used in error details
    /// (method and path, never the host or credentials) and the raw response.
    async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(String, Response), ConnectorError> {
        let mut url = super::endpoint(&self.base, segments)?;
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let op = format!("{method} {}", url.path());
        let mut rb = self
            .http
            .request(method, url)
            .timeout(self.timeout)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            rb = rb.json(body);
        }
        self.pacer.wait_turn().await;
        let resp = self
            .auth
            .apply(rb)
            .send()
            .await
            .map_err(|e| transport(&op, e))?;
        self.pacer.observe(resp.headers()).await;
        tracing::debug!(op = %op, status = resp.status().as_u16(), "freshservice api call");
        Ok((op, resp))
    }
}

/// Passes a successful response through; any other becomes a classified error.
async fn check(op: &str, resp: Response) -> Result<Response, ConnectorError> {
    check_status(op, resp, retry_hint, error_detail).await
}

/// `Retry-After` in seconds (Freshservice sends seconds), clamped to an hour.
pub(crate) fn retry_hint(headers: &HeaderMap) -> Option<Duration> {
    let secs = headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// The human-readable part of a Freshservice error body: `description` plus each
/// `errors[].field: message` (the actionable part of a `400`), or `message` / `code` for
/// authentication failures. `None` when the body carries none of them.
pub(crate) fn error_detail(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let text = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let mut parts: Vec<String> = Vec::new();
    if let Some(d) = text(v.get("description")) {
        parts.push(d);
    }
    if let Some(errors) = v.get("errors").and_then(Value::as_array) {
        parts.extend(errors.iter().take(MAX_FIELD_ERRORS).filter_map(|e| {
            let field = text(e.get("field"));
            let message = text(e.get("message")).or_else(|| text(e.get("code")));
            match (field, message) {
                (Some(f), Some(m)) => Some(format!("{f}: {m}")),
                (None, Some(m)) => Some(m),
                (Some(f), None) => Some(format!("{f}: invalid")),
                (None, None) => None,
            }
        }));
    }
    if parts.is_empty() {
        if let Some(m) = text(v.get("message")) {
            parts.push(m);
        } else if let Some(c) = text(v.get("code")) {
            parts.push(c);
        }
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn validation_envelope_quotes_description_and_field_errors() {
        let body = br#"{"description":"Validation failed","errors":[{"field":"status","message":"It should be one of these values: '2,3,4,5'","code":"invalid_value"},{"field":"priority","code":"missing_field"}]}"#;
        assert_eq!(
            error_detail(body).as_deref(),
            Some(
                "Validation failed; status: It should be one of these values: '2,3,4,5'; priority: missing_field"
            )
        );
    }

    #[test]
    fn authentication_failures_quote_the_message() {
        assert_eq!(
            error_detail(br#"{"code":"invalid_credentials","message":"You have to be logged in to perform this action."}"#)
                .as_deref(),
            Some("You have to be logged in to perform this action.")
        );
        assert_eq!(error_detail(b"<html>502</html>"), None);
        assert_eq!(error_detail(br#"{"errors":[]}"#), None);
    }

    #[test]
    fn retry_after_is_seconds_and_clamped() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_hint(&h), None);
        h.insert("retry-after", HeaderValue::from_static(" 12 "));
        assert_eq!(retry_hint(&h), Some(Duration::from_secs(12)));
        h.insert("retry-after", HeaderValue::from_static("99999999"));
        assert_eq!(retry_hint(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_hint(&h), None);
    }

    proptest! {
        #[test]
        fn every_error_status_is_classified_as_documented(status in 300u16..600) {
            let e = classify(status, None, "d".into());
            match status {
                429 => prop_assert!(matches!(e, ConnectorError::RateLimited { .. }), "{:?}", e),
                408 | 409 | 425 | 500..=599 => prop_assert!(matches!(e, ConnectorError::Unavailable { .. }), "{:?}", e),
                _ => prop_assert!(matches!(e, ConnectorError::Rejected { .. }), "{:?}", e),
            }
        }

        #[test]
        fn error_detail_and_clean_never_panic(body in prop::collection::vec(any::<u8>(), 0..256), s in "(?s).{0,400}") {
            let _ = error_detail(&body);
            prop_assert!(clean(&s).chars().count() <= MAX_DETAIL_CHARS + 1);
        }
    }
}
