//! `$SYS/broker/...` (issue 16): the node's status for MQTT subscribers, under Mosquitto's
//! names, published every `--sys-interval` and handed to new subscribers like retained
//! messages, but never stored; `#` does not match them [MQTT-4.7.2-1]; the policy decides who
//! reads them; no client may publish there.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::mqtt::{Qos5, V3, V5, p5, v3_options, v5_options};
use common::{Backend, TestApp, encode, fresh_db, spawn_app_with, test_config};

const CONNECTED: &str = "$SYS/broker/clients/connected";
const RECEIVED: &str = "$SYS/broker/publish/messages/received";
const SENT: &str = "$SYS/broker/publish/messages/sent";
const RETAINED: &str = "$SYS/broker/retained messages/count";
const UPTIME: &str = "$SYS/broker/uptime";
const VERSION: &str = "$SYS/broker/version";
const ALL: [&str; 6] = [CONNECTED, RECEIVED, SENT, RETAINED, UPTIME, VERSION];

/// Short, so that a changed value is published well within the tests' deadlines.
const INTERVAL: Duration = Duration::from_millis(100);

async fn app_with(config_toml: Option<&str>) -> (TestApp, tempfile::TempDir) {
    app_on(Backend::Sqlite, config_toml).await
}

async fn app_on(backend: Backend, config_toml: Option<&str>) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db(backend).await;
    let mut config = test_config(&db.url);
    config.sys_interval = INTERVAL;
    if let Some(toml) = config_toml {
        let path = dir.path().join("auth.toml");
        std::fs::write(&path, toml).unwrap();
        config.principals = Some(path);
    }
    (spawn_app_with(db, config).await, dir)
}

async fn app() -> TestApp {
    app_with(None).await.0
}

/// A PUBLISH as (topic, payload, retain).
fn parts(p: &p5::Publish) -> (String, String, bool) {
    (
        String::from_utf8(p.topic.to_vec()).unwrap(),
        String::from_utf8(p.payload.to_vec()).unwrap(),
        p.retain,
    )
}

/// Reads PUBLISHes until `topic` carries `wanted`; everything read on the way is returned.
/// Under one deadline: status topics keep arriving, so each read alone would never time out.
async fn until_value(
    client: &mut V5,
    topic: &str,
    wanted: impl Fn(&str) -> bool,
) -> Vec<(String, String, bool)> {
    let mut seen = Vec::new();
    let read = async {
        loop {
            let p = parts(&client.next_publish().await);
            let done = p.0 == topic && wanted(&p.1);
            seen.push(p);
            if done {
                return;
            }
        }
    };
    if tokio::time::timeout(common::mqtt::DEADLINE, read)
        .await
        .is_err()
    {
        let tail = &seen[seen.len().saturating_sub(12)..];
        panic!("{topic} never carried the value wanted; the last messages: {tail:?}");
    }
    seen
}

