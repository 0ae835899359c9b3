//! The generic connector (kind `"generic"`): an ITSM without a built-in connector —
//! ManageEngine, TOPdesk, Zendesk, GLPI, a home-grown tool — described in its connector file
//! alone.
//!
//! The file says where each piece of a ticket is in a delivery (`[parse]`, JSONPaths), which GET
//! requests read the truth back through the system's API (`[[confirm.request]]`, URL templates
//! chained on values extracted by earlier requests, so that the approver is read from the API's
//! record and not from the delivery), how comments and status changes are written back
//! (`[writeback.*]`, minijinja request templates), and how the system reports errors
//! (`[errors]`). See [`options`] for the format and `connectors/zendesk.toml.example` for a
//! complete worked example.
//!
//! Security rests on three rules enforced here: URL templates must start with `base_url` and
//! every rendered URL is pinned to its origin before credentials are attached; values placed in
//! URLs are percent-encoded; secrets come only from `[outbound]` (`*_env`), never from templates.

mod client;
pub(crate) mod extract;
pub mod options;
mod parse;
pub(crate) mod template;
#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Url;

pub use options::Options;

use crate::connectors::{
    Confirmation, Connector, ConnectorError, InboundDefaults, OutboundAuth, ParseError,
    RawDelivery, Writeback,
};
use crate::signatures::Encoding;
use crate::ticket::{TicketEvent, TicketRef};

/// Inbound defaults for `auth = "hmac-sha256"` on a generic connector: `X-Signature` holding a
/// hex HMAC-SHA256 of the raw body, no prefix. Only used with that scheme; systems that cannot
/// sign (Zendesk triggers with a bearer token, most workflow tools) use `bearer` or `header`.
pub const INBOUND_DEFAULTS: InboundDefaults = InboundDefaults {
    header: "X-Signature",
    prefix: "",
    encoding: Encoding::Hex,
};

/// One system configured by a generic connector file, both directions.
///
/// Exists so that adding an ITSM is a file, not a release: parsing is pure and uses only the
/// file's paths, and every API call is authenticated, pinned to `base_url`, time-limited and
/// classified for the outbox's retries exactly like the built-in connectors' calls.
#[derive(Debug, Clone)]
pub struct GenericConnector {
    id: String,
    base_url: Url,
    options: Options,
    client: client::Client,
}

impl GenericConnector {
    /// A connector for the system at `base_url`, calling its API with `auth`, giving every
    /// request at most `timeout`, and following the compiled connector file `options`.
    ///
    /// Any user name, password, query or fragment in `base_url` is dropped: credentials come
    /// only from `auth`, so they never leak through a URL in a log line or an error.
    pub fn new(
        id: String,
        base_url: Url,
        auth: OutboundAuth,
        timeout: Duration,
        client: reqwest::Client,
        options: Options,
    ) -> Self {
        let mut base_url = base_url;
        // Both only fail for URLs that cannot carry credentials at all, which is fine.
        let _ = base_url.set_username("");
        let _ = base_url.set_password(None);
        base_url.set_query(None);
        base_url.set_fragment(None);
        let client = client::Client::new(base_url.clone(), auth, timeout, client);
        Self {
            id,
            base_url,
            options,
            client,
        }
    }
}

#[async_trait]
impl Connector for GenericConnector {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        "generic"
    }

    /// The `[parse] dedupe` value (a header or a JSONPath), else the body hash.
    fn dedupe_key(&self, delivery: &RawDelivery) -> String {
        parse::dedupe_key(&self.options, delivery)
    }

    fn parse(&self, delivery: &RawDelivery) -> Result<Vec<TicketEvent>, ParseError> {
        parse::parse(&self.id, &self.base_url, &self.options, delivery)
    }

    async fn confirm(&self, ticket: &TicketRef) -> Result<Confirmation, ConnectorError> {
        self.client.confirm(&self.options, ticket).await
    }

    async fn write_back(&self, wb: &Writeback) -> Result<(), ConnectorError> {
        self.client.write_back(&self.options, wb).await
    }

    async fn has_comment(&self, wb: &Writeback) -> Result<bool, ConnectorError> {
        self.client.has_comment(&self.options, wb).await
    }

    async fn healthcheck(&self) -> Result<(), ConnectorError> {
        self.client.healthcheck(&self.options).await
    }
}
