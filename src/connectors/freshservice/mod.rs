//! Freshservice connector (kind `"freshservice"`).
//!
//! Owns both directions of Freshservice's wire format (`itsm-wire-formats.md`, section 3).
//! Freshservice cannot sign webhooks: deliveries come from a Workflow Automator "Trigger
//! Webhook" node whose JSON body an admin pastes in (`connectors/freshservice/`), authenticated
//! only by a shared secret in an `X-Api-Key` header ([`INBOUND_DEFAULTS`]). So the body is
//! treated strictly as a trigger: `parse` only needs it to name a ticket, and `confirm` re-reads
//! the ticket, its requester and its approvals through API v2 for everything a grant depends
//! on. Writebacks are HTML notes and status codes. Calls are paced against Freshservice's
//! per-minute, per-account budget before it runs out (`pace.rs`).

mod client;
mod html;
mod model;
mod options;
mod pace;
mod parse;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Url;

pub use options::Options;
pub use pace::RateBudget;

use crate::connectors::{
    Confirmation, Connector, ConnectorError, InboundDefaults, OutboundAuth, ParseError,
    RawDelivery, Writeback, WritebackAction, body_hash_key,
};
use crate::signatures::Encoding;
use crate::ticket::{Approval, Person, TicketEvent, TicketRef};
use client::{Directory, FreshserviceClient};
use options::StatusTable;
use pace::Pacer;

/// Freshservice's inbound defaults: the shared secret arrives in `X-Api-Key`, compared as is.
/// Exists so a connector file only has to say `auth = "header"`; the prefix and encoding are
/// irrelevant to a header comparison and are given only because the type requires them.
pub const INBOUND_DEFAULTS: InboundDefaults = InboundDefaults {
    header: "X-Api-Key",
    prefix: "",
    encoding: Encoding::Hex,
};

/// Most approvers whose e-mail is looked up for one confirmation; beyond this they are listed
/// by id only (ids still take part in identity checks).
const MAX_APPROVER_LOOKUPS: usize = 10;

/// What Freshservice's API says about one ticket: the [`Confirmation`] the engine decides on,
/// plus the ticket's `custom_fields`.
///
/// Exists because [`Confirmation`] has no room for ticket fields yet, while Freshservice
/// requests keep everything a grant needs (target machine, duration) in custom fields whose
/// values the untrusted webhook body cannot be relied on for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketSnapshot {
    /// Status, requester and approval as confirmed through the API.
    pub confirmation: Confirmation,
    /// The ticket's `custom_fields` object as the API returns it (keys are the fields'
    /// internal names); an empty object when the ticket has none.
    pub custom_fields: serde_json::Value,
}

/// One configured Freshservice account, both directions.
///
/// Exists so the rest of the daemon can treat Freshservice like any other ITSM through
/// [`Connector`]: parsing is pure and uses only the configured base URL, and every API call is
/// authenticated, paced, time-limited and classified for retries.
#[derive(Debug, Clone)]
pub struct FreshserviceConnector {
    id: String,
    base_url: Url,
    options: Options,
    statuses: StatusTable,
    client: FreshserviceClient,
}

impl FreshserviceConnector {
    /// A connector for the account at `base_url` (e.g. `https://example.freshservice.com`, or
    /// `http://127.0.0.1:port` for a simulator), calling API v2 with `auth` (an API key is sent
    /// as Basic `key:X`) and giving every request at most `timeout`.
    ///
    /// Any user name, password, query or fragment in `base_url` is dropped: credentials come
    /// only from `auth`, so they can never leak through a URL in a log line or error.
    pub fn new(
        id: String,
        base_url: Url,
        auth: OutboundAuth,
        timeout: Duration,
        client: reqwest::Client,
        options: Options,
    ) -> Self {
        Self::with_rate_window(id, base_url, auth, timeout, client, options, pace::WINDOW)
    }

