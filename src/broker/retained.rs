//! Retained messages for a new subscription, read from the store a page at a time so that
//! subscribing to `#` over millions of messages never holds more than two pages in memory.
//! The connection fetches the next page while the client is still taking the current one.

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::message::{Delivery, Message};
use super::session::SubOptions;
use crate::store::{self, RetainedMessage, Store};
use crate::topic::{TopicFilter, TopicLimits, TopicName};

/// Rows in a first page, before payload sizes are known.
const FIRST_PAGE: u32 = 250;
/// Bounds on rows per page.
const MIN_PAGE: u32 = 16;
const MAX_PAGE: u32 = 2000;
/// Payload bytes a page aims for: the rows per page follow from the sizes seen so far.
const PAGE_BYTES: usize = 1 << 20;

/// The next retained page is read while fewer messages than this, and fewer payload bytes than
/// `FETCH_BELOW_BYTES`, wait in the queue: about two pages, so the client is never kept waiting
/// for the database, and memory stays bounded whatever the payloads' size. A connection then
/// holds at most these plus one page of retained messages, however large the set.
const FETCH_BELOW: usize = 4000;
const FETCH_BELOW_BYTES: usize = 2 * PAGE_BYTES;

/// The retained deliveries one connection still owes its subscriptions: the scans to go on
/// with, and the page being read, at most one at a time.
#[derive(Default)]
pub(super) struct RetainedFeed {
    scans: VecDeque<RetainedScan>,
    fetching: Option<BoxFuture<'static, Result<Page, store::Error>>>,
}

impl RetainedFeed {
    /// Starts reading the next page once the session's queue is short enough that the page
    /// will be needed soon: the client drains one page while the next is read.
    pub fn fetch_more(
        &mut self,
        (queued, queued_bytes): (usize, usize),
        store: &Store,
        limits: TopicLimits,
    ) {
        if self.fetching.is_some() || !wants_page(queued, queued_bytes) {
            return;
        }
        if let Some(scan) = self.scans.pop_front() {
            self.fetching = Some(Box::pin(scan.fetch(store.clone(), limits)));
        }
    }

    /// The page being read, once it is read; never, when none is. Cancel-safe.
    pub async fn page(&mut self) -> Result<Page, store::Error> {
        let page = match self.fetching.as_mut() {
            Some(page) => page.await,
            None => std::future::pending().await,
        };
        self.fetching = None;
        page
    }

    /// A scan to go on with before any other, where the page just read left off.
    pub fn resume(&mut self, scan: RetainedScan) {
        self.scans.push_front(scan);
    }
}

/// Whether a queue this long and this heavy is short enough to read the next page into.
fn wants_page(queued: usize, queued_bytes: usize) -> bool {
    queued < FETCH_BELOW && queued_bytes < FETCH_BELOW_BYTES
}

/// Where one subscription's retained delivery has got to.
pub(super) struct RetainedScan {
    filter: TopicFilter,
    options: SubOptions,
    from: String,
    until: Option<String>,
    after: Option<TopicName>,
    page: u32,
}

/// One page of deliveries; `next` is the scan to continue with, if there is more.
pub(super) struct Page {
    pub deliveries: Vec<Delivery>,
    pub next: Option<RetainedScan>,
}

impl RetainedScan {
    pub fn new(filter: TopicFilter, options: SubOptions) -> Self {
        let (from, until) = filter.scan_range();
        Self {
            filter,
            options,
            from,
            until,
            after: None,
            page: FIRST_PAGE,
        }
    }

    /// Reads the next page. Owns the scan and hands it back, so the fetch can run while the
    /// connection goes on serving the client.
    pub async fn fetch(mut self, store: Store, limits: TopicLimits) -> Result<Page, store::Error> {
        let now = store.clock().now_ms();
        if !self.filter.has_wildcards() {
            // An exact filter is a point read, which the read cache can answer. A filter
            // longer than any storable topic simply has no retained message.
            let found = match TopicName::parse(self.filter.as_str(), limits) {
                Ok(topic) => store.get(topic).await?.into_iter().collect(),
                Err(_) => Vec::new(),
            };
            return Ok(Page {
                deliveries: self.deliveries(found, now),
                next: None,
            });
        }
        let rows = store
            .scan(
                &self.from,
                self.until.as_deref(),
                self.after.as_ref(),
                self.page,
            )
            .await?;
        let more = rows.len() == self.page as usize;
        self.after = rows.last().map(|m| m.topic.clone());
        if let Some(average) = average_payload(&rows) {
            let fit = PAGE_BYTES / average.max(1);
            self.page = u32::try_from(fit)
                .unwrap_or(MAX_PAGE)
                .clamp(MIN_PAGE, MAX_PAGE);
        }
        let matching = rows
            .into_iter()
            .filter(|m| self.filter.matches(&m.topic))
            .collect();
        Ok(Page {
            deliveries: self.deliveries(matching, now),
            next: more.then_some(self),
        })
    }

    fn deliveries(&self, found: Vec<RetainedMessage>, now: i64) -> Vec<Delivery> {
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

fn average_payload(rows: &[RetainedMessage]) -> Option<usize> {
    let total: usize = rows.iter().map(|m| m.payload.len()).sum();
    (!rows.is_empty()).then(|| total / rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_read_only_into_a_queue_short_in_messages_and_in_bytes() {
        assert!(wants_page(0, 0));
        assert!(wants_page(FETCH_BELOW - 1, FETCH_BELOW_BYTES - 1));
        assert!(!wants_page(FETCH_BELOW, 0), "many small messages");
        // A few large ones: 40 messages of 64 KiB are more than two pages' worth.
        assert!(!wants_page(40, 40 * 64 * 1024), "few large messages");
    }
}
