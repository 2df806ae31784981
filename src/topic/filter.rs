//! Topic filters: what SUBSCRIBE names, how a filter matches a topic name, and which range of
//! names a store must scan to find every match. Pure; the subscription tree that matches many
//! filters at once is `tree`.

use std::fmt;

use super::TopicName;

/// The MQTT limit on any UTF-8 string in a packet, topic filters included ([MQTT-4.7.3-3]).
const MAX_FILTER_BYTES: usize = 65_535;

/// The prefix that turns a SUBSCRIBE filter into an MQTT 5 shared subscription.
const SHARE_PREFIX: &str = "$share/";

/// Why a string is not an acceptable topic filter. The messages may be shown to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    // [MQTT-4.7.3-1] topic filters are at least one character long.
    #[error("topic filter must not be empty")]
    Empty,
    // [MQTT-4.7.3-3] an MQTT string is at most 65535 bytes.
    #[error("topic filter is {actual} bytes long; MQTT allows at most 65535 bytes")]
    TooLong { actual: usize },
    // [MQTT-4.7.3-2] U+0000 is not allowed in topic filters.
    #[error("topic filter must not contain the null character U+0000")]
    NullCharacter,
    // [MQTT-4.7.1-1]
    #[error("the wildcard '#' must be a whole level and the last level of a topic filter")]
    MisplacedMultiLevelWildcard,
    // [MQTT-4.7.1-2]
    #[error("the wildcard '+' must be a whole level of a topic filter")]
    MisplacedSingleLevelWildcard,
    // [MQTT-4.8.2-1]
    #[error("a shared subscription needs a share name of at least one character")]
    EmptyShareName,
    // [MQTT-4.8.2-2]
    #[error("a share name must not contain '+' or '#'")]
    InvalidShareName,
    // [MQTT-4.8.2-2]
    #[error("a share name must be followed by '/' and a topic filter")]
    MissingSharedFilter,
}

/// A valid MQTT topic filter: what a client subscribes to, possibly with `+` and `#`.
///
/// Only the MQTT rules are checked here; the deployment's `TopicLimits` concern the names
/// messages are published to, and a filter longer than every allowed name simply matches less.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicFilter(String);

