//! The retained-message store: the only door to persistence.
//!
//! [`RetainedStore`] is the backend trait, implemented for Postgres (production) and SQLite (the
//! zero-setup default); both pass the same contract suite in `tests/store_contract.rs`.
//! [`Store`] is the cheap `Clone` handle the rest of the service uses. It adds what a backend
//! should not have to know about: group commit of writes, coalescing of point reads, lazy
//! recording of reads for the retention rule, a read cache kept coherent across nodes by a
//! change feed, and a deadline on every call so a store that
//! stops answering becomes an error instead of a hang.
//!
//! This module knows nothing about HTTP or MQTT sessions.

mod backend;
mod cache;
mod clock;
mod coalesce;
mod error;
mod failures;
mod feed;
mod handle;
mod message;
mod open;
mod postgres;
mod quota;
mod row;
mod saved_session;
mod schema;
mod sqlite;
mod sqlite_apply;
mod sqlite_books;
mod sqlite_scan;
mod sqlite_sessions;
mod sqlite_writer;
mod watch;
mod watch_hub;
mod watch_types;
mod write_batch;
mod write_lane;
mod write_lanes;

pub use backend::{ChangeFeed, Readers, RetainedStore, Verdict};
pub use clock::Clock;
pub use error::Error;
pub use feed::Change;
pub use handle::{MaintenanceReport, PAYLOAD_BYTES_MAX_AGE, Store, StoreOptions, purge_delay};
pub use message::{
    Condition, MAX_USER_PROPERTY_BYTES, MessageProperties, OwnedWrite, Owner, PayloadFormat, Qos,
    QuotaExceeded, RetainedMessage, RetainedPublish, RetainedSummary, Revision, UserProperty,
    Write, Writer, parse_revision, user_properties_wire_len,
};
pub use open::{open_backend, postgres_options};
pub use saved_session::{SESSION_BYTES_PER_CALL, SESSIONS_PER_CALL, SavedSession};
pub use schema::known_migrations;
pub use watch::{Resync, Watch, WatchItem, WatchStart};
pub use watch_hub::{HubOptions, Joined, WatchEnd, WatchHub};
pub use watch_types::{ChangeKind, ChangePage, RetainedChange};
pub use write_batch::WriteBatch;
