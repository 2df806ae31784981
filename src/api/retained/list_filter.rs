//! ListRetainedMessages narrowed to a topic filter or prefix: a retaind extension, not part of
//! the AWS API (AWS has no filter on List, a gap users complain about).
//!
//! Pure: [`Selection`] says which topics a listing wants and which range of topics holds them;
//! [`FilteredPage`] decides which store pages to read and when a page of results is complete.
//! The handler runs the store queries it asks for.

use crate::store::RetainedSummary;
use crate::topic::{FilterSpec, TopicFilter, TopicName, check_text, prefix_end};

/// How far one filtered request may go. A sparse filter (`+/x` over millions of topics) must not
/// make one request read the whole table, so a request that reaches `max_examined` rows stops
/// there and answers with the matches so far (maybe none) and a `nextToken` after the last row
/// it read. Paginators follow that token like any other.
#[derive(Debug, Clone, Copy)]
pub(super) struct WalkLimits {
    /// Rows read from the store per query.
    pub(super) batch: u32,
    /// Rows read per request at most, matching or not.
    pub(super) max_examined: u32,
}

/// The OpenAPI description of `topicFilter` states `max_examined`; keep the two in step.
pub(super) const WALK_LIMITS: WalkLimits = WalkLimits {
    batch: 500,
    max_examined: 10_000,
};

/// The topics a listing asked for: those matching an MQTT topic filter, those starting with a
/// literal prefix, or both (AND).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Selection {
    filter: Option<TopicFilter>,
    prefix: Option<String>,
}

impl Selection {
    /// Parses the `topicFilter` and `topicPrefix` query parameters; `Ok(None)` when neither is
    /// given, which is the plain AWS listing. `Err` carries a message for the client.
    pub(super) fn parse(
        filter: Option<&str>,
        prefix: Option<&str>,
    ) -> Result<Option<Self>, String> {
        if filter.is_none() && prefix.is_none() {
            return Ok(None);
        }
        let filter = filter
            .map(|raw| match FilterSpec::parse(raw) {
                Ok(FilterSpec::Plain(filter)) => Ok(filter),
                Ok(FilterSpec::Shared { .. }) => Err(
                    "topicFilter must be a plain topic filter, not a shared subscription ($share/...)"
                        .to_owned(),
                ),
                Err(e) => Err(format!("topicFilter is not a valid MQTT topic filter: {e}")),
            })
            .transpose()?;
        let prefix = prefix
            .map(|raw| {
                if raw.is_empty() {
                    Err("topicPrefix must not be empty".to_owned())
                } else if let Err(e) = check_text(raw) {
                    // No topic contains it, and Postgres text cannot hold it as a bound.
                    Err(format!("topicPrefix {e}"))
                } else {
                    Ok(raw.to_owned())
                }
            })
            .transpose()?;
        Ok(Some(Self { filter, prefix }))
    }

    /// The range of topics, in byte order, that holds every selected topic: `[from, until)`,
    /// `until: None` when unbounded. The intersection of the filter's and the prefix's ranges;
    /// it may be empty (`from >= until`), which a store scans as nothing.
    pub(super) fn range(&self) -> (String, Option<String>) {
        let (mut from, mut until) = match &self.filter {
            Some(filter) => filter.scan_range(),
            None => (String::new(), None),
        };
        if let Some(prefix) = &self.prefix {
            // `str` compares bytewise, the order both stores use for topics.
            if *prefix > from {
                from.clone_from(prefix);
            }
            until = match (until, prefix_end(prefix)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        (from, until)
    }

    pub(super) fn matches(&self, topic: &TopicName) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(topic))
            && self
                .prefix
                .as_ref()
                .is_none_or(|p| topic.as_str().starts_with(p.as_str()))
    }
}

/// One page of a filtered listing, assembled from as many store pages as it takes.
///
/// It looks for one match more than the page holds, so that the last page of a listing carries
/// no `nextToken`, exactly as an unfiltered listing's does.
#[derive(Debug)]
pub(super) struct FilteredPage<'a> {
    selection: &'a Selection,
    page_size: usize,
    limits: WalkLimits,
    /// The last topic read: where the next store page starts.
    cursor: Option<TopicName>,
    examined: u32,
    found: Vec<RetainedSummary>,
    outcome: Option<Outcome>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The range has no more topics.
    RangeEnded,
    /// A match beyond the page was seen: another page follows the page's last topic.
    PageFull,
    /// `max_examined` rows were read: resume after the last one.
    Capped,
}

