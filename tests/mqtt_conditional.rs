//! Conditional publish over MQTT 5 (issue 17): a retained PUBLISH with the user property
//! `retaind-if-match` = revision or `retaind-if-none-match` = `*` is stored only if the
//! condition holds. Failure: 0x80 and a reason string; a malformed condition: 0x83; nothing
//! stored, nothing delivered; QoS 0 counted as dropped. Sent from a raw socket, which lets a
//! test pipeline publishes and read each answer's reason code and reason string; a rumqttc
//! subscriber checks what is delivered. Every test runs on both stores.

mod common;

use std::collections::HashMap;

use base64::Engine;

use common::mqtt::raw::{Raw, RawPacket, build};
use common::mqtt::{Qos5, V5, p5, v5_options};
use common::nats::Nats;
use common::sse::Sse;
use common::{Backend, TestApp, spawn_app, topic};
use retaind::store::RetainedMessage;

const REQUEST_PROBLEM_INFO: u8 = 0x17;
const USER_PROPERTY: u8 = 0x26;
const REASON_STRING: u8 = 0x1F;

const SUCCESS: u8 = 0x00;
const UNSPECIFIED_ERROR: u8 = 0x80;
const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;

const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBCOMP: u8 = 7;

/// An MQTT 5 client on a raw socket; `problem_info: false` sends Request Problem Information 0.
async fn publisher(app: &TestApp, id: &str, problem_info: bool) -> Raw {
    let props: &[u8] = if problem_info {
        &[]
    } else {
        &[REQUEST_PROBLEM_INFO, 0]
    };
    let (raw, ack) = Raw::connect(app, &build::connect(id, true, 60, Some(props))).await;
    assert_eq!(ack.body[1], 0, "CONNACK refused: {ack:?}");
    raw
}

fn user_properties(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.push(USER_PROPERTY);
        out.extend(build::string(k));
        out.extend(build::string(v));
    }
    out
}

/// A PUBLISH with these user properties.
fn publish(
    topic: &str,
    qos: u8,
    retain: bool,
    pkid: u16,
    props: &[(&str, &str)],
    payload: &[u8],
) -> Vec<u8> {
    let props = user_properties(props);
    build::publish(topic, qos, retain, false, pkid, Some(&props), payload)
}

/// A PUBACK or PUBREC as read: its packet id, reason code and reason string.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    kind: u8,
    pkid: u16,
    reason: u8,
    why: Option<String>,
}

fn answer(p: &RawPacket) -> Answer {
    assert!(
        [PUBACK, PUBREC].contains(&p.kind()),
        "expected PUBACK or PUBREC, got {p:?}"
    );
    let b = &p.body;
    let mut why = None;
    if b.len() > 3 {
        // One-byte property length: a reason string here is far below 128 bytes.
        let props = &b[4..4 + usize::from(b[3])];
        let mut at = 0;
        while at < props.len() {
            let id = props[at];
            let len = usize::from(u16::from_be_bytes([props[at + 1], props[at + 2]]));
            let value = &props[at + 3..at + 3 + len];
            if id == REASON_STRING {
                why = Some(String::from_utf8(value.to_vec()).unwrap());
            }
            at += 3 + len;
        }
    }
    Answer {
        kind: p.kind(),
        pkid: u16::from_be_bytes([b[0], b[1]]),
        reason: p.ack_reason(),
        why,
    }
}

/// Sends a publish and reads its PUBACK or PUBREC; a successful QoS 2 exchange is completed.
async fn send(raw: &mut Raw, packet: &[u8]) -> Answer {
    raw.send(packet).await;
    let p = raw
        .recv()
        .await
        .expect("an answer, not a closed connection");
    let answer = answer(&p);
    if answer.kind == PUBREC && answer.reason < 0x80 {
        raw.send(&build::ack(0x62, answer.pkid)).await;
        raw.expect(PUBCOMP).await;
    }
    answer
}

