//! Authentication and authorization on the HTTP API, against the real server with a principals
//! file, on SQLite and on Postgres; and the refusal to serve anonymously beyond loopback.
//!
//! SigV4 as the AWS SDKs sign it is covered end to end with boto3 in
//! `tests/python/test_auth.py`; here requests carry bearer tokens.

mod common;

use std::path::PathBuf;

use common::{Backend, FreshDb, T0_MS, TestApp, fresh_db, spawn_app_with, test_config};
use retaind::app::{self, ServeConfig};
use retaind::store::Clock;
use serde_json::Value;
use sha2::{Digest, Sha256};

const ADMIN_TOKEN: &str = "admin-token-0123456789";
const READER_TOKEN: &str = "reader-token-0123456789";
/// May publish everywhere, but keep retained messages only outside `secret/`.
const WRITER_TOKEN: &str = "writer-token-0123456789";

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn principals_toml() -> String {
    format!(
        r##"
[[principals]]
name = "admin"
api_tokens_sha256 = ["{admin}"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:Publish", "iot:RetainPublish", "iot:GetRetainedMessage", "iot:ListRetainedMessages"]
resources = ["*"]

[[principals]]
name = "reader"
api_tokens_sha256 = ["{reader}"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:GetRetainedMessage", "iot:ListRetainedMessages"]
resources = ["*"]
[[principals.statements]]
effect = "Deny"
actions = ["iot:GetRetainedMessage"]
resources = ["topic/secret/#"]

[[principals]]
name = "writer"
api_tokens_sha256 = ["{writer}"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:Publish", "iot:RetainPublish"]
resources = ["*"]
[[principals.statements]]
effect = "Deny"
actions = ["iot:RetainPublish"]
resources = ["topic/secret/#"]
"##,
        admin = token_hash(ADMIN_TOKEN),
        reader = token_hash(READER_TOKEN),
        writer = token_hash(WRITER_TOKEN),
    )
}

/// The server with the principals above; the returned directory holds the config file.
async fn spawn_secured(backend: Backend) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("auth.toml");
    std::fs::write(&path, principals_toml()).expect("writing the config");
    let db = fresh_db(backend).await;
    let mut config = test_config(&db.url);
    config.principals = Some(path);
    (spawn_app_with(db, config).await, dir)
}

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: &'static str,
) -> reqwest::Response {
    let mut req = app.http.request(method, app.url(path)).body(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("HTTP request")
}

async fn get(app: &TestApp, path: &str, token: Option<&str>) -> reqwest::Response {
    send(app, reqwest::Method::GET, path, token, "").await
}

async fn post(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    body: &'static str,
) -> reqwest::Response {
    send(app, reqwest::Method::POST, path, token, body).await
}

/// Status, `x-amzn-ErrorType` and message of an error response, which must carry a request id.
async fn error_of(res: reqwest::Response) -> (u16, String, String) {
    let status = res.status().as_u16();
    assert!(res.headers().contains_key("x-amzn-requestid"));
    let kind = res
        .headers()
        .get("x-amzn-errortype")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = res.json().await.expect("a JSON error body");
    (
        status,
        kind,
        body["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Every retained topic, as the admin sees it.
async fn stored_topics(app: &TestApp) -> Vec<String> {
    let res = get(app, "/retainedMessage?maxResults=200", Some(ADMIN_TOKEN)).await;
    assert_eq!(res.status(), 200);
    let page: Value = res.json().await.unwrap();
    page["retainedTopics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topic"].as_str().unwrap().to_owned())
        .collect()
}

async fn tokens_allow_what_their_policy_allows(backend: Backend) {
    let (app, _dir) = spawn_secured(backend).await;
    let res = post(
        &app,
        "/topics/room%2F1?retain=true&qos=1",
        Some(WRITER_TOKEN),
        "21.5",
    )
    .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    // Publishing without retaining needs only iot:Publish, which `secret/` allows.
    let res = post(
        &app,
        "/topics/secret%2Fkey",
        Some(WRITER_TOKEN),
        "live only",
    )
    .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());

    let res = get(&app, "/retainedMessage/room%2F1", Some(READER_TOKEN)).await;
    assert_eq!(res.status(), 200);
    let got: Value = res.json().await.unwrap();
    assert_eq!(got["topic"], "room/1");
    assert_eq!(got["lastModifiedTime"], T0_MS);
    let res = get(&app, "/retainedMessage", Some(READER_TOKEN)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(stored_topics(&app).await, ["room/1"]);
}

async fn policy_denials_are_forbidden_and_store_nothing(backend: Backend) {
    let (app, _dir) = spawn_secured(backend).await;
    post(
        &app,
        "/topics/secret%2Fkey?retain=true",
        Some(ADMIN_TOKEN),
        "v1",
    )
    .await;

    // iot:RetainPublish denied on secret/#: the stored message stays as it was.
    let res = post(
        &app,
        "/topics/secret%2Fkey?retain=true",
        Some(WRITER_TOKEN),
        "v2",
    )
    .await;
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (403, "ForbiddenException"));
    assert!(
        message.contains("iot:RetainPublish") && message.contains("secret/key"),
        "{message}"
    );
    // An empty retained publish would delete: refused just the same.
    let res = post(
        &app,
        "/topics/secret%2Fkey?retain=true",
        Some(WRITER_TOKEN),
        "",
    )
    .await;
    assert_eq!(error_of(res).await.0, 403);
    let res = post(
        &app,
        "/topics/secret%2Fnew?retain=true",
        Some(WRITER_TOKEN),
        "x",
    )
    .await;
    assert_eq!(error_of(res).await.0, 403);

    // The reader may not publish at all.
    let res = post(
        &app,
        "/topics/room%2F1?retain=true",
        Some(READER_TOKEN),
        "x",
    )
    .await;
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (403, "ForbiddenException"));
    assert!(message.contains("iot:Publish"), "{message}");
    // ... nor read secret/#, though it may list it.
    let res = get(&app, "/retainedMessage/secret%2Fkey", Some(READER_TOKEN)).await;
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (403, "ForbiddenException"));
    assert!(message.contains("iot:GetRetainedMessage"), "{message}");
    // The writer may neither read nor list.
    let res = get(&app, "/retainedMessage/room%2F1", Some(WRITER_TOKEN)).await;
    assert_eq!(error_of(res).await.0, 403);
    let res = get(&app, "/retainedMessage", Some(WRITER_TOKEN)).await;
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (403, "ForbiddenException"));
    assert!(message.contains("iot:ListRetainedMessages"), "{message}");

    assert_eq!(stored_topics(&app).await, ["secret/key"]);
    let res = get(&app, "/retainedMessage/secret%2Fkey", Some(ADMIN_TOKEN)).await;
    let got: Value = res.json().await.unwrap();
    assert_eq!(got["payload"], "djE="); // base64 of "v1"
}

