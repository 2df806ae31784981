//! Shared by the integration tests: fresh stores on real SQLite and real Postgres, and the real
//! server started on port 0 against them.

#![allow(dead_code)] // each test binary uses its own subset of these helpers

pub mod balancer;
pub mod cluster_rows;
pub mod haproxy;
pub mod logs;
pub mod mqtt;
pub mod nats;
pub mod pgbouncer;
pub mod postgres_tls;
pub mod process;
pub mod proxy;
pub mod raw_http;
pub mod sockets;
pub mod sse;
pub mod tls;
pub mod writes;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use retaind::app::{self, Running, ServeConfig};
use retaind::store::{self, Clock, RetainedStore, Store, StoreOptions};
use retaind::topic::{TopicLimits, TopicName};
use sqlx::Connection;
use sqlx::postgres::PgConnectOptions;

/// 2026-01-01T00:00:00Z: tests run on a manual clock so expiry and retention need no sleeping.
pub const T0_MS: i64 = 1_767_225_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Somewhere to keep a fresh, empty store; dropping it removes a SQLite file.
pub struct FreshDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl FreshDb {
    /// Another handle on a database that a first [`FreshDb`] owns, for a second node.
    #[allow(dead_code)]
    pub fn shared(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            _dir: None,
        }
    }
}

pub fn postgres_base_url() -> String {
    std::env::var("RETAIND_TEST_DATABASE_URL").expect(
        "RETAIND_TEST_DATABASE_URL is not set: run the tests with ./scripts/test.sh, \
         which starts Postgres and creates a scratch database",
    )
}

/// A new empty database: a SQLite file in a temporary directory, or a new schema in the
/// run's Postgres scratch database (selected through `search_path`).
pub async fn fresh_db(backend: Backend) -> FreshDb {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temporary directory");
            let url = format!(
                "sqlite://{}",
                dir.path().join("nested/retaind.db").display()
            );
            FreshDb {
                url,
                _dir: Some(dir),
            }
        }
        Backend::Postgres => {
            let base = postgres_base_url();
            let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&base)
                .await
                .expect("connecting to the test database");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&mut conn)
                .await
                .expect("creating a test schema");
            let sep = if base.contains('?') { '&' } else { '?' };
            FreshDb {
                url: format!("{base}{sep}options=-c%20search_path%3D{schema}"),
                _dir: None,
            }
        }
    }
}

/// A deadline no test reaches, for calling a backend's `apply` directly.
pub fn far_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(60)
}

/// A topic name within the default limits; panics on an invalid one (tests pass good names).
pub fn topic(s: &str) -> TopicName {
    TopicName::parse(s, TopicLimits::default()).unwrap()
}

pub async fn open_backend(url: &str) -> Arc<dyn RetainedStore> {
    store::open_backend(url, 4, Duration::from_secs(5), Duration::ZERO)
        .await
        .expect("opening the store")
}

pub async fn fresh_store(backend: Backend, clock: Clock) -> (Store, FreshDb) {
    let db = fresh_db(backend).await;
    let store = Store::new(open_backend(&db.url).await, clock, StoreOptions::default());
    (store, db)
}

/// The real service, serving HTTP on a free port.
pub struct TestApp {
    pub base: String,
    /// The bound MQTT (TCP) listener; MQTT over WebSocket is `ws://{http_addr}/mqtt`.
    pub mqtt_addr: std::net::SocketAddr,
    pub http_addr: std::net::SocketAddr,
    pub http: reqwest::Client,
    pub clock: Clock,
    pub db: FreshDb,
    pub running: Option<Running>,
}

pub fn test_config(database_url: &str) -> ServeConfig {
    let mut config = ServeConfig::defaults();
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    config.mqtt_addr = "127.0.0.1:0".parse().unwrap();
    config.database_url = database_url.to_owned();
    // The tests drive maintenance themselves through `Store::maintain`.
    config.maintenance_interval = Duration::from_secs(3600);
    // Request rates are off unless a test sets them (tests/http_throttle.rs): most tests list
    // and read far faster than the defaults allow.
    config.rate_get_retained_message = 0.0;
    config.rate_list_retained_messages = 0.0;
    config.rate_publish = 0.0;
    config.rate_watch_retained_messages = 0.0;
    config.rate_delete_connection = 0.0;
    config
}

/// The HTTP client of a test. Its pool lets a connection go after 5 s unused: the server closes
/// one that has sent no request for `--http-header-timeout` (10 s) from its accept, and the
/// pool keeps connections it opened for a request that another connection then took. A request
/// sent on such a connection just as the server closes it fails with `IncompleteMessage` (a
/// test failed so in CI, on a loaded host), which no client retries for a request it has sent.
pub fn test_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client")
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    let db = fresh_db(backend).await;
    let config = test_config(&db.url);
    spawn_app_with(db, config).await
}

