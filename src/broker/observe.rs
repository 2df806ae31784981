//! What `/metrics` reads from the broker, and from the cluster through it, at each scrape.

use std::sync::Arc;

use super::handle::Broker;
use crate::metrics::ClusterCounters;

/// Registers the broker's probe. It holds the broker weakly: the metrics, which the broker
/// holds, must not keep a stopped broker alive.
pub(super) fn on_scrape(broker: &Broker) {
    let weak = Arc::downgrade(&broker.inner);
    broker.metrics().on_scrape(move |m| {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let broker = Broker { inner };
        let g = m.gauges();
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        g.mqtt_connections.set(count(broker.connections()));
        g.mqtt_background_connections
            .set(count(broker.background().count()));
        g.mqtt_sessions.set(count(broker.sessions_held()));
        g.mqtt_offline_sessions
            .set(count(broker.sessions().offline_held()));
        g.mqtt_awaiting_connect.set(count(broker.awaiting().len()));
        g.mqtt_subscriptions.set(count(broker.subscriptions()));
        g.mqtt_queue_memory.set(count(broker.queue_memory_held()));
        g.set_principal_queue_memory(broker.sessions().queue_memory_shares());
        let Some(cluster) = broker.cluster() else {
            g.cluster_nodes.set(1);
            return;
        };
        g.cluster_nodes.set(count(cluster.live_nodes()));
        g.cluster_nodes_other_frame_version
            .set(count(cluster.nodes_of_other_frame_versions()));
        g.cluster_adoptions_in_doubt
            .set(count(cluster.adoptions_in_doubt()));
        g.cluster_unrecorded_connection_ends
            .set(count(cluster.unrecorded_connection_ends()));
        g.cluster_nats_connected
            .set(i64::from(cluster.is_connected()));
        let (s, c) = (cluster.stats(), m.cluster());
        for (counter, total) in [
            (&c.forwarded, s.forwarded),
            (&c.nats_messages, s.nats_messages),
            (&c.not_forwarded, s.not_forwarded),
            (&c.dropped, s.dropped),
            (&c.received, s.received),
            (&c.duplicates, s.duplicates),
            (&c.slow_consumer_events, s.slow_consumer_events),
            (&c.malformed, s.malformed),
            (&c.other_version, s.other_version),
            (&c.queued_lost, s.queued_lost),
            (&c.heartbeat_failures, s.heartbeat_failures),
            (&c.adoption_failures, s.adoption_failures),
            (&c.taken_for_dead, s.taken_for_dead),
            (&c.nats_reconnections, s.nats_reconnections),
            (&c.handovers_missed, s.handovers_missed),
            (&c.resumes_kept, s.resumes_kept),
        ] {
            ClusterCounters::catch_up(counter, total);
        }
    });
}
