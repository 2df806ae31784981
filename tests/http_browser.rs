//! Browsers on a machine running retaind without principals: a page on another site may not use
//! the API or MQTT over WebSocket (cross-site requests, 403), and a page that rebinds its own
//! DNS name to 127.0.0.1 is refused by the `Host` it names, while the console's own
//! same-origin requests and clients that are not browsers pass. With principals, credentials
//! decide instead.

mod common;

use common::mqtt::raw::build;
use common::mqtt::ws::RawWs;
use common::{Backend, TestApp, fresh_db, spawn_app, spawn_app_with, test_config};
use serde_json::Value;
use sha2::{Digest, Sha256};

const FORBIDDEN: &str = "ForbiddenException";

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = app
        .http
        .request(method.parse().unwrap(), app.url(path))
        .body("from a page");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.unwrap()
}

/// Insists on 403 `ForbiddenException` with a request id and a message containing `says`.
async fn assert_forbidden(res: reqwest::Response, says: &str, what: &str) {
    assert_eq!(res.status(), 403, "{what}");
    assert!(res.headers().contains_key("x-amzn-requestid"), "{what}");
    assert_eq!(res.headers()["x-amzn-errortype"], FORBIDDEN, "{what}");
    let body: Value = res.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(says), "{what}: {message}");
}

/// What the console sends from its own page: its origin and `Sec-Fetch-Site: same-origin`.
fn own_page(app: &TestApp) -> [(&'static str, String); 2] {
    [
        ("origin", format!("http://{}", app.http_addr)),
        ("sec-fetch-site", "same-origin".to_owned()),
    ]
}

async fn cross_site_requests_are_refused_and_store_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    app.retain("seed", "original").await;
    let before = app.snapshot().await;
    // A plain HTML form on another site needs no CORS preflight.
    let form = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("origin", "http://evil.example"),
    ];
    for (method, path, headers) in [
        ("POST", "/topics/seed?retain=true", &form[..]),
        (
            "POST",
            "/topics/seed?retain=true",
            &[("sec-fetch-site", "cross-site")],
        ),
        (
            "POST",
            "/topics/seed?retain=true",
            &[("sec-fetch-site", "same-site")],
        ),
        // A page on another port of this machine is another origin.
        (
            "POST",
            "/topics/seed?retain=true",
            &[("origin", "http://127.0.0.1:1")],
        ),
        (
            "GET",
            "/retainedMessage",
            &[("sec-fetch-site", "cross-site")],
        ),
        (
            "GET",
            "/retainedMessage/seed",
            &[("origin", "http://evil.example")],
        ),
    ] {
        let what = format!("{method} {path} {headers:?}");
        assert_forbidden(send(&app, method, path, headers).await, "cross-site", &what).await;
    }
    assert_eq!(app.snapshot().await, before);

    // The console's own requests.
    let [origin, site] = own_page(&app);
    let own = [(origin.0, origin.1.as_str()), (site.0, site.1.as_str())];
    let res = send(&app, "POST", "/topics/seed?retain=true", &own).await;
    assert_eq!(res.status(), 200);
    let res = send(&app, "GET", "/retainedMessage", &own[1..]).await;
    assert_eq!(res.status(), 200);
    // An address typed into the browser, and a link from elsewhere to the console's page.
    let res = send(
        &app,
        "GET",
        "/retainedMessage/seed",
        &[("sec-fetch-site", "none")],
    )
    .await;
    assert_eq!(res.status(), 200);
    let res = send(&app, "GET", "/", &[("sec-fetch-site", "cross-site")]).await;
    assert_eq!(res.status(), 200);
    app.stop().await;
}

async fn requests_for_other_host_names_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    app.retain("seed", "original").await;
    let before = app.snapshot().await;
    let rebound = [("host", "rebind.evil.example")];
    for (method, path) in [
        ("POST", "/topics/seed?retain=true"),
        ("GET", "/retainedMessage"),
        ("GET", "/retainedMessage/seed"),
        ("GET", "/"),
        ("GET", "/console/session-info"),
        ("GET", "/openapi.json"),
        ("GET", "/healthz"),
        ("GET", "/nowhere"),
    ] {
        let res = send(&app, method, path, &rebound).await;
        assert_forbidden(res, "--allowed-hosts", &format!("{method} {path}")).await;
    }
    assert_eq!(app.snapshot().await, before);

    let port = app.http_addr.port();
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "localhost".to_owned(),
    ] {
        let res = send(&app, "GET", "/retainedMessage/seed", &[("host", &host)]).await;
        assert_eq!(res.status(), 200, "{host}");
    }
    app.stop().await;
}

