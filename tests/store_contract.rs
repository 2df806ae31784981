//! The contract every `RetainedStore` backend must keep, run against real SQLite and real
//! Postgres. A new backend is added to `for_each_backend!` and must pass all of it.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::writes::message;
use common::{Backend, T0_MS, fresh_db, fresh_store, open_backend};
use retaind::store::{
    Clock, Condition, Error as StoreError, MessageProperties, OwnedWrite, Owner,
    PAYLOAD_BYTES_MAX_AGE, PayloadFormat, Qos, Readers, RetainedMessage, RetainedPublish,
    RetainedSummary, SavedSession, Store, StoreOptions, UserProperty, Verdict, Write, purge_delay,
};
use retaind::topic::{TopicLimits, TopicName};

fn topic(s: &str) -> TopicName {
    TopicName::parse(
        s,
        TopicLimits {
            max_bytes: 1024,
            max_levels: 64,
        },
    )
    .unwrap()
}

fn full_message(at_ms: i64) -> RetainedMessage {
    RetainedMessage {
        topic: topic("devices/ünï/config"),
        payload: Bytes::from_static(&[0, 1, 2, 255]),
        qos: Qos::ExactlyOnce,
        properties: MessageProperties {
            user_properties: vec![
                UserProperty {
                    key: "deviceName".into(),
                    value: "alpha".into(),
                },
                UserProperty {
                    key: "deviceCnt".into(),
                    value: "45".into(),
                },
                UserProperty {
                    key: "deviceName".into(),
                    value: "beta".into(),
                },
            ],
            content_type: Some("application/octet-stream".into()),
            response_topic: Some(topic("devices/replies")),
            correlation_data: Some(Bytes::from_static(&[9, 8, 7])),
            payload_format: PayloadFormat::Utf8,
        },
        expires_at_ms: Some(at_ms + 60_000),
        last_modified_ms: at_ms,
        last_accessed_ms: at_ms,
        revision: 0,
        writer: None,
    }
}

async fn topics_listed(store: &Store) -> Vec<String> {
    store
        .list(None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.topic.to_string())
        .collect()
}

/// A message as written, before the store gave it a revision.
fn unrevised(mut m: RetainedMessage) -> RetainedMessage {
    m.revision = 0;
    m.writer = None;
    m
}

async fn every_field_round_trips(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    let msg = full_message(T0_MS);
    store.write(Write::Put(msg.clone())).await.unwrap();
    let read = store.get(msg.topic.clone()).await.unwrap().unwrap();
    assert!(read.revision > 0, "a stored message has a revision");
    assert_eq!(unrevised(read), msg);
    let listed = store.list(None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].topic, msg.topic);
    assert_eq!(listed[0].payload_size, 4);
    assert_eq!(listed[0].qos, Qos::ExactlyOnce);
    assert_eq!(listed[0].last_modified_ms, T0_MS);
}

async fn a_put_replaces_and_a_delete_removes(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    store
        .write(Write::Put(message("a", "one", T0_MS)))
        .await
        .unwrap();
    store
        .write(Write::Put(message("a", "two", T0_MS + 1)))
        .await
        .unwrap();
    let got = store.get(topic("a")).await.unwrap().unwrap();
    assert_eq!(
        (&got.payload[..], got.last_modified_ms),
        (&b"two"[..], T0_MS + 1)
    );
    store.write(Write::Delete(topic("a"))).await.unwrap();
    assert_eq!(store.get(topic("a")).await.unwrap(), None);
    // Deleting what is not there is not an error: MQTT clears absent retained messages silently.
    store.write(Write::Delete(topic("never"))).await.unwrap();
}

async fn within_one_batch_the_last_write_per_topic_wins(backend: Backend) {
    let db = fresh_db(backend).await;
    let backend = open_backend(&db.url).await;
    backend
        .apply(
            &[
                Write::Put(message("x", "1", T0_MS)).into(),
                Write::Put(message("y", "1", T0_MS)).into(),
                Write::Delete(topic("x")).into(),
                Write::Put(message("y", "2", T0_MS)).into(),
                Write::Put(message("z", "1", T0_MS)).into(),
                Write::Delete(topic("z")).into(),
                Write::Put(message("x", "3", T0_MS)).into(),
            ],
            None,
            T0_MS,
            common::far_deadline(),
        )
        .await
        .unwrap();
    let mut got = backend
        .get_many(&[topic("x"), topic("y"), topic("z")], T0_MS)
        .await
        .unwrap();
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    let got: Vec<(&str, &[u8])> = got
        .iter()
        .map(|m| (m.topic.as_str(), &m.payload[..]))
        .collect();
    assert_eq!(got, [("x", &b"3"[..]), ("y", &b"2"[..])]);
}

async fn concurrent_writes_all_land(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    let writes = (0..300).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .write(Write::Put(message(&format!("c/{i:03}"), "v", T0_MS)))
                .await
        })
    });
    for w in writes.collect::<Vec<_>>() {
        w.await.unwrap().unwrap();
    }
    let reads = (0..300).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.get(topic(&format!("c/{i:03}"))).await })
    });
    for r in reads.collect::<Vec<_>>() {
        assert!(r.await.unwrap().unwrap().is_some());
    }
    assert_eq!(store.list(None, 1000).await.unwrap().len(), 300);
}

/// With several write lanes, writes to one topic still commit in the order they were made,
/// even when they are all in flight at once (as a client's pipelined publishes are).
async fn writes_to_a_topic_commit_in_order_across_lanes(backend: Backend) {
    let (store, _db) = four_lane_store(backend).await;
    const VALUES: [&str; 8] = ["0", "1", "2", "3", "4", "5", "6", "7"];
    let writes = (0..32).flat_map(|t| {
        VALUES.map(|v| store.write(Write::Put(message(&format!("t/{t:02}"), v, T0_MS))))
    });
    // Each write is queued when first polled, and `join_all` polls them first in order, but
    // only while the task's coop budget lasts: past it a write's queueing yields and is polled
    // again behind the later ones, which then queue first (with 128 writes of this test, that
    // put "7" before "6" under load). Unconstrained, all 256 queue in order, as a connection's
    // burst does (`WriteBatch`).
    let all = tokio::task::unconstrained(futures_util::future::join_all(writes));
    for done in all.await {
        done.unwrap();
    }
    assert_every_topic_holds(&store, "t/", 32, b"7").await;
}

async fn four_lane_store(backend: Backend) -> (Store, common::FreshDb) {
    let db = fresh_db(backend).await;
    let options = StoreOptions {
        write_lanes: 4,
        ..StoreOptions::default()
    };
    let store = Store::new(open_backend(&db.url).await, Clock::manual(T0_MS), options);
    (store, db)
}

/// Exactly `count` topics are stored under `prefix`, each with `payload`.
async fn assert_every_topic_holds(store: &Store, prefix: &str, count: usize, payload: &[u8]) {
    let stored = store.scan(prefix, None, None, 1000).await.unwrap();
    assert_eq!(stored.len(), count);
    for m in stored {
        assert_eq!(&m.payload[..], payload, "{}", m.topic);
    }
}

