//! The grant state machine of DESIGN.md, as a pure function: given a state and what happened,
//! the next state or a refusal. Nothing here does I/O; the [`super::service`] persists each
//! transition together with its audit record and outbox rows.

use serde::{Deserialize, Serialize};

/// Where a grant is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    /// A ticket matched a mapping; waiting for an approval.
    Requested,
    /// Approved and policy-checked; the provider has not confirmed the apply yet.
    Approved,
    /// The privilege is held by the subject.
    Active,
    /// The deadline passed; the revoke is under way.
    Expiring,
    /// Ended early (ticket resolved, admin); the revoke is under way.
    Revoking,
    /// The revoke failed repeatedly; still retried, alarms raised.
    RevokeFailed,
    /// Ended at its deadline and revoked.
    Expired,
    /// Ended early and revoked.
    Revoked,
    /// Rejected by an approver or refused by policy.
    Denied,
    /// The provider could not apply it within the apply window.
    Failed,
    /// The ticket was cancelled before approval.
    Cancelled,
}

/// Every state, for exhaustive tests and metrics.
pub const ALL_STATES: [GrantState; 11] = [
    GrantState::Requested,
    GrantState::Approved,
    GrantState::Active,
    GrantState::Expiring,
    GrantState::Revoking,
    GrantState::RevokeFailed,
    GrantState::Expired,
    GrantState::Revoked,
    GrantState::Denied,
    GrantState::Failed,
    GrantState::Cancelled,
];

impl GrantState {
    /// The stored / displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Requested => "requested",
            GrantState::Approved => "approved",
            GrantState::Active => "active",
            GrantState::Expiring => "expiring",
            GrantState::Revoking => "revoking",
            GrantState::RevokeFailed => "revoke_failed",
            GrantState::Expired => "expired",
            GrantState::Revoked => "revoked",
            GrantState::Denied => "denied",
            GrantState::Failed => "failed",
            GrantState::Cancelled => "cancelled",
        }
    }

    /// Terminal states never change again; a ticket may get a new grant only after one is reached.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            GrantState::Expired
                | GrantState::Revoked
                | GrantState::Denied
                | GrantState::Failed
                | GrantState::Cancelled
        )
    }

    /// States in which the subject may hold the privilege at the endpoint (or a revoke is pending),
    /// so the provider must be told to revoke before the grant can end.
    pub fn may_hold_privilege(self) -> bool {
        matches!(
            self,
            GrantState::Approved
                | GrantState::Active
                | GrantState::Expiring
                | GrantState::Revoking
                | GrantState::RevokeFailed
        )
    }
}

impl std::fmt::Display for GrantState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for GrantState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_STATES
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// A state name that is not one of [`ALL_STATES`].
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown grant state {0:?} (expected one of requested, approved, active, expiring, revoking, revoke_failed, expired, revoked, denied, failed, cancelled)"
)]
pub struct UnknownState(pub String);

/// Why a revoke is happening: decides whether a successful revoke ends in `expired` or `revoked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeCause {
    /// The deadline passed.
    Deadline,
    /// Ticket resolved/cancelled or an admin asked.
    Early,
}

/// Something that happened to a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantEvent {
    /// An approval that passed policy.
    Approve,
    /// A rejection, or a policy refusal.
    Deny,
    /// The ticket was cancelled.
    Cancel,
    /// The provider applied the privilege.
    ProviderApplied,
    /// The provider could not apply it within the apply window.
    ProviderFailed,
    /// The deadline passed.
    Deadline,
    /// Ticket resolved / cancelled after approval, or an admin revoke.
    EndEarly,
    /// The provider confirmed the revoke.
    RevokeSucceeded,
    /// The revoke failed too many times in a row: raise the alarm, keep retrying.
    RevokeExhausted,
    /// A second approval of an active grant: it stays active with a later deadline (capped by
    /// [`super::lifetime::renew`]).
    Renew,
}

/// A transition the machine does not allow. Callers record it and ignore the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a grant in state {from} cannot take event {event:?}")]
pub struct InvalidTransition {
    /// The state the grant was in.
    pub from: GrantState,
    /// The event that does not apply to it.
    pub event: GrantEvent,
}

