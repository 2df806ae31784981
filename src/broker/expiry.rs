//! When offline sessions end: one task and one heap of deadlines for every session of the node.
//!
//! A task per offline session kept its allocation (about 400 bytes) and the session itself
//! until its expiry, an hour by default, even after the client came back or started clean: a
//! device that reconnects every few minutes left a dozen of them, each holding a session that
//! was no longer anyone's. A deadline here is the client id and the connection it was set
//! for; when it falls due, the session held for that id then ends only if that connection was
//! still its last (see `Sessions::expire`). A deadline whose session came back meanwhile stays
//! in the heap until its time, at 48 bytes: at most one per connection that ended within the
//! longest session expiry (`--mqtt-max-session-expiry`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::topic::ClientKey;

/// What ends a session whose deadline came: its client id and the connection it was set for.
pub(super) type Due = Box<dyn Fn(ClientKey, u64) + Send + Sync>;

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
    started: OnceLock<()>,
}

struct Deadline {
    at: Instant,
    client: ClientKey,
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
    /// `client`'s session, offline since `connection` left, ends once `expiry` has passed
    /// unless a connection took it up since. The first call starts the task that ends them,
    /// with `due`, until `shutdown`.
    pub fn after(
        &self,
        client: ClientKey,
        connection: u64,
        expiry: Duration,
        start: impl FnOnce() -> (Due, CancellationToken),
    ) {
        self.inner.started.get_or_init(|| {
            let (due, shutdown) = start();
            tokio::spawn(self.clone().run(due, shutdown));
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
            connection,
        }));
        drop(heap);
        if earliest {
            self.inner.earlier.notify_one();
        }
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

    async fn run(self, due: Due, shutdown: CancellationToken) {
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
                due(d.client, d.connection);
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
            Box::new(move |c, n| tx.lock().unwrap().send((c, n)).unwrap()),
            rx,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_end_in_the_order_of_their_deadlines_not_of_their_detaches() {
        let expiries = Expiries::default();
        let shutdown = CancellationToken::new();
        let (due, ended) = recorder();
        let mut due = Some(due);
        for (client, secs) in [("late", 30), ("early", 10), ("middle", 20)] {
            expiries.after(client.into(), 1, Duration::from_secs(secs), || {
                (due.take().unwrap(), shutdown.clone())
            });
        }
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(ended.try_recv().is_err(), "nothing due yet");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(ended.try_recv().unwrap(), ("early".into(), 1));
        // One added later but due before the rest is not kept waiting for them.
        expiries.after(
            "sooner".into(),
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
        expiries.after("a".into(), 1, Duration::from_secs(5), || {
            (due, shutdown.clone())
        });
        tokio::task::yield_now().await;
        shutdown.cancel();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(ended.try_recv().is_err());
    }
}
