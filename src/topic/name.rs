use std::fmt;

/// Limits a deployment applies to topic names on top of the MQTT rules.
///
/// The defaults are AWS IoT Core's: 256 UTF-8 bytes and at most 7 slashes (8 levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimits {
    pub max_bytes: usize,
    pub max_levels: usize,
}

impl Default for TopicLimits {
    fn default() -> Self {
        Self {
            max_bytes: 256,
            max_levels: 8,
        }
    }
}

/// Why a string is not an acceptable topic name. The messages are shown to API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic must not be empty")]
    Empty,
    // [MQTT-4.7.1-1] wildcards are for filters, never for the names messages are published to.
    #[error("topic name must not contain the wildcard characters '+' or '#'")]
    Wildcard,
    // [MQTT-4.7.3-2] U+0000 is not allowed in topic names.
    #[error("topic must not contain the null character U+0000")]
    NullCharacter,
    #[error("topic is {actual} bytes long; the limit is {limit} bytes")]
    TooLong { actual: usize, limit: usize },
    #[error("topic has {actual} levels; the limit is {limit}")]
    TooManyLevels { actual: usize, limit: usize },
}

/// A valid MQTT topic name (no wildcards) within the configured limits.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicName(String);

impl TopicName {
    pub fn parse(raw: impl Into<String>, limits: TopicLimits) -> Result<Self, TopicError> {
        let raw = raw.into();
        if raw.is_empty() {
            // [MQTT-4.7.3-1] topic names are at least one character long.
            return Err(TopicError::Empty);
        }
        if raw.len() > limits.max_bytes {
            return Err(TopicError::TooLong {
                actual: raw.len(),
                limit: limits.max_bytes,
            });
        }
        // One pass over the bytes for what every publish checks; which rule a rare bad name
        // breaks first is sorted out after it.
        let (mut slashes, mut suspect) = (0usize, false);
        for &b in raw.as_bytes() {
            slashes += usize::from(b == b'/');
            suspect |= matches!(b, b'+' | b'#' | 0);
        }
        if suspect {
            if raw.contains(['+', '#']) {
                return Err(TopicError::Wildcard);
            }
            if super::check_text(&raw).is_err() {
                return Err(TopicError::NullCharacter);
            }
        }
        let levels = slashes + 1;
        if levels > limits.max_levels {
            return Err(TopicError::TooManyLevels {
                actual: levels,
                limit: limits.max_levels,
            });
        }
        Ok(Self(raw))
    }

    /// Rebuilds a name that was validated before it was stored. Limits may have been tightened
    /// since, and a stored message must stay readable, so only the MQTT rules are not rechecked.
    pub fn from_stored(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Topics beginning with `$` are reserved for the server ([MQTT-4.7.2-1]); AWS refuses
    /// retained messages on them.
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with('$')
    }

    /// Topics under `$SYS` carry the broker's own status; only the broker publishes there.
    pub fn is_broker_status(&self) -> bool {
        super::levels(&self.0).next() == Some("$SYS")
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<TopicName, TopicError> {
        TopicName::parse(s, TopicLimits::default())
    }

    #[test]
    fn ordinary_names_parse() {
        for ok in [
            "a",
            "a/b",
            "a//b",
            "/a",
            "a/",
            "sensors/room 1/temp",
            "ünï/çødé",
            "$SYS/x",
        ] {
            assert_eq!(parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn empty_name_is_rejected() {
        assert_eq!(parse(""), Err(TopicError::Empty));
    }

    #[test]
    fn wildcards_are_rejected_anywhere() {
        for bad in ["+", "#", "a/+/b", "a/#", "a+b", "a#"] {
            assert_eq!(parse(bad), Err(TopicError::Wildcard), "{bad}");
        }
    }

    #[test]
    fn null_character_is_rejected() {
        assert_eq!(parse("a\0b"), Err(TopicError::NullCharacter));
    }

    /// Mostly slashes and plain letters, so that level limits are met as often as the rest.
    fn name_like() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let c = prop_oneof![
            4 => Just('/'),
            4 => Just('a'),
            1 => Just('é'),
            1 => Just('+'),
            1 => Just('#'),
            1 => Just('\0'),
        ];
        prop::collection::vec(c, 0..12).prop_map(|cs| cs.into_iter().collect())
    }

    proptest::proptest! {
        /// The one-pass check refuses what the rules, each checked on its own in order,
        /// refuse, and for the same reason.
        #[test]
        fn the_check_is_the_rules_in_order(s in name_like(), max_bytes in 0usize..14, max_levels in 1usize..9) {
            let limits = TopicLimits { max_bytes, max_levels };
            let expected = if s.is_empty() {
                Err(TopicError::Empty)
            } else if s.len() > max_bytes {
                Err(TopicError::TooLong { actual: s.len(), limit: max_bytes })
            } else if s.contains(['+', '#']) {
                Err(TopicError::Wildcard)
            } else if s.contains('\0') {
                Err(TopicError::NullCharacter)
            } else if s.split('/').count() > max_levels {
                Err(TopicError::TooManyLevels { actual: s.split('/').count(), limit: max_levels })
            } else {
                Ok(s.clone())
            };
            let got = TopicName::parse(s.clone(), limits).map(|t| t.as_str().to_owned());
            proptest::prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn a_name_breaking_several_rules_is_refused_for_the_first_in_order() {
        // Wildcard before U+0000 before the level count, wherever each is in the name.
        assert_eq!(parse("\0/a+"), Err(TopicError::Wildcard));
        assert_eq!(parse("1/2/3/4/5/6/7/8/9\0"), Err(TopicError::NullCharacter));
        assert_eq!(parse("1/2/3/4/5/6/7/8/#"), Err(TopicError::Wildcard));
        assert_eq!(
            parse("é/ü/€/𝄞/5/6/7/8/9"),
            Err(TopicError::TooManyLevels {
                actual: 9,
                limit: 8
            })
        );
        assert!(
            parse("é/ü/€/𝄞/5/6/7/").is_ok(),
            "an empty last level is a level"
        );
    }

    #[test]
    fn byte_limit_counts_utf8_bytes_not_chars() {
        let limits = TopicLimits {
            max_bytes: 4,
            max_levels: 8,
        };
        assert!(TopicName::parse("abcd", limits).is_ok());
        // "é" is two bytes: three characters, five bytes.
        assert_eq!(
            TopicName::parse("aéé", limits),
            Err(TopicError::TooLong {
                actual: 5,
                limit: 4
            })
        );
    }

    #[test]
    fn level_limit_counts_levels() {
        assert!(parse("1/2/3/4/5/6/7/8").is_ok());
        assert_eq!(
            parse("1/2/3/4/5/6/7/8/9"),
            Err(TopicError::TooManyLevels {
                actual: 9,
                limit: 8
            })
        );
    }

    #[test]
    fn dollar_topics_are_reserved() {
        assert!(parse("$aws/things").unwrap().is_reserved());
        assert!(!parse("a/$b").unwrap().is_reserved());
    }

    #[test]
    fn broker_status_topics_are_those_whose_first_level_is_sys() {
        assert!(parse("$SYS").unwrap().is_broker_status());
        assert!(parse("$SYS/broker/uptime").unwrap().is_broker_status());
        assert!(!parse("$SYSTEM/x").unwrap().is_broker_status());
        assert!(!parse("$sys/x").unwrap().is_broker_status());
        assert!(!parse("a/$SYS").unwrap().is_broker_status());
    }
}