/// Writes gathered in a batch commit only once it is submitted, all of them, and a topic's
/// writes keep their order across lanes as with single writes.
async fn a_write_batch_commits_what_it_gathered_once_submitted(backend: Backend) {
    let (store, _db) = four_lane_store(backend).await;
    let mut batch = store.batch();
    let committed: Vec<_> = (0..16)
        .flat_map(|t| ["0", "1", "2"].map(|v| (t, v)))
        .map(|(t, v)| {
            let write = Write::Put(message(&format!("b/{t:02}"), v, T0_MS));
            batch.add(write, Owner::anonymous())
        })
        .collect();
    let all = futures_util::future::join_all(committed);
    tokio::pin!(all);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut all)
            .await
            .is_err(),
        "a write resolved before its batch was submitted"
    );
    assert!(store.scan("b/", None, None, 100).await.unwrap().is_empty());
    batch.submit().await;
    for done in all.await {
        done.unwrap();
    }
    assert_every_topic_holds(&store, "b/", 16, b"2").await;
}

/// A batch dropped unsubmitted (its connection failed mid-burst) fails its writes and stores
/// nothing.
async fn a_write_batch_dropped_unsubmitted_fails_its_writes(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    let mut batch = store.batch();
    let committed = batch.add(Write::Put(message("d/x", "v", T0_MS)), Owner::anonymous());
    drop(batch);
    assert!(matches!(committed.await, Err(StoreError::Closed)));
    assert_eq!(store.get(topic("d/x")).await.unwrap(), None);
}

async fn listing_is_in_byte_order_and_resumes_after_a_topic(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    for t in ["b", "a/b", "A", "a", "$SYS/x", "é", "a b", "z", "a/"] {
        store
            .write(Write::Put(message(t, "v", T0_MS)))
            .await
            .unwrap();
    }
    // UTF-8 byte order: '$' < ' ' ... 'A' < 'a' < 'é'; independent of any locale.
    let expected = ["$SYS/x", "A", "a", "a b", "a/", "a/b", "b", "z", "é"];
    assert_eq!(topics_listed(&store).await, expected);
    let page = store.list(Some(&topic("a b")), 3).await.unwrap();
    let page: Vec<&str> = page.iter().map(|s| s.topic.as_str()).collect();
    assert_eq!(page, ["a/", "a/b", "b"]);
    // Resuming after a topic that no longer exists still continues from its place.
    let page = store.list(Some(&topic("c")), 10).await.unwrap();
    assert_eq!(
        page.iter().map(|s| s.topic.as_str()).collect::<Vec<_>>(),
        ["z", "é"]
    );
}

async fn expired_messages_are_invisible_then_purged(backend: Backend) {
    let clock = Clock::manual(T0_MS);
    let (store, _db) = fresh_store(backend, clock.clone()).await;
    let mut short = message("short", "v", T0_MS);
    short.expires_at_ms = Some(T0_MS + 10_000);
    store.write(Write::Put(short)).await.unwrap();
    store
        .write(Write::Put(message("forever", "v", T0_MS)))
        .await
        .unwrap();

    clock.advance(Duration::from_millis(9_999));
    assert!(store.get(topic("short")).await.unwrap().is_some());
    assert_eq!(
        store
            .maintain(Duration::from_secs(3600))
            .await
            .unwrap()
            .expired,
        0
    );

    clock.advance(Duration::from_millis(1));
    assert_eq!(store.get(topic("short")).await.unwrap(), None);
    assert_eq!(topics_listed(&store).await, ["forever"]);
    // Recorded as a change at once (a tombstone of the expiry), and kept a while after its
    // expiry, so that a write older than it cannot bring back an older message (see
    // `RetainedStore::apply`).
    let report = store.maintain(Duration::from_secs(3600)).await.unwrap();
    assert_eq!((report.expired, report.idle, report.tombstones), (1, 0, 0));
    let report = store.maintain(Duration::from_secs(3600)).await.unwrap();
    assert_eq!((report.expired, report.tombstones), (0, 0));
    clock.advance(purge_delay(StoreOptions::default().timeout));
    let report = store.maintain(Duration::from_secs(3600)).await.unwrap();
    assert_eq!((report.expired, report.idle, report.tombstones), (0, 0, 1));
    assert_eq!(topics_listed(&store).await, ["forever"]);
}

/// A delete leaves a tombstone that no read shows and no count includes, and the purge removes
/// it once no older write can still arrive; the topic can be written again meanwhile.
async fn a_delete_leaves_an_invisible_tombstone_until_the_purge(backend: Backend) {
    let clock = Clock::manual(T0_MS);
    let (store, _db) = fresh_store(backend, clock.clone()).await;
    for t in ["a/gone", "a/kept", "a/back"] {
        store
            .write(Write::Put(message(t, "v", T0_MS)))
            .await
            .unwrap();
    }
    store.write(Write::Delete(topic("a/gone"))).await.unwrap();
    store.write(Write::Delete(topic("a/back"))).await.unwrap();
    store.write(Write::Delete(topic("a/never"))).await.unwrap();
    store
        .write(Write::Put(message("a/back", "again", T0_MS + 1)))
        .await
        .unwrap();
    assert_eq!(store.get(topic("a/gone")).await.unwrap(), None);
    assert_eq!(store.get(topic("a/never")).await.unwrap(), None);
    assert_eq!(topics_listed(&store).await, ["a/back", "a/kept"]);
    let scanned: Vec<String> = store
        .scan("a/", None, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.topic.to_string())
        .collect();
    assert_eq!(scanned, ["a/back", "a/kept"]);
    let ranged = store.list_range("a/", None, None, 100).await.unwrap();
    assert_eq!(ranged.len(), 2);
    assert_eq!(store.count(None).await.unwrap(), 2);

    let report = store.maintain(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(report.tombstones, 0, "kept for the purge delay");
    clock.advance(purge_delay(StoreOptions::default().timeout));
    let report = store.maintain(Duration::from_secs(3600)).await.unwrap();
    assert_eq!((report.tombstones, report.expired), (2, 0));
    assert_eq!(topics_listed(&store).await, ["a/back", "a/kept"]);
    assert_eq!(store.count(None).await.unwrap(), 2);
}

/// A topic's row holds the write ticket of the write that made it, and only a write with a
/// later ticket replaces it: a write that took its ticket first, and reaches the row last, is
/// superseded and changes nothing (tests/store_stalls.rs makes that happen with a real stall).
async fn a_write_with_an_earlier_ticket_changes_nothing(backend: Backend) {
    let db = fresh_db(backend).await;
    let store = open_backend(&db.url).await;
    let put =
        |payload| -> retaind::store::OwnedWrite { Write::Put(message("t", payload, T0_MS)).into() };
    let first = store
        .apply(&[put("first")], None, T0_MS, common::far_deadline())
        .await
        .unwrap();
    assert!(matches!(first[..], [Verdict::Applied(_)]), "{first:?}");
    // Stand in for a newer write that got there first: push the row's ticket far ahead.
    common::execute_sql(
        &db.url,
        "UPDATE retained_messages SET write_seq = write_seq + 1000000",
    )
    .await;
    let late = store
        .apply(&[put("late")], None, T0_MS, common::far_deadline())
        .await
        .unwrap();
    assert_eq!(late, [Verdict::Superseded]);
    let delete = store
        .apply(
            &[Write::Delete(topic("t")).into()],
            None,
            T0_MS,
            common::far_deadline(),
        )
        .await
        .unwrap();
    assert_eq!(delete, [Verdict::Superseded]);
    let got = store.get_many(&[topic("t")], T0_MS).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"first");
}

