//! What an operator scrapes: `GET /metrics` in the Prometheus text format (decision 015).
//!
//! One [`Metrics`] per server, a cheap `Clone` handle that every layer records into; no
//! global registry, so servers sharing a process (the tests start several) count apart.
//! Counters and histograms are kept as events happen. Values another part already holds (the
//! connections open, the retained messages stored, a node's cluster counts) are read when the
//! page is scraped, by the probes the app registers ([`Metrics::on_scrape`]).

mod labels;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

pub use labels::{
    AuthFailure, CacheResult, ConnectRate, ConnectRefusal, DropReason, ForRoom, HttpLabels,
    Listener, OperationLabel, PoolLabel, QosLabel, ResyncReason, SessionBound,
};

/// The `Content-Type` of the page.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The metrics of one server.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    probes: Mutex<Vec<Probe>>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<OperationLabel, Histogram>,
    http_throttled: Family<OperationLabel, Counter>,
    auth_failures: Family<labels::AuthFailureLabel, Counter>,
    /// By QoS, looked up once: these count every PUBLISH in and out, so they cost one atomic
    /// add each, not a lookup in the family.
    mqtt_received: [Counter; 3],
    mqtt_sent: [Counter; 3],
    mqtt_dropped: Family<labels::DropLabel, Counter>,
    mqtt_sessions_evicted: Family<labels::SessionBoundLabel, Counter>,
    mqtt_takeovers: Counter,
    mqtt_connects_refused: Family<labels::ConnectRefusalLabel, Counter>,
    mqtt_connects_paced: Family<labels::ConnectRateLabel, Counter>,
    mqtt_closed_before_connect: Family<labels::RoomLabel, Counter>,
    http_closed_for_room: Family<labels::RoomLabel, Counter>,
    tls_handshakes_given_up: Family<labels::ListenerLabel, Counter>,
    proxy_headers_refused: Family<labels::ListenerLabel, Counter>,
    store_batch_size: Histogram,
    store_batch_duration: Histogram,
    store_cache: Family<labels::CacheLabel, Counter>,
    store_errors: Family<labels::StoreErrorLabel, Counter>,
    watches: Gauge,
    watch_held_bytes: Gauge,
    watch_resyncs: Family<labels::ResyncLabel, Counter>,
    gauges: Gauges,
    cluster: ClusterCounters,
}

/// Values set by the probes just before each scrape.
#[derive(Default)]
pub struct Gauges {
    pub mqtt_connections: Gauge,
    pub mqtt_background_connections: Gauge,
    pub mqtt_awaiting_connect: Gauge,
    pub mqtt_sessions: Gauge,
    pub mqtt_offline_sessions: Gauge,
    pub mqtt_subscriptions: Gauge,
    pub mqtt_queue_memory: Gauge,
    pub retained_messages: Gauge,
    pub retained_bytes: Gauge,
    pub cluster_nodes: Gauge,
    pub cluster_nodes_other_frame_version: Gauge,
    pub cluster_adoptions_in_doubt: Gauge,
    pub cluster_unrecorded_connection_ends: Gauge,
    pub cluster_nats_connected: Gauge,
    pub store_pool_connections: Family<labels::PoolLabel, Gauge>,
    mqtt_principal_queue_memory: Family<labels::PrincipalLabel, Gauge>,
    /// The principals `mqtt_principal_queue_memory` shows, as last set.
    principals_shown: std::sync::Mutex<Vec<String>>,
}

impl Gauges {
    /// What each principal's share of the offline queues holds (principals with a share
    /// some offline session counts in); a principal no longer among them is no longer shown.
    pub fn set_principal_queue_memory(&self, held: Vec<(String, usize)>) {
        let mut shown = self
            .principals_shown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now: std::collections::HashSet<&str> = held.iter().map(|(p, _)| p.as_str()).collect();
        for gone in shown.iter().filter(|p| !now.contains(p.as_str())) {
            self.mqtt_principal_queue_memory
                .remove(&labels::PrincipalLabel {
                    principal: gone.clone(),
                });
        }
        shown.clear();
        for (principal, bytes) in held {
            let label = labels::PrincipalLabel {
                principal: principal.clone(),
            };
            self.mqtt_principal_queue_memory
                .get_or_create(&label)
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            shown.push(principal);
        }
    }
}

