//! Accepted TCP connections: Nagle's algorithm off, and each read acknowledged at once.
//!
//! Why acknowledge at once: retaind answers a QoS 1 retained publish only after its write batch
//! commits, up to a millisecond or two later. Meanwhile Linux delays the TCP ACK for the
//! publish, hoping to send it along with the PUBACK. A client that keeps Nagle's algorithm on
//! (rumqttc's default, and libmosquitto's: `mosquitto_pub` without `--nodelay`) sends no
//! further small packet while its last one is unacknowledged, so a pipelining client stalls
//! for the whole commit: its next publishes reach us only together with our PUBACKs, and each
//! batch waits for the one before it instead of filling up while it commits. Measured with
//! `examples/mqtt_bench.rs` (rumqttc, 100 in flight): batches alternated between about 75 and
//! 25 writes with nothing queued in between, and the store rate rose from 39–46k/s to
//! 49–56k/s once reads were acknowledged (decision 003).
//!
//! `TCP_QUICKACK` asks Linux for an immediate ACK, but Linux drops back to delayed ACKs on
//! its own whenever the connection looks interactive, so it is set again after every read that
//! brought data: one cheap system call per read, and a read usually carries a burst of packets.
//! On other systems only Nagle's algorithm is turned off.
//!
//! Each connection also counts what it writes, for [`Uptake`]: how much of it the client has
//! taken.

pub mod proxy;
mod rehome;
pub mod slots;
mod uptake;

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub use rehome::{AskToMove, MoveRequest, Rehome};
pub use uptake::{Taken, Uptake};

/// An accepted TCP connection, with the socket options above.
#[derive(Debug)]
pub struct PromptAcks {
    stream: TcpStream,
    /// `None`: always acknowledge at once. Otherwise only once switched on.
    switch: Option<AckSwitch>,
    /// Whether Nagle's algorithm has been turned off yet.
    nodelay: bool,
    uptake: Uptake,
    /// A move asked for by a stream above that cannot reach this one (see [`MoveRequest`]).
    move_request: MoveRequest,
}

/// Turns prompt ACKs, and Nagle's algorithm off, on for a connection accepted with
/// [`PromptAcks::switched_off`]. The plain HTTP listener accepts that way. Only a connection
/// upgraded to MQTT over WebSocket needs them; the others keep the system's defaults. Measured
/// with `wrk`, 64 connections of gets: Nagle off for every HTTP connection cost 6% of the
/// throughput.
#[derive(Debug, Clone, Default)]
pub struct AckSwitch(Arc<AtomicBool>);

impl AckSwitch {
    pub fn turn_on(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl PromptAcks {
    /// Takes over an accepted connection and turns Nagle's algorithm off: MQTT packets and API
    /// responses are small, and latency matters more than coalescing them.
    pub fn new(stream: TcpStream) -> Self {
        let _ = stream.set_nodelay(true);
        Self::with(stream, None, true)
    }

    /// Like [`PromptAcks::new`], but Nagle's algorithm stays on and reads are acknowledged as
    /// the system does until [`PromptAcks::switch`] is turned on (then from the next read on).
    pub fn switched_off(stream: TcpStream) -> Self {
        Self::with(stream, Some(AckSwitch::default()), false)
    }

    fn with(stream: TcpStream, switch: Option<AckSwitch>, nodelay: bool) -> Self {
        let uptake = Uptake::default();
        #[cfg(any(target_os = "linux", target_os = "android"))]
        uptake.open(std::os::fd::AsRawFd::as_raw_fd(&stream));
        Self {
            stream,
            switch,
            nodelay,
            uptake,
            move_request: MoveRequest::default(),
        }
    }

    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }

    /// How much of what was written here the client has taken.
    pub fn uptake(&self) -> Uptake {
        self.uptake.clone()
    }

    /// Asks this connection's socket to move to the runtime that next polls it.
    pub fn move_request(&self) -> MoveRequest {
        self.move_request.clone()
    }

    /// Moves the socket, if asked to, to the runtime polling it now.
    fn move_if_asked(&mut self) {
        if self.move_request.take()
            && let Err(e) = self.rehome()
        {
            // It still works from here, through the other runtime's driver.
            tracing::debug!(error = %e, "the connection's socket stays with the runtime it was on");
        }
    }

    pub fn switch(&self) -> Option<&AckSwitch> {
        self.switch.as_ref()
    }

    fn acknowledge_now(&mut self) {
        if self.switch.as_ref().is_some_and(|s| !s.is_on()) {
            return;
        }
        if !self.nodelay {
            self.nodelay = true;
            let _ = self.stream.set_nodelay(true);
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let _ = self.stream.set_quickack(true);
    }
}

impl AsyncRead for PromptAcks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.move_if_asked();
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.acknowledge_now();
        }
        read
    }
}

