//! `retaind cluster status`, the operator's view of the service's nodes, run as a process
//! against the Postgres database of a live two-node service, then of one whose nodes are gone.

mod common;

use std::time::Duration;

use common::TestApp;
use common::mqtt::raw::{Raw, build};
use common::mqtt::{Qos5, V5, v5_options, within};
use common::nats::Nats;
use serde_json::Value;

/// What `retaind cluster status` printed, with `--json` or as a table.
fn status(database_url: &str, json: bool) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_retaind"));
    command.args(["cluster", "status", "--database-url", database_url]);
    if json {
        command.arg("--json");
    }
    let out = command.output().expect("running retaind");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    printed
}

fn node_id(app: &TestApp) -> String {
    let running = app.running.as_ref().expect("running");
    running.broker.cluster().expect("a node").node().to_owned()
}

/// MQTT 5 CONNECT of a persistent session (expiry 300 s).
fn persistent(id: &str) -> Vec<u8> {
    build::connect(id, true, 60, Some(&[0x11, 0, 0, 1, 0x2C]))
}

#[tokio::test]
async fn cluster_status_shows_each_node_with_its_clients_and_sessions_and_what_awaits_adoption() {
    let nats = Nats::start().await;
    let mut nodes = common::cluster_nodes(&nats.url(), 2).await;
    let url = nodes[0].db.url.clone();
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();

    // On A: a plain client and a persistent session, connected. On B: a persistent session
    // subscribed to `inbox/#`, then away, with a message queued for it in Postgres.
    let (_plain, _) = V5::connect(v5_options(&a, "plain")).await;
    let (mut on_a, ack) = Raw::connect(&a, &persistent("phone-a")).await;
    assert_eq!(ack.body[0], 0);
    let (mut on_b, _) = Raw::connect(&b, &persistent("phone-b")).await;
    on_b.send(&build::subscribe(1, "inbox/#", 1, Some(&[])))
        .await;
    on_b.expect(9).await;
    on_b.send(&[0xE0, 0]).await;
    drop(on_b);
    let (mut publisher, _) = V5::connect(v5_options(&b, "publisher")).await;
    let (a_id, b_id) = (node_id(&a), node_id(&b));
    let read = || -> Value { serde_json::from_str(&status(&url, true)).unwrap() };
    let node = |status: &Value, id: &str| -> Value {
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == id)
            .unwrap_or_else(|| panic!("node {id} in {status}"))
            .clone()
    };
    within("phone-b's session to be offline", async {
        while node(&read(), &b_id)["offline_sessions"] != 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    publisher
        .publish("inbox/1", Qos5::AtLeastOnce, false, b"while away")
        .await;
    within("the message queued for phone-b in Postgres", async {
        while read()["queued_messages"] != 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    let live = read();
    assert_eq!(live["nodes"].as_array().unwrap().len(), 2, "{live}");
    let (on_a_row, on_b_row) = (node(&live, &a_id), node(&live, &b_id));
    assert_eq!(
        (
            &on_a_row["clients"],
            &on_a_row["sessions"],
            &on_a_row["offline_sessions"]
        ),
        (&Value::from(2), &Value::from(1), &Value::from(0)),
        "A: plain and phone-a connected, phone-a's session held: {live}"
    );
    assert_eq!(
        (
            &on_b_row["clients"],
            &on_b_row["sessions"],
            &on_b_row["offline_sessions"]
        ),
        (&Value::from(1), &Value::from(1), &Value::from(1)),
        "B: the publisher connected, phone-b's session offline: {live}"
    );
    for row in [&on_a_row, &on_b_row] {
        assert_eq!(row["silent"], false, "{live}");
        assert_eq!(
            row["frame_version"],
            retaind::cluster::FRAME_VERSION,
            "{live}"
        );
        assert!(row["heartbeat_age_secs"].as_f64().unwrap() < 10.0, "{live}");
        assert_eq!(row["dead_after_secs"], 10.0, "the default: {live}");
    }
    assert_eq!(live["sessions_awaiting_adoption"], 0, "{live}");
    let table = status(&url, false);
    assert!(table.contains(&a_id) && table.contains(&b_id), "{table}");
    assert!(table.contains("2 live node(s); 0 session(s)"), "{table}");

    // Every node gone (stopped: they leave at once), and a row left by one that died: its
    // heartbeat is old, and nobody is left to bury it.
    on_a.send(&[0xE0, 0]).await;
    drop(on_a);
    let _db = a.stop().await;
    b.stop().await;
    common::execute_sql(
        &url,
        "INSERT INTO cluster_nodes (node, started_at, heartbeat_at, frame_version) \
         VALUES ('died', now() - interval '1 hour', now() - interval '1 minute', 3)",
    )
    .await;
    let gone = read();
    let died = node(&gone, "died");
    assert_eq!(died["silent"], true, "{gone}");
    assert!(
        died["heartbeat_age_secs"].as_f64().unwrap() >= 60.0,
        "{gone}"
    );
    assert_eq!(gone["nodes"].as_array().unwrap().len(), 1, "{gone}");
    assert_eq!(
        gone["sessions_awaiting_adoption"], 2,
        "phone-a and phone-b: {gone}"
    );
    assert_eq!(gone["queued_messages"], 1, "{gone}");
    let table = status(&url, false);
    assert!(table.contains("silent: dead"), "{table}");
    assert!(
        table.contains("0 live node(s); 2 session(s) of nodes that are gone, awaiting adoption"),
        "{table}"
    );
    assert_eq!(
        died["dead_after_secs"], 10.0,
        "a release's that did not record it: {gone}"
    );

    // A node silent as long, whose own dead time (--cluster-dead-after) it has not yet passed.
    common::execute_sql(
        &url,
        "INSERT INTO cluster_nodes (node, started_at, heartbeat_at, frame_version, dead_after_ms) \
         VALUES ('patient', now() - interval '1 hour', now() - interval '1 minute', 3, 120000)",
    )
    .await;
    let waiting = read();
    let patient = node(&waiting, "patient");
    assert_eq!(
        (&patient["silent"], &patient["dead_after_secs"]),
        (&Value::from(false), &Value::from(120.0)),
        "{waiting}"
    );
    assert_eq!(node(&waiting, "died")["silent"], true, "{waiting}");
    let table = status(&url, false);
    assert!(table.contains("1 live node(s)"), "{table}");
}

/// A database that accepts the connection and never answers: the tool says so after its 10 s,
/// with an error and a failing exit, rather than hanging.
#[tokio::test]
async fn cluster_status_gives_up_on_a_database_that_does_not_answer() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            kept.push(socket);
        }
    });
    let started = std::time::Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_retaind"))
        .args(["cluster", "status", "--database-url"])
        .arg(format!("postgres://retaind@{addr}/retaind"))
        .env_remove("RUST_BACKTRACE")
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), out)
        .await
        .expect("the tool to give up")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("the database did not answer within 10s"),
        "{stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    held.abort();
}
