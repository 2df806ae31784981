//! Configuration and wiring: builds the store and the HTTP API from a [`ServeConfig`], starts
//! them, and stops them in order. The only module that knows every other one.

mod check_config;
mod config;
mod config_file;
mod maintenance;
mod open_files;
mod proxy;
mod redact;
mod reload;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use check_config::check_config;
pub use config::{
    Cli, ClusterAction, Command, DeliveryPriority, LogFormat, ProxyListener, ServeConfig,
};
pub use config_file::{ConfigFile, Problem};
pub use redact::redact_url;
pub use reload::{RefusedReload, Reloaded};

use crate::api::{
    self, AllowedHosts, ApiState, HttpTimeouts, PageTokens, RateLimits, Throttle, WatchSettings,
    Watches,
};
use crate::auth::{AuthConfig, Authenticator, ConfigError, PrincipalDefaults};
use crate::broker::{self, Broker, BrokerConfig};
use crate::cluster::{self, Cluster, ClusterConfig};
use crate::metrics::{Listener, Metrics};
use crate::store::{self, Clock, Store, StoreOptions};
use crate::tcp::proxy::ProxyProtocol;
use crate::tls::{self, LiveAcceptor, TlsAcceptors, TlsFiles, TlsIncoming};
use crate::topic::TopicLimits;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--principals {path}: {source}")]
    AuthConfig { path: PathBuf, source: ConfigError },
    #[error("--config-file {path}:{}", problem_lines(.problems))]
    ConfigFile {
        path: PathBuf,
        problems: Vec<Problem>,
    },
    #[error(
        "{flag} {addr} is not a loopback address, and no principals are configured: without \
         principals retaind allows anonymous access, so it listens only on loopback addresses \
         (127.0.0.1, ::1). Configure principals with --principals (see docs/examples/auth.toml), \
         or bind {flag} to a loopback address"
    )]
    AnonymousNotLocal {
        flag: &'static str,
        addr: SocketAddr,
    },
    // Not `source`: the message already says it, and a source would print it twice.
    #[error("cannot open the store at {url}: {cause}")]
    Store { url: String, cause: store::Error },
    #[error("cannot take up the persistent sessions saved at the last stop: {0}")]
    SavedSessions(store::Error),
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
    #[error(transparent)]
    Tls(#[from] tls::Error),
    #[error(
        "--cluster-url needs a postgres:// --database-url: the nodes of one service share \
         their retained messages through Postgres, and a SQLite file serves one process"
    )]
    ClusterNeedsPostgres,
    #[error("{flag} {}: {source}", path.display())]
    ClusterFile {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} are two identities for NATS: give one")]
    ClusterTwoIdentities(&'static str),
    #[error(transparent)]
    Cluster(#[from] cluster::Error),
    #[error("{flag} needs --tls-cert and --tls-key")]
    TlsFilesMissing { flag: &'static str },
    #[error("--proxy-protocol names {listener}, which is off: give {flag} or leave it out")]
    ProxyProtocolListenerOff {
        listener: &'static str,
        flag: &'static str,
    },
    #[error("cannot listen on {flag} {addr}: {source}")]
    BindTls {
        flag: &'static str,
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
    /// MQTT over TLS, when `--mqtts-addr` is given.
    pub mqtts_addr: Option<SocketAddr>,
    /// HTTPS (API, console, MQTT over secure WebSocket), when `--https-addr` is given.
    pub https_addr: Option<SocketAddr>,
    pub store: Store,
    pub broker: Broker,
    /// Who may do what; disabled (everyone may do everything) when no principals are configured.
    pub auth: Authenticator,
    reloader: reload::Reloader,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
    https: Option<JoinHandle<()>>,
    mqtt: JoinHandle<()>,
    mqtts: Option<JoinHandle<()>>,
    maintenance: JoinHandle<()>,
}

/// Opens the store, binds the listener and starts serving. Returns once requests can be served.
pub async fn start(config: &ServeConfig, clock: Clock) -> Result<Running, Error> {
    let auth = load_auth(config)?;
    check_local_only(config, &auth)?;
    let tls = load_tls(config)?;
    check_cluster(config)?;
    proxy::check(config)?;
    // MQTT connections (with the take-overs' margin past them, and those before CONNECT), HTTP
    // connections, the database's (reads and scans, write lanes, the cluster's), and a margin
    // for listeners and files.
    let needed = config.mqtt_max_connections as u64
        + broker::takeover_margin(config.mqtt_max_connections) as u64
        + u64::from(config.mqtt_max_awaiting_connect)
        + u64::from(config.http_max_connections)
        + 2 * u64::from(config.db_max_connections)
        + u64::from(config.db_write_lanes)
        + config
            .cluster_url
            .as_ref()
            .map_or(0, |_| u64::from(config.cluster_db_connections) + 2)
        + 512;
    open_files::raise(needed);
    let store_err = |cause| Error::Store {
        url: redact_url(&config.database_url),
        cause,
    };
    let backend = store::open_backend(
        &config.database_url,
        config.db_max_connections,
        config.store_timeout,
        config.db_startup_wait,
    )
    .await
    .map_err(store_err)?;
    let metrics = Metrics::default();
    let store = Store::new(
        backend,
        clock,
        StoreOptions {
            timeout: config.store_timeout,
            // Half the pool for point reads leaves connections for writes, lists and purges.
            read_concurrency: (config.db_max_connections as usize / 2).max(1),
            cache_bytes: config.read_cache_mib.saturating_mul(1 << 20),
            max_messages: (config.max_retained_messages > 0)
                .then_some(config.max_retained_messages),
            write_lanes: usize::from(config.db_write_lanes),
            scan_rows: config.db_scan_rows,
            metrics: metrics.clone(),
        },
    );
    let tokens = PageTokens::new(&store.token_key().await.map_err(store_err)?);
    let topic_limits = TopicLimits {
        max_bytes: config.max_topic_bytes,
        max_levels: config.max_topic_levels,
    };
    let cluster = match &config.cluster_url {
        None => None,
        Some(url) => Some(
            Cluster::start(ClusterConfig {
                url: url.clone(),
                access: cluster::NatsAccess::new(
                    config.cluster_tls_ca.clone(),
                    config.cluster_tls_cert.clone(),
                    config.cluster_tls_key.clone(),
                    cluster_key_file(config),
                )?,
                prefix: config.cluster_prefix.clone(),
                db_connections: config.cluster_db_connections,
                jetstream_domain: config.cluster_jetstream_domain.clone(),
                startup_wait: config.db_startup_wait,
                max_payload_bytes: config.max_payload_bytes,
                topic_limits,
                database_url: config.database_url.clone(),
                database_timeout: config.store_timeout,
                liveness: config.cluster_dead_after,
            })
            .await?,
        ),
    };
    let broker = Broker::new(
        store.clone(),
        BrokerConfig {
            topic_limits,
            max_payload_bytes: config.max_payload_bytes,
            max_packet_bytes: config.mqtt_max_packet_bytes,
            max_queued_messages: config.mqtt_max_queued_messages,
            max_queued_bytes: config.mqtt_max_queued_bytes,
            max_queue_memory_bytes: config.mqtt_max_queue_memory_mib.saturating_mul(1 << 20),
            max_offline_sessions: config.mqtt_max_offline_sessions,
            max_inflight: config.mqtt_max_inflight,
            receive_maximum: config.mqtt_receive_maximum,
            topic_alias_maximum: config.mqtt_topic_alias_maximum,
            max_connections: config.mqtt_max_connections,
            max_awaiting_connect: config.mqtt_max_awaiting_connect as usize,
            max_subscriptions: config.mqtt_max_subscriptions,
            max_publish_rate: config.mqtt_max_publish_rate,
            connect_rate_per_client_id: config.mqtt_connect_rate_per_client_id,
            connect_rate_per_principal: config.mqtt_connect_rate_per_principal,
            publish_rate_per_principal: config.mqtt_publish_rate_per_principal,
            max_keep_alive: config.mqtt_max_keep_alive,
            max_session_expiry: config.mqtt_max_session_expiry,
            write_timeout: config.mqtt_write_timeout,
            drain_time: config.mqtt_drain_time,
            server_reference: config
                .mqtt_server_reference
                .as_deref()
                .map(std::sync::Arc::from),
            sys_interval: config.sys_interval,
            retained_in_background: !matches!(
                config.mqtt_retained_delivery_priority,
                DeliveryPriority::Normal
            ),
            ..BrokerConfig::default()
        },
        auth.clone(),
        cluster,
        metrics.clone(),
    );
    // Before anything can publish: a message for a restored session must find it.
    broker
        .restore_sessions()
        .await
        .map_err(Error::SavedSessions)?;
    // Made before the API state: the watches end their streams when it is cancelled.
    let shutdown = CancellationToken::new();
    let state = ApiState::from(api::Shared {
        store: store.clone(),
        broker: broker.clone(),
        tokens,
        topic_limits,
        max_payload_bytes: config.max_payload_bytes,
        auth: auth.clone(),
        throttle: Throttle::new(RateLimits {
            get_retained_message: config.rate_get_retained_message,
            list_retained_messages: config.rate_list_retained_messages,
            publish: config.rate_publish,
            watch_retained_messages: config.rate_watch_retained_messages,
            delete_connection: config.rate_delete_connection,
        })
        .service_wide(broker.cluster().cloned()),
        allowed_hosts: AllowedHosts::new(&config.allowed_hosts),
        watches: Watches::new(
            store.clone(),
            WatchSettings {
                max_watches: watches_within_http_places(
                    config.max_watches,
                    config.http_max_connections,
                ),
                progress_every: config.watch_progress_interval,
                ..WatchSettings::default()
            },
            shutdown.clone(),
        ),
        metrics: metrics.clone(),
    });
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

    let mqtts_incoming = bind_tls(
        "--mqtts-addr",
        config.mqtts_addr,
        tls.as_ref().map(|t| &t.mqtt),
        proxy::setting(config, &metrics, ProxyListener::Mqtts),
    )
    .await?;
    let https_incoming = bind_tls(
        "--https-addr",
        config.https_addr,
        tls.as_ref().map(|t| &t.https),
        proxy::setting(config, &metrics, ProxyListener::Https),
    )
    .await?;
    for (listener, incoming) in [
        (Listener::mqtts, &mqtts_incoming),
        (Listener::https, &https_incoming),
    ] {
        if let Some((incoming, _, _)) = incoming {
            let given_up = incoming.given_up();
            metrics.on_scrape(move |m| {
                m.tls_handshakes_given_up(listener, given_up.load(Ordering::Relaxed));
            });
        }
    }
    let mqtts_addr = mqtts_incoming.as_ref().map(|(_, addr, _)| *addr);
    let https_addr = https_incoming.as_ref().map(|(_, addr, _)| *addr);
    let reloader = reload::Reloader::new(
        config,
        auth.clone(),
        broker.clone(),
        mqtts_incoming.as_ref().map(|(_, _, live)| live.clone()),
        https_incoming.as_ref().map(|(_, _, live)| live.clone()),
    );

    // One router for HTTP and HTTPS, so both share its state (throttles, caches).
    let router = api::router(state);
    let timeouts = HttpTimeouts {
        header: config.http_header_timeout,
        body: config.http_body_timeout,
        idle: config.http_idle_timeout,
    };
    // One set of places for HTTP and HTTPS, as the open files they stand for are one.
    let http_places = api::http_places(config.http_max_connections as usize);
    let counted = http_places.clone();
    metrics.on_scrape(move |m| {
        let (made_room, no_room) = counted.closed_for_room();
        m.http_closed_for_room(made_room, no_room);
    });
    let server = tokio::spawn(api::serve(
        api::HttpIncoming::new(
            listener,
            proxy::setting(config, &metrics, ProxyListener::Http),
        ),
        router.clone(),
        timeouts,
        http_places.clone(),
        shutdown.clone(),
        config.shutdown_timeout,
    ));
    let https = https_incoming.map(|(incoming, _, _)| {
        tokio::spawn(api::serve(
            incoming,
            router,
            timeouts,
            http_places,
            shutdown.clone(),
            config.shutdown_timeout,
        ))
    });
    let mqtt = tokio::spawn(broker::serve_tcp(
        broker.clone(),
        mqtt_listener,
        proxy::setting(config, &metrics, ProxyListener::Mqtt),
    ));
    let mqtts = mqtts_incoming
        .map(|(incoming, _, _)| tokio::spawn(broker::serve_tls(broker.clone(), incoming)));
    let maintenance = tokio::spawn(maintenance::run(
        store.clone(),
        config.retention,
        config.maintenance_interval,
        shutdown.clone(),
    ));
    Ok(Running {
        http_addr,
        mqtt_addr,
        mqtts_addr,
        https_addr,
        store,
        broker,
        auth,
        reloader,
        shutdown,
        server,
        https,
        mqtt,
        mqtts,
        maintenance,
    })
}

/// The TLS certificate and key (and client CA), when `--tls-cert` is given. Loaded before
/// anything is bound, so a bad file stops startup with an error naming it.
fn load_tls(config: &ServeConfig) -> Result<Option<TlsAcceptors>, Error> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let files = TlsFiles {
        cert,
        key,
        client_ca: config.tls_client_ca.as_deref(),
    };
    Ok(Some(TlsAcceptors::load(&files)?))
}

/// Binds a TLS listener when its address is given.
async fn bind_tls(
    flag: &'static str,
    addr: Option<SocketAddr>,
    acceptor: Option<&tokio_rustls::TlsAcceptor>,
    proxy: Option<ProxyProtocol>,
) -> Result<Option<(TlsIncoming, SocketAddr, LiveAcceptor)>, Error> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let acceptor = acceptor.ok_or(Error::TlsFilesMissing { flag })?;
    let err = |source| Error::BindTls { flag, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    let live = LiveAcceptor::new(acceptor.clone());
    Ok(Some((
        TlsIncoming::new(listener, live.clone(), proxy),
        bound,
        live,
    )))
}

fn problem_lines(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  {p}")).collect()
}

/// The command line's parser. `--version` also names the newest migration this release knows
/// of each database, which decides the schemas it runs on (decision 021), and the version of
/// the frames its nodes send each other, which decides whether live messages cross between
/// nodes of two releases (decision 014).
fn command() -> clap::Command {
    use clap::CommandFactory;
    static LONG_VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "{}\n{}\ncluster: frame version {}",
            env!("CARGO_PKG_VERSION"),
            store::known_migrations(),
            cluster::FRAME_VERSION
        )
    });
    Cli::command().long_version(LONG_VERSION.as_str())
}

