//! The Postgres change feed: a `LISTEN` connection plus a heartbeat. Each node notifies itself
//! every [`HEARTBEAT`]; a listener that has not heard its own heartbeat for [`STALE_AFTER`]
//! is presumed deaf (a connection can die without closing) and is replaced, and the cache is
//! told that changes may have been missed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgNotification};
use tokio::time::Instant;

use crate::store::backend::ChangeFeed;
use crate::store::feed::{CHANNEL, Change, Notice, ping};
use crate::topic::TopicName;

const HEARTBEAT: Duration = Duration::from_millis(500);
/// The longest a node serves from its cache without proof that its feed works.
pub(super) const STALE_AFTER: Duration = Duration::from_secs(2);

pub(super) struct PgChangeFeed {
    pool: PgPool,
    node: Arc<str>,
    listener: Option<PgListener>,
    last_heard: Instant,
    next_ping: Instant,
    seq: u64,
    ready: VecDeque<Change>,
    /// Connection attempts failed in a row; the first is logged, then one in
    /// [`LOG_EVERY_FAILED`], so a long outage does not write a line per attempt.
    failed_connects: u64,
}

/// At one attempt per heartbeat, a warning about every 30 s while the database is away.
const LOG_EVERY_FAILED: u64 = 60;

impl PgChangeFeed {
    pub(super) fn new(pool: PgPool, node: Arc<str>) -> Self {
        Self {
            pool,
            node,
            listener: None,
            last_heard: Instant::now(),
            next_ping: Instant::now(),
            seq: 0,
            ready: VecDeque::new(),
            failed_connects: 0,
        }
    }

    async fn connect(&mut self) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        // On a lost connection, return at once: `next` reconnects and reports the gap itself.
        listener.eager_reconnect(false);
        listener.listen(CHANNEL).await?;
        self.listener = Some(listener);
        self.last_heard = Instant::now();
        self.next_ping = Instant::now();
        Ok(())
    }

    fn heard(&mut self, notification: &PgNotification) {
        let Ok(notice) = serde_json::from_str::<Notice>(notification.payload()) else {
            tracing::warn!(
                payload = notification.payload(),
                "ignoring an unreadable change notice"
            );
            return;
        };
        if notice.node == *self.node {
            // Our own writes are already in our cache; our pings prove the feed works.
            if notice.ping.is_some() {
                self.last_heard = Instant::now();
            }
        } else if notice.all {
            self.ready.push_back(Change::All);
        } else if !notice.topics.is_empty() {
            let topics = notice
                .topics
                .into_iter()
                .map(TopicName::from_stored)
                .collect();
            self.ready.push_back(Change::Topics(topics));
        }
    }

    /// Notifies over the listening connection itself, not the pool: with every pool connection
    /// busy (a hundred subscribers reading the retained set), a ping that waited for one went
    /// unsent, and a working feed was declared lost over and over. Notifications that arrive
    /// while the ping runs are kept by the listener.
    async fn send_ping(&mut self) {
        self.seq += 1;
        let payload = ping(&self.node, self.seq);
        self.next_ping = Instant::now() + HEARTBEAT;
        let Some(listener) = self.listener.as_mut() else {
            return;
        };
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&mut *listener);
        // A ping that cannot be sent is a ping not heard; the staleness check handles it.
        let _ = tokio::time::timeout(HEARTBEAT, sent).await;
    }

    fn lose(&mut self, why: &str) -> Change {
        tracing::warn!(
            reason = why,
            "change feed lost; reads bypass the cache until it is back"
        );
        self.listener = None;
        Change::Lost
    }
}

#[async_trait]
impl ChangeFeed for PgChangeFeed {
    async fn next(&mut self) -> Change {
        loop {
            if let Some(change) = self.ready.pop_front() {
                return change;
            }
            if self.listener.is_none() {
                match self.connect().await {
                    Ok(()) => {
                        let failed = std::mem::take(&mut self.failed_connects);
                        tracing::info!(failed_attempts = failed, "change feed listening");
                        return Change::Resumed;
                    }
                    Err(e) => {
                        if self.failed_connects.is_multiple_of(LOG_EVERY_FAILED) {
                            tracing::warn!(
                                error = %e,
                                failed_attempts = self.failed_connects + 1,
                                "change feed cannot connect; retrying every {HEARTBEAT:?}"
                            );
                        }
                        self.failed_connects += 1;
                        tokio::time::sleep(HEARTBEAT).await;
                        continue;
                    }
                }
            }
            if self.last_heard.elapsed() > STALE_AFTER {
                return self.lose("no heartbeat heard");
            }
            if Instant::now() >= self.next_ping {
                self.send_ping().await;
                continue;
            }
            let listener = self.listener.as_mut().expect("connected above");
            // The listener buffers partial reads internally, so giving up on a wait loses nothing.
            match tokio::time::timeout_at(self.next_ping, listener.try_recv()).await {
                Err(_elapsed) => {}
                Ok(Ok(Some(notification))) => self.heard(&notification),
                Ok(Ok(None)) => return self.lose("connection closed"),
                Ok(Err(e)) => return self.lose(&e.to_string()),
            }
        }
    }
}
