//! Postgres over TLS, as managed databases require it: against a server of the test's own that
//! refuses plain connections, `sslmode=require` and `sslmode=verify-full` (with `sslrootcert`)
//! connect and serve; a certificate that does not verify, or a URL that does not ask for TLS,
//! stops the start with the cause named. Before 2026-12-06 retaind was built without TLS for
//! Postgres and could reach no such database.

mod common;

use std::time::Duration;

use common::postgres_tls::TlsPostgres;
use common::tls::LocalhostCert;
use common::{FreshDb, spawn_app_with, test_config};

async fn start_error(url: &str) -> String {
    let mut config = test_config(url);
    config.db_startup_wait = Duration::ZERO;
    match retaind::app::start(&config, retaind::store::Clock::System).await {
        Ok(_) => panic!("retaind started"),
        Err(e) => e.to_string(),
    }
}

/// Whether every connection retaind holds to `server` is encrypted (and there is one).
async fn all_encrypted(server: &TlsPostgres) -> bool {
    let url = server.url("127.0.0.1", "sslmode=require");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let (n, ssl): (i64, Option<bool>) = sqlx::query_as(
        "SELECT count(*), bool_and(s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.application_name = 'retaind'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    n > 0 && ssl == Some(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_that_requires_tls_is_reached_with_sslmode_require_and_verify_full() {
    let server = TlsPostgres::start();

    let url = server.url("127.0.0.1", "sslmode=require");
    let app = spawn_app_with(FreshDb::shared(&url), test_config(&url)).await;
    app.retain("tls%2Fcheck", "v1").await;
    assert_eq!(app.stored_payload("tls/check").await.unwrap(), b"v1");
    assert!(all_encrypted(&server).await);
    app.stop().await;

    // The server's name and certificate checked against the root given.
    let root = server.cert.cert_file();
    let params = format!("sslmode=verify-full&sslrootcert={}", root.display());
    let url = server.url("localhost", &params);
    let app = spawn_app_with(FreshDb::shared(&url), test_config(&url)).await;
    assert_eq!(app.stored_payload("tls/check").await.unwrap(), b"v1");
    app.retain("tls%2Fcheck", "v2").await;
    assert!(all_encrypted(&server).await);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_does_not_verify_or_a_url_without_tls_stops_the_start_with_the_cause() {
    let server = TlsPostgres::start();

    let stranger = LocalhostCert::new();
    let params = format!(
        "sslmode=verify-full&sslrootcert={}",
        stranger.cert_file().display()
    );
    let error = start_error(&server.url("localhost", &params)).await;
    assert!(error.to_lowercase().contains("certificate"), "{error}");

    // A root certificate file that is not there is named, at once (not taken for a database
    // that does not answer yet).
    let started = std::time::Instant::now();
    let error = start_error(&server.url(
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent/root.pem",
    ))
    .await;
    assert!(
        error.contains("sslrootcert /nonexistent/root.pem"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    // No sslmode: a plain connection, which this server refuses, and says why.
    let error = start_error(&server.url("127.0.0.1", "")).await;
    assert!(error.contains("no encryption"), "{error}");
}
