"""SigV4 in the query string: presigned URLs for the HTTP API, as boto3's
`generate_presigned_url` builds them, and presigned `/mqtt` URLs for MQTT over WebSocket, as
the AWS IoT device SDKs build them (botocore's `SigV4QueryAuth`, service `iotdevicegateway`).
Fetched with plain clients (urllib, paho-mqtt) that know nothing of SigV4.
"""

import base64
import http.client
import json
import queue
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import paho.mqtt.client as mqtt
import pytest
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from paho.mqtt.enums import CallbackAPIVersion

from conftest import (ACCESS_KEY_ID, SECRET_ACCESS_KEY, hash_password, list_all, make_client,
                      run_server)

TIMEOUT_S = 10
OTHER_PASSWORD = "other-device-pass"


def fetch(url, headers=None):
    """GETs `url`; returns (status, headers, body) whether it succeeded or not."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def tamper(url):
    """The URL with the signature's last hex digit changed."""
    last = url[-1]
    return url[:-1] + ("0" if last != "0" else "1")


def presign_get(client, topic, expires=300):
    return client.generate_presigned_url("get_retained_message", Params={"topic": topic},
                                         ExpiresIn=expires)


# --- HTTP API ------------------------------------------------------------------------------


def test_a_presigned_get_fetches_the_retained_message(auth_server, signed_client):
    signed_client.publish(topic="presigned/a b", payload=b"21.5", qos=1, retain=True)
    url = presign_get(signed_client, "presigned/a b")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    status, headers, body = fetch(url)
    assert status == 200, body
    message = json.loads(body)
    assert message["topic"] == "presigned/a b"
    assert base64.b64decode(message["payload"]) == b"21.5"


def test_a_tampered_presigned_signature_is_forbidden(auth_server, signed_client):
    signed_client.publish(topic="presigned/t", payload=b"x", retain=True)
    status, headers, body = fetch(tamper(presign_get(signed_client, "presigned/t")))
    assert status == 403
    assert headers["x-amzn-ErrorType"].startswith("ForbiddenException")
    assert "payload" not in json.loads(body)


def test_a_presigned_url_with_a_wrong_secret_is_forbidden(auth_server, signed_client):
    signed_client.publish(topic="presigned/w", payload=b"x", retain=True)
    wrong = make_client(auth_server.url, ACCESS_KEY_ID, "not-the-secret")
    status, headers, _ = fetch(presign_get(wrong, "presigned/w"))
    assert status == 403
    assert headers["x-amzn-ErrorType"].startswith("ForbiddenException")


def test_a_presigned_url_with_an_unknown_key_is_forbidden(auth_server, signed_client):
    unknown = make_client(auth_server.url, "AKIDUNKNOWN000000000", "whatever")
    status, headers, _ = fetch(presign_get(unknown, "presigned/u"))
    assert status == 403
    assert headers["x-amzn-ErrorType"].startswith("ForbiddenException")


def test_an_expired_presigned_url_is_forbidden(auth_server, signed_client):
    signed_client.publish(topic="presigned/e", payload=b"x", retain=True)
    url = presign_get(signed_client, "presigned/e", expires=1)
    # X-Amz-Date has whole seconds: two seconds later the URL is past its one second for sure.
    time.sleep(2.2)
    status, headers, body = fetch(url)
    assert status == 403
    assert headers["x-amzn-ErrorType"].startswith("ForbiddenException")
    assert "expired" in json.loads(body)["message"].lower()


def test_a_presigned_url_sent_with_an_authorization_header_too_is_malformed(auth_server,
                                                                            signed_client):
    url = presign_get(signed_client, "presigned/h")
    status, headers, _ = fetch(url, {"Authorization": "Bearer whatever"})
    assert status == 400
    assert headers["x-amzn-ErrorType"].startswith("InvalidRequestException")


