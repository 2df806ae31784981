//! A server certificate for localhost made at test time, the settings that serve MQTT over TLS
//! and HTTPS with it, and a TLS client that trusts it.

use std::path::PathBuf;
use std::sync::Arc;

use retaind::app::ServeConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// A self-signed certificate for `localhost` and its key, as PEM files in a directory that
/// lives as long as this.
pub struct LocalhostCert {
    dir: tempfile::TempDir,
    pub der: CertificateDer<'static>,
}

impl LocalhostCert {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        Self {
            dir,
            der: cert.der().clone(),
        }
    }

    pub fn cert_file(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// Turns on MQTT over TLS and HTTPS, on free ports, with this certificate.
    pub fn serve_tls(&self, config: &mut ServeConfig) {
        config.mqtts_addr = Some("127.0.0.1:0".parse().unwrap());
        config.https_addr = Some("127.0.0.1:0".parse().unwrap());
        config.tls_cert = Some(self.cert_file());
        config.tls_key = Some(self.key_file());
    }

    /// A TLS client that trusts this certificate alone.
    pub fn connector(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    /// A TLS connection to `localhost` at `addr`.
    pub async fn connect(
        &self,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        self.connector().connect(name, tcp).await
    }
}
