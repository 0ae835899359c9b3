//! The ServiceNow Table API calls behind confirmation and writeback.
//!
//! Every request goes through one place ([`SnowClient::send`]) so that every call gets the
//! configured timeout and credentials, and every failure is classified the same way
//! ([`classify`]) for the outbox's retry logic. Error details name the method and path only —
//! never the host, a header, or the credentials — and are sanitized and truncated, since they
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
use serde_json::{Map, Value};

use super::parse::{self, APPROVER_TABLE, ApprovalState, scalar};
use crate::connectors::{Confirmation, ConnectorError, OutboundAuth};
use crate::ticket::{Approval, Person};

/// Longest error detail kept, in characters.
/// Largest error body read to extract a detail from.
/// Largest successful JSON response accepted.
const MAX_JSON_BODY: usize = 2 * 1024 * 1024;
/// Most approval rows read for one ticket; a request has a handful.
const MAX_APPROVER_ROWS: usize = 100;
/// Where journal entries (`work_notes`, `comments`) can be read back.
const JOURNAL_TABLE: &str = "sys_journal_field";
/// Most distinct users looked up per confirmation; beyond that, people keep only their sys_id.
const MAX_USER_LOOKUPS: usize = 20;
/// Longest `Retry-After` honoured; a longer hint is clamped so a bad header cannot park work forever.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The approval-row fields confirmation needs.
const APPROVER_FIELDS: &str =
    "sys_id,state,approver,sysapproval,document_id,source_table,sys_updated_on";
/// The ticket fields confirmation needs.
const TICKET_FIELDS: &str =
    "sys_id,number,state,approval,requested_for,caller_id,opened_by,sys_class_name,sys_updated_on";

/// An authenticated client for one ServiceNow instance.
#[derive(Debug, Clone)]
pub(crate) struct SnowClient {
    base: Url,
    auth: OutboundAuth,
    timeout: Duration,
    http: reqwest::Client,
}

/// A ticket record found by [`SnowClient::find_record`].
pub(crate) struct Found {
    /// The table it was found in.
    pub table: String,
    /// The record.
    pub record: Map<String, Value>,
}

impl SnowClient {
    /// A client for the instance at `base` (already stripped of credentials, query and fragment).
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

    /// `GET /api/now/table/sys_user?sysparm_limit=1`: are the base URL and credentials accepted?
    pub(crate) async fn healthcheck(&self) -> Result<(), ConnectorError> {
        let (op, resp) = self
            .send(
                Method::GET,
                &["sys_user"],
                &[("sysparm_limit", "1".to_owned())],
                None,
            )
            .await?;
        check(&op, resp).await.map(drop)
    }

    /// The ticket `sys_id` from the first of `tables` that holds it; `None` when none does
    /// (ServiceNow answers `404` for a missing record *and* for one hidden by an ACL).
    pub(crate) async fn find_record(
        &self,
        tables: &[String],
        sys_id: &str,
    ) -> Result<Option<Found>, ConnectorError> {
        for table in tables {
            let query = [
                ("sysparm_fields", TICKET_FIELDS.to_owned()),
                ("sysparm_exclude_reference_link", "true".to_owned()),
            ];
            if let Some(v) = self.get_json(&[table, sys_id], &query).await? {
                return match v.get("result") {
                    Some(Value::Object(record)) => Ok(Some(Found {
                        table: table.clone(),
                        record: record.clone(),
                    })),
                    _ => Err(ConnectorError::Invalid(format!(
                        "GET /api/now/table/{table}/{sys_id}: the answer holds no `result` record"
                    ))),
                };
            }
        }
        Ok(None)
    }

