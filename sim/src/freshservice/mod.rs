//! A stateful Freshservice simulator.
//!
//! It serves the API v2 endpoints jitbridge's Freshservice connector uses — tickets (view and
//! `PUT` update), requesters, agents, ticket approvals and notes — behind Basic `<api_key>:X`
//! auth, with the per-minute rate-limit headers on every response, 429 + `Retry-After` when the
//! minute's budget is spent, and `{"description":"Validation failed","errors":[...]}` on bad
//! input (`itsm-wire-formats.md` §3).
//!
//! The handle plays the humans: a requester raises a service request, an agent approves or
//! rejects it or changes its status. Each action runs the Workflow Automator's "Trigger Webhook"
//! with the shared body template — placeholders rendered as text, so numbers arrive quoted — and
//! a shared secret in `X-Api-Key`. [`Rendering::Broken`] renders the template badly (empty
//! `ticket_id`) so parsers can prove they refuse it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), jitbridge_sim::SimError> {
//! use jitbridge_sim::freshservice::{FreshserviceSim, FreshserviceSimConfig, NewServiceRequest, users};
//! let fs = FreshserviceSim::start(FreshserviceSimConfig::default()).await?;
//! fs.add_webhook("http://127.0.0.1:8080/webhooks/freshservice", Some("shared-secret")).await;
//! let ticket = fs
//!     .create_request(NewServiceRequest::new(users::ALICE, "Local admin on WS-0042")
//!         .custom_field("target_device", "WS-0042".into())
//!         .approvers(&[users::BOB]))
//!     .await?;
//! fs.approve(ticket.ticket_id, users::BOB).await?; // emits "approval_updated"
//! # Ok(()) }
//! ```

mod api;
mod control;
pub mod model;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

pub use crate::jira::webhook::{Delivery, DeliveryResponse, RetryPolicy, WebhookTarget};
pub use crate::jira::{FaultWindow, RequestRecord};
pub use model::{Agent, Approval, ApprovalStatus, Note, Requester, Ticket, status};

use crate::error::SimError;
use crate::jira::webhook::send_once;
use crate::server::ServerTask;
use crate::servicenow::webhook::post_with_retries;
use crate::servicenow::{Remaining, constant_time_eq, push_bounded};

/// Most tickets one simulator holds.
pub const MAX_TICKETS: usize = 10_000;
/// Most notes per ticket.
pub const MAX_NOTES_PER_TICKET: usize = 1_000;
/// Longest note body accepted, in characters.
pub const MAX_NOTE_CHARS: usize = 65_000;

/// Ids and emails of the seeded people, so tests read like the story they tell.
pub mod users {
    /// Alice, the requester (alice@example.com).
    pub const ALICE: u64 = 21_000_418_005;
    /// Bob, an agent who approves (bob@example.com).
    pub const BOB: u64 = 21_001_931_878;
    /// Carol, an agent who fulfils (carol@example.com).
    pub const CAROL: u64 = 21_001_931_879;
    /// The agent whose API key jitbridge uses (jitbridge@example.com).
    pub const JITBRIDGE: u64 = 21_001_931_880;
    /// The default API key (sent as Basic `<key>:X`).
    pub const API_KEY: &str = "test-fs-api-key";
}

/// An API key and the agent it belongs to.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The key.
    pub key: String,
    /// The agent acting through it (author of notes).
    pub agent_id: u64,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("key", &"<redacted>")
            .field("agent_id", &self.agent_id)
            .finish()
    }
}

/// How the Workflow Automator's template renders into the webhook body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rendering {
    /// Every placeholder inside quotes, so numbers arrive as strings (the shipped template).
    #[default]
    Quoted,
    /// Numbers unquoted (`"ticket_id": 123`), as an admin may template them.
    Bare,
    /// Rendered badly: empty `ticket_id` and `requester_email`, numbers quoted.
    Broken,
}

/// A 503 outage to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// How long it lasts.
    pub window: FaultWindow,
    /// Optional `Retry-After` seconds.
    pub retry_after_secs: Option<u64>,
}

