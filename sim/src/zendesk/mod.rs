//! A stateful Zendesk Support simulator, for the generic connector's worked example.
//!
//! It serves the Support API v2 endpoints the example connector file uses — `GET`/`PUT
//! /api/v2/tickets/{id}.json`, `GET /api/v2/tickets/{id}/audits.json`, `GET
//! /api/v2/tickets/{id}/comments.json`, `GET /api/v2/users/{id}.json` (and `me.json`) — with
//! Zendesk's shapes, statuses (`new`, `open`, `pending`, `hold`, `solved`, `closed`), error
//! envelopes (`{"error": "RecordNotFound", "description": "Not found"}`), Basic auth as
//! `email/token:api_token`, and `429` + `Retry-After` rate limiting. Every update is recorded as an
//! audit naming its author, which is how the connector learns *who* approved.
//!
//! The handle plays the humans (requester, approver, agent) and the account's triggers: each
//! change runs the configured [`Trigger`]s, which notify the webhook with a bearer token and the
//! JSON body an admin writes in the trigger action (see `connectors/zendesk/install.md`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), jitbridge_sim::SimError> {
//! use jitbridge_sim::zendesk::{NewTicket, ZendeskSim, ZendeskSimConfig, users, APPROVAL_FIELD};
//! let zd = ZendeskSim::start(ZendeskSimConfig::default()).await?;
//! zd.set_webhook("http://127.0.0.1:8080/webhooks/zendesk", "bearer-token").await;
//! let t = zd.create_ticket(NewTicket::new(users::ALICE, "Local admin on WS-0042")).await?;
//! zd.set_approval(t.ticket_id, "jit_approved", users::BOB).await?;
//! # Ok(()) }
//! ```

mod api;
pub mod model;
pub mod webhook;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

pub use model::{Audit, Comment, STATUSES, TicketField, User};
pub use webhook::{Trigger, TriggerOn, Webhook};

use crate::error::SimError;
pub use crate::jira::DeliveryResponse;
use crate::server::ServerTask;
use model::{Ticket, change_event};

/// Most tickets one simulator holds.
pub const MAX_TICKETS: usize = 10_000;
/// Most comments, and most audits, per ticket.
pub const MAX_PER_TICKET: usize = 1_000;
/// Most request-log entries and deliveries kept; the oldest are dropped first.
pub const MAX_LOG_ENTRIES: usize = 10_000;

/// The "Approval" drop-down field of the worked example.
pub const APPROVAL_FIELD: u64 = 360_001_234_567;
/// The "Target machine" text field.
pub const TARGET_FIELD: u64 = 360_001_234_568;
/// The "Duration" text field.
pub const DURATION_FIELD: u64 = 360_001_234_569;

/// User ids of the seeded users, so tests read like the story they tell.
pub mod users {
    /// Alice, the requester (alice@example.com, end user).
    pub const ALICE: u64 = 1_001;
    /// Bob, the approver (bob@example.com, agent).
    pub const BOB: u64 = 1_002;
    /// Carol, a helpdesk agent (carol@example.com).
    pub const CAROL: u64 = 1_003;
    /// The jitbridge API user (jitbridge@example.com, admin).
    pub const JITBRIDGE: u64 = 1_004;
    /// The API user's e-mail.
    pub const API_EMAIL: &str = "jitbridge@example.com";
    /// The API token for [`API_EMAIL`] (Basic auth user name `API_EMAIL/token`).
    pub const API_TOKEN: &str = "test-zendesk-api-token";
}

/// The trigger body of the worked example, with `EVENT` where each trigger puts its event word.
/// Identical to the body in `connectors/zendesk/install.md`.
pub const TRIGGER_BODY: &str = r#"{
  "event": "EVENT",
  "ticket": {
    "id": "{{ticket.id}}",
    "status": "{{ticket.status}}",
    "type": "{{ticket.ticket_type}}",
    "link": "{{ticket.link}}",
    "updated_at": "{{ticket.updated_at_with_timestamp}}",
    "approval": "{{ticket.ticket_field_360001234567}}",
    "target": "{{ticket.ticket_field_360001234568}}",
    "duration": "{{ticket.ticket_field_360001234569}}"
  },
  "requester": {
    "id": "{{ticket.requester.id}}",
    "email": "{{ticket.requester.email}}",
    "name": "{{ticket.requester.name}}"
  },
  "current_user": {
    "id": "{{current_user.id}}",
    "email": "{{current_user.email}}",
    "name": "{{current_user.name}}"
  }
}"#;

