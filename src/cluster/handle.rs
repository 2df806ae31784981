//! [`Cluster`], the cheap `Clone` handle the broker holds when the node is one of many: it
//! sends publishes to the nodes that want them, hands the broker what the others send, and
//! keeps the node's interest announced.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Error;
use super::access::{self, NatsAccess};
use super::adoption::Adopting;
use super::budget::Budget;
use super::claims::{ClaimError, Claims, TakeOver};
use super::disconnect::{self, Disconnect, DisconnectError};
use super::frame::{self, Outgoing, Stamp};
use super::inbox::{Events, Inbox};
use super::link::{self, Link};
use super::local::{Change, Local};
use super::loops::{self, HANDOVER_TIMEOUT, Undetached};
use super::nodes::{Census, Headcount, Heartbeats, Liveness};
use super::remote::{self, RemoteInterest};
use super::sessions::{
    self, Holder, LetGoHeld, Restored, SessionError, SessionRow, Sessions, Spool,
    StoredSubscription, WrittenBack,
};
use crate::topic::{ClientKey, FilterSpec, SubscriptionTree, TopicLimits, TopicName};

/// Messages for offline sessions waiting to be written to Postgres: beyond this many, or
/// this many bytes of frames, they are dropped (and counted), so a slow database never holds
/// a publisher back nor fills the node's memory.
const SPOOL: usize = 64 * 1024;
const SPOOL_BYTES: usize = 64 << 20;

/// Publishes waiting for the NATS connection: beyond this many, or this many bytes of frames,
/// a publish is not sent to the other nodes (and counted), so a stalled NATS never holds a
/// publisher back nor fills the node's memory.
const OUTBOX: usize = 16 * 1024;
const OUTBOX_BYTES: usize = 64 << 20;

/// How long a CONNECT that takes a client id over from another node waits to hand NATS the
/// notice for it.
const NOTICE_TIMEOUT: Duration = Duration::from_millis(500);

/// How a node joins the service.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `nats://host:port`, or several, comma-separated; `user:password@` or `token@` before
    /// the host for servers that ask for credentials, `tls://` for TLS.
    pub url: String,
    /// TLS and identity beyond the URL's.
    pub access: NatsAccess,
    /// The first token of every subject and the bucket's name: services sharing one NATS
    /// each have their own.
    pub prefix: String,
    /// Pooled Postgres connections for claims, sessions and queues (`--cluster-db-connections`).
    pub db_connections: u32,
    /// The JetStream domain of the interest bucket; `None`: the server's own JetStream.
    pub jetstream_domain: Option<String>,
    /// How long to keep trying to reach NATS at start.
    pub startup_wait: Duration,
    /// This node's `--max-payload-bytes`, which must fit NATS's message size.
    pub max_payload_bytes: usize,
    pub topic_limits: TopicLimits,
    /// The service's Postgres database, where client ids are claimed.
    pub database_url: String,
    /// How long a claim may wait for the database (`--store-timeout`).
    pub database_timeout: Duration,
    /// How long this node may be silent before the others take it for dead
    /// (`--cluster-dead-after`).
    pub liveness: Liveness,
}

