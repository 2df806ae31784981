//! [`Broker`], the handle every listener, connection and the HTTP API share: a cheap `Clone`
//! around the store, the subscription tree, the sessions and the shutdown signal. Sessions
//! and routing are in `registry`, connections in `connection`, Wills in `will`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::awaiting;
use super::census::Census;
use super::config::BrokerConfig;
use super::connect_rate::{ConnectRates, PrincipalRates};
use super::exchanges;
use super::expiry::Expiries;
use super::kept::Kept;
use super::limits::ConnectionCount;
use super::message::{Message, Publication};
use super::observe;
use super::password_checks::{PasswordCheckStats, PasswordChecks};
use super::peers;
use super::principal_connections::PrincipalConnections;
use super::publish_rate::PublishRates;
use super::queue_memory::QueueMemory;
use super::registry::{Attached, Entered, Session, Sessions};
use super::retained::ReadAhead;
use super::session::{SessionLimits, SubOptions};
use super::sys_topics::{self, SysTopics};
use super::will::{PendingWills, WILLS_WAITING_BYTES};
use crate::auth::{Authenticator, Principal};
use crate::cluster::{Budget, Cluster, Outgoing, Restored, Routed};
use crate::metrics::Metrics;
use crate::store::{self, Condition, OwnedWrite, Owner, Revision, Store};
use crate::tcp::slots::Places;
use crate::topic::{ClientKey, FilterSpec, TopicFilter};

/// Who a publish from outside a connection comes from, and what must hold for its retained
/// write (compare-and-set; ignored for a publish that is not retained).
#[derive(Debug, Clone)]
pub struct PublishFrom {
    pub owner: Owner,
    /// Recorded as the writer's client: the MQTT client id, or [`store::Writer::HTTP`].
    pub client: Option<Arc<str>>,
    pub condition: Option<Condition>,
}

impl PublishFrom {
    /// A publish over the HTTP API by `owner`.
    pub fn http(owner: Owner) -> Self {
        Self {
            owner,
            client: Some(store::Writer::HTTP.into()),
            condition: None,
        }
    }
}

/// Handle on the broker: cheap to clone, shared by listeners, connections and the HTTP API.
#[derive(Clone)]
pub struct Broker {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub store: Store,
    pub auth: Authenticator,
    pub config: BrokerConfig,
    sessions: Sessions,
    pub shutdown: CancellationToken,
    /// Cancelled when shutdown begins, before the connections are asked to leave: the
    /// listeners stop taking connections.
    pub stopping: CancellationToken,
    /// Every connection task, so shutdown can wait for them to say goodbye.
    pub connections: TaskTracker,
    /// Connections past CONNECT, against `config.max_connections`.
    pub live: Arc<ConnectionCount>,
    /// Each principal's connections, against its `max_connections`.
    pub principal_connections: PrincipalConnections,
    pub password_checks: PasswordChecks,
    /// Each client id's turns to connect.
    pub connect_rates: ConnectRates,
    /// Each principal's.
    pub principal_connect_rates: PrincipalRates,
    /// Each principal's PUBLISH packets, service-wide.
    pub publish_rates: PublishRates,
    /// The other nodes of the service, when this node is one of many.
    pub cluster: Option<Cluster>,
    pub metrics: Metrics,
    /// The latest `$SYS/broker/...` values (`sys_topics`).
    pub sys: SysTopics,
    /// Shared by the connections reading retained pages.
    pub read_ahead: ReadAhead,
    /// Connections on the background threads now (`background`).
    pub background: Census,
    /// Connections that have not sent their CONNECT yet.
    pub awaiting: Places,
    /// What the Wills waiting to be stored again hold (`will`): an outage of the database
    /// must not let connections that come and go pile up their largest Wills.
    pub wills_waiting: Budget,
    /// The Wills waiting out their delay (`will`), which a stop saves with the sessions.
    pub pending_wills: PendingWills,
    /// When the offline sessions end.
    pub expiries: Expiries,
    /// Sessions kept after a failed resume, until their rows name this node (`kept`).
    pub kept: Kept,
}

