//! Retained messages for a new subscription, read from the store a page at a time so that
//! subscribing to `#` over millions of messages never holds more than a page in memory.

use std::sync::Arc;

use super::message::{Delivery, Message};
use super::session::SubOptions;
use crate::store::{self, Store};
use crate::topic::{TopicFilter, TopicLimits, TopicName};

/// Rows fetched per store call: large enough to amortise the round trip, small enough that
/// the session queue stays within its bounds.
pub(super) const PAGE: u32 = 200;

/// Where one subscription's retained delivery has got to.
pub(super) struct RetainedScan {
    filter: TopicFilter,
    options: SubOptions,
    from: String,
    until: Option<String>,
    after: Option<TopicName>,
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
        }
    }

    /// The next page of deliveries, and whether more may follow.
    pub async fn next_page(
        &mut self,
        store: &Store,
        limits: TopicLimits,
    ) -> Result<(Vec<Delivery>, bool), store::Error> {
        let now = store.clock().now_ms();
        let found = if self.filter.has_wildcards() {
            let page = store
                .scan(&self.from, self.until.as_deref(), self.after.as_ref(), PAGE)
                .await?;
            self.after = page.last().map(|m| m.topic.clone());
            let more = page.len() == PAGE as usize;
            let matching = page
                .into_iter()
                .filter(|m| self.filter.matches(&m.topic))
                .collect();
            return Ok((self.deliveries(matching, now), more));
        } else {
            // An exact filter is a point read, which the read cache can answer. A filter longer
            // than any storable topic simply has no retained message.
            match TopicName::parse(self.filter.as_str(), limits) {
                Ok(topic) => store.get(topic).await?.into_iter().collect(),
                Err(_) => Vec::new(),
            }
        };
        Ok((self.deliveries(found, now), false))
    }

    fn deliveries(&self, found: Vec<crate::store::RetainedMessage>, now: i64) -> Vec<Delivery> {
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
