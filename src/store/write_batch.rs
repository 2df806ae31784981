//! Writes that enter the write queue together.
//!
//! A client that pipelines publishes sends them in bursts, and a connection reads a burst at
//! once. Queued one by one, the first write of a burst wakes an idle write lane, which takes
//! what has arrived so far: a batch of a few writes commits, and the rest of the burst waits
//! for it. Queued together, the whole burst commits in one batch.

use std::future::Future;
use std::sync::Arc;

use tokio::time::Instant;

use super::coalesce::Job;
use super::write_lane::WriteResult;
use super::write_lanes::WriteLanes;
use super::{Error, OwnedWrite, Owner, Revision, Write};

/// Writes gathered by [`WriteBatch::add`] and queued by [`WriteBatch::submit`]. Dropping a
/// batch without submitting it fails its writes with [`Error::Closed`].
pub struct WriteBatch {
    writes: Arc<WriteLanes>,
    /// Per write lane, in the order added.
    lanes: Vec<Vec<Job<OwnedWrite, WriteResult>>>,
}

impl WriteBatch {
    pub(super) fn new(writes: Arc<WriteLanes>) -> Self {
        let lanes = (0..writes.count()).map(|_| Vec::new()).collect();
        Self { writes, lanes }
    }

    /// Adds a write, as [`super::Store::write_as`] would make it. The returned future resolves once
    /// the write is committed (or refused, or failed); it never resolves before
    /// [`WriteBatch::submit`]. The usual deadline runs from now.
    pub fn add(
        &mut self,
        write: Write,
        owner: Owner,
    ) -> impl Future<Output = Result<(), Error>> + Send + use<> {
        let answer = self.add_owned(OwnedWrite::new(write, owner));
        async move { answer.await.map(drop) }
    }

    /// Like [`WriteBatch::add`], with where the write came from and its condition; resolves as
    /// [`super::Store::write_owned`] does.
    pub fn add_owned(
        &mut self,
        write: OwnedWrite,
    ) -> impl Future<Output = Result<Option<Revision>, Error>> + Send + use<> {
        let until = Instant::now() + self.writes.timeout();
        let lane = self.writes.lane_of(write.write.topic());
        let (job, answer) = Job::new(write);
        self.lanes[lane].push(job);
        async move {
            match tokio::time::timeout_at(until, answer).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(Error::Closed),
                Err(_) => Err(Error::timed_out()),
            }
        }
    }

    /// Queues every write added, each lane's writes in one piece. Waits while the queue is full
    /// (back-pressure), within the usual deadline; writes that do not get in by then fail.
    pub async fn submit(self) {
        let Self { writes, lanes } = self;
        for (lane, jobs) in lanes.into_iter().enumerate() {
            if jobs.is_empty() {
                continue;
            }
            // On timeout the jobs are dropped, so their writes fail rather than wait on.
            let queued = writes.lane(lane).submit(jobs);
            let _ = tokio::time::timeout(writes.timeout(), queued).await;
        }
    }
}
