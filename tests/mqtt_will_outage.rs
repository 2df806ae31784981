//! A retained Will that falls due while the database cannot store it: it is stored and
//! delivered once the database answers again, as fleets rely on for a device's "offline"
//! state; unless its client has connected again meanwhile, whose new state it must not
//! overwrite. Postgres behind a TCP proxy that the test cuts and restores.
//!
//! One test reads the log, which this binary's subscriber keeps (`common::logs`).

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::logs::Captured;
use common::mqtt::raw::{build, next_packet};
use common::mqtt::within;
use common::nats::Nats;
use common::process::Process;
use common::proxy::{Mode, Proxy, app_behind_proxy};
use common::{
    Backend, FreshDb, TestApp, fresh_db, postgres_host_port, postgres_url_via, spawn_app_with,
    test_config, until_store_unavailable,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const STORE_TIMEOUT: Duration = Duration::from_secs(1);

fn log() -> &'static Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| Captured::install(tracing::Level::INFO))
}

async fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
}

async fn connect(app: &TestApp, connect: &[u8]) -> TcpStream {
    let mut stream = within("a TCP connection", TcpStream::connect(app.mqtt_addr))
        .await
        .unwrap();
    send(&mut stream, connect).await;
    let ack = next_packet(&mut stream).await;
    assert_eq!(
        (ack.kind(), ack.body.as_slice()),
        (2, &[0u8, 0][..]),
        "CONNACK"
    );
    stream
}

/// A 3.1.1 device whose Will marks it offline, retained.
async fn device(app: &TestApp, id: &str) -> TcpStream {
    let will = build::Will {
        topic: &format!("status/{id}"),
        payload: b"offline",
        qos: 1,
        retain: true,
        props: &[],
    };
    connect(app, &build::connect_with_will(id, true, 60, None, will)).await
}

/// A 3.1.1 client subscribed to `status/#` at QoS 0.
async fn watcher(app: &TestApp) -> TcpStream {
    let mut stream = connect(app, &build::connect("watcher", true, 60, None)).await;
    send(&mut stream, &build::subscribe(1, "status/#", 0, None)).await;
    assert_eq!(next_packet(&mut stream).await.body, [0, 1, 0], "SUBACK");
    stream
}

async fn stored(app: &TestApp, topic: &str) -> Option<String> {
    app.stored_payload(topic)
        .await
        .map(|p| String::from_utf8(p).unwrap())
}

/// The Will came once: the watcher's next message is a marker published now, on `app`.
async fn nothing_more_before_a_marker(app: &TestApp, watcher: &mut TcpStream) {
    let mut marker = connect(app, &build::connect("marker", true, 60, None)).await;
    let publish = build::publish("status/marker", 0, false, false, 0, None, b"m");
    send(&mut marker, &publish).await;
    let next = next_packet(watcher).await.publish(false);
    assert_eq!(next.topic, "status/marker", "the Will once: {next:?}");
}

/// Until the log says that `id`'s Will was dropped for its client's new connection. Past the
/// helpers' 10 s deadline: with several nodes a try waits for two heartbeat passes (2 s
/// apart) after the database answers, then for its own wait (up to 5 s).
async fn until_will_dropped(log: &Captured, id: &str) {
    until_logged(
        log,
        id,
        "the Will is not published: its client connected again",
    )
    .await;
}

/// Until the log has a line about client `id` that says `what`, for at most 30 s.
async fn until_logged(log: &Captured, id: &str, what: &str) {
    let client = format!("client={id}");
    let found = async {
        while !log
            .lines()
            .iter()
            .any(|l| l.contains(&client) && l.contains(what))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), found)
        .await
        .unwrap_or_else(|_| panic!("no log line for {id} saying {what:?}"));
}

/// The next packet for `stream`, however long it takes to come (at most 30 s).
async fn next_packet_within_30s(stream: &mut TcpStream) -> common::mqtt::raw::RawPacket {
    tokio::time::timeout(Duration::from_secs(30), stream.peek(&mut [0u8; 1]))
        .await
        .expect("a packet within 30 s")
        .unwrap();
    next_packet(stream).await
}

