//! Topic names: parsed once at the edge, carried as a type afterwards.
//!
//! This module is pure: no I/O, no async, no knowledge of HTTP or storage. It owns the MQTT
//! rules for what a topic name may contain and the deployment limits (bytes, levels) that a
//! service applies on top of them.

mod name;

pub use name::{TopicError, TopicLimits, TopicName};
