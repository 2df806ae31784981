//! Raw NATS fan-out: the workload of examples/mqtt_bench.rs's fan-out scenarios on core NATS,
//! with async-nats alone. `bench/cluster.sh` runs it against the nats-server its retaind nodes
//! route through, as the ceiling of what that server and client library carry on the machine.
//!
//! ```sh
//! cargo run --release --example nats_bench -- --url nats://127.0.0.1:4222 --duration 10
//! ```
//!
//! `--publishers` connections (default 4) publish `--payload-bytes` (256) payloads to
//! `PREFIX.p<i>` as fast as flow control lets them, for `--warmup` + `--duration` seconds;
//! `--subscribers` connections (4) subscribe to `PREFIX.>`, each flushed (so the server has the
//! subscription) before the first publish; every message is delivered 4 times. Payloads,
//! measured window, latency (publish call → receipt, one clock), flow control
//! (`--max-outstanding`, `--rate`) and the result line are examples/common/fanout.rs's, the
//! same as mqtt_bench's, so the lines can be compared field by field.
//!
//! Core NATS has no QoS: delivery is at most once, like MQTT QoS 0, so the line is one
//! `scenario=nats-fanout` line; a publish is complete once the client has written it and a
//! flush (PING/PONG) has come back. Lost deliveries are reported, not a failure (a subscriber
//! too slow for its client's buffer loses messages, counted as slow-consumer events on
//! stderr). Exit status 1 when a connection failed or nothing arrived.

#[path = "common/fanout.rs"]
mod fanout;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use async_nats::{Client, ConnectOptions, Event, Subject};
use bytes::Bytes;
use clap::Parser;
use fanout::{
    HEADER_BYTES, Progress, PublisherReport, Setup, SubscriberReport, Tasks, Window, header,
    latency_histogram,
};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout};

/// Connecting, and each flush, must come within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(about = "Fan-out benchmark on raw NATS (core pub/sub, async-nats)")]
struct Args {
    /// NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    url: String,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured seconds of publishing before the measured window.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Publishers, one connection each.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Subscribers, one connection each, to `PREFIX.>`.
    #[arg(long, default_value_t = 4)]
    subscribers: usize,
    /// Payload size in bytes (at least 24: timestamp, publisher and sequence number).
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Messages per second per publisher; 0 publishes as fast as flow control allows.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Messages a publisher may have published that the slowest subscriber has not yet
    /// received (0: no limit), as mqtt_bench's option of the same name.
    #[arg(long, default_value_t = 250)]
    max_outstanding: u64,
    /// Subject prefix; the default is unique to this run.
    #[arg(long)]
    prefix: Option<String>,
    /// Seconds without a new delivery after which waiting for more gives up.
    #[arg(long, default_value_t = 10.0)]
    idle_timeout: f64,
}

/// What all tasks share: the clock the payload timestamps count from.
struct Run {
    args: Args,
    t0: Instant,
    prefix: String,
    /// Slow-consumer events over every connection: deliveries the client dropped.
    slow_consumer_events: Arc<AtomicU64>,
}