/// The command line, with `--config-file`'s settings for the flags that neither it nor the
/// environment set. Exits as clap does on `--help`, `--version` and bad flags.
pub fn parse_args(args: Vec<std::ffi::OsString>) -> Result<Cli, Error> {
    use clap::FromArgMatches;
    let matches = command().get_matches_from(&args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let Some(path) = cli
        .serve
        .config_file
        .clone()
        .filter(|_| cli.command.is_none())
    else {
        return Ok(cli);
    };
    let problems = |problems| Error::ConfigFile {
        path: path.clone(),
        problems,
    };
    let file = ConfigFile::read(&path).map_err(problems)?;
    let merged = file.merged_args(&args, &matches);
    match command().try_get_matches_from(&merged) {
        Ok(matches) => Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())),
        Err(e) => {
            // A value of the file's that clap refuses is said at its line; a problem of the
            // command line's own, as clap says it.
            let found = file.value_problems();
            if found.is_empty() {
                e.exit()
            }
            Err(problems(found))
        }
    }
}

/// The principals of `--principals`; none (anonymous access) without the flag.
fn load_auth(config: &ServeConfig) -> Result<Authenticator, Error> {
    let Some(principals) = load_auth_config(config)? else {
        return Ok(Authenticator::disabled());
    };
    Authenticator::new(principals).map_err(|source| Error::AuthConfig {
        path: config
            .principals_file()
            .map(Path::to_owned)
            .unwrap_or_default(),
        source,
    })
}

