use std::collections::HashMap;

use async_trait::async_trait;
use tokio::time::Instant;

use super::feed::Change;
use super::message::Revision;
use super::saved_session::SavedSession;
use super::watch_types::ChangePage;
use super::{Error, OwnedWrite, QuotaExceeded, RetainedMessage, RetainedPublish, RetainedSummary};
use crate::topic::TopicName;

/// What became of one write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Stored, or deleted, under this revision.
    Applied(Revision),
    /// A write to the same topic that started later had already been applied (or came later
    /// in the same batch), so this one changed nothing: it took effect, and was replaced,
    /// before that one.
    Superseded,
    /// It would have gone over a quota; nothing of it was written.
    Refused(QuotaExceeded),
    /// Its condition did not hold; nothing of it was written.
    ConditionFailed,
}

impl Verdict {
    /// Each write's verdict, from the quota's decisions and the topics the database changed.
    /// Only the last admitted write of a topic can have been applied: the earlier ones in the
    /// batch were replaced by it (conditional writes never share a batch with another write of
    /// their topic, see `write_lane`).
    pub(super) fn of_batch(
        writes: &[OwnedWrite],
        admissions: Vec<Result<(), QuotaExceeded>>,
        applied: &HashMap<String, Revision>,
    ) -> Vec<Self> {
        let mut last = HashMap::with_capacity(writes.len());
        for (i, (w, admission)) in writes.iter().zip(&admissions).enumerate() {
            if admission.is_ok() {
                last.insert(w.write.topic().as_str(), i);
            }
        }
        writes
            .iter()
            .zip(admissions)
            .enumerate()
            .map(|(i, (w, admission))| {
                let topic = w.write.topic().as_str();
                match admission {
                    Err(quota) => Self::Refused(quota),
                    Ok(()) => match applied.get(topic) {
                        Some(&revision) if last.get(topic) == Some(&i) => Self::Applied(revision),
                        _ if w.condition.is_some() => Self::ConditionFailed,
                        _ => Self::Superseded,
                    },
                }
            })
            .collect()
    }
}

/// A database that keeps retained messages. Every method is one round of work against the
/// database; batching, deadlines and caching belong to [`super::Store`], not here.
///
/// Times are passed in (epoch ms) rather than read from the database's clock, so that every
/// node and every backend agree on "now" as the service sees it, and tests can move time.
/// Revisions per write ticket: a batch's revisions are its ticket times this plus each row's
/// place in it (from 1), so a batch holds fewer rows than this. The SQL that computes
/// revisions in the database spells it as a literal, since a statement is a literal too.
pub(super) const TICKET_REVISIONS: i64 = 4096;

/// Whose database connections a scan reads on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    /// The shared pool (SQLite: its scan connections).
    Shared,
    /// Bulk work on threads of low priority (a large retained delivery, decision 020), on
    /// connections of its own, opened as bulk scans need them: nothing else ever waits for a
    /// connection, or for a socket's readiness, behind a thread that gets no core.
    Bulk,
}

/// Refuses a batch whose revisions would run past its write ticket into the next one's. The
/// write lanes never make one; a caller of [`RetainedStore::apply`] that does is wrong, and
/// applying it would give two rows one revision (and on Postgres, revisions ahead of the
/// transaction ids, which the next start refuses).
pub(super) fn fits_one_ticket(writes: &[OwnedWrite]) -> Result<(), Error> {
    if writes.len() < TICKET_REVISIONS as usize {
        return Ok(());
    }
    Err(Error::Internal(
        format!(
            "a batch of {} writes: at most {} fit one write ticket",
            writes.len(),
            TICKET_REVISIONS - 1
        )
        .into(),
    ))
}

