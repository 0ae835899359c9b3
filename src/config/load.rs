//! Reads `jitbridge.toml`, the connector files and the mapping files, applies
//! `JITBRIDGE__SECTION__KEY` environment overrides, and validates everything into a [`Config`].
//! All problems are collected, so `jitbridge check` reports every one in one run.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::raw::{RawConfig, RawConnector, RawProvider};
use super::settings::{
    AdminSettings, Config, ConnectorSettings, ServerSettings, StoreLocation, WorkerSettings,
};
use super::{Problem, Problems, SecretSource, line_of, parse_duration};
use crate::connectors::{InboundDefaults, OutboundAuth};
use crate::ingress::auth::InboundAuth;
use crate::mapping::{Known, MappingSet};
use crate::providers::ElevationProvider;
use crate::providers::command::CommandProvider;
use crate::providers::webhook::WebhookProvider;

/// The prefix of environment overrides: `JITBRIDGE__SERVER__LISTEN` sets `server.listen`.
pub const ENV_PREFIX: &str = "JITBRIDGE";

/// Longest accepted `server.header_timeout`: beyond it slow clients hold connections too long.
const MAX_HEADER_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest accepted `server.max_connections` (well under the usual file-descriptor limits).
const MAX_CONNECTIONS_CAP: usize = 65_536;

/// Loads and validates the configuration rooted at `file`.
///
/// `env` is the set of variables that may override keys (the process environment in
/// production, a fixed map in tests); `secrets` resolves the `*_env` secret references.
pub fn load(
    file: &Path,
    env: &HashMap<String, String>,
    secrets: &dyn SecretSource,
) -> Result<Config, Problems> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        Problems(vec![Problem::new(
            file,
            "",
            format!("cannot read the config file: {e}"),
        )])
    })?;
    let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let base_dir = if base_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base_dir
    };
    let raw = parse_main(file, &text, env)?;

    let mut problems = Vec::new();
    let connectors_dir = base_dir.join(&raw.paths.connectors);
    let mappings_dir = base_dir.join(&raw.paths.mappings);
    let connector_files = read_dir_toml(&connectors_dir, "paths.connectors", file, &mut problems);
    let mapping_files = read_dir_toml(&mappings_dir, "paths.mappings", file, &mut problems);

    let mut raw_connectors = Vec::new();
    for (path, text) in &connector_files {
        match toml::from_str::<RawConnector>(text) {
            Ok(c) => raw_connectors.push((path.clone(), c)),
            Err(e) => problems.push(toml_problem(path, text, &e)),
        }
    }

    let connector_ids: Vec<String> = raw_connectors.iter().map(|(_, c)| c.id.clone()).collect();
    let policy_files =
        read_policy_files(file, &text, &base_dir, &raw, &connector_ids, &mut problems);

    match validate(
        file,
        &base_dir,
        &raw,
        &raw_connectors,
        &mapping_files,
        secrets,
        &policy_files,
    ) {
        Ok(cfg) if problems.is_empty() => Ok(cfg),
        Ok(_) => Err(Problems(problems)),
        Err(Problems(more)) => {
            problems.extend(more);
            Err(Problems(problems))
        }
    }
}

/// The scope allow-list and the identity map: what mappings' policies compare against.
#[derive(Debug, Clone, Default)]
pub struct PolicyFiles {
    /// `[scopes]` of `jitbridge.toml`.
    pub scopes: Arc<crate::policy::scope::ScopeCatalog>,
    /// The file named by `[identity] map` (empty when none is configured).
    pub identities: Arc<crate::identity::IdentityMap>,
}

/// Reads `[scopes]` from the main file's text and the identity map file, reporting problems.
fn read_policy_files(
    file: &Path,
    text: &str,
    base_dir: &Path,
    raw: &RawConfig,
    connectors: &[String],
    problems: &mut Vec<Problem>,
) -> PolicyFiles {
    let scopes = crate::policy::scope::ScopeCatalog::from_config_text(file, text)
        .map_err(|ps| problems.extend(ps))
        .unwrap_or_default();
    let identities = match raw.identity.map.as_deref().map(str::trim) {
        None => crate::identity::IdentityMap::default(),
        Some("") => {
            problems.push(Problem::new(
                file,
                "identity.map",
                "is empty; name the identity map file (e.g. \"identities.toml\") or remove the key",
            ));
            crate::identity::IdentityMap::default()
        }
        Some(name) => {
            let path = base_dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(t) => crate::identity::IdentityMap::parse(&path, &t, connectors)
                    .map_err(|ps| problems.extend(ps))
                    .unwrap_or_default(),
                Err(e) => {
                    problems.push(Problem::new(
                        file,
                        "identity.map",
                        format!(
                            "cannot read the identity map {}: {e}; create it (see \
                             identities.toml.example) or remove the key",
                            path.display()
                        ),
                    ));
                    crate::identity::IdentityMap::default()
                }
            }
        }
    };
    PolicyFiles {
        scopes: Arc::new(scopes),
        identities: Arc::new(identities),
    }
}

