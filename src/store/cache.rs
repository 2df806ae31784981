//! Recently read retained messages, kept in memory so that reads of hot topics skip the
//! database.
//!
//! Correctness rests on three rules. A node's own writes update a cached topic after they
//! commit, and only a cached one: a write of a topic nobody read goes around the cache, so a bulk
//! store of a million messages neither fills the cache with them nor pushes out the topics
//! devices read. Other nodes' writes arrive through the change feed and evict. And a fill from the database
//! goes through a placeholder that any write or eviction of the same topic cancels, so a read
//! that raced a change can never put the older value back.
//!
//! When the feed may be missing changes (it lost its connection), the cache is switched off
//! until it can be trusted again, and then starts empty. While a write batch's outcome is not
//! settled (it passed its deadline and may still commit), the cache is bypassed; once settled,
//! the batch's topics are forgotten.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use quick_cache::Weighter;
use quick_cache::sync::{Cache, DefaultLifecycle, PlaceholderGuard};

use super::RetainedMessage;
use crate::topic::TopicName;

/// A cached answer: the message, or the knowledge that there is none.
pub(super) type Cached = Option<Arc<RetainedMessage>>;

#[derive(Clone)]
struct Bytes;

/// The cache's own bookkeeping per entry: its slot (key, value, state) and index.
const SLOT: usize = 64;
/// What the allocator spends on the smallest heap allocation (a short string): its size class.
const SMALL_ALLOCATION: usize = 16;

impl Weighter<TopicName, Cached> for Bytes {
    /// The heap an entry holds, as near as can be known without asking the allocator, so that
    /// `--read-cache-mib` bounds memory rather than data: the slot, the key's copy of the topic,
    /// and for a message its `Arc`ed struct, the message's own copy of the topic, the payload,
    /// the properties and the writer's two names, each allocation at least a small size class.
    fn weight(&self, topic: &TopicName, value: &Cached) -> u64 {
        let heap = |len: usize| {
            if len == 0 {
                0
            } else {
                len.max(SMALL_ALLOCATION)
            }
        };
        let key = heap(topic.as_str().len());
        let data = value.as_ref().map_or(0, |m| {
            let p = &m.properties;
            // The Arc's two counters and the struct itself.
            2 * std::mem::size_of::<usize>()
                + std::mem::size_of::<RetainedMessage>()
                + heap(m.topic.as_str().len())
                + heap(m.payload.len())
                + heap(p.user_properties.len() * std::mem::size_of::<crate::store::UserProperty>())
                + p.user_properties
                    .iter()
                    .map(|u| heap(u.key.len()) + heap(u.value.len()))
                    .sum::<usize>()
                + p.content_type.as_ref().map_or(0, |c| heap(c.len()))
                + p.response_topic
                    .as_ref()
                    .map_or(0, |t| heap(t.as_str().len()))
                + p.correlation_data.as_ref().map_or(0, |c| heap(c.len()))
                + m.writer.as_ref().map_or(0, |w| {
                    heap(w.principal.len() + 16) + heap(w.client.len() + 16)
                })
        });
        (SLOT + key + data) as u64
    }
}

pub(super) struct ReadCache {
    entries: Cache<TopicName, Cached, Bytes>,
    /// Whether the change feed is known to work (always, when there is no other writer).
    trusted: AtomicBool,
    /// Write batches past their deadline that may still commit, and idle purges in progress;
    /// reads bypass the cache while there are any.
    unsettled: AtomicUsize,
}

/// What a lookup found.
pub(super) enum Lookup<'a> {
    Hit(Cached),
    /// Not cached: read the database, then hand the answer to [`Fill::fill`].
    Miss(Fill<'a>),
    /// The cache cannot be trusted right now: read the database.
    Bypass,
}

type Guard<'a> = PlaceholderGuard<
    'a,
    TopicName,
    Cached,
    Bytes,
    quick_cache::DefaultHashBuilder,
    DefaultLifecycle<TopicName, Cached>,
>;

pub(super) struct Fill<'a>(Guard<'a>);

impl Fill<'_> {
    /// Caches a database answer, unless the topic changed while it was being read.
    pub(super) fn fill(self, value: Cached) {
        let _ = self.0.insert(value);
    }
}

impl ReadCache {
    /// A cache of about `max_bytes`, trusted from the start or only once the feed says so.
    pub(super) fn new(max_bytes: u64, trusted: bool) -> Self {
        let estimated_items = (max_bytes / 512).max(16) as usize;
        Self {
            entries: Cache::with_weighter(estimated_items, max_bytes.max(1), Bytes),
            trusted: AtomicBool::new(trusted),
            unsettled: AtomicUsize::new(0),
        }
    }

