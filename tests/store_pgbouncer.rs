//! retaind behind PgBouncer in session mode, the pooler most Postgres installations put in
//! front, configured with nothing for retaind's sake: a node serves writes, reads, retained
//! deliveries and watches through it, a write given up at its deadline is still stopped in the
//! database (its session, pinned to one server connection in session mode, is the one ended),
//! and a node of a cluster claims client ids and keeps sessions through it.
//!
//! PgBouncer refuses startup parameters it does not know; before 2026-12-06 retaind sent two
//! (sqlx's `extra_float_digits`, and the cluster pools' `options`), so no node could connect
//! through a PgBouncer left as installed.

mod common;

use std::time::{Duration, Instant};

use common::mqtt::raw::{Raw, build};
use common::nats::Nats;
use common::pgbouncer::PgBouncer;
use common::sse::Sse;
use common::{FreshDb, TestApp, execute_sql, postgres_base_url, spawn_app_with, test_config};
use sqlx::{Connection, Executor};

const STORE_TIMEOUT: Duration = Duration::from_secs(1);

/// A database of the test's own (PgBouncer passes no `options`, so the schemas the other tests
/// select with `search_path` cannot be used), dropped by [`Scratch::drop_now`].
struct Scratch {
    /// The database, straight.
    direct: String,
    name: String,
}

impl Scratch {
    async fn new() -> Self {
        let name = format!("retaind_pgb_{}", uuid::Uuid::new_v4().simple());
        execute_sql(&postgres_base_url(), &format!("CREATE DATABASE {name}")).await;
        let mut url = reqwest::Url::parse(&postgres_base_url()).unwrap();
        url.set_path(&name);
        url.set_query(None);
        Self {
            direct: url.to_string(),
            name,
        }
    }

    async fn drop_now(self) {
        let sql = format!("DROP DATABASE {} WITH (FORCE)", self.name);
        execute_sql(&postgres_base_url(), &sql).await;
    }
}

async fn node(url: &str, cluster: Option<&Nats>) -> TestApp {
    let mut config = test_config(url);
    config.store_timeout = STORE_TIMEOUT;
    config.cluster_url = cluster.map(Nats::url);
    spawn_app_with(FreshDb::shared(url), config).await
}

/// A session of an operator's, straight on the database, holding locked the row that
/// `select_for_update` finds with `key`; and its backend's pid.
async fn lock_row(
    direct: &str,
    select_for_update: &'static str,
    key: &str,
) -> (sqlx::PgConnection, i32) {
    let mut conn = sqlx::PgConnection::connect(direct).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.execute("BEGIN").await.unwrap();
    sqlx::query(select_for_update)
        .bind(key)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    (conn, pid)
}

