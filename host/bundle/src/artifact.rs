//! Precompiled components: a bundle's component compiled ahead of time, on a
//! build machine, for one target (a CPU architecture, or wasmtime's Pulley
//! interpreter for 32-bit ARM), so that a device without a compiler can run
//! it.
//!
//! An artifact is bound to one bundle (its sha256), one engine
//! configuration (this crate's version and the settings that change
//! generated code) and one target, and signed with Ed25519 by a key the
//! device trusts for artifacts. The bundle's own signatures still cover
//! the model; the artifact's signature covers the compiled code.
//!
//! File layout: `EDGEMLPA` ‖ u32 LE header length ‖ header (JSON) ‖ code.
//! The header holds the [`ArtifactClaims`] (with the code's sha256), the
//! signing key's id and the signature over the domain tag and the claims'
//! JSON. Nothing in the code section is used before the signature, the
//! bundle, the engine and the target check out.

use crate::{PublicKey, SecretKey, TrustPolicy};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"EDGEMLPA";
const FORMAT: u32 = 1;
/// Domain tag: a signature made for an artifact never verifies as anything else.
const DOMAIN: &[u8] = b"edgeml-precompiled-artifact-v1\0";
/// Largest header accepted.
const MAX_HEADER: usize = 64 << 10;

/// What an artifact says about itself, and what its signature covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactClaims {
    /// Artifact format version (1).
    pub format: u32,
    /// The bundle it was compiled from: sha256 (hex) of the bundle's signed
    /// content ([`crate::VerifiedBundle::digest`], `edgeml inspect`'s
    /// content digest), so adding a signature to the bundle keeps its
    /// artifacts valid.
    pub bundle_sha256: String,
    /// The target it was compiled for: a target triple
    /// (`aarch64-unknown-linux-gnu`) or `pulley32` / `pulley64`.
    pub target: String,
    /// The engine configuration that made it (`edgeml_runtime`'s
    /// `Runtime::engine_fingerprint`).
    pub engine: String,
    /// sha256 (hex) of the compiled code.
    pub code_sha256: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    claims: ArtifactClaims,
    /// Hex key id of the signer (`PublicKey::id`), empty when unsigned.
    key_id: String,
    /// Hex Ed25519 signature over `DOMAIN ‖ claims JSON`, empty when unsigned.
    signature: String,
}

/// Why a precompiled artifact was refused. The bundle is not loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArtifactError {
    /// Not an artifact, or damaged.
    #[error("not a precompiled artifact: {0}")]
    Malformed(String),
    /// It carries no signature.
    #[error("the precompiled artifact is not signed: sign it with `edgeml precompile --key`")]
    Unsigned,
    /// Signed by a key this device does not trust for artifacts, or the
    /// signature does not verify.
    #[error("the precompiled artifact's signature (key {key_id}) is not from a trusted key or does not verify")]
    BadSignature {
        /// The key id the artifact names.
        key_id: String,
    },
    /// The code is not what the signed claims describe.
    #[error("the precompiled code does not match its signed digest")]
    CodeDigest,
    /// Compiled for another target.
    #[error("the artifact was compiled for `{artifact}`, this host runs `{host}`: precompile for `{host}`")]
    OtherTarget {
        /// The artifact's target.
        artifact: String,
        /// This host's.
        host: String,
    },
    /// Compiled by another engine version or configuration.
    #[error("the artifact was compiled by engine `{artifact}`, this host runs `{host}`: precompile with this edgeml version and settings")]
    OtherEngine {
        /// The artifact's engine.
        artifact: String,
        /// This host's.
        host: String,
    },
    /// Everything the artifact claims matches, but wasmtime refused the
    /// code (another operating system or CPU features, or damaged code).
    #[error("wasmtime refused the precompiled code ({0}): precompile the bundle for this device's target with this edgeml version")]
    Incompatible(String),
    /// Compiled from another bundle.
    #[error("the artifact was compiled from bundle {artifact}, not from this bundle ({bundle})")]
    OtherBundle {
        /// The artifact's bundle digest.
        artifact: String,
        /// The bundle being loaded.
        bundle: String,
    },
}

