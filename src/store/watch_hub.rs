//! One follower of the change log per node, shared by every watch on it (decision 018, "Watch").
//!
//! The hub reads [`Store::changes`] once, for all topics, from its own position, and hands each
//! change to the watches whose filter matches it, through a bounded buffer per watch. It never
//! waits on a watch: a watch whose buffer is full is dropped from the hub and told so
//! ([`WatchEnd::Overflow`]), so a slow client never slows writers or other watches.
//!
//! It runs only while some watch is joined: the first to join starts it from the settled
//! revision, and it stops when the last one leaves, so a node nobody watches reads nothing.
//! It wakes on [`Store::changed`] (local writes, other nodes' notices, expiry passes) and on a
//! short timer, because a change can be held back by another transaction still in flight and
//! a notice can be lost: the rows are the truth, notices only wake it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::message::Revision;
use super::watch_types::{ChangePage, RetainedChange};
use super::{Error, Store};
use crate::topic::{ClientKey, FilterSpec, SubscriptionTree, TopicFilter};

/// Changes the hub reads per query.
const PAGE: u32 = 500;
/// How long the hub waits after a failed read before trying again.
const RETRY: Duration = Duration::from_millis(500);

/// Why a watch's buffer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEnd {
    /// The watch did not take its changes as fast as they came, and its buffer filled.
    Overflow,
    /// The hub could not read for so long that the log it had not read was compacted.
    Compacted,
    /// The service is stopping.
    Stopped,
}

impl WatchEnd {
    fn code(self) -> u8 {
        match self {
            Self::Overflow => 1,
            Self::Compacted => 2,
            Self::Stopped => 3,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Overflow,
            2 => Self::Compacted,
            _ => Self::Stopped,
        }
    }
}

/// How the hub is tuned.
#[derive(Debug, Clone, Copy)]
pub struct HubOptions {
    /// Changes held for one watch at most; one more and the watch is dropped.
    pub buffer: usize,
    /// How often the hub reads the log when nothing wakes it.
    pub poll: Duration,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            buffer: 1024,
            poll: Duration::from_millis(250),
        }
    }
}

/// The hub of one node: a cheap `Clone` handle.
#[derive(Clone)]
pub struct WatchHub(Arc<Shared>);

struct Shared {
    store: Store,
    options: HubOptions,
    stop: CancellationToken,
    state: Mutex<State>,
    /// Every change at or below it has been handed to the watches joined at the time; set
    /// under `state`'s lock after the changes, read without it.
    position: AtomicI64,
}

#[derive(Default)]
struct State {
    running: bool,
    watches: SubscriptionTree<Arc<Slot>>,
    filters: HashMap<ClientKey, FilterSpec>,
    next_id: u64,
}

/// The hub's end of one watch's buffer.
struct Slot {
    tx: mpsc::Sender<Arc<RetainedChange>>,
    ended: Arc<AtomicU8>,
}

/// A watch joined to the hub: every change after [`Joined::joined_at`] to a topic its filter
/// matches comes through it, in revision order, until it ends. Leaves the hub when dropped.
pub struct Joined {
    hub: WatchHub,
    key: ClientKey,
    rx: mpsc::Receiver<Arc<RetainedChange>>,
    ended: Arc<AtomicU8>,
    /// The hub's position when this watch joined.
    pub joined_at: Revision,
}

impl WatchHub {
    /// A hub over `store`; it stops for good, ending its watches, when `stop` is cancelled.
    pub fn new(store: Store, options: HubOptions, stop: CancellationToken) -> Self {
        Self(Arc::new(Shared {
            store,
            options,
            stop,
            state: Mutex::default(),
            position: AtomicI64::new(0),
        }))
    }

    /// Joins a watch of `filter`, starting the hub if it is not running. `Error::Closed` once
    /// the service is stopping.
    pub async fn join(&self, filter: &TopicFilter) -> Result<Joined, Error> {
        loop {
            if self.0.stop.is_cancelled() {
                return Err(Error::Closed);
            }
            // A stopped hub starts from the settled revision, read before the lock is taken.
            let start_at = if self.state().running {
                None
            } else {
                Some(self.0.store.settled().await?)
            };
            let mut state = self.state();
            if !state.running {
                let Some(start_at) = start_at else {
                    continue; // it stopped meanwhile: read where to start
                };
                state.running = true;
                self.0.position.store(start_at, Ordering::Release);
                tokio::spawn(follow(self.clone(), start_at));
            }
            state.next_id += 1;
            let key: ClientKey = Arc::from(state.next_id.to_string());
            let (tx, rx) = mpsc::channel(self.0.options.buffer.max(1));
            let ended = Arc::new(AtomicU8::new(0));
            let spec = FilterSpec::Plain(filter.clone());
            let slot = Arc::new(Slot {
                tx,
                ended: ended.clone(),
            });
            state.watches.insert(&key, &spec, slot);
            state.filters.insert(key.clone(), spec);
            return Ok(Joined {
                hub: self.clone(),
                key,
                rx,
                ended,
                joined_at: self.0.position.load(Ordering::Acquire),
            });
        }
    }

