//! The endpoint-agent side of jitbridge's `webhook` elevation provider: an HTTP receiver for
//! `POST /elevations` that verifies Standard Webhooks signatures with its own implementation,
//! keeps the privileges it currently "holds", and records every call.
//!
//! Tests use it to ask the questions that matter for a JIT system — "does alice hold local-admin
//! on WS-042 right now?", "when did the revoke arrive?", "was a retried apply re-applied?" — and to
//! inject the failures (503s, outages, latency) that the outbox must survive.
//!
//! Rules it enforces, as a careful real agent would:
//! - missing or bad `webhook-id` / `webhook-timestamp` / `webhook-signature`, or a timestamp more
//!   than the tolerance (5 minutes) away from now → `401`, nothing applied;
//! - a body that is not `{"type":"grant.apply"|"grant.revoke","grant":{...}}` → `400`;
//! - a `webhook-id` that was already processed successfully → `200`, counted as a duplicate, not
//!   re-applied;
//! - revoking something not held succeeds (idempotent).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::error::SimError;
use crate::server::ServerTask;
use crate::sign::WhsecKey;

/// Largest request body the receiver accepts; elevation calls are a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most calls kept in the log; older ones are dropped first so a long demo cannot grow unbounded.
pub const MAX_RECORDED_CALLS: usize = 10_000;
/// Standard Webhooks' recommended timestamp tolerance.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// How to run a receiver.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Where to listen; `127.0.0.1:0` picks a free port.
    pub listen: SocketAddr,
    /// The shared secret, `whsec_<base64>`, exactly as jitbridge's provider config holds it.
    pub secret: String,
    /// Maximum distance between `webhook-timestamp` and the receiver's clock.
    pub tolerance: Duration,
}

impl ReceiverConfig {
    /// A receiver on a free loopback port with the default 5-minute tolerance.
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            secret: secret.into(),
            tolerance: DEFAULT_TOLERANCE,
        }
    }
}

/// What a call asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CallKind {
    /// `grant.apply`.
    Apply,
    /// `grant.revoke`.
    Revoke,
}

/// What the receiver did with a call, so tests can tell a refused forgery from an injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CallOutcome {
    /// Verified and applied (or revoked); answered 200.
    Applied,
    /// Verified, but the `webhook-id` was already processed; answered 200 without re-applying.
    Duplicate,
    /// Signature headers missing, malformed, wrong, or the timestamp out of tolerance; 401.
    Unauthorized,
    /// Verified, but the body is not a valid elevation call; 400.
    BadRequest,
    /// Refused by fault injection (fail-next or down); 503.
    InjectedFailure,
}

/// One recorded call.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedCall {
    /// The `webhook-id` header, if present.
    pub webhook_id: Option<String>,
    /// The `webhook-timestamp` header as sent, if present.
    pub webhook_timestamp: Option<String>,
    /// `grant.apply` / `grant.revoke`, when the body could be read.
    pub kind: Option<CallKind>,
    /// The `grant` object of the body, when the body could be read.
    pub grant: Option<Value>,
    /// When the receiver got the call (its own wall clock).
    pub received_at: Timestamp,
    /// Whether the signature verified (false when fault injection refused the call unread).
    pub signature_valid: bool,
    /// The HTTP status answered.
    pub status: u16,
    /// What happened.
    pub outcome: CallOutcome,
    /// The raw body, for tests that compare bytes.
    pub body: Vec<u8>,
}

/// A privilege the receiver currently holds on behalf of a grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holding {
    /// Who holds the privilege (the grant's subject).
    pub subject: String,
    /// Where (the grant's target machine).
    pub target: String,
    /// What (e.g. `local-admin`).
    pub scope: String,
    /// The grant that caused it.
    pub grant_id: String,
    /// `expires_at` as the apply call stated it, if any.
    pub expires_at: Option<String>,
    /// When the apply arrived.
    pub applied_at: Timestamp,
}

#[derive(Debug, Default)]
struct Faults {
    fail_next: u32,
    down: bool,
    latency: Option<Duration>,
}

#[derive(Debug, Default)]
struct ReceiverState {
    calls: Vec<ReceivedCall>,
    processed_ids: HashMap<String, u32>,
    holdings: Vec<Holding>,
    faults: Faults,
}

