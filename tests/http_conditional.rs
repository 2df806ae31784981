//! Revisions and conditional publish over HTTP (issue 17, decision 018), against the real server
//! on SQLite and on Postgres: GetRetainedMessage's `ETag`, `revision` and `writer`; Publish with
//! `If-Match: "<revision>"` and `If-None-Match: *`, for puts and deletes; 412 with nothing stored
//! or delivered; 400 for every malformed form, with nothing stored. Races are in
//! `tests/http_conditional_races.rs`.

mod common;

use std::path::PathBuf;

use common::mqtt::{V3, v3_options};
use common::{Backend, TestApp, fresh_db, spawn_app, spawn_app_with, test_config};
use rumqttc::QoS;
use serde_json::Value;
use sha2::{Digest, Sha256};

const PRECONDITION_FAILED: &str = "PreconditionFailedException";
const INVALID: &str = "InvalidRequestException";

/// A publish to `path` with `headers` (each sent as given; a name twice is sent twice).
async fn publish(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> reqwest::Response {
    let mut req = app.http.post(app.url(path)).body(body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.expect("HTTP request")
}

/// The `ETag` header, if any.
fn etag(res: &reqwest::Response) -> Option<String> {
    res.headers()
        .get("etag")
        .map(|v| v.to_str().expect("an ASCII ETag").to_owned())
}

/// The revision an `ETag` names; panics unless it is a strong tag of digits.
fn revision_in(tag: &str) -> i64 {
    let digits = tag
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or_else(|| panic!("ETag {tag:?} is not a quoted value"));
    assert!(
        digits.bytes().all(|b| b.is_ascii_digit()),
        "ETag {tag:?} is not a revision"
    );
    digits.parse().unwrap()
}

/// A retained put that must succeed; answers its `ETag`.
async fn put(app: &TestApp, topic: &str, headers: &[(&str, &str)], body: &'static str) -> String {
    let res = publish(
        app,
        &format!("/topics/{topic}?retain=true&qos=1"),
        headers,
        body,
    )
    .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let tag = etag(&res).expect("a retained put answers its ETag");
    revision_in(&tag);
    tag
}

/// GetRetainedMessage: the status, the `ETag` and the JSON body.
async fn get(app: &TestApp, topic: &str) -> (u16, Option<String>, Value) {
    let res = app.get(&format!("/retainedMessage/{topic}")).await;
    let status = res.status().as_u16();
    let tag = etag(&res);
    (status, tag, res.json().await.expect("a JSON body"))
}

/// Status, `x-amzn-ErrorType` and message of an error response.
async fn error_of(res: reqwest::Response) -> (u16, String, String) {
    let status = res.status().as_u16();
    assert!(res.headers().contains_key("x-amzn-requestid"));
    assert_eq!(etag(&res), None, "an error carries no ETag");
    let kind = res
        .headers()
        .get("x-amzn-errortype")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = res.json().await.expect("a JSON error body");
    let message = body["message"].as_str().expect("a message").to_owned();
    (status, kind, message)
}

/// A subscriber to `cfg/#` that has taken the retained messages sent on subscribing.
async fn subscriber(app: &TestApp, retained: usize) -> V3 {
    let (mut sub, _) = V3::connect(v3_options(app, "watcher")).await;
    sub.subscribe("cfg/#", QoS::AtLeastOnce).await;
    for _ in 0..retained {
        let p = sub.next_publish().await;
        assert!(p.retain, "{p:?}");
    }
    sub
}

/// Nothing reached `sub` before a marker published now: the next message it gets is the marker.
async fn got_nothing(app: &TestApp, sub: &mut V3) {
    let res = publish(app, "/topics/cfg%2Fmarker?qos=1", &[], "marker").await;
    assert_eq!(res.status(), 200);
    let p = sub.next_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("cfg/marker", &b"marker"[..]),
        "a refused publish was delivered"
    );
}

async fn get_answers_the_revision_as_etag_and_in_json(backend: Backend) {
    let app = spawn_app(backend).await;
    let tag = put(&app, "cfg%2Fa", &[], "v1").await;
    let (status, got_tag, body) = get(&app, "cfg%2Fa").await;
    assert_eq!(status, 200);
    assert_eq!(
        got_tag.as_deref(),
        Some(tag.as_str()),
        "Get shows the put's ETag"
    );
    assert_eq!(body["revision"].as_i64(), Some(revision_in(&tag)));
    // Authentication is off: no principal, and the HTTP API is the client.
    assert_eq!(body["writer"], serde_json::json!({"clientId": "HTTP"}));

    let list = app.get_json("/retainedMessage").await;
    let items = list["retainedTopics"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["revision"].as_i64(), Some(revision_in(&tag)));
}

async fn revisions_increase_with_every_write(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut seen = Vec::new();
    for (topic, body) in [
        ("cfg%2Fa", "1"),
        ("cfg%2Fb", "2"),
        ("cfg%2Fa", "3"),
        ("cfg%2Fa", "4"),
    ] {
        seen.push(revision_in(&put(&app, topic, &[], body).await));
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    // A delete is a change too: the next put's revision is above it.
    let res = publish(&app, "/topics/cfg%2Fb?retain=true", &[], "").await;
    assert_eq!(res.status(), 200);
    assert_eq!(etag(&res), None, "a delete leaves no message to name");
    let after = revision_in(&put(&app, "cfg%2Fb", &[], "5").await);
    assert!(after > *seen.last().unwrap(), "{after} after {seen:?}");
    let (_, tag, _) = get(&app, "cfg%2Fb").await;
    assert_eq!(tag.map(|t| revision_in(&t)), Some(after));
}

async fn if_match_on_the_current_revision_replaces(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = put(&app, "cfg%2Fa", &[], "v1").await;
    let second = put(&app, "cfg%2Fa", &[("If-Match", &first)], "v2").await;
    assert!(revision_in(&second) > revision_in(&first));
    let (status, tag, body) = get(&app, "cfg%2Fa").await;
    assert_eq!(status, 200);
    assert_eq!(tag.as_deref(), Some(second.as_str()));
    assert_eq!(body["payload"], common_b64("v2"));
    // And again, on the revision the conditional write answered.
    let third = put(&app, "cfg%2Fa", &[("If-Match", &second)], "v3").await;
    assert_eq!(
        get(&app, "cfg%2Fa").await.1.as_deref(),
        Some(third.as_str())
    );
}

async fn if_match_on_another_revision_is_412_and_stores_and_delivers_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = put(&app, "cfg%2Fa", &[], "v1").await;
    let current = put(&app, "cfg%2Fa", &[], "v2").await;
    let mut sub = subscriber(&app, 1).await;
    let before = app.snapshot().await;

    let later = format!("\"{}\"", revision_in(&current) + 1);
    for stale in [first.as_str(), later.as_str(), "\"0\""] {
        let res = publish(
            &app,
            "/topics/cfg%2Fa?retain=true&qos=1",
            &[("If-Match", stale)],
            "v3",
        )
        .await;
        let (status, kind, message) = error_of(res).await;
        assert_eq!(
            (status, kind.as_str()),
            (412, PRECONDITION_FAILED),
            "{stale}"
        );
        assert!(message.contains("nothing was stored"), "{message}");
    }
    // On a topic with no retained message, no revision matches.
    let res = publish(
        &app,
        "/topics/cfg%2Fnew?retain=true",
        &[("If-Match", &current)],
        "v1",
    )
    .await;
    assert_eq!(error_of(res).await.0, 412);

    assert_eq!(app.snapshot().await, before, "a 412 changed the store");
    assert_eq!(
        get(&app, "cfg%2Fa").await.1.as_deref(),
        Some(current.as_str())
    );
    got_nothing(&app, &mut sub).await;
}

async fn if_none_match_creates_only_when_absent(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = put(&app, "cfg%2Fa", &[("If-None-Match", "*")], "v1").await;
    let (status, tag, body) = get(&app, "cfg%2Fa").await;
    assert_eq!((status, tag.as_deref()), (200, Some(created.as_str())));
    assert_eq!(body["payload"], common_b64("v1"));

    let mut sub = subscriber(&app, 1).await;
    let before = app.snapshot().await;
    let res = publish(
        &app,
        "/topics/cfg%2Fa?retain=true",
        &[("If-None-Match", "*")],
        "v2",
    )
    .await;
    assert_eq!(
        error_of(res).await.1,
        PRECONDITION_FAILED,
        "a second create"
    );
    assert_eq!(app.snapshot().await, before);
    got_nothing(&app, &mut sub).await;

    // Once deleted, the topic may be created again.
    let res = publish(&app, "/topics/cfg%2Fa?retain=true", &[], "").await;
    assert_eq!(res.status(), 200);
    let again = put(&app, "cfg%2Fa", &[("If-None-Match", "*")], "v3").await;
    assert!(revision_in(&again) > revision_in(&created));
    assert_eq!(get(&app, "cfg%2Fa").await.2["payload"], common_b64("v3"));
}

async fn delete_if_match_deletes_only_the_revision_named(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = put(&app, "cfg%2Fa", &[], "v1").await;
    let current = put(&app, "cfg%2Fa", &[], "v2").await;
    let mut sub = subscriber(&app, 1).await;
    let before = app.snapshot().await;

    let res = publish(
        &app,
        "/topics/cfg%2Fa?retain=true",
        &[("If-Match", &first)],
        "",
    )
    .await;
    assert_eq!(error_of(res).await.1, PRECONDITION_FAILED);
    assert_eq!(app.snapshot().await, before, "a refused delete deleted");
    got_nothing(&app, &mut sub).await;

    let res = publish(
        &app,
        "/topics/cfg%2Fa?retain=true",
        &[("If-Match", &current)],
        "",
    )
    .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(get(&app, "cfg%2Fa").await.0, 404);
    // Subscribers get the delete as an empty retained message, as for any delete.
    let p = sub.next_publish().await;
    assert_eq!((p.topic.as_str(), p.payload.len()), ("cfg/a", 0));
    // The deleted revision matches nothing any more.
    let res = publish(
        &app,
        "/topics/cfg%2Fa?retain=true",
        &[("If-Match", &current)],
        "",
    )
    .await;
    assert_eq!(error_of(res).await.0, 412);
}

async fn delete_if_none_match_succeeds_only_when_there_is_nothing_to_delete(backend: Backend) {
    let app = spawn_app(backend).await;
    put(&app, "cfg%2Fa", &[], "v1").await;
    let before = app.snapshot().await;
    let res = publish(
        &app,
        "/topics/cfg%2Fa?retain=true",
        &[("If-None-Match", "*")],
        "",
    )
    .await;
    assert_eq!(error_of(res).await.1, PRECONDITION_FAILED);
    assert_eq!(app.snapshot().await, before);

    let res = publish(
        &app,
        "/topics/cfg%2Fabsent?retain=true",
        &[("If-None-Match", "*")],
        "",
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(get(&app, "cfg%2Fabsent").await.0, 404);
    assert_eq!(app.snapshot().await, before);
}

/// A malformed request: what it shows, its path, its headers and its body.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'static str);

async fn malformed_conditions_are_400_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let current = put(&app, "cfg%2Fa", &[], "v1").await;
    let digits = current.trim_matches('"').to_owned();
    let mut sub = subscriber(&app, 1).await;
    let before = app.snapshot().await;

    let weak = format!("W/{current}");
    let unquoted = digits.clone();
    let list = format!("{current}, \"1\"");
    let padded = format!("\"0{digits}\"");
    let signed = format!("\"+{digits}\"");
    let single_quoted = format!("'{digits}'");
    let retained = "/topics/cfg%2Fa?retain=true&qos=1";
    // Each would otherwise succeed: the revision is the current one, or the topic is new.
    let cases: Vec<Case> = vec![
        ("weak If-Match", retained, vec![("If-Match", &weak)], "v2"),
        (
            "unquoted If-Match",
            retained,
            vec![("If-Match", &unquoted)],
            "v2",
        ),
        ("If-Match list", retained, vec![("If-Match", &list)], "v2"),
        (
            "If-Match sent twice",
            retained,
            vec![("If-Match", &current), ("If-Match", &current)],
            "v2",
        ),
        ("non-digits", retained, vec![("If-Match", "\"abc\"")], "v2"),
        ("If-Match: *", retained, vec![("If-Match", "*")], "v2"),
        ("empty tag", retained, vec![("If-Match", "\"\"")], "v2"),
        ("empty If-Match", retained, vec![("If-Match", "")], "v2"),
        ("leading zero", retained, vec![("If-Match", &padded)], "v2"),
        ("sign", retained, vec![("If-Match", &signed)], "v2"),
        (
            "single quotes",
            retained,
            vec![("If-Match", &single_quoted)],
            "v2",
        ),
        (
            "over 16 digits",
            retained,
            vec![("If-Match", "\"12345678901234567\"")],
            "v2",
        ),
        (
            "If-None-Match with a tag",
            "/topics/cfg%2Fnew?retain=true",
            vec![("If-None-Match", &current)],
            "v2",
        ),
        (
            "weak If-None-Match",
            "/topics/cfg%2Fnew?retain=true",
            vec![("If-None-Match", "W/\"1\"")],
            "v2",
        ),
        (
            "If-None-Match list",
            "/topics/cfg%2Fnew?retain=true",
            vec![("If-None-Match", "*, *")],
            "v2",
        ),
        (
            "both headers",
            retained,
            vec![("If-Match", &current), ("If-None-Match", "*")],
            "v2",
        ),
        (
            "If-Match without retain",
            "/topics/cfg%2Fa?qos=1",
            vec![("If-Match", &current)],
            "v2",
        ),
        (
            "If-Match with retain=false",
            "/topics/cfg%2Fa?retain=false",
            vec![("If-Match", &current)],
            "v2",
        ),
        (
            "If-None-Match without retain",
            "/topics/cfg%2Fnew",
            vec![("If-None-Match", "*")],
            "v2",
        ),
        (
            "weak If-Match on a delete",
            retained,
            vec![("If-Match", &weak)],
            "",
        ),
        (
            "If-Match without retain, empty body",
            "/topics/cfg%2Fa",
            vec![("If-Match", &current)],
            "",
        ),
    ];
    for (what, path, headers, body) in cases {
        let res = publish(&app, path, &headers, body).await;
        let (status, kind, message) = error_of(res).await;
        assert_eq!((status, kind.as_str()), (400, INVALID), "{what}: {message}");
        assert_eq!(app.snapshot().await, before, "{what} changed the store");
    }
    got_nothing(&app, &mut sub).await;
}

async fn the_writer_of_an_mqtt_publish_is_its_client_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut client, _) = V3::connect(v3_options(&app, "thermostat-7")).await;
    client
        .publish("cfg/a", QoS::AtLeastOnce, true, b"from mqtt")
        .await;
    let (status, tag, body) = get(&app, "cfg%2Fa").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["writer"],
        serde_json::json!({"clientId": "thermostat-7"})
    );
    let tag = tag.expect("an ETag");
    assert_eq!(body["revision"].as_i64(), Some(revision_in(&tag)));

    // An HTTP client may replace it only as it stands, and then the writer is HTTP.
    let next = put(&app, "cfg%2Fa", &[("If-Match", &tag)], "from http").await;
    let (_, got, body) = get(&app, "cfg%2Fa").await;
    assert_eq!(got.as_deref(), Some(next.as_str()));
    assert_eq!(body["writer"], serde_json::json!({"clientId": "HTTP"}));
}

