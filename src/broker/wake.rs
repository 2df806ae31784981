//! A connection's wake-up call, for whoever queues a message for it.
//!
//! Routers call it on the publisher's way to its PUBACK, and the connection may be running on
//! the background threads (decision 020). `tokio::sync::Notify` keeps its waiters under a lock
//! that the waiting side takes each time it starts and stops waiting: a background thread
//! preempted while holding it would make the publisher wait for an idle core. This one shares
//! no lock: a flag, and a waker swapped in and out atomically.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use futures_util::task::AtomicWaker;

#[derive(Default)]
pub(super) struct Wake {
    set: AtomicBool,
    waker: AtomicWaker,
}

impl Wake {
    /// Wakes the waiting connection, or the next one to wait (the call is kept until then).
    pub fn notify(&self) {
        self.set.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// The connection that waited is gone: its waker goes with it. A waker keeps its task's
    /// allocation (the task's future included, about 4 KiB) alive after the task ended, so a
    /// persistent session kept offline would hold its last connection's for hours.
    pub fn forget(&self) {
        drop(self.waker.take());
    }

    /// Done once [`Wake::notify`] was called since the last wait ended. One waiter at a time:
    /// the connection attached to the session.
    pub fn notified(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.set.swap(false, Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A call between the check and the registration found no waker to wake.
            if self.set.swap(false, Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    #[test]
    fn a_call_before_the_wait_is_kept_for_it_once() {
        let wake = Wake::default();
        wake.notify();
        wake.notify();
        assert!(wake.notified().now_or_never().is_some());
        assert!(
            wake.notified().now_or_never().is_none(),
            "two calls are one wake-up"
        );
    }

    #[test]
    fn a_forgotten_waiter_keeps_nothing_of_its_task() {
        struct Counted;
        impl futures_util::task::ArcWake for Counted {
            fn wake_by_ref(_: &Arc<Self>) {}
        }
        let task = Arc::new(Counted);
        let waker = futures_util::task::waker(task.clone());
        let wake = Wake::default();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(std::pin::pin!(wake.notified()).poll(&mut cx).is_pending());
        drop(waker);
        assert_eq!(Arc::strong_count(&task), 2, "the waiter's waker is kept");
        wake.forget();
        assert_eq!(Arc::strong_count(&task), 1);
        // A call meanwhile is still kept for the next waiter.
        wake.notify();
        assert!(wake.notified().now_or_never().is_some());
    }

    #[tokio::test]
    async fn a_call_from_another_thread_wakes_the_waiter() {
        let wake = Arc::new(Wake::default());
        let waiting = tokio::spawn({
            let wake = wake.clone();
            async move { wake.notified().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        std::thread::spawn(move || wake.notify()).join().unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
    }
}
