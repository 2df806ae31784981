//! Persistent sessions across a restart of a single node (decision 024), on SQLite and on
//! Postgres: saved at a clean stop, taken up at the next start before any connection, resumed
//! with session present = 1, their subscriptions live again before their clients return, their
//! queues delivered in order and their unfinished QoS 1/2 exchanges finished, a Will still in
//! its delay published when due unless its client returns; a session that expired while the
//! node was stopped, or that this release cannot read, starts clean, alone.

mod common;

use std::time::{Duration, Instant};

use common::mqtt::raw::{Raw, RawPublish, build};
use common::process::Process;
use common::{Backend, T0_MS, TestApp, encode, query_i64, spawn_app};
use retaind::store::Clock;

const SESSION_EXPIRY: u8 = 0x11;
const WILL_DELAY: u8 = 0x18;
const PUBREL: u8 = 0x62;

fn persistent_v5(id: &str, clean: bool, expiry_secs: u32) -> Vec<u8> {
    let mut props = vec![SESSION_EXPIRY];
    props.extend(expiry_secs.to_be_bytes());
    build::connect(id, clean, 60, Some(&props))
}

/// MQTT 3.1.1, clean session 0.
fn persistent_311(id: &str) -> Vec<u8> {
    build::connect(id, false, 60, None)
}

async fn publish(app: &TestApp, topic: &str, qos: u8, payload: &'static str) {
    let res = app
        .publish(format!("/topics/{}?qos={qos}", encode(topic)), payload)
        .await;
    assert_eq!(res.status(), 200);
}

/// Stops `app` cleanly and starts it again on the same database, its clock `moved_ms` on.
async fn restart(app: TestApp, moved_ms: i64) -> TestApp {
    let db = app.stop().await;
    let config = common::test_config(&db.url);
    common::spawn_app_at(db, config, Clock::manual(T0_MS + moved_ms)).await
}

async fn saved_rows(app: &TestApp) -> i64 {
    query_i64(&app.db.url, "SELECT count(*) FROM saved_sessions").await
}

async fn subscribed(app: &TestApp, connect: &[u8], v5: bool, filter: &str, qos: u8) -> Raw {
    let (mut raw, ack) = Raw::connect(app, connect).await;
    assert_eq!(ack.body[0], 0, "no session present on a clean start");
    let props = v5.then_some(&[][..]);
    raw.send(&build::subscribe(1, filter, qos, props)).await;
    raw.expect(9).await;
    raw
}

/// Returns once the server has handled everything `raw` sent (PINGREQ, PINGRESP).
async fn handled(raw: &mut Raw) {
    raw.send(&[0xC0, 0x00]).await;
    raw.expect(13).await;
}

async fn next_publish(raw: &mut Raw, v5: bool) -> RawPublish {
    raw.expect(3).await.publish(v5)
}

async fn a_persistent_session_and_its_queue_survive_a_restart(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut v5 = subscribed(&app, &persistent_v5("keep5", true, 300), true, "r/#", 1).await;
    let mut v3 = subscribed(&app, &persistent_311("keep3"), false, "r/#", 1).await;
    // Ends with its connection: nothing of it may come back.
    subscribed(&app, &persistent_v5("brief", true, 0), true, "r/#", 1).await;
    publish(&app, "r/a", 1, "unacked").await;
    let first5 = next_publish(&mut v5, true).await;
    let first3 = next_publish(&mut v3, false).await;
    assert_eq!(first5.payload, b"unacked");
    assert_eq!(first3.payload, b"unacked");
    drop((v5, v3));
    for payload in ["q1", "q2"] {
        publish(&app, "r/a", 1, payload).await;
    }
    publish(&app, "r/a", 0, "qos0 offline").await;

    let app = restart(app, 0).await;
    assert_eq!(
        saved_rows(&app).await,
        0,
        "taken at start, not left for a later one"
    );
    // The subscriptions are live before their clients return.
    publish(&app, "r/b", 1, "while away").await;
    for (id, connect, v5, first) in [
        ("keep5", persistent_v5("keep5", false, 300), true, &first5),
        ("keep3", persistent_311("keep3"), false, &first3),
    ] {
        let (mut raw, ack) = Raw::connect(&app, &connect).await;
        assert_eq!(ack.body[0], 1, "{id}: session present after the restart");
        let again = next_publish(&mut raw, v5).await;
        assert_eq!(
            (again.payload.as_slice(), again.dup, again.pkid),
            (&b"unacked"[..], true, first.pkid),
            "{id}: the unacknowledged message resent with DUP under its packet id"
        );
        raw.send(&build::ack(0x40, again.pkid)).await;
        for want in ["q1", "q2", "while away"] {
            let p = next_publish(&mut raw, v5).await;
            assert_eq!(
                (String::from_utf8_lossy(&p.payload), p.dup, p.qos),
                (want.into(), false, 1),
                "{id}: the queue in order"
            );
            assert_ne!(
                p.pkid, first.pkid,
                "{id}: a new packet id while one is in flight"
            );
            raw.send(&build::ack(0x40, p.pkid)).await;
        }
        publish(&app, "r/c", 1, "live").await;
        let live = next_publish(&mut raw, v5).await;
        assert_eq!(live.payload, b"live", "{id}");
        raw.send(&build::ack(0x40, live.pkid)).await;
    }
    let (_, ack) = Raw::connect(&app, &persistent_v5("brief", false, 0)).await;
    assert_eq!(
        ack.body[0], 0,
        "a session that ended with its connection is not saved"
    );
}

