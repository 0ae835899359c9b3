//! The servers under load, each in its own process so they never share a runtime with the load
//! generator and so their memory can be read from `/proc`:
//! - `bare`: axum answering 200 to any POST (the cost of HTTP alone);
//! - `hmac`: axum verifying `X-Hub-Signature` and answering 202 without storing (the upper
//!   bound for any durable receiver);
//! - `webhook`: Debian's adnanh/webhook with a `payload-hmac-sha256` rule running `/bin/true`
//!   (the do-it-yourself route), when `/usr/bin/webhook` exists;
//! - `store-only`: the HMAC baseline that also commits each delivery through jitbridge's SQLite
//!   inbox writer before its 202, and does nothing else (no inbox worker, no mappings): the
//!   ceiling for any receiver durable on this store, on this disk;
//! - `jitbridge`: the real daemon (`config::load` + `app::start_with_store`) on a store in a
//!   temporary directory.
//!
//! The bare and HMAC baselines and jitbridge run as `jitbridge-bench serve …` children of the
//! driver. A child prints `READY <addr> <clock offset ms>` once listening and exits when its
//! stdin closes, so a dying driver never leaves servers behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Path of adnanh/webhook as Debian installs it.
pub const WEBHOOK_BIN: &str = "/usr/bin/webhook";
/// Longest a target may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A running target process.
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
    /// Path requests go to.
    pub path: String,
    /// Wall time from spawning the process until it answered as ready.
    pub ready_after: Duration,
    /// The target's clock minus real time, in ms (non-zero only for a shifted jitbridge clock).
    pub clock_offset_ms: i64,
    /// Whether closing stdin stops it (our own children) or it must be killed (webhook).
    stops_on_stdin: bool,
    child: Child,
}

impl Target {
    /// Resident set size of the process now, in bytes (from `/proc/<pid>/status`).
    pub fn rss_bytes(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// Stops the process (closing its stdin asks it to shut down; a kill follows if it lingers).
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if !self.stops_on_stdin {
            let _ = self.child.kill().await;
            return;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Which in-process server a `serve` child runs.
#[derive(Debug, Clone)]
pub enum ServeKind {
    Bare,
    Hmac {
        secret: String,
    },
    /// The HMAC check, then an insert into jitbridge's SQLite inbox (group commit as in `args`).
    StoreOnly(JitbridgeArgs),
    Jitbridge(JitbridgeArgs),
}

/// How a jitbridge (or store-only) child runs; also its `serve` command line.
#[derive(Debug, Clone, clap::Args)]
pub struct JitbridgeArgs {
    /// Directory with `jitbridge.toml`, `connectors/` and `mappings/`.
    #[arg(long)]
    pub dir: PathBuf,
    /// Group commit: most rows per batch (1 = one commit per delivery, the "before").
    #[arg(long, default_value_t = 128)]
    pub max_batch: usize,
    /// Group commit window, microseconds.
    #[arg(long, default_value_t = 0)]
    pub window_us: u64,
    /// Virtual time the daemon's clock shows when it starts (unix ms), for expiry runs whose
    /// deadlines were seeded ahead of time; `None` runs on real time.
    #[arg(long, allow_negative_numbers = true)]
    pub epoch_ms: Option<i64>,
}

impl JitbridgeArgs {
    /// Appends these arguments to a `serve` command line.
    fn push_to(&self, cmd: &mut Command) {
        cmd.arg("--dir")
            .arg(&self.dir)
            .args(["--max-batch", &self.max_batch.to_string()])
            .args(["--window-us", &self.window_us.to_string()]);
        if let Some(e) = self.epoch_ms {
            cmd.args(["--epoch-ms", &e.to_string()]);
        }
    }
}

/// Spawns `jitbridge-bench serve …` and waits for its READY line.
pub async fn spawn_self(name: &str, kind: &ServeKind, path: &str) -> anyhow::Result<Target> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve");
    match kind {
        ServeKind::Bare => {
            cmd.arg("bare");
        }
        ServeKind::Hmac { secret } => {
            cmd.args(["hmac", "--secret", secret]);
        }
        ServeKind::StoreOnly(a) => a.push_to(cmd.arg("store-only")),
        ServeKind::Jitbridge(a) => a.push_to(cmd.arg("jitbridge")),
    }
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("spawning a serve child")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
        .await
        .with_context(|| format!("{name} did not start within {START_TIMEOUT:?}"))??
        .with_context(|| format!("{name} exited before it was ready"))?;
    let mut parts = line.split_whitespace();
    let (Some("READY"), Some(addr), Some(offset)) = (parts.next(), parts.next(), parts.next())
    else {
        bail!("{name} printed {line:?} instead of READY");
    };
    Ok(Target {
        name: name.to_owned(),
        addr: addr.parse().context("READY address")?,
        path: path.to_owned(),
        ready_after: started.elapsed(),
        clock_offset_ms: offset.parse().context("READY offset")?,
        stops_on_stdin: true,
        child,
    })
}

/// Starts adnanh/webhook on a free loopback port with an HMAC rule, if it is installed.
pub async fn spawn_webhook(dir: &Path, secret: &str) -> anyhow::Result<Option<Target>> {
    if !Path::new(WEBHOOK_BIN).is_file() {
        return Ok(None);
    }
    let hooks = serde_json::json!([{
        "id": "jira",
        "execute-command": "/bin/true",
        "response-message": "ok",
        "trigger-rule-mismatch-http-response-code": 401,
        "trigger-rule": {"match": {
            "type": "payload-hmac-sha256",
            "secret": secret,
            "parameter": {"source": "header", "name": "X-Hub-Signature"}
        }}
    }]);
    let hooks_path = dir.join("hooks.json");
    std::fs::write(&hooks_path, hooks.to_string())?;
    // Take a free port, then hand it to webhook (it has no "port 0, tell me" mode).
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let started = Instant::now();
    let child = Command::new(WEBHOOK_BIN)
        .arg("-hooks")
        .arg(&hooks_path)
        .args(["-ip", "127.0.0.1", "-port", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("spawning /usr/bin/webhook")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() >= deadline {
            bail!("webhook did not listen on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Some(Target {
        name: "adnanh/webhook".into(),
        addr,
        path: "/hooks/jira".into(),
        ready_after: started.elapsed(),
        clock_offset_ms: 0,
        stops_on_stdin: false,
        child,
    }))
}
