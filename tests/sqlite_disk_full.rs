//! The SQLite default on a disk that fills up: writes are refused as the database being
//! unavailable (HTTP 503, MQTT 5 PUBACK 0x80), reads go on, nothing stored is lost or half
//! written, a retained Will that falls due meanwhile waits for room, and writes resume once
//! space is freed, without a restart.
//!
//! A real full file system: the `retaind` binary runs in a mount namespace of its own
//! (`unshare`, as root, or in a user namespace otherwise) on a 4 MiB tmpfs, which nothing else
//! on the machine sees; the test reaches its files through `/proc/<pid>/root`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::mqtt::raw::{Raw, build};
use common::mqtt::within;
use common::process::Process;
use common::{encode, metric_value, snapshot_at};
use reqwest::StatusCode;

/// The file system's size: the write-ahead log never reaches SQLite's automatic checkpoint
/// (1,000 pages, 4 MiB) in it, so the log only grows and the disk fills in a known way.
const DISK: &str = "size=4m";
/// Taken at the start and freed to make room again.
const RESERVE_BYTES: usize = 1 << 20;
const BIG: usize = 100_000;

/// `unshare` running a shell that mounts the tmpfs on `dir` (its `$0`) and then becomes
/// `retaind` (`exec "$@"`), so that the process the test holds is retaind itself.
fn on_a_small_disk(dir: &str) -> Vec<String> {
    let mut wrapper = vec!["unshare".to_owned(), "--mount".to_owned()];
    if !common::running_as_root() {
        wrapper.extend(["--user".to_owned(), "--map-root-user".to_owned()]);
    }
    wrapper.extend([
        "sh".to_owned(),
        "-c".to_owned(),
        format!("mount -t tmpfs -o {DISK} retaind-test \"$0\" && exec \"$@\""),
        dir.to_owned(),
    ]);
    wrapper
}

struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> reqwest::Response {
        self.client
            .post(format!(
                "{}/topics/{}?retain=true&qos=1",
                self.base,
                encode(topic)
            ))
            .body(payload)
            .send()
            .await
            .unwrap()
    }

    /// The retained payload of `topic`, or `None` for 404.
    async fn get(&self, topic: &str) -> Option<Vec<u8>> {
        let res = self
            .client
            .get(format!("{}/retainedMessage/{}", self.base, encode(topic)))
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::NOT_FOUND {
            return None;
        }
        assert_eq!(res.status(), StatusCode::OK, "GetRetainedMessage {topic}");
        Some(payload_of(&res.json().await.unwrap()))
    }

    async fn metric(&self, series: &str) -> f64 {
        let page = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if page.lines().any(|l| l.starts_with(series)) {
            metric_value(&page, series)
        } else {
            0.0
        }
    }

    async fn ready(&self) -> StatusCode {
        let url = format!("{}/readyz", self.base);
        self.client.get(url).send().await.unwrap().status()
    }
}

const UNAVAILABLE: &str = "retaind_store_errors_total{work=\"write batch\",kind=\"unavailable\"}";
const INTERNAL: &str = "retaind_store_errors_total{work=\"write batch\",kind=\"internal\"}";

/// The payload of a GetRetainedMessage answer, decoded.
fn payload_of(message: &serde_json::Value) -> Vec<u8> {
    let payload = message["payload"].as_str().unwrap();
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, payload).unwrap()
}

/// A payload told apart by its topic's number.
fn payload(n: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (n + i) as u8).collect()
}

/// Publishes `len`-byte retained messages to `prefix/0`, `prefix/1`, ... until one is refused,
/// which must be the 503 of an unavailable store; returns the refused topic.
async fn fill(
    http: &Http,
    prefix: &str,
    len: usize,
    stored: &mut Vec<(String, Vec<u8>)>,
) -> String {
    for n in 0..10_000 {
        let topic = format!("{prefix}/{n}");
        let res = http.publish(&topic, payload(n, len)).await;
        if res.status() == StatusCode::OK {
            stored.push((topic, payload(n, len)));
            continue;
        }
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{topic}");
        assert_eq!(
            res.headers()["x-amzn-errortype"],
            "ServiceUnavailableException"
        );
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["message"], "the service is unavailable; retry later");
        return topic;
    }
    panic!("{prefix}: the disk never filled");
}

