//! A release started on a database that a later release has migrated further (decision 021):
//! it runs when the schema says releases as old as it may, and otherwise refuses to start,
//! saying which release to start, and leaves the database as it found it. The later release
//! is played by hand: a column added, its migration recorded as sqlx records one, and the
//! compatibility row set.

mod common;

use std::net::SocketAddr;

use base64::Engine;
use common::process::{Process, refused_start};
use common::{Backend, FreshDb, fresh_db};
use sqlx::Connection;

/// The migration of the later release.
const LATER: i64 = 9_000;

/// The database as SQL sees it, on either backend.
enum Db {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl Db {
    async fn connect(db: &FreshDb, backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                Self::Sqlite(sqlx::SqliteConnection::connect(&db.url).await.unwrap())
            }
            Backend::Postgres => {
                Self::Postgres(sqlx::PgConnection::connect(&db.url).await.unwrap())
            }
        }
    }

    async fn execute(&mut self, sql: &str) {
        let statement = || sqlx::raw_sql(sqlx::AssertSqlSafe(sql));
        match self {
            Self::Sqlite(c) => statement().execute(c).await.map(drop),
            Self::Postgres(c) => statement().execute(c).await.map(drop),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn number(&mut self, sql: &'static str) -> i64 {
        match self {
            Self::Sqlite(c) => sqlx::query_scalar(sql).fetch_one(c).await,
            Self::Postgres(c) => sqlx::query_scalar(sql).fetch_one(c).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Every stored topic with its payload, in topic order.
    async fn messages(&mut self) -> Vec<(String, Vec<u8>)> {
        const SQL: &str = "SELECT topic, payload FROM retained_messages ORDER BY topic";
        match self {
            Self::Sqlite(c) => sqlx::query_as(SQL).fetch_all(c).await,
            Self::Postgres(c) => sqlx::query_as(SQL).fetch_all(c).await,
        }
        .unwrap()
    }

    /// What a later release does to the schema: a column this release never touches, and its
    /// migration recorded. Returns the newest migration before it (this release's).
    async fn migrate_as_a_later_release(&mut self) -> i64 {
        let known = self
            .number("SELECT max(version) FROM _sqlx_migrations")
            .await;
        self.execute("ALTER TABLE retained_messages ADD COLUMN later_release_note TEXT")
            .await;
        match self {
            Self::Sqlite(_) => {
                self.execute(
                    "INSERT INTO _sqlx_migrations \
                     (version, description, success, checksum, execution_time) \
                     VALUES (9000, 'a later release', TRUE, x'00', 0)",
                )
                .await
            }
            Self::Postgres(_) => {
                self.execute(
                    "INSERT INTO _sqlx_migrations \
                     (version, description, success, checksum, execution_time) \
                     VALUES (9000, 'a later release', TRUE, '\\x00'::bytea, 0)",
                )
                .await
            }
        }
        known
    }

    async fn allow_releases_from(&mut self, migration: i64) {
        let sql = format!("UPDATE schema_compatibility SET oldest_release_migration = {migration}");
        self.execute(&sql).await;
    }

    /// Migrations recorded, with the newest.
    async fn migrations(&mut self) -> (i64, i64) {
        (
            self.number("SELECT count(*) FROM _sqlx_migrations").await,
            self.number("SELECT max(version) FROM _sqlx_migrations")
                .await,
        )
    }
}

async fn publish(http: SocketAddr, topic: &str, payload: &str) {
    let url = format!("http://{http}/topics/{topic}?retain=true&qos=1");
    let res = reqwest::Client::new()
        .post(url)
        .body(payload.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "publishing {topic}");
}

async fn stored(http: SocketAddr, topic: &str) -> String {
    let url = format!("http://{http}/retainedMessage/{topic}");
    let res = reqwest::get(url).await.unwrap();
    assert_eq!(res.status(), 200, "reading {topic}");
    let body: serde_json::Value = res.json().await.unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(body["payload"].as_str().unwrap())
        .unwrap();
    String::from_utf8(payload).unwrap()
}

/// A database this release made, with `config/a` stored through it.
async fn made_by_this_release(backend: Backend) -> (FreshDb, Db) {
    let db = fresh_db(backend).await;
    let mut server = Process::start(&db.url, &[]).await;
    publish(server.http, "config/a", "before").await;
    server.terminate().await;
    let conn = Db::connect(&db, backend).await;
    (db, conn)
}

async fn a_release_runs_on_the_schema_it_makes(backend: Backend) {
    let (_db, mut conn) = made_by_this_release(backend).await;
    let newest = conn
        .number("SELECT max(version) FROM _sqlx_migrations")
        .await;
    let oldest = conn
        .number("SELECT oldest_release_migration FROM schema_compatibility")
        .await;
    assert!(
        oldest <= newest,
        "the schema allows releases from migration {oldest}, past this release's {newest}"
    );
    // `--version` names it, for an operator deciding on a rollback.
    let version = std::process::Command::new(env!("CARGO_BIN_EXE_retaind"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    let name = match backend {
        Backend::Sqlite => "SQLite",
        Backend::Postgres => "Postgres",
    };
    let named = format!("{name} migration {newest}");
    assert!(version.contains(&named), "{named:?} not in {version:?}");
}

async fn a_release_runs_on_a_later_schema_that_allows_it(backend: Backend) {
    let (db, mut conn) = made_by_this_release(backend).await;
    let known = conn.migrate_as_a_later_release().await;
    conn.allow_releases_from(known).await;
    let before = conn.migrations().await;

    let mut server = Process::start(&db.url, &[]).await;
    assert_eq!(stored(server.http, "config/a").await, "before");
    publish(server.http, "config/b", "after").await;
    assert_eq!(stored(server.http, "config/b").await, "after");
    server.terminate().await;

    assert_eq!(conn.migrations().await, before, "nothing migrated");
    assert_eq!(before.1, LATER);
    assert_eq!(
        conn.messages().await,
        [
            ("config/a".to_owned(), b"before".to_vec()),
            ("config/b".to_owned(), b"after".to_vec())
        ]
    );
}

async fn a_release_refuses_a_later_schema_that_does_not_allow_it(backend: Backend) {
    let (db, mut conn) = made_by_this_release(backend).await;
    let known = conn.migrate_as_a_later_release().await;
    conn.allow_releases_from(known + 1).await;
    let before = (conn.migrations().await, conn.messages().await);

    let (status, printed) = refused_start(&db.url).await;
    assert!(!status.success(), "retaind started: {printed}");
    let wanted = [
        "newer release".to_owned(),
        format!("up to migration {LATER}"),
        format!("knows migrations up to {known}"),
        format!("migration {} or later", known + 1),
    ];
    for wanted in wanted {
        assert!(printed.contains(&wanted), "{wanted:?} not in {printed:?}");
    }
    assert_eq!((conn.migrations().await, conn.messages().await), before);
}

for_each_backend!(
    a_release_runs_on_the_schema_it_makes,
    a_release_runs_on_a_later_schema_that_allows_it,
    a_release_refuses_a_later_schema_that_does_not_allow_it,
);
