#!/usr/bin/env bash
# Issue 18, "a million retained messages", as one command: examples/million_bench.rs against
# retaind on Postgres, retaind on SQLite and Mosquitto (in memory), on the same machine, in one
# run, one broker after the other.
#
#   bench/million.sh
#   BENCH_CARGO_PROFILE=dev BENCH_MESSAGES=20000 BENCH_SUBSCRIBERS=4 bench/million.sh   # a quick try
#
# Environment:
#   BENCH_MESSAGES       the retained set, M (default 1000000; a multiple of 200)
#   BENCH_SUBSCRIBERS    `#` subscribers that subscribe at once in deliver-K (default 100)
#   BENCH_STORES         retaind's stores to measure, in order (default "postgres sqlite");
#                        Mosquitto is always measured, last (empty: Mosquitto only)
#   BENCH_ONE_CLIENT     messages stored by the one-client store (default 100000)
#   BENCH_IDLE_TIMEOUT   seconds without a new PUBACK (store) or a new retained message (a
#                        subscriber) after which the load generator gives up (default 30)
#   BENCH_RSS_LIMIT_MIB  a broker whose RSS passes this while delivering is killed and the step
#                        fails (default: 3/4 of the memory available at the start), so that a
#                        broker that queues the whole set for every subscriber (Mosquitto does:
#                        about 200 B per queued message, so 100 × 1M could take ~20 GB) cannot
#                        take the machine down with it
#   BENCH_CARGO_PROFILE  cargo profile of retaind and the load generator (default release)
#   PG_ADMIN_URL         a Postgres superuser URL (default: see scripts/postgres.sh)
#   CARGO_TARGET_DIR     where cargo builds (default target/)
#
# The set (examples/million_bench.rs has the layout): message n has the topic m/d<n/100>/s<n%100>
# and a 256-byte payload, every 10th with one MQTT 5 user property. It is built over MQTT by the
# 16-client store, so building it is itself a measurement, and every broker gets the same set the
# same way (no direct insert that only retaind could take).
#
# Steps, for each broker in turn (retaind-postgres, retaind-sqlite, mosquitto):
#   1. store-1    fresh broker; one MQTT 5 client stores BENCH_ONE_CLIENT messages (under one/)
#                 at QoS 1 with 100 in flight: what one device gets, bound by the round trip of
#                 its window (each PUBACK waits for a commit). CPU seconds of the broker and, on
#                 Postgres, of the database's server processes (its backends and the server's
#                 own background processes, from /proc), before and after: µs per message.
#   2. store-16   fresh broker again (new database, new file, new process); 16 clients store the
#                 set of M messages, 100 in flight each: the fleet's rate, and CPU per message.
#                 Mosquitto keeps messages in memory only, so its CPU per message is the floor a
#                 durable store is compared with.
#   3. RSS idle   5 s after the store: what holding M retained messages costs (VmRSS).
#   4. probe-idle one client publishes 100 retained QoS 1 messages/s for 10 s, one at a time:
#                 publish → PUBACK p99 with nothing else happening.
#   5. deliver-1  one new `#` subscriber receives the whole set while the probe runs: the delivery
#                 rate, the probe's p99 beside the idle one (other clients stalled?) and the peak
#                 RSS (sampled every 0.2 s: does the broker load the set into memory to send it?).
#                 Beside both p99s, how late the probe's own thread ran its ticks (p99): the wait
#                 for a core that the load generator pays on this machine whatever the broker does.
#   5b. deliver-1i  the same again with the load generator's subscriber on SCHED_IDLE threads
#                 (`--idle-subscribers`), as if it ran on another machine: on two shared cores
#                 the subscriber that reads the set takes a core of normal priority from the
#                 broker and the probe alike, which step 5 counts against the broker. Reported
#                 beside step 5, not instead of it.
#   6. deliver-K  BENCH_SUBSCRIBERS new `#` subscribers subscribe at once: does each receive the
#                 full set (none cut short), how long until the last has it, and the peak RSS.
#   7. list       retaind only: ListRetainedMessages page 1 against page P = M/200 (page size
#                 200, the whole set), and the same with topicFilter=m/+/s42 (1% of the set) and
#                 page size 2, whose page M/200 is its last: keyset pages answer as fast deep in
#                 the set as at its start.
#   8. restart    retaind only: SIGTERM, start again on the same database/file (same ports when
#                 free): time to CONNACK, to the first retained message and to /readyz 200, all
#                 from the moment the process was started; then RSS idle after the restart.
#   8b. wide      Postgres only: step 5 again on a retaind restarted with --db-scan-rows 2000,
#                 the pages it read before they were bounded to 256 rows (decision 020): the
#                 delivery rate where nothing else waits for the cores, against Mosquitto's step
#                 5, and the probe's p99 meanwhile. The default's pages trade that rate for
#                 others' latency on two shared cores; both figures come from the same run.
#   9. bare       Postgres only, with retaind stopped: pgbench stores as many new rows of 256 B
#                 into a table with only its primary key, 16 clients, 100 rows a transaction
#                 (bench/pgbench/bare_upsert.sql): Postgres' CPU per row for the least a durable
#                 upsert does, beside what it spent per message under retaind in step 2.
#
# Brokers, as shipped where it matters:
#   retaind    built binary, authentication off (no principals), default MQTT flags
#              (--mqtt-max-queued-messages, --mqtt-max-inflight: it streams the retained set, it
#              does not need a big queue); only --rate-list-retained-messages 0, since timing the
#              listing is the point (its default, 10 lists/s per principal, would throttle it).
#   Mosquitto  persistence false, allow_anonymous true, max_inflight_messages 0,
#              max_queued_messages 0 and max_queued_bytes 0 (unlimited: with its default of 1000
#              queued, a new subscriber would get only about the first 1000 retained messages),
#              set_tcp_nodelay true.
#
# The table goes to stdout and to bench/results/million.md (git-ignored), raw result lines and
# logs to bench/results/million-raw/. Exits 1 if any scenario failed: a subscriber cut short, a
# PUBACK lost or refused, a page walk that ended early, a broker that died.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$ROOT/bench/lib.sh"

