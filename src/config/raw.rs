//! The raw shape of `jitbridge.toml`, exactly as an admin writes it. Unknown keys are errors,
//! so a typo never silently falls back to a default.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::providers::command::CommandProviderConfig;
use crate::providers::webhook::WebhookProviderConfig;

/// The whole `jitbridge.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub paths: RawPaths,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub workers: RawWorkers,
    /// `[scopes.app|script|service.<name>]`: the allow-list, validated with its spans by
    /// [`crate::policy::scope::ScopeCatalog::from_config_text`] (so only accepted here).
    #[serde(default)]
    pub scopes: Option<serde::de::IgnoredAny>,
    /// `[identity]`: the identity map file.
    #[serde(default)]
    pub identity: RawIdentity,
}

/// `[identity]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIdentity {
    /// The identity map file (`identities.toml`), relative to this file; none: no map.
    pub map: Option<String>,
}

/// `[server]`: the webhook listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// Address for `/webhooks/` (and, unless `[admin] listen` is set, everything else).
    pub listen: String,
    /// Largest accepted delivery body; larger ones get `413` after reading at most this much.
    pub max_body_bytes: usize,
    /// Whole-request timeout, so slow senders cannot hold connections.
    pub request_timeout: String,
    /// Longest wait for a request's headers (and longest keep-alive idle time).
    pub header_timeout: String,
    /// Most connections open at once per listener; more wait in the backlog.
    pub max_connections: usize,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1_048_576,
            request_timeout: "10s".into(),
            header_timeout: "10s".into(),
            max_connections: 1024,
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    /// `sqlite://path` (relative to the config file) or `postgres://…`.
    pub url: String,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            url: "sqlite://data/jitbridge.db".into(),
        }
    }
}

/// `[paths]`, relative to the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPaths {
    pub connectors: String,
    pub mappings: String,
}

impl Default for RawPaths {
    fn default() -> Self {
        Self {
            connectors: "connectors".into(),
            mappings: "mappings".into(),
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Variable holding the admin bearer token; the admin API is disabled while it is unset.
    pub token_env: Option<String>,
    /// Separate address for admin API, health and metrics.
    pub listen: Option<String>,
}

/// `[providers.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RawProvider {
    /// Signed HTTP call to a PAM/EPM or endpoint-management API.
    Webhook(WebhookProviderConfig),
    /// A program run with an argument vector.
    Command(CommandProviderConfig),
}

/// `[workers]`: retry schedules and windows. Defaults suit production; tests shorten them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWorkers {
    /// How long a provider may keep failing to apply before the grant is `failed`.
    pub apply_window: String,
    /// First retry delay of outbox jobs and deliveries.
    pub retry_initial: String,
    /// Longest retry delay of writebacks and applies.
    pub retry_max: String,
    /// Longest retry delay of a failing revoke (kept short: privilege is still held).
    pub revoke_retry_max: String,
    /// Failed revoke attempts before the grant is `revoke_failed` and the alarm is raised.
    pub revoke_alarm_after: u32,
    /// Writeback attempts before a retryable failure is parked as dead.
    pub writeback_max_attempts: u32,
}

impl Default for RawWorkers {
    fn default() -> Self {
        Self {
            apply_window: "15m".into(),
            retry_initial: "1s".into(),
            retry_max: "5m".into(),
            revoke_retry_max: "30s".into(),
            revoke_alarm_after: 3,
            writeback_max_attempts: 1000,
        }
    }
}

/// One file in the connectors directory: the keys every kind shares, plus the kind's own keys
/// in `options` (each kind validates those with its own `deny_unknown_fields` struct, so a typo
/// is still an error).
#[derive(Debug, Clone, Deserialize)]
pub struct RawConnector {
    /// Deliveries arrive on `POST /webhooks/{id}`.
    pub id: String,
    /// `jira` (more kinds follow).
    pub kind: String,
    /// The ITSM's base URL, used for API calls and ticket links.
    pub base_url: String,
    /// How deliveries are authenticated.
    pub inbound: crate::ingress::auth::InboundConfig,
    /// How API calls authenticate.
    pub outbound: crate::connectors::OutboundConfig,
    /// Confirm approvals through the API before granting (default true).
    #[serde(default)]
    pub confirm_approvals: Option<bool>,
    /// Timeout of each API call (default 10s).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Every other key: the kind's own settings.
    #[serde(flatten)]
    pub options: toml::Table,
}
