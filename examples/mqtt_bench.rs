//! MQTT load generator for any MQTT 3.1.1 broker: fan-out throughput and latency, and retained
//! store-then-deliver time. `bench/mqtt.sh` runs it against retaind and against Mosquitto.
//!
//! ```sh
//! cargo run --release --example mqtt_bench -- --host 127.0.0.1 --port 1883 \
//!     --scenario fanout-qos0,fanout-qos1,retained --duration 10 --messages 50000
//! ```
//!
//! Scenarios (one machine-readable line each on stdout; progress goes to stderr):
//! - `fanout-qos0`, `fanout-qos1`: `--publishers` clients (default 4) publish `--payload-bytes`
//!   (256) payloads to `PREFIX/p<i>` as fast as flow control lets them, for `--warmup` +
//!   `--duration` seconds; `--subscribers` clients (4) subscribe to `PREFIX/#` at the same QoS, so
//!   every message is delivered 4 times. Every subscriber has its SUBACK before the first publish.
//!   Each payload starts with its publish time (ns since a shared `Instant`), so latency is
//!   publish-call → receipt in the subscriber. Only messages published inside the measured window
//!   (after the warm-up) count, and only deliveries that arrived.
//!   `deliveries_per_s` = those deliveries ÷ (last such receipt − window start, at least the
//!   window); a broker whose subscribers lag behind is not credited with the publish rate.
//! - `retained`: one client stores `--messages` (50,000) retained messages at QoS 1 under
//!   `PREFIX/r/<n>`, waiting for every PUBACK (`store_per_s`); then a new client subscribes to
//!   `PREFIX/#` and is timed from its SUBSCRIBE to the last of them (`deliver_total_s`). The
//!   messages are cleared again (empty retained publishes) unless `--keep-retained`.
//!
//! Across a cluster (`bench/cluster.sh`): `--sub-host`/`--sub-port` put the fan-out subscribers
//! on another broker than the publishers, e.g. publishers on node A and subscribers on node B.
//! After their SUBACKs, probes are published on the publishers' broker until one has reached
//! every subscriber, so that the measured messages do not race the cluster's propagation of the
//! new subscriptions. The retained scenario stays on `--host`/`--port`.
//!
//! Flow control, so that the numbers are what the broker sustains:
//! - QoS 1 publishers are held by rumqttc's inflight window (`--inflight`, 100): a publish waits
//!   until fewer than that many are unacknowledged, so the QoS 1 publish rate is acked throughput.
//! - Every fan-out publisher also keeps at most `--max-outstanding` (250) messages that the
//!   slowest subscriber has not received yet. Without it, a broker that acknowledges publishes
//!   faster than its subscribers read fills their queues for the whole run: then Mosquitto drops
//!   messages (even at QoS 1) and retaind disconnects the subscriber, and latency measures queue
//!   length. `--max-outstanding 0` turns it off; `--rate` paces publishers instead.
//!
//! The prefix defaults to one unique to the run, so leftovers of another run never match.
//! Exit status 1 when a connection failed or a QoS 1 / retained message never arrived.

#[path = "common/fanout.rs"]
mod fanout;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use clap::{Parser, ValueEnum};
use fanout::{
    HEADER_BYTES, Progress, PublisherReport, Setup, SubscriberReport, Tasks, Window, header,
    latency_histogram,
};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
    SubscribeReasonCode, Transport,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout};

/// Requests a client may queue before `publish().await` waits: small, so a payload's timestamp
/// is taken close to the moment the event loop can send it.
const REQUEST_CHANNEL_CAPACITY: usize = 8;
/// Connecting, CONNACK and SUBACK must each come within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often probes go out while subscribers on another broker wait for their first one.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// Shorter than a header, so that a late probe is never taken for a measured message.
const PROBE_PAYLOAD: &[u8] = b"probe";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    FanoutQos0,
    FanoutQos1,
    Retained,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Wire {
    Tcp,
    Ws,
}