MESSAGES=${BENCH_MESSAGES:-1000000}
SUBSCRIBERS=${BENCH_SUBSCRIBERS:-100}
STORES=${BENCH_STORES-postgres sqlite}
ONE_CLIENT=${BENCH_ONE_CLIENT:-100000}
IDLE_TIMEOUT=${BENCH_IDLE_TIMEOUT:-30}
RSS_LIMIT_MIB=${BENCH_RSS_LIMIT_MIB:-$(awk '/^MemAvailable:/ { printf "%d", $2 / 1024 * 3 / 4 }' /proc/meminfo)}
PROFILE=${BENCH_CARGO_PROFILE:-release}
for v in MESSAGES SUBSCRIBERS ONE_CLIENT IDLE_TIMEOUT RSS_LIMIT_MIB; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -lt 1 ]; then echo "bench: BENCH_$v must be a positive integer" >&2; exit 2; fi
done
[ $((MESSAGES % 200)) = 0 ] || { echo "bench: BENCH_MESSAGES must be a multiple of 200 (pages of 200)" >&2; exit 2; }
BROKERS=()
for s in $STORES; do
    case $s in
        postgres | sqlite) BROKERS+=("retaind-$s") ;;
        *) echo "bench: BENCH_STORES: unknown store $s (postgres, sqlite)" >&2; exit 2 ;;
    esac
done
BROKERS+=(mosquitto)
case $PROFILE in
    dev) PROFILE_DIR=debug ;;
    *) PROFILE_DIR=$PROFILE ;;
esac
PAGES=$((MESSAGES / 200))
STORE_CLIENTS=16
INFLIGHT=100
PROBE_RATE=100
WIDE_PAGES=2000 # step 8b

