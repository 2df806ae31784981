//! Moving retained messages between services with `retaind retained`: 10,000 messages with
//! every property exported from a service on SQLite and imported into Postgres, unchanged; and
//! `import --from-endpoint` from a second retaind standing in for AWS IoT Core (SigV4, low
//! request rates so that it throttles), interrupted and resumed.

#[path = "admin/cli.rs"]
mod cli;
mod common;

use std::process::Stdio;
use std::time::Duration;

use cli::{messages, ndjson, retained, seed, stored, without_read_time};
use common::{Backend, TestApp, fresh_db, spawn_app_with, test_config};

const ACCESS_KEY: &str = "AKIDMIGRATIONEXAMPLE";
const SECRET_KEY: &str = "migration/secret/EXAMPLEKEY";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_go_from_a_service_on_sqlite_into_postgres_unchanged() {
    let all = messages(10_000);
    let source_db = fresh_db(Backend::Sqlite).await;
    seed(&source_db.url, &all).await;
    let config = test_config(&source_db.url);
    let app = spawn_app_with(source_db, config).await;
    let home = tempfile::tempdir().unwrap();
    let path = |name: &str| home.path().join(name).to_str().unwrap().to_owned();

    let run = retained(
        &[
            "export",
            "--endpoint",
            &app.base,
            "--output",
            &path("a.ndjson"),
        ],
        &[],
        home.path(),
        None,
    )
    .await;
    assert!(
        run.report().contains("exported 10000 retained messages"),
        "{}",
        run.stderr
    );
    let source_db = app.stop().await;

    let target = fresh_db(Backend::Postgres).await;
    let run = retained(
        &["import", &path("a.ndjson"), "--database-url", &target.url],
        &[],
        home.path(),
        None,
    )
    .await;
    assert!(
        run.report().contains("wrote 10000, kept 0"),
        "{}",
        run.stderr
    );
    let run = retained(
        &[
            "export",
            "--database-url",
            &target.url,
            "--output",
            &path("b.ndjson"),
        ],
        &[],
        home.path(),
        None,
    )
    .await;
    run.report();
    // The source's store, read directly, says the same.
    let run = retained(
        &[
            "export",
            "--database-url",
            &source_db.url,
            "--output",
            &path("c.ndjson"),
        ],
        &[],
        home.path(),
        None,
    )
    .await;
    run.report();

    let a = std::fs::read_to_string(path("a.ndjson")).unwrap();
    assert_eq!(a, ndjson(&all), "the export over HTTP is the seeded set");
    assert_eq!(std::fs::read_to_string(path("b.ndjson")).unwrap(), a);
    assert_eq!(std::fs::read_to_string(path("c.ndjson")).unwrap(), a);
    let expected: Vec<_> = all.into_iter().map(without_read_time).collect();
    assert_eq!(stored(&target.url).await, expected);
}

/// A retaind with one SigV4 principal, allowed 100 gets and 2 listings a second.
async fn throttled_source(dir: &std::path::Path, n: usize) -> TestApp {
    let path = dir.join("auth.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[principals]]
name = "migrator"
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"
[[principals.statements]]
effect = "Allow"
actions = ["iot:GetRetainedMessage", "iot:ListRetainedMessages"]
resources = ["*"]
"#
        ),
    )
    .unwrap();
    let db = fresh_db(Backend::Sqlite).await;
    seed(&db.url, &messages(n)).await;
    let mut config = test_config(&db.url);
    config.principals = Some(path);
    config.rate_get_retained_message = 100.0;
    config.rate_list_retained_messages = 2.0;
    spawn_app_with(db, config).await
}

async fn a_migration_from_a_throttling_service_resumes_after_an_interruption(backend: Backend) {
    const N: usize = 450; // three pages of 200
    let home = tempfile::tempdir().unwrap();
    let source = throttled_source(home.path(), N).await;
    let target = fresh_db(backend).await;
    let resume = home.path().join("resume.json");
    let args = [
        "import",
        "--from-endpoint",
        &source.base,
        "--database-url",
        &target.url,
        "--resume-file",
        resume.to_str().unwrap(),
        "--region",
        "us-east-1",
    ];
    // Credentials from a profile, as an operator's machine has them.
    std::fs::create_dir_all(home.path().join(".aws")).unwrap();
    std::fs::write(
        home.path().join(".aws/credentials"),
        format!(
            "[aws-iot]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        ),
    )
    .unwrap();
    let env = [("AWS_PROFILE", "aws-iot")];

    // Interrupted once the first page is recorded.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_retaind"))
        .arg("retained")
        .args(args)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("HOME", home.path())
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !resume.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no page was recorded"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the migration ended before it was interrupted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().await.unwrap();
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&resume).unwrap()).unwrap();
    let done = recorded["messagesDone"].as_u64().unwrap() as usize;
    assert!(done > 0 && done < N, "{recorded}");
    // Every recorded page is written whole; nothing of an unrecorded one is.
    let partial = stored(&target.url).await;
    assert_eq!(partial.len(), done, "{recorded}");

    let run = retained(&args, &env, home.path(), None).await;
    let report = run.report();
    assert!(
        report.contains(&format!("resuming after page {}", recorded["pagesDone"])),
        "{report}"
    );
    assert!(report.contains("migration complete"), "{report}");
    let throttled: u64 = report
        .split("throttled ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(throttled > 0, "the source never throttled: {report}");
    assert!(!resume.exists(), "the resume file is removed once complete");
    let expected: Vec<_> = messages(N).into_iter().map(without_read_time).collect();
    assert_eq!(
        stored(&target.url).await,
        expected,
        "every message, its times included"
    );

    // Run again from the start: nothing to write.
    let run = retained(&args, &env, home.path(), None).await;
    assert!(
        run.report().contains(&format!("wrote 0, kept {N}")),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_without_credentials_says_so_and_writes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let source = throttled_source(home.path(), 3).await;
    let target = fresh_db(Backend::Sqlite).await;
    let args = [
        "import",
        "--from-endpoint",
        &source.base,
        "--database-url",
        &target.url,
        "--region",
        "us-east-1",
    ];
    let run = retained(&args, &[], home.path(), None).await;
    assert!(
        run.failure()
            .contains("AWS credentials: none in the environment"),
        "{}",
        run.stderr
    );
    let wrong = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", "wrong"),
    ];
    let run = retained(&args, &wrong, home.path(), None).await;
    assert!(
        run.failure().contains("403 ForbiddenException"),
        "{}",
        run.stderr
    );
    assert!(stored(&target.url).await.is_empty());
}

for_each_backend!(a_migration_from_a_throttling_service_resumes_after_an_interruption);