/// What the node's offline sessions' queues hold (`retaind_mqtt_queue_memory_bytes`), and the
/// messages dropped for it.
async fn queue_memory(app: &TestApp) -> (f64, f64) {
    let page = app.get("/metrics").await.text().await.unwrap();
    let dropped = r#"retaind_mqtt_messages_dropped_total{reason="queue_memory"}"#;
    (
        common::metric_value(&page, "retaind_mqtt_queue_memory_bytes"),
        // A counter is on the page from its first count.
        if page.contains(dropped) {
            common::metric_value(&page, dropped)
        } else {
            0.0
        },
    )
}

/// Message `i` of a test: 16 KiB.
fn numbered(i: usize) -> String {
    format!("{i:04}").repeat(4 * 1024)
}

async fn send_numbered(app: &TestApp, i: usize) {
    let res = app.publish("/topics/m/x?qos=1", numbered(i)).await;
    assert_eq!(res.status(), 200);
}

/// A session taken up at the start is offline as any other: the queue it brought back, and
/// what it queues before its client returns, count towards `--mqtt-max-queue-memory-mib`.
async fn a_restored_sessions_queue_counts_towards_the_nodes_queue_memory(backend: Backend) {
    const PAYLOAD: usize = 16 * 1024;
    const LIMIT: f64 = (1 << 20) as f64;
    const BEFORE: usize = 10;
    const AFTER: usize = 100;
    let message = numbered;
    let limited = |url: &str| {
        let mut config = common::test_config(url);
        config.mqtt_max_queue_memory_mib = 1;
        config
    };
    let db = common::fresh_db(backend).await;
    let config = limited(&db.url);
    let app = common::spawn_app_with(db, config).await;
    drop(subscribed(&app, &persistent_311("away"), false, "m/#", 1).await);
    app.until_no_connections().await;
    for i in 0..BEFORE {
        send_numbered(&app, i).await;
    }
    let (held, _) = queue_memory(&app).await;
    assert!(
        held >= (BEFORE * PAYLOAD) as f64,
        "{held} held before the stop"
    );

    let db = app.stop().await;
    let config = limited(&db.url);
    let app = common::spawn_app_at(db, config, Clock::manual(T0_MS)).await;
    let (held, dropped) = queue_memory(&app).await;
    assert!(
        held >= (BEFORE * PAYLOAD) as f64,
        "{held} held after the start"
    );
    assert_eq!(dropped, 0.0);
    for i in BEFORE..BEFORE + AFTER {
        send_numbered(&app, i).await;
    }
    let (held, dropped) = queue_memory(&app).await;
    assert!(held <= LIMIT, "{held} held");
    assert!(held + (PAYLOAD + 1024) as f64 > LIMIT, "{held} held");
    assert!(dropped > 0.0);

    // Back: the oldest, in order, as many as were not dropped; then nothing is counted.
    let (mut raw, ack) = Raw::connect(&app, &persistent_311("away")).await;
    assert_eq!(ack.body[0], 1, "session present");
    let kept = BEFORE + AFTER - dropped as usize;
    for i in 0..kept {
        let p = next_publish(&mut raw, false).await;
        assert_eq!(p.payload, message(i).into_bytes(), "message {i} of {kept}");
        raw.send(&build::ack(0x40, p.pkid)).await;
    }
    handled(&mut raw).await;
    assert_eq!(
        queue_memory(&app).await.0,
        0.0,
        "a connected session is not counted"
    );
}

