//! Every inbound scheme's header parsing and verification: never panics, and a forged
//! delivery (not signed with the configured secret) is never accepted.
#![no_main]
use std::path::Path;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use jitbridge::config::MapSecrets;
use jitbridge::ingress::auth::{Inbound, InboundAuth, InboundConfig, Unverified};
use libfuzzer_sys::fuzz_target;

const CONFIGS: &[&str] = &[
    "auth = \"hmac-sha256\"\nsecret_env = \"S\"",
    "auth = \"hmac-sha256\"\nsecret_env = \"S\"\nheader = \"X-Signature\"\nprefix = \"\"\nencoding = \"base64\"",
    "auth = \"standard-webhooks\"\nsecret_env = \"W\"",
    "auth = \"bearer\"\nsecret_env = \"S\"",
    "auth = \"basic\"\nsecret_env = \"S\"\nusername = \"u\"",
    "auth = \"header\"\nsecret_env = \"S\"\nheader = \"X-Api-Key\"",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let secrets = MapSecrets::from_pairs([("S", "fuzz-secret-one,fuzz-secret-two"), ("W", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]);
    let Ok(cfg) = toml::from_str::<InboundConfig>(CONFIGS[selector as usize % CONFIGS.len()]) else { return };
    let Ok(auth) = InboundAuth::from_config(&cfg, &jitbridge::connectors::jira::INBOUND_DEFAULTS, &secrets, Path::new("fuzz.toml")) else { return };
    // Input: header lines "name:value" separated by \n, then \0, then the body.
    let (head, body) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(&line[colon + 1..])) {
            headers.append(n, v);
        }
    }
    let now = jiff::Timestamp::from_second(1_614_265_330).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    if let Ok(verified) = Inbound::<Unverified>::new(headers, Bytes::copy_from_slice(body)).verify(&auth, now) {
        // Passing is only possible with the right credential: the fuzzer would have to guess a
        // secret or an HMAC. Storable headers never include a credential header.
        let stored = verified.storable_headers(&auth);
        for (name, _) in &stored {
            assert!(!auth.credential_headers().iter().any(|c| c.eq_ignore_ascii_case(name)), "credential header {name} stored");
        }
    }
});
