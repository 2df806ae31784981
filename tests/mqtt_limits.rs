//! The broker's bounds, each hit on purpose against the real server with small configured
//! limits: queued messages per session (online and offline), messages in flight, Receive
//! Maximum, Topic Alias Maximum, payload size and topic limits. Every refusal is checked for its
//! reason code and for leaving the store unchanged.

mod common;

use common::mqtt::raw::{Raw, RawPacket, build};
use common::mqtt::{Qos5, V5, v5_options};
use common::{Backend, TestApp, fresh_db, spawn_app, spawn_app_with, test_config};

async fn app_with(edit: impl FnOnce(&mut retaind::app::ServeConfig)) -> TestApp {
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    edit(&mut config);
    spawn_app_with(db, config).await
}

fn v5_connect_with(id: &str, clean: bool, props: &[u8]) -> Vec<u8> {
    build::connect(id, clean, 60, Some(props))
}

const RECEIVE_MAXIMUM: u8 = 0x21;
const SESSION_EXPIRY: u8 = 0x11;
const TOPIC_ALIAS: u8 = 0x23;

fn payload_of(p: &RawPacket) -> String {
    String::from_utf8(p.publish(true).payload).unwrap()
}

#[tokio::test]
async fn online_qos1_subscriber_with_a_full_queue_is_disconnected_with_0x97() {
    let app = app_with(|c| c.mqtt_max_queued_messages = 3).await;
    let connect = v5_connect_with("slow", true, &[RECEIVE_MAXIMUM, 0, 1]);
    let (mut slow, _) = Raw::connect(&app, &connect).await;
    slow.send(&build::subscribe(1, "q", 1, Some(&[]))).await;
    slow.expect(9).await;
    let (mut publ, _) = V5::connect(v5_options(&app, "pub")).await;
    // One in flight, three queued, the fifth does not fit.
    for i in 0..5 {
        publ.publish("q", Qos5::AtLeastOnce, false, format!("{i}").as_bytes())
            .await;
    }
    let got = slow.until_closed().await;
    let (last, before) = got.split_last().expect("packets before the close");
    assert_eq!(last.disconnect_reason(), 0x97, "{got:?}");
    assert_eq!(before.iter().map(payload_of).collect::<Vec<_>>(), ["0"]);
}

/// One client never hurts another: a QoS 1 subscriber that takes nothing does not
/// make its publisher wait. Its queue overflows and it is disconnected (0x97) at once, while
/// every PUBACK the publisher waits for comes promptly.
#[tokio::test]
async fn a_stuck_qos1_subscriber_does_not_hold_its_publisher_back() {
    let app = app_with(|c| c.mqtt_max_queued_messages = 3).await;
    let connect = v5_connect_with("stuck", true, &[RECEIVE_MAXIMUM, 0, 1]);
    let (mut stuck, _) = Raw::connect(&app, &connect).await;
    stuck.send(&build::subscribe(1, "q", 1, Some(&[]))).await;
    stuck.expect(9).await;
    let (mut publ, _) = V5::connect(v5_options(&app, "pub")).await;
    for i in 0..10 {
        let started = std::time::Instant::now();
        publ.publish("q", Qos5::AtLeastOnce, false, format!("{i}").as_bytes())
            .await;
        // The publisher used to wait up to 5 s here for room in the subscriber's queue.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "publish {i} waited"
        );
    }
    let got = stuck.until_closed().await;
    let (last, before) = got.split_last().expect("packets before the close");
    assert_eq!(last.disconnect_reason(), 0x97, "{got:?}");
    assert_eq!(before.iter().map(payload_of).collect::<Vec<_>>(), ["0"]);
}

#[tokio::test]
async fn qos0_messages_beyond_a_full_queue_are_dropped_and_the_client_stays() {
    let app = app_with(|c| c.mqtt_max_queued_messages = 3).await;
    let connect = v5_connect_with("slow", true, &[RECEIVE_MAXIMUM, 0, 1]);
    let (mut slow, _) = Raw::connect(&app, &connect).await;
    slow.send(&build::subscribe(1, "a", 1, Some(&[]))).await;
    slow.expect(9).await;
    slow.send(&build::subscribe(2, "b", 0, Some(&[]))).await;
    slow.expect(9).await;
    let (mut publ, _) = V5::connect(v5_options(&app, "pub")).await;
    // a1 fills the window; a2 holds the queue's head, so b0..b4 wait behind it: b0 and b1
    // fit, b2..b4 do not.
    publ.publish("a", Qos5::AtLeastOnce, false, b"a1").await;
    publ.publish("a", Qos5::AtLeastOnce, false, b"a2").await;
    for i in 0..5 {
        publ.publish("b", Qos5::AtMostOnce, false, format!("b{i}").as_bytes())
            .await;
    }
    // A QoS 1 publish from the same connection is acknowledged after the QoS 0 ones were routed.
    publ.publish("elsewhere", Qos5::AtLeastOnce, false, b"fence")
        .await;
    let a1 = slow.expect(3).await.publish(true);
    assert_eq!(a1.payload, b"a1");
    slow.send(&build::ack(0x40, a1.pkid)).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = slow.expect(3).await.publish(true);
        if p.qos == 1 {
            slow.send(&build::ack(0x40, p.pkid)).await;
        }
        got.push(String::from_utf8(p.payload).unwrap());
    }
    assert_eq!(got, ["a2", "b0", "b1"]);
    publ.publish("a", Qos5::AtLeastOnce, false, b"after").await;
    assert_eq!(payload_of(&slow.expect(3).await), "after");
}

#[tokio::test]
async fn offline_session_drops_new_messages_once_its_queue_is_full() {
    let app = app_with(|c| c.mqtt_max_queued_messages = 3).await;
    let session = [SESSION_EXPIRY, 0, 0, 1, 0];
    let (mut raw, _) = Raw::connect(&app, &v5_connect_with("off", true, &session)).await;
    raw.send(&build::subscribe(1, "off", 1, Some(&[]))).await;
    raw.expect(9).await;
    raw.send(&build::disconnect_v5(0)).await;
    assert_eq!(raw.until_closed().await, vec![]);
    let (mut publ, _) = V5::connect(v5_options(&app, "pub")).await;
    for i in 0..5 {
        publ.publish("off", Qos5::AtLeastOnce, false, format!("{i}").as_bytes())
            .await;
    }
    let (mut raw, ack) = Raw::connect(&app, &v5_connect_with("off", false, &session)).await;
    assert_eq!(ack.body[0], 1, "session present");
    publ.publish("off", Qos5::AtLeastOnce, false, b"online")
        .await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let p = raw.expect(3).await.publish(true);
        raw.send(&build::ack(0x40, p.pkid)).await;
        got.push(String::from_utf8(p.payload).unwrap());
    }
    assert_eq!(got, ["0", "1", "2", "online"]);
}