/// The device `id`, connected again, publishes its retained "online", and the watcher's next
/// message is that: the dropped Will never arrives.
async fn online_again(device: &mut TcpStream, watcher: &mut TcpStream, id: &str) {
    let topic = format!("status/{id}");
    send(
        device,
        &build::publish(&topic, 1, true, false, 7, None, b"online"),
    )
    .await;
    let ack = next_packet(device).await;
    assert_eq!(
        (ack.kind(), ack.body.as_slice()),
        (4, &[0u8, 7][..]),
        "PUBACK"
    );
    let got = next_packet(watcher).await.publish(false);
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        (topic.as_str(), &b"online"[..]),
        "the dropped Will never arrives"
    );
}

/// The connection ends without a DISCONNECT while the database is away: the Will is due, its
/// write fails and is tried again, and once the database is back it is stored and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_will_due_while_the_database_is_away_is_stored_when_it_returns() {
    log();
    let (app, proxy) = app_behind_proxy(STORE_TIMEOUT).await;
    let mut watcher = watcher(&app).await;
    let d1 = device(&app, "d1").await;

    proxy.fail(Mode::Blackhole);
    drop(d1);
    until_store_unavailable(&app, "write batch", 2.0).await;
    assert_eq!(app.store().count(None).await.ok(), None, "still away");
    proxy.restore();

    let will = next_packet(&mut watcher).await.publish(false);
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("status/d1", &b"offline"[..])
    );
    assert_eq!(stored(&app, "status/d1").await.as_deref(), Some("offline"));
    nothing_more_before_a_marker(&app, &mut watcher).await;
}

/// The device connects again while its Will waits for the database: the Will is dropped, and
/// the device's own "online", stored once the database is back, stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_waiting_for_the_database_is_dropped_when_its_client_connects_again() {
    let log = log();
    let (app, proxy) = app_behind_proxy(STORE_TIMEOUT).await;
    let mut watcher = watcher(&app).await;
    let first = device(&app, "d2").await;

    proxy.fail(Mode::Blackhole);
    drop(first);
    until_store_unavailable(&app, "write batch", 1.0).await;
    let mut again = device(&app, "d2").await;
    until_will_dropped(log, "d2").await;
    proxy.restore();
    online_again(&mut again, &mut watcher, "d2").await;
    assert_eq!(stored(&app, "status/d2").await.as_deref(), Some("online"));
}

/// Two nodes of a service; the first reaches the database through a proxy the test can cut.
async fn two_nodes_the_first_behind_a_proxy(
    store_timeout: Duration,
) -> (Nats, TestApp, Proxy, TestApp) {
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let url = db.url.clone();
    let proxy = Proxy::start(postgres_host_port(&url)).await;
    let mut a = test_config(&postgres_url_via(&url, proxy.addr));
    a.cluster_url = Some(nats.url());
    a.store_timeout = store_timeout;
    let a = spawn_app_with(db, a).await;
    let mut b = test_config(&url);
    b.cluster_url = Some(nats.url());
    let b = spawn_app_with(FreshDb::shared(&url), b).await;
    (nats, a, proxy, b)
}

/// With several nodes, the device connects again on another node, which a node waiting to
/// store its Will learns from the client id's claim in the database: the Will is dropped
/// there once the database answers, and never written over the device's "online".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_waiting_for_the_database_is_dropped_when_its_client_connects_to_another_node() {
    let log = log();
    let (_nats, a, proxy, b) = two_nodes_the_first_behind_a_proxy(STORE_TIMEOUT).await;
    let mut watcher = watcher(&b).await;
    let first = device(&a, "d3").await;

    proxy.fail(Mode::Blackhole);
    drop(first);
    until_store_unavailable(&a, "write batch", 1.0).await;
    let mut again = device(&b, "d3").await;
    proxy.restore();
    until_will_dropped(log, "d3").await;
    online_again(&mut again, &mut watcher, "d3").await;
    assert_eq!(stored(&a, "status/d3").await.as_deref(), Some("online"));
    assert_eq!(stored(&b, "status/d3").await.as_deref(), Some("online"));
}

