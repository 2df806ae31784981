//! What every watch on a node shares: the node's hub, the caps on open watches (the node's
//! and each principal's), and the service's stop signal, which ends every stream so that
//! shutdown does not wait on them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::api::ApiError;
use crate::auth::Principal;
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
    /// Watches open per principal name, for the principals with a `max_watches`; an entry
    /// goes with its last watch.
    by_principal: Counts,
}

/// One open watch's place under the caps; counted in `retaind_watches` while held.
pub(super) struct Open {
    _permit: OwnedSemaphorePermit,
    _principal: Option<PrincipalWatch>,
    metrics: Metrics,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.watches().dec();
    }
}

type Counts = Arc<Mutex<HashMap<String, usize>>>;

/// One watch counted for its principal; dropping it frees its place.
struct PrincipalWatch {
    counts: Counts,
    name: String,
}

impl Drop for PrincipalWatch {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(open) = counts.get_mut(&self.name) {
            *open -= 1;
            if *open == 0 {
                counts.remove(&self.name);
            }
        }
    }
}

fn lock(counts: &Counts) -> MutexGuard<'_, HashMap<String, usize>> {
    counts.lock().unwrap_or_else(PoisonError::into_inner)
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
            by_principal: Counts::default(),
        }
    }

    /// A place for one more watch of `principal`: refused if the principal holds its
    /// `max_watches` already (429), or the node its `--max-watches` (503).
    pub(super) fn open(
        &self,
        metrics: &Metrics,
        principal: Option<&Principal>,
    ) -> Result<Open, ApiError> {
        let principal = match principal.and_then(|p| Some((p.name.as_str(), p.limits.watches?))) {
            None => None,
            Some((name, max)) => Some(self.principal_watch(name, max)?),
        };
        // A refusal here drops the principal's place, giving it back.
        let permit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyWatches(self.settings.max_watches))?;
        metrics.watches().inc();
        Ok(Open {
            _permit: permit,
            _principal: principal,
            metrics: metrics.clone(),
        })
    }

    fn principal_watch(&self, name: &str, max: usize) -> Result<PrincipalWatch, ApiError> {
        let mut counts = lock(&self.by_principal);
        let open = counts.get(name).copied().unwrap_or(0);
        if open >= max {
            return Err(ApiError::PrincipalWatches(max));
        }
        counts.insert(name.to_owned(), open + 1);
        Ok(PrincipalWatch {
            counts: self.by_principal.clone(),
            name: name.to_owned(),
        })
    }
}
