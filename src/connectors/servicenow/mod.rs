//! ServiceNow connector (kind `servicenow`).
//!
//! Owns both directions of ServiceNow's wire format (`itsm-wire-formats.md`, section 2).
//! ServiceNow has no signed webhook of its own, so deliveries come from the Business Rule shipped
//! in `connectors/servicenow/business-rule.js` (signed `X-Signature: base64(HMAC-SHA256)`, see
//! [`INBOUND_DEFAULTS`]) or from other scripts posting Table API records; the parser accepts all
//! of these shapes. Because a script is only a trigger, approvals are confirmed through the Table
//! API: the ticket's `approval` field, its `sysapproval_approver` rows and the
//! approvers' `sys_user` records. Writebacks append to a journal field and set `state` codes.

mod client;
pub mod options;
mod parse;
#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Url;
use serde_json::Value;

pub use self::options::{JournalField, Options};
use crate::connectors::{
    Confirmation, Connector, ConnectorError, InboundDefaults, OutboundAuth, ParseError,
    RawDelivery, Writeback, WritebackAction, body_hash_key,
};
use crate::signatures::Encoding;
use crate::ticket::{TicketEvent, TicketRef};

/// The shipped Business Rule's signature: `X-Signature: <base64 HMAC-SHA256 of the raw body>`,
/// no prefix. Exists so a connector file with `auth = "hmac-sha256"` needs no further settings
/// for ServiceNow (`GlideCertificateEncryption.generateMac` produces base64, not hex).
pub const INBOUND_DEFAULTS: InboundDefaults = InboundDefaults {
    header: "X-Signature",
    prefix: "",
    encoding: Encoding::Base64,
};

/// Tables tried, in order, when neither the ticket link nor the connector file names one.
const DEFAULT_TABLES: [&str; 2] = ["sc_req_item", "incident"];
/// Longest `event_id` used verbatim as a dedupe key.
const MAX_EVENT_ID_LEN: usize = 200;

/// One configured ServiceNow instance, both directions.
///
/// Exists so the rest of the daemon can treat ServiceNow like any other ITSM through
/// [`Connector`]: parsing is pure and uses only the configured base URL (never links from the
/// payload), approvals are decided by the instance's own approval records, and every API call is
/// authenticated, time-limited and classified for retries.
#[derive(Debug, Clone)]
pub struct ServiceNowConnector {
    id: String,
    base_url: Url,
    options: Options,
    client: client::SnowClient,
}

impl ServiceNowConnector {
    /// A connector for the instance at `base_url` (e.g. `https://example.service-now.com`, or
    /// `http://127.0.0.1:port` for the simulator), calling the Table API with `auth`, giving every
    /// request at most `timeout`, and applying the file's kind-specific `options`.
    ///
    /// Any user name, password, query or fragment in `base_url` is dropped: credentials come only
    /// from `auth`, so they can never leak through a URL in a log line or error.
    pub fn new(
        id: String,
        base_url: Url,
        auth: OutboundAuth,
        timeout: Duration,
        client: reqwest::Client,
        options: Options,
    ) -> Self {
        let mut base_url = base_url;
        // Both only fail for URLs that cannot carry credentials at all (no host), which is fine.
        let _ = base_url.set_username("");
        let _ = base_url.set_password(None);
        base_url.set_query(None);
        base_url.set_fragment(None);
        let client = client::SnowClient::new(base_url.clone(), auth, timeout, client);
        Self {
            id,
            base_url,
            options,
            client,
        }
    }

    /// The tables to look the ticket up in, in order: the one its link names (our parser builds
    /// it from the delivery's table), then the configured table, else `sc_req_item` and `incident`.
    fn tables_for(&self, ticket: &TicketRef) -> Vec<String> {
        let mut tables: Vec<String> = ticket
            .url
            .as_deref()
            .and_then(parse::table_in_url)
            .into_iter()
            .collect();
        match &self.options.table {
            Some(t) => tables.push(t.clone()),
            None => tables.extend(DEFAULT_TABLES.iter().map(|t| (*t).to_owned())),
        }
        let mut seen = std::collections::HashSet::new();
        tables.retain(|t| seen.insert(t.clone()));
        tables
    }
}

/// The ticket's sys_id, refusing anything that could change a REST path or an encoded query.
fn sys_id_of(ticket: &TicketRef) -> Result<&str, ConnectorError> {
    if parse::is_record_id(&ticket.id) {
        Ok(&ticket.id)
    } else {
        Err(ConnectorError::Invalid(format!(
            "ticket {:?} has no usable ServiceNow sys_id",
            client::clean(&ticket.key)
        )))
    }
}

/// `base` with `segments` appended as percent-encoded path segments (a trailing `/` on the base
/// is ignored). Shared by the ticket links and every Table API call.
pub(crate) fn endpoint(base: &Url, segments: &[&str]) -> Result<Url, ConnectorError> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| {
            ConnectorError::Invalid("the ServiceNow base URL cannot carry a path".to_owned())
        })?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// The change a ServiceNow delivery body names, `None` when it names none: the Business Rule's
