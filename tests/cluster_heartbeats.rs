//! Heartbeats between nodes (decision 014) when the database goes away: an outage that every
//! node sees buries nobody, whoever gets back first; a node the others took for dead, because
//! it alone could not reach the database, gives up what they adopted once it can, so that a
//! session lives on one node and a Will fires once.

mod common;

use std::time::{Duration, Instant};

use common::cluster_of as cluster;
use common::cluster_rows::{hold_session_queues, sessions_held, sessions_of};
use common::mqtt::raw::{Raw, build};
use common::mqtt::{Qos5, V5, p5, v5_options, within};
use common::nats::Nats;
use common::process::Process;
use common::proxy::{Mode, Proxy};
use common::{Backend, FreshDb, TestApp, fresh_db, spawn_app_with, test_config, topic};
use retaind::app::ServeConfig;
use retaind::cluster::Liveness;
use sqlx::Connection;

/// Longer than the 10 s after which the others take a silent node for dead, with a heartbeat
/// (2 s) to spare.
const PAST_DEAD: Duration = Duration::from_secs(13);

/// A node of the service on `nats` that reaches its database, `db`, directly.
async fn node(nats: &Nats, db: FreshDb) -> TestApp {
    node_with(nats, db, |_| {}).await
}

/// [`node`], with settings of the test's own.
async fn node_with(nats: &Nats, db: FreshDb, set: impl FnOnce(&mut ServeConfig)) -> TestApp {
    let mut config = test_config(&db.url.clone());
    config.cluster_url = Some(nats.url());
    set(&mut config);
    spawn_app_with(db, config).await
}

/// A node of the service on `nats` whose database, `db`, is reached through `proxy`.
async fn node_via(nats: &Nats, db: FreshDb, proxy: &Proxy) -> TestApp {
    let mut config = test_config(&common::postgres_url_via(&db.url, proxy.addr));
    config.cluster_url = Some(nats.url());
    config.store_timeout = Duration::from_secs(1);
    spawn_app_with(db, config).await
}

