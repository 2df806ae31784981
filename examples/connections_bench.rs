//! What a broker holds in memory for each connected device: `--connections` clients connect
//! (MQTT 3.1.1), each subscribes at QoS 1 to a topic of its own, as a device subscribes to its
//! configuration, and receives the retained message stored there (if `--retained`), then all
//! stay connected and idle. The broker's resident memory (`--pid`, from /proc) is read before,
//! while they are connected, and after they have all left. Any broker: bench/connections.sh
//! runs it against retaind and Mosquitto in one run.
//!
//!     cargo run --release --example connections_bench -- --port 1883 --pid $(pidof mosquitto)
//!
//! The clients speak raw MQTT over tokio sockets (over TLS with `--transport tls`, over
//! WebSocket with `--transport ws`), so the load generator costs the same against every broker
//! and stays small itself. Prints one line:
//! `scenario=connections key=value...`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, http};

/// The tests' hand-built packets (a file of their own, with nothing else of the tests').
#[allow(dead_code)]
#[path = "../tests/common/mqtt/build.rs"]
mod build;

/// Each client's CONNECT, SUBACK and retained message must come within this.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Long enough that no client sends a PINGREQ while memory is read.
const KEEP_ALIVE: u16 = 600;
/// Clients handshaking at once: a fleet reconnecting, not a single burst of SYNs.
const CONNECTING_AT_ONCE: usize = 256;

#[path = "common/proc_status.rs"]
mod proc_status;
use proc_status::rss_kb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    Tcp,
    /// MQTT over TLS to `localhost`, trusting `--ca`.
    Tls,
    Ws,
}

#[derive(Debug, Parser)]
#[command(about = "Resident memory of an MQTT broker per connected, idle device")]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The broker's MQTT port (TCP), or its WebSocket port with `--transport ws`.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    transport: Transport,
    /// The PEM certificate the broker's TLS certificate must chain to, with `--transport tls`.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// The WebSocket path, with `--transport ws`.
    #[arg(long, default_value = "/mqtt")]
    ws_path: String,
    /// The broker's process id, whose VmRSS is read from /proc.
    #[arg(long)]
    pid: u32,
    /// Clients to connect.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Store a retained message of `--payload-bytes` on each client's topic first, which the
    /// client then receives when it subscribes.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    retained: bool,
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Persistent sessions (clean session 0), left offline at the end: what the broker keeps
    /// for a device that went away.
    #[arg(long)]
    persistent: bool,
    /// Seconds to let the broker settle before each reading.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// Prefix of the client ids and topics, so that runs do not meet.
    #[arg(long, default_value = "bench-conn")]
    prefix: String,
}

/// One client's connection: MQTT bytes over TCP, or in binary WebSocket messages.
enum Wire {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// With the bytes received and not yet read.
    Ws(Box<WebSocketStream<TcpStream>>, Vec<u8>),
}

impl Wire {
    async fn open(args: &Args, tls: Option<&TlsConnector>) -> anyhow::Result<Wire> {
        let stream = TcpStream::connect((args.host.as_str(), args.port)).await?;
        match (args.transport, tls) {
            (Transport::Tcp, _) => return Ok(Wire::Tcp(stream)),
            (Transport::Tls, Some(tls)) => {
                let name = ServerName::try_from("localhost")?;
                return Ok(Wire::Tls(Box::new(tls.connect(name, stream).await?)));
            }
            (Transport::Tls, None) => bail!("--transport tls needs --ca"),
            (Transport::Ws, _) => {}
        }
        let url = format!("ws://{}:{}{}", args.host, args.port, args.ws_path);
        let mut request = url.into_client_request()?;
        request.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static("mqtt"),
        );
        // The load generator's own buffers stay small too (tungstenite's default is 128 KiB).
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
        Ok(Wire::Ws(Box::new(ws), Vec::new()))
    }

    async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match self {
            Wire::Tcp(s) => s.write_all(bytes).await?,
            Wire::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await?;
            }
            Wire::Ws(ws, _) => ws.send(Message::binary(bytes.to_vec())).await?,
        }
        Ok(())
    }

    async fn read_exact(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        match self {
            Wire::Tcp(s) => {
                let mut out = vec![0; n];
                s.read_exact(&mut out).await?;
                Ok(out)
            }
            Wire::Tls(s) => {
                let mut out = vec![0; n];
                s.read_exact(&mut out).await?;
                Ok(out)
            }
            Wire::Ws(ws, pending) => {
                while pending.len() < n {
                    match ws.next().await.context("the WebSocket closed")?? {
                        Message::Binary(b) => pending.extend_from_slice(&b),
                        Message::Close(_) => bail!("the WebSocket closed"),
                        _ => {}
                    }
                }
                Ok(pending.drain(..n).collect())
            }
        }
    }

    /// Reads one packet: its first byte and its body.
    async fn read_packet(&mut self) -> anyhow::Result<(u8, Vec<u8>)> {
        let first = self.read_exact(1).await?[0];
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let byte = self.read_exact(1).await?[0];
            len |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        let body = self.read_exact(len).await?;
        Ok((first, body))
    }

    async fn expect(&mut self, kind: u8, what: &str) -> anyhow::Result<Vec<u8>> {
        let (first, body) = tokio::time::timeout(STEP_TIMEOUT, self.read_packet())
            .await
            .with_context(|| format!("no {what} in time"))??;
        if first >> 4 != kind {
            bail!("expected {what}, got packet type {}", first >> 4);
        }
        Ok(body)
    }
}

