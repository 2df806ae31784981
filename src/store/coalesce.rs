//! Turns many concurrent single requests into few batched ones.
//!
//! The dispatcher waits for a free slot *before* it takes work off the queue. While every slot
//! is busy, requests pile up in the queue, and the next batch takes them all at once. A lone
//! request therefore goes out immediately (no timer adds latency), and under load each round
//! trip to the database carries as much work as has arrived meanwhile. With one slot this is
//! group commit; with several it is a read coalescer.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

#[derive(Debug, Clone, Copy)]
pub(crate) struct CoalesceLimits {
    /// Requests waiting for a batch; callers wait (back-pressure) when it is full.
    pub queue: usize,
    /// Most requests in one batch.
    pub max_batch: usize,
    /// Batches in flight at once.
    pub concurrency: usize,
}

/// One request and where its answer goes.
pub(crate) struct Job<Req, Resp> {
    req: Req,
    reply: oneshot::Sender<Resp>,
}

impl<Req, Resp> Job<Req, Resp> {
    /// A request to [`Coalescer::submit`], and the receiver of its answer (which fails if the
    /// job is dropped unanswered).
    pub(crate) fn new(req: Req) -> (Self, oneshot::Receiver<Resp>) {
        let (reply, answer) = oneshot::channel();
        (Self { req, reply }, answer)
    }
}

/// What the queue carries: a single request, or requests submitted together, which are never
/// split over two batches unless together they exceed the batch limit.
enum Queued<Req, Resp> {
    One(Job<Req, Resp>),
    Many(Vec<Job<Req, Resp>>),
}

impl<Req, Resp> Queued<Req, Resp> {
    fn append_to(self, jobs: &mut VecDeque<Job<Req, Resp>>) {
        match self {
            Self::One(job) => jobs.push_back(job),
            Self::Many(many) => jobs.extend(many),
        }
    }
}

pub(crate) struct Coalescer<Req, Resp> {
    tx: mpsc::Sender<Queued<Req, Resp>>,
}

