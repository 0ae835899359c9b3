//! The HTTP side of a generic connector: confirmation requests, writebacks and the healthcheck,
//! all rendered from the connector file's templates.
//!
//! Every request goes through [`Client::send`]: the rendered URL is pinned to `base_url`'s
//! origin before credentials are attached, the call gets the configured timeout, and bodies are
//! read with a size bound. Failures are classified like the Jira client's (429 and the file's
//! other rate-limit statuses → rate limited with `Retry-After`; 408/409/425/5xx and transport
//! errors → unavailable; other 4xx → rejected with the message the file's `[errors] message`
//! paths find). Error details name the method and path only, never the host, a header or the
//! credentials, and are cleaned and cut because they reach logs, the audit trail and tickets.

pub(crate) use crate::connectors::http::clean;
use crate::connectors::http::{ReadError, read_limited};
use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use minijinja::Value as Ctx;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode, Url};
use serde_json::Value;

use super::extract::{scalar_text, timestamp};
use super::options::{ErrorSpec, HttpSpec, Options};
use super::template::{Kind, base_url_value, pin};
use crate::connectors::{Confirmation, ConnectorError, OutboundAuth, Writeback, WritebackAction};
use crate::ticket::{Approval, Person, TicketRef};

/// Longest error detail kept, in characters.
/// Largest error body read to extract a message from.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Largest successful JSON response accepted.
pub(crate) const MAX_JSON_BODY: usize = 2 * 1024 * 1024;
/// Most requests one `for_each` fans out to; more is refused rather than decided on a part.
pub(crate) const MAX_FOR_EACH: usize = 20;
/// Most values one extraction keeps.
const MAX_VALUES: usize = 100;
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// An authenticated client for one configured system.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub(crate) base: Url,
    auth: OutboundAuth,
    timeout: Duration,
    http: reqwest::Client,
}

impl Client {
    /// A client for `base` (already stripped of credentials, query and fragment).
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

    /// Runs the `[[confirm.request]]` chain for `ticket` and builds the confirmation from the
    /// variables it extracted.
    pub(crate) async fn confirm(
        &self,
        options: &Options,
        ticket: &TicketRef,
    ) -> Result<Confirmation, ConnectorError> {
        let Some(spec) = &options.confirm else {
            return Err(ConnectorError::Invalid(
                "this connector has no [confirm] requests; set confirm_approvals = false to trust deliveries, or add [[confirm.request]]".to_owned(),
            ));
        };
        let mut vars: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for req in &spec.requests {
            let items: Vec<Option<String>> = match &req.for_each {
                None => vec![None],
                Some(var) => {
                    let mut values: Vec<String> = Vec::new();
                    for v in vars.get(var).map(Vec::as_slice).unwrap_or_default() {
                        if !v.is_empty() && !values.contains(v) {
                            values.push(v.clone());
                        }
                    }
                    if values.len() > MAX_FOR_EACH {
                        return Err(ConnectorError::Invalid(format!(
                            "{}: `{var}` has {} values; at most {MAX_FOR_EACH} are looked up",
                            req.url,
                            values.len()
                        )));
                    }
                    values.into_iter().map(Some).collect()
                }
            };
            for (var, _) in &req.extract {
                vars.entry(var.clone()).or_default();
            }
            for item in items {
                let ctx = self.context(ticket, &vars, item.as_deref());
                let url = self.render_url(options, &req.url, &ctx)?;
                let doc = self.get_json(&options.errors, url).await?;
                for (var, path) in &req.extract {
                    let found: Vec<String> = path
                        .query(&doc)
                        .iter()
                        .filter_map(|v| scalar_text(v))
                        .take(MAX_VALUES)
                        .collect();
                    let slot = vars.entry(var.clone()).or_default();
                    if item.is_some() {
                        // One value per item keeps lists from the same fan-out aligned.
                        slot.push(found.into_iter().next().unwrap_or_default());
                    } else {
                        slot.extend(found);
                    }
                }
            }
        }
        Ok(build_confirmation(options, &vars))
    }

