#!/usr/bin/env bash
# The benchmark: retaind's HTTP API against Postgres, and pgbench doing the equivalent SQL
# directly, at the same concurrency, on the same database, in the same run.
#
#   bench/run.sh
#
# Environment:
#   BENCH_CONNECTIONS  concurrent HTTP connections and pgbench clients (default 64)
#   BENCH_DURATION     seconds per measured scenario (default 20)
#   BENCH_WARMUP       seconds of unmeasured warm-up before each scenario (default 5)
#   PG_ADMIN_URL       a Postgres superuser URL (default: see scripts/postgres.sh)
#
# Steps: find or start Postgres, create a scratch database (dropped at exit), build and start
# retaind on a free port, preload 100,000 retained topics with 256-byte payloads, then measure,
# each after a CHECKPOINT and a warm-up:
#   publish   retaind: POST /topics/bench%2Ft%2F<n>?qos=1&retain=true     (bench/wrk/publish.lua)
#   upsert    pgbench: the same single-row INSERT .. ON CONFLICT           (bench/pgbench/upsert.sql)
#   get       retaind: GET /retainedMessage/bench%2Ft%2F<n>                (bench/wrk/get.lua),
#             after reading every topic once to warm the read cache         (bench/wrk/warm.lua)
#   select    pgbench: the same point SELECT                               (bench/pgbench/select.sql)
#   list      retaind: GET /retainedMessage, first page of 50              (bench/wrk/list.lua)
#   list      pgbench: the same page query                                 (bench/pgbench/list.sql)
#   get, read cache off: retaind restarted with --read-cache-mib 0          (bench/wrk/get.lua)
# The table goes to stdout and to bench/results/latest.md (git-ignored), raw outputs next to it.
# Exits 1 if any request or transaction failed; the table marks which.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

CONNECTIONS=${BENCH_CONNECTIONS:-64}
DURATION=${BENCH_DURATION:-20}
DURATION=${DURATION%s}
WARMUP=${BENCH_WARMUP:-5}
WARMUP=${WARMUP%s}
TOPICS=100000
for v in CONNECTIONS DURATION WARMUP; do
    [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ] || { echo "bench: $v must be a positive integer" >&2; exit 2; }
done
THREADS=2
[ "$CONNECTIONS" -lt "$THREADS" ] && THREADS=$CONNECTIONS

