//! Retained messages across MQTT and HTTP, on SQLite and on Postgres: MQTT retained publishes land
//! in the store the HTTP API reads (committed before the acknowledgement), HTTP retained
//! publishes reach MQTT subscribers, and the MQTT 5 retain options and expiry behave as specified.
//!
//! "Not delivered" is checked with a marker: a non-retained publish on the same topic after the
//! SUBACK. Per-topic order means a retained message that was going to be sent arrives before it.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::mqtt::raw::{Raw, build};
use common::mqtt::{Qos5, V3, V5, p5, v3_options, v5_options};
use common::{Backend, T0_MS, TestApp, encode, spawn_app};
use retaind::topic::{TopicLimits, TopicName};
use rumqttc::QoS;
use serde_json::{Value, json};

async fn get_retained(app: &TestApp, topic: &str) -> Option<Value> {
    let res = app
        .get(&format!("/retainedMessage/{}", encode(topic)))
        .await;
    match res.status().as_u16() {
        200 => Some(res.json().await.unwrap()),
        404 => None,
        s => panic!("GET {topic}: {s} {}", res.text().await.unwrap()),
    }
}

/// A non-retained HTTP publish, used as a marker behind which nothing else may still be coming.
async fn marker(app: &TestApp, topic: &str) {
    let res = app
        .publish(format!("/topics/{}?qos=1", encode(topic)), "marker")
        .await;
    assert_eq!(res.status(), 200);
}

fn filter(path: &str, qos: Qos5, rule: p5::RetainForwardRule, as_published: bool) -> p5::Filter {
    let mut f = p5::Filter::new(path, qos);
    f.retain_forward_rule = rule;
    f.preserve_retain = as_published;
    f
}