fn ok(pkid: u16) -> Answer {
    Answer {
        kind: PUBACK,
        pkid,
        reason: SUCCESS,
        why: None,
    }
}

fn failed(kind: u8, pkid: u16, why: &str) -> Answer {
    Answer {
        kind,
        pkid,
        reason: UNSPECIFIED_ERROR,
        why: Some(why.to_owned()),
    }
}

fn malformed(kind: u8, pkid: u16, why: &str) -> Answer {
    Answer {
        kind,
        pkid,
        reason: IMPLEMENTATION_SPECIFIC_ERROR,
        why: Some(why.to_owned()),
    }
}

fn not_revision(r: i64) -> String {
    format!("precondition failed: the topic's revision is not {r}")
}

const HAS_MESSAGE: &str = "precondition failed: the topic has a retained message";

async fn stored(app: &TestApp, t: &str) -> Option<RetainedMessage> {
    app.store().get(topic(t)).await.expect("reading the store")
}

/// The stored message, which must exist.
async fn current(app: &TestApp, t: &str) -> RetainedMessage {
    stored(app, t)
        .await
        .unwrap_or_else(|| panic!("{t} is stored"))
}

/// A subscriber to `filter` that is sent no retained copies, only what is published after.
async fn subscriber(app: &TestApp, id: &str, filter: &str) -> V5 {
    let (mut sub, _) = V5::connect(v5_options(app, id)).await;
    let mut f = p5::Filter::new(filter, Qos5::AtLeastOnce);
    f.retain_forward_rule = p5::RetainForwardRule::Never;
    sub.subscribe_filter(f, None).await;
    sub
}

/// Publishes a marker to `marker_topic` (which `sub` receives) over HTTP and checks that it is
/// the next thing `sub` receives: nothing was delivered before it.
async fn nothing_delivered(app: &TestApp, sub: &mut V5, marker_topic: &str) {
    let res = app
        .publish(
            format!("/topics/{}?qos=1", common::encode(marker_topic)),
            "marker",
        )
        .await;
    assert_eq!(res.status(), 200);
    let next = sub.next_publish().await;
    assert_eq!(
        (&next.topic[..], &next.payload[..]),
        (marker_topic.as_bytes(), &b"marker"[..]),
        "something was delivered before the marker: {next:?}"
    );
}

async fn a_matching_revision_is_stored_and_records_its_writer(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut p = publisher(&app, "writer-1", true).await;
    assert_eq!(
        send(&mut p, &publish("c/t", 1, true, 1, &[], b"v1")).await,
        ok(1)
    );
    let r1 = current(&app, "c/t").await.revision;

    let if_match = [("retaind-if-match", &*r1.to_string())];
    let answer = send(&mut p, &publish("c/t", 1, true, 2, &if_match, b"v2")).await;
    assert_eq!(answer, ok(2));
    let m = current(&app, "c/t").await;
    assert_eq!(&m.payload[..], b"v2");
    assert!(m.revision > r1);
    let writer = m.writer.expect("the writer is recorded");
    assert_eq!(&*writer.client, "writer-1");
    // GetRetainedMessage shows the same: the revision as ETag, and the writer.
    let got = app.get("/retainedMessage/c%2Ft").await;
    let quoted = got.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(quoted, format!("\"{}\"", m.revision));
    let got: serde_json::Value = got.json().await.unwrap();
    assert_eq!(got["writer"]["clientId"], "writer-1");
    assert_eq!(got["revision"], m.revision);

    // The ETag copied as it is (quoted) works as well; QoS 2 is answered by PUBREC.
    let answer = send(
        &mut p,
        &publish("c/t", 2, true, 3, &[("retaind-if-match", &quoted)], b"v3"),
    )
    .await;
    assert_eq!((answer.kind, answer.reason), (PUBREC, SUCCESS));
    assert_eq!(&current(&app, "c/t").await.payload[..], b"v3");
}

