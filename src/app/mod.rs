//! Configuration and wiring: builds the store and the HTTP API from a [`ServeConfig`], starts
//! them, and stops them in order. The only module that knows every other one.

mod config;
mod maintenance;
mod redact;

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{Cli, Command, LogFormat, ServeConfig};
pub use redact::redact_url;

use crate::api::{self, ApiState, PageTokens};
use crate::store::{self, Clock, Store, StoreOptions};
use crate::topic::TopicLimits;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the store at {url}: {source}")]
    Store { url: String, source: store::Error },
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started service: its bound address and the means to stop it.
pub struct Running {
    pub http_addr: SocketAddr,
    pub store: Store,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    maintenance: JoinHandle<()>,
}

/// Opens the store, binds the listener and starts serving. Returns once requests can be served.
pub async fn start(config: &ServeConfig, clock: Clock) -> Result<Running, Error> {
    let store_err = |source| Error::Store {
        url: redact_url(&config.database_url),
        source,
    };
    let backend = store::open_backend(
        &config.database_url,
        config.db_max_connections,
        config.store_timeout,
    )
    .await
    .map_err(store_err)?;
    let store = Store::new(
        backend,
        clock,
        StoreOptions {
            timeout: config.store_timeout,
            // Half the pool for point reads leaves connections for writes, lists and purges.
            read_concurrency: (config.db_max_connections as usize / 2).max(1),
            cache_bytes: config.read_cache_mib.saturating_mul(1 << 20),
        },
    );
    let tokens = PageTokens::new(&store.token_key().await.map_err(store_err)?);
    let state = ApiState {
        store: store.clone(),
        tokens,
        topic_limits: TopicLimits {
            max_bytes: config.max_topic_bytes,
            max_levels: config.max_topic_levels,
        },
        max_payload_bytes: config.max_payload_bytes,
    };
    let listener = TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| Error::Bind {
            addr: config.http_addr,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.http_addr,
        source,
    })?;

    let shutdown = CancellationToken::new();
    let server = tokio::spawn(
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );
    let maintenance = tokio::spawn(maintenance::run(
        store.clone(),
        config.retention,
        config.maintenance_interval,
        shutdown.clone(),
    ));
    Ok(Running {
        http_addr,
        store,
        shutdown,
        server,
        maintenance,
    })
}

impl Running {
    /// Stops accepting connections, lets in-flight requests finish, then stops background work.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "HTTP server stopped with an error"),
            Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
        }
        if let Err(e) = self.maintenance.await {
            tracing::error!(error = %e, "maintenance task failed");
        }
    }
}
