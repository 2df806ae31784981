use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::backend::{ChangeFeed, Readers};
use super::cache::{Lookup, ReadCache, unexpired};
use super::coalesce::{CoalesceLimits, Coalescer};
use super::failures::Failures;
use super::saved_session::SavedSession;
use super::write_batch::WriteBatch;
use super::write_lane::LaneSettings;
use super::write_lanes::WriteLanes;
use super::{
    Change, ChangePage, Clock, Error, OwnedWrite, Owner, RetainedMessage, RetainedPublish,
    RetainedStore, RetainedSummary, Revision, Write,
};
use crate::metrics::{CacheResult, Metrics, PoolLabel};
use crate::topic::TopicName;

/// Tuning for a [`Store`] handle.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Deadline for any one database call; past it the caller gets [`Error::Unavailable`].
    pub timeout: Duration,
    /// Point-read batches in flight at once (each holds one database connection).
    pub read_concurrency: usize,
    /// Memory for the read cache, in bytes; 0 turns it off.
    pub cache_bytes: u64,
    /// Most retained messages the whole store may keep; `None`: no limit.
    pub max_messages: Option<u64>,
    /// Group commits in flight at once, each on its own connection, topics spread over them
    /// by hash (so each topic's writes stay in order). More than one lets the database use
    /// more than one core for writes, at the price of smaller batches.
    pub write_lanes: usize,
    /// Most rows a retained delivery reads per query; `None`: the backend's own bound
    /// ([`RetainedStore::max_scan_rows`]).
    pub scan_rows: Option<u32>,
    /// Where batches, cache lookups, failures and the pool are counted (`/metrics`).
    pub metrics: Metrics,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            read_concurrency: 8,
            cache_bytes: 64 << 20,
            max_messages: None,
            write_lanes: 1,
            scan_rows: None,
            metrics: Metrics::default(),
        }
    }
}

const MAX_READ_BATCH: usize = 256;
/// How long a sum of the payload bytes stands (see [`Store::payload_bytes`]).
pub const PAYLOAD_BYTES_MAX_AGE: Duration = Duration::from_secs(60);
const QUEUE: usize = 4096;

/// Reads are recorded for the retention rule only when the stored access time is older than
/// this. Retention is measured in years, so an hour of imprecision costs nothing and saves a
/// write per read.
const TOUCH_GRANULARITY_MS: i64 = 60 * 60 * 1000;
/// Most distinct topics remembered between two flushes; beyond it reads go unrecorded until
/// the next flush, which only delays (never loses) the refresh of a topic that is read again.
const MAX_PENDING_TOUCHES: usize = 100_000;
/// Rows deleted per purge statement, so a large purge never holds long locks.
const PURGE_BATCH: u32 = 1000;
/// Change-log entries one maintenance pass examines at most.
const COMPACT_PER_PASS: u32 = 100_000;

/// How long after its expiry an expired message, or after its delete a tombstone, stays in the
/// database: longer than any write that started before it can still be running (the database
/// ends a write statement after the store timeout, see `RetainedStore::apply`), with room for
/// clocks that differ between nodes. Until then it keeps such a write from bringing an older
/// message back.
pub fn purge_delay(timeout: Duration) -> Duration {
    (timeout * 4).max(Duration::from_secs(10 * 60))
}

type ReadResult = Result<Option<RetainedMessage>, Error>;

/// The service's handle on retained-message storage: cheap to clone, safe to share.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// The last sum of payload bytes, when it was taken (ms, the store's clock), and whether a
/// caller is summing now.
#[derive(Default)]
struct PayloadBytes {
    last: Option<(i64, u64)>,
    summing: bool,
}

/// A caller summing the payload bytes; dropping it, however the scan ended, lets the next.
struct Summing<'a>(&'a Store);

impl Drop for Summing<'_> {
    fn drop(&mut self) {
        self.0.payload_bytes_state().summing = false;
    }
}

