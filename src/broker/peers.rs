//! This node as one of many (decision 014): what the other nodes send it (publishes and
//! take-over notices), and the comparison of the client ids it holds with their claims in
//! the database, which closes a connection whose take-over notice was lost.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::handle::{Broker, Inner};
use super::registry::{NEVER, ends_at_ms};
use crate::cluster::{Adopted, Cluster, Events, Routed, TakeOver};
use crate::topic::{ClientKey, FilterSpec};

/// How often a node compares the client ids it holds with their claims.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// How long a session resumed on another node may wait here for that node to ask for it:
/// past the longest the asking node takes (its database timeout, the announcement of the
/// subscriptions, the hand-over request's 3 s).
const HAND_OVER_WAIT: Duration = Duration::from_secs(30);

/// Weak: the cluster's tasks must not keep a stopped broker alive.
struct FromCluster(Weak<Inner>);

impl Events for FromCluster {
    fn publish(&self, routed: Routed) {
        if let Some(inner) = self.0.upgrade() {
            Broker { inner }.receive(routed);
        }
    }

    fn publish_to_member(&self, routed: Routed, spec: &FilterSpec, member: &ClientKey) {
        if let Some(inner) = self.0.upgrade() {
            Broker { inner }.receive_for_member(routed, spec, member);
        }
    }

    fn disconnect(
        &self,
        client_id: &str,
        clean_session: bool,
        prevent_will: bool,
    ) -> BoxFuture<'static, bool> {
        let broker = self.0.upgrade().map(|inner| Broker { inner });
        let client_id = client_id.to_owned();
        Box::pin(async move {
            match broker {
                Some(broker) => {
                    broker
                        .disconnect_here(&client_id, clean_session, prevent_will)
                        .await
                }
                None => false,
            }
        })
    }

    fn taken_over(&self, notice: TakeOver) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        let broker = Broker { inner };
        // Resumed elsewhere: the other node asks for the session once it holds its
        // subscriptions; a copy it never asks for ends here after a while.
        if let Some(session) = broker.sessions().taken_over(&notice) {
            let broker = Arc::downgrade(&broker.inner);
            tokio::spawn(async move {
                tokio::time::sleep(HAND_OVER_WAIT).await;
                let Some(inner) = broker.upgrade() else {
                    return;
                };
                let broker = Broker { inner };
                let Some(cluster) = broker.cluster() else {
                    return;
                };
                if !broker.sessions().awaits_hand_over(&session) {
                    return;
                }
                // Still this node's in Postgres (that connection never took it): kept.
                let kept = match cluster.holder(&session.key).await {
                    Ok(holder) => holder.is_some_and(|h| h.node == cluster.node()),
                    Err(_) => true,
                };
                broker.sessions().not_handed_over(&session, kept);
            });
        }
    }

    fn hand_over(&self, client_id: &str) -> Option<Bytes> {
        let broker = Broker {
            inner: self.0.upgrade()?,
        };
        let exchanges = broker.sessions().hand_over(client_id);
        // Resumed on another node: a Will this node holds for it is cancelled, as at a
        // resume here [MQTT-3.1.3-9] (before 2026-12-06 it was published at its delay).
        broker.inner.pending_wills.resumed(client_id);
        exchanges
    }

    fn filters_of(&self, client_id: &str) -> Vec<FilterSpec> {
        let Some(inner) = self.0.upgrade() else {
            return Vec::new();
        };
        Broker { inner }.sessions().plain_filters_of(client_id)
    }

    fn taken_for_dead(&self) {
        tokio::spawn(give_up_adopted(self.0.clone()));
    }

    fn adopt(&self, sessions: Vec<Adopted>) {
        if let Some(inner) = self.0.upgrade() {
            let broker = Broker { inner };
            for a in sessions {
                adopt(&broker, a);
            }
        }
    }
}

pub(super) fn join(broker: &Broker, cluster: &Cluster) {
    cluster.set_events(FromCluster(Arc::downgrade(&broker.inner)));
    tokio::spawn(reconcile(Arc::downgrade(&broker.inner), cluster.clone()));
}

async fn reconcile(broker: Weak<Inner>, cluster: Cluster) {
    let mut failing = false;
    loop {
        tokio::time::sleep(RECONCILE_EVERY).await;
        let Some(inner) = broker.upgrade() else {
            return;
        };
        let broker_now = Broker { inner };
        if broker_now.shutdown_signal().is_cancelled() {
            return;
        }
        let held = broker_now.sessions().held_claims();
        drop(broker_now);
        if held.is_empty() {
            continue;
        }
        match cluster.lost(&held).await {
            Ok(lost) => {
                failing = false;
                let Some(inner) = broker.upgrade() else {
                    return;
                };
                let sessions = Broker { inner };
                for client_id in lost {
                    tracing::info!(client = %client_id, "the client id was claimed on another node; closing its connection here");
                    sessions.sessions().taken_over(&TakeOver {
                        client_id: Arc::from(client_id),
                        generation: u64::MAX,
                        resumed: false,
                    });
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot compare client ids with their claims");
                }
                failing = true;
            }
        }
    }
}

/// The other nodes took this node for dead: the sessions they adopted, and the connections
/// whose claims they removed, end here. Tried again each heartbeat until the database
/// answers: until then they stay, as they did while the node could not reach it.
async fn give_up_adopted(broker: Weak<Inner>) {
    loop {
        let Some(inner) = broker.upgrade() else {
            return;
        };
        let broker = Broker { inner };
        let Some(cluster) = broker.cluster().cloned() else {
            return;
        };
        let held: Vec<_> = broker
            .sessions()
            .all()
            .iter()
            .map(|s| s.key.clone())
            .collect();
        match cluster.not_held_here(&held).await {
            Ok(gone) => {
                tracing::info!(
                    sessions = gone.len(),
                    held = held.len(),
                    "ending the sessions the other nodes adopted while they took this node for dead"
                );
                for (client_id, lives_on) in gone {
                    broker.sessions().give_up(&client_id, lives_on);
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot find which sessions the other nodes adopted; trying again");
                let shutdown = broker.shutdown_signal().clone();
                drop(broker);
                tokio::select! {
                    () = tokio::time::sleep(crate::cluster::BEAT) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Holds a session of a node that is gone until its expiry, and publishes the Will of its
/// client if it was connected when the node died: the client's keep alive lapsed, from the
/// service's point of view, when the node was found dead.
fn adopt(broker: &Broker, a: Adopted) {
    let expiry = Duration::from_secs(u64::from(a.expiry_secs));
    let left = expiry.saturating_sub(a.away);
    let expires_at_ms = ends_at_ms(broker.store().clock().now_ms(), a.expiry_secs, left);
    let expires = expires_at_ms != NEVER;
    let principal = broker.creator_principal(a.creator.as_deref());
    if let Some(session) = broker.sessions().adopt(&a, expires_at_ms, principal) {
        tracing::info!(client = %a.client_id, "holding the session of a node that is gone");
        if expires {
            // Never attached here: its connection is 0 until a client takes it up.
            broker.expire_after(&session, 0, left);
        }
    }
    if let Some(will) = a.will {
        // A session whose expiry passed while it was away has ended: its Will is due now,
        // whatever is left of its delay, and whichever of this and the expiry comes first.
        let expiry = if expires && left.is_zero() {
            Duration::ZERO
        } else {
            expiry
        };
        broker.publish_adopted_will(a.client_id, will, expiry);
    }
}
