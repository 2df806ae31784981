//! Nodes reaching a NATS that asks for credentials or TLS, as production ones do: a user and
//! password or a token in the URL (async-nats parses them but does not send them), a CA of the
//! operator's own and a client certificate, a credentials file of decentralized accounts
//! (replaced before its JWT expires) and an NKey seed. Credentials never reach the log; wrong
//! ones stop the node at start with NATS's reason.

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

/// NATS's decentralized accounts, made by hand as `nsc` would: an operator, an account with
/// JetStream that the server preloads, and users signed by the account.
mod accounts {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use nkeys::KeyPair;
    use serde_json::{Value, json};

    /// A JWT of `kind` for `subject`, signed by `issuer`, expiring at `exp` (Unix seconds).
    pub fn jwt(issuer: &KeyPair, subject: &str, kind: Value, exp: Option<u64>) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut claims = json!({
            "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
            "iat": now,
            "iss": issuer.public_key(),
            "sub": subject,
            "name": &subject[..8],
            "nats": kind,
        });
        if let Some(exp) = exp {
            claims["exp"] = json!(exp);
        }
        let head = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{head}.{body}");
        let signature = URL_SAFE_NO_PAD.encode(issuer.sign(signed.as_bytes()).unwrap());
        format!("{signed}.{signature}")
    }

    pub struct Operator {
        pub account: KeyPair,
        /// nats-server's configuration: the operator and its one account.
        pub config: String,
    }

    impl Operator {
        pub fn new() -> Self {
            let operator = KeyPair::new_operator();
            let account = KeyPair::new_account();
            let unlimited = json!({
                "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                "wildcards": true, "conn": -1, "leaf": -1,
                "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
            });
            let operator_jwt = jwt(
                &operator,
                &operator.public_key(),
                json!({"type": "operator", "version": 2}),
                None,
            );
            let account_jwt = jwt(
                &operator,
                &account.public_key(),
                json!({"type": "account", "version": 2, "limits": unlimited}),
                None,
            );
            // JetStream in operator mode needs a system account.
            let system = KeyPair::new_account();
            let system_jwt = jwt(
                &operator,
                &system.public_key(),
                json!({"type": "account", "version": 2}),
                None,
            );
            let config = format!(
                "operator: {operator_jwt}\nsystem_account: {system}\nresolver: MEMORY\n\
                 resolver_preload: {{\n  {system}: {system_jwt}\n  {account}: {account_jwt}\n}}\n",
                system = system.public_key(),
                account = account.public_key(),
            );
            Self { account, config }
        }
    }

    /// A credentials file's text for a new user of `account`, its JWT expiring at `exp`.
    pub fn creds(account: &KeyPair, exp: Option<u64>) -> String {
        let user = KeyPair::new_user();
        let user_jwt = jwt(
            account,
            &user.public_key(),
            json!({"type": "user", "version": 2, "pub": {}, "sub": {},
                   "subs": -1, "data": -1, "payload": -1}),
            exp,
        );
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        )
    }
}