    /// Performs one writeback with the `[writeback.comment]` or `[writeback.status]` template.
    pub(crate) async fn write_back(
        &self,
        options: &Options,
        wb: &Writeback,
    ) -> Result<(), ConnectorError> {
        let (spec, name, value) = match &wb.action {
            WritebackAction::Comment { text } => (&options.comment, "text", text),
            WritebackAction::Status { name } => (&options.status, "status", name),
        };
        let Some(spec) = spec else {
            return Err(ConnectorError::Invalid(format!(
                "this connector has no [writeback.{}] request",
                if name == "text" { "comment" } else { "status" }
            )));
        };
        let mut ctx = BTreeMap::new();
        ctx.insert("base_url".to_owned(), base_url_value(&self.base));
        ctx.insert("ticket".to_owned(), Ctx::from_serialize(&wb.ticket));
        ctx.insert(name.to_owned(), Ctx::from(value.as_str()));
        ctx.insert("marker".to_owned(), Ctx::from(wb.marker.as_str()));
        let ctx = Ctx::from_object(ctx);
        self.request(options, spec, &ctx).await
    }

    /// `GET [writeback.exists] url`: whether the answer holds `wb.marker` anywhere (the comment
    /// template must put `{{ marker }}` in the comment). `false` when no such request is set.
    pub(crate) async fn has_comment(
        &self,
        options: &Options,
        wb: &Writeback,
    ) -> Result<bool, ConnectorError> {
        let Some(name) = &options.exists else {
            return Ok(false);
        };
        let ctx = minijinja::context! {
            base_url => base_url_value(&self.base),
            ticket => Ctx::from_serialize(&wb.ticket),
            marker => wb.marker.as_str(),
        };
        let url = self.render_url(options, name, &ctx)?;
        let answer = self.get_json(&options.errors, url).await?;
        Ok(holds_text(&answer, &wb.marker))
    }

    /// `GET [healthcheck] url`, when configured.
    pub(crate) async fn healthcheck(&self, options: &Options) -> Result<(), ConnectorError> {
        let Some(name) = &options.healthcheck else {
            return Ok(());
        };
        let ctx = minijinja::context! { base_url => base_url_value(&self.base) };
        let url = self.render_url(options, name, &ctx)?;
        let (op, resp) = self.send(Method::GET, url, HeaderMap::new(), None).await?;
        check(&options.errors, &op, resp).await.map(drop)
    }

    async fn request(
        &self,
        options: &Options,
        spec: &HttpSpec,
        ctx: &Ctx,
    ) -> Result<(), ConnectorError> {
        let url = self.render_url(options, &spec.url, ctx)?;
        let mut headers = HeaderMap::new();
        for (name, template) in &spec.headers {
            let text = options
                .templates
                .render(Kind::Text, template, ctx)
                .map_err(|why| ConnectorError::Invalid(clean(&format!("{template}: {why}"))))?;
            let value = HeaderValue::from_str(text.trim()).map_err(|_| {
                ConnectorError::Invalid(format!(
                    "{template}: the rendered value is not a valid header value"
                ))
            })?;
            headers.insert(name.clone(), value);
        }
        let body = match &spec.body {
            None => None,
            Some(template) => {
                let text = options
                    .templates
                    .render(Kind::Text, template, ctx)
                    .map_err(|why| ConnectorError::Invalid(clean(&format!("{template}: {why}"))))?;
                let json: Value = serde_json::from_str(&text).map_err(|e| {
                    ConnectorError::Invalid(format!(
                        "{template}: the rendered body is not JSON (line {}, column {}); use `| tojson` for text",
                        e.line(),
                        e.column()
                    ))
                })?;
                Some(json)
            }
        };
        let (op, resp) = self
            .send(spec.method.clone(), url, headers, body.as_ref())
            .await?;
        check(&options.errors, &op, resp).await.map(drop)
    }