impl<'a> FilteredPage<'a> {
    /// Starts after `after` (from the request's `nextToken`), or at the range's start.
    pub(super) fn new(
        selection: &'a Selection,
        page_size: u32,
        after: Option<TopicName>,
        limits: WalkLimits,
    ) -> Self {
        Self {
            selection,
            page_size: page_size as usize,
            limits,
            cursor: after,
            examined: 0,
            found: Vec::new(),
            outcome: None,
        }
    }

    /// The store page to read next, `(after, limit)`, or `None` once the page is complete.
    pub(super) fn next_read(&self) -> Option<(Option<&TopicName>, u32)> {
        if self.outcome.is_some() {
            return None;
        }
        Some((self.cursor.as_ref(), self.next_limit()))
    }

    fn next_limit(&self) -> u32 {
        self.limits
            .batch
            .min(self.limits.max_examined - self.examined)
    }

    /// Takes the rows of the store page that [`Self::next_read`] asked for.
    pub(super) fn take(&mut self, rows: Vec<RetainedSummary>) {
        let asked = self.next_limit() as usize;
        let range_ended = rows.len() < asked;
        for row in rows {
            self.examined += 1;
            self.cursor = Some(row.topic.clone());
            if self.selection.matches(&row.topic) {
                if self.found.len() == self.page_size {
                    self.outcome = Some(Outcome::PageFull);
                    return;
                }
                self.found.push(row);
            }
        }
        if range_ended {
            self.outcome = Some(Outcome::RangeEnded);
        } else if self.examined >= self.limits.max_examined {
            self.outcome = Some(Outcome::Capped);
        }
    }

