//! The HTTP/1.1 accept loop of each listener. `axum::serve` cannot bound how long a client may
//! take to send its request headers, nor how many connections it holds, so a few slow clients
//! could exhaust the daemon; this loop serves the same routers through hyper directly with:
//!
//! - a header timeout (`server.header_timeout`): a request whose headers are not complete in
//!   time, or a keep-alive connection idle for that long, is closed;
//! - a connection cap per listener (`server.max_connections`): at the cap, the loop stops
//!   accepting, so new connections wait in the kernel's backlog until a slot frees (a timeout or
//!   a finished exchange frees one); the admin listener, when separate, has its own slots;
//! - the gauge `jitbridge_http_connections{listener}` of open connections;
//! - graceful shutdown: on cancellation the listener closes, idle connections close, in-flight
//!   requests finish (each is bounded by the header and request timeouts).
//!
//! Slow bodies are cut by the request timeout ([`crate::http::request_timeout`]), over-limit
//! bodies by the route's body limit.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How each connection of a listener is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Longest time to receive a request's headers, and longest keep-alive idle time.
    pub header_timeout: Duration,
    /// Most connections open at once on this listener.
    pub max_connections: usize,
    /// How long shutdown waits for in-flight connections before leaving them.
    pub drain_timeout: Duration,
}

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(200);

/// Serves `router` on `listener` until `shutdown` is cancelled, then drains open connections.
/// `name` labels the connection gauge (`webhook` or `admin`).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    name: &'static str,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let builder = Arc::new(builder);
    let service = TowerToHyperService::new(router);
    let gauge = metrics::gauge!("jitbridge_http_connections", "listener" => name);
    gauge.set(0.0);

    loop {
        // At the cap, stop accepting: new connections queue in the backlog, none is dropped.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "accepting a connection failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(listener = name, error = %e, "cannot set TCP_NODELAY");
        }
        let builder = builder.clone();
        let service = service.clone();
        let shutdown = shutdown.clone();
        let gauge = gauge.clone();
        gauge.increment(1.0);
        connections.spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                // Timeouts, resets and malformed requests: the client's problem, not ours.
                tracing::debug!(listener = name, error = %e, "connection ended with an error");
            }
            gauge.decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.drain_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            open = connections.len(),
            "connections still open after the drain timeout; leaving them"
        );
    }
}
