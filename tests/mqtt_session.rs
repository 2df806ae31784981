//! MQTT sessions and Wills over real sockets against the real server: persistent sessions
//! (MQTT 5 session expiry, 3.1.1 clean session 0) with their offline queue and DUP resend, and
//! Will messages: on a dropped connection, discarded on a normal DISCONNECT, sent on 0x04,
//! retained, delayed (and dropped when the session resumes in time), and expiring from when
//! they are published.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::mqtt::raw::build::prop_u32;
use common::mqtt::raw::{Raw, build};
use common::mqtt::will_watcher as watcher;
use common::mqtt::{Qos5, V5, v5_options};
use common::{Backend, TestApp, encode, fresh_db, spawn_app, spawn_app_with, test_config};

async fn app() -> TestApp {
    spawn_app(Backend::Postgres).await
}

const SESSION_EXPIRY: u8 = 0x11;
const WILL_DELAY: u8 = 0x18;
const MESSAGE_EXPIRY: u8 = 0x02;

async fn marker(app: &TestApp, topic: &str) {
    let res = app
        .publish(format!("/topics/{}?qos=1", encode(topic)), "marker")
        .await;
    assert_eq!(res.status(), 200);
}

fn persistent_connect(id: &str, clean: bool) -> Vec<u8> {
    build::connect(id, clean, 60, Some(&prop_u32(SESSION_EXPIRY, 300)))
}

#[tokio::test]
async fn persistent_session_queues_qos1_offline_and_resends_unacked_with_dup() {
    let app = app().await;
    let (mut raw, ack) = Raw::connect(&app, &persistent_connect("ps", true)).await;
    assert_eq!(ack.body[0], 0, "session present on a clean start");
    raw.send(&build::subscribe(1, "ps/#", 1, Some(&[]))).await;
    raw.expect(9).await;
    let (mut c, _) = V5::connect(v5_options(&app, "p")).await;
    c.publish("ps/a", Qos5::AtLeastOnce, false, b"unacked")
        .await;
    let first = raw.expect(3).await.publish(true);
    assert_eq!(
        (first.payload.as_slice(), first.dup),
        (&b"unacked"[..], false)
    );
    drop(raw);
    c.publish("ps/a", Qos5::AtLeastOnce, false, b"q1").await;
    c.publish("ps/a", Qos5::AtMostOnce, false, b"qos0").await;
    c.publish("ps/a", Qos5::AtLeastOnce, false, b"q2").await;
    let (mut raw, ack) = Raw::connect(&app, &persistent_connect("ps", false)).await;
    assert_eq!(&ack.body[..2], &[1, 0], "session present");
    let again = raw.expect(3).await.publish(true);
    assert_eq!(
        (again.payload.as_slice(), again.dup, again.pkid),
        (&b"unacked"[..], true, first.pkid)
    );
    raw.send(&build::ack(0x40, again.pkid)).await;
    c.publish("ps/a", Qos5::AtLeastOnce, false, b"online").await;
    for want in [&b"q1"[..], b"q2", b"online"] {
        let p = raw.expect(3).await.publish(true);
        assert_eq!((p.payload.as_slice(), p.dup), (want, false));
        raw.send(&build::ack(0x40, p.pkid)).await;
    }
}

#[tokio::test]
async fn queued_messages_carry_the_remaining_expiry_and_expired_ones_are_dropped() {
    let app = app().await;
    let (mut raw, _) = Raw::connect(&app, &persistent_connect("px", true)).await;
    raw.send(&build::subscribe(1, "px", 1, Some(&[]))).await;
    raw.expect(9).await;
    raw.send(&build::disconnect_v5(0)).await;
    assert_eq!(raw.until_closed().await, vec![]);
    let (mut c, _) = V5::connect(v5_options(&app, "p")).await;
    for (payload, expiry) in [(&b"short"[..], 10), (b"long", 100)] {
        let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
            message_expiry_interval: Some(expiry),
            ..Default::default()
        };
        c.publish_with("px", Qos5::AtLeastOnce, false, payload, props)
            .await;
    }
    app.clock.advance(Duration::from_secs(30));
    let (mut raw, _) = Raw::connect(&app, &persistent_connect("px", false)).await;
    let p = raw.expect(3).await.publish(true);
    assert_eq!(p.payload, b"long", "the expired message was delivered");
    // Message Expiry Interval property (0x02): the 70 s that remain.
    assert_eq!(p.props, prop_u32(0x02, 70));
}

