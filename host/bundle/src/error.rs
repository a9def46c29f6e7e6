use std::path::PathBuf;

/// Everything that can go wrong reading, packing, signing or verifying a bundle.
///
/// Every security failure has its own variant so callers (and tests) can tell
/// them apart with `matches!`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, not [`std::error::Error::source`], so
        /// that a printed error chain names it once).
        error: std::io::Error,
    },
    /// The bytes do not start with the WebAssembly component preamble.
    #[error("not a WebAssembly component ({found}); build the guest with `cargo build --target wasm32-wasip2` or `cargo component build`")]
    NotAComponent {
        /// What was found instead (e.g. "a core module", "no wasm magic").
        found: &'static str,
    },
    /// The binary structure is broken (truncated file, bad length, bad name).
    #[error("malformed bundle at byte {offset}: {reason}; the file is truncated or corrupted, fetch it again")]
    Malformed {
        /// Byte offset where parsing failed.
        offset: usize,
        /// What was wrong.
        reason: String,
    },
    /// The bundle carries no `signature` section.
    #[error("the bundle is not signed; sign it with `edgeml sign BUNDLE --key KEY`")]
    Unsigned,
    /// A `signature` section exists but is not the first section, as the format requires.
    #[error("the signature section must be the first section of the bundle")]
    MisplacedSignature,
    /// The signature section uses a version, hash function or algorithm we do not support.
    #[error("unsupported signature format: {0}")]
    UnsupportedSignature(String),
    /// No signed hash matches the bundle's content: it was modified after signing.
    #[error("bundle content does not match any signed hash (content sha256 {found}); it was modified after signing")]
    ContentMismatch {
        /// SHA-256 of the bundle content, hex.
        found: String,
    },
    /// A signature names a trusted key but does not verify with it.
    #[error("signature by key {key_id} is invalid; the signature was altered or made over other content")]
    BadSignature {
        /// The trusted key's id.
        key_id: String,
    },
    /// Signatures exist, but none is by a trusted key.
    #[error("no signature by a trusted key (signed by: {signers:?}); pass the publisher's public key with --trust")]
    UntrustedSigner {
        /// Key ids found on the bundle.
        signers: Vec<String>,
    },
    /// Fewer distinct trusted keys signed than the policy requires.
    #[error("trust policy needs {required} signatures from distinct trusted keys, found {valid}")]
    ThresholdNotMet {
        /// Valid signatures from distinct trusted keys.
        valid: usize,
        /// The policy's threshold.
        required: usize,
    },
    /// A trust policy that can never or always be satisfied.
    #[error("invalid trust policy: {0}")]
    InvalidPolicy(String),
    /// A required custom section is missing.
    #[error("the bundle has no `{0}` section; was it made with `edgeml pack`?")]
    MissingSection(&'static str),
    /// A custom section appears twice.
    #[error("the bundle has more than one `{0}` section")]
    DuplicateSection(String),
    /// The manifest is not valid.
    #[error("invalid manifest: {0}")]
    Manifest(String),
    /// A digest in the manifest does not match the bytes it describes.
    #[error("{what} digest mismatch: manifest says {expected}, content is {found}")]
    DigestMismatch {
        /// Which part ("model", "component").
        what: &'static str,
        /// Digest in the manifest, hex.
        expected: String,
        /// Digest of the bytes, hex.
        found: String,
    },
    /// The bundle needs a newer host.
    #[error("the bundle needs host version {required} or newer; this host is {host}")]
    HostTooOld {
        /// `min_host_version` from the manifest.
        required: String,
        /// This host's version.
        host: String,
    },
    /// A size or count limit was exceeded.
    #[error("{what} is {found}, over the limit of {limit}")]
    LimitExceeded {
        /// What was measured.
        what: &'static str,
        /// The limit.
        limit: u64,
        /// The value found.
        found: u64,
    },
    /// A key file is not a valid key.
    #[error("invalid key{}: {reason}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    InvalidKey {
        /// The key file, when read from disk.
        path: Option<PathBuf>,
        /// What was wrong.
        reason: String,
    },
    /// The operating system's random number generator failed.
    #[error("random number generator: {0}")]
    Random(String),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |error| Error::Io { path, error }
}
