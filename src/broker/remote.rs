//! What the transport under MQTT knows about a client before its CONNECT: where it connects
//! from, who it proved to be, and how to see what it takes of our output.

use std::net::SocketAddr;

use super::admission::TransportIdentity;
use crate::tcp::Uptake;
use crate::tcp::proxy::ProxyProtocol;

/// A client connection as its listener (TCP, TLS, WebSocket) hands it to the broker.
#[derive(Clone)]
pub struct Remote {
    /// How logs name it: `ip:port`, `mqtts://ip:port`, `ws://ip:port`, `wss://ip:port`.
    pub name: String,
    /// The peer's address, for the per-source password-check budget; `None` when the
    /// transport has none to give.
    pub addr: Option<SocketAddr>,
    /// Who the transport proved the client to be (a TLS client certificate, a presigned
    /// WebSocket URL), if anyone.
    pub identity: Option<TransportIdentity>,
    /// The TCP socket's count of what the client took; `None`: count what the stream accepts.
    pub uptake: Option<Uptake>,
    /// Set when the stream starts with a PROXY protocol header, to read before the CONNECT:
    /// `addr` and `name` are then the load balancer's until it is read.
    pub proxy_header: Option<ProxyProtocol>,
}
