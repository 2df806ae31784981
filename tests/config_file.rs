//! `--config-file` and `retaind check-config` through the real binary: settings from the file,
//! overridden by flags and the environment; every problem of a bad file reported at its line,
//! by `check-config` and by a server that refuses to start; the old `--config` still working.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_retaind");
const TOKEN: &str = "config-file-token-0123456789";

struct Server {
    _child: Child,
    http: SocketAddr,
    stderr: PathBuf,
}

/// Starts retaind with exactly these arguments and environment (the inherited environment's
/// RETAIND_ variables removed), and waits for its HTTP address.
async fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let stderr = dir.join(format!("stderr-{}.log", uuid::Uuid::new_v4().simple()));
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("RETAIND_") || name == "DATABASE_URL" {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("starting retaind");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let http = loop {
        assert!(Instant::now() < deadline, "retaind did not start");
        let Some(line) = lines.next_line().await.unwrap() else {
            panic!(
                "retaind exited at start: {}",
                std::fs::read_to_string(&stderr).unwrap()
            );
        };
        if let Some(addr) = line.strip_prefix("retaind: HTTP API on http://") {
            break addr.parse().unwrap();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Server {
        _child: child,
        http,
        stderr,
    }
}

/// Runs retaind to completion: exit code, stdout, stderr.
fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .env_remove("RETAIND_CONFIG_FILE")
        .env_remove("DATABASE_URL")
        .current_dir(dir)
        .output()
        .expect("running retaind");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn publish(http: SocketAddr, topic: &str, payload: &'static str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!("http://{http}/topics/{topic}?retain=true"))
        .bearer_auth(TOKEN)
        .body(payload)
        .send()
        .await
        .unwrap()
        .status()
}

async fn stored(http: SocketAddr, topic: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .get(format!("http://{http}/retainedMessage/{topic}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .status()
}

fn principals() -> String {
    format!(
        "[[principals]]\nname = \"ops\"\napi_tokens_sha256 = [\"{}\"]\n\
         [[principals.statements]]\neffect = \"Allow\"\nactions = [\"iot:*\"]\nresources = [\"*\"]\n",
        hex::encode(Sha256::digest(TOKEN.as_bytes()))
    )
}

/// The file sets four limits; a flag overrides one, an environment variable another, and the
/// other two are the file's. Each is probed by a request just inside and just outside it,
/// and a refused publish stores nothing.
#[tokio::test]
async fn settings_come_from_the_file_and_flags_and_environment_override_it() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "auth.toml", &principals());
    write(
        dir.path(),
        "retaind.toml",
        "http_addr = \"127.0.0.1:0\"\nmqtt_addr = \"127.0.0.1:0\"\n\
         database_url = \"sqlite://data/r.db\"\nprincipals = \"auth.toml\"\n\
         max_payload_bytes = 10\nmax_topic_levels = 2\nmax_topic_bytes = 12\n\
         rate_publish = 0\n",
    );
    let server = start(
        dir.path(),
        &["--config-file", "retaind.toml", "--max-payload-bytes", "20"],
        &[("RETAIND_MAX_TOPIC_LEVELS", "3")],
    )
    .await;
    let http = server.http;
    // The principals file of the settings file is in force: no token, no access.
    let anonymous = reqwest::get(format!("http://{http}/retainedMessage/a"))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    // --max-payload-bytes 20 on the command line, not the file's 10.
    assert_eq!(publish(http, "p", "fifteen-bytes!!").await, 200);
    assert_eq!(publish(http, "q", "twenty-one-bytes-long").await, 413);
    // RETAIND_MAX_TOPIC_LEVELS=3 in the environment, not the file's 2.
    assert_eq!(publish(http, "a%2Fb%2Fc", "x").await, 200);
    assert_eq!(publish(http, "a%2Fb%2Fc%2Fd", "x").await, 400);
    // max_topic_bytes = 12 from the file alone.
    assert_eq!(publish(http, "twelve-bytes", "x").await, 200);
    assert_eq!(publish(http, "thirteen-byte", "x").await, 400);
    // What was refused was not stored.
    let listed: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{http}/retainedMessage"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut topics: Vec<&str> = listed["retainedTopics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    topics.sort();
    assert_eq!(topics, ["a/b/c", "p", "twelve-bytes"]);
    // The SQLite file is where the settings file put it, relative to the working directory.
    assert!(dir.path().join("data/r.db").exists());
    let log = std::fs::read_to_string(&server.stderr).unwrap();
    assert!(log.contains("settings read from --config-file"), "{log}");
}

#[test]
fn check_config_reports_every_problem_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "auth.toml", "[[principals]]\nname = 7\n");
    let file = write(
        dir.path(),
        "bad.toml",
        "# settings\nhttp_addr = \"127.0.0.1:0\"\nmqtt_max_inflight = \"lots\"\n\
         max_topic_level = 3\nretention = \"soon\"\n",
    );
    let (code, _, stderr) = run(dir.path(), &["check-config", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    let name = file.display().to_string();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "{name}:3: `mqtt_max_inflight`: invalid value 'lots'"
        )),
        "{stderr}"
    );
    assert_eq!(
        lines[1],
        format!("{name}:4: unknown key `max_topic_level` (did you mean `max_topic_levels`?)")
    );
    assert!(
        lines[2].starts_with(&format!("{name}:5: `retention`: invalid value 'soon'")),
        "{stderr}"
    );
    assert_eq!(lines[3], format!("{name}: 3 problem(s)"));

    // Valid values, but files named in it that do not load: found too, at the naming key.
    let file = write(
        dir.path(),
        "files.toml",
        "principals = \"auth.toml\"\nmqtts_addr = \"127.0.0.1:0\"\n\
         tls_cert = \"missing.pem\"\ntls_key = \"missing.key\"\n\
         cluster_url = \"nats://127.0.0.1:4222\"\n",
    );
    let (code, _, stderr) = run(dir.path(), &["check-config", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    let name = file.display().to_string();
    // The principals file's own parse error spans lines (it quotes auth.toml's line 2).
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with(&name))
        .collect();
    assert_eq!(problems.len(), 4, "{stderr}");
    assert!(
        problems[0].starts_with(&format!("{name}:1: `principals`: --principals auth.toml: ")),
        "{stderr}"
    );
    assert!(stderr.contains("2 | name = 7"), "{stderr}");
    assert!(
        problems[1].starts_with(&format!("{name}:3: `tls_cert`: "))
            && problems[1].contains("missing.pem"),
        "{stderr}"
    );
    assert!(
        problems[2].starts_with(&format!(
            "{name}:5: `cluster_url`: --cluster-url needs a postgres://"
        )),
        "{stderr}"
    );
    assert_eq!(problems[3], format!("{name}: 3 problem(s)"));
}

