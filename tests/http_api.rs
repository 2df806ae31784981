//! The HTTP API over real sockets against the real server, on SQLite and on Postgres.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Backend, T0_MS, encode, spawn_app, topic};
use serde_json::{Value, json};

async fn error_of(res: reqwest::Response) -> (u16, String, String) {
    let status = res.status().as_u16();
    let kind = res
        .headers()
        .get("x-amzn-errortype")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = res.json().await.unwrap();
    (
        status,
        kind,
        body["message"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn retained_publish_is_returned_by_get_and_list(backend: Backend) {
    let app = spawn_app(backend).await;
    let props = B64.encode(r#"[{"deviceName":"alpha"},{"deviceCnt":"45"}]"#);
    let res = app
        .http
        .post(app.url("/topics/dev%2F1%2Fcfg?retain=true&qos=1"))
        .header("x-amz-mqtt5-user-properties", props)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let request_id = res.headers()["x-amzn-requestid"]
        .to_str()
        .unwrap()
        .to_owned();
    // retaind's extension: the revision stored, as an ETag (tests/http_conditional.rs).
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    let revision: i64 = etag.trim_matches('"').parse().unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, json!({"message": "OK", "traceId": request_id}));

    let got: Value = app.get_json("/retainedMessage/dev%2F1%2Fcfg").await;
    let props_json: Value =
        serde_json::from_slice(&B64.decode(got["userProperties"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(
        props_json,
        json!([{"deviceName": "alpha"}, {"deviceCnt": "45"}])
    );
    // The revision is the store's to choose (decision 018); it is a positive number, the same
    // in the publish's ETag, Get and List.
    assert!(revision > 0, "{got}");
    assert_eq!(
        got,
        json!({"topic": "dev/1/cfg", "payload": B64.encode("hello"), "qos": 1,
               "lastModifiedTime": T0_MS, "userProperties": got["userProperties"],
               "revision": revision, "writer": {"clientId": "HTTP"}})
    );
    let list: Value = app.get_json("/retainedMessage").await;
    assert_eq!(
        list,
        json!({"retainedTopics": [{"topic": "dev/1/cfg", "payloadSize": 5, "qos": 1,
                                   "lastModifiedTime": T0_MS, "revision": revision}]})
    );
}

async fn get_without_user_properties_omits_the_field(backend: Backend) {
    let app = spawn_app(backend).await;
    app.retain("plain", "x").await;
    let got: Value = app.get_json("/retainedMessage/plain").await;
    assert!(got.get("userProperties").is_none(), "{got}");
}

async fn mqtt5_properties_are_stored_with_the_message(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app
        .http
        .post(app.url("/topics/p?retain=true&qos=2&contentType=text%2Fplain&responseTopic=p%2Freply&messageExpiry=3600"))
        .header("x-amz-mqtt5-payload-format-indicator", "UTF8_DATA")
        .header("x-amz-mqtt5-correlation-data", B64.encode([1u8, 2, 3]))
        .body("héllo")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let stored = app.store().get(topic("p")).await.unwrap().unwrap();
    assert_eq!(stored.qos.as_u8(), 2);
    assert_eq!(
        stored.properties.content_type.as_deref(),
        Some("text/plain")
    );
    assert_eq!(stored.properties.response_topic, Some(topic("p/reply")));
    assert_eq!(
        stored.properties.correlation_data.as_deref(),
        Some(&[1u8, 2, 3][..])
    );
    assert_eq!(
        stored.properties.payload_format,
        retaind::store::PayloadFormat::Utf8
    );
    assert_eq!(stored.expires_at_ms, Some(T0_MS + 3_600_000));
    // GetRetainedMessage carries them as retaind's extension fields.
    let got: Value = app.get_json("/retainedMessage/p").await;
    assert_eq!(got["contentType"], "text/plain");
    assert_eq!(got["responseTopic"], "p/reply");
    assert_eq!(got["correlationData"], B64.encode([1u8, 2, 3]));
    assert_eq!(got["payloadFormatIndicator"], "UTF8_DATA");
    assert_eq!(got["messageExpiresAt"], T0_MS + 3_600_000);
}

async fn publish_without_retain_stores_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    app.retain("t", "kept").await;
    for query in ["", "?retain=false", "?qos=1"] {
        let res = app.publish(&format!("/topics/t{query}"), "transient").await;
        assert_eq!(res.status(), 200);
        // A non-retained empty publish must not delete either.
        assert_eq!(
            app.publish(&format!("/topics/t{query}"), "").await.status(),
            200
        );
    }
    let got: Value = app.get_json("/retainedMessage/t").await;
    assert_eq!(got["payload"], B64.encode("kept"));
    let (status, kind, _) = error_of(app.get("/retainedMessage/other").await).await;
    assert_eq!((status, kind.as_str()), (404, "ResourceNotFoundException"));
}

async fn a_new_retained_publish_replaces_the_old(backend: Backend) {
    let app = spawn_app(backend).await;
    app.retain("t", "one").await;
    app.clock.advance(Duration::from_secs(5));
    assert_eq!(
        app.publish("/topics/t?retain=true", "two").await.status(),
        200
    );
    let got: Value = app.get_json("/retainedMessage/t").await;
    assert_eq!(
        (got["payload"].clone(), got["qos"].clone()),
        (json!(B64.encode("two")), json!(0))
    );
    assert_eq!(got["lastModifiedTime"], T0_MS + 5000);
}

async fn empty_retained_payload_deletes(backend: Backend) {
    let app = spawn_app(backend).await;
    app.retain("gone", "x").await;
    app.retain("stays", "y").await;
    assert_eq!(
        app.publish("/topics/gone?retain=true", "").await.status(),
        200
    );
    let (status, kind, _) = error_of(app.get("/retainedMessage/gone").await).await;
    assert_eq!((status, kind.as_str()), (404, "ResourceNotFoundException"));
    let listed: Vec<String> = app.snapshot().await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(listed, ["stays"]);
    // Deleting again, or deleting what never existed, still succeeds.
    assert_eq!(
        app.publish("/topics/gone?retain=true", "").await.status(),
        200
    );
}

async fn encoded_and_literal_topics_name_the_same_message(backend: Backend) {
    let app = spawn_app(backend).await;
    app.retain("a%2Fb%20c", "1").await;
    // curl users send literal slashes; reqwest sends the space as %20.
    let got: Value = app.get_json("/retainedMessage/a/b c").await;
    assert_eq!(got["topic"], "a/b c");
    // Decoded exactly once: %2525 is the topic "%25", not "%".
    app.retain("pct%2525", "2").await;
    let got: Value = app.get_json("/retainedMessage/pct%2525").await;
    assert_eq!(got["topic"], "pct%25");
    for t in ["ünï/çødé", "/leading", "trailing/", "a//b", "100% sure?"] {
        let res = app
            .publish(&format!("/topics/{}?retain=true", encode(t)), "v")
            .await;
        assert_eq!(res.status(), 200, "{t}");
        let got: Value = app
            .get_json(&format!("/retainedMessage/{}", encode(t)))
            .await;
        assert_eq!(got["topic"], t);
    }
}

async fn pages_follow_topic_order_and_survive_changes(backend: Backend) {
    let app = spawn_app(backend).await;
    for t in ["t/01", "t/02", "t/03", "t/04", "t/05", "t/06", "t/07"] {
        app.retain(&encode(t), "v").await;
    }
    let page: Value = app.get_json("/retainedMessage?maxResults=3").await;
    let topics = |p: &Value| -> Vec<String> {
        p["retainedTopics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["topic"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(topics(&page), ["t/01", "t/02", "t/03"]);
    let token = page["nextToken"].as_str().unwrap().to_owned();
    // Between pages: the last topic of the page is deleted, one is added before the cursor and
    // one after it. The token is a position, so nothing is skipped or repeated.
    app.publish(&format!("/topics/{}?retain=true", encode("t/03")), "")
        .await;
    app.retain(&encode("t/00"), "v").await;
    app.retain(&encode("t/045"), "v").await;
    let page: Value = app
        .get_json(&format!("/retainedMessage?maxResults=3&nextToken={token}"))
        .await;
    assert_eq!(topics(&page), ["t/04", "t/045", "t/05"]);
    let token = page["nextToken"].as_str().unwrap().to_owned();
    let page: Value = app
        .get_json(&format!("/retainedMessage?maxResults=3&nextToken={token}"))
        .await;
    assert_eq!(topics(&page), ["t/06", "t/07"]);
    assert!(
        page.get("nextToken").is_none(),
        "the last page has no token: {page}"
    );
}

async fn default_page_holds_fifty(backend: Backend) {
    let app = spawn_app(backend).await;
    let publishes = (0..51).map(|i| app.publish(format!("/topics/n%2F{i:02}?retain=true"), "v"));
    for res in futures_util::future::join_all(publishes).await {
        assert_eq!(res.status(), 200);
    }
    let page: Value = app.get_json("/retainedMessage").await;
    assert_eq!(page["retainedTopics"].as_array().unwrap().len(), 50);
    let page: Value = app.get_json("/retainedMessage?maxResults=200").await;
    assert_eq!(page["retainedTopics"].as_array().unwrap().len(), 51);
    assert!(page.get("nextToken").is_none());
}

/// One bad request: how to send it, and the answer expected.
struct Bad {
    what: &'static str,
    method: reqwest::Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    kind: &'static str,
}

fn bad(what: &'static str, method: &str, path: &str, status: u16, kind: &'static str) -> Bad {
    Bad {
        what,
        method: method.parse().unwrap(),
        path: path.to_owned(),
        headers: vec![],
        body: b"new payload".to_vec(),
        status,
        kind,
    }
}

async fn bad_requests_are_refused_and_change_nothing(backend: Backend) {
    const INVALID: &str = "InvalidRequestException";
    let app = spawn_app(backend).await;
    app.retain("seed", "original").await;
    app.retain(&encode("a/b"), "original").await;
    let before = app.snapshot().await;

    let long = "x".repeat(257);
    let deep = "1/2/3/4/5/6/7/8/9";
    let with_header = |mut b: Bad, name: &'static str, value: String| {
        b.headers.push((name, value));
        b
    };
    let cases = vec![
        bad("empty topic", "POST", "/topics/?retain=true", 400, INVALID),
        bad(
            "empty topic on get",
            "GET",
            "/retainedMessage/",
            400,
            INVALID,
        ),
        bad(
            "'+' wildcard",
            "POST",
            "/topics/a%2F%2B?retain=true",
            400,
            INVALID,
        ),
        bad(
            "'#' wildcard",
            "POST",
            "/topics/a%2F%23?retain=true",
            400,
            INVALID,
        ),
        bad(
            "U+0000",
            "POST",
            "/topics/seed%00?retain=true",
            400,
            INVALID,
        ),
        bad(
            "invalid UTF-8",
            "POST",
            "/topics/seed%FF?retain=true",
            400,
            INVALID,
        ),
        bad(
            "topic over 256 bytes",
            "POST",
            &format!("/topics/{long}?retain=true"),
            400,
            INVALID,
        ),
        bad(
            "topic over 8 levels",
            "POST",
            &format!("/topics/{}?retain=true", encode(deep)),
            400,
            INVALID,
        ),
        bad(
            "retained '$' topic",
            "POST",
            "/topics/%24aws%2Fx?retain=true",
            400,
            INVALID,
        ),
        bad(
            "qos 3",
            "POST",
            "/topics/seed?retain=true&qos=3",
            400,
            INVALID,
        ),
        bad(
            "qos -1",
            "POST",
            "/topics/seed?retain=true&qos=-1",
            400,
            INVALID,
        ),
        bad(
            "qos not a number",
            "POST",
            "/topics/seed?retain=true&qos=one",
            400,
            INVALID,
        ),
        bad(
            "retain not a boolean",
            "POST",
            "/topics/seed?retain=yes",
            400,
            INVALID,
        ),
        bad(
            "negative messageExpiry",
            "POST",
            "/topics/seed?retain=true&messageExpiry=-5",
            400,
            INVALID,
        ),
        bad(
            "messageExpiry not a number",
            "POST",
            "/topics/seed?retain=true&messageExpiry=soon",
            400,
            INVALID,
        ),
        bad(
            "messageExpiry beyond 32 bits",
            "POST",
            "/topics/seed?retain=true&messageExpiry=4294967296",
            400,
            INVALID,
        ),
        bad(
            "responseTopic with wildcard",
            "POST",
            "/topics/seed?retain=true&responseTopic=r%2F%23",
            400,
            INVALID,
        ),
        bad(
            "duplicate qos",
            "POST",
            "/topics/seed?retain=true&qos=1&qos=0",
            400,
            INVALID,
        ),
        with_header(
            bad(
                "user properties not base64",
                "POST",
                "/topics/seed?retain=true",
                400,
                INVALID,
            ),
            "x-amz-mqtt5-user-properties",
            "***".into(),
        ),
        with_header(
            bad(
                "user properties not an array",
                "POST",
                "/topics/seed?retain=true",
                400,
                INVALID,
            ),
            "x-amz-mqtt5-user-properties",
            B64.encode(r#"{"a":"b"}"#),
        ),
        with_header(
            bad(
                "user property value not a string",
                "POST",
                "/topics/seed?retain=true",
                400,
                INVALID,
            ),
            "x-amz-mqtt5-user-properties",
            B64.encode(r#"[{"a":1}]"#),
        ),
        with_header(
            bad(
                "correlation data not base64",
                "POST",
                "/topics/seed?retain=true",
                400,
                INVALID,
            ),
            "x-amz-mqtt5-correlation-data",
            "not base64!".into(),
        ),
        with_header(
            bad(
                "unknown payload format",
                "POST",
                "/topics/seed?retain=true",
                400,
                INVALID,
            ),
            "x-amz-mqtt5-payload-format-indicator",
            "TEXT".into(),
        ),
        Bad {
            body: vec![0xff, 0xfe],
            ..with_header(
                bad(
                    "UTF8_DATA that is not UTF-8",
                    "POST",
                    "/topics/seed?retain=true",
                    400,
                    INVALID,
                ),
                "x-amz-mqtt5-payload-format-indicator",
                "UTF8_DATA".into(),
            )
        },
        Bad {
            body: vec![b'x'; 128 * 1024 + 1],
            ..bad(
                "payload over 128 KiB",
                "POST",
                "/topics/seed?retain=true",
                413,
                "RequestEntityTooLargeException",
            )
        },
        Bad {
            body: vec![b'x'; 10 * 1024 * 1024],
            ..bad(
                "payload of 10 MiB",
                "POST",
                "/topics/seed?retain=true",
                413,
                "RequestEntityTooLargeException",
            )
        },
        bad(
            "maxResults 0",
            "GET",
            "/retainedMessage?maxResults=0",
            400,
            INVALID,
        ),
        bad(
            "maxResults 201",
            "GET",
            "/retainedMessage?maxResults=201",
            400,
            INVALID,
        ),
        bad(
            "maxResults not a number",
            "GET",
            "/retainedMessage?maxResults=ten",
            400,
            INVALID,
        ),
        bad(
            "nextToken not issued here",
            "GET",
            "/retainedMessage?nextToken=AWEvYiBjtpIUMUOK0uYCo9_tsP0P-w",
            400,
            INVALID,
        ),
        bad(
            "topic on get with wildcard",
            "GET",
            "/retainedMessage/a%2F%2B",
            400,
            INVALID,
        ),
        bad(
            "unknown route",
            "GET",
            "/nowhere",
            404,
            "UnknownOperationException",
        ),
        bad(
            "wrong method",
            "DELETE",
            "/topics/seed",
            405,
            "MethodNotAllowedException",
        ),
        bad(
            "wrong method on list",
            "POST",
            "/retainedMessage",
            405,
            "MethodNotAllowedException",
        ),
    ];
    for case in cases {
        let mut req = app
            .http
            .request(case.method.clone(), app.url(&case.path))
            .body(case.body.clone());
        for (name, value) in &case.headers {
            req = req.header(*name, value);
        }
        let res = req.send().await.unwrap();
        assert!(
            res.headers().contains_key("x-amzn-requestid"),
            "{}: no request id",
            case.what
        );
        let (status, kind, message) = error_of(res).await;
        assert_eq!(
            (status, kind.as_str()),
            (case.status, case.kind),
            "{}: {message}",
            case.what
        );
        assert!(!message.is_empty(), "{}: the error says nothing", case.what);
    }
    assert_eq!(app.snapshot().await, before);
}

async fn an_oversized_streamed_body_is_refused_without_being_buffered(backend: Backend) {
    let app = spawn_app(backend).await;
    app.retain("seed", "original").await;
    let before = app.snapshot().await;
    // No Content-Length: the body arrives chunked, 1 MiB in 64 KiB pieces.
    let chunks = (0..16).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 64 * 1024]));
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let res = app
        .http
        .post(app.url("/topics/seed?retain=true"))
        .body(body)
        .send()
        .await;
    // The server may answer and close before it has read everything; either way nothing is stored.
    if let Ok(res) = res {
        let (status, kind, _) = error_of(res).await;
        assert_eq!(
            (status, kind.as_str()),
            (413, "RequestEntityTooLargeException")
        );
    }
    assert_eq!(app.snapshot().await, before);
}

async fn expired_messages_disappear_and_are_purged(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(
        app.publish("/topics/brief?retain=true&messageExpiry=60", "v")
            .await
            .status(),
        200
    );
    assert_eq!(
        app.publish("/topics/lasting?retain=true&messageExpiry=0", "v")
            .await
            .status(),
        200
    );
    app.clock.advance(Duration::from_secs(59));
    assert_eq!(app.get("/retainedMessage/brief").await.status(), 200);
    app.clock.advance(Duration::from_secs(1));
    assert_eq!(app.get("/retainedMessage/brief").await.status(), 404);
    let listed: Vec<String> = app.snapshot().await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(listed, ["lasting"]);
    // Deleted once no write older than it can still arrive (see `store::purge_delay`).
    let store_timeout = retaind::app::ServeConfig::defaults().store_timeout;
    app.clock
        .advance(retaind::store::purge_delay(store_timeout));
    let report = app
        .store()
        .maintain(Duration::from_secs(3 * 365 * 86400))
        .await
        .unwrap();
    assert_eq!(report.expired, 1);
}

async fn unread_messages_are_purged_after_the_retention_period(backend: Backend) {
    let app = spawn_app(backend).await;
    app.retain("read", "v").await;
    app.retain("idle", "v").await;
    let year = Duration::from_secs(365 * 86400);
    app.clock.advance(2 * year);
    assert_eq!(app.get("/retainedMessage/read").await.status(), 200);
    app.store().maintain(3 * year).await.unwrap();
    app.clock.advance(year + Duration::from_secs(86400));
    let report = app.store().maintain(3 * year).await.unwrap();
    assert_eq!(report.idle, 1);
    assert_eq!(app.get("/retainedMessage/idle").await.status(), 404);
    assert_eq!(app.get("/retainedMessage/read").await.status(), 200);
}

async fn the_background_pass_purges_without_being_asked(backend: Backend) {
    let db = common::fresh_db(backend).await;
    let mut config = common::test_config(&db.url);
    config.retention = Duration::from_secs(3600);
    config.maintenance_interval = Duration::from_millis(50);
    let app = common::spawn_app_with(db, config).await;
    app.retain("idle", "v").await;
    // Idle messages are not hidden from listings, only purged, so an empty listing means the
    // task ran. (Polling with GET would not do: a read is what keeps a message from being idle.)
    app.clock.advance(Duration::from_secs(3601));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !app.store().list(None, 10).await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the maintenance task never purged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.get("/retainedMessage/idle").await.status(), 404);
}

async fn acknowledged_publishes_survive_a_restart(backend: Backend) {
    let app = spawn_app(backend).await;
    let publishes = (0..100).map(|i| {
        app.publish(
            format!("/topics/d%2F{i:03}?retain=true&qos=1"),
            format!("v{i}"),
        )
    });
    for res in futures_util::future::join_all(publishes).await {
        assert_eq!(res.status(), 200);
    }
    let db = app.stop().await;
    let config = common::test_config(&db.url);
    let app = common::spawn_app_with(db, config).await;
    let all = app.snapshot().await;
    assert_eq!(all.len(), 100);
    for (i, (topic, msg)) in all.iter().enumerate() {
        assert_eq!(topic, &format!("d/{i:03}"));
        assert_eq!(msg["payload"], B64.encode(format!("v{i}")));
    }
}

async fn probes_and_docs_are_served(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({"status": "ready"})
    );
    let docs = app.get("/docs/").await;
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger-ui"));
    let served: Value = app.get_json("/openapi.json").await;
    let generated = serde_json::to_value(retaind::api::spec()).unwrap();
    assert_eq!(served, generated);
}

async fn in_flight_requests_finish_during_shutdown(backend: Backend) {
    let app = spawn_app(backend).await;
    // The body is still being sent when shutdown begins; the publish must still complete.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let request = tokio::spawn(
        app.http
            .post(app.url("/topics/late?retain=true"))
            .body(body)
            .send(),
    );
    tx.send(Ok(b"first half, ".to_vec())).await.unwrap();
    // Nothing signals "the handler is waiting for the body", so allow it ample time to get there;
    // a request that had not arrived would make shutdown refuse it and fail the test loudly.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let TestAppParts { running, store_url } = split(app);
    let shutdown = tokio::spawn(running.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown must wait for the in-flight request"
    );
    tx.send(Ok(b"second half".to_vec())).await.unwrap();
    drop(tx);
    let res = request.await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    shutdown.await.unwrap();
    let backend = common::open_backend(&store_url).await;
    let got = backend.get_many(&[topic("late")], T0_MS).await.unwrap();
    assert_eq!(&got[0].payload[..], b"first half, second half");
}

struct TestAppParts {
    running: retaind::app::Running,
    store_url: String,
}

fn split(mut app: common::TestApp) -> TestAppParts {
    let running = app.running.take().unwrap();
    // Keep the database (a SQLite temp dir) alive for the rest of the test.
    let store_url = app.db.url.clone();
    std::mem::forget(app.db);
    TestAppParts { running, store_url }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

for_each_backend!(
    retained_publish_is_returned_by_get_and_list,
    get_without_user_properties_omits_the_field,
    mqtt5_properties_are_stored_with_the_message,
    publish_without_retain_stores_nothing,
    a_new_retained_publish_replaces_the_old,
    empty_retained_payload_deletes,
    encoded_and_literal_topics_name_the_same_message,
    pages_follow_topic_order_and_survive_changes,
    default_page_holds_fifty,
    bad_requests_are_refused_and_change_nothing,
    an_oversized_streamed_body_is_refused_without_being_buffered,
    expired_messages_disappear_and_are_purged,
    unread_messages_are_purged_after_the_retention_period,
    the_background_pass_purges_without_being_asked,
    acknowledged_publishes_survive_a_restart,
    probes_and_docs_are_served,
    in_flight_requests_finish_during_shutdown,
);
