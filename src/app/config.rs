use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cluster::Liveness;

/// retaind: MQTT retained messages as a service, with an AWS IoT data-plane compatible HTTP API.
///
/// Run without a subcommand to serve.
#[derive(Debug, Parser)]
#[command(name = "retaind", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the OpenAPI document (or write it to a file).
    Openapi {
        /// Write here instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Hash a password for `mqtt_password_hash` in the --principals file: reads it from the
    /// first line of standard input, prints its argon2id PHC string.
    HashPassword,
    /// Check a --config-file without starting: prints every problem with its line (and those
    /// of the principals and TLS files it names), exits 1 if there is any.
    CheckConfig {
        /// The TOML settings file to check.
        file: PathBuf,
    },
    /// Export, import or delete retained messages in bulk, over a running service's HTTP API
    /// or straight in its database (see `retaind retained --help`).
    Retained(crate::admin::RetainedCommand),
    /// The nodes of a service started with --cluster-url, as its Postgres database shows them.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterAction {
    /// Each node with a heartbeat (when it started, how long since its last heartbeat, the
    /// frame version it sends, its connected clients and the sessions it holds), the sessions
    /// of nodes that are gone awaiting adoption, and the messages queued for offline sessions.
    /// Reads the database only; changes nothing.
    Status {
        /// The service's Postgres database.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Everything `retaind` needs to serve; each flag can also come from the environment.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// TOML file of settings: every flag below has a key of the same name with `_` for `-`
    /// (see docs/examples/retaind.toml). Flags and environment variables override it.
    /// `retaind check-config FILE` reports every problem in one.
    #[arg(long, env = "RETAIND_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,

    /// TOML file of principals: credentials (AWS access keys, API bearer tokens, MQTT
    /// passwords) and their policies (see docs/examples/auth.toml). Without it, or with no
    /// principals in it, access is anonymous and both listeners must be on loopback addresses.
    /// Reloaded on SIGHUP.
    #[arg(long, env = "RETAIND_PRINCIPALS")]
    pub principals: Option<PathBuf>,

    /// The old name of --principals (and RETAIND_CONFIG of RETAIND_PRINCIPALS): still read,
    /// with a warning at start.
    #[arg(
        long = "config",
        env = "RETAIND_CONFIG",
        hide = true,
        conflicts_with = "principals"
    )]
    pub deprecated_config: Option<PathBuf>,

    /// Address for the HTTP API (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "RETAIND_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Host names, besides localhost and loopback addresses, that requests may name when no
    /// principals are configured (comma-separated; any port): a proxy's or a /etc/hosts name
    /// for this machine. Requests for other names get 403, against DNS rebinding. Not used
    /// with principals.
    #[arg(long, env = "RETAIND_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,

    /// Address for MQTT over TCP (3.1.1 and 5.0). MQTT over WebSocket is served on the HTTP
    /// address at /mqtt.
    #[arg(long, env = "RETAIND_MQTT_ADDR", default_value = "127.0.0.1:1883")]
    pub mqtt_addr: SocketAddr,

    /// Address for MQTT over TLS (e.g. 0.0.0.0:8883); off unless given. Needs --tls-cert and
    /// --tls-key.
    #[arg(long, env = "RETAIND_MQTTS_ADDR", requires_all = ["tls_cert", "tls_key"])]
    pub mqtts_addr: Option<SocketAddr>,

    /// Address for HTTPS: the API, the console and MQTT over secure WebSocket at /mqtt; off
    /// unless given. Needs --tls-cert and --tls-key.
    #[arg(long, env = "RETAIND_HTTPS_ADDR", requires_all = ["tls_cert", "tls_key"])]
    pub https_addr: Option<SocketAddr>,

    /// PEM file with the server's certificate chain (leaf first), for the TLS listeners.
    #[arg(long, env = "RETAIND_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "RETAIND_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM file of CA certificates: TLS clients are asked for a certificate signed by one of
    /// them (optional, so password clients still connect). An MQTT client presenting one is
    /// the principal whose `client_cert_sha256` matches it.
    #[arg(long, env = "RETAIND_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Listeners behind a load balancer that sends the PROXY protocol (v1 or v2; HAProxy's
    /// send-proxy, an AWS Network Load Balancer's proxy protocol v2), comma-separated: mqtt,
    /// mqtts, http, https. Their connections must start with its header, which gives the
    /// client's address for logs and for what is shared out by address (places before CONNECT,
    /// TLS handshakes and HTTP connections, failed password checks). A connection without a
    /// valid header in time (10 s; over HTTP, --http-header-timeout) is closed.
    #[arg(long, env = "RETAIND_PROXY_PROTOCOL", value_delimiter = ',')]
    pub proxy_protocol: Vec<ProxyListener>,

    /// Only connections from these addresses or networks (CIDR, comma-separated, e.g.
    /// 10.0.0.0/8) must send a PROXY protocol header on the --proxy-protocol listeners; others
    /// are served as direct clients. Without it, every connection must.
    #[arg(long, env = "RETAIND_PROXY_PROTOCOL_FROM", value_delimiter = ',',
          value_parser = parse_network, requires = "proxy_protocol")]
    pub proxy_protocol_from: Vec<ipnet::IpNet>,

    /// Largest MQTT packet accepted from a client, in bytes (advertised to MQTT 5 clients as
    /// Maximum Packet Size); a larger one closes the connection.
    #[arg(long, env = "RETAIND_MQTT_MAX_PACKET_BYTES", default_value_t = 256 * 1024)]
    pub mqtt_max_packet_bytes: u32,

    /// Messages queued for one MQTT session (online or offline) beyond those in flight. When
    /// full, QoS 0 messages are dropped, and a connected client that cannot take more QoS 1/2
    /// messages is disconnected; an offline session drops new messages. Publishers never wait,
    /// so this is the burst a subscriber can fall behind by.
    #[arg(
        long,
        env = "RETAIND_MQTT_MAX_QUEUED_MESSAGES",
        default_value_t = 10_000
    )]
    pub mqtt_max_queued_messages: usize,

    /// Payload bytes queued for one MQTT session; counts towards the same policy.
    #[arg(long, env = "RETAIND_MQTT_MAX_QUEUED_BYTES", default_value_t = 16 << 20)]
    pub mqtt_max_queued_bytes: usize,

    /// MiB that the queues of the node's offline MQTT sessions may hold together (each queue's
    /// entries as allocated, each message once); past it a message for an offline session is
    /// dropped. Connected clients' queues are held to their own limits only. `0`: no limit.
    #[arg(
        long,
        env = "RETAIND_MQTT_MAX_QUEUE_MEMORY_MIB",
        default_value_t = 1024
    )]
    pub mqtt_max_queue_memory_mib: usize,

    /// What the queues of one principal's offline sessions may hold on this node, in MiB,
    /// for principals whose entry in --principals sets no `max_queue_memory_mib`: each queued
    /// copy counts its whole message; past it a message for one of that principal's offline
    /// sessions is dropped. `0`: no limit.
    #[arg(
        long,
        env = "RETAIND_MQTT_MAX_QUEUE_MEMORY_MIB_PER_PRINCIPAL",
        default_value_t = 0
    )]
    pub mqtt_max_queue_memory_mib_per_principal: u64,

    /// Persistent MQTT sessions the node holds offline, waiting for their clients; past it
    /// the one nearest its expiry ends first (its client starts clean). `0`: no limit.
    #[arg(
        long,
        env = "RETAIND_MQTT_MAX_OFFLINE_SESSIONS",
        default_value_t = 1_000_000
    )]
    pub mqtt_max_offline_sessions: usize,

    /// Most persistent MQTT sessions of one principal the node holds offline, for principals
    /// whose entry in --principals sets no `max_offline_sessions`; past it that principal's
    /// session nearest its expiry ends first. `0`: no limit.
    #[arg(
        long,
        env = "RETAIND_MQTT_MAX_OFFLINE_SESSIONS_PER_PRINCIPAL",
        default_value_t = 0
    )]
    pub mqtt_max_offline_sessions_per_principal: u64,

    /// QoS 1/2 messages in flight to one client (also capped by its Receive Maximum).
    #[arg(long, env = "RETAIND_MQTT_MAX_INFLIGHT", default_value_t = 256)]
    pub mqtt_max_inflight: u16,

    /// QoS 1/2 messages a client may have unacknowledged towards retaind (MQTT 5 Receive
    /// Maximum); an MQTT 5 client that sends more is disconnected.
    #[arg(long, env = "RETAIND_MQTT_RECEIVE_MAXIMUM", default_value_t = 1024, value_parser = clap::value_parser!(u16).range(1..))]
    pub mqtt_receive_maximum: u16,

    /// Topic aliases an MQTT 5 client may set up.
    #[arg(long, env = "RETAIND_MQTT_TOPIC_ALIAS_MAXIMUM", default_value_t = 64)]
    pub mqtt_topic_alias_maximum: u16,

    /// Concurrent MQTT connections over every listener (TCP, TLS, WebSocket); a CONNECT beyond it is
    /// refused with CONNACK 0x89 Server busy (MQTT 3.1.1: 0x03 Server unavailable), unless its
    /// client id is connected already: its new connection then takes the old one over.
    #[arg(long, env = "RETAIND_MQTT_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub mqtt_max_connections: usize,

    /// Concurrent MQTT connections of one principal on this node, counted by client id, for
    /// principals whose entry in --principals sets no `max_connections`; past it a CONNECT
    /// with a client id that principal has not connected already is refused with CONNACK 0x97
    /// Quota exceeded (MQTT 3.1.1: 0x03 Server unavailable). `0`: no limit.
    #[arg(
        long,
        env = "RETAIND_MQTT_MAX_CONNECTIONS_PER_PRINCIPAL",
        default_value_t = 0
    )]
    pub mqtt_max_connections_per_principal: u64,

    /// MQTT connections that have not sent their CONNECT yet, at once, over every listener.
    /// When all are taken, a new one takes the place of one that has waited more than 2 s,
    /// from the address holding the most; if none has, the new one is closed at once.
    #[arg(long, env = "RETAIND_MQTT_MAX_AWAITING_CONNECT", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub mqtt_max_awaiting_connect: u32,

    /// Subscriptions one MQTT session may hold (AWS IoT's default: 50 per connection); a
    /// filter beyond it gets SUBACK 0x97 Quota exceeded (MQTT 3.1.1: 0x80).
    #[arg(long, env = "RETAIND_MQTT_MAX_SUBSCRIPTIONS", default_value_t = 50)]
    pub mqtt_max_subscriptions: usize,

    /// PUBLISH packets per second one MQTT connection may send, in bursts of up to one
    /// second's worth; beyond it a publish is dropped (MQTT 5 QoS 1/2: PUBACK/PUBREC 0x97).
    /// 0: no limit, the default (AWS IoT's is 100 per connection, but bulk loads over MQTT
    /// are ordinary on a self-hosted broker).
    #[arg(long, env = "RETAIND_MQTT_MAX_PUBLISH_RATE", default_value_t = 0.0,
          value_parser = parse_rate)]
    pub mqtt_max_publish_rate: f64,

    /// CONNECTs per second one client id may make (AWS IoT's: 1), in bursts of up to one
    /// second's worth. A CONNECT sooner than its client id's turn waits for it, up to 2 s;
    /// one whose turn is further off is refused with CONNACK 0x9F Connection rate exceeded
    /// (MQTT 3.1.1: 0x03 Server unavailable). 0: no limit.
    #[arg(long, env = "RETAIND_MQTT_CONNECT_RATE_PER_CLIENT_ID", default_value_t = 1.0,
          value_parser = parse_rate)]
    pub mqtt_connect_rate_per_client_id: f64,

    /// CONNECTs per second of one principal (AWS IoT: 500 per account), for the whole service:
    /// with --cluster-url each node lets in the rate divided by the live nodes. Without
    /// principals every client shares it: the service's CONNECT rate. Sooner CONNECTs wait up to
    /// 2 s, later ones get CONNACK 0x9F (MQTT 3.1.1: 0x03). 0: no limit, the default.
    #[arg(long, env = "RETAIND_MQTT_CONNECT_RATE_PER_PRINCIPAL", default_value_t = 0.0,
          value_parser = parse_rate)]
    pub mqtt_connect_rate_per_principal: f64,

    /// PUBLISH packets per second of one principal's MQTT connections together, for the whole
    /// service: with --cluster-url each node admits the rate divided by the live nodes. Without
    /// principals every client shares it. Beyond it a publish is dropped as over
    /// --mqtt-max-publish-rate (MQTT 5 QoS 1/2: PUBACK/PUBREC 0x97). 0: no limit, the default.
    #[arg(long, env = "RETAIND_MQTT_PUBLISH_RATE_PER_PRINCIPAL", default_value_t = 0.0,
          value_parser = parse_rate)]
    pub mqtt_publish_rate_per_principal: f64,

    /// Longest MQTT keep alive, in seconds (AWS IoT's: 1200). A client asking for more, or for
    /// none (0), is held to it: MQTT 5 clients are told in CONNACK (Server Keep Alive), 3.1.1
    /// clients are not. 0: no maximum.
    #[arg(long, env = "RETAIND_MQTT_MAX_KEEP_ALIVE", default_value_t = 1200)]
    pub mqtt_max_keep_alive: u16,

    /// Longest time, in seconds, a persistent MQTT session is kept while its client is away
    /// (AWS IoT's default: 3600). A client asking for more, or for a session that never
    /// expires (every MQTT 3.1.1 clean session 0), gets this: MQTT 5 clients are told in
    /// CONNACK (Session Expiry Interval). 0: no maximum, and 3.1.1 sessions never expire.
    #[arg(long, env = "RETAIND_MQTT_MAX_SESSION_EXPIRY", default_value_t = 3600)]
    pub mqtt_max_session_expiry: u32,

    /// How long an MQTT client may take nothing of what waits for it (bytes its TCP does not
    /// acknowledge, messages it does not acknowledge) before it is disconnected as a slow
    /// subscriber, within a tenth of this more (at most 1 s) (e.g. 30s).
    #[arg(long, env = "RETAIND_MQTT_WRITE_TIMEOUT", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub mqtt_write_timeout: Duration,

    /// At shutdown, the time over which connected MQTT clients are asked to leave one after
    /// another (e.g. 30s), after the listeners stop taking connections, so that they
    /// reconnect to the other nodes a few at a time; 0: all at once. The process then takes up
    /// to this long more to stop (with --cluster-url, up to 2 s beyond it while the sessions
    /// asked are handed over to the nodes their clients come back to).
    #[arg(long, env = "RETAIND_MQTT_DRAIN_TIME", default_value = "0s",
          value_parser = humantime::parse_duration)]
    pub mqtt_drain_time: Duration,

    /// Where the clients a drain asks to leave should reconnect (e.g. mqtt.example.com:8883),
    /// told to MQTT 5 clients as the Server Reference of their DISCONNECT 0x9C Use another
    /// server (MQTT 5 4.11); with it a drain says 0x9C on a node alone too. Clients that act
    /// on it connect there; others reconnect as they would. Off: none is sent.
    #[arg(long, env = "RETAIND_MQTT_SERVER_REFERENCE", value_parser = server_reference)]
    pub mqtt_server_reference: Option<String>,

    /// Priority of a connection delivering a large retained set (a subscription whose retained
    /// messages take more than one page of reads): `background` runs it on threads that yield
    /// to every other thread of the machine until its reads are done, so that live publishes
    /// keep their latency while it drains (the default); `normal` runs it like any other
    /// connection; `auto`, the default until 2026-12-04 (`normal` on Postgres then), is now
    /// `background` on both stores.
    #[arg(long, env = "RETAIND_MQTT_RETAINED_DELIVERY_PRIORITY", value_enum,
          default_value_t = DeliveryPriority::Background)]
    pub mqtt_retained_delivery_priority: DeliveryPriority,

    /// GetRetainedMessage requests per second per principal, in bursts of up to one second's
    /// worth; beyond it 429 ThrottlingException. 0: no limit. AWS IoT's default: 500 per account.
    #[arg(long, env = "RETAIND_RATE_GET_RETAINED_MESSAGE", default_value_t = 500.0,
          value_parser = parse_rate)]
    pub rate_get_retained_message: f64,

    /// ListRetainedMessages requests per second per principal (as above). AWS IoT's default:
    /// 10 per account.
    #[arg(long, env = "RETAIND_RATE_LIST_RETAINED_MESSAGES", default_value_t = 10.0,
          value_parser = parse_rate)]
    pub rate_list_retained_messages: f64,

    /// HTTP Publish requests per second per principal (as above). AWS IoT's default: 2,000
    /// inbound publishes per second per account in most regions.
    #[arg(long, env = "RETAIND_RATE_PUBLISH", default_value_t = 2000.0, value_parser = parse_rate)]
    pub rate_publish: f64,

    /// Watches (`GET /retainedMessage-watch`) opened per second per principal (as above; a
    /// watch is one request however long it streams). retaind's own; AWS has no watch.
    #[arg(long, env = "RETAIND_RATE_WATCH_RETAINED_MESSAGES", default_value_t = 10.0,
          value_parser = parse_rate)]
    pub rate_watch_retained_messages: f64,

    /// HTTP DeleteConnection requests (disconnecting an MQTT client) per second per principal
    /// (as above). retaind's default, not an AWS figure: an operator's tool, not a device's.
    #[arg(long, env = "RETAIND_RATE_DELETE_CONNECTION", default_value_t = 100.0,
          value_parser = parse_rate)]
    pub rate_delete_connection: f64,

    /// Watches open at once on this node; beyond it a new watch is answered 503
    /// ServiceUnavailableException (another node, or later, may take it). 0: no watch at all.
    /// Held to three quarters of --http-max-connections: a watch holds an HTTP connection's
    /// place while it streams, and requests need the others.
    #[arg(long, env = "RETAIND_MAX_WATCHES", default_value_t = 3_072)]
    pub max_watches: usize,

    /// Watches one principal may hold open on this node at once, for principals whose entry
    /// in --principals sets no `max_watches`; beyond it a new watch is answered 429
    /// ThrottlingException. `0`: no limit.
    #[arg(long, env = "RETAIND_MAX_WATCHES_PER_PRINCIPAL", default_value_t = 0)]
    pub max_watches_per_principal: u64,

    /// How often an idle watch is sent a `progress` event (when the service's revision moved)
    /// or else a keep-alive comment (e.g. 10s).
    #[arg(long, env = "RETAIND_WATCH_PROGRESS_INTERVAL", default_value = "10s",
          value_parser = parse_watch_interval)]
    pub watch_progress_interval: Duration,

    /// Where retained messages live: sqlite://PATH (file created if missing) or postgres://...
    // `--help` would otherwise print the environment's value, password and all.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://data/retaind.db"
    )]
    pub database_url: String,

    /// NATS server(s) (nats://host:port, comma-separated) to join the other nodes started
    /// with the same URL and the same Postgres database, as one MQTT service: publishes on
    /// any node reach subscribers on every node. Needs a postgres:// --database-url. Off
    /// unless given: a single node needs no NATS. Credentials go in the URL
    /// (nats://user:password@host, nats://token@host); tls://host asks for TLS.
    #[arg(long, env = "RETAIND_CLUSTER_URL")]
    pub cluster_url: Option<String>,

    /// PEM file of the CA certificates that sign the NATS servers' certificates, when a CA of
    /// your own does; TLS to NATS is then required.
    #[arg(long, env = "RETAIND_CLUSTER_TLS_CA", requires = "cluster_url")]
    pub cluster_tls_ca: Option<PathBuf>,

    /// PEM certificate this node presents to NATS servers that verify their clients; TLS to
    /// NATS is then required.
    #[arg(
        long,
        env = "RETAIND_CLUSTER_TLS_CERT",
        requires_all = ["cluster_url", "cluster_tls_key"]
    )]
    pub cluster_tls_cert: Option<PathBuf>,

    /// PEM private key of --cluster-tls-cert.
    #[arg(long, env = "RETAIND_CLUSTER_TLS_KEY", requires = "cluster_tls_cert")]
    pub cluster_tls_key: Option<PathBuf>,

    /// NATS credentials file (a user JWT and its NKey seed, as `nsc` or Synadia Cloud issue
    /// them) for servers with decentralized accounts. Read again at every connection to NATS,
    /// so a replaced file is used from the next one on. Not with credentials in the URL.
    #[arg(long, env = "RETAIND_CLUSTER_CREDS", requires = "cluster_url")]
    pub cluster_creds: Option<PathBuf>,

    /// File holding an NKey user seed (`SU...`) for servers that know their users by public
    /// key. Read again at every connection to NATS. Not with credentials in the URL.
    #[arg(long, env = "RETAIND_CLUSTER_NKEY", requires = "cluster_url")]
    pub cluster_nkey: Option<PathBuf>,

    /// The JetStream domain that holds the interest bucket, when the NATS server the node
    /// connects to is a leaf node whose own JetStream (if any) is another domain: every node
    /// of the service must reach the same bucket. Off: the server's own JetStream.
    #[arg(
        long,
        env = "RETAIND_CLUSTER_JETSTREAM_DOMAIN",
        requires = "cluster_url"
    )]
    pub cluster_jetstream_domain: Option<String>,

    /// The first token of every NATS subject the service uses, and its bucket's name, so that
    /// several services can share one NATS.
    #[arg(long, env = "RETAIND_CLUSTER_PREFIX", default_value = "retaind")]
    pub cluster_prefix: String,

    /// How long this node may go without writing its heartbeat to Postgres before the other
    /// nodes take it for dead (from 1s to 1h): then they fire its clients' Wills, adopt its
    /// sessions and stop sending it messages. The node beats five times within it. Each node
    /// records its own with its heartbeat and is judged by it, so nodes need not agree.
    #[arg(long, env = "RETAIND_CLUSTER_DEAD_AFTER", default_value = "10s",
          value_parser = parse_dead_after, requires = "cluster_url")]
    pub cluster_dead_after: Liveness,

    /// Pooled Postgres connections for what the service's nodes keep there: client-id claims,
    /// sessions and their queues (the heartbeats have one more of their own, and adoptions
    /// another). Every CONNECT takes one for a round trip or three, so this bounds how fast a
    /// node takes a crowd of reconnecting clients.
    #[arg(long, env = "RETAIND_CLUSTER_DB_CONNECTIONS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=256), requires = "cluster_url")]
    pub cluster_db_connections: u32,

    /// Largest accepted payload in bytes; larger publishes get 413.
    #[arg(long, env = "RETAIND_MAX_PAYLOAD_BYTES", default_value_t = 128 * 1024)]
    pub max_payload_bytes: usize,

    /// Longest accepted topic in UTF-8 bytes.
    #[arg(long, env = "RETAIND_MAX_TOPIC_BYTES", default_value_t = 256)]
    pub max_topic_bytes: usize,

    /// Most levels ('/'-separated parts) in a topic.
    #[arg(long, env = "RETAIND_MAX_TOPIC_LEVELS", default_value_t = 8)]
    pub max_topic_levels: usize,

    /// Most retained messages the service keeps. A retained publish that would store one more
    /// is refused (HTTP 400 InvalidRequestException; MQTT 5 PUBACK/PUBREC 0x97 Quota exceeded);
    /// rewriting a stored topic and deleting are always allowed. 0: no limit.
    #[arg(long, env = "RETAIND_MAX_RETAINED_MESSAGES", default_value_t = 0)]
    pub max_retained_messages: u64,

    /// Most retained messages one principal may keep, counting those its publishes stored,
    /// for principals whose entry in --principals sets no `max_retained_messages`. 0: no limit.
    #[arg(
        long,
        env = "RETAIND_MAX_RETAINED_MESSAGES_PER_PRINCIPAL",
        default_value_t = 0
    )]
    pub max_retained_messages_per_principal: u64,

    /// Delete a retained message neither updated nor read for this long (e.g. 3years, 90days).
    #[arg(long, env = "RETAIND_RETENTION", default_value = "3years", value_parser = humantime::parse_duration)]
    pub retention: Duration,

    /// How often expired and idle messages are purged.
    #[arg(long, env = "RETAIND_MAINTENANCE_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub maintenance_interval: Duration,

    /// Most pooled connections to the database, for reads and maintenance (on Postgres, write
    /// batches run on one more connection per write lane); large retained deliveries read
    /// their later pages on up to as many again, of their own.
    #[arg(long, env = "RETAIND_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// Group commits in flight at once, each on its own database connection; a topic's writes
    /// always use the same one, so they stay in order. 1 (the default) makes the biggest
    /// batches; more lets Postgres use more cores when many clients store at once.
    #[arg(long, env = "RETAIND_DB_WRITE_LANES", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=16))]
    pub db_write_lanes: u16,

    /// Most rows a large retained delivery reads from the database per query. Unset: 256 on
    /// Postgres, whose backend runs each page in one burst of CPU that publishes' commits wait
    /// behind when it shares the cores (raise it when Postgres has a host of its own: each
    /// page then costs a network round trip); on SQLite only the read-ahead bounds a page
    /// (2,000 messages of 256 bytes).
    #[arg(long, env = "RETAIND_DB_SCAN_ROWS",
          value_parser = clap::value_parser!(u32).range(16..=4000))]
    pub db_scan_rows: Option<u32>,

    /// How long to keep trying to reach the database at start (it may be starting too) before
    /// giving up with the cause. Each failed attempt is logged with its cause.
    #[arg(long, env = "RETAIND_DB_STARTUP_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub db_startup_wait: Duration,

    /// How long any database call may take before the request fails with 503. An MQTT
    /// retained delivery's page, or a retained Will, is tried again for up to twelve of these.
    #[arg(long, env = "RETAIND_STORE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub store_timeout: Duration,

    /// Memory for the read cache of retained messages, in MiB; 0 turns it off. With several
    /// nodes on one Postgres, a node hears of the others' writes within milliseconds (and stops
    /// serving from its cache if it cannot hear them for 2 s).
    #[arg(long, env = "RETAIND_READ_CACHE_MIB", default_value_t = 64)]
    pub read_cache_mib: u64,

    /// How long a client has to send a request's head (request line and headers): from the
    /// connection's start for its first request, from the first byte for later ones. Past it
    /// the connection is closed.
    #[arg(long, env = "RETAIND_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub http_header_timeout: Duration,

    /// How long a client has to send a request's whole body, from the end of its head. Past it
    /// the request gets 408 RequestTimeoutException and the connection is closed.
    #[arg(long, env = "RETAIND_HTTP_BODY_TIMEOUT", default_value = "30s", value_parser = parse_timeout)]
    pub http_body_timeout: Duration,

    /// How long a kept-alive HTTP connection may wait for its next request, and how long a
    /// client may take none of a response being written (a watch's stream) before its
    /// connection closes. WebSocket connections (MQTT) are not HTTP connections once upgraded:
    /// MQTT keep alive governs them.
    #[arg(long, env = "RETAIND_HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_timeout)]
    pub http_idle_timeout: Duration,

    /// HTTP connections open at once, over the HTTP and HTTPS listeners (MQTT over WebSocket
    /// counts until its upgrade). When all are taken, a connection open for more than 2 s and
    /// between requests, from the address holding the most, is closed for a newcomer; if none
    /// can be, the newcomer is closed.
    #[arg(long, env = "RETAIND_HTTP_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,

    /// At shutdown, how long HTTP requests in flight may take to finish; connections still
    /// open then are dropped, so stopping always completes.
    #[arg(long, env = "RETAIND_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub shutdown_timeout: Duration,

    /// Log line format. The level comes from RUST_LOG (default: info).
    #[arg(long, env = "RETAIND_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// How often this node publishes its status to MQTT subscribers of `$SYS/broker/...`
    /// (Mosquitto's topic names: clients connected, PUBLISH packets received and sent,
    /// retained messages, uptime, version); 0 turns them off.
    #[arg(long, env = "RETAIND_SYS_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub sys_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeliveryPriority {
    Auto,
    Background,
    Normal,
}

