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
    /// The database refused the data of a write (a value it cannot hold, a constraint). Only
    /// that write is at fault: a batch that meets this is split until the write fails alone.
    #[error("store refused the data: {0}")]
    Refused(Arc<str>),
    /// The configuration names a store we cannot open (bad URL, unsupported scheme).
    #[error("store configuration: {0}")]
    Config(Arc<str>),
    /// The write would keep more retained messages than a quota allows; nothing was written.
    #[error("retained message quota reached: {0}")]
    QuotaExceeded(super::QuotaExceeded),
    /// The write's condition (see [`super::Condition`]) did not hold; nothing was written.
    #[error("the retained message is not the one the write expected")]
    ConditionFailed,
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
        let text = || -> Arc<str> { describe(&err).into() };
        match &err {
            E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
                Self::Unavailable(text())
            }
            E::Protocol(_) => Self::Unavailable(text()),
            E::Database(db) => classify(db.as_ref()).error(text()),
            _ => Self::Internal(text()),
        }
    }
}

/// What went wrong, for logs and operators. sqlx prints a Postgres error with the line of
/// Postgres' own source file that raised it ("at line 948"), which reads like a line of ours;
/// the message and its SQLSTATE say more.
fn describe(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => match db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        {
            Some(pg) => match pg.detail() {
                Some(detail) => format!("{} ({detail}; SQLSTATE {})", pg.message(), pg.code()),
                None => format!("{} (SQLSTATE {})", pg.message(), pg.code()),
            },
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    }
}

enum Class {
    /// The server cannot serve you right now; retrying later may work.
    Transient,
    /// The data of the statement is at fault, not the statement or the server.
    BadData,
    Other,
}

impl Class {
    fn error(self, text: Arc<str>) -> Error {
        match self {
            Self::Transient => Error::Unavailable(text),
            Self::BadData => Error::Refused(text),
            Self::Other => Error::Internal(text),
        }
    }
}

fn classify(db: &dyn sqlx::error::DatabaseError) -> Class {
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        postgres_class(pg.code())
    } else if let Some(code) = db.code().and_then(|c| c.parse::<i32>().ok()) {
        sqlite_class(code)
    } else {
        Class::Other
    }
}

/// By SQLSTATE class: connection exceptions (08), insufficient resources (53, a full disk
/// included), operator intervention such as shutdown (57) and transaction rollbacks (40: a
/// deadlock or serialization failure, which the next try need not meet) are transient, and so
/// is a server that takes no writes (25006, read_only_sql_transaction: a primary demoted in a
/// failover, still reached by a connection opened before it or through a stale address; the
/// write connection that met it is not reused, so the next write connects afresh); data
/// exceptions (22, e.g. a character the encoding cannot hold), integrity constraint violations
/// (23) and program limits (54, e.g. an index row too large) are the data's fault.
fn postgres_class(sqlstate: &str) -> Class {
    if sqlstate == "25006" {
        return Class::Transient;
    }
    match sqlstate.get(..2) {
        Some("08" | "40" | "53" | "57") => Class::Transient,
        Some("22" | "23" | "54") => Class::BadData,
        _ => Class::Other,
    }
}

/// By SQLite primary result code (the low byte of an extended code): BUSY (5), LOCKED (6) and
/// FULL (13) are transient; TOOBIG (18), CONSTRAINT (19), MISMATCH (20) and RANGE (25) are the
/// data's fault. FULL is the disk (or the file system's quota) full: the write is rolled back
/// and the next one succeeds once space is freed, as Postgres' disk_full (53100) is transient
/// in class 53 above, so both stores answer it alike and the broker retries what no client can
/// (a retained Will).
fn sqlite_class(extended_code: i32) -> Class {
    match extended_code & 0xff {
        5 | 6 | 13 => Class::Transient,
        18..=20 | 25 => Class::BadData,
        _ => Class::Other,
    }
}

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        let text: Arc<str> = err.to_string().into();
        match &err {
            rusqlite::Error::SqliteFailure(e, _) => sqlite_class(e.extended_code).error(text),
            _ => Self::Internal(text),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        Self::Internal(format!("migration failed: {err}").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: i32) -> Error {
        let failure = rusqlite::ffi::Error::new(code);
        rusqlite::Error::SqliteFailure(failure, Some("message".into())).into()
    }

    #[test]
    fn a_full_disk_is_transient_on_both_stores() {
        assert!(matches!(sqlite(13), Error::Unavailable(_)));
        assert!(matches!(postgres_class("53100"), Class::Transient));
    }

    #[test]
    fn postgres_states_that_waiting_can_fix_are_transient() {
        for state in ["08006", "25006", "40001", "40P01", "53300", "57P01"] {
            assert!(matches!(postgres_class(state), Class::Transient), "{state}");
        }
        for state in ["22021", "23505", "54000"] {
            assert!(matches!(postgres_class(state), Class::BadData), "{state}");
        }
        // Another state of class 25 (a transaction in the wrong state) is retaind's mistake.
        for state in ["25001", "42P01"] {
            assert!(matches!(postgres_class(state), Class::Other), "{state}");
        }
    }

    #[test]
    fn sqlite_codes_are_classed_by_their_primary_code() {
        // SQLITE_BUSY_SNAPSHOT (517) is BUSY; SQLITE_CONSTRAINT_UNIQUE (2067) is CONSTRAINT.
        assert!(matches!(sqlite(517), Error::Unavailable(_)));
        assert!(matches!(sqlite(2067), Error::Refused(_)));
        // SQLITE_IOERR (10), SQLITE_CORRUPT (11), SQLITE_READONLY (8): nothing to wait for.
        for code in [8, 10, 11] {
            assert!(matches!(sqlite(code), Error::Internal(_)), "{code}");
        }
    }
}
