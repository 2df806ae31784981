//! A store's write lanes as one value: the lanes, which lane a topic's writes take, and the
//! deadline a write waits under. Both the [`super::Store`] handle and a [`super::WriteBatch`]
//! queue writes through it, so neither needs the other's insides.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use super::cache::ReadCache;
use super::coalesce::Coalescer;
use super::write_lane::{self, LaneSettings, WriteResult};
use super::{Clock, Error, OwnedWrite, RetainedStore};
use crate::topic::TopicName;

pub(super) struct WriteLanes {
    /// A topic always goes to the same lane, so its writes commit in order.
    lanes: Vec<Coalescer<OwnedWrite, WriteResult>>,
    timeout: Duration,
}

impl WriteLanes {
    /// Starts `count` lanes (at least one) over `backend`.
    pub(super) fn spawn(
        count: usize,
        backend: &Arc<dyn RetainedStore>,
        cache: &Option<Arc<ReadCache>>,
        clock: &Clock,
        settings: LaneSettings,
    ) -> Self {
        let timeout = settings.timeout;
        let lanes = (0..count.max(1))
            .map(|_| {
                let settings = settings.clone();
                write_lane::spawn(backend.clone(), cache.clone(), clock.clone(), settings)
            })
            .collect();
        Self { lanes, timeout }
    }

    /// The deadline for a write, counted from when it is queued.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(super) fn count(&self) -> usize {
        self.lanes.len()
    }

    /// The write lane of `topic`: always the same one, so its writes commit in order.
    pub(super) fn lane_of(&self, topic: &TopicName) -> usize {
        match self.lanes.len() {
            1 => 0,
            n => (lane_hasher().hash_one(topic.as_str()) % n as u64) as usize,
        }
    }

    pub(super) fn lane(&self, lane: usize) -> &Coalescer<OwnedWrite, WriteResult> {
        &self.lanes[lane]
    }

    /// Queues one write on its topic's lane and waits for its outcome (no deadline here: the
    /// caller's covers the wait in the queue too).
    pub(super) async fn write(&self, write: OwnedWrite) -> WriteResult {
        self.lane(self.lane_of(write.write.topic()))
            .call(write)
            .await
            .unwrap_or(Err(Error::Closed))
    }
}

/// Spreads topics over write lanes; fixed keys, so a topic keeps its lane for the process's life.
fn lane_hasher() -> std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher> {
    std::hash::BuildHasherDefault::default()
}
