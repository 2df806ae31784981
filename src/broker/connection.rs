//! One client connection's I/O: the CONNECT handshake, then a loop that reads packets and
//! has the client's state (`client`) apply them, writes what that produced and what the
//! session has queued, until the client leaves, breaks the protocol or is taken over; then
//! the close.
//!
//! What a packet does is decided in `client`; this file owns the socket, the timers and the
//! stall watch (`stall`), under which every write runs instead of a timeout of its own. It
//! also moves the loop onto the background threads (`background`) while the connection
//! delivers a large retained set, and back after.

use std::num::NonZeroU16;
use std::pin::Pin;

use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Handle;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::accept::{Accepted, accept};
use super::background;
use super::census::Census;
use super::client::{Client, Outbox, Waits};
use super::end::End;
use super::handle::Broker;
use super::limits::GOODBYE_TIMEOUT;
use super::message::Delivery;
use super::outbound::Resent;
use super::remote::Remote;
use super::settling::Settled;
use super::stall::{Counted, Gauge, Stalled, Watch};
use crate::metrics::{ForRoom, Metrics};
use crate::mqtt::{self, Disconnect, DisconnectReasonCode, Framed, Packet};
use crate::tcp::Rehome;

/// Inbound publishes waiting for the store before they are acknowledged and routed, and
/// their payload bytes. Past either the connection stops reading: a client cannot queue
/// unbounded work, nor, while the store stalls, a thousand of the largest messages.
const MAX_PENDING: usize = 1024;
const MAX_PENDING_BYTES: usize = 4 << 20;
/// Packets handled back to back before the answers are flushed.
const READ_BURST: usize = 64;
/// Flush once this much is buffered, so a long drain does not build a large buffer.
const FLUSH_BYTES: usize = 64 * 1024;
/// A connection that has done nothing for this long gives back its empty buffers: long
/// enough that a busy one keeps them between bursts, short enough that a fleet's idle devices
/// hold none between their keep-alive pings.
const LEAN_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

impl Broker {
    /// Serves one client over an established byte stream until it goes away; `remote` is what
    /// the transport knows of it (its address, who it proved to be, its TCP socket's uptake).
    pub async fn serve_connection<T>(&self, io: T, remote: Remote)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Rehome + Unpin + Send + 'static,
    {
        self.track(io, remote).await;
    }

