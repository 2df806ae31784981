//! Per-principal request rates on the HTTP API, against the real server with tiny
//! configured rates: 429 `ThrottlingException` in the AWS error shape once a bucket is empty,
//! nothing stored by a throttled publish, refill over time, and separate buckets per principal
//! and per operation.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestApp, fresh_db, spawn_app_with, test_config, topic};
use retaind::app::ServeConfig;
use serde_json::Value;
use sha2::{Digest, Sha256};

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789";

async fn app_with(edit: impl FnOnce(&mut ServeConfig)) -> TestApp {
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    edit(&mut config);
    spawn_app_with(db, config).await
}

/// Status, `x-amzn-ErrorType` and message of a response that must be an AWS error.
async fn error_of(res: reqwest::Response) -> (u16, String, String) {
    let status = res.status().as_u16();
    assert!(res.headers().contains_key("x-amzn-requestid"));
    let kind = res
        .headers()
        .get("x-amzn-errortype")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = res.json().await.expect("a JSON error body");
    let message = body["message"].as_str().unwrap_or_default().to_owned();
    (status, kind, message)
}

async fn retain(app: &TestApp, name: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = app
        .http
        .post(app.url(&format!("/topics/{name}?retain=true&qos=1")))
        .body("payload");
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("HTTP request")
}

async fn get_as(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    let req = app.http.get(app.url(path)).bearer_auth(token);
    req.send().await.expect("HTTP request")
}

#[tokio::test]
async fn a_publish_beyond_the_rate_is_throttled_and_stores_nothing() {
    let app = app_with(|c| c.rate_publish = 2.0).await;
    assert_eq!(retain(&app, "a", None).await.status(), 200);
    assert_eq!(retain(&app, "b", None).await.status(), 200);

    let (status, kind, message) = error_of(retain(&app, "c", None).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (429, "ThrottlingException"),
        "{message}"
    );
    assert!(message.contains("Publish"), "{message}");
    assert!(app.store().get(topic("c")).await.unwrap().is_none());
    assert!(app.store().get(topic("a")).await.unwrap().is_some());
}

#[tokio::test]
async fn each_operation_has_its_own_rate() {
    let app = app_with(|c| {
        c.rate_get_retained_message = 1.0;
        c.rate_list_retained_messages = 1.0;
        c.rate_publish = 1.0;
        c.rate_delete_connection = 1.0;
    })
    .await;
    let disconnect = || app.http.delete(app.url("/connections/nobody")).send();
    assert_eq!(retain(&app, "a", None).await.status(), 200);
    assert_eq!(app.get("/retainedMessage/a").await.status(), 200);
    assert_eq!(app.get("/retainedMessage").await.status(), 200);
    assert_eq!(disconnect().await.unwrap().status(), 404, "not connected");

    for res in [
        retain(&app, "a", None).await,
        app.get("/retainedMessage/a").await,
        app.get("/retainedMessage").await,
        disconnect().await.unwrap(),
    ] {
        let (status, kind, message) = error_of(res).await;
        assert_eq!(
            (status, kind.as_str()),
            (429, "ThrottlingException"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn a_throttled_caller_is_admitted_again_once_its_bucket_refills() {
    // Two a second: a token comes back every 500 ms. The burst is used up within a few
    // requests (more only if the machine is slow enough for tokens to come back meanwhile).
    let app = app_with(|c| c.rate_list_retained_messages = 2.0).await;
    let mut admitted = 0;
    let throttled_at = loop {
        match app.get("/retainedMessage").await.status().as_u16() {
            200 => admitted += 1,
            429 => break Instant::now(),
            other => panic!("unexpected status {other}"),
        }
        assert!(admitted <= 20, "never throttled");
    };
    assert!(admitted >= 2, "the burst is one second's worth: {admitted}");

    let deadline = throttled_at + Duration::from_secs(5);
    loop {
        let status = app.get("/retainedMessage").await.status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(Instant::now() < deadline, "the bucket never refilled");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // A refill is one token, not a new burst.
    assert_eq!(app.get("/retainedMessage").await.status(), 429);
}

#[tokio::test]
async fn each_principal_has_its_own_buckets() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("auth.toml");
    let mut toml = String::new();
    for (name, token) in [("alice", ALICE), ("bob", BOB)] {
        toml += &format!(
            r#"
[[principals]]
name = "{name}"
api_tokens_sha256 = ["{hash}"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:Publish", "iot:RetainPublish", "iot:GetRetainedMessage", "iot:ListRetainedMessages"]
resources = ["*"]
"#,
            hash = hex::encode(Sha256::digest(token.as_bytes())),
        );
    }
    std::fs::write(&path, toml).expect("writing the config");
    let app = app_with(|c| {
        c.principals = Some(path);
        c.rate_publish = 1.0;
        c.rate_get_retained_message = 1.0;
    })
    .await;

    assert_eq!(retain(&app, "a", Some(ALICE)).await.status(), 200);
    assert_eq!(retain(&app, "b", Some(ALICE)).await.status(), 429);
    assert!(app.store().get(topic("b")).await.unwrap().is_none());
    assert_eq!(retain(&app, "b", Some(BOB)).await.status(), 200);

    assert_eq!(get_as(&app, "/retainedMessage/a", BOB).await.status(), 200);
    assert_eq!(get_as(&app, "/retainedMessage/a", BOB).await.status(), 429);
    assert_eq!(
        get_as(&app, "/retainedMessage/a", ALICE).await.status(),
        200
    );

    // Credentials are checked first: an unknown token is refused, not counted or throttled.
    let res = get_as(&app, "/retainedMessage/a", "nobody-0123456789").await;
    assert_eq!(res.status(), 403);
}
