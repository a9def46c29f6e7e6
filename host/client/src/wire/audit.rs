//! The server's audit log: an append-only list of every change made through
//! the admin API (roots, bundles, artifacts, releases, rollout decisions)
//! and every device enrolment, each entry chained to the one before by
//! SHA-256.
//!
//! An entry's hash covers its content and the previous entry's hash, so
//! changing an entry breaks its own hash, and removing or reordering
//! entries breaks the links. Removing the newest entries leaves a
//! consistent chain: [`verify_chain`] catches that against a head recorded
//! elsewhere: the server's head row (kept in the same transaction as each
//! append) and, independently of the server's database, a checkpoint the
//! verifier kept from its last run (`edgeml audit verify --checkpoint`).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The header a caller names the person or program acting in (recorded as
/// claimed; the admin token is what authorises).
pub const OPERATOR_HEADER: &str = "edgeml-operator";

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain separation for entry hashes.
const HASH_CONTEXT: &[u8] = b"edgeml-audit-v1\n";

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When it was written (Unix ms, server clock).
    pub at_ms: u64,
    /// The credential that acted: `admin` (the admin token), `viewer` (the
    /// console's read-only token, which only logs in), `enrolment` (a
    /// device enrolling with the enrolment token) or `server` (the server
    /// itself, such as the canary gate halting a rollout).
    pub actor: String,
    /// The name the caller gave for itself (`Edgeml-Operator` header, set
    /// by the CLI from `EDGEML_OPERATOR` or the login name). Claimed, not
    /// authenticated: the credential is `actor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// What was done (`release.publish`, `rollout.pause`, ...).
    pub action: String,
    /// What it was done to (a channel, a digest, a device id).
    pub target: String,
    /// Ids of the keys whose signatures the server verified on what was
    /// pushed (publisher keys of a bundle, release or root keys of metadata).
    #[serde(default)]
    pub key_ids: Vec<String>,
    /// What changed, as named values.
    #[serde(default)]
    pub details: BTreeMap<String, String>,
    /// The previous entry's hash ([`GENESIS`] for the first).
    pub prev: String,
    /// SHA-256 over this entry's content and `prev` ([`AuditEntry::compute_hash`]).
    pub hash: String,
}

/// What the hash covers: every field but the hash, in this order.
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    at_ms: u64,
    actor: &'a str,
    operator: Option<&'a str>,
    action: &'a str,
    target: &'a str,
    key_ids: &'a [String],
    details: &'a BTreeMap<String, String>,
    prev: &'a str,
}

impl AuditEntry {
    /// Hex SHA-256 of the entry's content (every field but `hash`, as
    /// compact JSON in declaration order; `details` is sorted by key).
    pub fn compute_hash(&self) -> String {
        let hashed = Hashed {
            seq: self.seq,
            at_ms: self.at_ms,
            actor: &self.actor,
            operator: self.operator.as_deref(),
            action: &self.action,
            target: &self.target,
            key_ids: &self.key_ids,
            details: &self.details,
            prev: &self.prev,
        };
        let mut h = Sha256::new();
        h.update(HASH_CONTEXT);
        // Serialising strings, integers and a BTreeMap cannot fail.
        h.update(serde_json::to_vec(&hashed).unwrap_or_default());
        hex::encode(h.finalize())
    }

    /// The head this entry makes.
    pub fn head(&self) -> AuditHead {
        AuditHead {
            seq: self.seq,
            hash: self.hash.clone(),
        }
    }
}

/// The newest entry's position and hash: what a verifier keeps as a
/// checkpoint, and what the server keeps next to the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditHead {
    /// The newest entry's `seq` (0: empty log).
    pub seq: u64,
    /// Its hash ([`GENESIS`] for an empty log).
    pub hash: String,
}

impl AuditHead {
    /// The head of an empty log.
    pub fn empty() -> AuditHead {
        AuditHead {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }
}

/// `GET /v1/audit`: a page of entries, oldest first, and the server's head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditPage {
    /// Entries with `seq` above the query's `after`, at most `limit`.
    pub entries: Vec<AuditEntry>,
    /// The head the server recorded with its last append.
    pub head: AuditHead,
}

/// How an audit log fails verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// An entry's content no longer matches its hash.
    #[error(
        "audit entry {seq} was changed after it was written: its content does not match its hash"
    )]
    Edited {
        /// The entry.
        seq: u64,
    },
    /// An entry does not follow the one before it (removed, inserted or
    /// reordered entries).
    #[error("audit entry {seq} does not follow entry {}: entries were removed, inserted or reordered before it", seq - 1)]
    Unlinked {
        /// The entry whose `prev` is not its predecessor's hash.
        seq: u64,
    },
    /// Positions skip.
    #[error("audit entry {expected} is missing (the log goes on at {found})")]
    Missing {
        /// The position that should come next.
        expected: u64,
        /// The one that does.
        found: u64,
    },
    /// The log ends before a head recorded earlier.
    #[error("the audit log ends at entry {last}, but {source_name} recorded entry {head}: entries were removed from its end")]
    Truncated {
        /// The last entry present.
        last: u64,
        /// The recorded head.
        head: u64,
        /// Who recorded it (`the server's head`, `the checkpoint`).
        source_name: &'static str,
    },
    /// The entry at a recorded head's position is not the one recorded.
    #[error(
        "audit entry {seq} is not the one {source_name} recorded: the log was rewritten from there"
    )]
    Rewritten {
        /// The position.
        seq: u64,
        /// Who recorded it.
        source_name: &'static str,
    },
}

