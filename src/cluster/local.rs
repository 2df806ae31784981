//! This node's own interest: a NATS subscription per distinct filter its sessions hold
//! plainly, counted across sessions; a queue subscription per member of a shared
//! subscription, so that NATS spreads a group's messages over its members on every node; and
//! one key per filter in the interest bucket while any of them lasts. One task applies every
//! change in the order the broker made them, so a filter dropped and taken again is never left
//! unannounced; the broker waits for an addition before it sends the SUBACK. Additions queued
//! together are applied together, with one flush and their keys put at once; so are removals,
//! their keys deleted at once.
//!
//! NATS may take neither in time: async-nats queues commands in a bounded channel that nobody
//! drains while it reconnects. A subscription or key it did not take is owed, and tried again
//! every `RETRY_EVERY` and at each reconnection; meanwhile the node is "stalled" and later
//! changes do not wait on NATS at all, so a stalled server delays a SUBACK by at most one
//! timeout and never holds the changes queued behind it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_nats::{Client, Subscriber};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::bucket;
use super::inbox::Inbox;
use super::link::Link;
use super::subject::{filter_subjects, queue_group};
use crate::topic::{ClientKey, FilterSpec, TopicFilter};

/// How long one announcement may wait for NATS before the SUBACK goes out without it. A
/// reconnection announces everything again.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often what NATS did not take is tried again while it stays connected.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// Changes applied together, and keys put or deleted at once: additions or removals queued
/// together, or owed keys tried again.
const MAX_BATCH: usize = 256;

pub enum Change {
    Add(FilterSpec, ClientKey, oneshot::Sender<()>),
    Remove(FilterSpec, ClientKey),
    /// The keys of a node that is gone (dead, or stopped without withdrawing them all):
    /// removed from the bucket so that nobody sends to it any more.
    Bury(Vec<String>),
    /// The others took this node for dead and deleted its keys: every key is put again.
    Reannounce,
}

/// One filter this node is interested in.
struct Held {
    /// Plain subscriptions to it, across sessions.
    plain: usize,
    /// Shared subscriptions to it (any group), across sessions.
    members: usize,
    /// The plain subscription's receiving tasks, one per subject; aborting one drops its
    /// NATS subscription. Empty while `plain > 0` only if NATS did not take it (owed).
    receivers: Vec<JoinHandle<()>>,
    key: String,
    /// Whether the bucket holds `key`, as far as this node knows.
    announced: bool,
}

pub struct Local {
    pub client: Client,
    /// The connection that holds queue subscriptions: not the one that publishes, which
    /// would not be handed its own messages.
    pub members_client: Client,
    pub js: jetstream::Context,
    pub link: Arc<Link>,
    pub prefix: String,
    pub node: Arc<str>,
    pub inbox: Arc<Inbox>,
    /// Announcements that did not reach the bucket (NATS down or slow).
    pub unannounced: Arc<AtomicU64>,
}

struct State {
    held: HashMap<TopicFilter, Held>,
    /// Each member's queue subscriptions, by shared subscription and member; empty if NATS
    /// did not take them (owed).
    members: HashMap<(FilterSpec, ClientKey), Vec<JoinHandle<()>>>,
    store: Option<kv::Store>,
    /// NATS did not take something in time: until the next retry, changes skip NATS.
    stalled: bool,
    /// Something is owed to NATS: a subscription or a key, or a key's removal.
    owed: bool,
    /// Keys of filters this node no longer holds that the bucket may still hold: their
    /// removal was not taken. Until it is, the others send this node what it drops.
    unwithdrawn: HashSet<String>,
}

