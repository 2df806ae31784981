//! Shutting down (SIGTERM, SIGINT: `Running::shutdown`) sends every MQTT 5 client DISCONNECT
//! 0x8B before its socket closes, whatever the client was doing: idle, still publishing,
//! or taking retained messages.

mod common;

use std::time::Duration;

use common::mqtt::raw::build;
use common::{Backend, spawn_app};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const GOODBYE: [u8; 4] = [0xE0, 0x02, 0x8B, 0x00];

/// Everything the broker sends until it closes; a reset fails the test.
fn read_all(mut read: tokio::net::tcp::OwnedReadHalf) -> JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        let read = common::mqtt::within("the close", read.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "closed, not reset: {read:?}");
        got
    })
}

async fn connect(addr: std::net::SocketAddr, id: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&build::connect(id, true, 60, Some(&[])))
        .await
        .unwrap();
    let mut connack = [0u8; 2];
    stream.read_exact(&mut connack).await.unwrap();
    let mut rest = vec![0u8; usize::from(connack[1])];
    stream.read_exact(&mut rest).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mqtt5_client_gets_disconnect_0x8b_at_shutdown() {
    let app = spawn_app(Backend::Sqlite).await;
    let addr = app.mqtt_addr;
    // Retained messages for a subscription to be taking when the shutdown comes.
    let mut loader = connect(addr, "loader").await;
    let mut load = Vec::new();
    for i in 1..=2000u16 {
        let topic = format!("r/{i}");
        load.extend(build::publish(
            &topic,
            1,
            true,
            false,
            i,
            Some(&[]),
            &[b'r'; 200],
        ));
    }
    loader.write_all(&load).await.unwrap();
    let mut acks = vec![0u8; 2000 * 4];
    loader.read_exact(&mut acks).await.unwrap();

    let (idle_read, _idle_write) = connect(addr, "idle").await.into_split();
    let idle = read_all(idle_read);

    // A publisher that never stops sending, so its input is never all read.
    let (publisher_read, mut publisher_write) = connect(addr, "publisher").await.into_split();
    let publisher = read_all(publisher_read);
    let publishing = tokio::spawn(async move {
        let one = build::publish("busy", 0, false, false, 0, Some(&[]), &[b'p'; 512]);
        while publisher_write.write_all(&one).await.is_ok() {}
    });

    let mut subscriber = connect(addr, "subscriber").await;
    subscriber
        .write_all(&build::subscribe(1, "r/#", 0, Some(&[])))
        .await
        .unwrap();
    let mut first = [0u8; 64];
    subscriber.read_exact(&mut first).await.unwrap();
    let (subscriber_read, _subscriber_write) = subscriber.into_split();
    let subscriber = read_all(subscriber_read);

    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("shutdown within its grace period");
    for (who, got) in [
        ("idle", idle.await.unwrap()),
        ("publisher", publisher.await.unwrap()),
        ("subscriber", subscriber.await.unwrap()),
    ] {
        assert!(
            got.ends_with(&GOODBYE),
            "{who}: {:x?}",
            &got[got.len().saturating_sub(16)..]
        );
    }
    publishing.await.unwrap();
}

/// A SIGTERM sent the moment retaind prints its addresses is a graceful stop (exit 0), not
/// death by the signal's default action: the handlers are in place before the addresses are
/// printed. The window this guards was microseconds wide, so one round rarely fell in it; a
/// loaded CI machine did (a Python test's server died with -15).
#[tokio::test]
async fn a_sigterm_right_after_the_addresses_are_printed_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..10 {
        let url = format!(
            "sqlite://{}",
            dir.path().join(format!("{round}.db")).display()
        );
        let mut retaind = common::process::Process::start(&url, &[]).await;
        retaind.terminate().await;
    }
}

