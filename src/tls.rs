//! TLS for MQTT (`--mqtts-addr`) and HTTPS (`--https-addr`): the server configuration loaded
//! from PEM files, and [`TlsIncoming`], which turns a TCP listener into established TLS streams.
//!
//! rustls runs on the `ring` provider, named explicitly rather than through the process-wide
//! default: the default (aws-lc-rs) needs cmake and slows clean builds a lot, and an explicit
//! provider cannot be changed under us by another crate in the build.
//!
//! With `--tls-client-ca`, clients are asked for a certificate signed by that CA; presenting one
//! is optional, so password clients keep working. What a certificate is worth (which principal
//! it is) is decided by the auth module from [`client_cert_sha256`]; this module only proves the
//! client holds the key of a certificate the CA signed.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

use crate::tcp::PromptAcks;
use crate::tcp::proxy::ProxyProtocol;
use crate::tcp::slots::Slots;

/// Time a client gets to complete its TLS handshake; one that never finishes cannot hold a
/// connection (or a handshake slot) longer than this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress on one listener. When they are all taken, a newcomer takes the slot
/// of one past [`HANDSHAKE_GRACE`] from the address holding the most ([`Slots`]), or waits in
/// the kernel's backlog.
const MAX_PENDING_HANDSHAKES: usize = 256;

/// How long a handshake keeps its slot whatever newcomers arrive: far longer than an honest
/// client needs, so only connections that stall are given up.
const HANDSHAKE_GRACE: Duration = Duration::from_secs(2);

/// SHA-256 of a client certificate's DER encoding: how the principals file names it.
pub type CertFingerprint = [u8; 32];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--tls-cert {}: {message}", path.display())]
    Cert { path: PathBuf, message: String },
    #[error("--tls-key {}: {message}", path.display())]
    Key { path: PathBuf, message: String },
    #[error("--tls-client-ca {}: {message}", path.display())]
    ClientCa { path: PathBuf, message: String },
    #[error("--tls-cert {} and --tls-key {}: {source}", cert.display(), key.display())]
    Config {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// The PEM files `--tls-cert`, `--tls-key` and (optionally) `--tls-client-ca` name.
#[derive(Debug, Clone)]
pub struct TlsFiles<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub client_ca: Option<&'a Path>,
}

/// Acceptors for both TLS listeners, sharing one certificate and key.
#[derive(Clone)]
pub struct TlsAcceptors {
    /// MQTT: no ALPN required (clients rarely offer one).
    pub mqtt: TlsAcceptor,
    /// HTTPS: HTTP/1.1 (the API is served without HTTP/2).
    pub https: TlsAcceptor,
}

impl TlsAcceptors {
    /// Reads and checks the files; every error names the file (and flag) at fault.
    pub fn load(files: &TlsFiles<'_>) -> Result<Self, Error> {
        let cert_err = |message: String| Error::Cert {
            path: files.cert.to_path_buf(),
            message,
        };
        let chain = CertificateDer::pem_file_iter(files.cert)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| cert_err(e.to_string()))?;
        if chain.is_empty() {
            return Err(cert_err("no PEM CERTIFICATE found".into()));
        }
        let key = PrivateKeyDer::from_pem_file(files.key).map_err(|e| Error::Key {
            path: files.key.to_path_buf(),
            message: e.to_string(),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config_err = |source| Error::Config {
            cert: files.cert.to_path_buf(),
            key: files.key.to_path_buf(),
            source,
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config_err)?;
        let builder = match files.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let ca_err = |message: String| Error::ClientCa {
                    path: path.to_path_buf(),
                    message,
                };
                let mut roots = RootCertStore::empty();
                for cert in
                    CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))?
                {
                    let cert = cert.map_err(|e| ca_err(e.to_string()))?;
                    roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(ca_err("no PEM CERTIFICATE found".into()));
                }
                // Optional: a client without a certificate goes on to username/password.
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| ca_err(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mqtt = builder.with_single_cert(chain, key).map_err(config_err)?;
        let mut https = mqtt.clone();
        https.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            mqtt: TlsAcceptor::from(Arc::new(mqtt)),
            https: TlsAcceptor::from(Arc::new(https)),
        })
    }
}

/// The fingerprint of the certificate the client presented (verified against the client CA
/// during the handshake); `None` when it presented none.
pub fn client_cert_sha256(stream: &TlsStream<PromptAcks>) -> Option<CertFingerprint> {
    let (_, connection) = stream.get_ref();
    let leaf = connection.peer_certificates()?.first()?;
    Some(Sha256::digest(leaf.as_ref()).into())
}