/// The three triggers of the worked example: created, approval changed, solved/closed.
///
/// The approval trigger fires whatever the ticket's status (`install.md` adds "status less than
/// Solved"), so tests can show that the connector's API check alone refuses an approval set on a
/// solved ticket.
pub fn example_triggers() -> Vec<Trigger> {
    let body = |event: &str| TRIGGER_BODY.replace("EVENT", event);
    vec![
        Trigger {
            title: "jitbridge: ticket created".into(),
            on: TriggerOn::Created,
            body: body("ticket_created"),
        },
        Trigger {
            title: "jitbridge: approval changed".into(),
            on: TriggerOn::FieldChanged(APPROVAL_FIELD),
            body: body("approval:{{ticket.ticket_field_360001234567}}"),
        },
        Trigger {
            title: "jitbridge: ticket solved".into(),
            on: TriggerOn::StatusChangedTo(vec!["solved".into(), "closed".into()]),
            body: body("ticket_solved"),
        },
    ]
}

/// A Basic-auth API token (`{email}/token:{token}`) the account accepts.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// The agent's e-mail.
    pub email: String,
    /// The token.
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

/// Everything that shapes a simulated account.
#[derive(Debug, Clone)]
pub struct ZendeskSimConfig {
    /// Where to listen; `127.0.0.1:0` picks a free port.
    pub listen: SocketAddr,
    /// The account's users.
    pub users: Vec<User>,
    /// Accepted API tokens; the e-mail must belong to a user.
    pub api_tokens: Vec<ApiToken>,
    /// Custom ticket fields.
    pub fields: Vec<TicketField>,
    /// Triggers that notify the webhook.
    pub triggers: Vec<Trigger>,
    /// Whether updates made through the API run triggers (real Zendesk: yes).
    pub api_triggers: bool,
}

impl Default for ZendeskSimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            users: vec![
                User::new(
                    users::ALICE,
                    "Alice Requester",
                    "alice@example.com",
                    "end-user",
                ),
                User::new(users::BOB, "Bob Approver", "bob@example.com", "agent"),
                User::new(users::CAROL, "Carol Agent", "carol@example.com", "agent"),
                User::new(users::JITBRIDGE, "jitbridge", users::API_EMAIL, "admin"),
            ],
            api_tokens: vec![ApiToken {
                email: users::API_EMAIL.to_owned(),
                token: users::API_TOKEN.to_owned(),
            }],
            fields: vec![
                TicketField::dropdown(
                    APPROVAL_FIELD,
                    "Approval",
                    &[
                        ("jit_pending", "Pending"),
                        ("jit_approved", "Approved"),
                        ("jit_rejected", "Rejected"),
                    ],
                ),
                TicketField::text(TARGET_FIELD, "Target machine"),
                TicketField::text(DURATION_FIELD, "Duration"),
            ],
            triggers: example_triggers(),
            api_triggers: true,
        }
    }
}

/// A new ticket, as a requester raises it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTicket {
    /// Requester user id.
    pub requester: u64,
    /// Subject.
    pub subject: String,
    /// Description (the first comment).
    pub description: String,
    /// `question`, `incident`, `problem`, `task`, or none.
    pub kind: Option<String>,
    /// Custom field values by field id.
    pub fields: BTreeMap<u64, Value>,
}

impl NewTicket {
    /// A ticket raised by `requester` with `subject`, the approval pending.
    pub fn new(requester: u64, subject: &str) -> Self {
        Self {
            requester,
            subject: subject.to_owned(),
            description: subject.to_owned(),
            kind: Some("task".to_owned()),
            fields: BTreeMap::from([(APPROVAL_FIELD, Value::from("jit_pending"))]),
        }
    }

