//! One client connection: CONNECT and CONNACK, then a loop that reads packets, settles
//! publishes once the store has them, and writes what the session has queued, until the
//! client leaves, breaks the protocol or is taken over; then its Will.
//!
//! Packet handling is in `inbound`, the write side in `outbound`; this file owns the lifecycle
//! and the loop.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::admission::{TransportIdentity, authenticate, may_publish, owner, refuse};
use super::inbound::Settled;
use super::limits::{self, ConnectionSlot};
use super::registry::Session;
use super::retained::{Page, RetainedScan};
use super::stall::{Counted, Gauge, Watch};
use super::will::{Will, will};
use super::{Broker, BrokerConfig, ClientKey, Remote};
use crate::auth::Principal;
use crate::mqtt::{
    self, ConnectAck, ConnectAckReason, Disconnect, DisconnectReasonCode, Framed, Packet, Version,
};
use crate::rate::TokenBucket;
use crate::store::{Owner, WriteBatch};
use crate::topic::TopicName;

/// Inbound publishes waiting for the store before they are acknowledged and routed. Past
/// this the connection stops reading: a client cannot queue unbounded work.
const MAX_PENDING: usize = 1024;
/// Packets handled back to back before the answers are flushed.
const READ_BURST: usize = 64;
/// Flush once this much is buffered, so a long drain does not build a large buffer.
pub(super) const FLUSH_BYTES: usize = 64 * 1024;
pub(super) const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);
/// The next retained page is read while fewer messages than this wait in the queue: about
/// two pages, so the client is never kept waiting for the database, and memory stays bounded.
pub(super) const FETCH_BELOW: usize = 4000;

/// Why a connection ends.
pub(super) enum End {
    /// The client sent DISCONNECT; with reason 0x04 it still wants its Will published.
    ClientDisconnect { keep_will: bool },
    /// The socket closed or failed.
    Lost,
    /// The client took nothing of the output waiting for it for `--mqtt-write-timeout`.
    Stalled,
    /// We close it, telling an MQTT 5 client why.
    Close(DisconnectReasonCode),
}

pub(super) struct Connection<T> {
    pub broker: Broker,
    pub cfg: BrokerConfig,
    pub framed: Framed<T>,
    pub v5: bool,
    pub client: ClientKey,
    /// Who the client authenticated as; `None` when authentication is off (all allowed).
    pub principal: Option<Arc<Principal>>,
    /// Whom this client's retained publishes are charged to.
    pub owner: Owner,
    pub session: Arc<Session>,
    connection: u64,
    /// Cancelled when the connection must close (taken over, kicked, shutdown).
    pub stop: CancellationToken,
    keep_alive: Option<Duration>,
    last_heard: Instant,
    pub will: Option<Will>,
    pub session_expiry: u32,
    /// Whether the client accepts reason strings beyond CONNACK, PUBLISH and DISCONNECT
    /// (MQTT 5 Request Problem Information).
    pub problem_info: bool,
    /// How many QoS 1/2 messages may be in flight to the client.
    pub window: usize,
    /// MQTT 5 topic aliases the client set up [MQTT-3.3.2-10].
    pub aliases: HashMap<u16, TopicName>,
    pub pending: FuturesOrdered<BoxFuture<'static, Settled>>,
    /// Retained writes of the packets being read, queued together at the end of the burst.
    pub writes: Option<WriteBatch>,
    /// QoS 1/2 publishes received and not fully acknowledged, for Receive Maximum.
    pub unacked_in: usize,
    pub scans: VecDeque<RetainedScan>,
    /// The retained page being read, at most one at a time.
    pub fetching: Option<BoxFuture<'static, Result<Page, crate::store::Error>>>,
    /// Packets written since the last flush.
    pub dirty: bool,
    /// This connection's place under `--mqtt-max-connections`, freed when it is dropped.
    _slot: ConnectionSlot,
    /// Its PUBLISH rate, `--mqtt-max-publish-rate`.
    pub publish_rate: TokenBucket,
    /// Whether the client still takes what waits for it (`--mqtt-write-timeout`).
    pub watch: Watch,
}

