//! Revisions and conditional writes, on both stores (decision 018): every change gets a
//! revision above every change before it; a topic's revision never goes down; Get, List and
//! Scan show the revision and the writer; a condition that does not hold writes nothing.

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::writes::{delete, message, node, owned, put, two_nodes, when, written};
use common::{Backend, T0_MS, far_deadline, fresh_db, fresh_store, open_backend, topic};
use retaind::store::{
    Clock, Condition, Error, OwnedWrite, Revision, Store, StoreOptions, Verdict, Write, Writer,
};

/// A handle that reads the database every time: another node's writes reach a handle's cache
/// through the change feed, a moment later.
fn no_cache() -> StoreOptions {
    StoreOptions {
        cache_bytes: 0,
        ..StoreOptions::default()
    }
}

fn lanes(n: usize) -> StoreOptions {
    StoreOptions {
        write_lanes: n,
        ..StoreOptions::default()
    }
}

/// What a write that failed must leave as it was: the topic's message and the change log.
async fn state(store: &Store, name: &str) -> (Option<(Vec<u8>, Revision)>, Vec<Revision>) {
    let m = store.get(topic(name)).await.unwrap();
    // The log as of everything written so far: on Postgres, wait until it is settled (another
    // client's transaction on the server may hold the settled point back for a moment).
    let highest = m.as_ref().map_or(0, |m| m.revision);
    for _ in 0..3000 {
        if store.settled().await.unwrap() >= highest {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = store.changes(0, "", None, 10_000).await.unwrap();
    (
        m.map(|m| (m.payload.to_vec(), m.revision)),
        log.changes.iter().map(|c| c.revision).collect(),
    )
}

async fn revisions_increase_across_writes_batches_and_lanes(backend: Backend) {
    let db = fresh_db(backend).await;
    let store = node(&db, Clock::manual(T0_MS), lanes(4)).await;
    // One after another, on any lane: each above the last.
    let mut last = 0;
    for i in 0..40 {
        let r = written(&store, put(&format!("seq/{i}"), "v")).await;
        assert!(r > last, "write {i}: {r} after {last}");
        last = r;
    }
    // A batch over every lane: distinct revisions, all above what came before.
    let mut batch = store.batch();
    let answers: Vec<_> = (0..100)
        .map(|i| batch.add_owned(put(&format!("batch/{i}"), "v").into()))
        .collect();
    batch.submit().await;
    let revisions: Vec<Revision> = futures_util::future::join_all(answers)
        .await
        .into_iter()
        .map(|r| r.unwrap().expect("applied"))
        .collect();
    assert_eq!(revisions.iter().collect::<HashSet<_>>().len(), 100);
    assert!(revisions.iter().all(|&r| r > last));
    last = *revisions.iter().max().unwrap();
    // Concurrent writes on all lanes: distinct; and the next write is above them all.
    let racing: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            let write = OwnedWrite::from(put(&format!("race/{}", i % 50), "v"));
            tokio::spawn(async move { store.write_owned(write).await.unwrap() })
        })
        .collect();
    let mut seen = HashSet::new();
    // A write replaced in its own batch by a later one of its topic has none (superseded).
    for r in futures_util::future::join_all(racing).await {
        let Some(r) = r.unwrap() else { continue };
        assert!(r > last);
        assert!(seen.insert(r), "revision {r} given twice");
    }
    let after = written(&store, put("seq/0", "again")).await;
    assert!(seen.iter().all(|&r| r < after));
    // Each topic shows its latest.
    let m = store.get(topic("seq/0")).await.unwrap().unwrap();
    assert_eq!(m.revision, after);
}