    /// Sets a custom field.
    pub fn field(mut self, id: u64, value: Value) -> Self {
        self.fields.insert(id, value);
        self
    }
}

/// One webhook notification, with everything needed to send it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// `X-Zendesk-Webhook-Invocation-Id`.
    pub invocation_id: String,
    /// The trigger that fired.
    pub trigger: String,
    /// Target URL.
    pub url: String,
    /// Headers sent (including `Authorization: Bearer ...`).
    pub headers: Vec<(String, String)>,
    /// The exact body.
    pub body: Vec<u8>,
    /// The answer.
    pub response: DeliveryResponse,
}

impl Delivery {
    /// The body as JSON (`Null` if the placeholders broke it).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// What an action did: the ticket and the webhooks its triggers sent.
#[derive(Debug, Clone)]
pub struct ActionOutcome {
    /// Ticket id.
    pub ticket_id: u64,
    /// One delivery per trigger that fired (none without a webhook).
    pub deliveries: Vec<Delivery>,
}

/// A ticket as tests assert on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TicketSnapshot {
    /// Id.
    pub id: u64,
    /// Status.
    pub status: String,
    /// Subject.
    pub subject: String,
    /// Requester id.
    pub requester_id: u64,
    /// Custom field values.
    pub fields: BTreeMap<u64, Value>,
    /// Tags.
    pub tags: Vec<String>,
    /// Comments, oldest first.
    pub comments: Vec<Comment>,
    /// Audits, oldest first.
    pub audits: Vec<Audit>,
}

/// One API request the simulator answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRecord {
    /// Method.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Status answered.
    pub status: u16,
    /// The Basic-auth user name presented, if any (never the token).
    pub user: Option<String>,
    /// The JSON body of a write, if any.
    pub body: Option<Value>,
    /// Wall-clock time of arrival.
    pub at: Timestamp,
    /// Monotonic time of arrival (tokio clock), for asserting the gaps a client keeps, e.g.
    /// that nothing arrives inside a `Retry-After` window.
    #[serde(skip)]
    pub instant: tokio::time::Instant,
}

/// Injected failures.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    /// Remaining 429 answers and their `Retry-After`.
    rate_limit: Option<(u32, u64)>,
    /// Remaining 503 answers.
    outage: Option<u32>,
}

struct State {
    users: Vec<User>,
    tokens: Vec<ApiToken>,
    fields: Vec<TicketField>,
    triggers: Vec<Trigger>,
    api_triggers: bool,
    webhook: Option<Webhook>,
    tickets: Vec<Ticket>,
    next_ticket: u64,
    next_id: u64,
    requests: VecDeque<RequestRecord>,
    deliveries: VecDeque<Delivery>,
    faults: Faults,
    invocations: u64,
}

impl State {
    fn ticket_mut(&mut self, id: u64) -> Result<&mut Ticket, SimError> {
        self.tickets
            .iter_mut()
            .find(|t| t.id == id)
            .ok_or_else(|| SimError::UnknownIssue(id.to_string()))
    }

    fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// A change to apply to a ticket as one update (one audit).
#[derive(Debug, Clone, Default)]
pub(crate) struct Update {
    pub(crate) status: Option<String>,
    pub(crate) fields: Vec<(u64, Value)>,
    pub(crate) comment: Option<(String, bool)>,
}

/// Why an update was refused, in Zendesk's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotFound,
    Invalid { field: String, description: String },
}

/// A trigger that fired: its title and the rendered body.
type Fired = Vec<(String, String)>;

pub(crate) struct Core {
    base: String,
    client: reqwest::Client,
    state: Mutex<State>,
}

