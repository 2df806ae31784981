//! What an old connection of a client id does late, after a new one has taken the id (or its
//! session) over: its Will, its end, its operator's disconnect, the packets it had read. Each
//! test held the bug it names before 2026-12-06 (found in a review of the take-over; decision
//! 006): state kept on the session, or keyed by client id, that the old connection's late
//! work read or changed as if it were still the session's.

mod common;

use std::time::Duration;

use common::mqtt::raw::build::prop_u32;
use common::mqtt::raw::{Raw, build};
use common::mqtt::will_watcher as watcher;
use common::{Backend, TestApp, fresh_db, spawn_app, spawn_app_with, test_config};
use sqlx::{Connection, Executor};

async fn app() -> TestApp {
    spawn_app(Backend::Postgres).await
}

const SESSION_EXPIRY: u8 = 0x11;
const WILL_DELAY: u8 = 0x18;

/// [MQTT-3.1.3-9]: a new connection to the session before the Will Delay passed cancels the
/// Will for good; the session ending later (the new connection left with expiry 0) must not
/// bring the old connection's Will back.
#[tokio::test]
async fn a_delayed_will_cancelled_by_a_resume_stays_cancelled_when_the_resumed_session_ends() {
    let app = app().await;
    let mut w = watcher(&app).await;
    let will = build::Will {
        topic: "will/t",
        payload: b"bye",
        qos: 1,
        retain: false,
        props: &prop_u32(WILL_DELAY, 2),
    };
    let first =
        build::connect_with_will("wr", false, 60, Some(&prop_u32(SESSION_EXPIRY, 300)), will);
    let (raw, _) = Raw::connect(&app, &first).await;
    drop(raw);
    // Back within the delay, resuming the session (session present 1), with no session expiry:
    // the session ends when this connection does.
    let (mut back, ack) = Raw::connect(&app, &build::connect("wr", false, 60, Some(&[]))).await;
    assert_eq!(ack.body[0], 1, "session present");
    back.send(&build::disconnect_v5(0x00)).await;
    assert_eq!(back.until_closed().await, vec![]);
    // Past the 2 s delay (plus margin): the Will must not come.
    let waited = tokio::time::timeout(Duration::from_secs(4), w.next_publish()).await;
    assert!(
        waited.is_err(),
        "the cancelled Will was published: {waited:?}"
    );
}

/// A reconnect that resumes a persistent session and whose client vanishes (TCP reset)
/// before the CONNACK could be written must leave the session as it was: it existed before
/// that connection and holds a queued QoS 1 message, which the next connection must get.
#[tokio::test]
async fn a_resume_whose_connack_cannot_be_written_leaves_the_session_and_its_queue() {
    let app = app().await;
    let persistent = build::connect("ab", false, 60, Some(&prop_u32(SESSION_EXPIRY, 300)));
    let (mut raw, _) = Raw::connect(&app, &persistent).await;
    raw.send(&build::subscribe(1, "ab", 1, Some(&[]))).await;
    raw.expect(9).await;
    raw.send(&build::disconnect_v5(0)).await;
    assert_eq!(raw.until_closed().await, vec![]);
    let res = app.publish("/topics/ab?qos=1", "queued").await;
    assert_eq!(res.status(), 200);
    // Takes the client id's turn, so that the next CONNECT waits about a second for its own.
    let resume = build::connect("ab", false, 60, Some(&prop_u32(SESSION_EXPIRY, 300)));
    let (mut again, ack) = Raw::connect(&app, &resume).await;
    assert_eq!(ack.body[0], 1, "session present");
    // Delivered, left unacknowledged: the session must send it again.
    assert_eq!(again.expect(3).await.publish(true).payload, b"queued");
    again.send(&build::disconnect_v5(0)).await;
    assert_eq!(again.until_closed().await, vec![]);
    // A CONNECT that resumes the session, then the client is gone (reset) while it waits.
    let mut vanishing = Raw::open(&app).await;
    vanishing.send(&resume).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    vanishing.stream().set_zero_linger().unwrap();
    drop(vanishing);
    // Its turn came and went (it is let in a second after the one before).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (mut back, ack) = Raw::connect(&app, &resume).await;
    assert_eq!(
        ack.body[0], 1,
        "the session was lost with the connection that failed at its CONNACK"
    );
    let resent = back.expect(3).await.publish(true);
    assert_eq!(
        (resent.payload.as_slice(), resent.dup),
        (&b"queued"[..], true)
    );
}

