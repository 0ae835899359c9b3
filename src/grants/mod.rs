//! The grant ledger: what a grant is ([`Grant`]), how it may change ([`state`]), and the
//! [`service`] that turns decisions into committed transitions.

pub mod lifetime;
pub mod service;
pub mod state;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use state::{GrantEvent, GrantState, InvalidTransition, RevokeCause, next_state};

use crate::ticket::{Person, TicketRef};

/// One privilege, for one subject, on one target, for a limited time, tied to one ticket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    /// UUID v7: time-ordered.
    pub id: Uuid,
    /// The ticket this grant belongs to.
    pub ticket: TicketRef,
    /// The mapping that produced it. (connector, ticket id, mapping) has at most one live grant.
    pub mapping: String,
    /// Current state.
    pub state: GrantState,
    /// Who receives the privilege (directory account / e-mail).
    pub subject: String,
    /// Where (device / host name).
    pub target: String,
    /// What (`local-admin`, `app:<name>`, ...).
    pub scope: String,
    /// The elevation provider (name in `[providers.*]`).
    pub provider: String,
    /// Granted duration, already capped by the mapping's `max_duration`.
    #[serde(with = "duration_secs")]
    pub duration: SignedDuration,
    /// Who raised the ticket.
    pub requester: Option<Person>,
    /// Who approved (confirmed through the ITSM where possible).
    pub approvers: Vec<Person>,
    /// When the grant was first recorded.
    pub requested_at: Timestamp,
    /// When it was approved; the deadline is fixed from here.
    pub approved_at: Option<Timestamp>,
    /// When the provider confirmed the apply.
    pub starts_at: Option<Timestamp>,
    /// The deadline: approved_at + duration. No grant outlives it.
    pub expires_at: Option<Timestamp>,
    /// When it reached a terminal state.
    pub ended_at: Option<Timestamp>,
    /// Why a revoke is under way / happened.
    pub revoke_cause: Option<RevokeCause>,
    /// Human-readable reason of the last decisive transition (denial, failure, revoke).
    pub reason: Option<String>,
    /// `occurred_at` of the newest ticket event applied: older events are stale.
    pub last_event_at: Timestamp,
    /// Template context captured from the ticket (ticket, requester, actor, fields), so
    /// writebacks rendered later (at expiry) see the same names as at approval.
    pub context: serde_json::Value,
    /// Optimistic-concurrency counter, bumped by every committed transition.
    pub version: i64,
}

/// Serializes durations as whole seconds (storage and API).
pub mod duration_secs {
    use jiff::SignedDuration;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the duration as integer seconds.
    pub fn serialize<S: Serializer>(d: &SignedDuration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(d.as_secs())
    }

    /// Reads integer seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SignedDuration, D::Error> {
        Ok(SignedDuration::from_secs(i64::deserialize(d)?))
    }
}