impl Core {
    /// Applies `update` as `author` (one audit), then evaluates triggers.
    pub(crate) async fn update(
        &self,
        id: u64,
        author: u64,
        update: Update,
        channel: &str,
    ) -> Result<(Value, Fired), Refusal> {
        let mut state = self.state.lock().await;
        let fields = state.fields.clone();
        let audit_id = state.next();
        let event_ids: Vec<u64> = (0..4).map(|_| state.next()).collect();
        let api_triggers = state.api_triggers;
        let ticket = state
            .tickets
            .iter_mut()
            .find(|t| t.id == id)
            .ok_or(Refusal::NotFound)?;
        if ticket.status == "closed" {
            return Err(Refusal::Invalid {
                field: "status".into(),
                description: "Status: closed prevents ticket update".into(),
            });
        }
        if let Some(s) = &update.status
            && (!STATUSES.contains(&s.as_str()) || (s == "new" && ticket.status != "new"))
        {
            return Err(Refusal::Invalid {
                field: "status".into(),
                description: format!("Status: {s:?} is not a valid status for this ticket"),
            });
        }
        for (fid, value) in &update.fields {
            if !fields.iter().any(|f| f.id == *fid && f.accepts(value)) {
                return Err(Refusal::Invalid {
                    field: fid.to_string(),
                    description: format!("{fid}: {value} is not a valid value for this field"),
                });
            }
        }
        if let Some((body, _)) = &update.comment
            && body.trim().is_empty()
        {
            return Err(Refusal::Invalid {
                field: "comment".into(),
                description: "Comment: Body can't be blank".into(),
            });
        }
        if ticket.comments.len() >= MAX_PER_TICKET || ticket.audits.len() >= MAX_PER_TICKET {
            return Err(Refusal::Invalid {
                field: "base".into(),
                description: "Ticket has too many updates".into(),
            });
        }
        let now = Timestamp::now();
        let mut events = Vec::new();
        let mut ids = event_ids.into_iter();
        let mut fired_on: Vec<TriggerOn> = Vec::new();
        if let Some((body, public)) = update.comment {
            let cid = ids.next().unwrap_or_default();
            events.push(
                json!({"id": cid, "type": "Comment", "author_id": author, "body": body,
                               "public": public, "attachments": []}),
            );
            ticket.comments.push(Comment {
                id: cid,
                author_id: author,
                body,
                public,
                created_at: now,
            });
        }
        if let Some(s) = update.status
            && s != ticket.status
        {
            events.push(change_event(
                ids.next().unwrap_or_default(),
                "status",
                &Value::from(s.as_str()),
                &Value::from(ticket.status.as_str()),
            ));
            fired_on.push(TriggerOn::StatusChangedTo(vec![s.clone()]));
            ticket.status = s;
        }
        for (fid, value) in update.fields {
            let previous = ticket.fields.get(&fid).cloned().unwrap_or(Value::Null);
            if previous != value {
                events.push(change_event(
                    ids.next().unwrap_or_default(),
                    &fid.to_string(),
                    &value,
                    &previous,
                ));
                fired_on.push(TriggerOn::FieldChanged(fid));
                ticket.fields.insert(fid, value);
            }
        }
        if events.is_empty() {
            let json = ticket.json(&self.base, &fields);
            return Ok((json!({"ticket": json, "audit": null}), Vec::new()));
        }
        // Zendesk opens a new ticket on its first agent update.
        if ticket.status == "new" && author != ticket.requester_id {
            ticket.status = "open".into();
        }
        ticket.retag(&fields);
        ticket.updated_at = now;
        let audit = model::Audit {
            id: audit_id,
            ticket_id: id,
            author_id: author,
            created_at: now,
            events,
            channel: channel.to_owned(),
        };
        let audit_json = audit.json();
        ticket.audits.push(audit);
        let ticket_json = ticket.json(&self.base, &fields);
        let fired = if channel == "api" && !api_triggers {
            Vec::new()
        } else {
            fire(&state, &self.base, id, author, &fired_on)
        };
        Ok((json!({"ticket": ticket_json, "audit": audit_json}), fired))
    }

