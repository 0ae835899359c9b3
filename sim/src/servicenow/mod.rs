//! A stateful ServiceNow instance simulator.
//!
//! It serves the Table API (`/api/now/[v1|v2/]table/...`) that jitbridge's ServiceNow connector
//! reads and writes back through, with the platform's conventions (`itsm-wire-formats.md` §2):
//! every value a string, reference fields `{link, value}`, UTC `YYYY-MM-DD HH:MM:SS` dates, the
//! `{"error":{message,detail},"status":"failure"}` envelope, journal fields that append and read
//! back as `""`, `sys_mod_count` that counts updates, per-hour rate-limit rules with
//! `X-RateLimit-*` headers, v1's 404 versus v2's empty list.
//!
//! The handle plays the humans and the platform's workflow: a requester orders a RITM with
//! elevation variables and approvers, an approver approves or rejects (the approver row changes,
//! then the RITM's `approval` and `state`), an agent closes it. Every change that a Business Rule
//! would see emits the shared webhook payload, signed `X-Signature: base64(HMAC-SHA256)`, with a
//! bounded retry policy — just as the Business Rule shipped with jitbridge sends it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), jitbridge_sim::SimError> {
//! use jitbridge_sim::servicenow::{NewRequest, ServiceNowSim, ServiceNowSimConfig, users};
//! let snow = ServiceNowSim::start(ServiceNowSimConfig::default()).await?;
//! snow.add_webhook("http://127.0.0.1:8080/webhooks/servicenow", Some("s3cret")).await;
//! let ritm = snow
//!     .create_request(NewRequest::new(users::ALICE, "Local admin on WS-0042")
//!         .elevation("Local admin", "WS-0042", "2h")
//!         .approvers(&[users::BOB]))
//!     .await?;
//! let approved = snow.approve(&ritm.number, users::BOB).await?; // approver row, then the RITM
//! assert_eq!(approved.deliveries.len(), 2);
//! # Ok(()) }
//! ```

mod api;
mod control;
pub mod model;
pub mod query;
pub mod webhook;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

pub use crate::jira::webhook::{Delivery, DeliveryResponse, RetryPolicy, WebhookTarget};
pub use crate::jira::{FaultWindow, RequestRecord};
pub use model::{DisplayValue, JournalEntry, RenderOptions};

use crate::error::SimError;
use crate::jira::webhook::send_once;
use crate::server::ServerTask;
use model::{Lookup, Record, Schema, WriteError};

/// Most request-log entries, deliveries and journal entries kept; the oldest go first.
pub const MAX_LOG_ENTRIES: usize = 10_000;
/// Most records one instance holds, across tables.
pub const MAX_RECORDS: usize = 20_000;
/// Longest journal entry accepted, in characters.
pub const MAX_JOURNAL_CHARS: usize = 32_000;

/// The seeded users' `user_name`s and sys_ids, so tests read like the story they tell.
pub mod users {
    /// Alice, the requester (alice@example.com).
    pub const ALICE: &str = "alice.requester";
    /// Alice's sys_id.
    pub const ALICE_SYS_ID: &str = "a11ce000000040008000000000000001";
    /// Bob, the approver (bob@example.com).
    pub const BOB: &str = "bob.approver";
    /// Bob's sys_id.
    pub const BOB_SYS_ID: &str = "b0b00000000040008000000000000002";
    /// Carol, a fulfiller (carol@example.com).
    pub const CAROL: &str = "carol.agent";
    /// Carol's sys_id.
    pub const CAROL_SYS_ID: &str = "ca201000000040008000000000000003";
    /// The integration user jitbridge calls the API as (jitbridge@example.com).
    pub const JITBRIDGE: &str = "svc_jitbridge";
    /// The integration user's sys_id.
    pub const JITBRIDGE_SYS_ID: &str = "5e2c0000000040008000000000000004";
    /// The integration user's default password (Basic auth).
    pub const API_PASSWORD: &str = "test-password";
    /// A default OAuth bearer token for the integration user.
    pub const API_BEARER: &str = "test-bearer-token";
    /// sys_id of the seeded catalog item "Temporary local admin".
    pub const CAT_ITEM_SYS_ID: &str = "c47a1e00000040008000000000000010";
}

/// A `sys_user` row to seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// 32-hex sys_id.
    pub sys_id: String,
    /// Login name.
    pub user_name: String,
    /// Email.
    pub email: String,
    /// Full name (the display value).
    pub name: String,
}

impl User {
    /// A user with these attributes.
    pub fn new(sys_id: &str, user_name: &str, email: &str, name: &str) -> Self {
        Self {
            sys_id: sys_id.to_owned(),
            user_name: user_name.to_owned(),
            email: email.to_owned(),
            name: name.to_owned(),
        }
    }
}

/// A credential the instance accepts, tied to a `sys_user.user_name`.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// `Authorization: Basic base64(user_name:password)`.
    Basic {
        /// The user's `user_name`.
        user_name: String,
        /// The password.
        password: String,
    },
    /// `Authorization: Bearer <token>` (an OAuth access token).
    Bearer {
        /// The user the token was issued to.
        user_name: String,
        /// The token.
        token: String,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { user_name, .. } => f
                .debug_struct("Basic")
                .field("user_name", user_name)
                .field("password", &"<redacted>")
                .finish(),
            Credential::Bearer { user_name, .. } => f
                .debug_struct("Bearer")
                .field("user_name", user_name)
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

/// Which body shape deliveries carry. The contract shape is what jitbridge's shipped Business
/// Rule sends; the flat shape is the wire-format document's example, which parsers must also
/// accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PayloadShape {
    /// `{event_id, table, sys_id, sys_mod_count, operation, ..., record, changes}`.
    #[default]
    Contract,
    /// The record's fields at top level plus `table` and `previous_state`.
    Flat,
}

/// An inbound REST rate-limit rule: a budget of requests per window (an hour on a real
/// instance; shorter in tests) for one user or for everyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitRule {
    /// The rule's sys_id, sent as `X-RateLimit-Rule`.
    pub sys_id: String,
    /// Requests allowed per window (`X-RateLimit-Limit`).
    pub limit: u32,
    /// The window; the platform's is one hour.
    pub window: Duration,
    /// Only this `user_name` is counted; `None` counts every authenticated user.
    pub user: Option<String>,
}

impl RateLimitRule {
    /// `limit` requests per hour for everyone, like a rule on "All users".
    pub fn per_hour(limit: u32) -> Self {
        Self {
            sys_id: "0f3e7f2a1b8c40d5a6e7f8091a2b3c4d".to_owned(),
            limit,
            window: Duration::from_secs(3600),
            user: None,
        }
    }