async fn a_stale_revision_is_refused_with_0x80_and_nothing_stored_or_delivered(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut p = publisher(&app, "stale", true).await;
    send(&mut p, &publish("c/t", 1, true, 1, &[], b"v1")).await;
    let r1 = current(&app, "c/t").await.revision;
    send(&mut p, &publish("c/t", 1, true, 2, &[], b"v2")).await;
    let before = current(&app, "c/t").await;
    let mut sub = subscriber(&app, "sub", "c/#").await;

    let if_match = [("retaind-if-match", &*r1.to_string())];
    let answer = send(&mut p, &publish("c/t", 1, true, 3, &if_match, b"v3")).await;
    assert_eq!(answer, failed(PUBACK, 3, &not_revision(r1)));
    let answer = send(&mut p, &publish("c/t", 2, true, 4, &if_match, b"v3")).await;
    assert_eq!(answer, failed(PUBREC, 4, &not_revision(r1)));
    // The QoS 2 exchange ended at PUBREC: its packet id is free again at once.
    assert_eq!(
        send(&mut p, &publish("c/x", 1, false, 4, &[], b""))
            .await
            .reason,
        SUCCESS
    );

    assert_eq!(current(&app, "c/t").await, before, "stored unchanged");
    let next = sub.next_publish().await;
    assert_eq!(&next.topic[..], b"c/x", "only the unconditional publish");
    nothing_delivered(&app, &mut sub, "c/marker").await;
}

async fn a_client_that_did_not_ask_for_problem_information_hears_only_the_code(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut p = publisher(&app, "quiet", false).await;
    let none_match = [("retaind-if-none-match", "*")];
    assert_eq!(
        send(&mut p, &publish("c/t", 1, true, 1, &none_match, b"v1")).await,
        ok(1)
    );
    let answer = send(&mut p, &publish("c/t", 1, true, 2, &none_match, b"v2")).await;
    assert_eq!((answer.reason, answer.why), (UNSPECIFIED_ERROR, None));
    let bad = [("retaind-if-match", "x")];
    let answer = send(&mut p, &publish("c/t", 1, true, 3, &bad, b"v2")).await;
    assert_eq!(
        (answer.reason, answer.why),
        (IMPLEMENTATION_SPECIFIC_ERROR, None)
    );
    assert_eq!(&current(&app, "c/t").await.payload[..], b"v1");
}

async fn create_only_stores_once_and_again_after_a_delete(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut p = publisher(&app, "creator", true).await;
    let none_match = [("retaind-if-none-match", "*")];
    assert_eq!(
        send(&mut p, &publish("c/t", 1, true, 1, &none_match, b"v1")).await,
        ok(1)
    );
    let first = current(&app, "c/t").await;
    let answer = send(&mut p, &publish("c/t", 1, true, 2, &none_match, b"v2")).await;
    assert_eq!(answer, failed(PUBACK, 2, HAS_MESSAGE));
    assert_eq!(current(&app, "c/t").await, first);

    // Deleted (a tombstone is left): the topic has no retained message again.
    assert_eq!(
        send(&mut p, &publish("c/t", 1, true, 3, &[], b"")).await,
        ok(3)
    );
    assert_eq!(
        send(&mut p, &publish("c/t", 1, true, 4, &none_match, b"v3")).await,
        ok(4)
    );
    assert_eq!(&current(&app, "c/t").await.payload[..], b"v3");
}

