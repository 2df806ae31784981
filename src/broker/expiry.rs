//! When offline sessions end: one task and one heap of deadlines for every session of the node.
//!
//! A task per offline session kept its allocation (about 400 bytes) and the session itself
//! until its expiry, an hour by default, even after the client came back or started clean: a
//! device that reconnects every few minutes left a dozen of them, each holding a session that
//! was no longer anyone's. A deadline here is the client id, the session (its serial) and
//! the connection it was set for; when it falls due, the session held for that id then ends
//! only if it is that session and that connection was still its last (see
//! `Sessions::expire_key`). A deadline whose session came back meanwhile
//! stays in the heap, at 48 bytes, until its time or until the heap has doubled since it was
//! last sifted: then every deadline that would end nothing goes (`Live`), so the heap holds
//! about as many as the node has offline sessions, not one per connection that ended within
//! the longest session expiry (with `--mqtt-max-session-expiry 0`, without end).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::topic::ClientKey;

/// What ends a session whose deadline came: its client id, the session's serial and the
/// connection it was set for.
pub(super) type Due = Box<dyn Fn(ClientKey, u64, u64) + Send + Sync>;

/// Whether a deadline would end something when it falls due: the session held for the client
/// id is still that session, and still the one the connection left.
pub(super) type Live = Box<dyn Fn(&ClientKey, u64, u64) -> bool + Send + Sync>;

/// A heap of fewer deadlines is never sifted.
const SIFT_FROM: usize = 1024;

/// A cheap handle on the node's deadlines.
#[derive(Clone, Default)]
pub(super) struct Expiries {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    heap: Mutex<BinaryHeap<Reverse<Deadline>>>,
    /// Told when a deadline earlier than every other is added.
    earlier: Notify,
    /// Told when the heap grew past `sift_at`.
    grown: Notify,
    /// Twice the deadlines left by the last sift (0: none yet, [`SIFT_FROM`]).
    sift_at: AtomicUsize,
    started: OnceLock<()>,
}

struct Deadline {
    at: Instant,
    client: ClientKey,
    /// The session's serial: a later session of the client id, also never attached
    /// (connection 0), is not this one's to end.
    session: u64,
    connection: u64,
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Deadline {}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

impl Expiries {
    /// `client`'s session (serial `session`), offline since `connection` left, ends once
    /// `expiry` has passed unless a connection took it up since. The first call starts the
    /// task that ends them, with `due` (and sifts them with `live`), until `shutdown`.
    pub fn after(
        &self,
        client: ClientKey,
        session: u64,
        connection: u64,
        expiry: Duration,
        start: impl FnOnce() -> (Due, Live, CancellationToken),
    ) {
        self.inner.started.get_or_init(|| {
            let (due, live, shutdown) = start();
            tokio::spawn(self.clone().run(due, live, shutdown));
        });
        // A deadline past what the clock can hold never comes.
        let Some(at) = Instant::now().checked_add(expiry) else {
            return;
        };
        let mut heap = self.heap();
        let earliest = heap.peek().is_none_or(|Reverse(first)| at < first.at);
        heap.push(Reverse(Deadline {
            at,
            client,
            session,
            connection,
        }));
        let grown = heap.len() > self.inner.sift_at.load(Ordering::Relaxed).max(SIFT_FROM);
        drop(heap);
        if earliest {
            self.inner.earlier.notify_one();
        }
        if grown {
            self.inner.grown.notify_one();
        }
    }

    /// Drops the deadlines that would end nothing. The heap is taken out to be sifted, so
    /// that neither `after` nor `live` (which looks at the sessions) waits on the other; what
    /// is added meanwhile joins what is kept.
    fn sift(&self, live: &Live) {
        let taken = std::mem::take(&mut *self.heap());
        let kept: Vec<_> = taken
            .into_vec()
            .into_iter()
            .filter(|Reverse(d)| live(&d.client, d.session, d.connection))
            .collect();
        let mut heap = self.heap();
        heap.extend(kept);
        self.inner
            .sift_at
            .store(heap.len().saturating_mul(2), Ordering::Relaxed);
    }

    /// Deadlines waiting, those whose session came back included.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.heap().len()
    }

