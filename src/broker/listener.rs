//! Accepting MQTT over TCP and over TLS.

use std::time::Duration;

use tokio::net::TcpListener;

use super::admission::TransportIdentity;
use super::handle::Broker;
use super::remote::Remote;
use crate::tcp::PromptAcks;
use crate::tcp::proxy::ProxyProtocol;
use crate::tls::{self, TlsIncoming};

/// Accepts connections until the broker shuts down; each is served on its own task. With
/// `proxy`, connections from the balancers it names start with a PROXY protocol header, read
/// on the connection's task.
pub async fn serve_tcp(broker: Broker, listener: TcpListener, proxy: Option<ProxyProtocol>) {
    loop {
        let accepted = tokio::select! {
            () = broker.stopping_signal().cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                let socket = PromptAcks::new(socket);
                let remote = Remote {
                    name: peer.to_string(),
                    addr: Some(peer),
                    identity: None,
                    uptake: Some(socket.uptake()),
                    proxy_header: proxy.clone().filter(|p| p.expects(peer.ip())),
                };
                tokio::spawn(broker.track(socket, remote));
            }
            Err(e) => {
                // Usually out of file descriptors: wait instead of spinning.
                tracing::warn!(error = %e, "cannot accept an MQTT connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Accepts TLS connections until the broker shuts down. Handshakes happen in [`TlsIncoming`]
/// (bounded and timed out, after the PROXY protocol header if it reads one); a client's
/// certificate, if it presented one, goes along to authentication.
pub async fn serve_tls(broker: Broker, mut incoming: TlsIncoming) {
    loop {
        let (stream, peer) = tokio::select! {
            () = broker.stopping_signal().cancelled() => return,
            established = incoming.next() => established,
        };
        let remote = Remote {
            name: format!("mqtts://{peer}"),
            addr: Some(peer),
            identity: tls::client_cert_sha256(&stream).map(TransportIdentity::ClientCert),
            uptake: Some(stream.get_ref().0.uptake()),
            proxy_header: None,
        };
        tokio::spawn(broker.track(stream, remote));
    }
}