async fn a_delete_applies_only_if_the_revision_matches(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut p = publisher(&app, "deleter", true).await;
    send(&mut p, &publish("c/t", 1, true, 1, &[], b"v1")).await;
    let m = current(&app, "c/t").await;
    let mut sub = subscriber(&app, "sub", "c/#").await;

    let stale = [("retaind-if-match", &*(m.revision - 1).to_string())];
    let answer = send(&mut p, &publish("c/t", 1, true, 2, &stale, b"")).await;
    assert_eq!(answer, failed(PUBACK, 2, &not_revision(m.revision - 1)));
    assert_eq!(current(&app, "c/t").await, m);
    nothing_delivered(&app, &mut sub, "c/marker").await;

    let fresh = [("retaind-if-match", &*m.revision.to_string())];
    assert_eq!(
        send(&mut p, &publish("c/t", 1, true, 3, &fresh, b"")).await,
        ok(3)
    );
    assert_eq!(stored(&app, "c/t").await, None);
    // A delete when there is nothing left to match fails too.
    let answer = send(&mut p, &publish("c/t", 1, true, 4, &fresh, b"")).await;
    assert_eq!(answer.reason, UNSPECIFIED_ERROR);
}

/// User properties, as (name, value).
type Props<'a> = Vec<(&'a str, &'a str)>;

async fn malformed_conditions_are_refused_with_0x83_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut p = publisher(&app, "malformed", true).await;
    send(&mut p, &publish("c/t", 1, true, 1, &[], b"v1")).await;
    let before = current(&app, "c/t").await;
    let r = before.revision.to_string();
    let mut sub = subscriber(&app, "sub", "c/#").await;

    let both = "malformed condition: at most one retaind-if-match or retaind-if-none-match";
    let digits = "malformed condition: retaind-if-match must be a revision (decimal digits)";
    let star = "malformed condition: retaind-if-none-match must be *";
    let retained = "malformed condition: a condition needs the RETAIN flag";
    let weak = format!("W/\"{r}\"");
    let cases: Vec<(Props, bool, &str)> = vec![
        (
            vec![("retaind-if-match", &r), ("retaind-if-none-match", "*")],
            true,
            both,
        ),
        (
            vec![("retaind-if-match", &r), ("RETAIND-IF-MATCH", &r)],
            true,
            both,
        ),
        (vec![("retaind-if-match", "abc")], true, digits),
        (vec![("retaind-if-match", "-1")], true, digits),
        (vec![("retaind-if-match", "007")], true, digits),
        (vec![("retaind-if-match", &weak)], true, digits),
        (vec![("retaind-if-match", "")], true, digits),
        (vec![("retaind-if-none-match", "x")], true, star),
        // Not retained: even the ordinary routing does not happen.
        (vec![("retaind-if-match", &r)], false, retained),
        (vec![("retaind-if-none-match", "*")], false, retained),
    ];
    let mut pkid = 1;
    for (props, retain, why) in &cases {
        for (qos, kind) in [(1, PUBACK), (2, PUBREC)] {
            pkid += 1;
            let answer = send(&mut p, &publish("c/t", qos, *retain, pkid, props, b"v2")).await;
            assert_eq!(
                answer,
                malformed(kind, pkid, why),
                "{props:?} retain={retain}"
            );
        }
    }
    assert_eq!(current(&app, "c/t").await, before, "stored unchanged");
    nothing_delivered(&app, &mut sub, "c/marker").await;
    // The connection is still good.
    assert_eq!(
        send(&mut p, &publish("c/t", 1, true, 1, &[], b"v3")).await,
        ok(1)
    );
}

