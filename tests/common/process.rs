//! The release under test as an operator starts it: the `retaind` binary on free ports, as a
//! process of its own that a test can kill with SIGKILL.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Process {
    pub child: Child,
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
}

impl Process {
    /// Starts `retaind` on `database_url` with `args` besides, and waits for its addresses.
    pub async fn start(database_url: &str, args: &[&str]) -> Self {
        Self::start_under(&[], database_url, args).await
    }

    /// [`Process::start`] run by `wrapper` (a program and its arguments, which ends by running
    /// the path of `retaind` and the arguments after it, in the same process: `exec`).
    pub async fn start_under(wrapper: &[&str], database_url: &str, args: &[&str]) -> Self {
        let retaind = env!("CARGO_BIN_EXE_retaind");
        let mut command = match wrapper.split_first() {
            None => Command::new(retaind),
            Some((program, before)) => {
                let mut c = Command::new(program);
                c.args(before).arg(retaind);
                c
            }
        };
        let mut child = command
            .args(["--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"])
            .args(["--database-url", database_url])
            .args(["--rate-publish", "0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting retaind");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut http, mut mqtt) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while http.is_none() || mqtt.is_none() {
            assert!(Instant::now() < deadline, "retaind did not start");
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("retaind's output")
                .unwrap()
                .expect("retaind exited at start");
            if let Some(addr) = line.strip_prefix("retaind: HTTP API on http://") {
                http = Some(addr.parse().unwrap());
            } else if let Some(addr) = line.strip_prefix("retaind: MQTT on mqtt://") {
                mqtt = Some(addr.parse().unwrap());
            }
        }
        // Keep reading so that the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            http: http.unwrap(),
            mqtt: mqtt.unwrap(),
        }
    }

    /// SIGTERM, as an operator stops it, and waits for it to exit.
    pub async fn terminate(&mut self) {
        let pid = self.child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("retaind stopped within 30 s of SIGTERM")
            .unwrap();
        assert!(
            status.success(),
            "retaind exited with {status} after SIGTERM"
        );
    }

    /// Pauses it (SIGSTOP), as a suspended host or a VM's migration would, until [`Self::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets it run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.unwrap();
    }
}

/// Starts `retaind` on `database_url` as [`Process::start`] does, for a start it should refuse:
/// waits for it to exit, and returns how, with everything it printed (standard output, then
/// standard error).
pub async fn refused_start(database_url: &str) -> (std::process::ExitStatus, String) {
    refused_start_with(database_url, &[]).await
}

/// [`refused_start`], with `args` besides.
pub async fn refused_start_with(
    database_url: &str,
    args: &[&str],
) -> (std::process::ExitStatus, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_retaind"))
        .args(["--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"])
        .args(["--database-url", database_url])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting retaind");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("retaind exited within 60 s")
        .expect("retaind's output");
    let printed = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    (out.status, printed.into_owned())
}