/// Everything that shapes a simulated helpdesk.
#[derive(Debug, Clone)]
pub struct FreshserviceSimConfig {
    /// Where to listen; `127.0.0.1:0` picks a free port.
    pub listen: SocketAddr,
    /// Requesters.
    pub requesters: Vec<Requester>,
    /// Agents.
    pub agents: Vec<Agent>,
    /// Accepted API keys; each agent must exist.
    pub api_keys: Vec<ApiKey>,
    /// The custom fields every service request has (internal name → default value).
    pub custom_fields: Map<String, Value>,
    /// The account's per-minute budget (`X-RateLimit-Total`).
    pub rate_limit_per_minute: u32,
    /// The budget's window (a minute on the real service; shorter in tests).
    pub rate_window: Duration,
    /// Whether a rejected approval closes the ticket (status 5).
    pub close_on_reject: bool,
    /// Webhook targets registered from the start.
    pub webhooks: Vec<WebhookTarget>,
    /// The header carrying the shared secret.
    pub secret_header: String,
    /// How the body template renders.
    pub rendering: Rendering,
    /// Delivery retry behaviour.
    pub retry: RetryPolicy,
    /// Whether `PUT /tickets/{id}` through the API runs the workflow webhook.
    pub emit_webhooks_for_api: bool,
    /// Serve the unauthenticated `/_sim/...` control API (demo binary only).
    pub control_api: bool,
    /// Custom fields (internal names) the admin added to the webhook body as
    /// `"custom_fields": {"<name>": "{{ticket.<name>}}", ...}`. Rendered as text like every
    /// placeholder (a string as is, a number as its digits, an empty field as `""`). None by
    /// default: the shipped body names the ticket only.
    pub body_custom_fields: Vec<String>,
}

impl Default for FreshserviceSimConfig {
    fn default() -> Self {
        let agent = |id, email: &str, first: &str, last: &str| Agent {
            id,
            email: email.to_owned(),
            first_name: first.to_owned(),
            last_name: last.to_owned(),
        };
        let mut custom_fields = Map::new();
        for name in ["elevation_type", "target_device", "duration"] {
            custom_fields.insert(name.to_owned(), Value::Null);
        }
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            requesters: vec![Requester {
                id: users::ALICE,
                primary_email: "alice@example.com".to_owned(),
                first_name: "Alice".to_owned(),
                last_name: "Requester".to_owned(),
            }],
            agents: vec![
                agent(users::BOB, "bob@example.com", "Bob", "Approver"),
                agent(users::CAROL, "carol@example.com", "Carol", "Agent"),
                agent(users::JITBRIDGE, "jitbridge@example.com", "jitbridge", ""),
            ],
            api_keys: vec![ApiKey {
                key: users::API_KEY.to_owned(),
                agent_id: users::JITBRIDGE,
            }],
            custom_fields,
            rate_limit_per_minute: 100,
            rate_window: Duration::from_secs(60),
            close_on_reject: true,
            webhooks: Vec::new(),
            secret_header: "X-Api-Key".to_owned(),
            rendering: Rendering::Quoted,
            retry: RetryPolicy::default(),
            emit_webhooks_for_api: true,
            control_api: false,
            body_custom_fields: Vec::new(),
        }
    }
}

/// A service request as a requester raises it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewServiceRequest {
    /// The requester's id.
    pub requester_id: u64,
    /// Subject.
    pub subject: String,
    /// HTML description.
    pub description: String,
    /// Custom field values (must be among the configured custom fields).
    pub custom_fields: Map<String, Value>,
    /// Approving agents; none means `Not Requested`.
    pub approvers: Vec<u64>,
}

impl NewServiceRequest {
    /// A request by `requester_id` with `subject`.
    pub fn new(requester_id: u64, subject: &str) -> Self {
        Self {
            requester_id,
            subject: subject.to_owned(),
            description: format!("<div>{subject}</div>"),
            custom_fields: Map::new(),
            approvers: Vec::new(),
        }
    }

    /// Sets a custom field.
    pub fn custom_field(mut self, name: &str, value: Value) -> Self {
        self.custom_fields.insert(name.to_owned(), value);
        self
    }

    /// Sets the three elevation fields `elevation_type`, `target_device`, `duration`.
    pub fn elevation(self, elevation_type: &str, target: &str, duration: &str) -> Self {
        self.custom_field("elevation_type", elevation_type.into())
            .custom_field("target_device", target.into())
            .custom_field("duration", duration.into())
    }

    /// Adds approving agents.
    pub fn approvers(mut self, agents: &[u64]) -> Self {
        self.approvers.extend_from_slice(agents);
        self
    }
}

