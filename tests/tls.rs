//! TLS: MQTT over TLS (`--mqtts-addr`) and HTTPS (`--https-addr`) with a throwaway CA made at
//! test time, client certificates standing for principals (`client_cert_sha256`) over MQTT/TLS,
//! the HTTPS API and MQTT over secure WebSocket, a plain-TCP client on the TLS port, and the
//! startup errors for bad files and non-local addresses.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::mqtt::raw::{build, until_reset};
use common::mqtt::within;
use common::mqtt::ws::RawWs;
use common::raw_http::{closed, exchange};
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
    /// The client certificate and its key in one PEM, as `reqwest::Identity` takes them.
    client_identity: String,
    /// A client certificate from the same CA that no principal names.
    stranger_chain: Vec<CertificateDer<'static>>,
    stranger_key: PrivateKeyDer<'static>,
    stranger_identity: String,
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
            client_identity: client.pem() + &client_key.serialize_pem(),
            stranger_chain: vec![stranger.der().clone()],
            stranger_key: der_key(&stranger_key),
            stranger_identity: stranger.pem() + &stranger_key.serialize_pem(),
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

/// A device with a password, a sensor known by its client certificate (which may connect as
/// sensor-*, and publish and read under sensors/), and an admin with an API token.
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
[[principals.statements]]
effect = "Allow"
actions = ["iot:Subscribe", "iot:Receive"]
resources = ["topicfilter/stall/#", "topic/stall/#"]

[[principals]]
name = "sensor"
client_cert_sha256 = "{sensor_cert}"
[[principals.statements]]
effect = "Allow"
actions = ["iot:Connect"]
resources = ["client/sensor-*"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:Publish", "iot:RetainPublish", "iot:GetRetainedMessage"]
resources = ["topic/sensors/#"]

[[principals]]
name = "admin"
api_tokens_sha256 = ["{admin_token}"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:*", "retaind:Metrics"]
resources = ["*"]
"#
    )
}

fn tls_config(pki: &Pki, database_url: &str) -> ServeConfig {
    std::fs::write(pki.path("auth.toml"), auth_toml(pki)).unwrap();
    let mut config = test_config(database_url);
    config.principals = Some(pki.path("auth.toml"));
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

/// An HTTPS client trusting the test CA, presenting `identity` (a PEM certificate and key) if
/// given, and the base URL of the HTTPS listener.
fn https_client(app: &TestApp, pki: &Pki, identity: Option<&str>) -> (reqwest::Client, String) {
    let addr = https_addr(app);
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_der(&pki.ca).unwrap())
        .resolve("localhost", addr);
    if let Some(pem) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    let base = format!("https://localhost:{}", addr.port());
    (builder.build().unwrap(), base)
}

async fn tls_open(app: &TestApp, connector: &TlsConnector) -> TlsStream<TcpStream> {
    tls_open_at(mqtts_addr(app), connector).await
}

async fn tls_open_at(addr: SocketAddr, connector: &TlsConnector) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    within("a TLS handshake", connector.connect(name, tcp))
        .await
        .expect("TLS handshake")
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

    // Nobody held every handshake slot, so none was given up; both listeners report it.
    let page = reqwest::Client::new()
        .get(format!("http://{}/metrics", app.http_addr))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for listener in ["mqtts", "https"] {
        let series = format!("retaind_tls_handshakes_given_up_total{{listener=\"{listener}\"}}");
        assert_eq!(common::metric_value(&page, &series), 0.0, "{page}");
    }
    app.stop().await;
}

