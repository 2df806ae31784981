//! The plain HTTP listener. It hands the server its connections as [`PromptAcks`] with
//! prompt ACKs switched off, and keeps each connection's switch in its [`super::Peer`]. A
//! connection that upgrades to MQTT over WebSocket turns the switch on, so that a client with
//! Nagle's algorithm on keeps sending while its publishes commit, as over plain MQTT
//! (`crate::tcp`). Other requests are left as they were. With `--proxy-protocol http`, the
//! server reads each connection's PROXY protocol header on the connection's task
//! ([`super::server`]).

use std::io;
use std::net::SocketAddr;

use axum::serve::Listener;
use tokio::net::TcpListener;

use crate::tcp::PromptAcks;
use crate::tcp::proxy::ProxyProtocol;

pub struct HttpIncoming {
    listener: TcpListener,
    proxy: Option<ProxyProtocol>,
}

impl HttpIncoming {
    /// With `proxy`, connections from the balancers it names start with a PROXY protocol
    /// header.
    pub fn new(listener: TcpListener, proxy: Option<ProxyProtocol>) -> Self {
        Self { listener, proxy }
    }

    pub(super) fn proxy(&self) -> Option<ProxyProtocol> {
        self.proxy.clone()
    }
}

impl Listener for HttpIncoming {
    type Io = PromptAcks;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's own accept loop, with its handling of accept errors.
        let (stream, addr) = Listener::accept(&mut self.listener).await;
        (PromptAcks::switched_off(stream), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}
