//! Why a connection was asked to close, and what an operator's disconnect asked of its
//! leaving. Each connection has its own: the session's link to its connection is replaced as
//! soon as another connection attaches, and the one taken over reads these later, on its own
//! task. Kept on the session, they were the successor's by then: the connection taken over
//! by a resume was told 0x8B Server shutting down instead of 0x8E, and a connection an
//! operator disconnected with cleanSession and preventWillMessage whose client came back
//! while it was still finishing found both cleared, published its Will and left the session
//! to the newcomer (both before 2026-12-06).

use std::sync::{Arc, Mutex};

use crate::mqtt::DisconnectReasonCode;

#[derive(Clone)]
pub(in crate::broker) struct StopReason(Arc<Mutex<Why>>);

struct Why {
    reason: DisconnectReasonCode,
    /// An operator's disconnect (DeleteConnection) ends the session with the connection.
    discard: bool,
    /// An operator's disconnect keeps the connection's Will back.
    no_will: bool,
}

impl StopReason {
    pub(super) fn new() -> Self {
        Self(Arc::new(Mutex::new(Why {
            // What a connection is told when nothing else gave a reason: the stop came from
            // the shutdown, whose token is its stop's parent.
            reason: DisconnectReasonCode::ServerShuttingDown,
            discard: false,
            no_will: false,
        })))
    }

    fn why(&self) -> std::sync::MutexGuard<'_, Why> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn set(&self, reason: DisconnectReasonCode) {
        self.why().reason = reason;
    }

    /// An operator's disconnect: 0x98 Administrative action, and what it asks of the leaving.
    pub(super) fn oust(&self, discard: bool, no_will: bool) {
        let mut why = self.why();
        why.reason = DisconnectReasonCode::AdministrativeAction;
        why.discard = discard;
        why.no_will = no_will;
    }

    pub fn get(&self) -> DisconnectReasonCode {
        self.why().reason
    }

    /// What an operator's disconnect asked of this connection's leaving: (end the session,
    /// publish no Will).
    pub fn ousted(&self) -> (bool, bool) {
        let why = self.why();
        (why.discard, why.no_will)
    }
}