    /// The matches found, and the topic the next page resumes after (`None`: listing complete).
    pub(super) fn finish(self) -> (Vec<RetainedSummary>, Option<TopicName>) {
        let resume = match self.outcome {
            None | Some(Outcome::RangeEnded) => None,
            Some(Outcome::PageFull) => self.found.last().map(|s| s.topic.clone()),
            Some(Outcome::Capped) => self.cursor,
        };
        (self.found, resume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Qos;

    fn selection(filter: Option<&str>, prefix: Option<&str>) -> Selection {
        Selection::parse(filter, prefix).unwrap().unwrap()
    }

    fn name(s: &str) -> TopicName {
        TopicName::from_stored(s.to_owned())
    }

    fn summary(t: &str) -> RetainedSummary {
        RetainedSummary {
            topic: name(t),
            payload_size: 1,
            qos: Qos::AtMostOnce,
            last_modified_ms: 0,
            revision: 0,
        }
    }

    /// Runs a walk against sorted `topics` as the store would answer it; returns the pages of
    /// store reads it asked for, the matches and where it resumes.
    fn walk(
        sel: &Selection,
        topics: &[&str],
        page_size: u32,
        after: Option<&str>,
        limits: WalkLimits,
    ) -> (usize, Vec<String>, Option<String>) {
        let (from, until) = sel.range();
        let mut page = FilteredPage::new(sel, page_size, after.map(name), limits);
        let mut reads = 0;
        while let Some((after, limit)) = page.next_read() {
            reads += 1;
            let rows = topics
                .iter()
                .filter(|t| **t >= from.as_str() && until.as_deref().is_none_or(|u| **t < u))
                .filter(|t| after.is_none_or(|a| **t > a.as_str()))
                .take(limit as usize)
                .map(|t| summary(t))
                .collect();
            page.take(rows);
        }
        let (found, resume) = page.finish();
        let found = found.into_iter().map(|s| s.topic.to_string()).collect();
        (reads, found, resume.map(|t| t.to_string()))
    }

    const SMALL: WalkLimits = WalkLimits {
        batch: 2,
        max_examined: 5,
    };

    #[test]
    fn neither_parameter_is_the_plain_listing() {
        assert_eq!(Selection::parse(None, None), Ok(None));
    }

    #[test]
    fn invalid_filters_and_prefixes_are_refused() {
        for (filter, prefix) in [
            (Some(""), None),
            (Some("a/#/b"), None),
            (Some("a+"), None),
            (Some("a\0"), None),
            (Some("$share/g/a/#"), None),
            (Some("$share/"), None),
            (None, Some("")),
            (None, Some("a\0")),
            (Some("a/#"), Some("")),
        ] {
            assert!(
                Selection::parse(filter, prefix).is_err(),
                "{filter:?} {prefix:?}"
            );
        }
        // `$share` alone is an ordinary filter, as for SUBSCRIBE.
        assert!(Selection::parse(Some("$share"), None).is_ok());
    }

    #[test]
    fn the_range_is_the_intersection_of_filter_and_prefix() {
        let range = |f, p| selection(f, p).range();
        assert_eq!(range(Some("a/+/c"), None), ("a/".into(), Some("a0".into())));
        assert_eq!(range(None, Some("a/b")), ("a/b".into(), Some("a/c".into())));
        assert_eq!(range(Some("#"), None), ("".into(), None));
        assert_eq!(range(Some("#"), Some("x")), ("x".into(), Some("y".into())));
        assert_eq!(
            range(Some("a/#"), Some("a/b")),
            ("a/b".into(), Some("a/c".into()))
        );
        assert_eq!(
            range(Some("a/b/#"), Some("a")),
            ("a/b".into(), Some("a/b0".into()))
        );
        // Disjoint: an empty (inverted) range.
        let (from, until) = range(Some("a/#"), Some("b"));
        assert!(from.as_str() >= until.as_deref().unwrap());
    }

    #[test]
    fn matching_needs_both_filter_and_prefix() {
        let sel = selection(Some("+/temp"), Some("dev"));
        assert!(sel.matches(&name("devices/temp")));
        assert!(!sel.matches(&name("devices/humidity")));
        assert!(!sel.matches(&name("rooms/temp")));
        // [MQTT-4.7.2-1] a leading wildcard does not reach `$` topics; a prefix names them.
        assert!(!selection(Some("#"), None).matches(&name("$SYS/a")));
        assert!(selection(Some("$SYS/#"), None).matches(&name("$SYS/a")));
        assert!(selection(None, Some("$")).matches(&name("$SYS/a")));
    }

    #[test]
    fn a_page_ends_with_a_token_only_when_another_match_follows() {
        let sel = selection(Some("+/x"), None);
        let topics = ["a/x", "a/y", "b/x", "b/y", "c/x"];
        let limits = WalkLimits {
            batch: 2,
            max_examined: 100,
        };
        let (_, found, resume) = walk(&sel, &topics, 2, None, limits);
        assert_eq!(
            (found, resume.as_deref()),
            (vec!["a/x".into(), "b/x".into()], Some("b/x"))
        );
        let (_, found, resume) = walk(&sel, &topics, 2, Some("b/x"), limits);
        assert_eq!((found, resume), (vec!["c/x".into()], None));
        // Exactly a page of matches: no token, no empty page after it.
        let (_, found, resume) = walk(&sel, &topics, 3, None, limits);
        assert_eq!(found.len(), 3);
        assert_eq!(resume, None);
    }

    #[test]
    fn a_sparse_filter_stops_at_the_cap_and_resumes_after_the_last_row_read() {
        let sel = selection(Some("+/x"), None);
        let topics = ["a/x", "b/1", "b/2", "b/3", "b/4", "b/5", "c/x"];
        let (reads, found, resume) = walk(&sel, &topics, 10, None, SMALL);
        // Reads of 2, 2 and 1 rows: the last one asks for no more than the cap leaves.
        assert_eq!(reads, 3);
        assert_eq!(
            (found, resume.as_deref()),
            (vec!["a/x".into()], Some("b/4"))
        );
        let (_, found, resume) = walk(&sel, &topics, 10, Some("b/4"), SMALL);
        assert_eq!((found, resume), (vec!["c/x".into()], None));
        // A capped request may find nothing at all and still hand back a token.
        let (_, found, resume) = walk(&sel, &topics[1..], 10, None, SMALL);
        assert_eq!((found.len(), resume.as_deref()), (0, Some("b/5")));
    }

    #[test]
    fn a_walk_stops_when_the_range_ends() {
        let sel = selection(None, Some("b/"));
        let topics = ["a/x", "b/1", "b/2", "b/3", "c/x"];
        let (reads, found, resume) = walk(&sel, &topics, 10, None, SMALL);
        assert_eq!(reads, 2);
        assert_eq!(found, ["b/1", "b/2", "b/3"]);
        assert_eq!(resume, None);
    }
}