    /// The template context of a confirmation request: `base_url`, `ticket`, the first value
    /// of every variable extracted so far, and `item` inside a `for_each`.
    fn context(
        &self,
        ticket: &TicketRef,
        vars: &BTreeMap<String, Vec<String>>,
        item: Option<&str>,
    ) -> Ctx {
        let mut ctx: BTreeMap<String, Ctx> = BTreeMap::new();
        ctx.insert("base_url".to_owned(), base_url_value(&self.base));
        ctx.insert("ticket".to_owned(), Ctx::from_serialize(ticket));
        for (name, values) in vars {
            if let Some(first) = values.iter().find(|v| !v.is_empty()) {
                ctx.insert(name.clone(), Ctx::from(first.as_str()));
            }
        }
        if let Some(item) = item {
            ctx.insert("item".to_owned(), Ctx::from(item));
        }
        Ctx::from_object(ctx)
    }

    /// Renders URL template `name` and pins it to the base URL's origin.
    fn render_url(&self, options: &Options, name: &str, ctx: &Ctx) -> Result<Url, ConnectorError> {
        let rendered = options
            .templates
            .render(Kind::Url, name, ctx)
            .map_err(|why| ConnectorError::Invalid(clean(&format!("{name}: {why}"))))?;
        pin(&rendered, &self.base)
            .map_err(|why| ConnectorError::Invalid(clean(&format!("{name}: {why}"))))
    }

    async fn get_json(&self, errors: &ErrorSpec, url: Url) -> Result<Value, ConnectorError> {
        let (op, resp) = self.send(Method::GET, url, HeaderMap::new(), None).await?;
        let mut resp = check(errors, &op, resp).await?;
        let bytes = read_limited(&mut resp, MAX_JSON_BODY, true)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => ConnectorError::Invalid(format!(
                    "{op}: response larger than {MAX_JSON_BODY} bytes"
                )),
                ReadError::Transport(e) => transport(&op, &e),
            })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ConnectorError::Invalid(format!(
                "{op}: response is not JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })
    }

    /// Sends one request with credentials and the timeout; the URL must already be pinned.
    /// Returns the operation label for error details (method and path only) and the response.
    async fn send(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: Option<&Value>,
    ) -> Result<(String, Response), ConnectorError> {
        // Defence in depth: nothing unpinned gets our credentials.
        let url = pin(url.as_str(), &self.base).map_err(ConnectorError::Invalid)?;
        let op = clean(&format!("{method} {}", url.path()));
        let mut rb = self
            .http
            .request(method, url)
            .timeout(self.timeout)
            .headers(headers)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            rb = rb.json(body);
        }
        let resp = self
            .auth
            .apply(rb)
            .send()
            .await
            .map_err(|e| transport(&op, &e))?;
        tracing::debug!(op = %op, status = resp.status().as_u16(), "generic connector api call");
        Ok((op, resp))
    }
}

/// The confirmation the extracted variables describe.
pub(crate) fn build_confirmation(
    options: &Options,
    vars: &BTreeMap<String, Vec<String>>,
) -> Confirmation {
    let first = |name: &str| {
        vars.get(name)
            .and_then(|vs| vs.iter().find(|v| !v.is_empty()))
            .cloned()
    };
    let approval = options
        .confirm
        .as_ref()
        .filter(|c| c.defined.contains("approval"))
        .map(|_| {
            let state = first("approval")
                .map_or("unknown", |w| options.parse.approval_values.normalize(&w));
            let column = |name: &str| vars.get(name).cloned().unwrap_or_default();
            let (ids, emails, names) = (
                column("approver_ids"),
                column("approver_emails"),
                column("approver_names"),
            );
            let rows = ids.len().max(emails.len()).max(names.len());
            let cell = |col: &Vec<String>, i: usize| col.get(i).filter(|v| !v.is_empty()).cloned();
            let mut approvers: Vec<Person> = Vec::new();
            for i in 0..rows {
                let p = Person {
                    id: cell(&ids, i),
                    email: cell(&emails, i),
                    name: cell(&names, i),
                };
                if (p.id.is_some() || p.email.is_some()) && !approvers.contains(&p) {
                    approvers.push(p);
                }
            }
            Approval {
                state: state.to_owned(),
                approvers,
                decided_at: vars
                    .get("decided_at")
                    .and_then(|vs| vs.iter().rev().find_map(|v| timestamp(v))),
            }
        });
    let requester = Person {
        id: first("requester_id"),
        email: first("requester_email"),
        name: first("requester_name"),
    };
    Confirmation {
        status: first("status"),
        approval,
        // A name alone identifies nobody: leave the delivery's requester in charge then.
        requester: (!requester.is_anonymous()).then_some(requester),
        fields: None,
    }
}

