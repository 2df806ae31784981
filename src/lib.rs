//! retaind: MQTT retained messages as a service, with an AWS IoT data-plane compatible HTTP API.
//!
//! Layers, each importing only those above it in this list: `metrics` (what `/metrics`
//! shows, recorded into by every layer below it), `topic` (pure names and rules),
//! `auth` (pure credentials and policies), `rate` (a pure token bucket), `tcp` (accepted
//! sockets' options), `tls` (certificates and handshakes), `store` (persistence), `mqtt`
//! (framing over the codec crate; it borrows only `store::Qos`), `cluster` (many nodes as one
//! service over NATS: so far the subjects of topics and filters), `broker` (MQTT sessions,
//! subscriptions and retained delivery), `api` (HTTP, including MQTT over WebSocket into the
//! broker), `admin` (the `retaind retained ...` commands: a client of the HTTP API, or the
//! store opened directly), `app` (configuration and wiring).

pub mod admin;
pub mod api;
pub mod app;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod metrics;
pub mod mqtt;
pub mod rate;
pub mod store;
pub mod tcp;
pub mod tls;
pub mod topic;
