//! A large retained delivery runs on the background threads (decision 020): a subscription
//! whose retained messages take more than a page of reads moves its connection there until its
//! reads are done, and back after, on either store by default; `--mqtt-retained-delivery-priority
//! normal` keeps it where it was. Seen through `retaind_mqtt_background_connections`, with a
//! client that stops reading so that the delivery is held in the middle, then takes every
//! message, in topic order.

mod common;

use std::time::{Duration, Instant};

use common::mqtt::raw::{Raw, build};
use common::writes::message;
use common::{Backend, T0_MS, TestApp, fresh_db, open_backend, spawn_app_with, test_config};
use retaind::app::DeliveryPriority;
use retaind::store::{OwnedWrite, Write};

/// Far more than the read-ahead (4,000 messages) and the sockets' buffers hold, so that a
/// client that stops reading holds the delivery in the middle of its reads.
const MESSAGES: usize = 20_000;

async fn background_connections(app: &TestApp) -> u64 {
    let page = app.get("/metrics").await.text().await.unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix("retaind_mqtt_background_connections "))
        .expect("the gauge is on the page")
        .parse()
        .unwrap()
}

/// The gauge as it settles within `within`: the first time it reads `hoped`, or the last.
async fn background_connections_within(app: &TestApp, hoped: u64, within: Duration) -> u64 {
    let until = Instant::now() + within;
    loop {
        let now = background_connections(app).await;
        if now == hoped || Instant::now() >= until {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Background connections while a subscriber holds the delivery in the middle, and once it has
/// every message.
/// `None`: the default priority.
async fn held_then_drained(backend: Backend, priority: Option<DeliveryPriority>) -> (u64, u64) {
    let (app, priority) = seeded(backend, priority).await;
    let (mut client, _) = Raw::connect(&app, &build::connect("bulk", true, 60, None)).await;
    client.send(&build::subscribe(1, "big/#", 0, None)).await;
    client.expect(9).await; // SUBACK
    let mut topics = Vec::with_capacity(MESSAGES);
    for _ in 0..10 {
        topics.push(client.expect(3).await.publish(false).topic);
    }
    let hoped = u64::from(in_background(priority));
    let held = background_connections_within(&app, hoped, Duration::from_secs(2)).await;

    while topics.len() < MESSAGES {
        topics.push(client.expect(3).await.publish(false).topic);
    }
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("big/{i:05}")).collect();
    assert_eq!(topics, expected, "every message once, in topic order");
    (held, background_connections(&app).await)
}

/// A server whose store holds `MESSAGES` retained messages under `big/`, and the priority it
/// runs large deliveries at.
async fn seeded(
    backend: Backend,
    priority: Option<DeliveryPriority>,
) -> (TestApp, DeliveryPriority) {
    let db = fresh_db(backend).await;
    {
        let store = open_backend(&db.url).await;
        let payload = "p".repeat(1024);
        let writes: Vec<OwnedWrite> = (0..MESSAGES)
            .map(|i| Write::Put(message(&format!("big/{i:05}"), &payload, T0_MS)).into())
            .collect();
        // In batches no larger than the write lanes make: a batch's revisions share one ticket.
        for batch in writes.chunks(1000) {
            store
                .apply(batch, None, T0_MS, common::far_deadline())
                .await
                .unwrap();
        }
    }
    let mut config = test_config(&db.url);
    if let Some(priority) = priority {
        config.mqtt_retained_delivery_priority = priority;
    }
    let priority = config.mqtt_retained_delivery_priority;
    let app = spawn_app_with(db, config).await;
    assert_eq!(background_connections(&app).await, 0);
    (app, priority)
}

/// Where `priority` puts a large delivery, on either store.
fn in_background(priority: DeliveryPriority) -> bool {
    match priority {
        DeliveryPriority::Background | DeliveryPriority::Auto => true,
        DeliveryPriority::Normal => false,
    }
}

async fn a_large_retained_delivery_runs_in_the_background_until_its_reads_are_done(
    backend: Backend,
) {
    let (held, drained) = held_then_drained(backend, Some(DeliveryPriority::Background)).await;
    assert_eq!(held, 1, "in the background while the delivery is held");
    assert_eq!(drained, 0, "back once every message was read");
}

async fn with_normal_priority_a_large_retained_delivery_stays_put(backend: Backend) {
    let (held, drained) = held_then_drained(backend, Some(DeliveryPriority::Normal)).await;
    assert_eq!((held, drained), (0, 0));
}

async fn by_default_and_with_auto_a_large_retained_delivery_runs_in_the_background(
    backend: Backend,
) {
    for priority in [None, Some(DeliveryPriority::Auto)] {
        let (held, drained) = held_then_drained(backend, priority).await;
        assert_eq!((held, drained), (1, 0), "{priority:?}");
    }
}

async fn a_client_gone_in_the_middle_of_a_background_delivery_ends_as_any_other(backend: Backend) {
    let (app, _) = seeded(backend, Some(DeliveryPriority::Background)).await;
    let (mut watcher, _) = Raw::connect(&app, &build::connect("watcher", true, 60, None)).await;
    watcher.send(&build::subscribe(1, "gone/#", 0, None)).await;
    watcher.expect(9).await;
    let will = build::Will {
        topic: "gone/bulk",
        payload: b"bye",
        qos: 0,
        retain: false,
        props: &[],
    };
    let connect = build::connect_with_will("bulk", true, 60, None, will);
    let (mut client, _) = Raw::connect(&app, &connect).await;
    client.send(&build::subscribe(1, "big/#", 0, None)).await;
    client.expect(9).await;
    client.expect(3).await;
    let moved = background_connections_within(&app, 1, Duration::from_secs(2)).await;
    assert_eq!(moved, 1, "held in the background");
    drop(client);
    let will = watcher.expect(3).await.publish(false);
    assert_eq!(will.topic, "gone/bulk", "its Will, published as it ended");
    let left = background_connections_within(&app, 0, Duration::from_secs(5)).await;
    assert_eq!(left, 0);
    // The client id is free again, and large deliveries go on.
    let (mut again, _) = Raw::connect(&app, &build::connect("bulk", true, 60, None)).await;
    again.send(&build::subscribe(1, "big/00000", 0, None)).await;
    again.expect(9).await;
    assert_eq!(again.expect(3).await.publish(false).topic, "big/00000");
}

for_each_backend!(
    a_client_gone_in_the_middle_of_a_background_delivery_ends_as_any_other,
    by_default_and_with_auto_a_large_retained_delivery_runs_in_the_background,
    a_large_retained_delivery_runs_in_the_background_until_its_reads_are_done,
    with_normal_priority_a_large_retained_delivery_stays_put,
);
