//! Signing and verification primitives (pure): HMAC-SHA256 over raw bytes in hex or base64, and
//! Standard Webhooks (`id.timestamp.body`, `v1,<base64>`, `whsec_` secrets).
//!
//! Everything that decides whether a delivery is genuine funnels through this module, so it is
//! kept small, free of I/O and exhaustively tested: inbound authentication
//! ([`crate::ingress::auth`]) verifies with it and the webhook elevation provider
//! ([`crate::providers::webhook`]) signs with it. Tags are always compared in constant time
//! (`Mac::verify_slice`), and no error produced here ever contains a key or an expected digest.

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// HMAC-SHA256, the only MAC any of our senders and receivers use.
type HmacSha256 = Hmac<Sha256>;

/// Length in bytes of an HMAC-SHA256 tag. Every tag we accept has exactly this length, so a
/// comparison never reveals anything through the length of the candidate.
pub const TAG_LEN: usize = 32;

/// Longest encoded value [`Encoding::decode`] will look at: a 32-byte tag is 64 hex or 44 base64
/// characters, so anything far longer is garbage and is refused before any work is done.
pub const MAX_ENCODED_LEN: usize = 1024;

/// Base64 that accepts input with or without `=` padding: senders differ, and padding carries no
/// information. Non-canonical trailing bits are still rejected, so every tag has one encoding.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How a digest is written in a header: Jira sends lower-case hex, ServiceNow Business Rules and
/// Standard Webhooks send base64. Connector files name it (`encoding = "hex"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Hexadecimal; lower case when encoding, either case when decoding.
    Hex,
    /// Standard-alphabet base64; padded when encoding, padding optional when decoding.
    Base64,
}

impl Encoding {
    /// Writes `bytes` in this encoding, as a sender puts a digest into a header.
    pub fn encode(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Hex => hex::encode(bytes),
            Encoding::Base64 => general_purpose::STANDARD.encode(bytes),
        }
    }

    /// Reads a digest written in this encoding. Refuses over-long input before decoding it, so a
    /// hostile header costs nothing.
    pub fn decode(self, text: &str) -> Result<Vec<u8>, DecodeError> {
        if text.len() > MAX_ENCODED_LEN {
            return Err(DecodeError::TooLong {
                max: MAX_ENCODED_LEN,
            });
        }
        match self {
            Encoding::Hex => hex::decode(text).map_err(|_| DecodeError::Hex),
            Encoding::Base64 => BASE64_LENIENT.decode(text).map_err(|_| DecodeError::Base64),
        }
    }
}

/// A value that is not in the encoding it was declared to be in. Deliberately does not echo the
/// value: it may be a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Odd length or a character outside `0-9a-fA-F`.
    #[error("not valid hex")]
    Hex,
    /// A character outside the base64 alphabet, bad padding or non-canonical trailing bits.
    #[error("not valid base64")]
    Base64,
    /// Longer than any digest we could be looking for.
    #[error("longer than {max} characters")]
    TooLong {
        /// The limit that was exceeded.
        max: usize,
    },
}

/// A tag that does not match: the only thing a caller learns from a failed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signature does not match")]
pub struct Mismatch;

/// An HMAC-SHA256 instance keyed with `key` (any length, as RFC 2104 allows).
fn keyed(key: &[u8]) -> HmacSha256 {
    // `new_from_slice` only fails for MACs with a fixed key size; HMAC hashes or pads any key
    // (hmac 0.13 `block_api.rs` makes the same statement in its own `KeyInit::new`). No input
    // can reach the error branch.
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// HMAC-SHA256 of the concatenation of `parts` under `key`. Taking parts avoids building the
/// Standard Webhooks `id.timestamp.body` string in memory just to sign it.
fn mac_over(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = keyed(key);
    for part in parts {
        mac.update(part);
    }
    mac
}

/// Computes the HMAC-SHA256 tag of `message` under `key`; what a sender puts (encoded) in its
/// signature header.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; TAG_LEN] {
    mac_over(key, &[message]).finalize().into_bytes().into()
}

