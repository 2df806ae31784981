//! Retained messages for a new subscription, read from the store a page at a time so that
//! subscribing to `#` over millions of messages holds only its read-ahead and the page being
//! read in memory.
//! The connection fetches the next page while the client is still taking the current one.
//!
//! A delivery's first page is read on the runtime the connection started on, whatever runs the
//! connection: a pooled Postgres connection's socket belongs to the runtime that opened it, and
//! one opened from the background threads (`background`) would make every later query on it,
//! anyone's, wait for a core those threads can have. The pages after it are bulk work: they
//! are read where the connection runs, on the store's connections for bulk scans
//! (`Readers::Bulk`), which nothing else uses.
//!
//! A page the database cannot serve for now (down, failing over, past its deadline) is read
//! again, after waits that grow, for up to twelve store timeouts ([`Patience`]): the
//! delivery goes on where it stopped, and the client keeps its connection. Only past that, or
//! on an error retrying cannot fix, is the client disconnected. Disconnecting at once sent
//! every subscriber of an outage back to subscribe again, and to read the database again from
//! the first page, as soon as it returned.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::future::BoxFuture;
use tokio::runtime::Handle;
use tokio_util::task::AbortOnDropHandle;

use super::census::{Census, Member};
use super::message::{Delivery, Message};
use super::patience::Patience;
use super::session::SubOptions;
use crate::store::{self, Readers, RetainedPublish, Store};
use crate::topic::{TopicFilter, TopicLimits, TopicName};

/// Rows in a first page, before payload sizes are known.
const FIRST_PAGE: u32 = 250;
/// The fewest rows a page asks for, however large the payloads.
const MIN_PAGE: u32 = 16;

/// What one connection reads ahead of its client, in payload bytes, at most and at least: the
/// next retained page is read while less than this waits in its queue (and a page is half of
/// it), so the client is not kept waiting for the database while memory stays bounded whatever
/// the payloads' size. Between the two, the connections reading retained pages at once share
/// [`READ_AHEAD_TOTAL`]: one subscriber draining a million messages alone gets the most, and
/// a hundred subscribing to `#` at once, each served a hundredth as fast, the least.
const READ_AHEAD_MAX: usize = 2 << 20;
const READ_AHEAD_MIN: usize = 256 << 10;
const READ_AHEAD_TOTAL: usize = 16 << 20;
/// Messages queued at most, at [`READ_AHEAD_MAX`] (in proportion below it), for small
/// payloads, whose per-message cost is not in their payload bytes.
const READ_AHEAD_MESSAGES: usize = 4000;

/// How many connections are reading retained pages: shared by every connection of the broker,
/// which each read ahead their share.
#[derive(Clone, Default)]
pub(super) struct ReadAhead(Census);

impl ReadAhead {
    fn join(&self) -> Member {
        self.0.enter()
    }

    fn allowance(&self) -> Allowance {
        Allowance::sharing(self.0.count())
    }
}

/// What one connection may hold of retained messages before it reads the next page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Allowance {
    bytes: usize,
    messages: usize,
}

impl Allowance {
    /// A connection's share while `readers` connections read retained pages.
    fn sharing(readers: usize) -> Self {
        let bytes = (READ_AHEAD_TOTAL / readers.max(1)).clamp(READ_AHEAD_MIN, READ_AHEAD_MAX);
        Self {
            bytes,
            messages: READ_AHEAD_MESSAGES * bytes / READ_AHEAD_MAX,
        }
    }

    /// Whether a queue this long and this heavy is short enough to read the next page into.
    fn wants_page(self, queued: usize, queued_bytes: usize) -> bool {
        queued < self.messages && queued_bytes < self.bytes
    }

    /// Rows of the next page: half the allowance, at the average payload size seen so far,
    /// and at most the store's `max_rows` (its pages' bound, [`Store::max_scan_rows`]).
    fn page_rows(self, average_payload: Option<usize>, max_rows: u32) -> u32 {
        let most = u32::try_from(self.messages / 2)
            .unwrap_or(u32::MAX)
            .min(max_rows)
            .max(MIN_PAGE);
        match average_payload {
            None => FIRST_PAGE.min(most),
            Some(average) => u32::try_from(self.bytes / 2 / average.max(1))
                .unwrap_or(most)
                .clamp(MIN_PAGE, most),
        }
    }
}

