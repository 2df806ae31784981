//! The cluster handle's background loops: the forwarder that sends publishes to NATS in
//! order, the answers to other nodes' take-over notices and hand-over requests, and the
//! retries of connection ends the database did not record.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::budget::Budget;
use super::claims::TakeOver;
use super::frame::Batch;
use super::inbox::Inbox;
use super::nodes::BEAT;
use super::remote::RemoteInterest;
use super::sessions::{Sessions, Spool};
use super::subject::topic_subject;
use crate::topic::TopicName;

/// How long a node resuming a session waits for the node that holds it to let go; also how
/// long the holder waits for its spool before it answers.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest a hand-over waits to hear of the requester's interest (see [`hand_over`]); well
/// within [`HANDOVER_TIMEOUT`], which the requester waits for the whole answer.
const INTEREST_WAIT: Duration = Duration::from_secs(1);

/// One task sends every forwarded publish, so they leave in the order they were handled:
/// a publisher's messages stay in order, as NATS keeps them from one connection. What is
/// queued behind a publish for the same subject goes with it, as one NATS message (a
/// [`Batch`]); nothing waits for a batch to fill.
pub async fn send(
    client: async_nats::Client,
    prefix: String,
    mut outbox: mpsc::Receiver<(TopicName, Bytes)>,
    bytes: Arc<Budget>,
    forwarded: Arc<AtomicU64>,
    nats_messages: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let sent = Sent {
        prefix: &prefix,
        publishes: &forwarded,
        messages: &nats_messages,
        bytes: &bytes,
    };
    let mut next = None;
    loop {
        let (topic, first) = match next.take() {
            Some(item) => item,
            None => tokio::select! {
                item = outbox.recv() => match item {
                    Some(item) => item,
                    None => break,
                },
                () = shutdown.cancelled() => break,
            },
        };
        next = send_batch(&client, &mut outbox, topic, first, &sent).await;
    }
    // What the broker handed over before it stopped still goes out.
    while let Some((topic, first)) = next.take().or_else(|| outbox.try_recv().ok()) {
        next = send_batch(&client, &mut outbox, topic, first, &sent).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
}

/// Sends `first` with whatever is queued right behind it for `topic` (one subject); returns
/// the next publish queued for another topic, if it took one.
async fn send_batch(
    client: &async_nats::Client,
    outbox: &mut mpsc::Receiver<(TopicName, Bytes)>,
    topic: TopicName,
    first: Bytes,
    sent: &Sent<'_>,
) -> Option<(TopicName, Bytes)> {
    let mut held = first.len();
    let mut batch = Batch::new(first);
    let mut next = None;
    while let Ok((t, frame)) = outbox.try_recv() {
        if t != topic || !batch.fits(&frame) {
            next = Some((t, frame));
            break;
        }
        held += frame.len();
        batch.push(frame);
    }
    let count = batch.count() as u64;
    let subject = topic_subject(sent.prefix, &topic);
    let published = client.publish(subject, batch.body()).await.is_ok();
    // Held until async-nats took it: while NATS is away, what waits is counted here, bar
    // the 2,048 batches async-nats queues itself (decision 014).
    sent.bytes.give_back(held);
    if published {
        sent.publishes.fetch_add(count, Ordering::Relaxed);
        sent.messages.fetch_add(1, Ordering::Relaxed);
    }
    next
}

/// What the forwarder needs besides the outbox: the subjects' prefix, and its counts of
/// publishes sent and of the NATS messages that carried them.
struct Sent<'a> {
    prefix: &'a str,
    publishes: &'a AtomicU64,
    messages: &'a AtomicU64,
    /// The outbox's bytes, given back as the frames leave it for async-nats.
    bytes: &'a Budget,
}

/// The subscription's next message; `None` once it ends or the node stops.
pub(super) async fn next_or_stop(
    subscription: &mut async_nats::Subscriber,
    shutdown: &CancellationToken,
) -> Option<async_nats::Message> {
    tokio::select! {
        m = subscription.next() => m,
        () = shutdown.cancelled() => None,
    }
}

