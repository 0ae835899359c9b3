//! Webhook elevation provider: applies and revokes a grant with a Standard Webhooks-signed
//! `POST` to a PAM/EPM or endpoint-management API.
//!
//! The receiver can check that a call really comes from this daemon (`webhook-signature` over
//! `id.timestamp.body` with the shared `whsec_` secret), that it is fresh (`webhook-timestamp`),
//! and can deduplicate retries (`webhook-id` is stable per grant and action). The signature is
//! computed over the exact bytes sent. Redirects are not followed — a signed grant must reach the
//! configured URL or fail — and neither the secret nor the URL's query ever appears in an error.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, Url};
use serde::Deserialize;

use super::{ElevationProvider, ProviderAction, ProviderCall, ProviderError};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{Problem, SecretSource};
use crate::signatures::standard_webhooks::{self, WebhookSecret};

/// Time a call may take (connect, send, answer) unless the provider sets `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest `timeout` that may be configured.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// How much of a refusal's body is read, at most.
const ERROR_BODY_READ_BYTES: usize = 4096;

/// How many characters of a refusal's body go into the error message.
const ERROR_BODY_CHARS: usize = 200;

/// Most secrets `secret_env` may hold (several during a rotation: every call is signed with each).
const MAX_SECRETS: usize = 8;

/// The `[providers.<name>]` table of a `kind = "webhook"` provider (the `kind` tag itself is
/// consumed by the config loader).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookProviderConfig {
    /// Where calls go (`http` or `https`).
    pub url: String,
    /// Environment variable holding the `whsec_` secret (several comma-separated during a
    /// rotation; each call then carries one signature per secret).
    pub secret_env: String,
    /// How long a call may take (`"10s"`); default 10 s.
    pub timeout: Option<String>,
}

/// Elevation through a signed HTTP call. See the module docs for the guarantees it gives.
#[derive(Debug, Clone)]
pub struct WebhookProvider {
    name: String,
    url: Url,
    /// The URL without user info, query or fragment: what messages show.
    shown_url: String,
    secrets: Vec<WebhookSecret>,
    timeout: Duration,
    client: Client,
    clock: SharedClock,
}

impl WebhookProvider {
    /// A provider from resolved values. `client` may be shared with other components; the
    /// `timeout` is applied per call. Calls are timestamped with the system clock unless
    /// [`WebhookProvider::with_clock`] says otherwise.
    pub fn new(
        name: impl Into<String>,
        url: Url,
        secret: WebhookSecret,
        timeout: Duration,
        client: Client,
    ) -> Self {
        let shown_url = shown(&url);
        Self {
            name: name.into(),
            url,
            shown_url,
            secrets: vec![secret],
            timeout,
            client,
            clock: Arc::new(SystemClock),
        }
    }

    /// Also signs every call with `secret`, so receivers can move to a new key without downtime
    /// (they accept any one matching signature).
    pub fn also_signing_with(mut self, secret: WebhookSecret) -> Self {
        self.secrets.push(secret);
        self
    }

    /// Uses `clock` for `webhook-timestamp` (tests, or the daemon's shared clock).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Resolves `cfg` for the provider `name`: checks the URL, reads and parses the secret(s)
    /// from `secrets`, parses the timeout, and builds an HTTP client that does not follow
    /// redirects. Every problem names `file` and `providers.<name>.*`; none contains a secret.
    pub fn from_config(
        name: &str,
        cfg: &WebhookProviderConfig,
        secrets: &dyn SecretSource,
        file: &Path,
    ) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let key = |k: &str| format!("providers.{name}.{k}");