/// A session taken up at the start is its creator's from the start, not from its client's
/// return: its queue counts in that principal's share (`max_queue_memory_mib`), so what it
/// queues before its client returns stops at the share, the oldest kept.
#[tokio::test]
async fn a_restored_sessions_queue_counts_in_its_principals_share() {
    use rumqttc::QoS;
    const PAYLOAD: usize = 16 * 1024;
    const SHARE: f64 = (1 << 20) as f64;
    const SENT: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let principals = dir.path().join("auth.toml");
    std::fs::write(
        &principals,
        format!(
            "[[principals]]\nname = \"fleet\"\nmqtt_username = \"fleet\"\n\
             mqtt_password_hash = \"{}\"\nmax_queue_memory_mib = 1\n\
             [[principals.statements]]\neffect = \"Allow\"\nactions = [\"iot:*\"]\nresources = [\"*\"]\n",
            retaind::auth::hash_password("pw")
        ),
    )
    .unwrap();
    let configured = |url: &str| {
        let mut config = common::test_config(url);
        config.principals = Some(principals.clone());
        config
    };
    let options = |app: &TestApp, id: &str, clean: bool| {
        let mut o = common::mqtt::v3_options(app, id);
        o.set_clean_session(clean);
        o.set_credentials("fleet", "pw");
        o
    };
    let db = common::fresh_db(Backend::Sqlite).await;
    let config = configured(&db.url);
    let app = common::spawn_app_with(db, config).await;
    let (mut away, _) = common::mqtt::V3::connect(options(&app, "away", false)).await;
    away.subscribe("m/#", QoS::AtLeastOnce).await;
    away.disconnect().await;
    app.until_no_connections().await;

    let db = app.stop().await;
    let config = configured(&db.url);
    let app = common::spawn_app_at(db, config, Clock::manual(T0_MS)).await;
    let (mut publisher, _) = common::mqtt::V3::connect(options(&app, "pub", true)).await;
    for i in 0..SENT {
        publisher
            .publish("m/x", QoS::AtLeastOnce, false, numbered(i).as_bytes())
            .await;
    }
    let page = app.running.as_ref().unwrap().broker.metrics().render();
    let share = common::metric_value(
        &page,
        r#"retaind_mqtt_principal_queue_memory_bytes{principal="fleet"}"#,
    );
    assert!(
        share <= SHARE && share + (PAYLOAD + 2048) as f64 > SHARE,
        "{share}"
    );
    let dropped = common::metric_value(
        &page,
        r#"retaind_mqtt_messages_dropped_total{reason="principal_queue_memory"}"#,
    );
    assert!(dropped > 0.0, "{page}");

    // Back: the oldest, in order, as many as were not dropped.
    let (mut back, ack) = common::mqtt::V3::connect(options(&app, "away", false)).await;
    assert!(ack.session_present);
    for i in 0..SENT - dropped as usize {
        let p = back.next_publish().await;
        assert_eq!(p.payload, numbered(i).as_bytes(), "message {i}");
    }
    publisher
        .publish("m/x", QoS::AtLeastOnce, false, b"marker")
        .await;
    assert_eq!(&back.next_publish().await.payload[..], b"marker");
}

async fn unfinished_qos2_exchanges_are_finished_after_a_restart(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut sub = subscribed(&app, &persistent_v5("q2sub", true, 300), true, "x/#", 2).await;
    publish(&app, "x/out", 2, "released").await;
    let out = next_publish(&mut sub, true).await;
    sub.send(&build::ack(0x50, out.pkid)).await;
    assert_eq!(sub.expect(6).await.body[..2], out.pkid.to_be_bytes());
    // PUBCOMP never sent: the server awaits it across the restart.
    let (mut publisher, _) = Raw::connect(&app, &persistent_v5("q2pub", true, 300)).await;
    publisher
        .send(&build::publish(
            "x/in",
            2,
            false,
            false,
            7,
            Some(&[]),
            b"once",
        ))
        .await;
    assert_eq!(publisher.expect(5).await.body[..2], 7u16.to_be_bytes());
    let delivered = next_publish(&mut sub, true).await;
    assert_eq!(delivered.payload, b"once");
    sub.send(&build::ack(0x50, delivered.pkid)).await;
    sub.expect(6).await;
    sub.send(&build::ack(0x70, delivered.pkid)).await;
    handled(&mut sub).await;
    drop((sub, publisher));

    let app = restart(app, 0).await;
    let (mut sub, ack) = Raw::connect(&app, &persistent_v5("q2sub", false, 300)).await;
    assert_eq!(ack.body[0], 1);
    let rel = sub.expect(6).await;
    assert_eq!(
        (rel.first, &rel.body[..2]),
        (PUBREL, &out.pkid.to_be_bytes()[..]),
        "the PUBREL resent for the exchange the client had not completed"
    );
    sub.send(&build::ack(0x70, out.pkid)).await;
    // The publisher, resuming, sends its QoS 2 publish again: recognised, not delivered twice.
    let (mut publisher, ack) = Raw::connect(&app, &persistent_v5("q2pub", false, 300)).await;
    assert_eq!(ack.body[0], 1);
    publisher
        .send(&build::publish(
            "x/in",
            2,
            false,
            true,
            7,
            Some(&[]),
            b"once",
        ))
        .await;
    assert_eq!(publisher.expect(5).await.body[..2], 7u16.to_be_bytes());
    publisher.send(&build::ack(PUBREL, 7)).await;
    let comp = publisher.expect(7).await;
    assert_eq!(
        comp.ack_reason(),
        0,
        "PUBCOMP Success: the packet id was still known"
    );
    publish(&app, "x/marker", 1, "marker").await;
    let next = next_publish(&mut sub, true).await;
    assert_eq!(
        next.payload, b"marker",
        "the resent QoS 2 publish was delivered only once"
    );
}

