use std::num::NonZeroU32;
use std::sync::OnceLock;

use super::*;
use crate::broker::queue_memory::QueueMemory;
use crate::broker::registry::Sessions;
use crate::broker::session::SessionLimits;
use crate::metrics::Metrics;
use crate::store::{MessageProperties, PayloadFormat, UserProperty};
use crate::topic::TopicName;

fn sessions() -> Sessions {
    let limits = SessionLimits {
        max_queued: 100,
        max_queued_bytes: 1 << 20,
    };
    Sessions::new(limits, QueueMemory::unlimited(), None, Metrics::default())
}

fn topic(s: &str) -> TopicName {
    TopicName::parse(s, TopicLimits::default()).unwrap()
}

/// A message with every part a frame carries.
fn delivery(payload: &'static str, qos: Qos, ids: &[u32]) -> Delivery {
    let message = Message {
        topic: topic("a/ü"),
        payload: Bytes::from_static(payload.as_bytes()),
        qos: Qos::ExactlyOnce,
        retain: true,
        properties: MessageProperties {
            user_properties: vec![UserProperty {
                key: "k".into(),
                value: "v".into(),
            }],
            content_type: Some("text/plain".into()),
            response_topic: Some(topic("replies")),
            correlation_data: Some(Bytes::from_static(&[1, 2])),
            payload_format: PayloadFormat::Utf8,
        },
        expires_at_ms: Some(99_000),
        origin: Some(Arc::from("publisher")),
        stamp: OnceLock::new(),
        queued: Default::default(),
    };
    Delivery {
        message: Arc::new(message),
        qos,
        retain: false,
        subscription_ids: ids.iter().map(|&i| NonZeroU32::new(i).unwrap()).collect(),
    }
}

fn subscription(filter: &str, qos: u8, id: Option<u32>) -> StoredSubscription {
    StoredSubscription {
        filter: filter.into(),
        qos,
        no_local: qos == 2,
        retain_as_published: qos == 1,
        id,
    }
}

