//! Range scans of the SQLite store, a page at a time on a blocking thread.
//!
//! sqlx runs each SQLite connection on a worker thread of its own and hands every row to the
//! async caller through a channel, waking it once per row: a retained delivery of a million rows
//! spent about a quarter of its time switching threads. A scan here reads its whole page on a
//! blocking thread, on read-only connections of its own (rusqlite, over the same SQLite library
//! sqlx links), and hands the page over once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Row, ToSql};
use tokio::sync::Semaphore;

use super::Error;
use super::row::{MessageRow, PublishColumns, PublishRow, ScanStart};

/// Page cache of a scan connection, in KiB (SQLite's default is 2,000 KiB).
const SCAN_CACHE_KIB: i64 = 256;

/// A bounded set of read-only connections to one SQLite file, opened as scans need them.
#[derive(Clone)]
pub(super) struct ScanReaders {
    inner: Arc<Readers>,
}

struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// One per connection: a scan waits for one before it takes a blocking thread, so scans
    /// never hold more threads or connections than this.
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl ScanReaders {
    /// Up to `max_connections` connections to the database at `path`; a scan waits at most
    /// `timeout` for one, and a connection waits as long for a lock SQLite holds.
    pub(super) fn new(path: PathBuf, max_connections: u32, timeout: Duration) -> Self {
        let max = usize::try_from(max_connections.max(1)).unwrap_or(usize::MAX);
        Self {
            inner: Arc::new(Readers {
                path,
                idle: Mutex::new(Vec::with_capacity(max)),
                permits: Arc::new(Semaphore::new(max)),
                timeout,
            }),
        }
    }

    /// Up to `limit` rows of `statement` (binding `?1` the start, `?2` now, `?3` the limit and
    /// `?4` the end when there is one), each read by position as the row type `R` reads it.
    pub(super) async fn scan<R: Columns>(
        &self,
        statement: &'static str,
        start: ScanStart<'_>,
        until: Option<&str>,
        limit: u32,
        now_ms: i64,
    ) -> Result<Vec<R>, Error> {
        let permit = tokio::time::timeout(
            self.inner.timeout,
            self.inner.permits.clone().acquire_owned(),
        )
        .await
        .map_err(|_| {
            Error::Unavailable("no SQLite connection for a scan came free in time".into())
        })?
        .map_err(|_| Error::Closed)?;
        let readers = self.inner.clone();
        let start = start.bound().to_owned();
        let until = until.map(str::to_owned);
        // The permit goes with the read: a caller that gives up (its deadline passed, its
        // client left) does not free the connection before the read is done with it.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = readers.take()?;
            let page = read_page(&conn, statement, &start, until.as_deref(), limit, now_ms);
            readers.give_back(conn);
            page
        })
        .await
        .map_err(|e| Error::Internal(format!("a SQLite scan failed: {e}").into()))?
    }
}

impl Readers {
    fn take(&self) -> Result<Connection, Error> {
        if let Some(conn) = self.idle_connections().pop() {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(self.timeout)?;
        // A scan reads each page of the table once, in order: a page cache of its own would
        // only hold what it has passed (the OS caches the file), so it is kept small, as the
        // memory of a hundred subscribers reading at once is.
        conn.pragma_update(None, "cache_size", -SCAN_CACHE_KIB)?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        self.idle_connections().push(conn);
    }

    fn idle_connections(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        // The list is only pushed to and popped from, so a panic elsewhere cannot leave it
        // half-changed: a poisoned lock is still a good list.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn read_page<R: Columns>(
    conn: &Connection,
    statement: &str,
    start: &str,
    until: Option<&str>,
    limit: u32,
    now_ms: i64,
) -> Result<Vec<R>, Error> {
    let mut statement = conn.prepare_cached(statement)?;
    let limit = i64::from(limit);
    let mut params: Vec<&dyn ToSql> = vec![&start, &now_ms, &limit];
    if let Some(until) = &until {
        params.push(until);
    }
    let mut rows = statement.query(params.as_slice())?;
    let mut page = Vec::with_capacity(usize::try_from(limit).unwrap_or(0));
    while let Some(row) = rows.next()? {
        page.push(R::read(row)?);
    }
    Ok(page)
}

/// A row type a scan reads by position from rusqlite's row. A payload or correlation data
/// stored as text is read as its bytes, as sqlx reads it.
pub(super) trait Columns: Send + 'static {
    fn read(row: &Row<'_>) -> rusqlite::Result<Self>
    where
        Self: Sized;
}

/// The columns of `publish_columns!`.
impl Columns for PublishRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        publish_columns(row).map(PublishRow::from)
    }
}

/// The columns of `message_columns!`: a publish row's, then the rest.
impl Columns for MessageRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        let rest = (
            row.get(9)?,
            row.get(10)?,
            row.get(11)?,
            row.get(12)?,
            row.get(13)?,
        );
        Ok(MessageRow::from_parts(publish_columns(row)?, rest))
    }
}

fn publish_columns(row: &Row<'_>) -> rusqlite::Result<PublishColumns> {
    Ok((
        row.get(0)?,
        row.get_ref(1)?.as_bytes()?.to_vec(),
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get_ref(6)?.as_bytes_or_null()?.map(<[u8]>::to_vec),
        row.get(7)?,
        row.get(8)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_scan_waits_for_a_connection_no_longer_than_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let readers = ScanReaders::new(dir.path().join("absent.db"), 1, Duration::from_millis(50));
        let held = readers.inner.permits.clone().acquire_owned().await.unwrap();
        let scan = || readers.scan::<PublishRow>("SELECT 1", ScanStart::At(""), None, 1, 0);
        let err = scan().await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        drop(held);
        // Free again, the scan gets a connection and fails on its own terms: no such file.
        let err = scan().await.unwrap_err();
        assert!(matches!(err, Error::Internal(_)), "{err:?}");
    }
}
