//! Sessions by client id, their link to a live connection, the subscription tree, and routing
//! a message to them. Lock order: the sessions before the tree; neither is held across an
//! `.await`. The handle (`handle`) schedules expiry; everything here is synchronous.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use thin_vec::ThinVec;
use tokio_util::sync::CancellationToken;

use super::deferred::{Locked, Place, StateGuard};
use super::exchanges::Open;
use super::message::{Delivery, Message};
use super::queue_memory::QueueMemory;
use super::session::{Enqueued, SessionLimits, SessionState, Stored, SubOptions};
use super::wake::Wake;
use crate::auth::{Action, Credential, Principal};
use crate::cluster::{Adopted, Queued, StoredSubscription};
use crate::cluster::{Cluster, Restored, TakeOver};
use crate::metrics::{Metrics, SessionBound};
use crate::mqtt::DisconnectReasonCode;
use crate::topic::{ClientKey, SubscriptionTree};
use crate::topic::{FilterSpec, TopicName};

mod eviction_log;
mod offline;
mod stop;
mod takeovers;

use eviction_log::EvictionLog;
use offline::{Listed, Offline};
pub(super) use stop::StopReason;

/// What a subscription replaced (its options, if the filter was held already), and the
/// announcement of a new filter to the other nodes that the SUBACK waits for.
pub(super) type Entered = (
    Option<SubOptions>,
    Option<tokio::sync::oneshot::Receiver<()>>,
);
use takeovers::TakeOvers;

/// What the broker does for a session ended to make room (its pending Will, `will`).
pub(super) type OnEvicted = Box<dyn Fn(&ClientKey) + Send + Sync>;

/// Every session and subscription of the broker.
pub(super) struct Sessions {
    subscriptions: RwLock<SubscriptionTree<SubOptions>>,
    registry: Mutex<Registry>,
    limits: SessionLimits,
    /// What the offline sessions' queues hold, together.
    memory: QueueMemory,
    /// Told of every filter that gains or loses a subscription, when the node is one of many.
    cluster: Option<Cluster>,
    /// Where messages no session could take are counted.
    metrics: Metrics,
    /// Offline sessions the node holds at most (0: no bound); past it the one nearest its
    /// end ends (`offline`).
    max_offline: usize,
    on_evicted: OnceLock<OnEvicted>,
    evictions: Arc<EvictionLog>,
    takeovers: TakeOvers,
}

#[derive(Default)]
struct Registry {
    sessions: HashMap<ClientKey, Arc<Session>>,
    next_connection: u64,
    /// The sessions held offline, kept with `sessions`: every removal from it unlists.
    offline: Offline,
}

impl Registry {
    fn insert(&mut self, key: ClientKey, session: Arc<Session>) {
        if let Some(old) = self.sessions.insert(key, session) {
            self.offline.unlist(old.creator(), &old.listed);
        }
    }

    fn remove(&mut self, key: &str) -> Option<Arc<Session>> {
        let session = self.sessions.remove(key)?;
        self.offline.unlist(session.creator(), &session.listed);
        Some(session)
    }

    /// Whether `session` is the one held for its client id (not one that replaced it).
    fn holds(&self, session: &Arc<Session>) -> bool {
        self.sessions
            .get(&session.key)
            .is_some_and(|s| Arc::ptr_eq(s, session))
    }

    fn awaits_hand_over(&self, session: &Arc<Session>) -> bool {
        self.holds(session)
            && !session.online.load(Ordering::Acquire)
            && session.resumed_elsewhere()
    }
}

/// The first of `candidates` (offline sessions, those nearest their end first) that may end
/// to make room: not `leaving`, and not one another node is taking up, which is left to that
/// node's hand-over. Only a session held is taken: its removal is what unlists it.
fn next_to_end<'a>(
    registry: &Registry,
    mut candidates: impl Iterator<Item = &'a ClientKey>,
    leaving: &Session,
) -> Option<ClientKey> {
    candidates
        .find(|key| {
            **key != leaving.key
                && registry.sessions.get(*key).is_some_and(|s| {
                    !s.online.load(Ordering::Acquire) && s.moved.load(Ordering::Acquire) == 0
                })
        })
        .cloned()
}

/// A session: state that outlives connections when the client asked for it.
pub(super) struct Session {
    pub key: ClientKey,
    /// Unique in the process: which session of the client id a deadline was set for.
    serial: u64,
    /// Routers never wait for it (`deferred`).
    state: Locked,
    /// Wakes the connection task when something was queued for it.
    pub wake: Wake,
    online: AtomicBool,
    /// The connection currently attached (0: none). A connection that finds another id here
    /// was taken over and leaves the session alone.
    connection: AtomicU64,
    /// Cancelled to make the attached connection close; the reason is sent in MQTT 5.
    link: Mutex<Option<(CancellationToken, StopReason)>>,
    /// Who the attached (or last) connection authenticated as; `None` when auth is off.
    /// Read for every message routed and sent, so without a lock (see `deferred`).
    principal: ArcSwapOption<Principal>,
    /// The attached connection's credential besides its MQTT ones (a presigned URL's access
    /// key), which a reload must find still its principal's. Read only by reloads.
    credential: Mutex<Option<Credential>>,
    /// The name of the principal that created the session (`None`: anonymous). Only that
    /// principal may resume it: its queue and subscriptions were granted to it.
    creator: Option<String>,
    /// The generation of the attached connection's claim on the client id, service-wide
    /// (0: a single node, no claims).
    claim: AtomicU64,
    /// Whether the client id was claimed by a connection on another node: [`MOVED`], or
    /// [`MOVED_RESUMED`] when that connection resumes the session.
    moved: AtomicU8,
    /// An operator's disconnect (DeleteConnection) asked to end the session with its
    /// connection: a connection that comes before that one has left does not resume it.
    discarded: AtomicBool,
    /// Where an offline session's messages go on a node of many.
    cluster: Option<Cluster>,
    /// Where what the session drops is counted.
    metrics: Metrics,
    /// When an offline session ends unless its client returns (epoch ms; [`NEVER`]): what a
    /// restart saves with it (decision 024).
    expires_at_ms: AtomicI64,
    /// Its place among the offline sessions (`offline`), while it is one.
    listed: Listed,
}