/// The principals file, read and parsed (not yet validated); `None` without the flag.
/// `--max-watches`, held to three quarters of `--http-max-connections`: a watch holds an HTTP
/// connection's place for as long as it streams, and is never given up for a newcomer (it is
/// serving a request), so watches alone could otherwise take every place and keep every
/// request out.
fn watches_within_http_places(max_watches: usize, http_max_connections: u32) -> usize {
    let places = http_max_connections as usize;
    // At least one place is left to requests, however few there are.
    let most = places - places.div_ceil(4);
    if max_watches > most {
        tracing::warn!(
            max_watches,
            held_to = most,
            "--max-watches is held to three quarters of --http-max-connections ({places}): \
             each watch holds an HTTP connection's place while it streams; raise \
             --http-max-connections for more"
        );
        return most;
    }
    max_watches
}

fn load_auth_config(config: &ServeConfig) -> Result<Option<AuthConfig>, Error> {
    let Some(path) = config.principals_file() else {
        return Ok(None);
    };
    let principals = AuthConfig::load(path).map_err(|source| Error::AuthConfig {
        path: path.to_owned(),
        source,
    })?;
    Ok(Some(principals.with_defaults(&PrincipalDefaults {
        max_retained_messages: config.max_retained_messages_per_principal,
        max_offline_sessions: config.mqtt_max_offline_sessions_per_principal,
        max_queue_memory_mib: config.mqtt_max_queue_memory_mib_per_principal,
        max_connections: config.mqtt_max_connections_per_principal,
        max_watches: config.max_watches_per_principal,
    })))
}