struct Inner {
    backend: Arc<dyn RetainedStore>,
    /// Shared with every [`WriteBatch`] made from this handle.
    writes: Arc<WriteLanes>,
    reads: Coalescer<TopicName, ReadResult>,
    touched: Mutex<HashSet<TopicName>>,
    cache: Option<Arc<ReadCache>>,
    clock: Clock,
    timeout: Duration,
    /// See [`Store::max_scan_rows`].
    scan_rows: u32,
    failures: Arc<Failures>,
    metrics: Metrics,
    payload_bytes: Mutex<PayloadBytes>,
    /// Where the next pass of [`Store::compact_changes`] starts.
    compact_cursor: Mutex<Revision>,
    /// Bumped whenever the retained set may have changed (see [`Store::changed`]).
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    /// Stops the change-feed follower and the failure summaries when the last handle goes.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What one maintenance pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceReport {
    pub touched: usize,
    pub expired: u64,
    pub idle: u64,
    /// Tombstones of deleted messages removed.
    pub tombstones: u64,
    /// Change-log entries removed that no write had removed.
    pub changes_compacted: u64,
}

impl Store {
    /// Wraps a backend. Must be called inside a Tokio runtime: it starts the batching workers,
    /// which stop by themselves when the last clone of the handle is dropped.
    pub fn new(backend: Arc<dyn RetainedStore>, clock: Clock, options: StoreOptions) -> Self {
        let timeout = options.timeout;
        let scan_rows = options.scan_rows.unwrap_or(backend.max_scan_rows());
        let stop = CancellationToken::new();
        let failures = Failures::start(stop.clone(), options.metrics.clone());
        observe_pool(&options.metrics, &backend);
        let feed = backend.change_feed();
        let cache = (options.cache_bytes > 0)
            .then(|| Arc::new(ReadCache::new(options.cache_bytes, feed.is_none())));
        let changed = Arc::new(tokio::sync::watch::Sender::new(0));
        if let Some(feed) = feed {
            let cache = cache.as_ref().map(Arc::downgrade);
            tokio::spawn(follow(feed, cache, changed.clone(), stop.clone()));
        }
        let settings = LaneSettings {
            timeout,
            max_messages: options.max_messages,
            failures: failures.clone(),
            metrics: options.metrics.clone(),
            changed: changed.clone(),
        };
        let writes = Arc::new(WriteLanes::spawn(
            options.write_lanes,
            &backend,
            &cache,
            &clock,
            settings,
        ));
        let reads = {
            let (backend, clock, failures) = (backend.clone(), clock.clone(), failures.clone());
            let limits = CoalesceLimits {
                queue: QUEUE,
                max_batch: MAX_READ_BATCH,
                concurrency: options.read_concurrency.max(1),
            };
            Coalescer::spawn(limits, move |topics: Vec<TopicName>| {
                let (backend, now, failures) = (backend.clone(), clock.now_ms(), failures.clone());
                async move { read_batch(&*backend, topics, now, timeout, &failures).await }
            })
        };
        Self {
            inner: Arc::new(Inner {
                backend,
                writes,
                reads,
                touched: Mutex::new(HashSet::new()),
                cache,
                clock,
                timeout,
                scan_rows,
                failures,
                metrics: options.metrics,
                payload_bytes: Mutex::new(PayloadBytes::default()),
                compact_cursor: Mutex::new(0),
                changed,
                stop,
            }),
        }
    }