/// A batch larger than any one statement (SQLite writes unconditional rows in chunks of up
/// to 64) still decides row by row: the rows a newer write got to first are superseded, every
/// other row is applied under its own revision.
async fn a_large_batch_decides_each_row_on_its_own(backend: Backend) {
    let db = fresh_db(backend).await;
    let store = open_backend(&db.url).await;
    let puts = |prefix: &str, n: usize, payload: &str| -> Vec<retaind::store::OwnedWrite> {
        (0..n)
            .map(|i| Write::Put(message(&format!("{prefix}/{i}"), payload, T0_MS)).into())
            .collect()
    };
    let first = store
        .apply(
            &puts("b", 100, "first"),
            None,
            T0_MS,
            common::far_deadline(),
        )
        .await
        .unwrap();
    assert!(first.iter().all(|v| matches!(v, Verdict::Applied(_))));
    // A newer write got to every third topic first.
    common::execute_sql(
        &db.url,
        "UPDATE retained_messages SET write_seq = write_seq + 1000000000 \
         WHERE CAST(substr(topic, 3) AS INTEGER) % 3 = 0",
    )
    .await;
    let mut late = puts("b", 100, "late");
    late.extend(puts("c", 50, "new"));
    late.push(Write::Delete(topic("b/1")).into());
    let verdicts = store
        .apply(&late, None, T0_MS, common::far_deadline())
        .await
        .unwrap();
    let mut revisions = std::collections::HashSet::new();
    for (i, verdict) in verdicts.iter().enumerate() {
        match (i, verdict) {
            (1, Verdict::Superseded) => {} // the delete of b/1 later in the batch replaced it
            (i, Verdict::Superseded) if i < 100 && i % 3 == 0 => {}
            (i, Verdict::Applied(r)) if i >= 100 || i % 3 != 0 => {
                assert!(revisions.insert(*r), "revision {r} given twice");
            }
            (i, v) => panic!("write {i}: {v:?}"),
        }
    }
    assert_eq!(revisions.len(), 100 - 34 - 1 + 50 + 1);
    let all: Vec<TopicName> = (0..100)
        .map(|i| topic(&format!("b/{i}")))
        .chain((0..50).map(|i| topic(&format!("c/{i}"))))
        .collect();
    let got = store.get_many(&all, T0_MS).await.unwrap();
    let by_topic: std::collections::HashMap<&str, &[u8]> = got
        .iter()
        .map(|m| (m.topic.as_str(), &m.payload[..]))
        .collect();
    for i in 0..100 {
        let expected: Option<&[u8]> = match i {
            1 => None,
            i if i % 3 == 0 => Some(b"first"),
            _ => Some(b"late"),
        };
        assert_eq!(
            by_topic.get(format!("b/{i}").as_str()).copied(),
            expected,
            "b/{i}"
        );
    }
    for i in 0..50 {
        assert_eq!(
            by_topic.get(format!("c/{i}").as_str()).copied(),
            Some(&b"new"[..])
        );
    }
}

/// One field of a message or of its write, set to a value of its own for `i`.
type SetField = fn(&mut RetainedMessage, &mut OwnedWrite, i64);

/// Every field a write stores, each with a setter (the Postgres store binds a field the same in
/// every row of a batch once, the others as arrays: both must store each row's own value).
const FIELDS: [(&str, SetField); 13] = [
    ("payload", |m, _, i| {
        m.payload = Bytes::from(format!("p{i}"))
    }),
    ("qos", |m, _, i| {
        m.qos = [Qos::AtMostOnce, Qos::AtLeastOnce, Qos::ExactlyOnce][i as usize % 3];
    }),
    ("user_properties", |m, _, i| {
        m.properties.user_properties = (0..i % 3)
            .map(|n| UserProperty {
                key: format!("k{n}"),
                value: format!("v{i}"),
            })
            .collect();
    }),
    ("content_type", |m, _, i| {
        m.properties.content_type = (i % 2 == 1).then(|| format!("type/{i}"));
    }),
    ("response_topic", |m, _, i| {
        m.properties.response_topic = (i % 2 == 1).then(|| topic(&format!("replies/{i}")));
    }),
    ("correlation_data", |m, _, i| {
        m.properties.correlation_data = (i % 2 == 1).then(|| Bytes::from(vec![i as u8; 3]));
    }),
    ("payload_format", |m, _, i| {
        m.properties.payload_format = if i % 2 == 1 {
            PayloadFormat::Utf8
        } else {
            PayloadFormat::Unspecified
        };
    }),
    ("expires_at_ms", |m, _, i| {
        m.expires_at_ms = (i % 2 == 1).then_some(T0_MS + 60_000 + i);
    }),
    ("last_modified_ms", |m, _, i| {
        m.last_modified_ms = T0_MS - 1_000 + i
    }),
    ("last_accessed_ms", |m, _, i| {
        m.last_accessed_ms = T0_MS - 500 + i
    }),
    ("owner", |_, w, i| {
        w.owner = Owner {
            name: format!("owner-{i}").into(),
            max_messages: None,
        };
    }),
    ("deleted", |m, w, i| {
        if i % 4 == 3 {
            w.write = Write::Delete(m.topic.clone());
        }
    }),
    ("writer_client", |_, w, i| {
        w.client = Some(format!("client-{i}").into())
    }),
];

/// A write of `t` with every field set by [`FIELDS`] from `base`, but those in `vary` from `i`.
fn write_of(t: &str, base: i64, vary: &[usize], i: i64) -> (RetainedMessage, OwnedWrite) {
    let mut m = full_message_on(t, T0_MS);
    let mut w = OwnedWrite::new(Write::Put(m.clone()), Owner::anonymous());
    w.client = Some("client".into());
    for (n, (_, set)) in FIELDS.iter().enumerate() {
        set(&mut m, &mut w, if vary.contains(&n) { i } else { base });
    }
    if let Write::Put(put) = &mut w.write {
        *put = m.clone();
    }
    (m, w)
}

/// Applies `writes` (each of `kind`, built by `write`) as one batch, and checks each topic then
/// holds its own write: every field, its owner and its client.
async fn apply_and_check(
    store: &std::sync::Arc<dyn retaind::store::RetainedStore>,
    label: &str,
    writes: Vec<(RetainedMessage, OwnedWrite)>,
) {
    let owned: Vec<OwnedWrite> = writes.iter().map(|(_, w)| w.clone()).collect();
    let topics: Vec<TopicName> = writes.iter().map(|(m, _)| m.topic.clone()).collect();
    let held = store.get_many(&topics, T0_MS).await.unwrap();
    let is_held = |t: &TopicName| held.iter().any(|m| m.topic == *t);
    // The count (expired rows and all) sees a tombstone written as a live row, which reads
    // would hide: it expires when it is written.
    let change: i64 = writes
        .iter()
        .map(|(m, w)| match (&w.write, is_held(&m.topic)) {
            (Write::Put(_), false) => 1,
            (Write::Delete(_), true) => -1,
            _ => 0,
        })
        .sum();
    let count = store.count(None).await.unwrap();
    let verdicts = store
        .apply(&owned, None, T0_MS, common::far_deadline())
        .await
        .unwrap();
    for (n, v) in verdicts.iter().enumerate() {
        assert!(
            matches!(v, Verdict::Applied(_)),
            "{label}: write {n}: {v:?}"
        );
    }
    let counted = store.count(None).await.unwrap();
    assert_eq!(
        counted as i64 - count as i64,
        change,
        "{label}: messages stored"
    );
    let read = store.get_many(&topics, T0_MS).await.unwrap();
    for (m, w) in &writes {
        let got = read.iter().find(|r| r.topic == m.topic);
        let Write::Put(_) = w.write else {
            assert!(got.is_none(), "{label}: {} was deleted", m.topic);
            continue;
        };
        let got = got.unwrap_or_else(|| panic!("{label}: {} missing", m.topic));
        let writer = got.writer.as_ref().expect("a write's writer is kept");
        assert_eq!(&*writer.principal, &*w.owner.name, "{label}: {}", m.topic);
        assert_eq!(
            Some(&writer.client),
            w.client.as_ref(),
            "{label}: {}",
            m.topic
        );
        assert_eq!(unrevised(got.clone()), *m, "{label}");
    }
}

