#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use retaind::app::{self, ClusterAction, Command, LogFormat, ServeConfig};
use retaind::store::Clock;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = app::parse_args(std::env::args_os().collect())?;
    match cli.command {
        Some(Command::Openapi { output }) => write_openapi(output),
        Some(Command::HashPassword) => hash_password(),
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::Retained(command)) => retained(command).await,
        Some(Command::Cluster {
            action: ClusterAction::Status { database_url, json },
        }) => cluster_status(&database_url, json).await,
        None => serve(cli.serve).await,
    }
}

/// Prints every problem as `FILE:LINE: message` (the form editors jump to); exits 1 if any.
fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let problems = app::check_config(file);
    if problems.is_empty() {
        println!("{}: OK", file.display());
        return Ok(());
    }
    for problem in &problems {
        match problem.line {
            Some(line) => eprintln!("{}:{line}: {}", file.display(), problem.message),
            None => eprintln!("{}: {}", file.display(), problem.message),
        }
    }
    eprintln!("{}: {} problem(s)", file.display(), problems.len());
    std::process::exit(1);
}

fn write_openapi(output: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let json = retaind::api::spec().to_pretty_json()? + "\n";
    match output {
        Some(path) => {
            std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))
        }
        None => {
            print!("{json}");
            Ok(())
        }
    }
}

/// Reads one line from stdin (so `echo secret | retaind hash-password` and an interactive prompt
/// both work) and prints its hash; the password itself is never echoed or logged.
fn hash_password() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    anyhow::ensure!(
        !password.is_empty(),
        "no password on standard input (give it as the first line)"
    );
    println!("{}", retaind::auth::hash_password(password));
    Ok(())
}

/// `retaind retained ...`: warnings (a stored row left out, say) go to standard error with
/// the command's own report.
async fn retained(command: retaind::admin::RetainedCommand) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(retaind::admin::run(command).await?)
}

/// `retaind cluster status`: the table (or JSON) on standard output.
async fn cluster_status(database_url: &str, json: bool) -> anyhow::Result<()> {
    let status =
        retaind::cluster::read_status(database_url, std::time::Duration::from_secs(10)).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.text());
    }
    Ok(())
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A writer thread does the output, so a request never waits on stderr. Not lossy: when
    // the buffer is full, logging waits rather than dropping lines. The thread writes whatever
    // lines are waiting and then flushes, so through a buffer a burst costs one system call
    // rather than one per line. The guard flushes on exit.
    let (writer, _flush_on_exit) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::BufWriter::with_capacity(
            64 << 10,
            std::io::stderr(),
        ));
    // Colours only for a person at a terminal; files, journald and log shippers get plain text.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    match config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    if config.deprecated_config.is_some() {
        tracing::warn!(
            "--config (RETAIND_CONFIG) is the old name of --principals (RETAIND_PRINCIPALS) and \
             will be removed; it still works"
        );
    }
    if let Some(path) = &config.config_file {
        tracing::info!(file = %path.display(), "settings read from --config-file");
    }
    // Listened for before the addresses are printed: a SIGTERM sent as soon as a script reads
    // them must start a graceful shutdown, not find the default action (death) still in place.
    let signals = Signals::install()?;
    let running = app::start(&config, Clock::System).await?;
    // Printed on stdout, not logged: scripts (and the compatibility tests) read the bound port here.
    println!("retaind: HTTP API on http://{}", running.http_addr);
    println!("retaind: MQTT on mqtt://{}", running.mqtt_addr);
    println!(
        "retaind: MQTT over WebSocket on ws://{}/mqtt",
        running.http_addr
    );
    if let Some(addr) = running.mqtts_addr {
        println!("retaind: MQTT over TLS on mqtts://{addr}");
    }
    if let Some(addr) = running.https_addr {
        println!("retaind: HTTPS API on https://{addr}");
        println!("retaind: MQTT over secure WebSocket on wss://{addr}/mqtt");
    }
    println!("retaind: store {}", app::redact_url(&config.database_url));
    tracing::info!(
        http = %running.http_addr,
        mqtt = %running.mqtt_addr,
        "serving"
    );
    serve_until_shutdown(&running, signals).await;
    tracing::info!("shutting down: finishing in-flight requests");
    running.shutdown().await;
    Ok(())
}

/// The signals retaind answers: SIGINT and SIGTERM stop it gracefully, SIGHUP reloads.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
                hangup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }
}

/// Waits for SIGINT or SIGTERM, reloading on each SIGHUP meanwhile.
async fn serve_until_shutdown(running: &app::Running, mut signals: Signals) {
    #[cfg(unix)]
    loop {
        tokio::select! {
            _ = signals.interrupt.recv() => return,
            _ = signals.term.recv() => return,
            _ = signals.hangup.recv() => reload(running),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (running, &mut signals);
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn reload(running: &app::Running) {
    match running.reload() {
        Ok(done) => tracing::info!(
            principals = ?done.principals,
            tls_cert = ?done.tls_cert,
            sessions_kept = done.sessions.kept,
            connections_closed = done.sessions.disconnected,
            "reloaded: the principals and TLS files are in force"
        ),
        Err(e) => tracing::error!(
            error = %e,
            "reload refused: the configuration in force stays"
        ),
    }
}