#[derive(Debug, Parser)]
#[command(about = "MQTT fan-out and retained-delivery benchmark for any MQTT 3.1.1 broker")]
struct Args {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port (TCP, or the HTTP port with `--transport ws`).
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Broker host of the fan-out subscribers (default `--host`): publishers on one node of a
    /// cluster, subscribers on another. Publishing then starts once probes published on
    /// `--host` reach every subscriber.
    #[arg(long)]
    sub_host: Option<String>,
    /// Broker port of the fan-out subscribers (default `--port`).
    #[arg(long)]
    sub_port: Option<u16>,
    /// MQTT over plain TCP or over WebSocket.
    #[arg(long, value_enum, default_value_t = Wire::Tcp)]
    transport: Wire,
    /// WebSocket path, with `--transport ws`.
    #[arg(long, default_value = "/mqtt")]
    ws_path: String,
    /// Scenarios to run, comma separated, in order.
    #[arg(long, value_enum, value_delimiter = ',',
          default_values_t = [Scenario::FanoutQos0, Scenario::FanoutQos1, Scenario::Retained])]
    scenario: Vec<Scenario>,
    /// Measured seconds of each fan-out scenario.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured seconds of publishing before the measured window of a fan-out scenario.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Fan-out publishers.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Fan-out subscribers, each to `PREFIX/#`.
    #[arg(long, default_value_t = 4)]
    subscribers: usize,
    /// Payload size in bytes (at least 24: timestamp, publisher and sequence number).
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Messages per second per fan-out publisher; 0 publishes as fast as the broker allows.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Messages a fan-out publisher may have published that the slowest subscriber has not yet
    /// received (0: no limit). Keeps publishers from outrunning subscribers, so that neither
    /// broker's per-session queue overflows and drops or disconnects.
    #[arg(long, default_value_t = 250)]
    max_outstanding: u64,
    /// Retained messages to store and then receive.
    #[arg(long, default_value_t = 50_000)]
    messages: usize,
    /// Clients storing the retained messages at once, each with its own share of the topics
    /// and its own `--inflight` window: one device, or a fleet.
    #[arg(long, default_value_t = 1)]
    store_publishers: usize,
    /// Unacknowledged QoS 1 publishes a client may have outstanding.
    #[arg(long, default_value_t = 100)]
    inflight: u16,
    /// Topic prefix; the default is unique to this run.
    #[arg(long)]
    prefix: Option<String>,
    /// Seconds without a new delivery after which waiting for more gives up.
    #[arg(long, default_value_t = 10.0)]
    idle_timeout: f64,
    /// Leave the retained messages on the broker after the retained scenario.
    #[arg(long)]
    keep_retained: bool,
    /// Skip storing in the retained scenario: time only the delivery of what a previous run
    /// with `--keep-retained` and the same `--prefix` left on the broker.
    #[arg(long)]
    deliver_only: bool,
}

/// What all tasks of a run share: the clock the payload timestamps count from, and the names.
struct Run {
    args: Args,
    t0: Instant,
    prefix: String,
    client_prefix: String,
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

    /// Whether the fan-out subscribers connect to another broker than the publishers.
    fn split(&self) -> bool {
        self.args.sub_host.is_some() || self.args.sub_port.is_some()
    }

    /// A connected client of `--host`/`--port` whose CONNACK accepted the connection.
    async fn connect(&self, role: &str) -> anyhow::Result<(AsyncClient, EventLoop)> {
        self.connect_to(role, &self.args.host, self.args.port).await
    }

    /// A connected fan-out subscriber, on `--sub-host`/`--sub-port` when given.
    async fn connect_subscriber(&self, role: &str) -> anyhow::Result<(AsyncClient, EventLoop)> {
        let args = &self.args;
        let host = args.sub_host.as_deref().unwrap_or(&args.host);
        self.connect_to(role, host, args.sub_port.unwrap_or(args.port))
            .await
    }

    async fn connect_to(
        &self,
        role: &str,
        host: &str,
        port: u16,
    ) -> anyhow::Result<(AsyncClient, EventLoop)> {
        let args = &self.args;
        let id = format!("{}-{role}", self.client_prefix);
        let mut options = match args.transport {
            Wire::Tcp => MqttOptions::new(id, host, port),
            Wire::Ws => {
                let url = format!("ws://{host}:{port}{}", args.ws_path);
                let mut options = MqttOptions::new(id, url, port);
                options.set_transport(Transport::Ws);
                options
            }
        };
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(args.inflight)
            .set_clean_session(true)
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, REQUEST_CHANNEL_CAPACITY);
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

