//! The watch of the retained set (`GET /retainedMessage-watch`, issue 17) against the real
//! server, on SQLite and on Postgres: a snapshot then live changes, resuming by Last-Event-ID
//! across many changes, a change on one node seen on another, expiry events, policy filtering,
//! a stalled reader and what its watch holds, malformed requests, progress and keep-alives, a
//! slow database, the caps, and shutdown.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::sse::{Sse, SseEvent};
use common::{
    Backend, FreshDb, TestApp, encode, fresh_db, metric_value, spawn_app, spawn_app_with,
    test_config,
};
use retaind::store::purge_delay;
use serde_json::Value;
use sha2::{Digest, Sha256};

for_each_backend!(
    a_snapshot_then_live_changes,
    without_a_snapshot_a_watch_starts_at_the_present,
    resuming_by_last_event_id_loses_and_repeats_nothing_across_10000_changes,
    snapshots_taken_while_writes_go_on_meet_the_live_changes_exactly,
    an_expiry_is_an_event,
    a_watcher_sees_only_what_its_policy_lets_it_get,
    a_reload_that_takes_a_token_away_ends_the_watches_opened_with_it,
    changes_the_caller_may_not_read_do_not_hold_its_progress_back,
    a_reload_that_changes_an_access_keys_secret_ends_the_watches_it_signed,
    a_stalled_reader_does_not_block_publishers_and_gets_resync,
    malformed_parameters_are_refused_and_change_nothing,
    an_idle_watch_gets_progress_and_keep_alives,
    a_revision_below_the_compaction_point_gets_resync,
    a_revision_above_any_the_database_reached_gets_resync,
    shutdown_ends_the_streams,
    a_reader_that_stops_reading_leaves_its_watch_holding_the_bound,
);

/// Held by the tests that need the Postgres server's settled point to follow their own writes
/// and by the one that holds it back: the point is the whole server's.
static SETTLED_POINT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn open(app: &TestApp, query: &str) -> Sse {
    Sse::new(app.get(&format!("/retainedMessage-watch{query}")).await)
}

async fn open_after(app: &TestApp, query: &str, last_event_id: &str) -> Sse {
    let res = app
        .http
        .get(app.url(&format!("/retainedMessage-watch{query}")))
        .header("Last-Event-ID", last_event_id)
        .send()
        .await
        .expect("HTTP request");
    Sse::new(res)
}

async fn retain(app: &TestApp, topic: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    let res = app
        .publish(format!("/topics/{}?retain=true&qos=1", encode(topic)), body)
        .await;
    assert_eq!(res.status(), 200);
    res
}

async fn revision_of(app: &TestApp, topic: &str) -> i64 {
    let got = app
        .get_json(&format!("/retainedMessage/{}", encode(topic)))
        .await;
    got["revision"].as_i64().expect("a revision")
}

