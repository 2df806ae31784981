//! [MQTT-1.5.4-2] (3.1.1: MQTT-1.5.3-2) U+0000 in any UTF-8 string a client sends makes the
//! packet malformed, in every packet type and both protocol versions; and the other rules
//! that the decoder leaves to retaind (3.1.1 password without user name, reserved
//! subscription option bits, a client's Subscription Identifier). Each test checks the answer
//! (reason code, or a plain close for 3.1.1), that the connection closed, and that the stored
//! state is what it was.

mod common;

use common::mqtt::raw::{Raw, RawPacket, build};
use common::{Backend, TestApp, spawn_app};

const NUL: &str = "a\0b";

/// An app holding one retained message, and the picture of its store.
async fn seeded() -> (TestApp, Vec<(String, serde_json::Value)>) {
    let app = spawn_app(Backend::Sqlite).await;
    app.retain("seed", "kept").await;
    let before = app.snapshot().await;
    (app, before)
}

fn string_prop(id: u8, s: &str) -> Vec<u8> {
    let mut out = vec![id];
    out.extend(build::string(s));
    out
}

fn user_prop(key: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x26];
    out.extend(build::string(key));
    out.extend(build::string(value));
    out
}

const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const REASON_STRING: u8 = 0x1F;
const AUTH_METHOD: u8 = 0x15;
const SUBSCRIPTION_ID: u8 = 0x0B;

/// A retained QoS 1 MQTT 5 PUBLISH with these properties: stored, were it accepted.
fn retained_publish(topic: &str, props: &[u8]) -> Vec<u8> {
    build::publish(topic, 1, true, false, 1, Some(props), b"payload")
}

/// After a good MQTT 5 CONNECT, `bad` gets DISCONNECT `reason`, then the connection closes,
/// and the store is unchanged.
async fn v5_packet_disconnects(bad: &[u8], reason: u8) {
    let (app, before) = seeded().await;
    let (mut raw, _) = Raw::connect(&app, &build::connect("c", true, 60, Some(&[]))).await;
    raw.send(bad).await;
    let got = raw.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].disconnect_reason(), reason, "{got:?}");
    assert_eq!(app.snapshot().await, before);
}

/// After a good 3.1.1 CONNECT, `bad` closes the connection without an answer; store unchanged.
async fn v3_packet_closes(bad: &[u8]) {
    let (app, before) = seeded().await;
    let (mut raw, _) = Raw::connect(&app, &build::connect("c", true, 60, None)).await;
    raw.send(bad).await;
    assert_eq!(raw.until_closed().await, Vec::<RawPacket>::new());
    assert_eq!(app.snapshot().await, before);
}

/// `connect` is answered with CONNACK `code` (or nothing, for `None`), then closed; store
/// unchanged.
async fn connect_refused(connect: &[u8], code: Option<u8>) {
    let (app, before) = seeded().await;
    let mut raw = Raw::open(&app).await;
    raw.send(connect).await;
    let got = raw.until_closed().await;
    match code {
        None => assert_eq!(got, Vec::<RawPacket>::new()),
        Some(code) => {
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!((got[0].kind(), got[0].body[1]), (2, code), "{got:?}");
        }
    }
    assert_eq!(app.snapshot().await, before);
}

fn will<'a>(props: &'a [u8], topic: &'a str) -> build::Will<'a> {
    build::Will {
        topic,
        payload: b"gone",
        qos: 1,
        retain: true,
        props,
    }
}

// CONNECT, MQTT 5.

#[tokio::test]
async fn v5_client_id_with_nul_gets_connack_0x85() {
    connect_refused(&build::connect(NUL, true, 60, Some(&[])), Some(0x85)).await;
}

#[tokio::test]
async fn v5_user_name_with_nul_gets_connack_0x81() {
    let connect = build::connect_with_login("c", Some(&[]), NUL, b"pw");
    connect_refused(&connect, Some(0x81)).await;
}

#[tokio::test]
async fn v5_connect_user_property_with_nul_gets_connack_0x81() {
    let connect = build::connect("c", true, 60, Some(&user_prop("k", NUL)));
    connect_refused(&connect, Some(0x81)).await;
}

#[tokio::test]
async fn v5_authentication_method_with_nul_gets_connack_0x81() {
    let connect = build::connect("c", true, 60, Some(&string_prop(AUTH_METHOD, NUL)));
    connect_refused(&connect, Some(0x81)).await;
}

