use crate::error::io;
use crate::manifest::{ContentDigest, Manifest, ModelInfo, TensorSpec, SCHEMA_VERSION};
use crate::signature::{self, SignatureData};
use crate::wasm::{component_sections, custom_section, Section};
use crate::{Error, KeyId, Result, SecretKey, TrustPolicy};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;

/// Custom section holding the manifest (JSON).
pub const MANIFEST_SECTION: &str = "edgeml.manifest";
/// Custom section holding the model (ONNX bytes).
pub const MODEL_SECTION: &str = "edgeml.model";

/// Size limits applied before anything is parsed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest bundle accepted. Default 512 MiB.
    pub max_bundle_bytes: u64,
    /// Largest manifest accepted. Default 1 MiB.
    pub max_manifest_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bundle_bytes: 512 << 20,
            max_manifest_bytes: 1 << 20,
        }
    }
}

/// What [`pack`] needs.
#[derive(Debug, Clone)]
pub struct PackOptions<'a> {
    /// Model name (`[A-Za-z0-9._-]`, at most 128 characters).
    pub name: &'a str,
    /// Model version.
    pub version: semver::Version,
    /// The guest component.
    pub component: &'a [u8],
    /// The ONNX model.
    pub model: &'a [u8],
    /// Model inputs (see `edgeml_runtime::onnx_io_schema` to read them from the model).
    pub inputs: Vec<TensorSpec>,
    /// Model outputs.
    pub outputs: Vec<TensorSpec>,
    /// Class labels.
    pub labels: Vec<String>,
    /// Component-specific preprocessing parameters.
    pub preprocessing: serde_json::Value,
    /// Oldest host that may run the bundle.
    pub min_host_version: semver::Version,
    /// Creation time; `None` means now.
    pub created: Option<std::time::SystemTime>,
    /// Reference distributions for drift monitoring.
    pub baseline: Option<crate::manifest::Baseline>,
    /// Self-test vectors devices run before switching to this bundle.
    pub self_test: Vec<crate::manifest::SelfTest>,
    /// The model card.
    pub card: Option<crate::card::ModelCard>,
}

fn is_ours(s: &Section<'_>) -> bool {
    s.id == 0
        && (s.name.starts_with("edgeml.")
            || s.name == signature::SECTION
            || s.name == signature::DELIMITER)
}

/// SHA-256 of the component: preamble plus every section that is not
/// edgeml's or the signature format's.
fn component_digest(bytes: &[u8], sections: &[Section<'_>]) -> ContentDigest {
    let mut h = Sha256::new();
    h.update(&bytes[..8]);
    let mut size = 8u64;
    for s in sections.iter().filter(|s| !is_ours(s)) {
        h.update(&bytes[s.range.clone()]);
        size += s.range.len() as u64;
    }
    ContentDigest {
        sha256: hex::encode(h.finalize()),
        size,
    }
}

/// Pack a component and an ONNX model into an unsigned bundle: the component
/// followed by the `edgeml.manifest` and `edgeml.model` custom sections and a
/// `signature_delimiter`. Sections edgeml or a signer added before are dropped.
pub fn pack(opts: &PackOptions<'_>) -> Result<Vec<u8>> {
    // Section headers as wasmsign2 writes them (minimal LEB128), so that
    // signing with either tool leaves the content, and its hash, unchanged.
    let mut canonical = opts.component.get(..8).unwrap_or_default().to_vec();
    for s in component_sections(opts.component)?
        .iter()
        .filter(|s| !is_ours(s))
    {
        canonical.extend_from_slice(&s.canonical());
    }
    let sections = component_sections(&canonical)?;
    let component = component_digest(&canonical, &sections);
    let created = opts.created.unwrap_or_else(std::time::SystemTime::now);
    let manifest = Manifest {
        schema: SCHEMA_VERSION,
        name: opts.name.to_string(),
        version: opts.version.clone(),
        created: humantime::format_rfc3339_seconds(created).to_string(),
        min_host_version: opts.min_host_version.clone(),
        model: ModelInfo {
            format: "onnx".into(),
            digest: ContentDigest {
                sha256: hex::encode(Sha256::digest(opts.model)),
                size: opts.model.len() as u64,
            },
        },
        component,
        inputs: opts.inputs.clone(),
        outputs: opts.outputs.clone(),
        labels: opts.labels.clone(),
        preprocessing: opts.preprocessing.clone(),
        baseline: opts.baseline.clone(),
        self_test: opts.self_test.clone(),
        card: opts.card.clone(),
    };
    manifest.validate()?;
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Manifest(e.to_string()))?;
    let mut out = canonical;
    out.reserve(opts.model.len() + json.len() + 64);
    out.extend_from_slice(&custom_section(MANIFEST_SECTION, &json));
    out.extend_from_slice(&custom_section(MODEL_SECTION, opts.model));
    let mut delimiter = [0u8; 16];
    getrandom::fill(&mut delimiter).map_err(|e| Error::Random(e.to_string()))?;
    out.extend_from_slice(&custom_section(signature::DELIMITER, &delimiter));
    Ok(out)
}