/// The revision of `topic`'s retained message, read straight from the database.
async fn revision(url: &str, topic: &str) -> Option<i64> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT revision FROM retained_messages WHERE topic = $1 AND NOT deleted")
        .bind(topic)
        .fetch_optional(&mut conn)
        .await
        .unwrap()
}

/// A node cut off from the database for longer than the dead time, with a Will waiting there:
/// the other node takes it for dead, adopts the session and publishes the Will. Once the cut
/// node reaches the database again it learns it was taken for dead and drops its copy, so the
/// Will is published once, service-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_waiting_on_a_node_taken_for_dead_is_published_once_by_the_node_that_adopted_it() {
    let log = log();
    // Patience of twelve 3 s timeouts: the cut node still waits when the others bury it.
    let (_nats, a, proxy, b) = two_nodes_the_first_behind_a_proxy(Duration::from_secs(3)).await;
    let mut watcher = watcher(&b).await;
    let d4 = device(&a, "d4").await;

    proxy.fail(Mode::Refuse);
    drop(d4);
    until_store_unavailable(&a, "write batch", 1.0).await;
    // Past the helpers' 10 s deadline: A is dead 10 s after its last heartbeat.
    let will = next_packet_within_30s(&mut watcher).await.publish(false);
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("status/d4", &b"offline"[..])
    );
    let stored_once = revision(&b.db.url, "status/d4").await;
    assert!(stored_once.is_some(), "stored by B");

    proxy.restore();
    until_logged(log, "d4", "the other nodes took this node for dead").await;
    assert_eq!(
        revision(&b.db.url, "status/d4").await,
        stored_once,
        "not stored again"
    );
    nothing_more_before_a_marker(&b, &mut watcher).await;
}

/// The Will of a client whose node was killed is the adopter's to publish, after its delay;
/// when the adopter cannot store it then, it is tried again too, and arrives once the
/// database answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_will_due_while_the_database_is_away_is_stored_when_it_returns() {
    let log = log();
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let url = db.url.clone();
    let proxy = Proxy::start(postgres_host_port(&url)).await;
    let mut config = test_config(&postgres_url_via(&url, proxy.addr));
    config.cluster_url = Some(nats.url());
    config.store_timeout = Duration::from_secs(3);
    let a = spawn_app_with(db, config).await;
    let args = ["--cluster-url", &nats.url(), "--cluster-dead-after", "4s"];
    let mut b = Process::start(&url, &args).await;
    let mut watcher = watcher(&a).await;
    // A persistent session (300 s) whose retained Will waits 5 s.
    let will = build::Will {
        topic: "status/d5",
        payload: b"offline",
        qos: 1,
        retain: true,
        props: &[0x18, 0, 0, 0, 5],
    };
    let connect = build::connect_with_will("d5", false, 60, Some(&[0x11, 0, 0, 1, 0x2c]), will);
    let mut d5 = within("a TCP connection", TcpStream::connect(b.mqtt))
        .await
        .unwrap();
    send(&mut d5, &connect).await;
    assert_eq!(next_packet(&mut d5).await.kind(), 2, "CONNACK");

    b.kill().await;
    // B is dead 4 s after its last heartbeat (`--cluster-dead-after`).
    until_logged(log, "d5", "holding the session of a node that is gone").await;
    proxy.fail(Mode::Refuse);
    until_store_unavailable(&a, "write batch", 1.0).await;
    proxy.restore();

    let will = next_packet_within_30s(&mut watcher).await.publish(false);
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("status/d5", &b"offline"[..])
    );
    assert_eq!(stored(&a, "status/d5").await.as_deref(), Some("offline"));
    nothing_more_before_a_marker(&a, &mut watcher).await;
}
