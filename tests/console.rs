//! The web console's files as the server hands them out: the page at `/`, its assets under
//! `/console/`, with the headers that keep the browser safe and current. What the console does
//! in a browser is tested by `tests/browser/`.

mod common;

use common::{Backend, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_serves_the_console_page_with_a_strict_content_security_policy() {
    let app = spawn_app(Backend::Sqlite).await;
    let res = app.get("/").await;
    assert_eq!(res.status(), 200);
    let header = |name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert_eq!(header("cache-control"), "no-cache");
    assert!(header("etag").starts_with('"'));
    let csp = header("content-security-policy");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "connect-src 'self' ws: wss:",
        "object-src 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let html = res.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/console/app.js"></script>"#));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_are_served_with_their_content_types() {
    let app = spawn_app(Backend::Sqlite).await;
    for (path, content_type) in [
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/mqtt-ws.js", "text/javascript; charset=utf-8"),
        ("/console/style.css", "text/css; charset=utf-8"),
        ("/console/index.html", "text/html; charset=utf-8"),
        ("/console/favicon.svg", "image/svg+xml"),
    ] {
        let res = app.get(path).await;
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(res.headers()["content-type"], content_type, "{path}");
        assert_eq!(res.headers()["x-content-type-options"], "nosniff", "{path}");
        assert!(!res.bytes().await.unwrap().is_empty(), "{path}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_asset_is_revalidated_with_304() {
    let app = spawn_app(Backend::Sqlite).await;
    let first = app.get("/console/app.js").await;
    let etag = first.headers()["etag"].clone();
    let again = app
        .http
        .get(app.url("/console/app.js"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_console_file_is_the_usual_unknown_route_404() {
    let app = spawn_app(Backend::Sqlite).await;
    for path in [
        "/console/x",
        "/console/",
        "/console/../Cargo.toml",
        "/nowhere",
    ] {
        let res = app.get(path).await;
        assert_eq!(res.status(), 404, "{path}");
        assert_eq!(
            res.headers()["x-amzn-errortype"],
            "UnknownOperationException",
            "{path}"
        );
    }
    let wrong_method = app.publish("/console/app.js", "").await;
    assert_eq!(wrong_method.status(), 405);
    app.stop().await;
}