/// What this node sent and received, for tests, benchmarks and (issue 16) metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Publishes sent to NATS.
    pub forwarded: u64,
    /// NATS messages they were sent in: fewer when publishes queued for one subject went as
    /// one batch.
    pub nats_messages: u64,
    /// Publishes no other node wanted, so not sent.
    pub not_forwarded: u64,
    /// Publishes another node wanted but that found the outbox full (NATS stalled or down).
    pub dropped: u64,
    /// Publishes received from other nodes and handed to the broker.
    pub received: u64,
    /// Extra copies received through overlapping subscriptions, not handed over again.
    pub duplicates: u64,
    /// Attempts to announce an interest change that NATS did not take (each is tried again
    /// every 2 s while connected, and on reconnection).
    pub unannounced: u64,
    /// Times NATS reported this node as too slow to read.
    pub slow_consumer_events: u64,
    /// Messages received on this node's subjects that are not retaind publishes, dropped.
    pub malformed: u64,
    /// Publishes received from nodes of a release that sends another frame version, dropped.
    pub other_version: u64,
    /// Messages for offline sessions not stored in Postgres: the spool was full, or the
    /// database failed or did not answer in time.
    pub queued_lost: u64,
    /// Heartbeats this node could not write in time.
    pub heartbeat_failures: u64,
    /// Adoptions of the sessions of nodes that are gone, and questions about adoptions in
    /// doubt, that the database failed or did not answer in time (tried again at the next
    /// heartbeat).
    pub adoption_failures: u64,
    /// Times this node found that the others had taken it for dead.
    pub taken_for_dead: u64,
    /// Times the connection to NATS came back after it was lost.
    pub nats_reconnections: u64,
    /// Sessions taken up here as stored because the node holding them did not hand them over
    /// in time (or no longer answered: it had stopped).
    pub handovers_missed: u64,
    /// Sessions kept here after a resume failed once the node holding them had let them go.
    pub resumes_kept: u64,
}