/// Waits (at most 30 s) until the store's settled revision, the one a watch starts from, is at
/// least `revision`. On Postgres the point is the whole server's: any other transaction, of
/// another test or another database, can hold it below a write that was just acknowledged, and
/// a snapshot then rightly gives that write after `synced`, as a change.
async fn settled_past(app: &TestApp, revision: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while app.store().settled().await.unwrap() < revision {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the settled revision stayed below {revision} for 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn payload(event: &SseEvent) -> String {
    use base64::Engine;
    let raw = event.json()["payload"].as_str().unwrap().to_owned();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

async fn a_snapshot_then_live_changes(backend: Backend) {
    let app = spawn_app(backend).await;
    retain(&app, "a/1", "one").await;
    retain(&app, "a/2", "two").await;
    retain(&app, "b/1", "other").await;
    let a1 = revision_of(&app, "a/1").await;
    settled_past(&app, revision_of(&app, "a/2").await).await;

    let mut watch = open(&app, "?topicFilter=a%2F%23").await;
    let first = watch.expect().await;
    assert_eq!((first.event.as_str(), first.id.as_deref()), ("put", None));
    assert_eq!(first.json()["topic"], "a/1");
    assert_eq!(first.json()["revision"], a1);
    assert_eq!(first.json()["writer"]["clientId"], "HTTP");
    assert_eq!(payload(&first), "one");
    let second = watch.expect().await;
    assert_eq!(second.json()["topic"], "a/2");
    let synced = watch.expect().await;
    assert_eq!(synced.event, "synced");
    let at = synced.revision();
    assert_eq!(synced.id, Some(at.to_string()));
    assert!(at >= revision_of(&app, "a/2").await);

    retain(&app, "b/2", "not watched").await;
    retain(&app, "a/3", "three").await;
    retain(&app, "a/1", "").await; // a delete
    let put = watch.expect().await;
    assert_eq!(put.event, "put");
    assert_eq!(put.json()["topic"], "a/3");
    assert_eq!(payload(&put), "three");
    assert_eq!(put.id, Some(revision_of(&app, "a/3").await.to_string()));
    assert!(put.revision() > at);
    let delete = watch.expect().await;
    assert_eq!(delete.event, "delete");
    assert_eq!(delete.json()["topic"], "a/1");
    assert_eq!(delete.json()["writer"]["clientId"], "HTTP");
    assert!(delete.revision() > put.revision());
    assert_eq!(delete.id, Some(delete.revision().to_string()));
    app.stop().await;
}

/// `snapshot=false`: `synced` first, at the present revision, then only what changes after.
async fn without_a_snapshot_a_watch_starts_at_the_present(backend: Backend) {
    // On a quiet server: not beside the test below, whose open transaction holds the
    // settled point back on purpose.
    let _quiet = SETTLED_POINT.lock().await;
    let app = spawn_app(backend).await;
    retain(&app, "n/1", "before").await;
    let before = revision_of(&app, "n/1").await;

    let mut watch = open(&app, "?topicFilter=n%2F%23&snapshot=false").await;
    let synced = watch.expect().await;
    assert_eq!(synced.event, "synced", "no snapshot comes first");
    assert!(synced.revision() >= before);
    assert_eq!(synced.id, Some(synced.revision().to_string()));

    retain(&app, "n/2", "after").await;
    retain(&app, "n/1", "changed").await;
    let first = watch.expect().await;
    assert_eq!(
        (first.event.as_str(), &first.json()["topic"]),
        ("put", &Value::from("n/2"))
    );
    let second = watch.expect().await;
    assert_eq!(second.json()["topic"], "n/1");
    assert_eq!(payload(&second), "changed");
    assert_eq!(second.revision(), revision_of(&app, "n/1").await);
    assert!(first.revision() > synced.revision());
    app.stop().await;
}

/// Publishes 10,000 changes over 500 topics (puts, and a delete in every tenth round) while a
/// watcher reads, drops its connection every 1,000 events or so and comes back with the last
/// id it saw. Ids must only grow across reconnections, and the mirror it builds must end equal
/// to the store.
async fn resuming_by_last_event_id_loses_and_repeats_nothing_across_10000_changes(
    backend: Backend,
) {
    const TOPICS: usize = 500;
    const ROUNDS: usize = 20;
    let app = std::sync::Arc::new(spawn_app(backend).await);
    let mut watch = open(&app, "?topicFilter=load%2F%23").await;
    assert_eq!(watch.expect().await.event, "synced");

    let publisher = {
        let app = app.clone();
        tokio::spawn(async move {
            for round in 0..ROUNDS {
                let mut batch = tokio::task::JoinSet::new();
                for t in 0..TOPICS {
                    let app = app.clone();
                    let body = if round % 10 == 9 && t % 3 == 0 {
                        String::new()
                    } else {
                        format!("{round}")
                    };
                    batch.spawn(async move {
                        retain(&app, &format!("load/{t}"), body).await;
                    });
                    if batch.len() >= 32 {
                        batch.join_next().await.unwrap().unwrap();
                    }
                }
                while let Some(done) = batch.join_next().await {
                    done.unwrap();
                }
            }
        })
    };

    let mut mirror: BTreeMap<String, (i64, String)> = BTreeMap::new();
    let mut last_id: i64 = 0;
    let mut since_reconnect = 0;
    let mut reconnections = 0;
    let mut quiet_since = None;
    loop {
        let Some(event) = next_soon(&mut watch).await else {
            if settled(&app, &publisher, true, &mirror, &mut quiet_since).await {
                break;
            }
            continue;
        };
        quiet_since = None;
        if let Some(id) = &event.id {
            let id: i64 = id.parse().unwrap();
            assert!(id > last_id, "id {id} after {last_id}: a repeat");
            last_id = id;
        }
        match event.event.as_str() {
            "put" => {
                let topic = event.json()["topic"].as_str().unwrap().to_owned();
                mirror.insert(topic, (event.revision(), payload(&event)));
            }
            "delete" => {
                mirror.remove(event.json()["topic"].as_str().unwrap());
            }
            "progress" => {}
            other => panic!("unexpected {other} event: {}", event.data),
        }
        since_reconnect += 1;
        if since_reconnect >= 1000 {
            since_reconnect = 0;
            reconnections += 1;
            drop(watch);
            watch = open_after(&app, "?topicFilter=load%2F%23", &last_id.to_string()).await;
        }
    }
    publisher.await.unwrap();
    assert!(reconnections >= 3, "only {reconnections} reconnections");
    let app = std::sync::Arc::try_unwrap(app)
        .ok()
        .expect("the only handle");
    app.stop().await;
}

/// Fresh watches (snapshot, then changes) opened again and again while 200 topics are
/// rewritten: within each, a topic's revisions only grow (the snapshot and the changes after
/// it never give one state twice), and the last one's mirror ends equal to the store.
async fn snapshots_taken_while_writes_go_on_meet_the_live_changes_exactly(backend: Backend) {
    const TOPICS: usize = 200;
    const ROUNDS: usize = 15;
    let app = std::sync::Arc::new(spawn_app(backend).await);
    for t in 0..TOPICS {
        retain(&app, &format!("load/{t}"), "seed").await;
    }
    let publisher = {
        let app = app.clone();
        tokio::spawn(async move {
            for round in 0..ROUNDS {
                let mut batch = tokio::task::JoinSet::new();
                for t in 0..TOPICS {
                    let app = app.clone();
                    let body = if t % 7 == round % 7 {
                        String::new()
                    } else {
                        format!("{round}")
                    };
                    batch.spawn(async move {
                        retain(&app, &format!("load/{t}"), body).await;
                    });
                    if batch.len() >= 16 {
                        batch.join_next().await.unwrap().unwrap();
                    }
                }
                while let Some(done) = batch.join_next().await {
                    done.unwrap();
                }
            }
        })
    };
    let mut sessions = 0;
    let mut quiet_since = None;
    loop {
        sessions += 1;
        let mut watch = open(&app, "?topicFilter=load%2F%23").await;
        let mut mirror: BTreeMap<String, (i64, String)> = BTreeMap::new();
        let mut seen: BTreeMap<String, i64> = BTreeMap::new();
        let mut synced = false;
        let mut events = 0;
        loop {
            let Some(event) = next_soon(&mut watch).await else {
                if settled(&app, &publisher, synced, &mirror, &mut quiet_since).await {
                    break;
                }
                continue;
            };
            quiet_since = None;
            events += 1;
            let topic = event.json()["topic"].as_str().map(str::to_owned);
            if let Some(topic) = &topic {
                let revision = event.revision();
                let before = seen.insert(topic.clone(), revision);
                assert!(
                    before.is_none_or(|b| b < revision),
                    "{topic}: revision {revision} after {before:?} ({})",
                    event.event
                );
            }
            match event.event.as_str() {
                "put" => {
                    assert_eq!(event.id.is_none(), !synced, "snapshot puts have no id");
                    let value = (event.revision(), payload(&event));
                    mirror.insert(topic.unwrap(), value);
                }
                "delete" => {
                    mirror.remove(&topic.unwrap());
                }
                "synced" => synced = true,
                "progress" => {}
                other => panic!("unexpected {other} event: {}", event.data),
            }
            if events >= 300 && !publisher.is_finished() {
                break; // start again from a fresh snapshot while the writes go on
            }
        }
        if synced && publisher.is_finished() && matches_store(&app, &mirror).await {
            break;
        }
    }
    publisher.await.unwrap();
    assert!(sessions >= 2, "only {sessions} sessions");
    let app = std::sync::Arc::try_unwrap(app)
        .ok()
        .expect("the only handle");
    app.stop().await;
}

/// How long a watch may stay quiet, every write answered, with a mirror that differs from the
/// store: past it, a change was lost.
const SETTLE: Duration = Duration::from_secs(10);

/// Called while the watch is quiet: whether every write of `publisher` has been answered and
/// the watch, once `ready` (synced), mirrors the store. Fails once it has been quiet for
/// [`SETTLE`] with the writes answered and the mirror still different; `quiet_since` keeps
/// when that began (the caller clears it at each event).
async fn settled(
    app: &TestApp,
    publisher: &tokio::task::JoinHandle<()>,
    ready: bool,
    mirror: &BTreeMap<String, (i64, String)>,
    quiet_since: &mut Option<Instant>,
) -> bool {
    if !publisher.is_finished() {
        return false;
    }
    if ready && matches_store(app, mirror).await {
        return true;
    }
    let since = *quiet_since.get_or_insert_with(Instant::now);
    assert!(
        since.elapsed() < SETTLE,
        "every write answered and the watch quiet for {SETTLE:?}, its mirror still differs from the store"
    );
    false
}

/// The watch's next event, or `None` if none comes within a moment. The last change can reach
/// the watch before its writer's task is seen to end, and nothing need follow it (progress is
/// sent only when the revision moves): a loop that waited for one more event could wait for
/// ever. Cancel-safe: what was read of a block stays in the reader.
async fn next_soon(watch: &mut Sse) -> Option<SseEvent> {
    tokio::time::timeout(Duration::from_millis(100), watch.expect())
        .await
        .ok()
}

/// Whether `mirror` holds exactly the stored messages under `load/` (topic, revision, payload).
/// Reads through the listing, which is not the watch under test.
async fn matches_store(app: &TestApp, mirror: &BTreeMap<String, (i64, String)>) -> bool {
    let stored = app.snapshot().await;
    let stored: BTreeMap<String, (i64, String)> = stored
        .into_iter()
        .filter(|(topic, _)| topic.starts_with("load/"))
        .map(|(topic, full)| {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(full["payload"].as_str().unwrap())
                .unwrap();
            let revision = full["revision"].as_i64().unwrap();
            (topic, (revision, String::from_utf8(bytes).unwrap()))
        })
        .collect();
    &stored == mirror
}

async fn an_expiry_is_an_event(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app
        .publish("/topics/exp%2F1?retain=true&messageExpiry=60", "soon gone")
        .await;
    assert_eq!(res.status(), 200);
    settled_past(&app, revision_of(&app, "exp/1").await).await;
    let mut watch = open(&app, "?topicFilter=exp%2F%23").await;
    let put = watch.expect().await;
    assert_eq!(put.json()["topic"], "exp/1");
    assert!(put.json()["messageExpiresAt"].is_i64());
    assert_eq!(watch.expect().await.event, "synced");

    app.clock.advance(Duration::from_secs(61));
    let report = app
        .store()
        .maintain(Duration::from_secs(3 * 365 * 86_400))
        .await
        .unwrap();
    assert_eq!(report.expired, 1);
    let expired = watch.expect().await;
    assert_eq!(expired.event, "expire");
    assert_eq!(expired.json()["topic"], "exp/1");
    assert!(expired.revision() > put.revision());
    assert_eq!(expired.id, Some(expired.revision().to_string()));
    app.stop().await;
}

const WATCHER_TOKEN: &str = "watcher-token-0123456789";
const ADMIN_TOKEN: &str = "admin-token-0123456789";

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn principals(with_watcher: bool) -> String {
    let watcher = format!(
        r##"
[[principals]]
name = "watcher"
api_tokens_sha256 = ["{watcher}"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:GetRetainedMessage"]
resources = ["topic/open/*"]
[[principals.statements]]
effect = "Deny"
actions = ["iot:GetRetainedMessage"]
resources = ["topic/open/secret"]
"##,
        watcher = token_hash(WATCHER_TOKEN),
    );
    format!(
        r##"
[[principals]]
name = "admin"
api_tokens_sha256 = ["{admin}"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:Publish", "iot:RetainPublish", "iot:GetRetainedMessage", "iot:ListRetainedMessages"]
resources = ["*"]
{watcher}"##,
        admin = token_hash(ADMIN_TOKEN),
        watcher = if with_watcher { watcher } else { String::new() },
    )
}

async fn spawn_secured(backend: Backend) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.toml");
    std::fs::write(&path, principals(true)).unwrap();
    let db = fresh_db(backend).await;
    let mut config = test_config(&db.url);
    config.principals = Some(path);
    config.watch_progress_interval = Duration::from_millis(200);
    (spawn_app_with(db, config).await, dir)
}

/// Stores `body` at `topic` as the admin; its revision (from the answer's `ETag`).
async fn admin_retain(app: &TestApp, topic: &str, body: &'static str) -> i64 {
    let res = app
        .http
        .post(app.url(&format!("/topics/{}?retain=true", encode(topic))))
        .bearer_auth(ADMIN_TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let etag = res.headers()["etag"].to_str().unwrap();
    etag.trim_matches('"').parse().unwrap()
}

async fn a_watcher_sees_only_what_its_policy_lets_it_get(backend: Backend) {
    let (app, dir) = spawn_secured(backend).await;
    admin_retain(&app, "open/a", "a").await;
    admin_retain(&app, "open/secret", "s").await;
    let last = admin_retain(&app, "closed/a", "c").await;
    settled_past(&app, last).await;

    let anonymous = app.get("/retainedMessage-watch").await;
    assert_eq!(anonymous.status(), 401);

    let res = app
        .http
        .get(app.url("/retainedMessage-watch"))
        .bearer_auth(WATCHER_TOKEN)
        .send()
        .await
        .unwrap();
    let mut watch = Sse::new(res);
    let put = watch.expect().await;
    assert_eq!(put.json()["topic"], "open/a");
    assert_eq!(watch.expect().await.event, "synced");

    admin_retain(&app, "closed/b", "c").await;
    admin_retain(&app, "open/secret", "s2").await;
    admin_retain(&app, "open/b", "b").await;
    let put = watch.expect().await;
    assert_eq!(
        (put.event.as_str(), put.json()["topic"].as_str()),
        ("put", Some("open/b"))
    );

    // A reload that removes the principal ends its watch.
    std::fs::write(dir.path().join("auth.toml"), principals(false)).unwrap();
    app.running.as_ref().unwrap().reload().expect("the reload");
    while let Some(event) = watch.next().await {
        assert_eq!(event.event, "progress", "{event:?}");
    }
    app.stop().await;
}

/// Changes the caller may not read are left out as changes its filter does not match are: a
/// `progress` moves past them while they go on (every 50 ms here, four times a progress
/// interval), so the caller's Last-Event-ID keeps up (decision 018, "Progress"), and no event
/// names their topic.
async fn changes_the_caller_may_not_read_do_not_hold_its_progress_back(backend: Backend) {
    let _settling = SETTLED_POINT.lock().await;
    let (app, _dir) = spawn_secured(backend).await;
    let res = app
        .http
        .get(app.url("/retainedMessage-watch?topicFilter=%23&snapshot=false"))
        .bearer_auth(WATCHER_TOKEN)
        .send()
        .await
        .unwrap();
    let mut watch = Sse::new(res);
    assert_eq!(watch.expect().await.event, "synced");

    let mut progress_meanwhile = 0;
    let revisions = {
        let publishing = async {
            let mut revisions = Vec::new();
            let mut every = tokio::time::interval(Duration::from_millis(50));
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                every.tick().await;
                revisions.push(admin_retain(&app, "closed/hidden", "not yours").await);
            }
            revisions
        };
        tokio::pin!(publishing);
        loop {
            tokio::select! {
                revisions = &mut publishing => break revisions,
                event = watch.expect() => {
                    assert_eq!(event.event, "progress", "{event:?}");
                    progress_meanwhile += 1;
                }
            }
        }
    };
    // At a 200 ms interval, 2 s of writes leave room for about five; none without the fix.
    assert!(
        progress_meanwhile >= 2,
        "{progress_meanwhile} progress events while the unreadable writes went on"
    );
    let last = *revisions.last().unwrap();
    let caught_up = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = watch.expect().await;
            assert_eq!(event.event, "progress", "{event:?}");
            if event.revision() >= last {
                break event;
            }
        }
    })
    .await
    .expect("no progress past the last unreadable write within 10 s");
    assert_eq!(caught_up.id, Some(caught_up.revision().to_string()));
    app.stop().await;
}

/// The admin principal, and a reader that may get everything, holding the given bearer tokens
/// and `credentials` (TOML lines of its entry) besides.
fn admin_and_reader(tokens: &[&str], credentials: &str) -> String {
    let hashes: Vec<String> = tokens
        .iter()
        .map(|t| format!("\"{}\"", token_hash(t)))
        .collect();
    format!(
        r##"
[[principals]]
name = "admin"
api_tokens_sha256 = ["{admin}"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:Publish", "iot:RetainPublish", "iot:GetRetainedMessage"]
resources = ["*"]

[[principals]]
name = "reader"
api_tokens_sha256 = [{hashes}]
{credentials}
[[principals.statements]]
effect = "Allow"
actions = ["iot:GetRetainedMessage"]
resources = ["*"]
"##,
        admin = token_hash(ADMIN_TOKEN),
        hashes = hashes.join(", "),
    )
}

/// The admin principal, and a reader holding the given bearer tokens.
fn reader_with_tokens(tokens: &[&str]) -> String {
    admin_and_reader(tokens, "")
}

/// A token removed by a reload stops working for the watches it opened, as for any new
/// request, while the same principal's other token goes on: the credential is checked again,
/// not only the principal's name.
async fn a_reload_that_takes_a_token_away_ends_the_watches_opened_with_it(backend: Backend) {
    const OLD: &str = "reader-old-token-0123456789";
    const KEPT: &str = "reader-kept-token-0123456789";
    let (app, dir) = spawn_secured(backend).await;
    let path = dir.path().join("auth.toml");
    std::fs::write(&path, reader_with_tokens(&[OLD, KEPT])).unwrap();
    app.running.as_ref().unwrap().reload().expect("the reload");
    let open_with = |token: &'static str| {
        let request = app
            .http
            .get(app.url("/retainedMessage-watch?topicFilter=t%2F%23&snapshot=false"))
            .bearer_auth(token);
        async move { Sse::new(request.send().await.unwrap()) }
    };
    let mut old = open_with(OLD).await;
    let mut kept = open_with(KEPT).await;
    assert_eq!(old.expect().await.event, "synced");
    assert_eq!(kept.expect().await.event, "synced");

    std::fs::write(&path, reader_with_tokens(&[KEPT])).unwrap();
    app.running.as_ref().unwrap().reload().expect("the reload");
    admin_retain(&app, "t/1", "after the reload").await;

    let put = kept.expect().await;
    assert_eq!(
        (put.event.as_str(), &put.json()["topic"]),
        ("put", &Value::from("t/1"))
    );
    while let Some(event) = old.next().await {
        assert_eq!(
            event.event, "progress",
            "the removed token's watch got {event:?}"
        );
    }
    // And the token opens nothing new.
    let refused = app
        .http
        .get(app.url("/retainedMessage-watch"))
        .bearer_auth(OLD)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    app.stop().await;
}

const READER_KEY_ID: &str = "AKIDWATCHREADER";

/// The admin principal, and a reader holding `READER_KEY_ID` with `secret` and the bearer
/// token `WATCHER_TOKEN`.
fn reader_with_access_key(secret: &str) -> String {
    admin_and_reader(
        &[WATCHER_TOKEN],
        &format!("access_key_id = \"{READER_KEY_ID}\"\nsecret_access_key = \"{secret}\""),
    )
}

/// A GET of `url` signed with SigV4 as the AWS SDKs sign for `iotdata`.
async fn signed_get(app: &TestApp, url: &str, key_id: &str, secret: &str) -> reqwest::Response {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let identity =
        aws_credential_types::Credentials::new(key_id, secret, None, None, "test").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("iotdata")
        .time(std::time::SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable =
        SignableRequest::new("GET", url, std::iter::empty(), SignableBody::Bytes(b"")).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut request = app.http.get(url);
    for (name, value) in instructions.headers() {
        request = request.header(name, value);
    }
    request.send().await.unwrap()
}

/// An access key whose secret a reload changes, under the same id, stops working for the
/// watches signed with the old secret, as a removed token does, while the principal's other
/// credentials go on: what signed is the id and the secret, not the id alone.
async fn a_reload_that_changes_an_access_keys_secret_ends_the_watches_it_signed(backend: Backend) {
    let (app, dir) = spawn_secured(backend).await;
    let path = dir.path().join("auth.toml");
    std::fs::write(&path, reader_with_access_key("first-secret")).unwrap();
    app.running.as_ref().unwrap().reload().expect("the reload");
    let url = app.url("/retainedMessage-watch?topicFilter=t%2F%23&snapshot=false");
    let mut signed = Sse::new(signed_get(&app, &url, READER_KEY_ID, "first-secret").await);
    let tokened = app.http.get(&url).bearer_auth(WATCHER_TOKEN).send().await;
    let mut tokened = Sse::new(tokened.unwrap());
    assert_eq!(signed.expect().await.event, "synced");
    assert_eq!(tokened.expect().await.event, "synced");

    std::fs::write(&path, reader_with_access_key("second-secret")).unwrap();
    app.running.as_ref().unwrap().reload().expect("the reload");
    admin_retain(&app, "t/1", "after the reload").await;

    let put = tokened.expect().await;
    assert_eq!(
        (put.event.as_str(), &put.json()["topic"]),
        ("put", &Value::from("t/1"))
    );
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = signed.next().await {
            assert_eq!(
                event.event, "progress",
                "the old secret's watch got {event:?}"
            );
        }
    })
    .await
    .expect("the old secret's watch still open 5 s after the reload");
    // The new secret signs, the old one no more.
    let renewed = signed_get(&app, &url, READER_KEY_ID, "second-secret").await;
    assert_eq!(renewed.status(), 200);
    let refused = signed_get(&app, &url, READER_KEY_ID, "first-secret").await;
    assert_eq!(refused.status(), 403);
    app.stop().await;
}

