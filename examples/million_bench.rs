//! Load generator for issue 18, "a million retained messages": stores a large retained set over
//! MQTT, delivers it to `#` subscribers, measures other clients' publish latency meanwhile, walks
//! the HTTP listing deep into the set and times a restart. Works against any MQTT broker
//! (`--host`, `--port`); `list` needs retaind's HTTP API. `bench/million.sh` runs it against
//! retaind (Postgres and SQLite) and against Mosquitto in one run.
//!
//! ```sh
//! cargo run --release --example million_bench -- store --port 1883 --clients 16 --messages 1000000
//! cargo run --release --example million_bench -- deliver --port 1883 --subscribers 100 --expect 1000000
//! ```
//!
//! Every subcommand prints ONE machine-readable line on stdout (`scenario=<name> key=value ...`)
//! and its progress on stderr, and exits 1 when the scenario failed.
//!
//! # Topic layout
//! Message n (0 ≤ n < M) has the topic `<prefix>/d<n / 100>/s<n % 100>` (prefix `m`, so
//! `m/d1234/s56`): a fleet of M/100 devices with 100 metrics each. Its payload is
//! `--payload-bytes` (256) bytes, starting with n in decimal. Every 10th message (n % 10 == 0)
//! carries one MQTT 5 user property `k` = `v<n>`, so that part of the set has properties to
//! store and deliver. The filter `m/+/s42` matches exactly 1% of the set, spread evenly over it.
//!
//! # Subcommands
//! - `store`: `--clients` MQTT 5 clients (clean start) store messages N0..N0+M at QoS 1 with the
//!   retain flag, client i taking every C-th number from N0+i, each with `--inflight` publishes
//!   in flight (rumqttc's outgoing window). Every PUBACK is awaited; one with a failure reason
//!   code is an error. This is the durable-store rate of a fleet (or of one device with
//!   `--clients 1`): a retaind PUBACK means the message is committed to its database.
//! - `deliver`: `--subscribers` MQTT 3.1.1 clients connect, then all subscribe to `--filter` at
//!   once, and each counts the distinct retained messages of the layout above (the RETAIN flag
//!   set; live messages and other topics such as `probe/` are ignored) until it has all
//!   `--expect`. A subscriber is cut short when its connection fails or nothing new arrives for
//!   `--idle-timeout`. This is the complaint users file against brokers with big retained sets: a
//!   new wildcard subscriber is slow, stalls others, or does not get everything. With
//!   `--probe-rate`, the `probe` below runs during the whole delivery, on a thread and a tokio
//!   runtime of its own, as another device would (in the subscribers' runtime, its timings
//!   would include their tasks' turns). With `--idle-subscribers` the subscribers run on
//!   `SCHED_IDLE` threads, as if on another machine: the broker's own threads and the probe get
//!   a core before them. With `--websocket-port` (retaind's HTTP port) the subscribers connect
//!   over MQTT over WebSocket; the probe stays on TCP.
//! - `probe`: one MQTT 3.1.1 client publishes a 256-byte QoS 1 retained message to
//!   `probe/<i % 100>` `--rate` times a second on a fixed schedule, one at a time (a tick that
//!   finds the previous publish unacknowledged is skipped and counted), and records each publish
//!   → PUBACK time: "other clients' publish latency", idle and during a delivery. It also
//!   records how late its own thread ran each tick (`probe_late_p99_ms`): where the load
//!   generator shares the machine's cores with the broker, every wake-up of the probe,
//!   the PUBACK's included, waits about that long for a core, whatever the broker does.
//! - `list`: HTTP ListRetainedMessages (`GET /retainedMessage?maxResults=&nextToken=
//!   &topicFilter=`): walks pages 1..P following `nextToken`, then times page 1 and page P
//!   alternately. A keyset listing answers page P as fast as page 1; an offset listing does not.
//! - `ready`: retries connecting every 10 ms until a CONNACK, subscribes to one topic and waits
//!   for its retained message; both times count from `--since-epoch-ms` (when the script started
//!   the broker). With `--readyz-url`, HTTP `/readyz` is polled every 10 ms meanwhile until 200.
//!   A broker that loads its whole set into memory at start is ready late; one that streams it
//!   from its store is ready at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as ConnectReturnCode5, Packet as Packet5, PubAckReason, PublishProperties,
};
use rumqttc::v5::{
    AsyncClient as AsyncClient5, Event as Event5, EventLoop as EventLoop5,
    MqttOptions as MqttOptions5,
};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
    SubscribeReasonCode,
};
use tokio::sync::{Barrier, oneshot, watch};
use tokio::time::{MissedTickBehavior, sleep, timeout};

/// Connecting and CONNACK (outside `ready`), and a SUBACK, must each come within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alive of every client: long enough that a busy load generator never misses a ping.
const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// How often `store` and `deliver` print progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// How often `ready` retries a refused connection and polls `/readyz`.
const READY_RETRY: Duration = Duration::from_millis(10);
/// Distinct probe topics (`probe/0` … `probe/99`).
const PROBE_TOPICS: u64 = 100;

