//! MQTT over WebSocket (`ws://HOST/mqtt`, sub-protocol `mqtt`) with rumqttc, for 3.1.1 and 5.0,
//! against the real server: the same broker as the TCP listener, the same store as HTTP.
//! rumqttc refuses a handshake whose response does not select the `mqtt` sub-protocol.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::mqtt::raw::build;
use common::mqtt::ws::RawWs;
use common::mqtt::{Qos5, V3, V5, v3_options, v5_options};
use common::{Backend, TestApp, spawn_app};
use rumqttc::{QoS, Transport};

fn ws_url(app: &TestApp) -> String {
    format!("ws://{}/mqtt", app.http_addr)
}

fn v3_ws(app: &TestApp, id: &str) -> rumqttc::MqttOptions {
    let tcp = v3_options(app, id);
    let mut o = rumqttc::MqttOptions::new(id, ws_url(app), app.http_addr.port());
    o.set_transport(Transport::ws())
        .set_keep_alive(tcp.keep_alive())
        .set_max_packet_size(tcp.max_packet_size(), tcp.max_packet_size());
    o
}

fn v5_ws(app: &TestApp, id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, ws_url(app), app.http_addr.port());
    o.set_transport(Transport::ws())
        .set_max_packet_size(v5_options(app, id).max_packet_size());
    o
}

async fn v3_over_websocket_publishes_subscribes_and_stores(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut ws_sub, ack) = V3::connect(v3_ws(&app, "ws-sub")).await;
    assert!(!ack.session_present);
    ws_sub.subscribe("ws/#", QoS::AtLeastOnce).await;
    let (mut tcp_sub, _) = V3::connect(v3_options(&app, "tcp-sub")).await;
    tcp_sub.subscribe("ws/#", QoS::AtLeastOnce).await;
    let (mut ws_pub, _) = V3::connect(v3_ws(&app, "ws-pub")).await;
    ws_pub
        .publish("ws/state", QoS::AtLeastOnce, true, b"on")
        .await;
    let stored: serde_json::Value = app.get_json("/retainedMessage/ws%2Fstate").await;
    assert_eq!(stored["payload"], B64.encode("on"));
    for sub in [&mut ws_sub, &mut tcp_sub] {
        let p = sub.next_publish().await;
        assert_eq!((&p.topic[..], &p.payload[..]), ("ws/state", &b"on"[..]));
    }
    // A payload far larger than one WebSocket frame of a typical client.
    let big = vec![b'z'; 100 * 1024];
    ws_pub
        .publish("ws/big", QoS::ExactlyOnce, false, &big)
        .await;
    assert_eq!(ws_sub.next_publish().await.payload.len(), big.len());
    ws_pub.disconnect().await;
}

async fn v5_over_websocket_gets_retained_with_properties_on_subscribe(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app
        .http
        .post(app.url("/topics/ws5?retain=true&qos=1&contentType=text%2Fplain"))
        .header(
            "x-amz-mqtt5-user-properties",
            B64.encode(r#"[{"via":"http"}]"#),
        )
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (mut c, _) = V5::connect(v5_ws(&app, "ws5")).await;
    c.subscribe("ws5", Qos5::AtLeastOnce).await;
    let p = c.next_publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"hello"[..], true));
    let props = p.properties.expect("properties");
    assert_eq!(
        props.user_properties,
        vec![("via".to_owned(), "http".to_owned())]
    );
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    c.publish("ws5/out", Qos5::ExactlyOnce, true, b"from ws")
        .await;
    let stored: serde_json::Value = app.get_json("/retainedMessage/ws5%2Fout").await;
    assert_eq!(
        (stored["payload"].as_str(), stored["qos"].as_u64()),
        (Some(&*B64.encode("from ws")), Some(2))
    );
    c.disconnect().await;
}

async fn websocket_and_tcp_clients_with_one_id_take_over_each_other(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut ws, _) = V3::connect(v3_ws(&app, "same")).await;
    let (_tcp, _) = V3::connect(v3_options(&app, "same")).await;
    ws.until_closed().await;
}

for_each_backend!(
    v3_over_websocket_publishes_subscribes_and_stores,
    v5_over_websocket_gets_retained_with_properties_on_subscribe,
    websocket_and_tcp_clients_with_one_id_take_over_each_other,
);

#[tokio::test]
async fn websocket_accepts_the_mqttv3_1_subprotocol() {
    let app = spawn_app(Backend::Sqlite).await;
    let (mut ws, head) = RawWs::open(&app, "mqttv3.1").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-protocol: mqttv3.1\r\n"),
        "{head}"
    );
    ws.frame(true, 2, &build::connect("old", true, 60, None))
        .await;
    assert_eq!(ws.packet().await, (0x20, vec![0, 0]));
}

#[tokio::test]
async fn mqtt_packets_may_span_websocket_frames_and_share_them() {
    let app = spawn_app(Backend::Sqlite).await;
    let (mut ws, head) = RawWs::open(&app, "mqtt").await;
    assert!(head.contains("sec-websocket-protocol: mqtt\r\n"), "{head}");
    let connect = build::connect("split", true, 60, Some(&[]));
    // One CONNECT in two binary messages, the first itself fragmented into two frames.
    ws.frame(false, 2, &connect[..3]).await;
    ws.frame(true, 0, &connect[3..7]).await;
    ws.frame(true, 2, &connect[7..]).await;
    let (first, body) = ws.packet().await;
    assert_eq!((first, &body[..2]), (0x20, &[0u8, 0][..]));
    // Two packets in one frame: SUBSCRIBE and PINGREQ.
    let mut two = build::subscribe(1, "ws/split", 1, Some(&[]));
    two.extend([0xC0, 0x00]);
    ws.frame(true, 2, &two).await;
    assert_eq!(ws.packet().await.0, 0x90);
    assert_eq!(ws.packet().await, (0xD0, vec![]));
    marker_via_http(&app, "ws/split").await;
    let (first, body) = ws.packet().await;
    assert_eq!(first & 0xF0, 0x30);
    assert!(body.ends_with(b"marker"), "{body:?}");
}

async fn marker_via_http(app: &TestApp, topic: &str) {
    let res = app
        .publish(format!("/topics/{}?qos=1", common::encode(topic)), "marker")
        .await;
    assert_eq!(res.status(), 200);
}