    pub(super) async fn lookup(&self, topic: &TopicName) -> Lookup<'_> {
        if !self.in_use() {
            return Lookup::Bypass;
        }
        // A concurrent reader of the same missing topic waits for the first one's answer
        // instead of asking the database again.
        match self.entries.get_value_or_guard_async(topic).await {
            Ok(value) => Lookup::Hit(value),
            Err(guard) => Lookup::Miss(Fill(guard)),
        }
    }

    pub(super) fn in_use(&self) -> bool {
        self.trusted.load(Ordering::Acquire) && self.unsettled.load(Ordering::Acquire) == 0
    }

    /// Records a committed write: replaces the cached answer of a topic that has one, and
    /// otherwise leaves the topic out (write-around) while cancelling any fill of it in
    /// progress, which may have read the value this write replaced.
    pub(super) fn written(&self, topic: TopicName, value: Cached) {
        // `replace` admits only over a resident entry, never over a fill's placeholder.
        if let Err((topic, _)) = self.entries.replace(topic, value, false) {
            self.entries.remove(&topic);
        }
    }

    /// Forgets a topic (and cancels any fill of it in progress).
    pub(super) fn evict(&self, topic: &TopicName) {
        self.entries.remove(topic);
    }

    /// Stops answering and filling, and forgets everything.
    pub(super) fn distrust(&self) {
        self.trusted.store(false, Ordering::Release);
        self.entries.clear();
    }

    /// Starts answering again, from empty.
    pub(super) fn trust(&self) {
        self.entries.clear();
        self.trusted.store(true, Ordering::Release);
    }

    pub(super) fn forget_all(&self) {
        self.entries.clear();
    }

    /// Bypasses the cache until the returned guard is dropped: a write batch passed its
    /// deadline and may still commit, or a purge is deleting messages. Whoever holds the guard
    /// evicts what changed (the batch's topics, or everything) before letting go.
    pub(super) fn unsettled(cache: Arc<Self>) -> Unsettled {
        cache.unsettled.fetch_add(1, Ordering::AcqRel);
        Unsettled(cache)
    }

    #[cfg(test)]
    fn peek(&self, topic: &TopicName) -> Option<Cached> {
        self.entries.get(topic)
    }
}

/// See [`ReadCache::unsettled`].
pub(super) struct Unsettled(Arc<ReadCache>);