#[tokio::test]
async fn messages_in_flight_are_capped_by_the_configured_maximum() {
    let app = app_with(|c| c.mqtt_max_inflight = 2).await;
    let (mut raw, _) = Raw::connect(&app, &v5_connect_with("s", true, &[])).await;
    raw.send(&build::subscribe(1, "w", 1, Some(&[]))).await;
    raw.expect(9).await;
    let (mut publ, _) = V5::connect(v5_options(&app, "pub")).await;
    for i in 0..3 {
        publ.publish("w", Qos5::AtLeastOnce, false, format!("{i}").as_bytes())
            .await;
    }
    let first = raw.expect(3).await.publish(true);
    raw.expect(3).await;
    // All three were routed (PUBACKed); a third in flight would come before the PINGRESP.
    raw.send(&[0xC0, 0x00]).await;
    raw.expect(13).await;
    raw.send(&build::ack(0x40, first.pkid)).await;
    assert_eq!(payload_of(&raw.expect(3).await), "2");
}

#[tokio::test]
async fn configured_receive_maximum_is_advertised_and_enforced_with_0x93() {
    let app = app_with(|c| c.mqtt_receive_maximum = 2).await;
    let (_probe, ack) = V5::connect(v5_options(&app, "probe")).await;
    assert_eq!(ack.properties.and_then(|p| p.receive_max), Some(2));
    let (mut raw, _) = Raw::connect(&app, &v5_connect_with("p", true, &[])).await;
    for pkid in 1..=2 {
        raw.send(&build::publish(
            "rm",
            2,
            false,
            false,
            pkid,
            Some(&[]),
            b"x",
        ))
        .await;
        let rec = raw.expect(5).await;
        assert_eq!(
            (&rec.body[..2], rec.ack_reason()),
            (&[0, pkid as u8][..], 0)
        );
    }
    // Two QoS 2 publishes await PUBREL: a third is one too many.
    raw.send(&build::publish("rm", 2, false, false, 3, Some(&[]), b"x"))
        .await;
    let got = raw.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].disconnect_reason(), 0x93);
}

#[tokio::test]
async fn configured_topic_alias_maximum_is_advertised_and_enforced_with_0x94() {
    let app = app_with(|c| c.mqtt_topic_alias_maximum = 2).await;
    let (_probe, ack) = V5::connect(v5_options(&app, "probe")).await;
    assert_eq!(ack.properties.and_then(|p| p.topic_alias_max), Some(2));
    let (mut raw, _) = Raw::connect(&app, &v5_connect_with("p", true, &[])).await;
    raw.send(&build::publish(
        "t",
        1,
        true,
        false,
        1,
        Some(&[TOPIC_ALIAS, 0, 2]),
        b"ok",
    ))
    .await;
    assert_eq!(raw.expect(4).await.ack_reason(), 0);
    raw.send(&build::publish(
        "u",
        1,
        true,
        false,
        2,
        Some(&[TOPIC_ALIAS, 0, 3]),
        b"no",
    ))
    .await;
    let got = raw.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].disconnect_reason(), 0x94);
    let topics: Vec<String> = app.snapshot().await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(topics, ["t"]);
}

#[tokio::test]
async fn v5_payload_over_the_payload_limit_disconnects_with_0x95_and_stores_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let (mut raw, _) = Raw::connect(&app, &v5_connect_with("p", true, &[])).await;
    let big = vec![b'x'; 128 * 1024 + 1];
    raw.send(&build::publish("big", 1, true, false, 1, Some(&[]), &big))
        .await;
    let got = raw.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].disconnect_reason(), 0x95);
    assert_eq!(app.snapshot().await, vec![]);
}

#[tokio::test]
async fn v3_payload_over_the_payload_limit_closes_and_stores_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let (mut raw, _) = Raw::connect(&app, &build::connect("p", true, 60, None)).await;
    let big = vec![b'x'; 128 * 1024 + 1];
    raw.send(&build::publish("big", 1, true, false, 1, None, &big))
        .await;
    assert_eq!(raw.until_closed().await, vec![]);
    assert_eq!(app.snapshot().await, vec![]);
}

#[tokio::test]
async fn payload_at_the_limit_is_accepted_and_stored() {
    let app = spawn_app(Backend::Sqlite).await;
    let (mut raw, _) = Raw::connect(&app, &v5_connect_with("p", true, &[])).await;
    let max = vec![b'x'; 128 * 1024];
    raw.send(&build::publish("max", 1, true, false, 1, Some(&[]), &max))
        .await;
    assert_eq!(raw.expect(4).await.ack_reason(), 0);
    let stored: serde_json::Value = app.get_json("/retainedMessage/max").await;
    assert_eq!(stored["topic"], "max");
}

#[tokio::test]
async fn topic_with_too_many_levels_gets_puback_0x90_and_stores_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let (mut raw, _) = Raw::connect(&app, &v5_connect_with("p", true, &[])).await;
    raw.send(&build::publish(
        "1/2/3/4/5/6/7/8/9",
        1,
        true,
        false,
        5,
        Some(&[]),
        b"x",
    ))
    .await;
    let ack = raw.expect(4).await;
    assert_eq!((&ack.body[..2], ack.ack_reason()), (&[0u8, 5][..], 0x90));
    raw.send(&build::publish(
        "1/2/3/4/5/6/7/8",
        1,
        true,
        false,
        6,
        Some(&[]),
        b"x",
    ))
    .await;
    assert_eq!(raw.expect(4).await.ack_reason(), 0);
    let topics: Vec<String> = app.snapshot().await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(topics, ["1/2/3/4/5/6/7/8"]);
}

/// SUBSCRIBE of several filters at QoS 0 in one packet; MQTT 5 when `v5`.
fn subscribe_many(pkid: u16, filters: &[&str], v5: bool) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v5 {
        body.push(0); // no properties
    }
    for filter in filters {
        body.extend(build::string(filter));
        body.push(0);
    }
    build::packet(0x82, &body)
}

/// The return codes of a SUBACK, after its packet id (and, for MQTT 5, its properties).
fn suback_codes(p: &RawPacket, v5: bool) -> Vec<u8> {
    assert_eq!(p.kind(), 9, "expected SUBACK, got {p:?}");
    let skip = if v5 { 3 } else { 2 }; // an empty property block is one byte
    p.body[skip..].to_vec()
}

