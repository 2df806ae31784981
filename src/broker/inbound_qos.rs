//! The bookkeeping of QoS 1/2 publishes a client sends us: how many are unacknowledged (for
//! our Receive Maximum), which QoS 2 ids await their PUBREL, and what the client is told
//! when retaind refuses a publish, for both protocol versions. No I/O: the connection applies
//! the answers.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU16;

use super::conditional::Unmet;
use crate::mqtt::{DisconnectReasonCode, PublishAckReason, QoS};
use crate::store::Condition;

/// The QoS and packet id of a publish that is acknowledged (QoS 1 or 2).
pub(super) type Ack = (QoS, NonZeroU16);

/// QoS 2 packet ids we answered with PUBREC and await PUBREL for [MQTT-4.3.3-9]. Kept by the
/// session, so a publish resent after a reconnect is still recognised. An id is known from the
/// moment its PUBLISH is read, and *settled* once its fate is: stored and routed, or dropped
/// with a PUBREC all the same (3.1.1). A publish the store then refuses is forgotten instead,
/// so that its resend is stored.
#[derive(Debug, Default)]
pub(super) struct AwaitingRelease(HashMap<NonZeroU16, bool>);

/// Ids whose publishes were settled before: a session restored after a restart, or taken up
/// from the node it was on (decision 014).
impl FromIterator<NonZeroU16> for AwaitingRelease {
    fn from_iter<I: IntoIterator<Item = NonZeroU16>>(ids: I) -> Self {
        Self(ids.into_iter().map(|id| (id, true)).collect())
    }
}

impl Extend<NonZeroU16> for AwaitingRelease {
    fn extend<I: IntoIterator<Item = NonZeroU16>>(&mut self, ids: I) {
        self.0.extend(ids.into_iter().map(|id| (id, true)));
    }
}

impl AwaitingRelease {
    /// False if this id already awaits PUBREL, i.e. a resend [MQTT-4.3.3-10].
    fn begin(&mut self, id: NonZeroU16) -> bool {
        match self.0.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(false);
                true
            }
        }
    }

    /// The publish of `id`, if still awaiting PUBREL, is settled.
    fn settle(&mut self, id: NonZeroU16) {
        if let Some(settled) = self.0.get_mut(&id) {
            *settled = true;
        }
    }

    /// False if the id was unknown.
    fn end(&mut self, id: NonZeroU16) -> bool {
        self.0.remove(&id).is_some()
    }

    /// The ids whose publishes are settled: a session saved across a restart (decision 024)
    /// or handed on to another node (decision 014) keeps only those. One still being stored
    /// may yet be forgotten; left out, its resend is taken for new (at worst delivered twice,
    /// never acknowledged and lost).
    pub fn settled_ids(&self) -> impl Iterator<Item = NonZeroU16> + '_ {
        self.0.iter().filter(|(_, s)| **s).map(|(id, _)| *id)
    }
}

/// Why an inbound PUBLISH is refused. The variants differ in how each protocol version can
/// say so, and in whether the publish was already counted ([`InboundQos::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The packet breaks the protocol: always close.
    Close(DisconnectReasonCode),
    /// An invalid publish, refused before it is counted: MQTT 5 QoS 1/2 hears this reason in
    /// PUBACK/PUBREC; otherwise the connection is closed with it.
    Invalid(DisconnectReasonCode),
    /// A valid publish retaind will not take, refused before it is counted: QoS 1/2 gets this
    /// reason (and `why` as reason string, if the client asked for them); QoS 0 is dropped.
    Declined {
        reason: PublishAckReason,
        why: &'static str,
    },
    /// A counted publish dropped by policy (publish rate, permission, retained quota): MQTT 5
    /// hears why and a QoS 2 exchange ends there; 3.1.1 has no way to say it, so the publish
    /// is acknowledged as usual and goes nowhere (closing would only make the client resend).
    Dropped(PublishAckReason),
    /// A counted publish the store could not take: MQTT 5 hears 0x80; 3.1.1 cannot say "not
    /// stored", so the connection closes and the client resends.
    NotStored,
    /// A counted conditional publish whose condition did not hold (see `conditional`): 0x80
    /// Unspecified error, saying which condition, and a QoS 2 exchange ends there. Only MQTT 5
    /// can carry a condition; were 3.1.1 to, it would be treated as [`Refusal::Dropped`].
    Unmet(Condition),
    /// A counted publish whose condition cannot be read (see `conditional`): 0x83
    /// Implementation specific error with this reason string, and a QoS 2 exchange ends there.
    /// Counted first so that, like the others, it is answered in turn; 3.1.1 cannot carry one
    /// (as with `Unmet`).
    Unreadable(&'static str),
}

