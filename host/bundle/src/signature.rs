//! The `signature` custom section of the WebAssembly tool-conventions
//! signature format, byte-compatible with `wasmsign2`.
//!
//! ```text
//! varuint spec_version (1) ‖ varuint content_type (1) ‖ varuint hash_fn (1 = SHA-256)
//! varuint signed_hashes_count ‖ (varuint len ‖ signed_hashes)*
//! signed_hashes = varuint hashes_count ‖ hash[32]* ‖ varuint sig_count ‖ (varuint len ‖ signature)*
//! signature     = varuint key_id_len ‖ key_id ‖ alg_id (1 = Ed25519) ‖ varuint sig_len ‖ sig
//! signed message = "wasmsig" ‖ spec_version ‖ content_type ‖ hash_fn ‖ hashes
//! key_id         = HMAC-SHA256(key = raw public key, "key_id")[..12] (a hint, not signed)
//! ```
//!
//! A bundle signed here verifies with `wasmsign2 verify`, and one signed
//! by `wasmsign2 sign` verifies here; several signers share one hash set
//! (k-of-n is counted over it). CI checks both directions with the real tool.

use crate::keys::ED25519_ALG;
use crate::wasm::{read_u32, write_u32};
use crate::{Error, Result};

/// Name of the signature custom section.
pub const SECTION: &str = "signature";
/// Name of the delimiter custom section.
pub const DELIMITER: &str = "signature_delimiter";
const SPEC_VERSION: u8 = 1;
const CONTENT_TYPE_WASM: u8 = 1;
const HASH_SHA256: u8 = 1;
const DOMAIN: &[u8] = b"wasmsig";
/// Upper bounds, as in wasmsign2.
pub const MAX_HASHES: usize = 64;
/// Upper bound on signatures per signed hash set.
pub const MAX_SIGNATURES: usize = 256;
/// Upper bound on signatures in a whole section (all sets together): each
/// may cost a signature check per trusted key, so a flood is refused
/// before any is checked.
pub const MAX_TOTAL_SIGNATURES: usize = 64;

/// One signature over a set of hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSignature {
    /// Key id hint (may be empty).
    pub key_id: Vec<u8>,
    /// Algorithm id (1 = Ed25519).
    pub alg: u8,
    /// Signature bytes.
    pub sig: Vec<u8>,
}

/// A set of hashes and the signatures over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHashes {
    /// SHA-256 hashes (rolling, one per signed part).
    pub hashes: Vec<[u8; 32]>,
    /// Signatures over `hashes`.
    pub signatures: Vec<RawSignature>,
}

impl SignedHashes {
    /// The message each signature in this set signs.
    pub fn message(&self) -> Vec<u8> {
        let mut msg = Vec::with_capacity(DOMAIN.len() + 3 + 32 * self.hashes.len());
        msg.extend_from_slice(DOMAIN);
        msg.extend_from_slice(&[SPEC_VERSION, CONTENT_TYPE_WASM, HASH_SHA256]);
        for h in &self.hashes {
            msg.extend_from_slice(h);
        }
        msg
    }
}

impl SignedHashes {
    /// The message edgeml 0.1 signed, without the content-type byte.
    /// Bundles signed then still verify (see `verify`); `edgeml sign`
    /// writes only the wasmsign2 message.
    pub fn legacy_message(&self) -> Vec<u8> {
        let mut msg = Vec::with_capacity(DOMAIN.len() + 2 + 32 * self.hashes.len());
        msg.extend_from_slice(DOMAIN);
        msg.extend_from_slice(&[SPEC_VERSION, HASH_SHA256]);
        for h in &self.hashes {
            msg.extend_from_slice(h);
        }
        msg
    }
}

/// The decoded payload of a `signature` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignatureData {
    /// The signed hash sets.
    pub signed: Vec<SignedHashes>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<u32> {
        let (v, n) = read_u32(self.bytes, self.pos).map_err(|e| self.rebase(e))?;
        self.pos += n;
        Ok(v)
    }
    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| Error::Malformed {
                offset: self.base + self.pos,
                reason: "signature section is truncated".into(),
            })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn slice(&mut self) -> Result<Reader<'a>> {
        let n = self.u32()? as usize;
        let base = self.base + self.pos;
        Ok(Reader {
            bytes: self.take(n)?,
            pos: 0,
            base,
        })
    }
    fn done(&self) -> bool {
        self.pos == self.bytes.len()
    }
    fn rebase(&self, e: Error) -> Error {
        match e {
            Error::Malformed { offset, reason } => Error::Malformed {
                offset: self.base + offset,
                reason,
            },
            e => e,
        }
    }
}