    /// The `sysapproval_approver` rows of the ticket: those whose `sysapproval` is it, else those
    /// whose `document_id` is it.
    pub(crate) async fn approver_rows(
        &self,
        sys_id: &str,
    ) -> Result<Vec<Map<String, Value>>, ConnectorError> {
        for field in ["sysapproval", "document_id"] {
            let query = [
                ("sysparm_query", format!("{field}={sys_id}")),
                ("sysparm_fields", APPROVER_FIELDS.to_owned()),
                ("sysparm_exclude_reference_link", "true".to_owned()),
                ("sysparm_limit", (MAX_APPROVER_ROWS + 1).to_string()),
            ];
            // Table API v1 answers a list without matches with 404, v2 with an empty list.
            let Some(v) = self.get_json(&[APPROVER_TABLE], &query).await? else {
                continue;
            };
            let rows: Vec<Map<String, Value>> = match v.get("result") {
                // Only rows that really point at the ticket count, whatever the server's
                // query support: a row of another ticket must never approve this one.
                Some(Value::Array(rows)) => rows
                    .iter()
                    .filter_map(Value::as_object)
                    .filter(|r| {
                        scalar(r.get("sysapproval")).as_deref() == Some(sys_id)
                            || scalar(r.get("document_id")).as_deref() == Some(sys_id)
                    })
                    .cloned()
                    .collect(),
                _ => {
                    return Err(ConnectorError::Invalid(format!(
                        "GET /api/now/table/{APPROVER_TABLE}: the answer holds no `result` list"
                    )));
                }
            };
            if rows.len() > MAX_APPROVER_ROWS {
                return Err(ConnectorError::Invalid(format!(
                    "{sys_id}: more than {MAX_APPROVER_ROWS} approval rows; refusing to decide on a partial list"
                )));
            }
            if !rows.is_empty() {
                return Ok(rows);
            }
        }
        Ok(Vec::new())
    }

    /// Whether the record `sys_id` has a `field` journal entry (`work_notes` / `comments`)
    /// containing `marker`: journal fields read back empty through the record itself, so this
    /// asks `sys_journal_field`.
    pub(crate) async fn has_journal_entry(
        &self,
        sys_id: &str,
        field: &str,
        marker: &str,
    ) -> Result<bool, ConnectorError> {
        if marker.contains('^') {
            return Err(ConnectorError::Invalid(
                "a writeback marker must not contain '^'".to_owned(),
            ));
        }
        let query = [
            (
                "sysparm_query",
                format!("element_id={sys_id}^element={field}^valueLIKE{marker}"),
            ),
            ("sysparm_fields", "element_id,value".to_owned()),
            ("sysparm_limit", "10".to_owned()),
        ];
        // v1 answers "no match" with 404.
        let Some(v) = self.get_json(&[JOURNAL_TABLE], &query).await? else {
            return Ok(false);
        };
        // Checked here too, whatever the server's query support.
        Ok(v.get("result")
            .and_then(Value::as_array)
            .is_some_and(|rows| {
                rows.iter().any(|r| {
                    scalar(r.get("element_id")).as_deref() == Some(sys_id)
                        && scalar(r.get("value")).is_some_and(|t| t.contains(marker))
                })
            }))
    }

    /// `GET /api/now/table/sys_user/{id}`: the user's e-mail and names. `None` when the user is
    /// gone or hidden (`404`/`403`): the person is then known by sys_id only.
    pub(crate) async fn user(&self, id: &str) -> Result<Option<Person>, ConnectorError> {
        let (op, resp) = self
            .send(
                Method::GET,
                &["sys_user", id],
                &[("sysparm_fields", "sys_id,user_name,email,name".to_owned())],
                None,
            )
            .await?;
        if matches!(resp.status(), StatusCode::NOT_FOUND | StatusCode::FORBIDDEN) {
            return Ok(None);
        }
        let v = json_body(&op, check(&op, resp).await?, MAX_JSON_BODY).await?;
        let Some(user) = v.get("result").and_then(Value::as_object) else {
            return Ok(None);
        };
        Ok(Some(Person {
            id: Some(id.to_owned()),
            email: scalar(user.get("email")),
            name: scalar(user.get("name")).or_else(|| scalar(user.get("user_name"))),
        }))
    }

