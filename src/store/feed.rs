//! The change feed: how a node learns that another process sharing the database changed
//! retained messages, so that its read cache forgets them.
//!
//! On Postgres every write batch sends a `NOTIFY` in the same transaction, so a listener hears
//! of a change once it is committed, and only then. Notifications are lost while a listener is
//! disconnected; the feed says so ([`Change::Lost`]) and the cache stops answering until the
//! feed is back ([`Change::Resumed`]), when it starts empty.

use serde::{Deserialize, Serialize};

use crate::topic::TopicName;

/// The Postgres channel the nodes notify each other on.
pub(super) const CHANNEL: &str = "retaind_changes";

/// Postgres refuses notification payloads of 8000 bytes or more; stay clear of the edge.
const MAX_PAYLOAD: usize = 7900;

/// What a node hears about changes made by others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// These topics changed (written, deleted or purged) and must be read again.
    Topics(Vec<TopicName>),
    /// Anything may have changed: forget everything.
    All,
    /// Changes may be going unheard from now on: stop trusting the cache.
    Lost,
    /// Changes are heard again; what was missed meanwhile is unknown, so start empty.
    Resumed,
}

/// One notification as sent on [`CHANNEL`]. `node` lets a node skip its own writes, which
/// its cache already reflects; `ping` is a node's heartbeat to itself.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct Notice {
    pub node: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping: Option<u64>,
}

/// The notification payloads announcing `topics`, each under the Postgres size limit. A topic
/// too long to announce on its own turns into one "everything changed" notice.
pub(super) fn announce<'a>(node: &str, topics: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let empty = |all| Notice {
        node: node.to_owned(),
        topics: Vec::new(),
        all,
        ping: None,
    };
    let overhead = json(&empty(false)).len() + r#","topics":[]"#.len();
    let mut payloads = Vec::new();
    let mut current = empty(false);
    let mut size = overhead;
    for topic in topics {
        let cost = serde_json::to_string(topic).map_or(usize::MAX, |s| s.len()) + 1;
        if overhead.saturating_add(cost) > MAX_PAYLOAD {
            return vec![json(&empty(true))];
        }
        if size + cost > MAX_PAYLOAD {
            payloads.push(json(&std::mem::replace(&mut current, empty(false))));
            size = overhead;
        }
        current.topics.push(topic.to_owned());
        size += cost;
    }
    if !current.topics.is_empty() {
        payloads.push(json(&current));
    }
    payloads
}

/// The notice that anything may have changed.
pub(super) fn everything(node: &str) -> String {
    json(&Notice {
        node: node.to_owned(),
        topics: Vec::new(),
        all: true,
        ping: None,
    })
}

pub(super) fn ping(node: &str, seq: u64) -> String {
    json(&Notice {
        node: node.to_owned(),
        topics: Vec::new(),
        all: false,
        ping: Some(seq),
    })
}

fn json(notice: &Notice) -> String {
    serde_json::to_string(notice).expect("a notice always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(payload: &str) -> Notice {
        serde_json::from_str(payload).unwrap()
    }

    #[test]
    fn topics_are_split_across_payloads_under_the_limit() {
        let topics: Vec<String> = (0..2000)
            .map(|i| format!("fleet/device-{i}/config"))
            .collect();
        let payloads = announce("n1", topics.iter().map(String::as_str));
        assert!(payloads.len() > 1);
        assert!(
            payloads.iter().all(|p| p.len() <= MAX_PAYLOAD),
            "a payload is too long"
        );
        let back: Vec<String> = payloads.iter().flat_map(|p| decode(p).topics).collect();
        assert_eq!(back, topics);
        assert!(
            payloads
                .iter()
                .all(|p| decode(p).node == "n1" && !decode(p).all)
        );
    }

    #[test]
    fn a_topic_too_long_to_announce_becomes_everything_changed() {
        let long = "a".repeat(MAX_PAYLOAD);
        let payloads = announce("n1", ["short", long.as_str()]);
        assert_eq!(payloads.len(), 1);
        let notice = decode(&payloads[0]);
        assert!(notice.all && notice.topics.is_empty());
    }

    #[test]
    fn nothing_to_announce_sends_nothing() {
        assert!(announce("n1", []).is_empty());
    }

    #[test]
    fn topics_with_quotes_and_newlines_survive() {
        let odd = "a\"b\\c\nd/é";
        let payloads = announce("n1", [odd]);
        assert_eq!(decode(&payloads[0]).topics, [odd]);
        assert_eq!(decode(&ping("n1", 7)).ping, Some(7));
    }
}