#[tokio::test]
async fn session_without_expiry_ends_with_the_connection() {
    let app = app().await;
    let (mut raw, _) = Raw::connect(&app, &build::connect("eph", true, 60, Some(&[]))).await;
    raw.send(&build::subscribe(1, "eph", 1, Some(&[]))).await;
    raw.expect(9).await;
    raw.send(&build::disconnect_v5(0)).await;
    assert_eq!(raw.until_closed().await, vec![]);
    let (_raw, ack) = Raw::connect(&app, &build::connect("eph", false, 60, Some(&[]))).await;
    assert_eq!(&ack.body[..2], &[0, 0], "no session to resume");
}

#[tokio::test]
async fn v3_persistent_session_keeps_subscriptions_and_queues_offline() {
    let app = app().await;
    let (mut raw, _) = Raw::connect(&app, &build::connect("p3", false, 60, None)).await;
    raw.send(&build::subscribe(1, "p3/#", 1, None)).await;
    raw.expect(9).await;
    raw.send(&[0xE0, 0x00]).await;
    assert_eq!(raw.until_closed().await, vec![]);
    let (mut c, _) = V5::connect(v5_options(&app, "p")).await;
    c.publish("p3/x", Qos5::AtLeastOnce, false, b"while away")
        .await;
    let (mut raw, ack) = Raw::connect(&app, &build::connect("p3", false, 60, None)).await;
    assert_eq!(ack.body, vec![0x01, 0x00]);
    assert_eq!(raw.expect(3).await.publish(false).payload, b"while away");
}

fn will_connect(id: &str, retain: bool, will_props: &[u8], connect_props: &[u8]) -> Vec<u8> {
    let will = build::Will {
        topic: "will/t",
        payload: b"bye",
        qos: 1,
        retain,
        props: will_props,
    };
    build::connect_with_will(id, true, 60, Some(connect_props), will)
}

#[tokio::test]
async fn will_is_published_when_the_connection_drops() {
    let app = app().await;
    let mut w = watcher(&app).await;
    let (raw, _) = Raw::connect(&app, &will_connect("w", false, &[], &[])).await;
    drop(raw);
    let p = w.next_publish().await;
    assert_eq!(
        (&p.topic[..], &p.payload[..]),
        (&b"will/t"[..], &b"bye"[..])
    );
}

#[tokio::test]
async fn normal_disconnect_discards_the_will() {
    let app = app().await;
    let mut w = watcher(&app).await;
    let (mut raw, _) = Raw::connect(&app, &will_connect("w", false, &[], &[])).await;
    raw.send(&build::disconnect_v5(0x00)).await;
    assert_eq!(raw.until_closed().await, vec![]);
    marker(&app, "will/t").await;
    assert_eq!(&w.next_publish().await.payload[..], b"marker");
}

#[tokio::test]
async fn disconnect_with_will_message_0x04_publishes_the_will() {
    let app = app().await;
    let mut w = watcher(&app).await;
    let (mut raw, _) = Raw::connect(&app, &will_connect("w", false, &[], &[])).await;
    raw.send(&build::disconnect_v5(0x04)).await;
    assert_eq!(raw.until_closed().await, vec![]);
    assert_eq!(&w.next_publish().await.payload[..], b"bye");
}

