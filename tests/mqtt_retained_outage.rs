//! A database outage during a retained delivery: the subscriber keeps its connection and its
//! subscription, and gets every retained message once the database answers again, the delivery
//! going on where it stopped; only an outage longer than twelve store timeouts ends the
//! connection (0x80). Postgres behind a TCP proxy that the test cuts and restores.

mod common;

use std::time::{Duration, Instant};

use common::mqtt::raw::{build, next_packet, read_packet};
use common::mqtt::within;
use common::proxy::{Mode, app_behind_proxy};
use common::{TestApp, store_unavailable, until_store_unavailable};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const STORE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a delivery keeps reading a page again (src/broker/retained.rs: `RETRY_FOR`).
const PATIENCE: Duration = Duration::from_secs(12);

async fn retain_all(app: &TestApp, topics: &[String], payload: &[u8]) {
    for t in topics {
        let res = app
            .publish(
                format!("/topics/{}?retain=true", common::encode(t)),
                payload.to_vec(),
            )
            .await;
        assert_eq!(res.status(), 200, "{t}");
    }
}

/// A connection whose receive buffer stays small (Linux would grow it to megabytes), so that
/// what the broker has queued for it stays queued until the test reads it.
async fn connect(app: &TestApp, client_id: &str, v5: bool) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let mut stream = within("a TCP connection", socket.connect(app.mqtt_addr))
        .await
        .unwrap();
    let props: Option<&[u8]> = v5.then_some(&[]);
    send(&mut stream, &build::connect(client_id, true, 60, props)).await;
    assert_eq!(next_packet(&mut stream).await.kind(), 2, "CONNACK");
    stream
}

async fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
}

async fn stored(app: &TestApp) -> u64 {
    app.store().count(None).await.unwrap()
}

/// The first page is read before the SUBACK. While the database is away the SUBSCRIBE is
/// still answered, the subscription is live (a message published then arrives), and the
/// retained messages follow once the database is back: a wildcard's scan, and an exact
/// filter's point read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_made_while_the_database_is_away_gets_its_retained_messages_when_it_returns()
{
    let (app, proxy) = app_behind_proxy(STORE_TIMEOUT).await;
    let topics: Vec<String> = (0..3).map(|i| format!("away/{i}")).collect();
    retain_all(&app, &topics, b"kept").await;
    retain_all(&app, &["exact/one".to_owned()], b"kept").await;
    let mut subscriber = connect(&app, "subscriber", true).await;
    let mut publisher = connect(&app, "publisher", true).await;

    proxy.fail(Mode::Blackhole);
    send(
        &mut subscriber,
        &build::subscribe(1, "away/#", 1, Some(&[])),
    )
    .await;
    let suback = next_packet(&mut subscriber).await;
    assert_eq!(suback.kind(), 9, "SUBACK: {suback:?}");
    assert_eq!(suback.body, [0, 1, 0, 1], "granted QoS 1: {suback:?}");
    assert!(
        store_unavailable(&app, "scan") >= 1.0,
        "the first page was tried"
    );
    // An exact filter's retained message is a point read, not a scan: the same holds.
    send(
        &mut subscriber,
        &build::subscribe(2, "exact/one", 1, Some(&[])),
    )
    .await;
    let suback = next_packet(&mut subscriber).await;
    assert_eq!(suback.body, [0, 2, 0, 1], "granted QoS 1: {suback:?}");

    send(
        &mut publisher,
        &build::publish("away/live", 0, false, false, 0, Some(&[]), b"live"),
    )
    .await;
    let live = next_packet(&mut subscriber).await.publish(true);
    assert_eq!(
        (live.topic.as_str(), live.retain, &live.payload[..]),
        ("away/live", false, &b"live"[..])
    );

    until_store_unavailable(&app, "scan", 2.0).await;
    proxy.restore();
    let (mut scanned, mut exact) = (Vec::new(), Vec::new());
    for _ in 0..=topics.len() {
        let p = next_packet(&mut subscriber).await.publish(true);
        assert!(p.retain, "a retained message: {p:?}");
        assert_eq!(p.payload, b"kept");
        if p.qos == 1 {
            send(&mut subscriber, &build::ack(0x40, p.pkid)).await;
        }
        if p.topic.starts_with("away/") {
            scanned.push(p.topic);
        } else {
            exact.push(p.topic);
        }
    }
    assert_eq!(scanned, topics, "the scan's, in order");
    assert_eq!(exact, ["exact/one"]);
    send(&mut subscriber, &[0xC0, 0]).await;
    assert_eq!(
        next_packet(&mut subscriber).await.kind(),
        13,
        "PINGRESP: still connected"
    );
    assert_eq!(stored(&app).await, 4);
}