    /// Whether reads may be answered from the cache now (it is on and its change feed works).
    pub fn cache_in_use(&self) -> bool {
        self.inner.cache.as_ref().is_some_and(|c| c.in_use())
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// The deadline of any one database call ([`StoreOptions::timeout`]).
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Stores or deletes one retained message; returns once the change is committed.
    ///
    /// The deadline covers the wait in the queue too. A caller that times out gets
    /// [`Error::Unavailable`] while its write may still commit: the outcome is unknown, as with
    /// any timeout, and retrying a retained write is harmless.
    pub async fn write(&self, write: Write) -> Result<(), Error> {
        self.write_as(write, Owner::anonymous()).await
    }

    /// Like [`Store::write`], charged to `owner`: a put that would take it (or the store) past
    /// its quota of retained messages fails with [`Error::QuotaExceeded`] and writes nothing.
    pub async fn write_as(&self, write: Write, owner: Owner) -> Result<(), Error> {
        self.write_owned(OwnedWrite::new(write, owner))
            .await
            .map(drop)
    }

    /// Like [`Store::write_as`], with where the write came from and its condition; answers
    /// with the change's revision (`None`: a later write replaced it at once), or
    /// [`Error::ConditionFailed`] when the condition did not hold and nothing was written.
    pub async fn write_owned(&self, write: OwnedWrite) -> Result<Option<Revision>, Error> {
        let call = self.inner.writes.write(write);
        deadline(self.inner.timeout, call).await
    }

    /// Gathers writes that are to enter the write queue together; see [`WriteBatch`].
    pub fn batch(&self) -> WriteBatch {
        WriteBatch::new(self.inner.writes.clone())
    }

    /// The unexpired retained message for `topic`, if any. Counts as a read for retention.
    pub async fn get(&self, topic: TopicName) -> Result<Option<RetainedMessage>, Error> {
        let found = match &self.inner.cache {
            None => self.read(topic).await?,
            Some(cache) => match cache.lookup(&topic).await {
                Lookup::Hit(cached) => {
                    self.inner.metrics.store_cache(CacheResult::hit);
                    let now = self.inner.clock.now_ms();
                    unexpired(cached, now).map(|m| RetainedMessage::clone(&m))
                }
                Lookup::Miss(fill) => {
                    self.inner.metrics.store_cache(CacheResult::miss);
                    let found = self.read(topic).await?;
                    fill.fill(found.clone().map(Arc::new));
                    found
                }
                Lookup::Bypass => {
                    self.inner.metrics.store_cache(CacheResult::bypass);
                    self.read(topic).await?
                }
            },
        };
        if let Some(msg) = &found {
            self.note_read(msg);
        }
        Ok(found)
    }

    async fn read(&self, topic: TopicName) -> Result<Option<RetainedMessage>, Error> {
        let call = async {
            self.inner
                .reads
                .call(topic)
                .await
                .unwrap_or(Err(Error::Closed))
        };
        deadline(self.inner.timeout, call).await
    }

    /// One page of unexpired messages after `after`, in byte order of topic.
    pub async fn list(
        &self,
        after: Option<&TopicName>,
        limit: u32,
    ) -> Result<Vec<RetainedSummary>, Error> {
        let now = self.inner.clock.now_ms();
        self.call("list", self.inner.backend.list(after, limit, now))
            .await
    }

    /// One page of unexpired full messages whose topics are in `[from, until)` (byte order;
    /// `until: None` = no upper bound) and strictly after `after`, in byte order of topic: how
    /// a watch reads the current set, page by page.
    ///
    /// Goes straight to the database under the usual deadline; the read cache holds single
    /// topics and cannot answer a range. Unlike [`Store::get`], a scan does not count as a read
    /// for retention.
    pub async fn scan(
        &self,
        from: &str,
        until: Option<&str>,
        after: Option<&TopicName>,
        limit: u32,
    ) -> Result<Vec<RetainedMessage>, Error> {
        let now = self.inner.clock.now_ms();
        let page = self.inner.backend.scan(from, until, after, limit, now);
        self.call("scan", page).await
    }

    /// Most rows one [`Store::scan_publishes`] of a retained delivery should ask for: the
    /// setting's ([`StoreOptions::scan_rows`]), or else the backend's
    /// ([`RetainedStore::max_scan_rows`]).
    pub fn max_scan_rows(&self) -> u32 {
        self.inner.scan_rows
    }

    /// The page [`Store::scan`] reads, but only what a subscriber receives of each message,
    /// on the connections of `readers` ([`Readers::Bulk`] for bulk work on threads of low
    /// priority, on connections of its own): how the broker finds the retained messages for a
    /// wildcard subscription. Retained messages the broker delivers to subscribers do not
    /// refresh their retention in this version.
    pub async fn scan_publishes(
        &self,
        readers: Readers,
        from: &str,
        until: Option<&str>,
        after: Option<&TopicName>,
        limit: u32,
    ) -> Result<Vec<RetainedPublish>, Error> {
        let now = self.inner.clock.now_ms();
        let page = self
            .inner
            .backend
            .scan_publishes(from, until, after, limit, now, readers);
        self.call("scan", page).await
    }

    /// One page of unexpired summaries whose topics are in `[from, until)` (byte order;
    /// `until: None` = no upper bound) and strictly after `after`, in byte order of topic: how
    /// a listing narrowed to a topic filter or prefix walks its range. Like [`Store::list`], it
    /// goes to the database under the usual deadline and does not count as a read.
    pub async fn list_range(
        &self,
        from: &str,
        until: Option<&str>,
        after: Option<&TopicName>,
        limit: u32,
    ) -> Result<Vec<RetainedSummary>, Error> {
        let now = self.inner.clock.now_ms();
        let work = self
            .inner
            .backend
            .list_range(from, until, after, limit, now);
        self.call("list range", work).await
    }

    /// How many retained messages are stored (expired ones not yet purged included): all of
    /// them, or those charged to one owner.
    pub async fn count(&self, owner: Option<&str>) -> Result<u64, Error> {
        self.call("count", self.inner.backend.count(owner)).await
    }

    /// The payload bytes of the stored messages, as summed at most [`PAYLOAD_BYTES_MAX_AGE`]
    /// ago by this handle's clock: the sum is a scan of the table, too dear for every scrape.
    /// One caller at a time sums; the others meanwhile get the last sum rather than wait
    /// behind it (the scan may take up to the store timeout on a slow database).
    pub async fn payload_bytes(&self) -> Result<u64, Error> {
        let now = self.inner.clock.now_ms();
        {
            let mut summed = self.payload_bytes_state();
            let max_age = PAYLOAD_BYTES_MAX_AGE.as_millis() as i64;
            match summed.last {
                Some((at, bytes)) if (at..at.saturating_add(max_age)).contains(&now) => {
                    return Ok(bytes);
                }
                Some((_, bytes)) if summed.summing => return Ok(bytes),
                _ => summed.summing = true,
            }
        }
        // Cleared however the scan ends, cancelled callers included.
        let _summing = Summing(self);
        let bytes = self
            .call("payload bytes", self.inner.backend.payload_bytes())
            .await?;
        self.payload_bytes_state().last = Some((now, bytes));
        Ok(bytes)
    }

    fn payload_bytes_state(&self) -> std::sync::MutexGuard<'_, PayloadBytes> {
        self.inner
            .payload_bytes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub async fn ping(&self) -> Result<(), Error> {
        self.call("ping", self.inner.backend.ping()).await
    }

    /// A signal that the retained set may have changed: it moves after every write batch of
    /// this handle, every change another node announces, and every expiry or retention purge.
    /// Watches wait on it, then read [`Store::changes`]; it says nothing of what changed.
    pub fn changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Up to `limit` changes after revision `after` to topics in `[from, until)` (byte order;
    /// `until: None` = no upper bound), in revision order: each topic's latest change, and none
    /// that a change still in flight could precede. The next page starts after the page's
    /// `settled`.
    pub async fn changes(
        &self,
        after: Revision,
        from: &str,
        until: Option<&str>,
        limit: u32,
    ) -> Result<ChangePage, Error> {
        let now = self.inner.clock.now_ms();
        let work = self.inner.backend.changes(after, from, until, limit, now);
        self.call("changes", work).await
    }

    /// The revision every change at or below which is settled: where a watch that starts from
    /// the current set starts following changes.
    pub async fn settled(&self) -> Result<Revision, Error> {
        self.call("settled revision", self.inner.backend.settled())
            .await
    }

    /// The highest revision this database can have given out (see
    /// [`RetainedStore::reached`]): a watch resuming from above it would skip changes.
    pub async fn reached(&self) -> Result<Revision, Error> {
        self.call("reached revision", self.inner.backend.reached())
            .await
    }

    /// The highest revision whose tombstone has been purged: a watch resuming from below it
    /// may have missed a delete.
    pub async fn compacted(&self) -> Result<Revision, Error> {
        self.call("compacted revision", self.inner.backend.compacted())
            .await
    }

    /// Saves persistent sessions for this node's next start (see
    /// [`RetainedStore::save_sessions`]), within the store's timeout.
    pub async fn save_sessions(&self, sessions: &[SavedSession]) -> Result<(), Error> {
        self.call("save sessions", self.inner.backend.save_sessions(sessions))
            .await
    }

    /// Takes saved sessions, up to `limit` and `max_bytes` of them (see
    /// [`RetainedStore::take_sessions`]): committed within the store's timeout or not at
    /// all. The answer is awaited a little longer, so that a take that commits in time is not
    /// given up on its way back.
    pub async fn take_sessions(
        &self,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<SavedSession>, Error> {
        let timeout = self.inner.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let take = self.inner.backend.take_sessions(limit, max_bytes, deadline);
        self.call_within("take sessions", timeout + TAKE_ANSWER_MARGIN, take)
            .await
    }

    /// The key that signs pagination tokens, shared by every node on the same database.
    pub async fn token_key(&self) -> Result<Vec<u8>, Error> {
        let candidate = *uuid::Uuid::new_v4().as_bytes();
        let candidate = [candidate, *uuid::Uuid::new_v4().as_bytes()].concat();
        deadline(self.inner.timeout, self.inner.backend.token_key(&candidate)).await
    }

    /// Records pending reads, then deletes expired messages and those idle for `retention`.
    /// Purges run in bounded batches until none is left, so requests keep flowing meanwhile.
    pub async fn maintain(&self, retention: Duration) -> Result<MaintenanceReport, Error> {
        let timeout = self.inner.timeout;
        let backend = &self.inner.backend;
        let now = self.inner.clock.now_ms();
        let touched: Vec<TopicName> = std::mem::take(&mut *self.touched()).into_iter().collect();
        let mut report = MaintenanceReport {
            touched: touched.len(),
            ..Default::default()
        };
        if !touched.is_empty() {
            deadline(timeout, backend.touch(&touched, now)).await?;
            if let Some(cache) = &self.inner.cache {
                // Their cached copies carry the old access time; read them afresh.
                touched.iter().for_each(|t| cache.evict(t));
            }
        }
        // Until a write that started before them can no longer be running, expired messages and
        // tombstones still keep such a write from bringing back an older message.
        let settled =
            now.saturating_sub(i64::try_from(purge_delay(timeout).as_millis()).unwrap_or(i64::MAX));
        loop {
            let n = deadline(timeout, backend.purge_tombstones(settled, PURGE_BATCH)).await?;
            report.tombstones += n;
            if n < u64::from(PURGE_BATCH) {
                break;
            }
        }
        loop {
            let n = deadline(timeout, backend.expire(now, PURGE_BATCH)).await?;
            report.expired += n;
            if n > 0 {
                self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
            }
            if n < u64::from(PURGE_BATCH) {
                break;
            }
        }
        let cutoff = now.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        // Reads bypass the cache from before the idle purge until the cache has forgotten what
        // it purged: a message must not be served from memory after its delete has committed.
        let unsettled = self.inner.cache.clone().map(ReadCache::unsettled);
        loop {
            let n = deadline(timeout, backend.purge_idle(cutoff, now, PURGE_BATCH)).await?;
            report.idle += n;
            if n > 0 {
                self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
            }
            if n > 0
                && let Some(cache) = &self.inner.cache
            {
                cache.forget_all(); // rare: nothing was read for the whole retention period
            }
            if n < u64::from(PURGE_BATCH) {
                break;
            }
        }
        drop(unsettled);
        report.changes_compacted = self.compact_changes().await?;
        Ok(report)
    }

    /// Removes change-log entries that are no longer their topic's latest: most are removed
    /// by the write that replaces them, and this finds the few two concurrent writes of one
    /// topic leave behind. Each pass walks on from where the last stopped, at most
    /// [`COMPACT_PER_PASS`] entries, and starts over at the end.
    async fn compact_changes(&self) -> Result<u64, Error> {
        let backend = &self.inner.backend;
        let mut removed = 0;
        let mut examined = 0;
        let mut after = *self.compact_cursor();
        while examined < COMPACT_PER_PASS {
            let call = backend.compact_changes(after, PURGE_BATCH);
            let (n, last) = deadline(self.inner.timeout, call).await?;
            removed += n;
            examined += PURGE_BATCH;
            match last {
                Some(last) => after = last,
                None => {
                    after = 0;
                    break;
                }
            }
        }
        *self.compact_cursor() = after;
        Ok(removed)
    }

    fn compact_cursor(&self) -> std::sync::MutexGuard<'_, Revision> {
        self.inner
            .compact_cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One database call under the deadline; a failure is logged (in summary, see `failures`).
    async fn call<T>(
        &self,
        work: &'static str,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        self.call_within(work, self.inner.timeout, call).await
    }

    /// [`Self::call`] given up after `timeout` instead of the store's.
    async fn call_within<T>(
        &self,
        work: &'static str,
        timeout: Duration,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let result = deadline(timeout, call).await;
        if let Err(e) = &result {
            self.inner.failures.record(work, e);
        }
        result
    }

    fn note_read(&self, msg: &RetainedMessage) {
        if self.inner.clock.now_ms() - msg.last_accessed_ms < TOUCH_GRANULARITY_MS {
            return;
        }
        let mut touched = self.touched();
        if touched.len() < MAX_PENDING_TOUCHES {
            touched.insert(msg.topic.clone());
        }
    }

    fn touched(&self) -> std::sync::MutexGuard<'_, HashSet<TopicName>> {
        // The set is only ever inserted into or taken whole; a panic cannot leave it half-made.
        self.inner
            .touched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Applies what the change feed reports to the cache, and tells watches, until the store
/// handle is dropped.
async fn follow(
    mut feed: Box<dyn ChangeFeed>,
    cache: Option<Weak<ReadCache>>,
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    stop: CancellationToken,
) {
    loop {
        let change = tokio::select! {
            () = stop.cancelled() => return,
            change = feed.next() => change,
        };
        if !matches!(change, Change::Lost) {
            changed.send_modify(|n| *n = n.wrapping_add(1));
        }
        let Some(cache) = cache.as_ref().map(Weak::upgrade) else {
            continue;
        };
        let Some(cache) = cache else { return };
        match change {
            Change::Topics(topics) => topics.iter().for_each(|t| cache.evict(t)),
            Change::All => cache.forget_all(),
            Change::Lost => cache.distrust(),
            Change::Resumed => cache.trust(),
        }
    }
}

/// How much longer than its deadline a take of saved sessions is awaited: its COMMIT's way
/// back.
const TAKE_ANSWER_MARGIN: Duration = Duration::from_secs(1);

async fn deadline<T>(
    timeout: Duration,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(Error::timed_out()))
}

async fn read_batch(
    backend: &dyn RetainedStore,
    topics: Vec<TopicName>,
    now_ms: i64,
    timeout: Duration,
    failures: &Failures,
) -> Vec<ReadResult> {
    let unique: Vec<TopicName> = {
        let mut seen = HashSet::with_capacity(topics.len());
        topics.iter().filter(|t| seen.insert(*t)).cloned().collect()
    };
    match deadline(timeout, backend.get_many(&unique, now_ms)).await {
        Ok(found) => {
            let by_topic: HashMap<TopicName, RetainedMessage> =
                found.into_iter().map(|m| (m.topic.clone(), m)).collect();
            topics
                .iter()
                .map(|t| Ok(by_topic.get(t).cloned()))
                .collect()
        }
        Err(e) => {
            failures.record("read batch", &e);
            vec![Err(e); topics.len()]
        }
    }
}

/// The shared pool's connections, read at each scrape. The backend is held weakly: the
/// metrics outlive the store.
fn observe_pool(metrics: &Metrics, backend: &Arc<dyn RetainedStore>) {
    let backend = Arc::downgrade(backend);
    metrics.on_scrape(move |m| {
        let Some((size, idle)) = backend.upgrade().and_then(|b| b.pool_connections()) else {
            return;
        };
        let pool = &m.gauges().store_pool_connections;
        let idle = i64::try_from(idle).unwrap_or(i64::MAX);
        pool.get_or_create(&PoolLabel { state: "idle" }).set(idle);
        pool.get_or_create(&PoolLabel { state: "in_use" })
            .set((i64::from(size) - idle).max(0));
    });
}