/// A batch's rows each keep their own fields, whether the batch's rows share a field or not:
/// for each field, a batch whose rows differ in it alone; a batch whose rows differ in every
/// field; one whose rows share all of them; and `If-Match` and `If-None-Match` batches alike.
async fn a_batchs_rows_keep_their_own_fields_shared_or_not(backend: Backend) {
    let db = fresh_db(backend).await;
    let store = open_backend(&db.url).await;
    for (n, (name, _)) in FIELDS.iter().enumerate() {
        let writes = (0..4)
            .map(|i| write_of(&format!("one/{name}/{i}"), 0, &[n], i))
            .collect();
        apply_and_check(&store, &format!("{name} alone differs"), writes).await;
    }
    let every: Vec<usize> = (0..FIELDS.len()).collect();
    let differ = (0..6)
        .map(|i| write_of(&format!("all/{i}"), 0, &every, i))
        .collect();
    apply_and_check(&store, "every field differs", differ).await;
    let shared = (0..6)
        .map(|i| write_of(&format!("none/{i}"), 1, &[], i))
        .collect();
    apply_and_check(&store, "no field differs", shared).await;

    // Deletes carry no condition of their own here: the conditional batches are puts.
    let puts: Vec<usize> = (0..FIELDS.len())
        .filter(|&n| FIELDS[n].0 != "deleted")
        .collect();
    let absent: Vec<_> = (0..4)
        .map(|i| {
            let (m, mut w) = write_of(&format!("cond/{i}"), 0, &puts, i);
            w.condition = Some(Condition::Absent);
            (m, w)
        })
        .collect();
    apply_and_check(&store, "If-None-Match, every field differs", absent.clone()).await;
    let topics: Vec<TopicName> = absent.iter().map(|(m, _)| m.topic.clone()).collect();
    let mut stored = store.get_many(&topics, T0_MS).await.unwrap();
    stored.sort_by(|a, b| a.topic.cmp(&b.topic));
    let matched: Vec<_> = stored
        .iter()
        .enumerate()
        .map(|(i, held)| {
            let (m, mut w) = write_of(held.topic.as_str(), 2, &puts, i as i64 + 10);
            w.condition = Some(Condition::Revision(held.revision));
            (m, w)
        })
        .collect();
    apply_and_check(
        &store,
        "If-Match, every field and revision differs",
        matched,
    )
    .await;
    // One row: every field, the `If-Match` revision too, is the batch's only value.
    let held = store.get_many(&topics[..1], T0_MS).await.unwrap();
    let (m, mut w) = write_of(topics[0].as_str(), 1, &[], 0);
    w.condition = Some(Condition::Revision(held[0].revision));
    apply_and_check(&store, "If-Match, one row", vec![(m, w)]).await;
}

async fn idle_messages_are_purged_and_reads_keep_them(backend: Backend) {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    let retention = 3 * YEAR;
    let clock = Clock::manual(T0_MS);
    let (store, _db) = fresh_store(backend, clock.clone()).await;
    for t in ["read", "updated", "idle"] {
        store
            .write(Write::Put(message(t, "v", T0_MS)))
            .await
            .unwrap();
    }
    clock.advance(2 * YEAR);
    store.get(topic("read")).await.unwrap().unwrap();
    let now = clock.now_ms();
    store
        .write(Write::Put(message("updated", "v2", now)))
        .await
        .unwrap();
    assert_eq!(store.maintain(retention).await.unwrap().touched, 1);

    clock.advance(YEAR + Duration::from_secs(1));
    let report = store.maintain(retention).await.unwrap();
    assert_eq!(report.idle, 1);
    assert_eq!(topics_listed(&store).await, ["read", "updated"]);
}

async fn a_recorded_read_never_moves_access_time_backwards(backend: Backend) {
    let db = fresh_db(backend).await;
    let backend = open_backend(&db.url).await;
    backend
        .apply(
            &[Write::Put(message("t", "v", T0_MS + 500)).into()],
            None,
            T0_MS,
            common::far_deadline(),
        )
        .await
        .unwrap();
    backend
        .touch(&[topic("t"), topic("absent")], T0_MS)
        .await
        .unwrap();
    let got = backend.get_many(&[topic("t")], T0_MS).await.unwrap();
    assert_eq!(got[0].last_accessed_ms, T0_MS + 500);
    backend.touch(&[topic("t")], T0_MS + 900).await.unwrap();
    let got = backend.get_many(&[topic("t")], T0_MS).await.unwrap();
    assert_eq!(got[0].last_accessed_ms, T0_MS + 900);
}

async fn the_token_key_is_shared_by_every_node_on_a_database(backend: Backend) {
    let db = fresh_db(backend).await;
    let node_a = open_backend(&db.url).await;
    let key = node_a.token_key(b"first candidate").await.unwrap();
    assert_eq!(key, b"first candidate");
    let node_b = match backend {
        Backend::Postgres => open_backend(&db.url).await, // migrations run twice harmlessly
        Backend::Sqlite => {
            // A SQLite file serves one process; a second one is refused while the first is open.
            let refused = retaind::store::open_backend(
                &db.url,
                4,
                Duration::from_millis(300),
                Duration::ZERO,
            )
            .await
            .err()
            .expect("a second open of a SQLite store must be refused");
            assert!(
                refused
                    .to_string()
                    .contains("in use by another retaind process"),
                "{refused}"
            );
            drop(node_a);
            open_backend(&db.url).await
        }
    };
    assert_eq!(node_b.token_key(b"second candidate").await.unwrap(), key);
}

async fn data_survives_reopening(backend: Backend) {
    let db = fresh_db(backend).await;
    {
        let store = Store::new(
            open_backend(&db.url).await,
            Clock::manual(T0_MS),
            StoreOptions::default(),
        );
        store.write(Write::Put(full_message(T0_MS))).await.unwrap();
    }
    let store = Store::new(
        open_backend(&db.url).await,
        Clock::manual(T0_MS),
        StoreOptions::default(),
    );
    assert_eq!(
        store
            .get(full_message(T0_MS).topic)
            .await
            .unwrap()
            .map(unrevised),
        Some(full_message(T0_MS))
    );
}

