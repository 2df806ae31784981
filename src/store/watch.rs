//! One watch of the retained set: the matching messages as they are (a snapshot), then every
//! change after, in revision order, with no gap and no repeat (decision 018, "Watch").
//!
//! A watch moves through three phases, each reading where the last stopped:
//!
//! - **Snapshot** (only without a starting revision): the settled revision `S` is read first,
//!   then the matching set page by page in topic order. A message whose revision is above `S`
//!   is left out: it changed after `S`, so the log holds it (or a later change of its topic)
//!   above `S`, and the next phase gives it. Every message at or below `S` is one no change
//!   after `S` has touched, so the log will not give it again. The snapshot read in pages is
//!   therefore, together with the log after `S`, exactly the set as it goes on, with no topic
//!   given twice for the same revision.
//! - **Catch-up**: the log after the watch's position, read by the watch itself, until it
//!   reaches the settled point; then it joins the node's hub ([`WatchHub`]) and reads on only
//!   up to the revision the hub had reached when it joined.
//! - **Live**: the hub hands it every change after that revision. A change at or below the
//!   watch's position (the hub may have joined it below where catch-up went) is skipped.
//!
//! A watch resuming from below the compaction point or from above any revision the database
//! has given out, or one the hub dropped because its buffer filled, ends with a resync: the
//! client must start over from a snapshot.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::message::{RetainedMessage, Revision, user_properties_wire_len};
use super::watch_hub::{Joined, WatchEnd, WatchHub};
use super::watch_types::{ChangeKind, RetainedChange};
use super::{Error, Store};
use crate::topic::{TopicFilter, TopicName};

/// Messages or changes read per query, at most.
const PAGE: u32 = 200;

/// Bytes of messages a watch holds read and not yet given, past which a page read adds no more
/// (decision 018, "A watch's memory"). A reader that stops reading keeps what its watch holds
/// until the connection's idle timeout, so this, with the largest message, bounds what each
/// watch can keep; it is some pages of small messages, and only the first message of a page
/// of large ones, which is always taken, so the watch moves on.
const HELD_BYTES: usize = 1024 * 1024;

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStart {
    /// The matching set as it is, then the changes after it.
    Snapshot,
    /// The changes after the settled revision, with no snapshot: for a client that already
    /// holds (or does not need) the current set, such as a console page it just listed.
    Now,
    /// The changes after this revision (a resuming client).
    After(Revision),
}

/// What a watch gives next.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// A message of the snapshot (topic order, so no position to resume from).
    Current(Box<RetainedMessage>),
    /// The snapshot is complete, as of this revision; changes after it follow.
    Synced(Revision),
    /// A change after the watch's position.
    Change(Arc<RetainedChange>),
    /// Nothing matching changed up to this revision (sent when the watch is idle).
    Progress(Revision),
    /// The watch cannot go on without a gap; it ends. `revision`: the compaction point, the
    /// watch's position when its buffer filled, or the highest revision the database has
    /// reached when asked for one above it.
    Resync { why: Resync, revision: Revision },
}

/// Why a watch must start over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// It asked for changes from below the compaction point.
    Compacted,
    /// It fell behind: its buffer filled.
    Overflow,
    /// It asked for changes after a revision this database never gave out (another
    /// database's: a restored copy, another deployment).
    Ahead,
}

enum Phase {
    Snapshot {
        settled: Revision,
        after: Option<TopicName>,
    },
    CatchUp {
        joined: Option<Joined>,
    },
    Live {
        joined: Joined,
    },
    Ended,
}

/// One watch; [`Watch::next`] gives its items.
pub struct Watch {
    hub: WatchHub,
    store: Store,
    filter: TopicFilter,
    from: String,
    until: Option<String>,
    phase: Phase,
    pending: VecDeque<WatchItem>,
    /// The bytes of the messages in `pending` ([`held_bytes`]).
    held: usize,
    /// Rows the next page asks for: cut to what the last page could keep when large messages
    /// filled `HELD_BYTES`, so rows read and left are not read many times over, and grown back
    /// towards `PAGE` by the pages that fit.
    limit: u32,
    /// Every change at or below it has been read (it may still be in `pending`).
    position: Revision,
    progress: Interval,
    /// Nothing was given since the last tick of `progress`.
    quiet: bool,
    /// `quiet` as it was before the item given last, for [`Watch::withheld`] to restore.
    quiet_before: Option<bool>,
}

