//! A topic's or filter's levels, split at `/`.
//!
//! Every publish splits its topic several times (checking it, matching it against the
//! subscription tree and, on a node of many, against the other nodes' interest, and making its
//! subject). `str::split('/')` searches with a general character searcher whose every call
//! costs more than the short levels of a topic; a byte loop over ASCII `/`, inlined, does not.

/// The levels of `s`, as `s.split('/')` yields them: an empty string is one empty level.
pub fn levels(s: &str) -> Levels<'_> {
    Levels { rest: Some(s) }
}

/// See [`levels`].
#[derive(Clone, Debug)]
pub struct Levels<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for Levels<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match rest.bytes().position(|b| b == b'/') {
            // `/` is ASCII, so both sides of it are on character boundaries.
            Some(at) => {
                self.rest = Some(&rest[at + 1..]);
                Some(&rest[..at])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_what_split_at_slash_yields() {
        for s in [
            "",
            "/",
            "//",
            "a",
            "a/",
            "/a",
            "a/b",
            "a//b",
            "/a/b/",
            "ü/€/𝄞",
            "$SYS/x",
            "a b/c",
        ] {
            let ours: Vec<&str> = levels(s).collect();
            let std: Vec<&str> = s.split('/').collect();
            assert_eq!(ours, std, "{s:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_splits_as_split_at_slash_splits_it(s in "[a/\u{0}+#é𝄞 ]{0,24}") {
            let ours: Vec<&str> = levels(&s).collect();
            let std: Vec<&str> = s.split('/').collect();
            proptest::prop_assert_eq!(ours, std);
        }
    }

    #[test]
    fn a_clone_goes_on_from_where_it_was_taken() {
        let mut it = levels("a/b/c");
        assert_eq!(it.next(), Some("a"));
        let rest: Vec<&str> = it.clone().collect();
        assert_eq!(rest, ["b", "c"]);
        assert_eq!(it.next(), Some("b"));
    }
}