/// The reason string of a refusal, put into words only for a client that asked for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Why {
    Text(&'static str),
    Unmet(Unmet),
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(text) => f.write_str(text),
            Self::Unmet(unmet) => unmet.fmt(f),
        }
    }
}

/// What the client is told about a refused publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answer {
    /// Nothing: a QoS 0 publish is dropped.
    Nothing,
    /// PUBACK (QoS 1) or PUBREC (QoS 2) with this reason.
    Ack {
        ack: Ack,
        reason: PublishAckReason,
        why: Option<Why>,
    },
    /// Close the connection; an MQTT 5 client is told this reason.
    Close(DisconnectReasonCode),
    /// Close the connection without a word.
    Hangup,
}

/// The inbound half of one connection's flow control.
#[derive(Debug)]
pub(super) struct InboundQos {
    v5: bool,
    receive_maximum: usize,
    /// QoS 1/2 publishes counted and not fully acknowledged.
    unacked: usize,
}

/// What [`InboundQos::admit`] made of a publish.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admitted {
    /// Counted (or QoS 0); it goes on to be stored and routed.
    New,
    /// A resend of a QoS 2 publish not yet released: acknowledge it, deliver nothing again
    /// [MQTT-4.3.3-10].
    Duplicate,
}

impl InboundQos {
    pub fn new(v5: bool, receive_maximum: u16) -> Self {
        Self {
            v5,
            receive_maximum: usize::from(receive_maximum),
            unacked: 0,
        }
    }

    /// Checked before anything else about a publish: an MQTT 5 client may not have more QoS
    /// 1/2 publishes unacknowledged than our Receive Maximum [MQTT-3.3.4-9]. 3.1.1 has no
    /// such limit; the connection's back-pressure bounds it.
    pub fn check_room(&self, ack: Option<Ack>) -> Result<(), DisconnectReasonCode> {
        if ack.is_some() && self.v5 && self.unacked >= self.receive_maximum {
            return Err(DisconnectReasonCode::ReceiveMaximumExceeded);
        }
        Ok(())
    }

    /// Counts a valid publish, unless it is a QoS 2 resend.
    pub fn admit(&mut self, awaiting: &mut AwaitingRelease, ack: Option<Ack>) -> Admitted {
        let Some((qos, id)) = ack else {
            return Admitted::New;
        };
        if qos == QoS::ExactlyOnce && !awaiting.begin(id) {
            return Admitted::Duplicate;
        }
        self.unacked += 1;
        Admitted::New
    }

    /// The PUBACK or PUBREC of a counted publish goes out. It ends a QoS 1 exchange, and a QoS
    /// 2 one it refuses; an accepted QoS 2 exchange stays open until PUBREL.
    pub fn acknowledged(&mut self, qos: QoS, reason: PublishAckReason) {
        let refused = u8::from(reason) >= 0x80;
        if qos == QoS::AtLeastOnce || refused {
            self.unacked = self.unacked.saturating_sub(1);
        }
    }

    /// PUBREL: the QoS 2 exchange is over. False if the id was unknown.
    pub fn released(&mut self, awaiting: &mut AwaitingRelease, id: NonZeroU16) -> bool {
        let known = awaiting.end(id);
        if known {
            self.unacked = self.unacked.saturating_sub(1);
        }
        known
    }

    /// How a refused publish is answered: the one place that knows what each protocol version
    /// can say. An MQTT 5 QoS 2 exchange refused after it was counted ends at its PUBREC; no
    /// PUBREL follows, so its id is released now.
    pub fn refused(
        &self,
        awaiting: &mut AwaitingRelease,
        ack: Option<Ack>,
        refusal: Refusal,
    ) -> Answer {
        let answer = self.answer_refusal(awaiting, ack, refusal);
        // Acknowledged all the same (3.1.1 cannot say "dropped"): an id still known is
        // settled, and its resend is a duplicate.
        if matches!(answer, Answer::Ack { .. }) {
            self.stored(awaiting, ack);
        }
        answer
    }

