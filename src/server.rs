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
//!   requests finish (each is bounded by the header and request timeouts);
//! - a lingering close (RFC 9112 §9.6): a connection that ends after an answer is half-closed
//!   and drained briefly (at most 2 s and 4 MiB) before it is dropped, so a client still sending
//!   (a refused over-limit body) reads the `413` instead of losing it to the reset that closing
//!   with unread bytes sends. Connections cut by a timeout are dropped at once.
//!
//! Slow bodies are cut by the request timeout ([`crate::http::request_timeout`]), over-limit
//! bodies by the route's body limit.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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
/// Longest lingering close: time the client gets to read our last answer while we discard
/// what it is still sending.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// Most bytes discarded during a lingering close.
const LINGER_BYTES: usize = 4 * 1024 * 1024;

/// The router as a hyper service whose futures are boxed, hence `Unpin`, which
/// [`http1::Connection::poll_without_shutdown`] needs to hand the socket back at the end.
fn hyper_service(
    router: axum::Router,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = BoxFuture<'static, Result<axum::response::Response, std::convert::Infallible>>,
> + Clone {
    hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let router = router.clone();
        Box::pin(async move { tower::ServiceExt::oneshot(router, request).await })
            as BoxFuture<'static, _>
    })
}

/// Serves one connection to its end (or, on shutdown, to the end of its in-flight request); a
/// connection that ended with an answer is closed lingering.
async fn serve_connection(
    builder: &http1::Builder,
    stream: TcpStream,
    router: axum::Router,
    name: &'static str,
    shutdown: CancellationToken,
) {
    let mut conn = builder.serve_connection(TokioIo::new(stream), hyper_service(router));
    // Kept across polls: it registers this task to be woken by the cancellation.
    let mut cancelled = std::pin::pin!(shutdown.cancelled());
    let mut shutting_down = false;
    let result = std::future::poll_fn(|cx| {
        if !shutting_down && cancelled.as_mut().poll(cx).is_ready() {
            shutting_down = true;
            std::pin::Pin::new(&mut conn).graceful_shutdown();
        }
        conn.poll_without_shutdown(cx)
    })
    .await;
    match result {
        // An answer was written: let the client read it.
        Ok(()) => linger(conn.into_parts().io.into_inner()).await,
        // Timeouts, resets and malformed requests end without an answer to protect: drop now,
        // so a slow client does not keep its slot any longer.
        Err(e) => tracing::debug!(listener = name, error = %e, "connection ended with an error"),
    }
}

/// Half-closes `stream` and discards what the client still sends, for at most [`LINGER_TIME`]
/// and [`LINGER_BYTES`], so our last answer reaches it before the socket is dropped.
async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut discarded = 0;
    let mut buf = vec![0u8; 16 * 1024];
    let drain = async {
        while discarded < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

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
    let gauge = metrics::gauge!("jitbridge_http_connections", "listener" => name);
    // Registers the series (0 until a connection) without resetting it on a restart in-process.
    gauge.increment(0.0);

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
        let router = router.clone();
        let shutdown = shutdown.clone();
        let gauge = gauge.clone();
        gauge.increment(1.0);
        connections.spawn(async move {
            serve_connection(&builder, stream, router, name, shutdown).await;
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