fn signed_message(claims: &ArtifactClaims) -> Result<Vec<u8>, ArtifactError> {
    let mut msg = DOMAIN.to_vec();
    msg.extend(serde_json::to_vec(claims).map_err(|e| ArtifactError::Malformed(e.to_string()))?);
    Ok(msg)
}

/// Wrap compiled `code` in an artifact for `claims` (whose `format` and
/// `code_sha256` are set here), signed by `key` when given.
pub fn seal(
    mut claims: ArtifactClaims,
    code: &[u8],
    key: Option<&SecretKey>,
) -> Result<Vec<u8>, ArtifactError> {
    claims.format = FORMAT;
    claims.code_sha256 = hex::encode(Sha256::digest(code));
    let (key_id, signature) = match key {
        Some(k) => (
            k.public_key().id().to_string(),
            hex::encode(k.sign(&signed_message(&claims)?)),
        ),
        None => (String::new(), String::new()),
    };
    assemble(
        &Header {
            claims,
            key_id,
            signature,
        },
        code,
    )
}

fn assemble(header: &Header, code: &[u8]) -> Result<Vec<u8>, ArtifactError> {
    let header = serde_json::to_vec(header).map_err(|e| ArtifactError::Malformed(e.to_string()))?;
    let len = u32::try_from(header.len())
        .map_err(|_| ArtifactError::Malformed("header too large".into()))?;
    let mut out = Vec::with_capacity(12 + header.len() + code.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(code);
    Ok(out)
}

/// Read an artifact's claims without checking anything (for `inspect`).
pub fn read_claims(artifact: &[u8]) -> Result<ArtifactClaims, ArtifactError> {
    split(artifact).map(|(h, _)| h.claims)
}

/// The id of the key an artifact says signed it, without checking
/// anything (after [`verify_signature`], the key that did).
pub fn signer_key_id(artifact: &[u8]) -> Result<String, ArtifactError> {
    split(artifact).map(|(h, _)| h.key_id)
}

fn split(artifact: &[u8]) -> Result<(Header, &[u8]), ArtifactError> {
    let bad = |why: &str| ArtifactError::Malformed(why.to_string());
    let rest = artifact
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| bad("no EDGEMLPA magic"))?;
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("truncated header length"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > MAX_HEADER || len > rest.len() {
        return Err(bad("header length out of range"));
    }
    let (header, code) = rest.split_at(len);
    let header: Header =
        serde_json::from_slice(header).map_err(|e| bad(&format!("header: {e}")))?;
    if header.claims.format != FORMAT {
        return Err(bad(&format!(
            "format {} (this host reads {FORMAT})",
            header.claims.format
        )));
    }
    Ok((header, code))
}

/// What the host expects an artifact to be for.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// sha256 (hex) of the bundle being loaded.
    pub bundle_sha256: &'a str,
    /// The host's target (`x86_64`, `aarch64`, `pulley32`).
    pub target: &'a str,
    /// The host's engine fingerprint.
    pub engine: &'a str,
}

/// Check `artifact` against the signers and what the host expects; the
/// code on success.
pub fn open<'a>(
    artifact: &'a [u8],
    signers: &TrustPolicy,
    expected: &Expected<'_>,
) -> Result<&'a [u8], ArtifactError> {
    let (claims, code) = verify_signature(artifact, signers)?;
    if claims.bundle_sha256 != expected.bundle_sha256 {
        return Err(ArtifactError::OtherBundle {
            artifact: claims.bundle_sha256.clone(),
            bundle: expected.bundle_sha256.to_string(),
        });
    }
    if target_family(&claims.target) != target_family(expected.target) {
        return Err(ArtifactError::OtherTarget {
            artifact: claims.target.clone(),
            host: expected.target.to_string(),
        });
    }
    if claims.engine != expected.engine {
        return Err(ArtifactError::OtherEngine {
            artifact: claims.engine.clone(),
            host: expected.engine.to_string(),
        });
    }
    Ok(code)
}

