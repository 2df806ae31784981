//! `--config-file`: a flat TOML table whose keys are the serve flags' names (`http_addr` for
//! `--http-addr`). Its entries become command-line arguments, added only for the flags that
//! neither the command line nor the environment set, so that one parser (clap's, with each flag's
//! own value parser) reads flags, environment and file alike, and the precedence is
//! flag > environment > file > default.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, CommandFactory};
use toml::Spanned;

use super::config::Cli;

/// Keys that name flags but cannot be set from the file.
const NOT_IN_FILE: [(&str, &str); 2] = [
    (
        "config_file",
        "a settings file cannot name another; give --config-file on the command line",
    ),
    (
        "deprecated_config",
        "not a key; the principals file is `principals`",
    ),
];

/// One problem in a settings file, at a line when it belongs to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// A settings file whose every key names a flag and whose every value has a shape that flag
/// takes; whether the values parse is for clap (see [`ConfigFile::value_problems`]).
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
pub struct Entry {
    /// The flag's id: its name with `_` for `-`.
    pub key: String,
    pub line: usize,
    /// The command-line arguments it stands for, `--flag value` (repeated for a list).
    pub args: Vec<OsString>,
}

impl ConfigFile {
    /// Reads and parses the file; every problem found, at its line, if any.
    pub fn read(path: &Path) -> Result<Self, Vec<Problem>> {
        Self::parse(path, &read_text(path)?)
    }

    /// [`ConfigFile::parse_all`] of the file.
    pub fn read_all(path: &Path) -> (Option<Self>, Vec<Problem>) {
        match read_text(path) {
            Ok(text) => Self::parse_all(path, &text),
            Err(problems) => (None, problems),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, Vec<Problem>> {
        match Self::parse_all(path, text) {
            (Some(file), problems) if problems.is_empty() => Ok(file),
            (_, problems) => Err(problems),
        }
    }

    /// The entries that are right, with the problems of the others; no entries when the text
    /// is not TOML. For `check-config`, which goes on to check the values of those entries.
    pub fn parse_all(path: &Path, text: &str) -> (Option<Self>, Vec<Problem>) {
        let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> = match toml::from_str(text) {
            Ok(table) => table,
            Err(_) => return (None, syntax_problems(text)),
        };
        let command = Cli::command();
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        for (key, value) in &table {
            let line = line_of(text, key.span().start);
            let at = |message: String| Problem {
                line: Some(line),
                message,
            };
            let name = key.get_ref().as_str();
            if let Some((_, why)) = NOT_IN_FILE.iter().find(|(k, _)| *k == name) {
                problems.push(at(format!("`{name}`: {why}")));
                continue;
            }
            let Some(arg) = serve_arg(&command, name) else {
                problems.push(at(match value.get_ref() {
                    toml::Value::Table(_) => format!(
                        "`[{name}]`: the file has no sections; every key is a flag's name at \
                         the top, such as `mqtt_max_inflight`"
                    ),
                    _ => unknown_key(&command, name),
                }));
                continue;
            };
            match arguments(arg, value.get_ref()) {
                Ok(args) => entries.push(Entry {
                    key: name.to_owned(),
                    line,
                    args,
                }),
                Err(message) => problems.push(at(format!("`{name}`: {message}"))),
            }
        }
        entries.sort_by_key(|e| e.line);
        problems.sort_by_key(|p| p.line);
        let file = Self {
            path: path.to_owned(),
            entries,
        };
        (Some(file), problems)
    }

    /// The values clap refuses, each checked on its own (without the environment), at its
    /// line; then what the entries lack together (`mqtts_addr` without `tls_cert`).
    pub fn value_problems(&self) -> Vec<Problem> {
        let command = || Cli::command().mut_args(|arg| arg.env(None));
        let mut problems = Vec::new();
        let mut needing = Vec::new();
        for entry in &self.entries {
            let argv = std::iter::once(OsString::from("retaind")).chain(entry.args.clone());
            match command().try_get_matches_from(argv) {
                Ok(_) => {}
                // Another key may give what this one needs: judged below, over all of them.
                Err(e) if e.kind() == clap::error::ErrorKind::MissingRequiredArgument => {
                    needing.push(entry)
                }
                Err(e) => problems.push(Problem {
                    line: Some(entry.line),
                    message: format!("`{}`: {}", entry.key, clap_message(&e)),
                }),
            }
        }
        if problems.is_empty() {
            let argv = std::iter::once(OsString::from("retaind"))
                .chain(self.entries.iter().flat_map(|e| e.args.clone()));
            if let Err(e) = command().try_get_matches_from(argv) {
                let message = clap_message(&e);
                let lines: Vec<usize> = needing.iter().map(|e| e.line).collect();
                problems.push(Problem {
                    line: lines.first().copied(),
                    message: match needing.first() {
                        Some(entry) => format!("`{}`: {message}", entry.key),
                        None => message,
                    },
                });
            }
        }
        problems
    }

    /// The command line with this file's entries added for every flag that neither the
    /// command line nor the environment set.
    pub fn merged_args(&self, args: &[OsString], matches: &ArgMatches) -> Vec<OsString> {
        let mut merged = args.to_vec();
        for entry in &self.entries {
            let set_elsewhere = matches!(
                matches.value_source(&entry.key),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if !set_elsewhere {
                merged.extend(entry.args.iter().cloned());
            }
        }
        merged
    }

    /// The line of a key, for problems found after parsing (a principals file that does not
    /// load is reported at `principals`).
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.entries.iter().find(|e| e.key == key).map(|e| e.line)
    }
}

fn read_text(path: &Path) -> Result<String, Vec<Problem>> {
    std::fs::read_to_string(path).map_err(|e| {
        vec![Problem {
            line: None,
            message: format!("cannot read {}: {e}", path.display()),
        }]
    })
}

/// A flag of `retaind` (serving) by its id; not subcommands' own arguments, not help/version.
fn serve_arg<'a>(command: &'a clap::Command, id: &str) -> Option<&'a Arg> {
    command
        .get_arguments()
        .filter(|arg| !arg.is_positional() && arg.get_long().is_some())
        .filter(|arg| !matches!(arg.get_action(), ArgAction::Help | ArgAction::Version))
        .find(|arg| arg.get_id() == id)
}