impl<Req, Resp> Clone for Coalescer<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Coalescer<Req, Resp> {
    /// Starts the dispatcher. `run` must answer a batch with one response per request, in order.
    /// The dispatcher stops, after finishing the batches in flight, when the last handle drops.
    pub(crate) fn spawn<F, Fut>(limits: CoalesceLimits, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Resp>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Queued<Req, Resp>>(limits.queue);
        let slots = Arc::new(Semaphore::new(limits.concurrency));
        tokio::spawn(async move {
            // Jobs taken off the queue and not yet in a batch: what a group beyond the batch
            // limit left over.
            let mut waiting = VecDeque::new();
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                if waiting.is_empty() {
                    let Some(first) = rx.recv().await else {
                        break;
                    };
                    first.append_to(&mut waiting);
                }
                while waiting.len() < limits.max_batch {
                    match rx.try_recv() {
                        Ok(queued) => queued.append_to(&mut waiting),
                        Err(_) => break,
                    }
                }
                let n = waiting.len().min(limits.max_batch);
                let (reqs, replies): (Vec<Req>, Vec<_>) =
                    waiting.drain(..n).map(|job| (job.req, job.reply)).unzip();
                let batch = run(reqs);
                tokio::spawn(async move {
                    let resps = batch.await;
                    debug_assert_eq!(resps.len(), replies.len());
                    for (reply, resp) in replies.into_iter().zip(resps) {
                        // The caller may have given up (timed out); its answer is not needed.
                        let _ = reply.send(resp);
                    }
                    drop(slot);
                });
            }
        });
        Self { tx }
    }

    /// Queues one request and waits for its answer; `None` when the dispatcher has stopped.
    pub(crate) async fn call(&self, req: Req) -> Option<Resp> {
        let (job, answer) = Job::new(req);
        self.tx.send(Queued::One(job)).await.ok()?;
        answer.await.ok()
    }

    /// Queues requests together: a dispatcher that is waiting for work sees all of them at
    /// once, so requests that arrive in one burst (one client's pipelined publishes) share a
    /// batch rather than the first few going out alone. When the dispatcher has stopped, the
    /// jobs are dropped and their receivers fail.
    pub(crate) async fn submit(&self, jobs: Vec<Job<Req, Resp>>) {
        if !jobs.is_empty() {
            let _ = self.tx.send(Queued::Many(jobs)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::sync::Notify;

    #[tokio::test]
    async fn requests_arriving_during_a_batch_form_the_next_batch() {
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let gate = Arc::new(Notify::new());
        let (b, g) = (batches.clone(), gate.clone());
        let c = Coalescer::spawn(
            CoalesceLimits {
                queue: 64,
                max_batch: 64,
                concurrency: 1,
            },
            move |reqs: Vec<u32>| {
                let (b, g) = (b.clone(), g.clone());
                async move {
                    if reqs == [0] {
                        g.notified().await; // hold the only slot until the rest are queued
                    }
                    b.lock().unwrap().push(reqs.clone());
                    reqs.iter().map(|r| r * 10).collect::<Vec<_>>()
                }
            },
        );
        let first = tokio::spawn({
            let c = c.clone();
            async move { c.call(0).await }
        });
        tokio::task::yield_now().await;
        let rest: Vec<_> = (1..=5)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.call(i).await })
            })
            .collect();
        while c.tx.capacity() > 64 - 5 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        assert_eq!(first.await.unwrap(), Some(0));
        for (i, h) in rest.into_iter().enumerate() {
            assert_eq!(h.await.unwrap(), Some((i as u32 + 1) * 10));
        }
        assert_eq!(*batches.lock().unwrap(), vec![vec![0], vec![1, 2, 3, 4, 5]]);
    }

    #[tokio::test]
    async fn batches_never_exceed_the_limit() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let s = sizes.clone();
        let c = Coalescer::spawn(
            CoalesceLimits {
                queue: 100,
                max_batch: 3,
                concurrency: 1,
            },
            move |reqs: Vec<u8>| {
                s.lock().unwrap().push(reqs.len());
                async move { reqs }
            },
        );
        let calls: Vec<_> = (0..10u8)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.call(i).await })
            })
            .collect();
        for (i, h) in calls.into_iter().enumerate() {
            assert_eq!(h.await.unwrap(), Some(i as u8));
        }
        let sizes = sizes.lock().unwrap();
        assert!(sizes.iter().all(|&n| (1..=3).contains(&n)), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 10);
    }

    type Batches = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A coalescer that records its batches and answers each request with itself. Its queue
    /// holds two entries: requests queued one by one would fill it and wait, letting the
    /// dispatcher take the first two alone.
    fn recording(max_batch: usize) -> (Coalescer<u32, u32>, Batches) {
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let b = batches.clone();
        let c = Coalescer::spawn(
            CoalesceLimits {
                queue: 2,
                max_batch,
                concurrency: 1,
            },
            move |reqs: Vec<u32>| {
                b.lock().unwrap().push(reqs.clone());
                async move { reqs }
            },
        );
        (c, batches)
    }

    /// Submits requests 1..=n together, checks each is answered, and returns the batches.
    async fn submit_together(max_batch: usize, n: u32) -> Vec<Vec<u32>> {
        let (c, batches) = recording(max_batch);
        let (jobs, answers): (Vec<_>, Vec<_>) = (1..=n).map(Job::new).unzip();
        c.submit(jobs).await;
        for (i, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.await.unwrap(), i as u32 + 1);
        }
        batches.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn requests_submitted_together_share_a_batch_even_when_the_dispatcher_is_idle() {
        assert_eq!(submit_together(64, 5).await, vec![vec![1, 2, 3, 4, 5]]);
    }

    #[tokio::test]
    async fn a_submission_over_the_batch_limit_splits_at_the_limit_in_order() {
        assert_eq!(
            submit_together(3, 7).await,
            vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]]
        );
    }
}