    /// Watches joined now.
    pub fn joined(&self) -> usize {
        self.state().filters.len()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is a few map operations that cannot panic half-way.
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a page to the watches and moves the position on; `false` when no watch is left,
    /// and the hub has stopped.
    fn deliver(&self, page: ChangePage, position: Revision) -> bool {
        let mut state = self.state();
        let mut matched = Vec::new();
        let mut full = Vec::new();
        for change in page.changes {
            let change = Arc::new(change);
            state.watches.matches_plain(&change.topic, &mut matched);
            for (key, slot) in matched.drain(..) {
                if let Err(mpsc::error::TrySendError::Full(_)) = slot.tx.try_send(change.clone()) {
                    slot.ended
                        .store(WatchEnd::Overflow.code(), Ordering::Release);
                    full.push(key);
                }
                // Closed: the watch is leaving, and removes itself.
            }
            for key in full.drain(..) {
                remove(&mut state, &key);
            }
        }
        self.0.position.store(position, Ordering::Release);
        if state.filters.is_empty() {
            state.running = false;
            return false;
        }
        true
    }

    /// Ends every watch with `why`; the hub stops.
    fn end_all(&self, why: WatchEnd) {
        let mut state = self.state();
        let keys: Vec<ClientKey> = state.filters.keys().cloned().collect();
        for key in keys {
            if let Some(spec) = state.filters.remove(&key)
                && let Some(slot) = state.watches.remove(&key, &spec)
            {
                slot.ended.store(why.code(), Ordering::Release);
            }
        }
        state.running = false;
    }
}

fn remove(state: &mut State, key: &ClientKey) {
    if let Some(spec) = state.filters.remove(key) {
        state.watches.remove(key, &spec);
    }
}

impl Joined {
    /// The next change, or why the watch ended once its buffer is drained.
    pub async fn recv(&mut self) -> Result<Arc<RetainedChange>, WatchEnd> {
        match self.rx.recv().await {
            Some(change) => Ok(change),
            None => Err(WatchEnd::from_code(self.ended.load(Ordering::Acquire))),
        }
    }

    /// The revision this watch has been given every change up to, when its buffer is empty:
    /// where a client that has read everything so far may resume.
    pub fn caught_up(&self) -> Option<Revision> {
        // The position is stored after the changes it covers are in the buffer: read it first.
        let position = self.hub.0.position.load(Ordering::Acquire);
        self.rx.is_empty().then_some(position)
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        remove(&mut self.hub.state(), &self.key);
    }
}

/// The hub's follower: reads the log from `position` while any watch is joined.
async fn follow(hub: WatchHub, mut position: Revision) {
    let store = hub.0.store.clone();
    let mut changed = store.changed();
    let mut failed = false;
    loop {
        match store.changes(position, "", None, PAGE).await {
            Ok(page) => {
                if failed {
                    failed = false;
                    // A long outage may have outlasted the tombstones the hub did not read.
                    match store.compacted().await {
                        Ok(compacted) if compacted > position => {
                            hub.end_all(WatchEnd::Compacted);
                            return;
                        }
                        Ok(_) => {}
                        Err(_) => {
                            failed = true;
                            continue;
                        }
                    }
                }
                let full = page.full;
                position = page.settled.max(position);
                if !hub.deliver(page, position) {
                    return;
                }
                if full {
                    continue;
                }
            }
            Err(_) => {
                // The store logged it (in summary); the watches wait.
                failed = true;
                tokio::select! {
                    () = hub.0.stop.cancelled() => {}
                    () = tokio::time::sleep(RETRY) => continue,
                }
            }
        }
        tokio::select! {
            () = hub.0.stop.cancelled() => {
                hub.end_all(WatchEnd::Stopped);
                return;
            }
            _ = changed.changed() => {}
            () = tokio::time::sleep(hub.0.options.poll) => {}
        }
    }
}
