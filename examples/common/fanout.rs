//! The fan-out measurement that examples/mqtt_bench.rs and examples/nats_bench.rs share, so that
//! an MQTT broker and raw NATS are measured the same way and their result lines can be put side
//! by side: the payload header, the measured window, the flow control between a publisher and
//! its slowest subscriber, the latency histogram, the end of a run (draining, merging the
//! reports) and the result line.
//!
//! Not an example of its own: Cargo only takes `examples/*.rs` and `examples/*/main.rs` as
//! examples, and each bench includes this file with `#[path]`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

/// How often the drain after the window looks at the delivery count again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Payload bytes used for the publish timestamp, the publisher and the sequence number.
pub const HEADER_BYTES: usize = 24;

/// A payload of `bytes` bytes (at least [`HEADER_BYTES`]) that starts with its header.
pub fn payload(bytes: usize, sent_ns: u64, publisher: usize, seq: u64) -> Vec<u8> {
    let mut payload = vec![b'x'; bytes];
    payload[..8].copy_from_slice(&sent_ns.to_be_bytes());
    payload[8..16].copy_from_slice(&(publisher as u64).to_be_bytes());
    payload[16..HEADER_BYTES].copy_from_slice(&seq.to_be_bytes());
    payload
}

/// What [`payload`] wrote: (publish time in ns since the run's clock started, publisher,
/// sequence number). `None` for anything shorter, such as a probe.
pub fn header(payload: &[u8]) -> Option<(u64, usize, u64)> {
    let field = |at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(
            payload.get(at..at + 8)?.try_into().ok()?,
        ))
    };
    Some((field(0)?, usize::try_from(field(8)?).ok()?, field(16)?))
}

/// The publish-time range whose messages are measured.
#[derive(Clone, Copy)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Window {
    /// The window that opens `warmup` seconds after `now_ns` and lasts `duration` seconds.
    pub fn after(now_ns: u64, warmup: f64, duration: f64) -> Self {
        let start_ns = now_ns + Duration::from_secs_f64(warmup).as_nanos() as u64;
        Window {
            start_ns,
            end_ns: start_ns + Duration::from_secs_f64(duration).as_nanos() as u64,
        }
    }

    pub fn contains(&self, ns: u64) -> bool {
        (self.start_ns..self.end_ns).contains(&ns)
    }

    pub fn seconds(&self) -> f64 {
        (self.end_ns - self.start_ns) as f64 / 1e9
    }
}

/// How far each subscriber has got in each publisher's sequence, so that a publisher can keep
/// at most `--max-outstanding` messages between its publish call and the slowest subscriber.
/// Counting by highest sequence number received (order per topic is kept) means a lost
/// at-most-once message does not hold its publisher back forever.
pub struct Progress {
    /// `[publisher][subscriber]`: one past the highest sequence number received.
    next: Vec<Vec<AtomicU64>>,
    /// One per publisher, notified when any subscriber advances in its sequence.
    advanced: Vec<Notify>,
}

impl Progress {
    pub fn new(publishers: usize, subscribers: usize) -> Self {
        Self {
            next: (0..publishers)
                .map(|_| (0..subscribers).map(|_| AtomicU64::new(0)).collect())
                .collect(),
            advanced: (0..publishers).map(|_| Notify::new()).collect(),
        }
    }

    pub fn record(&self, publisher: usize, subscriber: usize, seq: u64) {
        let Some(slot) = self.next.get(publisher).and_then(|p| p.get(subscriber)) else {
            return;
        };
        if slot.fetch_max(seq + 1, Ordering::Relaxed) <= seq {
            self.advanced[publisher].notify_one();
        }
    }

    fn slowest(&self, publisher: usize) -> u64 {
        let received = self.next[publisher]
            .iter()
            .map(|n| n.load(Ordering::Relaxed));
        received.min().unwrap_or(u64::MAX)
    }

    /// Waits until fewer than `max` of the first `sent` messages are outstanding; false if no
    /// subscriber advanced for `idle`.
    pub async fn wait_below(&self, publisher: usize, sent: u64, max: u64, idle: Duration) -> bool {
        loop {
            // notify_one keeps a permit when nobody waits: no wake-up is lost between the
            // check and the await.
            let advanced = self.advanced[publisher].notified();
            if sent.saturating_sub(self.slowest(publisher)) < max {
                return true;
            }
            if timeout(idle, advanced).await.is_err() {
                return false;
            }
        }
    }
}

pub fn latency_histogram() -> Histogram<u64> {
    // Microseconds, from 1 µs to an hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// One fan-out run's result, as the line both benches print.
pub struct Summary<'a> {
    pub name: &'a str,
    pub publishers: usize,
    pub subscribers: usize,
    pub payload_bytes: usize,
    pub max_outstanding: u64,
    pub window: Window,
    /// Messages published inside the window.
    pub published: u64,
    /// Their deliveries that arrived.
    pub delivered: u64,
    /// When the last of them arrived.
    pub last_receipt_ns: u64,
    pub latencies_us: &'a Histogram<u64>,
    /// Publishes never completed (acknowledged, or written out).
    pub unacked: u64,
    pub errors: usize,
}