        let url = match Url::parse(cfg.url.trim()) {
            Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                problems.push(Problem::new(
                    file,
                    key("url"),
                    format!("scheme {:?} is not http or https", url.scheme()),
                ));
                None
            }
            Ok(url) if !url.username().is_empty() || url.password().is_some() => {
                problems.push(Problem::new(
                    file,
                    key("url"),
                    "must not contain a user name or password: secrets never appear in files (the call is signed with secret_env)",
                ));
                None
            }
            Ok(url) if url.host_str().is_none() => {
                problems.push(Problem::new(file, key("url"), "has no host"));
                None
            }
            Ok(url) => Some(url),
            Err(e) => {
                problems.push(Problem::new(
                    file,
                    key("url"),
                    format!("is not a URL ({e})"),
                ));
                None
            }
        };

        let mut parsed = Vec::new();
        match secrets.get(cfg.secret_env.trim()) {
            None => problems.push(Problem::new(
                file,
                key("secret_env"),
                format!(
                    "environment variable {} is not set or empty (it must hold the whsec_ secret the receiver verifies)",
                    cfg.secret_env
                ),
            )),
            Some(value) => {
                use secrecy::ExposeSecret;
                let values: Vec<&str> =
                    value.expose_secret().split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
                if values.is_empty() || values.len() > MAX_SECRETS {
                    problems.push(Problem::new(
                        file,
                        key("secret_env"),
                        format!("environment variable {} must hold 1 to {MAX_SECRETS} comma-separated secrets", cfg.secret_env),
                    ));
                }
                for (i, v) in values.iter().enumerate().take(MAX_SECRETS) {
                    match WebhookSecret::parse(v) {
                        Ok(secret) => parsed.push(secret),
                        Err(e) => problems.push(Problem::new(
                            file,
                            key("secret_env"),
                            format!("secret #{} in environment variable {}: {e}", i + 1, cfg.secret_env),
                        )),
                    }
                }
            }
        }

        let timeout = match cfg.timeout.as_deref() {
            None => Some(DEFAULT_TIMEOUT),
            Some(text) => match crate::config::parse_duration(text) {
                Ok(d) => match Duration::try_from(d) {
                    Ok(d) if !d.is_zero() && d <= MAX_TIMEOUT => Some(d),
                    _ => {
                        problems.push(Problem::new(
                            file,
                            key("timeout"),
                            format!("{text:?} must be more than 0s and at most 5m"),
                        ));
                        None
                    }
                },
                Err(why) => {
                    problems.push(Problem::new(file, key("timeout"), why));
                    None
                }
            },
        };

        let client = match timeout {
            Some(timeout) => match Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(timeout)
                .timeout(timeout)
                .build()
            {
                Ok(client) => Some(client),
                Err(e) => {
                    problems.push(Problem::new(
                        file,
                        format!("providers.{name}"),
                        format!("cannot set up an HTTP client: {e}"),
                    ));
                    None
                }
            },
            None => None,
        };

        let mut parsed = parsed.into_iter();
        match (url, parsed.next(), timeout, client) {
            (Some(url), Some(first), Some(timeout), Some(client)) if problems.is_empty() => {
                Ok(parsed.fold(
                    Self::new(name, url, first, timeout, client),
                    Self::also_signing_with,
                ))
            }
            _ => Err(problems),
        }
    }

    /// Sends `call`, which must be for `action`.
    async fn send(&self, action: ProviderAction, call: &ProviderCall) -> Result<(), ProviderError> {
        if call.action != action {
            return Err(ProviderError::Refused(format!(
                "{}: a {:?} call was passed to {:?}",
                self.name, call.action, action
            )));
        }
        let body = serde_json::to_vec(&call.body).map_err(|e| {
            ProviderError::Refused(format!("{}: cannot encode the call body: {e}", self.name))
        })?;
        let timestamp = self.clock.now().as_second();
        let signature = self
            .secrets
            .iter()
            .map(|secret| standard_webhooks::sign(secret, &call.webhook_id, timestamp, &body))
            .collect::<Vec<_>>()
            .join(" ");

        let response = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", call.webhook_id.as_str())
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;

        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let snippet = read_snippet(response).await;
        Err(ProviderError::Refused(format!(
            "{}: POST {} answered HTTP {}{}",
            self.name,
            self.shown_url,
            status.as_u16(),
            if snippet.is_empty() {
                String::new()
            } else {
                format!(": {snippet}")
            }
        )))
    }

    /// Describes a transport failure without the URL's query or any header.
    fn unreachable(&self, e: &reqwest::Error) -> ProviderError {
        let what = if e.is_timeout() {
            format!("no answer within {}s", self.timeout.as_secs_f64())
        } else if e.is_connect() {
            format!("cannot connect ({})", root_cause(e))
        } else {
            root_cause(e)
        };
        ProviderError::Unreachable(format!("{}: POST {}: {what}", self.name, self.shown_url))
    }
}