/// Hands take-over notices for this node to the broker.
pub async fn take_overs(
    mut notices: async_nats::Subscriber,
    inbox: Arc<Inbox>,
    shutdown: CancellationToken,
) {
    loop {
        let Some(message) = next_or_stop(&mut notices, &shutdown).await else {
            return;
        };
        match TakeOver::decode(&message.payload) {
            Some(notice) => {
                if let Some(events) = inbox.events.get() {
                    events.taken_over(notice);
                }
            }
            None => tracing::warn!("dropped a take-over notice that does not decode"),
        }
    }
}

/// Answers other nodes' requests for sessions this node holds: the broker ends its copy and
/// spools what it had queued, and the answer goes once that, and the QoS 2 exchanges it left
/// open, are written.
///
/// Requests are answered concurrently, up to [`MAX_HAND_OVERS`] at once: each waits on the
/// bucket and on a database commit, so answered one after another they queued behind each
/// other when many clients moved at once (a node drained at shutdown): measured with 1,000
/// clients leaving a node over a second, their CONNACKs on the other node waited 400 ms at
/// the median.
pub async fn hand_over(
    mut requests: async_nats::Subscriber,
    shared: Arc<HandOvers>,
    shutdown: CancellationToken,
) {
    let mut in_flight = Bounded::new(MAX_HAND_OVERS);
    loop {
        if !in_flight.room(&shutdown).await {
            return;
        }
        let Some(request) = next_or_stop(&mut requests, &shutdown).await else {
            return;
        };
        let Ok(client_id) = std::str::from_utf8(&request.payload) else {
            continue;
        };
        let one = HandOver {
            client_id: client_id.to_owned(),
            reply: request.reply,
            shared: shared.clone(),
            asked: tokio::time::Instant::now(),
        };
        in_flight.spawn(one.answer());
    }
}

/// Hand-overs answered at once.
const MAX_HAND_OVERS: usize = 256;

/// How long before the requester stops waiting a hand-over no longer writes the exchanges:
/// the request took some time to arrive, and the write some to reach the database.
const EXCHANGES_MARGIN: Duration = Duration::from_millis(500);

/// Tasks of one loop, at most `max` running at once.
struct Bounded {
    tasks: tokio::task::JoinSet<()>,
    max: usize,
}

impl Bounded {
    fn new(max: usize) -> Self {
        Self {
            tasks: tokio::task::JoinSet::new(),
            max,
        }
    }

    /// Waits until fewer than `max` tasks run; `false` if `stop` comes first.
    async fn room(&mut self, stop: &CancellationToken) -> bool {
        while self.tasks.try_join_next().is_some() {}
        while self.tasks.len() >= self.max {
            tokio::select! {
                _ = self.tasks.join_next() => {}
                () = stop.cancelled() => return false,
            }
        }
        true
    }

    fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }
}

/// What the answers to hand-over requests share: the node holding the sessions asked for.
pub struct HandOvers {
    pub node: Arc<str>,
    pub client: async_nats::Client,
    pub inbox: Arc<Inbox>,
    pub remote: Arc<RemoteInterest>,
    pub spool: mpsc::Sender<Spool>,
    pub sessions: Arc<Sessions>,
}

/// One request for a session held here.
struct HandOver {
    client_id: String,
    reply: Option<async_nats::Subject>,
    shared: Arc<HandOvers>,
    /// When the request arrived.
    asked: tokio::time::Instant,
}

impl HandOver {
    /// The copy ends only once this node has heard, from the bucket, that another node holds
    /// the session's filters (within [`INTEREST_WAIT`]). The requester announced them before
    /// asking, but the announcement reaches this node by another path than the request and
    /// can come second. Were the copy to end first, a message published here in between would
    /// match no subscription here and no known interest elsewhere, and be lost.
    ///
    /// The exchanges are written only while the requester still waits (it takes the session
    /// as stored after [`HANDOVER_TIMEOUT`]); after, nobody would take them.
    async fn answer(self) {
        let shared = &*self.shared;
        let mut exchanges = None;
        if let Some(events) = shared.inbox.events.get() {
            let filters = events.filters_of(&self.client_id);
            let deadline = tokio::time::Instant::now() + INTEREST_WAIT;
            shared
                .remote
                .until_announced_elsewhere(&filters, deadline)
                .await;
            exchanges = events.hand_over(&self.client_id);
        }
        flush_spool(&shared.spool).await;
        if let Some(exchanges) = exchanges {
            let stored = if self.asked.elapsed() < HANDOVER_TIMEOUT - EXCHANGES_MARGIN {
                shared
                    .sessions
                    .let_go(&shared.node, &self.client_id, &exchanges)
                    .await
                    .map_err(|e| e.to_string())
            } else {
                Err("the node that asked for the session stopped waiting".to_owned())
            };
            if let Err(error) = stored {
                tracing::warn!(client = %self.client_id, %error, "the QoS 2 exchanges of a session handed over could not be stored: its client may have a QoS 2 message it resends delivered twice, and a PUBREL it is owed is not sent again");
            }
        }
        if let Some(reply) = self.reply {
            let _ = shared.client.publish(reply, Bytes::new()).await;
        }
    }
}

