//! The Jira Cloud / JSM REST calls behind confirmation and writeback.
//!
//! Every request goes through one place ([`JiraClient::send`]) so that every call gets the
//! configured timeout and credentials, and every failure is classified the same way
//! ([`classify`]) for the outbox's retry logic. Error details name the method and path only —
//! never the full URL, a header, or the credentials — and are sanitized and truncated, since they
//! end up in logs, the audit trail and ticket comments.

#[cfg(test)]
use crate::connectors::http::MAX_DETAIL_CHARS;
#[cfg(test)]
use crate::connectors::http::classify;
pub(crate) use crate::connectors::http::clean;
use crate::connectors::http::{check_status, json_body, transport};
use std::time::Duration;

use jiff::Timestamp;
use reqwest::{Method, Response, StatusCode, Url, header::HeaderMap};
use serde_json::Value;

use super::adf;
use super::parse::{derive_approval, ident, is_safe_ident, name_of, object, person, text};
use crate::connectors::{Confirmation, ConnectorError, OutboundAuth};

/// Longest error detail kept, in characters.
/// Largest error body read to extract a detail from.
/// Largest successful JSON response accepted.
const MAX_JSON_BODY: usize = 2 * 1024 * 1024;
/// Page size asked for when listing JSM approvals.
const APPROVAL_PAGE_SIZE: usize = 50;
/// Page size asked for when looking for an already-posted comment.
const COMMENT_PAGE_SIZE: usize = 100;
/// Most comment pages read before giving up.
const MAX_COMMENT_PAGES: usize = 50;
/// Most approval pages followed before giving up (a request has a handful of approvals).
const MAX_APPROVAL_PAGES: usize = 20;
/// Longest `Retry-After` honoured; a longer hint is clamped so a bad header cannot park work forever.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// An authenticated client for one Jira site.
#[derive(Debug, Clone)]
pub(crate) struct JiraClient {
    base: Url,
    auth: OutboundAuth,
    timeout: Duration,
    http: reqwest::Client,
}

impl JiraClient {
    /// A client for the site at `base` (already stripped of credentials, query and fragment).
    pub(crate) fn new(
        base: Url,
        auth: OutboundAuth,
        timeout: Duration,
        http: reqwest::Client,
    ) -> Self {
        Self {
            base,
            auth,
            timeout,
            http,
        }
    }

    /// `GET /rest/api/3/myself`: are the base URL and credentials accepted?
    pub(crate) async fn myself(&self) -> Result<(), ConnectorError> {
        let (op, resp) = self
            .send(Method::GET, &["rest", "api", "3", "myself"], &[], None)
            .await?;
        check(&op, resp).await.map(drop)
    }

    /// Status and requester from the issue, then the JSM approvals (if it is a JSM request).
    pub(crate) async fn confirm(&self, key: &str) -> Result<Confirmation, ConnectorError> {
        let issue = self.issue(key, "status,reporter").await?;
        let fields = object(issue.get("fields"));
        let records = self.approvals(key).await?;
        Ok(Confirmation {
            status: fields.and_then(|f| name_of(f.get("status"))),
            requester: fields.and_then(|f| person(f.get("reporter"))),
            approval: records.as_deref().and_then(derive_approval),
            fields: None,
        })
    }

    /// `POST /rest/api/3/issue/{key}/comment` with `text` as an ADF document (v3 rejects strings),
    /// ending in a paragraph holding `marker` so [`JiraClient::has_comment`] can find it again.
    pub(crate) async fn add_comment(
        &self,
        key: &str,
        text: &str,
        marker: &str,
    ) -> Result<(), ConnectorError> {
        let body = serde_json::json!({ "body": adf::document(&format!("{text}\n\n{marker}")) });
        let (op, resp) = self
            .send(
                Method::POST,
                &["rest", "api", "3", "issue", key, "comment"],
                &[],
                Some(&body),
            )
            .await?;
        check(&op, resp).await.map(drop)
    }

    /// Whether a comment of the issue contains `marker`: pages through
    /// `GET /rest/api/3/issue/{key}/comment`, newest first where Jira honours `orderBy`.
    pub(crate) async fn has_comment(
        &self,
        key: &str,
        marker: &str,
    ) -> Result<bool, ConnectorError> {
        let path = ["rest", "api", "3", "issue", key, "comment"];
        let mut start = 0usize;
        for _ in 0..MAX_COMMENT_PAGES {
            let query = [
                ("startAt", start.to_string()),
                ("maxResults", COMMENT_PAGE_SIZE.to_string()),
                ("orderBy", "-created".to_owned()),
            ];
            let (op, resp) = self.send(Method::GET, &path, &query, None).await?;
            let page = json_body(&op, check(&op, resp).await?, MAX_JSON_BODY).await?;
            let comments = page
                .get("comments")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if comments.iter().any(|c| {
                c.get("body")
                    .is_some_and(|b| b.to_string().contains(marker))
            }) {
                return Ok(true);
            }
            start += comments.len();
            let total = page.get("total").and_then(Value::as_u64).unwrap_or(0);
            if comments.is_empty() || start as u64 >= total {
                return Ok(false);
            }
        }
        Err(ConnectorError::Invalid(format!(
            "{key}: more than {} comments; cannot tell whether the comment was already posted",
            MAX_COMMENT_PAGES * COMMENT_PAGE_SIZE
        )))
    }

