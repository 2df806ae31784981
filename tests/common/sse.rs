//! A Server-Sent Events reader over a streaming reqwest response, for the watch tests: blocks
//! split on blank lines, fields by name, comments kept apart so keep-alives can be seen.

use std::time::Duration;

/// One block of the stream: an event, or a comment (keep-alive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:`; empty for a comment.
    pub event: String,
    pub id: Option<String>,
    pub data: String,
    /// The block was only a comment (`:...`).
    pub comment: bool,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {:?}", self.data))
    }

    pub fn revision(&self) -> i64 {
        self.json()["revision"].as_i64().expect("a revision")
    }
}

pub struct Sse {
    res: reqwest::Response,
    buf: Vec<u8>,
}

/// How long a test waits for any one block before failing (a hang, not a speed check).
const PATIENCE: Duration = Duration::from_secs(60);

impl Sse {
    pub fn new(res: reqwest::Response) -> Self {
        assert_eq!(res.status(), 200, "the watch was refused");
        let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        Self {
            res,
            buf: Vec::new(),
        }
    }

    /// The next block, comment or event; `None` once the stream has ended.
    pub async fn next_block(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                return Some(parse(&String::from_utf8(block).expect("UTF-8 events")));
            }
            let chunk = tokio::time::timeout(PATIENCE, self.res.chunk())
                .await
                .expect("no block within a minute")
                .ok()??;
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The next event, skipping comments.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            let block = self.next_block().await?;
            if !block.comment {
                return Some(block);
            }
        }
    }

    /// The next event, which must come.
    pub async fn expect(&mut self) -> SseEvent {
        self.next().await.expect("the stream ended")
    }
}

fn parse(block: &str) -> SseEvent {
    let mut event = SseEvent {
        event: String::new(),
        id: None,
        data: String::new(),
        comment: true,
    };
    for line in block.lines().filter(|l| !l.is_empty()) {
        if line.starts_with(':') {
            continue;
        }
        event.comment = false;
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event.event = value.to_owned(),
            "id" => event.id = Some(value.to_owned()),
            "data" => {
                if !event.data.is_empty() {
                    event.data.push('\n');
                }
                event.data.push_str(value);
            }
            _ => {}
        }
    }
    event
}