impl Local {
    /// Applies changes until `shutdown`, then withdraws every key of this node.
    pub async fn run(
        self,
        mut changes: mpsc::UnboundedReceiver<Change>,
        mut epochs: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) {
        let mut state = State {
            held: HashMap::new(),
            members: HashMap::new(),
            store: self.bucket().await,
            stalled: false,
            owed: false,
            unwithdrawn: HashSet::new(),
        };
        let mut retry = tokio::time::interval(RETRY_EVERY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                change = changes.recv() => {
                    let mut next = change;
                    if next.is_none() {
                        break;
                    }
                    while let Some(change) = next.take() {
                        next = self.apply(&mut state, change, &mut changes).await;
                    }
                }
                changed = epochs.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // NATS came back, maybe restarted and without the bucket: announce again.
                    state.store = self.bucket().await;
                    state.held.values_mut().for_each(|h| h.announced = false);
                    state.owed = true;
                    state.stalled = false;
                    self.settle(&mut state).await;
                }
                _ = retry.tick(), if state.owed && self.link.is_connected() => {
                    state.stalled = false;
                    self.settle(&mut state).await;
                }
                () = shutdown.cancelled() => break,
            }
        }
        for tasks in state.members.values() {
            tasks.iter().for_each(JoinHandle::abort);
        }
        let mut keys: Vec<String> = std::mem::take(&mut state.unwithdrawn).into_iter().collect();
        for (_, h) in state.held.drain() {
            h.receivers.iter().for_each(JoinHandle::abort);
            keys.push(h.key);
        }
        // At once, a batch at a time: one after another, a node holding many filters passed
        // its deadline to stop before it had withdrawn them all.
        if let Some(store) = &state.store {
            for batch in keys.chunks(MAX_BATCH) {
                delete_at_once(store, batch.to_vec()).await;
            }
        }
    }

    /// Deletes other nodes' keys, until NATS does not take one in time: what is left, the
    /// next census finds again (`Cluster::start`'s sweep).
    async fn bury(&self, state: &mut State, keys: Vec<String>) {
        let Some(store) = state.store.clone() else {
            return;
        };
        // A batch at a time, as this node's own removals go: a dead node may leave thousands.
        for batch in keys.chunks(MAX_BATCH) {
            if state.stalled || !self.link.is_connected() {
                return;
            }
            let deleted = delete_at_once(&store, batch.to_vec()).await;
            if deleted.iter().any(|(_, d)| d.is_err()) {
                state.stalled = true;
                state.owed = true;
            }
        }
    }

    async fn bucket(&self) -> Option<kv::Store> {
        if !self.link.is_connected() {
            return None;
        }
        match tokio::time::timeout(ANNOUNCE_TIMEOUT, bucket::open(&self.js, &self.prefix)).await {
            Ok(Ok(store)) => Some(store),
            Ok(Err(cause)) => {
                tracing::warn!(%cause, "cannot open the interest bucket");
                None
            }
            Err(_) => None,
        }
    }

    /// Applies `change`; returns a change it took from `changes` but did not apply.
    async fn apply(
        &self,
        state: &mut State,
        change: Change,
        changes: &mut mpsc::UnboundedReceiver<Change>,
    ) -> Option<Change> {
        match change {
            Change::Add(spec, member, done) => {
                // The additions queued behind this one go with it: one flush and one round of
                // puts for all of them, instead of three round trips to NATS each, one after
                // another, while every SUBACK and resume waits (measured in a drain: 1,000
                // resumes a second queued here for a third of a second each).
                let (batch, next) = gather((spec, member, done), changes, |c| match c {
                    Change::Add(spec, member, done) => Ok((spec, member, done)),
                    other => Err(other),
                });
                self.add(state, batch).await;
                return next;
            }
            Change::Remove(spec, member) => {
                // The removals queued behind this one go with it, their keys deleted at once:
                // one at a time, the clients of a node leaving together (a network cut, a
                // drain) held every SUBSCRIBE behind them a NATS round trip per filter.
                let (batch, next) = gather((spec, member), changes, |c| match c {
                    Change::Remove(spec, member) => Ok((spec, member)),
                    other => Err(other),
                });
                let keys = batch
                    .iter()
                    .filter_map(|(spec, member)| self.release(state, spec, member))
                    .collect();
                self.withdraw(state, keys).await;
                return next;
            }
            Change::Bury(keys) => self.bury(state, keys).await,
            Change::Reannounce => {
                state.held.values_mut().for_each(|h| h.announced = false);
                state.owed = true;
                // Stalled, the next retry puts them.
                if !state.stalled {
                    self.settle(state).await;
                }
            }
        }
        None
    }

    /// Takes up `batch`'s subscriptions, then announces the filters new to this node; each
    /// addition's sender learns when that is done.
    async fn add(
        &self,
        state: &mut State,
        batch: Vec<(FilterSpec, ClientKey, oneshot::Sender<()>)>,
    ) {
        let mut new = Vec::new();
        let mut waiting = Vec::with_capacity(batch.len());
        for (spec, member, done) in batch {
            if let Some(filter) = self.hold(state, spec, member).await {
                new.push(filter);
            }
            waiting.push(done);
        }
        if self.link.is_connected() && !state.stalled {
            // The subscriptions reach the server before the keys: once another node sees a
            // key, what it sends arrives.
            self.flush().await;
            if !new.is_empty() && state.store.is_none() {
                state.store = self.bucket().await;
            }
        }
        self.announce(state, &new).await;
        for done in waiting {
            let _ = done.send(());
        }
    }

    /// Counts `member`'s subscription to `spec` and subscribes on NATS where it is the first
    /// of its kind here; the filter if this node did not hold it before.
    async fn hold(
        &self,
        state: &mut State,
        spec: FilterSpec,
        member: ClientKey,
    ) -> Option<TopicFilter> {
        let filter = spec.filter().clone();
        let new = !state.held.contains_key(&filter);
        let key = bucket::key(&self.node, &filter);
        // Held again before its removal was taken: the key is to stay.
        state.unwithdrawn.remove(&key);
        let held = state.held.entry(filter.clone()).or_insert_with(|| Held {
            plain: 0,
            members: 0,
            receivers: Vec::new(),
            key,
            announced: false,
        });
        match spec.share_group() {
            None => {
                held.plain += 1;
                if held.plain == 1 {
                    let receivers = self.subscribe_plain(state, &filter).await;
                    if let Some(held) = state.held.get_mut(&filter) {
                        held.receivers = receivers;
                    }
                }
            }
            Some(_) => {
                held.members += 1;
                let tasks = self.subscribe_member(state, &spec, &member).await;
                if let Some(old) = state.members.insert((spec, member), tasks) {
                    old.iter().for_each(JoinHandle::abort);
                }
            }
        }
        new.then_some(filter)
    }

    /// Subscribes `filter` for this node's plain subscriptions; nothing if NATS did not take
    /// it, which is then owed.
    async fn subscribe_plain(
        &self,
        state: &mut State,
        filter: &TopicFilter,
    ) -> Vec<JoinHandle<()>> {
        let subjects = filter_subjects(&self.prefix, filter);
        let Some(subs) = self.subscribe(state, &self.client, subjects, None).await else {
            return Vec::new();
        };
        subs.into_iter()
            .map(|sub| tokio::spawn(receive(sub, self.inbox.clone())))
            .collect()
    }

    /// Joins `member` to its shared subscription's queue group; nothing if NATS did not
    /// take it, which is then owed.
    async fn subscribe_member(
        &self,
        state: &mut State,
        spec: &FilterSpec,
        member: &ClientKey,
    ) -> Vec<JoinHandle<()>> {
        let Some(group) = spec.share_group() else {
            return Vec::new();
        };
        let queue = queue_group(group, spec.filter());
        let subjects = filter_subjects(&self.prefix, spec.filter());
        let Some(subs) = self
            .subscribe(state, &self.members_client, subjects, Some(&queue))
            .await
        else {
            return Vec::new();
        };
        subs.into_iter()
            .map(|sub| {
                tokio::spawn(receive_as_member(
                    sub,
                    self.inbox.clone(),
                    spec.clone(),
                    member.clone(),
                ))
            })
            .collect()
    }

    /// Every subject or none: a filter half subscribed would miss messages silently. A
    /// subscription dropped while it waits never reached async-nats, so nothing is left behind.
    async fn subscribe(
        &self,
        state: &mut State,
        client: &Client,
        subjects: Vec<String>,
        queue: Option<&str>,
    ) -> Option<Vec<Subscriber>> {
        if state.stalled {
            state.owed = true;
            return None;
        }
        let mut subs = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let made = tokio::time::timeout(ANNOUNCE_TIMEOUT, async {
                match queue {
                    None => client.subscribe(subject).await,
                    Some(queue) => client.queue_subscribe(subject, queue.to_owned()).await,
                }
            })
            .await;
            match made {
                Ok(Ok(sub)) => subs.push(sub),
                Ok(Err(e)) => {
                    // Only a closed client refuses; the node is shutting down.
                    tracing::warn!(error = %e, "cannot subscribe on NATS");
                    state.owed = true;
                    return None;
                }
                Err(_) => {
                    state.stalled = true;
                    state.owed = true;
                    return None;
                }
            }
        }
        Some(subs)
    }

    async fn flush(&self) {
        let _ = tokio::time::timeout(ANNOUNCE_TIMEOUT, self.client.flush()).await;
        let _ = tokio::time::timeout(ANNOUNCE_TIMEOUT, self.members_client.flush()).await;
    }

    /// Puts the keys of `filters` in the bucket, all at once, or leaves those NATS did not
    /// take owed: also a filter whose plain subscription is owed, since a key must never
    /// name a filter this node cannot receive.
    async fn announce(&self, state: &mut State, filters: &[TopicFilter]) {
        let store = state
            .store
            .clone()
            .filter(|_| !state.stalled && self.link.is_connected());
        let mut puts = Vec::new();
        let mut refused = Vec::new();
        for filter in filters {
            let Some(held) = state.held.get(filter) else {
                continue;
            };
            let receivable = held.plain == 0 || !held.receivers.is_empty();
            match &store {
                Some(store) if receivable => {
                    let value = bytes::Bytes::copy_from_slice(filter.as_str().as_bytes());
                    let put = store.put(held.key.clone(), value);
                    puts.push(async move {
                        (filter, tokio::time::timeout(ANNOUNCE_TIMEOUT, put).await)
                    });
                }
                _ => refused.push(filter),
            }
        }
        let mut results: Vec<(&TopicFilter, bool)> = Vec::with_capacity(filters.len());
        for (filter, put) in futures_util::future::join_all(puts).await {
            results.push((filter, taken(state, put)));
        }
        results.extend(refused.into_iter().map(|f| (f, false)));
        for (filter, announced) in results {
            if !announced {
                self.unannounced.fetch_add(1, Ordering::Relaxed);
                state.owed = true;
            }
            if let Some(held) = state.held.get_mut(filter) {
                held.announced = announced;
            }
        }
    }

    /// Tries again what NATS did not take: subscriptions first, then keys. Stops at the
    /// first thing NATS does not take in time.
    async fn settle(&self, state: &mut State) {
        state.owed = false;
        let plain: Vec<TopicFilter> = state
            .held
            .iter()
            .filter(|(_, h)| h.plain > 0 && h.receivers.is_empty())
            .map(|(f, _)| f.clone())
            .collect();
        for filter in plain {
            let receivers = self.subscribe_plain(state, &filter).await;
            if let Some(held) = state.held.get_mut(&filter) {
                held.receivers = receivers;
            }
        }
        let members: Vec<(FilterSpec, ClientKey)> = state
            .members
            .iter()
            .filter(|(_, tasks)| tasks.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for (spec, member) in members {
            let tasks = self.subscribe_member(state, &spec, &member).await;
            if let Some(slot) = state.members.get_mut(&(spec, member)) {
                *slot = tasks;
            }
        }
        if state.stalled {
            return;
        }
        self.flush().await;
        if state.store.is_none() {
            state.store = self.bucket().await;
        }
        let keys: Vec<TopicFilter> = state
            .held
            .iter()
            .filter(|(_, h)| !h.announced)
            .map(|(f, _)| f.clone())
            .collect();
        for filters in keys.chunks(MAX_BATCH) {
            self.announce(state, filters).await;
        }
        let unwithdrawn: Vec<String> = state.unwithdrawn.drain().collect();
        for keys in unwithdrawn.chunks(MAX_BATCH) {
            self.withdraw(state, keys.to_vec()).await;
        }
    }

    /// Removes this node's `keys` from the bucket, all at once, or leaves the removals NATS
    /// did not take owed: while stalled, a removal does not wait on NATS either.
    async fn withdraw(&self, state: &mut State, keys: Vec<String>) {
        let store = state
            .store
            .clone()
            .filter(|_| !state.stalled && self.link.is_connected());
        let Some(store) = store else {
            keys.into_iter()
                .for_each(|key| self.owe_removal(state, key));
            return;
        };
        for (key, deleted) in delete_at_once(&store, keys).await {
            if !taken(state, deleted) {
                self.owe_removal(state, key);
            }
        }
    }

    fn owe_removal(&self, state: &mut State, key: String) {
        self.unannounced.fetch_add(1, Ordering::Relaxed);
        state.unwithdrawn.insert(key);
        state.owed = true;
    }

    /// Uncounts `member`'s subscription to `spec`, dropping the NATS subscriptions it was
    /// the last to need; the filter's key, to withdraw, if this node no longer holds it.
    fn release(&self, state: &mut State, spec: &FilterSpec, member: &ClientKey) -> Option<String> {
        let filter = spec.filter();
        let held = state.held.get_mut(filter)?;
        match spec.share_group() {
            None => {
                held.plain = held.plain.saturating_sub(1);
                if held.plain == 0 {
                    held.receivers.drain(..).for_each(|r| r.abort());
                }
            }
            Some(_) => {
                held.members = held.members.saturating_sub(1);
                if let Some(tasks) = state.members.remove(&(spec.clone(), member.clone())) {
                    tasks.iter().for_each(JoinHandle::abort);
                }
            }
        }
        if held.plain + held.members > 0 {
            return None;
        }
        state.held.remove(filter).map(|h| h.key)
    }
}