    /// Fills in e-mail and name of each person that has a sys_id, keeping what is already known
    /// when a look-up finds nothing. At most [`MAX_USER_LOOKUPS`] look-ups.
    async fn resolve(&self, people: Vec<Person>) -> Result<Vec<Person>, ConnectorError> {
        let mut out = Vec::with_capacity(people.len());
        for (i, p) in people.into_iter().enumerate() {
            let found = match p.id.as_deref() {
                Some(id) if i < MAX_USER_LOOKUPS => self.user(id).await?,
                _ => None,
            };
            out.push(match found {
                Some(u) => Person {
                    id: p.id,
                    email: u.email.or(p.email),
                    name: u.name.or(p.name),
                },
                None => p,
            });
        }
        Ok(out)
    }

    /// Status, approval and requester of ticket `sys_id` as the Table API reports them.
    pub(crate) async fn confirm(
        &self,
        tables: &[String],
        sys_id: &str,
        options: &super::Options,
    ) -> Result<Confirmation, ConnectorError> {
        let Some(Found { table, record }) = self.find_record(tables, sys_id).await? else {
            return Err(ConnectorError::Rejected {
                status: 404,
                detail: clean(&format!(
                    "no record {sys_id} in {} (missing, or hidden from the integration user by an ACL)",
                    tables.join(", ")
                )),
            });
        };
        let rows = self.approver_rows(sys_id).await?;
        let ticket_approval =
            ApprovalState::parse(&scalar(record.get("approval")).unwrap_or_default());
        let approval = match parse::confirmed_approval(ticket_approval, &rows) {
            Some(c) => Some(Approval {
                state: c.state.to_owned(),
                approvers: self.resolve(c.approvers).await?,
                decided_at: c.decided_at,
            }),
            None => None,
        };
        let requester = match parse::requester_ref(&record) {
            Some(p) => self.resolve(vec![p]).await?.pop(),
            None => None,
        };
        let status =
            scalar(record.get("state")).map(|code| parse::state_name(&table, &code, None, options));
        Ok(Confirmation {
            status,
            approval,
            requester,
            fields: None,
        })
    }

    /// `PATCH /api/now/table/{table}/{sys_id}` with `body`. `Ok(false)` when the record is not in
    /// that table (`404`), so the caller can try the next one.
    pub(crate) async fn patch(
        &self,
        table: &str,
        sys_id: &str,
        body: &Value,
    ) -> Result<bool, ConnectorError> {
        let (op, resp) = self
            .send(Method::PATCH, &[table, sys_id], &[], Some(body))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        check(&op, resp).await.map(|_| true)
    }

