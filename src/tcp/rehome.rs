//! Moving a connection's socket to the runtime that now runs it.
//!
//! A tokio socket stays registered with the I/O driver of the runtime it was made on, whichever
//! runtime polls it. A connection that moves to the background threads (decision 020) would
//! have each of its socket's readiness events taken by a thread of normal priority and handed
//! across to the background runtime: measured, about 5,000 wake-ups a second of the normal
//! threads during a delivery of a million messages, each taking locks the background threads
//! take too. Re-registered with the background runtime's driver, its events wake only those.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::PromptAcks;

/// A transport that can register its socket with the current runtime's I/O driver.
pub trait Rehome {
    /// Re-registers with the runtime this is called on. On an error nothing changed: the
    /// socket still works through the driver it was on. A transport that cannot reach its
    /// socket asks it to move ([`AskToMove`]), or stays where it is.
    fn rehome(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(unix)]
impl Rehome for PromptAcks {
    fn rehome(&mut self) -> io::Result<()> {
        use std::os::fd::AsFd;

        // A second descriptor of the same socket, registered here; dropping the first
        // deregisters it from the old driver and closes it, and the socket stays open. Its
        // options (no delay, quick acks) and non-blocking mode belong to the socket and stay.
        let second = std::net::TcpStream::from(self.stream.as_fd().try_clone_to_owned()?);
        let moved = TcpStream::from_std(second)?;
        // Under the uptake's lock, before the old descriptor closes (see `Uptake`).
        #[cfg(any(target_os = "linux", target_os = "android"))]
        self.uptake.open(std::os::fd::AsRawFd::as_raw_fd(&moved));
        self.stream = moved;
        Ok(())
    }
}

#[cfg(not(unix))]
impl Rehome for PromptAcks {}

/// TLS keeps its session state in the stream and only reads and writes through the socket, so
/// the socket underneath can move alone.
impl<IO: Rehome> Rehome for tokio_rustls::server::TlsStream<IO> {
    fn rehome(&mut self) -> io::Result<()> {
        self.get_mut().0.rehome()
    }
}

/// A request, from outside the stream that holds a socket, that the socket move to the runtime
/// that next polls it. MQTT over WebSocket needs it: the HTTP server's upgrade hides the socket
/// behind a type-erased stream, which only the socket's own polls reach. A cheap `Clone` handle
/// ([`PromptAcks::move_request`] hands it out); the [`PromptAcks`] it came from checks it at
/// every poll, and a poll is the first thing the new runtime does with the socket.
#[derive(Debug, Clone, Default)]
pub struct MoveRequest(Arc<AtomicBool>);

impl MoveRequest {
    pub fn ask(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether a move was asked for since the last call.
    pub(super) fn take(&self) -> bool {
        self.0.load(Ordering::Relaxed) && self.0.swap(false, Ordering::Acquire)
    }
}

/// A stream over a socket it cannot reach, which moves the socket by asking ([`MoveRequest`]);
/// without a request to send (no socket known), it stays where it is.
pub struct AskToMove<T> {
    io: T,
    request: Option<MoveRequest>,
}

impl<T> AskToMove<T> {
    pub fn new(io: T, request: Option<MoveRequest>) -> Self {
        Self { io, request }
    }
}

impl<T> Rehome for AskToMove<T> {
    fn rehome(&mut self) -> io::Result<()> {
        if let Some(request) = &self.request {
            request.ask();
        }
        Ok(())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AskToMove<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AskToMove<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    /// Accepts a connection on one runtime, lets `moving` act on the server's end (on a second
    /// runtime, or `None` for outside any), drops the first runtime, and has the two ends
    /// exchange a message each way on the second, through `server` as `wrap` makes it.
    fn exchange_once_the_first_runtime_is_gone<S>(
        moving: impl FnOnce(&mut PromptAcks) -> io::Result<()>,
        on_second: bool,
        wrap: impl FnOnce(PromptAcks) -> S,
    ) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let first = runtime();
        let (mut server, client) = first.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap());
            let (client, accepted) = tokio::join!(client, listener.accept());
            (PromptAcks::new(accepted.unwrap().0), client.unwrap())
        });
        let second = runtime();
        if on_second {
            second.block_on(async { moving(&mut server) })?;
        } else {
            moving(&mut server)?;
        }
        let mut server = wrap(server);
        // Left on the first runtime's driver, the socket now fails every poll.
        let mut client = {
            let std = first.block_on(async { client.into_std() }).unwrap();
            drop(first);
            second.block_on(async { TcpStream::from_std(std) }).unwrap()
        };
        second.block_on(async {
            client.write_all(b"ping").await?;
            let mut got = [0u8; 4];
            server.read_exact(&mut got).await?;
            assert_eq!(&got, b"ping");
            server.write_all(b"pong").await?;
            client.read_exact(&mut got).await?;
            assert_eq!(&got, b"pong");
            Ok(())
        })
    }

    #[test]
    fn a_socket_moved_to_another_runtime_works_once_the_first_is_gone() {
        exchange_once_the_first_runtime_is_gone(|s| s.rehome(), true, |s| s).unwrap();
    }

    /// The premise of the tests here: a socket that does not move fails with its runtime.
    #[test]
    fn a_socket_left_on_its_runtime_fails_once_that_is_gone() {
        let left = exchange_once_the_first_runtime_is_gone(|_| Ok(()), true, |s| s);
        assert!(left.is_err(), "{left:?}");
    }

    /// A stream that cannot reach the socket asks, from anywhere; the socket moves at its
    /// first poll, on the runtime that polls it.
    #[test]
    fn a_socket_asked_to_move_moves_at_its_next_poll() {
        exchange_once_the_first_runtime_is_gone(
            |s| AskToMove::new(tokio::io::empty(), Some(s.move_request())).rehome(),
            false,
            |s| s,
        )
        .unwrap();
    }

    #[test]
    fn a_stream_with_nothing_to_ask_leaves_the_socket() {
        let left = exchange_once_the_first_runtime_is_gone(
            |_| AskToMove::new(tokio::io::empty(), None).rehome(),
            false,
            |s| s,
        );
        assert!(left.is_err(), "{left:?}");
    }

    /// Reads and writes pass through [`AskToMove`] to the stream it holds.
    #[test]
    fn a_stream_that_asks_passes_reads_and_writes_through() {
        exchange_once_the_first_runtime_is_gone(|s| s.rehome(), true, |s| AskToMove::new(s, None))
            .unwrap();
    }
}
