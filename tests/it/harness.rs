//! Test infrastructure. [`Daemon`] runs the real daemon (own SQLite store in a temporary
//! directory, real listeners on 127.0.0.1:0) with an elevation receiver as its provider, for any
//! connector files; [`Harness`] adds the Jira simulator wired to it. Both offer the waits and
//! looks that scenario tests need.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jitbridge::app::Running;
use jitbridge::config::MapSecrets;
use jitbridge::grants::{Grant, GrantState};
use jitbridge::store::{GrantFilter, Store};
use jitbridge_sim::jira::{JiraSim, JiraSimConfig, NewIssue, users};
use jitbridge_sim::receiver::ElevationReceiver;
use serde_json::json;

pub const WEBHOOK_SECRET: &str = "test-jira-webhook-secret";
pub const ELEVATION_SECRET: &str = "whsec_dGVzdC1lbGV2YXRpb24tc2VjcmV0LWtleQ==";
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Knobs of the generated configuration.
#[derive(Clone)]
pub struct Options {
    /// Extra lines for `[workers]`.
    pub workers: String,
    /// The mapping file.
    pub mapping: String,
    /// Extra tables for `jitbridge.toml` (`[scopes.…]`, `[identity]`).
    pub main_extra: String,
    /// Extra files (path relative to the config directory, text), e.g. the identity map.
    pub files: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: "retry_initial = \"100ms\"\nretry_max = \"1s\"\nrevoke_retry_max = \"500ms\"\nrevoke_alarm_after = 3\napply_window = \"30s\"\n".into(),
            mapping: MAPPING.into(),
            main_extra: String::new(),
            files: Vec::new(),
        }
    }
}

/// The DESIGN.md mapping, with writebacks for every state the tests look at and the simulator's
/// status names ("Done" is its resolved status).
pub const MAPPING: &str = r#"
[[mapping]]
name = "helpdesk-local-admin"
connector = "jira"
when = 'ticket.type == "Elevation Request" && fields.customfield_10050.value == "Local admin"'

[mapping.grant]
subject  = "{{ requester.email }}"
target   = "{{ fields.customfield_10060 }}"
scope    = "local-admin"
duration = "{{ fields.customfield_10070 | default('60m') }}"
max_duration = "4h"
provider = "endpoint-agent"

[mapping.on]
approve = { status = ["Approved"] }
deny    = { status = ["Declined"] }
revoke  = { status = ["Done", "Cancelled"] }

[mapping.policy]
distinct_approver = true
requesters = ["*@example.com"]
targets = ["WS-*", "LT-*"]

[mapping.writeback]
active  = { comment = "Local admin granted to {{ grant.subject }} on {{ grant.target }} until {{ grant.expires_at }}.", status = "In Progress" }
expired = { comment = "Local admin on {{ grant.target }} expired and was revoked.", status = "Done" }
revoked = { comment = "Local admin on {{ grant.target }} revoked: {{ reason }}." }
denied  = { comment = "Elevation refused: {{ reason }}." }
failed  = { comment = "Elevation could not be applied: {{ reason }}." }
cancelled = { comment = "Request cancelled before approval." }
revoke_failed = { comment = "ALERT: revoking local admin on {{ grant.target }} keeps failing; retrying." }
"#;

/// What a test varies beyond the generated files.
#[derive(Clone, Default)]
pub struct Tuning {
    /// `JITBRIDGE__SECTION__KEY` overrides of `jitbridge.toml` (e.g. `[server]` limits).
    pub env: Vec<(&'static str, String)>,
    /// SQLite's busy timeout, when the store's default is too long for the test.
    pub busy_timeout: Option<Duration>,
}

/// The real daemon with an elevation receiver, configured from connector and mapping texts.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub receiver: ElevationReceiver,
    pub daemon: Option<Running>,
    pub http: reqwest::Client,
    pub config_path: PathBuf,
    secrets: MapSecrets,
    tuning: Tuning,
}

impl Daemon {
    /// Writes the configuration (`connectors`: file name → text) and starts the daemon.
    /// `secrets` are added to the receiver and admin secrets every test daemon has.
    pub async fn start(
        connectors: &[(&str, String)],
        opts: &Options,
        secrets: &[(&str, &str)],
    ) -> Self {
        Self::start_tuned(connectors, opts, secrets, Tuning::default()).await
    }

    /// Like [`Daemon::start`], with [`Tuning`].
    pub async fn start_tuned(
        connectors: &[(&str, String)],
        opts: &Options,
        secrets: &[(&str, &str)],
        tuning: Tuning,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let receiver = ElevationReceiver::start(ELEVATION_SECRET)
            .await
            .expect("receiver");
        let config_path = write_main_config(dir.path(), &receiver, opts);
        for (name, text) in connectors {
            std::fs::write(dir.path().join("connectors").join(name), text)
                .expect("write connector");
        }
        let mut all = vec![
            ("ELEVATION_WEBHOOK_SECRET", ELEVATION_SECRET),
            ("TEST_ADMIN_TOKEN", ADMIN_TOKEN),
        ];
        all.extend_from_slice(secrets);
        let mut d = Self {
            dir,
            receiver,
            daemon: None,
            http: reqwest::Client::new(),
            config_path,
            secrets: MapSecrets::from_pairs(all),
            tuning,
        };
        d.start_daemon().await;
        d
    }

