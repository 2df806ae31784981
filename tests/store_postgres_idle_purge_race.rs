//! Postgres only: a read recorded while the retention purge is deleting keeps the message.
//!
//! The purge selects idle messages, then turns them into tombstones. A node recording a read
//! of one of them (`touch`) between the two must save it: the statement that deletes re-checks
//! the access time on the row's latest version, not only on the version it selected.

mod common;

use std::time::Duration;

use common::writes::message;
use common::{Backend, T0_MS, far_deadline, fresh_db, open_backend, topic};
use retaind::store::{OwnedWrite, Write};
use sqlx::Connection;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

#[tokio::test]
async fn a_read_recorded_while_the_purge_waits_for_the_row_saves_it() {
    let db = fresh_db(Backend::Postgres).await;
    let backend = open_backend(&db.url).await;
    let write = OwnedWrite::from(Write::Put(message("idle/read", "kept", T0_MS)));
    backend
        .apply(&[write], None, T0_MS, far_deadline())
        .await
        .unwrap();

    // Another node records a read of it, in a transaction still open when the purge starts.
    let now = T0_MS + 400 * DAY_MS;
    let mut reader = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut touch = reader.begin().await.unwrap();
    sqlx::query(
        "UPDATE retained_messages SET last_accessed_ms = $2
         WHERE topic = $1 AND last_accessed_ms < $2",
    )
    .bind("idle/read")
    .bind(now)
    .execute(&mut *touch)
    .await
    .unwrap();

    // The purge (retention: a year) selects the message on its snapshot, then waits for the row.
    let cutoff = now - 365 * DAY_MS;
    let purge = tokio::spawn({
        let backend = backend.clone();
        async move { backend.purge_idle(cutoff, now, 1000).await }
    });
    let mut watcher = sqlx::PgConnection::connect(&db.url).await.unwrap();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'
                 AND query LIKE '%victims%' AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            !purge.is_finished(),
            "the purge did not wait for the row lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    touch.commit().await.unwrap();

    let purged = purge.await.unwrap().unwrap();
    assert_eq!(
        purged, 0,
        "the message was read after the purge selected it"
    );
    let kept = backend.get_many(&[topic("idle/read")], now).await.unwrap();
    assert_eq!(kept.len(), 1, "the message is still there");
    assert_eq!(&kept[0].payload[..], b"kept");
    assert_eq!(kept[0].last_accessed_ms, now);
    let page = backend.changes(0, "", None, 100, now).await.unwrap();
    assert!(
        page.changes
            .iter()
            .all(|c| matches!(c.kind, retaind::store::ChangeKind::Put(_))),
        "no purge in the change log: {:?}",
        page.changes
    );
}
