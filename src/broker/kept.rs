//! Sessions a node keeps after a resume failed once the node holding them had let them go
//! (decision 014, "A resume that fails after the hand-over"): each is held here offline, and
//! its row must come to name this node, so that its queue goes to Postgres and a resume
//! elsewhere asks this node for it. One task records them all, as soon as one is kept and then
//! every 2 s (the cluster's `BEAT`) while the database refuses, and once more as the node stops; the first
//! failure ends a pass, so a drain that met a database outage, leaving thousands of them,
//! costs one refused statement per beat, not one per session.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::handle::{Broker, Inner};
use super::registry::{NEVER, Session, ends_at_ms};
use crate::cluster::{BEAT, LetGoHeld};

/// Keeps `session` here after a failed resume (`Resuming::hold`) until it expires, and has
/// its row record, from the node `from` that let it go, that this node holds it ([`Kept`]):
/// from then on its queue is in Postgres and a resume elsewhere asks this node for it.
/// Whether it stays.
pub(super) fn keep(
    broker: &Broker,
    session: &Arc<Session>,
    from: &str,
    expiry_secs: u32,
    claim: u64,
) -> bool {
    let expiry = Duration::from_secs(u64::from(expiry_secs));
    let now_ms = broker.store().clock().now_ms();
    let expires_at_ms = ends_at_ms(now_ms, expiry_secs, expiry);
    if !broker.sessions().keep_prepared(session, expires_at_ms) {
        return false;
    }
    if let Some(cluster) = broker.cluster() {
        cluster.resume_kept();
    }
    tracing::warn!(client = %session.key, node = %from, "a resume failed after the node holding the session let it go: holding it here until its client returns");
    if expires_at_ms != NEVER {
        // Never attached: its connection is 0 until a client takes it up.
        broker.expire_after(session, 0, expiry);
    }
    broker
        .inner
        .kept
        .owe(broker, session.clone(), from.to_owned(), claim);
    true
}

/// A kept session whose row does not name this node yet.
struct Owed {
    session: Arc<Session>,
    /// The node that let it go, which its row still names.
    from: String,
    /// The failed CONNECT's claim on the client id: a later one means its client came back.
    claim: u64,
}

/// A cheap handle on the node's kept sessions.
#[derive(Clone, Default)]
pub(super) struct Kept {
    inner: Arc<KeptInner>,
}

#[derive(Default)]
struct KeptInner {
    owed: Mutex<Vec<Owed>>,
    /// Told when one is added.
    added: Notify,
    started: OnceLock<()>,
}

impl Kept {
    /// `session` is kept here; its row is recorded as this node's from `from`'s unless the
    /// client id is claimed after `claim`.
    pub fn owe(&self, broker: &Broker, session: Arc<Session>, from: String, claim: u64) {
        self.inner.started.get_or_init(|| {
            tokio::spawn(self.clone().run(Arc::downgrade(&broker.inner)));
        });
        self.owed().push(Owed {
            session,
            from,
            claim,
        });
        self.inner.added.notify_one();
    }

    fn owed(&self) -> std::sync::MutexGuard<'_, Vec<Owed>> {
        self.inner
            .owed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn run(self, weak: Weak<Inner>) {
        loop {
            let pending = std::mem::take(&mut *self.owed());
            let Some(inner) = weak.upgrade() else {
                return;
            };
            let broker = Broker { inner };
            let left = record(&broker, pending).await;
            let stopping = broker.stopping_signal().clone();
            drop(broker);
            let again = !left.is_empty();
            self.owed().extend(left);
            // While the database refuses, the next pass waits a beat; otherwise until one is
            // added.
            let wait = async {
                if again {
                    tokio::time::sleep(BEAT).await;
                } else {
                    self.inner.added.notified().await;
                }
            };
            tokio::select! {
                () = wait => {}
                () = stopping.cancelled() => return self.last_pass(&weak).await,
            }
        }
    }

    /// Once more as the node stops (its listeners closed, so no new one comes): a session
    /// recorded now has its queue written to Postgres with the others' and is taken up by
    /// another node; one the database still refuses is lost with this node's memory.
    async fn last_pass(&self, broker: &Weak<Inner>) {
        let pending = std::mem::take(&mut *self.owed());
        let Some(inner) = broker.upgrade() else {
            return;
        };
        let left = record(&Broker { inner }, pending).await;
        if !left.is_empty() {
            tracing::warn!(
                sessions = left.len(),
                "stopping with sessions kept after failed resumes whose rows the database did \
                 not record: what they queued here is lost"
            );
        }
    }
}

/// Records each of `pending` that is still kept; returns those the database did not take,
/// from the first it refused on.
async fn record(broker: &Broker, pending: Vec<Owed>) -> Vec<Owed> {
    let Some(cluster) = broker.cluster() else {
        return Vec::new();
    };
    let sessions = broker.sessions();
    let mut pending = pending.into_iter();
    while let Some(owed) = pending.next() {
        if !sessions.kept_unrecorded(&owed.session) {
            continue;
        }
        match cluster
            .hold_let_go(&owed.from, &owed.session.key, owed.claim)
            .await
        {
            Ok(LetGoHeld::Recorded) => sessions.kept_recorded(&owed.session),
            // A connection here takes it up (the copy is not made to spool under it).
            Ok(LetGoHeld::ClaimedHere) => {}
            // Its client came back through another node, or the row went: as any prepared
            // copy, it leaves what it received to the stored session's queue.
            Ok(LetGoHeld::Elsewhere) => sessions.discard_prepared(&owed.session, true),
            Err(e) => {
                tracing::warn!(client = %owed.session.key, error = %e, "cannot record that this node holds a session; trying again");
                return std::iter::once(owed).chain(pending).collect();
            }
        }
    }
    Vec::new()
}