#[tokio::test]
async fn connections_beyond_the_maximum_get_connack_server_busy_and_store_nothing() {
    let app = app_with(|c| c.mqtt_max_connections = 2).await;
    let (mut first, ack) = Raw::connect(&app, &v5_connect_with("one", true, &[])).await;
    assert_eq!(ack.body[1], 0);
    let (_second, ack) = Raw::connect(&app, &build::connect("two", true, 60, None)).await;
    assert_eq!(ack.body[1], 0);

    // MQTT 5: 0x89 Server busy, with a retained Will that must not be stored.
    let will = build::Will {
        topic: "wills/three",
        payload: b"gone",
        qos: 1,
        retain: true,
        props: &[],
    };
    let connect = build::connect_with_will("three", true, 60, Some(&[]), will);
    let (mut third, ack) = Raw::connect(&app, &connect).await;
    assert_eq!(ack.body[1], 0x89);
    assert!(third.until_closed().await.is_empty());
    // MQTT 3.1.1: 0x03 Server unavailable.
    let (mut fourth, ack) = Raw::connect(&app, &build::connect("four", true, 60, None)).await;
    assert_eq!(ack.body, [0, 0x03]);
    assert!(fourth.until_closed().await.is_empty());
    assert!(app.snapshot().await.is_empty());
    let page = app.running.as_ref().unwrap().broker.metrics().render();
    assert_eq!(
        common::metric_value(
            &page,
            "retaind_mqtt_connects_refused_total{reason=\"server_busy\"}"
        ),
        2.0
    );

    // A place frees up when a client leaves.
    first.send(&build::disconnect_v5(0)).await;
    first.until_closed().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_again, ack) = Raw::connect(&app, &v5_connect_with("five", true, &[])).await;
        if ack.body[1] == 0 {
            break;
        }
        assert_eq!(ack.body[1], 0x89);
        assert!(std::time::Instant::now() < deadline, "no place freed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn subscriptions_beyond_the_maximum_get_suback_0x97_and_the_rest_are_granted() {
    let app = app_with(|c| c.mqtt_max_subscriptions = 2).await;
    let (mut sub, _) = Raw::connect(&app, &v5_connect_with("subs", true, &[])).await;
    sub.send(&subscribe_many(1, &["a", "b", "c"], true)).await;
    assert_eq!(suback_codes(&sub.expect(9).await, true), [0, 0, 0x97]);
    // Subscribing again to a held filter replaces it and does not count twice.
    sub.send(&subscribe_many(2, &["a", "d", "b"], true)).await;
    assert_eq!(suback_codes(&sub.expect(9).await, true), [0, 0x97, 0]);

    // Nothing reaches the refused filters; the granted ones work.
    app.publish("/topics/c?qos=0", "to c").await;
    app.publish("/topics/d?qos=0", "to d").await;
    app.publish("/topics/a?qos=0", "to a").await;
    assert_eq!(payload_of(&sub.expect(3).await), "to a");
    assert!(app.snapshot().await.is_empty());
}

#[tokio::test]
async fn mqtt_3_1_1_subscriptions_beyond_the_maximum_get_the_failure_code_0x80() {
    let app = app_with(|c| c.mqtt_max_subscriptions = 1).await;
    let (mut sub, _) = Raw::connect(&app, &build::connect("subs3", true, 60, None)).await;
    sub.send(&subscribe_many(1, &["a", "b"], false)).await;
    assert_eq!(suback_codes(&sub.expect(9).await, false), [0, 0x80]);
    sub.send(&subscribe_many(2, &["a"], false)).await;
    assert_eq!(suback_codes(&sub.expect(9).await, false), [0]);
}

#[tokio::test]
async fn publishes_beyond_the_rate_get_puback_0x97_and_store_nothing() {
    let app = app_with(|c| c.mqtt_max_publish_rate = 2.0).await;
    let (mut raw, _) = Raw::connect(&app, &v5_connect_with("fast", true, &[])).await;
    for (pkid, topic) in [(1, "r/1"), (2, "r/2"), (3, "r/3")] {
        raw.send(&build::publish(
            topic,
            1,
            true,
            false,
            pkid,
            Some(&[]),
            b"x",
        ))
        .await;
    }
    let reasons: Vec<u8> = [
        raw.expect(4).await,
        raw.expect(4).await,
        raw.expect(4).await,
    ]
    .iter()
    .map(RawPacket::ack_reason)
    .collect();
    assert_eq!(reasons, [0, 0, 0x97]);
    let topics: Vec<String> = app.snapshot().await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(topics, ["r/1", "r/2"]);
}

#[tokio::test]
async fn mqtt_3_1_1_publishes_beyond_the_rate_are_dropped() {
    let app = app_with(|c| c.mqtt_max_publish_rate = 2.0).await;
    let (mut raw, _) = Raw::connect(&app, &build::connect("fast3", true, 60, None)).await;
    for (pkid, topic) in [(1, "r/1"), (2, "r/2"), (3, "r/3")] {
        raw.send(&build::publish(topic, 1, true, false, pkid, None, b"x"))
            .await;
    }
    // 3.1.1 has no code to refuse a publish with: each is acknowledged.
    for pkid in 1..=3u16 {
        assert_eq!(raw.expect(4).await.body, pkid.to_be_bytes());
    }
    let topics: Vec<String> = app.snapshot().await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(topics, ["r/1", "r/2"]);
}

const USER_PROPERTY: u8 = 0x26;
const REQUEST_PROBLEM_INFO: u8 = 0x17;
const REASON_STRING: u8 = 0x1F;

/// `n` user properties with empty keys and values: 5 bytes each as measured on the wire
/// (identifier, two lengths), though they hold no text.
fn empty_user_properties(n: usize) -> Vec<u8> {
    [USER_PROPERTY, 0, 0, 0, 0].repeat(n)
}

/// One user property whose wire size (identifier, lengths, key "k", value) is `size` bytes.
fn user_property_of_size(size: usize) -> Vec<u8> {
    let value = "v".repeat(size - 6);
    let mut out = vec![USER_PROPERTY];
    out.extend(build::string("k"));
    out.extend(build::string(value));
    out
}

#[tokio::test]
async fn v5_publish_with_user_properties_over_8_kib_gets_puback_0x83_and_reaches_nobody() {
    let app = spawn_app(Backend::Sqlite).await;
    let (mut sub, _) = V5::connect(v5_options(&app, "sub")).await;
    sub.subscribe("p", Qos5::AtLeastOnce).await;
    let before = app.snapshot().await;
    let (mut raw, _) = Raw::connect(&app, &v5_connect_with("p", true, &[])).await;
    // 20,000 empty properties: no text at all, 100,000 bytes of framing.
    for (pkid, props) in [
        (1, empty_user_properties(20_000)),
        (2, user_property_of_size(8193)),
    ] {
        raw.send(&build::publish(
            "p",
            1,
            true,
            false,
            pkid,
            Some(&props),
            b"x",
        ))
        .await;
        let ack = raw.expect(4).await;
        assert_eq!(ack.ack_reason(), 0x83, "{ack:?}");
        assert_eq!(
            ack.body.get(4),
            Some(&REASON_STRING),
            "a reason string: {ack:?}"
        );
    }
    // QoS 0: dropped, and the connection stays.
    raw.send(&build::publish(
        "p",
        0,
        true,
        false,
        0,
        Some(&empty_user_properties(2000)),
        b"x",
    ))
    .await;
    raw.send(&[0xC0, 0x00]).await;
    raw.expect(13).await;
    assert_eq!(app.snapshot().await, before);
    // The subscriber's next message is one published after the refused ones.
    raw.send(&build::publish(
        "p",
        1,
        false,
        false,
        3,
        Some(&[]),
        b"after",
    ))
    .await;
    raw.expect(4).await;
    assert_eq!(&sub.next_publish().await.payload[..], b"after");
}

