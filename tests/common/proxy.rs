//! A TCP proxy in front of Postgres that a test can cut and restore, to watch the service
//! through a database outage over real sockets.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward to the database.
    Open,
    /// Close new connections at once, like a database that is down.
    Refuse,
    /// Accept new connections and never answer, like a database behind a dead network.
    Blackhole,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    stalled: tokio::sync::watch::Sender<bool>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub async fn start(target: (String, u16)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Self {
            addr,
            mode: Arc::new(Mutex::new(Mode::Open)),
            stalled: tokio::sync::watch::Sender::new(false),
            links: Arc::default(),
            held: Arc::default(),
        };
        let (mode, links, held) = (proxy.mode.clone(), proxy.links.clone(), proxy.held.clone());
        let stalled = proxy.stalled.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let current = *mode.lock().unwrap();
                match current {
                    Mode::Refuse => drop(client),
                    Mode::Blackhole => held.lock().unwrap().push(client),
                    Mode::Open => {
                        let target = target.clone();
                        let mut stall = stalled.subscribe();
                        let link = tokio::spawn(async move {
                            if let Ok(mut server) =
                                TcpStream::connect((target.0.as_str(), target.1)).await
                            {
                                tokio::select! {
                                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                    // Stalled: stop forwarding but keep both sockets open.
                                    _ = async { stall.wait_for(|s| *s).await.map(|_| ()) } => {
                                        let _ = stall.wait_for(|s| !*s).await.map(|_| ());
                                    }
                                }
                            }
                        });
                        links.lock().unwrap().push(link.abort_handle());
                    }
                }
            }
        });
        proxy
    }

    /// Drops every open connection and treats new ones according to `mode`.
    pub fn fail(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    /// Stops forwarding on open connections without closing them, and holds new ones
    /// unanswered: a network that dies silently.
    pub fn stall(&self) {
        *self.mode.lock().unwrap() = Mode::Blackhole;
        self.stalled.send_replace(true);
    }

    pub fn restore(&self) {
        *self.mode.lock().unwrap() = Mode::Open;
        self.stalled.send_replace(false);
        self.held.lock().unwrap().clear();
    }
}
