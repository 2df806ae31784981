//! What a connection writes: the session's queued messages within the client's flow-control
//! window, the pages of retained messages a subscription streams, and every packet under the
//! stall watch (`stall`) instead of a timeout of its own.
//!
//! The lifecycle and the loop are in `connection`, the packets the client sends in `inbound`.

use std::num::NonZeroU16;

use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{Connection, End, FETCH_BELOW, FLUSH_BYTES};
use super::retained::Page;
use super::wire;
use crate::mqtt::{self, DisconnectReasonCode, Packet, PublishAck2, PublishAck2Reason};

impl<T> Connection<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// A resumed session's unacknowledged messages go out again first, PUBLISH with DUP=1 and
    /// PUBREL as they were [MQTT-4.4.0-1].
    pub(super) async fn resend(&mut self) -> Result<(), End> {
        let now = self.broker.store().clock().now_ms();
        let may_receive = self.session.receive_check();
        let unacknowledged = self.session.state().resendable(may_receive);
        let again: Vec<(NonZeroU16, Option<Packet>, bool)> = unacknowledged
            .iter()
            .map(|i| {
                let packet = if i.released {
                    Some(Packet::PublishRelease(PublishAck2 {
                        packet_id: i.packet_id,
                        reason_code: PublishAck2Reason::Success,
                        properties: Vec::new(),
                        reason_string: None,
                    }))
                } else {
                    wire::publish_packet(&i.delivery, Some(i.packet_id), true, now)
                        .map(|p| Packet::Publish(Box::new(p)))
                };
                (i.packet_id, packet, i.released)
            })
            .collect();
        for (id, packet, _) in again {
            let sent = match packet {
                Some(p) => self.write(p).await?,
                None => false,
            };
            if !sent {
                self.session.state().forget(id);
            }
        }
        Ok(())
    }

    /// Writes what the session has queued, as far as the flow-control window allows, topping
    /// the queue up from pending retained deliveries; then flushes.
    pub(super) async fn pump(&mut self) -> Result<(), End> {
        // Also here, not only on its timer: a client that keeps sending keeps the loop busy.
        if self.watch.due() {
            self.sample()?;
        }
        loop {
            // A connection being taken over must leave the session's queue to its successor.
            if self.stop.is_cancelled() {
                break;
            }
            let may_receive = self.session.receive_check();
            let next = self.session.state().next_outgoing(self.window, may_receive);
            let Some(out) = next else {
                break;
            };
            let now = self.broker.store().clock().now_ms();
            let sent = match wire::publish_packet(&out.delivery, out.packet_id, false, now) {
                Some(p) => self.write(Packet::Publish(Box::new(p))).await?,
                None => false,
            };
            if !sent && let Some(id) = out.packet_id {
                self.session.state().forget(id);
            }
            if self.framed.pending_write_bytes() >= FLUSH_BYTES {
                self.flush().await?;
            }
        }
        self.fetch_retained();
        if self.dirty {
            self.flush().await?;
        }
        // Messages left in the queue (its Receive Maximum holds them back) wait for the
        // client as much as unsent bytes do.
        if self.session.state().queued() > 0 {
            self.watch.waiting();
        }
        Ok(())
    }

    /// Samples the stall clock (see `stall`).
    pub(super) fn sample(&mut self) -> Result<(), End> {
        let buffered = self.framed.pending_write_bytes() > 0 || self.session.state().queued() > 0;
        self.watch.sample(buffered).map_err(|_| End::Stalled)
    }

    /// Starts reading the next page of retained messages once the queue is short enough
    /// that the page will be needed soon: the client drains one page while the next is read.
    fn fetch_retained(&mut self) {
        if self.fetching.is_some() || self.session.state().queued() >= FETCH_BELOW {
            return;
        }
        if let Some(scan) = self.scans.pop_front() {
            let store = self.broker.store().clone();
            self.fetching = Some(Box::pin(scan.fetch(store, self.cfg.topic_limits)));
        }
    }

    pub(super) fn fetched(&mut self, page: Result<Page, crate::store::Error>) -> Result<(), End> {
        match page {
            Ok(page) => {
                if let Some(next) = page.next {
                    self.scans.push_front(next);
                }
                let mut state = self.session.state();
                page.deliveries
                    .into_iter()
                    .filter(|d| self.session.may_receive(&d.message.topic))
                    .for_each(|d| state.push_retained(d));
                drop(state);
                // Read the page after this one while this one is being sent.
                self.fetch_retained();
                Ok(())
            }
            Err(e) => {
                // Logged by the store, in summary.
                tracing::debug!(error = %e, "cannot read retained messages for a subscription");
                Err(End::Close(DisconnectReasonCode::UnspecifiedError))
            }
        }
    }

    /// Queues a packet. False when the client's Maximum Packet Size rules it out, which
    /// MQTT 5 says to treat as delivered [MQTT-3.1.2-25].
    pub async fn write(&mut self, packet: Packet) -> Result<bool, End> {
        let fed = self.watch.drive(self.framed.feed(packet)).await;
        match fed.map_err(|_| End::Stalled)? {
            Ok(()) => {
                self.dirty = true;
                Ok(true)
            }
            Err(mqtt::Error::Encode(e)) => {
                tracing::debug!(error = %e, "a packet was not sent");
                Ok(false)
            }
            Err(_) => Err(End::Lost),
        }
    }

    pub(super) async fn flush(&mut self) -> Result<(), End> {
        let flushed = self.watch.drive(self.framed.flush()).await;
        match flushed.map_err(|_| End::Stalled)? {
            Ok(()) => {
                self.dirty = false;
                // What was written now waits in the socket until the client takes it.
                self.watch.waiting();
                Ok(())
            }
            Err(_) => Err(End::Lost),
        }
    }
}