pub(super) async fn serve<T>(broker: Broker, io: T, remote: Remote)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = broker.config().clone();
    let io = Counted::new(io);
    let gauge = match remote.uptake {
        Some(uptake) => Gauge::Tcp(uptake),
        None => Gauge::Transport(io.accepted()),
    };
    let peer = remote.name;
    let handshake = mqtt::handshake(io, cfg.max_packet_bytes);
    let (framed, connect) = match tokio::time::timeout(cfg.connect_timeout, handshake).await {
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection closed before CONNECT");
            return;
        }
        Ok(Ok(accepted)) => accepted,
    };
    let watch = Watch::new(cfg.write_timeout, gauge);
    let arrival = Arrival {
        identity: remote.identity,
        source: remote.addr.map(|a| a.ip()),
        watch,
    };
    let accepted = Connection::accept(broker, cfg, framed, connect, arrival).await;
    let Some(mut conn) = accepted else {
        return;
    };
    // Every line this connection logs carries its client id and peer.
    let span = tracing::info_span!("mqtt", client = %conn.client, %peer);
    async move {
        tracing::debug!("connected");
        let end = conn.run().await;
        conn.finish(end).await;
    }
    .instrument(span)
    .await;
}

/// What a connection brings to its CONNECT besides the packet.
struct Arrival {
    /// Who the transport proved the peer to be, if anyone.
    identity: Option<TransportIdentity>,
    /// Its address, for the password-check budget.
    source: Option<std::net::IpAddr>,
    watch: Watch,
}