async fn mqtt5_retained_publish_is_readable_over_http_once_acked(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut c, _) = V5::connect(v5_options(&app, "pub")).await;
    let props = p5::PublishProperties {
        user_properties: vec![("owner".into(), "ops".into()), ("rack".into(), "7".into())],
        ..Default::default()
    };
    let reason = c
        .publish_with("dev/1/cfg", Qos5::AtLeastOnce, true, b"hello", props)
        .await;
    assert_eq!(reason, Some(p5::PubAckReason::Success));
    // No polling: the PUBACK promises the commit.
    let got = get_retained(&app, "dev/1/cfg")
        .await
        .expect("stored before PUBACK");
    let user: Value =
        serde_json::from_slice(&B64.decode(got["userProperties"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(user, json!([{"owner": "ops"}, {"rack": "7"}]));
    let revision = got["revision"].as_i64().expect("a revision");
    assert!(revision > 0, "{got}");
    // The writer is the MQTT client id (no principal: authentication is off).
    assert_eq!(
        got,
        json!({"topic": "dev/1/cfg", "payload": B64.encode("hello"), "qos": 1,
               "lastModifiedTime": T0_MS, "userProperties": got["userProperties"],
               "revision": revision, "writer": {"clientId": "pub"}})
    );
}

async fn mqtt3_retained_qos2_is_committed_before_pubrec(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut raw, _) = Raw::connect(&app, &build::connect("p", true, 60, None)).await;
    raw.send(&build::publish("q2/state", 2, true, false, 9, None, b"on"))
        .await;
    assert_eq!(raw.expect(5).await.body, vec![0, 9]);
    let got = get_retained(&app, "q2/state")
        .await
        .expect("stored before PUBREC");
    assert_eq!(
        (got["payload"].as_str(), got["qos"].as_u64()),
        (Some(&*B64.encode("on")), Some(2))
    );
    raw.send(&build::ack(0x62, 9)).await;
    raw.expect(7).await;
}

async fn http_retained_publish_is_delivered_on_subscribe_with_properties(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app
        .http
        .post(app.url("/topics/dev%2F2%2Fcfg?retain=true&qos=1&contentType=text%2Fplain"))
        .header(
            "x-amz-mqtt5-user-properties",
            B64.encode(r#"[{"owner":"ops"}]"#),
        )
        .body("cfg")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (mut v5, _) = V5::connect(v5_options(&app, "s5")).await;
    v5.subscribe("dev/2/cfg", Qos5::AtLeastOnce).await;
    let p = v5.next_publish().await;
    assert_eq!(
        (&p.topic[..], &p.payload[..], p.retain),
        (&b"dev/2/cfg"[..], &b"cfg"[..], true)
    );
    assert_eq!(p.qos, Qos5::AtLeastOnce);
    let props = p.properties.expect("properties");
    assert_eq!(
        props.user_properties,
        vec![("owner".to_owned(), "ops".to_owned())]
    );
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    let (mut v3, _) = V3::connect(v3_options(&app, "s3")).await;
    v3.subscribe("dev/2/cfg", QoS::AtLeastOnce).await;
    let p = v3.next_publish().await;
    assert_eq!(
        (&p.topic[..], &p.payload[..], p.retain),
        ("dev/2/cfg", &b"cfg"[..], true)
    );
}

async fn wildcard_subscribe_delivers_every_matching_retained_message(backend: Backend) {
    let app = spawn_app(backend).await;
    for t in ["a%2F1", "a%2F2", "a%2Fb%2Fc", "a", "b%2F1"] {
        app.retain(t, "v").await;
    }
    let (mut c, _) = V3::connect(v3_options(&app, "s")).await;
    c.subscribe("a/#", QoS::AtLeastOnce).await;
    let mut got = BTreeSet::new();
    for _ in 0..4 {
        let p = c.next_publish().await;
        assert!(p.retain, "{p:?}");
        got.insert(p.topic);
    }
    marker(&app, "a/1").await;
    let p = c.next_publish().await;
    assert_eq!(
        (&p.topic[..], &p.payload[..], p.retain),
        ("a/1", &b"marker"[..], false)
    );
    assert_eq!(
        got,
        BTreeSet::from(["a".into(), "a/1".into(), "a/2".into(), "a/b/c".into()])
    );
}

async fn subscribe_streams_retained_messages_beyond_one_page(backend: Backend) {
    let app = spawn_app(backend).await;
    let n = 450;
    for i in 0..n {
        app.retain(&format!("many%2F{i:03}"), "v").await;
    }
    let (mut c, _) = V3::connect(v3_options(&app, "s")).await;
    c.subscribe("many/+", QoS::AtMostOnce).await;
    let mut got = BTreeSet::new();
    while got.len() < n {
        let p = c.next_publish().await;
        assert!(
            p.retain && got.insert(p.topic.clone()),
            "{p:?} twice or not retained"
        );
    }
}

/// One SUBSCRIBE naming `rep/+` 2,000 times: each names the subscription again, and the
/// packet's last one stands [MQTT-3.8.4-4], so the retained set (more than one page) is sent
/// once, not 2,000 times over; nothing else arrives before a marker published after.
async fn one_subscribe_naming_a_filter_many_times_sends_its_retained_set_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let n = 300;
    for i in 0..n {
        app.retain(&format!("rep%2F{i:03}"), "v").await;
    }
    let (mut c, _) = Raw::connect(&app, &build::connect("repeats", true, 60, None)).await;
    let times = 2000;
    let mut body = 7u16.to_be_bytes().to_vec();
    for _ in 0..times {
        body.extend(build::string("rep/+"));
        body.push(1);
    }
    c.send(&build::packet(0x82, &body)).await;
    let ack = c.expect(9).await;
    assert_eq!(
        &ack.body[2..],
        vec![1u8; times].as_slice(),
        "every one granted"
    );
    let mut got = BTreeSet::new();
    while got.len() < n {
        let p = c.expect(3).await.publish(false);
        assert!(p.retain, "{p:?}");
        assert!(got.insert(p.topic.clone()), "{} twice", p.topic);
        if p.qos == 1 {
            c.send(&build::ack(0x40, p.pkid)).await;
        }
    }
    marker(&app, "rep/marker").await;
    let p = c.expect(3).await.publish(false);
    assert_eq!(
        (p.topic.as_str(), p.retain),
        ("rep/marker", false),
        "nothing before the marker"
    );
    // The store is as it was.
    assert!(get_retained(&app, "rep/000").await.is_some());
    assert!(get_retained(&app, "rep/299").await.is_some());
    assert!(get_retained(&app, "rep/marker").await.is_none());
}

/// Filters whose first pages together hold more than a connection reads ahead (2 MiB):
/// those past it are read after the SUBACK, as the queue drains; every filter still gets the
/// whole set, each message once per filter.
async fn first_pages_beyond_the_read_ahead_are_read_after_the_suback(backend: Backend) {
    let app = spawn_app(backend).await;
    let n = 20;
    let payload = "x".repeat(120 * 1024);
    for i in 0..n {
        let res = app
            .publish(format!("/topics/big%2F{i:02}?retain=true"), payload.clone())
            .await;
        assert_eq!(res.status(), 200);
    }
    let filters = ["big/+", "big/#", "+/+", "#", "+/#", "+/+/#"];
    let (mut c, _) = V5::connect(v5_options(&app, "big")).await;
    let granted = c
        .subscribe_many(
            filters
                .iter()
                .map(|f| p5::Filter::new(*f, Qos5::AtMostOnce)),
        )
        .await;
    assert_eq!(granted.len(), filters.len());
    let mut got = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..n * filters.len() {
        let p = c.next_publish().await;
        assert!(p.retain && p.payload.len() == payload.len(), "{p:?}");
        *got.entry(String::from_utf8(p.topic.to_vec()).unwrap())
            .or_default() += 1;
    }
    assert_eq!(got.len(), n);
    assert!(got.values().all(|&k| k == filters.len()), "{got:?}");
    marker(&app, "big/marker").await;
    let p = c.next_publish().await;
    assert_eq!(
        &p.topic[..],
        b"big/marker",
        "nothing more before the marker"
    );
}

async fn empty_retained_payload_deletes_and_is_still_forwarded(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut live, _) = V3::connect(v3_options(&app, "live")).await;
    live.subscribe("gone", QoS::AtLeastOnce).await;
    let (mut c, _) = V3::connect(v3_options(&app, "pub")).await;
    c.publish("gone", QoS::AtLeastOnce, true, b"v").await;
    assert!(get_retained(&app, "gone").await.is_some());
    c.publish("gone", QoS::AtLeastOnce, true, b"").await;
    assert_eq!(get_retained(&app, "gone").await, None);
    assert_eq!(&live.next_publish().await.payload[..], b"v");
    assert_eq!(&live.next_publish().await.payload[..], b"");
    let (mut late, _) = V3::connect(v3_options(&app, "late")).await;
    late.subscribe("gone", QoS::AtLeastOnce).await;
    marker(&app, "gone").await;
    assert_eq!(&late.next_publish().await.payload[..], b"marker");
}