/// The retained deliveries one connection still owes its subscriptions: the scans to go on
/// with, and the page being read, at most one at a time.
pub(super) struct RetainedFeed {
    scans: VecDeque<RetainedScan>,
    fetching: Option<BoxFuture<'static, Result<Page, Unread>>>,
    share: ReadAhead,
    /// Held while there is anything left to read.
    reading: Option<Member>,
    /// A scan has come back for more than one page and its reads are not all done: the
    /// delivery is bulk work (`background`).
    long: bool,
    /// Where the reads run: the runtime the connection started on.
    home: Handle,
}

impl RetainedFeed {
    /// A feed whose reads run on the current runtime.
    pub fn new(share: ReadAhead) -> Self {
        Self {
            scans: VecDeque::new(),
            fetching: None,
            share,
            reading: None,
            long: false,
            home: Handle::current(),
        }
    }

    /// Starts reading the next page once the session's queue is short enough that the page
    /// will be needed soon: the client drains one page while the next is read.
    pub fn fetch_more(
        &mut self,
        (queued, queued_bytes): (usize, usize),
        store: &Store,
        limits: TopicLimits,
    ) {
        if self.scans.is_empty() && self.fetching.is_none() {
            self.reading = None;
            self.long = false;
            return;
        }
        if self.reading.is_none() {
            self.reading = Some(self.share.join());
        }
        let allowance = self.share.allowance();
        if self.fetching.is_some() || !allowance.wants_page(queued, queued_bytes) {
            return;
        }
        if let Some(mut scan) = self.scans.pop_front() {
            scan.page = allowance.page_rows(scan.average_payload, store.max_scan_rows());
            self.fetching = Some(self.read(scan, store, limits, Tries::Patiently));
        }
    }

    /// Reads a page of `scan`: while the delivery is long, a bulk scan where the connection
    /// runs; otherwise an ordinary one on the runtime the connection started on.
    pub fn read(
        &self,
        scan: RetainedScan,
        store: &Store,
        limits: TopicLimits,
        tries: Tries,
    ) -> BoxFuture<'static, Result<Page, Unread>> {
        let readers = if self.long {
            Readers::Bulk
        } else {
            Readers::Shared
        };
        let read = scan.fetch(store.clone(), limits, readers, tries);
        if readers == Readers::Bulk {
            return Box::pin(read);
        }
        let read = AbortOnDropHandle::new(self.home.spawn(read));
        Box::pin(async move {
            match read.await {
                Ok(page) => page,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // The runtime is shutting down under the connection.
                Err(_) => Err(Unread {
                    error: store::Error::Closed,
                    retry: None,
                }),
            }
        })
    }

    /// The page being read, once it is read; never, when none is. Cancel-safe.
    pub async fn page(&mut self) -> Result<Page, Unread> {
        let page = match self.fetching.as_mut() {
            Some(page) => page.await,
            None => std::future::pending().await,
        };
        self.fetching = None;
        page
    }

    /// A scan to go on with before any other, where the page just read left off.
    pub fn resume(&mut self, scan: RetainedScan) {
        if self.supersede(&scan) {
            self.scans.push_front(scan);
            self.long = true;
        }
    }

    /// A scan whose first page waits until the connection holds less than its allowance: read
    /// after the SUBACK, as a large delivery's later pages are.
    pub fn defer(&mut self, scan: RetainedScan) {
        if self.supersede(&scan) {
            self.scans.push_back(scan);
        }
    }

    /// Whether a connection holding `queued` messages of `queued_bytes` may read a first page
    /// now.
    pub fn has_room(&self, (queued, queued_bytes): (usize, usize)) -> bool {
        self.share.allowance().wants_page(queued, queued_bytes)
    }

    /// A subscription made again replaces the one before it, and its retained delivery
    /// replaces the one still under way: drops what is queued of an older scan of `scan`'s
    /// filter, or answers false if `scan` is the older one. So a client that subscribes to
    /// one filter over and over holds one scan of it, not one per SUBSCRIBE.
    fn supersede(&mut self, scan: &RetainedScan) -> bool {
        let newer = |s: &RetainedScan| s.filter == scan.filter && s.generation > scan.generation;
        if self.scans.iter().any(newer) {
            return false;
        }
        self.scans.retain(|s| s.filter != scan.filter);
        true
    }

    /// Whether a scan has needed more than one page and still has pages to read.
    pub fn is_long(&self) -> bool {
        self.long
    }
}