fn unknown_key(command: &clap::Command, name: &str) -> String {
    let known = || {
        command
            .get_arguments()
            .filter(|arg| arg.get_long().is_some() && !arg.is_hide_set())
            .map(|arg| arg.get_id().as_str())
            .filter(|id| !NOT_IN_FILE.iter().any(|(k, _)| k == id))
    };
    if name == "config" {
        return "`config` is now `principals` (the principals file)".to_owned();
    }
    let underscored = name.replace('-', "_");
    let nearest = known()
        .map(|id| (strsim::levenshtein(&underscored, id), id))
        .min()
        .filter(|(distance, _)| *distance <= 3);
    match nearest {
        Some((_, id)) => format!("unknown key `{name}` (did you mean `{id}`?)"),
        None => {
            format!("unknown key `{name}`: keys are the flags of `retaind --help`, with _ for -")
        }
    }
}

/// The command-line arguments a value stands for, or why it cannot be one.
fn arguments(arg: &Arg, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let flag = OsString::from(format!("--{}", arg.get_long().unwrap_or_default()));
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return match value {
            toml::Value::Boolean(true) => Ok(vec![flag]),
            toml::Value::Boolean(false) => Ok(vec![]),
            other => Err(format!(
                "expected true or false, found {}",
                other.type_str()
            )),
        };
    }
    let many = matches!(arg.get_action(), ArgAction::Append);
    let values = match value {
        toml::Value::Array(items) if many => items.iter().map(scalar).collect::<Result<_, _>>()?,
        toml::Value::Array(_) => return Err("expected one value, found an array".to_owned()),
        other => vec![scalar(other)?],
    };
    let mut args = Vec::with_capacity(values.len() * 2);
    for value in values {
        // `--flag=value`, so that a value starting with `-` is not taken for a flag.
        let mut pair = flag.clone();
        pair.push("=");
        pair.push(value);
        args.push(pair);
    }
    Ok(args)
}

/// A value as the text a flag would be given: strings as they are, numbers as written.
fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "expected a string or a number, found {}",
            other.type_str()
        )),
    }
}

/// Every syntax error the parser can recover past, at its line.
fn syntax_problems(text: &str) -> Vec<Problem> {
    let (_, errors) = toml::de::DeTable::parse_recoverable(text);
    let mut problems: Vec<Problem> = errors
        .iter()
        .map(|e| Problem {
            line: e.span().map(|span| line_of(text, span.start)),
            message: format!("not valid TOML: {}", e.message().trim_end()),
        })
        .collect();
    if problems.is_empty() {
        // Valid TOML of another shape, such as a value at the top that is not a table.
        problems.push(Problem {
            line: None,
            message: "not a table of settings".to_owned(),
        });
    }
    problems
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// clap's message on one line, without its `error: ` prefix, usage and help hints.
fn clap_message(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more"))
        .filter(|line| !line.is_empty() && !line.starts_with("tip:"))
        .collect();
    let message = message.join(" ");
    message
        .strip_prefix("error: ")
        .unwrap_or(&message)
        .to_owned()
}
