//! kill -9 under load loses no acknowledged write. The real binary serves HTTP and MQTT
//! clients that store retained messages as fast as they can (HTTP 200 and MQTT PUBACK are the
//! acknowledgements), is killed with SIGKILL mid-stream, and is started again on the same
//! database: every topic must hold its last acknowledged write or a later one that was sent,
//! never an older one and never nothing. On SQLite and on Postgres, and for a node of a
//! cluster, asked afterwards through the other node.

mod common;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::nats::Nats;
use common::process::Process;
use common::{Backend, fresh_db};

/// Topics each writer cycles through, so that every topic is rewritten many times.
const TOPICS_PER_WRITER: u64 = 8;
const HTTP_WRITERS: usize = 4;
const MQTT_WRITERS: usize = 2;
/// How long the load runs before the kill.
const LOAD: Duration = Duration::from_millis(1500);

/// Per topic: the highest sequence number sent, and the highest acknowledged.
#[derive(Default)]
struct Ledger(Mutex<HashMap<String, (u64, u64)>>);

impl Ledger {
    fn sent(&self, topic: &str, seq: u64) {
        let mut all = self.0.lock().unwrap();
        let entry = all.entry(topic.to_owned()).or_default();
        entry.0 = entry.0.max(seq);
    }

    fn acknowledged(&self, topic: &str, seq: u64) {
        let mut all = self.0.lock().unwrap();
        let entry = all.entry(topic.to_owned()).or_default();
        entry.1 = entry.1.max(seq);
    }

    fn acknowledged_total(&self) -> usize {
        self.0.lock().unwrap().values().filter(|e| e.1 > 0).count()
    }
}

async fn http_writer(addr: SocketAddr, writer: usize, ledger: Arc<Ledger>) {
    let http = reqwest::Client::new();
    for seq in 1.. {
        let topic = format!("http{writer}/{}", seq % TOPICS_PER_WRITER);
        ledger.sent(&topic, seq);
        let url = format!(
            "http://{addr}/topics/{}?retain=true&qos=1",
            common::encode(&topic)
        );
        match http.post(url).body(seq.to_string()).send().await {
            Ok(res) if res.status() == 200 => ledger.acknowledged(&topic, seq),
            Ok(_) => {}
            Err(_) => return, // the server is gone
        }
    }
}

async fn mqtt_writer(addr: SocketAddr, writer: usize, ledger: Arc<Ledger>) {
    let mut options =
        rumqttc::MqttOptions::new(format!("durability-{writer}"), "127.0.0.1", addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::AsyncClient::new(options, 100);
    // Publishes leave in the order they are requested; each gets its packet id as it leaves.
    let queued: Arc<Mutex<VecDeque<(String, u64)>>> = Arc::default();
    let publisher = tokio::spawn({
        let (ledger, queued) = (ledger.clone(), queued.clone());
        async move {
            for seq in 1.. {
                let topic = format!("mqtt{writer}/{}", seq % TOPICS_PER_WRITER);
                ledger.sent(&topic, seq);
                queued.lock().unwrap().push_back((topic.clone(), seq));
                let sent = client
                    .publish(topic, rumqttc::QoS::AtLeastOnce, true, seq.to_string())
                    .await;
                if sent.is_err() {
                    return;
                }
            }
        }
    });
    let mut in_flight: HashMap<u16, (String, u64)> = HashMap::new();
    loop {
        match events.poll().await {
            Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                let next = queued
                    .lock()
                    .unwrap()
                    .pop_front()
                    .expect("a queued publish");
                in_flight.insert(pkid, next);
            }
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(ack))) => {
                if let Some((topic, seq)) = in_flight.remove(&ack.pkid) {
                    ledger.acknowledged(&topic, seq);
                }
            }
            Ok(_) => {}
            Err(_) => break, // the server is gone
        }
    }
    publisher.abort();
}

async fn stored_seq(http: &reqwest::Client, addr: SocketAddr, topic: &str) -> Option<u64> {
    use base64::Engine;
    let url = format!("http://{addr}/retainedMessage/{}", common::encode(topic));
    let res = http.get(url).send().await.unwrap();
    if res.status() == 404 {
        return None;
    }
    assert_eq!(res.status(), 200, "{topic}");
    let body: serde_json::Value = res.json().await.unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(body["payload"].as_str().unwrap())
        .unwrap();
    Some(String::from_utf8(payload).unwrap().parse().unwrap())
}

/// With `cluster`, the node is one of two of a service over NATS, and the other one, still
/// running, is the one asked afterwards.
async fn killed_under_load_loses_no_acknowledged_write(backend: Backend, cluster: bool) {
    let db = fresh_db(backend).await;
    let nats = match cluster {
        true => Some(Nats::start().await),
        false => None,
    };
    let url = nats.as_ref().map(Nats::url).unwrap_or_default();
    let args: &[&str] = if cluster {
        &["--cluster-url", &url]
    } else {
        &[]
    };
    let other = match cluster {
        true => Some(Process::start(&db.url, args).await),
        false => None,
    };
    let mut server = Process::start(&db.url, args).await;
    let ledger = Arc::new(Ledger::default());
    let mut writers = Vec::new();
    for w in 0..HTTP_WRITERS {
        writers.push(tokio::spawn(http_writer(server.http, w, ledger.clone())));
    }
    for w in 0..MQTT_WRITERS {
        writers.push(tokio::spawn(mqtt_writer(server.mqtt, w, ledger.clone())));
    }
    tokio::time::sleep(LOAD).await;
    let acknowledged_before_kill = ledger.acknowledged_total();
    server.kill().await;
    for w in writers {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("a writer noticed the server is gone")
            .unwrap();
    }
    assert!(
        acknowledged_before_kill >= (HTTP_WRITERS + MQTT_WRITERS) * TOPICS_PER_WRITER as usize / 2,
        "too little was acknowledged for the test to mean anything: {acknowledged_before_kill} topics"
    );

    let server = match other {
        Some(other) => other,
        None => Process::start(&db.url, &[]).await,
    };
    let http = reqwest::Client::new();
    let ledger: HashMap<String, (u64, u64)> = ledger.0.lock().unwrap().clone();
    let in_doubt = ledger.values().filter(|(sent, acked)| sent > acked).count();
    eprintln!(
        "{backend:?}: killed after {} acknowledged writes{}; {in_doubt} topics had a write in flight",
        ledger
            .values()
            .map(|(_, acked)| acked / TOPICS_PER_WRITER)
            .sum::<u64>(),
        if cluster { " (one of two nodes)" } else { "" },
    );
    for (topic, (sent, acknowledged)) in &ledger {
        let stored = stored_seq(&http, server.http, topic).await;
        if *acknowledged > 0 {
            let stored =
                stored.unwrap_or_else(|| panic!("{topic}: acknowledged {acknowledged}, lost"));
            assert!(
                (*acknowledged..=*sent).contains(&stored),
                "{topic}: holds {stored}, acknowledged {acknowledged}, sent up to {sent}"
            );
        } else if let Some(stored) = stored {
            assert!(stored <= *sent, "{topic}: holds {stored}, never sent");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_under_load_loses_no_acknowledged_write_on_sqlite() {
    killed_under_load_loses_no_acknowledged_write(Backend::Sqlite, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_under_load_loses_no_acknowledged_write_on_postgres() {
    killed_under_load_loses_no_acknowledged_write(Backend::Postgres, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_a_cluster_killed_under_load_loses_no_acknowledged_write() {
    killed_under_load_loses_no_acknowledged_write(Backend::Postgres, true).await;
}