async fn until_live(nodes: &[&TestApp], n: usize) {
    within("every node to see the others' heartbeats", async {
        while nodes.iter().any(|a| cluster(a).live_nodes() < n) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn until_sends(app: &TestApp, t: &str) {
    let t = topic(t);
    within("the other nodes' interest to arrive", async {
        while cluster(app).in_doubt() || !cluster(app).sends(&t) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Waits until every node's heartbeat is newer than the database's clock now.
async fn until_every_heartbeat_after_now(db: &mut sqlx::PgConnection, nodes: i64) {
    let now: f64 = sqlx::query_scalar("SELECT extract(epoch FROM now())::float8")
        .fetch_one(&mut *db)
        .await
        .unwrap();
    within("every node's heartbeat written again", async {
        loop {
            let fresh: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM cluster_nodes WHERE extract(epoch FROM heartbeat_at) > $1",
            )
            .bind(now)
            .fetch_one(&mut *db)
            .await
            .unwrap();
            if fresh >= nodes {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// A client of `app` with a Will on `will/<id>`; also subscribed to every Will and to `hear`.
async fn watcher(app: &TestApp, id: &str, hear: &str) -> V5 {
    let mut options = v5_options(app, id);
    options.set_last_will(p5::LastWill::new(
        format!("will/{id}"),
        "gone",
        Qos5::AtLeastOnce,
        false,
        None,
    ));
    let (mut c, _) = V5::connect(options).await;
    c.subscribe("will/#", Qos5::AtLeastOnce).await;
    c.subscribe(hear, Qos5::AtLeastOnce).await;
    c
}

/// The database stops answering every node for longer than the dead time, then comes back:
/// no node is taken for dead, so no Will fires, no client is disconnected, and the nodes
/// still send each other what their subscribers want. Before, the first node back buried the
/// others: it fired their clients' Wills and stopped sending them anything.
#[tokio::test]
async fn a_database_outage_longer_than_the_dead_time_buries_no_node() {
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let proxy = Proxy::start(common::postgres_host_port(&db.url)).await;
    let direct = db.url.clone();
    let a = node_via(&nats, db, &proxy).await;
    let b = node_via(&nats, FreshDb::shared(&direct), &proxy).await;
    // Each node has a client with a Will, which hears every Will and the other node's topic.
    let mut on_a = watcher(&a, "on-a", "t/b").await;
    let mut on_b = watcher(&b, "on-b", "t/a").await;
    until_live(&[&a, &b], 2).await;
    until_sends(&a, "t/a").await;
    until_sends(&b, "t/b").await;

    proxy.fail(Mode::Refuse);
    tokio::time::sleep(PAST_DEAD).await;
    assert!(cluster(&a).stats().heartbeat_failures >= 3);
    assert!(cluster(&b).stats().heartbeat_failures >= 3);
    proxy.restore();
    let mut db = sqlx::PgConnection::connect(&direct).await.unwrap();
    until_every_heartbeat_after_now(&mut db, 2).await;
    // Two more passes each: a burial would have happened at the first.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let claims: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM cluster_clients WHERE client_id IN ('on-a', 'on-b')",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(claims, 2, "both connections keep their claims");
    assert_eq!(cluster(&a).live_nodes(), 2);
    assert_eq!(cluster(&b).live_nodes(), 2);
    on_a.publish("t/a", Qos5::AtLeastOnce, false, b"from a")
        .await;
    on_b.publish("t/b", Qos5::AtLeastOnce, false, b"from b")
        .await;
    let heard_on_b = on_b.next_publish().await;
    let heard_on_a = on_a.next_publish().await;
    assert_eq!(
        (&*heard_on_b.topic, &heard_on_b.payload[..]),
        (&b"t/a"[..], &b"from a"[..]),
        "B hears A's publish first: no Will, and A still sends to B"
    );
    assert_eq!(
        (&*heard_on_a.topic, &heard_on_a.payload[..]),
        (&b"t/b"[..], &b"from b"[..]),
        "A hears B's publish first: no Will, and B still sends to A"
    );
}

async fn node_rows(db: &mut sqlx::PgConnection) -> Vec<String> {
    sqlx::query_scalar("SELECT node FROM cluster_nodes ORDER BY node")
        .fetch_all(db)
        .await
        .unwrap()
}

/// Each node is judged by the dead time its heartbeat records (`--cluster-dead-after`), not
/// by the judge's own (here 2 s); a row without one (a release from before they were
/// recorded) by 10 s; and only by a node heard for at least as long itself.
#[tokio::test]
async fn each_node_is_judged_by_its_own_dead_time() {
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let url = db.url.clone();
    let a = node_with(&nats, db, |c| {
        c.cluster_dead_after = Liveness::new(Duration::from_secs(2)).unwrap();
    })
    .await;
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    let own: Option<i32> = sqlx::query_scalar("SELECT dead_after_ms FROM cluster_nodes")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(own, Some(2_000), "A records its own");
    // Heard for 3 s and more: A may judge a dead time of 3 s.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    // Silent 4 s: past 'brief's 3 s, within 'patient's 60 s and the 10 s of 'older'. Silent
    // 2 h: past 'unjudged's 1 h, which A has not been heard for.
    sqlx::query(
        "INSERT INTO cluster_nodes (node, heartbeat_at, frame_version, dead_after_ms) VALUES \
           ('brief', now() - interval '4 seconds', 3, 3000), \
           ('patient', now() - interval '4 seconds', 3, 60000), \
           ('older', now() - interval '2 seconds', NULL, NULL), \
           ('unjudged', now() - interval '2 hours', 3, 3600000)",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let inserted = std::time::Instant::now();
    within("'brief' buried", async {
        while node_rows(&mut db).await.contains(&"brief".to_owned()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // At A's next pass (a beat: 0.4 s); by the 10 s of A's release before, 6 s later.
    let buried = inserted.elapsed();
    assert!(
        buried < Duration::from_secs(4),
        "'brief' buried after {buried:?}"
    );
    // Two more of A's passes: each buries what it finds after writing its heartbeat.
    until_every_heartbeat_after_now(&mut db, 1).await;
    until_every_heartbeat_after_now(&mut db, 1).await;
    let mut left = node_rows(&mut db).await;
    left.retain(|n| n != common::cluster_of(&a).node());
    assert_eq!(left, ["older", "patient", "unjudged"]);
}

/// MQTT 5 CONNECT of a persistent session (expiry 300 s), keep alive 60 s.
fn persistent(id: &str, clean: bool) -> Vec<u8> {
    build::connect(id, clean, 60, Some(&[0x11, 0, 0, 1, 0x2C]))
}

/// A node alone loses the database for longer than the dead time: the other takes it for dead,
/// fires its client's Will and adopts its persistent session, which queues what is published
/// meanwhile. Once the node reaches the database again it finds itself taken for dead and
/// closes those connections as taken over, with no second Will; the client resumes the
/// adopted session, with what was queued once, and the node's subscriptions reach it again.
#[tokio::test]
async fn a_node_taken_for_dead_gives_up_what_the_others_adopted() {
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let direct = db.url.clone();
    let a = node(&nats, db).await;
    let proxy = Proxy::start(common::postgres_host_port(&direct)).await;
    let b = node_via(&nats, FreshDb::shared(&direct), &proxy).await;

    let (mut phone, ack) = Raw::connect(&b, &persistent("phone", true)).await;
    assert_eq!(ack.body[0], 0);
    phone
        .send(&build::subscribe(1, "inbox/#", 1, Some(&[])))
        .await;
    phone.expect(9).await;
    let mut sensor = sensor_on(b.mqtt_addr).await;
    let (mut watcher, _) = V5::connect(v5_options(&a, "watcher")).await;
    watcher.subscribe("will/#", Qos5::AtLeastOnce).await;
    until_live(&[&a, &b], 2).await;
    until_sends(&a, "inbox/1").await;

    proxy.fail(Mode::Refuse);
    // Past the helpers' 10 s deadline: B is dead 10 s after its last heartbeat.
    let will = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match watcher.events.poll().await {
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::Publish(p))) => return p,
                Ok(_) => {}
                Err(e) => panic!("the watcher's connection failed: {e}"),
            }
        }
    })
    .await
    .expect("the Will of B's client, once A takes B for dead");
    assert_eq!(
        (&*will.topic, &will.payload[..]),
        (&b"will/sensor"[..], &b"gone"[..])
    );
    // A holds the session now and queues for it; B's subscription no longer gets anything.
    within("A to stop sending to B", async {
        while cluster(&a).sends(&topic("inbox/1")) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    watcher
        .publish("inbox/1", Qos5::AtLeastOnce, false, b"while away")
        .await;
    let mut db = sqlx::PgConnection::connect(&direct).await.unwrap();
    within("the message to be queued for the adopted session", async {
        loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM cluster_session_queue WHERE client_id = 'phone'",
            )
            .fetch_one(&mut db)
            .await
            .unwrap();
            if n == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    proxy.restore();
    for (client, name) in [(&mut phone, "phone"), (&mut sensor, "sensor")] {
        let said = within("B to close the connection whose session A adopted", async {
            client.until_closed().await
        })
        .await;
        assert_eq!(said.len(), 1, "{name}: {said:?}");
        assert_eq!(said[0].kind(), 14, "{name}: DISCONNECT, got {said:?}");
        assert_eq!(
            said[0].disconnect_reason(),
            0x8E,
            "{name}: session taken over"
        );
    }
    let page = b.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        common::metric_value(&page, "retaind_cluster_taken_for_dead_total"),
        1.0
    );
    let (mut phone, ack) = Raw::connect(&b, &persistent("phone", false)).await;
    assert_eq!(ack.body[0], 1, "the adopted session is resumed");
    let publish = within("the queued message", phone.expect(3))
        .await
        .publish(true);
    assert_eq!(publish.payload, b"while away");
    phone.send(&build::ack(0x40, publish.pkid)).await;
    phone.send(&[0xC0, 0]).await;
    assert_eq!(
        within("PINGRESP", phone.expect(13)).await.kind(),
        13,
        "the queued message came once"
    );
    // B's interest is back: A sends to it, and B's subscriber gets it.
    until_sends(&a, "inbox/1").await;
    watcher
        .publish("inbox/1", Qos5::AtLeastOnce, false, b"after")
        .await;
    let publish = within("a live message", phone.expect(3))
        .await
        .publish(true);
    assert_eq!(publish.payload, b"after");
    watcher
        .nothing_more_before_marker(
            "will/marker",
            "the Will fired once: B closed its connection without it",
        )
        .await;
}

/// The others took B for dead as a burial does it (its heartbeat row and its interest keys
/// deleted) while B's clients kept their claims: B finds its row gone at its next heartbeat,
/// puts its keys back, so that A sends to it again, and keeps the connections that are still
/// its own. The heartbeat that finds the row gone does not finish (here the row's key is held
/// by a transaction; in life, an answer lost): the next one, which finds the row, still tells.
#[tokio::test]
async fn a_node_taken_for_dead_puts_its_interest_back_and_keeps_what_is_still_its_own() {
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let direct = db.url.clone();
    let prefix = test_config(&direct).cluster_prefix;
    let a = node(&nats, db).await;
    let proxy = Proxy::start(common::postgres_host_port(&direct)).await;
    let b = node_via(&nats, FreshDb::shared(&direct), &proxy).await;
    let (mut on_b, _) = V5::connect(v5_options(&b, "on-b")).await;
    on_b.subscribe("k/#", Qos5::AtLeastOnce).await;
    let (mut on_a, _) = V5::connect(v5_options(&a, "on-a")).await;
    until_live(&[&a, &b], 2).await;
    until_sends(&a, "k/1").await;

    // The burial, while B's database traffic is held: its row and its keys go.
    let node = cluster(&b).node().to_owned();
    proxy.pause();
    let mut db = sqlx::PgConnection::connect(&direct).await.unwrap();
    sqlx::query("DELETE FROM cluster_nodes WHERE node = $1")
        .bind(&node)
        .execute(&mut db)
        .await
        .unwrap();
    // A row for B that nobody sees until this transaction commits: B's heartbeat finds no
    // row, then waits to write its own, and is given up.
    let mut holder = sqlx::PgConnection::connect(&direct).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("INSERT INTO cluster_nodes (node) VALUES ($1)")
        .bind(&node)
        .execute(&mut holder)
        .await
        .unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let bucket = async_nats::jetstream::new(client)
        .get_key_value(format!("{prefix}-interest"))
        .await
        .unwrap();
    let keys: Vec<String> = {
        use futures_util::TryStreamExt;
        bucket.keys().await.unwrap().try_collect().await.unwrap()
    };
    let of_b: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with(&format!("{node}.")))
        .collect();
    assert!(!of_b.is_empty(), "{keys:?}");
    for key in of_b {
        bucket.delete(key).await.unwrap();
    }
    within("A to see B's keys gone", async {
        while cluster(&a).sends(&topic("k/1")) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let failures = cluster(&b).stats().heartbeat_failures;
    proxy.resume();
    within("B's heartbeat to be given up", async {
        while cluster(&b).stats().heartbeat_failures == failures {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();

    // B's next heartbeat finds a row, and B still knows it was gone.
    until_sends(&a, "k/1").await;
    on_a.publish("k/1", Qos5::AtLeastOnce, false, b"again")
        .await;
    let p = on_b.next_publish().await;
    assert_eq!(&p.payload[..], b"again", "B's client kept its connection");
    let claims: i64 =
        sqlx::query_scalar("SELECT count(*) FROM cluster_clients WHERE client_id = 'on-b'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(claims, 1);
}

/// After an outage of the database every heartbeat is old for a moment. A client that resumes
/// on A a session that B holds offline then: A asks B for it, as from any node that was not
/// taken for dead, and B lets its copy go. Before, a stale heartbeat made A take the session
/// as stored, and B went on holding a copy, and its subscriptions, for the session's life.
#[tokio::test]
async fn a_session_resumed_while_heartbeats_are_stale_is_asked_of_the_node_that_holds_it() {
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let direct = db.url.clone();
    let proxy_a = Proxy::start(common::postgres_host_port(&direct)).await;
    let proxy_b = Proxy::start(common::postgres_host_port(&direct)).await;
    let a = node_via(&nats, db, &proxy_a).await;
    let b = node_via(&nats, FreshDb::shared(&direct), &proxy_b).await;
    let (mut phone, _) = Raw::connect(&b, &persistent("phone", true)).await;
    phone
        .send(&build::subscribe(1, "inbox/#", 1, Some(&[])))
        .await;
    phone.expect(9).await;
    phone.send(&build::disconnect_v5(0)).await;
    assert!(phone.until_closed().await.is_empty());
    let mut db = sqlx::PgConnection::connect(&direct).await.unwrap();
    within("the session to be recorded offline", async {
        loop {
            let connected: Option<bool> = sqlx::query_scalar(
                "SELECT connected FROM cluster_sessions WHERE client_id = 'phone'",
            )
            .fetch_optional(&mut db)
            .await
            .unwrap();
            if connected == Some(false) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    until_live(&[&a, &b], 2).await;
    until_sends(&a, "inbox/1").await;

    proxy_a.fail(Mode::Refuse);
    proxy_b.fail(Mode::Refuse);
    tokio::time::sleep(PAST_DEAD).await;
    // A is back; B's heartbeat stays stale (B still cannot reach the database).
    proxy_a.restore();
    until_every_heartbeat_after_now(&mut db, 1).await;
    let stale: bool = sqlx::query_scalar(
        "SELECT bool_and(heartbeat_at < now() - interval '10 seconds') FROM cluster_nodes \
         WHERE node = $1",
    )
    .bind(cluster(&b).node())
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(stale, "B's heartbeat is older than the dead time");

    let (_phone, ack) = Raw::connect(&a, &persistent("phone", false)).await;
    assert_eq!(ack.body[0], 1, "session present");
    within("B to let go of its copy, and of its interest", async {
        while cluster(&a).sends(&topic("inbox/1")) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Two nodes as processes of their own on `url`, started with `a` and `b` besides, once both
/// have written their heartbeats; and a connection to read their rows.
async fn two_processes(
    url: &str,
    a: &[&str],
    b: &[&str],
) -> (Process, Process, sqlx::PgConnection) {
    let (a, b) = (Process::start(url, a).await, Process::start(url, b).await);
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    within("both nodes' heartbeats", async {
        while node_rows(&mut admin).await.len() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    (a, b, admin)
}

/// Pauses `a` and `b` together for `pause`, then resumes `a`, and `b` `lag` later.
async fn paused_together(a: &Process, b: &Process, pause: Duration, lag: Duration) {
    a.pause();
    b.pause();
    tokio::time::sleep(pause).await;
    a.resume();
    tokio::time::sleep(lag).await;
    b.resume();
}

/// Two nodes paused together (SIGSTOP: a suspended host, a hypervisor's stall) for longer than
/// their dead time, and resumed one after the other: the one resumed first finds the other's
/// heartbeat older than its dead time, but its own is as old, so it does not take the other for
/// dead; neither is buried, and no session or Will moves. Before, a pause was not silence: the
/// first node back buried the other at once.
#[tokio::test]
async fn nodes_paused_together_do_not_bury_each_other_when_they_resume() {
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let args = ["--cluster-url", &nats.url(), "--cluster-dead-after", "3s"];
    let (a, b, mut admin) = two_processes(&db.url, &args, &args).await;
    // A runs a pass or two alone: B's heartbeat is more than 6 s old, its dead time 3 s.
    paused_together(&a, &b, Duration::from_secs(6), Duration::from_secs(1)).await;
    // Past both dead times again, with a beat to spare.
    tokio::time::sleep(Duration::from_secs(4)).await;

    assert_eq!(node_rows(&mut admin).await.len(), 2, "both nodes alive");
    for (name, node) in [("A", &a), ("B", &b)] {
        let taken = metric(node.http, "retaind_cluster_taken_for_dead_total").await;
        assert_eq!(taken, 0.0, "{name} was taken for dead");
    }
}

/// The same with a judge whose own beat is long (the default dead time, a beat every 2 s)
/// and a pause too short for it to tell it was paused (5 s): B (3 s) is older than its dead
/// time when A resumes, but only by time A's own heartbeat was silent too, so A does not
/// bury it.
#[tokio::test]
async fn a_judge_paused_with_a_node_of_a_shorter_dead_time_does_not_bury_it() {
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let args = ["--cluster-url", &nats.url(), "--cluster-dead-after", "3s"];
    let (a, b, mut admin) = two_processes(&db.url, &["--cluster-url", &nats.url()], &args).await;
    // A must have been heard for B's dead time, or it would judge no one anyway.
    tokio::time::sleep(Duration::from_secs(4)).await;
    paused_together(&a, &b, Duration::from_secs(5), Duration::from_millis(500)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    assert_eq!(node_rows(&mut admin).await.len(), 2, "both nodes alive");
    let taken = metric(b.http, "retaind_cluster_taken_for_dead_total").await;
    assert_eq!(taken, 0.0, "B was taken for dead");
}

/// A node that waits for NATS at start for longer than its dead time has its first heartbeat
/// taken for dead's by the others (rightly: it is silent). It held nothing then, so once it
/// runs it is not "taken for dead": nothing to give up, nothing counted, no warning. Before,
/// its first pass said it had been.
#[tokio::test]
async fn a_node_buried_while_it_waited_for_nats_at_start_is_not_taken_for_dead() {
    let mut nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let direct = db.url.clone();
    let second = Liveness::new(Duration::from_secs(1)).unwrap();
    let _a = node_with(&nats, db, |c| c.cluster_dead_after = second).await;
    let mut admin = sqlx::PgConnection::connect(&direct).await.unwrap();
    // A heard for longer than B's dead time, so that it judges B.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    nats.stop().await;
    let url = nats.url();
    let starting = tokio::spawn(async move {
        let mut config = test_config(&direct);
        config.cluster_url = Some(url);
        config.cluster_dead_after = second;
        spawn_app_with(FreshDb::shared(&direct), config).await
    });
    within("B's first heartbeat, then its burial by A", async {
        while node_rows(&mut admin).await.len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        while node_rows(&mut admin).await.len() > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    nats.restart().await;
    let b = starting.await.unwrap();
    within("B's heartbeats", async {
        while node_rows(&mut admin).await.len() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // A few of B's passes (a beat of 0.2 s).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(cluster(&b).stats().taken_for_dead, 0);
}

/// A node that stops while it adopts a dead node's sessions (its adoption waiting on the
/// database) lets that adoption end before it writes back what its offline sessions hold: the
/// delayed Will of a session it adopted goes back into the session's row, for the node that
/// adopts it next. Before, the adoption could commit after the write-back: it cleared the
/// Will from the database and left it only in the memory of a node about to exit.
#[tokio::test]
async fn a_node_stopping_while_it_adopts_writes_the_adopted_delayed_wills_back() {
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let direct = db.url.clone();
    let a = node_with(&nats, db, |c| {
        c.store_timeout = Duration::from_secs(10);
        // A pass of 12 s: the adoption is not cut before the test lets it go.
        c.cluster_dead_after = Liveness::new(Duration::from_secs(20)).unwrap();
    })
    .await;
    let args = ["--cluster-url", &nats.url(), "--cluster-dead-after", "2s"];
    let mut b = Process::start(&direct, &args).await;
    let mut options = rumqttc::v5::MqttOptions::new("sensor", "127.0.0.1", b.mqtt.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_start(false);
    options.set_connect_properties(rumqttc::v5::mqttbytes::v5::ConnectProperties {
        session_expiry_interval: Some(300),
        ..Default::default()
    });
    options.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        "will/sensor",
        "gone",
        Qos5::AtLeastOnce,
        false,
        Some(common::mqtt::delayed_will(600)),
    ));
    let (_sensor, _) = V5::connect(options).await;
    let mut admin = sqlx::PgConnection::connect(&direct).await.unwrap();
    let will_kept = "SELECT count(*) FROM cluster_sessions \
                     WHERE client_id = 'sensor' AND will IS NOT NULL";
    assert_eq!(common::query_i64(&direct, will_kept).await, 1);

    let mut holder = hold_session_queues(&direct).await;
    b.kill().await;
    within("A's adoption of B's session to wait on the lock", async {
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock' \
                   AND query LIKE '%SKIP LOCKED%'",
            )
            .fetch_one(&mut admin)
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    let stopping = tokio::spawn(a.stop());
    // Long past the write-back of a node with nothing to wait for.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    let _db = stopping.await.unwrap();
    assert_eq!(
        common::query_i64(&direct, will_kept).await,
        1,
        "the adopted session's delayed Will is in its row again"
    );
}

/// A survivor whose adoptions wait on a database that does not answer them (here, a lock held
/// on the sessions' queues) still writes its heartbeat within its dead time: an adoption still
/// running at the end of a pass is given up, to be tried again at the next. Before, the last
/// adoption of a pass could wait out the store timeout in the heartbeat's loop, and a node
/// whose dead time was shorter than that was taken for dead by the others while it adopted.
#[tokio::test]
async fn a_node_adopting_from_a_stalled_database_is_still_heard_within_its_dead_time() {
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let direct = db.url.clone();
    let a = node_with(&nats, db, |c| {
        c.store_timeout = Duration::from_secs(10);
        c.cluster_dead_after = Liveness::new(Duration::from_secs(5)).unwrap();
    })
    .await;
    let node = cluster(&a).node().to_owned();
    let mut admin = sqlx::PgConnection::connect(&direct).await.unwrap();
    let mut holder = hold_session_queues(&direct).await;
    sessions_of(&mut admin, "gone", 10).await;

    // Longer than an adoption waiting out the store timeout (the database gives its statement
    // up at 9 s) and the beat after it.
    let mut oldest: f64 = 0.0;
    let until = Instant::now() + Duration::from_secs(11);
    while Instant::now() < until {
        let age: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM now() - heartbeat_at)::float8 FROM cluster_nodes \
             WHERE node = $1",
        )
        .bind(&node)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        oldest = oldest.max(age);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("A's heartbeat at most {oldest:.2} s old while its adoptions waited");
    let adopted = sessions_held(&mut admin, &node).await;
    assert_eq!(adopted, 0, "the adoptions waited on the lock");
    // A pass of 3 s at most (three fifths of the dead time) and a beat of 1 s: 4 s.
    assert!(
        oldest < 5.0,
        "A's heartbeat was {oldest:.2} s old; its dead time is 5 s"
    );

    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    within("the sessions adopted once the database answers", async {
        while sessions_held(&mut admin, &node).await < 10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// A node that is gone held a hundred thousand sessions: a survivor adopts them all, in steps
/// that each fit the database timeout. Adopted in one statement, they took longer than the
/// timeout, which gave the statement up, and the next pass tried again, for ever.
#[tokio::test]
async fn a_hundred_thousand_sessions_of_a_node_that_is_gone_are_all_adopted() {
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let direct = db.url.clone();
    let a = node_with(&nats, db, |c| c.store_timeout = Duration::from_secs(1)).await;
    // Once the node has made the schema.
    let mut admin = sqlx::PgConnection::connect(&direct).await.unwrap();
    sessions_of(&mut admin, "gone", 100_000).await;
    let node = cluster(&a).node().to_owned();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM cluster_sessions WHERE node <> $1")
                    .bind(&node)
                    .fetch_one(&mut admin)
                    .await
                    .unwrap();
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("every session adopted");
    let broker = &a.running.as_ref().unwrap().broker;
    within("the broker to hold them", async {
        while broker.sessions_held() < 100_000 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(broker.sessions_held(), 100_000);
}

/// Rows of `cluster_sessions` Postgres has read so far, by any scan.
async fn session_rows_read(db: &mut sqlx::PgConnection) -> i64 {
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *db)
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT t.seq_tup_read + (SELECT coalesce(sum(i.idx_tup_read), 0)::int8 \
                                  FROM pg_stat_user_indexes i WHERE i.relid = t.relid) \
         FROM pg_stat_user_tables t WHERE t.relid = 'cluster_sessions'::regclass",
    )
    .fetch_one(&mut *db)
    .await
    .unwrap()
}

/// Each heartbeat pass looks for sessions of nodes that are gone. With a hundred thousand
/// sessions of live nodes, the passes of several seconds read a few rows, not the table: it
/// was read whole at every pass, every 2 s on every node.
#[tokio::test]
async fn heartbeats_do_not_read_every_session_to_find_those_of_nodes_that_are_gone() {
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let direct = db.url.clone();
    let a = node(&nats, db).await;
    let mut admin = sqlx::PgConnection::connect(&direct).await.unwrap();
    sessions_of(&mut admin, cluster(&a).node(), 100_000).await;
    // Postgres' counters reach the view when a backend flushes them (within a second or so
    // of its going idle); the passes run every 2 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = session_rows_read(&mut admin).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let read = session_rows_read(&mut admin).await - before;
    assert!(read < 1_000, "{read} rows read in 8 s of heartbeats");
}

/// A burst of CONNECTs whose claims wait on the database holds every connection of the
/// cluster's pool; the heartbeats have their own, so the node is not taken for dead for it.
/// Sharing the pool, they waited behind the claims past the 10 s after which the others take a
/// silent node for dead.
#[tokio::test]
async fn heartbeats_go_on_while_connects_hold_every_pooled_database_connection() {
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let direct = db.url.clone();
    // Claims wait on the lock below for most of this, instead of failing at once.
    let a = node_with(&nats, db, |c| c.store_timeout = Duration::from_secs(30)).await;
    let mut locker = sqlx::PgConnection::connect(&direct).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE cluster_clients IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    let addr = a.mqtt_addr;
    let connects: Vec<_> = (0..12)
        .map(|i| {
            tokio::spawn(async move {
                let mut raw = Raw::open_addr(addr).await;
                raw.send(&build::connect(&format!("burst{i}"), true, 60, None))
                    .await;
                // Past the helpers' deadline: the answer comes once the lock goes.
                let answered = raw.stream().readable();
                tokio::time::timeout(Duration::from_secs(60), answered)
                    .await
                    .unwrap()
                    .unwrap();
                raw.recv().await
            })
        })
        .collect();

    let mut db = sqlx::PgConnection::connect(&direct).await.unwrap();
    tokio::time::sleep(PAST_DEAD).await;
    let age: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - heartbeat_at)::float8 FROM cluster_nodes \
         WHERE node = $1",
    )
    .bind(cluster(&a).node())
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(age < 5.0, "the heartbeat is {age} s old");
    assert_eq!(cluster(&a).stats().heartbeat_failures, 0);

    sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
    for connect in connects {
        let ack = within("a CONNACK", connect)
            .await
            .unwrap()
            .expect("a CONNACK");
        assert_eq!(ack.kind(), 2);
    }
}

/// The value of `name` on the metrics page of the node serving HTTP at `http`.
async fn metric(http: std::net::SocketAddr, name: &str) -> f64 {
    let page = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    common::metric_value(&page, name)
}

/// A client of B leaves while B cannot reach the database: B publishes its Will, and records
/// the end of its connection once the database is back. Before, the row stayed "connected",
/// and whichever node took up B's sessions later, even after B stopped cleanly, published the
/// Will a second time.
#[tokio::test]
async fn the_end_of_a_connection_during_an_outage_is_recorded_once_the_database_is_back() {
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let direct = db.url.clone();
    let a = node(&nats, db).await;
    let proxy = Proxy::start(common::postgres_host_port(&direct)).await;
    let mut b = common::process::Process::start(
        &common::postgres_url_via(&direct, proxy.addr),
        &["--cluster-url", &nats.url(), "--store-timeout", "1s"],
    )
    .await;
    let (mut watcher, _) = V5::connect(v5_options(&a, "watcher")).await;
    watcher.subscribe("will/#", Qos5::AtLeastOnce).await;
    until_live(&[&a], 2).await;
    let sensor = sensor_on(b.mqtt).await;
    let mut db = sqlx::PgConnection::connect(&direct).await.unwrap();
    let row = "SELECT count(*) FROM cluster_sessions WHERE client_id = 'sensor'";
    let rows: i64 = sqlx::query_scalar(row).fetch_one(&mut db).await.unwrap();
    assert_eq!(rows, 1, "the connection's Will is in its row");

    proxy.fail(Mode::Refuse);
    drop(sensor);
    let first = watcher.next_publish().await;
    assert_eq!(
        (&*first.topic, &first.payload[..]),
        (&b"will/sensor"[..], &b"gone"[..])
    );
    // B's record of the end fails meanwhile (its database timeout is 1 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows: i64 = sqlx::query_scalar(row).fetch_one(&mut db).await.unwrap();
    assert_eq!(rows, 1, "not recorded while the database is away");
    let unrecorded = "retaind_cluster_unrecorded_connection_ends";
    assert_eq!(metric(b.http, unrecorded).await, 1.0);
    proxy.restore();
    within("B to record the end of the connection", async {
        while sqlx::query_scalar::<_, i64>(row)
            .fetch_one(&mut db)
            .await
            .unwrap()
            > 0
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(metric(b.http, unrecorded).await, 0.0);

    // B stops; A takes up what B held, and publishes no Will for the client that left.
    b.terminate().await;
    within("A to see B gone", async {
        while cluster(&a).live_nodes() > 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    watcher
        .nothing_more_before_marker("will/marker", "the Will came once")
        .await;
}

/// An MQTT 5 client `sensor` of the node at `mqtt`, with a Will on `will/sensor`, connected.
async fn sensor_on(mqtt: std::net::SocketAddr) -> Raw {
    let will = build::Will {
        topic: "will/sensor",
        payload: b"gone",
        qos: 1,
        retain: false,
        props: &[],
    };
    let mut sensor = Raw::open_addr(mqtt).await;
    sensor
        .send(&build::connect_with_will(
            "sensor",
            true,
            60,
            Some(&[]),
            will,
        ))
        .await;
    within("a CONNACK", sensor.expect(2)).await;
    sensor
}

/// Node B, a process to kill, holds a connected client with a Will (`sensor`) and a persistent
/// session subscribed to `inbox/#` (`phone`); node A reaches the database through a proxy
/// and has a client watching Wills.
struct Adoption {
    _nats: Nats,
    a: TestApp,
    b: Process,
    proxy: Proxy,
    watcher: V5,
    direct: String,
    _clients: [Raw; 2],
}

impl Adoption {
    async fn new() -> Self {
        let nats = Nats::start().await;
        let db = fresh_db(Backend::Postgres).await;
        let direct = db.url.clone();
        let proxy = Proxy::start(common::postgres_host_port(&direct)).await;
        let a = node_via(&nats, db, &proxy).await;
        let b = Process::start(&direct, &["--cluster-url", &nats.url()]).await;
        let mut phone = Raw::open_addr(b.mqtt).await;
        phone.send(&persistent("phone", true)).await;
        phone.expect(2).await;
        phone
            .send(&build::subscribe(1, "inbox/#", 1, Some(&[])))
            .await;
        phone.expect(9).await;
        let sensor = sensor_on(b.mqtt).await;
        let (mut watcher, _) = V5::connect(v5_options(&a, "watcher")).await;
        watcher.subscribe("will/#", Qos5::AtLeastOnce).await;
        until_live(&[&a], 2).await;
        Self {
            _nats: nats,
            a,
            b,
            proxy,
            watcher,
            direct,
            _clients: [phone, sensor],
        }
    }

    /// The first message the watcher gets, within `wait`.
    async fn will(&mut self, wait: Duration) -> p5::Publish {
        tokio::time::timeout(wait, async {
            loop {
                match self.watcher.events.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(p5::Packet::Publish(p))) => return p,
                    Ok(_) => {}
                    Err(e) => panic!("the watcher's connection failed: {e}"),
                }
            }
        })
        .await
        .expect("the Will of the killed node's client")
    }

    /// The Will came once, and A holds the phone's session: what is published for it while
    /// it is away is queued, and it resumes on A with it.
    async fn adopted_once(&mut self, will: p5::Publish) {
        assert_eq!(
            (&*will.topic, &will.payload[..]),
            (&b"will/sensor"[..], &b"gone"[..])
        );
        self.watcher
            .nothing_more_before_marker("will/marker", "the Will came once")
            .await;
        let mut db = sqlx::PgConnection::connect(&self.direct).await.unwrap();
        let holder: String =
            sqlx::query_scalar("SELECT node FROM cluster_sessions WHERE client_id = 'phone'")
                .fetch_one(&mut db)
                .await
                .unwrap();
        assert_eq!(holder, cluster(&self.a).node(), "A adopted the session");
        self.watcher
            .publish("inbox/1", Qos5::AtLeastOnce, false, b"while away")
            .await;
        let (mut phone, ack) = Raw::connect(&self.a, &persistent("phone", false)).await;
        assert_eq!(ack.body[0], 1, "the adopted session is resumed");
        let publish = within("the message queued while away", phone.expect(3))
            .await
            .publish(true);
        assert_eq!(publish.payload, b"while away");
    }
}

/// The survivor's COMMIT of an adoption reaches the database, which commits, but its answer
/// is lost (here held past the database timeout). The sessions are A's in the database: given
/// up as failed, they were held nowhere, their Wills never published and nothing queued for
/// them. A asks the database what became of the transaction and takes them up.
#[tokio::test]
async fn an_adoption_whose_commit_went_unanswered_is_taken_up_once_the_database_says_it_committed()
{
    let mut scene = Adoption::new().await;
    scene
        .proxy
        .pause_after_both(b"UPDATE cluster_sessions s SET node", b"COMMIT");
    scene.b.kill().await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while !scene.proxy.triggered() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("A to adopt B's sessions, once B is found dead");
    // Past A's database timeout (1 s), A gives the commit up and keeps the adoption in doubt
    // until its next heartbeat asks the database (2 s later).
    let in_doubt = "retaind_cluster_adoptions_in_doubt";
    within("the adoption in doubt in A's metrics", async {
        while metric(scene.a.http_addr, in_doubt).await != 1.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    scene.proxy.resume();
    let will = scene.will(Duration::from_secs(15)).await;
    scene.adopted_once(will).await;
    assert_eq!(metric(scene.a.http_addr, in_doubt).await, 0.0, "settled");
}

/// The survivor's COMMIT of an adoption is lost with its connection and never reaches the
/// database, which rolls the adoption back. A finds it did not commit and adopts the sessions
/// anew: the Will comes once, not once for the lost adoption and once for the new one.
#[tokio::test]
async fn an_adoption_whose_commit_was_lost_is_adopted_anew_and_its_will_comes_once() {
    let mut scene = Adoption::new().await;
    scene
        .proxy
        .cut_before_both(b"UPDATE cluster_sessions s SET node", b"COMMIT");
    scene.b.kill().await;
    let will = scene.will(Duration::from_secs(40)).await;
    assert!(scene.proxy.triggered(), "the adoption's COMMIT was cut");
    scene.adopted_once(will).await;
}
