//! A stateful Jira Cloud / Jira Service Management simulator.
//!
//! It serves the REST endpoints jitbridge's Jira connector uses (issue, transitions, comments in
//! v2 and v3, JSM approvals, `myself`) with Jira's shapes, status codes and error envelopes
//! (`itsm-wire-formats.md` §1), keeps issues moving through a configurable workflow, and emits
//! signed webhooks with Jira's headers and retry policy whenever something changes — through the
//! API or through this handle, which plays the humans (requester, approver, agent).
//!
//! Fault injection ([`JiraSim::rate_limit`], [`JiraSim::outage`]) and the request log
//! ([`JiraSim::requests`]) let tests prove that a client honours `Retry-After` and never hammers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), jitbridge_sim::SimError> {
//! use jitbridge_sim::jira::{ApprovalSpec, JiraSim, JiraSimConfig, NewIssue, users};
//! let jira = JiraSim::start(JiraSimConfig::default()).await?;
//! jira.add_webhook("http://127.0.0.1:8080/webhooks/jira", Some("s3cret")).await;
//! let created = jira
//!     .create_issue(NewIssue::new(users::ALICE, "Local admin on WS-042")
//!         .field("customfield_10060", "WS-042".into())
//!         .approval(ApprovalSpec::any_of(&[users::BOB])))
//!     .await?;
//! jira.approve(&created.key, users::BOB).await?; // answers the approval and runs "Approve"
//! # Ok(()) }
//! ```

pub mod adf;
mod api;
mod control;
pub mod model;
pub mod webhook;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

pub use model::{
    Approval, ApprovalSpec, ChangeItem, Decision, History, Status, StatusCategory, Transition,
    User, Workflow, ids,
};
pub use webhook::{Delivery, DeliveryResponse, RetryPolicy, WebhookTarget};

use crate::error::SimError;
use crate::server::ServerTask;
use model::{Comment, Issue, Site};

/// Most request-log entries and deliveries kept; the oldest are dropped first.
pub const MAX_LOG_ENTRIES: usize = 10_000;
/// Most issues one simulator holds.
pub const MAX_ISSUES: usize = 10_000;
/// Most comments per issue.
pub const MAX_COMMENTS_PER_ISSUE: usize = 1_000;
/// Jira's limit on a comment's length, in characters.
pub const MAX_COMMENT_CHARS: usize = 32_767;

/// Account ids of the seeded default users, so tests read like the story they tell.
pub mod users {
    /// Alice, the requester (alice@example.com).
    pub const ALICE: &str = "712020:a11ce000-0000-4000-8000-000000000001";
    /// Bob, the approver (bob@example.com).
    pub const BOB: &str = "5b10ac8d82e05b22cc7d4ef5";
    /// Carol, a helpdesk agent (carol@example.com).
    pub const CAROL: &str = "5b10ac8d82e05b22cc7d4ca1";
    /// The jitbridge service account that calls the API (jitbridge@example.com).
    pub const JITBRIDGE: &str = "557058:f00dcafe-0000-4000-8000-00000000b07";
    /// The default API user's email.
    pub const API_EMAIL: &str = "jitbridge@example.com";
    /// The default API token for [`API_EMAIL`].
    pub const API_TOKEN: &str = "test-api-token";
}

/// A Basic-auth credential (`email:api_token`) the simulated site accepts.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// The account's email.
    pub email: String,
    /// The API token.
    pub token: String,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("email", &self.email)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Everything that shapes a simulated site.
#[derive(Debug, Clone)]
pub struct JiraSimConfig {
    /// Where to listen; `127.0.0.1:0` picks a free port.
    pub listen: SocketAddr,
    /// The site's users.
    pub users: Vec<User>,
    /// Accepted API credentials; the email must belong to a user.
    pub api_tokens: Vec<ApiToken>,
    /// The workflow of the single issue type.
    pub workflow: Workflow,
    /// Project key (issue keys are `<key>-N`).
    pub project_key: String,
    /// Project id.
    pub project_id: String,
    /// Project name.
    pub project_name: String,
    /// Issue type id.
    pub issue_type_id: String,
    /// Issue type name.
    pub issue_type_name: String,
    /// The `sd-approvals` custom field id (varies per real site).
    pub approvals_field: String,
    /// The JSM request-type custom field id (varies per real site).
    pub request_type_field: String,
    /// How many unused `customfield_1xxxx: null` fields each issue carries, like the real thing.
    pub null_custom_fields: u32,
    /// Whether changes made through the REST API emit webhooks (real Jira does).
    pub emit_webhooks_for_api: bool,
    /// Hide `emailAddress` of users in issue bodies, as Cloud privacy settings can.
    pub hide_emails: bool,
    /// Serve the unauthenticated `/_sim/...` control API (for the demo binary; never in prod).
    pub control_api: bool,
    /// Webhook targets registered from the start.
    pub webhooks: Vec<WebhookTarget>,
    /// Webhook retry behaviour.
    pub retry: RetryPolicy,
}

