//! Reloading a running daemon's configuration (SIGHUP, `POST /api/v1/config/reload`).
//!
//! A reload is all or nothing: the new files are loaded and validated by the same code as
//! `jitbridge check`; then the mappings, connectors and providers are swapped in one step
//! ([`LiveConfig::replace`]). The old configuration stays in force when the new one is invalid,
//! changes something only a restart can change (listeners, store, workers), or removes a
//! connector or provider that a live grant still needs for its revoke. Live grants keep what is
//! stored on them (deadline, provider, subject, target): nothing is re-rendered.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::clock::SharedClock;
use crate::config::live::{Active, LiveConfig};
use crate::config::{Config, Problem, Problems, StoreLocation, WorkerSettings};
use crate::connectors::Registry;
use crate::grants::Grant;
use crate::store::{GrantFilter, Store, StoreError};

/// Most live grants examined per state; above this a removal cannot be proven safe.
const MAX_LIVE_EXAMINED: u32 = 1000;

/// Why a reload was refused. The running configuration is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new files do not validate.
    #[error("the new configuration is invalid, the running one is kept: {0}")]
    Invalid(Problems),
    /// Settings bound at start-up changed.
    #[error(
        "restart needed: {} changed, which a reload cannot apply; nothing was reloaded (restart jitbridge, or put the old values back and reload)",
        .0.join(", ")
    )]
    RestartNeeded(Vec<&'static str>),
    /// A connector or provider that live grants need was removed.
    #[error(
        "the new configuration removes what live grants still need, the running one is kept: {}; \
         keep them configured until those grants have ended (see `jitbridge grants list --state active`)",
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    InUse(Vec<InUse>),
    /// The store could not be asked which grants are live.
    #[error("cannot list live grants to check the new configuration against them: {0}")]
    Store(#[from] StoreError),
    /// Reading the files did not finish (the loading task failed).
    #[error("the configuration could not be read: {0}")]
    Load(String),
}

/// Reads and validates the configuration files anew (blocking file I/O: run off the runtime).
pub type ConfigSource = Arc<dyn Fn() -> Result<Config, Problems> + Send + Sync>;

/// The production source: `file` and the files it names, with the process environment's
/// overrides and secrets, exactly as `jitbridge serve` and `jitbridge check` read them.
pub fn files_source(file: PathBuf) -> ConfigSource {
    Arc::new(move || {
        crate::config::load(
            &file,
            &crate::config::process_env(),
            &crate::config::ProcessEnv,
        )
    })
}

/// A removed connector or provider and the live grants that still use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUse {
    /// `connector` or `provider`.
    pub what: &'static str,
    /// Its id or name.
    pub name: String,
    /// The live grants using it (at most a few are named).
    pub grants: Vec<String>,
    /// True when there may be more grants than could be examined.
    pub more: bool,
}

impl std::fmt::Display for InUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 5;
        let shown: Vec<&str> = self.grants.iter().take(SHOWN).map(String::as_str).collect();
        let rest = self.grants.len().saturating_sub(SHOWN);
        write!(f, "{} {:?} is used by live grant(s) ", self.what, self.name)?;
        if shown.is_empty() {
            write!(f, "(more than could be examined)")
        } else {
            write!(f, "{}", shown.join(", "))?;
            if rest > 0 || self.more {
                write!(f, " and more")?;
            }
            Ok(())
        }
    }
}

/// What a successful reload put in force.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    pub connectors: usize,
    pub mappings: usize,
    pub providers: usize,
    /// Warnings of the new configuration (it was applied all the same).
    pub warnings: Vec<Problem>,
}

/// The settings bound at start-up: listeners, the store, worker schedules.
#[derive(Debug, Clone, PartialEq)]
struct Fixed {
    listen: SocketAddr,
    max_body_bytes: usize,
    request_timeout: Duration,
    admin_listen: Option<SocketAddr>,
    store: StoreLocation,
    workers: WorkerSettings,
}

impl Fixed {
    fn of(config: &Config) -> Self {
        Self {
            listen: config.server.listen,
            max_body_bytes: config.server.max_body_bytes,
            request_timeout: config.server.request_timeout,
            admin_listen: config.admin.listen,
            store: config.store.clone(),
            workers: config.workers.clone(),
        }
    }
}

/// The keys of `new` that differ from `old` and need a restart. Pure.
fn restart_needed(old: &Fixed, new: &Fixed) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.listen != new.listen {
        changed.push("server.listen");
    }
    if old.max_body_bytes != new.max_body_bytes {
        changed.push("server.max_body_bytes");
    }
    if old.request_timeout != new.request_timeout {
        changed.push("server.request_timeout");
    }
    if old.admin_listen != new.admin_listen {
        changed.push("admin.listen");
    }
    if old.store != new.store {
        changed.push("store.url");
    }
    if old.workers != new.workers {
        changed.push("[workers]");
    }
    changed
}

/// The removed connectors and providers that `live` grants still use. Pure. `truncated` says
/// the list of live grants may be incomplete: a removed name used by no listed grant is then
/// reported too, because it cannot be proven unused.
fn still_used(
    live: &[Grant],
    truncated: bool,
    removed_connectors: &BTreeSet<String>,
    removed_providers: &BTreeSet<String>,
) -> Vec<InUse> {
    let mut out = Vec::new();
    let mut check = |what: &'static str, removed: &BTreeSet<String>, key: fn(&Grant) -> &str| {
        for name in removed {
            let grants: Vec<String> = live
                .iter()
                .filter(|g| key(g) == name)
                .map(|g| format!("{} ({}, {})", g.id, g.ticket.key, g.state))
                .collect();
            if !grants.is_empty() || truncated {
                out.push(InUse {
                    what,
                    name: name.clone(),
                    grants,
                    more: truncated,
                });
            }
        }
    };
    check("connector", removed_connectors, |g| &g.ticket.connector);
    check("provider", removed_providers, |g| &g.provider);
    out
}

