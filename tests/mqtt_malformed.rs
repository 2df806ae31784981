//! Malformed input and protocol violations over raw sockets against the real server. Each test
//! checks the answer (an MQTT 5 DISCONNECT reason code, or for 3.1.1 a closed connection), that
//! nothing reached the store, and that an unrelated session keeps working.

mod common;

use common::mqtt::raw::{Raw, build};
use common::mqtt::{V3, v3_options};
use common::{Backend, TestApp, spawn_app};
use rumqttc::QoS;

async fn app() -> TestApp {
    spawn_app(Backend::Sqlite).await
}

fn v5_connect(id: &str) -> Vec<u8> {
    build::connect(id, true, 60, Some(&[]))
}

async fn assert_nothing_stored(app: &TestApp) {
    assert_eq!(app.snapshot().await, Vec::new());
}

/// Sends `bad` after a v5 CONNECT; the broker must answer DISCONNECT `reason` and close,
/// store nothing, and keep serving an unrelated subscriber.
async fn v5_violation_disconnects_with(bad: &[u8], reason: u8) {
    let app = app().await;
    let (mut bystander, _) = V3::connect(v3_options(&app, "bystander")).await;
    bystander.subscribe("ok", QoS::AtLeastOnce).await;
    let (mut raw, _) = Raw::connect(&app, &v5_connect("bad")).await;
    raw.send(bad).await;
    let got = raw.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].disconnect_reason(), reason, "{got:?}");
    assert_nothing_stored(&app).await;
    let (mut publ, _) = V3::connect(v3_options(&app, "pub")).await;
    publ.publish("ok", QoS::AtLeastOnce, false, b"still here")
        .await;
    assert_eq!(&bystander.next_publish().await.payload[..], b"still here");
}

/// The same with a v3 CONNECT: v3 has no DISCONNECT from the server, so the connection just closes.
async fn v3_violation_closes(bad: &[u8]) {
    let app = app().await;
    let (mut bystander, _) = V3::connect(v3_options(&app, "bystander")).await;
    bystander.subscribe("ok", QoS::AtLeastOnce).await;
    let (mut raw, _) = Raw::connect(&app, &build::connect("bad", true, 60, None)).await;
    raw.send(bad).await;
    assert_eq!(raw.until_closed().await, vec![]);
    assert_nothing_stored(&app).await;
    let (mut publ, _) = V3::connect(v3_options(&app, "pub")).await;
    publ.publish("ok", QoS::AtLeastOnce, false, b"still here")
        .await;
    assert_eq!(&bystander.next_publish().await.payload[..], b"still here");
}

#[tokio::test]
async fn v5_remaining_length_over_four_bytes_is_malformed_0x81() {
    v5_violation_disconnects_with(&[0x31, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], 0x81).await;
}