    /// The publish `ack` acknowledges was stored and routed (or its fate otherwise decided):
    /// its QoS 2 id, if still awaiting PUBREL, is settled.
    pub fn stored(&self, awaiting: &mut AwaitingRelease, ack: Option<Ack>) {
        if let Some((QoS::ExactlyOnce, id)) = ack {
            awaiting.settle(id);
        }
    }

    fn answer_refusal(
        &self,
        awaiting: &mut AwaitingRelease,
        ack: Option<Ack>,
        refusal: Refusal,
    ) -> Answer {
        let answer = |reason, why| match ack {
            Some(ack) => Answer::Ack { ack, reason, why },
            None => Answer::Nothing,
        };
        match refusal {
            Refusal::Close(reason) => Answer::Close(reason),
            Refusal::Invalid(reason) if self.v5 && ack.is_some() => {
                answer(ack_reason(reason), None)
            }
            Refusal::Invalid(reason) => Answer::Close(reason),
            Refusal::Declined { reason, why } => answer(reason, Some(Why::Text(why))),
            Refusal::Dropped(_)
            | Refusal::NotStored
            | Refusal::Unmet(_)
            | Refusal::Unreadable(_)
                if ack.is_none() =>
            {
                Answer::Nothing
            }
            Refusal::Dropped(_) | Refusal::Unmet(_) | Refusal::Unreadable(_) if !self.v5 => {
                answer(PublishAckReason::Success, None)
            }
            // The client resends once it is back, and must not be taken for a duplicate of a
            // publish that was never stored (before 2026-12-06 its QoS 2 id stayed known: the
            // resend got its PUBREC and was stored nowhere).
            Refusal::NotStored if !self.v5 => {
                self.end_refused(awaiting, ack);
                Answer::Hangup
            }
            Refusal::Dropped(reason) => {
                self.end_refused(awaiting, ack);
                answer(reason, None)
            }
            Refusal::NotStored => {
                self.end_refused(awaiting, ack);
                answer(PublishAckReason::UnspecifiedError, None)
            }
            Refusal::Unmet(condition) => {
                self.end_refused(awaiting, ack);
                answer(
                    PublishAckReason::UnspecifiedError,
                    Some(Why::Unmet(Unmet(condition))),
                )
            }
            Refusal::Unreadable(why) => {
                self.end_refused(awaiting, ack);
                answer(
                    PublishAckReason::ImplementationSpecificError,
                    Some(Why::Text(why)),
                )
            }
        }
    }

    fn end_refused(&self, awaiting: &mut AwaitingRelease, ack: Option<Ack>) {
        if let Some((QoS::ExactlyOnce, id)) = ack {
            awaiting.end(id);
        }
    }
}