async fn get_list_and_scan_show_the_revision_and_the_writer(backend: Backend) {
    let (store, db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    let r1 = written(&store, owned(put("w/mqtt", "1"), "alice", "dev-1", None)).await;
    let r2 = written(&store, owned(put("w/http", "2"), "", Writer::HTTP, None)).await;
    let r3 = written(&store, put("w/tool", "3")).await;
    let m = store.get(topic("w/mqtt")).await.unwrap().unwrap();
    assert_eq!(m.revision, r1);
    assert_eq!(
        m.writer,
        Some(Writer {
            principal: "alice".into(),
            client: "dev-1".into()
        })
    );
    let m = store.get(topic("w/http")).await.unwrap().unwrap();
    assert_eq!(
        (m.revision, m.writer.map(|w| w.client)),
        (r2, Some(Writer::HTTP.into()))
    );
    let m = store.get(topic("w/tool")).await.unwrap().unwrap();
    assert_eq!((m.revision, m.writer), (r3, None));
    let listed: Vec<(String, Revision)> = store
        .list(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.topic.as_str().to_owned(), s.revision))
        .collect();
    assert_eq!(
        listed,
        [
            ("w/http".into(), r2),
            ("w/mqtt".into(), r1),
            ("w/tool".into(), r3)
        ]
    );
    let scanned: Vec<Revision> = store
        .scan("w/", None, None, 10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.revision)
        .collect();
    assert_eq!(scanned, [r2, r1, r3]);
    // Another node reads them from the database, not from this handle's cache.
    if backend == Backend::Postgres {
        let other = node(&db, Clock::manual(T0_MS), StoreOptions::default()).await;
        let m = other.get(topic("w/mqtt")).await.unwrap().unwrap();
        assert_eq!(m.revision, r1);
        assert_eq!(m.writer.unwrap().principal.as_ref(), "alice");
        let m = other.get(topic("w/tool")).await.unwrap().unwrap();
        assert_eq!((m.revision, m.writer), (r3, None));
    }
}

async fn if_match_applies_on_the_revision_and_fails_otherwise(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    let r1 = written(&store, put("cas/a", "1")).await;
    let r2 = written(&store, when(put("cas/a", "2"), Condition::Revision(r1))).await;
    assert!(r2 > r1);
    let m = store.get(topic("cas/a")).await.unwrap().unwrap();
    assert_eq!((&m.payload[..], m.revision), (&b"2"[..], r2));

    // The revision replaced, a made-up one, and a topic with no message: nothing written.
    let before = state(&store, "cas/a").await;
    for stale in [r1, r2 + 1, 0, -1] {
        let failed = store
            .write_owned(when(put("cas/a", "3"), Condition::Revision(stale)))
            .await;
        assert!(
            matches!(failed, Err(Error::ConditionFailed)),
            "{stale}: {failed:?}"
        );
    }
    assert_eq!(state(&store, "cas/a").await, before);
    let failed = store
        .write_owned(when(put("cas/none", "x"), Condition::Revision(r2)))
        .await;
    assert!(matches!(failed, Err(Error::ConditionFailed)), "{failed:?}");
    assert_eq!(store.get(topic("cas/none")).await.unwrap(), None);
    assert_eq!(state(&store, "cas/a").await, before);

    // A conditional delete: refused on a stale revision, applied on the current one.
    let failed = store
        .write_owned(when(delete("cas/a"), Condition::Revision(r1)))
        .await;
    assert!(matches!(failed, Err(Error::ConditionFailed)), "{failed:?}");
    assert_eq!(state(&store, "cas/a").await, before);
    let r3 = written(&store, when(delete("cas/a"), Condition::Revision(r2))).await;
    assert!(r3 > r2);
    assert_eq!(store.get(topic("cas/a")).await.unwrap(), None);
    // The delete's revision names no message: If-Match on it fails.
    let failed = store
        .write_owned(when(put("cas/a", "4"), Condition::Revision(r3)))
        .await;
    assert!(matches!(failed, Err(Error::ConditionFailed)), "{failed:?}");
    assert_eq!(store.get(topic("cas/a")).await.unwrap(), None);
}