/// Checks in constant time that `tag` is the HMAC-SHA256 of `message` under `key`. A tag of the
/// wrong length is a mismatch (its length is public, so this reveals nothing).
pub fn verify_hmac_sha256(key: &[u8], message: &[u8], tag: &[u8]) -> Result<(), Mismatch> {
    mac_over(key, &[message])
        .verify_slice(tag)
        .map_err(|_| Mismatch)
}

/// [Standard Webhooks](https://www.standardwebhooks.com/): the signature scheme our webhook
/// elevation provider signs with and the `standard-webhooks` inbound scheme verifies. The signed
/// content is `{webhook-id}.{webhook-timestamp}.{body}`; the header carries one or more
/// space-separated `v1,<base64>` signatures so that keys can be rotated without downtime.
pub mod standard_webhooks {
    use std::str::FromStr;

    use base64::Engine as _;
    use hmac::Mac;
    use jiff::{SignedDuration, Timestamp};
    use secrecy::{ExposeSecret, SecretSlice};

    use super::{BASE64_LENIENT, TAG_LEN, mac_over};

    /// Every Standard Webhooks secret is written `whsec_<base64 key>`.
    pub const SECRET_PREFIX: &str = "whsec_";

    /// Shortest key accepted: the specification asks for 24 to 64 random bytes, and a short key
    /// is the cheapest way to make signatures forgeable.
    pub const MIN_KEY_LEN: usize = 24;

    /// Longest key accepted. Far above the specification's 64 bytes; only a bound on garbage.
    pub const MAX_KEY_LEN: usize = 512;

    /// How far `webhook-timestamp` may be from now, either way, unless configured otherwise.
    /// Bounds how long a captured delivery can be replayed.
    pub const DEFAULT_TOLERANCE: SignedDuration = SignedDuration::from_secs(300);

    /// Longest `webhook-signature` header examined; a handful of signatures fit in far less.
    pub const MAX_SIGNATURE_HEADER_LEN: usize = 4096;

    /// Most signatures examined in one header (one per key in rotation, plus future versions).
    pub const MAX_SIGNATURES: usize = 16;

    /// Longest `webhook-id` accepted. Ids are short (`msg_<ulid>`); this only bounds garbage.
    pub const MAX_ID_LEN: usize = 256;

    /// A Standard Webhooks signing key. Held as a secret so it never reaches a log; `Debug`
    /// prints nothing of it.
    #[derive(Clone)]
    pub struct WebhookSecret(SecretSlice<u8>);

