//! The shared connection pool, and the setup every connection the store opens runs.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool};

use crate::store::Error;

/// [`SESSION_SETUP`] as a literal, so that [`BULK_SETUP`] can add to it.
macro_rules! session_setup {
    () => {
        "SET enable_seqscan = off; SET jit = off"
    };
}

/// Run by every connection the store opens, pooled or for writes. Every statement the store
/// runs has an index to use, so a sequential scan is only ever a mistake, and one that lasts:
/// a prepared statement keeps a generic plan, and one made while the table was empty (a fresh
/// database, a mass delete then vacuum) scans the table for each of its `topic = ANY($1)`
/// arrays, comparing every row with every element. Measured: with 50,000 rows, batches of 100
/// deletes kept the write lane busy for tens of seconds, until autovacuum's analyze replaced
/// the plan. Set per connection, not in the URL (`options=`), which poolers such as PgBouncer
/// may refuse.
///
/// JIT compilation is off for the same reason. Until Postgres 18, a plan whose sequential scan
/// cannot be avoided (the one-row `retained_compacted`) carries a disabled node's cost of 10^10,
/// past every JIT threshold, so each run of such a statement compiled about 40 functions:
/// measured, 270 ms of CPU for one maintenance pass that deletes nothing on an idle server, and
/// 1.5 s (logged as a slow statement) while a large delivery kept the cores busy. Every
/// statement here reads or writes a few rows through an index, which compiled code never
/// repays.
pub(super) const SESSION_SETUP: &str = session_setup!();

/// The pool for reads, quota counts and maintenance (write batches have connections of their
/// own, see `writers`), each connection set up with [`SESSION_SETUP`].
pub(super) async fn connect(
    options: &PgConnectOptions,
    max_connections: u32,
    timeout: Duration,
) -> Result<PgPool, Error> {
    Ok(pool_options(max_connections, timeout, SESSION_SETUP)
        .connect_with(options.clone())
        .await?)
}

/// Run by every connection of the bulk pool instead of [`SESSION_SETUP`]: that, and no sorting.
/// A bulk scan pages through a range in key order, which the planner may otherwise answer by
/// reading the whole range and sorting it (see `PostgresStore::range`); forbidding it for the
/// session rather than in a transaction around each page saves three statements a page
/// (`BEGIN`, `SET LOCAL`, `ROLLBACK`), two of them round trips a delivery waits for: measured
/// (decision 020), a delivery of a million messages in pages of 256 ran 11% faster.
pub(super) const BULK_SETUP: &str = concat!(session_setup!(), "; SET enable_sort = off");

/// The pool of bulk scans ([`Readers::Bulk`](crate::store::Readers::Bulk)): no connection until a bulk scan opens
/// one, on the runtime that scan runs on, and only bulk scans use them.
pub(super) fn bulk(options: &PgConnectOptions, max_connections: u32, timeout: Duration) -> PgPool {
    pool_options(max_connections, timeout, BULK_SETUP).connect_lazy_with(options.clone())
}

fn pool_options(max_connections: u32, timeout: Duration, setup: &'static str) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(timeout)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                // Several statements: sent as one simple query, not prepared.
                conn.execute(setup).await?;
                Ok(())
            })
        })
}
