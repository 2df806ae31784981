//! A large retained delivery runs on the background threads (decision 020): a subscription
//! whose retained messages take more than a page of reads moves its connection there until its
//! reads are done, and back after, on either store by default; `--mqtt-retained-delivery-priority
//! normal` keeps it where it was. Seen through `retaind_mqtt_background_connections`, with a
//! client that stops reading so that the delivery is held in the middle, then takes every
//! message, in topic order; over plain TCP, TLS and WebSocket. The connection's socket moves
//! with it (`tcp::Rehome`): the server runs in this process, and the descriptor holding the
//! server's end of the connection changes with each move (`common::sockets`).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::mqtt::raw::{Raw, build, read_packet};
use common::mqtt::ws::RawWs;
use common::sockets;
use common::tls::LocalhostCert;
use common::writes::message;
use common::{Backend, T0_MS, TestApp, fresh_db, open_backend, spawn_app_with, test_config};
use retaind::app::{DeliveryPriority, ServeConfig};
use retaind::store::{OwnedWrite, Write};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;

/// Far more than the read-ahead (4,000 messages) and the sockets' buffers hold, so that a
/// client that stops reading holds the delivery in the middle of its reads.
const MESSAGES: usize = 20_000;

async fn background_connections(app: &TestApp) -> u64 {
    let page = app.get("/metrics").await.text().await.unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix("retaind_mqtt_background_connections "))
        .expect("the gauge is on the page")
        .parse()
        .unwrap()
}

