use std::path::Path;

use crate::store;

/// Why a `retaind retained ...` command failed. Each names what the operator has to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Flags that do not go together, or a refusal to go on without confirmation.
    #[error("{0}")]
    Usage(String),
    #[error("the store: {0}")]
    Store(#[from] store::Error),
    /// The service could not be reached, or its answer could not be read.
    #[error("{what}: {cause}")]
    Transport { what: String, cause: String },
    /// The service answered with an error.
    #[error("{operation} answered HTTP {status} {kind}: {message}")]
    Api {
        operation: String,
        status: u16,
        kind: String,
        message: String,
    },
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    /// Lines (or fetched messages) that cannot be imported, each reported before this.
    #[error("{count} bad line(s); nothing was written (fix them, or pass --skip-bad-lines)")]
    BadLines { count: usize },
    #[error("AWS credentials: {0}")]
    Credentials(String),
    #[error("resume file {path}: {cause}")]
    Resume { path: String, cause: String },
}

impl Error {
    pub(super) fn io(path: &Path, cause: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            cause,
        }
    }
}