RESULTS="$ROOT/bench/results"
RAW="$RESULTS/raw"
mkdir -p "$RAW"
rm -f "$RAW"/*
WORK=$(mktemp -d /tmp/retaind-bench.XXXXXX)
DB_NAME="retaind_bench_$$"
RETAIND_PID=""
BG_PIDS=()

cleanup() {
    local status=$?
    set +e
    for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    stop_retaind
    tail -n 200 "$WORK/retaind.stderr" >"$RAW/retaind.stderr.tail" 2>/dev/null
    finish_cleanup "$status"
}
set_traps

# --- tools -------------------------------------------------------------------------------------
if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
fi
ensure_postgres
PGBENCH=$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | sort -V | tail -1)
[ -x "$PGBENCH" ] || { log "pgbench not found"; exit 1; }

log "building retaind (release)"
cargo build --release --bins --quiet

DB_URL=$(create_scratch_database "$DB_NAME")

# Both sides hold connections at once (retaind's pool is idle while pgbench runs).
MAX_CONN=$(psql_db -c 'show max_connections')
RETAIND_POOL=16 # retaind's --db-max-connections default; the benchmark runs retaind as shipped
if [ $((CONNECTIONS + RETAIND_POOL + 5)) -gt "$MAX_CONN" ]; then
    log "BENCH_CONNECTIONS=$CONNECTIONS needs ~$((CONNECTIONS + RETAIND_POOL + 5)) Postgres connections; max_connections is $MAX_CONN"
    exit 2
fi

# --- retaind -----------------------------------------------------------------------------------
stop_retaind() {
    [ -n "$RETAIND_PID" ] && kill -0 "$RETAIND_PID" 2>/dev/null || return 0
    stop_pid "$RETAIND_PID"
    RETAIND_PID=""
}

start_retaind() { # EXTRA FLAGS...
    log "starting retaind $*"
    # As shipped: default flags and log level (one access-log line per request), except that the
    # per-principal request rates (modelled on AWS's per-account quotas: 500 gets/s, 10 lists/s,
    # 2,000 publishes/s) are off, since measuring throughput is the point. MQTT takes a free port:
    # 1883 may belong to another broker. The log goes to the scratch directory; its last lines
    # are kept with the raw results.
    "$ROOT/target/release/retaind" --http-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0 \
        --rate-get-retained-message 0 --rate-list-retained-messages 0 --rate-publish 0 \
        --database-url "$DB_URL" "$@" \
        >"$WORK/retaind.out" 2>"$WORK/retaind.stderr" &
    RETAIND_PID=$!
    BASE=""
    for _ in $(seq 1 600); do
        line=$(grep -m1 '^retaind: HTTP API on http://' "$WORK/retaind.out" || true)
        if [ -n "$line" ]; then BASE=${line#retaind: HTTP API on }; break; fi
        kill -0 "$RETAIND_PID" 2>/dev/null || { log "retaind exited at start:"; cat "$WORK/retaind.stderr" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$BASE" ] || { log "retaind did not report its address within 60 s"; exit 1; }
    log "retaind at $BASE (pid $RETAIND_PID)"
}

start_retaind

# --- data --------------------------------------------------------------------------------------
# Straight into retaind's table (it has migrated by now): 100,000 topics, 256 distinct-looking
# bytes each, accessed "now" so that reads cause no retention bookkeeping.
log "preloading $TOPICS topics"
psql_db <<SQL
INSERT INTO retained_messages (topic, payload, qos, payload_format, last_modified_ms, last_accessed_ms)
SELECT 'bench/t/' || n, decode(repeat(md5(n::text), 16), 'hex'), 1, 0, t.now_ms, t.now_ms
FROM generate_series(0, $TOPICS - 1) AS n,
     (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8 AS now_ms) AS t;
VACUUM ANALYZE retained_messages;
SQL
check=$(psql_db -c "SELECT count(*) || ' ' || min(octet_length(payload)) || ' ' || max(octet_length(payload)) FROM retained_messages")
[ "$check" = "$TOPICS 256 256" ] || { log "preload check failed: $check"; exit 1; }

# --- measuring ---------------------------------------------------------------------------------
# top in the background during each measured run: average %CPU per command (100 = one core).
# "other" is every other process on the machine (top's own share included): on a shared host it
# shows how much of the machine the benchmark did not have.
sample_cpu() { # NAME [DELAY_SECONDS]
    command -v top >/dev/null 2>&1 || return 0
    local frames=$((DURATION / 2)) delay=${2:-0}
    [ "$frames" -ge 2 ] || return 0
    (sleep "$delay"; exec top -b -d 2 -n "$frames" -w 200 >"$RAW/top-$1.txt" 2>/dev/null) &
    BG_PIDS+=($!)
}

cpu_summary() { # NAME -> "retaind=.. postgres=.. wrk=.. pgbench=.. idle=.. iowait=.."
    [ -s "$RAW/top-$1.txt" ] || { echo ""; return; }
    awk '
        /^top - / { frame++; next }
        frame < 2 { next }   # the first frame averages since process start
        /^%Cpu/ {
            n = split($0, parts, ",")
            for (i = 1; i <= n; i++) {
                if (parts[i] ~ / id/) { split(parts[i], f, " "); idle += f[1] }
                if (parts[i] ~ / wa/) { split(parts[i], f, " "); wa += f[1] }
            }
            next
        }
        $1 ~ /^[0-9]+$/ && NF >= 12 { cpu[$12] += $9; all += $9 }
        END {
            k = frame - 1; if (k < 1) exit
            mine = cpu["retaind"] + cpu["postgres"] + cpu["wrk"] + cpu["pgbench"]
            printf "retaind=%.0f postgres=%.0f wrk=%.0f pgbench=%.0f other=%.0f idle=%.0f iowait=%.0f\n",
                cpu["retaind"] / k, cpu["postgres"] / k, cpu["wrk"] / k, cpu["pgbench"] / k,
                (all - mine) / k, idle / k, wa / k
        }' "$RAW/top-$1.txt"
}

wait_cpu() { for pid in "${BG_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done; BG_PIDS=(); }

checkpoint() { psql_db -c 'CHECKPOINT'; }

declare -A RPS P99 ERR CPU

# GET every preloaded topic once, in short wrk runs until all have been read (bench/wrk/warm.lua):
# the preload leaves the table in Postgres' buffer cache for pgbench's select, and this does the
# same for retaind's read cache, so that both sides are measured warm. Random gets alone would
# take minutes to reach every topic at the rate of cold reads.
warm_read_cache() {
    local round=0 rounds=$(( (TOPICS + THREADS - 1) / THREADS )) per_thread=$(( (CONNECTIONS + THREADS - 1) / THREADS )) answered runs=0
    log "warming the read cache: every topic once"
    while [ "$round" -lt "$rounds" ]; do
        BENCH_WRK_DIR="$ROOT/bench/wrk" wrk -t "$THREADS" -c "$CONNECTIONS" -d 2s \
            -s "$ROOT/bench/wrk/warm.lua" "$BASE/retainedMessage/bench%2Ft%2F0" -- "$round" "$THREADS" \
            >"$RAW/wrk-warm-cache.txt" 2>&1 || true
        answered=$(sed -n 's/^BENCH rounds_answered=\([0-9]*\).*/\1/p' "$RAW/wrk-warm-cache.txt")
        grep -q '^BENCH .*non2xx=0 bad_body=0 socket_errors=0' "$RAW/wrk-warm-cache.txt" && [ -n "$answered" ] ||
            { log "warming the read cache failed:"; cat "$RAW/wrk-warm-cache.txt" >&2; exit 1; }
        runs=$((runs + 1))
        [ "$runs" -le 1000 ] || { log "warming the read cache made no progress"; exit 1; }
        # Requests still in flight when a run ended may have been for earlier rounds: step back.
        [ "$answered" -gt "$per_thread" ] && round=$((round + answered - per_thread))
    done
    log "read cache warm after $runs runs"
}