#[async_trait]
impl ElevationProvider for WebhookProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(&self, call: &ProviderCall) -> Result<(), ProviderError> {
        self.send(ProviderAction::Apply, call).await
    }

    async fn revoke(&self, call: &ProviderCall) -> Result<(), ProviderError> {
        self.send(ProviderAction::Revoke, call).await
    }
}

/// `scheme://host[:port]/path`: the URL as messages show it.
fn shown(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    // Both only fail for URLs that cannot have user info, which then have none to remove.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// The innermost error message of a chain (the useful part: "connection refused"), with the URL
/// stripped from reqwest's own message.
fn root_cause(e: &reqwest::Error) -> String {
    let mut current: &dyn std::error::Error = e;
    while let Some(source) = current.source() {
        current = source;
    }
    if std::ptr::addr_eq(current, e) {
        // No source: reqwest's message without the URL.
        let mut text = e.to_string();
        if let Some(url) = e.url() {
            text = text.replace(&format!(" for url ({url})"), "");
        }
        text
    } else {
        current.to_string()
    }
}

/// At most [`ERROR_BODY_CHARS`] characters of a refusal's body on one line, reading at most
/// [`ERROR_BODY_READ_BYTES`]: enough to say why, never enough to flood a log or a ticket.
async fn read_snippet(mut response: reqwest::Response) -> String {
    let mut bytes: Vec<u8> = Vec::new();
    while bytes.len() < ERROR_BODY_READ_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = ERROR_BODY_READ_BYTES - bytes.len();
                bytes.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
            }
            Ok(None) | Err(_) => break,
        }
    }
    let text: String = String::from_utf8_lossy(&bytes)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if text.chars().count() > ERROR_BODY_CHARS {
        let mut cut: String = text.chars().take(ERROR_BODY_CHARS).collect();
        cut.push('…');
        cut
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use jiff::{SignedDuration, Timestamp};

    use super::*;
    use crate::clock::ManualClock;
    use crate::config::MapSecrets;
    use crate::providers::call_for;
    use crate::providers::command::example_grant;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const NOW: i64 = 1_750_000_000;

    /// What the receiver saw.
    #[derive(Debug, Clone, Default)]
    struct Seen {
        headers: Option<HeaderMap>,
        body: Option<Bytes>,
        verified: Option<Result<(), standard_webhooks::VerifyError>>,
    }

    #[derive(Clone)]
    struct Receiver {
        seen: Arc<Mutex<Seen>>,
        status: StatusCode,
        answer: String,
        delay: Duration,
        secret: WebhookSecret,
    }

    async fn receive(
        State(rx): State<Receiver>,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, String) {
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let verified = standard_webhooks::verify(
            std::slice::from_ref(&rx.secret),
            &h("webhook-id"),
            &h("webhook-timestamp"),
            &h("webhook-signature"),
            &body,
            Timestamp::from_second(NOW).unwrap(),
            SignedDuration::from_secs(300),
        );
        *rx.seen.lock().unwrap() = Seen {
            headers: Some(headers),
            body: Some(body),
            verified: Some(verified),
        };
        tokio::time::sleep(rx.delay).await;
        (rx.status, rx.answer.clone())
    }

    /// Starts a receiver on 127.0.0.1:0; returns its URL and what it saw.
    async fn receiver(
        status: StatusCode,
        answer: &str,
        delay: Duration,
    ) -> (Url, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let rx = Receiver {
            seen: seen.clone(),
            status,
            answer: answer.to_owned(),
            delay,
            secret: WebhookSecret::parse(SECRET).unwrap(),
        };
        let app = axum::Router::new()
            .route("/elevations", axum::routing::post(receive))
            .with_state(rx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (
            Url::parse(&format!("http://{addr}/elevations?token=q")).unwrap(),
            seen,
        )
    }

    fn provider(url: Url, timeout: Duration) -> WebhookProvider {
        let clock = ManualClock::new(Timestamp::from_second(NOW).unwrap());
        WebhookProvider::new(
            "endpoint-agent",
            url,
            WebhookSecret::parse(SECRET).unwrap(),
            timeout,
            Client::new(),
        )
        .with_clock(Arc::new(clock))
    }

    #[tokio::test]
    async fn apply_posts_the_call_signed_over_the_exact_bytes() {
        let (url, seen) = receiver(StatusCode::NO_CONTENT, "", Duration::ZERO).await;
        let call = call_for(&example_grant(), ProviderAction::Apply);
        provider(url, DEFAULT_TIMEOUT).apply(&call).await.unwrap();

        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.verified, Some(Ok(())));
        let headers = seen.headers.unwrap();
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["webhook-id"], call.webhook_id.as_str());
        assert_eq!(headers["webhook-timestamp"], NOW.to_string().as_str());
        let body: serde_json::Value = serde_json::from_slice(&seen.body.unwrap()).unwrap();
        assert_eq!(body, call.body);
        assert_eq!(body["type"], "grant.apply");
    }

    #[tokio::test]
    async fn revoke_posts_a_revoke_with_its_own_stable_id() {
        let (url, seen) = receiver(StatusCode::OK, "ok", Duration::ZERO).await;
        let grant = example_grant();
        let call = call_for(&grant, ProviderAction::Revoke);
        provider(url, DEFAULT_TIMEOUT).revoke(&call).await.unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.verified, Some(Ok(())));
        assert_eq!(
            seen.headers.unwrap()["webhook-id"],
            call_for(&grant, ProviderAction::Revoke).webhook_id.as_str()
        );
    }

    #[tokio::test]
    async fn a_non_2xx_answer_is_refused_with_status_and_a_short_body() {
        let long = format!("maintenance window\n{}", "x".repeat(1000));
        let (url, _) = receiver(StatusCode::SERVICE_UNAVAILABLE, &long, Duration::ZERO).await;
        let err = provider(url, DEFAULT_TIMEOUT)
            .apply(&call_for(&example_grant(), ProviderAction::Apply))
            .await
            .unwrap_err();
        let ProviderError::Refused(msg) = err else {
            panic!("expected Refused, got {err:?}")
        };
        assert!(msg.contains("HTTP 503: maintenance window xxx"), "{msg}");
        assert!(msg.len() < 400, "{msg}");
        assert!(
            !msg.contains("token=q"),
            "the query string stays out of messages: {msg}"
        );
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let (url, _) = receiver(StatusCode::TEMPORARY_REDIRECT, "", Duration::ZERO).await;
        let cfg = WebhookProviderConfig {
            url: url.to_string(),
            secret_env: "S".into(),
            timeout: None,
        };
        let p = WebhookProvider::from_config(
            "agent",
            &cfg,
            &MapSecrets::from_pairs([("S", SECRET)]),
            Path::new("j.toml"),
        )
        .unwrap()
        .with_clock(Arc::new(ManualClock::new(
            Timestamp::from_second(NOW).unwrap(),
        )));
        let err = p
            .apply(&call_for(&example_grant(), ProviderAction::Apply))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProviderError::Refused(m) if m.contains("HTTP 307")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn nobody_listening_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let url = Url::parse(&format!("http://{addr}/elevations")).unwrap();
        let err = provider(url, DEFAULT_TIMEOUT)
            .apply(&call_for(&example_grant(), ProviderAction::Apply))
            .await
            .unwrap_err();
        let ProviderError::Unreachable(msg) = err else {
            panic!("expected Unreachable, got {err:?}")
        };
        assert!(msg.contains("cannot connect"), "{msg}");
    }

    #[tokio::test]
    async fn a_slow_receiver_times_out_as_unreachable() {
        let (url, _) = receiver(StatusCode::OK, "", Duration::from_secs(5)).await;
        let started = std::time::Instant::now();
        let err = provider(url, Duration::from_millis(300))
            .apply(&call_for(&example_grant(), ProviderAction::Apply))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        let ProviderError::Unreachable(msg) = err else {
            panic!("expected Unreachable, got {err:?}")
        };
        assert!(msg.contains("no answer within 0.3s"), "{msg}");
    }

    #[tokio::test]
    async fn during_a_rotation_every_call_carries_one_signature_per_secret() {
        let (url, seen) = receiver(StatusCode::OK, "", Duration::ZERO).await;
        let new_secret = format!(
            "whsec_{}",
            crate::signatures::Encoding::Base64.encode(&[5u8; 32])
        );
        let env = format!("{new_secret}, {SECRET}");
        let cfg = WebhookProviderConfig {
            url: url.to_string(),
            secret_env: "S".into(),
            timeout: Some("5s".into()),
        };
        let p = WebhookProvider::from_config(
            "agent",
            &cfg,
            &MapSecrets::from_pairs([("S", env.as_str())]),
            Path::new("j.toml"),
        )
        .unwrap()
        .with_clock(Arc::new(ManualClock::new(
            Timestamp::from_second(NOW).unwrap(),
        )));
        p.apply(&call_for(&example_grant(), ProviderAction::Apply))
            .await
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        // The receiver only knows the old secret and still accepts.
        assert_eq!(seen.verified, Some(Ok(())));
        let sig = seen.headers.unwrap()["webhook-signature"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(sig.split(' ').count(), 2);
    }

    #[tokio::test]
    async fn a_call_for_the_other_action_is_refused_without_sending() {
        let (url, seen) = receiver(StatusCode::OK, "", Duration::ZERO).await;
        let err = provider(url, DEFAULT_TIMEOUT)
            .revoke(&call_for(&example_grant(), ProviderAction::Apply))
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::Refused(_)));
        assert!(seen.lock().unwrap().body.is_none());
    }

    #[test]
    fn configuration_problems_are_reported_together_without_the_secret() {
        let cfg = WebhookProviderConfig {
            url: "ftp://agent.example/elevations".into(),
            secret_env: "S".into(),
            timeout: Some("never".into()),
        };
        let problems = WebhookProvider::from_config(
            "agent",
            &cfg,
            &MapSecrets::from_pairs([("S", "not-a-whsec-secret")]),
            Path::new("j.toml"),
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "providers.agent.url",
                "providers.agent.secret_env",
                "providers.agent.timeout"
            ]
        );
        assert!(
            problems
                .iter()
                .all(|p| !p.to_string().contains("not-a-whsec-secret"))
        );
    }

    #[test]
    fn a_missing_secret_variable_or_credentials_in_the_url_are_problems() {
        let cfg = WebhookProviderConfig {
            url: "https://user:pw@agent.example/elevations".into(),
            secret_env: "ELEVATION_WEBHOOK_SECRET".into(),
            timeout: None,
        };
        let problems = WebhookProvider::from_config(
            "agent",
            &cfg,
            &MapSecrets::default(),
            Path::new("j.toml"),
        )
        .unwrap_err();
        assert_eq!(problems.len(), 2);
        assert_eq!(problems[0].key, "providers.agent.url");
        assert!(!problems[0].to_string().contains("pw@"));
        assert!(problems[1].why.contains("ELEVATION_WEBHOOK_SECRET"));
    }

    #[test]
    fn unknown_keys_are_rejected_by_the_reader() {
        assert!(
            toml::from_str::<WebhookProviderConfig>(
                "url = \"http://a\"\nsecret_env = \"S\"\nsecret = \"x\""
            )
            .is_err()
        );
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let p = provider(Url::parse("http://127.0.0.1:1/e").unwrap(), DEFAULT_TIMEOUT);
        assert!(!format!("{p:?}").contains("MfKQ9r8G"));
    }
}
