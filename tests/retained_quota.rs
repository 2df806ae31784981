//! Quotas on the number of stored retained messages, through the real server on both stores:
//! `--max-retained-messages` for the service, `max_retained_messages` per principal (with
//! `--max-retained-messages-per-principal` as the default), over HTTP and MQTT. Every refusal is
//! checked for its error or reason code and for leaving the stored state unchanged.

mod common;

use common::mqtt::raw::{Raw, RawPacket, build};
use common::{Backend, TestApp, fresh_db, spawn_app_with, test_config};
use sha2::{Digest, Sha256};

const V5: Option<&[u8]> = Some(&[]);

async fn app_with_service_quota(backend: Backend, max: u64) -> TestApp {
    let db = fresh_db(backend).await;
    let mut config = test_config(&db.url);
    config.max_retained_messages = max;
    spawn_app_with(db, config).await
}

async fn refused_as_quota(res: reqwest::Response, expected: &str) {
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["x-amzn-errortype"], "InvalidRequestException");
    let body: serde_json::Value = res.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(expected), "{message}");
    assert!(message.contains("nothing was stored"), "{message}");
}

async fn http_the_service_quota_refuses_new_topics_and_changes_nothing(backend: Backend) {
    let app = app_with_service_quota(backend, 2).await;
    app.retain("a", "1").await;
    app.retain("b", "1").await;
    let before = app.snapshot().await;
    let res = app.publish("/topics/c?retain=true&qos=1", "1").await;
    refused_as_quota(res, "the service keeps at most 2 retained messages").await;
    assert_eq!(app.snapshot().await, before);
    assert_eq!(app.get("/retainedMessage/c").await.status(), 404);
    // Only retained messages count: an ordinary publish goes through.
    let res = app.publish("/topics/c?qos=1", "live").await;
    assert_eq!(res.status(), 200);
    // Rewrites and deletes stay allowed at the limit, and a delete makes room.
    app.retain("a", "2").await;
    let res = app.publish("/topics/b?retain=true", "").await;
    assert_eq!(res.status(), 200);
    app.retain("c", "1").await;
    let topics: Vec<String> = app.snapshot().await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(topics, ["a", "c"]);
}

fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// "small" may keep one retained message; "plain" sets none and gets the default of two;
/// "device" (MQTT) may keep one.
async fn app_with_principals(backend: Backend) -> (TestApp, tempfile::TempDir) {
    let device = retaind::auth::hash_password("pw");
    let config = format!(
        r#"
[[principals]]
name = "small"
api_tokens_sha256 = ["{small}"]
max_retained_messages = 1
[[principals.statements]]
effect = "Allow"
actions = ["iot:*"]
resources = ["*"]

[[principals]]
name = "plain"
api_tokens_sha256 = ["{plain}"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:*"]
resources = ["*"]

[[principals]]
name = "device"
mqtt_username = "device"
mqtt_password_hash = "{device}"
max_retained_messages = 1
[[principals.statements]]
effect = "Allow"
actions = ["iot:*"]
resources = ["*"]
"#,
        small = token_digest("small-token"),
        plain = token_digest("plain-token"),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.toml");
    std::fs::write(&path, config).unwrap();
    let db = fresh_db(backend).await;
    let mut config = test_config(&db.url);
    config.principals = Some(path);
    config.max_retained_messages_per_principal = 2;
    (spawn_app_with(db, config).await, dir)
}

async fn publish_as(
    app: &TestApp,
    token: &str,
    topic: &str,
    body: &'static str,
) -> reqwest::Response {
    app.http
        .post(app.url(&format!("/topics/{topic}?retain=true&qos=1")))
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn stored_topics(app: &TestApp) -> Vec<String> {
    let page = app.store().list(None, 200).await.unwrap();
    page.into_iter().map(|s| s.topic.to_string()).collect()
}

async fn http_each_principal_is_held_to_its_own_quota(backend: Backend) {
    let (app, _dir) = app_with_principals(backend).await;
    assert_eq!(
        publish_as(&app, "small-token", "s1", "1").await.status(),
        200
    );
    let res = publish_as(&app, "small-token", "s2", "1").await;
    refused_as_quota(
        res,
        r#"principal "small" may keep at most 1 retained messages"#,
    )
    .await;
    assert_eq!(stored_topics(&app).await, ["s1"]);
    // Its own message can be rewritten; the other principal has its own (default) quota.
    assert_eq!(
        publish_as(&app, "small-token", "s1", "2").await.status(),
        200
    );
    assert_eq!(
        publish_as(&app, "plain-token", "p1", "1").await.status(),
        200
    );
    assert_eq!(
        publish_as(&app, "plain-token", "p2", "1").await.status(),
        200
    );
    let res = publish_as(&app, "plain-token", "p3", "1").await;
    refused_as_quota(
        res,
        r#"principal "plain" may keep at most 2 retained messages"#,
    )
    .await;
    assert_eq!(stored_topics(&app).await, ["p1", "p2", "s1"]);
    // Taking over one of small's topics moves it to plain's account... which is full.
    let res = publish_as(&app, "plain-token", "s1", "3").await;
    refused_as_quota(res, r#"principal "plain""#).await;
    assert_eq!(app.store().count(Some("small")).await.unwrap(), 1);
    assert_eq!(app.store().count(Some("plain")).await.unwrap(), 2);
}

/// The next packet, whatever it is.
async fn next(c: &mut Raw) -> RawPacket {
    c.recv().await.expect("a packet, not a closed connection")
}

async fn mqtt5_over_the_quota_gets_0x97_and_reaches_nobody(backend: Backend) {
    let app = app_with_service_quota(backend, 1).await;
    let (mut sub, _) = Raw::connect(&app, &build::connect("sub", true, 60, V5)).await;
    sub.send(&build::subscribe(1, "q/#", 2, V5)).await;
    sub.expect(9).await;
    let (mut publisher, _) = Raw::connect(&app, &build::connect("pub", true, 60, V5)).await;
    publisher
        .send(&build::publish("q/a", 1, true, false, 1, V5, b"first"))
        .await;
    assert_eq!(publisher.expect(4).await.ack_reason(), 0x00);
    assert_eq!(next(&mut sub).await.publish(true).topic, "q/a");
    sub.send(&build::ack(0x40, 1)).await;

    publisher
        .send(&build::publish("q/b", 1, true, false, 2, V5, b"over"))
        .await;
    assert_eq!(publisher.expect(4).await.ack_reason(), 0x97);
    publisher
        .send(&build::publish("q/c", 2, true, false, 3, V5, b"over"))
        .await;
    assert_eq!(publisher.expect(5).await.ack_reason(), 0x97);
    // A QoS 0 publish cannot be answered; it is dropped too.
    publisher
        .send(&build::publish("q/d", 0, true, false, 0, V5, b"over"))
        .await;
    // The next thing the subscriber gets is the rewrite below, not any refused message.
    publisher
        .send(&build::publish("q/a", 1, true, false, 4, V5, b"second"))
        .await;
    assert_eq!(publisher.expect(4).await.ack_reason(), 0x00);
    let got = next(&mut sub).await.publish(true);
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("q/a", &b"second"[..])
    );
    let stored: Vec<String> = app
        .store()
        .list(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.topic.to_string())
        .collect();
    assert_eq!(stored, ["q/a"]);
}

async fn mqtt311_over_the_quota_is_acknowledged_and_dropped(backend: Backend) {
    let app = app_with_service_quota(backend, 1).await;
    app.retain("kept", "1").await;
    let (mut c, _) = Raw::connect(&app, &build::connect("v3", true, 60, None)).await;
    c.send(&build::publish("dropped", 1, true, false, 1, None, b"x"))
        .await;
    // 3.1.1 cannot say "quota exceeded"; closing would only make the client resend.
    c.expect(4).await;
    c.send(&build::publish("dropped2", 2, true, false, 2, None, b"x"))
        .await;
    c.expect(5).await;
    c.send(&build::ack(0x62, 2)).await;
    c.expect(7).await;
    // The connection carries on: a rewrite of the stored topic is fine.
    c.send(&build::publish("kept", 1, true, false, 3, None, b"2"))
        .await;
    c.expect(4).await;
    assert_eq!(stored_topics(&app).await, ["kept"]);
    let kept = app.get_json("/retainedMessage/kept").await;
    assert_eq!(kept["payload"], "Mg=="); // base64 of "2"
}

async fn mqtt_a_principal_is_held_to_its_own_quota(backend: Backend) {
    let (app, _dir) = app_with_principals(backend).await;
    let connect = build::connect_with_login("dev", V5, "device", b"pw");
    let (mut c, ack) = Raw::connect(&app, &connect).await;
    assert_eq!(ack.body[1], 0x00);
    c.send(&build::publish("d/1", 1, true, false, 1, V5, b"x"))
        .await;
    assert_eq!(c.expect(4).await.ack_reason(), 0x00);
    c.send(&build::publish("d/2", 1, true, false, 2, V5, b"x"))
        .await;
    assert_eq!(c.expect(4).await.ack_reason(), 0x97);
    // Another principal is not affected.
    assert_eq!(
        publish_as(&app, "small-token", "s1", "1").await.status(),
        200
    );
    assert_eq!(stored_topics(&app).await, ["d/1", "s1"]);
    assert_eq!(app.store().count(Some("device")).await.unwrap(), 1);
}

for_each_backend!(
    http_the_service_quota_refuses_new_topics_and_changes_nothing,
    http_each_principal_is_held_to_its_own_quota,
    mqtt5_over_the_quota_gets_0x97_and_reaches_nobody,
    mqtt311_over_the_quota_is_acknowledged_and_dropped,
    mqtt_a_principal_is_held_to_its_own_quota,
);
