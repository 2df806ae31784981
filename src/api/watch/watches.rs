//! What every watch on a node shares: the node's hub, the cap on open watches, and the
//! service's stop signal, which ends every stream so that shutdown does not wait on them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{HubOptions, Store, WatchHub};

/// How watches are limited and paced.
#[derive(Debug, Clone, Copy)]
pub struct WatchSettings {
    /// Watches open at once on this node (`--max-watches`).
    pub max_watches: usize,
    /// An idle watch's progress event or keep-alive comment (`--watch-progress-interval`).
    pub progress_every: Duration,
    pub hub: HubOptions,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            max_watches: 10_000,
            progress_every: Duration::from_secs(10),
            hub: HubOptions::default(),
        }
    }
}

/// The watches of one node: a cheap `Clone` handle.
#[derive(Clone)]
pub struct Watches {
    pub(super) hub: WatchHub,
    slots: Arc<Semaphore>,
    pub(super) settings: WatchSettings,
    pub(super) stop: CancellationToken,
}

/// One open watch's place under the cap; counted in `retaind_watches` while held.
pub(super) struct Open {
    _permit: OwnedSemaphorePermit,
    metrics: Metrics,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.watches().dec();
    }
}

impl Watches {
    /// The watches of a node serving `store`; they all end when `stop` is cancelled.
    pub fn new(store: Store, settings: WatchSettings, stop: CancellationToken) -> Self {
        Self {
            hub: WatchHub::new(store, settings.hub, stop.clone()),
            slots: Arc::new(Semaphore::new(
                settings.max_watches.min(Semaphore::MAX_PERMITS),
            )),
            settings,
            stop,
        }
    }

    /// A place for one more watch, if the node has one.
    pub(super) fn open(&self, metrics: &Metrics) -> Option<Open> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        metrics.watches().inc();
        Some(Open {
            _permit: permit,
            metrics: metrics.clone(),
        })
    }
}
