use std::ffi::OsString;
use std::path::Path;

use clap::CommandFactory;

use super::config::Cli;
use super::config_file::{ConfigFile, Problem};

const EXAMPLE: &str = include_str!("../../docs/examples/retaind.toml");

fn parse(text: &str) -> Result<ConfigFile, Vec<Problem>> {
    ConfigFile::parse(Path::new("test.toml"), text)
}

fn at(problems: &[Problem]) -> Vec<(Option<usize>, String)> {
    problems
        .iter()
        .map(|p| (p.line, p.message.clone()))
        .collect()
}

/// The ids of the flags a file may set.
fn keys() -> Vec<String> {
    Cli::command()
        .get_arguments()
        .filter(|arg| arg.get_long().is_some() && !arg.is_hide_set())
        .map(|arg| arg.get_id().to_string())
        .filter(|id| !["config_file", "help", "version"].contains(&id.as_str()))
        .collect()
}

#[test]
fn every_flag_is_a_key_of_the_example() {
    let keys = keys();
    assert!(keys.len() > 30, "{keys:?}");
    for key in keys {
        let listed = EXAMPLE.lines().any(|line| {
            let line = line.trim_start_matches('#').trim_start();
            line.strip_prefix(key.as_str())
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        assert!(listed, "docs/examples/retaind.toml does not show `{key}`");
    }
}

/// With every commented-out key switched on, the example is still a valid file: no key in it
/// is misspelt or stale, and every value it shows parses.
#[test]
fn the_example_with_every_key_switched_on_is_valid() {
    let keys = keys();
    let switched_on: String = EXAMPLE
        .lines()
        .map(|line| {
            let uncommented = line.strip_prefix("# ").unwrap_or(line);
            let is_key = keys.iter().any(|k| {
                uncommented
                    .strip_prefix(k.as_str())
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            });
            if is_key { uncommented } else { line }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let file = parse(&switched_on).unwrap_or_else(|p| panic!("{p:?}"));
    assert_eq!(file.entries.len(), keys.len(), "{:?}", file.entries);
    assert_eq!(file.value_problems(), vec![]);
    let file = parse(EXAMPLE).unwrap();
    assert_eq!(file.value_problems(), vec![]);
}

#[test]
fn a_file_entry_is_the_flag_with_its_value() {
    let file = parse(
        "http_addr = \"127.0.0.1:0\"\nmax_payload_bytes = 10\n\
         allowed_hosts = [\"a.lan\", \"b.lan\"]\nrate_publish = 2.5\n",
    )
    .unwrap();
    let args: Vec<(String, Vec<OsString>)> = file
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.args.clone()))
        .collect();
    assert_eq!(
        args,
        vec![
            ("http_addr".into(), vec!["--http-addr=127.0.0.1:0".into()]),
            (
                "max_payload_bytes".into(),
                vec!["--max-payload-bytes=10".into()]
            ),
            (
                "allowed_hosts".into(),
                vec![
                    "--allowed-hosts=a.lan".into(),
                    "--allowed-hosts=b.lan".into()
                ]
            ),
            ("rate_publish".into(), vec!["--rate-publish=2.5".into()]),
        ]
    );
    assert_eq!(
        file.entries.iter().map(|e| e.line).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
}

#[test]
fn unknown_keys_and_wrong_shapes_are_reported_at_their_lines_all_at_once() {
    let problems = parse(
        "# a comment\nhtp_addr = \"127.0.0.1:0\"\nmqtt_addr = [\"a\", \"b\"]\n\
         config = \"auth.toml\"\nconfig_file = \"other.toml\"\n\
         max_payload_bytes = 1979-05-27\n[mqtt]\nmax_inflight = 3\n",
    )
    .unwrap_err();
    assert_eq!(
        at(&problems),
        vec![
            (
                Some(2),
                "unknown key `htp_addr` (did you mean `http_addr`?)".into()
            ),
            (
                Some(3),
                "`mqtt_addr`: expected one value, found an array".into()
            ),
            (
                Some(4),
                "`config` is now `principals` (the principals file)".into()
            ),
            (
                Some(5),
                "`config_file`: a settings file cannot name another; give --config-file on \
                 the command line"
                    .into()
            ),
            (
                Some(6),
                "`max_payload_bytes`: expected a string or a number, found datetime".into()
            ),
            (
                Some(7),
                "`[mqtt]`: the file has no sections; every key is a flag's name at the top, \
                 such as `mqtt_max_inflight`"
                    .into()
            ),
        ]
    );
}

#[test]
fn values_a_flag_refuses_are_reported_at_their_lines() {
    let file = parse(
        "http_addr = \"localhost:port\"\nmqtt_max_inflight = \"lots\"\n\
         retention = \"3 fortnights\"\nlog_format = \"xml\"\nmax_topic_levels = 8\n",
    )
    .unwrap();
    let problems = file.value_problems();
    let lines: Vec<Option<usize>> = problems.iter().map(|p| p.line).collect();
    assert_eq!(
        lines,
        vec![Some(1), Some(2), Some(3), Some(4)],
        "{problems:?}"
    );
    assert!(
        problems[0]
            .message
            .starts_with("`http_addr`: invalid value 'localhost:port'")
    );
    assert!(
        problems[1]
            .message
            .starts_with("`mqtt_max_inflight`: invalid value 'lots'")
    );
    assert!(
        problems[3]
            .message
            .contains("[possible values: text, json]")
    );
}

#[test]
fn a_key_that_needs_another_is_reported_at_its_line() {
    let file = parse("http_addr = \"127.0.0.1:0\"\nmqtts_addr = \"127.0.0.1:0\"\n").unwrap();
    let problems = file.value_problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].line, Some(2));
    assert!(problems[0].message.contains("--tls-cert"), "{problems:?}");
    // Given together, nothing is missing.
    let file =
        parse("mqtts_addr = \"127.0.0.1:0\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n").unwrap();
    assert_eq!(file.value_problems(), vec![]);
}

#[test]
fn syntax_errors_are_reported_at_their_lines() {
    let problems =
        parse("http_addr = \"127.0.0.1:0\"\nmqtt_addr = \nretention = \"3years\n").unwrap_err();
    assert!(!problems.is_empty());
    assert_eq!(problems[0].line, Some(2), "{problems:?}");
    assert!(
        problems[0].message.starts_with("not valid TOML"),
        "{problems:?}"
    );
    assert!(problems.iter().any(|p| p.line == Some(3)), "{problems:?}");
}

#[test]
fn the_command_line_and_the_environment_override_the_file() {
    let file = parse("http_addr = \"127.0.0.1:1\"\nmax_payload_bytes = 10\n").unwrap();
    let args: Vec<OsString> = ["retaind", "--http-addr", "127.0.0.1:2"]
        .map(OsString::from)
        .to_vec();
    let matches = Cli::command()
        .mut_args(|arg| arg.env(None))
        .get_matches_from(&args);
    let merged = file.merged_args(&args, &matches);
    assert_eq!(
        merged,
        [
            "retaind",
            "--http-addr",
            "127.0.0.1:2",
            "--max-payload-bytes=10"
        ]
        .map(OsString::from)
    );
}