#[tokio::test]
async fn v3_remaining_length_over_four_bytes_closes() {
    v3_violation_closes(&[0x31, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await;
}

#[tokio::test]
async fn v5_wildcard_in_publish_topic_is_refused_with_0x90() {
    v5_violation_disconnects_with(
        &build::publish("a/+", 0, true, false, 0, Some(&[]), b"x"),
        0x90,
    )
    .await;
}

#[tokio::test]
async fn v5_qos1_wildcard_in_publish_topic_is_refused_with_0x90() {
    v5_violation_disconnects_with(
        &build::publish("a/#", 1, true, false, 1, Some(&[]), b"x"),
        0x90,
    )
    .await;
}

#[tokio::test]
async fn v3_wildcard_in_publish_topic_closes() {
    v3_violation_closes(&build::publish("a/#", 1, true, false, 1, None, b"x")).await;
}

#[tokio::test]
async fn v5_publish_with_qos_3_is_malformed_0x81() {
    let mut bad = build::publish("t", 2, true, false, 1, Some(&[]), b"x");
    bad[0] |= 0x06;
    v5_violation_disconnects_with(&bad, 0x81).await;
}

#[tokio::test]
async fn v3_publish_with_qos_3_closes() {
    let mut bad = build::publish("t", 2, true, false, 1, None, b"x");
    bad[0] |= 0x06;
    v3_violation_closes(&bad).await;
}

#[tokio::test]
async fn v5_invalid_utf8_topic_is_malformed_0x81() {
    let mut body = vec![0x00, 0x02, 0xC3, 0x28, 0x00];
    body.extend_from_slice(b"x");
    v5_violation_disconnects_with(&build::packet(0x31, &body), 0x81).await;
}

#[tokio::test]
async fn v5_subscribe_with_reserved_flags_is_malformed_0x81() {
    let mut bad = build::subscribe(1, "t", 0, Some(&[]));
    bad[0] = 0x80;
    v5_violation_disconnects_with(&bad, 0x81).await;
}

#[tokio::test]
async fn v5_second_connect_is_a_protocol_error_0x82() {
    v5_violation_disconnects_with(&v5_connect("again"), 0x82).await;
}

#[tokio::test]
async fn v3_second_connect_closes() {
    v3_violation_closes(&build::connect("again", true, 60, None)).await;
}

#[tokio::test]
async fn v5_packet_over_the_maximum_size_is_refused_with_0x95() {
    let big = vec![b'x'; 300 * 1024];
    v5_violation_disconnects_with(
        &build::publish("big", 0, true, false, 0, Some(&[]), &big),
        0x95,
    )
    .await;
}

#[tokio::test]
async fn v3_packet_over_the_maximum_size_closes() {
    let big = vec![b'x'; 300 * 1024];
    v3_violation_closes(&build::publish("big", 0, true, false, 0, None, &big)).await;
}

#[tokio::test]
async fn v5_topic_over_the_length_limit_gets_puback_0x90_and_stays_connected() {
    let app = app().await;
    let (mut raw, _) = Raw::connect(&app, &v5_connect("long")).await;
    let topic = "t".repeat(300);
    raw.send(&build::publish(&topic, 1, true, false, 4, Some(&[]), b"x"))
        .await;
    let ack = raw.expect(4).await;
    assert_eq!((&ack.body[..2], ack.ack_reason()), (&[0u8, 4][..], 0x90));
    raw.send(&[0xC0, 0x00]).await;
    raw.expect(13).await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn garbage_from_one_client_leaves_other_sessions_working() {
    let app = app().await;
    let (mut sub, _) = V3::connect(v3_options(&app, "sub")).await;
    sub.subscribe("live", QoS::AtLeastOnce).await;
    let mut raw = Raw::open(&app).await;
    raw.send(&[0xFF; 64]).await;
    assert_eq!(raw.until_closed().await, vec![]);
    let (mut publ, _) = V3::connect(v3_options(&app, "pub")).await;
    publ.publish("live", QoS::AtLeastOnce, false, b"fine").await;
    assert_eq!(&sub.next_publish().await.payload[..], b"fine");
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn v5_topic_containing_nul_is_malformed_0x81() {
    // [MQTT-1.5.4-2] U+0000 in a UTF-8 string makes the packet malformed.
    v5_violation_disconnects_with(
        &build::publish("a\0b", 0, true, false, 0, Some(&[]), b"x"),
        0x81,
    )
    .await;
}

#[tokio::test]
async fn v5_pingreq_with_a_body_is_malformed_0x81() {
    // PINGREQ has no variable header or payload: remaining length must be 0.
    v5_violation_disconnects_with(&[0xC0, 0x01, 0x00], 0x81).await;
}

#[tokio::test]
async fn v3_pingreq_with_a_body_closes() {
    v3_violation_closes(&[0xC0, 0x01, 0x00]).await;
}

#[tokio::test]
async fn v5_qos0_publish_with_dup_set_is_refused() {
    // [MQTT-3.3.1-2] DUP must be 0 at QoS 0. 5.0 names no reason code for it: Malformed Packet
    // (as Mosquitto answers) or Protocol Error are both faithful.
    let app = app().await;
    let (mut raw, _) = Raw::connect(&app, &v5_connect("dup0")).await;
    raw.send(&build::publish("d", 0, true, true, 0, Some(&[]), b"x"))
        .await;
    let got = raw.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    let reason = got[0].disconnect_reason();
    assert!(matches!(reason, 0x81 | 0x82), "reason {reason:#04x}");
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn v3_qos0_publish_with_dup_set_closes() {
    v3_violation_closes(&build::publish("d", 0, true, true, 0, None, b"x")).await;
}

#[tokio::test]
async fn v5_shared_subscription_with_no_local_is_a_protocol_error_0x82() {
    // [MQTT-3.8.3-4]
    v5_violation_disconnects_with(&build::subscribe(1, "$share/g/x", 0x05, Some(&[])), 0x82).await;
}

#[tokio::test]
async fn v5_retain_handling_3_is_malformed_0x81() {
    v5_violation_disconnects_with(&build::subscribe(1, "x", 0x31, Some(&[])), 0x81).await;
}

#[tokio::test]
async fn v5_pubrel_with_wrong_flags_is_malformed_0x81() {
    v5_violation_disconnects_with(&[0x60, 0x02, 0x00, 0x01], 0x81).await;
}

#[tokio::test]
async fn v3_connect_with_the_reserved_flag_set_is_closed_without_connack() {
    let app = app().await;
    let mut raw = Raw::open(&app).await;
    let mut connect = build::connect("r", true, 60, None);
    connect[9] |= 0x01; // [MQTT-3.1.2-3]
    raw.send(&connect).await;
    assert_eq!(raw.until_closed().await, vec![]);
}

/// An MQTT 5 CONNECT the codec refuses is answered with its CONNACK before the close
/// [MQTT-4.13.1-1], so the client learns why; nothing of it (its retained Will) is stored and
/// an unrelated session keeps working.
async fn v5_connect_refused_with(bad: &[u8], reason: u8) {
    let app = app().await;
    let (mut bystander, _) = V3::connect(v3_options(&app, "bystander")).await;
    bystander.subscribe("ok", QoS::AtLeastOnce).await;
    let mut raw = Raw::open(&app).await;
    raw.send(bad).await;
    let got = raw.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].kind(), got[0].body[1]), (2, reason), "{got:?}");
    assert_nothing_stored(&app).await;
    let (mut publ, _) = V3::connect(v3_options(&app, "pub")).await;
    publ.publish("ok", QoS::AtLeastOnce, false, b"still here")
        .await;
    assert_eq!(&bystander.next_publish().await.payload[..], b"still here");
}

/// A retained Will, so that a CONNECT taken in by mistake would leave a trace in the store.
fn v5_connect_with_will(props: &[u8]) -> Vec<u8> {
    let will = build::Will {
        topic: "status/bad",
        payload: b"offline",
        qos: 1,
        retain: true,
        props: &[],
    };
    build::connect_with_will("bad", true, 60, Some(props), will)
}

#[tokio::test]
async fn v5_connect_with_receive_maximum_0_gets_connack_0x81() {
    // Receive Maximum (0x21) 0: a Protocol Error (MQTT 5, 3.1.2.11.3).
    v5_connect_refused_with(&v5_connect_with_will(&[0x21, 0, 0]), 0x81).await;
}

#[tokio::test]
async fn v5_connect_with_a_property_twice_gets_connack_0x81() {
    let twice = [0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]; // Session Expiry Interval twice
    v5_connect_refused_with(&v5_connect_with_will(&twice), 0x81).await;
}

#[tokio::test]
async fn v5_connect_with_will_qos_3_gets_connack_0x81() {
    let mut connect = v5_connect_with_will(&[]);
    connect[9] |= 0x18; // Will QoS 3 [MQTT-3.1.2-12]
    v5_connect_refused_with(&connect, 0x81).await;
}

#[tokio::test]
async fn v5_connect_over_the_maximum_packet_size_gets_connack_0x95() {
    // A user property of 300 KiB, past the default 256 KiB.
    let mut props = vec![0x26];
    props.extend(build::string("k"));
    props.extend(build::string(vec![b'v'; 60_000]));
    let props = props.repeat(5);
    v5_connect_refused_with(&v5_connect_with_will(&props), 0x95).await;
}

/// Retained publishes read in the same burst as a malformed packet are still committed: the
/// broker closes the connection, but what it had accepted before the bad packet is kept.
#[tokio::test]
async fn retained_publishes_read_before_a_malformed_packet_are_still_stored() {
    let app = app().await;
    let (mut raw, _) = Raw::connect(&app, &v5_connect("bad")).await;
    let mut burst = build::publish("kept/1", 1, true, false, 1, Some(&[]), b"one");
    burst.extend(build::publish(
        "kept/2",
        1,
        true,
        false,
        2,
        Some(&[]),
        b"two",
    ));
    burst.extend([0x31, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
    raw.send(&burst).await;
    let got = raw.until_closed().await;
    assert_eq!(
        got.last().map(|p| p.disconnect_reason()),
        Some(0x81),
        "{got:?}"
    );
    // The commit may finish after the connection has closed.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    let topics = loop {
        let topics: Vec<String> = app.snapshot().await.into_iter().map(|(t, _)| t).collect();
        if topics.len() == 2 || tokio::time::Instant::now() > deadline {
            break topics;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(topics, ["kept/1", "kept/2"]);
}
