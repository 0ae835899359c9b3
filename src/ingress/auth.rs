//! Inbound authentication for `POST /webhooks/{connector}`: hmac-sha256, standard-webhooks,
//! bearer, basic and header schemes, configured by a connector file's `[inbound]` table.
//!
//! A delivery starts life as an [`Inbound<Unverified>`] and only [`Inbound::verify`] turns it into
//! an [`Inbound<Verified>`]; the inbox accepts nothing else, so an unauthenticated body cannot
//! reach it by mistake (the typestate makes that a compile error). Every comparison of a tag or a
//! token is constant-time, and every error is safe to put in a `401` body: it names what is wrong,
//! never a secret or the digest we expected.

use std::marker::PhantomData;
use std::path::Path;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName};
use jiff::{SignedDuration, Timestamp};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::config::{Problem, SecretSource};
use crate::connectors::InboundDefaults;
use crate::signatures::standard_webhooks::{self, VerifyError, WebhookSecret};
use crate::signatures::{self, Encoding, TAG_LEN};

/// Most secrets one `secret_env` may hold. Rotation needs two or three; the bound keeps the cost
/// of verifying a forged delivery small.
pub const MAX_SECRETS: usize = 8;

/// Longest `webhook-timestamp` tolerance that may be configured: anything longer makes captured
/// deliveries replayable for too long.
pub const MAX_TOLERANCE: SignedDuration = SignedDuration::from_secs(3600);

/// Headers that carry credentials whatever the scheme; never stored.
const ALWAYS_CREDENTIALS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

/// Standard Webhooks header names (fixed by the specification).
const WEBHOOK_ID: &str = "webhook-id";
const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// How a connector's deliveries are authenticated, as written in its file: each ITSM can do
/// something different (Jira signs, ServiceNow scripts sign however they are written,
/// Freshservice can only send a static header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// An HMAC-SHA256 of the raw body in one header (Jira, ServiceNow Business Rules).
    HmacSha256,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    StandardWebhooks,
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `Authorization: Basic <user:password>`.
    Basic,
    /// A named header holding a shared secret (Freshservice workflows).
    Header,
}

impl Scheme {
    /// The name as written in the file, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::HmacSha256 => "hmac-sha256",
            Scheme::StandardWebhooks => "standard-webhooks",
            Scheme::Bearer => "bearer",
            Scheme::Basic => "basic",
            Scheme::Header => "header",
        }
    }
}

/// The raw `[inbound]` table of a connector file. Kept separate from [`InboundAuth`] so that
/// reading the file and resolving secrets are distinct steps, and `jitbridge check` can report
/// every problem at once.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// The scheme.
    pub auth: Scheme,
    /// The environment variable holding the secret(s); several comma-separated during a rotation.
    pub secret_env: String,
    /// hmac-sha256: the signature header; header: the header holding the shared secret.
    pub header: Option<String>,
    /// hmac-sha256: text before the digest (`sha256=` for Jira, empty for ServiceNow).
    pub prefix: Option<String>,
    /// hmac-sha256: how the digest is written.
    pub encoding: Option<Encoding>,
    /// basic: the expected user name.
    pub username: Option<String>,
    /// standard-webhooks: how far `webhook-timestamp` may be from now (default 5m).
    pub tolerance: Option<String>,
}

/// Resolved inbound authentication: the scheme with its secrets, ready to verify deliveries.
/// Secrets are `secrecy` types and `Debug` shows only how many there are.
#[derive(Clone)]
pub enum InboundAuth {
    /// HMAC-SHA256 of the raw body, `prefix` + encoded digest in `header`.
    HmacSha256 {
        /// Where the signature is.
        header: HeaderName,
        /// Text before the digest (matched case-insensitively).
        prefix: String,
        /// How the digest is written.
        encoding: Encoding,
        /// Any one may have signed (rotation).
        secrets: Vec<SecretString>,
    },
    /// Standard Webhooks.
    StandardWebhooks {
        /// Any one may have signed (rotation).
        secrets: Vec<WebhookSecret>,
        /// How far `webhook-timestamp` may be from now, either way.
        tolerance: SignedDuration,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// Any one is accepted (rotation).
        tokens: Vec<SecretString>,
    },
    /// `Authorization: Basic`.
    Basic {
        /// The expected user name.
        username: String,
        /// Any one is accepted (rotation).
        passwords: Vec<SecretString>,
    },
    /// A named header equal to a shared secret.
    Header {
        /// The header.
        header: HeaderName,
        /// Any one is accepted (rotation).
        secrets: Vec<SecretString>,
    },
}

impl std::fmt::Debug for InboundAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InboundAuth::HmacSha256 {
                header,
                prefix,
                encoding,
                secrets,
            } => f
                .debug_struct("HmacSha256")
                .field("header", header)
                .field("prefix", prefix)
                .field("encoding", encoding)
                .field("secrets", &Redacted(secrets.len()))
                .finish(),
            InboundAuth::StandardWebhooks { secrets, tolerance } => f
                .debug_struct("StandardWebhooks")
                .field("tolerance", tolerance)
                .field("secrets", &Redacted(secrets.len()))
                .finish(),
            InboundAuth::Bearer { tokens } => f
                .debug_struct("Bearer")
                .field("tokens", &Redacted(tokens.len()))
                .finish(),
            InboundAuth::Basic {
                username,
                passwords,
            } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("passwords", &Redacted(passwords.len()))
                .finish(),
            InboundAuth::Header { header, secrets } => f
                .debug_struct("Header")
                .field("header", header)
                .field("secrets", &Redacted(secrets.len()))
                .finish(),
        }
    }
}

/// Debug stand-in for a list of secrets: only the count is shown.
struct Redacted(usize);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{} redacted]", self.0)
    }
}

