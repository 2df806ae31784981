//! One client id, one connection, service-wide: claims of client ids in Postgres
//! (`cluster_clients`), arbitrated by the database so that a NATS partition cannot leave two
//! holders, and the notices (`<prefix>.k.<node>`) that tell the previous holder to let go.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sqlx::{Connection, PgPool};

/// Why a CONNECT could not claim its client id: the database did not answer in time.
#[derive(Debug, thiserror::Error)]
#[error("cannot claim the client id: {0}")]
pub struct ClaimError(String);

pub struct Claims {
    pool: PgPool,
    /// The heartbeats' own connection: however busy the pool is with clients' claims and
    /// sessions, a node's liveness never waits behind them, or a burst of CONNECTs could get
    /// it taken for dead.
    beats: PgPool,
    /// The adoptions' own connection, for the same reason: an adoption given up at the end of
    /// its heartbeat pass leaves its connection until the database ends its statement, which
    /// the next heartbeat must not wait for.
    adoptions: PgPool,
    timeout: Duration,
}

/// What a claim found: its generation, and the node that held the id before, if another.
pub struct Claimed {
    pub generation: u64,
    pub previous: Option<String>,
}

/// A notice to a node: the connection of `client_id` with a claim older than `generation`
/// must close; `resumed` says whether the new connection resumes the session (its Will,
/// if delayed, is then not published, as for a take-over on one node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakeOver {
    pub client_id: Arc<str>,
    pub generation: u64,
    pub resumed: bool,
}

/// Options of a pool whose work is writes (claims, sessions, heartbeats). A connection to a
/// server that takes no writes is closed when it would next be lent, instead of the ping
/// sqlx sends then: after a failover, connections opened to the old primary (before it was
/// demoted, or through an address not yet moved) answer every write with 25006, and a busy
/// pool never idles them out. Without this, every CONNECT and heartbeat of the node failed
/// until the pool's lifetime (30 minutes) replaced them; the write connections of retained
/// writes are not reused after any error (`store::postgres::writers`).
///
/// A connection younger than [`RECHECK_AFTER`] is only pinged, as sqlx would: while the whole
/// database takes no writes, each new connection is read-only too, and closing every one at
/// its next use would open a connection per call. So a slot is replaced at most once per
/// [`RECHECK_AFTER`].
fn writable(timeout: Duration) -> sqlx::postgres::PgPoolOptions {
    // Whole milliseconds, at least one: 0 would mean no limit.
    let ms = |d: Duration| d.as_millis().clamp(1, i32::MAX as u128);
    // Set once connected, not as startup options, which a pooler may refuse (`postgres_options`).
    let setup = format!(
        "SET statement_timeout = {}; SET idle_in_transaction_session_timeout = {}",
        ms(timeout.mul_f64(0.9)),
        ms(timeout)
    );
    sqlx::postgres::PgPoolOptions::new()
        .after_connect(move |conn, _| {
            let setup = sqlx::AssertSqlSafe(setup.clone());
            Box::pin(async move {
                sqlx::Executor::execute(conn, setup).await?;
                Ok(())
            })
        })
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.age < RECHECK_AFTER {
                    conn.ping().await?;
                    return Ok(true);
                }
                let read_only: String = sqlx::query_scalar("SHOW transaction_read_only")
                    .fetch_one(&mut *conn)
                    .await?;
                Ok(read_only == "off")
            })
        })
}

/// See [`writable`].
const RECHECK_AFTER: Duration = Duration::from_secs(2);