/// A listener's acceptor, which a reload replaces (certificate, key, client CA) for the
/// handshakes that start after it; established connections keep what they agreed on.
#[derive(Clone)]
pub struct LiveAcceptor(Arc<RwLock<TlsAcceptor>>);

impl LiveAcceptor {
    pub fn new(acceptor: TlsAcceptor) -> Self {
        Self(Arc::new(RwLock::new(acceptor)))
    }

    pub fn current(&self) -> TlsAcceptor {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn replace(&self, acceptor: TlsAcceptor) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = acceptor;
    }
}

/// A handshake's task, and the client address its PROXY protocol header named.
type Moved = (tokio::task::Id, IpAddr);

/// A TCP listener whose connections come out TLS-established. Handshakes run concurrently on
/// their own tasks (a slow client does not hold up the others), at most
/// [`MAX_PENDING_HANDSHAKES`] at once, each within [`HANDSHAKE_TIMEOUT`]; failed ones are
/// logged and dropped. Dropping it aborts the handshakes in progress.
pub struct TlsIncoming {
    listener: TcpListener,
    acceptor: LiveAcceptor,
    handshake_timeout: Duration,
    handshakes: JoinSet<Option<(TlsStream<PromptAcks>, SocketAddr)>>,
    slots: Slots<tokio::task::Id>,
    /// Handshakes given up for a newcomer since the start.
    given_up: Arc<AtomicU64>,
    /// Read before the handshake from the balancers it names.
    proxy: Option<ProxyProtocol>,
    /// Handshakes whose PROXY protocol header named their client, to count their slots at the
    /// client's address. At most one message per handshake, so bounded by the slots.
    moved: (mpsc::UnboundedSender<Moved>, mpsc::UnboundedReceiver<Moved>),
}

impl TlsIncoming {
    /// With `proxy`, connections from the balancers it names start with a PROXY protocol
    /// header, read before the handshake and within its time; the connection's address is then
    /// the one it names.
    pub fn new(
        listener: TcpListener,
        acceptor: LiveAcceptor,
        proxy: Option<ProxyProtocol>,
    ) -> Self {
        Self {
            listener,
            acceptor,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            handshakes: JoinSet::new(),
            slots: Slots::new(MAX_PENDING_HANDSHAKES, HANDSHAKE_GRACE),
            given_up: Arc::default(),
            proxy,
            moved: mpsc::unbounded_channel(),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The count of handshakes given up for newcomers, for the metrics.
    pub fn given_up(&self) -> Arc<AtomicU64> {
        self.given_up.clone()
    }

    /// The next established connection. Cancel-safe: nothing is lost if the future is dropped.
    pub async fn next(&mut self) -> (TlsStream<PromptAcks>, SocketAddr) {
        loop {
            let can_take = self.slots.can_take(Instant::now());
            // Full of handshakes within their grace: look again once the oldest's is over.
            let look_again = (!can_take)
                .then(|| self.slots.next_chance())
                .flatten()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                accepted = self.listener.accept(), if can_take => match accepted {
                    Ok((tcp, peer)) => {
                        let now = Instant::now();
                        if self.slots.make_room(now) {
                            self.given_up.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, "every TLS handshake slot taken: gave up the oldest stalled handshake of the address holding the most");
                        }
                        let start = Handshake {
                            acceptor: self.acceptor.current(),
                            timeout: self.handshake_timeout,
                            proxy: self.proxy.clone().filter(|p| p.expects(peer.ip())),
                            moved: self.moved.0.clone(),
                        };
                        let abort = self.handshakes.spawn(start.run(tcp, peer));
                        let id = abort.id();
                        self.slots.add(
                            id,
                            peer.ip().into(),
                            now,
                            Box::new(move || {
                                abort.abort();
                                true
                            }),
                        );
                    }
                    Err(e) => {
                        // Usually out of file descriptors: wait instead of spinning.
                        tracing::warn!(error = %e, "cannot accept a TLS connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(done) = self.handshakes.join_next_with_id() => match done {
                    Ok((id, established)) => {
                        self.slots.remove(id);
                        if let Some(established) = established {
                            return established;
                        }
                    }
                    Err(e) => self.slots.remove(e.id()),
                },
                Some((id, client)) = self.moved.1.recv() => self.slots.set_source(id, client.into()),
                () = sleep_until_some(look_again) => {}
            }
        }
    }
}

/// Sleeps until `at`; never returns without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a handshake's task needs.
struct Handshake {
    acceptor: TlsAcceptor,
    timeout: Duration,
    proxy: Option<ProxyProtocol>,
    moved: mpsc::UnboundedSender<Moved>,
}

impl Handshake {
    /// The PROXY protocol header, if one is expected, then the handshake, all within the
    /// handshake's time.
    async fn run(
        self,
        mut tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<(TlsStream<PromptAcks>, SocketAddr)> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut client = peer;
        if let Some(proxy) = &self.proxy {
            // A refusal is counted and logged by `client`.
            client = proxy.client(&mut tcp, peer, deadline).await.ok()?;
            let _ = self.moved.send((tokio::task::id(), client.ip()));
        }
        let accept = self.acceptor.accept(PromptAcks::new(tcp));
        match tokio::time::timeout_at(deadline, accept).await {
            Ok(Ok(stream)) => Some((stream, client)),
            Ok(Err(e)) => {
                tracing::debug!(peer = %client, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(peer = %client, "TLS handshake timed out");
                None
            }
        }
    }
}

/// The HTTPS listener, as `crate::api::serve` takes it.
impl axum::serve::Listener for TlsIncoming {
    type Io = TlsStream<PromptAcks>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.next().await
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        TlsIncoming::local_addr(self)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn self_signed() -> (tempfile::TempDir, CertificateDer<'static>) {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        (dir, cert.der().clone())
    }

    /// A listener handing out MQTT TLS connections, and the certificate a client trusts.
    async fn incoming() -> (TlsIncoming, SocketAddr, CertificateDer<'static>) {
        incoming_with(None).await
    }

    async fn incoming_with(
        proxy: Option<ProxyProtocol>,
    ) -> (TlsIncoming, SocketAddr, CertificateDer<'static>) {
        let (dir, cert) = self_signed();
        let acceptors = TlsAcceptors::load(&TlsFiles {
            cert: &dir.path().join("cert.pem"),
            key: &dir.path().join("key.pem"),
            client_ca: None,
        })
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (
            TlsIncoming::new(listener, LiveAcceptor::new(acceptors.mqtt), proxy),
            addr,
            cert,
        )
    }

    /// A TLS client of `localhost` that trusts `cert`, over `tcp`.
    async fn handshake_over(
        cert: CertificateDer<'static>,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await
    }

    async fn connect(
        cert: CertificateDer<'static>,
        addr: SocketAddr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        handshake_over(cert, TcpStream::connect(addr).await?).await
    }

    /// [`connect`], from the local address `from` (any of 127.0.0.0/8 on loopback).
    async fn connect_from(
        cert: CertificateDer<'static>,
        addr: SocketAddr,
        from: std::net::IpAddr,
    ) -> std::io::Result<SocketAddr> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from, 0))?;
        let tcp = socket.connect(addr).await?;
        let local = tcp.local_addr()?;
        handshake_over(cert, tcp).await?;
        Ok(local)
    }