impl InboundAuth {
    /// Resolves `cfg` against the kind's `defaults` and the secrets in `secrets`. Reports every
    /// problem found (naming `file` and the `inbound.*` key), never a secret value.
    pub fn from_config(
        cfg: &InboundConfig,
        defaults: &InboundDefaults,
        secrets: &dyn SecretSource,
        file: &Path,
    ) -> Result<InboundAuth, Vec<Problem>> {
        let mut problems = Vec::new();
        let scheme = cfg.auth;
        let mut problem = |key: &str, why: String| {
            problems.push(Problem::new(file, format!("inbound.{key}"), why))
        };

        // Options that do not apply to the chosen scheme are mistakes, not harmless extras: a
        // `prefix` next to `auth = "bearer"` means the author expected something else to happen.
        let not_for = |key: &str, allowed: &str| {
            format!(
                "`{key}` does not apply to auth = \"{}\" (only to {allowed})",
                scheme.as_str()
            )
        };
        if cfg.header.is_some() && !matches!(scheme, Scheme::HmacSha256 | Scheme::Header) {
            problem(
                "header",
                not_for("header", "\"hmac-sha256\" and \"header\""),
            );
        }
        if cfg.prefix.is_some() && scheme != Scheme::HmacSha256 {
            problem("prefix", not_for("prefix", "\"hmac-sha256\""));
        }
        if cfg.encoding.is_some() && scheme != Scheme::HmacSha256 {
            problem("encoding", not_for("encoding", "\"hmac-sha256\""));
        }
        if cfg.username.is_some() && scheme != Scheme::Basic {
            problem("username", not_for("username", "\"basic\""));
        }
        if cfg.tolerance.is_some() && scheme != Scheme::StandardWebhooks {
            problem("tolerance", not_for("tolerance", "\"standard-webhooks\""));
        }

        let values = match resolve_secrets(&cfg.secret_env, secrets) {
            Ok(values) => values,
            Err(why) => {
                problem("secret_env", why);
                Vec::new()
            }
        };

        let header_name = |text: &str| HeaderName::from_bytes(text.trim().as_bytes()).ok();

        let auth = match scheme {
            Scheme::HmacSha256 => {
                let text = cfg.header.as_deref().unwrap_or(defaults.header);
                let header = header_name(text);
                if header.is_none() {
                    problem(
                        "header",
                        format!("{text:?} is not a valid HTTP header name"),
                    );
                }
                header.map(|header| InboundAuth::HmacSha256 {
                    header,
                    prefix: cfg
                        .prefix
                        .clone()
                        .unwrap_or_else(|| defaults.prefix.to_owned()),
                    encoding: cfg.encoding.unwrap_or(defaults.encoding),
                    secrets: values
                        .iter()
                        .map(|v| SecretString::from(v.as_str()))
                        .collect(),
                })
            }
            Scheme::StandardWebhooks => {
                let tolerance = match cfg.tolerance.as_deref() {
                    None => Some(standard_webhooks::DEFAULT_TOLERANCE),
                    Some(text) => match crate::config::parse_duration(text) {
                        Ok(d) if d.is_positive() && d <= MAX_TOLERANCE => Some(d),
                        Ok(_) => {
                            problem(
                                "tolerance",
                                format!("{text:?} must be more than 0s and at most 1h"),
                            );
                            None
                        }
                        Err(why) => {
                            problem("tolerance", why);
                            None
                        }
                    },
                };
                let mut parsed = Vec::with_capacity(values.len());
                for (i, value) in values.iter().enumerate() {
                    match WebhookSecret::parse(value) {
                        Ok(secret) => parsed.push(secret),
                        Err(e) => problem(
                            "secret_env",
                            format!(
                                "secret #{} in environment variable {}: {e}",
                                i + 1,
                                cfg.secret_env
                            ),
                        ),
                    }
                }
                tolerance.map(|tolerance| InboundAuth::StandardWebhooks {
                    secrets: parsed,
                    tolerance,
                })
            }
            Scheme::Bearer => Some(InboundAuth::Bearer {
                tokens: values
                    .iter()
                    .map(|v| SecretString::from(v.as_str()))
                    .collect(),
            }),
            Scheme::Basic => match cfg.username.as_deref().map(str::trim) {
                None | Some("") => {
                    problem(
                        "username",
                        "auth = \"basic\" needs `username`, the user name the sender presents"
                            .into(),
                    );
                    None
                }
                Some(name) if name.contains(':') => {
                    problem(
                        "username",
                        "a Basic user name cannot contain ':' (RFC 7617)".into(),
                    );
                    None
                }
                Some(name) => Some(InboundAuth::Basic {
                    username: name.to_owned(),
                    passwords: values
                        .iter()
                        .map(|v| SecretString::from(v.as_str()))
                        .collect(),
                }),
            },
            Scheme::Header => match cfg.header.as_deref() {
                None => {
                    problem("header", "auth = \"header\" needs `header`, the header holding the shared secret (e.g. \"X-Api-Key\")".into());
                    None
                }
                Some(text) => match header_name(text) {
                    Some(header) => Some(InboundAuth::Header {
                        header,
                        secrets: values
                            .iter()
                            .map(|v| SecretString::from(v.as_str()))
                            .collect(),
                    }),
                    None => {
                        problem(
                            "header",
                            format!("{text:?} is not a valid HTTP header name"),
                        );
                        None
                    }
                },
            },
        };

        match auth {
            Some(auth) if problems.is_empty() => Ok(auth),
            _ => Err(problems),
        }
    }

    /// The scheme, for logs and metrics labels.
    pub fn scheme(&self) -> Scheme {
        match self {
            InboundAuth::HmacSha256 { .. } => Scheme::HmacSha256,
            InboundAuth::StandardWebhooks { .. } => Scheme::StandardWebhooks,
            InboundAuth::Bearer { .. } => Scheme::Bearer,
            InboundAuth::Basic { .. } => Scheme::Basic,
            InboundAuth::Header { .. } => Scheme::Header,
        }
    }

