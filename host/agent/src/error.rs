use std::path::PathBuf;

/// Why the agent could not start, or why an update was refused. In every
/// update case the agent keeps serving the model it had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid agent configuration: {0}")]
    Config(String),
    /// OpenTelemetry export could not start or flush (`[otlp]`).
    #[error("OTLP export: {0}")]
    Export(String),
    /// A file in the state directory could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, not [`std::error::Error::source`], so
        /// that a printed error chain names it once).
        error: std::io::Error,
    },
    /// The state directory holds something the agent did not write.
    #[error("state file {}: {reason}; remove it to start over", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The state file was damaged; the agent set it aside and rebuilt its
    /// state from the verified bundles on disk (the server fills in the rest).
    #[error("state file was damaged ({reason}); kept it as {} and rebuilt the state from the bundles on disk: serving {}", kept.display(), current.as_deref().unwrap_or("nothing yet"))]
    StateDiscarded {
        /// What was wrong with it.
        reason: String,
        /// Where the damaged file was kept.
        kept: PathBuf,
        /// The version the rebuilt state serves.
        current: Option<String>,
    },
    /// The fleet server could not be reached or refused, or a download
    /// failed its caps (too large, endless data, slow retrieval).
    #[error(transparent)]
    Server(edgeml_client::Error),
    /// Metadata or bundle checks failed (rollback, expiry, mix-and-match,
    /// wrong or revoked key, threshold, root rotation, truncated or corrupt bundle).
    #[error(transparent)]
    Metadata(#[from] edgeml_fleet::Error),
    /// The bundle failed verification, loading or its self-test.
    #[error("{version}: {source}")]
    Model {
        /// The version that failed.
        version: String,
        /// The cause.
        #[source]
        source: edgeml_runtime::Error,
    },
    /// This agent has no compiler and the release offers no precompiled
    /// artifact for it.
    #[error("{version}: the release has no precompiled artifact for target `{target}` and engine `{engine}`, and this agent has no compiler; make one with `edgeml precompile --target {target}` and publish it with `edgeml push --artifact`")]
    NoArtifact {
        /// The version offered.
        version: String,
        /// This device's target.
        target: String,
        /// This device's engine fingerprint.
        engine: String,
    },
    /// The new version failed more requests than allowed while it was watched.
    #[error("{version} failed {errors} of {requests} requests while watched ({rate:.0}% > {limit:.0}%)", rate = *errors as f64 * 100.0 / (*requests).max(1) as f64, limit = limit * 100.0)]
    Unhealthy {
        /// The version.
        version: String,
        /// Requests while watched.
        requests: u64,
        /// Failed requests.
        errors: u64,
        /// `health.max_error_rate`.
        limit: f64,
    },
    /// The server halted the rollout; the device went back to its last known good.
    #[error("rollout halted by the fleet server: {0}")]
    Halted(String),
    /// An update was interrupted (crash or power loss); the device restarted
    /// into its last known good bundle and will not retry that bundle.
    #[error("the update to {version} was interrupted (crash or power loss); restarted into the last known good bundle")]
    Interrupted {
        /// The version being installed.
        version: String,
    },
    /// The local inference server could not start.
    #[error("cannot serve on {addr}: {reason}")]
    Serve {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// A stable name for the kind of error, for reports and the fleet view.
    pub fn kind(&self) -> &'static str {
        use edgeml_fleet::Error as F;
        match self {
            Error::Metadata(F::Rollback { .. }) => "rollback",
            Error::Metadata(F::Expired {
                role: "release", ..
            }) => "release_expired",
            Error::Metadata(F::Expired {
                role: "timestamp", ..
            }) => "timestamp_expired",
            Error::Metadata(F::TimestampMismatch { .. } | F::MissingTimestamp { .. }) => {
                "timestamp"
            }
            Error::Metadata(F::Expired { .. }) => "expired",
            Error::Metadata(F::RootChainTooLong { .. }) => "root_chain_too_long",
            Error::Metadata(F::VersionOutOfRange { .. }) => "version_out_of_range",
            Error::Metadata(F::DigestMismatch { .. } | F::ManifestMismatch { .. }) => {
                "mix_and_match"
            }
            Error::Metadata(F::WrongKey { .. }) => "wrong_key",
            Error::Metadata(F::ThresholdNotMet { .. }) => "threshold",
            Error::Metadata(F::RevokedKey { .. }) => "revoked_key",
            Error::Metadata(F::RootRotationUnsigned { .. }) => "root_rotation",
            Error::Metadata(F::Truncated { .. }) => "truncated",
            Error::Metadata(_) => "metadata",
            Error::Model {
                source: edgeml_runtime::Error::SelfTest { .. },
                ..
            } => "self_test",
            Error::Model {
                source: edgeml_runtime::Error::Artifact(_),
                ..
            } => "artifact",
            Error::Model { .. } => "load",
            Error::NoArtifact { .. } => "no_artifact",
            Error::Unhealthy { .. } => "error_rate",
            Error::Halted(_) => "halted",
            Error::Interrupted { .. } => "interrupted",
            Error::StateDiscarded { .. } => "state_discarded",
            Error::Server(e) => e.kind(),
            Error::Config(_)
            | Error::Export(_)
            | Error::Io { .. }
            | Error::State { .. }
            | Error::Serve { .. } => "agent",
        }
    }
}

impl From<edgeml_client::Error> for Error {
    fn from(e: edgeml_client::Error) -> Error {
        match e {
            // A bundle that does not match its release is a metadata
            // failure, whoever noticed it.
            edgeml_client::Error::Bundle(m) => Error::Metadata(m),
            other => Error::Server(other),
        }
    }
}

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |error| Error::Io {
        path: path.to_path_buf(),
        error,
    }
}
