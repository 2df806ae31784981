//! One group-commit lane: a queue of writes, one batch in the database at a time, and what a
//! batch's outcome means for the read cache.
//!
//! Three rules keep acknowledged writes in order and the cache true to the database:
//! - **A batch answers at its deadline but holds the lane until it is settled.** The backend
//!   returns only once nothing more of the batch can commit (on Postgres it terminates the
//!   session running it). Meanwhile the cache is bypassed, and afterwards the batch's topics are
//!   evicted, because whether it committed is unknown.
//! - **A write ticket per batch** (see `RetainedStore::apply`): a batch that stalled in the
//!   database cannot overwrite a newer write to the same topic, from this node or another.
//! - **A row the database refuses fails alone.** A batch it refuses for its data is split in
//!   halves, and those again, until the offending writes are alone; the others commit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::backend::{TICKET_REVISIONS, Verdict};
use super::cache::ReadCache;
use super::coalesce::{CoalesceLimits, Coalescer};
use super::failures::Failures;
use super::message::WriteKind;
use super::{Clock, Error, OwnedWrite, RetainedStore, Revision, Write, Writer};
use crate::metrics::Metrics;

const QUEUE: usize = 4096;

/// What a lane answers for each write: committed under this revision, committed and replaced
/// at once by a later write (`None`), or why not.
pub(super) type WriteResult = Result<Option<Revision>, Error>;

/// What a lane needs to know besides its backend.
#[derive(Clone)]
pub(super) struct LaneSettings {
    pub(super) timeout: Duration,
    /// Most retained messages the whole store may keep.
    pub(super) max_messages: Option<u64>,
    pub(super) failures: Arc<Failures>,
    pub(super) metrics: Metrics,
    /// Bumped after every settled batch, for watches (`Store::changed`).
    pub(super) changed: Arc<tokio::sync::watch::Sender<u64>>,
}

/// Starts a lane. One batch in flight: a lane's batches commit in arrival order, so the last
/// publish to a topic is the one that stays.
pub(super) fn spawn(
    backend: Arc<dyn RetainedStore>,
    cache: Option<Arc<ReadCache>>,
    clock: Clock,
    settings: LaneSettings,
) -> Coalescer<OwnedWrite, WriteResult> {
    let max_batch = backend.max_write_batch();
    // More rows than a ticket has revisions would share one.
    assert!(
        (1..TICKET_REVISIONS as usize).contains(&max_batch),
        "write batch limit {max_batch}"
    );
    let limits = CoalesceLimits {
        queue: QUEUE,
        max_batch,
        concurrency: 1,
    };
    // Held by a batch until it is settled, past its deadline if need be.
    let turn = Arc::new(Mutex::new(()));
    let settings = Arc::new(settings);
    Coalescer::spawn(limits, move |writes: Vec<OwnedWrite>| {
        let (backend, cache, clock) = (backend.clone(), cache.clone(), clock.clone());
        let (turn, settings) = (turn.clone(), settings.clone());
        async move {
            let turn = turn.lock_owned().await;
            let n = writes.len();
            let deadline = Instant::now() + settings.timeout;
            let now_ms = clock.now_ms();
            let started = std::time::Instant::now();
            let max_messages = settings.max_messages;
            // Polled here while the deadline lasts (no hand-over to another task on the way to
            // the database), and moved to a task of its own if it outlasts it.
            let mut work = Box::pin(async move {
                let results =
                    apply_in_turns(&*backend, &writes, max_messages, now_ms, deadline).await;
                (writes, results)
            });
            let finished = tokio::time::timeout_at(deadline, &mut work).await;
            settings.metrics.store_batch(n, started.elapsed());
            // How well writes coalesce, for tuning: RUST_LOG=retaind::store=debug.
            tracing::debug!(
                writes = n,
                took_us = started.elapsed().as_micros() as u64,
                settled = finished.is_ok(),
                "write batch"
            );
            match finished {
                Ok((writes, results)) => {
                    // One line for the batch, not one per write (see `failures`).
                    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                        settings.failures.record("write batch", e);
                    }
                    if let Some(cache) = &cache {
                        record(cache, writes, &results);
                    }
                    settings.changed.send_modify(|n| *n = n.wrapping_add(1));
                    drop(turn);
                    results.into_iter().map(answer).collect()
                }
                Err(_) => {
                    settings.failures.record("write batch", &Error::timed_out());
                    // The callers learn now that the outcome is unknown; the lane and the cache
                    // wait for the batch to settle.
                    let unsettled = cache.map(ReadCache::unsettled);
                    let changed = settings.changed.clone();
                    tokio::spawn(async move {
                        let (writes, _) = work.await;
                        changed.send_modify(|n| *n = n.wrapping_add(1));
                        if let Some(unsettled) = &unsettled {
                            writes.iter().for_each(|w| unsettled.evict(w.write.topic()));
                        }
                        drop(unsettled);
                        drop(turn);
                    });
                    vec![Err(Error::timed_out()); n]
                }
            }
        }
    })
}

/// Applies `writes` in turns ([`turns`]), each split while the database refuses its data, so
/// that only the writes it refuses fail. One result per write, in order; a batch-wide failure
/// is every write's.
async fn apply_in_turns(
    backend: &dyn RetainedStore,
    writes: &[OwnedWrite],
    max_total: Option<u64>,
    now_ms: i64,
    deadline: Instant,
) -> Vec<Result<Verdict, Error>> {
    let mut results = Vec::with_capacity(writes.len());
    for turn in turns(writes) {
        results.extend(apply_by_kind(backend, &writes[turn], max_total, now_ms, deadline).await);
    }
    results
}