    /// A connection's future, counted by shutdown from this call on: a listener calls it
    /// before it spawns the task, so a connection accepted just before shutdown is waited for
    /// like the others (told why it closes once connected; closed at once before its CONNECT).
    pub(super) fn track<T>(
        &self,
        io: T,
        remote: Remote,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Rehome + Unpin + Send + 'static,
    {
        // Every line the connection logs carries its peer and, once its CONNECT is read, its
        // client id (recorded by `accept`).
        // Behind a balancer that sends a PROXY protocol header, the peer is recorded once the
        // header has named it, and `via` is the balancer.
        let span = match remote.proxy_header {
            None => tracing::info_span!(
                "mqtt",
                peer = %remote.name,
                client = tracing::field::Empty
            ),
            Some(_) => tracing::info_span!(
                "mqtt",
                via = %remote.name,
                peer = tracing::field::Empty,
                client = tracing::field::Empty
            ),
        };
        self.inner
            .connections
            .track_future(serve(Box::pin(open(self.clone(), io, remote))).instrument(span))
    }
}

/// A connection's task. What runs once (the PROXY protocol header, the CONNECT, `accept`, the
/// close) is boxed, so that the task of an idle connection, most of a fleet, holds the state
/// of its loop and no more: 3.6 KiB over TCP, where the whole ran to 33 KiB inline (an async
/// function's state is as large as its largest step, for as long as it runs). `open` comes
/// boxed and started by the caller: an argument stays in the state for the task's whole
/// life, and the transport given to `open` would (a TLS stream is 1.2 KiB).
async fn serve<T, F>(open: Pin<Box<F>>)
where
    T: AsyncRead + AsyncWrite + Rehome + Unpin + Send + 'static,
    F: Future<Output = Option<(Connection<Counted<T>>, tracing::Span)>>,
{
    let Some((conn, span)) = open.await else {
        return;
    };
    let finish = match conn.run_placed().instrument(span.clone()).await {
        Some((conn, end)) => Box::pin(conn.finish(end)),
        None => return,
    };
    finish.instrument(span).await;
}

/// Reads the CONNECT, admits the client and greets it: the connection, ready for its loop,
/// and the span its lines are logged in. `None` once the connection is over.
async fn open<T>(
    broker: Broker,
    io: T,
    remote: Remote,
) -> Option<(Connection<Counted<T>>, tracing::Span)>
where
    T: AsyncRead + AsyncWrite + Rehome + Unpin + Send + 'static,
{
    let cfg = broker.config().clone();
    let broker_metrics = broker.metrics().clone();
    let io = Counted::new(io);
    let gauge = match remote.uptake {
        Some(uptake) => Gauge::Tcp(uptake),
        None => Gauge::Transport(io.accepted()),
    };
    let mut peer = remote.name;
    let Some(slot) = broker
        .awaiting()
        .enter(remote.addr.map(|a| a.ip()), || false)
    else {
        tracing::debug!(%peer, "closed: every slot for connections awaiting CONNECT is taken");
        broker_metrics.mqtt_closed_before_connect(ForRoom::no_room);
        return None;
    };
    // The PROXY protocol header, if any, and the CONNECT share one deadline.
    let deadline = Instant::now() + cfg.connect_timeout;
    let mut io = io;
    let mut source = remote.addr.map(|a| a.ip());
    if let (Some(proxy), Some(balancer)) = (&remote.proxy_header, remote.addr) {
        let said = tokio::select! {
            said = proxy.client(&mut io, balancer, deadline) => said,
            () = slot.given_up.cancelled() => {
                tracing::debug!(%peer, "closed before its PROXY protocol header to make room for another address");
                broker_metrics.mqtt_closed_before_connect(ForRoom::made_room);
                return None;
            }
            () = broker.stopping_signal().cancelled() => return None,
        };
        // A refusal is counted and logged by `client`.
        let Ok(client) = said else {
            return None;
        };
        slot.moved_to(client.ip());
        source = Some(client.ip());
        peer = client.to_string();
        tracing::Span::current().record("peer", tracing::field::display(&peer));
    }
    let handshake = mqtt::handshake(io, cfg.max_packet_bytes);
    let read = tokio::select! {
        read = tokio::time::timeout_at(deadline, handshake) => read,
        () = slot.given_up.cancelled() => {
            tracing::debug!(%peer, "closed before CONNECT to make room for another address");
            broker_metrics.mqtt_closed_before_connect(ForRoom::made_room);
            return None;
        }
        // Shutting down: no new session now, so no need to wait for its CONNECT.
        () = broker.stopping_signal().cancelled() => return None,
    };
    drop(slot);
    let (mut framed, connect) = match read {
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time");
            return None;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection closed before CONNECT");
            return None;
        }
        Ok(Ok(accepted)) => accepted,
    };
    let census = broker.background().clone();
    // Boxed too: a connection that has not sent its CONNECT holds the handshake's state only
    // (admission, a cluster's take-over, the CONNACK: 30 KiB inline), as thousands may wait.
    let accepted = Box::pin(accept(
        broker,
        &mut framed,
        connect,
        remote.identity,
        source,
    ))
    .await;
    let Accepted {
        client,
        connack,
        silence,
    } = accepted?;
    let mut conn = Connection {
        framed,
        watch: Watch::new(cfg.write_timeout, gauge),
        write_timeout: cfg.write_timeout,
        client,
        silence,
        last_heard: Instant::now(),
        dirty: false,
        out: Outbox::default(),
        metrics: broker_metrics,
        background: cfg
            .retained_in_background
            .then(background::runtime)
            .flatten(),
        census,
        in_background: false,
    };
    let greeted = conn
        .write(Packet::ConnectAck(Box::new(connack)))
        .await
        .is_ok()
        && conn.resend().await.is_ok()
        && conn.flush().await.is_ok();
    if !greeted {
        conn.client.abandon();
        return None;
    }
    // Every line this connection logs carries its client id and peer.
    let span = tracing::info_span!("mqtt", client = %conn.client.key(), %peer);
    span.in_scope(|| tracing::debug!("connected"));
    Some((conn, span))
}

struct Connection<T> {
    framed: Framed<T>,
    /// Whether the client still takes what waits for it (`--mqtt-write-timeout`).
    watch: Watch,
    write_timeout: std::time::Duration,
    client: Client,
    /// How long the client may stay silent (keep alive); `None`: for ever.
    silence: Option<std::time::Duration>,
    last_heard: Instant,
    /// Packets written since the last flush.
    dirty: bool,
    metrics: Metrics,
    /// What the client's state produced, waiting to be written.
    out: Outbox,
    /// The background threads, unless `--mqtt-retained-delivery-priority normal`.
    background: Option<Handle>,
    census: Census,
    /// Whether the loop runs on the background threads now.
    in_background: bool,
}

