//! Many nodes, one service (issue 15, decision 014): real nodes on port 0 sharing one Postgres
//! database and a `nats-server` each test starts on a free port, with real MQTT and HTTP
//! clients. Live routing between nodes: every publish reaches every matching subscription on
//! every node once, with its properties and QoS downgraded per subscription; a node sends
//! NATS only what another node wants; NATS lost and back; one client id, one connection,
//! service-wide.

mod common;

use std::time::{Duration, Instant};

use common::cluster_of as cluster;
use common::mqtt::raw::{Raw, build};
use common::mqtt::{Qos5, V3, V5, p5, v3_options, v5_options, within};
use common::nats::Nats;
use common::process::Process;
use common::proxy::Proxy;
use common::{Backend, FreshDb, TestApp, fresh_db, spawn_app_with, test_config, topic};
use retaind::cluster::LetGoHeld;
use sqlx::Connection;

/// `n` nodes of one service: one database, one NATS.
async fn nodes(nats: &Nats, n: usize) -> Vec<TestApp> {
    nodes_with(nats, n, None).await
}

/// [`nodes`], with the principals of the file at `principals`, if any.
/// Two nodes of one service, A and B.
async fn two_nodes(nats: &Nats) -> [TestApp; 2] {
    <[TestApp; 2]>::try_from(nodes(nats, 2).await).ok().unwrap()
}

async fn nodes_with(nats: &Nats, n: usize, principals: Option<&std::path::Path>) -> Vec<TestApp> {
    common::cluster_nodes_with(&nats.url(), n, |c| {
        c.principals = principals.map(std::path::Path::to_path_buf);
    })
    .await
}