impl Default for JiraSimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            users: vec![
                User::new(users::ALICE, "alice@example.com", "Alice Requester"),
                User::new(users::BOB, "bob@example.com", "Bob Approver"),
                User::new(users::CAROL, "carol@example.com", "Carol Agent"),
                User::new(users::JITBRIDGE, users::API_EMAIL, "jitbridge"),
            ],
            api_tokens: vec![ApiToken {
                email: users::API_EMAIL.to_owned(),
                token: users::API_TOKEN.to_owned(),
            }],
            workflow: Workflow::elevation_request(),
            project_key: "ACCESS".to_owned(),
            project_id: "10002".to_owned(),
            project_name: "Access Requests".to_owned(),
            issue_type_id: "10008".to_owned(),
            issue_type_name: "Elevation Request".to_owned(),
            approvals_field: "customfield_10027".to_owned(),
            request_type_field: "customfield_10010".to_owned(),
            null_custom_fields: 40,
            emit_webhooks_for_api: true,
            hide_emails: false,
            control_api: false,
            webhooks: Vec::new(),
            retry: RetryPolicy::default(),
        }
    }
}

/// A new issue, as a requester would raise it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewIssue {
    /// Reporter account id.
    pub reporter: String,
    /// Summary.
    pub summary: String,
    /// Plain-text description.
    pub description: Option<String>,
    /// Other fields, typically `customfield_*`.
    pub fields: Map<String, Value>,
    /// Assignee account id.
    pub assignee: Option<String>,
    /// A JSM approval, making this a request "with approvals".
    pub approval: Option<ApprovalSpec>,
}

impl NewIssue {
    /// An issue raised by `reporter` with `summary`.
    pub fn new(reporter: &str, summary: &str) -> Self {
        Self {
            reporter: reporter.to_owned(),
            summary: summary.to_owned(),
            description: None,
            fields: Map::new(),
            assignee: None,
            approval: None,
        }
    }

    /// Sets the description.
    pub fn description(mut self, text: &str) -> Self {
        self.description = Some(text.to_owned());
        self
    }

    /// Sets a field (e.g. `customfield_10060`).
    pub fn field(mut self, id: &str, value: Value) -> Self {
        self.fields.insert(id.to_owned(), value);
        self
    }

    /// Sets the assignee.
    pub fn assignee(mut self, account_id: &str) -> Self {
        self.assignee = Some(account_id.to_owned());
        self
    }

    /// Adds a JSM approval.
    pub fn approval(mut self, spec: ApprovalSpec) -> Self {
        self.approval = Some(spec);
        self
    }
}

/// What an action did: the issue it touched and the webhooks it emitted.
#[derive(Debug, Clone)]
pub struct ActionOutcome {
    /// Issue key.
    pub key: String,
    /// The new comment's id, for comment actions.
    pub comment_id: Option<String>,
    /// One delivery per registered webhook target (empty when none are registered).
    pub deliveries: Vec<Delivery>,
}

/// A comment as a human reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommentSnapshot {
    /// Comment id.
    pub id: String,
    /// Author account id.
    pub author: String,
    /// Author display name.
    pub author_name: String,
    /// The body flattened to plain text.
    pub text: String,
    /// When it was written.
    pub created: Timestamp,
}

/// An issue as tests assert on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IssueSnapshot {
    /// Numeric id as a string.
    pub id: String,
    /// Key.
    pub key: String,
    /// Current status name.
    pub status: String,
    /// Current status id.
    pub status_id: String,
    /// Current status category key.
    pub status_category: String,
    /// Summary.
    pub summary: String,
    /// Reporter account id.
    pub reporter: String,
    /// The `fields` object of the REST v3 representation.
    pub fields: Value,
    /// Comments, oldest first.
    pub comments: Vec<CommentSnapshot>,
    /// JSM approvals.
    pub approvals: Vec<Approval>,
    /// Changelog, oldest first.
    pub history: Vec<History>,
}

/// One API request the simulator answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Status answered.
    pub status: u16,
    /// Wall-clock time of arrival.
    pub at: Timestamp,
    /// Monotonic time of arrival (tokio clock, so paused-time tests work).
    #[serde(skip)]
    pub instant: Instant,
}

/// How long an injected fault lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultWindow {
    /// The next N API requests.
    Requests(u32),
    /// Every API request for this long.
    For(Duration),
    /// Until [`JiraSim::clear_faults`].
    UntilCleared,
}

/// Why Jira says it is limiting (`RateLimit-Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitReason {
    /// `jira-cost-based`.
    CostBased,
    /// `jira-quota-based`.
    QuotaBased,
}

impl RateLimitReason {
    fn as_str(self) -> &'static str {
        match self {
            RateLimitReason::CostBased => "jira-cost-based",
            RateLimitReason::QuotaBased => "jira-quota-based",
        }
    }
}

/// A 429 rate limit to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// How long it lasts.
    pub window: FaultWindow,
    /// `Retry-After` seconds. For [`FaultWindow::For`] the header instead counts down the time
    /// left in the window (at least 1), so retrying early gets "the same or longer" wait.
    pub retry_after_secs: u64,
    /// `X-RateLimit-Limit`.
    pub limit: u32,
    /// `RateLimit-Reason`.
    pub reason: RateLimitReason,
}

impl RateLimit {
    /// 429 for the next `n` requests with `Retry-After: retry_after_secs`.
    pub fn next(n: u32, retry_after_secs: u64) -> Self {
        Self {
            window: FaultWindow::Requests(n),
            retry_after_secs,
            limit: 100,
            reason: RateLimitReason::CostBased,
        }
    }