/// With `--mqtt-drain-time`, shutdown first stops taking connections, then asks the connected
/// clients to leave one after another over the drain time (MQTT 5: DISCONNECT 0x8B on a node
/// alone), not all at once. A client that leaves this way is not gone by its own doing: its
/// Will is not published. One whose connection drops by itself before its turn is: its Will
/// is.
#[tokio::test]
async fn a_drain_spreads_the_disconnects_over_its_time_and_publishes_no_will() {
    use common::mqtt::raw::{Raw, read_packet};
    let db = common::fresh_db(Backend::Sqlite).await;
    let mut config = common::test_config(&db.url);
    config.mqtt_drain_time = Duration::from_secs(2);
    let app = common::spawn_app_with(db, config).await;
    let addr = app.mqtt_addr;
    let will = build::Will {
        topic: "will/w",
        payload: b"gone",
        qos: 1,
        retain: true,
        props: &[],
    };
    let (_willing, _) = Raw::connect(
        &app,
        &build::connect_with_will("w", true, 60, Some(&[]), will),
    )
    .await;
    // Asked last (the drain goes in client id order), gone long before.
    let dying_will = build::Will {
        topic: "will/zz",
        payload: b"gone",
        qos: 1,
        retain: true,
        props: &[],
    };
    let (dying, _) = Raw::connect(
        &app,
        &build::connect_with_will("zz", true, 60, Some(&[]), dying_will),
    )
    .await;
    let mut clients = Vec::new();
    for i in 0..8 {
        let stream = connect(addr, &format!("c{i}")).await;
        clients.push(tokio::spawn(async move {
            let mut stream = stream;
            let goodbye = common::mqtt::within("a DISCONNECT", read_packet(&mut stream))
                .await
                .expect("a DISCONNECT before the close");
            (goodbye, std::time::Instant::now())
        }));
    }
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener stops taking connections first"
    );
    drop(dying);
    let mut at = Vec::new();
    for client in clients {
        let (goodbye, when) = client.await.unwrap();
        assert_eq!((goodbye.kind(), goodbye.body[0]), (14, 0x8B), "{goodbye:?}");
        at.push(when.duration_since(started));
    }
    at.sort();
    let (first, last) = (at[0], at[at.len() - 1]);
    assert!(
        last - first >= Duration::from_millis(1200),
        "spread over the drain time: {at:?}"
    );
    assert!(last < Duration::from_millis(2500), "within it: {at:?}");
    // Kept until the end: dropping it removes the SQLite file.
    let db = common::mqtt::within("the shutdown", stopping)
        .await
        .unwrap();
    let store = common::open_backend(&db.url).await;
    let wills: Vec<String> = store
        .list(None, 10, common::T0_MS)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.topic.as_str().to_owned())
        .collect();
    assert_eq!(
        wills,
        ["will/zz"],
        "the Will of the client that left by itself only"
    );
}

/// With `--mqtt-server-reference`, a drain tells MQTT 5 clients where to go: DISCONNECT 0x9C
/// Use another server with that Server Reference (MQTT 5 4.11), also on a node alone (without
/// it, 0x8B: the test above). An MQTT 3.1.1 client, which has no DISCONNECT to read, is closed.
#[tokio::test]
async fn a_drain_with_a_server_reference_tells_mqtt5_clients_where_to_go() {
    use common::mqtt::raw::{Raw, read_packet};
    let db = common::fresh_db(Backend::Sqlite).await;
    let mut config = common::test_config(&db.url);
    config.mqtt_drain_time = Duration::from_millis(500);
    config.mqtt_server_reference = Some("mqtt-b.example.com:8883".into());
    let app = common::spawn_app_with(db, config).await;
    let mut v5 = connect(app.mqtt_addr, "v5").await;
    let (mut v3, ack) = Raw::connect(&app, &build::connect("v3", true, 60, None)).await;
    assert_eq!(ack.body[1], 0);
    let stopping = tokio::spawn(app.stop());
    let goodbye = common::mqtt::within("a DISCONNECT", read_packet(&mut v5))
        .await
        .expect("a DISCONNECT before the close");
    assert_eq!(goodbye.disconnect_reason(), 0x9C, "Use another server");
    // Reason code, then the properties' length (one byte here), then Server Reference (0x1C),
    // a two-byte length and the string.
    let props = &goodbye.body[2..];
    assert_eq!(usize::from(goodbye.body[1]), props.len(), "{goodbye:?}");
    assert_eq!(props[0], 0x1C, "Server Reference: {goodbye:?}");
    let len = usize::from(u16::from_be_bytes([props[1], props[2]]));
    assert_eq!(&props[3..3 + len], b"mqtt-b.example.com:8883");
    assert!(
        v3.until_closed().await.is_empty(),
        "closed without a DISCONNECT"
    );
    common::mqtt::within("the shutdown", stopping)
        .await
        .unwrap();
}

/// A connection that has not sent its CONNECT when shutdown begins is closed at once: it
/// would get no session now. Before, shutdown waited out the MQTT grace (5 s) for it.
#[tokio::test]
async fn a_connection_awaiting_its_connect_does_not_hold_up_shutdown() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut silent = TcpStream::connect(app.mqtt_addr).await.unwrap();
    // Its task has taken its place before CONNECT.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    common::mqtt::within("the shutdown", app.stop()).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let mut byte = [0u8; 1];
    let read = common::mqtt::within("the close", silent.read(&mut byte)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}
