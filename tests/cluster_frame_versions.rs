//! During a rolling upgrade across frame versions (decision 014), nodes of the two releases
//! drop each other's live messages. A node finds the live nodes of another version from their
//! heartbeats, says so once per node in its log, and counts them in a gauge; the publishes it
//! drops from such a node are counted apart from malformed messages; `--version` names a
//! release's frame version, so that an operator can tell before upgrading.

mod common;

use std::time::Duration;

use common::logs::Captured;
use common::mqtt::{Qos5, V5, v5_options, within};
use common::nats::Nats;
use common::{Backend, fresh_db, spawn_app_with, test_config};
use retaind::cluster::{FRAME_VERSION, topic_subject};
use retaind::topic::{TopicLimits, TopicName};
use sqlx::Connection;

/// The value of the metric `series` (name and labels, as the page writes them).
async fn metric(app: &common::TestApp, series: &str) -> f64 {
    let page = app.get("/metrics").await.text().await.unwrap();
    common::metric_value(&page, series)
}

async fn gauge(app: &common::TestApp) -> i64 {
    metric(app, "retaind_cluster_nodes_other_frame_version").await as i64
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
async fn nodes_and_publishes_of_another_frame_version_are_reported_and_counted() {
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

    // What a node of another release sends, and a message that is no publish at all, on the
    // subject of a topic a session here subscribes to: both dropped, counted apart, and
    // nothing delivered.
    let (mut subscriber, _) = V5::connect(v5_options(&app, "fv-sub")).await;
    subscriber.subscribe("fv/t", Qos5::AtMostOnce).await;
    let nats_client = async_nats::connect(nats.url()).await.unwrap();
    let subject = topic_subject(
        "retaind",
        &TopicName::parse("fv/t", TopicLimits::default()).unwrap(),
    );
    for body in [
        vec![FRAME_VERSION - 1, 0, 0],
        vec![FRAME_VERSION, 0xFF, 0xFF, 0xFF],
    ] {
        nats_client
            .publish(subject.clone(), body.into())
            .await
            .unwrap();
    }
    nats_client.flush().await.unwrap();
    within("both messages counted", async {
        while metric(&app, "retaind_cluster_malformed_messages_total").await < 1.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        metric(&app, "retaind_cluster_other_version_messages_total").await,
        1.0
    );
    assert_eq!(
        metric(&app, "retaind_cluster_malformed_messages_total").await,
        1.0
    );
    assert!(
        logs.lines()
            .iter()
            .any(|l| l.contains("from a node of a release whose frames this node does not read")),
        "the dropped publish of another version is logged as such"
    );
    // Had either been delivered, it would come before a publish made after both were counted.
    subscriber
        .publish("fv/t", Qos5::AtMostOnce, false, b"after")
        .await;
    let first = subscriber.next_publish().await;
    assert_eq!(&first.payload[..], b"after", "nothing of the dropped ones");

    let version = std::process::Command::new(env!("CARGO_BIN_EXE_retaind"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    let named = format!("cluster: frame version {FRAME_VERSION}");
    assert!(version.contains(&named), "{named:?} not in {version:?}");
}
