//! Quotas on the number of retained messages, against real SQLite and real Postgres: the
//! counts the database keeps, and the store refusing what would exceed them, writing nothing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Backend, T0_MS, fresh_db, open_backend};
use retaind::store::{
    Clock, Condition, Error, MessageProperties, OwnedWrite, Owner, Qos, QuotaExceeded,
    RetainedMessage, RetainedStore, Store, StoreOptions, Verdict, Write,
};
use retaind::topic::TopicName;

fn topic(s: &str) -> TopicName {
    TopicName::from_stored(s.to_owned())
}

fn message(t: &str, expires_at_ms: Option<i64>) -> RetainedMessage {
    RetainedMessage {
        topic: topic(t),
        payload: Bytes::from_static(b"v"),
        qos: Qos::AtLeastOnce,
        properties: MessageProperties::default(),
        expires_at_ms,
        last_modified_ms: T0_MS,
        last_accessed_ms: T0_MS,
        revision: 0,
        writer: None,
    }
}

fn put(t: &str) -> Write {
    Write::Put(message(t, None))
}

fn owner(name: &str, max_messages: Option<u64>) -> Owner {
    Owner {
        name: name.into(),
        max_messages,
    }
}

fn store_on(backend: Arc<dyn RetainedStore>, max_messages: Option<u64>) -> Store {
    let options = StoreOptions {
        max_messages,
        ..StoreOptions::default()
    };
    Store::new(backend, Clock::manual(T0_MS), options)
}

async fn listed(store: &Store) -> Vec<String> {
    let page = store.list(None, 200).await.unwrap();
    page.into_iter().map(|s| s.topic.to_string()).collect()
}

/// The counts agree with what is stored, per owner and in total.
async fn assert_counts(store: &Store, expected: &[(&str, u64)]) {
    let total: u64 = expected.iter().map(|(_, n)| n).sum();
    assert_eq!(store.count(None).await.unwrap(), total, "total");
    for (name, n) in expected {
        assert_eq!(store.count(Some(name)).await.unwrap(), *n, "owner {name:?}");
    }
}

