#!/usr/bin/env bash
# Issue 17's benchmark: examples/revisions_bench.rs against retaind (release build) on a scratch
# Postgres database and on a SQLite file, in one run.
#
#   bench/revisions.sh
#
# Environment:
#   BENCH_DURATION     seconds per measured phase (default 10)
#   BENCH_RATE         changes per second for the watcher to follow (default 20000)
#   BENCH_WATCHERS     idle watchers opened (default 1000)
#   PG_ADMIN_URL       a Postgres superuser URL (default: see scripts/postgres.sh)
#   CARGO_TARGET_DIR   where cargo builds (default target/)
#
# For each store: start retaind, then
#   cas             HTTP publishes, unconditional against If-Match (target: ≥ 0.8×)
#   watch-lag       one watcher following BENCH_RATE changes/s (target: p99 lag ≤ 50 ms)
#   idle-watchers   retaind's RSS before and after BENCH_WATCHERS idle watchers (≤ 50 MB)
# The result lines go to stdout and to bench/results/revisions.md (git-ignored).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

DURATION=${BENCH_DURATION:-10}
RATE=${BENCH_RATE:-20000}
WATCHERS=${BENCH_WATCHERS:-1000}
for v in DURATION RATE WATCHERS; do
    [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ] || { echo "bench: BENCH_$v must be a positive integer" >&2; exit 2; }
done

RESULTS="$ROOT/bench/results"
mkdir -p "$RESULTS"
WORK=$(mktemp -d /tmp/retaind-revisions-bench.XXXXXX)
DB_NAME="retaind_revisions_bench_$$"
RETAIND_PID=""
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RETAIND="$TARGET_DIR/release/retaind"
BENCH="$TARGET_DIR/release/examples/revisions_bench"

cleanup() {
    local status=$?
    set +e
    stop_pid "$RETAIND_PID"
    finish_cleanup "$status"
}
set_traps

ensure_postgres
log "building retaind and examples/revisions_bench (release)"
cargo build --release --quiet --example revisions_bench --bin retaind
DB_URL=$(create_scratch_database "$DB_NAME")
# Many watchers are many sockets, on both ends.
ulimit -n 8192 2>/dev/null || true

start_retaind() { # DATABASE_URL: sets RETAIND_PID, HTTP_URL and MQTT_PORT
    # Opening 1,000 watches at once is the point of idle-watchers, and cas measures the store,
    # not the per-principal Publish rate (2,000/s by default, as on AWS): no rates.
    "$RETAIND" --http-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0 --database-url "$1" \
        --rate-watch-retained-messages 0 --rate-publish 0 \
        >"$WORK/retaind.out" 2>"$WORK/retaind.stderr" &
    RETAIND_PID=$!
    HTTP_URL="" MQTT_PORT=""
    for _ in $(seq 1 600); do
        HTTP_URL=$(grep -m1 '^retaind: HTTP API on ' "$WORK/retaind.out" | sed 's/^retaind: HTTP API on //' || true)
        MQTT_PORT=$(grep -m1 '^retaind: MQTT on mqtt://' "$WORK/retaind.out" | sed 's/.*://' || true)
        [ -n "$HTTP_URL" ] && [ -n "$MQTT_PORT" ] && return 0
        kill -0 "$RETAIND_PID" 2>/dev/null || { log "retaind exited at start:"; cat "$WORK/retaind.stderr" >&2; exit 1; }
        sleep 0.1
    done
    log "retaind did not report its addresses within 60 s"
    exit 1
}

OUT="$RESULTS/revisions.md"
{
    echo "# bench/revisions.sh, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- retaind: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown), release build"
    echo "- machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
} >"$OUT"
FAILED=0
for store in postgres sqlite; do
    case $store in
        postgres) url=$DB_URL ;;
        sqlite) url="sqlite://$WORK/retained.db" ;;
    esac
    log "$store: starting retaind"
    start_retaind "$url"
    log "$store: retaind on $HTTP_URL, MQTT port $MQTT_PORT (pid $RETAIND_PID)"
    if ! "$BENCH" --http "$HTTP_URL" --mqtt-port "$MQTT_PORT" --pid "$RETAIND_PID" \
        --duration "$DURATION" --rate "$RATE" --watchers "$WATCHERS" \
        --scenario cas,watch-lag,idle-watchers >"$WORK/$store.lines"; then
        FAILED=1
    fi
    sed "s/^/$store: /" "$WORK/$store.lines" | tee -a "$OUT"
    stop_pid "$RETAIND_PID"
    RETAIND_PID=""
done
[ "$FAILED" = 0 ] || log "a scenario failed; see the lines above"
exit "$FAILED"
