//! Postgres only: a database that migrations 0001–0003 made, with messages counted by their
//! one-row counters, upgrades to the sharded counters of migration 0004 without losing a count,
//! and counts correctly after it.

mod common;

use bytes::Bytes;
use common::{Backend, T0_MS, fresh_db, open_backend, topic};
use retaind::store::{
    Clock, MessageProperties, Owner, Qos, RetainedMessage, Store, StoreOptions, Write,
};
use sqlx::Connection;

fn put(name: &str) -> Write {
    Write::Put(RetainedMessage {
        topic: topic(name),
        payload: Bytes::from_static(b"v"),
        qos: Qos::AtLeastOnce,
        properties: MessageProperties::default(),
        expires_at_ms: None,
        last_modified_ms: T0_MS,
        last_accessed_ms: T0_MS,
        revision: 0,
        writer: None,
    })
}

fn owner(name: &str) -> Owner {
    Owner {
        name: name.into(),
        max_messages: None,
    }
}

#[tokio::test]
async fn counts_kept_before_the_sharded_counters_survive_the_upgrade() {
    let db = fresh_db(Backend::Postgres).await;
    let mut conn = sqlx::PgConnection::connect(&db.url)
        .await
        .expect("connecting to the test schema");
    // The schema as the release before migration 0004 left it, with messages its triggers
    // counted: 3 for alice, 2 for bob.
    sqlx::migrate!("migrations/postgres")
        .run_to(3, &mut conn)
        .await
        .expect("migrations 0001-0003");
    sqlx::query(
        "INSERT INTO retained_messages
             (topic, payload, qos, payload_format, last_modified_ms, last_accessed_ms, owner)
         SELECT t, '\\x00', 1, 0, $1, $1, o
         FROM (VALUES ('a/1', 'alice'), ('a/2', 'alice'), ('a/3', 'alice'),
                      ('b/1', 'bob'), ('b/2', 'bob')) AS m(t, o)",
    )
    .bind(T0_MS)
    .execute(&mut conn)
    .await
    .expect("messages stored before the upgrade");

    // Opening the store applies migration 0004.
    let store = Store::new(
        open_backend(&db.url).await,
        Clock::manual(T0_MS),
        StoreOptions::default(),
    );
    assert_eq!(store.count(None).await.unwrap(), 5);
    assert_eq!(store.count(Some("alice")).await.unwrap(), 3);
    assert_eq!(store.count(Some("bob")).await.unwrap(), 2);

    // After it: a new message, a takeover from alice by bob, and a delete of bob's.
    store.write_as(put("c/1"), owner("carol")).await.unwrap();
    store.write_as(put("a/1"), owner("bob")).await.unwrap();
    store.write(Write::Delete(topic("b/2"))).await.unwrap();
    assert_eq!(store.count(None).await.unwrap(), 5);
    assert_eq!(store.count(Some("alice")).await.unwrap(), 2);
    assert_eq!(store.count(Some("bob")).await.unwrap(), 2);
    assert_eq!(store.count(Some("carol")).await.unwrap(), 1);
    let shards: i64 = sqlx::query_scalar("SELECT count(*) FROM retained_total")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(shards, 64, "every shard exists from the start");
}
