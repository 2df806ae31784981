//! Topic names and filters: parsed once at the edge, carried as types afterwards.
//!
//! This module is pure: no I/O, no async, no knowledge of HTTP, storage or sessions. It owns the
//! MQTT rules for what a topic name or filter may contain, how a filter matches a name, the
//! deployment limits (bytes, levels) that a service applies to names on top of them, and the
//! subscription tree that matches one name against many filters (the broker's sessions, and
//! the cluster's map of which node wants what).

mod filter;
mod levels;
mod name;
mod text;
mod tree;

pub use filter::{FilterError, FilterSpec, TopicFilter, prefix_end};
pub use levels::{Levels, levels};
pub use name::{TopicError, TopicLimits, TopicName};
pub use text::{NullCharacter, check_text};
pub use tree::{ClientKey, SubscriptionTree};