run_wrk() { # NAME SCRIPT PATH
    local name=$1 script=$2 path=$3
    checkpoint
    log "$name: warm-up ${WARMUP}s"
    BENCH_WRK_DIR="$ROOT/bench/wrk" wrk -t "$THREADS" -c "$CONNECTIONS" -d "${WARMUP}s" \
        -s "$ROOT/bench/wrk/$script" "$BASE$path" >"$RAW/wrk-$name-warmup.txt" 2>&1 || true
    log "$name: ${DURATION}s at $CONNECTIONS connections"
    sample_cpu "$name"
    BENCH_WRK_DIR="$ROOT/bench/wrk" wrk -t "$THREADS" -c "$CONNECTIONS" -d "${DURATION}s" --latency \
        -s "$ROOT/bench/wrk/$script" "$BASE$path" >"$RAW/wrk-$name.txt" 2>&1 || true
    wait_cpu
    local line; line=$(grep '^BENCH requests=' "$RAW/wrk-$name.txt" || true)
    if [ -z "$line" ]; then
        log "$name: wrk produced no summary:"; cat "$RAW/wrk-$name.txt" >&2
        RPS[$name]=0; P99[$name]=0; ERR[$name]="wrk failed"; CPU[$name]=""
        return
    fi
    field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
    RPS[$name]=$(field rps)
    P99[$name]=$(field p99_us)
    local n2 bad sock; n2=$(field non2xx); bad=$(field bad_body); sock=$(field socket_errors)
    ERR[$name]=""
    [ "$n2" = 0 ] || ERR[$name]+="$n2 non-2xx; "
    [ "$bad" = 0 ] || ERR[$name]+="$bad bad bodies; "
    [ "$sock" = 0 ] || ERR[$name]+="$sock socket errors; "
    CPU[$name]=$(cpu_summary "$name")
    log "$name: $(field requests) requests, ${RPS[$name]} req/s, p99 $((P99[$name] / 1000)) ms ${ERR[$name]:+(ERRORS: ${ERR[$name]})}"
    grep '^BENCH first_error=' "$RAW/wrk-$name.txt" >&2 || true
}

