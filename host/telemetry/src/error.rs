use std::path::PathBuf;

/// Errors from starting or configuring telemetry. Shipping problems are not
/// errors: records wait in the spool and [`crate::Telemetry::stats`] says why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid telemetry configuration: {0}")]
    Config(String),
    /// Another process holds the telemetry directory.
    #[error(
        "{0}: another process is using this telemetry directory; give each process its own `dir`"
    )]
    Locked(PathBuf),
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

pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, Error>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, Error> {
        self.map_err(|error| Error::Io {
            path: path.into(),
            error,
        })
    }
}