impl Unsettled {
    pub(super) fn evict(&self, topic: &TopicName) {
        self.0.evict(topic);
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        self.0.unsettled.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether a cached message may still be served at `now_ms`.
pub(super) fn unexpired(value: Cached, now_ms: i64) -> Cached {
    value.filter(|m| m.expires_at_ms.is_none_or(|at| at > now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MessageProperties, Qos};

    fn topic(s: &str) -> TopicName {
        TopicName::from_stored(s.to_owned())
    }

    fn msg(t: &str, payload: &'static str) -> Cached {
        Some(Arc::new(RetainedMessage {
            topic: topic(t),
            payload: bytes::Bytes::from_static(payload.as_bytes()),
            qos: Qos::AtLeastOnce,
            properties: MessageProperties::default(),
            expires_at_ms: None,
            last_modified_ms: 1,
            last_accessed_ms: 1,
            revision: 0,
            writer: None,
        }))
    }

    async fn miss<'a>(cache: &'a ReadCache, t: &TopicName) -> Fill<'a> {
        match cache.lookup(t).await {
            Lookup::Miss(fill) => fill,
            _ => panic!("expected a miss"),
        }
    }

    #[tokio::test]
    async fn a_fill_is_served_afterwards() {
        let cache = ReadCache::new(1 << 20, true);
        let t = topic("a");
        miss(&cache, &t).await.fill(msg("a", "v1"));
        assert!(matches!(cache.lookup(&t).await, Lookup::Hit(Some(m)) if m.payload == "v1"));
    }

    #[tokio::test]
    async fn a_fill_that_raced_a_write_does_not_overwrite_it() {
        let cache = ReadCache::new(1 << 20, true);
        let t = topic("a");
        let fill = miss(&cache, &t).await; // a read of v1 is under way...
        cache.written(t.clone(), msg("a", "v2")); // ...when v2 commits
        fill.fill(msg("a", "v1"));
        assert!(
            cache.peek(&t).is_none(),
            "the stale fill must not be cached"
        );
        miss(&cache, &t).await.fill(msg("a", "v2"));
        assert_eq!(cache.peek(&t).unwrap().unwrap().payload, "v2");
    }

    #[tokio::test]
    async fn a_write_replaces_a_cached_topic() {
        let cache = ReadCache::new(1 << 20, true);
        let t = topic("a");
        miss(&cache, &t).await.fill(msg("a", "v1"));
        cache.written(t.clone(), msg("a", "v2"));
        assert_eq!(cache.peek(&t).unwrap().unwrap().payload, "v2");
        cache.written(t.clone(), None);
        assert!(matches!(cache.lookup(&t).await, Lookup::Hit(None)));
    }

    #[tokio::test]
    async fn a_write_of_a_topic_nobody_read_goes_around_the_cache() {
        let cache = ReadCache::new(1 << 20, true);
        let hot = topic("hot");
        miss(&cache, &hot).await.fill(msg("hot", "config"));
        for i in 0..10_000 {
            cache.written(topic(&format!("bulk/{i}")), msg("x", "0123456789abcdef"));
        }
        assert!(cache.peek(&topic("bulk/9999")).is_none());
        assert_eq!(
            cache.entries.len(),
            1,
            "only the topic that was read is cached"
        );
        assert!(matches!(cache.lookup(&hot).await, Lookup::Hit(Some(m)) if m.payload == "config"));
    }

    #[tokio::test]
    async fn a_fill_that_raced_an_eviction_is_dropped() {
        let cache = ReadCache::new(1 << 20, true);
        let t = topic("a");
        let fill = miss(&cache, &t).await;
        cache.evict(&t); // another node changed it meanwhile
        fill.fill(msg("a", "old"));
        assert!(cache.peek(&t).is_none());
    }

    #[tokio::test]
    async fn a_fill_that_raced_distrust_is_dropped_and_nothing_is_served() {
        let cache = ReadCache::new(1 << 20, true);
        let t = topic("a");
        miss(&cache, &topic("b")).await.fill(msg("b", "x"));
        let fill = miss(&cache, &t).await;
        cache.distrust();
        fill.fill(msg("a", "old"));
        assert!(matches!(cache.lookup(&t).await, Lookup::Bypass));
        cache.trust();
        assert!(cache.peek(&t).is_none() && cache.peek(&topic("b")).is_none());
    }

    #[tokio::test]
    async fn an_untrusted_cache_bypasses_until_trusted() {
        let cache = ReadCache::new(1 << 20, false);
        assert!(matches!(cache.lookup(&topic("a")).await, Lookup::Bypass));
        cache.trust();
        assert!(matches!(cache.lookup(&topic("a")).await, Lookup::Miss(_)));
    }

    #[tokio::test]
    async fn an_unsettled_batch_bypasses_the_cache_until_it_is_settled() {
        let cache = Arc::new(ReadCache::new(1 << 20, true));
        let (t, other) = (topic("a"), topic("b"));
        miss(&cache, &t).await.fill(msg("a", "v1"));
        miss(&cache, &other).await.fill(msg("b", "x"));
        let fill = miss(&cache, &topic("c")).await; // a read under way when the batch stalls
        let unsettled = ReadCache::unsettled(cache.clone());
        assert!(matches!(cache.lookup(&t).await, Lookup::Bypass));
        assert!(!cache.in_use());
        unsettled.evict(&t); // the batch wrote "a" and "c", and may have committed
        unsettled.evict(&topic("c"));
        fill.fill(msg("c", "before the batch")); // too late: the eviction cancelled it
        drop(unsettled);
        assert!(matches!(cache.lookup(&t).await, Lookup::Miss(_)));
        assert!(matches!(cache.lookup(&topic("c")).await, Lookup::Miss(_)));
        assert!(matches!(cache.lookup(&other).await, Lookup::Hit(Some(m)) if m.payload == "x"));
    }

    #[tokio::test]
    async fn absence_is_cached_too() {
        let cache = ReadCache::new(1 << 20, true);
        let t = topic("nothing");
        miss(&cache, &t).await.fill(None);
        assert!(matches!(cache.lookup(&t).await, Lookup::Hit(None)));
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_byte_budget() {
        let cache = ReadCache::new(64 * 1024, true);
        for i in 0..10_000 {
            miss(&cache, &topic(&format!("t/{i}")))
                .await
                .fill(msg("x", "0123456789abcdef"));
        }
        assert!(cache.entries.len() > 100, "{}", cache.entries.len());
        assert!(
            cache.entries.weight() <= 64 * 1024,
            "{}",
            cache.entries.weight()
        );
    }

    #[test]
    fn expired_messages_are_not_served() {
        let mut m = msg("a", "v").unwrap();
        Arc::get_mut(&mut m).unwrap().expires_at_ms = Some(100);
        assert!(unexpired(Some(m.clone()), 99).is_some());
        assert!(unexpired(Some(m), 100).is_none());
    }
}