#[tokio::test]
async fn retained_will_is_stored_for_http_and_later_subscribers() {
    let app = app().await;
    let mut w = watcher(&app).await;
    let (raw, _) = Raw::connect(&app, &will_connect("w", true, &[], &[])).await;
    drop(raw);
    assert_eq!(&w.next_publish().await.payload[..], b"bye");
    let (mut late, _) = V5::connect(v5_options(&app, "late")).await;
    late.subscribe("will/t", Qos5::AtLeastOnce).await;
    let p = late.next_publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"bye"[..], true));
    let stored: serde_json::Value = app.get_json("/retainedMessage/will%2Ft").await;
    assert_eq!(stored["payload"], B64.encode("bye"));
}

#[tokio::test]
async fn a_wills_expiry_counts_from_when_it_is_published_not_from_connect() {
    let app = app().await;
    let mut w = watcher(&app).await;
    let (raw, _) = Raw::connect(
        &app,
        &will_connect("w", true, &prop_u32(MESSAGE_EXPIRY, 60), &[]),
    )
    .await;
    // Connected for longer than the Will's expiry interval.
    app.clock.advance(Duration::from_secs(120));
    drop(raw);
    let p = w.next_publish().await;
    assert_eq!(&p.payload[..], b"bye");
    let expiry = p.properties.and_then(|props| props.message_expiry_interval);
    assert_eq!(expiry, Some(60));
    let stored: serde_json::Value = app.get_json("/retainedMessage/will%2Ft").await;
    assert_eq!(stored["payload"], B64.encode("bye"));
}

#[tokio::test]
async fn will_delay_holds_the_will_back() {
    let app = app().await;
    let mut w = watcher(&app).await;
    let session = prop_u32(SESSION_EXPIRY, 300);
    let (raw, _) = Raw::connect(
        &app,
        &will_connect("w", false, &prop_u32(WILL_DELAY, 1), &session),
    )
    .await;
    let dropped = Instant::now();
    drop(raw);
    assert_eq!(&w.next_publish().await.payload[..], b"bye");
    assert!(
        dropped.elapsed() >= Duration::from_millis(900),
        "{:?}",
        dropped.elapsed()
    );
}

/// Client "w" connects with a persistent session and a Will delayed 2 s, then its connection
/// breaks: the Will waits out its delay.
async fn leave_with_a_will_delayed_2s(app: &TestApp) {
    let session = prop_u32(SESSION_EXPIRY, 300);
    let (raw, _) = Raw::connect(
        app,
        &will_connect("w", false, &prop_u32(WILL_DELAY, 2), &session),
    )
    .await;
    drop(raw);
}

#[tokio::test]
async fn will_delay_drops_the_will_when_the_session_resumes_in_time() {
    let app = app().await;
    let mut w = watcher(&app).await;
    leave_with_a_will_delayed_2s(&app).await;
    let (_back, ack) = Raw::connect(&app, &persistent_connect("w", false)).await;
    assert_eq!(ack.body[0], 1, "session present");
    // A negative over time: wait past the 2 s delay (plus margin) for a Will that must not come.
    let waited = tokio::time::timeout(Duration::from_secs(4), w.next_publish()).await;
    assert!(waited.is_err(), "the will was published: {waited:?}");
}

/// [MQTT-3.1.2-8]: the Will is not published when "a new Network Connection for the ClientID
/// is opened before the Will Delay Interval has elapsed", whatever its Clean Start; a clean
/// start also ends the old session, which 3.1.3.2.2 makes a reason to publish it, and
/// decision 006 ("Not changed") reads the normative statement as the one that holds.
#[tokio::test]
async fn will_delay_drops_the_will_when_the_client_id_connects_with_a_clean_start_in_time() {
    let app = app().await;
    let mut w = watcher(&app).await;
    leave_with_a_will_delayed_2s(&app).await;
    let (_back, ack) = Raw::connect(&app, &persistent_connect("w", true)).await;
    assert_eq!(ack.body[0], 0, "a clean start: no session present");
    let waited = tokio::time::timeout(Duration::from_secs(4), w.next_publish()).await;
    assert!(waited.is_err(), "the will was published: {waited:?}");
}