/// An offline session's [`Session::expires_at_ms`] when it does not expire.
pub(super) const NEVER: i64 = i64::MAX;

/// When a session whose Session Expiry Interval is `expiry_secs`, and which has `left` of it
/// still to wait, ends (epoch ms, from `now_ms`); [`NEVER`] for 0xFFFFFFFF, which does not
/// expire (MQTT 5 §3.1.2.11.2).
pub(super) fn ends_at_ms(now_ms: i64, expiry_secs: u32, left: Duration) -> i64 {
    if expiry_secs == u32::MAX {
        return NEVER;
    }
    now_ms.saturating_add(i64::try_from(left.as_millis()).unwrap_or(NEVER))
}

const MOVED: u8 = 1;
const MOVED_RESUMED: u8 = 2;
/// The other nodes took this node for dead and adopted the session: the adopter published
/// the Will of its connection, if it had one.
const ADOPTED_ELSEWHERE: u8 = 3;

impl Session {
    fn new(key: ClientKey, creator: Option<String>, of: &Sessions) -> Self {
        static SERIALS: AtomicU64 = AtomicU64::new(1);
        Self {
            key,
            serial: SERIALS.fetch_add(1, Ordering::Relaxed),
            creator,
            state: Locked::new(
                SessionState::new(of.limits, of.memory.clone()),
                of.limits.max_queued,
            ),
            wake: Wake::default(),
            online: AtomicBool::new(false),
            connection: AtomicU64::new(0),
            link: Mutex::new(None),
            principal: ArcSwapOption::empty(),
            credential: Mutex::new(None),
            claim: AtomicU64::new(0),
            moved: AtomicU8::new(0),
            discarded: AtomicBool::new(false),
            cluster: of.cluster.clone(),
            metrics: of.metrics.clone(),
            expires_at_ms: AtomicI64::new(NEVER),
            listed: Listed::default(),
        }
    }

    /// Which session of its client id this is, in this process.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The principal that created the session (`None`: anonymous).
    pub fn creator(&self) -> Option<&str> {
        self.creator.as_deref()
    }

    /// When the session, offline, ends (epoch ms; [`NEVER`]).
    pub fn expires_at_ms(&self) -> i64 {
        self.expires_at_ms.load(Ordering::Acquire)
    }

    /// Whether the client now connects through another node and resumes its session there:
    /// a delayed Will is then not published, as after a take-over on one node.
    pub fn resumed_elsewhere(&self) -> bool {
        self.moved.load(Ordering::Acquire) == MOVED_RESUMED
    }

    /// Whether another node adopted the session when the service took this node for dead:
    /// its Will, if any, is that node's to publish, and it did.
    pub fn adopted_elsewhere(&self) -> bool {
        self.moved.load(Ordering::Acquire) == ADOPTED_ELSEWHERE
    }

    /// Who the attached (or last) connection authenticated as, as of the last reload.
    pub fn principal(&self) -> Option<Arc<Principal>> {
        self.principal.load_full()
    }

    /// The principals were reloaded and `old`, this session's principal, is now `new`: it
    /// goes on under the new policy. False if the session's principal is no longer `old`.
    pub fn replace_principal(&self, old: &Arc<Principal>, new: Arc<Principal>) -> bool {
        let current = self
            .principal
            .compare_and_swap(&Some(old.clone()), Some(new));
        current.as_ref().is_some_and(|c| Arc::ptr_eq(c, old))
    }

    /// The principal's credentials are gone: the attached connection, if any, closes
    /// (MQTT 5: DISCONNECT 0x87 Not authorized). True if one was attached.
    pub fn revoke(&self) -> bool {
        self.ask_to_leave(DisconnectReasonCode::NotAuthorized)
    }

    /// A message reaches a client only if its principal may `iot:Receive` the topic,
    /// retained messages included.
    pub fn may_receive(&self, topic: &TopicName) -> bool {
        self.receive_check()(topic)
    }