/// `first` and the changes of its kind queued right behind it (`pick` takes them), up to
/// [`MAX_BATCH`]; and the change of another kind that ended the batch, if one did.
fn gather<T>(
    first: T,
    changes: &mut mpsc::UnboundedReceiver<Change>,
    pick: impl Fn(Change) -> Result<T, Change>,
) -> (Vec<T>, Option<Change>) {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match changes.try_recv().map(&pick) {
            Ok(Ok(item)) => batch.push(item),
            Ok(Err(other)) => return (batch, Some(other)),
            Err(_) => break,
        }
    }
    (batch, None)
}

/// What NATS answered to a delete from the bucket, if it answered in time.
type Deleted = Result<Result<(), kv::DeleteError>, tokio::time::error::Elapsed>;

/// Deletes `keys` from the bucket at once, each within [`ANNOUNCE_TIMEOUT`].
async fn delete_at_once(store: &kv::Store, keys: Vec<String>) -> Vec<(String, Deleted)> {
    let deletes = keys.into_iter().map(|key| async {
        let deleted = tokio::time::timeout(ANNOUNCE_TIMEOUT, store.delete(&key)).await;
        (key, deleted)
    });
    futures_util::future::join_all(deletes).await
}

/// Whether NATS took a write to the bucket. One it refused forgets the bucket, so that the
/// next try opens it again (NATS may have restarted without it); one that timed out leaves
/// the node stalled.
fn taken<T, E>(
    state: &mut State,
    written: Result<Result<T, E>, tokio::time::error::Elapsed>,
) -> bool {
    match written {
        Ok(Ok(_)) => true,
        Ok(Err(_)) => {
            state.store = None;
            false
        }
        Err(_) => {
            state.stalled = true;
            false
        }
    }
}

async fn receive(mut sub: Subscriber, inbox: Arc<Inbox>) {
    while let Some(message) = sub.next().await {
        inbox.handle(&message.payload);
    }
}

async fn receive_as_member(
    mut sub: Subscriber,
    inbox: Arc<Inbox>,
    spec: FilterSpec,
    member: ClientKey,
) {
    while let Some(message) = sub.next().await {
        inbox.handle_for_member(&message.payload, &spec, &member);
    }
}
