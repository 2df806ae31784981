//! A benchmark, not a test (ignored unless asked for; `bench/drain.sh` runs it): a node with
//! `BENCH_CLIENTS` persistent MQTT 5 sessions is stopped with a drain time of
//! `BENCH_DRAIN_MS`, and each client, once asked to leave, reconnects to the other node and
//! resumes its session there, handed over live. Printed: how long until all had resumed, how
//! many got their session back, how many were handed over live (the rest were taken as stored,
//! the drained node no longer answering), and the CONNACK latency on the other node (from the
//! reconnect's start). `BENCH_CLUSTER_DB_CONNECTIONS` sets both nodes'
//! `--cluster-db-connections`, for the baseline in the same run. `BENCH_OTHER_FILTERS` (default
//! 0): as many more filters, 1,000 per client, subscribed on the node the clients move to before
//! the drain, so that the drained node knows that many keys of it. Nodes in this process, a
//! nats-server and a Postgres database of the run's own; the clients share the 2 cores.
//!
//! Also (`a_crowd_leaves_while_another_subscribes`): `BENCH_CLIENTS` clients of node A, each
//! subscribed to a filter of its own, close their connections at once while one more client
//! of A subscribes every 10 ms until node B no longer sends any of the crowd's topics (A's
//! interest withdrawn); printed: how long that took, and those SUBACKs' latency.

mod common;

use std::time::{Duration, Instant};

use common::TestApp;
use common::mqtt::raw::{Raw, build};
use common::nats::Nats;

fn persistent(id: &str, clean: bool) -> Vec<u8> {
    build::connect(id, clean, 60, Some(&[0x11, 0, 0, 1, 0x2C]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/drain.sh"]
async fn drain_and_resume_elsewhere() {
    let n = common::bench_setting("BENCH_CLIENTS", 1000) as usize;
    let drain = Duration::from_millis(common::bench_setting("BENCH_DRAIN_MS", 1000));
    let pool = common::bench_setting("BENCH_CLUSTER_DB_CONNECTIONS", 8) as u32;
    let others = common::bench_setting("BENCH_OTHER_FILTERS", 0) as usize;
    let nats = Nats::start().await;
    let nodes = common::cluster_nodes_with(&nats.url(), 2, |c| {
        c.mqtt_drain_time = drain;
        c.cluster_db_connections = pool;
        c.mqtt_max_subscriptions = 1000;
    })
    .await;
    let [a, b] = <[TestApp; 2]>::try_from(nodes).ok().unwrap();
    let a_addr = a.mqtt_addr;
    let mut held = Vec::new();
    for c in 0..others.div_ceil(1000) {
        let (mut raw, _) = Raw::connect(
            &a,
            &build::connect(&format!("other-{c}"), true, 60, Some(&[])),
        )
        .await;
        let filters = (others - c * 1000).min(1000);
        for f in 0..filters {
            let pkid = u16::try_from(f + 1).unwrap();
            raw.send(&build::subscribe(
                pkid,
                &format!("other/{c}/{f}/+"),
                1,
                Some(&[]),
            ))
            .await;
        }
        for _ in 0..filters {
            raw.expect(9).await;
        }
        held.push(raw);
    }
    if others > 0 {
        let last = common::topic(&format!(
            "other/{}/{}/x",
            (others - 1) / 1000,
            (others - 1) % 1000
        ));
        while !common::cluster_of(&b).sends(&last) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut clients = Vec::new();
    for i in 0..n {
        let id = format!("bench-{i}");
        let (mut raw, _) = Raw::connect(&b, &persistent(&id, true)).await;
        raw.send(&build::subscribe(1, &format!("inbox/{i}"), 1, Some(&[])))
            .await;
        raw.expect(9).await;
        clients.push(tokio::spawn(async move {
            let _ = raw.until_closed().await;
            let asked = Instant::now();
            let mut raw = Raw::open_addr(a_addr).await;
            raw.send(&persistent(&id, false)).await;
            let ack = raw.expect(2).await;
            (asked.elapsed(), ack.body[0] == 1)
        }));
    }
    // Every session's filter known on A before the drain starts, and A alive to B.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while common::cluster_of(&b).live_nodes() < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let stopping = tokio::spawn(b.stop());
    let mut latencies = Vec::new();
    let mut resumed = 0;
    for client in clients {
        let (latency, present) = client.await.unwrap();
        latencies.push(latency);
        resumed += usize::from(present);
    }
    let all = started.elapsed();
    stopping.await.unwrap();
    latencies.sort();
    let at = |q: usize| latencies[(n * q / 100).min(n - 1)];
    let missed = common::cluster_of(&a).stats().handovers_missed;
    println!(
        "drain clients={n} drain_ms={} cluster_db_connections={pool} other_filters={others}: \
         all resumed after {} ms, \
         sessions present {resumed}/{n}, handed over live {}/{n}, CONNACK on the other node \
         p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
        drain.as_millis(),
        all.as_millis(),
        n as u64 - missed,
        at(50).as_secs_f64() * 1e3,
        at(99).as_secs_f64() * 1e3,
        latencies[n - 1].as_secs_f64() * 1e3,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/drain.sh"]
async fn a_crowd_leaves_while_another_subscribes() {
    let n = common::bench_setting("BENCH_CLIENTS", 1000) as usize;
    let nats = Nats::start().await;
    let nodes = common::cluster_nodes_with(&nats.url(), 2, |_| {}).await;
    let [a, b] = <[TestApp; 2]>::try_from(nodes).ok().unwrap();
    let mut crowd = Vec::with_capacity(n);
    for i in 0..n {
        let connect = build::connect(&format!("crowd-{i}"), true, 60, Some(&[]));
        let (mut raw, _) = Raw::connect(&a, &connect).await;
        raw.send(&build::subscribe(1, &format!("crowd/{i}"), 0, Some(&[])))
            .await;
        raw.expect(9).await;
        crowd.push(raw);
    }
    let topics: Vec<_> = (0..n)
        .map(|i| common::topic(&format!("crowd/{i}")))
        .collect();
    while !topics.iter().all(|t| common::cluster_of(&b).sends(t)) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut probe, _) = Raw::connect(&a, &build::connect("probe", true, 60, Some(&[]))).await;
    let started = Instant::now();
    drop(crowd);
    let mut subacks = Vec::new();
    let mut withdrawn = None;
    let mut k: u16 = 1;
    while withdrawn.is_none() && started.elapsed() < Duration::from_secs(60) {
        let asked = Instant::now();
        probe
            .send(&build::subscribe(k, &format!("probe/{k}"), 0, Some(&[])))
            .await;
        probe.expect(9).await;
        subacks.push(asked.elapsed());
        k += 1;
        if withdrawn.is_none() && !topics.iter().any(|t| common::cluster_of(&b).sends(t)) {
            withdrawn = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    subacks.sort();
    let at = |q: usize| subacks[(subacks.len() * q / 100).min(subacks.len() - 1)];
    println!(
        "crowd clients={n}: interest withdrawn after {} ms; SUBACK on the same node meanwhile \
         ({} subscribes) p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
        withdrawn.unwrap_or_default().as_millis(),
        subacks.len(),
        at(50).as_secs_f64() * 1e3,
        at(99).as_secs_f64() * 1e3,
        subacks[subacks.len() - 1].as_secs_f64() * 1e3,
    );
}