RESULTS="$ROOT/bench/results"
RAW="$RESULTS/million-raw"
mkdir -p "$RAW"
rm -f "$RAW"/*
WORK=$(mktemp -d /tmp/retaind-million-bench.XXXXXX)
DB_NAME="retaind_million_bench_$$"
DB_URL=""
BROKER_PID=""
SAMPLER_PID=""
MQTT_PORT=""
HTTP_PORT=""
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RETAIND="$TARGET_DIR/$PROFILE_DIR/retaind"
BENCH="$TARGET_DIR/$PROFILE_DIR/examples/million_bench"

cleanup() {
    local status=$?
    set +e
    stop_sampler
    stop_broker
    [ -z "${PG_ADMIN_URL:-}" ] || drop_database "${DB_NAME}_bare"
    local f
    for f in "$WORK"/*.log; do
        [ -e "$f" ] || continue
        tail -n 300 "$f" >"$RAW/$(basename "$f" .log).log.tail"
        warnings "$f" | head -n 500 >"$RAW/$(basename "$f" .log).warnings"
        [ -s "$RAW/$(basename "$f" .log).warnings" ] || rm -f "$RAW/$(basename "$f" .log).warnings"
    done
    finish_cleanup "$status"
}
set_traps

# --- tools -------------------------------------------------------------------------------------
command -v mosquitto >/dev/null 2>&1 || install_debian mosquitto
PGBENCH=$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | sort -V | tail -1)
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
ensure_postgres

log "building retaind and examples/million_bench ($PROFILE)"
cargo build --profile "$PROFILE" --quiet --example million_bench --bin retaind

# --- brokers -----------------------------------------------------------------------------------
port_free() { # PORT: whether a listener can bind it now (as retaind and Mosquitto do)
    python3 -c 'import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

fresh_store() { # BROKER: a new database (Postgres) or a new file (SQLite) for the next start
    case $1 in
        retaind-postgres) DB_URL=$(create_scratch_database "$DB_NAME") ;;
        retaind-sqlite)
            rm -rf "$WORK/sqlite"
            mkdir -p "$WORK/sqlite"
            DB_URL="sqlite://$WORK/sqlite/retaind.db"
            ;;
    esac
}

start_broker() { # BROKER [same-ports [RETAIND ARGS...]]: starts it on free ports (or the previous ones, when free)
    local broker=$1 ports=${2:-}
    shift $(($# < 2 ? $# : 2))
    if [ "$ports" != same-ports ] || ! port_free "$MQTT_PORT" || ! port_free "${HTTP_PORT:-0}"; then
        MQTT_PORT=$(free_port)
        HTTP_PORT=$(free_port)
        while [ "$HTTP_PORT" = "$MQTT_PORT" ]; do HTTP_PORT=$(free_port); done
    fi
    STARTED_MS=$(date +%s%3N)
    if [ "$broker" = mosquitto ]; then
        cat >"$WORK/mosquitto.conf" <<EOF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages 0
max_queued_messages 0
max_queued_bytes 0
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
EOF
        "$MOSQUITTO" -c "$WORK/mosquitto.conf" >>"$WORK/mosquitto.log" 2>&1 &
    else
        echo "--- start $(date -u +%T)" >>"$WORK/$broker.log"
        "$RETAIND" --http-addr "127.0.0.1:$HTTP_PORT" --mqtt-addr "127.0.0.1:$MQTT_PORT" \
            --rate-list-retained-messages 0 --database-url "$DB_URL" "$@" \
            >>"$WORK/$broker.log" 2>&1 &
    fi
    BROKER_PID=$!
    log "$broker started (pid $BROKER_PID, MQTT 127.0.0.1:$MQTT_PORT${HTTP_PORT:+, HTTP 127.0.0.1:$HTTP_PORT})"
}

wait_broker() { # BROKER: until its MQTT port takes connections
    for _ in $(seq 1 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$MQTT_PORT") 2>/dev/null && return 0
        kill -0 "$BROKER_PID" 2>/dev/null || { log "$1 exited at start:"; tail -n 20 "$WORK/$1.log" >&2; return 1; }
        sleep 0.1
    done
    log "$1 did not take connections within 60 s"
    return 1
}

stop_broker() {
    stop_pid "$BROKER_PID" 30
    BROKER_PID=""
}

# --- measuring ---------------------------------------------------------------------------------
declare -A LINE VAL FAILED CPU

# CPU ticks of Postgres's processes that serve this benchmark: the backends connected to the
# scratch database and the server's own background processes (checkpointer, WAL writer, ...).
# Other databases' backends on a shared server are left out.
pg_ticks() {
    local pids pid total=0
    pids=$(psql "$PG_ADMIN_URL" -X -Atq -c "SELECT pid FROM pg_stat_activity WHERE datname = '$DB_NAME' OR backend_type <> 'client backend'" 2>/dev/null || true)
    for pid in $pids; do total=$((total + $(cpu_ticks "$pid"))); done
    echo "$total"
}

warnings() { # LOG: the broker log's warnings and errors (retaind's WARN/ERROR lines, all of Mosquitto's)
    case $1 in
        *mosquitto*) grep -v '^--- start' "$1" || true ;;
        *) grep -E '^[^ ]+ +(WARN|ERROR) ' "$1" || true ;;
    esac
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
mib() { awk -v k="$1" 'BEGIN { if (k != "") printf "%.1f", k / 1024 }'; }

start_sampler() { # PID FILE: the peak VmRSS of PID, in kB, kept in FILE every 0.2 s; past
    # RSS_LIMIT_MIB the process is killed and FILE.killed written
    local pid=$1 file=$2 limit_kb=$((RSS_LIMIT_MIB * 1024))
    rss_kb "$pid" >"$file"
    rm -f "$file.killed"
    (
        peak=0
        while kill -0 "$pid" 2>/dev/null; do
            rss=$(rss_kb "$pid")
            if [ "${rss:-0}" -gt "$peak" ]; then peak=$rss; echo "$peak" >"$file"; fi
            if [ "$peak" -gt "$limit_kb" ]; then
                kill -KILL "$pid" 2>/dev/null
                echo "$peak" >"$file.killed"
                break
            fi
            sleep 0.2
        done
    ) &
    SAMPLER_PID=$!
}
stop_sampler() {
    [ -n "$SAMPLER_PID" ] || return 0
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
}

# One million_bench run: its line in LINE[BROKER/STEP]; the CPU ticks the broker and Postgres
# used meanwhile in STEP_BROKER_TICKS and STEP_PG_TICKS; CPU[BROKER/STEP] the broker's, Postgres's
# and the load generator's CPU, every other process's and the machine's idle time, in % of one
# core.
run_step() { # BROKER STEP SUBCOMMAND ARGS...
    local broker=$1 step=$2 rc=0 b0 b1 p0=0 p1=0 i0 t0 i1 t1 g0 g1
    shift 2
    log "$step on $broker: $*"
    b0=$(cpu_ticks "$BROKER_PID")
    [ "$broker" != retaind-postgres ] || p0=$(pg_ticks)
    read -r i0 t0 < <(idle_ticks)
    children_cpu_s g0
    "$BENCH" "$@" >"$RAW/$broker-$step.out" 2>"$RAW/$broker-$step.err" || rc=$?
    b1=$(cpu_ticks "$BROKER_PID")
    [ "$broker" != retaind-postgres ] || p1=$(pg_ticks)
    read -r i1 t1 < <(idle_ticks)
    children_cpu_s g1
    STEP_BROKER_TICKS=$((b1 - b0))
    STEP_PG_TICKS=$((p1 - p0))
    CPU[$broker/$step]=$(awk -v b="$STEP_BROKER_TICKS" -v p="$STEP_PG_TICKS" -v g0="$g0" -v g1="$g1" \
        -v i="$((i1 - i0))" -v t="$((t1 - t0))" -v n="$(nproc)" -v hz="$HZ" -v pg="$broker" 'BEGIN {
            w = t / n / hz; if (w <= 0) exit
            bc = b / hz / w * 100; pc = p / hz / w * 100; gc = (g1 - g0) / w * 100; ic = i / t * n * 100
            oc = n * 100 - bc - pc - gc - ic
            printf "%.0f%% | %s | %.0f%% | %.0f%% | %.0f%% | %.1f s", bc,
                pg == "retaind-postgres" ? sprintf("%.0f%%", pc) : "—", gc, oc < 0 ? 0 : oc, ic, w }')
    LINE[$broker/$step]=$(grep '^scenario=' "$RAW/$broker-$step.out" | tail -n 1 || true)
    FAILED[$broker/$step]=""
    [ "$rc" = 0 ] || FAILED[$broker/$step]="exit $rc"
    [ -n "${LINE[$broker/$step]}" ] || FAILED[$broker/$step]="no result"
    log "$broker $step: ${LINE[$broker/$step]:-(none)}${FAILED[$broker/$step]:+ FAILED: ${FAILED[$broker/$step]}}"
    [ -z "${FAILED[$broker/$step]}" ] || tail -n 5 "$RAW/$broker-$step.err" >&2
}

us_per_msg() { # TICKS MESSAGES
    awk -v t="$1" -v n="$2" -v hz="$HZ" 'BEGIN { if (n > 0) printf "%.1f", t / hz / n * 1e6 }'
}

store_step() { # BROKER STEP CLIENTS MESSAGES PREFIX: a store, with CPU per message
    local broker=$1 step=$2 clients=$3 messages=$4 prefix=$5
    run_step "$broker" "$step" store --port "$MQTT_PORT" --clients "$clients" --inflight "$INFLIGHT" \
        --messages "$messages" --prefix "$prefix" --idle-timeout "$IDLE_TIMEOUT"
    VAL[$broker/${step}_per_s]=$(field "$broker/$step" per_s)
    # With a full window all the time, each publish waits window ÷ rate for its PUBACK.
    VAL[$broker/${step}_rtt_ms]=$(awk -v r="${VAL[$broker/${step}_per_s]}" -v w="$INFLIGHT" 'BEGIN { if (r + 0 > 0) printf "%.2f", w / r * 1000 }')
    VAL[$broker/${step}_cpu_broker]=$(us_per_msg "$STEP_BROKER_TICKS" "$messages")
    if [ "$broker" = retaind-postgres ]; then
        VAL[$broker/${step}_cpu_pg]=$(us_per_msg "$STEP_PG_TICKS" "$messages")
    fi
    VAL[$broker/${step}_cpu_total]=$(us_per_msg $((STEP_BROKER_TICKS + STEP_PG_TICKS)) "$messages")
}

deliver_step() { # BROKER STEP SUBSCRIBERS [EXTRA ARGS...]: a delivery, with the peak RSS
    local broker=$1 step=$2 subscribers=$3
    shift 3
    start_sampler "$BROKER_PID" "$WORK/rss-peak"
    run_step "$broker" "$step" deliver --port "$MQTT_PORT" --subscribers "$subscribers" --filter '#' \
        --expect "$MESSAGES" --idle-timeout "$IDLE_TIMEOUT" "$@"
    stop_sampler
    VAL[$broker/${step}_rss_peak]=$(mib "$(cat "$WORK/rss-peak")")
    if [ -e "$WORK/rss-peak.killed" ]; then
        log "$broker killed: its RSS passed BENCH_RSS_LIMIT_MIB ($RSS_LIMIT_MIB MiB) during $step"
        FAILED[$broker/$step]="killed at ${VAL[$broker/${step}_rss_peak]} MiB RSS (BENCH_RSS_LIMIT_MIB $RSS_LIMIT_MIB)"
    fi
    local k
    for k in complete cut_short all_s per_s first_ms first_max_ms slowest_s fastest_s probe_p99_ms probe_late_p99_ms; do
        VAL[$broker/${step}_$k]=$(field "$broker/$step" "$k")
    done
}

list_step() { # BROKER STEP ARGS...
    local broker=$1 step=$2 k
    shift 2
    run_step "$broker" "$step" list --url "http://127.0.0.1:$HTTP_PORT" --pages "$PAGES" "$@"
    for k in page1_p50_ms page1_p99_ms pageP_p50_ms pageP_p99_ms ratio_p50 ratio_p99 items_page1 items_pageP pages; do
        VAL[$broker/${step}_$k]=$(field "$broker/$step" "$k")
    done
}

# CPU ticks of the whole Postgres server, its exited backends included: a backend's time goes
# to the postmaster's children's times when it exits (pgbench's backends are gone by the time
# it returns, so pg_ticks would miss them). Counts every database's backends: the bare upsert
# runs with nothing else connected.
pg_server_ticks() {
    local dir pm total pid
    dir=$(psql "$PG_ADMIN_URL" -X -Atq -c "SHOW data_directory")
    pm=$(head -n 1 "$dir/postmaster.pid")
    total=$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pm/stat")
    for pid in $(ps --ppid "$pm" -o pid=); do total=$((total + $(cpu_ticks "$pid"))); done
    echo "$total"
}

# Postgres alone, with no broker running: what the least durable upsert of as many new rows of
# 256 B costs it (bench/pgbench/bare_upsert.sql: 16 clients, 100 rows a transaction, a table
# with only its primary key), in CPU per row, counted as for the store. The floor that
# retaind's Postgres CPU per stored message is compared with.
bare_upsert_step() {
    local db="${DB_NAME}_bare" url per_client rows p0 p1 rc=0
    per_client=$(((MESSAGES / 100 + STORE_CLIENTS - 1) / STORE_CLIENTS))
    rows=$((per_client * STORE_CLIENTS * 100))
    url=$(create_scratch_database "$db")
    psql "$url" -X -v ON_ERROR_STOP=1 -q -c "CREATE TABLE bare_upsert (topic text PRIMARY KEY, payload bytea NOT NULL)" \
        -c "CREATE SEQUENCE bare_upsert_block" -c "CHECKPOINT"
    log "bare upsert on Postgres: $STORE_CLIENTS clients × $per_client transactions of 100 rows"
    p0=$(pg_server_ticks)
    "$PGBENCH" -n -M prepared -c "$STORE_CLIENTS" -j 2 -t "$per_client" -f "$ROOT/bench/pgbench/bare_upsert.sql" \
        "$url" >"$RAW/postgres-bare-upsert.txt" 2>&1 || rc=$?
    sleep 1 # until its backends have exited and been counted
    p1=$(pg_server_ticks)
    drop_database "$db"
    if [ "$rc" != 0 ]; then
        FAILED[retaind-postgres/bare-upsert]="pgbench exited $rc"
        return 0
    fi
    VAL[retaind-postgres/bare_upsert_us]=$(us_per_msg $((p1 - p0)) "$rows")
    VAL[retaind-postgres/pg_vs_bare]=$(awk -v a="${VAL[retaind-postgres/store-16_cpu_pg]:-}" -v b="${VAL[retaind-postgres/bare_upsert_us]}" \
        'BEGIN { if (a != "" && b + 0 > 0) printf "%.2f", a / b }')
    log "bare upsert: ${VAL[retaind-postgres/bare_upsert_us]} µs of Postgres CPU per row"
}

broker_alive() { # BROKER STEP
    kill -0 "$BROKER_PID" 2>/dev/null && return 0
    log "$1 died during $2"
    FAILED[$1/died]="died during $2"
    return 1
}

measure() { # BROKER: steps 1 to 8
    local broker=$1
    # 1. One client, on a fresh broker.
    fresh_store "$broker"
    start_broker "$broker"
    wait_broker "$broker" || { FAILED[$broker/start]="did not start"; return 0; }
    VAL[$broker/rss_empty]=$(mib "$(rss_kb "$BROKER_PID")")
    store_step "$broker" store-1 1 "$ONE_CLIENT" one
    broker_alive "$broker" store-1 || return 0
    stop_broker

    # 2. The set, from 16 clients, on a fresh broker.
    fresh_store "$broker"
    start_broker "$broker"
    wait_broker "$broker" || { FAILED[$broker/start]="did not start"; return 0; }
    store_step "$broker" store-16 "$STORE_CLIENTS" "$MESSAGES" m
    broker_alive "$broker" store-16 || return 0

    # 3. Idle with the set.
    sleep 5
    VAL[$broker/rss_idle]=$(mib "$(rss_kb "$BROKER_PID")")
    # Postgres vacuums a table a million rows just entered in the background, for seconds,
    # and writes its dirty pages at the next checkpoint: do both now, so that the idle probe
    # and the delivery after it run on a quiet database, as in bench/run.sh.
    if [ "$broker" = retaind-postgres ]; then
        psql_db -c "VACUUM (ANALYZE) retained_messages" -c "CHECKPOINT" >/dev/null
    fi

    # 4. Publish latency, idle.
    run_step "$broker" probe-idle probe --port "$MQTT_PORT" --rate "$PROBE_RATE" --seconds 10
    VAL[$broker/probe_idle_p99_ms]=$(field "$broker/probe-idle" probe_p99_ms)
    VAL[$broker/probe_idle_late_p99_ms]=$(field "$broker/probe-idle" probe_late_p99_ms)
    broker_alive "$broker" probe-idle || return 0

    # 5. One `#` subscriber, with the probe running.
    deliver_step "$broker" deliver-1 1 --probe-rate "$PROBE_RATE"
    VAL[$broker/probe_ratio]=$(awk -v a="${VAL[$broker/deliver-1_probe_p99_ms]}" -v b="${VAL[$broker/probe_idle_p99_ms]}" \
        'BEGIN { if (a != "" && b + 0 > 0) printf "%.2f", a / b }')
    broker_alive "$broker" deliver-1 || return 0

    # 5b. The same, the subscriber taking only CPU no one else wants.
    deliver_step "$broker" deliver-1i 1 --probe-rate "$PROBE_RATE" --idle-subscribers
    VAL[$broker/probe_ratio_i]=$(awk -v a="${VAL[$broker/deliver-1i_probe_p99_ms]}" -v b="${VAL[$broker/probe_idle_p99_ms]}" \
        'BEGIN { if (a != "" && b + 0 > 0) printf "%.2f", a / b }')
    broker_alive "$broker" deliver-1i || return 0

    # 6. K `#` subscribers at once.
    deliver_step "$broker" deliver-k "$SUBSCRIBERS"
    broker_alive "$broker" deliver-k || return 0
    [ "$broker" != mosquitto ] || { stop_broker; return 0; }

    # 7. Listing, deep into the set.
    list_step "$broker" list --page-size 200
    list_step "$broker" list-filtered --filter 'm/+/s42' --page-size 2
    broker_alive "$broker" list || return 0

    # 8. Restart with the set stored.
    stop_broker
    start_broker "$broker" same-ports
    run_step "$broker" ready ready --port "$MQTT_PORT" --topic m/d0/s0 --since-epoch-ms "$STARTED_MS" \
        --readyz-url "http://127.0.0.1:$HTTP_PORT/readyz"
    local k
    for k in connack_ms retained_ms readyz_ms; do VAL[$broker/ready_$k]=$(field "$broker/ready" "$k"); done
    sleep 5
    broker_alive "$broker" restart || return 0
    VAL[$broker/rss_restart]=$(mib "$(rss_kb "$BROKER_PID")")

    # 8b. Postgres: step 5 again with the pages of a quiet machine.
    if [ "$broker" = retaind-postgres ]; then
        stop_broker
        start_broker "$broker" same-ports --db-scan-rows "$WIDE_PAGES"
        wait_broker "$broker" || { FAILED[$broker/restart-wide]="did not start"; return 0; }
        deliver_step "$broker" deliver-1w 1 --probe-rate "$PROBE_RATE"
        VAL[$broker/probe_ratio_w]=$(awk -v a="${VAL[$broker/deliver-1w_probe_p99_ms]}" -v b="${VAL[$broker/probe_idle_p99_ms]}" \
            'BEGIN { if (a != "" && b + 0 > 0) printf "%.2f", a / b }')
        broker_alive "$broker" deliver-1w || return 0
    fi
    stop_broker
}

STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
for broker in "${BROKERS[@]}"; do
    measure "$broker"
    stop_broker
    if [ "$broker" = retaind-postgres ]; then
        drop_database "$DB_NAME"
        bare_upsert_step
    fi
    rm -rf "$WORK/sqlite"
done

# --- report ------------------------------------------------------------------------------------
# One row per metric: retaind on each store, Mosquitto, and retaind ÷ Mosquitto per store.
value() { # BROKER KEY: VAL[BROKER/KEY], empty when unknown or NaN
    local v=${VAL[$1/$2]:-}
    case $v in nan | NaN) v="" ;; esac
    echo "$v"
}
row() { # LABEL KEY DECIMALS TARGET [retaind-only | no-ratio]
    local pg sq mq
    pg=$(fmt "$(value retaind-postgres "$2")" "$3")
    sq=$(fmt "$(value retaind-sqlite "$2")" "$3")
    mq=$(fmt "$(value mosquitto "$2")" "$3")
    if [ "${5:-}" = retaind-only ]; then
        echo "| $1 | $pg | $sq | — | | | $4 |"
    elif [ "${5:-}" = no-ratio ]; then
        echo "| $1 | $pg | $sq | $mq | | | $4 |"
    else
        echo "| $1 | $pg | $sq | $mq | $(ratio "$(value retaind-postgres "$2")" "$(value mosquitto "$2")") | $(ratio "$(value retaind-sqlite "$2")" "$(value mosquitto "$2")") | $4 |"
    fi
}

ANY_FAILED=0
for k in "${!FAILED[@]}"; do [ -z "${FAILED[$k]}" ] || ANY_FAILED=1; done
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
RAM=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
PG_VERSION=$(psql "$PG_ADMIN_URL" -X -Atq -c 'show server_version')
PG_SETTINGS=$(psql "$PG_ADMIN_URL" -X -Atq -F ' ' -c "SELECT string_agg(name || '=' || current_setting(name), ', ' ORDER BY name) FROM pg_settings WHERE name IN ('synchronous_commit', 'fsync', 'shared_buffers')")
MOSQUITTO_VERSION=$({ "$MOSQUITTO" -h 2>&1 || true; } | sed -n 's/^mosquitto version \(.*\)/\1/p' | head -1)
K=$SUBSCRIBERS
# Step 8b has no Mosquitto counterpart: its rate is set beside Mosquitto's one delivery (step 5).
VAL[mosquitto/deliver-1w_per_s]=${VAL[mosquitto/deliver-1_per_s]:-}

{
    echo "## A million retained messages: retaind vs Mosquitto, M = $MESSAGES retained messages of 256 B"
    echo
    echo "| metric | retaind (Postgres) | retaind (SQLite) | Mosquitto | Postgres ÷ Mosquitto | SQLite ÷ Mosquitto | target (issue 18) |"
    echo "|---|---:|---:|---:|---:|---:|---|"
    row "store, 1 client, $INFLIGHT in flight ($ONE_CLIENT msgs), msg/s" store-1_per_s 0 "report"
    row "… window ÷ rate: each publish's wait for its PUBACK (ms)" store-1_rtt_ms 2 ""
    row "… broker CPU, µs/msg" store-1_cpu_broker 1 ""
    row "… Postgres CPU, µs/msg" store-1_cpu_pg 1 ""
    row "… total CPU, µs/msg" store-1_cpu_total 1 ""
    row "store, $STORE_CLIENTS clients × $INFLIGHT in flight (the set), msg/s" store-16_per_s 0 "≥ 0.8×"
    row "… broker CPU, µs/msg" store-16_cpu_broker 1 ""
    row "… Postgres CPU, µs/msg" store-16_cpu_pg 1 ""
    row "… total CPU, µs/msg" store-16_cpu_total 1 "≤ 1× (Mosquitto's)"
    row "… Postgres alone, bare upsert of as many rows: CPU µs/row" bare_upsert_us 1 "" retaind-only
    row "… retaind's Postgres CPU ÷ the bare upsert's" pg_vs_bare 2 "report (≤ 1.25 proposed)" retaind-only
    row "RSS empty, at start (MiB)" rss_empty 1 ""
    row "RSS idle with the set (MiB)" rss_idle 1 "≤ 0.1×"
    row "publish p99 idle, $PROBE_RATE/s (ms)" probe_idle_p99_ms 2 ""
    row "… the probe's own thread: tick lateness p99 (ms)" probe_idle_late_p99_ms 2 "" no-ratio
    row "1 \`#\` subscriber: delivered/s" deliver-1_per_s 0 "≥ 1.5×"
    row "… time to deliver all (s)" deliver-1_all_s 2 ""
    row "… first retained message (ms)" deliver-1_first_ms 1 ""
    row "… publish p99 meanwhile (ms)" deliver-1_probe_p99_ms 2 ""
    row "… publish p99 meanwhile ÷ idle" probe_ratio 2 "≤ 2 (each its own)" no-ratio
    row "… the probe's own thread meanwhile: tick lateness p99 (ms)" deliver-1_probe_late_p99_ms 2 "" no-ratio
    row "… peak RSS (MiB)" deliver-1_rss_peak 1 ""
    row "1 \`#\` subscriber on idle threads (as if elsewhere): delivered/s" deliver-1i_per_s 0 ""
    row "… publish p99 meanwhile (ms)" deliver-1i_probe_p99_ms 2 ""
    row "… publish p99 meanwhile ÷ idle" probe_ratio_i 2 "" no-ratio
    row "… the probe's own thread meanwhile: tick lateness p99 (ms)" deliver-1i_probe_late_p99_ms 2 "" no-ratio
    row "1 \`#\` subscriber, Postgres pages of up to $WIDE_PAGES rows (step 8b; Mosquitto: step 5): delivered/s" deliver-1w_per_s 0 "report (≥ 1.5× proposed)"
    row "… publish p99 meanwhile (ms)" deliver-1w_probe_p99_ms 2 "" retaind-only
    row "… publish p99 meanwhile ÷ idle" probe_ratio_w 2 "" retaind-only
    row "$K \`#\` subscribers at once: complete" deliver-k_complete 0 "all $K" no-ratio
    row "… cut short" deliver-k_cut_short 0 "0" no-ratio
    row "… time until the last has all (s)" deliver-k_all_s 2 ""
    row "… delivered/s, all together" deliver-k_per_s 0 ""
    row "… slowest subscriber, SUBSCRIBE → all (s)" deliver-k_slowest_s 2 ""
    row "… fastest subscriber (s)" deliver-k_fastest_s 2 ""
    row "… first retained message, median (ms)" deliver-k_first_ms 1 ""
    row "… first retained message, longest wait (ms)" deliver-k_first_max_ms 1 ""
    row "… peak RSS (MiB)" deliver-k_rss_peak 1 "≤ 0.25×"
    row "list, 200/page: page 1 p50 (ms)" list_page1_p50_ms 2 "" retaind-only
    row "… page $PAGES p50 (ms)" list_pageP_p50_ms 2 "" retaind-only
    row "… page $PAGES ÷ page 1, p50" list_ratio_p50 2 "≤ 1.2" retaind-only
    row "… page $PAGES ÷ page 1, p99" list_ratio_p99 2 "≤ 1.2" retaind-only
    row "list m/+/s42, 2/page: page 1 p50 (ms)" list-filtered_page1_p50_ms 2 "" retaind-only
    row "… page $PAGES (the last) p50 (ms)" list-filtered_pageP_p50_ms 2 "" retaind-only
    row "… page $PAGES ÷ page 1, p50" list-filtered_ratio_p50 2 "≤ 1.2" retaind-only
    row "… page $PAGES ÷ page 1, p99" list-filtered_ratio_p99 2 "≤ 1.2" retaind-only
    row "restart with the set: CONNACK (ms)" ready_connack_ms 0 "seconds" retaind-only
    row "… first retained message (ms)" ready_retained_ms 0 "seconds" retaind-only
    row "… /readyz 200 (ms)" ready_readyz_ms 0 "seconds" retaind-only
    row "… RSS idle after the restart (MiB)" rss_restart 1 "" retaind-only
    echo
    echo "Stores: QoS 1 with the retain flag, every PUBACK awaited (retaind's PUBACK follows the commit; Mosquitto keeps them in memory). CPU per message is the broker's CPU time (and, on Postgres, its server processes' for this database and its background processes) over the whole store, from /proc, divided by the messages stored. RSS is VmRSS; peaks are sampled every 0.2 s. Publish p99: one client publishing $PROBE_RATE retained QoS 1 messages/s, one at a time, publish → PUBACK. Times of the restart count from the moment the process was started. For RSS, times and CPU, below 1× means retaind uses less."
    fails=""
    for k in "${!FAILED[@]}"; do [ -z "${FAILED[$k]}" ] || fails+="- $k: **${FAILED[$k]}**"$'\n'; done
    if [ -n "$fails" ]; then
        echo
        echo "**⚠ This run had failures; those numbers are not valid. Raw output: bench/results/million-raw/.**"
        echo
        printf '%s' "$fails" | sort
    fi
    logged=""
    for b in "${BROKERS[@]}"; do
        n=0
        [ ! -e "$WORK/$b.log" ] || n=$(warnings "$WORK/$b.log" | wc -l)
        [ "$n" = 0 ] || logged+="- $b logged $n warnings or errors (bench/results/million-raw/$b.warnings)"$'\n'
    done
    if [ -n "$logged" ]; then
        echo
        printf '%s' "$logged"
    fi
    echo
    echo "CPU during each step, in % of one core (the machine has $(nproc) cores = $(($(nproc) * 100))%): the broker, Postgres (this database's backends and the server's background processes), the load generator, every other process (high values there mean the run did not have the machine to itself), and what was idle. A load generator near 100% per core it can use, or an idle near 0%, means the numbers are bound by the machine rather than the broker."
    echo
    echo "| broker | step | broker CPU | Postgres | load generator | others | idle | wall |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    for b in "${BROKERS[@]}"; do
        for s in store-1 store-16 probe-idle deliver-1 deliver-1i deliver-k list list-filtered ready deliver-1w; do
            [ -z "${CPU[$b/$s]:-}" ] || echo "| $b | $s | ${CPU[$b/$s]} |"
        done
    done
    echo
    echo "- Date: $STARTED"
    echo "- Machine: $(nproc) CPUs ($CPU_MODEL), $RAM RAM; load generator, brokers and Postgres share it"
    echo "- retaind: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown), $PROFILE build, authentication off, default flags but --rate-list-retained-messages 0"
    echo "- Postgres: $PG_VERSION ($PG_SETTINGS); SQLite: a new file in a temporary directory"
    echo "- Mosquitto: ${MOSQUITTO_VERSION:-unknown}, persistence false, allow_anonymous true, max_inflight_messages 0, max_queued_messages 0, max_queued_bytes 0, set_tcp_nodelay true"
    echo "- Load generator: examples/million_bench.rs (rumqttc; MQTT 5 storing clients, MQTT 3.1.1 subscribers and probe; reqwest for the listing)"
} >"$WORK/table.md"

cp "$WORK/table.md" "$RESULTS/million.md"
for k in "${!LINE[@]}"; do echo "$k ${LINE[$k]}"; done | sort >"$RAW/lines.txt"
echo
cat "$RESULTS/million.md"
echo
log "written to bench/results/million.md (raw outputs in bench/results/million-raw/)"
[ "$ANY_FAILED" = 0 ] || { log "some scenarios failed; see the table"; exit 1; }