# pgbench opens fresh connections, and a fresh backend's first statements (catalog loading,
# PREPARE) are slow, so a separate warm-up run would warm nothing. One run of WARMUP + DURATION
# seconds instead; rate and p99 come from its per-transaction log, counting only transactions
# that completed in the last DURATION seconds.
run_pgbench() { # NAME SCRIPT
    local name=$1 script=$2 now_ms
    now_ms=$(date +%s%3N)
    checkpoint
    log "$name: ${WARMUP}s warm-up + ${DURATION}s at $CONNECTIONS clients"
    sample_cpu "$name" "$WARMUP"
    local rc=0
    "$PGBENCH" -n -M prepared -c "$CONNECTIONS" -j "$THREADS" -T $((WARMUP + DURATION)) \
        -D "now_ms=$now_ms" -f "$ROOT/bench/pgbench/$script" \
        --log --log-prefix="$WORK/pgbench-$name" "$DB_URL" >"$RAW/pgbench-$name.txt" 2>&1 || rc=$?
    wait_cpu
    # Per-transaction log lines: client_id tx_no latency_us script_no epoch_s epoch_us, where the
    # epoch is the transaction's end; a failed transaction has "failed" instead of a latency.
    cat "$WORK/pgbench-$name".* 2>/dev/null | awk -v d="$DURATION" '
        $3 ~ /^[0-9]+$/ { n++; t[n] = $5 + $6 / 1e6; l[n] = $3; if (t[n] > end) end = t[n] }
        END { for (i = 1; i <= n; i++) if (t[i] > end - d) print l[i] }' | sort -n >"$WORK/lat-$name"
    rm -f "$WORK/pgbench-$name".*
    local count; count=$(wc -l <"$WORK/lat-$name")
    RPS[$name]=$(awk -v n="$count" -v d="$DURATION" 'BEGIN { printf "%.1f", n / d }')
    P99[$name]=$(awk '{ v[NR] = $1 } END { if (NR == 0) { print 0; exit } i = int(NR * 0.99); if (i < NR * 0.99) i++; print v[i] }' "$WORK/lat-$name")
    local failed; failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$RAW/pgbench-$name.txt")
    ERR[$name]=""
    [ "$rc" = 0 ] || ERR[$name]+="pgbench exited $rc; "
    [ "${failed:-0}" = 0 ] || ERR[$name]+="$failed failed transactions; "
    [ "$count" -gt 0 ] || ERR[$name]+="no transactions; "
    CPU[$name]=$(cpu_summary "$name")
    echo "BENCH window=${DURATION}s transactions=$count tps=${RPS[$name]} p99_us=${P99[$name]}" >>"$RAW/pgbench-$name.txt"
    log "$name: $count transactions in the last ${DURATION}s, ${RPS[$name]} tps, p99 $((P99[$name] / 1000)) ms ${ERR[$name]:+(ERRORS: ${ERR[$name]})}"
}

STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
run_wrk publish publish.lua /topics/bench%2Ft%2F0
run_pgbench upsert upsert.sql
warm_read_cache
run_wrk get get.lua /retainedMessage/bench%2Ft%2F0
run_pgbench select select.sql
run_wrk list list.lua /retainedMessage
run_pgbench list_sql list.sql
# The same gets with the read cache off: every one goes to Postgres (coalesced into batches).
stop_retaind
start_retaind --read-cache-mib 0
run_wrk get_nocache get.lua /retainedMessage/bench%2Ft%2F0

