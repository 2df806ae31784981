use std::sync::Arc;

/// Store failures, split by what a caller can do about them.
///
/// Cloneable because one failed group commit answers every request in the batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The database cannot be reached or did not answer in time; retrying later may work.
    #[error("store unavailable: {0}")]
    Unavailable(Arc<str>),
    /// The database answered with an error that retrying will not fix.
    #[error("store failure: {0}")]
    Internal(Arc<str>),
    /// The configuration names a store we cannot open (bad URL, unsupported scheme).
    #[error("store configuration: {0}")]
    Config(Arc<str>),
    /// The write would keep more retained messages than a quota allows; nothing was written.
    #[error("retained message quota reached: {0}")]
    QuotaExceeded(super::QuotaExceeded),
    /// The handle's background workers have stopped (the service is shutting down).
    #[error("store is shutting down")]
    Closed,
}

impl Error {
    pub(crate) fn config(msg: impl Into<String>) -> Self {
        Self::Config(msg.into().into())
    }

    pub(crate) fn timed_out() -> Self {
        Self::Unavailable("the database did not answer in time".into())
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        use sqlx::Error as E;
        let unavailable = match &err {
            E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => true,
            E::Protocol(_) => true,
            E::Database(db) => db.code().is_some_and(|code| is_transient_sqlstate(&code)),
            _ => false,
        };
        let text: Arc<str> = err.to_string().into();
        if unavailable {
            Self::Unavailable(text)
        } else {
            Self::Internal(text)
        }
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        Self::Internal(format!("migration failed: {err}").into())
    }
}

/// Postgres classes that mean "the server cannot serve you right now" rather than "your
/// statement is wrong": connection exceptions (08), insufficient resources (53), operator
/// intervention such as shutdown (57), and SQLite's busy/locked codes (5, 6).
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57")
        || code == "5"
        || code == "6"
}
