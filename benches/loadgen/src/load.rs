//! The load generator: signed Jira deliveries sent over N keep-alive HTTP/1.1 connections,
//! either closed-loop (each connection sends its next request as soon as the previous one is
//! answered: maximum throughput) or open-loop (requests are due at a fixed rate whatever the
//! server does, and latency counts from the *due* time, so a slow server cannot hide its queue:
//! no coordinated omission).
//!
//! Every request is built like a real Jira Cloud admin webhook: `X-Hub-Signature: sha256=<hex>`
//! over the exact body bytes and a unique `X-Atlassian-Webhook-Identifier`; a [`Mix`] can turn a
//! share of them into forgeries (a signature made with the wrong secret) or duplicates (an
//! identifier and body already sent).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpStream;

/// Longest a single request may take before it is counted as an error (bounded waits).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Highest latency the histograms record (anything slower saturates here).
const MAX_LATENCY_US: u64 = 60_000_000;

/// What share of the requests are forged or repeated, in percent (the rest are unique and
/// validly signed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mix {
    pub forged_pct: u8,
    pub duplicate_pct: u8,
}

/// What kind a request is; decides the status the sender expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Unique and correctly signed: expects 2xx.
    Valid,
    /// Signed with the wrong secret: expects 401 (a 2xx here would be a security bug).
    Forged,
    /// A repeat of an earlier valid delivery: expects 2xx (200 "duplicate" from jitbridge).
    Duplicate,
}

impl Mix {
    /// The kind of request number `i`, spread evenly (every 100 requests hold exactly the
    /// configured shares) so short runs see the mix too.
    pub fn kind(&self, i: u64) -> Kind {
        let slot = (i.wrapping_mul(37) % 100) as u8;
        if slot < self.forged_pct {
            Kind::Forged
        } else if slot < self.forged_pct.saturating_add(self.duplicate_pct) && i > 0 {
            Kind::Duplicate
        } else {
            Kind::Valid
        }
    }
}

/// Builds the bytes and headers of each request.
#[derive(Debug, Clone)]
pub struct Deliveries {
    /// Path on the target, e.g. `/webhooks/jira` or `/hooks/jira`.
    pub path: String,
    /// The shared secret the target verifies with.
    pub secret: String,
    /// Distinguishes runs, so identifiers never repeat across scenarios on one store.
    pub run: String,
    pub mix: Mix,
}

/// One request ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub kind: Kind,
    pub webhook_id: String,
    pub signature: String,
    pub body: Bytes,
}

