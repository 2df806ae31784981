//! `--mqtt-connect-rate-per-client-id`: how often one client id may connect. A CONNECT sooner
//! than its client id's turn waits for it (up to 2 s); one whose turn is further off is refused
//! with 0x9F (3.1.1: 0x03) and leaves the session as it was. Against the real server, over
//! real sockets.

mod common;

use std::time::{Duration, Instant};

use common::mqtt::raw::{Raw, RawPacket, build};
use common::{Backend, TestApp, fresh_db, spawn_app_with, test_config};

async fn app_with_rate(rate: f64) -> TestApp {
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.mqtt_connect_rate_per_client_id = rate;
    spawn_app_with(db, config).await
}

/// A counter of the app's metrics; 0 before anything counted it.
fn counted(app: &TestApp, series: &str) -> f64 {
    let page = app.running.as_ref().unwrap().broker.metrics().render();
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

const PACED: &str = "retaind_mqtt_connects_paced_total{rate=\"client_id\"}";
const REFUSED_FOR_RATE: &str = "retaind_mqtt_connects_refused_total{reason=\"client_id_rate\"}";

/// An MQTT 5 CONNECT asking for a session that outlives its connection by five minutes.
fn persistent_v5(id: &str) -> Vec<u8> {
    build::connect(id, false, 60, Some(&[0x11, 0, 0, 1, 0x2c]))
}

fn connack_code(ack: &RawPacket) -> u8 {
    ack.body[1]
}

fn session_present(ack: &RawPacket) -> bool {
    ack.body[0] & 1 == 1
}

#[tokio::test]
async fn a_client_id_connecting_again_before_its_turn_waits_for_it_and_others_do_not() {
    let app = app_with_rate(1.0).await;
    let first_sent = Instant::now();
    let (mut first, ack) = Raw::connect(&app, &build::connect("dev", true, 60, Some(&[]))).await;
    assert_eq!(connack_code(&ack), 0);
    first.send(&build::disconnect_v5(0)).await;
    first.until_closed().await;

    // Its token was taken when the server read the first CONNECT, after `first_sent`: the
    // next turn is at least a second after that.
    let (_second, ack) = Raw::connect(&app, &build::connect("dev", true, 60, None)).await;
    assert_eq!(ack.body, [0, 0]);
    let waited = first_sent.elapsed();
    assert!(waited >= Duration::from_secs(1), "let in after {waited:?}");
    assert_eq!(counted(&app, PACED), 1.0);

    // Other client ids have turns of their own.
    for id in ["other-1", "other-2", "other-3"] {
        let (_c, ack) = Raw::connect(&app, &build::connect(id, true, 60, None)).await;
        assert_eq!(ack.body, [0, 0]);
    }
    assert_eq!(counted(&app, PACED), 1.0);
    assert_eq!(counted(&app, REFUSED_FOR_RATE), 0.0);
}

/// Four CONNECTs with one client id at once, at one a second: the first is let in at once, two
/// wait their turns (1 s and 2 s), each taking the session over from the one before; the fourth
/// would wait 3 s and is refused, without touching the session the last one holds.
#[tokio::test]
async fn connects_with_one_client_id_at_once_are_let_in_in_turn_and_one_too_far_off_is_refused() {
    let app = app_with_rate(1.0).await;
    let (mut setup, ack) = Raw::connect(&app, &persistent_v5("twin")).await;
    assert_eq!(connack_code(&ack), 0);
    setup
        .send(&build::subscribe(1, "twin/#", 1, Some(&[])))
        .await;
    setup.expect(9).await;
    setup.send(&build::disconnect_v5(0)).await;
    setup.until_closed().await;
    // The turn the setup took comes back.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let started = Instant::now();
    let attempts = (0..4).map(|_| {
        let app = &app;
        async move {
            let (raw, ack) = Raw::connect(app, &persistent_v5("twin")).await;
            (raw, ack, started.elapsed())
        }
    });
    let mut results = futures_util::future::join_all(attempts).await;
    results.sort_by_key(|(_, _, at)| *at);
    let codes: Vec<u8> = results
        .iter()
        .map(|(_, ack, _)| connack_code(ack))
        .collect();
    assert_eq!(
        codes.iter().filter(|&&c| c == 0x9F).count(),
        1,
        "one refused with 0x9F Connection rate exceeded: {codes:?}"
    );
    let mut accepted: Vec<(Raw, Duration)> = Vec::new();
    for (mut raw, ack, at) in results {
        if connack_code(&ack) == 0x9F {
            assert!(raw.until_closed().await.is_empty());
        } else {
            assert_eq!(connack_code(&ack), 0);
            assert!(session_present(&ack), "each resumes the session");
            accepted.push((raw, at));
        }
    }
    let times: Vec<Duration> = accepted.iter().map(|(_, at)| *at).collect();
    assert!(
        times[1] >= Duration::from_secs(1) && times[2] >= Duration::from_secs(2),
        "let in at {times:?}"
    );
    assert_eq!(counted(&app, PACED), 2.0);
    assert_eq!(counted(&app, REFUSED_FOR_RATE), 1.0);

    // The two let in first were taken over (0x8E); the last holds the session, subscription
    // and all.
    let (mut holder, _) = accepted.pop().unwrap();
    for (mut taken_over, _) in accepted {
        let got = taken_over.until_closed().await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].disconnect_reason(), 0x8E);
    }
    let response = app.publish("/topics/twin/news?qos=1", "still here").await;
    assert_eq!(response.status(), 200);
    let publish = holder.expect(3).await.publish(true);
    assert_eq!(publish.topic, "twin/news");
    assert_eq!(publish.payload, b"still here");
}

