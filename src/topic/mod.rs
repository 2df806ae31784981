//! Topic names and filters: parsed once at the edge, carried as types afterwards.
//!
//! This module is pure: no I/O, no async, no knowledge of HTTP, storage or sessions. It owns the
//! MQTT rules for what a topic name or filter may contain, how a filter matches a name, and the
//! deployment limits (bytes, levels) that a service applies to names on top of them.

mod filter;
mod name;
mod text;

pub use filter::{FilterError, FilterSpec, TopicFilter, prefix_end};
pub use name::{TopicError, TopicLimits, TopicName};
pub use text::{NullCharacter, check_text};