/// On SQLite, where the store keeps them itself (migration 0006): the counts are those of the
/// rows that are not tombstones, and the change log holds one entry per row, under its
/// revision, and nothing else.
async fn assert_books_match_rows(url: &str) {
    use sqlx::Connection;
    if !url.starts_with("sqlite:") {
        return;
    }
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    let counted: Vec<(String, i64)> = sqlx::query_as(
        "SELECT owner, messages FROM retained_owner_counts WHERE messages <> 0 ORDER BY owner",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let stored: Vec<(String, i64)> = sqlx::query_as(
        "SELECT owner, count(*) FROM retained_messages WHERE NOT deleted GROUP BY owner
         ORDER BY owner",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(counted, stored, "owners' counts against the rows");
    let (total, rows): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT messages FROM retained_total),
                (SELECT count(*) FROM retained_messages WHERE NOT deleted)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(total, rows, "the total against the rows");
    let log: Vec<(i64, String)> =
        sqlx::query_as("SELECT revision, topic FROM retained_changes ORDER BY revision")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let revisions: Vec<(i64, String)> = sqlx::query_as(
        "SELECT revision, topic FROM retained_messages WHERE revision > 0 ORDER BY revision",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(log, revisions, "the change log against the rows");
}

async fn counts_follow_puts_takeovers_deletes_and_purges(backend: Backend) {
    let db = fresh_db(backend).await;
    let store = store_on(open_backend(&db.url).await, None);
    let (a, b) = (owner("a", None), owner("b", None));
    assert_counts(&store, &[("a", 0)]).await;
    for t in ["1", "2", "3"] {
        store.write_as(put(t), a.clone()).await.unwrap();
    }
    store.write_as(put("1"), a.clone()).await.unwrap(); // a rewrite adds nothing
    store.write_as(put("4"), b.clone()).await.unwrap();
    store.write_as(put("2"), b.clone()).await.unwrap(); // b takes "2" over from a
    assert_counts(&store, &[("a", 2), ("b", 2)]).await;
    assert_books_match_rows(&db.url).await;
    store.write(Write::Delete(topic("1"))).await.unwrap();
    store.write(Write::Delete(topic("absent"))).await.unwrap();
    store.write(put("5")).await.unwrap(); // anonymous
    assert_counts(&store, &[("a", 1), ("b", 2), ("", 1)]).await;
    assert_books_match_rows(&db.url).await;
    // A put on a tombstone brings the topic back, for its new owner; so does If-None-Match.
    store.write_as(put("1"), b.clone()).await.unwrap();
    let absent = OwnedWrite {
        write: put("absent"),
        owner: a.clone(),
        client: None,
        condition: Some(Condition::Absent),
    };
    assert!(store.write_owned(absent).await.unwrap().is_some());
    assert_counts(&store, &[("a", 2), ("b", 3), ("", 1)]).await;
    // If-Match: a takes "4" over from b, with the revision it read.
    let revision = store.get(topic("4")).await.unwrap().unwrap().revision;
    let matched = OwnedWrite {
        write: put("4"),
        owner: a.clone(),
        client: None,
        condition: Some(Condition::Revision(revision)),
    };
    assert!(store.write_owned(matched).await.unwrap().is_some());
    assert_counts(&store, &[("a", 3), ("b", 2), ("", 1)]).await;
    assert_books_match_rows(&db.url).await;
    for t in ["1", "absent"] {
        store.write(Write::Delete(topic(t))).await.unwrap();
    }
    assert_counts(&store, &[("a", 2), ("b", 1), ("", 1)]).await;
    let expiring = Write::Put(message("6", Some(T0_MS - 1)));
    store.write_as(expiring, b.clone()).await.unwrap();
    assert_counts(&store, &[("a", 2), ("b", 2), ("", 1)]).await;
    // An expired message counts until maintenance records its expiry (a tombstone, which
    // counts for no one); tombstones go once the purge delay has passed.
    let report = store.maintain(Duration::from_secs(3600)).await.unwrap();
    assert_eq!((report.expired, report.tombstones), (1, 0));
    assert_counts(&store, &[("a", 2), ("b", 1), ("", 1)]).await;
    assert_books_match_rows(&db.url).await;
    let delay = retaind::store::purge_delay(StoreOptions::default().timeout);
    store.clock().advance(delay);
    let report = store.maintain(Duration::from_secs(3600)).await.unwrap();
    assert_eq!((report.expired, report.tombstones), (0, 3));
    assert_counts(&store, &[("a", 2), ("b", 1), ("", 1)]).await;
    assert_books_match_rows(&db.url).await;
    // Two days on, everything has been idle for longer than a day.
    store.clock().advance(Duration::from_secs(2 * 86_400));
    let report = store.maintain(Duration::from_secs(86_400)).await.unwrap();
    assert_eq!(report.idle, 4);
    assert_counts(&store, &[("a", 0), ("b", 0), ("", 0)]).await;
    assert_books_match_rows(&db.url).await;
}

/// A purged tombstone takes its log entry with it at once, before any compaction.
async fn a_purged_tombstone_leaves_nothing_in_the_books(backend: Backend) {
    let db = fresh_db(backend).await;
    let backend = open_backend(&db.url).await;
    let store = store_on(backend.clone(), None);
    for t in ["1", "2"] {
        store.write_as(put(t), owner("a", None)).await.unwrap();
    }
    store.write(Write::Delete(topic("1"))).await.unwrap();
    assert_books_match_rows(&db.url).await;
    let purged = backend.purge_tombstones(T0_MS + 1, 10).await.unwrap();
    assert_eq!(purged, 1);
    assert_counts(&store, &[("a", 1)]).await;
    assert_books_match_rows(&db.url).await;
}

async fn the_service_quota_refuses_new_topics_and_writes_nothing(backend: Backend) {
    let db = fresh_db(backend).await;
    let store = store_on(open_backend(&db.url).await, Some(2));
    store.write(put("x")).await.unwrap();
    store.write(put("y")).await.unwrap();
    let refused = store.write(put("z")).await;
    assert!(
        matches!(
            refused,
            Err(Error::QuotaExceeded(QuotaExceeded::Service { limit: 2 }))
        ),
        "{refused:?}"
    );
    assert_eq!(store.get(topic("z")).await.unwrap(), None);
    assert_eq!(listed(&store).await, ["x", "y"]);
    assert_eq!(store.count(None).await.unwrap(), 2);
    // Rewriting a stored topic and deleting stay allowed at the limit; a delete makes room.
    store.write(put("x")).await.unwrap();
    store.write(Write::Delete(topic("y"))).await.unwrap();
    store.write(put("z")).await.unwrap();
    assert_eq!(listed(&store).await, ["x", "z"]);
}

async fn an_owner_is_held_to_its_quota_and_a_takeover_frees_a_place(backend: Backend) {
    let db = fresh_db(backend).await;
    let store = store_on(open_backend(&db.url).await, None);
    let p = owner("p", Some(2));
    store.write_as(put("p/1"), p.clone()).await.unwrap();
    store.write_as(put("p/2"), p.clone()).await.unwrap();
    let refused = store.write_as(put("p/3"), p.clone()).await;
    match refused {
        Err(Error::QuotaExceeded(QuotaExceeded::Owner { owner, limit: 2 })) => {
            assert_eq!(&*owner, "p");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.get(topic("p/3")).await.unwrap(), None);
    store.write_as(put("p/1"), p.clone()).await.unwrap(); // its own topic: no change
    // Another principal may still store, and taking one of p's topics leaves p room again.
    store
        .write_as(put("p/2"), owner("q", Some(1)))
        .await
        .unwrap();
    assert_counts(&store, &[("p", 1), ("q", 1)]).await;
    store.write_as(put("p/3"), p.clone()).await.unwrap();
    assert_eq!(listed(&store).await, ["p/1", "p/2", "p/3"]);
}

async fn one_batch_admits_in_order_and_applies_only_what_it_admits(backend: Backend) {
    let db = fresh_db(backend).await;
    let backend = open_backend(&db.url).await;
    let p = owner("p", Some(1));
    let writes: Vec<OwnedWrite> = vec![
        OwnedWrite {
            write: put("a"),
            owner: p.clone(),
            client: None,
            condition: None,
        },
        OwnedWrite {
            write: put("b"),
            owner: p.clone(),
            client: None,
            condition: None,
        },
        Write::Delete(topic("a")).into(),
        OwnedWrite {
            write: put("b"),
            owner: p.clone(),
            client: None,
            condition: None,
        },
        OwnedWrite {
            write: put("c"),
            owner: owner("q", None),
            client: None,
            condition: None,
        },
        OwnedWrite {
            write: put("d"),
            owner: owner("q", None),
            client: None,
            condition: None,
        },
    ];
    let verdicts = backend
        .apply(&writes, Some(2), T0_MS, common::far_deadline())
        .await
        .unwrap();
    // Revisions differ from run to run; that each applied write has one is checked elsewhere.
    let verdicts: Vec<Verdict> = verdicts
        .into_iter()
        .map(|v| match v {
            Verdict::Applied(_) => Verdict::Applied(0),
            v => v,
        })
        .collect();
    // "a" is put, then deleted in the same batch: the put took effect and was replaced.
    assert_eq!(
        verdicts,
        vec![
            Verdict::Superseded,
            Verdict::Refused(QuotaExceeded::Owner {
                owner: "p".into(),
                limit: 1
            }),
            Verdict::Applied(0),
            Verdict::Applied(0),
            Verdict::Applied(0),
            Verdict::Refused(QuotaExceeded::Service { limit: 2 }),
        ]
    );
    let stored = backend.list(None, 10, T0_MS).await.unwrap();
    let stored: Vec<&str> = stored.iter().map(|s| s.topic.as_str()).collect();
    assert_eq!(stored, ["b", "c"]);
    assert_eq!(backend.count(None).await.unwrap(), 2);
}

/// Two nodes (two connection pools on Postgres; two store handles on SQLite, which admits one
/// process), each committing on two lanes at once, racing to add new topics never keep more
/// than the quota between them.
async fn racing_nodes_never_exceed_the_service_quota(backend: Backend) {
    let db = fresh_db(backend).await;
    let first = open_backend(&db.url).await;
    let second = match backend {
        Backend::Postgres => open_backend(&db.url).await,
        Backend::Sqlite => first.clone(),
    };
    let on = |backend| {
        let options = StoreOptions {
            max_messages: Some(60),
            write_lanes: 2,
            ..StoreOptions::default()
        };
        Store::new(backend, Clock::manual(T0_MS), options)
    };
    let nodes = [on(first), on(second)];
    let mut tasks = tokio::task::JoinSet::new();
    for (n, store) in nodes.iter().enumerate() {
        for i in 0..50 {
            let store = store.clone();
            tasks.spawn(async move { store.write(put(&format!("n{n}/{i:02}"))).await });
        }
    }
    let (mut stored, mut refused) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            Ok(()) => stored += 1,
            Err(Error::QuotaExceeded(QuotaExceeded::Service { limit: 60 })) => refused += 1,
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!((stored, refused), (60, 40));
    assert_eq!(listed(&nodes[0]).await.len(), 60);
    assert_eq!(nodes[1].count(None).await.unwrap(), 60);
}

for_each_backend!(
    counts_follow_puts_takeovers_deletes_and_purges,
    a_purged_tombstone_leaves_nothing_in_the_books,
    the_service_quota_refuses_new_topics_and_writes_nothing,
    an_owner_is_held_to_its_quota_and_a_takeover_frees_a_place,
    one_batch_admits_in_order_and_applies_only_what_it_admits,
    racing_nodes_never_exceed_the_service_quota,
);