/// The process environment's `JITBRIDGE__*` variables.
pub fn process_env() -> HashMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect()
}

/// Reads only `jitbridge.toml` (with environment overrides): enough for the CLI to find the
/// running daemon's admin API without needing every connector secret.
pub fn read_main(file: &Path, env: &HashMap<String, String>) -> Result<RawConfig, Problems> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        Problems(vec![Problem::new(
            file,
            "",
            format!("cannot read the config file: {e}"),
        )])
    })?;
    parse_main(file, &text, env)
}

fn parse_main(
    file: &Path,
    text: &str,
    env: &HashMap<String, String>,
) -> Result<RawConfig, Problems> {
    // First the file alone, with toml's precise positions for unknown keys and bad types...
    if let Err(e) = toml::from_str::<RawConfig>(text) {
        return Err(Problems(vec![toml_problem(file, text, &e)]));
    }
    // ...then with the environment overrides layered on top.
    let overrides: config::Map<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let layered = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        )
        .build()
        .and_then(|c| c.try_deserialize::<RawConfig>());
    layered.map_err(|e| {
        Problems(vec![Problem::new(
            file,
            "",
            format!("{e} (after applying {ENV_PREFIX}__SECTION__KEY environment overrides)"),
        )])
    })
}

fn read_dir_toml(
    dir: &Path,
    key: &str,
    file: &Path,
    problems: &mut Vec<Problem>,
) -> Vec<(PathBuf, String)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(Problem::new(
                file,
                key,
                format!("cannot read directory {}: {e}", dir.display()),
            ));
            return Vec::new();
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| match std::fs::read_to_string(&p) {
            Ok(t) => Some((p, t)),
            Err(e) => {
                problems.push(Problem::new(&p, "", format!("cannot read file: {e}")));
                None
            }
        })
        .collect()
}

/// A toml parse/shape error as a [`Problem`] with its line.
pub fn toml_problem(file: &Path, text: &str, e: &toml::de::Error) -> Problem {
    let line = e.span().map(|s| line_of(text, s.start));
    Problem::new(file, "", e.message().to_owned()).at_line(line)
}