    /// 429 for every request during `duration`.
    pub fn for_duration(duration: Duration) -> Self {
        Self {
            window: FaultWindow::For(duration),
            retry_after_secs: duration.as_secs().max(1),
            limit: 100,
            reason: RateLimitReason::CostBased,
        }
    }
}

/// A 503 outage to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// How long it lasts.
    pub window: FaultWindow,
    /// Optional `Retry-After` seconds (some real 503s carry one).
    pub retry_after_secs: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
enum Remaining {
    Requests(u32),
    Until(Instant),
    Forever,
}

impl Remaining {
    fn from_window(window: FaultWindow) -> Self {
        match window {
            FaultWindow::Requests(n) => Remaining::Requests(n),
            FaultWindow::For(d) => Remaining::Until(Instant::now() + d),
            FaultWindow::UntilCleared => Remaining::Forever,
        }
    }

    /// Consumes one request; returns whether the fault applies to it.
    fn take(&mut self, now: Instant) -> bool {
        match self {
            Remaining::Requests(0) => false,
            Remaining::Requests(n) => {
                *n -= 1;
                true
            }
            Remaining::Until(end) => now < *end,
            Remaining::Forever => true,
        }
    }
}

#[derive(Debug, Default)]
struct Faults {
    rate_limit: Option<(RateLimit, Remaining)>,
    outage: Option<(Outage, Remaining)>,
}

/// The answer to inject for one request, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InjectedFault {
    RateLimited {
        retry_after: u64,
        reset: Timestamp,
        limit: u32,
        reason: &'static str,
    },
    Unavailable {
        retry_after: Option<u64>,
    },
}

/// A webhook body waiting to be delivered.
pub(crate) struct PendingEvent {
    pub event: &'static str,
    pub body: Value,
}

pub(crate) struct State {
    users: Vec<User>,
    tokens: Vec<ApiToken>,
    workflow: Workflow,
    issues: Vec<Issue>,
    next_issue: u64,
    next_id: u64,
    webhooks: Vec<WebhookTarget>,
    api_webhooks: bool,
    deliveries: VecDeque<Delivery>,
    requests: VecDeque<RequestRecord>,
    faults: Faults,
    next_delivery: u64,
}

/// Immutable site facts plus the mutable state; shared by the handle and the HTTP routers.
pub(crate) struct Core {
    base: String,
    project_key: String,
    project_id: String,
    project_name: String,
    issue_type_id: String,
    issue_type_name: String,
    approvals_field: String,
    request_type_field: String,
    null_custom_fields: u32,
    hide_emails: bool,
    retry: RetryPolicy,
    client: reqwest::Client,
    state: Mutex<State>,
}

fn push_bounded<T>(log: &mut VecDeque<T>, item: T) {
    if log.len() >= MAX_LOG_ENTRIES {
        log.pop_front();
    }
    log.push_back(item);
}

impl State {
    fn issue_index(&self, key_or_id: &str) -> Result<usize, SimError> {
        self.issues
            .iter()
            .position(|i| i.key.eq_ignore_ascii_case(key_or_id) || i.id.to_string() == key_or_id)
            .ok_or_else(|| SimError::UnknownIssue(key_or_id.to_owned()))
    }

    fn user(&self, account_id: &str) -> Result<&User, SimError> {
        self.users
            .iter()
            .find(|u| u.account_id == account_id)
            .ok_or_else(|| SimError::UnknownUser(account_id.to_owned()))
    }

    fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        self.next_id.to_string()
    }
}

