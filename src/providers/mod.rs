//! Elevation providers apply and remove the privilege at the endpoint: [`webhook`] (a Standard
//! Webhooks-signed HTTP call to a PAM/EPM API) and [`command`] (a program run with an argument
//! vector, never a shell). Both receive the same JSON document ([`call_for`]), and both must be
//! idempotent for a given `webhook-id`, because the outbox retries until it hears success.

pub mod command;
pub mod webhook;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::grants::Grant;

/// Apply or revoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderAction {
    Apply,
    Revoke,
}

impl ProviderAction {
    /// The `type` field of the call body.
    pub fn event_type(self) -> &'static str {
        match self {
            ProviderAction::Apply => "grant.apply",
            ProviderAction::Revoke => "grant.revoke",
        }
    }
}

/// One call to a provider.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderCall {
    pub action: ProviderAction,
    /// Stable per (grant, action), so a receiver can deduplicate retries.
    pub webhook_id: String,
    /// `{"type": "grant.apply"|"grant.revoke", "grant": {...}}` as DESIGN.md specifies.
    pub body: serde_json::Value,
}

/// Key in a grant's stored context holding its resolved scope definition.
pub const SCOPE_DEFINITION_KEY: &str = "_scope_definition";

/// The grant's scope definition as providers receive it (`grant.scope_definition`): the one
/// stored with the grant, else the built-in definition of `local-admin` / `driver-install`
/// (grants recorded before definitions were stored), else `null`.
pub fn scope_definition(grant: &Grant) -> serde_json::Value {
    grant
        .context
        .get(SCOPE_DEFINITION_KEY)
        .cloned()
        .or_else(|| {
            crate::policy::scope::ScopeDefinition::of_builtin(&grant.scope)
                .and_then(|d| serde_json::to_value(d).ok())
        })
        .unwrap_or(serde_json::Value::Null)
}

/// The call document for `action` on `grant`.
pub fn call_for(grant: &Grant, action: ProviderAction) -> ProviderCall {
    let fmt_ts = |t: Option<jiff::Timestamp>| t.map(|t| t.to_string());
    ProviderCall {
        action,
        webhook_id: format!(
            "msg_{}_{}",
            grant.id.simple(),
            match action {
                ProviderAction::Apply => "apply",
                ProviderAction::Revoke => "revoke",
            }
        ),
        body: serde_json::json!({
            "type": action.event_type(),
            "grant": {
                "id": grant.id.to_string(),
                "subject": grant.subject,
                "target": grant.target,
                "scope": grant.scope,
                "scope_definition": scope_definition(grant),
                "starts_at": fmt_ts(grant.starts_at.or(grant.approved_at)),
                "expires_at": fmt_ts(grant.expires_at),
                "ticket": {
                    "connector": grant.ticket.connector,
                    "key": grant.ticket.key,
                    "url": grant.ticket.url,
                },
            },
        }),
    }
}

/// A failed provider call. Every failure is retried by the outbox; the message is recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The call could not be made or did not answer in time.
    #[error("provider unreachable: {0}")]
    Unreachable(String),
    /// The provider answered with a failure (non-2xx / non-zero exit).
    #[error("provider refused: {0}")]
    Refused(String),
}

/// Something that can grant and take away a privilege on an endpoint.
#[async_trait]
pub trait ElevationProvider: Send + Sync {
    /// The provider's name (`[providers.<name>]`).
    fn name(&self) -> &str;
    /// Grants the privilege. Idempotent per `call.webhook_id`.
    async fn apply(&self, call: &ProviderCall) -> Result<(), ProviderError>;
    /// Removes the privilege. Idempotent per `call.webhook_id`; removing what is not there succeeds.
    async fn revoke(&self, call: &ProviderCall) -> Result<(), ProviderError>;
}