    impl std::fmt::Debug for WebhookSecret {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("WebhookSecret([redacted])")
        }
    }

    impl WebhookSecret {
        /// Parses `whsec_<base64>`. The error says what is wrong with the text, never the text.
        pub fn parse(text: &str) -> Result<Self, SecretError> {
            let encoded = text
                .trim()
                .strip_prefix(SECRET_PREFIX)
                .ok_or(SecretError::MissingPrefix)?;
            if encoded.len() > MAX_KEY_LEN * 2 {
                return Err(SecretError::TooLong { max: MAX_KEY_LEN });
            }
            let key = BASE64_LENIENT
                .decode(encoded)
                .map_err(|_| SecretError::NotBase64)?;
            Self::from_bytes(key)
        }

        /// A secret from raw key bytes (for keys generated in code rather than read from text).
        pub fn from_bytes(key: Vec<u8>) -> Result<Self, SecretError> {
            if key.len() < MIN_KEY_LEN {
                return Err(SecretError::TooShort {
                    len: key.len(),
                    min: MIN_KEY_LEN,
                });
            }
            if key.len() > MAX_KEY_LEN {
                return Err(SecretError::TooLong { max: MAX_KEY_LEN });
            }
            Ok(Self(SecretSlice::from(key)))
        }

        /// The key bytes, for signing only.
        fn key(&self) -> &[u8] {
            self.0.expose_secret()
        }
    }

    impl FromStr for WebhookSecret {
        type Err = SecretError;

        fn from_str(s: &str) -> Result<Self, Self::Err> {
            Self::parse(s)
        }
    }

    /// Why a text is not a usable Standard Webhooks secret. Never contains the text itself.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    pub enum SecretError {
        /// The text does not start with `whsec_`.
        #[error(
            "a Standard Webhooks secret must start with \"{SECRET_PREFIX}\" followed by base64"
        )]
        MissingPrefix,
        /// What follows `whsec_` is not base64.
        #[error("the part after \"{SECRET_PREFIX}\" is not valid base64")]
        NotBase64,
        /// The key is too short to be safe.
        #[error("the key is {len} bytes; at least {min} random bytes are required")]
        TooShort {
            /// Decoded key length.
            len: usize,
            /// The minimum.
            min: usize,
        },
        /// The key is absurdly long.
        #[error("the key is longer than {max} bytes")]
        TooLong {
            /// The maximum.
            max: usize,
        },
    }

    /// Why a delivery failed Standard Webhooks verification. Every message is safe to send back
    /// to the caller: it names the problem, never a key or the expected signature.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum VerifyError {
        /// `webhook-id` is empty or too long.
        #[error("webhook-id must be 1 to {MAX_ID_LEN} bytes")]
        InvalidId,
        /// `webhook-timestamp` is not a plain number of seconds.
        #[error("webhook-timestamp must be whole seconds since 1970 (digits only)")]
        InvalidTimestamp,
        /// `webhook-timestamp` is further in the past than the tolerance.
        #[error("webhook-timestamp is {age_secs} s old; at most {tolerance_secs} s is accepted")]
        TooOld {
            /// How far in the past, in seconds.
            age_secs: i64,
            /// The tolerance, in seconds.
            tolerance_secs: i64,
        },
        /// `webhook-timestamp` is further in the future than the tolerance (a skewed or forged clock).
        #[error(
            "webhook-timestamp is {ahead_secs} s in the future; at most {tolerance_secs} s is accepted"
        )]
        TooNew {
            /// How far in the future, in seconds.
            ahead_secs: i64,
            /// The tolerance, in seconds.
            tolerance_secs: i64,
        },
        /// `webhook-signature` is longer than we examine.
        #[error("webhook-signature is longer than {MAX_SIGNATURE_HEADER_LEN} bytes")]
        HeaderTooLong,
        /// `webhook-signature` holds no `v1,` signature at all.
        #[error("webhook-signature holds no v1 signature")]
        NoV1Signature,
        /// No `v1` signature matches any of the keys.
        #[error("no webhook-signature matches")]
        Mismatch,
    }

    /// Signs a message: the value of the `webhook-signature` header, `v1,<base64>`.
    pub fn sign(secret: &WebhookSecret, msg_id: &str, timestamp_secs: i64, body: &[u8]) -> String {
        let ts = timestamp_secs.to_string();
        let tag = signed(secret, msg_id, &ts, body).finalize().into_bytes();
        format!("v1,{}", super::Encoding::Base64.encode(&tag))
    }

    /// The MAC over `msg_id.timestamp.body`, ready to finalize or verify.
    fn signed(
        secret: &WebhookSecret,
        msg_id: &str,
        timestamp: &str,
        body: &[u8],
    ) -> super::HmacSha256 {
        mac_over(
            secret.key(),
            &[msg_id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
        )
    }

    /// Parses `webhook-timestamp`: ASCII digits only (no sign, no spaces, no fraction).
    fn parse_timestamp(text: &str) -> Result<i64, VerifyError> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VerifyError::InvalidTimestamp);
        }
        text.parse::<i64>()
            .map_err(|_| VerifyError::InvalidTimestamp)
    }

    /// Verifies a delivery. Succeeds when the timestamp is within `tolerance` of `now` (either
    /// way) and any one `v1` signature in the space-separated `signature` header matches any one
    /// of `secrets` (key rotation). Signatures of unknown versions are ignored, but at least one
    /// `v1` must match. Tags are compared in constant time; garbage never panics.
    pub fn verify(
        secrets: &[WebhookSecret],
        msg_id: &str,
        timestamp: &str,
        signature: &str,
        body: &[u8],
        now: Timestamp,
        tolerance: SignedDuration,
    ) -> Result<(), VerifyError> {
        if msg_id.is_empty() || msg_id.len() > MAX_ID_LEN {
            return Err(VerifyError::InvalidId);
        }
        let ts = parse_timestamp(timestamp)?;
        let tolerance_secs = tolerance.as_secs().max(0);
        let age = now.as_second().saturating_sub(ts);
        if age > tolerance_secs {
            return Err(VerifyError::TooOld {
                age_secs: age,
                tolerance_secs,
            });
        }
        if age < -tolerance_secs {
            return Err(VerifyError::TooNew {
                ahead_secs: age.saturating_neg(),
                tolerance_secs,
            });
        }
        if signature.len() > MAX_SIGNATURE_HEADER_LEN {
            return Err(VerifyError::HeaderTooLong);
        }

        let candidates: Vec<&str> = signature
            .split_ascii_whitespace()
            .take(MAX_SIGNATURES)
            .filter_map(|entry| entry.split_once(','))
            .filter(|(version, _)| *version == "v1")
            .map(|(_, sig)| sig)
            .collect();
        if candidates.is_empty() {
            return Err(VerifyError::NoV1Signature);
        }
        let tags: Vec<Vec<u8>> = candidates
            .iter()
            .filter_map(|sig| BASE64_LENIENT.decode(sig).ok())
            .filter(|tag| tag.len() == TAG_LEN)
            .collect();

        // Every (secret, tag) pair is checked without stopping early, so timing does not tell
        // which key or which signature matched.
        let mut matched = false;
        for secret in secrets {
            let mac = signed(secret, msg_id, timestamp, body);
            for tag in &tags {
                matched |= mac.clone().verify_slice(tag).is_ok();
            }
        }
        if matched {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use jiff::{SignedDuration, Timestamp};
    use proptest::prelude::*;

    use super::standard_webhooks::{self, SecretError, VerifyError, WebhookSecret};
    use super::*;

    const REF_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const REF_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const REF_TS: i64 = 1_614_265_330;
    const REF_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const REF_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn ref_secret() -> WebhookSecret {
        WebhookSecret::parse(REF_SECRET).unwrap()
    }

    fn verify_ref(sig: &str, now: i64) -> Result<(), VerifyError> {
        standard_webhooks::verify(
            &[ref_secret()],
            REF_ID,
            &REF_TS.to_string(),
            sig,
            REF_BODY,
            at(now),
            standard_webhooks::DEFAULT_TOLERANCE,
        )
    }

    #[test]
    fn standard_webhooks_reference_vector_signs_as_published() {
        assert_eq!(
            standard_webhooks::sign(&ref_secret(), REF_ID, REF_TS, REF_BODY),
            REF_SIG
        );
    }

    #[test]
    fn standard_webhooks_reference_vector_verifies() {
        assert_eq!(verify_ref(REF_SIG, REF_TS), Ok(()));
    }

    #[test]
    fn jira_hex_signature_matches_python_hmac() {
        // python3: hmac.new(b"jira-webhook-secret", body, hashlib.sha256).hexdigest()
        let body = br#"{"webhookEvent":"jira:issue_updated","issue":{"key":"IT-42"}}"#;
        let expected = "fc9a1e6b791f1eb16cd08626cbdc76666dd7dce992c2d58c04b6d4ddd5f9d5d3";
        let tag = hmac_sha256(b"jira-webhook-secret", body);
        assert_eq!(
            format!("sha256={}", Encoding::Hex.encode(&tag)),
            format!("sha256={expected}")
        );
        let decoded = Encoding::Hex.decode(expected).unwrap();
        assert_eq!(
            verify_hmac_sha256(b"jira-webhook-secret", body, &decoded),
            Ok(())
        );
        // Upper-case hex is the same digest.
        let upper = Encoding::Hex.decode(&expected.to_uppercase()).unwrap();
        assert_eq!(
            verify_hmac_sha256(b"jira-webhook-secret", body, &upper),
            Ok(())
        );
    }

    #[test]
    fn servicenow_base64_signature_matches_python_hmac() {
        // python3: base64.b64encode(hmac.new(b"snow-shared-secret", body, hashlib.sha256).digest())
        let body = br#"{"table":"sysapproval_approver","state":"approved"}"#;
        let expected = "Lhu9TAzQ55sSiWqXMScoM6sAw9m5J1MAmcjik24FS+8=";
        assert_eq!(
            Encoding::Base64.encode(&hmac_sha256(b"snow-shared-secret", body)),
            expected
        );
        let decoded = Encoding::Base64.decode(expected).unwrap();
        assert_eq!(
            verify_hmac_sha256(b"snow-shared-secret", body, &decoded),
            Ok(())
        );
        // Senders that drop the padding are accepted too.
        let unpadded = Encoding::Base64
            .decode(expected.trim_end_matches('='))
            .unwrap();
        assert_eq!(unpadded, decoded);
    }

    #[test]
    fn keys_longer_than_a_block_are_hashed_as_rfc_2104_requires() {
        // python3: hmac.new(b"k" * 100, b"hello", hashlib.sha256).hexdigest()
        let expected = "3fd578d761a4f6703009e92d2e8a0aea22ab9ab50d4ad250dc95d8c369dec3f5";
        assert_eq!(
            Encoding::Hex.encode(&hmac_sha256(&[b'k'; 100], b"hello")),
            expected
        );
    }

    #[test]
    fn wrong_key_truncated_tag_and_empty_tag_are_mismatches() {
        let tag = hmac_sha256(b"right", b"body");
        assert_eq!(verify_hmac_sha256(b"wrong", b"body", &tag), Err(Mismatch));
        assert_eq!(
            verify_hmac_sha256(b"right", b"body", &tag[..31]),
            Err(Mismatch)
        );
        assert_eq!(verify_hmac_sha256(b"right", b"body", &[]), Err(Mismatch));
    }

    #[test]
    fn decoding_rejects_garbage_and_overlong_input_without_echoing_it() {
        assert_eq!(Encoding::Hex.decode("zz"), Err(DecodeError::Hex));
        assert_eq!(Encoding::Hex.decode("abc"), Err(DecodeError::Hex));
        assert_eq!(
            Encoding::Base64.decode("not base64!"),
            Err(DecodeError::Base64)
        );
        let long = "a".repeat(MAX_ENCODED_LEN + 1);
        assert_eq!(
            Encoding::Hex.decode(&long),
            Err(DecodeError::TooLong {
                max: MAX_ENCODED_LEN
            })
        );
        assert!(!DecodeError::Base64.to_string().contains("not base64!"));
    }

    #[test]
    fn encoding_reads_lowercase_names_from_config() {
        #[derive(Deserialize)]
        struct T {
            encoding: Encoding,
        }
        let t: T = toml::from_str("encoding = \"base64\"").unwrap();
        assert_eq!(t.encoding, Encoding::Base64);
        let t: T = toml::from_str("encoding = \"hex\"").unwrap();
        assert_eq!(t.encoding, Encoding::Hex);
        assert!(toml::from_str::<T>("encoding = \"Hex\"").is_err());
    }

    #[test]
    fn secret_without_prefix_is_refused_without_echoing_it() {
        let err = WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err();
        assert_eq!(err, SecretError::MissingPrefix);
        assert!(!err.to_string().contains("MfKQ9r8G"));
    }

    #[test]
    fn secret_with_bad_base64_or_short_key_is_refused() {
        assert_eq!(
            WebhookSecret::parse("whsec_!!!!").unwrap_err(),
            SecretError::NotBase64
        );
        assert_eq!(
            WebhookSecret::parse("whsec_c2hvcnQ=").unwrap_err(),
            SecretError::TooShort {
                len: 5,
                min: standard_webhooks::MIN_KEY_LEN
            }
        );
    }

    #[test]
    fn secret_debug_output_is_redacted() {
        let shown = format!("{:?}", ref_secret());
        assert_eq!(shown, "WebhookSecret([redacted])");
    }

    #[test]
    fn any_of_several_signatures_may_match_during_rotation() {
        let other = WebhookSecret::from_bytes(vec![7; 32]).unwrap();
        let theirs = standard_webhooks::sign(&other, REF_ID, REF_TS, REF_BODY);
        let header = format!("v2,abc {theirs} {REF_SIG}");
        assert_eq!(verify_ref(&header, REF_TS), Ok(()));
        // And any of several secrets may match one signature.
        let secrets = [other, ref_secret()];
        let ok = standard_webhooks::verify(
            &secrets,
            REF_ID,
            &REF_TS.to_string(),
            REF_SIG,
            REF_BODY,
            at(REF_TS),
            standard_webhooks::DEFAULT_TOLERANCE,
        );
        assert_eq!(ok, Ok(()));
    }

    #[test]
    fn unknown_versions_alone_do_not_verify() {
        assert_eq!(
            verify_ref("v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", REF_TS),
            Err(VerifyError::NoV1Signature)
        );
        assert_eq!(verify_ref("", REF_TS), Err(VerifyError::NoV1Signature));
    }

    #[test]
    fn a_wrong_v1_signature_is_a_mismatch() {
        let bad = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        assert_eq!(verify_ref(bad, REF_TS), Err(VerifyError::Mismatch));
        assert_eq!(
            verify_ref("v1,not-base64", REF_TS),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn no_secrets_means_nothing_verifies() {
        let r = standard_webhooks::verify(
            &[],
            REF_ID,
            &REF_TS.to_string(),
            REF_SIG,
            REF_BODY,
            at(REF_TS),
            standard_webhooks::DEFAULT_TOLERANCE,
        );
        assert_eq!(r, Err(VerifyError::Mismatch));
    }

    #[test]
    fn timestamps_at_the_tolerance_edge_pass_and_beyond_fail() {
        assert_eq!(verify_ref(REF_SIG, REF_TS + 300), Ok(()));
        assert_eq!(verify_ref(REF_SIG, REF_TS - 300), Ok(()));
        assert_eq!(
            verify_ref(REF_SIG, REF_TS + 301),
            Err(VerifyError::TooOld {
                age_secs: 301,
                tolerance_secs: 300
            })
        );
        assert_eq!(
            verify_ref(REF_SIG, REF_TS - 301),
            Err(VerifyError::TooNew {
                ahead_secs: 301,
                tolerance_secs: 300
            })
        );
    }

    #[test]
    fn non_numeric_timestamps_are_refused() {
        for ts in [
            "",
            "abc",
            "-1614265330",
            "+1614265330",
            "1614265330.5",
            " 1614265330",
            "99999999999999999999",
        ] {
            let r = standard_webhooks::verify(
                &[ref_secret()],
                REF_ID,
                ts,
                REF_SIG,
                REF_BODY,
                at(REF_TS),
                SignedDuration::from_secs(300),
            );
            assert_eq!(r, Err(VerifyError::InvalidTimestamp), "timestamp {ts:?}");
        }
    }

    #[test]
    fn empty_or_huge_ids_and_huge_headers_are_refused() {
        let r = standard_webhooks::verify(
            &[ref_secret()],
            "",
            "1",
            REF_SIG,
            b"",
            at(1),
            SignedDuration::from_secs(300),
        );
        assert_eq!(r, Err(VerifyError::InvalidId));
        let long_id = "m".repeat(standard_webhooks::MAX_ID_LEN + 1);
        let r = standard_webhooks::verify(
            &[ref_secret()],
            &long_id,
            "1",
            REF_SIG,
            b"",
            at(1),
            SignedDuration::from_secs(300),
        );
        assert_eq!(r, Err(VerifyError::InvalidId));
        let huge = "v1,x ".repeat(1000);
        assert_eq!(verify_ref(&huge, REF_TS), Err(VerifyError::HeaderTooLong));
    }

    #[test]
    fn error_messages_never_contain_the_expected_signature() {
        let expected = REF_SIG.trim_start_matches("v1,");
        for err in [
            verify_ref("v1,AAAA", REF_TS).unwrap_err(),
            verify_ref(REF_SIG, REF_TS + 10_000).unwrap_err(),
            verify_ref("v9,x", REF_TS).unwrap_err(),
        ] {
            assert!(!err.to_string().contains(expected));
            assert!(!err.to_string().contains("MfKQ9r8G"));
        }
    }

    fn flip(bytes: &[u8], bit: usize) -> Vec<u8> {
        let mut out = bytes.to_vec();
        let i = bit / 8 % out.len();
        out[i] ^= 1 << (bit % 8);
        out
    }

    fn secret_strategy() -> impl Strategy<Value = WebhookSecret> {
        proptest::collection::vec(any::<u8>(), 24..64)
            .prop_map(|k| WebhookSecret::from_bytes(k).unwrap())
    }

    proptest! {
        #[test]
        fn sign_then_verify_succeeds(
            secret in secret_strategy(),
            id in "[a-zA-Z0-9_]{1,40}",
            ts in 0i64..4_000_000_000,
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let sig = standard_webhooks::sign(&secret, &id, ts, &body);
            let r = standard_webhooks::verify(&[secret], &id, &ts.to_string(), &sig, &body, at(ts), SignedDuration::from_secs(300));
            prop_assert_eq!(r, Ok(()));
        }

        #[test]
        fn any_single_bit_flip_fails(
            secret in secret_strategy(),
            id in "[a-zA-Z0-9_]{1,40}",
            ts in 1_000_000_000i64..2_000_000_000,
            body in proptest::collection::vec(any::<u8>(), 1..256),
            which in 0usize..4,
            bit in any::<usize>(),
        ) {
            let sig = standard_webhooks::sign(&secret, &id, ts, &body);
            let ts_text = ts.to_string();
            let (mut id2, mut ts2, mut sig2, mut body2) = (id.clone(), ts_text.clone(), sig.clone(), body.clone());
            match which {
                0 => body2 = flip(&body, bit),
                1 => sig2 = match String::from_utf8(flip(sig.as_bytes(), bit)) { Ok(s) => s, Err(_) => return Ok(()) },
                2 => id2 = match String::from_utf8(flip(id.as_bytes(), bit)) { Ok(s) => s, Err(_) => return Ok(()) },
                _ => ts2 = match String::from_utf8(flip(ts_text.as_bytes(), bit)) { Ok(s) => s, Err(_) => return Ok(()) },
            }
            let r = standard_webhooks::verify(&[secret], &id2, &ts2, &sig2, &body2, at(ts), SignedDuration::from_secs(300_000_000));
            prop_assert!(r.is_err(), "flip {} of part {} verified", bit, which);
        }

        #[test]
        fn arbitrary_headers_never_panic(
            id in ".{0,300}",
            ts in ".{0,30}",
            sig in ".{0,600}",
            body in proptest::collection::vec(any::<u8>(), 0..64),
            now in -10_000_000_000i64..10_000_000_000,
            tol in -1_000i64..1_000_000,
        ) {
            let _ = standard_webhooks::verify(&[ref_secret()], &id, &ts, &sig, &body, at(now), SignedDuration::from_secs(tol));
            let _ = WebhookSecret::parse(&sig);
            let _ = Encoding::Base64.decode(&sig);
            let _ = Encoding::Hex.decode(&sig);
        }

        #[test]
        fn hmac_hex_round_trips(key in proptest::collection::vec(any::<u8>(), 0..100), msg in proptest::collection::vec(any::<u8>(), 0..256)) {
            let tag = hmac_sha256(&key, &msg);
            for enc in [Encoding::Hex, Encoding::Base64] {
                let decoded = enc.decode(&enc.encode(&tag)).unwrap();
                prop_assert_eq!(verify_hmac_sha256(&key, &msg, &decoded), Ok(()));
            }
        }
    }
}
