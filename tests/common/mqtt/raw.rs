//! A bare TCP connection to the broker with hand-built packets, for what rumqttc will not send
//! (malformed bytes, protocol violations) or not decode (a server DISCONNECT `E0 00`), and for
//! byte-exact answers such as a v3 CONNACK `20 02 00 01`.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::within;
use crate::common::TestApp;

/// Hand-built MQTT packets.
#[path = "build.rs"]
pub mod build;

/// One packet as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPacket {
    pub first: u8,
    pub body: Vec<u8>,
}

/// A PUBLISH decoded by hand; properties are left raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPublish {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    pub props: Vec<u8>,
    pub payload: Vec<u8>,
}

impl RawPacket {
    /// The packet type, the high nibble of the first byte (3 = PUBLISH, 14 = DISCONNECT, ...).
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }

    /// The reason code of an MQTT 5 DISCONNECT; an empty body means 0x00.
    pub fn disconnect_reason(&self) -> u8 {
        assert_eq!(self.kind(), 14, "expected DISCONNECT, got {self:?}");
        self.body.first().copied().unwrap_or(0)
    }

    /// The reason code of an MQTT 5 PUBACK/PUBREC/PUBCOMP; absent means 0x00.
    pub fn ack_reason(&self) -> u8 {
        self.body.get(2).copied().unwrap_or(0)
    }

    pub fn publish(&self, v5: bool) -> RawPublish {
        assert_eq!(self.kind(), 3, "expected PUBLISH, got {self:?}");
        let b = &self.body;
        let tlen = u16::from_be_bytes([b[0], b[1]]) as usize;
        let topic = String::from_utf8(b[2..2 + tlen].to_vec()).expect("UTF-8 topic");
        let qos = (self.first >> 1) & 3;
        let mut at = 2 + tlen;
        let mut pkid = 0;
        if qos > 0 {
            pkid = u16::from_be_bytes([b[at], b[at + 1]]);
            at += 2;
        }
        let mut props = Vec::new();
        if v5 {
            let (len, used) = read_var_int(&b[at..]);
            props = b[at + used..at + used + len].to_vec();
            at += used + len;
        }
        RawPublish {
            topic,
            qos,
            retain: self.first & 1 == 1,
            dup: self.first & 8 == 8,
            pkid,
            props,
            payload: b[at..].to_vec(),
        }
    }
}

fn read_var_int(b: &[u8]) -> (usize, usize) {
    let mut n = 0usize;
    for (i, byte) in b.iter().enumerate().take(4) {
        n |= ((byte & 0x7F) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return (n, i + 1);
        }
    }
    panic!("malformed variable byte integer from the server: {b:?}")
}

/// The next packet from any byte stream (TCP, TLS), or `None` once it is closed.
pub async fn read_packet<S: AsyncRead + Unpin>(stream: &mut S) -> Option<RawPacket> {
    within("a packet from the server", async {
        let mut first = [0u8; 1];
        if stream.read_exact(&mut first).await.is_err() {
            return None;
        }
        let mut len = 0usize;
        for i in 0..4 {
            let mut b = [0u8; 1];
            stream.read_exact(&mut b).await.ok()?;
            len |= ((b[0] & 0x7F) as usize) << (7 * i);
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await.ok()?;
        Some(RawPacket {
            first: first[0],
            body,
        })
    })
    .await
}

/// The next packet from any byte stream, which must not be closed first.
pub async fn next_packet<S: AsyncRead + Unpin>(stream: &mut S) -> RawPacket {
    read_packet(stream)
        .await
        .expect("a packet, not a closed connection")
}

/// A bare TCP connection to the broker.
pub struct Raw {
    stream: TcpStream,
}

impl Raw {
    pub async fn open(app: &TestApp) -> Self {
        Self::open_addr(app.mqtt_addr).await
    }

    /// A connection to an MQTT listener by its address (a retaind process of the test's).
    pub async fn open_addr(addr: std::net::SocketAddr) -> Self {
        let stream = within("a TCP connection", TcpStream::connect(addr))
            .await
            .expect("connecting to the MQTT listener");
        Self { stream }
    }

    /// Opens a connection from another loopback address (any of 127.0.0.0/8), for what the
    /// broker counts by source address.
    pub async fn open_from(server: std::net::SocketAddr, local: std::net::IpAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind(std::net::SocketAddr::new(local, 0))
            .expect("binding a loopback address");
        let stream = within("a TCP connection", socket.connect(server))
            .await
            .expect("connecting to the MQTT listener");
        Self { stream }
    }

    /// Opens a connection, sends `connect` and returns the CONNACK.
    pub async fn connect(app: &TestApp, connect: &[u8]) -> (Self, RawPacket) {
        Self::connect_addr(app.mqtt_addr, connect).await
    }

    /// [`Raw::connect`] to an MQTT listener by its address (a retaind process of the test's).
    pub async fn connect_addr(addr: std::net::SocketAddr, connect: &[u8]) -> (Self, RawPacket) {
        let mut raw = Self::open_addr(addr).await;
        raw.send(connect).await;
        let ack = raw
            .recv()
            .await
            .expect("a CONNACK, not a closed connection");
        assert_eq!(ack.kind(), 2, "expected CONNACK, got {ack:?}");
        (raw, ack)
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// For a test that writes in pieces of its own, to see how much the server takes.
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Writes `bytes`; a write refused because the server already closed is not an error here,
    /// since what the server answered is read with [`Raw::recv`].
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next packet, or `None` once the server has closed the connection.
    pub async fn recv(&mut self) -> Option<RawPacket> {
        read_packet(&mut self.stream).await
    }

    /// The next packet, which must be of type `kind`.
    pub async fn expect(&mut self, kind: u8) -> RawPacket {
        let p = self
            .recv()
            .await
            .unwrap_or_else(|| panic!("expected packet type {kind}, the connection was closed"));
        assert_eq!(p.kind(), kind, "expected packet type {kind}, got {p:?}");
        p
    }

    /// Reads until the server closes the connection; returns what it sent before closing.
    pub async fn until_closed(&mut self) -> Vec<RawPacket> {
        let mut got = Vec::new();
        while let Some(p) = self.recv().await {
            got.push(p);
        }
        got
    }
}

/// When a client that does not read last took data (its receive queue grew: its TCP
/// acknowledged more), and when the server then reset the connection.
pub struct Stalled {
    pub last_data: tokio::time::Instant,
    pub reset: tokio::time::Instant,
}

/// Watches `stream` without reading it, by peeking at its receive queue every few
/// milliseconds, until the server resets the connection (which sets the socket's error).
pub async fn until_reset(stream: &TcpStream) -> Stalled {
    use std::time::Duration;
    use tokio::time::Instant;
    let mut queue = vec![0u8; 1 << 22];
    let (mut queued, mut last_data) = (0, Instant::now());
    within("the server to reset the connection", async {
        loop {
            if let Some(e) = stream.take_error().unwrap() {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
                return Stalled {
                    last_data,
                    reset: Instant::now(),
                };
            }
            let peeked = tokio::time::timeout(Duration::from_millis(5), stream.peek(&mut queue));
            if let Ok(Ok(n)) = peeked.await
                && n > queued
            {
                (queued, last_data) = (n, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}
