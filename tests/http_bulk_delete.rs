//! `DELETE /retainedMessage?topicFilter=&expectedCount=` (retaind's guarded bulk delete) against
//! the real server, on SQLite and Postgres: the dry run's count, a wrong count deleting nothing,
//! only matches deleted, the read cache and MQTT subscribers told as for an empty retained
//! publish, and the policy action it needs.

mod common;

use common::mqtt::{V3, v3_options};
use common::{Backend, TestApp, fresh_db, spawn_app, spawn_app_with, test_config};
use serde_json::Value;
use sha2::{Digest, Sha256};

const ADMIN: &str = "admin-token-0123456789";
const DEVICES_ADMIN: &str = "devices-admin-token-0123456789";
const OPERATOR: &str = "operator-token-0123456789";

async fn seed(app: &TestApp) {
    for topic in [
        "dev%2F1%2Fcfg",
        "dev%2F2%2Fcfg",
        "dev%2F2%2Fstate",
        "other%2Fcfg",
        "dev",
    ] {
        app.retain(topic, "v").await;
    }
}

async fn topics(app: &TestApp) -> Vec<String> {
    app.snapshot().await.into_iter().map(|(t, _)| t).collect()
}

async fn bulk_delete(app: &TestApp, query: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = app
        .http
        .delete(app.url(&format!("/retainedMessage?{query}")));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("HTTP request")
}

async fn error_of(res: reqwest::Response) -> (u16, String, String) {
    let status = res.status().as_u16();
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

async fn a_dry_run_counts_and_deletes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    seed(&app).await;
    let before = topics(&app).await;
    let res = bulk_delete(&app, "topicFilter=dev%2F%2B%2Fcfg&dryRun=true", None).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"matchedCount": 2, "deletedCount": 0, "dryRun": true})
    );
    assert_eq!(topics(&app).await, before);
}

async fn a_wrong_expected_count_deletes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    seed(&app).await;
    let before = topics(&app).await;
    for count in ["3", "5"] {
        let res = bulk_delete(
            &app,
            &format!("topicFilter=dev%2F%23&expectedCount={count}"),
            None,
        )
        .await;
        let (status, kind, message) = error_of(res).await;
        assert_eq!(
            (status, kind.as_str()),
            (409, "ConflictException"),
            "{message}"
        );
        assert!(
            message.contains("matches 4") && message.contains("nothing was deleted"),
            "{message}"
        );
    }
    let (status, kind, message) =
        error_of(bulk_delete(&app, "topicFilter=dev%2F%23", None).await).await;
    assert_eq!((status, kind.as_str()), (409, "ConflictException"));
    assert!(message.contains("expectedCount is required"), "{message}");
    let (status, _, message) =
        error_of(bulk_delete(&app, "topicFilter=%24share%2Fg%2F%23&dryRun=true", None).await).await;
    assert_eq!(status, 400, "{message}");
    for bad in [
        "topicFilter=a%2B&expectedCount=0",
        "expectedCount=0",
        "topicFilter=a&expectedCount=-1",
        "topicFilter=a&dryRun=maybe",
    ] {
        let (status, _, message) = error_of(bulk_delete(&app, bad, None).await).await;
        assert_eq!(status, 400, "{bad}: {message}");
    }
    assert_eq!(topics(&app).await, before);
}

