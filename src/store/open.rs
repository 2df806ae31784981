use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};

use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use super::sqlite_scan::ScanReaders;
use super::sqlite_writer::SqliteWriter;
use super::{Error, RetainedStore};

/// The connection options of a `postgres://` URL, as every connection retaind opens uses them.
///
/// Nothing but the user, database and application name goes in the startup packet, so that a
/// connection pooler in front of Postgres takes them unconfigured: PgBouncer refuses a startup
/// parameter it does not know (sqlx's `extra_float_digits`, the `options` string) unless told
/// to ignore it, and ignoring `options` would drop what it sets. Settings are `SET` on each
/// connection instead. `extra_float_digits` only shapes floats sent as text, and from Postgres
/// 12 on (retaind needs 14) the default already writes them exactly.
///
/// TLS is used when the URL's `sslmode` (or `PGSSLMODE`) asks for it: `require`, `verify-ca`,
/// `verify-full`, or `prefer`. Without either, the connection is plain, as it always was
/// (builds before 2026-12-06 had no TLS for Postgres at all), rather than libpq's `prefer`:
/// that would start encrypting every existing same-host deployment at a cost its operators
/// did not choose, while protecting nothing against an active attacker, who can refuse it.
pub fn postgres_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    options_for(url, std::env::var_os("PGSSLMODE").is_some())
}

/// [`postgres_options`], told whether `PGSSLMODE` is set.
fn options_for(url: &str, env_ssl_mode: bool) -> Result<PgConnectOptions, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?
        .application_name("retaind")
        .extra_float_digits(None);
    if env_ssl_mode || names_ssl_mode(url) {
        Ok(options)
    } else {
        Ok(options.ssl_mode(PgSslMode::Disable))
    }
}

/// Whether a `postgres://` URL sets `sslmode` (or sqlx's spelling, `ssl-mode`).
fn names_ssl_mode(url: &str) -> bool {
    query_pairs(url).any(|(key, _)| matches!(key, "sslmode" | "ssl-mode"))
}

/// The `key=value` pairs of a URL's query string, undecoded.
fn query_pairs(url: &str) -> impl Iterator<Item = (&str, &str)> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// The certificate and key files a `postgres://` URL names must be readable: sqlx reads them
/// at each connection and, when one is missing, says only "No such file or directory", which
/// names no file, and as a database it cannot reach, so the start would wait out
/// `--db-startup-wait` for a mistake in the URL.
fn check_tls_files(url: &str) -> Result<(), Error> {
    for (key, value) in query_pairs(url) {
        if !matches!(
            key,
            "sslrootcert"
                | "ssl-root-cert"
                | "ssl-ca"
                | "sslcert"
                | "ssl-cert"
                | "sslkey"
                | "ssl-key"
        ) {
            continue;
        }
        let path = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
        // sqlx takes a PEM text itself in place of a path.
        if path.trim().starts_with("-----BEGIN") {
            continue;
        }
        if let Err(e) = std::fs::File::open(&*path) {
            return Err(Error::config(format!("{key} {path}: {e}")));
        }
    }
    Ok(())
}

/// Opens the backend a `DATABASE_URL` names and brings its schema up to date.
///
/// `sqlite://PATH` creates the file (and its directory) if missing; `postgres://` and
/// `postgresql://` connect to an existing database, trying for up to `startup_wait` while it
/// cannot be reached (it may be starting too) before failing with the last cause.
pub async fn open_backend(
    url: &str,
    max_connections: u32,
    timeout: Duration,
    startup_wait: Duration,
) -> Result<Arc<dyn RetainedStore>, Error> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let options = postgres_options(url)
            .map_err(|e| Error::config(format!("invalid Postgres URL: {e}")))?;
        check_tls_files(url)?;
        first_connection(&options, timeout, startup_wait).await?;
        Ok(Arc::new(
            PostgresStore::open(options, max_connections, timeout).await?,
        ))
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
        let lock = lock_sqlite_file(options.get_filename(), timeout).await?;
        // A pool of one, for the migrations alone: sqlx runs them on a pool.
        let migrator = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timeout)
            .connect_with(options.clone())
            .await?;
        let path = options.get_filename().to_owned();
        let writer = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || SqliteWriter::open(&path, timeout, lock))
                .await
                .map_err(|e| {
                    Error::Internal(format!("cannot open the SQLite writer: {e}").into())
                })??
        };
        let scans = [(); 2].map(|()| ScanReaders::new(path.clone(), max_connections, timeout));
        let reader = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(timeout)
            .connect_with(options)
            .await?;
        Ok(Arc::new(
            SqliteStore::migrate(migrator, writer, reader, scans).await?,
        ))
    } else {
        Err(Error::config(
            "DATABASE_URL must start with sqlite:// or postgres:// (or postgresql://)",
        ))
    }
}

