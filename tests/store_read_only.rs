//! A Postgres that turns read-only under the service, as a primary demoted in a failover does
//! for the connections still open to it (or one reached through a stale address): writes are
//! refused as the store being unavailable (503, SQLSTATE 25006), reads go on, nothing half
//! written, a retained Will waits, and writes resume on fresh connections once the database
//! takes writes again.
//!
//! Real Postgres, isolated from the other tests: retaind connects as a role of this test's own,
//! made read-only with `ALTER ROLE ... SET default_transaction_read_only` (which holds for the
//! role's new sessions), its open sessions ended so that it reconnects.

mod common;

use std::time::Duration;

use common::mqtt::raw::{Raw, build};
use common::mqtt::within;
use common::nats::Nats;
use common::{FreshDb, TestApp, execute_sql, postgres_base_url, spawn_app_with, test_config};
use reqwest::StatusCode;

/// A login role owning a new schema, and the URL retaind connects with as that role.
async fn own_role() -> (String, String) {
    let base = postgres_base_url();
    let role = format!("ro_{}", uuid::Uuid::new_v4().simple());
    execute_sql(
        &base,
        &format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'read-only-test'; \
             CREATE SCHEMA {role} AUTHORIZATION {role}"
        ),
    )
    .await;
    let mut url = reqwest::Url::parse(&base).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some("read-only-test")).unwrap();
    let options = format!("-c search_path={role}");
    let query: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "options")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .chain([("options".to_owned(), options)])
        .collect();
    url.query_pairs_mut().clear().extend_pairs(query);
    (role, url.to_string())
}

/// Makes `role`'s new sessions read-only (or writable again), leaving its open ones as they are.
async fn set_new_sessions_read_only(role: &str, read_only: bool) {
    let setting = if read_only {
        format!("ALTER ROLE {role} SET default_transaction_read_only = on")
    } else {
        format!("ALTER ROLE {role} RESET default_transaction_read_only")
    };
    execute_sql(&postgres_base_url(), &setting).await;
}

/// Makes `role`'s sessions read-only (or writable again) and ends its open ones.
async fn set_read_only(role: &str, read_only: bool) {
    set_new_sessions_read_only(role, read_only).await;
    let base = postgres_base_url();
    execute_sql(
        &base,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE usename = '{role}' AND pid <> pg_backend_pid()"
        ),
    )
    .await;
}

async fn publish(app: &TestApp, topic: &str, body: &'static str) -> reqwest::Response {
    app.http
        .post(app.url(&format!("/topics/{topic}?retain=true&qos=1")))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Drops `role` and what it owns (roles outlive the scratch database), once `app` stopped.
async fn drop_role(app: TestApp, role: &str) {
    app.stop().await;
    set_read_only(role, false).await;
    execute_sql(
        &postgres_base_url(),
        &format!("DROP OWNED BY {role} CASCADE; DROP ROLE {role}"),
    )
    .await;
}

/// The reason code of the CONNACK a 3.1.1 CONNECT as `id` gets.
async fn connect_code(app: &TestApp, id: &str) -> u8 {
    let (_raw, ack) = Raw::connect(app, &build::connect(id, true, 60, None)).await;
    ack.body[1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_turned_read_only_refuses_writes_as_unavailable_and_they_resume_after() {
    let (role, url) = own_role().await;
    let mut config = test_config(&url);
    config.store_timeout = Duration::from_secs(1);
    let app = spawn_app_with(FreshDb::shared(&url), config).await;
    app.retain("before", "v").await;

    set_read_only(&role, true).await;
    // Each write is refused as unavailable: the first may meet a session that was ended, the
    // later ones fresh read-only sessions (a write connection that failed is not reused).
    for n in 0..4 {
        let res = publish(&app, "during", "x").await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "publish {n}");
        assert_eq!(
            res.headers()["x-amzn-errortype"],
            "ServiceUnavailableException"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Reads, and readiness, go on.
    assert_eq!(app.get("/retainedMessage/before").await.status(), 200);
    assert_eq!(app.get("/retainedMessage/during").await.status(), 404);
    assert_eq!(app.get("/readyz").await.status(), 200);

    // A device's retained Will falls due now: it waits for the database to take writes.
    let will = build::Will {
        topic: "status/device-1",
        payload: b"offline",
        qos: 1,
        retain: true,
        props: &[],
    };
    let (device, _) = Raw::connect(
        &app,
        &build::connect_with_will("device-1", true, 60, None, will),
    )
    .await;
    drop(device);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.stored_payload("status/device-1").await, None);

    set_read_only(&role, false).await;
    within("the Will to be stored", async {
        while app.stored_payload("status/device-1").await.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        app.stored_payload("status/device-1").await.unwrap(),
        b"offline"
    );
    // Writes succeed again (the first may meet a session that was ended).
    within("a write to succeed", async {
        while publish(&app, "after", "v").await.status() != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(app.get("/retainedMessage/during").await.status(), 404);
    assert_eq!(app.stored_payload("before").await.unwrap(), b"v");
    assert_eq!(app.stored_payload("after").await.unwrap(), b"v");
    drop_role(app, &role).await;
}

/// With `--cluster-url` every CONNECT writes its claim of the client id through a pool of
/// connections. Connections opened while the database took no writes stay read-only after it
/// takes them again, as connections to a demoted primary do: the pool must not go on lending
/// them, or the node refuses every client until they age out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_takes_clients_again_once_its_database_takes_writes() {
    let nats = Nats::start().await;
    let (role, url) = own_role().await;
    let mut config = test_config(&url);
    config.store_timeout = Duration::from_secs(1);
    config.cluster_url = Some(nats.url());
    let app = spawn_app_with(FreshDb::shared(&url), config).await;
    assert_eq!(connect_code(&app, "before").await, 0x00);

    set_read_only(&role, true).await;
    // The pool's sessions were ended: those it opens now are read-only, and claims fail.
    within("a CONNECT to be refused", async {
        while connect_code(&app, "during").await == 0x00 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    // Let the pool hold its read-only sessions for a while, as one does through a failover.
    for _ in 0..10 {
        assert_eq!(
            connect_code(&app, "during").await,
            0x03,
            "Server unavailable"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The database takes writes again; the sessions already open stay read-only.
    set_new_sessions_read_only(&role, false).await;
    within("a CONNECT to be taken again", async {
        while connect_code(&app, "after").await != 0x00 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    drop_role(app, &role).await;
}
