//! `retaind check-config FILE`: what would stop `retaind --config-file FILE` from starting,
//! found without starting it: the file's own problems, then those of the files it names.

use std::ffi::OsString;
use std::path::Path;

use clap::{CommandFactory, FromArgMatches};

use super::config::Cli;
use super::config_file::{ConfigFile, Problem};
use super::{Error, check_cluster, check_local_only, load_auth, load_tls};

/// Every problem found, in line order; none when the file would start a server (as far as
/// can be told without binding ports or reaching the database and NATS). The environment
/// plays no part: this checks the file.
pub fn check_config(path: &Path) -> Vec<Problem> {
    let (file, mut problems) = ConfigFile::read_all(path);
    let Some(file) = file else {
        return problems;
    };
    problems.extend(file.value_problems());
    if !problems.is_empty() {
        problems.sort_by_key(|p| p.line);
        return problems;
    }
    let argv = std::iter::once(OsString::from("retaind"))
        .chain(file.entries.iter().flat_map(|e| e.args.clone()));
    let parsed = Cli::command()
        .mut_args(|arg| arg.env(None))
        .try_get_matches_from(argv)
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let config = match parsed {
        Ok(cli) => cli.serve,
        Err(e) => {
            return vec![Problem {
                line: None,
                message: e.to_string(),
            }];
        }
    };
    let at = |key: &str, e: Error| Problem {
        line: file.line_of(key),
        message: format!("`{key}`: {e}"),
    };
    let mut problems = Vec::new();
    match load_auth(&config) {
        Err(e) => problems.push(at("principals", e)),
        Ok(auth) => {
            if let Err(e) = check_local_only(&config, &auth) {
                let key = match &e {
                    Error::AnonymousNotLocal { flag, .. } => flag.trim_start_matches("--"),
                    _ => "principals",
                };
                problems.push(at(&key.replace('-', "_"), e));
            }
        }
    }
    if let Err(e) = load_tls(&config) {
        problems.push(at("tls_cert", e));
    }
    if let Err(e) = check_cluster(&config) {
        let key = match &e {
            Error::ClusterFile { flag, .. }
            | Error::Cluster(crate::cluster::Error::KeyFile { flag, .. }) => {
                flag.trim_start_matches("--").replace('-', "_")
            }
            Error::ClusterTwoIdentities(_) => "cluster_creds".to_owned(),
            _ => "cluster_url".to_owned(),
        };
        problems.push(at(&key, e));
    }
    if let Err(e) = super::proxy::check(&config) {
        problems.push(at("proxy_protocol", e));
    }
    problems.sort_by_key(|p| p.line);
    problems
}