async fn a_session_that_expired_while_the_node_was_stopped_starts_clean(backend: Backend) {
    let app = spawn_app(backend).await;
    let short = subscribed(&app, &persistent_v5("short", true, 60), true, "e/#", 1).await;
    let soon = subscribed(&app, &persistent_v5("soon", true, 62), true, "e/#", 1).await;
    let long = subscribed(&app, &persistent_v5("long", true, 600), true, "e/#", 1).await;
    drop((short, soon, long));
    publish(&app, "e/a", 1, "queued").await;
    let app = restart(app, 61_000).await;
    assert_eq!(saved_rows(&app).await, 0);
    let (_, ack) = Raw::connect(&app, &persistent_v5("short", false, 60)).await;
    assert_eq!(ack.body[0], 0, "expired while the node was stopped");
    // One second of its expiry was left at the start: it ends then, not later.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (_, ack) = Raw::connect(&app, &persistent_v5("soon", false, 62)).await;
    assert_eq!(ack.body[0], 0, "expired at its saved time after the start");
    let (mut long, ack) = Raw::connect(&app, &persistent_v5("long", false, 600)).await;
    assert_eq!(ack.body[0], 1, "still within its expiry");
    assert_eq!(next_publish(&mut long, true).await.payload, b"queued");
}

async fn a_lowered_session_expiry_maximum_holds_restored_sessions_from_the_start(backend: Backend) {
    let app = spawn_app(backend).await;
    drop(subscribed(&app, &persistent_v5("held", true, 600), true, "h/#", 1).await);
    drop(subscribed(&app, &persistent_311("held3"), false, "h/#", 1).await);
    let db = app.stop().await;
    let mut config = common::test_config(&db.url);
    config.mqtt_max_session_expiry = 1;
    let app = common::spawn_app_with(db, config).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for (id, connect) in [
        ("held", persistent_v5("held", false, 600)),
        ("held3", persistent_311("held3")),
    ] {
        let (_, ack) = Raw::connect(&app, &connect).await;
        assert_eq!(ack.body[0], 0, "{id}: ended a second after the start");
    }
}

async fn a_saved_session_this_release_cannot_read_is_dropped_alone(backend: Backend) {
    let app = spawn_app(backend).await;
    drop(subscribed(&app, &persistent_v5("good", true, 300), true, "g/#", 1).await);
    publish(&app, "g/a", 1, "kept").await;
    let db = app.stop().await;
    let sqlite = db.url.starts_with("sqlite:");
    let blob = |hex: &str| {
        if sqlite {
            format!("X'{hex}'")
        } else {
            format!("'\\x{hex}'::bytea")
        }
    };
    // A format this release does not know, and a known one that does not decode.
    common::execute_sql(
        &db.url,
        &format!(
            "INSERT INTO saved_sessions (client_id, creator, expires_at_ms, state)
             VALUES ('bad', NULL, NULL, {}), ('worse', NULL, NULL, {})",
            blob("02000102"),
            blob("01ffff")
        ),
    )
    .await;
    let config = common::test_config(&db.url);
    let app = common::spawn_app_with(db, config).await;
    assert_eq!(saved_rows(&app).await, 0);
    for id in ["bad", "worse"] {
        let (_, ack) = Raw::connect(&app, &persistent_v5(id, false, 300)).await;
        assert_eq!(ack.body[0], 0, "{id}: unreadable, so it starts clean");
    }
    let (mut good, ack) = Raw::connect(&app, &persistent_v5("good", false, 300)).await;
    assert_eq!(
        ack.body[0], 1,
        "the readable session is restored beside them"
    );
    assert_eq!(next_publish(&mut good, true).await.payload, b"kept");
}