async fn an_expired_message_matches_no_revision_and_counts_as_absent(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = publish(
        &app,
        "/topics/cfg%2Fa?retain=true&messageExpiry=60",
        &[],
        "short-lived",
    )
    .await;
    assert_eq!(res.status(), 200);
    let tag = etag(&res).expect("an ETag");
    app.clock.advance(std::time::Duration::from_secs(61));
    let res = publish(
        &app,
        "/topics/cfg%2Fa?retain=true",
        &[("If-Match", &tag)],
        "v2",
    )
    .await;
    assert_eq!(error_of(res).await.1, PRECONDITION_FAILED);
    assert_eq!(get(&app, "cfg%2Fa").await.0, 404);
    let created = put(&app, "cfg%2Fa", &[("If-None-Match", "*")], "v3").await;
    assert!(revision_in(&created) > revision_in(&tag));
    assert_eq!(get(&app, "cfg%2Fa").await.2["payload"], common_b64("v3"));
}

async fn non_retained_publishes_and_deletes_answer_no_etag(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = publish(&app, "/topics/cfg%2Fa?qos=1", &[], "live").await;
    assert_eq!(res.status(), 200);
    assert_eq!(etag(&res), None);
    put(&app, "cfg%2Fa", &[], "v1").await;
    let res = publish(&app, "/topics/cfg%2Fa?retain=true", &[], "").await;
    assert_eq!(res.status(), 200);
    assert_eq!(etag(&res), None);
    // A 404 carries no ETag either.
    let res = app.get("/retainedMessage/cfg%2Fa").await;
    assert_eq!((res.status().as_u16(), etag(&res)), (404, None));
}

