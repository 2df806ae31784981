//! MQTT authentication and authorization with principals from a `--principals` file: CONNECT
//! credentials and client ids, SUBSCRIBE and PUBLISH permissions, and `iot:Receive` filtering of
//! live and retained messages. Every refusal is checked for its reason code and for leaving the
//! store unchanged.

mod common;

use std::time::{Duration, Instant};

use common::mqtt::raw::{Raw, RawPacket, build};
use common::mqtt::within;
use common::{Backend, TestApp, fresh_db, spawn_app_with, test_config};

const PASSWORD: &str = "s3cret-device";
const ADMIN_PASSWORD: &str = "admin-pass";

/// A device may use `devices/<its client id>/...` and read `shared/...` except
/// `shared/secret`; it may connect only as `dev1`. An admin may do everything.
fn config_toml() -> String {
    let device = retaind::auth::hash_password(PASSWORD);
    let admin = retaind::auth::hash_password(ADMIN_PASSWORD);
    format!(
        r#"
[[principals]]
name = "device"
mqtt_username = "device"
mqtt_password_hash = "{device}"

[[principals.statements]]
effect = "Allow"
actions = ["iot:Connect"]
resources = ["client/dev1"]

[[principals.statements]]
effect = "Allow"
actions = ["iot:Publish", "iot:RetainPublish", "iot:Receive"]
resources = ["topic/devices/${{iot:ClientId}}/#"]

[[principals.statements]]
effect = "Allow"
actions = ["iot:Publish", "iot:Receive"]
resources = ["topic/shared/#"]

[[principals.statements]]
effect = "Allow"
actions = ["iot:Subscribe"]
resources = ["topicfilter/devices/${{iot:ClientId}}/#", "topicfilter/shared/#"]

[[principals.statements]]
effect = "Deny"
actions = ["iot:Receive"]
resources = ["topic/shared/secret"]

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

async fn app() -> (TestApp, tempfile::TempDir) {
    app_with(|_| {}).await
}

async fn app_with(
    edit: impl FnOnce(&mut retaind::app::ServeConfig),
) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.toml");
    std::fs::write(&path, config_toml()).unwrap();
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.principals = Some(path);
    edit(&mut config);
    (spawn_app_with(db, config).await, dir)
}

const V5: Option<&[u8]> = Some(&[]);

async fn login(app: &TestApp, id: &str, v5: bool, user: &str, password: &str) -> (Raw, RawPacket) {
    let props = if v5 { V5 } else { None };
    let connect = build::connect_with_login(id, props, user, password.as_bytes());
    Raw::connect(app, &connect).await
}

/// The CONNACK's return code (3.1.1) or reason code (5): the second byte of either.
fn connack_code(ack: &RawPacket) -> u8 {
    ack.body[1]
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_0x04_and_0x86() {
    let (app, _dir) = app().await;
    let (_, v3) = login(&app, "dev1", false, "device", "wrong").await;
    assert_eq!(connack_code(&v3), 0x04);
    let (_, v5) = login(&app, "dev1", true, "device", "wrong").await;
    assert_eq!(connack_code(&v5), 0x86);
    let (_, unknown) = login(&app, "dev1", true, "nobody", PASSWORD).await;
    assert_eq!(connack_code(&unknown), 0x86);
}

#[tokio::test]
async fn no_credentials_are_refused_with_0x05_and_0x87() {
    let (app, _dir) = app().await;
    let (_, v3) = Raw::connect(&app, &build::connect("dev1", true, 60, None)).await;
    assert_eq!(connack_code(&v3), 0x05);
    let (_, v5) = Raw::connect(&app, &build::connect("dev1", true, 60, V5)).await;
    assert_eq!(connack_code(&v5), 0x87);
}

/// A client id's turns to connect (`--mqtt-connect-rate-per-client-id`) are taken only by
/// CONNECTs that may connect with it: refusals for credentials use none, so nobody can keep a
/// device out by sending CONNECTs with its client id.
#[tokio::test]
async fn refusals_for_credentials_use_up_none_of_a_client_ids_turns() {
    let (app, _dir) = app_with(|c| c.mqtt_connect_rate_per_client_id = 1.0).await;
    let (_, v3) = login(&app, "dev1", false, "device", "wrong").await;
    assert_eq!(connack_code(&v3), 0x04);
    let (_, v5) = login(&app, "dev1", true, "device", "wrong-too").await;
    assert_eq!(connack_code(&v5), 0x86);
    let (_, none) = Raw::connect(&app, &build::connect("dev1", true, 60, V5)).await;
    assert_eq!(connack_code(&none), 0x87);
    let (_, ok) = login(&app, "dev1", true, "device", PASSWORD).await;
    assert_eq!(connack_code(&ok), 0x00);

    let page = app.running.as_ref().unwrap().broker.metrics().render();
    let refused = |reason: &str| {
        common::metric_value(
            &page,
            &format!("retaind_mqtt_connects_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("bad_credentials"), 2.0);
    assert_eq!(refused("not_authorized"), 1.0);
    assert!(
        !page.contains("retaind_mqtt_connects_paced_total"),
        "let in at once: {page}"
    );
}

/// `--mqtt-connect-rate-per-principal`: a principal's CONNECTs beyond its rate (2 a second,
/// in bursts of two) wait their turn, up to 2 s, and past that are refused with 0x9F, whatever
/// their client ids; another principal's are let in at once.
#[tokio::test]
async fn a_principals_connects_beyond_its_rate_wait_their_turn_and_others_do_not() {
    let (app, _dir) = app_with(|c| c.mqtt_connect_rate_per_principal = 2.0).await;
    // Its password checked once, so that the burst below arrives together.
    let (_first, ack) = login(&app, "admin-0", true, "admin", ADMIN_PASSWORD).await;
    assert_eq!(connack_code(&ack), 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let burst = (1..=7).map(|i| {
        let app = &app;
        async move {
            let id = format!("admin-{i}");
            login(app, &id, true, "admin", ADMIN_PASSWORD).await
        }
    });
    let (results, (_device, device_ack)) = tokio::join!(
        futures_util::future::join_all(burst),
        login(&app, "dev1", true, "device", PASSWORD)
    );
    assert_eq!(connack_code(&device_ack), 0);
    let mut codes: Vec<u8> = results.iter().map(|(_, ack)| connack_code(ack)).collect();
    codes.sort_unstable();
    // Two at once, four at 0.5, 1, 1.5 and 2 s, the seventh 2.5 s off: refused.
    assert_eq!(codes, [0, 0, 0, 0, 0, 0, 0x9F]);

    let page = app.running.as_ref().unwrap().broker.metrics().render();
    let value = |series: &str| common::metric_value(&page, series);
    assert_eq!(
        value("retaind_mqtt_connects_paced_total{rate=\"principal\"}"),
        4.0,
        "the device's CONNECT was not paced"
    );
    assert_eq!(
        value("retaind_mqtt_connects_refused_total{reason=\"principal_rate\"}"),
        1.0
    );
    app.until_connections(8).await;
}

/// A CONNECT refused for its principal's rate takes no turn of its client id's: once the
/// principal has room again, the device gets in at once. Before, the client id's turn was
/// taken first and kept, so a device retrying while its principal was over its rate ran up a
/// debt on its own client id and was then held back (or refused) though it never connected.
#[tokio::test]
async fn a_connect_refused_for_its_principals_rate_takes_no_turn_of_its_client_ids() {
    let (app, _dir) = app_with(|c| {
        c.mqtt_connect_rate_per_principal = 1.0;
        // A turn every 4 s: a turn kept would still be owed when the principal has room.
        c.mqtt_connect_rate_per_client_id = 0.25;
    })
    .await;
    // Its password checked once, so that the CONNECTs below are answered at once.
    let (_first, ack) = login(&app, "admin-0", true, "admin", ADMIN_PASSWORD).await;
    assert_eq!(connack_code(&ack), 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Three CONNECTs of the principal at once take its turns for the next 2 s.
    let server = app.mqtt_addr;
    let burst: Vec<_> = (1..=3)
        .map(|i| {
            let id = format!("admin-{i}");
            let connect = build::connect_with_login(&id, V5, "admin", ADMIN_PASSWORD.as_bytes());
            tokio::spawn(async move { Raw::connect_addr(server, &connect).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, refused) = login(&app, "x-1", true, "admin", ADMIN_PASSWORD).await;
    assert_eq!(
        connack_code(&refused),
        0x9F,
        "its principal's turn is 3 s off"
    );
    let mut held = Vec::new();
    for attempt in burst {
        let (raw, ack) = attempt.await.unwrap();
        assert_eq!(connack_code(&ack), 0);
        held.push(raw);
    }

    // The principal has room again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = std::time::Instant::now();
    let (_x, ack) = login(&app, "x-1", true, "admin", ADMIN_PASSWORD).await;
    assert_eq!(connack_code(&ack), 0);
    let page = app.running.as_ref().unwrap().broker.metrics().render();
    let value = |series: &str| common::metric_value(&page, series);
    // The series appears with the first CONNECT held for its client id's turn.
    let paced = "retaind_mqtt_connects_paced_total{rate=\"client_id\"}";
    assert!(
        !page.contains(paced),
        "held for its client id's turn: in after {:?}",
        asked.elapsed()
    );
    assert_eq!(
        value("retaind_mqtt_connects_refused_total{reason=\"principal_rate\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_client_id_the_policy_does_not_allow_is_refused() {
    let (app, _dir) = app().await;
    let (_, v5) = login(&app, "dev2", true, "device", PASSWORD).await;
    assert_eq!(connack_code(&v5), 0x87);
    let (_, v3) = login(&app, "dev2", false, "device", PASSWORD).await;
    assert_eq!(connack_code(&v3), 0x05);
    let (_, ok) = login(&app, "dev1", true, "device", PASSWORD).await;
    assert_eq!(connack_code(&ok), 0x00);
}

#[tokio::test]
async fn a_denied_subscription_gets_a_failure_code_and_allowed_ones_are_granted() {
    let (app, _dir) = app().await;
    let (mut v5, _) = login(&app, "dev1", true, "device", PASSWORD).await;
    v5.send(&build::subscribe(1, "other/#", 1, V5)).await;
    assert_eq!(v5.expect(9).await.body.last(), Some(&0x87));
    v5.send(&build::subscribe(2, "devices/dev1/#", 1, V5)).await;
    assert_eq!(v5.expect(9).await.body.last(), Some(&0x01));
    // A filter wider than the policy's is not covered by it.
    v5.send(&build::subscribe(3, "devices/#", 1, V5)).await;
    assert_eq!(v5.expect(9).await.body.last(), Some(&0x87));

    let (mut v3, _) = login(&app, "dev1", false, "device", PASSWORD).await;
    v3.send(&build::subscribe(1, "other/#", 1, None)).await;
    assert_eq!(v3.expect(9).await.body.last(), Some(&0x80));
}

#[tokio::test]
async fn a_denied_publish_gets_0x87_and_stores_nothing() {
    let (app, _dir) = app().await;
    let (mut c, _) = login(&app, "dev1", true, "device", PASSWORD).await;
    c.send(&build::publish("other/x", 1, true, false, 7, V5, b"no"))
        .await;
    let ack = c.expect(4).await;
    assert_eq!(ack.ack_reason(), 0x87);
    // Publishing to shared/ is allowed, retaining there is not.
    c.send(&build::publish("shared/x", 1, true, false, 8, V5, b"no"))
        .await;
    assert_eq!(c.expect(4).await.ack_reason(), 0x87);
    // Its own topics are fine, retained too; the acks come in order.
    c.send(&build::publish(
        "devices/dev1/state",
        1,
        true,
        false,
        9,
        V5,
        b"ok",
    ))
    .await;
    assert_eq!(c.expect(4).await.ack_reason(), 0x00);
    assert_eq!(app.stored_payload("other/x").await, None);
    assert_eq!(app.stored_payload("shared/x").await, None);
    assert_eq!(
        app.stored_payload("devices/dev1/state").await.as_deref(),
        Some(&b"ok"[..])
    );
}

#[tokio::test]
async fn a_denied_v3_publish_is_dropped_and_stores_nothing() {
    let (app, _dir) = app().await;
    let (mut c, _) = login(&app, "dev1", false, "device", PASSWORD).await;
    c.send(&build::publish("other/x", 1, true, false, 7, None, b"no"))
        .await;
    // 3.1.1 cannot say why: the publish is acknowledged and goes nowhere.
    c.expect(4).await;
    c.send(&build::publish(
        "devices/dev1/s",
        1,
        true,
        false,
        8,
        None,
        b"ok",
    ))
    .await;
    c.expect(4).await;
    assert_eq!(app.stored_payload("other/x").await, None);
    assert_eq!(
        app.stored_payload("devices/dev1/s").await.as_deref(),
        Some(&b"ok"[..])
    );
}

#[tokio::test]
async fn messages_the_principal_may_not_receive_never_arrive_retained_or_live() {
    let (app, _dir) = app().await;
    let (mut admin, ack) = login(&app, "admin-1", true, "admin", ADMIN_PASSWORD).await;
    assert_eq!(connack_code(&ack), 0x00);
    for (t, p, id) in [
        ("shared/secret", "hidden", 1),
        ("shared/open", "visible", 2),
    ] {
        admin
            .send(&build::publish(t, 1, true, false, id, V5, p.as_bytes()))
            .await;
        assert_eq!(admin.expect(4).await.ack_reason(), 0x00);
    }
    let (mut dev, _) = login(&app, "dev1", true, "device", PASSWORD).await;
    dev.send(&build::subscribe(1, "shared/#", 1, V5)).await;
    dev.expect(9).await;
    // Retained on subscribe: only what it may receive.
    let first = dev.expect(3).await.publish(true);
    assert_eq!((first.topic.as_str(), first.retain), ("shared/open", true));
    dev.send(&build::ack(0x40, first.pkid)).await;
    // Live: the secret one is skipped; the marker after it proves nothing else was queued.
    for (t, p, id) in [
        ("shared/secret", "live hidden", 3),
        ("shared/open", "marker", 4),
    ] {
        admin
            .send(&build::publish(t, 1, false, false, id, V5, p.as_bytes()))
            .await;
        admin.expect(4).await;
    }
    let next = dev.expect(3).await.publish(true);
    assert_eq!(
        (
            next.topic.as_str(),
            String::from_utf8(next.payload).unwrap()
        ),
        ("shared/open", "marker".to_owned())
    );
}

/// 64 CONNECTs guessing passwords at once: no more password checks (argon2, 19 MiB
/// each) run at once than the broker's limit, the source is soon refused without a check
/// (0x9F), and a client with the right password, from another address, still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_passwords_runs_a_bounded_number_of_checks_and_a_good_client_gets_in() {
    let (app, _dir) = app().await;
    let broker = app.running.as_ref().unwrap().broker.clone();
    let flood: Vec<_> = (0..64)
        .map(|i| {
            let guess = format!("guess {i}");
            let connect =
                build::connect_with_login(&format!("x{i}"), V5, "device", guess.as_bytes());
            let server = app.mqtt_addr;
            tokio::spawn(async move {
                let mut raw = Raw::open_from(server, [127, 0, 0, 1].into()).await;
                raw.send(&connect).await;
                raw.until_closed().await
            })
        })
        .collect();
    let good = build::connect_with_login("dev1", V5, "device", PASSWORD.as_bytes());
    let mut raw = Raw::open_from(app.mqtt_addr, [127, 0, 0, 2].into()).await;
    raw.send(&good).await;
    let ack = raw.expect(2).await;
    assert_eq!(connack_code(&ack), 0x00, "{ack:?}");
    let mut codes = Vec::new();
    for attempt in flood {
        let got = attempt.await.unwrap();
        assert_eq!(got.len(), 1, "one CONNACK, then closed: {got:?}");
        codes.push(connack_code(&got[0]));
    }
    assert!(
        codes.iter().all(|c| [0x86, 0x9F, 0x89].contains(c)),
        "{codes:x?}"
    );
    assert!(
        codes.contains(&0x9F),
        "the source ran out of budget: {codes:x?}"
    );
    let stats = broker.password_checks();
    assert!(stats.peak >= 1, "{stats:?}");
    assert!(stats.peak <= stats.limit, "{stats:?}");
    assert_eq!(stats.running, 0, "{stats:?}");
}

/// A wave of CONNECTs with one wrong password, after a restart (nothing remembered): the
/// first few are checked, the rest are answered from memory once they get a slot, each with
/// the refusal's delay (1 s). They give their slots back before that delay, so a device with
/// the right password, waiting behind them, is checked at once. Before, each held its slot
/// through the delay: the wave held every slot for seconds, and the device was refused as
/// Server busy (0x89) after its 2 s wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_answered_from_memory_do_not_hold_up_other_checks() {
    let (app, _dir) = app().await;
    let broker = app.running.as_ref().unwrap().broker.clone();
    let limit = broker.password_checks().limit;
    let wave: Vec<_> = (0..6 * limit)
        .map(|i| {
            let connect = build::connect_with_login(&format!("w{i}"), V5, "device", b"wrong");
            let server = app.mqtt_addr;
            tokio::spawn(async move {
                let mut raw = Raw::open_from(server, [127, 0, 0, 7].into()).await;
                raw.send(&connect).await;
                connack_code(&raw.expect(2).await)
            })
        })
        .collect();
    within("the wave to be answered from memory", async {
        while broker.password_checks().recalled == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let asked = Instant::now();
    assert_eq!(
        login_from(&app, [127, 0, 0, 8], "root", "admin", ADMIN_PASSWORD).await,
        0x00,
        "the right password, behind the wave"
    );
    let waited = asked.elapsed();
    for attempt in wave {
        assert_eq!(attempt.await.unwrap(), 0x86);
    }
    // Its own check, not the wave's delays (1 s each).
    assert!(waited < Duration::from_secs(1), "{waited:?}");
}

/// Logs in from `source` (any of 127.0.0.0/8) over MQTT 5; the CONNACK's reason code.
async fn login_from(app: &TestApp, source: [u8; 4], id: &str, user: &str, password: &str) -> u8 {
    let mut raw = Raw::open_from(app.mqtt_addr, source.into()).await;
    raw.send(&build::connect_with_login(
        id,
        V5,
        user,
        password.as_bytes(),
    ))
    .await;
    connack_code(&raw.expect(2).await)
}

/// Logs in `n` times at once from `source` with a different wrong password each time.
async fn guesses_from(app: &TestApp, source: [u8; 4], n: usize, tag: &str) -> Vec<u8> {
    let guesses = (0..n).map(|i| {
        let password = format!("{tag} {i}");
        async move { login_from(app, source, &format!("{tag}{i}"), "device", &password).await }
    });
    futures_util::future::join_all(guesses).await
}

/// A device retrying a wrong password is refused every time (0x86) but costs one
/// argon2 run: the rest are answered from the refused credential's digest.
#[tokio::test]
async fn a_repeated_wrong_password_is_checked_once() {
    let (app, _dir) = app().await;
    let broker = app.running.as_ref().unwrap().broker.clone();
    let source = [127, 0, 0, 5];
    assert_eq!(
        login_from(&app, source, "dev1", "device", "wrong").await,
        0x86
    );
    let again = (0..3).map(|_| login_from(&app, source, "dev1", "device", "wrong"));
    let codes = futures_util::future::join_all(again).await;
    assert_eq!(codes, [0x86; 3]);
    let stats = broker.password_checks();
    assert_eq!((stats.checked, stats.recalled), (1, 3), "{stats:?}");
    // Refusals from memory do not use up the source's budget: the right password still gets
    // checked, and in.
    assert_eq!(
        login_from(&app, source, "dev1", "device", PASSWORD).await,
        0x00
    );
    assert_eq!(broker.password_checks().checked, 2);
}

/// Devices behind one NAT address: when guesses (or a misconfigured device) use up
/// the address's failure budget, a device whose password was verified before still connects,
/// without a check, while credentials not known yet are refused without one (0x9F) and a
/// known wrong one is still refused as such (0x86).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_good_device_behind_an_address_over_budget_still_connects() {
    let (app, _dir) = app().await;
    let broker = app.running.as_ref().unwrap().broker.clone();
    let nat = [127, 0, 0, 3];
    assert_eq!(
        login_from(&app, nat, "dev1", "device", PASSWORD).await,
        0x00
    );
    let guesses = guesses_from(&app, nat, 10, "guess").await;
    assert!(
        guesses.iter().all(|c| [0x86, 0x9F].contains(c)),
        "{guesses:x?}"
    );
    assert_eq!(
        login_from(&app, nat, "dev1", "device", "one more guess").await,
        0x9F,
        "the address is over its budget"
    );
    let checked = broker.password_checks().checked;
    assert_eq!(
        login_from(&app, nat, "dev1", "device", PASSWORD).await,
        0x00
    );
    assert_eq!(
        login_from(&app, nat, "dev1", "device", "guess 0").await,
        0x86
    );
    assert_eq!(
        login_from(&app, nat, "root", "admin", ADMIN_PASSWORD).await,
        0x9F,
        "a good credential never seen from here is not checked either"
    );
    assert_eq!(broker.password_checks().checked, checked, "no check ran");
    assert_eq!(
        login_from(&app, [127, 0, 0, 4], "root", "admin", ADMIN_PASSWORD).await,
        0x00,
        "other addresses are not affected"
    );
}