    /// Header names (lower case) that carry credentials and so are never stored in the inbox:
    /// the scheme's own header plus `authorization`, `proxy-authorization` and `cookie`, which
    /// are credentials whatever the scheme.
    pub fn credential_headers(&self) -> Vec<String> {
        let mut names: Vec<String> = ALWAYS_CREDENTIALS.iter().map(|s| (*s).to_owned()).collect();
        let own = match self {
            InboundAuth::HmacSha256 { header, .. } | InboundAuth::Header { header, .. } => {
                Some(header.as_str())
            }
            InboundAuth::StandardWebhooks { .. } => Some(WEBHOOK_SIGNATURE),
            InboundAuth::Bearer { .. } | InboundAuth::Basic { .. } => None,
        };
        if let Some(own) = own
            && !names.iter().any(|n| n == own)
        {
            names.push(own.to_owned());
        }
        names
    }

    /// Checks one delivery's headers and raw body against this scheme.
    fn check(&self, headers: &HeaderMap, body: &[u8], now: Timestamp) -> Result<(), AuthError> {
        match self {
            InboundAuth::HmacSha256 {
                header,
                prefix,
                encoding,
                secrets,
            } => {
                let value = single(headers, header.as_str())?;
                let encoded = strip_prefix_ignore_case(value, prefix).ok_or_else(|| {
                    AuthError::MalformedHeader {
                        header: header.as_str().to_owned(),
                        why: format!("expected the prefix {prefix:?} before the digest"),
                    }
                })?;
                let tag =
                    encoding
                        .decode(encoded.trim())
                        .map_err(|e| AuthError::MalformedHeader {
                            header: header.as_str().to_owned(),
                            why: format!("the digest is {e}"),
                        })?;
                if tag.len() != TAG_LEN {
                    return Err(AuthError::MalformedHeader {
                        header: header.as_str().to_owned(),
                        why: format!(
                            "an HMAC-SHA256 digest is {TAG_LEN} bytes, this one is {}",
                            tag.len()
                        ),
                    });
                }
                // Check every secret without stopping early: timing does not reveal which matched.
                let mut matched = false;
                for secret in secrets {
                    matched |= signatures::verify_hmac_sha256(
                        secret.expose_secret().as_bytes(),
                        body,
                        &tag,
                    )
                    .is_ok();
                }
                if matched {
                    Ok(())
                } else {
                    Err(AuthError::SignatureMismatch)
                }
            }
            InboundAuth::StandardWebhooks { secrets, tolerance } => {
                let id = single(headers, WEBHOOK_ID)?;
                let timestamp = single(headers, WEBHOOK_TIMESTAMP)?;
                let signature = single(headers, WEBHOOK_SIGNATURE)?;
                standard_webhooks::verify(secrets, id, timestamp, signature, body, now, *tolerance)
                    .map_err(AuthError::from)
            }
            InboundAuth::Bearer { tokens } => {
                let value = single(headers, "authorization")?;
                let token = credentials_after(value, "Bearer")?;
                if token_matches(
                    token.as_bytes(),
                    tokens.iter().map(|t| t.expose_secret().as_bytes()),
                ) {
                    Ok(())
                } else {
                    Err(AuthError::BadCredentials)
                }
            }
            InboundAuth::Basic {
                username,
                passwords,
            } => {
                let value = single(headers, "authorization")?;
                let encoded = credentials_after(value, "Basic")?;
                let presented =
                    Encoding::Base64
                        .decode(encoded)
                        .map_err(|e| AuthError::MalformedHeader {
                            header: "authorization".into(),
                            why: format!("the Basic credentials are {e}"),
                        })?;
                let expected: Vec<Vec<u8>> = passwords
                    .iter()
                    .map(|p| format!("{username}:{}", p.expose_secret()).into_bytes())
                    .collect();
                if token_matches(&presented, expected.iter().map(Vec::as_slice)) {
                    Ok(())
                } else {
                    Err(AuthError::BadCredentials)
                }
            }
            InboundAuth::Header { header, secrets } => {
                let value = single(headers, header.as_str())?;
                if token_matches(
                    value.trim().as_bytes(),
                    secrets.iter().map(|s| s.expose_secret().as_bytes()),
                ) {
                    Ok(())
                } else {
                    Err(AuthError::BadCredentials)
                }
            }
        }
    }
}

/// Reads `secret_env` and splits it into the secrets in rotation. The error names the variable,
/// never its value.
fn resolve_secrets(var: &str, secrets: &dyn SecretSource) -> Result<Vec<String>, String> {
    let var = var.trim();
    if var.is_empty() {
        return Err("must name the environment variable that holds the secret".into());
    }
    let value = secrets.get(var).ok_or_else(|| {
        format!(
            "environment variable {var} is not set or empty (it must hold the inbound secret; \
             during a rotation, several separated by commas)"
        )
    })?;
    let values: Vec<String> = value
        .expose_secret()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if values.is_empty() {
        return Err(format!(
            "environment variable {var} holds no secret (only commas and spaces)"
        ));
    }
    if values.len() > MAX_SECRETS {
        return Err(format!(
            "environment variable {var} holds {} secrets; at most {MAX_SECRETS} are accepted",
            values.len()
        ));
    }
    Ok(values)
}

/// The one value of header `name`. Zero or several values, or a value that is not visible ASCII,
/// are errors: an ambiguous credential is never guessed at.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, AuthError> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or_else(|| AuthError::MissingHeader {
        header: name.to_owned(),
    })?;
    if values.next().is_some() {
        return Err(AuthError::DuplicateHeader {
            header: name.to_owned(),
        });
    }
    value
        .to_str()
        .map(str::trim)
        .map_err(|_| AuthError::MalformedHeader {
            header: name.to_owned(),
            why: "not visible ASCII".into(),
        })
}

/// `value` without a leading `prefix`, compared case-insensitively (`SHA256=` = `sha256=`).
fn strip_prefix_ignore_case<'v>(value: &'v str, prefix: &str) -> Option<&'v str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| value.get(prefix.len()..))
        .flatten()
}

