//! Reloading the principals without a restart: a policy widened for HTTP and for a connected
//! MQTT client (which is not disconnected), a bad file refused with the old one left in force,
//! a removed principal's connection closed (no Will), a changed password no longer let in
//! from memory; and SIGHUP doing the same to the real binary. TLS certificates: `tests/tls.rs`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::mqtt::{Qos5, V5, connack_code, p5, v5_options, within};
use common::{Backend, TestApp, fresh_db, spawn_app_with, test_config};
use retaind::broker::Reauthorized;
use sha2::{Digest, Sha256};

const ADMIN_TOKEN: &str = "admin-token-0123456789";
const READER_TOKEN: &str = "reader-token-0123456789";

/// What the principals file says of the reader and the device, changed between reloads.
struct Policy {
    /// The reader may read `news/secret`, and the device receive it.
    secret_open: bool,
    /// The device is in the file at all, and with which password.
    device_password: Option<&'static str>,
    /// The device may publish its Will (`news/will`).
    will_open: bool,
}

/// One hash per password, so that rewriting the file does not change a principal's credentials
/// as written (a new hash of the same password would: see `same_mqtt_credentials`).
fn hash(password: &str) -> String {
    static HASHES: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
    let mut hashes = HASHES.lock().unwrap();
    hashes
        .entry(password.to_owned())
        .or_insert_with(|| retaind::auth::hash_password(password))
        .clone()
}

