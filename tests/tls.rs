//! TLS: MQTT over TLS (`--mqtts-addr`) and HTTPS (`--https-addr`) with a throwaway CA made at
//! test time, client certificates standing for principals (`client_cert_sha256`), a plain-TCP
//! client on the TLS port, and the startup errors for bad files and non-local addresses.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use common::mqtt::raw::build;
use common::mqtt::within;
use common::{Backend, TestApp, fresh_db, spawn_app_with, test_config};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use retaind::app::ServeConfig;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

const DEVICE_PASSWORD: &str = "s3cret-device";
const ADMIN_TOKEN: &str = "admin-token";

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    client_chain: Vec<CertificateDer<'static>>,
    client_key: PrivateKeyDer<'static>,
    /// A client certificate from the same CA that no principal names.
    stranger_chain: Vec<CertificateDer<'static>>,
    stranger_key: PrivateKeyDer<'static>,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "retaind test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>, purpose| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages.push(purpose);
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert, key)
        };
        let (server, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth);
        let (stranger, stranger_key) = leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth);

        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        // The chain file carries the leaf then the CA, as a real deployment's would.
        std::fs::write(dir.path().join("server.pem"), server.pem() + &ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
        let der_key = |key: &KeyPair| PrivateKeyDer::Pkcs8(key.serialize_der().into());
        Self {
            ca: ca.der().clone(),
            client_chain: vec![client.der().clone()],
            client_key: der_key(&client_key),
            stranger_chain: vec![stranger.der().clone()],
            stranger_key: der_key(&stranger_key),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn client_cert_sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.client_chain[0]))
    }

    /// A TLS client trusting the test CA, presenting `identity` if given.
    fn connector(
        &self,
        identity: Option<(&[CertificateDer<'static>], &PrivateKeyDer<'static>)>,
    ) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.to_vec(), key.clone_key())
                .unwrap(),
        };
        TlsConnector::from(Arc::new(config))
    }
}

/// A device with a password, a sensor known by its client certificate, and an admin with an
/// API token.
fn auth_toml(pki: &Pki) -> String {
    let device = retaind::auth::hash_password(DEVICE_PASSWORD);
    let sensor_cert = pki.client_cert_sha256();
    let admin_token = hex::encode(Sha256::digest(ADMIN_TOKEN));
    format!(
        r#"
[[principals]]
name = "device"
mqtt_username = "device"
mqtt_password_hash = "{device}"
[[principals.statements]]
effect = "Allow"
actions = ["iot:Connect"]
resources = ["*"]

[[principals]]
name = "sensor"
client_cert_sha256 = "{sensor_cert}"
[[principals.statements]]
effect = "Allow"
actions = ["iot:Connect"]
resources = ["client/sensor-*"]

[[principals]]
name = "admin"
api_tokens_sha256 = ["{admin_token}"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:*"]
resources = ["*"]
"#
    )
}

fn tls_config(pki: &Pki, database_url: &str) -> ServeConfig {
    std::fs::write(pki.path("auth.toml"), auth_toml(pki)).unwrap();
    let mut config = test_config(database_url);
    config.config = Some(pki.path("auth.toml"));
    config.mqtts_addr = Some("127.0.0.1:0".parse().unwrap());
    config.https_addr = Some("127.0.0.1:0".parse().unwrap());
    config.tls_cert = Some(pki.path("server.pem"));
    config.tls_key = Some(pki.path("server.key"));
    config.tls_client_ca = Some(pki.path("ca.pem"));
    config
}

async fn spawn_tls_app(pki: &Pki) -> TestApp {
    let db = fresh_db(Backend::Sqlite).await;
    let config = tls_config(pki, &db.url);
    spawn_app_with(db, config).await
}

fn mqtts_addr(app: &TestApp) -> SocketAddr {
    app.running
        .as_ref()
        .unwrap()
        .mqtts_addr
        .expect("MQTT over TLS is on")
}

fn https_addr(app: &TestApp) -> SocketAddr {
    app.running
        .as_ref()
        .unwrap()
        .https_addr
        .expect("HTTPS is on")
}

async fn tls_open(app: &TestApp, connector: &TlsConnector) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(mqtts_addr(app)).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    within("a TLS handshake", connector.connect(name, tcp))
        .await
        .expect("TLS handshake with the MQTT listener")
}