impl Summary<'_> {
    pub fn expected(&self) -> u64 {
        self.published * self.subscribers as u64
    }

    /// `key=value` fields on one line, what bench scripts read. Deliveries per second count
    /// until the last measured delivery arrived (at least the window), so a system whose
    /// subscribers lag behind is not credited with the publish rate.
    pub fn line(&self) -> String {
        let window = self.window;
        let elapsed = ((self.last_receipt_ns.saturating_sub(window.start_ns)) as f64 / 1e9)
            .max(window.seconds());
        let percentile_ms = |q: f64| self.latencies_us.value_at_quantile(q) as f64 / 1000.0;
        let expected = self.expected();
        format!(
            "scenario={} publishers={} subscribers={} payload_bytes={} max_outstanding={} window_s={:.1} \
             published={} published_per_s={:.0} expected={expected} delivered={} \
             lost={} deliveries_per_s={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} unacked={} \
             errors={}",
            self.name,
            self.publishers,
            self.subscribers,
            self.payload_bytes,
            self.max_outstanding,
            window.seconds(),
            self.published,
            self.published as f64 / window.seconds(),
            self.delivered,
            expected.saturating_sub(self.delivered),
            self.delivered as f64 / elapsed,
            percentile_ms(0.50),
            percentile_ms(0.99),
            self.latencies_us.max() as f64 / 1000.0,
            self.unacked,
            self.errors,
        )
    }
}

/// What a fan-out subscriber task hands back.
pub struct SubscriberReport {
    pub latencies_us: Histogram<u64>,
    /// Measured deliveries it received.
    pub delivered: u64,
    /// When the last of them arrived.
    pub last_receipt_ns: u64,
    pub error: Option<String>,
}

/// What a fan-out publisher task hands back.
pub struct PublisherReport {
    /// Messages published.
    pub sent: u64,
    /// Those published inside the window.
    pub measured: u64,
    /// Those whose publish completed (acknowledged, or written out).
    pub completed: u64,
    pub error: Option<String>,
}

/// The settings of a fan-out run that its result line names.
pub struct Setup<'a> {
    pub name: &'a str,
    pub publishers: usize,
    pub subscribers: usize,
    pub payload_bytes: usize,
    pub max_outstanding: u64,
    pub window: Window,
    /// How long the drain waits for a new delivery before it gives up.
    pub idle_timeout: Duration,
}

/// The running tasks of a fan-out run and what they share.
pub struct Tasks<'a> {
    pub publishers: Vec<JoinHandle<PublisherReport>>,
    pub subscribers: Vec<JoinHandle<SubscriberReport>>,
    /// Measured deliveries, all subscribers together.
    pub delivered: &'a AtomicU64,
    /// Sending `true` tells the subscribers to stop.
    pub stop: &'a watch::Sender<bool>,
}

/// What [`finish`] found, for each bench's own verdict.
pub struct Outcome {
    /// Measured deliveries due: messages published in the window times subscribers.
    #[allow(dead_code)] // read by mqtt_bench only; each bench compiles this file on its own
    pub expected: u64,
    pub delivered: u64,
    pub unacked: u64,
    /// Connection errors, already printed.
    pub errors: usize,
}

/// The end of a fan-out run, the same in both benches: waits for the publishers, then drains
/// until every measured delivery arrived or none arrived for the idle timeout, stops the
/// subscribers, prints the result line on stdout and each connection error on stderr.
pub async fn finish(setup: Setup<'_>, tasks: Tasks<'_>) -> anyhow::Result<Outcome> {
    let Setup {
        name,
        publishers,
        subscribers,
        payload_bytes,
        max_outstanding,
        window,
        idle_timeout,
    } = setup;
    let mut publisher_reports = Vec::new();
    for task in tasks.publishers {
        publisher_reports.push(task.await?);
    }
    let measured_published: u64 = publisher_reports.iter().map(|p| p.measured).sum();
    let expected = measured_published * subscribers as u64;

    // Drain: until every measured delivery arrived, or none arrived for the idle timeout.
    let delivered = tasks.delivered;
    let mut last = (delivered.load(Ordering::Relaxed), Instant::now());
    while last.0 < expected && last.1.elapsed() < idle_timeout {
        sleep(POLL_INTERVAL).await;
        let now = delivered.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let _ = tasks.stop.send(true);
    let mut reports = Vec::new();
    for task in tasks.subscribers {
        reports.push(task.await?);
    }

    let mut latencies = latency_histogram();
    for report in &reports {
        latencies.add(&report.latencies_us)?;
    }
    let got: u64 = reports.iter().map(|r| r.delivered).sum();
    let errors: Vec<String> = reports
        .iter()
        .filter_map(|r| r.error.clone())
        .chain(publisher_reports.iter().filter_map(|p| p.error.clone()))
        .collect();
    let unacked: u64 = publisher_reports
        .iter()
        .map(|p| p.sent - p.completed.min(p.sent))
        .sum();
    let summary = Summary {
        name,
        publishers,
        subscribers,
        payload_bytes,
        max_outstanding,
        window,
        published: measured_published,
        delivered: got,
        last_receipt_ns: reports.iter().map(|r| r.last_receipt_ns).max().unwrap_or(0),
        latencies_us: &latencies,
        unacked,
        errors: errors.len(),
    };
    println!("{}", summary.line());
    for error in &errors {
        eprintln!("{name}: connection error: {error}");
    }
    Ok(Outcome {
        expected,
        delivered: got,
        unacked,
        errors: errors.len(),
    })
}
