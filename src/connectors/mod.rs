//! Connectors: one per ITSM kind, each in its own folder. A connector owns both directions of
//! one system's wire format: it parses raw deliveries into [`TicketEvent`]s, confirms approvals
//! against the system's API (the webhook is a trigger, the API is the truth), and writes status
//! back as comments and state changes. Inbound authentication is generic ([`crate::ingress::auth`]);
//! the connector only supplies its kind's defaults.

pub mod freshservice;
pub mod generic;
mod http;
pub mod jira;
pub mod servicenow;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::ticket::{Approval, Person, TicketEvent, TicketRef};

/// A delivery as stored in the inbox: the non-secret headers and the raw body.
#[derive(Debug, Clone, Default)]
pub struct RawDelivery {
    /// Header names as received (match case-insensitively).
    pub headers: Vec<(String, String)>,
    /// Raw body bytes.
    pub body: Vec<u8>,
}

impl RawDelivery {
    /// The first value of header `name`, compared case-insensitively (Jira sends lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A delivery body that is not what this connector's system sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{connector}: cannot parse delivery: {reason}")]
pub struct ParseError {
    /// Connector id.
    pub connector: String,
    /// What is wrong, naming the field (never echoing secrets).
    pub reason: String,
}

/// What the ITSM's API says about a ticket right now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The ticket's current status name.
    pub status: Option<String>,
    /// The approval records the system keeps (JSM approvals, sysapproval_approver rows, ...);
    /// `None` when the ticket has no approval records (approval is then by status alone).
    pub approval: Option<Approval>,
    /// The requester as the API reports it.
    pub requester: Option<Person>,
    /// Authoritative ticket fields read through the API, merged over the delivery's `fields`
    /// (keys present here win) before the grant is described and `when` is checked again: for
    /// systems whose deliveries are templated text (Freshservice), the body must not choose the
    /// target or duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Value>,
}

/// One writeback action. Comments and state changes are separate jobs, so a retry of one never
/// repeats the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum WritebackAction {
    /// Add a comment with this text.
    Comment { text: String },
    /// Move the ticket to the status with this name (or code, for systems that use codes).
    Status { name: String },
}

/// A writeback as queued in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writeback {
    pub ticket: TicketRef,
    #[serde(flatten)]
    pub action: WritebackAction,
    /// Unique per (grant, state, action): lets a connector recognize a comment it already posted.
    pub marker: String,
}

/// A failed call to an ITSM API, classified for the retry logic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    /// `429`: try again after the hinted delay.
    #[error("rate limited (HTTP {status}){}: {detail}", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        status: u16,
        retry_after: Option<Duration>,
        detail: String,
    },
    /// `5xx`, connection failure or timeout: try again.
    #[error("unavailable{}: {detail}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Unavailable {
        status: Option<u16>,
        retry_after: Option<Duration>,
        detail: String,
    },
    /// A permanent refusal (`4xx` other than 408/409/425/429): retrying will not help.
    #[error("rejected (HTTP {status}): {detail}")]
    Rejected { status: u16, detail: String },
    /// The request cannot be made as configured (e.g. no transition leads to the status).
    #[error("{0}")]
    Invalid(String),
}

impl ConnectorError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ConnectorError::RateLimited { .. } | ConnectorError::Unavailable { .. }
        )
    }

    /// The delay the system asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ConnectorError::RateLimited { retry_after, .. }
            | ConnectorError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Default inbound-auth settings of a connector kind, used where the connector file is silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundDefaults {
    /// Signature header name.
    pub header: &'static str,
    /// Prefix before the digest (`sha256=` for Jira).
    pub prefix: &'static str,
    /// Digest encoding.
    pub encoding: crate::signatures::Encoding,
}