/// The credentials of an `Authorization: <scheme> <credentials>` header; the scheme name is
/// case-insensitive (RFC 9110).
fn credentials_after<'v>(value: &'v str, scheme: &str) -> Result<&'v str, AuthError> {
    let malformed = || AuthError::MalformedHeader {
        header: "authorization".into(),
        why: format!("expected \"{scheme} <credentials>\""),
    };
    let (name, rest) = value.split_once(' ').ok_or_else(malformed)?;
    let rest = rest.trim();
    if !name.eq_ignore_ascii_case(scheme) || rest.is_empty() {
        return Err(malformed());
    }
    Ok(rest)
}

/// Whether `presented` equals any of `expected`, in constant time. Both sides are hashed first so
/// the comparison is between fixed-length digests and the secret's length does not leak; every
/// candidate is compared without stopping early.
fn token_matches<'e>(presented: &[u8], expected: impl Iterator<Item = &'e [u8]>) -> bool {
    let presented = Sha256::digest(presented);
    let mut matched = Choice::from(0);
    for candidate in expected {
        matched |= presented
            .as_slice()
            .ct_eq(Sha256::digest(candidate).as_slice());
    }
    matched.into()
}

/// Type-state marker: the delivery has not been authenticated yet.
#[derive(Debug, Clone, Copy)]
pub struct Unverified;

/// Type-state marker: the delivery passed its connector's inbound authentication.
#[derive(Debug, Clone, Copy)]
pub struct Verified;

/// One delivery to `POST /webhooks/{connector}`. Only an `Inbound<Verified>` exposes its body for
/// storage, and only [`Inbound::verify`] makes one, so nothing unauthenticated reaches the inbox.
#[derive(Debug, Clone)]
pub struct Inbound<S> {
    headers: HeaderMap,
    body: Bytes,
    state: PhantomData<S>,
}

impl Inbound<Unverified> {
    /// Wraps a delivery exactly as received: the raw body bytes are what signatures cover.
    pub fn new(headers: HeaderMap, body: Bytes) -> Self {
        Self {
            headers,
            body,
            state: PhantomData,
        }
    }

    /// Authenticates the delivery with `auth`, at instant `now` (for timestamp tolerance).
    pub fn verify(
        self,
        auth: &InboundAuth,
        now: Timestamp,
    ) -> Result<Inbound<Verified>, AuthError> {
        auth.check(&self.headers, &self.body, now)?;
        Ok(Inbound {
            headers: self.headers,
            body: self.body,
            state: PhantomData,
        })
    }
}

impl Inbound<Verified> {
    /// The authenticated raw body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// All headers as received, credentials included (for dedupe ids and the like; store
    /// [`Inbound::storable_headers`] instead).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The non-credential headers, for storage in the inbox. Values that are not UTF-8 are
    /// stored lossily; they carry no meaning the connectors use.
    pub fn storable_headers(&self, auth: &InboundAuth) -> Vec<(String, String)> {
        let drop = auth.credential_headers();
        self.headers
            .iter()
            .filter(|(name, _)| !drop.iter().any(|d| d == name.as_str()))
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect()
    }

    /// The authenticated raw body, by value.
    pub fn into_body(self) -> Bytes {
        self.body
    }
}

/// Why a delivery was not authenticated. Every message is safe in a `401` body: it names the
/// header and the problem, never a secret, a presented credential or the expected digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A header the scheme needs is absent.
    #[error("missing header {header}")]
    MissingHeader {
        /// Lower-case header name.
        header: String,
    },
    /// A credential header appears more than once.
    #[error("header {header} appears more than once")]
    DuplicateHeader {
        /// Lower-case header name.
        header: String,
    },
    /// A header is present but not in the expected form.
    #[error("header {header} is malformed: {why}")]
    MalformedHeader {
        /// Lower-case header name.
        header: String,
        /// What is wrong with it (never its value).
        why: String,
    },
    /// A well-formed signature that no configured secret produced.
    #[error("signature does not match")]
    SignatureMismatch,
    /// The signed timestamp is older than the tolerance: possibly a replay.
    #[error("timestamp is {age_secs} s old; at most {tolerance_secs} s is accepted")]
    StaleTimestamp {
        /// Age in seconds.
        age_secs: i64,
        /// Tolerance in seconds.
        tolerance_secs: i64,
    },
    /// The signed timestamp is further ahead than the tolerance.
    #[error("timestamp is {ahead_secs} s in the future; at most {tolerance_secs} s is accepted")]
    FutureTimestamp {
        /// Seconds ahead.
        ahead_secs: i64,
        /// Tolerance in seconds.
        tolerance_secs: i64,
    },
    /// A token, password or shared secret that is not one of the configured ones.
    #[error("credentials not accepted")]
    BadCredentials,
}

impl AuthError {
    /// A stable short code for the `error` field of the response and for metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingHeader { .. } => "missing_header",
            AuthError::DuplicateHeader { .. } => "duplicate_header",
            AuthError::MalformedHeader { .. } => "malformed_header",
            AuthError::SignatureMismatch => "signature_mismatch",
            AuthError::StaleTimestamp { .. } => "stale_timestamp",
            AuthError::FutureTimestamp { .. } => "future_timestamp",
            AuthError::BadCredentials => "bad_credentials",
        }
    }
}

