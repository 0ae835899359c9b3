//! Running an axum router on a local port for as long as a simulator handle lives. Shared by the
//! Jira simulator and the elevation receiver so both stop the same way: explicitly with
//! [`ServerTask::shutdown`], or implicitly when the handle is dropped at the end of a test.

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::SimError;

/// A router served in a background task until shut down or dropped.
#[derive(Debug)]
pub(crate) struct ServerTask {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ServerTask {
    /// Binds `addr` (port 0 picks a free port) and serves the router that `make_router` builds
    /// for the bound address (simulators render absolute `self` URLs from it).
    pub(crate) async fn spawn(
        addr: SocketAddr,
        make_router: impl FnOnce(SocketAddr) -> Router,
    ) -> Result<Self, SimError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| SimError::Bind { addr, source })?;
        let router = make_router(local);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "simulator server stopped with an error");
            }
        });
        Ok(Self {
            addr: local,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and waits for in-flight requests to finish.
    pub(crate) async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
