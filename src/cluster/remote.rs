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
    keys: Mutex<Keys>,
    in_doubt: AtomicBool,
    /// Advanced whenever what [`Self::announced_elsewhere`] answers may have changed.
    changes: watch::Sender<u64>,
}

/// The bucket's keys of the other nodes.
#[derive(Default)]
struct Keys {
    /// Bucket key → its node and filter, to undo a key when it is deleted.
    by_key: HashMap<String, (ClientKey, FilterSpec)>,
    /// How many nodes announce each filter: a hand-over asks of every filter of its session
    /// while thousands of clients move, against as many keys.
    nodes_per_filter: HashMap<FilterSpec, usize>,
}

impl Keys {
    fn insert(&mut self, key: String, node: ClientKey, spec: FilterSpec) {
        *self.nodes_per_filter.entry(spec.clone()).or_default() += 1;
        if let Some((_, replaced)) = self.by_key.insert(key, (node, spec)) {
            self.forget_filter(&replaced);
        }
    }

    fn remove(&mut self, key: &str) -> Option<(ClientKey, FilterSpec)> {
        let removed = self.by_key.remove(key)?;
        self.forget_filter(&removed.1);
        Some(removed)
    }

    fn forget_filter(&mut self, spec: &FilterSpec) {
        if let Some(n) = self.nodes_per_filter.get_mut(spec) {
            *n -= 1;
            if *n == 0 {
                self.nodes_per_filter.remove(spec);
            }
        }
    }
}

impl RemoteInterest {
    pub fn new() -> Self {
        Self {
            tree: RwLock::new(SubscriptionTree::new()),
            keys: Mutex::new(Keys::default()),
            in_doubt: AtomicBool::new(true),
            changes: watch::Sender::new(0),
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
        self.in_doubt.load(Ordering::Acquire) || self.keys().nodes_per_filter.contains_key(spec)
    }

    /// Waits until another node has announced each of `specs` (see
    /// [`Self::announced_elsewhere`]) or `deadline` passes; whether they all were.
    pub async fn until_announced_elsewhere(
        &self,
        specs: &[FilterSpec],
        deadline: tokio::time::Instant,
    ) -> bool {
        // Subscribed before the look, so that a change right after it is not missed.
        let mut changes = self.changes.subscribe();
        loop {
            if specs.iter().all(|s| self.announced_elsewhere(s)) {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The watch caught up: the map is known.
    fn settle(&self) {
        if self.in_doubt.swap(false, Ordering::AcqRel) {
            self.changed();
        }
    }

    pub fn in_doubt(&self) -> bool {
        self.in_doubt.load(Ordering::Acquire)
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
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
        *self.keys() = Keys::default();
        *self.tree() = SubscriptionTree::new();
        self.changed();
    }

    /// The other nodes that hold keys in the bucket.
    pub fn nodes(&self) -> std::collections::HashSet<String> {
        self.keys()
            .by_key
            .values()
            .map(|(n, _)| n.to_string())
            .collect()
    }

    /// The bucket keys of `node`'s filters.
    pub fn keys_of(&self, node: &str) -> Vec<String> {
        self.keys()
            .by_key
            .iter()
            .filter(|(_, (n, _))| &**n == node)
            .map(|(key, _)| key.clone())
            .collect()
    }

    fn apply(&self, own: &str, entry: &kv::Entry) {
        let put = entry.operation == kv::Operation::Put;
        self.apply_key(own, &entry.key, put.then_some(&entry.value[..]));
    }

    /// A key of the bucket put with `value`, or deleted (`None`).
    fn apply_key(&self, own: &str, key: &str, value: Option<&[u8]>) {
        let Some(node) = bucket::node_of(key) else {
            return;
        };
        if node == own {
            return;
        }
        let mut keys = self.keys();
        if let Some((node, spec)) = keys.remove(key) {
            self.tree().remove(&node, &spec);
        }
        match value.map(|v| FilterSpec::parse(&String::from_utf8_lossy(v))) {
            Some(Ok(spec)) => {
                let node: ClientKey = ClientKey::from(node);
                self.tree().insert(&node, &spec, ());
                keys.insert(key.to_owned(), node, spec);
            }
            Some(Err(_)) => {
                tracing::warn!(key, "the interest bucket holds a key that is not a filter");
            }
            None => {}
        }
        drop(keys);
        self.changed();
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
            remote.settle();
        }
        epochs.mark_unchanged();
        loop {
            tokio::select! {
                entry = entries.next() => match entry {
                    Some(Ok(entry)) => {
                        remote.apply(&own, &entry);
                        if entry.seen_current {
                            remote.settle();
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::RemoteInterest;
    use crate::topic::FilterSpec;

    fn spec(filter: &str) -> FilterSpec {
        FilterSpec::parse(filter).unwrap()
    }

    fn known() -> RemoteInterest {
        let remote = RemoteInterest::new();
        remote.settle();
        remote
    }

    #[test]
    fn a_filter_is_announced_elsewhere_while_some_other_node_holds_a_key_for_it() {
        let remote = known();
        let wanted = spec("devices/+/cmd");
        remote.apply_key("a", "a.1", Some(b"devices/+/cmd"));
        assert!(!remote.announced_elsewhere(&wanted), "the node's own key");
        remote.apply_key("a", "b.1", Some(b"devices/+/cmd"));
        remote.apply_key("a", "c.1", Some(b"devices/+/cmd"));
        remote.apply_key("a", "c.2", Some(b"other/#"));
        assert!(remote.announced_elsewhere(&wanted));
        remote.apply_key("a", "b.1", None);
        assert!(remote.announced_elsewhere(&wanted), "c still holds it");
        // A key put again (its node re-announcing) counts once.
        remote.apply_key("a", "c.1", Some(b"devices/+/cmd"));
        remote.apply_key("a", "c.1", None);
        assert!(!remote.announced_elsewhere(&wanted));
        assert!(remote.announced_elsewhere(&spec("other/#")));
        assert!(!remote.announced_elsewhere(&spec("devices/#")));
    }

    #[tokio::test]
    async fn a_hand_over_waiting_for_announcements_wakes_when_the_last_arrives() {
        let remote = Arc::new(known());
        let specs = [spec("x/1"), spec("x/2")];
        let waiting = tokio::spawn({
            let remote = remote.clone();
            let specs = specs.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                let started = std::time::Instant::now();
                let all = remote.until_announced_elsewhere(&specs, deadline).await;
                (all, started.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        remote.apply_key("a", "b.1", Some(b"x/1"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "x/2 is not announced yet");
        remote.apply_key("a", "b.2", Some(b"x/2"));
        let (all, waited) = waiting.await.unwrap();
        assert!(all);
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hand_over_waits_for_announcements_until_its_deadline() {
        let remote = known();
        remote.apply_key("a", "b.1", Some(b"x/1"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let all = remote
            .until_announced_elsewhere(&[spec("x/1"), spec("x/2")], deadline)
            .await;
        assert!(!all);
        assert!(tokio::time::Instant::now() >= deadline);
        // In doubt (the watch restarting), every filter counts as announced.
        remote.doubt();
        assert!(
            remote
                .until_announced_elsewhere(&[spec("x/2")], deadline)
                .await
        );
    }
}