# --- report ------------------------------------------------------------------------------------
# Not bench/lib.sh's field and ratio: run_wrk's field reads wrk's BENCH line, and this ratio is a
# bare number.
ms() { awk -v us="$1" 'BEGIN { printf "%.1f ms", us / 1000 }'; }
rate() { awk -v r="$1" 'BEGIN { printf "%.0f", r }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
verdict() { # RATIO TARGET
    awk -v r="$1" -v t="$2" 'BEGIN { if (r + 0 >= t) printf "met (≥ %g×)", t; else printf "**missed** (< %g×)", t }'
}
cell() { # NAME -> "rate" or "rate ⚠ errors"
    local s; s=$(rate "${RPS[$1]}")
    [ -z "${ERR[$1]}" ] || s+=" ⚠ ${ERR[$1]%; }"
    echo "$s"
}

CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
RAM=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
PG_VERSION=$(psql_db -c 'show server_version')
PG_SETTINGS=$(psql_db -F ' ' -c "SELECT string_agg(name || '=' || setting || coalesce(unit, ''), ', ' ORDER BY name) FROM pg_settings WHERE name IN ('synchronous_commit', 'fsync', 'wal_sync_method', 'shared_buffers', 'max_connections')")
R_PUB=$(ratio "${RPS[publish]}" "${RPS[upsert]}")
R_GET=$(ratio "${RPS[get]}" "${RPS[select]}")
R_LIST=$(ratio "${RPS[list]}" "${RPS[list_sql]}")
FAILED=0
R_GET_NC=$(ratio "${RPS[get_nocache]}" "${RPS[select]}")
for k in publish upsert get select list list_sql get_nocache; do [ -z "${ERR[$k]}" ] || FAILED=1; done

{
    echo "## retaind vs pgbench, $CONNECTIONS connections, ${DURATION} s per scenario"
    echo
    echo "| scenario | retaind req/s | retaind p99 | pgbench tps | pgbench p99 | ratio | target |"
    echo "|---|---:|---:|---:|---:|---:|---|"
    echo "| retained publish (256 B, 100k topics) vs single-row upsert | $(cell publish) | $(ms "${P99[publish]}") | $(cell upsert) | $(ms "${P99[upsert]}") | ${R_PUB}× | $(verdict "$R_PUB" 2) |"
    echo "| get vs point select | $(cell get) | $(ms "${P99[get]}") | $(cell select) | $(ms "${P99[select]}") | ${R_GET}× | $(verdict "$R_GET" 2) |"
    echo "| get with the read cache off (\`--read-cache-mib 0\`) vs point select | $(cell get_nocache) | $(ms "${P99[get_nocache]}") | $(cell select) | $(ms "${P99[select]}") | ${R_GET_NC}× | none (for reference) |"
    echo "| list, first page (50) vs the same page query | $(cell list) | $(ms "${P99[list]}") | $(cell list_sql) | $(ms "${P99[list_sql]}") | ${R_LIST}× | none |"
    echo
    echo "ratio = retaind req/s ÷ pgbench tps. Both sides at $CONNECTIONS concurrent connections/clients, $THREADS load-generator threads, ${WARMUP} s warm-up, CHECKPOINT before each scenario, durable commits."
    if [ "$FAILED" = 1 ]; then
        echo
        echo "**⚠ This run had errors (marked above); its numbers are not valid. Raw output: bench/results/raw/.**"
    fi
    echo
    echo "CPU during each measured run, averaged over \`top\` samples every 2 s. Process columns: % of one core (the machine has $(nproc) cores = $(($(nproc) * 100))%); \"postgres\" is every Postgres process, including any other database's. idle and iowait: % of the whole machine."
    echo
    echo "| scenario | retaind | postgres (all backends) | wrk | pgbench | other processes | idle | iowait (% of machine) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for k in publish upsert get select list list_sql get_nocache; do
        c=${CPU[$k]}
        if [ -n "$c" ]; then
            g() { sed -n "s/.*$1=\([0-9]*\).*/\1/p" <<<"$c"; }
            echo "| $k | $(g retaind)% | $(g postgres)% | $(g wrk)% | $(g pgbench)% | $(g other)% | $(g idle)% | $(g iowait)% |"
        fi
    done
    echo
    echo "- Date: $STARTED"
    echo "- Machine: $(nproc) CPUs ($CPU_MODEL), $RAM RAM; load generator, retaind and Postgres share it"
    echo "- Postgres: $PG_VERSION ($PG_SETTINGS)"
    echo "- retaind: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown), release build, default flags (--db-max-connections $RETAIND_POOL)"
    echo "- Tools: $(wrk --version 2>&1 | head -1 | awk '{print $1, $2}'), $("$PGBENCH" --version)"
} >"$WORK/table.md"

cp "$WORK/table.md" "$RESULTS/latest.md"
echo
cat "$RESULTS/latest.md"
echo
log "written to bench/results/latest.md (raw outputs in bench/results/raw/)"
[ "$FAILED" = 0 ] || { log "some requests or transactions failed; see the table"; exit 1; }