impl From<VerifyError> for AuthError {
    fn from(e: VerifyError) -> Self {
        let malformed = |header: &str| AuthError::MalformedHeader {
            header: header.to_owned(),
            why: e.to_string(),
        };
        match e {
            VerifyError::InvalidId => malformed(WEBHOOK_ID),
            VerifyError::InvalidTimestamp => malformed(WEBHOOK_TIMESTAMP),
            VerifyError::HeaderTooLong | VerifyError::NoV1Signature => malformed(WEBHOOK_SIGNATURE),
            VerifyError::TooOld {
                age_secs,
                tolerance_secs,
            } => AuthError::StaleTimestamp {
                age_secs,
                tolerance_secs,
            },
            VerifyError::TooNew {
                ahead_secs,
                tolerance_secs,
            } => AuthError::FutureTimestamp {
                ahead_secs,
                tolerance_secs,
            },
            VerifyError::Mismatch => AuthError::SignatureMismatch,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use axum::http::HeaderValue;
    use base64::Engine as _;
    use proptest::prelude::*;

    use super::*;
    use crate::config::MapSecrets;

    const JIRA: InboundDefaults = InboundDefaults {
        header: "X-Hub-Signature",
        prefix: "sha256=",
        encoding: Encoding::Hex,
    };
    const NOW: i64 = 1_750_000_000;

    fn file() -> PathBuf {
        PathBuf::from("connectors/test.toml")
    }

    fn now() -> Timestamp {
        Timestamp::from_second(NOW).unwrap()
    }

    fn cfg(toml_text: &str) -> InboundConfig {
        toml::from_str(toml_text).unwrap()
    }

    fn resolve(toml_text: &str, env: &[(&str, &str)]) -> Result<InboundAuth, Vec<Problem>> {
        InboundAuth::from_config(
            &cfg(toml_text),
            &JIRA,
            &MapSecrets::from_pairs(env.iter().copied()),
            &file(),
        )
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn check(
        auth: &InboundAuth,
        pairs: &[(&str, &str)],
        body: &'static [u8],
    ) -> Result<Inbound<Verified>, AuthError> {
        Inbound::new(headers(pairs), Bytes::from_static(body)).verify(auth, now())
    }

    fn jira_sig(secret: &str, body: &[u8]) -> String {
        format!(
            "sha256={}",
            Encoding::Hex.encode(&signatures::hmac_sha256(secret.as_bytes(), body))
        )
    }

    const BODY: &[u8] = br#"{"webhookEvent":"jira:issue_updated"}"#;

    // ---- hmac-sha256 ----

    #[test]
    fn jira_signature_with_kind_defaults_is_accepted() {
        let auth = resolve(
            "auth = \"hmac-sha256\"\nsecret_env = \"JIRA_SECRET\"",
            &[("JIRA_SECRET", "s3cret")],
        )
        .unwrap();
        let sig = jira_sig("s3cret", BODY);
        let verified = check(&auth, &[("x-hub-signature", &sig)], BODY).unwrap();
        assert_eq!(verified.body().as_ref(), BODY);
    }

    #[test]
    fn hmac_from_the_wrong_secret_is_a_mismatch() {
        let auth = resolve(
            "auth = \"hmac-sha256\"\nsecret_env = \"S\"",
            &[("S", "s3cret")],
        )
        .unwrap();
        let sig = jira_sig("other", BODY);
        assert_eq!(
            check(&auth, &[("X-Hub-Signature", &sig)], BODY).unwrap_err(),
            AuthError::SignatureMismatch
        );
    }

    #[test]
    fn hmac_over_a_tampered_body_is_a_mismatch() {
        let auth = resolve(
            "auth = \"hmac-sha256\"\nsecret_env = \"S\"",
            &[("S", "s3cret")],
        )
        .unwrap();
        let sig = jira_sig("s3cret", BODY);
        assert_eq!(
            check(
                &auth,
                &[("X-Hub-Signature", &sig)],
                br#"{"webhookEvent":"jira:issue_deleted"}"#
            )
            .unwrap_err(),
            AuthError::SignatureMismatch
        );
    }

    #[test]
    fn either_secret_is_accepted_during_a_rotation() {
        let auth = resolve(
            "auth = \"hmac-sha256\"\nsecret_env = \"S\"",
            &[("S", "old-secret, new-secret")],
        )
        .unwrap();
        for secret in ["old-secret", "new-secret"] {
            let sig = jira_sig(secret, BODY);
            assert!(
                check(&auth, &[("X-Hub-Signature", &sig)], BODY).is_ok(),
                "{secret}"
            );
        }
        let sig = jira_sig("retired-secret", BODY);
        assert_eq!(
            check(&auth, &[("X-Hub-Signature", &sig)], BODY).unwrap_err(),
            AuthError::SignatureMismatch
        );
    }

    #[test]
    fn missing_signature_header_is_named() {
        let auth = resolve(
            "auth = \"hmac-sha256\"\nsecret_env = \"S\"",
            &[("S", "s3cret")],
        )
        .unwrap();
        assert_eq!(
            check(&auth, &[], BODY).unwrap_err(),
            AuthError::MissingHeader {
                header: "x-hub-signature".into()
            }
        );
    }

    #[test]
    fn duplicate_signature_headers_are_refused() {
        let auth = resolve(
            "auth = \"hmac-sha256\"\nsecret_env = \"S\"",
            &[("S", "s3cret")],
        )
        .unwrap();
        let sig = jira_sig("s3cret", BODY);
        let err = check(
            &auth,
            &[("x-hub-signature", &sig), ("x-hub-signature", &sig)],
            BODY,
        )
        .unwrap_err();
        assert_eq!(
            err,
            AuthError::DuplicateHeader {
                header: "x-hub-signature".into()
            }
        );
    }

    #[test]
    fn signature_without_the_prefix_or_in_bad_hex_is_malformed() {
        let auth = resolve(
            "auth = \"hmac-sha256\"\nsecret_env = \"S\"",
            &[("S", "s3cret")],
        )
        .unwrap();
        let bare = jira_sig("s3cret", BODY)
            .trim_start_matches("sha256=")
            .to_owned();
        assert_eq!(
            check(&auth, &[("X-Hub-Signature", &bare)], BODY)
                .unwrap_err()
                .code(),
            "malformed_header"
        );
        assert_eq!(
            check(&auth, &[("X-Hub-Signature", "sha256=xyz")], BODY)
                .unwrap_err()
                .code(),
            "malformed_header"
        );
        assert_eq!(
            check(&auth, &[("X-Hub-Signature", "sha256=abcd")], BODY)
                .unwrap_err()
                .code(),
            "malformed_header"
        );
    }

    #[test]
    fn prefix_and_hex_case_do_not_matter() {
        let auth = resolve(
            "auth = \"hmac-sha256\"\nsecret_env = \"S\"",
            &[("S", "s3cret")],
        )
        .unwrap();
        let sig = jira_sig("s3cret", BODY).to_uppercase();
        assert!(check(&auth, &[("X-Hub-Signature", &sig)], BODY).is_ok());
    }

    #[test]
    fn configured_header_names_match_case_insensitively() {
        let auth = resolve(
            "auth = \"hmac-sha256\"\nsecret_env = \"S\"\nheader = \"X-SIGNATURE\"\nprefix = \"\"\nencoding = \"base64\"",
            &[("S", "snow-shared-secret")],
        )
        .unwrap();
        let sig = Encoding::Base64.encode(&signatures::hmac_sha256(b"snow-shared-secret", BODY));
        assert!(check(&auth, &[("x-Signature", &sig)], BODY).is_ok());
        assert!(check(&auth, &[("X-SIGNATURE", &sig)], BODY).is_ok());
    }

    #[test]
    fn mismatch_errors_never_reveal_the_secret_or_expected_digest() {
        let auth = resolve(
            "auth = \"hmac-sha256\"\nsecret_env = \"S\"",
            &[("S", "s3cret")],
        )
        .unwrap();
        let expected = jira_sig("s3cret", BODY);
        let presented = jira_sig("wrong", BODY);
        for err in [
            check(&auth, &[("X-Hub-Signature", &presented)], BODY).unwrap_err(),
            check(&auth, &[("X-Hub-Signature", "sha256=zz")], BODY).unwrap_err(),
        ] {
            let text = err.to_string();
            assert!(
                !text.contains("s3cret")
                    && !text.contains(&expected[7..])
                    && !text.contains(&presented[7..]),
                "{text}"
            );
        }
    }

    // ---- standard-webhooks ----

    const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn sw_headers(secret: &str, ts: i64, body: &[u8]) -> Vec<(String, String)> {
        let secret = WebhookSecret::parse(secret).unwrap();
        vec![
            ("webhook-id".into(), "msg_1".into()),
            ("webhook-timestamp".into(), ts.to_string()),
            (
                "webhook-signature".into(),
                standard_webhooks::sign(&secret, "msg_1", ts, body),
            ),
        ]
    }

    fn check_owned(
        auth: &InboundAuth,
        pairs: &[(String, String)],
        body: &'static [u8],
    ) -> Result<Inbound<Verified>, AuthError> {
        let refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        check(auth, &refs, body)
    }

    #[test]
    fn standard_webhooks_delivery_is_accepted() {
        let auth = resolve(
            "auth = \"standard-webhooks\"\nsecret_env = \"S\"",
            &[("S", WHSEC)],
        )
        .unwrap();
        assert!(check_owned(&auth, &sw_headers(WHSEC, NOW - 10, BODY), BODY).is_ok());
    }

    #[test]
    fn standard_webhooks_stale_and_future_timestamps_are_refused() {
        let auth = resolve(
            "auth = \"standard-webhooks\"\nsecret_env = \"S\"",
            &[("S", WHSEC)],
        )
        .unwrap();
        assert_eq!(
            check_owned(&auth, &sw_headers(WHSEC, NOW - 301, BODY), BODY).unwrap_err(),
            AuthError::StaleTimestamp {
                age_secs: 301,
                tolerance_secs: 300
            }
        );
        assert_eq!(
            check_owned(&auth, &sw_headers(WHSEC, NOW + 400, BODY), BODY).unwrap_err(),
            AuthError::FutureTimestamp {
                ahead_secs: 400,
                tolerance_secs: 300
            }
        );
    }

    #[test]
    fn standard_webhooks_tolerance_is_configurable() {
        let auth = resolve(
            "auth = \"standard-webhooks\"\nsecret_env = \"S\"\ntolerance = \"10m\"",
            &[("S", WHSEC)],
        )
        .unwrap();
        assert!(check_owned(&auth, &sw_headers(WHSEC, NOW - 599, BODY), BODY).is_ok());
        assert_eq!(
            check_owned(&auth, &sw_headers(WHSEC, NOW - 601, BODY), BODY)
                .unwrap_err()
                .code(),
            "stale_timestamp"
        );
    }

    #[test]
    fn standard_webhooks_rotation_accepts_either_secret() {
        let other = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode([9u8; 32])
        );
        let env = format!("{WHSEC},{other}");
        let auth = resolve(
            "auth = \"standard-webhooks\"\nsecret_env = \"S\"",
            &[("S", &env)],
        )
        .unwrap();
        assert!(check_owned(&auth, &sw_headers(WHSEC, NOW, BODY), BODY).is_ok());
        assert!(check_owned(&auth, &sw_headers(&other, NOW, BODY), BODY).is_ok());
    }

    #[test]
    fn standard_webhooks_wrong_secret_or_missing_header_is_refused() {
        let auth = resolve(
            "auth = \"standard-webhooks\"\nsecret_env = \"S\"",
            &[("S", WHSEC)],
        )
        .unwrap();
        let other = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode([9u8; 32])
        );
        assert_eq!(
            check_owned(&auth, &sw_headers(&other, NOW, BODY), BODY).unwrap_err(),
            AuthError::SignatureMismatch
        );
        let mut missing = sw_headers(WHSEC, NOW, BODY);
        missing.retain(|(k, _)| k != "webhook-timestamp");
        assert_eq!(
            check_owned(&auth, &missing, BODY).unwrap_err(),
            AuthError::MissingHeader {
                header: "webhook-timestamp".into()
            }
        );
        let mut garbled = sw_headers(WHSEC, NOW, BODY);
        garbled[1].1 = "yesterday".into();
        assert_eq!(
            check_owned(&auth, &garbled, BODY).unwrap_err().code(),
            "malformed_header"
        );
    }

    #[test]
    fn standard_webhooks_secrets_must_be_whsec_and_are_never_echoed() {
        let problems = resolve(
            "auth = \"standard-webhooks\"\nsecret_env = \"S\"",
            &[("S", "plain-text-secret")],
        )
        .unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "inbound.secret_env");
        assert!(problems[0].why.contains("whsec_") && problems[0].why.contains("#1"));
        assert!(!problems[0].to_string().contains("plain-text-secret"));
    }

