//! What goes to the client besides answers: the session's queued messages within the
//! client's flow-control window, a resumed session's unacknowledged ones, and the pages of
//! retained messages new subscriptions stream from the store. No I/O: the connection writes
//! the packets found here.

use std::num::NonZeroU16;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::end::End;
use super::message::Delivery;
use super::registry::Session;
use super::retained::{Page, ReadAhead, RetainedFeed, Unread};
use super::session::Outgoing;
use super::wire;
use crate::metrics::{DropReason, Metrics};
use crate::mqtt::{DisconnectReasonCode, OutgoingPublish, Packet, PublishAck2, PublishAck2Reason};
use crate::store::{Store, UserProperty};
use crate::topic::TopicLimits;

/// What a resumed session sends again, as [`Outbound::resend`] finds it.
pub(super) enum Resent {
    /// A PUBREL: the PUBREC came, the PUBCOMP did not.
    Release(Packet),
    Publish(Delivery),
}

pub(super) struct Outbound {
    session: Arc<Session>,
    /// Cancelled when the connection must close; a connection being taken over must leave
    /// the session's queue to its successor.
    stop: CancellationToken,
    /// How many QoS 1/2 messages may be in flight to the client.
    window: usize,
    retained: RetainedFeed,
    store: Store,
    topic_limits: TopicLimits,
    metrics: Metrics,
}

impl Outbound {
    pub fn new(
        session: Arc<Session>,
        stop: CancellationToken,
        window: usize,
        store: Store,
        topic_limits: TopicLimits,
        metrics: Metrics,
        read_ahead: ReadAhead,
    ) -> Self {
        Self {
            session,
            stop,
            window,
            metrics,
            retained: RetainedFeed::new(read_ahead),
            store,
            topic_limits,
        }
    }

    /// The retained page being read, for the connection to wait on.
    pub fn feed(&mut self) -> &mut RetainedFeed {
        &mut self.retained
    }

    /// A resumed session's unacknowledged messages, to go out again first: PUBLISH with
    /// DUP=1 and PUBREL as they were [MQTT-4.4.0-1].
    pub fn resend(&mut self) -> Vec<(NonZeroU16, Resent)> {
        let may_receive = self.session.receive_check();
        let unacknowledged = {
            let mut state = self.session.state();
            let resent = state.resendable(may_receive);
            state.dropped.report(&self.metrics);
            resent
        };
        unacknowledged
            .into_iter()
            .map(|i| {
                let resent = if i.released {
                    Resent::Release(Packet::PublishRelease(PublishAck2 {
                        packet_id: i.packet_id,
                        reason_code: PublishAck2Reason::Success,
                        properties: Vec::new(),
                        reason_string: None,
                    }))
                } else {
                    Resent::Publish(i.delivery)
                };
                (i.packet_id, resent)
            })
            .collect()
    }

    /// The next queued message, as far as the flow-control window allows.
    pub fn next_publish(&mut self) -> Option<Outgoing> {
        let may_receive = self.session.receive_check();
        let mut state = self.session.state();
        // Under the session's lock, and only there: a connection that resumes the session
        // cancels this one's stop before it takes the lock to resend what is in flight, so a
        // message taken here is either in that resend or not taken at all. Checked only
        // before the lock, a take-over in between left the message in flight to a closing
        // connection, unsent to the new one until the client's next reconnect.
        if self.stop.is_cancelled() {
            return None;
        }
        let out = state.next_outgoing(self.window, may_receive);
        state.dropped.report(&self.metrics);
        out
    }

    /// The PUBLISH that carries `delivery`, or `None` if it expired while it waited
    /// [MQTT-3.3.2-5] (counted as dropped).
    pub fn publish<'a>(
        &self,
        delivery: &'a Delivery,
        packet_id: Option<NonZeroU16>,
        dup: bool,
    ) -> Option<OutgoingPublish<'a, UserProperty>> {
        let publish = wire::publish(delivery, packet_id, dup, self.store.clock());
        if publish.is_none() {
            self.metrics.mqtt_dropped(DropReason::expired, 1);
        }
        publish
    }

    /// Drops an in-flight message that was not sent: expired, or too large for the client,
    /// which MQTT 5 says to treat as delivered [MQTT-3.1.2-25].
    pub fn forget(&self, packet_id: NonZeroU16) {
        self.session.state().forget(packet_id);
    }

    /// Messages queued for the client beyond those in flight.
    pub fn queued(&self) -> usize {
        self.session.state().queued()
    }

    /// Whether a subscription's retained delivery has needed more than one page and is still
    /// reading: bulk work, for the background threads.
    pub fn delivering_in_bulk(&self) -> bool {
        self.retained.is_long()
    }

    /// Whether a first retained page may be read now: the connection holds less than its
    /// read-ahead allowance.
    pub fn room_for_retained(&self) -> bool {
        let state = self.session.state();
        self.retained
            .has_room((state.queued(), state.queued_bytes()))
    }

    /// Starts reading the next retained page if the queue is short enough.
    pub fn fetch_retained(&mut self) {
        let queued = {
            let state = self.session.state();
            (state.queued(), state.queued_bytes())
        };
        self.retained
            .fetch_more(queued, &self.store, self.topic_limits);
    }

    /// Queues a page of retained messages, those the client may receive. A first page the
    /// database could not serve yet is read again after the SUBACK; a page it has failed to
    /// serve for too long, or cannot serve, ends the connection.
    pub fn fetched(&mut self, page: Result<Page, Unread>) -> Result<(), End> {
        let page = match page {
            Ok(page) => page,
            Err(Unread {
                error,
                retry: Some(scan),
            }) => {
                // Logged by the store, in summary; fetch_retained (after the SUBSCRIBE's
                // first pages) starts reading it again.
                tracing::debug!(error = %error, "retained messages for a subscription are read after its SUBACK");
                self.retained.defer(scan);
                return Ok(());
            }
            Err(Unread { error, retry: None }) => {
                tracing::debug!(error = %error, "cannot read retained messages for a subscription");
                return Err(End::Close(DisconnectReasonCode::UnspecifiedError));
            }
        };
        if let Some(next) = page.next {
            self.retained.resume(next);
        }
        {
            let may_receive = self.session.receive_check();
            let mut state = self.session.state();
            page.deliveries
                .into_iter()
                .filter(|d| may_receive(&d.message.topic))
                .for_each(|d| state.push_retained(d));
        }
        // Read the page after this one while this one is being sent.
        self.fetch_retained();
        Ok(())
    }
}