/// A delivery of 300 retained messages of 100 KiB: its first page (250 of them, 25 MiB) is
/// read before the SUBACK, and the next only once the client has taken most of it, which the
/// two sockets' buffers cannot hold. The database goes away before that: reading the next page
/// fails, again and again, and once the database returns the rest arrive, each once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_delivery_cut_by_a_database_outage_goes_on_where_it_stopped() {
    const SET: usize = 300;
    let (app, proxy) = app_behind_proxy(STORE_TIMEOUT).await;
    let topics: Vec<String> = (0..SET).map(|i| format!("big/{i:03}")).collect();
    let payload = vec![b'p'; 100 << 10];
    retain_all(&app, &topics, &payload).await;
    let mut subscriber = connect(&app, "reader", false).await;
    send(&mut subscriber, &build::subscribe(1, "big/#", 0, None)).await;
    let suback = next_packet(&mut subscriber).await;
    assert_eq!(suback.body, [0, 1, 0], "SUBACK granting QoS 0: {suback:?}");

    proxy.fail(Mode::Blackhole);
    let before = store_unavailable(&app, "scan");
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < SET {
            let p = next_packet(&mut subscriber).await.publish(false);
            assert!(p.retain, "a retained message: {}", p.topic);
            assert_eq!(p.payload.len(), 100 << 10, "{}", p.topic);
            got.push(p.topic);
        }
        (subscriber, got)
    });
    // The next page's read and at least one read again failed.
    until_store_unavailable(&app, "scan", before + 2.0).await;
    assert!(!reader.is_finished(), "the rest waits for the database");
    proxy.restore();

    let (mut subscriber, got) = reader.await.unwrap();
    assert_eq!(got, topics, "every retained message once, in order");
    send(&mut subscriber, &[0xC0, 0]).await;
    assert_eq!(
        next_packet(&mut subscriber).await.kind(),
        13,
        "PINGRESP: still connected"
    );
    assert_eq!(stored(&app).await, SET as u64);
}

/// Past twelve store timeouts of failed reads the delivery is given up: the client is told
/// (MQTT 5 DISCONNECT 0x80) and closed, as before this patience, and nothing stored is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_delivery_the_database_cannot_serve_for_twelve_store_timeouts_ends_with_0x80() {
    let (app, proxy) = app_behind_proxy(STORE_TIMEOUT).await;
    let topics: Vec<String> = (0..3).map(|i| format!("gone/{i}")).collect();
    retain_all(&app, &topics, b"kept").await;
    let mut subscriber = connect(&app, "subscriber", true).await;

    proxy.fail(Mode::Refuse);
    let started = Instant::now();
    send(
        &mut subscriber,
        &build::subscribe(1, "gone/#", 1, Some(&[])),
    )
    .await;
    let suback = next_packet(&mut subscriber).await;
    assert_eq!(suback.body, [0, 1, 0, 1], "granted QoS 1: {suback:?}");

    let most = PATIENCE + Duration::from_secs(10);
    // Waits for bytes to arrive (`readable` may answer at once for what was already read).
    tokio::time::timeout(most, subscriber.peek(&mut [0u8; 1]))
        .await
        .expect("the connection is ended within its patience and a last read")
        .unwrap();
    let disconnect = next_packet(&mut subscriber).await;
    let waited = started.elapsed();
    assert_eq!(disconnect.disconnect_reason(), 0x80, "{disconnect:?}");
    assert!(
        waited >= PATIENCE - STORE_TIMEOUT,
        "given up after {waited:?}, before its patience ({PATIENCE:?})"
    );
    assert!(
        read_packet(&mut subscriber).await.is_none(),
        "closed after the DISCONNECT"
    );

    proxy.restore();
    within("the database to answer again", async {
        while app.get("/readyz").await.status() != 200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(stored(&app).await, 3);
}