#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    node: Arc<str>,
    prefix: String,
    client: async_nats::Client,
    claims: Claims,
    link: Arc<Link>,
    remote: Arc<RemoteInterest>,
    inbox: Arc<Inbox>,
    changes: mpsc::UnboundedSender<Change>,
    outbox: mpsc::Sender<(TopicName, Bytes)>,
    outbox_bytes: Arc<Budget>,
    /// This node's part of every [`Stamp`] it gives.
    tag: u64,
    seq: AtomicU64,
    forwarded: Arc<AtomicU64>,
    nats_messages: Arc<AtomicU64>,
    not_forwarded: AtomicU64,
    dropped: AtomicU64,
    handovers_missed: AtomicU64,
    resumes_kept: AtomicU64,
    unannounced: Arc<AtomicU64>,
    /// What the heartbeats say of the nodes.
    headcount: Arc<Headcount>,
    adopting: Arc<Adopting>,
    /// This node's members of shared subscriptions: a publish they match goes through NATS,
    /// which picks the group's member, even when no other node is interested.
    members_here: RwLock<SubscriptionTree<()>>,
    sessions: Arc<Sessions>,
    spool: mpsc::Sender<Spool>,
    spool_bytes: Arc<Budget>,
    /// Messages for offline sessions not stored (spool full, or the database refused).
    spool_lost: Arc<AtomicU64>,
    /// Ends of connections the database did not record yet.
    undetached: Arc<Undetached>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Cluster {
    /// Connects to NATS (retrying for `startup_wait`) and starts following the other nodes.
    pub async fn start(config: ClusterConfig) -> Result<Self, Error> {
        check_prefix(&config.prefix)?;
        if let Some(domain) = &config.jetstream_domain {
            check_domain(domain)?;
        }
        let node: Arc<str> = Arc::from(uuid::Uuid::new_v4().simple().to_string());
        let claims = Claims::open(
            &config.database_url,
            config.database_timeout,
            config.db_connections,
        )
        .await
        .map_err(|e| Error::Database(e.to_string()))?;
        // Alive before the first CONNECT: a session of a node without a heartbeat would be
        // adopted by another.
        super::nodes::beat(claims.pool(), &node, config.liveness, &mut false)
            .await
            .map_err(|e| Error::Database(e.to_string()))?;
        let sessions = Arc::new(Sessions::new(
            claims.pool().clone(),
            config.topic_limits,
            config.database_timeout,
        ));
        let shown = access::redact(&config.url);
        let (client, link) = link::connect(
            &config.url,
            &config.access,
            &format!("retaind {node}"),
            config.startup_wait,
            config.max_payload_bytes,
        )
        .await?;
        // A leaf node's clients reach another domain's JetStream through `$JS.<domain>.API`;
        // async-nats then also sends the bucket's puts that way.
        let js = match &config.jetstream_domain {
            Some(domain) => async_nats::jetstream::with_domain(client.clone(), domain),
            None => async_nats::jetstream::new(client.clone()),
        };
        // JetStream must answer now: a node that cannot announce its interest would miss
        // every message published elsewhere.
        super::bucket::open(&js, &config.prefix)
            .await
            .map_err(|cause| Error::JetStream {
                url: shown.clone(),
                cause,
            })?;
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let remote = Arc::new(RemoteInterest::new());
        let inbox = Arc::new(Inbox::new(config.topic_limits));
        let (changes, changes_rx) = mpsc::unbounded_channel();
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
        let outbox_bytes = Arc::new(Budget::new(OUTBOX_BYTES));
        let forwarded = Arc::new(AtomicU64::new(0));
        let nats_messages = Arc::new(AtomicU64::new(0));
        let unannounced = Arc::new(AtomicU64::new(0));
        tasks.spawn(remote::follow(
            js.clone(),
            config.prefix.clone(),
            node.clone(),
            remote.clone(),
            link.epochs(),
            shutdown.clone(),
        ));
        let members_client = link::connect_members(
            &config.url,
            &config.access,
            &format!("retaind {node} members"),
            &link,
        )
        .await?;
        let local = Local {
            client: client.clone(),
            members_client,
            js,
            link: link.clone(),
            prefix: config.prefix.clone(),
            node: node.clone(),
            inbox: inbox.clone(),
            unannounced: unannounced.clone(),
        };
        tasks.spawn(local.run(changes_rx, link.epochs(), shutdown.clone()));
        let notices = client
            .subscribe(takeover_subject(&config.prefix, &node))
            .await
            .map_err(|e| Error::Unreachable {
                url: shown.clone(),
                cause: e.to_string(),
            })?;
        tasks.spawn(loops::take_overs(notices, inbox.clone(), shutdown.clone()));
        let (spool, spool_rx) = mpsc::channel(SPOOL);
        let spool_bytes = Arc::new(Budget::new(SPOOL_BYTES));
        let spool_lost = Arc::new(AtomicU64::new(0));
        tasks.spawn(sessions::write_spool(
            claims.pool().clone(),
            config.database_timeout,
            spool_rx,
            spool_bytes.clone(),
            spool_lost.clone(),
            shutdown.clone(),
        ));
        let hand_overs = client
            .subscribe(handover_subject(&config.prefix, &node))
            .await
            .map_err(|e| Error::Unreachable {
                url: shown.clone(),
                cause: e.to_string(),
            })?;
        let disconnects = client
            .subscribe(disconnect::subject(&config.prefix, &node))
            .await
            .map_err(|e| Error::Unreachable {
                url: shown.clone(),
                cause: e.to_string(),
            })?;
        tasks.spawn(disconnect::answer(
            disconnects,
            client.clone(),
            inbox.clone(),
            shutdown.clone(),
        ));
        let shared = loops::HandOvers {
            node: node.clone(),
            client: client.clone(),
            inbox: inbox.clone(),
            remote: remote.clone(),
            spool: spool.clone(),
            sessions: sessions.clone(),
        };
        tasks.spawn(loops::hand_over(
            hand_overs,
            Arc::new(shared),
            shutdown.clone(),
        ));
        tasks.spawn(loops::send(
            client.clone(),
            config.prefix.clone(),
            outbox_rx,
            outbox_bytes.clone(),
            forwarded.clone(),
            nats_messages.clone(),
            shutdown.clone(),
        ));
        let undetached = Arc::new(Undetached::default());
        tasks.spawn(loops::record_detached(
            sessions.clone(),
            node.clone(),
            undetached.clone(),
            shutdown.clone(),
        ));
        let headcount = Arc::new(Headcount::default());
        let counted = {
            let (remote, inbox, changes) = (remote.clone(), inbox.clone(), changes.clone());
            // Nodes with keys in the bucket but no heartbeat row at the last pass.
            let mut suspects = HashSet::new();
            move |census: &Census| {
                if census.taken_for_dead {
                    // The others deleted this node's keys when they buried it.
                    let _ = changes.send(Change::Reannounce);
                    if let Some(events) = inbox.events.get() {
                        events.taken_for_dead();
                    }
                }
                for dead in &census.dead {
                    let _ = changes.send(Change::Bury(remote.keys_of(dead)));
                    inbox.forget(dead);
                }
                // Keys that outlive their node: a burial whose deletes NATS did not take, a
                // node that stopped before it withdrew them all. Two passes running, so that
                // a node starting between the census and this look is not taken for one.
                let absent: HashSet<String> = remote
                    .nodes()
                    .into_iter()
                    .filter(|n| !census.live.contains(n))
                    .collect();
                let orphans: Vec<String> = absent
                    .intersection(&suspects)
                    .flat_map(|n| remote.keys_of(n))
                    .collect();
                if !orphans.is_empty() {
                    tracing::info!(
                        keys = orphans.len(),
                        "removing interest keys of nodes that are gone"
                    );
                    let _ = changes.send(Change::Bury(orphans));
                }
                suspects = absent;
            }
        };
        let adopted = {
            let inbox = inbox.clone();
            move |sessions| {
                if let Some(events) = inbox.events.get() {
                    events.adopt(sessions);
                }
            }
        };
        let adopting = Arc::new(Adopting::default());
        let heartbeats = Heartbeats {
            pool: claims.beats().clone(),
            adoptions: claims.adoptions().clone(),
            node: node.clone(),
            liveness: config.liveness,
            adopting: adopting.clone(),
        };
        tasks.spawn(super::nodes::run(
            heartbeats,
            headcount.clone(),
            sessions.clone(),
            counted,
            adopted,
            shutdown.clone(),
        ));
        tasks.close();
        tracing::info!(%node, url = %shown, "joined the cluster");
        let tag = Stamp::node_tag(&node);
        Ok(Self {
            inner: Arc::new(Inner {
                node,
                prefix: config.prefix,
                client,
                claims,
                link,
                remote,
                inbox,
                changes,
                outbox,
                outbox_bytes,
                tag,
                seq: AtomicU64::new(0),
                forwarded,
                nats_messages,
                not_forwarded: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                handovers_missed: AtomicU64::new(0),
                resumes_kept: AtomicU64::new(0),
                unannounced,
                headcount,
                adopting,
                members_here: RwLock::new(SubscriptionTree::new()),
                sessions,
                spool,
                spool_bytes,
                spool_lost,
                undetached,
                shutdown,
                tasks,
            }),
        })
    }

    /// This node's id in the service, new at every start.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Whether the NATS connection is up.
    pub fn is_connected(&self) -> bool {
        self.inner.link.is_connected()
    }

    /// Whether the node does not know the other nodes' interest right now, and so sends
    /// every publish.
    pub fn in_doubt(&self) -> bool {
        self.inner.remote.in_doubt()
    }

    /// Whether a publish to `topic` would be sent to NATS now: some other node announced a
    /// matching filter, or this node does not know (and sends everything).
    pub fn sends(&self, topic: &TopicName) -> bool {
        self.inner.remote.wants(topic) || (self.is_connected() && self.members_here_want(topic))
    }

    fn members_here_want(&self, topic: &TopicName) -> bool {
        self.inner
            .members_here
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .matches_any(topic)
    }

    fn members_here(&self) -> std::sync::RwLockWriteGuard<'_, SubscriptionTree<()>> {
        self.inner
            .members_here
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether members of shared subscriptions get their messages through NATS, which picks
    /// one member per group service-wide. Without NATS, this node's members get them from
    /// this node, as on a single node.
    pub fn shares_across_nodes(&self) -> bool {
        self.is_connected()
    }

    /// Sets what the broker does with what other nodes send; the first call wins.
    pub fn set_events(&self, events: impl Events + 'static) {
        let _ = self.inner.inbox.events.set(Box::new(events));
    }

    /// Claims `client_id` for a new connection on this node and tells the node that held
    /// it, if another, to close its connection. Returns the claim's generation. The CONNACK
    /// waits for it: one database round trip.
    pub async fn claim(&self, client_id: &str, resumed: bool) -> Result<u64, ClaimError> {
        let inner = &self.inner;
        let claimed = inner.claims.claim(client_id, &inner.node).await?;
        if let Some(previous) = claimed.previous {
            let notice = TakeOver {
                client_id: Arc::from(client_id),
                generation: claimed.generation,
                resumed,
            };
            // At most once, like all of core NATS: the holder also finds out from its next
            // comparison with the database. So the CONNACK never waits long on NATS: its
            // queue of commands fills while it is away.
            let notify = inner
                .client
                .publish(takeover_subject(&inner.prefix, &previous), notice.encode());
            let _ = tokio::time::timeout(NOTICE_TIMEOUT, notify).await;
        }
        Ok(claimed.generation)
    }

    /// How this node stands with the others, as its heartbeats found out: the passes that
    /// wrote its heartbeat, and the times it found itself taken for dead (counted first).
    pub fn heard(&self) -> Heard {
        let h = &self.inner.headcount;
        // In this order: a pass counts itself taken for dead before it counts as written.
        let written = h.written();
        Heard {
            written,
            taken_for_dead: h.taken_for_dead(),
        }
    }

    /// Whether a connection on any node has claimed `client_id` since the claim of
    /// `generation` (and holds it still).
    pub async fn claimed_since(
        &self,
        client_id: &str,
        generation: u64,
    ) -> Result<bool, ClaimError> {
        self.inner.claims.claimed_since(client_id, generation).await
    }

    /// The connection that claimed `client_id` at `generation` is gone.
    pub fn release(&self, client_id: Arc<str>, generation: u64) {
        let cluster = self.clone();
        self.inner.tasks.spawn(async move {
            if let Err(e) = cluster.inner.claims.release(&client_id, generation).await {
                tracing::debug!(client = %client_id, error = %e, "a claim was not released; the next claim replaces it");
            }
        });
    }

    /// Of the client ids this node holds (with their claims' generations), those claimed
    /// since by a later connection.
    pub async fn lost(&self, held: &[(Arc<str>, u64)]) -> Result<Vec<String>, ClaimError> {
        self.inner.claims.lost(held).await
    }

    /// Sends a publish this node handled to every other node with a matching subscription.
    /// Never waits. Returns the stamp it was sent with: copies of it may be on other nodes.
    pub fn forward(&self, message: &Outgoing<'_>) -> Option<Stamp> {
        let inner = &self.inner;
        let members = !message.shared_done && self.members_here_want(message.topic);
        if !members && !inner.remote.wants(message.topic) {
            inner.not_forwarded.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let stamp = Stamp {
            node: inner.tag,
            seq: inner.seq.fetch_add(1, Ordering::Relaxed),
        };
        let body = frame::encode(message, Some(stamp));
        if !queue(
            &inner.outbox,
            &inner.outbox_bytes,
            body.len(),
            (message.topic.clone(), body),
        ) && inner
            .dropped
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(10_000)
        {
            tracing::warn!(
                "publishes for other nodes are dropped: the NATS connection does not keep up or is down"
            );
        }
        Some(stamp)
    }

    /// Session `member` subscribed to `spec` (plain or shared). The returned receiver
    /// completes once the other nodes can know it (or the attempt timed out); the SUBACK
    /// waits for it.
    pub fn interest_added(&self, spec: &FilterSpec, member: &ClientKey) -> oneshot::Receiver<()> {
        if spec.share_group().is_some() {
            self.members_here().insert(member, spec, ());
        }
        let (done, announced) = oneshot::channel();
        let _ = self
            .inner
            .changes
            .send(Change::Add(spec.clone(), member.clone(), done));
        announced
    }

    /// Session `member`'s subscription to `spec` ended.
    pub fn interest_removed(&self, spec: &FilterSpec, member: &ClientKey) {
        if spec.share_group().is_some() {
            self.members_here().remove(member, spec);
        }
        let _ = self
            .inner
            .changes
            .send(Change::Remove(spec.clone(), member.clone()));
    }

    pub fn stats(&self) -> ClusterStats {
        let i = &self.inner;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClusterStats {
            forwarded: load(&i.forwarded),
            nats_messages: load(&i.nats_messages),
            not_forwarded: load(&i.not_forwarded),
            dropped: load(&i.dropped),
            received: load(&i.inbox.received),
            duplicates: load(&i.inbox.duplicates),
            unannounced: load(&i.unannounced),
            slow_consumer_events: load(&i.link.slow_consumer_events),
            malformed: load(&i.inbox.malformed),
            other_version: load(&i.inbox.other_version),
            queued_lost: load(&i.spool_lost),
            heartbeat_failures: i.headcount.failures(),
            adoption_failures: i.headcount.adoption_failures(),
            taken_for_dead: i.headcount.taken_for_dead(),
            nats_reconnections: i.link.reconnections(),
            handovers_missed: load(&i.handovers_missed),
            resumes_kept: load(&i.resumes_kept),
        }
    }

    /// Records a session as its connection starts on this node, before its CONNACK.
    pub async fn session_connected(&self, row: &SessionRow<'_>) -> Result<(), SessionError> {
        self.inner.sessions.connected(&self.inner.node, row).await
    }

    /// A connection with neither a persistent session nor a Will started: any earlier
    /// session of its client id, on any node, is gone.
    pub async fn session_forget(&self, client_id: &str) -> Result<(), SessionError> {
        self.inner.sessions.forget(client_id).await
    }

    /// A persistent session's subscriptions changed (written before the SUBACK).
    pub async fn session_subscriptions(
        &self,
        client_id: &str,
        subscriptions: &[StoredSubscription],
    ) -> Result<(), SessionError> {
        let node = &self.inner.node;
        self.inner
            .sessions
            .set_subscriptions(node, client_id, subscriptions)
            .await
    }

    /// The connection that claimed `client_id` at `generation` ended: its persistent session
    /// stays in Postgres, offline; any other row goes; the claim is released in the same
    /// write (one commit per ended connection, where a drained node made two). Tried again
    /// every 2 s ([`BEAT`](super::BEAT)) until the database takes it: a row left "connected"
    /// would have its Will published a second time by whichever node adopts this node's
    /// sessions, even after a clean stop.
    pub fn session_detached(&self, client_id: Arc<str>, generation: u64, persistent: bool) {
        let cluster = self.clone();
        // Tracked: a node that stops records its connections' ends before it leaves, or the
        // node adopting its sessions would take them for connected and publish their Wills.
        self.inner.tasks.spawn(async move {
            let inner = &cluster.inner;
            if let Err(e) = inner
                .sessions
                .detached(&inner.node, &client_id, generation, persistent)
                .await
            {
                tracing::warn!(client = %client_id, error = %e, "could not record the end of a connection; trying again");
                inner.undetached.owe(client_id, generation, persistent);
            }
        });
    }

    /// This node stops cleanly: what it held of its offline sessions beyond their rows goes
    /// into them, for the node that adopts them (see [`Sessions::write_back`]).
    pub async fn write_back(&self, held: &[WrittenBack]) -> Result<(), SessionError> {
        self.inner.sessions.write_back(&self.inner.node, held).await
    }

    /// An offline session held here expired.
    pub fn session_expired(&self, client_id: Arc<str>) {
        let cluster = self.clone();
        self.inner.tasks.spawn(async move {
            let inner = &cluster.inner;
            let _ = loops::flush_spool(&inner.spool).await;
            if let Err(e) = inner.sessions.expired(&inner.node, &client_id).await {
                tracing::warn!(client = %client_id, error = %e, "could not remove an expired session");
            }
        });
    }

    /// Where `client_id`'s earlier session or Will is held; `None` if nowhere (one database
    /// round trip).
    pub async fn holder(&self, client_id: &str) -> Result<Option<Holder>, SessionError> {
        self.inner.sessions.holder(client_id).await
    }

    /// Whether `holder` is another node, alive: it holds the session in its memory.
    pub fn held_elsewhere(&self, holder: &Holder) -> bool {
        holder.alive && holder.node != *self.inner.node
    }

    /// Asks `holder`, if alive and another node, to let `client_id`'s session go (and to store
    /// what it queued), for a connection here that resumes it; waits for the spool here
    /// otherwise. Whether the holder answered that it let go.
    pub async fn ask_to_let_go(&self, holder: &Holder, client_id: &str) -> bool {
        let inner = &self.inner;
        if !self.held_elsewhere(holder) {
            loops::flush_spool(&inner.spool).await;
            return false;
        }
        let ask = inner.client.request(
            handover_subject(&inner.prefix, &holder.node),
            Bytes::copy_from_slice(client_id.as_bytes()),
        );
        let answered = matches!(tokio::time::timeout(HANDOVER_TIMEOUT, ask).await, Ok(Ok(_)));
        if !answered {
            inner.handovers_missed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client = %client_id, node = %holder.node, "the node holding a session did not hand it over in time; taking it as stored");
        }
        answered
    }

    /// Takes the earlier session of `row`'s client id for a connection here, once its holder
    /// let go ([`Self::ask_to_let_go`]), and records the connection's session in the same
    /// transaction: its subscriptions and queue leave Postgres for this node. `None`: nothing
    /// to resume (see [`Sessions::take`]).
    pub async fn take(&self, row: &SessionRow<'_>) -> Result<Option<Restored>, SessionError> {
        self.inner.sessions.take(&self.inner.node, row).await
    }

    /// A session is kept here after a resume failed once its holder had let it go: counted.
    pub fn resume_kept(&self) {
        self.inner.resumes_kept.fetch_add(1, Ordering::Relaxed);
    }

    /// A resume here failed after `from` let `client_id`'s session go: this node holds it
    /// now, and its row says so unless its client came back after `claim`
    /// ([`Sessions::hold_let_go`]).
    pub async fn hold_let_go(
        &self,
        from: &str,
        client_id: &str,
        claim: u64,
    ) -> Result<LetGoHeld, SessionError> {
        let inner = &self.inner;
        inner
            .sessions
            .hold_let_go(&inner.node, from, client_id, claim)
            .await
    }

    /// An operator's disconnect of `client_id`, connected to another node: the node holding
    /// its claim is asked to close the connection. Whether it had it.
    pub async fn disconnect(
        &self,
        client_id: &str,
        clean_session: bool,
        prevent_will: bool,
    ) -> Result<bool, DisconnectError> {
        let inner = &self.inner;
        let holder = inner.claims.holder_of(client_id).await.map_err(|e| {
            DisconnectError(format!(
                "cannot find the node the client is connected to: {e}"
            ))
        })?;
        let Some(node) = holder.filter(|n| **n != *inner.node) else {
            return Ok(false);
        };
        let asked = Disconnect {
            client_id: client_id.to_owned(),
            clean_session,
            prevent_will,
        };
        asked.ask(&inner.client, &inner.prefix, &node).await
    }

    /// Of `held`, the client ids whose session and claim are no longer this node's (the
    /// others took it for dead), each with whether another node holds its session, which
    /// then takes what this node queued for it.
    pub async fn not_held_here(
        &self,
        held: &[Arc<str>],
    ) -> Result<Vec<(String, bool)>, SessionError> {
        self.inner
            .sessions
            .not_held_by(&self.inner.node, held)
            .await
    }

    /// Queues a message for an offline session in Postgres; false if it was dropped (the
    /// spool is full). Never waits.
    pub fn spool(
        &self,
        client_id: &Arc<str>,
        message: &Outgoing<'_>,
        stamp: Option<Stamp>,
        qos: crate::store::Qos,
        retain: bool,
        subscription_ids: Vec<u32>,
    ) -> bool {
        let queued = frame::encode(message, stamp);
        let n = queued.len();
        let item = Spool::Append {
            client_id: client_id.clone(),
            queued,
            qos,
            retain,
            ids: subscription_ids,
        };
        let sent = queue(&self.inner.spool, &self.inner.spool_bytes, n, item);
        if !sent {
            self.inner.spool_lost.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Connections that ended while the database could not record it, not recorded yet.
    pub fn unrecorded_connection_ends(&self) -> usize {
        self.inner.undetached.len()
    }

    /// The nodes of the service with a recent heartbeat, this one included (at least 1).
    pub fn live_nodes(&self) -> usize {
        self.inner.headcount.live()
    }

    /// Live nodes of another release whose frames this node drops, and which drop this
    /// node's: not 0 only in the middle of a rolling upgrade across frame versions.
    pub fn nodes_of_other_frame_versions(&self) -> usize {
        self.inner.headcount.other_frames()
    }

    /// Adoptions whose commit went unanswered, until the database says what became of them.
    pub fn adoptions_in_doubt(&self) -> usize {
        self.inner.headcount.in_doubt()
    }

    /// Leaves the service: withdraws this node's interest, claims and heartbeat, and stops
    /// its tasks.
    /// Takes up no more sessions of nodes that are gone, once an adoption running ends (at
    /// most the store timeout): called before the node writes back what its offline sessions
    /// hold, so that every session it adopted is among them.
    pub async fn stop_adopting(&self) {
        let within = self.inner.sessions.timeout + Duration::from_secs(1);
        if tokio::time::timeout(within, self.inner.adopting.stop())
            .await
            .is_err()
        {
            tracing::warn!(
                "an adoption of sessions of nodes that are gone is still running as this node stops; \
                 if it commits, their delayed Wills are not written back"
            );
        }
    }

    pub async fn stop(&self) {
        let s = self.stats();
        tracing::info!(
            forwarded = s.forwarded,
            nats_messages = s.nats_messages,
            not_forwarded = s.not_forwarded,
            dropped = s.dropped,
            received = s.received,
            duplicates = s.duplicates,
            slow_consumer_events = s.slow_consumer_events,
            malformed = s.malformed,
            other_version = s.other_version,
            "cluster traffic of this node, since it started"
        );
        self.inner.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.tasks.wait()).await;
        let left = tokio::time::timeout(
            Duration::from_secs(5),
            super::nodes::leave(self.inner.claims.pool(), &self.inner.node),
        )
        .await;
        if !matches!(left, Ok(Ok(()))) {
            tracing::warn!("could not remove this node's heartbeat; the others will find it dead");
        }
    }
}

fn takeover_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.k.{node}")
}

fn handover_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.h.{node}")
}

/// Sends `item`, which holds `n` bytes, if they fit `budget` and the channel has room; the
/// receiver gives the bytes back.
fn queue<T>(channel: &mpsc::Sender<T>, budget: &Budget, n: usize, item: T) -> bool {
    if !budget.take(n) {
        return false;
    }
    if channel.try_send(item).is_err() {
        budget.give_back(n);
        return false;
    }
    true
}

/// A prefix is one NATS token and part of the bucket's name.
fn check_prefix(prefix: &str) -> Result<(), Error> {
    if is_token(prefix) {
        Ok(())
    } else {
        Err(Error::Prefix(prefix.to_owned()))
    }
}

/// A domain is one token of the JetStream API's subjects.
fn check_domain(domain: &str) -> Result<(), Error> {
    if is_token(domain) {
        Ok(())
    } else {
        Err(Error::Domain(domain.to_owned()))
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// See [`Cluster::heard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    pub written: u64,
    pub taken_for_dead: u64,
}
