//! A Postgres that goes away gives 503 ServiceUnavailableException, quickly, and the service
//! recovers by itself when the database returns; connections the database dropped while idle
//! are replaced without failing a request. The database sits behind a TCP proxy that the test
//! cuts and restores.

mod common;

use std::time::{Duration, Instant};

use common::proxy::{Mode, Proxy, app_behind_proxy};
use common::{
    Backend, fresh_db, postgres_host_port, postgres_url_via, spawn_app_with, test_config,
};

const STORE_TIMEOUT: Duration = Duration::from_secs(1);

async fn outage_then_recovery(mode: Mode) {
    let (app, proxy) = app_behind_proxy(STORE_TIMEOUT).await;
    app.retain("before", "v").await;

    proxy.fail(mode);
    for (method, path) in [
        ("POST", "/topics/during?retain=true"),
        ("GET", "/retainedMessage/before"),
        ("GET", "/retainedMessage"),
        ("GET", "/readyz"),
    ] {
        let started = Instant::now();
        let res = app
            .http
            .request(method.parse().unwrap(), app.url(path))
            .body("v")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 503, "{method} {path}");
        assert_eq!(
            res.headers()["x-amzn-errortype"],
            "ServiceUnavailableException"
        );
        // Not a hang: the answer comes within the store deadline (plus the queue wait before it).
        assert!(
            started.elapsed() < 3 * STORE_TIMEOUT,
            "{method} {path} took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "the process itself stays up"
    );

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.get("/readyz").await.status() != 200 {
        assert!(
            Instant::now() < deadline,
            "the service did not recover after the database returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.retain("after", "v").await;
    assert_eq!(app.get("/retainedMessage/before").await.status(), 200);
    assert_eq!(app.get("/retainedMessage/after").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_refuses_connections_gives_503_then_recovers() {
    outage_then_recovery(Mode::Refuse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_never_answers_gives_503_then_recovers() {
    outage_then_recovery(Mode::Blackhole).await;
}

/// Like a database restart, or an idle-session timeout: every connection is closed while the
/// service is idle, and the database answers new ones. The write batches run on connections
/// of their own (src/store/postgres/writers.rs); one idle for over a second is checked before
/// use, so the next publish reconnects instead of failing with 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_after_the_database_closed_idle_connections_succeeds() {
    let (app, proxy) = app_behind_proxy(STORE_TIMEOUT).await;
    app.retain("before", "v1").await;

    proxy.fail(Mode::Open);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.retain("before", "v2").await;
    app.retain("after", "v").await;

    let got: serde_json::Value = app
        .get("/retainedMessage/before")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        got["payload"], "djI=",
        "v2, base64: the second write was stored"
    );
    assert_eq!(app.get("/retainedMessage/after").await.status(), 200);
}

async fn start_error(config: &retaind::app::ServeConfig) -> String {
    match retaind::app::start(config, retaind::store::Clock::System).await {
        Ok(_) => panic!("retaind started without its database"),
        Err(e) => e.to_string(),
    }
}

/// Started while Postgres is down, retaind keeps trying for `--db-startup-wait`, then stops
/// with the real cause rather than "pool timed out"; a database that does not exist is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_is_not_there_at_start_is_named_with_its_cause() {
    let db = fresh_db(Backend::Postgres).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut config = test_config(&postgres_url_via(&db.url, closed));
    config.db_startup_wait = Duration::from_millis(1500);
    let started = Instant::now();
    let error = start_error(&config).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "gave up at once"
    );
    assert!(error.contains("Connection refused"), "{error}");
    assert!(!error.contains("pool timed out"), "{error}");

    let (host, port) = postgres_host_port(&db.url);
    let mut config = test_config(&format!(
        "postgres://postgres@{host}:{port}/retaind_no_such_database"
    ));
    config.db_startup_wait = Duration::ZERO;
    let error = start_error(&config).await;
    assert!(
        error.contains("database \"retaind_no_such_database\" does not exist"),
        "{error}"
    );
    assert!(!error.contains("at line"), "{error}");
}

/// A database that comes up within `--db-startup-wait` is simply used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retaind_waits_at_start_for_a_database_that_comes_up() {
    let db = fresh_db(Backend::Postgres).await;
    let proxy = Proxy::start(postgres_host_port(&db.url)).await;
    proxy.fail(Mode::Refuse);
    let mut config = test_config(&postgres_url_via(&db.url, proxy.addr));
    config.db_startup_wait = Duration::from_secs(20);
    let starting = tokio::spawn(async move { spawn_app_with(db, config).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!starting.is_finished(), "started without a database");
    proxy.restore();
    let app = starting.await.unwrap();
    app.retain("after", "v").await;
}

/// While the store does not answer, a connection stops reading once its publishes waiting for
/// the store hold 4 MiB of payload (or 1,024 publishes): a client cannot make the broker hold
/// a thousand of the largest messages. Once the store answers, every one is stored and
/// acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_waiting_for_a_stalled_store_is_not_read_past_4_mib() {
    use common::mqtt::raw::{Raw, build};
    use tokio::io::AsyncWriteExt;

    let db = fresh_db(Backend::Postgres).await;
    let proxy = Proxy::start(postgres_host_port(&db.url)).await;
    let mut config = test_config(&postgres_url_via(&db.url, proxy.addr));
    // Longer than the test: the held writes are not given up while it runs.
    config.store_timeout = Duration::from_secs(60);
    let app = spawn_app_with(db, config).await;
    let (mut raw, _) = Raw::connect(&app, &build::connect("big", true, 60, None)).await;

    proxy.pause();
    // 500 retained publishes of 100 KiB: 50 MiB, each waiting for the store.
    const SENT: u16 = 500;
    let payload = vec![b'x'; 100 << 10];
    let all: Vec<u8> = (1..=SENT)
        .flat_map(|i| build::publish(&format!("big/{i}"), 1, true, false, i, None, &payload))
        .collect();
    let mut taken = 0;
    while taken < all.len() {
        // A write that times out wrote nothing.
        let write = raw.stream_mut().write(&all[taken..]);
        match tokio::time::timeout(Duration::from_millis(500), write).await {
            Ok(Ok(n)) => taken += n,
            Ok(Err(e)) => panic!("the server closed the connection: {e}"),
            Err(_) => break,
        }
    }
    // 4 MiB read, plus what the two sockets' buffers hold.
    assert!(
        taken < 30 << 20,
        "{} MiB taken while the store stalls",
        taken >> 20
    );

    proxy.resume();
    common::mqtt::within(
        "the rest to be taken",
        raw.stream_mut().write_all(&all[taken..]),
    )
    .await
    .unwrap();
    for _ in 0..SENT {
        let ack = common::mqtt::within("a PUBACK", raw.expect(4)).await;
        assert_eq!(ack.ack_reason(), 0, "stored: {ack:?}");
    }
    let last = app.get(&format!("/retainedMessage/big/{SENT}")).await;
    assert_eq!(last.status(), 200);
}
