//! The PROXY protocol (`--proxy-protocol`, `--proxy-protocol-from`): every listener behind a
//! load balancer that sends it (tests/common/balancer.rs) serves what follows the header, and
//! knows each client by the address the header names: its own budget of failed password
//! checks, its own share of the places before CONNECT and of the HTTP connections. A
//! connection without a valid header is closed and changes nothing.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::balancer::{Balancer, Version, header};
use common::haproxy::HaProxy;
use common::mqtt::raw::{Raw, RawPacket, build, read_packet};
use common::mqtt::within;
use common::mqtt::ws::RawWs;
use common::raw_http::exchange;
use common::tls::LocalhostCert;
use common::{Backend, TestApp, fresh_db, spawn_app_with, test_config};
use retaind::app::{ProxyListener, ServeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ALL: [ProxyListener; 4] = [
    ProxyListener::Mqtt,
    ProxyListener::Mqtts,
    ProxyListener::Http,
    ProxyListener::Https,
];

/// A service with every listener on, those in `listeners` behind a balancer.
async fn app_with(
    listeners: &[ProxyListener],
    edit: impl FnOnce(&mut ServeConfig),
) -> (TestApp, LocalhostCert) {
    let cert = LocalhostCert::new();
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    cert.serve_tls(&mut config);
    config.proxy_protocol = listeners.to_vec();
    edit(&mut config);
    (spawn_app_with(db, config).await, cert)
}

fn addrs(app: &TestApp) -> (SocketAddr, SocketAddr) {
    let running = app.running.as_ref().unwrap();
    (running.mqtts_addr.unwrap(), running.https_addr.unwrap())
}

fn client(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// CONNECT (3.1.1), then a retained QoS 1 PUBLISH of `payload` to `t`.
fn connect_and_retain(id: &str, t: &str, payload: &[u8]) -> Vec<u8> {
    let mut bytes = build::connect(id, true, 60, None);
    bytes.extend(build::publish(t, 1, true, false, 1, None, payload));
    bytes
}

/// Over any stream: sends [`connect_and_retain`], expects CONNACK 0 and the PUBACK.
async fn retain_over(stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin), t: &str) {
    stream
        .write_all(&connect_and_retain("c", t, b"through"))
        .await
        .unwrap();
    let ack = within("CONNACK", read_packet(stream)).await.unwrap();
    assert_eq!((ack.kind(), ack.body[1]), (2, 0), "{ack:?}");
    let puback = within("PUBACK", read_packet(stream)).await.unwrap();
    assert_eq!(puback.kind(), 4, "{puback:?}");
}

/// The connections `listener` refused for their header, read from the metrics through a
/// balancer (the HTTP listener expects one in the tests that call this).
async fn refused(app: &TestApp, listener: &str) -> f64 {
    let lb = Balancer::start(app.http_addr, Version::V2, client("192.0.2.99:9")).await;
    let page = app
        .http
        .get(format!("http://{}/metrics", lb.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    common::metric_value(
        &page,
        &format!("retaind_proxy_headers_refused_total{{listener=\"{listener}\"}}"),
    )
}

/// Waits for the server to close `stream` without a byte of answer; closed with what the
/// client sent still unread, the close is a reset.
async fn closed_unanswered(stream: &mut TcpStream) {
    let mut got = Vec::new();
    match within("the close", stream.read_to_end(&mut got)).await {
        Ok(_) => assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got)),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

/// MQTT over TCP (header v2), MQTT over TLS (v1, before the ClientHello), HTTP (v2), HTTPS
/// (v1) and MQTT over WebSocket (v2) through balancers: each is served as without one.
#[tokio::test]
async fn every_listener_behind_a_balancer_serves_what_follows_the_header() {
    let (app, cert) = app_with(&ALL, |_| {}).await;
    let (mqtts, https) = addrs(&app);

    let lb = Balancer::start(app.mqtt_addr, Version::V2, client("198.51.100.1:1001")).await;
    let mut tcp = TcpStream::connect(lb.addr).await.unwrap();
    retain_over(&mut tcp, "via/mqtt").await;

    let lb = Balancer::start(mqtts, Version::V1, client("198.51.100.2:1002")).await;
    let mut tls = cert
        .connect(lb.addr)
        .await
        .expect("TLS through the balancer");
    retain_over(&mut tls, "via/mqtts").await;

    let lb = Balancer::start(app.http_addr, Version::V2, client("198.51.100.3:1003")).await;
    let tcp = TcpStream::connect(lb.addr).await.unwrap();
    let (mut ws, head) = RawWs::upgrade(tcp, &app.http_addr.to_string(), "mqtt").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    ws.frame(true, 2, &build::connect("w", true, 60, None))
        .await;
    assert_eq!(ws.packet().await, (0x20, vec![0, 0]));
    ws.frame(
        true,
        2,
        &build::publish("via/ws", 1, true, false, 1, None, b"through"),
    )
    .await;
    assert_eq!(ws.packet().await.0, 0x40);

    for t in ["via/mqtt", "via/mqtts", "via/ws"] {
        assert_eq!(
            app.stored_payload(t).await.as_deref(),
            Some(&b"through"[..]),
            "{t}"
        );
    }
    let mut http = TcpStream::connect(lb.addr).await.unwrap();
    let got = exchange(
        &mut http,
        b"GET /retainedMessage/via%2Fmqtt HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));

    let lb = Balancer::start(https, Version::V1, client("198.51.100.4:1004")).await;
    let mut tls = cert
        .connect(lb.addr)
        .await
        .expect("TLS through the balancer");
    let got = exchange(
        &mut tls,
        b"GET /retainedMessage/via%2Fmqtts HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));

    for listener in ["mqtt", "mqtts", "http", "https"] {
        assert_eq!(refused(&app, listener).await, 0.0, "{listener}");
    }
}

/// On each listener: no header, a malformed one, or (HTTP) one that never comes in time:
/// the connection is closed before anything it sent is served, nothing is stored, and the
/// refusal is counted for its listener.
#[tokio::test]
async fn a_connection_without_a_valid_header_is_closed_and_changes_nothing() {
    let (app, cert) = app_with(&ALL, |c| {
        c.http_header_timeout = Duration::from_millis(500);
    })
    .await;
    let (mqtts, https) = addrs(&app);

    // MQTT: no header, then a malformed one, then a header for UDP.
    let balancer_ip = client("127.0.0.1:1");
    let bad_headers: [&[u8]; 3] = [
        b"",
        b"PROXY TCP4 198.51.100.1 nonsense\r\n",
        &[
            b"\r\n\r\n\0\r\nQUIT\n\x21\x12\x00\x0c".as_slice(),
            &[198, 51, 100, 1, 127, 0, 0, 1, 0, 1, 0, 2],
        ]
        .concat(),
    ];
    for bad in bad_headers {
        let mut raw = Raw::open(&app).await;
        let mut bytes = bad.to_vec();
        bytes.extend(connect_and_retain("c", "bad/mqtt", b"x"));
        raw.send(&bytes).await;
        assert_eq!(raw.until_closed().await, Vec::<RawPacket>::new());
    }
    assert_eq!(refused(&app, "mqtt").await, 3.0);

    // MQTT over TLS: the ClientHello is not a header.
    assert!(
        cert.connect(mqtts).await.is_err(),
        "no handshake without a header"
    );
    assert_eq!(refused(&app, "mqtts").await, 1.0);

    // HTTP: a request alone, then a header that stops half way.
    let publish = b"POST /topics/bad/http?retain=true HTTP/1.1\r\nHost: localhost\r\n\
                    Content-Length: 1\r\n\r\nx";
    let mut http = TcpStream::connect(app.http_addr).await.unwrap();
    http.write_all(publish).await.unwrap();
    closed_unanswered(&mut http).await;
    let mut http = TcpStream::connect(app.http_addr).await.unwrap();
    let whole = header(Version::V2, client("198.51.100.1:1"), balancer_ip);
    http.write_all(&whole[..20]).await.unwrap();
    let started = std::time::Instant::now();
    closed_unanswered(&mut http).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed at the header timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(refused(&app, "http").await, 2.0);

    // HTTPS, like MQTT over TLS.
    assert!(cert.connect(https).await.is_err());
    assert_eq!(refused(&app, "https").await, 1.0);

    assert_eq!(app.stored_payload("bad/mqtt").await, None);
    assert_eq!(app.stored_payload("bad/http").await, None);
    assert!(app.store().list(None, 10).await.unwrap().is_empty());
}

/// With `--proxy-protocol-from`, only connections from the balancers named must send a header;
/// a client from elsewhere is served directly, and its bytes are never taken for a header.
#[tokio::test]
async fn only_the_balancers_named_must_send_a_header() {
    let (app, _cert) = app_with(&[ProxyListener::Mqtt], |c| {
        c.proxy_protocol_from = vec!["127.0.0.2/32".parse().unwrap()];
    })
    .await;
    let mut direct = Raw::open_from(app.mqtt_addr, [127, 0, 0, 1].into()).await;
    direct
        .send(&connect_and_retain("direct", "from/direct", b"d"))
        .await;
    assert_eq!(direct.expect(2).await.body, [0, 0]);
    direct.expect(4).await;

    let mut balancer = Raw::open_from(app.mqtt_addr, [127, 0, 0, 2].into()).await;
    balancer
        .send(&connect_and_retain("nohdr", "from/balancer", b"b"))
        .await;
    assert_eq!(balancer.until_closed().await, Vec::<RawPacket>::new());

    let mut balancer = Raw::open_from(app.mqtt_addr, [127, 0, 0, 2].into()).await;
    let mut bytes = header(Version::V1, client("203.0.113.5:5000"), app.mqtt_addr);
    bytes.extend(connect_and_retain("hdr", "from/balancer", b"b"));
    balancer.send(&bytes).await;
    assert_eq!(balancer.expect(2).await.body, [0, 0]);
    balancer.expect(4).await;

    assert_eq!(
        app.stored_payload("from/direct").await.as_deref(),
        Some(&b"d"[..])
    );
    assert_eq!(
        app.stored_payload("from/balancer").await.as_deref(),
        Some(&b"b"[..])
    );
    let page = app.get("/metrics").await.text().await.unwrap();
    let series = "retaind_proxy_headers_refused_total{listener=\"mqtt\"}";
    assert_eq!(common::metric_value(&page, series), 1.0);
}

/// Two clients behind one balancer: one guesses passwords until its address is over its
/// budget of failed checks; the other, a different address in its header, still gets its
/// good password checked and gets in. Counted by the balancer's address, both would be out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_behind_a_balancer_has_its_own_password_budget() {
    let dir = tempfile::tempdir().unwrap();
    let principals = dir.path().join("auth.toml");
    let hash = retaind::auth::hash_password("right");
    std::fs::write(
        &principals,
        format!(
            "[[principals]]\nname = \"d\"\nmqtt_username = \"d\"\nmqtt_password_hash = \
             \"{hash}\"\n[[principals.statements]]\neffect = \"Allow\"\nactions = [\"iot:*\"]\n\
             resources = [\"*\"]\n"
        ),
    )
    .unwrap();
    let (app, _cert) = app_with(&[ProxyListener::Mqtt], |c| {
        c.principals = Some(principals);
    })
    .await;
    let guesser = Balancer::start(app.mqtt_addr, Version::V2, client("198.51.100.7:7")).await;
    let honest = Balancer::start(app.mqtt_addr, Version::V2, client("198.51.100.8:8")).await;
    let login = |via: SocketAddr, id: String, password: String| async move {
        let mut raw = Raw::open_addr(via).await;
        raw.send(&build::connect_with_login(
            &id,
            Some(&[]),
            "d",
            password.as_bytes(),
        ))
        .await;
        raw.expect(2).await.body[1]
    };
    let guesses = (0..10).map(|i| login(guesser.addr, format!("g{i}"), format!("guess {i}")));
    let codes = futures_util::future::join_all(guesses).await;
    assert!(codes.iter().all(|c| *c == 0x86), "{codes:x?}");
    assert_eq!(
        login(guesser.addr, "g".into(), "right".into()).await,
        0x9F,
        "the guesser's address is over its budget"
    );
    assert_eq!(
        login(honest.addr, "h".into(), "right".into()).await,
        0x00,
        "another client behind the same balancer is not"
    );
}

/// Behind one balancer, a lone client's connection (the oldest) and a crowd's three hold every
/// place before CONNECT, silent after their headers. A newcomer takes the place of one of the
/// crowd's, the address holding the most, not the lone client's, the oldest: the places count
/// the addresses the headers name.
#[tokio::test]
async fn places_before_connect_are_shared_by_the_addresses_the_headers_name() {
    let (app, _cert) = app_with(&[ProxyListener::Mqtt], |c| {
        c.mqtt_max_awaiting_connect = 4;
    })
    .await;
    let lone = Balancer::start(app.mqtt_addr, Version::V2, client("198.51.100.1:1")).await;
    let crowd = Balancer::start(app.mqtt_addr, Version::V2, client("198.51.100.2:2")).await;
    let newcomer = Balancer::start(app.mqtt_addr, Version::V1, client("198.51.100.3:3")).await;
    let loopback = [127, 0, 0, 1].into();
    places_go_to_the_crowd([
        (lone.addr, loopback),
        (crowd.addr, loopback),
        (newcomer.addr, loopback),
    ])
    .await;
}

/// The same through a real HAProxy (`send-proxy-v2`), whose clients connect from three
/// loopback addresses: HAProxy's own connections to retaind all come from 127.0.0.1.
#[tokio::test]
async fn places_before_connect_through_haproxy_count_the_clients_addresses() {
    let (app, _cert) = app_with(&[ProxyListener::Mqtt], |c| {
        c.mqtt_max_awaiting_connect = 4;
    })
    .await;
    let haproxy = HaProxy::start(app.mqtt_addr, "send-proxy-v2").await;
    places_go_to_the_crowd([
        (haproxy.addr, [127, 0, 0, 2].into()),
        (haproxy.addr, [127, 0, 0, 3].into()),
        (haproxy.addr, [127, 0, 0, 4].into()),
    ])
    .await;
}

/// Fills four places before CONNECT: one connection to the first front from its local address
/// (the lone client, the oldest), three to the second (the crowd); past their grace, the third
/// front's client is served, the lone client keeps its place, one of the crowd's is closed.
async fn places_go_to_the_crowd(fronts: [(SocketAddr, std::net::IpAddr); 3]) {
    let [(lone, lone_ip), (crowd, crowd_ip), (newcomer, newcomer_ip)] = fronts;
    let mut lone = Raw::open_from(lone, lone_ip).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut crowd_of = Vec::new();
    for _ in 0..3 {
        crowd_of.push(Raw::open_from(crowd, crowd_ip).await);
    }
    // Past the places' grace (2 s).
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let mut fresh = Raw::open_from(newcomer, newcomer_ip).await;
    fresh.send(&build::connect("fresh", true, 60, None)).await;
    assert_eq!(fresh.expect(2).await.body, [0, 0], "served");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), lone.recv())
            .await
            .is_err(),
        "the lone client keeps its place"
    );
    let mut closed = 0;
    for raw in &mut crowd_of {
        if let Ok(None) = tokio::time::timeout(Duration::from_millis(300), raw.recv()).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 1, "one of the crowd's made room");
}

/// mosquitto_pub through an HAProxy sending version 2 headers stores a retained message;
/// mosquitto_sub through one sending version 1 receives it. Nothing is refused.
#[tokio::test]
async fn mosquitto_clients_through_haproxy_reach_the_broker() {
    let (app, _cert) = app_with(&[ProxyListener::Mqtt], |_| {}).await;
    let v2 = HaProxy::start(app.mqtt_addr, "send-proxy-v2").await;
    let v1 = HaProxy::start(app.mqtt_addr, "send-proxy").await;
    let port = |h: &HaProxy| h.addr.port().to_string();
    let published = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port(&v2), "-A", "127.0.0.2"])
        .args([
            "-t",
            "via/haproxy",
            "-m",
            "hello",
            "-r",
            "-q",
            "1",
            "-V",
            "mqttv5",
        ])
        .output();
    let published = within("mosquitto_pub", published).await.unwrap();
    assert!(published.status.success(), "{published:?}");
    assert_eq!(
        app.stored_payload("via/haproxy").await.as_deref(),
        Some(&b"hello"[..])
    );
    let received = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port(&v1), "-A", "127.0.0.3"])
        .args(["-t", "via/haproxy", "-C", "1", "-W", "10"])
        .output();
    let received = within("mosquitto_sub", received).await.unwrap();
    assert!(received.status.success(), "{received:?}");
    assert_eq!(String::from_utf8_lossy(&received.stdout).trim(), "hello");
    let page = app.get("/metrics").await.text().await.unwrap();
    let series = "retaind_proxy_headers_refused_total{listener=\"mqtt\"}";
    assert_eq!(common::metric_value(&page, series), 0.0);
}

