# Shell functions the benchmark scripts share (bench/run.sh, bench/mqtt.sh, bench/cluster.sh):
# logging, stopping a process, installing a Debian package, the traps and the common end of the
# exit cleanup (scratch database, scratch Postgres, work directory), psql on the scratch database,
# a free port, CPU accounting from /proc, and reading the `scenario=` result lines of
# examples/mqtt_bench and examples/nats_bench. Sourcing it also sources scripts/postgres.sh.
#
# Not a script of its own: source it from the repository root with ROOT set. The functions read
# the sourcing script's WORK, DB_NAME, DB_URL and LINE when they are called.

# shellcheck source=../scripts/postgres.sh
source "$ROOT/scripts/postgres.sh"

log() { echo "bench: $*" >&2; }

stop_pid() { # PID [SECONDS]: SIGTERM, then SIGKILL after SECONDS (default 10)
    local pid=$1 tenths=$((${2:-10} * 10))
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid"
    for _ in $(seq 1 "$tenths"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

install_debian() { # PACKAGE: apt-get install, through sudo when not root and sudo is there
    log "installing $1"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get)
    [ "$(id -u)" = 0 ] || ! command -v sudo >/dev/null 2>&1 || apt=(sudo "${apt[@]}")
    "${apt[@]}" install -y -qq "$1" >/dev/null 2>&1 ||
        { "${apt[@]}" update -qq && "${apt[@]}" install -y -qq "$1" >/dev/null; }
}

set_traps() { # the script's `cleanup` runs at exit; INT and TERM exit with status 130
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

finish_cleanup() { # STATUS: the end of each script's cleanup: drops the scratch database (on a
    # server of PG_ADMIN_URL; a scratch Postgres goes as a whole), stops a scratch Postgres,
    # removes WORK, and exits with STATUS
    [ -n "${PG_ADMIN_URL:-}" ] && drop_database "$DB_NAME"
    stop_scratch_postgres
    rm -rf "$WORK"
    exit "$1"
}

psql_db() { psql "$DB_URL" -X -v ON_ERROR_STOP=1 -Atq "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
until_listening() { # PORT NAME: waits up to 30 s for a listener on 127.0.0.1:PORT; if none,
    # prints the logs in $WORK and fails
    for _ in $(seq 1 300); do
        python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' \
            "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    log "$2 did not start; its log:"
    cat "$WORK"/*.log >&2
    return 1
}

# --- CPU ---------------------------------------------------------------------------------------
# CPU ticks a process has used, and the machine's idle and total ticks, from /proc; finished
# children's CPU seconds (the load generator's) from the shell's own `times`.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
idle_ticks() { awk '/^cpu / { print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
HZ=$(getconf CLK_TCK)
children_cpu_s() { # into the variable named $1; `times` must run in this shell, not a subshell
    times >"$WORK/times"
    printf -v "$1" '%s' "$(awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, p, /[ms]/); t += p[1] * 60 + p[2] } print t }' "$WORK/times")"
}

# --- result lines --------------------------------------------------------------------------------
field() { # KEY NAME: the NAME= field of the result line LINE[KEY]
    sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"${LINE[$1]:-}"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b + 0 > 0) printf "%.2f×", a / b; else print "n/a" }'; }
fmt() { # VALUE DECIMALS
    [ -n "$1" ] || { echo "—"; return; }
    awk -v v="$1" -v d="$2" 'BEGIN { printf "%.*f", d, v }'
}
