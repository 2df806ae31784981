//! A socket carrying MQTT packets, after the version has been settled by the CONNECT.

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rmqtt_codec::error::DecodeError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{
    Codec, Connect, ConnectAck, ConnectAckReason, Error, KeyValue, OutgoingPublish, Packet, Version,
};

/// The read buffer a connection takes when it reads, tokio-util's own size: a packet larger
/// than this grows it as it arrives.
const READ_CHUNK: usize = 8 * 1024;

/// MQTT packets over `T` (a TCP stream, or a WebSocket presented as one).
///
/// Most connections of a fleet are idle most of the time, so a connection holds no buffer it
/// is not using: the read buffer goes back whenever the socket has nothing more to read and no
/// packet is half-read (taken again, whole, for the next read: one allocation per burst of
/// input), and the write buffer when the connection calls [`Framed::lean`] after a quiet spell
/// (not after every flush, where a busy subscriber would grow it again each time).
pub struct Framed<T> {
    io: tokio_util::codec::Framed<T, Codec>,
    version: Version,
}

/// Reads the CONNECT that must open every connection [MQTT-3.1.0-1] and settles the version.
/// `max_packet_size` bounds every packet the client may send, the CONNECT included, so a
/// hostile header cannot make the broker reserve memory it then waits to fill.
pub async fn handshake<T>(io: T, max_packet_size: u32) -> Result<(Framed<T>, Connect), Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut io = tokio_util::codec::Framed::new(io, Codec::new(max_packet_size));
    let connect = match io.next().await {
        None => return Err(Error::Closed),
        Some(Ok(Packet::Connect(connect))) => *connect,
        Some(Ok(_)) => return Err(Error::NotConnect),
        Some(Err(Error::UnsupportedVersion)) => {
            if is_connect_for_mqtt(io.read_buffer()) {
                // [MQTT-3.1.2-2] unsupported level: CONNACK 0x01, in the 3.1.1 form every
                // client version can read, then close.
                let _ = io.get_mut().write_all(&[0x20, 0x02, 0x00, 0x01]).await;
                close(io.get_mut(), GOODBYE).await;
            }
            return Err(Error::UnsupportedVersion);
        }
        Some(Err(Error::Decode(DecodeError::InvalidClientId))) => {
            // The codec refuses an empty client id with a request to resume a session
            // [MQTT-3.1.3-8]; the client is owed a CONNACK saying so (3.1.1: 0x02, 5: 0x85).
            refuse(&mut io, Some(ConnectAckReason::ClientIdentifierNotValid)).await;
            return Err(DecodeError::InvalidClientId.into());
        }
        Some(Err(Error::Invalid(violation))) => {
            // The codec settled the version before it refused the CONNECT.
            let refusal = io.codec().version().and_then(|v| violation.connack(v));
            refuse(&mut io, refusal).await;
            return Err(violation.into());
        }
        Some(Err(Error::Decode(e))) => {
            // The codec refused the CONNECT itself (a property twice or out of range, bad
            // flags, too large): an MQTT 5 client is told so before the close
            // [MQTT-4.13.1-1], as for the CONNECTs refused above.
            let refusal = io.codec().version().and_then(|v| decode_refusal(&e, v));
            refuse(&mut io, refusal).await;
            return Err(e.into());
        }
        Some(Err(e)) => return Err(e),
    };
    let version = io.codec().version().ok_or(Error::NotConnect)?;
    // tokio-util gives each direction 8 KiB up front; writes take what they need.
    *io.write_buffer_mut() = BytesMut::new();
    Ok((Framed { io, version }, connect))
}

/// How long a closing connection waits to send its last packet, and then reads and discards
/// what the client still sends ([`Framed::close`]): closing with unread input would reset
/// the connection, and the reset can overtake the packet that says why. A CONNECT refused
/// here is closed so too, as the broker closes every later connection.
pub const GOODBYE: std::time::Duration = std::time::Duration::from_secs(1);

/// Answers a CONNECT with `reason` (none: closed without a CONNACK) and closes.
async fn refuse<T>(io: &mut tokio_util::codec::Framed<T, Codec>, reason: Option<ConnectAckReason>)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(reason_code) = reason {
        let refusal = ConnectAck {
            reason_code,
            ..ConnectAck::default()
        };
        let _ = io.send(Packet::ConnectAck(Box::new(refusal))).await;
    }
    close(io.get_mut(), GOODBYE).await;
}