/// A watcher that never reads: publishers go on as if it were not there, and when it reads at
/// last it finds what its buffers held and then `resync`.
async fn a_stalled_reader_does_not_block_publishers_and_gets_resync(backend: Backend) {
    use futures_util::StreamExt;
    let db = fresh_db(backend).await;
    let mut config = test_config(&db.url);
    // The publishing below takes about a minute on a loaded host: the default (60 s) would
    // close the stalled watcher's connection for taking none of its response first.
    config.http_idle_timeout = Duration::from_secs(600);
    let app = spawn_app_with(db, config).await;
    let mut stalled = open(&app, "?topicFilter=big%2F%23").await;
    assert_eq!(stalled.expect().await.event, "synced");
    let mut other = open(&app, "?topicFilter=big%2F%23").await;
    assert_eq!(other.expect().await.event, "synced");

    // Far more than the hub's buffer (1,024 changes) and the sockets' buffers can hold, a
    // hundred at a time, 16 in flight (one after another they took half a minute).
    let body = "x".repeat(8 * 1024);
    let mut seen_by_other = 0;
    for hundred in 0..30 {
        futures_util::stream::iter(hundred * 100..(hundred + 1) * 100)
            .for_each_concurrent(16, |t| {
                let (app, body) = (&app, body.clone());
                async move {
                    retain(app, &format!("big/{t}"), body).await;
                }
            })
            .await;
        // The other watcher keeps up; the stalled one never reads.
        while seen_by_other < hundred * 100 + 50 {
            let event = other.expect().await;
            if event.event == "put" {
                seen_by_other += 1;
            }
        }
    }
    let mut puts = 0;
    let resync = loop {
        let event = stalled.expect().await;
        match event.event.as_str() {
            "put" => puts += 1,
            "resync" => break event,
            other => panic!("unexpected {other}"),
        }
    };
    assert!(puts < 3000, "{puts}");
    assert!(
        resync.json()["message"]
            .as_str()
            .unwrap()
            .contains("resync")
    );
    assert!(
        stalled.next().await.is_none(),
        "the stream goes on after resync"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("retaind_watch_resyncs_total{reason=\"overflow\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

async fn malformed_parameters_are_refused_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    retain(&app, "m/1", "kept").await;
    let before = app.snapshot().await;
    for query in [
        "?fromRevision=abc",
        "?fromRevision=-1",
        "?fromRevision=1e3",
        "?fromRevision=",
        "?fromRevision=99999999999999999999",
        "?topicFilter=a%2F%23%2Fb",
        "?topicFilter=%24share%2Fg%2Fa",
        "?topicFilter=",
        "?snapshot=no",
        "?snapshot=",
    ] {
        let res = app.get(&format!("/retainedMessage-watch{query}")).await;
        assert_eq!(res.status(), 400, "{query}");
        assert_eq!(
            res.headers()["x-amzn-errortype"],
            "InvalidRequestException",
            "{query}"
        );
    }
    let res = app
        .http
        .get(app.url("/retainedMessage-watch"))
        .header("Last-Event-ID", "12x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(app.snapshot().await, before);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("retaind_watches 0"), "{metrics}");
    app.stop().await;
}

async fn an_idle_watch_gets_progress_and_keep_alives(backend: Backend) {
    let db = fresh_db(backend).await;
    let mut config = test_config(&db.url);
    config.watch_progress_interval = Duration::from_millis(200);
    // A watch is a response in progress, not an idle connection: this does not cut it.
    config.http_idle_timeout = Duration::from_secs(1);
    let app = spawn_app_with(db, config).await;
    let mut watch = open(&app, "?topicFilter=quiet%2F%23").await;
    let synced = watch.expect().await;
    assert_eq!(synced.event, "synced");

    // Nothing changes in this store: keep-alive comments, past the HTTP idle timeout. On
    // Postgres the settled revision is the server's, which other databases' transactions move
    // on: progress events may come too, but never a change.
    let quiet_since = std::time::Instant::now();
    let mut comments = 0;
    while quiet_since.elapsed() < Duration::from_millis(2500) {
        let block = watch.next_block().await.expect("the watch was cut");
        assert!(block.comment || block.event == "progress", "{block:?}");
        comments += usize::from(block.comment);
    }
    if backend == Backend::Sqlite {
        assert!(comments > 0);
    }

    // A change elsewhere moves the service's revision: the idle watch hears how far it got.
    retain(&app, "loud/1", "x").await;
    let loud = revision_of(&app, "loud/1").await;
    let progress = loop {
        let event = watch.expect().await;
        assert_eq!(event.event, "progress");
        if event.revision() >= loud {
            break event;
        }
    };
    assert_eq!(progress.id, Some(progress.revision().to_string()));

    // Resuming from a progress id gives what came after it, and nothing before.
    retain(&app, "quiet/1", "y").await;
    let mut resumed = open_after(&app, "?topicFilter=quiet%2F%23", &progress.id.unwrap()).await;
    let put = resumed.expect().await;
    assert_eq!(put.json()["topic"], "quiet/1");
    app.stop().await;
}

async fn a_revision_below_the_compaction_point_gets_resync(backend: Backend) {
    let app = spawn_app(backend).await;
    retain(&app, "c/1", "x").await;
    retain(&app, "c/1", "").await;
    app.clock
        .advance(purge_delay(test_config("").store_timeout) + Duration::from_secs(1));
    let report = app
        .store()
        .maintain(Duration::from_secs(3 * 365 * 86_400))
        .await
        .unwrap();
    assert_eq!(report.tombstones, 1);
    let mut watch = open(&app, "?fromRevision=0").await;
    let resync = watch.expect().await;
    assert_eq!(resync.event, "resync");
    assert!(resync.revision() > 0);
    assert!(watch.next().await.is_none());
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("retaind_watch_resyncs_total{reason=\"compacted\"} 1"),
        "{metrics}"
    );
    // From the compaction point on, the watch goes on.
    let mut watch = open(&app, &format!("?fromRevision={}", resync.revision())).await;
    retain(&app, "c/2", "y").await;
    assert_eq!(watch.expect().await.json()["topic"], "c/2");
    app.stop().await;
}

/// A resume from a revision this database never gave out (another deployment's id, or this
/// database restored from an older copy) would skip, as if the client had them, every change
/// the database makes up to it: it gets `resync`, as a resume from below the compaction point
/// does, and a resume from the latest revision goes on.
async fn a_revision_above_any_the_database_reached_gets_resync(backend: Backend) {
    let app = spawn_app(backend).await;
    retain(&app, "r/1", "x").await;
    let latest = revision_of(&app, "r/1").await;
    let elsewhere = latest + 4096 * 1_000_000;

    let mut by_query = open(&app, &format!("?fromRevision={elsewhere}")).await;
    let mut by_header = open_after(&app, "", &elsewhere.to_string()).await;
    for watch in [&mut by_query, &mut by_header] {
        // Without the check nothing comes but keep-alives, for as long as the database takes
        // to reach the revision.
        let resync = tokio::time::timeout(Duration::from_secs(10), watch.expect())
            .await
            .expect("no resync within 10 s");
        assert_eq!(resync.event, "resync");
        assert_eq!(resync.id, None);
        assert!(
            (latest..elsewhere).contains(&resync.revision()),
            "{resync:?}"
        );
        assert!(watch.next().await.is_none());
    }
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("retaind_watch_resyncs_total{reason=\"ahead\"} 2"),
        "{metrics}"
    );

    let mut resumed = open(&app, &format!("?fromRevision={latest}")).await;
    retain(&app, "r/2", "y").await;
    let put = resumed.expect().await;
    assert_eq!(
        (put.event.as_str(), &put.json()["topic"]),
        ("put", &Value::from("r/2"))
    );
    app.stop().await;
}

async fn shutdown_ends_the_streams(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut watch = open(&app, "").await;
    assert_eq!(watch.expect().await.event, "synced");
    let stopping = tokio::spawn(app.stop());
    assert!(watch.next().await.is_none());
    stopping.await.unwrap();
}

/// `snapshot=false` starts at the settled point, which a write transaction still open
/// anywhere on the Postgres server holds back (decision 018). A write acknowledged just
/// before the request then lies above `synced`, and it must come as a change once the
/// other transaction ends: late, never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_snapshot_a_write_held_above_the_settled_point_comes_as_a_change() {
    use sqlx::{Connection, Executor};
    let _held = SETTLED_POINT.lock().await;
    let app = spawn_app(Backend::Postgres).await;
    // Another client of the server, in a write transaction (it has a transaction id).
    let mut other = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    other.execute("BEGIN").await.unwrap();
    other.execute("SELECT txid_current()").await.unwrap();
    retain(&app, "h/1", "acknowledged").await;
    let acknowledged = revision_of(&app, "h/1").await;

    let mut watch = open(&app, "?topicFilter=h%2F%23&snapshot=false").await;
    let synced = watch.expect().await;
    assert_eq!(synced.event, "synced");
    assert!(
        synced.revision() < acknowledged,
        "the open transaction held the settled point ({}) below the write ({acknowledged})",
        synced.revision()
    );
    // Past a few of the reader's passes (every 250 ms).
    let early = tokio::time::timeout(Duration::from_millis(800), watch.expect()).await;
    assert!(
        early.is_err(),
        "nothing comes while the other transaction is open: {early:?}"
    );
    other.execute("ROLLBACK").await.unwrap();
    let put = watch.expect().await;
    assert_eq!(put.event, "put");
    assert_eq!(put.json()["topic"], "h/1");
    assert_eq!(payload(&put), "acknowledged");
    assert_eq!(put.revision(), acknowledged);
    app.stop().await;
}

