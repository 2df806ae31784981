//! Postgres only: a retained delivery abandoned as it ends (its subscriber leaves with the
//! last message, while the read's transaction is ending) logs nothing. A read-only transaction
//! that ended with a `COMMIT` and was cancelled while the `COMMIT` was on its way sent a
//! `ROLLBACK` after it, which Postgres answers with a warning ("there is no transaction in
//! progress") that an operator would chase. The database sits behind a TCP proxy that holds
//! the database's answers once a `COMMIT` has passed. One test: it installs the process's log
//! subscriber.

mod common;

use std::time::Duration;

use common::logs::Captured;
use common::proxy::one_connection_backend;
use common::{Backend, T0_MS, fresh_db, topic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_abandoned_as_it_ends_logs_no_warning() {
    let logs = Captured::install(tracing::Level::WARN);
    let db = fresh_db(Backend::Postgres).await;
    // One pooled connection: the read after the snapshot waits for it to be back.
    let (store, proxy) = one_connection_backend(&db).await;

    proxy.pause_after(b"COMMIT");
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let reader = {
        let store = store.clone();
        tokio::spawn(async move { store.snapshot("", None, T0_MS, tx).await })
    };
    let only = rx.recv().await.expect("the snapshot's message");
    assert_eq!(&only.payload[..], b"1");
    // The set is read; what remains is ending the transaction. Long enough for a COMMIT to
    // reach the database, whose answer the proxy would then hold.
    tokio::time::sleep(Duration::from_millis(300)).await;
    reader.abort();
    let _ = reader.await;
    proxy.resume();

    // The connection is back in the pool and reads.
    let found = store.get_many(&[topic("t/a")], T0_MS).await.unwrap();
    assert_eq!(found.len(), 1);
    let lines = logs.lines();
    assert!(lines.is_empty(), "{lines:#?}");
}