fn common_b64(s: &str) -> Value {
    use base64::Engine;
    Value::String(base64::engine::general_purpose::STANDARD.encode(s))
}

for_each_backend!(
    get_answers_the_revision_as_etag_and_in_json,
    revisions_increase_with_every_write,
    if_match_on_the_current_revision_replaces,
    if_match_on_another_revision_is_412_and_stores_and_delivers_nothing,
    if_none_match_creates_only_when_absent,
    delete_if_match_deletes_only_the_revision_named,
    delete_if_none_match_succeeds_only_when_there_is_nothing_to_delete,
    malformed_conditions_are_400_and_change_nothing,
    the_writer_of_an_mqtt_publish_is_its_client_id,
    non_retained_publishes_and_deletes_answer_no_etag,
    an_expired_message_matches_no_revision_and_counts_as_absent,
    the_writer_names_the_principal_with_authentication,
);

const OPERATOR_TOKEN: &str = "operator-token-0123456789";
const OPERATOR_PASSWORD: &str = "operator-password";

/// One principal, "operator", allowed everything over HTTP (a token) and MQTT (a password).
fn principals_toml() -> String {
    format!(
        r#"
[[principals]]
name = "operator"
api_tokens_sha256 = ["{token}"]
mqtt_username = "operator"
mqtt_password_hash = "{password}"
[[principals.statements]]
effect = "Allow"
actions = ["iot:*"]
resources = ["*"]
"#,
        token = hex::encode(Sha256::digest(OPERATOR_TOKEN.as_bytes())),
        password = retaind::auth::hash_password(OPERATOR_PASSWORD),
    )
}

