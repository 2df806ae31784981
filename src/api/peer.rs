//! Who is at the other end of an HTTP connection: its address and, over HTTPS, the client
//! certificate it proved it holds. `axum::serve` attaches a [`Peer`] once per connection (as
//! `ConnectInfo<Peer>`, see `into_make_service_with_connect_info`), so every request on the
//! connection carries it and nothing per request has to reach back into the TLS session.
//!
//! Only what the transport proved lives here; what a certificate is worth (which principal, if
//! any) is for [`crate::auth`] to decide.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::extract::connect_info::Connected;
use axum::http::Extensions;
use axum::serve::IncomingStream;

use super::HttpIncoming;
use crate::tcp::{AckSwitch, Uptake};
use crate::tls::{self, CertFingerprint, TlsIncoming};

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

    /// `ws://addr` or `wss://addr`: how logs name an MQTT client on this connection.
    pub fn websocket_name(&self) -> String {
        match self.transport {
            Transport::Plain => format!("ws://{}", self.addr),
            Transport::Tls { .. } => format!("wss://{}", self.addr),
        }
    }
}

impl Connected<IncomingStream<'_, HttpIncoming>> for Peer {
    fn connect_info(stream: IncomingStream<'_, HttpIncoming>) -> Self {
        Self {
            addr: *stream.remote_addr(),
            transport: Transport::Plain,
            acks: stream.io().switch().cloned(),
            uptake: stream.io().uptake(),
        }
    }
}

impl Connected<IncomingStream<'_, TlsIncoming>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsIncoming>) -> Self {
        Self {
            addr: *stream.remote_addr(),
            transport: Transport::Tls {
                client_cert: tls::client_cert_sha256(stream.io()),
            },
            acks: None,
            uptake: stream.io().get_ref().0.uptake(),
        }
    }
}