/// Where the signed content starts: after the signature section if there is
/// one (it must be first), else right after the preamble.
fn signature_split<'a>(sections: &'a [Section<'a>]) -> Result<(Option<&'a Section<'a>>, usize)> {
    let mut sigs = sections
        .iter()
        .enumerate()
        .filter(|(_, s)| s.id == 0 && s.name == signature::SECTION);
    match (sigs.next(), sigs.next()) {
        (None, _) => Ok((None, 8)),
        (Some(_), Some(_)) => Err(Error::DuplicateSection(signature::SECTION.into())),
        (Some((0, s)), None) => Ok((Some(s), s.range.end)),
        (Some(_), None) => Err(Error::MisplacedSignature),
    }
}

/// Add `key`'s signature to a bundle (signed or not). Signatures over other
/// content, which could never verify, are dropped. The bundle's content is
/// not changed, so several publishers can sign one after another.
pub fn sign(bundle: &[u8], key: &SecretKey) -> Result<Vec<u8>> {
    let sections = component_sections(bundle)?;
    let (existing, start) = signature_split(&sections)?;
    let h: [u8; 32] = Sha256::digest(&bundle[start..]).into();
    let mut data = match existing {
        Some(s) => SignatureData::decode(s.payload, s.range.start)?,
        None => SignatureData::default(),
    };
    data.signed.retain(|s| s.hashes.contains(&h));
    data.add(h, key);
    let section = custom_section(signature::SECTION, &data.encode());
    let mut out = Vec::with_capacity(bundle.len() + section.len());
    out.extend_from_slice(&bundle[..8]);
    out.extend_from_slice(&section);
    out.extend_from_slice(&bundle[start..]);
    Ok(out)
}

/// A bundle whose signatures, trust policy and digests have been checked.
///
/// The only way to get one is [`verify`], so code that takes a
/// `VerifiedBundle` cannot be handed unverified bytes.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    bytes: Arc<[u8]>,
    manifest: Arc<Manifest>,
    model: Range<usize>,
    digest: [u8; 32],
    signers: Vec<KeyId>,
}

impl VerifiedBundle {
    /// The signed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// The signed manifest, shared.
    pub fn manifest_arc(&self) -> Arc<Manifest> {
        self.manifest.clone()
    }
    /// The whole bundle (a valid component; custom sections are ignored by runtimes).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// The ONNX model bytes from the signed `edgeml.model` section.
    pub fn model_bytes(&self) -> &[u8] {
        &self.bytes[self.model.clone()]
    }
    /// SHA-256 of the signed content: the bundle's identity.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }
    /// [`Self::digest`] in hex.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }
    /// Trusted keys whose signatures verified.
    pub fn signers(&self) -> &[KeyId] {
        &self.signers
    }
}

