//! Devices sharing a client id close each other in turn: each take-over is counted, and one
//! client id taken over again and again within a minute is logged once, naming it.
//!
//! One test in this binary: it installs the process's log subscriber.

mod common;

use std::time::{Duration, Instant};

use common::logs::Captured;
use common::mqtt::raw::{Raw, build};
use common::{Backend, fresh_db, spawn_app_with, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_taken_over_again_and_again_is_counted_and_logged_once() {
    let captured = Captured::install(tracing::Level::INFO);
    // Unpaced: each CONNECT of the same id would otherwise wait for its turn (once a second).
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.mqtt_connect_rate_per_client_id = 0.0;
    let app = spawn_app_with(db, config).await;
    let metrics = app.running.as_ref().unwrap().broker.metrics().clone();
    let takeovers = || {
        let page = metrics.render();
        common::metric_value(&page, "retaind_mqtt_takeovers_total")
    };
    assert_eq!(takeovers(), 0.0);
    // A reconnect after the connection ended is no take-over.
    let (raw, _) = Raw::connect(&app, &build::connect("twin", true, 60, None)).await;
    drop(raw);
    app.until_no_connections().await;
    // Seven connections in turn, each closing the one before: six take-overs.
    let mut open = Vec::new();
    for _ in 0..7 {
        let (raw, ack) = Raw::connect(&app, &build::connect("twin", true, 60, None)).await;
        assert_eq!(ack.body[1], 0);
        open.push(raw);
    }
    // Another id taken over once is an ordinary reconnect.
    for _ in 0..2 {
        open.push(
            Raw::connect(&app, &build::connect("single", true, 60, None))
                .await
                .0,
        );
    }
    assert_eq!(takeovers(), 7.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let warned = loop {
        let warned: Vec<String> = captured
            .lines()
            .into_iter()
            .filter(|l| l.contains(" WARN ") && l.contains("taken over"))
            .collect();
        if !warned.is_empty() || Instant::now() > deadline {
            break warned;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(warned.len(), 1, "once, at the fifth: {warned:?}");
    assert!(
        warned[0].contains("client=twin") && warned[0].contains("times=5"),
        "{}",
        warned[0]
    );
}
