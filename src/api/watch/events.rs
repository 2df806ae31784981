//! The Server-Sent Events of a watch, built from the store's watch items. Pure: items in,
//! events out. The shapes are the contract of issue 17 (README, "Watching the retained set").

use axum::response::sse::Event;
use serde::Serialize;

use super::super::retained::{GetRetainedMessageResponse, MessageWriter};
use crate::store::{ChangeKind, Resync, RetainedChange, Revision, WatchItem};
use crate::topic::TopicName;

/// `delete` data.
#[derive(Serialize)]
struct Deleted<'a> {
    topic: &'a str,
    revision: Revision,
    #[serde(skip_serializing_if = "Option::is_none")]
    writer: Option<MessageWriter>,
}

/// `expire` and `purge` data.
#[derive(Serialize)]
struct Gone<'a> {
    topic: &'a str,
    revision: Revision,
}

/// `synced` and `progress` data.
#[derive(Serialize)]
struct At {
    revision: Revision,
}

/// `resync` data.
#[derive(Serialize)]
struct StartOver {
    message: &'static str,
    revision: Revision,
}

/// The topic an item is about, which the caller must be allowed to get; `None` for the
/// items about the watch itself.
pub(super) fn topic(item: &WatchItem) -> Option<&TopicName> {
    match item {
        WatchItem::Current(message) => Some(&message.topic),
        WatchItem::Change(change) => Some(&change.topic),
        WatchItem::Synced(_) | WatchItem::Progress(_) | WatchItem::Resync { .. } => None,
    }
}

/// One event's parts: its name, its id (the revision a client resumes after) and its data.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Parts {
    pub name: &'static str,
    pub id: Option<Revision>,
    pub data: String,
}

/// The event for `item`.
pub(super) fn event(item: &WatchItem) -> Event {
    let Parts { name, id, data } = parts(item);
    let event = Event::default().event(name).data(data);
    match id {
        Some(id) => event.id(id.to_string()),
        None => event,
    }
}

pub(super) fn parts(item: &WatchItem) -> Parts {
    match item {
        // The snapshot is in topic order: its events carry no id, so a client cut off during
        // the snapshot has nothing to resume from and starts it again.
        WatchItem::Current(message) => Parts {
            name: "put",
            id: None,
            data: json(&GetRetainedMessageResponse::from(&**message)),
        },
        WatchItem::Synced(at) => Parts {
            name: "synced",
            id: Some(*at),
            data: json(&At { revision: *at }),
        },
        WatchItem::Change(change) => changed(change),
        WatchItem::Progress(at) => Parts {
            name: "progress",
            id: Some(*at),
            data: json(&At { revision: *at }),
        },
        WatchItem::Resync { why, revision } => Parts {
            name: "resync",
            id: None,
            data: json(&StartOver {
                message: match why {
                    Resync::Compacted => {
                        "resync required: changes after the requested revision have been \
                         compacted; start again without fromRevision or Last-Event-ID"
                    }
                    Resync::Overflow => {
                        "resync required: this watch fell too far behind the changes and its \
                         buffer filled; start again without fromRevision or Last-Event-ID"
                    }
                    Resync::Ahead => {
                        "resync required: the requested revision is above any this service's \
                         database has reached (a revision of another database, or of this one \
                         before it was restored from an older copy); start again without \
                         fromRevision or Last-Event-ID"
                    }
                },
                revision: *revision,
            }),
        },
    }
}

fn changed(change: &RetainedChange) -> Parts {
    let topic = change.topic.as_str();
    let revision = change.revision;
    let (name, data) = match &change.kind {
        ChangeKind::Put(message) => ("put", json(&GetRetainedMessageResponse::from(&**message))),
        ChangeKind::Delete => (
            "delete",
            json(&Deleted {
                topic,
                revision,
                writer: change.writer.as_ref().map(MessageWriter::from),
            }),
        ),
        ChangeKind::Expired => ("expire", json(&Gone { topic, revision })),
        ChangeKind::Purged => ("purge", json(&Gone { topic, revision })),
    };
    Parts {
        name,
        id: Some(revision),
        data,
    }
}

fn json(data: &impl Serialize) -> String {
    // These shapes are plain strings and numbers: serializing them does not fail.
    serde_json::to_string(data).expect("watch events always serialize")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::Writer;
    use crate::topic::TopicLimits;

    fn change(kind: ChangeKind, writer: Option<Writer>) -> WatchItem {
        WatchItem::Change(Arc::new(RetainedChange {
            revision: 8192,
            topic: TopicName::parse("a/b", TopicLimits::default()).unwrap(),
            kind,
            writer,
        }))
    }

    #[test]
    fn an_expiry_names_its_topic_and_revision() {
        assert_eq!(
            parts(&change(ChangeKind::Expired, None)),
            Parts {
                name: "expire",
                id: Some(8192),
                data: r#"{"topic":"a/b","revision":8192}"#.to_owned(),
            }
        );
    }

    #[test]
    fn a_delete_names_its_writer_without_an_empty_principal() {
        let writer = Writer {
            principal: Arc::from(""),
            client: Arc::from("HTTP"),
        };
        assert_eq!(
            parts(&change(ChangeKind::Delete, Some(writer))).data,
            r#"{"topic":"a/b","revision":8192,"writer":{"clientId":"HTTP"}}"#
        );
    }

    #[test]
    fn synced_and_progress_carry_their_revision_as_id_and_resync_none() {
        assert_eq!(parts(&WatchItem::Synced(7)).id, Some(7));
        assert_eq!(parts(&WatchItem::Progress(9)).data, r#"{"revision":9}"#);
        let resync = parts(&WatchItem::Resync {
            why: Resync::Overflow,
            revision: 3,
        });
        assert_eq!((resync.name, resync.id), ("resync", None));
        assert!(topic(&WatchItem::Synced(1)).is_none());
    }
}
