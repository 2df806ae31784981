//! The node's one NATS connection: made at start with retries for as long as the operator
//! allows, then kept by async-nats, which reconnects and resubscribes by itself. What changes
//! while it runs is logged once per change (not per retry), counted as an epoch that the
//! interest tasks wait on to announce themselves again, and shown by `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::{Client, Event};
use tokio::sync::watch;

use super::Error;
use super::access::{NatsAccess, options, redact};

/// Room for a message's topic, properties and frame head besides its payload.
pub const HEAD_ROOM: usize = 64 * 1024;

/// Whether the connection is up, and how many times it came back.
pub struct Link {
    connected: AtomicBool,
    /// Set once the first connection is made: only later ones are reconnections.
    started: AtomicBool,
    /// Advanced on every reconnection.
    epoch: watch::Sender<u64>,
    /// Messages the NATS server or this client dropped because this node read too slowly.
    pub slow_consumer_events: AtomicU64,
    /// When a slow consumer was last logged (ms since `born`), so that a burst is one line.
    slow_logged_at: AtomicU64,
    born: Instant,
}

/// At most one log line a minute about slow-consumer events.
const SLOW_LOG_EVERY_MS: u64 = 60_000;

impl Link {
    fn new() -> Self {
        Self {
            connected: AtomicBool::new(false),
            started: AtomicBool::new(false),
            epoch: watch::Sender::new(0),
            slow_consumer_events: AtomicU64::new(0),
            slow_logged_at: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    /// A subscription's buffer in this client was full, so async-nats dropped a message sent
    /// to this node: counted, and logged at most once a minute. Which message, and so which
    /// sessions missed it, nobody can tell any more (decision 014).
    fn slow_consumer(&self, url: &str) {
        let events = self.slow_consumer_events.fetch_add(1, Ordering::Relaxed) + 1;
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.slow_logged_at.load(Ordering::Relaxed);
        let due = events == 1 || now.saturating_sub(last) >= SLOW_LOG_EVERY_MS;
        if due
            && self
                .slow_logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                url,
                events,
                "this node reads from NATS too slowly: messages from other nodes were dropped \
                 (slow consumer; count since start)"
            );
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn epochs(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// Times the connection came back since the node started.
    pub fn reconnections(&self) -> u64 {
        *self.epoch.borrow()
    }

    fn on(&self, url: &str, event: Event) {
        match event {
            Event::Connected => {
                let was = self.connected.swap(true, Ordering::AcqRel);
                if !was && self.started.load(Ordering::Acquire) {
                    tracing::warn!(url, "NATS connection back: routing between nodes resumes");
                    self.epoch.send_modify(|e| *e += 1);
                }
            }
            Event::Disconnected => {
                if self.connected.swap(false, Ordering::AcqRel) {
                    tracing::error!(
                        url,
                        "NATS connection lost: this node delivers only its own clients' \
                         messages, and /readyz answers 503, until it is back"
                    );
                }
            }
            Event::SlowConsumer(_) => self.slow_consumer(url),
            other => tracing::info!(url, event = %other, "NATS"),
        }
    }
}

/// A second connection for queue subscriptions (members of shared subscriptions): the
/// first one does not receive its own publishes, and NATS would then skip this node's
/// members for them. Made once the first connection works, so it needs no retries of its own;
/// async-nats keeps it up.
/// Its slow consumers count with the first one's (`link`); its connection state is the
/// first one's to report.
pub async fn connect_members(
    url: &str,
    access: &NatsAccess,
    name: &str,
    link: &Arc<Link>,
) -> Result<Client, Error> {
    let link = link.clone();
    let events_url = redact(url);
    options(url, access)
        .name(name)
        .connection_timeout(Duration::from_secs(2))
        .max_reconnects(None)
        .event_callback(move |event| {
            let link = link.clone();
            let url = events_url.clone();
            async move {
                if matches!(event, Event::SlowConsumer(_)) {
                    link.slow_consumer(&url);
                }
            }
        })
        .connect(url)
        .await
        .map_err(|e| Error::Unreachable {
            url: redact(url),
            cause: e.to_string(),
        })
}

/// Connects to `url`, trying again every half second until `wait` has passed, logging each
/// failure's cause; then checks that the largest payload fits the server's message size.
pub async fn connect(
    url: &str,
    access: &NatsAccess,
    name: &str,
    wait: Duration,
    max_payload_bytes: usize,
) -> Result<(Client, Arc<Link>), Error> {
    let link = Arc::new(Link::new());
    let deadline = Instant::now() + wait;
    let shown = redact(url);
    let client = loop {
        let events = link.clone();
        let events_url = shown.clone();
        let options = options(url, access)
            .name(name)
            // A node's own publishes never come back to it: it delivered them locally.
            .no_echo()
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .event_callback(move |event| {
                let events = events.clone();
                let url = events_url.clone();
                async move { events.on(&url, event) }
            });
        match options.connect(url).await {
            Ok(client) => break client,
            Err(e) => {
                let cause = e.to_string();
                if Instant::now() >= deadline {
                    return Err(Error::Unreachable { url: shown, cause });
                }
                tracing::warn!(url = %shown, %cause, "cannot reach NATS yet; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    link.connected.store(true, Ordering::Release);
    link.started.store(true, Ordering::Release);
    let server = client.server_info().max_payload;
    let needed = max_payload_bytes.saturating_add(HEAD_ROOM);
    if server < needed {
        return Err(Error::PayloadTooLarge {
            url: shown,
            server,
            payload: max_payload_bytes,
            needed,
        });
    }
    Ok((client, link))
}