fn principals(policy: &Policy) -> String {
    let admin = hex::encode(Sha256::digest(ADMIN_TOKEN));
    let reader = hex::encode(Sha256::digest(READER_TOKEN));
    let watcher = hash("watcher-pw");
    let deny_secret = |action: &str| {
        if policy.secret_open {
            String::new()
        } else {
            format!(
                "[[principals.statements]]\neffect = \"Deny\"\nactions = [\"{action}\"]\n\
                 resources = [\"topic/news/secret\"]\n"
            )
        }
    };
    let device = match policy.device_password {
        None => String::new(),
        Some(password) => format!(
            r#"
[[principals]]
name = "device"
mqtt_username = "device"
mqtt_password_hash = "{hash}"
[[principals.statements]]
effect = "Allow"
actions = ["iot:Connect", "iot:Publish", "iot:RetainPublish"]
resources = ["client/device-*", "topic/news/will"]
{deny_will}[[principals.statements]]
effect = "Allow"
actions = ["iot:Subscribe", "iot:Receive"]
resources = ["topicfilter/news/#", "topic/news/*"]
{deny}"#,
            hash = hash(password),
            deny = deny_secret("iot:Receive"),
            deny_will = if policy.will_open {
                ""
            } else {
                "[[principals.statements]]\neffect = \"Deny\"\nactions = [\"iot:Publish\"]\n\
                 resources = [\"topic/news/will\"]\n"
            },
        ),
    };
    format!(
        r#"
[[principals]]
name = "admin"
api_tokens_sha256 = ["{admin}"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:*"]
resources = ["*"]

[[principals]]
name = "reader"
api_tokens_sha256 = ["{reader}"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:GetRetainedMessage"]
resources = ["*"]
{deny}
[[principals]]
name = "watcher"
mqtt_username = "watcher"
mqtt_password_hash = "{watcher}"
[[principals.statements]]
effect = "Allow"
actions = ["iot:Connect", "iot:Subscribe", "iot:Receive"]
resources = ["*"]
{device}"#,
        deny = deny_secret("iot:GetRetainedMessage"),
    )
}

const SECRET_CLOSED: Policy = Policy {
    secret_open: false,
    device_password: Some("device-pw"),
    will_open: true,
};

async fn app(dir: &Path) -> TestApp {
    let path = dir.join("auth.toml");
    std::fs::write(&path, principals(&SECRET_CLOSED)).unwrap();
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.principals = Some(path);
    spawn_app_with(db, config).await
}

fn rewrite(dir: &Path, policy: &Policy) {
    std::fs::write(dir.join("auth.toml"), principals(policy)).unwrap();
}

fn running(app: &TestApp) -> &retaind::app::Running {
    app.running.as_ref().unwrap()
}

async fn http(app: &TestApp, method: reqwest::Method, path: &str, token: &str) -> u16 {
    app.http
        .request(method, app.url(path))
        .bearer_auth(token)
        .body("payload")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn device(app: &TestApp, password: &str) -> V5 {
    let mut options = v5_options(app, "device-1");
    options.set_credentials("device", password);
    let (mut device, _) = V5::connect(options).await;
    let granted = device.subscribe("news/#", Qos5::AtLeastOnce).await;
    assert_eq!(
        granted,
        [p5::SubscribeReasonCode::Success(Qos5::AtLeastOnce)]
    );
    device
}

/// The device's options, with a Will to `news/will` ("gone", QoS 1), retained or not, with
/// `properties` (MQTT 5 Will properties) if any.
fn device_with_will(
    app: &TestApp,
    retain: bool,
    properties: Option<p5::LastWillProperties>,
) -> rumqttc::v5::MqttOptions {
    let mut options = v5_options(app, "device-1");
    options.set_credentials("device", "device-pw");
    options.set_last_will(p5::LastWill::new(
        "news/will",
        "gone",
        Qos5::AtLeastOnce,
        retain,
        properties,
    ));
    options
}

/// The watcher, subscribed to everything under `news/`.
async fn watcher(app: &TestApp) -> V5 {
    let mut options = v5_options(app, "watcher-1");
    options.set_credentials("watcher", "watcher-pw");
    let (mut watcher, _) = V5::connect(options).await;
    watcher.subscribe("news/#", Qos5::AtLeastOnce).await;
    watcher
}

/// The CONNACK code `device` gets with this password.
async fn device_connack(app: &TestApp, password: &str) -> p5::ConnectReturnCode {
    let mut options = v5_options(app, "device-2");
    options.set_credentials("device", password);
    connack_code(options).await
}

/// The admin publishes `news/secret` then `news/open` (not retained): what the device gets is
/// either both or only the second.
async fn publish_secret_then_open(app: &TestApp) {
    for topic in ["news%2Fsecret", "news%2Fopen"] {
        let status = http(
            app,
            reqwest::Method::POST,
            &format!("/topics/{topic}?qos=1"),
            ADMIN_TOKEN,
        )
        .await;
        assert_eq!(status, 200);
    }
}

/// What the watcher gets before the marker (`news/secret`, `news/open`, published now): the
/// device's Will first exactly when it was allowed (`will_open`) when it was published.
async fn will_then_marker(app: &TestApp, watcher: &mut V5, will_open: bool) {
    publish_secret_then_open(app).await;
    let expected: &[&str] = if will_open {
        &["news/will", "news/secret", "news/open"]
    } else {
        &["news/secret", "news/open"]
    };
    assert_eq!(
        topics_until_open(watcher).await,
        expected,
        "Will allowed when due: {will_open}"
    );
}

async fn topics_until_open(device: &mut V5) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let p = device.next_publish().await;
        let topic = String::from_utf8(p.topic.to_vec()).unwrap();
        got.push(topic.clone());
        if topic == "news/open" {
            return got;
        }
    }
}

#[tokio::test]
async fn a_widened_policy_holds_at_once_for_http_and_for_connected_clients() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let status = http(
        &app,
        reqwest::Method::POST,
        "/topics/news%2Fsecret?retain=true",
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(status, 200);
    let mut device = device(&app, "device-pw").await;
    // The retained message was denied to the device on subscribing; the live one too.
    publish_secret_then_open(&app).await;
    assert_eq!(topics_until_open(&mut device).await, ["news/open"]);
    assert_eq!(
        http(
            &app,
            reqwest::Method::GET,
            "/retainedMessage/news%2Fsecret",
            READER_TOKEN
        )
        .await,
        403
    );

    rewrite(
        dir.path(),
        &Policy {
            secret_open: true,
            ..SECRET_CLOSED
        },
    );
    let done = running(&app).reload().expect("the reload");
    assert_eq!(
        done.sessions,
        Reauthorized {
            kept: 1,
            disconnected: 0
        }
    );
    assert_eq!(
        http(
            &app,
            reqwest::Method::GET,
            "/retainedMessage/news%2Fsecret",
            READER_TOKEN
        )
        .await,
        200
    );
    // The same connection, not a new one, now receives it.
    publish_secret_then_open(&app).await;
    assert_eq!(
        topics_until_open(&mut device).await,
        ["news/secret", "news/open"]
    );
}

#[tokio::test]
async fn a_bad_file_is_refused_and_the_one_in_force_stays() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let mut device = device(&app, "device-pw").await;
    let file = dir.path().join("auth.toml");
    let good = principals(&Policy {
        secret_open: true,
        ..SECRET_CLOSED
    });
    let bad = [
        // Not TOML.
        (
            "not valid TOML",
            good.replace("[[principals]]", "[[principals]"),
        ),
        // An action that does not exist.
        (
            "unknown action",
            good.replace("iot:GetRetainedMessage", "iot:GetEverything"),
        ),
        // No principals: would turn authentication off.
        ("no principals", String::new()),
        // A principal's share of the offline queues that is not a count of MiB.
        (
            "negative share",
            good.replace(
                "name = \"reader\"",
                "name = \"reader\"\nmax_queue_memory_mib = -1",
            ),
        ),
        // A principal's connection limit that is not a count.
        (
            "negative connection limit",
            good.replace(
                "name = \"reader\"",
                "name = \"reader\"\nmax_connections = -1",
            ),
        ),
        // Two principals with one name.
        (
            "used by another",
            good.replace("name = \"reader\"", "name = \"admin\""),
        ),
    ];
    for (why, text) in bad {
        std::fs::write(&file, text).unwrap();
        let refused = running(&app).reload().expect_err(why).to_string();
        assert!(
            refused.contains(&file.display().to_string()),
            "{why}: {refused}"
        );
        // The old policy holds: the secret stays closed, the others work as before.
        assert_eq!(
            http(
                &app,
                reqwest::Method::GET,
                "/retainedMessage/news%2Fsecret",
                READER_TOKEN
            )
            .await,
            403,
            "{why}"
        );
        assert_eq!(
            http(
                &app,
                reqwest::Method::POST,
                "/topics/news%2Fsecret?retain=true",
                ADMIN_TOKEN
            )
            .await,
            200,
            "{why}"
        );
        publish_secret_then_open(&app).await;
        assert_eq!(topics_until_open(&mut device).await, ["news/open"], "{why}");
    }
    assert_eq!(
        device_connack(&app, "device-pw").await,
        p5::ConnectReturnCode::Success
    );
}

