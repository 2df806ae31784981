//! A stalled database loses no acknowledged write and leaves no node's cache disagreeing with
//! it. A write batch that the service gave up on (503 at its deadline) may still be running in
//! the database, here waiting for row locks that an operator's session holds. It must never
//! commit over a newer acknowledged write to the same topic, nor bring back a deleted message:
//! on this node, whose next batches run on fresh connections, nor on another node sharing the
//! database. And the node's read cache must serve what the database holds.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    Backend, FreshDb, TestApp, execute_sql, fresh_db, spawn_app_with, test_config, topic,
};
use retaind::store::{Clock, MessageProperties, Qos, RetainedMessage, Store, StoreOptions, Write};
use sqlx::{Connection, Executor};

const STORE_TIMEOUT: Duration = Duration::from_secs(1);

/// An operator's session holding row locks on some retained messages, as `SELECT ... FOR
/// UPDATE` in psql does, until released.
struct Locker {
    conn: sqlx::PgConnection,
    pid: i32,
}

impl Locker {
    async fn lock(url: &str, topics: &[&str]) -> Self {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.execute("BEGIN").await.unwrap();
        let locked: Vec<String> = sqlx::query_scalar(
            "SELECT topic FROM retained_messages WHERE topic = ANY($1) FOR UPDATE",
        )
        .bind(topics)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(locked.len(), topics.len(), "the rows to lock exist");
        Self { conn, pid }
    }

