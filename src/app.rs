//! Wires the components of DESIGN.md's flow together and runs them: the webhook listener (and
//! the admin listener, if separate), the inbox worker, the two outbox workers, the expiry
//! scheduler and the connector health checks. Everything stops on one cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState, ConnectorHealth};
use crate::clock::SharedClock;
use crate::config::live::LiveConnectors;
use crate::config::{Active, Config, LiveConfig, StoreLocation};
use crate::connectors::Registry;
use crate::grants::service::{GrantService, ServiceSettings, Wakers};
use crate::inbox::InboxWorker;
use crate::ingress::{self, IngressState};
use crate::outbox::provider_worker::ProviderWorker;
use crate::outbox::writeback_worker::WritebackWorker;
use crate::reload::Reloader;
use crate::scheduler::Scheduler;
use crate::server::ConnectionLimits;
use crate::store::{Store, StoreError};

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Opens the configured store.
pub async fn open_store(
    location: &StoreLocation,
    clock: SharedClock,
) -> Result<Arc<dyn Store>, AppError> {
    match location {
        StoreLocation::Sqlite(path) => Ok(Arc::new(
            crate::store::sqlite::SqliteStore::open_with_clock(path, clock).await?,
        )),
        StoreLocation::Postgres(url) => Ok(Arc::new(
            crate::store::postgres::PgStore::connect(url, clock).await?,
        )),
    }
}

/// The shared outbound HTTP client (connection pool; per-call timeouts are set by each caller).
pub fn http_client() -> Result<reqwest::Client, AppError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("jitbridge/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| AppError::Client(e.to_string()))
}

/// A running daemon.
pub struct Running {
    /// Where `/webhooks/` listens.
    pub webhook_addr: SocketAddr,
    /// Where the admin API, health and metrics listen (same as `webhook_addr` unless separated).
    pub admin_addr: SocketAddr,
    /// The grant service (tests and tools drive it directly).
    pub service: GrantService,
    reloader: Reloader,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stops every task and waits for them (in-flight requests finish; workers stop between jobs).
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Waits until the daemon stops by itself (a listener failed) or `shutdown` is cancelled.
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {
            if !self.shutdown.is_cancelled() {
                // One task ending means the daemon is no longer whole: stop the rest.
                self.shutdown.cancel();
            }
        }
    }

    /// Swaps in a new configuration (what SIGHUP and the reload endpoint call).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// The token that stops the daemon.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Starts the daemon on an already-opened store: binds the listeners and spawns every worker.
