//! The outbox: durable jobs written in the same transaction as the grant transition that caused
//! them, delivered by two independent workers — [`provider_worker`] (apply / revoke at the
//! endpoint) and [`writeback_worker`] (comments and state changes in the ticket) — so a slow or
//! rate-limited ITSM never delays a privilege change. The retry schedule lives on the row.

pub mod provider_worker;
pub mod writeback_worker;

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::connectors::Writeback;
use crate::grants::Grant;
use crate::providers::ProviderAction;
use crate::store::{Lane, NewJob};

/// Payload of a provider-lane job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderJob {
    pub grant_id: Uuid,
    pub action: ProviderAction,
    pub provider: String,
}

/// The job that applies or revokes `grant` at its provider. Jobs of one grant run in order.
pub fn provider_job(grant: &Grant, action: ProviderAction, now: Timestamp) -> NewJob {
    let payload = ProviderJob {
        grant_id: grant.id,
        action,
        provider: grant.provider.clone(),
    };
    NewJob {
        id: Uuid::now_v7(),
        lane: Lane::Provider,
        queue_key: grant.id.to_string(),
        payload: serde_json::to_value(payload).unwrap_or_default(),
        not_before: now,
    }
}

/// The job that performs `wb`. Writebacks of one ticket run in order.
pub fn writeback_job(wb: &Writeback, now: Timestamp) -> NewJob {
    NewJob {
        id: Uuid::now_v7(),
        lane: Lane::Writeback,
        queue_key: format!("{}:{}", wb.ticket.connector, wb.ticket.id),
        payload: serde_json::to_value(wb).unwrap_or_default(),
        not_before: now,
    }
}

/// Exponential backoff for the `attempts`-th failure (1-based): `initial · 2^(attempts-1)`,
/// capped at `max`, with up to 20% jitter derived from `salt` (so retries of many jobs spread
/// out without a random-number generator, and tests stay deterministic).
pub fn backoff(attempts: i32, initial: Duration, max: Duration, salt: u128) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(30);
    let base = initial.saturating_mul(1u32 << exp).min(max);
    let jitter_permille = (salt % 200) as u32; // 0..=199 ‰
    base.saturating_sub(base.mul_f64(f64::from(jitter_permille) / 1000.0))
        .max(Duration::from_millis(1))
}

/// The next attempt time: the backoff, or the system's own `Retry-After` if that is later.
pub fn next_attempt(now: Timestamp, delay: Duration, retry_after: Option<Duration>) -> Timestamp {
    let wait = retry_after.map_or(delay, |ra| ra.max(delay));
    now.checked_add(jiff::SignedDuration::try_from(wait).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_and_caps() {
        let (i, m) = (Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(backoff(1, i, m, 0), Duration::from_secs(1));
        assert_eq!(backoff(3, i, m, 0), Duration::from_secs(4));
        assert_eq!(backoff(20, i, m, 0), m);
        assert!(backoff(3, i, m, 199) < Duration::from_secs(4));
        assert!(backoff(3, i, m, 199) >= Duration::from_millis(3200));
    }

    #[test]
    fn retry_after_is_honoured_when_longer_than_backoff() {
        let now = Timestamp::from_second(1_000).unwrap();
        let t = next_attempt(now, Duration::from_secs(1), Some(Duration::from_secs(30)));
        assert_eq!(t, Timestamp::from_second(1_030).unwrap());
        let t = next_attempt(now, Duration::from_secs(60), Some(Duration::from_secs(30)));
        assert_eq!(t, Timestamp::from_second(1_060).unwrap());
    }

    proptest::proptest! {
        #[test]
        fn backoff_never_exceeds_max(attempts in -5i32..200, salt in proptest::prelude::any::<u128>()) {
            let d = backoff(attempts, Duration::from_millis(100), Duration::from_secs(30), salt);
            proptest::prop_assert!(d <= Duration::from_secs(30));
            proptest::prop_assert!(d > Duration::ZERO);
        }
    }
}