#[tokio::test]
async fn https_serves_the_api() {
    let pki = Pki::new();
    let app = spawn_tls_app(&pki).await;
    let (http, base) = https_client(&app, &pki, None);

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

/// GetRetainedMessage over plain HTTP as the admin: what the store holds, whatever the
/// request under test did.
async fn stored(app: &TestApp, topic_encoded: &str) -> reqwest::Response {
    app.http
        .get(app.url(&format!("/retainedMessage/{topic_encoded}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
}

fn error_type(res: &reqwest::Response) -> Option<&str> {
    res.headers()
        .get("x-amzn-ErrorType")
        .and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn https_client_certificate_stands_for_its_principal() {
    let pki = Pki::new();
    let app = spawn_tls_app(&pki).await;
    let (sensor, base) = https_client(&app, &pki, Some(&pki.client_identity));

    let publish = sensor
        .post(format!("{base}/topics/sensors%2Ft1?retain=true"))
        .body("by certificate")
        .send()
        .await
        .unwrap();
    assert_eq!(publish.status(), 200, "{:?}", publish.text().await);
    let got = sensor
        .get(format!("{base}/retainedMessage/sensors%2Ft1"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    let got: serde_json::Value = got.json().await.unwrap();
    assert_eq!(got["payload"], B64.encode("by certificate"), "{got}");
    app.stop().await;
}

#[tokio::test]
async fn https_unmapped_client_certificate_is_unauthorized() {
    let pki = Pki::new();
    let app = spawn_tls_app(&pki).await;
    let (stranger, base) = https_client(&app, &pki, Some(&pki.stranger_identity));

    let publish = stranger
        .post(format!("{base}/topics/sensors%2Ft1?retain=true"))
        .body("from a stranger")
        .send()
        .await
        .unwrap();
    assert_eq!(publish.status(), 401);
    assert_eq!(error_type(&publish), Some("UnauthorizedException"));
    let body: serde_json::Value = publish.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("not mapped"),
        "{body}"
    );
    assert_eq!(stored(&app, "sensors%2Ft1").await.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn https_client_certificate_principal_keeps_its_policy() {
    let pki = Pki::new();
    let app = spawn_tls_app(&pki).await;
    let (sensor, base) = https_client(&app, &pki, Some(&pki.client_identity));

    // The sensor may publish under sensors/ only.
    let publish = sensor
        .post(format!("{base}/topics/config%2Fall?retain=true"))
        .body("not the sensor's")
        .send()
        .await
        .unwrap();
    assert_eq!(publish.status(), 403);
    assert_eq!(error_type(&publish), Some("ForbiddenException"));
    assert_eq!(stored(&app, "config%2Fall").await.status(), 404);
    app.stop().await;
}

/// A browser holding a mapped certificate must not publish for a page on another site.
#[tokio::test]
async fn https_client_certificate_does_not_authenticate_cross_site_browser_requests() {
    let pki = Pki::new();
    let app = spawn_tls_app(&pki).await;
    let (sensor, base) = https_client(&app, &pki, Some(&pki.client_identity));
    let url = format!("{base}/topics/sensors%2Ft1?retain=true");
    for (header, value) in [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
        ("origin", "https://elsewhere.example"),
    ] {
        let publish = sensor
            .post(&url)
            .header(header, value)
            .body("forged")
            .send()
            .await
            .unwrap();
        assert_eq!(publish.status(), 403, "{header}: {value}");
        assert_eq!(error_type(&publish), Some("ForbiddenException"));
        assert_eq!(stored(&app, "sensors%2Ft1").await.status(), 404);
    }
    // The same request from the server's own pages is the certificate's principal.
    let publish = sensor
        .post(&url)
        .header("sec-fetch-site", "same-origin")
        .body("own page")
        .send()
        .await
        .unwrap();
    assert_eq!(publish.status(), 200);
    assert_eq!(stored(&app, "sensors%2Ft1").await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn https_authorization_header_wins_over_client_certificate() {
    let pki = Pki::new();
    let app = spawn_tls_app(&pki).await;
    let (sensor, base) = https_client(&app, &pki, Some(&pki.client_identity));

    // A bad token is an error, not a fallback to the certificate's principal.
    let publish = sensor
        .post(format!("{base}/topics/sensors%2Ft1?retain=true"))
        .bearer_auth("not-a-token")
        .body("with a wrong token")
        .send()
        .await
        .unwrap();
    assert_eq!(publish.status(), 403);
    assert_eq!(error_type(&publish), Some("ForbiddenException"));
    assert_eq!(stored(&app, "sensors%2Ft1").await.status(), 404);

    // A good token is its own principal: the admin may publish where the sensor may not.
    let publish = sensor
        .post(format!("{base}/topics/config%2Fall?retain=true"))
        .bearer_auth(ADMIN_TOKEN)
        .body("by the admin")
        .send()
        .await
        .unwrap();
    assert_eq!(publish.status(), 200, "{:?}", publish.text().await);
    assert_eq!(stored(&app, "config%2Fall").await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn plain_http_without_credentials_stays_unauthorized() {
    let pki = Pki::new();
    let app = spawn_tls_app(&pki).await;
    let publish = app
        .publish("/topics/sensors%2Ft1?retain=true", "anyone")
        .await;
    assert_eq!(publish.status(), 401);
    assert_eq!(error_type(&publish), Some("UnauthorizedException"));
    let body: serde_json::Value = publish.json().await.unwrap();
    assert_eq!(body["message"], "Missing authentication", "{body}");
    assert_eq!(stored(&app, "sensors%2Ft1").await.status(), 404);
    app.stop().await;
}

/// MQTT over secure WebSocket on the HTTPS listener, presenting `identity` if given.
async fn wss_open(
    app: &TestApp,
    pki: &Pki,
    identity: Option<(&[CertificateDer<'static>], &PrivateKeyDer<'static>)>,
) -> RawWs<TlsStream<TcpStream>> {
    let tls = tls_open_at(https_addr(app), &pki.connector(identity)).await;
    let (ws, head) = RawWs::upgrade(tls, "localhost", "mqtt").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    ws
}

#[tokio::test]
async fn wss_client_certificate_stands_for_its_principal() {
    let pki = Pki::new();
    let app = spawn_tls_app(&pki).await;
    let mut ws = wss_open(&app, &pki, Some((&pki.client_chain, &pki.client_key))).await;

    ws.frame(true, 2, &build::connect("sensor-ws", true, 60, None))
        .await;
    assert_eq!(
        ws.packet().await,
        (0x20, vec![0, 0]),
        "accepted, no password"
    );
    let publish = build::publish("sensors/ws", 1, true, false, 7, None, b"over wss");
    ws.frame(true, 2, &publish).await;
    assert_eq!(ws.packet().await, (0x40, vec![0, 7]), "PUBACK");

    let got = stored(&app, "sensors%2Fws").await;
    assert_eq!(got.status(), 200);
    let got: serde_json::Value = got.json().await.unwrap();
    assert_eq!(got["payload"], B64.encode("over wss"), "{got}");
    app.stop().await;
}

/// A page on another site must not connect as the certificate's principal: the upgrade goes
/// through, without the certificate's identity, so its CONNECT needs credentials.
#[tokio::test]
async fn wss_client_certificate_does_not_count_for_a_cross_site_upgrade() {
    let pki = Pki::new();
    let app = spawn_tls_app(&pki).await;
    let cert = Some((&pki.client_chain[..], &pki.client_key));
    for headers in [
        &[
            ("Origin", "https://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
        ][..],
        &[("Sec-Fetch-Site", "same-site")],
        &[("Origin", "https://evil.example")],
    ] {
        let tls = tls_open_at(https_addr(&app), &pki.connector(cert)).await;
        let (mut ws, head) = RawWs::upgrade_with(tls, "localhost", "mqtt", headers).await;
        assert!(head.starts_with("http/1.1 101"), "{headers:?}: {head}");
        ws.frame(true, 2, &build::connect("sensor-ws", true, 60, None))
            .await;
        assert_eq!(
            ws.packet().await,
            (0x20, vec![0, 0x05]),
            "{headers:?}: not authorized without credentials"
        );
    }

    // With credentials in CONNECT, a page on another site connects as their principal.
    let tls = tls_open_at(https_addr(&app), &pki.connector(cert)).await;
    let headers = [
        ("Origin", "https://evil.example"),
        ("Sec-Fetch-Site", "cross-site"),
    ];
    let (mut ws, _) = RawWs::upgrade_with(tls, "localhost", "mqtt", &headers).await;
    let login = build::connect_with_login("device-ws", None, "device", DEVICE_PASSWORD.as_bytes());
    ws.frame(true, 2, &login).await;
    assert_eq!(ws.packet().await, (0x20, vec![0, 0]));

    // The server's own pages keep the certificate.
    let tls = tls_open_at(https_addr(&app), &pki.connector(cert)).await;
    let headers = [
        ("Origin", "https://localhost"),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    let (mut ws, _) = RawWs::upgrade_with(tls, "localhost", "mqtt", &headers).await;
    ws.frame(true, 2, &build::connect("sensor-ws", true, 60, None))
        .await;
    assert_eq!(ws.packet().await, (0x20, vec![0, 0]));
    app.stop().await;
}

#[tokio::test]
async fn wss_unmapped_client_certificate_without_password_is_refused() {
    let pki = Pki::new();
    let app = spawn_tls_app(&pki).await;
    let stranger = Some((&pki.stranger_chain[..], &pki.stranger_key));
    let mut ws = wss_open(&app, &pki, stranger).await;
    ws.frame(true, 2, &build::connect("sensor-ws", true, 60, None))
        .await;
    assert_eq!(
        ws.packet().await,
        (0x20, vec![0, 0x05]),
        "not authorized, as over MQTT/TLS"
    );

    // No certificate at all: the same.
    let mut ws = wss_open(&app, &pki, None).await;
    ws.frame(true, 2, &build::connect("sensor-ws", true, 60, None))
        .await;
    assert_eq!(ws.packet().await, (0x20, vec![0, 0x05]));
    app.stop().await;
}

/// HTTPS connections are served by the same loop as plain HTTP: its timeouts and its answers
/// in place of hyper's refusals hold there too.
#[tokio::test]
async fn https_connections_have_the_http_timeouts_and_error_shape() {
    const HEADER: Duration = Duration::from_millis(300);
    let pki = Pki::new();
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = tls_config(&pki, &db.url);
    config.http_header_timeout = HEADER;
    let app = spawn_app_with(db, config).await;

    let mut partial = tls_open_at(https_addr(&app), &pki.connector(None)).await;
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    assert!(closed(&mut partial).await >= HEADER);

    let mut malformed = tls_open_at(https_addr(&app), &pki.connector(None)).await;
    let res = exchange(&mut malformed, b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n").await;
    res.assert_error(400, "InvalidRequestException", "not valid HTTP/1.1");
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
        config.principals = None;
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

/// Slow subscribers over TLS: a client that stops reading is reset within the write
/// timeout and a tenth of it (plus room for a busy machine) of the moment it last took data;
/// what retaind's socket buffers hold does not delay it.
#[tokio::test]
async fn a_tls_subscriber_that_stops_reading_is_reset_within_the_timeout() {
    let pki = Pki::new();
    let db = fresh_db(Backend::Sqlite).await;
    let mut config = tls_config(&pki, &db.url);
    config.mqtt_write_timeout = Duration::from_secs(1);
    let app = spawn_app_with(db, config).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let tcp = socket.connect(mqtts_addr(&app)).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = pki.connector(None).connect(name, tcp).await.unwrap();
    let login = build::connect_with_login("stalled", None, "device", DEVICE_PASSWORD.as_bytes());
    stream.write_all(&login).await.unwrap();
    let mut ack = [0u8; 4];
    within("a CONNACK", stream.read_exact(&mut ack))
        .await
        .unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0]);
    stream
        .write_all(&build::subscribe(1, "stall/#", 0, None))
        .await
        .unwrap();
    let mut suback = [0u8; 5];
    within("a SUBACK", stream.read_exact(&mut suback))
        .await
        .unwrap();
    assert_eq!(suback, [0x90, 3, 0, 1, 0]);

    let (http, base) = (app.http.clone(), app.base.clone());
    let publisher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        loop {
            tick.tick().await;
            let _ = http
                .post(format!("{base}/topics/stall%2Fload"))
                .bearer_auth(ADMIN_TOKEN)
                .body(vec![b'x'; 1024])
                .send()
                .await;
        }
    });
    let stalled = until_reset(stream.get_ref().0).await;
    publisher.abort();
    let waited = stalled.reset - stalled.last_data;
    assert!(
        (Duration::from_secs(1)..=Duration::from_millis(1400)).contains(&waited),
        "reset {waited:?} after the client last took data"
    );
}

/// A reload (SIGHUP) reads the certificate and key again: handshakes after it get the new
/// certificate, a connection made before it carries on, and a file that does not load is
/// refused with the certificate in force kept.
#[tokio::test]
async fn a_reload_swaps_the_certificate_for_new_handshakes_and_refuses_a_bad_one() {
    let pki = Pki::new();
    let app = spawn_tls_app(&pki).await;
    let running = app.running.as_ref().unwrap();
    let mut before = tls_open(&app, &pki.connector(None)).await;

    // A certificate from another CA, as a renewal from a new issuer would be.
    let renewed = Pki::new();
    for file in ["server.pem", "server.key"] {
        std::fs::copy(renewed.path(file), pki.path(file)).unwrap();
    }
    let done = running.reload().expect("the reload");
    assert_eq!(done.tls_cert, Some(pki.path("server.pem")));
    let addr = mqtts_addr(&app);
    let handshake = |connector: TlsConnector| async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        within("a TLS handshake", connector.connect(name, tcp)).await
    };
    assert!(handshake(renewed.connector(None)).await.is_ok());
    assert!(
        handshake(pki.connector(None)).await.is_err(),
        "the old certificate is gone"
    );

    // The connection made before the reload still serves MQTT.
    let login = build::connect_with_login("dev-1", None, "device", DEVICE_PASSWORD.as_bytes());
    before.write_all(&login).await.unwrap();
    let mut ack = [0u8; 4];
    within("a CONNACK", before.read_exact(&mut ack))
        .await
        .expect("a CONNACK on the connection made before the reload");
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);

    std::fs::write(pki.path("server.pem"), "not a certificate").unwrap();
    let refused = running
        .reload()
        .expect_err("a bad certificate file")
        .to_string();
    assert!(refused.contains("server.pem"), "{refused}");
    assert!(
        handshake(renewed.connector(None)).await.is_ok(),
        "the renewed one stays"
    );
}