    /// Starts (or restarts) the daemon on the same store.
    pub async fn start_daemon(&mut self) {
        let env: HashMap<String, String> = (self.tuning.env.iter())
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let config = jitbridge::config::load(&self.config_path, &env, &self.secrets)
            .expect("valid test config");
        let clock: jitbridge::clock::SharedClock = Arc::new(jitbridge::clock::SystemClock);
        let running = match (self.tuning.busy_timeout, &config.store) {
            (Some(busy_timeout), jitbridge::config::StoreLocation::Sqlite(path)) => {
                let tuning = jitbridge::store::sqlite::SqliteTuning {
                    busy_timeout,
                    ..Default::default()
                };
                let store = jitbridge::store::sqlite::SqliteStore::open_with_tuning(
                    path,
                    clock.clone(),
                    tuning,
                )
                .await
                .expect("store opens");
                jitbridge::app::start_with_store(config, Arc::new(store), clock).await
            }
            _ => jitbridge::app::start(config, clock).await,
        }
        .expect("daemon starts");
        self.daemon = Some(running);
    }

    /// Stops the daemon (as SIGTERM would).
    pub async fn stop_daemon(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop().await;
        }
    }

    pub fn daemon(&self) -> &Running {
        self.daemon.as_ref().expect("daemon running")
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.daemon().service.store().clone()
    }

    /// `POST /webhooks/{connector}` of the running daemon.
    pub fn webhook_url_for(&self, connector: &str) -> String {
        format!("http://{}/webhooks/{connector}", self.daemon().webhook_addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.daemon().admin_addr)
    }

    /// All grants of a ticket (by key), newest first.
    pub async fn grants(&self, key: &str) -> Vec<Grant> {
        self.store()
            .list_grants(&GrantFilter {
                ticket_key: Some(key.to_owned()),
                ..Default::default()
            })
            .await
            .expect("list grants")
    }

    /// Waits until the ticket's newest grant is in `state`.
    pub async fn wait_state(&self, key: &str, state: GrantState) -> Grant {
        let found = eventually(Duration::from_secs(15), || async {
            self.grants(key)
                .await
                .into_iter()
                .next()
                .filter(|g| g.state == state)
        })
        .await;
        match found {
            Some(g) => g,
            None => {
                let last = self.grants(key).await.into_iter().next().map(|g| g.state);
                panic!("{key}: grant never reached {state}; last state {last:?}")
            }
        }
    }

    /// Lets in-flight work settle (for asserting that something did NOT happen).
    pub async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    /// How many calls of one kind the elevation receiver got.
    pub async fn provider_calls(&self, kind: jitbridge_sim::receiver::CallKind) -> usize {
        self.receiver
            .calls()
            .await
            .into_iter()
            .filter(|c| c.kind == Some(kind))
            .count()
    }

    /// Audit records of one kind.
    pub async fn audit(&self, kind: &str) -> Vec<jitbridge::audit::AuditRecord> {
        self.store()
            .audit_records(0, 10_000)
            .await
            .expect("audit")
            .into_iter()
            .filter(|r| r.record.kind == kind)
            .collect()
    }
}

/// Writes `jitbridge.toml` (provider = `receiver`) and empty `connectors/`, `mappings/` with the
/// mapping of `opts`; returns the config file's path.
pub fn write_main_config(dir: &Path, receiver: &ElevationReceiver, opts: &Options) -> PathBuf {
    std::fs::create_dir_all(dir.join("connectors")).expect("mkdir");
    std::fs::create_dir_all(dir.join("mappings")).expect("mkdir");
    let config_path = dir.join("jitbridge.toml");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 65536

[store]
url = "sqlite://data/jitbridge.db"

[admin]
token_env = "TEST_ADMIN_TOKEN"

[providers.endpoint-agent]
kind = "webhook"
url = "{receiver}"
secret_env = "ELEVATION_WEBHOOK_SECRET"
timeout = "2s"

[workers]
{workers}

{extra}
"#,
        receiver = receiver.url(),
        workers = opts.workers,
        extra = opts.main_extra
    );
    std::fs::write(&config_path, text).expect("write config");
    for (name, body) in &opts.files {
        std::fs::write(dir.join(name), body).expect("write extra file");
    }
    std::fs::write(dir.join("mappings/local-admin.toml"), &opts.mapping).expect("write mapping");
    config_path
}

/// The Jira connector file for a simulator at `base`.
pub fn jira_connector(base: &str) -> String {
    format!(
        r#"
id = "jira"
kind = "jira"
base_url = "{base}"
timeout = "2s"

[inbound]
auth = "hmac-sha256"
secret_env = "JIRA_WEBHOOK_SECRET"

[outbound]
auth = "basic"
username = "{user}"
token_env = "JIRA_API_TOKEN"
"#,
        user = users::API_EMAIL
    )
}

