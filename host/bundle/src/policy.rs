use crate::{Error, KeyId, PublicKey, Result};
use std::collections::BTreeSet;

/// Which publishers a host trusts: `threshold` signatures from distinct keys
/// in `keys` (k-of-n).
#[derive(Debug, Clone)]
pub struct TrustPolicy {
    keys: Vec<PublicKey>,
    threshold: usize,
}

impl TrustPolicy {
    /// `threshold`-of-`keys.len()`. Refuses an empty key list, a threshold of
    /// zero or above the number of keys, and the same key listed twice (which
    /// would let one signer count twice).
    pub fn new(keys: Vec<PublicKey>, threshold: usize) -> Result<Self> {
        if keys.is_empty() {
            return Err(Error::InvalidPolicy("no trusted keys given".into()));
        }
        if threshold == 0 || threshold > keys.len() {
            return Err(Error::InvalidPolicy(format!(
                "threshold {threshold} must be between 1 and the number of trusted keys ({})",
                keys.len()
            )));
        }
        let ids: BTreeSet<KeyId> = keys.iter().map(PublicKey::id).collect();
        if ids.len() != keys.len() {
            return Err(Error::InvalidPolicy(
                "the same key is listed more than once".into(),
            ));
        }
        Ok(TrustPolicy { keys, threshold })
    }

    /// Any one of `keys` (1-of-n).
    pub fn any_of(keys: Vec<PublicKey>) -> Result<Self> {
        Self::new(keys, 1)
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Signatures needed from distinct trusted keys.
    pub fn threshold(&self) -> usize {
        self.threshold
    }
}