impl Watch {
    /// A watch of `filter` from `start`. Idle, it gives a progress item every
    /// `progress_every` at most.
    pub async fn start(
        hub: &WatchHub,
        store: &Store,
        filter: TopicFilter,
        start: WatchStart,
        progress_every: Duration,
    ) -> Result<Self, Error> {
        let (range_from, until) = filter.scan_range();
        let mut pending = VecDeque::new();
        let (phase, position) = match start {
            WatchStart::Now => {
                // As a snapshot that found nothing: every change after the settled point
                // follows, none at or below it can still appear.
                let settled = store.settled().await?;
                pending.push_back(WatchItem::Synced(settled));
                (Phase::CatchUp { joined: None }, settled)
            }
            WatchStart::Snapshot => {
                let settled = store.settled().await?;
                let phase = Phase::Snapshot {
                    settled,
                    after: None,
                };
                (phase, settled)
            }
            WatchStart::After(from) => {
                let compacted = store.compacted().await?;
                if from < compacted {
                    pending.push_back(resync(Resync::Compacted, compacted));
                    (Phase::Ended, from)
                } else {
                    // A revision this database never gave out: changes at or below it, which
                    // it has yet to make, would be skipped as if the client had them.
                    let reached = store.reached().await?;
                    if from > reached {
                        pending.push_back(resync(Resync::Ahead, reached));
                        (Phase::Ended, from)
                    } else {
                        (Phase::CatchUp { joined: None }, from)
                    }
                }
            }
        };
        let period = progress_every.max(Duration::from_millis(10));
        let mut progress = tokio::time::interval_at(Instant::now() + period, period);
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self {
            hub: hub.clone(),
            store: store.clone(),
            filter,
            from: range_from,
            until,
            phase,
            pending,
            held: 0,
            limit: PAGE,
            position,
            progress,
            quiet: true,
            quiet_before: None,
        })
    }

    /// The item [`Watch::next`] gave last was not sent: the caller may not read its topic. It
    /// does not count as given, so a progress moves past it as past a change the filter left
    /// out, and the caller learns nothing of it that a progress would not tell.
    pub fn withheld(&mut self) {
        if let Some(quiet) = self.quiet_before.take() {
            self.quiet = quiet;
        }
    }

    /// Bytes of the messages this watch has read and not given yet.
    pub fn held(&self) -> usize {
        self.held
    }

    /// The next item; `None` when the watch has ended (after a resync, or as the service
    /// stops). Cancel-safe: state changes only after each read completes.
    pub async fn next(&mut self) -> Result<Option<WatchItem>, Error> {
        self.quiet_before = None;
        loop {
            if let Some(item) = self.pending.pop_front() {
                self.held -= held_bytes(&item);
                self.quiet_before = Some(self.quiet);
                self.quiet = false;
                return Ok(Some(item));
            }
            match &mut self.phase {
                Phase::Ended => return Ok(None),
                Phase::Snapshot { settled, after } => {
                    let settled = *settled;
                    let limit = self.limit;
                    let page = self
                        .store
                        .scan(&self.from, self.until.as_deref(), after.as_ref(), limit)
                        .await?;
                    let read_all = page.len() < limit as usize;
                    let mut taken = 0;
                    let mut cut = false;
                    for message in page {
                        // The rest is read again by the next page, after the last topic taken.
                        if self.held >= HELD_BYTES {
                            cut = true;
                            break;
                        }
                        taken += 1;
                        *after = Some(message.topic.clone());
                        if message.revision <= settled && self.filter.matches(&message.topic) {
                            let item = WatchItem::Current(Box::new(message));
                            self.held += held_bytes(&item);
                            self.pending.push_back(item);
                        }
                    }
                    self.limit = next_limit(limit, cut, taken);
                    if read_all && !cut {
                        self.pending.push_back(WatchItem::Synced(settled));
                        self.phase = Phase::CatchUp { joined: None };
                    }
                }
                Phase::CatchUp { .. } => self.catch_up().await?,
                Phase::Live { joined } => {
                    tokio::select! {
                        received = joined.recv() => match received {
                            Ok(change) => {
                                if change.revision > self.position {
                                    self.position = change.revision;
                                    let item = WatchItem::Change(change);
                                    self.held += held_bytes(&item);
                                    self.pending.push_back(item);
                                }
                            }
                            Err(WatchEnd::Stopped) => self.phase = Phase::Ended,
                            Err(WatchEnd::Overflow) => {
                                self.pending.push_back(resync(Resync::Overflow, self.position));
                                self.phase = Phase::Ended;
                            }
                            Err(WatchEnd::Compacted) => {
                                let compacted = self.store.compacted().await?;
                                self.pending.push_back(resync(Resync::Compacted, compacted));
                                self.phase = Phase::Ended;
                            }
                        },
                        _ = self.progress.tick() => {
                            if self.quiet
                                && let Some(at) = joined.caught_up()
                                && at > self.position
                            {
                                self.position = at;
                                self.pending.push_back(WatchItem::Progress(at));
                            }
                            self.quiet = true;
                        }
                    }
                }
            }
        }
    }

    /// One page of the log after the position; joins the hub once the settled point is
    /// reached, and goes live once the position reaches where the hub was when it joined.
    async fn catch_up(&mut self) -> Result<(), Error> {
        let cap = match &self.phase {
            Phase::CatchUp { joined } => joined.as_ref().map(|j| j.joined_at),
            _ => return Ok(()),
        };
        let limit = self.limit;
        let page = self
            .store
            .changes(self.position, &self.from, self.until.as_deref(), limit)
            .await?;
        // A tombstone above the position purged before this read would be a delete missed.
        let compacted = self.store.compacted().await?;
        if compacted > self.position {
            self.pending.push_back(resync(Resync::Compacted, compacted));
            self.phase = Phase::Ended;
            return Ok(());
        }
        let mut full = page.full;
        let mut reached = page.settled.max(self.position);
        if let Some(cap) = cap {
            reached = reached.min(cap.max(self.position));
        }
        let mut taken = 0;
        let mut cut = false;
        for change in page.changes {
            if change.revision > reached {
                break;
            }
            // The rest is read again by the next page, after the last change taken: the page
            // counts as full, so the watch does not join the hub before it has read them.
            if self.held >= HELD_BYTES {
                reached = self.position;
                full = true;
                cut = true;
                break;
            }
            taken += 1;
            self.position = change.revision;
            if self.filter.matches(&change.topic) {
                let item = WatchItem::Change(Arc::new(change));
                self.held += held_bytes(&item);
                self.pending.push_back(item);
            }
        }
        self.limit = next_limit(limit, cut, taken);
        self.position = reached.max(self.position);
        if cap.is_none() && !full {
            // The phase stays as it is across this wait: cancelled here, the next call reads on.
            let joined = self.hub.join(&self.filter).await?;
            self.phase = if joined.joined_at <= self.position {
                Phase::Live { joined }
            } else {
                Phase::CatchUp {
                    joined: Some(joined),
                }
            };
        } else if let Phase::CatchUp { joined } = &mut self.phase
            && joined
                .as_ref()
                .is_some_and(|j| j.joined_at <= self.position)
            && let Some(joined) = joined.take()
        {
            self.phase = Phase::Live { joined };
        }
        Ok(())
    }
}

