# Sourced by scripts/test.sh and bench/run.sh: makes sure a Postgres server answers and exports
# PG_ADMIN_URL (a superuser URL). Order of preference:
#   1. $PG_ADMIN_URL if it is set and answers;
#   2. a server already on 127.0.0.1:5432 (user postgres, trust auth);
#   3. an installed Debian cluster, started with pg_ctlcluster;
#   4. a scratch cluster made with initdb in a temporary directory on a free port
#      (Postgres installed from Debian's packages first if it is missing).
# A scratch cluster is stopped and removed by stop_scratch_postgres (call it from an EXIT trap).

pg_answers() { psql "$1" -Atqc 'select 1' >/dev/null 2>&1; }

ensure_postgres() {
    if [ -n "${PG_ADMIN_URL:-}" ] && pg_answers "$PG_ADMIN_URL"; then return; fi
    local local_url="postgres://postgres@127.0.0.1:5432/postgres"
    if ! command -v psql >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
        echo "postgres: not installed; installing Debian's postgresql" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    if pg_answers "$local_url"; then export PG_ADMIN_URL="$local_url"; return; fi
    if command -v pg_ctlcluster >/dev/null 2>&1 && [ -n "$(ls /etc/postgresql 2>/dev/null)" ]; then
        echo "postgres: starting the installed cluster" >&2
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start >/dev/null 2>&1 || true
        for _ in $(seq 1 30); do pg_answers "$local_url" && { export PG_ADMIN_URL="$local_url"; return; }; sleep 0.5; done
    fi
    local bin; bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    SCRATCH_PG_DIR=$(mktemp -d /tmp/retaind-pg.XXXXXX)
    local port; port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    echo "postgres: starting a scratch cluster on port $port in $SCRATCH_PG_DIR" >&2
    chown postgres "$SCRATCH_PG_DIR" 2>/dev/null || true
    # Postgres refuses to run as root.
    local as=(); [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
    "${as[@]}" "$bin/initdb" -D "$SCRATCH_PG_DIR/data" -U postgres -A trust >/dev/null
    "${as[@]}" "$bin/pg_ctl" -D "$SCRATCH_PG_DIR/data" -o "-p $port -k $SCRATCH_PG_DIR -c listen_addresses=127.0.0.1" -l "$SCRATCH_PG_DIR/log" -w start >/dev/null
    SCRATCH_PG_CTL=("${as[@]}" "$bin/pg_ctl" -D "$SCRATCH_PG_DIR/data")
    export PG_ADMIN_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

stop_scratch_postgres() {
    if [ -n "${SCRATCH_PG_DIR:-}" ]; then
        "${SCRATCH_PG_CTL[@]}" -m fast stop >/dev/null 2>&1 || true
        rm -rf "$SCRATCH_PG_DIR"
    fi
}

# Creates an empty database and prints its URL.
create_scratch_database() {
    local name="$1"
    psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $name" >/dev/null
    psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $name" >/dev/null
    echo "${PG_ADMIN_URL%/*}/$name"
}

drop_database() {
    psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null 2>&1 || true
}
