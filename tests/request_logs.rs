//! Logs a person can follow (issue 16): every line logged while an HTTP request is served
//! carries its request id, every line of an MQTT connection its client id, and a handler that
//! panics answers 500 with the request id instead of dropping the connection.
//!
//! One test in this binary: it installs the process's log subscriber.

mod common;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::balancer::{Version, header};
use common::logs::Captured;
use common::mqtt::raw::{Raw, build};
use common::{Backend, fresh_db, spawn_app_with, test_config};
use retaind::api::{self, AllowedHosts, ApiState, HttpIncoming, HttpTimeouts, PageTokens};
use retaind::api::{RateLimits, Throttle};
use retaind::app::ProxyListener;
use retaind::metrics::Metrics;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_name_their_request_or_client_and_a_panic_is_a_500() {
    let captured = Captured::install(tracing::Level::DEBUG);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.toml");
    std::fs::write(
        &path,
        format!(
            "[[principals]]\nname = \"dev\"\nmqtt_username = \"dev\"\nmqtt_password_hash = \"{}\"\n",
            retaind::auth::hash_password("right")
        ),
    )
    .unwrap();
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.principals = Some(path);
    // A load balancer at 127.0.0.2 in front of MQTT and HTTP; other peers connect directly.
    config.proxy_protocol = vec![ProxyListener::Mqtt, ProxyListener::Http];
    config.proxy_protocol_from = vec!["127.0.0.2/32".parse().unwrap()];
    let app = spawn_app_with(db, config).await;

    // HTTP: a request refused for its credentials logs why, inside the request's span.
    let res = app.get("/retainedMessage").await;
    assert_eq!(res.status(), 401);
    let id = res.headers()["x-amzn-requestid"]
        .to_str()
        .unwrap()
        .to_owned();
    let lines = captured.lines();
    let why = lines
        .iter()
        .find(|l| l.contains("authentication failed"))
        .expect("the refusal is logged");
    assert!(why.contains(&format!("request_id={id}")), "{why}");
    // Its access line names the client.
    let access = lines
        .iter()
        .find(|l| l.contains(&format!("request_id={id} peer=127.0.0.1:")))
        .unwrap_or_else(|| panic!("no access line with the peer:\n{}", lines.join("\n")));
    assert!(access.contains("status=401"), "{access}");

    // Behind the balancer, the access line and an MQTT connection's lines name the client
    // its PROXY protocol header names; the MQTT ones name the balancer too.
    let client: std::net::SocketAddr = "203.0.113.9:4444".parse().unwrap();
    let mut http = Raw::open_from(app.http_addr, [127, 0, 0, 2].into()).await;
    let mut request = header(Version::V2, client, app.http_addr);
    request.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    http.send(&request).await;
    let mut answer = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(http.stream_mut(), &mut answer)
        .await
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    let mut mqtt = Raw::open_from(app.mqtt_addr, [127, 0, 0, 2].into()).await;
    let mut connect = header(Version::V1, client, app.mqtt_addr);
    connect.extend(build::connect_with_login(
        "behind-lb",
        Some(&[]),
        "dev",
        b"wrong",
    ));
    mqtt.send(&connect).await;
    assert_eq!(mqtt.expect(2).await.body[1], 0x86);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let lines = captured.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("peer=203.0.113.9:4444") && l.contains("route=\"/healthz\"")),
        "no access line names the balancer's client:\n{}",
        lines.join("\n")
    );
    let mqtt_line = lines
        .iter()
        .find(|l| l.contains("client=behind-lb"))
        .unwrap_or_else(|| panic!("no line of the MQTT client:\n{}", lines.join("\n")));
    assert!(
        mqtt_line.contains("via=127.0.0.2:") && mqtt_line.contains("peer=203.0.113.9:4444"),
        "{mqtt_line}"
    );

    // MQTT: lines of a connection carry its client id once its CONNECT is read.
    let (_raw, ack) = Raw::connect(
        &app,
        &build::connect_with_login("meter-7", Some(&[]), "dev", b"wrong"),
    )
    .await;
    assert_eq!(ack.body[1], 0x86);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let lines = captured.lines();
    let refused = lines
        .iter()
        .filter(|l| l.contains("client=meter-7"))
        .count();
    assert!(
        refused > 0,
        "no line names the client:\n{}",
        lines.join("\n")
    );

    // A handler that panics: the same router, layers and server, with one more route.
    let running = app.running.as_ref().unwrap();
    let state = ApiState::from(api::Shared {
        store: running.store.clone(),
        broker: running.broker.clone(),
        tokens: PageTokens::new(&[7; 32]),
        topic_limits: retaind::topic::TopicLimits::default(),
        max_payload_bytes: 128 * 1024,
        auth: retaind::auth::Authenticator::disabled(),
        throttle: Throttle::new(RateLimits::UNLIMITED),
        allowed_hosts: AllowedHosts::new(Vec::<String>::new()),
        metrics: Metrics::default(),
        watches: api::Watches::new(
            running.store.clone(),
            api::WatchSettings::default(),
            CancellationToken::new(),
        ),
    });
    let metrics = state.metrics.clone();
    let extra = Router::new().route(
        "/test/panic",
        get(|| async {
            if true {
                panic!("on purpose");
            }
        }),
    );
    let router = api::router_with(state, extra);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(api::serve(
        HttpIncoming::new(listener, None),
        router,
        HttpTimeouts {
            header: Duration::from_secs(5),
            body: Duration::from_secs(5),
            idle: Duration::from_secs(5),
        },
        api::http_places(64),
        shutdown.clone(),
        Duration::from_secs(1),
    ));
    let client = reqwest::Client::new();
    let res = client
        .get(format!("http://{addr}/test/panic"))
        .send()
        .await
        .expect("an answer, not a dropped connection");
    assert_eq!(res.status(), 500);
    assert_eq!(
        res.headers()["x-amzn-errortype"],
        "InternalFailureException"
    );
    let id = res.headers()["x-amzn-requestid"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = res.text().await.unwrap();
    assert!(body.contains("x-amzn-RequestId"), "{body}");
    let lines = captured.lines();
    let panicked = lines
        .iter()
        .find(|l| l.contains("a handler panicked"))
        .expect("the panic is logged");
    assert!(panicked.contains(&format!("request_id={id}")), "{panicked}");
    assert!(panicked.contains("on purpose"), "{panicked}");
    // The same client goes on: the server survived the panic.
    let health = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        metrics
            .render()
            .contains(r#"retaind_http_requests_total{operation="/test/panic",status="500"} 1"#)
    );
    shutdown.cancel();
}