#[tokio::test]
async fn user_properties_at_8_kib_are_stored() {
    let app = spawn_app(Backend::Sqlite).await;
    let (mut raw, _) = Raw::connect(&app, &v5_connect_with("p", true, &[])).await;
    let props = user_property_of_size(8192);
    raw.send(&build::publish("p", 1, true, false, 1, Some(&props), b"x"))
        .await;
    assert_eq!(raw.expect(4).await.ack_reason(), 0x00);
    let stored = app.get_json("/retainedMessage/p").await;
    assert!(stored["userProperties"].is_string(), "{stored}");
}

#[tokio::test]
async fn the_refusal_has_no_reason_string_when_the_client_asked_for_none() {
    let app = spawn_app(Backend::Sqlite).await;
    let connect = v5_connect_with("p", true, &[REQUEST_PROBLEM_INFO, 0]);
    let (mut raw, _) = Raw::connect(&app, &connect).await;
    let props = empty_user_properties(2000);
    raw.send(&build::publish("p", 2, true, false, 1, Some(&props), b"x"))
        .await;
    let rec = raw.expect(5).await;
    // Reason 0x83 and an empty property block.
    assert_eq!(rec.body[2..], [0x83, 0], "{rec:?}");
}

#[tokio::test]
async fn a_will_with_user_properties_over_8_kib_gets_connack_0x83() {
    let app = spawn_app(Backend::Sqlite).await;
    let before = app.snapshot().await;
    let props = empty_user_properties(2000);
    let will = build::Will {
        topic: "w",
        payload: b"gone",
        qos: 1,
        retain: true,
        props: &props,
    };
    let mut raw = Raw::open(&app).await;
    raw.send(&build::connect_with_will("w", true, 60, Some(&[]), will))
        .await;
    let got = raw.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].kind(), got[0].body[1]), (2, 0x83), "{got:?}");
    assert_eq!(app.snapshot().await, before);
}

const SERVER_KEEP_ALIVE: u8 = 0x13;

fn has_property(ack: &RawPacket, property: &[u8]) -> bool {
    ack.body.windows(property.len()).any(|w| w == property)
}

#[tokio::test]
async fn v5_keep_alive_over_the_maximum_or_none_is_answered_with_server_keep_alive() {
    let app = spawn_app(Backend::Sqlite).await;
    // The default maximum is AWS IoT's 1200 s.
    for asked in [0u16, 1201, u16::MAX] {
        let (_raw, ack) = Raw::connect(&app, &build::connect("k", true, asked, Some(&[]))).await;
        assert!(
            has_property(&ack, &[SERVER_KEEP_ALIVE, 0x04, 0xB0]),
            "{asked}: {ack:?}"
        );
    }
    for asked in [1u16, 60, 1200] {
        let (_raw, ack) = Raw::connect(&app, &build::connect("k", true, asked, Some(&[]))).await;
        assert!(
            !ack.body[3..].contains(&SERVER_KEEP_ALIVE),
            "{asked}: {ack:?}"
        );
    }
}

#[tokio::test]
async fn a_client_is_held_to_the_maximum_keep_alive() {
    let app = app_with(|c| c.mqtt_max_keep_alive = 1).await;
    let started = std::time::Instant::now();
    let (mut v5, ack) = Raw::connect(&app, &build::connect("k5", true, 0, Some(&[]))).await;
    assert!(has_property(&ack, &[SERVER_KEEP_ALIVE, 0, 1]), "{ack:?}");
    // 3.1.1 has no Server Keep Alive: held to the maximum without being told.
    let (mut v3, _) = Raw::connect(&app, &build::connect("k3", true, 60, None)).await;
    let got = v5.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].disconnect_reason(), 0x8D);
    assert_eq!(v3.until_closed().await, vec![]);
    // Silent for 1.5 × 1 s, not for ever (v5 asked for none) or 90 s (v3 asked for 60 s).
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// A client that goes on sending after exceeding Receive Maximum, and has not yet read what
/// the broker sent it, still finds DISCONNECT 0x93 when it reads [MQTT-3.3.4-9]: the broker
/// drains the client's input before it closes, so the close is not a reset, which would
/// discard what the kernel had not delivered yet.
#[tokio::test]
async fn a_client_flooding_past_receive_maximum_gets_disconnect_0x93() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = app_with(|c| c.mqtt_receive_maximum = 2).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small receive window keeps most of what the broker sends in its own send queue.
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(app.mqtt_addr).await.unwrap();
    let mut flood = v5_connect_with("p", true, &[]);
    flood.extend(build::subscribe(1, "echo", 0, Some(&[])));
    let echo = build::publish("echo", 0, false, false, 0, Some(&[]), &[b'e'; 1024]);
    for _ in 0..48 {
        flood.extend_from_slice(&echo);
    }
    for pkid in 1..=3 {
        flood.extend(build::publish("rm", 2, false, false, pkid, Some(&[]), b"x"));
    }
    // More after the one too many, as a client that does not wait for answers sends.
    let more = build::publish("rm", 0, false, false, 0, Some(&[]), &[b'x'; 1024]);
    for _ in 0..16 {
        flood.extend_from_slice(&more);
    }
    stream.write_all(&flood).await.unwrap();
    // Not reading until the broker has given up on the client: its close comes within a
    // second (the goodbye), the linger within another.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let mut got = Vec::new();
    let read = common::mqtt::within("the rest", stream.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "closed, not reset: {read:?} after {} bytes",
        got.len()
    );
    assert_eq!(got[got.len() - 4..], [0xE0, 0x02, 0x93, 0x00]);
}

/// Whether the server closed `raw` within `wait` (without sending anything).
async fn closed_within(raw: &mut Raw, wait: std::time::Duration) -> bool {
    match tokio::time::timeout(wait, raw.recv()).await {
        Ok(None) => true,
        Ok(Some(p)) => panic!("a connection that sent nothing got {p:?}"),
        Err(_) => false,
    }
}

/// One address fills every place for connections awaiting CONNECT with connections that
/// never send anything. A newcomer while they are within their 2 s is closed at once; after,
/// a client of another address takes the place of one of them and is served, and the rest
/// wait on. Before, they were bounded only by the open-files limit, which such connections
/// could use up.
#[tokio::test]
async fn a_silent_address_filling_every_place_before_connect_does_not_keep_others_out() {
    use std::time::Duration;
    let app = app_with(|c| c.mqtt_max_awaiting_connect = 3).await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(Raw::open(&app).await);
    }
    // Each takes its place as its connection task starts: the fourth finds none free.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut early = Raw::open(&app).await;
    assert!(
        closed_within(&mut early, Duration::from_secs(2)).await,
        "a newcomer while every place is within its grace is closed at once"
    );

    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let other: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut honest = Raw::open_from(app.mqtt_addr, other).await;
    honest.send(&build::connect("honest", true, 60, None)).await;
    let ack = honest.expect(2).await;
    assert_eq!(ack.body, [0, 0], "served");
    let mut closed = 0;
    for raw in &mut silent {
        if closed_within(raw, Duration::from_millis(300)).await {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 1,
        "one silent connection made room, the others wait on"
    );
    let page = app.get("/metrics").await.text().await.unwrap();
    let value = |series: &str| common::metric_value(&page, series);
    assert_eq!(value("retaind_mqtt_awaiting_connect"), 2.0, "{page}");
    for (reason, n) in [("no_room", 1.0), ("made_room", 1.0)] {
        let series = format!("retaind_mqtt_closed_before_connect_total{{reason=\"{reason}\"}}");
        assert_eq!(value(&series), n, "{reason}");
    }
}