struct Shared {
    key: WhsecKey,
    tolerance: Duration,
    state: Mutex<ReceiverState>,
}

/// A running elevation receiver. Dropping it stops the server.
pub struct ElevationReceiver {
    shared: Arc<Shared>,
    server: ServerTask,
}

impl std::fmt::Debug for ElevationReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElevationReceiver")
            .field("addr", &self.server.addr())
            .finish_non_exhaustive()
    }
}

impl ElevationReceiver {
    /// Starts a receiver on a free loopback port that verifies with `whsec` (`whsec_<base64>`).
    pub async fn start(whsec: &str) -> Result<Self, SimError> {
        Self::start_with(ReceiverConfig::new(whsec)).await
    }

    /// Starts a receiver with explicit settings.
    pub async fn start_with(config: ReceiverConfig) -> Result<Self, SimError> {
        let key = WhsecKey::parse(&config.secret)?;
        let shared = Arc::new(Shared {
            key,
            tolerance: config.tolerance,
            state: Mutex::new(ReceiverState::default()),
        });
        let router = Router::new()
            .route("/elevations", post(handle_elevation))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(shared.clone());
        let server = ServerTask::spawn(config.listen, |_| router).await?;
        Ok(Self { shared, server })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The URL to configure as the provider's `url`: `http://127.0.0.1:<port>/elevations`.
    pub fn url(&self) -> String {
        format!("http://{}/elevations", self.server.addr())
    }

    /// Every call received so far, oldest first.
    pub async fn calls(&self) -> Vec<ReceivedCall> {
        self.shared.state.lock().await.calls.clone()
    }

    /// The privileges held right now.
    pub async fn holdings(&self) -> Vec<Holding> {
        self.shared.state.lock().await.holdings.clone()
    }

    /// True when `subject` holds `scope` on `target` right now.
    pub async fn holds(&self, subject: &str, target: &str, scope: &str) -> bool {
        self.shared
            .state
            .lock()
            .await
            .holdings
            .iter()
            .any(|h| h.subject == subject && h.target == target && h.scope == scope)
    }

    /// How many times `webhook_id` arrived again after it had been processed successfully.
    pub async fn duplicate_count(&self, webhook_id: &str) -> u32 {
        self.shared
            .state
            .lock()
            .await
            .processed_ids
            .get(webhook_id)
            .map_or(0, |seen| seen.saturating_sub(1))
    }

    /// Total duplicate deliveries across all webhook ids.
    /// Calls ignored as repeats of an already-processed `webhook-id`, over the receiver's whole
    /// life (unlike [`ElevationReceiver::calls`], which keeps the latest calls only).
    pub async fn total_redeliveries(&self) -> u64 {
        self.shared
            .state
            .lock()
            .await
            .processed_ids
            .values()
            .map(|seen| u64::from(seen.saturating_sub(1)))
            .sum()
    }

    pub async fn total_duplicates(&self) -> u32 {
        self.shared
            .state
            .lock()
            .await
            .calls
            .iter()
            .filter(|c| c.outcome == CallOutcome::Duplicate)
            .count()
            .try_into()
            .unwrap_or(u32::MAX)
    }

    /// When the first successful apply for `grant_id` arrived.
    pub async fn applied_at(&self, grant_id: &str) -> Option<Timestamp> {
        self.first_success(grant_id, CallKind::Apply).await
    }

    /// When the first successful revoke for `grant_id` arrived.
    pub async fn revoked_at(&self, grant_id: &str) -> Option<Timestamp> {
        self.first_success(grant_id, CallKind::Revoke).await
    }

    async fn first_success(&self, grant_id: &str, kind: CallKind) -> Option<Timestamp> {
        self.shared
            .state
            .lock()
            .await
            .calls
            .iter()
            .find(|c| {
                c.outcome == CallOutcome::Applied
                    && c.kind == Some(kind)
                    && grant_field(c.grant.as_ref(), "id") == Some(grant_id)
            })
            .map(|c| c.received_at)
    }

    /// Answers the next `n` calls with 503 before reading them.
    pub async fn fail_next(&self, n: u32) {
        self.shared.state.lock().await.faults.fail_next = n;
    }

    /// While `down` is true every call is answered 503.
    pub async fn set_down(&self, down: bool) {
        self.shared.state.lock().await.faults.down = down;
    }

    /// Delays every answer by `latency` (None removes the delay), to exercise client timeouts.
    pub async fn set_latency(&self, latency: Option<Duration>) {
        self.shared.state.lock().await.faults.latency = latency;
    }

    /// Removes every injected fault.
    pub async fn clear_faults(&self) {
        self.shared.state.lock().await.faults = Faults::default();
    }

    /// Stops the server and waits for in-flight calls.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

fn grant_field<'a>(grant: Option<&'a Value>, name: &str) -> Option<&'a str> {
    grant.and_then(|g| g.get(name)).and_then(Value::as_str)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks the three Standard Webhooks headers against `body`; `Err` carries a short reason.
fn verify_headers(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
    let id = header_str(headers, "webhook-id").ok_or("missing webhook-id")?;
    let ts_raw = header_str(headers, "webhook-timestamp").ok_or("missing webhook-timestamp")?;
    let signature = header_str(headers, "webhook-signature").ok_or("missing webhook-signature")?;
    let ts: i64 = ts_raw
        .trim()
        .parse()
        .map_err(|_| "webhook-timestamp is not an integer")?;
    let now = Timestamp::now().as_second();
    let tolerance = i64::try_from(shared.tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.abs_diff(ts) > tolerance.unsigned_abs() {
        return Err("webhook-timestamp outside tolerance");
    }
    if shared.key.verify(id, ts, body, signature) {
        Ok(())
    } else {
        Err("signature mismatch")
    }
}

/// Reads `{"type":..., "grant":{...}}` into a kind and the grant object.
fn parse_call(body: &[u8]) -> Result<(CallKind, Value), &'static str> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| "body is not JSON")?;
    let kind = match doc.get("type").and_then(Value::as_str) {
        Some("grant.apply") => CallKind::Apply,
        Some("grant.revoke") => CallKind::Revoke,
        _ => return Err("type must be grant.apply or grant.revoke"),
    };
    let grant = doc
        .get("grant")
        .filter(|g| g.is_object())
        .cloned()
        .ok_or("grant object missing")?;
    for required in ["id", "subject", "target", "scope"] {
        match grant.get(required).and_then(Value::as_str) {
            Some(s) if !s.is_empty() => {}
            _ => return Err("grant.id, subject, target and scope must be non-empty strings"),
        }
    }
    Ok((kind, grant))
}

fn push_call(state: &mut ReceiverState, call: ReceivedCall) {
    if state.calls.len() >= MAX_RECORDED_CALLS {
        state.calls.remove(0);
    }
    state.calls.push(call);
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn handle_elevation(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received_at = Timestamp::now();
    let latency = shared.state.lock().await.faults.latency;
    if let Some(latency) = latency {
        tokio::time::sleep(latency).await;
    }
    let mut call = ReceivedCall {
        webhook_id: header_str(&headers, "webhook-id").map(str::to_owned),
        webhook_timestamp: header_str(&headers, "webhook-timestamp").map(str::to_owned),
        kind: None,
        grant: None,
        received_at,
        signature_valid: false,
        status: 0,
        outcome: CallOutcome::InjectedFailure,
        body: body.to_vec(),
    };
    let mut state = shared.state.lock().await;

    if state.faults.down || state.faults.fail_next > 0 {
        state.faults.fail_next = state.faults.fail_next.saturating_sub(1);
        call.status = 503;
        push_call(&mut state, call);
        tracing::info!(status = 503, "elevation call refused by injected fault");
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "unavailable", "detail": "injected fault"}),
        );
    }

    if let Err(reason) = verify_headers(&shared, &headers, &body) {
        call.status = 401;
        call.outcome = CallOutcome::Unauthorized;
        push_call(&mut state, call);
        tracing::warn!(reason, "elevation call rejected");
        return answer(
            StatusCode::UNAUTHORIZED,
            json!({"error": "unauthorized", "detail": reason}),
        );
    }
    call.signature_valid = true;

    let (kind, grant) = match parse_call(&body) {
        Ok(parsed) => parsed,
        Err(reason) => {
            call.status = 400;
            call.outcome = CallOutcome::BadRequest;
            push_call(&mut state, call);
            tracing::warn!(reason, "elevation call malformed");
            return answer(
                StatusCode::BAD_REQUEST,
                json!({"error": "bad request", "detail": reason}),
            );
        }
    };
    call.kind = Some(kind);
    call.grant = Some(grant.clone());
    call.status = 200;

    // verify_headers proved the header exists.
    let id = call.webhook_id.clone().unwrap_or_default();
    let seen = state.processed_ids.entry(id.clone()).or_insert(0);
    *seen = seen.saturating_add(1);
    if *seen > 1 {
        call.outcome = CallOutcome::Duplicate;
        push_call(&mut state, call);
        tracing::info!(webhook_id = %id, "duplicate elevation call ignored");
        return answer(StatusCode::OK, json!({"status": "duplicate"}));
    }

    let text = |name: &str| {
        grant_field(Some(&grant), name)
            .unwrap_or_default()
            .to_owned()
    };
    let grant_id = text("id");
    match kind {
        CallKind::Apply => {
            if !state.holdings.iter().any(|h| h.grant_id == grant_id) {
                state.holdings.push(Holding {
                    subject: text("subject"),
                    target: text("target"),
                    scope: text("scope"),
                    grant_id: grant_id.clone(),
                    expires_at: grant_field(Some(&grant), "expires_at").map(str::to_owned),
                    applied_at: received_at,
                });
            }
        }
        CallKind::Revoke => state.holdings.retain(|h| h.grant_id != grant_id),
    }
    call.outcome = CallOutcome::Applied;
    tracing::info!(
        webhook_id = %id,
        kind = ?kind,
        grant = %grant_id,
        subject = %text("subject"),
        target = %text("target"),
        scope = %text("scope"),
        "elevation call applied"
    );
    push_call(&mut state, call);
    answer(StatusCode::OK, json!({"status": "ok"}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::standard_webhooks_signature;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn body(kind: &str, grant_id: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "type": kind,
            "grant": {
                "id": grant_id, "subject": "alice@example.com", "target": "WS-042",
                "scope": "local-admin", "starts_at": "2026-01-01T10:00:00Z",
                "expires_at": "2026-01-01T11:00:00Z",
                "ticket": {"connector": "jira", "key": "ACCESS-1", "url": "http://x/browse/ACCESS-1"}
            }
        }))
        .unwrap()
    }

    async fn send(url: &str, secret: &str, id: &str, ts: i64, signed: &[u8], sent: &[u8]) -> u16 {
        let sig = standard_webhooks_signature(secret, id, ts, signed);
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(sent.to_vec())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    fn now() -> i64 {
        Timestamp::now().as_second()
    }

    #[tokio::test]
    async fn signed_apply_then_revoke_changes_holdings() {
        let rx = ElevationReceiver::start(SECRET).await.unwrap();
        let apply = body("grant.apply", "g1");
        assert_eq!(
            send(&rx.url(), SECRET, "msg_a", now(), &apply, &apply).await,
            200
        );
        assert!(rx.holds("alice@example.com", "WS-042", "local-admin").await);
        assert!(rx.applied_at("g1").await.is_some());
        assert!(rx.revoked_at("g1").await.is_none());

        let revoke = body("grant.revoke", "g1");
        assert_eq!(
            send(&rx.url(), SECRET, "msg_r", now(), &revoke, &revoke).await,
            200
        );
        assert!(!rx.holds("alice@example.com", "WS-042", "local-admin").await);
        assert!(rx.revoked_at("g1").await.is_some());
        assert!(rx.holdings().await.is_empty());
    }

    #[tokio::test]
    async fn wrong_secret_is_rejected_and_nothing_is_held() {
        let rx = ElevationReceiver::start(SECRET).await.unwrap();
        let apply = body("grant.apply", "g1");
        let other = "whsec_b3RoZXItc2VjcmV0LWtleQ==";
        assert_eq!(
            send(&rx.url(), other, "msg_a", now(), &apply, &apply).await,
            401
        );
        assert!(rx.holdings().await.is_empty());
        let calls = rx.calls().await;
        assert_eq!(calls.len(), 1);
        assert!(!calls[0].signature_valid);
        assert_eq!(calls[0].outcome, CallOutcome::Unauthorized);
    }

    #[tokio::test]
    async fn stale_timestamp_is_rejected_even_with_a_valid_signature() {
        let rx = ElevationReceiver::start(SECRET).await.unwrap();
        let apply = body("grant.apply", "g1");
        let stale = now() - 6 * 60;
        assert_eq!(
            send(&rx.url(), SECRET, "msg_a", stale, &apply, &apply).await,
            401
        );
        let future = now() + 6 * 60;
        assert_eq!(
            send(&rx.url(), SECRET, "msg_b", future, &apply, &apply).await,
            401
        );
        assert!(rx.holdings().await.is_empty());
    }

    #[tokio::test]
    async fn tampered_body_is_rejected() {
        let rx = ElevationReceiver::start(SECRET).await.unwrap();
        let signed = body("grant.apply", "g1");
        let mut sent = signed.clone();
        // Swap the subject: a forged escalation for someone else.
        let forged = String::from_utf8(sent.clone())
            .unwrap()
            .replace("alice@", "mallory@");
        sent = forged.into_bytes();
        assert_eq!(
            send(&rx.url(), SECRET, "msg_a", now(), &signed, &sent).await,
            401
        );
        assert!(rx.holdings().await.is_empty());
    }

    #[tokio::test]
    async fn missing_signature_headers_are_rejected() {
        let rx = ElevationReceiver::start(SECRET).await.unwrap();
        let status = reqwest::Client::new()
            .post(rx.url())
            .body(body("grant.apply", "g1"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 401);
    }

    #[tokio::test]
    async fn duplicate_webhook_id_is_counted_not_reapplied() {
        let rx = ElevationReceiver::start(SECRET).await.unwrap();
        let apply = body("grant.apply", "g1");
        assert_eq!(
            send(&rx.url(), SECRET, "msg_a", now(), &apply, &apply).await,
            200
        );
        let revoke = body("grant.revoke", "g1");
        assert_eq!(
            send(&rx.url(), SECRET, "msg_r", now(), &revoke, &revoke).await,
            200
        );
        // A late retry of the apply must not give the privilege back.
        assert_eq!(
            send(&rx.url(), SECRET, "msg_a", now(), &apply, &apply).await,
            200
        );
        assert!(!rx.holds("alice@example.com", "WS-042", "local-admin").await);
        assert_eq!(rx.duplicate_count("msg_a").await, 1);
        assert_eq!(rx.total_duplicates().await, 1);
    }

    #[tokio::test]
    async fn injected_failures_answer_503_and_a_retry_then_applies() {
        let rx = ElevationReceiver::start(SECRET).await.unwrap();
        rx.fail_next(2).await;
        let apply = body("grant.apply", "g1");
        for _ in 0..2 {
            assert_eq!(
                send(&rx.url(), SECRET, "msg_a", now(), &apply, &apply).await,
                503
            );
        }
        assert_eq!(
            send(&rx.url(), SECRET, "msg_a", now(), &apply, &apply).await,
            200
        );
        assert_eq!(rx.duplicate_count("msg_a").await, 0);
        assert!(rx.holds("alice@example.com", "WS-042", "local-admin").await);

        rx.set_down(true).await;
        let revoke = body("grant.revoke", "g1");
        assert_eq!(
            send(&rx.url(), SECRET, "msg_r", now(), &revoke, &revoke).await,
            503
        );
        rx.clear_faults().await;
        assert_eq!(
            send(&rx.url(), SECRET, "msg_r", now(), &revoke, &revoke).await,
            200
        );
        assert!(rx.holdings().await.is_empty());
    }

    #[tokio::test]
    async fn verified_but_malformed_body_is_a_400() {
        let rx = ElevationReceiver::start(SECRET).await.unwrap();
        let bad = br#"{"type":"grant.explode","grant":{}}"#;
        assert_eq!(send(&rx.url(), SECRET, "msg_x", now(), bad, bad).await, 400);
        assert_eq!(rx.calls().await[0].outcome, CallOutcome::BadRequest);
    }

    #[tokio::test]
    async fn malformed_secret_fails_at_start() {
        assert!(ElevationReceiver::start("plain-secret").await.is_err());
    }
}
