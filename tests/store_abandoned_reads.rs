//! Postgres only: a read given up while its `BEGIN` is on its way (its subscriber left, its
//! client disconnected, its deadline passed) leaves no transaction open on the pooled
//! connection it used. Otherwise the next reads on that connection would run inside the
//! abandoned transaction: a snapshot's is `REPEATABLE READ, READ ONLY`, so they would keep
//! answering from the moment it began and never see a later write. The database sits behind a
//! TCP proxy that holds the answer to the `BEGIN` while the read is abandoned.

mod common;

use std::time::Duration;

use common::proxy::one_connection_backend;
use common::writes::put;
use common::{Backend, T0_MS, far_deadline, fresh_db, topic};
use retaind::store::RetainedStore;
use sqlx::Connection;

async fn payload_of(store: &dyn RetainedStore, name: &str) -> Option<Vec<u8>> {
    let found = store.get_many(&[topic(name)], T0_MS).await.unwrap();
    found.into_iter().next().map(|m| m.payload.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_abandoned_during_its_begin_leaves_no_transaction_behind() {
    let db = fresh_db(Backend::Postgres).await;
    // One pooled connection: the next reads take the one the snapshot had.
    let (store, proxy) = one_connection_backend(&db).await;
    // The pooled connection is open and idle before the pause.
    assert_eq!(payload_of(&*store, "t/a").await.as_deref(), Some(&b"1"[..]));

    proxy.pause_after(b"BEGIN ISOLATION LEVEL REPEATABLE READ");
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let reader = {
        let store = store.clone();
        tokio::spawn(async move { store.snapshot("", None, T0_MS, tx).await })
    };
    // Long enough for the snapshot's BEGIN to reach the database, whose answer is held.
    tokio::time::sleep(Duration::from_millis(300)).await;
    reader.abort();
    assert!(reader.await.unwrap_err().is_cancelled());
    proxy.resume();

    // The reads that follow take the same connection, and see a write made after it.
    assert_eq!(payload_of(&*store, "t/a").await.as_deref(), Some(&b"1"[..]));
    store
        .apply(&[put("t/a", "2").into()], None, T0_MS, far_deadline())
        .await
        .unwrap();
    assert_eq!(payload_of(&*store, "t/a").await.as_deref(), Some(&b"2"[..]));

    // And no connection of the store is left inside a transaction.
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let idle_in_transaction: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'retaind'
           AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(idle_in_transaction, 0);
}
