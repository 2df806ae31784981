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

/// Most sessions one call of [`crate::store::RetainedStore::take_sessions`] returns, and one
/// transaction of a save writes: each is at most a session's queue limit (16 MiB by default),
/// and the state of many must not be in flight at once.
pub const SESSIONS_PER_CALL: usize = 64;
