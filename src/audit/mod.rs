//! The audit trail: append-only records that answer "who held which privilege, where, when,
//! approved by whom". Each record carries the hash of its predecessor, so an edited, deleted or
//! reordered record breaks the chain ([`verify_chain`]). Hashing is pure; the store appends.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The hash that precedes the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An audit record before it is chained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewAudit {
    /// When it happened.
    pub at: Timestamp,
    /// Dotted kind: `grant.approved`, `grant.denied`, `event.ignored`, `delivery.rejected`, ...
    pub kind: String,
    pub grant_id: Option<Uuid>,
    pub connector: Option<String>,
    pub ticket_key: Option<String>,
    /// Who caused it (approver, admin, `system`).
    pub actor: Option<String>,
    /// Everything else worth keeping: evidence, reasons, states.
    pub detail: serde_json::Value,
}

/// A committed, chained audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: i64,
    #[serde(flatten)]
    pub record: NewAudit,
    /// Hash of the previous record ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// sha256(prev_hash, seq, canonical record), hex.
    pub hash: String,
}

/// The chain hash of `record` at position `seq` after `prev_hash`.
pub fn chain_hash(prev_hash: &str, seq: i64, record: &NewAudit) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(seq.to_string().as_bytes());
    h.update(b"\n");
    // serde_json writes struct fields in declaration order and `detail` maps sorted (no
    // preserve_order feature), so this encoding is canonical for a given record.
    h.update(serde_json::to_vec(record).unwrap_or_default());
    hex::encode(h.finalize())
}

/// Where and why a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("record {seq}: sequence gap (expected {expected}): a record was deleted or reordered")]
    Gap { seq: i64, expected: i64 },
    #[error(
        "record {seq}: prev_hash does not match the previous record: a record was deleted, inserted or reordered"
    )]
    BrokenLink { seq: i64 },
    #[error("record {seq}: content does not match its hash: the record was edited")]
    Tampered { seq: i64 },
}

/// Checks a run of consecutive records that follows `prev` (seq, hash) — the genesis for the
/// start of the chain. Returns the last (seq, hash) to continue with the next page.
pub fn verify_chain(
    prev: (i64, String),
    records: &[AuditRecord],
) -> Result<(i64, String), ChainError> {
    let (mut seq, mut hash) = prev;
    for r in records {
        if r.seq != seq + 1 {
            return Err(ChainError::Gap {
                seq: r.seq,
                expected: seq + 1,
            });
        }
        if r.prev_hash != hash {
            return Err(ChainError::BrokenLink { seq: r.seq });
        }
        if chain_hash(&r.prev_hash, r.seq, &r.record) != r.hash {
            return Err(ChainError::Tampered { seq: r.seq });
        }
        seq = r.seq;
        hash = r.hash.clone();
    }
    Ok((seq, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n as i64)
            .map(|seq| {
                let record = NewAudit {
                    at: Timestamp::from_second(1_700_000_000 + seq).unwrap(),
                    kind: "grant.approved".into(),
                    grant_id: None,
                    connector: Some("jira".into()),
                    ticket_key: Some(format!("IT-{seq}")),
                    actor: Some("approver".into()),
                    detail: serde_json::json!({"n": seq}),
                };
                let hash = chain_hash(&prev, seq, &record);
                let r = AuditRecord {
                    seq,
                    record,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                r
            })
            .collect()
    }

    fn genesis() -> (i64, String) {
        (0, GENESIS_HASH.to_owned())
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify_chain(genesis(), &chain(5)).unwrap().0, 5);
    }

    #[test]
    fn edited_record_is_detected() {
        let mut c = chain(5);
        c[2].record.actor = Some("mallory".into());
        assert_eq!(
            verify_chain(genesis(), &c),
            Err(ChainError::Tampered { seq: 3 })
        );
    }

    #[test]
    fn deleted_record_is_detected() {
        let mut c = chain(5);
        c.remove(1);
        assert!(matches!(
            verify_chain(genesis(), &c),
            Err(ChainError::Gap { seq: 3, .. })
        ));
    }

    #[test]
    fn reordered_records_are_detected() {
        let mut c = chain(5);
        c.swap(1, 2);
        assert!(verify_chain(genesis(), &c).is_err());
    }
}
