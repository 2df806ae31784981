//! The rule every MQTT UTF-8 string obeys, topic or not: content types, response topics, user
//! properties, client ids, user names, reason strings.

/// Why a string cannot travel as an MQTT UTF-8 string. The message is shown to API clients
/// after the name of the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must not contain the null character U+0000")]
pub struct NullCharacter;

/// Checks a string against [MQTT-1.5.4-2]: no U+0000. The other rule, [MQTT-1.5.4-1]
/// (well-formed UTF-8, no surrogate code points), holds for every Rust `str` already. The code
/// points the specification only advises against (controls, non-characters) are accepted:
/// receivers may refuse them, and retaind does not.
pub fn check_text(s: &str) -> Result<(), NullCharacter> {
    if s.contains('\0') {
        Err(NullCharacter)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_null_character_is_refused_anywhere_in_a_string() {
        for bad in ["\0", "a\0", "\0a", "a\0b"] {
            assert_eq!(check_text(bad), Err(NullCharacter), "{bad:?}");
        }
    }

    #[test]
    fn other_code_points_are_accepted() {
        for ok in [
            "",
            "text/plain",
            "tab\there",
            "\u{7f}\u{9f}",
            "\u{fffe}",
            "é😀",
        ] {
            assert_eq!(check_text(ok), Ok(()), "{ok:?}");
        }
    }
}
