//! Every string the HTTP API takes is text MQTT can carry: query values that are not UTF-8 once
//! percent-decoded, and U+0000 anywhere ([MQTT-1.5.4-2]), are 400 `InvalidRequestException`
//! naming the field, with nothing stored, on SQLite and on Postgres alike. User properties are
//! measured as MQTT 5 frames them.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Backend, TestApp, spawn_app};
use serde_json::Value;

const USER_PROPERTIES: &str = "x-amz-mqtt5-user-properties";

/// Sends a request and insists on a 400 `InvalidRequestException` whose message contains
/// `names`.
async fn assert_refused(
    app: &TestApp,
    method: &str,
    path: &str,
    header: Option<String>,
    names: &str,
) {
    let mut req = app
        .http
        .request(method.parse().unwrap(), app.url(path))
        .body("new payload");
    if let Some(value) = header {
        req = req.header(USER_PROPERTIES, value);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 400, "{method} {path}");
    assert!(res.headers().contains_key("x-amzn-requestid"), "{path}");
    assert_eq!(
        res.headers()["x-amzn-errortype"],
        "InvalidRequestException",
        "{path}"
    );
    let body: Value = res.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(names), "{path}: {message}");
}

async fn query_values_that_are_not_utf8_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    app.retain("seed", "original").await;
    let before = app.snapshot().await;
    for (path, names) in [
        ("/topics/seed?retain=true&contentType=%FF", "contentType"),
        ("/topics/seed?retain=true&contentType=a%C3", "contentType"),
        (
            "/topics/seed?retain=true&responseTopic=%FF",
            "responseTopic",
        ),
        ("/topics/seed?retain=%FF", "retain"),
        ("/topics/seed?retain=true&qos=%FF", "qos"),
        (
            "/topics/seed?retain=true&messageExpiry=%FF",
            "messageExpiry",
        ),
        ("/topics/seed?retain=true&unknown=%FF", "unknown"),
        ("/topics/seed?retain=true&%FF=1", "name"),
    ] {
        assert_refused(&app, "POST", path, None, names).await;
    }
    for (path, names) in [
        ("/retainedMessage?topicFilter=%FF", "topicFilter"),
        ("/retainedMessage?topicPrefix=%FF", "topicPrefix"),
        ("/retainedMessage?nextToken=%FF", "nextToken"),
        ("/retainedMessage?maxResults=%FF", "maxResults"),
    ] {
        assert_refused(&app, "GET", path, None, names).await;
    }
    assert_eq!(app.snapshot().await, before);
    app.stop().await;
}

async fn the_null_character_is_refused_in_every_string_field(backend: Backend) {
    let app = spawn_app(backend).await;
    app.retain("seed", "original").await;
    let before = app.snapshot().await;
    // The query: what a Postgres text column cannot hold answered 500 here before.
    for (path, names) in [
        ("/topics/x?retain=true&contentType=%00", "contentType"),
        (
            "/topics/seed?retain=true&contentType=text%00plain",
            "contentType",
        ),
        (
            "/topics/seed?retain=true&responseTopic=r%00",
            "responseTopic",
        ),
        ("/topics/seed%00?retain=true", "topic"),
    ] {
        assert_refused(&app, "POST", path, None, names).await;
    }
    for (path, names) in [
        ("/retainedMessage?topicFilter=a%00", "topicFilter"),
        ("/retainedMessage?topicPrefix=a%00", "topicPrefix"),
        ("/retainedMessage/seed%00", "topic"),
    ] {
        assert_refused(&app, "GET", path, None, names).await;
    }
    // User properties: JSON escapes reach U+0000 without it ever being in a header.
    for json in [r#"[{"k\u0000":"v"}]"#, r#"[{"k":"v\u0000"}]"#] {
        assert_refused(
            &app,
            "POST",
            "/topics/seed?retain=true",
            Some(B64.encode(json)),
            USER_PROPERTIES,
        )
        .await;
    }
    assert_eq!(app.snapshot().await, before);
    app.stop().await;
}

/// 8 KiB as MQTT 5 frames user properties: 5 bytes per property besides its text, so many
/// empty properties cannot pass a limit that would stop their content.
async fn user_properties_count_their_framing(backend: Backend) {
    let app = spawn_app(backend).await;
    let empty = |n: usize| B64.encode(format!("[{}]", vec![r#"{"":""}"#; n].join(",")));
    let before = app.snapshot().await;
    assert_refused(
        &app,
        "POST",
        "/topics/seed?retain=true",
        Some(empty(20_000)),
        "exceed 8192 bytes",
    )
    .await;
    assert_eq!(app.snapshot().await, before);

    // The most that fit: 8192 / 5 empty properties.
    let res = app
        .http
        .post(app.url("/topics/seed?retain=true"))
        .header(USER_PROPERTIES, empty(8192 / 5))
        .body("stored")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    let got = app.get_json("/retainedMessage/seed").await;
    let props: Value =
        serde_json::from_slice(&B64.decode(got["userProperties"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(props.as_array().unwrap().len(), 8192 / 5);
    app.stop().await;
}

for_each_backend!(
    query_values_that_are_not_utf8_are_refused,
    the_null_character_is_refused_in_every_string_field,
    user_properties_count_their_framing,
);
