//! How much of what retaind wrote to a connection the client has taken, so the broker can tell
//! a client that stopped reading from one that reads slowly.
//!
//! "Taken" is what the client's TCP acknowledged: on Linux, the bytes the socket accepted from
//! us less those still in its send queue (`TIOCOUTQ`: unsent or unacknowledged). Once the
//! client stops reading, its receive buffer fills, its TCP stops acknowledging, and this stops
//! growing, however large our own send buffer has grown (Linux lets it grow to megabytes).
//! Elsewhere it is the bytes our socket accepted, so a stop shows only once our send buffer is
//! full too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A cheap `Clone` handle on one connection's counts; [`super::PromptAcks::uptake`] hands it
/// out.
#[derive(Debug, Clone, Default)]
pub struct Uptake(Arc<State>);

#[derive(Debug, Default)]
struct State {
    /// Bytes the socket accepted from us since it was accepted.
    written: AtomicU64,
    /// The socket while it is open. Queries hold the lock, and the stream's owner takes the
    /// descriptor out under it before closing, so a query never reaches a closed (or reused)
    /// descriptor.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket: std::sync::Mutex<Option<std::os::fd::RawFd>>,
    /// End the connection with a reset rather than a graceful close.
    reset: AtomicBool,
}

/// Where a connection's output stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Bytes the client has taken (see the module comment for what that means where).
    pub bytes: u64,
    /// Bytes written to the socket and not taken yet; 0 where that is not known.
    pub outstanding: u64,
}

impl Uptake {
    /// The counts as they are now.
    pub fn taken(&self) -> Taken {
        // The send queue first: a write landing between the two reads then counts as taken
        // for a moment, where the other order would show a count going backwards.
        let outstanding = self.outstanding().unwrap_or(0);
        let written = self.0.written.load(Ordering::Acquire);
        Taken {
            bytes: written.saturating_sub(outstanding),
            outstanding: outstanding.min(written),
        }
    }

    /// Makes the connection end with a TCP reset when its stream is dropped: for a client that
    /// stopped reading, whose send queue would otherwise keep the socket (and megabytes of
    /// kernel memory) alive after we close, and which would never see a FIN queued behind
    /// data it does not read.
    pub fn reset_on_close(&self) {
        self.0.reset.store(true, Ordering::Release);
    }

    pub(super) fn wrote(&self, n: usize) {
        self.0.written.fetch_add(n as u64, Ordering::AcqRel);
    }

    pub(super) fn resets_on_close(&self) -> bool {
        self.0.reset.load(Ordering::Acquire)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(super) fn open(&self, socket: std::os::fd::RawFd) {
        *self.socket() = Some(socket);
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(super) fn closing(&self) {
        *self.socket() = None;
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn socket(&self) -> std::sync::MutexGuard<'_, Option<std::os::fd::RawFd>> {
        // Holds a plain value; a panic cannot leave it torn.
        self.0
            .socket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bytes in the socket's send queue, unsent or unacknowledged (`TIOCOUTQ`, alias
    /// `SIOCOUTQ`, see tcp(7)).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn outstanding(&self) -> Option<u64> {
        let socket = self.socket();
        let fd = (*socket)?;
        let mut queued: libc::c_int = 0;
        // SAFETY: `fd` is open while `socket` is locked (see `State::socket`), and TIOCOUTQ
        // writes one int through the pointer, which points at `queued`.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &raw mut queued) };
        if rc != 0 {
            return None;
        }
        u64::try_from(queued).ok()
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn outstanding(&self) -> Option<u64> {
        None
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket, TcpStream};

    use super::super::PromptAcks;

    /// A client with a 16 KiB receive buffer, and the server's side of its connection.
    async fn pair() -> (TcpStream, PromptAcks) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        let client = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, PromptAcks::new(server))
    }

    /// Polls until `done` holds, for up to 5 s: ACKs arrive on their own time.
    async fn eventually(mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..500 {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn what_the_client_acknowledged_counts_as_taken() {
        let (_client, mut server) = pair().await;
        let uptake = server.uptake();
        server.write_all(&[7; 1000]).await.unwrap();
        assert!(eventually(|| uptake.taken().bytes == 1000).await);
        assert_eq!(uptake.taken().outstanding, 0);
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_stops_taking_though_our_socket_still_accepts() {
        let (mut client, server) = pair().await;
        let uptake = server.uptake();
        let (_, mut writer) = tokio::io::split(server);
        let writing = tokio::spawn(async move {
            let chunk = [1u8; 64 * 1024];
            while writer.write_all(&chunk).await.is_ok() {}
        });
        // Our socket takes far more than the client's receive buffer (16 KiB asked, which
        // Linux doubles) can hold, but the client takes no more than that buffer.
        let accepted = eventually(|| uptake.taken().outstanding > 1 << 20).await;
        let taken = uptake.taken();
        assert!(accepted, "our send buffer grows: {taken:?}");
        assert!(taken.bytes < 256 * 1024, "{taken:?}");
        // Reading again is taking again.
        let mut buf = vec![0u8; 1 << 20];
        client.read_exact(&mut buf).await.unwrap();
        assert!(eventually(|| uptake.taken().bytes >= 1 << 20).await);
        writing.abort();
    }
}