/// How many sessions wait for `pid`'s locks.
async fn waiting_for(direct: &str, pid: i32) -> i64 {
    let mut conn = sqlx::PgConnection::connect(direct).await.unwrap();
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
    )
    .bind(pid)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_pgbouncer_in_session_mode_serves_and_stops_abandoned_writes() {
    let scratch = Scratch::new().await;
    let bouncer = PgBouncer::start(&scratch.direct).await;
    let app = node(&bouncer.url_for(&scratch.direct), None).await;

    // Writes and reads.
    app.retain("a%2Fx", "x0").await;
    app.retain("a%2Fy", "y0").await;
    assert_eq!(app.stored_payload("a/x").await.unwrap(), b"x0");
    let listed: serde_json::Value = app.get("/retainedMessage").await.json().await.unwrap();
    assert_eq!(listed["retainedTopics"].as_array().unwrap().len(), 2);

    // A retained delivery (a scan) to an MQTT subscriber.
    let (mut sub, _) = Raw::connect(&app, &build::connect("sub", true, 60, None)).await;
    sub.send(&build::subscribe(1, "a/#", 0, None)).await;
    sub.expect(9).await;
    let mut delivered = vec![sub.expect(3).await.publish(false).topic];
    delivered.push(sub.expect(3).await.publish(false).topic);
    delivered.sort();
    assert_eq!(delivered, ["a/x", "a/y"]);

    // A watch sees a change as it is made (the change feed's LISTEN).
    let res = app
        .http
        .get(app.url("/retainedMessage-watch?topicFilter=a%2F%2B"))
        .send()
        .await
        .unwrap();
    let mut watch = Sse::new(res);
    while watch.expect().await.event != "synced" {}
    app.retain("a%2Fz", "z0").await;
    let change = watch.expect().await;
    assert_eq!(
        (change.event.as_str(), &change.json()["topic"]),
        ("put", &"a/z".into())
    );

    // A write held up past its deadline is given up (503) and its database session ended while
    // the lock it waits for is still held: it never commits.
    let (mut locker, pid) = lock_row(
        &scratch.direct,
        "SELECT 1 FROM retained_messages WHERE topic = $1 FOR UPDATE",
        "a/y",
    )
    .await;
    let publish = app
        .http
        .post(app.url("/topics/a%2Fy?retain=true&qos=1"))
        .body("y1")
        .send();
    assert_eq!(publish.await.unwrap().status(), 503);
    let started = Instant::now();
    while waiting_for(&scratch.direct, pid).await > 0 {
        assert!(
            started.elapsed() < 3 * STORE_TIMEOUT,
            "the abandoned write still waits in the database"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    locker.execute("ROLLBACK").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.stored_payload("a/y").await.unwrap(), b"y0");
    // And the next write goes through.
    app.retain("a%2Fy", "y2").await;
    assert_eq!(app.stored_payload("a/y").await.unwrap(), b"y2");

    app.stop().await;
    drop(bouncer);
    scratch.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_behind_pgbouncer_claims_client_ids_and_keeps_sessions() {
    let nats = Nats::start().await;
    let scratch = Scratch::new().await;
    let bouncer = PgBouncer::start(&scratch.direct).await;
    let app = node(&bouncer.url_for(&scratch.direct), Some(&nats)).await;

    // A persistent session: its claim, its row and its subscriptions are written through the
    // cluster's pools.
    let expiry = [0x11, 0, 0, 0x0e, 0x10];
    let (mut device, ack) =
        Raw::connect(&app, &build::connect("device", false, 60, Some(&expiry))).await;
    assert_eq!(
        ack.body[..2],
        [0x00, 0x00],
        "CONNACK Success, no session yet"
    );
    device
        .send(&build::subscribe(1, "cmd/device", 1, Some(&[])))
        .await;
    assert_eq!(device.expect(9).await.body, [0, 1, 0, 1], "SUBACK QoS 1");
    device.send(&build::disconnect_v5(0)).await;
    drop(device);

    // Connected, it holds the claim row the next CONNECT of its id takes over.
    let (_device, ack) =
        Raw::connect(&app, &build::connect("device", false, 60, Some(&expiry))).await;
    assert_eq!(ack.body[..2], [0x01, 0x00], "session present");

    // A claim held up by a lock is ended by the database itself at the pools' statement
    // timeout, set on their sessions through the pooler: it cannot commit late and take the
    // id from a newer connection.
    let (mut locker, pid) = lock_row(
        &scratch.direct,
        "SELECT 1 FROM cluster_clients WHERE client_id = $1 FOR UPDATE",
        "device",
    )
    .await;
    let mut held_up = Raw::open(&app).await;
    held_up
        .send(&build::connect("device", false, 60, Some(&expiry)))
        .await;
    let started = Instant::now();
    while waiting_for(&scratch.direct, pid).await == 0 {
        assert!(
            started.elapsed() < 2 * STORE_TIMEOUT,
            "the claim never waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while waiting_for(&scratch.direct, pid).await > 0 {
        assert!(
            started.elapsed() < 2 * STORE_TIMEOUT,
            "the claim still waits in the database"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = held_up.recv().await.expect("a CONNACK");
    assert_eq!(
        (refused.kind(), refused.body[1]),
        (2, 0x88),
        "Server unavailable"
    );
    locker.execute("ROLLBACK").await.unwrap();

    app.stop().await;
    drop(bouncer);
    scratch.drop_now().await;
}