/// Pure validation of already-read files.
pub fn validate(
    file: &Path,
    base_dir: &Path,
    raw: &RawConfig,
    raw_connectors: &[(PathBuf, RawConnector)],
    mapping_files: &[(PathBuf, String)],
    secrets: &dyn SecretSource,
    policy_files: &PolicyFiles,
) -> Result<Config, Problems> {
    let mut problems = Vec::new();
    let dur = |key: &str, text: &str, problems: &mut Vec<Problem>| -> Duration {
        match parse_duration(text) {
            Ok(d) if d.is_positive() => d.unsigned_abs(),
            Ok(_) => {
                problems.push(Problem::new(file, key, "must be longer than zero"));
                Duration::from_secs(1)
            }
            Err(why) => {
                problems.push(Problem::new(file, key, why));
                Duration::from_secs(1)
            }
        }
    };
    let addr = |key: &str, text: &str, problems: &mut Vec<Problem>| -> Option<SocketAddr> {
        text.parse()
            .map_err(|_| {
                problems.push(Problem::new(
                    file,
                    key,
                    format!("{text:?} is not an address like \"127.0.0.1:8080\""),
                ))
            })
            .ok()
    };

    let listen = addr("server.listen", &raw.server.listen, &mut problems);
    if raw.server.max_body_bytes == 0 {
        problems.push(Problem::new(
            file,
            "server.max_body_bytes",
            "must be at least 1",
        ));
    }
    let header_timeout = dur(
        "server.header_timeout",
        &raw.server.header_timeout,
        &mut problems,
    );
    if header_timeout > MAX_HEADER_TIMEOUT {
        problems.push(Problem::new(
            file,
            "server.header_timeout",
            "must be at most 5m: slow clients would hold connections that long",
        ));
    }
    if !(1..=MAX_CONNECTIONS_CAP).contains(&raw.server.max_connections) {
        problems.push(Problem::new(
            file,
            "server.max_connections",
            format!("must be between 1 and {MAX_CONNECTIONS_CAP}"),
        ));
    }
    let server = ServerSettings {
        listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
        max_body_bytes: raw.server.max_body_bytes.max(1),
        request_timeout: dur(
            "server.request_timeout",
            &raw.server.request_timeout,
            &mut problems,
        ),
        header_timeout: header_timeout.min(MAX_HEADER_TIMEOUT),
        max_connections: raw.server.max_connections.clamp(1, MAX_CONNECTIONS_CAP),
    };

    let admin_listen = raw
        .admin
        .listen
        .as_deref()
        .and_then(|a| addr("admin.listen", a, &mut problems));
    let token = raw
        .admin
        .token_env
        .as_deref()
        .and_then(|var| secrets.get(var));
    let admin = AdminSettings {
        listen: admin_listen,
        token,
    };

    let store = match store_location(&raw.store.url, base_dir) {
        Ok(s) => s,
        Err(why) => {
            problems.push(Problem::new(file, "store.url", why));
            StoreLocation::Sqlite(base_dir.join("data/jitbridge.db"))
        }
    };

    let w = &raw.workers;
    let workers = WorkerSettings {
        apply_window: dur("workers.apply_window", &w.apply_window, &mut problems),
        retry_initial: dur("workers.retry_initial", &w.retry_initial, &mut problems),
        retry_max: dur("workers.retry_max", &w.retry_max, &mut problems),
        revoke_retry_max: dur(
            "workers.revoke_retry_max",
            &w.revoke_retry_max,
            &mut problems,
        ),
        revoke_alarm_after: w.revoke_alarm_after.max(1),
        writeback_max_attempts: w.writeback_max_attempts.max(1),
    };

    let mut providers: BTreeMap<String, Arc<dyn ElevationProvider>> = BTreeMap::new();
    for (name, p) in &raw.providers {
        let built: Result<Arc<dyn ElevationProvider>, Vec<Problem>> = match p {
            RawProvider::Webhook(c) => {
                WebhookProvider::from_config(name, c, secrets, file).map(|p| Arc::new(p) as _)
            }
            RawProvider::Command(c) => {
                CommandProvider::from_config(name, c, base_dir, file).map(|p| Arc::new(p) as _)
            }
        };
        match built {
            Ok(p) => {
                providers.insert(name.clone(), p);
            }
            Err(ps) => problems.extend(ps),
        }
    }

    let mut connectors = Vec::new();
    let mut seen = HashMap::new();
    for (path, c) in raw_connectors {
        if let Some(first) = seen.insert(c.id.clone(), path.clone()) {
            problems.push(Problem::new(
                path,
                "id",
                format!(
                    "connector id {:?} is already used by {}",
                    c.id,
                    first.display()
                ),
            ));
            continue;
        }
        if let Some(s) = validate_connector(path, c, secrets, &mut problems) {
            connectors.push(s);
        }
    }

    // Names declared in files count as known even when their own validation failed, so one
    // missing secret is reported once, not again as an "unknown connector" in every mapping.
    let known = Known {
        connectors: raw_connectors.iter().map(|(_, c)| c.id.clone()).collect(),
        providers: raw.providers.keys().cloned().collect(),
        scopes: policy_files.scopes.clone(),
        identities: policy_files.identities.clone(),
    };
    let mappings = match MappingSet::from_files(mapping_files, &known) {
        Ok(m) => m,
        Err(ps) => {
            problems.extend(ps);
            MappingSet::default()
        }
    };

    // The deeper checks of `jitbridge check` (names templates and CEL use, overlapping
    // conditions, durations above caps); they skip what the loader already reported.
    let lints = crate::mapping::lint(mapping_files);
    problems.extend(lints.errors);
    let warnings = lints.warnings;

    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    Ok(Config {
        file: file.to_path_buf(),
        base_dir: base_dir.to_path_buf(),
        server,
        admin,
        store,
        workers,
        connectors,
        providers,
        mappings: Arc::new(mappings),
        warnings,
    })
}

/// Where `[store] url` points: a SQLite file (relative paths from `base_dir`, the config
/// file's directory) or a PostgreSQL URL. Shared by the daemon and the CLI's offline reads.
pub fn store_location(url: &str, base_dir: &Path) -> Result<StoreLocation, String> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        if path.is_empty() {
            return Err("sqlite:// needs a file path, e.g. \"sqlite://data/jitbridge.db\"".into());
        }
        let path = Path::new(path);
        Ok(StoreLocation::Sqlite(if path.is_absolute() {
            path.to_path_buf()
        } else {
            base_dir.join(path)
        }))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(StoreLocation::Postgres(url.to_owned()))
    } else {
        Err("must start with sqlite:// or postgres://".into())
    }
}