/// Writes the whole Jira configuration into `dir` (for tests that run the binary).
pub fn write_config(
    dir: &Path,
    jira: &JiraSim,
    receiver: &ElevationReceiver,
    opts: &Options,
) -> PathBuf {
    let path = write_main_config(dir, receiver, opts);
    std::fs::write(
        dir.join("connectors/jira.toml"),
        jira_connector(jira.base_url()),
    )
    .expect("write connector");
    path
}

/// The Jira scenarios: a [`Daemon`] plus the Jira simulator, its webhook pointed at the daemon.
pub struct Harness {
    pub d: Daemon,
    pub jira: JiraSim,
}

impl std::ops::Deref for Harness {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.d
    }
}

impl std::ops::DerefMut for Harness {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.d
    }
}

impl Harness {
    /// Simulators plus a running daemon with the default options.
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    /// Simulators plus a running daemon.
    pub async fn start_with(opts: Options) -> Self {
        Self::start_tuned(opts, Tuning::default()).await
    }

    /// Simulators plus a running daemon with [`Tuning`].
    pub async fn start_tuned(opts: Options, tuning: Tuning) -> Self {
        Self::start_full(opts, JiraSimConfig::default(), tuning).await
    }

    /// A running daemon with the Jira simulator configured by `sim` (e.g. another workflow).
    pub async fn start_with_sim(opts: Options, sim: JiraSimConfig) -> Self {
        Self::start_full(opts, sim, Tuning::default()).await
    }

    /// A running daemon with [`Tuning`] and the Jira simulator configured by `sim`.
    pub async fn start_full(opts: Options, sim: JiraSimConfig, tuning: Tuning) -> Self {
        let jira = JiraSim::start(sim).await.expect("jira sim");
        let d = Daemon::start_tuned(
            &[("jira.toml", jira_connector(jira.base_url()))],
            &opts,
            &[
                ("JIRA_WEBHOOK_SECRET", WEBHOOK_SECRET),
                ("JIRA_API_TOKEN", users::API_TOKEN),
            ],
            tuning,
        )
        .await;
        let h = Self { d, jira };
        h.point_webhook().await;
        h
    }

    /// The secrets the Jira test daemon resolves (no process environment is touched).
    pub fn secrets() -> MapSecrets {
        MapSecrets::from_pairs([
            ("JIRA_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("JIRA_API_TOKEN", users::API_TOKEN),
            ("ELEVATION_WEBHOOK_SECRET", ELEVATION_SECRET),
            ("TEST_ADMIN_TOKEN", ADMIN_TOKEN),
        ])
    }

    async fn point_webhook(&self) {
        self.jira.clear_webhooks().await;
        self.jira
            .add_webhook(&self.webhook_url(), Some(WEBHOOK_SECRET))
            .await;
    }

    /// Restarts the daemon on the same store; the simulator follows its new port.
    pub async fn start_daemon(&mut self) {
        self.d.start_daemon().await;
        self.point_webhook().await;
    }

    pub fn webhook_url(&self) -> String {
        self.webhook_url_for("jira")
    }

    /// Raises an elevation request as `reporter`, approvable by `approvers`.
    pub async fn raise(
        &self,
        reporter: &str,
        target: &str,
        duration: &str,
        approvers: &[&str],
    ) -> String {
        let issue = NewIssue::new(reporter, "Need local admin to install a driver")
            .field(
                "customfield_10050",
                json!({"value": "Local admin", "id": "10100"}),
            )
            .field("customfield_10060", json!(target))
            .field("customfield_10070", json!(duration))
            .approval(jitbridge_sim::jira::model::ApprovalSpec::any_of(approvers));
        self.jira
            .create_issue(issue)
            .await
            .expect("issue created")
            .key
    }

    /// The ticket's comments as plain text.
    pub async fn comments(&self, key: &str) -> Vec<String> {
        self.jira
            .comments(key)
            .await
            .expect("comments")
            .into_iter()
            .map(|c| c.text)
            .collect()
    }

    /// Waits until the ticket has a comment containing `needle`.
    pub async fn wait_comment(&self, key: &str, needle: &str) -> Vec<String> {
        eventually(Duration::from_secs(15), || async {
            let c = self.comments(key).await;
            c.iter().any(|t| t.contains(needle)).then_some(c)
        })
        .await
        .unwrap_or_else(|| panic!("{key}: no comment containing {needle:?}"))
    }

    /// Waits until the ticket is in status `name`.
    pub async fn wait_status(&self, key: &str, name: &str) {
        let ok = eventually(Duration::from_secs(15), || async {
            (self.jira.issue(key).await.expect("issue").status == name).then_some(())
        })
        .await;
        assert!(ok.is_some(), "{key}: status never became {name}");
    }
}

/// Polls `f` every 50 ms until it yields `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