/// A NATS key file that cannot be used is named at its own key, with what is wrong with it.
#[test]
fn check_config_names_a_nats_key_file_that_does_not_load_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "nats.creds", "not a credentials file\n");
    let file = write(
        dir.path(),
        "cluster.toml",
        "database_url = \"postgres://retaind@127.0.0.1/retaind\"\n\
         cluster_url = \"nats://127.0.0.1:4222\"\n\
         cluster_creds = \"nats.creds\"\n",
    );
    let (code, _, stderr) = run(dir.path(), &["check-config", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    let name = file.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{name}:3: `cluster_creds`: --cluster-creds nats.creds: no user JWT"
        )),
        "{stderr}"
    );
}

/// `--proxy-protocol` naming a listener that is off, and a proxy source that is not an
/// address: each reported at its own key.
#[test]
fn check_config_reports_proxy_protocol_settings_that_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let off = write(
        dir.path(),
        "off.toml",
        "mqtt_addr = \"127.0.0.1:0\"\nproxy_protocol = [\"mqtt\", \"mqtts\"]\n",
    );
    let (code, _, stderr) = run(dir.path(), &["check-config", off.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    let name = off.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{name}:2: `proxy_protocol`: --proxy-protocol names mqtts, which is off: give \
             --mqtts-addr or leave it out"
        )),
        "{stderr}"
    );
    let bad = write(
        dir.path(),
        "bad.toml",
        "proxy_protocol = [\"http\"]\nproxy_protocol_from = [\"10.0.0.0/8\", \"lb.lan\"]\n",
    );
    let (code, _, stderr) = run(dir.path(), &["check-config", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("\"lb.lan\" is not an address or a network"),
        "{stderr}"
    );
}

#[test]
fn check_config_accepts_the_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/retaind.toml");
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(dir.path(), &["check-config", example.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), format!("{}: OK", example.display()));
}

#[test]
fn a_server_with_a_bad_file_does_not_start_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "bad.toml",
        "http_addr = \"127.0.0.1:0\"\nmqtt_addr = \"127.0.0.1:0\"\n\
         database_url = \"sqlite://data/r.db\"\nmax_payload_bytes = -1\nmqtt_adr = \"x\"\n",
    );
    let (code, stdout, stderr) = run(dir.path(), &["--config-file", "bad.toml"]);
    assert_ne!(code, 0);
    assert!(!stdout.contains("HTTP API on"), "{stdout}");
    // Shapes first (an unknown key), then values: the first pass's problems stop it.
    assert!(
        stderr.contains("line 5: unknown key `mqtt_adr` (did you mean `mqtt_addr`?)"),
        "{stderr}"
    );
    write(
        dir.path(),
        "bad.toml",
        "http_addr = \"127.0.0.1:0\"\nmqtt_addr = \"127.0.0.1:0\"\n\
         database_url = \"sqlite://data/r.db\"\nmax_payload_bytes = -1\n",
    );
    let (code, _, stderr) = run(dir.path(), &["--config-file", "bad.toml"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("line 4: `max_payload_bytes`: invalid value '-1'"),
        "{stderr}"
    );
    assert!(!dir.path().join("data/r.db").exists(), "nothing was opened");
}

/// `--config` is the old name of `--principals`: it still loads the principals, and says so.
#[tokio::test]
async fn the_old_config_flag_still_loads_principals_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "auth.toml", &principals());
    let server = start(
        dir.path(),
        &[
            "--config",
            "auth.toml",
            "--http-addr",
            "127.0.0.1:0",
            "--mqtt-addr",
            "127.0.0.1:0",
            "--database-url",
            "sqlite://r.db",
        ],
        &[],
    )
    .await;
    let anonymous = reqwest::get(format!("http://{}/retainedMessage/a", server.http))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(stored(server.http, "a").await, 404);
    let log = std::fs::read_to_string(&server.stderr).unwrap();
    assert!(
        log.contains("--config (RETAIND_CONFIG) is the old name of --principals"),
        "{log}"
    );
    // Both at once is a mistake, not a choice between them.
    let (code, _, stderr) = run(
        dir.path(),
        &["--config", "auth.toml", "--principals", "auth.toml"],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}