/// Waits until Postgres accepts a connection, for up to `wait`, saying each time why not. The
/// pool would only report that it timed out; a connection of our own gives the cause
/// (refused, unknown host, bad password, no such database), which is what an operator needs.
async fn first_connection(
    options: &PgConnectOptions,
    timeout: Duration,
    wait: Duration,
) -> Result<(), Error> {
    let give_up = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(250);
    loop {
        let attempt = match tokio::time::timeout(timeout, options.connect()).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                return Ok(());
            }
            Ok(Err(e)) => Error::from(e),
            Err(_) => Error::Unavailable(
                format!("no answer within {}", humantime::format_duration(timeout)).into(),
            ),
        };
        let left = give_up.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(attempt);
        }
        let pause_now = pause.min(left);
        tracing::warn!(error = %attempt, retry_in = ?pause_now, "cannot connect to the database yet");
        tokio::time::sleep(pause_now).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// A SQLite store belongs to one process: its cache is kept coherent by seeing every write,
/// which a second process writing to the same file would defeat. The lock is held for as long
/// as the store is open and released by the OS if the process dies. Waiting up to `patience`
/// lets a restart overlap the previous instance's exit.
async fn lock_sqlite_file(
    db: &std::path::Path,
    patience: Duration,
) -> Result<std::fs::File, Error> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = std::path::PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::config(format!("cannot open {}: {e}", path.display())))?;
    let give_up = tokio::time::Instant::now() + patience;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(lock_error(db, &path, e)),
        }
    }
}

fn lock_error(db: &std::path::Path, path: &std::path::Path, e: std::fs::TryLockError) -> Error {
    match e {
        std::fs::TryLockError::WouldBlock => Error::config(format!(
            "{} is in use by another retaind process; a SQLite store serves one process \
             (run several nodes on Postgres)",
            db.display()
        )),
        std::fs::TryLockError::Error(e) => {
            Error::config(format!("cannot lock {}: {e}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str) -> PgSslMode {
        options_for(url, false).unwrap().get_ssl_mode()
    }

    #[test]
    fn tls_is_used_when_the_url_or_pgsslmode_asks_for_it_and_not_otherwise() {
        // With PGSSLMODE set, sqlx reads it itself: what it made of it is left alone.
        let url = "postgres://u@h/db";
        let sqlx_alone = PgConnectOptions::from_str(url).unwrap().get_ssl_mode();
        let kept = options_for(url, true).unwrap().get_ssl_mode();
        assert_eq!(format!("{kept:?}"), format!("{sqlx_alone:?}"));
        assert!(matches!(mode("postgres://u@h/db"), PgSslMode::Disable));
        assert!(matches!(
            mode("postgres://u@h/db?application_name=x"),
            PgSslMode::Disable
        ));
        assert!(matches!(
            mode("postgres://u@h/db?sslmode=require"),
            PgSslMode::Require
        ));
        assert!(matches!(
            mode("postgres://u@h/db?x=1&sslmode=verify-full"),
            PgSslMode::VerifyFull
        ));
        assert!(matches!(
            mode("postgres://u@h/db?ssl-mode=prefer"),
            PgSslMode::Prefer
        ));
    }

    #[test]
    fn certificate_files_must_be_readable_but_pem_text_is_no_file() {
        let missing = "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fno%2Fsuch.pem";
        let err = check_tls_files(missing).unwrap_err().to_string();
        assert!(err.contains("sslrootcert /no/such.pem"), "{err}");
        let pem = "postgres://u@h/db?sslmode=verify-full&sslrootcert=\
                   -----BEGIN%20CERTIFICATE-----%0AMII%0A-----END%20CERTIFICATE-----";
        check_tls_files(pem).unwrap();
        check_tls_files("postgres://u@h/db?sslmode=require").unwrap();
    }
}
