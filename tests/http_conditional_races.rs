//! Compare-and-set under contention (issue 17, decision 018 §3): 32 HTTP writers racing with the
//! same condition on one topic, released together. Exactly one wins (200 with an `ETag`), the
//! other 31 get 412, the store holds the winner's message under the winner's revision, and a
//! subscriber receives the winner's publish alone. On SQLite, on Postgres, and across two nodes
//! sharing one Postgres database (the condition is checked by the database, never a node's
//! cache).

mod common;

use std::sync::Arc;

use common::mqtt::{V3, v3_options};
use common::{Backend, FreshDb, TestApp, fresh_db, spawn_app, spawn_app_with, test_config};
use rumqttc::QoS;
use serde_json::Value;
use tokio::sync::Barrier;

const RACERS: usize = 32;

/// What one racer sends: a put of its own payload, or a delete.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Move {
    Put,
    Delete,
}

/// How a race ended: the winner's index and `ETag` (none for a delete).
struct Outcome {
    winner: usize,
    etag: Option<String>,
}

fn payload(round: &str, racer: usize) -> String {
    format!("{round}-racer-{racer}")
}

/// Runs one race on `topic`: racer `i` goes through `nodes[i % nodes.len()]` on a connection of
/// its own, sending `condition` and `moves(i)`; all are released at once. Insists on exactly one
/// 200 and `RACERS - 1` × 412 PreconditionFailedException.
async fn race(
    nodes: &[&TestApp],
    round: &str,
    topic: &str,
    condition: (&'static str, String),
    moves: impl Fn(usize) -> Move,
) -> Outcome {
    let start = Arc::new(Barrier::new(RACERS));
    let mut racers = Vec::new();
    for i in 0..RACERS {
        let node = nodes[i % nodes.len()];
        // A client each: one pool would queue racers behind each other's connections.
        let http = reqwest::Client::new();
        let url = node.url(&format!("/topics/{topic}?retain=true&qos=1"));
        let body = match moves(i) {
            Move::Put => payload(round, i),
            Move::Delete => String::new(),
        };
        let (name, value) = (condition.0, condition.1.clone());
        let start = start.clone();
        racers.push(tokio::spawn(async move {
            let req = http.post(url).header(name, value).body(body);
            start.wait().await;
            let res = req.send().await.expect("HTTP request");
            let status = res.status().as_u16();
            let etag = res
                .headers()
                .get("etag")
                .map(|v| v.to_str().unwrap().to_owned());
            let kind = res
                .headers()
                .get("x-amzn-errortype")
                .map(|v| v.to_str().unwrap().to_owned());
            (i, status, etag, kind)
        }));
    }
    let mut winners = Vec::new();
    let mut refused = 0;
    for racer in racers {
        let (i, status, etag, kind) = racer.await.expect("a racer");
        match status {
            200 => winners.push(Outcome { winner: i, etag }),
            412 => {
                assert_eq!(kind.as_deref(), Some("PreconditionFailedException"));
                assert_eq!(etag, None, "a loser got an ETag");
                refused += 1;
            }
            other => panic!("racer {i} got {other} ({kind:?})"),
        }
    }
    assert_eq!(
        (winners.len(), refused),
        (1, RACERS - 1),
        "{round}: exactly one racer wins"
    );
    let outcome = winners.pop().unwrap();
    assert_eq!(
        outcome.etag.is_some(),
        moves(outcome.winner) == Move::Put,
        "a put answers its ETag, a delete none"
    );
    outcome
}

/// GetRetainedMessage through `node`: status, `ETag` and body.
async fn get(node: &TestApp, topic: &str) -> (u16, Option<String>, Value) {
    let res = node.get(&format!("/retainedMessage/{topic}")).await;
    let status = res.status().as_u16();
    let etag = res
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, etag, res.json().await.unwrap())
}

fn b64(s: &str) -> Value {
    use base64::Engine;
    Value::String(base64::engine::general_purpose::STANDARD.encode(s))
}

