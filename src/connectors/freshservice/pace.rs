//! Pre-emptive pacing of Freshservice API calls.
//!
//! Freshservice budgets API calls per minute across the whole account and reports what is left
//! on every response (`X-RateLimit-Total`, `X-RateLimit-Remaining`). Going over earns a `429`,
//! and failed calls count against the budget too, so hammering into the limit makes things worse
//! for every integration on the account. [`Pacer`] therefore watches the headers and, once the
//! remaining budget falls below the configured floor, spreads the calls that are left over the
//! rest of the minute instead of spending them at once.
//!
//! The state is a handful of numbers behind one [`tokio::sync::Mutex`] (bounded, whatever the
//! traffic), and every wait is capped at one window, so a confused header can slow the
//! connector down but never park it indefinitely.

use std::time::Duration;

use reqwest::header::HeaderMap;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Freshservice's rate-limit window (`itsm-wire-formats.md` 3.2: per-minute limits).
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Largest budget believed from a header (Freshservice's biggest plan allows 500 a minute).
const MAX_BUDGET: u32 = 100_000;
/// Longest `Retry-After` believed (the API v1 budget was hourly); a single call still never
/// waits longer than one window ([`Pacer::wait_turn`]).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What the latest Freshservice responses said about the account's API budget, and the
/// spacing the connector currently imposes because of it.
///
/// Exists so operators (and tests) can see *why* writebacks slow down: the budget is shared
/// with every other integration on the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateBudget {
    /// `X-RateLimit-Remaining` of the latest response that carried it.
    pub remaining: Option<u32>,
    /// `X-RateLimit-Total` of the latest response that carried it.
    pub total: Option<u32>,
    /// The spacing currently imposed between calls (zero when not pacing).
    pub interval: Duration,
}

#[derive(Debug)]
struct State {
    remaining: Option<u32>,
    total: Option<u32>,
    /// Our estimate of when the server's current window began: the first response we saw in
    /// it, or a response whose remaining budget went *up* (the window rolled over).
    window_start: Option<Instant>,
    /// Spacing between calls while the budget is low.
    interval: Duration,
    /// The earliest instant the next call may be sent.
    next_slot: Instant,
}

/// Paces calls against Freshservice's per-minute budget. One per connector, shared by all its
/// calls (confirmations and writebacks alike), since the budget is per account.
#[derive(Debug)]
pub(crate) struct Pacer {
    /// Pace once the remaining budget is below this; `0` never paces.
    min_remaining: u32,
    /// The length of the budget window (one minute; shorter in tests).
    window: Duration,
    state: Mutex<State>,
}

impl Pacer {
    /// A pacer that starts slowing down below `min_remaining` calls left in a `window`.
    pub(crate) fn new(min_remaining: u32, window: Duration) -> Self {
        Self {
            min_remaining,
            window: window.max(Duration::from_millis(1)),
            state: Mutex::new(State {
                remaining: None,
                total: None,
                window_start: None,
                interval: Duration::ZERO,
                next_slot: Instant::now(),
            }),
        }
    }

    /// Waits until this call may be sent: not before the next free slot (which a `Retry-After`
    /// may have pushed out while this call was already waiting), and spaced `interval` after
    /// the previous call. Concurrent callers take slots one at a time under the lock, so they
    /// are spaced out too rather than all firing at the same instant. Never waits longer than
    /// one window in total.
    pub(crate) async fn wait_turn(&self) {
        let latest = Instant::now() + self.window;
        loop {
            let until = {
                let mut s = self.state.lock().await;
                let now = Instant::now();
                let slot = s.next_slot.max(now).min(latest);
                if slot <= now {
                    // Capped by `latest` while the slot is still ahead: leave the slot (it may
                    // be a Retry-After boundary other callers must still respect).
                    if s.next_slot <= now {
                        s.next_slot = now + s.interval;
                    }
                    return;
                }
                slot
            };
            tokio::time::sleep_until(until).await;
        }
    }