impl Core {
    fn site(&self) -> Site<'_> {
        Site {
            base: &self.base,
            project_id: &self.project_id,
            project_key: &self.project_key,
            project_name: &self.project_name,
            issue_type_id: &self.issue_type_id,
            issue_type_name: &self.issue_type_name,
            approvals_field: &self.approvals_field,
            request_type_field: &self.request_type_field,
            hide_emails: self.hide_emails,
        }
    }

    /// The account id authenticated by a Basic `email:token` pair, if valid.
    pub(crate) async fn authenticate(&self, email: &str, token: &str) -> Option<String> {
        let state = self.state.lock().await;
        let valid = state.tokens.iter().any(|t| {
            // Compare every credential fully so timing does not reveal which part was wrong.
            let email_ok = constant_time_eq(t.email.as_bytes(), email.as_bytes());
            let token_ok = constant_time_eq(t.token.as_bytes(), token.as_bytes());
            email_ok & token_ok
        });
        if !valid {
            return None;
        }
        state
            .users
            .iter()
            .find(|u| u.email.eq_ignore_ascii_case(email))
            .map(|u| u.account_id.clone())
    }

    /// Decides whether an injected fault answers this request.
    pub(crate) async fn take_fault(&self) -> Option<InjectedFault> {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        if let Some((outage, remaining)) = state.faults.outage.as_mut()
            && remaining.take(now)
        {
            return Some(InjectedFault::Unavailable {
                retry_after: outage.retry_after_secs,
            });
        }
        if let Some((limit, remaining)) = state.faults.rate_limit.as_mut()
            && remaining.take(now)
        {
            let retry_after = match remaining {
                Remaining::Until(end) => {
                    let left = end.saturating_duration_since(now);
                    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                    secs.max(1)
                }
                _ => limit.retry_after_secs,
            };
            let reset = Timestamp::now()
                .checked_add(jiff::SignedDuration::from_secs(
                    i64::try_from(retry_after).unwrap_or(i64::MAX / 2),
                ))
                .unwrap_or(Timestamp::MAX);
            return Some(InjectedFault::RateLimited {
                retry_after,
                reset,
                limit: limit.limit,
                reason: limit.reason.as_str(),
            });
        }
        None
    }

    pub(crate) async fn record_request(&self, record: RequestRecord) {
        push_bounded(&mut self.state.lock().await.requests, record);
    }

    /// Builds a webhook body for issue `idx` in the REST v2 representation. Each argument is a
    /// part of Jira's envelope, so they stay separate rather than bundled for the lint's sake.
    #[allow(clippy::too_many_arguments)]
    fn event_body(
        &self,
        state: &State,
        idx: usize,
        event: &'static str,
        type_name: &str,
        actor: Option<&str>,
        changelog: Option<&History>,
        comment: Option<&Comment>,
    ) -> Option<PendingEvent> {
        let issue = state.issues.get(idx)?;
        let site = self.site();
        let mut body = Map::new();
        body.insert("timestamp".into(), Timestamp::now().as_millisecond().into());
        body.insert("webhookEvent".into(), event.into());
        body.insert("issue_event_type_name".into(), type_name.into());
        if let Some(actor) = actor {
            body.insert(
                "user".into(),
                model::account_json(&state.users, actor, &self.base, 2, self.hide_emails),
            );
        }
        body.insert(
            "issue".into(),
            issue.json(&state.users, &state.workflow, &site, 2, actor.unwrap_or("")),
        );
        if let Some(history) = changelog {
            let items: Vec<Value> = history.items.iter().map(ChangeItem::json).collect();
            body.insert(
                "changelog".into(),
                json!({"id": history.id, "items": items}),
            );
        }
        if let Some(comment) = comment {
            body.insert(
                "comment".into(),
                comment.json(&state.users, &self.base, issue.id, 2),
            );
        }
        Some(PendingEvent {
            event,
            body: Value::Object(body),
        })
    }

    /// Creates an issue; returns its key and the `jira:issue_created` event.
    pub(crate) async fn create_issue(
        &self,
        new: NewIssue,
    ) -> Result<(String, Option<PendingEvent>), SimError> {
        let mut state = self.state.lock().await;
        if state.issues.len() >= MAX_ISSUES {
            return Err(SimError::InvalidInput("too many issues".into()));
        }
        state.user(&new.reporter)?;
        if let Some(a) = &new.assignee {
            state.user(a)?;
        }
        let now = Timestamp::now();
        let mut approvals = Vec::new();
        if let Some(spec) = new.approval {
            approvals.push(pending_approval(&mut state, spec, now)?);
        }
        let mut fields = Map::new();
        for n in 0..self.null_custom_fields {
            fields.insert(format!("customfield_{}", 10100 + n), Value::Null);
        }
        fields.extend(new.fields);
        state.next_issue += 1;
        let key = format!("{}-{}", self.project_key, state.next_issue);
        let id = 10_000 + state.next_issue;
        let status_id = state.workflow.initial().to_owned();
        state.issues.push(Issue {
            id,
            key: key.clone(),
            status_id,
            reporter: new.reporter.clone(),
            assignee: new.assignee,
            summary: new.summary,
            description: new.description,
            created: now,
            updated: now,
            status_changed: now,
            fields,
            comments: Vec::new(),
            history: Vec::new(),
            approvals,
        });
        let idx = state.issues.len() - 1;
        let event = self.event_body(
            &state,
            idx,
            "jira:issue_created",
            "issue_created",
            Some(&new.reporter),
            None,
            None,
        );
        Ok((key, event))
    }

    /// Runs transition `transition` (id, or name, case-insensitive) as `actor`.
    pub(crate) async fn transition(
        &self,
        key: &str,
        transition: &str,
        actor: &str,
    ) -> Result<Option<PendingEvent>, SimError> {
        let mut state = self.state.lock().await;
        let idx = state.issue_index(key)?;
        state.user(actor)?;
        self.transition_locked(&mut state, idx, transition, actor)
    }

    fn transition_locked(
        &self,
        state: &mut State,
        idx: usize,
        transition: &str,
        actor: &str,
    ) -> Result<Option<PendingEvent>, SimError> {
        let issue = state
            .issues
            .get(idx)
            .ok_or_else(|| SimError::UnknownIssue(idx.to_string()))?;
        let from_id = issue.status_id.clone();
        let from_name = state
            .workflow
            .status(&from_id)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let chosen = state
            .workflow
            .available(&from_id)
            .into_iter()
            .find(|t| t.id == transition || t.name.eq_ignore_ascii_case(transition))
            .cloned()
            .ok_or_else(|| SimError::TransitionNotAvailable {
                key: issue.key.clone(),
                transition: transition.to_owned(),
                status: from_name.clone(),
            })?;
        let to_name = state
            .workflow
            .status(&chosen.to)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let history = History {
            id: state.fresh_id(),
            author: Some(actor.to_owned()),
            created: Timestamp::now(),
            items: vec![ChangeItem {
                field: "status".into(),
                fieldtype: "jira".into(),
                field_id: "status".into(),
                from: Some(from_id),
                from_string: Some(from_name),
                to: Some(chosen.to.clone()),
                to_string: Some(to_name),
            }],
        };
        let issue = state
            .issues
            .get_mut(idx)
            .ok_or_else(|| SimError::UnknownIssue(idx.to_string()))?;
        issue.status_id = chosen.to;
        issue.updated = history.created;
        issue.status_changed = history.created;
        issue.history.push(history.clone());
        Ok(self.event_body(
            state,
            idx,
            "jira:issue_updated",
            "issue_generic",
            Some(actor),
            Some(&history),
            None,
        ))
    }

    /// Adds a comment (ADF body) as `actor`.
    pub(crate) async fn comment(
        &self,
        key: &str,
        actor: &str,
        body: Value,
    ) -> Result<(String, Option<PendingEvent>), SimError> {
        adf::validate(&body).map_err(|e| SimError::InvalidInput(e.0))?;
        if adf::to_plain_text(&body).chars().count() > MAX_COMMENT_CHARS {
            return Err(SimError::InvalidInput(
                "The entered text is too long. It exceeds the allowed limit of 32,767 characters."
                    .into(),
            ));
        }
        let mut state = self.state.lock().await;
        let idx = state.issue_index(key)?;
        state.user(actor)?;
        let id = state.fresh_id();
        let comment = Comment {
            id: id.clone(),
            author: actor.to_owned(),
            body,
            created: Timestamp::now(),
        };
        let issue = state
            .issues
            .get_mut(idx)
            .ok_or_else(|| SimError::UnknownIssue(key.to_owned()))?;
        if issue.comments.len() >= MAX_COMMENTS_PER_ISSUE {
            return Err(SimError::InvalidInput(
                "too many comments on this issue".into(),
            ));
        }
        issue.comments.push(comment.clone());
        issue.updated = comment.created;
        let event = self.event_body(
            &state,
            idx,
            "jira:issue_updated",
            "issue_commented",
            Some(actor),
            None,
            Some(&comment),
        );
        Ok((id, event))
    }

    /// Sets a field as `actor`, recording a changelog item.
    pub(crate) async fn set_field(
        &self,
        key: &str,
        field: &str,
        value: Value,
        actor: &str,
    ) -> Result<Option<PendingEvent>, SimError> {
        let mut state = self.state.lock().await;
        let idx = state.issue_index(key)?;
        state.user(actor)?;
        let history_id = state.fresh_id();
        let issue = state
            .issues
            .get_mut(idx)
            .ok_or_else(|| SimError::UnknownIssue(key.to_owned()))?;
        let display = |v: &Value| match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
        let old = if field == "summary" {
            let old = Value::String(issue.summary.clone());
            issue.summary = display(&value).unwrap_or_default();
            old
        } else {
            issue
                .fields
                .insert(field.to_owned(), value.clone())
                .unwrap_or(Value::Null)
        };
        let custom = field.starts_with("customfield_");
        let history = History {
            id: history_id,
            author: Some(actor.to_owned()),
            created: Timestamp::now(),
            items: vec![ChangeItem {
                field: field.to_owned(),
                fieldtype: if custom { "custom" } else { "jira" }.to_owned(),
                field_id: field.to_owned(),
                from: None,
                from_string: display(&old),
                to: None,
                to_string: display(&value),
            }],
        };
        issue.updated = history.created;
        issue.history.push(history.clone());
        Ok(self.event_body(
            &state,
            idx,
            "jira:issue_updated",
            "issue_updated",
            Some(actor),
            Some(&history),
            None,
        ))
    }

    /// Records `actor`'s answer on a pending approval (a specific one, or the first where the actor
    /// is a pending approver) and, when that decides it, runs the approval's transition.
    /// Returns the approval id and the event.
    pub(crate) async fn answer_approval(
        &self,
        key: &str,
        approval_id: Option<&str>,
        actor: &str,
        approve: bool,
    ) -> Result<(String, Option<PendingEvent>), SimError> {
        let mut state = self.state.lock().await;
        let idx = state.issue_index(key)?;
        state.user(actor)?;
        let now = Timestamp::now();
        let issue = state
            .issues
            .get_mut(idx)
            .ok_or_else(|| SimError::UnknownIssue(key.to_owned()))?;
        let no_pending = || SimError::NoPendingApproval {
            key: key.to_owned(),
            account_id: actor.to_owned(),
        };
        let approval = issue
            .approvals
            .iter_mut()
            .find(|a| {
                approval_id.is_none_or(|id| a.id == id)
                    && a.final_decision == Decision::Pending
                    && a.approvers
                        .iter()
                        .any(|(who, d)| who == actor && *d == Decision::Pending)
            })
            .ok_or_else(no_pending)?;
        for (who, decision) in approval.approvers.iter_mut() {
            if who == actor {
                *decision = if approve {
                    Decision::Approved
                } else {
                    Decision::Declined
                };
            }
        }
        let approvals_given = approval
            .approvers
            .iter()
            .filter(|(_, d)| *d == Decision::Approved)
            .count();
        let transition = if !approve {
            approval.final_decision = Decision::Declined;
            Some(approval.decline_transition.clone())
        } else if approvals_given >= approval.required {
            approval.final_decision = Decision::Approved;
            Some(approval.approve_transition.clone())
        } else {
            None
        };
        if transition.is_some() {
            approval.completed = Some(now);
        }
        let approval_id = approval.id.clone();
        issue.updated = now;
        let event = match transition {
            Some(t) => match self.transition_locked(&mut state, idx, &t, actor) {
                Ok(event) => event,
                // The configured transition is not available from the current status: the
                // decision is still recorded, as JSM does; nothing else changes.
                Err(SimError::TransitionNotAvailable { .. }) => None,
                Err(other) => return Err(other),
            },
            None => None,
        };
        Ok((approval_id, event))
    }

    /// Adds a new pending approval to the issue (as JSM does when an issue enters an approval
    /// step again) and runs `transition` as `actor`.
    pub(crate) async fn request_approval(
        &self,
        key: &str,
        spec: ApprovalSpec,
        transition: &str,
        actor: &str,
    ) -> Result<Option<PendingEvent>, SimError> {
        let mut state = self.state.lock().await;
        let idx = state.issue_index(key)?;
        state.user(actor)?;
        let now = Timestamp::now();
        let approval = pending_approval(&mut state, spec, now)?;
        let issue = state
            .issues
            .get_mut(idx)
            .ok_or_else(|| SimError::UnknownIssue(key.to_owned()))?;
        issue.approvals.push(approval);
        issue.updated = now;
        self.transition_locked(&mut state, idx, transition, actor)
    }

    /// Delivers `event` to every target and records the deliveries.
    pub(crate) async fn emit(&self, event: Option<PendingEvent>) -> Vec<Delivery> {
        let Some(event) = event else {
            return Vec::new();
        };
        let body = match serde_json::to_vec(&event.body) {
            Ok(b) => b,
            Err(_) => return Vec::new(),
        };
        let targets = {
            let mut state = self.state.lock().await;
            state
                .webhooks
                .clone()
                .into_iter()
                .map(|t| {
                    state.next_delivery += 1;
                    let id = format!("{:08x}-{}", std::process::id(), state.next_delivery);
                    (t, id)
                })
                .collect::<Vec<_>>()
        };
        let mut deliveries = Vec::new();
        for (target, id) in targets {
            let delivery = webhook::deliver(
                &self.client,
                &self.retry,
                &target,
                id,
                event.event.to_owned(),
                body.clone(),
            )
            .await;
            deliveries.push(delivery);
        }
        let mut state = self.state.lock().await;
        for d in &deliveries {
            push_bounded(&mut state.deliveries, d.clone());
        }
        deliveries
    }

    /// Emits in the background when API-triggered emission is on (the API answers first, as
    /// Jira's asynchronous webhooks do).
    pub(crate) async fn emit_for_api(self: &Arc<Self>, event: Option<PendingEvent>) {
        if !self.state.lock().await.api_webhooks {
            return;
        }
        let core = Arc::clone(self);
        tokio::spawn(async move {
            core.emit(event).await;
        });
    }

    pub(crate) async fn snapshot(&self, key: &str) -> Result<IssueSnapshot, SimError> {
        let state = self.state.lock().await;
        let idx = state.issue_index(key)?;
        let issue = state
            .issues
            .get(idx)
            .ok_or_else(|| SimError::UnknownIssue(key.to_owned()))?;
        let status = state.workflow.status(&issue.status_id);
        let full = issue.json(&state.users, &state.workflow, &self.site(), 3, "");
        let comments = issue
            .comments
            .iter()
            .map(|c| CommentSnapshot {
                id: c.id.clone(),
                author: c.author.clone(),
                author_name: state
                    .user(&c.author)
                    .map(|u| u.display_name.clone())
                    .unwrap_or_default(),
                text: adf::to_plain_text(&c.body),
                created: c.created,
            })
            .collect();
        Ok(IssueSnapshot {
            id: issue.id.to_string(),
            key: issue.key.clone(),
            status: status.map(|s| s.name.clone()).unwrap_or_default(),
            status_id: issue.status_id.clone(),
            status_category: status
                .map(|s| s.category.key().to_owned())
                .unwrap_or_default(),
            summary: issue.summary.clone(),
            reporter: issue.reporter.clone(),
            fields: full.get("fields").cloned().unwrap_or(Value::Null),
            comments,
            approvals: issue.approvals.clone(),
            history: issue.history.clone(),
        })
    }
}

