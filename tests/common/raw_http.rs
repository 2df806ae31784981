//! HTTP/1.1 by hand over a TCP socket, for what no HTTP client will send: partial heads and
//! bodies, raw `#` in targets, malformed lines.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::mqtt::within;

/// A response as read off the socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// The head, lowercased.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            (n == name).then(|| v.trim())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Insists on the AWS error shape: `status`, `x-amzn-ErrorType: kind`, a request id and a
    /// JSON message containing `says`.
    pub fn assert_error(&self, status: u16, kind: &str, says: &str) {
        assert_eq!(self.status, status, "{}", self.head);
        assert_eq!(
            self.header("x-amzn-errortype"),
            Some(kind.to_ascii_lowercase().as_str()),
            "{}",
            self.head
        );
        assert!(self.header("x-amzn-requestid").is_some(), "{}", self.head);
        assert_eq!(self.header("content-type"), Some("application/json"));
        let message = self.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains(says), "{message}");
    }
}

pub async fn connect(addr: std::net::SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// Sends `request` as is and reads one response (framed by Content-Length).
pub async fn exchange(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    request: &[u8],
) -> RawResponse {
    stream.write_all(request).await.unwrap();
    read_response(stream).await
}

/// Reads one response (framed by Content-Length).
pub async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> RawResponse {
    within("an HTTP response", async {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            let n = stream.read(&mut b).await.unwrap();
            assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.unwrap();
        RawResponse { status, head, body }
    })
    .await
}

/// Waits for the server to close the connection, sending nothing more; returns how long that
/// took. A reset counts as closed, and so does a TLS connection dropped without close_notify.
pub async fn closed(stream: &mut (impl AsyncRead + Unpin)) -> Duration {
    let started = std::time::Instant::now();
    within("the server to close the connection", async {
        let mut rest = Vec::new();
        match stream.read_to_end(&mut rest).await {
            Ok(_) => assert!(
                rest.is_empty(),
                "sent {:?} before closing",
                String::from_utf8_lossy(&rest)
            ),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                ),
                "{e}"
            ),
        }
    })
    .await;
    started.elapsed()
}
