//! Postgres only: a database written by the release before migration 0010 (write tickets from
//! the `retained_write_seq` sequence, no revisions) upgrades to revisions. Its rows get
//! revisions in their old write order, below every later change; their write ticket becomes
//! that revision, so a new write always replaces them, even when the old sequence had run far
//! ahead of the transaction ids (a database restored into a younger cluster, whose transaction
//! ids start again while the sequence keeps its value). A database whose revisions are ahead of
//! the server's transaction ids (restored after revisions) is refused at startup.

mod common;

use common::writes::{put, when};
use common::{Backend, T0_MS, fresh_db, open_backend, topic};
use retaind::store::{Clock, Condition, Error, Store, StoreOptions, Write};
use sqlx::Connection;

#[tokio::test]
async fn rows_written_before_revisions_get_revisions_and_tickets_below_every_new_write() {
    let db = fresh_db(Backend::Postgres).await;
    let mut conn = sqlx::PgConnection::connect(&db.url)
        .await
        .expect("connecting to the test schema");
    sqlx::migrate!("migrations/postgres")
        .run_to(9, &mut conn)
        .await
        .expect("migrations 0001-0009");
    // The old cluster had taken a million more tickets than this one has run transactions.
    sqlx::query(
        "SELECT setval('retained_write_seq', (pg_current_xact_id()::text::int8 + 1000000) * 4096)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    // Written in the order c, a, b (each its own ticket), and a tombstone of d.
    for (t, deleted) in [
        ("old/c", false),
        ("old/a", false),
        ("old/b", false),
        ("old/d", true),
    ] {
        sqlx::query(
            "INSERT INTO retained_messages (topic, payload, qos, payload_format,
                 last_modified_ms, last_accessed_ms, owner, write_seq, deleted, expires_at_ms)
             VALUES ($1, '\\x6f6c64', 1, 0, $2, $2, 'alice', nextval('retained_write_seq'), $3,
                 CASE WHEN $3 THEN $2 END)",
        )
        .bind(t)
        .bind(T0_MS)
        .bind(deleted)
        .execute(&mut conn)
        .await
        .unwrap();
    }

    // Opening the store applies migration 0010.
    let store = Store::new(
        open_backend(&db.url).await,
        Clock::manual(T0_MS),
        StoreOptions::default(),
    );
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT topic, revision, write_seq FROM retained_messages ORDER BY revision",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let order: Vec<&str> = rows.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(
        order,
        ["old/c", "old/a", "old/b", "old/d"],
        "old write order kept"
    );
    for (t, revision, write_seq) in &rows {
        assert!(*revision > 0, "{t}: revision {revision}");
        assert_eq!(write_seq, revision, "{t}: its ticket is its revision");
    }
    let logged: Vec<(i64, String)> =
        sqlx::query_as("SELECT revision, topic FROM retained_changes ORDER BY revision")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let expected: Vec<(i64, String)> = rows.iter().map(|(t, r, _)| (*r, t.clone())).collect();
    assert_eq!(logged, expected, "every old row is in the change log");
    let highest_old = rows.last().unwrap().1;

    // Get shows the revision; no writer is known for old rows.
    let a = store.get(topic("old/a")).await.unwrap().expect("old/a");
    assert_eq!(a.revision, rows[1].1);
    assert_eq!(a.writer, None);

    // New writes replace the old rows, and revive the tombstone's topic.
    let new_c = store.write_owned(put("old/c", "new").into()).await.unwrap();
    let new_c = new_c.expect("the write replaced old/c, not superseded");
    assert!(new_c > highest_old);
    let new_d = store.write_owned(put("old/d", "new").into()).await.unwrap();
    let new_d = new_d.expect("old/d written");
    assert!(new_d > new_c);
    let got = store.get(topic("old/c")).await.unwrap().unwrap();
    assert_eq!(&got.payload[..], b"new");
    assert_eq!(got.revision, new_c);
    assert_eq!(
        &store.get(topic("old/d")).await.unwrap().unwrap().payload[..],
        b"new"
    );

    // A condition on an old revision holds, and on a stale one fails and writes nothing.
    let matched = store
        .write_owned(when(put("old/a", "cas"), Condition::Revision(rows[1].1)))
        .await
        .unwrap();
    assert!(matched.expect("old/a written") > new_d);
    let stale = store
        .write_owned(when(put("old/b", "cas"), Condition::Revision(rows[1].1)))
        .await;
    assert!(matches!(stale, Err(Error::ConditionFailed)), "{stale:?}");
    assert_eq!(
        &store.get(topic("old/b")).await.unwrap().unwrap().payload[..],
        b"old"
    );
    // A delete of an old row takes too.
    let deleted = store
        .write_owned(Write::Delete(topic("old/b")).into())
        .await
        .unwrap();
    assert!(deleted.is_some());
    assert_eq!(store.get(topic("old/b")).await.unwrap(), None);
}

/// A database whose revisions are ahead of the server's transaction ids (a dump restored into
/// a younger cluster) is refused at startup, saying why, rather than dropping new writes.
#[tokio::test]
async fn revisions_ahead_of_the_servers_transaction_ids_are_refused_at_startup() {
    let db = fresh_db(Backend::Postgres).await;
    let store = Store::new(
        open_backend(&db.url).await,
        Clock::manual(T0_MS),
        StoreOptions::default(),
    );
    store.write(put("restored/a", "v")).await.unwrap();
    drop(store);
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    // As if the rows came from a cluster a million transactions older than this one.
    let ahead: i64 = sqlx::query_scalar(
        "UPDATE retained_messages SET revision = (pg_current_xact_id()::text::int8 + 1000000) * 4096 + 1,
             write_seq = (pg_current_xact_id()::text::int8 + 1000000) * 4096 + 1
         RETURNING revision",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    sqlx::query("UPDATE retained_changes SET revision = $1")
        .bind(ahead)
        .execute(&mut conn)
        .await
        .unwrap();
    let refused = retaind::store::open_backend(
        &db.url,
        4,
        std::time::Duration::from_secs(5),
        std::time::Duration::ZERO,
    )
    .await;
    let Err(Error::Config(why)) = refused else {
        panic!("opened a database whose revisions are ahead of the server")
    };
    assert!(why.contains(&ahead.to_string()), "{why}");
    assert!(why.contains("restored"), "{why}");
    // Nothing was changed by the refusal.
    let still: i64 = sqlx::query_scalar("SELECT revision FROM retained_messages")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(still, ahead);
}