    fn payload(&self, publisher: usize, seq: u64) -> Vec<u8> {
        fanout::payload(self.args.payload_bytes, self.now_ns(), publisher, seq)
    }
}

fn qos_of(scenario: Scenario) -> QoS {
    match scenario {
        Scenario::FanoutQos0 => QoS::AtMostOnce,
        _ => QoS::AtLeastOnce,
    }
}

fn name_of(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::FanoutQos0 => "fanout-qos0",
        Scenario::FanoutQos1 => "fanout-qos1",
        Scenario::Retained => "retained",
    }
}

/// Sends SUBSCRIBE and waits for a SUBACK that granted it. Publishes arriving first are handed
/// to `on_publish` (a broker may send retained messages before its SUBACK).
async fn subscribe(
    client: &AsyncClient,
    events: &mut EventLoop,
    filter: &str,
    qos: QoS,
    mut on_publish: impl FnMut(rumqttc::Publish),
) -> anyhow::Result<()> {
    client.subscribe(filter, qos).await?;
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.poll())
            .await
            .with_context(|| format!("no SUBACK for {filter} within {HANDSHAKE_TIMEOUT:?}"))??;
        match event {
            Event::Incoming(Packet::SubAck(ack)) => {
                ensure!(
                    ack.return_codes
                        .iter()
                        .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
                    "subscription to {filter} refused: {:?}",
                    ack.return_codes
                );
                return Ok(());
            }
            Event::Incoming(Packet::Publish(publish)) => on_publish(publish),
            _ => {}
        }
    }
}

/// Sends DISCONNECT and lets the event loop write it, briefly.
async fn disconnect(client: AsyncClient, mut events: EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = timeout(Duration::from_secs(2), async {
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Polls a publisher's event loop, counting what completes a publish: its PUBACK at QoS 1, its
/// write to the socket at QoS 0. Returns the connection error that ended it, if any.
fn drive_publisher(
    mut events: EventLoop,
    qos: QoS,
    done: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<Option<String>> {
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = stop.changed() => return None,
                event = events.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::PubAck(_))) if qos == QoS::AtLeastOnce => {
                    done.send_modify(|n| *n += 1)
                }
                Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == QoS::AtMostOnce => {
                    done.send_modify(|n| *n += 1)
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return None,
                Ok(_) => {}
                Err(e) => return Some(e.to_string()),
            }
        }
    })
}

/// Waits until `counter` reaches `target`, giving up after `idle` without progress.
async fn wait_for_count(counter: &mut watch::Receiver<u64>, target: u64, idle: Duration) -> u64 {
    loop {
        let seen = *counter.borrow_and_update();
        if seen >= target {
            return seen;
        }
        match timeout(idle, counter.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return *counter.borrow(),
        }
    }
}

async fn fanout(run: Arc<Run>, scenario: Scenario) -> anyhow::Result<bool> {
    let args = &run.args;
    let qos = qos_of(scenario);
    let name = name_of(scenario);
    let filter = format!("{}/#", run.prefix);
    let (stop_tx, stop_rx) = watch::channel(false);
    let delivered = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Progress::new(args.publishers, args.subscribers));

    // Subscribers first, each SUBACKed before anyone publishes.
    let mut subscribers = Vec::new();
    for i in 0..args.subscribers {
        let (client, mut events) = run.connect_subscriber(&format!("{name}-sub{i}")).await?;
        subscribe(&client, &mut events, &filter, qos, |_| {}).await?;
        subscribers.push((client, events));
    }
    if run.split() {
        subscribers = await_routes(&run, name, subscribers).await?;
    }
    let window = Window::after(run.now_ns(), args.warmup, args.duration);
    let subscriber_tasks: Vec<JoinHandle<SubscriberReport>> = subscribers
        .into_iter()
        .enumerate()
        .map(|(index, (client, events))| {
            let task = receive_fanout(
                run.clone(),
                Subscriber { index, events },
                window,
                Counters {
                    delivered: delivered.clone(),
                    progress: progress.clone(),
                },
                stop_rx.clone(),
            );
            tokio::spawn(async move {
                let report = task.await;
                disconnect(client, report.1).await;
                report.0
            })
        })
        .collect();

    let mut publisher_tasks = Vec::new();
    for i in 0..args.publishers {
        let (client, events) = run.connect(&format!("{name}-pub{i}")).await?;
        let (done_tx, done_rx) = watch::channel(0);
        let driver = drive_publisher(events, qos, done_tx, stop_rx.clone());
        let topic = format!("{}/p{i}", run.prefix);
        publisher_tasks.push(tokio::spawn(publish_fanout(
            run.clone(),
            Publisher {
                index: i,
                client,
                topic,
                qos,
            },
            window,
            progress.clone(),
            done_rx,
            driver,
        )));
    }
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
    let (expected, got) = (outcome.expected, outcome.delivered);
    let complete = qos == QoS::AtMostOnce || got == expected;
    if !complete {
        eprintln!("{name}: {} QoS 1 deliveries never arrived", expected - got);
    }
    Ok(outcome.errors == 0 && complete && outcome.unacked == 0 && got > 0)
}