/// A node's traffic with the others, copied from its own counts at each scrape.
#[derive(Default)]
pub struct ClusterCounters {
    pub forwarded: Counter,
    pub nats_messages: Counter,
    pub not_forwarded: Counter,
    pub dropped: Counter,
    pub received: Counter,
    pub duplicates: Counter,
    pub slow_consumer_events: Counter,
    pub malformed: Counter,
    pub other_version: Counter,
    pub queued_lost: Counter,
    pub heartbeat_failures: Counter,
    pub adoption_failures: Counter,
    pub taken_for_dead: Counter,
    pub nats_reconnections: Counter,
    pub handovers_missed: Counter,
    pub resumes_kept: Counter,
}

impl ClusterCounters {
    /// Raises `counter` to `total`, a count kept elsewhere that only grows.
    pub fn catch_up(counter: &Counter, total: u64) {
        let now = counter.get();
        if total > now {
            counter.inc_by(total - now);
        }
    }
}

type Probe = Box<dyn Fn(&Metrics) + Send + Sync>;

/// The family's counters for QoS 0, 1 and 2 (each series shows from the start, at 0).
fn by_qos(family: &Family<QosLabel, Counter>) -> [Counter; 3] {
    [0, 1, 2].map(|qos| family.get_or_create(&QosLabel { qos }).clone())
}

/// Raises `listener`'s counter in `family` to `total`, a count its listener keeps.
fn catch_up_listener(
    family: &Family<labels::ListenerLabel, Counter>,
    listener: Listener,
    total: u64,
) {
    let counter = family
        .get_or_create(&labels::ListenerLabel { listener })
        .clone();
    ClusterCounters::catch_up(&counter, total);
}

