//! The MQTT listener at the protocol level, over real sockets against the real server: CONNECT
//! and client identifiers, takeover, keep alive, the QoS 0/1/2 flows, filters. Malformed input
//! and protocol violations are in `mqtt_malformed.rs`.

mod common;

use std::time::{Duration, Instant};

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

/// The store must be exactly as it was: no retained message slipped in.
async fn assert_nothing_stored(app: &TestApp) {
    assert_eq!(app.snapshot().await, Vec::new());
}

#[tokio::test]
async fn v3_connect_is_accepted_with_connack_0() {
    let app = app().await;
    let (_raw, ack) = Raw::connect(&app, &build::connect("c1", true, 60, None)).await;
    assert_eq!((ack.first, ack.body), (0x20, vec![0x00, 0x00]));
}

#[tokio::test]
async fn v5_connect_is_accepted_with_reason_success() {
    let app = app().await;
    let (_raw, ack) = Raw::connect(&app, &v5_connect("c1")).await;
    assert_eq!(&ack.body[..2], &[0x00, 0x00], "{ack:?}");
}

#[tokio::test]
async fn first_packet_other_than_connect_closes_the_connection_and_stores_nothing() {
    let app = app().await;
    let mut raw = Raw::open(&app).await;
    raw.send(&build::publish("first", 0, true, false, 0, None, b"x"))
        .await;
    assert_eq!(raw.until_closed().await, vec![]);
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn unsupported_protocol_level_gets_connack_0x01_then_close() {
    let app = app().await;
    let mut raw = Raw::open(&app).await;
    let mut connect = build::connect("c1", true, 60, None);
    // Protocol level, after the fixed header and the name; 3 would be MQTT 3.1, which is served.
    connect[8] = 6;
    raw.send(&connect).await;
    let got = raw.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].first, got[0].body.clone()),
        (0x20, vec![0x00, 0x01])
    );
}

#[tokio::test]
async fn v3_empty_client_id_with_clean_session_is_accepted() {
    let app = app().await;
    let (mut raw, ack) = Raw::connect(&app, &build::connect("", true, 60, None)).await;
    assert_eq!(ack.body, vec![0x00, 0x00]);
    raw.send(&[0xC0, 0x00]).await;
    assert_eq!(raw.expect(13).await.body, Vec::<u8>::new());
}

#[tokio::test]
async fn v3_empty_client_id_without_clean_session_is_refused_with_0x02() {
    let app = app().await;
    let mut raw = Raw::open(&app).await;
    raw.send(&build::connect("", false, 60, None)).await;
    let got = raw.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].first, got[0].body.clone()),
        (0x20, vec![0x00, 0x02])
    );
}

#[tokio::test]
async fn v5_empty_client_id_without_clean_start_is_refused_with_0x85() {
    let app = app().await;
    let mut raw = Raw::open(&app).await;
    raw.send(&build::connect("", false, 60, Some(&[]))).await;
    let got = raw.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].kind(), 2, "{got:?}");
    assert_eq!(got[0].body[1], 0x85, "{got:?}");
}

/// MQTT 5 enhanced authentication is not offered: a CONNECT that names an authentication
/// method gets CONNACK 0x8C Bad authentication method and is closed [MQTT-4.12.0-1], rather
/// than let in as if the method had been carried out; neither its Will nor a session is left.
#[tokio::test]
async fn v5_connect_naming_an_authentication_method_is_refused_with_0x8c_leaving_nothing() {
    let app = app().await;
    // Session Expiry Interval (0x11) an hour; Authentication Method (0x15) and Data (0x16).
    let expiry = [0x11, 0, 0, 0x0e, 0x10];
    let mut props = expiry.to_vec();
    props.push(0x15);
    props.extend(build::string("SCRAM-SHA-256"));
    props.push(0x16);
    props.extend(build::string("n,,n=device,r=nonce"));
    let will = build::Will {
        topic: "status/scram",
        payload: b"offline",
        qos: 1,
        retain: true,
        props: &[],
    };
    let mut raw = Raw::open(&app).await;
    raw.send(&build::connect_with_will(
        "scram",
        false,
        60,
        Some(&props),
        will,
    ))
    .await;
    let got = raw.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].kind(), got[0].body[1]), (2, 0x8C), "{got:?}");
    assert_nothing_stored(&app).await;
    // No session was made for it: the same id asking to resume is told there is none.
    let (_raw, ack) = Raw::connect(&app, &build::connect("scram", false, 60, Some(&expiry))).await;
    assert_eq!(ack.body[..2], [0x00, 0x00], "session present 0, Success");
}

