use std::time::Duration;

use super::*;

fn sample<'a>(page: &'a str, series: &str) -> Option<&'a str> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
}

#[test]
fn the_page_counts_what_was_recorded_in_the_prometheus_text_format() {
    let m = Metrics::new("1.2.3");
    m.http_request("Publish", 200, Duration::from_millis(3));
    m.http_request("Publish", 200, Duration::from_millis(1));
    m.http_request("Publish", 429, Duration::from_micros(100));
    m.http_throttled("Publish");
    m.auth_failure(AuthFailure::bad_signature);
    m.mqtt_received(1);
    m.mqtt_dropped(DropReason::queue_full, 0);
    m.mqtt_dropped(DropReason::policy, 2);
    m.on_scrape(|m| {
        m.gauges().mqtt_connections.set(7);
    });
    let page = m.render();
    assert_eq!(
        sample(&page, r#"retaind_build_info{version="1.2.3"}"#),
        Some("1")
    );
    assert_eq!(
        sample(
            &page,
            r#"retaind_http_requests_total{operation="Publish",status="200"}"#
        ),
        Some("2")
    );
    assert_eq!(
        sample(
            &page,
            r#"retaind_http_requests_total{operation="Publish",status="429"}"#
        ),
        Some("1")
    );
    assert_eq!(
        sample(
            &page,
            r#"retaind_http_request_duration_seconds_count{operation="Publish"}"#
        ),
        Some("3")
    );
    assert_eq!(
        sample(
            &page,
            r#"retaind_http_request_duration_seconds_bucket{operation="Publish",le="0.002"}"#
        ),
        Some("2"),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            r#"retaind_auth_failures_total{kind="bad_signature"}"#
        ),
        Some("1")
    );
    assert_eq!(
        sample(&page, r#"retaind_mqtt_messages_received_total{qos="1"}"#),
        Some("1")
    );
    assert_eq!(
        sample(
            &page,
            r#"retaind_mqtt_messages_dropped_total{reason="policy"}"#
        ),
        Some("2")
    );
    assert_eq!(
        sample(
            &page,
            r#"retaind_mqtt_messages_dropped_total{reason="queue_full"}"#
        ),
        None,
        "a drop of nothing makes no series"
    );
    assert_eq!(sample(&page, "retaind_mqtt_connections"), Some("7"));
    assert!(page.contains("# TYPE retaind_http_requests_total counter"));
}

#[test]
fn a_count_kept_elsewhere_is_caught_up_never_lowered() {
    let c = Counter::default();
    ClusterCounters::catch_up(&c, 5);
    ClusterCounters::catch_up(&c, 5);
    assert_eq!(c.get(), 5);
    ClusterCounters::catch_up(&c, 3);
    assert_eq!(c.get(), 5);
}

#[test]
fn two_servers_in_one_process_count_apart() {
    let (a, b) = (Metrics::default(), Metrics::default());
    a.mqtt_sent(0);
    assert!(
        a.render()
            .contains(r#"retaind_mqtt_messages_sent_total{qos="0"} 1"#)
    );
    assert!(
        b.render()
            .contains(r#"retaind_mqtt_messages_sent_total{qos="0"} 0"#)
    );
}

/// A principal's share is shown while it is set, and no longer once it is not.
#[test]
fn a_principals_share_is_shown_until_it_is_gone() {
    let m = Metrics::new("1");
    let series =
        |p: &str| format!("retaind_mqtt_principal_queue_memory_bytes{{principal=\"{p}\"}}");
    m.gauges()
        .set_principal_queue_memory(vec![("a".to_owned(), 5), ("b".to_owned(), 7)]);
    let page = m.render();
    assert!(page.contains(&format!("{} 5", series("a"))), "{page}");
    assert!(page.contains(&format!("{} 7", series("b"))), "{page}");
    m.gauges()
        .set_principal_queue_memory(vec![("b".to_owned(), 9)]);
    let page = m.render();
    assert!(!page.contains(&series("a")), "{page}");
    assert!(page.contains(&format!("{} 9", series("b"))), "{page}");
}

/// The README's table of metrics is what operators build dashboards from: every family the
/// page carries is a row with its type, and no row names a family that is gone.
#[test]
fn every_family_on_the_page_is_in_the_readme_with_its_type() {
    let readme = include_str!("../../README.md");
    // Rows `| `name`, `name` | type | labels | meaning |`, indented in a list item.
    let rows: Vec<(Vec<&str>, &str)> = readme
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("| `retaind_"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let kind = *cells.get(1)?;
            let names = cells[0].split('`').skip(1).step_by(2).collect();
            ["counter", "gauge", "histogram"]
                .contains(&kind)
                .then_some((names, kind))
        })
        .collect();
    // A family with nothing recorded is not on the page: one sample in each.
    let m = Metrics::new("1");
    m.http_request("Publish", 200, Duration::from_millis(1));
    m.http_throttled("Publish");
    m.auth_failure(AuthFailure::bad_signature);
    m.store_cache(CacheResult::hit);
    m.store_error("write batch", "timeout");
    m.watch_resync(ResyncReason::overflow);
    m.mqtt_closed_before_connect(ForRoom::made_room);
    m.http_closed_for_room(1, 1);
    m.tls_handshakes_given_up(Listener::mqtts, 1);
    m.proxy_headers_refused(Listener::mqtt, 1);
    m.mqtt_dropped(DropReason::policy, 1);
    m.mqtt_sessions_evicted(SessionBound::node, 1);
    m.mqtt_connect_refused(ConnectRefusal::client_id_rate);
    m.mqtt_connect_paced(ConnectRate::principal);
    m.gauges()
        .store_pool_connections
        .get_or_create(&PoolLabel { state: "idle" })
        .set(1);
    m.gauges()
        .set_principal_queue_memory(vec![("fleet".to_owned(), 1)]);
    let page = m.render();
    let mut families = Vec::new();
    let mut wrong = Vec::new();
    for line in page.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
        match rows.iter().find(|(names, _)| names.contains(&name)) {
            None => wrong.push(format!("{name}: no row")),
            Some((_, k)) if *k != kind => wrong.push(format!("{name}: README {k}, page {kind}")),
            Some(_) => {}
        }
        families.push(name);
    }
    assert!(families.len() > 40, "{families:?}");
    for (names, _) in &rows {
        for name in names.iter().filter(|n| !families.contains(n)) {
            wrong.push(format!(
                "{name}: a row for a family the page does not carry"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
