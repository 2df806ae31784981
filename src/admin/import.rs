//! `retaind retained import FILE`: NDJSON as export writes it, into a service or a database.
//!
//! Every line is checked first, as the server checks a retained publish; by default one bad
//! line fails the import before anything is written, and `--skip-bad-lines` imports the rest.
//! Each line names its line number when reported. Then messages are written in batches
//! (`--batch-size`): from a database URL each batch is one transaction, keeping each
//! message's lastModifiedTime; over HTTP each is a retained Publish with its properties, which
//! the service stamps with its own time.
//!
//! Idempotent: a message is written only where the target has no unexpired message on its
//! topic or has an older one (an earlier lastModifiedTime). A message at least as new as the
//! line is kept, so importing a file again changes nothing, and an import never replaces what
//! devices published after the export. Within a file, a topic's newest line wins.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::args::{ImportArgs, LimitArgs};
use super::source::{Connection, now_ms};
use super::{Error, Line, migrate, progress};
use crate::store::RetainedMessage;
use crate::topic::TopicLimits;

/// What an import did (or, in a dry run, would do).
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub written: u64,
    /// Lines whose topic holds a message at least as new in the target.
    pub kept: u64,
    /// Lines whose message has expired: nothing to import.
    pub expired: u64,
    pub bad: u64,
}

impl Tally {
    pub fn report(&self, dry_run: bool) -> String {
        let Self {
            written,
            kept,
            expired,
            bad,
        } = self;
        if dry_run {
            format!(
                "dry run: would write {written}, would keep {kept} (the target's is as new or newer), \
                 {expired} expired, {bad} bad; nothing was changed"
            )
        } else {
            format!(
                "wrote {written}, kept {kept} (the target's is as new or newer), {expired} expired, \
                 {bad} bad skipped"
            )
        }
    }
}

pub async fn run(args: ImportArgs) -> Result<(), Error> {
    if args.from_endpoint.is_some() {
        return migrate::run(args).await;
    }
    let path = args
        .file
        .clone()
        .ok_or_else(|| Error::Usage("give the FILE to import, or --from-endpoint".into()))?;
    let input = Input::read(path)?;
    let checker = Checker::new(args.limits);
    let now = now_ms();
    // First pass: every line checked before anything is written.
    let (mut valid, mut bad) = (0u64, 0u64);
    for (number, text) in input.lines()? {
        match checker.check(&text?, now) {
            Ok(_) => valid += 1,
            Err(why) => {
                eprintln!("line {number}: {why}");
                bad += 1;
            }
        }
    }
    if bad > 0 && !args.skip_bad_lines {
        return Err(Error::BadLines {
            count: usize::try_from(bad).unwrap_or(usize::MAX),
        });
    }
    let target = Connection::open(&args.connection).await?;
    let bar = progress::bar(valid, "imported");
    let mut tally = Tally {
        bad,
        ..Tally::default()
    };
    let mut batch = Vec::with_capacity(args.batch_size as usize);
    for (_, text) in input.lines()? {
        let Ok(message) = checker.check(&text?, now) else {
            continue;
        };
        batch.push(message);
        if batch.len() == args.batch_size as usize {
            bar.inc(batch.len() as u64);
            apply(
                &target,
                std::mem::take(&mut batch),
                now,
                args.dry_run,
                &mut tally,
            )
            .await?;
        }
    }
    bar.inc(batch.len() as u64);
    apply(&target, batch, now, args.dry_run, &mut tally).await?;
    bar.finish_and_clear();
    eprintln!("{}", tally.report(args.dry_run));
    if let Connection::Service(service) = &target
        && service.throttled() > 0
    {
        eprintln!(
            "throttled {} times (backed off and retried)",
            service.throttled()
        );
    }
    Ok(())
}

/// Checks lines against the target's limits.
#[derive(Clone, Copy)]
pub struct Checker {
    limits: TopicLimits,
    max_payload_bytes: usize,
}

impl Checker {
    pub fn new(limits: LimitArgs) -> Self {
        Self {
            limits: TopicLimits {
                max_bytes: limits.max_topic_bytes,
                max_levels: limits.max_topic_levels,
            },
            max_payload_bytes: limits.max_payload_bytes,
        }
    }

    pub fn check(&self, text: &str, now_ms: i64) -> Result<RetainedMessage, String> {
        self.message(Line::parse(text)?, now_ms)
    }

    pub fn message(&self, line: Line, now_ms: i64) -> Result<RetainedMessage, String> {
        line.into_message(self.limits, self.max_payload_bytes, now_ms)
    }
}

/// Writes what of `batch` the target does not hold in a version as new (nothing in a dry run),
/// counting each message in `tally`.
pub async fn apply(
    target: &Connection,
    batch: Vec<RetainedMessage>,
    now_ms: i64,
    dry_run: bool,
    tally: &mut Tally,
) -> Result<(), Error> {
    let mut newest: HashMap<crate::topic::TopicName, RetainedMessage> = HashMap::new();
    for message in batch {
        if message.expires_at_ms.is_some_and(|at| at <= now_ms) {
            tally.expired += 1;
            continue;
        }
        match newest.get(&message.topic) {
            Some(kept) if kept.last_modified_ms > message.last_modified_ms => tally.kept += 1,
            Some(_) => {
                tally.kept += 1;
                newest.insert(message.topic.clone(), message);
            }
            None => {
                newest.insert(message.topic.clone(), message);
            }
        }
    }
    if newest.is_empty() {
        return Ok(());
    }
    let topics: Vec<_> = newest.keys().cloned().collect();
    let versions = target.versions(&topics, now_ms).await?;
    let mut writes: Vec<RetainedMessage> = newest
        .into_values()
        .filter(|m| {
            let newer = versions
                .get(&m.topic)
                .is_none_or(|&stored| stored < m.last_modified_ms);
            if !newer {
                tally.kept += 1;
            }
            newer
        })
        .collect();
    writes.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
    tally.written += writes.len() as u64;
    if !dry_run {
        target.put(writes, now_ms).await?;
    }
    Ok(())
}

/// The file, read twice (check, then write); standard input is held in memory for that.
enum Input {
    File(PathBuf),
    Memory(String),
}

type NumberedLines = Box<dyn Iterator<Item = (usize, Result<String, Error>)>>;

impl Input {
    fn read(path: PathBuf) -> Result<Self, Error> {
        if path.as_os_str() == "-" {
            let text = std::io::read_to_string(std::io::stdin())
                .map_err(|e| Error::io(Path::new("standard input"), e))?;
            return Ok(Self::Memory(text));
        }
        Ok(Self::File(path))
    }

    /// Non-blank lines with their 1-based numbers.
    fn lines(&self) -> Result<NumberedLines, Error> {
        let lines: NumberedLines = match self {
            Self::File(path) => {
                use std::io::BufRead;
                let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
                let path = path.clone();
                Box::new(
                    std::io::BufReader::new(file)
                        .lines()
                        .map(move |l| l.map_err(|e| Error::io(&path, e)))
                        .enumerate()
                        .map(|(i, l)| (i + 1, l)),
                )
            }
            Self::Memory(text) => Box::new(
                text.lines()
                    .map(|l| Ok(l.to_owned()))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .enumerate()
                    .map(|(i, l)| (i + 1, l)),
            ),
        };
        Ok(Box::new(lines.filter(|(_, l)| {
            l.as_ref().map_or(true, |l| !l.trim().is_empty())
        })))
    }
}