async fn the_condition_is_taken_out_before_storing_and_delivering(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut p = publisher(&app, "stripper", true).await;
    let mut sub = subscriber(&app, "sub", "c/#").await;
    let props = [
        ("before", "1"),
        ("Retaind-If-None-Match", "*"),
        ("after", "2"),
    ];
    assert_eq!(
        send(&mut p, &publish("c/t", 1, true, 1, &props, b"v1")).await,
        ok(1)
    );
    let r = current(&app, "c/t").await.revision.to_string();
    let props = [("retaind-IF-match", &*r), ("before", "1"), ("after", "2")];
    assert_eq!(
        send(&mut p, &publish("c/t", 1, true, 2, &props, b"v2")).await,
        ok(2)
    );

    let kept = vec![
        ("before".to_owned(), "1".to_owned()),
        ("after".to_owned(), "2".to_owned()),
    ];
    for payload in [&b"v1"[..], b"v2"] {
        let got = sub.next_publish().await;
        assert_eq!(&got.payload[..], payload);
        assert_eq!(
            got.properties.unwrap().user_properties,
            kept,
            "delivered live"
        );
    }
    let m = current(&app, "c/t").await;
    let stored: Vec<_> = m
        .properties
        .user_properties
        .iter()
        .map(|u| (u.key.clone(), u.value.clone()))
        .collect();
    assert_eq!(stored, kept, "stored");
    // A new subscription's retained copy comes from the store.
    let (mut late, _) = V5::connect(v5_options(&app, "late")).await;
    late.subscribe("c/t", Qos5::AtLeastOnce).await;
    let got = late.next_publish().await;
    assert_eq!(
        got.properties.unwrap().user_properties,
        kept,
        "retained copy"
    );
    // And GetRetainedMessage shows only the others.
    let get = app.get_json("/retainedMessage/c%2Ft").await;
    let b64 = get["userProperties"].as_str().expect("userProperties");
    let json = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(shown, serde_json::json!([{"before": "1"}, {"after": "2"}]));
}

/// The next event of the watch that is not an idle watch's `progress`.
async fn next_change(watch: &mut Sse) -> common::sse::SseEvent {
    loop {
        let event = watch.expect().await;
        if event.event != "progress" {
            return event;
        }
    }
}

async fn a_watch_sees_the_conditional_put_without_its_condition_and_nothing_of_a_failure(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let mut watch = Sse::new(app.get("/retainedMessage-watch?topicFilter=c%2F%23").await);
    assert_eq!(next_change(&mut watch).await.event, "synced");
    let mut p = publisher(&app, "watched", true).await;
    let props = [("retaind-if-none-match", "*"), ("kept", "1")];
    assert_eq!(
        send(&mut p, &publish("c/t", 1, true, 1, &props, b"v1")).await,
        ok(1)
    );
    let put = next_change(&mut watch).await;
    assert_eq!(put.event, "put");
    let data = put.json();
    assert_eq!(
        (&data["topic"], &data["writer"]["clientId"]),
        (&"c/t".into(), &"watched".into())
    );
    let b64 = data["userProperties"].as_str().expect("userProperties");
    let shown: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(shown, serde_json::json!([{"kept": "1"}]));

    let answer = send(&mut p, &publish("c/t", 1, true, 2, &props, b"v2")).await;
    assert_eq!(answer.reason, UNSPECIFIED_ERROR);
    assert_eq!(
        send(&mut p, &publish("c/marker", 1, true, 3, &[], b"m")).await,
        ok(3)
    );
    let next = next_change(&mut watch).await;
    assert_eq!(
        (next.event.as_str(), &next.json()["topic"]),
        ("put", &"c/marker".into()),
        "the failed publish is no change"
    );
}

/// Every sample of the page by its name and sorted labels (as tests/metrics.rs reads it).
async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let page = app.get("/metrics").await.text().await.unwrap();
    let lines = page.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    let mut samples = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<_> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        if let prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) = s.value {
            samples.insert(format!("{}{{{}}}", s.metric, labels.join(",")), v);
        }
    }
    samples
}

fn dropped(samples: &HashMap<String, f64>, reason: &str) -> f64 {
    let series = format!("retaind_mqtt_messages_dropped_total{{reason={reason}}}");
    samples.get(&series).copied().unwrap_or(0.0)
}