impl Broker {
    /// `auth` decides who may connect, publish, subscribe and receive; with no principals
    /// configured ([`Authenticator::disabled`]) everyone may do everything. With `cluster`,
    /// publishes reach the other nodes' subscribers and theirs reach this node's.
    pub fn new(
        store: Store,
        config: BrokerConfig,
        auth: Authenticator,
        cluster: Option<Cluster>,
        metrics: Metrics,
    ) -> Self {
        let limits = SessionLimits {
            max_queued: config.max_queued_messages,
            max_queued_bytes: config.max_queued_bytes,
        };
        let config_max_awaiting = config.max_awaiting_connect;
        let max_offline = config.max_offline_sessions;
        let connect_rate = config.connect_rate_per_client_id;
        let principal_connect_rate = config.connect_rate_per_principal;
        let publish_rate = config.publish_rate_per_principal;
        let queue_memory = QueueMemory::new(config.max_queue_memory_bytes);
        let broker = Self {
            inner: Arc::new(Inner {
                store,
                auth,
                config,
                sessions: Sessions::new(limits, queue_memory, cluster.clone(), metrics.clone())
                    .bound_offline(max_offline),
                shutdown: CancellationToken::new(),
                stopping: CancellationToken::new(),
                connections: TaskTracker::new(),
                live: Arc::default(),
                principal_connections: PrincipalConnections::default(),
                password_checks: PasswordChecks::new(),
                connect_rates: ConnectRates::new(connect_rate),
                principal_connect_rates: PrincipalRates::new(
                    principal_connect_rate,
                    cluster.clone(),
                ),
                publish_rates: PublishRates::new(publish_rate, cluster.clone()),
                cluster,
                metrics,
                sys: SysTopics::new(),
                read_ahead: ReadAhead::default(),
                wills_waiting: Budget::new(WILLS_WAITING_BYTES),
                pending_wills: PendingWills::default(),
                background: Census::default(),
                awaiting: awaiting::places(config_max_awaiting),
                expiries: Expiries::default(),
                kept: Kept::default(),
            }),
        };
        if let Some(cluster) = &broker.inner.cluster {
            peers::join(&broker, cluster);
        }
        observe::on_scrape(&broker);
        let weak = Arc::downgrade(&broker.inner);
        broker.inner.sessions.when_evicted(Box::new(move |client| {
            // Weak: the sessions, which the broker holds, must not keep it alive.
            if let Some(inner) = weak.upgrade() {
                inner.pending_wills.session_ended(client);
            }
        }));
        let sys_interval = broker.inner.config.sys_interval;
        if !sys_interval.is_zero() {
            sys_topics::start(&broker, sys_interval);
        }
        broker
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The slots of connections that have not sent their CONNECT yet.
    pub(super) fn awaiting(&self) -> &Places {
        &self.inner.awaiting
    }

    /// MQTT connections open (counted from their CONNECT), over every listener.
    pub fn connections(&self) -> usize {
        self.inner.live.live()
    }

    /// What the offline sessions' queues hold together (`queue_memory`).
    pub fn queue_memory_held(&self) -> usize {
        self.inner.sessions.queue_memory_held()
    }

    /// Sessions held, connected or not.
    pub fn sessions_held(&self) -> usize {
        self.inner.sessions.held()
    }

    /// Subscriptions held by this node's sessions.
    pub fn subscriptions(&self) -> usize {
        self.inner.sessions.subscription_count()
    }

    /// The other nodes, when this node is one of many.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.inner.cluster.as_ref()
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    pub(super) fn read_ahead(&self) -> &ReadAhead {
        &self.inner.read_ahead
    }

    pub(super) fn background(&self) -> &Census {
        &self.inner.background
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

    /// Publishes from outside MQTT (the HTTP API): a retained publication is committed to the
    /// store first, charged to `from.owner` and subject to `from.condition`, then it reaches
    /// every matching subscription. One the store refuses (a quota, a condition that does not
    /// hold) reaches nobody. Answers with the retained change's revision, if there was one.
    pub async fn publish(
        &self,
        publication: Publication,
        from: PublishFrom,
    ) -> Result<Option<Revision>, store::Error> {
        let now = self.inner.store.clock().now_ms();
        self.publish_message(Message::published(publication, None, now), from, now)
            .await
    }

    /// [`Self::publish`] for a message the broker built itself (a Will), at `now_ms`.
    pub(super) async fn publish_message(
        &self,
        message: Message,
        from: PublishFrom,
        now_ms: i64,
    ) -> Result<Option<Revision>, store::Error> {
        let mut revision = None;
        if let Some(write) = message.retained_write(now_ms) {
            revision = self
                .inner
                .store
                .write_owned(OwnedWrite {
                    write,
                    owner: from.owner,
                    client: from.client,
                    condition: from.condition,
                })
                .await?;
        }
        self.deliver(Arc::new(message), now_ms);
        Ok(revision)
    }

    /// Sends a message handled here to every matching subscription, on this node and others.
    fn deliver(&self, message: Arc<Message>, now_ms: i64) {
        let cluster = self.inner.cluster.as_ref();
        // Shared groups span nodes through NATS; without it, this node's members get theirs.
        let shared_here = cluster.is_none_or(|c| !c.shares_across_nodes());
        if let Some(cluster) = cluster
            && !message.expired(now_ms)
        {
            let stamp = cluster.forward(&Outgoing {
                shared_done: shared_here,
                ..message.outgoing()
            });
            if let Some(stamp) = stamp {
                let _ = message.stamp.set(stamp);
            }
        }
        self.inner.sessions.route(message, now_ms, shared_here);
    }

    /// A publish another node handled (and stored, if retained): this node's subscribers get it.
    pub(super) fn receive(&self, routed: Routed) {
        let now = self.inner.store.clock().now_ms();
        // Members of shared groups get theirs from their queue subscriptions.
        self.inner
            .sessions
            .route(Arc::new(Message::routed(routed)), now, false);
    }

    /// A publish from another node for the member of a shared subscription NATS picked.
    pub(super) fn receive_for_member(&self, routed: Routed, spec: &FilterSpec, member: &str) {
        let now = self.inner.store.clock().now_ms();
        self.inner
            .sessions
            .route_to_member(Arc::new(Message::routed(routed)), now, spec, member);
    }

    /// Stops taking connections, asks every connection to close (MQTT 5: DISCONNECT 0x8B) and
    /// waits for them, up to `grace`. With a drain time, the connected clients are first asked
    /// to leave one after another over that time (`drain`), and with other nodes their
    /// sessions are handed over to them as the clients come back there.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stopping.cancel();
        let drain_time = self.inner.config.drain_time;
        if !drain_time.is_zero() {
            // A Server Reference names another server even for a node alone.
            let others_serve =
                self.inner.cluster.is_some() || self.inner.config.server_reference.is_some();
            let asked = super::drain::drain(&self.inner.sessions, drain_time, others_serve).await;
            // Alone, nobody will ask for them.
            if self.cluster().is_some_and(|c| c.live_nodes() > 1) {
                super::drain::await_hand_overs(&self.inner.sessions, asked).await;
            }
        }
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

    /// An operator disconnects `client_id` if it is connected here (MQTT 5: DISCONNECT 0x98
    /// Administrative action): `clean_session` ends its session with it, `prevent_will` keeps
    /// its Will back. Whether it was connected here.
    pub(super) async fn disconnect_here(
        &self,
        client_id: &str,
        clean_session: bool,
        prevent_will: bool,
    ) -> bool {
        let Some(stop) = self
            .inner
            .sessions
            .oust(client_id, clean_session, prevent_will)
        else {
            return false;
        };
        if clean_session
            && let Some(cluster) = self.cluster()
            && let Err(e) = cluster.session_forget(client_id).await
        {
            tracing::warn!(client = %client_id, error = %e, "the session an operator ended could not be removed from the database first; it goes when its connection has finished");
        }
        stop.cancel();
        true
    }

    /// An operator's disconnect (DeleteConnection): `client_id`'s connection is closed here
    /// or, on a node of many, on the node it is connected to. Whether it was connected.
    pub async fn disconnect_client(
        &self,
        client_id: &str,
        clean_session: bool,
        prevent_will: bool,
    ) -> Result<bool, crate::cluster::DisconnectError> {
        if self
            .disconnect_here(client_id, clean_session, prevent_will)
            .await
        {
            return Ok(true);
        }
        match self.cluster() {
            Some(cluster) => {
                cluster
                    .disconnect(client_id, clean_session, prevent_will)
                    .await
            }
            None => Ok(false),
        }
    }

    /// Cancelled when shutdown begins: no connection is taken from then on.
    pub(crate) fn stopping_signal(&self) -> &CancellationToken {
        &self.inner.stopping
    }

    /// Adds or replaces a client's subscription (see [`Sessions::subscribe_for`]); `None` when
    /// its connection was taken over.
    pub(super) fn subscribe(
        &self,
        session: &Arc<Session>,
        connection: u64,
        spec: &FilterSpec,
        options: SubOptions,
    ) -> Option<Entered> {
        self.inner
            .sessions
            .subscribe_for(session, connection, spec, options)
    }

    /// Queues the latest `$SYS` values `filter` matches for a new subscription of `session`.
    pub(super) fn send_latest_status(
        &self,
        session: &Session,
        filter: &TopicFilter,
        options: SubOptions,
    ) {
        self.inner.sys.send_latest(session, filter, options);
    }

    /// Removes a client's subscription: whether it existed, `None` when its connection was
    /// taken over.
    pub(super) fn unsubscribe(
        &self,
        session: &Arc<Session>,
        connection: u64,
        spec: &FilterSpec,
    ) -> Option<bool> {
        self.inner
            .sessions
            .unsubscribe_for(session, connection, spec)
    }

    /// Binds a new connection to the client's session (see [`Sessions::attach`]).
    pub(super) fn attach(
        &self,
        key: ClientKey,
        clean_start: bool,
        principal: Option<Arc<Principal>>,
        claim: u64,
        restored: Option<Restored>,
    ) -> Attached {
        let limits = self.inner.config.topic_limits;
        let restored = restored.map(|r| {
            let open = r
                .exchanges
                .as_ref()
                .and_then(|blob| exchanges::decode(&key, blob, limits));
            (r, open)
        });
        let attached = self.inner.sessions.attach(
            key.clone(),
            clean_start,
            principal,
            claim,
            restored,
            &self.inner.shutdown,
        );
        if attached.session_present {
            self.inner.pending_wills.resumed(&key);
        }
        attached
    }

    /// The principals were reloaded: what was learnt of MQTT passwords no longer holds.
    pub(super) fn forget_checked_credentials(&self) {
        self.inner.password_checks.forget_all();
    }

    pub(super) fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    /// The connection is gone; its session ends now or once `expiry` passes without a new
    /// connection, unless the broker shuts down first; its `claim` on the client id (with
    /// many nodes) is released.
    pub(super) fn detach(
        &self,
        session: &Arc<Session>,
        connection: u64,
        claim: u64,
        expiry: Duration,
    ) {
        let now_ms = self.inner.store.clock().now_ms();
        if !self
            .inner
            .sessions
            .detach(session, connection, claim, expiry, now_ms)
        {
            return;
        }
        self.expire_after(session, connection, expiry);
    }

    /// Ends `session`, offline since `connection` left, once `expiry` passes without a new
    /// connection, unless the broker shuts down first (`expiry`).
    pub(super) fn expire_after(&self, session: &Session, connection: u64, expiry: Duration) {
        let (client, serial) = (session.key.clone(), session.serial());
        self.inner
            .expiries
            .after(client, serial, connection, expiry, || {
                // Weak: the task must not keep a stopped broker alive.
                let weak = Arc::downgrade(&self.inner);
                let sessions = weak.clone();
                let due = move |client: ClientKey, serial, connection| {
                    if let Some(inner) = weak.upgrade() {
                        inner.sessions.expire_key(&client, serial, connection);
                    }
                };
                let live = move |client: &ClientKey, serial, connection| {
                    sessions
                        .upgrade()
                        .is_some_and(|inner| inner.sessions.left_by(client, serial, connection))
                };
                (Box::new(due), Box::new(live), self.inner.shutdown.clone())
            });
    }

    /// Whether a session that ended its connection at `connection` was resumed since.
    pub(super) fn resumed_since(&self, key: &ClientKey, connection: u64) -> bool {
        self.inner.sessions.resumed_since(key, connection)
    }

    /// Sends a message to every matching subscription, here (see [`Sessions::route`]) and on
    /// the other nodes.
    pub(super) fn route(&self, message: Arc<Message>) {
        let now = self.inner.store.clock().now_ms();
        self.deliver(message, now);
    }
}
