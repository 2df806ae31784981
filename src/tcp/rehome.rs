//! Moving a connection's socket to the runtime that now runs it.
//!
//! A tokio socket stays registered with the I/O driver of the runtime it was made on, whichever
//! runtime polls it. A connection that moves to the background threads (decision 020) would
//! have each of its socket's readiness events taken by a thread of normal priority and handed
//! across to the background runtime: measured, about 5,000 wake-ups a second of the normal
//! threads during a delivery of a million messages, each taking locks the background threads
//! take too. Re-registered with the background runtime's driver, its events wake only those.

use std::io;

use tokio::net::TcpStream;

use super::PromptAcks;

/// A transport that can register its socket with the current runtime's I/O driver.
pub trait Rehome {
    /// Re-registers with the runtime this is called on. On an error nothing changed: the
    /// socket still works through the driver it was on. A transport that cannot reach its
    /// socket (WebSocket, behind the HTTP server's upgrade) stays where it is.
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

impl<R, W> Rehome for tokio::io::Join<R, W> {}

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

    #[test]
    fn a_socket_moved_to_another_runtime_works_once_the_first_is_gone() {
        let first = runtime();
        let (server, mut client) = first.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap());
            let (client, accepted) = tokio::join!(client, listener.accept());
            (PromptAcks::new(accepted.unwrap().0), client.unwrap())
        });
        let second = runtime();
        let mut server = server;
        second.block_on(async { server.rehome() }).unwrap();
        // Left on the first runtime's driver, the socket would now fail every poll.
        client = {
            let std = first.block_on(async { client.into_std() }).unwrap();
            drop(first);
            second.block_on(async { TcpStream::from_std(std) }).unwrap()
        };
        second.block_on(async {
            client.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
            server.write_all(b"pong").await.unwrap();
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"pong");
        });
    }
}