async fn the_writer_names_the_principal_with_authentication(backend: Backend) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path: PathBuf = dir.path().join("auth.toml");
    std::fs::write(&path, principals_toml()).expect("writing the config");
    let db = fresh_db(backend).await;
    let mut config = test_config(&db.url);
    config.principals = Some(path);
    let app = spawn_app_with(db, config).await;
    let authed_get = |topic: &str| {
        app.http
            .get(app.url(&format!("/retainedMessage/{topic}")))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
    };

    let res = app
        .http
        .post(app.url("/topics/cfg%2Fa?retain=true"))
        .bearer_auth(OPERATOR_TOKEN)
        .header("If-None-Match", "*")
        .body("v1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let tag = etag(&res).expect("an ETag");
    let res = authed_get("cfg%2Fa").await.unwrap();
    assert_eq!(etag(&res).as_deref(), Some(tag.as_str()));
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["writer"],
        serde_json::json!({"principal": "operator", "clientId": "HTTP"})
    );

    let mut options = v3_options(&app, "console-7");
    options.set_credentials("operator", OPERATOR_PASSWORD);
    let (mut client, _) = V3::connect(options).await;
    client.publish("cfg/b", QoS::AtLeastOnce, true, b"v1").await;
    let body: Value = authed_get("cfg%2Fb").await.unwrap().json().await.unwrap();
    assert_eq!(
        body["writer"],
        serde_json::json!({"principal": "operator", "clientId": "console-7"})
    );
}