#[tokio::test]
async fn outbound_qos2_pubrel_is_resent_after_reconnect() {
    let app = app().await;
    let (mut raw, _) = Raw::connect(&app, &persistent_connect("q2", true)).await;
    raw.send(&build::subscribe(1, "q2", 2, Some(&[]))).await;
    raw.expect(9).await;
    let (mut c, _) = V5::connect(v5_options(&app, "p")).await;
    c.publish("q2", Qos5::ExactlyOnce, false, b"once").await;
    let p = raw.expect(3).await.publish(true);
    raw.send(&build::ack(0x50, p.pkid)).await;
    raw.expect(6).await;
    drop(raw); // before PUBCOMP
    let (mut raw, ack) = Raw::connect(&app, &persistent_connect("q2", false)).await;
    assert_eq!(ack.body[0], 1, "session present");
    // [MQTT-4.4.0-1] the PUBREL is resent, not the PUBLISH.
    let rel = raw.expect(6).await;
    assert_eq!(
        (rel.first, &rel.body[..2]),
        (0x62, &p.pkid.to_be_bytes()[..])
    );
    raw.send(&build::ack(0x70, p.pkid)).await;
    c.publish("q2", Qos5::ExactlyOnce, false, b"next").await;
    assert_eq!(raw.expect(3).await.publish(true).payload, b"next");
}

#[tokio::test]
async fn takeover_with_clean_start_zero_keeps_the_session() {
    let app = app().await;
    let (mut old, _) = Raw::connect(&app, &persistent_connect("keep", true)).await;
    old.send(&build::subscribe(1, "keep", 1, Some(&[]))).await;
    old.expect(9).await;
    let (mut new, ack) = Raw::connect(&app, &persistent_connect("keep", false)).await;
    assert_eq!(&ack.body[..2], &[1, 0], "session present");
    // Told why [MQTT-3.1.4-3], though the session it was attached to is now the new
    // connection's: before 2026-12-06 it read the new connection's default, 0x8B Server
    // shutting down, and a client would take the broker for going away.
    let got = old.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].disconnect_reason(), 0x8E);
    marker(&app, "keep").await;
    assert_eq!(new.expect(3).await.publish(true).payload, b"marker");
}

#[tokio::test]
async fn takeover_publishes_the_old_connections_will() {
    let app = app().await;
    let mut w = watcher(&app).await;
    let (mut old, _) = Raw::connect(&app, &will_connect("tw", false, &[], &[])).await;
    let (_new, _) = Raw::connect(&app, &build::connect("tw", true, 60, Some(&[]))).await;
    let got = old.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].disconnect_reason(), 0x8E);
    assert_eq!(&w.next_publish().await.payload[..], b"bye");
}

#[tokio::test]
async fn clean_start_discards_a_stored_session() {
    let app = app().await;
    let (mut raw, _) = Raw::connect(&app, &persistent_connect("cs", true)).await;
    raw.send(&build::subscribe(1, "cs", 1, Some(&[]))).await;
    raw.expect(9).await;
    drop(raw);
    let (mut c, _) = V5::connect(v5_options(&app, "p")).await;
    c.publish("cs", Qos5::AtLeastOnce, false, b"queued").await;
    let (mut raw, ack) = Raw::connect(&app, &persistent_connect("cs", true)).await;
    assert_eq!(ack.body[0], 0, "no session present after clean start");
    raw.send(&build::subscribe(2, "cs", 1, Some(&[]))).await;
    raw.expect(9).await;
    marker(&app, "cs").await;
    assert_eq!(raw.expect(3).await.publish(true).payload, b"marker");
}

#[tokio::test]
async fn session_ends_after_its_expiry_interval_publishing_a_longer_delayed_will() {
    let app = app().await;
    let mut w = watcher(&app).await;
    let session = prop_u32(SESSION_EXPIRY, 1);
    let will_delay = prop_u32(WILL_DELAY, 300);
    let (raw, _) = Raw::connect(&app, &will_connect("se", false, &will_delay, &session)).await;
    let dropped = Instant::now();
    drop(raw);
    // [MQTT-3.1.2-8] the Will goes out when the session ends, if that is before its delay.
    assert_eq!(&w.next_publish().await.payload[..], b"bye");
    assert!(
        dropped.elapsed() >= Duration::from_millis(900),
        "{:?}",
        dropped.elapsed()
    );
    let (_raw, ack) = Raw::connect(&app, &persistent_connect("se", false)).await;
    assert_eq!(ack.body[0], 0, "the session should have ended");
}