#[tokio::test]
async fn v5_will_topic_with_nul_gets_connack_0x81() {
    let connect = build::connect_with_will("c", true, 60, Some(&[]), will(&[], NUL));
    connect_refused(&connect, Some(0x81)).await;
}

#[tokio::test]
async fn v5_will_properties_with_nul_get_connack_0x81() {
    for props in [
        user_prop(NUL, "v"),
        string_prop(CONTENT_TYPE, NUL),
        string_prop(RESPONSE_TOPIC, NUL),
    ] {
        let connect = build::connect_with_will("c", true, 60, Some(&[]), will(&props, "w"));
        connect_refused(&connect, Some(0x81)).await;
    }
}

// CONNECT, MQTT 3.1.1.

#[tokio::test]
async fn v3_client_id_with_nul_gets_connack_0x02() {
    // [MQTT-3.1.3-9] Identifier rejected, then the connection closes.
    connect_refused(&build::connect(NUL, true, 60, None), Some(0x02)).await;
}

#[tokio::test]
async fn v3_user_name_with_nul_closes() {
    connect_refused(&build::connect_with_login("c", None, NUL, b"pw"), None).await;
}

#[tokio::test]
async fn v3_will_topic_with_nul_closes() {
    let connect = build::connect_with_will("c", true, 60, None, will(&[], NUL));
    connect_refused(&connect, None).await;
}

#[tokio::test]
async fn v3_password_without_user_name_closes() {
    // [MQTT-3.1.2-22] flags: clean session and password, no user name.
    let mut body = build::string("MQTT");
    body.extend([4, 0x02 | 0x40, 0, 60]);
    body.extend(build::string("c"));
    body.extend(build::string("pw"));
    connect_refused(&build::packet(0x10, &body), None).await;
}

#[tokio::test]
async fn v5_password_without_user_name_is_allowed() {
    // MQTT 5 dropped the 3.1.1 rule: a password alone is a valid CONNECT.
    let app = spawn_app(Backend::Sqlite).await;
    let mut body = build::string("MQTT");
    body.extend([5, 0x02 | 0x40, 0, 60, 0]);
    body.extend(build::string("c"));
    body.extend(build::string("pw"));
    let (_raw, ack) = Raw::connect(&app, &build::packet(0x10, &body)).await;
    assert_eq!(ack.body[1], 0x00, "{ack:?}");
}

// PUBLISH.

#[tokio::test]
async fn v5_publish_user_property_with_nul_is_malformed_0x81() {
    v5_packet_disconnects(&retained_publish("t", &user_prop(NUL, "v")), 0x81).await;
    v5_packet_disconnects(&retained_publish("t", &user_prop("k", NUL)), 0x81).await;
}

#[tokio::test]
async fn v5_publish_content_type_with_nul_is_malformed_0x81() {
    v5_packet_disconnects(
        &retained_publish("t", &string_prop(CONTENT_TYPE, NUL)),
        0x81,
    )
    .await;
}

#[tokio::test]
async fn v5_publish_response_topic_with_nul_is_malformed_0x81() {
    let publish = retained_publish("t", &string_prop(RESPONSE_TOPIC, NUL));
    v5_packet_disconnects(&publish, 0x81).await;
}

#[tokio::test]
async fn v3_publish_topic_with_nul_closes() {
    v3_packet_closes(&build::publish(NUL, 1, true, false, 1, None, b"x")).await;
}

#[tokio::test]
async fn v5_publish_from_a_client_with_a_subscription_identifier_is_a_protocol_error_0x82() {
    // [MQTT-3.3.4-6]
    v5_packet_disconnects(&retained_publish("t", &[SUBSCRIPTION_ID, 0x01]), 0x82).await;
}

// SUBSCRIBE and UNSUBSCRIBE.

#[tokio::test]
async fn v5_subscribe_filter_with_nul_is_malformed_0x81() {
    v5_packet_disconnects(&build::subscribe(1, NUL, 0, Some(&[])), 0x81).await;
}

#[tokio::test]
async fn v5_subscribe_user_property_with_nul_is_malformed_0x81() {
    v5_packet_disconnects(
        &build::subscribe(1, "t", 0, Some(&user_prop("k", NUL))),
        0x81,
    )
    .await;
}

#[tokio::test]
async fn v3_subscribe_filter_with_nul_closes() {
    v3_packet_closes(&build::subscribe(1, NUL, 0, None)).await;
}

fn unsubscribe(filter: &str, v5_props: Option<&[u8]>) -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    if let Some(p) = v5_props {
        body.extend(build::props(p));
    }
    body.extend(build::string(filter));
    build::packet(0xA2, &body)
}

