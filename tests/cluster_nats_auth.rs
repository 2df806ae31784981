//! Nodes reaching a NATS that asks for credentials or TLS, as production ones do: a user and
//! password or a token in the URL (async-nats parses them but does not send them), a CA of the
//! operator's own and a client certificate. Credentials never reach the log; wrong ones stop
//! the node at start with NATS's reason.

mod common;

use std::path::Path;
use std::time::Duration;

use common::mqtt::{Qos5, V5, v5_options};
use common::nats::Nats;
use common::{Backend, FreshDb, TestApp, fresh_db, spawn_app_with, test_config};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use retaind::app::ServeConfig;

/// Two nodes of one service on `url`, each with `set` applied to its settings.
async fn two_nodes(url: &str, set: impl Fn(&mut ServeConfig)) -> [TestApp; 2] {
    let db = fresh_db(Backend::Postgres).await;
    let shared = FreshDb::shared(&db.url);
    let mut nodes = Vec::new();
    for db in [db, shared] {
        let mut config = test_config(&db.url.clone());
        config.cluster_url = Some(url.to_owned());
        set(&mut config);
        nodes.push(spawn_app_with(db, config).await);
    }
    <[TestApp; 2]>::try_from(nodes).ok().unwrap()
}

/// A message published on A reaches a subscriber on B.
async fn routes(a: &TestApp, b: &TestApp) {
    let (mut on_b, _) = V5::connect(v5_options(b, "on-b")).await;
    on_b.subscribe("auth/#", Qos5::AtLeastOnce).await;
    let (mut on_a, _) = V5::connect(v5_options(a, "on-a")).await;
    // Until B's interest reaches A, A sends nothing: publish until one arrives.
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            on_a.publish("auth/x", Qos5::AtLeastOnce, false, b"across")
                .await;
            if let Ok(p) =
                tokio::time::timeout(Duration::from_millis(200), on_b.next_publish()).await
            {
                return p;
            }
        }
    })
    .await
    .expect("a message across the nodes");
    assert_eq!(&got.payload[..], b"across");
}

/// A node started on `url` (and `args`) that must refuse to start: what it printed.
async fn refused(url: &str, args: &[&str]) -> String {
    let db = fresh_db(Backend::Postgres).await;
    let mut all = vec!["--cluster-url", url, "--db-startup-wait", "1s"];
    all.extend_from_slice(args);
    let (status, printed) = common::process::refused_start_with(&db.url, &all).await;
    assert!(!status.success(), "{printed}");
    printed
}

#[tokio::test]
async fn nodes_join_through_a_nats_that_asks_for_a_user_and_password() {
    let nats = Nats::start_with(&["--user", "svc", "--pass", "p@ss:w/rd"]).await;
    // Reserved characters of a password are percent-encoded in the URL.
    let url = format!("nats://svc:p%40ss%3Aw%2Frd@127.0.0.1:{}", nats.port);
    let [a, b] = two_nodes(&url, |_| {}).await;
    routes(&a, &b).await;

    let wrong = format!("nats://svc:not-it@127.0.0.1:{}", nats.port);
    let printed = refused(&wrong, &[]).await;
    assert!(
        printed.to_lowercase().contains("authorization"),
        "says why: {printed}"
    );
    assert!(printed.contains("nats://***@127.0.0.1"), "{printed}");
    assert!(
        !printed.contains("not-it"),
        "the password is not shown: {printed}"
    );
}

#[tokio::test]
async fn nodes_join_through_a_nats_that_asks_for_a_token() {
    let nats = Nats::start_with(&["--auth", "t0ken-of-the-service"]).await;
    let url = format!("nats://t0ken-of-the-service@127.0.0.1:{}", nats.port);
    let [a, b] = two_nodes(&url, |_| {}).await;
    routes(&a, &b).await;

    let printed = refused(&format!("nats://127.0.0.1:{}", nats.port), &[]).await;
    assert!(
        printed.to_lowercase().contains("authorization"),
        "{printed}"
    );
}

/// A CA, a certificate for 127.0.0.1 for the server and one for the client, as PEM files.
fn pki(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for (name, names, purpose) in [
        (
            "server",
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        ("client", vec![], ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages.push(purpose);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

#[tokio::test]
async fn nodes_join_through_a_nats_with_tls_of_a_private_ca_that_verifies_clients() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let file = |name: &str| dir.path().join(name).display().to_string();
    let nats = Nats::start_with(&[
        "--tls",
        "--tlscert",
        &file("server.pem"),
        "--tlskey",
        &file("server.key"),
        "--tlscacert",
        &file("ca.pem"),
        "--tlsverify",
    ])
    .await;
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let [a, b] = two_nodes(&url, |c| {
        c.cluster_tls_ca = Some(dir.path().join("ca.pem"));
        c.cluster_tls_cert = Some(dir.path().join("client.pem"));
        c.cluster_tls_key = Some(dir.path().join("client.key"));
    })
    .await;
    routes(&a, &b).await;

    // Without the client certificate the server refuses the node.
    let printed = refused(&url, &["--cluster-tls-ca", &file("ca.pem")]).await;
    assert!(printed.contains("cannot reach NATS"), "{printed}");
    // A file that is not there is named, at once.
    let missing = file("nowhere.pem");
    let printed = refused(&url, &["--cluster-tls-ca", &missing]).await;
    assert!(
        printed.contains(&format!("--cluster-tls-ca {missing}: No such file")),
        "{printed}"
    );
}