/// Applies new configurations to a running daemon. Cheap to clone; every clone swaps the same
/// [`LiveConfig`].
#[derive(Clone)]
pub struct Reloader {
    live: LiveConfig,
    store: Arc<dyn Store>,
    clock: SharedClock,
    client: reqwest::Client,
    fixed: Fixed,
    source: Arc<RwLock<ConfigSource>>,
}

impl Reloader {
    /// A reloader for the daemon started with `config`, swapping `live`.
    pub fn new(
        config: &Config,
        live: LiveConfig,
        store: Arc<dyn Store>,
        clock: SharedClock,
        client: reqwest::Client,
    ) -> Self {
        Self {
            live,
            store,
            clock,
            client,
            fixed: Fixed::of(config),
            source: Arc::new(RwLock::new(files_source(config.file.clone()))),
        }
    }

    /// Replaces where [`Reloader::reload`] reads the configuration from (tests resolve secrets
    /// from a map instead of the process environment). Every clone sees the change.
    pub fn set_source(&self, source: ConfigSource) {
        match self.source.write() {
            Ok(mut s) => *s = source,
            Err(poisoned) => *poisoned.into_inner() = source,
        }
    }

    /// Reads the files again and applies them ([`Reloader::apply`]): what SIGHUP and
    /// `POST /api/v1/config/reload` do.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let source = match self.source.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        match tokio::task::spawn_blocking(move || source()).await {
            Ok(loaded) => self.apply(loaded).await,
            Err(e) => {
                let e = ReloadError::Load(e.to_string());
                metrics::counter!("jitbridge_config_reload_total", "result" => "error")
                    .increment(1);
                tracing::error!(error = %e, "configuration reload refused");
                Err(e)
            }
        }
    }

    /// Records the configuration loaded at start as the last successful load (metric).
    pub fn record_start(&self) {
        metrics::gauge!("jitbridge_config_last_reload_success_timestamp_seconds")
            .set(self.clock.now().as_second() as f64);
    }

    /// Puts `loaded` in force, or keeps the running configuration and says why. Counts the
    /// result in `jitbridge_config_reload_total{result}` and logs it.
    pub async fn apply(
        &self,
        loaded: Result<Config, Problems>,
    ) -> Result<ReloadReport, ReloadError> {
        let result = self.try_apply(loaded).await;
        let label = match &result {
            Ok(_) => "ok",
            Err(ReloadError::Invalid(_)) => "invalid",
            Err(ReloadError::RestartNeeded(_)) => "restart_needed",
            Err(ReloadError::InUse(_)) => "in_use",
            Err(ReloadError::Store(_) | ReloadError::Load(_)) => "error",
        };
        metrics::counter!("jitbridge_config_reload_total", "result" => label).increment(1);
        match &result {
            Ok(r) => {
                self.record_start();
                for w in &r.warnings {
                    tracing::warn!(warning = %w, "configuration warning");
                }
                tracing::info!(
                    connectors = r.connectors,
                    mappings = r.mappings,
                    providers = r.providers,
                    "configuration reloaded"
                );
            }
            Err(e) => tracing::error!(error = %e, "configuration reload refused"),
        }
        result
    }

    async fn try_apply(
        &self,
        loaded: Result<Config, Problems>,
    ) -> Result<ReloadReport, ReloadError> {
        let new = loaded.map_err(ReloadError::Invalid)?;
        let changed = restart_needed(&self.fixed, &Fixed::of(&new));
        if !changed.is_empty() {
            return Err(ReloadError::RestartNeeded(changed));
        }
        let current = self.live.current();
        let new_connectors: BTreeSet<&str> = new.connectors.iter().map(|c| c.id.as_str()).collect();
        let removed_connectors: BTreeSet<String> = current
            .connectors
            .iter()
            .map(|r| r.connector.id().to_owned())
            .filter(|id| !new_connectors.contains(id.as_str()))
            .collect();
        let removed_providers: BTreeSet<String> = current
            .providers
            .keys()
            .filter(|p| !new.providers.contains_key(*p))
            .cloned()
            .collect();
        if !removed_connectors.is_empty() || !removed_providers.is_empty() {
            let (live, truncated) = self.live_grants().await?;
            let in_use = still_used(&live, truncated, &removed_connectors, &removed_providers);
            if !in_use.is_empty() {
                return Err(ReloadError::InUse(in_use));
            }
        }
        let report = ReloadReport {
            connectors: new.connectors.len(),
            mappings: new.mappings.len(),
            providers: new.providers.len(),
            warnings: new.warnings.clone(),
        };
        self.live.replace(Active {
            mappings: new.mappings.clone(),
            connectors: Registry::build(&new.connectors, &self.client),
            providers: new.providers.clone(),
        });
        Ok(report)
    }

    /// Every grant not yet in a terminal state, and whether the list may be incomplete.
    async fn live_grants(&self) -> Result<(Vec<Grant>, bool), StoreError> {
        let mut all = Vec::new();
        let mut truncated = false;
        for state in crate::grants::state::ALL_STATES
            .into_iter()
            .filter(|s| !s.is_terminal())
        {
            let page = self
                .store
                .list_grants(&GrantFilter {
                    state: Some(state),
                    limit: Some(MAX_LIVE_EXAMINED),
                    ..Default::default()
                })
                .await?;
            truncated |= page.len() >= MAX_LIVE_EXAMINED as usize;
            all.extend(page);
        }
        Ok((all, truncated))
    }
}

#[cfg(test)]
mod tests;
