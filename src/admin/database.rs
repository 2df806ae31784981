//! The store itself, opened as the server opens it (`store::open_backend`: migrations, the
//! SQLite file lock, Postgres' session setup), for commands given `--database-url`. Writes go
//! through the backend's `apply`, the server's own batch write: write tickets order them
//! against every node's writes, quotas' counts follow, and on Postgres the change feed tells
//! running nodes to forget the topics from their read caches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Error;
use crate::store::{self, OwnedWrite, RetainedMessage, RetainedStore, Verdict, Write};
use crate::topic::{TopicFilter, TopicName};

/// Connections the commands need: one transaction at a time, and the change feed's listener.
const CONNECTIONS: u32 = 2;
/// Topics read per query while looking for a filter's matches.
const MATCH_PAGE: u32 = 1000;

#[derive(Clone)]
pub struct Database {
    backend: Arc<dyn RetainedStore>,
    timeout: Duration,
}

impl Database {
    pub async fn open(url: &str, timeout: Duration) -> Result<Self, Error> {
        let backend = store::open_backend(url, CONNECTIONS, timeout, Duration::ZERO).await?;
        Ok(Self { backend, timeout })
    }

    /// See [`RetainedStore::snapshot`]: the set at one instant, in topic order.
    pub async fn snapshot(
        &self,
        from: &str,
        until: Option<&str>,
        now_ms: i64,
        out: mpsc::Sender<RetainedMessage>,
    ) -> Result<u64, Error> {
        Ok(self.backend.snapshot(from, until, now_ms, out).await?)
    }

    /// The last-modified time of each of `topics` that holds an unexpired message.
    pub async fn versions(
        &self,
        topics: &[TopicName],
        now_ms: i64,
    ) -> Result<HashMap<TopicName, i64>, Error> {
        let found = self.backend.get_many(topics, now_ms).await?;
        Ok(found
            .into_iter()
            .map(|m| (m.topic, m.last_modified_ms))
            .collect())
    }

    /// Stores `messages` as they are (their times included) in one transaction.
    pub async fn put(&self, messages: Vec<RetainedMessage>, now_ms: i64) -> Result<(), Error> {
        self.apply(messages.into_iter().map(Write::Put).collect(), now_ms)
            .await
    }

    /// Deletes `topics` in one transaction.
    pub async fn delete(&self, topics: &[TopicName], now_ms: i64) -> Result<(), Error> {
        self.apply(topics.iter().cloned().map(Write::Delete).collect(), now_ms)
            .await
    }

    async fn apply(&self, writes: Vec<Write>, now_ms: i64) -> Result<(), Error> {
        if writes.is_empty() {
            return Ok(());
        }
        let writes: Vec<OwnedWrite> = writes.into_iter().map(OwnedWrite::from).collect();
        let deadline = Instant::now() + self.timeout;
        let verdicts = self.backend.apply(&writes, None, now_ms, deadline).await?;
        // Without a quota nothing is refused; a superseded write lost to a newer one, as
        // with any write.
        match verdicts.into_iter().find_map(|v| match v {
            Verdict::Refused(quota) => Some(quota),
            Verdict::Applied(_) | Verdict::Superseded | Verdict::ConditionFailed => None,
        }) {
            Some(quota) => Err(store::Error::QuotaExceeded(quota).into()),
            None => Ok(()),
        }
    }

    /// The topics of the unexpired messages matching `filter`, in topic order.
    pub async fn matching(
        &self,
        filter: &TopicFilter,
        now_ms: i64,
    ) -> Result<Vec<TopicName>, Error> {
        let (from, until) = filter.scan_range();
        let mut after: Option<TopicName> = None;
        let mut topics = Vec::new();
        loop {
            let page = self
                .backend
                .list_range(&from, until.as_deref(), after.as_ref(), MATCH_PAGE, now_ms)
                .await?;
            let full = page.len() == MATCH_PAGE as usize;
            for row in page {
                if filter.matches(&row.topic) {
                    topics.push(row.topic.clone());
                }
                after = Some(row.topic);
            }
            if !full {
                return Ok(topics);
            }
        }
    }
}