#[tokio::test]
async fn a_full_disk_refuses_writes_as_unavailable_loses_nothing_and_they_resume_once_space_is_freed()
 {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap().to_owned();
    let wrapper = on_a_small_disk(&dir);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let database = format!("sqlite://{dir}/retaind.db");
    let mut node = Process::start_under(&wrapper, &database, &[]).await;
    let inside = PathBuf::from(format!("/proc/{}/root{dir}", node.child.id().unwrap()));
    let reserve = inside.join("reserve");
    std::fs::write(&reserve, vec![0u8; RESERVE_BYTES]).expect("the reserve on the small disk");
    let http = Http {
        client: reqwest::Client::new(),
        base: format!("http://{}", node.http),
    };

    // Large messages until the disk refuses one, then small ones until it refuses those too:
    // what the large refusal left of the log's last extent is used up.
    let mut stored = Vec::new();
    let refused_big = fill(&http, "big", BIG, &mut stored).await;
    assert!(stored.len() >= 10, "{} large messages fit", stored.len());
    let refused_small = fill(&http, "s", 1, &mut stored).await;
    assert_eq!(
        http.metric(INTERNAL).await,
        0.0,
        "a full disk is not an internal failure"
    );
    assert!(http.metric(UNAVAILABLE).await >= 2.0);

    // Reads go on, and the node stays ready: what it serves is all there.
    assert_eq!(http.ready().await, StatusCode::OK);
    assert_eq!(http.get(&refused_big).await, None);
    assert_eq!(http.get(&refused_small).await, None);
    assert_eq!(http.get(&stored[0].0).await.as_ref(), Some(&stored[0].1));

    // MQTT 5: the retained publish is refused with PUBACK 0x80 and stores nothing.
    let props: &[u8] = &[];
    let (mut mqtt, _) =
        Raw::connect_addr(node.mqtt, &build::connect("writer", true, 60, Some(props))).await;
    mqtt.send(&build::publish(
        "m/full",
        1,
        true,
        false,
        1,
        Some(props),
        b"x",
    ))
    .await;
    let ack = mqtt.expect(4).await;
    assert_eq!(ack.ack_reason(), 0x80, "PUBACK {ack:?}");
    assert_eq!(http.get("m/full").await, None);

    // A device's retained Will falls due: it cannot be stored now, and waits for room.
    let before = http.metric(UNAVAILABLE).await;
    let will = build::Will {
        topic: "status/device-1",
        payload: b"offline",
        qos: 1,
        retain: true,
        props: &[],
    };
    let (device, _) = Raw::connect_addr(
        node.mqtt,
        &build::connect_with_will("device-1", true, 60, None, will),
    )
    .await;
    drop(device);
    within("the Will's write to be refused", async {
        while http.metric(UNAVAILABLE).await <= before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(http.get("status/device-1").await, None);

    // Room again: the Will is stored when next tried, and writes succeed, with no restart.
    std::fs::remove_file(&reserve).unwrap();
    within("the Will to be stored", async {
        while http.get("status/device-1").await.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(http.get("status/device-1").await.unwrap(), b"offline");
    let res = http.publish(&refused_big, payload(7, BIG)).await;
    assert_eq!(res.status(), StatusCode::OK);
    stored.push((refused_big, payload(7, BIG)));
    stored.push(("status/device-1".to_owned(), b"offline".to_vec()));

    // Every acknowledged write is there, whole, and nothing else.
    let mut found: Vec<(String, Vec<u8>)> = snapshot_at(&http.client, &http.base)
        .await
        .iter()
        .map(|(topic, m)| (topic.clone(), payload_of(m)))
        .collect();
    found.sort();
    stored.sort();
    assert!(
        found == stored,
        "the store holds other than what was acknowledged"
    );
    node.terminate().await;
}