    /// Reads the rate-limit headers of a response (any status, `429` included) and adjusts the
    /// pacing:
    /// - `Retry-After` (a `429`, or a `503` that names a delay): no call of this connector —
    ///   confirmation or writeback — is sent before it has passed, and the budget's window is
    ///   taken to end then (that is when Freshservice refills it);
    /// - `X-RateLimit-Remaining`: no spacing while at least `min_remaining` calls are left,
    ///   otherwise the rest of the window divided by the calls left plus one (the whole rest of
    ///   the window at zero).
    pub(crate) async fn observe(&self, headers: &HeaderMap) {
        let retry_after = header_u32(headers, "retry-after")
            .map(|secs| Duration::from_secs(u64::from(secs)).min(MAX_RETRY_AFTER));
        let total = header_u32(headers, "x-ratelimit-total");
        let remaining =
            header_u32(headers, "x-ratelimit-remaining").map(|r| total.map_or(r, |t| r.min(t)));
        if retry_after.is_none() && remaining.is_none() {
            return;
        }
        let mut s = self.state.lock().await;
        let now = Instant::now();
        if let Some(remaining) = remaining {
            let rolled_over = s.remaining.is_none_or(|before| remaining > before);
            let expired = s
                .window_start
                .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
            if rolled_over || expired {
                s.window_start = Some(now);
            }
            s.remaining = Some(remaining);
            if total.is_some() {
                s.total = total;
            }
        }
        if let Some(wait) = retry_after {
            let resume = now + wait;
            s.window_start = Some(resume.checked_sub(self.window).unwrap_or(now));
            s.next_slot = s.next_slot.max(resume);
            tracing::info!(
                retry_after_secs = wait.as_secs(),
                "freshservice asked to retry later; holding every API call until then"
            );
        }
        let Some(remaining) = remaining else {
            return;
        };
        if remaining >= self.min_remaining {
            if s.interval != Duration::ZERO {
                tracing::debug!(
                    remaining,
                    "freshservice rate-limit budget recovered; pacing off"
                );
            }
            s.interval = Duration::ZERO;
            return;
        }
        let start = s.window_start.unwrap_or(now);
        let rest = (start + self.window).saturating_duration_since(now);
        let interval = (rest / remaining.saturating_add(1)).min(self.window);
        if s.interval == Duration::ZERO {
            tracing::info!(
                remaining,
                total = ?s.total,
                interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
                "freshservice rate-limit budget low; pacing API calls"
            );
        }
        s.interval = interval;
        s.next_slot = s.next_slot.max(now + interval);
    }

    /// The budget as last seen, for diagnostics and tests.
    pub(crate) async fn budget(&self) -> RateBudget {
        let s = self.state.lock().await;
        RateBudget {
            remaining: s.remaining,
            total: s.total,
            interval: s.interval,
        }
    }
}