#[derive(Debug, Parser)]
#[command(about = "A million retained messages: store, deliver, probe, list and ready scenarios")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Store retained messages at QoS 1 from several MQTT 5 clients, every PUBACK awaited.
    Store(StoreArgs),
    /// Deliver the retained set to new subscribers that subscribe at once.
    Deliver(DeliverArgs),
    /// Publish retained QoS 1 messages at a fixed rate and time each PUBACK.
    Probe(ProbeArgs),
    /// Time page 1 and page P of HTTP ListRetainedMessages.
    List(ListArgs),
    /// Time a restarted broker's CONNACK and first retained message.
    Ready(ReadyArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct Broker {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker MQTT port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Connect over MQTT over WebSocket to `ws://host:PORT/mqtt` instead (set by `deliver
    /// --websocket-port` for its subscribers).
    #[arg(skip)]
    websocket_port: Option<u16>,
}

#[derive(Debug, clap::Args)]
struct StoreArgs {
    #[command(flatten)]
    broker: Broker,
    /// Clients storing at once; client i stores every C-th message from N0 + i.
    #[arg(long, default_value_t = 16)]
    clients: u64,
    /// QoS 1 publishes each client keeps unacknowledged at most.
    #[arg(long, default_value_t = 100)]
    inflight: u16,
    /// Messages to store.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Number of the first message (N0).
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// First topic level.
    #[arg(long, default_value = "m")]
    prefix: String,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Seconds without a PUBACK after which waiting for the rest gives up.
    #[arg(long, default_value_t = 30.0)]
    idle_timeout: f64,
}

#[derive(Debug, clap::Args)]
struct DeliverArgs {
    #[command(flatten)]
    broker: Broker,
    /// Subscribers, each with its own connection and client id.
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// The filter every subscriber subscribes to.
    #[arg(long, default_value = "#")]
    filter: String,
    /// Retained messages of the layout each subscriber must receive (numbers 0..M).
    #[arg(long, default_value_t = 1_000_000)]
    expect: usize,
    /// QoS of the subscriptions (0, 1 or 2).
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// First topic level of the layout.
    #[arg(long, default_value = "m")]
    prefix: String,
    /// Probe publishes per second during the delivery (0: no probe).
    #[arg(long, default_value_t = 0)]
    probe_rate: u32,
    /// Seconds without a new retained message after which a subscriber is cut short.
    #[arg(long, default_value_t = 30.0)]
    idle_timeout: f64,
    /// Run the subscribers on threads of their own at `SCHED_IDLE` (Linux): as if they were
    /// on another machine, they take only the CPU that neither the broker nor the probe wants.
    #[arg(long)]
    idle_subscribers: bool,
    /// The subscribers connect over MQTT over WebSocket, to `ws://host:PORT/mqtt` (retaind's
    /// HTTP port); the probe stays on MQTT over TCP.
    #[arg(long)]
    websocket_port: Option<u16>,
}

#[derive(Debug, clap::Args)]
struct ProbeArgs {
    #[command(flatten)]
    broker: Broker,
    /// Publishes per second.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// How long to publish.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    /// retaind's HTTP API, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// The deep page to time (P); fails when the listing has fewer pages.
    #[arg(long, default_value_t = 5000)]
    pages: usize,
    /// topicFilter of the listing (none: every topic).
    #[arg(long)]
    filter: Option<String>,
    /// maxResults of each page (1–200).
    #[arg(long, default_value_t = 200)]
    page_size: u32,
    /// Timed requests of page 1 and of page P each, alternating. Enough that a p99 is not one
    /// or two slow answers (with 200, it was the second slowest, and moved by 0.6× between runs).
    #[arg(long, default_value_t = 1000)]
    repeat: usize,
}

#[derive(Debug, clap::Args)]
struct ReadyArgs {
    #[command(flatten)]
    broker: Broker,
    /// The topic whose retained message is waited for.
    #[arg(long, default_value = "m/d0/s0")]
    topic: String,
    /// Epoch milliseconds the times count from: when the broker process was started.
    #[arg(long)]
    since_epoch_ms: u64,
    /// Seconds to wait for both at most.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// retaind's `/readyz` URL, polled every 10 ms meanwhile until it answers 200.
    #[arg(long)]
    readyz_url: Option<String>,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let passed = match Cli::parse().command {
        Command::Store(args) => store(args).await,
        Command::Deliver(args) => deliver(args).await,
        Command::Probe(args) => probe_command(args).await,
        Command::List(args) => list(args).await,
        Command::Ready(args) => ready(args).await,
    }?;
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}

/// A client id unique to this process, so that runs never take over each other's sessions.
fn client_id(role: &str) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("million-{}-{ms}-{role}", std::process::id())
}

fn latency_histogram() -> Histogram<u64> {
    // Microseconds, from 1 µs to an hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn record_us(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let us = u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    histogram.saturating_record(us);
}