/// A message carrying every optional field, with its topic as payload so that a page can be
/// compared message by message.
fn full_message_on(t: &str, at_ms: i64) -> RetainedMessage {
    RetainedMessage {
        topic: topic(t),
        payload: Bytes::from(t.to_owned()),
        ..full_message(at_ms)
    }
}

async fn put_all(store: &Store, topics: &[&str]) {
    for t in topics {
        store
            .write(Write::Put(full_message_on(t, T0_MS)))
            .await
            .unwrap();
    }
}

fn topics_of(page: &[RetainedMessage]) -> Vec<&str> {
    page.iter().map(|m| m.topic.as_str()).collect()
}

async fn scanning_a_range_returns_full_messages_in_byte_order(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    let topics = [
        "a/b/c", "a", "a0", "a/é", "b", "a/", "A/b", "a/b", "a.b", "$SYS/a",
    ];
    put_all(&store, &topics).await;
    // `a/#` below `a` as a range: from "a/" (inclusive) up to "a0" (exclusive; '0' follows '/').
    let page = store.scan("a/", Some("a0"), None, 100).await.unwrap();
    let expected: Vec<RetainedMessage> = ["a/", "a/b", "a/b/c", "a/é"]
        .iter()
        .map(|t| full_message_on(t, T0_MS))
        .collect();
    assert_eq!(
        page.into_iter().map(unrevised).collect::<Vec<_>>(),
        expected
    );
}

async fn a_scan_does_not_count_as_a_read(backend: Backend) {
    let clock = Clock::manual(T0_MS);
    let (store, _db) = fresh_store(backend, clock.clone()).await;
    for t in ["s/1", "s/2"] {
        store
            .write(Write::Put(message(t, "v", T0_MS)))
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(24 * 3600));
    let page = store.scan("s/", Some("s0"), None, 10).await.unwrap();
    assert_eq!(topics_of(&page), ["s/1", "s/2"]);
    assert!(page.iter().all(|m| m.last_accessed_ms == T0_MS));
    let retention = Duration::from_secs(365 * 24 * 3600);
    assert_eq!(store.maintain(retention).await.unwrap().touched, 0);
    // Whereas a point read is recorded.
    store.get(topic("s/1")).await.unwrap().unwrap();
    assert_eq!(store.maintain(retention).await.unwrap().touched, 1);
}

async fn scan_pages_resume_after_a_topic_and_end_exactly(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    put_all(
        &store,
        &[
            "c/7", "b", "c/0", "c/1", "c/2", "c", "c/3", "c/4", "c0", "c/5", "c/6", "d",
        ],
    )
    .await;
    let (from, until) = ("c/", Some("c0"));
    let first = store.scan(from, until, None, 4).await.unwrap();
    assert_eq!(topics_of(&first), ["c/0", "c/1", "c/2", "c/3"]);
    let second = store
        .scan(from, until, Some(&first[3].topic), 4)
        .await
        .unwrap();
    assert_eq!(topics_of(&second), ["c/4", "c/5", "c/6", "c/7"]);
    // The range held exactly two pages: the third is empty, not a repeat or a spill past `until`.
    let third = store
        .scan(from, until, Some(&second[3].topic), 4)
        .await
        .unwrap();
    assert!(third.is_empty(), "{:?}", topics_of(&third));
    // Resuming after a topic that no longer exists continues from its place.
    let page = store
        .scan(from, until, Some(&topic("c/3x")), 2)
        .await
        .unwrap();
    assert_eq!(topics_of(&page), ["c/4", "c/5"]);
    // An `after` before the range starts at `from`; one at or past `until` finds nothing.
    let page = store.scan(from, until, Some(&topic("b")), 2).await.unwrap();
    assert_eq!(topics_of(&page), ["c/0", "c/1"]);
    let page = store
        .scan(from, until, Some(&topic("c0")), 2)
        .await
        .unwrap();
    assert!(page.is_empty(), "{:?}", topics_of(&page));
}

/// A delivery's scan, on the shared connections or a bulk scan's own, reads the rows a full
/// scan reads, each with every field a subscriber receives (rows that differ in each of them).
async fn a_deliverys_scan_reads_what_a_scan_reads(backend: Backend) {
    let clock = Clock::manual(T0_MS);
    let (store, _db) = fresh_store(backend, clock.clone()).await;
    let topics = ["c/7", "b", "c/0", "c/1", "c", "c/3", "c0", "é", "d"];
    for (i, t) in topics.iter().enumerate() {
        let mut m = full_message_on(t, T0_MS);
        match i % 3 {
            0 => {}
            1 => {
                m.qos = Qos::AtMostOnce;
                m.properties = MessageProperties::default();
                m.expires_at_ms = None;
            }
            _ => {
                m.qos = Qos::AtLeastOnce;
                m.properties.user_properties.truncate(1);
                m.properties.content_type = None;
                m.properties.payload_format = PayloadFormat::Unspecified;
                m.expires_at_ms = Some(T0_MS + 3_600_000 + i as i64);
            }
        }
        store.write(Write::Put(m)).await.unwrap();
    }
    let mut expiring = message("c/2", "v", T0_MS);
    expiring.expires_at_ms = Some(T0_MS + 1);
    store.write(Write::Put(expiring)).await.unwrap();
    clock.advance(Duration::from_millis(1));
    let all = store.scan("", None, None, 100).await.unwrap();
    assert_eq!(all.len(), topics.len(), "the expired message is not read");
    let after = [None, Some(topic("c/0")), Some(topic("c/9"))];
    for (from, until) in [("c/", Some("c0")), ("", None), ("c", None)] {
        for after in &after {
            for limit in [1, 2, 100] {
                let scanned: Vec<RetainedPublish> = store
                    .scan(from, until, after.as_ref(), limit)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(RetainedPublish::from)
                    .collect();
                for readers in [Readers::Shared, Readers::Bulk] {
                    let published = store
                        .scan_publishes(readers, from, until, after.as_ref(), limit)
                        .await
                        .unwrap();
                    assert_eq!(
                        published, scanned,
                        "{readers:?} {from:?}..{until:?} after {after:?}, {limit}"
                    );
                }
            }
        }
    }
}

/// `--db-scan-rows` where it is set; else Postgres bounds a delivery's pages (each is a burst
/// of a backend's CPU that commits wait behind) and SQLite leaves them to the read-ahead.
async fn a_deliverys_pages_are_bounded_by_the_setting_or_else_the_backend(backend: Backend) {
    let (default, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    let expected = match backend {
        Backend::Postgres => 256,
        Backend::Sqlite => u32::MAX,
    };
    assert_eq!(default.max_scan_rows(), expected);
    let db = fresh_db(backend).await;
    let options = StoreOptions {
        scan_rows: Some(1000),
        ..StoreOptions::default()
    };
    let set = Store::new(open_backend(&db.url).await, Clock::manual(T0_MS), options);
    assert_eq!(set.max_scan_rows(), 1000);
}

async fn a_scan_without_upper_bound_runs_to_the_end(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    put_all(&store, &["z", "b/x", "a", "\u{10000}", "é", "b"]).await;
    let page = store.scan("b", None, None, 100).await.unwrap();
    assert_eq!(topics_of(&page), ["b", "b/x", "z", "é", "\u{10000}"]);
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store.scan("b", None, after.as_ref(), 2).await.unwrap();
        paged.extend(page.iter().map(|m| m.topic.to_string()));
        match page.last() {
            Some(last) if page.len() == 2 => after = Some(last.topic.clone()),
            _ => break,
        }
    }
    assert_eq!(paged, ["b", "b/x", "z", "é", "\u{10000}"]);
    // An empty `from` is the very start.
    let page = store.scan("", None, None, 100).await.unwrap();
    assert_eq!(topics_of(&page), ["a", "b", "b/x", "z", "é", "\u{10000}"]);
}

