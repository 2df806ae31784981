#!/usr/bin/env bash
# Checks that a running two-node service (`docker compose up --build`, or any two nodes with
# docs/examples/auth.toml) is one MQTT service: both nodes ready, an MQTT publish on node 1
# reaches a subscriber on node 2, an HTTP publish on node 1 reaches it too, and node 2 serves
# the retained message. Needs curl and mosquitto_pub/mosquitto_sub (Debian: mosquitto-clients).
#
#   docker compose up --build -d && scripts/compose-smoke.sh
#
# Environment (defaults are docker-compose.yml's and docs/examples/auth.toml's):
#   RETAIND_HTTP_PORT, RETAIND_HTTP_PORT_2   8080, 8081
#   RETAIND_MQTT_PORT, RETAIND_MQTT_PORT_2   1883, 1884
#   SMOKE_TOKEN                              change-me-ops-token
#   SMOKE_MQTT_USER, SMOKE_MQTT_PASSWORD     ops, change-me-ops
set -euo pipefail

HTTP1=${RETAIND_HTTP_PORT:-8080}
HTTP2=${RETAIND_HTTP_PORT_2:-8081}
MQTT1=${RETAIND_MQTT_PORT:-1883}
MQTT2=${RETAIND_MQTT_PORT_2:-1884}
TOKEN=${SMOKE_TOKEN:-change-me-ops-token}
MQ=(-u "${SMOKE_MQTT_USER:-ops}" -P "${SMOKE_MQTT_PASSWORD:-change-me-ops}")
TOPIC="smoke/$$"
FAILED=0

check() {
    if [ "$1" = "$2" ]; then
        echo "ok:   $3"
    else
        echo "FAIL: $3 (expected ${2@Q}, got ${1@Q})"
        FAILED=1
    fi
}

for port in "$HTTP1" "$HTTP2"; do
    code=000
    for _ in $(seq 120); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" || true)
        [ "$code" = 200 ] && break
        sleep 0.5
    done
    check "$code" 200 "node on :$port is ready"
done

out=$(mktemp)
trap 'rm -f "$out"' EXIT
mosquitto_sub -h 127.0.0.1 -p "$MQTT2" "${MQ[@]}" -i "smoke-sub-$$" -t "$TOPIC/#" -v -C 2 -W 30 \
    > "$out" &
sub=$!
# The subscription reaches node 1 within milliseconds of its SUBACK (decision 014).
sleep 1
mosquitto_pub -h 127.0.0.1 -p "$MQTT1" "${MQ[@]}" -i "smoke-pub-$$" -q 1 -t "$TOPIC/mqtt" \
    -m from-mqtt
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $TOKEN" \
    --data-binary from-http "http://127.0.0.1:$HTTP1/topics/${TOPIC//\//%2F}%2Fhttp?retain=true")
check "$code" 200 "HTTP publish (retained) on node 1"
wait "$sub" || true
check "$(sort "$out" | tr '\n' ' ')" "$TOPIC/http from-http $TOPIC/mqtt from-mqtt " \
    "node 2's subscriber got the MQTT and HTTP publishes of node 1"

body=$(curl -s -H "Authorization: Bearer $TOKEN" \
    "http://127.0.0.1:$HTTP2/retainedMessage/${TOPIC//\//%2F}%2Fhttp")
payload=$(printf %s "$body" | sed -n 's/.*"payload":"\([^"]*\)".*/\1/p' | base64 -d)
check "$payload" from-http "node 2 serves the retained message"

# Leaves nothing behind: an empty retained publish deletes it.
curl -s -o /dev/null -X POST -H "Authorization: Bearer $TOKEN" \
    "http://127.0.0.1:$HTTP1/topics/${TOPIC//\//%2F}%2Fhttp?retain=true"
exit "$FAILED"