    #[test]
    fn tolerance_that_is_not_a_duration_or_too_long_is_a_problem() {
        for bad in ["soon", "0s", "2h"] {
            let problems = resolve(
                &format!("auth = \"standard-webhooks\"\nsecret_env = \"S\"\ntolerance = \"{bad}\""),
                &[("S", WHSEC)],
            )
            .unwrap_err();
            assert_eq!(problems[0].key, "inbound.tolerance", "{bad}");
        }
    }

    // ---- bearer ----

    #[test]
    fn bearer_token_is_accepted_and_a_wrong_one_refused() {
        let auth = resolve(
            "auth = \"bearer\"\nsecret_env = \"T\"",
            &[("T", "tok-1,tok-2")],
        )
        .unwrap();
        assert!(check(&auth, &[("Authorization", "Bearer tok-1")], BODY).is_ok());
        assert!(check(&auth, &[("authorization", "bearer tok-2")], BODY).is_ok());
        assert_eq!(
            check(&auth, &[("Authorization", "Bearer tok-3")], BODY).unwrap_err(),
            AuthError::BadCredentials
        );
        assert_eq!(
            check(&auth, &[("Authorization", "Bearer tok-")], BODY).unwrap_err(),
            AuthError::BadCredentials
        );
    }

    #[test]
    fn bearer_without_header_or_with_another_scheme_is_refused() {
        let auth = resolve("auth = \"bearer\"\nsecret_env = \"T\"", &[("T", "tok-1")]).unwrap();
        assert_eq!(
            check(&auth, &[], BODY).unwrap_err(),
            AuthError::MissingHeader {
                header: "authorization".into()
            }
        );
        assert_eq!(
            check(&auth, &[("Authorization", "Basic tok-1")], BODY)
                .unwrap_err()
                .code(),
            "malformed_header"
        );
        assert_eq!(
            check(&auth, &[("Authorization", "tok-1")], BODY)
                .unwrap_err()
                .code(),
            "malformed_header"
        );
        assert_eq!(
            check(&auth, &[("Authorization", "Bearer ")], BODY)
                .unwrap_err()
                .code(),
            "malformed_header"
        );
    }

