//! During a database outage the log stays readable: every request keeps its one access-log
//! line, but the failures are logged by the store once per kind and then in summary, not once
//! per failed request (measured before: 40,000 warning and error lines in 10 s).
//!
//! One test in this binary: it installs the process's log subscriber.

mod common;

use std::time::{Duration, Instant};

use common::logs::Captured;
use common::proxy::{Mode, Proxy};
use common::{Backend, fresh_db, postgres_host_port, spawn_app_with, test_config};

fn at_least_warn(line: &str) -> bool {
    line.contains(" WARN ") || line.contains(" ERROR ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_logged_in_summary_not_once_per_request() {
    let captured = Captured::install(tracing::Level::INFO);

    let db = fresh_db(Backend::Postgres).await;
    let proxy = Proxy::start(postgres_host_port(&db.url)).await;
    let mut config = test_config(&common::postgres_url_via(&db.url, proxy.addr));
    config.store_timeout = Duration::from_millis(500);
    let app = spawn_app_with(db, config).await;
    app.retain("before", "v").await;
    let before = captured.lines().len();

    proxy.fail(Mode::Refuse);
    const REQUESTS: usize = 200;
    let requests = (0..REQUESTS).map(|i| {
        let (http, url) = if i % 2 == 0 {
            (
                app.http.clone(),
                app.url(&format!("/topics/t{i}?retain=true")),
            )
        } else {
            (app.http.clone(), app.url(&format!("/retainedMessage/t{i}")))
        };
        async move {
            let req = if i % 2 == 0 {
                http.post(url).body("v")
            } else {
                http.get(url)
            };
            req.send().await.unwrap().status().as_u16()
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|&s| s == 503), "{statuses:?}");

    let during: Vec<String> = captured.lines()[before..].to_vec();
    let access = during.iter().filter(|l| l.contains("status=503")).count();
    assert_eq!(access, REQUESTS, "one access-log line per request");
    let loud: Vec<&String> = during.iter().filter(|l| at_least_warn(l)).collect();
    // One line per kind of failure (write batches, read batches, the change feed): not one per
    // request.
    assert!(loud.len() <= 6, "{} lines:\n{loud:#?}", loud.len());

    // And the rest is counted in a summary within the window (10 s).
    let started = Instant::now();
    loop {
        let summary = captured.lines()[before..]
            .iter()
            .any(|l| at_least_warn(l) && l.contains("more times like that"));
        if summary {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no summary of the repeated failures"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.restore();
}