/// What an action did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The ticket.
    pub ticket_id: u64,
    /// The new note's id, for note actions.
    pub note_id: Option<u64>,
    /// One delivery per registered target (none when no webhook fires or none is registered).
    pub deliveries: Vec<Delivery>,
}

/// Counting state of the per-minute budget.
#[derive(Debug)]
struct Budget {
    total: u32,
    window: Duration,
    used: u32,
    window_end: Instant,
}

/// The rate-limit verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BudgetVerdict {
    pub total: u32,
    pub remaining: u32,
    /// `Some(seconds)` when the budget was already spent.
    pub exceeded: Option<u64>,
}

/// One `429` the API answered: when, on which request, and the `Retry-After` it asked for.
///
/// Exists so tests can prove a client honoured the wait: no request of the
/// [`FreshserviceSim::requests`] log may fall between `instant` and `instant + retry_after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    /// The request's method.
    pub method: String,
    /// The request's path.
    pub path: String,
    /// When the request arrived (the same clock as [`RequestRecord::instant`]).
    pub instant: Instant,
    /// The `Retry-After` sent, in seconds.
    pub retry_after: Duration,
}

/// A webhook waiting to be delivered.
pub(crate) struct PendingEvent {
    pub event: &'static str,
    pub ticket_id: u64,
}

pub(crate) struct State {
    requesters: Vec<Requester>,
    agents: Vec<Agent>,
    keys: Vec<ApiKey>,
    custom_fields: Map<String, Value>,
    tickets: Vec<Ticket>,
    next_ticket: u64,
    next_id: u64,
    close_on_reject: bool,
    webhooks: Vec<WebhookTarget>,
    rendering: Rendering,
    api_webhooks: bool,
    body_custom_fields: Vec<String>,
    deliveries: VecDeque<Delivery>,
    requests: VecDeque<RequestRecord>,
    rate_limited: VecDeque<RateLimited>,
    outage: Option<(Outage, Remaining)>,
    budget: Budget,
    next_delivery: u64,
}

impl State {
    fn ticket_index(&self, id: u64) -> Result<usize, SimError> {
        self.tickets
            .iter()
            .position(|t| t.id == id)
            .ok_or_else(|| SimError::UnknownIssue(id.to_string()))
    }

    fn agent(&self, id: u64) -> Result<&Agent, SimError> {
        self.agents
            .iter()
            .find(|a| a.id == id)
            .ok_or_else(|| SimError::UnknownUser(id.to_string()))
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// A value as a workflow placeholder renders it: text as is, numbers and booleans as their
/// literal, nothing (`null`, or a structure a placeholder cannot print) as the empty string.
fn placeholder_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null | Value::Array(_) | Value::Object(_) => String::new(),
    }
}

/// Immutable facts plus the mutable state; shared by the handle and the routers.
pub(crate) struct Core {
    base: String,
    secret_header: String,
    retry: RetryPolicy,
    client: reqwest::Client,
    state: Mutex<State>,
}

impl Core {
    /// The agent id behind a Basic `<api_key>:<anything>` credential.
    pub(crate) async fn authenticate(&self, key: &str) -> Option<u64> {
        let state = self.state.lock().await;
        let mut found = None;
        for k in &state.keys {
            if constant_time_eq(k.key.as_bytes(), key.as_bytes()) && found.is_none() {
                found = Some(k.agent_id);
            }
        }
        found
    }

    pub(crate) async fn take_outage(&self) -> Option<Option<u64>> {
        let mut state = self.state.lock().await;
        let (outage, remaining) = state.outage.as_mut()?;
        remaining
            .take(Instant::now())
            .then_some(outage.retry_after_secs)
    }

    /// Spends one credit of the account's per-minute budget (failed calls count too).
    pub(crate) async fn spend(&self) -> BudgetVerdict {
        let mut state = self.state.lock().await;
        let budget = &mut state.budget;
        let now = Instant::now();
        if now >= budget.window_end {
            budget.used = 0;
            budget.window_end = now + budget.window;
        }
        if budget.used >= budget.total {
            let left = budget.window_end.saturating_duration_since(now);
            return BudgetVerdict {
                total: budget.total,
                remaining: 0,
                exceeded: Some((left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1)),
            };
        }
        budget.used += 1;
        BudgetVerdict {
            total: budget.total,
            remaining: budget.total - budget.used,
            exceeded: None,
        }
    }

    pub(crate) async fn record_request(&self, record: RequestRecord) {
        push_bounded(&mut self.state.lock().await.requests, record);
    }