#[tokio::test]
async fn v5_unsubscribe_filter_with_nul_is_malformed_0x81() {
    v5_packet_disconnects(&unsubscribe(NUL, Some(&[])), 0x81).await;
}

#[tokio::test]
async fn v5_unsubscribe_user_property_with_nul_is_malformed_0x81() {
    v5_packet_disconnects(&unsubscribe("t", Some(&user_prop(NUL, "v"))), 0x81).await;
}

#[tokio::test]
async fn v3_unsubscribe_filter_with_nul_closes() {
    v3_packet_closes(&unsubscribe(NUL, None)).await;
}

#[tokio::test]
async fn v5_subscription_options_with_reserved_bits_are_malformed_0x81() {
    // [MQTT-3.8.3-5] bits 6 and 7 of the Subscription Options are reserved.
    for options in [0x40, 0x80] {
        v5_packet_disconnects(&build::subscribe(1, "t", options, Some(&[])), 0x81).await;
    }
}

#[tokio::test]
async fn v3_requested_qos_with_reserved_bits_closes() {
    // [MQTT-3-8.3-4] the upper six bits of the Requested QoS byte are reserved.
    for options in [0x04, 0x40, 0x81] {
        v3_packet_closes(&build::subscribe(1, "t", options, None)).await;
    }
}

#[tokio::test]
async fn v3_reserved_bits_in_a_later_filter_close_too() {
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend(build::string("ok"));
    body.push(0x01);
    body.extend(build::string("bad"));
    body.push(0x10);
    v3_packet_closes(&build::packet(0x82, &body)).await;
}

// Acknowledgements, DISCONNECT and AUTH.

/// An MQTT 5 acknowledgement (`first`: PUBACK 0x40, PUBREC 0x50, PUBREL 0x62, PUBCOMP 0x70)
/// with reason Success and these properties.
fn ack_with(first: u8, props: &[u8]) -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    body.push(0x00);
    body.extend(build::props(props));
    build::packet(first, &body)
}

#[tokio::test]
async fn v5_acknowledgement_reason_strings_with_nul_are_malformed_0x81() {
    for first in [0x40, 0x50, 0x62, 0x70] {
        v5_packet_disconnects(&ack_with(first, &string_prop(REASON_STRING, NUL)), 0x81).await;
    }
}

#[tokio::test]
async fn v5_acknowledgement_user_properties_with_nul_are_malformed_0x81() {
    for first in [0x40, 0x50, 0x62, 0x70] {
        v5_packet_disconnects(&ack_with(first, &user_prop("k", NUL)), 0x81).await;
    }
}

fn with_props(first: u8, reason: u8, props: &[u8]) -> Vec<u8> {
    let mut body = vec![reason];
    body.extend(build::props(props));
    build::packet(first, &body)
}

#[tokio::test]
async fn v5_disconnect_reason_string_with_nul_is_malformed_0x81() {
    let disconnect = with_props(0xE0, 0x00, &string_prop(REASON_STRING, NUL));
    v5_packet_disconnects(&disconnect, 0x81).await;
}

#[tokio::test]
async fn v5_disconnect_user_property_with_nul_is_malformed_0x81() {
    v5_packet_disconnects(&with_props(0xE0, 0x00, &user_prop(NUL, "v")), 0x81).await;
}

#[tokio::test]
async fn v5_auth_strings_with_nul_are_malformed_0x81() {
    for props in [
        string_prop(REASON_STRING, NUL),
        string_prop(AUTH_METHOD, NUL),
        user_prop("k", NUL),
    ] {
        v5_packet_disconnects(&with_props(0xF0, 0x18, &props), 0x81).await;
    }
}

/// The Will of a client whose DISCONNECT was malformed is published: the connection did not
/// end normally [MQTT-3.1.2-8].
#[tokio::test]
async fn a_malformed_disconnect_keeps_the_will() {
    let app = spawn_app(Backend::Sqlite).await;
    let connect = build::connect_with_will("c", true, 60, Some(&[]), will(&[], "wills/c"));
    let (mut raw, _) = Raw::connect(&app, &connect).await;
    raw.send(&with_props(0xE0, 0x00, &user_prop(NUL, "v")))
        .await;
    let got = raw.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].disconnect_reason(), 0x81);
    let deadline = tokio::time::Instant::now() + common::mqtt::DEADLINE;
    while app.get("/retainedMessage/wills%2Fc").await.status() != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Will never came"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