/// Publishes probes on the publishers' broker until every subscriber, on another broker, has
/// received one. A subscription made on one node of a cluster reaches the other nodes' view a
/// moment after its SUBACK (the cluster's interest-propagation window, milliseconds), and what
/// is published there before that does not reach it: without this, the first messages would
/// count as lost and hold their publishers' flow control back.
async fn await_routes(
    run: &Arc<Run>,
    name: &str,
    subscribers: Vec<(AsyncClient, EventLoop)>,
) -> anyhow::Result<Vec<(AsyncClient, EventLoop)>> {
    let started = Instant::now();
    let topic = format!("{}/probe", run.prefix);
    let (prober, mut probe_events) = run.connect(&format!("{name}-probe")).await?;
    let arrivals = subscribers.into_iter().map(|(client, mut events)| {
        let topic = topic.clone();
        tokio::spawn(async move {
            loop {
                if let Event::Incoming(Packet::Publish(p)) = events.poll().await?
                    && p.topic == topic
                {
                    return anyhow::Ok((client, events));
                }
            }
        })
    });
    let all_arrived = futures_util::future::try_join_all(arrivals);
    let deadline = sleep(HANDSHAKE_TIMEOUT);
    tokio::pin!(all_arrived, deadline);
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    let arrived = loop {
        tokio::select! {
            arrived = &mut all_arrived => break arrived?,
            _ = tick.tick() => {
                // A full request queue only means the previous probes are still being sent.
                let _ = prober.try_publish(&topic, QoS::AtMostOnce, false, PROBE_PAYLOAD);
            }
            event = probe_events.poll() => {
                event.context("probe publisher")?;
            }
            () = &mut deadline => bail!(
                "probes published on {}:{} did not reach every subscriber within {HANDSHAKE_TIMEOUT:?}",
                run.args.host,
                run.args.port
            ),
        }
    };
    let waited = started.elapsed();
    disconnect(prober, probe_events).await;
    let subscribers = arrived
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()
        .context("subscriber, waiting for a probe")?;
    eprintln!(
        "{name}: probes from the publishers' broker reached every subscriber {:.1} ms after their SUBACKs",
        waited.as_secs_f64() * 1000.0
    );
    Ok(subscribers)
}

/// A fan-out subscriber's connection and its place in `Progress`.
struct Subscriber {
    index: usize,
    events: EventLoop,
}

/// What subscribers count into and publishers read.
struct Counters {
    /// Measured deliveries, all subscribers together.
    delivered: Arc<AtomicU64>,
    progress: Arc<Progress>,
}