/// The PUBACK/PUBREC reason for a publish refused as invalid.
fn ack_reason(reason: DisconnectReasonCode) -> PublishAckReason {
    match reason {
        DisconnectReasonCode::TopicNameInvalid => PublishAckReason::TopicNameInvalid,
        DisconnectReasonCode::PayloadFormatInvalid => PublishAckReason::PayloadFormatInvalid,
        DisconnectReasonCode::QuotaExceeded => PublishAckReason::QuotaExceeded,
        _ => PublishAckReason::UnspecifiedError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V5: bool = true;
    const V311: bool = false;

    fn id(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).unwrap()
    }

    fn qos1(n: u16) -> Option<Ack> {
        Some((QoS::AtLeastOnce, id(n)))
    }

    fn qos2(n: u16) -> Option<Ack> {
        Some((QoS::ExactlyOnce, id(n)))
    }

    #[test]
    fn a_qos2_resend_before_pubrel_is_a_duplicate_and_not_counted_again() {
        let (mut q, mut awaiting) = (InboundQos::new(V5, 1), AwaitingRelease::default());
        assert_eq!(q.admit(&mut awaiting, qos2(7)), Admitted::New);
        q.acknowledged(QoS::ExactlyOnce, PublishAckReason::Success);
        assert_eq!(q.admit(&mut awaiting, qos2(7)), Admitted::Duplicate);
        assert!(q.released(&mut awaiting, id(7)));
        assert!(!q.released(&mut awaiting, id(7)), "released once");
        assert_eq!(
            q.admit(&mut awaiting, qos2(7)),
            Admitted::New,
            "id reusable"
        );
    }

    /// What a session hands on keeps an id only once its publish is settled: stored, or
    /// dropped with a PUBREC all the same (3.1.1); one whose store failed is forgotten.
    #[test]
    fn only_settled_qos2_ids_are_kept_for_another_node() {
        let ids = |a: &AwaitingRelease| {
            let mut ids: Vec<u16> = a.settled_ids().map(NonZeroU16::get).collect();
            ids.sort_unstable();
            ids
        };
        let (mut q, mut awaiting) = (InboundQos::new(V311, 10), AwaitingRelease::default());
        for n in 1..=3 {
            q.admit(&mut awaiting, qos2(n));
        }
        assert!(ids(&awaiting).is_empty(), "being stored, none is settled");
        q.stored(&mut awaiting, qos2(1));
        let dropped = Refusal::Dropped(PublishAckReason::NotAuthorized);
        assert!(matches!(
            q.refused(&mut awaiting, qos2(2), dropped),
            Answer::Ack { .. }
        ));
        assert_eq!(
            q.refused(&mut awaiting, qos2(3), Refusal::NotStored),
            Answer::Hangup
        );
        assert_eq!(ids(&awaiting), [1, 2]);
        assert_eq!(
            q.admit(&mut awaiting, qos2(3)),
            Admitted::New,
            "3 was forgotten"
        );
    }

    #[test]
    fn past_receive_maximum_an_mqtt5_client_is_closed_with_0x93() {
        let (mut q, mut awaiting) = (InboundQos::new(V5, 2), AwaitingRelease::default());
        for n in 1..=2 {
            assert_eq!(q.check_room(qos2(n)), Ok(()));
            q.admit(&mut awaiting, qos2(n));
            q.acknowledged(QoS::ExactlyOnce, PublishAckReason::Success);
        }
        let exceeded = Err(DisconnectReasonCode::ReceiveMaximumExceeded);
        assert_eq!(q.check_room(qos1(3)), exceeded, "QoS 2 open until PUBREL");
        assert_eq!(q.check_room(None), Ok(()), "QoS 0 is not counted");
        q.released(&mut awaiting, id(1));
        assert_eq!(q.check_room(qos1(3)), Ok(()));
    }

    #[test]
    fn receive_maximum_does_not_apply_to_mqtt311() {
        let (mut q, mut awaiting) = (InboundQos::new(V311, 1), AwaitingRelease::default());
        q.admit(&mut awaiting, qos1(1));
        assert_eq!(q.check_room(qos1(2)), Ok(()));
    }

    #[test]
    fn a_puback_frees_a_qos1_slot_and_a_refusing_pubrec_a_qos2_one() {
        let (mut q, mut awaiting) = (InboundQos::new(V5, 2), AwaitingRelease::default());
        q.admit(&mut awaiting, qos1(1));
        q.admit(&mut awaiting, qos2(2));
        q.acknowledged(QoS::AtLeastOnce, PublishAckReason::Success);
        q.acknowledged(QoS::ExactlyOnce, PublishAckReason::NotAuthorized);
        q.admit(&mut awaiting, qos1(3));
        assert_eq!(q.check_room(qos1(4)), Ok(()));
    }

    fn ack(ack: Option<Ack>, reason: PublishAckReason, why: Option<Why>) -> Answer {
        Answer::Ack {
            ack: ack.unwrap(),
            reason,
            why,
        }
    }

    #[test]
    fn an_invalid_publish_is_answered_in_mqtt5_and_closes_otherwise() {
        let invalid = Refusal::Invalid(DisconnectReasonCode::TopicNameInvalid);
        let mut awaiting = AwaitingRelease::default();
        let v5 = InboundQos::new(V5, 10);
        let v311 = InboundQos::new(V311, 10);
        assert_eq!(
            v5.refused(&mut awaiting, qos1(1), invalid),
            ack(qos1(1), PublishAckReason::TopicNameInvalid, None)
        );
        let close = Answer::Close(DisconnectReasonCode::TopicNameInvalid);
        assert_eq!(v5.refused(&mut awaiting, None, invalid), close);
        assert_eq!(v311.refused(&mut awaiting, qos1(1), invalid), close);
    }

    #[test]
    fn a_declined_publish_says_why_and_qos0_is_dropped() {
        let declined = Refusal::Declined {
            reason: PublishAckReason::ImplementationSpecificError,
            why: "too large",
        };
        let (q, mut awaiting) = (InboundQos::new(V5, 10), AwaitingRelease::default());
        assert_eq!(
            q.refused(&mut awaiting, qos2(1), declined),
            ack(
                qos2(1),
                PublishAckReason::ImplementationSpecificError,
                Some(Why::Text("too large"))
            )
        );
        assert_eq!(q.refused(&mut awaiting, None, declined), Answer::Nothing);
    }

    #[test]
    fn a_dropped_publish_is_refused_in_mqtt5_and_acknowledged_in_mqtt311() {
        let dropped = Refusal::Dropped(PublishAckReason::NotAuthorized);
        let mut awaiting = AwaitingRelease::default();
        let mut v5 = InboundQos::new(V5, 10);
        v5.admit(&mut awaiting, qos2(1));
        assert_eq!(
            v5.refused(&mut awaiting, qos2(1), dropped),
            ack(qos2(1), PublishAckReason::NotAuthorized, None)
        );
        assert!(
            !awaiting.end(id(1)),
            "a refused QoS 2 exchange ends at PUBREC"
        );

        let mut v311 = InboundQos::new(V311, 10);
        v311.admit(&mut awaiting, qos2(2));
        assert_eq!(
            v311.refused(&mut awaiting, qos2(2), dropped),
            ack(qos2(2), PublishAckReason::Success, None)
        );
        assert!(awaiting.end(id(2)), "3.1.1: the exchange goes on to PUBREL");
        assert_eq!(v311.refused(&mut awaiting, None, dropped), Answer::Nothing);
    }

    #[test]
    fn a_publish_not_stored_is_refused_in_mqtt5_and_hangs_up_in_mqtt311() {
        let mut awaiting = AwaitingRelease::default();
        let v5 = InboundQos::new(V5, 10);
        let v311 = InboundQos::new(V311, 10);
        assert_eq!(
            v5.refused(&mut awaiting, qos1(1), Refusal::NotStored),
            ack(qos1(1), PublishAckReason::UnspecifiedError, None)
        );
        assert_eq!(
            v311.refused(&mut awaiting, qos1(1), Refusal::NotStored),
            Answer::Hangup
        );
        assert_eq!(
            v311.refused(&mut awaiting, None, Refusal::NotStored),
            Answer::Nothing
        );
    }

    #[test]
    fn an_unmet_condition_is_refused_with_0x80_saying_which_and_ends_a_qos2_exchange() {
        let unmet = Refusal::Unmet(Condition::Revision(42));
        let mut awaiting = AwaitingRelease::default();
        let mut v5 = InboundQos::new(V5, 10);
        v5.admit(&mut awaiting, qos2(1));
        let answer = v5.refused(&mut awaiting, qos2(1), unmet);
        assert_eq!(
            answer,
            ack(
                qos2(1),
                PublishAckReason::UnspecifiedError,
                Some(Why::Unmet(Unmet(Condition::Revision(42))))
            )
        );
        let Answer::Ack { why: Some(why), .. } = answer else {
            unreachable!()
        };
        assert_eq!(
            why.to_string(),
            "precondition failed: the topic's revision is not 42"
        );
        assert!(
            !awaiting.end(id(1)),
            "a refused QoS 2 exchange ends at PUBREC"
        );
        assert_eq!(v5.refused(&mut awaiting, None, unmet), Answer::Nothing);
    }

    #[test]
    fn an_unreadable_condition_is_refused_with_0x83_and_ends_a_qos2_exchange() {
        let unreadable = Refusal::Unreadable("malformed");
        let mut awaiting = AwaitingRelease::default();
        let mut v5 = InboundQos::new(V5, 10);
        v5.admit(&mut awaiting, qos2(1));
        assert_eq!(
            v5.refused(&mut awaiting, qos2(1), unreadable),
            ack(
                qos2(1),
                PublishAckReason::ImplementationSpecificError,
                Some(Why::Text("malformed"))
            )
        );
        assert!(!awaiting.end(id(1)));
        assert_eq!(v5.refused(&mut awaiting, None, unreadable), Answer::Nothing);
    }
}
