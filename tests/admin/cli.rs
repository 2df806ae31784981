//! The `retaind` binary run as an operator runs `retaind retained ...`, and the messages the
//! tests seed and compare.

#![allow(dead_code)] // each test binary uses its own subset of these helpers

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use bytes::Bytes;
use retaind::admin::Line;
use retaind::store::{
    MessageProperties, OwnedWrite, PayloadFormat, Qos, RetainedMessage, RetainedStore,
    UserProperty, Write,
};
use tokio::io::AsyncWriteExt;

use crate::common::{T0_MS, far_deadline, open_backend, topic};

/// Year 2100: every seeded expiry is after the machine's clock and the tests' manual one.
pub const FAR_EXPIRY_MS: i64 = 4_102_444_800_000;

/// What a run of the binary left.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `retaind retained ARGS`, with no AWS settings of the machine's (HOME is `home`),
/// `env` besides, and `stdin` (nothing: standard input is /dev/null, not a terminal).
pub async fn retained(
    args: &[&str],
    env: &[(&str, &str)],
    home: &Path,
    stdin: Option<&[u8]>,
) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_retaind"));
    command.arg("retained").args(args);
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_SHARED_CREDENTIALS_FILE",
        "RETAIND_API_TOKEN",
        "DATABASE_URL",
    ] {
        command.env_remove(var);
    }
    command.env("HOME", home).envs(env.iter().copied());
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("starting retaind");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).await.unwrap();
        drop(pipe);
    }
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        child.wait_with_output(),
    )
    .await
    .expect("retaind retained finished within 5 minutes")
    .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Run {
    /// Insists the run succeeded; returns its standard error (the report).
    pub fn report(&self) -> &str {
        assert!(self.ok, "retaind retained failed:\n{}", self.stderr);
        &self.stderr
    }

    /// Insists the run failed; returns its standard error.
    pub fn failure(&self) -> &str {
        assert!(
            !self.ok,
            "retaind retained succeeded, but should not have:\n{}",
            self.stderr
        );
        &self.stderr
    }
}

/// Message `i` of a seeded set, with every property the store keeps, varied by `i`: QoS,
/// repeated user property keys, binary and UTF-8 payloads, expiry or none.
pub fn message(i: usize) -> RetainedMessage {
    let utf8 = i.is_multiple_of(2);
    let payload = if utf8 {
        Bytes::from(format!("{{\"n\": {i}, \"é\": true}}"))
    } else {
        Bytes::from(vec![0u8, 255, (i % 256) as u8, 10, 13])
    };
    RetainedMessage {
        topic: topic(&format!("fleet/{}/dev-{i}", i % 10)),
        payload,
        qos: Qos::from_u8((i % 3) as u8).unwrap(),
        properties: MessageProperties {
            user_properties: if i.is_multiple_of(5) {
                Vec::new()
            } else {
                vec![
                    UserProperty {
                        key: "k".into(),
                        value: i.to_string(),
                    },
                    UserProperty {
                        key: "k".into(),
                        value: "second".into(),
                    },
                ]
            },
            content_type: (!i.is_multiple_of(3)).then(|| "application/json".to_owned()),
            response_topic: (!i.is_multiple_of(4)).then(|| topic(&format!("fleet/replies/{i}"))),
            correlation_data: (i % 2 == 1).then(|| Bytes::from(vec![1u8, 2, (i % 256) as u8])),
            payload_format: if utf8 {
                PayloadFormat::Utf8
            } else {
                PayloadFormat::Unspecified
            },
        },
        expires_at_ms: (i % 3 == 1).then_some(FAR_EXPIRY_MS + i as i64),
        last_modified_ms: T0_MS - 1_000_000 + i as i64,
        last_accessed_ms: T0_MS,
        revision: 0,
        writer: None,
    }
}

/// Messages 0..n in topic order (as exports list them).
pub fn messages(n: usize) -> Vec<RetainedMessage> {
    let mut all: Vec<RetainedMessage> = (0..n).map(message).collect();
    all.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
    all
}

/// The NDJSON an export of `messages` writes.
pub fn ndjson(messages: &[RetainedMessage]) -> String {
    messages
        .iter()
        .map(|m| Line::of(m).to_json() + "\n")
        .collect()
}

/// Stores `messages` in the database at `url` (and closes it, so a SQLite file is free).
pub async fn seed(url: &str, messages: &[RetainedMessage]) {
    let backend = open_backend(url).await;
    for chunk in messages.chunks(1000) {
        let writes: Vec<OwnedWrite> = chunk
            .iter()
            .cloned()
            .map(|m| OwnedWrite::from(Write::Put(m)))
            .collect();
        backend
            .apply(&writes, None, T0_MS, far_deadline())
            .await
            .expect("seeding the store");
    }
    close(backend).await;
}

/// Everything the database at `url` holds, in topic order, without the read times, revisions
/// and writers (which the store gives an import afresh).
pub async fn stored(url: &str) -> Vec<RetainedMessage> {
    let backend = open_backend(url).await;
    let mut all = Vec::new();
    loop {
        let page = backend
            .scan(
                "",
                None,
                all.last().map(|m: &RetainedMessage| &m.topic),
                1000,
                T0_MS,
            )
            .await
            .unwrap();
        let done = page.len() < 1000;
        all.extend(page);
        if done {
            break;
        }
    }
    close(backend).await;
    all.into_iter().map(without_read_time).collect()
}

pub fn without_read_time(mut m: RetainedMessage) -> RetainedMessage {
    m.last_accessed_ms = 0;
    m.revision = 0;
    m.writer = None;
    m
}

/// Closes the store: the SQLite file's lock goes with it, so the binary can open the file.
async fn close(backend: Arc<dyn RetainedStore>) {
    drop(backend);
}