impl SignatureData {
    /// Decode a section payload; `base` is its offset in the file, for errors.
    pub fn decode(payload: &[u8], base: usize) -> Result<Self> {
        let mut r = Reader {
            bytes: payload,
            pos: 0,
            base,
        };
        let (version, content, hash) = (r.u32()?, r.u32()?, r.u32()?);
        if version != u32::from(SPEC_VERSION) {
            return Err(Error::UnsupportedSignature(format!(
                "specification version {version}"
            )));
        }
        if content != u32::from(CONTENT_TYPE_WASM) {
            return Err(Error::UnsupportedSignature(format!(
                "content type {content}"
            )));
        }
        if hash != u32::from(HASH_SHA256) {
            return Err(Error::UnsupportedSignature(format!("hash function {hash}")));
        }
        let count = r.u32()? as usize;
        if count > MAX_HASHES {
            return Err(Error::LimitExceeded {
                what: "signed hash sets",
                limit: MAX_HASHES as u64,
                found: count as u64,
            });
        }
        let mut signed = Vec::with_capacity(count);
        let mut total = 0usize;
        for _ in 0..count {
            let mut s = r.slice()?;
            let n = s.u32()? as usize;
            if n > MAX_HASHES {
                return Err(Error::LimitExceeded {
                    what: "hashes",
                    limit: MAX_HASHES as u64,
                    found: n as u64,
                });
            }
            let mut hashes = Vec::with_capacity(n);
            for _ in 0..n {
                let mut h = [0u8; 32];
                h.copy_from_slice(s.take(32)?);
                hashes.push(h);
            }
            let m = s.u32()? as usize;
            if m > MAX_SIGNATURES {
                return Err(Error::LimitExceeded {
                    what: "signatures",
                    limit: MAX_SIGNATURES as u64,
                    found: m as u64,
                });
            }
            total += m;
            if total > MAX_TOTAL_SIGNATURES {
                return Err(Error::LimitExceeded {
                    what: "signatures in the signature section",
                    limit: MAX_TOTAL_SIGNATURES as u64,
                    found: total as u64,
                });
            }
            let mut signatures = Vec::with_capacity(m);
            for _ in 0..m {
                let mut g = s.slice()?;
                let key_len = g.u32()? as usize;
                let key_id = g.take(key_len)?.to_vec();
                let alg = g.byte()?;
                let sig_len = g.u32()? as usize;
                let sig = g.take(sig_len)?.to_vec();
                signatures.push(RawSignature { key_id, alg, sig });
            }
            signed.push(SignedHashes { hashes, signatures });
        }
        if !r.done() {
            return Err(Error::Malformed {
                offset: base + r.pos,
                reason: "trailing bytes in the signature section".into(),
            });
        }
        Ok(SignatureData { signed })
    }

    /// Encode as a section payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&[SPEC_VERSION, CONTENT_TYPE_WASM, HASH_SHA256]);
        write_u32(&mut out, self.signed.len() as u32);
        for s in &self.signed {
            let mut body = Vec::new();
            write_u32(&mut body, s.hashes.len() as u32);
            for h in &s.hashes {
                body.extend_from_slice(h);
            }
            write_u32(&mut body, s.signatures.len() as u32);
            for g in &s.signatures {
                let mut sig = Vec::new();
                write_u32(&mut sig, g.key_id.len() as u32);
                sig.extend_from_slice(&g.key_id);
                sig.push(g.alg);
                write_u32(&mut sig, g.sig.len() as u32);
                sig.extend_from_slice(&g.sig);
                write_u32(&mut body, sig.len() as u32);
                body.extend_from_slice(&sig);
            }
            write_u32(&mut out, body.len() as u32);
            out.extend_from_slice(&body);
        }
        out
    }

    /// Add an Ed25519 signature over the whole-content hash `h`, to the set
    /// that already covers exactly `[h]` when there is one.
    pub(crate) fn add(&mut self, h: [u8; 32], key: &crate::SecretKey) {
        let pos = match self.signed.iter().position(|s| s.hashes == [h]) {
            Some(i) => i,
            None => {
                self.signed.push(SignedHashes {
                    hashes: vec![h],
                    signatures: Vec::new(),
                });
                self.signed.len() - 1
            }
        };
        let set = &mut self.signed[pos];
        let hint = key.public_key().wasm_key_id();
        set.signatures.retain(|g| g.key_id != hint);
        let sig = key.sign(&set.message());
        set.signatures.push(RawSignature {
            key_id: hint.to_vec(),
            alg: ED25519_ALG,
            sig,
        });
    }
}