pub async fn spawn_app_with(db: FreshDb, config: ServeConfig) -> TestApp {
    spawn_app_at(db, config, Clock::manual(T0_MS)).await
}

/// [`spawn_app_with`] on `clock`, for a start that must find time moved on.
pub async fn spawn_app_at(db: FreshDb, config: ServeConfig, clock: Clock) -> TestApp {
    let running = app::start(&config, clock.clone())
        .await
        .expect("starting retaind");
    TestApp {
        base: format!("http://{}", running.http_addr),
        mqtt_addr: running.mqtt_addr,
        http_addr: running.http_addr,
        http: test_client(),
        clock,
        db,
        running: Some(running),
    }
}

impl TestApp {
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base)
    }

    pub fn store(&self) -> &Store {
        &self.running.as_ref().expect("app is running").store
    }

    pub async fn publish(
        &self,
        path_and_query: impl AsRef<str>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.http
            .post(self.url(path_and_query.as_ref()))
            .body(body)
            .send()
            .await
            .expect("HTTP request")
    }

    /// The payload of the retained message at `t`, if one is stored.
    pub async fn stored_payload(&self, t: &str) -> Option<Vec<u8>> {
        self.store()
            .get(topic(t))
            .await
            .unwrap()
            .map(|m| m.payload.to_vec())
    }

    pub async fn get(&self, path_and_query: &str) -> reqwest::Response {
        self.http
            .get(self.url(path_and_query))
            .send()
            .await
            .expect("HTTP request")
    }

    pub async fn get_json(&self, path_and_query: &str) -> serde_json::Value {
        self.get(path_and_query)
            .await
            .json()
            .await
            .expect("a JSON body")
    }

    /// Publishes a retained message and insists it was accepted.
    pub async fn retain(&self, topic_encoded: &str, body: &'static str) {
        let res = self
            .publish(&format!("/topics/{topic_encoded}?retain=true&qos=1"), body)
            .await;
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    }

    /// Every retained topic with its payload, following nextToken to the end: a picture of the
    /// whole stored state, for checking that a rejected request changed nothing.
    pub async fn snapshot(&self) -> Vec<(String, serde_json::Value)> {
        snapshot_at(&self.http, &self.base).await
    }

    /// Until no MQTT connection is left: each one that ended has left its session (and
    /// scheduled its Will).
    pub async fn until_no_connections(&self) {
        self.until_connections(0).await;
    }

    /// Until `n` MQTT connections are left: those that ended have left their sessions.
    pub async fn until_connections(&self, n: usize) {
        let broker = &self.running.as_ref().expect("app is running").broker;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while broker.connections() > n {
            assert!(
                std::time::Instant::now() < deadline,
                "a connection did not end"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn stop(mut self) -> FreshDb {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        self.db
    }
}

/// `n` nodes of one service on a fresh Postgres database, joined through the NATS at
/// `cluster_url`.
pub async fn cluster_nodes(cluster_url: &str, n: usize) -> Vec<TestApp> {
    cluster_nodes_with(cluster_url, n, |_| {}).await
}

/// [`cluster_nodes`], with `set` applied to each node's settings.
pub async fn cluster_nodes_with(
    cluster_url: &str,
    n: usize,
    set: impl Fn(&mut retaind::app::ServeConfig),
) -> Vec<TestApp> {
    let db = fresh_db(Backend::Postgres).await;
    let url = db.url.clone();
    let mut dbs = vec![db];
    dbs.extend((1..n).map(|_| FreshDb::shared(&url)));
    let mut nodes = Vec::new();
    for db in dbs {
        let mut config = test_config(&url);
        config.cluster_url = Some(cluster_url.to_owned());
        set(&mut config);
        nodes.push(spawn_app_with(db, config).await);
    }
    nodes
}

/// An operator's transaction on the Postgres database at `url` holding the row of the retained
/// message at `topic` (`SELECT ... FOR UPDATE`): writes to it wait until the returned
/// connection rolls back or is dropped.
pub async fn hold_retained_row(url: &str, topic: &str) -> sqlx::PgConnection {
    use sqlx::{Connection, Executor};
    let mut locker = sqlx::PgConnection::connect(url).await.unwrap();
    locker.execute("BEGIN").await.unwrap();
    sqlx::query("SELECT 1 FROM retained_messages WHERE topic = $1 FOR UPDATE")
        .bind(topic)
        .execute(&mut locker)
        .await
        .unwrap();
    locker
}

/// The cluster handle of a node started with `--cluster-url`.
pub fn cluster_of(app: &TestApp) -> &retaind::cluster::Cluster {
    app.running
        .as_ref()
        .expect("running")
        .broker
        .cluster()
        .expect("started with --cluster-url")
}

/// Runs `sql` (one or more statements) on the database behind a store URL, over a connection of
/// its own, as an operator's psql or sqlite3 session would.
pub async fn execute_sql(url: &str, sql: &str) {
    use sqlx::Executor;
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url)
            .await
            .expect("connecting to the SQLite file");
        conn.execute(sql).await.expect("running SQL");
    } else {
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .expect("connecting to the test schema");
        conn.execute(sql).await.expect("running SQL");
    }
}

