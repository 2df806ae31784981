//! What a broker holds for devices that are away: `--sessions` MQTT 3.1.1 clients connect with
//! clean session 0, subscribe at QoS 1 to `<prefix>/#` and leave (what the broker keeps for
//! each is read then: `per_session_b`); then one client publishes
//! `--messages` QoS 1 messages to `<prefix>/all`, each acknowledged before the next window
//! goes, which every offline session is owed. The broker's resident memory (VmRSS) is read
//! before and after; for retaind also its count of queued memory and what it dropped, from
//! `/metrics` (`--metrics`). Run by `bench/offline_queues.sh`.

use std::time::{Duration, Instant};

use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[path = "common/proc_status.rs"]
mod proc_status;
use proc_status::rss_kb;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long)]
    port: u16,
    /// The broker's process id, whose VmRSS is read from /proc.
    #[arg(long)]
    pid: u32,
    /// retaind's `/metrics` URL; none for another broker.
    #[arg(long)]
    metrics: Option<String>,
    #[arg(long, default_value_t = 4_000)]
    sessions: usize,
    #[arg(long, default_value_t = 5_000)]
    messages: usize,
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Seconds to let the broker settle before each reading.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    #[arg(long, default_value = "bench-away")]
    prefix: String,
}

fn options(args: &Args, id: &str, clean: bool) -> MqttOptions {
    let mut o = MqttOptions::new(id, args.host.clone(), args.port);
    o.set_clean_session(clean);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_inflight(100);
    o
}

/// Connects with a persistent session, subscribes to the fleet's filter and leaves.
async fn leave_a_session(args: &Args, n: usize) -> anyhow::Result<()> {
    let id = format!("{}-{n}", args.prefix);
    let (client, mut events) = AsyncClient::new(options(args, &id, false), 8);
    client
        .subscribe(format!("{}/#", args.prefix), QoS::AtLeastOnce)
        .await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await? {
            break;
        }
    }
    client.disconnect().await?;
    while events.poll().await.is_ok() {}
    Ok(())
}

/// Publishes every message and waits for each PUBACK.
async fn publish(args: &Args) -> anyhow::Result<()> {
    let id = format!("{}-publisher", args.prefix);
    let (client, mut events) = AsyncClient::new(options(args, &id, true), 200);
    let topic = format!("{}/all", args.prefix);
    let payload = vec![b'x'; args.payload_bytes];
    let sender = {
        let client = client.clone();
        let (topic, count) = (topic.clone(), args.messages);
        tokio::spawn(async move {
            for _ in 0..count {
                client
                    .publish(&topic, QoS::AtLeastOnce, false, payload.clone())
                    .await?;
            }
            anyhow::Ok(())
        })
    };
    let mut acked = 0;
    while acked < args.messages {
        if let Event::Incoming(Packet::PubAck(_)) = events.poll().await? {
            acked += 1;
        }
    }
    sender.await??;
    client.disconnect().await?;
    Ok(())
}

/// retaind's own counts: queued memory, what it dropped for lack of it, the sessions it
/// holds offline and those it ended to keep within `--mqtt-max-offline-sessions`.
async fn retaind_counts(url: &str) -> anyhow::Result<[f64; 4]> {
    let page = reqwest::get(url).await?.text().await?;
    let value = |series: &str| {
        page.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    Ok([
        value("retaind_mqtt_queue_memory_bytes"),
        value(r#"retaind_mqtt_messages_dropped_total{reason="queue_memory"}"#),
        value("retaind_mqtt_offline_sessions"),
        value("retaind_mqtt_sessions_evicted_total"),
    ])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = std::sync::Arc::new(Args::parse());
    let settle = Duration::from_secs_f64(args.settle);
    let empty = rss_kb(args.pid)?;
    let start = Instant::now();
    let mut next = 0;
    while next < args.sessions {
        let batch: Vec<_> = (next..args.sessions.min(next + 100))
            .map(|n| {
                let args = args.clone();
                tokio::spawn(async move { leave_a_session(&args, n).await })
            })
            .collect();
        for b in batch {
            b.await??;
        }
        next += 100;
    }
    tokio::time::sleep(settle).await;
    let before = rss_kb(args.pid)?;
    let sessions_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    publish(&args).await?;
    let publish_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let after = rss_kb(args.pid)?;
    let [counted, dropped, offline, evicted] = match &args.metrics {
        Some(url) => retaind_counts(url).await?,
        None => [f64::NAN; 4],
    };
    let owed = (args.sessions * args.messages) as f64;
    println!(
        "RESULT sessions={} messages={} owed={owed} sessions_s={sessions_s:.2} publish_s={publish_s:.2} \
         rss_empty_kb={empty} rss_before_kb={before} per_session_b={:.0} rss_after_kb={after} \
         grew_mib={:.1} counted_mib={:.1} dropped={dropped} offline={offline} evicted={evicted}",
        args.sessions,
        args.messages,
        (before as f64 - empty as f64) * 1024.0 / args.sessions as f64,
        (after as f64 - before as f64) / 1024.0,
        counted / (1 << 20) as f64,
    );
    Ok(())
}
