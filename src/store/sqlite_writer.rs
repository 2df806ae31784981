//! The SQLite store's one write connection, on a thread of its own.
//!
//! SQLite takes one writer at a time, so one connection does every write. sqlx ran it on a
//! worker thread and crossed over twice per statement (BEGIN, the ticket, each row, COMMIT):
//! while retained deliveries kept both cores busy, every crossing waited to be scheduled, and a
//! publish took several times as long as when idle (issue 18). Here a whole transaction is one
//! job: the caller hands it over once and is woken once, with the answer.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::Error;

/// Jobs waiting for the writer. Callers are the write lanes (one on SQLite) and the
/// maintenance tasks, each with one job at a time; a caller past this waits to hand its job in.
const QUEUE: usize = 32;

/// Statements the connection keeps prepared: every write statement of the store fits.
const PREPARED: usize = 32;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A handle on the writer thread; the thread ends, closing the connection, when the last handle
/// is dropped and the jobs handed in before are done.
#[derive(Clone)]
pub(super) struct SqliteWriter {
    jobs: mpsc::Sender<Job>,
}

impl SqliteWriter {
    /// Opens the database at `path` for writing, each commit durable before it returns (WAL,
    /// `synchronous=FULL`), waiting up to `timeout` for a lock another process holds. `hold` is
    /// kept until the connection is closed (the file's lock: no other process may write while
    /// this connection might).
    pub(super) fn open<H: Send + 'static>(
        path: &Path,
        timeout: Duration,
        hold: H,
    ) -> Result<Self, Error> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(timeout)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.set_prepared_statement_cache_capacity(PREPARED);
        let (jobs, queue) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("retaind-sqlite-writer".into())
            .spawn(move || serve(conn, queue, hold))
            .map_err(|e| Error::Internal(format!("cannot start the SQLite writer: {e}").into()))?;
        Ok(Self { jobs })
    }

    /// Runs `job` on the write connection, after the jobs handed in before it, and answers with
    /// its result. A caller that stops waiting does not stop the job: SQLite cannot be
    /// interrupted from here, and the job finishes (or fails) as if it were still awaited.
    pub(super) async fn run<T, F>(&self, job: F) -> Result<T, Error>
    where
        F: FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
        T: Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        self.jobs
            .send(Box::new(move |conn: &mut Connection| {
                let _ = answer.send(job(conn));
            }))
            .await
            .map_err(|_| Error::Closed)?;
        answered
            .await
            .map_err(|_| Error::Internal("a SQLite write failed: the writer panicked".into()))?
    }
}

fn serve<H>(mut conn: Connection, mut queue: mpsc::Receiver<Job>, hold: H) {
    while let Some(job) = queue.blocking_recv() {
        // A job that panics fails alone: its answer is dropped (the caller gets an error), its
        // transaction rolled back, and the next job runs on a connection with none open.
        if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut conn))).is_err()
            && !conn.is_autocommit()
        {
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
    drop(conn);
    drop(hold);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &tempfile::TempDir) -> SqliteWriter {
        SqliteWriter::open(&dir.path().join("w.db"), Duration::from_secs(1), ()).unwrap()
    }

    /// Acknowledged means durable: a commit on the writer is flushed before it returns, even
    /// across power loss (`synchronous=FULL`; WAL's default, NORMAL, survives only a crash).
    #[tokio::test]
    async fn the_writer_commits_durably_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let (synchronous, journal) = writer(&dir)
            .run(|c| {
                let synchronous: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
                let journal: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                Ok((synchronous, journal))
            })
            .await
            .unwrap();
        assert_eq!((synchronous, journal.as_str()), (2, "wal"), "2 is FULL");
    }

    #[tokio::test]
    async fn a_job_that_panics_fails_alone_and_leaves_no_transaction_open() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(&dir);
        w.run(|c| Ok(c.execute_batch("CREATE TABLE t (n INTEGER)")?))
            .await
            .unwrap();
        let panicked = w
            .run(|c| -> Result<(), Error> {
                c.execute_batch("BEGIN; INSERT INTO t VALUES (1)")?;
                panic!("a bug in a job");
            })
            .await;
        assert!(matches!(panicked, Err(Error::Internal(_))), "{panicked:?}");
        let (open, rows) = w
            .run(|c| {
                let rows: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
                Ok((!c.is_autocommit(), rows))
            })
            .await
            .unwrap();
        assert_eq!((open, rows), (false, 0));
    }

    #[tokio::test]
    async fn the_file_lock_is_held_until_the_connection_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (closed, on_close) = std::sync::mpsc::channel::<()>();
        struct Hold(std::sync::mpsc::Sender<()>);
        impl Drop for Hold {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let w = SqliteWriter::open(
            &dir.path().join("w.db"),
            Duration::from_secs(1),
            Hold(closed),
        )
        .unwrap();
        let (started, on_start) = oneshot::channel();
        let running = tokio::spawn({
            let w = w.clone();
            async move {
                w.run(move |_| {
                    let _ = started.send(());
                    std::thread::sleep(Duration::from_millis(100));
                    Ok(())
                })
                .await
            }
        });
        on_start.await.unwrap();
        drop(w);
        // While a job runs, the lock is held; once it is done and no handle is left, the
        // connection closes and the lock goes.
        assert!(on_close.try_recv().is_err());
        running.await.unwrap().unwrap();
        on_close.recv_timeout(Duration::from_secs(5)).unwrap();
    }
}