/// The device goes from the file: its connection closes with 0x87, its Will is not published
/// (its right to publish went with it), and it cannot connect again. Then it comes back with
/// another password: the old one, accepted before from memory, is refused.
#[tokio::test]
async fn a_removed_principal_is_disconnected_and_a_changed_password_is_not_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let mut watcher = watcher(&app).await;

    let options = device_with_will(&app, false, None);
    // Its password is now known to the process: another CONNECT with it would be let in from
    // memory, without a check.
    let (mut device, _) = V5::connect(options).await;

    rewrite(
        dir.path(),
        &Policy {
            device_password: None,
            ..SECRET_CLOSED
        },
    );
    let done = running(&app).reload().expect("the reload");
    assert_eq!(
        done.sessions,
        Reauthorized {
            kept: 1,
            disconnected: 1
        }
    );
    let closed = device.until_closed().await;
    assert!(
        matches!(
            &closed,
            rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect {
                reason_code: p5::DisconnectReasonCode::NotAuthorized,
                ..
            })
        ),
        "{closed:?}"
    );
    assert_ne!(
        device_connack(&app, "device-pw").await,
        p5::ConnectReturnCode::Success
    );
    // No Will: the watcher gets the marker and nothing before it.
    publish_secret_then_open(&app).await;
    assert_eq!(
        topics_until_open(&mut watcher).await,
        ["news/secret", "news/open"]
    );

    rewrite(
        dir.path(),
        &Policy {
            device_password: Some("new-device-pw"),
            ..SECRET_CLOSED
        },
    );
    running(&app).reload().expect("the reload");
    assert_eq!(
        device_connack(&app, "device-pw").await,
        p5::ConnectReturnCode::BadUserNamePassword
    );
    assert_eq!(
        device_connack(&app, "new-device-pw").await,
        p5::ConnectReturnCode::Success
    );
}

/// A Will is judged when it is published, not only when its connection ends: the device's
/// connection drops with a Will delayed 2 s, and a reload meanwhile takes away its right to
/// publish there. Nothing is published; with the right kept, the same Will is.
#[tokio::test]
async fn a_delayed_will_is_not_published_once_a_reload_took_away_its_right() {
    for will_open in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path()).await;
        let mut watcher = watcher(&app).await;

        let delayed = common::mqtt::delayed_will(2);
        let mut options = device_with_will(&app, false, Some(delayed));
        options.set_connect_properties(p5::ConnectProperties {
            session_expiry_interval: Some(60),
            ..Default::default()
        });
        let (device, _) = V5::connect(options).await;
        // Gone without a DISCONNECT: the Will is due in 2 s, judged allowed as the connection
        // ended (before the reload).
        drop(device);
        within("the device's connection to end", async {
            while running(&app).broker.connections() > 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        rewrite(
            dir.path(),
            &Policy {
                will_open,
                ..SECRET_CLOSED
            },
        );
        let done = running(&app).reload().expect("the reload");
        assert_eq!(done.sessions.disconnected, 0, "the device still stands");
        tokio::time::sleep(Duration::from_secs(3)).await;
        will_then_marker(&app, &mut watcher, will_open).await;
    }
}

