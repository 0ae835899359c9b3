//! Jira Cloud / Jira Service Management connector.
//!
//! Owns both directions of Jira's wire format (`itsm-wire-formats.md`, section 1): it turns admin
//! webhook deliveries into [`TicketEvent`]s (`parse`), confirms approvals through the REST API
//! because a webhook is only a trigger (`client`), and writes status back as ADF comments and
//! workflow transitions ([`adf`]). Inbound signatures are checked by the generic ingress; this
//! module only supplies Jira's defaults in [`INBOUND_DEFAULTS`].

pub mod adf;
mod client;
mod parse;
#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Url;

use crate::connectors::{
    Confirmation, Connector, ConnectorError, InboundDefaults, OutboundAuth, ParseError,
    RawDelivery, Writeback, WritebackAction, body_hash_key,
};
use crate::signatures::Encoding;
use crate::ticket::{TicketEvent, TicketRef};

/// Jira's inbound signature defaults: `X-Hub-Signature: sha256=<hex>`, an HMAC-SHA256 of the raw
/// body. Exists so a connector file with `auth = "hmac-sha256"` needs no further settings for Jira
/// (note: not GitHub's `X-Hub-Signature-256`).
pub const INBOUND_DEFAULTS: InboundDefaults = InboundDefaults {
    header: "X-Hub-Signature",
    prefix: "sha256=",
    encoding: Encoding::Hex,
};

/// The header Jira sets to a delivery id that is "unique within the site and unchanged across
/// retries": the natural dedupe key.
const WEBHOOK_ID_HEADER: &str = "X-Atlassian-Webhook-Identifier";
/// Longest webhook identifier used verbatim as a dedupe key.
const MAX_WEBHOOK_ID_LEN: usize = 200;

/// One configured Jira site, both directions.
///
/// Exists so the rest of the daemon can treat Jira like any other ITSM through [`Connector`]:
/// parsing is pure and uses only the configured base URL (never URLs from the payload), and every
/// API call is authenticated, time-limited and classified for retries.
#[derive(Debug, Clone)]
pub struct JiraConnector {
    id: String,
    base_url: Url,
    client: client::JiraClient,
}

impl JiraConnector {
    /// A connector for the site at `base_url` (e.g. `https://example.atlassian.net`, or
    /// `http://127.0.0.1:port` for the simulator), calling the API with `auth` and giving every
    /// request at most `timeout`.
    ///
    /// Any user name, password, query or fragment in `base_url` is dropped: credentials come only
    /// from `auth`, so they can never leak through a URL in a log line or error.
    pub fn new(
        id: String,
        base_url: Url,
        auth: OutboundAuth,
        timeout: Duration,
        client: reqwest::Client,
    ) -> Self {
        let mut base_url = base_url;
        // Both only fail for URLs that cannot carry credentials at all (no host), which is fine.
        let _ = base_url.set_username("");
        let _ = base_url.set_password(None);
        base_url.set_query(None);
        base_url.set_fragment(None);
        let client = client::JiraClient::new(base_url.clone(), auth, timeout, client);
        Self {
            id,
            base_url,
            client,
        }
    }
}

/// `base` with `segments` appended as percent-encoded path segments (a trailing `/` on the base
/// is ignored). Shared by the ticket links and every REST call.
pub(crate) fn endpoint(base: &Url, segments: &[&str]) -> Result<Url, ConnectorError> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| ConnectorError::Invalid("the Jira base URL cannot carry a path".to_owned()))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

#[async_trait]
impl Connector for JiraConnector {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        "jira"
    }

    /// `jira-webhook:<X-Atlassian-Webhook-Identifier>`, stable across Jira's retries; the body
    /// hash when the header is missing (e.g. Automation "Send web request") or implausible.
    fn dedupe_key(&self, delivery: &RawDelivery) -> String {
        match delivery.header(WEBHOOK_ID_HEADER).map(str::trim) {
            Some(id)
                if !id.is_empty()
                    && id.len() <= MAX_WEBHOOK_ID_LEN
                    && id.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                format!("jira-webhook:{id}")
            }
            _ => body_hash_key(&delivery.body),
        }
    }

    fn parse(&self, delivery: &RawDelivery) -> Result<Vec<TicketEvent>, ParseError> {
        parse::parse_body(&self.id, &self.base_url, &delivery.body)
    }

    async fn confirm(&self, ticket: &TicketRef) -> Result<Confirmation, ConnectorError> {
        self.client.confirm(client::issue_ref(ticket)?).await
    }

    async fn write_back(&self, wb: &Writeback) -> Result<(), ConnectorError> {
        let key = client::issue_ref(&wb.ticket)?;
        match &wb.action {
            WritebackAction::Comment { text } => {
                self.client.add_comment(key, text, &wb.marker).await
            }
            WritebackAction::Status { name } => self.client.transition_to(key, name).await,
        }
    }

    async fn has_comment(&self, wb: &Writeback) -> Result<bool, ConnectorError> {
        let key = client::issue_ref(&wb.ticket)?;
        self.client.has_comment(key, &wb.marker).await
    }

    async fn healthcheck(&self) -> Result<(), ConnectorError> {
        self.client.myself().await
    }
}