/// Nor is re-authentication: an AUTH on a connection that began without a method is a
/// protocol error (DISCONNECT 0x82): a client that named no method may send none (MQTT 5,
/// 3.1.2.11.9).
#[tokio::test]
async fn v5_auth_packet_on_a_connection_without_a_method_gets_disconnect_0x82() {
    let app = app().await;
    let (mut raw, ack) = Raw::connect(&app, &v5_connect("reauth")).await;
    assert_eq!(ack.body[1], 0x00);
    // AUTH, Re-authenticate (0x19), Authentication Method "SCRAM-SHA-256".
    let mut props = vec![0x15];
    props.extend(build::string("SCRAM-SHA-256"));
    let mut body = vec![0x19];
    body.extend(build::props(&props));
    raw.send(&build::packet(0xF0, &body)).await;
    let got = raw.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].kind(), got[0].disconnect_reason()),
        (14, 0x82),
        "{got:?}"
    );
}

#[tokio::test]
async fn same_client_id_takes_over_and_the_old_v5_connection_gets_0x8e() {
    let app = app().await;
    let (mut old, _) = Raw::connect(&app, &v5_connect("dup")).await;
    let (mut new, ack) = Raw::connect(&app, &v5_connect("dup")).await;
    assert_eq!(ack.body[1], 0x00);
    let got = old.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].disconnect_reason(), 0x8E);
    new.send(&[0xC0, 0x00]).await;
    new.expect(13).await;
}

#[tokio::test]
async fn same_client_id_takes_over_and_the_old_v3_connection_is_closed() {
    let app = app().await;
    let (mut old, _) = Raw::connect(&app, &build::connect("dup3", true, 60, None)).await;
    let (mut new, ack) = Raw::connect(&app, &build::connect("dup3", true, 60, None)).await;
    assert_eq!(ack.body, vec![0x00, 0x00]);
    assert_eq!(old.until_closed().await, vec![]);
    new.send(&[0xC0, 0x00]).await;
    new.expect(13).await;
}

/// Connects with `keep_alive` seconds and sends nothing: how long until the server closed
/// the connection with DISCONNECT 0x8D, its only packet.
async fn closed_as_silent_after(keep_alive: u16) -> Duration {
    let app = app().await;
    let connect = build::connect("quiet", true, keep_alive, Some(&[]));
    let (mut raw, _) = Raw::connect(&app, &connect).await;
    let started = Instant::now();
    let got = raw.until_closed().await;
    let waited = started.elapsed();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].disconnect_reason(), 0x8D);
    waited
}

#[tokio::test]
async fn silent_client_is_closed_after_one_and_a_half_keep_alives_with_0x8d() {
    let waited = closed_as_silent_after(1).await;
    assert!(
        waited >= Duration::from_millis(1000),
        "closed after {waited:?}"
    );
}

#[tokio::test]
async fn a_quiet_connection_giving_back_its_buffers_is_not_taken_for_a_silent_one() {
    // Keep alive 3 s: the connection's timer first fires 2 s after the loop last ran (the
    // CONNACK, then the stall watch's sample a second later) to give back its buffers
    // (decision 025), then at 4.5 s for the keep alive. Only the second closes it.
    let waited = closed_as_silent_after(3).await;
    assert!(
        waited >= Duration::from_millis(4400),
        "closed after {waited:?}, before 1.5 × its keep alive"
    );
}

#[tokio::test]
async fn keep_alive_timeout_publishes_the_will() {
    let app = app().await;
    let (mut watcher, _) = V3::connect(v3_options(&app, "watcher")).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let will = build::Will {
        topic: "wills/quiet",
        payload: b"gone",
        qos: 1,
        retain: false,
        props: &[],
    };
    let connect = build::connect_with_will("quiet", true, 1, None, will);
    let (mut raw, _) = Raw::connect(&app, &connect).await;
    assert_eq!(raw.until_closed().await, vec![]);
    let p = watcher.next_publish().await;
    assert_eq!(
        (&p.topic[..], &p.payload[..]),
        ("wills/quiet", &b"gone"[..])
    );
}