/// A session that its client took up again and left again ends at the expiry counted from
/// the last leaving, not at the one counted from the first.
#[tokio::test]
async fn a_session_taken_up_again_ends_at_its_new_expiry_not_its_first() {
    let app = app().await;
    let two_seconds = build::connect("again", false, 60, Some(&prop_u32(SESSION_EXPIRY, 2)));
    let (mut raw, _) = Raw::connect(&app, &two_seconds).await;
    raw.send(&build::disconnect_v5(0)).await;
    assert_eq!(raw.until_closed().await, vec![]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (mut raw, ack) = Raw::connect(&app, &two_seconds).await;
    assert_eq!(ack.body[0], 1, "session present");
    raw.send(&build::disconnect_v5(0)).await;
    assert_eq!(raw.until_closed().await, vec![]);
    // Past the first expiry (2 s after the first leaving), within the second.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (mut raw, ack) = Raw::connect(&app, &two_seconds).await;
    assert_eq!(ack.body[0], 1, "ended at the first expiry");
    raw.send(&build::disconnect_v5(0)).await;
    assert_eq!(raw.until_closed().await, vec![]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_raw, ack) = Raw::connect(&app, &two_seconds).await;
    assert_eq!(ack.body[0], 0, "the session should have ended");
}

/// A node with `--mqtt-max-session-expiry 1`.
async fn app_keeping_sessions_one_second() -> TestApp {
    let db = common::fresh_db(Backend::Postgres).await;
    let mut config = common::test_config(&db.url);
    config.mqtt_max_session_expiry = 1;
    common::spawn_app_with(db, config).await
}

/// The CONNACK's MQTT 5 Session Expiry Interval property, if it has one.
fn connack_session_expiry(body: &[u8]) -> Option<u32> {
    // Flags, reason, then the properties' length (one byte here) and the properties.
    let props = &body[3..3 + usize::from(body[2])];
    props
        .windows(5)
        .find(|w| w[0] == SESSION_EXPIRY)
        .map(|w| u32::from_be_bytes([w[1], w[2], w[3], w[4]]))
}

/// `--mqtt-max-session-expiry` holds every persistent session to it: an MQTT 3.1.1 one (which
/// would never expire) as well as an MQTT 5 one asking for more, which is told the expiry it
/// gets; one asking for less keeps its own.
#[tokio::test]
async fn persistent_sessions_are_held_to_the_maximum_session_expiry() {
    let app = app_keeping_sessions_one_second().await;
    let (mut v3, ack) = Raw::connect(&app, &build::connect("cap3", false, 60, None)).await;
    assert_eq!(ack.body, [0, 0]);
    v3.send(&build::subscribe(1, "cap/#", 1, None)).await;
    v3.expect(9).await;
    v3.send(&[0xE0, 0x00]).await;
    assert_eq!(v3.until_closed().await, vec![]);

    let (mut v5, ack) = Raw::connect(&app, &persistent_connect("cap5", true)).await;
    assert_eq!(
        connack_session_expiry(&ack.body),
        Some(1),
        "300 asked, 1 given"
    );
    v5.send(&build::disconnect_v5(0)).await;
    assert_eq!(v5.until_closed().await, vec![]);
    let short = build::connect("short", true, 60, Some(&prop_u32(SESSION_EXPIRY, 1)));
    let (_short, ack) = Raw::connect(&app, &short).await;
    assert_eq!(connack_session_expiry(&ack.body), None, "1 asked, 1 given");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_v3, ack) = Raw::connect(&app, &build::connect("cap3", false, 60, None)).await;
    assert_eq!(ack.body, [0, 0], "the 3.1.1 session expired");
    let (_v5, ack) = Raw::connect(&app, &persistent_connect("cap5", false)).await;
    assert_eq!(ack.body[0], 0, "the MQTT 5 session expired");
}