/// `sha256=` + lowercase hex HMAC-SHA256 of `body`, as Jira signs.
pub fn hub_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Deliveries {
    /// Request number `i`: a `jira:issue_updated` event for a plain Task (so jitbridge stores
    /// and later parses it, but no mapping turns it into a grant).
    pub fn prepare(&self, i: u64) -> Prepared {
        let kind = self.mix.kind(i);
        // A duplicate repeats request `i / 2`'s identifier and body (an earlier one).
        let n = if kind == Kind::Duplicate { i / 2 } else { i };
        let body = serde_json::json!({
            "timestamp": 1_800_000_000_000u64 + n,
            "webhookEvent": "jira:issue_updated",
            "issue_event_type_name": "issue_generic",
            "user": {"accountId": "5b10ac8d82e05b22cc7d4ef5", "displayName": "Bench"},
            "issue": {
                "id": (100_000 + n).to_string(),
                "key": format!("BENCH-{n}"),
                "fields": {
                    "summary": "load generator event",
                    "issuetype": {"name": "Task"},
                    "status": {"name": "Open"},
                    "project": {"key": "BENCH"}
                }
            }
        })
        .to_string();
        let body = Bytes::from(body);
        let signature = if kind == Kind::Forged {
            hub_signature("not-the-secret", &body)
        } else {
            hub_signature(&self.secret, &body)
        };
        Prepared {
            kind,
            webhook_id: format!("{}-{n}", self.run),
            signature,
            body,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Latency of every answered request, microseconds.
    pub latency: Histogram<u64>,
    pub elapsed: Duration,
    /// Answers by class.
    pub ok_2xx: u64,
    pub status_401: u64,
    pub other_4xx: u64,
    pub status_5xx: u64,
    /// Connection or timeout failures.
    pub errors: u64,
    /// Answers whose status did not fit the request's kind (a forged one answered 2xx, a
    /// valid one refused, …).
    pub unexpected: u64,
}

impl Outcome {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
            elapsed: Duration::ZERO,
            ok_2xx: 0,
            status_401: 0,
            other_4xx: 0,
            status_5xx: 0,
            errors: 0,
            unexpected: 0,
        })
    }

    fn merge(&mut self, other: &Outcome) -> anyhow::Result<()> {
        self.latency.add(&other.latency)?;
        self.ok_2xx += other.ok_2xx;
        self.status_401 += other.status_401;
        self.other_4xx += other.other_4xx;
        self.status_5xx += other.status_5xx;
        self.errors += other.errors;
        self.unexpected += other.unexpected;
        Ok(())
    }

    /// Requests answered.
    pub fn answered(&self) -> u64 {
        self.ok_2xx + self.status_401 + self.other_4xx + self.status_5xx
    }

    /// Answers per second over the run.
    pub fn throughput(&self) -> f64 {
        per_sec(self.answered(), self.elapsed)
    }

    /// Latency at quantile `q`, in milliseconds.
    pub fn ms_at(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// Largest latency, in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1000.0
    }

    fn record(&mut self, kind: Kind, status: Option<u16>, latency: Duration) {
        let Some(status) = status else {
            self.errors += 1;
            return;
        };
        self.latency.saturating_record(
            u64::try_from(latency.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
        );
        match status {
            200..=299 => self.ok_2xx += 1,
            401 => self.status_401 += 1,
            400..=499 => self.other_4xx += 1,
            _ => self.status_5xx += 1,
        }
        let expected = match kind {
            Kind::Valid | Kind::Duplicate => (200..300).contains(&status),
            Kind::Forged => status == 401 || status == 403,
        };
        if !expected {
            self.unexpected += 1;
        }
    }
}

/// `n` events over `elapsed`, per second.
pub fn per_sec(n: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        n as f64 / elapsed.as_secs_f64()
    }
}

/// How to drive the target.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Each connection sends back to back.
    Closed,
    /// Requests due at this many per second in total.
    Open { rate: u32 },
}

/// One load run.
#[derive(Debug, Clone)]
pub struct Run {
    pub addr: SocketAddr,
    pub connections: usize,
    pub duration: Duration,
    /// Hard cap on requests (keeps every loop bounded even at absurd speeds).
    pub max_requests: u64,
    pub pace: Pace,
}

/// Sends `deliveries` to the target as `run` says and measures the answers.
pub async fn drive(run: &Run, deliveries: &Deliveries) -> anyhow::Result<Outcome> {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let stop_at = start + run.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..run.connections.max(1) {
        let next = next.clone();
        let deliveries = deliveries.clone();
        let run = run.clone();
        tasks.spawn(async move { connection(run, deliveries, next, start, stop_at).await });
    }
    let mut total = Outcome::new()?;
    while let Some(joined) = tasks.join_next().await {
        total.merge(&joined.context("load connection task panicked")??)?;
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// Opens an HTTP/1.1 connection to `addr`.
async fn connect(addr: SocketAddr) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // The connection ends when the sender is dropped or the server closes it.
        let _ = conn.await;
    });
    Ok(sender)
}

/// One connection's share of the run.
async fn connection(
    run: Run,
    deliveries: Deliveries,
    next: Arc<AtomicU64>,
    start: Instant,
    stop_at: Instant,
) -> anyhow::Result<Outcome> {
    let mut out = Outcome::new()?;
    let mut sender: Option<http1::SendRequest<Full<Bytes>>> = None;
    let authority = run.addr.to_string();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= run.max_requests {
            break;
        }
        let due = match run.pace {
            Pace::Closed => Instant::now(),
            Pace::Open { rate } => {
                start + Duration::from_secs_f64(i as f64 / f64::from(rate.max(1)))
            }
        };
        if due >= stop_at || Instant::now() >= stop_at {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let p = deliveries.prepare(i);
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            sender = connect(run.addr).await.ok();
        }
        let Some(s) = sender.as_mut() else {
            out.record(p.kind, None, due.elapsed());
            continue;
        };
        let status = send(s, &authority, &deliveries.path, &p).await;
        if status.is_none() {
            sender = None;
        }
        out.record(p.kind, status, due.elapsed());
    }
    Ok(out)
}