/// A retained Will that the database cannot store is tried again, and judged again at each
/// try: a reload while the database is away that takes away the device's right to publish it
/// means it is never stored nor delivered; with the right kept, it arrives once the database
/// is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_waiting_for_the_database_is_judged_again_at_each_try() {
    use common::proxy::{Mode, Proxy};
    for will_open in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.toml");
        std::fs::write(&path, principals(&SECRET_CLOSED)).unwrap();
        let db = fresh_db(Backend::Postgres).await;
        let proxy = Proxy::start(common::postgres_host_port(&db.url)).await;
        let mut config = test_config(&common::postgres_url_via(&db.url, proxy.addr));
        config.principals = Some(path);
        config.store_timeout = Duration::from_secs(1);
        let app = spawn_app_with(db, config).await;
        let mut watcher = watcher(&app).await;

        let (device, _) = V5::connect(device_with_will(&app, true, None)).await;
        proxy.fail(Mode::Refuse);
        drop(device);
        common::until_store_unavailable(&app, "write batch", 1.0).await;
        rewrite(
            dir.path(),
            &Policy {
                will_open,
                ..SECRET_CLOSED
            },
        );
        running(&app).reload().expect("the reload");
        proxy.restore();
        // The Will's next try comes within its longest wait (5 s) of the last failure.
        tokio::time::sleep(Duration::from_secs(7)).await;
        will_then_marker(&app, &mut watcher, will_open).await;
        let stored = app.stored_payload("news/will").await;
        assert_eq!(stored.is_some(), will_open, "stored: {stored:?}");
    }
}

/// SIGHUP to the real binary: the reload it triggers is logged, and so is a refused one.
#[tokio::test]
async fn sighup_reloads_the_principals_of_the_running_binary() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.toml");
    std::fs::write(&file, principals(&SECRET_CLOSED)).unwrap();
    let log = dir.path().join("stderr.log");
    let (mut child, http_addr) = start_binary(dir.path(), &file, &log).await;
    let client = reqwest::Client::new();
    let get = |token: &'static str| {
        let request = client
            .get(format!("http://{http_addr}/retainedMessage/news%2Fsecret"))
            .bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let put = client
        .post(format!(
            "http://{http_addr}/topics/news%2Fsecret?retain=true"
        ))
        .bearer_auth(ADMIN_TOKEN)
        .body("s");
    assert_eq!(put.send().await.unwrap().status(), 200);
    assert_eq!(get(READER_TOKEN).await, 403);

    std::fs::write(
        &file,
        principals(&Policy {
            secret_open: true,
            ..SECRET_CLOSED
        }),
    )
    .unwrap();
    hangup(&child);
    wait_for_log(
        &log,
        "reloaded: the principals and TLS files are in force",
        1,
    )
    .await;
    assert_eq!(get(READER_TOKEN).await, 200);

    std::fs::write(&file, "[[principals]\n").unwrap();
    hangup(&child);
    wait_for_log(&log, "reload refused: the configuration in force stays", 1).await;
    assert_eq!(get(READER_TOKEN).await, 200);
    assert_eq!(get(ADMIN_TOKEN).await, 200);
    child.kill().await.unwrap();
}

async fn start_binary(
    dir: &Path,
    principals: &Path,
    log: &PathBuf,
) -> (tokio::process::Child, std::net::SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_retaind"))
        .args(["--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"])
        .arg("--principals")
        .arg(principals)
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.join("r.db").display()))
        .env_remove("RETAIND_CONFIG_FILE")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = within("retaind to start", async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("retaind exited at start");
            if let Some(addr) = line.strip_prefix("retaind: HTTP API on http://") {
                return addr.parse().unwrap();
            }
        }
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

fn hangup(child: &tokio::process::Child) {
    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
}

async fn wait_for_log(log: &Path, line: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap();
        if text.matches(line).count() >= times {
            return;
        }
        assert!(Instant::now() < deadline, "no {line:?} in the log:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
