//! A watch of the retained set over the store itself, on both stores: when it joins the node's
//! hub (and when the hub reads on), and how much it holds read and not yet given, which a reader
//! that stops reading leaves it holding (decision 018, "Watch").

#[macro_use]
mod common;

use std::time::Duration;

use common::writes::{message, owned, put, written};
use common::{Backend, T0_MS, fresh_store};
use retaind::store::{
    Clock, HubOptions, Revision, Store, Watch, WatchHub, WatchItem, WatchStart, Write,
};
use retaind::topic::TopicFilter;
use tokio_util::sync::CancellationToken;

/// Rows a watch's catch-up reads per query (`PAGE` in `src/store/watch.rs`).
const CATCH_UP_PAGE: usize = 200;

/// Waits until everything up to `revision` is settled (on Postgres another client's
/// transaction may hold the settled point back for a moment).
async fn settle(store: &Store, revision: Revision) {
    for _ in 0..3000 {
        if store.settled().await.unwrap() >= revision {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("revision {revision} never settled");
}

/// A watch of `filter` from `from`, idle for `idle_secs` at most.
async fn start(
    hub: &WatchHub,
    store: &Store,
    filter: &str,
    from: WatchStart,
    idle_secs: u64,
) -> Watch {
    let filter = TopicFilter::parse(filter).unwrap();
    let idle = Duration::from_secs(idle_secs);
    Watch::start(hub, store, filter, from, idle).await.unwrap()
}

/// A backlog after the returned revision: first a message that has expired by now (maintenance
/// has not recorded it, so the log's first row is read and left out), then `puts` more. The
/// first page of a catch-up therefore reads a full page of rows and gives one change fewer.
async fn backlog_opened_by_an_expired_message(
    store: &Store,
    clock: &Clock,
    puts: usize,
) -> Revision {
    let from = written(store, put("other/start", "0")).await;
    let mut expiring = message("w/expiring", "soon", T0_MS);
    expiring.expires_at_ms = Some(T0_MS + 1_000);
    written(store, owned(Write::Put(expiring), "alice", "dev", None)).await;
    let mut last = from;
    for n in 0..puts {
        last = written(store, put(&format!("w/{n:04}"), "x")).await;
    }
    settle(store, last).await;
    clock.advance(Duration::from_secs(2));
    from
}

fn hub(store: &Store, buffer: usize) -> WatchHub {
    let options = HubOptions {
        buffer,
        poll: Duration::from_millis(10),
    };
    WatchHub::new(store.clone(), options, CancellationToken::new())
}

async fn next_change_topic(watch: &mut Watch) -> String {
    match watch.next().await.unwrap() {
        Some(WatchItem::Change(change)) => change.topic.as_str().to_owned(),
        other => panic!("expected a change, got {other:?}"),
    }
}

/// A page of rows is full whatever the rows it left out: a resuming watch whose first page
/// holds an expired message reads the next page itself, and joins the hub only at the log's end.
async fn a_first_page_holding_an_expired_message_does_not_join_the_hub(backend: Backend) {
    let clock = Clock::manual(T0_MS);
    let (store, _db) = fresh_store(backend, clock.clone()).await;
    let from = backlog_opened_by_an_expired_message(&store, &clock, 2 * CATCH_UP_PAGE).await;
    let hub = hub(&store, 1024);
    let mut watch = start(&hub, &store, "w/#", WatchStart::After(from), 60).await;

    assert_eq!(next_change_topic(&mut watch).await, "w/0000");
    assert_eq!(hub.joined(), 0, "joined after a full first page");
    for n in 1..2 * CATCH_UP_PAGE {
        assert_eq!(next_change_topic(&mut watch).await, format!("w/{n:04}"));
    }
    assert_eq!(hub.joined(), 1, "never joined at the log's end");
}

/// Joined no earlier than the log's end, a resuming watch whose reader keeps up gets no resync
/// from changes made while it caught up, even with a hub buffer of a few changes: joined early,
/// the hub filled that buffer with them while the watch was still reading the backlog.
async fn changes_made_while_a_watch_catches_up_do_not_overflow_it(backend: Backend) {
    let clock = Clock::manual(T0_MS);
    let (store, _db) = fresh_store(backend, clock.clone()).await;
    let from = backlog_opened_by_an_expired_message(&store, &clock, 2 * CATCH_UP_PAGE).await;
    let hub = hub(&store, 8);
    let mut watch = start(&hub, &store, "w/#", WatchStart::After(from), 60).await;
    assert_eq!(next_change_topic(&mut watch).await, "w/0000");

    // Writes go on while the watch is in its backlog, more than its hub buffer holds.
    let mut last = 0;
    for n in 0..32 {
        last = written(&store, put(&format!("w/live/{n:02}"), "y")).await;
    }
    settle(&store, last).await;
    // Some of the hub's reads (every 10 ms) before the watch reads on: what a joined watch's
    // buffer would have been handed by then is handed.
    tokio::time::sleep(Duration::from_millis(300)).await;

    for n in 1..2 * CATCH_UP_PAGE {
        assert_eq!(next_change_topic(&mut watch).await, format!("w/{n:04}"));
    }
    for n in 0..32 {
        assert_eq!(
            next_change_topic(&mut watch).await,
            format!("w/live/{n:02}")
        );
    }
}

/// What one watch may hold read and not yet given (`HELD_BYTES` in `src/store/watch.rs`), past
/// the one message a page always takes.
const HELD_BYTES: usize = 1024 * 1024;
const LARGE: usize = 100 * 1024;

/// `count` messages of `LARGE` bytes under `big/`; the revision of the last.
async fn large_messages(store: &Store, count: usize) -> Revision {
    let body = "x".repeat(LARGE);
    let mut last = 0;
    for n in 0..count {
        last = written(store, put(&format!("big/{n:02}"), &body)).await;
    }
    settle(store, last).await;
    last
}

/// Reads the rest of a watch of `big/#` that gave `big/00` first, checking what it holds after
/// each item: every message comes, in order, and the watch never holds more than its bound.
async fn read_large_messages(watch: &mut Watch, count: usize, snapshot: bool) {
    for n in 1..count {
        let topic = match watch.next().await.unwrap() {
            Some(WatchItem::Current(message)) if snapshot => message.topic.as_str().to_owned(),
            Some(WatchItem::Change(change)) if !snapshot => change.topic.as_str().to_owned(),
            other => panic!("expected big/{n:02}, got {other:?}"),
        };
        assert_eq!(topic, format!("big/{n:02}"));
        assert!(watch.held() <= HELD_BYTES + LARGE, "{}", watch.held());
    }
}

/// A reader that takes one event of a snapshot of large messages and stops leaves its watch
/// holding a bounded number of bytes, not a page of 200 messages; the snapshot still comes
/// whole and in order.
async fn a_snapshot_of_large_messages_holds_a_bounded_number_of_bytes(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    large_messages(&store, 50).await;
    let hub = hub(&store, 1024);
    let mut watch = start(&hub, &store, "big/#", WatchStart::Snapshot, 60).await;
    match watch.next().await.unwrap() {
        Some(WatchItem::Current(message)) => assert_eq!(message.topic.as_str(), "big/00"),
        other => panic!("expected big/00, got {other:?}"),
    }
    // The bound, not a page: 50 messages of 100 KiB are 5 MB.
    assert!(watch.held() > 0);
    assert!(watch.held() <= HELD_BYTES + LARGE, "{}", watch.held());
    read_large_messages(&mut watch, 50, true).await;
    assert!(matches!(
        watch.next().await.unwrap(),
        Some(WatchItem::Synced(_))
    ));
    assert_eq!(watch.held(), 0);
}

/// The same for a resume over a log of large changes; it still reads them all before it joins
/// the hub.
async fn a_catch_up_over_large_changes_holds_a_bounded_number_of_bytes(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    let from = written(&store, put("other/start", "0")).await;
    large_messages(&store, 50).await;
    let hub = hub(&store, 1024);
    let mut watch = start(&hub, &store, "big/#", WatchStart::After(from), 60).await;
    assert_eq!(next_change_topic(&mut watch).await, "big/00");
    assert!(watch.held() > 0);
    assert!(watch.held() <= HELD_BYTES + LARGE, "{}", watch.held());
    assert_eq!(hub.joined(), 0, "joined before the log's end");
    read_large_messages(&mut watch, 50, false).await;
    assert_eq!(watch.held(), 0);
}

for_each_backend!(
    a_first_page_holding_an_expired_message_does_not_join_the_hub,
    changes_made_while_a_watch_catches_up_do_not_overflow_it,
    a_snapshot_of_large_messages_holds_a_bounded_number_of_bytes,
    a_catch_up_over_large_changes_holds_a_bounded_number_of_bytes,
);

/// The hub too judges a page by its rows: one of 500 rows that opens with a put expired since
/// is full, and the hub reads the next at once instead of waiting to be woken. Postgres only:
/// an open transaction elsewhere on the server holds the settled point, so the whole backlog
/// is written before the hub can read any of it; then one write wakes it. Each of its pages
/// opens with an expired message, so a hub that took them for short needed a wake-up a page,
/// more than the few it gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_reads_on_after_a_full_page_holding_an_expired_message() {
    use sqlx::{Connection, Executor};
    const HUB_PAGE: usize = 500;
    const PAGES: usize = 8;
    let clock = Clock::manual(T0_MS);
    let (store, db) = fresh_store(Backend::Postgres, clock.clone()).await;
    // No poll in the test's time: only writes wake the hub.
    let hub = WatchHub::new(
        store.clone(),
        HubOptions {
            buffer: PAGES * HUB_PAGE,
            poll: Duration::from_secs(3600),
        },
        CancellationToken::new(),
    );
    let mut watch = start(&hub, &store, "w/#", WatchStart::Now, 3600).await;
    assert!(matches!(
        watch.next().await.unwrap(),
        Some(WatchItem::Synced(_))
    ));

    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    holder.execute("BEGIN").await.unwrap();
    holder.execute("SELECT txid_current()").await.unwrap();
    // Joins the hub (nothing settled past its start to read).
    let joined = tokio::time::timeout(Duration::from_secs(1), watch.next()).await;
    assert!(joined.is_err(), "{joined:?}");
    assert_eq!(hub.joined(), 1);

    let mut last = 0;
    for page in 0..PAGES {
        let mut expiring = message(&format!("w/expiring/{page}"), "soon", T0_MS);
        expiring.expires_at_ms = Some(T0_MS + 1_000);
        written(&store, owned(Write::Put(expiring), "alice", "dev", None)).await;
        for n in 0..HUB_PAGE - 1 {
            last = written(&store, put(&format!("w/{page}/{n:03}"), "x")).await;
        }
    }
    clock.advance(Duration::from_secs(2));
    // A read the writes woke may have taken the time before the advance; it finds nothing
    // settled and ends within milliseconds. Let go after, not while it could still see the
    // backlog settled with the old time (and the expired messages as live).
    tokio::time::sleep(Duration::from_millis(500)).await;
    holder.execute("ROLLBACK").await.unwrap();
    settle(&store, last).await;
    written(&store, put("other/wake", "1")).await;

    for page in 0..PAGES {
        for n in 0..HUB_PAGE - 1 {
            let topic = format!("w/{page}/{n:03}");
            let next = tokio::time::timeout(Duration::from_secs(10), next_change_topic(&mut watch));
            let got = next.await.unwrap_or_else(|_| panic!("{topic} never came"));
            assert_eq!(got, topic);
        }
    }
}