/// One ITSM system, both directions.
#[async_trait]
pub trait Connector: Send + Sync {
    /// The connector's id (deliveries arrive on `POST /webhooks/{id}`).
    fn id(&self) -> &str;
    /// The kind (`jira`, `servicenow`, `freshservice`, `generic`).
    fn kind(&self) -> &'static str;
    /// The delivery's dedupe key: the system's delivery id where it gives one, else a body hash.
    fn dedupe_key(&self, delivery: &RawDelivery) -> String;
    /// Parses a verified delivery into zero or more normalized events. Pure: no I/O.
    fn parse(&self, delivery: &RawDelivery) -> Result<Vec<TicketEvent>, ParseError>;
    /// Reads the ticket's current state and approvals through the API.
    async fn confirm(&self, ticket: &TicketRef) -> Result<Confirmation, ConnectorError>;
    /// Performs one writeback. Comments carry `wb.marker` in a form [`Connector::has_comment`]
    /// can find again.
    async fn write_back(&self, wb: &Writeback) -> Result<(), ConnectorError>;
    /// Whether the ticket already has the comment carrying `wb.marker`: asked before a comment
    /// is re-attempted, since an earlier attempt may have succeeded without being acknowledged.
    /// Connectors that cannot tell answer `false` (the comment may then appear twice).
    async fn has_comment(&self, _wb: &Writeback) -> Result<bool, ConnectorError> {
        Ok(false)
    }
    /// Are the base URL and credentials accepted? Reported, never fatal.
    async fn healthcheck(&self) -> Result<(), ConnectorError>;
}

/// SHA-256 of the body, hex: the dedupe key for systems that give no delivery id.
pub fn body_hash_key(body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(body)))
}

/// `[outbound]` of a connector file: how writebacks and confirmations authenticate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "auth", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OutboundConfig {
    /// HTTP Basic: `username` plus the password / API token from `token_env`.
    Basic { username: String, token_env: String },
    /// `Authorization: Bearer <token from token_env>` (e.g. an OAuth access token).
    Bearer { token_env: String },
    /// Freshworks style: Basic with the API key as user name and `X` as password.
    ApiKey { token_env: String },
}

/// Resolved outbound credentials. Debug output never shows the secret.
#[derive(Clone)]
pub enum OutboundAuth {
    Basic {
        username: String,
        password: secrecy::SecretString,
    },
    Bearer {
        token: secrecy::SecretString,
    },
    ApiKey {
        key: secrecy::SecretString,
    },
}

impl std::fmt::Debug for OutboundAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutboundAuth::Basic { username, .. } => write!(f, "Basic({username}, [redacted])"),
            OutboundAuth::Bearer { .. } => f.write_str("Bearer([redacted])"),
            OutboundAuth::ApiKey { .. } => f.write_str("ApiKey([redacted])"),
        }
    }
}

impl OutboundAuth {
    /// Resolves the secret named by `cfg`, or explains which variable is missing.
    pub fn resolve(
        cfg: &OutboundConfig,
        secrets: &dyn crate::config::SecretSource,
    ) -> Result<Self, String> {
        let need = |var: &str| {
            secrets.get(var).ok_or_else(|| {
                format!(
                    "environment variable {var} is not set (it must hold the outbound credential)"
                )
            })
        };
        Ok(match cfg {
            OutboundConfig::Basic {
                username,
                token_env,
            } => OutboundAuth::Basic {
                username: username.clone(),
                password: need(token_env)?,
            },
            OutboundConfig::Bearer { token_env } => OutboundAuth::Bearer {
                token: need(token_env)?,
            },
            OutboundConfig::ApiKey { token_env } => OutboundAuth::ApiKey {
                key: need(token_env)?,
            },
        })
    }

    /// Adds the `Authorization` header to a request.
    pub fn apply(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        use secrecy::ExposeSecret;
        match self {
            OutboundAuth::Basic { username, password } => {
                rb.basic_auth(username, Some(password.expose_secret()))
            }
            OutboundAuth::Bearer { token } => rb.bearer_auth(token.expose_secret()),
            OutboundAuth::ApiKey { key } => rb.basic_auth(key.expose_secret(), Some("X")),
        }
    }
}

/// The connector kinds this build knows, with each kind's own validated settings.
#[derive(Debug, Clone)]
pub enum KindOptions {
    /// Jira Cloud / JSM (no kind-specific keys).
    Jira,
    /// ServiceNow (table, journal field, state names).
    ServiceNow(servicenow::Options),
    /// Freshservice (private notes, pacing, status names).
    Freshservice(freshservice::Options),
    /// Any ITSM described by its connector file.
    Generic(Box<generic::Options>),
}

/// The kind names [`validate_kind`] accepts.
pub const KINDS: &[&str] = &["jira", "servicenow", "freshservice", "generic"];