    fn heap(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Reverse<Deadline>>> {
        // Pushes and pops of whole entries: a panic cannot leave the heap torn.
        self.inner
            .heap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn run(self, due: Due, live: Live, shutdown: CancellationToken) {
        loop {
            let now = Instant::now();
            let mut ended = Vec::new();
            let next = {
                let mut heap = self.heap();
                while heap.peek().is_some_and(|Reverse(d)| d.at <= now) {
                    if let Some(Reverse(d)) = heap.pop() {
                        ended.push(d);
                    }
                }
                heap.peek().map(|Reverse(d)| d.at)
            };
            for d in ended {
                due(d.client, d.session, d.connection);
            }
            let wait = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = wait => {}
                () = self.inner.earlier.notified() => {}
                () = self.inner.grown.notified() => self.sift(&live),
                () = shutdown.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    fn recorder() -> (Due, mpsc::Receiver<(ClientKey, u64)>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        (
            Box::new(move |c, _, n| tx.lock().unwrap().send((c, n)).unwrap()),
            rx,
        )
    }

    fn all_live() -> Live {
        Box::new(|_, _, _| true)
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_end_in_the_order_of_their_deadlines_not_of_their_detaches() {
        let expiries = Expiries::default();
        let shutdown = CancellationToken::new();
        let (due, ended) = recorder();
        let mut due = Some(due);
        for (client, secs) in [("late", 30), ("early", 10), ("middle", 20)] {
            expiries.after(client.into(), 9, 1, Duration::from_secs(secs), || {
                (due.take().unwrap(), all_live(), shutdown.clone())
            });
        }
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(ended.try_recv().is_err(), "nothing due yet");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(ended.try_recv().unwrap(), ("early".into(), 1));
        // One added later but due before the rest is not kept waiting for them.
        expiries.after(
            "sooner".into(),
            9,
            7,
            Duration::from_secs(1),
            || unreachable!(),
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(ended.try_recv().unwrap(), ("sooner".into(), 7));
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(ended.try_recv().unwrap(), ("middle".into(), 1));
        assert_eq!(ended.try_recv().unwrap(), ("late".into(), 1));
        assert_eq!(expiries.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_ends_after_the_shutdown() {
        let expiries = Expiries::default();
        let shutdown = CancellationToken::new();
        let (due, ended) = recorder();
        expiries.after("a".into(), 9, 1, Duration::from_secs(5), || {
            (due, all_live(), shutdown.clone())
        });
        tokio::task::yield_now().await;
        shutdown.cancel();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(ended.try_recv().is_err());
    }

    /// A client that reconnects over and over leaves a deadline per connection, each for its
    /// whole expiry: past twice what the last sift kept, those that would end nothing go, and
    /// the heap stays about the size of what is live. Those kept still end their sessions.
    #[tokio::test(start_paused = true)]
    async fn deadlines_that_would_end_nothing_are_sifted_out_as_the_heap_doubles() {
        let expiries = Expiries::default();
        let shutdown = CancellationToken::new();
        let (due, ended) = recorder();
        let mut start = Some((due, shutdown.clone()));
        // Every tenth connection is still the last of its client id; the rest came back.
        let live: Live = Box::new(|_, _, connection| connection % 10 == 0);
        let mut live = Some(live);
        let mut most = 0;
        for connection in 0..20_000u64 {
            let client = format!("c{}", connection % 100);
            expiries.after(
                client.into(),
                9,
                connection,
                Duration::from_secs(3600),
                || {
                    let (due, shutdown) = start.take().unwrap();
                    (due, live.take().unwrap(), shutdown)
                },
            );
            if connection % 100 == 0 {
                // The task sifts when it runs next.
                tokio::task::yield_now().await;
            }
            most = most.max(expiries.waiting());
        }
        tokio::task::yield_now().await;
        // Twice the live deadlines (2,000 at the end), and what is pushed between two runs of
        // the task; unsifted, all 20,000 would wait.
        assert!(most <= 4_200, "the heap reached {most}");
        assert!(
            (2_000..=4_200).contains(&expiries.waiting()),
            "{} waiting: every live deadline is kept",
            expiries.waiting()
        );
        tokio::time::sleep(Duration::from_secs(3601)).await;
        let mut fired: Vec<u64> = ended.try_iter().map(|(_, n)| n).collect();
        fired.sort_unstable();
        fired.dedup();
        let live: Vec<u64> = (0..20_000).filter(|n| n % 10 == 0).collect();
        assert!(
            live.iter().all(|n| fired.binary_search(n).is_ok()),
            "every live deadline still fired"
        );
    }
}
