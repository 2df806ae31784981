//! One bad publish never fails the publishes it races with. Reported: `contentType=%00` was a
//! 500 on Postgres, and the well-formed publishes sharing its group commit (other clients',
//! MQTT ones) failed with it: 40 of 600. Now the bad ones are refused at the edge (400), and
//! every other publish, over HTTP and MQTT, is stored. (A value the database itself refuses
//! fails alone too: tests/store_stalls.rs.)

mod common;

use common::mqtt::{V3, v3_options};
use common::{Backend, TestApp, spawn_app};

const HTTP_CLIENTS: usize = 8;
const PER_CLIENT: usize = 60;
const MQTT_CLIENTS: usize = 2;

async fn http_client(app: &TestApp, c: usize) -> Vec<(String, u16)> {
    let mut answers = Vec::new();
    for i in 0..PER_CLIENT {
        let bad = i % 10 == 3;
        let topic = format!("h{c}/{i}");
        let query = if bad {
            "retain=true&qos=1&contentType=%00"
        } else {
            "retain=true&qos=1&contentType=text%2Fplain"
        };
        let res = app
            .publish(format!("/topics/h{c}%2F{i}?{query}"), "v")
            .await;
        answers.push((topic, res.status().as_u16()));
    }
    answers
}

async fn mqtt_client(app: &TestApp, c: usize) {
    let (mut client, _) = V3::connect(v3_options(app, &format!("racer-{c}"))).await;
    for i in 0..PER_CLIENT {
        let topic = format!("m{c}/{i}");
        client
            .publish(&topic, rumqttc::QoS::AtLeastOnce, true, b"v")
            .await;
    }
    client.disconnect().await;
}

async fn a_bad_publish_fails_alone(backend: Backend) {
    let app = spawn_app(backend).await;
    let http = futures_util::future::join_all((0..HTTP_CLIENTS).map(|c| http_client(&app, c)));
    let mqtt = futures_util::future::join_all((0..MQTT_CLIENTS).map(|c| mqtt_client(&app, c)));
    let (http, _) = tokio::join!(http, mqtt);

    let mut expected: Vec<String> = Vec::new();
    for (topic, status) in http.into_iter().flatten() {
        let i: usize = topic.rsplit('/').next().unwrap().parse().unwrap();
        if i % 10 == 3 {
            assert_eq!(status, 400, "{topic}");
        } else {
            assert_eq!(status, 200, "{topic}");
            expected.push(topic);
        }
    }
    for c in 0..MQTT_CLIENTS {
        expected.extend((0..PER_CLIENT).map(|i| format!("m{c}/{i}")));
    }
    expected.sort();
    let stored: Vec<String> = app.snapshot().await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(stored, expected);
}

for_each_backend!(a_bad_publish_fails_alone);
