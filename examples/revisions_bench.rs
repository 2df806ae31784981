//! Load generator for issue 17's targets: conditional publish against unconditional publish over
//! HTTP, one watcher following a stream of changes, and the memory of idle watchers.
//! `bench/revisions.sh` runs it against retaind on Postgres and on SQLite.
//!
//! ```sh
//! cargo run --release --example revisions_bench -- --http http://127.0.0.1:8080 \
//!     --mqtt-port 1883 --scenario cas,watch-lag,idle-watchers --pid <retaind's pid>
//! ```
//!
//! Scenarios (one machine-readable `scenario=` line each on stdout; progress on stderr):
//! - `cas`: `--connections` clients (default 32), each on a topic of its own, publish 256-byte
//!   retained messages over HTTP as fast as they are answered: unconditionally, then each with
//!   `If-Match` naming the revision its previous publish answered with (the ETag), so every
//!   conditional publish is checked and succeeds. Four phases of `--duration` seconds,
//!   unconditional and conditional in turn (U C U C), so that drift during the run falls on
//!   both; each rate is the mean of its two phases. Any answer but 200 is counted as a failure.
//! - `watch-lag`: one watcher follows `bench/watch/#` from the current set on; `--publishers`
//!   MQTT clients (4) publish retained QoS 1 messages to 5,000 topics each, together at
//!   `--rate` (20,000) per second, for `--warmup` + `--duration` seconds. Each payload starts with
//!   its publish time; lag is the publish call to the watcher's receipt of the put event, over
//!   changes published inside the window. A topic changed twice before the watcher reads it is
//!   one event (the watch gives each topic's latest state), so `received` may trail `published`
//!   when the watcher falls behind.
//! - `idle-watchers`: the resident memory of `--pid` (retaind) before and after `--watchers`
//!   (1,000) watchers are opened on a filter nothing matches and left idle for 5 s.
//!
//! Exit status 1 when a request failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use base64::Engine;
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, MqttOptions, QoS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Cas,
    WatchLag,
    IdleWatchers,
}

#[derive(Parser)]
struct Args {
    /// retaind's HTTP API, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    http: String,
    /// retaind's MQTT port on 127.0.0.1 (for `watch-lag`).
    #[arg(long, default_value_t = 1883)]
    mqtt_port: u16,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cas,watch-lag,idle-watchers"
    )]
    scenario: Vec<Scenario>,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of unmeasured load before `watch-lag`'s window.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// HTTP clients of `cas`.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// MQTT publishers of `watch-lag`.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Changes per second, all publishers together, in `watch-lag`.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Watchers opened by `idle-watchers`.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// retaind's process id, for `idle-watchers`' memory.
    #[arg(long)]
    pid: Option<u32>,
}