    /// The same rule with a shorter window, so tests do not wait an hour.
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }
}

/// A 503 outage to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// How long it lasts.
    pub window: FaultWindow,
    /// Optional `Retry-After` seconds.
    pub retry_after_secs: Option<u64>,
}

/// A `Retry-After` the instance answered (a `429` over a rate-limit rule, or a `503` outage
/// that carried one). Exists so tests can prove a client made no call inside the pause it was
/// asked for: [`RequestRecord`] keeps the status but not the headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    /// HTTP method of the refused request.
    pub method: String,
    /// Its path, without the query.
    pub path: String,
    /// The status answered (`429` or `503`).
    pub status: u16,
    /// The `Retry-After` sent.
    pub retry_after: Duration,
    /// Monotonic time of arrival (the same clock as [`RequestRecord::instant`]).
    pub instant: Instant,
}

/// How several approvers decide a RITM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApprovalRule {
    /// The first approval approves (and the others become `not_required`).
    #[default]
    AnyOne,
    /// Everyone must approve.
    All,
}

/// Everything that shapes a simulated instance.
#[derive(Debug, Clone)]
pub struct ServiceNowSimConfig {
    /// Where to listen; `127.0.0.1:0` picks a free port.
    pub listen: SocketAddr,
    /// `sys_user` rows.
    pub users: Vec<User>,
    /// Accepted credentials; each user must exist.
    pub credentials: Vec<Credential>,
    /// Webhook targets registered from the start.
    pub webhooks: Vec<WebhookTarget>,
    /// The signature header (`X-Signature` by default; the name is the script's choice).
    pub signature_header: String,
    /// Delivery retry behaviour.
    pub retry: RetryPolicy,
    /// Whether changes made through the Table API run the Business Rule (they do on an
    /// instance; turn off to see only handle-made deliveries).
    pub emit_webhooks_for_api: bool,
    /// The delivery body shape.
    pub payload_shape: PayloadShape,
    /// An inbound rate-limit rule from the start.
    pub rate_limit: Option<RateLimitRule>,
    /// Serve the unauthenticated `/_sim/...` control API (demo binary only).
    pub control_api: bool,
}

impl Default for ServiceNowSimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            users: vec![
                User::new(
                    users::ALICE_SYS_ID,
                    users::ALICE,
                    "alice@example.com",
                    "Alice Requester",
                ),
                User::new(
                    users::BOB_SYS_ID,
                    users::BOB,
                    "bob@example.com",
                    "Bob Approver",
                ),
                User::new(
                    users::CAROL_SYS_ID,
                    users::CAROL,
                    "carol@example.com",
                    "Carol Agent",
                ),
                User::new(
                    users::JITBRIDGE_SYS_ID,
                    users::JITBRIDGE,
                    "jitbridge@example.com",
                    "jitbridge integration",
                ),
            ],
            credentials: vec![
                Credential::Basic {
                    user_name: users::JITBRIDGE.to_owned(),
                    password: users::API_PASSWORD.to_owned(),
                },
                Credential::Bearer {
                    user_name: users::JITBRIDGE.to_owned(),
                    token: users::API_BEARER.to_owned(),
                },
            ],
            webhooks: Vec::new(),
            signature_header: "X-Signature".to_owned(),
            retry: RetryPolicy::default(),
            emit_webhooks_for_api: true,
            payload_shape: PayloadShape::Contract,
            rate_limit: None,
            control_api: false,
        }
    }
}

/// A requested item as a requester orders it from the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRequest {
    /// `requested_for` (user_name or sys_id).
    pub requested_for: String,
    /// `opened_by`; defaults to `requested_for`.
    pub opened_by: Option<String>,
    /// `short_description`.
    pub short_description: String,
    /// Approvers (user_name or sys_id); none means `approval = "not requested"`.
    pub approvers: Vec<String>,
    /// How the approvers decide.
    pub rule: ApprovalRule,
    /// Further raw field values (e.g. `u_elevation_type`, `description`).
    pub fields: Vec<(String, String)>,
}

impl NewRequest {
    /// A RITM for `requested_for` with `short_description`.
    pub fn new(requested_for: &str, short_description: &str) -> Self {
        Self {
            requested_for: requested_for.to_owned(),
            opened_by: None,
            short_description: short_description.to_owned(),
            approvers: Vec::new(),
            rule: ApprovalRule::AnyOne,
            fields: Vec::new(),
        }
    }

    /// Sets the elevation variables `u_elevation_type`, `u_target`, `u_duration`.
    pub fn elevation(self, elevation_type: &str, target: &str, duration: &str) -> Self {
        self.field("u_elevation_type", elevation_type)
            .field("u_target", target)
            .field("u_duration", duration)
    }