/// Check a whole log (entries from 1, oldest first): every hash, every
/// link, no gaps, and that it still reaches and contains each recorded
/// head (`server`: the head the server keeps beside the log; `checkpoint`:
/// one the verifier kept earlier). Returns the log's head.
pub fn verify_chain(
    entries: &[AuditEntry],
    server: Option<&AuditHead>,
    checkpoint: Option<&AuditHead>,
) -> Result<AuditHead, ChainError> {
    let mut prev = AuditHead::empty();
    for e in entries {
        if e.seq != prev.seq + 1 {
            return Err(ChainError::Missing {
                expected: prev.seq + 1,
                found: e.seq,
            });
        }
        if e.compute_hash() != e.hash {
            return Err(ChainError::Edited { seq: e.seq });
        }
        if e.prev != prev.hash {
            return Err(ChainError::Unlinked { seq: e.seq });
        }
        prev = e.head();
    }
    for (head, source_name) in [
        (server, "the server's head"),
        (checkpoint, "the checkpoint"),
    ] {
        let Some(head) = head else { continue };
        if head.seq > prev.seq {
            return Err(ChainError::Truncated {
                last: prev.seq,
                head: head.seq,
                source_name,
            });
        }
        let recorded = if head.seq == 0 {
            GENESIS
        } else {
            entries[head.seq as usize - 1].hash.as_str()
        };
        if recorded != head.hash {
            return Err(ChainError::Rewritten {
                seq: head.seq,
                source_name,
            });
        }
    }
    Ok(prev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: u64) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for seq in 1..=n {
            let mut e = AuditEntry {
                seq,
                at_ms: 1_000 + seq,
                actor: "admin".into(),
                operator: Some("alice".into()),
                action: "rollout.pause".into(),
                target: "stable".into(),
                key_ids: vec![],
                details: BTreeMap::from([("to".into(), "paused".into())]),
                prev: out.last().map_or(GENESIS.into(), |p| p.hash.clone()),
                hash: String::new(),
            };
            e.hash = e.compute_hash();
            out.push(e);
        }
        out
    }

    #[test]
    fn intact_log_verifies_against_its_heads() {
        let l = log(5);
        let head = verify_chain(&l, Some(&l[4].head()), Some(&l[2].head())).unwrap();
        assert_eq!(head, l[4].head());
        assert_eq!(verify_chain(&[], None, None).unwrap(), AuditHead::empty());
    }

    #[test]
    fn detects_edited_details() {
        let mut l = log(3);
        l[1].details.insert("to".into(), "active".into());
        assert_eq!(
            verify_chain(&l, None, None),
            Err(ChainError::Edited { seq: 2 })
        );
    }

    #[test]
    fn detects_removed_middle_entry() {
        let mut l = log(4);
        l.remove(1);
        assert_eq!(
            verify_chain(&l, None, None),
            Err(ChainError::Missing {
                expected: 2,
                found: 3
            })
        );
    }

    #[test]
    fn detects_renumbered_and_rehashed_entry() {
        // Entry 2 removed, 3 and 4 renumbered and their hashes recomputed:
        // the link from the new entry 2 to entry 1 breaks.
        let mut l = log(4);
        l.remove(1);
        for (i, e) in l.iter_mut().enumerate() {
            e.seq = i as u64 + 1;
            e.hash = e.compute_hash();
        }
        assert_eq!(
            verify_chain(&l, None, None),
            Err(ChainError::Unlinked { seq: 2 })
        );
    }

    #[test]
    fn detects_truncation_against_either_head() {
        let l = log(4);
        let short = &l[..2];
        assert!(matches!(
            verify_chain(short, Some(&l[3].head()), None),
            Err(ChainError::Truncated {
                last: 2,
                head: 4,
                source_name: "the server's head"
            })
        ));
        // The server's head rewound with the log: the checkpoint still knows.
        assert!(matches!(
            verify_chain(short, Some(&l[1].head()), Some(&l[2].head())),
            Err(ChainError::Truncated {
                last: 2,
                head: 3,
                source_name: "the checkpoint"
            })
        ));
    }

    #[test]
    fn detects_rewritten_history_against_checkpoint() {
        let l = log(3);
        let mut other = log(3);
        other[2].at_ms += 1;
        other[2].hash = other[2].compute_hash();
        assert!(matches!(
            verify_chain(&other, None, Some(&l[2].head())),
            Err(ChainError::Rewritten { seq: 3, .. })
        ));
    }
}