fn pkid(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

fn same_delivery(a: &Delivery, b: &Delivery) {
    let (m, n) = (&a.message, &b.message);
    assert_eq!(
        (&m.topic, &m.payload, m.qos, m.retain, &m.properties),
        (&n.topic, &n.payload, n.qos, n.retain, &n.properties)
    );
    assert_eq!((m.expires_at_ms, &m.origin), (n.expires_at_ms, &n.origin));
    assert_eq!(
        (a.qos, a.retain, &a.subscription_ids),
        (b.qos, b.retain, &b.subscription_ids)
    );
}

#[test]
fn a_session_reads_back_as_it_was_saved() {
    let sessions = sessions();
    let subscriptions = vec![
        subscription("a/#", 1, Some(7)),
        subscription("$share/g/b/+", 2, None),
    ];
    let inflight = vec![
        Inflight {
            packet_id: pkid(5),
            delivery: delivery("sent", Qos::AtLeastOnce, &[7]),
            released: false,
        },
        Inflight {
            packet_id: pkid(6),
            delivery: delivery("received", Qos::ExactlyOnce, &[]),
            released: true,
        },
    ];
    let queue = vec![
        delivery("next", Qos::AtLeastOnce, &[7, 8]),
        delivery("last", Qos::ExactlyOnce, &[]),
    ];
    let session = sessions
        .restore(
            Arc::from("c"),
            Some("alice".into()),
            None,
            1_234,
            &subscriptions,
            |state| {
                state.restore(
                    inflight.clone(),
                    queue.clone(),
                    [pkid(3), pkid(9)].into_iter().collect(),
                )
            },
        )
        .unwrap();

    let row = encode(&session, None);
    assert_eq!(
        (
            row.client_id.as_str(),
            row.creator.as_deref(),
            row.expires_at_ms
        ),
        ("c", Some("alice"), Some(1_234))
    );
    let back = decode(&row.state, TopicLimits::default()).unwrap();
    let mut got = back.subscriptions.clone();
    got.sort_by(|a, b| a.filter.cmp(&b.filter));
    let mut want = subscriptions;
    want.sort_by(|a, b| a.filter.cmp(&b.filter));
    assert_eq!(got, want);
    assert_eq!(back.inflight.len(), 2);
    for (got, want) in back.inflight.iter().zip(&inflight) {
        assert_eq!(
            (got.packet_id, got.released),
            (want.packet_id, want.released)
        );
        same_delivery(&got.delivery, &want.delivery);
    }
    assert_eq!(back.queue.len(), 2);
    for (got, want) in back.queue.iter().zip(&queue) {
        same_delivery(got, want);
    }
    let mut awaiting: Vec<u16> = back
        .awaiting_release
        .settled_ids()
        .map(NonZeroU16::get)
        .collect();
    awaiting.sort_unstable();
    assert_eq!(awaiting, [3, 9]);
}

#[test]
fn the_will_a_session_waits_out_reads_back_with_when_it_is_due() {
    let sessions = sessions();
    let session = sessions
        .restore(Arc::from("dev"), None, None, NEVER, &[], |_| {})
        .unwrap();
    let d = delivery("offline", Qos::AtLeastOnce, &[]);
    let will = Will {
        publication: Publication {
            topic: d.message.topic.clone(),
            payload: d.message.payload.clone(),
            qos: Qos::AtLeastOnce,
            retain: true,
            properties: d.message.properties.clone(),
            expiry_secs: Some(30),
        },
        delay: Duration::from_secs(5),
        owner: Owner {
            name: "fleet".into(),
            max_messages: Some(10),
        },
    };
    let pending = Pending {
        will: will.clone(),
        due_at_ms: 77_000,
        ended: Ended::on_a_single_node(3),
        session_ended: Default::default(),
        resumed: Default::default(),
    };
    let row = encode(&session, Some(&pending));
    let back = decode(&row.state, TopicLimits::default()).unwrap();
    let (got, due_at_ms) = back.will.expect("the Will is saved with its session");
    assert_eq!(due_at_ms, 77_000);
    assert_eq!(got.publication, will.publication);
    assert_eq!(got.owner, will.owner);
    assert!(back.dropped.is_empty());
    let without = encode(&session, None);
    assert!(
        decode(&without.state, TopicLimits::default())
            .unwrap()
            .will
            .is_none()
    );
}

#[test]
fn a_session_that_never_expires_is_saved_without_an_expiry() {
    let sessions = sessions();
    let session = sessions
        .restore(Arc::from("forever"), None, None, NEVER, &[], |_| {})
        .unwrap();
    let row = encode(&session, None);
    assert_eq!((row.creator, row.expires_at_ms), (None, None));
    let back = decode(&row.state, TopicLimits::default()).unwrap();
    assert!(back.subscriptions.is_empty() && back.inflight.is_empty() && back.queue.is_empty());
}

#[test]
fn another_format_or_a_damaged_state_is_unreadable() {
    let sessions = sessions();
    let session = sessions
        .restore(Arc::from("c"), None, None, NEVER, &[], |state| {
            state.restore(
                Vec::new(),
                vec![delivery("q", Qos::AtLeastOnce, &[])],
                Default::default(),
            )
        })
        .unwrap();
    let good = encode(&session, None).state;
    let limits = TopicLimits::default();
    let mut other = good.to_vec();
    other[0] = VERSION + 1;
    assert!(matches!(
        decode(&other, limits),
        Err(Unreadable::Version(v)) if v == VERSION + 1
    ));
    assert!(matches!(decode(&[], limits), Err(Unreadable::State)));
    assert!(matches!(
        decode(&good[..good.len() - 1], limits),
        Err(Unreadable::State)
    ));
}

#[test]
fn a_message_that_cannot_be_read_back_is_left_out_alone() {
    let sessions = sessions();
    let short = Delivery {
        message: Message::plain("s", "fits", Qos::AtLeastOnce),
        ..delivery("", Qos::AtLeastOnce, &[])
    };
    let session = sessions
        .restore(
            Arc::from("c"),
            None,
            None,
            NEVER,
            &[subscription("a/#", 1, None)],
            |state| {
                state.restore(
                    vec![Inflight {
                        packet_id: pkid(1),
                        delivery: delivery("long topic", Qos::AtLeastOnce, &[]),
                        released: false,
                    }],
                    vec![short.clone(), delivery("long topic", Qos::AtLeastOnce, &[])],
                    Default::default(),
                )
            },
        )
        .unwrap();
    let saved = encode(&session, None).state;
    // Topics of at most two bytes: "a/ü" is four, "s" is one.
    let tight = TopicLimits {
        max_bytes: 2,
        max_levels: 8,
    };
    let back = decode(&saved, tight).unwrap();
    assert_eq!(back.dropped.len(), 2);
    assert!(back.inflight.is_empty());
    assert_eq!(back.queue.len(), 1);
    same_delivery(&back.queue[0], &short);
    assert_eq!(back.subscriptions.len(), 1, "the session itself is kept");
}

fn row(bytes: usize) -> SavedSession {
    SavedSession {
        client_id: String::new(),
        creator: None,
        expires_at_ms: None,
        state: Bytes::from(vec![0; bytes]),
    }
}

#[test]
fn writes_hold_a_count_and_a_byte_bound() {
    let counts = |rows: Vec<SavedSession>| {
        writes(rows.into_iter())
            .map(|w| w.len())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        counts((0..130).map(|_| row(10)).collect()),
        [SESSIONS_PER_CALL, SESSIONS_PER_CALL, 2]
    );
    let big = SESSION_BYTES_PER_CALL / 2 + 1;
    assert_eq!(
        counts(vec![row(big), row(big), row(1), row(big)]),
        [1, 2, 1]
    );
    assert_eq!(
        counts(vec![row(SESSION_BYTES_PER_CALL * 2), row(1)]),
        [1, 1]
    );
    assert!(counts(Vec::new()).is_empty());
}
