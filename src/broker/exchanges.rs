//! A session's open QoS 2 exchanges as a node of many hands them on (decision 014): the
//! packet ids its client sent that await PUBREL, and the messages released to it that await
//! PUBCOMP. Neither fits the queue of messages in Postgres, so the node letting a session go
//! (a hand-over, a clean stop) writes them into the session's row, and the node that resumes
//! it takes them up: a resend is recognised and a PUBREL owed is sent, whichever node the
//! client comes back to.
//!
//! A clean stop writes back the same for every session held offline, with the Will it waits
//! out the delay of and when that is due, so that the node adopting the session publishes it
//! then (as a single node saves it for its next start, decision 024).
//!
//! The encoding is the broker's, which the cluster stores without reading: a version byte,
//! then [`Exchanges`] in postcard, each message a frame of the cluster's, as a session saved
//! across a restart keeps them (`restart`).

use std::num::NonZeroU16;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::handle::Broker;
use super::restart::{SavedDelivery, delivery, saved_delivery};
use super::session::{Inflight, SessionState};
use crate::cluster::{Cluster, WrittenBack};
use crate::topic::TopicLimits;

/// Sessions written back per statement at a stop.
const WRITE_BACK_BATCH: usize = 1_000;

const VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Exchanges {
    awaiting_release: Vec<u16>,
    /// In send order.
    released: Vec<(u16, SavedDelivery)>,
}

/// The exchanges `state` has open, or `None` if it has none. Of the ids awaiting PUBREL,
/// those whose publishes have settled: a connection still attached may have one whose store
/// has not answered, and a store that then fails forgets it, so that the client's resend is
/// stored. Handed on before that, it would make the resend a duplicate on the next node,
/// acknowledged and stored nowhere; left out, a resend of one that did get stored is
/// delivered twice, the lesser harm.
pub(super) fn encode(state: &SessionState) -> Option<Bytes> {
    let (inflight, _, awaiting) = state.to_save();
    let exchanges = Exchanges {
        awaiting_release: awaiting.settled_ids().map(NonZeroU16::get).collect(),
        released: inflight
            .iter()
            .filter(|i| i.released)
            .map(|i| (i.packet_id.get(), saved_delivery(&i.delivery)))
            .collect(),
    };
    if exchanges.awaiting_release.is_empty() && exchanges.released.is_empty() {
        return None;
    }
    // Integers and byte vectors into a Vec: serializing cannot fail.
    postcard::to_extend(&exchanges, vec![VERSION])
        .ok()
        .map(Bytes::from)
}

/// Exchanges read back: the released messages, as in flight, and the ids awaiting PUBREL.
pub(super) struct Open {
    pub released: Vec<Inflight>,
    pub awaiting_release: Vec<NonZeroU16>,
}

/// `blob`, as [`encode`] wrote it; `None` (logged) if it cannot be read. A released message
/// whose frame does not decode (another frame version, a topic past this node's limits) is
/// left out alone, logged.
pub(super) fn decode(client: &str, blob: &[u8], limits: TopicLimits) -> Option<Open> {
    let read = blob
        .split_first()
        .filter(|(v, _)| **v == VERSION)
        .and_then(|(_, rest)| postcard::from_bytes::<Exchanges>(rest).ok());
    let Some(exchanges) = read else {
        tracing::warn!(
            client,
            "the QoS 2 exchanges handed on with a session do not decode; the session is resumed without them"
        );
        return None;
    };
    let mut released = Vec::with_capacity(exchanges.released.len());
    for (id, saved) in exchanges.released {
        let (Some(packet_id), Ok(Ok(delivery))) = (NonZeroU16::new(id), delivery(saved, limits))
        else {
            tracing::warn!(
                client,
                packet_id = id,
                "a released QoS 2 message handed on with a session does not decode; its PUBREL is not sent again"
            );
            continue;
        };
        released.push(Inflight {
            packet_id,
            delivery,
            released: true,
        });
    }
    Some(Open {
        released,
        awaiting_release: exchanges
            .awaiting_release
            .into_iter()
            .filter_map(NonZeroU16::new)
            .collect(),
    })
}

