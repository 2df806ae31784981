#!/usr/bin/env bash
# What a broker holds for devices that are away: examples/offline_queues_bench.rs leaves
# BENCH_SESSIONS persistent sessions (MQTT 3.1.1, clean session 0) subscribed at QoS 1 to one
# filter, then publishes BENCH_MESSAGES QoS 1 messages of 256 B that every one of them is
# owed. The broker's resident memory (VmRSS) is read before and after, for retaind with no
# node-wide limit (`--mqtt-max-queue-memory-mib 0`, as before the limit existed), retaind with
# a limit the workload passes (BENCH_LIMIT_MIB), and Mosquitto with `max_queued_messages` set
# to retaind's per-session default (10,000), in one run; for retaind also its own count of
# queued memory and what it dropped.
#
#   bench/offline_queues.sh
#
# Environment:
#   BENCH_SESSIONS   offline sessions (default 4000)
#   BENCH_MESSAGES   messages owed to each (default 5000)
#   BENCH_LIMIT_MIB  --mqtt-max-queue-memory-mib of the second run (default 512; the default
#                    sizes take about 750 MiB without one)
#   BENCH_MAX_OFFLINE --mqtt-max-offline-sessions of a third run (default half the sessions:
#                    the others end as the later ones leave; the result line's offline= and
#                    evicted= say how many of each)
#   RETAIND          the retaind binary to measure (default: this tree's release build)
#   CARGO_TARGET_DIR where cargo builds (default target/)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=lib.sh
source bench/lib.sh

WORK=$(mktemp -d)
BROKER_PID=""
cleanup() {
    local status=$?
    stop_pid "$BROKER_PID"
    rm -rf "$WORK"
    exit "$status"
}
set_traps

SESSIONS=${BENCH_SESSIONS:-4000}
MESSAGES=${BENCH_MESSAGES:-5000}
LIMIT_MIB=${BENCH_LIMIT_MIB:-512}
MAX_OFFLINE=${BENCH_MAX_OFFLINE:-$((SESSIONS / 2))}
TARGET=${CARGO_TARGET_DIR:-target}
command -v mosquitto >/dev/null 2>&1 || install_debian mosquitto
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
log "building retaind and examples/offline_queues_bench (release)"
cargo build --release --quiet --example offline_queues_bench --bin retaind
RETAIND=${RETAIND:-$TARGET/release/retaind}
LOADGEN=$TARGET/release/examples/offline_queues_bench

start() { # BROKER [RETAIND FLAGS...]: on free ports; sets BROKER_PID, MQTT_PORT, HTTP_PORT
    local broker=$1
    shift
    MQTT_PORT=$(free_port)
    HTTP_PORT=$(free_port)
    while [ "$HTTP_PORT" = "$MQTT_PORT" ]; do HTTP_PORT=$(free_port); done
    if [ "$broker" = mosquitto ]; then
        cat >"$WORK/mosquitto.conf" <<EOF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 10000
log_dest stderr
log_type error
log_type warning
EOF
        "$MOSQUITTO" -c "$WORK/mosquitto.conf" >>"$WORK/mosquitto.log" 2>&1 &
    else
        rm -rf "$WORK/sqlite" && mkdir -p "$WORK/sqlite"
        "$RETAIND" --http-addr "127.0.0.1:$HTTP_PORT" --mqtt-addr "127.0.0.1:$MQTT_PORT" \
            --database-url "sqlite://$WORK/sqlite/retaind.db" "$@" >>"$WORK/retaind.log" 2>&1 &
    fi
    BROKER_PID=$!
    until_listening "$MQTT_PORT" "$broker"
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%Y-%m-%dT%H:%MZ); commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo -dirty)"
echo "retaind: $RETAIND; mosquitto: $({ "$MOSQUITTO" -h 2>&1 || true; } | sed -n 's/^mosquitto version \(.*\)/\1/p' | head -1)"
for run in "retaind-unlimited --mqtt-max-queue-memory-mib 0" \
    "retaind-limit-$LIMIT_MIB --mqtt-max-queue-memory-mib $LIMIT_MIB" \
    "retaind-sessions-$MAX_OFFLINE --mqtt-max-offline-sessions $MAX_OFFLINE" "mosquitto"; do
    read -r name flags <<<"$run"
    broker=retaind
    [ "$name" = mosquitto ] && broker=mosquitto
    # shellcheck disable=SC2086 # the flags are words
    start "$broker" $flags
    metrics=()
    [ "$broker" = retaind ] && metrics=(--metrics "http://127.0.0.1:$HTTP_PORT/metrics")
    line=$("$LOADGEN" --port "$MQTT_PORT" --pid "$BROKER_PID" --sessions "$SESSIONS" \
        --messages "$MESSAGES" "${metrics[@]}")
    echo "broker=$name $line"
    stop_pid "$BROKER_PID"
    BROKER_PID=""
done
