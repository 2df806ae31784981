//! `GET /metrics` (issue 16, decision 015): scraped before and after a known workload over a
//! real server, parsed as Prometheus text, and every counter moved by exactly that workload.
//! Guarded by `retaind:Metrics` when principals exist.

mod common;

use std::collections::HashMap;

use common::mqtt::raw::{Raw, build};
use common::mqtt::{Qos5, V5, p5, v5_options};
use common::{Backend, TestApp, fresh_db, spawn_app, spawn_app_with, test_config};
use prometheus_parse::{Scrape, Value};

/// Every sample of the page by its name and sorted labels (histograms by their `_count`).
fn scrape_page(page: &str) -> HashMap<String, f64> {
    let lines = page.lines().map(|l| Ok(l.to_owned()));
    let scrape = Scrape::parse(lines).expect("the page parses as Prometheus text");
    let mut samples = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<_> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let value = match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => continue,
        };
        samples.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
    }
    samples
}

async fn scrape(app: &TestApp, token: Option<&str>) -> HashMap<String, f64> {
    let mut req = app.http.get(app.url("/metrics"));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.expect("HTTP request");
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    scrape_page(&res.text().await.unwrap())
}

fn at(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

fn moved(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    at(after, series) - at(before, series)
}

#[tokio::test]
async fn counters_move_by_exactly_the_workload_on_both_stores() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = spawn_app(backend).await;
        let before = scrape(&app, None).await;

        let (mut sub, _) = V5::connect(v5_options(&app, "metrics-sub")).await;
        sub.subscribe("m/#", Qos5::AtLeastOnce).await;
        let (mut publisher, _) = V5::connect(v5_options(&app, "metrics-pub")).await;
        publisher
            .publish("m/a", Qos5::AtLeastOnce, false, b"1")
            .await;
        publisher
            .publish("m/a", Qos5::AtLeastOnce, false, b"2")
            .await;
        publisher
            .publish("m/b", Qos5::AtMostOnce, false, b"3")
            .await;
        for i in 0..3 {
            let res = app
                .publish(format!("/topics/m%2Fr{i}?retain=true&qos=1"), "kept")
                .await;
            assert_eq!(res.status(), 200);
        }
        let missing = app.get("/retainedMessage/m%2Fmissing").await;
        assert_eq!(missing.status(), 404);
        // Everything sent is received before the second scrape: 5 at QoS 1, 1 at QoS 0.
        for _ in 0..6 {
            sub.next_publish().await;
        }

        // The sum of payload bytes stands for a minute: the store's clock moves past it.
        app.clock.advance(retaind::store::PAYLOAD_BYTES_MAX_AGE);
        let after = scrape(&app, None).await;
        let m = |series: &str| moved(&before, &after, series);
        assert_eq!(at(&before, "retaind_retained_bytes{}"), 0.0);
        assert_eq!(
            at(&after, "retaind_retained_bytes{}"),
            3.0 * 4.0,
            "three times \"kept\""
        );
        assert_eq!(
            m("retaind_http_requests_total{operation=Publish,status=200}"),
            3.0
        );
        assert_eq!(
            m("retaind_http_requests_total{operation=GetRetainedMessage,status=404}"),
            1.0
        );
        assert_eq!(
            m("retaind_http_requests_total{operation=/metrics,status=200}"),
            1.0,
            "the first scrape, counted once answered"
        );
        assert_eq!(
            m("retaind_http_request_duration_seconds_count{operation=Publish}"),
            3.0
        );
        assert_eq!(m("retaind_mqtt_messages_received_total{qos=1}"), 2.0);
        assert_eq!(m("retaind_mqtt_messages_received_total{qos=0}"), 1.0);
        assert_eq!(m("retaind_mqtt_messages_sent_total{qos=1}"), 5.0);
        assert_eq!(m("retaind_mqtt_messages_sent_total{qos=0}"), 1.0);
        assert_eq!(at(&after, "retaind_mqtt_connections{}"), 2.0);
        assert_eq!(at(&after, "retaind_mqtt_sessions{}"), 2.0);
        assert_eq!(at(&after, "retaind_mqtt_subscriptions{}"), 1.0);
        assert_eq!(at(&after, "retaind_retained_messages{}"), 3.0);
        assert_eq!(at(&after, "retaind_cluster_nodes{}"), 1.0);
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            at(&after, &format!("retaind_build_info{{version={version}}}")),
            1.0
        );
        assert_eq!(
            m("retaind_auth_failures_total{kind=missing}"),
            0.0,
            "no principals, no refusals"
        );
        // The three retained publishes, however they were grouped into commits.
        assert_eq!(m("retaind_store_write_batch_size_sum{}"), 3.0);
        let batches = m("retaind_store_write_batch_size_count{}");
        assert!((1.0..=3.0).contains(&batches), "{batches} batches");
        assert_eq!(
            m("retaind_store_write_batch_duration_seconds_count{}"),
            batches
        );
        // The one GetRetainedMessage: a hit, a miss, or past the cache while it is not trusted.
        let lookups: f64 = ["hit", "miss", "bypass"]
            .iter()
            .map(|r| m(&format!("retaind_store_cache_lookups_total{{result={r}}}")))
            .sum();
        assert_eq!(lookups, 1.0);
        let pool = at(&after, "retaind_store_pool_connections{state=idle}")
            + at(&after, "retaind_store_pool_connections{state=in_use}");
        assert!(pool >= 1.0, "{pool} pool connections");
        assert!(
            !after
                .keys()
                .any(|k| k.starts_with("retaind_store_errors_total")),
            "no store errors"
        );
    }
}

