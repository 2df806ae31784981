#!/usr/bin/env bash
# The cluster benchmark (issue 15, decision 014): 4 publishers on node A × 4 `#` subscribers on
# node B, through the NATS server the nodes route by, side by side with the same workload on one
# node and on raw NATS (examples/nats_bench.rs, async-nats alone, through the same server: the
# engine's own ceiling here). All on this machine, in one run: a release build of retaind on a
# scratch Postgres database, and a nats-server of the script's own on a free port.
#
#   bench/cluster.sh
#
# Environment:
#   BENCH_DURATION     measured seconds of each fan-out run (default 20)
#   BENCH_WARMUP       unmeasured seconds of publishing before each (default 5)
#   BENCH_OUTSTANDING  messages a publisher may have ahead of its slowest subscriber (default 250,
#                      as bench/mqtt.sh; 0 = no limit)
#   BENCH_INTEREST     messages node A publishes to a topic nobody subscribes to (default 10000)
#   BENCH_HALF_RATE    "QOS0,QOS1": messages/s per publisher of the half-rate runs, instead of
#                      half the cluster's measured rate (to compare latency at an earlier run's pace)
#   BENCH_NODE_THREADS tokio worker threads of each retaind (default: one per core)
#   PG_ADMIN_URL       a Postgres superuser URL (default: see scripts/postgres.sh)
#   CARGO_TARGET_DIR   where cargo builds (default target/)
#
# What runs, in this order (each on its own, so no two share the CPU):
#   cluster      nodes A and B (--cluster-url, same database); examples/mqtt_bench with its
#                publishers on A and its subscribers on B (--sub-port): fanout-qos0, fanout-qos1.
#                mqtt_bench publishes probes on A after the SUBACKs until every subscriber on B
#                has one, so that the measured messages do not race the propagation of B's new
#                subscriptions to A (decision 014: milliseconds; the time is in the raw output).
#   half rate    the cluster again, each publisher paced (--rate) to half the cluster's
#                deliveries/s of that QoS ÷ (4 publishers × 4 subscribers): the latency a
#                cluster adds when it is not saturated
#   single node  one retaind, no --cluster-url, same database: the same four runs
#   raw NATS     examples/nats_bench, 4 publishers × 4 subscribers to `PREFIX.>` (one connection
#                each), same payloads and flow control, at full rate and at the half rates.
#                Core NATS has no QoS (at most once): one figure is the ceiling for both rows.
#   interest     a fresh pair of nodes; one mosquitto_sub on B to bench/interest/wanted; A
#                publishes BENCH_INTEREST messages to bench/interest/unwanted (no subscriber
#                anywhere), then 1000 to bench/interest/wanted. Each node logs at SIGTERM
#                "cluster traffic of this node, since it started" (forwarded=, not_forwarded=,
#                ...): A must have forwarded exactly the 1000 wanted messages, and counted the
#                unwanted ones as not forwarded.
#
# retaind gets bench/mqtt.sh's limits, so that its per-session limits never hold it back:
# --mqtt-max-inflight 256 (its default) --mqtt-max-queued-messages 100000 (10000)
# --mqtt-max-queued-bytes 64 MiB (16 MiB).
#
# Targets (issue 15): cluster deliveries/s ≥ 0.5× single node and ≥ 0.7× raw NATS; added p99
# (cluster − single node) ≤ 2 ms at half rate; nothing forwarded for a topic nobody elsewhere
# wants. The table goes to stdout and to bench/results/cluster.md (git-ignored), raw outputs and
# logs to bench/results/cluster-raw/. Exits 1 if a run failed (lost QoS 1 messages, a dropped
# connection, a node that died) or the interest count is wrong.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

DURATION=${BENCH_DURATION:-20}
DURATION=${DURATION%s}
WARMUP=${BENCH_WARMUP:-5}
WARMUP=${WARMUP%s}
OUTSTANDING=${BENCH_OUTSTANDING:-250}
INTEREST=${BENCH_INTEREST:-10000}
for v in DURATION WARMUP INTEREST; do
    [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ] || { echo "bench: BENCH_$v must be a positive integer" >&2; exit 2; }