#[tokio::test]
async fn pinging_client_stays_connected_past_its_keep_alive() {
    let app = app().await;
    let mut options = v3_options(&app, "pinger");
    options.set_keep_alive(Duration::from_secs(1));
    let (mut c, _) = V3::connect(options).await;
    // Three PINGRESPs span well over 1.5 × keep alive; `until` fails on any disconnect.
    for _ in 0..3 {
        c.until("PINGRESP", |e| {
            matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PingResp)).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn each_qos_is_delivered_at_min_of_published_and_granted() {
    let app = app().await;
    let (mut sub2, _) = V3::connect(v3_options(&app, "sub2")).await;
    let (mut sub0, _) = V3::connect(v3_options(&app, "sub0")).await;
    assert_eq!(
        sub2.subscribe("q/#", QoS::ExactlyOnce).await,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::ExactlyOnce)]
    );
    sub0.subscribe("q/#", QoS::AtMostOnce).await;
    let (mut publ, _) = V3::connect(v3_options(&app, "pub")).await;
    for (topic, qos) in [
        ("q/0", QoS::AtMostOnce),
        ("q/1", QoS::AtLeastOnce),
        ("q/2", QoS::ExactlyOnce),
    ] {
        publ.publish(topic, qos, false, topic.as_bytes()).await;
        let got = sub2.next_publish().await;
        assert_eq!((&got.topic[..], got.qos, got.retain), (topic, qos, false));
        assert_eq!(&got.payload[..], topic.as_bytes());
        let got = sub0.next_publish().await;
        assert_eq!((&got.topic[..], got.qos), (topic, QoS::AtMostOnce));
    }
}

#[tokio::test]
async fn messages_on_one_topic_arrive_in_publish_order() {
    let app = app().await;
    let (mut sub, _) = V3::connect(v3_options(&app, "sub")).await;
    sub.subscribe("order", QoS::AtLeastOnce).await;
    let (mut publ, _) = V3::connect(v3_options(&app, "pub")).await;
    for i in 0..50u32 {
        publ.client
            .publish("order", QoS::AtLeastOnce, false, i.to_string())
            .await
            .unwrap();
    }
    let pump = tokio::spawn(async move {
        let mut acks = 0;
        publ.until("50 PUBACKs", |e| {
            if matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) {
                acks += 1;
            }
            (acks == 50).then_some(())
        })
        .await;
    });
    for i in 0..50u32 {
        let got = sub.next_publish().await;
        assert_eq!(&got.payload[..], i.to_string().as_bytes());
    }
    pump.await.unwrap();
}

#[tokio::test]
async fn inbound_qos2_duplicate_before_pubrel_is_delivered_exactly_once() {
    let app = app().await;
    let (mut sub, _) = V3::connect(v3_options(&app, "sub")).await;
    sub.subscribe("once", QoS::ExactlyOnce).await;
    let (mut raw, _) = Raw::connect(&app, &build::connect("p", true, 60, None)).await;
    raw.send(&build::publish("once", 2, false, false, 7, None, b"m"))
        .await;
    assert_eq!(raw.expect(5).await.body, vec![0, 7]);
    raw.send(&build::publish("once", 2, false, true, 7, None, b"m"))
        .await;
    assert_eq!(raw.expect(5).await.body, vec![0, 7]);
    raw.send(&build::ack(0x62, 7)).await;
    assert_eq!(raw.expect(7).await.body, vec![0, 7]);
    raw.send(&build::publish("once", 1, false, false, 8, None, b"marker"))
        .await;
    raw.expect(4).await;
    assert_eq!(&sub.next_publish().await.payload[..], b"m");
    assert_eq!(&sub.next_publish().await.payload[..], b"marker");
}

#[tokio::test]
async fn outbound_qos2_completes_pubrec_pubrel_pubcomp() {
    let app = app().await;
    let (mut raw, _) = Raw::connect(&app, &build::connect("s", true, 60, None)).await;
    raw.send(&build::subscribe(1, "out", 2, None)).await;
    assert_eq!(raw.expect(9).await.body, vec![0, 1, 2]);
    let (mut publ, _) = V3::connect(v3_options(&app, "pub")).await;
    publ.publish("out", QoS::ExactlyOnce, false, b"x").await;
    let p = raw.expect(3).await.publish(false);
    assert_eq!(
        (p.topic.as_str(), p.qos, p.dup, &p.payload[..]),
        ("out", 2, false, &b"x"[..])
    );
    raw.send(&build::ack(0x50, p.pkid)).await;
    let rel = raw.expect(6).await;
    assert_eq!(
        (rel.first, rel.body.clone()),
        (0x62, p.pkid.to_be_bytes().to_vec())
    );
    raw.send(&build::ack(0x70, p.pkid)).await;
    raw.send(&[0xC0, 0x00]).await;
    raw.expect(13).await;
}

