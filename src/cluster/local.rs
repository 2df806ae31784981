//! This node's own interest: one NATS subscription per distinct filter its sessions hold,
//! counted across sessions, announced in the interest bucket while it lasts. One task applies
//! every change in the order the broker made them, so a filter dropped and taken again is
//! never left unannounced; the broker waits for an addition before it sends the SUBACK.

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
use super::subject::filter_subjects;
use crate::topic::TopicFilter;

/// How long one announcement may wait for NATS before the SUBACK goes out without it. A
/// reconnection announces everything again.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(2);

pub enum Change {
    Add(TopicFilter, oneshot::Sender<()>),
    Remove(TopicFilter),
    /// A dead node's keys: removed from the bucket so that nobody sends to it any more.
    Bury(Vec<String>),
}

struct Held {
    sessions: usize,
    /// Receiving tasks, one per subject; aborting one drops its subscription.
    receivers: Vec<JoinHandle<()>>,
    key: String,
}

pub struct Local {
    pub client: Client,
    pub js: jetstream::Context,
    pub link: Arc<Link>,
    pub prefix: String,
    pub node: Arc<str>,
    pub inbox: Arc<Inbox>,
    /// Announcements that did not reach the bucket (NATS down or slow).
    pub unannounced: Arc<AtomicU64>,
}

impl Local {
    /// Applies changes until `shutdown`, then withdraws every key of this node.
    pub async fn run(
        self,
        mut changes: mpsc::UnboundedReceiver<Change>,
        mut epochs: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) {
        let mut held: HashMap<TopicFilter, Held> = HashMap::new();
        let mut store = self.bucket().await;
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Some(Change::Add(filter, done)) => {
                        self.add(&mut held, &mut store, filter).await;
                        let _ = done.send(());
                    }
                    Some(Change::Remove(filter)) => self.remove(&mut held, &store, &filter).await,
                    Some(Change::Bury(keys)) => {
                        if let Some(store) = &store {
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
                    store = self.bucket().await;
                    for (filter, h) in &held {
                        self.put(store.as_ref(), &h.key, filter).await;
                    }
                }
                () = shutdown.cancelled() => break,
            }
        }
        for (_, h) in held.drain() {
            for r in &h.receivers {
                r.abort();
            }
            if let Some(store) = &store {
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

    async fn add(
        &self,
        held: &mut HashMap<TopicFilter, Held>,
        store: &mut Option<kv::Store>,
        filter: TopicFilter,
    ) {
        if let Some(h) = held.get_mut(&filter) {
            h.sessions += 1;
            return;
        }
        let mut receivers = Vec::new();
        for subject in filter_subjects(&self.prefix, &filter) {
            match self.client.subscribe(subject).await {
                Ok(sub) => receivers.push(tokio::spawn(receive(sub, self.inbox.clone()))),
                // Only a closed client refuses; the node is shutting down.
                Err(e) => tracing::warn!(error = %e, "cannot subscribe on NATS"),
            }
        }
        let key = bucket::key(&self.node, &filter);
        if self.link.is_connected() {
            // The subscription reaches the server before the key: once another node sees the
            // key, what it sends arrives.
            let _ = tokio::time::timeout(ANNOUNCE_TIMEOUT, self.client.flush()).await;
            if store.is_none() {
                *store = self.bucket().await;
            }
        }
        self.put(store.as_ref(), &key, &filter).await;
        held.insert(
            filter,
            Held {
                sessions: 1,
                receivers,
                key,
            },
        );
    }

    async fn remove(
        &self,
        held: &mut HashMap<TopicFilter, Held>,
        store: &Option<kv::Store>,
        filter: &TopicFilter,
    ) {
        let Some(h) = held.get_mut(filter) else {
            return;
        };
        h.sessions -= 1;
        if h.sessions > 0 {
            return;
        }
        let Some(h) = held.remove(filter) else {
            return;
        };
        for r in &h.receivers {
            r.abort();
        }
        if let Some(store) = store
            && self.link.is_connected()
        {
            let _ = tokio::time::timeout(ANNOUNCE_TIMEOUT, store.delete(&h.key)).await;
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
