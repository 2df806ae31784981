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
    assert_eq!(
        sub.session.stop_reason(),
        DisconnectReasonCode::QuotaExceeded
    );
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
    let kept = sessions.detach(&sub.session, sub.connection, Duration::from_secs(60), 0);
    assert!(kept, "a persistent session");
    assert_eq!(Arc::strong_count(&task), 1, "the task's waker was let go");
}
