//! A Postgres server of the test's own that takes only TLS connections: initdb in a temporary
//! directory, a certificate for localhost made at test time, plain connections refused by its
//! `pg_hba.conf`. Stopped when dropped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::running_as_root;
use super::tls::LocalhostCert;

pub struct TlsPostgres {
    pub port: u16,
    /// The server's certificate (self-signed), for `sslrootcert`.
    pub cert: LocalhostCert,
    data: PathBuf,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsPostgres {
    pub fn start() -> Self {
        let bin = newest_bin();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        as_postgres(
            Command::new(bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-A", "trust"]),
            dir.path(),
        );
        let cert = LocalhostCert::new();
        std::fs::copy(cert.cert_file(), data.join("server.crt")).unwrap();
        std::fs::copy(cert.key_file(), data.join("server.key")).unwrap();
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostssl all all ::1/128 trust\n\
             hostnossl all all 0.0.0.0/0 reject\n\
             hostnossl all all ::/0 reject\n",
        )
        .unwrap();
        if running_as_root() {
            chown_to_postgres(dir.path());
        }
        let port = super::free_port();
        let settings = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=on \
             -c ssl_cert_file=server.crt -c ssl_key_file=server.key",
            dir.path().display()
        );
        as_postgres(
            Command::new(bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-o", &settings, "-l"])
                .arg(dir.path().join("log"))
                .args(["-w", "start"]),
            dir.path(),
        );
        Self {
            port,
            cert,
            data,
            bin,
            _dir: dir,
        }
    }

    /// A URL of its `postgres` database through `host`, with `params` as the query string.
    pub fn url(&self, host: &str, params: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{params}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let dir = self.data.parent().unwrap().to_owned();
        let mut stop = Command::new(self.bin.join("pg_ctl"));
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"]);
        let _ = run(&mut stop, &dir, false);
    }
}

fn newest_bin() -> PathBuf {
    let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Postgres installed under /usr/lib/postgresql (scripts/test.sh installs it)")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    bins.sort_by_key(|b| {
        let version = b
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        version.parse::<u32>().unwrap_or(0)
    });
    bins.pop().expect("an initdb")
}

/// Runs `command`, as the `postgres` user when the tests run as root (Postgres refuses root).
fn as_postgres(command: &mut Command, dir: &Path) {
    assert!(
        run(command, dir, true),
        "{command:?} failed; see {}",
        dir.display()
    );
}

fn run(command: &mut Command, dir: &Path, check: bool) -> bool {
    let status = if running_as_root() {
        chown_to_postgres(dir);
        let mut wrapped = Command::new("runuser");
        wrapped
            .args(["-u", "postgres", "--"])
            .arg(command.get_program());
        wrapped.args(command.get_args());
        wrapped.status()
    } else {
        command.status()
    };
    let ok = status.is_ok_and(|s| s.success());
    ok || !check
}

fn chown_to_postgres(dir: &Path) {
    let done = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .expect("chown");
    assert!(done.success());
}
