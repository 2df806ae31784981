//! Slow subscribers: whether a client has taken nothing of what retaind has for it for
//! `--mqtt-write-timeout`.
//!
//! The clock runs while output waits for the client: bytes buffered for it or written and not
//! taken yet, or messages in its queue (also those its Receive Maximum holds back). It starts
//! again whenever the client takes something: bytes its TCP acknowledges (see
//! [`crate::tcp::Uptake`]; where that is not known, bytes the transport accepts) or a QoS 1/2
//! message it acknowledges. Measuring what the client takes, not how long one write blocks,
//! keeps the send buffers out of it: Linux grows a socket's send buffer to megabytes, and a
//! write blocks only once that is full, which at a few kB/s takes hours.
//!
//! The connection samples the clock every [`StallClock::interval`] while output waits, so a
//! stalled client is found within the timeout plus one interval.

use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::tcp::{Rehome, Taken, Uptake};

/// Samples per timeout: the clock is late by at most a tenth of the timeout...
const SAMPLES_PER_TIMEOUT: u32 = 10;
/// ...and by at most a second.
const MAX_INTERVAL: Duration = Duration::from_secs(1);
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Pure: the caller passes the time and what it sees.
#[derive(Debug)]
pub(super) struct StallClock {
    timeout: Duration,
    /// The most the client had taken at the last sample.
    taken: u64,
    /// Since when output has waited with nothing taken; `None` while nothing waits.
    since: Option<Instant>,
}

impl StallClock {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            taken: 0,
            since: None,
        }
    }

    /// How often to sample while output waits.
    pub fn interval(&self) -> Duration {
        (self.timeout / SAMPLES_PER_TIMEOUT).clamp(MIN_INTERVAL, MAX_INTERVAL)
    }

    /// Output waits from `now` on (something was written or queued); a running clock goes on.
    pub fn waiting(&mut self, now: Instant) {
        self.since.get_or_insert(now);
    }

    /// The client acknowledged a QoS 1/2 message: it is reading.
    pub fn acknowledged(&mut self, now: Instant) {
        if let Some(since) = &mut self.since {
            *since = now;
        }
    }

    /// One sample: the client has `taken` bytes so far, and output `waits` or not. True when
    /// output has waited the whole timeout with nothing taken.
    pub fn stalled(&mut self, now: Instant, taken: u64, waits: bool) -> bool {
        let moved = taken > self.taken;
        self.taken = self.taken.max(taken);
        if !waits {
            self.since = None;
            return false;
        }
        let since = self.since.get_or_insert(now);
        if moved {
            *since = now;
        }
        now.saturating_duration_since(*since) >= self.timeout
    }

    #[cfg(test)]
    fn running(&self) -> bool {
        self.since.is_some()
    }
}

/// A connection's stall clock with what it samples: the count of taken bytes, and when.
pub(super) struct Watch {
    clock: StallClock,
    gauge: Gauge,
    /// When to sample next; `None` while no output waits.
    next: Option<Instant>,
}

/// The client took nothing of the waiting output for the whole timeout.
#[derive(Debug)]
pub(super) struct Stalled;

impl Watch {
    pub fn new(timeout: Duration, gauge: Gauge) -> Self {
        Self {
            clock: StallClock::new(timeout),
            gauge,
            next: None,
        }
    }

    /// Output waits from now on (something is written or queued); sample until it is taken.
    pub fn waiting(&mut self) {
        let now = Instant::now();
        self.clock.waiting(now);
        self.next.get_or_insert(now + self.clock.interval());
    }

    /// The client acknowledged a QoS 1/2 message.
    pub fn acknowledged(&mut self) {
        self.clock.acknowledged(Instant::now());
    }

    pub fn next_sample(&self) -> Option<Instant> {
        self.next
    }

    pub fn due(&self) -> bool {
        self.next.is_some_and(|at| at <= Instant::now())
    }

    /// Samples the clock. `buffered`: output waits before the socket (in our write buffer or
    /// the session's queue); what waits in the socket the gauge knows.
    pub fn sample(&mut self, buffered: bool) -> Result<(), Stalled> {
        let now = Instant::now();
        let taken = self.gauge.taken();
        let waits = buffered || taken.outstanding > 0;
        if self.clock.stalled(now, taken.bytes, waits) {
            return Err(Stalled);
        }
        self.next = waits.then(|| now + self.clock.interval());
        Ok(())
    }

    /// Runs a write that blocks while the client takes nothing, sampling meanwhile: how long
    /// one write waits does not matter, only whether the client takes anything. Given up
    /// (`Ok(None)`) once `stop` is cancelled: a connection taken over, drained or stopped
    /// must not wait for a client that reads nothing to be found stalled first.
    pub async fn drive<F: Future>(
        &mut self,
        write: F,
        stop: &CancellationToken,
    ) -> Result<Option<F::Output>, Stalled> {
        let mut write = pin!(write);
        // Most writes are done at once: no timer for them.
        if let Some(done) = write.as_mut().now_or_never() {
            return Ok(Some(done));
        }
        self.waiting();
        loop {
            let at = *self
                .next
                .get_or_insert_with(|| Instant::now() + self.clock.interval());
            tokio::select! {
                biased;
                done = write.as_mut() => return Ok(Some(done)),
                () = stop.cancelled() => return Ok(None),
                () = tokio::time::sleep_until(at) => self.sample(true)?,
            }
        }
    }

