//! The read cache across nodes: several retaind processes on one Postgres, each with its own
//! cache, must not serve each other's overwritten values for longer than the change feed
//! takes, and a node that cannot hear the feed must stop serving from its cache.
mod common;

use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{
    Backend, FreshDb, TestApp, fresh_db, postgres_host_port, spawn_app_with, test_config,
};

/// The longest a node may serve from its cache without hearing its own heartbeat (2 s), plus
/// time to notice and for the test's own requests.
const FEED_BOUND: Duration = Duration::from_secs(4);

/// Held by each test: they measure windows of the nodes' heartbeats through one Postgres
/// server, and one holding every pooled connection delays another's heartbeat past the
/// window it asserts on (seen once in six runs at four test threads, never at one).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn payload_of(app: &TestApp, topic: &str) -> (u16, Option<String>) {
    let res = app.get(&format!("/retainedMessage/{topic}")).await;
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    (status, body["payload"].as_str().map(str::to_owned))
}

/// base64 of the ASCII text `s`, as GetRetainedMessage returns payloads.
fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn eventually(app: &TestApp, topic: &str, want: (u16, Option<String>), within: Duration) {
    let started = Instant::now();
    loop {
        let got = payload_of(app, topic).await;
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < within,
            "after {within:?} still {got:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a node's cache is in use (its change feed is listening).
async fn cache_ready(app: &TestApp) {
    let started = Instant::now();
    while !app.store().cache_in_use() {
        assert!(
            started.elapsed() < FEED_BOUND,
            "the change feed never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn second_node(url: &str) -> FreshDb {
    FreshDb::shared(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_node_reaches_reads_on_another() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let db = fresh_db(Backend::Postgres).await;
    let url = db.url.clone();
    let a = spawn_app_with(db, test_config(&url)).await;
    let b = spawn_app_with(second_node(&url), test_config(&url)).await;

    cache_ready(&b).await;
    a.retain("cfg", "v1").await;
    assert_eq!(payload_of(&b, "cfg").await, (200, Some(b64("v1")))); // now cached on b
    a.retain("cfg", "v2").await;
    eventually(&b, "cfg", (200, Some(b64("v2"))), FEED_BOUND).await;
    // A delete (empty retained payload) reaches b's cache too, and so does b's own write.
    a.retain("cfg", "").await;
    eventually(&b, "cfg", (404, None), FEED_BOUND).await;
    b.retain("cfg", "v3").await;
    assert_eq!(payload_of(&b, "cfg").await, (200, Some(b64("v3"))));
    eventually(&a, "cfg", (200, Some(b64("v3"))), FEED_BOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_hear_the_others_stops_serving_from_its_cache() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let db = fresh_db(Backend::Postgres).await;
    let url = db.url.clone();
    let proxy = Proxy::start(postgres_host_port(&url)).await;
    let via_proxy = common::postgres_url_via(&url, proxy.addr);
    let a = spawn_app_with(db, test_config(&url)).await;
    // Written before b starts listening, so that no late notice of it can evict b's copy below.
    a.retain("cfg", "v1").await;
    let mut config_b = test_config(&via_proxy);
    config_b.store_timeout = Duration::from_millis(500);
    let b = spawn_app_with(second_node(&url), config_b).await;

    cache_ready(&b).await;
    assert_eq!(payload_of(&b, "cfg").await, (200, Some(b64("v1")))); // now cached on b

    // b's network to the database dies silently: no connection is closed, nothing arrives.
    proxy.stall();
    a.retain("cfg", "v2").await;
    // This read cannot have reached the database: it came from b's cache.
    assert_eq!(payload_of(&b, "cfg").await, (200, Some(b64("v1"))));
    // b may answer from its cache only until it misses its own heartbeat; then it must go to
    // the database, which it cannot reach: 503, never the overwritten v1 for longer.
    eventually(&b, "cfg", (503, None), FEED_BOUND).await;

    proxy.restore();
    eventually(&b, "cfg", (200, Some(b64("v2"))), Duration::from_secs(15)).await;
}

/// The heartbeat that proves the feed works must not wait for a connection of the pool reads
/// use: with every one of them busy (a hundred subscribers reading the retained set at once),
/// the feed still works, and the cache stays in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_reads_hold_every_pooled_connection_keeps_its_change_feed() {
    let _alone = ONE_AT_A_TIME.lock().await;
    use sqlx::{Connection, Executor};
    let db = fresh_db(Backend::Postgres).await;
    let url = db.url.clone();
    let mut config = test_config(&url);
    // The feed's listener takes one of them, reads the other.
    config.db_max_connections = 2;
    config.store_timeout = Duration::from_secs(15);
    let app = spawn_app_with(db, config).await;
    cache_ready(&app).await;

    // Reads that wait for a lock hold every connection of the pool.
    let mut locker = sqlx::PgConnection::connect(&url).await.unwrap();
    locker.execute("BEGIN").await.unwrap();
    locker
        .execute("LOCK TABLE retained_messages IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut reads = Vec::new();
    // Listings, since point reads share one query at a time: one holds the connection, waiting
    // for the lock, and the others wait for it.
    for _ in 0..3 {
        let (http, url) = (app.http.clone(), format!("{}/retainedMessage", app.base));
        reads.push(tokio::spawn(async move {
            http.get(url).send().await.unwrap().status().as_u16()
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&mut locker)
    .await
    .unwrap();
    assert_eq!(waiting, 1, "no listing holds the pool's connection");
    // Longer than the feed may go without hearing its own heartbeat (2 s).
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert!(
            app.store().cache_in_use(),
            "the change feed was declared lost while reads held the pool"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    locker.execute("ROLLBACK").await.unwrap();
    for read in reads {
        assert_eq!(read.await.unwrap(), 200);
    }
    assert!(app.store().cache_in_use());
}