#[tokio::test]
async fn v3_invalid_filter_gets_suback_0x80() {
    let app = app().await;
    let (mut raw, _) = Raw::connect(&app, &build::connect("s", true, 60, None)).await;
    raw.send(&build::subscribe(3, "a/#/b", 1, None)).await;
    assert_eq!(raw.expect(9).await.body, vec![0, 3, 0x80]);
}

#[tokio::test]
async fn v5_invalid_filter_gets_suback_0x8f() {
    let app = app().await;
    let (mut raw, _) = Raw::connect(&app, &v5_connect("s")).await;
    raw.send(&build::subscribe(3, "a/b+", 1, Some(&[]))).await;
    let ack = raw.expect(9).await;
    assert_eq!(&ack.body[..2], &[0, 3]);
    assert_eq!(ack.body.last(), Some(&0x8F), "{ack:?}");
}

#[tokio::test]
async fn hash_filter_matches_the_parent_level_and_skips_dollar_topics() {
    let app = app().await;
    let (mut all, _) = V3::connect(v3_options(&app, "all")).await;
    all.subscribe("#", QoS::AtLeastOnce).await;
    let (mut plus, _) = V3::connect(v3_options(&app, "plus")).await;
    plus.subscribe("+/x", QoS::AtLeastOnce).await;
    let (mut sport, _) = V3::connect(v3_options(&app, "sport")).await;
    sport.subscribe("sport/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = V3::connect(v3_options(&app, "pub")).await;
    // Not `$SYS`, which no client may publish to: it would prove nothing about matching.
    publ.publish("$aws/x", QoS::AtLeastOnce, false, b"hidden")
        .await;
    publ.publish("sport", QoS::AtLeastOnce, false, b"parent")
        .await;
    publ.publish("m/x", QoS::AtLeastOnce, false, b"plus").await;
    // `$aws/x` was published first, so had it matched it would arrive first.
    assert_eq!(&all.next_publish().await.payload[..], b"parent");
    assert_eq!(&plus.next_publish().await.payload[..], b"plus");
    assert_eq!(&sport.next_publish().await.payload[..], b"parent");
}

#[tokio::test]
async fn unsubscribed_filter_gets_no_more_messages() {
    let app = app().await;
    let (mut sub, _) = V3::connect(v3_options(&app, "sub")).await;
    sub.subscribe("u/a", QoS::AtLeastOnce).await;
    sub.subscribe("u/b", QoS::AtLeastOnce).await;
    sub.client.unsubscribe("u/a").await.unwrap();
    sub.until("UNSUBACK", |e| {
        matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::UnsubAck(_))).then_some(())
    })
    .await;
    let (mut publ, _) = V3::connect(v3_options(&app, "pub")).await;
    publ.publish("u/a", QoS::AtLeastOnce, false, b"gone").await;
    publ.publish("u/b", QoS::AtLeastOnce, false, b"kept").await;
    assert_eq!(&sub.next_publish().await.topic[..], "u/b");
}

#[tokio::test]
async fn subscribing_again_to_a_filter_replaces_its_qos_without_a_second_copy() {
    let app = app().await;
    let (mut sub, _) = V3::connect(v3_options(&app, "sub")).await;
    sub.subscribe("rep", QoS::AtMostOnce).await;
    sub.subscribe("rep", QoS::AtLeastOnce).await;
    let (mut publ, _) = V3::connect(v3_options(&app, "pub")).await;
    publ.publish("rep", QoS::AtLeastOnce, false, b"1").await;
    publ.publish("rep", QoS::AtLeastOnce, false, b"2").await;
    let p = sub.next_publish().await;
    assert_eq!((&p.payload[..], p.qos), (&b"1"[..], QoS::AtLeastOnce));
    assert_eq!(
        &sub.next_publish().await.payload[..],
        b"2",
        "a second copy of '1'"
    );
}