    /// [`FreshserviceConnector::new`] with a rate-limit window other than Freshservice's one
    /// minute, so tests can watch the pacing without waiting for minutes.
    pub(crate) fn with_rate_window(
        id: String,
        base_url: Url,
        auth: OutboundAuth,
        timeout: Duration,
        client: reqwest::Client,
        options: Options,
        window: Duration,
    ) -> Self {
        let mut base_url = base_url;
        // Both only fail for URLs that cannot carry credentials at all (no host), which is fine.
        let _ = base_url.set_username("");
        let _ = base_url.set_password(None);
        base_url.set_query(None);
        base_url.set_fragment(None);
        let pacer = Arc::new(Pacer::new(options.min_remaining, window));
        let client = FreshserviceClient::new(base_url.clone(), auth, timeout, client, pacer);
        Self {
            id,
            base_url,
            statuses: options.status_table(),
            options,
            client,
        }
    }

    /// Everything the API says about `ticket` that a decision needs, plus its custom fields.
    ///
    /// - status: `GET /api/v2/tickets/{id}`, the code named through the status table;
    /// - requester: `requester_id` looked up in `/api/v2/requesters/{id}` (`primary_email`),
    ///   falling back to `/api/v2/agents/{id}` (an agent can raise tickets too);
    /// - approval: keyed on `approval_status_name` (case-insensitive): "Approved" is
    ///   `approved`, "Rejected" `rejected`, "Requested" `pending`, anything else (including
    ///   numeric codes nobody has confirmed) is some state other than `approved`, so the engine
    ///   grants nothing on it;
    /// - approvers: for a decided approval, the records of `GET /api/v2/tickets/{id}/approvals`
    ///   whose status matches the decision, each approver's e-mail looked up through the agents
    ///   endpoint (then requesters). A delegatee who answered is listed as well. When the
    ///   approvals endpoint answers `404`, approvers stay empty and the engine falls back to the
    ///   event's actor — which for Freshservice bodies is nobody, so a mapping that requires a
    ///   distinct approver refuses rather than guesses.
    pub async fn snapshot(&self, ticket: &TicketRef) -> Result<TicketSnapshot, ConnectorError> {
        let id = ticket_id_of(ticket)?;
        let record = self.client.ticket(id).await?;
        let status = model::ticket_status(&record, &self.statuses);
        let custom_fields = parse::object(record.get("custom_fields")).map_or_else(
            || serde_json::json!({}),
            |m| serde_json::Value::Object(m.clone()),
        );
        let requester = match parse::numeric_id(record.get("requester_id")) {
            Some(rid) => Some(
                self.client
                    .user(&rid, &[Directory::Requesters, Directory::Agents])
                    .await?
                    .unwrap_or(Person {
                        id: Some(rid),
                        email: None,
                        name: None,
                    }),
            ),
            None => None,
        };
        let approval = match model::ticket_approval_state(&record) {
            None => None,
            Some(state @ ("approved" | "rejected")) => Some(self.decided(id, state).await?),
            Some(state) => Some(Approval {
                state: state.to_owned(),
                approvers: Vec::new(),
                decided_at: None,
            }),
        };
        Ok(TicketSnapshot {
            confirmation: Confirmation {
                status,
                approval,
                requester,
                fields: Some(serde_json::json!({ "custom_fields": custom_fields.clone() })),
            },
            custom_fields,
        })
    }

    /// The account's API budget as the latest response reported it, and the pacing it causes.
    pub async fn rate_budget(&self) -> RateBudget {
        self.client.pacer().budget().await
    }

    /// The decided approval `state` with the people who made that decision.
    async fn decided(&self, id: &str, state: &'static str) -> Result<Approval, ConnectorError> {
        let Some(records) = self.client.approvals(id).await? else {
            return Ok(Approval {
                state: state.to_owned(),
                approvers: Vec::new(),
                decided_at: None,
            });
        };
        let deciding: Vec<&model::Decision> = records.iter().filter(|d| d.state == state).collect();
        let decided_at = deciding.iter().filter_map(|d| d.updated_at).max();
        let mut seen = BTreeSet::new();
        let mut approvers = Vec::new();
        for d in &deciding {
            let ids = [d.approver_id.as_deref(), d.delegatee_id.as_deref()];
            for (i, uid) in ids.into_iter().flatten().enumerate() {
                if !seen.insert(uid.to_owned()) {
                    continue;
                }
                let name = if i == 0 {
                    d.approver_name.clone()
                } else {
                    None
                };
                let looked_up = if seen.len() <= MAX_APPROVER_LOOKUPS {
                    self.client
                        .user(uid, &[Directory::Agents, Directory::Requesters])
                        .await?
                } else {
                    None
                };
                approvers.push(looked_up.unwrap_or(Person {
                    id: Some(uid.to_owned()),
                    email: None,
                    name,
                }));
            }
        }
        Ok(Approval {
            state: state.to_owned(),
            approvers,
            decided_at,
        })
    }
}

