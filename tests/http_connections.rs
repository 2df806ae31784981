//! DeleteConnection (`DELETE /connections/{clientId}`, AWS IoT data plane): an operator
//! disconnects an MQTT client over HTTP. MQTT 5 clients get DISCONNECT 0x98 (Administrative
//! action); the Will is published unless `preventWillMessage=true`; a persistent session is
//! kept unless `cleanSession=true`. A client not connected is 404; a malformed request is 400
//! and disconnects no one; the policy needs `iot:DeleteConnection` on `client/<id>`.

mod common;

use std::time::Duration;

use common::mqtt::raw::{Raw, build};
use common::{Backend, TestApp, fresh_db, spawn_app, spawn_app_with, test_config};
use sha2::{Digest, Sha256};

/// An MQTT 5 client `id` with a persistent session (expiry 300 s) and a retained Will on
/// `will/<id>`.
async fn persistent_with_will(app: &TestApp, id: &str, clean: bool) -> (Raw, u8) {
    let topic = format!("will/{id}");
    let will = build::Will {
        topic: &topic,
        payload: b"gone",
        qos: 1,
        retain: true,
        props: &[],
    };
    let connect = build::connect_with_will(id, clean, 60, Some(&[0x11, 0, 0, 1, 0x2C]), will);
    let (raw, ack) = Raw::connect(app, &connect).await;
    assert_eq!(ack.body[1], 0, "{ack:?}");
    (raw, ack.body[0])
}

async fn delete(app: &TestApp, path_and_query: &str) -> reqwest::Response {
    app.http
        .delete(app.url(path_and_query))
        .send()
        .await
        .unwrap()
}

/// What the server sent before closing: one DISCONNECT 0x98, with a reason string.
async fn disconnected_by_operator(raw: &mut Raw) {
    let got = common::mqtt::within("the close", raw.until_closed()).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].disconnect_reason(), 0x98, "Administrative action");
    let said = String::from_utf8_lossy(&got[0].body).into_owned();
    assert!(said.contains("by an operator (DeleteConnection)"), "{said}");
}