/// A small non-negative integer header, bounded by [`MAX_BUDGET`].
fn header_u32(headers: &HeaderMap, name: &str) -> Option<u32> {
    headers
        .get(name)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u32>()
        .ok()
        .map(|n| n.min(MAX_BUDGET))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use reqwest::header::HeaderValue;

    /// A short window keeps these tests fast; the arithmetic is the same as for a minute.
    const W: Duration = Duration::from_millis(400);

    fn headers(remaining: &str, total: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-ratelimit-remaining",
            HeaderValue::from_str(remaining).expect("v"),
        );
        h.insert(
            "x-ratelimit-total",
            HeaderValue::from_str(total).expect("v"),
        );
        h
    }

    #[tokio::test]
    async fn plenty_of_budget_means_no_waiting() {
        let p = Pacer::new(5, W);
        p.observe(&headers("90", "100")).await;
        let t0 = Instant::now();
        for _ in 0..10 {
            p.wait_turn().await;
        }
        assert!(t0.elapsed() < W / 4, "{:?}", t0.elapsed());
        let b = p.budget().await;
        assert_eq!(b.interval, Duration::ZERO);
        assert_eq!((b.remaining, b.total), (Some(90), Some(100)));
    }

    #[tokio::test]
    async fn low_budget_spreads_the_rest_over_the_window() {
        let p = Pacer::new(5, W);
        p.observe(&headers("3", "100")).await;
        let interval = p.budget().await.interval;
        assert!(
            interval <= W / 4 && interval > W / 5,
            "rest of the window over 3 + 1 calls: {interval:?}"
        );
        let t0 = Instant::now();
        p.wait_turn().await;
        p.wait_turn().await;
        p.wait_turn().await;
        // One interval after the low reading, then one more per call.
        let took = t0.elapsed();
        assert!(
            took >= interval * 3 - Duration::from_millis(20) && took < W,
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn exhausted_budget_waits_out_the_window_but_no_longer() {
        let p = Pacer::new(5, W);
        p.observe(&headers("0", "100")).await;
        let t0 = Instant::now();
        p.wait_turn().await;
        let took = t0.elapsed();
        assert!(
            took >= W - Duration::from_millis(20) && took <= W + W / 2,
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn recovered_budget_stops_pacing() {
        let p = Pacer::new(5, Duration::from_millis(50));
        p.observe(&headers("1", "100")).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
        p.observe(&headers("99", "100")).await;
        let t0 = Instant::now();
        p.wait_turn().await;
        p.wait_turn().await;
        assert!(
            t0.elapsed() < Duration::from_millis(20),
            "{:?}",
            t0.elapsed()
        );
    }

    fn rate_limited(retry_after: &str) -> HeaderMap {
        let mut h = headers("0", "100");
        h.insert(
            "retry-after",
            HeaderValue::from_str(retry_after).expect("v"),
        );
        h
    }

    #[tokio::test]
    async fn retry_after_holds_every_call_until_it_has_passed_even_without_pacing() {
        // min_remaining 0 turns pre-emptive pacing off, never the server's own request to wait.
        let p = Pacer::new(0, Duration::from_secs(60));
        p.observe(&rate_limited("1")).await;
        let t0 = Instant::now();
        p.wait_turn().await;
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(980) && took < Duration::from_millis(1500),
            "{took:?}"
        );
        // Refilled: the next response shows budget again, and calls flow freely.
        p.observe(&headers("99", "100")).await;
        let t1 = Instant::now();
        p.wait_turn().await;
        p.wait_turn().await;
        assert!(
            t1.elapsed() < Duration::from_millis(50),
            "{:?}",
            t1.elapsed()
        );
    }

    #[tokio::test]
    async fn a_call_already_waiting_also_respects_a_later_retry_after() {
        let p = std::sync::Arc::new(Pacer::new(5, Duration::from_secs(60)));
        // Low budget: calls are spaced out, one is waiting for its slot...
        p.observe(&headers("20", "100")).await;
        p.observe(&headers("4", "100")).await;
        let waiting = {
            let p = p.clone();
            tokio::spawn(async move {
                p.wait_turn().await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        // ...when another call's answer is a 429 asking for 1 s.
        let asked = Instant::now();
        p.observe(&rate_limited("1")).await;
        let sent = waiting.await.expect("task");
        assert!(
            sent >= asked + Duration::from_millis(980),
            "sent {:?} after the 429 asked for 1 s",
            sent.saturating_duration_since(asked)
        );
        // The window is now taken to end when the wait does, so pacing does not linger.
        assert!(p.budget().await.interval <= Duration::from_secs(1));
    }

    #[tokio::test]
    async fn zero_floor_never_paces_and_garbage_headers_change_nothing() {
        let p = Pacer::new(0, W);
        p.observe(&headers("0", "100")).await;
        p.observe(&HeaderMap::new()).await;
        let t0 = Instant::now();
        p.wait_turn().await;
        assert!(t0.elapsed() < W / 4);
        let q = Pacer::new(5, W);
        q.observe(&headers("lots", "-1")).await;
        assert_eq!(q.budget().await.remaining, None);
        assert_eq!(q.budget().await.interval, Duration::ZERO);
    }

    proptest! {
        #[test]
        fn any_header_values_keep_the_spacing_within_one_window(
            readings in prop::collection::vec(("[ 0-9a-z-]{0,12}", "[ 0-9a-z-]{0,12}"), 0..6),
            floor in 0u32..50,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            let window = Duration::from_secs(60);
            rt.block_on(async {
                let p = Pacer::new(floor, window);
                for (r, t) in &readings {
                    let mut h = HeaderMap::new();
                    if let Ok(v) = HeaderValue::from_str(r) { h.insert("x-ratelimit-remaining", v); }
                    if let Ok(v) = HeaderValue::from_str(t) { h.insert("x-ratelimit-total", v); }
                    p.observe(&h).await;
                    let b = p.budget().await;
                    assert!(b.interval <= window);
                    if b.remaining.is_none_or(|r| r >= floor) {
                        assert_eq!(b.interval, Duration::ZERO);
                    }
                }
            });
        }
    }
}
