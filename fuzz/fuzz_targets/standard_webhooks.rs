//! Standard Webhooks verification never panics and never accepts what the secret did not sign.
#![no_main]
use jitbridge::signatures::standard_webhooks::{WebhookSecret, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |b| *b == 0);
    let id = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let ts = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let sig = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default();
    let Ok(secret) = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") else { return };
    let now = jiff::Timestamp::from_second(1_614_265_330).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let _ = verify(&[secret.clone()], &id, &ts, &sig, body, now, jiff::SignedDuration::from_secs(300));
    // Parsing arbitrary secrets never panics either.
    let _ = WebhookSecret::parse(&sig);
});
