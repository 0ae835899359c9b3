//! The CLI commands that are not the daemon itself. `grants`, `outbox` and `audit` talk to the
//! running daemon's admin API (the daemon holds the store); `audit verify` and `grants list`
//! read the store directly when no daemon is running.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use secrecy::ExposeSecret;
use serde_json::Value;

use jitbridge::config::{ProcessEnv, SecretSource};

/// Where the admin API of the daemon configured by `config` listens, and its token.
struct AdminClient {
    base: String,
    token: Option<secrecy::SecretString>,
    token_env: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    fn from_config(config: &Path) -> Result<Self> {
        let raw = jitbridge::config::load::read_main(config, &jitbridge::config::process_env())
            .map_err(|p| anyhow!("{p}"))?;
        let listen = raw
            .admin
            .listen
            .clone()
            .unwrap_or(raw.server.listen.clone());
        let token = raw
            .admin
            .token_env
            .as_deref()
            .and_then(|v| ProcessEnv.get(v));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            base: format!("http://{listen}"),
            token,
            token_env: raw.admin.token_env,
            http,
        })
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<Result<Value, reqwest::Error>> {
        let Some(token) = &self.token else {
            bail!(
                "the admin token is not set: export the variable named by [admin] token_env{}",
                self.token_env
                    .as_deref()
                    .map(|v| format!(" ({v})"))
                    .unwrap_or_default()
            );
        };
        let resp = match rb.bearer_auth(token.expose_secret()).send().await {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "{status}: {} {}",
                body["error"].as_str().unwrap_or(""),
                body["detail"].as_str().unwrap_or("")
            );
        }
        Ok(Ok(body))
    }

    async fn get(&self, path: &str) -> Result<Result<Value, reqwest::Error>> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Result<Value, reqwest::Error>> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow!(
            "cannot reach the jitbridge daemon at {}: {e} (is `jitbridge serve` running?)",
            self.base
        )
    }
}

/// `jitbridge explain`.
pub fn explain(
    config: &Path,
    connector: &str,
    payload: &Path,
    at: Option<jiff::Timestamp>,
    json: bool,
) -> Result<ExitCode> {
    let cfg = jitbridge::config::load(
        config,
        &jitbridge::config::process_env(),
        &jitbridge::config::DryRunSecrets,
    )
    .map_err(|p| anyhow!("{p}"))?;
    let body =
        std::fs::read(payload).with_context(|| format!("cannot read {}", payload.display()))?;
    let client = jitbridge::app::http_client()?;
    let registry = jitbridge::connectors::Registry::build(&cfg.connectors, &client);
    let Some(reg) = registry.get(connector) else {
        let known: Vec<_> = cfg.connectors.iter().map(|c| c.id.as_str()).collect();
        bail!(
            "no connector {connector:?} in {} (known: {})",
            config.display(),
            known.join(", ")
        );
    };
    let at = at.unwrap_or_else(jiff::Timestamp::now);
    let x = jitbridge::explain::explain(reg, &cfg.mappings, &body, at)
        .map_err(|e| anyhow!("{}: {e}", payload.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&x)?);
    } else {
        print!("{}", jitbridge::explain::render_text(&x));
    }
    Ok(ExitCode::SUCCESS)
}

/// `jitbridge grants list`.
pub async fn grants_list(config: &Path, state: Option<&str>, json: bool) -> Result<ExitCode> {
    let client = AdminClient::from_config(config)?;
    let path = match state {
        Some(s) => format!("/api/v1/grants?state={s}"),
        None => "/api/v1/grants".to_owned(),
    };
    let body = if client.token.is_none() {
        offline_grants(config, state)
            .await
            .context("the admin token is not set, so the store was read directly")?
    } else {
        match client.get(&path).await? {
            Ok(b) => b,
            Err(e) if e.is_connect() => offline_grants(config, state).await.map_err(|off| {
                anyhow!(
                    "{}; reading the store directly failed too: {off}",
                    client.unreachable(e)
                )
            })?,
            Err(e) => return Err(client.unreachable(e)),
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&body["grants"])?);
        return Ok(ExitCode::SUCCESS);
    }
    let grants = body["grants"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<36}  {:<13}  {:<12}  {:<28}  {:<16}  {:<14}  EXPIRES",
        "ID", "STATE", "TICKET", "SUBJECT", "TARGET", "SCOPE"
    );
    for g in &grants {
        println!(
            "{:<36}  {:<13}  {:<12}  {:<28}  {:<16}  {:<14}  {}",
            g["id"].as_str().unwrap_or(""),
            g["state"].as_str().unwrap_or(""),
            g["ticket"]["key"].as_str().unwrap_or(""),
            g["subject"].as_str().unwrap_or(""),
            g["target"].as_str().unwrap_or(""),
            g["scope"].as_str().unwrap_or(""),
            g["expires_at"].as_str().unwrap_or("-"),
        );
    }
    println!("{} grant(s)", grants.len());
    Ok(ExitCode::SUCCESS)
}