async fn unknown_tokens_and_unsupported_schemes_are_refused(backend: Backend) {
    let (app, _dir) = spawn_secured(backend).await;
    let res = post(&app, "/topics/a?retain=true", Some("not-a-token"), "x").await;
    let (status, kind, _) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (403, "ForbiddenException"));
    let res = get(&app, "/retainedMessage", Some("not-a-token")).await;
    assert_eq!(error_of(res).await.0, 403);

    let res = app
        .http
        .get(app.url("/retainedMessage"))
        .basic_auth("admin", Some("password"))
        .send()
        .await
        .unwrap();
    let status = error_of(res).await.0;
    assert!((400..500).contains(&status), "{status}");
    assert!(stored_topics(&app).await.is_empty());
}

async fn missing_credentials_are_unauthorized_on_every_operation(backend: Backend) {
    let (app, _dir) = spawn_secured(backend).await;
    post(&app, "/topics/a", Some(ADMIN_TOKEN), "x").await;
    for res in [
        get(&app, "/retainedMessage", None).await,
        get(&app, "/retainedMessage/a", None).await,
        post(&app, "/topics/b?retain=true", None, "x").await,
        post(&app, "/topics/b?retain=true", None, "").await,
    ] {
        let (status, kind, _) = error_of(res).await;
        assert_eq!((status, kind.as_str()), (401, "UnauthorizedException"));
    }
    assert!(stored_topics(&app).await.is_empty());
}

