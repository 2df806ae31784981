//! A real PgBouncer (Debian's package; `scripts/test.sh` installs it where it is missing) in
//! session mode, with its defaults otherwise, in front of the test Postgres: retaind must run
//! behind it as an operator installs it, with nothing in `pgbouncer.ini` for retaind's sake.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use tokio::process::{Child, Command};

pub struct PgBouncer {
    pub addr: SocketAddr,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    /// PgBouncer on a free port, passing every database through to the Postgres of
    /// `postgres_url` (its host, port, user and password), clients let in by name alone.
    pub async fn start(postgres_url: &str) -> Self {
        let upstream = reqwest::Url::parse(postgres_url).unwrap();
        let port = super::free_port();
        let dir = tempfile::tempdir().unwrap();
        // Run as root, PgBouncer switches to `nobody`, which must read its files.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut server = format!(
            "host={} port={}",
            upstream.host_str().unwrap(),
            upstream.port().unwrap_or(5432)
        );
        if let Some(password) = upstream.password() {
            server.push_str(&format!(" password={password}"));
        }
        let users = dir.path().join("users.txt");
        std::fs::write(&users, format!("\"{}\" \"\"\n", upstream.username())).unwrap();
        let config = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &config,
            format!(
                "[databases]\n* = {server}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {}\n\
                 pool_mode = session\nmax_client_conn = 500\ndefault_pool_size = 100\n",
                users.display()
            ),
        )
        .unwrap();
        for file in [&users, &config] {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let mut command = Command::new(binary());
        if super::running_as_root() {
            command.args(["-u", "nobody"]);
        }
        let child = command
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting pgbouncer (scripts/test.sh installs it)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        super::until_listening(addr, "pgbouncer").await;
        Self {
            addr,
            _child: child,
            _dir: dir,
        }
    }

    /// `postgres_url` with its host and port replaced by this PgBouncer's.
    pub fn url_for(&self, postgres_url: &str) -> String {
        let mut url = reqwest::Url::parse(postgres_url).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.addr.port())).unwrap();
        url.to_string()
    }
}

fn binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/pgbouncer").exists() {
        "/usr/sbin/pgbouncer"
    } else {
        "pgbouncer"
    }
}
