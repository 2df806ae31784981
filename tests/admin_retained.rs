//! `retaind retained export|import|delete` run as the real binary, against both stores, from
//! and into a database URL: every property, idempotence, bad lines named by number with
//! nothing written, a dry run, confirmation before a delete, a running node told of changes.
//! Over HTTP: `tests/admin_over_http.rs`.

#[path = "admin/cli.rs"]
mod cli;
mod common;

use cli::{messages, ndjson, retained, seed, stored, without_read_time};
use common::{Backend, FreshDb, fresh_db, spawn_app_with, test_config};
use retaind::admin::Line;

fn expected(n: usize) -> Vec<retaind::store::RetainedMessage> {
    messages(n).into_iter().map(without_read_time).collect()
}

async fn export_from_a_database_is_every_message_with_every_property(backend: Backend) {
    let db = fresh_db(backend).await;
    let all = messages(60);
    seed(&db.url, &all).await;
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("out.ndjson");
    let run = retained(
        &[
            "export",
            "--database-url",
            &db.url,
            "--output",
            file.to_str().unwrap(),
        ],
        &[],
        home.path(),
        None,
    )
    .await;
    assert!(
        run.report().contains("exported 60 retained messages to"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), ndjson(&all));

    // To standard output, narrowed by a filter.
    let run = retained(
        &[
            "export",
            "--database-url",
            &db.url,
            "--topic-filter",
            "fleet/3/+",
        ],
        &[],
        home.path(),
        None,
    )
    .await;
    run.report();
    let wanted: Vec<_> = all
        .iter()
        .filter(|m| m.topic.as_str().starts_with("fleet/3/"))
        .cloned()
        .collect();
    assert_eq!(wanted.len(), 6);
    assert_eq!(run.stdout, ndjson(&wanted));
}

/// A transaction's writes share one write ticket of 4,096 revisions: a batch as large as the
/// flag allows still fits it, so the database stays one a server starts on and writes after.
async fn the_largest_database_batch_fits_its_write_ticket(backend: Backend) {
    let db = fresh_db(backend).await;
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("in.ndjson");
    std::fs::write(&file, ndjson(&messages(LARGEST_BATCH))).unwrap();
    let batch = LARGEST_BATCH.to_string();
    let file = file.to_str().unwrap();
    let import = [
        "import",
        file,
        "--database-url",
        &db.url,
        "--batch-size",
        &batch,
    ];
    let run = retained(&import, &[], home.path(), None).await;
    assert!(
        run.report().contains(&format!("wrote {LARGEST_BATCH}")),
        "{}",
        run.stderr
    );
    let app = spawn_app_with(FreshDb::shared(&db.url), test_config(&db.url)).await;
    app.retain("after%2Fimport", "v").await;
    app.stop().await;
    // One more is refused before anything is read or written, for delete too.
    let over = (LARGEST_BATCH + 1).to_string();
    for args in [
        vec![
            "import",
            file,
            "--database-url",
            &db.url,
            "--batch-size",
            &over,
        ],
        vec![
            "delete",
            "--topic-filter",
            "#",
            "--database-url",
            &db.url,
            "--yes",
            "--batch-size",
            &over,
        ],
    ] {
        let run = retained(&args, &[], home.path(), None).await;
        let refusal = format!("{over} is not in 1..={LARGEST_BATCH}");
        assert!(run.failure().contains(&refusal), "{}", run.stderr);
    }
    assert_eq!(stored(&db.url).await.len(), LARGEST_BATCH + 1);
}

