//! A retained QoS 2 publish the database could not take is not remembered as received: when
//! its client resends it (the same packet id, DUP) after reconnecting to its persistent
//! session, it is stored, not answered as a duplicate of something that was never stored.
//! Before 2026-12-06 a 3.1.1 client's id stayed known when its connection was closed for the
//! failure, and its resend got PUBREC and was stored nowhere: an acknowledged message lost.
//! Postgres behind a TCP proxy that the test cuts and restores.

mod common;

use std::time::Duration;

use common::mqtt::raw::{Raw, build};
use common::proxy::{Mode, app_behind_proxy};

const PUBREC: u8 = 5;
const PUBCOMP: u8 = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_publish_that_was_not_stored_is_stored_when_resent_after_a_reconnect() {
    let (app, proxy) = app_behind_proxy(Duration::from_secs(1)).await;
    let persistent = build::connect("q2", false, 60, None);
    let (mut first, ack) = Raw::connect(&app, &persistent).await;
    assert_eq!(ack.body, [0, 0]);

    proxy.fail(Mode::Refuse);
    let publish = |dup| build::publish("q2/state", 2, true, dup, 7, None, b"on");
    first.send(&publish(false)).await;
    // 3.1.1 cannot say "not stored": the connection is closed, without a PUBREC.
    let got = first.until_closed().await;
    assert!(got.iter().all(|p| p.kind() != PUBREC), "{got:?}");
    proxy.fail(Mode::Open);

    let (mut back, ack) = Raw::connect(&app, &persistent).await;
    assert_eq!(ack.body, [1, 0], "session present");
    back.send(&publish(true)).await;
    assert_eq!(back.expect(PUBREC).await.body[..2], [0, 7]);
    back.send(&build::packet(0x62, &[0, 7])).await;
    assert_eq!(back.expect(PUBCOMP).await.body[..2], [0, 7]);
    assert_eq!(
        app.stored_payload("q2/state").await.as_deref(),
        Some(&b"on"[..]),
        "acknowledged with PUBREC, so stored"
    );
}

/// The same when the client is gone before the store answers: the connection's end waits for
/// the write, which fails, and forgets the id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_publish_that_failed_after_its_client_left_is_stored_when_resent() {
    let (app, proxy) = app_behind_proxy(Duration::from_secs(1)).await;
    let expiry = [0x11, 0, 0, 1, 0x2c];
    let persistent = build::connect("q2-gone", false, 60, Some(&expiry));
    let (mut first, ack) = Raw::connect(&app, &persistent).await;
    assert_eq!(ack.body[..2], [0, 0]);

    proxy.stall();
    let publish = |dup| build::publish("q2/gone", 2, true, dup, 9, Some(&[]), b"off");
    first.send(&publish(false)).await;
    // Gone at once, without waiting for the PUBREC that cannot come yet.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(first);
    app.until_connections(0).await;
    proxy.fail(Mode::Open);
    proxy.restore();
    common::mqtt::within("the database to answer again", async {
        while app.store().get(common::topic("q2/none")).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    let (mut back, ack) = Raw::connect(&app, &persistent).await;
    assert_eq!(ack.body[..2], [1, 0], "session present");
    back.send(&publish(true)).await;
    let pubrec = back.expect(PUBREC).await;
    assert_eq!(pubrec.body[..2], [0, 9]);
    assert_eq!(pubrec.ack_reason(), 0, "{pubrec:?}");
    back.send(&build::packet(0x62, &[0, 9])).await;
    assert_eq!(back.expect(PUBCOMP).await.body[..2], [0, 9]);
    assert_eq!(
        app.stored_payload("q2/gone").await.as_deref(),
        Some(&b"off"[..]),
        "acknowledged with PUBREC, so stored"
    );
}