async fn expired_messages_are_not_scanned(backend: Backend) {
    let clock = Clock::manual(T0_MS);
    let (store, _db) = fresh_store(backend, clock.clone()).await;
    for (t, expires_at_ms) in [
        ("e/0", Some(T0_MS + 10_000)),
        ("e/1", None),
        ("e/2", Some(T0_MS + 20_000)),
        ("e/3", None),
    ] {
        let mut msg = message(t, "v", T0_MS);
        msg.expires_at_ms = expires_at_ms;
        store.write(Write::Put(msg)).await.unwrap();
    }
    clock.advance(Duration::from_millis(9_999));
    let page = store.scan("e/", Some("e0"), None, 10).await.unwrap();
    assert_eq!(topics_of(&page), ["e/0", "e/1", "e/2", "e/3"]);
    clock.advance(Duration::from_millis(1));
    let page = store.scan("e/", Some("e0"), None, 10).await.unwrap();
    assert_eq!(topics_of(&page), ["e/1", "e/2", "e/3"]);
    // Expired rows do not take places in a page: `limit` counts only what is returned.
    let page = store.scan("e/", Some("e0"), None, 2).await.unwrap();
    assert_eq!(topics_of(&page), ["e/1", "e/2"]);
    clock.advance(Duration::from_millis(10_000));
    let page = store.scan("e/", None, None, 2).await.unwrap();
    assert_eq!(topics_of(&page), ["e/1", "e/3"]);
}

async fn scan_bounds_compare_multibyte_topics_by_bytes(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    // 'É' is C3 89, 'é' C3 A9, 'ê' C3 AA, 'ë' C3 AB: all after every ASCII byte.
    put_all(
        &store,
        &[
            "a/ê",
            "a/e",
            "a/é/x",
            "a/f",
            "a/z",
            "a/É",
            "a/ë",
            "a/é",
            "a/éa",
            "a/\u{10000}",
        ],
    )
    .await;
    let page = store.scan("a/é", Some("a/ê"), None, 100).await.unwrap();
    assert_eq!(topics_of(&page), ["a/é", "a/é/x", "a/éa"]);
    let page = store
        .scan("a/é", Some("a/ê"), Some(&topic("a/é")), 100)
        .await
        .unwrap();
    assert_eq!(topics_of(&page), ["a/é/x", "a/éa"]);
    // A locale would put the accented letters among the e's; byte order puts them after 'z'.
    let page = store.scan("a/f", Some("a/ê"), None, 100).await.unwrap();
    assert_eq!(
        topics_of(&page),
        ["a/f", "a/z", "a/É", "a/é", "a/é/x", "a/éa"]
    );
    let page = store.scan("a/ë", None, None, 100).await.unwrap();
    assert_eq!(topics_of(&page), ["a/ë", "a/\u{10000}"]);
}

async fn an_empty_range_scans_nothing(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    assert!(store.scan("", None, None, 10).await.unwrap().is_empty());
    put_all(&store, &["a", "b", "c"]).await;
    for (from, until) in [
        ("b", Some("b")),  // empty interval
        ("c", Some("b")),  // inverted
        ("b0", Some("c")), // nothing stored inside
        ("d", None),       // past the last topic
    ] {
        let page = store.scan(from, until, None, 10).await.unwrap();
        assert!(
            page.is_empty(),
            "[{from}, {until:?}): {:?}",
            topics_of(&page)
        );
    }
    assert!(store.scan("a", None, None, 0).await.unwrap().is_empty());
}

fn summary_topics(page: &[RetainedSummary]) -> Vec<&str> {
    page.iter().map(|s| s.topic.as_str()).collect()
}

async fn listing_a_range_returns_summaries_in_byte_order(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    let topics = [
        "a/b/c", "a", "a0", "a/é", "b", "a/", "A/b", "a/b", "a.b", "$SYS/a",
    ];
    put_all(&store, &topics).await;
    let page = store.list_range("a/", Some("a0"), None, 100).await.unwrap();
    assert_eq!(summary_topics(&page), ["a/", "a/b", "a/b/c", "a/é"]);
    // Summaries, like `list`: the payload's size (here the topic itself), not the payload.
    let listed = store.list(Some(&topic("a.b")), 4).await.unwrap();
    assert_eq!(page, listed);
    let sizes: Vec<i64> = page.iter().map(|s| s.payload_size).collect();
    assert_eq!(sizes, [2, 3, 5, 4]);
    assert!(
        page.iter()
            .all(|s| s.qos == Qos::ExactlyOnce && s.last_modified_ms == T0_MS)
    );
}

async fn range_listing_pages_resume_after_a_topic_and_end_exactly(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    put_all(
        &store,
        &[
            "c/7", "b", "c/0", "c/1", "c/2", "c", "c/3", "c/4", "c0", "c/5", "c/6", "d",
        ],
    )
    .await;
    let (from, until) = ("c/", Some("c0"));
    let first = store.list_range(from, until, None, 4).await.unwrap();
    assert_eq!(summary_topics(&first), ["c/0", "c/1", "c/2", "c/3"]);
    let second = store
        .list_range(from, until, Some(&first[3].topic), 4)
        .await
        .unwrap();
    assert_eq!(summary_topics(&second), ["c/4", "c/5", "c/6", "c/7"]);
    let third = store
        .list_range(from, until, Some(&second[3].topic), 4)
        .await
        .unwrap();
    assert!(third.is_empty(), "{:?}", summary_topics(&third));
    // Resuming after a topic that no longer exists continues from its place.
    let page = store
        .list_range(from, until, Some(&topic("c/3x")), 2)
        .await
        .unwrap();
    assert_eq!(summary_topics(&page), ["c/4", "c/5"]);
    // An `after` before the range starts at `from`; one at or past `until` finds nothing.
    let page = store
        .list_range(from, until, Some(&topic("b")), 2)
        .await
        .unwrap();
    assert_eq!(summary_topics(&page), ["c/0", "c/1"]);
    let page = store
        .list_range(from, until, Some(&topic("c0")), 2)
        .await
        .unwrap();
    assert!(page.is_empty(), "{:?}", summary_topics(&page));
    // Without an upper bound the range runs to the last topic; an empty `from` is the start.
    let page = store.list_range("c0", None, None, 100).await.unwrap();
    assert_eq!(summary_topics(&page), ["c0", "d"]);
    let page = store
        .list_range("", None, Some(&topic("c/6")), 100)
        .await
        .unwrap();
    assert_eq!(summary_topics(&page), ["c/7", "c0", "d"]);
}