/// Read a bundle file for [`verify`] in one allocation, refusing a file over
/// `limits.max_bundle_bytes` before reading it.
///
/// `std::fs::read` makes a `Vec`, and turning that into the `Arc<[u8]>` a
/// [`VerifiedBundle`] keeps copies every byte again: for a 20 MB bundle that
/// second copy (fresh pages, each faulted in) measured about as long as
/// hashing the bundle. Reading straight into the shared buffer skips it.
pub fn read_file(path: impl AsRef<std::path::Path>, limits: &Limits) -> Result<Arc<[u8]>> {
    use std::io::Read;
    let path = path.as_ref();
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    if len > limits.max_bundle_bytes {
        return Err(Error::LimitExceeded {
            what: "bundle size",
            limit: limits.max_bundle_bytes,
            found: len,
        });
    }
    let len = usize::try_from(len).map_err(|_| Error::LimitExceeded {
        what: "bundle size",
        limit: usize::MAX as u64,
        found: len,
    })?;
    // SAFETY: all-zero bytes are valid `u8`s.
    let mut bytes: Arc<[u8]> = unsafe { Arc::<[u8]>::new_zeroed_slice(len).assume_init() };
    let buf = Arc::get_mut(&mut bytes)
        .ok_or_else(|| io(path)(std::io::Error::other("a freshly made buffer is shared")))?;
    file.read_exact(buf).map_err(io(path))?;
    // A file that grew while being read would be cut short here; say so
    // rather than verify a prefix.
    let mut probe = [0u8; 1];
    if file.read(&mut probe).map_err(io(path))? != 0 {
        return Err(io(path)(std::io::Error::other(
            "the file changed size while it was read; read it again",
        )));
    }
    Ok(bytes)
}

/// Verify a bundle against a trust policy with default [`Limits`].
pub fn verify(bytes: impl Into<Arc<[u8]>>, policy: &TrustPolicy) -> Result<VerifiedBundle> {
    verify_with_limits(bytes, policy, &Limits::default())
}