    /// Sets any other field (raw value).
    pub fn field(mut self, name: &str, value: &str) -> Self {
        self.fields.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds approvers (one `sysapproval_approver` row each, state `requested`).
    pub fn approvers(mut self, approvers: &[&str]) -> Self {
        self.approvers
            .extend(approvers.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Requires every approver to approve.
    pub fn all_must_approve(mut self) -> Self {
        self.rule = ApprovalRule::All;
        self
    }

    /// Sets `opened_by` (someone ordering on the requester's behalf).
    pub fn opened_by(mut self, who: &str) -> Self {
        self.opened_by = Some(who.to_owned());
        self
    }
}

/// What an action did: the record it touched and the deliveries it emitted.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// sys_id of the main record (the RITM for request actions).
    pub sys_id: String,
    /// Its number (`RITM0010001`), empty for tables without numbers.
    pub number: String,
    /// For `create_request`: the sys_ids of the `sysapproval_approver` rows created.
    pub approvals: Vec<String>,
    /// Every delivery made, in order (one per webhook target per event).
    pub deliveries: Vec<Delivery>,
}

/// A record's raw values, as tests assert on them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordSnapshot {
    /// Table name.
    pub table: String,
    /// sys_id.
    pub sys_id: String,
    /// Raw values (choice codes, reference sys_ids); journal fields are not stored here.
    pub values: BTreeMap<String, String>,
}

impl RecordSnapshot {
    /// A raw value, `""` when unset.
    pub fn get(&self, field: &str) -> &str {
        self.values.get(field).map(String::as_str).unwrap_or("")
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Remaining {
    Requests(u32),
    Until(Instant),
    Forever,
}

impl Remaining {
    pub(crate) fn from_window(window: FaultWindow) -> Self {
        match window {
            FaultWindow::Requests(n) => Remaining::Requests(n),
            FaultWindow::For(d) => Remaining::Until(Instant::now() + d),
            FaultWindow::UntilCleared => Remaining::Forever,
        }
    }

    /// Consumes one request; returns whether the fault applies to it.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
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

/// Counting state of the active rate-limit rule.
#[derive(Debug)]
struct RateState {
    rule: RateLimitRule,
    used: u32,
    window_end: Instant,
    reset_unix: i64,
}

/// The rate-limit verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RateVerdict {
    pub limit: u32,
    pub reset_unix: i64,
    pub rule: String,
    /// `Some(seconds)` when the request is over budget.
    pub exceeded: Option<u64>,
    pub window: Duration,
}

/// A webhook body waiting to be delivered.
pub(crate) struct PendingEvent {
    pub event: String,
    pub body: Value,
}

pub(crate) struct State {
    records: Vec<Record>,
    journal: VecDeque<JournalEntry>,
    rules: HashMap<String, ApprovalRule>,
    credentials: Vec<Credential>,
    webhooks: Vec<WebhookTarget>,
    api_webhooks: bool,
    shape: PayloadShape,
    deliveries: VecDeque<Delivery>,
    requests: VecDeque<RequestRecord>,
    pauses: VecDeque<Pause>,
    outage: Option<(Outage, Remaining)>,
    rate: Option<RateState>,
    seed: u64,
    counter: u64,
    next_ritm: u64,
    next_incident: u64,
    next_delivery: u64,
}

impl Lookup for State {
    fn find(&self, table: &str, sys_id: &str) -> Option<&Record> {
        self.records.iter().find(|r| {
            (r.schema.name == table || (table == "task" && r.schema.is_task))
                && r.sys_id() == sys_id
        })
    }
}

pub(crate) fn push_bounded<T>(log: &mut VecDeque<T>, item: T) {
    if log.len() >= MAX_LOG_ENTRIES {
        log.pop_front();
    }
    log.push_back(item);
}

/// Constant-time comparison for secrets.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

impl State {
    /// Index of a record by sys_id or number; `table` may be `task`.
    fn index(&self, table: &str, id: &str) -> Result<usize, SimError> {
        self.records
            .iter()
            .position(|r| {
                (r.schema.name == table || (table == "task" && r.schema.is_task))
                    && (r.sys_id() == id || (!id.is_empty() && r.get("number") == id))
            })
            .ok_or_else(|| SimError::UnknownIssue(format!("{table} {id}")))
    }

    /// The sys_id of a user given by user_name, email or sys_id.
    fn user_id(&self, who: &str) -> Result<String, SimError> {
        self.records
            .iter()
            .find(|r| {
                r.schema.name == "sys_user"
                    && (r.sys_id() == who
                        || r.get("user_name") == who
                        || (!who.is_empty() && r.get("email").eq_ignore_ascii_case(who)))
            })
            .map(|r| r.sys_id().to_owned())
            .ok_or_else(|| SimError::UnknownUser(who.to_owned()))
    }

    fn user_name_of(&self, sys_id: &str) -> String {
        self.find("sys_user", sys_id)
            .map(|r| r.get("user_name").to_owned())
            .unwrap_or_default()
    }

    fn fresh_sys_id(&mut self) -> String {
        self.counter += 1;
        model::sys_id(self.seed, self.counter)
    }

    /// A reference value given as sys_id or display value (`name`, or `user_name` for users).
    fn find_by_display(&self, table: &str, text: &str) -> Option<String> {
        self.records
            .iter()
            .find(|r| {
                (r.schema.name == table || (table == "task" && r.schema.is_task))
                    && (r.get(r.schema.display_field) == text
                        || (r.schema.name == "sys_user" && r.get("user_name") == text))
            })
            .map(|r| r.sys_id().to_owned())
    }
}

/// Immutable instance facts plus the mutable state; shared by the handle and the routers.
pub(crate) struct Core {
    base: String,
    signature_header: String,
    retry: RetryPolicy,
    client: reqwest::Client,
    state: Mutex<State>,
}

impl Core {
    /// The user_name authenticated by the `Authorization` header, if any credential matches.
    pub(crate) async fn authenticate(&self, auth: &api::Auth) -> Option<String> {
        let state = self.state.lock().await;
        let mut found = None;
        // Check every credential so timing does not reveal which one nearly matched.
        for c in &state.credentials {
            let ok = match (c, auth) {
                (
                    Credential::Basic {
                        user_name,
                        password,
                    },
                    api::Auth::Basic(u, p),
                ) => {
                    constant_time_eq(user_name.as_bytes(), u.as_bytes())
                        & constant_time_eq(password.as_bytes(), p.as_bytes())
                }
                (Credential::Bearer { token, .. }, api::Auth::Bearer(t)) => {
                    constant_time_eq(token.as_bytes(), t.as_bytes())
                }
                _ => false,
            };
            if ok && found.is_none() {
                found = Some(match c {
                    Credential::Basic { user_name, .. } | Credential::Bearer { user_name, .. } => {
                        user_name.clone()
                    }
                });
            }
        }
        found
    }

    /// Whether an injected outage answers this request, and with which `Retry-After`.
    pub(crate) async fn take_outage(&self) -> Option<Option<u64>> {
        let mut state = self.state.lock().await;
        let (outage, remaining) = state.outage.as_mut()?;
        remaining
            .take(Instant::now())
            .then_some(outage.retry_after_secs)
    }

    /// Counts a request by `user_name` against the rule, if it matches.
    pub(crate) async fn count_rate(&self, user_name: &str) -> Option<RateVerdict> {
        let mut state = self.state.lock().await;
        let rate = state.rate.as_mut()?;
        if rate.rule.user.as_deref().is_some_and(|u| u != user_name) {
            return None;
        }
        let now = Instant::now();
        if now >= rate.window_end {
            rate.used = 0;
            rate.window_end = now + rate.rule.window;
            rate.reset_unix = unix_after(rate.rule.window);
        }
        rate.used = rate.used.saturating_add(1);
        let exceeded = (rate.used > rate.rule.limit).then(|| {
            let left = rate.window_end.saturating_duration_since(now);
            (left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1)
        });
        Some(RateVerdict {
            limit: rate.rule.limit,
            reset_unix: rate.reset_unix,
            rule: rate.rule.sys_id.clone(),
            exceeded,
            window: rate.rule.window,
        })
    }

    /// Logs an answered request; a `Retry-After` it carried is also logged as a [`Pause`].
    pub(crate) async fn record_request(&self, record: RequestRecord, retry_after: Option<u64>) {
        let mut state = self.state.lock().await;
        if let Some(secs) = retry_after {
            let pause = Pause {
                method: record.method.clone(),
                path: record.path.clone(),
                status: record.status,
                retry_after: Duration::from_secs(secs),
                instant: record.instant,
            };
            push_bounded(&mut state.pauses, pause);
        }
        push_bounded(&mut state.requests, record);
    }

    /// Renders a record under `opts`.
    fn render(&self, state: &State, idx: usize, opts: &RenderOptions) -> Value {
        state
            .records
            .get(idx)
            .map(|r| model::render(state, &self.base, r, opts))
            .unwrap_or(Value::Null)
    }

    /// Inserts a record of `schema`, filling the platform's fields. `values` are validated like
    /// API input.
    fn insert_locked(
        &self,
        state: &mut State,
        schema: &'static Schema,
        values: &Map<String, Value>,
        display_input: bool,
        actor: &str,
    ) -> Result<(usize, Vec<PendingEvent>), WriteError> {
        if state.records.len() >= MAX_RECORDS {
            return Err(WriteError {
                message: "Insert failed".into(),
                detail: "the simulator's record limit is reached".into(),
            });
        }
        let (set, notes) = validate(state, schema, values, display_input)?;
        let now = model::glide_datetime(Timestamp::now());
        let sys_id = state.fresh_sys_id();
        let mut record = Record {
            schema,
            values: BTreeMap::new(),
        };
        let defaults: Vec<(&str, String)> = vec![
            ("sys_id", sys_id.clone()),
            ("sys_class_name", schema.name.to_owned()),
            ("sys_created_on", now.clone()),
            ("sys_created_by", actor.to_owned()),
            ("sys_updated_on", now.clone()),
            ("sys_updated_by", actor.to_owned()),
            ("sys_mod_count", "0".to_owned()),
        ];
        for (k, v) in defaults {
            record.values.insert(k.to_owned(), v);
        }
        for (field, kind) in schema.fields {
            if record.values.contains_key(*field) || *kind == model::FieldKind::Journal {
                continue;
            }
            let default = match (*field, kind) {
                ("active", _) => "true".to_owned(),
                ("approval", _) => "not requested".to_owned(),
                ("state", _) if schema.name == "sysapproval_approver" => "requested".to_owned(),
                ("state", _) | ("incident_state", _) => "1".to_owned(),
                ("priority", _) => "4".to_owned(),
                ("quantity", _) => "1".to_owned(),
                ("escalation", _) | ("reassignment_count", _) | ("order", _) => "0".to_owned(),
                ("opened_at", _) => now.clone(),
                _ => String::new(),
            };
            record.values.insert((*field).to_owned(), default);
        }
        match schema.name {
            "sc_req_item" => {
                state.next_ritm += 1;
                record
                    .values
                    .insert("number".into(), format!("RITM{:07}", state.next_ritm));
            }
            "incident" => {
                state.next_incident += 1;
                record
                    .values
                    .insert("number".into(), format!("INC{:07}", state.next_incident));
            }
            _ => {}
        }
        for (field, value) in set {
            record.values.insert(field, value);
        }
        state.records.push(record);
        let idx = state.records.len() - 1;
        append_journal(state, schema.name, &sys_id, notes, actor, &now);
        let event = self.event_locked(state, idx, "insert", &[]);
        Ok((idx, event.into_iter().collect()))
    }

    /// Applies an update the way the platform does: validate everything first, then write the
    /// fields, append journal entries, bump `sys_mod_count`, run the approval workflow and the
    /// closing side effects, and build the Business Rule's deliveries.
    fn update_locked(
        &self,
        state: &mut State,
        idx: usize,
        input: &Map<String, Value>,
        display_input: bool,
        actor: &str,
    ) -> Result<Vec<PendingEvent>, WriteError> {
        let schema = state
            .records
            .get(idx)
            .map(|r| r.schema)
            .ok_or_else(|| WriteError {
                message: "No Record found".into(),
                detail: "Record doesn't exist or ACL restricts the record retrieval".into(),
            })?;
        let (mut set, notes) = validate(state, schema, input, display_input)?;
        // Closing a task also makes it inactive, as the platform's task rules do.
        if schema.is_task
            && let Some((_, state_value)) = set.iter().find(|(f, _)| f == "state")
        {
            let closed = matches!(
                (schema.name, state_value.as_str()),
                ("sc_req_item", "3" | "4" | "7") | ("incident", "7" | "8")
            );
            if closed {
                set.push(("active".into(), "false".into()));
                set.push(("closed_at".into(), model::glide_datetime(Timestamp::now())));
            }
        }
        let mut events = Vec::new();
        let changes = self.write_locked(state, idx, set, notes, actor);
        let Some(changes) = changes else {
            return Ok(events);
        };
        if !changes.is_empty() {
            events.extend(self.event_locked(state, idx, "update", &changes));
        }
        let approver_decided = schema.name == "sysapproval_approver"
            && changes
                .iter()
                .any(|(f, _, cur)| f == "state" && (cur == "approved" || cur == "rejected"));
        if approver_decided {
            events.extend(self.approval_workflow(state, idx, actor));
        }
        Ok(events)
    }

    /// Writes already-validated values; returns the non-journal changes, or `None` when nothing
    /// at all was written (no update, no `sys_mod_count` bump).
    fn write_locked(
        &self,
        state: &mut State,
        idx: usize,
        set: Vec<(String, String)>,
        notes: Vec<(String, String)>,
        actor: &str,
    ) -> Option<Vec<(String, String, String)>> {
        let now = model::glide_datetime(Timestamp::now());
        let record = state.records.get_mut(idx)?;
        let mut changes = Vec::new();
        for (field, value) in set {
            let previous = record.values.insert(field.clone(), value.clone());
            let previous = previous.unwrap_or_default();
            if previous != value {
                changes.push((field, previous, value));
            }
        }
        if changes.is_empty() && notes.is_empty() {
            return None;
        }
        let count = record
            .get("sys_mod_count")
            .parse::<u64>()
            .unwrap_or(0)
            .saturating_add(1);
        record
            .values
            .insert("sys_mod_count".into(), count.to_string());
        record.values.insert("sys_updated_on".into(), now.clone());
        record
            .values
            .insert("sys_updated_by".into(), actor.to_owned());
        let table = record.schema.name;
        let sys_id = record.sys_id().to_owned();
        append_journal(state, table, &sys_id, notes, actor, &now);
        Some(changes)
    }

    /// After an approver row was approved or rejected: decide the task's `approval` and `state`
    /// like the platform's approval engine, moot the other pending rows, and build the task's
    /// delivery.
    fn approval_workflow(
        &self,
        state: &mut State,
        approver_idx: usize,
        actor: &str,
    ) -> Vec<PendingEvent> {
        let Some(task_id) = state
            .records
            .get(approver_idx)
            .map(|r| r.get("sysapproval").to_owned())
        else {
            return Vec::new();
        };
        let Ok(task_idx) = state.index("task", &task_id) else {
            return Vec::new();
        };
        let task_schema = state.records.get(task_idx).map(|r| r.schema.name);
        let pending_task = state
            .records
            .get(task_idx)
            .is_some_and(|r| r.get("approval") == "requested");
        if !pending_task {
            return Vec::new();
        }
        let rule = state.rules.get(&task_id).copied().unwrap_or_default();
        let rows: Vec<(usize, String)> = state
            .records
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.schema.name == "sysapproval_approver" && r.get("sysapproval") == task_id
            })
            .map(|(i, r)| (i, r.get("state").to_owned()))
            .collect();
        let rejected = rows.iter().any(|(_, s)| s == "rejected");
        let approved = match rule {
            ApprovalRule::AnyOne => rows.iter().any(|(_, s)| s == "approved"),
            ApprovalRule::All => rows
                .iter()
                .all(|(_, s)| s == "approved" || s == "not_required"),
        };
        let mut set: Vec<(String, String)> = if rejected {
            let closed = if task_schema == Some("incident") {
                "8"
            } else {
                "4"
            };
            vec![
                ("approval".into(), "rejected".into()),
                ("state".into(), closed.into()),
                ("stage".into(), "Request Cancelled".into()),
                ("active".into(), "false".into()),
                ("closed_at".into(), model::glide_datetime(Timestamp::now())),
            ]
        } else if approved {
            vec![
                ("approval".into(), "approved".into()),
                ("state".into(), "2".into()),
                ("stage".into(), "fulfillment".into()),
                (
                    "approval_set".into(),
                    model::glide_datetime(Timestamp::now()),
                ),
            ]
        } else {
            return Vec::new();
        };
        if task_schema == Some("incident") {
            set.retain(|(f, _)| f != "stage");
        }
        // The decision is made: the rows nobody answered are no longer required. These moot
        // updates are not delivered (the shipped Business Rule only fires on decisions).
        for (i, s) in &rows {
            if s == "requested" {
                let _ = self.write_locked(
                    state,
                    *i,
                    vec![("state".into(), "not_required".into())],
                    Vec::new(),
                    "system",
                );
            }
        }
        match self.write_locked(state, task_idx, set, Vec::new(), actor) {
            Some(changes) if !changes.is_empty() => self
                .event_locked(state, task_idx, "update", &changes)
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The Business Rule's body for record `idx` after `operation` with `changes`.
    fn event_locked(
        &self,
        state: &State,
        idx: usize,
        operation: &str,
        changes: &[(String, String, String)],
    ) -> Option<PendingEvent> {
        let record = state.records.get(idx)?;
        let table = record.schema.name;
        if !matches!(table, "sc_req_item" | "incident" | "sysapproval_approver") {
            return None;
        }
        let rendered = self.render(state, idx, &RenderOptions::default());
        let body = match state.shape {
            PayloadShape::Contract => {
                let mut changed = Map::new();
                for (field, previous, current) in changes {
                    if field.starts_with("sys_") {
                        continue;
                    }
                    changed.insert(
                        field.clone(),
                        json!({"previous": previous, "current": current}),
                    );
                }
                json!({
                    "event_id": format!("{}:{}", record.sys_id(), record.get("sys_mod_count")),
                    "table": table,
                    "sys_id": record.sys_id(),
                    "sys_mod_count": record.get("sys_mod_count"),
                    "operation": operation,
                    "sys_updated_on": record.get("sys_updated_on"),
                    "sys_updated_by": record.get("sys_updated_by"),
                    "record": rendered,
                    "changes": changed,
                })
            }
            PayloadShape::Flat => {
                let mut flat = match rendered {
                    Value::Object(map) => map,
                    _ => Map::new(),
                };
                flat.insert("table".into(), table.into());
                if let Some((_, previous, _)) = changes.iter().find(|(f, _, _)| f == "state") {
                    flat.insert("previous_state".into(), previous.clone().into());
                }
                Value::Object(flat)
            }
        };
        Some(PendingEvent {
            event: format!("{table}.{operation}"),
            body,
        })
    }

    /// Delivers events in order to every target; records and returns the deliveries.
    pub(crate) async fn emit(&self, events: Vec<PendingEvent>) -> Vec<Delivery> {
        let mut deliveries = Vec::new();
        for event in events {
            let Ok(body) = serde_json::to_vec(&event.body) else {
                continue;
            };
            let targets = {
                let mut state = self.state.lock().await;
                let targets = state.webhooks.clone();
                targets
                    .into_iter()
                    .map(|t| {
                        state.next_delivery += 1;
                        (t, format!("snow-{}", state.next_delivery))
                    })
                    .collect::<Vec<_>>()
            };
            for (target, id) in targets {
                let headers = webhook::servicenow_headers(
                    &self.signature_header,
                    target.secret.as_deref(),
                    &body,
                );
                let delivery = webhook::post_with_retries(
                    &self.client,
                    &self.retry,
                    &target.url,
                    id,
                    event.event.clone(),
                    headers,
                    body.clone(),
                )
                .await;
                push_bounded(&mut self.state.lock().await.deliveries, delivery.clone());
                deliveries.push(delivery);
            }
        }
        deliveries
    }

    /// Emits in the background when API-triggered Business Rules are on (the API answers
    /// first; an async Business Rule runs after the transaction).
    pub(crate) async fn emit_for_api(self: &Arc<Self>, events: Vec<PendingEvent>) {
        if events.is_empty() || !self.state.lock().await.api_webhooks {
            return;
        }
        let core = Arc::clone(self);
        tokio::spawn(async move {
            core.emit(events).await;
        });
    }

    fn snapshot(state: &State, idx: usize) -> Option<RecordSnapshot> {
        state.records.get(idx).map(|r| RecordSnapshot {
            table: r.schema.name.to_owned(),
            sys_id: r.sys_id().to_owned(),
            values: r.values.clone(),
        })
    }

    /// Creates a RITM with its approver rows; returns the outcome without deliveries and the
    /// events to deliver.
    async fn create_request(
        &self,
        new: NewRequest,
    ) -> Result<(Outcome, Vec<PendingEvent>), SimError> {
        let mut state = self.state.lock().await;
        let requested_for = state.user_id(&new.requested_for)?;
        let opened_by = match &new.opened_by {
            Some(who) => state.user_id(who)?,
            None => requested_for.clone(),
        };
        let approvers = new
            .approvers
            .iter()
            .map(|a| state.user_id(a))
            .collect::<Result<Vec<_>, _>>()?;
        let actor = state.user_name_of(&opened_by);
        let mut values = Map::new();
        values.insert("requested_for".into(), requested_for.into());
        values.insert("opened_by".into(), opened_by.into());
        values.insert("short_description".into(), new.short_description.into());
        values.insert("cat_item".into(), users::CAT_ITEM_SYS_ID.into());
        let approval = if approvers.is_empty() {
            "not requested"
        } else {
            "requested"
        };
        values.insert("approval".into(), approval.into());
        let stage = if approvers.is_empty() {
            "fulfillment"
        } else {
            "waiting_for_approval"
        };
        values.insert("stage".into(), stage.into());
        for (k, v) in new.fields {
            values.insert(k, v.into());
        }
        let (idx, events) = self
            .insert_locked(&mut state, &model::SC_REQ_ITEM, &values, false, &actor)
            .map_err(write_error)?;
        let (sys_id, number) = state
            .records
            .get(idx)
            .map(|r| (r.sys_id().to_owned(), r.get("number").to_owned()))
            .unwrap_or_default();
        state.rules.insert(sys_id.clone(), new.rule);
        let mut approvals = Vec::new();
        for (order, approver) in approvers.into_iter().enumerate() {
            let mut row = Map::new();
            row.insert("approver".into(), approver.into());
            row.insert("sysapproval".into(), sys_id.clone().into());
            row.insert("document_id".into(), sys_id.clone().into());
            row.insert("source_table".into(), "sc_req_item".into());
            row.insert("state".into(), "requested".into());
            row.insert("order".into(), order.to_string().into());
            // Approver rows are inserted by the workflow, not delivered (the shipped Business
            // Rule fires on decisions).
            let (row_idx, _) = self
                .insert_locked(
                    &mut state,
                    &model::SYSAPPROVAL_APPROVER,
                    &row,
                    false,
                    "system",
                )
                .map_err(write_error)?;
            if let Some(r) = state.records.get(row_idx) {
                approvals.push(r.sys_id().to_owned());
            }
        }
        Ok((
            Outcome {
                sys_id,
                number,
                approvals,
                deliveries: Vec::new(),
            },
            events,
        ))
    }

    /// `actor`'s answer on their pending approval of `task`.
    async fn decide(
        &self,
        task: &str,
        actor: &str,
        approve: bool,
    ) -> Result<(Outcome, Vec<PendingEvent>), SimError> {
        let mut state = self.state.lock().await;
        let task_idx = state.index("task", task)?;
        let user = state.user_id(actor)?;
        let user_name = state.user_name_of(&user);
        let (task_id, number) = state
            .records
            .get(task_idx)
            .map(|r| (r.sys_id().to_owned(), r.get("number").to_owned()))
            .unwrap_or_default();
        let row = state
            .records
            .iter()
            .position(|r| {
                r.schema.name == "sysapproval_approver"
                    && r.get("sysapproval") == task_id
                    && r.get("approver") == user
                    && r.get("state") == "requested"
            })
            .ok_or_else(|| SimError::NoPendingApproval {
                key: number.clone(),
                account_id: actor.to_owned(),
            })?;
        let mut input = Map::new();
        let decision = if approve { "approved" } else { "rejected" };
        input.insert("state".into(), decision.into());
        let events = self
            .update_locked(&mut state, row, &input, false, &user_name)
            .map_err(write_error)?;
        Ok((
            Outcome {
                sys_id: task_id,
                number,
                approvals: Vec::new(),
                deliveries: Vec::new(),
            },
            events,
        ))
    }

    /// Updates a record (by sys_id or number) as `actor` with display-value input allowed.
    async fn update_as(
        &self,
        table: &str,
        id: &str,
        input: &Map<String, Value>,
        actor: &str,
    ) -> Result<(Outcome, Vec<PendingEvent>), SimError> {
        let mut state = self.state.lock().await;
        let idx = state.index(table, id)?;
        let user = state.user_id(actor)?;
        let user_name = state.user_name_of(&user);
        let events = self
            .update_locked(&mut state, idx, input, true, &user_name)
            .map_err(write_error)?;
        let (sys_id, number) = state
            .records
            .get(idx)
            .map(|r| (r.sys_id().to_owned(), r.get("number").to_owned()))
            .unwrap_or_default();
        Ok((
            Outcome {
                sys_id,
                number,
                approvals: Vec::new(),
                deliveries: Vec::new(),
            },
            events,
        ))
    }
}

/// Seconds since the epoch `window` from now.
fn unix_after(window: Duration) -> i64 {
    let secs = i64::try_from(window.as_secs()).unwrap_or(i64::MAX / 4);
    Timestamp::now().as_second().saturating_add(secs)
}

fn write_error(e: WriteError) -> SimError {
    SimError::InvalidInput(format!("{}: {}", e.message, e.detail))
}

/// Field writes and journal appends, each as `(field, text)`.
type Validated = (Vec<(String, String)>, Vec<(String, String)>);

/// Validates an input object against `schema`: returns the values to set and the journal
/// entries to append, or the first error. Unknown fields are errors; `sys_*` fields are ignored.
fn validate(
    state: &State,
    schema: &'static Schema,
    input: &Map<String, Value>,
    display_input: bool,
) -> Result<Validated, WriteError> {
    let mut set = Vec::new();
    let mut notes = Vec::new();
    let by_display = |table: &str, text: &str| state.find_by_display(table, text);
    for (field, value) in input {
        let kind = schema.kind(field).ok_or_else(|| WriteError {
            message: "Invalid field".into(),
            detail: format!("Field '{field}' does not exist on table {}", schema.name),
        })?;
        let text = model::input_text(field, value)?;
        match kind {
            model::FieldKind::System => {}
            model::FieldKind::Journal => {
                if text.chars().count() > MAX_JOURNAL_CHARS {
                    return Err(WriteError {
                        message: "Invalid value".into(),
                        detail: format!("Field '{field}' is longer than {MAX_JOURNAL_CHARS}"),
                    });
                }
                if !text.trim().is_empty() {
                    notes.push((field.clone(), text));
                }
            }
            _ => {
                let raw = model::normalise(
                    state,
                    &by_display,
                    schema.name,
                    field,
                    kind,
                    &text,
                    display_input,
                )?;
                set.push((field.clone(), raw));
            }
        }
    }
    Ok((set, notes))
}

fn append_journal(
    state: &mut State,
    table: &str,
    sys_id: &str,
    notes: Vec<(String, String)>,
    actor: &str,
    now: &str,
) {
    for (element, value) in notes {
        push_bounded(
            &mut state.journal,
            JournalEntry {
                element,
                name: table.to_owned(),
                element_id: sys_id.to_owned(),
                value,
                sys_created_by: actor.to_owned(),
                sys_created_on: now.to_owned(),
            },
        );
    }
}

/// A running ServiceNow simulator. Dropping it stops the server.
pub struct ServiceNowSim {
    core: Arc<Core>,
    server: ServerTask,
}

impl std::fmt::Debug for ServiceNowSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceNowSim")
            .field("base_url", &self.core.base)
            .finish_non_exhaustive()
    }
}

impl ServiceNowSim {
    /// Starts an instance with `config`: seeds `sys_user` and the catalog item, then serves.
    pub async fn start(config: ServiceNowSimConfig) -> Result<Self, SimError> {
        for c in &config.credentials {
            let (Credential::Basic { user_name, .. } | Credential::Bearer { user_name, .. }) = c;
            if !config.users.iter().any(|u| &u.user_name == user_name) {
                return Err(SimError::UnknownUser(user_name.clone()));
            }
        }
        let client = crate::jira::webhook::client(&config.retry)?;
        let seed = Timestamp::now().as_nanosecond().unsigned_abs() as u64;
        let mut records = Vec::new();
        let now = model::glide_datetime(Timestamp::now());
        let seeded = |schema: &'static Schema, pairs: Vec<(&str, String)>| {
            let mut values = BTreeMap::new();
            for (field, _) in schema.fields {
                values.insert((*field).to_owned(), String::new());
            }
            values.remove("work_notes");
            values.remove("comments");
            for (k, v) in [
                ("sys_class_name", schema.name.to_owned()),
                ("sys_created_on", now.clone()),
                ("sys_created_by", "admin".to_owned()),
                ("sys_updated_on", now.clone()),
                ("sys_updated_by", "admin".to_owned()),
                ("sys_mod_count", "0".to_owned()),
                ("active", "true".to_owned()),
            ] {
                values.insert(k.to_owned(), v);
            }
            for (k, v) in pairs {
                values.insert(k.to_owned(), v);
            }
            Record { schema, values }
        };
        for u in &config.users {
            let (first, last) = u.name.split_once(' ').unwrap_or((u.name.as_str(), ""));
            records.push(seeded(
                &model::SYS_USER,
                vec![
                    ("sys_id", u.sys_id.clone()),
                    ("user_name", u.user_name.clone()),
                    ("email", u.email.clone()),
                    ("name", u.name.clone()),
                    ("first_name", first.to_owned()),
                    ("last_name", last.to_owned()),
                ],
            ));
        }
        records.push(seeded(
            &model::SC_CAT_ITEM,
            vec![
                ("sys_id", users::CAT_ITEM_SYS_ID.to_owned()),
                ("name", "Temporary local admin".to_owned()),
                (
                    "short_description",
                    "Time-limited local administrator rights".to_owned(),
                ),
            ],
        ));
        let rate = config.rate_limit.map(|rule| RateState {
            window_end: Instant::now() + rule.window,
            reset_unix: unix_after(rule.window),
            rule,
            used: 0,
        });
        let mut built: Option<Arc<Core>> = None;
        let server = ServerTask::spawn(config.listen, |addr| {
            let core = Arc::new(Core {
                base: format!("http://{addr}"),
                signature_header: config.signature_header,
                retry: config.retry,
                client,
                state: Mutex::new(State {
                    records,
                    journal: VecDeque::new(),
                    rules: HashMap::new(),
                    credentials: config.credentials,
                    webhooks: config.webhooks,
                    api_webhooks: config.emit_webhooks_for_api,
                    shape: config.payload_shape,
                    deliveries: VecDeque::new(),
                    requests: VecDeque::new(),
                    pauses: VecDeque::new(),
                    outage: None,
                    rate,
                    seed,
                    counter: 0,
                    next_ritm: 10_000,
                    next_incident: 10_000,
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

    /// The instance's base URL, e.g. `http://127.0.0.1:41234` (jitbridge's `base_url`).
    pub fn base_url(&self) -> &str {
        &self.core.base
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Registers a webhook target; `secret` makes deliveries carry the signature header.
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

    /// Turns Business Rule deliveries for changes made through the Table API on or off.
    pub async fn set_api_webhooks(&self, enabled: bool) {
        self.core.state.lock().await.api_webhooks = enabled;
    }

    /// Chooses the delivery body shape from now on.
    pub async fn set_payload_shape(&self, shape: PayloadShape) {
        self.core.state.lock().await.shape = shape;
    }

    /// Orders a RITM (emits its `insert` delivery); approvers get `requested` approver rows.
    pub async fn create_request(&self, new: NewRequest) -> Result<Outcome, SimError> {
        let (mut outcome, events) = self.core.create_request(new).await?;
        outcome.deliveries = self.core.emit(events).await;
        Ok(outcome)
    }

    /// Inserts any record (e.g. an `incident`) as `actor`; values are validated like API input.
    pub async fn insert(
        &self,
        table: &str,
        values: Map<String, Value>,
        actor: &str,
    ) -> Result<Outcome, SimError> {
        let schema = model::schema(table)
            .ok_or_else(|| SimError::InvalidInput(format!("Invalid table {table}")))?;
        let (outcome, events) = {
            let mut state = self.core.state.lock().await;
            let user = state.user_id(actor)?;
            let user_name = state.user_name_of(&user);
            let (idx, events) = self
                .core
                .insert_locked(&mut state, schema, &values, true, &user_name)
                .map_err(write_error)?;
            let (sys_id, number) = state
                .records
                .get(idx)
                .map(|r| (r.sys_id().to_owned(), r.get("number").to_owned()))
                .unwrap_or_default();
            (
                Outcome {
                    sys_id,
                    number,
                    approvals: Vec::new(),
                    deliveries: Vec::new(),
                },
                events,
            )
        };
        self.finish(outcome, events).await
    }

    async fn finish(
        &self,
        mut outcome: Outcome,
        events: Vec<PendingEvent>,
    ) -> Result<Outcome, SimError> {
        outcome.deliveries = self.core.emit(events).await;
        Ok(outcome)
    }

    /// `approver` approves their pending row on `task` (number or sys_id): the row's delivery,
    /// then — when that decides it — the task's (`approval: approved`, `state: 2`).
    pub async fn approve(&self, task: &str, approver: &str) -> Result<Outcome, SimError> {
        let (outcome, events) = self.core.decide(task, approver, true).await?;
        self.finish(outcome, events).await
    }

    /// `approver` rejects: the row, then the task (`approval: rejected`, `state: 4`).
    pub async fn reject(&self, task: &str, approver: &str) -> Result<Outcome, SimError> {
        let (outcome, events) = self.core.decide(task, approver, false).await?;
        self.finish(outcome, events).await
    }

    /// Sets a task's `state` (a code like `"3"`, or a label like `"Closed Complete"`) as `actor`.
    pub async fn set_state(
        &self,
        task: &str,
        state: &str,
        actor: &str,
    ) -> Result<Outcome, SimError> {
        let mut input = Map::new();
        input.insert("state".into(), state.into());
        self.update("task", task, input, actor).await
    }

    /// Updates any record (number or sys_id) as `actor`, with the Table API's rules (display
    /// values accepted). Approver-row decisions run the approval workflow.
    pub async fn update(
        &self,
        table: &str,
        id: &str,
        fields: Map<String, Value>,
        actor: &str,
    ) -> Result<Outcome, SimError> {
        let (outcome, events) = self.core.update_as(table, id, &fields, actor).await?;
        self.finish(outcome, events).await
    }

    /// Adds a `comments` (customer-visible) journal entry as `actor`.
    pub async fn comment(&self, task: &str, actor: &str, text: &str) -> Result<Outcome, SimError> {
        let mut input = Map::new();
        input.insert("comments".into(), text.into());
        self.update("task", task, input, actor).await
    }

    /// A record's raw values (table may be `task`; id is sys_id or number).
    pub async fn record(&self, table: &str, id: &str) -> Result<RecordSnapshot, SimError> {
        let state = self.core.state.lock().await;
        let idx = state.index(table, id)?;
        Core::snapshot(&state, idx).ok_or_else(|| SimError::UnknownIssue(id.to_owned()))
    }

    /// A record exactly as the Table API returns it under `opts` (the object inside
    /// `{"result": ...}`), for parser tests.
    pub async fn api_record(
        &self,
        table: &str,
        id: &str,
        opts: &RenderOptions,
    ) -> Result<Value, SimError> {
        let state = self.core.state.lock().await;
        let idx = state.index(table, id)?;
        Ok(self.core.render(&state, idx, opts))
    }

    /// The `sysapproval_approver` rows of a task, in creation order.
    pub async fn approvals(&self, task: &str) -> Result<Vec<RecordSnapshot>, SimError> {
        let state = self.core.state.lock().await;
        let idx = state.index("task", task)?;
        let task_id = state
            .records
            .get(idx)
            .map(|r| r.sys_id().to_owned())
            .unwrap_or_default();
        Ok(state
            .records
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.schema.name == "sysapproval_approver" && r.get("sysapproval") == task_id
            })
            .filter_map(|(i, _)| Core::snapshot(&state, i))
            .collect())
    }

    /// Journal entries (`work_notes` and `comments`) of a record, oldest first.
    pub async fn journal(&self, table: &str, id: &str) -> Result<Vec<JournalEntry>, SimError> {
        let state = self.core.state.lock().await;
        let idx = state.index(table, id)?;
        let sys_id = state
            .records
            .get(idx)
            .map(|r| r.sys_id().to_owned())
            .unwrap_or_default();
        Ok(state
            .journal
            .iter()
            .filter(|j| j.element_id == sys_id)
            .cloned()
            .collect())
    }

    /// The sys_id of a user given by user_name or email.
    pub async fn user_sys_id(&self, who: &str) -> Result<String, SimError> {
        self.core.state.lock().await.user_id(who)
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

    /// Every Table API request answered so far (not `/_sim`), oldest first.
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

    /// Every `Retry-After` answered so far, oldest first.
    pub async fn pauses(&self) -> Vec<Pause> {
        self.core
            .state
            .lock()
            .await
            .pauses
            .iter()
            .cloned()
            .collect()
    }

    /// Forgets the request log and the pauses.
    pub async fn clear_requests(&self) {
        let mut state = self.core.state.lock().await;
        state.requests.clear();
        state.pauses.clear();
    }

    /// Installs (or with `None` removes) the inbound rate-limit rule; its window starts now.
    pub async fn set_rate_limit(&self, rule: Option<RateLimitRule>) {
        self.core.state.lock().await.rate = rule.map(|rule| RateState {
            window_end: Instant::now() + rule.window,
            reset_unix: unix_after(rule.window),
            rule,
            used: 0,
        });
    }

    /// Injects a 503 outage (replacing any previous one).
    pub async fn outage(&self, outage: Outage) {
        self.core.state.lock().await.outage = Some((outage, Remaining::from_window(outage.window)));
    }

    /// Removes the outage and the rate-limit rule.
    pub async fn clear_faults(&self) {
        let mut state = self.core.state.lock().await;
        state.outage = None;
        state.rate = None;
    }

    /// Sends a recorded delivery again, byte for byte with the same headers (a duplicate, or a
    /// replay when done late). One attempt.
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

    /// Sends arbitrary headers and body (e.g. a tampered copy of a delivery). One attempt.
    pub async fn send_raw(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> DeliveryResponse {
        send_once(&self.core.client, url, headers, body, 0).await
    }

    /// Sends `body` with the Business Rule's headers, signed with `secret` when given (e.g. a
    /// forgery signed with the wrong secret). One attempt; recorded like any delivery.
    pub async fn send_signed(&self, url: &str, secret: Option<&str>, body: &[u8]) -> Delivery {
        let id = {
            let mut state = self.core.state.lock().await;
            state.next_delivery += 1;
            format!("snow-{}", state.next_delivery)
        };
        let headers = webhook::servicenow_headers(&self.core.signature_header, secret, body);
        let response = send_once(&self.core.client, url, &headers, body, 0).await;
        let event = serde_json::from_slice::<Value>(body)
            .ok()
            .map(|v| {
                format!(
                    "{}.{}",
                    v.get("table").and_then(Value::as_str).unwrap_or(""),
                    v.get("operation").and_then(Value::as_str).unwrap_or("")
                )
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

#[cfg(test)]
mod tests;