    // ---- basic ----

    fn basic(user: &str, pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    }

    #[test]
    fn basic_credentials_are_accepted_and_wrong_ones_refused() {
        let auth = resolve(
            "auth = \"basic\"\nsecret_env = \"P\"\nusername = \"snow\"",
            &[("P", "pw-old,pw-new")],
        )
        .unwrap();
        assert!(check(&auth, &[("Authorization", &basic("snow", "pw-old"))], BODY).is_ok());
        assert!(check(&auth, &[("Authorization", &basic("snow", "pw-new"))], BODY).is_ok());
        assert_eq!(
            check(&auth, &[("Authorization", &basic("snow", "pw"))], BODY).unwrap_err(),
            AuthError::BadCredentials
        );
        assert_eq!(
            check(&auth, &[("Authorization", &basic("admin", "pw-new"))], BODY).unwrap_err(),
            AuthError::BadCredentials
        );
        assert_eq!(
            check(&auth, &[("Authorization", "Basic !!!")], BODY)
                .unwrap_err()
                .code(),
            "malformed_header"
        );
    }

    #[test]
    fn basic_needs_a_username() {
        let problems = resolve("auth = \"basic\"\nsecret_env = \"P\"", &[("P", "pw")]).unwrap_err();
        assert_eq!(problems[0].key, "inbound.username");
    }

    // ---- header ----

    #[test]
    fn shared_secret_header_is_accepted_and_a_wrong_one_refused() {
        let auth = resolve(
            "auth = \"header\"\nsecret_env = \"K\"\nheader = \"X-Api-Key\"",
            &[("K", "fs-shared-key")],
        )
        .unwrap();
        assert!(check(&auth, &[("x-api-key", "fs-shared-key")], BODY).is_ok());
        assert_eq!(
            check(&auth, &[("X-Api-Key", "fs-shared-kez")], BODY).unwrap_err(),
            AuthError::BadCredentials
        );
        assert_eq!(
            check(&auth, &[], BODY).unwrap_err(),
            AuthError::MissingHeader {
                header: "x-api-key".into()
            }
        );
    }

    #[test]
    fn header_scheme_needs_a_header_name() {
        let problems = resolve("auth = \"header\"\nsecret_env = \"K\"", &[("K", "k")]).unwrap_err();
        assert_eq!(problems[0].key, "inbound.header");
        let problems = resolve(
            "auth = \"header\"\nsecret_env = \"K\"\nheader = \"bad header\"",
            &[("K", "k")],
        )
        .unwrap_err();
        assert_eq!(problems[0].key, "inbound.header");
    }

    // ---- configuration ----