/// `base` with `segments` appended as percent-encoded path segments (a trailing `/` on the base
/// is ignored). Shared by the ticket links and every REST call.
pub(crate) fn endpoint(base: &Url, segments: &[&str]) -> Result<Url, ConnectorError> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| {
            ConnectorError::Invalid("the Freshservice base URL cannot carry a path".to_owned())
        })?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// The ticket's numeric id for a REST path: `id`, else the digits of a `#123` key; anything
/// that is not plain digits is refused, so it can never change the path's meaning.
fn ticket_id_of(ticket: &TicketRef) -> Result<&str, ConnectorError> {
    let from_key = ticket.key.strip_prefix('#').unwrap_or(&ticket.key);
    [ticket.id.as_str(), from_key]
        .into_iter()
        .find(|s| parse::is_ticket_id(s))
        .ok_or_else(|| {
            ConnectorError::Invalid(format!(
                "ticket {:?} has no usable Freshservice ticket id",
                client::clean(&ticket.key)
            ))
        })
}

#[async_trait]
impl Connector for FreshserviceConnector {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        "freshservice"
    }

    /// `freshservice:<ticket_id>:<updated_at>:<event>:<status>:<approval_status>` from the body
    /// when it names the ticket, the time and the event (Freshservice gives no delivery id); the
    /// body hash otherwise.
    fn dedupe_key(&self, delivery: &RawDelivery) -> String {
        parse::dedupe_key(&delivery.body).unwrap_or_else(|| body_hash_key(&delivery.body))
    }

    fn parse(&self, delivery: &RawDelivery) -> Result<Vec<TicketEvent>, ParseError> {
        parse::parse_body(&self.id, &self.base_url, &self.statuses, &delivery.body)
    }

    async fn confirm(&self, ticket: &TicketRef) -> Result<Confirmation, ConnectorError> {
        self.snapshot(ticket).await.map(|s| s.confirmation)
    }

    /// Comments become notes (`private` per [`Options::private_notes`]) with the text as
    /// escaped HTML; a status name becomes its code through the status table (digits are taken
    /// as a code), and an unknown name is [`ConnectorError::Invalid`].
    async fn write_back(&self, wb: &Writeback) -> Result<(), ConnectorError> {
        let id = ticket_id_of(&wb.ticket)?;
        match &wb.action {
            WritebackAction::Comment { text } => {
                let text = format!("{text}\n\n{}", wb.marker);
                self.client
                    .add_note(id, &html::note_body(&text), self.options.private_notes)
                    .await
            }
            WritebackAction::Status { name } => {
                let wanted = name.trim();
                let code = self
                    .statuses
                    .code_of(wanted)
                    .or_else(|| wanted.parse::<u16>().ok().filter(|c| *c > 0))
                    .ok_or_else(|| {
                        ConnectorError::Invalid(client::clean(&format!(
                            "ticket {id}: no Freshservice status is called {wanted:?} (known: {}; add custom statuses under `statuses` in the connector file)",
                            self.statuses.names().join(", ")
                        )))
                    })?;
                self.client.set_status(id, code).await
            }
        }
    }

    /// Notes end in a paragraph holding the marker; the ticket's conversations are searched.
    async fn has_comment(&self, wb: &Writeback) -> Result<bool, ConnectorError> {
        self.client
            .has_note(ticket_id_of(&wb.ticket)?, &wb.marker)
            .await
    }

    async fn healthcheck(&self) -> Result<(), ConnectorError> {
        self.client.healthcheck().await
    }
}