async fn expired_messages_are_not_listed_in_a_range(backend: Backend) {
    let clock = Clock::manual(T0_MS);
    let (store, _db) = fresh_store(backend, clock.clone()).await;
    for (t, expires_at_ms) in [
        ("e/0", Some(T0_MS + 10_000)),
        ("e/1", None),
        ("e/2", Some(T0_MS + 20_000)),
        ("e/3", None),
    ] {
        let mut msg = message(t, "v", T0_MS);
        msg.expires_at_ms = expires_at_ms;
        store.write(Write::Put(msg)).await.unwrap();
    }
    clock.advance(Duration::from_millis(9_999));
    let page = store.list_range("e/", Some("e0"), None, 10).await.unwrap();
    assert_eq!(summary_topics(&page), ["e/0", "e/1", "e/2", "e/3"]);
    clock.advance(Duration::from_millis(1));
    // Expired rows do not take places in a page: `limit` counts only what is returned.
    let page = store.list_range("e/", Some("e0"), None, 2).await.unwrap();
    assert_eq!(summary_topics(&page), ["e/1", "e/2"]);
    clock.advance(Duration::from_millis(10_000));
    let page = store.list_range("e/", None, None, 10).await.unwrap();
    assert_eq!(summary_topics(&page), ["e/1", "e/3"]);
}

async fn range_listing_compares_multibyte_topics_by_bytes(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    put_all(
        &store,
        &[
            "a/ê",
            "a/e",
            "a/é/x",
            "a/f",
            "a/z",
            "a/É",
            "a/é",
            "a/\u{10000}",
        ],
    )
    .await;
    let page = store
        .list_range("a/é", Some("a/ê"), None, 100)
        .await
        .unwrap();
    assert_eq!(summary_topics(&page), ["a/é", "a/é/x"]);
    // A locale would put the accented letters among the e's; byte order puts them after 'z'.
    let page = store
        .list_range("a/f", Some("a/ê"), None, 100)
        .await
        .unwrap();
    assert_eq!(summary_topics(&page), ["a/f", "a/z", "a/É", "a/é", "a/é/x"]);
    let page = store.list_range("a/ê", None, None, 100).await.unwrap();
    assert_eq!(summary_topics(&page), ["a/ê", "a/\u{10000}"]);
}

async fn an_empty_range_lists_nothing(backend: Backend) {
    let (store, _db) = fresh_store(backend, Clock::manual(T0_MS)).await;
    assert!(
        store
            .list_range("", None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    put_all(&store, &["a", "b", "c"]).await;
    for (from, until) in [
        ("b", Some("b")),  // empty interval
        ("c", Some("b")),  // inverted
        ("b0", Some("c")), // nothing stored inside
        ("d", None),       // past the last topic
    ] {
        let page = store.list_range(from, until, None, 10).await.unwrap();
        assert!(
            page.is_empty(),
            "[{from}, {until:?}): {:?}",
            summary_topics(&page)
        );
    }
    assert!(
        store
            .list_range("a", None, None, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Everything a snapshot sends, once the channel is drained.
async fn drain(mut rx: tokio::sync::mpsc::Receiver<RetainedMessage>) -> Vec<RetainedMessage> {
    let mut all = Vec::new();
    while let Some(m) = rx.recv().await {
        all.push(m);
    }
    all
}

async fn a_snapshot_is_the_set_at_one_instant_despite_writes_during_it(backend: Backend) {
    let db = fresh_db(backend).await;
    let store = open_backend(&db.url).await;
    // More than a snapshot reads per query, so that later pages are read after the writes.
    let n = 1_500;
    let name = |i: usize| format!("s/{i:05}");
    let writes: Vec<_> = (0..n)
        .map(|i| Write::Put(message(&name(i), "before", T0_MS)).into())
        .collect();
    store
        .apply(&writes, None, T0_MS, common::far_deadline())
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let reader = {
        let store = store.clone();
        tokio::spawn(async move { store.snapshot("", None, T0_MS, tx).await })
    };
    // The snapshot has begun (and holds its first page); now the world changes.
    let first = rx.recv().await.expect("a first message");
    let changes = [
        Write::Put(message(&name(1_200), "after", T0_MS + 1)).into(),
        Write::Delete(topic(&name(1_300))).into(),
        Write::Put(message("s/99999", "new", T0_MS + 1)).into(),
    ];
    store
        .apply(&changes, None, T0_MS + 1, common::far_deadline())
        .await
        .unwrap();
    let mut seen = vec![first];
    seen.extend(drain(rx).await);
    assert_eq!(reader.await.unwrap().unwrap(), n as u64);
    let topics: Vec<String> = seen.iter().map(|m| m.topic.to_string()).collect();
    assert_eq!(topics, (0..n).map(name).collect::<Vec<_>>());
    assert!(seen.iter().all(|m| &m.payload[..] == b"before"));

    // A new snapshot sees the writes; one bounded by a range sees only that range.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let (sent, after) = tokio::join!(store.snapshot("", None, T0_MS + 1, tx), drain(rx));
    assert_eq!(sent.unwrap(), n as u64);
    assert_eq!(after.len(), n);
    assert!(after.iter().any(|m| &m.payload[..] == b"new"));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let (sent, range) = tokio::join!(
        store.snapshot("s/00010", Some("s/00020"), T0_MS + 1, tx),
        drain(rx)
    );
    assert_eq!((sent.unwrap(), range.len()), (10, 10));
}

/// The payload bytes are summed over live messages only (a rewrite counts its new payload, a
/// tombstone nothing), and the sum stands for a minute of the store's clock.
async fn payload_bytes_sum_live_messages_and_stand_for_a_minute(backend: Backend) {
    let clock = Clock::manual(T0_MS);
    let (store, _db) = fresh_store(backend, clock.clone()).await;
    assert_eq!(store.payload_bytes().await.unwrap(), 0);
    clock.advance(PAYLOAD_BYTES_MAX_AGE);
    for (t, payload) in [("b/1", "12345"), ("b/2", "1234567"), ("b/3", "123")] {
        store
            .write(Write::Put(message(t, payload, T0_MS)))
            .await
            .unwrap();
    }
    store
        .write(Write::Put(message("b/1", "1", T0_MS + 1)))
        .await
        .unwrap();
    store.write(Write::Delete(topic("b/3"))).await.unwrap();
    assert_eq!(store.payload_bytes().await.unwrap(), 1 + 7);
    // Within the minute, the sum taken stands.
    store
        .write(Write::Put(message("b/4", "1234", T0_MS + 2)))
        .await
        .unwrap();
    clock.advance(PAYLOAD_BYTES_MAX_AGE - Duration::from_millis(1));
    assert_eq!(store.payload_bytes().await.unwrap(), 8);
    clock.advance(Duration::from_millis(1));
    assert_eq!(store.payload_bytes().await.unwrap(), 12);
}

async fn a_batch_past_one_write_ticket_is_refused_unwritten(backend: Backend) {
    let db = fresh_db(backend).await;
    let backend = open_backend(&db.url).await;
    let batch = |n: usize| -> Vec<retaind::store::OwnedWrite> {
        (0..n)
            .map(|i| Write::Put(message(&format!("t/{i}"), "1", T0_MS)).into())
            .collect()
    };
    let refused = backend
        .apply(&batch(4096), None, T0_MS, common::far_deadline())
        .await;
    assert!(
        matches!(&refused, Err(StoreError::Internal(m)) if m.contains("4096 writes")),
        "{refused:?}"
    );
    assert_eq!(backend.count(None).await.unwrap(), 0, "nothing written");
    let verdicts = backend
        .apply(&batch(4095), None, T0_MS, common::far_deadline())
        .await
        .unwrap();
    assert_eq!(verdicts.len(), 4095);
    assert_eq!(backend.count(None).await.unwrap(), 4095);
}

fn saved(
    client_id: &str,
    creator: Option<&str>,
    expires: Option<i64>,
    state: &[u8],
) -> SavedSession {
    SavedSession {
        client_id: client_id.into(),
        creator: creator.map(str::to_owned),
        expires_at_ms: expires,
        state: Bytes::copy_from_slice(state),
    }
}

async fn saved_sessions_are_taken_once(backend: Backend) {
    let db = fresh_db(backend).await;
    let backend = open_backend(&db.url).await;
    assert_eq!(
        backend
            .take_sessions(10, usize::MAX, common::far_deadline())
            .await
            .unwrap(),
        []
    );
    backend
        .save_sessions(&[
            saved("b", None, None, &[]),
            saved("ü", Some("alice"), Some(T0_MS), &[0, 255, 0]),
            saved("a", Some("bob"), Some(1), b"old"),
        ])
        .await
        .unwrap();
    // A later save of a client id replaces its row, every column.
    let a = saved("a", None, None, &[1, 0, 2]);
    backend
        .save_sessions(std::slice::from_ref(&a))
        .await
        .unwrap();
    let mut taken = backend
        .take_sessions(2, usize::MAX, common::far_deadline())
        .await
        .unwrap();
    assert_eq!(taken.len(), 2);
    taken.extend(
        backend
            .take_sessions(2, usize::MAX, common::far_deadline())
            .await
            .unwrap(),
    );
    taken.sort_by(|x, y| x.client_id.cmp(&y.client_id));
    assert_eq!(
        taken,
        [
            a,
            saved("b", None, None, &[]),
            saved("ü", Some("alice"), Some(T0_MS), &[0, 255, 0])
        ]
    );
    assert_eq!(
        backend
            .take_sessions(2, usize::MAX, common::far_deadline())
            .await
            .unwrap(),
        [],
        "taken means deleted"
    );
    // Another handle on the database (a restart) finds none either.
    drop(backend);
    let again = open_backend(&db.url).await;
    assert_eq!(
        again
            .take_sessions(10, usize::MAX, common::far_deadline())
            .await
            .unwrap(),
        []
    );
}

async fn a_take_holds_to_its_bytes_but_takes_one_session_at_least(backend: Backend) {
    let db = fresh_db(backend).await;
    let backend = open_backend(&db.url).await;
    let rows: Vec<SavedSession> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| saved(id, None, None, &[1; 10]))
        .collect();
    backend.save_sessions(&rows).await.unwrap();
    assert_eq!(
        backend
            .take_sessions(10, 25, common::far_deadline())
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        backend
            .take_sessions(10, 5, common::far_deadline())
            .await
            .unwrap()
            .len(),
        1,
        "one larger than the bound comes alone"
    );
    assert_eq!(
        backend
            .take_sessions(10, 10, common::far_deadline())
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        backend
            .take_sessions(10, 10, common::far_deadline())
            .await
            .unwrap(),
        []
    );
}

/// A take held up past its deadline (another session of the database holds the table) fails
/// and takes nothing, then or later: the rows are all there for the next take.
async fn a_take_held_up_past_its_deadline_takes_nothing(backend: Backend) {
    use sqlx::{Connection, Executor};
    let db = fresh_db(backend).await;
    let store = open_backend(&db.url).await;
    let rows: Vec<SavedSession> = ["a", "b"]
        .iter()
        .map(|id| saved(id, None, None, b"state"))
        .collect();
    store.save_sessions(&rows).await.unwrap();
    let release = match backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            conn.execute("BEGIN; LOCK TABLE saved_sessions IN ACCESS EXCLUSIVE MODE")
                .await
                .unwrap();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(800)).await;
                conn.execute("COMMIT").await.unwrap();
            })
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            conn.execute("BEGIN EXCLUSIVE").await.unwrap();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(800)).await;
                conn.execute("COMMIT").await.unwrap();
            })
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    let taken = store.take_sessions(10, usize::MAX, deadline).await;
    assert!(
        matches!(taken, Err(StoreError::Unavailable(_))),
        "{taken:?}"
    );
    release.await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut back = store
        .take_sessions(10, usize::MAX, common::far_deadline())
        .await
        .unwrap();
    back.sort_by(|x, y| x.client_id.cmp(&y.client_id));
    assert_eq!(back, rows, "the late take committed nothing");
}