    /// Every slot held by connections of one address that never say hello: a client from
    /// another address still gets one, from the oldest of them, once it has had its grace,
    /// rather than waiting for their handshakes to time out.
    #[tokio::test]
    async fn silent_connections_of_one_address_in_every_slot_do_not_keep_another_out() {
        let (mut incoming, addr, cert) = incoming().await;
        incoming.slots = Slots::new(4, Duration::from_millis(100));
        let mut silent = Vec::new();
        for _ in 0..4 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        let honest = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            connect_from(cert, addr, "127.0.0.2".parse().unwrap()).await
        });
        // Within the handshake timeout (10 s) by far.
        let (_, peer) = tokio::time::timeout(Duration::from_secs(3), incoming.next())
            .await
            .expect("the client from another address gets a slot");
        assert_eq!(peer, honest.await.unwrap().expect("its handshake"));

        let mut closed = 0;
        for socket in &mut silent {
            let mut byte = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(100), socket.read(&mut byte)).await {
                Ok(Ok(0) | Err(_)) => closed += 1,
                Ok(Ok(_)) => panic!("a silent client got bytes"),
                Err(_) => {}
            }
        }
        assert_eq!(closed, 1, "one silent connection gave up its slot");
        assert_eq!(incoming.given_up().load(Ordering::Relaxed), 1);
    }

    /// Connects to `addr` and sends a PROXY protocol header naming `client`, as a balancer does.
    async fn through_balancer(addr: SocketAddr, client: &str) -> TcpStream {
        let client: SocketAddr = client.parse().unwrap();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let line = format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            client.ip(),
            addr.ip(),
            client.port(),
            addr.port()
        );
        tcp.write_all(line.as_bytes()).await.unwrap();
        tcp
    }

    /// Every connection comes from the balancer's address: the slots are shared by the
    /// addresses the headers name, so a crowd behind it does not push out a lone client.
    #[tokio::test]
    async fn behind_a_balancer_slots_are_shared_by_the_clients_addresses() {
        let proxy = ProxyProtocol::new("mqtts", &[]);
        let (mut incoming, addr, cert) = incoming_with(Some(proxy)).await;
        incoming.slots = Slots::new(4, Duration::from_millis(100));
        // The lone client's is the oldest of all.
        let mut lone = through_balancer(addr, "192.0.2.1:1000").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut crowd = Vec::new();
        for port in 1..=3 {
            crowd.push(through_balancer(addr, &format!("192.0.2.2:{port}")).await);
        }
        let honest = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let tcp = through_balancer(addr, "192.0.2.3:3000").await;
            handshake_over(cert, tcp).await.map(|_| ())
        });
        let (_, peer) = tokio::time::timeout(Duration::from_secs(3), incoming.next())
            .await
            .expect("the newcomer gets a slot");
        assert_eq!(
            peer,
            "192.0.2.3:3000".parse().unwrap(),
            "the header's address"
        );
        honest.await.unwrap().expect("its handshake");

        let mut byte = [0u8; 1];
        let lone_read = tokio::time::timeout(Duration::from_millis(100), lone.read(&mut byte));
        assert!(lone_read.await.is_err(), "the lone client keeps its slot");
        let mut closed = 0;
        for socket in &mut crowd {
            let read = tokio::time::timeout(Duration::from_millis(100), socket.read(&mut byte));
            if matches!(read.await, Ok(Ok(0) | Err(_))) {
                closed += 1;
            }
        }
        assert_eq!(closed, 1, "one of the crowd's gave its slot up");
    }

    #[tokio::test]
    async fn a_connection_without_the_expected_header_never_reaches_the_handshake() {
        let proxy = ProxyProtocol::new("mqtts", &[]);
        let refused = proxy.refused();
        let (mut incoming, addr, cert) = incoming_with(Some(proxy)).await;
        let direct = connect(cert.clone(), addr);
        let next = tokio::time::timeout(Duration::from_secs(5), incoming.next());
        let (direct, next) = tokio::join!(direct, next);
        // Its ClientHello was taken for a header, and refused.
        assert!(direct.is_err(), "the direct client's handshake failed");
        assert_eq!(refused.load(Ordering::Relaxed), 1);
        assert!(next.is_err(), "nothing was accepted");

        let tcp = through_balancer(addr, "192.0.2.9:9000").await;
        let (client, accepted) = tokio::join!(handshake_over(cert, tcp), incoming.next());
        client.expect("through the balancer");
        assert_eq!(accepted.1, "192.0.2.9:9000".parse().unwrap());
        assert_eq!(refused.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_stalled_handshake_is_dropped_without_holding_up_others() {
        let (mut incoming, addr, cert) = incoming().await;
        incoming.handshake_timeout = Duration::from_millis(200);

        // Connects and never says hello.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let honest = tokio::spawn(async move { connect(cert, addr).await.map(|_| ()) });

        let deadline = Duration::from_secs(5);
        let (_, peer) = tokio::time::timeout(deadline, incoming.next())
            .await
            .expect("the honest client is accepted while the silent one stalls");
        assert_ne!(Some(peer), silent.local_addr().ok());
        honest.await.unwrap().expect("honest handshake");

        // The silent one is closed once its time is up; `next` keeps reaping meanwhile and
        // must not yield it.
        let mut byte = [0u8; 1];
        let closed = tokio::select! {
            read = silent.read(&mut byte) => read,
            _ = incoming.next() => panic!("the silent client cannot complete a handshake"),
        };
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    }

    /// The TLS session stays in the stream; only its socket moves (decision 020), and it works
    /// from the runtime it moved to once the one that accepted it is gone.
    #[cfg(unix)]
    #[test]
    fn a_tls_connection_moved_to_another_runtime_works_once_the_first_is_gone() {
        use tokio::io::AsyncWriteExt;

        use crate::tcp::Rehome;

        let runtime = || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
        };
        let (first, second, clients) = (runtime(), runtime(), runtime());
        let (mut server, client) = first.block_on(async {
            let (mut incoming, addr, cert) = incoming().await;
            let client = clients.spawn(connect(cert, addr));
            let (server, _) = incoming.next().await;
            (server, client)
        });
        let mut client = clients.block_on(client).unwrap().expect("handshake");
        second.block_on(async { server.rehome() }).unwrap();
        // Left on the first runtime's driver, the socket would now fail every poll.
        drop(first);
        let client = clients.spawn(async move {
            client.write_all(b"ping").await.unwrap();
            client.flush().await.unwrap();
            let mut got = [0u8; 4];
            client.read_exact(&mut got).await.unwrap();
            got
        });
        second.block_on(async {
            let mut got = [0u8; 4];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
            server.write_all(b"pong").await.unwrap();
            server.flush().await.unwrap();
        });
        assert_eq!(&clients.block_on(client).unwrap(), b"pong");
    }
}