fn validate_connector(
    path: &Path,
    c: &RawConnector,
    secrets: &dyn SecretSource,
    problems: &mut Vec<Problem>,
) -> Option<ConnectorSettings> {
    let before = problems.len();
    if c.id.is_empty()
        || !c
            .id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    {
        problems.push(Problem::new(
            path,
            "id",
            "must be non-empty and use only letters, digits, '-' and '_' (it is part of the URL)",
        ));
    }
    let (options, defaults): (crate::connectors::KindOptions, InboundDefaults) =
        match crate::connectors::validate_kind(&c.kind, &c.options, path) {
            Ok(v) => v,
            Err(ps) => {
                problems.extend(ps);
                return None;
            }
        };
    if let crate::connectors::KindOptions::Generic(o) = &options
        && !o.confirms()
        && c.confirm_approvals != Some(false)
    {
        problems.push(Problem::new(
            path,
            "confirm",
            "a generic connector confirms approvals through the API: add [[confirm.request]] entries, \
             or set confirm_approvals = false to trust the webhook alone (not recommended)",
        ));
    }
    let base_url = match reqwest::Url::parse(&c.base_url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
        _ => {
            problems.push(Problem::new(
                path,
                "base_url",
                format!("{:?} is not an http(s) URL", c.base_url),
            ));
            None
        }
    };
    let inbound = InboundAuth::from_config(&c.inbound, &defaults, secrets, path)
        .map_err(|ps| problems.extend(ps))
        .ok();
    let outbound = OutboundAuth::resolve(&c.outbound, secrets)
        .map_err(|why| problems.push(Problem::new(path, "outbound.token_env", why)))
        .ok();
    let timeout = match c.timeout.as_deref().map(parse_duration) {
        None => Duration::from_secs(10),
        Some(Ok(d)) if d.is_positive() => d.unsigned_abs(),
        Some(Ok(_)) => {
            problems.push(Problem::new(path, "timeout", "must be longer than zero"));
            Duration::from_secs(10)
        }
        Some(Err(why)) => {
            problems.push(Problem::new(path, "timeout", why));
            Duration::from_secs(10)
        }
    };
    if problems.len() != before {
        return None;
    }
    Some(ConnectorSettings {
        id: c.id.clone(),
        kind: c.kind.clone(),
        file: path.to_path_buf(),
        base_url: base_url?,
        inbound: Arc::new(inbound?),
        outbound: outbound?,
        confirm_approvals: c.confirm_approvals.unwrap_or(true),
        timeout,
        options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::secrets::MapSecrets;

    /// The problems `validate` finds in `[server]` for this file text.
    fn server_problems(text: &str) -> Vec<Problem> {
        let file = Path::new("jitbridge.toml");
        let raw = parse_main(file, text, &HashMap::new()).expect("parses");
        match validate(
            file,
            Path::new("."),
            &raw,
            &[],
            &[],
            &MapSecrets::default(),
            &PolicyFiles::default(),
        ) {
            Ok(_) => Vec::new(),
            Err(Problems(all)) => all
                .into_iter()
                .filter(|p| p.key.starts_with("server."))
                .collect(),
        }
    }

    #[test]
    fn built_in_server_defaults_are_valid() {
        let file = Path::new("jitbridge.toml");
        let raw = parse_main(file, "", &HashMap::new()).unwrap();
        let secrets = MapSecrets::default();
        let config = validate(
            file,
            Path::new("."),
            &raw,
            &[],
            &[],
            &secrets,
            &PolicyFiles::default(),
        )
        .expect("valid");
        assert_eq!(config.server.header_timeout, Duration::from_secs(10));
        assert_eq!(config.server.request_timeout, Duration::from_secs(10));
        assert_eq!(config.server.max_connections, 1024);
    }

    #[test]
    fn out_of_bounds_connection_limits_are_refused_with_their_keys() {
        let problems = server_problems(
            "[server]\nheader_timeout = \"10m\"\nmax_connections = 0\nrequest_timeout = \"0s\"\n",
        );
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"server.header_timeout"), "{keys:?}");
        assert!(keys.contains(&"server.max_connections"), "{keys:?}");
        assert!(keys.contains(&"server.request_timeout"), "{keys:?}");
        let too_many = server_problems("[server]\nmax_connections = 1000000\n");
        assert_eq!(too_many.len(), 1, "{too_many:?}");
        assert!(too_many[0].why.contains("65536"), "{too_many:?}");
    }

    #[test]
    fn a_misspelt_server_key_is_an_error_not_a_default() {
        let err = parse_main(
            Path::new("jitbridge.toml"),
            "[server]\nmax_conections = 10\n",
            &HashMap::new(),
        )
        .expect_err("unknown key refused");
        assert!(
            err.0.iter().any(|p| p.why.contains("max_conections")),
            "{err:?}"
        );
    }
}
