//! A survivor whose adoptions of a dead node's sessions the database does not answer tries
//! again at every heartbeat. Its log says so when that starts and when the database answers
//! again, not at every pass (before: a warning a beat apart, for as long as it lasted), and
//! a counter counts every failure.
//!
//! One test in this binary: it installs the process's log subscriber.

mod common;

use std::time::Duration;

use common::cluster_of as cluster;
use common::cluster_rows::{hold_session_queues, sessions_held, sessions_of};
use common::logs::Captured;
use common::mqtt::within;
use common::nats::Nats;
use common::{Backend, TestApp, fresh_db, spawn_app_with, test_config};
use retaind::cluster::Liveness;
use sqlx::Connection;

async fn failures(app: &TestApp) -> f64 {
    let page = app.get("/metrics").await.text().await.unwrap();
    common::metric_value(&page, "retaind_cluster_adoption_failures_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoptions_the_database_does_not_answer_are_logged_once_per_run_and_all_counted() {
    let captured = Captured::install(tracing::Level::INFO);
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let direct = db.url.clone();
    let mut config = test_config(&db.url);
    config.cluster_url = Some(nats.url());
    config.store_timeout = Duration::from_secs(2);
    // A beat every 0.4 s, so that a stall of a few seconds spans many passes.
    config.cluster_dead_after = Liveness::new(Duration::from_secs(2)).unwrap();
    let a = spawn_app_with(db, config).await;
    let node = cluster(&a).node().to_owned();
    assert_eq!(failures(&a).await, 0.0);

    // The adoptions wait on a lock on the sessions' queues: each pass gives its adoption up.
    let mut admin = sqlx::PgConnection::connect(&direct).await.unwrap();
    let mut holder = hold_session_queues(&direct).await;
    sessions_of(&mut admin, "gone", 10).await;
    within("several passes' adoptions to fail", async {
        while failures(&a).await < 4.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(sessions_held(&mut admin, &node).await, 0);
    let failed = failures(&a).await;

    let warnings: Vec<String> = captured
        .lines()
        .into_iter()
        .filter(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && l.contains("adopt"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "{failed} passes failed; one warning for them all:\n{warnings:#?}"
    );
    assert!(warnings[0].contains("cannot adopt"), "{warnings:#?}");

    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    within("the sessions adopted once the database answers", async {
        while sessions_held(&mut admin, &node).await < 10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let again: Vec<String> = captured
        .lines()
        .into_iter()
        .filter(|l| l.contains("the database answers adoptions again"))
        .collect();
    assert_eq!(again.len(), 1, "{again:#?}");
    let run: f64 = again[0]
        .split("failures=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("how many failed: {}", again[0]));
    assert!(
        run >= failed,
        "the run's end says {run}; {failed} were counted during it"
    );
    assert_eq!(
        failures(&a).await,
        run,
        "every failure counted, none after the answer"
    );
}