/// A revision a client was answered with is never "ahead", even while the settled point is
/// below it: a resume from the ETag of a write that another transaction holds above the
/// settled point waits for it to settle, as any watch does, instead of `resync`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_a_write_not_yet_settled_is_no_resync() {
    use sqlx::{Connection, Executor};
    let _held = SETTLED_POINT.lock().await;
    let app = spawn_app(Backend::Postgres).await;
    let mut other = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    other.execute("BEGIN").await.unwrap();
    other.execute("SELECT txid_current()").await.unwrap();
    retain(&app, "u/1", "acknowledged").await;
    let acknowledged = revision_of(&app, "u/1").await;
    assert!(app.store().settled().await.unwrap() < acknowledged);

    let mut watch = open(
        &app,
        &format!("?topicFilter=u%2F%23&fromRevision={acknowledged}"),
    )
    .await;
    retain(&app, "u/2", "later").await;
    other.execute("ROLLBACK").await.unwrap();
    let put = watch.expect().await;
    assert_eq!(
        (put.event.as_str(), &put.json()["topic"]),
        ("put", &Value::from("u/2"))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_node_is_seen_by_a_watcher_on_another() {
    let db = fresh_db(Backend::Postgres).await;
    let url = db.url.clone();
    let a = spawn_app_with(db, test_config(&url)).await;
    let b = spawn_app_with(FreshDb::shared(&url), test_config(&url)).await;
    let mut watch = open(&b, "?topicFilter=shared%2F%23").await;
    assert_eq!(watch.expect().await.event, "synced");
    retain(&a, "shared/1", "from a").await;
    let put = watch.expect().await;
    assert_eq!(put.json()["topic"], "shared/1");
    assert_eq!(payload(&put), "from a");
    assert_eq!(put.revision(), revision_of(&a, "shared/1").await);
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_cap_answers_503() {
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.max_watches = 1;
    let app = spawn_app_with(db, config).await;
    let mut first = open(&app, "").await;
    assert_eq!(first.expect().await.event, "synced");
    let second = app.get("/retainedMessage-watch").await;
    assert_eq!(second.status(), 503);
    assert_eq!(
        second.headers()["x-amzn-errortype"],
        "ServiceUnavailableException"
    );
    let body: Value = second.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("--max-watches"),
        "{body}"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("retaind_watches 1"), "{metrics}");
    // Once the first ends, its place is free again.
    drop(first);
    let mut third = loop {
        let res = app.get("/retainedMessage-watch").await;
        if res.status() == 200 {
            break Sse::new(res);
        }
        assert_eq!(res.status(), 503);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(third.expect().await.event, "synced");
    app.stop().await;
}

/// Watches hold HTTP connections' places while they stream, so the node holds at most three
/// quarters of `--http-max-connections` of them (rounded down: 3 of 5), whatever
/// `--max-watches` says: requests always keep places of their own (two here, as a pooling
/// client may open a connection for a request while another is on its way back to its pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_are_held_to_three_quarters_of_the_http_places() {
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.http_max_connections = 5;
    config.max_watches = 10;
    let app = spawn_app_with(db, config).await;
    let mut open_watches = Vec::new();
    for _ in 0..3 {
        let mut watch = open(&app, "").await;
        assert_eq!(watch.expect().await.event, "synced");
        open_watches.push(watch);
    }
    let fourth = app.get("/retainedMessage-watch").await;
    assert_eq!(fourth.status(), 503);
    let body: Value = fourth.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("3 watches"),
        "{body}"
    );
    // The place left serves requests.
    assert_eq!(app.get("/retainedMessage").await.status(), 200);
    app.stop().await;
}