def test_a_refused_presigned_publish_stores_nothing(auth_server, signed_client):
    wrong = make_client(auth_server.url, ACCESS_KEY_ID, "not-the-secret")
    url = wrong.generate_presigned_url("publish", Params={"topic": "presigned/p", "retain": True},
                                       ExpiresIn=300)
    request = urllib.request.Request(url, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(request, timeout=TIMEOUT_S)
    assert excinfo.value.code == 403
    assert list_all(signed_client) == []


class BodySigningQueryAuth(SigV4QueryAuth):
    """SigV4 in the query string over a request's real body. Outside S3 the signature covers
    the payload's hash, so a presigned publish must be signed with its body; botocore's
    `SigV4QueryAuth` would instead move a body into the query string as form fields (and
    `generate_presigned_url` signs an empty body). A client with a body to presign does this."""

    def _modify_request_before_signing(self, request):
        body, request.data = request.data, b""
        super()._modify_request_before_signing(request)
        request.data = body


def presign_publish_with_body(server, topic, body):
    url = f"{server.url}/topics/{urllib.parse.quote(topic, safe='')}?qos=1&retain=true"
    request = AWSRequest(method="POST", url=url, data=body)
    BodySigningQueryAuth(Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY), "iotdata", "us-east-1",
                         expires=300).add_auth(request)
    return request.prepare().url


def post(url, body):
    """POSTs `body` to `url`; returns (status, headers, body) whether it succeeded or not."""
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_a_presigned_publish_with_its_signed_body_is_stored(auth_server, signed_client):
    url = presign_publish_with_body(auth_server, "presigned/body", b"21.5")
    status, _, _ = post(url, b"21.5")
    assert status == 200
    assert signed_client.get_retained_message(topic="presigned/body")["payload"] == b"21.5"


def test_a_presigned_publish_with_another_body_is_forbidden_and_changes_nothing(
        auth_server, signed_client):
    signed_client.publish(topic="presigned/swap", payload=b"before", qos=1, retain=True)
    url = presign_publish_with_body(auth_server, "presigned/swap", b"signed")
    status, headers, _ = post(url, b"swapped")
    assert status == 403
    assert headers["x-amzn-ErrorType"].startswith("ForbiddenException")
    assert signed_client.get_retained_message(topic="presigned/swap")["payload"] == b"before"


# --- MQTT over WebSocket ----------------------------------------------------------------------


def ws_auth_toml():
    """The signing principal may do anything; "other" signs in with a password only."""
    return f'''
[[principals]]
name = "device"
access_key_id = "{ACCESS_KEY_ID}"
secret_access_key = "{SECRET_ACCESS_KEY}"

[[principals.statements]]
effect = "Allow"
actions = ["iot:*"]
resources = ["*"]

[[principals]]
name = "other"
mqtt_username = "other"
mqtt_password_hash = "{hash_password(OTHER_PASSWORD)}"

[[principals.statements]]
effect = "Allow"
actions = ["iot:*"]
resources = ["*"]
'''


@pytest.fixture
def ws_server(database_url, tmp_path):
    config = tmp_path / "auth.toml"
    config.write_text(ws_auth_toml())
    with run_server(database_url, tmp_path, "--principals", str(config)) as server:
        yield server


def presigned_mqtt_path(server, secret=SECRET_ACCESS_KEY):
    """`/mqtt?X-Amz-...`, presigned as the AWS IoT device SDKs do."""
    request = AWSRequest(method="GET",
                         url=f"http://{server.ws_host}:{server.ws_port}{server.ws_path}")
    SigV4QueryAuth(Credentials(ACCESS_KEY_ID, secret), "iotdevicegateway", "us-east-1",
                   expires=300).add_auth(request)
    url = urllib.parse.urlsplit(request.prepare().url)
    return f"{url.path}?{url.query}"