/// The gauge as it settles within `within`: the first time it reads `hoped`, or the last.
async fn background_connections_within(app: &TestApp, hoped: u64, within: Duration) -> u64 {
    let until = Instant::now() + within;
    loop {
        let now = background_connections(app).await;
        if now == hoped || Instant::now() >= until {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The server's end of one connection, known by its two addresses.
struct ServerEnd {
    server: SocketAddr,
    client: SocketAddr,
}

impl ServerEnd {
    fn of(server: SocketAddr, client: &TcpStream) -> Self {
        let client = client.local_addr().unwrap();
        Self { server, client }
    }

    /// The one descriptor that holds it now.
    fn fd(&self) -> i32 {
        let fds = sockets::server_end(self.server, self.client);
        assert_eq!(
            fds.len(),
            1,
            "one descriptor holds the server's end: {fds:?}"
        );
        fds[0]
    }

    /// Its descriptor once it is another than `old` (the socket moved), within 2 s; else `old`.
    async fn moved_from(&self, old: i32) -> i32 {
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            let fds = sockets::server_end(self.server, self.client);
            if let [fd] = fds[..]
                && (fd != old || Instant::now() >= until)
            {
                return fd;
            }
            assert!(
                Instant::now() < until,
                "descriptors of the server's end: {fds:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Reads a delivery whose subscription was just acknowledged, through `next_topic`: its first
/// messages, then (the client having stopped reading meanwhile, so the delivery is held) the
/// gauge as it settles to `hoped` and the socket's descriptor, then the rest, checked to be
/// every message once in topic order, then the gauge and the descriptor again. Returns the
/// gauge while held and once read, having checked that the socket moved there and back exactly
/// when the connection did (`first`: its descriptor before).
async fn held_then_drained_through(
    app: &TestApp,
    end: &ServerEnd,
    first: i32,
    hoped: u64,
    mut next_topic: impl AsyncFnMut() -> String,
) -> (u64, u64) {
    let mut topics = Vec::with_capacity(MESSAGES);
    for _ in 0..10 {
        topics.push(next_topic().await);
    }
    let held = background_connections_within(app, hoped, Duration::from_secs(2)).await;
    let during = end.moved_from(first).await;
    while topics.len() < MESSAGES {
        topics.push(next_topic().await);
    }
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("big/{i:05}")).collect();
    assert_eq!(topics, expected, "every message once, in topic order");
    let drained = background_connections(app).await;
    let after = end.moved_from(during).await;
    assert_eq!(
        during != first,
        held == 1,
        "the socket moves there exactly when the connection does ({first} -> {during})"
    );
    assert_eq!(
        after != during,
        held == 1 && drained == 0,
        "and back ({during} -> {after})"
    );
    (held, drained)
}

/// Background connections while a subscriber holds the delivery in the middle, and once it has
/// every message; its socket moved with it (checked here).
/// `None`: the default priority.
async fn held_then_drained(backend: Backend, priority: Option<DeliveryPriority>) -> (u64, u64) {
    let (app, priority) = seeded(backend, priority).await;
    let (mut client, _) = Raw::connect(&app, &build::connect("bulk", true, 60, None)).await;
    let end = ServerEnd::of(app.mqtt_addr, client.stream());
    let first = end.fd();
    client.send(&build::subscribe(1, "big/#", 0, None)).await;
    client.expect(9).await; // SUBACK
    let hoped = u64::from(in_background(priority));
    held_then_drained_through(&app, &end, first, hoped, async || {
        client.expect(3).await.publish(false).topic
    })
    .await
}

/// A server whose store holds `MESSAGES` retained messages under `big/`, and the priority it
/// runs large deliveries at.
async fn seeded(
    backend: Backend,
    priority: Option<DeliveryPriority>,
) -> (TestApp, DeliveryPriority) {
    seeded_with(backend, |config| {
        if let Some(priority) = priority {
            config.mqtt_retained_delivery_priority = priority;
        }
    })
    .await
}

/// [`seeded`], with the configuration as `configure` leaves it.
async fn seeded_with(
    backend: Backend,
    configure: impl FnOnce(&mut ServeConfig),
) -> (TestApp, DeliveryPriority) {
    let db = fresh_db(backend).await;
    {
        let store = open_backend(&db.url).await;
        let payload = "p".repeat(1024);
        let writes: Vec<OwnedWrite> = (0..MESSAGES)
            .map(|i| Write::Put(message(&format!("big/{i:05}"), &payload, T0_MS)).into())
            .collect();
        // In batches no larger than the write lanes make: a batch's revisions share one ticket.
        for batch in writes.chunks(1000) {
            store
                .apply(batch, None, T0_MS, common::far_deadline())
                .await
                .unwrap();
        }
    }
    let mut config = test_config(&db.url);
    configure(&mut config);
    let priority = config.mqtt_retained_delivery_priority;
    let app = spawn_app_with(db, config).await;
    assert_eq!(background_connections(&app).await, 0);
    (app, priority)
}

/// Where `priority` puts a large delivery, on either store.
fn in_background(priority: DeliveryPriority) -> bool {
    match priority {
        DeliveryPriority::Background | DeliveryPriority::Auto => true,
        DeliveryPriority::Normal => false,
    }
}

async fn a_large_retained_delivery_runs_in_the_background_until_its_reads_are_done(
    backend: Backend,
) {
    let (held, drained) = held_then_drained(backend, Some(DeliveryPriority::Background)).await;
    assert_eq!(held, 1, "in the background while the delivery is held");
    assert_eq!(drained, 0, "back once every message was read");
}

async fn with_normal_priority_a_large_retained_delivery_stays_put(backend: Backend) {
    let (held, drained) = held_then_drained(backend, Some(DeliveryPriority::Normal)).await;
    assert_eq!((held, drained), (0, 0));
}

async fn by_default_and_with_auto_a_large_retained_delivery_runs_in_the_background(
    backend: Backend,
) {
    for priority in [None, Some(DeliveryPriority::Auto)] {
        let (held, drained) = held_then_drained(backend, priority).await;
        assert_eq!((held, drained), (1, 0), "{priority:?}");
    }
}

async fn a_client_gone_in_the_middle_of_a_background_delivery_ends_as_any_other(backend: Backend) {
    let (app, _) = seeded(backend, Some(DeliveryPriority::Background)).await;
    let (mut watcher, _) = Raw::connect(&app, &build::connect("watcher", true, 60, None)).await;
    watcher.send(&build::subscribe(1, "gone/#", 0, None)).await;
    watcher.expect(9).await;
    let will = build::Will {
        topic: "gone/bulk",
        payload: b"bye",
        qos: 0,
        retain: false,
        props: &[],
    };
    let connect = build::connect_with_will("bulk", true, 60, None, will);
    let (mut client, _) = Raw::connect(&app, &connect).await;
    client.send(&build::subscribe(1, "big/#", 0, None)).await;
    client.expect(9).await;
    client.expect(3).await;
    let moved = background_connections_within(&app, 1, Duration::from_secs(2)).await;
    assert_eq!(moved, 1, "held in the background");
    drop(client);
    let will = watcher.expect(3).await.publish(false);
    assert_eq!(will.topic, "gone/bulk", "its Will, published as it ended");
    let left = background_connections_within(&app, 0, Duration::from_secs(5)).await;
    assert_eq!(left, 0);
    // The client id is free again, and large deliveries go on.
    let (mut again, _) = Raw::connect(&app, &build::connect("bulk", true, 60, None)).await;
    again.send(&build::subscribe(1, "big/00000", 0, None)).await;
    again.expect(9).await;
    assert_eq!(again.expect(3).await.publish(false).topic, "big/00000");
}

/// A TLS connection moves its socket to the background threads and back, its TLS session
/// staying in the stream (`tcp::Rehome`): every message arrives, in order, over a session that
/// moved twice.
async fn over_tls_a_large_retained_delivery_runs_in_the_background_and_arrives_whole(
    backend: Backend,
) {
    let (app, tls) = seeded_over_tls(backend).await;
    let addr = app.running.as_ref().unwrap().mqtts_addr.unwrap();
    let (mut stream, end) = tls.connect(addr).await;

    stream
        .write_all(&build::connect("bulk", true, 60, None))
        .await
        .unwrap();
    assert_eq!(next(&mut stream).await.kind(), 2, "CONNACK");
    let first = end.fd();
    stream
        .write_all(&build::subscribe(1, "big/#", 0, None))
        .await
        .unwrap();
    assert_eq!(next(&mut stream).await.kind(), 9, "SUBACK");
    let moves = held_then_drained_through(&app, &end, first, 1, async || {
        next(&mut stream).await.publish(false).topic
    })
    .await;
    assert_eq!(
        moves,
        (1, 0),
        "in the background while held, back once read"
    );
    // The session works after moving back: a ping is answered.
    stream.write_all(&[0xC0, 0]).await.unwrap();
    assert_eq!(next(&mut stream).await.kind(), 13, "PINGRESP");
}

/// Over WebSocket the socket is out of the connection's reach, under the HTTP server's upgrade:
/// the connection asks it to move (`tcp::AskToMove`), and it does at its next poll. There and
/// back, every message arriving in order.
async fn over_websocket_a_large_retained_delivery_moves_its_socket_there_and_back(
    backend: Backend,
) {
    let (app, _) = seeded(backend, Some(DeliveryPriority::Background)).await;
    let (ws, head) = RawWs::open(&app, "mqtt").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let end = ServerEnd::of(app.http_addr, ws.stream());
    delivered_over_websocket(&app, &end, ws).await;
}

/// The topic of a QoS 0 PUBLISH read over WebSocket.
fn ws_topic((first, body): (u8, Vec<u8>)) -> String {
    assert_eq!(first >> 4, 3, "PUBLISH");
    let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    String::from_utf8(body[2..2 + len].to_vec()).unwrap()
}

/// A server like [`seeded`]'s with MQTT over TLS and HTTPS on, and a client that trusts it.
async fn seeded_over_tls(backend: Backend) -> (TestApp, TlsClient) {
    let cert = LocalhostCert::new();
    let (app, _) = seeded_with(backend, |config| cert.serve_tls(config)).await;
    (app, TlsClient { cert })
}

struct TlsClient {
    /// The server's certificate and key, kept while the server runs.
    cert: LocalhostCert,
}

impl TlsClient {
    /// A TLS connection to `addr`, and the server's end of it.
    async fn connect(&self, addr: SocketAddr) -> (TlsStream<TcpStream>, ServerEnd) {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let end = ServerEnd::of(addr, &tcp);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = self
            .cert
            .connector()
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        (stream, end)
    }
}

/// Over HTTPS the socket under the upgrade is under TLS too; it moves all the same.
async fn over_secure_websocket_a_large_retained_delivery_moves_its_socket_there_and_back(
    backend: Backend,
) {
    let (app, tls) = seeded_over_tls(backend).await;
    let addr = app.running.as_ref().unwrap().https_addr.unwrap();
    let (stream, end) = tls.connect(addr).await;
    let (ws, head) = RawWs::upgrade(stream, &addr.to_string(), "mqtt").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    delivered_over_websocket(&app, &end, ws).await;
}

/// Over the upgraded `ws`: CONNECT, a subscription to the whole set, its delivery held in the
/// background and back, its socket moving with it ([`held_then_drained_through`]); then a
/// ping answered over the socket that moved twice.
async fn delivered_over_websocket<S>(app: &TestApp, end: &ServerEnd, mut ws: RawWs<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.frame(true, 2, &build::connect("bulk", true, 60, None))
        .await;
    assert_eq!(ws.packet().await.0 >> 4, 2, "CONNACK");
    let first = end.fd();
    ws.frame(true, 2, &build::subscribe(1, "big/#", 0, None))
        .await;
    assert_eq!(ws.packet().await.0 >> 4, 9, "SUBACK");
    let moves =
        held_then_drained_through(app, end, first, 1, async || ws_topic(ws.packet().await)).await;
    assert_eq!(
        moves,
        (1, 0),
        "in the background while held, back once read"
    );
    ws.frame(true, 2, &[0xC0, 0]).await;
    assert_eq!(ws.packet().await.0 >> 4, 13, "PINGRESP");
}

async fn next(stream: &mut TlsStream<TcpStream>) -> common::mqtt::raw::RawPacket {
    read_packet(stream)
        .await
        .expect("a packet, not a closed connection")
}

for_each_backend!(
    over_websocket_a_large_retained_delivery_moves_its_socket_there_and_back,
    over_secure_websocket_a_large_retained_delivery_moves_its_socket_there_and_back,
    over_tls_a_large_retained_delivery_runs_in_the_background_and_arrives_whole,
    a_client_gone_in_the_middle_of_a_background_delivery_ends_as_any_other,
    by_default_and_with_auto_a_large_retained_delivery_runs_in_the_background,
    a_large_retained_delivery_runs_in_the_background_until_its_reads_are_done,
    with_normal_priority_a_large_retained_delivery_stays_put,
);
