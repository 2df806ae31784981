//! What the other nodes subscribe to, as this node knows it from the interest bucket: a
//! publish is sent to NATS only when one of their filters matches it. The map is built from
//! a watch of the bucket (every current key, then every change, in order). While the watch is
//! starting, catching up or lost, the node is in doubt and sends everything: the cost of
//! doubt is bandwidth, never a lost message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::bucket;
use crate::topic::{ClientKey, FilterSpec, SubscriptionTree, TopicName};

pub struct RemoteInterest {
    /// Other nodes' filters, each under its node's id.
    tree: RwLock<SubscriptionTree<()>>,
    /// Bucket key → its node and filter, to undo a key when it is deleted.
    keys: Mutex<HashMap<String, (ClientKey, FilterSpec)>>,
    in_doubt: AtomicBool,
}

impl RemoteInterest {
    pub fn new() -> Self {
        Self {
            tree: RwLock::new(SubscriptionTree::new()),
            keys: Mutex::new(HashMap::new()),
            in_doubt: AtomicBool::new(true),
        }
    }

    /// Whether some other node may have a subscription matching `topic`.
    pub fn wants(&self, topic: &TopicName) -> bool {
        if self.in_doubt.load(Ordering::Acquire) {
            return true;
        }
        self.tree
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .matches_any(topic)
    }

    /// Whether another node has announced `spec` (or this node does not know the map, and
    /// so forwards everything).
    pub fn announced_elsewhere(&self, spec: &FilterSpec) -> bool {
        self.in_doubt.load(Ordering::Acquire) || self.keys().values().any(|(_, s)| s == spec)
    }

    pub fn in_doubt(&self) -> bool {
        self.in_doubt.load(Ordering::Acquire)
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, (ClientKey, FilterSpec)>> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn tree(&self) -> std::sync::RwLockWriteGuard<'_, SubscriptionTree<()>> {
        self.tree
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn doubt(&self) {
        self.in_doubt.store(true, Ordering::Release);
        self.keys().clear();
        *self.tree() = SubscriptionTree::new();
    }

    /// The other nodes that hold keys in the bucket.
    pub fn nodes(&self) -> std::collections::HashSet<String> {
        self.keys().values().map(|(n, _)| n.to_string()).collect()
    }

    /// The bucket keys of `node`'s filters.
    pub fn keys_of(&self, node: &str) -> Vec<String> {
        self.keys()
            .iter()
            .filter(|(_, (n, _))| &**n == node)
            .map(|(key, _)| key.clone())
            .collect()
    }

    fn apply(&self, own: &str, entry: &kv::Entry) {
        let Some(node) = bucket::node_of(&entry.key) else {
            return;
        };
        if node == own {
            return;
        }
        let mut keys = self.keys();
        if let Some((node, spec)) = keys.remove(&entry.key) {
            self.tree().remove(&node, &spec);
        }
        if entry.operation != kv::Operation::Put {
            return;
        }
        let filter = String::from_utf8_lossy(&entry.value);
        let Ok(spec) = FilterSpec::parse(&filter) else {
            tracing::warn!(key = %entry.key, "the interest bucket holds a key that is not a filter");
            return;
        };
        let node: ClientKey = ClientKey::from(node);
        self.tree().insert(&node, &spec, ());
        keys.insert(entry.key.clone(), (node, spec));
    }
}

/// Keeps `remote` in step with the bucket until `shutdown`: watches it, and starts again
/// (in doubt meanwhile) when the watch ends or the connection comes back.
pub async fn follow(
    js: jetstream::Context,
    prefix: String,
    own: Arc<str>,
    remote: Arc<RemoteInterest>,
    mut epochs: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        remote.doubt();
        let watched = async {
            let store = bucket::open(&js, &prefix).await?;
            let watch = store
                .watch_with_history(">")
                .await
                .map_err(|e| e.to_string())?;
            let empty = store.status().await.map_err(|e| e.to_string())?.values() == 0;
            Ok::<_, String>((watch, empty))
        };
        let (mut entries, empty) = tokio::select! {
            w = watched => match w {
                Ok(w) => w,
                Err(cause) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(%cause, "cannot watch the interest bucket; sending every message to NATS until it can");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = shutdown.cancelled() => return,
                    }
                }
            },
            () = shutdown.cancelled() => return,
        };
        if failures > 0 {
            tracing::info!("watching the interest bucket again");
            failures = 0;
        }
        if empty {
            remote.in_doubt.store(false, Ordering::Release);
        }
        epochs.mark_unchanged();
        loop {
            tokio::select! {
                entry = entries.next() => match entry {
                    Some(Ok(entry)) => {
                        remote.apply(&own, &entry);
                        if entry.seen_current {
                            remote.in_doubt.store(false, Ordering::Release);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "the watch of the interest bucket failed; starting it again");
                        break;
                    }
                    None => break,
                },
                changed = epochs.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                () = shutdown.cancelled() => return,
            }
        }
    }
}