    #[test]
    fn missing_secret_variable_is_a_problem_naming_file_key_and_variable() {
        let problems = resolve(
            "auth = \"hmac-sha256\"\nsecret_env = \"JIRA_WEBHOOK_SECRET\"",
            &[],
        )
        .unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].file, file());
        assert_eq!(problems[0].key, "inbound.secret_env");
        assert!(problems[0].why.contains("JIRA_WEBHOOK_SECRET"));
        let blank = resolve("auth = \"bearer\"\nsecret_env = \"T\"", &[("T", " , ,")]).unwrap_err();
        assert_eq!(blank[0].key, "inbound.secret_env");
    }

    #[test]
    fn options_of_another_scheme_are_reported_all_at_once() {
        let problems = resolve(
            "auth = \"bearer\"\nsecret_env = \"T\"\nprefix = \"x\"\nencoding = \"hex\"\nusername = \"u\"\ntolerance = \"1m\"\nheader = \"X\"",
            &[("T", "t")],
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "inbound.header",
                "inbound.prefix",
                "inbound.encoding",
                "inbound.username",
                "inbound.tolerance"
            ]
        );
    }

    #[test]
    fn unknown_keys_and_schemes_are_rejected_by_the_reader() {
        assert!(
            toml::from_str::<InboundConfig>(
                "auth = \"bearer\"\nsecret_env = \"T\"\nsecret = \"x\""
            )
            .is_err()
        );
        assert!(
            toml::from_str::<InboundConfig>("auth = \"hmac-sha1\"\nsecret_env = \"T\"").is_err()
        );
        let c = cfg("auth = \"standard-webhooks\"\nsecret_env = \"T\"");
        assert_eq!(c.auth, Scheme::StandardWebhooks);
    }

    #[test]
    fn too_many_rotation_secrets_are_a_problem() {
        let many = ["s"; MAX_SECRETS + 1].join(",");
        let problems =
            resolve("auth = \"bearer\"\nsecret_env = \"T\"", &[("T", &many)]).unwrap_err();
        assert_eq!(problems[0].key, "inbound.secret_env");
    }

    #[test]
    fn debug_output_shows_no_secret() {
        for (toml_text, secret) in [
            (
                "auth = \"hmac-sha256\"\nsecret_env = \"S\"",
                "hmac-secret-value",
            ),
            (
                "auth = \"bearer\"\nsecret_env = \"S\"",
                "bearer-secret-value",
            ),
            (
                "auth = \"basic\"\nsecret_env = \"S\"\nusername = \"u\"",
                "basic-secret-value",
            ),
            (
                "auth = \"header\"\nsecret_env = \"S\"\nheader = \"X-Key\"",
                "header-secret-value",
            ),
        ] {
            let auth = resolve(toml_text, &[("S", secret)]).unwrap();
            let shown = format!("{auth:?}");
            assert!(
                !shown.contains(secret) && shown.contains("redacted"),
                "{shown}"
            );
        }
        let auth = resolve(
            "auth = \"standard-webhooks\"\nsecret_env = \"S\"",
            &[("S", WHSEC)],
        )
        .unwrap();
        assert!(!format!("{auth:?}").contains("MfKQ9r8G"));
    }

    // ---- storage ----

    #[test]
    fn credential_headers_name_the_scheme_header_and_the_usual_suspects() {
        let hmac = resolve("auth = \"hmac-sha256\"\nsecret_env = \"S\"", &[("S", "s")]).unwrap();
        assert!(
            hmac.credential_headers()
                .contains(&"x-hub-signature".to_owned())
        );
        let sw = resolve(
            "auth = \"standard-webhooks\"\nsecret_env = \"S\"",
            &[("S", WHSEC)],
        )
        .unwrap();
        let names = sw.credential_headers();
        assert!(
            names.contains(&"webhook-signature".to_owned())
                && !names.contains(&"webhook-id".to_owned())
        );
        let header = resolve(
            "auth = \"header\"\nsecret_env = \"S\"\nheader = \"X-Api-Key\"",
            &[("S", "s")],
        )
        .unwrap();
        assert!(
            header
                .credential_headers()
                .contains(&"x-api-key".to_owned())
        );
        for auth in [hmac, sw, header] {
            assert!(
                auth.credential_headers()
                    .contains(&"authorization".to_owned())
            );
        }
    }

    #[test]
    fn storable_headers_drop_the_credentials() {
        let auth = resolve(
            "auth = \"header\"\nsecret_env = \"K\"\nheader = \"X-Api-Key\"",
            &[("K", "fs-shared-key")],
        )
        .unwrap();
        let verified = check(
            &auth,
            &[
                ("X-Api-Key", "fs-shared-key"),
                ("Authorization", "Bearer unrelated"),
                ("Cookie", "session=1"),
                ("Content-Type", "application/json"),
                ("X-Atlassian-Webhook-Identifier", "42"),
            ],
            BODY,
        )
        .unwrap();
        let stored = verified.storable_headers(&auth);
        assert_eq!(
            stored,
            vec![
                ("content-type".to_owned(), "application/json".to_owned()),
                ("x-atlassian-webhook-identifier".to_owned(), "42".to_owned()),
            ]
        );
        assert!(!format!("{stored:?}").contains("fs-shared-key"));
        assert_eq!(verified.into_body().as_ref(), BODY);
    }

    #[test]
    fn standard_webhooks_storage_keeps_the_id_and_drops_the_signature() {
        let auth = resolve(
            "auth = \"standard-webhooks\"\nsecret_env = \"S\"",
            &[("S", WHSEC)],
        )
        .unwrap();
        let verified = check_owned(&auth, &sw_headers(WHSEC, NOW, BODY), BODY).unwrap();
        let names: Vec<String> = verified
            .storable_headers(&auth)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(names, ["webhook-id", "webhook-timestamp"]);
    }

    /// One scheme under test: its `[inbound]` table, its environment, its credential header.
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
    );
    const WHSEC_ENV: &[(&str, &str)] = &[("S", WHSEC)];
    const PLAIN_ENV: &[(&str, &str)] = &[("S", "s3cret-value")];

    proptest! {
        #[test]
        fn arbitrary_credential_headers_never_panic_or_pass(
            value in "[ -~]{0,200}",
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let schemes: [Case; 5] = [
                ("auth = \"hmac-sha256\"\nsecret_env = \"S\"", PLAIN_ENV, "x-hub-signature"),
                ("auth = \"standard-webhooks\"\nsecret_env = \"S\"", WHSEC_ENV, "webhook-signature"),
                ("auth = \"bearer\"\nsecret_env = \"S\"", PLAIN_ENV, "authorization"),
                ("auth = \"basic\"\nsecret_env = \"S\"\nusername = \"u\"", PLAIN_ENV, "authorization"),
                ("auth = \"header\"\nsecret_env = \"S\"\nheader = \"X-Key\"", PLAIN_ENV, "x-key"),
            ];
            for (toml_text, env, header) in schemes {
                let auth = resolve(toml_text, env).unwrap();
                let mut map = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(&value) {
                    map.insert(HeaderName::from_static(header), v.clone());
                    map.insert(HeaderName::from_static("webhook-id"), v.clone());
                    map.insert(HeaderName::from_static("webhook-timestamp"), v);
                }
                let r = Inbound::new(map, Bytes::from(body.clone())).verify(&auth, now());
                prop_assert!(r.is_err());
            }
        }
    }
}
