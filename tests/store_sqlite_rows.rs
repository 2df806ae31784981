//! Rows of a SQLite file that retaind itself never writes (by hand, by an older release, by
//! another tool): a scan, which reads on connections of its own rather than sqlx's, must serve
//! them as a point read does, beside the rows around them.

mod common;

use common::writes::message;
use common::{Backend, T0_MS, fresh_db, open_backend, topic};
use retaind::store::{PayloadFormat, Readers, RetainedPublish, Write};

#[tokio::test]
async fn a_scan_serves_a_row_written_by_hand_as_a_point_read_does() {
    let db = fresh_db(Backend::Sqlite).await;
    let store = open_backend(&db.url).await;
    let writes: Vec<_> = ["h/a", "h/b", "h/c"]
        .into_iter()
        .map(|t| Write::Put(message(t, "stored", T0_MS)).into())
        .collect();
    store
        .apply(&writes, None, T0_MS, common::far_deadline())
        .await
        .unwrap();
    // A payload held as text, a content type MQTT cannot carry (U+0000), user properties that
    // are not JSON, and correlation data held as text: SQLite keeps whatever it is given.
    common::execute_sql(
        &db.url,
        "UPDATE retained_messages SET payload = 'as text', content_type = 'a' || char(0) || 'b',
                user_properties = '[not json', correlation_data = 'corr', payload_format = 1
         WHERE topic = 'h/b'",
    )
    .await;

    let page = store.scan("h/", Some("h0"), None, 10, T0_MS).await.unwrap();
    let topics: Vec<&str> = page.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(topics, ["h/a", "h/b", "h/c"]);
    let scanned = &page[1];
    assert_eq!(&scanned.payload[..], b"as text");
    assert_eq!(scanned.properties.content_type, None);
    assert!(scanned.properties.user_properties.is_empty());
    assert_eq!(
        scanned.properties.correlation_data.as_deref(),
        Some(&b"corr"[..])
    );
    assert_eq!(scanned.properties.payload_format, PayloadFormat::Utf8);
    assert_eq!(&page[0].payload[..], b"stored");
    assert_eq!(&page[2].payload[..], b"stored");

    let read = store.get_many(&[topic("h/b")], T0_MS).await.unwrap();
    assert_eq!(read, std::slice::from_ref(scanned));

    // A delivery's scan serves the same of each row, on either connections.
    let expected: Vec<RetainedPublish> = page.into_iter().map(RetainedPublish::from).collect();
    for readers in [Readers::Shared, Readers::Bulk] {
        let published = store
            .scan_publishes("h/", Some("h0"), None, 10, T0_MS, readers)
            .await
            .unwrap();
        assert_eq!(published, expected, "{readers:?}");
    }
}