done
[[ $OUTSTANDING =~ ^[0-9]+$ ]] || { echo "bench: BENCH_OUTSTANDING must be a non-negative integer" >&2; exit 2; }
PUBLISHERS=4
SUBSCRIBERS=4
PAYLOAD=256
WANTED=1000
QUEUED_MESSAGES=100000
QUEUED_BYTES=$((64 << 20))
INFLIGHT=256

RESULTS="$ROOT/bench/results"
RAW="$RESULTS/cluster-raw"
mkdir -p "$RAW"
rm -f "$RAW"/*
WORK=$(mktemp -d /tmp/retaind-cluster-bench.XXXXXX)
DB_NAME="retaind_cluster_bench_$$"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RETAIND="$TARGET_DIR/release/retaind"
MQTT_BENCH="$TARGET_DIR/release/examples/mqtt_bench"
NATS_BENCH="$TARGET_DIR/release/examples/nats_bench"
NATS_PID=""
SUB_PID=""
declare -A NODE_PID MQTT_PORT LINE CPU FAILED TRAFFIC HALF ADDED

STOP_SECONDS=20 # stop_pid: SIGTERM, then SIGKILL after this long (bench/lib.sh's default is 10)

cleanup() {
    local status=$?
    set +e
    for node in "${!NODE_PID[@]}"; do stop_node "$node"; done
    stop_pid "$SUB_PID" "$STOP_SECONDS"
    stop_pid "$NATS_PID" "$STOP_SECONDS"
    cp "$WORK/nats-server.log" "$RAW/nats-server.log" 2>/dev/null
    finish_cleanup "$status"
}
set_traps

# --- tools -------------------------------------------------------------------------------------
[ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null 2>&1 || install_debian nats-server
NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)
command -v mosquitto_pub >/dev/null 2>&1 || install_debian mosquitto-clients
ensure_postgres

log "building retaind and the examples (release)"
cargo build --release --quiet --bin retaind --examples

DB_URL=$(create_scratch_database "$DB_NAME")

# --- servers -----------------------------------------------------------------------------------
NATS_PORT=$(free_port)
log "starting nats-server with JetStream on 127.0.0.1:$NATS_PORT"
mkdir -p "$WORK/jetstream"
"$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/jetstream" >"$WORK/nats-server.log" 2>&1 &
NATS_PID=$!
for _ in $(seq 1 100); do
    grep -q 'Server is ready' "$WORK/nats-server.log" && break
    kill -0 "$NATS_PID" 2>/dev/null || { log "nats-server exited at start:"; cat "$WORK/nats-server.log" >&2; exit 1; }
    sleep 0.1
done
grep -q 'Server is ready' "$WORK/nats-server.log" || { log "nats-server not ready within 10 s"; exit 1; }
NATS_URL="nats://127.0.0.1:$NATS_PORT"

start_node() { # NAME [RETAIND ARGS...]: a retaind on free ports; its MQTT port in MQTT_PORT[NAME]
    local name=$1 line port=""
    shift
    env ${BENCH_NODE_THREADS:+TOKIO_WORKER_THREADS=$BENCH_NODE_THREADS} RUST_LOG=info \
        "$RETAIND" --http-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0 \
        --database-url "$DB_URL" --mqtt-max-queued-messages "$QUEUED_MESSAGES" \
        --mqtt-max-queued-bytes "$QUEUED_BYTES" --mqtt-max-inflight "$INFLIGHT" "$@" \
        >"$WORK/$name.out" 2>"$WORK/$name.stderr" &
    NODE_PID[$name]=$!
    for _ in $(seq 1 600); do
        line=$(grep -m1 '^retaind: MQTT on mqtt://' "$WORK/$name.out" || true)
        if [ -n "$line" ]; then port=${line##*:}; break; fi
        kill -0 "${NODE_PID[$name]}" 2>/dev/null || { log "retaind $name exited at start:"; cat "$WORK/$name.stderr" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$port" ] || { log "retaind $name did not report its MQTT address within 60 s"; exit 1; }
    MQTT_PORT[$name]=$port
    log "retaind $name: MQTT on 127.0.0.1:$port (pid ${NODE_PID[$name]})"
}

stop_node() { # NAME: SIGTERM (the node logs its cluster traffic as it stops); keeps its logs
    local name=$1 pid=${NODE_PID[$1]:-}
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || { log "retaind $name had died"; FAILED[$name/alive]="retaind $name died"; }
    stop_pid "$pid" "$STOP_SECONDS"
    unset "NODE_PID[$name]"
    cp "$WORK/$name.stderr" "$RAW/$name.stderr" 2>/dev/null || true
    cp "$WORK/$name.out" "$RAW/$name.out" 2>/dev/null || true
}

traffic() { # NODE FIELD: that field of the node's "cluster traffic" line, logged when it stopped
    sed -n "/cluster traffic of this node/ s/.* $2=\([0-9]*\).*/\1/p" "$RAW/$1.stderr" 2>/dev/null | tail -n 1
}