async fn a_qos0_publish_whose_condition_fails_is_dropped_and_counted(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut p = publisher(&app, "qos0", true).await;
    send(&mut p, &publish("c/t", 1, true, 1, &[], b"v1")).await;
    let before_state = current(&app, "c/t").await;
    let mut sub = subscriber(&app, "sub", "c/#").await;
    let before = scrape(&app).await;

    let stale = [("retaind-if-match", "1")];
    p.send(&publish("c/t", 0, true, 0, &stale, b"v2")).await;
    let none_match = [("retaind-if-none-match", "*")];
    p.send(&publish("c/t", 0, true, 0, &none_match, b"v2"))
        .await;
    let bad = [("retaind-if-match", "v1")];
    p.send(&publish("c/t", 0, true, 0, &bad, b"v2")).await;
    // Answered after the three QoS 0 publishes: they have been settled by then.
    assert_eq!(
        send(&mut p, &publish("c/x", 1, false, 2, &[], b"")).await,
        ok(2)
    );

    let after = scrape(&app).await;
    assert_eq!(
        dropped(&after, "precondition") - dropped(&before, "precondition"),
        2.0
    );
    assert_eq!(
        dropped(&after, "malformed_condition") - dropped(&before, "malformed_condition"),
        1.0
    );
    assert_eq!(current(&app, "c/t").await, before_state);
    assert_eq!(&sub.next_publish().await.topic[..], b"c/x");
    nothing_delivered(&app, &mut sub, "c/marker").await;
}

async fn answers_keep_the_order_of_publishes_when_some_fail(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut p = publisher(&app, "orderly", true).await;
    send(&mut p, &publish("c/a", 1, true, 1, &[], b"a1")).await;
    let ra = current(&app, "c/a").await.revision;
    let mut sub = subscriber(&app, "sub", "c/#").await;

    // Pipelined, without waiting for answers: some are written in one batch.
    let stale = ra.to_string();
    let burst: Vec<(u16, u8, Vec<u8>)> = vec![
        (10, 1, publish("c/a", 1, true, 10, &[], b"a2")),
        (
            11,
            1,
            publish("c/a", 1, true, 11, &[("retaind-if-match", &stale)], b"no"),
        ),
        (12, 1, publish("c/b", 1, false, 12, &[], b"b1")),
        (
            13,
            2,
            publish("c/c", 2, true, 13, &[("retaind-if-none-match", "*")], b"c1"),
        ),
        (
            14,
            1,
            publish("c/c", 1, true, 14, &[("retaind-if-none-match", "*")], b"no"),
        ),
        (
            15,
            1,
            publish("c/d", 1, true, 15, &[("retaind-if-match", "x")], b"no"),
        ),
        (16, 1, publish("c/a", 1, true, 16, &[], b"a3")),
    ];
    let mut bytes = Vec::new();
    for (_, _, packet) in &burst {
        bytes.extend(packet);
    }
    p.send(&bytes).await;
    let mut answers = Vec::new();
    for _ in &burst {
        let got = answer(&p.recv().await.expect("an answer"));
        answers.push((got.pkid, got.reason));
    }
    assert_eq!(
        answers,
        vec![
            (10, SUCCESS),
            (11, UNSPECIFIED_ERROR),
            (12, SUCCESS),
            (13, SUCCESS),
            (14, UNSPECIFIED_ERROR),
            (15, IMPLEMENTATION_SPECIFIC_ERROR),
            (16, SUCCESS),
        ]
    );
    p.send(&build::ack(0x62, 13)).await;
    p.expect(PUBCOMP).await;

    assert_eq!(&current(&app, "c/a").await.payload[..], b"a3");
    assert_eq!(&current(&app, "c/c").await.payload[..], b"c1");
    assert_eq!(stored(&app, "c/d").await, None);
    let mut delivered = Vec::new();
    for _ in 0..4 {
        let got = sub.next_publish().await;
        delivered.push((got.topic.to_vec(), got.payload.to_vec()));
    }
    let expected: Vec<(Vec<u8>, Vec<u8>)> =
        [("c/a", "a2"), ("c/b", "b1"), ("c/c", "c1"), ("c/a", "a3")]
            .iter()
            .map(|(t, p)| (t.as_bytes().to_vec(), p.as_bytes().to_vec()))
            .collect();
    assert_eq!(delivered, expected);
    nothing_delivered(&app, &mut sub, "c/marker").await;
}