    /// Moves the issue to the status called `name` through the matching workflow transition.
    ///
    /// Transition ids are per workflow, so they are looked up each time: first by target status
    /// name, then by the transition's own name (both case-insensitive). When no transition
    /// matches but the issue already has that status, the writeback has already happened (e.g. a
    /// retry after a lost response) and this succeeds without doing anything.
    pub(crate) async fn transition_to(&self, key: &str, name: &str) -> Result<(), ConnectorError> {
        let wanted = name.trim();
        if wanted.is_empty() {
            return Err(ConnectorError::Invalid(format!(
                "{key}: the target status name is empty"
            )));
        }
        let path = ["rest", "api", "3", "issue", key, "transitions"];
        let (op, resp) = self.send(Method::GET, &path, &[], None).await?;
        let listing = json_body(&op, check(&op, resp).await?, MAX_JSON_BODY).await?;
        let transitions = listing
            .get("transitions")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let target = |t: &Value| name_of(t.get("to"));
        let chosen = transitions
            .iter()
            .find(|t| target(t).is_some_and(|n| n.eq_ignore_ascii_case(wanted)))
            .or_else(|| {
                transitions
                    .iter()
                    .find(|t| text(t.get("name")).is_some_and(|n| n.eq_ignore_ascii_case(wanted)))
            });
        let Some(chosen) = chosen else {
            let issue = self.issue(key, "status").await?;
            let current = object(issue.get("fields")).and_then(|f| name_of(f.get("status")));
            if current
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(wanted))
            {
                return Ok(());
            }
            let reachable: Vec<String> = transitions
                .iter()
                .filter_map(target)
                .map(|n| format!("\"{n}\""))
                .collect();
            return Err(ConnectorError::Invalid(clean(&format!(
                "{key}: no transition leads to status \"{wanted}\" (current status \"{}\"; reachable: {})",
                current.as_deref().unwrap_or("unknown"),
                if reachable.is_empty() {
                    "none".to_owned()
                } else {
                    reachable.join(", ")
                }
            ))));
        };
        let id = ident(chosen.get("id")).ok_or_else(|| {
            ConnectorError::Invalid(format!("{key}: Jira listed a transition without an id"))
        })?;
        let body = serde_json::json!({ "transition": { "id": id } });
        let (op, resp) = self.send(Method::POST, &path, &[], Some(&body)).await?;
        check(&op, resp).await.map(drop)
    }

    /// `GET /rest/api/3/issue/{key}?fields=...`.
    async fn issue(&self, key: &str, fields: &str) -> Result<Value, ConnectorError> {
        let (op, resp) = self
            .send(
                Method::GET,
                &["rest", "api", "3", "issue", key],
                &[("fields", fields.to_owned())],
                None,
            )
            .await?;
        json_body(&op, check(&op, resp).await?, MAX_JSON_BODY).await
    }

    /// All JSM approval records of the request, following pagination; `None` when Jira answers
    /// `404` (the issue is not a service-desk request with approvals).
    async fn approvals(&self, key: &str) -> Result<Option<Vec<Value>>, ConnectorError> {
        let path = ["rest", "servicedeskapi", "request", key, "approval"];
        let mut records = Vec::new();
        for _ in 0..MAX_APPROVAL_PAGES {
            let query = [
                ("start", records.len().to_string()),
                ("limit", APPROVAL_PAGE_SIZE.to_string()),
            ];
            let (op, resp) = self.send(Method::GET, &path, &query, None).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let page = json_body(&op, check(&op, resp).await?, MAX_JSON_BODY).await?;
            let values = page
                .get("values")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let last =
                values.is_empty() || page.get("isLastPage").and_then(Value::as_bool) != Some(false);
            records.extend(values);
            if last {
                return Ok(Some(records));
            }
        }
        Err(ConnectorError::Invalid(format!(
            "{key}: more than {} approval records; refusing to decide on a partial list",
            MAX_APPROVAL_PAGES * APPROVAL_PAGE_SIZE
        )))
    }

    /// Sends one request with credentials and the timeout. Returns the operation label used in
    /// error details (method and path, never the host or credentials) and the raw response.
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
        let resp = self
            .auth
            .apply(rb)
            .send()
            .await
            .map_err(|e| transport(&op, e))?;
        tracing::debug!(op = %op, status = resp.status().as_u16(), "jira api call");
        Ok((op, resp))
    }
}

/// The issue key (or, failing that, id) to put in a REST path, refusing anything that could
/// change the path's meaning.
pub(crate) fn issue_ref(ticket: &crate::ticket::TicketRef) -> Result<&str, ConnectorError> {
    [ticket.key.as_str(), ticket.id.as_str()]
        .into_iter()
        .find(|s| is_safe_ident(s))
        .ok_or_else(|| {
            ConnectorError::Invalid(format!(
                "ticket {:?} has no usable Jira issue key or id",
                clean(&ticket.key)
            ))
        })
}