/// Sends `connect` over a new TLS connection and returns the MQTT 3.1.1 CONNACK's return code.
async fn connack_code(
    app: &TestApp,
    connector: &TlsConnector,
    connect: &[u8],
) -> (TlsStream<TcpStream>, u8) {
    let mut stream = tls_open(app, connector).await;
    stream.write_all(connect).await.unwrap();
    let mut ack = [0u8; 4];
    within("a CONNACK", stream.read_exact(&mut ack))
        .await
        .expect("a CONNACK, not a closed connection");
    assert_eq!(ack[..3], [0x20, 0x02, 0x00], "CONNACK header: {ack:02x?}");
    (stream, ack[3])
}

#[tokio::test]
async fn mqtt_over_tls_authenticates_username_and_password() {
    let pki = Pki::new();
    let app = spawn_tls_app(&pki).await;
    let plain = pki.connector(None);

    let login = build::connect_with_login("dev1", None, "device", DEVICE_PASSWORD.as_bytes());
    let (_stream, code) = connack_code(&app, &plain, &login).await;
    assert_eq!(code, 0x00, "accepted");

    let wrong = build::connect_with_login("dev1", None, "device", b"wrong");
    let (_, code) = connack_code(&app, &plain, &wrong).await;
    assert_eq!(code, 0x04, "bad user name or password");

    let (_, code) = connack_code(&app, &plain, &build::connect("dev1", true, 60, None)).await;
    assert_eq!(
        code, 0x05,
        "no certificate and no credentials: not authorized"
    );
    app.stop().await;
}

#[tokio::test]
async fn client_certificate_authenticates_as_its_principal() {
    let pki = Pki::new();
    let app = spawn_tls_app(&pki).await;
    let sensor = pki.connector(Some((&pki.client_chain, &pki.client_key)));

    let bare = build::connect("sensor-1", true, 60, None);
    let (mut stream, code) = connack_code(&app, &sensor, &bare).await;
    assert_eq!(code, 0x00, "the certificate stands in for credentials");
    // PINGREQ → PINGRESP: the session is live.
    stream.write_all(&[0xC0, 0x00]).await.unwrap();
    let mut pong = [0u8; 2];
    within("a PINGRESP", stream.read_exact(&mut pong))
        .await
        .unwrap();
    assert_eq!(pong, [0xD0, 0x00]);

    // The sensor's policy still applies: it may connect only as sensor-*.
    let (_, code) = connack_code(&app, &sensor, &build::connect("dev1", true, 60, None)).await;
    assert_eq!(code, 0x05, "client id outside the sensor's policy");

    // Credentials sent with the certificate must name the same principal.
    let login = build::connect_with_login("sensor-2", None, "device", DEVICE_PASSWORD.as_bytes());
    let (_, code) = connack_code(&app, &sensor, &login).await;
    assert_eq!(
        code, 0x05,
        "certificate of one principal, password of another"
    );

    // A certificate the CA signed but no principal names is worth nothing by itself...
    let stranger = pki.connector(Some((&pki.stranger_chain, &pki.stranger_key)));
    let (_, code) = connack_code(&app, &stranger, &bare).await;
    assert_eq!(code, 0x05, "unmapped certificate, no credentials");
    // ...and does not stand in the way of a password.
    let login = build::connect_with_login("dev1", None, "device", DEVICE_PASSWORD.as_bytes());
    let (_, code) = connack_code(&app, &stranger, &login).await;
    assert_eq!(code, 0x00, "unmapped certificate, good credentials");
    app.stop().await;
}

