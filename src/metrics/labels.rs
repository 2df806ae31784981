//! The label sets of the metrics: few values each, so that no client can make the page grow.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};

/// `operation` and `status` of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub operation: String,
    pub status: u16,
}

impl HttpLabels {
    pub fn new(operation: &str, status: u16) -> Self {
        Self {
            operation: operation.to_owned(),
            status,
        }
    }
}

/// The AWS operation (`Publish`), or for other routes their template (`/readyz`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: String,
}

impl OperationLabel {
    pub fn new(operation: &str) -> Self {
        Self {
            operation: operation.to_owned(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QosLabel {
    pub qos: u8,
}

/// Why credentials were refused.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AuthFailure {
    /// An HTTP request to an operation without any credentials.
    missing,
    /// An AWS access key, bearer token or client certificate no principal holds.
    unknown_credentials,
    /// A SigV4 signature that does not match, or a request too far from the server's clock.
    bad_signature,
    /// An Authorization header or presigned URL that does not parse.
    malformed,
    /// An MQTT user name and password that match no principal.
    mqtt_password,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct AuthFailureLabel {
    pub kind: AuthFailure,
}

/// Why a message did not reach a session, or a publish was refused.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DropReason {
    /// QoS 0 to a connected client whose queue was full (a slow subscriber; one that cannot
    /// take QoS 1 or 2 is disconnected instead, MQTT 5 0x97).
    slow_subscriber,
    /// Any QoS to an offline session whose queue was full.
    queue_full,
    /// QoS 0 to an offline session, which queues none.
    offline,
    /// The client's principal may not receive the topic, or a publisher's may not publish it.
    policy,
    /// Any QoS to an offline session while the offline sessions' queues held
    /// `--mqtt-max-queue-memory-mib`.
    queue_memory,
    /// Any QoS to an offline session while its principal's offline sessions' queues held
    /// the principal's `max_queue_memory_mib`.
    principal_queue_memory,
    /// A retained publish over its principal's quota.
    quota,
    /// A publish over `--mqtt-max-publish-rate`.
    publish_rate,
    /// A publish over its principal's `--mqtt-publish-rate-per-principal`.
    principal_publish_rate,
    /// Its Message Expiry Interval ran out before it was sent.
    expired,
    /// A conditional publish (`retaind-if-match`, `retaind-if-none-match`) whose condition
    /// did not hold: neither stored nor delivered.
    precondition,
    /// A publish whose condition could not be read (see `broker::conditional`).
    malformed_condition,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DropLabel {
    pub reason: DropReason,
}

/// Why a CONNECT was refused (the CONNACK code in brackets, MQTT 5's; 3.1.1 has fewer).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ConnectRefusal {
    /// An empty client id with a session to resume (0x85).
    client_id,
    /// MQTT 5 enhanced authentication asked for, which is not offered (0x8C).
    authentication_method,
    /// `--mqtt-max-connections` connected already, its client id not among them, or no
    /// password check could start within 2 s (0x89).
    server_busy,
    /// A user name and password no principal holds (0x86).
    bad_credentials,
    /// No credentials, or a principal that may not connect with the client id or publish its
    /// Will (0x87).
    not_authorized,
    /// From a source address that failed too many password checks in the last minute (0x9F).
    source_failures,
    /// Its client id's turn to connect was more than 2 s off
    /// (`--mqtt-connect-rate-per-client-id`, 0x9F).
    client_id_rate,
    /// Its principal's turn to connect was more than 2 s off
    /// (`--mqtt-connect-rate-per-principal`, 0x9F).
    principal_rate,
    /// Its principal had `max_connections` client ids connected to the node already, its own
    /// not among them (`--mqtt-max-connections-per-principal`, 0x97).
    principal_connections,
    /// A Will that could not be published: its topic, size, format or properties.
    will,
    /// The node began to stop while the CONNECT waited for its turn, or with `--cluster-url`
    /// the claim on the client id, or its session's row, could not be written (0x88).
    unavailable,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ConnectRefusalLabel {
    pub reason: ConnectRefusal,
}

/// Which rate a CONNECT waited for.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ConnectRate {
    /// `--mqtt-connect-rate-per-client-id`.
    client_id,
    /// `--mqtt-connect-rate-per-principal`.
    principal,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ConnectRateLabel {
    pub rate: ConnectRate,
}

/// Which bound an offline session was ended to keep within.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SessionBound {
    /// `--mqtt-max-offline-sessions`, the node's.
    node,
    /// Its principal's `max_offline_sessions` (or `--mqtt-max-offline-sessions-per-principal`).
    principal,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct SessionBoundLabel {
    pub bound: SessionBound,
}

/// Why a connection was closed when every place for its kind was taken (MQTT connections
/// before their CONNECT, `--mqtt-max-awaiting-connect`; HTTP connections,
/// `--http-max-connections`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ForRoom {
    /// It had had its grace (and, HTTP, was between requests), from the address holding the
    /// most places: a newcomer took its place.
    made_room,
    /// It was the newcomer, and no place could be given up.
    no_room,
}

/// A listener.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Listener {
    mqtt,
    mqtts,
    http,
    https,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ListenerLabel {
    pub listener: Listener,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RoomLabel {
    pub reason: ForRoom,
}

/// What the read cache did for a point read.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum CacheResult {
    hit,
    miss,
    /// Not trusted now (a write batch unsettled, a purge running, the change feed lost).
    bypass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct CacheLabel {
    pub result: CacheResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StoreErrorLabel {
    pub work: String,
    pub kind: String,
}

/// A principal, by its name in the principals file.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrincipalLabel {
    pub principal: String,
}

/// `state` of the pool's connections: `idle` or `in_use`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub state: &'static str,
}

/// Why a watch was told to start over.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ResyncReason {
    /// It asked for changes from below the compaction point.
    compacted,
    /// It fell behind: its buffer filled.
    overflow,
    /// It asked for changes after a revision the database never gave out.
    ahead,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ResyncLabel {
    pub reason: ResyncReason,
}
