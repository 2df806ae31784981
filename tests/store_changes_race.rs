//! A reader following the change log while writers race never has a change appear behind it:
//! every change it finds in the log at the end, at or below the point it had read up to, it saw
//! when it passed there. On Postgres with two nodes writing (and a transaction that takes its
//! revision early and commits seconds later), and on SQLite with four write lanes.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::writes::{delete, node, put, two_nodes};
use common::{Backend, T0_MS, fresh_db};
use retaind::store::{Clock, Revision, Store, StoreOptions};
use sqlx::Connection;

const WRITERS_PER_NODE: usize = 6;
const WRITES_EACH: usize = 60;
const TOPICS: usize = 40;

/// Writes from `stores` (each `WRITERS_PER_NODE` tasks of puts and deletes over shared topics);
/// answers with the highest revision given.
async fn write_all(stores: Vec<Store>) -> Revision {
    let tasks: Vec<_> = stores
        .into_iter()
        .enumerate()
        .flat_map(|(n, store)| {
            (0..WRITERS_PER_NODE).map(move |w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut highest = 0;
                    for i in 0..WRITES_EACH {
                        let name = format!("race/{}", (n * 7 + w * 3 + i) % TOPICS);
                        let write = if i % 5 == 4 {
                            delete(&name)
                        } else {
                            put(&name, &format!("{n}.{w}.{i}"))
                        };
                        let r = store.write_owned(write.into()).await.unwrap();
                        highest = highest.max(r.unwrap_or(0));
                    }
                    highest
                })
            })
        })
        .collect();
    let mut highest = 0;
    for t in futures_util::future::join_all(tasks).await {
        highest = highest.max(t.unwrap());
    }
    highest
}

/// Follows the log from `start` until `stop` is set and it has passed `until` (read when
/// `stop` is set); answers with every revision it saw and the point it read up to.
async fn follow(
    reader: Store,
    start: Revision,
    stop: Arc<AtomicBool>,
    until: Arc<std::sync::Mutex<Revision>>,
) -> (HashSet<Revision>, Revision) {
    let mut seen = HashSet::new();
    let mut after = start;
    loop {
        let page = reader.changes(after, "", None, 50).await.unwrap();
        for c in &page.changes {
            assert!(c.revision > after, "{} came after {after}", c.revision);
            after = c.revision;
            seen.insert(c.revision);
        }
        assert!(
            page.settled >= after,
            "settled {} below {after}",
            page.settled
        );
        after = page.settled;
        if stop.load(Ordering::SeqCst) && after >= *until.lock().unwrap() {
            return (seen, after);
        }
        if page.changes.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Everything in the log after `start` now, all of it settled.
async fn final_log(store: &Store, start: Revision) -> Vec<Revision> {
    let mut out = Vec::new();
    let mut after = start;
    loop {
        let page = store.changes(after, "", None, 1000).await.unwrap();
        out.extend(page.changes.iter().map(|c| c.revision));
        if page.changes.is_empty() {
            return out;
        }
        after = page.changes.last().unwrap().revision;
    }
}

async fn race(writers: Vec<Store>, reader: Store, slow: impl Future<Output = Revision>) {
    let start = reader.settled().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let until = Arc::new(std::sync::Mutex::new(Revision::MAX));
    let following = tokio::spawn(follow(reader.clone(), start, stop.clone(), until.clone()));
    let (highest, slow) = tokio::join!(write_all(writers), slow);
    let highest = highest.max(slow);
    *until.lock().unwrap() = highest;
    stop.store(true, Ordering::SeqCst);
    let (seen, passed) = following.await.unwrap();
    assert!(passed >= highest);
    let log = final_log(&reader, start).await;
    assert!(!log.is_empty());
    let missed: Vec<&Revision> = log
        .iter()
        .filter(|r| **r <= passed && !seen.contains(r))
        .collect();
    assert!(
        missed.is_empty(),
        "changes that appeared behind the reader: {missed:?} (it read up to {passed})"
    );
    if slow > 0 {
        assert!(
            log.contains(&slow) && seen.contains(&slow),
            "the slow write {slow}"
        );
    }
}

/// Postgres: two nodes write, a third follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_nodes() {
    let clock = Clock::manual(T0_MS);
    let (a, b, db) = two_nodes(clock.clone()).await;
    let reader = node(&db, clock, StoreOptions::default()).await;
    race(vec![a, b], reader, async { 0 }).await;
}

/// Postgres: as above, with a transaction that takes its revision first and commits after the
/// writers have been at it for a while: the reader waits for it, and then sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_nodes_and_a_long_transaction() {
    let clock = Clock::manual(T0_MS);
    let (a, b, db) = two_nodes(clock.clone()).await;
    let reader = node(&db, clock, StoreOptions::default()).await;
    let url = db.url.clone();
    let slow = async move {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        // As a write batch does: the revision from the transaction id, the row, the log entry.
        let revision: i64 = sqlx::query_scalar(
            "WITH t AS (SELECT pg_current_xact_id()::text::int8 * 4096 + 1 AS rev)
             INSERT INTO retained_messages (topic, payload, qos, payload_format, last_modified_ms,
                 last_accessed_ms, owner, write_seq, revision, writer_client)
             SELECT 'slow/1', '\\x736c6f77', 0, 0, $1, $1, '', rev, rev, 'slow' FROM t
             RETURNING revision",
        )
        .bind(T0_MS)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        sqlx::query("INSERT INTO retained_changes (revision, topic) VALUES ($1, 'slow/1')")
            .bind(revision)
            .execute(&mut *tx)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        tx.commit().await.unwrap();
        revision
    };
    race(vec![a, b], reader, slow).await;
}

/// SQLite: one node, four write lanes, the reader on the same handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_four_lanes() {
    let db = fresh_db(Backend::Sqlite).await;
    let store = node(
        &db,
        Clock::manual(T0_MS),
        StoreOptions {
            write_lanes: 4,
            ..StoreOptions::default()
        },
    )
    .await;
    race(vec![store.clone(), store.clone()], store, async { 0 }).await;
}
