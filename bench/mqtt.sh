#!/usr/bin/env bash
# The MQTT benchmark: examples/mqtt_bench.rs against retaind (release build, on a scratch Postgres
# database) and against Mosquitto (persistence off) on the same machine, in the same run, each
# scenario on one broker right after the other.
#
#   bench/mqtt.sh
#
# Environment:
#   BENCH_DURATION   measured seconds of each fan-out scenario (default 20)
#   BENCH_WARMUP     unmeasured seconds of publishing before each fan-out scenario (default 5)
#   BENCH_MESSAGES   retained messages stored, then delivered to a new subscriber (default 50000)
#   BENCH_OUTSTANDING  messages a fan-out publisher may have ahead of its slowest subscriber
#                    (default 250; 0 = no limit, which overflows the subscribers' queues on this
#                    machine: Mosquitto then drops QoS 1 messages and retaind disconnects)
#   BENCH_RATE       messages/s per fan-out publisher (default 0: as fast as flow control allows)
#   BENCH_FLEET      clients storing the retained messages at once in retained-fleet (default 16)
#   BENCH_WINDOW     QoS 1 publishes in flight from the one client of retained-window (default
#                    1000, at most 65535)
#   BENCH_SCENARIOS  the scenarios to run, space-separated (default: all five below)
#   BENCH_PG_SSLMODE retaind's sslmode to Postgres (default disable; require: TLS, to measure
#                    what it costs; Debian's Postgres offers TLS on 127.0.0.1 too)
#   PG_ADMIN_URL     a Postgres superuser URL (default: see scripts/postgres.sh)
#   CARGO_TARGET_DIR where cargo builds (default target/)
#
# Scenarios (examples/mqtt_bench.rs has the details):
#   fanout-qos0  4 publishers × 4 subscribers to PREFIX/#, 256 B payloads, QoS 0: deliveries/s,
#                p50/p99 latency (publish call → receipt)
#   fanout-qos1  the same at QoS 1; publishers wait for PUBACKs (100 in flight each)
#                In both, a publisher waits while BENCH_OUTSTANDING of its messages have not
#                reached every subscriber, so the rate is what the broker delivers end to end.
#   retained     store BENCH_MESSAGES retained messages at QoS 1 from one client (100 in
#                flight), every PUBACK awaited (store/s), then time a new subscriber to PREFIX/#
#                until it has them all
#   retained-fleet  the same with the messages stored by BENCH_FLEET clients at once
#   retained-window the retained scenario from one client with BENCH_WINDOW (default 1000)
#                publishes in flight: what one client that keeps more in flight (an MQTT 5
#                client may keep up to retaind's Receive Maximum, 1024) can store
#
# Both brokers get limits that do not hold them back (defaults in brackets):
#   in flight to a subscriber   retaind 256 (its default); Mosquitto unlimited
#                               (max_inflight_messages 0 [20]). Mosquitto 2.0.11 with a limit
#                               stalls: QoS 1 messages queued behind a full window are acked to
#                               the publisher but never sent once publishers pause (seen with 256:
#                               exactly the paused publishers' outstanding messages never arrived).
#                               The publishers' --max-outstanding keeps the window small anyway.
#   queued per session          100,000 msgs retaind --mqtt-max-queued-messages (default 10000);
#                               64 MiB       --mqtt-max-queued-bytes (16 MiB); Mosquitto
#                                            max_queued_messages (1000), max_queued_bytes (0 =
#                                            none). With Mosquitto's 1000, a subscriber gets only
#                                            the first ~1000 of 50,000 retained messages.
#   Nagle off                                retaind always; Mosquitto set_tcp_nodelay true
# Mosquitto keeps retained messages in memory only (persistence false); retaind commits each to
# Postgres before its PUBACK (durable, synchronous_commit as the server has it).
#
# The table goes to stdout and to bench/results/mqtt.md (git-ignored), raw outputs to
# bench/results/mqtt-raw/. Exits 1 if a run failed (lost QoS 1 messages, a dropped connection).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

DURATION=${BENCH_DURATION:-20}
DURATION=${DURATION%s}
WARMUP=${BENCH_WARMUP:-5}
WARMUP=${WARMUP%s}
MESSAGES=${BENCH_MESSAGES:-50000}
RATE=${BENCH_RATE:-0}
OUTSTANDING=${BENCH_OUTSTANDING:-250}
FLEET=${BENCH_FLEET:-16}
WINDOW=${BENCH_WINDOW:-1000}
for v in DURATION WARMUP MESSAGES WINDOW; do
    [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ] || { echo "bench: $v must be a positive integer" >&2; exit 2; }
done
for v in RATE OUTSTANDING; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "bench: BENCH_$v must be a non-negative integer" >&2; exit 2; }
done
QUEUED_MESSAGES=100000
QUEUED_BYTES=$((64 << 20))
INFLIGHT=256