/// Sends one request and reads the whole answer; `None` on a transport error or timeout.
async fn send(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    authority: &str,
    path: &str,
    p: &Prepared,
) -> Option<u16> {
    let request = hyper::Request::post(path)
        .header("host", authority)
        .header("content-type", "application/json")
        .header("user-agent", "Atlassian Webhook HTTP Client")
        .header("x-atlassian-webhook-identifier", p.webhook_id.as_str())
        .header("x-hub-signature", p.signature.as_str())
        .body(Full::new(p.body.clone()))
        .ok()?;
    let exchange = async {
        sender.ready().await.ok()?;
        let response = sender.send_request(request).await.ok()?;
        let status = response.status().as_u16();
        response.into_body().collect().await.ok()?;
        Some(status)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn deliveries(mix: Mix) -> Deliveries {
        Deliveries {
            path: "/webhooks/jira".into(),
            secret: "s3cret".into(),
            run: "r1".into(),
            mix,
        }
    }

    #[test]
    fn valid_delivery_is_signed_like_jira_over_the_exact_body() {
        let p = deliveries(Mix::default()).prepare(7);
        assert_eq!(p.kind, Kind::Valid);
        assert_eq!(p.webhook_id, "r1-7");
        assert_eq!(
            p.signature,
            jitbridge_sim::sign::jira_hub_signature("s3cret", &p.body)
        );
        let body: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(body["issue"]["key"], "BENCH-7");
    }

    #[test]
    fn forged_delivery_does_not_verify_with_the_secret() {
        let d = deliveries(Mix {
            forged_pct: 100,
            duplicate_pct: 0,
        });
        let p = d.prepare(3);
        assert_eq!(p.kind, Kind::Forged);
        assert_ne!(p.signature, hub_signature("s3cret", &p.body));
    }

    #[test]
    fn duplicate_repeats_an_earlier_delivery_byte_for_byte() {
        let d = deliveries(Mix {
            forged_pct: 0,
            duplicate_pct: 100,
        });
        let p = d.prepare(10);
        assert_eq!(p.kind, Kind::Duplicate);
        let original = deliveries(Mix::default()).prepare(5);
        assert_eq!(p.webhook_id, original.webhook_id);
        assert_eq!(p.body, original.body);
        assert_eq!(p.signature, original.signature);
    }

    proptest! {
        /// Every block of 100 consecutive requests holds exactly the configured shares.
        #[test]
        fn mix_shares_are_exact_per_hundred(forged in 0u8..=50, dup in 0u8..=50, block in 1u64..1000) {
            let mix = Mix { forged_pct: forged, duplicate_pct: dup };
            let kinds: Vec<Kind> = (block * 100..block * 100 + 100).map(|i| mix.kind(i)).collect();
            prop_assert_eq!(kinds.iter().filter(|k| **k == Kind::Forged).count(), forged as usize);
            prop_assert_eq!(kinds.iter().filter(|k| **k == Kind::Duplicate).count(), dup as usize);
        }

        /// Unique valid deliveries never share an identifier, and every one verifies.
        #[test]
        fn valid_deliveries_are_unique_and_verify(a in 0u64..1_000_000, b in 0u64..1_000_000) {
            prop_assume!(a != b);
            let d = deliveries(Mix::default());
            let (pa, pb) = (d.prepare(a), d.prepare(b));
            prop_assert_ne!(&pa.webhook_id, &pb.webhook_id);
            prop_assert_eq!(&pa.signature, &hub_signature("s3cret", &pa.body));
        }
    }
}
