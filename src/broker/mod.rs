//! The embedded MQTT broker: sessions, the subscription tree, routing and retained delivery.
//!
//! [`Broker`] is a cheap `Clone` handle. The pure parts — the subscription tree (`tree`) and
//! a session's queues and acknowledgements (`session`) — hold no I/O and are tested directly.
//! `connection` runs one client's protocol over any byte stream (TCP, or a WebSocket from the
//! HTTP layer); `listener` accepts TCP and TLS connections. Retained messages live in the [`Store`]
//! shared with the HTTP API, so both see one state.

mod accept;
mod admission;
mod client;
mod connection;
mod end;
mod inbound_publish;
mod inbound_qos;
mod known_credentials;
mod limits;
mod listener;
mod message;
mod outbound;
mod password_checks;
mod registry;
mod remote;
mod retained;
mod session;
mod settling;
mod stall;
mod subscribe;
mod tree;
mod will;
mod wire;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use admission::{TransportIdentity, owner};
pub use listener::{serve_tcp, serve_tls};
pub use message::{Message, WireForm};
pub use password_checks::PasswordCheckStats;
pub use remote::Remote;
pub use tree::{ClientKey, SubscriptionTree};

use crate::auth::Authenticator;
use crate::store::{self, Owner, Store};
use crate::topic::TopicLimits;
use password_checks::PasswordChecks;
use registry::Registry;
use session::SubOptions;

/// Limits and advertised values; every buffer a client can grow is bounded by one of these.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub topic_limits: TopicLimits,
    pub max_payload_bytes: usize,
    /// Largest packet accepted from a client (advertised as MQTT 5 Maximum Packet Size).
    pub max_packet_bytes: u32,
    /// Messages waiting for one session beyond those in flight.
    pub max_queued_messages: usize,
    /// Payload bytes waiting for one session.
    pub max_queued_bytes: usize,
    /// QoS 1/2 messages sent to one client and not yet acknowledged.
    pub max_inflight: u16,
    /// QoS 1/2 messages one client may have unacknowledged towards us (MQTT 5 Receive Maximum).
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
    /// Concurrent connections across all listeners; a CONNECT beyond it is refused.
    pub max_connections: usize,
    /// Subscriptions one session may hold.
    pub max_subscriptions: usize,
    /// PUBLISH packets per second one connection may send; 0: no limit.
    pub max_publish_rate: f64,
    /// Time allowed between accepting a connection and receiving its CONNECT.
    pub connect_timeout: Duration,
    /// Time a client may take nothing of the output waiting for it before it is disconnected
    /// (see `stall`).
    pub write_timeout: Duration,
    /// Longest keep alive a client may have, in seconds: one that asks for more, or for none
    /// (0), is held to this (MQTT 5: told so in Server Keep Alive). 0: no maximum.
    pub max_keep_alive: u16,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            topic_limits: TopicLimits::default(),
            max_payload_bytes: 128 * 1024,
            max_packet_bytes: 256 * 1024,
            max_queued_messages: 10_000,
            max_queued_bytes: 16 << 20,
            max_inflight: 256,
            receive_maximum: 1024,
            topic_alias_maximum: 64,
            max_connections: 10_000,
            max_subscriptions: 50,
            max_publish_rate: 0.0,
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_keep_alive: 1200,
        }
    }
}

/// Handle on the broker: cheap to clone, shared by listeners, connections and the HTTP API.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    auth: Authenticator,
    config: BrokerConfig,
    subscriptions: RwLock<SubscriptionTree<SubOptions>>,
    sessions: Mutex<Registry>,
    shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them to say goodbye.
    connections: TaskTracker,
    /// Connections past CONNECT, against `config.max_connections`.
    live: Arc<limits::ConnectionCount>,
    password_checks: PasswordChecks,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl Broker {
    /// `auth` decides who may connect, publish, subscribe and receive; with no principals
    /// configured ([`Authenticator::disabled`]) everyone may do everything.
    pub fn new(store: Store, config: BrokerConfig, auth: Authenticator) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                auth,
                config,
                subscriptions: RwLock::new(SubscriptionTree::new()),
                sessions: Mutex::new(Registry::default()),
                shutdown: CancellationToken::new(),
                connections: TaskTracker::new(),
                live: Arc::default(),
                password_checks: PasswordChecks::new(),
            }),
        }
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn auth(&self) -> &Authenticator {
        &self.inner.auth
    }

    /// How many MQTT password checks may run at once, run now, ever ran at once and ran in
    /// all, and how many credentials were answered from earlier checks.
    pub fn password_checks(&self) -> PasswordCheckStats {
        self.inner.password_checks.stats()
    }

    /// Publishes a message from outside MQTT (the HTTP API): a retained one is committed to
    /// the store first, charged to `owner`, then it reaches every matching subscription. One
    /// the store refuses (a quota) reaches nobody.
    pub async fn publish(&self, message: Message, owner: Owner) -> Result<(), Error> {
        let now = self.inner.store.clock().now_ms();
        if let Some(write) = message.retained_write(now) {
            self.inner.store.write_as(write, owner).await?;
        }
        self.route(Arc::new(message));
        Ok(())
    }

    /// Serves one client over an established byte stream until it goes away; `remote` is what
    /// the transport knows of it (its address, who it proved to be, its TCP socket's uptake).
    pub async fn serve_connection<T>(&self, io: T, remote: Remote)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        self.track(io, remote).await;
    }

    /// A connection's future, counted by shutdown from this call on: a listener calls it
    /// before it spawns the task, so a connection accepted just before shutdown is waited for
    /// (and told why it closes) like the others.
    fn track<T>(&self, io: T, remote: Remote) -> impl Future<Output = ()> + Send + 'static
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        self.inner
            .connections
            .track_future(connection::serve(self.clone(), io, remote))
    }

    /// Asks every connection to close (MQTT 5: DISCONNECT 0x8B) and waits for them, up to `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutdown.cancel();
        self.inner.connections.close();
        if tokio::time::timeout(grace, self.inner.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("some MQTT connections did not close in time");
        }
    }

    pub(crate) fn shutdown_signal(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    fn subscriptions_read(&self) -> std::sync::RwLockReadGuard<'_, SubscriptionTree<SubOptions>> {
        // The tree is only changed by whole insert/remove calls; a panic cannot leave it torn.
        self.inner
            .subscriptions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn subscriptions_write(&self) -> std::sync::RwLockWriteGuard<'_, SubscriptionTree<SubOptions>> {
        self.inner
            .subscriptions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