fn number(payload: &str) -> u64 {
    payload.parse().unwrap_or_else(|_| panic!("{payload:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sys_subscriber_gets_every_status_topic_at_once_flagged_retained() {
    let app = app().await;
    // Once one client has seen the retained count, the last of a round, the node holds a
    // value for every topic.
    let (mut primer, _) = V5::connect(v5_options(&app, "primer")).await;
    primer.subscribe(RETAINED, Qos5::AtMostOnce).await;
    until_value(&mut primer, RETAINED, |_| true).await;
    primer.disconnect().await;

    let (mut watcher, _) = V5::connect(v5_options(&app, "watcher")).await;
    watcher.subscribe("$SYS/#", Qos5::AtMostOnce).await;
    // Sent on subscribe, like retained messages [MQTT-3.3.1-9]; a live update (RETAIN 0) may
    // come first if the node published one just as the subscription was made.
    let mut latest = HashMap::new();
    // The last count of connections heard, live or not: the node sends it again only when it
    // changes, so one already at 1 here never comes again.
    let mut connected = String::new();
    common::mqtt::within("a RETAIN copy of every status topic", async {
        while latest.len() < ALL.len() {
            let (topic, payload, retain) = parts(&watcher.next_publish().await);
            assert!(ALL.contains(&topic.as_str()), "unexpected {topic}");
            if topic == CONNECTED {
                connected.clone_from(&payload);
            }
            if retain {
                latest.entry(topic).or_insert(payload);
            }
        }
    })
    .await;
    // The latest value may be from before this client connected; the next one counts it.
    assert!(["0", "1", "2"].contains(&latest[CONNECTED].as_str()));
    assert_eq!(latest[RETAINED], "0");
    assert_eq!(latest[RECEIVED], "0");
    assert!(latest[UPTIME].ends_with(" seconds"), "{}", latest[UPTIME]);
    assert_eq!(
        latest[VERSION],
        format!("retaind version {}", env!("CARGO_PKG_VERSION"))
    );
    if connected != "1" {
        until_value(&mut watcher, CONNECTED, |v| v == "1").await;
    }
    // An exact filter gets its one topic.
    let (mut exact, _) = V5::connect(v5_options(&app, "exact")).await;
    exact.subscribe(VERSION, Qos5::AtLeastOnce).await;
    let (topic, _, retain) = parts(&exact.next_publish().await);
    assert_eq!((topic.as_str(), retain), (VERSION, true));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_values_move_by_a_known_workload_and_are_never_stored_on_sqlite() {
    values_move_by_a_known_workload(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_values_move_by_a_known_workload_and_are_never_stored_on_postgres() {
    values_move_by_a_known_workload(Backend::Postgres).await;
}

async fn values_move_by_a_known_workload(backend: Backend) {
    let (app, _dir) = app_on(backend, None).await;
    let (mut watcher, _) = V5::connect(v5_options(&app, "watcher")).await;
    // One SUBSCRIBE: the values sent for a filter could otherwise arrive while the test waits
    // for the next filter's SUBACK, and be passed over.
    let filters =
        [CONNECTED, RECEIVED, SENT, RETAINED].map(|t| p5::Filter::new(t, Qos5::AtMostOnce));
    watcher.client.subscribe_many(filters).await.unwrap();
    let mut first = HashMap::new();
    common::mqtt::within("the first values", async {
        while first.len() < 4 {
            // Sent on subscribe, or live if the node's first values were not read yet.
            let (topic, payload, _) = parts(&watcher.next_publish().await);
            first.entry(topic).or_insert_with(|| number(&payload));
        }
    })
    .await;

    let (mut publisher, _) = V5::connect(v5_options(&app, "publisher")).await;
    until_value(&mut watcher, CONNECTED, |v| v == "2").await;
    for i in 0..5 {
        let topic = format!("sys-test/{i}");
        publisher
            .publish(&topic, Qos5::AtLeastOnce, true, b"on")
            .await;
    }
    // Live updates: the five publishes, the five stored messages.
    let received = first[RECEIVED] + 5;
    let seen = until_value(&mut watcher, RECEIVED, |v| number(v) == received).await;
    assert!(seen.iter().all(|(_, _, retain)| !retain), "{seen:?}");
    until_value(&mut watcher, RETAINED, |v| number(v) == first[RETAINED] + 5).await;
    // What the watcher was sent so far counts too; it only grows.
    until_value(&mut watcher, SENT, |v| number(v) > first[SENT]).await;
    publisher.disconnect().await;
    until_value(&mut watcher, CONNECTED, |v| v == "1").await;

    // The broker's live state, not retained messages: neither listed nor readable over HTTP.
    let listed = app.get_json("/retainedMessage?maxResults=200").await;
    let topics: Vec<&str> = listed["retainedTopics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics.len(), 5, "{topics:?}");
    assert!(
        topics.iter().all(|t| t.starts_with("sys-test/")),
        "{topics:?}"
    );
    for topic in ALL {
        let res = app
            .get(&format!("/retainedMessage/{}", encode(topic)))
            .await;
        assert_eq!(res.status(), 404, "{topic}");
    }
    assert_eq!(app.store().count(None).await.unwrap(), 5);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_to_hash_or_a_leading_plus_do_not_get_sys_topics() {
    let app = app().await;
    let (mut watcher, _) = V5::connect(v5_options(&app, "watcher")).await;
    watcher.subscribe(CONNECTED, Qos5::AtMostOnce).await;
    until_value(&mut watcher, CONNECTED, |v| v == "1").await;
    let (mut wild, _) = V5::connect(v5_options(&app, "wild")).await;
    wild.subscribe("#", Qos5::AtMostOnce).await;
    wild.subscribe("+/broker/#", Qos5::AtMostOnce).await;
    wild.subscribe("+/+/clients/connected", Qos5::AtMostOnce)
        .await;
    // A change published after the wildcard subscriptions exist: the watcher sees it live.
    let (_third, _) = V5::connect(v5_options(&app, "third")).await;
    until_value(&mut watcher, CONNECTED, |v| v == "3").await;
    // Routed after that change, so the wildcard subscriber would have had the change first.
    watcher
        .publish("marker", Qos5::AtLeastOnce, false, b"after")
        .await;
    let (topic, payload, _) = parts(&wild.next_publish().await);
    assert_eq!(
        (topic.as_str(), payload.as_str()),
        ("marker", "after"),
        "the # subscriber got a $SYS message"
    );
    app.stop().await;
}

fn hash(password: &str) -> String {
    retaind::auth::hash_password(password)
}

/// `watcher` may subscribe to `$SYS/#` but receive only the version; `outsider` may subscribe
/// and receive every ordinary topic, none under `$SYS`; `admin` may do everything.
fn principals() -> String {
    let (watcher, outsider, admin) = (hash("w"), hash("o"), hash("a"));
    format!(
        r#"
[[principals]]
name = "watcher"
mqtt_username = "watcher"
mqtt_password_hash = "{watcher}"
[[principals.statements]]
effect = "Allow"
actions = ["iot:Connect"]
resources = ["*"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:Subscribe"]
resources = ["topicfilter/$SYS/#", "topicfilter/marker"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:Receive"]
resources = ["topic/$SYS/broker/version", "topic/marker"]

[[principals]]
name = "outsider"
mqtt_username = "outsider"
mqtt_password_hash = "{outsider}"
[[principals.statements]]
effect = "Allow"
actions = ["iot:Connect", "iot:Subscribe", "iot:Receive", "iot:Publish"]
resources = ["client/*", "topicfilter/#", "topic/#"]

[[principals]]
name = "admin"
mqtt_username = "admin"
mqtt_password_hash = "{admin}"
[[principals.statements]]
effect = "Allow"
actions = ["iot:*"]
resources = ["*"]
"#
    )
}

fn login(app: &TestApp, id: &str, user: &str, password: &str) -> rumqttc::v5::MqttOptions {
    let mut o = v5_options(app, id);
    o.set_credentials(user, password);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_gets_only_the_sys_topics_its_policy_allows() {
    let (app, _dir) = app_with(Some(&principals())).await;
    let (mut admin, _) = V5::connect(login(&app, "admin", "admin", "a")).await;
    admin.subscribe(CONNECTED, Qos5::AtMostOnce).await;
    until_value(&mut admin, CONNECTED, |v| v == "1").await;

    // No iot:Subscribe on the filter: refused in SUBACK, nothing sent.
    let (mut outsider, _) = V5::connect(login(&app, "outsider", "outsider", "o")).await;
    let codes = outsider.subscribe("$SYS/#", Qos5::AtMostOnce).await;
    assert_eq!(codes, vec![p5::SubscribeReasonCode::NotAuthorized]);
    outsider.subscribe("marker", Qos5::AtMostOnce).await;

    // iot:Subscribe, but iot:Receive on the version only.
    // `$SYS/#` last: what it sends at once would be passed over while waiting for a SUBACK.
    let (mut watcher, _) = V5::connect(login(&app, "watcher", "watcher", "w")).await;
    watcher.subscribe("marker", Qos5::AtMostOnce).await;
    let codes = watcher.subscribe("$SYS/#", Qos5::AtMostOnce).await;
    assert_eq!(
        codes,
        vec![p5::SubscribeReasonCode::Success(Qos5::AtMostOnce)]
    );
    // Connected clients went from 1 to 3 meanwhile, and once more now.
    let (_fourth, _) = V5::connect(login(&app, "fourth", "admin", "a")).await;
    until_value(&mut admin, CONNECTED, |v| v == "4").await;
    admin
        .publish("marker", Qos5::AtLeastOnce, false, b"after")
        .await;

    let got = until_value(&mut watcher, "marker", |_| true).await;
    let topics: Vec<&str> = got.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(topics, vec![VERSION, "marker"]);
    let got = until_value(&mut outsider, "marker", |_| true).await;
    assert_eq!(got.len(), 1, "{got:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_publishing_under_sys_is_refused_and_nothing_changes() {
    let app = app().await;
    let (mut watcher, _) = V5::connect(v5_options(&app, "watcher")).await;
    watcher.subscribe("marker", Qos5::AtMostOnce).await;
    watcher.subscribe("$SYS/#", Qos5::AtMostOnce).await;
    until_value(&mut watcher, VERSION, |_| true).await;
    let before = app.snapshot().await;

    let (mut v5, _) = V5::connect(v5_options(&app, "intruder-5")).await;
    let reason = v5
        .publish_with(
            VERSION,
            Qos5::AtLeastOnce,
            false,
            b"evil 1",
            Default::default(),
        )
        .await;
    assert_eq!(reason, Some(p5::PubAckReason::NotAuthorized));
    let reason = v5
        .publish_with(
            "$SYS/x",
            Qos5::AtLeastOnce,
            true,
            b"evil 2",
            Default::default(),
        )
        .await;
    assert_eq!(reason, Some(p5::PubAckReason::TopicNameInvalid));
    // 3.1.1 has no code to say it: acknowledged as usual, and dropped.
    let (mut v3, _) = V3::connect(v3_options(&app, "intruder-3")).await;
    v3.publish(
        "$SYS/broker/uptime",
        rumqttc::QoS::AtLeastOnce,
        false,
        b"evil 3",
    )
    .await;
    // A Will there is refused at CONNECT.
    let mut with_will = v5_options(&app, "intruder-will");
    with_will.set_last_will(p5::LastWill::new(
        "$SYS/broker/version",
        "evil 4",
        Qos5::AtMostOnce,
        false,
        None,
    ));
    let (client, mut events) = rumqttc::v5::AsyncClient::new(with_will, 8);
    let refused = common::mqtt::within("the CONNACK", async {
        loop {
            match events.poll().await {
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::ConnAck(a))) => break a.code,
                Ok(_) => {}
                Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => break code,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    assert_eq!(refused, p5::ConnectReturnCode::NotAuthorized);
    drop(client);
    // Over HTTP: 403, as a policy refusal.
    let res = app
        .publish(format!("/topics/{}?qos=1", encode("$SYS/x")), "evil 5")
        .await;
    assert_eq!(res.status(), 403);
    assert_eq!(res.headers()["x-amzn-ErrorType"], "ForbiddenException");

    v5.publish("marker", Qos5::AtLeastOnce, false, b"after")
        .await;
    let got = until_value(&mut watcher, "marker", |_| true).await;
    assert!(
        got.iter().all(|(_, p, _)| !p.starts_with("evil")),
        "{got:?}"
    );
    assert_eq!(app.snapshot().await, before);
    let res = app
        .get(&format!("/retainedMessage/{}", encode("$SYS/x")))
        .await;
    assert_eq!(res.status(), 404);
    app.stop().await;
}