fn ms_at(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

// --- the layout ---------------------------------------------------------------------------------

fn topic_of(prefix: &str, n: u64) -> String {
    format!("{prefix}/d{}/s{}", n / 100, n % 100)
}

/// The number n of a topic of the layout, or `None` for any other topic.
fn number_of(prefix: &[u8], topic: &[u8]) -> Option<u64> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix(b"/d")?;
    let slash = rest.iter().position(|&b| b == b'/')?;
    let device = decimal(&rest[..slash])?;
    let metric = decimal(rest[slash..].strip_prefix(b"/s")?)?;
    (metric < 100).then(|| device.checked_mul(100)?.checked_add(metric))?
}

/// A canonical decimal number (no sign, no leading zeros), as `topic_of` writes them.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Message n's payload: n in decimal, then filler up to `bytes`.
fn payload_of(n: u64, bytes: usize) -> Vec<u8> {
    let mut payload = format!("{n} ").into_bytes();
    payload.resize(bytes.max(payload.len()), b'x');
    payload
}

// --- store --------------------------------------------------------------------------------------

/// What the storing clients' event loops count, all clients together.
#[derive(Default)]
struct Acks {
    ok: AtomicU64,
    refused: AtomicU64,
    connection_errors: AtomicU64,
}

impl Acks {
    fn answered(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.refused.load(Ordering::Relaxed)
    }
}

async fn connect5(
    broker: &Broker,
    role: &str,
    inflight: u16,
) -> anyhow::Result<(AsyncClient5, EventLoop5)> {
    let mut options = MqttOptions5::new(client_id(role), &broker.host, broker.port);
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_start(true)
        .set_outgoing_inflight_upper_limit(inflight);
    let (client, mut events) = AsyncClient5::new(options, usize::from(inflight));
    loop {
        let event = timeout(HANDSHAKE_TIMEOUT, events.poll())
            .await
            .with_context(|| format!("{role}: no CONNACK within {HANDSHAKE_TIMEOUT:?}"))?
            .with_context(|| format!("{role}: connecting"))?;
        if let Event5::Incoming(Packet5::ConnAck(ack)) = event {
            ensure!(
                ack.code == ConnectReturnCode5::Success,
                "{role}: connection refused: {:?}",
                ack.code
            );
            return Ok((client, events));
        }
    }
}

/// Polls a storing client's event loop until `stop`, counting its PUBACKs into `acks`.
fn drive_store(
    mut events: EventLoop5,
    acks: Arc<Acks>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = stop.changed() => return,
                event = events.poll() => event,
            };
            match event {
                Ok(Event5::Incoming(Packet5::PubAck(ack))) => match ack.reason {
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                        acks.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    reason => {
                        if acks.refused.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("store: PUBACK {}: {reason:?}", ack.pkid);
                        }
                    }
                },
                // Our own DISCONNECT, once everything is acknowledged: the broker closes next.
                Ok(Event5::Outgoing(Outgoing::Disconnect)) => return,
                Ok(Event5::Incoming(Packet5::Disconnect(d))) => {
                    eprintln!("store: the broker disconnected a client: {d:?}");
                    acks.connection_errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("store: connection error: {e}");
                    acks.connection_errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    })
}

