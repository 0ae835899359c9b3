//! Webhook delivery the way Jira Cloud does it: a POST of the JSON body with
//! `X-Atlassian-Webhook-Identifier` (stable across retries), `X-Atlassian-Webhook-Flow: Primary`,
//! `X-Hub-Signature: sha256=<hex>` only when the target has a secret, and
//! `X-Atlassian-Webhook-Retry: <n>` on retries; retried on 408/409/425/429/5xx and connection
//! failures, a bounded number of times.
//!
//! Every delivery is recorded as a [`Delivery`] holding the exact bytes and headers sent, so tests
//! can replay it verbatim (a duplicate), alter it (a forgery), or send it much later (a replay).

use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::error::SimError;
use crate::sign::jira_hub_signature;

/// Largest response body kept per attempt.
const MAX_KEPT_RESPONSE: usize = 4096;

/// Where webhooks go.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// Receiver URL (e.g. `http://127.0.0.1:8080/webhooks/jira`).
    pub url: String,
    /// HMAC secret; `None` sends unsigned deliveries, like a Jira webhook without a secret.
    pub secret: Option<String>,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How deliveries are retried. Jira's real delays are minutes; tests want milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (so at most `max_retries + 1` attempts).
    pub max_retries: u32,
    /// Delay before the first retry; doubled for each further retry.
    pub initial_delay: Duration,
    /// Upper bound on one delay.
    pub max_delay: Duration,
    /// Timeout of one attempt (connect + response).
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 4,
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

/// Whether Jira would retry after this answer.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 425 | 429) || (500..=599).contains(&status)
}

/// One HTTP attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryResponse {
    /// 0 for the first attempt, n for the n-th retry.
    pub retry: u32,
    /// The status answered, if any.
    pub status: Option<u16>,
    /// Transport error (connection refused, timeout), if no status.
    pub error: Option<String>,
    /// Start of the response body (bounded).
    pub body: String,
    /// When the attempt was made.
    pub at: Timestamp,
}

impl DeliveryResponse {
    /// True for a 2xx answer.
    pub fn is_success(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// One webhook emission to one target, with everything needed to send it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// `X-Atlassian-Webhook-Identifier`.
    pub id: String,
    /// Target URL.
    pub url: String,
    /// The `webhookEvent` (e.g. `jira:issue_updated`).
    pub event: String,
    /// Headers of the first attempt (retries add `X-Atlassian-Webhook-Retry`).
    pub headers: Vec<(String, String)>,
    /// The exact body bytes sent (and signed).
    pub body: Vec<u8>,
    /// Every attempt, in order.
    pub responses: Vec<DeliveryResponse>,
}

impl Delivery {
    /// The body parsed as JSON (`Null` if it somehow is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The value of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True when the last attempt got a 2xx.
    pub fn delivered(&self) -> bool {
        self.responses
            .last()
            .is_some_and(DeliveryResponse::is_success)
    }
}

/// Headers Jira puts on a first attempt.
pub(crate) fn first_headers(id: &str, secret: Option<&str>, body: &[u8]) -> Vec<(String, String)> {
    let mut headers = vec![
        (
            "Content-Type".to_owned(),
            "application/json; charset=UTF-8".to_owned(),
        ),
        (
            "User-Agent".to_owned(),
            "Atlassian Webhook HTTP Client".to_owned(),
        ),
        ("X-Atlassian-Webhook-Identifier".to_owned(), id.to_owned()),
        ("X-Atlassian-Webhook-Flow".to_owned(), "Primary".to_owned()),
    ];
    if let Some(secret) = secret {
        headers.push((
            "X-Hub-Signature".to_owned(),
            jira_hub_signature(secret, body),
        ));
    }
    headers
}

/// Builds the HTTP client used for deliveries.
pub(crate) fn client(policy: &RetryPolicy) -> Result<reqwest::Client, SimError> {
    reqwest::Client::builder()
        .timeout(policy.attempt_timeout)
        .connect_timeout(policy.attempt_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| SimError::Http(e.to_string()))
}

/// Sends one request with exactly these headers and body; never retries.
pub async fn send_once(
    client: &reqwest::Client,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    retry: u32,
) -> DeliveryResponse {
    let at = Timestamp::now();
    let mut request = client.post(url).body(body.to_vec());
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            let body = text.chars().take(MAX_KEPT_RESPONSE).collect();
            DeliveryResponse {
                retry,
                status: Some(status),
                error: None,
                body,
                at,
            }
        }
        Err(e) => DeliveryResponse {
            retry,
            status: None,
            error: Some(if e.is_timeout() {
                "timeout".to_owned()
            } else if e.is_connect() {
                "connection failed".to_owned()
            } else {
                "request failed".to_owned()
            }),
            body: String::new(),
            at,
        },
    }
}

/// Delivers `body` to `target` with Jira's headers and retry policy.
pub(crate) async fn deliver(
    client: &reqwest::Client,
    policy: &RetryPolicy,
    target: &WebhookTarget,
    id: String,
    event: String,
    body: Vec<u8>,
) -> Delivery {
    let headers = first_headers(&id, target.secret.as_deref(), &body);
    let mut responses = Vec::new();
    for retry in 0..=policy.max_retries {
        if retry > 0 {
            tokio::time::sleep(policy.delay(retry)).await;
        }
        let mut attempt_headers = headers.clone();
        if retry > 0 {
            attempt_headers.push(("X-Atlassian-Webhook-Retry".to_owned(), retry.to_string()));
        }
        let response = send_once(client, &target.url, &attempt_headers, &body, retry).await;
        let retry_again = response.status.is_none_or(is_retryable_status);
        responses.push(response);
        if !retry_again {
            break;
        }
    }
    Delivery {
        id,
        url: target.url.clone(),
        event,
        headers,
        body,
        responses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_statuses_follow_jira_policy() {
        for s in [408, 409, 425, 429, 500, 502, 503, 599] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [200, 202, 400, 401, 403, 404, 413] {
            assert!(!is_retryable_status(s), "{s}");
        }
    }

    #[test]
    fn delays_double_and_are_capped() {
        let p = RetryPolicy {
            max_retries: 10,
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(35),
            attempt_timeout: Duration::from_secs(1),
        };
        assert_eq!(p.delay(1), Duration::from_millis(10));
        assert_eq!(p.delay(2), Duration::from_millis(20));
        assert_eq!(p.delay(3), Duration::from_millis(35));
        assert_eq!(p.delay(60), Duration::from_millis(35));
    }

    #[test]
    fn unsigned_target_gets_no_signature_header() {
        let h = first_headers("id-1", None, b"{}");
        assert!(!h.iter().any(|(k, _)| k == "X-Hub-Signature"));
        let h = first_headers("id-1", Some("s"), b"{}");
        assert!(
            h.iter()
                .any(|(k, v)| k == "X-Hub-Signature" && v.starts_with("sha256="))
        );
    }

    #[test]
    fn target_debug_hides_the_secret() {
        let t = WebhookTarget {
            url: "http://x".into(),
            secret: Some("hunter2".into()),
        };
        assert!(!format!("{t:?}").contains("hunter2"));
    }
}
