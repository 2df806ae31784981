//! The process's limit on open files. Every MQTT and HTTP connection and every database
//! connection is a file descriptor, and the usual soft limit (1,024 under systemd and most
//! shells) is far below `--mqtt-max-connections`: past it, connections are refused at
//! `accept`, whatever the flags say. As servers commonly do, retaind raises its soft limit to
//! the hard one at start, and says so when even that is too low.

/// Raises the soft limit on open files to the hard limit; warns if the result is below
/// `needed`. Returns the limit now in force (`None` where the system has none to read).
pub fn raise(needed: u64) -> Option<u64> {
    let before = rlimit::Resource::NOFILE.get().ok()?.0;
    let now = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) => now,
        Err(e) => {
            tracing::warn!(error = %e, limit = before, "cannot raise the limit on open files");
            before
        }
    };
    if now > before {
        tracing::debug!(from = before, to = now, "raised the limit on open files");
    }
    if now < needed {
        tracing::warn!(
            limit = now,
            needed,
            "the process may open fewer files than the connections its flags allow (each MQTT, \
             HTTP and database connection is one): connections past the limit are refused. Raise \
             the hard limit (systemd: LimitNOFILE=; docker: --ulimit nofile=) or lower \
             --mqtt-max-connections, --mqtt-max-awaiting-connect or --http-max-connections"
        );
    }
    Some(now)
}