async fn the_right_count_deletes_exactly_the_matches_and_the_cache_forgets_them(backend: Backend) {
    let app = spawn_app(backend).await;
    seed(&app).await;
    // Read through the cache first, so a stale copy would show.
    assert_eq!(
        app.get("/retainedMessage/dev%2F1%2Fcfg").await.status(),
        200
    );
    let res = bulk_delete(&app, "topicFilter=dev%2F%23&expectedCount=4", None).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"matchedCount": 4, "deletedCount": 4, "dryRun": false})
    );
    assert_eq!(topics(&app).await, ["other/cfg"]);
    assert_eq!(
        app.get("/retainedMessage/dev%2F1%2Fcfg").await.status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_the_empty_retained_message_of_each_delete() {
    let app = spawn_app(Backend::Sqlite).await;
    seed(&app).await;
    let (mut sub, _) = V3::connect(v3_options(&app, "watcher")).await;
    sub.subscribe("dev/+/cfg", rumqttc::QoS::AtLeastOnce).await;
    let mut retained = Vec::new();
    for _ in 0..2 {
        let p = sub.next_publish().await;
        assert!(p.retain);
        retained.push(p.topic);
    }
    let res = bulk_delete(&app, "topicFilter=dev%2F%2B%2Fcfg&expectedCount=2", None).await;
    assert_eq!(res.status(), 200);
    let mut emptied = Vec::new();
    for _ in 0..2 {
        let p = sub.next_publish().await;
        assert!(p.payload.is_empty(), "{p:?}");
        emptied.push(p.topic);
    }
    emptied.sort();
    assert_eq!(emptied, ["dev/1/cfg", "dev/2/cfg"]);
}

/// Two nodes sharing a Postgres database: a bulk delete on one reaches the other's read cache
/// (the store's change feed), as an empty retained publish does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_stops_serving_what_a_bulk_delete_removed() {
    let db = fresh_db(Backend::Postgres).await;
    let url = db.url.clone();
    let a = spawn_app_with(db, test_config(&url)).await;
    let b = spawn_app_with(common::FreshDb::shared(&url), test_config(&url)).await;
    seed(&a).await;
    // b reads them, so its cache holds them.
    assert_eq!(b.get("/retainedMessage/dev%2F1%2Fcfg").await.status(), 200);
    assert_eq!(b.get("/retainedMessage/other%2Fcfg").await.status(), 200);
    let res = bulk_delete(&a, "topicFilter=dev%2F%2B%2Fcfg&expectedCount=2", None).await;
    assert_eq!(res.status(), 200);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while b.get("/retainedMessage/dev%2F1%2Fcfg").await.status() != 404 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other node still serves the deleted message"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(b.get("/retainedMessage/other%2Fcfg").await.status(), 200);
}

fn principals() -> String {
    let hash = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    format!(
        r##"
[[principals]]
name = "admin"
api_tokens_sha256 = ["{admin}"]
[[principals.statements]]
effect = "Allow"
actions = ["*"]
resources = ["*"]

[[principals]]
name = "devices-admin"
api_tokens_sha256 = ["{devices}"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:*"]
resources = ["*"]
[[principals.statements]]
effect = "Allow"
actions = ["retaind:DeleteRetainedMessages"]
resources = ["topicfilter/dev/#"]

[[principals]]
name = "operator"
api_tokens_sha256 = ["{operator}"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:*"]
resources = ["*"]
"##,
        admin = hash(ADMIN),
        devices = hash(DEVICES_ADMIN),
        operator = hash(OPERATOR),
    )
}

async fn a_principal_without_the_action_is_refused_and_nothing_is_deleted(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.toml");
    std::fs::write(&path, principals()).unwrap();
    let db = fresh_db(backend).await;
    let mut config = test_config(&db.url);
    config.principals = Some(path);
    let app = spawn_app_with(db, config).await;
    for topic in ["dev%2F1", "other%2F1"] {
        let res = app
            .http
            .post(app.url(&format!("/topics/{topic}?retain=true")))
            .bearer_auth(ADMIN)
            .body("v")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let count = |app: &TestApp| {
        let store = app.store().clone();
        async move { store.count(None).await.unwrap() }
    };
    let (status, _, _) =
        error_of(bulk_delete(&app, "topicFilter=%23&dryRun=true", None).await).await;
    assert_eq!(status, 401);
    // iot:* does not include it, even for a dry run.
    let res = bulk_delete(&app, "topicFilter=%23&expectedCount=2", Some(OPERATOR)).await;
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (403, "ForbiddenException"));
    assert!(
        message.contains("retaind:DeleteRetainedMessages"),
        "{message}"
    );
    let res = bulk_delete(&app, "topicFilter=%23&dryRun=true", Some(OPERATOR)).await;
    assert_eq!(res.status(), 403);
    // Allowed on dev/# only: # is wider.
    let res = bulk_delete(&app, "topicFilter=%23&expectedCount=2", Some(DEVICES_ADMIN)).await;
    assert_eq!(res.status(), 403);
    assert_eq!(count(&app).await, 2);
    let res = bulk_delete(
        &app,
        "topicFilter=dev%2F%23&expectedCount=1",
        Some(DEVICES_ADMIN),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(count(&app).await, 1);
    let res = bulk_delete(&app, "topicFilter=%23&expectedCount=1", Some(ADMIN)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(count(&app).await, 0);
}

for_each_backend!(
    a_dry_run_counts_and_deletes_nothing,
    a_wrong_expected_count_deletes_nothing,
    the_right_count_deletes_exactly_the_matches_and_the_cache_forgets_them,
    a_principal_without_the_action_is_refused_and_nothing_is_deleted,
);