async fn retained_is_delivered_at_min_of_stored_and_granted_qos(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(
        app.publish("/topics/q?retain=true&qos=2", "v")
            .await
            .status(),
        200
    );
    let (mut c, _) = V5::connect(v5_options(&app, "s")).await;
    c.subscribe("q", Qos5::AtLeastOnce).await;
    let p = c.next_publish().await;
    assert_eq!((p.qos, p.retain), (Qos5::AtLeastOnce, true));
}

async fn retain_handling_0_1_2_control_delivery_on_subscribe(backend: Backend) {
    let app = spawn_app(backend).await;
    app.retain("rh", "kept").await;
    let (mut c, _) = V5::connect(v5_options(&app, "s")).await;
    use p5::RetainForwardRule::*;
    // 0: on every subscribe, including a repeated one.
    for _ in 0..2 {
        c.subscribe_filter(
            filter("rh", Qos5::AtLeastOnce, OnEverySubscribe, false),
            None,
        )
        .await;
        assert_eq!(&c.next_publish().await.payload[..], b"kept");
    }
    // 1: not when the subscription already exists.
    c.subscribe_filter(filter("rh", Qos5::AtLeastOnce, OnNewSubscribe, false), None)
        .await;
    marker(&app, "rh").await;
    assert_eq!(&c.next_publish().await.payload[..], b"marker");
    // 1: but yes for a new one.
    let (mut d, _) = V5::connect(v5_options(&app, "d")).await;
    d.subscribe_filter(filter("rh", Qos5::AtLeastOnce, OnNewSubscribe, false), None)
        .await;
    assert_eq!(&d.next_publish().await.payload[..], b"kept");
    // 2: never.
    let (mut e, _) = V5::connect(v5_options(&app, "e")).await;
    e.subscribe_filter(filter("rh", Qos5::AtLeastOnce, Never, false), None)
        .await;
    marker(&app, "rh").await;
    assert_eq!(&e.next_publish().await.payload[..], b"marker");
}

async fn retain_as_published_keeps_the_flag_on_live_forwarding(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut rap, _) = V5::connect(v5_options(&app, "rap")).await;
    let rule = || p5::RetainForwardRule::OnEverySubscribe;
    rap.subscribe_filter(filter("live", Qos5::AtLeastOnce, rule(), true), None)
        .await;
    let (mut plain, _) = V5::connect(v5_options(&app, "plain")).await;
    plain
        .subscribe_filter(filter("live", Qos5::AtLeastOnce, rule(), false), None)
        .await;
    let (mut c, _) = V5::connect(v5_options(&app, "pub")).await;
    c.publish("live", Qos5::AtLeastOnce, true, b"r").await;
    let p = rap.next_publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"r"[..], true));
    let p = plain.next_publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"r"[..], false));
}