    pub(crate) async fn record_rate_limited(&self, record: RateLimited) {
        push_bounded(&mut self.state.lock().await.rate_limited, record);
    }

    /// Renders the webhook body for a ticket as the template would.
    fn body(state: &State, ticket_id: u64, event: &str, rendering: Rendering) -> Option<Value> {
        let ticket = state.tickets.iter().find(|t| t.id == ticket_id)?;
        let email = state
            .requesters
            .iter()
            .find(|r| r.id == ticket.requester_id)
            .map(|r| r.primary_email.clone())
            .unwrap_or_default();
        let updated = model::iso(ticket.updated_at);
        let approval = ticket.approval_status.code();
        let mut body = match rendering {
            Rendering::Quoted => json!({
                "ticket_id": ticket.id.to_string(), "event": event,
                "status": ticket.status.to_string(), "approval_status": approval.to_string(),
                "requester_email": email, "updated_at": updated,
            }),
            Rendering::Bare => json!({
                "ticket_id": ticket.id, "event": event,
                "status": ticket.status, "approval_status": approval,
                "requester_email": email, "updated_at": updated,
            }),
            Rendering::Broken => json!({
                "ticket_id": "", "event": event,
                "status": ticket.status.to_string(), "approval_status": approval.to_string(),
                "requester_email": "", "updated_at": updated,
            }),
        };
        if !state.body_custom_fields.is_empty()
            && let Some(top) = body.as_object_mut()
        {
            let rendered: Map<String, Value> = state
                .body_custom_fields
                .iter()
                .map(|name| {
                    let value = ticket
                        .custom_fields
                        .get(name)
                        .map_or_else(String::new, placeholder_text);
                    (name.clone(), Value::String(value))
                })
                .collect();
            top.insert("custom_fields".to_owned(), Value::Object(rendered));
        }
        Some(body)
    }

    /// Delivers `event` with `rendering` (the configured one when `None`) to every target.
    pub(crate) async fn emit(
        &self,
        event: Option<PendingEvent>,
        rendering: Option<Rendering>,
    ) -> Vec<Delivery> {
        let Some(event) = event else {
            return Vec::new();
        };
        let (body, targets) = {
            let mut state = self.state.lock().await;
            let rendering = rendering.unwrap_or(state.rendering);
            let Some(body) = Self::body(&state, event.ticket_id, event.event, rendering) else {
                return Vec::new();
            };
            let targets = state.webhooks.clone();
            let targets: Vec<_> = targets
                .into_iter()
                .map(|t| {
                    state.next_delivery += 1;
                    (t, format!("fs-{}", state.next_delivery))
                })
                .collect();
            (body, targets)
        };
        let Ok(body) = serde_json::to_vec(&body) else {
            return Vec::new();
        };
        let mut deliveries = Vec::new();
        for (target, id) in targets {
            let headers = self.headers(target.secret.as_deref());
            let delivery = post_with_retries(
                &self.client,
                &self.retry,
                &target.url,
                id,
                event.event.to_owned(),
                headers,
                body.clone(),
            )
            .await;
            push_bounded(&mut self.state.lock().await.deliveries, delivery.clone());
            deliveries.push(delivery);
        }
        deliveries
    }

    fn headers(&self, secret: Option<&str>) -> Vec<(String, String)> {
        let mut headers = vec![
            ("Content-Type".to_owned(), "application/json".to_owned()),
            ("User-Agent".to_owned(), "Freshservice".to_owned()),
        ];
        if let Some(secret) = secret {
            headers.push((self.secret_header.clone(), secret.to_owned()));
        }
        headers
    }

    pub(crate) async fn emit_for_api(self: &Arc<Self>, event: Option<PendingEvent>) {
        if event.is_none() || !self.state.lock().await.api_webhooks {
            return;
        }
        let core = Arc::clone(self);
        tokio::spawn(async move {
            core.emit(event, None).await;
        });
    }