/// Passes a successful response through; turns any other into a classified [`ConnectorError`].
async fn check(
    errors: &ErrorSpec,
    op: &str,
    mut resp: Response,
) -> Result<Response, ConnectorError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = retry_hint(errors, resp.headers(), Timestamp::now());
    let body = read_limited(&mut resp, MAX_ERROR_BODY, false)
        .await
        .unwrap_or_default();
    let detail = format!(
        "{op}: {}",
        error_message(errors, &body).unwrap_or_else(|| reason(status))
    );
    Err(classify(
        errors,
        status.as_u16(),
        retry_after,
        clean(&detail),
    ))
}

/// Maps a non-success status onto the retry classes: the file's rate-limit statuses (429 by
/// default) are rate limiting, 408/409/425/5xx are transient, everything else is permanent.
pub(crate) fn classify(
    errors: &ErrorSpec,
    status: u16,
    retry_after: Option<Duration>,
    detail: String,
) -> ConnectorError {
    if errors.rate_limit_status.contains(&status) {
        return ConnectorError::RateLimited {
            status,
            retry_after,
            detail,
        };
    }
    match status {
        408 | 409 | 425 | 500..=599 => ConnectorError::Unavailable {
            status: Some(status),
            retry_after,
            detail,
        },
        _ => ConnectorError::Rejected { status, detail },
    }
}

/// The delay asked for in the file's retry-after header: seconds, or an HTTP date relative to
/// `now`. Clamped to a day.
pub(crate) fn retry_hint(
    errors: &ErrorSpec,
    headers: &HeaderMap,
    now: Timestamp,
) -> Option<Duration> {
    let raw = headers
        .get(errors.retry_after_header.as_str())
        .and_then(|v| v.to_str().ok())
        .map(str::trim)?;
    if let Ok(secs) = raw.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = jiff::fmt::rfc2822::parse(raw).ok()?.timestamp();
    let wait = now.duration_until(at);
    if wait.is_positive() {
        Duration::try_from(wait)
            .ok()
            .map(|d| d.min(MAX_RETRY_AFTER))
    } else {
        None
    }
}

/// The message the file's `[errors] message` paths find in an error body, joined with `: `.
pub(crate) fn error_message(errors: &ErrorSpec, body: &[u8]) -> Option<String> {
    if errors.message.is_empty() {
        return None;
    }
    let doc: Value = serde_json::from_slice(body).ok()?;
    let parts: Vec<String> = errors
        .message
        .iter()
        .flat_map(|p| p.query(&doc).all())
        .filter_map(scalar_text)
        .take(8)
        .collect();
    (!parts.is_empty()).then(|| parts.join(": "))
}