#[async_trait]
pub trait RetainedStore: Send + Sync + 'static {
    /// Applies writes atomically: all of them or none. When several writes name the same topic
    /// the last one wins, exactly as if they had been applied one after another.
    ///
    /// Every batch takes a write ticket when it starts, from a counter the whole database
    /// shares, and a topic's row is only replaced by a write with a later ticket: a batch that
    /// stalled (on a lock, on the network) and arrives after a newer write to one of its topics
    /// leaves that topic alone ([`Verdict::Superseded`]). A delete leaves a tombstone carrying
    /// its ticket, invisible to every read, so that an older write cannot bring the message
    /// back; `now_ms` is the tombstone's time, and the expiry purge removes it later.
    ///
    /// A put that would keep more than `max_total` messages in the store, or more than its
    /// owner's quota, is refused (and written not at all), as [`super::quota`] decides from
    /// counts read under a lock that orders such decisions across every node. One answer per
    /// write, in order.
    ///
    /// The call returns only once the batch is settled: committed, failed, or certain never to
    /// commit. Past `deadline` a backend stops the work, makes sure it cannot commit later (on
    /// Postgres it terminates the database session that runs it) and fails with
    /// [`Error::Unavailable`]; whether the batch committed before that is unknown.
    async fn apply(
        &self,
        writes: &[OwnedWrite],
        max_total: Option<u64>,
        now_ms: i64,
        deadline: Instant,
    ) -> Result<Vec<Verdict>, Error>;

    /// How many retained messages are stored, expired ones not yet purged included: all of
    /// them, or those of one owner. Read from the counts the quotas use.
    async fn count(&self, owner: Option<&str>) -> Result<u64, Error>;

    /// The payload bytes of the stored messages (expired ones not yet purged included), summed
    /// by a scan of the table: no count is kept on the write path, so callers keep the answer
    /// a while ([`crate::store::Store::payload_bytes`]).
    async fn payload_bytes(&self) -> Result<u64, Error>;

    /// The unexpired messages among `topics` (in no particular order; missing ones are absent).
    async fn get_many(
        &self,
        topics: &[TopicName],
        now_ms: i64,
    ) -> Result<Vec<RetainedMessage>, Error>;

    /// Up to `limit` unexpired messages with topics strictly after `after`, in byte order of topic.
    async fn list(
        &self,
        after: Option<&TopicName>,
        limit: u32,
        now_ms: i64,
    ) -> Result<Vec<RetainedSummary>, Error>;

    /// Up to `limit` unexpired full messages whose topics are in `[from, until)` (byte order;
    /// `until: None` = no upper bound) and strictly after `after` (when given), in byte order
    /// of topic.
    ///
    /// This is how a watch that starts from the current set reads it, page by page: the
    /// caller turns a filter's literal prefix into a range and matches each topic itself.
    /// Bounds need not be valid topic names, but must not contain U+0000: Postgres text cannot
    /// hold it (and no topic contains it either).
    async fn scan(
        &self,
        from: &str,
        until: Option<&str>,
        after: Option<&TopicName>,
        limit: u32,
        now_ms: i64,
    ) -> Result<Vec<RetainedMessage>, Error>;

    /// [`RetainedStore::scan`] reading only what a subscriber receives of each message, on the
    /// connections of `readers`: how a wildcard subscription's retained messages are found.
    /// The same rows, in the same order, under the same rules for the bounds.
    async fn scan_publishes(
        &self,
        from: &str,
        until: Option<&str>,
        after: Option<&TopicName>,
        limit: u32,
        now_ms: i64,
        readers: Readers,
    ) -> Result<Vec<RetainedPublish>, Error>;

    /// Like [`RetainedStore::scan`] but returns summaries (no payloads), as [`RetainedStore::list`]
    /// does: up to `limit` unexpired messages whose topics are in `[from, until)` and strictly
    /// after `after` (when given), in byte order of topic. The same rules for the bounds apply.
    ///
    /// This is how ListRetainedMessages narrowed by a topic filter or prefix walks its range:
    /// the caller matches each topic itself.
    async fn list_range(
        &self,
        from: &str,
        until: Option<&str>,
        after: Option<&TopicName>,
        limit: u32,
        now_ms: i64,
    ) -> Result<Vec<RetainedSummary>, Error>;

    /// Every unexpired full message whose topic is in `[from, until)` (the same bounds as
    /// [`RetainedStore::scan`]), in byte order of topic, sent to `out` as read: the set as it
    /// was at one instant, read in one transaction (Postgres: REPEATABLE READ, READ ONLY; SQLite:
    /// one read transaction, which WAL keeps on one snapshot). Paged inside the transaction, so
    /// memory stays bounded; a slow receiver keeps the transaction open. Returns how many were
    /// sent; stops early, without error, if `out` is closed.
    ///
    /// For `retaind retained export` from a database URL, which needs a file that is the set
    /// at one instant even while writers go on.
    async fn snapshot(
        &self,
        from: &str,
        until: Option<&str>,
        now_ms: i64,
        out: tokio::sync::mpsc::Sender<RetainedMessage>,
    ) -> Result<u64, Error>;

    /// Records that `topics` were read at `now_ms` (never moves a time backwards).
    async fn touch(&self, topics: &[TopicName], now_ms: i64) -> Result<(), Error>;

    /// Turns up to `limit` messages whose expiry is at or before `now_ms` into tombstones of an
    /// expiry, each with a new revision (so watches hear of it); returns how many. The
    /// tombstone keeps the message's write ticket and expiry time, so it guards against older
    /// writes as the expired message did, and is purged with the other tombstones.
    async fn expire(&self, now_ms: i64, limit: u32) -> Result<u64, Error>;

    /// Deletes up to `limit` tombstones of changes made (or messages expired) at or before
    /// `cutoff_ms`; returns how many. The highest revision removed becomes the compaction
    /// point ([`RetainedStore::compacted`]).
    async fn purge_tombstones(&self, cutoff_ms: i64, limit: u32) -> Result<u64, Error>;

    /// Turns up to `limit` messages neither updated nor read since `cutoff_ms` into tombstones
    /// of the retention purge, dated `now_ms`; returns how many.
    async fn purge_idle(&self, cutoff_ms: i64, now_ms: i64, limit: u32) -> Result<u64, Error>;

    /// Removes entries of the change log that are no longer their topic's latest change,
    /// examining up to `limit` entries after `after` in revision order. Returns how many it
    /// removed, and the last revision it examined (`None`: none left after `after`).
    async fn compact_changes(
        &self,
        after: Revision,
        limit: u32,
    ) -> Result<(u64, Option<Revision>), Error>;

    /// Up to `limit` changes after revision `after` whose topics are in `[from, until)`, in
    /// revision order: each topic's latest change only (a put, a delete, an expiry), and only
    /// changes that can no longer be preceded by one still in flight. The page's `settled`
    /// tells where the next page starts.
    async fn changes(
        &self,
        after: Revision,
        from: &str,
        until: Option<&str>,
        limit: u32,
        now_ms: i64,
    ) -> Result<ChangePage, Error>;

    /// The revision every change at or below which is settled (committed, or never to be):
    /// where a watch that starts from the current set starts following changes.
    async fn settled(&self) -> Result<Revision, Error>;

    /// The highest revision this database can have given out, settled or not: every revision
    /// a client got from it (an event's id, an ETag) is at or below it. One above it is another
    /// database's (a restore of an older copy, another deployment).
    async fn reached(&self) -> Result<Revision, Error>;

    /// The highest revision whose tombstone has been purged: changes after a revision below
    /// this one may have been lost to a reader, which must start over.
    async fn compacted(&self) -> Result<Revision, Error>;

    /// The secret that signs pagination tokens. Created once per database, so every node that
    /// shares the database accepts the tokens of the others.
    async fn token_key(&self, candidate: &[u8]) -> Result<Vec<u8>, Error>;

    /// A cheap query that succeeds only when the database answers.
    async fn ping(&self) -> Result<(), Error>;

    /// Writes `sessions` in one transaction, each replacing a saved session of its client id
    /// (decision 024). No two of them have the same client id.
    async fn save_sessions(&self, sessions: &[SavedSession]) -> Result<(), Error>;

    /// Reads and deletes, in one transaction, up to `limit` saved sessions whose states hold
    /// at most `max_bytes` together (one, if the first alone holds more), in no particular
    /// order; none are left when it returns none.
    ///
    /// A take that cannot commit by `deadline` rolls back and fails with
    /// [`Error::Unavailable`], and one that fails leaves every row: taken rows are gone, so a
    /// take given up must not commit later (then nobody would hold those sessions). Past the
    /// deadline only a COMMIT already sent may still land, as with any commit.
    async fn take_sessions(
        &self,
        limit: usize,
        max_bytes: usize,
        deadline: Instant,
    ) -> Result<Vec<SavedSession>, Error>;

    /// News of changes made by other processes sharing the database, for read caches. `None`
    /// when no other process can write to it.
    fn change_feed(&self) -> Option<Box<dyn ChangeFeed>> {
        None
    }

    /// The shared pool's connections: how many are open, and how many of those are idle.
    fn pool_connections(&self) -> Option<(u32, usize)> {
        None
    }

    /// Most writes one group commit takes: what one [`RetainedStore::apply`] carries well, a
    /// measured value for each backend (decision 020). Below [`TICKET_REVISIONS`].
    fn max_write_batch(&self) -> usize;

    /// Most rows a retained delivery reads in one [`RetainedStore::scan_publishes`]: each page is that
    /// much of the database's time in one go, which writes wait behind where the database
    /// shares the cores (decision 020). No bound of the store's own by default.
    fn max_scan_rows(&self) -> u32 {
        u32::MAX
    }
}

/// A stream of [`Change`]s that never ends: it reconnects by itself and says when it could not
/// hear (`Lost`) and when it hears again (`Resumed`).
#[async_trait]
pub trait ChangeFeed: Send + 'static {
    async fn next(&mut self) -> Change;
}
