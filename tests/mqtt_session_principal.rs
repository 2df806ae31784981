//! A persistent session belongs to the principal that created it: another principal
//! connecting with the same client id starts clean, without the first one's queued messages
//! or subscriptions; the same principal resumes it.

mod common;

use common::mqtt::raw::{Raw, RawPacket, build};
use common::{Backend, TestApp, fresh_db, spawn_app_with, test_config};

/// Two devices that may both use client id `shared-id` and read `news/#`; `beta` may not
/// receive `news/secret`. `admin` publishes.
fn config_toml() -> String {
    let alpha = retaind::auth::hash_password("alpha-pw");
    let beta = retaind::auth::hash_password("beta-pw");
    let admin = retaind::auth::hash_password("admin-pw");
    let device = |name: &str, hash: &str, deny: &str| {
        format!(
            r#"
[[principals]]
name = "{name}"
mqtt_username = "{name}"
mqtt_password_hash = "{hash}"

[[principals.statements]]
effect = "Allow"
actions = ["iot:Connect"]
resources = ["client/shared-id"]

[[principals.statements]]
effect = "Allow"
actions = ["iot:Subscribe", "iot:Receive"]
resources = ["topicfilter/news/#", "topic/news/#"]
{deny}
"#
        )
    };
    let deny_secret = r#"
[[principals.statements]]
effect = "Deny"
actions = ["iot:Receive"]
resources = ["topic/news/secret"]
"#;
    format!(
        r#"{}{}
[[principals]]
name = "admin"
mqtt_username = "admin"
mqtt_password_hash = "{admin}"

[[principals.statements]]
effect = "Allow"
actions = ["iot:*"]
resources = ["*"]
"#,
        device("alpha", &alpha, ""),
        device("beta", &beta, deny_secret),
    )
}

async fn app() -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.toml");
    std::fs::write(&path, config_toml()).unwrap();
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.principals = Some(path);
    (spawn_app_with(db, config).await, dir)
}

/// A CONNECT without clean start (3.1.1: clean session 0; 5: a one-hour session), with login.
fn resume(v5: bool, user: &str, password: &str) -> Vec<u8> {
    let mut body = build::string("MQTT");
    body.push(if v5 { 5 } else { 4 });
    body.push(0x80 | 0x40);
    body.extend(60u16.to_be_bytes());
    if v5 {
        body.extend(build::props(&[0x11, 0, 0, 0x0E, 0x10]));
    }
    body.extend(build::string("shared-id"));
    body.extend(build::string(user));
    body.extend(build::string(password));
    build::packet(0x10, &body)
}

fn props(v5: bool) -> Option<&'static [u8]> {
    v5.then_some(&[][..])
}

/// `user` connects as `shared-id` and its CONNACK is read: (connection, session present).
async fn connect(app: &TestApp, v5: bool, user: &str) -> (Raw, bool) {
    let (raw, ack) = Raw::connect(app, &resume(v5, user, &format!("{user}-pw"))).await;
    assert_eq!(ack.body[1], 0, "accepted: {ack:?}");
    (raw, ack.body[0] & 1 == 1)
}

/// The admin publishes QoS 1 messages to `news/<topic>` and waits for each PUBACK.
async fn publish(app: &TestApp, topics: &[&str]) {
    let login = build::connect_with_login("admin-client", None, "admin", b"admin-pw");
    let (mut admin, _) = Raw::connect(app, &login).await;
    for (pkid, topic) in (1..).zip(topics) {
        let topic = format!("news/{topic}");
        admin
            .send(&build::publish(
                &topic,
                1,
                false,
                false,
                pkid,
                None,
                topic.as_bytes(),
            ))
            .await;
        admin.expect(4).await;
    }
}

/// What arrives before the answer to a PINGREQ: queued messages are written before anything
/// the client sends is read.
async fn before_pong(raw: &mut Raw) -> Vec<RawPacket> {
    raw.send(&[0xC0, 0x00]).await;
    let mut got = Vec::new();
    loop {
        let p = raw.recv().await.expect("the connection stays open");
        if p.kind() == 13 {
            return got;
        }
        got.push(p);
    }
}

/// alpha subscribes to `news/#` with a persistent session and leaves; the admin publishes
/// `news/open` and `news/secret`, which are queued for it.
async fn alpha_has_queued_messages(app: &TestApp, v5: bool) {
    let (mut alpha, present) = connect(app, v5, "alpha").await;
    assert!(!present);
    alpha
        .send(&build::subscribe(1, "news/#", 1, props(v5)))
        .await;
    alpha.expect(9).await;
    alpha.send(&[0xE0, 0x00]).await;
    assert_eq!(alpha.until_closed().await, Vec::<RawPacket>::new());
    publish(app, &["open", "secret"]).await;
}

async fn another_principal_starts_clean_without_the_queued_messages(v5: bool) {
    let (app, _dir) = app().await;
    alpha_has_queued_messages(&app, v5).await;
    let (mut beta, present) = connect(&app, v5, "beta").await;
    assert!(!present, "beta must not resume alpha's session");
    assert_eq!(before_pong(&mut beta).await, Vec::<RawPacket>::new());
    // alpha's subscriptions went with its session: beta gets nothing it did not subscribe to.
    publish(&app, &["later"]).await;
    assert_eq!(before_pong(&mut beta).await, Vec::<RawPacket>::new());
}

#[tokio::test]
async fn v3_another_principal_resuming_a_session_starts_clean_without_its_messages() {
    another_principal_starts_clean_without_the_queued_messages(false).await;
}

#[tokio::test]
async fn v5_another_principal_resuming_a_session_starts_clean_without_its_messages() {
    another_principal_starts_clean_without_the_queued_messages(true).await;
}

#[tokio::test]
async fn the_same_principal_resumes_its_session_with_its_queued_messages() {
    let (app, _dir) = app().await;
    alpha_has_queued_messages(&app, true).await;
    let (mut alpha, present) = connect(&app, true, "alpha").await;
    assert!(present);
    let topics: Vec<String> = before_pong(&mut alpha)
        .await
        .iter()
        .map(|p| p.publish(true).topic)
        .collect();
    assert_eq!(topics, ["news/open", "news/secret"]);
}

#[tokio::test]
async fn a_session_beta_created_is_not_resumed_by_alpha_either() {
    let (app, _dir) = app().await;
    let (mut beta, _) = connect(&app, true, "beta").await;
    beta.send(&build::subscribe(1, "news/#", 1, Some(&[])))
        .await;
    beta.expect(9).await;
    beta.send(&[0xE0, 0x00]).await;
    beta.until_closed().await;
    publish(&app, &["open"]).await;
    let (mut alpha, present) = connect(&app, true, "alpha").await;
    assert!(!present);
    assert_eq!(before_pong(&mut alpha).await, Vec::<RawPacket>::new());
}