/// A listener that can be set to expect the PROXY protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProxyListener {
    Mqtt,
    Mqtts,
    Http,
    Https,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A request rate: a finite, non-negative number of requests per second.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err(format!(
            "{s:?} is not a rate (requests per second, 0 for no limit)"
        )),
    }
}

/// An address or a network in CIDR notation: a bare address is a network of one.
fn parse_network(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("{s:?} is not an address or a network (CIDR, e.g. 10.0.0.0/8)"))
}

/// The watch's progress interval: at least 100 ms (a smaller one would spend a node's time on
/// keep-alives), at most an hour.
fn parse_watch_interval(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if (Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&d) => Ok(d),
        Ok(_) => Err("the watch progress interval must be from 100ms to 1h".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// A node's dead time: a duration from 1s to 1h.
fn parse_dead_after(s: &str) -> Result<Liveness, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    Liveness::new(d).ok_or_else(|| "a node's dead time must be from 1s to 1h".to_owned())
}

/// A timeout: a duration (humantime, e.g. 10s, 1m) more than zero.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("a timeout must be more than 0".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

impl ServeConfig {
    /// The defaults, as `retaind` with no flags and no environment would use them.
    pub fn defaults() -> Self {
        Cli::parse_from(["retaind"]).serve
    }

    /// The principals file: --principals, or its deprecated name --config.
    pub fn principals_file(&self) -> Option<&std::path::Path> {
        self.principals
            .as_deref()
            .or(self.deprecated_config.as_deref())
    }
}

/// An MQTT 5 Server Reference: a UTF-8 string of the protocol (at most 65,535 bytes, no
/// U+0000), without control characters, which a client would have to refuse or log as they
/// are; not empty.
fn server_reference(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("empty: leave the setting out to send none".into());
    }
    if value.len() > usize::from(u16::MAX) {
        return Err(format!(
            "{} bytes; an MQTT string holds at most 65,535",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err("holds a control character".into());
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::{CommandFactory, Parser};

    use super::{Cli, server_reference};

    #[test]
    fn help_does_not_print_the_database_url_from_the_environment() {
        let command = Cli::command();
        let database_url = command
            .get_arguments()
            .find(|arg| arg.get_id() == "database_url")
            .expect("the --database-url flag");
        assert!(database_url.is_hide_env_values_set());
    }

    /// A delivery's page bound outside 16–4000 stops the server at its flag, naming the range.
    #[test]
    fn db_scan_rows_is_refused_outside_its_range() {
        let parse = |v: &str| Cli::try_parse_from(["retaind", "--db-scan-rows", v]);
        for refused in ["15", "4001", "0", "many"] {
            let Err(e) = parse(refused) else {
                panic!("--db-scan-rows {refused} was taken");
            };
            let e = e.to_string();
            assert!(e.contains("--db-scan-rows"), "{e}");
        }
        let Err(e) = parse("15") else {
            unreachable!("refused above")
        };
        assert!(e.to_string().contains("16..=4000"), "{e}");
        assert_eq!(parse("16").unwrap().serve.db_scan_rows, Some(16));
        assert_eq!(parse("4000").unwrap().serve.db_scan_rows, Some(4000));
        assert_eq!(super::ServeConfig::defaults().db_scan_rows, None);
    }

    /// A node's dead time outside 1s–1h stops the server at its flag, and is a cluster's only.
    #[test]
    fn cluster_dead_after_is_refused_outside_its_range_and_without_a_cluster() {
        let parse = |v: &str| {
            let args = [
                "retaind",
                "--cluster-url",
                "nats://n",
                "--cluster-dead-after",
                v,
            ];
            Cli::try_parse_from(args)
        };
        for refused in ["999ms", "0s", "61m", "soon"] {
            let Err(e) = parse(refused) else {
                panic!("--cluster-dead-after {refused} was taken");
            };
            let e = e.to_string();
            assert!(e.contains("--cluster-dead-after"), "{e}");
        }
        let Err(e) = parse("999ms") else {
            unreachable!("refused above")
        };
        assert!(e.to_string().contains("from 1s to 1h"), "{e}");
        let dead_after = |v| parse(v).unwrap().serve.cluster_dead_after.dead_after();
        assert_eq!(dead_after("1s"), Duration::from_secs(1));
        assert_eq!(dead_after("1h"), Duration::from_secs(3600));
        assert_eq!(
            super::ServeConfig::defaults()
                .cluster_dead_after
                .dead_after(),
            Duration::from_secs(10)
        );
        let alone = Cli::try_parse_from(["retaind", "--cluster-dead-after", "5s"]);
        assert!(alone.is_err(), "without --cluster-url");
    }

    /// docker-compose.yml configures the nodes through the environment; a variable no flag
    /// reads would be ignored without a word.
    #[test]
    fn every_variable_docker_compose_sets_is_read_by_a_flag() {
        let command = Cli::command();
        let known: Vec<String> = command
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .map(|env| env.to_string_lossy().into_owned())
            .collect();
        let compose = include_str!("../../docker-compose.yml");
        let mut set = Vec::new();
        for line in compose.lines() {
            let name = line.trim().split(':').next().unwrap_or_default();
            if name.starts_with("RETAIND_") || name == "DATABASE_URL" {
                set.push(name.to_owned());
            }
        }
        assert!(set.contains(&"RETAIND_CLUSTER_URL".to_owned()), "{set:?}");
        for name in set {
            assert!(
                known.contains(&name),
                "docker-compose.yml sets {name}, which no flag reads"
            );
        }
    }

    #[test]
    fn a_server_reference_is_a_non_empty_mqtt_string_without_control_characters() {
        assert_eq!(
            server_reference("mqtt.example.com:8883").as_deref(),
            Ok("mqtt.example.com:8883")
        );
        assert!(server_reference("").is_err());
        assert!(server_reference("a\u{0}b").is_err());
        assert!(server_reference("line\nbreak").is_err());
        assert!(server_reference(&"x".repeat(65_535)).is_ok());
        assert!(server_reference(&"x".repeat(65_536)).is_err());
        // Refused where the flag is read, naming it, so the node does not start.
        let Err(err) = Cli::try_parse_from(["retaind", "--mqtt-server-reference", "a\tb"]) else {
            panic!("a control character was taken");
        };
        assert!(err.to_string().contains("--mqtt-server-reference"), "{err}");
        assert!(err.to_string().contains("control character"), "{err}");
    }
}