async fn allowed_hosts_are_answered(backend: Backend) {
    let db = fresh_db(backend).await;
    let mut config = test_config(&db.url);
    config.allowed_hosts = vec!["retaind.lan".into(), "Box.Example".into()];
    let app = spawn_app_with(db, config).await;
    for host in ["retaind.lan", "retaind.lan:8080", "box.example:80"] {
        let res = send(&app, "POST", "/topics/seed?retain=true", &[("host", host)]).await;
        assert_eq!(res.status(), 200, "{host}");
    }
    let res = send(&app, "GET", "/retainedMessage", &[("host", "other.lan")]).await;
    assert_forbidden(res, "--allowed-hosts", "other.lan").await;
    app.stop().await;
}

/// Sends CONNECT and SUBSCRIBE `#` over an upgraded WebSocket and insists on both acks.
async fn subscribes_to_everything(mut ws: RawWs) {
    ws.frame(true, 2, &build::connect("page", true, 60, None))
        .await;
    assert_eq!(ws.packet().await, (0x20, vec![0, 0]));
    ws.frame(true, 2, &build::subscribe(1, "#", 0, None)).await;
    assert_eq!(ws.packet().await, (0x90, vec![0, 1, 0]));
}

#[tokio::test]
async fn cross_site_websocket_upgrades_are_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    for headers in [
        &[("Origin", "http://evil.example")][..],
        &[
            ("Origin", "http://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
        ],
        &[("Sec-Fetch-Site", "same-site")],
    ] {
        let (_, head) = RawWs::open_with(&app, "mqtt", headers).await;
        assert!(head.starts_with("http/1.1 403"), "{headers:?}: {head}");
        assert!(
            head.contains("x-amzn-errortype: forbiddenexception"),
            "{head}"
        );
    }
    let stream = tokio::net::TcpStream::connect(app.http_addr).await.unwrap();
    let (_, head) = RawWs::upgrade_with(stream, "rebind.evil.example", "mqtt", &[]).await;
    assert!(head.starts_with("http/1.1 403"), "rebound host: {head}");

    // The console's test client, from its own page.
    let [origin, site] = own_page(&app);
    let own = [(origin.0, origin.1.as_str()), (site.0, site.1.as_str())];
    let (ws, head) = RawWs::open_with(&app, "mqtt", &own).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    subscribes_to_everything(ws).await;
    // And clients that are no browser: without Origin, or with paho-mqtt 1.x's, which names
    // this server's host and port with https even over ws://.
    let (ws, head) = RawWs::open(&app, "mqtt").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    subscribes_to_everything(ws).await;
    let paho = format!("https://{}", app.http_addr);
    let (ws, head) = RawWs::open_with(&app, "mqtt", &[("Origin", &paho)]).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    subscribes_to_everything(ws).await;
    app.stop().await;
}

/// With principals, a request needs credentials a page cannot borrow from the browser, so
/// neither the host name nor the site is held against it.
#[tokio::test]
async fn with_principals_credentials_decide() {
    const TOKEN: &str = "page-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.toml");
    let hash = hex::encode(Sha256::digest(TOKEN));
    std::fs::write(
        &path,
        format!(
            r#"
[[principals]]
name = "page"
api_tokens_sha256 = ["{hash}"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:*"]
resources = ["*"]
"#
        ),
    )
    .unwrap();
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.principals = Some(path);
    let app = spawn_app_with(db, config).await;
    let bearer = format!("Bearer {TOKEN}");
    let headers = [
        ("host", "rebind.evil.example"),
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
        ("authorization", bearer.as_str()),
    ];
    let res = send(&app, "POST", "/topics/seed?retain=true", &headers).await;
    assert_eq!(res.status(), 200);
    let res = send(&app, "GET", "/retainedMessage/seed", &headers).await;
    assert_eq!(res.status(), 200);
    // Without credentials: the usual 401, whatever the host.
    let res = send(&app, "GET", "/retainedMessage/seed", &headers[..3]).await;
    assert_eq!(res.status(), 401);
    app.stop().await;
}

for_each_backend!(
    cross_site_requests_are_refused_and_store_nothing,
    requests_for_other_host_names_are_refused,
    allowed_hosts_are_answered,
);