/// HTTP latencies from 0.5 ms to about 16 s.
fn http_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    /// A registry with every metric of the server, `version` in `retaind_build_info`.
    pub fn new(version: &str) -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration =
            Family::<OperationLabel, Histogram>::new_with_constructor(http_histogram as fn() -> _);
        let http_throttled = Family::<OperationLabel, Counter>::default();
        let auth_failures = Family::default();
        let mqtt_received = Family::<QosLabel, Counter>::default();
        let mqtt_sent = Family::<QosLabel, Counter>::default();
        let mqtt_dropped = Family::default();
        let mqtt_sessions_evicted = Family::default();
        let mqtt_takeovers = Counter::default();
        let mqtt_connects_refused = Family::default();
        let mqtt_connects_paced = Family::default();
        let mqtt_closed_before_connect = Family::default();
        let http_closed_for_room = Family::default();
        let tls_handshakes_given_up = Family::default();
        let proxy_headers_refused = Family::default();
        let store_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        let store_batch_duration = http_histogram();
        let store_cache = Family::default();
        let store_errors = Family::default();
        let watches = Gauge::default();
        let watch_held_bytes = Gauge::default();
        let watch_resyncs = Family::default();
        let gauges = Gauges::default();
        let cluster = ClusterCounters::default();
        let r = &mut registry;
        r.register(
            "retaind_build",
            "The running build: its version",
            Info::new(vec![("version".to_owned(), version.to_owned())]),
        );
        r.register(
            "retaind_http_requests",
            "HTTP requests answered, by operation (AWS operation name, or route) and status",
            http_requests.clone(),
        );
        r.register(
            "retaind_http_request_duration_seconds",
            "Time from a request's arrival to its response, by operation",
            http_duration.clone(),
        );
        r.register(
            "retaind_http_throttled_requests",
            "Requests refused with 429 by a per-principal rate, by operation",
            http_throttled.clone(),
        );
        r.register(
            "retaind_auth_failures",
            "Requests and MQTT connections refused for their credentials, by kind",
            auth_failures.clone(),
        );
        r.register(
            "retaind_mqtt_messages_received",
            "PUBLISH packets received from MQTT clients, by QoS",
            mqtt_received.clone(),
        );
        r.register(
            "retaind_mqtt_messages_sent",
            "PUBLISH packets sent to MQTT clients (first sends and resends), by QoS",
            mqtt_sent.clone(),
        );
        r.register(
            "retaind_mqtt_messages_dropped",
            "Messages not delivered to a session, by reason",
            mqtt_dropped.clone(),
        );
        r.register(
            "retaind_mqtt_sessions_evicted",
            "Offline MQTT sessions ended before their expiry to keep within a bound, the node's \
             (--mqtt-max-offline-sessions) or their principal's, those nearest their end first",
            mqtt_sessions_evicted.clone(),
        );
        r.register(
            "retaind_mqtt_takeovers",
            "MQTT connections closed because their client id connected again, on this node or \
             another (MQTT 5: DISCONNECT 0x8E)",
            mqtt_takeovers.clone(),
        );
        r.register(
            "retaind_mqtt_connects_refused",
            "MQTT CONNECTs answered with a refusal, by reason",
            mqtt_connects_refused.clone(),
        );
        r.register(
            "retaind_mqtt_connects_paced",
            "MQTT CONNECTs held back until their turn to connect, by the rate they waited for: \
             their client id's (--mqtt-connect-rate-per-client-id) or their principal's \
             (--mqtt-connect-rate-per-principal)",
            mqtt_connects_paced.clone(),
        );
        r.register(
            "retaind_mqtt_closed_before_connect",
            "MQTT connections closed before their CONNECT because every place for such \
             connections was taken, by reason",
            mqtt_closed_before_connect.clone(),
        );
        r.register(
            "retaind_http_connections_closed_for_room",
            "HTTP connections closed because every place for HTTP connections was taken, by \
             reason",
            http_closed_for_room.clone(),
        );
        r.register(
            "retaind_tls_handshakes_given_up",
            "TLS handshakes given up for a newcomer because every handshake slot of the \
             listener was taken, by listener",
            tls_handshakes_given_up.clone(),
        );
        r.register(
            "retaind_proxy_headers_refused",
            "Connections closed because they did not start with a valid PROXY protocol header \
             in time, on the listeners set to expect one, by listener",
            proxy_headers_refused.clone(),
        );
        r.register(
            "retaind_store_write_batch_size",
            "Writes per group commit",
            store_batch_size.clone(),
        );
        r.register(
            "retaind_store_write_batch_duration_seconds",
            "Time a group commit took in the database, until it committed, failed or timed out",
            store_batch_duration.clone(),
        );
        r.register(
            "retaind_store_cache_lookups",
            "Point reads (GetRetainedMessage) by what the read cache did: hit, miss, or bypass while it cannot be trusted",
            store_cache.clone(),
        );
        r.register(
            "retaind_store_errors",
            "Store calls that failed, by work (write batch, read batch, ...) and kind",
            store_errors.clone(),
        );
        r.register(
            "retaind_watches",
            "Watches of the retained set open on this node (GET /retainedMessage-watch)",
            watches.clone(),
        );
        r.register(
            "retaind_watch_held_bytes",
            "Bytes of messages this node's watches have read and not yet sent (at most 1 MiB \
             and one message a watch)",
            watch_held_bytes.clone(),
        );
        r.register(
            "retaind_watch_resyncs",
            "Watches ended with a resync event, by reason: compacted (asked for changes from \
             below the compaction point), overflow (fell behind and filled their buffer) or \
             ahead (asked for changes after a revision the database never gave out)",
            watch_resyncs.clone(),
        );
        r.register(
            "retaind_store_pool_connections",
            "Database connections of the shared pool, by state (idle, in_use)",
            gauges.store_pool_connections.clone(),
        );
        r.register(
            "retaind_mqtt_connections",
            "MQTT connections open, over every listener",
            gauges.mqtt_connections.clone(),
        );
        r.register(
            "retaind_mqtt_background_connections",
            "MQTT connections delivering a large retained set, on threads below every other",
            gauges.mqtt_background_connections.clone(),
        );
        r.register(
            "retaind_mqtt_awaiting_connect",
            "MQTT connections that have not sent their CONNECT yet, over every listener",
            gauges.mqtt_awaiting_connect.clone(),
        );
        r.register(
            "retaind_mqtt_queue_memory_bytes",
            "What the queues of offline MQTT sessions hold together, as --mqtt-max-queue-memory-mib counts it",
            gauges.mqtt_queue_memory.clone(),
        );
        r.register(
            "retaind_mqtt_principal_queue_memory_bytes",
            "What the queues of a principal's offline MQTT sessions hold, as its max_queue_memory_mib counts it (each copy whole), for principals with one",
            gauges.mqtt_principal_queue_memory.clone(),
        );
        r.register(
            "retaind_mqtt_sessions",
            "MQTT sessions held, connected or not",
            gauges.mqtt_sessions.clone(),
        );
        r.register(
            "retaind_mqtt_offline_sessions",
            "MQTT persistent sessions held offline, waiting for their clients (at most \
             --mqtt-max-offline-sessions)",
            gauges.mqtt_offline_sessions.clone(),
        );
        r.register(
            "retaind_mqtt_subscriptions",
            "MQTT subscriptions held by sessions on this node",
            gauges.mqtt_subscriptions.clone(),
        );
        r.register(
            "retaind_retained_messages",
            "Retained messages stored (the whole store, shared by every node on it)",
            gauges.retained_messages.clone(),
        );
        r.register(
            "retaind_retained_bytes",
            "Payload bytes of the retained messages stored (the whole store), summed at most a \
             minute ago",
            gauges.retained_bytes.clone(),
        );
        r.register(
            "retaind_cluster_nodes",
            "Live nodes of the service, this one included (1 without --cluster-url)",
            gauges.cluster_nodes.clone(),
        );
        r.register(
            "retaind_cluster_nodes_other_frame_version",
            "Live nodes of another release whose live messages this node drops, and which drop \
             this node's: they send another frame version (not 0 only during a rolling upgrade \
             across frame versions)",
            gauges.cluster_nodes_other_frame_version.clone(),
        );
        r.register(
            "retaind_cluster_adoptions_in_doubt",
            "Adoptions of a dead node's sessions whose commit went unanswered, until the \
             database says whether it committed (asked at each heartbeat; at most 64 kept)",
            gauges.cluster_adoptions_in_doubt.clone(),
        );
        r.register(
            "retaind_cluster_unrecorded_connection_ends",
            "Connections that ended while the database could not record it, recorded every \
             heartbeat until it can (0 but during an outage of the database)",
            gauges.cluster_unrecorded_connection_ends.clone(),
        );
        r.register(
            "retaind_cluster_nats_connected",
            "1 while this node's connection to NATS is up, 0 while it is lost (and without \
             --cluster-url): routing between nodes waits for it",
            gauges.cluster_nats_connected.clone(),
        );
        let c = &cluster;
        for (name, help, counter) in [
            (
                "retaind_cluster_forwarded_messages",
                "Publishes this node sent to NATS for other nodes",
                &c.forwarded,
            ),
            (
                "retaind_cluster_nats_messages",
                "NATS messages those publishes went in (several per message when batched)",
                &c.nats_messages,
            ),
            (
                "retaind_cluster_unforwarded_messages",
                "Publishes no other node wanted, so not sent to NATS",
                &c.not_forwarded,
            ),
            (
                "retaind_cluster_dropped_messages",
                "Publishes for other nodes dropped because the outbox to NATS was full",
                &c.dropped,
            ),
            (
                "retaind_cluster_received_messages",
                "Publishes received from other nodes",
                &c.received,
            ),
            (
                "retaind_cluster_duplicate_messages",
                "Extra copies received through overlapping subscriptions, dropped",
                &c.duplicates,
            ),
            (
                "retaind_cluster_slow_consumer_events",
                "Times NATS dropped messages to this node because it read too slowly",
                &c.slow_consumer_events,
            ),
            (
                "retaind_cluster_malformed_messages",
                "Messages on this node's NATS subjects that are not retaind publishes, dropped",
                &c.malformed,
            ),
            (
                "retaind_cluster_other_version_messages",
                "Publishes from nodes of a release that sends another frame version, dropped",
                &c.other_version,
            ),
            (
                "retaind_cluster_unstored_queued_messages",
                "Messages for offline sessions not stored in Postgres (spool full, database failed or too slow)",
                &c.queued_lost,
            ),
            (
                "retaind_cluster_heartbeat_failures",
                "Heartbeat passes not done within the store timeout (at most half the cluster dead time); after the dead time of them the other nodes take this one for dead",
                &c.heartbeat_failures,
            ),
            (
                "retaind_cluster_adoption_failures",
                "Adoptions of the sessions of nodes that are gone, and questions about adoptions in doubt, that the database failed or did not answer in time; tried again at the next heartbeat",
                &c.adoption_failures,
            ),
            (
                "retaind_cluster_taken_for_dead",
                "Times this node found that the other nodes had taken it for dead and adopted its sessions",
                &c.taken_for_dead,
            ),
            (
                "retaind_cluster_handovers_missed",
                "Sessions taken up as stored because the node holding them did not hand them over in time",
                &c.handovers_missed,
            ),
            (
                "retaind_cluster_resumes_kept",
                "Sessions kept on this node after a resume failed once the node holding them had let them go",
                &c.resumes_kept,
            ),
            (
                "retaind_cluster_nats_reconnections",
                "Times this node's connection to NATS came back after it was lost",
                &c.nats_reconnections,
            ),
        ] {
            r.register(name, help, counter.clone());
        }
        Self(Arc::new(Inner {
            registry,
            probes: Mutex::new(Vec::new()),
            http_requests,
            http_duration,
            http_throttled,
            auth_failures,
            mqtt_received: by_qos(&mqtt_received),
            mqtt_sent: by_qos(&mqtt_sent),
            mqtt_dropped,
            mqtt_sessions_evicted,
            mqtt_takeovers,
            mqtt_connects_refused,
            mqtt_connects_paced,
            mqtt_closed_before_connect,
            http_closed_for_room,
            tls_handshakes_given_up,
            proxy_headers_refused,
            store_batch_size,
            store_batch_duration,
            store_cache,
            store_errors,
            watches,
            watch_held_bytes,
            watch_resyncs,
            gauges,
            cluster,
        }))
    }

    /// Runs `probe` before every scrape, to set what is read rather than counted.
    pub fn on_scrape(&self, probe: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.probes().push(Box::new(probe));
    }

    /// The page: every metric, after the probes have run.
    pub fn render(&self) -> String {
        for probe in self.probes().iter() {
            probe(self);
        }
        let mut page = String::new();
        // Writing into a String does not fail.
        let _ = prometheus_text::encode(&mut page, &self.0.registry);
        page
    }

    fn probes(&self) -> std::sync::MutexGuard<'_, Vec<Probe>> {
        self.0
            .probes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn gauges(&self) -> &Gauges {
        &self.0.gauges
    }

    pub fn cluster(&self) -> &ClusterCounters {
        &self.0.cluster
    }

    /// An HTTP request was answered.
    pub fn http_request(&self, operation: &str, status: u16, took: Duration) {
        self.0
            .http_requests
            .get_or_create(&HttpLabels::new(operation, status))
            .inc();
        self.0
            .http_duration
            .get_or_create(&OperationLabel::new(operation))
            .observe(took.as_secs_f64());
    }

    pub fn http_throttled(&self, operation: &str) {
        self.0
            .http_throttled
            .get_or_create(&OperationLabel::new(operation))
            .inc();
    }

    pub fn auth_failure(&self, kind: AuthFailure) {
        self.0
            .auth_failures
            .get_or_create(&labels::AuthFailureLabel { kind })
            .inc();
    }

    pub fn mqtt_received(&self, qos: u8) {
        self.0.mqtt_received[usize::from(qos.min(2))].inc();
    }

    pub fn mqtt_sent(&self, qos: u8) {
        self.0.mqtt_sent[usize::from(qos.min(2))].inc();
    }

    /// PUBLISH packets received from clients so far, every QoS.
    pub fn mqtt_received_total(&self) -> u64 {
        self.0.mqtt_received.iter().map(Counter::get).sum()
    }

    /// PUBLISH packets sent to clients so far, every QoS.
    pub fn mqtt_sent_total(&self) -> u64 {
        self.0.mqtt_sent.iter().map(Counter::get).sum()
    }

    /// A group commit of `writes` writes took `took`.
    pub fn store_batch(&self, writes: usize, took: Duration) {
        self.0.store_batch_size.observe(writes as f64);
        self.0.store_batch_duration.observe(took.as_secs_f64());
    }

    pub fn store_cache(&self, result: CacheResult) {
        self.0
            .store_cache
            .get_or_create(&labels::CacheLabel { result })
            .inc();
    }

    pub fn store_error(&self, work: &'static str, kind: &'static str) {
        self.0
            .store_errors
            .get_or_create(&labels::StoreErrorLabel {
                work: work.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Watches open on this node: raised when one opens, lowered when it ends.
    pub fn watches(&self) -> &Gauge {
        &self.0.watches
    }

    /// Bytes of messages the node's watches hold read and not yet sent.
    pub fn watch_held_bytes(&self) -> &Gauge {
        &self.0.watch_held_bytes
    }

    pub fn watch_resync(&self, reason: ResyncReason) {
        self.0
            .watch_resyncs
            .get_or_create(&labels::ResyncLabel { reason })
            .inc();
    }

    pub fn mqtt_closed_before_connect(&self, reason: ForRoom) {
        self.0
            .mqtt_closed_before_connect
            .get_or_create(&labels::RoomLabel { reason })
            .inc();
    }

    /// Raises the HTTP connections closed for room to the totals their places counted.
    pub fn http_closed_for_room(&self, made_room: u64, no_room: u64) {
        for (reason, total) in [(ForRoom::made_room, made_room), (ForRoom::no_room, no_room)] {
            let counter = self
                .0
                .http_closed_for_room
                .get_or_create(&labels::RoomLabel { reason })
                .clone();
            ClusterCounters::catch_up(&counter, total);
        }
    }

    /// Raises the TLS handshakes `listener` (`mqtts`, `https`) gave up for newcomers to the
    /// total it counted.
    pub fn tls_handshakes_given_up(&self, listener: Listener, total: u64) {
        catch_up_listener(&self.0.tls_handshakes_given_up, listener, total);
    }

    /// Raises the connections `listener` closed for their PROXY protocol header to the total it
    /// counted.
    pub fn proxy_headers_refused(&self, listener: Listener, total: u64) {
        catch_up_listener(&self.0.proxy_headers_refused, listener, total);
    }

    /// A connection closed for a new one with its client id.
    pub fn mqtt_takeover(&self) {
        self.0.mqtt_takeovers.inc();
    }

    /// A CONNECT refused.
    pub fn mqtt_connect_refused(&self, reason: ConnectRefusal) {
        self.0
            .mqtt_connects_refused
            .get_or_create(&labels::ConnectRefusalLabel { reason })
            .inc();
    }

    /// A CONNECT held back for its turn under `rate`.
    pub fn mqtt_connect_paced(&self, rate: ConnectRate) {
        self.0
            .mqtt_connects_paced
            .get_or_create(&labels::ConnectRateLabel { rate })
            .inc();
    }

    /// `count` offline sessions ended to keep within `bound`.
    pub fn mqtt_sessions_evicted(&self, bound: SessionBound, count: u64) {
        if count > 0 {
            self.0
                .mqtt_sessions_evicted
                .get_or_create(&labels::SessionBoundLabel { bound })
                .inc_by(count);
        }
    }

    pub fn mqtt_dropped(&self, reason: DropReason, count: u64) {
        if count > 0 {
            self.0
                .mqtt_dropped
                .get_or_create(&labels::DropLabel { reason })
                .inc_by(count);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(env!("CARGO_PKG_VERSION"))
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