async fn queue_metrics(app: &TestApp) -> (f64, f64) {
    let page = app.get("/metrics").await.text().await.unwrap();
    (
        common::metric_value(&page, "retaind_mqtt_queue_memory_bytes"),
        common::metric_value(
            &page,
            r#"retaind_mqtt_messages_dropped_total{reason="queue_memory"}"#,
        ),
    )
}

/// `--mqtt-max-queue-memory-mib` bounds what the queues of the node's offline sessions hold
/// together: they stop queueing at it (the oldest of what they queued kept), a message waiting
/// for several sessions counts once, a connected subscriber is not held to it, and what the
/// returning sessions take is free again.
#[tokio::test]
async fn offline_sessions_stop_queueing_at_the_nodes_queue_memory_and_a_connected_client_does_not()
{
    use rumqttc::QoS;
    const LIMIT: usize = 1 << 20;
    const PAYLOAD: usize = 16 * 1024;
    // Each session's own queue would take all of them (16 MiB): the node's 1 MiB holds
    // about 60 messages.
    const AWAY: usize = 100;
    const HERE: usize = 20;
    let app = app_with(|c| c.mqtt_max_queue_memory_mib = 1).await;
    let message = |i: usize| format!("{i:04}").into_bytes().repeat(PAYLOAD / 4);
    let away = ["away-1", "away-2"];
    for id in away {
        let mut o = common::mqtt::v3_options(&app, id);
        o.set_clean_session(false);
        let (mut c, _) = common::mqtt::V3::connect(o).await;
        c.subscribe("q/#", QoS::AtLeastOnce).await;
        c.disconnect().await;
    }
    app.until_no_connections().await;
    let (mut publ, _) = common::mqtt::V3::connect(common::mqtt::v3_options(&app, "pub")).await;
    for i in 0..AWAY {
        publ.publish("q/x", QoS::AtLeastOnce, false, &message(i))
            .await;
    }
    let (held, dropped) = queue_metrics(&app).await;
    assert!(held as usize <= LIMIT, "{held} held");
    // Within one message of the limit (a message counts its payload and at most 1 KiB more).
    assert!(held as usize + PAYLOAD + 1024 > LIMIT, "{held} held");

    // A connected subscriber gets everything, while the offline sessions queue nothing more.
    let (mut here, _) = common::mqtt::V3::connect(common::mqtt::v3_options(&app, "here")).await;
    here.subscribe("q/#", QoS::AtLeastOnce).await;
    for i in AWAY..AWAY + HERE {
        publ.publish("q/x", QoS::AtLeastOnce, false, &message(i))
            .await;
    }
    for i in AWAY..AWAY + HERE {
        assert_eq!(here.next_publish().await.payload, message(i));
    }
    let (_, dropped_after) = queue_metrics(&app).await;
    assert_eq!(dropped_after - dropped, (2 * HERE) as f64);

    // Back: each session gets the oldest of what was published, in order, then a message
    // published after its return.
    let (mut received, mut back) = (Vec::new(), Vec::new());
    for id in away {
        let mut o = common::mqtt::v3_options(&app, id);
        o.set_clean_session(false);
        let (mut c, ack) = common::mqtt::V3::connect(o).await;
        assert!(ack.session_present);
        publ.publish("q/x", QoS::AtLeastOnce, false, &message(AWAY + HERE))
            .await;
        let mut i = 0;
        loop {
            let p = c.next_publish().await;
            assert_eq!(p.topic, "q/x");
            if p.payload == message(AWAY + HERE) {
                break;
            }
            assert_eq!(p.payload, message(i), "{id}: the oldest first, in order");
            i += 1;
        }
        received.push(i);
        // Still connected: what is published now is sent, not queued.
        back.push(c);
    }
    assert_eq!(
        received.iter().sum::<usize>() as f64,
        2.0 * AWAY as f64 - dropped
    );
    // Both sessions queued the same messages, each counted once: about 60 of 16 KiB in
    // 1 MiB, not 30 each. The second may miss the last of the first's by its entry's bytes.
    let (first, second) = (received[0], received[1]);
    assert!(
        (LIMIT / (PAYLOAD + 1024)..=LIMIT / PAYLOAD).contains(&first),
        "{received:?}"
    );
    assert!(second == first || second + 1 == first, "{received:?}");
    // Every session connected: nothing is counted.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (held, _) = queue_metrics(&app).await;
        if held == 0.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{held} still held");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A principals file with two principals allowed everything, `fleet` and `other`, each signing
/// in over MQTT with its name and password "pw", and with its own lines (`fleet`, `other`).
fn fleet_and_other(fleet: &str, other: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let principals = dir.path().join("auth.toml");
    let hash = retaind::auth::hash_password("pw");
    let principal = |name: &str, own: &str| {
        format!(
            "[[principals]]\nname = \"{name}\"\nmqtt_username = \"{name}\"\n\
             mqtt_password_hash = \"{hash}\"\n{own}\n\
             [[principals.statements]]\neffect = \"Allow\"\nactions = [\"iot:*\"]\nresources = [\"*\"]\n"
        )
    };
    std::fs::write(
        &principals,
        principal("fleet", fleet) + &principal("other", other),
    )
    .unwrap();
    (dir, principals)
}

/// A CONNECT to a full node, checked while a place comes free (its password's check is slow
/// here: argon2 at 60 passes), gets that place: it is not refused as if the node were still
/// full. Before, whether the node was full was decided before the check, and a client whose
/// check outlasted another's leaving was refused with 0x89 by a node with room.
#[tokio::test]
async fn a_connect_to_a_full_node_gets_a_place_that_came_free_while_it_was_checked() {
    use argon2::password_hash::PasswordHasher;
    let (dir, principals) = fleet_and_other("", "");
    let slow = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(19 * 1024, 60, 1, None).unwrap(),
    )
    .hash_password(b"slow-pw")
    .unwrap()
    .to_string();
    let mut file = std::fs::read_to_string(&principals).unwrap();
    file.push_str(&format!(
        "[[principals]]\nname = \"slow\"\nmqtt_username = \"slow\"\n\
         mqtt_password_hash = \"{slow}\"\n\
         [[principals.statements]]\neffect = \"Allow\"\nactions = [\"iot:*\"]\nresources = [\"*\"]\n"
    ));
    std::fs::write(&principals, file).unwrap();
    let app = app_with(|c| {
        c.principals = Some(principals.clone());
        c.mqtt_max_connections = 2;
    })
    .await;
    let broker = &app.running.as_ref().unwrap().broker;
    let login = |id: &str, user: &str, password: &[u8]| {
        build::connect_with_login(id, Some(&[][..]), user, password)
    };
    let (d1, ack) = Raw::connect(&app, &login("d1", "fleet", b"pw")).await;
    assert_eq!(ack.body[1], 0);
    let (_d2, ack) = Raw::connect(&app, &login("d2", "fleet", b"pw")).await;
    assert_eq!(ack.body[1], 0);

    let mut z = Raw::open(&app).await;
    z.send(&login("z", "slow", b"slow-pw")).await;
    // Z holds the take-overs' place while it is checked (for most of a second).
    common::mqtt::within("Z's CONNECT to hold a place past the cap", async {
        while broker.connections() < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
    .await;
    drop(d1);
    app.until_connections(2).await;
    let ack = z.expect(2).await;
    assert_eq!(ack.body[1], 0, "Z gets the place d1 left");
    assert_eq!(broker.connections(), 2, "no more than the cap");
    drop(dir);
}

/// A principal's `max_queue_memory_mib` (here from `--mqtt-max-queue-memory-mib-per-principal`)
/// bounds what its offline sessions' queues hold, each copy counting its whole message: past
/// it their new messages are dropped, the oldest kept, while another principal's offline
/// session (`max_queue_memory_mib = 0`: no share of its own) queues every one; each session
/// back gets what it queued, in order, and nothing stays counted.
#[tokio::test]
async fn a_principals_offline_sessions_stop_at_its_share_and_another_principals_do_not() {
    use rumqttc::QoS;
    const SHARE: usize = 1 << 20;
    const PAYLOAD: usize = 16 * 1024;
    const SENT: usize = 100;
    let (_dir, principals) = fleet_and_other("", "max_queue_memory_mib = 0");
    let app = app_with(|c| {
        c.principals = Some(principals.clone());
        c.mqtt_max_queue_memory_mib_per_principal = 1;
    })
    .await;
    let options = |id: &str, user: &str| {
        let mut o = common::mqtt::v3_options(&app, id);
        o.set_clean_session(false);
        o.set_credentials(user, "pw");
        o
    };
    let away = [("f1", "fleet"), ("f2", "fleet"), ("o1", "other")];
    for (id, user) in away {
        let (mut c, _) = common::mqtt::V3::connect(options(id, user)).await;
        c.subscribe("q/#", QoS::AtLeastOnce).await;
        c.disconnect().await;
    }
    until_offline_sessions(&app, 3.0).await;
    let message = |i: usize| format!("{i:04}").into_bytes().repeat(PAYLOAD / 4);
    let (mut publ, _) = common::mqtt::V3::connect(options("pub", "other")).await;
    for i in 0..SENT {
        publ.publish("q/x", QoS::AtLeastOnce, false, &message(i))
            .await;
    }
    let dropped = |reason: &str| {
        let page = app.running.as_ref().unwrap().broker.metrics().render();
        common::metric_value(
            &page,
            &format!("retaind_mqtt_messages_dropped_total{{reason=\"{reason}\"}}"),
        )
    };
    let page = app.running.as_ref().unwrap().broker.metrics().render();
    assert!(
        !page.contains("reason=\"queue_memory\""),
        "the node's limit is far away"
    );
    let fleet_dropped = dropped("principal_queue_memory");
    // The fleet's share, within a message of its limit (the message, at most 1 KiB of its own,
    // and a queue's growth); the other principal has none.
    let share = common::metric_value(
        &page,
        r#"retaind_mqtt_principal_queue_memory_bytes{principal="fleet"}"#,
    ) as usize;
    assert!(share <= SHARE && share + PAYLOAD + 2048 > SHARE, "{share}");
    assert!(!page.contains(r#"{principal="other"}"#), "{page}");

    let (mut received, mut back) = (Vec::new(), Vec::new());
    for (id, user) in away {
        let (mut c, ack) = common::mqtt::V3::connect(options(id, user)).await;
        assert!(ack.session_present, "{id}");
        publ.publish("q/x", QoS::AtLeastOnce, false, &message(SENT))
            .await;
        let mut n = 0;
        loop {
            let p = c.next_publish().await;
            if p.payload == message(SENT) {
                break;
            }
            assert_eq!(p.payload, message(n), "{id}: the oldest first, in order");
            n += 1;
        }
        received.push(n);
        // Still connected: what is published now is sent, not queued.
        back.push(c);
    }
    // The fleet's two sessions shared its 1 MiB, each copy whole: about 60 messages between
    // them, not 60 each; the other principal's session got all 100.
    let fleet = received[0] + received[1];
    assert!(
        (SHARE / (PAYLOAD + 1024)..=SHARE / PAYLOAD).contains(&fleet),
        "{received:?}"
    );
    assert_eq!(received[2], SENT, "{received:?}");
    assert_eq!(fleet_dropped, (2 * SENT - fleet) as f64);
    // Every session connected: nothing is counted, and no principal has a share to show.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let page = app.running.as_ref().unwrap().broker.metrics().render();
        let held = common::metric_value(&page, "retaind_mqtt_queue_memory_bytes");
        let shown = page.contains("retaind_mqtt_principal_queue_memory_bytes{");
        if held == 0.0 && !shown {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{held} still held, a share still shown: {shown}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Until the node holds `n` sessions offline.
async fn until_offline_sessions(app: &TestApp, n: f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // Read in the process: with principals, `/metrics` wants a token.
        let page = app.running.as_ref().unwrap().broker.metrics().render();
        let held = common::metric_value(&page, "retaind_mqtt_offline_sessions");
        if held == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{held} offline, not {n}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `--mqtt-max-offline-sessions` bounds the sessions the node holds for clients that are away:
/// past it the session nearest its end ends, its client starting clean and the Will it was
/// waiting out the delay of published at once; the session just left is kept, whatever its
/// expiry, and the others resume.
#[tokio::test]
async fn past_the_offline_session_bound_the_one_nearest_its_end_ends_and_its_will_goes_out() {
    const WILL_DELAY: u8 = 0x18;
    let app = app_with(|c| c.mqtt_max_offline_sessions = 2).await;
    let expiry = |secs: u32| {
        let mut props = vec![SESSION_EXPIRY];
        props.extend(secs.to_be_bytes());
        props
    };
    let (mut watcher, _) = Raw::connect(&app, &v5_connect_with("watcher", true, &[])).await;
    watcher
        .send(&build::subscribe(1, "status/#", 1, Some(&[])))
        .await;
    watcher.expect(9).await;

    // Away without a DISCONNECT: its Will waits out 90 s, within its session's 100.
    let mut will_delay = vec![WILL_DELAY];
    will_delay.extend(90u32.to_be_bytes());
    let soon = build::connect_with_will(
        "soon",
        true,
        60,
        Some(&expiry(100)),
        build::Will {
            topic: "status/soon",
            payload: b"offline",
            qos: 1,
            retain: true,
            props: &will_delay,
        },
    );
    let (raw, ack) = Raw::connect(&app, &soon).await;
    assert_eq!(ack.body[1], 0);
    drop(raw);
    for (id, secs) in [("later", 600), ("newest", 50)] {
        let (mut raw, _) = Raw::connect(&app, &v5_connect_with(id, true, &expiry(secs))).await;
        raw.send(&build::subscribe(1, &format!("q/{id}"), 1, Some(&[])))
            .await;
        raw.expect(9).await;
        raw.send(&[0xE0, 0x00]).await;
        raw.until_closed().await;
        if id == "later" {
            // Both away, within the bound: nothing ends and no Will goes out.
            until_offline_sessions(&app, 2.0).await;
        }
    }

    // "newest" ends nearest of all (50 s) but is the one leaving: "soon" (100 s) ends.
    let will = tokio::time::timeout(std::time::Duration::from_secs(10), watcher.expect(3))
        .await
        .expect("the Will is published when its session ends, not 90 s later");
    let will = will.publish(true);
    assert_eq!(
        (will.topic.as_str(), will.payload.as_slice()),
        ("status/soon", &b"offline"[..])
    );
    let page = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        common::metric_value(&page, "retaind_mqtt_sessions_evicted_total{bound=\"node\"}"),
        1.0
    );
    assert_eq!(
        common::metric_value(&page, "retaind_mqtt_offline_sessions"),
        2.0
    );
    let mut back = Vec::new();
    for (id, present) in [("newest", 1), ("later", 1), ("soon", 0)] {
        let (raw, ack) = Raw::connect(&app, &v5_connect_with(id, false, &expiry(60))).await;
        assert_eq!((ack.body[0], ack.body[1]), (present, 0), "{id}");
        back.push(raw);
    }
    // The kept sessions' subscriptions stand; nothing is left of the ended one's.
    let (mut publisher, _) = Raw::connect(&app, &v5_connect_with("pub", true, &[])).await;
    for id in ["later", "newest"] {
        publisher
            .send(&build::publish(
                &format!("q/{id}"),
                0,
                false,
                false,
                0,
                Some(&[]),
                b"m",
            ))
            .await;
    }
    for (raw, id) in back.iter_mut().zip(["newest", "later"]) {
        let p = raw.expect(3).await.publish(true);
        assert_eq!(p.topic, format!("q/{id}"));
    }
}

/// A principal's `max_offline_sessions`, or `--mqtt-max-offline-sessions-per-principal` for one
/// that sets none, bounds its own sessions held offline: past it its session nearest its end
/// ends, and another principal's sessions are not touched.
#[tokio::test]
async fn past_a_principals_offline_session_bound_its_own_session_nearest_its_end_ends() {
    let (_dir, principals) = fleet_and_other("max_offline_sessions = 2", "");
    let app = app_with(|c| {
        c.principals = Some(principals.clone());
        c.mqtt_max_offline_sessions_per_principal = 3;
    })
    .await;
    let login = |id: &str, user: &str, clean: bool, expiry_secs: u32| {
        let mut props = vec![SESSION_EXPIRY];
        props.extend(expiry_secs.to_be_bytes());
        let mut connect = build::connect_with_login(id, Some(&props), user, b"pw");
        if !clean {
            let flags = connect.windows(4).position(|w| w == b"MQTT").unwrap() + 5;
            connect[flags] &= !0x02;
        }
        connect
    };
    let leave = |id: &'static str, user: &'static str, expiry_secs: u32| {
        let connect = login(id, user, true, expiry_secs);
        let app = &app;
        async move {
            let (mut raw, ack) = Raw::connect(app, &connect).await;
            assert_eq!(ack.body[1], 0, "{id}");
            raw.send(&[0xE0, 0x00]).await;
            raw.until_closed().await;
        }
    };
    for (id, user, secs) in [
        ("f1", "fleet", 100),
        ("f2", "fleet", 300),
        ("o1", "other", 50),
        ("o2", "other", 400),
        ("o3", "other", 500),
    ] {
        leave(id, user, secs).await;
    }
    until_offline_sessions(&app, 5.0).await;
    // The third of each ends the one of its own nearest its end: not the other principal's
    // o1, which ends sooner than any of the fleet's.
    leave("f3", "fleet", 200).await;
    until_offline_sessions(&app, 5.0).await;
    leave("o4", "other", 600).await;
    until_offline_sessions(&app, 5.0).await;
    let page = app.running.as_ref().unwrap().broker.metrics().render();
    assert_eq!(
        common::metric_value(
            &page,
            "retaind_mqtt_sessions_evicted_total{bound=\"principal\"}"
        ),
        2.0
    );
    assert!(!page.contains("bound=\"node\""), "{page}");
    let mut back = Vec::new();
    for (id, user, present) in [
        ("f2", "fleet", 1),
        ("f3", "fleet", 1),
        ("o2", "other", 1),
        ("o3", "other", 1),
        ("o4", "other", 1),
        ("f1", "fleet", 0),
        ("o1", "other", 0),
    ] {
        let (raw, ack) = Raw::connect(&app, &login(id, user, false, 60)).await;
        assert_eq!((ack.body[0], ack.body[1]), (present, 0), "{id}");
        back.push(raw);
    }
}

/// A principal's `max_connections` (here from `--mqtt-max-connections-per-principal`) bounds
/// the client ids it has connected at once: past it a CONNECT with a new client id gets
/// CONNACK 0x97 Quota exceeded (3.1.1: 0x03) and is closed, its retained Will not stored; a
/// client id already connected connects again at the limit and takes its own connection over
/// (the old one gets DISCONNECT 0x8E) without taking another place; another principal
/// (`max_connections = 0`: no limit of its own) connects on; a place frees when a client leaves.
#[tokio::test]
async fn a_principal_past_its_connections_is_refused_and_its_connected_client_ids_take_over() {
    use common::mqtt::{Qos5, connack_code, p5};
    let (_dir, principals) = fleet_and_other("", "max_connections = 0");
    let app = app_with(|c| {
        c.principals = Some(principals.clone());
        c.mqtt_max_connections_per_principal = 2;
    })
    .await;
    let login = |id: &str, user: &str, v5: bool| {
        build::connect_with_login(id, v5.then_some(&[][..]), user, b"pw")
    };
    let (mut f1, ack) = Raw::connect(&app, &login("f1", "fleet", true)).await;
    assert_eq!(ack.body[1], 0);
    let (mut f2, ack) = Raw::connect(&app, &login("f2", "fleet", false)).await;
    assert_eq!(ack.body, [0, 0]);

    // MQTT 5: 0x97, with a retained Will that must not be stored.
    let mut options = common::mqtt::v5_options(&app, "f3");
    options.set_credentials("fleet", "pw");
    options.set_last_will(p5::LastWill::new(
        "wills/f3",
        "gone",
        Qos5::AtLeastOnce,
        true,
        None,
    ));
    assert_eq!(
        connack_code(options).await,
        p5::ConnectReturnCode::QuotaExceeded
    );
    // MQTT 3.1.1: 0x03 Server unavailable.
    let (mut f4, ack) = Raw::connect(&app, &login("f4", "fleet", false)).await;
    assert_eq!(ack.body, [0, 0x03]);
    assert!(f4.until_closed().await.is_empty());

    // Another principal is not counted with the fleet, nor limited by the flag.
    let mut others = Vec::new();
    for i in 0..3 {
        let (o, ack) = Raw::connect(&app, &login(&format!("o{i}"), "other", true)).await;
        assert_eq!(ack.body[1], 0, "o{i}");
        others.push(o);
    }

    // f1 again, at the limit: it takes its own connection over.
    let (_f1_again, ack) = Raw::connect(&app, &login("f1", "fleet", true)).await;
    assert_eq!(ack.body[1], 0);
    let closing = f1.until_closed().await;
    assert_eq!(closing.last().map(RawPacket::disconnect_reason), Some(0x8E));
    // Still two places taken: the take-over took none of its own.
    let (_f5, ack) = Raw::connect(&app, &login("f5", "fleet", true)).await;
    assert_eq!(ack.body[1], 0x97);
    assert_eq!(app.stored_payload("wills/f3").await, None);
    let page = app.running.as_ref().unwrap().broker.metrics().render();
    assert_eq!(
        common::metric_value(
            &page,
            "retaind_mqtt_connects_refused_total{reason=\"principal_connections\"}"
        ),
        3.0
    );

    // A place frees when a client leaves.
    f2.send(&build::packet(0xE0, &[])).await;
    f2.until_closed().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_f6, ack) = Raw::connect(&app, &login("f6", "fleet", true)).await;
        if ack.body[1] == 0 {
            break;
        }
        assert_eq!(ack.body[1], 0x97);
        assert!(std::time::Instant::now() < deadline, "no place freed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A full node (`--mqtt-max-connections`) still lets a client id connected to it take its own
/// connection over (the old one gets DISCONNECT 0x8E): a device back over a half-open
/// connection need not wait out its keep alive. Anyone else gets CONNACK 0x89 (3.1.1: 0x03)
/// after its credentials are checked: a wrong password gets 0x86 whether or not its client id
/// is connected here, so the answer tells one who may not use an id nothing about it. A
/// CONNECT being checked on a full node holds one of the take-overs' places meanwhile (1/32
/// of the cap, here 1), so those being checked stay bounded.
#[tokio::test]
async fn a_full_node_lets_a_connected_client_id_take_its_connection_over_and_no_one_else_in() {
    let (_dir, principals) = fleet_and_other("", "");
    let app = app_with(|c| {
        c.principals = Some(principals.clone());
        c.mqtt_max_connections = 2;
    })
    .await;
    let broker = &app.running.as_ref().unwrap().broker;
    // Until a CONNECT being checked holds the place past the cap (2).
    let until_one_past_the_cap = async || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while broker.connections() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "no place held past the cap while a CONNECT is checked"
            );
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    };
    let login = |id: &str, password: &[u8], v5: bool| {
        build::connect_with_login(id, v5.then_some(&[][..]), "fleet", password)
    };
    let (mut d1, ack) = Raw::connect(&app, &login("d1", b"pw", true)).await;
    assert_eq!(ack.body[1], 0);
    let (_d2, ack) = Raw::connect(&app, &login("d2", b"pw", false)).await;
    assert_eq!(ack.body, [0, 0]);

    // Full: a client id not connected here, with good credentials.
    let (mut d3, ack) = Raw::connect(&app, &login("d3", b"pw", true)).await;
    assert_eq!(ack.body[1], 0x89);
    assert!(d3.until_closed().await.is_empty());
    app.until_connections(2).await;
    let (mut d3, ack) = Raw::connect(&app, &login("d3", b"pw", false)).await;
    assert_eq!(ack.body, [0, 0x03]);
    d3.until_closed().await;
    // A wrong password: the same answer for a connected client id as for another; while it
    // is checked (and its refusal waits its second), it holds the one place past the cap.
    for id in ["d1", "d3"] {
        app.until_connections(2).await;
        let mut guess = Raw::open(&app).await;
        guess.send(&login(id, b"guess", true)).await;
        until_one_past_the_cap().await;
        assert_eq!(guess.expect(2).await.body[1], 0x86, "{id}");
        guess.until_closed().await;
    }

    // d1 again: it takes its own connection over.
    app.until_connections(2).await;
    let (_d1_again, ack) = Raw::connect(&app, &login("d1", b"pw", true)).await;
    assert_eq!(ack.body[1], 0);
    let closing = d1.until_closed().await;
    assert_eq!(closing.last().map(RawPacket::disconnect_reason), Some(0x8E));
    // Full again, the old connection gone or going: still no place for another client id.
    let (_d4, ack) = Raw::connect(&app, &login("d4", b"pw", true)).await;
    assert_eq!(ack.body[1], 0x89);
    let page = broker.metrics().render();
    let refused = |reason: &str| {
        let name = format!("retaind_mqtt_connects_refused_total{{reason=\"{reason}\"}}");
        common::metric_value(&page, &name)
    };
    assert_eq!(refused("server_busy"), 3.0);
    assert_eq!(refused("bad_credentials"), 2.0);
}

/// `--mqtt-publish-rate-per-principal` is one bucket for all of a principal's connections
/// (here one publish per 100 s): its second connection's first publish is over it (PUBACK
/// 0x97, nothing stored), while another principal publishes from its own bucket.
#[tokio::test]
async fn a_principals_connections_share_its_publish_rate_and_another_principal_has_its_own() {
    let (_dir, principals) = fleet_and_other("", "");
    let app = app_with(|c| {
        c.principals = Some(principals.clone());
        c.mqtt_publish_rate_per_principal = 0.01;
    })
    .await;
    let login = |id: &str, user: &str| build::connect_with_login(id, Some(&[][..]), user, b"pw");
    let (mut f1, _) = Raw::connect(&app, &login("f1", "fleet")).await;
    let (mut f2, _) = Raw::connect(&app, &login("f2", "fleet")).await;
    let (mut o1, _) = Raw::connect(&app, &login("o1", "other")).await;
    let publish = async |raw: &mut Raw, topic: &str| {
        raw.send(&build::publish(topic, 1, true, false, 1, Some(&[]), b"x"))
            .await;
        raw.expect(4).await.ack_reason()
    };
    assert_eq!(publish(&mut f1, "r/f1").await, 0);
    assert_eq!(publish(&mut f2, "r/f2").await, 0x97);
    assert_eq!(publish(&mut o1, "r/o1").await, 0);
    assert_eq!(publish(&mut f1, "r/f1-again").await, 0x97);
    for (topic, stored) in [
        ("r/f1", true),
        ("r/f2", false),
        ("r/o1", true),
        ("r/f1-again", false),
    ] {
        assert_eq!(app.stored_payload(topic).await.is_some(), stored, "{topic}");
    }
    let page = app.running.as_ref().unwrap().broker.metrics().render();
    assert_eq!(
        common::metric_value(
            &page,
            "retaind_mqtt_messages_dropped_total{reason=\"principal_publish_rate\"}"
        ),
        2.0
    );
}
