//! `retaind retained export|import|delete` over a running service's HTTP API, as the real
//! binary, against both stores: a bearer token, SigV4 with credentials from the environment or
//! a profile, and what the principal's policy refuses.

#[path = "admin/cli.rs"]
mod cli;
mod common;

use cli::{messages, ndjson, retained};
use common::{Backend, FreshDb, TestApp, fresh_db, spawn_app_with, test_config};
use retaind::admin::Line;
use sha2::{Digest, Sha256};

const TOKEN: &str = "admin-token-0123456789";
const READER_TOKEN: &str = "reader-token-0123456789";
const ACCESS_KEY: &str = "AKIDADMINEXAMPLE";
const SECRET_KEY: &str = "admin/secret/EXAMPLEKEY";

fn principals() -> String {
    let hash = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    format!(
        r#"
[[principals]]
name = "admin"
api_tokens_sha256 = ["{admin}"]
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"
[[principals.statements]]
effect = "Allow"
actions = ["*"]
resources = ["*"]

[[principals]]
name = "reader"
api_tokens_sha256 = ["{reader}"]
[[principals.statements]]
effect = "Allow"
actions = ["iot:GetRetainedMessage", "iot:ListRetainedMessages"]
resources = ["*"]
"#,
        admin = hash(TOKEN),
        reader = hash(READER_TOKEN),
    )
}

/// The server with the principals above, on `db`.
async fn spawn_secured(db: FreshDb, dir: &std::path::Path) -> TestApp {
    let path = dir.join("auth.toml");
    std::fs::write(&path, principals()).unwrap();
    let mut config = test_config(&db.url);
    config.principals = Some(path);
    spawn_app_with(db, config).await
}

/// Lines without their lastModifiedTime, which a service stamps on publish.
fn unstamped(text: &str) -> Vec<Line> {
    text.lines()
        .map(|l| Line {
            last_modified_time: 0,
            ..Line::parse(l).unwrap()
        })
        .collect()
}

async fn over_http_with_a_token_import_export_and_delete_work_as_the_user_may(backend: Backend) {
    let home = tempfile::tempdir().unwrap();
    let app = spawn_secured(fresh_db(backend).await, home.path()).await;
    let file = home.path().join("in.ndjson");
    std::fs::write(&file, ndjson(&messages(30))).unwrap();
    let import = ["import", file.to_str().unwrap(), "--endpoint", &app.base];

    // A principal that may not publish: 403, nothing stored.
    let run = retained(
        &[&import[..], &["--token", READER_TOKEN]].concat(),
        &[],
        home.path(),
        None,
    )
    .await;
    let report = run.failure();
    assert!(
        report.contains("Publish answered HTTP 403 ForbiddenException"),
        "{report}"
    );
    assert_eq!(app.store().count(None).await.unwrap(), 0);

    let run = retained(&import, &[("RETAIND_API_TOKEN", TOKEN)], home.path(), None).await;
    assert!(run.report().contains("wrote 30, kept 0"), "{}", run.stderr);
    // Again: the service's copies are newer (stamped on publish), so nothing is written.
    let run = retained(&import, &[("RETAIND_API_TOKEN", TOKEN)], home.path(), None).await;
    assert!(run.report().contains("wrote 0, kept 30"), "{}", run.stderr);

    let run = retained(
        &["export", "--endpoint", &app.base, "--token", TOKEN],
        &[],
        home.path(),
        None,
    )
    .await;
    run.report();
    let exported = unstamped(&run.stdout);
    let mut wanted = unstamped(&ndjson(&messages(30)));
    // The expiry travels as seconds left, so the service's instant is its own clock's.
    for line in exported.iter().zip(wanted.iter_mut()) {
        line.1.message_expires_at = line.0.message_expires_at;
    }
    assert_eq!(exported, wanted);

    let delete = [
        "delete",
        "--endpoint",
        &app.base,
        "--token",
        TOKEN,
        "--topic-filter",
        "fleet/+/dev-1",
    ];
    let run = retained(&delete, &[], home.path(), None).await;
    assert!(
        run.failure().contains("refusing to delete 1"),
        "{}",
        run.stderr
    );
    let run = retained(&[&delete[..], &["--yes"]].concat(), &[], home.path(), None).await;
    assert!(
        run.report().contains("deleted 1 retained messages"),
        "{}",
        run.stderr
    );
    assert_eq!(app.store().count(None).await.unwrap(), 29);
}

async fn over_http_sigv4_signs_with_the_environment_or_a_profile(backend: Backend) {
    let home = tempfile::tempdir().unwrap();
    let app = spawn_secured(fresh_db(backend).await, home.path()).await;
    app.store()
        .write(retaind::store::Write::Put(messages(1).remove(0)))
        .await
        .unwrap();
    let export = ["export", "--endpoint", &app.base, "--sigv4"];
    let env = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", "eu-west-1"),
    ];
    let run = retained(&export, &env, home.path(), None).await;
    assert!(
        run.report().contains("exported 1 retained messages"),
        "{}",
        run.stderr
    );

    std::fs::create_dir_all(home.path().join(".aws")).unwrap();
    std::fs::write(
        home.path().join(".aws/credentials"),
        format!("[default]\naws_access_key_id = WRONG\naws_secret_access_key = wrong\n\n[retaind]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
    )
    .unwrap();
    let run = retained(
        &[&export[..], &["--region", "us-east-1"]].concat(),
        &[("AWS_PROFILE", "retaind")],
        home.path(),
        None,
    )
    .await;
    assert!(
        run.report().contains("exported 1 retained messages"),
        "{}",
        run.stderr
    );
    // The default profile's key is unknown to the service.
    let run = retained(
        &[&export[..], &["--region", "us-east-1"]].concat(),
        &[],
        home.path(),
        None,
    )
    .await;
    assert!(
        run.failure().contains("403 ForbiddenException"),
        "{}",
        run.stderr
    );
    let run = retained(&export, &[("AWS_PROFILE", "retaind")], home.path(), None).await;
    assert!(run.failure().contains("no region"), "{}", run.stderr);
}

for_each_backend!(
    over_http_with_a_token_import_export_and_delete_work_as_the_user_may,
    over_http_sigv4_signs_with_the_environment_or_a_profile,
);
