//! The daemon as a real child process (`jitbridge serve`), for tests that must crash it for
//! real: `SIGKILL`, or a failpoint that aborts it. It listens on a fixed port chosen once, so
//! senders and the Jira simulator keep one URL across restarts; its store lives in the
//! configuration directory and survives every restart.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jitbridge::store::sqlite::SqliteStore;
use jitbridge_sim::jira::{JiraSim, JiraSimConfig, users};
use jitbridge_sim::receiver::ElevationReceiver;

use crate::harness::{ADMIN_TOKEN, ELEVATION_SECRET, WEBHOOK_SECRET};

/// The `jitbridge` binary with the Jira test configuration's secrets and nothing else in its
/// environment.
fn command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_jitbridge"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("JIRA_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("JIRA_API_TOKEN", users::API_TOKEN)
        .env("ELEVATION_WEBHOOK_SECRET", ELEVATION_SECRET)
        .env("TEST_ADMIN_TOKEN", ADMIN_TOKEN);
    c
}

/// A fresh configuration directory, the Jira simulator and the elevation receiver: what a
/// daemon process is started against (they outlive its crashes).
pub async fn simulators() -> (tempfile::TempDir, JiraSim, ElevationReceiver) {
    let dir = tempfile::tempdir().expect("tempdir");
    let jira = JiraSim::start(JiraSimConfig::default())
        .await
        .expect("jira");
    let receiver = ElevationReceiver::start(ELEVATION_SECRET)
        .await
        .expect("receiver");
    (dir, jira, receiver)
}

/// A `jitbridge serve` child process, restartable on the same store and port.
pub struct DaemonProcess {
    config: PathBuf,
    port: u16,
    child: Option<Child>,
    /// The thread copying the process's stderr into `logs` (done at the process's end).
    reader: Option<std::thread::JoinHandle<()>>,
    /// Everything the process wrote to stderr, across restarts.
    pub logs: Arc<Mutex<String>>,
}

impl DaemonProcess {
    /// Rewrites the `listen` lines of `config` to one free port (chosen now, kept for life).
    pub fn new(config: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let text = std::fs::read_to_string(config).expect("read config");
        let text = text.replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        );
        std::fs::write(config, text).expect("write config");
        Self {
            config: config.to_owned(),
            port,
            child: None,
            reader: None,
            logs: Arc::default(),
        }
    }

    /// `http://127.0.0.1:<port>/webhooks/jira`.
    pub fn jira_webhook_url(&self) -> String {
        format!("http://127.0.0.1:{}/webhooks/jira", self.port)
    }

    /// Starts the process with `failpoints` armed (comma-separated; empty: none) and waits until
    /// it says it is running. Panics if it does not come up in time.
    pub async fn start(&mut self, failpoints: &str) {
        assert!(self.child.is_none(), "already running");
        let mut child = command()
            .env("RUST_LOG", "info")
            .env("JITBRIDGE_FAILPOINTS", failpoints)
            .args(["serve", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn jitbridge");
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let stderr = child.stderr.take().expect("stderr");
        let logs = self.logs.clone();
        self.reader = Some(std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("jitbridge is running")
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
                let mut l = logs.lock().unwrap_or_else(|p| p.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        }));
        self.child = Some(child);
        let up = tokio::time::timeout(Duration::from_secs(60), ready_rx).await;
        assert!(
            matches!(up, Ok(Ok(()))),
            "daemon did not start; logs:\n{}",
            self.logs()
        );
    }

    /// `SIGKILL`, then reaps the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_reader();
    }

    /// Waits for the stderr copy to reach the end of the (ended) process's output.
    fn join_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// Waits until the process ends by itself (a failpoint aborted it); `false` on timeout.
    pub async fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            let exited = match self.child.as_mut() {
                Some(c) => c.try_wait().expect("try_wait").is_some(),
                None => true,
            };
            if exited {
                self.child = None;
                self.join_reader();
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// What the process logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the process (`SIGKILL`) and opens its store to read the ledger.
    pub async fn stop_and_open_store(&mut self) -> SqliteStore {
        self.kill();
        let db = self
            .config
            .parent()
            .expect("config dir")
            .join("data/jitbridge.db");
        SqliteStore::open(&db).await.expect("open store")
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `d` until the daemon answers 2xx: every other answer, timeout or connection error is
/// retried with the same bytes and delivery id. Returns the number of attempts.
pub async fn send_until_acked(
    http: &reqwest::Client,
    url: &str,
    d: &jitbridge_sim::jira::Delivery,
) -> u64 {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut req = http.post(url).timeout(Duration::from_secs(5));
        for (k, v) in &d.headers {
            req = req.header(k, v);
        }
        match req.body(d.body.clone()).send().await {
            Ok(r) if r.status().is_success() => return attempts,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
