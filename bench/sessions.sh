#!/usr/bin/env bash
# Persistent sessions across a restart of a single node (decision 024): the stop that saves
# them, the start that takes them up, and every client resuming with its queue
# (tests/session_restart_bench.rs, in one process with the node), on SQLite and on Postgres,
# each beside the same node's stop and start with no session (the baseline), in one run.
#
#   bench/sessions.sh
#
# Environment:
#   BENCH_SESSIONS     persistent sessions (default 10000)
#   BENCH_QUEUED       QoS 1 messages of 256 B queued for each (default 10)
#   BENCH_STORES       stores, space-separated (default "sqlite postgres")
#   PG_ADMIN_URL       a Postgres superuser URL (default: see scripts/postgres.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/postgres.sh
ensure_postgres
trap stop_scratch_postgres EXIT
db="retaind_bench_sessions_$$"
psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $db" >/dev/null
trap 'psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1; stop_scratch_postgres' EXIT
export RETAIND_TEST_DATABASE_URL="${PG_ADMIN_URL%/*}/$db"
# One process holds tens of thousands of sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo test --release --test session_restart_bench --no-run 2>/dev/null
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%Y-%m-%dT%H:%MZ); commit $(git rev-parse --short HEAD)"
for store in ${BENCH_STORES:-sqlite postgres}; do
    for sessions in 0 "${BENCH_SESSIONS:-10000}"; do
        BENCH_STORE=$store BENCH_SESSIONS=$sessions \
            cargo test --release -q --test session_restart_bench -- --ignored --nocapture 2>/dev/null |
            grep '^sessions '
    done
done