    /// Sends the fired triggers' bodies to the webhook and records them.
    pub(crate) async fn notify(&self, fired: Fired) -> Vec<Delivery> {
        let (webhook, mut numbered) = {
            let mut state = self.state.lock().await;
            let Some(webhook) = state.webhook.clone() else {
                return Vec::new();
            };
            let mut numbered = Vec::new();
            for (title, body) in fired {
                state.invocations += 1;
                numbered.push((state.invocations, title, body));
            }
            (webhook, numbered)
        };
        let mut out = Vec::new();
        for (n, title, body) in numbered.drain(..) {
            let headers = vec![
                (
                    "Content-Type".to_owned(),
                    "application/json; charset=utf-8".to_owned(),
                ),
                ("User-Agent".to_owned(), "Zendesk Webhook".to_owned()),
                (
                    "Authorization".to_owned(),
                    format!("Bearer {}", webhook.bearer_token),
                ),
                ("X-Zendesk-Account-Id".to_owned(), "9876543".to_owned()),
                (
                    "X-Zendesk-Webhook-Id".to_owned(),
                    "01JITBRIDGE0000000000000000".to_owned(),
                ),
                (
                    "X-Zendesk-Webhook-Invocation-Id".to_owned(),
                    format!("{}", 8_000_000_000u64 + n),
                ),
            ];
            let response = crate::jira::webhook::send_once(
                &self.client,
                &webhook.url,
                &headers,
                body.as_bytes(),
                0,
            )
            .await;
            let delivery = Delivery {
                invocation_id: format!("{}", 8_000_000_000u64 + n),
                trigger: title,
                url: webhook.url.clone(),
                headers,
                body: body.into_bytes(),
                response,
            };
            push_bounded(&mut self.state.lock().await.deliveries, delivery.clone());
            out.push(delivery);
        }
        out
    }
}

/// The triggers whose conditions `changes` meet, rendered for ticket `id` as `author`.
fn fire(state: &State, base: &str, id: u64, author: u64, changes: &[TriggerOn]) -> Fired {
    let Some(ticket) = state.tickets.iter().find(|t| t.id == id) else {
        return Vec::new();
    };
    state
        .triggers
        .iter()
        .filter(|t| {
            changes.iter().any(|c| match (&t.on, c) {
                (TriggerOn::Created, TriggerOn::Created) => true,
                (TriggerOn::FieldChanged(a), TriggerOn::FieldChanged(b)) => a == b,
                (TriggerOn::StatusChangedTo(wanted), TriggerOn::StatusChangedTo(now)) => {
                    now.iter().any(|s| wanted.contains(s))
                }
                _ => false,
            })
        })
        .map(|t| {
            let scope = webhook::Scope {
                base,
                ticket,
                fields: &state.fields,
                users: &state.users,
                current_user: author,
            };
            (t.title.clone(), webhook::render(&t.body, &scope))
        })
        .collect()
}

fn push_bounded<T>(q: &mut VecDeque<T>, item: T) {
    if q.len() >= MAX_LOG_ENTRIES {
        q.pop_front();
    }
    q.push_back(item);
}

/// A running simulated Zendesk account. Stops when dropped.
pub struct ZendeskSim {
    core: Arc<Core>,
    server: ServerTask,
}