/// At 0.25 a second, a client id's next turn is 4 s off: a CONNECT that soon is refused at
/// once (3.1.1: 0x03), and the persistent session keeps its subscription and what was queued
/// for it while it was away, which its client receives when its turn comes.
#[tokio::test]
async fn a_connect_too_far_from_its_turn_is_refused_and_the_session_loses_nothing() {
    let app = app_with_rate(0.25).await;
    let (mut device, ack) = Raw::connect(&app, &build::connect("slow", false, 60, None)).await;
    assert_eq!(ack.body, [0, 0]);
    device.send(&build::subscribe(1, "slow/#", 1, None)).await;
    device.expect(9).await;
    device.send(&build::packet(0xE0, &[])).await;
    device.until_closed().await;
    let left = Instant::now();

    let (mut refused, ack) = Raw::connect(&app, &build::connect("slow", false, 60, None)).await;
    assert_eq!(ack.body, [0, 0x03], "3.1.1 has no 0x9F: Server unavailable");
    assert!(refused.until_closed().await.is_empty());
    assert_eq!(counted(&app, REFUSED_FOR_RATE), 1.0);
    assert_eq!(counted(&app, PACED), 0.0);

    let response = app.publish("/topics/slow/queued?qos=1", "kept").await;
    assert_eq!(response.status(), 200);

    // The refused CONNECT took no turn: the next comes 4 s after the first, and a CONNECT
    // within 2 s of it waits for it.
    tokio::time::sleep(Duration::from_millis(2200).saturating_sub(left.elapsed())).await;
    let (mut back, ack) = Raw::connect(&app, &build::connect("slow", false, 60, None)).await;
    assert_eq!(ack.body, [1, 0], "session present");
    assert_eq!(counted(&app, PACED), 1.0);
    let publish = back.expect(3).await.publish(false);
    assert_eq!(publish.topic, "slow/queued");
    assert_eq!(publish.payload, b"kept");
}

#[tokio::test]
async fn without_a_rate_a_client_id_connects_as_often_as_it_likes() {
    let app = app_with_rate(0.0).await;
    for _ in 0..20 {
        let (mut c, ack) = Raw::connect(&app, &build::connect("eager", true, 60, None)).await;
        assert_eq!(ack.body, [0, 0]);
        c.send(&build::packet(0xE0, &[])).await;
        c.until_closed().await;
    }
    assert_eq!(counted(&app, PACED), 0.0);
    assert_eq!(counted(&app, REFUSED_FOR_RATE), 0.0);
}

/// A CONNECT waiting for its turn when the node begins to stop is answered at once, 0x88
/// Server unavailable: no new session now, and the stop does not wait out its turn.
#[tokio::test]
async fn a_connect_waiting_for_its_turn_is_refused_when_the_node_stops() {
    let app = app_with_rate(0.5).await;
    let (mut first, ack) = Raw::connect(&app, &build::connect("late", true, 60, None)).await;
    assert_eq!(ack.body, [0, 0]);
    first.send(&build::packet(0xE0, &[])).await;
    first.until_closed().await;
    let mut waiting = Raw::open(&app).await;
    waiting
        .send(&build::connect("late", true, 60, Some(&[])))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while counted(&app, PACED) < 1.0 {
        assert!(Instant::now() < deadline, "the CONNECT was not paced");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopping = tokio::spawn(app.stop());
    let ack = waiting.expect(2).await;
    assert_eq!(connack_code(&ack), 0x88);
    assert!(waiting.until_closed().await.is_empty());
    common::mqtt::within("the stop", stopping).await.unwrap();
}

/// Without principals, `--mqtt-connect-rate-per-principal` is the node's CONNECT rate, shared by
/// every client id.
#[tokio::test]
async fn without_principals_the_principal_rate_is_the_nodes_connect_rate() {
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.mqtt_connect_rate_per_principal = 1.0;
    let app = spawn_app_with(db, config).await;
    let attempts = (0..4).map(|i| {
        let app = &app;
        async move {
            let connect = build::connect(&format!("fleet-{i}"), true, 60, Some(&[]));
            Raw::connect(app, &connect).await
        }
    });
    let results = futures_util::future::join_all(attempts).await;
    let mut codes: Vec<u8> = results.iter().map(|(_, ack)| connack_code(ack)).collect();
    codes.sort_unstable();
    assert_eq!(codes, [0, 0, 0, 0x9F]);
    assert_eq!(
        counted(
            &app,
            "retaind_mqtt_connects_paced_total{rate=\"principal\"}"
        ),
        2.0
    );
    assert_eq!(
        counted(
            &app,
            "retaind_mqtt_connects_refused_total{reason=\"principal_rate\"}"
        ),
        1.0
    );
    assert_eq!(counted(&app, PACED), 0.0, "distinct client ids");
}
