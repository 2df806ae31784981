#!/usr/bin/env bash
# Decision 018's first question: what a one-row revision counter, locked from the start of a
# write batch to its commit, costs the store. pgbench runs a write batch shaped like the
# Postgres store's (100 upserts of 256-byte payloads over 100,000 topics) with and without the
# counter, at 1, 4 and 8 concurrent writers (write lanes, or nodes), on a scratch database.
#
#   bench/revision_lock.sh
#
# Environment: BENCH_SECONDS (default 15) per run; PG_ADMIN_URL (see scripts/postgres.sh).
# Prints one line per run: writers, variant, transactions/s (batches/s) and mean latency.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

SECONDS_PER_RUN=${BENCH_SECONDS:-15}
WORK=$(mktemp -d /tmp/retaind-bench.XXXXXX)
DB_NAME="retaind_revlock_$$"
cleanup() { finish_cleanup $?; }
set_traps

ensure_postgres
PGBENCH=$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | sort -V | tail -1)
[ -x "$PGBENCH" ] || { log "pgbench not found"; exit 1; }
DB_URL=$(create_scratch_database "$DB_NAME")
psql "$DB_URL" -q <<'SQL'
CREATE TABLE msgs (topic text PRIMARY KEY, payload bytea NOT NULL, write_seq bigint NOT NULL,
                   revision bigint NOT NULL DEFAULT 0);
CREATE SEQUENCE wseq;
CREATE TABLE rev (id int PRIMARY KEY, n bigint NOT NULL);
INSERT INTO rev VALUES (1, 0);
INSERT INTO msgs SELECT 't/' || g, '\x00'::bytea, 0, 0 FROM generate_series(1, 100000) g;
VACUUM ANALYZE msgs;
SQL
echo "| writers | variant | batches/s | rows/s | mean latency (ms) |"
echo "|---:|---|---:|---:|---:|"
for writers in 1 4 8; do
    for variant in plain first; do
        out=$("$PGBENCH" -n -f "bench/revision_lock/$variant.sql" -c "$writers" -j "$writers" \
            -T "$SECONDS_PER_RUN" "$DB_URL" 2>&1)
        tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
        lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")
        [ -n "$tps" ] || { log "pgbench failed: $out"; exit 1; }
        printf '| %s | %s | %.0f | %.0f | %s |\n' "$writers" "$variant" "$tps" \
            "$(awk -v t="$tps" 'BEGIN { print t * 100 }')" "$lat"
    done
done
