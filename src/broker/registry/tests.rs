use std::sync::mpsc;
use std::time::Duration;

use futures_util::FutureExt;

use super::*;
use crate::store::Qos;

fn sessions(max_queued: usize) -> Sessions {
    let limits = SessionLimits {
        max_queued,
        max_queued_bytes: 1 << 20,
    };
    Sessions::new(limits, QueueMemory::unlimited(), None, Metrics::default())
}

/// A connected client subscribed to `#` at QoS 1.
fn subscriber(sessions: &Sessions, shutdown: &CancellationToken) -> Attached {
    let key: ClientKey = Arc::from("subscriber");
    let attached = sessions.attach(key.clone(), true, None, 0, None, shutdown);
    let options = SubOptions {
        qos: Qos::AtLeastOnce,
        no_local: false,
        retain_as_published: false,
        subscription_id: None,
    };
    let spec = FilterSpec::parse("#").unwrap();
    let _ = sessions.subscribe(&key, &spec, options);
    attached.session.state().subscriptions.insert(spec, options);
    attached
}

#[test]
fn a_publish_is_routed_while_the_subscribers_connection_holds_its_session() {
    let sessions = sessions(100);
    let shutdown = CancellationToken::new();
    let sub = subscriber(&sessions, &shutdown);
    let (routed, done) = mpsc::channel();
    std::thread::scope(|s| {
        // The connection holding its session's lock, as one preempted on a background thread.
        let held = sub.session.state();
        s.spawn(|| {
            sessions.route(Message::plain("a/b", "x", Qos::AtLeastOnce), 0, false);
            sessions.route(Message::plain("a/c", "x", Qos::AtMostOnce), 0, false);
            routed.send(()).unwrap();
        });
        done.recv_timeout(Duration::from_secs(5))
            .expect("routing went on without the session's lock");
        assert_eq!(held.queued(), 0, "left for the holder");
        drop(held);
    });
    assert!(
        sub.session.wake.notified().now_or_never().is_some(),
        "the connection was woken"
    );
    let mut state = sub.session.state();
    let topics: Vec<String> = std::iter::from_fn(|| state.next_outgoing(10, |_| true))
        .map(|o| o.delivery.message.topic.as_str().to_owned())
        .collect();
    assert_eq!(
        topics,
        ["a/b", "a/c"],
        "placed when the holder let go, in order"
    );
}

#[test]
fn a_client_found_behind_when_its_message_is_placed_is_disconnected() {
    let sessions = sessions(1);
    let shutdown = CancellationToken::new();
    let sub = subscriber(&sessions, &shutdown);
    sessions.route(Message::plain("a/1", "x", Qos::AtLeastOnce), 0, false);
    let (routed, done) = mpsc::channel();
    std::thread::scope(|s| {
        let held = sub.session.state();
        s.spawn(|| {
            sessions.route(Message::plain("a/2", "x", Qos::AtLeastOnce), 0, false);
            routed.send(()).unwrap();
        });
        done.recv_timeout(Duration::from_secs(5))
            .expect("routing went on without the session's lock");
        assert!(!sub.stop.is_cancelled(), "decided by the holder, not yet");
        drop(held);
    });
    assert!(
        sub.stop.is_cancelled(),
        "a full queue for QoS 1: disconnected"
    );
    assert_eq!(sub.stop_reason.get(), DisconnectReasonCode::QuotaExceeded);
    assert_eq!(sub.session.state().queued(), 1, "the second was not queued");
}

