//! Outbound deliveries the way a ServiceNow integration sends them: a Business Rule builds the
//! JSON body and posts it with `sn_ws.RESTMessageV2`, signed
//! `X-Signature: base64(HMAC-SHA256(secret, raw body))` (header name configurable), and an
//! outbound REST message with a retry policy retries on 5xx, 429 and timeouts — a bounded number
//! of times.
//!
//! The retry loop is shared with the Freshservice simulator, whose Workflow Automator posts the
//! same way (with a shared-secret header instead of a signature).

use std::time::Duration;

use crate::jira::webhook::{Delivery, RetryPolicy, send_once};
use crate::sign::hmac_base64;

/// Whether an outbound REST message with a retry policy tries again after this answer
/// (`None` = no HTTP answer: timeout or connection failure).
pub fn is_retryable(status: Option<u16>) -> bool {
    status.is_none_or(|s| s == 429 || (500..=599).contains(&s))
}

fn delay(policy: &RetryPolicy, retry: u32) -> Duration {
    let factor = 1u32
        .checked_shl(retry.saturating_sub(1))
        .unwrap_or(u32::MAX);
    policy
        .initial_delay
        .checked_mul(factor)
        .unwrap_or(policy.max_delay)
        .min(policy.max_delay)
}

/// The headers of a Business Rule delivery; the signature only when there is a secret.
pub fn servicenow_headers(
    signature_header: &str,
    secret: Option<&str>,
    body: &[u8],
) -> Vec<(String, String)> {
    let mut headers = vec![
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("Accept".to_owned(), "application/json".to_owned()),
        ("User-Agent".to_owned(), "ServiceNow/1.0".to_owned()),
    ];
    if let Some(secret) = secret {
        headers.push((signature_header.to_owned(), hmac_base64(secret, body)));
    }
    headers
}

/// Posts `body` with `headers` to `url`, retrying per `policy` while [`is_retryable`] says so.
pub(crate) async fn post_with_retries(
    client: &reqwest::Client,
    policy: &RetryPolicy,
    url: &str,
    id: String,
    event: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> Delivery {
    let mut responses = Vec::new();
    for retry in 0..=policy.max_retries {
        if retry > 0 {
            tokio::time::sleep(delay(policy, retry)).await;
        }
        let response = send_once(client, url, &headers, &body, retry).await;
        let again = is_retryable(response.status);
        responses.push(response);
        if !again {
            break;
        }
    }
    Delivery {
        id,
        url: url.to_owned(),
        event,
        headers,
        body,
        responses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::hmac_sha256;
    use base64::Engine as _;

    #[test]
    fn retries_on_5xx_429_and_no_answer_only() {
        for s in [500, 502, 503, 504, 429] {
            assert!(is_retryable(Some(s)), "{s}");
        }
        assert!(is_retryable(None));
        for s in [200, 202, 204, 400, 401, 403, 404, 409] {
            assert!(!is_retryable(Some(s)), "{s}");
        }
    }

    #[test]
    fn signature_is_base64_hmac_of_the_exact_body() {
        let body = br#"{"sys_id":"abc"}"#;
        let h = servicenow_headers("X-Signature", Some("snow-secret"), body);
        let sig = h.iter().find(|(k, _)| k == "X-Signature").unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&sig.1)
            .unwrap();
        assert_eq!(raw, hmac_sha256(b"snow-secret", body));
        assert!(
            !servicenow_headers("X-Signature", None, body)
                .iter()
                .any(|(k, _)| k == "X-Signature")
        );
    }

    #[test]
    fn delays_grow_and_stay_capped() {
        let p = RetryPolicy {
            max_retries: 9,
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(25),
            attempt_timeout: Duration::from_secs(1),
        };
        assert_eq!(delay(&p, 1), Duration::from_millis(10));
        assert_eq!(delay(&p, 2), Duration::from_millis(20));
        assert_eq!(delay(&p, 40), Duration::from_millis(25));
    }
}