# --- measuring ---------------------------------------------------------------------------------
# CPU of each server process and of the load generator (finished children, from the shell's
# own `times`) over a run, in % of one core, as bench/mqtt.sh measures it (bench/lib.sh).

run() { # KEY "LABEL=PID ..." COMMAND...: runs one benchmark, keeps its result line
    local key=$1 procs=$2 rc=0 file=${1//\//-}
    shift 2
    local -A c0
    local p i0 t0 i1 t1 g0 g1
    for p in $procs; do c0[$p]=$(cpu_ticks "${p#*=}"); done
    read -r i0 t0 < <(idle_ticks); children_cpu_s g0
    log "$key"
    "$@" >"$RAW/$file.out" 2>"$RAW/$file.err" || rc=$?
    read -r i1 t1 < <(idle_ticks); children_cpu_s g1
    LINE[$key]=$(grep -m1 '^scenario=' "$RAW/$file.out" || true)
    FAILED[$key]=""
    [ "$rc" = 0 ] || FAILED[$key]="exit $rc"
    [ -n "${LINE[$key]}" ] || FAILED[$key]="no result"
    local wall cpu="" ours=0 share
    wall=$(awk -v a="$t0" -v b="$t1" -v n="$(nproc)" -v hz="$HZ" 'BEGIN { print (b - a) / n / hz }')
    for p in $procs; do
        share=$(awk -v a="${c0[$p]}" -v b="$(cpu_ticks "${p#*=}")" -v w="$wall" -v hz="$HZ" 'BEGIN { if (w > 0) printf "%.0f", (b - a) / hz / w * 100; else print 0 }')
        cpu+="${p%%=*} $share% · "
        ours=$((ours + share))
    done
    share=$(awk -v a="$g0" -v b="$g1" -v w="$wall" 'BEGIN { if (w > 0) printf "%.0f", (b - a) / w * 100; else print 0 }')
    ours=$((ours + share))
    # Others: Postgres, and whatever else runs on a shared host.
    local idle; idle=$(awk -v a="$i0" -v b="$i1" -v ta="$t0" -v tb="$t1" -v n="$(nproc)" 'BEGIN { if (tb > ta) printf "%.0f", (b - a) / (tb - ta) * 100 * n; else print 0 }')
    CPU[$key]="${cpu}load generator $share% | $(( $(nproc) * 100 - idle - ours < 0 ? 0 : $(nproc) * 100 - idle - ours ))% | $idle%"
    log "$key: ${LINE[$key]:-(none)} ${FAILED[$key]:+FAILED: ${FAILED[$key]}}"
    [ -z "${FAILED[$key]}" ] || tail -n 5 "$RAW/$file.err" >&2
}

mqtt_bench() { # PUB_PORT SUB_PORT SCENARIO RATE
    "$MQTT_BENCH" --host 127.0.0.1 --port "$1" --sub-port "$2" --scenario "$3" \
        --duration "$DURATION" --warmup "$WARMUP" --payload-bytes "$PAYLOAD" \
        --publishers "$PUBLISHERS" --subscribers "$SUBSCRIBERS" --rate "$4" \
        --max-outstanding "$OUTSTANDING"
}

nats_bench() { # RATE
    "$NATS_BENCH" --url "$NATS_URL" --duration "$DURATION" --warmup "$WARMUP" \
        --payload-bytes "$PAYLOAD" --publishers "$PUBLISHERS" --subscribers "$SUBSCRIBERS" \
        --rate "$1" --max-outstanding "$OUTSTANDING"
}

half_rate() { # KEY: messages/s per publisher that make half that run's deliveries/s
    awk -v d="$(field "$1" deliveries_per_s)" -v n=$((PUBLISHERS * SUBSCRIBERS)) \
        'BEGIN { r = int(d / 2 / n); print (r < 1 ? 1 : r) }'
}

STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
QOS=(fanout-qos0 fanout-qos1)

# Cluster: publishers on A, subscribers on B.
CLUSTER=(--cluster-url "$NATS_URL")
start_node a "${CLUSTER[@]}"
start_node b "${CLUSTER[@]}"
PROCS="A=${NODE_PID[a]} B=${NODE_PID[b]} nats-server=$NATS_PID"
for s in "${QOS[@]}"; do
    run "cluster/$s" "$PROCS" mqtt_bench "${MQTT_PORT[a]}" "${MQTT_PORT[b]}" "$s" 0
done
IFS=, read -r -a PINNED <<<"${BENCH_HALF_RATE:-}"
for i in "${!QOS[@]}"; do
    s=${QOS[$i]}
    HALF[$s]=${PINNED[$i]:-$(half_rate "cluster/$s")}
    run "cluster/half-$s" "$PROCS" mqtt_bench "${MQTT_PORT[a]}" "${MQTT_PORT[b]}" "$s" "${HALF[$s]}"
done
stop_node a
stop_node b
for node in a b; do
    for f in forwarded dropped received duplicates slow_consumer_events; do
        TRAFFIC[$node/$f]=$(traffic "$node" "$f")
    done
done

# One node, publishers and subscribers on it.
start_node single
PROCS="retaind=${NODE_PID[single]}"
for s in "${QOS[@]}"; do
    run "single/$s" "$PROCS" mqtt_bench "${MQTT_PORT[single]}" "${MQTT_PORT[single]}" "$s" 0
done
for s in "${QOS[@]}"; do
    run "single/half-$s" "$PROCS" mqtt_bench "${MQTT_PORT[single]}" "${MQTT_PORT[single]}" "$s" "${HALF[$s]}"
done
stop_node single

# Raw NATS through the same server.
PROCS="nats-server=$NATS_PID"
run "nats/full" "$PROCS" nats_bench 0
for s in "${QOS[@]}"; do
    run "nats/half-$s" "$PROCS" nats_bench "${HALF[$s]}"
done

# Interest: nothing goes to NATS for a topic no other node wants. A fresh pair under a prefix of
# its own, so that its counts hold only this step.
INTEREST_CLUSTER=(--cluster-url "$NATS_URL" --cluster-prefix retaind-interest)
start_node ia "${INTEREST_CLUSTER[@]}"
start_node ib "${INTEREST_CLUSTER[@]}"
log "interest: a subscriber on B to bench/interest/wanted"
# Line-buffered: its debug lines (the SUBACK) must reach the file as they happen.
stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "${MQTT_PORT[ib]}" -q 1 -t bench/interest/wanted -C "$WANTED" -W 120 \
    -i bench-interest-sub -d >"$WORK/interest-sub.out" 2>&1 &
SUB_PID=$!
for _ in $(seq 1 100); do
    grep -q 'received SUBACK' "$WORK/interest-sub.out" && break
    sleep 0.1
done
grep -q 'received SUBACK' "$WORK/interest-sub.out" || { log "interest: no SUBACK for mosquitto_sub"; cat "$WORK/interest-sub.out" >&2; exit 1; }
# The cluster's interest-propagation window (decision 014: milliseconds), with a wide margin:
# a wanted message published before A knows of B's subscription would not be forwarded.
sleep 1
log "interest: $INTEREST messages on A to bench/interest/unwanted, then $WANTED to bench/interest/wanted"
INTEREST_OK=1
seq 1 "$INTEREST" | mosquitto_pub -h 127.0.0.1 -p "${MQTT_PORT[ia]}" -q 1 -t bench/interest/unwanted \
    -i bench-interest-pub -l || { log "interest: mosquitto_pub failed"; INTEREST_OK=0; }
seq 1 "$WANTED" | mosquitto_pub -h 127.0.0.1 -p "${MQTT_PORT[ia]}" -q 1 -t bench/interest/wanted \
    -i bench-interest-pub -l || { log "interest: mosquitto_pub failed"; INTEREST_OK=0; }
wait "$SUB_PID" || log "interest: mosquitto_sub ended with status $? (fewer than $WANTED messages?)"
SUB_PID=""
SUB_GOT=$(grep -c 'received PUBLISH' "$WORK/interest-sub.out" || true)
cp "$WORK/interest-sub.out" "$RAW/interest-sub.out"
stop_node ia
stop_node ib
IA_FORWARDED=$(traffic ia forwarded)
IA_NOT_FORWARDED=$(traffic ia not_forwarded)
IB_RECEIVED=$(traffic ib received)
IB_FORWARDED=$(traffic ib forwarded)
log "interest: A forwarded=${IA_FORWARDED:-?} not_forwarded=${IA_NOT_FORWARDED:-?}; B received=${IB_RECEIVED:-?}; subscriber got $SUB_GOT"
[ "${IA_FORWARDED:-x}" = "$WANTED" ] && [ "${IA_NOT_FORWARDED:-x}" = "$INTEREST" ] &&
    [ "${IB_RECEIVED:-x}" = "$WANTED" ] && [ "$SUB_GOT" = "$WANTED" ] || INTEREST_OK=0

# --- report ------------------------------------------------------------------------------------
verdict() { # VALUE OP LIMIT: ✓ or ✗
    awk -v v="$1" -v l="$3" -v op="$2" 'BEGIN {
        if (v == "") { print "?"; exit }
        if (op == ">=") ok = (v + 0 >= l + 0); else ok = (v + 0 <= l + 0)
        print (ok ? "✓" : "✗")
    }'
}
row() { # SCENARIO NATS_KEY LABEL FIELD DECIMALS
    local s c n
    s=$(field "single/$1" "$4"); c=$(field "cluster/$1" "$4"); n=$(field "$2" "$4")
    echo "| $1 | $3 | $(fmt "$s" "$5") | $(fmt "$c" "$5") | $(fmt "$n" "$5")${NATS_MARK} | $(ratio "$c" "$s") | $(ratio "$c" "$n") |"
}
notes() { # KEY -> "lost=.. errors=.." when not clean
    local k=$1 out="" lost errors
    lost=$(field "$k" lost); errors=$(field "$k" errors)
    [ -z "${FAILED[$k]:-}" ] || out+="**${FAILED[$k]}**; "
    [ "${lost:-0}" = 0 ] || out+="$lost deliveries lost; "
    [ "${errors:-0}" = 0 ] || out+="$errors connection errors; "
    echo "${out%; }"
}

ANY_FAILED=0
for k in "${!FAILED[@]}"; do [ -z "${FAILED[$k]}" ] || ANY_FAILED=1; done
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
RAM=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
PG_VERSION=$(psql_db -c 'show server_version')
NATS_VERSION=$("$NATS_SERVER" --version 2>&1 | head -n 1)
NATS_MARK="¹"
KEYS=(cluster/fanout-qos0 cluster/fanout-qos1 cluster/half-fanout-qos0 cluster/half-fanout-qos1
    single/fanout-qos0 single/fanout-qos1 single/half-fanout-qos0 single/half-fanout-qos1
    nats/full nats/half-fanout-qos0 nats/half-fanout-qos1)

{
    echo "## Cluster: 4 publishers on node A × 4 \`#\` subscribers on node B, 256 B payloads"
    echo
    echo "| scenario | metric | single node | cluster (A→B) | raw NATS | cluster ÷ single | cluster ÷ raw NATS |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    for s in "${QOS[@]}"; do
        row "$s" nats/full "deliveries/s" deliveries_per_s 0
        row "$s" nats/full "p50 latency (ms)" p50_ms 2
        row "$s" nats/full "p99 latency (ms)" p99_ms 2
    done
    echo
    echo "¹ Core NATS has no QoS (at most once, like QoS 0): one run of examples/nats_bench is the ceiling for both rows."
    echo
    if [ -n "${BENCH_HALF_RATE:-}" ]; then
        echo "At half rate: each publisher paced as BENCH_HALF_RATE=$BENCH_HALF_RATE asked (QoS 0, QoS 1), not to half of this run's rate; raw NATS at the same pace."
    else
        echo "At half rate: each publisher paced to half the cluster's deliveries/s of that QoS above ÷ ($PUBLISHERS × $SUBSCRIBERS); raw NATS at the same pace."
    fi
    echo
    echo "| scenario | msgs/s per publisher | single p50 / p99 (ms) | cluster p50 / p99 (ms) | raw NATS p50 / p99 (ms) | added p99, cluster − single (ms) |"
    echo "|---|---:|---:|---:|---:|---:|"
    for s in "${QOS[@]}"; do
        sk="single/half-$s" ck="cluster/half-$s" nk="nats/half-$s"
        ADDED[$s]=$(awk -v c="$(field "$ck" p99_ms)" -v s="$(field "$sk" p99_ms)" 'BEGIN { if (c != "" && s != "") printf "%.2f", c - s }')
        echo "| $s | ${HALF[$s]} | $(fmt "$(field "$sk" p50_ms)" 2) / $(fmt "$(field "$sk" p99_ms)" 2) | $(fmt "$(field "$ck" p50_ms)" 2) / $(fmt "$(field "$ck" p99_ms)" 2) | $(fmt "$(field "$nk" p50_ms)" 2) / $(fmt "$(field "$nk" p99_ms)" 2) | $(fmt "${ADDED[$s]}" 2) |"
    done
    echo
    echo "Interest: a fresh pair of nodes; node A published $INTEREST messages to a topic nobody subscribes to, then $WANTED to one a subscriber on B holds (counts from each node's \"cluster traffic\" log line at SIGTERM)."
    echo
    echo "| | expected | measured |"
    echo "|---|---:|---:|"
    echo "| A: not forwarded (no other node wanted them) | $INTEREST | ${IA_NOT_FORWARDED:-?} |"
    echo "| A: forwarded to NATS | $WANTED | ${IA_FORWARDED:-?} |"
    echo "| B: received from NATS | $WANTED | ${IB_RECEIVED:-?} |"
    echo "| B: forwarded to NATS | 0 | ${IB_FORWARDED:-?} |"
    echo "| the subscriber on B: messages | $WANTED | $SUB_GOT |"
    echo
    c0=$(field cluster/fanout-qos0 deliveries_per_s); c1=$(field cluster/fanout-qos1 deliveries_per_s)
    n0=$(field nats/full deliveries_per_s)
    echo "Targets (issue 15):"
    echo "- cluster ≥ 0.5× single node: QoS 0 $(ratio "$c0" "$(field single/fanout-qos0 deliveries_per_s)") $(verdict "$(awk -v a="$c0" -v b="$(field single/fanout-qos0 deliveries_per_s)" 'BEGIN { if (b > 0) print a / b }')" ">=" 0.5), QoS 1 $(ratio "$c1" "$(field single/fanout-qos1 deliveries_per_s)") $(verdict "$(awk -v a="$c1" -v b="$(field single/fanout-qos1 deliveries_per_s)" 'BEGIN { if (b > 0) print a / b }')" ">=" 0.5)"
    echo "- cluster ≥ 0.7× raw NATS: QoS 0 $(ratio "$c0" "$n0") $(verdict "$(awk -v a="$c0" -v b="$n0" 'BEGIN { if (b > 0) print a / b }')" ">=" 0.7), QoS 1 $(ratio "$c1" "$n0") $(verdict "$(awk -v a="$c1" -v b="$n0" 'BEGIN { if (b > 0) print a / b }')" ">=" 0.7)"
    echo "- added p99 ≤ 2 ms at half rate: QoS 0 $(fmt "${ADDED[fanout-qos0]}" 2) ms $(verdict "${ADDED[fanout-qos0]}" "<=" 2), QoS 1 $(fmt "${ADDED[fanout-qos1]}" 2) ms $(verdict "${ADDED[fanout-qos1]}" "<=" 2)"
    if [ "$INTEREST_OK" = 1 ]; then i="✓"; else i="✗"; fi
    echo "- nothing sent to NATS for a topic no other node wants: $i"
    echo
    pace="each publisher keeps at most $OUTSTANDING messages not yet received by every subscriber"
    [ "$OUTSTANDING" != 0 ] || pace="publishers are not held back by their subscribers"
    echo "Each run: ${WARMUP} s warm-up, then ${DURATION} s measured; every message goes to all $SUBSCRIBERS subscribers, so deliveries/s is up to $SUBSCRIBERS× publishes/s. Latency is from the publish call to receipt, in one process with one clock; $pace. In the cluster, the publishers' node sends each message once to NATS and node B fans it out to its 4 sessions; raw NATS delivers each message to 4 connections itself. Over the cluster runs, node A forwarded ${TRAFFIC[a/forwarded]:-?} messages to NATS and dropped ${TRAFFIC[a/dropped]:-?} (outbox full); node B received ${TRAFFIC[b/received]:-?}, with ${TRAFFIC[b/slow_consumer_events]:-?} slow-consumer events. B may receive a few fewer than A forwarded: a publisher's last message, published after the window while it waited for flow control, is not waited for, and may reach NATS after B's subscribers have left."
    for k in "${KEYS[@]}"; do
        n=$(notes "$k")
        [ -z "$n" ] || echo "- $k: $n"
    done
    for k in "${!FAILED[@]}"; do
        case $k in */alive) [ -z "${FAILED[$k]}" ] || echo "- **${FAILED[$k]}** during the run" ;; esac
    done
    if [ "$ANY_FAILED" = 1 ] || [ "$INTEREST_OK" = 0 ]; then
        echo
        echo "**⚠ This run had failures (marked above); those numbers are not valid. Raw output: bench/results/cluster-raw/.**"
    fi
    echo
    echo "CPU over each run (connecting and draining included), in % of one core; the machine has $(nproc) cores = $(($(nproc) * 100))%. \"others\" is every other process (Postgres too, and whatever else runs on a shared host): high values there mean the benchmark did not have the machine to itself."
    echo
    echo "| run | CPU | others | idle |"
    echo "|---|---|---:|---:|"
    for k in "${KEYS[@]}"; do echo "| $k | ${CPU[$k]:-?} |"; done
    echo
    echo "- Date: $STARTED"
    echo "- Machine: $(nproc) CPUs ($CPU_MODEL), $RAM RAM; load generators, nodes, nats-server and Postgres share it"
    echo "- retaind: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown), release build, Postgres store, --mqtt-max-inflight $INFLIGHT --mqtt-max-queued-messages $QUEUED_MESSAGES --mqtt-max-queued-bytes $QUEUED_BYTES${BENCH_NODE_THREADS:+, $BENCH_NODE_THREADS tokio worker thread(s) per node}"
    echo "- NATS: $NATS_VERSION, JetStream on (the interest bucket); Postgres $PG_VERSION"
    echo "- Load generators: examples/mqtt_bench.rs (rumqttc, MQTT 3.1.1 over TCP; QoS 1 publishers with 100 in flight), examples/nats_bench.rs (async-nats); --max-outstanding $OUTSTANDING"
} >"$WORK/table.md"

cp "$WORK/table.md" "$RESULTS/cluster.md"
echo
cat "$RESULTS/cluster.md"
echo
log "written to bench/results/cluster.md (raw outputs and logs in bench/results/cluster-raw/)"
[ "$ANY_FAILED" = 0 ] && [ "$INTEREST_OK" = 1 ] || { log "some runs failed; see the table"; exit 1; }
