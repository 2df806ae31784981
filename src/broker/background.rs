//! Threads below every other for large retained deliveries (decision 020).
//!
//! A new subscription to `#` over a million retained messages is bulk work: it would take every
//! core it can get for seconds, and every live publish would wait for a core behind it at each
//! step of its way. A connection that owes a subscription more than a page of retained messages
//! runs on these threads until its scans are done, and goes back to the others after.
//!
//! On Linux they are `SCHED_IDLE`: a thread of normal priority that wakes up takes their core at
//! once (the kernel prefers a core that only they use for it). They still get every core nothing
//! else wants, so a delivery alone runs as fast as before. Any thread may lower its own priority,
//! so this needs no privilege; where the kernel refuses it anyway, they run at nice 19. On other
//! systems they run at normal priority.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};

/// The background runtime: one per process, built on first use, never shut down (a server
/// stopping leaves its threads idle). `None` when it could not be built.
pub(super) fn runtime() -> Option<Handle> {
    static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("retaind-bulk")
                .on_thread_start(lower_priority)
                .enable_all()
                .build()
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "no background threads: large retained \
                                               deliveries run at normal priority");
                })
                .ok()
        })
        .as_ref()
        .map(|rt| rt.handle().clone())
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: both calls change only the calling thread (pid 0 names it on Linux), and `param`
    // outlives the call that reads it.
    let idle = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0;
    if !idle {
        // The nice value is per thread on Linux too. If this fails as well, the thread keeps
        // its normal priority, which is how everything ran before.
        let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_threads_run_below_every_other() {
        let here = unsafe { libc::sched_getscheduler(0) };
        let there = runtime()
            .expect("the background runtime")
            .spawn(async { unsafe { libc::sched_getscheduler(0) } })
            .await
            .unwrap();
        assert_eq!(here, libc::SCHED_OTHER, "the test's own thread is normal");
        assert_eq!(there, libc::SCHED_IDLE);
    }
}
