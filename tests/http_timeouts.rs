//! HTTP connections that stall: a partial head, a partial body, nothing after a response, and
//! such connections at shutdown. Raw TCP clients against the real server with short timeouts.

mod common;

use std::time::{Duration, Instant};

use common::mqtt::raw::build;
use common::mqtt::within;
use common::mqtt::ws::RawWs;
use common::raw_http::{closed, connect, exchange, read_response};
use common::{Backend, TestApp, fresh_db, spawn_app_with, test_config};
use tokio::io::AsyncWriteExt;

const HEADER: Duration = Duration::from_millis(400);
const BODY: Duration = Duration::from_millis(600);
const IDLE: Duration = Duration::from_millis(1200);

/// The server with short HTTP timeouts (the idle one the longest, so they can be told apart).
async fn spawn_with_timeouts(backend: Backend) -> TestApp {
    let db = fresh_db(backend).await;
    let mut config = test_config(&db.url);
    config.http_header_timeout = HEADER;
    config.http_body_timeout = BODY;
    config.http_idle_timeout = IDLE;
    spawn_app_with(db, config).await
}

fn get(app: &TestApp, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", app.http_addr).into_bytes()
}

#[tokio::test]
async fn a_partial_head_is_closed_at_the_header_timeout() {
    let app = spawn_with_timeouts(Backend::Sqlite).await;
    let mut stream = connect(app.http_addr).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    assert!(closed(&mut stream).await >= HEADER);

    // So is a connection that never sends anything.
    let mut silent = connect(app.http_addr).await;
    assert!(closed(&mut silent).await >= HEADER);

    // A head that keeps trickling in does not restart the clock.
    let (mut from_server, mut to_server) = connect(app.http_addr).await.into_split();
    let trickle = tokio::spawn(async move {
        let mut line: &[u8] = b"GET /healthz HTTP/1.1\r\n";
        while to_server.write_all(line).await.is_ok() {
            line = b"X-A: b\r\n";
            tokio::time::sleep(HEADER / 4).await;
        }
    });
    let took = closed(&mut from_server).await;
    assert!(took >= HEADER && took < HEADER * 3, "{took:?}");
    trickle.abort();
    app.stop().await;
}

