//! A WebSocket client by hand, to control framing (what rumqttc cannot) and to speak MQTT over
//! WebSocket on any stream, TLS included (rumqttc is built here without TLS).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::within;
use crate::common::TestApp;

pub struct RawWs<S = TcpStream> {
    stream: S,
    inbox: Vec<u8>,
}

impl RawWs {
    /// Upgrades `GET /mqtt` on the plain HTTP listener offering `protocol`; returns the client
    /// and the response head.
    pub async fn open(app: &TestApp, protocol: &str) -> (Self, String) {
        Self::open_with(app, protocol, &[]).await
    }

    /// [`Self::open`] sending `headers` too.
    pub async fn open_with(
        app: &TestApp,
        protocol: &str,
        headers: &[(&str, &str)],
    ) -> (Self, String) {
        let stream = TcpStream::connect(app.http_addr).await.unwrap();
        Self::upgrade_with(stream, &app.http_addr.to_string(), protocol, headers).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawWs<S> {
    /// Upgrades `GET /mqtt` on an open connection; returns the client and the response head,
    /// lowercased.
    pub async fn upgrade(stream: S, host: &str, protocol: &str) -> (Self, String) {
        Self::upgrade_with(stream, host, protocol, &[]).await
    }

    /// [`Self::upgrade`] sending `headers` too (`Origin`, `Sec-Fetch-Site`, as browsers do).
    pub async fn upgrade_with(
        mut stream: S,
        host: &str,
        protocol: &str,
        headers: &[(&str, &str)],
    ) -> (Self, String) {
        let extra: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let request = format!(
            "GET /mqtt HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: {protocol}\r\n{extra}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        within("the upgrade response", async {
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                stream.read_exact(&mut b).await.unwrap();
                head.push(b[0]);
            }
        })
        .await;
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        let inbox = Vec::new();
        (Self { stream, inbox }, head)
    }

    /// The stream under the WebSocket.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Sends one masked frame: `fin` ends the message, `opcode` 2 is binary, 0 continuation.
    pub async fn frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        assert!(payload.len() < 126);
        let mask = [0x37, 0xFA, 0x21, 0x3D];
        let mut out = vec![u8::from(fin) << 7 | opcode, 0x80 | payload.len() as u8];
        out.extend(mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next MQTT packet from the server, reassembled from however many binary frames.
    pub async fn packet(&mut self) -> (u8, Vec<u8>) {
        within("an MQTT packet over WebSocket", async {
            loop {
                if let Some((first, body, used)) = split_packet(&self.inbox) {
                    self.inbox.drain(..used);
                    return (first, body);
                }
                let mut h = [0u8; 2];
                self.stream.read_exact(&mut h).await.unwrap();
                assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
                let len = match h[1] & 0x7F {
                    126 => usize::from(self.stream.read_u16().await.unwrap()),
                    127 => self.stream.read_u64().await.unwrap() as usize,
                    n => usize::from(n),
                };
                let mut payload = vec![0u8; len];
                self.stream.read_exact(&mut payload).await.unwrap();
                assert!(matches!(h[0] & 0x0F, 0 | 2), "not a binary frame: {h:?}");
                self.inbox.extend(payload);
            }
        })
        .await
    }
}

/// One whole MQTT packet at the start of `buf`: (first byte, body, bytes used).
fn split_packet(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (&first, rest) = buf.split_first()?;
    let mut len = 0usize;
    for (i, b) in rest.iter().enumerate().take(4) {
        len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            let start = 1 + i + 1;
            return (buf.len() >= start + len)
                .then(|| (first, buf[start..start + len].to_vec(), start + len));
        }
    }
    None
}