impl Claims {
    /// The cluster's pool, shared with sessions and heartbeats. Its sessions end any
    /// statement, or transaction left idle, that outlives `timeout`: a call given up at its
    /// deadline must not go on holding locks, or commit later than its caller believes (a
    /// claim committed late would take the id from a newer connection).
    ///
    /// The database ends a statement a little before the caller would give up on it, so that
    /// the caller usually gets the error and the connection stays usable. A call dropped
    /// while its statement runs leaves the connection to be closed, since its late error
    /// would be the next call's, and then the next call pays for a new connection.
    pub async fn open(url: &str, timeout: Duration, connections: u32) -> Result<Self, sqlx::Error> {
        let options = crate::store::postgres_options(url)?;
        let pool = writable(timeout)
            .max_connections(connections)
            .acquire_timeout(timeout)
            .connect_with(options.clone())
            .await?;
        let beats = writable(timeout)
            .max_connections(1)
            .acquire_timeout(timeout)
            .connect_with(options.clone())
            .await?;
        let adoptions = writable(timeout)
            .max_connections(1)
            .acquire_timeout(timeout)
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            beats,
            adoptions,
            timeout,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// For the heartbeats alone.
    pub fn beats(&self) -> &PgPool {
        &self.beats
    }

    /// For the adoptions the heartbeats find, and the settling of those in doubt.
    pub fn adoptions(&self) -> &PgPool {
        &self.adoptions
    }

    pub async fn claim(&self, client_id: &str, node: &str) -> Result<Claimed, ClaimError> {
        let query = sqlx::query_as::<_, (i64, Option<String>)>(
            "INSERT INTO cluster_clients AS c (client_id, node, generation) \
             VALUES ($1, $2, nextval('cluster_generation')) \
             ON CONFLICT (client_id) DO UPDATE SET \
               previous_node = c.node, previous_generation = c.generation, \
               node = EXCLUDED.node, generation = EXCLUDED.generation, connected_at = now() \
             RETURNING generation, previous_node",
        )
        .bind(client_id)
        .bind(node)
        .fetch_one(&self.pool);
        let (generation, previous) = self.bounded(query).await?;
        Ok(Claimed {
            generation: generation as u64,
            previous: previous.filter(|p| p != node),
        })
    }

    /// The node whose connection holds `client_id`'s claim, if any.
    pub async fn holder_of(&self, client_id: &str) -> Result<Option<String>, ClaimError> {
        let query = sqlx::query_scalar::<_, String>(
            "SELECT node FROM cluster_clients WHERE client_id = $1",
        )
        .bind(client_id)
        .fetch_optional(&self.pool);
        self.bounded(query).await
    }

    /// Whether `client_id` has been claimed since the claim of `generation`, by a connection
    /// on any node that holds it still.
    pub async fn claimed_since(
        &self,
        client_id: &str,
        generation: u64,
    ) -> Result<bool, ClaimError> {
        let query = sqlx::query_scalar::<_, i64>(
            "SELECT generation FROM cluster_clients WHERE client_id = $1",
        )
        .bind(client_id)
        .fetch_optional(&self.pool);
        let held = self.bounded(query).await?;
        Ok(held.is_some_and(|g| g as u64 > generation))
    }

    /// The connection holding `generation` is gone; a later claim is left alone.
    pub async fn release(&self, client_id: &str, generation: u64) -> Result<(), ClaimError> {
        let query =
            sqlx::query("DELETE FROM cluster_clients WHERE client_id = $1 AND generation = $2")
                .bind(client_id)
                .bind(generation as i64)
                .execute(&self.pool);
        self.bounded(query).await.map(drop)
    }

    /// Of the ids this node holds (with their generations), those claimed since by a later
    /// connection, here or elsewhere.
    pub async fn lost(&self, held: &[(Arc<str>, u64)]) -> Result<Vec<String>, ClaimError> {
        let ids: Vec<&str> = held.iter().map(|(id, _)| &**id).collect();
        let generations: Vec<i64> = held.iter().map(|(_, g)| *g as i64).collect();
        let query = sqlx::query_scalar::<_, String>(
            "SELECT h.id FROM unnest($1::text[], $2::int8[]) AS h(id, generation) \
             WHERE EXISTS (SELECT 1 FROM cluster_clients c \
                           WHERE c.client_id = h.id AND c.generation > h.generation)",
        )
        .bind(ids)
        .bind(generations)
        .fetch_all(&self.pool);
        self.bounded(query).await
    }

    async fn bounded<T>(
        &self,
        query: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, ClaimError> {
        match tokio::time::timeout(self.timeout, query).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(ClaimError(e.to_string())),
            Err(_) => Err(ClaimError(format!(
                "the database did not answer within {:?}",
                self.timeout
            ))),
        }
    }
}

impl TakeOver {
    /// `generation resumed client-id`: the id last, whole, whatever it contains.
    pub fn encode(&self) -> Bytes {
        Bytes::from(format!(
            "{} {} {}",
            self.generation,
            u8::from(self.resumed),
            self.client_id
        ))
    }

    pub fn decode(body: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(body).ok()?;
        let mut parts = text.splitn(3, ' ');
        let generation = parts.next()?.parse().ok()?;
        let resumed = match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        Some(Self {
            client_id: Arc::from(parts.next()?),
            generation,
            resumed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_carries_any_client_id_whole() {
        let notice = TakeOver {
            client_id: Arc::from("a b  c ü"),
            generation: 17,
            resumed: true,
        };
        assert_eq!(TakeOver::decode(&notice.encode()), Some(notice));
        assert_eq!(TakeOver::decode(b"x 1 id"), None);
        assert_eq!(TakeOver::decode(b"5 2 id"), None);
        assert_eq!(TakeOver::decode(b"5 1"), None);
        let empty = TakeOver::decode(b"5 0 ").unwrap();
        assert_eq!(&*empty.client_id, "");
    }
}