async fn a_partial_body_gets_408_and_stores_nothing(backend: Backend) {
    let app = spawn_with_timeouts(backend).await;
    app.retain("slow", "original").await;
    let before = app.snapshot().await;
    let mut stream = connect(app.http_addr).await;
    let started = Instant::now();
    let head = format!(
        "POST /topics/slow?retain=true HTTP/1.1\r\nHost: {}\r\nContent-Length: 10\r\n\r\nabc",
        app.http_addr
    );
    let res = exchange(&mut stream, head.as_bytes()).await;
    assert!(started.elapsed() >= BODY);
    res.assert_error(
        408,
        "RequestTimeoutException",
        "did not arrive within 0.6 seconds",
    );
    closed(&mut stream).await;
    assert_eq!(app.snapshot().await, before);
    app.stop().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_at_the_idle_timeout() {
    let app = spawn_with_timeouts(Backend::Sqlite).await;
    let mut stream = connect(app.http_addr).await;
    // Timed from before the request: the server's idle time starts as it hands over the
    // response, a moment before the client has it.
    let asked = Instant::now();
    let res = exchange(&mut stream, &get(&app, "/healthz")).await;
    assert_eq!(res.status, 200);
    // Kept alive past the header timeout: idle is not a slow head.
    closed(&mut stream).await;
    let open_for = asked.elapsed();
    assert!(open_for >= IDLE, "closed after {open_for:?}");

    // A kept-alive connection serves the next request as long as it comes in time.
    let mut stream = connect(app.http_addr).await;
    for _ in 0..3 {
        let res = exchange(&mut stream, &get(&app, "/healthz")).await;
        assert_eq!(res.status, 200);
    }
    app.stop().await;
}

/// An upgraded connection carries MQTT, whose keep alive governs it: the HTTP timeouts do not.
#[tokio::test]
async fn mqtt_over_websocket_outlives_the_http_timeouts() {
    let app = spawn_with_timeouts(Backend::Sqlite).await;
    let (mut ws, head) = RawWs::open(&app, "mqtt").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    ws.frame(true, 2, &build::connect("quiet", true, 60, None))
        .await;
    assert_eq!(ws.packet().await, (0x20, vec![0, 0]));
    // Nothing to wait for: the point is that nothing happens for longer than every timeout.
    tokio::time::sleep(IDLE + HEADER + BODY).await;
    ws.frame(true, 2, &[0xC0, 0x00]).await;
    assert_eq!(ws.packet().await, (0xD0, vec![]), "PINGRESP");
    app.stop().await;
}

/// Shutdown waits for requests in flight, but not beyond `--shutdown-timeout`: a client that
/// stops sending its body must not keep the process from exiting.
#[tokio::test]
async fn shutdown_finishes_by_its_deadline_with_a_stalled_request_open() {
    const DEADLINE: Duration = Duration::from_millis(800);
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.http_body_timeout = Duration::from_secs(600);
    config.shutdown_timeout = DEADLINE;
    let mut app = spawn_app_with(db, config).await;

    // `100 Continue` comes once the handler reads the body: the request is then in flight.
    let mut stalled = connect(app.http_addr).await;
    let head = format!(
        "POST /topics/stalled?retain=true HTTP/1.1\r\nHost: {}\r\nContent-Length: 10\r\n\
         Expect: 100-continue\r\n\r\n",
        app.http_addr
    );
    let res = exchange(&mut stalled, head.as_bytes()).await;
    assert_eq!(res.status, 100);
    stalled.write_all(b"abc").await.unwrap();
    // And a connection in the middle of its head, and one idle after a response.
    let mut partial = connect(app.http_addr).await;
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut idle = connect(app.http_addr).await;
    assert_eq!(
        exchange(&mut idle, &get(&app, "/healthz")).await.status,
        200
    );

    let started = Instant::now();
    within("shutdown", app.running.take().unwrap().shutdown()).await;
    let took = started.elapsed();
    assert!(took >= DEADLINE, "the stalled request held it up: {took:?}");
    assert!(took < DEADLINE * 4, "{took:?}");
    for stream in [&mut stalled, &mut partial, &mut idle] {
        closed(stream).await;
    }
}

/// A request whose body is complete still finishes during shutdown, with its answer.
#[tokio::test]
async fn a_request_finishing_before_the_deadline_is_answered_during_shutdown() {
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.shutdown_timeout = Duration::from_secs(10);
    let mut app = spawn_app_with(db, config).await;
    let mut stream = connect(app.http_addr).await;
    let head = format!(
        "POST /topics/late?retain=true HTTP/1.1\r\nHost: {}\r\nContent-Length: 6\r\n\
         Expect: 100-continue\r\n\r\n",
        app.http_addr
    );
    assert_eq!(exchange(&mut stream, head.as_bytes()).await.status, 100);
    let shutdown = tokio::spawn(app.running.take().unwrap().shutdown());
    stream.write_all(b"stored").await.unwrap();
    let res = read_response(&mut stream).await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    within("shutdown", shutdown).await.unwrap();
}

for_each_backend!(a_partial_body_gets_408_and_stores_nothing);

/// A client that asks for large responses and never reads them holds its connection only until
/// the idle timeout: a response handed to the socket counts as done, and a connection whose
/// output stays stuck gets no further requests served.
#[tokio::test]
async fn a_client_that_stops_reading_responses_is_cut_at_the_idle_timeout() {
    use tokio::io::AsyncReadExt;
    let app = spawn_with_timeouts(Backend::Sqlite).await;
    let big = vec![b'x'; 128 * 1024];
    let res = app.publish("/topics/big?retain=true", big).await;
    assert_eq!(res.status(), 200);

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(app.http_addr).await.unwrap();
    const REQUESTS: usize = 200;
    let requests = get(&app, "/retainedMessage/big").repeat(REQUESTS);
    let (mut from_server, mut to_server) = stream.split();
    // The server may stop reading our requests once its output is stuck: write what it takes.
    let _ = tokio::time::timeout(IDLE, to_server.write_all(&requests)).await;
    tokio::time::sleep(IDLE * 3).await;

    // Now read everything: a connection the server cut ends well before 200 responses.
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let read_all = async {
        loop {
            match from_server.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
    };
    within("the server to close the connection", read_all).await;
    let one_response = 128 * 1024 * 4 / 3;
    assert!(
        received < REQUESTS * one_response / 2,
        "{received} bytes: the server kept serving a client that did not read"
    );
    drop(stream);
    app.stop().await;
}

/// Whether the server closed `stream` within `wait`, having sent nothing.
async fn closed_within(stream: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(wait, stream.read(&mut byte)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) => panic!("a connection that sent no whole request got bytes"),
        Err(_) => false,
    }
}

/// One address holds every HTTP place: first a request being served (its body still coming),
/// then two connections that send nothing. A newcomer while they are within their 2 s is
/// closed at once; after, a client of another address is served in place of a silent one,
/// and the request in flight, the oldest of all, is never cut.
#[tokio::test]
async fn an_address_holding_every_http_place_keeps_no_one_out_and_loses_no_request_in_flight() {
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.http_max_connections = 3;
    let app = spawn_app_with(db, config).await;
    let mut busy = connect(app.http_addr).await;
    busy.write_all(
        format!(
            "POST /topics/places?retain=true HTTP/1.1\r\nHost: {}\r\nContent-Length: 6\r\n\r\nin",
            app.http_addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut silent = vec![connect(app.http_addr).await, connect(app.http_addr).await];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut early = connect(app.http_addr).await;
    assert!(
        closed_within(&mut early, Duration::from_secs(2)).await,
        "a newcomer while every place is within its grace is closed at once"
    );

    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket.connect(app.http_addr).await.unwrap();
    let response = exchange(&mut other, &get(&app, "/healthz")).await;
    assert_eq!(response.status, 200);

    busy.write_all(b"flig").await.unwrap();
    let response = read_response(&mut busy).await;
    assert_eq!(response.status, 200, "{}", response.head);
    let mut closed = 0;
    for stream in &mut silent {
        if closed_within(stream, Duration::from_millis(300)).await {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 1,
        "one silent connection made room, the other waits on"
    );
    // Asked over a connection that holds a place: a new one would take another's.
    let metrics = exchange(&mut other, &get(&app, "/metrics")).await;
    let page = String::from_utf8(metrics.body).unwrap();
    for (reason, n) in [("no_room", 1.0), ("made_room", 1.0)] {
        let series =
            format!("retaind_http_connections_closed_for_room_total{{reason=\"{reason}\"}}");
        assert_eq!(common::metric_value(&page, &series), n, "{reason}: {page}");
    }
    let stored = app.get_json("/retainedMessage/places").await;
    assert_eq!(
        stored["payload"], "aW5mbGln",
        "base64 of the whole body: {stored}"
    );
}
