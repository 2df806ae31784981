//! What the change log gives a watch: each topic's latest change, in revision order.

use super::RetainedMessage;
use super::message::{Revision, Writer};
use crate::topic::TopicName;

/// How a topic changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// Stored (or replaced): the message as it now is.
    Put(Box<RetainedMessage>),
    /// Deleted by a write.
    Delete,
    /// Its message expired (MQTT 5 Message Expiry Interval).
    Expired,
    /// Removed by the retention purge (neither updated nor read for the retention period).
    Purged,
}

/// One change to the retained set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedChange {
    pub revision: Revision,
    pub topic: TopicName,
    pub kind: ChangeKind,
    /// Who made it; `None` for expiry and the retention purge, and rows from before revisions.
    pub writer: Option<Writer>,
}

/// A page of changes, and the revision the next page starts after: the last change's when the
/// page is full, else the highest revision known settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangePage {
    pub changes: Vec<RetainedChange>,
    pub settled: Revision,
    /// The read gave as many rows as asked, so more may follow at once. Judged by the rows,
    /// not by `changes`: a message that expired after it was logged is read and left out
    /// (its expiry comes later, as a change of its own), and a page short of one is no sign
    /// that the log's end is near.
    pub full: bool,
}
