//! The limit on open files: started with the usual low soft limit, retaind raises it to the
//! hard limit and serves more connections than the soft limit allowed; started where the hard
//! limit is below what its flags allow, it says so.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::mqtt::raw::{Raw, build};
use common::mqtt::within;
use futures_util::future::join_all;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `retaind` on a new SQLite file, started by a shell that first runs `ulimit`, with its MQTT
/// address and what it writes to standard error.
async fn start_under(ulimit: &str) -> (Child, std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/retaind.db", dir.keep().display());
    let mut child = Command::new("sh")
        .args(["-c", &format!("ulimit {ulimit} && exec \"$0\" \"$@\"")])
        .arg(env!("CARGO_BIN_EXE_retaind"))
        .args(["--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"])
        .args(["--database-url", &db])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting retaind");
    let logged = Arc::new(Mutex::new(Vec::new()));
    let mut errors = BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = logged.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = errors.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mqtt = within("retaind to start", async {
        loop {
            let line = lines.next_line().await.unwrap().expect("retaind exited");
            if let Some(addr) = line.strip_prefix("retaind: MQTT on mqtt://") {
                return addr.parse().unwrap();
            }
        }
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, mqtt, logged)
}

/// The soft limit on open files of process `pid`.
fn soft_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_low_soft_limit_on_open_files_is_raised_and_more_clients_than_it_allowed_connect() {
    let (child, mqtt, logged) = start_under("-Sn 256").await;
    let hard: u64 = {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id().unwrap()));
        let limits = limits.unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .to_owned();
        line.split_whitespace().nth(4).unwrap().parse().unwrap()
    };
    assert!(
        hard > 1_000,
        "the test needs a hard limit above 1,000 ({hard})"
    );
    assert_eq!(soft_limit(child.id().unwrap()), hard);

    // More clients than 256 descriptors would hold, each connected.
    let clients = join_all((0..400).map(|i| async move {
        let mut raw = Raw::open_addr(mqtt).await;
        raw.send(&build::connect(&format!("c{i}"), true, 60, None))
            .await;
        let ack = within("a CONNACK", raw.expect(2)).await;
        assert_eq!(ack.body[1], 0, "c{i} accepted");
        raw
    }))
    .await;
    assert_eq!(clients.len(), 400);
    let warned = logged.lock().unwrap().clone();
    assert!(
        !warned.iter().any(|l| l.contains("open fewer files")),
        "{warned:?}"
    );
}

#[tokio::test]
async fn a_hard_limit_below_what_the_flags_allow_is_reported() {
    let (child, _mqtt, logged) = start_under("-n 256").await;
    assert_eq!(soft_limit(child.id().unwrap()), 256);
    within("the warning", async {
        while !logged
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("open fewer files") && l.contains("limit=256"))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