RESULTS="$ROOT/bench/results"
RAW="$RESULTS/mqtt-raw"
mkdir -p "$RAW"
rm -f "$RAW"/*
WORK=$(mktemp -d /tmp/retaind-mqtt-bench.XXXXXX)
DB_NAME="retaind_mqtt_bench_$$"
RETAIND_PID=""
MOSQUITTO_PID=""
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RETAIND="$TARGET_DIR/release/retaind"
BENCH="$TARGET_DIR/release/examples/mqtt_bench"

cleanup() {
    local status=$?
    set +e
    stop_pid "$RETAIND_PID"
    stop_pid "$MOSQUITTO_PID"
    tail -n 200 "$WORK/retaind.stderr" >"$RAW/retaind.stderr.tail" 2>/dev/null
    cp "$WORK/mosquitto.log" "$RAW/mosquitto.log" 2>/dev/null
    finish_cleanup "$status"
}
set_traps

# --- tools -------------------------------------------------------------------------------------
command -v mosquitto >/dev/null 2>&1 || install_debian mosquitto
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
ensure_postgres

log "building retaind and examples/mqtt_bench (release)"
cargo build --release --quiet --example mqtt_bench --bin retaind

DB_URL="$(create_scratch_database "$DB_NAME")?sslmode=${BENCH_PG_SSLMODE:-disable}"

# --- brokers -----------------------------------------------------------------------------------
log "starting retaind on Postgres"
"$RETAIND" --http-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0 \
    --database-url "$DB_URL" --mqtt-max-queued-messages "$QUEUED_MESSAGES" \
    --mqtt-max-queued-bytes "$QUEUED_BYTES" --mqtt-max-inflight "$INFLIGHT" \
    >"$WORK/retaind.out" 2>"$WORK/retaind.stderr" &
RETAIND_PID=$!
RETAIND_PORT=""
for _ in $(seq 1 600); do
    line=$(grep -m1 '^retaind: MQTT on mqtt://' "$WORK/retaind.out" || true)
    if [ -n "$line" ]; then RETAIND_PORT=${line##*:}; break; fi
    kill -0 "$RETAIND_PID" 2>/dev/null || { log "retaind exited at start:"; cat "$WORK/retaind.stderr" >&2; exit 1; }
    sleep 0.1
done
[ -n "$RETAIND_PORT" ] || { log "retaind did not report its MQTT address within 60 s"; exit 1; }
log "retaind MQTT on 127.0.0.1:$RETAIND_PORT (pid $RETAIND_PID)"

MOSQUITTO_PORT=$(free_port)
cat >"$WORK/mosquitto.conf" <<EOF
listener $MOSQUITTO_PORT 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages 0
max_queued_messages $QUEUED_MESSAGES
max_queued_bytes $QUEUED_BYTES
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
EOF
cp "$WORK/mosquitto.conf" "$RAW/mosquitto.conf"
log "starting mosquitto on 127.0.0.1:$MOSQUITTO_PORT"
"$MOSQUITTO" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
MOSQUITTO_PID=$!
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$MOSQUITTO_PORT") 2>/dev/null && break
    kill -0 "$MOSQUITTO_PID" 2>/dev/null || { log "mosquitto exited at start:"; cat "$WORK/mosquitto.log" >&2; exit 1; }
    sleep 0.1
done

# --- measuring ---------------------------------------------------------------------------------
# CPU ticks of the broker and of the machine, and the load generator's CPU seconds, with
# bench/lib.sh's cpu_ticks, idle_ticks and children_cpu_s.

declare -A LINE CPU IDLE GEN FAILED

run_bench() { # BROKER PORT PID SCENARIO
    local broker=$1 port=$2 pid=$3 scenario=$4 key="$1/$4" rc=0
    # retained-fleet: the retained scenario with the messages stored by FLEET clients at once.
    local bench_scenario=$scenario extra=()
    if [ "$scenario" = retained-fleet ]; then
        bench_scenario=retained extra=(--store-publishers "$FLEET")
    elif [ "$scenario" = retained-window ]; then
        bench_scenario=retained extra=(--inflight "$WINDOW")
    fi
    checkpoint_db
    log "$scenario on $broker"
    local c0 i0 t0 g0 c1 i1 t1 g1
    c0=$(cpu_ticks "$pid"); read -r i0 t0 < <(idle_ticks); children_cpu_s g0
    "$BENCH" --host 127.0.0.1 --port "$port" --scenario "$bench_scenario" "${extra[@]}" --duration "$DURATION" \
        --warmup "$WARMUP" --messages "$MESSAGES" --payload-bytes 256 \
        --publishers 4 --subscribers 4 --rate "$RATE" --max-outstanding "$OUTSTANDING" \
        >"$RAW/$broker-$scenario.out" 2>"$RAW/$broker-$scenario.err" || rc=$?
    c1=$(cpu_ticks "$pid"); read -r i1 t1 < <(idle_ticks); children_cpu_s g1
    LINE[$key]=$(grep "^scenario=$bench_scenario " "$RAW/$broker-$scenario.out" || true)
    FAILED[$key]=""
    [ "$rc" = 0 ] || FAILED[$key]="exit $rc"
    [ -n "${LINE[$key]}" ] || FAILED[$key]="no result"
    # Broker CPU in % of one core, machine idle in % of all cores, over the whole invocation.
    local wall; wall=$(awk -v a="$t0" -v b="$t1" -v n="$(nproc)" -v hz="$HZ" 'BEGIN { print (b - a) / n / hz }')
    CPU[$key]=$(awk -v a="$c0" -v b="$c1" -v w="$wall" -v hz="$HZ" 'BEGIN { if (w > 0) printf "%.0f", (b - a) / hz / w * 100; else print "?" }')
    GEN[$key]=$(awk -v a="$g0" -v b="$g1" -v w="$wall" 'BEGIN { if (w > 0) printf "%.0f", (b - a) / w * 100; else print "?" }')
    IDLE[$key]=$(awk -v a="$i0" -v b="$i1" -v ta="$t0" -v tb="$t1" 'BEGIN { if (tb > ta) printf "%.0f", (b - a) / (tb - ta) * 100; else print "?" }')
    log "$broker $scenario: ${LINE[$key]:-(none)} ${FAILED[$key]:+FAILED: ${FAILED[$key]}}"
    [ -z "${FAILED[$key]}" ] || tail -n 5 "$RAW/$broker-$scenario.err" >&2
}

# Each retained scenario deletes its topics when done; vacuuming first means no scenario pays
# for the dead rows of the one before (Mosquitto has nothing like them).
checkpoint_db() { psql_db -c 'VACUUM retained_messages' -c 'CHECKPOINT' >/dev/null; }

STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
read -r -a SCENARIOS <<<"${BENCH_SCENARIOS:-fanout-qos0 fanout-qos1 retained retained-fleet retained-window}"
for scenario in "${SCENARIOS[@]}"; do
    run_bench mosquitto "$MOSQUITTO_PORT" "$MOSQUITTO_PID" "$scenario"
    run_bench retaind "$RETAIND_PORT" "$RETAIND_PID" "$scenario"
done
kill -0 "$RETAIND_PID" 2>/dev/null || { log "retaind died during the run"; FAILED[retaind/end]="retaind died"; }
kill -0 "$MOSQUITTO_PID" 2>/dev/null || { log "mosquitto died during the run"; FAILED[mosquitto/end]="mosquitto died"; }

# --- report ------------------------------------------------------------------------------------
# field, ratio and fmt: bench/lib.sh.
row() { # SCENARIO LABEL FIELD DECIMALS (nothing for a scenario not run: BENCH_SCENARIOS)
    local r m
    [[ " ${SCENARIOS[*]} " == *" $1 "* ]] || return 0
    r=$(field "retaind/$1" "$3"); m=$(field "mosquitto/$1" "$3")
    echo "| $1 | $2 | $(fmt "$r" "$4") | $(fmt "$m" "$4") | $(ratio "$r" "$m") |"
}
notes() { # SCENARIO -> "lost=.. errors=.." for both, when not clean
    local out="" b
    for b in retaind mosquitto; do
        local k="$b/$1" lost errors
        lost=$(field "$k" lost); errors=$(field "$k" errors)
        [ -z "${FAILED[$k]}" ] || out+="$b: **${FAILED[$k]}**; "
        [ "${lost:-0}" = 0 ] || out+="$b lost $lost deliveries; "
        [ "${errors:-0}" = 0 ] || out+="$b: $errors connection errors; "
    done
    echo "${out%; }"
}

ANY_FAILED=0
for k in "${!FAILED[@]}"; do [ -z "${FAILED[$k]}" ] || ANY_FAILED=1; done
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
RAM=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
PG_VERSION=$(psql_db -c 'show server_version')
PG_SETTINGS=$(psql_db -F ' ' -c "SELECT string_agg(name || '=' || setting || coalesce(unit, ''), ', ' ORDER BY name) FROM pg_settings WHERE name IN ('synchronous_commit', 'fsync', 'shared_buffers')")
MOSQUITTO_VERSION=$({ "$MOSQUITTO" -h 2>&1 || true; } | sed -n 's/^mosquitto version \(.*\)/\1/p' | head -1)

{
    echo "## MQTT: retaind vs Mosquitto, 4 publishers × 4 subscribers, 256 B payloads"
    echo
    echo "| scenario | metric | retaind (Postgres, sslmode=${BENCH_PG_SSLMODE:-disable}) | Mosquitto (in memory) | retaind ÷ Mosquitto |"
    echo "|---|---|---:|---:|---:|"
    for s in fanout-qos0 fanout-qos1; do
        row "$s" "deliveries/s" deliveries_per_s 0
        row "$s" "p50 latency (ms)" p50_ms 2
        row "$s" "p99 latency (ms)" p99_ms 2
        if [ "$s" = fanout-qos1 ]; then what="acked"; else what="sent"; fi
        row "$s" "publishes/s ($what)" published_per_s 0
    done
    row retained "stored/s (QoS 1, acked, 1 client)" store_per_s 0
    row retained "delivered/s to a new subscriber" deliver_per_s 0
    row retained "time to deliver all (s)" deliver_total_s 3
    row retained-fleet "stored/s (QoS 1, acked, $FLEET clients)" store_per_s 0
    row retained-fleet "time to deliver all (s)" deliver_total_s 3
    row retained-window "stored/s (QoS 1, acked, 1 client, $WINDOW in flight)" store_per_s 0
    row retained "first retained message (ms)" first_ms 1
    echo
    pace="each publisher keeps at most $OUTSTANDING messages not yet received by every subscriber"
    [ "$OUTSTANDING" != 0 ] || pace="publishers are not held back by their subscribers, so latency includes the broker's queueing"
    [ "$RATE" = 0 ] || pace+=", and sends at most $RATE messages/s"
    echo "Fan-out: ${WARMUP} s warm-up, then ${DURATION} s measured; every message goes to all 4 subscribers (\`PREFIX/#\`), so deliveries/s is up to 4× publishes/s. Latency is from the publish call to receipt, in one process with one clock; $pace. Retained: ${MESSAGES} messages. For latencies and times, below 1× means retaind is faster."
    for s in "${SCENARIOS[@]}"; do
        n=$(notes "$s")
        [ -z "$n" ] || echo "- $s: $n"
    done
    if [ "$ANY_FAILED" = 1 ]; then
        echo
        echo "**⚠ This run had failures (marked above); those numbers are not valid. Raw output: bench/results/mqtt-raw/.**"
    fi
    echo
    echo "CPU over each run (connecting and draining included), in % of one core; the machine has $(nproc) cores = $(($(nproc) * 100))%. \"others\" is every other process (Postgres too, and whatever else runs on a shared host): high values there mean the brokers did not have the machine to themselves."
    echo
    echo "| scenario | broker | broker CPU | load generator | others | idle |"
    echo "|---|---|---:|---:|---:|---:|"
    for s in "${SCENARIOS[@]}"; do
        for b in retaind mosquitto; do
            k="$b/$s"
            others=$(awk -v n="$(nproc)" -v i="${IDLE[$k]:-0}" -v c="${CPU[$k]:-0}" -v g="${GEN[$k]:-0}" 'BEGIN { o = (100 - i) * n - c - g; printf "%.0f", o < 0 ? 0 : o }')
            echo "| $s | $b | ${CPU[$k]:-?}% | ${GEN[$k]:-?}% | ${others}% | $(awk -v i="${IDLE[$k]:-0}" -v n="$(nproc)" 'BEGIN { printf "%.0f", i * n }')% |"
        done
    done
    echo
    echo "- Date: $STARTED"
    echo "- Machine: $(nproc) CPUs ($CPU_MODEL), $RAM RAM; load generator, brokers and Postgres share it"
    echo "- retaind: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown), release build, Postgres store, --mqtt-max-inflight $INFLIGHT --mqtt-max-queued-messages $QUEUED_MESSAGES --mqtt-max-queued-bytes $QUEUED_BYTES"
    echo "- Postgres: $PG_VERSION ($PG_SETTINGS)"
    echo "- Mosquitto: ${MOSQUITTO_VERSION:-unknown}, $(grep -v -e '^listener' -e '^log_' "$WORK/mosquitto.conf" | paste -sd ',' | sed 's/,/, /g')"
    echo "- Load generator: examples/mqtt_bench.rs (rumqttc, MQTT 3.1.1 over TCP), QoS 1 publishers with 100 in flight ($WINDOW in retained-window), --max-outstanding $OUTSTANDING --rate $RATE"
} >"$WORK/table.md"

cp "$WORK/table.md" "$RESULTS/mqtt.md"
echo
cat "$RESULTS/mqtt.md"
echo
log "written to bench/results/mqtt.md (raw outputs in bench/results/mqtt-raw/)"
[ "$ANY_FAILED" = 0 ] || { log "some runs failed; see the table"; exit 1; }