/// Validates the kind-specific keys of a connector file (everything besides `id`, `kind`,
/// `base_url`, `inbound`, `outbound`, `confirm_approvals`, `timeout`) and returns the kind's
/// inbound-auth defaults. Pure.
pub fn validate_kind(
    kind: &str,
    options: &toml::Table,
    file: &std::path::Path,
) -> Result<(KindOptions, InboundDefaults), Vec<crate::config::Problem>> {
    let no_options = |kind_name: &str| -> Result<(), Vec<crate::config::Problem>> {
        match options.keys().next() {
            None => Ok(()),
            Some(k) => Err(vec![crate::config::Problem::new(
                file,
                k.clone(),
                format!(
                    "unknown key for a {kind_name} connector; expected id, kind, base_url, inbound, outbound, confirm_approvals, timeout"
                ),
            )]),
        }
    };
    match kind {
        "jira" => {
            no_options("jira")?;
            Ok((KindOptions::Jira, jira::INBOUND_DEFAULTS))
        }
        "servicenow" => Ok((
            KindOptions::ServiceNow(servicenow::Options::from_table(options, file)?),
            servicenow::INBOUND_DEFAULTS,
        )),
        "freshservice" => Ok((
            KindOptions::Freshservice(freshservice::Options::from_table(options, file)?),
            freshservice::INBOUND_DEFAULTS,
        )),
        "generic" => generic::Options::from_table(options, file)
            .map(|o| (KindOptions::Generic(Box::new(o)), generic::INBOUND_DEFAULTS)),
        other => Err(vec![crate::config::Problem::new(
            file,
            "kind",
            format!(
                "unknown connector kind {other:?}; expected one of {}",
                KINDS.join(", ")
            ),
        )]),
    }
}

/// A configured connector with its inbound authentication.
#[derive(Clone)]
pub struct Registered {
    /// The connector itself.
    pub connector: std::sync::Arc<dyn Connector>,
    /// How its deliveries are authenticated.
    pub inbound: std::sync::Arc<crate::ingress::auth::InboundAuth>,
    /// Whether approvals are confirmed through the API before a grant.
    pub confirm_approvals: bool,
}

/// All configured connectors by id.
#[derive(Clone, Default)]
pub struct Registry {
    by_id: std::collections::HashMap<String, Registered>,
}

impl Registry {
    /// Builds every connector of the configuration. Building does no I/O.
    pub fn build(settings: &[crate::config::ConnectorSettings], client: &reqwest::Client) -> Self {
        let by_id = settings
            .iter()
            .map(|s| {
                let connector: std::sync::Arc<dyn Connector> = match &s.options {
                    KindOptions::Jira => std::sync::Arc::new(jira::JiraConnector::new(
                        s.id.clone(),
                        s.base_url.clone(),
                        s.outbound.clone(),
                        s.timeout,
                        client.clone(),
                    )),
                    KindOptions::ServiceNow(o) => {
                        std::sync::Arc::new(servicenow::ServiceNowConnector::new(
                            s.id.clone(),
                            s.base_url.clone(),
                            s.outbound.clone(),
                            s.timeout,
                            client.clone(),
                            o.clone(),
                        ))
                    }
                    KindOptions::Freshservice(o) => {
                        std::sync::Arc::new(freshservice::FreshserviceConnector::new(
                            s.id.clone(),
                            s.base_url.clone(),
                            s.outbound.clone(),
                            s.timeout,
                            client.clone(),
                            o.clone(),
                        ))
                    }
                    KindOptions::Generic(o) => std::sync::Arc::new(generic::GenericConnector::new(
                        s.id.clone(),
                        s.base_url.clone(),
                        s.outbound.clone(),
                        s.timeout,
                        client.clone(),
                        (**o).clone(),
                    )),
                };
                (
                    s.id.clone(),
                    Registered {
                        connector,
                        inbound: s.inbound.clone(),
                        confirm_approvals: s.confirm_approvals,
                    },
                )
            })
            .collect();
        Self { by_id }
    }

    /// The connector with this id.
    pub fn get(&self, id: &str) -> Option<&Registered> {
        self.by_id.get(id)
    }

    /// Every connector, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Registered> {
        self.by_id.values()
    }
}
