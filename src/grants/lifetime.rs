//! How long a grant lives once it is active, as pure rules: a renewal (a second approval) may
//! move the deadline, but never beyond `max_duration` from the first approval and never earlier
//! than it already is; an approval the ITSM no longer reports as approved ends the grant.
//! The [`super::service`] gathers the inputs (clock, confirmation, mapping) and commits.

use jiff::{SignedDuration, Timestamp};

use crate::ticket::Approval;

/// What a renewal does to an active grant's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Move the deadline to `expires_at`. `capped` when the ticket asked for more than
    /// `max_duration` from the first approval allows.
    Extend {
        /// The new deadline.
        expires_at: Timestamp,
        /// The new total duration, from the first approval.
        duration: SignedDuration,
        /// True when the cap cut the renewal short.
        capped: bool,
    },
    /// The deadline stays: the cap is already reached, or the renewal would shorten the grant.
    Unchanged {
        /// The furthest deadline the cap allows.
        cap: Timestamp,
    },
}

/// The deadline after a renewal at `now` asking for `duration` more, for a grant first approved
/// at `approved_at` whose deadline is `expires_at`, under a cap of `max_duration` from the first
/// approval: `min(approved_at + max_duration, now + duration)`, and never earlier than today's
/// deadline (a renewal never shortens a grant; ending one is what revoke rules are for).
pub fn renew(
    approved_at: Timestamp,
    expires_at: Timestamp,
    now: Timestamp,
    duration: SignedDuration,
    max_duration: SignedDuration,
) -> Renewal {
    let cap = approved_at
        .checked_add(max_duration.max(SignedDuration::ZERO))
        .unwrap_or(approved_at);
    let wanted = now
        .checked_add(duration.max(SignedDuration::ZERO))
        .unwrap_or(Timestamp::MAX);
    let new = wanted.min(cap);
    if new <= expires_at {
        return Renewal::Unchanged { cap };
    }
    Renewal::Extend {
        expires_at: new,
        duration: new.duration_since(approved_at),
        capped: wanted > cap,
    }
}

/// Why a live grant's approval no longer stands, judging by the approval record the ITSM's API
/// reports (`None` when it has no approval records: approval is then by status alone, and the
/// status rules decide). Anything but `approved` — pending again, rejected, an unknown word —
/// means the approval was withdrawn.
pub fn withdrawn(confirmed: Option<&Approval>) -> Option<String> {
    let approval = confirmed?;
    (approval.state != "approved").then(|| {
        format!(
            "the approval was withdrawn in the ticket (it is now {})",
            approval.state
        )
    })
}

/// Why a live grant for `subject` must end because the ticket now renders `rendered` as the
/// subject (it was reassigned), if it must. Subjects compare without regard to ASCII case and
/// surrounding space, as directory accounts and e-mail addresses do.
pub fn reassigned(subject: &str, rendered: &str) -> Option<String> {
    (!subject.trim().eq_ignore_ascii_case(rendered.trim())).then(|| {
        format!(
            "the ticket was reassigned: the elevation is now for {}, not {}",
            rendered.trim(),
            subject.trim()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    const H: i64 = 3600;

    #[test]
    fn renewal_table() {
        let max = SignedDuration::from_hours(4);
        /// (approved_at, expires_at, now, duration, new deadline or None, capped, why)
        type Case = (i64, i64, i64, i64, Option<i64>, bool, &'static str);
        let cases: &[Case] = &[
            (
                0,
                H,
                50 * 60,
                H,
                Some(50 * 60 + H),
                false,
                "one more hour from now",
            ),
            (
                0,
                H,
                3 * H,
                2 * H,
                Some(4 * H),
                true,
                "capped at max_duration from the first approval",
            ),
            (
                0,
                4 * H,
                3 * H,
                2 * H,
                None,
                false,
                "cap already reached: unchanged",
            ),
            (
                0,
                2 * H,
                10 * 60,
                30 * 60,
                None,
                false,
                "would shorten the grant: unchanged",
            ),
            (
                0,
                H,
                30 * 60,
                30 * 60,
                None,
                false,
                "same deadline: unchanged",
            ),
            (
                0,
                H,
                30 * 60,
                10 * H,
                Some(4 * H),
                true,
                "a huge request is capped",
            ),
        ];
        for (approved, expires, now, dur, want, capped, why) in cases {
            let got = renew(
                at(*approved),
                at(*expires),
                at(*now),
                SignedDuration::from_secs(*dur),
                max,
            );
            match (got, want) {
                (
                    Renewal::Extend {
                        expires_at,
                        duration,
                        capped: c,
                    },
                    Some(w),
                ) => {
                    assert_eq!(expires_at, at(*w), "{why}");
                    assert_eq!(duration.as_secs(), w - approved, "{why}");
                    assert_eq!(c, *capped, "{why}");
                }
                (Renewal::Unchanged { cap }, None) => {
                    assert_eq!(cap, at(approved + 4 * H), "{why}")
                }
                (got, want) => panic!("{why}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn withdrawn_approval_table() {
        let a = |state: &str| Approval {
            state: state.into(),
            ..Default::default()
        };
        assert_eq!(withdrawn(None), None, "no approval records: status decides");
        assert_eq!(withdrawn(Some(&a("approved"))), None);
        for state in [
            "pending",
            "rejected",
            "requested",
            "not requested",
            "cancelled",
            "",
        ] {
            let why = withdrawn(Some(&a(state))).expect(state);
            assert!(why.contains("withdrawn"), "{why}");
        }
    }

    #[test]
    fn reassignment_table() {
        let cases = [
            ("alice@example.com", "alice@example.com", false),
            ("alice@example.com", " ALICE@example.com ", false),
            ("alice@example.com", "bob@example.com", true),
            ("CORP\\alice", "CORP\\alicia", true),
        ];
        for (subject, rendered, revokes) in cases {
            let why = reassigned(subject, rendered);
            assert_eq!(why.is_some(), revokes, "{subject} -> {rendered}");
            if let Some(why) = why {
                assert!(
                    why.contains("now for bob@example.com") || why.contains("alicia"),
                    "{why}"
                );
            }
        }
    }

    proptest! {
        /// Whatever renewals arrive, whenever and for however long, the grant never lasts longer
        /// than max_duration from its first approval, and its deadline never moves earlier.
        #[test]
        fn renewals_never_exceed_the_cap_from_the_first_approval(
            first in 1i64..86_400,
            max_secs in 1i64..86_400,
            renewals in proptest::collection::vec((0i64..200_000, -10i64..200_000), 0..20),
        ) {
            let max = SignedDuration::from_secs(max_secs);
            let approved = at(0);
            let mut expires = approved.checked_add(SignedDuration::from_secs(first.min(max_secs))).unwrap();
            let mut now = approved;
            for (step, dur) in renewals {
                now = now.checked_add(SignedDuration::from_secs(step)).unwrap();
                if now >= expires { break; } // expired: no longer active, nothing to renew
                match renew(approved, expires, now, SignedDuration::from_secs(dur), max) {
                    Renewal::Extend { expires_at, duration, .. } => {
                        prop_assert!(expires_at > expires);
                        prop_assert_eq!(expires_at.duration_since(approved), duration);
                        expires = expires_at;
                    }
                    Renewal::Unchanged { .. } => {}
                }
                prop_assert!(expires.duration_since(approved) <= max);
            }
        }
    }
}
