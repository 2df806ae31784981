//! This node's own interest: a NATS subscription per distinct filter its sessions hold
//! plainly, counted across sessions; a queue subscription per member of a shared
//! subscription, so that NATS spreads a group's messages over its members on every node; and
//! one key per filter in the interest bucket while any of them lasts. One task applies every
//! change in the order the broker made them, so a filter dropped and taken again is never left
//! unannounced; the broker waits for an addition before it sends the SUBACK.

use std::collections::HashMap;
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

pub enum Change {
    Add(FilterSpec, ClientKey, oneshot::Sender<()>),
    Remove(FilterSpec, ClientKey),
    /// A dead node's keys: removed from the bucket so that nobody sends to it any more.
    Bury(Vec<String>),
}

/// One filter this node is interested in.
struct Held {
    /// Plain subscriptions to it, across sessions.
    plain: usize,
    /// Shared subscriptions to it (any group), across sessions.
    members: usize,
    /// The plain subscription's receiving tasks, one per subject; aborting one drops its
    /// NATS subscription.
    receivers: Vec<JoinHandle<()>>,
    key: String,
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
    /// Each member's queue subscriptions, by shared subscription and member.
    members: HashMap<(FilterSpec, ClientKey), Vec<JoinHandle<()>>>,
    store: Option<kv::Store>,
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
        };
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Some(Change::Add(spec, member, done)) => {
                        self.add(&mut state, spec, member).await;
                        let _ = done.send(());
                    }
                    Some(Change::Remove(spec, member)) => self.remove(&mut state, &spec, &member).await,
                    Some(Change::Bury(keys)) => {
                        if let Some(store) = &state.store {
                            for key in keys {
                                let _ = tokio::time::timeout(ANNOUNCE_TIMEOUT, store.delete(&key)).await;
                            }
                        }
                    }
                    None => break,
                },
                changed = epochs.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // NATS came back, maybe restarted and without the bucket: announce again.
                    state.store = self.bucket().await;
                    for (filter, h) in &state.held {
                        self.put(state.store.as_ref(), &h.key, filter).await;
                    }
                }
                () = shutdown.cancelled() => break,
            }
        }
        for tasks in state.members.values() {
            tasks.iter().for_each(JoinHandle::abort);
        }
        for (_, h) in state.held.drain() {
            h.receivers.iter().for_each(JoinHandle::abort);
            if let Some(store) = &state.store {
                let _ = tokio::time::timeout(ANNOUNCE_TIMEOUT, store.delete(&h.key)).await;
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

    async fn add(&self, state: &mut State, spec: FilterSpec, member: ClientKey) {
        let filter = spec.filter().clone();
        let new = !state.held.contains_key(&filter);
        let held = state.held.entry(filter.clone()).or_insert_with(|| Held {
            plain: 0,
            members: 0,
            receivers: Vec::new(),
            key: bucket::key(&self.node, &filter),
        });
        match spec.share_group() {
            None => {
                held.plain += 1;
                if held.plain == 1 {
                    for subject in filter_subjects(&self.prefix, &filter) {
                        match self.client.subscribe(subject).await {
                            Ok(sub) => held
                                .receivers
                                .push(tokio::spawn(receive(sub, self.inbox.clone()))),
                            // Only a closed client refuses; the node is shutting down.
                            Err(e) => tracing::warn!(error = %e, "cannot subscribe on NATS"),
                        }
                    }
                }
            }
            Some(group) => {
                held.members += 1;
                let queue = queue_group(group, &filter);
                let mut tasks = Vec::new();
                for subject in filter_subjects(&self.prefix, &filter) {
                    match self
                        .members_client
                        .queue_subscribe(subject, queue.clone())
                        .await
                    {
                        Ok(sub) => tasks.push(tokio::spawn(receive_as_member(
                            sub,
                            self.inbox.clone(),
                            spec.clone(),
                            member.clone(),
                        ))),
                        Err(e) => tracing::warn!(error = %e, "cannot subscribe on NATS"),
                    }
                }
                if let Some(old) = state.members.insert((spec, member), tasks) {
                    old.iter().for_each(JoinHandle::abort);
                }
            }
        }
        if self.link.is_connected() {
            // The subscriptions reach the server before the key: once another node sees the
            // key, what it sends arrives.
            let _ = tokio::time::timeout(ANNOUNCE_TIMEOUT, self.client.flush()).await;
            let _ = tokio::time::timeout(ANNOUNCE_TIMEOUT, self.members_client.flush()).await;
            if new && state.store.is_none() {
                state.store = self.bucket().await;
            }
        }
        if new && let Some(held) = state.held.get(&filter) {
            self.put(state.store.as_ref(), &held.key, &filter).await;
        }
    }

    async fn remove(&self, state: &mut State, spec: &FilterSpec, member: &ClientKey) {
        let filter = spec.filter();
        let Some(held) = state.held.get_mut(filter) else {
            return;
        };
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
            return;
        }
        let Some(held) = state.held.remove(filter) else {
            return;
        };
        if let Some(store) = &state.store
            && self.link.is_connected()
        {
            let _ = tokio::time::timeout(ANNOUNCE_TIMEOUT, store.delete(&held.key)).await;
        }
    }

    async fn put(&self, store: Option<&kv::Store>, key: &str, filter: &TopicFilter) {
        let announced = match store {
            Some(store) if self.link.is_connected() => {
                let value = bytes::Bytes::copy_from_slice(filter.as_str().as_bytes());
                matches!(
                    tokio::time::timeout(ANNOUNCE_TIMEOUT, store.put(key, value)).await,
                    Ok(Ok(_))
                )
            }
            _ => false,
        };
        if !announced {
            self.unannounced.fetch_add(1, Ordering::Relaxed);
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
