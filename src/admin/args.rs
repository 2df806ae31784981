//! The flags of `retaind retained ...` (clap), each also documented by `--help`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

/// `retaind retained`: export, import or delete retained messages in bulk.
#[derive(Debug, Args)]
pub struct RetainedCommand {
    #[command(subcommand)]
    pub action: RetainedAction,
}

#[derive(Debug, Subcommand)]
pub enum RetainedAction {
    /// Write retained messages as NDJSON, one message per line, to --output or standard output.
    Export(ExportArgs),
    /// Read NDJSON (as export writes it) from FILE, or from another service with
    /// --from-endpoint, and store it; importing the same set again changes nothing.
    Import(ImportArgs),
    /// Delete the retained messages matching a topic filter, after confirmation.
    Delete(DeleteArgs),
}

/// Where the messages are: a running service, or its database.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// A running retaind (or any AWS IoT data-plane endpoint): http(s)://host:port.
    #[arg(
        long,
        required_unless_present = "database_url",
        conflicts_with = "database_url"
    )]
    pub endpoint: Option<String>,

    /// The store itself, opened as the server opens it: sqlite://PATH or postgres://... A
    /// SQLite file is locked by the server that uses it: stop that server first.
    #[arg(long, required_unless_present = "endpoint")]
    pub database_url: Option<String>,

    /// With --endpoint: an API bearer token (a principal's api_tokens_sha256 entry).
    #[arg(
        long,
        env = "RETAIND_API_TOKEN",
        hide_env_values = true,
        conflicts_with = "sigv4"
    )]
    pub token: Option<String>,

    /// With --endpoint: sign requests with SigV4, with AWS credentials from
    /// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY(/AWS_SESSION_TOKEN) or the AWS_PROFILE (default
    /// "default") profile of ~/.aws/credentials (or AWS_SHARED_CREDENTIALS_FILE).
    #[arg(long)]
    pub sigv4: bool,

    /// Region to sign for (SigV4); else AWS_REGION, then AWS_DEFAULT_REGION.
    #[arg(long)]
    pub region: Option<String>,

    /// With --database-url: deadline for each database call.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub store_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Only the topics matching this MQTT topic filter (`devices/+/config`, `devices/#`).
    #[arg(long)]
    pub topic_filter: Option<String>,

    /// Write here (replaced only once the export is complete) instead of standard output.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Limits an imported message must be within, as the target server's (defaults equal).
#[derive(Debug, Clone, Copy, Args)]
pub struct LimitArgs {
    /// Largest payload accepted, in bytes (the server's --max-payload-bytes).
    #[arg(long, default_value_t = 128 * 1024)]
    pub max_payload_bytes: usize,
    /// Longest topic in bytes (the server's --max-topic-bytes).
    #[arg(long, default_value_t = 256)]
    pub max_topic_bytes: usize,
    /// Most topic levels (the server's --max-topic-levels).
    #[arg(long, default_value_t = 8)]
    pub max_topic_levels: usize,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The NDJSON file to import; `-` reads standard input (held in memory).
    #[arg(
        required_unless_present = "from_endpoint",
        conflicts_with = "from_endpoint"
    )]
    pub file: Option<PathBuf>,

    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Import from this AWS IoT data-plane endpoint instead of a file (e.g.
    /// https://xxxx-ats.iot.eu-west-1.amazonaws.com): ListRetainedMessages page by page and
    /// GetRetainedMessage for each, signed with SigV4 (credentials as for --sigv4).
    #[arg(long)]
    pub from_endpoint: Option<String>,

    /// With --from-endpoint: record here the last page completed, and resume from it.
    #[arg(long, requires = "from_endpoint")]
    pub resume_file: Option<PathBuf>,

    /// Validate everything and report what would be written; change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Report bad lines and import the others; by default one bad line fails the import
    /// before anything is written.
    #[arg(long)]
    pub skip_bad_lines: bool,

    /// Messages written per transaction (database) or per wave of requests (HTTP). At most
    /// 4,000: a transaction's revisions come from one write ticket of 4,096.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=4_000))]
    pub batch_size: u32,

    #[command(flatten)]
    pub limits: LimitArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// The MQTT topic filter whose retained messages are deleted (`#` is everything).
    #[arg(long)]
    pub topic_filter: String,

    /// Delete without asking. Without it, retaind asks on a terminal and refuses otherwise.
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Only count the matching messages.
    #[arg(long)]
    pub dry_run: bool,

    /// Messages deleted per transaction (with --database-url). At most 4,000, as for import.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=4_000))]
    pub batch_size: u32,
}