async fn http_retained_publish_reaches_live_subscribers_with_retain_cleared(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut c, _) = V3::connect(v3_options(&app, "live")).await;
    c.subscribe("hl", QoS::AtLeastOnce).await;
    app.retain("hl", "state").await;
    let p = c.next_publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"state"[..], false));
}

async fn retained_delivery_carries_the_remaining_expiry_interval(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(
        app.publish("/topics/exp?retain=true&qos=1&messageExpiry=100", "v")
            .await
            .status(),
        200
    );
    app.clock.advance(Duration::from_secs(30));
    let (mut c, _) = V5::connect(v5_options(&app, "s")).await;
    c.subscribe("exp", Qos5::AtLeastOnce).await;
    let p = c.next_publish().await;
    let interval = p.properties.and_then(|p| p.message_expiry_interval);
    assert_eq!(interval, Some(70));
}

async fn expired_retained_message_is_not_delivered(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut c, _) = V5::connect(v5_options(&app, "pub")).await;
    let props = p5::PublishProperties {
        message_expiry_interval: Some(10),
        ..Default::default()
    };
    c.publish_with("short", Qos5::AtLeastOnce, true, b"v", props)
        .await;
    let stored = app
        .store()
        .get(TopicName::parse("short", TopicLimits::default()).unwrap())
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(stored.expires_at_ms, Some(T0_MS + 10_000));
    app.clock.advance(Duration::from_secs(11));
    let (mut s, _) = V5::connect(v5_options(&app, "s")).await;
    s.subscribe("short", Qos5::AtLeastOnce).await;
    marker(&app, "short").await;
    assert_eq!(&s.next_publish().await.payload[..], b"marker");
    assert_eq!(get_retained(&app, "short").await, None);
}

async fn v5_retained_publish_to_dollar_topic_gets_puback_0x90_and_stores_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut raw, _) = Raw::connect(&app, &build::connect("p", true, 60, Some(&[]))).await;
    raw.send(&build::publish(
        "$SYS/x",
        1,
        true,
        false,
        2,
        Some(&[]),
        b"v",
    ))
    .await;
    let ack = raw.expect(4).await;
    assert_eq!((&ack.body[..2], ack.ack_reason()), (&[0u8, 2][..], 0x90));
    assert_eq!(app.snapshot().await, vec![]);
}

async fn v3_retained_publish_to_dollar_topic_closes_and_stores_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut raw, _) = Raw::connect(&app, &build::connect("p", true, 60, None)).await;
    raw.send(&build::publish("$SYS/x", 1, true, false, 2, None, b"v"))
        .await;
    assert_eq!(raw.until_closed().await, vec![]);
    assert_eq!(app.snapshot().await, vec![]);
}

async fn retained_over_mqtt_replaces_the_http_one(backend: Backend) {
    let app = spawn_app(backend).await;
    app.retain("both", "from-http").await;
    let (mut c, _) = V3::connect(v3_options(&app, "pub")).await;
    c.publish("both", QoS::AtMostOnce, true, b"from-mqtt").await;
    // QoS 0 has no acknowledgement to wait for: poll the HTTP API with a deadline.
    common::mqtt::within("the QoS 0 retained publish to be stored", async {
        loop {
            let got = get_retained(&app, "both").await.unwrap();
            if got["payload"] == B64.encode("from-mqtt") {
                assert_eq!(got["qos"], 0);
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
}

for_each_backend!(
    mqtt5_retained_publish_is_readable_over_http_once_acked,
    mqtt3_retained_qos2_is_committed_before_pubrec,
    http_retained_publish_is_delivered_on_subscribe_with_properties,
    wildcard_subscribe_delivers_every_matching_retained_message,
    subscribe_streams_retained_messages_beyond_one_page,
    one_subscribe_naming_a_filter_many_times_sends_its_retained_set_once,
    first_pages_beyond_the_read_ahead_are_read_after_the_suback,
    empty_retained_payload_deletes_and_is_still_forwarded,
    retained_is_delivered_at_min_of_stored_and_granted_qos,
    retain_handling_0_1_2_control_delivery_on_subscribe,
    retain_as_published_keeps_the_flag_on_live_forwarding,
    http_retained_publish_reaches_live_subscribers_with_retain_cleared,
    retained_delivery_carries_the_remaining_expiry_interval,
    expired_retained_message_is_not_delivered,
    v5_retained_publish_to_dollar_topic_gets_puback_0x90_and_stores_nothing,
    v3_retained_publish_to_dollar_topic_closes_and_stores_nothing,
    retained_over_mqtt_replaces_the_http_one,
);
