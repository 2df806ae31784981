//! During a rolling upgrade across frame versions (decision 014), nodes of the two releases
//! drop each other's live messages. A node finds the live nodes of another version from their
//! heartbeats, says so once per node in its log, and counts them in a gauge; `--version` names
//! a release's frame version, so that an operator can tell before upgrading.

mod common;

use std::time::Duration;

use common::logs::Captured;
use common::mqtt::within;
use common::nats::Nats;
use common::{Backend, fresh_db, spawn_app_with, test_config};
use retaind::cluster::FRAME_VERSION;
use sqlx::Connection;

async fn gauge(app: &common::TestApp) -> i64 {
    let page = app.get("/metrics").await.text().await.unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix("retaind_cluster_nodes_other_frame_version "))
        .expect("the gauge is on the page")
        .parse()
        .unwrap()
}

/// Waits until the gauge reads `n` (`what` names the wait).
async fn until_gauge(app: &common::TestApp, n: i64, what: &str) {
    within(what, async {
        while gauge(app).await != n {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_live_node_of_another_frame_version_is_reported_once_and_counted_until_it_leaves() {
    let logs = Captured::install(tracing::Level::WARN);
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let mut config = test_config(&db.url);
    config.cluster_url = Some(nats.url());
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let app = spawn_app_with(db, config).await;
    assert_eq!(gauge(&app).await, 0, "alone");

    // Heartbeats as three other nodes would write them: a release of an older frame version,
    // one of this version, and one from before releases recorded theirs.
    let older = i16::from(FRAME_VERSION) - 1;
    sqlx::query(
        "INSERT INTO cluster_nodes (node, frame_version) \
         VALUES ('older', $1), ('same', $2), ('unrecorded', NULL)",
    )
    .bind(older)
    .bind(i16::from(FRAME_VERSION))
    .execute(&mut conn)
    .await
    .unwrap();
    until_gauge(&app, 1, "the node of another version counted").await;
    // Another heartbeat pass (every 2 s), still counted and not reported again.
    sqlx::query("UPDATE cluster_nodes SET heartbeat_at = now() WHERE node <> 'older'")
        .execute(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(gauge(&app).await, 1);
    let reported: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("a node of another release"))
        .collect();
    assert_eq!(reported.len(), 1, "once: {reported:?}");
    assert!(
        reported[0].contains("node=older")
            && reported[0].contains(&format!("frame_version={older}"))
            && reported[0].contains(&format!("this_node={FRAME_VERSION}")),
        "{reported:?}"
    );

    sqlx::query("DELETE FROM cluster_nodes WHERE node = 'older'")
        .execute(&mut conn)
        .await
        .unwrap();
    until_gauge(&app, 0, "the node of another version gone from the count").await;

    let version = std::process::Command::new(env!("CARGO_BIN_EXE_retaind"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    let named = format!("cluster: frame version {FRAME_VERSION}");
    assert!(version.contains(&named), "{named:?} not in {version:?}");
}