async fn of_32_racers_on_one_revision_exactly_one_wins(backend: Backend) {
    const RACERS: usize = 32;
    let app = spawn_app(backend).await;
    let mut setup = publisher(&app, "setup", true).await;
    send(&mut setup, &publish("c/race", 1, true, 1, &[], b"start")).await;
    let r = current(&app, "c/race").await.revision;

    let mut racers = Vec::new();
    for i in 0..RACERS {
        racers.push(publisher(&app, &format!("racer-{i}"), true).await);
    }
    let revision = r.to_string();
    let races = racers.iter_mut().enumerate().map(|(i, raw)| {
        let packet = publish(
            "c/race",
            1,
            true,
            1,
            &[("retaind-if-match", &revision)],
            format!("racer-{i}").as_bytes(),
        );
        async move { (i, send(raw, &packet).await) }
    });
    let results = futures_util::future::join_all(races).await;
    let winners: Vec<usize> = results
        .iter()
        .filter(|(_, a)| a.reason == SUCCESS)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for (_, a) in results.iter().filter(|(_, a)| a.reason != SUCCESS) {
        assert_eq!(*a, failed(PUBACK, 1, &not_revision(r)));
    }
    let m = current(&app, "c/race").await;
    let winner = format!("racer-{}", winners[0]);
    assert_eq!(&m.payload[..], winner.as_bytes());
    assert_eq!(&*m.writer.unwrap().client, winner);
    assert!(m.revision > r);
}

/// 16 racers on each of two nodes sharing one Postgres (and a NATS for the cluster): the
/// check is the database's, so one of all 32 wins, whichever node it is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_32_racers_on_two_nodes_exactly_one_wins() {
    let nats = Nats::start().await;
    let nodes = common::cluster_nodes(&nats.url(), 2).await;
    let mut setup = publisher(&nodes[0], "setup", true).await;
    send(&mut setup, &publish("c/race", 1, true, 1, &[], b"start")).await;
    let r = current(&nodes[1], "c/race").await.revision;

    let mut racers = Vec::new();
    for i in 0..32 {
        racers.push(publisher(&nodes[i % 2], &format!("racer-{i}"), true).await);
    }
    let revision = r.to_string();
    let races = racers.iter_mut().enumerate().map(|(i, raw)| {
        let props = [("retaind-if-match", &*revision)];
        let packet = publish(
            "c/race",
            1,
            true,
            1,
            &props,
            format!("racer-{i}").as_bytes(),
        );
        async move { (i, send(raw, &packet).await) }
    });
    let results = futures_util::future::join_all(races).await;
    let winners: Vec<usize> = results
        .iter()
        .filter(|(_, a)| a.reason == SUCCESS)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for (_, a) in results.iter().filter(|(_, a)| a.reason != SUCCESS) {
        assert_eq!(*a, failed(PUBACK, 1, &not_revision(r)));
    }
    let winner = format!("racer-{}", winners[0]);
    for node in &nodes {
        let got = node.get_json("/retainedMessage/c%2Frace").await;
        assert_eq!(got["writer"]["clientId"], winner.as_str());
    }
}

for_each_backend!(
    a_matching_revision_is_stored_and_records_its_writer,
    a_stale_revision_is_refused_with_0x80_and_nothing_stored_or_delivered,
    a_client_that_did_not_ask_for_problem_information_hears_only_the_code,
    create_only_stores_once_and_again_after_a_delete,
    a_delete_applies_only_if_the_revision_matches,
    malformed_conditions_are_refused_with_0x83_and_change_nothing,
    the_condition_is_taken_out_before_storing_and_delivering,
    a_qos0_publish_whose_condition_fails_is_dropped_and_counted,
    answers_keep_the_order_of_publishes_when_some_fail,
    of_32_racers_on_one_revision_exactly_one_wins,
    a_watch_sees_the_conditional_put_without_its_condition_and_nothing_of_a_failure,
);