    /// [`Session::may_receive`] for the current principal, to check many topics with one load.
    pub fn receive_check(&self) -> impl Fn(&TopicName) -> bool + '_ {
        let principal = self.principal.load_full();
        move |topic| {
            principal
                .as_ref()
                .is_none_or(|p| p.allows(Action::Receive, topic.as_str(), Some(&self.key)))
        }
    }

    pub fn state(&self) -> StateGuard<'_, Self> {
        self.state.lock(self)
    }

    fn set_principal(&self, principal: Option<Arc<Principal>>) {
        self.principal.store(principal);
    }

    /// Set by the attached connection, right after [`Sessions::attach`] cleared it.
    pub fn set_credential(&self, credential: Option<Credential>) {
        *self
            .credential
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = credential;
    }

    pub fn credential(&self) -> Option<Credential> {
        self.credential
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn link(&self) -> std::sync::MutexGuard<'_, Option<(CancellationToken, StopReason)>> {
        self.link
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An operator disconnects the attached connection, if any (MQTT 5: DISCONNECT 0x98
    /// Administrative action); `discard` ends the session with it, `no_will` keeps its Will
    /// from being published. Returns the connection's stop signal, for the caller to give
    /// (see [`Sessions::oust`]), if one was attached. Called under the registry's lock, so
    /// that no connection attaches between the two.
    fn oust(&self, discard: bool, no_will: bool) -> Option<CancellationToken> {
        if !self.is_online() {
            return None;
        }
        if discard {
            self.discarded.store(true, Ordering::Release);
        }
        let link = self.link();
        let (stop, why) = link.as_ref()?;
        why.oust(discard, no_will);
        Some(stop.clone())
    }

    /// Whether a connection is attached.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    /// Asks the attached connection, if any, to close with `reason`; whether one was attached.
    pub fn ask_to_leave(&self, reason: DisconnectReasonCode) -> bool {
        let online = self.is_online();
        if online {
            self.kick(reason);
        }
        online
    }

    fn kick(&self, reason: DisconnectReasonCode) {
        if let Some((stop, why)) = self.link().as_ref() {
            why.set(reason);
            stop.cancel();
        }
    }

    pub fn is_attached_to(&self, connection: u64) -> bool {
        self.connection.load(Ordering::Acquire) == connection
    }

    /// Queues a delivery, without waiting for the session's lock (`deferred`).
    fn offer(&self, delivery: Delivery) {
        let online = self.online.load(Ordering::Acquire);
        self.state.offer(self, delivery, online);
    }
}

impl Place for Session {
    /// Queues a delivery. A connected client whose queue is full is not keeping up, and is
    /// disconnected (MQTT 5: 0x97); its session then takes what an offline one takes.
    fn place(&self, state: &mut SessionState, delivery: Delivery, online: bool) {
        let mut next = Some((delivery, online));
        while let Some((delivery, online)) = next.take() {
            match state.enqueue(delivery, online) {
                Enqueued::Queued => self.wake.notify(),
                Enqueued::Dropped => {}
                // Appended under the state's lock, so messages reach Postgres in queue order.
                Enqueued::Spool(delivery) => {
                    if let Some(cluster) = &self.cluster {
                        spool(cluster, &self.key, &delivery);
                    }
                }
                Enqueued::Full(delivery) => {
                    tracing::warn!(client = %self.key, "subscriber is not keeping up; disconnecting it");
                    self.kick(DisconnectReasonCode::QuotaExceeded);
                    self.online.store(false, Ordering::Release);
                    state.go_offline(self.principal().as_deref());
                    next = Some((delivery, false));
                }
            }
        }
        state.dropped.report(&self.metrics);
    }
}

/// A connection's hold on its session.
pub(super) struct Attached {
    pub session: Arc<Session>,
    pub session_present: bool,
    pub connection: u64,
    pub stop: CancellationToken,
    /// Why `stop` was cancelled.
    pub stop_reason: StopReason,
}

impl Sessions {
    pub fn new(
        limits: SessionLimits,
        memory: QueueMemory,
        cluster: Option<Cluster>,
        metrics: Metrics,
    ) -> Self {
        Self {
            subscriptions: RwLock::new(SubscriptionTree::new()),
            registry: Mutex::new(Registry::default()),
            limits,
            memory,
            cluster,
            metrics,
            max_offline: 0,
            on_evicted: OnceLock::new(),
            evictions: Arc::default(),
            takeovers: TakeOvers::default(),
        }
    }

    /// Holds at most `max` offline sessions (0: no bound).
    pub fn bound_offline(mut self, max: usize) -> Self {
        self.max_offline = max;
        self
    }

    /// `on_evicted` is told of each session ended to make room (set once).
    pub fn when_evicted(&self, on_evicted: OnEvicted) {
        let _ = self.on_evicted.set(on_evicted);
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn subscriptions_read(&self) -> RwLockReadGuard<'_, SubscriptionTree<SubOptions>> {
        // The tree is only changed by whole insert/remove calls; a panic cannot leave it torn.
        self.subscriptions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn subscriptions_write(&self) -> RwLockWriteGuard<'_, SubscriptionTree<SubOptions>> {
        self.subscriptions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// [`Sessions::subscribe`] for a client's SUBSCRIBE, made by connection `connection`:
    /// `None` when that connection no longer holds `session`. A connection taken over goes on
    /// applying the packets it had read, and the tree is keyed by client id, so its late
    /// SUBSCRIBE would otherwise reach whichever session holds the id now, a clean one that
    /// never asked for it (and, not in that session's own list, would outlive it). Checked
    /// under the registry's lock, which a take-over holds while it attaches.
    pub fn subscribe_for(
        &self,
        session: &Arc<Session>,
        connection: u64,
        spec: &FilterSpec,
        options: SubOptions,
    ) -> Option<Entered> {
        let registry = self.registry();
        (registry.holds(session) && session.is_attached_to(connection))
            .then(|| self.subscribe(&session.key, spec, options))
    }

    /// [`Sessions::unsubscribe`] for a client's UNSUBSCRIBE, as [`Sessions::subscribe_for`]:
    /// `None` when `connection` no longer holds `session` (a late UNSUBSCRIBE would remove the
    /// new session's subscription to the same filter).
    pub fn unsubscribe_for(
        &self,
        session: &Arc<Session>,
        connection: u64,
        spec: &FilterSpec,
    ) -> Option<bool> {
        let registry = self.registry();
        (registry.holds(session) && session.is_attached_to(connection))
            .then(|| self.unsubscribe(&session.key, spec))
    }

    /// Adds or replaces `key`'s subscription to `spec` and returns the previous options. A
    /// new one is announced to the other nodes; the SUBACK waits for the returned receiver.
    pub fn subscribe(&self, key: &ClientKey, spec: &FilterSpec, options: SubOptions) -> Entered {
        let previous = self.subscriptions_write().insert(key, spec, options);
        let announced = match (&previous, &self.cluster) {
            (None, Some(cluster)) => Some(cluster.interest_added(spec, key)),
            _ => None,
        };
        (previous, announced)
    }

    /// Removes `key`'s subscription to `spec`; whether it existed.
    pub fn unsubscribe(&self, key: &ClientKey, spec: &FilterSpec) -> bool {
        let removed = self.subscriptions_write().remove(key, spec).is_some();
        if removed && let Some(cluster) = &self.cluster {
            cluster.interest_removed(spec, key);
        }
        removed
    }

    /// Binds a new connection to the client's session, taking it over from any connection
    /// that holds it [MQTT-3.1.4-3]. `clean_start` discards a previous session [MQTT-3.1.2-4],
    /// and so does a principal other than the one that created it: a session is
    /// resumed only by its creator, and anyone else starts clean (session present 0) rather
    /// than being refused, so a device whose credentials moved to a new principal still gets
    /// in, and resubscribes as the CONNACK tells it to. The connection's stop signal is a
    /// child of `shutdown`.
    pub fn attach(
        &self,
        key: ClientKey,
        clean_start: bool,
        principal: Option<Arc<Principal>>,
        claim: u64,
        restored: Option<(Restored, Option<Open>)>,
        shutdown: &CancellationToken,
    ) -> Attached {
        let mut registry = self.registry();
        registry.next_connection += 1;
        let connection = registry.next_connection;
        let existing = registry.sessions.get(&key).cloned();
        if let Some(old) = &existing {
            if old.is_online() {
                self.taken_over_here(&key);
            }
            old.kick(DisconnectReasonCode::SessionTakenOver);
        }
        let creator = principal.as_ref().map(|p| p.name.clone());
        // An operator ended the session here: its row in Postgres is not a session to resume
        // either, whether or not its deletion has reached the database yet.
        let discarded = existing
            .as_ref()
            .is_some_and(|old| old.discarded.load(Ordering::Acquire));
        let (restored, exchanges) = restored
            .filter(|(r, _)| !clean_start && r.creator == creator && !discarded)
            .unzip();
        let (session, session_present) = match existing {
            Some(old) if !clean_start && old.creator == creator && !discarded => {
                // Held here already (offline, or made ready while it moved from another node):
                // the subscriptions are those stored with it.
                registry.offline.unlist(old.creator(), &old.listed);
                if let Some(r) = &restored {
                    self.match_subscriptions(&old, &r.subscriptions);
                }
                (old, true)
            }
            other => {
                if let Some(old) = other {
                    self.unsubscribe_all(&old);
                }
                let fresh = Arc::new(Session::new(key.clone(), creator, self));
                registry.insert(key, fresh.clone());
                let present = restored.is_some();
                if let Some(r) = &restored {
                    let _ = self.restore_subscriptions(&fresh, &r.subscriptions);
                }
                (fresh, present)
            }
        };
        // Whatever waited in Postgres for the session comes back, in order.
        let back = restored
            .into_iter()
            .flat_map(|r| r.queued)
            .map(queued_delivery)
            .collect();
        let mut state = session.state();
        state.go_online();
        state.stop_spooling();
        state.requeue_ahead(back);
        if let Some(open) = exchanges.flatten() {
            state.take_up(open.released, open.awaiting_release);
        }
        drop(state);
        session.set_principal(principal);
        // The earlier connection's; the new one sets its own.
        session.set_credential(None);
        let stop = shutdown.child_token();
        let stop_reason = StopReason::new();
        *session.link() = Some((stop.clone(), stop_reason.clone()));
        session.claim.store(claim, Ordering::Release);
        session.moved.store(0, Ordering::Release);
        session.connection.store(connection, Ordering::Release);
        session.online.store(true, Ordering::Release);
        Attached {
            session,
            session_present,
            connection,
            stop,
            stop_reason,
        }
    }

    /// A connection here resumes `key`'s offline session, whose queue is in Postgres: new
    /// messages for it wait here until [`Self::attach`] takes the queue back, so none is
    /// written there after it was read. True if the session was spooling here.
    pub fn pause_spooling(&self, key: &str) -> bool {
        let session = self.registry().sessions.get(key).cloned();
        session.is_some_and(|s| !s.online.load(Ordering::Acquire) && s.state().pause_spooling())
    }

    /// The resuming connection failed before it attached: the session spools again, what
    /// waited here first.
    pub fn resume_spooling(&self, key: &str) {
        let Some(session) = self.registry().sessions.get(key).cloned() else {
            return;
        };
        if let Some(cluster) = &self.cluster {
            let mut state = session.state();
            for d in state.resume_spooling() {
                spool(cluster, &session.key, &d);
            }
        }
    }

    /// The connection is gone. A session with no expiry ends now [MQTT-4.1.0-2]; others end
    /// when `expiry` passes without a new connection ([`Sessions::expire`], which the caller
    /// schedules when this returns true). A taken-over session is left alone. With many
    /// nodes, the connection's `claim` on its client id is released, with the record of the
    /// end where there is one (one write, not two).
    pub fn detach(
        &self,
        session: &Arc<Session>,
        connection: u64,
        claim: u64,
        expiry: Duration,
        now_ms: i64,
    ) -> bool {
        let mut registry = self.registry();
        if !session.is_attached_to(connection) {
            drop(registry);
            if let Some(cluster) = &self.cluster
                && claim > 0
            {
                cluster.release(session.key.clone(), claim);
            }
            return false;
        }
        session.online.store(false, Ordering::Release);
        *session.link() = None;
        session.wake.forget();
        if !registry.holds(session) {
            // A connection that started clean took the client id over and holds a session
            // of its own, made in this one's place (its subscriptions left the tree then):
            // this one ends with its connection, and everything held for the client id is
            // the new one's. Before 2026-12-06 this removed the new session from the
            // registry, so the new connection received nothing and a third was not a take-over.
            drop(registry);
            if let Some(cluster) = &self.cluster {
                cluster.session_detached(session.key.clone(), claim, false);
            }
            return false;
        }
        // A client that moved to another node without resuming has its session there, not
        // here. One that resumes it there asks for it (`hand_over`) once it holds its
        // subscriptions: until then this copy goes on queueing, so nothing is lost between.
        let ends = expiry.is_zero() || session.moved.load(Ordering::Acquire) == MOVED;
        let kept = !ends;
        if kept {
            let mut state = session.state();
            state.go_offline(session.principal().as_deref());
            if let Some(cluster) = &self.cluster {
                // Its queue moves to Postgres, where any node can take it up.
                start_spooling(cluster, &session.key, &mut state);
            }
        }
        if let Some(cluster) = &self.cluster {
            cluster.session_detached(session.key.clone(), claim, kept);
        }
        if ends {
            registry.remove(&session.key);
            drop(registry);
            self.unsubscribe_all(session);
            return false;
        }
        // MQTT 5 §3.1.2.11.2: 0xFFFFFFFF, the session does not expire.
        let expires = expiry < Duration::from_secs(u64::from(u32::MAX));
        let at = if expires {
            now_ms.saturating_add(i64::try_from(expiry.as_millis()).unwrap_or(NEVER))
        } else {
            NEVER
        };
        session.expires_at_ms.store(at, Ordering::Release);
        self.list_offline(registry, session);
        expires
    }

    /// `session`, just made offline, is listed among the offline sessions if it is still
    /// held and offline. Past its principal's bound, that principal's sessions nearest their
    /// end end; past the node's, any. Never `session` itself: a client is never told its
    /// session was kept only for it to end as it leaves.
    fn list_offline(
        &self,
        mut registry: std::sync::MutexGuard<'_, Registry>,
        session: &Arc<Session>,
    ) {
        if !registry.holds(session) || session.online.load(Ordering::Acquire) {
            return;
        }
        let at = session.expires_at_ms.load(Ordering::Acquire);
        let creator = session.creator();
        registry
            .offline
            .list(&session.key, creator, at, &session.listed);
        let own = session
            .principal()
            .and_then(|p| p.limits.offline_sessions)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let mut theirs = Vec::new();
        if let Some(max) = own {
            while registry.offline.len_of(creator) > max {
                let next =
                    next_to_end(&registry, registry.offline.nearest_end_of(creator), session);
                let Some(key) = next else { break };
                theirs.extend(registry.remove(&key));
            }
        }
        let mut any = Vec::new();
        while self.max_offline != 0 && registry.offline.len() > self.max_offline {
            let Some(key) = next_to_end(&registry, registry.offline.nearest_end(), session) else {
                break;
            };
            any.extend(registry.remove(&key));
        }
        drop(registry);
        for (bound, evicted) in [(SessionBound::principal, theirs), (SessionBound::node, any)] {
            if evicted.is_empty() {
                continue;
            }
            for session in &evicted {
                self.ended_offline(session);
                if let Some(on_evicted) = self.on_evicted.get() {
                    on_evicted(&session.key);
                }
            }
            self.metrics
                .mqtt_sessions_evicted(bound, evicted.len() as u64);
            self.evictions.record(bound, evicted.len());
        }
    }

    /// `client`'s connection here is closed for a new one with its client id, on this node or
    /// another: counted, and logged once a minute when it happens again and again
    /// (`takeovers`).
    fn taken_over_here(&self, client: &ClientKey) {
        self.metrics.mqtt_takeover();
        if let Some(times) = self.takeovers.record(client) {
            tracing::warn!(
                %client,
                times,
                "client id taken over again and again within a minute: more than one client may be connecting with it, each closing the other"
            );
        }
    }

    /// The session's expiry passed: it ends unless a connection took it up since it was
    /// detached from `connection`.
    pub fn expire(&self, session: &Arc<Session>, connection: u64) {
        let mut registry = self.registry();
        if registry.holds(session) && session.is_attached_to(connection) {
            registry.remove(&session.key);
            drop(registry);
            self.ended_offline(session);
        }
    }

    /// An offline session, just removed from the registry, has ended (expired, or to make
    /// room): its subscriptions go, and with `--cluster-url` its row in Postgres.
    fn ended_offline(&self, session: &Session) {
        self.unsubscribe_all(session);
        if let Some(cluster) = &self.cluster {
            cluster.session_expired(session.key.clone());
        }
    }

    /// Whether the session held for `client` is still the one of `serial`, and still the one
    /// `connection` left (so that its deadline would end it).
    pub fn left_by(&self, client: &str, serial: u64, connection: u64) -> bool {
        self.registry()
            .sessions
            .get(client)
            .is_some_and(|s| s.serial == serial && s.is_attached_to(connection))
    }

    /// [`Sessions::expire`] for the session held for `client` now, if it is the one of
    /// `serial`: a deadline of an earlier session never attached (connection 0, as an adopted
    /// one) does not end a later one of the same client id early.
    pub fn expire_key(&self, client: &str, serial: u64, connection: u64) {
        if let Some(session) = self.get(client).filter(|s| s.serial == serial) {
            self.expire(&session, connection);
        }
    }

    /// A connection here resumes `key`'s session, held by another node (decision 014): the
    /// session is made here first, offline, with its stored subscriptions in the tree, so
    /// that what is published while the other node lets go reaches it. Returns it with the
    /// subscriptions' announcements to wait for, or `None` if a session of that id is here.
    pub fn prepare(
        &self,
        key: &ClientKey,
        creator: Option<String>,
        principal: Option<Arc<Principal>>,
        stored: &[StoredSubscription],
    ) -> Option<(Arc<Session>, Vec<tokio::sync::oneshot::Receiver<()>>)> {
        let mut registry = self.registry();
        if registry.sessions.contains_key(key) {
            return None;
        }
        let session = Arc::new(Session::new(key.clone(), creator, self));
        session.set_principal(principal);
        registry.insert(key.clone(), session.clone());
        drop(registry);
        let announced = self.restore_subscriptions(&session, stored);
        Some((session, announced))
    }

    /// The connection that prepared `session` went no further: it leaves, and what it
    /// received goes to Postgres, to the queue of the session it was made for, if
    /// `keep_queue`.
    pub fn discard_prepared(&self, session: &Arc<Session>, keep_queue: bool) {
        let mut registry = self.registry();
        if !registry.holds(session) || !session.is_attached_to(0) {
            return;
        }
        registry.remove(&session.key);
        drop(registry);
        if keep_queue && let Some(cluster) = &self.cluster {
            let mut state = session.state();
            start_spooling(cluster, &session.key, &mut state);
        }
        self.unsubscribe_all(session);
    }

    /// The connection that prepared `session` failed after the node holding it let it go
    /// (decision 014, "A resume that fails after the hand-over"): it stays here, offline, its
    /// queue in memory, until `expires_at_ms`. False if it is no longer that prepared session.
    pub fn keep_prepared(&self, session: &Arc<Session>, expires_at_ms: i64) -> bool {
        let registry = self.registry();
        if !registry.holds(session)
            || !session.is_attached_to(0)
            || session.online.load(Ordering::Acquire)
        {
            return false;
        }
        session
            .expires_at_ms
            .store(expires_at_ms, Ordering::Release);
        session.state().go_offline(session.principal().as_deref());
        self.list_offline(registry, session);
        true
    }

    /// Whether `session`, [kept](Self::keep_prepared), is still here and was not taken up by
    /// a client here (a resume elsewhere claims the client id, which the row's move checks).
    pub fn kept_unrecorded(&self, session: &Arc<Session>) -> bool {
        self.registry().holds(session)
            && session.is_attached_to(0)
            && !session.online.load(Ordering::Acquire)
    }

    /// `session`'s row names this node now: its queue moves to Postgres, as any offline
    /// session's of a node of many, for whichever node its client comes back to.
    pub fn kept_recorded(&self, session: &Arc<Session>) {
        // Held across the spooling, so that a connection attaching meanwhile cannot find it
        // spooling once it is online (`attach` holds the registry throughout).
        let registry = self.registry();
        if !registry.holds(session) || session.online.load(Ordering::Acquire) {
            return;
        }
        if let Some(cluster) = &self.cluster {
            let mut state = session.state();
            start_spooling(cluster, &session.key, &mut state);
        }
        drop(registry);
    }

    /// Makes `session`'s subscriptions those `stored`.
    fn match_subscriptions(&self, session: &Session, stored: &[StoredSubscription]) {
        let wanted: HashSet<FilterSpec> = stored
            .iter()
            .filter_map(from_stored)
            .map(|(spec, _)| spec)
            .collect();
        let stale: Vec<FilterSpec> = {
            let mut state = session.state();
            let stale = state
                .subscriptions
                .keys()
                .filter(|spec| !wanted.contains(*spec))
                .cloned()
                .collect::<Vec<_>>();
            for spec in &stale {
                state.subscriptions.remove(spec);
            }
            stale
        };
        for spec in &stale {
            self.unsubscribe(&session.key, spec);
        }
        let _ = self.restore_subscriptions(session, stored);
    }

    /// A session's stored subscriptions, back in the tree and announced.
    /// Returns the announcements of the filters new to this node, for a caller that waits for
    /// them; a CONNACK does not.
    fn restore_subscriptions(
        &self,
        session: &Session,
        stored: &[StoredSubscription],
    ) -> Vec<tokio::sync::oneshot::Receiver<()>> {
        let mut announced = Vec::new();
        let mut state = session.state();
        for s in stored {
            let Some((spec, options)) = from_stored(s) else {
                continue;
            };
            announced.extend(self.subscribe(&session.key, &spec, options).1);
            state.subscriptions.insert(spec, options);
        }
        announced
    }

    /// A persistent session's subscriptions as its row in Postgres keeps them.
    pub fn stored_subscriptions(session: &Session) -> Vec<StoredSubscription> {
        session
            .state()
            .subscriptions
            .iter()
            .map(|(spec, o)| StoredSubscription {
                filter: match spec.share_group() {
                    Some(group) => format!("$share/{group}/{}", spec.filter().as_str()),
                    None => spec.filter().as_str().to_owned(),
                },
                qos: o.qos as u8,
                no_local: o.no_local,
                retain_as_published: o.retain_as_published,
                id: o.subscription_id.map(std::num::NonZeroU32::get),
            })
            .collect()
    }

    /// The plain filters of `client_id`'s session held here.
    pub fn plain_filters_of(&self, client_id: &str) -> Vec<FilterSpec> {
        let Some(session) = self.registry().sessions.get(client_id).cloned() else {
            return Vec::new();
        };
        let state = session.state();
        state
            .subscriptions
            .keys()
            .filter(|spec| spec.share_group().is_none())
            .cloned()
            .collect()
    }

    /// Another node resumes `client_id`'s session (decision 014): this node's copy ends,
    /// what it queued goes to Postgres, and a connection still attached closes as taken over.
    pub fn hand_over(&self, client_id: &str) -> Option<Bytes> {
        self.let_go(client_id, MOVED_RESUMED, true)
    }

    /// The other nodes took this node for dead (decision 014) and adopted `client_id`'s
    /// session, or removed its claim: this copy ends, and its connection, if any, closes as
    /// taken over, without a Will. What it queued goes to Postgres if `lives_on` (another
    /// node holds the session), as at a hand-over.
    pub fn give_up(&self, client_id: &str, lives_on: bool) {
        // Its row is another node's now: what was open here is lost, as with a node killed.
        let _ = self.let_go(client_id, ADOPTED_ELSEWHERE, lives_on);
    }

    /// Ends this node's copy of `client_id`'s session, which went elsewhere as `moved` says;
    /// what it queued goes to Postgres if `keep_queue`, and the QoS 2 exchanges it left open
    /// are returned, encoded, to go into the session's row.
    fn let_go(&self, client_id: &str, moved: u8, keep_queue: bool) -> Option<Bytes> {
        let mut registry = self.registry();
        let session = registry.remove(client_id)?;
        drop(registry);
        session.moved.store(moved, Ordering::Release);
        // A session an operator ended keeps nothing for anyone.
        let keep_queue = keep_queue && !session.discarded.load(Ordering::Acquire);
        let mut exchanges = None;
        if keep_queue && let Some(cluster) = &self.cluster {
            let mut state = session.state();
            start_spooling(cluster, &session.key, &mut state);
            exchanges = super::exchanges::encode(&state);
        }
        // Its connection, if any, leaves the session alone when it ends.
        session.connection.store(0, Ordering::Release);
        if session.online.swap(false, Ordering::AcqRel) {
            session.kick(DisconnectReasonCode::SessionTakenOver);
        }
        self.unsubscribe_all(&session);
        exchanges
    }

    /// A session of a node that is gone, now held here offline until `expires_at_ms`, its
    /// queue in Postgres: returns it, to be expired then, or `None` if a session of that
    /// client id is here already. `principal` as for [`Self::restore`].
    pub fn adopt(
        &self,
        a: &Adopted,
        expires_at_ms: i64,
        principal: Option<Arc<Principal>>,
    ) -> Option<Arc<Session>> {
        let mut registry = self.registry();
        if registry.sessions.contains_key(&*a.client_id) || a.expiry_secs == 0 {
            return None;
        }
        let session = Arc::new(Session::new(a.client_id.clone(), a.creator.clone(), self));
        session.state().count_as_left_by(principal.as_deref());
        session.set_principal(principal);
        // Never attached: its "connection" is 0, which `expire` and `resumed_since` check.
        let _ = session.state().start_spooling(Stored {
            messages: a.queued,
            bytes: a.queued_bytes,
        });
        session
            .expires_at_ms
            .store(expires_at_ms, Ordering::Release);
        registry.insert(a.client_id.clone(), session.clone());
        drop(registry);
        let _ = self.restore_subscriptions(&session, &a.subscriptions);
        self.list_offline(self.registry(), &session);
        Some(session)
    }

    /// A session saved before this node's last stop (decision 024), held here offline until
    /// `expires_at_ms`: returns it, or `None` if a session of that client id is here already.
    /// `principal` is its creator's entry now, if it still stands: its bounds and its receive
    /// permission apply to the session from the start, not from its client's return.
    pub fn restore(
        &self,
        key: ClientKey,
        creator: Option<String>,
        principal: Option<Arc<Principal>>,
        expires_at_ms: i64,
        subscriptions: &[StoredSubscription],
        fill: impl FnOnce(&mut SessionState),
    ) -> Option<Arc<Session>> {
        let mut registry = self.registry();
        if registry.sessions.contains_key(&key) {
            return None;
        }
        let session = Arc::new(Session::new(key.clone(), creator, self));
        session
            .expires_at_ms
            .store(expires_at_ms, Ordering::Release);
        // Never attached: its "connection" is 0, which `expire` checks.
        let mut state = session.state();
        state.count_as_left_by(principal.as_deref());
        fill(&mut state);
        drop(state);
        session.set_principal(principal);
        registry.insert(key, session.clone());
        drop(registry);
        let _ = self.restore_subscriptions(&session, subscriptions);
        self.list_offline(self.registry(), &session);
        Some(session)
    }

    /// The sessions a stop saves (decision 024): those held offline, outliving their
    /// connection.
    pub fn offline(&self) -> Vec<Arc<Session>> {
        self.registry()
            .sessions
            .values()
            .filter(|s| !s.online.load(Ordering::Acquire))
            .cloned()
            .collect()
    }

    fn unsubscribe_all(&self, session: &Session) {
        let specs: Vec<_> = session
            .state()
            .subscriptions
            .drain()
            .map(|(s, _)| s)
            .collect();
        let mut tree = self.subscriptions_write();
        for spec in specs {
            if tree.remove(&session.key, &spec).is_some()
                && let Some(cluster) = &self.cluster
            {
                cluster.interest_removed(&spec, &session.key);
            }
        }
    }

    /// Another node claimed `notice.client_id` (decision 014): the connection here, if its
    /// claim is older, closes as taken over (MQTT 5: 0x8E). The client's session lives where
    /// it connected: without a resume, this copy ends now (or with its connection); with
    /// one, it goes on queueing until the other node asks for it, and is returned, for
    /// [`Self::not_handed_over`] to end if that never happens.
    pub fn taken_over(&self, notice: &TakeOver) -> Option<Arc<Session>> {
        let mut registry = self.registry();
        let session = registry.sessions.get(&*notice.client_id).cloned()?;
        if session.claim.load(Ordering::Acquire) >= notice.generation {
            return None;
        }
        let moved = if notice.resumed { MOVED_RESUMED } else { MOVED };
        session.moved.store(moved, Ordering::Release);
        if session.online.load(Ordering::Acquire) {
            self.taken_over_here(&session.key);
            session.kick(DisconnectReasonCode::SessionTakenOver);
        } else if !notice.resumed {
            registry.remove(&session.key);
            drop(registry);
            self.unsubscribe_all(&session);
            return None;
        }
        notice.resumed.then_some(session)
    }

    /// Whether `session`, taken over by a connection on another node that resumes it, is
    /// still here waiting for that node to ask for it.
    pub fn awaits_hand_over(&self, session: &Arc<Session>) -> bool {
        self.registry().awaits_hand_over(session)
    }

    /// `session` [awaited](Self::awaits_hand_over) a hand-over that did not come: the
    /// connection on the other node went no further (the session is still this node's in
    /// Postgres: `kept`, and it stays), or took the session as stored (this copy ends; what
    /// it queued is in Postgres).
    pub fn not_handed_over(&self, session: &Arc<Session>, kept: bool) {
        let mut registry = self.registry();
        if !registry.awaits_hand_over(session) {
            return;
        }
        if kept {
            session.moved.store(0, Ordering::Release);
            return;
        }
        registry.remove(&session.key);
        drop(registry);
        tracing::info!(client = %session.key, "a session resumed on another node was not asked for; ending this copy");
        self.unsubscribe_all(session);
    }

    /// Sessions held, connected or not.
    /// Every session held here, online or not.
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.registry().sessions.values().cloned().collect()
    }

    /// An operator disconnects `client_id`'s connection here, if any (see `Session::oust`):
    /// the connection's stop signal, to give once the session is gone from Postgres (with
    /// `--cluster-url` and `discard`), if one was connected. Until then the connection goes
    /// on: were it told first, its client could reconnect through another node and resume
    /// from the row the session an operator ended (before 2026-12-06 the row's deletion was
    /// spawned and the DISCONNECT sent at once).
    pub fn oust(&self, client_id: &str, discard: bool, no_will: bool) -> Option<CancellationToken> {
        let registry = self.registry();
        registry
            .sessions
            .get(client_id)
            .and_then(|s| s.oust(discard, no_will))
    }

    /// The session of `client_id`, if held here.
    pub fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        self.registry().sessions.get(client_id).cloned()
    }

    pub fn queue_memory_held(&self) -> usize {
        self.memory.held()
    }

    /// What each principal's share holds, for the principals with a share that an offline
    /// session counts in.
    pub fn queue_memory_shares(&self) -> Vec<(String, usize)> {
        self.memory.shares_held()
    }

    pub fn held(&self) -> usize {
        self.registry().sessions.len()
    }

    /// Sessions held offline, waiting for their clients.
    pub fn offline_held(&self) -> usize {
        self.registry().offline.len()
    }

    /// Subscriptions held by this node's sessions.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions_read().len()
    }

    /// The client ids of connected sessions and their claims' generations.
    pub fn held_claims(&self) -> Vec<(ClientKey, u64)> {
        self.registry()
            .sessions
            .values()
            .filter(|s| s.online.load(Ordering::Acquire))
            .map(|s| (s.key.clone(), s.claim.load(Ordering::Acquire)))
            .filter(|(_, claim)| *claim > 0)
            .collect()
    }

    /// Whether `client`'s session is here and no connection took it up since it was adopted.
    pub fn still_adopted(&self, client: &ClientKey) -> bool {
        self.registry()
            .sessions
            .get(client)
            .is_some_and(|s| s.is_attached_to(0))
    }

    /// Whether a session that ended its connection at `connection` was resumed since.
    pub fn resumed_since(&self, key: &ClientKey, connection: u64) -> bool {
        self.registry()
            .sessions
            .get(key)
            .is_some_and(|s| !s.is_attached_to(connection))
    }

    /// Sends a message to every matching subscription, and to one member of each matching
    /// shared group when `shared` (otherwise NATS picks members, service-wide, and hands
    /// them over with [`Self::route_to_member`]). A client with several matching
    /// subscriptions gets one copy at the highest granted QoS carrying every subscription
    /// identifier [MQTT-3.3.4-2, -3]. Never waits: a connected client whose queue has no room
    /// for a QoS ≥ 1 message is not keeping up and is disconnected (MQTT 5: 0x97), so one
    /// slow subscriber never holds its publishers back.
    pub fn route(&self, message: Arc<Message>, now_ms: i64, shared: bool) {
        if message.expired(now_ms) {
            return;
        }
        // The buffers stay with the thread: every publish routed allocates none.
        let (mut matched, mut targets) = ROUTE_BUFFERS.take();
        let tree = self.subscriptions_read();
        if shared {
            tree.matches(&message.topic, &mut matched);
        } else {
            tree.matches_plain(&message.topic, &mut matched);
        }
        drop(tree);
        if !matched.is_empty() {
            matched.sort_by(|a, b| a.0.cmp(&b.0));
            let registry = self.registry();
            targets.extend(matched.chunk_by(|a, b| a.0 == b.0).filter_map(|subs| {
                let delivery = merge(&message, subs)?;
                let session = registry.sessions.get(&subs[0].0)?.clone();
                if !session.may_receive(&message.topic) {
                    return None;
                }
                Some((session, delivery))
            }));
            drop(registry);
            matched.clear();
            for (session, delivery) in targets.drain(..) {
                session.offer(delivery);
            }
        }
        // A burst to very many sessions does not keep its room for the thread's life.
        if matched.capacity() <= ROUTE_BUFFER_KEPT && targets.capacity() <= ROUTE_BUFFER_KEPT {
            ROUTE_BUFFERS.set((matched, targets));
        }
    }

    /// Sends a message to `member`, the member of shared subscription `spec` that NATS
    /// picked for it (decision 014). A member that left since gets nothing: the message is
    /// at most once between nodes, like the rest of the hop.
    pub fn route_to_member(
        &self,
        message: Arc<Message>,
        now_ms: i64,
        spec: &FilterSpec,
        member: &str,
    ) {
        if message.expired(now_ms) {
            return;
        }
        let Some(session) = self.registry().sessions.get(member).cloned() else {
            return;
        };
        // From the tree, not the session's state: its connection may hold that lock on the
        // background threads (`deferred`).
        let Some(options) = self.subscriptions_read().get(&session.key, spec).copied() else {
            return;
        };
        if !session.may_receive(&message.topic) {
            return;
        }
        let delivery = Delivery {
            qos: message.qos.min(options.qos),
            retain: options.retain_as_published && message.retain,
            subscription_ids: options.subscription_id.into_iter().collect(),
            message,
        };
        session.offer(delivery);
    }
}

