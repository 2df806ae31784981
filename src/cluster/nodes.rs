//! Which nodes are alive, by heartbeats in Postgres (`cluster_nodes`), written every
//! [`BEAT`] with the database's clock. A node silent for [`DEAD_AFTER`] is dead: the first
//! survivor to see it removes its client-id claims and its announced interest, so that the
//! others stop sending it messages. The count of live nodes divides per-principal rates.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::PgPool;

use super::sessions::{Adopted, SessionError, Sessions};
use tokio_util::sync::CancellationToken;

/// How often a node says it is alive.
pub const BEAT: Duration = Duration::from_secs(2);
/// How long a node may be silent before the others take it for dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(10);

/// Writes this node's heartbeat, once.
pub async fn beat(pool: &PgPool, node: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cluster_nodes (node) VALUES ($1) \
         ON CONFLICT (node) DO UPDATE SET heartbeat_at = now()",
    )
    .bind(node)
    .execute(pool)
    .await
    .map(drop)
}

/// Removes the nodes silent for [`DEAD_AFTER`], with their claims, and adopts the sessions of
/// every node gone (dead, or stopped), in one transaction so that one survivor does each;
/// returns the dead, the number of live nodes and the adopted sessions.
pub async fn bury(
    pool: &PgPool,
    node: &str,
    sessions: &Sessions,
) -> Result<(Vec<String>, usize, Vec<Adopted>), SessionError> {
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
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM cluster_nodes")
        .fetch_one(&mut *tx)
        .await?;
    let adopted = sessions.adopt(&mut tx, node).await?;
    tx.commit().await?;
    Ok((dead, usize::try_from(live).unwrap_or(1).max(1), adopted))
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

/// Beats until `shutdown`, keeping `live` current, handing each dead node to `buried` and the
/// sessions adopted to `adopted`.
pub async fn run(
    pool: PgPool,
    node: Arc<str>,
    live: Arc<AtomicUsize>,
    sessions: Arc<Sessions>,
    buried: impl Fn(&str) + Send,
    adopted: impl Fn(Vec<Adopted>) + Send,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        let result = async {
            beat(&pool, &node).await?;
            bury(&pool, &node, &sessions).await
        }
        .await;
        match result {
            Ok((dead, count, sessions)) => {
                if failing {
                    tracing::info!("node heartbeats written again");
                    failing = false;
                }
                live.store(count, Ordering::Relaxed);
                for node in dead {
                    tracing::warn!(%node, "a node stopped beating; its claims and interest are removed");
                    buried(&node);
                }
                if !sessions.is_empty() {
                    tracing::info!(
                        sessions = sessions.len(),
                        "adopted the sessions of nodes that are gone"
                    );
                    adopted(sessions);
                }
            }
            Err(e) => {
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