/// Waits until what was spooled before is written, or [`HANDOVER_TIMEOUT`] passed: a spool
/// full behind a stalled database makes even the asking wait, so the bound covers both.
pub async fn flush_spool(spool: &mpsc::Sender<Spool>) {
    let (done, written) = oneshot::channel();
    let _ = tokio::time::timeout(HANDOVER_TIMEOUT, async {
        if spool.send(Spool::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    })
    .await;
}

/// Ends of connections whose record in Postgres failed, by client id: the claim's generation
/// and whether the session outlives the connection. One per client id, the latest.
#[derive(Default)]
pub struct Undetached(Mutex<HashMap<Arc<str>, (u64, bool)>>);

impl Undetached {
    fn owed(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, (u64, bool)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn owe(&self, client_id: Arc<str>, generation: u64, persistent: bool) {
        let mut owed = self.owed();
        let entry = owed.entry(client_id).or_insert((generation, persistent));
        if entry.0 < generation {
            *entry = (generation, persistent);
        }
    }

    pub fn len(&self) -> usize {
        self.owed().len()
    }

    fn take(&self) -> Vec<(Arc<str>, (u64, bool))> {
        self.owed().drain().collect()
    }
}

/// Records, every [`BEAT`] until the database takes them, the ends of connections it did not
/// take when they happened; once more at shutdown.
pub async fn record_detached(
    sessions: Arc<Sessions>,
    node: Arc<str>,
    owed: Arc<Undetached>,
    shutdown: CancellationToken,
) {
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(BEAT) => false,
            () = shutdown.cancelled() => true,
        };
        let mut pending = owed.take().into_iter();
        let mut left = 0;
        // The first failure ends the pass: the database is still away, and each try would
        // wait out its timeout.
        while let Some((client_id, (generation, persistent))) = pending.next() {
            let recorded = sessions
                .detached(&node, &client_id, generation, persistent)
                .await;
            if recorded.is_err() {
                owed.owe(client_id, generation, persistent);
                left = 1;
                for (client_id, (generation, persistent)) in pending.by_ref() {
                    owed.owe(client_id, generation, persistent);
                    left += 1;
                }
            }
        }
        if stopping {
            if left > 0 {
                tracing::warn!(
                    connections = left,
                    "stopping with ends of connections the database did not record: the node \
                     that takes up this node's sessions will publish their Wills again"
                );
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that runs until `release` is notified.
    fn held(release: &Arc<tokio::sync::Notify>) -> impl Future<Output = ()> + Send + 'static {
        let release = release.clone();
        async move { release.notified().await }
    }

    #[tokio::test]
    async fn a_bounded_loop_waits_for_a_task_to_end_before_the_next() {
        let stop = CancellationToken::new();
        let release = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Bounded::new(2);
        for _ in 0..2 {
            assert!(tasks.room(&stop).await);
            tasks.spawn(held(&release));
        }
        let wait = Duration::from_millis(100);
        assert!(
            tokio::time::timeout(wait, tasks.room(&stop)).await.is_err(),
            "room for a third task while two run"
        );
        release.notify_one();
        assert_eq!(
            tokio::time::timeout(wait, tasks.room(&stop)).await,
            Ok(true)
        );
        tasks.spawn(held(&release));
        stop.cancel();
        assert_eq!(
            tokio::time::timeout(wait, tasks.room(&stop)).await,
            Ok(false)
        );
    }
}