async fn if_none_match_applies_only_without_a_message(backend: Backend) {
    let clock = Clock::manual(T0_MS);
    let (store, _db) = fresh_store(backend, clock.clone()).await;
    // Absent: created.
    let r1 = written(&store, when(put("new/a", "1"), Condition::Absent)).await;
    // Present: refused, nothing written.
    let before = state(&store, "new/a").await;
    let failed = store
        .write_owned(when(put("new/a", "2"), Condition::Absent))
        .await;
    assert!(matches!(failed, Err(Error::ConditionFailed)), "{failed:?}");
    assert_eq!(state(&store, "new/a").await, before);
    // A tombstone: created again.
    let r2 = written(&store, delete("new/a")).await;
    let r3 = written(&store, when(put("new/a", "3"), Condition::Absent)).await;
    assert!(r1 < r2 && r2 < r3);
    assert_eq!(
        &store.get(topic("new/a")).await.unwrap().unwrap().payload[..],
        b"3"
    );
    // An expired message (not yet made a tombstone by maintenance): there is none to keep.
    let mut expiring = message("new/b", "short", T0_MS);
    expiring.expires_at_ms = Some(T0_MS + 1_000);
    let r4 = written(&store, Write::Put(expiring)).await;
    // While it lives, If-None-Match fails...
    let failed = store
        .write_owned(when(put("new/b", "x"), Condition::Absent))
        .await;
    assert!(matches!(failed, Err(Error::ConditionFailed)), "{failed:?}");
    clock.advance(Duration::from_secs(2));
    // ...once expired, If-Match on its revision fails, and If-None-Match holds.
    let failed = store
        .write_owned(when(put("new/b", "x"), Condition::Revision(r4)))
        .await;
    assert!(matches!(failed, Err(Error::ConditionFailed)), "{failed:?}");
    assert_eq!(store.get(topic("new/b")).await.unwrap(), None);
    let r5 = written(&store, when(put("new/b", "again"), Condition::Absent)).await;
    assert!(r5 > r4);
    assert_eq!(
        &store.get(topic("new/b")).await.unwrap().unwrap().payload[..],
        b"again"
    );
}

async fn the_backend_answers_condition_failed_verdicts(backend: Backend) {
    let db = fresh_db(backend).await;
    let b = open_backend(&db.url).await;
    let first = b
        .apply(&[put("v/a", "1").into()], None, T0_MS, far_deadline())
        .await
        .unwrap();
    let Verdict::Applied(r1) = first[0] else {
        panic!("{first:?}")
    };
    let verdicts = b
        .apply(
            &[
                when(put("v/a", "2"), Condition::Revision(r1 + 1)),
                when(put("v/b", "2"), Condition::Revision(r1)),
                when(put("v/a", "3"), Condition::Absent),
                when(put("v/c", "4"), Condition::Absent),
            ],
            None,
            T0_MS,
            far_deadline(),
        )
        .await
        .unwrap();
    assert_eq!(verdicts[0], Verdict::ConditionFailed);
    assert_eq!(verdicts[1], Verdict::ConditionFailed);
    assert_eq!(verdicts[2], Verdict::ConditionFailed);
    assert!(
        matches!(verdicts[3], Verdict::Applied(r) if r > r1),
        "{verdicts:?}"
    );
    let found = b
        .get_many(&[topic("v/a"), topic("v/b"), topic("v/c")], T0_MS)
        .await
        .unwrap();
    let found: Vec<(&str, &[u8])> = found
        .iter()
        .map(|m| (m.topic.as_str(), &m.payload[..]))
        .collect();
    assert_eq!(found, [("v/a", &b"1"[..]), ("v/c", &b"4"[..])]);
}

/// A batch holding every kind of write, given to the backend at once (the write lane would
/// split it by kind), applies them all together: one ticket, a distinct revision for each.
async fn a_batch_of_every_kind_applies_under_one_ticket(backend: Backend) {
    let db = fresh_db(backend).await;
    let b = open_backend(&db.url).await;
    let applied = |v: &Verdict| match v {
        Verdict::Applied(r) => *r,
        other => panic!("not applied: {other:?}"),
    };
    let first = b
        .apply(
            &[put("k/cas", "1").into(), put("k/gone", "1").into()],
            None,
            T0_MS,
            far_deadline(),
        )
        .await
        .unwrap();
    let r_cas = applied(&first[0]);
    let gone = b
        .apply(&[delete("k/gone").into()], None, T0_MS, far_deadline())
        .await
        .unwrap();
    let r_gone = applied(&gone[0]);
    let verdicts = b
        .apply(
            &[
                put("k/plain", "2").into(),
                when(put("k/cas", "2"), Condition::Revision(r_cas)),
                when(put("k/gone", "2"), Condition::Absent),
                when(put("k/new", "2"), Condition::Absent),
                put("k/also", "2").into(),
            ],
            None,
            T0_MS,
            far_deadline(),
        )
        .await
        .unwrap();
    let revisions: Vec<Revision> = verdicts.iter().map(applied).collect();
    let distinct: HashSet<Revision> = revisions.iter().copied().collect();
    assert_eq!(distinct.len(), revisions.len(), "{revisions:?}");
    assert!(revisions.iter().all(|&r| r > r_gone), "{revisions:?}");
    // The ticket is a revision's quotient by 4096 (decision 018): one for the whole batch.
    let tickets: HashSet<Revision> = revisions.iter().map(|r| r / 4096).collect();
    assert_eq!(tickets.len(), 1, "{revisions:?}");
    let names = ["k/plain", "k/cas", "k/gone", "k/new", "k/also"].map(topic);
    let mut found = b.get_many(&names, T0_MS).await.unwrap();
    found.sort_by(|x, y| x.topic.cmp(&y.topic));
    let found: Vec<(&str, &[u8], Revision)> = found
        .iter()
        .map(|m| (m.topic.as_str(), &m.payload[..], m.revision))
        .collect();
    assert_eq!(
        found,
        [
            ("k/also", &b"2"[..], revisions[4]),
            ("k/cas", &b"2"[..], revisions[1]),
            ("k/gone", &b"2"[..], revisions[2]),
            ("k/new", &b"2"[..], revisions[3]),
            ("k/plain", &b"2"[..], revisions[0]),
        ]
    );
}