/// Verify a bundle: structure, the signature section, a k-of-n threshold of
/// valid signatures from distinct trusted keys over the whole content, then
/// the manifest and the digests it lists. Nothing is compiled or run.
pub fn verify_with_limits(
    bytes: impl Into<Arc<[u8]>>,
    policy: &TrustPolicy,
    limits: &Limits,
) -> Result<VerifiedBundle> {
    let bytes: Arc<[u8]> = bytes.into();
    if bytes.len() as u64 > limits.max_bundle_bytes {
        return Err(Error::LimitExceeded {
            what: "bundle size",
            limit: limits.max_bundle_bytes,
            found: bytes.len() as u64,
        });
    }
    let sections = component_sections(&bytes)?;
    let (sig, start) = signature_split(&sections)?;
    let sig = sig.ok_or(Error::Unsigned)?;
    let data = SignatureData::decode(sig.payload, sig.range.start)?;
    if data.signed.iter().all(|s| s.signatures.is_empty()) {
        return Err(Error::Unsigned);
    }
    let digests = Digests::compute(&bytes, &sections, start);
    let h = digests.content;
    let covering: Vec<_> = data
        .signed
        .iter()
        .filter(|s| s.hashes.contains(&h))
        .collect();
    if covering.is_empty() {
        return Err(Error::ContentMismatch {
            found: hex::encode(h),
        });
    }
    let mut valid = BTreeSet::new();
    let mut bad = None;
    for set in &covering {
        let msg = set.message();
        let legacy = set.legacy_message();
        for key in policy.keys() {
            let id = key.id();
            let hint = key.wasm_key_id();
            // wasmsign2's rule: a signature is tried with a key only if its
            // key id hint is absent or is that key's id; a wrong signature
            // under a matching hint is a modified signature. Signatures
            // edgeml 0.1 made (8-byte key id, message without the content
            // type) still count, so installed bundles keep verifying.
            let candidates = set
                .signatures
                .iter()
                .filter(|s| s.alg == crate::keys::ED25519_ALG);
            for s in candidates {
                let ok = if s.key_id.is_empty() || s.key_id == hint {
                    key.verify(&msg, &s.sig) || (s.key_id.is_empty() && key.verify(&legacy, &s.sig))
                } else if s.key_id == id.0 {
                    key.verify(&legacy, &s.sig)
                } else {
                    continue;
                };
                if ok {
                    valid.insert(id);
                } else if !s.key_id.is_empty() {
                    bad.get_or_insert(id);
                }
            }
        }
    }
    if valid.len() < policy.threshold() {
        if let Some(id) = bad.filter(|id| !valid.contains(id)) {
            return Err(Error::BadSignature {
                key_id: id.to_string(),
            });
        }
        if valid.is_empty() {
            let signers = covering
                .iter()
                .flat_map(|s| s.signatures.iter())
                .map(|s| {
                    if s.key_id.is_empty() {
                        "(no key id)".into()
                    } else {
                        hex::encode(&s.key_id)
                    }
                })
                .collect();
            return Err(Error::UntrustedSigner { signers });
        }
        return Err(Error::ThresholdNotMet {
            valid: valid.len(),
            required: policy.threshold(),
        });
    }

    // Trusted from here on: parse what the signers vouched for.
    let manifest_section = single(&sections, MANIFEST_SECTION)?;
    let model_section = single(&sections, MODEL_SECTION)?;
    if manifest_section.payload.len() as u64 > limits.max_manifest_bytes {
        return Err(Error::LimitExceeded {
            what: "manifest size",
            limit: limits.max_manifest_bytes,
            found: manifest_section.payload.len() as u64,
        });
    }
    let manifest: Manifest = serde_json::from_slice(manifest_section.payload)
        .map_err(|e| Error::Manifest(e.to_string()))?;
    manifest.validate()?;
    let model_digest = digests
        .model
        .map(hex::encode)
        .unwrap_or_else(|| hex::encode(Sha256::digest(model_section.payload)));
    if model_digest != manifest.model.digest.sha256
        || model_section.payload.len() as u64 != manifest.model.digest.size
    {
        return Err(Error::DigestMismatch {
            what: "model",
            expected: manifest.model.digest.sha256.clone(),
            found: model_digest,
        });
    }
    let component = digests.component;
    if component != manifest.component {
        return Err(Error::DigestMismatch {
            what: "component",
            expected: manifest.component.sha256.clone(),
            found: component.sha256,
        });
    }
    let model = payload_range(&bytes, model_section);
    Ok(VerifiedBundle {
        manifest: Arc::new(manifest),
        model,
        digest: h,
        signers: valid.into_iter().collect(),
        bytes,
    })
}

/// Every digest verification needs, computed together: the signed content
/// (what the signatures cover), the model section and the component (what
/// the manifest lists). SHA-256s of overlapping byte ranges cannot share
/// work, so on a bundle of a few MiB or more the model and component
/// digests are computed on a second thread while this one hashes the
/// content: on two cores verification takes about the time of one pass over
/// the bytes instead of two. Hashing is not parsing: nothing here trusts the
/// bytes before the signatures are checked.
struct Digests {
    content: [u8; 32],
    /// `None` when the bundle has no single model section (verification
    /// then fails on structure, after the signatures).
    model: Option<[u8; 32]>,
    component: ContentDigest,
}

impl Digests {
    const PARALLEL_FROM: usize = 4 << 20;

