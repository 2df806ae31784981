//! MQTT topics and filters as NATS subjects, under a prefix (decision 014).
//!
//! Each topic level becomes one token, so matching carries over: MQTT `+` is NATS `*`, and
//! `#` is `>` plus the parent level itself (MQTT's `a/#` matches `a`, NATS's `a.>` does not).
//! A level keeps `[A-Za-z0-9_-]` and writes every other byte as `~XX` (hex, `~` included); an
//! empty level is `~` alone. That is injective, so two topics never share a subject, and it
//! keeps `.`, `*`, `>`, spaces and a leading `$` out of the tokens, where NATS would read them
//! as structure or as its own system subjects. The exact topic still travels with each
//! message: a receiver matches it against its own subscriptions, which also applies the MQTT
//! rule that wildcards never match `$` topics (NATS's do).

use std::fmt::Write as _;

use crate::topic::{TopicFilter, TopicName, levels};

/// The token (below `messages`) under which publishes travel.
const MESSAGES: &str = "m";

/// The subject a publish to `topic` is sent on.
pub fn topic_subject(prefix: &str, topic: &TopicName) -> String {
    let mut subject = messages_root(prefix, topic.as_str().len());
    for level in levels(topic.as_str()) {
        subject.push('.');
        push_level(&mut subject, level);
    }
    subject
}

/// The subjects to subscribe to for `filter`: one, or two for a filter ending in `#` with
/// levels before it (the parent level and everything below it).
pub fn filter_subjects(prefix: &str, filter: &TopicFilter) -> Vec<String> {
    let mut subject = messages_root(prefix, filter.as_str().len());
    for level in levels(filter.as_str()) {
        match level {
            "+" => subject.push_str(".*"),
            "#" => {
                // `#` is always the last level [MQTT-4.7.1-1].
                let parent =
                    (subject.len() > prefix.len() + 1 + MESSAGES.len()).then(|| subject.clone());
                subject.push_str(".>");
                return parent.into_iter().chain([subject]).collect();
            }
            level => {
                subject.push('.');
                push_level(&mut subject, level);
            }
        }
    }
    vec![subject]
}

/// The NATS queue group of the MQTT shared subscription `$share/<group>/<filter>`: its
/// members on every node share it, so NATS hands each message to one of them. The filter is
/// part of the group's identity in MQTT, so its digest is part of the name.
pub fn queue_group(group: &str, filter: &TopicFilter) -> String {
    use sha2::{Digest, Sha256};
    let mut name = String::with_capacity(group.len() + 34);
    push_level(&mut name, group);
    let digest = Sha256::digest(filter.as_str().as_bytes());
    name.push('_');
    name.push_str(&hex::encode(&digest[..16]));
    name
}

fn messages_root(prefix: &str, topic_len: usize) -> String {
    let mut root = String::with_capacity(prefix.len() + 2 + topic_len * 3 / 2);
    root.push_str(prefix);
    root.push('.');
    root.push_str(MESSAGES);
    root
}

fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push('~');
        return;
    }
    for b in level.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "~{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::TopicLimits;

    fn topic(s: &str) -> TopicName {
        TopicName::parse(s, TopicLimits::default()).unwrap()
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    /// NATS's own matching of a subject against a subscription subject.
    fn nats_matches(pattern: &str, subject: &str) -> bool {
        let mut pattern = pattern.split('.');
        let mut subject = subject.split('.');
        loop {
            match (pattern.next(), subject.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(s)) if p == s => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    #[test]
    fn levels_keep_safe_bytes_and_escape_the_rest() {
        assert_eq!(topic_subject("r", &topic("a/B_c-9")), "r.m.a.B_c-9");
        assert_eq!(topic_subject("r", &topic("a.b/c d")), "r.m.a~2Eb.c~20d");
        assert_eq!(topic_subject("r", &topic("~/*/>")), "r.m.~7E.~2A.~3E");
        assert_eq!(topic_subject("r", &topic("/a//")), "r.m.~.a.~.~");
        assert_eq!(topic_subject("r", &topic("é")), "r.m.~C3~A9");
        assert_eq!(topic_subject("r", &topic("$SYS/x")), "r.m.~24SYS.x");
    }

    #[test]
    fn distinct_topics_get_distinct_subjects() {
        let topics = [
            "a/b", "a.b", "a~2Eb", "a", "a/", "/a", "/", "~", "~7E", "a//b", "a/~/b", "a b", "a_b",
        ];
        let subjects: std::collections::HashSet<String> = topics
            .iter()
            .map(|t| topic_subject("r", &topic(t)))
            .collect();
        assert_eq!(subjects.len(), topics.len());
    }

    #[test]
    fn wildcards_become_nats_wildcards() {
        assert_eq!(filter_subjects("r", &filter("a/+/c")), ["r.m.a.*.c"]);
        assert_eq!(filter_subjects("r", &filter("a/#")), ["r.m.a", "r.m.a.>"]);
        assert_eq!(
            filter_subjects("r", &filter("a/+/#")),
            ["r.m.a.*", "r.m.a.*.>"]
        );
        assert_eq!(filter_subjects("r", &filter("#")), ["r.m.>"]);
        assert_eq!(filter_subjects("r", &filter("+")), ["r.m.*"]);
        assert_eq!(filter_subjects("r", &filter("/#")), ["r.m.~", "r.m.~.>"]);
        assert_eq!(filter_subjects("r", &filter("a.b/c")), ["r.m.a~2Eb.c"]);
    }

    #[test]
    fn a_subject_matches_exactly_when_the_topic_does_apart_from_dollar_topics() {
        let topics = [
            "a", "a/b", "a/b/c", "a/", "/a", "/", "a//c", "b/b/c", "a.b", "x y/z", "~/a", "$SYS/a",
        ];
        let filters = [
            "#", "+", "a", "a/#", "a/+", "a/+/c", "+/b/#", "/#", "+/+", "a/b/#", "a.b", "~/#",
            "$SYS/#", "+/a",
        ];
        for t in topics {
            let t = topic(t);
            let subject = topic_subject("r", &t);
            for f in filters {
                let f = filter(f);
                let nats = filter_subjects("r", &f)
                    .iter()
                    .any(|p| nats_matches(p, &subject));
                if t.as_str().starts_with('$') && f.as_str().starts_with(['+', '#']) {
                    // NATS matches these; the receiver's MQTT match drops them [MQTT-4.7.2-1].
                    assert!(!f.matches(&t));
                    continue;
                }
                assert_eq!(nats, f.matches(&t), "{} vs {}", f.as_str(), t.as_str());
            }
        }
    }
}