async fn a_write_superseded_in_its_own_batch_gets_no_revision(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    let mut batch = store.batch();
    let first = batch.add_owned(put("sup/a", "1").into());
    let second = batch.add_owned(put("sup/a", "2").into());
    batch.submit().await;
    assert_eq!(first.await.unwrap(), None, "replaced at once: no revision");
    let r = second
        .await
        .unwrap()
        .expect("the last write of the topic applies");
    let m = store.get(topic("sup/a")).await.unwrap().unwrap();
    assert_eq!((&m.payload[..], m.revision), (&b"2"[..], r));

    // A conditional write after another write of its topic in one batch is checked against
    // that write, not the batch's start: If-Match on the old revision fails, and so does
    // If-None-Match after a put.
    let mut batch = store.batch();
    let plain = batch.add_owned(put("sup/a", "3").into());
    let stale = batch.add_owned(when(put("sup/a", "4"), Condition::Revision(r)));
    let create = batch.add_owned(when(put("sup/a", "5"), Condition::Absent));
    batch.submit().await;
    let r3 = plain.await.unwrap().expect("applied");
    assert!(matches!(stale.await, Err(Error::ConditionFailed)));
    assert!(matches!(create.await, Err(Error::ConditionFailed)));
    let m = store.get(topic("sup/a")).await.unwrap().unwrap();
    assert_eq!((&m.payload[..], m.revision), (&b"3"[..], r3));

    // Racers on one revision in one batch: the first wins, the others fail.
    let mut batch = store.batch();
    let racers: Vec<_> = (0..32)
        .map(|i| {
            batch.add_owned(when(
                put("sup/a", &format!("racer {i}")),
                Condition::Revision(r3),
            ))
        })
        .collect();
    batch.submit().await;
    let results = futures_util::future::join_all(racers).await;
    assert!(matches!(results[0], Ok(Some(_))), "{:?}", results[0]);
    assert!(
        results[1..]
            .iter()
            .all(|r| matches!(r, Err(Error::ConditionFailed)))
    );
    assert_eq!(
        &store.get(topic("sup/a")).await.unwrap().unwrap().payload[..],
        b"racer 0"
    );
}

/// A burst larger than a batch commits in batches of the backend's size, in order: 800 writes on
/// SQLite, 1,024 on Postgres (each measured; decision 020). A batch's revisions share its write
/// ticket (revision ÷ 4096), so the tickets count the batches.
async fn a_burst_commits_in_batches_of_the_backends_size(backend: Backend) {
    let db = fresh_db(backend).await;
    let store = node(&db, Clock::manual(T0_MS), lanes(1)).await;
    let mut batch = store.batch();
    let answers: Vec<_> = (0..2000)
        .map(|i| batch.add_owned(put(&format!("burst/{i:04}"), "v").into()))
        .collect();
    batch.submit().await;
    let mut per_ticket = BTreeMap::<Revision, Vec<usize>>::new();
    for (i, r) in futures_util::future::join_all(answers)
        .await
        .into_iter()
        .enumerate()
    {
        let r = r.unwrap().expect("applied");
        per_ticket.entry(r / 4096).or_default().push(i);
    }
    let batches: Vec<(usize, usize)> = per_ticket
        .into_values()
        .map(|writes| (writes[0], writes.len()))
        .collect();
    let expected = match backend {
        Backend::Sqlite => vec![(0, 800), (800, 800), (1600, 400)],
        Backend::Postgres => vec![(0, 1024), (1024, 976)],
    };
    assert_eq!(batches, expected, "(first write, writes) per batch");
    assert_eq!(
        store.scan("burst/", None, None, 3000).await.unwrap().len(),
        2000
    );
}

