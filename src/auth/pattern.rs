//! Resource patterns: MQTT wildcards (`+`, `#`), a `*` glob within one level, and the
//! `${iot:ClientId}` variable.
//!
//! Why a glob at all: AWS IoT policies write client ids as `client/sensor-*`; inside a topic
//! level the same `*` matches any run of characters of that level (never a `/`: use `#` for
//! "everything below"). A level that is only `*` behaves exactly like `+`.

use crate::topic::levels;

const CLIENT_ID_VARIABLE: &str = "${iot:ClientId}";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// Any run of characters (within one topic level).
    Star,
    /// `${iot:ClientId}`, compared literally once substituted.
    ClientId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    /// `+` (or a level made only of `*`): exactly one level, whatever it holds.
    Plus,
    /// `#`: this level and every level below, or none (`a/#` matches `a`).
    Hash,
    Glob(Vec<Part>),
}

#[derive(Debug, Clone)]
pub(super) struct Pattern {
    levels: Vec<Level>,
    uses_client_id: bool,
}

impl Pattern {
    /// A topic pattern: levels separated by `/`, `#` only as the whole last level, `+` only as a
    /// whole level.
    pub(super) fn parse_levels(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("empty pattern".into());
        }
        let raw_levels: Vec<&str> = raw.split('/').collect();
        let mut levels = Vec::with_capacity(raw_levels.len());
        for (i, level) in raw_levels.iter().enumerate() {
            levels.push(match *level {
                "+" => Level::Plus,
                "#" if i + 1 == raw_levels.len() => Level::Hash,
                "#" => return Err("'#' is only allowed as the last level".into()),
                other => parse_glob(other)?,
            });
        }
        Ok(Pattern::new(levels))
    }

    /// A client id pattern: the whole id is one level (a `/` is an ordinary character), and
    /// `+`, `#` or `*` alone match any id.
    pub(super) fn parse_single_level(raw: &str) -> Result<Self, String> {
        let level = match raw {
            "+" | "#" => Level::Plus,
            other => parse_glob(other)?,
        };
        Ok(Pattern::new(vec![level]))
    }

    fn new(levels: Vec<Level>) -> Self {
        let uses_client_id = levels
            .iter()
            .any(|l| matches!(l, Level::Glob(parts) if parts.contains(&Part::ClientId)));
        Pattern {
            levels,
            uses_client_id,
        }
    }

    fn resolve<'c>(&self, client_id: Option<&'c str>) -> Option<&'c str> {
        match (self.uses_client_id, client_id) {
            (false, _) => Some(""),
            (true, id) => id,
        }
    }

    /// Whether the topic name matches, as an MQTT filter would match it.
    pub(super) fn matches_topic(&self, topic: &str, client_id: Option<&str>) -> bool {
        let Some(client_id) = self.resolve(client_id) else {
            return false;
        };
        // Checked for every delivery to a client with a principal: nothing is allocated.
        let mut names = levels(topic);
        let dollar = topic.starts_with('$');
        for (i, level) in self.levels.iter().enumerate() {
            // [MQTT-4.7.2-1] a filter starting with a wildcard does not match a `$` topic.
            if i == 0 && dollar && level.starts_with_wildcard() {
                return false;
            }
            if *level == Level::Hash {
                return true;
            }
            let Some(name) = names.next() else {
                return false;
            };
            if let Level::Glob(parts) = level
                && !glob(parts, name, client_id)
            {
                return false;
            }
        }
        names.next().is_none()
    }

    /// Whether every topic the filter can match is matched by this pattern.
    pub(super) fn covers_filter(&self, filter: &str, client_id: Option<&str>) -> bool {
        let Some(client_id) = self.resolve(client_id) else {
            return false;
        };
        let filter_levels: Vec<&str> = filter.split('/').collect();
        for (i, level) in self.levels.iter().enumerate() {
            let Some(wanted) = filter_levels.get(i) else {
                // The filter ended: only a trailing `#` (which also matches its parent) remains.
                return self.levels.len() == i + 1 && *level == Level::Hash;
            };
            if i == 0 && wanted.starts_with('$') && level.starts_with_wildcard() {
                return false;
            }
            let covered = match (level, *wanted) {
                (Level::Hash, _) => return true,
                (_, "#") => false,
                (Level::Plus, _) => true,
                (Level::Glob(_), "+") => false,
                (Level::Glob(parts), literal) => glob(parts, literal, client_id),
            };
            if !covered {
                return false;
            }
        }
        self.levels.len() == filter_levels.len()
    }

    /// Whether the whole text (a client id) matches a single-level pattern.
    pub(super) fn matches_whole(&self, text: &str, client_id: Option<&str>) -> bool {
        let Some(client_id) = self.resolve(client_id) else {
            return false;
        };
        match self.levels.as_slice() {
            [Level::Plus] | [Level::Hash] => true,
            [Level::Glob(parts)] => glob(parts, text, client_id),
            _ => false,
        }
    }
}

impl Level {
    fn starts_with_wildcard(&self) -> bool {
        match self {
            Level::Plus | Level::Hash => true,
            Level::Glob(parts) => parts.first() == Some(&Part::Star),
        }
    }
}

fn parse_glob(raw: &str) -> Result<Level, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = raw;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix(CLIENT_ID_VARIABLE) {
            flush(&mut literal, &mut parts);
            parts.push(Part::ClientId);
            rest = after;
            continue;
        }
        match c {
            '$' if rest.starts_with("${") => {
                return Err(format!(
                    "unsupported policy variable in {raw:?} (only {CLIENT_ID_VARIABLE} is known)"
                ));
            }
            '+' | '#' => {
                return Err(format!("'{c}' must be a whole level, not part of {raw:?}"));
            }
            '*' => {
                flush(&mut literal, &mut parts);
                if parts.last() != Some(&Part::Star) {
                    parts.push(Part::Star);
                }
            }
            _ => literal.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    flush(&mut literal, &mut parts);
    if parts == [Part::Star] {
        return Ok(Level::Plus);
    }
    Ok(Level::Glob(parts))
}

fn flush(literal: &mut String, parts: &mut Vec<Part>) {
    if !literal.is_empty() {
        parts.push(Part::Literal(std::mem::take(literal)));
    }
}

/// Matches one level's text against glob parts; `*` spans any characters.
fn glob(parts: &[Part], text: &str, client_id: &str) -> bool {
    match parts.split_first() {
        None => text.is_empty(),
        Some((Part::Literal(lit), rest)) => text
            .strip_prefix(lit.as_str())
            .is_some_and(|t| glob(rest, t, client_id)),
        Some((Part::ClientId, rest)) => text
            .strip_prefix(client_id)
            .is_some_and(|t| glob(rest, t, client_id)),
        Some((Part::Star, rest)) => text
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(text.len()))
            .any(|i| glob(rest, &text[i..], client_id)),
    }
}