/// A device with a persistent session (300 s) and a retained Will "offline" on `status/<id>`,
/// published `delay_secs` after its connection is lost.
fn device_with_delayed_will(id: &str, delay_secs: u32) -> Vec<u8> {
    let mut session = vec![SESSION_EXPIRY];
    session.extend(300u32.to_be_bytes());
    let mut will = vec![WILL_DELAY];
    will.extend(delay_secs.to_be_bytes());
    build::connect_with_will(
        id,
        true,
        60,
        Some(&session),
        build::Will {
            topic: &format!("status/{id}"),
            payload: b"offline",
            qos: 1,
            retain: true,
            props: &will,
        },
    )
}

async fn a_will_in_its_delay_at_the_stop_is_published_when_due_after_the_start(backend: Backend) {
    let app = spawn_app(backend).await;
    drop(Raw::connect(&app, &device_with_delayed_will("dev", 3)).await);
    app.until_no_connections().await;
    let db = app.stop().await;
    let config = common::test_config(&db.url);
    // Timed from before the start, which schedules the Will: 2 s from then at the earliest.
    let started = Instant::now();
    // A second of its delay passes while the node is stopped.
    let app = common::spawn_app_at(db, config, Clock::manual(T0_MS + 1_000)).await;
    assert_eq!(app.stored_payload("status/dev").await, None, "not due yet");
    let deadline = started + Duration::from_secs(10);
    while app.stored_payload("status/dev").await.is_none() {
        assert!(Instant::now() < deadline, "the Will was never published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1_800),
        "published {waited:?} after the start: before the 2 s left of its delay"
    );
    assert_eq!(app.stored_payload("status/dev").await.unwrap(), b"offline");
}

async fn a_will_in_its_delay_at_the_stop_is_dropped_when_its_client_returns(backend: Backend) {
    let app = spawn_app(backend).await;
    drop(Raw::connect(&app, &device_with_delayed_will("dev", 2)).await);
    app.until_no_connections().await;
    let app = restart(app, 0).await;
    let (_back, ack) = Raw::connect(&app, &persistent_v5("dev", false, 300)).await;
    assert_eq!(ack.body[0], 1);
    // A negative over time: past the 2 s delay, with a margin, no Will.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.stored_payload("status/dev").await, None);
}

async fn a_will_its_client_cancelled_by_returning_before_the_stop_is_not_saved(backend: Backend) {
    let app = spawn_app(backend).await;
    drop(Raw::connect(&app, &device_with_delayed_will("dev", 2)).await);
    app.until_no_connections().await;
    let (mut back, ack) = Raw::connect(&app, &persistent_v5("dev", false, 300)).await;
    assert_eq!(ack.body[0], 1);
    back.send(&build::disconnect_v5(0)).await;
    drop(back);
    app.until_no_connections().await;
    let app = restart(app, 0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.stored_payload("status/dev").await, None);
}

/// A start that cannot take the saved sessions in time (another session of the database
/// holds a row the second page would take) refuses to start, names why, and puts back what
/// the first page took: the next start finds every session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_cannot_take_the_saved_sessions_refuses_and_loses_none() {
    use sqlx::{Connection, Executor};
    let app = spawn_app(Backend::Postgres).await;
    // A page more than one: 64 sessions before "kept" in client id order.
    let ids: Vec<String> = (0..64).map(|i| format!("a-{i:02}")).collect();
    for id in ids.iter().map(String::as_str).chain(["kept"]) {
        drop(subscribed(&app, &persistent_v5(id, true, 300), true, "k/#", 1).await);
    }
    publish(&app, "k/a", 1, "queued").await;
    let db = app.stop().await;
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    holder
        .execute("BEGIN; SELECT * FROM saved_sessions WHERE client_id = 'kept' FOR UPDATE")
        .await
        .unwrap();
    let mut config = common::test_config(&db.url);
    config.store_timeout = Duration::from_secs(1);
    let refused = retaind::app::start(&config, Clock::manual(T0_MS))
        .await
        .err()
        .expect("a start that cannot take the saved sessions is refused");
    assert!(
        refused
            .to_string()
            .contains("cannot take up the persistent sessions saved at the last stop"),
        "{refused}"
    );
    holder.execute("COMMIT").await.unwrap();
    let app = common::spawn_app_with(db, config).await;
    for id in ids.iter().map(String::as_str).chain(["kept"]) {
        let (mut raw, ack) = Raw::connect(&app, &persistent_v5(id, false, 300)).await;
        assert_eq!(ack.body[0], 1, "{id}: the session waited for this start");
        assert_eq!(
            next_publish(&mut raw, true).await.payload,
            b"queued",
            "{id}"
        );
    }
}