#[tokio::test]
async fn nodes_join_through_a_nats_with_decentralized_accounts_by_credentials_file() {
    let dir = tempfile::tempdir().unwrap();
    let operator = accounts::Operator::new();
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, &operator.config).unwrap();
    let nats = Nats::start_with(&["-c", &conf.display().to_string()]).await;
    let url = nats.url();
    let creds = dir.path().join("node.creds");
    std::fs::write(&creds, accounts::creds(&operator.account, None)).unwrap();
    let [a, b] = two_nodes(&url, |c| c.cluster_creds = Some(creds.clone())).await;
    routes(&a, &b).await;

    // A user of an account the server does not know is refused, with NATS's reason.
    let stranger = dir.path().join("stranger.creds");
    let unknown = nkeys::KeyPair::new_account();
    let text = accounts::creds(&unknown, None);
    let seed = text
        .lines()
        .find(|l| l.starts_with("SU"))
        .unwrap()
        .to_owned();
    std::fs::write(&stranger, text).unwrap();
    let stranger = stranger.display().to_string();
    let printed = refused(&url, &["--cluster-creds", &stranger]).await;
    assert!(
        printed.to_lowercase().contains("authorization"),
        "{printed}"
    );
    assert!(!printed.contains(&seed), "the seed is not shown: {printed}");
    // A file that is no credentials file is named, at once, with what is wrong.
    let nkey = dir.path().join("bare.nk");
    std::fs::write(&nkey, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    let nkey = nkey.display().to_string();
    let printed = refused(&url, &["--cluster-creds", &nkey]).await;
    assert!(
        printed.contains(&format!("--cluster-creds {nkey}: no user JWT")),
        "{printed}"
    );
    // Credentials in the URL besides: two identities, refused rather than one ignored.
    let with_user = format!("nats://svc:pw@127.0.0.1:{}", nats.port);
    let creds = creds.display().to_string();
    let printed = refused(&with_user, &["--cluster-creds", &creds]).await;
    assert!(
        printed.contains("--cluster-creds and credentials in --cluster-url are two identities"),
        "{printed}"
    );
    let printed = refused(&url, &["--cluster-creds", &creds, "--cluster-nkey", &nkey]).await;
    assert!(
        printed.contains("--cluster-creds and --cluster-nkey are two identities"),
        "{printed}"
    );
}

#[tokio::test]
async fn nodes_join_through_a_nats_that_knows_them_by_nkey() {
    let dir = tempfile::tempdir().unwrap();
    let user = nkeys::KeyPair::new_user();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{ users = [ {{ nkey: {} }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let nats = Nats::start_with(&["-c", &conf.display().to_string()]).await;
    let seed = dir.path().join("node.nk");
    std::fs::write(&seed, format!("{}\n", user.seed().unwrap())).unwrap();
    let [a, b] = two_nodes(&nats.url(), |c| c.cluster_nkey = Some(seed.clone())).await;
    routes(&a, &b).await;

    let other = dir.path().join("other.nk");
    std::fs::write(&other, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    let printed = refused(
        &nats.url(),
        &["--cluster-nkey", &other.display().to_string()],
    )
    .await;
    assert!(
        printed.to_lowercase().contains("authorization"),
        "{printed}"
    );
}

/// Connections nats-server closed, with why, from its monitoring port.
async fn closed_reasons(monitor: u16) -> Vec<String> {
    let page: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{monitor}/connz?state=closed"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    page["connections"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|c| c["reason"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_credentials_file_replaced_before_its_jwt_expires_is_what_the_node_reconnects_with() {
    let dir = tempfile::tempdir().unwrap();
    let operator = accounts::Operator::new();
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, &operator.config).unwrap();
    let monitor = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let nats = Nats::start_with(&[
        "-c",
        &conf.display().to_string(),
        "-m",
        &monitor.to_string(),
    ])
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiring = dir.path().join("a.creds");
    std::fs::write(&expiring, accounts::creds(&operator.account, Some(now + 6))).unwrap();
    let lasting = dir.path().join("b.creds");
    std::fs::write(&lasting, accounts::creds(&operator.account, None)).unwrap();
    let db = fresh_db(Backend::Postgres).await;
    let shared = FreshDb::shared(&db.url);
    let mut nodes = Vec::new();
    for (db, creds) in [(db, &expiring), (shared, &lasting)] {
        let mut config = test_config(&db.url.clone());
        config.cluster_url = Some(nats.url());
        config.cluster_creds = Some(creds.clone());
        nodes.push(spawn_app_with(db, config).await);
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    routes(a, b).await;

    // The operator puts a new file in place (written aside, then renamed, as rotation tools
    // do) before the old JWT runs out.
    let fresh = dir.path().join("a.creds.new");
    std::fs::write(&fresh, accounts::creds(&operator.account, None)).unwrap();
    std::fs::rename(&fresh, &expiring).unwrap();

    // The server ends A's connections when their JWT expires...
    tokio::time::timeout(Duration::from_secs(15), async {
        while !closed_reasons(monitor)
            .await
            .iter()
            .any(|r| r.contains("Expired"))
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the server ends the connections of an expired JWT");
    // ...and A comes back with the new file: routing works both ways again.
    routes(a, b).await;
    routes(b, a).await;
}
