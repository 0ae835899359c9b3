//! The validated configuration the daemon runs on. Built once from the raw files by
//! [`super::load`](mod@super::load); after that nothing re-checks it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use crate::connectors::OutboundAuth;
use crate::ingress::auth::InboundAuth;
use crate::mapping::MappingSet;
use crate::providers::ElevationProvider;

/// Everything `jitbridge serve` needs.
#[derive(Clone)]
pub struct Config {
    /// The main config file.
    pub file: PathBuf,
    /// Its directory: relative paths resolve against it.
    pub base_dir: PathBuf,
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub store: StoreLocation,
    pub workers: WorkerSettings,
    /// One per connector file, in file-name order.
    pub connectors: Vec<ConnectorSettings>,
    /// Built providers by name.
    pub providers: BTreeMap<String, Arc<dyn ElevationProvider>>,
    pub mappings: Arc<MappingSet>,
    /// Findings of `jitbridge check` that do not stop the daemon (e.g. mappings that could
    /// both match one ticket); printed by `check`, logged at start and on reload.
    pub warnings: Vec<super::Problem>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("file", &self.file)
            .field("server", &self.server)
            .field("admin", &self.admin)
            .field("store", &self.store)
            .field(
                "connectors",
                &self.connectors.iter().map(|c| &c.id).collect::<Vec<_>>(),
            )
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The webhook listener.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// Slow headers and idle keep-alive connections are closed after this.
    pub header_timeout: Duration,
    /// Connection cap of each listener.
    pub max_connections: usize,
}

/// The admin API.
#[derive(Clone)]
pub struct AdminSettings {
    /// `None`: admin routes share the webhook listener.
    pub listen: Option<SocketAddr>,
    /// `None`: the admin API (`/api/v1/…`) is disabled; health and metrics stay up.
    pub token: Option<SecretString>,
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// Embedded SQLite file (absolute path).
    Sqlite(PathBuf),
    /// PostgreSQL URL (may contain a password: never printed).
    Postgres(String),
}

/// Retry schedules and windows of the workers.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSettings {
    pub apply_window: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub revoke_retry_max: Duration,
    pub revoke_alarm_after: u32,
    pub writeback_max_attempts: u32,
}

/// One validated connector file.
#[derive(Debug, Clone)]
pub struct ConnectorSettings {
    pub id: String,
    pub kind: String,
    pub file: PathBuf,
    pub base_url: reqwest::Url,
    pub inbound: Arc<InboundAuth>,
    pub outbound: OutboundAuth,
    pub confirm_approvals: bool,
    pub timeout: Duration,
    /// The kind's own validated settings.
    pub options: crate::connectors::KindOptions,
}
