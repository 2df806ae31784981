//! The state every handler and middleware of the API shares: the services it calls (store,
//! broker, authenticator, throttle) and its settings, behind one cheap `Clone` handle.

use std::sync::Arc;

use axum::extract::FromRef;

use super::hosts::AllowedHosts;
use super::page_token::PageTokens;
use super::payload::MaxPayload;
use super::rates::Throttle;
use super::watch::Watches;
use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::topic::TopicLimits;

/// What every handler shares: a cheap `Clone` handle (one reference count; axum clones it for
/// every extractor and middleware of every request).
#[derive(Clone)]
pub struct ApiState(Arc<Shared>);

impl From<Shared> for ApiState {
    fn from(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for ApiState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The contents of [`ApiState`].
pub struct Shared {
    pub store: Store,
    pub broker: Broker,
    pub tokens: PageTokens,
    pub topic_limits: TopicLimits,
    pub max_payload_bytes: usize,
    /// Checks credentials on the AWS operations; disabled when no principals are configured.
    pub auth: Authenticator,
    /// Per-principal request rates of the AWS operations.
    pub throttle: Throttle,
    /// Host names answered besides loopback ones when there are no principals.
    pub allowed_hosts: AllowedHosts,
    /// What `GET /metrics` shows; the broker records into the same.
    pub metrics: Metrics,
    /// The node's watches of the retained set (`GET /retainedMessage-watch`).
    pub watches: Watches,
}

impl FromRef<ApiState> for MaxPayload {
    fn from_ref(state: &ApiState) -> Self {
        MaxPayload(state.max_payload_bytes)
    }
}

impl FromRef<ApiState> for TopicLimits {
    fn from_ref(state: &ApiState) -> Self {
        state.topic_limits
    }
}