async fn an_import_into_a_database_keeps_each_message_and_twice_changes_nothing(backend: Backend) {
    let db = fresh_db(backend).await;
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("in.ndjson");
    std::fs::write(&file, ndjson(&messages(60))).unwrap();
    let args = [
        "import",
        file.to_str().unwrap(),
        "--database-url",
        &db.url,
        "--batch-size",
        "7",
    ];
    let run = retained(&args, &[], home.path(), None).await;
    assert!(run.report().contains("wrote 60, kept 0"), "{}", run.stderr);
    // Standard error is not a terminal: the report, and no progress bar drawn into it.
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(!run.stderr.contains(['\r', '\u{1b}']), "{:?}", run.stderr);
    assert_eq!(stored(&db.url).await, expected(60));

    let run = retained(&args, &[], home.path(), None).await;
    assert!(run.report().contains("wrote 0, kept 60"), "{}", run.stderr);
    assert_eq!(stored(&db.url).await, expected(60));

    // From standard input too.
    let std_args = ["import", "-", "--database-url", &db.url];
    let run = retained(
        &std_args,
        &[],
        home.path(),
        Some(ndjson(&messages(60)).as_bytes()),
    )
    .await;
    assert!(run.report().contains("wrote 0, kept 60"), "{}", run.stderr);
}

async fn an_import_keeps_a_newer_message_and_replaces_an_older_one(backend: Backend) {
    let db = fresh_db(backend).await;
    let mut target = messages(2);
    target[0].last_modified_ms += 10_000; // newer than the file's
    target[1].last_modified_ms -= 10_000; // older than the file's
    target[0].payload = "target's newer".into();
    target[1].payload = "target's older".into();
    seed(&db.url, &target).await;
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("in.ndjson");
    std::fs::write(&file, ndjson(&messages(2))).unwrap();
    let run = retained(
        &["import", file.to_str().unwrap(), "--database-url", &db.url],
        &[],
        home.path(),
        None,
    )
    .await;
    assert!(run.report().contains("wrote 1, kept 1"), "{}", run.stderr);
    let now = stored(&db.url).await;
    assert_eq!(now[0], without_read_time(target[0].clone()));
    assert_eq!(now[1], expected(2)[1]);
}

/// A valid line 1 and 3 around a bad line 2, and what the report must say of line 2.
fn bad_files() -> Vec<(&'static str, String, &'static str)> {
    let good = messages(3);
    let line = |i: usize| Line::of(&good[i]);
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = serde_json::to_value(line(1)).unwrap();
        edit(&mut v);
        v.to_string()
    };
    let file = |bad: String| format!("{}\n{bad}\n{}\n", line(0).to_json(), line(2).to_json());
    vec![
        (
            "bad JSON",
            file("{\"topic\": \"a\", ".into()),
            "not a line of the export format",
        ),
        (
            "bad base64",
            file(with(&|v| v["payload"] = "not base64!".into())),
            "payload is not base64",
        ),
        (
            "invalid topic",
            file(with(&|v| v["topic"] = "fleet/+/x".into())),
            "invalid topic",
        ),
        (
            "oversize payload",
            file(with(&|v| {
                v["payload"] = base64_of(&vec![b'x'; 128 * 1024 + 1]).into();
                v["payloadFormatIndicator"] = serde_json::Value::Null;
            })),
            "payload is 131073 bytes, more than the limit of 131072",
        ),
        (
            "unknown qos",
            file(with(&|v| v["qos"] = 3.into())),
            "qos must be 0, 1 or 2, not 3",
        ),
    ]
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn a_bad_line_is_named_and_nothing_is_written(backend: Backend) {
    let db = fresh_db(backend).await;
    let before = messages(40).split_off(30);
    seed(&db.url, &before).await;
    let before = stored(&db.url).await;
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("in.ndjson");
    for (case, text, reason) in bad_files() {
        std::fs::write(&file, &text).unwrap();
        let run = retained(
            &["import", file.to_str().unwrap(), "--database-url", &db.url],
            &[],
            home.path(),
            None,
        )
        .await;
        let report = run.failure();
        assert!(report.contains("line 2: "), "{case}: {report}");
        assert!(report.contains(reason), "{case}: {report}");
        assert!(report.contains("nothing was written"), "{case}: {report}");
        assert!(
            !report.contains("line 1:") && !report.contains("line 3:"),
            "{case}: {report}"
        );
        assert_eq!(stored(&db.url).await, before, "{case}: the store changed");
    }
    // Skipped on request: the good lines are imported, each bad one reported.
    let all: String = bad_files().into_iter().map(|(_, text, _)| text).collect();
    std::fs::write(&file, &all).unwrap();
    let run = retained(
        &[
            "import",
            file.to_str().unwrap(),
            "--database-url",
            &db.url,
            "--skip-bad-lines",
        ],
        &[],
        home.path(),
        None,
    )
    .await;
    let report = run.report();
    for (n, (_, _, reason)) in bad_files().into_iter().enumerate() {
        assert!(
            report.contains(&format!("line {}: ", 3 * n + 2)),
            "{report}"
        );
        assert!(report.contains(reason), "{report}");
    }
    assert!(report.contains("5 bad skipped"), "{report}");
    // Lines 1 and 3 of every file: the same two messages.
    let now = stored(&db.url).await;
    assert_eq!(now.len(), before.len() + 2);
}

