//! retaind's extension to ListRetainedMessages: `topicFilter` (an MQTT topic filter) and
//! `topicPrefix` (a literal prefix), over real sockets against the real server, on SQLite and
//! on Postgres.

mod common;

use bytes::Bytes;
use common::{Backend, T0_MS, encode, spawn_app};
use retaind::store::{MessageProperties, Qos, RetainedMessage, Write};
use retaind::topic::{TopicLimits, TopicName};
use serde_json::Value;

/// One page: its topics and its `nextToken`.
async fn page(app: &common::TestApp, query: &str) -> (Vec<String>, Option<String>) {
    let res = app.get(&format!("/retainedMessage?{query}")).await;
    assert_eq!(res.status(), 200, "{query}: {}", res.text().await.unwrap());
    let body: Value = res.json().await.unwrap();
    let topics = body["retainedTopics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["topic"].as_str().unwrap().to_owned())
        .collect();
    (topics, body["nextToken"].as_str().map(str::to_owned))
}

/// Every topic a filtered listing yields, following `nextToken` to the end, and how many pages
/// it took.
async fn all_pages(app: &common::TestApp, query: &str) -> (Vec<String>, usize) {
    let (mut topics, mut token) = page(app, query).await;
    let mut pages = 1;
    while let Some(t) = token {
        let (more, next) = page(app, &format!("{query}&nextToken={t}")).await;
        topics.extend(more);
        token = next;
        pages += 1;
    }
    (topics, pages)
}

fn filter(f: &str) -> String {
    format!("topicFilter={}", encode(f))
}

fn prefix(p: &str) -> String {
    format!("topicPrefix={}", encode(p))
}

async fn retain_all(app: &common::TestApp, topics: &[&str]) {
    for t in topics {
        app.retain(&encode(t), "v").await;
    }
}

/// Stores a retained message directly, for topics a publish may not create (`$` topics) and
/// for many topics at once.
async fn store_directly(app: &common::TestApp, topics: impl IntoIterator<Item = String>) {
    let limits = TopicLimits::default();
    let writes = topics.into_iter().map(|t| {
        app.store().write(Write::Put(RetainedMessage {
            topic: TopicName::parse(t, limits).unwrap(),
            payload: Bytes::from_static(b"v"),
            qos: Qos::AtMostOnce,
            properties: MessageProperties::default(),
            expires_at_ms: None,
            last_modified_ms: T0_MS,
            last_accessed_ms: T0_MS,
            revision: 0,
            writer: None,
        }))
    });
    for done in futures_util::future::join_all(writes).await {
        done.unwrap();
    }
}

const DEVICES: [&str; 8] = [
    "devices/a/config",
    "devices/a/b/config",
    "devices/ab/config",
    "devices/b/config",
    "devices/b/state",
    "devices/config",
    "devicesa/x/config",
    "other/a/config",
];

async fn a_plus_filter_matches_exactly_one_level(backend: Backend) {
    let app = spawn_app(backend).await;
    retain_all(&app, &DEVICES).await;
    let (topics, token) = page(&app, &filter("devices/+/config")).await;
    assert_eq!(
        topics,
        ["devices/a/config", "devices/ab/config", "devices/b/config"]
    );
    assert_eq!(token, None);
    let (topics, _) = page(&app, &filter("+/+/config")).await;
    assert_eq!(
        topics,
        [
            "devices/a/config",
            "devices/ab/config",
            "devices/b/config",
            "devicesa/x/config",
            "other/a/config"
        ]
    );
    // Without wildcards a filter names one topic.
    let (topics, _) = page(&app, &filter("devices/b/state")).await;
    assert_eq!(topics, ["devices/b/state"]);
    let (topics, _) = page(&app, &filter("devices/b")).await;
    assert!(topics.is_empty(), "{topics:?}");
}

async fn a_hash_filter_matches_the_parent_level_and_everything_below(backend: Backend) {
    let app = spawn_app(backend).await;
    retain_all(
        &app,
        &[
            "sport",
            "sport/tennis",
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sports",
            "sport0",
            "a",
        ],
    )
    .await;
    let (topics, _) = page(&app, &filter("sport/#")).await;
    assert_eq!(
        topics,
        [
            "sport",
            "sport/tennis",
            "sport/tennis/player1",
            "sport/tennis/player1/ranking"
        ]
    );
    let (topics, _) = page(&app, &filter("sport/tennis/+/#")).await;
    assert_eq!(
        topics,
        ["sport/tennis/player1", "sport/tennis/player1/ranking"]
    );
    let (all, _) = page(&app, "").await;
    let (topics, _) = page(&app, &filter("#")).await;
    assert_eq!(topics, all);
}

async fn leading_wildcards_skip_dollar_topics_that_a_dollar_filter_finds(backend: Backend) {
    let app = spawn_app(backend).await;
    retain_all(&app, &["broker/uptime", "x"]).await;
    // A publish cannot retain on a `$` topic, but the store can hold one (from an older
    // version, or a bridge), and the listing must follow [MQTT-4.7.2-1] for it.
    store_directly(&app, ["$SYS/broker/uptime".to_owned()]).await;
    let (topics, _) = page(&app, &filter("#")).await;
    assert_eq!(topics, ["broker/uptime", "x"]);
    let (topics, _) = page(&app, &filter("+/broker/uptime")).await;
    assert!(topics.is_empty(), "{topics:?}");
    let (topics, _) = page(&app, &filter("$SYS/#")).await;
    assert_eq!(topics, ["$SYS/broker/uptime"]);
    let (topics, _) = page(&app, &filter("$SYS/+/uptime")).await;
    assert_eq!(topics, ["$SYS/broker/uptime"]);
    // A prefix is literal: `$` names the `$` topics.
    let (topics, _) = page(&app, &prefix("$")).await;
    assert_eq!(topics, ["$SYS/broker/uptime"]);
}

async fn a_prefix_lists_the_topics_that_start_with_it(backend: Backend) {
    let app = spawn_app(backend).await;
    retain_all(&app, &DEVICES).await;
    let (topics, _) = page(&app, &prefix("devices/a")).await;
    assert_eq!(
        topics,
        [
            "devices/a/b/config",
            "devices/a/config",
            "devices/ab/config"
        ]
    );
    // Wildcard characters in a prefix are just characters.
    let (topics, _) = page(&app, &prefix("devices/+")).await;
    assert!(topics.is_empty(), "{topics:?}");
    let (topics, _) = page(&app, &prefix("devices")).await;
    assert_eq!(topics.len(), 7);
    let (topics, _) = page(&app, &prefix("zzz")).await;
    assert!(topics.is_empty(), "{topics:?}");
}

async fn a_filter_and_a_prefix_together_must_both_match(backend: Backend) {
    let app = spawn_app(backend).await;
    retain_all(&app, &DEVICES).await;
    let query = format!("{}&{}", filter("+/+/config"), prefix("devices/a"));
    let (topics, _) = page(&app, &query).await;
    assert_eq!(topics, ["devices/a/config", "devices/ab/config"]);
    // Disjoint filter and prefix: nothing, and no token.
    let query = format!("{}&{}", filter("other/#"), prefix("devices"));
    assert_eq!(page(&app, &query).await, (vec![], None));
}

async fn filtered_pages_chain_tokens_until_the_last(backend: Backend) {
    let app = spawn_app(backend).await;
    let matching = ["m/1/x", "m/2/x", "m/3/x", "m/4/x", "m/5/x"];
    retain_all(&app, &matching).await;
    retain_all(
        &app,
        &["m/1/y", "m/2/y", "m/3/y", "m/4/y", "n/1/x", "l/1/x"],
    )
    .await;
    let query = format!("maxResults=2&{}", filter("m/+/x"));
    let (first, token) = page(&app, &query).await;
    assert_eq!(first, ["m/1/x", "m/2/x"]);
    assert!(token.is_some());
    let (topics, pages) = all_pages(&app, &query).await;
    assert_eq!(topics, matching);
    assert_eq!(pages, 3, "the last page carries no token");
    // A token from the unfiltered listing is a position like any other.
    let (unfiltered, token) = page(&app, "maxResults=4").await;
    assert_eq!(unfiltered.last().unwrap(), "m/2/x");
    let (topics, _) = page(&app, &format!("{query}&nextToken={}", token.unwrap())).await;
    assert_eq!(topics, ["m/3/x", "m/4/x"]);
}

async fn a_sparse_filter_stops_after_ten_thousand_rows_with_a_token(backend: Backend) {
    let app = spawn_app(backend).await;
    // One request reads at most 10,000 stored topics (`WALK_LIMITS` in the handler).
    retain_all(&app, &["a/x", "c/x"]).await;
    store_directly(&app, (0..10_000).map(|i| format!("b/{i:05}"))).await;
    let query = format!("maxResults=10&{}", filter("+/x"));
    // `a/x` and 9,999 fillers make 10,000: the first page stops short of `c/x`...
    let (topics, token) = page(&app, &query).await;
    assert_eq!(topics, ["a/x"]);
    let token = token.expect("a capped page has a token");
    // ...and the next picks up after the last topic the first one read.
    let (topics, token) = page(&app, &format!("{query}&nextToken={token}")).await;
    assert_eq!((topics, token), (vec!["c/x".to_owned()], None));
    // With nothing to find, capped pages are empty but still lead to the end.
    let query = format!("maxResults=10&{}", filter("+/nothing"));
    let (first, token) = page(&app, &query).await;
    assert!(first.is_empty() && token.is_some(), "{first:?} {token:?}");
    assert_eq!(all_pages(&app, &query).await, (vec![], 2));
    // A narrow range reads only its own rows.
    assert_eq!(
        page(&app, &filter("c/+")).await,
        (vec!["c/x".to_owned()], None)
    );
}

async fn invalid_filters_and_prefixes_are_refused_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    retain_all(&app, &DEVICES).await;
    let before = app.snapshot().await;
    for (query, mentions) in [
        ("topicFilter=".to_owned(), "topicFilter"),
        (filter("a/#/b"), "topicFilter"),
        (filter("a+/b"), "topicFilter"),
        (filter("a#"), "topicFilter"),
        ("topicFilter=a%00b".to_owned(), "topicFilter"),
        (filter("$share/group/devices/#"), "shared subscription"),
        (filter("$share/"), "topicFilter"),
        ("topicPrefix=".to_owned(), "topicPrefix"),
        ("topicPrefix=a%00".to_owned(), "topicPrefix"),
        (format!("{}&topicPrefix=", filter("#")), "topicPrefix"),
        (
            format!("{}&{}", filter("a/#/b"), prefix("a")),
            "topicFilter",
        ),
    ] {
        let res = app.get(&format!("/retainedMessage?{query}")).await;
        assert_eq!(res.status(), 400, "{query}");
        let kind = res.headers()["x-amzn-errortype"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(kind, "InvalidRequestException", "{query}");
        let body: Value = res.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(mentions), "{query}: {message}");
    }
    assert_eq!(app.snapshot().await, before);
}

for_each_backend!(
    a_plus_filter_matches_exactly_one_level,
    a_hash_filter_matches_the_parent_level_and_everything_below,
    leading_wildcards_skip_dollar_topics_that_a_dollar_filter_finds,
    a_prefix_lists_the_topics_that_start_with_it,
    a_filter_and_a_prefix_together_must_both_match,
    filtered_pages_chain_tokens_until_the_last,
    a_sparse_filter_stops_after_ten_thousand_rows_with_a_token,
    invalid_filters_and_prefixes_are_refused_and_change_nothing,
);