/// The store, through every node, holds the winner's put under the winner's `ETag`.
async fn holds(nodes: &[&TestApp], topic: &str, round: &str, outcome: &Outcome) {
    for node in nodes {
        // Another node's read cache learns of the write through the change feed; the
        // revision it may serve is never another racer's.
        let deadline = tokio::time::Instant::now() + common::mqtt::DEADLINE;
        loop {
            let (status, etag, body) = get(node, topic).await;
            if etag == outcome.etag {
                assert_eq!(status, 200);
                assert_eq!(body["payload"], b64(&payload(round, outcome.winner)));
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{round}: a node serves {etag:?}, not the winner's {:?}",
                outcome.etag
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Rounds of races on one topic: create-only, then If-Match on the revision the last winner
/// got, then puts and deletes racing on one revision, then create-only again on the emptied
/// topic (or If-Match again if a put won).
async fn races_on(nodes: &[&TestApp], sub: Option<&mut V3>) {
    let topic = "cfg%2Fracy";
    let mut delivered = Vec::new();

    let created = race(
        nodes,
        "create",
        topic,
        ("If-None-Match", "*".into()),
        |_| Move::Put,
    )
    .await;
    holds(nodes, topic, "create", &created).await;
    delivered.push(payload("create", created.winner));

    let mut etag = created.etag.unwrap();
    for round in ["match-1", "match-2", "match-3"] {
        let won = race(nodes, round, topic, ("If-Match", etag.clone()), |_| {
            Move::Put
        })
        .await;
        holds(nodes, topic, round, &won).await;
        delivered.push(payload(round, won.winner));
        etag = won.etag.unwrap();
    }

    let mixed = race(nodes, "mixed", topic, ("If-Match", etag), |i| {
        if i % 2 == 0 { Move::Delete } else { Move::Put }
    })
    .await;
    let last = if let Some(etag) = mixed.etag.clone() {
        holds(nodes, topic, "mixed", &mixed).await;
        delivered.push(payload("mixed", mixed.winner));
        race(nodes, "last", topic, ("If-Match", etag), |_| Move::Put).await
    } else {
        for node in nodes {
            let deadline = tokio::time::Instant::now() + common::mqtt::DEADLINE;
            while get(node, topic).await.0 != 404 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a node still serves the deleted message"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        delivered.push(String::new());
        race(nodes, "last", topic, ("If-None-Match", "*".into()), |_| {
            Move::Put
        })
        .await
    };
    holds(nodes, topic, "last", &last).await;
    delivered.push(payload("last", last.winner));

    if let Some(sub) = sub {
        // Every winner's publish, in order, and nothing of the 31 × 6 that lost.
        let marker = nodes[0]
            .publish("/topics/cfg%2Fmarker?qos=1", "marker")
            .await;
        assert_eq!(marker.status(), 200);
        let mut got = Vec::new();
        loop {
            let p = sub.next_publish().await;
            if p.topic == "cfg/marker" {
                break;
            }
            assert_eq!(p.topic, "cfg/racy");
            got.push(String::from_utf8(p.payload.to_vec()).unwrap());
        }
        assert_eq!(got, delivered, "only the winners were delivered");
    }
}

async fn one_of_32_conditional_writers_wins(backend: Backend) {
    let app = spawn_app(backend).await;
    let (mut sub, _) = V3::connect(v3_options(&app, "watcher")).await;
    sub.subscribe("cfg/#", QoS::AtLeastOnce).await;
    races_on(&[&app], Some(&mut sub)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_32_conditional_writers_wins_on_sqlite() {
    one_of_32_conditional_writers_wins(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_32_conditional_writers_wins_on_postgres() {
    one_of_32_conditional_writers_wins(Backend::Postgres).await;
}

/// Two nodes on one Postgres database, without NATS: racers alternate between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_32_conditional_writers_wins_across_two_nodes() {
    let db = fresh_db(Backend::Postgres).await;
    let url = db.url.clone();
    let a = spawn_app_with(db, test_config(&url)).await;
    let b = spawn_app_with(FreshDb::shared(&url), test_config(&url)).await;
    races_on(&[&a, &b], None).await;
}
