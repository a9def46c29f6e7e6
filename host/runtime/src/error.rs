use std::path::PathBuf;
use std::time::Duration;

/// Errors from the host runtime. Every variant says what went wrong; the
/// runtime stays usable after any of them and the next call works.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bundle failed verification (signatures, policy, digests, structure).
    #[error(transparent)]
    Bundle(#[from] edgeml_bundle::Error),
    /// The engine could not be configured.
    #[error("invalid runtime configuration: {0}")]
    Config(String),
    /// The component did not compile (it is not valid WebAssembly for this host).
    #[error("the component does not compile: {reason}")]
    Compile {
        /// Compiler message.
        reason: String,
    },
    /// The component could not be instantiated (e.g. it imports something the host does not provide).
    #[error("the component cannot be instantiated: {reason}")]
    Instantiate {
        /// Why.
        reason: String,
    },
    /// The component and the manifest disagree, or the component is not an edgeml model.
    #[error("the component does not fit its manifest: {reason}")]
    Incompatible {
        /// Why.
        reason: String,
    },
    /// The inference backend refuses the bundle's ONNX model.
    #[error("the {backend} backend cannot load the model: {reason}")]
    Model {
        /// The backend that refused it (`tract`, `onnxruntime`, `sandboxed`).
        backend: &'static str,
        /// Backend message.
        reason: String,
    },
    /// The configured inference backend cannot run here (the onnxruntime
    /// library is missing or too old, or this build does not include it).
    #[error("the {backend} backend is not available: {reason}")]
    BackendUnavailable {
        /// The backend asked for.
        backend: &'static str,
        /// Why, and what to do about it.
        reason: String,
    },
    /// A self-test vector carried in the manifest did not give the expected answer.
    #[error("self-test `{name}` failed: {reason}")]
    SelfTest {
        /// The vector's name.
        name: String,
        /// What differed.
        reason: String,
    },
    /// An input is missing, unknown, or has the wrong dtype, shape or size.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The component does not accept this media type.
    #[error("unsupported media: {0}")]
    UnsupportedMedia(String),
    /// The media bytes could not be decoded.
    #[error("cannot decode input: {0}")]
    Decode(String),
    /// The inference backend failed.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The component rejected the bundle's configuration (preprocessing parameters).
    #[error("the component rejects its configuration: {0}")]
    GuestConfig(String),
    /// The guest ran past the wall-clock limit and was interrupted.
    #[error("the guest ran for longer than the {limit:?} limit and was stopped")]
    Timeout {
        /// The configured limit.
        limit: Duration,
    },
    /// The guest tried to grow a memory or table past its limit.
    #[error("the guest exceeded its {what} limit of {limit}")]
    ResourceLimit {
        /// `memory` or `table`.
        what: &'static str,
        /// The limit (bytes for memory, elements for tables).
        limit: u64,
    },
    /// The guest trapped (a panic, an out-of-bounds access, `unreachable`).
    #[error("the guest trapped: {message}{}", if guest_stderr.is_empty() { String::new() } else { format!("\nguest stderr:\n{guest_stderr}") })]
    Trap {
        /// The trap.
        message: String,
        /// The last lines the guest wrote to stderr (it may say why it panicked).
        guest_stderr: String,
    },
    /// A precompiled artifact was refused (unsigned, untrusted, or made
    /// for another bundle, target or engine).
    #[error(transparent)]
    Artifact(#[from] edgeml_bundle::artifact::ArtifactError),
    /// Telemetry could not start recording the model.
    #[error("telemetry: {0}")]
    Telemetry(#[from] edgeml_telemetry::Error),
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, not [`std::error::Error::source`], so
        /// that a printed error chain names it once).
        error: std::io::Error,
    },
}

impl Error {
    /// Whether the request, not the model or the runtime, was at fault
    /// (invalid input, unsupported or undecodable media): such errors are
    /// the client's, and health checks do not count them.
    pub fn is_client_error(&self) -> bool {
        self.kind().is_client_error()
    }

    /// The kind of error, as telemetry reports it (`invalid_input`,
    /// `decode`, `timeout`, `trap`, ...).
    pub fn kind(&self) -> edgeml_telemetry::ErrorKind {
        use edgeml_telemetry::ErrorKind as K;
        match self {
            Error::InvalidInput(_) => K::InvalidInput,
            Error::UnsupportedMedia(_) => K::UnsupportedMedia,
            Error::Decode(_) => K::Decode,
            Error::Inference(_) => K::Inference,
            Error::GuestConfig(_) => K::GuestConfig,
            Error::Timeout { .. } => K::Timeout,
            Error::ResourceLimit { .. } => K::ResourceLimit,
            Error::Trap { .. } => K::Trap,
            _ => K::Other,
        }
    }
}