#[tokio::test]
async fn plain_tcp_client_on_the_tls_port_is_dropped_and_others_carry_on() {
    let pki = Pki::new();
    let app = spawn_tls_app(&pki).await;
    let plain = pki.connector(None);
    let login = build::connect_with_login("dev1", None, "device", DEVICE_PASSWORD.as_bytes());
    let (mut established, code) = connack_code(&app, &plain, &login).await;
    assert_eq!(code, 0x00);

    // MQTT bytes where a TLS ClientHello belongs: the server answers (at most) a TLS alert,
    // never a CONNACK, and closes.
    let mut confused = TcpStream::connect(mqtts_addr(&app)).await.unwrap();
    confused
        .write_all(&build::connect("confused", true, 60, None))
        .await
        .unwrap();
    let mut answer = Vec::new();
    within("the server to close", confused.read_to_end(&mut answer))
        .await
        .ok();
    assert_ne!(
        answer.first(),
        Some(&0x20),
        "no CONNACK over plain TCP: {answer:02x?}"
    );
    if let Some(first) = answer.first() {
        assert_eq!(*first, 0x15, "a TLS alert record: {answer:02x?}");
    }

    // The established session is unaffected, and new TLS clients still get in.
    established.write_all(&[0xC0, 0x00]).await.unwrap();
    let mut pong = [0u8; 2];
    within("a PINGRESP", established.read_exact(&mut pong))
        .await
        .unwrap();
    assert_eq!(pong, [0xD0, 0x00]);
    let login = build::connect_with_login("dev2", None, "device", DEVICE_PASSWORD.as_bytes());
    let (_, code) = connack_code(&app, &plain, &login).await;
    assert_eq!(code, 0x00);
    app.stop().await;
}

#[tokio::test]
async fn https_serves_the_api() {
    let pki = Pki::new();
    let app = spawn_tls_app(&pki).await;
    let addr = https_addr(&app);
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_der(&pki.ca).unwrap())
        .resolve("localhost", addr)
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", addr.port());

    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let publish = http
        .post(format!("{base}/topics/tls/check?retain=true"))
        .bearer_auth(ADMIN_TOKEN)
        .body("over https")
        .send()
        .await
        .unwrap();
    assert_eq!(publish.status(), 200, "{:?}", publish.text().await);
    let listed: serde_json::Value = http
        .get(format!("{base}/retainedMessage"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["retainedTopics"][0]["topic"], "tls/check",
        "{listed}"
    );

    let anonymous = http
        .get(format!("{base}/retainedMessage"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401, "the same auth as plain HTTP");
    app.stop().await;
}

#[tokio::test]
async fn unreadable_tls_files_stop_startup_naming_the_file() {
    let pki = Pki::new();
    let db = fresh_db(Backend::Sqlite).await;

    let mut config = tls_config(&pki, &db.url);
    config.tls_cert = Some(pki.path("missing.pem"));
    let message = start_error(&config).await;
    assert!(
        message.contains("--tls-cert") && message.contains("missing.pem"),
        "{message}"
    );

    let mut config = tls_config(&pki, &db.url);
    std::fs::write(pki.path("not-a-key.pem"), "hello").unwrap();
    config.tls_key = Some(pki.path("not-a-key.pem"));
    let message = start_error(&config).await;
    assert!(
        message.contains("--tls-key") && message.contains("not-a-key.pem"),
        "{message}"
    );

    let mut config = tls_config(&pki, &db.url);
    config.tls_client_ca = Some(pki.path("server.key"));
    let message = start_error(&config).await;
    assert!(
        message.contains("--tls-client-ca") && message.contains("server.key"),
        "{message}"
    );
}

#[tokio::test]
async fn anonymous_tls_listeners_must_be_local() {
    let pki = Pki::new();
    let db = fresh_db(Backend::Sqlite).await;
    for flag in ["--mqtts-addr", "--https-addr"] {
        let mut config = tls_config(&pki, &db.url);
        config.config = None;
        let everywhere = Some("0.0.0.0:0".parse().unwrap());
        match flag {
            "--mqtts-addr" => config.mqtts_addr = everywhere,
            _ => config.https_addr = everywhere,
        }
        let message = start_error(&config).await;
        assert!(
            message.contains(flag) && message.contains("loopback"),
            "{message}"
        );
    }
}

async fn start_error(config: &ServeConfig) -> String {
    match retaind::app::start(config, retaind::store::Clock::manual(common::T0_MS)).await {
        Ok(running) => {
            running.shutdown().await;
            panic!("retaind started");
        }
        Err(e) => e.to_string(),
    }
}
