//! `retaind retained import --from-endpoint URL`: moving off AWS IoT Core (or another retaind)
//! in one command. Pages ListRetainedMessages, fetches each topic with GetRetainedMessage,
//! signed with SigV4 from the usual AWS credentials, backing off when throttled, and imports
//! each page as [`super::import`] imports a file's batch (same checks, same "newer wins").
//!
//! A page is written only once all of it was fetched and checked, and `--resume-file` records
//! the token of the next page after each page is written: an interrupted migration started
//! again with the same file goes on from the first page not written (a page written but not
//! recorded is imported again, which changes nothing).

use futures_util::{StreamExt, stream};

use super::args::ImportArgs;
use super::import::{Checker, Tally, apply};
use super::resume::{Progress, ResumeFile};
use super::service::Service;
use super::source::{CONCURRENCY, Connection, now_ms, sigv4};
use super::{Error, progress};
use crate::store::RetainedMessage;

pub async fn run(args: ImportArgs) -> Result<(), Error> {
    let endpoint = args
        .from_endpoint
        .as_deref()
        .ok_or_else(|| Error::Usage("--from-endpoint is required".into()))?;
    let source = Service::new(endpoint, sigv4(args.connection.region.as_deref())?)?;
    let target = Connection::open(&args.connection).await?;
    let checker = Checker::new(args.limits);
    let resume = args.resume_file.clone().map(ResumeFile::new);
    let mut progress = match &resume {
        Some(file) => file.load(source.endpoint())?,
        None => None,
    }
    .unwrap_or_else(|| Progress {
        endpoint: source.endpoint().to_owned(),
        next_token: String::new(),
        pages_done: 0,
        messages_done: 0,
    });
    if progress.pages_done > 0 {
        eprintln!(
            "resuming after page {} ({} messages imported before)",
            progress.pages_done, progress.messages_done
        );
    }
    let count = progress::counter("fetched");
    let mut tally = Tally::default();
    loop {
        let token = Some(progress.next_token.as_str()).filter(|t| !t.is_empty());
        let page = source.list(None, token).await?;
        let fetched = fetch_page(&source, page.topics, &checker, args.skip_bad_lines).await;
        let (messages, bad) = match fetched {
            Ok(fetched) => fetched,
            Err(e) => {
                count.finish_and_clear();
                return Err(e);
            }
        };
        tally.bad += bad;
        count.inc(messages.len() as u64);
        let n = messages.len() as u64;
        apply(&target, messages, now_ms(), args.dry_run, &mut tally).await?;
        progress.pages_done += 1;
        progress.messages_done += n;
        match page.next_token {
            Some(next) => {
                progress.next_token = next;
                if let (Some(file), false) = (&resume, args.dry_run) {
                    file.save(&progress)?;
                }
            }
            None => break,
        }
    }
    count.finish_and_clear();
    if let (Some(file), false) = (&resume, args.dry_run) {
        file.remove()?;
        eprintln!("migration complete; {} removed", file.path().display());
    }
    eprintln!(
        "{} messages read from {} in {} pages; {}",
        progress.messages_done,
        source.endpoint(),
        progress.pages_done,
        tally.report(args.dry_run)
    );
    if source.throttled() > 0 {
        eprintln!(
            "throttled {} times by {} (backed off and retried)",
            source.throttled(),
            source.endpoint()
        );
    }
    Ok(())
}

/// The page's messages, each fetched and checked; a bad one is reported, then skipped or (by
/// default) fails the page before any of it is written.
async fn fetch_page(
    source: &Service,
    topics: Vec<String>,
    checker: &Checker,
    skip_bad: bool,
) -> Result<(Vec<RetainedMessage>, u64), Error> {
    let now = now_ms();
    let mut fetched = stream::iter(topics)
        .map(|topic| async move { source.get(&topic).await.map(|f| (topic, f)) })
        .buffered(CONCURRENCY);
    let (mut messages, mut bad) = (Vec::new(), 0u64);
    while let Some(found) = fetched.next().await {
        // Deleted since it was listed.
        let (topic, Some(found)) = found? else {
            continue;
        };
        match found
            .into_line()
            .and_then(|line| checker.message(line, now))
        {
            Ok(message) => messages.push(message),
            Err(why) => {
                eprintln!("{topic}: {why}");
                bad += 1;
            }
        }
    }
    if bad > 0 && !skip_bad {
        return Err(Error::BadLines {
            count: usize::try_from(bad).unwrap_or(usize::MAX),
        });
    }
    Ok((messages, bad))
}