async fn a_saved_session_outlives_the_store_that_saved_it(backend: Backend) {
    let db = fresh_db(backend).await;
    let big = vec![7u8; 3 << 20];
    {
        let backend = open_backend(&db.url).await;
        backend
            .save_sessions(&[saved("c", None, Some(5), &big)])
            .await
            .unwrap();
    }
    let backend = open_backend(&db.url).await;
    assert_eq!(
        backend
            .take_sessions(1, usize::MAX, common::far_deadline())
            .await
            .unwrap(),
        [saved("c", None, Some(5), &big)]
    );
}

for_each_backend!(
    saved_sessions_are_taken_once,
    a_take_holds_to_its_bytes_but_takes_one_session_at_least,
    a_take_held_up_past_its_deadline_takes_nothing,
    a_saved_session_outlives_the_store_that_saved_it,
    a_batch_past_one_write_ticket_is_refused_unwritten,
    payload_bytes_sum_live_messages_and_stand_for_a_minute,
    a_snapshot_is_the_set_at_one_instant_despite_writes_during_it,
    every_field_round_trips,
    a_put_replaces_and_a_delete_removes,
    within_one_batch_the_last_write_per_topic_wins,
    concurrent_writes_all_land,
    writes_to_a_topic_commit_in_order_across_lanes,
    a_write_batch_commits_what_it_gathered_once_submitted,
    a_write_batch_dropped_unsubmitted_fails_its_writes,
    listing_is_in_byte_order_and_resumes_after_a_topic,
    expired_messages_are_invisible_then_purged,
    a_delete_leaves_an_invisible_tombstone_until_the_purge,
    a_write_with_an_earlier_ticket_changes_nothing,
    a_large_batch_decides_each_row_on_its_own,
    a_batchs_rows_keep_their_own_fields_shared_or_not,
    idle_messages_are_purged_and_reads_keep_them,
    a_recorded_read_never_moves_access_time_backwards,
    the_token_key_is_shared_by_every_node_on_a_database,
    data_survives_reopening,
    scanning_a_range_returns_full_messages_in_byte_order,
    a_scan_does_not_count_as_a_read,
    scan_pages_resume_after_a_topic_and_end_exactly,
    a_scan_without_upper_bound_runs_to_the_end,
    a_deliverys_pages_are_bounded_by_the_setting_or_else_the_backend,
    a_deliverys_scan_reads_what_a_scan_reads,
    expired_messages_are_not_scanned,
    scan_bounds_compare_multibyte_topics_by_bytes,
    an_empty_range_scans_nothing,
    listing_a_range_returns_summaries_in_byte_order,
    range_listing_pages_resume_after_a_topic_and_end_exactly,
    expired_messages_are_not_listed_in_a_range,
    range_listing_compares_multibyte_topics_by_bytes,
    an_empty_range_lists_nothing,
);
