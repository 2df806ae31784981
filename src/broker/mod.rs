//! The embedded MQTT broker: sessions, the subscription tree, routing and retained delivery.
//!
//! [`Broker`] (`handle`) is a cheap `Clone` handle. The pure parts — the subscription tree
//! (`tree`), a session's queues and acknowledgements (`session`), a client's inbound QoS
//! bookkeeping (`inbound_qos`) and what its packets do (`client`) — hold no socket and are
//! tested directly. `connection` runs one client's protocol over any byte stream (TCP, or a
//! WebSocket from the HTTP layer); `listener` accepts TCP and TLS connections. Retained
//! messages live in the [`crate::store::Store`] shared with the HTTP API, so both see one
//! state.
//!
//! This file only declares the modules and what the crate sees of them; no module imports
//! from it, so the modules' imports form a tree.

mod accept;
mod admission;
mod awaiting;
mod background;
mod census;
mod client;
mod conditional;
mod config;
mod connect_rate;
mod connection;
mod deferred;
mod drain;
mod end;
mod exchanges;
mod expiry;
mod handle;
mod inbound_publish;
mod inbound_qos;
mod kept;
mod known_credentials;
mod limits;
mod listener;
mod message;
mod observe;
mod outbound;
mod password_checks;
mod patience;
mod peers;
mod principal_connections;
mod publish_rate;
mod queue_memory;
mod reauthorize;
mod registry;
mod remote;
mod restart;
mod resume;
mod retained;
mod session;
mod settling;
mod stall;
mod subscribe;
mod sys_topics;
mod wake;
mod will;
mod wire;

pub use crate::topic::{ClientKey, SubscriptionTree};
pub use admission::TransportIdentity;
pub use config::BrokerConfig;
pub use handle::{Broker, PublishFrom};
pub use limits::takeover_margin;
pub use listener::{serve_tcp, serve_tls};
pub use message::{Message, Publication};
pub use password_checks::PasswordCheckStats;
pub use reauthorize::Reauthorized;
pub use remote::Remote;
pub use restart::SessionsRestored;
