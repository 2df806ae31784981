//! The cluster handle's background loops: the forwarder that sends publishes to NATS in
//! order, and the answers to other nodes' take-over notices and hand-over requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::claims::TakeOver;
use super::inbox::Inbox;
use super::sessions::Spool;

/// How long a node resuming a session waits for the node that holds it to let go; also how
/// long the holder waits for its spool before it answers.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(3);

/// One task sends every forwarded publish, so they leave in the order they were handled:
/// a publisher's messages stay in order, as NATS keeps them from one connection.
pub async fn send(
    client: async_nats::Client,
    mut outbox: mpsc::Receiver<(String, Bytes)>,
    forwarded: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    loop {
        let (subject, body) = tokio::select! {
            next = outbox.recv() => match next {
                Some(next) => next,
                None => break,
            },
            () = shutdown.cancelled() => break,
        };
        if client.publish(subject, body).await.is_ok() {
            forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }
    // What the broker handed over before it stopped still goes out.
    while let Ok((subject, body)) = outbox.try_recv() {
        if client.publish(subject, body).await.is_ok() {
            forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
}

/// Hands take-over notices for this node to the broker.
pub async fn take_overs(
    mut notices: async_nats::Subscriber,
    inbox: Arc<Inbox>,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            m = notices.next() => match m {
                Some(m) => m,
                None => return,
            },
            () = shutdown.cancelled() => return,
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

/// Answers another node's request for a session this node holds: the broker ends its copy
/// and spools what it had queued, and the answer goes once that is written.
pub async fn hand_over(
    mut requests: async_nats::Subscriber,
    client: async_nats::Client,
    inbox: Arc<Inbox>,
    spool: mpsc::Sender<Spool>,
    shutdown: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            m = requests.next() => match m {
                Some(m) => m,
                None => return,
            },
            () = shutdown.cancelled() => return,
        };
        let Ok(client_id) = std::str::from_utf8(&request.payload) else {
            continue;
        };
        if let Some(events) = inbox.events.get() {
            events.hand_over(client_id);
        }
        let (done, written) = oneshot::channel();
        if spool.send(Spool::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(HANDOVER_TIMEOUT, written).await;
        }
        if let Some(reply) = request.reply {
            let _ = client.publish(reply, Bytes::new()).await;
        }
    }
}