pub async fn start_with_store(
    config: Config,
    store: Arc<dyn Store>,
    clock: SharedClock,
) -> Result<Running, AppError> {
    let shutdown = CancellationToken::new();
    let client = http_client()?;
    let live = LiveConfig::new(Active {
        mappings: config.mappings.clone(),
        connectors: Registry::build(&config.connectors, &client),
        providers: config.providers.clone(),
    });
    let reloader = Reloader::new(
        &config,
        live.clone(),
        store.clone(),
        clock.clone(),
        client.clone(),
    );
    reloader.record_start();
    for w in &config.warnings {
        tracing::warn!(warning = %w, "configuration warning");
    }
    let connectors = live.connectors();
    let wakers = Wakers::default();
    let inbox_wake = Arc::new(tokio::sync::Notify::new());
    let apply_window = jiff::SignedDuration::try_from(config.workers.apply_window)
        .unwrap_or(jiff::SignedDuration::from_mins(15));
    let service = GrantService::new(
        store.clone(),
        clock.clone(),
        live.mappings(),
        connectors.clone(),
        wakers.clone(),
        ServiceSettings { apply_window },
    );

    // Leases held by a previous run of this (only) instance would otherwise delay overdue revokes.
    // (On PostgreSQL other instances may be alive: there only lapsed leases are released.)
    let released = store.release_stale_leases().await?;
    if released > 0 {
        tracing::info!(released, "released work leased by a previous run");
    }

    let health: ConnectorHealth = Default::default();
    let admin_state = AdminState {
        store: store.clone(),
        service: service.clone(),
        token: config.admin.token.clone(),
        health: health.clone(),
        metrics: admin::metrics_handle(),
        reloader: reloader.clone(),
    };
    if config.admin.token.is_none() {
        tracing::warn!("no admin token configured: the admin API (/api/v1/) is disabled");
    }
    let ingress_state = IngressState {
        store: store.clone(),
        clock: clock.clone(),
        connectors: connectors.clone(),
        inbox_wake: inbox_wake.clone(),
    };
    let timeout = axum::middleware::from_fn_with_state(
        config.server.request_timeout,
        crate::http::request_timeout,
    );
    let limits = ConnectionLimits {
        header_timeout: config.server.header_timeout,
        max_connections: config.server.max_connections,
        drain_timeout: config.server.header_timeout + config.server.request_timeout,
    };
    let webhooks = ingress::router(ingress_state, config.server.max_body_bytes);
    let admin_routes = admin::ops_router(admin_state.clone()).merge(admin::api_router(admin_state));

    let mut tasks = JoinSet::new();
    let webhook_listener = bind(config.server.listen).await?;
    let webhook_addr = webhook_listener
        .local_addr()
        .map_err(|source| AppError::Bind {
            addr: config.server.listen,
            source,
        })?;
    let admin_addr = match config.admin.listen {
        Some(addr) => {
            let listener = bind(addr).await?;
            let admin_addr = listener
                .local_addr()
                .map_err(|source| AppError::Bind { addr, source })?;
            serve(
                &mut tasks,
                listener,
                admin_routes
                    .fallback(crate::http::not_found)
                    .layer(timeout.clone()),
                limits,
                "admin",
                shutdown.clone(),
            );
            serve(
                &mut tasks,
                webhook_listener,
                webhooks.fallback(crate::http::not_found).layer(timeout),
                limits,
                "webhook",
                shutdown.clone(),
            );
            admin_addr
        }
        None => {
            serve(
                &mut tasks,
                webhook_listener,
                webhooks
                    .merge(admin_routes)
                    .fallback(crate::http::not_found)
                    .layer(timeout),
                limits,
                "webhook",
                shutdown.clone(),
            );
            webhook_addr
        }
    };

    let w = config.workers.clone();
    let token = shutdown.clone();
    let worker = InboxWorker::new(service.clone(), connectors.clone(), w.clone(), inbox_wake);
    tasks.spawn(async move { worker.run(token).await });
    let token = shutdown.clone();
    let worker = ProviderWorker::new(
        service.clone(),
        live.providers(),
        w.clone(),
        wakers.provider.clone(),
    );
    tasks.spawn(async move { worker.run(token).await });
    let token = shutdown.clone();
    let worker = WritebackWorker::new(
        store.clone(),
        clock.clone(),
        connectors.clone(),
        w,
        wakers.writeback.clone(),
    );
    tasks.spawn(async move { worker.run(token).await });
    let token = shutdown.clone();
    let scheduler =
        Scheduler::new(service.clone(), wakers.scheduler.clone()).with_providers(live.providers());
    tasks.spawn(async move { scheduler.run(token).await });
    let token = shutdown.clone();
    tasks.spawn(health_checks(connectors, health, token));

    tracing::info!(%webhook_addr, %admin_addr, connectors = config.connectors.len(), mappings = config.mappings.len(), "jitbridge is running");
    Ok(Running {
        webhook_addr,
        admin_addr,
        service,
        reloader,
        shutdown,
        tasks,
    })
}

/// Opens the store and starts the daemon.
pub async fn start(config: Config, clock: SharedClock) -> Result<Running, AppError> {
    let store = open_store(&config.store, clock.clone()).await?;
    start_with_store(config, store, clock).await
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })
}

fn serve(
    tasks: &mut JoinSet<()>,
    listener: TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    name: &'static str,
    shutdown: CancellationToken,
) {
    tasks.spawn(crate::server::serve(
        listener, router, limits, name, shutdown,
    ));
}

/// Checks each connector in force at start and every minute; failures are reported, never
/// fatal, so the daemon keeps revoking while an ITSM is down.
async fn health_checks(
    connectors: LiveConnectors,
    health: ConnectorHealth,
    shutdown: CancellationToken,
) {
    loop {
        let current = connectors.all();
        // A reload may have removed connectors: report only those in force.
        health
            .write()
            .await
            .retain(|id, _| current.iter().any(|r| r.connector.id() == id));
        for reg in current {
            let id = reg.connector.id().to_owned();
            let status = match reg.connector.healthcheck().await {
                Ok(()) => "ok".to_owned(),
                Err(e) => {
                    tracing::warn!(connector = %id, error = %e, "connector health check failed");
                    format!("error: {e}")
                }
            };
            health.write().await.insert(id, status);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}
