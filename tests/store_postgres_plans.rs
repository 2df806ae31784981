//! Postgres only: the store never reads `retained_messages` with a sequential scan, even through
//! the situation that once made it do so. When the table is emptied and vacuumed, its statistics
//! say "empty". A batch statement planned then picks a sequential scan for `topic = ANY($1)`, and
//! a prepared statement can keep that plan while the table grows. The test runs every store
//! operation through that situation, then reads Postgres' own counters for the table. This file
//! holds a single test, so no other test's connections share the counters or the database's
//! list of `retaind` sessions.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Backend, T0_MS, fresh_db, open_backend, topic};
use futures_util::future::join_all;
use retaind::store::{Clock, MessageProperties, Qos, RetainedMessage, Store, StoreOptions, Write};
use sqlx::Connection;

fn put(name: &str) -> Write {
    Write::Put(RetainedMessage {
        topic: topic(name),
        payload: Bytes::from_static(b"state"),
        qos: Qos::AtLeastOnce,
        properties: MessageProperties::default(),
        expires_at_ms: None,
        last_modified_ms: T0_MS,
        last_accessed_ms: T0_MS,
        revision: 0,
        writer: None,
    })
}

/// Writes `writes` at once, so that they share batches as a busy server's would.
async fn write_all(store: &Store, writes: Vec<Write>) {
    for result in join_all(writes.into_iter().map(|w| store.write(w))).await {
        result.expect("write");
    }
}

fn names(round: usize, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("fleet/{round}/{i:05}")).collect()
}

/// Drops `store` and waits until Postgres has seen all of its sessions end: a backend reports
/// its table counters when it exits, at the latest.
async fn close(store: Store, admin: &mut sqlx::PgConnection) {
    drop(store);
    let gone = async {
        loop {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'retaind'",
            )
            .fetch_one(&mut *admin)
            .await
            .unwrap();
            if open == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), gone)
        .await
        .expect("the store's connections to close");
    // An exiting backend may report its counters just after it leaves pg_stat_activity.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *admin)
        .await
        .unwrap();
}

async fn open(url: &str) -> Store {
    Store::new(
        open_backend(url).await,
        Clock::manual(T0_MS),
        StoreOptions::default(),
    )
}

#[tokio::test]
async fn a_table_emptied_and_vacuumed_is_still_read_through_its_indexes() {
    let db = fresh_db(Backend::Postgres).await;
    let schema = db
        .url
        .rsplit("search_path%3D")
        .next()
        .expect("the test schema is in the URL")
        .to_owned();
    let table = format!("{schema}.retained_messages");
    let mut admin = sqlx::PgConnection::connect(&db.url)
        .await
        .expect("connecting to the test schema");

    // Fill, then empty, then vacuum: the statistics now say the table is empty.
    let store = open(&db.url).await;
    write_all(&store, names(0, 500).iter().map(|t| put(t)).collect()).await;
    let deletes = names(0, 500)
        .iter()
        .map(|t| Write::Delete(topic(t)))
        .collect();
    write_all(&store, deletes).await;
    close(store, &mut admin).await;
    sqlx::query("VACUUM retained_messages")
        .execute(&mut admin)
        .await
        .expect("vacuum");
    // Migrations scan the table legitimately (index builds, a rewrite); count from here.
    sqlx::query("SELECT pg_stat_reset_single_table_counters($1::regclass)")
        .bind(&table)
        .execute(&mut admin)
        .await
        .expect("resetting the table's counters");

    // Enough rounds for Postgres to settle on generic plans (after five executions), with
    // the table growing meanwhile: puts, reads of present and absent topics, and deletes.
    let store = open(&db.url).await;
    for round in 1..=8 {
        let batch = names(round, 300);
        write_all(&store, batch.iter().map(|t| put(t)).collect()).await;
        let found = join_all(batch.iter().map(|t| store.get(topic(t)))).await;
        assert!(found.into_iter().all(|m| m.expect("get").is_some()));
        assert!(store.get(topic("absent/topic")).await.unwrap().is_none());
        let half = batch[..150]
            .iter()
            .map(|t| Write::Delete(topic(t)))
            .collect();
        write_all(&store, half).await;
    }
    assert_eq!(store.count(None).await.unwrap(), 8 * 150);
    store
        .maintain(Duration::from_secs(3600))
        .await
        .expect("purge");
    close(store, &mut admin).await;

    let (seq_scan, idx_scan): (i64, i64) = sqlx::query_as(
        "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables
         WHERE relid = $1::regclass",
    )
    .bind(&table)
    .fetch_one(&mut admin)
    .await
    .expect("table statistics");
    assert!(
        idx_scan > 0,
        "the counters were not reported (idx_scan {idx_scan})"
    );
    assert_eq!(seq_scan, 0, "sequential scans of retained_messages");
}