def connect_ws(server, path, username=None, password=None, headers=None):
    """paho-mqtt 3.1.1 over WebSocket at `path`, sending `headers` with the upgrade too; returns
    (client, CONNACK reason)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ws-{uuid.uuid4().hex[:12]}",
                         protocol=mqtt.MQTTv311, transport="websockets")
    client.ws_set_options(path=path, headers=headers)
    if username is not None:
        client.username_pw_set(username, password)
    connack = queue.Queue()
    client.on_connect = lambda _c, _u, _f, reason, _p: connack.put(reason)
    client.connect(server.ws_host, server.ws_port, keepalive=30)
    client.loop_start()
    try:
        return client, connack.get(timeout=TIMEOUT_S)
    except queue.Empty:
        client.loop_stop()
        pytest.fail(f"no CONNACK within {TIMEOUT_S}s")


def test_a_presigned_websocket_url_connects_without_credentials(ws_server):
    client, reason = connect_ws(ws_server, presigned_mqtt_path(ws_server))
    try:
        assert not reason.is_failure, reason
        info = client.publish("presigned/ws", b"over wss", qos=1, retain=True)
        info.wait_for_publish(timeout=TIMEOUT_S)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()
    http = make_client(ws_server.url, ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    assert http.get_retained_message(topic="presigned/ws")["payload"] == b"over wss"


def test_a_presigned_websocket_url_counts_from_another_sites_page(ws_server):
    """A presigned URL is a bearer credential, not one the browser adds by itself: whoever
    holds it may use it, from any page."""
    cross_site = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    client, reason = connect_ws(ws_server, presigned_mqtt_path(ws_server), headers=cross_site)
    try:
        assert not reason.is_failure, reason
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_presigned_websocket_url_with_another_principals_credentials_is_refused(ws_server):
    client, reason = connect_ws(ws_server, presigned_mqtt_path(ws_server), "other",
                                OTHER_PASSWORD)
    client.loop_stop()
    # 3.1.1 return code 5, which paho reports under its MQTT 5 name.
    assert str(reason) == "Not authorized"


@pytest.mark.parametrize("how", ["tampered", "wrong secret"])
def test_a_bad_presigned_websocket_url_refuses_the_upgrade(ws_server, how):
    if how == "tampered":
        path = tamper(presigned_mqtt_path(ws_server))
    else:
        path = presigned_mqtt_path(ws_server, secret="not-the-secret")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311,
                         transport="websockets")
    client.ws_set_options(path=path)
    with pytest.raises((mqtt.WebsocketConnectionError, OSError)):
        client.connect(ws_server.ws_host, ws_server.ws_port, keepalive=30)
    # The refusal is the AWS error, not an upgrade. (http.client, unlike urllib, sends the
    # Connection header as given.)
    connection = http.client.HTTPConnection(ws_server.ws_host, ws_server.ws_port,
                                            timeout=TIMEOUT_S)
    try:
        connection.request("GET", path, headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol": "mqtt"})
        response = connection.getresponse()
        assert response.status == 403
        assert response.headers["x-amzn-ErrorType"].startswith("ForbiddenException")
    finally:
        connection.close()


def reload(server, tmp_path, times):
    """SIGHUP, then waits for the `times`-th successful reload in the log."""
    server.process.send_signal(signal.SIGHUP)
    log = tmp_path / "retaind.stderr"
    deadline = time.monotonic() + TIMEOUT_S
    while log.read_text().count("reloaded: the principals") < times:
        assert time.monotonic() < deadline, f"no reload in the log:\n{log.read_text()}"
        time.sleep(0.05)


def published(client, topic):
    """Whether `client` can still publish at QoS 1 (its PUBACK arrives)."""
    info = client.publish(topic, b"x", qos=1)
    info.wait_for_publish(timeout=TIMEOUT_S)
    return info.is_published()


def test_a_reload_that_takes_the_access_key_away_closes_the_presigned_connection(ws_server,
                                                                                tmp_path):
    """A presigned URL lets its connection in by its access key, not by MQTT credentials: a
    reload that keeps the principal but takes the key from it closes the connection, as one
    that changes a password closes those that used it. Keeping the key keeps it, and a
    connection of another principal is left alone."""
    signed, reason = connect_ws(ws_server, presigned_mqtt_path(ws_server))
    assert not reason.is_failure, reason
    by_password, reason = connect_ws(ws_server, ws_server.ws_path, "other", OTHER_PASSWORD)
    assert not reason.is_failure, reason
    closed = queue.Queue()
    signed.on_disconnect = lambda *_: closed.put("signed")
    by_password.on_disconnect = lambda *_: closed.put("by password")
    config = tmp_path / "auth.toml"
    # As written (a password hashed again would count as changed).
    in_force = config.read_text()
    try:
        # The same principals read again: every one is a new entry, and nothing closes.
        config.write_text(in_force)
        reload(ws_server, tmp_path, 1)
        assert published(signed, "presigned/kept")
        assert published(by_password, "presigned/other")
        assert closed.empty()

        # The key rotated: the connection it let in closes; the other stays.
        config.write_text(in_force.replace(ACCESS_KEY_ID, "AKIDRETAINDROTATED01"))
        reload(ws_server, tmp_path, 2)
        assert closed.get(timeout=TIMEOUT_S) == "signed"
        assert published(by_password, "presigned/still")
        assert closed.empty()
    finally:
        for client in (signed, by_password):
            client.disconnect()
            client.loop_stop()
