//! The change log (decision 018), on both stores: `changes` pages in revision order, each
//! topic's latest change once; `settled` covers every acknowledged write, and `reached` does at
//! once and no later write; expiry, the retention
//! purge and deletes are changes of their own kinds; purging tombstones moves `compacted`.
//!
//! A delete of a topic that has no message still writes a tombstone (it keeps an older write
//! arriving late from bringing a message back, decision 011), so it is a change like any other:
//! it gets a revision and the log shows a delete. A mirror applies it as a no-op.

#[macro_use]
mod common;

use std::time::Duration;

use common::writes::{delete, message, owned, put, when, written};
use common::{Backend, T0_MS, fresh_store, topic};
use retaind::store::{
    ChangeKind, ChangePage, Clock, Condition, Revision, Store, StoreOptions, Write, Writer,
    purge_delay,
};

const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Waits until everything up to `revision` is settled. On Postgres the settled point is the
/// oldest transaction running on the whole server, which another client's transaction may hold
/// back for a moment.
async fn settle(store: &Store, revision: Revision) -> Revision {
    for _ in 0..3000 {
        let settled = store.settled().await.unwrap();
        if settled >= revision {
            return settled;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("revision {revision} never settled");
}

/// Waits until every change made so far is settled, whatever its revision: a write made now
/// comes after them all, so once it is settled, they are. The marker's own change is left out
/// by [`all_changes`].
async fn settle_all(store: &Store) {
    // A delete (of a topic never written): a tombstone, which no retention purge counts.
    let marker = written(store, delete(MARKER)).await;
    settle(store, marker).await;
}

const MARKER: &str = "zz/marker";

/// Every change after `after`, page by page of `limit` (but the marker's of [`settle_all`]).
async fn all_changes(
    store: &Store,
    after: Revision,
    limit: u32,
) -> Vec<(Revision, String, String)> {
    let mut out = Vec::new();
    let mut after = after;
    loop {
        let ChangePage {
            changes, settled, ..
        } = store.changes(after, "", None, limit).await.unwrap();
        let full = changes.len() == limit as usize;
        for c in &changes {
            assert!(c.revision > after, "{} not after {after}", c.revision);
            assert!(
                c.revision <= settled,
                "{} above the page's settled {settled}",
                c.revision
            );
            after = c.revision;
            if c.topic.as_str() != MARKER {
                out.push((c.revision, c.topic.as_str().to_owned(), kind(&c.kind)));
            }
        }
        assert!(settled >= after);
        after = settled;
        if !full {
            return out;
        }
    }
}

fn kind(k: &ChangeKind) -> String {
    match k {
        ChangeKind::Put(m) => format!("put {}", String::from_utf8_lossy(&m.payload)),
        ChangeKind::Delete => "delete".into(),
        ChangeKind::Expired => "expired".into(),
        ChangeKind::Purged => "purged".into(),
    }
}

async fn changes_come_in_revision_order_each_topics_latest_once(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    let start = store.settled().await.unwrap();
    let mut last = 0;
    for (t, p) in [
        ("c/a", "1"),
        ("c/b", "1"),
        ("c/c", "1"),
        ("c/a", "2"),
        ("c/d", "1"),
    ] {
        last = written(&store, put(t, p)).await;
    }
    let r_del = written(&store, delete("c/b")).await;
    assert!(r_del > last);
    settle(&store, r_del).await;
    // Pages of 2: in revision order, c/a once (its latest), the delete of c/b last.
    let seen = all_changes(&store, start, 2).await;
    let named: Vec<(&str, &str)> = seen
        .iter()
        .map(|(_, t, k)| (t.as_str(), k.as_str()))
        .collect();
    assert_eq!(
        named,
        [
            ("c/c", "put 1"),
            ("c/a", "put 2"),
            ("c/d", "put 1"),
            ("c/b", "delete")
        ]
    );
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(seen.last().unwrap().0, r_del);
    // Each put's revision is the message's.
    for (r, t, k) in &seen {
        if k.starts_with("put") {
            assert_eq!(store.get(topic(t)).await.unwrap().unwrap().revision, *r);
        }
    }
    // From the middle: only what came after.
    let after_a = seen[1].0;
    let rest: Vec<String> = all_changes(&store, after_a, 10)
        .await
        .into_iter()
        .map(|(_, t, _)| t)
        .collect();
    assert_eq!(rest, ["c/d", "c/b"]);
    // A range of topics: [c/b, c/d).
    let page = store.changes(start, "c/b", Some("c/d"), 10).await.unwrap();
    let ranged: Vec<&str> = page.changes.iter().map(|c| c.topic.as_str()).collect();
    assert_eq!(ranged, ["c/c", "c/b"]);
    // Nothing after the last: an empty page, settled at or above it.
    let empty = store.changes(r_del, "", None, 10).await.unwrap();
    assert!(empty.changes.is_empty());
    assert!(empty.settled >= r_del);
}

/// The log's entries and the rows' revisions, as the database holds them.
async fn log_and_rows(url: &str) -> (Vec<(i64, String)>, Vec<(i64, String)>) {
    use sqlx::Connection;
    const LOG: &str = "SELECT revision, topic FROM retained_changes ORDER BY revision";
    const ROWS: &str =
        "SELECT revision, topic FROM retained_messages WHERE revision > 0 ORDER BY revision";
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        let log = sqlx::query_as(LOG).fetch_all(&mut c).await.unwrap();
        (log, sqlx::query_as(ROWS).fetch_all(&mut c).await.unwrap())
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        let log = sqlx::query_as(LOG).fetch_all(&mut c).await.unwrap();
        (log, sqlx::query_as(ROWS).fetch_all(&mut c).await.unwrap())
    }
}

/// Every kind of write removes the log entry of the version it replaces, in the same
/// statement: with no writes racing, the log holds each row's latest revision and nothing
/// else, before any maintenance.
async fn each_write_drops_the_entry_of_what_it_replaced(backend: Backend) {
    let (store, db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    written(&store, put("l/a", "1")).await;
    written(&store, put("l/a", "2")).await; // a rewrite
    written(&store, put("l/b", "1")).await;
    written(&store, delete("l/b")).await; // a tombstone over a message
    written(&store, when(put("l/b", "2"), Condition::Absent)).await; // over a tombstone
    let r_c = written(&store, put("l/c", "1")).await;
    written(&store, when(put("l/c", "2"), Condition::Revision(r_c))).await;
    written(&store, delete("l/d")).await; // a tombstone where nothing was
    let (log, rows) = log_and_rows(&db.url).await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(log, rows);
}

async fn changes_carry_the_message_and_the_writer(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    let start = store.settled().await.unwrap();
    let r1 = written(&store, owned(put("w/a", "x"), "alice", "dev-1", None)).await;
    let r2 = written(&store, owned(delete("w/a"), "bob", Writer::HTTP, None)).await;
    let r3 = written(&store, put("w/b", "y")).await;
    settle(&store, r3).await;
    let page = store.changes(start, "", None, 10).await.unwrap();
    assert_eq!(page.changes.len(), 2, "{page:?}");
    let (del, put_b) = (&page.changes[0], &page.changes[1]);
    assert_eq!((del.revision, &del.kind), (r2, &ChangeKind::Delete));
    assert_eq!(
        del.writer,
        Some(Writer {
            principal: "bob".into(),
            client: Writer::HTTP.into()
        })
    );
    assert!(r1 < r2);
    let ChangeKind::Put(m) = &put_b.kind else {
        panic!("{put_b:?}")
    };
    assert_eq!(
        (m.topic.as_str(), &m.payload[..], m.revision),
        ("w/b", &b"y"[..], r3)
    );
    assert_eq!(put_b.writer, None);
}

async fn a_delete_of_a_missing_topic_is_logged_as_a_delete(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    let start = store.settled().await.unwrap();
    let r = written(&store, delete("never/written")).await;
    // And a second delete of it: another change.
    let r2 = written(&store, delete("never/written")).await;
    assert!(r2 > r);
    settle(&store, r2).await;
    let seen = all_changes(&store, start, 10).await;
    assert_eq!(
        seen,
        [(r2, "never/written".to_owned(), "delete".to_owned())]
    );
    assert_eq!(store.get(topic("never/written")).await.unwrap(), None);
    assert_eq!(store.count(None).await.unwrap(), 0);
}

async fn expiry_and_the_retention_purge_leave_changes_of_their_kind(backend: Backend) {
    let clock = Clock::manual(T0_MS);
    let (store, _db) = fresh_store(backend, clock.clone()).await;
    let start = store.settled().await.unwrap();
    let mut short = message("k/expiring", "soon", T0_MS);
    short.expires_at_ms = Some(T0_MS + 1_000);
    let r_exp = written(&store, owned(Write::Put(short), "alice", "dev", None)).await;
    let r_idle = written(&store, put("k/idle", "old")).await;
    settle(&store, r_idle).await;

    // Expired, not yet seen by maintenance: no longer a put in the log, and no expiry yet.
    clock.advance(Duration::from_secs(2));
    let seen = all_changes(&store, start, 10).await;
    assert_eq!(seen, [(r_idle, "k/idle".to_owned(), "put old".to_owned())]);
    let report = store.maintain(YEAR).await.unwrap();
    assert_eq!(report.expired, 1);
    settle_all(&store).await;
    let seen = all_changes(&store, start, 10).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        (seen[1].1.as_str(), seen[1].2.as_str()),
        ("k/expiring", "expired")
    );
    assert!(seen[1].0 > r_exp && seen[1].0 > r_idle);
    let page = store.changes(start, "k/expiring", None, 10).await.unwrap();
    assert_eq!(page.changes[0].writer, None, "an expiry has no writer");

    // Two years on, the idle message goes to the retention purge.
    clock.advance(2 * YEAR);
    let report = store.maintain(YEAR).await.unwrap();
    assert_eq!(report.idle, 1);
    settle_all(&store).await;
    let seen = all_changes(&store, start, 10).await;
    let named: Vec<(&str, &str)> = seen
        .iter()
        .map(|(_, t, k)| (t.as_str(), k.as_str()))
        .collect();
    // The expiry's tombstone was purged with the same pass (older than the purge delay).
    assert_eq!(named, [("k/idle", "purged")], "{seen:?}");
    let page = store.changes(start, "k/", Some("k0"), 10).await.unwrap();
    assert_eq!(page.changes[0].writer, None, "a purge has no writer");
}

async fn purging_tombstones_moves_the_compaction_point(backend: Backend) {
    let clock = Clock::manual(T0_MS);
    let (store, _db) = fresh_store(backend, clock.clone()).await;
    assert_eq!(store.compacted().await.unwrap(), 0);
    let start = store.settled().await.unwrap();
    written(&store, put("p/a", "1")).await;
    let r_del = written(&store, delete("p/a")).await;
    let r_kept = written(&store, put("p/b", "1")).await;
    settle(&store, r_kept).await;
    // Before the purge delay: the tombstone stays, compaction has not moved.
    store.maintain(YEAR).await.unwrap();
    assert_eq!(store.compacted().await.unwrap(), 0);
    assert_eq!(all_changes(&store, start, 10).await.len(), 2);
    clock.advance(purge_delay(StoreOptions::default().timeout) + Duration::from_secs(1));
    let report = store.maintain(YEAR).await.unwrap();
    assert_eq!(report.tombstones, 1);
    let compacted = store.compacted().await.unwrap();
    assert_eq!(compacted, r_del, "the highest revision purged");
    // The delete is gone from the log; a watcher from below `compacted` must start again.
    let seen = all_changes(&store, start, 10).await;
    assert_eq!(seen, [(r_kept, "p/b".to_owned(), "put 1".to_owned())]);
    // Never goes back.
    written(&store, delete("p/c")).await;
    store.maintain(YEAR).await.unwrap();
    assert_eq!(store.compacted().await.unwrap(), compacted);
}

/// `reached` is at or above every revision the store has answered with, settled or not, and
/// below every write made after it is read: a revision above it is another database's, which a
/// watch must not resume from (decision 018).
async fn reached_covers_every_acknowledged_write_and_no_later_one(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    let acknowledged = written(&store, put("q/a", "1")).await;
    let settled = store.settled().await.unwrap();
    let reached = store.reached().await.unwrap();
    assert!(acknowledged <= reached, "{acknowledged} > {reached}");
    assert!(settled <= reached, "{settled} > {reached}");
    let later = written(&store, put("q/b", "1")).await;
    assert!(later > reached, "{later} <= {reached}");
}

for_each_backend!(
    changes_come_in_revision_order_each_topics_latest_once,
    each_write_drops_the_entry_of_what_it_replaced,
    changes_carry_the_message_and_the_writer,
    a_delete_of_a_missing_topic_is_logged_as_a_delete,
    expiry_and_the_retention_purge_leave_changes_of_their_kind,
    purging_tombstones_moves_the_compaction_point,
    reached_covers_every_acknowledged_write_and_no_later_one,
);
