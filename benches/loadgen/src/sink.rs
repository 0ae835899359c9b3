//! A provider receiver on loopback that only records when each `grant.apply` / `grant.revoke`
//! call arrived. It answers 200 at once, so what P2 and P4 measure is jitbridge's own delay,
//! not an endpoint agent's. (The simulator's `ElevationReceiver` verifies signatures but keeps
//! only 10,000 calls; P4 needs more.)

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use jiff::Timestamp;
use tokio::net::TcpListener;

/// Most calls kept (bounded memory whatever the daemon does).
const MAX_CALLS: usize = 500_000;

/// One recorded call.
#[derive(Debug, Clone)]
pub struct Call {
    /// `grant.apply` or `grant.revoke`.
    pub kind: String,
    pub grant_id: String,
    pub ticket_key: String,
    /// The grant's deadline as the call states it.
    pub expires_at: Option<Timestamp>,
    /// When the sink got it (real time).
    pub received_at: Timestamp,
}

/// The running sink.
pub struct Sink {
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Starts a sink on a free loopback port.
    pub async fn start() -> anyhow::Result<Sink> {
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let app = axum::Router::new()
            .fallback(post(record))
            .with_state(calls.clone());
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Sink { addr, calls, task })
    }

    /// The URL to configure as the provider.
    pub fn url(&self) -> String {
        format!("http://{}/elevation", self.addr)
    }

    /// Calls of `kind` recorded so far.
    pub fn calls(&self, kind: &str) -> Vec<Call> {
        self.calls
            .lock()
            .map(|c| c.iter().filter(|c| c.kind == kind).cloned().collect())
            .unwrap_or_default()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(State(calls): State<Arc<Mutex<Vec<Call>>>>, body: Bytes) -> StatusCode {
    let received_at = Timestamp::now();
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let grant = &doc["grant"];
    let call = Call {
        kind: text(&doc["type"]),
        grant_id: text(&grant["id"]),
        ticket_key: text(&grant["ticket"]["key"]),
        expires_at: grant["expires_at"].as_str().and_then(|s| s.parse().ok()),
        received_at,
    };
    if let Ok(mut calls) = calls.lock()
        && calls.len() < MAX_CALLS
    {
        calls.push(call);
    }
    StatusCode::OK
}
