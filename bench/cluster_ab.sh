#!/usr/bin/env bash
# Two builds of retaind side by side on the cluster benchmark's workload (bench/cluster.sh: 4
# publishers on node A × 4 `#` subscribers on node B, 256 B), alternating run by run so that a
# host whose speed drifts weighs on both alike. Reports each run's deliveries/s and the CPU each
# process spent per delivery (from /proc), and the mean of each build: on a shared 2-core
# machine the rate swings by a fifth from run to run, and the CPU per delivery is the steadier
# figure for telling two builds apart.
#
#   BENCH_BASE=/path/to/old/retaind BENCH_NEW=/path/to/new/retaind bench/cluster_ab.sh
#
# Environment:
#   BENCH_BASE, BENCH_NEW  the two retaind binaries (required; e.g. a release build of the
#                          commit before, copied aside, and target/release/retaind)
#   BENCH_ROUNDS           runs of each build per scenario (default 3)
#   BENCH_SCENARIOS        default "fanout-qos0 fanout-qos1"
#   BENCH_DURATION         measured seconds of each run (default 10), after 3 s of warm-up
#   CARGO_TARGET_DIR       where the load generator (examples/mqtt_bench) is built
#
# Each run starts a fresh pair of nodes (same flags as bench/cluster.sh) on a scratch Postgres
# database and a nats-server of its own. The CPU is each process's over the whole run, the
# warm-up included, which is taken to deliver at the measured rate; connecting and stopping
# count too, so compare the two builds' figures with each other, not with bench/cluster.sh's.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

BASE=${BENCH_BASE:?set BENCH_BASE to the first retaind binary}
NEW=${BENCH_NEW:?set BENCH_NEW to the second retaind binary}
ROUNDS=${BENCH_ROUNDS:-3}
SCENARIOS=${BENCH_SCENARIOS:-fanout-qos0 fanout-qos1}
DURATION=${BENCH_DURATION:-10}
WARMUP=3
for b in "$BASE" "$NEW"; do [ -x "$b" ] || { log "not an executable: $b"; exit 2; }; done

WORK=$(mktemp -d /tmp/retaind-cluster-ab.XXXXXX)
DB_NAME="retaind_cluster_ab_$$"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
MQTT_BENCH="$TARGET_DIR/release/examples/mqtt_bench"
PIDS=()

cleanup() {
    local status=$?
    set +e
    for p in "${PIDS[@]}"; do stop_pid "$p" 20; done
    finish_cleanup "$status"
}
set_traps

[ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null 2>&1 || install_debian nats-server
NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)
ensure_postgres
log "building the load generator (release)"
cargo build --release --quiet --example mqtt_bench
DB_URL=$(create_scratch_database "$DB_NAME")

node() { # BINARY NAME NATS_URL: starts a node; prints its pid and MQTT port
    local out="$WORK/$2.out"
    RUST_LOG=warn "$1" --http-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0 --database-url "$DB_URL" \
        --mqtt-max-queued-messages 100000 --mqtt-max-queued-bytes $((64 << 20)) \
        --mqtt-max-inflight 256 --cluster-url "$3" >"$out" 2>"$WORK/$2.err" &
    local pid=$! line=""
    for _ in $(seq 1 600); do
        line=$(grep -m1 '^retaind: MQTT on mqtt://' "$out" || true)
        [ -n "$line" ] && break
        kill -0 "$pid" 2>/dev/null || { log "retaind $2 exited at start:"; cat "$WORK/$2.err" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$line" ] || { log "retaind $2 did not report its MQTT address"; exit 1; }
    echo "$pid ${line##*:}"
}

one_run() { # BUILD BINARY SCENARIO: one fresh service, one run; appends its line to RESULTS_FILE
    local port nats a b pa pb a0 b0 n0 line
    port=$(free_port)
    rm -rf "$WORK/js" && mkdir -p "$WORK/js"
    "$NATS_SERVER" -a 127.0.0.1 -p "$port" -js -sd "$WORK/js" >"$WORK/nats.log" 2>&1 &
    nats=$!
    PIDS=("$nats")
    until_listening "$port" nats-server
    read -r a pa < <(node "$2" a "nats://127.0.0.1:$port") || true
    [ -n "${pa:-}" ] || exit 1
    PIDS+=("$a")
    read -r b pb < <(node "$2" b "nats://127.0.0.1:$port") || true
    [ -n "${pb:-}" ] || exit 1
    PIDS+=("$b")
    a0=$(cpu_ticks "$a"); b0=$(cpu_ticks "$b"); n0=$(cpu_ticks "$nats")
    line=$("$MQTT_BENCH" --host 127.0.0.1 --port "$pa" --sub-port "$pb" --scenario "$3" \
        --duration "$DURATION" --warmup "$WARMUP" --payload-bytes 256 --publishers 4 \
        --subscribers 4 --rate 0 --max-outstanding 250 2>>"$WORK/mqtt_bench.err" | grep -m1 '^scenario=')
    local ta=$(($(cpu_ticks "$a") - a0)) tb=$(($(cpu_ticks "$b") - b0)) tn=$(($(cpu_ticks "$nats") - n0))
    for p in "$a" "$b" "$nats"; do stop_pid "$p" 20; done
    PIDS=()
    local delivered lost
    delivered=$(sed -n 's/.* delivered=\([0-9]*\).*/\1/p' <<<"$line")
    lost=$(sed -n 's/.* lost=\([0-9]*\).*/\1/p' <<<"$line")
    [ "${lost:-1}" = 0 ] || log "$1 $3: lost=$lost"
    # The CPU counts the warm-up too, taken to run at the measured rate.
    awk -v build="$1" -v s="$3" -v d="$delivered" -v w="$DURATION" -v u="$WARMUP" -v a="$ta" -v b="$tb" -v n="$tn" -v hz="$HZ" \
        'BEGIN { us = 1e6 / hz / (d / w * (w + u)); printf "%s %s %d %.3f %.3f %.3f %.3f\n", s, build, d / w, a * us, b * us, n * us, (a + b + n) * us }' >>"$RESULTS_FILE"
}

RESULTS_FILE="$WORK/results"
: >"$RESULTS_FILE"
for s in $SCENARIOS; do
    for r in $(seq 1 "$ROUNDS"); do
        for build in base new; do
            bin=$BASE; [ "$build" = new ] && bin=$NEW
            log "$s, round $r of $ROUNDS: $build"
            one_run "$build" "$bin" "$s"
        done
    done
done

echo "| scenario | build | deliveries/s | A µs/delivery | B µs/delivery | nats-server µs/delivery | service µs/delivery |"
echo "|---|---|---:|---:|---:|---:|---:|"
awk '{ printf "| %s | %s | %d | %.3f | %.3f | %.3f | %.3f |\n", $1, $2, $3, $4, $5, $6, $7 }' "$RESULTS_FILE"
awk '
    { k = $1 " " $2; n[k]++; for (i = 3; i <= 7; i++) sum[k, i] += $i; keys[k] = 1 }
    END { for (k in keys) { split(k, p, " "); printf "| %s | %s, mean of %d | %d | %.3f | %.3f | %.3f | %.3f |\n", p[1], p[2], n[k], sum[k, 3] / n[k], sum[k, 4] / n[k], sum[k, 5] / n[k], sum[k, 6] / n[k], sum[k, 7] / n[k] } }' "$RESULTS_FILE" | sort
echo
echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1))"
echo "- base: $BASE; new: $NEW"