for_each_backend!(
    a_burst_commits_in_batches_of_the_backends_size,
    revisions_increase_across_writes_batches_and_lanes,
    get_list_and_scan_show_the_revision_and_the_writer,
    if_match_applies_on_the_revision_and_fails_otherwise,
    if_none_match_applies_only_without_a_message,
    the_backend_answers_condition_failed_verdicts,
    a_batch_of_every_kind_applies_under_one_ticket,
    a_write_superseded_in_its_own_batch_gets_no_revision,
);

/// Two nodes on one Postgres: revisions go up whichever node writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_give_increasing_revisions() {
    let (a, b, db) = two_nodes(Clock::manual(T0_MS)).await;
    let mut last = 0;
    for i in 0..40 {
        let store = if i % 2 == 0 { &a } else { &b };
        let r = written(store, put(&format!("n/{}", i % 5), &i.to_string())).await;
        assert!(r > last, "write {i}: {r} after {last}");
        last = r;
    }
    // The database holds the last write with its revision (read past both nodes' caches,
    // which learn of the other node's writes a moment later).
    let uncached = node(&db, Clock::manual(T0_MS), no_cache()).await;
    let m = uncached.get(topic("n/4")).await.unwrap().unwrap();
    assert_eq!((&m.payload[..], m.revision), (&b"39"[..], last));
}

/// Two nodes racing on one topic: the topic's revision, read straight from the database while
/// they write, never goes down, and it ends at the highest revision any write was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topics_revision_never_goes_down() {
    let clock = Clock::manual(T0_MS);
    let (a, b, db) = two_nodes(clock.clone()).await;
    let uncached = node(&db, clock, no_cache()).await;
    written(&a, put("hot", "0")).await;
    let writers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .flat_map(|store| {
            (0..8).map(move |w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut given = Vec::new();
                    for i in 0..25 {
                        let r = store
                            .write_owned(put("hot", &format!("{w}.{i}")).into())
                            .await
                            .unwrap();
                        given.extend(r);
                    }
                    given
                })
            })
        })
        .collect();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = tokio::spawn({
        let done = done.clone();
        async move {
            let mut seen = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let m = uncached.get(topic("hot")).await.unwrap().unwrap();
                seen.push(m.revision);
            }
            seen
        }
    });
    let mut highest = 0;
    for w in futures_util::future::join_all(writers).await {
        highest = highest.max(w.unwrap().into_iter().max().unwrap_or(0));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reader.await.unwrap();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "went down: {seen:?}");
    let last = node(&db, Clock::manual(T0_MS), no_cache()).await;
    assert_eq!(
        last.get(topic("hot")).await.unwrap().unwrap().revision,
        highest
    );
}

/// 32 racers on one revision, half on each node: exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_racers_on_two_nodes_exactly_one_wins() {
    let (a, b, db) = two_nodes(Clock::manual(T0_MS)).await;
    let r = written(&a, put("race", "start")).await;
    let racers: Vec<_> = (0..32)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                store
                    .write_owned(when(put("race", &format!("{i}")), Condition::Revision(r)))
                    .await
            })
        })
        .collect();
    let results: Vec<_> = futures_util::future::join_all(racers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let won: Vec<_> = results
        .iter()
        .filter(|r| matches!(r, Ok(Some(_))))
        .collect();
    assert_eq!(won.len(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(Some(_)) | Err(Error::ConditionFailed))),
        "{results:?}"
    );
    let m = node(&db, Clock::manual(T0_MS), no_cache()).await;
    let m = m.get(topic("race")).await.unwrap().unwrap();
    assert!(matches!(won[0], Ok(Some(r)) if *r == m.revision), "{won:?}");
}
