//! After the principals are reloaded (`Authenticator::reload`), the connections and sessions
//! authenticated under the old ones: each goes on under its principal's new entry (same name,
//! same MQTT credentials, and the access key of the presigned URL it came through, if any),
//! or its connection closes.

use std::sync::Arc;

use super::handle::Broker;
use super::registry::Session;
use crate::auth::Principal;

/// What a reload did to the sessions held here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reauthorized {
    /// Sessions that go on under their principal's new entry.
    pub kept: usize,
    /// Connections closed because their principal, or its MQTT credentials, are gone.
    pub disconnected: usize,
}

/// Whether a principal of the old set still stands, and as which principal of the new.
fn standing(broker: &Broker, old: &Principal) -> Option<Arc<Principal>> {
    broker
        .auth()
        .principal(&old.name)
        .filter(|new| new.same_mqtt_credentials(old))
}

impl Broker {
    /// Moves every session to its principal's new entry, and closes the connections whose
    /// principal is gone. Credentials checked before the reload are forgotten first, so that
    /// a password removed from the file is not let in from memory.
    pub fn reauthorize(&self) -> Reauthorized {
        self.forget_checked_credentials();
        let mut done = Reauthorized::default();
        for session in self.sessions().all() {
            match self.reauthorize_session(&session) {
                Some(true) => done.kept += 1,
                Some(false) if session.revoke() => done.disconnected += 1,
                _ => {}
            }
        }
        done
    }

    /// One session: `Some(true)` kept (under the new entry), `Some(false)` its principal is
    /// gone, `None` no principal (authentication off). Also run by a connection right after
    /// it attaches, so that one authenticated under the old principals while the reload ran
    /// is judged too, whichever of the two came first.
    pub(super) fn reauthorize_session(&self, session: &Session) -> Option<bool> {
        let old = session.principal()?;
        let Some(new) = standing(self, &old) else {
            return Some(false);
        };
        // Let in by a presigned URL: its access key must still be the principal's.
        if let Some(credential) = session.credential()
            && !self
                .auth()
                .holder(&credential)
                .is_some_and(|holder| Arc::ptr_eq(&holder, &new))
        {
            return Some(false);
        }
        if !Arc::ptr_eq(&old, &new) {
            session.replace_principal(&old, new);
        }
        Some(true)
    }

    /// The entry now of the principal named `creator`, which made a session this node takes
    /// up without its client (restored at start, adopted from a node that is gone); `None`
    /// for an anonymous session or a principal no longer in the file.
    pub(super) fn creator_principal(&self, creator: Option<&str>) -> Option<Arc<Principal>> {
        self.auth().principal(creator?)
    }

    /// Whether a principal (a session's, when its Will is due) still stands.
    pub(super) fn still_stands(&self, principal: &Principal) -> Option<Arc<Principal>> {
        standing(self, principal)
    }
}
