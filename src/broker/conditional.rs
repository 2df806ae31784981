//! Conditional publish over MQTT 5 (issue 17, decision 018): a retained PUBLISH carrying the
//! user property `retaind-if-match` (a revision) or `retaind-if-none-match` (`*`) is stored
//! only if the condition holds. The store checks it, exactly as it checks HTTP's `If-Match`
//! and `If-None-Match`; this module only reads the condition off the packet, takes the
//! properties out (no stored copy and no subscriber ever carries them), and words what the
//! client is told. No I/O.

use std::fmt;

use crate::mqtt::UserProperties;
use crate::store::{self, Condition, Revision};

/// Stores only if the topic's retained message has this revision. The value is the revision
/// in decimal, bare or quoted as HTTP's ETag shows it (`42` or `"42"`).
pub(super) const IF_MATCH: &str = "retaind-if-match";
/// Stores only if the topic has no retained message. The value is `*`.
pub(super) const IF_NONE_MATCH: &str = "retaind-if-none-match";

/// Why a publish's condition cannot be read. The publish is refused with 0x83 Implementation
/// specific error and this as its reason string: it is well formed MQTT, but retaind will not
/// guess what a condition it cannot read meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Malformed {
    /// Both properties, or one of them twice: which one holds would be a guess.
    Ambiguous,
    /// `retaind-if-match` that is not a revision (decimal digits, bare or in double quotes).
    NotARevision,
    /// `retaind-if-none-match` other than `*`.
    NotAStar,
    /// A condition on a publish that is not retained: there is nothing for it to compare.
    NotRetained,
}

impl Malformed {
    pub fn why(self) -> &'static str {
        match self {
            Self::Ambiguous => {
                "malformed condition: at most one retaind-if-match or retaind-if-none-match"
            }
            Self::NotARevision => {
                "malformed condition: retaind-if-match must be a revision (decimal digits)"
            }
            Self::NotAStar => "malformed condition: retaind-if-none-match must be *",
            Self::NotRetained => "malformed condition: a condition needs the RETAIN flag",
        }
    }
}

/// Takes the condition properties out of a PUBLISH's user properties and reads them.
/// Property names compare without regard to case, as HTTP header names do; the other user
/// properties keep their order. They are taken out even when malformed, though such a
/// publish is refused.
pub(super) fn take(
    properties: &mut UserProperties,
    retain: bool,
) -> Result<Option<Condition>, Malformed> {
    let mut found = None;
    let mut ambiguous = false;
    properties.retain(|(key, value)| {
        let is_match = key.eq_ignore_ascii_case(IF_MATCH);
        if !is_match && !key.eq_ignore_ascii_case(IF_NONE_MATCH) {
            return true;
        }
        ambiguous |= found.is_some();
        found = Some((is_match, value.clone()));
        false
    });
    let Some((is_match, value)) = found else {
        return Ok(None);
    };
    if ambiguous {
        return Err(Malformed::Ambiguous);
    }
    let condition = if is_match {
        Condition::Revision(revision(&value).ok_or(Malformed::NotARevision)?)
    } else if &*value == "*" {
        Condition::Absent
    } else {
        return Err(Malformed::NotAStar);
    };
    if !retain {
        return Err(Malformed::NotRetained);
    }
    Ok(Some(condition))
}

/// `42` or `"42"`, read by the same rule as the HTTP API's `If-Match`
/// ([`store::parse_revision`]), so that an ETag copied from HTTP works. No weak `W/` form: a
/// revision names one exact message.
fn revision(value: &str) -> Option<Revision> {
    let digits = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    store::parse_revision(digits)
}