/// The admin (`max_watches = 0`: no limit of its own) and the watcher, whose limit comes from
/// `--max-watches-per-principal`.
fn principals_with_watch_limits() -> String {
    principals(true).replace("name = \"admin\"", "name = \"admin\"\nmax_watches = 0")
}

async fn open_as(app: &TestApp, token: &str) -> reqwest::Response {
    app.http
        .get(app.url("/retainedMessage-watch"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// The watcher's next watch, once a place frees: until then each try gets `meanwhile`.
async fn open_once_freed(app: &TestApp, meanwhile: u16) -> Sse {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = open_as(app, WATCHER_TOKEN).await;
        if res.status() == 200 {
            return Sse::new(res);
        }
        assert_eq!(res.status(), meanwhile);
        assert!(Instant::now() < deadline, "no place freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A principal holds at most its `max_watches` open on a node: one more gets 429
/// ThrottlingException, while another principal opens on; a watch the node refused (503, its
/// `--max-watches` taken) gives its principal's place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_past_its_watches_gets_429_and_others_watch_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.toml");
    std::fs::write(&path, principals_with_watch_limits()).unwrap();
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.principals = Some(path);
    config.max_watches = 4;
    config.max_watches_per_principal = 2;
    // The waits below open watches in a loop; the rate of opening them is not under test.
    config.rate_watch_retained_messages = 1000.0;
    let app = spawn_app_with(db, config).await;
    let mut admin = Vec::new();
    for _ in 0..2 {
        let mut watch = Sse::new(open_as(&app, ADMIN_TOKEN).await);
        assert_eq!(watch.expect().await.event, "synced");
        admin.push(watch);
    }
    let mut w1 = Sse::new(open_as(&app, WATCHER_TOKEN).await);
    assert_eq!(w1.expect().await.event, "synced");
    // The admin's third: past the flag's 2, which is not its limit.
    let mut a3 = Sse::new(open_as(&app, ADMIN_TOKEN).await);
    assert_eq!(a3.expect().await.event, "synced");
    // The node is full: the watcher's second is refused there.
    let refused = open_as(&app, WATCHER_TOKEN).await;
    assert_eq!(refused.status(), 503);
    // A place of the node's frees; the watcher's second opens (had the refusal kept its
    // principal's place, it would be at its limit now: 429).
    drop(admin.remove(0));
    let mut w2 = open_once_freed(&app, 503).await;
    assert_eq!(w2.expect().await.event, "synced");
    // Its third: its principal's limit, answered before the node's.
    drop(admin.remove(0));
    let third = open_as(&app, WATCHER_TOKEN).await;
    assert_eq!(third.status(), 429);
    assert_eq!(third.headers()["x-amzn-errortype"], "ThrottlingException");
    let body: Value = third.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("max_watches"),
        "{body}"
    );
    // One of its own ends: it may open another.
    drop(w1);
    let mut w3 = open_once_freed(&app, 429).await;
    assert_eq!(w3.expect().await.event, "synced");
    drop((w2, w3, a3));
    app.stop().await;
}

/// A watcher that takes nothing of its stream for as long as the idle timeout is closed, and
/// its place (`--max-watches` 1 here) is free again: a client that stops reading cannot hold
/// one for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_reads_nothing_for_the_idle_timeout_is_closed() {
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    config.max_watches = 1;
    config.http_idle_timeout = Duration::from_secs(1);
    let app = spawn_app_with(db, config).await;
    let mut stalled = open(&app, "?topicFilter=big%2F%23").await;
    assert_eq!(stalled.expect().await.event, "synced");
    // More than the sockets' buffers hold: the server's writes to the watcher stop going out.
    let body = "x".repeat(64 * 1024);
    for t in 0..400 {
        retain(&app, &format!("big/{t}"), body.clone()).await;
    }
    let opened = Instant::now();
    let mut next = loop {
        let res = app.get("/retainedMessage-watch").await;
        if res.status() == 200 {
            break Sse::new(res);
        }
        assert_eq!(res.status(), 503);
        assert!(
            opened.elapsed() < Duration::from_secs(20),
            "the stalled watch still holds the only place"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The snapshot of what is stored, then the live stream.
    while next.expect().await.event != "synced" {}
    drop(stalled);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_watches_is_throttled_per_principal() {
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = test_config(&db.url);
    // A bucket of one, refilled once in 100 s.
    config.rate_watch_retained_messages = 0.01;
    let app = spawn_app_with(db, config).await;
    let mut first = open(&app, "").await;
    assert_eq!(first.expect().await.event, "synced");
    let second = app.get("/retainedMessage-watch").await;
    assert_eq!(second.status(), 429);
    assert_eq!(second.headers()["x-amzn-errortype"], "ThrottlingException");
    drop(first);
    app.stop().await;
}

/// A database read slower than the progress interval: the watch's read goes on across the
/// checks of the principal made at each interval, so the snapshot completes. Each check
/// dropped the read in progress, and the next started it again, for as long as reads were
/// that slow: the watch sent keep-alives and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_reads_are_slower_than_the_progress_interval_completes() {
    let db = fresh_db(Backend::Postgres).await;
    let proxy = common::proxy::Proxy::start(common::postgres_host_port(&db.url)).await;
    let mut config = test_config(&common::postgres_url_via(&db.url, proxy.addr));
    config.watch_progress_interval = Duration::from_millis(100);
    let app = spawn_app_with(db, config).await;
    retain(&app, "slow/1", "x").await;
    let written = revision_of(&app, "slow/1").await;
    settled_past(&app, written).await;

    // Every query now takes 300 ms at least: three progress intervals.
    proxy.slow(Duration::from_millis(300));
    let mut watch = open(&app, "?topicFilter=slow%2F%23").await;
    let events = tokio::time::timeout(Duration::from_secs(20), async {
        let put = watch.expect().await;
        let synced = watch.expect().await;
        (put, synced)
    })
    .await
    .expect("no snapshot within 20 s of 300 ms reads");
    assert_eq!(events.0.json()["topic"], "slow/1");
    assert_eq!(events.1.event, "synced");

    // And the changes after it come too.
    proxy.slow(Duration::ZERO);
    retain(&app, "slow/2", "y").await;
    assert_eq!(watch.expect().await.json()["topic"], "slow/2");
    app.stop().await;
}

/// What one watch may hold read and not yet sent (`HELD_BYTES` in `src/store/watch.rs`), past
/// the one message a page always takes.
const WATCH_HELD_BYTES: f64 = 1024.0 * 1024.0;

async fn held_by_watches(app: &TestApp) -> f64 {
    let page = app.get("/metrics").await.text().await.unwrap();
    metric_value(&page, "retaind_watch_held_bytes")
}

/// A page of the snapshot (200 messages) of 100 KiB messages is 20 MB, more than the sockets
/// between server and client take: a reader that takes the first event and stops leaves its
/// watch holding what it read and could not send, which is the bound, not the page.
async fn a_reader_that_stops_reading_leaves_its_watch_holding_the_bound(backend: Backend) {
    use futures_util::StreamExt;
    const LARGE: usize = 100 * 1024;
    let app = spawn_app(backend).await;
    let body = "x".repeat(LARGE);
    futures_util::stream::iter(0..200)
        .for_each_concurrent(16, |n| {
            let (app, body) = (&app, body.clone());
            async move {
                assert_eq!(
                    retain(app, &format!("big/{n:03}"), body).await.status(),
                    200
                );
            }
        })
        .await;
    // All of them in the snapshot: a write made after they were all acknowledged has a
    // revision above theirs, and once it is settled, they are.
    let _settling = SETTLED_POINT.lock().await;
    retain(&app, "other/marker", "m").await;
    settled_past(&app, revision_of(&app, "other/marker").await).await;
    let mut watch = open(&app, "?topicFilter=big%2F%23").await;
    assert_eq!(watch.expect().await.json()["topic"], "big/000");

    // The server writes on until the sockets are full, then holds what is left; a second of
    // samples sees it hold the bound at most, and something (it was given a page it could not
    // send whole).
    let bound = WATCH_HELD_BYTES + (LARGE + 16) as f64;
    let mut most: f64 = 0.0;
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let held = held_by_watches(&app).await;
        assert!(held <= bound, "{held} bytes held by one watch");
        most = most.max(held);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(most > 0.0);

    // Read to the end of the snapshot: everything comes, and nothing is held after it.
    for n in 1..200 {
        assert_eq!(watch.expect().await.json()["topic"], format!("big/{n:03}"));
    }
    assert_eq!(watch.expect().await.event, "synced");
    let until = Instant::now() + Duration::from_secs(10);
    while held_by_watches(&app).await != 0.0 {
        assert!(Instant::now() < until, "still held after synced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}