    async fn create_request(&self, new: NewServiceRequest) -> Result<u64, SimError> {
        let mut state = self.state.lock().await;
        if state.tickets.len() >= MAX_TICKETS {
            return Err(SimError::InvalidInput("too many tickets".into()));
        }
        if !state.requesters.iter().any(|r| r.id == new.requester_id) {
            return Err(SimError::UnknownUser(new.requester_id.to_string()));
        }
        for a in &new.approvers {
            state.agent(*a)?;
        }
        let mut custom_fields = state.custom_fields.clone();
        for (k, v) in new.custom_fields {
            if !custom_fields.contains_key(&k) {
                return Err(SimError::InvalidInput(format!("unknown custom field {k}")));
            }
            custom_fields.insert(k, v);
        }
        let now = Timestamp::now();
        let mut approvals = Vec::new();
        for approver_id in new.approvers {
            approvals.push(Approval {
                id: state.fresh_id(),
                approver_id,
                status: ApprovalStatus::Requested,
                created_at: now,
                updated_at: now,
            });
        }
        state.next_ticket += 1;
        let id = state.next_ticket;
        state.tickets.push(Ticket {
            id,
            subject: new.subject,
            description: new.description,
            status: status::OPEN,
            priority: 2,
            requester_id: new.requester_id,
            responder_id: None,
            approval_status: if approvals.is_empty() {
                ApprovalStatus::NotRequested
            } else {
                ApprovalStatus::Requested
            },
            custom_fields,
            tags: Vec::new(),
            approvals,
            notes: Vec::new(),
            created_at: now,
            updated_at: now,
        });
        Ok(id)
    }

    async fn decide(&self, ticket_id: u64, agent: u64, approve: bool) -> Result<(), SimError> {
        let mut state = self.state.lock().await;
        let idx = state.ticket_index(ticket_id)?;
        state.agent(agent)?;
        let close_on_reject = state.close_on_reject;
        let now = Timestamp::now();
        let ticket = state
            .tickets
            .get_mut(idx)
            .ok_or_else(|| SimError::UnknownIssue(ticket_id.to_string()))?;
        let row = ticket
            .approvals
            .iter_mut()
            .find(|a| a.approver_id == agent && a.status == ApprovalStatus::Requested)
            .ok_or_else(|| SimError::NoPendingApproval {
                key: ticket_id.to_string(),
                account_id: agent.to_string(),
            })?;
        row.status = if approve {
            ApprovalStatus::Approved
        } else {
            ApprovalStatus::Rejected
        };
        row.updated_at = now;
        // The first decision decides; the other pending rows are cancelled.
        for other in ticket.approvals.iter_mut() {
            if other.status == ApprovalStatus::Requested {
                other.status = ApprovalStatus::Cancelled;
                other.updated_at = now;
            }
        }
        ticket.approval_status = if approve {
            ApprovalStatus::Approved
        } else {
            ApprovalStatus::Rejected
        };
        if !approve && close_on_reject {
            ticket.status = status::CLOSED;
        }
        ticket.updated_at = now;
        Ok(())
    }

    async fn set_status(&self, ticket_id: u64, code: u8, agent: u64) -> Result<(), SimError> {
        if !status::ALL.contains(&code) {
            return Err(SimError::InvalidInput(format!(
                "status {code} is not one of 2,3,4,5"
            )));
        }
        let mut state = self.state.lock().await;
        let idx = state.ticket_index(ticket_id)?;
        state.agent(agent)?;
        let ticket = state
            .tickets
            .get_mut(idx)
            .ok_or_else(|| SimError::UnknownIssue(ticket_id.to_string()))?;
        ticket.status = code;
        ticket.updated_at = Timestamp::now();
        Ok(())
    }

    /// Adds a note; validates like the API.
    pub(crate) async fn add_note(
        &self,
        ticket_id: u64,
        agent: u64,
        body: &str,
        private: bool,
    ) -> Result<Note, SimError> {
        if body.trim().is_empty() || body.chars().count() > MAX_NOTE_CHARS {
            return Err(SimError::InvalidInput(
                "note body is empty or too long".into(),
            ));
        }
        let mut state = self.state.lock().await;
        let idx = state.ticket_index(ticket_id)?;
        state.agent(agent)?;
        let id = state.fresh_id();
        let ticket = state
            .tickets
            .get_mut(idx)
            .ok_or_else(|| SimError::UnknownIssue(ticket_id.to_string()))?;
        if ticket.notes.len() >= MAX_NOTES_PER_TICKET {
            return Err(SimError::InvalidInput(
                "too many notes on this ticket".into(),
            ));
        }
        let note = Note {
            id,
            body: body.to_owned(),
            body_text: model::html_to_text(body),
            private,
            incoming: false,
            user_id: agent,
            ticket_id,
            created_at: Timestamp::now(),
        };
        ticket.notes.push(note.clone());
        ticket.updated_at = note.created_at;
        Ok(note)
    }
}