/// Applies a turn one kind of write at a time, each kind in its own transaction, in the
/// order of [`WriteKind`]; one result per write, in the turn's order.
///
/// A database applies each kind with its own statement, and each locks its rows in topic
/// order. In one transaction, a batch would then
/// hold its unconditional topics while it locks its conditional ones: two nodes whose batches
/// share topics with the kinds the other way round would each wait for the other, a deadlock
/// that fails both batches. One kind per transaction, each transaction takes its locks in one
/// order. A turn holds each topic under one kind only ([`turns`] cuts where a conditional
/// write's topic comes back), so the kinds are independent; a turn of one kind, the usual
/// case, is one transaction as before.
async fn apply_by_kind(
    backend: &dyn RetainedStore,
    writes: &[OwnedWrite],
    max_total: Option<u64>,
    now_ms: i64,
    deadline: Instant,
) -> Vec<Result<Verdict, Error>> {
    let first = writes.first().map(OwnedWrite::kind);
    if writes.iter().all(|w| Some(w.kind()) == first) {
        return apply_isolating(backend, writes, max_total, now_ms, deadline).await;
    }
    let mut results: Vec<Option<Result<Verdict, Error>>> = vec![None; writes.len()];
    for k in WriteKind::ALL {
        let (at, group): (Vec<usize>, Vec<OwnedWrite>) = writes
            .iter()
            .enumerate()
            .filter(|(_, w)| w.kind() == k)
            .map(|(i, w)| (i, w.clone()))
            .unzip();
        if group.is_empty() {
            continue;
        }
        let done = apply_isolating(backend, &group, max_total, now_ms, deadline).await;
        for (i, result) in at.into_iter().zip(done) {
            results[i] = Some(result);
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::Internal("a write of no kind".into()))))
        .collect()
}

/// Cuts a batch where a topic comes back and either of its writes is conditional: a condition
/// must be checked against the write before it, which a batch (applying only the last write of
/// each topic) would not do. Thirty-two racers for one revision in one batch become 32
/// transactions, of which the first wins; batches without conditions stay whole.
fn turns(writes: &[OwnedWrite]) -> Vec<std::ops::Range<usize>> {
    let mut cuts = Vec::new();
    let mut start = 0;
    let mut seen: std::collections::HashMap<&str, bool> = std::collections::HashMap::new();
    for (i, w) in writes.iter().enumerate() {
        let topic = w.write.topic().as_str();
        let conditional = w.condition.is_some();
        if seen
            .get(topic)
            .is_some_and(|&earlier| earlier || conditional)
        {
            cuts.push(start..i);
            start = i;
            seen.clear();
        }
        let entry = seen.entry(topic).or_insert(false);
        *entry |= conditional;
    }
    cuts.push(start..writes.len());
    cuts
}

/// Applies `writes`, splitting the batch while the database refuses its data, so that only the
/// writes it refuses fail. One result per write, in order; a batch-wide failure is every write's.
async fn apply_isolating(
    backend: &dyn RetainedStore,
    writes: &[OwnedWrite],
    max_total: Option<u64>,
    now_ms: i64,
    deadline: Instant,
) -> Vec<Result<Verdict, Error>> {
    match backend.apply(writes, max_total, now_ms, deadline).await {
        Ok(verdicts) => verdicts.into_iter().map(Ok).collect(),
        Err(Error::Refused(why)) if writes.len() == 1 => {
            // Named, so that the log says which write it was.
            let topic = writes[0].write.topic();
            vec![Err(Error::Refused(
                format!("topic {topic:?}: {why}").into(),
            ))]
        }
        Err(Error::Refused(_)) => {
            // In order, so that two writes of one topic in different halves keep their order.
            let (first, second) = writes.split_at(writes.len() / 2);
            let mut results =
                Box::pin(apply_isolating(backend, first, max_total, now_ms, deadline)).await;
            results.extend(
                Box::pin(apply_isolating(
                    backend, second, max_total, now_ms, deadline,
                ))
                .await,
            );
            results
        }
        Err(e) => vec![Err(e); writes.len()],
    }
}

fn answer(result: Result<Verdict, Error>) -> WriteResult {
    match result? {
        Verdict::Applied(revision) => Ok(Some(revision)),
        Verdict::Superseded => Ok(None),
        Verdict::Refused(quota) => Err(Error::QuotaExceeded(quota)),
        Verdict::ConditionFailed => Err(Error::ConditionFailed),
    }
}

/// Brings the cache in line with a settled batch: applied writes are cached as written; a
/// superseded topic holds a newer write, and a failed write may or may not have committed, so
/// both are forgotten and read afresh, as is a topic whose condition failed (it changed under
/// the writer); refused ones changed nothing.
/// The writes move into the cache rather than being cloned.
fn record(cache: &ReadCache, writes: Vec<OwnedWrite>, results: &[Result<Verdict, Error>]) {
    for (w, result) in writes.into_iter().zip(results) {
        let writer = w.client.map(|client| Writer {
            principal: w.owner.name,
            client,
        });
        match (result, w.write) {
            (Ok(Verdict::Applied(revision)), Write::Put(mut m)) => {
                m.revision = *revision;
                m.writer = writer;
                cache.written(m.topic.clone(), Some(Arc::new(m)))
            }
            (Ok(Verdict::Applied(_)), Write::Delete(topic)) => cache.written(topic, None),
            (Ok(Verdict::Refused(_)), _) => {}
            (Ok(Verdict::Superseded | Verdict::ConditionFailed) | Err(_), w) => {
                cache.evict(w.topic())
            }
        }
    }
}
