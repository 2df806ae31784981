//! A `nats-server` of the test's own, with JetStream, on a free port, to be stopped and
//! started again on the same port. The Debian package's binary; `scripts/test.sh` installs it
//! where it is missing.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

pub struct Nats {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Arguments of the test's own (credentials, a configuration file).
    extra: Vec<String>,
}

impl Nats {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// [`Nats::start`], with `args` besides.
    pub async fn start_with(args: &[&str]) -> Self {
        let port = super::free_port();
        let mut nats = Self {
            port,
            child: None,
            dir: tempfile::tempdir().expect("a directory for JetStream"),
            extra: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        nats.restart().await;
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port and waits until it accepts connections.
    pub async fn restart(&mut self) {
        let child = Command::new(binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting nats-server (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server, as a crash would.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("stopping nats-server");
        }
    }
}

fn binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    }
}