impl Run {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn instant_at(&self, ns: u64) -> Instant {
        self.t0 + Duration::from_nanos(ns)
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.args.idle_timeout)
    }

    async fn connect(&self, role: &str) -> anyhow::Result<Client> {
        let slow = self.slow_consumer_events.clone();
        let options = ConnectOptions::new()
            .name(format!("nats-bench {role}"))
            .connection_timeout(HANDSHAKE_TIMEOUT)
            .event_callback(move |event| {
                let slow = slow.clone();
                async move {
                    if let Event::SlowConsumer(_) = event {
                        slow.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        options
            .connect(self.args.url.as_str())
            .await
            .with_context(|| format!("{role}: connecting to {}", self.args.url))
    }
}

/// One subscriber: records the latency of each measured delivery until told to stop.
async fn receive(
    run: Arc<Run>,
    index: usize,
    mut messages: async_nats::Subscriber,
    window: Window,
    delivered: Arc<AtomicU64>,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> SubscriberReport {
    let mut report = SubscriberReport {
        latencies_us: latency_histogram(),
        delivered: 0,
        last_receipt_ns: 0,
        error: None,
    };
    loop {
        let message = tokio::select! {
            _ = stop.changed() => break,
            message = messages.next() => message,
        };
        let Some(message) = message else {
            report.error = Some(format!("subscriber {index}: subscription ended"));
            break;
        };
        let now = run.now_ns();
        let Some((sent, publisher, seq)) = header(&message.payload) else {
            continue;
        };
        progress.record(publisher, index, seq);
        if window.contains(sent) {
            let latency_us = (now.saturating_sub(sent) / 1000).max(1);
            report.latencies_us.saturating_record(latency_us);
            report.delivered += 1;
            report.last_receipt_ns = now;
            delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
    report
}

/// One publisher: publishes until the window ends, then flushes.
async fn publish(
    run: Arc<Run>,
    index: usize,
    client: Client,
    window: Window,
    progress: Arc<Progress>,
) -> PublisherReport {
    // Bytes inside, so the clone for each publish is not a copy.
    let subject = Subject::from(format!("{}.p{index}", run.prefix));
    let (rate, max_outstanding) = (run.args.rate, run.args.max_outstanding);
    let started = Instant::now();
    let end = run.instant_at(window.end_ns);
    let (mut sent, mut measured) = (0u64, 0u64);
    let mut error = None;
    while Instant::now() < end {
        if rate > 0 {
            let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
            if due >= end {
                sleep_until(end.into()).await;
                break;
            }
            sleep_until(due.into()).await;
        }
        if max_outstanding > 0
            && !progress
                .wait_below(index, sent, max_outstanding, run.idle_timeout())
                .await
        {
            error = Some(format!(
                "no subscriber received anything for {:?}",
                run.idle_timeout()
            ));
            break;
        }
        let payload = fanout::payload(run.args.payload_bytes, run.now_ns(), index, sent);
        let in_window = header(&payload).is_some_and(|(ts, _, _)| window.contains(ts));
        if let Err(e) = client.publish(subject.clone(), Bytes::from(payload)).await {
            error = Some(format!("publish: {e}"));
            break;
        }
        sent += 1;
        measured += u64::from(in_window);
    }
    // What the client still buffers is written before the server's PONG comes back.
    let completed = match timeout(run.idle_timeout(), client.flush()).await {
        Ok(Ok(())) => sent,
        Ok(Err(e)) => {
            error.get_or_insert(format!("flush: {e}"));
            0
        }
        Err(_) => {
            error.get_or_insert(format!("flush: no answer within {:?}", run.idle_timeout()));
            0
        }
    };
    PublisherReport {
        sent,
        measured,
        completed,
        error,
    }
}

async fn fanout(run: Arc<Run>) -> anyhow::Result<bool> {
    let args = &run.args;
    let name = "nats-fanout";
    let filter = format!("{}.>", run.prefix);
    let (stop_tx, stop_rx) = watch::channel(false);
    let delivered = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Progress::new(args.publishers, args.subscribers));

    // Subscribers first; a flush returns once the server has processed the SUB before it.
    let mut subscribers = Vec::new();
    for i in 0..args.subscribers {
        let client = run.connect(&format!("sub{i}")).await?;
        let messages = client.subscribe(filter.clone()).await?;
        timeout(HANDSHAKE_TIMEOUT, client.flush())
            .await
            .context("subscriber flush timed out")??;
        subscribers.push((client, messages));
    }
    let mut publishers = Vec::new();
    for i in 0..args.publishers {
        publishers.push(run.connect(&format!("pub{i}")).await?);
    }

    let window = Window::after(run.now_ns(), args.warmup, args.duration);
    let subscriber_tasks: Vec<_> = subscribers
        .into_iter()
        .enumerate()
        .map(|(index, (client, messages))| {
            let task = receive(
                run.clone(),
                index,
                messages,
                window,
                delivered.clone(),
                progress.clone(),
                stop_rx.clone(),
            );
            tokio::spawn(async move {
                let report = task.await;
                drop(client);
                report
            })
        })
        .collect();
    let publisher_tasks: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(index, client)| {
            tokio::spawn(publish(
                run.clone(),
                index,
                client,
                window,
                progress.clone(),
            ))
        })
        .collect();
    eprintln!(
        "{name}: {} publishers, {} subscribers to {filter}, {:.0} s warm-up + {:.0} s measured, \
         at most {} outstanding per publisher",
        args.publishers, args.subscribers, args.warmup, args.duration, args.max_outstanding
    );

    let outcome = fanout::finish(
        Setup {
            name,
            publishers: args.publishers,
            subscribers: args.subscribers,
            payload_bytes: args.payload_bytes,
            max_outstanding: args.max_outstanding,
            window,
            idle_timeout: run.idle_timeout(),
        },
        Tasks {
            publishers: publisher_tasks,
            subscribers: subscriber_tasks,
            delivered: &delivered,
            stop: &stop_tx,
        },
    )
    .await?;
    let slow = run.slow_consumer_events.load(Ordering::Relaxed);
    if slow > 0 {
        eprintln!("{name}: {slow} slow-consumer events: the client dropped deliveries");
    }
    Ok(outcome.errors == 0 && outcome.unacked == 0 && outcome.delivered > 0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.payload_bytes >= HEADER_BYTES,
        "--payload-bytes must be at least {HEADER_BYTES}"
    );
    ensure!(
        args.duration > 0.0 && args.warmup >= 0.0,
        "--duration must be > 0, --warmup >= 0"
    );
    let unique = format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis()
    );
    let run = Arc::new(Run {
        prefix: args
            .prefix
            .clone()
            .unwrap_or_else(|| format!("nats-bench.{unique}")),
        t0: Instant::now(),
        slow_consumer_events: Arc::new(AtomicU64::new(0)),
        args,
    });
    if !fanout(run).await? {
        std::process::exit(1);
    }
    Ok(())
}