/// `HTTP 404 Not Found`, for bodies that say nothing the file knows how to read.
fn reason(status: StatusCode) -> String {
    format!(
        "HTTP {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_owned()
}

/// A request that never produced a response: connection refused, TLS failure, timeout...
fn transport(op: &str, err: &reqwest::Error) -> ConnectorError {
    if err.is_builder() {
        return ConnectorError::Invalid(clean(&format!("{op}: cannot build request")));
    }
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    ConnectorError::Unavailable {
        status: None,
        retry_after: None,
        detail: clean(&format!("{op}: {what}")),
    }
}

/// Whether some string inside `v` contains `needle`.
fn holds_text(v: &Value, needle: &str) -> bool {
    match v {
        Value::String(s) => s.contains(needle),
        Value::Array(items) => items.iter().any(|i| holds_text(i, needle)),
        Value::Object(map) => map.values().any(|i| holds_text(i, needle)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec_with(paths: &[&str]) -> ErrorSpec {
        ErrorSpec {
            message: paths
                .iter()
                .map(|p| serde_json_path::JsonPath::parse(p).expect("path"))
                .collect(),
            ..ErrorSpec::default()
        }
    }

    #[test]
    fn zendesk_error_envelopes_yield_their_messages() {
        let spec = spec_with(&["$.error", "$.description", "$.details.*[*].description"]);
        assert_eq!(
            error_message(
                &spec,
                br#"{"error":"RecordNotFound","description":"Not found"}"#
            )
            .as_deref(),
            Some("RecordNotFound: Not found")
        );
        assert_eq!(
            error_message(&spec, br#"{"error":"RecordInvalid","description":"Record validation errors","details":{"status":[{"description":"Status: closed prevents ticket update"}]}}"#).as_deref(),
            Some("RecordInvalid: Record validation errors: Status: closed prevents ticket update")
        );
        assert_eq!(error_message(&spec, b"<html>502</html>"), None);
        assert_eq!(
            error_message(&ErrorSpec::default(), br#"{"error":"x"}"#),
            None
        );
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_as_an_http_date() {
        let spec = ErrorSpec::default();
        let now: Timestamp = "2025-03-14T10:00:00Z".parse().expect("ts");
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_hint(&spec, &h, now), Some(Duration::from_secs(7)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Fri, 14 Mar 2025 10:01:00 GMT"),
        );
        assert_eq!(retry_hint(&spec, &h, now), Some(Duration::from_secs(60)));
        h.insert("retry-after", HeaderValue::from_static("999999999"));
        assert_eq!(retry_hint(&spec, &h, now), Some(MAX_RETRY_AFTER));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_hint(&spec, &h, now), None);
        let custom = ErrorSpec {
            retry_after_header: "x-rate-limit-wait".into(),
            ..ErrorSpec::default()
        };
        let mut h = HeaderMap::new();
        h.insert("x-rate-limit-wait", HeaderValue::from_static("3"));
        assert_eq!(retry_hint(&custom, &h, now), Some(Duration::from_secs(3)));
    }

    #[test]
    fn extra_rate_limit_statuses_are_rate_limits() {
        let spec = ErrorSpec {
            rate_limit_status: vec![429, 403],
            ..ErrorSpec::default()
        };
        assert!(matches!(
            classify(&spec, 403, None, "d".into()),
            ConnectorError::RateLimited { .. }
        ));
        assert!(matches!(
            classify(&ErrorSpec::default(), 403, None, "d".into()),
            ConnectorError::Rejected { .. }
        ));
    }

    proptest! {
        #[test]
        fn every_error_status_is_classified_as_documented(status in 300u16..600) {
            let e = classify(&ErrorSpec::default(), status, None, "d".into());
            match status {
                429 => prop_assert!(matches!(e, ConnectorError::RateLimited { .. }), "{:?}", e),
                408 | 409 | 425 | 500..=599 => prop_assert!(matches!(e, ConnectorError::Unavailable { .. }), "{:?}", e),
                _ => prop_assert!(matches!(e, ConnectorError::Rejected { .. }), "{:?}", e),
            }
            prop_assert_eq!(e.is_retryable(), matches!(status, 408 | 409 | 425 | 429 | 500..=599));
        }

        #[test]
        fn error_messages_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let spec = spec_with(&["$.error", "$..description"]);
            let _ = error_message(&spec, &body);
        }
    }
}