async fn a_bad_signature_is_forbidden_and_an_oversized_signed_body_too_large(backend: Backend) {
    let (app, _dir) = spawn_secured(backend).await;
    let sign = |req: reqwest::RequestBuilder| {
        req.header("x-amz-date", "20260101T000000Z").header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDUNKNOWN/20260101/us-east-1/iotdata/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=00000000000000000000000000000000000000000000\
             00000000000000000000",
        )
    };
    let res = sign(app.http.post(app.url("/topics/a?retain=true")).body("x"))
        .send()
        .await
        .unwrap();
    let (status, kind, _) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (403, "ForbiddenException"));

    // The body is read (to hash it) within the payload limit, answered as Publish would.
    let big = vec![b'x'; 128 * 1024 + 1];
    let res = sign(app.http.post(app.url("/topics/a?retain=true")).body(big))
        .send()
        .await
        .unwrap();
    let (status, kind, _) = error_of(res).await;
    assert_eq!(
        (status, kind.as_str()),
        (413, "RequestEntityTooLargeException")
    );
    assert!(stored_topics(&app).await.is_empty());
}

async fn probes_docs_and_console_need_no_credentials(backend: Backend) {
    let (app, _dir) = spawn_secured(backend).await;
    for path in ["/healthz", "/readyz", "/openapi.json", "/docs/", "/"] {
        let res = get(&app, path, None).await;
        assert_eq!(res.status(), 200, "{path}");
    }
}

for_each_backend!(
    tokens_allow_what_their_policy_allows,
    policy_denials_are_forbidden_and_store_nothing,
    unknown_tokens_and_unsupported_schemes_are_refused,
    missing_credentials_are_unauthorized_on_every_operation,
    a_bad_signature_is_forbidden_and_an_oversized_signed_body_too_large,
    probes_docs_and_console_need_no_credentials,
);

// --- Local only without principals ----------------------------------------------------------

async fn start_error(config: &ServeConfig) -> String {
    match app::start(config, Clock::manual(T0_MS)).await {
        Ok(running) => {
            running.shutdown().await;
            panic!("retaind started");
        }
        Err(err) => err.to_string(),
    }
}

fn sqlite_config(db: &FreshDb) -> ServeConfig {
    test_config(&db.url)
}

#[tokio::test]
async fn anonymous_access_refuses_a_non_loopback_http_addr() {
    let db = fresh_db(Backend::Sqlite).await;
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:8080"] {
        let mut config = sqlite_config(&db);
        config.http_addr = addr.parse().unwrap();
        let message = start_error(&config).await;
        assert!(message.contains("--http-addr"), "{message}");
        assert!(message.contains("--principals"), "{message}");
        assert!(message.contains("docs/examples/auth.toml"), "{message}");
    }
}

#[tokio::test]
async fn anonymous_access_refuses_a_non_loopback_mqtt_addr() {
    let db = fresh_db(Backend::Sqlite).await;
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let mut config = sqlite_config(&db);
        config.mqtt_addr = addr.parse().unwrap();
        let message = start_error(&config).await;
        assert!(message.contains("--mqtt-addr"), "{message}");
        assert!(message.contains("docs/examples/auth.toml"), "{message}");
    }
}

#[tokio::test]
async fn a_config_without_principals_stays_local_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.toml");
    std::fs::write(&path, "").unwrap();
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = sqlite_config(&db);
    config.principals = Some(path);
    config.http_addr = "0.0.0.0:0".parse().unwrap();
    assert!(start_error(&config).await.contains("--http-addr"));
}

#[tokio::test]
async fn with_principals_any_address_may_be_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.toml");
    std::fs::write(&path, principals_toml()).unwrap();
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = sqlite_config(&db);
    config.principals = Some(path);
    config.http_addr = "0.0.0.0:0".parse().unwrap();
    config.mqtt_addr = "0.0.0.0:0".parse().unwrap();
    let running = app::start(&config, Clock::manual(T0_MS))
        .await
        .expect("starting retaind");
    assert!(running.auth.is_enabled());
    running.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_invalid_config_is_a_startup_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing: PathBuf = dir.path().join("missing.toml");
    let invalid = dir.path().join("invalid.toml");
    std::fs::write(&invalid, "[[principals]]\nnmae = \"typo\"\n").unwrap();
    let db = fresh_db(Backend::Sqlite).await;
    for path in [missing, invalid] {
        let mut config = sqlite_config(&db);
        config.principals = Some(path.clone());
        let message = start_error(&config).await;
        assert!(message.contains(&path.display().to_string()), "{message}");
    }
}
