//! A watch of the retained set over the store itself, on both stores: when it joins the node's
//! hub, and what it holds while its reader does not read (decision 018, "Watch").

#[macro_use]
mod common;

use std::time::Duration;

use common::writes::{message, owned, put};
use common::{Backend, T0_MS, fresh_store};
use retaind::store::{
    Clock, HubOptions, Revision, Store, Watch, WatchHub, WatchItem, WatchStart, Write,
};
use retaind::topic::TopicFilter;
use tokio_util::sync::CancellationToken;

/// Rows a watch's catch-up reads per query (`PAGE` in `src/store/watch.rs`).
const CATCH_UP_PAGE: usize = 200;

async fn written(store: &Store, write: impl Into<retaind::store::OwnedWrite>) -> Revision {
    store
        .write_owned(write.into())
        .await
        .unwrap()
        .expect("applied")
}

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

fn filter(raw: &str) -> TopicFilter {
    TopicFilter::parse(raw).unwrap()
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
    let mut watch = Watch::start(
        &hub,
        &store,
        filter("w/#"),
        WatchStart::After(from),
        Duration::from_secs(60),
    )
    .await
    .unwrap();

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
    let mut watch = Watch::start(
        &hub,
        &store,
        filter("w/#"),
        WatchStart::After(from),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
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

for_each_backend!(
    a_first_page_holding_an_expired_message_does_not_join_the_hub,
    changes_made_while_a_watch_catches_up_do_not_overflow_it,
);
