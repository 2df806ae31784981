//! MQTT 5 features over real sockets against the real server: HTTP publishes relayed with their
//! MQTT 5 properties, topic aliases, subscription identifiers, no local, shared subscriptions,
//! flow control and packet size limits. Sessions and Wills are in `mqtt_session.rs`.

mod common;

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::mqtt::raw::build::prop_u32;
use common::mqtt::raw::{Raw, build};
use common::mqtt::{Qos5, V5, p5, v5_options};
use common::{Backend, TestApp, encode, spawn_app};

async fn app() -> TestApp {
    spawn_app(Backend::Postgres).await
}

fn prop_u16(id: u8, v: u16) -> Vec<u8> {
    let mut out = vec![id];
    out.extend(v.to_be_bytes());
    out
}

const RECEIVE_MAXIMUM: u8 = 0x21;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const TOPIC_ALIAS: u8 = 0x23;

async fn marker(app: &TestApp, topic: &str) {
    let res = app
        .publish(format!("/topics/{}?qos=1", encode(topic)), "marker")
        .await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn connack_advertises_limits_and_features() {
    let app = app().await;
    let (_c, ack) = V5::connect(v5_options(&app, "c")).await;
    let props = ack.properties.expect("CONNACK properties");
    assert_eq!(props.topic_alias_max, Some(64));
    assert_eq!(props.receive_max, Some(1024));
    assert_eq!(props.max_packet_size, Some(256 * 1024));
    assert_ne!(props.retain_available, Some(0));
    assert_ne!(props.shared_subscription_available, Some(0));
    assert_ne!(props.subscription_identifiers_available, Some(0));
}

#[tokio::test]
async fn empty_client_id_is_assigned_in_connack() {
    let app = app().await;
    let (_c, ack) = V5::connect(v5_options(&app, "")).await;
    let id = ack.properties.and_then(|p| p.assigned_client_identifier);
    assert!(id.is_some_and(|id| !id.is_empty()), "no assigned client id");
}

#[tokio::test]
async fn http_publish_is_relayed_with_every_mqtt5_property() {
    let app = app().await;
    let (mut s, _) = V5::connect(v5_options(&app, "s")).await;
    s.subscribe("rel/t", Qos5::AtLeastOnce).await;
    let res = app
        .http
        .post(app.url(
            "/topics/rel%2Ft?qos=1&contentType=application%2Fjson&responseTopic=rel%2Freply&messageExpiry=60",
        ))
        .header("x-amz-mqtt5-user-properties", B64.encode(r#"[{"k":"v"},{"k":"w"}]"#))
        .header("x-amz-mqtt5-correlation-data", B64.encode([1u8, 2, 3]))
        .header("x-amz-mqtt5-payload-format-indicator", "UTF8_DATA")
        .body(r#"{"a":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let p = s.next_publish().await;
    assert_eq!(
        (&p.topic[..], p.qos, p.retain),
        (&b"rel/t"[..], Qos5::AtLeastOnce, false)
    );
    assert_eq!(&p.payload[..], br#"{"a":1}"#);
    let props = p.properties.expect("properties");
    assert_eq!(
        props.user_properties,
        vec![
            ("k".to_owned(), "v".to_owned()),
            ("k".to_owned(), "w".to_owned())
        ]
    );
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(props.response_topic.as_deref(), Some("rel/reply"));
    assert_eq!(props.correlation_data.as_deref(), Some(&[1u8, 2, 3][..]));
    assert_eq!(props.payload_format_indicator, Some(1));
    assert_eq!(props.message_expiry_interval, Some(60));
}

#[tokio::test]
async fn mqtt5_publish_properties_are_forwarded_to_subscribers() {
    let app = app().await;
    let (mut s, _) = V5::connect(v5_options(&app, "s")).await;
    s.subscribe("fw", Qos5::AtLeastOnce).await;
    let (mut c, _) = V5::connect(v5_options(&app, "p")).await;
    let sent = p5::PublishProperties {
        user_properties: vec![("a".into(), "1".into())],
        content_type: Some("text/plain".into()),
        response_topic: Some("fw/reply".into()),
        correlation_data: Some(vec![9u8, 9].into()),
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    c.publish_with("fw", Qos5::AtLeastOnce, false, b"hi", sent.clone())
        .await;
    let got = s.next_publish().await.properties.expect("properties");
    assert_eq!(got.user_properties, sent.user_properties);
    assert_eq!(got.content_type, sent.content_type);
    assert_eq!(got.response_topic, sent.response_topic);
    assert_eq!(got.correlation_data, sent.correlation_data);
    assert_eq!(got.payload_format_indicator, Some(1));
}

#[tokio::test]
async fn inbound_topic_alias_resolves_to_the_topic_it_was_set_with() {
    let app = app().await;
    let (mut s, _) = V5::connect(v5_options(&app, "s")).await;
    s.subscribe("alias/t", Qos5::AtLeastOnce).await;
    let (mut raw, _) = Raw::connect(&app, &build::connect("p", true, 60, Some(&[]))).await;
    let alias = prop_u16(TOPIC_ALIAS, 3);
    raw.send(&build::publish(
        "alias/t",
        1,
        false,
        false,
        1,
        Some(&alias),
        b"first",
    ))
    .await;
    raw.expect(4).await;
    raw.send(&build::publish(
        "",
        1,
        true,
        false,
        2,
        Some(&alias),
        b"second",
    ))
    .await;
    let ack = raw.expect(4).await;
    assert_eq!(ack.ack_reason(), 0x00, "{ack:?}");
    for want in [&b"first"[..], b"second"] {
        let p = s.next_publish().await;
        assert_eq!((&p.topic[..], &p.payload[..]), (&b"alias/t"[..], want));
    }
    let stored: serde_json::Value = app.get_json("/retainedMessage/alias%2Ft").await;
    assert_eq!(stored["payload"], B64.encode("second"));
}

#[tokio::test]
async fn topic_alias_above_the_maximum_disconnects_with_0x94_and_stores_nothing() {
    let app = app().await;
    let (mut raw, _) = Raw::connect(&app, &build::connect("p", true, 60, Some(&[]))).await;
    let alias = prop_u16(TOPIC_ALIAS, 65);
    raw.send(&build::publish("t", 1, true, false, 1, Some(&alias), b"x"))
        .await;
    let got = raw.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].disconnect_reason(), 0x94);
    assert_eq!(app.snapshot().await, vec![]);
}

#[tokio::test]
async fn topic_alias_never_set_is_a_protocol_error_0x82() {
    let app = app().await;
    let (mut raw, _) = Raw::connect(&app, &build::connect("p", true, 60, Some(&[]))).await;
    let alias = prop_u16(TOPIC_ALIAS, 5);
    raw.send(&build::publish("", 1, true, false, 1, Some(&alias), b"x"))
        .await;
    let got = raw.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].disconnect_reason(), 0x82);
    assert_eq!(app.snapshot().await, vec![]);
}

#[tokio::test]
async fn overlapping_subscriptions_get_one_copy_with_every_identifier_at_the_highest_qos() {
    let app = app().await;
    let (mut s, _) = V5::connect(v5_options(&app, "s")).await;
    let with_id = |id| {
        Some(p5::SubscribeProperties {
            id: Some(id),
            user_properties: vec![],
        })
    };
    s.subscribe_filter(p5::Filter::new("sid/#", Qos5::AtMostOnce), with_id(7))
        .await;
    s.subscribe_filter(p5::Filter::new("sid/a", Qos5::AtLeastOnce), with_id(9))
        .await;
    let (mut c, _) = V5::connect(v5_options(&app, "p")).await;
    c.publish("sid/a", Qos5::AtLeastOnce, false, b"one").await;
    c.publish("sid/a", Qos5::AtLeastOnce, false, b"two").await;
    let p = s.next_publish().await;
    assert_eq!((&p.payload[..], p.qos), (&b"one"[..], Qos5::AtLeastOnce));
    let ids: BTreeSet<usize> = p
        .properties
        .expect("properties")
        .subscription_identifiers
        .into_iter()
        .collect();
    assert_eq!(ids, BTreeSet::from([7, 9]));
    assert_eq!(
        &s.next_publish().await.payload[..],
        b"two",
        "a second copy of 'one'"
    );
}

#[tokio::test]
async fn retained_delivery_on_subscribe_carries_the_subscription_identifier() {
    let app = app().await;
    app.retain("rid", "v").await;
    let (mut s, _) = V5::connect(v5_options(&app, "s")).await;
    let props = p5::SubscribeProperties {
        id: Some(42),
        user_properties: vec![],
    };
    s.subscribe_filter(p5::Filter::new("rid", Qos5::AtLeastOnce), Some(props))
        .await;
    let p = s.next_publish().await;
    assert!(p.retain);
    let ids = p.properties.expect("properties").subscription_identifiers;
    assert_eq!(ids, vec![42]);
}

#[tokio::test]
async fn no_local_subscription_does_not_receive_its_own_publishes() {
    let app = app().await;
    let (mut s, _) = V5::connect(v5_options(&app, "s")).await;
    let mut f = p5::Filter::new("nl", Qos5::AtLeastOnce);
    f.nolocal = true;
    s.subscribe_filter(f, None).await;
    s.publish("nl", Qos5::AtLeastOnce, false, b"own").await;
    marker(&app, "nl").await;
    assert_eq!(&s.next_publish().await.payload[..], b"marker");
    // Without no local, the same client does get its own publish.
    let (mut t, _) = V5::connect(v5_options(&app, "t")).await;
    t.subscribe("nl2", Qos5::AtLeastOnce).await;
    t.publish("nl2", Qos5::AtLeastOnce, false, b"own").await;
    assert_eq!(&t.next_publish().await.payload[..], b"own");
}

/// Collects everything `client` receives into `tx` until the test ends.
fn drain(
    mut client: V5,
    tx: tokio::sync::mpsc::UnboundedSender<(&'static str, Vec<u8>)>,
    name: &'static str,
) {
    tokio::spawn(async move {
        while let Ok(e) = client.events.poll().await {
            if let rumqttc::v5::Event::Incoming(p5::Packet::Publish(p)) = e
                && tx.send((name, p.payload.to_vec())).is_err()
            {
                return;
            }
        }
    });
}

#[tokio::test]
async fn shared_subscription_delivers_each_message_to_one_member_per_group() {
    let app = app().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (name, filter) in [
        ("g1", "$share/g/sh/#"),
        ("g2", "$share/g/sh/#"),
        ("h1", "$share/h/sh/#"),
    ] {
        let (mut c, _) = V5::connect(v5_options(&app, name)).await;
        let codes = c.subscribe(filter, Qos5::AtLeastOnce).await;
        assert_eq!(
            codes,
            vec![p5::SubscribeReasonCode::Success(Qos5::AtLeastOnce)]
        );
        drain(c, tx.clone(), name);
    }
    let (mut c, _) = V5::connect(v5_options(&app, "p")).await;
    for i in 0..10 {
        c.publish("sh/x", Qos5::AtLeastOnce, false, i.to_string().as_bytes())
            .await;
    }
    let mut g = Vec::new();
    let mut h = Vec::new();
    common::mqtt::within("20 deliveries", async {
        while g.len() + h.len() < 20 {
            let (name, payload) = rx.recv().await.unwrap();
            let group = if name == "h1" { &mut h } else { &mut g };
            group.push(String::from_utf8(payload).unwrap());
        }
    })
    .await;
    let all: BTreeSet<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(g.len(), 10, "group g got {g:?}");
    assert_eq!(g.iter().cloned().collect::<BTreeSet<_>>(), all);
    assert_eq!(h.iter().cloned().collect::<BTreeSet<_>>(), all);
}

#[tokio::test]
async fn shared_subscription_gets_no_retained_messages() {
    let app = app().await;
    app.retain("shr", "kept").await;
    let (mut c, _) = V5::connect(v5_options(&app, "solo")).await;
    c.subscribe("$share/solo/shr", Qos5::AtLeastOnce).await;
    marker(&app, "shr").await;
    assert_eq!(&c.next_publish().await.payload[..], b"marker");
}

#[tokio::test]
async fn invalid_utf8_with_payload_format_indicator_gets_puback_0x99() {
    let app = app().await;
    let (mut c, _) = V5::connect(v5_options(&app, "p")).await;
    let props = p5::PublishProperties {
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    let reason = c
        .publish_with("pfi", Qos5::AtLeastOnce, true, &[0xFF, 0xFE], props)
        .await;
    assert_eq!(reason, Some(p5::PubAckReason::PayloadFormatInvalid));
    assert_eq!(app.snapshot().await, vec![]);
}

#[tokio::test]
async fn qos0_invalid_utf8_with_payload_format_indicator_disconnects_with_0x99() {
    let app = app().await;
    let (mut raw, _) = Raw::connect(&app, &build::connect("p", true, 60, Some(&[]))).await;
    raw.send(&build::publish(
        "pfi",
        0,
        true,
        false,
        0,
        Some(&[0x01, 0x01]),
        &[0xFF],
    ))
    .await;
    let got = raw.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].disconnect_reason(), 0x99);
    assert_eq!(app.snapshot().await, vec![]);
}

#[tokio::test]
async fn client_exceeding_the_receive_maximum_is_disconnected_with_0x93() {
    let app = app().await;
    let (probe, ack) = V5::connect(v5_options(&app, "probe")).await;
    drop(probe);
    let max = ack
        .properties
        .and_then(|p| p.receive_max)
        .unwrap_or(u16::MAX);
    let (mut raw, _) = Raw::connect(&app, &build::connect("p", true, 60, Some(&[]))).await;
    let mut burst = Vec::new();
    for pkid in 1..=max + 1 {
        burst.extend(build::publish("rm", 2, false, false, pkid, Some(&[]), b"x"));
    }
    raw.send(&burst).await;
    let got = raw.until_closed().await;
    let (last, recs) = got.split_last().expect("packets before close");
    assert_eq!(last.disconnect_reason(), 0x93);
    assert_eq!(
        recs.len(),
        usize::from(max),
        "PUBRECs before the DISCONNECT"
    );
    assert!(recs.iter().all(|p| p.kind() == 5), "{recs:?}");
}

#[tokio::test]
async fn outbound_publishes_respect_the_clients_receive_maximum() {
    let app = app().await;
    let connect = build::connect("slow", true, 60, Some(&prop_u16(RECEIVE_MAXIMUM, 2)));
    let (mut raw, _) = Raw::connect(&app, &connect).await;
    raw.send(&build::subscribe(1, "rx", 1, Some(&[]))).await;
    raw.expect(9).await;
    let (mut c, _) = V5::connect(v5_options(&app, "p")).await;
    for i in 0..4u8 {
        c.publish("rx", Qos5::AtLeastOnce, false, &[b'0' + i]).await;
    }
    let first = raw.expect(3).await.publish(true);
    let second = raw.expect(3).await.publish(true);
    // All four are routed (their PUBACKs came back); a third in flight would precede the PINGRESP.
    raw.send(&[0xC0, 0x00]).await;
    raw.expect(13).await;
    raw.send(&build::ack(0x40, first.pkid)).await;
    assert_eq!(raw.expect(3).await.publish(true).payload, b"2");
    raw.send(&build::ack(0x40, second.pkid)).await;
    assert_eq!(raw.expect(3).await.publish(true).payload, b"3");
}

#[tokio::test]
async fn messages_over_the_clients_maximum_packet_size_are_not_sent_to_it() {
    let app = app().await;
    let connect = build::connect("small", true, 60, Some(&prop_u32(MAXIMUM_PACKET_SIZE, 100)));
    let (mut raw, _) = Raw::connect(&app, &connect).await;
    raw.send(&build::subscribe(1, "big/#", 1, Some(&[]))).await;
    raw.expect(9).await;
    let (mut c, _) = V5::connect(v5_options(&app, "p")).await;
    c.publish("big/1", Qos5::AtLeastOnce, false, &[b'x'; 500])
        .await;
    c.publish("big/1", Qos5::AtLeastOnce, false, b"small").await;
    let p = raw.expect(3).await.publish(true);
    assert_eq!(p.payload, b"small");
}

/// The Maximum Packet Size counts the whole packet, fixed header included [MQTT-3.1.2-24],
/// and a packet of exactly that size is sent: to "big/1" at QoS 1 without properties, a PUBLISH
/// is 12 bytes and its payload, so a client whose maximum is 100 gets 88 bytes of payload and
/// not 89. (rmqtt-codec, which wrote these packets before, kept five bytes of margin and
/// refused both.)
#[tokio::test]
async fn a_publish_one_byte_over_the_clients_maximum_packet_size_is_not_sent() {
    let app = app().await;
    let connect = build::connect("exact", true, 60, Some(&prop_u32(MAXIMUM_PACKET_SIZE, 100)));
    let (mut raw, _) = Raw::connect(&app, &connect).await;
    raw.send(&build::subscribe(1, "big/#", 1, Some(&[]))).await;
    raw.expect(9).await;
    let (mut c, _) = V5::connect(v5_options(&app, "p")).await;
    c.publish("big/1", Qos5::AtLeastOnce, false, &[b'x'; 89])
        .await;
    c.publish("big/1", Qos5::AtLeastOnce, false, &[b'y'; 88])
        .await;
    let packet = raw.expect(3).await;
    // One byte of type and flags, one of remaining length, and the rest.
    assert_eq!(packet.body.len(), 98, "a PUBLISH of 100 bytes");
    assert_eq!(packet.publish(true).payload, vec![b'y'; 88]);
}
