//! `retaind retained delete --topic-filter F`: counts the matching messages, asks (on a
//! terminal; `--yes` answers for scripts, and without a terminal or `--yes` it refuses), then
//! deletes.
//!
//! From a database URL it deletes exactly the topics it counted, in batches of one
//! transaction each; running nodes on the same Postgres database forget them from their read
//! caches through the change feed, but subscribers connected meanwhile are not sent the empty
//! retained message that an HTTP or MQTT delete sends them. Over HTTP it uses the service's
//! guarded bulk delete (`DELETE /retainedMessage?topicFilter=&expectedCount=`), which deletes
//! each match as an empty retained publish would, and refuses (deleting nothing) if the count
//! changed since it was shown.

use std::io::{BufRead, IsTerminal, Write};

use super::args::DeleteArgs;
use super::database::Database;
use super::service::Service;
use super::source::{Connection, now_ms, topic_filter};
use super::{Error, progress};
use crate::topic::TopicFilter;

pub async fn run(args: DeleteArgs) -> Result<(), Error> {
    let filter = topic_filter(&args.topic_filter)?;
    match Connection::open(&args.connection).await? {
        Connection::Database(db) => from_database(&db, &filter, &args).await,
        Connection::Service(service) => over_http(&service, &filter, &args).await,
    }
}

async fn from_database(
    db: &Database,
    filter: &TopicFilter,
    args: &DeleteArgs,
) -> Result<(), Error> {
    let topics = db.matching(filter, now_ms()).await?;
    let n = topics.len() as u64;
    if !confirmed(n, filter, args)? {
        return Ok(());
    }
    let bar = progress::bar(n, "deleted");
    for batch in topics.chunks(args.batch_size as usize) {
        db.delete(batch, now_ms()).await?;
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    eprintln!("deleted {n} retained messages matching {filter}");
    Ok(())
}

async fn over_http(
    service: &Service,
    filter: &TopicFilter,
    args: &DeleteArgs,
) -> Result<(), Error> {
    let (n, _) = service.delete_matching(filter.as_str(), None).await?;
    if !confirmed(n, filter, args)? {
        return Ok(());
    }
    // One request: the service deletes in waves, and answers when all are done.
    let bar = progress::counter("deleting (the service reports when done)");
    let result = service.delete_matching(filter.as_str(), Some(n)).await;
    bar.finish_and_clear();
    let (_, deleted) = result?;
    eprintln!("deleted {deleted} retained messages matching {filter}");
    Ok(())
}

/// Whether to go on deleting `n` messages: not for a dry run or nothing to delete; `--yes`;
/// else a person's answer, which only a terminal can give.
fn confirmed(n: u64, filter: &TopicFilter, args: &DeleteArgs) -> Result<bool, Error> {
    eprintln!("{n} retained messages match {filter}");
    if args.dry_run {
        eprintln!("dry run: nothing was deleted");
        return Ok(false);
    }
    if n == 0 || args.yes {
        return Ok(n > 0);
    }
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Err(Error::Usage(format!(
            "refusing to delete {n} retained messages without confirmation: standard input is \
             not a terminal; pass --yes to delete them"
        )));
    }
    eprint!("Delete these {n} retained messages? Type 'yes' to confirm: ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::io(std::path::Path::new("standard input"), e))?;
    if answer.trim() == "yes" {
        Ok(true)
    } else {
        eprintln!("not confirmed: nothing was deleted");
        Ok(false)
    }
}
