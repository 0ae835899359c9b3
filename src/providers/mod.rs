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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::scope::{ScopeDefinition, ScopeKind};

    fn grant(scope: &str, context: serde_json::Value) -> Grant {
        Grant {
            id: uuid::Uuid::nil(),
            ticket: crate::ticket::TicketRef {
                connector: "jira".into(),
                id: "1".into(),
                key: "ACCESS-1".into(),
                url: None,
            },
            mapping: "m".into(),
            state: crate::grants::GrantState::Approved,
            subject: "alice@example.com".into(),
            target: "WS-1".into(),
            scope: scope.into(),
            provider: "p".into(),
            duration: jiff::SignedDuration::from_hours(1),
            requester: None,
            approvers: Vec::new(),
            requested_at: jiff::Timestamp::UNIX_EPOCH,
            approved_at: None,
            starts_at: None,
            expires_at: None,
            ended_at: None,
            revoke_cause: None,
            reason: None,
            last_event_at: jiff::Timestamp::UNIX_EPOCH,
            context,
            version: 1,
        }
    }

    #[test]
    fn calls_carry_the_stored_scope_definition() {
        let def = ScopeDefinition {
            kind: ScopeKind::App,
            name: "7zip".into(),
            path: Some("/usr/bin/7z".into()),
            sha256: Some("ab".repeat(32)),
            args: vec!["x".into()],
            interpreter: None,
            service: None,
            actions: Vec::new(),
        };
        let g = grant(
            "app:7zip",
            serde_json::json!({ SCOPE_DEFINITION_KEY: serde_json::to_value(&def).unwrap() }),
        );
        for action in [ProviderAction::Apply, ProviderAction::Revoke] {
            let body = call_for(&g, action).body;
            assert_eq!(body["grant"]["scope"], "app:7zip");
            assert_eq!(body["grant"]["scope_definition"]["sha256"], "ab".repeat(32));
            assert_eq!(body["grant"]["scope_definition"]["path"], "/usr/bin/7z");
        }
    }

    #[test]
    fn grants_stored_before_definitions_get_the_built_in_one_or_null() {
        let old = grant("local-admin", serde_json::json!({}));
        let body = call_for(&old, ProviderAction::Revoke).body;
        assert_eq!(body["grant"]["scope_definition"]["kind"], "local-admin");
        assert!(body["grant"]["scope_definition"]["path"].is_null());
        let unknown = grant("app:gone", serde_json::Value::Null);
        assert!(scope_definition(&unknown).is_null());
    }
}