impl TopicFilter {
    pub fn parse(raw: impl Into<String>) -> Result<Self, FilterError> {
        let raw = raw.into();
        if raw.is_empty() {
            return Err(FilterError::Empty);
        }
        if raw.len() > MAX_FILTER_BYTES {
            return Err(FilterError::TooLong { actual: raw.len() });
        }
        if raw.contains('\0') {
            return Err(FilterError::NullCharacter);
        }
        let mut levels = raw.split('/').peekable();
        while let Some(level) = levels.next() {
            let is_last = levels.peek().is_none();
            // [MQTT-4.7.1-1] '#' alone in its level, and that level is the last.
            if level.contains('#') && (level != "#" || !is_last) {
                return Err(FilterError::MisplacedMultiLevelWildcard);
            }
            // [MQTT-4.7.1-2] '+' occupies a whole level.
            if level.contains('+') && level != "+" {
                return Err(FilterError::MisplacedSingleLevelWildcard);
            }
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn has_wildcards(&self) -> bool {
        // Parsing guarantees these characters only ever appear as wildcard levels.
        self.0.contains(['+', '#'])
    }

    /// Whether a message published to `topic` reaches this filter.
    ///
    /// `+` matches exactly one level, which may be empty (`+/a` matches `/a`); `#` matches the
    /// rest, including nothing at all, so `sport/#` matches `sport`.
    pub fn matches(&self, topic: &TopicName) -> bool {
        // [MQTT-4.7.2-1] server topics such as `$SYS/...` are not caught by a leading wildcard.
        if topic.is_reserved() && self.0.starts_with(['+', '#']) {
            return false;
        }
        let mut names = super::levels(topic.as_str());
        for level in super::levels(&self.0) {
            match level {
                "#" => return true,
                "+" => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                literal => {
                    if names.next() != Some(literal) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }

    /// The range of topic names, in byte order, that holds every name this filter can match:
    /// `(from, until)`, `until` exclusive and `None` when unbounded. A store scans this range
    /// and keeps what `matches`, so only the literal levels before the first wildcard narrow it.
    ///
    /// - no wildcard: exactly the filter. The bound is the filter followed by U+0001 rather
    ///   than U+0000, the true successor, because Postgres text cannot hold U+0000; no name
    ///   contains U+0000, so the range still holds only the filter itself.
    /// - `a/b/#`: from `a/b` (which `#` matches too) to the end of the names starting `a/b/`.
    /// - `a/+/c`: the names starting with `a/`.
    /// - `#`, `+/x`: everything.
    pub fn scan_range(&self) -> (String, Option<String>) {
        let Some(wildcard) = self.first_wildcard() else {
            let until = format!("{}\u{1}", self.0);
            return (self.0.clone(), Some(until));
        };
        // Everything before the wildcard level, ending in '/' unless it is empty.
        let prefix = &self.0[..wildcard];
        let from = if self.0[wildcard..].starts_with('#') {
            // `a/#` matches `a` itself, which sorts before every name starting with `a/`.
            prefix.strip_suffix('/').unwrap_or(prefix)
        } else {
            prefix
        };
        (from.to_owned(), prefix_end(prefix))
    }

    /// The byte offset of the first wildcard level, if any.
    fn first_wildcard(&self) -> Option<usize> {
        let mut offset = 0;
        for level in self.0.split('/') {
            if level == "+" || level == "#" {
                return Some(offset);
            }
            offset += level.len() + 1;
        }
        None
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for TopicFilter {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The smallest string greater than every string that starts with `prefix`, or `None` when
/// there is no such string (the prefix is empty or made only of `char::MAX`).
///
/// UTF-8 byte order is code point order, so the bound is the prefix with its last character
/// replaced by the next Unicode scalar value; a `char::MAX` has no successor and is dropped,
/// carrying into the character before it.
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut end = prefix.to_owned();
    while let Some(last) = end.pop() {
        let next = match last {
            char::MAX => continue,
            // Surrogates are not scalar values; the successor of U+D7FF is U+E000.
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(u32::from(c) + 1),
        };
        if let Some(next) = next {
            end.push(next);
            return Some(end);
        }
    }
    None
}

/// A SUBSCRIBE topic filter as the client wrote it: a plain filter, or an MQTT 5 shared
/// subscription `$share/{group}/{filter}` whose messages go to one member of the group.
///
/// Only a filter starting `$share/` is shared; `$share` alone is an ordinary filter, as in
/// Mosquitto.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FilterSpec {
    Plain(TopicFilter),
    Shared { group: String, filter: TopicFilter },
}

impl FilterSpec {
    pub fn parse(raw: &str) -> Result<Self, FilterError> {
        let Some(rest) = raw.strip_prefix(SHARE_PREFIX) else {
            return TopicFilter::parse(raw).map(Self::Plain);
        };
        if raw.len() > MAX_FILTER_BYTES {
            return Err(FilterError::TooLong { actual: raw.len() });
        }
        // [MQTT-4.8.2-2] the share name ends at the first '/', which must be there.
        let Some((group, filter)) = rest.split_once('/') else {
            return Err(if rest.is_empty() {
                FilterError::EmptyShareName
            } else {
                FilterError::MissingSharedFilter
            });
        };
        // [MQTT-4.8.2-1]
        if group.is_empty() {
            return Err(FilterError::EmptyShareName);
        }
        // [MQTT-4.8.2-2]
        if group.contains(['+', '#']) {
            return Err(FilterError::InvalidShareName);
        }
        if group.contains('\0') {
            return Err(FilterError::NullCharacter);
        }
        // [MQTT-4.8.2-2] the '/' after the share name is followed by a topic filter.
        if filter.is_empty() {
            return Err(FilterError::MissingSharedFilter);
        }
        Ok(Self::Shared {
            group: group.to_owned(),
            filter: TopicFilter::parse(filter)?,
        })
    }

    /// The filter topics are matched against (for a shared subscription, without the prefix).
    pub fn filter(&self) -> &TopicFilter {
        match self {
            Self::Plain(filter) | Self::Shared { filter, .. } => filter,
        }
    }

    pub fn share_group(&self) -> Option<&str> {
        match self {
            Self::Plain(_) => None,
            Self::Shared { group, .. } => Some(group),
        }
    }
}

impl fmt::Display for FilterSpec {
    /// The filter as the client wrote it, as UNSUBSCRIBE names it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain(filter) => write!(f, "{filter}"),
            Self::Shared { group, filter } => write!(f, "{SHARE_PREFIX}{group}/{filter}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::TopicLimits;
    use proptest::prelude::*;

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    fn name(s: &str) -> TopicName {
        let limits = TopicLimits {
            max_bytes: 65_535,
            max_levels: 65_535,
        };
        TopicName::parse(s, limits).unwrap()
    }

    fn matches(f: &str, t: &str) -> bool {
        filter(f).matches(&name(t))
    }

    #[test]
    fn valid_filters_parse() {
        for ok in [
            "a", "a/b", "#", "+", "a/#", "a/+", "+/+", "+/#", "/#", "a//b", "/", "$SYS/#", "a/+/c",
            "ünï/+",
        ] {
            assert_eq!(filter(ok).as_str(), ok);
        }
    }

    #[test]
    fn empty_filter_is_rejected() {
        assert_eq!(TopicFilter::parse(""), Err(FilterError::Empty));
    }

    #[test]
    fn filter_over_65535_bytes_is_rejected() {
        assert!(TopicFilter::parse("a".repeat(65_535)).is_ok());
        assert_eq!(
            TopicFilter::parse("a".repeat(65_536)),
            Err(FilterError::TooLong { actual: 65_536 })
        );
    }

    #[test]
    fn null_character_is_rejected() {
        assert_eq!(TopicFilter::parse("a/\0"), Err(FilterError::NullCharacter));
    }

    #[test]
    fn hash_must_be_a_whole_last_level() {
        for bad in ["a/#/b", "#/a", "a#", "a/b#", "#a", "##", "a/#/"] {
            assert_eq!(
                TopicFilter::parse(bad),
                Err(FilterError::MisplacedMultiLevelWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn plus_must_be_a_whole_level() {
        for bad in ["a+", "a/+b", "++", "+a/b", "a/b+/c"] {
            assert_eq!(
                TopicFilter::parse(bad),
                Err(FilterError::MisplacedSingleLevelWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn wildcards_are_detected() {
        assert!(filter("a/+").has_wildcards());
        assert!(filter("#").has_wildcards());
        assert!(!filter("a/b").has_wildcards());
    }

    #[test]
    fn literal_filter_matches_only_the_same_name() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b", "a"));
        assert!(!matches("a/b", "a/bc"));
        assert!(!matches("a/b", "a/b/"));
    }

    #[test]
    fn hash_matches_parent_level_and_everything_below() {
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/#", "sport/"));
        assert!(matches("sport/#", "sport/tennis/player1"));
        assert!(!matches("sport/#", "sports"));
        assert!(matches("#", "a/b/c"));
        assert!(matches("/#", "/"));
        assert!(!matches("/#", "a"));
    }

    #[test]
    fn plus_matches_exactly_one_level_including_an_empty_one() {
        assert!(matches("a/+", "a/b"));
        assert!(matches("a/+", "a/"));
        assert!(!matches("a/+", "a"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("+/a", "/a"));
        assert!(matches("+", "x"));
        assert!(matches("+/+", "/"));
        assert!(matches("a/+/c", "a//c"));
    }

    #[test]
    fn empty_levels_match_literally() {
        assert!(matches("a//b", "a//b"));
        assert!(!matches("a//b", "a/b"));
        assert!(matches("/", "/"));
    }

    #[test]
    fn dollar_topics_not_matched_by_leading_wildcards() {
        assert!(!matches("#", "$SYS/uptime"));
        assert!(!matches("+/uptime", "$SYS/uptime"));
        assert!(!matches("+", "$SYS"));
        assert!(matches("$SYS/#", "$SYS/uptime"));
        assert!(matches("$SYS/+", "$SYS/uptime"));
        // Only the first level is special.
        assert!(matches("a/+", "a/$b"));
        assert!(matches("a/#", "a/$b"));
    }

    #[test]
    fn scan_range_of_a_literal_filter_holds_only_that_name() {
        assert_eq!(
            filter("a/b").scan_range(),
            ("a/b".to_owned(), Some("a/b\u{1}".to_owned()))
        );
    }

    #[test]
    fn scan_range_of_hash_starts_at_the_parent_level() {
        assert_eq!(
            filter("a/b/#").scan_range(),
            ("a/b".to_owned(), Some("a/b0".to_owned()))
        );
        assert_eq!(
            filter("/#").scan_range(),
            ("".to_owned(), Some("0".to_owned()))
        );
    }

    #[test]
    fn scan_range_of_plus_covers_the_literal_prefix() {
        assert_eq!(
            filter("a/+/c").scan_range(),
            ("a/".to_owned(), Some("a0".to_owned()))
        );
    }

    #[test]
    fn scan_range_with_a_leading_wildcard_is_unbounded() {
        for f in ["#", "+", "+/x", "+/#"] {
            assert_eq!(filter(f).scan_range(), (String::new(), None), "{f}");
        }
    }

    #[test]
    fn prefix_end_increments_the_last_character() {
        assert_eq!(prefix_end("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_end("a/").as_deref(), Some("a0"));
        assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{10FFFF}\u{10FFFF}"), None);
        assert_eq!(prefix_end(""), None);
    }

    #[test]
    fn plain_spec_is_just_a_filter() {
        let spec = FilterSpec::parse("a/+").unwrap();
        assert_eq!(spec, FilterSpec::Plain(filter("a/+")));
        assert_eq!(spec.share_group(), None);
        assert_eq!(spec.to_string(), "a/+");
        // Without the slash it is not a shared subscription.
        assert_eq!(
            FilterSpec::parse("$share").unwrap(),
            FilterSpec::Plain(filter("$share"))
        );
    }

    #[test]
    fn shared_spec_splits_group_and_filter() {
        let spec = FilterSpec::parse("$share/workers/jobs/#").unwrap();
        assert_eq!(spec.share_group(), Some("workers"));
        assert_eq!(spec.filter(), &filter("jobs/#"));
        assert_eq!(spec.to_string(), "$share/workers/jobs/#");
        // The filter after the group may itself start with '/' or be a wildcard.
        assert_eq!(
            FilterSpec::parse("$share/g//a").unwrap().filter(),
            &filter("/a")
        );
        assert_eq!(
            FilterSpec::parse("$share/g/#").unwrap().filter(),
            &filter("#")
        );
    }

    #[test]
    fn shared_spec_without_a_group_is_rejected() {
        for bad in ["$share/", "$share//a"] {
            assert_eq!(
                FilterSpec::parse(bad),
                Err(FilterError::EmptyShareName),
                "{bad}"
            );
        }
    }

    #[test]
    fn shared_group_with_wildcards_is_rejected() {
        for bad in ["$share/+/a", "$share/g#/a", "$share/#/a"] {
            assert_eq!(
                FilterSpec::parse(bad),
                Err(FilterError::InvalidShareName),
                "{bad}"
            );
        }
    }

    #[test]
    fn shared_spec_without_a_filter_is_rejected() {
        for bad in ["$share/g", "$share/g/"] {
            assert_eq!(
                FilterSpec::parse(bad),
                Err(FilterError::MissingSharedFilter),
                "{bad}"
            );
        }
    }

    #[test]
    fn shared_spec_with_an_invalid_filter_is_rejected() {
        assert_eq!(
            FilterSpec::parse("$share/g/a/#/b"),
            Err(FilterError::MisplacedMultiLevelWildcard)
        );
        assert_eq!(
            FilterSpec::parse("$share/g\0/a"),
            Err(FilterError::NullCharacter)
        );
    }

    /// Levels small enough that random filters and names often meet, with the characters
    /// that sit next to '/' in byte order and some at the ends of the code space.
    fn level() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "a",
            "b",
            "ab",
            "$s",
            "",
            ".",
            "0",
            "a.",
            "\u{D7FF}",
            "\u{10FFFF}",
        ])
        .prop_map(str::to_owned)
    }

    fn topic_name() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..=4)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("names are not empty", |name| !name.is_empty())
    }

    fn topic_filter() -> impl Strategy<Value = String> {
        let filter_level = prop_oneof![
            3 => level(),
            1 => Just("+".to_owned()),
        ];
        (prop::collection::vec(filter_level, 1..=5), any::<bool>())
            .prop_map(|(mut levels, hash)| {
                if hash && let Some(last) = levels.last_mut() {
                    *last = "#".to_owned();
                }
                levels.join("/")
            })
            .prop_filter("filters are not empty", |filter| !filter.is_empty())
    }

    proptest! {
        #[test]
        fn every_matching_name_lies_in_the_scan_range(
            f in topic_filter(),
            names in prop::collection::vec(topic_name(), 1..32),
        ) {
            let f = filter(&f);
            let (from, until) = f.scan_range();
            for t in names {
                if f.matches(&name(&t)) {
                    prop_assert!(from.as_str() <= t.as_str(), "{f} matches {t:?} below {from:?}");
                    if let Some(until) = &until {
                        prop_assert!(t.as_str() < until.as_str(), "{f} matches {t:?} beyond {until:?}");
                    }
                }
            }
        }

        #[test]
        fn names_made_to_match_lie_in_the_scan_range(
            f in topic_filter(),
            fillers in prop::collection::vec(level(), 6),
            below_hash in 0usize..=2,
        ) {
            // Fill each '+' with one level and '#' with up to two, so the name matches.
            let mut fillers = fillers.into_iter();
            let mut levels = Vec::new();
            for level in f.split('/') {
                match level {
                    "+" => levels.extend(fillers.next()),
                    "#" => levels.extend(fillers.by_ref().take(below_hash)),
                    literal => levels.push(literal.to_owned()),
                }
            }
            let t = levels.join("/");
            prop_assume!(!t.is_empty());
            let f = filter(&f);
            prop_assume!(f.matches(&name(&t)), "the $ rule may refuse a generated name");
            let (from, until) = f.scan_range();
            prop_assert!(from.as_str() <= t.as_str(), "{f} matches {t:?} below {from:?}");
            if let Some(until) = &until {
                prop_assert!(t.as_str() < until.as_str(), "{f} matches {t:?} beyond {until:?}");
            }
        }

        #[test]
        fn literal_scan_range_holds_nothing_but_the_filter(f in topic_name(), t in topic_name()) {
            let (from, until) = filter(&f).scan_range();
            let until = until.expect("a literal filter has an upper bound");
            let inside = from.as_str() <= t.as_str() && t.as_str() < until.as_str();
            prop_assert_eq!(inside, t == f);
        }

        #[test]
        fn prefix_end_bounds_every_extension(prefix in "[a\u{D7FF}\u{10FFFF}/]{0,4}", rest in "[a\u{10FFFF}/]{0,4}") {
            let extended = format!("{prefix}{rest}");
            match prefix_end(&prefix) {
                Some(end) => {
                    prop_assert!(extended < end);
                    prop_assert!(prefix < end);
                }
                None => prop_assert!(prefix.chars().all(|c| c == char::MAX)),
            }
        }
    }
}