/// One fan-out subscriber: records the latency of each measured delivery until told to stop.
async fn receive_fanout(
    run: Arc<Run>,
    mut subscriber: Subscriber,
    window: Window,
    counters: Counters,
    mut stop: watch::Receiver<bool>,
) -> (SubscriberReport, EventLoop) {
    let mut report = SubscriberReport {
        latencies_us: latency_histogram(),
        delivered: 0,
        last_receipt_ns: 0,
        error: None,
    };
    loop {
        let event = tokio::select! {
            _ = stop.changed() => break,
            event = subscriber.events.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let now = run.now_ns();
                let Some((sent, publisher, seq)) = header(&publish.payload) else {
                    continue;
                };
                counters.progress.record(publisher, subscriber.index, seq);
                if window.contains(sent) {
                    let latency_us = (now.saturating_sub(sent) / 1000).max(1);
                    report.latencies_us.saturating_record(latency_us);
                    report.delivered += 1;
                    report.last_receipt_ns = now;
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(_) => {}
            Err(e) => {
                report.error = Some(e.to_string());
                break;
            }
        }
    }
    (report, subscriber.events)
}

/// A fan-out publisher's connection and what it publishes.
struct Publisher {
    index: usize,
    client: AsyncClient,
    topic: String,
    qos: QoS,
}

/// One fan-out publisher: publishes until the window ends, then waits for its last PUBACKs.
async fn publish_fanout(
    run: Arc<Run>,
    publisher: Publisher,
    window: Window,
    progress: Arc<Progress>,
    mut done: watch::Receiver<u64>,
    driver: JoinHandle<Option<String>>,
) -> PublisherReport {
    let Publisher {
        index,
        client,
        topic,
        qos,
    } = publisher;
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
        let payload = run.payload(index, sent);
        let in_window = header(&payload).is_some_and(|(ts, _, _)| window.contains(ts));
        if let Err(e) = client.publish(topic.as_str(), qos, false, payload).await {
            error = Some(format!("publish: {e}"));
            break;
        }
        sent += 1;
        measured += u64::from(in_window);
    }
    let completed = wait_for_count(&mut done, sent, run.idle_timeout()).await;
    disconnect_publisher(client, driver, &mut error).await;
    PublisherReport {
        sent,
        measured,
        completed,
        error,
    }
}

async fn disconnect_publisher(
    client: AsyncClient,
    driver: JoinHandle<Option<String>>,
    error: &mut Option<String>,
) {
    let _ = client.try_disconnect();
    // The driver ends when it has written the DISCONNECT; an error before that is a failure.
    if let Ok(Ok(Some(e))) = timeout(Duration::from_secs(2), driver).await {
        error.get_or_insert(e);
    }
}

/// Which of the stored retained messages a subscriber has received, and when the first came.
struct RetainedTally<'a> {
    base: &'a str,
    seen: Vec<bool>,
    unique: usize,
    since: Instant,
    first: Option<Duration>,
}

impl<'a> RetainedTally<'a> {
    fn new(base: &'a str, total: usize, since: Instant) -> Self {
        Self {
            base,
            seen: vec![false; total],
            unique: 0,
            since,
            first: None,
        }
    }

    fn record(&mut self, publish: &rumqttc::Publish) {
        let index = publish
            .topic
            .strip_prefix(self.base)
            .and_then(|t| t.strip_prefix('/'))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&i| i < self.seen.len() && publish.retain);
        if let Some(index) = index {
            self.first.get_or_insert_with(|| self.since.elapsed());
            if !std::mem::replace(&mut self.seen[index], true) {
                self.unique += 1;
            }
        }
    }
}

