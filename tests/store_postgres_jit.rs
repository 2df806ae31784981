//! Postgres only: no statement of the store is JIT-compiled. With `enable_seqscan = off` (which
//! the store sets), Postgres before 18 gives a plan whose sequential scan it cannot avoid a cost
//! of 10^10, past every JIT threshold: the maintenance pass compiled about 40 functions each
//! time it ran, 270 ms of CPU on an idle server. The store's connections turn JIT off.
//!
//! Seen from outside: the test's database URL asks every session of the store to compile any
//! plan (`jit_above_cost = 0`) and to write what it compiles into Postgres' data directory
//! (`jit_dump_bitcode`, files `<pid>.<n>.bc`), which the test lists through `pg_ls_dir`. A
//! session that compiled anything leaves a file there. Needs a superuser (as the rest of the
//! suite's Postgres setup does) and a server built with JIT (Debian's is).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::writes::put;
use common::{Backend, T0_MS, fresh_db, open_backend, postgres_base_url, topic};
use retaind::store::{Clock, Readers, Store, StoreOptions, Write};
use sqlx::{Connection, Row};

/// Compile every plan (appended to the URL's `options`).
const COMPILE_EVERYTHING: &str = "%20-c%20jit_above_cost%3D0";
/// Keep what was compiled as a file of the data directory.
const KEEP_BITCODE: &str = "%20-c%20jit_dump_bitcode%3Don";

async fn bitcode_files(admin: &mut sqlx::PgConnection) -> BTreeSet<String> {
    sqlx::query("SELECT f FROM pg_ls_dir('.') AS f WHERE f LIKE '%.bc'")
        .fetch_all(admin)
        .await
        .expect("listing the data directory (needs a superuser)")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn no_statement_of_the_store_is_jit_compiled() {
    let db = fresh_db(Backend::Postgres).await;
    assert!(
        db.url.contains("options="),
        "the schema is chosen by options"
    );
    let url = format!("{}{COMPILE_EVERYTHING}{KEEP_BITCODE}", db.url);
    let mut admin = sqlx::PgConnection::connect(&postgres_base_url())
        .await
        .expect("connecting to the test database");
    let available: bool = sqlx::query_scalar("SELECT pg_jit_available()")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(
        available,
        "this Postgres has no JIT: the test would prove nothing"
    );

    // The URL's settings compile a plain session's plans: without them turned off, the
    // store's would be compiled too. (EXPLAIN ANALYZE says so without leaving files.)
    let mut plain = sqlx::PgConnection::connect(&format!("{}{COMPILE_EVERYTHING}", db.url))
        .await
        .expect("connecting with the URL's settings");
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN (ANALYZE, FORMAT TEXT) SELECT count(*) FROM generate_series(1, 10)",
    )
    .fetch_all(&mut plain)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("JIT:"), "a plain session compiles: {plan}");
    plain.close().await.unwrap();

    let before = bitcode_files(&mut admin).await;
    let store = Store::new(
        open_backend(&url).await,
        Clock::manual(T0_MS),
        StoreOptions::default(),
    );
    // Every kind of statement the store runs: batches of puts and deletes, point reads,
    // listings, scans on both kinds of readers, counts, and a maintenance pass that purges.
    for i in 0..50 {
        store.write(put(&format!("jit/{i:02}"), "x")).await.unwrap();
    }
    store.write(Write::Delete(topic("jit/00"))).await.unwrap();
    assert!(store.get(topic("jit/01")).await.unwrap().is_some());
    assert!(store.get(topic("jit/00")).await.unwrap().is_none());
    assert_eq!(store.list(None, 10).await.unwrap().len(), 10);
    let page = store.scan("jit/", None, None, 100).await;
    assert_eq!(page.unwrap().len(), 49);
    assert_eq!(
        store
            .list_range("jit/", None, None, 100)
            .await
            .unwrap()
            .len(),
        49
    );
    for readers in [Readers::Shared, Readers::Bulk] {
        let page = store.scan_publishes(readers, "jit/", None, None, 100).await;
        assert_eq!(page.unwrap().len(), 49, "{readers:?}");
    }
    assert_eq!(store.count(None).await.unwrap(), 49);
    store.clock().advance(Duration::from_secs(400 * 86_400));
    let report = store.maintain(Duration::from_secs(3600)).await.unwrap();
    assert!(report.idle > 0, "the pass purged: {report:?}");
    drop(store);

    let compiled: Vec<String> = bitcode_files(&mut admin)
        .await
        .difference(&before)
        .cloned()
        .collect();
    assert!(
        compiled.is_empty(),
        "the store's sessions JIT-compiled plans (files left in Postgres' data directory): \
         {compiled:?}"
    );
}