fn topic(args: &Args, i: usize) -> String {
    format!("{}/{i}/config", args.prefix)
}

/// Stores every client's retained message from one connection, 1,000 in flight.
async fn store_retained(args: &Args, tls: Option<&TlsConnector>) -> anyhow::Result<()> {
    let mut stream = Wire::open(args, tls).await?;
    stream
        .send(&build::connect(
            &format!("{}-loader", args.prefix),
            true,
            KEEP_ALIVE,
            None,
        ))
        .await?;
    stream.expect(2, "CONNACK").await?;
    let payload = vec![b'c'; args.payload_bytes];
    let (mut sent, mut acked) = (0, 0);
    while acked < args.connections {
        while sent < args.connections && sent - acked < 1_000 {
            let id = (sent % 65_535 + 1) as u16;
            stream
                .send(&build::publish(
                    &topic(args, sent),
                    1,
                    true,
                    false,
                    id,
                    None,
                    &payload,
                ))
                .await?;
            sent += 1;
        }
        stream.expect(4, "PUBACK").await?;
        acked += 1;
    }
    stream.send(&[0xe0, 0x00]).await?;
    Ok(())
}

/// Connects client `i`, subscribes it and takes its retained message.
async fn device(args: &Args, tls: Option<&TlsConnector>, i: usize) -> anyhow::Result<Wire> {
    let mut stream = Wire::open(args, tls).await?;
    let client_id = format!("{}-{i}", args.prefix);
    stream
        .send(&build::connect(
            &client_id,
            !args.persistent,
            KEEP_ALIVE,
            None,
        ))
        .await?;
    let connack = stream.expect(2, "CONNACK").await?;
    if connack.get(1) != Some(&0) {
        bail!("CONNACK refused {client_id}: {connack:?}");
    }
    stream
        .send(&build::subscribe(1, &topic(args, i), 1, None))
        .await?;
    let suback = stream.expect(9, "SUBACK").await?;
    if suback.get(2) != Some(&1) {
        bail!("SUBACK for {client_id}: {suback:?}");
    }
    if args.retained {
        let publish = stream.expect(3, "the retained PUBLISH").await?;
        let topic_len = usize::from(u16::from_be_bytes([publish[0], publish[1]]));
        let id = &publish[2 + topic_len..4 + topic_len];
        let id = u16::from_be_bytes([id[0], id[1]]);
        stream.send(&build::ack(0x40, id)).await?;
    }
    Ok(stream)
}

/// A TLS client trusting the certificates of `ca` alone.
fn connector(ca: &std::path::Path) -> anyhow::Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let config = ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(std::sync::Arc::new(config)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = std::sync::Arc::new(Args::parse());
    let settle = Duration::from_secs_f64(args.settle);
    let tls = args.ca.as_deref().map(connector).transpose()?;
    if args.retained {
        store_retained(&args, tls.as_ref())
            .await
            .context("storing")?;
    }
    tokio::time::sleep(settle).await;
    let before = rss_kb(args.pid)?;

    let started = Instant::now();
    let gate = std::sync::Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let (args, gate, tls) = (args.clone(), gate.clone(), tls.clone());
        tasks.push(tokio::spawn(async move {
            let _turn = gate.acquire().await?;
            device(&args, tls.as_ref(), i).await
        }));
    }
    let mut streams = Vec::with_capacity(args.connections);
    for task in tasks {
        streams.push(task.await??);
    }
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let connected = rss_kb(args.pid)?;

    for mut stream in streams {
        // DISCONNECT: a clean leave, so no broker waits out a keep alive.
        stream.send(&[0xe0, 0x00]).await?;
    }
    tokio::time::sleep(settle).await;
    let after = rss_kb(args.pid)?;
    let per_connection = (connected.saturating_sub(before) * 1024) / args.connections as u64;
    println!(
        "scenario=connections transport={:?} connections={} retained={} persistent={} \
         connect_s={connect_s:.2} \
         rss_before_kb={before} rss_connected_kb={connected} rss_after_kb={after} \
         per_connection_b={per_connection}",
        args.transport, args.connections, args.retained, args.persistent,
    );
    Ok(())
}