/// The same for HTTP connections: the lone client's idle connection, the oldest, keeps its
/// place; one of the crowd's is closed for the newcomer, whose request is answered.
#[tokio::test]
async fn http_places_are_shared_by_the_addresses_the_headers_name() {
    let (app, _cert) = app_with(&[ProxyListener::Http], |c| {
        c.http_max_connections = 4;
    })
    .await;
    let lone = Balancer::start(app.http_addr, Version::V2, client("198.51.100.1:1")).await;
    let crowd = Balancer::start(app.http_addr, Version::V2, client("198.51.100.2:2")).await;
    let newcomer = Balancer::start(app.http_addr, Version::V2, client("198.51.100.3:3")).await;
    let mut lone = TcpStream::connect(lone.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut crowd_of = Vec::new();
    for _ in 0..3 {
        crowd_of.push(TcpStream::connect(crowd.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let mut fresh = TcpStream::connect(newcomer.addr).await.unwrap();
    let got = exchange(
        &mut fresh,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(got.status, 200);
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), lone.read(&mut byte))
            .await
            .is_err(),
        "the lone client keeps its place"
    );
    let mut closed = 0;
    for tcp in &mut crowd_of {
        let read = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut byte)).await;
        if matches!(read, Ok(Ok(0) | Err(_))) {
            closed += 1;
        }
    }
    assert_eq!(closed, 1, "one of the crowd's made room");
}

#[tokio::test]
async fn the_flags_are_checked_at_start() {
    let parsed = retaind::app::parse_args(
        [
            "retaind",
            "--proxy-protocol",
            "mqtt,https",
            "--proxy-protocol-from",
            "10.0.0.5, 192.168.7.0/24,fd00::/8",
        ]
        .map(Into::into)
        .to_vec(),
    )
    .unwrap()
    .serve;
    assert_eq!(
        parsed.proxy_protocol,
        [ProxyListener::Mqtt, ProxyListener::Https]
    );
    let nets: Vec<String> = parsed
        .proxy_protocol_from
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["10.0.0.5/32", "192.168.7.0/24", "fd00::/8"]);

    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.proxy_protocol = vec![ProxyListener::Mqtts];
    let err = retaind::app::start(&config, retaind::store::Clock::manual(common::T0_MS))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        err.to_string(),
        "--proxy-protocol names mqtts, which is off: give --mqtts-addr or leave it out"
    );
}