/// How a run of the connection's loop ended.
enum Ran {
    Ended(End),
    /// The loop left off to run on the other threads (`run_placed`).
    Moving,
}

impl<T> Connection<T>
where
    T: AsyncRead + AsyncWrite + Rehome + Unpin + Send + 'static,
{
    /// Runs the loop until the connection ends: on the background threads while it delivers
    /// a large retained set, on the caller's otherwise. `None` only if the background task was
    /// cancelled under it, which nothing but dropping this future does.
    ///
    /// Not an `async fn`: one would keep its argument twice in its state, as the argument and
    /// as the local it is moved to (1.2 KiB more in every connection's task).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would hold its argument twice (see above)"
    )]
    fn run_placed(mut self) -> impl Future<Output = Option<(Self, End)>> + Send {
        async move {
            loop {
                let ran = match self.background.clone().filter(|_| self.wants_background()) {
                    Some(background) => {
                        let _counted = self.census.enter();
                        self.in_background = true;
                        let run = async move {
                            self.rehome();
                            let ran = self.run().await;
                            (self, ran)
                        };
                        let task = background.spawn(run.instrument(tracing::Span::current()));
                        match AbortOnDropHandle::new(task).await {
                            Ok((conn, ran)) => {
                                self = conn;
                                ran
                            }
                            Err(e) => match e.try_into_panic() {
                                Ok(panic) => std::panic::resume_unwind(panic),
                                Err(e) => {
                                    tracing::warn!(error = %e, "the connection's task was cancelled");
                                    return None;
                                }
                            },
                        }
                    }
                    None => {
                        if std::mem::take(&mut self.in_background) {
                            self.rehome();
                        }
                        self.run().await
                    }
                };
                if let Ran::Ended(end) = ran {
                    // Its goodbye (`finish`) runs here.
                    if std::mem::take(&mut self.in_background) {
                        self.rehome();
                    }
                    return Some((self, end));
                }
            }
        }
    }

    /// Registers the socket with the runtime the loop runs on now (see [`Rehome`]).
    fn rehome(&mut self) {
        if let Err(e) = self.framed.transport_mut().rehome() {
            // It still works from here, through the other runtime's driver.
            tracing::debug!(error = %e, "the connection's socket stays with the runtime it was on");
        }
    }

    fn wants_background(&mut self) -> bool {
        self.background.is_some() && self.client.outbound().delivering_in_bulk()
    }

    async fn run(&mut self) -> Ran {
        loop {
            if self.wants_background() != self.in_background {
                return Ran::Moving;
            }
            if let Err(end) = self.pump().await {
                return Ran::Ended(end);
            }
            // One timer for two deadlines: the keep alive's, and the moment a connection
            // quiet since now gives back the buffers it holds (`Framed::lean`).
            let keep_alive_at = self.silence.map(|s| self.last_heard + s);
            let lean_at = self
                .framed
                .holds_buffers()
                .then(|| Instant::now() + LEAN_AFTER);
            let timer_at = keep_alive_at.into_iter().chain(lean_at).min();
            let timer = async {
                match timer_at {
                    Some(at) => tokio::time::sleep_until(at).await,
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
            let readable = self.may_read();
            let Waits {
                stop,
                settling,
                retained,
                wake,
            } = self.client.waits();
            let step = tokio::select! {
                biased;
                () = stop.cancelled() => Err(End::Close(self.client.stop_reason())),
                settled = settling.next() => self.settle_burst(settled).await,
                packet = self.framed.recv(), if readable => match packet {
                    Ok(packet) => {
                        self.last_heard = Instant::now();
                        self.read_burst(packet).await
                    }
                    Err(e) => Err(End::from_read_error(e)),
                },
                page = retained.page() => self.client.outbound().fetched(page),
                () = wake.notified() => Ok(()),
                () = sample => self.sample(),
                () = timer => match keep_alive_at {
                    // Nothing heard for 1.5 × keep alive: MQTT 5 [MQTT-3.1.2-22], 3.1.1
                    // [MQTT-3.1.2-24].
                    Some(at) if at <= Instant::now() => {
                        Err(End::Close(DisconnectReasonCode::KeepAliveTimeout))
                    }
                    _ => {
                        self.framed.lean();
                        Ok(())
                    }
                },
            };
            if let Err(end) = step {
                return Ran::Ended(end);
            }
        }
    }

    /// Applies a packet and whatever else has already arrived, so that the answers to a burst
    /// of publishes leave in one write.
    async fn read_burst(&mut self, first: Packet) -> Result<(), End> {
        let read = self.apply_burst(first).await;
        // Also when the burst ended in an error: publishes already read still reach the store.
        self.client.submit_writes().await;
        read
    }

    /// Whether another packet may be read: the publishes waiting for the store are within
    /// both bounds.
    fn may_read(&self) -> bool {
        self.client.waiting() < MAX_PENDING && self.client.waiting_bytes() < MAX_PENDING_BYTES
    }

    async fn apply_burst(&mut self, first: Packet) -> Result<(), End> {
        self.apply(first).await?;
        for _ in 0..READ_BURST {
            if !self.may_read() {
                break;
            }
            match self.framed.recv().now_or_never() {
                Some(Ok(packet)) => self.apply(packet).await?,
                Some(Err(e)) => return Err(End::from_read_error(e)),
                None => break,
            }
        }
        Ok(())
    }

    async fn apply(&mut self, packet: Packet) -> Result<(), End> {
        let applied = self.client.apply(packet, &mut self.out).await;
        self.write_out().await?;
        applied
    }

    /// Settles a publish and every other one whose store write is done too, so that a
    /// committed batch is acknowledged in one write.
    async fn settle_burst(&mut self, first: Settled) -> Result<(), End> {
        let mut next = Some(first);
        while let Some(settled) = next {
            let settled = self.client.settle(settled, &mut self.out);
            self.write_out().await?;
            settled?;
            next = self.client.settled_now();
        }
        Ok(())
    }

    /// Writes what the client's state produced.
    async fn write_out(&mut self) -> Result<(), End> {
        if std::mem::take(&mut self.out.took) {
            self.watch.acknowledged();
        }
        // The buffer goes back afterwards, so a packet's answers allocate nothing.
        let mut packets = std::mem::take(&mut self.out.packets);
        for packet in packets.drain(..) {
            self.write(packet).await?;
        }
        self.out.packets = packets;
        Ok(())
    }

    /// A resumed session's unacknowledged messages go out again first.
    async fn resend(&mut self) -> Result<(), End> {
        for (id, resent) in self.client.outbound().resend() {
            let sent = match resent {
                Resent::Release(p) => self.write(p).await?,
                Resent::Publish(d) => self.write_publish(&d, Some(id), true).await?,
            };
            if !sent {
                self.client.outbound().forget(id);
            }
        }
        Ok(())
    }

    /// Writes what the session has queued, as far as the flow-control window allows, topping
    /// the queue up from pending retained deliveries; then flushes.
    async fn pump(&mut self) -> Result<(), End> {
        // Also here, not only on its timer: a client that keeps sending keeps the loop busy.
        if self.watch.due() {
            self.sample()?;
        }
        while let Some(next) = self.client.outbound().next_publish() {
            let sent = self
                .write_publish(&next.delivery, next.packet_id, false)
                .await?;
            if !sent && let Some(id) = next.packet_id {
                self.client.outbound().forget(id);
            }
            if self.framed.pending_write_bytes() >= FLUSH_BYTES {
                self.flush().await?;
            }
        }
        self.client.outbound().fetch_retained();
        if self.dirty {
            self.flush().await?;
        }
        // Messages left in the queue (its Receive Maximum holds them back) wait for the
        // client as much as unsent bytes do.
        if self.client.outbound().queued() > 0 {
            self.watch.waiting();
        }
        Ok(())
    }

    /// Samples the stall clock (see `stall`).
    fn sample(&mut self) -> Result<(), End> {
        let buffered = self.framed.pending_write_bytes() > 0 || self.client.outbound().queued() > 0;
        self.watch.sample(buffered).map_err(|_| End::Stalled)
    }

    /// Queues a packet. False when the client's Maximum Packet Size rules it out, which
    /// MQTT 5 says to treat as delivered [MQTT-3.1.2-25].
    async fn write(&mut self, packet: Packet) -> Result<bool, End> {
        let stop = self.client.stop_signal();
        let fed = self.watch.drive(self.framed.feed(packet), stop).await;
        let fed = self.driven(fed)?;
        self.queued(fed)
    }

    /// What a write [`Watch::drive`] ran came to: the end of the connection if the
    /// client was found stalled or the connection was told to stop meanwhile.
    fn driven<D>(&self, result: Result<Option<D>, Stalled>) -> Result<D, End> {
        match result {
            Ok(Some(done)) => Ok(done),
            Ok(None) => Err(End::Close(self.client.stop_reason())),
            Err(Stalled) => Err(End::Stalled),
        }
    }

    /// Queues the PUBLISH of `delivery`. False when it expired while it waited or the
    /// client's Maximum Packet Size rules it out: either way it is not sent.
    async fn write_publish(
        &mut self,
        delivery: &Delivery,
        packet_id: Option<NonZeroU16>,
        dup: bool,
    ) -> Result<bool, End> {
        let Some(publish) = self.client.outbound().publish(delivery, packet_id, dup) else {
            return Ok(false);
        };
        let qos = u8::from(publish.qos);
        let stop = self.client.stop_signal();
        let fed = self
            .watch
            .drive(self.framed.feed_publish(publish), stop)
            .await;
        let fed = self.driven(fed)?;
        let sent = self.queued(fed)?;
        if sent {
            self.metrics.mqtt_sent(qos);
        }
        Ok(sent)
    }

    fn queued(&mut self, fed: Result<(), mqtt::Error>) -> Result<bool, End> {
        match fed {
            Ok(()) => {
                self.dirty = true;
                Ok(true)
            }
            Err(mqtt::Error::Encode(e)) => {
                tracing::debug!(error = %e, "a packet was not sent");
                Ok(false)
            }
            Err(_) => Err(End::Lost),
        }
    }

    async fn flush(&mut self) -> Result<(), End> {
        let stop = self.client.stop_signal();
        let flushed = self.watch.drive(self.framed.flush(), stop).await;
        match self.driven(flushed)? {
            Ok(()) => {
                self.dirty = false;
                // What was written now waits in the socket until the client takes it.
                self.watch.waiting();
                Ok(())
            }
            Err(_) => Err(End::Lost),
        }
    }

    async fn finish(mut self, end: End) {
        // Closed by a shutdown, or asked to leave by a drain: the server went away, not the
        // client. A connection that ends by itself while a drain goes on keeps its Will.
        let server_left = self.client.shutting_down()
            || matches!(
                end,
                End::Close(
                    DisconnectReasonCode::ServerShuttingDown
                        | DisconnectReasonCode::UseAnotherServer
                )
            );
        let publish_will = end.publishes_will() && !server_left;
        let mut reset = false;
        match &end {
            End::Close(reason) => {
                tracing::debug!(?reason, "closing the connection");
                self.goodbye(*reason).await;
            }
            End::ClientDisconnect { .. } => tracing::debug!("client disconnected"),
            End::Lost => tracing::debug!("connection lost"),
            End::Stalled => {
                tracing::warn!(
                    timeout = ?self.write_timeout,
                    "the client took nothing of what waited for it; disconnecting it"
                );
                if self.framed.pending_write_bytes() == 0 && self.watch.all_taken() {
                    // It read everything and acknowledged nothing (its Receive Maximum holds
                    // the rest back): it can still read why.
                    self.goodbye(DisconnectReasonCode::QuotaExceeded).await;
                } else {
                    // A DISCONNECT or a FIN would wait behind data it does not read; a reset
                    // reaches it at once and frees the socket's buffers.
                    reset = self.watch.reset_on_close();
                }
            }
        }
        self.client.leave(publish_will).await;
        if !reset {
            self.framed.close(GOODBYE_TIMEOUT).await;
        }
    }

    /// Tells an MQTT 5 client why it is disconnected; 3.1.1 has no way to.
    async fn goodbye(&mut self, reason: DisconnectReasonCode) {
        if !self.client.v5() {
            return;
        }
        // An operator's disconnect says so in words too: a client log shows more than a
        // code (and paho-mqtt 2.1 reads the code only from a DISCONNECT with properties).
        let reason_string = (reason == DisconnectReasonCode::AdministrativeAction)
            .then(|| "disconnected by an operator (DeleteConnection)".into());
        // Only a drain says Use another server; where to, if the operator said.
        let server_reference = (reason == DisconnectReasonCode::UseAnotherServer)
            .then(|| self.client.server_reference().map(Into::into))
            .flatten();
        let goodbye = Packet::Disconnect(Disconnect {
            reason_code: reason,
            reason_string,
            server_reference,
            ..Disconnect::default()
        });
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, self.framed.send(goodbye)).await;
    }
}