/// Where one subscription's retained delivery has got to.
pub(super) struct RetainedScan {
    filter: TopicFilter,
    /// Later subscriptions' scans have higher numbers.
    generation: u64,
    options: SubOptions,
    from: String,
    until: Option<String>,
    after: Option<TopicName>,
    /// Rows to ask for, set before each read.
    page: u32,
    /// The average payload of the rows read so far, to size the next page by.
    average_payload: Option<usize>,
    /// How long reading the current page has failed.
    patience: Patience,
}

/// One page of deliveries; `next` is the scan to continue with, if there is more.
pub(super) struct Page {
    pub deliveries: Vec<Delivery>,
    pub next: Option<RetainedScan>,
}

/// A page that was not read: why, and the scan to read it with later, where the error may pass
/// and the scan has not been failing for too long.
pub(super) struct Unread {
    pub error: store::Error,
    pub retry: Option<RetainedScan>,
}

/// How a page is read when the database cannot serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tries {
    /// Once, handing the scan back: the first page, read before the SUBACK, which must not
    /// wait out an outage.
    Once,
    /// Again and again, for up to twelve store timeouts ([`Patience`]).
    Patiently,
}

impl RetainedScan {
    pub fn new(filter: TopicFilter, options: SubOptions) -> Self {
        static GENERATIONS: AtomicU64 = AtomicU64::new(0);
        let (from, until) = filter.scan_range();
        Self {
            filter,
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            options,
            from,
            until,
            after: None,
            page: FIRST_PAGE,
            average_payload: None,
            patience: Patience::default(),
        }
    }

    /// Reads the next page on the connections of `readers`, as `tries` says when the database
    /// cannot serve it. Owns the scan and hands it back, so the fetch can run while the
    /// connection goes on serving the client.
    async fn fetch(
        mut self,
        store: Store,
        limits: TopicLimits,
        readers: Readers,
        tries: Tries,
    ) -> Result<Page, Unread> {
        loop {
            let error = match self.read_page(&store, limits, readers).await {
                Ok((deliveries, more)) => {
                    self.patience.succeeded();
                    return Ok(Page {
                        deliveries,
                        next: more.then_some(self),
                    });
                }
                Err(error) => error,
            };
            let now = tokio::time::Instant::now();
            let wait = self.patience.wait_after(&error, store.timeout(), now);
            let Some(wait) = wait else {
                return Err(Unread { error, retry: None });
            };
            if tries == Tries::Once {
                return Err(Unread {
                    error,
                    retry: Some(self),
                });
            }
            tracing::debug!(error = %error, filter = %self.filter.as_str(), ?wait,
                "reading a page of retained messages again");
            tokio::time::sleep(wait).await;
        }
    }

    /// The next page's deliveries, and whether there may be more; where it left off is kept
    /// only once a page is read.
    async fn read_page(
        &mut self,
        store: &Store,
        limits: TopicLimits,
        readers: Readers,
    ) -> Result<(Vec<Delivery>, bool), store::Error> {
        let now = store.clock().now_ms();
        if !self.filter.has_wildcards() {
            // An exact filter is a point read, which the read cache can answer. A filter
            // longer than any storable topic simply has no retained message.
            let found = match TopicName::parse(self.filter.as_str(), limits) {
                Ok(topic) => store.get(topic).await?.map(RetainedPublish::from),
                Err(_) => None,
            };
            return Ok((self.deliveries(found.into_iter().collect(), now), false));
        }
        let (from, until, after) = (&self.from, self.until.as_deref(), self.after.as_ref());
        let rows = store
            .scan_publishes(readers, from, until, after, self.page)
            .await?;
        let more = rows.len() == self.page as usize;
        self.after = rows.last().map(|m| m.topic.clone());
        if let Some(average) = average_payload(&rows) {
            self.average_payload = Some(average);
        }
        let matching = rows
            .into_iter()
            .filter(|m| self.filter.matches(&m.topic))
            .collect();
        Ok((self.deliveries(matching, now), more))
    }

    fn deliveries(&self, found: Vec<RetainedPublish>, now: i64) -> Vec<Delivery> {
        found
            .into_iter()
            .map(Message::from_retained)
            .filter(|m| !m.expired(now))
            .map(|m| Delivery {
                qos: m.qos.min(self.options.qos),
                // [MQTT-3.3.1-9] retained messages sent on subscribe carry RETAIN=1.
                retain: true,
                subscription_ids: self.options.subscription_id.into_iter().collect(),
                message: Arc::new(m),
            })
            .collect()
    }
}