    /// `GET` of a Table API path as JSON; `None` on `404`.
    async fn get_json(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Option<Value>, ConnectorError> {
        let (op, resp) = self.send(Method::GET, segments, query, None).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        json_body(&op, check(&op, resp).await?, MAX_JSON_BODY)
            .await
            .map(Some)
    }

    /// Sends one request under `/api/now/table/` with credentials and the timeout. Returns the
    /// operation label used in error details (method and path, never the host or credentials)
    /// and the raw response.
    async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(String, Response), ConnectorError> {
        let mut path = vec!["api", "now", "table"];
        path.extend_from_slice(segments);
        let mut url = super::endpoint(&self.base, &path)?;
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
        tracing::debug!(op = %op, status = resp.status().as_u16(), "servicenow api call");
        Ok((op, resp))
    }
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
/// `X-RateLimit-Reset` instant — Unix seconds on ServiceNow (an RFC 3339 instant is accepted
/// too), relative to `now`. Clamped to a day.
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
    let raw = header("x-ratelimit-reset")?;
    let reset = match raw.parse::<i64>() {
        Ok(secs) => Timestamp::from_second(secs).ok()?,
        Err(_) => raw.parse::<Timestamp>().ok()?,
    };
    let wait = now.duration_until(reset);
    if wait.is_positive() {
        Duration::try_from(wait)
            .ok()
            .map(|d| d.min(MAX_RETRY_AFTER))
    } else {
        None
    }
}

/// The human-readable part of ServiceNow's error envelope
/// `{"error": {"message": ..., "detail": ...}, "status": "failure"}`; `None` when the body
/// carries neither.
pub(crate) fn error_detail(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let error = v.get("error")?;
    let parts: Vec<String> = match error {
        Value::Object(e) => ["message", "detail"]
            .iter()
            .filter_map(|k| scalar(e.get(*k)))
            .collect(),
        other => scalar(Some(other)).into_iter().collect(),
    };
    let mut parts = parts;
    parts.dedup();
    (!parts.is_empty()).then(|| parts.join(": "))
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
    fn retry_after_seconds_win_over_the_reset_time() {
        let now = Timestamp::from_second(1_741_942_000).expect("ts");
        let h = headers(&[("retry-after", "30"), ("x-ratelimit-reset", "1741945600")]);
        assert_eq!(retry_hint(429, &h, now), Some(Duration::from_secs(30)));
        assert_eq!(
            retry_hint(503, &headers(&[("Retry-After", " 5 ")]), now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(retry_hint(503, &headers(&[]), now), None);
    }

    #[test]
    fn rate_limit_reset_is_unix_time_on_servicenow() {
        let now = Timestamp::from_second(1_741_942_000).expect("ts");
        let h = headers(&[("x-ratelimit-reset", "1741942120")]);
        assert_eq!(retry_hint(429, &h, now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_hint(503, &h, now),
            None,
            "the reset belongs to rate limiting"
        );
        let past = headers(&[("x-ratelimit-reset", "1741941000")]);
        assert_eq!(retry_hint(429, &past, now), None);
        let far = headers(&[("x-ratelimit-reset", "9999999999")]);
        assert_eq!(retry_hint(429, &far, now), Some(MAX_RETRY_AFTER));
        let iso = headers(&[("x-ratelimit-reset", "2025-03-14T08:48:40Z")]);
        assert_eq!(retry_hint(429, &iso, now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_hint(429, &headers(&[("x-ratelimit-reset", "soon")]), now),
            None
        );
    }

    #[test]
    fn error_envelope_message_and_detail_are_joined() {
        let body = br#"{"error":{"message":"Rate limit exceeded","detail":"Rate limit of 10 requests per hour for Table API exceeded"},"status":"failure"}"#;
        assert_eq!(
            error_detail(body).as_deref(),
            Some("Rate limit exceeded: Rate limit of 10 requests per hour for Table API exceeded")
        );
        assert_eq!(
            error_detail(
                br#"{"error":{"message":"No Record found","detail":null},"status":"failure"}"#
            )
            .as_deref(),
            Some("No Record found")
        );
        assert_eq!(
            error_detail(br#"{"error":"Operation failed"}"#).as_deref(),
            Some("Operation failed")
        );
        assert_eq!(error_detail(b"<html>Bad gateway</html>"), None);
        assert_eq!(error_detail(br#"{"result":{}}"#), None);
    }

    #[test]
    fn clean_truncates_and_strips_control_characters() {
        let c = clean(&"x".repeat(1000));
        assert_eq!(c.chars().count(), MAX_DETAIL_CHARS + 1);
        assert!(c.ends_with('…'));
        assert_eq!(clean("a\nb\u{1b}[31m"), "a b [31m");
    }

    proptest! {
        #[test]
        fn every_error_status_is_classified_as_documented(status in 300u16..600) {
            let e = classify(status, None, "d".into());
            prop_assert_eq!(e.is_retryable(), matches!(status, 408 | 409 | 425 | 429 | 500..=599));
            prop_assert_eq!(matches!(e, ConnectorError::RateLimited { .. }), status == 429);
        }

        #[test]
        fn error_detail_and_retry_hint_never_panic(body in prop::collection::vec(any::<u8>(), 0..256), reset in "(?s).{0,24}") {
            let _ = error_detail(&body);
            if let Ok(v) = HeaderValue::from_str(&reset) {
                let mut h = HeaderMap::new();
                h.insert("x-ratelimit-reset", v);
                if let Some(d) = retry_hint(429, &h, Timestamp::UNIX_EPOCH) {
                    prop_assert!(d <= MAX_RETRY_AFTER);
                }
            }
        }
    }
}
