//! Slow subscribers (`--mqtt-write-timeout`, here 1 s): a client that takes nothing of what
//! waits for it for the timeout is disconnected within the timeout plus a tenth of it, however
//! large the socket buffers; one that reads, or acknowledges, slowly but steadily stays. Real
//! sockets and real time: what is measured is the kernel's buffers. Times are counted from the
//! moment the client last took anything: its receive queue last grew, or it read its last
//! message.

mod common;

use std::time::Duration;

use common::mqtt::raw::{Raw, build, until_reset};
use common::mqtt::within;
use common::mqtt::ws::RawWs;
use common::{Backend, TestApp, fresh_db, spawn_app, spawn_app_with, test_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(1);
/// The documented margin (a tenth of the timeout), plus room for a busy test machine.
const LATEST: Duration = Duration::from_millis(1400);
const RECEIVE_MAXIMUM: u8 = 0x21;

async fn app() -> TestApp {
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.mqtt_write_timeout = TIMEOUT;
    spawn_app_with(db, config).await
}

/// Publishes `count` messages to `topic` at `qos` from a raw 3.1.1 client, one every `period`,
/// reading (and dropping) what the broker answers.
fn publish_steadily(
    app: &TestApp,
    topic: &'static str,
    qos: u8,
    period: Duration,
) -> JoinHandle<()> {
    let addr = app.mqtt_addr;
    tokio::spawn(async move {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut rx, mut tx) = stream.into_split();
        tx.write_all(&build::connect("steady-publisher", true, 0, None))
            .await
            .unwrap();
        tokio::spawn(async move {
            let mut sink = [0u8; 4096];
            while matches!(rx.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        let payload = vec![b'x'; 1024];
        let mut tick = tokio::time::interval(period);
        for pkid in 1..=u16::MAX {
            tick.tick().await;
            let packet = build::publish(topic, qos, false, false, pkid, None, &payload);
            if tx.write_all(&packet).await.is_err() {
                return;
            }
        }
    })
}

/// A 3.1.1 subscriber to `#` at QoS 0 with an 8 KiB receive buffer, which stops reading
/// after its SUBACK.
async fn stalled_subscriber(app: &TestApp) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let mut stream = socket.connect(app.mqtt_addr).await.unwrap();
    stream
        .write_all(&build::connect("stalled", true, 60, None))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    stream
        .write_all(&build::subscribe(1, "#", 0, None))
        .await
        .unwrap();
    let mut suback = [0u8; 5];
    stream.read_exact(&mut suback).await.unwrap();
    assert_eq!(suback, [0x90, 3, 0, 1, 0]);
    stream
}

fn assert_on_time(what: &str, waited: Duration) {
    assert!(
        (TIMEOUT..=LATEST).contains(&waited),
        "{what}: disconnected after {waited:?}, expected between {TIMEOUT:?} and {LATEST:?}"
    );
}

/// A client that reconnects while its old connection is stuck writing to it (a device gone
/// half-open on a busy subscription: the old socket's buffers full, the broker's write
/// waiting) takes its session over at once: the old connection gives its write up and closes
/// within the goodbye's bounds, not at the write timeout (30 s by default). Before, the
/// take-over was seen only between writes, so the old connection held its place (and, on a
/// full node, one of the take-overs' places) until the client was found stalled.
#[tokio::test]
async fn a_connection_stuck_writing_to_its_client_ends_at_once_when_taken_over() {
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.mqtt_write_timeout = Duration::from_secs(30);
    let app = spawn_app_with(db, config).await;
    let _stalled = stalled_subscriber(&app).await;
    // 64 KiB every 5 ms, 13 MB/s: the stalled socket's buffers fill within a second, and the
    // broker's writes to it then wait.
    let addr = app.mqtt_addr;
    let publisher = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(&build::connect("heavy-publisher", true, 0, None))
            .await
            .unwrap();
        let payload = vec![b'x'; 64 * 1024];
        let packet = build::publish("load", 0, false, false, 1, None, &payload);
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        loop {
            tick.tick().await;
            if stream.write_all(&packet).await.is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.running.as_ref().unwrap().broker.connections(), 2);

    let asked = Instant::now();
    let (_again, ack) = Raw::connect(&app, &build::connect("stalled", true, 60, None)).await;
    assert_eq!(ack.body, [0, 0], "the take-over is accepted");
    app.until_connections(2).await;
    let ended = asked.elapsed();
    publisher.abort();
    // Its goodbye and its close, a second each at most.
    assert!(
        ended < Duration::from_secs(4),
        "the old connection ended after {ended:?}"
    );
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_reset_within_the_timeout() {
    let app = app().await;
    let stream = stalled_subscriber(&app).await;
    // 200 kB/s: without the uptake check, Linux's send buffer (grown to megabytes) takes
    // tens of seconds to fill before a write even blocks.
    let publisher = publish_steadily(&app, "load", 0, Duration::from_millis(5));
    let stalled = until_reset(&stream).await;
    publisher.abort();
    assert_on_time("QoS 0 over TCP", stalled.reset - stalled.last_data);
}

#[tokio::test]
async fn a_websocket_subscriber_that_stops_reading_is_reset_within_the_timeout() {
    let app = app().await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let stream = socket.connect(app.http_addr).await.unwrap();
    let (mut ws, head) = RawWs::upgrade(stream, &app.http_addr.to_string(), "mqtt").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    ws.frame(true, 2, &build::connect("stalled-ws", true, 60, None))
        .await;
    assert_eq!(ws.packet().await, (0x20, vec![0, 0]));
    ws.frame(true, 2, &build::subscribe(1, "#", 0, None)).await;
    assert_eq!(ws.packet().await, (0x90, vec![0, 1, 0]));
    let publisher = publish_steadily(&app, "load", 0, Duration::from_millis(5));
    let stalled = until_reset(ws.stream()).await;
    publisher.abort();
    assert_on_time("QoS 0 over WebSocket", stalled.reset - stalled.last_data);
}

#[tokio::test]
async fn a_subscriber_reading_slowly_but_steadily_stays_connected() {
    let app = app().await;
    let mut stream = stalled_subscriber(&app).await;
    let publisher = publish_steadily(&app, "load", 0, Duration::from_millis(5));
    // 40 kB/s against 200 kB/s published: the buffers stay full, QoS 0 messages beyond the
    // queue are dropped, but every read makes room and the client takes data all along.
    let mut buf = [0u8; 2048];
    let mut got = 0;
    let until = Instant::now() + 4 * TIMEOUT;
    while Instant::now() < until {
        let n = within("data", stream.read(&mut buf)).await.unwrap();
        assert!(n > 0, "the server closed the connection after {got} bytes");
        got += n;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stream.take_error().unwrap().is_none());
    publisher.abort();
}

/// An MQTT 5 subscriber to `t` at QoS 1 that accepts two messages in flight.
async fn v5_qos1_subscriber(app: &TestApp, id: &str) -> Raw {
    v5_qos1_subscriber_with(app, id, &[RECEIVE_MAXIMUM, 0, 2]).await
}

/// An MQTT 5 subscriber to `t` at QoS 1 with the CONNECT properties `props`.
async fn v5_qos1_subscriber_with(app: &TestApp, id: &str, props: &[u8]) -> Raw {
    let connect = build::connect(id, true, 60, Some(props));
    let (mut sub, _) = Raw::connect(app, &connect).await;
    sub.send(&build::subscribe(1, "t", 1, Some(&[]))).await;
    sub.expect(9).await;
    sub
}

#[tokio::test]
async fn a_qos1_subscriber_that_acknowledges_nothing_gets_0x97_within_the_timeout() {
    let app = app().await;
    let mut sub = v5_qos1_subscriber(&app, "never-acks").await;
    let publisher = publish_steadily(&app, "t", 1, Duration::from_millis(20));
    // Two in flight, the rest queued behind Receive Maximum: no write ever blocks, and the
    // queue (1000) would take 20 s to fill.
    sub.expect(3).await;
    sub.expect(3).await;
    let second = Instant::now();
    let goodbye = sub.expect(14).await;
    let waited = second.elapsed();
    assert_eq!(goodbye.disconnect_reason(), 0x97);
    assert!(sub.recv().await.is_none(), "closed after the DISCONNECT");
    publisher.abort();
    assert_on_time("QoS 1 unacknowledged", waited);
}

#[tokio::test]
async fn a_qos1_subscriber_acknowledging_slowly_stays_connected() {
    let app = app().await;
    let mut sub = v5_qos1_subscriber(&app, "slow-acks").await;
    let publisher = publish_steadily(&app, "t", 1, Duration::from_millis(20));
    let until = Instant::now() + 4 * TIMEOUT;
    while Instant::now() < until {
        let p = sub.expect(3).await.publish(true);
        tokio::time::sleep(TIMEOUT / 3).await;
        sub.send(&build::ack(0x40, p.pkid)).await;
    }
    publisher.abort();
}

/// Publishers never wait for subscribers, so a subscriber's queue is what absorbs a
/// burst: with the default limits, a QoS 1 subscriber reading and acknowledging as fast as it
/// can takes a burst of 3,000 messages published at once (it falls about 2,700 behind) without
/// being cut. With a queue of 1,000 it got DISCONNECT 0x97 in the burst.
#[tokio::test]
async fn a_steady_qos1_subscriber_rides_out_a_burst_of_3000_messages_with_the_default_queue() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut sub = v5_qos1_subscriber_with(&app, "steady", &[]).await;
    let stream = TcpStream::connect(app.mqtt_addr).await.unwrap();
    let (mut rx, mut tx) = stream.into_split();
    tx.write_all(&build::connect("burst", true, 60, None))
        .await
        .unwrap();
    let acks = tokio::spawn(async move {
        let mut sink = [0u8; 4096];
        while matches!(rx.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let burst: Vec<u8> = (1..=3000u16)
        .flat_map(|i| build::publish("t", 1, false, false, i, None, &i.to_be_bytes()))
        .collect();
    tx.write_all(&burst).await.unwrap();
    for i in 1..=3000u16 {
        let p = sub
            .recv()
            .await
            .unwrap_or_else(|| panic!("closed after {} messages", i - 1));
        assert_eq!(p.kind(), 3, "message {i}: {p:?}");
        let p = p.publish(true);
        assert_eq!(p.payload, i.to_be_bytes(), "in order");
        sub.send(&build::ack(0x40, p.pkid)).await;
    }
    acks.abort();
}
