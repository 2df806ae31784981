#!/usr/bin/env bash
# The whole test suite. Works on a fresh machine: finds or starts Postgres, creates a scratch
# database for this run, installs Mosquitto's clients, nats-server, HAProxy and PgBouncer where
# missing, builds retaind, runs the Rust tests (unit, store contract, HTTP and MQTT integration, clusters),
# the boto3 compatibility tests in a Python venv it creates, and the web console's tests in
# headless chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/postgres.sh

db="retaind_test_$$"
cleanup() {
    drop_database "$db"
    stop_scratch_postgres
}
trap cleanup EXIT

ensure_postgres
export RETAIND_TEST_DATABASE_URL; RETAIND_TEST_DATABASE_URL=$(create_scratch_database "$db")
echo "test database: $RETAIND_TEST_DATABASE_URL"

# The MQTT client tests drive retaind with Mosquitto's command-line clients; the cluster
# tests start nats-server processes of their own, the PROXY protocol tests an HAProxy, the
# pooler tests a PgBouncer.
missing=()
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian's ${missing[*]}" >&2
    apt=(env DEBIAN_FRONTEND=noninteractive apt-get)
    [ "$(id -u)" = 0 ] || ! command -v sudo >/dev/null 2>&1 || apt=(sudo "${apt[@]}")
    "${apt[@]}" install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
        { "${apt[@]}" update -qq && "${apt[@]}" install -y -qq "${missing[@]}" >/dev/null; }
fi

target_dir=${CARGO_TARGET_DIR:-$PWD/target}
venv=$target_dir/test-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt

cargo build --locked --bins
# The tests spend most of their time waiting (heartbeats, timeouts, other processes, the
# database): at one test per core (2 on CI's machine) it was 80% idle through them. At least
# four run at once within each test binary; the binaries still run one after another.
cores=$(nproc)
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-$((cores > 4 ? cores : 4))}
cargo test --locked --all-targets

export RETAIND_BIN="$target_dir/debug/retaind"
"$venv/bin/python" -m pytest tests/python -q -p no:cacheprovider -n 2

# The web console in a real browser: Debian's chromium, headless, driven by playwright-core
# (version locked in tests/browser/package-lock.json).
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian's ${missing[*]}" >&2
    apt=(env DEBIAN_FRONTEND=noninteractive apt-get)
    [ "$(id -u)" = 0 ] || ! command -v sudo >/dev/null 2>&1 || apt=(sudo "${apt[@]}")
    "${apt[@]}" install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
        { "${apt[@]}" update -qq && "${apt[@]}" install -y -qq "${missing[@]}" >/dev/null; }
fi
npm ci --prefix tests/browser --silent --no-audit --no-fund
# The test files name themselves (a directory argument means different things across Node versions).
node --test tests/browser/*.test.mjs