#[tokio::test]
async fn a_throttled_request_is_counted_as_throttled_and_as_a_429() {
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.rate_publish = 1.0;
    let app = spawn_app_with(db, config).await;
    let before = scrape(&app, None).await;
    assert_eq!(app.publish("/topics/t", "one").await.status(), 200);
    assert_eq!(app.publish("/topics/t", "two").await.status(), 429);
    let after = scrape(&app, None).await;
    let m = |series: &str| moved(&before, &after, series);
    assert_eq!(
        m("retaind_http_throttled_requests_total{operation=Publish}"),
        1.0
    );
    assert_eq!(
        m("retaind_http_requests_total{operation=Publish,status=429}"),
        1.0
    );
    assert_eq!(
        m("retaind_http_requests_total{operation=Publish,status=200}"),
        1.0
    );
}

const OPS_TOKEN: &str = "metrics-ops-token";
const DEV_TOKEN: &str = "metrics-dev-token";

fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

#[tokio::test]
async fn with_principals_the_page_needs_retaind_metrics_and_counts_refused_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[principals]]
name = "ops"
api_tokens_sha256 = ["{ops}"]
mqtt_username = "ops"
mqtt_password_hash = "{password}"
[[principals.statements]]
effect = "Allow"
actions = ["retaind:Metrics"]
resources = ["*"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:Connect"]
resources = ["client/*"]

[[principals]]
name = "dev"
api_tokens_sha256 = ["{dev}"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:*"]
resources = ["*"]
"#,
            ops = token_hash(OPS_TOKEN),
            dev = token_hash(DEV_TOKEN),
            password = retaind::auth::hash_password("right"),
        ),
    )
    .unwrap();
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.principals = Some(path);
    let app = spawn_app_with(db, config).await;
    let before = scrape(&app, Some(OPS_TOKEN)).await;

    let anonymous = app.get("/metrics").await;
    assert_eq!(anonymous.status(), 401);
    let dev = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(DEV_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(dev.status(), 403, "iot:* does not include retaind:Metrics");
    let body = dev.text().await.unwrap();
    assert!(body.contains("retaind:Metrics"), "{body}");
    let wrong = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);

    let (_, ack) = Raw::connect(
        &app,
        &build::connect_with_login("c", Some(&[]), "ops", b"wrong"),
    )
    .await;
    assert_eq!(ack.body[1], 0x86, "MQTT 5: bad user name or password");
    // Signed in, but not allowed to publish: refused (PUBACK 0x87), and counted as a drop.
    let (mut ops, ack) = Raw::connect(
        &app,
        &build::connect_with_login("c", Some(&[]), "ops", b"right"),
    )
    .await;
    assert_eq!(ack.body[1], 0, "signed in");
    ops.send(&build::publish(
        "not/mine",
        1,
        false,
        false,
        1,
        Some(&[]),
        b"x",
    ))
    .await;
    let puback = ops.expect(4).await;
    assert_eq!(puback.body[2], 0x87, "MQTT 5: not authorized");

    let after = scrape(&app, Some(OPS_TOKEN)).await;
    let m = |series: &str| moved(&before, &after, series);
    assert_eq!(m("retaind_auth_failures_total{kind=mqtt_password}"), 1.0);
    assert_eq!(m("retaind_mqtt_messages_dropped_total{reason=policy}"), 1.0);
    assert_eq!(m("retaind_auth_failures_total{kind=missing}"), 1.0);
    assert_eq!(
        m("retaind_auth_failures_total{kind=unknown_credentials}"),
        1.0
    );
    assert_eq!(
        m("retaind_http_requests_total{operation=/metrics,status=403}"),
        2.0
    );
}