/// Constant-time byte comparison for API tokens.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// A running Jira simulator. Dropping it stops the server.
pub struct JiraSim {
    core: Arc<Core>,
    server: ServerTask,
}

impl std::fmt::Debug for JiraSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JiraSim")
            .field("base_url", &self.core.base)
            .finish_non_exhaustive()
    }
}

impl JiraSim {
    /// Starts a simulator with `config`.
    pub async fn start(config: JiraSimConfig) -> Result<Self, SimError> {
        for t in &config.api_tokens {
            if !config
                .users
                .iter()
                .any(|u| u.email.eq_ignore_ascii_case(&t.email))
            {
                return Err(SimError::UnknownUser(t.email.clone()));
            }
        }
        let client = webhook::client(&config.retry)?;
        let mut built: Option<Arc<Core>> = None;
        let server = ServerTask::spawn(config.listen, |addr| {
            let core = Arc::new(Core {
                base: format!("http://{addr}"),
                project_key: config.project_key,
                project_id: config.project_id,
                project_name: config.project_name,
                issue_type_id: config.issue_type_id,
                issue_type_name: config.issue_type_name,
                approvals_field: config.approvals_field,
                request_type_field: config.request_type_field,
                null_custom_fields: config.null_custom_fields,
                hide_emails: config.hide_emails,
                retry: config.retry,
                client,
                state: Mutex::new(State {
                    users: config.users,
                    tokens: config.api_tokens,
                    workflow: config.workflow,
                    issues: Vec::new(),
                    next_issue: 0,
                    next_id: 20_000,
                    webhooks: config.webhooks,
                    api_webhooks: config.emit_webhooks_for_api,
                    deliveries: VecDeque::new(),
                    requests: VecDeque::new(),
                    faults: Faults::default(),
                    next_delivery: 0,
                }),
            });
            let mut router = api::router(core.clone());
            if config.control_api {
                router = router.merge(control::router(core.clone()));
            }
            built = Some(core);
            router
        })
        .await?;
        let core = built.ok_or_else(|| SimError::Http("server did not start".into()))?;
        Ok(Self { core, server })
    }