/// DeleteConnection with cleanSession=true and preventWillMessage=true answers 200 at once;
/// the ousted connection is still finishing (here a retained publish it sent waits for the
/// database) when its client connects again. The operator's flags live on the session, and
/// the new connection's attach clears them: the old connection, finishing, publishes its
/// Will, and the new one resumes the session the operator ended.
#[tokio::test]
async fn a_reconnect_while_an_ousted_connection_finishes_does_not_undo_clean_session_and_prevent_will()
 {
    let db = fresh_db(Backend::Postgres).await;
    let url = db.url.clone();
    let mut config = test_config(&url);
    config.store_timeout = Duration::from_secs(15);
    let app = spawn_app_with(db, config).await;
    let mut w = watcher(&app).await;
    assert_eq!(
        app.publish("/topics/lk?retain=true", "v1").await.status(),
        200
    );
    let will = build::Will {
        topic: "will/t",
        payload: b"bye",
        qos: 1,
        retain: false,
        props: &[],
    };
    let persistent = prop_u32(SESSION_EXPIRY, 300);
    let first = build::connect_with_will("ou", true, 60, Some(&persistent), will);
    let (mut old, _) = Raw::connect(&app, &first).await;
    old.send(&build::subscribe(1, "ou/t", 1, Some(&[]))).await;
    old.expect(9).await;
    // An operator's session holds the row of topic lk.
    let mut locker = common::hold_retained_row(&url, "lk").await;
    // The client's retained publish waits for the row.
    old.send(&build::publish("lk", 1, true, false, 7, Some(&[]), b"v2"))
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let res = app
        .http
        .delete(app.url("/connections/ou?cleanSession=true&preventWillMessage=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let goodbye = old.expect(14).await;
    assert_eq!(goodbye.disconnect_reason(), 0x98);
    // The client comes back.
    let resume = build::connect("ou", false, 60, Some(&persistent));
    let (_new, ack) = Raw::connect(&app, &resume).await;
    let present = ack.body[0];
    locker.execute("ROLLBACK").await.unwrap();
    let will_came = tokio::time::timeout(Duration::from_secs(3), w.next_publish()).await;
    assert!(
        present == 0 && will_came.is_err(),
        "session present {present} after cleanSession=true; Will after preventWillMessage=true: {will_came:?}"
    );
}

/// A connection taken over by a clean start goes on applying what it had already read: a
/// SUBSCRIBE it applies after the take-over enters the subscription tree under the client id,
/// which the new, clean session now holds. The new session receives messages for a filter
/// it never subscribed to (and cannot see in its own state, so its end never removes it).
#[tokio::test]
async fn a_subscribe_the_old_connection_applies_after_a_clean_take_over_does_not_reach_the_new_session()
 {
    let db = fresh_db(Backend::Postgres).await;
    let url = db.url.clone();
    let mut config = test_config(&url);
    config.store_timeout = Duration::from_secs(15);
    let app = spawn_app_with(db, config).await;
    let (mut old, _) = Raw::connect(&app, &build::connect("leak", true, 60, Some(&[]))).await;
    // Reads of the retained messages wait for an operator's lock.
    let mut locker = sqlx::PgConnection::connect(&url).await.unwrap();
    locker.execute("BEGIN").await.unwrap();
    locker
        .execute("LOCK TABLE retained_messages IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // Two SUBSCRIBEs in one write: the first waits for its first retained page.
    let mut two = build::subscribe(1, "slow/#", 1, Some(&[]));
    two.extend(build::subscribe(2, "leaked", 1, Some(&[])));
    old.send(&two).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The client id starts clean on a new connection (after its turn).
    let (mut new, ack) = Raw::connect(&app, &build::connect("leak", true, 60, Some(&[]))).await;
    assert_eq!(ack.body[0], 0);
    locker.execute("ROLLBACK").await.unwrap();
    drop(locker);
    let _ = old.until_closed().await;
    assert_eq!(
        app.publish("/topics/leaked?qos=1", "not for you")
            .await
            .status(),
        200
    );
    let got = tokio::time::timeout(Duration::from_secs(2), new.recv()).await;
    assert!(
        got.is_err(),
        "the clean session received a message it never subscribed to: {got:?}"
    );
}
