//! `retaind cluster status`: the service's nodes as Postgres knows them, for an operator. It
//! reads the tables the nodes keep (heartbeats, client-id claims, sessions and their queues)
//! and changes nothing, so it runs beside a live service, from any machine that reaches the
//! database.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::PgPoolOptions;

/// One node with a heartbeat row.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub node: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// Seconds since its last heartbeat, on the database's clock.
    pub heartbeat_age_secs: f64,
    /// How long it may be silent before the others take it for dead (`--cluster-dead-after`;
    /// 10 s for releases that did not record it).
    pub dead_after_secs: f64,
    /// Its heartbeat is older than its dead time: a live node buries it at one of its next
    /// heartbeats (once it is older by that node's own interval between heartbeats too).
    pub silent: bool,
    /// The version of the frames it sends other nodes (none from releases before it was kept).
    pub frame_version: Option<i16>,
    /// Client ids connected to it.
    pub clients: i64,
    /// Sessions it holds in Postgres (persistent ones, and those kept for a Will), and of
    /// them the offline ones.
    pub sessions: i64,
    pub offline_sessions: i64,
}

/// The service as its database shows it.
#[derive(Debug, Serialize)]
pub struct Status {
    pub nodes: Vec<NodeStatus>,
    /// Sessions whose node has no heartbeat row (it died, or stopped): a live node adopts them
    /// at its next heartbeat.
    pub sessions_awaiting_adoption: i64,
    /// Messages queued in Postgres for offline sessions, and their bytes.
    pub queued_messages: i64,
    pub queued_bytes: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot reach the database: {0}")]
    Connect(String),
    #[error(
        "cannot read the cluster's tables ({0}): is this the Postgres database of a retaind \
         service, migrated by a release that has clusters?"
    )]
    Read(String),
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
}

type NodeRow = (String, String, f64, f64, Option<i16>, i64, i64, i64);

/// Reads the service's state from the Postgres database at `url`, waiting at most `wait` in
/// all (a database that does not answer is an error, not a tool that hangs).
pub async fn read(url: &str, wait: Duration) -> Result<Status, StatusError> {
    tokio::time::timeout(wait, read_now(url))
        .await
        .map_err(|_| StatusError::Timeout(wait))?
}

async fn read_now(url: &str) -> Result<Status, StatusError> {
    let options =
        crate::store::postgres_options(url).map_err(|e| StatusError::Connect(e.to_string()))?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(|e| StatusError::Connect(e.to_string()))?;
    let read = |e: sqlx::Error| StatusError::Read(e.to_string());
    let mut tx = pool.begin().await.map_err(read)?;
    // One snapshot: the counts agree with each other.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(read)?;
    let rows: Vec<NodeRow> = sqlx::query_as(
        "SELECT n.node, \
           to_char(n.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
           extract(epoch FROM now() - n.heartbeat_at)::float8, \
           coalesce(n.dead_after_ms, $1)::float8 / 1000, n.frame_version, \
           (SELECT count(*) FROM cluster_clients c WHERE c.node = n.node), \
           (SELECT count(*) FROM cluster_sessions s WHERE s.node = n.node), \
           (SELECT count(*) FROM cluster_sessions s WHERE s.node = n.node AND NOT s.connected) \
         FROM cluster_nodes n ORDER BY n.started_at, n.node",
    )
    // The dead time of rows from releases that did not record one.
    .bind(super::Liveness::default().dead_after_ms())
    .fetch_all(&mut *tx)
    .await
    .map_err(read)?;
    let awaiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM cluster_sessions s \
         WHERE NOT EXISTS (SELECT 1 FROM cluster_nodes n WHERE n.node = s.node)",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(read)?;
    let (queued_messages, queued_bytes): (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(octet_length(frame)), 0)::int8 FROM cluster_session_queue",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(read)?;
    tx.rollback().await.map_err(read)?;
    pool.close().await;
    Ok(Status {
        nodes: rows
            .into_iter()
            .map(
                |(node, started_at, age, dead_after, frame_version, clients, sessions, offline)| {
                    NodeStatus {
                        node,
                        started_at,
                        heartbeat_age_secs: age,
                        dead_after_secs: dead_after,
                        silent: age > dead_after,
                        frame_version,
                        clients,
                        sessions,
                        offline_sessions: offline,
                    }
                },
            )
            .collect(),
        sessions_awaiting_adoption: awaiting,
        queued_messages,
        queued_bytes,
    })
}

impl Status {
    /// A table for a person at a terminal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if self.nodes.is_empty() {
            out.push_str("no live node: none has a heartbeat in this database\n");
        } else {
            let _ = writeln!(
                out,
                "{:<32}  {:<20}  {:>14}  {:>6}  {:>8}  {:>8}  {:>8}",
                "NODE", "STARTED", "HEARTBEAT", "FRAME", "CLIENTS", "SESSIONS", "OFFLINE"
            );
            for n in &self.nodes {
                let frames = n.frame_version.map_or("-".to_owned(), |v| v.to_string());
                let age = format!("{:.1} s ago", n.heartbeat_age_secs);
                let _ = writeln!(
                    out,
                    "{:<32}  {:<20}  {:>14}  {:>6}  {:>8}  {:>8}  {:>8}{}",
                    n.node,
                    n.started_at,
                    age,
                    frames,
                    n.clients,
                    n.sessions,
                    n.offline_sessions,
                    if n.silent { "  silent: dead" } else { "" }
                );
            }
        }
        let live = self.nodes.iter().filter(|n| !n.silent).count();
        let _ = writeln!(
            out,
            "{live} live node(s); {} session(s) of nodes that are gone, awaiting adoption; \
             {} message(s) ({} bytes) queued for offline sessions",
            self.sessions_awaiting_adoption, self.queued_messages, self.queued_bytes
        );
        let versions: std::collections::BTreeSet<_> =
            self.nodes.iter().filter_map(|n| n.frame_version).collect();
        if versions.len() > 1 {
            out.push_str(
                "nodes send live messages in different frame versions: each drops the others' \
                 until all run releases of one version (a rolling upgrade in progress)\n",
            );
        }
        out
    }
}