async fn a_dry_run_reports_what_it_would_do_and_changes_nothing(backend: Backend) {
    let db = fresh_db(backend).await;
    seed(&db.url, &messages(10)).await;
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("in.ndjson");
    std::fs::write(&file, ndjson(&messages(25))).unwrap();
    let run = retained(
        &[
            "import",
            file.to_str().unwrap(),
            "--database-url",
            &db.url,
            "--dry-run",
        ],
        &[],
        home.path(),
        None,
    )
    .await;
    let report = run.report();
    assert!(
        report.contains("dry run: would write 15, would keep 10"),
        "{report}"
    );
    assert!(report.contains("nothing was changed"), "{report}");
    assert_eq!(stored(&db.url).await, expected(10));
}

async fn a_delete_asks_refuses_without_a_terminal_and_deletes_with_yes(backend: Backend) {
    let db = fresh_db(backend).await;
    seed(&db.url, &messages(50)).await;
    let home = tempfile::tempdir().unwrap();
    let args = [
        "delete",
        "--database-url",
        &db.url,
        "--topic-filter",
        "fleet/4/#",
    ];
    let run = retained(&args, &[], home.path(), None).await;
    let report = run.failure();
    assert!(
        report.contains("5 retained messages match fleet/4/#"),
        "{report}"
    );
    assert!(report.contains("refusing to delete 5"), "{report}");
    assert_eq!(stored(&db.url).await.len(), 50);

    let run = retained(
        &[&args[..], &["--dry-run"]].concat(),
        &[],
        home.path(),
        None,
    )
    .await;
    assert!(run.report().contains("dry run: nothing was deleted"));
    assert_eq!(stored(&db.url).await.len(), 50);

    let run = retained(
        &[&args[..], &["--yes", "--batch-size", "2"]].concat(),
        &[],
        home.path(),
        None,
    )
    .await;
    assert!(
        run.report()
            .contains("deleted 5 retained messages matching fleet/4/#")
    );
    let left = stored(&db.url).await;
    assert_eq!(left.len(), 45);
    assert!(
        left.iter()
            .all(|m| !m.topic.as_str().starts_with("fleet/4/"))
    );
}

