//! A benchmark, not a test (ignored unless asked for; `bench/sessions.sh` runs it): what the
//! persistent sessions a single node saves at a stop and takes up at the next start
//! (decision 024) cost the restart. `BENCH_SESSIONS` MQTT 5 clients (session expiry 1 h) each
//! subscribe to their own topic and to `all/#` and leave; `BENCH_QUEUED` QoS 1 publishes of
//! 256 B to `all/x` are queued for every one of them. Then the node is stopped and started
//! again on the same database, and every client resumes and receives its queue. Printed, for
//! the store in `BENCH_STORE` (`sqlite` or `postgres`): the stop, the start (to the moment
//! the node takes connections), and the time until every client has its queue back. Run with
//! `BENCH_SESSIONS=0` for the baseline: the same node's stop and start with nothing saved.

mod common;

use std::time::Instant;

use common::mqtt::raw::{Raw, build};
use common::{Backend, encode};

fn persistent(id: &str, clean: bool) -> Vec<u8> {
    build::connect(id, clean, 60, Some(&[0x11, 0, 0, 0x0E, 0x10]))
}

/// Runs `work(i)` for `0..n`, `lanes` at a time.
async fn in_lanes<F, Fut>(n: usize, lanes: usize, work: F)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let tasks: Vec<_> = (0..lanes)
        .map(|lane| {
            let work = work.clone();
            tokio::spawn(async move {
                for i in (lane..n).step_by(lanes) {
                    work(i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/sessions.sh"]
async fn stop_and_start_with_saved_sessions() {
    let n = common::bench_setting("BENCH_SESSIONS", 10_000) as usize;
    let queued = common::bench_setting("BENCH_QUEUED", 10) as usize;
    let backend = match std::env::var("BENCH_STORE").as_deref() {
        Ok("postgres") => Backend::Postgres,
        _ => Backend::Sqlite,
    };
    let db = common::fresh_db(backend).await;
    let mut config = common::test_config(&db.url);
    config.mqtt_max_connections = config.mqtt_max_connections.max(n * 2);
    let app = common::spawn_app_with(db, config.clone()).await;
    let addr = app.mqtt_addr;
    in_lanes(n, 16, move |i| async move {
        let mut raw = Raw::open_addr(addr).await;
        raw.send(&persistent(&format!("s-{i}"), true)).await;
        raw.expect(2).await;
        raw.send(&build::subscribe(1, &format!("own/{i}"), 1, Some(&[])))
            .await;
        raw.expect(9).await;
        raw.send(&build::subscribe(2, "all/#", 1, Some(&[]))).await;
        raw.expect(9).await;
    })
    .await;
    app.until_no_connections().await;
    let payload = "x".repeat(256);
    for _ in 0..queued {
        let res = app
            .publish(
                format!("/topics/{}?qos=1", encode("all/x")),
                payload.clone(),
            )
            .await;
        assert_eq!(res.status(), 200);
    }

    let stopping = Instant::now();
    let db = app.stop().await;
    let stop = stopping.elapsed();
    let starting = Instant::now();
    let app = common::spawn_app_with(db, config).await;
    let start = starting.elapsed();
    let held = app.running.as_ref().unwrap().broker.sessions_held();
    assert_eq!(held, n, "every session taken up");

    let addr = app.mqtt_addr;
    let resuming = Instant::now();
    in_lanes(n, 16, move |i| async move {
        let mut raw = Raw::open_addr(addr).await;
        raw.send(&persistent(&format!("s-{i}"), false)).await;
        let ack = raw.expect(2).await;
        assert_eq!(ack.body[0], 1, "session present");
        for _ in 0..queued {
            let p = raw.expect(3).await.publish(true);
            raw.send(&build::ack(0x40, p.pkid)).await;
        }
    })
    .await;
    let resume = resuming.elapsed();
    println!(
        "sessions store={} sessions={n} queued={queued}: stop {} ms, start {} ms, every client \
         resumed with its queue in {} ms",
        if backend == Backend::Postgres {
            "postgres"
        } else {
            "sqlite"
        },
        stop.as_millis(),
        start.as_millis(),
        resume.as_millis()
    );
}
