//! A load balancer in front of a retaind listener, as HAProxy with `send-proxy` or an AWS
//! Network Load Balancer with proxy protocol v2: each connection it accepts goes on to the
//! listener after a PROXY protocol header naming `client` as its source, then bytes are copied
//! both ways. Each balancer speaks for one client address, so a test makes one per client it
//! pretends to be.

use std::net::{IpAddr, SocketAddr};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Debug, Clone, Copy)]
pub enum Version {
    /// The text header: `PROXY TCP4 <client> <server> <ports>\r\n`.
    V1,
    /// The binary header, with an AWS VPC endpoint TLV after the addresses, as an NLB sends.
    V2,
}

pub struct Balancer {
    pub addr: SocketAddr,
    task: AbortHandle,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Balancer {
    pub async fn start(upstream: SocketAddr, version: Version, client: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut downstream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    if up
                        .write_all(&header(version, client, upstream))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut downstream, &mut up).await;
                });
            }
        })
        .abort_handle();
        Self { addr, task }
    }
}

/// A PROXY protocol header for a TCP connection from `client` to `server`.
pub fn header(version: Version, client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    match version {
        Version::V1 => {
            let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                client.ip(),
                server.ip(),
                client.port(),
                server.port()
            )
            .into_bytes()
        }
        Version::V2 => {
            let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            h.push(0x21); // version 2, PROXY
            let mut body = Vec::new();
            match (client.ip(), server.ip()) {
                (IpAddr::V4(c), IpAddr::V4(s)) => {
                    h.push(0x11); // IPv4, stream
                    body.extend_from_slice(&c.octets());
                    body.extend_from_slice(&s.octets());
                }
                (c, s) => {
                    h.push(0x21); // IPv6, stream
                    body.extend_from_slice(&v6(c).octets());
                    body.extend_from_slice(&v6(s).octets());
                }
            }
            body.extend_from_slice(&client.port().to_be_bytes());
            body.extend_from_slice(&server.port().to_be_bytes());
            let vpce = b"vpce-0123456789abcdef0";
            body.push(0xEA);
            body.extend_from_slice(&(vpce.len() as u16 + 1).to_be_bytes());
            body.push(0x01);
            body.extend_from_slice(vpce);
            h.extend_from_slice(&(body.len() as u16).to_be_bytes());
            h.extend_from_slice(&body);
            h
        }
    }
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}