/// The next state after `event`, given the grant's current `state` and, for revokes, why it is
/// being revoked. This is the only place that knows the arrows of DESIGN.md's diagram.
pub fn next_state(
    state: GrantState,
    event: GrantEvent,
    cause: Option<RevokeCause>,
) -> Result<GrantState, InvalidTransition> {
    use GrantEvent as E;
    use GrantState as S;
    let next = match (state, event) {
        (S::Requested, E::Approve) => S::Approved,
        (S::Requested, E::Deny) => S::Denied,
        (S::Requested, E::Cancel) => S::Cancelled,
        (S::Approved, E::ProviderApplied) => S::Active,
        (S::Approved, E::ProviderFailed) => S::Failed,
        // Ended before the provider confirmed: the apply may still have landed, so revoke.
        (S::Approved, E::EndEarly | E::Cancel) => S::Revoking,
        (S::Active, E::Deadline) => S::Expiring,
        (S::Active, E::EndEarly | E::Cancel) => S::Revoking,
        // Only a grant that holds its privilege can be renewed; the new deadline is capped.
        (S::Active, E::Renew) => S::Active,
        // An early end that arrives while the deadline revoke is running changes nothing:
        // the grant ends as soon as the revoke lands, either way.
        (S::Expiring | S::Revoking, E::RevokeExhausted) => S::RevokeFailed,
        (S::Expiring, E::RevokeSucceeded) => S::Expired,
        (S::Revoking, E::RevokeSucceeded) => S::Revoked,
        (S::RevokeFailed, E::RevokeSucceeded) => match cause {
            Some(RevokeCause::Early) => S::Revoked,
            _ => S::Expired,
        },
        (from, event) => return Err(InvalidTransition { from, event }),
    };
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL_EVENTS: [GrantEvent; 10] = [
        GrantEvent::Approve,
        GrantEvent::Deny,
        GrantEvent::Cancel,
        GrantEvent::ProviderApplied,
        GrantEvent::ProviderFailed,
        GrantEvent::Deadline,
        GrantEvent::EndEarly,
        GrantEvent::RevokeSucceeded,
        GrantEvent::RevokeExhausted,
        GrantEvent::Renew,
    ];

    #[test]
    fn only_an_active_grant_can_be_renewed() {
        for s in ALL_STATES {
            let got = next_state(s, GrantEvent::Renew, None);
            if s == GrantState::Active {
                assert_eq!(got, Ok(GrantState::Active));
            } else {
                assert!(got.is_err(), "{s} took a renewal");
            }
        }
    }

    #[test]
    fn happy_path_ends_expired() {
        let mut s = GrantState::Requested;
        for e in [
            GrantEvent::Approve,
            GrantEvent::ProviderApplied,
            GrantEvent::Deadline,
            GrantEvent::RevokeSucceeded,
        ] {
            s = next_state(s, e, Some(RevokeCause::Deadline)).unwrap();
        }
        assert_eq!(s, GrantState::Expired);
    }

    #[test]
    fn early_end_after_failed_revokes_ends_revoked() {
        let s = next_state(GrantState::Active, GrantEvent::EndEarly, None).unwrap();
        let s = next_state(s, GrantEvent::RevokeExhausted, None).unwrap();
        assert_eq!(s, GrantState::RevokeFailed);
        assert_eq!(
            next_state(s, GrantEvent::RevokeSucceeded, Some(RevokeCause::Early)).unwrap(),
            GrantState::Revoked
        );
    }

    #[test]
    fn terminal_states_accept_nothing() {
        for s in ALL_STATES.into_iter().filter(|s| s.is_terminal()) {
            for e in ALL_EVENTS {
                assert!(next_state(s, e, None).is_err(), "{s} took {e:?}");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in ALL_STATES {
            assert_eq!(s.as_str().parse::<GrantState>().unwrap(), s);
        }
    }

    fn any_event() -> impl Strategy<Value = GrantEvent> {
        proptest::sample::select(ALL_EVENTS.to_vec())
    }

    proptest! {
        /// Whatever happens, a grant that may hold a privilege only reaches a terminal state
        /// through a confirmed revoke (or a failed apply, which never granted anything).
        #[test]
        fn privilege_is_never_dropped_without_revoke(events in proptest::collection::vec(any_event(), 0..40)) {
            let mut s = GrantState::Requested;
            let mut was_active = false;
            for e in events {
                if let Ok(n) = next_state(s, e, Some(RevokeCause::Early)) {
                    if n.is_terminal() && s.may_hold_privilege() {
                        prop_assert!(e == GrantEvent::RevokeSucceeded || (s == GrantState::Approved && e == GrantEvent::ProviderFailed),
                            "{s} -> {n} via {e:?}");
                    }
                    was_active |= n == GrantState::Active;
                    s = n;
                }
            }
            if was_active { prop_assert!(s != GrantState::Requested && s != GrantState::Denied); }
        }

        /// Only an approval can move a grant out of `requested` towards a privilege.
        #[test]
        fn only_approve_leads_to_privilege(e in any_event()) {
            if let Ok(n) = next_state(GrantState::Requested, e, None) {
                prop_assert_eq!(n.may_hold_privilege(), e == GrantEvent::Approve);
            }
        }
    }
}