async fn store(args: StoreArgs) -> anyhow::Result<bool> {
    ensure!(args.clients > 0, "--clients must be at least 1");
    ensure!(args.inflight > 0, "--inflight must be at least 1");
    let idle = Duration::from_secs_f64(args.idle_timeout);
    let acks = Arc::new(Acks::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut clients = Vec::new();
    for i in 0..args.clients {
        let (client, events) = connect5(&args.broker, &format!("store{i}"), args.inflight).await?;
        let driver = drive_store(events, acks.clone(), stop_rx.clone());
        clients.push((client, driver));
    }
    eprintln!(
        "store: {} messages {}..{} under {}/ from {} client(s), {} in flight each",
        args.messages,
        args.start,
        args.start + args.messages,
        args.prefix,
        args.clients,
        args.inflight
    );

    let started = Instant::now();
    let publish_failed = Arc::new(AtomicBool::new(false));
    let end = args.start + args.messages;
    for (i, (client, _)) in clients.iter().enumerate() {
        let (client, prefix, failed) =
            (client.clone(), args.prefix.clone(), publish_failed.clone());
        let (bytes, step) = (args.payload_bytes, args.clients as usize);
        tokio::spawn(async move {
            for n in (args.start + i as u64..end).step_by(step) {
                let (topic, payload) = (topic_of(&prefix, n), payload_of(n, bytes));
                let sent = if n % 10 == 0 {
                    let properties = PublishProperties {
                        user_properties: vec![("k".to_owned(), format!("v{n}"))],
                        ..PublishProperties::default()
                    };
                    client
                        .publish_with_properties(
                            topic,
                            QoS5::AtLeastOnce,
                            true,
                            payload,
                            properties,
                        )
                        .await
                } else {
                    client
                        .publish(topic, QoS5::AtLeastOnce, true, payload)
                        .await
                };
                if let Err(e) = sent {
                    eprintln!("store: publish: {e}");
                    failed.store(true, Ordering::Relaxed);
                    return;
                }
            }
        });
    }

    // Wait for every PUBACK, giving up after `idle` without one.
    let (mut seen, mut last_progress, mut last_report) = (0, Instant::now(), Instant::now());
    while seen < args.messages {
        sleep(Duration::from_millis(5)).await;
        let now = acks.answered();
        if now != seen {
            (seen, last_progress) = (now, Instant::now());
        } else if last_progress.elapsed() >= idle
            || acks.connection_errors.load(Ordering::Relaxed) > 0
            || publish_failed.load(Ordering::Relaxed)
        {
            break;
        }
        if last_report.elapsed() >= PROGRESS_INTERVAL {
            last_report = Instant::now();
            eprintln!(
                "store: {seen} of {} acknowledged, {:.0}/s",
                args.messages,
                seen as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    for (client, _) in &clients {
        let _ = client.try_disconnect();
    }
    // Each driver ends once it has written its DISCONNECT; stop the ones that cannot.
    let stopper = tokio::spawn(async move {
        sleep(Duration::from_secs(2)).await;
        let _ = stop_tx.send(true);
    });
    for (_, driver) in clients {
        let _ = driver.await;
    }
    stopper.abort();

    let stored = acks.ok.load(Ordering::Relaxed);
    let refused = acks.refused.load(Ordering::Relaxed);
    let connection_errors = acks.connection_errors.load(Ordering::Relaxed);
    let lost = args.messages.saturating_sub(stored + refused);
    println!(
        "scenario=store clients={} inflight={} messages={} payload_bytes={} stored={stored} \
         seconds={seconds:.3} per_s={:.0} errors={} refused={refused} lost={lost} connection_errors={connection_errors}",
        args.clients,
        args.inflight,
        args.messages,
        args.payload_bytes,
        stored as f64 / seconds,
        refused + lost + connection_errors,
    );
    if lost > 0 {
        eprintln!("store: {lost} publishes were never acknowledged");
    }
    Ok(stored == args.messages && connection_errors == 0)
}

// --- deliver ------------------------------------------------------------------------------------

/// Which numbers of the layout a subscriber has received.
struct Tally {
    bits: Vec<u64>,
    unique: usize,
    expect: usize,
}

impl Tally {
    fn new(expect: usize) -> Self {
        Self {
            bits: vec![0; expect.div_ceil(64)],
            unique: 0,
            expect,
        }
    }

    /// Records number n; true when it is one of the expected set and new.
    fn record(&mut self, n: u64) -> bool {
        let Ok(n) = usize::try_from(n) else {
            return false;
        };
        if n >= self.expect {
            return false;
        }
        let (word, bit) = (n / 64, 1u64 << (n % 64));
        if self.bits[word] & bit != 0 {
            return false;
        }
        self.bits[word] |= bit;
        self.unique += 1;
        true
    }

    fn complete(&self) -> bool {
        self.unique == self.expect
    }
}

/// How one subscriber's delivery went, times from its own SUBSCRIBE.
struct SubscriberReport {
    unique: usize,
    first: Option<Duration>,
    /// When it had all expected messages.
    done: Option<Duration>,
    /// When it subscribed, from the moment all were released to subscribe.
    subscribed_after: Duration,
    /// Why it was cut short.
    cut: Option<String>,
}

fn qos_from(qos: u8) -> anyhow::Result<QoS> {
    Ok(match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => bail!("--qos must be 0, 1 or 2"),
    })
}

/// A connected MQTT 3.1.1 client (clean session) whose CONNACK accepted it.
async fn connect3(broker: &Broker, role: &str) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let mut options = match broker.websocket_port {
        Some(port) => {
            let url = format!("ws://{}:{port}/mqtt", broker.host);
            let mut options = MqttOptions::new(client_id(role), url, port);
            options.set_transport(rumqttc::Transport::Ws);
            options
        }
        None => MqttOptions::new(client_id(role), &broker.host, broker.port),
    };
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(options, 16);
    loop {
        let event = timeout(HANDSHAKE_TIMEOUT, events.poll())
            .await
            .with_context(|| format!("{role}: no CONNACK within {HANDSHAKE_TIMEOUT:?}"))?
            .with_context(|| format!("{role}: connecting"))?;
        if let Event::Incoming(Packet::ConnAck(ack)) = event {
            ensure!(
                ack.code == ConnectReturnCode::Success,
                "{role}: connection refused: {:?}",
                ack.code
            );
            return Ok((client, events));
        }
    }
}

/// The parameters every subscriber of a `deliver` run shares.
struct Delivery {
    filter: String,
    qos: QoS,
    prefix: Vec<u8>,
    expect: usize,
    idle: Duration,
    /// Distinct deliveries so far, all subscribers together (for progress).
    delivered: AtomicU64,
}

/// One subscriber: waits at `release`, subscribes, and counts until it has everything, its
/// connection fails, or nothing new comes for `idle`.
async fn subscriber(
    delivery: Arc<Delivery>,
    client: AsyncClient,
    mut events: EventLoop,
    release: Arc<Barrier>,
    released: Instant,
) -> SubscriberReport {
    release.wait().await;
    let subscribed_at = Instant::now();
    let mut report = SubscriberReport {
        unique: 0,
        first: None,
        done: None,
        subscribed_after: subscribed_at.duration_since(released),
        cut: None,
    };
    let mut tally = Tally::new(delivery.expect);
    if let Err(e) = client
        .subscribe(delivery.filter.as_str(), delivery.qos)
        .await
    {
        report.cut = Some(format!("subscribe: {e}"));
        return report;
    }
    let mut last_progress = tokio::time::Instant::now();
    while !tally.complete() {
        let event =
            match tokio::time::timeout_at(last_progress + delivery.idle, events.poll()).await {
                Ok(Ok(event)) => event,
                Ok(Err(e)) => {
                    report.cut = Some(format!("connection error: {e}"));
                    break;
                }
                Err(_) => {
                    report.cut = Some(format!("nothing new for {:?}", delivery.idle));
                    break;
                }
            };
        match event {
            Event::Incoming(Packet::Publish(publish)) if publish.retain => {
                let counted = number_of(&delivery.prefix, publish.topic.as_bytes())
                    .is_some_and(|n| tally.record(n));
                if counted {
                    report.first.get_or_insert_with(|| subscribed_at.elapsed());
                    last_progress = tokio::time::Instant::now();
                    delivery.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Event::Incoming(Packet::SubAck(ack))
                if !ack
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_))) =>
            {
                report.cut = Some(format!("subscription refused: {:?}", ack.return_codes));
                break;
            }
            Event::Incoming(Packet::Disconnect) => {
                report.cut = Some("the broker disconnected".to_owned());
                break;
            }
            _ => {}
        }
    }
    if tally.complete() {
        report.done = Some(subscribed_at.elapsed());
    }
    report.unique = tally.unique;
    let _ = client.try_disconnect();
    let _ = timeout(Duration::from_secs(1), events.poll()).await;
    report
}

/// A runtime whose threads run at `SCHED_IDLE`, the policy retaind gives its large
/// deliveries (decision 020), so that the subscribers compete with them and with nothing else.
/// Shut down without waiting when dropped, which an async caller may do.
struct IdleThreads(Option<tokio::runtime::Runtime>);

impl IdleThreads {
    async fn start() -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .thread_name("idle-subscriber")
            .on_thread_start(|| {
                let param = libc::sched_param { sched_priority: 0 };
                // SAFETY: changes only the calling thread (pid 0), and `param` outlives the call.
                unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
            })
            .enable_all()
            .build()?;
        // SAFETY: reads the calling thread's policy only.
        let policy = rt
            .spawn(async { unsafe { libc::sched_getscheduler(0) } })
            .await?;
        ensure!(
            policy == libc::SCHED_IDLE,
            "the kernel refused SCHED_IDLE (policy {policy})"
        );
        Ok(Self(Some(rt)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0.as_ref().expect("until dropped").handle().clone()
    }
}

impl Drop for IdleThreads {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

async fn deliver(args: DeliverArgs) -> anyhow::Result<bool> {
    ensure!(args.subscribers > 0, "--subscribers must be at least 1");
    let delivery = Arc::new(Delivery {
        filter: args.filter.clone(),
        qos: qos_from(args.qos)?,
        prefix: args.prefix.clone().into_bytes(),
        expect: args.expect,
        idle: Duration::from_secs_f64(args.idle_timeout),
        delivered: AtomicU64::new(0),
    });

    // Where the subscribers' connections and tasks run: here, or on idle threads of their own.
    let idle_threads = match args.idle_subscribers {
        true => Some(IdleThreads::start().await?),
        false => None,
    };
    let subscribers = idle_threads
        .as_ref()
        .map_or_else(tokio::runtime::Handle::current, IdleThreads::handle);

    // Everyone connects first; then all are released to subscribe at the same moment.
    let connecting = (0..args.subscribers).map(|i| {
        let mut broker = args.broker.clone();
        broker.websocket_port = args.websocket_port;
        let connect = subscribers.spawn(async move { connect3(&broker, &format!("sub{i}")).await });
        async move { connect.await.context("connecting task")? }
    });
    let connected = futures_util::future::try_join_all(connecting).await?;
    eprintln!(
        "deliver: {} subscribers connected; subscribing to {} at QoS {}, expecting {} retained each",
        args.subscribers, args.filter, args.qos, args.expect
    );

    // The probe is connected and has had its first PUBACK before anyone subscribes, so it runs
    // during the whole delivery, however short. It runs on a thread and a runtime of its own,
    // as another device would: on this runtime, its PUBACKs would wait for the subscribers'
    // tasks, and the load generator's own delay would be counted as the broker's.
    let (probe_stop_tx, probe_stop_rx) = watch::channel(false);
    let probe = if args.probe_rate > 0 {
        let (first_tx, first_rx) = oneshot::channel();
        let (broker, rate) = (args.broker.clone(), args.probe_rate);
        let thread = std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(async move {
                        let (client, events) = connect3(&broker, "probe").await?;
                        run_probe(client, events, rate, probe_stop_rx, Some(first_tx)).await
                    })
            })?;
        timeout(HANDSHAKE_TIMEOUT, first_rx)
            .await
            .context("the probe's first PUBACK")?
            .context("the probe ended before its first PUBACK")?;
        Some(thread)
    } else {
        None
    };

    let release = Arc::new(Barrier::new(args.subscribers + 1));
    let released = Instant::now();
    let tasks: Vec<_> = connected
        .into_iter()
        .map(|(client, events)| {
            subscribers.spawn(subscriber(
                delivery.clone(),
                client,
                events,
                release.clone(),
                released,
            ))
        })
        .collect();
    release.wait().await;
    let progress = {
        let delivery = delivery.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = delivery.delivered.load(Ordering::Relaxed);
                eprintln!(
                    "deliver: {n} distinct retained deliveries, {:.0}/s",
                    n as f64 / released.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut reports = Vec::new();
    for task in tasks {
        reports.push(task.await.context("subscriber task")?);
    }
    progress.abort();
    drop(idle_threads);
    let _ = probe_stop_tx.send(true);
    let probe = match probe {
        Some(thread) => Some(
            tokio::task::spawn_blocking(move || thread.join())
                .await?
                .map_err(|_| anyhow::anyhow!("the probe thread panicked"))??,
        ),
        None => None,
    };

    let complete = reports.iter().filter(|r| r.done.is_some()).count();
    let cut_short = reports.iter().filter(|r| r.cut.is_some()).count();
    for (i, r) in reports.iter().enumerate() {
        if let Some(why) = &r.cut {
            eprintln!(
                "deliver: subscriber {i} cut short after {} of {}: {why}",
                r.unique, args.expect
            );
        }
    }
    let total: usize = reports.iter().map(|r| r.unique).sum();
    let secs = |d: Duration| d.as_secs_f64();
    // From the release until the last subscriber had everything (the complete ones only).
    let all_s = reports
        .iter()
        .filter_map(|r| r.done.map(|d| secs(r.subscribed_after + d)))
        .fold(0.0, f64::max);
    let durations: Vec<f64> = reports.iter().filter_map(|r| r.done.map(secs)).collect();
    let firsts: Vec<f64> = reports
        .iter()
        .filter_map(|r| r.first.map(|d| d.as_secs_f64() * 1000.0))
        .collect();
    // The longest wait for a first message shows a broker that serves subscribers one by one.
    let first_max_ms = firsts.iter().copied().reduce(f64::max);
    let first_ms = median(firsts);
    let fmt =
        |v: Option<f64>, decimals: usize| v.map_or("nan".to_owned(), |v| format!("{v:.decimals$}"));
    let mut line = format!(
        "scenario=deliver subscribers={} filter={} expect={} complete={complete} cut_short={cut_short} \
         delivered={total} first_ms={} first_max_ms={} all_s={} per_s={} slowest_s={} fastest_s={}",
        args.subscribers,
        args.filter,
        args.expect,
        fmt(first_ms, 1),
        fmt(first_max_ms, 1),
        fmt((complete > 0).then_some(all_s), 3),
        fmt(
            (complete > 0 && all_s > 0.0).then(|| total as f64 / all_s),
            0
        ),
        fmt(durations.iter().copied().reduce(f64::max), 3),
        fmt(durations.iter().copied().reduce(f64::min), 3),
    );
    if let Some(p) = &probe {
        line.push_str(&format!(
            " probe_p50_ms={:.2} probe_p99_ms={:.2} probe_max_ms={:.2} probe_n={} probe_skipped={} \
             probe_late_p99_ms={:.2}",
            ms_at(&p.latencies, 0.5),
            ms_at(&p.latencies, 0.99),
            p.latencies.max() as f64 / 1000.0,
            p.latencies.len(),
            p.skipped,
            ms_at(&p.late, 0.99)
        ));
    }
    println!("{line}");
    Ok(complete == args.subscribers && probe.is_none_or(|p| !p.latencies.is_empty()))
}

// --- probe --------------------------------------------------------------------------------------

struct ProbeReport {
    latencies: Histogram<u64>,
    /// How late the probe's own thread ran each tick: on a machine the load generator shares
    /// with the broker, the wait for a core that any wake-up of the probe pays too, PUBACK
    /// included. Tokio's timer adds up to 1 ms of its own, idle as well.
    late: Histogram<u64>,
    /// Ticks that found the previous publish still unacknowledged.
    skipped: u64,
}

/// Publishes `rate` retained QoS 1 messages a second, one at a time, until `stop`; records each
/// publish → PUBACK time. Waits up to 10 s for the last PUBACK after `stop`.
/// `first` is told when the first PUBACK has come.
async fn run_probe(
    client: AsyncClient,
    mut events: EventLoop,
    rate: u32,
    mut stop: watch::Receiver<bool>,
    mut first: Option<oneshot::Sender<()>>,
) -> anyhow::Result<ProbeReport> {
    ensure!(rate > 0, "the probe rate must be at least 1");
    let mut report = ProbeReport {
        latencies: latency_histogram(),
        late: latency_histogram(),
        skipped: 0,
    };
    let payload = vec![b'p'; 256];
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let (mut outstanding, mut sent, mut stopping) = (None::<Instant>, 0u64, false);
    let mut drain_deadline = None;
    loop {
        tokio::select! {
            due = tick.tick(), if !stopping => {
                record_us(&mut report.late, due.elapsed());
                if outstanding.is_some() {
                    report.skipped += 1;
                    continue;
                }
                let topic = format!("probe/{}", sent % PROBE_TOPICS);
                outstanding = Some(Instant::now());
                client
                    .try_publish(topic, QoS::AtLeastOnce, true, payload.clone())
                    .context("probe publish")?;
                sent += 1;
            }
            changed = stop.changed(), if !stopping => {
                let _ = changed;
                stopping = true;
                drain_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(10));
            }
            () = async {
                match drain_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => break,
            event = events.poll() => match event.context("probe connection")? {
                Event::Incoming(Packet::PubAck(_)) => {
                    if let Some(at) = outstanding.take() {
                        record_us(&mut report.latencies, at.elapsed());
                        if let Some(first) = first.take() {
                            let _ = first.send(());
                        }
                    }
                }
                Event::Incoming(Packet::Disconnect) => bail!("the broker disconnected the probe"),
                _ => {}
            },
        }
        if stopping && outstanding.is_none() {
            break;
        }
    }
    let _ = client.try_disconnect();
    let _ = timeout(Duration::from_secs(1), events.poll()).await;
    Ok(report)
}

async fn probe_command(args: ProbeArgs) -> anyhow::Result<bool> {
    ensure!(args.seconds > 0.0, "--seconds must be positive");
    let (client, events) = connect3(&args.broker, "probe").await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let seconds = args.seconds;
    tokio::spawn(async move {
        sleep(Duration::from_secs_f64(seconds)).await;
        let _ = stop_tx.send(true);
        // Keep the sender alive until the probe has seen the stop.
        std::future::pending::<()>().await;
    });
    eprintln!("probe: {} publishes/s for {seconds} s", args.rate);
    let report = run_probe(client, events, args.rate, stop_rx, None).await?;
    println!(
        "scenario=probe rate={} seconds={seconds} probe_p50_ms={:.2} probe_p99_ms={:.2} \
         probe_max_ms={:.2} probe_n={} probe_skipped={} probe_late_p99_ms={:.2}",
        args.rate,
        ms_at(&report.latencies, 0.5),
        ms_at(&report.latencies, 0.99),
        report.latencies.max() as f64 / 1000.0,
        report.latencies.len(),
        report.skipped,
        ms_at(&report.late, 0.99)
    );
    Ok(!report.latencies.is_empty())
}

// --- list ---------------------------------------------------------------------------------------

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListPage {
    retained_topics: Vec<serde_json::Value>,
    next_token: Option<String>,
}

struct Lister {
    http: reqwest::Client,
    url: String,
    page_size: u32,
    filter: Option<String>,
}

impl Lister {
    async fn page(&self, token: Option<&str>) -> anyhow::Result<ListPage> {
        let mut query = vec![("maxResults", self.page_size.to_string())];
        if let Some(token) = token {
            query.push(("nextToken", token.to_owned()));
        }
        if let Some(filter) = &self.filter {
            query.push(("topicFilter", filter.clone()));
        }
        let response = self
            .http
            .get(&self.url)
            .query(&query)
            .send()
            .await
            .context("ListRetainedMessages")?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "ListRetainedMessages answered {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        response.json().await.context("ListRetainedMessages body")
    }
}

async fn list(args: ListArgs) -> anyhow::Result<bool> {
    ensure!(args.pages >= 1, "--pages must be at least 1");
    ensure!(args.repeat >= 1, "--repeat must be at least 1");
    let lister = Lister {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .build()?,
        url: format!("{}/retainedMessage", args.url.trim_end_matches('/')),
        page_size: args.page_size,
        filter: args.filter.clone(),
    };
    let name = if args.filter.is_some() {
        "list-filtered"
    } else {
        "list"
    };

    // Walk to page P, keeping the token that asks for it.
    let started = Instant::now();
    let mut token: Option<String> = None;
    let mut walked = 0;
    let (mut items_first, mut items_last) = (0, 0);
    let mut token_p = None;
    while walked < args.pages {
        let page = lister.page(token.as_deref()).await?;
        walked += 1;
        if walked == 1 {
            items_first = page.retained_topics.len();
        }
        if walked == args.pages {
            items_last = page.retained_topics.len();
            token_p = token.take();
            break;
        }
        if walked % 1000 == 0 {
            eprintln!("{name}: walked {walked} pages");
        }
        match page.next_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    let walk_s = started.elapsed().as_secs_f64();
    if walked < args.pages {
        println!(
            "scenario={name} filter={} page_size={} pages={walked} wanted_pages={} walk_s={walk_s:.3} error=too_few_pages",
            args.filter.as_deref().unwrap_or("none"),
            args.page_size,
            args.pages
        );
        eprintln!(
            "{name}: the listing ended after {walked} of {} pages",
            args.pages
        );
        return Ok(false);
    }
    eprintln!("{name}: walked {walked} pages in {walk_s:.1} s; timing page 1 and page {walked}");

    let (mut first, mut deep) = (latency_histogram(), latency_histogram());
    for _ in 0..args.repeat {
        let at = Instant::now();
        let page = lister.page(None).await?;
        record_us(&mut first, at.elapsed());
        ensure!(
            page.retained_topics.len() == items_first,
            "page 1 changed size"
        );
        let at = Instant::now();
        let page = lister.page(token_p.as_deref()).await?;
        record_us(&mut deep, at.elapsed());
        ensure!(
            page.retained_topics.len() == items_last,
            "page P changed size"
        );
    }
    let ratio = |q: f64| ms_at(&deep, q) / ms_at(&first, q);
    println!(
        "scenario={name} filter={} page_size={} pages={walked} walk_s={walk_s:.3} repeat={} \
         items_page1={items_first} items_pageP={items_last} page1_p50_ms={:.3} page1_p99_ms={:.3} \
         pageP_p50_ms={:.3} pageP_p99_ms={:.3} ratio_p50={:.2} ratio_p99={:.2}",
        args.filter.as_deref().unwrap_or("none"),
        args.page_size,
        args.repeat,
        ms_at(&first, 0.5),
        ms_at(&first, 0.99),
        ms_at(&deep, 0.5),
        ms_at(&deep, 0.99),
        ratio(0.5),
        ratio(0.99),
    );
    Ok(items_first > 0 && items_last > 0)
}

// --- ready --------------------------------------------------------------------------------------

fn since(epoch_ms: u64) -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    now - epoch_ms as f64
}

/// Polls `url` every 10 ms until it answers 200; the milliseconds since `epoch_ms` then.
async fn poll_readyz(url: String, epoch_ms: u64) -> anyhow::Result<f64> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    loop {
        if let Ok(response) = http.get(&url).send().await
            && response.status() == reqwest::StatusCode::OK
        {
            return Ok(since(epoch_ms));
        }
        sleep(READY_RETRY).await;
    }
}

async fn ready(args: ReadyArgs) -> anyhow::Result<bool> {
    let deadline = Duration::from_secs_f64(args.timeout);
    let readyz = args
        .readyz_url
        .clone()
        .map(|url| tokio::spawn(timeout(deadline, poll_readyz(url, args.since_epoch_ms))));
    let mqtt = timeout(deadline, async {
        let mut options = MqttOptions::new(client_id("ready"), &args.broker.host, args.broker.port);
        options.set_keep_alive(KEEP_ALIVE).set_clean_session(true);
        let (client, mut events) = AsyncClient::new(options, 16);
        let connack_ms = loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    ensure!(
                        ack.code == ConnectReturnCode::Success,
                        "connection refused: {:?}",
                        ack.code
                    );
                    break since(args.since_epoch_ms);
                }
                Ok(_) => {}
                Err(_) => sleep(READY_RETRY).await,
            }
        };
        client
            .subscribe(args.topic.as_str(), QoS::AtLeastOnce)
            .await?;
        let retained_ms = loop {
            match events
                .poll()
                .await
                .context("waiting for the retained message")?
            {
                Event::Incoming(Packet::Publish(p)) if p.retain && p.topic == args.topic => {
                    break since(args.since_epoch_ms);
                }
                _ => {}
            }
        };
        let _ = client.try_disconnect();
        let _ = timeout(Duration::from_secs(1), events.poll()).await;
        anyhow::Ok((connack_ms, retained_ms))
    })
    .await;
    let (connack_ms, retained_ms) = match mqtt {
        Ok(result) => result?,
        Err(_) => bail!("no CONNACK and retained message within {deadline:?}"),
    };
    let mut line = format!(
        "scenario=ready topic={} connack_ms={connack_ms:.0} retained_ms={retained_ms:.0}",
        args.topic
    );
    if let Some(task) = readyz {
        match task.await? {
            Ok(readyz_ms) => line.push_str(&format!(" readyz_ms={:.0}", readyz_ms?)),
            Err(_) => bail!("/readyz did not answer 200 within {deadline:?}"),
        }
    }
    println!("{line}");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_of_the_layout_parse_back_to_their_number() {
        for n in [0, 7, 42, 99, 100, 123_456, 999_999] {
            assert_eq!(number_of(b"m", topic_of("m", n).as_bytes()), Some(n));
        }
    }

    #[test]
    fn other_topics_are_not_numbers() {
        for topic in [
            "probe/1",
            "m/d1",
            "m/d1/s100",
            "m/d01/s1",
            "m/d1/s01",
            "m/dx/s1",
            "mm/d1/s1",
            "m/d1/s1/x",
            "one/d1/s1",
        ] {
            assert_eq!(number_of(b"m", topic.as_bytes()), None, "{topic}");
        }
    }

    #[test]
    fn a_tally_counts_each_expected_number_once() {
        let mut tally = Tally::new(130);
        assert!(tally.record(129));
        assert!(!tally.record(129));
        assert!(!tally.record(130));
        assert_eq!(tally.unique, 1);
        for n in 0..129 {
            tally.record(n);
        }
        assert!(tally.complete());
    }
}
