//! Signature helpers for tests: the exact signing schemes the simulated senders use, written
//! independently of jitbridge's verifiers so that a test proves interoperability rather than
//! agreement of one implementation with itself.
//!
//! - Jira admin webhooks: `X-Hub-Signature: sha256=<lowercase hex HMAC-SHA256(secret, raw body)>`.
//! - ServiceNow Business Rules (custom): `base64(HMAC-SHA256(secret, raw body))`.
//! - Standard Webhooks (elevation providers): `v1,<base64 HMAC-SHA256(key, "{id}.{ts}.{body}")>`
//!   with the secret given as `whsec_<base64 key>`.
//!
//! Nothing here panics on any input; verification compares in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix every Standard Webhooks secret carries, so keys cannot be confused with other tokens.
pub const WHSEC_PREFIX: &str = "whsec_";

/// Why a signing secret could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The Standard Webhooks secret is not `whsec_<base64>`. The secret itself is never echoed.
    #[error("standard webhooks secret must be `whsec_` followed by base64 ({0})")]
    MalformedWhsec(&'static str),
}

/// Raw HMAC-SHA256 of `body` under `key`; the building block of every scheme in this module.
pub fn hmac_sha256(key: &[u8], body: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length (long keys are hashed), so this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable_hmac_key(),
    };
    mac.update(body);
    let mut out = [0u8; 32];
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// HMAC's `InvalidLength` is impossible for a variable-key MAC; kept out of line for clarity.
#[cold]
fn unreachable_hmac_key() -> ! {
    unreachable!("HMAC accepts keys of any length")
}

/// The `X-Hub-Signature` header value Jira sends for an admin webhook with a secret:
/// `sha256=` followed by the lowercase hex HMAC-SHA256 of the raw body, keyed with the secret
/// exactly as configured.
pub fn jira_hub_signature(secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(hmac_sha256(secret.as_bytes(), body))
    )
}

/// Standard base64 of HMAC-SHA256(secret, body): how a ServiceNow Business Rule (or any
/// "base64 digest" sender) signs, so tests can exercise jitbridge's `encoding = "base64"` option.
pub fn hmac_base64(secret: &str, body: &[u8]) -> String {
    B64.encode(hmac_sha256(secret.as_bytes(), body))
}

/// A decoded Standard Webhooks key, parsed once so receivers do not re-decode per request and a
/// malformed secret is reported at start-up rather than as mysterious 401s.
#[derive(Clone)]
pub struct WhsecKey(Vec<u8>);

impl std::fmt::Debug for WhsecKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WhsecKey(<redacted>)")
    }
}

impl WhsecKey {
    /// Parses `whsec_<base64>`; the key must decode to at least one byte.
    pub fn parse(whsec: &str) -> Result<Self, SignError> {
        let encoded = whsec
            .strip_prefix(WHSEC_PREFIX)
            .ok_or(SignError::MalformedWhsec("missing whsec_ prefix"))?;
        let key = B64
            .decode(encoded.trim())
            .map_err(|_| SignError::MalformedWhsec("not valid base64"))?;
        if key.is_empty() {
            return Err(SignError::MalformedWhsec("empty key"));
        }
        Ok(Self(key))
    }

    /// Builds a key from raw bytes, e.g. to mint a fresh secret for a test.
    pub fn from_bytes(key: &[u8]) -> Self {
        Self(key.to_vec())
    }

    /// The `whsec_<base64>` form of this key, as a sender's configuration would hold it.
    pub fn to_whsec(&self) -> String {
        format!("{WHSEC_PREFIX}{}", B64.encode(&self.0))
    }

    /// The `v1,<base64>` signature of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", B64.encode(self.mac(id, timestamp, body)))
    }

    /// True when any space-separated `v1,<base64>` entry of `header` signs this message.
    /// Unknown versions and undecodable entries are skipped, as the spec requires; the MAC
    /// comparison is constant-time.
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        header.split_whitespace().any(|entry| {
            let Some(encoded) = entry.strip_prefix("v1,") else {
                return false;
            };
            let Ok(tag) = B64.decode(encoded) else {
                return false;
            };
            let Ok(mut mac) = HmacSha256::new_from_slice(&self.0) else {
                return false;
            };
            mac.update(&signed_content(id, timestamp, body));
            mac.verify_slice(&tag).is_ok()
        })
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.0, &signed_content(id, timestamp, body))
    }
}

