//! The README's configuration table is the reference operators read: every flag of the
//! server is a row, with its variable and its default, and no row names a flag that is gone.

use clap::CommandFactory;

use super::config::Cli;

/// The rows of the table under "| Flag | Environment | Default | Meaning |": the flags of
/// the first cell, the variables of the second, the third cell.
fn rows() -> Vec<(Vec<String>, Vec<String>, String)> {
    let readme = include_str!("../../README.md");
    let table = readme
        .split("| Flag | Environment | Default | Meaning |")
        .nth(1)
        .expect("the configuration table");
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            (
                ticked(cells[0]),
                ticked(cells[1]),
                cells[2].trim().to_owned(),
            )
        })
        .collect()
}

#[test]
fn every_flag_is_in_the_readme_with_its_variable_and_default() {
    let rows = rows();
    let command = Cli::command();
    let mut wrong = Vec::new();
    let mut flags = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if arg.is_hide_set() || long == "help" || long == "version" {
            continue;
        }
        let flag = format!("--{long}");
        flags.push(flag.clone());
        let Some((_, vars, default)) = rows.iter().find(|(f, _, _)| f.contains(&flag)) else {
            wrong.push(format!("{flag}: no row"));
            continue;
        };
        if let Some(env) = arg.get_env() {
            let env = env.to_string_lossy().into_owned();
            if !vars.contains(&env) {
                wrong.push(format!("{flag}: the row does not name {env}"));
            }
        }
        let given: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if !given.is_empty() && *default != format!("`{}`", given.join(",")) {
            wrong.push(format!(
                "{flag}: README default {default}, flag's {given:?}"
            ));
        }
    }
    for (named, _, _) in &rows {
        for flag in named.iter().filter(|f| f.starts_with("--")) {
            if !flags.contains(flag) {
                wrong.push(format!("{flag}: a row for a flag the server does not have"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