/// MQTT 5 CONNECT with a session that outlives its connection (expiry 300 s).
fn persistent(id: &str, clean: bool) -> Vec<u8> {
    build::connect(id, clean, 60, Some(&[0x11, 0, 0, 1, 0x2C]))
}

#[tokio::test]
async fn messages_a_session_cannot_take_are_counted_by_reason() {
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.mqtt_max_queued_messages = 1;
    config.mqtt_max_publish_rate = 5.0;
    let app = spawn_app_with(db, config).await;
    let (mut away, _) = Raw::connect(&app, &persistent("away", true)).await;
    away.send(&build::subscribe(1, "d/#", 1, Some(&[]))).await;
    away.expect(9).await;
    away.send(&build::disconnect_v5(0)).await;
    let _ = away.until_closed().await;
    let before = scrape(&app, None).await;

    let (mut publisher, _) = V5::connect(v5_options(&app, "dropper")).await;
    // QoS 0 for an absent client is not queued.
    publisher
        .publish("d/zero", Qos5::AtMostOnce, false, b"0")
        .await;
    // The first QoS 1 message fills its queue of one (expiring in 1 s); the next does not fit.
    let expiring = p5::PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    publisher
        .publish_with("d/one", Qos5::AtLeastOnce, false, b"1", expiring)
        .await;
    publisher
        .publish("d/one", Qos5::AtLeastOnce, false, b"2")
        .await;
    // Five a second at most: of a burst of ten from one connection, some are refused, each
    // with PUBACK 0x97.
    let mut quota_acks = 0.0;
    for _ in 0..10 {
        let reason = publisher
            .publish_with("e/rate", Qos5::AtLeastOnce, false, b"r", Default::default())
            .await;
        if reason == Some(p5::PubAckReason::QuotaExceeded) {
            quota_acks += 1.0;
        }
    }
    assert!(quota_acks > 0.0, "the burst went over the rate");
    app.clock.advance(std::time::Duration::from_secs(30));
    // Back after the queued message expired: it is dropped, not sent.
    let (mut back, ack) = Raw::connect(&app, &persistent("away", false)).await;
    assert_eq!(ack.body[0], 1, "session present");
    back.send(&[0xC0, 0x00]).await; // PINGREQ
    back.expect(13).await;

    let after = scrape(&app, None).await;
    let m = |series: &str| moved(&before, &after, series);
    assert_eq!(
        m("retaind_mqtt_messages_dropped_total{reason=offline}"),
        1.0
    );
    assert_eq!(
        m("retaind_mqtt_messages_dropped_total{reason=queue_full}"),
        1.0
    );
    assert_eq!(
        m("retaind_mqtt_messages_dropped_total{reason=expired}"),
        1.0
    );
    assert_eq!(
        m("retaind_mqtt_messages_dropped_total{reason=publish_rate}"),
        quota_acks
    );
    assert_eq!(
        m("retaind_mqtt_messages_received_total{qos=1}"),
        12.0,
        "refused publishes were received all the same"
    );
}