const PAYLOAD_BYTES: usize = 256;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut failed = false;
    for scenario in &args.scenario {
        let ok = match scenario {
            Scenario::Cas => cas(&args).await?,
            Scenario::WatchLag => watch_lag(&args).await?,
            Scenario::IdleWatchers => idle_watchers(&args).await?,
        };
        failed |= !ok;
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A payload of [`PAYLOAD_BYTES`] that starts with its publish time, in decimal ns.
fn stamped_payload() -> Vec<u8> {
    let mut payload = format!("{:020}", now_ns()).into_bytes();
    payload.resize(PAYLOAD_BYTES, b'x');
    payload
}

fn etag(response: &reqwest::Response) -> Option<String> {
    Some(response.headers().get("etag")?.to_str().ok()?.to_owned())
}

async fn cas(args: &Args) -> anyhow::Result<bool> {
    let failures = Arc::new(AtomicU64::new(0));
    let mut rates = [Vec::new(), Vec::new()];
    for phase in 0..4 {
        let conditional = phase % 2 == 1;
        let stop = Instant::now() + Duration::from_secs(args.duration);
        let mut tasks = Vec::new();
        for i in 0..args.connections {
            let url = format!("{}/topics/bench%2Fcas%2F{i}?qos=1&retain=true", args.http);
            let failures = failures.clone();
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let body = vec![b'v'; PAYLOAD_BYTES];
                // The revision to name: the answer to an unconditional publish first.
                let mut revision = match client.post(&url).body(body.clone()).send().await {
                    Ok(r) if r.status() == 200 => etag(&r),
                    _ => None,
                };
                let mut done = 0u64;
                while Instant::now() < stop {
                    let mut request = client.post(&url).body(body.clone());
                    if conditional {
                        let Some(r) = &revision else { break };
                        request = request.header("if-match", r);
                    }
                    match request.send().await {
                        Ok(r) if r.status() == 200 => {
                            revision = etag(&r);
                            done += 1;
                        }
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                done
            }));
        }
        let started = Instant::now();
        let mut total = 0;
        for task in tasks {
            total += task.await?;
        }
        let rate = total as f64 / started.elapsed().as_secs_f64();
        eprintln!(
            "cas: phase {} ({}): {rate:.0} publishes/s",
            phase + 1,
            if conditional {
                "If-Match"
            } else {
                "unconditional"
            }
        );
        rates[usize::from(conditional)].push(rate);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (plain, conditional) = (mean(&rates[0]), mean(&rates[1]));
    let failures = failures.load(Ordering::Relaxed);
    println!(
        "scenario=cas connections={} unconditional_per_s={plain:.0} conditional_per_s={conditional:.0} \
         ratio={:.2} failures={failures}",
        args.connections,
        conditional / plain
    );
    Ok(failures == 0)
}

/// Reads a watch's event stream: calls `on_event(event, data)` for each event.
async fn follow_events(
    response: reqwest::Response,
    mut on_event: impl FnMut(&str, &str),
) -> anyhow::Result<()> {
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    let (mut event, mut data) = (String::new(), String::new());
    while let Some(chunk) = stream.next().await {
        buffer.extend_from_slice(&chunk?);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line = std::str::from_utf8(&line[..end])?.trim_end_matches('\r');
            if line.is_empty() {
                if !event.is_empty() || !data.is_empty() {
                    on_event(&event, &data);
                }
                event.clear();
                data.clear();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim_start().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
    }
    Ok(())
}

async fn watch_lag(args: &Args) -> anyhow::Result<bool> {
    let url = format!(
        "{}/retainedMessage-watch?topicFilter=bench%2Fwatch%2F%23",
        args.http
    );
    let response = reqwest::Client::new().get(&url).send().await?;
    ensure!(
        response.status() == 200,
        "watch answered {}",
        response.status()
    );
    let window_start = Arc::new(AtomicU64::new(u64::MAX));
    let window_end = Arc::new(AtomicU64::new(u64::MAX));
    let synced = Arc::new(tokio::sync::Notify::new());
    // Microseconds of lag, and how many changes of the window arrived.
    let seen = Arc::new(std::sync::Mutex::new((
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?,
        0u64,
    )));
    let resyncs = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (start, end, synced) = (window_start.clone(), window_end.clone(), synced.clone());
        let resyncs = resyncs.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            follow_events(response, |event, data| match event {
                "synced" => synced.notify_one(),
                "resync" => {
                    // The watch fell behind and ended: nothing after this arrives.
                    eprintln!("watch-lag: resync: {data}");
                    resyncs.fetch_add(1, Ordering::Relaxed);
                }
                "put" => {
                    let now = now_ns();
                    let Ok(json) = serde_json::from_str::<serde_json::Value>(data) else {
                        return;
                    };
                    let payload = json["payload"].as_str().unwrap_or_default();
                    let Ok(payload) = base64::engine::general_purpose::STANDARD.decode(payload)
                    else {
                        return;
                    };
                    let Some(sent) = payload
                        .get(..20)
                        .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u64>().ok())
                    else {
                        return;
                    };
                    let (start, end) = (start.load(Ordering::Relaxed), end.load(Ordering::Relaxed));
                    if sent >= start && sent < end {
                        let mut seen = seen.lock().unwrap();
                        seen.1 += 1;
                        let _ = seen.0.record((now.saturating_sub(sent) / 1000).max(1));
                    }
                }
                _ => {}
            })
            .await
        })
    };
    tokio::time::timeout(Duration::from_secs(30), synced.notified())
        .await
        .context("the watch did not send `synced` within 30 s")?;

    let running = Arc::new(AtomicBool::new(true));
    let published = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let per_publisher = args.rate as f64 / args.publishers as f64;
    let mut publishers = Vec::new();
    for p in 0..args.publishers {
        let mut options = MqttOptions::new(format!("watch-bench-{p}"), "127.0.0.1", args.mqtt_port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_inflight(200);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let failures_loop = failures.clone();
        let running_loop = running.clone();
        tokio::spawn(async move {
            loop {
                if eventloop.poll().await.is_err() {
                    // The publisher's own disconnect at the end is no failure.
                    if !running_loop.load(Ordering::Relaxed) {
                        return;
                    }
                    failures_loop.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        let (running, published, start, end) = (
            running.clone(),
            published.clone(),
            window_start.clone(),
            window_end.clone(),
        );
        publishers.push(tokio::spawn(async move {
            // Paced in 10 ms ticks, the rate spread evenly over them.
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut sent = 0u64;
            let began = Instant::now();
            while running.load(Ordering::Relaxed) {
                tick.tick().await;
                let due = began.elapsed().as_secs_f64() * per_publisher;
                while (sent as f64) < due {
                    let topic = format!("bench/watch/{p}/{}", sent % 5000);
                    let payload = stamped_payload();
                    let stamp: u64 = std::str::from_utf8(&payload[..20])
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    if client
                        .publish(topic, QoS::AtLeastOnce, true, payload)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let (s, e) = (start.load(Ordering::Relaxed), end.load(Ordering::Relaxed));
                    if stamp >= s && stamp < e {
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                    sent += 1;
                }
            }
            let _ = client.disconnect().await;
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let start = now_ns();
    window_start.store(start, Ordering::Relaxed);
    window_end.store(start + args.duration * 1_000_000_000, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    running.store(false, Ordering::Relaxed);
    for p in publishers {
        let _ = p.await;
    }
    // Let the watcher drain what was published in the window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    watcher.abort();
    let published = published.load(Ordering::Relaxed);
    let failures = failures.load(Ordering::Relaxed);
    let resyncs = resyncs.load(Ordering::Relaxed);
    let (lags, received) = &*seen.lock().unwrap();
    let ms = |q: f64| lags.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "scenario=watch-lag rate={} publishers={} published={published} received={received} \
         changes_per_s={:.0} lag_p50_ms={:.2} lag_p99_ms={:.2} lag_max_ms={:.2} failures={failures} \
         resyncs={resyncs}",
        args.rate,
        args.publishers,
        published as f64 / args.duration as f64,
        ms(0.5),
        ms(0.99),
        lags.max() as f64 / 1000.0,
    );
    Ok(published > 0 && *received > 0 && failures == 0 && resyncs == 0)
}

async fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = tokio::fs::read_to_string(format!("/proc/{pid}/status")).await?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

async fn idle_watchers(args: &Args) -> anyhow::Result<bool> {
    let Some(pid) = args.pid else {
        bail!("idle-watchers needs --pid");
    };
    let before = rss_kib(pid).await?;
    let url = format!(
        "{}/retainedMessage-watch?topicFilter=bench%2Fidle%2F%23",
        args.http
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let mut streams = Vec::with_capacity(args.watchers);
    for _ in 0..args.watchers {
        let response = client.get(&url).send().await?;
        ensure!(
            response.status() == 200,
            "watch answered {}",
            response.status()
        );
        // Hold the stream open, reading whatever comes (keep-alives).
        streams.push(tokio::spawn(follow_events(response, |_, _| {})));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = rss_kib(pid).await?;
    let delta_mib = (after.saturating_sub(before)) as f64 / 1024.0;
    println!(
        "scenario=idle-watchers watchers={} rss_before_mib={:.1} rss_after_mib={:.1} delta_mib={delta_mib:.1} \
         per_watcher_kib={:.1}",
        args.watchers,
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / args.watchers as f64
    );
    for s in streams {
        s.abort();
    }
    Ok(true)
}
