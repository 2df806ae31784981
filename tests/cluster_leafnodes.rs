//! Nodes of one service on two NATS servers joined by a leaf node connection, each server with
//! JetStream in a domain of its own, as an edge site's leaf server beside a central hub is
//! set up. The leaf's node names the hub's domain (`--cluster-jetstream-domain`), so both
//! nodes keep their interest in the one bucket and route to each other. Without it the leaf's
//! node would keep its interest in the leaf's JetStream, where the hub's node never sees it.

mod common;

use std::time::{Duration, Instant};

use common::mqtt::{Qos5, V5, v5_options, within};
use common::nats::Nats;
use common::{Backend, FreshDb, TestApp, fresh_db, spawn_app_with, test_config, topic};
use retaind::app::ServeConfig;
use retaind::cluster::Cluster;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A hub with JetStream domain `hub` that accepts leaf connections, and a leaf server with
/// JetStream domain `leaf` connected to it.
async fn hub_and_leaf(dir: &std::path::Path) -> (Nats, Nats) {
    let leaf_port = free_port();
    let hub_conf = dir.join("hub.conf");
    std::fs::write(
        &hub_conf,
        format!("jetstream {{ domain: hub }}\nleafnodes {{ listen: \"127.0.0.1:{leaf_port}\" }}\n"),
    )
    .unwrap();
    let leaf_conf = dir.join("leaf.conf");
    std::fs::write(
        &leaf_conf,
        format!(
            "jetstream {{ domain: leaf }}\n\
             leafnodes {{ remotes: [ {{ url: \"nats-leaf://127.0.0.1:{leaf_port}\" }} ] }}\n"
        ),
    )
    .unwrap();
    let hub = Nats::start_with(&["-c", hub_conf.to_str().unwrap()]).await;
    let leaf = Nats::start_with(&["-c", leaf_conf.to_str().unwrap()]).await;
    // The leaf connection is up once a message published on the leaf reaches the hub.
    let on_hub = async_nats::connect(hub.url()).await.unwrap();
    let on_leaf = async_nats::connect(leaf.url()).await.unwrap();
    let mut probe = on_hub.subscribe("probe").await.unwrap();
    on_hub.flush().await.unwrap();
    within("the leaf connection", async {
        loop {
            on_leaf.publish("probe", "?".into()).await.unwrap();
            on_leaf.flush().await.unwrap();
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), {
                use futures_util::StreamExt;
                probe.next()
            })
            .await
            {
                return;
            }
        }
    })
    .await;
    (hub, leaf)
}

/// A node of the service whose database is `db`, on the NATS at `url`.
async fn node(db: FreshDb, url: &str, edit: impl FnOnce(&mut ServeConfig)) -> TestApp {
    let mut config = test_config(&db.url);
    config.cluster_url = Some(url.to_owned());
    edit(&mut config);
    spawn_app_with(db, config).await
}

fn cluster(app: &TestApp) -> &Cluster {
    app.running.as_ref().unwrap().broker.cluster().unwrap()
}

/// Waits until `app` knows another node wants `t`.
async fn until_sends(app: &TestApp, t: &str) {
    let t = topic(t);
    within("the other node's interest", async {
        while cluster(app).in_doubt() || !cluster(app).sends(&t) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_node_on_a_leaf_server_shares_the_hub_s_bucket_and_routes_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, leaf) = hub_and_leaf(dir.path()).await;
    let db = fresh_db(Backend::Postgres).await;
    let shared = FreshDb::shared(&db.url);
    let a = node(db, &hub.url(), |_| {}).await;
    let b = node(shared, &leaf.url(), |c| {
        c.cluster_jetstream_domain = Some("hub".into());
    })
    .await;

    let (mut on_a, _) = V5::connect(v5_options(&a, "on-a")).await;
    let (mut on_b, _) = V5::connect(v5_options(&b, "on-b")).await;
    on_a.subscribe("to-a/#", Qos5::AtLeastOnce).await;
    on_b.subscribe("to-b/#", Qos5::AtLeastOnce).await;
    until_sends(&b, "to-a/x").await;
    until_sends(&a, "to-b/x").await;

    on_b.publish("to-a/x", Qos5::AtLeastOnce, false, b"from the leaf")
        .await;
    let got = on_a.next_publish().await;
    assert_eq!(
        (&*got.topic, &got.payload[..]),
        (&b"to-a/x"[..], &b"from the leaf"[..])
    );
    on_a.publish("to-b/x", Qos5::AtLeastOnce, false, b"from the hub")
        .await;
    let got = on_b.next_publish().await;
    assert_eq!(
        (&*got.topic, &got.payload[..]),
        (&b"to-b/x"[..], &b"from the hub"[..])
    );
}

/// A domain no server serves, or one that is not a subject token: the node does not start,
/// and says why, rather than serve as an island.
#[tokio::test]
async fn a_domain_nobody_serves_or_that_cannot_be_one_stops_the_node() {
    let nats = Nats::start().await;
    for (domain, said) in [
        ("nowhere", "JetStream"),
        ("hub.two", "--cluster-jetstream-domain \"hub.two\" must be"),
    ] {
        let db = fresh_db(Backend::Postgres).await;
        let mut config = test_config(&db.url);
        config.cluster_url = Some(nats.url());
        config.cluster_jetstream_domain = Some(domain.into());
        config.db_startup_wait = Duration::ZERO;
        let started = Instant::now();
        let err = retaind::app::start(&config, retaind::store::Clock::manual(common::T0_MS))
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains(said), "{domain}: {err}");
        assert!(started.elapsed() < Duration::from_secs(20), "{domain}");
    }
}
