use std::path::PathBuf;
use std::time::Duration;

/// What went wrong talking to the fleet or telemetry server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client could not be set up (a bad URL, no TLS backend).
    #[error("HTTP client: {0}")]
    Config(String),
    /// The server could not be reached, or the connection broke.
    #[error("{url}: fleet server unreachable: {reason}")]
    Unreachable {
        /// The request URL.
        url: String,
        /// What the connection reported.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{url}: refused ({status}): {message}")]
    Refused {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's error message.
        message: String,
    },
    /// The server answered something this client cannot read.
    #[error("{url}: unexpected answer: {reason}")]
    BadResponse {
        /// The request URL.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The release pins a bundle larger than the device accepts.
    #[error("the release pins a {size}-byte bundle; this device accepts at most {limit} (download.max_bytes)")]
    TooLarge {
        /// Pinned size.
        size: u64,
        /// The device's limit.
        limit: u64,
    },
    /// The server sent more bytes than the release pins.
    #[error("the server sent more than the {expected} bytes the release pins; download abandoned")]
    EndlessData {
        /// Pinned size.
        expected: u64,
    },
    /// The download did not finish in time; the part file is kept.
    #[error("the download took longer than {limit:?} (download.timeout); got {got} of {expected} bytes, will resume")]
    SlowRetrieval {
        /// The time cap.
        limit: Duration,
        /// Bytes so far.
        got: u64,
        /// Pinned size.
        expected: u64,
    },
    /// The downloaded bundle does not match the release (length or digest).
    #[error(transparent)]
    Bundle(#[from] edgeml_fleet::Error),
    /// A local file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, not [`std::error::Error::source`], so
        /// that a printed error chain names it once).
        error: std::io::Error,
    },
}

impl Error {
    /// A stable name for the error's kind, as devices report it.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::TooLarge { .. } | Error::EndlessData { .. } => "endless_data",
            Error::SlowRetrieval { .. } => "slow_retrieval",
            Error::Bundle(_) => "bundle",
            Error::Io { .. } => "io",
            _ => "server",
        }
    }

    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}