/// Passes a successful response through; any other becomes a classified error.
async fn check(op: &str, resp: Response) -> Result<Response, ConnectorError> {
    let status = resp.status().as_u16();
    check_status(
        op,
        resp,
        |h| retry_hint(status, h, Timestamp::now()),
        error_detail,
    )
    .await
}

/// The delay the server asked for: `Retry-After` seconds, or on a `429` without it the
/// `X-RateLimit-Reset` ISO 8601 instant (relative to `now`). Clamped to a day.
pub(crate) fn retry_hint(status: u16, headers: &HeaderMap, now: Timestamp) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(secs) = header("retry-after").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    if status != 429 {
        return None;
    }
    let reset = header("x-ratelimit-reset")?.parse::<Timestamp>().ok()?;
    let wait = now.duration_until(reset);
    if wait.is_positive() {
        Duration::try_from(wait)
            .ok()
            .map(|d| d.min(MAX_RETRY_AFTER))
    } else {
        None
    }
}

/// The human-readable part of a Jira `ErrorCollection` (`errorMessages` + `errors`) or a JSM
/// error (`errorMessage`); `None` when the body carries neither.
pub(crate) fn error_detail(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let mut parts: Vec<String> = Vec::new();
    if let Some(messages) = v.get("errorMessages").and_then(Value::as_array) {
        parts.extend(
            messages
                .iter()
                .filter_map(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
    }
    if let Some(errors) = v.get("errors").and_then(Value::as_object) {
        parts.extend(errors.iter().map(|(field, msg)| match msg.as_str() {
            Some(m) => format!("{field}: {m}"),
            None => format!("{field}: {msg}"),
        }));
    }
    if let Some(m) = text(v.get("errorMessage")) {
        parts.push(m);
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn retry_after_seconds_are_used_for_429_and_503() {
        let now = Timestamp::UNIX_EPOCH;
        assert_eq!(
            retry_hint(429, &headers(&[("retry-after", "17")]), now),
            Some(Duration::from_secs(17))
        );
        assert_eq!(
            retry_hint(503, &headers(&[("Retry-After", " 5 ")]), now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(retry_hint(503, &headers(&[]), now), None);
        assert_eq!(
            retry_hint(429, &headers(&[("retry-after", "999999999")]), now),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn rate_limit_reset_is_used_when_retry_after_is_absent() {
        let now: Timestamp = "2025-03-14T10:00:00Z".parse().expect("ts");
        let h = headers(&[("x-ratelimit-reset", "2025-03-14T10:02Z")]);
        assert_eq!(retry_hint(429, &h, now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_hint(503, &h, now),
            None,
            "the reset header belongs to rate limiting"
        );
        let past = headers(&[("x-ratelimit-reset", "2025-03-14T09:00Z")]);
        assert_eq!(retry_hint(429, &past, now), None);
        let garbage = headers(&[("x-ratelimit-reset", "soon")]);
        assert_eq!(retry_hint(429, &garbage, now), None);
    }

    #[test]
    fn error_collection_messages_and_field_errors_are_joined() {
        let body = br#"{"errorMessages":["Issue does not exist"],"errors":{"summary":"Summary is required"}}"#;
        assert_eq!(
            error_detail(body).as_deref(),
            Some("Issue does not exist; summary: Summary is required")
        );
        assert_eq!(
            error_detail(
                br#"{"errorMessage":"The request could not be found","i18nErrorMessage":{}}"#
            )
            .as_deref(),
            Some("The request could not be found")
        );
        assert_eq!(error_detail(b"<html>Bad gateway</html>"), None);
        assert_eq!(error_detail(br#"{"errorMessages":[],"errors":{}}"#), None);
    }

    #[test]
    fn clean_truncates_and_strips_control_characters() {
        let long = "x".repeat(1000);
        let c = clean(&long);
        assert_eq!(c.chars().count(), MAX_DETAIL_CHARS + 1);
        assert!(c.ends_with('…'));
        assert_eq!(clean("a\nb\u{1b}[31m"), "a b [31m");
    }

    #[test]
    fn ticket_refs_that_could_escape_the_path_are_refused() {
        let r = |key: &str, id: &str| crate::ticket::TicketRef {
            connector: "jira".into(),
            id: id.into(),
            key: key.into(),
            url: None,
        };
        assert_eq!(issue_ref(&r("ACCESS-87", "10234")), Ok("ACCESS-87"));
        assert_eq!(issue_ref(&r("../myself", "10234")), Ok("10234"));
        assert!(matches!(
            issue_ref(&r("..", "a/b")),
            Err(ConnectorError::Invalid(_))
        ));
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
            prop_assert_eq!(e.is_retryable(), matches!(status, 408 | 409 | 425 | 429 | 500..=599));
        }

        #[test]
        fn error_detail_and_clean_never_panic(body in prop::collection::vec(any::<u8>(), 0..256), s in "(?s).{0,400}") {
            let _ = error_detail(&body);
            prop_assert!(clean(&s).chars().count() <= MAX_DETAIL_CHARS + 1);
        }
    }
}