/// A running Freshservice simulator. Dropping it stops the server.
pub struct FreshserviceSim {
    core: Arc<Core>,
    server: ServerTask,
}

impl std::fmt::Debug for FreshserviceSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreshserviceSim")
            .field("base_url", &self.core.base)
            .finish_non_exhaustive()
    }
}

impl FreshserviceSim {
    /// Starts a helpdesk with `config`.
    pub async fn start(config: FreshserviceSimConfig) -> Result<Self, SimError> {
        for k in &config.api_keys {
            if !config.agents.iter().any(|a| a.id == k.agent_id) {
                return Err(SimError::UnknownUser(k.agent_id.to_string()));
            }
        }
        let client = crate::jira::webhook::client(&config.retry)?;
        let mut built: Option<Arc<Core>> = None;
        let server = ServerTask::spawn(config.listen, |addr| {
            let core = Arc::new(Core {
                base: format!("http://{addr}"),
                secret_header: config.secret_header,
                retry: config.retry,
                client,
                state: Mutex::new(State {
                    requesters: config.requesters,
                    agents: config.agents,
                    keys: config.api_keys,
                    custom_fields: config.custom_fields,
                    tickets: Vec::new(),
                    next_ticket: 100,
                    next_id: 21_000_140_000,
                    close_on_reject: config.close_on_reject,
                    webhooks: config.webhooks,
                    rendering: config.rendering,
                    api_webhooks: config.emit_webhooks_for_api,
                    body_custom_fields: config.body_custom_fields,
                    deliveries: VecDeque::new(),
                    requests: VecDeque::new(),
                    rate_limited: VecDeque::new(),
                    outage: None,
                    budget: Budget {
                        total: config.rate_limit_per_minute,
                        window: config.rate_window,
                        used: 0,
                        window_end: Instant::now() + config.rate_window,
                    },
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

    /// The helpdesk's base URL (jitbridge's `base_url`).
    pub fn base_url(&self) -> &str {
        &self.core.base
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Registers a webhook target; `secret` is sent in the secret header (`X-Api-Key`).
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

    /// Chooses how the body template renders from now on.
    pub async fn set_rendering(&self, rendering: Rendering) {
        self.core.state.lock().await.rendering = rendering;
    }

    /// Sets the custom fields the webhook body carries under `custom_fields` (see
    /// [`FreshserviceSimConfig::body_custom_fields`]), as an admin editing the template would.
    pub async fn set_body_custom_fields(&self, names: &[&str]) {
        self.core.state.lock().await.body_custom_fields =
            names.iter().map(|n| (*n).to_owned()).collect();
    }

    /// Turns webhooks for `PUT` through the API on or off.
    pub async fn set_api_webhooks(&self, enabled: bool) {
        self.core.state.lock().await.api_webhooks = enabled;
    }

    /// Raises a service request (emits `ticket_created`).
    pub async fn create_request(&self, new: NewServiceRequest) -> Result<Outcome, SimError> {
        let id = self.core.create_request(new).await?;
        self.fire(id, "ticket_created", None).await
    }

    async fn fire(
        &self,
        ticket_id: u64,
        event: &'static str,
        note_id: Option<u64>,
    ) -> Result<Outcome, SimError> {
        let deliveries = self
            .core
            .emit(Some(PendingEvent { event, ticket_id }), None)
            .await;
        Ok(Outcome {
            ticket_id,
            note_id,
            deliveries,
        })
    }

    /// `agent` approves their pending approval (emits `approval_updated`).
    pub async fn approve(&self, ticket_id: u64, agent: u64) -> Result<Outcome, SimError> {
        self.core.decide(ticket_id, agent, true).await?;
        self.fire(ticket_id, "approval_updated", None).await
    }

    /// `agent` rejects (emits `approval_updated`; the ticket closes when `close_on_reject`).
    pub async fn reject(&self, ticket_id: u64, agent: u64) -> Result<Outcome, SimError> {
        self.core.decide(ticket_id, agent, false).await?;
        self.fire(ticket_id, "approval_updated", None).await
    }

    /// `agent` sets the status (2 Open, 3 Pending, 4 Resolved, 5 Closed; emits `status_changed`).
    pub async fn set_status(
        &self,
        ticket_id: u64,
        code: u8,
        agent: u64,
    ) -> Result<Outcome, SimError> {
        self.core.set_status(ticket_id, code, agent).await?;
        self.fire(ticket_id, "status_changed", None).await
    }

    /// `agent` adds a note (no webhook: the shipped workflow does not trigger on notes).
    pub async fn add_note(
        &self,
        ticket_id: u64,
        agent: u64,
        html: &str,
        private: bool,
    ) -> Result<Outcome, SimError> {
        let note = self.core.add_note(ticket_id, agent, html, private).await?;
        Ok(Outcome {
            ticket_id,
            note_id: Some(note.id),
            deliveries: Vec::new(),
        })
    }

    /// Runs the webhook for the ticket's current state with an explicit event and rendering —
    /// e.g. [`Rendering::Broken`] for the "template rendered badly" case.
    pub async fn emit(
        &self,
        ticket_id: u64,
        event: &'static str,
        rendering: Rendering,
    ) -> Result<Vec<Delivery>, SimError> {
        self.core.state.lock().await.ticket_index(ticket_id)?;
        Ok(self
            .core
            .emit(Some(PendingEvent { event, ticket_id }), Some(rendering))
            .await)
    }

    /// The ticket as it is now.
    pub async fn ticket(&self, ticket_id: u64) -> Result<Ticket, SimError> {
        let state = self.core.state.lock().await;
        let idx = state.ticket_index(ticket_id)?;
        state
            .tickets
            .get(idx)
            .cloned()
            .ok_or_else(|| SimError::UnknownIssue(ticket_id.to_string()))
    }

    /// The ticket exactly as `GET /api/v2/tickets/{id}` returns it (inside `{"ticket": ...}`).
    pub async fn api_ticket(&self, ticket_id: u64) -> Result<Value, SimError> {
        Ok(self.ticket(ticket_id).await?.json())
    }

    /// The ticket's notes, oldest first.
    pub async fn notes(&self, ticket_id: u64) -> Result<Vec<Note>, SimError> {
        Ok(self.ticket(ticket_id).await?.notes)
    }

    /// Every delivery made so far, oldest first.
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

    /// Every API request answered so far (not `/_sim`), oldest first.
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

    /// Forgets the request log (and the log of `429` answers).
    pub async fn clear_requests(&self) {
        let mut state = self.core.state.lock().await;
        state.requests.clear();
        state.rate_limited.clear();
    }

    /// Every `429` answered so far with its `Retry-After`, oldest first.
    pub async fn rate_limited(&self) -> Vec<RateLimited> {
        self.core
            .state
            .lock()
            .await
            .rate_limited
            .iter()
            .cloned()
            .collect()
    }

    /// Sets the per-minute budget (and window); the window restarts now with nothing spent.
    pub async fn set_rate_limit(&self, per_window: u32, window: Duration) {
        let mut state = self.core.state.lock().await;
        state.budget = Budget {
            total: per_window,
            window,
            used: 0,
            window_end: Instant::now() + window,
        };
    }

    /// Injects a 503 outage (replacing any previous one).
    pub async fn outage(&self, outage: Outage) {
        self.core.state.lock().await.outage = Some((outage, Remaining::from_window(outage.window)));
    }

    /// Removes the outage.
    pub async fn clear_faults(&self) {
        self.core.state.lock().await.outage = None;
    }

    /// Sends a recorded delivery again, byte for byte with the same headers. One attempt.
    pub async fn resend(&self, delivery: &Delivery) -> DeliveryResponse {
        send_once(
            &self.core.client,
            &delivery.url,
            &delivery.headers,
            &delivery.body,
            0,
        )
        .await
    }

    /// Sends arbitrary headers and body. One attempt.
    pub async fn send_raw(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> DeliveryResponse {
        send_once(&self.core.client, url, headers, body, 0).await
    }

    /// Sends `body` with the workflow's headers and `secret` in the secret header (none when
    /// `None`), e.g. a forgery with the wrong secret. One attempt; recorded like any delivery.
    pub async fn send_signed(&self, url: &str, secret: Option<&str>, body: &[u8]) -> Delivery {
        let id = {
            let mut state = self.core.state.lock().await;
            state.next_delivery += 1;
            format!("fs-{}", state.next_delivery)
        };
        let headers = self.core.headers(secret);
        let response = send_once(&self.core.client, url, &headers, body, 0).await;
        let event = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("event").and_then(Value::as_str).map(str::to_owned))
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

#[cfg(test)]
mod tests;
