//! A persistent session as a node keeps it across its own restart (decision 024). The store
//! holds it and never reads its state: what a session is belongs to the broker.

use bytes::Bytes;

/// One saved session: a row of `saved_sessions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedSession {
    pub client_id: String,
    /// The principal that created it (`None`: anonymous); only it may resume the session.
    pub creator: Option<String>,
    /// When it ends unless its client returns (epoch ms); `None`: never.
    pub expires_at_ms: Option<i64>,
    /// The broker's encoding of the session.
    pub state: Bytes,
}

/// A count or a size as SQL takes it: past `i64::MAX` is no bound at all.
pub(super) fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Most sessions one call of [`crate::store::RetainedStore::take_sessions`] returns, and one
/// transaction of a save writes.
pub const SESSIONS_PER_CALL: usize = 64;

/// Most bytes of session state one call carries, a session larger than this alone: each is up
/// to its queue limit (16 MiB by default), and the state of many must not be in flight at once,
/// nor take longer than the store's timeout.
pub const SESSION_BYTES_PER_CALL: usize = 16 << 20;
