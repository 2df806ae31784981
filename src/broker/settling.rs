//! Inbound publishes on their way to being acknowledged: each waits for its retained write
//! (if any) to commit, and they are released in arrival order, so that per-topic order holds
//! and a retained publish is durable before its PUBACK [MQTT-3.3.1-5].

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};

use super::inbound_qos::{Ack, Why};
use super::message::Message;
use crate::mqtt::PublishAckReason;
use crate::store::{self, Condition};

/// An inbound publish once the store has (or has not) taken its retained write.
pub(super) struct Settled {
    /// The message to route; `None` for one that goes nowhere (a QoS 2 resend, a refusal).
    pub message: Option<Arc<Message>>,
    pub ack: Option<Ack>,
    /// What the acknowledgement says when the store took the write.
    pub reason: PublishAckReason,
    /// The reason string that goes with `reason`, for a client that asked for them.
    pub why: Option<Why>,
    /// The condition its retained write was under, to say which failed
    /// ([`store::Error::ConditionFailed`]).
    pub condition: Option<Condition>,
    pub result: Result<(), store::Error>,
}

/// Publishes waiting for the store, in arrival order, and their payload bytes.
#[derive(Default)]
pub(super) struct Settling(FuturesOrdered<BoxFuture<'static, Settled>>, usize);

impl Settling {
    /// A publish that waits for nothing and routes nothing, acknowledged with `reason` (and
    /// `why`) in turn.
    pub fn answer(&mut self, ack: Option<Ack>, reason: PublishAckReason, why: Option<Why>) {
        let settled = Settled {
            message: None,
            ack,
            reason,
            why,
            condition: None,
            result: Ok(()),
        };
        self.0.push_back(Box::pin(async move { settled }));
    }

    /// A publish to route once `committed` (its retained write, if any, under `condition`)
    /// is done.
    pub fn push(
        &mut self,
        message: Arc<Message>,
        ack: Option<Ack>,
        condition: Option<Condition>,
        committed: Option<impl Future<Output = Result<(), store::Error>> + Send + 'static>,
    ) {
        self.1 += message.payload.len();
        self.0.push_back(Box::pin(async move {
            let result = match committed {
                Some(committed) => committed.await,
                None => Ok(()),
            };
            Settled {
                message: Some(message),
                ack,
                reason: PublishAckReason::Success,
                why: None,
                condition,
                result,
            }
        }));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The payload bytes of the publishes waiting.
    pub fn bytes(&self) -> usize {
        self.1
    }

    fn left(&mut self, settled: Option<Settled>) -> Option<Settled> {
        if let Some(m) = settled.as_ref().and_then(|s| s.message.as_ref()) {
            self.1 -= m.payload.len();
        }
        settled
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The next publish whose store write is done; never, when none waits. Cancel-safe.
    pub async fn next(&mut self) -> Settled {
        let next = self.0.next().await;
        match self.left(next) {
            Some(settled) => settled,
            None => std::future::pending().await,
        }
    }

    /// The next publish, if its store write is already done.
    pub fn next_now(&mut self) -> Option<Settled> {
        let next = self.0.next().now_or_never().flatten();
        self.left(next)
    }

    /// The next publish, once its store write is done; `None` when none waits.
    pub async fn drain(&mut self) -> Option<Settled> {
        let next = self.0.next().await;
        self.left(next)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU16;

    use bytes::Bytes;
    use tokio::sync::oneshot;

    use super::*;
    use crate::mqtt::QoS;
    use crate::store::{MessageProperties, Qos};
    use crate::topic::{TopicLimits, TopicName};

    fn message() -> Arc<Message> {
        Arc::new(Message {
            topic: TopicName::parse("t", TopicLimits::default()).unwrap(),
            payload: Bytes::from_static(b"x"),
            qos: Qos::AtLeastOnce,
            retain: true,
            properties: MessageProperties::default(),
            expires_at_ms: None,
            origin: None,
            stamp: Default::default(),
            queued: Default::default(),
        })
    }

    fn ack(n: u16) -> Option<Ack> {
        Some((QoS::AtLeastOnce, NonZeroU16::new(n).unwrap()))
    }

    #[test]
    fn a_publish_waiting_for_its_write_holds_back_those_behind_it() {
        let mut settling = Settling::default();
        let (commit, committed) = oneshot::channel::<()>();
        let write = async move { committed.await.map_err(|_| store::Error::Closed) };
        settling.push(message(), ack(1), None, Some(write));
        settling.answer(ack(2), PublishAckReason::NotAuthorized, None);
        assert!(settling.next_now().is_none(), "the write is not done");
        assert_eq!(settling.len(), 2);
        commit.send(()).unwrap();
        let first = settling.next_now().unwrap();
        assert_eq!((first.ack, first.result.is_ok()), (ack(1), true));
        assert!(first.message.is_some());
        let second = settling.next_now().unwrap();
        assert_eq!(second.ack, ack(2));
        assert_eq!(second.reason, PublishAckReason::NotAuthorized);
        assert!(second.message.is_none() && settling.is_empty());
    }

    #[test]
    fn a_conditional_publish_that_failed_is_answered_in_its_turn_with_its_condition() {
        let mut settling = Settling::default();
        let (commit, committed) = oneshot::channel::<()>();
        let first = async move { committed.await.map_err(|_| store::Error::Closed) };
        settling.push(message(), ack(1), None, Some(first));
        let failed = async { Err(store::Error::ConditionFailed) };
        let condition = Some(Condition::Revision(7));
        settling.push(message(), ack(2), condition, Some(failed));
        settling.answer(ack(3), PublishAckReason::Success, None);
        assert!(
            settling.next_now().is_none(),
            "the failure waits behind the write before it"
        );
        commit.send(()).unwrap();
        assert_eq!(settling.next_now().unwrap().ack, ack(1));
        let second = settling.next_now().unwrap();
        assert_eq!((second.ack, second.condition), (ack(2), condition));
        assert!(matches!(second.result, Err(store::Error::ConditionFailed)));
        assert_eq!(settling.next_now().unwrap().ack, ack(3));
    }
}
