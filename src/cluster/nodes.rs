//! Which nodes are alive, by heartbeats in Postgres (`cluster_nodes`), written every
//! [`BEAT`] with the database's clock. A node silent for [`DEAD_AFTER`] is dead: the first
//! survivor to see it removes its client-id claims and its announced interest, so that the
//! others stop sending it messages. The count of live nodes divides per-principal rates. Each
//! heartbeat records the version of the frames the node sends (`frame::VERSION`): a node of
//! another release that sends another version drops this node's live messages and has its own
//! dropped here, which the survivors say, for an operator in the middle of a rolling upgrade.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::PgPool;

use super::frame;
use super::sessions::{Adopted, SessionError, Sessions};
use tokio_util::sync::CancellationToken;

/// How often a node says it is alive.
pub const BEAT: Duration = Duration::from_secs(2);
/// How long a node may be silent before the others take it for dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(10);

/// Writes this node's heartbeat, once, with the version of the frames it sends.
pub async fn beat(pool: &PgPool, node: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cluster_nodes (node, frame_version) VALUES ($1, $2) \
         ON CONFLICT (node) DO UPDATE SET heartbeat_at = now(), frame_version = $2",
    )
    .bind(node)
    .bind(i16::from(frame::VERSION))
    .execute(pool)
    .await
    .map(drop)
}

/// What a pass of [`bury`] found.
pub struct Census {
    /// Nodes found dead and removed by this pass.
    pub dead: Vec<String>,
    /// Live nodes, this one included.
    pub live: Vec<String>,
    /// Live nodes whose heartbeat records a frame version other than this node's, with it.
    /// Nodes of releases that do not record one are not among them.
    pub other_frames: Vec<(String, i16)>,
    pub adopted: Vec<Adopted>,
}

/// Removes the nodes silent for [`DEAD_AFTER`], with their claims, and adopts the sessions of
/// every node gone (dead, or stopped), in one transaction so that one survivor does each.
pub async fn bury(pool: &PgPool, node: &str, sessions: &Sessions) -> Result<Census, SessionError> {
    let mut tx = pool.begin().await?;
    let dead: Vec<String> = sqlx::query_scalar(
        "DELETE FROM cluster_nodes WHERE heartbeat_at < now() - make_interval(secs => $1) \
         RETURNING node",
    )
    .bind(DEAD_AFTER.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    if !dead.is_empty() {
        sqlx::query("DELETE FROM cluster_clients WHERE node = ANY($1)")
            .bind(&dead)
            .execute(&mut *tx)
            .await?;
    }
    let live: Vec<String> = sqlx::query_scalar("SELECT node FROM cluster_nodes")
        .fetch_all(&mut *tx)
        .await?;
    let other_frames: Vec<(String, i16)> = sqlx::query_as(
        "SELECT node, frame_version FROM cluster_nodes \
         WHERE frame_version <> $1 ORDER BY node",
    )
    .bind(i16::from(frame::VERSION))
    .fetch_all(&mut *tx)
    .await?;
    let adopted = sessions.adopt(&mut tx, node).await?;
    tx.commit().await?;
    Ok(Census {
        dead,
        live,
        other_frames,
        adopted,
    })
}

/// Leaves the service: this node's row and claims go at once, not after [`DEAD_AFTER`].
pub async fn leave(pool: &PgPool, node: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM cluster_clients WHERE node = $1")
        .bind(node)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM cluster_nodes WHERE node = $1")
        .bind(node)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// What the heartbeats last said of the service; [`run`] keeps it current.
pub struct Headcount {
    live: AtomicUsize,
    other_frames: AtomicUsize,
    /// Passes that failed or did not finish within the database timeout.
    failures: AtomicU64,
}

impl Default for Headcount {
    fn default() -> Self {
        Self {
            live: AtomicUsize::new(1),
            other_frames: AtomicUsize::new(0),
            failures: AtomicU64::new(0),
        }
    }
}

impl Headcount {
    /// Live nodes, this one included (at least 1).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed).max(1)
    }

    /// Live nodes that send another frame version than this node's (see [`Census`]).
    pub fn other_frames(&self) -> usize {
        self.other_frames.load(Ordering::Relaxed)
    }

    /// Heartbeats not written: past [`DEAD_AFTER`] of them, the others take this node for
    /// dead while it still serves.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// Beats until `shutdown`, keeping `headcount` current, handing each pass's census to
/// `counted` (the dead nodes, the live ones) and the sessions adopted to `adopted`.
pub async fn run(
    pool: PgPool,
    node: Arc<str>,
    headcount: Arc<Headcount>,
    sessions: Arc<Sessions>,
    mut counted: impl FnMut(&Census) + Send,
    adopted: impl Fn(Vec<Adopted>) + Send,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    // Nodes of another frame version already reported, so each is reported once.
    let mut reported = std::collections::HashSet::new();
    loop {
        // Bounded like any database call: a pass that hangs would leave this node silent
        // without its knowing, and the others would bury it.
        let pass = async {
            beat(&pool, &node).await?;
            bury(&pool, &node, &sessions).await
        };
        let result = sessions.bounded(pass).await;
        match result {
            Ok(census) => {
                if failing {
                    tracing::info!("node heartbeats written again");
                    failing = false;
                }
                headcount.live.store(census.live.len(), Ordering::Relaxed);
                for node in &census.dead {
                    tracing::warn!(%node, "a node stopped beating; its claims and interest are removed");
                }
                counted(&census);
                headcount
                    .other_frames
                    .store(census.other_frames.len(), Ordering::Relaxed);
                // Only the nodes still live stay remembered: node ids are new at every start,
                // so the set would otherwise grow with every upgrade the node lives through.
                reported.retain(|n| census.other_frames.iter().any(|(o, _)| o == n));
                for (node, version) in census.other_frames {
                    if reported.insert(node.clone()) {
                        tracing::warn!(
                            %node,
                            frame_version = version,
                            this_node = frame::VERSION,
                            "a node of another release sends live messages in another frame version: \
                             it drops this node's and this node drops its own until both run releases \
                             of the same version (retained messages are shared through the database)"
                        );
                    }
                }
                if !census.adopted.is_empty() {
                    tracing::info!(
                        sessions = census.adopted.len(),
                        "adopted the sessions of nodes that are gone"
                    );
                    adopted(census.adopted);
                }
            }
            Err(e) => {
                headcount.failures.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    tracing::warn!(error = %e, "cannot write this node's heartbeat");
                }
                failing = true;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(BEAT) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