#[test]
fn a_session_kept_offline_keeps_nothing_of_its_last_connection() {
    struct Task;
    impl futures_util::task::ArcWake for Task {
        fn wake_by_ref(_: &Arc<Self>) {}
    }
    let sessions = sessions(100);
    let shutdown = CancellationToken::new();
    let sub = subscriber(&sessions, &shutdown);
    // The connection's task waits for its session, as its loop does.
    let task = Arc::new(Task);
    let waker = futures_util::task::waker(task.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    let waiting = std::pin::pin!(sub.session.wake.notified()).poll_unpin(&mut cx);
    assert!(waiting.is_pending());
    drop(waker);
    assert_eq!(Arc::strong_count(&task), 2);
    let kept = sessions.detach(&sub.session, sub.connection, 0, Duration::from_secs(60), 0);
    assert!(kept, "a persistent session");
    assert_eq!(Arc::strong_count(&task), 1, "the task's waker was let go");
}

/// `id`, subscribed to `t/{id}`, has just left, its session kept for `expiry_secs` from
/// `now_ms` (`u32::MAX`: never expires).
fn left(sessions: &Sessions, id: &str, expiry_secs: u32, now_ms: i64) {
    let key: ClientKey = Arc::from(id);
    let shutdown = CancellationToken::new();
    let attached = sessions.attach(key.clone(), false, None, 0, None, &shutdown);
    let options = SubOptions {
        qos: Qos::AtLeastOnce,
        no_local: false,
        retain_as_published: false,
        subscription_id: None,
    };
    let spec = FilterSpec::parse(&format!("t/{id}")).unwrap();
    let _ = sessions.subscribe(&key, &spec, options);
    attached.session.state().subscriptions.insert(spec, options);
    let expiry = Duration::from_secs(u64::from(expiry_secs));
    sessions.detach(&attached.session, attached.connection, 0, expiry, now_ms);
}

#[test]
fn past_the_bound_the_offline_session_nearest_its_end_ends_never_the_one_leaving() {
    let metrics = Metrics::default();
    let limits = SessionLimits {
        max_queued: 10,
        max_queued_bytes: 1 << 20,
    };
    let sessions =
        Sessions::new(limits, QueueMemory::unlimited(), None, metrics.clone()).bound_offline(3);
    let (tx, evicted) = mpsc::channel();
    let tx = Mutex::new(tx);
    sessions.when_evicted(Box::new(move |key| {
        tx.lock().unwrap().send(key.to_string()).unwrap();
    }));
    let held = |id: &str| sessions.get(id).is_some();
    left(&sessions, "long", 600, 0);
    left(&sessions, "never", u32::MAX, 0);
    left(&sessions, "short", 60, 0);
    assert_eq!(sessions.offline_held(), 3);
    assert!(evicted.try_recv().is_err(), "within the bound");

    // Leaving with the nearest end of all, it is kept; the nearest of the others ends.
    left(&sessions, "shortest", 10, 1_000);
    assert_eq!(evicted.try_recv().unwrap(), "short");
    assert!(evicted.try_recv().is_err());
    assert!(!held("short") && held("shortest") && held("long") && held("never"));
    assert_eq!(sessions.offline_held(), 3);
    assert_eq!(
        sessions.subscription_count(),
        3,
        "its subscription went with it"
    );

    // A client back is not offline; leaving again, it ranks by its new expiry.
    let shutdown = CancellationToken::new();
    let back = sessions.attach(Arc::from("shortest"), false, None, 0, None, &shutdown);
    assert!(back.session_present);
    assert_eq!(sessions.offline_held(), 2);
    left(&sessions, "other", 300, 2_000);
    assert!(evicted.try_recv().is_err(), "room for it");
    sessions.detach(
        &back.session,
        back.connection,
        0,
        Duration::from_secs(900),
        3_000,
    );
    assert_eq!(evicted.try_recv().unwrap(), "other", "300 s from 2 s");
    // Sessions that never expire end last, after every one that does.
    left(&sessions, "late", 5_000, 4_000);
    assert_eq!(evicted.try_recv().unwrap(), "long");
    left(&sessions, "later", 6_000, 5_000);
    assert_eq!(evicted.try_recv().unwrap(), "shortest", "900 s from 3 s");
    left(&sessions, "latest", 7_000, 6_000);
    assert_eq!(evicted.try_recv().unwrap(), "late");
    assert!(held("never") && held("later") && held("latest"));
    assert!(
        metrics
            .render()
            .contains("retaind_mqtt_sessions_evicted_total{bound=\"node\"} 5\n"),
        "{}",
        metrics.render()
    );
}

#[test]
fn without_a_bound_every_offline_session_is_kept() {
    let sessions = sessions(10);
    for i in 0..100 {
        left(&sessions, &format!("d{i}"), 60, 0);
    }
    assert_eq!(sessions.offline_held(), 100);
    assert_eq!(sessions.held(), 100);
}

/// A deadline is its session's: one set for an earlier session of the client id that was
/// never attached (connection 0, as a restored, adopted or kept one is) does not end a later
/// one early. Before 2026-12-07 a deadline named only the client id and the connection.
#[test]
fn a_deadline_of_an_earlier_unattached_session_does_not_end_a_later_one() {
    let sessions = sessions(100);
    let first = sessions
        .restore("x".into(), None, None, NEVER, &[], |_| {})
        .unwrap();
    assert!(sessions.left_by("x", first.serial(), 0));
    sessions.expire_key("x", first.serial(), 0);
    assert!(sessions.get("x").is_none(), "its own deadline ends it");

    let second = sessions
        .restore("x".into(), None, None, NEVER, &[], |_| {})
        .unwrap();
    assert!(!sessions.left_by("x", first.serial(), 0));
    sessions.expire_key("x", first.serial(), 0);
    assert!(
        sessions.get("x").is_some_and(|s| Arc::ptr_eq(&s, &second)),
        "the earlier session's deadline leaves the later one"
    );
    assert!(sessions.left_by("x", second.serial(), 0));
    sessions.expire_key("x", second.serial(), 0);
    assert!(sessions.get("x").is_none());
}
