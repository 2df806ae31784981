//! The plain HTTP listener. It hands the server its connections as [`PromptAcks`] with
//! prompt ACKs switched off, and keeps each connection's switch in its [`super::Peer`]. A
//! connection that upgrades to MQTT over WebSocket turns the switch on, so that a client with
//! Nagle's algorithm on keeps sending while its publishes commit, as over plain MQTT
//! (`crate::tcp`). Other requests are left as they were.

use std::io;
use std::net::SocketAddr;

use axum::serve::Listener;
use tokio::net::TcpListener;

use crate::tcp::PromptAcks;

pub struct HttpIncoming(TcpListener);

impl HttpIncoming {
    pub fn new(listener: TcpListener) -> Self {
        Self(listener)
    }
}

impl Listener for HttpIncoming {
    type Io = PromptAcks;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's own accept loop, with its handling of accept errors.
        let (stream, addr) = Listener::accept(&mut self.0).await;
        (PromptAcks::switched_off(stream), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}
