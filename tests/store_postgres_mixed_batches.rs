//! Postgres only: two nodes writing batches that mix unconditional and conditional writes of the
//! same topics never deadlock. Each batch takes its row locks in one order (by topic), whatever
//! the kinds of its writes; were the kinds applied one after another in one transaction, a
//! batch would lock its unconditional topics first and its conditional ones after, and two
//! batches with the kinds the other way round would each wait for the other (SQLSTATE 40P01).

mod common;

use common::writes::{put, two_nodes, when};
use common::{T0_MS, topic};
use retaind::store::{Clock, Condition, Error, OwnedWrite, Store, StoreOptions};

const TOPICS: usize = 200;
const ROUNDS: usize = 20;

fn name(i: usize) -> String {
    format!("mixed/{i:04}")
}

/// One batch over every topic: those of parity `plain` unconditional, the others create-only
/// (`If-None-Match: *`), which fails on a topic holding a message but locks its row all the same.
async fn mixed_batch(store: Store, plain: usize, round: usize) -> Vec<Result<Option<i64>, Error>> {
    let mut batch = store.batch();
    let answers: Vec<_> = (0..TOPICS)
        .map(|i| {
            let write = put(&name(i), &format!("r{round}"));
            let write = if i % 2 == plain {
                OwnedWrite::from(write)
            } else {
                when(write, Condition::Absent)
            };
            batch.add_owned(write)
        })
        .collect();
    batch.submit().await;
    futures_util::future::join_all(answers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_mixing_kinds_on_two_nodes_do_not_deadlock() {
    let (a, b, _db) = two_nodes(Clock::manual(T0_MS)).await;
    for i in 0..TOPICS {
        a.write(put(&name(i), "start")).await.unwrap();
    }
    for round in 0..ROUNDS {
        let (on_a, on_b) = tokio::join!(
            tokio::spawn(mixed_batch(a.clone(), 0, round)),
            tokio::spawn(mixed_batch(b.clone(), 1, round)),
        );
        for (node, results) in [("a", on_a.unwrap()), ("b", on_b.unwrap())] {
            let plain = if node == "a" { 0 } else { 1 };
            for (i, result) in results.into_iter().enumerate() {
                match result {
                    Ok(Some(_)) if i % 2 == plain => {}
                    Err(Error::ConditionFailed) if i % 2 != plain => {}
                    other => panic!("round {round}, node {node}, {}: {other:?}", name(i)),
                }
            }
        }
    }
    // Every topic holds the last round's unconditional write, and no create-only one took.
    for i in 0..TOPICS {
        let m = a.get(topic(&name(i))).await.unwrap().unwrap();
        assert_eq!(m.payload, format!("r{}", ROUNDS - 1).as_bytes());
    }
}

/// With a quota on the number of messages, a batch with puts locks the counts before its rows,
/// and a batch of deletes changes its rows before the counts: two nodes doing the one and the
/// other on the same topics must not deadlock either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_batches_and_delete_batches_on_two_nodes_do_not_deadlock() {
    let db = common::fresh_db(common::Backend::Postgres).await;
    let options = || StoreOptions {
        max_messages: Some(1_000_000),
        ..StoreOptions::default()
    };
    let clock = Clock::manual(T0_MS);
    let a = common::writes::node(&db, clock.clone(), options()).await;
    let b = common::writes::node(&db, clock, options()).await;
    for round in 0..ROUNDS {
        let puts = async {
            let mut batch = a.batch();
            let answers: Vec<_> = (0..TOPICS)
                .map(|i| batch.add_owned(put(&name(i), &format!("r{round}")).into()))
                .collect();
            batch.submit().await;
            futures_util::future::join_all(answers).await
        };
        let deletes = async {
            let mut batch = b.batch();
            let answers: Vec<_> = (0..TOPICS)
                .rev()
                .map(|i| batch.add_owned(common::writes::delete(&name(i)).into()))
                .collect();
            batch.submit().await;
            futures_util::future::join_all(answers).await
        };
        let (puts, deletes) = tokio::join!(puts, deletes);
        for r in puts.iter().chain(&deletes) {
            assert!(r.is_ok(), "round {round}: {r:?}");
        }
    }
}