async fn retained(run: Arc<Run>) -> anyhow::Result<bool> {
    let args = &run.args;
    let total = args.messages;
    let base = format!("{}/r", run.prefix);
    let (stop_tx, stop_rx) = watch::channel(false);

    // Store.
    let publishers = args.store_publishers.max(1);
    let (done_tx, mut done) = watch::channel(0);
    let done_tx = Arc::new(done_tx);
    let mut clients = Vec::with_capacity(publishers);
    for i in 0..publishers {
        let (client, events) = run.connect(&format!("retained-pub{i}")).await?;
        // Each publisher counts its own acknowledgements; the sum is what is stored.
        let (own_tx, mut own_rx) = watch::channel(0u64);
        let driver = drive_publisher(events, QoS::AtLeastOnce, own_tx, stop_rx.clone());
        let total_tx = done_tx.clone();
        tokio::spawn(async move {
            let mut last = 0;
            while own_rx.changed().await.is_ok() {
                let now = *own_rx.borrow_and_update();
                total_tx.send_modify(|n| *n += now - last);
                last = now;
            }
        });
        clients.push((client, driver));
    }
    eprintln!(
        "retained: storing {total} retained messages under {base}/ at QoS 1 from {publishers} client(s)"
    );
    let started = Instant::now();
    let mut sending = Vec::with_capacity(publishers);
    for (i, (client, _)) in clients.iter().enumerate().filter(|_| !args.deliver_only) {
        let (client, run, base) = (client.clone(), run.clone(), base.clone());
        sending.push(tokio::spawn(async move {
            for n in (i..total).step_by(publishers) {
                let n = n as u64;
                client
                    .publish(
                        format!("{base}/{n}"),
                        QoS::AtLeastOnce,
                        true,
                        run.payload(0, n),
                    )
                    .await
                    .context("storing")?;
            }
            anyhow::Ok(())
        }));
    }
    for task in sending {
        task.await??;
    }
    let stored = if args.deliver_only {
        total as u64
    } else {
        wait_for_count(&mut done, total as u64, run.idle_timeout()).await
    };
    let store_s = started.elapsed().as_secs_f64();
    ensure!(
        stored == total as u64,
        "retained: only {stored} of {total} publishes were acknowledged"
    );

    // Deliver to a new subscriber.
    let (subscriber, mut sub_events) = run.connect("retained-sub").await?;
    let subscribed = Instant::now();
    let mut tally = RetainedTally::new(&base, total, subscribed);
    let filter = format!("{}/#", run.prefix);
    subscribe(
        &subscriber,
        &mut sub_events,
        &filter,
        QoS::AtLeastOnce,
        |p| tally.record(&p),
    )
    .await?;
    let mut error = None;
    while tally.unique < total {
        match timeout(run.idle_timeout(), sub_events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => tally.record(&publish),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                error = Some(e.to_string());
                break;
            }
            Err(_) => break,
        }
    }
    let deliver_s = subscribed.elapsed().as_secs_f64();
    disconnect(subscriber, sub_events).await;

    println!(
        "scenario=retained messages={total} store_publishers={publishers} payload_bytes={} store_total_s={store_s:.3} \
         store_per_s={:.0} delivered={} first_ms={:.1} deliver_total_s={deliver_s:.3} \
         deliver_per_s={:.0} errors={}",
        args.payload_bytes,
        total as f64 / store_s,
        tally.unique,
        tally.first.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
        tally.unique as f64 / deliver_s,
        usize::from(error.is_some()),
    );
    if let Some(e) = &error {
        eprintln!("retained: subscriber connection error: {e}");
    }
    if tally.unique < total {
        eprintln!(
            "retained: {} retained messages never arrived",
            total - tally.unique
        );
    }

    // Clear, so that the broker is left as found.
    if !args.keep_retained {
        let (clear_tx, mut cleared) = watch::channel(0);
        let (clearer, events) = run.connect("retained-clear").await?;
        let clear_driver = drive_publisher(events, QoS::AtLeastOnce, clear_tx, stop_rx.clone());
        for n in 0..total as u64 {
            clearer
                .publish(format!("{base}/{n}"), QoS::AtLeastOnce, true, Vec::new())
                .await
                .context("clearing")?;
        }
        let n = wait_for_count(&mut cleared, total as u64, run.idle_timeout()).await;
        eprintln!("retained: cleared {n} of {total}");
        let mut ignored = None;
        disconnect_publisher(clearer, clear_driver, &mut ignored).await;
    }
    let mut publisher_error = None;
    for (client, driver) in clients {
        disconnect_publisher(client, driver, &mut publisher_error).await;
    }
    let _ = stop_tx.send(true);
    Ok(error.is_none() && publisher_error.is_none() && tally.unique == total)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.payload_bytes < HEADER_BYTES {
        bail!("--payload-bytes must be at least {HEADER_BYTES}");
    }
    ensure!(
        args.duration > 0.0 && args.warmup >= 0.0,
        "--duration must be > 0, --warmup >= 0"
    );
    ensure!(args.inflight > 0, "--inflight must be at least 1");
    let unique = format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis()
    );
    let run = Arc::new(Run {
        prefix: args
            .prefix
            .clone()
            .unwrap_or_else(|| format!("mqtt-bench/{unique}")),
        client_prefix: format!("mqtt-bench-{unique}"),
        t0: Instant::now(),
        args,
    });
    let mut ok = true;
    for &scenario in &run.args.scenario {
        let passed = match scenario {
            Scenario::FanoutQos0 | Scenario::FanoutQos1 => fanout(run.clone(), scenario).await,
            Scenario::Retained => retained(run.clone()).await,
        }
        .with_context(|| name_of(scenario))?;
        ok &= passed;
    }
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
