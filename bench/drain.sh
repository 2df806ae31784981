#!/usr/bin/env bash
# Draining a node (--mqtt-drain-time): 1,000 persistent sessions on node B, B stopped with a
# drain time, each client resuming on node A (tests/cluster_drain_bench.rs, in one process with
# the nodes). Runs each drain time with the default --cluster-db-connections (8) and with the
# baseline of 4 (the fixed size before the flag), in one run.
#
#   bench/drain.sh
#
# Environment:
#   BENCH_CLIENTS      sessions on the drained node (default 1000)
#   BENCH_DRAINS       drain times in ms, space-separated (default "2000 1000 250")
#   BENCH_POOLS        --cluster-db-connections values (default "8 4")
#   BENCH_OTHER_FILTERS filters more subscribed on the node the clients move to, before the drain
#                      (default 0; tests/cluster_drain_bench.rs)
#   PG_ADMIN_URL       a Postgres superuser URL (default: see scripts/postgres.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/postgres.sh
ensure_postgres
trap stop_scratch_postgres EXIT
db="retaind_bench_drain_$$"
psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $db" >/dev/null
trap 'psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1; stop_scratch_postgres' EXIT
export RETAIND_TEST_DATABASE_URL="${PG_ADMIN_URL%/*}/$db"
cargo test --release --test cluster_drain_bench --no-run 2>/dev/null
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%Y-%m-%dT%H:%MZ)"
for drain in ${BENCH_DRAINS:-2000 1000 250}; do
    for pool in ${BENCH_POOLS:-8 4}; do
        BENCH_DRAIN_MS=$drain BENCH_CLUSTER_DB_CONNECTIONS=$pool \
            cargo test --release -q --test cluster_drain_bench -- --ignored --nocapture \
                drain_and_resume_elsewhere 2>/dev/null | grep '^drain '
    done
done
cargo test --release -q --test cluster_drain_bench -- --ignored --nocapture \
    a_crowd_leaves_while_another_subscribes 2>/dev/null | grep '^crowd '
