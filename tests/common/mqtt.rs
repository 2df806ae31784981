//! MQTT clients for the integration tests, all against the real listener: rumqttc for ordinary
//! MQTT 3.1.1 and 5.0 flows, a raw TCP socket with hand-built packets for what rumqttc will
//! not send (malformed bytes, protocol violations) or not decode (a server DISCONNECT `E0 00`),
//! and a hand-made WebSocket client ([`ws`]) for framing and WSS.
//!
//! Every wait has a deadline ([`DEADLINE`]); nothing here sleeps for a fixed time.

use std::time::Duration;

use super::TestApp;

pub mod raw;
pub mod ws;

/// How long any awaited MQTT event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Room for the broker's default 128 KiB payload limit plus headers, both ways.
const CLIENT_MAX_PACKET: usize = 512 * 1024;

/// Runs `fut` under [`DEADLINE`], failing the test with `what` if it does not finish.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {DEADLINE:?} waiting for {what}"))
}

/// rumqttc's MQTT 3.1.1 client, with its event loop polled only when a test waits on it.
/// A PUBLISH that arrives while the test waits for something else is kept for
/// [`V3::next_publish`], so that waiting never hides a delivery from the test.
pub struct V3 {
    pub client: rumqttc::AsyncClient,
    pub events: rumqttc::EventLoop,
    passed: std::collections::VecDeque<rumqttc::Publish>,
}

pub fn v3_options(app: &TestApp, client_id: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", app.mqtt_addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(CLIENT_MAX_PACKET, CLIENT_MAX_PACKET);
    o
}

impl V3 {
    /// Connects with `options` and waits for a successful CONNACK.
    pub async fn connect(options: rumqttc::MqttOptions) -> (Self, rumqttc::ConnAck) {
        let (client, events) = rumqttc::AsyncClient::new(options, 64);
        let mut me = Self {
            client,
            events,
            passed: Default::default(),
        };
        let ack = me
            .until("CONNACK", |e| match e {
                rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)) => Some(a.clone()),
                _ => None,
            })
            .await;
        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "{ack:?}");
        (me, ack)
    }

    /// Polls the event loop until `f` picks an event; a connection error fails the test.
    pub async fn until<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&rumqttc::Event) -> Option<T>,
    ) -> T {
        let (events, passed) = (&mut self.events, &mut self.passed);
        within(what, async {
            loop {
                match events.poll().await {
                    Ok(e) => {
                        if let Some(t) = f(&e) {
                            return t;
                        }
                        if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = e {
                            passed.push_back(p);
                        }
                    }
                    Err(e) => panic!("connection failed while waiting for {what}: {e}"),
                }
            }
        })
        .await
    }

    /// Polls until the connection ends, returning why.
    pub async fn until_closed(&mut self) -> rumqttc::ConnectionError {
        let events = &mut self.events;
        within("the connection to close", async {
            loop {
                if let Err(e) = events.poll().await {
                    return e;
                }
            }
        })
        .await
    }

    pub async fn next_publish(&mut self) -> rumqttc::Publish {
        if let Some(p) = self.passed.pop_front() {
            return p;
        }
        self.until("a PUBLISH", |e| match e {
            rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Subscribes and returns the SUBACK's codes.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.unwrap();
        self.until("SUBACK", |e| match e {
            rumqttc::Event::Incoming(rumqttc::Packet::SubAck(a)) => Some(a.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Publishes and waits until the flow is complete: sent (QoS 0), PUBACK, or PUBCOMP.
    pub async fn publish(&mut self, topic: &str, qos: rumqttc::QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .unwrap();
        self.until("the publish to complete", |e| match (qos, e) {
            (rumqttc::QoS::AtMostOnce, rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(_)))
            | (
                rumqttc::QoS::AtLeastOnce,
                rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)),
            )
            | (
                rumqttc::QoS::ExactlyOnce,
                rumqttc::Event::Incoming(rumqttc::Packet::PubComp(_)),
            ) => Some(()),
            _ => None,
        })
        .await
    }

    /// A normal DISCONNECT, waiting until it has been written.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.unwrap();
        self.until("DISCONNECT to be sent", |e| {
            matches!(e, rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)).then_some(())
        })
        .await
    }
}

/// rumqttc's MQTT 5 client.
pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    pub events: rumqttc::v5::EventLoop,
    passed: std::collections::VecDeque<p5::Publish>,
}

pub use rumqttc::v5::mqttbytes::QoS as Qos5;
pub use rumqttc::v5::mqttbytes::v5 as p5;

/// A Will's properties with only its delay: published `secs` after its connection ends.
pub fn delayed_will(secs: u32) -> p5::LastWillProperties {
    p5::LastWillProperties {
        delay_interval: Some(secs),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    }
}

pub fn v5_options(app: &TestApp, client_id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", app.mqtt_addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(Some(CLIENT_MAX_PACKET as u32));
    o
}

impl V5 {
    /// Connects with `options` and waits for a successful CONNACK.
    pub async fn connect(options: rumqttc::v5::MqttOptions) -> (Self, p5::ConnAck) {
        let (client, events) = rumqttc::v5::AsyncClient::new(options, 64);
        let mut me = Self {
            client,
            events,
            passed: Default::default(),
        };
        let ack = me
            .until("CONNACK", |e| match e {
                rumqttc::v5::Event::Incoming(p5::Packet::ConnAck(a)) => Some(a.clone()),
                _ => None,
            })
            .await;
        assert_eq!(ack.code, p5::ConnectReturnCode::Success, "{ack:?}");
        (me, ack)
    }