    fn compute(bytes: &[u8], sections: &[Section<'_>], start: usize) -> Self {
        let model = single(sections, MODEL_SECTION).ok().map(|m| m.payload);
        let side = || {
            (
                model.map(|m| <[u8; 32]>::from(Sha256::digest(m))),
                component_digest(bytes, sections),
            )
        };
        let content = || <[u8; 32]>::from(Sha256::digest(&bytes[start..]));
        let ((model, component), content) = if bytes.len() >= Self::PARALLEL_FROM {
            std::thread::scope(|scope| {
                // If no thread can be made, hash on this one.
                match std::thread::Builder::new().spawn_scoped(scope, side) {
                    Ok(handle) => {
                        let content = content();
                        (handle.join().unwrap_or_else(|_| side()), content)
                    }
                    Err(_) => (side(), content()),
                }
            })
        } else {
            (side(), content())
        };
        Digests {
            content,
            model,
            component,
        }
    }
}

fn single<'a>(sections: &'a [Section<'a>], name: &'static str) -> Result<&'a Section<'a>> {
    let mut it = sections.iter().filter(|s| s.id == 0 && s.name == name);
    match (it.next(), it.next()) {
        (Some(s), None) => Ok(s),
        (None, _) => Err(Error::MissingSection(name)),
        (Some(_), Some(_)) => Err(Error::DuplicateSection(name.into())),
    }
}

fn payload_range(bytes: &[u8], s: &Section<'_>) -> Range<usize> {
    let start = s.payload.as_ptr() as usize - bytes.as_ptr() as usize;
    start..start + s.payload.len()
}

/// A section as [`inspect`] reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SectionInfo {
    /// Section id (0 = custom).
    pub id: u8,
    /// Custom section name, or the kind of a standard section.
    pub name: String,
    /// Size in bytes, header included.
    pub size: u64,
}

/// A signature as [`inspect`] reports it (not verified).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SignatureInfo {
    /// Key id hint, hex.
    pub key_id: String,
    /// Algorithm (`ed25519` or a number).
    pub algorithm: String,
    /// Whether the signed hashes cover the bundle's current content.
    pub covers_content: bool,
}

/// What is in a bundle, read without verifying anything.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BundleInfo {
    /// Total size.
    pub size: u64,
    /// SHA-256 of the signed content, hex.
    pub content_sha256: String,
    /// The manifest, if present and parseable. Not verified.
    pub manifest: Option<Manifest>,
    /// Top-level sections.
    pub sections: Vec<SectionInfo>,
    /// Signatures found.
    pub signatures: Vec<SignatureInfo>,
}

/// Describe a bundle without verifying it (for `edgeml inspect`).
pub fn inspect(bytes: &[u8]) -> Result<BundleInfo> {
    let sections = component_sections(bytes)?;
    let (sig, start) = signature_split(&sections)?;
    let h: [u8; 32] = Sha256::digest(&bytes[start..]).into();
    let mut signatures = Vec::new();
    if let Some(s) = sig {
        for set in SignatureData::decode(s.payload, s.range.start)?.signed {
            for g in &set.signatures {
                signatures.push(SignatureInfo {
                    key_id: hex::encode(&g.key_id),
                    algorithm: if g.alg == crate::keys::ED25519_ALG {
                        "ed25519".into()
                    } else {
                        g.alg.to_string()
                    },
                    covers_content: set.hashes.contains(&h),
                });
            }
        }
    }
    let manifest = single(&sections, MANIFEST_SECTION)
        .ok()
        .and_then(|s| serde_json::from_slice(s.payload).ok());
    Ok(BundleInfo {
        size: bytes.len() as u64,
        content_sha256: hex::encode(h),
        manifest,
        sections: sections
            .iter()
            .map(|s| SectionInfo {
                id: s.id,
                name: section_name(s),
                size: s.range.len() as u64,
            })
            .collect(),
        signatures,
    })
}

fn section_name(s: &Section<'_>) -> String {
    match s.id {
        0 => s.name.to_string(),
        1 => "core module".into(),
        2 => "core instance".into(),
        3 => "core type".into(),
        4 => "component".into(),
        5 => "instance".into(),
        6 => "alias".into(),
        7 => "type".into(),
        8 => "canon".into(),
        9 => "start".into(),
        10 => "import".into(),
        11 => "export".into(),
        other => format!("section {other}"),
    }
}
