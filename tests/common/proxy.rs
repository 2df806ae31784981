//! A TCP proxy in front of Postgres that a test can cut and restore, to watch the service
//! through a database outage over real sockets.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// The service on a fresh Postgres database reached through a new proxy, each database call
/// given up after `store_timeout`.
pub async fn app_behind_proxy(store_timeout: std::time::Duration) -> (super::TestApp, Proxy) {
    let db = super::fresh_db(super::Backend::Postgres).await;
    let proxy = Proxy::start(super::postgres_host_port(&db.url)).await;
    let mut config = super::test_config(&super::postgres_url_via(&db.url, proxy.addr));
    config.store_timeout = store_timeout;
    (super::spawn_app_with(db, config).await, proxy)
}

/// A Postgres backend on `db` behind a new proxy, with one pooled connection (so that each
/// read takes the connection the one before it had), holding `t/a` = "1".
pub async fn one_connection_backend(
    db: &super::FreshDb,
) -> (Arc<dyn retaind::store::RetainedStore>, Proxy) {
    let proxy = Proxy::start(super::postgres_host_port(&db.url)).await;
    let store = retaind::store::open_backend(
        &super::postgres_url_via(&db.url, proxy.addr),
        1,
        std::time::Duration::from_secs(5),
        std::time::Duration::ZERO,
    )
    .await
    .unwrap();
    store
        .apply(
            &[super::writes::put("t/a", "1").into()],
            None,
            super::T0_MS,
            super::far_deadline(),
        )
        .await
        .unwrap();
    (store, proxy)
}

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
    paused: tokio::sync::watch::Sender<bool>,
    /// How long each chunk a client sends is held before it goes on.
    latency: tokio::sync::watch::Sender<std::time::Duration>,
    trigger: Trigger,
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
            paused: tokio::sync::watch::Sender::new(false),
            latency: tokio::sync::watch::Sender::new(std::time::Duration::ZERO),
            trigger: Trigger::default(),
            links: Arc::default(),
            held: Arc::default(),
        };
        let (mode, links, held) = (proxy.mode.clone(), proxy.links.clone(), proxy.held.clone());
        let stalled = proxy.stalled.clone();
        let paused = proxy.paused.clone();
        let latency = proxy.latency.clone();
        let trigger = proxy.trigger.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let current = *mode.lock().unwrap();
                match current {
                    Mode::Refuse => drop(client),
                    Mode::Blackhole => held.lock().unwrap().push(client),
                    Mode::Open => {
                        let target = target.clone();
                        let mut stall = stalled.subscribe();
                        let (up_paused, down_paused) = (paused.subscribe(), paused.subscribe());
                        let up_trigger = Some((trigger.clone(), paused.clone()));
                        let up_latency = latency.subscribe();
                        let link = tokio::spawn(async move {
                            if let Ok(mut server) =
                                TcpStream::connect((target.0.as_str(), target.1)).await
                            {
                                // Borrowed halves: the sockets outlive the forwarding, so a
                                // stall keeps them open.
                                let (client_read, client_write) = client.split();
                                let (server_read, server_write) = server.split();
                                let up = forward(
                                    client_read,
                                    server_write,
                                    up_paused,
                                    up_trigger,
                                    Some(up_latency),
                                );
                                let down =
                                    forward(server_read, client_write, down_paused, None, None);
                                tokio::select! {
                                    _ = async { tokio::join!(up, down) } => {}
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

    /// Holds what either side sends, on open connections and new ones, until [`Self::resume`]:
    /// a network that is slow for a moment, then delivers everything in order.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Holds each chunk a client sends for `latency` before passing it on, on open connections
    /// and new ones: every query takes at least that long.
    pub fn slow(&self, latency: std::time::Duration) {
        self.latency.send_replace(latency);
    }

    /// Pauses (as [`Self::pause`]) as soon as a client has sent `pattern`, once that has
    /// reached the database: the database acts on it, and its answer is held.
    pub fn pause_after(&self, pattern: &[u8]) {
        self.arm(pattern, None, Action::Pause);
    }

    /// Pauses (as [`Self::pause_after`]) once the connection that sent `first` sends `then`:
    /// the COMMIT of a given transaction, say, reaches the database and its answer is held.
    pub fn pause_after_both(&self, first: &[u8], then: &[u8]) {
        self.arm(first, Some(then), Action::Pause);
    }

    /// Closes the connection that sent `first` when it sends `then`, which never reaches the
    /// database: a COMMIT lost with its connection, its transaction rolled back.
    pub fn cut_before_both(&self, first: &[u8], then: &[u8]) {
        self.arm(first, Some(then), Action::Cut);
    }

    fn arm(&self, first: &[u8], then: Option<&[u8]>, action: Action) {
        *self.trigger.lock().unwrap() = Some(Armed {
            first: first.to_vec(),
            then: then.map(<[u8]>::to_vec),
            action,
        });
    }

    /// Whether the proxy holds what either side sends (paused by hand or by a trigger).
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Whether an armed trigger has gone off.
    pub fn triggered(&self) -> bool {
        self.trigger.lock().unwrap().is_none()
    }

    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    pub fn restore(&self) {
        *self.mode.lock().unwrap() = Mode::Open;
        self.stalled.send_replace(false);
        self.held.lock().unwrap().clear();
    }
}

/// What a client's bytes are watched for ([`Proxy::pause_after`] and its kin).
type Trigger = Arc<Mutex<Option<Armed>>>;

struct Armed {
    first: Vec<u8>,
    /// Sent after `first`, on the same connection: what the action waits for, if any.
    then: Option<Vec<u8>>,
    action: Action,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Forward the chunk, then pause.
    Pause,
    /// Drop the chunk and close the connection.
    Cut,
}

/// Copies `from` to `to` until `from` ends (then shuts `to` down, passing the end on) or `to`
/// fails, holding each chunk for `latency` and while `paused` is set, and setting it once a
/// chunk carrying the armed pattern of `trigger` has been written.
async fn forward(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    mut paused: tokio::sync::watch::Receiver<bool>,
    trigger: Option<(Trigger, tokio::sync::watch::Sender<bool>)>,
    latency: Option<tokio::sync::watch::Receiver<std::time::Duration>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    // This connection has sent the first pattern of a trigger that waits for two.
    let mut sent_first = false;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if let Some(latency) = &latency {
            let hold = *latency.borrow();
            if !hold.is_zero() {
                tokio::time::sleep(hold).await;
            }
        }
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        let fired = trigger
            .as_ref()
            .and_then(|(armed, _)| went_off(armed, &buf[..n], &mut sent_first));
        if fired == Some(Action::Cut) {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if let (Some(Action::Pause), Some((_, pause))) = (fired, &trigger) {
            pause.send_replace(true);
        }
    }
}

/// The action of the trigger `armed` if `chunk` sets it off (disarming it), given whether
/// this connection already sent its first pattern.
fn went_off(armed: &Trigger, chunk: &[u8], sent_first: &mut bool) -> Option<Action> {
    let mut armed = armed.lock().unwrap();
    let trigger = armed.as_ref()?;
    let has = |p: &[u8]| chunk.windows(p.len()).any(|w| w == p);
    let fired = match &trigger.then {
        None => has(&trigger.first),
        Some(then) if *sent_first => has(then),
        Some(_) => {
            *sent_first = has(&trigger.first);
            false
        }
    };
    if !fired {
        return None;
    }
    let action = trigger.action;
    *armed = None;
    Some(action)
}