/// Runs `retaind retained ARGS` on a terminal (a pseudo-terminal `script` opens, as an
/// operator's shell has), typing `typed`; returns what the terminal showed.
async fn on_a_terminal(args: &[&str], typed: &str) -> String {
    let command = std::iter::once(env!("CARGO_BIN_EXE_retaind").to_owned())
        .chain(std::iter::once("retained".to_owned()))
        .chain(args.iter().map(|a| format!("'{a}'")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("script (util-linux) runs a command on a pseudo-terminal");
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(typed.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the command finished")
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn on_a_terminal_a_delete_asks_and_only_yes_deletes(backend: Backend) {
    let db = fresh_db(backend).await;
    seed(&db.url, &messages(20)).await;
    let args = [
        "delete",
        "--database-url",
        &db.url,
        "--topic-filter",
        "fleet/2/+",
    ];
    let shown = on_a_terminal(&args, "no\n").await;
    assert!(
        shown.contains("2 retained messages match fleet/2/+"),
        "{shown}"
    );
    assert!(shown.contains("Type 'yes' to confirm"), "{shown}");
    assert!(
        shown.contains("not confirmed: nothing was deleted"),
        "{shown}"
    );
    assert_eq!(stored(&db.url).await.len(), 20);
    let shown = on_a_terminal(&args, "yes\n").await;
    assert!(
        shown.contains("deleted 2 retained messages matching fleet/2/+"),
        "{shown}"
    );
    assert_eq!(stored(&db.url).await.len(), 18);

    // An import on a terminal draws its progress, then clears it for the report.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.ndjson");
    std::fs::write(&file, ndjson(&messages(300))).unwrap();
    let import = [
        "import",
        file.to_str().unwrap(),
        "--database-url",
        &db.url,
        "--batch-size",
        "10",
    ];
    let shown = on_a_terminal(&import, "").await;
    assert!(shown.contains("/300 imported"), "{shown}");
    assert!(shown.contains("wrote 282, kept 18"), "{shown}");
}

/// A node serving from Postgres learns of a delete and an import made in its database by
/// the command: its read cache forgets the topics (the store's change feed), as it does for
/// another node's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_node_on_postgres_sees_what_the_command_changes_in_its_database() {
    let db = fresh_db(Backend::Postgres).await;
    let url = db.url.clone();
    let app = spawn_app_with(db, test_config(&url)).await;
    app.retain("fleet%2F1%2Fdev-1", "cached").await;
    app.retain("kept", "cached").await;
    // Both read once, so the node's cache holds them.
    assert_eq!(
        app.get("/retainedMessage/fleet%2F1%2Fdev-1").await.status(),
        200
    );
    assert_eq!(app.get("/retainedMessage/kept").await.status(), 200);
    let home = tempfile::tempdir().unwrap();
    let run = retained(
        &[
            "delete",
            "--database-url",
            &url,
            "--topic-filter",
            "fleet/#",
            "--yes",
        ],
        &[],
        home.path(),
        None,
    )
    .await;
    assert!(
        run.report().contains("deleted 1 retained messages"),
        "{}",
        run.stderr
    );
    let file = home.path().join("in.ndjson");
    let mut replacement = messages(1).remove(0);
    replacement.topic = common::topic("kept");
    replacement.last_modified_ms = common::T0_MS + 1;
    std::fs::write(&file, ndjson(&[replacement.clone()])).unwrap();
    let run = retained(
        &["import", file.to_str().unwrap(), "--database-url", &url],
        &[],
        home.path(),
        None,
    )
    .await;
    assert!(run.report().contains("wrote 1"), "{}", run.stderr);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let gone = app.get("/retainedMessage/fleet%2F1%2Fdev-1").await.status() == 404;
        let kept: serde_json::Value = app.get_json("/retainedMessage/kept").await;
        if gone && kept["lastModifiedTime"] == common::T0_MS + 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node still serves its cached copies"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The largest `--batch-size`.
const LARGEST_BATCH: usize = 4_000;

for_each_backend!(
    the_largest_database_batch_fits_its_write_ticket,
    export_from_a_database_is_every_message_with_every_property,
    an_import_into_a_database_keeps_each_message_and_twice_changes_nothing,
    an_import_keeps_a_newer_message_and_replaces_an_older_one,
    a_bad_line_is_named_and_nothing_is_written,
    a_dry_run_reports_what_it_would_do_and_changes_nothing,
    a_delete_asks_refuses_without_a_terminal_and_deletes_with_yes,
    on_a_terminal_a_delete_asks_and_only_yes_deletes,
);