/// A stop whose database has gone silent ends within its bounds: the save is given up at the
/// store timeout, and its sessions are lost (logged), not waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_whose_database_is_silent_ends_in_time_and_saves_nothing() {
    let (app, proxy) = common::proxy::app_behind_proxy(Duration::from_secs(1)).await;
    drop(subscribed(&app, &persistent_v5("lost", true, 300), true, "l/#", 1).await);
    app.until_no_connections().await;
    let url = app.db.url.clone();
    proxy.stall();
    let stopping = Instant::now();
    let db = app.stop().await;
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(10), "the stop took {took:?}");
    proxy.restore();
    assert_eq!(
        query_i64(&url, "SELECT count(*) FROM saved_sessions").await,
        0
    );
    let app = common::spawn_app_with(db, common::test_config(&url)).await;
    let (_, ack) = Raw::connect(&app, &persistent_v5("lost", false, 300)).await;
    assert_eq!(ack.body[0], 0, "not saved: its client starts clean");
}

/// Connects to a `retaind` process: the CONNACK's session-present flag.
async fn connect_to(process: &Process, connect: &[u8]) -> (Raw, u8) {
    let mut raw = Raw::open_addr(process.mqtt).await;
    raw.send(connect).await;
    let ack = raw.expect(2).await;
    assert_eq!(ack.body[1], 0, "CONNACK Success");
    (raw, ack.body[0])
}

async fn publish_to(process: &Process, topic: &str, payload: &'static str) {
    let res = reqwest::Client::new()
        .post(format!(
            "http://{}/topics/{}?qos=1",
            process.http,
            encode(topic)
        ))
        .body(payload)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// The binary as an operator runs it: SIGTERM saves the sessions, SIGKILL cannot.
async fn the_binary_keeps_sessions_across_sigterm_not_across_a_kill(backend: Backend) {
    let db = common::fresh_db(backend).await;
    let mut retaind = Process::start(&db.url, &[]).await;
    let (mut raw, present) = connect_to(&retaind, &persistent_311("device")).await;
    assert_eq!(present, 0);
    raw.send(&build::subscribe(1, "p/#", 1, None)).await;
    raw.expect(9).await;
    drop(raw);
    publish_to(&retaind, "p/a", "queued").await;

    retaind.terminate().await;
    let mut retaind = Process::start(&db.url, &[]).await;
    let (mut raw, present) = connect_to(&retaind, &persistent_311("device")).await;
    assert_eq!(present, 1, "resumed after SIGTERM and a start");
    let p = next_publish(&mut raw, false).await;
    assert_eq!(p.payload, b"queued");
    raw.send(&build::ack(0x40, p.pkid)).await;
    handled(&mut raw).await;
    drop(raw);

    retaind.kill().await;
    let retaind = Process::start(&db.url, &[]).await;
    let (_, present) = connect_to(&retaind, &persistent_311("device")).await;
    assert_eq!(
        present, 0,
        "killed: nothing saved, and the rows taken at the last start are gone"
    );
}

for_each_backend!(
    a_will_in_its_delay_at_the_stop_is_published_when_due_after_the_start,
    a_will_in_its_delay_at_the_stop_is_dropped_when_its_client_returns,
    a_will_its_client_cancelled_by_returning_before_the_stop_is_not_saved,
    the_binary_keeps_sessions_across_sigterm_not_across_a_kill,
    a_persistent_session_and_its_queue_survive_a_restart,
    unfinished_qos2_exchanges_are_finished_after_a_restart,
    a_session_that_expired_while_the_node_was_stopped_starts_clean,
    a_lowered_session_expiry_maximum_holds_restored_sessions_from_the_start,
    a_saved_session_this_release_cannot_read_is_dropped_alone,
    a_restored_sessions_queue_counts_towards_the_nodes_queue_memory,
);
