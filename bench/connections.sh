#!/usr/bin/env bash
# Memory per connected device: examples/connections_bench.rs connects BENCH_CONNECTIONS clients
# to retaind (release build, SQLite default store) and to Mosquitto on the same machine, in one
# run. Each client subscribes at QoS 1 to a topic of its own and receives the retained message
# stored there (256 B), as a device takes its configuration, then all stay connected and idle;
# the broker's resident memory (VmRSS) is read before, while they are connected and after they
# have left. Over TLS both brokers serve a certificate for localhost made by the script
# (openssl, P-256).
#
#   bench/connections.sh
#
# Environment:
#   BENCH_CONNECTIONS  clients (default 10000; each broker and the load generator need as many
#                      open files: the script raises its soft limit to the hard one)
#   BENCH_TRANSPORTS   tcp, tls, ws, space-separated (default "tcp tls ws"); Mosquitto over
#                      WebSocket needs a build with websockets (Debian's has them)
#   BENCH_PERSISTENT   1: persistent sessions (clean session 0), left offline at the end
#   RETAIND            the retaind binary to measure (default: this tree's release build), e.g.
#                      an earlier commit's, to compare in the same run
#   CARGO_TARGET_DIR   where cargo builds (default target/)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=lib.sh
source bench/lib.sh

WORK=$(mktemp -d)
DB_NAME=""
BROKER_PID=""
cleanup() {
    local status=$?
    stop_pid "$BROKER_PID"
    rm -rf "$WORK"
    exit "$status"
}
set_traps
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

CONNECTIONS=${BENCH_CONNECTIONS:-10000}
TARGET=${CARGO_TARGET_DIR:-target}
command -v mosquitto >/dev/null 2>&1 || install_debian mosquitto
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
log "building retaind and examples/connections_bench (release)"
cargo build --release --quiet --example connections_bench --bin retaind
RETAIND=${RETAIND:-$TARGET/release/retaind}
LOADGEN=$TARGET/release/examples/connections_bench
persistent=()
[ "${BENCH_PERSISTENT:-0}" = 1 ] && persistent=(--persistent)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
# Mosquitto started as root reads its files as the user mosquitto (a throwaway key).
chmod a+rx "$WORK" && chmod a+r "$WORK/key.pem" "$WORK/cert.pem"

start() { # BROKER: on free ports; sets BROKER_PID, MQTT_PORT, TLS_PORT, WS_PORT
    MQTT_PORT=$(free_port)
    TLS_PORT=$(free_port)
    WS_PORT=$(free_port)
    while [ "$TLS_PORT" = "$MQTT_PORT" ]; do TLS_PORT=$(free_port); done
    while [ "$WS_PORT" = "$MQTT_PORT" ] || [ "$WS_PORT" = "$TLS_PORT" ]; do WS_PORT=$(free_port); done
    if [ "$1" = mosquitto ]; then
        cat >"$WORK/mosquitto.conf" <<EOF
listener $MQTT_PORT 127.0.0.1
listener $TLS_PORT 127.0.0.1
certfile $WORK/cert.pem
keyfile $WORK/key.pem
listener $WS_PORT 127.0.0.1
protocol websockets
allow_anonymous true
persistence false
max_connections -1
log_dest stderr
log_type error
log_type warning
EOF
        "$MOSQUITTO" -c "$WORK/mosquitto.conf" >>"$WORK/mosquitto.log" 2>&1 &
    else
        rm -rf "$WORK/sqlite" && mkdir -p "$WORK/sqlite"
        "$RETAIND" --http-addr "127.0.0.1:$WS_PORT" --mqtt-addr "127.0.0.1:$MQTT_PORT" \
            --mqtts-addr "127.0.0.1:$TLS_PORT" --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" \
            --mqtt-max-connections $((CONNECTIONS + 100)) --rate-list-retained-messages 0 \
            --database-url "sqlite://$WORK/sqlite/retaind.db" >>"$WORK/retaind.log" 2>&1 &
    fi
    BROKER_PID=$!
    until_listening "$MQTT_PORT" "$1"
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%Y-%m-%dT%H:%MZ); commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo -dirty)"
echo "retaind: $RETAIND; mosquitto: $({ "$MOSQUITTO" -h 2>&1 || true; } | sed -n 's/^mosquitto version \(.*\)/\1/p' | head -1)"
for transport in ${BENCH_TRANSPORTS:-tcp tls ws}; do
    for broker in retaind mosquitto; do
        start "$broker"
        case $transport in
            tls) port=$TLS_PORT ;;
            ws) port=$WS_PORT ;;
            *) port=$MQTT_PORT ;;
        esac
        line=$("$LOADGEN" --port "$port" --transport "$transport" --ca "$WORK/cert.pem" \
            --pid "$BROKER_PID" --connections "$CONNECTIONS" "${persistent[@]}")
        echo "broker=$broker $line"
        stop_pid "$BROKER_PID"
        BROKER_PID=""
    done
done