type RouteBuffers = (Vec<(ClientKey, SubOptions)>, Vec<(Arc<Session>, Delivery)>);

/// Largest room (in entries) a thread keeps in its routing buffers between publishes: a few
/// kilobytes per runtime thread at most.
const ROUTE_BUFFER_KEPT: usize = 256;

thread_local! {
    static ROUTE_BUFFERS: std::cell::Cell<RouteBuffers> = const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

/// Appends a message for an offline session to its queue in Postgres.
/// `key`'s offline session queues in Postgres from now on, starting with what it queued here.
fn start_spooling(cluster: &Cluster, key: &ClientKey, state: &mut SessionState) {
    for d in state.start_spooling(Stored::default()) {
        spool(cluster, key, &d);
    }
}

fn spool(cluster: &Cluster, key: &ClientKey, d: &Delivery) {
    let m = &d.message;
    let ids = d.subscription_ids.iter().map(|i| i.get()).collect();
    let stamp = m.stamp.get().copied();
    if !cluster.spool(key, &m.outgoing(), stamp, d.qos, d.retain, ids) {
        tracing::debug!(client = %key, "a message for an offline session was dropped: the spool is full");
    }
}

/// One client's matching subscriptions → the single copy it receives, or none when every one
/// of them is No Local and the client published the message itself [MQTT-3.8.3-3].
fn merge(message: &Arc<Message>, subs: &[(ClientKey, SubOptions)]) -> Option<Delivery> {
    let own = message.origin.as_ref() == Some(&subs[0].0);
    let mut wanted = subs
        .iter()
        .map(|(_, o)| o)
        .filter(|o| !(own && o.no_local))
        .peekable();
    wanted.peek()?;
    let mut granted = crate::store::Qos::AtMostOnce;
    let mut retain = false;
    let mut subscription_ids = ThinVec::new();
    for options in wanted {
        granted = granted.max(options.qos);
        retain |= options.retain_as_published && message.retain;
        subscription_ids.extend(options.subscription_id);
    }
    Some(Delivery {
        message: message.clone(),
        qos: message.qos.min(granted),
        retain,
        subscription_ids,
    })
}

/// A stored subscription as the tree and the session keep it; `None` if it no longer parses.
fn from_stored(s: &StoredSubscription) -> Option<(FilterSpec, SubOptions)> {
    let spec = FilterSpec::parse(&s.filter).ok()?;
    let options = SubOptions {
        qos: crate::store::Qos::from_u8(s.qos)?,
        no_local: s.no_local,
        retain_as_published: s.retain_as_published,
        subscription_id: s.id.and_then(std::num::NonZeroU32::new),
    };
    Some((spec, options))
}

/// A message taken back from a session's queue in Postgres.
fn queued_delivery(q: Queued) -> Delivery {
    Delivery {
        message: Arc::new(Message::routed(q.message)),
        qos: q.qos,
        retain: q.retain,
        subscription_ids: q
            .subscription_ids
            .into_iter()
            .filter_map(std::num::NonZeroU32::new)
            .collect(),
    }
}

#[cfg(test)]
mod tests;