/// Under the default maximum (AWS IoT's hour) a session asking for 300 s keeps it, and the
/// CONNACK says nothing of it.
#[tokio::test]
async fn a_session_expiry_within_the_maximum_is_kept_as_asked() {
    let app = app().await;
    let (_c, ack) = Raw::connect(&app, &persistent_connect("within", true)).await;
    assert_eq!(connack_session_expiry(&ack.body), None);
    let never = build::connect("never", true, 60, Some(&prop_u32(SESSION_EXPIRY, u32::MAX)));
    let (_c, ack) = Raw::connect(&app, &never).await;
    assert_eq!(connack_session_expiry(&ack.body), Some(3600));
}

/// A client that connects again, starting clean, while its earlier connection is still open
/// (a device rebooted before the broker saw its old TCP connection die) takes the client id
/// over: the new connection receives what it subscribed to, and is itself taken over by the
/// next. Before 2026-12-06 the old connection's end removed the new session from the
/// registry: the new connection received nothing, and a third connection with the id took
/// nothing over, so two were connected at once. 3.1.1 (clean session 1) and MQTT 5 (clean
/// start, with and without a session expiry).
#[tokio::test]
async fn a_clean_start_over_an_open_connection_gets_its_messages_and_is_taken_over_in_turn() {
    // Unpaced: nine CONNECTs of three ids would otherwise each wait for its id's turn.
    let db = fresh_db(Backend::Postgres).await;
    let mut config = test_config(&db.url);
    config.mqtt_connect_rate_per_client_id = 0.0;
    let app = spawn_app_with(db, config).await;
    let expiry = prop_u32(SESSION_EXPIRY, 300);
    for (id, v5, props) in [
        ("clean-311", false, None),
        ("clean-5", true, Some(&[][..])),
        ("clean-5-kept", true, Some(&expiry[..])),
    ] {
        let topic = format!("to/{id}");
        let connect = build::connect(id, true, 60, props);
        let sub_props = v5.then_some(&[][..]);
        let (mut first, _) = Raw::connect(&app, &connect).await;
        first.send(&build::subscribe(1, &topic, 1, sub_props)).await;
        first.expect(9).await;
        let (mut second, ack) = Raw::connect(&app, &connect).await;
        assert_eq!(ack.body[0], 0, "{id}: started clean");
        second
            .send(&build::subscribe(1, &topic, 1, sub_props))
            .await;
        second.expect(9).await;
        // The first is closed (MQTT 5: DISCONNECT 0x8E), and has ended, before the publish.
        let closed = first.until_closed().await;
        if v5 {
            assert_eq!(closed.len(), 1, "{id}: {closed:?}");
            assert_eq!(closed[0].disconnect_reason(), 0x8E, "{id}");
        }
        // Closed on its side too, as a client does: the server's end would otherwise wait
        // out its linger (1 s) for it.
        drop(first);
        app.until_connections(1).await;
        let res = app
            .publish(format!("/topics/{}?qos=1", encode(&topic)), id.to_owned())
            .await;
        assert_eq!(res.status(), 200);
        let p = second.expect(3).await.publish(v5);
        assert_eq!(
            p.payload,
            id.as_bytes(),
            "{id}: the new connection receives"
        );
        let (_third, _) = Raw::connect(&app, &connect).await;
        let closed = tokio::time::timeout(Duration::from_secs(5), second.until_closed())
            .await
            .unwrap_or_else(|_| panic!("{id}: the second was not taken over by the third"));
        if v5 {
            assert_eq!(
                closed.last().map(|p| p.disconnect_reason()),
                Some(0x8E),
                "{id}"
            );
        }
        drop(second);
        app.until_connections(1).await;
    }
}