/// The one integer `sql` answers on the database behind a store URL, over a connection of its
/// own.
pub async fn query_i64(url: &str, sql: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url)
            .await
            .expect("connecting to the SQLite file");
        sqlx::query_scalar(sql).fetch_one(&mut conn).await
    } else {
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .expect("connecting to the test schema");
        sqlx::query_scalar(sql).fetch_one(&mut conn).await
    }
    .expect("running SQL")
}

/// A benchmark's setting from the environment variable `name`, or `default`.
pub fn bench_setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Percent-encodes a topic as one path segment, the way the AWS SDKs do.
pub fn encode(topic: &str) -> String {
    percent_encoding::utf8_percent_encode(topic, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Host and port of a Postgres URL, for pointing a proxy at it.
pub fn postgres_host_port(url: &str) -> (String, u16) {
    let opts = PgConnectOptions::from_str(url).expect("a Postgres URL");
    (opts.get_host().to_owned(), opts.get_port())
}

/// A Postgres URL with its host and port replaced by `addr` (a proxy in front of the database,
/// or a closed port).
pub fn postgres_url_via(url: &str, addr: std::net::SocketAddr) -> String {
    let (host, port) = postgres_host_port(url);
    let via = url.replacen(&format!("{host}:{port}"), &addr.to_string(), 1);
    assert_ne!(
        via, url,
        "the test database URL must name host:port explicitly"
    );
    via
}

/// Declares each listed async test once per backend: `mod sqlite { ... }` and `mod postgres { ... }`.
#[macro_export]
macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}

/// The value of `series` (a metric's name, with its labels as the page writes them) on a
/// `/metrics` page.
pub fn metric_value(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} is not on the page"))
        .parse()
        .unwrap()
}

/// Store work of `work` (`scan`, `write batch`, ...) that failed because the database could not
/// serve it, as `app`'s metrics count it (read in the process: `/metrics` may want a token).
pub fn store_unavailable(app: &TestApp, work: &str) -> f64 {
    let running = app.running.as_ref().expect("app is running");
    let page = running.broker.metrics().render();
    let work = format!("work=\"{work}\"");
    page.lines()
        .filter(|l| {
            l.starts_with("retaind_store_errors_total{")
                && l.contains(&work)
                && l.contains("kind=\"unavailable\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Until [`store_unavailable`] counts `n` failures of `work`.
pub async fn until_store_unavailable(app: &TestApp, work: &str, n: f64) {
    mqtt::within("the database work to fail", async {
        while store_unavailable(app, work) < n {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Whether the tests run as root (some helpers then give up privileges, or need none).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// A TCP port on 127.0.0.1 free at the time of asking, for a server the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Until something accepts connections at `addr` (a server the test started: `what`), for at
/// most 10 s.
pub async fn until_listening(addr: std::net::SocketAddr, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "{what} did not start");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// [`TestApp::snapshot`] of the service at `base` (`http://host:port`), for a node the test
/// runs as a process of its own.
pub async fn snapshot_at(http: &reqwest::Client, base: &str) -> Vec<(String, serde_json::Value)> {
    let get = |path: String| async move {
        let res = http.get(format!("{base}{path}")).send().await;
        let res = res.expect("HTTP request");
        res.json::<serde_json::Value>().await.expect("a JSON body")
    };
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            Some(t) => format!("/retainedMessage?maxResults=200&nextToken={t}"),
            None => "/retainedMessage?maxResults=200".to_owned(),
        };
        let page = get(path).await;
        for item in page["retainedTopics"].as_array().unwrap() {
            let topic = item["topic"].as_str().unwrap().to_owned();
            let full = get(format!("/retainedMessage/{}", encode(&topic))).await;
            out.push((topic, full));
        }
        match page["nextToken"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => return out,
        }
    }
}
