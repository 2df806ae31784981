use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use super::{Error, RetainedStore};

/// Opens the backend a `DATABASE_URL` names and brings its schema up to date.
///
/// `sqlite://PATH` creates the file (and its directory) if missing; `postgres://` and
/// `postgresql://` connect to an existing database.
pub async fn open_backend(
    url: &str,
    max_connections: u32,
    timeout: Duration,
) -> Result<Arc<dyn RetainedStore>, Error> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| Error::config(format!("invalid Postgres URL: {e}")))?
            .application_name("retaind");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(timeout)
            .connect_with(options)
            .await?;
        Ok(Arc::new(PostgresStore::migrate(pool).await?))
    } else if url.starts_with("sqlite:") {
        if url.contains(":memory:") || url.contains("mode=memory") {
            // Acknowledged must mean durable; an in-memory database forgets everything on exit.
            return Err(Error::config(
                "in-memory SQLite is not supported: give a file path, e.g. sqlite://data/retaind.db",
            ));
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::config(format!("invalid SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(timeout);
        if let Some(dir) = options
            .get_filename()
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::config(format!(
                    "cannot create the directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timeout)
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(timeout)
            .connect_with(options)
            .await?;
        Ok(Arc::new(SqliteStore::migrate(writer, reader).await?))
    } else {
        Err(Error::config(
            "DATABASE_URL must start with sqlite:// or postgres:// (or postgresql://)",
        ))
    }
}