impl Drop for PromptAcks {
    fn drop(&mut self) {
        // Before the stream closes its descriptor (fields drop after this).
        #[cfg(any(target_os = "linux", target_os = "android"))]
        self.uptake.closing();
        if self.uptake.resets_on_close() {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncWrite for PromptAcks {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.move_if_asked();
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.uptake.wrote(n);
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.move_if_asked();
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            self.uptake.wrote(n);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.move_if_asked();
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.move_if_asked();
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// Answers requests at once, which is what puts Linux into delayed-ACK ("interactive")
    /// mode (after one exchange on current kernels, three on some older ones); then reads the
    /// next request the way `read` does.
    async fn answer_then_read<S: AsyncRead + AsyncWrite + Unpin>(
        client: &mut TcpStream,
        server: &mut S,
    ) {
        let mut buf = [0u8; 4];
        for _ in 0..4 {
            client.write_all(b"ping").await.unwrap();
            server.read_exact(&mut buf).await.unwrap();
            server.write_all(b"pong").await.unwrap();
            client.read_exact(&mut buf).await.unwrap();
        }
        client.write_all(b"next").await.unwrap();
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"next");
    }

    #[tokio::test]
    async fn a_read_leaves_the_connection_acknowledging_at_once() {
        let (mut client, server) = pair().await;
        let mut server = PromptAcks::new(server);
        answer_then_read(&mut client, &mut server).await;
        assert!(server.get_ref().quickack().unwrap());
        assert!(server.get_ref().nodelay().unwrap());
    }

    /// The premise of the test above: without `PromptAcks`, the same exchange leaves Linux
    /// delaying ACKs, so the assertion there is not true of any socket.
    #[tokio::test]
    async fn a_plain_socket_answering_at_once_delays_its_acks() {
        let (mut client, mut server) = pair().await;
        answer_then_read(&mut client, &mut server).await;
        assert!(!server.quickack().unwrap());
    }

    #[tokio::test]
    async fn a_switched_off_connection_acknowledges_at_once_only_once_switched_on() {
        let (mut client, server) = pair().await;
        let mut server = PromptAcks::switched_off(server);
        let switch = server.switch().unwrap().clone();
        answer_then_read(&mut client, &mut server).await;
        assert!(!server.get_ref().quickack().unwrap());
        assert!(!server.get_ref().nodelay().unwrap());
        switch.turn_on();
        answer_then_read(&mut client, &mut server).await;
        assert!(server.get_ref().quickack().unwrap());
        assert!(server.get_ref().nodelay().unwrap());
    }

    #[tokio::test]
    async fn data_passes_through_both_ways() {
        let (mut client, server) = pair().await;
        let mut server = PromptAcks::new(server);
        client.write_all(b"publish").await.unwrap();
        let mut got = [0u8; 7];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"publish");
        server.write_all(b"puback").await.unwrap();
        server.flush().await.unwrap();
        let mut back = [0u8; 6];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"puback");
    }
}
