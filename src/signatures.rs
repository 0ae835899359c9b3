//! Signing and verification primitives (pure): HMAC-SHA256 over raw bytes in hex or base64, and
//! Standard Webhooks (`id.timestamp.body`, `v1,<base64>`, `whsec_` secrets).
//! Filled in by the signatures work item.

use serde::{Deserialize, Serialize};

/// How a digest is written in a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Hex,
    Base64,
}