/// Sends FIN, then reads and drops what the client still sends, for at most `linger`
/// ([`Framed::close`] says why).
async fn close<T>(io: &mut T, linger: std::time::Duration)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(linger, async {
        let _ = io.shutdown().await;
        let mut discard = [0u8; 4096];
        while matches!(io.read(&mut discard).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The CONNACK refusing a CONNECT the codec could not take, as a connection past its CONNECT
/// is closed for the same errors (`broker::end`); `None` to close without one: 3.1.1 has no
/// code for a malformed packet, and a failed socket cannot be answered.
fn decode_refusal(e: &DecodeError, version: Version) -> Option<ConnectAckReason> {
    match (e, version) {
        (_, Version::V3) | (DecodeError::Io(_), _) => None,
        (DecodeError::MaxSizeExceeded { .. }, Version::V5) => {
            Some(ConnectAckReason::PacketTooLarge)
        }
        (_, Version::V5) => Some(ConnectAckReason::MalformedPacket),
    }
}

/// A CONNECT whose protocol name is MQTT's, whatever level it asks for.
fn is_connect_for_mqtt(buf: &[u8]) -> bool {
    let Some(&first) = buf.first() else {
        return false;
    };
    // Skip the remaining-length varint (1–4 bytes) to reach the protocol name.
    let body = buf[1..]
        .iter()
        .position(|b| b & 0x80 == 0)
        .filter(|&i| i < 4)
        .map(|i| &buf[i + 2..]);
    first == 0x10 && body.is_some_and(|b| b.starts_with(b"\x00\x04MQTT"))
}

impl<T> Framed<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    pub fn version(&self) -> Version {
        self.version
    }

    /// The next packet, as MQTT 5. Cancel-safe: a packet is never half-consumed.
    pub async fn recv(&mut self) -> Result<Packet, Error> {
        std::future::poll_fn(|cx| {
            if self.io.read_buffer().capacity() == 0 {
                // `with_capacity`, not `reserve`: a buffer whose packets were split off
                // remembers the capacity it was made with and grows back to it, where one
                // made empty would grow a few bytes at a time, a read each.
                *self.io.read_buffer_mut() = BytesMut::with_capacity(READ_CHUNK);
            }
            let polled = self.io.poll_next_unpin(cx);
            if polled.is_pending() && self.io.read_buffer().is_empty() {
                *self.io.read_buffer_mut() = BytesMut::new();
            }
            polled.map(|packet| packet.unwrap_or(Err(Error::Closed)))
        })
        .await
    }

    /// Whether [`Self::lean`] has a buffer to give back.
    pub fn holds_buffers(&self) -> bool {
        let spare = |b: &BytesMut| b.is_empty() && b.capacity() > 0;
        spare(self.io.write_buffer()) || spare(self.io.read_buffer())
    }

    /// Gives back the buffers that hold nothing (see [`Framed`]); the next write or read
    /// takes what it needs again.
    pub fn lean(&mut self) {
        if self.io.write_buffer().is_empty() {
            *self.io.write_buffer_mut() = BytesMut::new();
        }
        if self.io.read_buffer().is_empty() {
            *self.io.read_buffer_mut() = BytesMut::new();
        }
    }

    /// Queues a packet for sending without flushing. Packets a 3.1.1 client has no form for
    /// (a server DISCONNECT, AUTH) are dropped: for them the connection just closes.
    pub async fn feed(&mut self, packet: Packet) -> Result<(), Error> {
        self.io.feed(packet).await
    }

    /// Queues a PUBLISH for sending without flushing, as [`Self::feed`] does.
    pub async fn feed_publish<U: KeyValue>(
        &mut self,
        publish: OutgoingPublish<'_, U>,
    ) -> Result<(), Error> {
        self.io.feed(publish).await
    }

    pub async fn flush(&mut self) -> Result<(), Error> {
        SinkExt::<Packet>::flush(&mut self.io).await
    }

    pub async fn send(&mut self, packet: Packet) -> Result<(), Error> {
        self.feed(packet).await?;
        self.flush().await
    }

    /// Bytes queued for the client but not yet written to the socket.
    pub fn pending_write_bytes(&self) -> usize {
        self.io.write_buffer().len()
    }

    /// Ends the connection so that what was sent reaches the client: shuts the write side (a
    /// FIN after the last packet), then reads and discards whatever the client still sends
    /// until it closes too or `linger` has passed. Closing a socket with unread input makes
    /// the kernel send a reset, which discards what it has not delivered yet: a client that
    /// was still sending (one flooding past Receive Maximum, a publisher at shutdown) would
    /// lose the DISCONNECT that says why.
    pub async fn close(&mut self, linger: std::time::Duration) {
        close(self.io.get_mut(), linger).await;
    }

    /// The transport, for what the packets do not cover (moving its socket, say).
    pub fn transport_mut(&mut self) -> &mut T {
        self.io.get_mut()
    }

    /// The largest packet the client said it accepts (MQTT 5 Maximum Packet Size); a larger
    /// PUBLISH fails to encode and the broker skips it, as [MQTT-3.1.2-25] asks.
    pub fn set_max_outbound_size(&mut self, size: u32) {
        self.io.codec_mut().set_max_outbound_size(size);
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_util::FutureExt;
    use tokio::io::{AsyncWriteExt, DuplexStream, ReadBuf};

    use super::*;

    /// A transport that counts the reads that returned bytes.
    struct CountedReads {
        inner: DuplexStream,
        reads: usize,
    }

    impl AsyncRead for CountedReads {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
            if buf.filled().len() > before {
                self.reads += 1;
            }
            polled
        }
    }

    impl AsyncWrite for CountedReads {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    const CONNECT: &[u8] = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02id";
    const PINGREQ: &[u8] = b"\xc0\x00";

    /// A QoS 0 PUBLISH to `t` with a 200-byte payload: 206 bytes.
    fn publish() -> Vec<u8> {
        // Remaining length 203, as a variable byte integer.
        let mut p = vec![0x30, 0xcb, 0x01, 0x00, 0x01, b't'];
        p.extend_from_slice(&[b'x'; 200]);
        p
    }

    async fn connected() -> (Framed<CountedReads>, DuplexStream) {
        let (server, mut client) = tokio::io::duplex(1 << 20);
        client.write_all(CONNECT).await.unwrap();
        let io = CountedReads {
            inner: server,
            reads: 0,
        };
        let (framed, _) = handshake(io, 1 << 20).await.unwrap();
        (framed, client)
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffers() {
        let (mut framed, mut client) = connected().await;
        // Nothing more to read after the CONNECT, and nothing written yet.
        assert!(framed.recv().now_or_never().is_none());
        assert!(!framed.holds_buffers());
        client.write_all(PINGREQ).await.unwrap();
        assert!(matches!(framed.recv().await, Ok(Packet::PingRequest)));
        // Nothing more to read: the read buffer went back as the read found the socket empty.
        assert!(framed.recv().now_or_never().is_none());
        assert_eq!(framed.io.read_buffer().capacity(), 0);
        framed.send(Packet::PingResponse).await.unwrap();
        assert!(
            framed.holds_buffers(),
            "the write buffer stays until the connection is quiet"
        );
        framed.lean();
        assert!(!framed.holds_buffers());
        assert_eq!(framed.io.write_buffer().capacity(), 0);
        // And both come back when needed.
        client.write_all(PINGREQ).await.unwrap();
        assert!(matches!(framed.recv().await, Ok(Packet::PingRequest)));
        framed.send(Packet::PingResponse).await.unwrap();
        let mut answer = [0u8; 2];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut answer)
            .await
            .unwrap();
        assert_eq!(answer, [0xd0, 0x00]);
    }

    #[tokio::test]
    async fn a_packet_half_read_is_kept_while_the_rest_is_awaited() {
        let (mut framed, mut client) = connected().await;
        let publish = publish();
        client.write_all(&publish[..100]).await.unwrap();
        assert!(framed.recv().now_or_never().is_none());
        framed.lean();
        assert!(
            framed.io.read_buffer().len() == 100,
            "the half packet is still there"
        );
        client.write_all(&publish[100..]).await.unwrap();
        match framed.recv().await {
            Ok(Packet::Publish(p)) => assert_eq!(p.payload.len(), 200),
            other => panic!("expected the PUBLISH, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_burst_after_an_idle_spell_is_read_in_whole_chunks() {
        let (mut framed, mut client) = connected().await;
        assert!(framed.recv().now_or_never().is_none());
        let reads_before = framed.io.get_ref().reads;
        // 100 publishes of 206 bytes at once; their payloads are held as a broker holds them
        // on their way to the store, so the buffer they were read into stays shared.
        let burst: Vec<u8> = (0..100).flat_map(|_| publish()).collect();
        client.write_all(&burst).await.unwrap();
        let mut held = Vec::new();
        for _ in 0..100 {
            match framed.recv().await {
                Ok(Packet::Publish(p)) => held.push(p.payload),
                other => panic!("expected a PUBLISH, got {other:?}"),
            }
        }
        let reads = framed.io.get_ref().reads - reads_before;
        // 20,600 bytes in chunks of 8 KiB: three reads, four or five with the packets cut at
        // chunk ends. A buffer that forgot its size would read a packet, or less, at a time.
        assert!(reads <= 6, "{reads} reads for 20,600 bytes");
    }
}
