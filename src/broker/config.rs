//! The broker's limits and advertised values, as the application configures them.

use std::sync::Arc;
use std::time::Duration;

use crate::topic::TopicLimits;

/// Limits and advertised values; every buffer a client can grow is bounded by one of these.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub topic_limits: TopicLimits,
    pub max_payload_bytes: usize,
    /// Largest packet accepted from a client (advertised as MQTT 5 Maximum Packet Size).
    pub max_packet_bytes: u32,
    /// Messages waiting for one session beyond those in flight.
    pub max_queued_messages: usize,
    /// Payload bytes waiting for one session.
    pub max_queued_bytes: usize,
    /// What the offline sessions' queues may hold together (`queue_memory`) before an offline
    /// session queues nothing more; 0: no limit.
    pub max_queue_memory_bytes: usize,
    /// Persistent sessions held offline at most; past it the one nearest its end ends
    /// (`registry::offline`). 0: no bound.
    pub max_offline_sessions: usize,
    /// QoS 1/2 messages sent to one client and not yet acknowledged.
    pub max_inflight: u16,
    /// QoS 1/2 messages one client may have unacknowledged towards us (MQTT 5 Receive Maximum).
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
    /// Concurrent connections across all listeners; a CONNECT beyond it is refused.
    pub max_connections: usize,
    /// Subscriptions one session may hold.
    pub max_subscriptions: usize,
    /// PUBLISH packets per second one connection may send; 0: no limit.
    pub max_publish_rate: f64,
    /// PUBLISH packets per second of one principal's connections together, service-wide
    /// (`publish_rate`); 0: no limit.
    pub publish_rate_per_principal: f64,
    /// CONNECTs per second one client id may make (`connect_rate`); 0: no limit.
    pub connect_rate_per_client_id: f64,
    /// CONNECTs per second of one principal, service-wide; 0: no limit.
    pub connect_rate_per_principal: f64,
    /// Time allowed between accepting a connection and receiving its CONNECT.
    pub connect_timeout: Duration,
    /// Connections awaiting their CONNECT at once, across all listeners (`awaiting`).
    pub max_awaiting_connect: usize,
    /// Time a client may take nothing of the output waiting for it before it is disconnected
    /// (see `stall`).
    pub write_timeout: Duration,
    /// Longest keep alive a client may have, in seconds: one that asks for more, or for none
    /// (0), is held to this (MQTT 5: told so in Server Keep Alive). 0: no maximum.
    pub max_keep_alive: u16,
    /// Longest session expiry, in seconds: a client asking for more, or for never (every 3.1.1
    /// persistent session), gets this (MQTT 5: told so in CONNACK). 0: no maximum.
    pub max_session_expiry: u32,
    /// How often the `$SYS/broker/...` status topics are published; zero: never.
    pub sys_interval: Duration,
    /// Whether a connection owing a subscription more than a page of retained messages runs on
    /// the background threads until its scans are done (`background`).
    pub retained_in_background: bool,
    /// At shutdown, the time over which connected clients are asked to leave, one after
    /// another, so that they reconnect to the other nodes a few at a time; zero: all at once.
    pub drain_time: Duration,
    /// Where MQTT 5 clients asked to leave by a drain are told to go (the Server Reference of
    /// their DISCONNECT 0x9C Use another server); a drain on a node alone then says 0x9C too.
    pub server_reference: Option<Arc<str>>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            topic_limits: TopicLimits::default(),
            max_payload_bytes: 128 * 1024,
            max_packet_bytes: 256 * 1024,
            max_queued_messages: 10_000,
            max_queued_bytes: 16 << 20,
            max_queue_memory_bytes: 1 << 30,
            max_offline_sessions: 1_000_000,
            max_inflight: 256,
            receive_maximum: 1024,
            topic_alias_maximum: 64,
            max_connections: 10_000,
            max_subscriptions: 50,
            max_publish_rate: 0.0,
            connect_rate_per_client_id: 1.0,
            connect_rate_per_principal: 0.0,
            publish_rate_per_principal: 0.0,
            connect_timeout: Duration::from_secs(10),
            max_awaiting_connect: 4096,
            write_timeout: Duration::from_secs(30),
            max_keep_alive: 1200,
            max_session_expiry: 3600,
            sys_interval: Duration::ZERO,
            retained_in_background: true,
            drain_time: Duration::ZERO,
            server_reference: None,
        }
    }
}