fn average_payload(rows: &[RetainedPublish]) -> Option<usize> {
    let total: usize = rows.iter().map(|m| m.payload.len()).sum();
    (!rows.is_empty()).then(|| total / rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Qos;

    fn scan(filter: &str) -> RetainedScan {
        let options = SubOptions {
            qos: Qos::AtMostOnce,
            no_local: false,
            retain_as_published: false,
            subscription_id: None,
        };
        RetainedScan::new(TopicFilter::parse(filter).unwrap(), options)
    }

    fn queued(feed: &RetainedFeed) -> Vec<(&str, u64)> {
        feed.scans
            .iter()
            .map(|s| (s.filter.as_str(), s.generation))
            .collect()
    }

    #[tokio::test]
    async fn a_filter_subscribed_again_keeps_one_scan_the_newest() {
        let mut feed = RetainedFeed::new(ReadAhead::default());
        let (older, newer, other) = (scan("a/#"), scan("a/#"), scan("b/#"));
        let (o, n, b) = (older.generation, newer.generation, other.generation);
        feed.resume(newer);
        // The older subscription's page came back last: where it left off is not read on.
        feed.resume(older);
        assert_eq!(queued(&feed), [("a/#", n)]);
        feed.defer(other);
        assert_eq!(queued(&feed), [("a/#", n), ("b/#", b)]);
        let newest = scan("a/#");
        let latest = newest.generation;
        feed.defer(newest);
        assert_eq!(queued(&feed), [("b/#", b), ("a/#", latest)]);
        assert!(o < n && n < latest);
    }

    #[test]
    fn a_page_is_read_only_into_a_queue_short_in_messages_and_in_bytes() {
        let alone = Allowance::sharing(1);
        assert!(alone.wants_page(0, 0));
        assert!(alone.wants_page(READ_AHEAD_MESSAGES - 1, READ_AHEAD_MAX - 1));
        assert!(
            !alone.wants_page(READ_AHEAD_MESSAGES, 0),
            "many small messages"
        );
        // A few large ones: 40 messages of 64 KiB are more than the allowance.
        assert!(!alone.wants_page(40, 40 * 64 * 1024), "few large messages");
    }

    #[test]
    fn connections_reading_at_once_share_the_read_ahead_within_bounds() {
        assert_eq!(Allowance::sharing(0), Allowance::sharing(1));
        assert_eq!(Allowance::sharing(1).bytes, READ_AHEAD_MAX);
        assert_eq!(Allowance::sharing(1).messages, READ_AHEAD_MESSAGES);
        assert_eq!(Allowance::sharing(16).bytes, READ_AHEAD_TOTAL / 16);
        let crowd = Allowance::sharing(100);
        assert_eq!(crowd.bytes, READ_AHEAD_MIN);
        assert_eq!(crowd.messages, READ_AHEAD_MESSAGES / 8);
        assert!(crowd.wants_page(0, 0), "every connection still reads");
        assert!(!crowd.wants_page(crowd.messages, 0));
    }

    #[test]
    fn a_page_is_half_the_allowance_at_the_payloads_seen() {
        let alone = Allowance::sharing(1);
        let unbounded = u32::MAX;
        assert_eq!(alone.page_rows(None, unbounded), FIRST_PAGE);
        assert_eq!(
            alone.page_rows(Some(256), unbounded),
            2000,
            "capped by messages"
        );
        assert_eq!(alone.page_rows(Some(4096), unbounded), 256);
        assert_eq!(alone.page_rows(Some(1 << 20), unbounded), MIN_PAGE);
        let crowd = Allowance::sharing(100);
        assert_eq!(crowd.page_rows(Some(256), unbounded), 250);
        assert_eq!(crowd.page_rows(None, unbounded), FIRST_PAGE.min(250));
    }

    #[test]
    fn a_page_is_at_most_the_stores_bound() {
        let alone = Allowance::sharing(1);
        assert_eq!(alone.page_rows(Some(256), 256), 256);
        assert_eq!(alone.page_rows(None, 100), 100);
        assert_eq!(
            alone.page_rows(Some(4096), 1000),
            256,
            "the allowance is less"
        );
        assert_eq!(alone.page_rows(Some(256), 1), MIN_PAGE);
    }

    #[test]
    fn a_connection_counts_as_reading_until_it_lets_go() {
        let share = ReadAhead::default();
        let first = share.join();
        let second = share.join();
        assert_eq!(share.0.count(), 2);
        drop(first);
        drop(second);
        assert_eq!(share.0.count(), 0);
    }
}