/// The file the node's NATS identity comes from, if any.
fn cluster_key_file(config: &ServeConfig) -> Option<cluster::KeyFile> {
    let creds = config.cluster_creds.clone().map(cluster::KeyFile::Creds);
    creds.or_else(|| config.cluster_nkey.clone().map(cluster::KeyFile::Nkey))
}

/// A cluster's nodes share their retained messages through Postgres, the files naming
/// NATS's TLS can be read, and the node has one NATS identity, which can be used.
fn check_cluster(config: &ServeConfig) -> Result<(), Error> {
    if config.cluster_url.is_some() && !config.database_url.starts_with("postgres") {
        return Err(Error::ClusterNeedsPostgres);
    }
    if config.cluster_creds.is_some() && config.cluster_nkey.is_some() {
        return Err(Error::ClusterTwoIdentities(
            "--cluster-creds and --cluster-nkey",
        ));
    }
    if let Some(file) = cluster_key_file(config) {
        let url = config.cluster_url.as_deref().unwrap_or_default();
        if cluster::url_has_credentials(url) {
            return Err(Error::ClusterTwoIdentities(match file {
                cluster::KeyFile::Creds(_) => "--cluster-creds and credentials in --cluster-url",
                cluster::KeyFile::Nkey(_) => "--cluster-nkey and credentials in --cluster-url",
            }));
        }
        cluster::check_key_file(&file)?;
    }
    // Read at every connection to NATS: a missing file would only say "TLS error", retried.
    for (flag, path) in [
        ("--cluster-tls-ca", &config.cluster_tls_ca),
        ("--cluster-tls-cert", &config.cluster_tls_cert),
        ("--cluster-tls-key", &config.cluster_tls_key),
    ] {
        if let Some(path) = path {
            std::fs::File::open(path).map_err(|source| Error::ClusterFile {
                flag,
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Mosquitto 2's "local only" rule: anonymous access is allowed only to this machine. An
/// unspecified address (`0.0.0.0`, `::`) is every interface, so it is refused too.
fn check_local_only(config: &ServeConfig, auth: &Authenticator) -> Result<(), Error> {
    if auth.is_enabled() {
        return Ok(());
    }
    for (flag, addr) in [
        ("--http-addr", Some(config.http_addr)),
        ("--mqtt-addr", Some(config.mqtt_addr)),
        ("--mqtts-addr", config.mqtts_addr),
        ("--https-addr", config.https_addr),
    ] {
        let Some(addr) = addr else { continue };
        if !addr.ip().to_canonical().is_loopback() {
            return Err(Error::AnonymousNotLocal { flag, addr });
        }
    }
    Ok(())
}

impl Running {
    /// Reads the principals file and the TLS files again and puts them in force together (see
    /// [`reload`]); on an error nothing changes.
    pub fn reload(&self) -> Result<Reloaded, RefusedReload> {
        self.reloader.reload()
    }

    /// Stops accepting connections, lets in-flight requests finish (dropping the HTTP
    /// connections still open after `--shutdown-timeout`), tells MQTT clients the server is
    /// going away, then stops background work.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.broker.shutdown(MQTT_SHUTDOWN_GRACE).await;
        for server in std::iter::once(self.server).chain(self.https) {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "HTTP server task failed");
            }
        }
        for listener in std::iter::once(self.mqtt).chain(self.mqtts) {
            if let Err(e) = listener.await {
                tracing::error!(error = %e, "MQTT listener task failed");
            }
        }
        if let Err(e) = self.maintenance.await {
            tracing::error!(error = %e, "maintenance task failed");
        }
        // Nothing routes any more: the sessions saved are as their clients left them, and
        // those adopted from nodes that are gone among them.
        if let Some(cluster) = self.broker.cluster() {
            cluster.stop_adopting().await;
        }
        self.broker.save_sessions().await;
        if let Some(cluster) = self.broker.cluster() {
            cluster.stop().await;
        }
    }
}

#[cfg(test)]
mod config_file_tests;
#[cfg(test)]
mod config_readme_tests;