async fn open_offline(config: &Path) -> Result<std::sync::Arc<dyn jitbridge::store::Store>> {
    let raw = jitbridge::config::load::read_main(config, &jitbridge::config::process_env())
        .map_err(|p| anyhow!("{p}"))?;
    let base = config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let location = jitbridge::config::load::store_location(&raw.store.url, base)
        .map_err(|why| anyhow!("{}: store.url: {why}", config.display()))?;
    Ok(jitbridge::app::open_store(
        &location,
        std::sync::Arc::new(jitbridge::clock::SystemClock),
    )
    .await?)
}

async fn offline_grants(config: &Path, state: Option<&str>) -> Result<Value> {
    let store = open_offline(config).await?;
    let state = state
        .map(|s| s.parse::<jitbridge::grants::GrantState>())
        .transpose()?;
    let grants = store
        .list_grants(&jitbridge::store::GrantFilter {
            state,
            limit: Some(5000),
            ..Default::default()
        })
        .await?;
    eprintln!("(the daemon is not running: read from the store directly)");
    Ok(serde_json::json!({"grants": grants}))
}

/// `jitbridge grants revoke`.
pub async fn grants_revoke(config: &Path, id: &str, reason: &str) -> Result<ExitCode> {
    let client = AdminClient::from_config(config)?;
    let body = client
        .post(
            &format!("/api/v1/grants/{id}/revoke"),
            serde_json::json!({"reason": reason}),
        )
        .await?
        .map_err(|e| client.unreachable(e))?;
    println!(
        "grant {} is now {}",
        body["id"].as_str().unwrap_or(id),
        body["state"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}

/// `jitbridge outbox list`.
pub async fn outbox_list(config: &Path, state: &str, json: bool) -> Result<ExitCode> {
    let client = AdminClient::from_config(config)?;
    let body = client
        .get(&format!("/api/v1/outbox?state={state}"))
        .await?
        .map_err(|e| client.unreachable(e))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&body["jobs"])?);
        return Ok(ExitCode::SUCCESS);
    }
    let jobs = body["jobs"].as_array().cloned().unwrap_or_default();
    for j in &jobs {
        println!(
            "{}  {:<9}  {:<7}  attempts={}  {}  last_error={}",
            j["id"].as_str().unwrap_or(""),
            j["lane"].as_str().unwrap_or(""),
            j["state"].as_str().unwrap_or(""),
            j["attempts"],
            j["queue_key"].as_str().unwrap_or(""),
            j["last_error"].as_str().unwrap_or("-")
        );
    }
    println!("{} job(s)", jobs.len());
    Ok(ExitCode::SUCCESS)
}

/// `jitbridge outbox retry`.
pub async fn outbox_retry(config: &Path, id: &str) -> Result<ExitCode> {
    let client = AdminClient::from_config(config)?;
    client
        .post(&format!("/api/v1/outbox/{id}/retry"), Value::Null)
        .await?
        .map_err(|e| client.unreachable(e))?;
    println!("job {id} is queued again");
    Ok(ExitCode::SUCCESS)
}

/// `jitbridge audit verify`.
pub async fn audit_verify(config: &Path) -> Result<ExitCode> {
    let client = AdminClient::from_config(config)?;
    let result = if client.token.is_none() {
        let store = open_offline(config)
            .await
            .context("the admin token is not set, so the store was read directly")?;
        jitbridge::admin::verify_audit(store.as_ref()).await?
    } else {
        match client.get("/api/v1/audit/verify").await? {
            Ok(b) => b,
            Err(e) if e.is_connect() => {
                let store = open_offline(config).await.map_err(|off| {
                    anyhow!(
                        "{}; reading the store directly failed too: {off}",
                        client.unreachable(e)
                    )
                })?;
                jitbridge::admin::verify_audit(store.as_ref()).await?
            }
            Err(e) => return Err(client.unreachable(e)),
        }
    };
    if result["ok"].as_bool() == Some(true) {
        println!("audit chain intact: {} record(s)", result["records"]);
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "AUDIT CHAIN BROKEN: {}",
            result["error"].as_str().unwrap_or("unknown")
        );
        Ok(ExitCode::from(2))
    }
}

/// `jitbridge audit export --ticket KEY`.
pub async fn audit_export(config: &Path, ticket: &str) -> Result<ExitCode> {
    let client = AdminClient::from_config(config)?;
    let records: Vec<Value> = if client.token.is_none() {
        let store = open_offline(config)
            .await
            .context("the admin token is not set, so the store was read directly")?;
        let story = jitbridge::admin::ticket_story(store.as_ref(), ticket).await?;
        story
            .into_iter()
            .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
            .collect()
    } else {
        let path = format!("/api/v1/audit?ticket={}", urlencode(ticket));
        let body = match client.get(&path).await? {
            Ok(b) => b,
            Err(e) if e.is_connect() => {
                let store = open_offline(config).await.map_err(|off| {
                    anyhow!(
                        "{}; reading the store directly failed too: {off}",
                        client.unreachable(e)
                    )
                })?;
                let story = jitbridge::admin::ticket_story(store.as_ref(), ticket).await?;
                serde_json::json!({"records": story})
            }
            Err(e) => return Err(client.unreachable(e)),
        };
        body["records"].as_array().cloned().unwrap_or_default()
    };
    for r in &records {
        println!("{}", serde_json::to_string(r)?);
    }
    eprintln!("{} record(s) for {ticket}", records.len());
    Ok(ExitCode::SUCCESS)
}

/// Percent-encodes a query value (ticket keys are plain, but never trust that).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