    /// The site's base URL, e.g. `http://127.0.0.1:41234` (what jitbridge's `base_url` should be).
    pub fn base_url(&self) -> &str {
        &self.core.base
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Registers a webhook target; `secret` makes deliveries carry `X-Hub-Signature`.
    pub async fn add_webhook(&self, url: &str, secret: Option<&str>) {
        self.core.state.lock().await.webhooks.push(WebhookTarget {
            url: url.to_owned(),
            secret: secret.map(str::to_owned),
        });
    }

    /// Removes every webhook target.
    pub async fn clear_webhooks(&self) {
        self.core.state.lock().await.webhooks.clear();
    }

    /// Turns webhook emission for changes made through the REST API on or off.
    pub async fn set_api_webhooks(&self, enabled: bool) {
        self.core.state.lock().await.api_webhooks = enabled;
    }

    /// Raises an issue (emits `jira:issue_created`, awaiting delivery).
    pub async fn create_issue(&self, new: NewIssue) -> Result<ActionOutcome, SimError> {
        let (key, event) = self.core.create_issue(new).await?;
        let deliveries = self.core.emit(event).await;
        Ok(ActionOutcome {
            key,
            comment_id: None,
            deliveries,
        })
    }

    /// Runs a transition (by id or name) as `actor`.
    pub async fn transition(
        &self,
        key: &str,
        transition: &str,
        actor: &str,
    ) -> Result<ActionOutcome, SimError> {
        let event = self.core.transition(key, transition, actor).await?;
        Ok(self.outcome(key, None, event).await)
    }

    /// Moves the issue to the status named `status` through whichever transition leads there.
    pub async fn transition_to(
        &self,
        key: &str,
        status: &str,
        actor: &str,
    ) -> Result<ActionOutcome, SimError> {
        let transition = {
            let state = self.core.state.lock().await;
            let idx = state.issue_index(key)?;
            let current = state
                .issues
                .get(idx)
                .map(|i| i.status_id.clone())
                .unwrap_or_default();
            let target = state.workflow.status_named(status).map(|s| s.id.clone());
            state
                .workflow
                .available(&current)
                .into_iter()
                .find(|t| Some(&t.to) == target.as_ref())
                .map(|t| t.id.clone())
                .ok_or_else(|| SimError::TransitionNotAvailable {
                    key: key.to_owned(),
                    transition: format!("to {status}"),
                    status: state
                        .workflow
                        .status(&current)
                        .map(|s| s.name.clone())
                        .unwrap_or_default(),
                })?
        };
        self.transition(key, &transition, actor).await
    }

    /// Adds a plain-text comment as `actor` (stored as ADF).
    pub async fn comment(
        &self,
        key: &str,
        actor: &str,
        text: &str,
    ) -> Result<ActionOutcome, SimError> {
        let (id, event) = self
            .core
            .comment(key, actor, adf::from_plain_text(text))
            .await?;
        Ok(self.outcome(key, Some(id), event).await)
    }

    /// Approves `actor`'s pending JSM approval; when that decides it, the approval's transition
    /// runs as `actor` and `jira:issue_updated` is emitted with the status change.
    pub async fn approve(&self, key: &str, actor: &str) -> Result<ActionOutcome, SimError> {
        let (_, event) = self.core.answer_approval(key, None, actor, true).await?;
        Ok(self.outcome(key, None, event).await)
    }

    /// Declines `actor`'s pending JSM approval (runs the decline transition).
    pub async fn decline(&self, key: &str, actor: &str) -> Result<ActionOutcome, SimError> {
        let (_, event) = self.core.answer_approval(key, None, actor, false).await?;
        Ok(self.outcome(key, None, event).await)
    }

    /// Asks for approval again: a new pending JSM approval from `spec`, then `transition` (by id
    /// or name) as `actor`, emitting `jira:issue_updated` with the status change.
    pub async fn request_approval(
        &self,
        key: &str,
        spec: ApprovalSpec,
        transition: &str,
        actor: &str,
    ) -> Result<ActionOutcome, SimError> {
        let event = self
            .core
            .request_approval(key, spec, transition, actor)
            .await?;
        Ok(self.outcome(key, None, event).await)
    }

    /// Sets a field as `actor` (emits `jira:issue_updated` with a changelog item).
    pub async fn set_field(
        &self,
        key: &str,
        field: &str,
        value: Value,
        actor: &str,
    ) -> Result<ActionOutcome, SimError> {
        let event = self.core.set_field(key, field, value, actor).await?;
        Ok(self.outcome(key, None, event).await)
    }

    async fn outcome(
        &self,
        key: &str,
        comment_id: Option<String>,
        event: Option<PendingEvent>,
    ) -> ActionOutcome {
        ActionOutcome {
            key: key.to_owned(),
            comment_id,
            deliveries: self.core.emit(event).await,
        }
    }

    /// The issue as it is now.
    pub async fn issue(&self, key: &str) -> Result<IssueSnapshot, SimError> {
        self.core.snapshot(key).await
    }

    /// The issue's comments as plain text, oldest first.
    pub async fn comments(&self, key: &str) -> Result<Vec<CommentSnapshot>, SimError> {
        Ok(self.core.snapshot(key).await?.comments)
    }

    /// Every delivery made so far (handle- and API-triggered), oldest first.
    pub async fn deliveries(&self) -> Vec<Delivery> {
        self.core
            .state
            .lock()
            .await
            .deliveries
            .iter()
            .cloned()
            .collect()
    }

    /// Every REST request answered so far (not the `/_sim` control API), oldest first.
    pub async fn requests(&self) -> Vec<RequestRecord> {
        self.core
            .state
            .lock()
            .await
            .requests
            .iter()
            .cloned()
            .collect()
    }

    /// Forgets the request log.
    pub async fn clear_requests(&self) {
        self.core.state.lock().await.requests.clear();
    }

    /// Injects a 429 rate limit (replacing any previous one).
    pub async fn rate_limit(&self, limit: RateLimit) {
        self.core.state.lock().await.faults.rate_limit =
            Some((limit, Remaining::from_window(limit.window)));
    }

    /// Injects a 503 outage (replacing any previous one).
    pub async fn outage(&self, outage: Outage) {
        self.core.state.lock().await.faults.outage =
            Some((outage, Remaining::from_window(outage.window)));
    }

    /// Removes every injected fault.
    pub async fn clear_faults(&self) {
        self.core.state.lock().await.faults = Faults::default();
    }

    /// Sends a recorded delivery again, byte for byte with the same headers (a duplicate, or a
    /// replay when done late). One attempt, no retries.
    pub async fn resend(&self, delivery: &Delivery) -> DeliveryResponse {
        webhook::send_once(
            &self.core.client,
            &delivery.url,
            &delivery.headers,
            &delivery.body,
            0,
        )
        .await
    }

    /// Sends arbitrary headers and body (e.g. a tampered copy of a delivery). One attempt.
    pub async fn send_raw(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> DeliveryResponse {
        webhook::send_once(&self.core.client, url, headers, body, 0).await
    }

    /// Sends `body` with fresh Jira headers, signed with `secret` when given (e.g. a forgery
    /// signed with the wrong secret). One attempt; the result is recorded like any delivery.
    pub async fn send_signed(&self, url: &str, secret: Option<&str>, body: &[u8]) -> Delivery {
        let id = {
            let mut state = self.core.state.lock().await;
            state.next_delivery += 1;
            format!("{:08x}-{}", std::process::id(), state.next_delivery)
        };
        let headers = webhook::first_headers(&id, secret, body);
        let response = webhook::send_once(&self.core.client, url, &headers, body, 0).await;
        let event = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| {
                v.get("webhookEvent")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let delivery = Delivery {
            id,
            url: url.to_owned(),
            event,
            headers,
            body: body.to_vec(),
            responses: vec![response],
        };
        push_bounded(
            &mut self.core.state.lock().await.deliveries,
            delivery.clone(),
        );
        delivery
    }

    /// Stops the server and waits for in-flight requests.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// A new, undecided approval from `spec`, created at `now`; every approver must be a user.
fn pending_approval(
    state: &mut State,
    spec: ApprovalSpec,
    now: Timestamp,
) -> Result<Approval, SimError> {
    for a in &spec.approvers {
        state.user(a)?;
    }
    if spec.approvers.is_empty() || spec.required == 0 {
        return Err(SimError::InvalidInput(
            "an approval needs approvers and required >= 1".into(),
        ));
    }
    Ok(Approval {
        id: state.fresh_id(),
        name: spec.name,
        final_decision: Decision::Pending,
        approvers: spec
            .approvers
            .into_iter()
            .map(|a| (a, Decision::Pending))
            .collect(),
        required: spec.required,
        approve_transition: spec.approve_transition,
        decline_transition: spec.decline_transition,
        created: now,
        completed: None,
    })
}

#[cfg(test)]
mod tests;
