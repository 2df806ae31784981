//! Configuration and wiring: builds the store and the HTTP API from a [`ServeConfig`], starts
//! them, and stops them in order. The only module that knows every other one.

mod config;
mod maintenance;
mod redact;

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{Cli, Command, LogFormat, ServeConfig};
pub use redact::redact_url;

use crate::api::{self, ApiState, PageTokens};
use crate::auth::{AuthConfig, Authenticator, ConfigError};
use crate::broker::{self, Broker, BrokerConfig};
use crate::store::{self, Clock, Store, StoreOptions};
use crate::topic::TopicLimits;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--config {path}: {source}")]
    AuthConfig { path: PathBuf, source: ConfigError },
    #[error(
        "{flag} {addr} is not a loopback address, and no principals are configured: without \
         principals retaind allows anonymous access, so it listens only on loopback addresses \
         (127.0.0.1, ::1). Configure principals with --config (see docs/examples/auth.toml), \
         or bind {flag} to a loopback address"
    )]
    AnonymousNotLocal {
        flag: &'static str,
        addr: SocketAddr,
    },
    #[error("cannot open the store at {url}: {source}")]
    Store { url: String, source: store::Error },
    #[error("cannot listen for MQTT on {addr}: {source}")]
    BindMqtt {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How long MQTT clients get to receive their DISCONNECT at shutdown.
const MQTT_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A started service: its bound address and the means to stop it.
pub struct Running {
    pub http_addr: SocketAddr,
    pub mqtt_addr: SocketAddr,
    pub store: Store,
    pub broker: Broker,
    /// Who may do what; disabled (everyone may do everything) when no principals are configured.
    pub auth: Authenticator,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    mqtt: JoinHandle<()>,
    maintenance: JoinHandle<()>,
}

/// Opens the store, binds the listener and starts serving. Returns once requests can be served.
pub async fn start(config: &ServeConfig, clock: Clock) -> Result<Running, Error> {
    let auth = load_auth(config)?;
    check_local_only(config, &auth)?;
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
    let topic_limits = TopicLimits {
        max_bytes: config.max_topic_bytes,
        max_levels: config.max_topic_levels,
    };
    let broker = Broker::new(
        store.clone(),
        BrokerConfig {
            topic_limits,
            max_payload_bytes: config.max_payload_bytes,
            max_packet_bytes: config.mqtt_max_packet_bytes,
            max_queued_messages: config.mqtt_max_queued_messages,
            max_queued_bytes: config.mqtt_max_queued_bytes,
            max_inflight: config.mqtt_max_inflight,
            receive_maximum: config.mqtt_receive_maximum,
            topic_alias_maximum: config.mqtt_topic_alias_maximum,
            ..BrokerConfig::default()
        },
        auth.clone(),
    );
    let state = ApiState {
        store: store.clone(),
        broker: broker.clone(),
        tokens,
        topic_limits,
        max_payload_bytes: config.max_payload_bytes,
        auth: auth.clone(),
    };
    let mqtt_listener = TcpListener::bind(config.mqtt_addr)
        .await
        .map_err(|source| Error::BindMqtt {
            addr: config.mqtt_addr,
            source,
        })?;
    let mqtt_addr = mqtt_listener
        .local_addr()
        .map_err(|source| Error::BindMqtt {
            addr: config.mqtt_addr,
            source,
        })?;
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
        axum::serve(
            listener,
            // The peer address is for logs (MQTT over WebSocket names its clients by it).
            api::router(state).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future(),
    );
    let mqtt = tokio::spawn(broker::serve_tcp(broker.clone(), mqtt_listener));
    let maintenance = tokio::spawn(maintenance::run(
        store.clone(),
        config.retention,
        config.maintenance_interval,
        shutdown.clone(),
    ));
    Ok(Running {
        http_addr,
        mqtt_addr,
        store,
        broker,
        auth,
        shutdown,
        server,
        mqtt,
        maintenance,
    })
}

/// The principals of `--config`; none (anonymous access) without the flag.
fn load_auth(config: &ServeConfig) -> Result<Authenticator, Error> {
    let Some(path) = &config.config else {
        return Ok(Authenticator::disabled());
    };
    let err = |source| Error::AuthConfig {
        path: path.clone(),
        source,
    };
    Authenticator::new(AuthConfig::load(path).map_err(err)?).map_err(err)
}

/// Mosquitto 2's "local only" rule: anonymous access is allowed only to this machine. An
/// unspecified address (`0.0.0.0`, `::`) is every interface, so it is refused too.
fn check_local_only(config: &ServeConfig, auth: &Authenticator) -> Result<(), Error> {
    if auth.is_enabled() {
        return Ok(());
    }
    for (flag, addr) in [
        ("--http-addr", config.http_addr),
        ("--mqtt-addr", config.mqtt_addr),
    ] {
        if !addr.ip().to_canonical().is_loopback() {
            return Err(Error::AnonymousNotLocal { flag, addr });
        }
    }
    Ok(())
}

impl Running {
    /// Stops accepting connections, lets in-flight requests finish, tells MQTT clients the
    /// server is going away, then stops background work.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.broker.shutdown(MQTT_SHUTDOWN_GRACE).await;
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "HTTP server stopped with an error"),
            Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
        }
        if let Err(e) = self.mqtt.await {
            tracing::error!(error = %e, "MQTT listener task failed");
        }
        if let Err(e) = self.maintenance.await {
            tracing::error!(error = %e, "maintenance task failed");
        }
    }
}
