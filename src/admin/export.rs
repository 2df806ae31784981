//! `retaind retained export`: every retained message (or those matching `--topic-filter`) as
//! NDJSON, in byte order of topic.
//!
//! From a database URL the file is the set at one instant (one read transaction). From an
//! endpoint it is paged (ListRetainedMessages, then GetRetainedMessage for each topic), so each
//! message is as it was at some moment during the export: one written meanwhile may be in its
//! old or its new version, one deleted meanwhile may be missing, one created meanwhile may or
//! may not be there.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use futures_util::{StreamExt, stream};
use tokio::sync::mpsc;

use super::args::ExportArgs;
use super::database::Database;
use super::service::Service;
use super::source::{CONCURRENCY, Connection, now_ms, topic_filter};
use super::{Error, Line, progress};
use crate::topic::{TopicFilter, TopicName};

/// Messages read ahead of the file's writer.
const READ_AHEAD: usize = 1024;

pub async fn run(args: ExportArgs) -> Result<(), Error> {
    let filter = args.topic_filter.as_deref().map(topic_filter).transpose()?;
    let connection = Connection::open(&args.connection).await?;
    let mut out = Output::create(args.output)?;
    let count = progress::counter("exported");
    let result = match &connection {
        Connection::Database(db) => from_database(db, filter.as_ref(), &mut out, &count).await,
        Connection::Service(service) => {
            from_service(service, filter.as_ref(), &mut out, &count).await
        }
    };
    count.finish_and_clear();
    let written = match result {
        Ok(written) => written,
        Err(e) => {
            out.abandon();
            return Err(e);
        }
    };
    let place = out.finish()?;
    eprintln!("exported {written} retained messages{place}");
    if let Connection::Service(service) = &connection
        && service.throttled() > 0
    {
        eprintln!(
            "throttled {} times (backed off and retried)",
            service.throttled()
        );
    }
    Ok(())
}

async fn from_database(
    db: &Database,
    filter: Option<&TopicFilter>,
    out: &mut Output,
    count: &indicatif::ProgressBar,
) -> Result<u64, Error> {
    let (from, until) = filter.map_or((String::new(), None), TopicFilter::scan_range);
    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    let reader = {
        let db = db.clone();
        let now = now_ms();
        tokio::spawn(async move { db.snapshot(&from, until.as_deref(), now, tx).await })
    };
    let mut written = 0;
    while let Some(message) = rx.recv().await {
        if filter.is_none_or(|f| f.matches(&message.topic)) {
            out.line(&Line::of(&message))?;
            written += 1;
            count.inc(1);
        }
    }
    reader.await.map_err(|e| Error::Transport {
        what: "the export's reader".into(),
        cause: e.to_string(),
    })??;
    Ok(written)
}

async fn from_service(
    service: &Service,
    filter: Option<&TopicFilter>,
    out: &mut Output,
    count: &indicatif::ProgressBar,
) -> Result<u64, Error> {
    let mut token: Option<String> = None;
    let mut written = 0;
    loop {
        let page = service
            .list(filter.map(TopicFilter::as_str), token.as_deref())
            .await?;
        // A service without retaind's filter extension lists everything: match here too.
        let topics = page
            .topics
            .into_iter()
            .filter(|t| filter.is_none_or(|f| f.matches(&TopicName::from_stored(t.clone()))));
        let mut fetched = stream::iter(topics)
            .map(|topic| async move { service.get(&topic).await })
            .buffered(CONCURRENCY);
        while let Some(found) = fetched.next().await {
            // Gone since it was listed: deleted during the export.
            let Some(found) = found? else { continue };
            let line = found.into_line().map_err(|why| Error::Transport {
                what: "GetRetainedMessage".into(),
                cause: why,
            })?;
            out.line(&line)?;
            written += 1;
            count.inc(1);
        }
        match page.next_token {
            Some(next) => token = Some(next),
            None => return Ok(written),
        }
    }
}

/// Standard output, or a file written beside its final name and renamed there once complete,
/// so an interrupted export never leaves a file that looks whole.
struct Output {
    writer: std::io::BufWriter<Box<dyn std::io::Write + Send>>,
    file: Option<(PathBuf, PathBuf)>,
}

impl Output {
    fn create(path: Option<PathBuf>) -> Result<Self, Error> {
        let Some(path) = path else {
            return Ok(Self {
                writer: std::io::BufWriter::new(Box::new(std::io::stdout())),
                file: None,
            });
        };
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = std::fs::File::create(&partial).map_err(|e| Error::io(&partial, e))?;
        Ok(Self {
            writer: std::io::BufWriter::new(Box::new(file)),
            file: Some((partial, path)),
        })
    }

    fn line(&mut self, line: &Line) -> Result<(), Error> {
        writeln!(self.writer, "{}", line.to_json()).map_err(|e| self.error(e))
    }

    /// Flushes, and for a file renames it into place; says where the export went.
    fn finish(mut self) -> Result<String, Error> {
        self.writer.flush().map_err(|e| self.error(e))?;
        match &self.file {
            None => Ok(String::new()),
            Some((partial, path)) => {
                std::fs::rename(partial, path).map_err(|e| Error::io(path, e))?;
                Ok(format!(" to {}", path.display()))
            }
        }
    }

    /// Removes what a failed export wrote to a file; standard output keeps what it got.
    fn abandon(self) {
        if let Some((partial, _)) = &self.file {
            let _ = std::fs::remove_file(partial);
        }
    }

    fn error(&self, e: std::io::Error) -> Error {
        let place = self
            .file
            .as_ref()
            .map_or(Path::new("standard output"), |(partial, _)| partial);
        Error::io(place, e)
    }
}