async fn clear(app: &TestApp, t: &str) {
    let res = app
        .http
        .post(app.url(&format!("/topics/{}?retain=true", common::encode(t))))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn a_deleted_connection_closes_with_0x98_and_keeps_or_ends_its_session_and_will_as_asked() {
    let app = spawn_app(Backend::Sqlite).await;

    // The defaults: the Will is published, the persistent session kept.
    let (mut dev, _) = persistent_with_will(&app, "dev", true).await;
    let res = delete(&app, "/connections/dev").await;
    assert_eq!(res.status(), 200);
    assert!(res.bytes().await.unwrap().is_empty(), "an empty body");
    disconnected_by_operator(&mut dev).await;
    common::mqtt::within("the Will", async {
        while app.stored_payload("will/dev").await.is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    clear(&app, "will/dev").await;
    let (mut dev, present) = persistent_with_will(&app, "dev", false).await;
    assert_eq!(present, 1, "the session was kept");

    // cleanSession and preventWillMessage: no Will, and the session is gone.
    let res = delete(
        &app,
        "/connections/dev?cleanSession=true&preventWillMessage=TRUE",
    )
    .await;
    assert_eq!(res.status(), 200);
    disconnected_by_operator(&mut dev).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.stored_payload("will/dev").await, None, "no Will");
    let (_dev, present) = persistent_with_will(&app, "dev", false).await;
    assert_eq!(present, 0, "the session ended with the connection");

    // MQTT 3.1.1 has no DISCONNECT from the server: the connection is closed.
    let (mut old, _) = Raw::connect(&app, &build::connect("old", true, 60, None)).await;
    assert_eq!(delete(&app, "/connections/old").await.status(), 200);
    let got = common::mqtt::within("the close", old.until_closed()).await;
    assert!(got.is_empty(), "{got:?}");

    // Not connected (any more, or ever): 404, as AWS answers.
    let res = delete(&app, "/connections/old").await;
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.headers()["x-amzn-errortype"],
        "ResourceNotFoundException"
    );
    assert_eq!(delete(&app, "/connections/nobody").await.status(), 404);
}

/// Client ids can hold any character; the SDKs percent-encode them.
#[tokio::test]
async fn a_client_id_with_slashes_and_spaces_is_found_percent_encoded() {
    let app = spawn_app(Backend::Sqlite).await;
    let id = "site 7/meter é";
    let (mut raw, _) = Raw::connect(&app, &build::connect(id, true, 60, Some(&[]))).await;
    let res = delete(&app, &format!("/connections/{}", common::encode(id))).await;
    assert_eq!(res.status(), 200);
    disconnected_by_operator(&mut raw).await;
}

/// Each malformed request is 400 InvalidRequestException and the client stays connected.
#[tokio::test]
async fn a_malformed_request_is_refused_and_disconnects_no_one() {
    let app = spawn_app(Backend::Sqlite).await;
    let (mut dev, _) = Raw::connect(&app, &build::connect("dev", true, 60, Some(&[]))).await;
    let long = "d".repeat(129);
    for (path, why) in [
        ("/connections/%24dev".to_owned(), "start with '$'"),
        (format!("/connections/{long}"), "longer than 128"),
        ("/connections/".to_owned(), "empty"),
        ("/connections/d%00v".to_owned(), "U+0000"),
        (
            "/connections/dev?cleanSession=yes".to_owned(),
            "cleanSession must be",
        ),
        (
            "/connections/dev?preventWillMessage=1".to_owned(),
            "preventWillMessage must be",
        ),
        ("/connections/%FF".to_owned(), "not valid UTF-8"),
    ] {
        let res = delete(&app, &path).await;
        assert_eq!(res.status(), 400, "{path}");
        assert_eq!(
            res.headers()["x-amzn-errortype"],
            "InvalidRequestException",
            "{path}"
        );
        let body = res.text().await.unwrap();
        assert!(body.contains(why), "{path}: {body}");
    }
    // 128 characters is still an id.
    assert_eq!(
        delete(&app, &format!("/connections/{}", &long[1..]))
            .await
            .status(),
        404
    );
    // Still connected: it gets its PINGRESP.
    dev.send(&[0xC0, 0]).await;
    dev.expect(13).await;
}

/// `iot:DeleteConnection` on `client/<id>`: a caller allowed some ids disconnects those and is
/// refused (403) the others, which stay connected; a caller without the action is refused.
#[tokio::test]
async fn the_policy_decides_whose_connection_a_caller_may_delete() {
    let hash = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    let device = retaind::auth::hash_password("device-secret");
    let principals = format!(
        r#"
[[principals]]
name = "operator"
api_tokens_sha256 = ["{operator}"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:DeleteConnection"]
resources = ["client/sensor-*"]

[[principals]]
name = "reader"
api_tokens_sha256 = ["{reader}"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:GetRetainedMessage"]
resources = ["*"]

[[principals]]
name = "device"
mqtt_username = "device"
mqtt_password_hash = "{device}"
[[principals.statements]]
effect = "Allow"
actions = ["iot:Connect"]
resources = ["*"]
"#,
        operator = hash("operator-token"),
        reader = hash("reader-token"),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.toml");
    std::fs::write(&path, principals).unwrap();
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.principals = Some(path);
    let app = spawn_app_with(db, config).await;
    let login =
        |id: &'static str| build::connect_with_login(id, Some(&[]), "device", b"device-secret");
    let (mut sensor, _) = Raw::connect(&app, &login("sensor-1")).await;
    let (mut gateway, _) = Raw::connect(&app, &login("gateway-1")).await;
    let as_ = |token: &str, id: &str| {
        app.http
            .delete(app.url(&format!("/connections/{id}")))
            .bearer_auth(token)
            .send()
    };
    let res = as_("operator-token", "gateway-1").await.unwrap();
    assert_eq!(res.status(), 403);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("iot:DeleteConnection on client gateway-1"),
        "names the action and the client"
    );
    assert_eq!(as_("reader-token", "sensor-1").await.unwrap().status(), 403);
    let res = delete(&app, "/connections/sensor-1").await;
    assert_eq!(res.status(), 401, "no credentials");
    gateway.send(&[0xC0, 0]).await;
    gateway.expect(13).await;
    sensor.send(&[0xC0, 0]).await;
    sensor.expect(13).await;

    assert_eq!(
        as_("operator-token", "sensor-1").await.unwrap().status(),
        200
    );
    disconnected_by_operator(&mut sensor).await;
    gateway.send(&[0xC0, 0]).await;
    gateway.expect(13).await;
}