/// Check the artifact's signature (by a key in `signers`) and its code's
/// digest, not what it is for: what a fleet server checks on upload.
pub fn verify_signature<'a>(
    artifact: &'a [u8],
    signers: &TrustPolicy,
) -> Result<(ArtifactClaims, &'a [u8]), ArtifactError> {
    let (header, code) = split(artifact)?;
    if header.signature.is_empty() {
        return Err(ArtifactError::Unsigned);
    }
    let bad_sig = || ArtifactError::BadSignature {
        key_id: header.key_id.clone(),
    };
    let signature = hex::decode(&header.signature).map_err(|_| bad_sig())?;
    let message = signed_message(&header.claims)?;
    let key: Option<&PublicKey> = signers
        .keys()
        .iter()
        .find(|k| k.id().to_string() == header.key_id);
    if !key.is_some_and(|k| k.verify(&message, &signature)) {
        return Err(bad_sig());
    }
    if hex::encode(Sha256::digest(code)) != header.claims.code_sha256 {
        return Err(ArtifactError::CodeDigest);
    }
    Ok((header.claims, code))
}

/// What decides whether code runs: the architecture (`aarch64` of
/// `aarch64-unknown-linux-gnu`), or the Pulley variant.
pub fn target_family(target: &str) -> &str {
    let arch = target.split('-').next().unwrap_or(target);
    // Triples name some architectures more finely than `std::env::consts::ARCH`.
    match arch {
        a if a.starts_with("riscv64") => "riscv64",
        a if a.starts_with("riscv32") => "riscv32",
        "i386" | "i586" | "i686" => "x86",
        a => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> ArtifactClaims {
        ArtifactClaims {
            format: FORMAT,
            bundle_sha256: "ab".repeat(32),
            target: "aarch64-unknown-linux-gnu".into(),
            engine: "edgeml-runtime 0.1.0; cranelift".into(),
            code_sha256: String::new(),
        }
    }

    fn expected<'a>() -> Expected<'a> {
        Expected {
            bundle_sha256: "abababababababababababababababababababababababababababababababab",
            target: "aarch64",
            engine: "edgeml-runtime 0.1.0; cranelift",
        }
    }

    #[test]
    fn sealed_artifact_opens_for_its_bundle_engine_and_target() {
        let key = SecretKey::generate().unwrap();
        let policy = TrustPolicy::any_of(vec![key.public_key()]).unwrap();
        let a = seal(claims(), b"code", Some(&key)).unwrap();
        assert_eq!(open(&a, &policy, &expected()).unwrap(), b"code");
        assert_eq!(read_claims(&a).unwrap().target, "aarch64-unknown-linux-gnu");
    }

    #[test]
    fn changed_code_or_claims_are_refused() {
        let key = SecretKey::generate().unwrap();
        let policy = TrustPolicy::any_of(vec![key.public_key()]).unwrap();
        let mut a = seal(claims(), b"code", Some(&key)).unwrap();
        let last = a.len() - 1;
        a[last] ^= 1;
        assert_eq!(
            open(&a, &policy, &expected()),
            Err(ArtifactError::CodeDigest)
        );
        // Claims changed after signing: the signature no longer verifies.
        let a = seal(claims(), b"code", Some(&key)).unwrap();
        let (mut header, code) = split(&a).unwrap();
        header.claims.bundle_sha256 = "cd".repeat(32);
        let forged = assemble(&header, code).unwrap();
        assert_eq!(
            open(&forged, &policy, &expected()),
            Err(ArtifactError::BadSignature {
                key_id: key.public_key().id().to_string()
            })
        );
    }

    #[test]
    fn damaged_headers_are_malformed() {
        for bytes in [
            &b""[..],
            b"EDGEMLPA",
            b"EDGEMLPA\xff\xff\xff\xff",
            b"EDGEMLPA\x02\0\0\0{}",
        ] {
            assert!(matches!(
                read_claims(bytes),
                Err(ArtifactError::Malformed(_))
            ));
        }
    }
}