    /// Whether everything written has been taken, as far as the gauge knows.
    pub fn all_taken(&self) -> bool {
        self.gauge.taken().outstanding == 0
    }

    /// Makes the TCP connection end with a reset when it is dropped; false when there is no
    /// TCP socket to reset.
    pub fn reset_on_close(&self) -> bool {
        match &self.gauge {
            Gauge::Tcp(uptake) => {
                uptake.reset_on_close();
                true
            }
            Gauge::Transport(_) => false,
        }
    }
}

/// Where the count of taken bytes comes from for one connection.
pub(super) enum Gauge {
    /// The TCP socket under the transport (plain, TLS or WebSocket).
    Tcp(Uptake),
    /// Bytes the transport accepted, for a stream without one.
    Transport(Arc<AtomicU64>),
}

impl Gauge {
    pub fn taken(&self) -> Taken {
        match self {
            Gauge::Tcp(uptake) => uptake.taken(),
            Gauge::Transport(accepted) => Taken {
                bytes: accepted.load(Ordering::Acquire),
                outstanding: 0,
            },
        }
    }
}

/// A stream that counts the bytes it accepts, for [`Gauge::Transport`].
pub(super) struct Counted<T> {
    io: T,
    accepted: Arc<AtomicU64>,
}

impl<T> Counted<T> {
    pub fn new(io: T) -> Self {
        Self {
            io,
            accepted: Arc::default(),
        }
    }

    pub fn accepted(&self) -> Arc<AtomicU64> {
        self.accepted.clone()
    }

    fn count(&self, written: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = written {
            self.accepted.fetch_add(*n as u64, Ordering::AcqRel);
        }
    }
}

impl<T: Rehome> Rehome for Counted<T> {
    fn rehome(&mut self) -> std::io::Result<()> {
        self.io.rehome()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.count(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.count(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn nothing_taken_for_the_timeout_while_output_waits_is_a_stall() {
        let t0 = Instant::now();
        let mut c = StallClock::new(T);
        c.waiting(t0);
        assert!(!c.stalled(t0 + secs(29), 0, true));
        assert!(c.stalled(t0 + secs(30), 0, true));
    }

    #[test]
    fn taking_anything_starts_the_clock_again() {
        let t0 = Instant::now();
        let mut c = StallClock::new(T);
        c.waiting(t0);
        assert!(!c.stalled(t0 + secs(20), 100, true));
        assert!(!c.stalled(t0 + secs(49), 100, true));
        assert!(c.stalled(t0 + secs(50), 100, true));
    }

    #[test]
    fn an_acknowledged_message_is_progress_too() {
        let t0 = Instant::now();
        let mut c = StallClock::new(T);
        c.waiting(t0);
        c.acknowledged(t0 + secs(20));
        assert!(!c.stalled(t0 + secs(49), 0, true));
        assert!(c.stalled(t0 + secs(50), 0, true));
    }

    #[test]
    fn the_clock_runs_only_while_output_waits() {
        let t0 = Instant::now();
        let mut c = StallClock::new(T);
        // Idle for an hour: nothing waited, so nothing was left untaken.
        assert!(!c.stalled(t0, 0, false));
        assert!(!c.running());
        c.waiting(t0 + secs(3600));
        assert!(!c.stalled(t0 + secs(3629), 0, true));
        assert!(c.stalled(t0 + secs(3630), 0, true));
        // Everything taken: the clock stops, and starts afresh with the next output.
        assert!(!c.stalled(t0 + secs(3631), 500, false));
        c.waiting(t0 + secs(4000));
        assert!(!c.stalled(t0 + secs(4029), 500, true));
    }

    #[test]
    fn a_count_that_goes_back_is_not_progress() {
        let t0 = Instant::now();
        let mut c = StallClock::new(T);
        c.waiting(t0);
        assert!(!c.stalled(t0 + secs(1), 1000, true));
        assert!(!c.stalled(t0 + secs(2), 900, true));
        assert!(c.stalled(t0 + secs(31), 1000, true));
    }

    #[test]
    fn samples_come_every_tenth_of_the_timeout_and_at_least_every_second() {
        assert_eq!(StallClock::new(secs(30)).interval(), secs(1));
        assert_eq!(
            StallClock::new(secs(2)).interval(),
            Duration::from_millis(200)
        );
        assert_eq!(
            StallClock::new(Duration::from_millis(1)).interval(),
            MIN_INTERVAL
        );
    }
}