/// What an item's message weighs in memory, near enough: its variable parts.
fn held_bytes(item: &WatchItem) -> usize {
    let message = match item {
        WatchItem::Current(message) => message,
        WatchItem::Change(change) => match &change.kind {
            ChangeKind::Put(message) => message,
            ChangeKind::Delete | ChangeKind::Expired | ChangeKind::Purged => return 0,
        },
        WatchItem::Synced(_) | WatchItem::Progress(_) | WatchItem::Resync { .. } => return 0,
    };
    let properties = &message.properties;
    message.topic.as_str().len()
        + message.payload.len()
        + user_properties_wire_len(&properties.user_properties)
        + properties.content_type.as_ref().map_or(0, String::len)
        + properties
            .response_topic
            .as_ref()
            .map_or(0, |t| t.as_str().len())
        + properties.correlation_data.as_ref().map_or(0, |d| d.len())
}

/// The rows the page after one that asked for `limit` and took `taken` asks for.
fn next_limit(limit: u32, cut: bool, taken: u32) -> u32 {
    if cut {
        taken.max(1)
    } else {
        limit.saturating_mul(2).min(PAGE)
    }
}

fn resync(why: Resync, revision: Revision) -> WatchItem {
    WatchItem::Resync { why, revision }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_cut_page_is_followed_by_one_of_what_it_took() {
        assert_eq!(next_limit(PAGE, true, 8), 8);
        // However large the first message, the next page reads one at least.
        assert_eq!(next_limit(PAGE, true, 0), 1);
    }

    #[test]
    fn pages_that_fit_grow_back_to_the_page() {
        assert_eq!(next_limit(8, false, 8), 16);
        assert_eq!(next_limit(150, false, 150), PAGE);
        assert_eq!(next_limit(PAGE, false, PAGE), PAGE);
    }

    #[test]
    fn an_item_weighs_its_message_and_only_a_put_has_one() {
        let topic = TopicName::from_stored("a/b".to_owned());
        let mut message = RetainedMessage {
            topic: topic.clone(),
            payload: Bytes::from(vec![0; 1000]),
            qos: super::super::message::Qos::AtMostOnce,
            properties: Default::default(),
            expires_at_ms: None,
            last_modified_ms: 0,
            last_accessed_ms: 0,
            revision: 1,
            writer: None,
        };
        message.properties.correlation_data = Some(Bytes::from_static(b"0123"));
        assert_eq!(
            held_bytes(&WatchItem::Current(Box::new(message.clone()))),
            3 + 1000 + 4
        );
        let change = |kind| {
            WatchItem::Change(Arc::new(RetainedChange {
                revision: 1,
                topic: topic.clone(),
                kind,
                writer: None,
            }))
        };
        assert_eq!(
            held_bytes(&change(ChangeKind::Put(Box::new(message)))),
            1007
        );
        assert_eq!(held_bytes(&change(ChangeKind::Delete)), 0);
        assert_eq!(held_bytes(&WatchItem::Synced(1)), 0);
    }
}