/// `{id}.{timestamp}.{body}`: the exact bytes Standard Webhooks signs.
fn signed_content(id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut content = format!("{id}.{timestamp}.").into_bytes();
    content.extend_from_slice(body);
    content
}

/// The `webhook-signature` value (`v1,<base64>`) a Standard Webhooks sender would attach.
///
/// Test helper: if `whsec` is not a valid `whsec_<base64>` secret, the raw bytes of the string are
/// used as the key instead of failing. Such a signature cannot verify against a receiver holding a
/// well-formed secret, which is what a forgery test wants. Use [`WhsecKey::parse`] when a malformed
/// secret must be an error.
pub fn standard_webhooks_signature(whsec: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = WhsecKey::parse(whsec).unwrap_or_else(|_| WhsecKey::from_bytes(whsec.as_bytes()));
    key.sign(id, timestamp, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn standard_webhooks_reference_vector_matches() {
        let sig = standard_webhooks_signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn jira_hub_signature_matches_python_hmac() {
        // python3 -c 'import hmac,hashlib; print(hmac.new(b"It'"'"'s a Secret to Everybody",
        //   b"{\"timestamp\":1741941697640,\"webhookEvent\":\"jira:issue_updated\"}",
        //   hashlib.sha256).hexdigest())'
        let sig = jira_hub_signature(
            "It's a Secret to Everybody",
            br#"{"timestamp":1741941697640,"webhookEvent":"jira:issue_updated"}"#,
        );
        assert_eq!(
            sig,
            "sha256=88bc389d191ec355f3609ed3d1715e33af88b43d6918a9ba5c8bf055ecec1091"
        );
    }

    #[test]
    fn hmac_base64_matches_python_hmac() {
        // base64.b64encode(hmac.new(b"snow-secret", b'{"sys_id":"abc"}', sha256).digest())
        assert_eq!(
            hmac_base64("snow-secret", br#"{"sys_id":"abc"}"#),
            "rpDXD3vnfRqtT5c1Oy6IXE7mXrmr8g2E4WVm+LruldM="
        );
    }

    #[test]
    fn verify_accepts_any_of_several_signatures() {
        let key = WhsecKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let good = key.sign("msg_1", 1700000000, b"{}");
        let header = format!("v1,AAAA v2,whatever {good}");
        assert!(key.verify("msg_1", 1700000000, b"{}", &header));
        assert!(!key.verify("msg_1", 1700000001, b"{}", &header));
    }

    #[test]
    fn malformed_whsec_is_an_error_that_hides_the_secret() {
        let err = WhsecKey::parse("not-a-secret-value").unwrap_err();
        assert!(!err.to_string().contains("not-a-secret-value"));
        assert!(WhsecKey::parse("whsec_!!!").is_err());
        assert!(WhsecKey::parse("whsec_").is_err());
        assert_eq!(
            format!("{:?}", WhsecKey::from_bytes(b"k")),
            "WhsecKey(<redacted>)"
        );
    }

    proptest! {
        #[test]
        fn signature_roundtrips_and_binds_the_body(
            key in proptest::collection::vec(any::<u8>(), 1..64),
            id in "[a-zA-Z0-9_]{1,32}",
            ts in 0i64..4_000_000_000,
            body in proptest::collection::vec(any::<u8>(), 0..256),
            flip in any::<usize>(),
        ) {
            let key = WhsecKey::from_bytes(&key);
            let reparsed = WhsecKey::parse(&key.to_whsec()).unwrap();
            let sig = reparsed.sign(&id, ts, &body);
            prop_assert!(key.verify(&id, ts, &body, &sig));
            if !body.is_empty() {
                let mut tampered = body.clone();
                let i = flip % tampered.len();
                tampered[i] ^= 0x01;
                prop_assert!(!key.verify(&id, ts, &tampered, &sig));
            }
        }

        #[test]
        fn verify_never_panics_on_arbitrary_headers(header in ".{0,200}") {
            let key = WhsecKey::from_bytes(b"secret");
            let _ = key.verify("id", 1, b"body", &header);
        }
    }
}