    /// The database sessions waiting for this one's locks.
    async fn waiters(&self, url: &str) -> Vec<i32> {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))")
            .bind(self.pid)
            .fetch_all(&mut conn)
            .await
            .unwrap()
    }

    async fn wait_for_waiters(&self, url: &str, at_least: usize) {
        let started = Instant::now();
        while self.waiters(url).await.len() < at_least {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no write started waiting for the locks"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Ends the session's transaction, then waits until every session that was waiting for
    /// its locks has finished what it was running (committed it, on a build without the fix).
    async fn release(mut self, url: &str) {
        let waiting = self.waiters(url).await;
        self.conn.execute("ROLLBACK").await.unwrap();
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let started = Instant::now();
        loop {
            let busy: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1) AND state = 'active'",
            )
            .bind(&waiting)
            .fetch_one(&mut conn)
            .await
            .unwrap();
            if busy == 0 {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The payload stored for `topic`, read straight from the database.
async fn in_database(url: &str, topic: &str) -> Option<String> {
    let sql = "SELECT payload FROM retained_messages WHERE topic = $1 AND NOT deleted";
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let payload: Option<Vec<u8>> = sqlx::query_scalar(sql)
        .bind(topic)
        .fetch_optional(&mut conn)
        .await
        .unwrap();
    payload.map(|p| String::from_utf8(p).unwrap())
}

/// The payload GetRetainedMessage returns for `topic`, as text.
async fn served(app: &TestApp, topic: &str) -> Option<String> {
    use base64::Engine;
    let res = app
        .get(&format!("/retainedMessage/{}", common::encode(topic)))
        .await;
    if res.status() == 404 {
        return None;
    }
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(body["payload"].as_str().unwrap())
        .unwrap();
    Some(String::from_utf8(raw).unwrap())
}

async fn post(app: &TestApp, topic: &str, body: &'static str) -> u16 {
    let path = format!("/topics/{}?retain=true&qos=1", common::encode(topic));
    app.publish(&path, body).await.status().as_u16()
}

async fn app_with_store_timeout(db: FreshDb) -> TestApp {
    let mut config = test_config(&db.url);
    config.store_timeout = STORE_TIMEOUT;
    spawn_app_with(db, config).await
}

/// Starts a retained publish in the background; resolves to its status.
fn post_in_background(
    app: &TestApp,
    topic: &str,
    body: &'static str,
) -> tokio::task::JoinHandle<u16> {
    let (http, url) = (
        app.http.clone(),
        app.url(&format!(
            "/topics/{}?retain=true&qos=1",
            common::encode(topic)
        )),
    );
    tokio::spawn(async move {
        http.post(url)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

/// Publishes until acknowledged, as a client retrying 503s would.
async fn post_until_acknowledged(app: &TestApp, topic: &str, body: &'static str) {
    for _ in 0..20 {
        if post(app, topic, body).await == 200 {
            return;
        }
    }
    panic!("{topic}={body} was never acknowledged");
}

/// The case reported: a batch stalled behind an operator's row locks, given up (503), must not
/// commit its older `c/t` over the newer one acknowledged meanwhile when the locks go; the
/// database, the node's cache and a restarted node all serve the newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_batch_never_overwrites_a_newer_acknowledged_write() {
    let app = app_with_store_timeout(fresh_db(Backend::Postgres).await).await;
    let url = app.db.url.clone();
    app.retain("a%2Fy", "y0").await;
    app.retain("b%2Fx", "x0").await;
    let locker = Locker::lock(&url, &["a/y", "b/x"]).await;

    // a/y keeps the write lane busy; b/x and c/t queue behind it and form the next batch,
    // which stalls on b/x.
    let a = post_in_background(&app, "a/y", "y1");
    locker.wait_for_waiters(&url, 1).await;
    let b = post_in_background(&app, "b/x", "x1");
    let c = post_in_background(&app, "c/t", "t1");
    assert_eq!(
        (a.await.unwrap(), b.await.unwrap(), c.await.unwrap()),
        (503, 503, 503)
    );
    post_until_acknowledged(&app, "c/t", "t2").await;

    locker.release(&url).await;
    assert_eq!(in_database(&url, "c/t").await.as_deref(), Some("t2"));
    assert!(app.store().cache_in_use());
    for t in ["a/y", "b/x", "c/t"] {
        assert_eq!(served(&app, t).await, in_database(&url, t).await, "{t}");
    }
    let db = app.stop().await;
    let restarted = app_with_store_timeout(db).await;
    assert_eq!(served(&restarted, "c/t").await.as_deref(), Some("t2"));
}

/// A batch given up at its deadline does not linger in the database: its session is ended at
/// once, while the locks it waited for are still held, so it can neither commit later nor hold
/// the locks it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_batch_is_stopped_in_the_database() {
    let app = app_with_store_timeout(fresh_db(Backend::Postgres).await).await;
    let url = app.db.url.clone();
    app.retain("a%2Fy", "y0").await;
    let locker = Locker::lock(&url, &["a/y"]).await;
    let a = post_in_background(&app, "a/y", "y1");
    locker.wait_for_waiters(&url, 1).await;
    assert_eq!(a.await.unwrap(), 503);
    let started = Instant::now();
    while !locker.waiters(&url).await.is_empty() {
        assert!(
            started.elapsed() < 3 * STORE_TIMEOUT,
            "the abandoned batch is still waiting in the database"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    locker.release(&url).await;
    assert_eq!(in_database(&url, "a/y").await.as_deref(), Some("y0"));
    assert_eq!(served(&app, "a/y").await.as_deref(), Some("y0"));
}

fn message(t: &str, payload: &'static str) -> RetainedMessage {
    RetainedMessage {
        topic: topic(t),
        payload: Bytes::from_static(payload.as_bytes()),
        qos: Qos::AtLeastOnce,
        properties: MessageProperties::default(),
        expires_at_ms: None,
        last_modified_ms: common::T0_MS,
        last_accessed_ms: common::T0_MS,
        revision: 0,
        writer: None,
    }
}

async fn node(url: &str) -> Store {
    Store::new(
        common::open_backend(url).await,
        Clock::manual(common::T0_MS),
        StoreOptions::default(),
    )
}

/// Two nodes: node A's batch, which started first, stalls on a lock; node B writes (or
/// deletes) `c` meanwhile. When A's batch goes through, `c` keeps B's write: A's was the older
/// one, and is acknowledged as having been replaced by B's. Both nodes then read B's.
async fn a_stalled_write_from_another_node_does_not_undo(b_write: Write, b_sees: Option<&str>) {
    let db = fresh_db(Backend::Postgres).await;
    let (node_a, node_b) = (node(&db.url).await, node(&db.url).await);
    node_a
        .write(Write::Put(message("a/lock", "0")))
        .await
        .unwrap();
    node_a
        .write(Write::Put(message("c", "before")))
        .await
        .unwrap();
    assert_eq!(
        node_a.get(topic("c")).await.unwrap().unwrap().payload,
        "before"
    );
    let locker = Locker::lock(&db.url, &["a/lock"]).await;

    let mut batch = node_a.batch();
    let lock_write = batch.add(Write::Put(message("a/lock", "A")), Default::default());
    let c_write = batch.add(Write::Put(message("c", "A")), Default::default());
    batch.submit().await;
    locker.wait_for_waiters(&db.url, 1).await;
    node_b.write(b_write).await.unwrap();
    locker.release(&db.url).await;
    lock_write.await.unwrap();
    c_write.await.unwrap();

    assert_eq!(in_database(&db.url, "c").await.as_deref(), b_sees);
    for n in [&node_a, &node_b] {
        let got = n.get(topic("c")).await.unwrap();
        assert_eq!(
            got.map(|m| m.payload),
            b_sees.map(|s| Bytes::from(s.to_owned()))
        );
    }
    assert_eq!(in_database(&db.url, "a/lock").await.as_deref(), Some("A"));
    assert_eq!(
        node_b.count(None).await.unwrap(),
        1 + u64::from(b_sees.is_some())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_write_from_another_node_does_not_overwrite_a_newer_one() {
    a_stalled_write_from_another_node_does_not_undo(Write::Put(message("c", "B")), Some("B")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_write_from_another_node_does_not_bring_back_a_deleted_message() {
    a_stalled_write_from_another_node_does_not_undo(Write::Delete(topic("c")), None).await;
}

/// The same stall on SQLite: another process holds the database's write lock (as an open
/// `sqlite3` shell in a write transaction would). Nothing given up commits later over a newer
/// acknowledged write, and the cache agrees with the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_batch_never_overwrites_a_newer_write_on_sqlite() {
    let app = app_with_store_timeout(fresh_db(Backend::Sqlite).await).await;
    let url = app.db.url.clone();
    app.retain("a%2Fy", "y0").await;
    let mut holder = sqlx::SqliteConnection::connect(&url).await.unwrap();
    holder.execute("BEGIN IMMEDIATE").await.unwrap();
    let a = post_in_background(&app, "a/y", "y1");
    tokio::time::sleep(STORE_TIMEOUT / 4).await; // let a/y's batch take the lane
    let b = post_in_background(&app, "b/x", "x1");
    let c = post_in_background(&app, "c/t", "t1");
    assert_eq!(
        (a.await.unwrap(), b.await.unwrap(), c.await.unwrap()),
        (503, 503, 503)
    );
    holder.execute("ROLLBACK").await.unwrap();
    post_until_acknowledged(&app, "c/t", "t2").await;
    drop(holder);

    let stored = |t: &'static str| {
        let url = url.clone();
        async move {
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            let payload: Option<Vec<u8>> = sqlx::query_scalar(
                "SELECT payload FROM retained_messages WHERE topic = ? AND NOT deleted",
            )
            .bind(t)
            .fetch_optional(&mut conn)
            .await
            .unwrap();
            payload.map(|p| String::from_utf8(p).unwrap())
        }
    };
    assert_eq!(stored("c/t").await.as_deref(), Some("t2"));
    for t in ["a/y", "b/x", "c/t"] {
        assert_eq!(served(&app, t).await, stored(t).await, "{t}");
    }
    let db = app.stop().await;
    let restarted = app_with_store_timeout(db).await;
    assert_eq!(served(&restarted, "c/t").await.as_deref(), Some("t2"));
}

/// A write the database refuses for its data fails alone: the others of its group commit,
/// whichever store. The database refuses a topic here through a constraint added by hand.
async fn a_refused_row_fails_alone(backend: Backend) {
    let db = fresh_db(backend).await;
    let store = node(&db.url).await;
    store
        .write(Write::Put(message("warm/up", "v")))
        .await
        .unwrap();
    let refuse = match backend {
        Backend::Postgres => {
            "ALTER TABLE retained_messages ADD CONSTRAINT no_poison CHECK (topic <> 'p/poison')"
        }
        Backend::Sqlite => {
            "CREATE TRIGGER no_poison BEFORE INSERT ON retained_messages
             WHEN NEW.topic = 'p/poison' BEGIN SELECT RAISE(ABORT, 'poison'); END"
        }
    };
    execute_sql(&db.url, refuse).await;
    let mut batch = store.batch();
    let mut answers = Vec::new();
    for i in 0..40 {
        let t = if i == 17 {
            "p/poison".to_owned()
        } else {
            format!("p/{i:02}")
        };
        answers.push((
            t.clone(),
            batch.add(Write::Put(message(&t, "v")), Default::default()),
        ));
    }
    batch.submit().await;
    for (t, answer) in answers {
        let got = answer.await;
        if t == "p/poison" {
            assert!(
                matches!(got, Err(retaind::store::Error::Refused(_))),
                "{got:?}"
            );
        } else {
            assert!(got.is_ok(), "{t}: {got:?}");
        }
    }
    assert_eq!(
        store.scan("p/", Some("p0"), None, 100).await.unwrap().len(),
        39
    );
    assert_eq!(store.get(topic("p/poison")).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_fails_alone_on_postgres() {
    a_refused_row_fails_alone(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_fails_alone_on_sqlite() {
    a_refused_row_fails_alone(Backend::Sqlite).await;
}

/// The sum of payload bytes is a scan of the table. While one caller's scan waits on a lock,
/// another caller gets the last sum at once instead of queueing behind it; the scan, once
/// free, gives the new sum.
#[tokio::test]
async fn a_slow_sum_of_payload_bytes_keeps_no_one_else_waiting() {
    let db = fresh_db(Backend::Postgres).await;
    let clock = Clock::manual(common::T0_MS);
    let store = Store::new(
        common::open_backend(&db.url).await,
        clock.clone(),
        StoreOptions::default(),
    );
    store
        .write(Write::Put(message("s/1", "12345")))
        .await
        .unwrap();
    assert_eq!(store.payload_bytes().await.unwrap(), 5);
    store
        .write(Write::Put(message("s/2", "123")))
        .await
        .unwrap();
    clock.advance(retaind::store::PAYLOAD_BYTES_MAX_AGE);

    let mut locker = sqlx::PgConnection::connect(&db.url).await.unwrap();
    locker.execute("BEGIN").await.unwrap();
    locker
        .execute("LOCK TABLE retained_messages IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let slow = tokio::spawn({
        let store = store.clone();
        async move { store.payload_bytes().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!slow.is_finished(), "the first sum waits on the lock");
    let started = Instant::now();
    let other = tokio::time::timeout(Duration::from_secs(1), store.payload_bytes())
        .await
        .expect("a second caller does not wait behind the scan");
    assert_eq!(other.unwrap(), 5, "the last sum");
    assert!(started.elapsed() < Duration::from_millis(500));

    locker.execute("ROLLBACK").await.unwrap();
    assert_eq!(slow.await.unwrap().unwrap(), 8);
    assert_eq!(store.payload_bytes().await.unwrap(), 8, "and it stands");
}