    pub async fn until<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&rumqttc::v5::Event) -> Option<T>,
    ) -> T {
        let (events, passed) = (&mut self.events, &mut self.passed);
        within(what, async {
            loop {
                match events.poll().await {
                    Ok(e) => {
                        if let Some(t) = f(&e) {
                            return t;
                        }
                        if let rumqttc::v5::Event::Incoming(p5::Packet::Publish(p)) = e {
                            passed.push_back(p);
                        }
                    }
                    Err(e) => panic!("connection failed while waiting for {what}: {e}"),
                }
            }
        })
        .await
    }

    pub async fn until_closed(&mut self) -> rumqttc::v5::ConnectionError {
        let events = &mut self.events;
        within("the connection to close", async {
            loop {
                if let Err(e) = events.poll().await {
                    return e;
                }
            }
        })
        .await
    }

    /// Publishes a marker to `topic` (which this client subscribes to) and asserts it is the
    /// next message this client gets: nothing else (a second Will, say) came first.
    pub async fn nothing_more_before_marker(&mut self, topic: &str, why: &str) {
        self.publish(topic, Qos5::AtLeastOnce, false, b"marker")
            .await;
        assert_eq!(&self.next_publish().await.payload[..], b"marker", "{why}");
    }

    pub async fn next_publish(&mut self) -> p5::Publish {
        if let Some(p) = self.passed.pop_front() {
            return p;
        }
        self.until("a PUBLISH", |e| match e {
            rumqttc::v5::Event::Incoming(p5::Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Subscribes with full options and returns the SUBACK's codes.
    pub async fn subscribe_filter(
        &mut self,
        filter: p5::Filter,
        props: Option<p5::SubscribeProperties>,
    ) -> Vec<p5::SubscribeReasonCode> {
        match props {
            Some(p) => self
                .client
                .subscribe_many_with_properties([filter], p)
                .await
                .unwrap(),
            None => self.client.subscribe_many([filter]).await.unwrap(),
        }
        self.until("SUBACK", |e| match e {
            rumqttc::v5::Event::Incoming(p5::Packet::SubAck(a)) => Some(a.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// One SUBSCRIBE naming every filter of `filters`; returns the SUBACK's codes.
    pub async fn subscribe_many(
        &mut self,
        filters: impl IntoIterator<Item = p5::Filter>,
    ) -> Vec<p5::SubscribeReasonCode> {
        self.client.subscribe_many(filters).await.unwrap();
        self.until("SUBACK", |e| match e {
            rumqttc::v5::Event::Incoming(p5::Packet::SubAck(a)) => Some(a.return_codes.clone()),
            _ => None,
        })
        .await
    }

    pub async fn subscribe(&mut self, filter: &str, qos: Qos5) -> Vec<p5::SubscribeReasonCode> {
        self.subscribe_filter(p5::Filter::new(filter, qos), None)
            .await
    }

    /// Publishes and waits until the flow is complete; returns the PUBACK reason for QoS 1.
    pub async fn publish_with(
        &mut self,
        topic: &str,
        qos: Qos5,
        retain: bool,
        payload: &[u8],
        props: p5::PublishProperties,
    ) -> Option<p5::PubAckReason> {
        self.client
            .publish_with_properties(topic, qos, retain, payload.to_vec(), props)
            .await
            .unwrap();
        self.until("the publish to complete", |e| match (qos, e) {
            (Qos5::AtMostOnce, rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Publish(_))) => {
                Some(None)
            }
            (Qos5::AtLeastOnce, rumqttc::v5::Event::Incoming(p5::Packet::PubAck(a))) => {
                Some(Some(a.reason))
            }
            (Qos5::ExactlyOnce, rumqttc::v5::Event::Incoming(p5::Packet::PubComp(_))) => Some(None),
            _ => None,
        })
        .await
    }

    pub async fn publish(&mut self, topic: &str, qos: Qos5, retain: bool, payload: &[u8]) {
        self.publish_with(topic, qos, retain, payload, Default::default())
            .await;
    }

    pub async fn disconnect(mut self) {
        self.client.disconnect().await.unwrap();
        self.until("DISCONNECT to be sent", |e| {
            matches!(
                e,
                rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Disconnect)
            )
            .then_some(())
        })
        .await
    }
}

/// The CONNACK code a client connecting with `options` gets, accepted or refused.
pub async fn connack_code(options: rumqttc::v5::MqttOptions) -> p5::ConnectReturnCode {
    let (_client, mut events) = rumqttc::v5::AsyncClient::new(options, 8);
    within("a CONNACK", async {
        loop {
            match events.poll().await {
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::ConnAck(ack))) => return ack.code,
                Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => return code,
                Err(e) => panic!("no CONNACK: {e}"),
                Ok(_) => {}
            }
        }
    })
    .await
}

/// A client subscribed to `will/#` at QoS 1, where the Will tests publish their Wills.
pub async fn will_watcher(app: &TestApp) -> V5 {
    let (mut w, _) = V5::connect(v5_options(app, "watcher")).await;
    w.subscribe("will/#", Qos5::AtLeastOnce).await;
    w
}