/// `event_id`, else `sys_id:sys_mod_count` of the record (top level, `record` or `result`).
fn change_key(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let top = v.as_object()?;
    if let Some(id) = parse::scalar(top.get("event_id"))
        && id.len() <= MAX_EVENT_ID_LEN
        && id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Some(format!("servicenow:{id}"));
    }
    let record = [top.get("record"), top.get("result")]
        .into_iter()
        .flatten()
        .find_map(Value::as_object);
    let field = |k: &str| {
        parse::scalar(top.get(k)).or_else(|| record.and_then(|r| parse::scalar(r.get(k))))
    };
    let sys_id = field("sys_id").filter(|s| parse::is_record_id(s))?;
    let count = field("sys_mod_count").filter(|c| c.bytes().all(|b| b.is_ascii_digit()))?;
    Some(format!("servicenow:{sys_id}:{count}"))
}

/// The first 16 hex digits of the body's SHA-256: enough to tell two bodies of one change apart.
fn short_digest(body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(body)[..8])
}

#[async_trait]
impl Connector for ServiceNowConnector {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        "servicenow"
    }

    /// `servicenow:<event_id>:<body digest>` (the Business Rule sends `<sys_id>:<sys_mod_count>`
    /// as `event_id`), else `servicenow:<sys_id>:<sys_mod_count>:<body digest>`, else the body
    /// hash. The change names the key; the digest keeps a body that only *claims* a future change
    /// (anyone holding the shared secret can sign one) from using up the key of the real one, while
    /// a retried delivery (same bytes) still deduplicates.
    fn dedupe_key(&self, delivery: &RawDelivery) -> String {
        match change_key(&delivery.body) {
            Some(change) => format!("{change}:{}", short_digest(&delivery.body)),
            None => body_hash_key(&delivery.body),
        }
    }

    fn parse(&self, delivery: &RawDelivery) -> Result<Vec<TicketEvent>, ParseError> {
        parse::parse_body(&self.id, &self.base_url, &self.options, &delivery.body)
    }

    /// Reads the ticket, its approval rows and the people involved. The approvers always come
    /// from the `sysapproval_approver` rows, never from the delivery.
    async fn confirm(&self, ticket: &TicketRef) -> Result<Confirmation, ConnectorError> {
        let sys_id = sys_id_of(ticket)?;
        self.client
            .confirm(&self.tables_for(ticket), sys_id, &self.options)
            .await
    }

    /// A comment appends to the configured journal field (ending in its marker line); a status sets `state` to the code of
    /// the named state (the `states` option, then the table's built-in map; a bare code passes).
    async fn write_back(&self, wb: &Writeback) -> Result<(), ConnectorError> {
        let sys_id = sys_id_of(&wb.ticket)?;
        let tables = self.tables_for(&wb.ticket);
        let mut unknown_in: Vec<&str> = Vec::new();
        let mut tried: Vec<&str> = Vec::new();
        for table in &tables {
            let body = match &wb.action {
                WritebackAction::Comment { text } => {
                    let mut note = serde_json::Map::new();
                    note.insert(
                        self.options.journal_field.as_str().to_owned(),
                        Value::String(format!("{text}\n\n{}", wb.marker)),
                    );
                    Value::Object(note)
                }
                WritebackAction::Status { name } => {
                    match parse::state_code(table, name, &self.options) {
                        Some(code) => serde_json::json!({ "state": code }),
                        None => {
                            unknown_in.push(table);
                            continue;
                        }
                    }
                }
            };
            tried.push(table);
            if self.client.patch(table, sys_id, &body).await? {
                return Ok(());
            }
        }
        if let (WritebackAction::Status { name }, true) = (&wb.action, tried.is_empty()) {
            return Err(ConnectorError::Invalid(client::clean(&format!(
                "{}: no state called {:?} in {} (add it to `states` in the connector file, e.g. states = {{ {:?} = \"2\" }})",
                wb.ticket.key,
                name.trim(),
                unknown_in.join(", "),
                name.trim()
            ))));
        }
        Err(ConnectorError::Rejected {
            status: 404,
            detail: client::clean(&format!(
                "PATCH: no record {sys_id} in {} (missing, or hidden from the integration user by an ACL)",
                tried.join(", ")
            )),
        })
    }

    /// Journal entries carry the marker as their last line; `sys_journal_field` finds them.
    async fn has_comment(&self, wb: &Writeback) -> Result<bool, ConnectorError> {
        let sys_id = sys_id_of(&wb.ticket)?;
        self.client
            .has_journal_entry(sys_id, self.options.journal_field.as_str(), &wb.marker)
            .await
    }

    async fn healthcheck(&self) -> Result<(), ConnectorError> {
        self.client.healthcheck().await
    }
}