impl ZendeskSim {
    /// Starts the account's API on `config.listen`.
    pub async fn start(config: ZendeskSimConfig) -> Result<Self, SimError> {
        for t in &config.api_tokens {
            if !config
                .users
                .iter()
                .any(|u| u.email.eq_ignore_ascii_case(&t.email))
            {
                return Err(SimError::UnknownUser(t.email.clone()));
            }
        }
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SimError::Http(e.to_string()))?;
        let mut built: Option<Arc<Core>> = None;
        let server = ServerTask::spawn(config.listen, |addr| {
            let core = Arc::new(Core {
                base: format!("http://{addr}"),
                client,
                state: Mutex::new(State {
                    users: config.users,
                    tokens: config.api_tokens,
                    fields: config.fields,
                    triggers: config.triggers,
                    api_triggers: config.api_triggers,
                    webhook: None,
                    tickets: Vec::new(),
                    next_ticket: 0,
                    next_id: 5_000_000,
                    requests: VecDeque::new(),
                    deliveries: VecDeque::new(),
                    faults: Faults::default(),
                    invocations: 0,
                }),
            });
            built = Some(core.clone());
            api::router(core)
        })
        .await?;
        let core = built.ok_or_else(|| SimError::Http("server did not start".into()))?;
        Ok(Self { core, server })
    }

    /// The account's base URL, e.g. `http://127.0.0.1:41234` (the connector's `base_url`).
    pub fn base_url(&self) -> &str {
        &self.core.base
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Points the triggers' webhook at `url`, authenticated with `bearer_token`.
    pub async fn set_webhook(&self, url: &str, bearer_token: &str) {
        self.core.state.lock().await.webhook = Some(Webhook {
            url: url.to_owned(),
            bearer_token: bearer_token.to_owned(),
        });
    }

    /// Deletes the webhook (triggers then notify nobody).
    pub async fn clear_webhook(&self) {
        self.core.state.lock().await.webhook = None;
    }

    /// Raises a ticket as its requester (runs "created" triggers).
    pub async fn create_ticket(&self, new: NewTicket) -> Result<ActionOutcome, SimError> {
        let (id, fired) = {
            let mut state = self.core.state.lock().await;
            if !state.users.iter().any(|u| u.id == new.requester) {
                return Err(SimError::UnknownUser(new.requester.to_string()));
            }
            if state.tickets.len() >= MAX_TICKETS {
                return Err(SimError::InvalidInput("too many tickets".into()));
            }
            for (fid, value) in &new.fields {
                if !state
                    .fields
                    .iter()
                    .any(|f| f.id == *fid && f.accepts(value))
                {
                    return Err(SimError::InvalidInput(format!(
                        "field {fid} does not accept {value}"
                    )));
                }
            }
            state.next_ticket += 1;
            let id = state.next_ticket;
            let audit_id = state.next();
            let comment_id = state.next();
            let now = Timestamp::now();
            let mut events = vec![
                json!({"id": state.next(), "type": "Create", "field_name": "subject", "value": new.subject}),
                json!({"id": state.next(), "type": "Create", "field_name": "status", "value": "new"}),
            ];
            for (fid, value) in &new.fields {
                events.push(json!({"id": state.next(), "type": "Create", "field_name": fid.to_string(), "value": value}));
            }
            let fields = state.fields.clone();
            let mut ticket = Ticket {
                id,
                subject: new.subject,
                description: new.description.clone(),
                status: "new".into(),
                kind: new.kind,
                requester_id: new.requester,
                submitter_id: new.requester,
                assignee_id: None,
                fields: new.fields,
                tags: Vec::new(),
                created_at: now,
                updated_at: now,
                comments: vec![Comment {
                    id: comment_id,
                    author_id: new.requester,
                    body: new.description,
                    public: true,
                    created_at: now,
                }],
                audits: Vec::new(),
            };
            ticket.retag(&fields);
            ticket.audits.push(Audit {
                id: audit_id,
                ticket_id: id,
                author_id: new.requester,
                created_at: now,
                events,
                channel: "web".into(),
            });
            state.tickets.push(ticket);
            let fired = fire(
                &state,
                &self.core.base,
                id,
                new.requester,
                &[TriggerOn::Created],
            );
            (id, fired)
        };
        let deliveries = self.core.notify(fired).await;
        Ok(ActionOutcome {
            ticket_id: id,
            deliveries,
        })
    }

    async fn act(&self, id: u64, actor: u64, update: Update) -> Result<ActionOutcome, SimError> {
        if !self
            .core
            .state
            .lock()
            .await
            .users
            .iter()
            .any(|u| u.id == actor)
        {
            return Err(SimError::UnknownUser(actor.to_string()));
        }
        let (_, fired) = self
            .core
            .update(id, actor, update, "web")
            .await
            .map_err(|r| match r {
                Refusal::NotFound => SimError::UnknownIssue(id.to_string()),
                Refusal::Invalid { description, .. } => SimError::InvalidInput(description),
            })?;
        Ok(ActionOutcome {
            ticket_id: id,
            deliveries: self.core.notify(fired).await,
        })
    }

    /// Sets the "Approval" drop-down to `value` (a tag such as `jit_approved`) as `actor`.
    pub async fn set_approval(
        &self,
        id: u64,
        value: &str,
        actor: u64,
    ) -> Result<ActionOutcome, SimError> {
        self.set_field(id, APPROVAL_FIELD, Value::from(value), actor)
            .await
    }

    /// Sets custom field `field` as `actor` (one audit with a `Change` event).
    pub async fn set_field(
        &self,
        id: u64,
        field: u64,
        value: Value,
        actor: u64,
    ) -> Result<ActionOutcome, SimError> {
        let update = Update {
            fields: vec![(field, value)],
            ..Update::default()
        };
        self.act(id, actor, update).await
    }

    /// Changes the status as `actor`.
    pub async fn set_status(
        &self,
        id: u64,
        status: &str,
        actor: u64,
    ) -> Result<ActionOutcome, SimError> {
        let update = Update {
            status: Some(status.to_owned()),
            ..Update::default()
        };
        self.act(id, actor, update).await
    }

    /// Adds a comment (public reply or internal note) as `actor`.
    pub async fn comment(
        &self,
        id: u64,
        actor: u64,
        body: &str,
        public: bool,
    ) -> Result<ActionOutcome, SimError> {
        let update = Update {
            comment: Some((body.to_owned(), public)),
            ..Update::default()
        };
        self.act(id, actor, update).await
    }

    /// The ticket as it is now.
    pub async fn ticket(&self, id: u64) -> Result<TicketSnapshot, SimError> {
        let mut state = self.core.state.lock().await;
        let t = state.ticket_mut(id)?;
        Ok(TicketSnapshot {
            id: t.id,
            status: t.status.clone(),
            subject: t.subject.clone(),
            requester_id: t.requester_id,
            fields: t.fields.clone(),
            tags: t.tags.clone(),
            comments: t.comments.clone(),
            audits: t.audits.clone(),
        })
    }

    /// The ticket's comments, oldest first.
    pub async fn comments(&self, id: u64) -> Result<Vec<Comment>, SimError> {
        Ok(self.ticket(id).await?.comments)
    }

    /// Sends `body` to the webhook as a trigger would (bearer token and Zendesk headers), with
    /// placeholders rendered for ticket `id` as `actor`. One attempt.
    pub async fn emit(&self, id: u64, actor: u64, body: &str) -> Result<Delivery, SimError> {
        let rendered = {
            let state = self.core.state.lock().await;
            let ticket = state
                .tickets
                .iter()
                .find(|t| t.id == id)
                .ok_or_else(|| SimError::UnknownIssue(id.to_string()))?;
            let scope = webhook::Scope {
                base: &self.core.base,
                ticket,
                fields: &state.fields,
                users: &state.users,
                current_user: actor,
            };
            webhook::render(body, &scope)
        };
        self.core
            .notify(vec![("manual".to_owned(), rendered)])
            .await
            .into_iter()
            .next()
            .ok_or_else(|| SimError::Http("no webhook is configured".into()))
    }

    /// Sends a recorded delivery again, byte for byte (a duplicate or a replay).
    pub async fn resend(&self, delivery: &Delivery) -> DeliveryResponse {
        crate::jira::webhook::send_once(
            &self.core.client,
            &delivery.url,
            &delivery.headers,
            &delivery.body,
            0,
        )
        .await
    }

    /// Every webhook notification so far, oldest first.
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

    /// Every API request answered so far, oldest first.
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

    /// Answers the next `n` API requests with `429` and `Retry-After: retry_after_secs`.
    pub async fn rate_limit(&self, n: u32, retry_after_secs: u64) {
        self.core.state.lock().await.faults.rate_limit = Some((n, retry_after_secs));
    }

    /// Answers the next `n` API requests with `503`.
    pub async fn outage(&self, n: u32) {
        self.core.state.lock().await.faults.outage = Some(n);
    }

    /// Removes every injected fault.
    pub async fn clear_faults(&self) {
        self.core.state.lock().await.faults = Faults::default();
    }

    /// Stops the server and waits for in-flight requests.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

#[cfg(test)]
mod tests;
