//! Who is at the other end of an HTTP connection: its address and, over HTTPS, the client
//! certificate it proved it holds. The server ([`super::server`]) makes a [`Peer`] once per
//! connection, through its listener's [`PeerListener`] implementation, and attaches it to every
//! request (as `ConnectInfo<Peer>`), so nothing per request has to reach back into the TLS
//! session.
//!
//! Only what the transport proved lives here; what a certificate is worth (which principal, if
//! any) is for [`crate::auth`] to decide.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::http::Extensions;
use axum::serve::Listener;
use tokio_rustls::server::TlsStream;

use super::HttpIncoming;
use crate::tcp::proxy::ProxyProtocol;
use crate::tcp::{AckSwitch, MoveRequest, PromptAcks, Uptake};
use crate::tls::{self, CertFingerprint, TlsIncoming};

/// A listener whose connections know who is at the other end.
pub trait PeerListener: Listener<Addr = SocketAddr> {
    fn peer(io: &Self::Io, addr: SocketAddr) -> Peer;

    /// The PROXY protocol header the server is to read first on each connection, if any: the
    /// plain listener's. The TLS listener reads it itself, before the handshake.
    fn proxy_protocol(&self) -> Option<ProxyProtocol> {
        None
    }
}

#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub transport: Transport,
    /// Turns on prompt TCP ACKs for the connection (see `crate::tcp`); `None` where they are
    /// always on (HTTPS).
    pub acks: Option<AckSwitch>,
    /// How much of what is written here the client has taken, for MQTT over WebSocket's
    /// slow-subscriber check.
    pub uptake: Uptake,
    /// Moves the connection's socket to the runtime that next polls it, for MQTT over
    /// WebSocket, whose stream cannot reach the socket under the upgrade.
    pub move_request: MoveRequest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `--http-addr`: no TLS, so never a certificate.
    Plain,
    /// `--https-addr`, with the fingerprint of the client certificate when one was presented
    /// (and verified against `--tls-client-ca` in the handshake).
    Tls {
        client_cert: Option<CertFingerprint>,
    },
}

impl Peer {
    /// The connection's peer, when the router is served with `ConnectInfo<Peer>`.
    pub fn of(extensions: &Extensions) -> Option<&Self> {
        extensions
            .get::<ConnectInfo<Self>>()
            .map(|ConnectInfo(peer)| peer)
    }

    pub fn client_cert(&self) -> Option<CertFingerprint> {
        match self.transport {
            Transport::Plain => None,
            Transport::Tls { client_cert } => client_cert,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.transport, Transport::Tls { .. })
    }

    /// `ws://addr` or `wss://addr`: how logs name an MQTT client on this connection.
    pub fn websocket_name(&self) -> String {
        match self.transport {
            Transport::Plain => format!("ws://{}", self.addr),
            Transport::Tls { .. } => format!("wss://{}", self.addr),
        }
    }
}

impl PeerListener for HttpIncoming {
    fn proxy_protocol(&self) -> Option<ProxyProtocol> {
        self.proxy()
    }

    fn peer(io: &PromptAcks, addr: SocketAddr) -> Peer {
        Peer {
            addr,
            transport: Transport::Plain,
            acks: io.switch().cloned(),
            uptake: io.uptake(),
            move_request: io.move_request(),
        }
    }
}

impl PeerListener for TlsIncoming {
    fn peer(io: &TlsStream<PromptAcks>, addr: SocketAddr) -> Peer {
        Peer {
            addr,
            transport: Transport::Tls {
                client_cert: tls::client_cert_sha256(io),
            },
            acks: None,
            uptake: io.get_ref().0.uptake(),
            move_request: io.get_ref().0.move_request(),
        }
    }
}