impl Broker {
    /// A node of many stops cleanly, its connections closed and nothing routing any more:
    /// what its offline sessions hold beyond their rows goes into them. A failure is logged:
    /// those sessions are adopted without it, as after a node killed.
    pub(super) async fn write_back_sessions(&self, cluster: &Cluster) {
        let now = self.inner.store.clock().now_ms();
        let held: Vec<WrittenBack> = self
            .sessions()
            .offline()
            .iter()
            .filter_map(|session| {
                let key = &session.key;
                // A Will whose client resumed the session since is not due any more.
                let will = self
                    .inner
                    .pending_wills
                    .get(key)
                    .filter(|w| !self.resumed_since(key, w.ended.connection()))
                    .map(|w| {
                        let left = u64::try_from(w.due_at_ms.saturating_sub(now)).unwrap_or(0);
                        (w.will.stored(key), Duration::from_millis(left))
                    });
                let exchanges = encode(&session.state());
                (will.is_some() || exchanges.is_some()).then(|| WrittenBack {
                    client_id: key.clone(),
                    exchanges,
                    will,
                })
            })
            .collect();
        let mut written = 0;
        for batch in held.chunks(WRITE_BACK_BATCH) {
            if let Err(e) = cluster.write_back(batch).await {
                tracing::error!(
                    error = %e, written, lost = held.len() - written,
                    "could not write back the open QoS 2 exchanges and delayed Wills of offline sessions; the nodes adopting them take them up without"
                );
                return;
            }
            written += batch.len();
        }
        if written > 0 {
            tracing::info!(
                sessions = written,
                "wrote back the open QoS 2 exchanges and delayed Wills of offline sessions for the node adopting them"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::Delivery;
    use crate::broker::queue_memory::QueueMemory;
    use crate::broker::session::{SessionLimits, Stored};
    use crate::store::Qos;
    use crate::topic::TopicName;

    fn state() -> SessionState {
        let limits = SessionLimits {
            max_queued: 10,
            max_queued_bytes: 1 << 20,
        };
        SessionState::new(limits, QueueMemory::unlimited())
    }

    fn delivery(payload: &'static str, qos: Qos) -> Delivery {
        Delivery::plain(payload, qos)
    }

    fn all(_: &TopicName) -> bool {
        true
    }

    #[test]
    fn a_session_with_no_open_exchange_hands_on_nothing() {
        let mut s = state();
        s.enqueue(delivery("unacked", Qos::AtLeastOnce), true);
        s.next_outgoing(10, all);
        let _ = s.start_spooling(Stored::default());
        assert!(encode(&s).is_none());
    }

    /// What a node letting a session go encodes (after its unacknowledged messages left for
    /// the queue in Postgres) is what the next node takes up: the released message in
    /// flight under its id, owed only PUBREL, and the ids awaiting PUBREL.
    #[test]
    fn open_exchanges_handed_on_are_taken_up_by_the_next_node() {
        let mut s = state();
        s.enqueue(delivery("released", Qos::ExactlyOnce), true);
        let released = s.next_outgoing(10, all).unwrap().packet_id.unwrap();
        assert!(s.received(released));
        s.enqueue(delivery("unacked", Qos::AtLeastOnce), true);
        s.next_outgoing(10, all);
        let seven = NonZeroU16::new(7).unwrap();
        s.awaiting_release().extend([seven]);
        let spooled = s.start_spooling(Stored::default());
        assert_eq!(&spooled[0].message.payload[..], b"unacked");

        let blob = encode(&s).expect("exchanges are open");
        let open = decode("c", &blob, TopicLimits::default()).expect("it decodes");
        let mut next = state();
        next.take_up(open.released, open.awaiting_release);

        let (inflight, queue, awaiting) = next.to_save();
        let taken: Vec<_> = inflight
            .iter()
            .map(|i| (i.packet_id, i.released, &i.delivery.message.payload[..]))
            .collect();
        assert_eq!(taken, [(released, true, &b"released"[..])]);
        assert!(queue.is_empty());
        assert_eq!(awaiting.settled_ids().collect::<Vec<_>>(), [seven]);
        // The id stays taken until its PUBCOMP.
        next.enqueue(delivery("new", Qos::AtLeastOnce), true);
        let fresh = next.next_outgoing(10, all).unwrap().packet_id.unwrap();
        assert_ne!(fresh, released);
        assert!(next.completed(released));
    }

    #[test]
    fn exchanges_in_another_encoding_are_not_taken_up() {
        assert!(decode("c", &[VERSION + 1, 0, 0], TopicLimits::default()).is_none());
        assert!(decode("c", &[], TopicLimits::default()).is_none());
    }
}
