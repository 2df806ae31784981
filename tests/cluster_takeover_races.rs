//! The cross-node versions of the take-over races fixed on one node on 2026-12-06
//! (`tests/mqtt_takeover_races.rs`, decision 006 "An old connection's late work is its own"):
//! two nodes sharing Postgres and NATS, a client id whose session, Will or connection is on
//! node A while the client comes back through node B. Each test failed on the code it was
//! written against (a review of 2026-12-06); three of them until the session's row carried
//! its open QoS 2 exchanges and, at a clean stop, its delayed Will (decision 014, "A
//! session's QoS 2 exchanges and delayed Will across nodes").

mod common;

use std::time::{Duration, Instant};

use common::cluster_of as cluster;
use common::mqtt::raw::build::prop_u32;
use common::mqtt::raw::{Raw, build};
use common::mqtt::{Qos5, V5, v5_options, will_watcher, within};
use common::nats::Nats;
use common::{TestApp, topic};
use sqlx::{Connection, Executor};

const SESSION_EXPIRY: u8 = 0x11;
const WILL_DELAY: u8 = 0x18;

/// Two nodes of one service (one database, one NATS); `set` adjusts both configurations.
async fn two(nats: &Nats, set: impl Fn(&mut retaind::app::ServeConfig)) -> [TestApp; 2] {
    let nodes = common::cluster_nodes_with(&nats.url(), 2, set).await;
    let [a, b] = <[TestApp; 2]>::try_from(nodes).ok().unwrap();
    within("both nodes to see each other", async {
        while cluster(&a).live_nodes() < 2 || cluster(&b).live_nodes() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    [a, b]
}

/// MQTT connections open on `app`.
fn connections(app: &TestApp) -> usize {
    app.running.as_ref().expect("running").broker.connections()
}

/// Waits until `app` knows that another node wants `t`.
async fn until_sends(app: &TestApp, t: &str) {
    let t = topic(t);
    within("the other nodes' interest to arrive", async {
        while cluster(app).in_doubt() || !cluster(app).sends(&t) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

/// Waits until `app` has no MQTT connection open (it saw the client's close).
async fn until_no_connections(app: &TestApp) {
    within("the node to see the connection end", async {
        while connections(app) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Connects `client` to `node` with a persistent session (300 s) and a Will on "will/t"
/// delayed `delay` seconds, then breaks the connection (no DISCONNECT): the Will waits out
/// its delay on `node`.
async fn leave_with_a_delayed_will(node: &TestApp, client: &str, delay: u32) {
    leave_with_a_will(node, client, delay, 300).await;
}

/// As [`leave_with_a_delayed_will`], the session expiring after `expiry` seconds.
async fn leave_with_a_will(node: &TestApp, client: &str, delay: u32, expiry: u32) {
    let will = build::Will {
        topic: "will/t",
        payload: b"bye",
        qos: 1,
        retain: false,
        props: &prop_u32(WILL_DELAY, delay),
    };
    let first = build::connect_with_will(
        client,
        true,
        60,
        Some(&prop_u32(SESSION_EXPIRY, expiry)),
        will,
    );
    let (raw, _) = Raw::connect(node, &first).await;
    drop(raw);
    until_no_connections(node).await;
}

/// A client whose connection on A ended badly, its Will waiting out a 2 s delay on A,
/// connects again within the delay through B and resumes its session there (session
/// present 1). MQTT 5 3.1.3.2.2 / [MQTT-3.1.3-9]: the Will is not sent if a new connection
/// resumes the session before the delay passes; on one node `PendingWills::resumed` cancels
/// it at the attach. Before 2026-12-06, across nodes, A's Will task asked only its own
/// registry (`resumed_since`), from which the hand-over removed the session: the Will went
/// out while the client was connected on B. The hand-over now cancels it.
#[tokio::test]
async fn a_delayed_will_pending_on_one_node_is_cancelled_by_a_resume_on_another() {
    let nats = Nats::start().await;
    let [a, b] = two(&nats, |_| {}).await;
    let mut w = will_watcher(&b).await;
    until_sends(&a, "will/t").await;
    // Ends badly (no DISCONNECT): the Will waits out its delay on A.
    leave_with_a_delayed_will(&a, "wr", 2).await;
    let persistent = prop_u32(SESSION_EXPIRY, 300);
    let (_back, ack) = Raw::connect(&b, &build::connect("wr", false, 60, Some(&persistent))).await;
    assert_eq!(ack.body[1], 0, "CONNACK success");
    assert_eq!(ack.body[0], 1, "session present: resumed on B");
    // Past the 2 s delay (plus margin), the client still connected on B.
    let waited = tokio::time::timeout(Duration::from_secs(4), w.next_publish()).await;
    assert!(
        waited.is_err(),
        "the Will of a session resumed on another node was published: {waited:?}"
    );
}

/// As above with a clean start on B: the Will waiting on A is not published either, as on
/// one node ([MQTT-3.1.2-8], decision 006 "Not changed";
/// `tests/mqtt_session.rs` `will_delay_drops_the_will_when_the_client_id_connects_with_a_clean_start_in_time`):
/// B's CONNECT asks A to let the session go, and that cancels the Will.
#[tokio::test]
async fn a_delayed_will_pending_on_one_node_is_dropped_by_a_clean_start_on_another() {
    let nats = Nats::start().await;
    let [a, b] = two(&nats, |_| {}).await;
    let mut w = will_watcher(&b).await;
    until_sends(&a, "will/t").await;
    leave_with_a_delayed_will(&a, "wn", 2).await;
    let persistent = prop_u32(SESSION_EXPIRY, 300);
    let (_back, ack) = Raw::connect(&b, &build::connect("wn", true, 60, Some(&persistent))).await;
    assert_eq!(ack.body[..2], [0, 0], "CONNACK success, no session present");
    let waited = tokio::time::timeout(Duration::from_secs(4), w.next_publish()).await;
    assert!(
        waited.is_err(),
        "the Will was published after a clean start on another node: {waited:?}"
    );
}

/// As the resume two above, and the session resumed on B then ends (the new connection asked for no
/// expiry and leaves) before A's delay is over: the cross-node version of the single node's
/// `a_delayed_will_cancelled_by_a_resume_stays_cancelled_when_the_resumed_session_ends`.
#[tokio::test]
async fn a_delayed_will_cancelled_by_a_resume_on_another_node_stays_cancelled_when_that_session_ends()
 {
    let nats = Nats::start().await;
    let [a, b] = two(&nats, |_| {}).await;
    let mut w = will_watcher(&b).await;
    until_sends(&a, "will/t").await;
    leave_with_a_delayed_will(&a, "we", 2).await;
    // Resumes on B with no session expiry: the session ends with this connection.
    let (mut back, ack) = Raw::connect(&b, &build::connect("we", false, 60, Some(&[]))).await;
    assert_eq!(ack.body[0], 1, "session present: resumed on B");
    back.send(&build::disconnect_v5(0x00)).await;
    assert_eq!(back.until_closed().await, vec![]);
    let waited = tokio::time::timeout(Duration::from_secs(4), w.next_publish()).await;
    assert!(
        waited.is_err(),
        "the Will cancelled by a resume on another node was published: {waited:?}"
    );
}

/// DeleteConnection with cleanSession=true and preventWillMessage=true, sent to node B for
/// a client connected to A: A's connection is ousted (0x98) but is still finishing (a
/// retained publish it read waits for the database) when the client reconnects with clean
/// start 0, through `back_through`. The operator ended the session; on one node that session
/// is not resumed by a connection that comes before the ousted one has left
/// (`Session::discarded`, checked in `attach`; `tests/mqtt_takeover_races.rs`). Before
/// 2026-12-06, with `--cluster-url`, the discard was only in A's memory: the session row
/// stayed in Postgres until the ousted connection detached, `durable_session` took it, and
/// `attach` counted it as a session to restore: session present 1, with the subscriptions
/// the operator ended. The oust now deletes the row, and a node does not restore a row for a
/// session it holds ended.
async fn operator_ended_session_then_reconnect(through_b: bool) -> u8 {
    let nats = Nats::start().await;
    let [a, b] = two(&nats, |c| c.store_timeout = Duration::from_secs(15)).await;
    assert_eq!(
        a.publish("/topics/lk?retain=true", "v1").await.status(),
        200
    );
    let persistent = prop_u32(SESSION_EXPIRY, 300);
    let (mut old, _) = Raw::connect(&a, &build::connect("ou", true, 60, Some(&persistent))).await;
    old.send(&build::subscribe(1, "ou/t", 1, Some(&[]))).await;
    old.expect(9).await;
    // An operator's transaction holds the row of topic lk.
    let mut locker = common::hold_retained_row(&a.db.url, "lk").await;
    // The client's retained publish on A waits for the row (and so does its connection's end).
    old.send(&build::publish("lk", 1, true, false, 7, Some(&[]), b"v2"))
        .await;
    // Also past the client id's connect-rate turn on A.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The operator asks B, which finds the client on A.
    let res = b
        .http
        .delete(b.url("/connections/ou?cleanSession=true&preventWillMessage=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(old.expect(14).await.disconnect_reason(), 0x98);
    // The client comes back, asking to resume.
    let node = if through_b { &b } else { &a };
    let (_new, ack) = Raw::connect(node, &build::connect("ou", false, 60, Some(&persistent))).await;
    locker.execute("ROLLBACK").await.unwrap();
    ack.body[0]
}

#[tokio::test]
async fn a_session_an_operator_ended_is_not_resumed_by_a_reconnect_through_another_node() {
    let present = operator_ended_session_then_reconnect(true).await;
    assert_eq!(
        present, 0,
        "the session DeleteConnection cleanSession=true ended was resumed on the other node"
    );
}

#[tokio::test]
async fn a_session_an_operator_ended_is_not_resumed_by_a_reconnect_to_its_own_node_of_many() {
    let present = operator_ended_session_then_reconnect(false).await;
    assert_eq!(
        present, 0,
        "the session DeleteConnection cleanSession=true ended was resumed from Postgres"
    );
}

/// A QoS 2 PUBLISH taken (stored and routed) by A, whose PUBREC the client never read before
/// its connection broke: the client resumes its session through B and, as MQTT requires,
/// sends the PUBLISH again with DUP under the same packet id. The packet ids awaiting
/// PUBREL are session state (MQTT 5 4.1; on one node, and across a restart, decision 024,
/// "its own QoS 2 resend recognised and not delivered twice"). Until 2026-12-06 they were
/// neither in the session row nor handed over: B took the resend for a new message and
/// every subscriber got it twice. A hand-over now writes them into the row for B to take up.
/// Checked by the next message: were the resend delivered, it would come before it.
#[tokio::test]
async fn a_qos2_publish_resent_after_resuming_on_another_node_is_delivered_once() {
    let nats = Nats::start().await;
    let [a, b] = two(&nats, |_| {}).await;
    let (mut sub, _) = V5::connect(v5_options(&b, "sub")).await;
    sub.subscribe("q2/#", Qos5::ExactlyOnce).await;
    until_sends(&a, "q2/t").await;
    let persistent = prop_u32(SESSION_EXPIRY, 300);
    let (mut p, _) = Raw::connect(&a, &build::connect("pq", true, 60, Some(&persistent))).await;
    let once = build::publish("q2/t", 2, false, false, 7, Some(&[]), b"once");
    p.send(&once).await;
    assert_eq!(&sub.next_publish().await.payload[..], b"once");
    // The connection breaks before the client read A's PUBREC.
    drop(p);
    until_no_connections(&a).await;
    let (mut p, ack) = Raw::connect(&b, &build::connect("pq", false, 60, Some(&persistent))).await;
    assert_eq!(ack.body[0], 1, "session present: resumed on B");
    let resend = build::publish("q2/t", 2, false, true, 7, Some(&[]), b"once");
    p.send(&resend).await;
    let rec = p.expect(5).await;
    assert!(rec.ack_reason() < 0x80, "PUBREC {rec:?}");
    p.send(&build::ack(0x62, 7)).await;
    p.expect(7).await;
    assert_eq!(
        a.publish("/topics/q2%2Fafter?qos=1", "after")
            .await
            .status(),
        200
    );
    let started = Instant::now();
    let next = sub.next_publish().await;
    assert_eq!(
        &next.payload[..],
        b"after",
        "the QoS 2 message was delivered a second time ({:?} after the resend)",
        started.elapsed()
    );
}

/// A client's connection on B ends badly; its Will waits out a 3 s delay on B (the session
/// expires in 300 s). B is then stopped cleanly (SIGTERM) within the delay, and A takes up
/// its sessions. The client went away before the stop, so its Will is due when the delay
/// passes (MQTT 5 3.1.3.2.2, 4.1: the Will and its delay are session state). On one node a
/// clean stop saves that Will with its session and the next start publishes it when due
/// (decision 024: "a Will that marks a device offline is then not lost to a restart that
/// happens inside its delay"); a node of many "saves nothing here: its sessions are in
/// Postgres all along". Until 2026-12-06 the end of the connection set the row's Will to
/// NULL (`Sessions::detached`), the stop cancelled B's wait, and A adopted a session without
/// a Will: it was never published. The stop now writes it back with when it is due.
#[tokio::test]
async fn a_will_waiting_out_its_delay_on_a_node_stopped_cleanly_is_published_by_the_survivor() {
    let nats = Nats::start().await;
    // `a` owns the test schema; `b` only shares it, so `b` is the one stopped.
    let [a, b] = two(&nats, |_| {}).await;
    let mut w = will_watcher(&a).await;
    until_sends(&b, "will/t").await;
    leave_with_a_delayed_will(&b, "ws", 3).await;
    let ended = Instant::now();
    b.stop().await;
    // The delay (3 s from the end of the connection) plus A's take-up (within 2 s) and margin.
    let got = tokio::time::timeout(Duration::from_secs(8), w.next_publish()).await;
    // A took the session up (it is A's in Postgres now), without the Will.
    let mut db = sqlx::PgConnection::connect(&a.db.url).await.unwrap();
    let (node, will): (String, Option<Vec<u8>>) =
        sqlx::query_as("SELECT node, will FROM cluster_sessions WHERE client_id = 'ws'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    eprintln!(
        "session of ws held by {} (A is {}), its row's Will: {will:?}",
        node,
        cluster(&a).node()
    );
    assert!(
        got.as_ref().is_ok_and(|p| &p.payload[..] == b"bye"),
        "no Will {:?} after the client left, its node stopped within the Will's delay: {got:?}",
        ended.elapsed()
    );
}

/// Sets up a QoS 2 delivery to "s2", persistent on A, left half done: the client received
/// the PUBLISH and answered PUBREC, A sent PUBREL, and the connection broke before the
/// client's PUBCOMP. Returns the packet id and the client's CONNECT to come back with.
async fn qos2_delivery_awaiting_pubcomp(a: &TestApp, b: &TestApp) -> (u16, Vec<u8>) {
    let persistent = prop_u32(SESSION_EXPIRY, 300);
    let connect = build::connect("s2", true, 60, Some(&persistent));
    let (mut s, _) = Raw::connect(a, &connect).await;
    s.send(&build::subscribe(1, "o2/t", 2, Some(&[]))).await;
    s.expect(9).await;
    until_sends(b, "o2/t").await;
    let (mut publisher, _) = V5::connect(v5_options(b, "pub2")).await;
    publisher
        .publish("o2/t", Qos5::ExactlyOnce, false, b"exactly")
        .await;
    let p = s.expect(3).await.publish(true);
    assert_eq!((p.qos, p.payload.as_slice()), (2, &b"exactly"[..]));
    s.send(&build::ack(0x50, p.pkid)).await;
    let rel = s.expect(6).await;
    assert_eq!(u16::from_be_bytes([rel.body[0], rel.body[1]]), p.pkid);
    drop(s);
    until_no_connections(a).await;
    (p.pkid, build::connect("s2", false, 60, Some(&persistent)))
}

/// [MQTT-4.4.0-1]: a client that reconnects with clean start 0 gets the PUBREL packets it was
/// owed again, under their packet ids (on one node without `--cluster-url` the released
/// message stays in flight, `tests/mqtt_session.rs`
/// `outbound_qos2_pubrel_is_resent_after_reconnect`; across a restart decision 024 saves it
/// "as its PUBREL"). With `--cluster-url` it was lost as soon as the session went offline
/// (before 2026-12-06): `SessionState::start_spooling`, moving the queue to Postgres, dropped
/// the in-flight messages already released. They now stay in memory, so a return to the same
/// node gets its PUBREL, and a hand-over writes them into the row for the other node. A client
/// that delivers on PUBREL (the spec's Method A) never delivers the message, and its packet
/// id stays taken on the client, so the next QoS 2 message sent under that id is taken for
/// a duplicate.
async fn pubrel_after_resume(through_b: bool) -> (u16, Option<(u8, u16)>) {
    let nats = Nats::start().await;
    let [a, b] = two(&nats, |_| {}).await;
    let (pkid, back) = qos2_delivery_awaiting_pubcomp(&a, &b).await;
    let node = if through_b {
        &b
    } else {
        // The client id's connect-rate turn on A.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        &a
    };
    let (mut s, ack) = Raw::connect(node, &back).await;
    assert_eq!(ack.body[0], 1, "session present");
    let next = tokio::time::timeout(Duration::from_secs(3), s.recv()).await;
    let got = next
        .ok()
        .flatten()
        .map(|p| (p.kind(), u16::from_be_bytes([p.body[0], p.body[1]])));
    (pkid, got)
}

#[tokio::test]
async fn a_pubrel_owed_to_a_client_is_sent_again_when_it_resumes_on_another_node() {
    let (pkid, got) = pubrel_after_resume(true).await;
    assert_eq!(
        got,
        Some((6, pkid)),
        "the PUBREL owed for packet id {pkid} was not sent again after the resume on B"
    );
}

#[tokio::test]
async fn a_pubrel_owed_to_a_client_is_sent_again_when_it_resumes_on_its_own_node_of_many() {
    let (pkid, got) = pubrel_after_resume(false).await;
    assert_eq!(
        got,
        Some((6, pkid)),
        "the PUBREL owed for packet id {pkid} was not sent again after the resume on A"
    );
}

/// The packet id of a PUBREL (or any acknowledgement).
fn ack_id(p: &common::mqtt::raw::RawPacket) -> u16 {
    u16::from_be_bytes([p.body[0], p.body[1]])
}

/// Leaves, on `node`, the persistent session "sx" with both kinds of QoS 2 exchange open
/// when its connection breaks: a QoS 2 PUBLISH to "xq/t" it sent under packet id 7, whose
/// PUBREC it never read (a subscriber to "xq/#" on `other` received it); and a QoS 2
/// message on "xo/t" published on `other` and delivered to it, whose PUBREL it read but
/// never answered with PUBCOMP. Returns that subscriber, the delivered message's packet id,
/// and the CONNECT to come back with.
async fn open_exchanges(node: &TestApp, other: &TestApp) -> (V5, u16, Vec<u8>) {
    let (mut sub, _) = V5::connect(v5_options(other, "xsub")).await;
    sub.subscribe("xq/#", Qos5::ExactlyOnce).await;
    until_sends(node, "xq/t").await;
    let persistent = prop_u32(SESSION_EXPIRY, 300);
    let (mut s, _) = Raw::connect(node, &build::connect("sx", true, 60, Some(&persistent))).await;
    s.send(&build::subscribe(1, "xo/t", 2, Some(&[]))).await;
    s.expect(9).await;
    until_sends(other, "xo/t").await;
    let (mut publisher, _) = V5::connect(v5_options(other, "xpub")).await;
    publisher
        .publish("xo/t", Qos5::ExactlyOnce, false, b"exactly")
        .await;
    let p = s.expect(3).await.publish(true);
    assert_eq!((p.qos, p.payload.as_slice()), (2, &b"exactly"[..]));
    s.send(&build::ack(0x50, p.pkid)).await;
    assert_eq!(ack_id(&s.expect(6).await), p.pkid, "PUBREL");
    s.send(&build::publish(
        "xq/t",
        2,
        false,
        false,
        7,
        Some(&[]),
        b"once",
    ))
    .await;
    assert_eq!(&sub.next_publish().await.payload[..], b"once");
    drop(s);
    until_no_connections(node).await;
    (
        sub,
        p.pkid,
        build::connect("sx", false, 60, Some(&persistent)),
    )
}

/// Comes back as "sx" through `node` and checks both exchanges `open_exchanges` left: the
/// PUBREL owed comes first, under its packet id [MQTT-4.4.0-1], and the resent PUBLISH is
/// recognised [MQTT-4.3.3-10]: the subscriber's next message is the marker published after
/// it, not the resend. Returns the subscriber's next payload.
async fn resume_open_exchanges(node: &TestApp, sub: &mut V5, pkid: u16, back: &[u8]) -> Vec<u8> {
    let (mut s, ack) = Raw::connect(node, back).await;
    assert_eq!(ack.body[0], 1, "session present");
    let next = within("the PUBREL owed", s.recv()).await;
    let got = next.map(|p| (p.kind(), ack_id(&p)));
    assert_eq!(got, Some((6, pkid)), "the PUBREL owed for packet id {pkid}");
    s.send(&build::ack(0x70, pkid)).await;
    s.send(&build::publish(
        "xq/t",
        2,
        false,
        true,
        7,
        Some(&[]),
        b"once",
    ))
    .await;
    assert!(s.expect(5).await.ack_reason() < 0x80, "PUBREC");
    s.send(&build::ack(0x62, 7)).await;
    s.expect(7).await;
    let marker = node.publish("/topics/xq%2Fafter?qos=1", "after").await;
    assert_eq!(marker.status(), 200);
    sub.next_publish().await.payload.to_vec()
}

/// The node holding a session with open QoS 2 exchanges is stopped cleanly (SIGTERM) while
/// its client is away; the client comes back through the survivor. On one node a stop saves
/// these exchanges with the session (decision 024); a node of many writes them into the
/// session's row, and the survivor takes them up with the session (before 2026-12-06 they
/// were lost: the PUBREL never came and the resend was delivered a second time).
#[tokio::test]
async fn a_sessions_open_qos2_exchanges_survive_a_clean_stop_of_its_node() {
    let nats = Nats::start().await;
    // `a` owns the test schema; `b` only shares it, so `b` is the one stopped.
    let [a, b] = two(&nats, |_| {}).await;
    let (mut sub, pkid, back) = open_exchanges(&b, &a).await;
    b.stop().await;
    let next = resume_open_exchanges(&a, &mut sub, pkid, &back).await;
    assert_eq!(
        next, b"after",
        "the resent QoS 2 message was delivered a second time"
    );
}

/// A resume through A fails after B, which held the session, let it go (the database refuses
/// the take: a trigger refuses this client a Will): A keeps the session (decision 014, "A
/// resume that fails after the hand-over"), and the QoS 2 exchanges B wrote into the row as it
/// let go stay there for the next take. The client's next resume, through A, gets the PUBREL it
/// is owed and its resend recognised.
#[tokio::test]
async fn open_qos2_exchanges_survive_a_resume_that_failed_after_the_hand_over() {
    let nats = Nats::start().await;
    let [a, b] = two(&nats, |_| {}).await;
    let (mut sub, pkid, back) = open_exchanges(&b, &a).await;
    let mut db = sqlx::PgConnection::connect(&a.db.url).await.unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_sx_will() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.client_id = 'sx' AND NEW.will IS NOT NULL THEN \
           RAISE EXCEPTION 'no Will for sx'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_sx_will BEFORE INSERT OR UPDATE ON cluster_sessions \
           FOR EACH ROW EXECUTE FUNCTION refuse_sx_will();",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let will = build::Will {
        topic: "will/sx",
        payload: b"bye",
        qos: 0,
        retain: false,
        props: &[],
    };
    let persistent = prop_u32(SESSION_EXPIRY, 300);
    let connect = build::connect_with_will("sx", false, 60, Some(&persistent), will);
    let (mut refused, ack) = Raw::connect(&a, &connect).await;
    assert_eq!(ack.body[1], 0x88, "MQTT 5 CONNACK: Server unavailable");
    assert!(refused.until_closed().await.is_empty());
    within("A to hold the session's row", async {
        loop {
            let node: String =
                sqlx::query_scalar("SELECT node FROM cluster_sessions WHERE client_id = 'sx'")
                    .fetch_one(&mut db)
                    .await
                    .unwrap();
            if node == cluster(&a).node() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    sqlx::raw_sql("DROP TRIGGER refuse_sx_will ON cluster_sessions")
        .execute(&mut db)
        .await
        .unwrap();
    let next = resume_open_exchanges(&a, &mut sub, pkid, &back).await;
    assert_eq!(
        next, b"after",
        "the resent QoS 2 message was delivered a second time"
    );
}

/// Exchanges written into a row hold only as of the session's last end. A node of an older
/// release does not know the column: when it resumes the session and its connection ends,
/// it writes only `detached_at`, and the exchanges left in the row are those of a session
/// that has moved on since. Taken up then, a stale id awaiting PUBREL would make the next
/// QoS 2 message sent under it a "duplicate", acknowledged and never delivered. Here the
/// older release's end is that write, made by hand; a resume then takes up nothing: no
/// PUBREL, and a QoS 2 PUBLISH under packet id 7 is delivered.
#[tokio::test]
async fn exchanges_left_in_a_row_an_older_release_resumed_since_are_not_taken_up() {
    let nats = Nats::start().await;
    let [a, b] = two(&nats, |_| {}).await;
    let (mut sub, _, back) = open_exchanges(&b, &a).await;
    b.stop().await;
    let mut db = sqlx::PgConnection::connect(&a.db.url).await.unwrap();
    let (exchanges,): (Option<Vec<u8>>,) =
        sqlx::query_as("SELECT exchanges FROM cluster_sessions WHERE client_id = 'sx'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert!(exchanges.is_some(), "the stop wrote the exchanges");
    db.execute(
        "UPDATE cluster_sessions SET detached_at = now() + interval '1 second' \
         WHERE client_id = 'sx'",
    )
    .await
    .unwrap();
    let (mut s, ack) = Raw::connect(&a, &back).await;
    assert_eq!(ack.body[0], 1, "session present");
    s.send(&build::publish(
        "xq/t",
        2,
        false,
        false,
        7,
        Some(&[]),
        b"new",
    ))
    .await;
    let first = s.expect(5).await;
    assert_eq!(ack_id(&first), 7, "the PUBREC (no PUBREL came before it)");
    s.send(&build::ack(0x62, 7)).await;
    s.expect(7).await;
    assert_eq!(
        &sub.next_publish().await.payload[..],
        b"new",
        "a new QoS 2 message was taken for a resend of a stale exchange"
    );
}

/// A Will a clean stop wrote back is the session's, and a resume before it is due cancels
/// it [MQTT-3.1.3-9], through whichever node: the client left B with a Will delayed 3 s, B
/// stopped, and the client resumed on A within the delay. No Will, then or later.
#[tokio::test]
async fn a_will_written_back_by_a_clean_stop_is_cancelled_by_a_resume_before_it_is_due() {
    let nats = Nats::start().await;
    let [a, b] = two(&nats, |_| {}).await;
    let mut w = will_watcher(&a).await;
    until_sends(&b, "will/t").await;
    leave_with_a_delayed_will(&b, "wc", 3).await;
    b.stop().await;
    let mut db = sqlx::PgConnection::connect(&a.db.url).await.unwrap();
    let (due,): (Option<f64>,) = sqlx::query_as(
        "SELECT extract(epoch FROM will_due_at - now())::float8 FROM cluster_sessions \
         WHERE client_id = 'wc'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(
        due.is_some_and(|d| d > 0.0 && d <= 3.0),
        "the stop wrote back the Will, due within its delay: {due:?}"
    );
    let persistent = prop_u32(SESSION_EXPIRY, 300);
    let (_back, ack) = Raw::connect(&a, &build::connect("wc", false, 60, Some(&persistent))).await;
    assert_eq!(ack.body[0], 1, "session present: resumed on A");
    let waited = tokio::time::timeout(Duration::from_secs(5), w.next_publish()).await;
    assert!(
        waited.is_err(),
        "the Will of a session resumed before it was due was published: {waited:?}"
    );
}

/// A take-over across nodes while the old connection's QoS 2 publish still waits for the
/// database. On A, client "pl" sends a retained QoS 2 PUBLISH (packet id 7) whose row an
/// operator's transaction holds; it resumes its session through B before the store answers,
/// and A's hand-over finds the connection still finishing that publish. The store then gives
/// up (the database timeout, 1.5 s here): nothing was stored and no PUBREC sent, so the client
/// resends on B, and the resend must be stored [MQTT-4.3.3]. An id awaiting PUBREL is taken
/// from the moment its PUBLISH is read; handed to B before the failure made A forget it (the
/// first version of the hand-over's exchanges, 2026-12-06, a review's finding), B would have
/// answered the resend as a duplicate, PUBREC and all, and stored it nowhere. A connection
/// still attached hands on no such ids now.
#[tokio::test]
async fn a_qos2_publish_still_being_stored_at_a_hand_over_is_stored_when_resent_on_the_new_node() {
    let nats = Nats::start().await;
    let [a, b] = two(&nats, |c| c.store_timeout = Duration::from_millis(1500)).await;
    assert_eq!(
        a.publish("/topics/lk?retain=true", "v1").await.status(),
        200
    );
    let persistent = prop_u32(SESSION_EXPIRY, 300);
    let (mut old, _) = Raw::connect(&a, &build::connect("pl", true, 60, Some(&persistent))).await;
    let mut locker = common::hold_retained_row(&a.db.url, "lk").await;
    old.send(&build::publish("lk", 2, true, false, 7, Some(&[]), b"v2"))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut s, ack) = Raw::connect(&b, &build::connect("pl", false, 60, Some(&persistent))).await;
    assert_eq!(ack.body[0], 1, "session present: resumed on B");
    // A's store gives up, and its connection ends; then the row is free again.
    until_no_connections(&a).await;
    locker.execute("ROLLBACK").await.unwrap();
    s.send(&build::publish("lk", 2, true, true, 7, Some(&[]), b"v2"))
        .await;
    assert_eq!(ack_id(&s.expect(5).await), 7, "PUBREC");
    s.send(&build::ack(0x62, 7)).await;
    s.expect(7).await;
    assert_eq!(
        a.stored_payload("lk").await.as_deref(),
        Some(&b"v2"[..]),
        "the resend was acknowledged with PUBREC, so it is stored"
    );
}

/// The session ends before its Will's delay: the Will is due then [MQTT-3.1.3-9], and so it
/// is when that end passed while the session moved. The client leaves B with a session
/// expiring after 1 s and a Will delayed 10 s; B stops at once, writing the Will back due at
/// the session's end; A takes the session up after that end, and publishes the Will at once
/// (before 2026-12-06 it could lose the race with the session's expiry, which A also ran at
/// once, and drop the Will as no longer its to publish).
#[tokio::test]
async fn a_will_written_back_for_a_session_that_expired_meanwhile_is_published_by_the_survivor() {
    let nats = Nats::start().await;
    let [a, b] = two(&nats, |_| {}).await;
    let mut w = will_watcher(&a).await;
    until_sends(&b, "will/t").await;
    leave_with_a_will(&b, "wx", 10, 1).await;
    b.stop().await;
    let got = tokio::time::timeout(Duration::from_secs(6), w.next_publish()).await;
    assert!(
        got.as_ref().is_ok_and(|p| &p.payload[..] == b"bye"),
        "no Will after its session expired while it moved to the survivor: {got:?}"
    );
}

/// DeleteConnection with cleanSession=true on a node of many: the session's row is gone from
/// Postgres before its connection is told (DISCONNECT 0x98), so a client that reconnects at
/// once, through any node, finds nothing to resume. Before 2026-12-06 the row's deletion was
/// spawned and the DISCONNECT sent at once, so a reconnect through another node within the
/// deletion's milliseconds could resume the session the operator ended. Here another
/// transaction holds the row for a second (a lock a delete waits for), which made that
/// window a second wide; the client reads its DISCONNECT only once the row is gone.
#[tokio::test]
async fn a_session_an_operator_ended_is_gone_from_postgres_before_its_client_is_told() {
    let nats = Nats::start().await;
    let [a, b] = two(&nats, |_| {}).await;
    let persistent = prop_u32(SESSION_EXPIRY, 300);
    let (mut old, _) = Raw::connect(&a, &build::connect("og", true, 60, Some(&persistent))).await;
    let mut locker = sqlx::PgConnection::connect(&a.db.url).await.unwrap();
    locker.execute("BEGIN").await.unwrap();
    locker
        .execute("SELECT 1 FROM cluster_sessions WHERE client_id = 'og' FOR KEY SHARE")
        .await
        .unwrap();
    let asked = {
        let (http, url) = (b.http.clone(), b.url("/connections/og?cleanSession=true"));
        tokio::spawn(async move { http.delete(url).send().await.unwrap().status() })
    };
    let released = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        locker.execute("ROLLBACK").await.unwrap();
    });
    assert_eq!(old.expect(14).await.disconnect_reason(), 0x98);
    let mut db = sqlx::PgConnection::connect(&a.db.url).await.unwrap();
    let (rows,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM cluster_sessions WHERE client_id = 'og'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(
        rows, 0,
        "the client was told of the disconnect while the session's row was still there"
    );
    released.await.unwrap();
    assert_eq!(asked.await.unwrap(), 200);
}