/// The reason string of a publish whose condition did not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unmet(pub Condition);

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Condition::Revision(r) => {
                write!(f, "precondition failed: the topic's revision is not {r}")
            }
            Condition::Absent => {
                f.write_str("precondition failed: the topic has a retained message")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytestring::ByteString;

    use super::*;

    fn props(pairs: &[(&str, &str)]) -> UserProperties {
        pairs
            .iter()
            .map(|(k, v)| (ByteString::from(*k), ByteString::from(*v)))
            .collect()
    }

    fn take_from(pairs: &[(&str, &str)]) -> Result<Option<Condition>, Malformed> {
        take(&mut props(pairs), true)
    }

    #[test]
    fn a_revision_is_read_bare_or_quoted_as_an_etag() {
        assert_eq!(
            take_from(&[(IF_MATCH, "42")]),
            Ok(Some(Condition::Revision(42)))
        );
        assert_eq!(
            take_from(&[(IF_MATCH, "\"42\"")]),
            Ok(Some(Condition::Revision(42)))
        );
    }

    #[test]
    fn a_revision_has_up_to_16_digits_and_zero_is_one() {
        assert_eq!(
            take_from(&[(IF_MATCH, "1234567890123456")]),
            Ok(Some(Condition::Revision(1_234_567_890_123_456)))
        );
        assert_eq!(
            take_from(&[(IF_MATCH, "0")]),
            Ok(Some(Condition::Revision(0)))
        );
    }

    #[test]
    fn if_none_match_takes_a_star() {
        assert_eq!(
            take_from(&[(IF_NONE_MATCH, "*")]),
            Ok(Some(Condition::Absent))
        );
        for bad in ["", "\"*\"", " *", "42", "**"] {
            assert_eq!(
                take_from(&[(IF_NONE_MATCH, bad)]),
                Err(Malformed::NotAStar),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn names_compare_without_case() {
        assert_eq!(
            take_from(&[("Retaind-If-Match", "7")]),
            Ok(Some(Condition::Revision(7)))
        );
        assert_eq!(
            take_from(&[("RETAIND-IF-NONE-MATCH", "*")]),
            Ok(Some(Condition::Absent))
        );
    }

    #[test]
    fn what_is_not_decimal_digits_is_not_a_revision() {
        for bad in [
            "",
            "\"\"",
            "-1",
            "+1",
            " 1",
            "1 ",
            "0x10",
            "1.0",
            "W/\"1\"",
            "\"1",
            "1\"",
            "\"1\", \"2\"",
            "*",
            "99999999999999999999",
            "12345678901234567",
            "007",
            "\"00\"",
            "１",
        ] {
            assert_eq!(
                take_from(&[(IF_MATCH, bad)]),
                Err(Malformed::NotARevision),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn two_conditions_are_ambiguous() {
        assert_eq!(
            take_from(&[(IF_MATCH, "1"), (IF_NONE_MATCH, "*")]),
            Err(Malformed::Ambiguous)
        );
        assert_eq!(
            take_from(&[(IF_MATCH, "1"), ("retaind-if-MATCH", "1")]),
            Err(Malformed::Ambiguous)
        );
    }

    #[test]
    fn a_condition_needs_a_retained_publish() {
        let mut p = props(&[(IF_MATCH, "1")]);
        assert_eq!(take(&mut p, false), Err(Malformed::NotRetained));
        let mut p = props(&[(IF_MATCH, "x")]);
        assert_eq!(
            take(&mut p, false),
            Err(Malformed::NotARevision),
            "an unreadable value is named first"
        );
    }

    #[test]
    fn the_condition_is_taken_out_and_the_rest_keep_their_order() {
        let mut p = props(&[
            ("a", "1"),
            (IF_MATCH, "3"),
            ("b", "2"),
            ("retaind-if-matching", "kept: another name"),
        ]);
        assert_eq!(take(&mut p, true), Ok(Some(Condition::Revision(3))));
        assert_eq!(
            p,
            props(&[
                ("a", "1"),
                ("b", "2"),
                ("retaind-if-matching", "kept: another name")
            ])
        );
        let mut none = props(&[("a", "1")]);
        assert_eq!(take(&mut none, false), Ok(None));
        assert_eq!(none, props(&[("a", "1")]));
    }

    #[test]
    fn an_unmet_condition_says_which() {
        assert_eq!(
            Unmet(Condition::Revision(42)).to_string(),
            "precondition failed: the topic's revision is not 42"
        );
        assert_eq!(
            Unmet(Condition::Absent).to_string(),
            "precondition failed: the topic has a retained message"
        );
    }
}