/// Waits until `app` knows that another node wants `t`: the propagation window (decision
/// 014) is over for it.
async fn until_sends(app: &TestApp, t: &str) {
    let t = topic(t);
    let started = Instant::now();
    within("the other nodes' interest to arrive", async {
        while cluster(app).in_doubt() || !cluster(app).sends(&t) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    eprintln!(
        "interest in {t} known {:?} after the SUBACK",
        started.elapsed()
    );
}

/// Waits until `app` counts `n` live nodes, itself included, from their heartbeats.
async fn until_live(app: &TestApp, n: usize) {
    within("the other nodes to be alive in the database", async {
        while cluster(app).live_nodes() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// The MQTT 5 publishes `c` receives up to and including the one whose payload is `last`.
async fn until_payload(c: &mut V5, last: &[u8]) -> Vec<p5::Publish> {
    let mut got = Vec::new();
    loop {
        let p = c.next_publish().await;
        let done = p.payload[..] == *last;
        got.push(p);
        if done {
            return got;
        }
    }
}

fn ids(p: &p5::Publish) -> Vec<usize> {
    let mut ids = p
        .properties
        .as_ref()
        .map(|p| p.subscription_identifiers.clone())
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn every_publish_on_any_node_reaches_each_matching_subscription_on_the_others_once() {
    let nats = Nats::start().await;
    let [a, b, c] = <[TestApp; 3]>::try_from(nodes(&nats, 3).await)
        .ok()
        .unwrap();

    // On B, two overlapping subscriptions of one client: one copy of each message, at the
    // higher granted QoS, with both identifiers [MQTT-3.3.4-2, -3].
    let (mut on_b, _) = V5::connect(v5_options(&b, "sub-b")).await;
    let with_id = |id| {
        Some(p5::SubscribeProperties {
            id: Some(id),
            user_properties: vec![],
        })
    };
    on_b.subscribe_filter(p5::Filter::new("t/#", Qos5::ExactlyOnce), with_id(7))
        .await;
    on_b.subscribe_filter(p5::Filter::new("t/+", Qos5::AtLeastOnce), with_id(9))
        .await;
    // On C, an MQTT 3.1.1 client granted QoS 1: QoS 2 arrives downgraded.
    let (mut on_c, _) = V3::connect(v3_options(&c, "sub-c")).await;
    on_c.subscribe("t/x", rumqttc::QoS::AtLeastOnce).await;
    until_sends(&a, "t/x").await;

    let (mut publisher, _) = V5::connect(v5_options(&a, "pub-a")).await;
    publisher
        .publish("t/x", Qos5::AtMostOnce, false, b"m0")
        .await;
    let props = p5::PublishProperties {
        user_properties: vec![("k".into(), "v".into())],
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/to".into()),
        correlation_data: Some(b"corr".to_vec().into()),
        ..Default::default()
    };
    publisher
        .publish_with("t/x", Qos5::AtLeastOnce, false, b"m1", props)
        .await;
    publisher
        .publish("t/x", Qos5::ExactlyOnce, false, b"m2")
        .await;
    let res = a.publish("/topics/t%2Fx?qos=1", "h1").await;
    assert_eq!(res.status(), 200);
    publisher
        .publish("t/x", Qos5::AtLeastOnce, false, b"end")
        .await;

    let got = until_payload(&mut on_b, b"end").await;
    let seen: Vec<_> = got
        .iter()
        .map(|p| {
            (
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.qos,
                ids(p),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("m0".into(), Qos5::AtMostOnce, vec![7, 9]),
            ("m1".into(), Qos5::AtLeastOnce, vec![7, 9]),
            ("m2".into(), Qos5::ExactlyOnce, vec![7, 9]),
            ("h1".into(), Qos5::AtLeastOnce, vec![7, 9]),
            ("end".into(), Qos5::AtLeastOnce, vec![7, 9]),
        ],
        "each message once, in order, at min(published, highest granted) QoS"
    );
    let m1 = got[1].properties.as_ref().expect("m1's properties");
    assert_eq!(m1.user_properties, vec![("k".into(), "v".into())]);
    assert_eq!(m1.content_type.as_deref(), Some("text/plain"));
    assert_eq!(m1.response_topic.as_deref(), Some("reply/to"));
    assert_eq!(m1.correlation_data.as_deref(), Some(&b"corr"[..]));
    assert_eq!(got[1].topic, "t/x");

    let mut on_c_got = Vec::new();
    while on_c_got.last().map(|(p, _): &(Vec<u8>, _)| &p[..]) != Some(b"end") {
        let p = on_c.next_publish().await;
        on_c_got.push((p.payload.to_vec(), p.qos));
    }
    use rumqttc::QoS::{AtLeastOnce, AtMostOnce};
    assert_eq!(
        on_c_got,
        vec![
            (b"m0".to_vec(), AtMostOnce),
            (b"m1".to_vec(), AtLeastOnce),
            (b"m2".to_vec(), AtLeastOnce),
            (b"h1".to_vec(), AtLeastOnce),
            (b"end".to_vec(), AtLeastOnce),
        ]
    );
    // B's subscriptions overlap in NATS too (`t.>` and `t.*`): each message came twice and
    // was handed to the broker once.
    let stats = cluster(&b).stats();
    assert_eq!((stats.received, stats.duplicates), (5, 5), "{stats:?}");
    assert_eq!(cluster(&a).stats().forwarded, 5);
}

#[tokio::test]
async fn a_publisher_keeps_its_order_across_nodes_and_retained_messages_are_stored_once() {
    let nats = Nats::start().await;
    let [a, b] = two_nodes(&nats).await;
    let (mut on_b, _) = V5::connect(v5_options(&b, "sub")).await;
    on_b.subscribe("seq/#", Qos5::AtLeastOnce).await;
    until_sends(&a, "seq/n").await;

    let (mut publisher, _) = V5::connect(v5_options(&a, "pub")).await;
    for i in 0..300 {
        let qos = [Qos5::AtMostOnce, Qos5::AtLeastOnce][i % 2];
        publisher
            .publish("seq/n", qos, false, i.to_string().as_bytes())
            .await;
    }
    publisher
        .publish("seq/r", Qos5::AtLeastOnce, true, b"kept")
        .await;
    let got = until_payload(&mut on_b, b"kept").await;
    let numbers: Vec<String> = got[..got.len() - 1]
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    let expected: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    assert_eq!(numbers, expected);
    assert!(
        !got.last().unwrap().retain,
        "live delivery without Retain As Published"
    );

    // The retained publish was stored once, by A, and B serves it from the shared store.
    let res = b.get("/retainedMessage/seq%2Fr").await;
    assert_eq!(res.status(), 200);
    let (mut late, _) = V5::connect(v5_options(&b, "late")).await;
    late.subscribe("seq/r", Qos5::AtLeastOnce).await;
    let p = late.next_publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"kept"[..], true));
}

#[tokio::test]
async fn a_node_sends_nats_nothing_for_topics_no_other_node_wants() {
    let nats = Nats::start().await;
    let [a, b] = two_nodes(&nats).await;
    let (mut on_b, _) = V5::connect(v5_options(&b, "sub")).await;
    on_b.subscribe("wanted/+", Qos5::AtMostOnce).await;
    until_sends(&a, "wanted/x").await;
    // A local subscriber on A: the quiet topic is delivered, just not sent to NATS.
    let (mut on_a, _) = V5::connect(v5_options(&a, "local")).await;
    on_a.subscribe("quiet/#", Qos5::AtMostOnce).await;

    let before = cluster(&a).stats();
    let (mut publisher, _) = V5::connect(v5_options(&a, "pub")).await;
    for _ in 0..100 {
        publisher
            .publish("quiet/x", Qos5::AtLeastOnce, false, b"q")
            .await;
    }
    publisher
        .publish("quiet/x", Qos5::AtLeastOnce, false, b"last")
        .await;
    assert_eq!(until_payload(&mut on_a, b"last").await.len(), 101);
    for _ in 0..10 {
        publisher
            .publish("wanted/x", Qos5::AtLeastOnce, false, b"w")
            .await;
    }
    publisher
        .publish("wanted/x", Qos5::AtLeastOnce, false, b"end")
        .await;
    assert_eq!(until_payload(&mut on_b, b"end").await.len(), 11);

    let after = cluster(&a).stats();
    assert_eq!(after.not_forwarded - before.not_forwarded, 101);
    assert_eq!(after.forwarded - before.forwarded, 11);
    assert_eq!(cluster(&b).stats().received, 11);
}

/// Subscriptions and unsubscriptions arriving together on one node, from many clients at
/// once, are announced in bulk (one flush and one round of puts for the additions queued
/// together) and still in the order they were made: each SUBACK waits for its filter's key, a
/// filter taken, dropped and taken again is left announced, and one taken and dropped is
/// withdrawn. When the clients all leave, every filter of theirs is withdrawn.
#[tokio::test]
async fn subscriptions_made_together_are_announced_together_in_their_order() {
    let nats = Nats::start().await;
    let [a, b] = two_nodes(&nats).await;
    let unsubscribe = |pkid: u16, filter: &str| {
        let mut body = pkid.to_be_bytes().to_vec();
        body.push(0);
        body.extend(build::string(filter));
        build::packet(0xA2, &body)
    };
    let clients = (0..200).map(|i| {
        let a = &a;
        async move {
            let id = format!("together-{i}");
            let (mut raw, _) = Raw::connect(a, &build::connect(&id, true, 60, Some(&[]))).await;
            raw.send(&build::subscribe(1, &format!("kept/{i}"), 1, Some(&[])))
                .await;
            raw.expect(9).await;
            let filter = format!("together/{i}");
            let mut packets = build::subscribe(2, &filter, 1, Some(&[]));
            packets.extend(unsubscribe(3, &filter));
            if i % 2 == 0 {
                packets.extend(build::subscribe(4, &filter, 1, Some(&[])));
            }
            raw.send(&packets).await;
            raw.expect(9).await;
            raw.expect(11).await;
            if i % 2 == 0 {
                raw.expect(9).await;
            }
            raw
        }
    });
    let mut clients = futures_util::future::join_all(clients).await;
    // Every SUBACK is in: each filter held is in the bucket already, not owed to a retry.
    let nats_client = async_nats::connect(nats.url()).await.unwrap();
    let bucket = async_nats::jetstream::new(nats_client)
        .get_key_value("retaind-interest")
        .await
        .unwrap();
    let mut announced = std::collections::HashSet::new();
    let mut keys = bucket.keys().await.unwrap();
    while let Some(key) = futures_util::StreamExt::next(&mut keys).await {
        if let Some(filter) = bucket.get(key.unwrap()).await.unwrap() {
            announced.insert(String::from_utf8(filter.to_vec()).unwrap());
        }
    }
    let missing: Vec<String> = (0..200)
        .map(|i| format!("kept/{i}"))
        .chain((0..200).step_by(2).map(|i| format!("together/{i}")))
        .filter(|f| !announced.contains(f))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the bucket at their SUBACK: {missing:?}"
    );
    let (mut publisher, _) = Raw::connect(&b, &build::connect("pub-b", true, 60, Some(&[]))).await;
    for (i, raw) in clients.iter_mut().enumerate().step_by(2) {
        let t = format!("together/{i}");
        until_sends(&b, &t).await;
        publisher
            .send(&build::publish(
                &t,
                0,
                false,
                false,
                0,
                Some(&[]),
                b"from b",
            ))
            .await;
        let got = raw.expect(3).await.publish(true);
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            (t.as_str(), &b"from b"[..])
        );
    }
    within("B to see the dropped filters withdrawn", async {
        while (1..200)
            .step_by(2)
            .any(|i| cluster(&b).sends(&topic(&format!("together/{i}"))))
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // The 200 leave together: their removals go together, every key is withdrawn, and a
    // subscription made meanwhile is announced (B may read its key after the deletes).
    drop(clients);
    let (mut late, _) = Raw::connect(&a, &build::connect("late", true, 60, Some(&[]))).await;
    late.send(&build::subscribe(1, "kept/late", 0, Some(&[])))
        .await;
    late.expect(9).await;
    let held: Vec<String> = (0..200)
        .map(|i| format!("kept/{i}"))
        .chain((0..200).step_by(2).map(|i| format!("together/{i}")))
        .collect();
    within("B to see the leaving clients' filters withdrawn", async {
        while held.iter().any(|f| cluster(&b).sends(&topic(f))) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    until_sends(&b, "kept/late").await;
}

/// Interest keys that outlive their node (a burial whose deletes NATS did not take, a node
/// that stopped before it withdrew them all) are removed at the heartbeats: a node does not go
/// on sending NATS what only a node that is gone wanted.
#[tokio::test]
async fn interest_keys_of_a_node_that_is_gone_are_removed() {
    let nats = Nats::start().await;
    let [a] = <[TestApp; 1]>::try_from(nodes(&nats, 1).await)
        .ok()
        .unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let bucket = async_nats::jetstream::new(client)
        .get_key_value("retaind-interest")
        .await
        .unwrap();
    // As a node with no heartbeat row would have left it.
    bucket
        .put("0123abcd.00", "orphan/#".as_bytes().to_vec().into())
        .await
        .unwrap();
    let t = topic("orphan/x");
    within("A to hear of the key", async {
        while !cluster(&a).sends(&t) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Two heartbeat passes (2 s apart) find its node missing, then the key goes.
    within("the key to be removed", async {
        while cluster(&a).sends(&t) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(bucket.get("0123abcd.00").await.unwrap().is_none());
}

#[tokio::test]
async fn a_subscription_that_ends_stops_the_traffic_to_its_node() {
    let nats = Nats::start().await;
    let [a, b] = two_nodes(&nats).await;
    let (mut on_b, _) = V5::connect(v5_options(&b, "sub")).await;
    on_b.subscribe("gone/x", Qos5::AtMostOnce).await;
    until_sends(&a, "gone/x").await;
    on_b.disconnect().await;
    let t = topic("gone/x");
    within("A to see B's interest withdrawn", async {
        while cluster(&a).sends(&t) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// A subscription that ends while its node cannot reach NATS: the removal of its key is owed
/// and made once the node is back, so the other nodes stop sending what nobody here wants
/// (the key would otherwise stay in the bucket, which outlives the node's connection).
#[tokio::test]
async fn a_subscription_that_ends_while_nats_is_unreachable_stops_the_traffic_once_it_is_back() {
    let nats = Nats::start().await;
    let [a] = <[TestApp; 1]>::try_from(nodes(&nats, 1).await)
        .ok()
        .unwrap();
    let port: u16 = nats.url().rsplit(':').next().unwrap().parse().unwrap();
    let to_nats = Proxy::start(("127.0.0.1".to_owned(), port)).await;
    let mut config = test_config(&a.db.url);
    config.cluster_url = Some(format!("nats://{}", to_nats.addr));
    let b = spawn_app_with(FreshDb::shared(&a.db.url), config).await;
    let (mut on_b, _) = V5::connect(v5_options(&b, "sub")).await;
    on_b.subscribe("gone/x", Qos5::AtMostOnce).await;
    until_sends(&a, "gone/x").await;

    to_nats.fail(common::proxy::Mode::Refuse);
    until_nats_lost(&b).await;
    on_b.disconnect().await;
    let unannounced = cluster(&b).stats().unannounced;
    within("the removal to be owed", async {
        while cluster(&b).stats().unannounced == unannounced {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        cluster(&a).sends(&topic("gone/x")),
        "the key is still there"
    );

    to_nats.restore();
    let t = topic("gone/x");
    within("A to see B's interest withdrawn", async {
        while cluster(&a).sends(&t) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn nats_lost_and_back_local_delivery_goes_on_readyz_says_so_and_routing_resumes() {
    let mut nats = Nats::start().await;
    let [a, b] = two_nodes(&nats).await;
    let (mut on_b, _) = V5::connect(v5_options(&b, "sub-b")).await;
    on_b.subscribe("n/x", Qos5::AtLeastOnce).await;
    let (mut on_a, _) = V5::connect(v5_options(&a, "sub-a")).await;
    on_a.subscribe("n/x", Qos5::AtLeastOnce).await;
    until_sends(&a, "n/x").await;
    assert_eq!(a.get("/readyz").await.status(), 200);

    let connected = |page: &str| common::metric_value(page, "retaind_cluster_nats_connected");
    let reconnections =
        |page: &str| common::metric_value(page, "retaind_cluster_nats_reconnections_total");
    let page = a.get("/metrics").await.text().await.unwrap();
    assert_eq!((connected(&page), reconnections(&page)), (1.0, 0.0));

    nats.stop().await;
    until_nats_lost(&a).await;
    let page = a.get("/metrics").await.text().await.unwrap();
    assert_eq!((connected(&page), reconnections(&page)), (0.0, 0.0));
    let res = a.get("/readyz").await;
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.headers()["x-amzn-errortype"],
        "ServiceUnavailableException"
    );
    let body = res.text().await.unwrap();
    assert!(body.contains("cluster: disconnected"), "{body}");

    // Local delivery goes on without NATS.
    let (mut publisher, _) = V5::connect(v5_options(&a, "pub")).await;
    publisher
        .publish("n/x", Qos5::AtLeastOnce, false, b"alone")
        .await;
    assert_eq!(&on_a.next_publish().await.payload[..], b"alone");

    // NATS comes back empty (its interest bucket lived in memory): the nodes reconnect,
    // announce their interest again, and routing resumes.
    nats.restart().await;
    let start = Instant::now();
    within("A to reconnect", async {
        while !cluster(&a).is_connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    until_sends(&a, "n/x").await;
    assert_eq!(a.get("/readyz").await.status(), 200);
    let page = a.get("/metrics").await.text().await.unwrap();
    assert_eq!((connected(&page), reconnections(&page)), (1.0, 1.0));
    eprintln!("routing resumed {:?} after NATS restarted", start.elapsed());
    publisher
        .publish("n/x", Qos5::AtLeastOnce, false, b"together")
        .await;
    assert_eq!(&on_a.next_publish().await.payload[..], b"together");
    // What A published while NATS was down waited in its bounded outbox and went out once
    // NATS was back: B has it if it had subscribed again by then, never twice or out of order.
    let got = until_payload(&mut on_b, b"together").await;
    let payloads: Vec<&[u8]> = got.iter().map(|p| &p.payload[..]).collect();
    assert!(
        payloads == [&b"alone"[..], b"together"] || payloads == [&b"together"[..]],
        "{payloads:?}"
    );
    assert_eq!(cluster(&a).stats().dropped, 0);
}

/// While NATS is away, async-nats queues the node's commands in a bounded channel that
/// nobody drains, and a node that forwards fills it. A SUBSCRIBE then still gets its SUBACK
/// and its local deliveries, later ones do not wait at all, and what NATS did not take is
/// subscribed and announced once it is back.
#[tokio::test]
async fn a_subscribe_while_nats_cannot_take_commands_is_answered_and_announced_once_it_can() {
    let mut nats = Nats::start().await;
    let [a, b] = two_nodes(&nats).await;
    let (mut on_b, _) = V5::connect(v5_options(&b, "sub-b")).await;
    on_b.subscribe("fill/#", Qos5::AtMostOnce).await;
    until_sends(&a, "fill/0").await;
    nats.stop().await;
    until_nats_lost(&a).await;

    // One topic each, so each is its own NATS message: more than async-nats queues (2,048).
    let (mut filler, _) = Raw::connect(&a, &build::connect("filler", true, 60, None)).await;
    let burst: Vec<u8> = (0..5_000)
        .flat_map(|i| build::publish(&format!("fill/{i}"), 0, false, false, 0, None, b"x"))
        .collect();
    filler.send(&burst).await;
    within("the forwarder to fill async-nats's queue", async {
        // A few of its places hold other commands.
        while cluster(&a).stats().forwarded < 2_000 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stuck = cluster(&a).stats();
    assert!(
        stuck.forwarded < 5_000 && stuck.dropped == 0,
        "the queue is full and the rest waits in the outbox: {stuck:?}"
    );

    let asked = Instant::now();
    let (mut first, _) = V5::connect(v5_options(&a, "first")).await;
    first.subscribe("late/first", Qos5::AtLeastOnce).await;
    let first_wait = asked.elapsed();
    let asked = Instant::now();
    let (mut second, _) = V5::connect(v5_options(&a, "second")).await;
    second.subscribe("late/second", Qos5::AtLeastOnce).await;
    let second_wait = asked.elapsed();
    eprintln!("SUBACKs after {first_wait:?} and {second_wait:?}");
    // The first waits out one attempt to reach NATS; the second none.
    assert!(first_wait < Duration::from_secs(4), "{first_wait:?}");
    assert!(second_wait < Duration::from_secs(1), "{second_wait:?}");
    let (mut publisher, _) = V5::connect(v5_options(&a, "pub")).await;
    publisher
        .publish("late/first", Qos5::AtLeastOnce, false, b"local")
        .await;
    assert_eq!(&first.next_publish().await.payload[..], b"local");
    // A CONNECT taking over an id held on B cannot hand NATS the notice for B, and is
    // answered all the same (B finds out from Postgres).
    let (_taker, ack) = V5::connect(v5_options(&a, "sub-b")).await;
    assert_eq!(ack.code, p5::ConnectReturnCode::Success);

    nats.restart().await;
    until_sends(&b, "late/first").await;
    until_sends(&b, "late/second").await;
    let (mut on_b_pub, _) = V5::connect(v5_options(&b, "pub-b")).await;
    for (t, c) in [("late/first", &mut first), ("late/second", &mut second)] {
        on_b_pub
            .publish(t, Qos5::AtLeastOnce, false, b"from b")
            .await;
        assert_eq!(&c.next_publish().await.payload[..], b"from b", "{t}");
    }
}

/// While NATS is away, what waits for it is bounded by bytes, not only by count: of large
/// publishes, those beyond 64 MiB (and the 2,048 async-nats queues itself) are dropped and
/// counted, and the rest go out once NATS is back.
#[tokio::test]
async fn while_nats_is_away_the_publishes_waiting_for_it_are_bounded_by_bytes() {
    let mut nats = Nats::start().await;
    let [a, b] = two_nodes(&nats).await;
    let (mut on_b, _) = V5::connect(v5_options(&b, "sub-b")).await;
    on_b.subscribe("big/#", Qos5::AtMostOnce).await;
    until_sends(&a, "big/x").await;
    nats.stop().await;
    until_nats_lost(&a).await;

    // 3,000 × 100 KiB: far fewer than the outbox's 16,384 places, but 300 MB.
    const SENT: u64 = 3_000;
    let payload = vec![b'x'; 100 << 10];
    let (mut publisher, _) = Raw::connect(&a, &build::connect("big-pub", true, 60, None)).await;
    for i in 0..SENT {
        publisher
            .send(&build::publish(
                &format!("big/{i}"),
                0,
                false,
                false,
                0,
                None,
                &payload,
            ))
            .await;
    }
    publisher.send(&[0xC0, 0]).await;
    publisher.expect(13).await;
    let held = cluster(&a).stats();
    // async-nats holds up to 2,048 of them (one NATS message each), the outbox 64 MiB: 655.
    assert!(
        (SENT - 2_048 - 655..SENT).contains(&held.dropped),
        "dropped beyond the bytes allowed: {held:?}"
    );

    nats.restart().await;
    within("what waited to go out", async {
        loop {
            let s = cluster(&a).stats();
            if s.forwarded + s.dropped == SENT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A database that stops answering in the middle of a heartbeat, without closing anything
/// (a dead network), does not hold the heartbeat for good: each pass gives up at the store
/// timeout and is counted, where an operator sees it, and the heartbeat is written again once
/// the database answers.
#[tokio::test]
async fn a_heartbeat_the_database_does_not_answer_is_given_up_at_the_store_timeout() {
    let (_nats, app, proxy) = node_behind_proxy(Duration::from_millis(500)).await;
    let direct = app.db.url.clone();
    assert_eq!(cluster(&app).stats().heartbeat_failures, 0);

    // Every heartbeat pass sends the node's id; whatever the database answers it is held.
    proxy.pause_after(cluster(&app).node().as_bytes());
    within("two heartbeats given up", async {
        while cluster(&app).stats().heartbeat_failures < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("retaind_cluster_heartbeat_failures_total ") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );

    let mut db = sqlx::PgConnection::connect(&direct).await.unwrap();
    let restored: f64 = sqlx::query_scalar("SELECT extract(epoch FROM now())::float8")
        .fetch_one(&mut db)
        .await
        .unwrap();
    proxy.resume();
    within("a heartbeat written again", async {
        loop {
            let beat: f64 = sqlx::query_scalar(
                "SELECT extract(epoch FROM max(heartbeat_at))::float8 FROM cluster_nodes",
            )
            .fetch_one(&mut db)
            .await
            .unwrap();
            if beat > restored {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Waits until `app` has noticed that NATS is gone.
async fn until_nats_lost(app: &TestApp) {
    within("the node to notice that NATS is gone", async {
        while cluster(app).is_connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Waits until a message whose payload is `payload` is queued in Postgres for `client` (a
/// frame ends with its payload); returns every frame queued for it then.
async fn until_stored(db: &mut sqlx::PgConnection, client: &str, payload: &[u8]) -> Vec<Vec<u8>> {
    within("the message to be stored", async {
        loop {
            let frames: Vec<Vec<u8>> =
                sqlx::query_scalar("SELECT frame FROM cluster_session_queue WHERE client_id = $1")
                    .bind(client)
                    .fetch_all(&mut *db)
                    .await
                    .unwrap();
            if frames.iter().any(|f| f.ends_with(payload)) {
                return frames;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// One node of a service, whose database is reached through a proxy the test can stall.
async fn node_behind_proxy(store_timeout: Duration) -> (Nats, TestApp, Proxy) {
    node_behind_proxy_with(store_timeout, |_| {}).await
}

/// [`node_behind_proxy`], with settings of the test's own.
async fn node_behind_proxy_with(
    store_timeout: Duration,
    set: impl FnOnce(&mut retaind::app::ServeConfig),
) -> (Nats, TestApp, Proxy) {
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let proxy = Proxy::start(common::postgres_host_port(&db.url)).await;
    let mut config = test_config(&common::postgres_url_via(&db.url, proxy.addr));
    config.cluster_url = Some(nats.url());
    config.store_timeout = store_timeout;
    set(&mut config);
    (nats, spawn_app_with(db, config).await, proxy)
}

/// Makes `client`'s persistent session, subscribed to `filter` at QoS 1, and waits until it is
/// recorded offline and its claim released (nothing naming the client is still on its way to
/// the database); returns a direct connection to the database.
async fn offline_session(app: &TestApp, client: &str, filter: &str) -> sqlx::PgConnection {
    let (mut away, _) = Raw::connect(app, &persistent(client, true)).await;
    away.send(&build::subscribe(1, filter, 1, Some(&[]))).await;
    away.expect(9).await;
    away.send(&build::disconnect_v5(0)).await;
    assert!(away.until_closed().await.is_empty());
    let mut db = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    within("the session to be recorded offline", async {
        loop {
            let (connected, claimed): (Option<bool>, bool) = sqlx::query_as(
                "SELECT (SELECT connected FROM cluster_sessions WHERE client_id = $1), \
                        EXISTS (SELECT 1 FROM cluster_clients WHERE client_id = $1)",
            )
            .bind(client)
            .fetch_one(&mut db)
            .await
            .unwrap();
            if connected == Some(false) && !claimed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    db
}

/// An offline session's queue in Postgres is held to `--mqtt-max-queued-bytes` as well as to
/// its count, as one in memory is: it all comes back into memory when the client returns.
#[tokio::test]
async fn an_offline_sessions_queue_in_postgres_is_held_to_the_byte_limit() {
    let (_nats, app, _proxy) = node_behind_proxy(Duration::from_secs(5)).await;
    let _db = offline_session(&app, "bytes-away", "bytes/#").await;
    // 200 × 100 KiB, far fewer than the 10,000 messages allowed: 16 MiB holds 163.
    let payload = vec![b'x'; 100 << 10];
    let (mut publisher, _) = V5::connect(v5_options(&app, "bytes-pub")).await;
    for i in 0..200u8 {
        let mut p = payload.clone();
        p[0] = i;
        publisher
            .publish("bytes/1", Qos5::AtLeastOnce, false, &p)
            .await;
    }
    until_queued(&app, "bytes-away", 163).await;
    // Written in order: once a later message is stored, none of the 200 is still on its way.
    publisher
        .publish("bytes/1", Qos5::AtLeastOnce, false, b"small")
        .await;
    until_queued(&app, "bytes-away", 164).await;

    let (mut back, ack) = Raw::connect(&app, &persistent("bytes-away", false)).await;
    assert_eq!(ack.body[0], 1, "session present");
    let got = payloads(&mut back, 164).await;
    let firsts: Vec<u8> = got[..163].iter().map(|p| p[0]).collect();
    assert_eq!(
        firsts,
        (0..163).collect::<Vec<u8>>(),
        "the first 163, in order"
    );
    assert_eq!(got[163], b"small");
}

/// While the database holds a write of offline sessions' messages, those waiting behind it
/// are bounded by bytes, not only by count: of large messages, those beyond 64 MiB are
/// dropped and counted, and the writes go on once the database answers.
#[tokio::test]
async fn while_the_database_holds_a_queue_write_the_messages_behind_it_are_bounded_by_bytes() {
    // Longer than the test: the held write is not given up while it runs. The session's own
    // queue may hold all of them: the spool's bound is the one under test.
    let (_nats, app, proxy) = node_behind_proxy_with(Duration::from_secs(60), |c| {
        c.mqtt_max_queued_bytes = 1 << 30;
    })
    .await;
    let mut db = offline_session(&app, "spool-big", "big/#").await;
    // Connected first: its CONNECT claims its client id in the database.
    let (mut publisher, _) = Raw::connect(&app, &build::connect("big-pub", true, 60, None)).await;
    // Everything the node sends the database is held, the first queue write with it.
    proxy.pause();

    // 1,000 × 100 KiB at QoS 1: far fewer than the spool's 65,536 places, but 100 MB.
    const SENT: u64 = 1_000;
    let payload = vec![b'x'; 100 << 10];
    for i in 0..SENT {
        let pkid = u16::try_from(i % 60_000 + 1).unwrap();
        publisher
            .send(&build::publish(
                "big/1", 1, false, false, pkid, None, &payload,
            ))
            .await;
    }
    publisher.send(&[0xC0, 0]).await;
    within("the PINGRESP after the PUBACKs", async {
        while publisher.recv().await.expect("open").kind() != 13 {}
    })
    .await;
    // The held batch and those waiting behind it: 64 MiB, 655 frames of 100 KiB.
    let lost = cluster(&app).stats().queued_lost;
    assert!(
        (SENT - 700..=SENT - 600).contains(&lost),
        "{lost} lost of {SENT}"
    );

    proxy.resume();
    publisher
        .send(&build::publish("big/1", 1, false, false, 1, None, b"after"))
        .await;
    let frames = until_stored(&mut db, "spool-big", b"after").await;
    assert_eq!(frames.len() as u64, SENT - lost + 1);
}

/// A write of offline sessions' messages that the database does not answer is given up at
/// the store timeout and counted, so the writes behind it are not held back for good.
#[tokio::test]
async fn a_queue_write_the_database_does_not_answer_is_given_up_and_the_next_is_stored() {
    let (_nats, app, proxy) = node_behind_proxy(Duration::from_millis(500)).await;
    let direct = app.db.url.clone();
    let mut db = offline_session(&app, "spool-stalled", "spool/#").await;

    // The queue's write names the client: the database takes it, and its answer is held.
    proxy.pause_after(b"spool-stalled");
    let (mut publisher, _) = V5::connect(v5_options(&app, "pub")).await;
    publisher
        .publish("spool/1", Qos5::AtLeastOnce, false, b"held")
        .await;
    within("the held write to be given up", async {
        while cluster(&app).stats().queued_lost == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    proxy.resume();
    publisher
        .publish("spool/1", Qos5::AtLeastOnce, false, b"after")
        .await;
    // The held write reached the database before its answer was held, so it may have been
    // stored too; what matters is that the next one is.
    until_stored(&mut db, "spool-stalled", b"after").await;

    // A write given up while it waits on a lock never commits later, after the messages
    // behind it.
    let lost = cluster(&app).stats().queued_lost;
    let mut locker = sqlx::PgConnection::connect(&direct).await.unwrap();
    let mut lock = locker.begin().await.unwrap();
    sqlx::query("LOCK TABLE cluster_session_queue IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    publisher
        .publish("spool/1", Qos5::AtLeastOnce, false, b"locked")
        .await;
    within("the locked write to be given up", async {
        while cluster(&app).stats().queued_lost == lost {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    lock.rollback().await.unwrap();
    publisher
        .publish("spool/1", Qos5::AtLeastOnce, false, b"last")
        .await;
    let frames = until_stored(&mut db, "spool-stalled", b"last").await;
    assert!(
        !frames.iter().any(|f| f.ends_with(b"locked")),
        "a write counted as lost was stored after all"
    );
}

#[tokio::test]
async fn a_burst_for_one_topic_crosses_in_fewer_nats_messages_in_order() {
    let nats = Nats::start().await;
    let [a, b] = two_nodes(&nats).await;
    let (mut on_b, _) = V5::connect(v5_options(&b, "sub-b")).await;
    on_b.subscribe("burst/x", Qos5::AtLeastOnce).await;
    until_sends(&a, "burst/x").await;
    // 2,000 PUBLISH packets in one write: node A reads them back to back, faster than its
    // forwarder sends, and what queues behind a publish for the same subject goes with it.
    let (mut p, _) = Raw::connect(&a, &build::connect("burster", true, 60, None)).await;
    let burst: Vec<u8> = (0..2000)
        .flat_map(|n: u32| {
            build::publish(
                "burst/x",
                0,
                false,
                false,
                0,
                None,
                n.to_string().as_bytes(),
            )
        })
        .collect();
    p.send(&burst).await;
    let got = until_payload(&mut on_b, b"1999").await;
    let numbers: Vec<u32> = got
        .iter()
        .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (0..2000).collect::<Vec<_>>(),
        "each once, in order"
    );
    let s = cluster(&a).stats();
    assert_eq!(s.forwarded, 2000);
    assert!(
        s.nats_messages < s.forwarded,
        "{} NATS messages for {} publishes",
        s.nats_messages,
        s.forwarded
    );
    eprintln!(
        "{} publishes in {} NATS messages",
        s.forwarded, s.nats_messages
    );
    assert_eq!(cluster(&b).stats().received, 2000);
}

#[tokio::test]
async fn a_node_refuses_to_start_as_an_island() {
    // SQLite serves one process: a cluster needs Postgres.
    let sqlite = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&sqlite.url);
    config.cluster_url = Some("nats://127.0.0.1:1".into());
    let err = retaind::app::start(&config, retaind::store::Clock::manual(common::T0_MS))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("needs a postgres://"), "{err}");

    // NATS unreachable: retried for --db-startup-wait, then a clear error.
    let pg = fresh_db(Backend::Postgres).await;
    let mut config = test_config(&pg.url);
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    config.cluster_url = Some(format!("nats://127.0.0.1:{unused}"));
    config.db_startup_wait = Duration::from_millis(1200);
    let started = Instant::now();
    let err = retaind::app::start(&config, retaind::store::Clock::manual(common::T0_MS))
        .await
        .err()
        .expect("refused");
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "it retried"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("cannot reach NATS at nats://127.0.0.1:{unused}")),
        "{msg}"
    );

    // A prefix that is not one NATS token (checked before NATS is reached).
    config.cluster_url = Some("nats://127.0.0.1:1".into());
    config.cluster_prefix = "a.b".into();
    let err = retaind::app::start(&config, retaind::store::Clock::manual(common::T0_MS))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("--cluster-prefix"), "{err}");
    config.cluster_prefix = "retaind".into();

    // A payload limit NATS cannot carry.
    let nats = Nats::start().await;
    config.cluster_url = Some(nats.url());
    config.max_payload_bytes = 1024 * 1024;
    let err = retaind::app::start(&config, retaind::store::Clock::manual(common::T0_MS))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("raise max_payload"), "{err}");
}

#[tokio::test]
async fn a_client_id_connected_on_another_node_is_taken_over() {
    let nats = Nats::start().await;
    let [a, b] = two_nodes(&nats).await;

    // MQTT 5 on A, then the same id on B: A's connection gets DISCONNECT 0x8E.
    let (mut old, _) = Raw::connect(&a, &build::connect("dev", true, 60, Some(&[]))).await;
    let (mut new, ack) = Raw::connect(&b, &build::connect("dev", true, 60, Some(&[]))).await;
    assert_eq!(ack.body[1], 0, "CONNACK success");
    let got = old.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].disconnect_reason(), 0x8E);
    // The new connection is the one that stays.
    new.send(&[0xC0, 0]).await;
    new.expect(13).await;

    // MQTT 3.1.1 has no DISCONNECT from the server: the old connection is closed.
    let (mut old, _) = Raw::connect(&b, &build::connect("dev3", true, 60, None)).await;
    let (mut new, _) = Raw::connect(&a, &build::connect("dev3", true, 60, None)).await;
    assert!(old.until_closed().await.is_empty());
    new.send(&[0xC0, 0]).await;
    new.expect(13).await;
}

#[tokio::test]
async fn a_take_over_across_nodes_publishes_the_old_connections_will_once() {
    let nats = Nats::start().await;
    let [a, b] = two_nodes(&nats).await;
    let (mut w, _) = V5::connect(v5_options(&b, "watcher")).await;
    w.subscribe("will/#", Qos5::AtLeastOnce).await;
    until_sends(&a, "will/t").await;
    let will = build::Will {
        topic: "will/t",
        payload: b"bye",
        qos: 1,
        retain: false,
        props: &[],
    };
    let connect = build::connect_with_will("tw", true, 60, Some(&[]), will);
    let (mut old, _) = Raw::connect(&a, &connect).await;
    let (_new, _) = Raw::connect(&b, &build::connect("tw", true, 60, Some(&[]))).await;
    assert_eq!(old.until_closed().await[0].disconnect_reason(), 0x8E);
    assert_eq!(&w.next_publish().await.payload[..], b"bye");
    w.publish("will/t", Qos5::AtLeastOnce, false, b"after")
        .await;
    assert_eq!(
        &w.next_publish().await.payload[..],
        b"after",
        "the Will came once"
    );
}

#[tokio::test]
async fn a_stale_connection_closes_even_if_its_take_over_notice_is_lost() {
    let nats = Nats::start().await;
    let [a, _b] = two_nodes(&nats).await;
    let (mut old, _) = Raw::connect(&a, &build::connect("quiet", true, 60, Some(&[]))).await;
    // Another node's claim that sent no notice: only the database knows.
    let mut db = sqlx::PgConnection::connect(&a.db.url).await.unwrap();
    let changed = sqlx::query(
        "UPDATE cluster_clients SET node = 'elsewhere', \
         generation = nextval('cluster_generation') WHERE client_id = 'quiet'",
    )
    .execute(&mut db)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(changed, 1, "the CONNECT claimed its id");
    let started = Instant::now();
    let got = old.until_closed().await;
    assert_eq!(got[0].disconnect_reason(), 0x8E);
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "closed at the next comparison, within 5 s"
    );
}

#[tokio::test]
async fn a_connect_whose_id_cannot_be_claimed_is_refused_as_server_unavailable() {
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let mut config = test_config(&db.url);
    config.cluster_url = Some(nats.url());
    config.store_timeout = Duration::from_millis(500);
    let a = spawn_app_with(db, config).await;
    // A transaction holds the claims table: the database cannot arbitrate the id in time.
    let mut locker = sqlx::PgConnection::connect(&a.db.url).await.unwrap();
    let mut tx = locker.begin().await.unwrap();
    sqlx::query("LOCK TABLE cluster_clients IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let (mut refused, ack) = Raw::connect(&a, &build::connect("dev", true, 60, Some(&[]))).await;
    assert_eq!(ack.body[1], 0x88, "MQTT 5 CONNACK: Server unavailable");
    assert!(refused.until_closed().await.is_empty());
    let (_, ack) = Raw::connect(&a, &build::connect("dev3", true, 60, None)).await;
    assert_eq!(ack.body[1], 0x03, "MQTT 3.1.1 CONNACK: Server unavailable");
    tx.rollback().await.unwrap();
    let (_, ack) = Raw::connect(&a, &build::connect("dev", true, 60, Some(&[]))).await;
    assert_eq!(ack.body[1], 0, "accepted once the database answers");
}

#[tokio::test]
async fn per_principal_rates_are_the_services_shared_by_the_live_nodes() {
    let nats = Nats::start().await;
    let db = fresh_db(Backend::Postgres).await;
    let url = db.url.clone();
    let mut dbs = vec![db, FreshDb::shared(&url)];
    let mut nodes = Vec::new();
    for db in dbs.drain(..) {
        let mut config = test_config(&url);
        config.cluster_url = Some(nats.url());
        config.rate_publish = 20.0;
        nodes.push(spawn_app_with(db, config).await);
    }
    let a = &nodes[0];
    until_live(a, 2).await;
    // A burst on A: its share is 20/2 per second, with a burst of one second's worth.
    let mut admitted = 0;
    for _ in 0..30 {
        if a.publish("/topics/rate?qos=0", "x").await.status() == 200 {
            admitted += 1;
        }
    }
    assert!((10..=12).contains(&admitted), "admitted {admitted} of 30");
}

/// `--mqtt-connect-rate-per-principal` is the service's too: with two live nodes each lets in
/// half (here, without principals, half of the service's 4 CONNECTs a second: two at once, then
/// one every half second, and past 2 s refused). Undivided, all seven would be let in.
#[tokio::test]
async fn the_connect_rate_per_principal_is_the_services_shared_by_the_live_nodes() {
    let nats = Nats::start().await;
    let nodes = common::cluster_nodes_with(&nats.url(), 2, |c| {
        c.mqtt_connect_rate_per_principal = 4.0;
    })
    .await;
    let a = &nodes[0];
    until_live(a, 2).await;
    let attempts = (0..7).map(|i| async move {
        let connect = build::connect(&format!("burst-{i}"), true, 60, Some(&[]));
        Raw::connect(a, &connect).await
    });
    let results = futures_util::future::join_all(attempts).await;
    let mut codes: Vec<u8> = results.iter().map(|(_, ack)| ack.body[1]).collect();
    codes.sort_unstable();
    assert_eq!(codes, [0, 0, 0, 0, 0, 0, 0x9F]);
}

/// B is judged by its own dead time (`--cluster-dead-after 3s`), which its heartbeats record:
/// A, whose own is the default 10 s, finds it dead after 3 s.
#[tokio::test]
async fn a_node_killed_is_found_dead_after_its_own_dead_time_and_the_others_stop_sending_to_it() {
    let nats = Nats::start().await;
    let [a] = <[TestApp; 1]>::try_from(nodes(&nats, 1).await)
        .ok()
        .unwrap();
    let args = ["--cluster-url", &nats.url(), "--cluster-dead-after", "3s"];
    let mut b = Process::start(&a.db.url, &args).await;
    let mut options = rumqttc::v5::MqttOptions::new("on-b", "127.0.0.1", b.mqtt.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (mut on_b, _) = V5::connect(options).await;
    on_b.subscribe("dead/x", Qos5::AtMostOnce).await;
    until_sends(&a, "dead/x").await;
    until_live(&a, 2).await;

    b.kill().await;
    let killed = Instant::now();
    let t = topic("dead/x");
    tokio::time::timeout(Duration::from_secs(30), async {
        while cluster(&a).sends(&t) || cluster(&a).live_nodes() > 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("B found dead and its interest removed");
    let found = killed.elapsed();
    // B's last heartbeat may have been a beat (0.6 s, or a slow pass more) before the kill;
    // A's own dead time would take 10 s.
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(8)).contains(&found),
        "B's heartbeat 3 s old, not 10: {found:?}"
    );
    eprintln!("B found dead {found:?} after kill -9");
    let mut db = sqlx::PgConnection::connect(&a.db.url).await.unwrap();
    let claims: i64 =
        sqlx::query_scalar("SELECT count(*) FROM cluster_clients WHERE client_id = 'on-b'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(claims, 0, "the dead node's claims are removed");
}

/// Collects the payloads `c` receives, in a task of its own, until aborted.
fn collect(
    mut c: V5,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let into = got.clone();
    let task = tokio::spawn(async move {
        while let Ok(event) = c.events.poll().await {
            if let rumqttc::v5::Event::Incoming(p5::Packet::Publish(p)) = event {
                into.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&p.payload).into_owned());
            }
        }
    });
    (got, task)
}

#[tokio::test]
async fn a_shared_subscription_gives_each_message_to_one_member_across_nodes() {
    let nats = Nats::start().await;
    let [a, b, c] = <[TestApp; 3]>::try_from(nodes(&nats, 3).await)
        .ok()
        .unwrap();
    let (mut m1, _) = V5::connect(v5_options(&a, "m1")).await;
    m1.subscribe("$share/g/jobs/#", Qos5::AtLeastOnce).await;
    let (mut m2, _) = V5::connect(v5_options(&b, "m2")).await;
    m2.subscribe("$share/g/jobs/#", Qos5::AtLeastOnce).await;
    // Another group on the same filter gets every message too, on its one member.
    let (mut other, _) = V5::connect(v5_options(&b, "other")).await;
    other.subscribe("$share/h/jobs/#", Qos5::AtLeastOnce).await;
    let (mut plain, _) = V5::connect(v5_options(&c, "plain")).await;
    plain.subscribe("jobs/#", Qos5::AtLeastOnce).await;
    until_sends(&c, "jobs/1").await;
    until_sends(&a, "jobs/1").await;
    let (m1, t1) = collect(m1);
    let (m2, t2) = collect(m2);
    let (other, t3) = collect(other);
    let (plain, t4) = collect(plain);

    let (mut publisher, _) = V5::connect(v5_options(&c, "pub")).await;
    let mut sent = Vec::new();
    for i in 0..40 {
        let payload = format!("mqtt-{i}");
        publisher
            .publish("jobs/1", Qos5::AtLeastOnce, false, payload.as_bytes())
            .await;
        sent.push(payload);
    }
    for i in 0..10 {
        let payload = format!("http-{i}");
        let res = a.publish("/topics/jobs%2F2?qos=1", payload.clone()).await;
        assert_eq!(res.status(), 200);
        sent.push(payload);
    }
    publisher
        .publish("jobs/end", Qos5::AtLeastOnce, false, b"end")
        .await;
    sent.push("end".into());
    within("every message to reach a member of each group", async {
        while m1.lock().unwrap().len() + m2.lock().unwrap().len() < sent.len()
            || other.lock().unwrap().len() < sent.len()
            || plain.lock().unwrap().len() < sent.len()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Anything sent twice would have arrived by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for t in [t1, t2, t3, t4] {
        t.abort();
    }
    // The plain subscriber has every message once, each publisher's in order (C's MQTT
    // client and A's HTTP publishes are two publishers: their messages interleave).
    let plain = plain.lock().unwrap().clone();
    let from = |prefix: &str| -> Vec<String> {
        plain
            .iter()
            .filter(|p| p.starts_with(prefix))
            .cloned()
            .collect()
    };
    let sent_from = |prefix: &str| -> Vec<String> {
        sent.iter()
            .filter(|p| p.starts_with(prefix))
            .cloned()
            .collect()
    };
    assert_eq!(plain.len(), sent.len(), "{plain:?}");
    assert_eq!(from("mqtt-"), sent_from("mqtt-"));
    assert_eq!(from("http-"), sent_from("http-"));
    let (m1, m2) = (m1.lock().unwrap().clone(), m2.lock().unwrap().clone());
    let mut both: Vec<String> = m1.iter().chain(&m2).cloned().collect();
    both.sort();
    let mut expected = sent.clone();
    expected.sort();
    assert_eq!(both, expected, "each message to exactly one member of g");
    assert!(
        !m1.is_empty() && !m2.is_empty(),
        "spread over both nodes' members: {} and {}",
        m1.len(),
        m2.len()
    );
    let mut other = other.lock().unwrap().clone();
    other.sort();
    assert_eq!(other, expected, "h's one member has every message");
}

/// MQTT 5 CONNECT with a session that outlives its connection (expiry 300 s).
fn persistent(id: &str, clean: bool) -> Vec<u8> {
    build::connect(id, clean, 60, Some(&[0x11, 0, 0, 1, 0x2C]))
}

/// Messages queued in Postgres for `client`'s offline session.
async fn queued(app: &TestApp, client: &str) -> i64 {
    let mut db = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM cluster_session_queue WHERE client_id = $1")
        .bind(client)
        .fetch_one(&mut db)
        .await
        .unwrap()
}

/// Waits until `n` messages are queued in Postgres for `client`.
async fn until_queued(app: &TestApp, client: &str, n: i64) {
    within("the queue to reach Postgres", async {
        while queued(app, client).await != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Reads `n` PUBLISHes (acknowledging QoS 1 ones) and returns their payloads.
async fn payloads(raw: &mut Raw, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while got.len() < n {
        let publish = raw.expect(3).await.publish(true);
        if publish.qos > 0 {
            raw.send(&build::ack(0x40, publish.pkid)).await;
        }
        got.push(publish.payload);
    }
    got
}

/// `client`'s persistent session on `a`, subscribed to `inbox/#`, its client gone, with
/// "one", "two" and "three" published on `b` at QoS 1 and queued for it in Postgres; returns
/// the publisher, still connected.
async fn away_with_three_queued(a: &TestApp, b: &TestApp, client: &str) -> V5 {
    let (mut p, _) = Raw::connect(a, &persistent(client, true)).await;
    p.send(&build::subscribe(1, "inbox/#", 1, Some(&[]))).await;
    p.expect(9).await;
    until_sends(b, "inbox/1").await;
    p.send(&build::disconnect_v5(0)).await;
    assert!(p.until_closed().await.is_empty());
    let (mut publisher, _) = V5::connect(v5_options(b, "pub")).await;
    for m in ["one", "two", "three"] {
        publisher
            .publish("inbox/1", Qos5::AtLeastOnce, false, m.as_bytes())
            .await;
    }
    until_queued(a, client, 3).await;
    publisher
}

/// "live", published by `publisher` on `inbox/1` now, reaches `p`.
async fn live_arrives(publisher: &mut V5, p: &mut Raw) {
    publisher
        .publish("inbox/1", Qos5::AtLeastOnce, false, b"live")
        .await;
    assert_eq!(payloads(p, 1).await, [b"live".to_vec()]);
}

/// `client` comes back on `node`: session present, "one", "two" and "three" (queued for it, in
/// that order), then "live", published by `publisher` once it is back.
async fn resumes_with_three_then_live(node: &TestApp, client: &str, publisher: &mut V5) {
    let (mut p, ack) = Raw::connect(node, &persistent(client, false)).await;
    assert_eq!(ack.body[0], 1, "session present");
    assert_eq!(
        payloads(&mut p, 3).await,
        [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );
    live_arrives(publisher, &mut p).await;
}

#[tokio::test]
async fn a_persistent_session_resumes_on_another_node_with_what_was_queued_for_it() {
    let nats = Nats::start().await;
    let [a, b] = two_nodes(&nats).await;
    let (mut p, ack) = Raw::connect(&a, &persistent("phone", true)).await;
    assert_eq!(ack.body[0], 0, "a new session");
    p.send(&build::subscribe(1, "inbox/#", 1, Some(&[]))).await;
    p.expect(9).await;
    until_sends(&b, "inbox/1").await;
    p.send(&build::disconnect_v5(0)).await;
    assert!(p.until_closed().await.is_empty());

    // Published on B while the client is away: A holds the session, its queue in Postgres.
    let (mut publisher, _) = V5::connect(v5_options(&b, "pub")).await;
    for m in ["one", "two", "three"] {
        publisher
            .publish("inbox/1", Qos5::AtLeastOnce, false, m.as_bytes())
            .await;
    }
    publisher
        .publish("inbox/1", Qos5::AtMostOnce, false, b"qos0")
        .await;
    until_queued(&a, "phone", 3).await;

    // The client comes back through B: session present, the queue in order (QoS 0 is not
    // queued for an offline client), and its subscription now routes on B.
    resumes_with_three_then_live(&b, "phone", &mut publisher).await;
    // A let go of it: nothing is queued or routed there any more.
    let t = topic("inbox/1");
    within("A to withdraw the session's interest", async {
        while cluster(&b).sends(&t) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// A resume takes the earlier session and records the new connection's in one transaction: a
/// record the database refuses leaves the earlier session whole, its queue included (with the
/// node that tried since 2026-12-07, below), and the CONNECT is refused; the next CONNECT resumes it.
#[tokio::test]
async fn a_resume_whose_session_cannot_be_recorded_is_refused_and_takes_nothing() {
    let nats = Nats::start().await;
    let [a, b] = two_nodes(&nats).await;
    let mut publisher = away_with_three_queued(&a, &b, "meter").await;

    // The database refuses this client a Will, so a connection with one cannot be recorded.
    let mut db = refuse_session_rows(&a, "meter", Refused::Will).await;
    resume_with_a_will_refused(&b, "meter").await;
    assert_eq!(queued(&a, "meter").await, 3, "the queue is still stored");
    let (subscriptions, expiry): (serde_json::Value, i64) = sqlx::query_as(
        "SELECT subscriptions, expiry_secs FROM cluster_sessions WHERE client_id = 'meter'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(subscriptions[0]["filter"], "inbox/#", "{subscriptions}");
    assert_eq!(expiry, 300);

    sqlx::raw_sql("DROP TRIGGER refuse_meter ON cluster_sessions")
        .execute(&mut db)
        .await
        .unwrap();
    resumes_with_three_then_live(&b, "meter", &mut publisher).await;
}

/// Makes the database refuse writes of `client`'s session row as `refused` says (a trigger,
/// `refuse_<client>`); returns the connection that made it, to drop it with.
async fn refuse_session_rows(app: &TestApp, client: &str, refused: Refused) -> sqlx::PgConnection {
    let refusal = match refused {
        Refused::Will => "NEW.will IS NOT NULL",
        Refused::Move => "TG_OP = 'UPDATE' AND NEW.node <> OLD.node",
    };
    let mut db = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    // The condition is one of the two constants above; the client ids are the tests' own.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION refuse_{client}() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.client_id = '{client}' AND {refusal} THEN \
           RAISE EXCEPTION 'refused for {client}'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_{client} BEFORE INSERT OR UPDATE ON cluster_sessions \
           FOR EACH ROW EXECUTE FUNCTION refuse_{client}();"
    )))
    .execute(&mut db)
    .await
    .unwrap();
    db
}

/// `client` resumes on `node` with a Will, and the database refuses that: Server unavailable.
async fn resume_with_a_will_refused(node: &TestApp, client: &str) {
    let topic = format!("gone/{client}");
    let will = build::Will {
        topic: &topic,
        payload: b"bye",
        qos: 0,
        retain: false,
        props: &[],
    };
    let connect = build::connect_with_will(client, false, 60, Some(&[0x11, 0, 0, 1, 0x2C]), will);
    let (mut refused, ack) = Raw::connect(node, &connect).await;
    assert_eq!(ack.body[1], 0x88, "MQTT 5 CONNACK: Server unavailable");
    assert!(refused.until_closed().await.is_empty());
}

/// How the database fails a resume, once the holder has let the session go.
#[derive(Clone, Copy, PartialEq)]
enum Refused {
    /// A connection with a Will cannot be recorded: the take fails, and B's record of holding
    /// the session (no Will in it) goes through at once.
    Will,
    /// The row cannot change nodes: the take fails, and so does B's record of holding the
    /// session, until the test lets it.
    Move,
}

/// Where the tests of a failed resume start: nodes A and B, "gauge"'s session held by A with
/// "one", "two" and "three" queued; its resume through B refused by the database as
/// `refused` says, once A has let the session go; then "four" published (on B, by the
/// returned publisher). Returns the nodes, the publisher and the connection that holds the
/// refusal (`refuse_gauge`).
async fn failed_resume_with_four(
    nats: &Nats,
    refused: Refused,
) -> ([TestApp; 2], V5, sqlx::PgConnection) {
    let [a, b] = two_nodes(nats).await;
    let mut publisher = away_with_three_queued(&a, &b, "gauge").await;
    let db = refuse_session_rows(&a, "gauge", refused).await;
    resume_with_a_will_refused(&b, "gauge").await;
    publisher
        .publish("inbox/1", Qos5::AtLeastOnce, false, b"four")
        .await;
    ([a, b], publisher, db)
}

/// "gauge" comes back on `node`: session present, "one" to "four" in order.
async fn resumes_with_four(node: &TestApp) -> Raw {
    let (mut p, ack) = Raw::connect(node, &persistent("gauge", false)).await;
    assert_eq!(ack.body[0], 1, "session present");
    let expected: Vec<Vec<u8>> = ["one", "two", "three", "four"]
        .iter()
        .map(|m| m.as_bytes().to_vec())
        .collect();
    assert_eq!(payloads(&mut p, 4).await, expected);
    p
}

/// A resume that fails after the node holding the session let it go (the take did not
/// commit) leaves the session with the node that tried, and its row says so once the
/// database lets it: what is published for it before its client comes back waits for it,
/// whichever node the client comes back to (decision 014, "A resume that fails after the
/// hand-over"). Before 2026-12-07 that node let its copy go too, so until the client came
/// back no node held the session's subscriptions, and "four" was lost.
async fn a_failed_resume_then_back_through(refused: Refused, back_on_a: bool) {
    let nats = Nats::start().await;
    let ([a, b], mut publisher, mut db) = failed_resume_with_four(&nats, refused).await;
    assert_eq!(cluster(&b).stats().resumes_kept, 1, "counted");
    let page = b.get("/metrics").await.text().await.unwrap();
    assert!(
        page.contains("retaind_cluster_resumes_kept_total 1"),
        "{page}"
    );
    let holder = || async {
        let mut db = sqlx::PgConnection::connect(&a.db.url).await.unwrap();
        sqlx::query_scalar::<_, String>(
            "SELECT node FROM cluster_sessions WHERE client_id = 'gauge'",
        )
        .fetch_one(&mut db)
        .await
        .unwrap()
    };
    if refused == Refused::Move {
        // B holds "four" in memory, trying again to record that it holds the session.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            holder().await,
            cluster(&a).node(),
            "the row cannot move yet"
        );
        assert_eq!(queued(&a, "gauge").await, 3);
        sqlx::raw_sql("DROP TRIGGER refuse_gauge ON cluster_sessions")
            .execute(&mut db)
            .await
            .unwrap();
    }
    within("the session's row to name B", async {
        while holder().await != cluster(&b).node() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // B holds the session offline, so its queue is in Postgres, after what A queued.
    until_queued(&a, "gauge", 4).await;
    if refused == Refused::Will {
        sqlx::raw_sql("DROP TRIGGER refuse_gauge ON cluster_sessions")
            .execute(&mut db)
            .await
            .unwrap();
    }
    let node = if back_on_a { &a } else { &b };
    let mut p = resumes_with_four(node).await;
    live_arrives(&mut publisher, &mut p).await;
}

#[tokio::test]
async fn a_session_whose_resume_failed_after_the_hand_over_keeps_receiving_until_back_on_that_node()
{
    a_failed_resume_then_back_through(Refused::Will, false).await;
}

#[tokio::test]
async fn a_session_whose_resume_failed_after_the_hand_over_keeps_receiving_until_back_on_the_first()
{
    a_failed_resume_then_back_through(Refused::Will, true).await;
}

#[tokio::test]
async fn a_session_whose_resume_failed_after_the_hand_over_is_recorded_once_the_database_lets_it() {
    a_failed_resume_then_back_through(Refused::Move, true).await;
}

/// The client comes back through A while B still cannot record that it holds the session:
/// A takes the row as it is, and B, finding A's later claim, lets its copy go with "four" (which
/// only B held) to the session's queue in Postgres. "four" is late, not lost: the client's next
/// resume brings it.
#[tokio::test]
async fn a_session_kept_after_a_failed_resume_hands_what_it_held_to_a_resume_elsewhere_late() {
    let nats = Nats::start().await;
    let ([a, _b], mut publisher, mut db) = failed_resume_with_four(&nats, Refused::Move).await;
    // The row did not move, so A takes it as it is.
    let (mut p, ack) = Raw::connect(&a, &persistent("gauge", false)).await;
    assert_eq!(ack.body[0], 1, "session present");
    assert_eq!(
        payloads(&mut p, 3).await,
        [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );
    // B's next record finds A's claim and writes what its copy held to the queue.
    until_queued(&a, "gauge", 1).await;
    sqlx::raw_sql("DROP TRIGGER refuse_gauge ON cluster_sessions")
        .execute(&mut db)
        .await
        .unwrap();
    p.send(&build::disconnect_v5(0)).await;
    assert!(p.until_closed().await.is_empty());
    let (mut p, ack) = Raw::connect(&a, &persistent("gauge", false)).await;
    assert_eq!(ack.body[0], 1, "session present");
    assert_eq!(payloads(&mut p, 1).await, [b"four".to_vec()]);
    live_arrives(&mut publisher, &mut p).await;
}

/// B keeps a session after a failed resume while the database refuses to record it, and is
/// stopped as soon as the database would: its last pass, as it stops, records the row and
/// writes what the copy held ("four") to Postgres, where A takes it up. Without that pass
/// "four" was lost with B's memory.
#[tokio::test]
async fn a_session_kept_after_a_failed_resume_is_recorded_as_its_node_stops() {
    let nats = Nats::start().await;
    // `a` owns the test schema; `b` only shares it, so `b` is the one stopped.
    let ([a, b], _publisher, mut db) = failed_resume_with_four(&nats, Refused::Move).await;
    sqlx::raw_sql("DROP TRIGGER refuse_gauge ON cluster_sessions")
        .execute(&mut db)
        .await
        .unwrap();
    // Well within the heartbeat after B's first refused record.
    b.stop().await;
    resumes_with_four(&a).await;
}

/// Runs `sql` with `node` as its `$1`.
async fn write(db: &mut sqlx::PgConnection, sql: &'static str, node: &str) {
    sqlx::query(sql).bind(node).execute(db).await.unwrap();
}

/// What B's record of holding a session whose resume failed does with the row, for each thing
/// the row can say then. A take that commits after its connection gave up waiting leaves the
/// row B's already, still connected, with the refused CONNECT's Will (and the queue gone with
/// the take): the record sets it right, offline and without that Will, as it moves a row A
/// let go. A later claim of the client id, here or elsewhere, leaves the row alone.
#[tokio::test]
async fn the_record_of_a_session_kept_after_a_failed_resume_sets_its_row_right_or_leaves_it() {
    let nats = Nats::start().await;
    let [a, b] = two_nodes(&nats).await;
    let _publisher = away_with_three_queued(&a, &b, "late").await;
    let (a_node, b_node) = (cluster(&a).node(), cluster(&b).node());
    let mut db = sqlx::PgConnection::connect(&a.db.url).await.unwrap();
    let row = "SELECT node, connected, will IS NULL, detached_at IS NOT NULL \
               FROM cluster_sessions WHERE client_id = 'late'";
    // The failed CONNECT's claim on B, and its take committed late.
    write(
        &mut db,
        "INSERT INTO cluster_clients (client_id, node, generation) VALUES ('late', $1, 7) \
         ON CONFLICT (client_id) DO UPDATE SET node = $1, generation = 7",
        b_node,
    )
    .await;
    write(
        &mut db,
        "UPDATE cluster_sessions SET node = $1, connected = true, detached_at = NULL, \
           will = '\\x01' WHERE client_id = 'late'",
        b_node,
    )
    .await;
    assert_eq!(
        cluster(&b).hold_let_go(a_node, "late", 7).await.unwrap(),
        LetGoHeld::Recorded
    );
    assert_eq!(
        sqlx::query_as::<_, (String, bool, bool, bool)>(row)
            .fetch_one(&mut db)
            .await
            .unwrap(),
        (b_node.to_owned(), false, true, true),
        "B's, offline since now, without the refused CONNECT's Will"
    );

    // The row A let go, the client back through A since: not moved.
    write(
        &mut db,
        "UPDATE cluster_sessions SET node = $1 WHERE client_id = 'late'",
        a_node,
    )
    .await;
    write(
        &mut db,
        "UPDATE cluster_clients SET node = $1, generation = 8 WHERE client_id = 'late'",
        a_node,
    )
    .await;
    assert_eq!(
        cluster(&b).hold_let_go(a_node, "late", 7).await.unwrap(),
        LetGoHeld::Elsewhere
    );
    // Back through B since: B's connection takes it up.
    write(
        &mut db,
        "UPDATE cluster_clients SET node = $1 WHERE client_id = 'late'",
        b_node,
    )
    .await;
    assert_eq!(
        cluster(&b).hold_let_go(a_node, "late", 7).await.unwrap(),
        LetGoHeld::ClaimedHere
    );
    let (node, ..) = sqlx::query_as::<_, (String, bool, bool, bool)>(row)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(node, a_node, "left alone");
}

#[tokio::test]
async fn a_killed_nodes_sessions_are_adopted_and_its_clients_wills_fire_once() {
    let nats = Nats::start().await;
    let [a, c] = two_nodes(&nats).await;
    // Found dead 4 s after its last heartbeat, not 10: the test waits that long.
    let args = ["--cluster-url", &nats.url(), "--cluster-dead-after", "4s"];
    let mut b = Process::start(&a.db.url, &args).await;
    let on_b = |id: &str| {
        let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", b.mqtt.port());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_start(false);
        o.set_connect_properties(rumqttc::v5::mqttbytes::v5::ConnectProperties {
            session_expiry_interval: Some(300),
            ..Default::default()
        });
        o
    };
    // A persistent session connected to B, and a client of B with a Will.
    let (mut phone, _) = V5::connect(on_b("phone")).await;
    phone.subscribe("inbox/#", Qos5::AtLeastOnce).await;
    let mut with_will = on_b("sensor");
    with_will.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        "will/sensor",
        "gone",
        Qos5::AtLeastOnce,
        false,
        None,
    ));
    let (_sensor, _) = V5::connect(with_will).await;
    let (mut watcher, _) = V5::connect(v5_options(&c, "watcher")).await;
    watcher.subscribe("will/#", Qos5::AtLeastOnce).await;
    until_live(&a, 3).await;
    until_live(&c, 3).await;

    b.kill().await;
    let killed = Instant::now();
    // The Will arrives once B is found dead (4 s without a heartbeat), published by
    // whichever survivor adopted B's sessions.
    let will = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match watcher.events.poll().await {
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::Publish(p))) => return p,
                Ok(_) => {}
                Err(e) => panic!("the watcher's connection failed: {e}"),
            }
        }
    })
    .await
    .expect("the Will of a client of the killed node");
    let wills = [will];
    eprintln!("Will published {:?} after kill -9", killed.elapsed());
    assert_eq!(&wills[0].payload[..], b"gone");
    watcher
        .nothing_more_before_marker("will/marker", "the Will came once, from one survivor")
        .await;

    // The session is adopted: published to now, it is queued; resumed on A, it has it.
    let t = topic("inbox/1");
    within("a survivor to hold the session's subscription", async {
        // The adopter announces it; the other survivor is the one that sees it.
        while !cluster(&c).sends(&t) && !cluster(&a).sends(&t) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let (mut publisher, _) = V5::connect(v5_options(&c, "pub")).await;
    publisher
        .publish("inbox/1", Qos5::AtLeastOnce, false, b"while away")
        .await;
    let (mut p, ack) = Raw::connect(&a, &persistent("phone", false)).await;
    assert_eq!(ack.body[0], 1, "session present after its node was killed");
    assert_eq!(payloads(&mut p, 1).await, [b"while away".to_vec()]);
}

/// A session adopted from a killed node counts among the adopter's offline sessions
/// (`--mqtt-max-offline-sessions`): ended to make room, the Will its client was owed goes out
/// then, not after its delay, and its client starts clean.
#[tokio::test]
async fn an_adopted_session_ended_to_make_room_publishes_its_will_at_once() {
    let nats = Nats::start().await;
    let [a] = <[TestApp; 1]>::try_from(
        common::cluster_nodes_with(&nats.url(), 1, |c| c.mqtt_max_offline_sessions = 1).await,
    )
    .ok()
    .unwrap();
    let args = ["--cluster-url", &nats.url(), "--cluster-dead-after", "4s"];
    let mut b = Process::start(&a.db.url, &args).await;
    // Session expiry 300 s, Will Delay 200 s.
    let sensor = build::connect_with_will(
        "sensor",
        true,
        60,
        Some(&[0x11, 0, 0, 1, 0x2C]),
        build::Will {
            topic: "will/sensor",
            payload: b"gone",
            qos: 1,
            retain: false,
            props: &[0x18, 0, 0, 0, 200],
        },
    );
    let (_sensor, ack) = Raw::connect_addr(b.mqtt, &sensor).await;
    assert_eq!(ack.body[1], 0);
    let (mut watcher, _) = Raw::connect(&a, &build::connect("watcher", true, 60, Some(&[]))).await;
    watcher
        .send(&build::subscribe(1, "will/#", 1, Some(&[])))
        .await;
    watcher.expect(9).await;
    until_live(&a, 2).await;

    b.kill().await;
    let offline = |app: &TestApp| {
        let broker = app.running.as_ref().unwrap().broker.clone();
        async move {
            let page = broker.metrics().render();
            common::metric_value(&page, "retaind_mqtt_offline_sessions")
        }
    };
    tokio::time::timeout(Duration::from_secs(30), async {
        while offline(&a).await < 1.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the killed node's session adopted");

    // Another session left on A, for 3,000 s: the adopted one is nearer its end, and ends.
    let (mut other, _) = Raw::connect(
        &a,
        &build::connect("other", true, 60, Some(&[0x11, 0, 0, 0x0B, 0xB8])),
    )
    .await;
    other.send(&build::disconnect_v5(0)).await;
    assert!(other.until_closed().await.is_empty());
    let will = tokio::time::timeout(Duration::from_secs(10), watcher.expect(3))
        .await
        .expect("the Will is published when its session ends, not 200 s later")
        .publish(true);
    assert_eq!(
        (will.topic.as_str(), will.payload.as_slice()),
        ("will/sensor", &b"gone"[..])
    );
    assert_eq!(offline(&a).await, 1.0);
    // Each kept connected: one leaving now would make room too.
    let (_other, ack) = Raw::connect(&a, &persistent("other", false)).await;
    assert_eq!(ack.body[0], 1, "the session just left was kept");
    let (_sensor, ack) = Raw::connect(&a, &persistent("sensor", false)).await;
    assert_eq!(ack.body[0], 0, "the adopted session ended");
}

#[tokio::test]
async fn a_stopped_nodes_sessions_are_taken_up_by_the_others_without_firing_wills() {
    let nats = Nats::start().await;
    let [a] = <[TestApp; 1]>::try_from(nodes(&nats, 1).await)
        .ok()
        .unwrap();
    let mut b = Process::start(&a.db.url, &["--cluster-url", &nats.url()]).await;
    let mut phone = Raw::open_addr(b.mqtt).await;
    let will = build::Will {
        topic: "will/phone",
        payload: b"gone",
        qos: 1,
        retain: false,
        props: &[],
    };
    phone
        .send(&build::connect_with_will(
            "phone",
            true,
            60,
            Some(&[0x11, 0, 0, 1, 0x2C]),
            will,
        ))
        .await;
    phone.expect(2).await;
    phone
        .send(&build::subscribe(1, "inbox/#", 1, Some(&[])))
        .await;
    phone.expect(9).await;
    let (mut watcher, _) = V5::connect(v5_options(&a, "watcher")).await;
    watcher.subscribe("will/#", Qos5::AtLeastOnce).await;
    until_sends(&a, "inbox/1").await;

    // An operator restarts B: its client is told (0x8B) and B leaves the service at once.
    b.terminate().await;
    let got = phone.until_closed().await;
    assert_eq!(got[0].disconnect_reason(), 0x8B, "server shutting down");
    let t = topic("inbox/1");
    within("A to hold the session", async {
        while cluster(&a).live_nodes() > 1 || !a_holds(&a, "phone").await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(!cluster(&a).sends(&t), "no other node holds it any more");
    let (mut publisher, _) = V5::connect(v5_options(&a, "pub")).await;
    publisher
        .publish("inbox/1", Qos5::AtLeastOnce, false, b"during the restart")
        .await;
    publisher
        .publish("will/marker", Qos5::AtLeastOnce, false, b"marker")
        .await;
    assert_eq!(
        &watcher.next_publish().await.payload[..],
        b"marker",
        "no Will: the server went away, not the client"
    );
    let (mut p, ack) = Raw::connect(&a, &persistent("phone", false)).await;
    assert_eq!(ack.body[0], 1, "session present after its node restarted");
    assert_eq!(payloads(&mut p, 1).await, [b"during the restart".to_vec()]);
}

/// The Wills of a killed node's clients are judged by the node that adopts them, under the
/// principals in force there: a reload since the CONNECTs took away one client's right to
/// publish its Will, which is dropped; the other's is published.
#[tokio::test]
async fn an_adopted_will_its_principal_may_no_longer_publish_is_dropped() {
    let nats = Nats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.toml");
    // Hashed once: a new hash of the same password counts as changed credentials.
    let (sensor, watcher) = (
        retaind::auth::hash_password("sensor-pw"),
        retaind::auth::hash_password("watcher-pw"),
    );
    let principals = |denied_open: bool| {
        let deny = if denied_open {
            ""
        } else {
            "[[principals.statements]]\neffect = \"Deny\"\nactions = [\"iot:Publish\"]\n\
             resources = [\"topic/will/denied\"]\n"
        };
        format!(
            r#"
[[principals]]
name = "sensor"
mqtt_username = "sensor"
mqtt_password_hash = "{sensor}"
[[principals.statements]]
effect = "Allow"
actions = ["iot:Connect", "iot:Publish"]
resources = ["client/sensor-*", "topic/will/*"]
{deny}
[[principals]]
name = "watcher"
mqtt_username = "watcher"
mqtt_password_hash = "{watcher}"
[[principals.statements]]
effect = "Allow"
actions = ["iot:*"]
resources = ["*"]
"#
        )
    };
    std::fs::write(&path, principals(true)).unwrap();
    let [a, c] = <[TestApp; 2]>::try_from(nodes_with(&nats, 2, Some(&path)).await)
        .ok()
        .unwrap();
    let url = a.db.url.clone();
    let mut b = Process::start(
        &url,
        &[
            "--cluster-url",
            &nats.url(),
            "--cluster-dead-after",
            "4s",
            "--principals",
            path.to_str().unwrap(),
        ],
    )
    .await;
    let mut sensors = Vec::new();
    for will in ["allowed", "denied"] {
        let id = format!("sensor-{will}");
        let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", b.mqtt.port());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_credentials("sensor", "sensor-pw");
        o.set_clean_start(false);
        o.set_connect_properties(rumqttc::v5::mqttbytes::v5::ConnectProperties {
            session_expiry_interval: Some(300),
            ..Default::default()
        });
        o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
            format!("will/{will}"),
            "gone",
            Qos5::AtLeastOnce,
            false,
            None,
        ));
        sensors.push(V5::connect(o).await.0);
    }
    let mut watcher_options = v5_options(&c, "watcher");
    watcher_options.set_credentials("watcher", "watcher-pw");
    let (mut watcher, _) = V5::connect(watcher_options).await;
    watcher.subscribe("will/#", Qos5::AtLeastOnce).await;
    until_live(&a, 3).await;
    until_live(&c, 3).await;

    // The sensors still stand, but one may no longer publish its Will; then their node dies.
    std::fs::write(&path, principals(false)).unwrap();
    for node in [&a, &c] {
        let done = node.running.as_ref().unwrap().reload().expect("the reload");
        assert_eq!(done.sessions.disconnected, 0);
    }
    b.kill().await;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let p = watcher.next_publish().await;
            got.push(String::from_utf8(p.topic.to_vec()).unwrap());
            if got.last().is_some_and(|t| t == "will/allowed") {
                return;
            }
        }
    })
    .await
    .expect("the allowed Will, published by the adopter");
    // Both Wills leave the adopter together: the denied one would be here by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // From another client: the watcher's own publish would read past what arrives meanwhile.
    let mut marker = v5_options(&c, "marker");
    marker.set_credentials("watcher", "watcher-pw");
    V5::connect(marker)
        .await
        .0
        .publish("will/marker", Qos5::AtLeastOnce, false, b"marker")
        .await;
    loop {
        let p = watcher.next_publish().await;
        got.push(String::from_utf8(p.topic.to_vec()).unwrap());
        if &p.payload[..] == b"marker" {
            break;
        }
    }
    assert_eq!(got, ["will/allowed", "will/marker"]);
    drop(sensors);
}

/// Whether `app`'s node holds `client`'s session, as Postgres says.
async fn a_holds(app: &TestApp, client: &str) -> bool {
    let mut db = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let node: Option<String> =
        sqlx::query_scalar("SELECT node FROM cluster_sessions WHERE client_id = $1")
            .bind(client)
            .fetch_optional(&mut db)
            .await
            .unwrap();
    node.as_deref() == Some(cluster(app).node())
}

#[tokio::test]
async fn a_clean_start_on_another_node_ends_the_session_held_elsewhere() {
    let nats = Nats::start().await;
    let [a, b] = two_nodes(&nats).await;
    let (mut p, _) = Raw::connect(&a, &persistent("phone", true)).await;
    p.send(&build::subscribe(1, "old/#", 1, Some(&[]))).await;
    p.expect(9).await;
    until_sends(&b, "old/1").await;
    p.send(&build::disconnect_v5(0)).await;
    assert!(p.until_closed().await.is_empty());

    // A clean start through B: the session A held is gone, subscriptions and all.
    let (mut p, ack) = Raw::connect(&b, &persistent("phone", true)).await;
    assert_eq!(ack.body[0], 0, "no session present on a clean start");
    let t = topic("old/1");
    within("A to let go of the old session's subscription", async {
        while cluster(&b).sends(&t) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let (mut publisher, _) = V5::connect(v5_options(&b, "pub")).await;
    publisher
        .publish("old/1", Qos5::AtLeastOnce, false, b"stale")
        .await;
    p.send(&build::subscribe(2, "new/#", 1, Some(&[]))).await;
    p.expect(9).await;
    publisher
        .publish("new/1", Qos5::AtLeastOnce, false, b"fresh")
        .await;
    assert_eq!(
        payloads(&mut p, 1).await,
        [b"fresh".to_vec()],
        "nothing of the old session"
    );
    assert_eq!(
        queued(&a, "phone").await,
        0,
        "nothing queued for the old session"
    );
}

#[tokio::test]
async fn a_persistent_session_resumes_on_its_own_node_with_its_queue_from_postgres() {
    let nats = Nats::start().await;
    let [a, b] = two_nodes(&nats).await;
    let mut publisher = away_with_three_queued(&a, &b, "tablet").await;
    // Back on A, which held the session: the queue comes from Postgres, in order.
    resumes_with_three_then_live(&a, "tablet", &mut publisher).await;
}

/// [`nodes`] that let a client id connect as often as it asks: a session resumed dozens of
/// times while messages arrive would otherwise wait for its client id's turn (once a second)
/// at each CONNECT, and most resumes would come after the last message.
async fn unpaced_nodes(nats: &Nats, n: usize) -> Vec<TestApp> {
    common::cluster_nodes_with(&nats.url(), n, |c| c.mqtt_connect_rate_per_client_id = 0.0).await
}

/// A persistent session leaves and resumes again and again, on `resume_on` in turn, while a
/// client on `publish_on` publishes 2,000 numbered QoS 1 messages it subscribes to: every one
/// arrives once, in order, and nothing is left in Postgres. Each time some of the session's
/// messages are in Postgres and more arrive during the resume.
async fn resume_while_publishing(nodes: &[TestApp], resume_on: &[usize], publish_on: usize) {
    let resume_on: Vec<&TestApp> = resume_on.iter().map(|&n| &nodes[n]).collect();
    let publish_on = &nodes[publish_on];
    const SENT: usize = 2000;
    let (mut p, _) = Raw::connect(resume_on[0], &persistent("tablet", true)).await;
    p.send(&build::subscribe(1, "inbox/#", 1, Some(&[]))).await;
    p.expect(9).await;
    for node in nodes.iter().filter(|n| !std::ptr::eq(*n, resume_on[0])) {
        until_sends(node, "inbox/1").await;
    }
    let (mut publisher, _) = V5::connect(v5_options(publish_on, "pub")).await;
    let publishing = tokio::spawn(async move {
        for n in 0..SENT {
            publisher
                .publish(
                    "inbox/1",
                    Qos5::AtLeastOnce,
                    false,
                    n.to_string().as_bytes(),
                )
                .await;
            // Slower than the client reads, so its queue stays within the limit.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let number =
        |payload: Vec<u8>| -> usize { String::from_utf8(payload).unwrap().parse().unwrap() };
    let mut got = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut resumes = 0;
    let mut resumes_while_publishing = 0;
    while seen.len() + 30 < SENT {
        let Ok(batch) = tokio::time::timeout(Duration::from_secs(5), payloads(&mut p, 30)).await
        else {
            let top = seen.iter().max().copied().unwrap_or(0);
            let lost: Vec<_> = (0..top).filter(|n| !seen.contains(n)).collect();
            panic!("lost after {resumes} resumes: {lost:?}");
        };
        for n in batch.into_iter().map(number) {
            got.push(n);
            seen.insert(n);
        }
        p.send(&build::disconnect_v5(0)).await;
        let _ = p.until_closed().await;
        tokio::time::sleep(Duration::from_millis(3)).await;
        resumes += 1;
        let node = resume_on[resumes % resume_on.len()];
        let (again, ack) = Raw::connect(node, &persistent("tablet", false)).await;
        assert_eq!(ack.body[0], 1, "session present");
        p = again;
        if !publishing.is_finished() {
            resumes_while_publishing += 1;
        }
    }
    publishing.await.unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while seen.len() < SENT {
            let n = number(payloads(&mut p, 1).await.remove(0));
            got.push(n);
            seen.insert(n);
        }
    });
    if rest.await.is_err() {
        let lost: Vec<_> = (0..SENT).filter(|n| !seen.contains(n)).collect();
        panic!("lost after {resumes} resumes: {lost:?}");
    }
    assert!(
        resumes_while_publishing >= 10,
        "only {resumes_while_publishing} of {resumes} resumes while messages arrived"
    );
    // The client acknowledged each message it read before it left, so none may come again
    // (QoS 1 would allow it, but a message queued on two nodes while the session moved is
    // one message), and none may come late.
    for (at, &n) in got.iter().enumerate() {
        assert_eq!(n, at, "message {at} was {n}: {got:?}");
    }
    assert_eq!(
        queued(publish_on, "tablet").await,
        0,
        "nothing left behind in Postgres"
    );
}

/// Regression: a client resuming on the node that holds its offline session took the queue
/// from Postgres while new messages still went there, so one arriving in that window came at
/// the next resume, after newer ones.
#[tokio::test]
async fn a_session_resumed_on_its_own_node_while_messages_arrive_gets_each_once_in_order() {
    let nats = Nats::start().await;
    resume_while_publishing(&unpaced_nodes(&nats, 2).await, &[0], 0).await;
}

/// Regression: the node holding a session let go of its subscriptions before the node
/// resuming it held them, so what was published in between reached neither.
#[tokio::test]
async fn a_session_moving_between_nodes_while_messages_arrive_gets_each_once_in_order() {
    let nats = Nats::start().await;
    resume_while_publishing(&unpaced_nodes(&nats, 3).await, &[0, 1], 2).await;
}

/// The same with the publisher on a node the session moves to and from: its messages reach
/// both holders directly while they overlap.
#[tokio::test]
async fn a_session_moving_to_and_from_the_publishers_node_gets_each_once_in_order() {
    let nats = Nats::start().await;
    resume_while_publishing(&unpaced_nodes(&nats, 2).await, &[0, 1], 0).await;
}

#[tokio::test]
async fn a_session_resumed_on_another_node_by_another_principal_starts_clean() {
    let nats = Nats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.toml");
    let device = |name: &str| {
        format!(
            r#"
[[principals]]
name = "{name}"
mqtt_username = "{name}"
mqtt_password_hash = "{}"

[[principals.statements]]
effect = "Allow"
actions = ["iot:Connect", "iot:Subscribe", "iot:Receive", "iot:Publish"]
resources = ["client/shared-id", "client/pub-{name}", "topicfilter/news/#", "topic/news/#"]
"#,
            retaind::auth::hash_password(&format!("{name}-pw"))
        )
    };
    std::fs::write(&path, device("alpha") + &device("beta")).unwrap();
    let [a, b] = <[TestApp; 2]>::try_from(nodes_with(&nats, 2, Some(&path)).await)
        .ok()
        .unwrap();
    // MQTT 5 CONNECT with a login and a one-hour session.
    let login = |client: &str, user: &str, clean: bool| {
        let mut body = build::string("MQTT");
        body.push(5);
        body.push(0x80 | 0x40 | if clean { 0x02 } else { 0 });
        body.extend(60u16.to_be_bytes());
        body.extend(build::props(&[0x11, 0, 0, 0x0E, 0x10]));
        body.extend(build::string(client));
        body.extend(build::string(user));
        body.extend(build::string(format!("{user}-pw")));
        build::packet(0x10, &body)
    };

    // alpha's session on A, with a subscription and a message queued while away.
    let (mut alpha, ack) = Raw::connect(&a, &login("shared-id", "alpha", true)).await;
    assert_eq!(ack.body[1], 0, "alpha connects");
    alpha
        .send(&build::subscribe(1, "news/#", 1, Some(&[])))
        .await;
    alpha.expect(9).await;
    until_sends(&b, "news/1").await;
    alpha.send(&build::disconnect_v5(0)).await;
    assert!(alpha.until_closed().await.is_empty());
    let (mut publisher, _) = Raw::connect(&b, &login("pub-alpha", "alpha", true)).await;
    publisher
        .send(&build::publish(
            "news/1",
            1,
            false,
            false,
            7,
            Some(&[]),
            b"for alpha",
        ))
        .await;
    publisher.expect(4).await;

    // beta, resuming the same client id through B, gets none of it.
    let (mut beta, ack) = Raw::connect(&b, &login("shared-id", "beta", false)).await;
    assert_eq!(ack.body[1], 0, "beta connects");
    assert_eq!(ack.body[0], 0, "no session present for another principal");
    beta.send(&[0xC0, 0]).await;
    assert_eq!(
        beta.expect(13).await.kind(),
        13,
        "nothing queued arrives before the PINGRESP"
    );
    nothing_after(
        &mut publisher,
        8,
        &mut beta,
        "no subscription of alpha's was carried over",
    )
    .await;

    // beta's own session, resumed through A, is the one beta made: no subscription, nothing
    // queued, though alpha's were in its row when beta took the client id.
    beta.send(&build::disconnect_v5(0)).await;
    assert!(beta.until_closed().await.is_empty());
    let (mut beta, ack) = Raw::connect(&a, &login("shared-id", "beta", false)).await;
    assert_eq!(ack.body[1], 0, "beta connects again");
    assert_eq!(ack.body[0], 1, "beta's own session is present");
    nothing_after(
        &mut publisher,
        9,
        &mut beta,
        "neither alpha's subscription nor its queue came back with beta's session",
    )
    .await;
}

/// `publisher` publishes to `news/1` (QoS 1, packet `pkid`, acknowledged); then `client`'s
/// PINGRESP is the first thing it gets: the publish did not reach it.
async fn nothing_after(publisher: &mut Raw, pkid: u16, client: &mut Raw, why: &str) {
    publisher
        .send(&build::publish(
            "news/1",
            1,
            false,
            false,
            pkid,
            Some(&[]),
            b"not for this client",
        ))
        .await;
    publisher.expect(4).await;
    client.send(&[0xC0, 0]).await;
    assert_eq!(client.expect(13).await.kind(), 13, "{why}");
}

/// A node stopped with a drain time (`--mqtt-drain-time`) asks its clients to leave one after
/// another, with DISCONNECT 0x9C Use another server, not all at once. Each reconnects to the
/// other node and resumes its persistent session there, handed over live by the node still
/// draining: session present, and its subscription delivers there.
#[tokio::test]
async fn a_drained_nodes_clients_resume_their_sessions_on_another_node_a_few_at_a_time() {
    let nats = Nats::start().await;
    let [a, b] = drained_pair(&nats, Duration::from_secs(2)).await;
    let a_addr = a.mqtt_addr;
    let mut clients = Vec::new();
    for i in 0..6 {
        let id = format!("drained{i}");
        let mut raw = subscribed(&b, &id, &format!("inbox/{i}")).await;
        clients.push(tokio::spawn(async move {
            let got = within("the drain's DISCONNECT", raw.until_closed()).await;
            let left = Instant::now();
            let mut raw = Raw::open_addr(a_addr).await;
            raw.send(&persistent(&id, false)).await;
            let ack = within("a CONNACK from the other node", raw.expect(2)).await;
            (got, left, ack, raw)
        }));
    }
    until_sends(&a, "inbox/5").await;
    // A drained node waits for its sessions to be taken up only while another node is live.
    until_live(&b, 2).await;
    let started = Instant::now();
    let stopping = tokio::spawn(b.stop());
    let mut left = Vec::new();
    let mut resumed = Vec::new();
    for client in clients {
        let (got, at, ack, raw) = client.await.unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].disconnect_reason(), 0x9C, "Use another server");
        assert_eq!(ack.body[..2], [1, 0], "session present, on the other node");
        left.push(at.duration_since(started));
        resumed.push(raw);
    }
    left.sort();
    assert!(
        left[left.len() - 1] - left[0] >= Duration::from_millis(1200),
        "one after another over the drain time: {left:?}"
    );
    within("B to stop", stopping).await.unwrap();
    assert_eq!(
        cluster(&a).stats().handovers_missed,
        0,
        "each handed over live"
    );
    let (mut publisher, _) = V5::connect(v5_options(&a, "publisher")).await;
    for (i, raw) in resumed.iter_mut().enumerate() {
        publisher
            .publish(&format!("inbox/{i}"), Qos5::AtLeastOnce, false, b"after")
            .await;
        let publish = within("the resumed subscription", raw.expect(3))
            .await
            .publish(true);
        assert_eq!(publish.payload, b"after");
    }
}

/// Two nodes, each draining over `drain` when it stops.
async fn drained_pair(nats: &Nats, drain: Duration) -> [TestApp; 2] {
    let nodes = common::cluster_nodes_with(&nats.url(), 2, |c| c.mqtt_drain_time = drain).await;
    <[TestApp; 2]>::try_from(nodes).ok().unwrap()
}

/// A persistent MQTT 5 session of `id` on `app`, subscribed to `filter` at QoS 1.
async fn subscribed(app: &TestApp, id: &str, filter: &str) -> Raw {
    let (mut raw, _) = Raw::connect(app, &persistent(id, true)).await;
    raw.send(&build::subscribe(1, filter, 1, Some(&[]))).await;
    raw.expect(9).await;
    raw
}

/// A client that comes back through another node only after the drain has asked the last one
/// (its own reconnect delay) still finds its session handed over live: the drained node goes
/// on answering for the sessions it asked, and stops once they are all taken up. Before, it
/// stopped about a second after the drain whoever had come back, and the other node took the
/// sessions of the later ones as stored, without what only a live hand-over carries.
#[tokio::test]
async fn a_drained_node_answers_for_its_sessions_until_their_clients_come_back() {
    let nats = Nats::start().await;
    let [a, b] = drained_pair(&nats, Duration::from_millis(100)).await;
    let mut raw = subscribed(&b, "late", "inbox/late").await;
    until_sends(&a, "inbox/late").await;
    // A drained node waits for its sessions to be taken up only while another node is live.
    until_live(&b, 2).await;
    let stopping = tokio::spawn(b.stop());
    let got = within("the drain's DISCONNECT", raw.until_closed()).await;
    assert_eq!(got[0].disconnect_reason(), 0x9C, "Use another server");
    // Longer than the rest of the stop takes here (about a second), shorter than the node's
    // patience for the sessions it asked (2 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !stopping.is_finished(),
        "the drained node stopped before its client came back"
    );
    let mut raw = Raw::open_addr(a.mqtt_addr).await;
    raw.send(&persistent("late", false)).await;
    let ack = within("a CONNACK from the other node", raw.expect(2)).await;
    assert_eq!(ack.body[..2], [1, 0], "session present, on the other node");
    assert_eq!(cluster(&a).stats().handovers_missed, 0, "handed over live");
    within("B to stop once its session was taken up", stopping)
        .await
        .unwrap();
    let (mut publisher, _) = V5::connect(v5_options(&a, "publisher")).await;
    publisher
        .publish("inbox/late", Qos5::AtLeastOnce, false, b"after")
        .await;
    let publish = within("the resumed subscription", raw.expect(3))
        .await
        .publish(true);
    assert_eq!(publish.payload, b"after");
}

/// DeleteConnection on one node for a client connected to another: the node holding the
/// client's claim closes its connection (DISCONNECT 0x98) and the request is answered 200; a
/// client connected nowhere is 404 from any node.
#[tokio::test]
async fn a_connection_is_deleted_from_any_node() {
    let nats = Nats::start().await;
    let [a, b] = two_nodes(&nats).await;
    let (mut dev, _) = Raw::connect(&b, &build::connect("remote/dev", true, 60, Some(&[]))).await;
    let delete = |app: &TestApp| app.http.delete(app.url("/connections/remote%2Fdev")).send();
    let res = delete(&a).await.unwrap();
    assert_eq!(res.status(), 200);
    let got = within("the close", dev.until_closed()).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].disconnect_reason(), 0x98);
    for app in [&a, &b] {
        let res = delete(app).await.unwrap();
        assert_eq!(res.status(), 404);
        assert_eq!(
            res.headers()["x-amzn-errortype"],
            "ResourceNotFoundException"
        );
    }
}
