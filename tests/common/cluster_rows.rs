//! Rows of the cluster's session tables written and read straight in Postgres, as a node that
//! is gone would have left them.

/// `n` offline persistent sessions of node `node`, written straight to the database.
pub async fn sessions_of(db: &mut sqlx::PgConnection, node: &str, n: i64) {
    sqlx::query(
        "INSERT INTO cluster_sessions (client_id, node, expiry_secs, connected, detached_at) \
         SELECT 'c' || g, $1, 3600, false, now() FROM generate_series(1, $2) g",
    )
    .bind(node)
    .bind(n)
    .execute(&mut *db)
    .await
    .unwrap();
}

/// Sessions node `node` holds in the database.
pub async fn sessions_held(db: &mut sqlx::PgConnection, node: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM cluster_sessions WHERE node = $1")
        .bind(node)
        .fetch_one(db)
        .await
        .unwrap()
}

/// A connection holding an exclusive lock on the sessions' queues, which every adoption of a
/// dead node's sessions reads: adoptions wait on it until it is rolled back.
pub async fn hold_session_queues(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    let mut holder = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE cluster_session_queue IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    holder
}
