//! A real HAProxy (Debian's package; `scripts/test.sh` installs it where it is missing) in TCP
//! mode in front of a retaind listener, sending the PROXY protocol header as it does in
//! production: `send-proxy` (version 1) or `send-proxy-v2`.

use std::net::SocketAddr;
use std::process::Stdio;

use tokio::process::{Child, Command};

pub struct HaProxy {
    pub addr: SocketAddr,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    /// HAProxy on a free port forwarding to `upstream`, with `send` (`send-proxy` or
    /// `send-proxy-v2`) on its server line.
    pub async fn start(upstream: SocketAddr, send: &str) -> Self {
        let port = super::free_port();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  maxconn 512\n\
                 defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  \
                 timeout server 60s\n\
                 frontend front\n  bind 127.0.0.1:{port}\n  default_backend retaind\n\
                 backend retaind\n  server node {upstream} {send}\n"
            ),
        )
        .unwrap();
        let child = Command::new(binary())
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting haproxy (scripts/test.sh installs it)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        super::until_listening(addr, "haproxy").await;
        Self {
            addr,
            _child: child,
            _dir: dir,
        }
    }
}

fn binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}