impl<T> Connection<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn accept(
        broker: Broker,
        cfg: BrokerConfig,
        mut framed: Framed<T>,
        connect: mqtt::Connect,
        arrival: Arrival,
    ) -> Option<Self> {
        let Arrival {
            identity,
            source,
            watch,
        } = arrival;
        let v5 = framed.version() == Version::V5;
        let mut assigned = None;
        let client: ClientKey = if connect.client_id.is_empty() {
            // [MQTT-3.1.3-8] a client without an id cannot ask to resume a session (the codec
            // already refuses most such CONNECTs; this covers the rest).
            if !connect.clean_start {
                refuse(&mut framed, ConnectAckReason::ClientIdentifierNotValid).await;
                return None;
            }
            let id = format!("retaind-{}", uuid::Uuid::new_v4().simple());
            assigned = Some(id.clone());
            id.into()
        } else {
            Arc::from(&*connect.client_id)
        };
        // [issue 5] a global cap on connections, checked before the costly password hash.
        // [MQTT-3.2.2-6] refused with CONNACK 0x89 Server busy (3.1.1: 0x03), then closed.
        let Some(slot) = broker.inner.live.try_acquire(cfg.max_connections) else {
            tracing::debug!(%client, "too many connections");
            refuse(&mut framed, ConnectAckReason::ServerBusy).await;
            return None;
        };
        let principal = match authenticate(&broker, &connect, &client, identity, source).await {
            Ok(principal) => principal,
            Err(reason) => {
                refuse(&mut framed, reason).await;
                return None;
            }
        };
        let will = match connect.last_will.as_ref() {
            None => None,
            Some(w) => {
                match will(w, &client, &cfg, broker.store().clock().now_ms()) {
                    // [issue 5] a Will the client could not publish itself is refused up front.
                    Ok(will) if !may_publish(principal.as_deref(), &will.message, &client) => {
                        refuse(&mut framed, ConnectAckReason::NotAuthorized).await;
                        return None;
                    }
                    Ok(will) => Some(Will {
                        owner: owner(principal.as_deref()),
                        ..will
                    }),
                    Err(reason) => {
                        refuse(&mut framed, reason).await;
                        return None;
                    }
                }
            }
        };
        let cfg_publish_rate = cfg.max_publish_rate;
        let attached = broker.attach(client.clone(), connect.clean_start, principal.clone());
        let client_window = if v5 {
            connect.receive_max.map_or(u16::MAX, NonZeroU16::get)
        } else {
            u16::MAX
        };
        if let Some(max) = connect.max_packet_size {
            framed.set_max_outbound_size(max.get());
        }
        let keep_alive = limits::keep_alive(connect.keep_alive, cfg.max_keep_alive);
        let mut conn = Self {
            broker,
            window: usize::from(client_window.min(cfg.max_inflight.max(1))),
            keep_alive: (keep_alive > 0)
                .then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
            last_heard: Instant::now(),
            cfg,
            framed,
            v5,
            client,
            owner: owner(principal.as_deref()),
            principal,
            session: attached.session,
            connection: attached.connection,
            stop: attached.stop,
            will,
            session_expiry: connect.session_expiry_interval_secs,
            problem_info: connect.request_problem_info,
            aliases: HashMap::new(),
            pending: FuturesOrdered::new(),
            writes: None,
            unacked_in: 0,
            scans: VecDeque::new(),
            fetching: None,
            dirty: false,
            _slot: slot,
            publish_rate: TokenBucket::new(cfg_publish_rate, std::time::Instant::now()),
            watch,
        };
        let connack = ConnectAck {
            session_present: attached.session_present,
            reason_code: ConnectAckReason::Success,
            receive_max: NonZeroU16::new(conn.cfg.receive_maximum).unwrap_or(NonZeroU16::MAX),
            max_packet_size: Some(conn.cfg.max_packet_bytes),
            assigned_client_id: assigned.map(Into::into),
            topic_alias_max: conn.cfg.topic_alias_maximum,
            // [MQTT-3.2.2-21] the client must use this instead of what it asked for.
            server_keepalive_sec: (keep_alive != connect.keep_alive).then_some(keep_alive),
            ..ConnectAck::default()
        };
        let greeted = conn
            .write(Packet::ConnectAck(Box::new(connack)))
            .await
            .is_ok()
            && conn.resend().await.is_ok()
            && conn.flush().await.is_ok();
        if !greeted {
            conn.broker
                .detach(&conn.session, conn.connection, Duration::ZERO);
            return None;
        }
        Some(conn)
    }

    async fn run(&mut self) -> End {
        loop {
            if let Err(end) = self.pump().await {
                return end;
            }
            let deadline = self.keep_alive.map(|k| self.last_heard + k);
            let keep_alive = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let readable = self.pending.len() < MAX_PENDING;
            let fetched = async {
                match self.fetching.as_mut() {
                    Some(page) => page.await,
                    None => std::future::pending().await,
                }
            };
            let next_sample = self.watch.next_sample();
            let sample = async {
                match next_sample {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let step = tokio::select! {
                biased;
                () = self.stop.cancelled() => Err(End::Close(self.session.stop_reason())),
                Some(settled) = self.pending.next(), if !self.pending.is_empty() => {
                    self.settle_burst(settled).await
                }
                packet = self.framed.recv(), if readable => match packet {
                    Ok(packet) => {
                        self.last_heard = Instant::now();
                        self.handle_burst(packet).await
                    }
                    Err(e) => Err(read_error(e)),
                },
                page = fetched => {
                    self.fetching = None;
                    self.fetched(page)
                }
                () = self.session.wake.notified() => Ok(()),
                () = sample => self.sample(),
                // Nothing heard for 1.5 × keep alive: MQTT 5 [MQTT-3.1.2-22], 3.1.1 [MQTT-3.1.2-24].
                () = keep_alive => Err(End::Close(DisconnectReasonCode::KeepAliveTimeout)),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Handles a packet and whatever else has already arrived, so that the answers to a burst
    /// of publishes leave in one write.
    async fn handle_burst(&mut self, first: Packet) -> Result<(), End> {
        let read = self.read_burst(first).await;
        // Also when the burst ended in an error: publishes already read still reach the store.
        if let Some(writes) = self.writes.take() {
            writes.submit().await;
        }
        read
    }

    async fn read_burst(&mut self, first: Packet) -> Result<(), End> {
        self.handle(first).await?;
        for _ in 0..READ_BURST {
            if self.pending.len() >= MAX_PENDING {
                break;
            }
            match self.framed.recv().now_or_never() {
                Some(Ok(packet)) => self.handle(packet).await?,
                Some(Err(e)) => return Err(read_error(e)),
                None => break,
            }
        }
        Ok(())
    }

    /// Settles a publish and every other one whose store write is done too, so that a
    /// committed batch is acknowledged in one write.
    async fn settle_burst(&mut self, first: Settled) -> Result<(), End> {
        self.settle(first).await?;
        while let Some(Some(settled)) = self.pending.next().now_or_never() {
            self.settle(settled).await?;
        }
        Ok(())
    }

    async fn finish(mut self, end: End) {
        let shutting_down = self.broker.shutdown_signal().is_cancelled();
        let publish_will =
            !matches!(end, End::ClientDisconnect { keep_will: false }) && !shutting_down;
        let mut reset = false;
        match &end {
            End::Close(reason) => {
                tracing::debug!(?reason, "closing the connection");
                if self.v5 {
                    let goodbye = Packet::Disconnect(Disconnect {
                        reason_code: *reason,
                        ..Disconnect::default()
                    });
                    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, self.framed.send(goodbye)).await;
                }
            }
            End::ClientDisconnect { .. } => tracing::debug!("client disconnected"),
            End::Lost => tracing::debug!("connection lost"),
            End::Stalled => {
                tracing::warn!(
                    timeout = ?self.cfg.write_timeout,
                    "the client took nothing of what waited for it; disconnecting it"
                );
                if self.framed.pending_write_bytes() == 0 && self.watch.all_taken() {
                    // It read everything and acknowledged nothing (its Receive Maximum holds
                    // the rest back): it can still read why.
                    if self.v5 {
                        let goodbye = Packet::Disconnect(Disconnect {
                            reason_code: DisconnectReasonCode::QuotaExceeded,
                            ..Disconnect::default()
                        });
                        let _ =
                            tokio::time::timeout(GOODBYE_TIMEOUT, self.framed.send(goodbye)).await;
                    }
                } else {
                    // A DISCONNECT or a FIN would wait behind data it does not read; a reset
                    // reaches it at once and frees the socket's buffers.
                    reset = self.watch.reset_on_close();
                }
            }
        }
        // Publishes already read still reach the store and the subscribers.
        while let Some(settled) = self.pending.next().await {
            if settled.result.is_ok()
                && let Some(message) = settled.message
            {
                self.broker.route(message);
            }
        }
        let expiry = Duration::from_secs(u64::from(self.session_expiry));
        self.broker.detach(&self.session, self.connection, expiry);
        if publish_will && let Some(will) = self.will.take() {
            self.broker
                .publish_will(will, self.client.clone(), self.connection, expiry);
        }
        if !reset {
            self.framed.close(GOODBYE_TIMEOUT).await;
        }
    }
}

fn read_error(e: mqtt::Error) -> End {
    use crate::mqtt::DecodeError;
    match e {
        mqtt::Error::Closed | mqtt::Error::Io(_) => End::Lost,
        mqtt::Error::Decode(DecodeError::MaxSizeExceeded { .. }) => {
            End::Close(DisconnectReasonCode::PacketTooLarge)
        }
        mqtt::Error::Decode(DecodeError::Io(_)) => End::Lost,
        mqtt::Error::Invalid(violation) => End::Close(violation.reason()),
        _ => End::Close(DisconnectReasonCode::MalformedPacket),
    }
}
