"""Third-party MQTT clients against retaind's broker, with boto3 on the HTTP side of the same store.

Mosquitto's command-line clients (mosquitto_pub, mosquitto_sub) and paho-mqtt, over TCP and over
WebSocket, MQTT 3.1.1 and 5.0. What is checked is the join between the two faces of retaind: a
retained publish over MQTT is what GetRetainedMessage returns, an HTTP publish reaches MQTT
subscribers with its MQTT 5 properties, and a retained message set over HTTP is delivered to a
new subscriber with RETAIN=1.

Nothing here sleeps: subscribers are known to be subscribed from their SUBACK (mosquitto_sub in
debug mode prints it), and every wait is on an event or a queue with a timeout.
"""

import base64
import json
import queue
import shutil
import socket
import struct
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import list_all, now_ms

TIMEOUT_S = 10
TOPIC_NAME_INVALID = 0x90
PAYLOAD_FORMAT_INVALID = 0x99


def assert_ok(response):
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200


def retain(client, topic, payload, **kwargs):
    assert_ok(client.publish(topic=topic, payload=payload, retain=True, **kwargs))


def assert_not_found(client, topic):
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_retained_message(topic=topic)


# --- Mosquitto's clients ----------------------------------------------------------------------


def mosquitto_tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's mosquitto-clients (scripts/test.sh does)")
    return path


def mosquitto(tool, server, *args):
    """Runs mosquitto_pub or mosquitto_sub to completion against retaind; returns its stdout."""
    command = [mosquitto_tool(tool), "-h", server.mqtt_host, "-p", str(server.mqtt_port), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, (
        f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result.stdout


class MosquittoSub:
    """mosquitto_sub in the background, in debug mode (-d) so that its SUBACK can be waited for.

    stdbuf makes its stdout line buffered: through a pipe it would otherwise arrive at exit."""

    def __init__(self, server, *args):
        command = [mosquitto_tool("stdbuf"), "-oL", mosquitto_tool("mosquitto_sub"), "-d",
                   "-h", server.mqtt_host, "-p", str(server.mqtt_port), *args]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True)
        self.lines = queue.Queue()
        self.output = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _next(self, wanted, what):
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                pytest.fail(f"mosquitto_sub: no {what} within {TIMEOUT_S}s; output so far:\n"
                            + "\n".join(self.output))
            if line is None:
                pytest.fail(f"mosquitto_sub exited ({self.proc.wait()}) before {what}; output:\n"
                            + "\n".join(self.output))
            self.output.append(line)
            if wanted(line):
                return line

    def wait_subscribed(self):
        self._next(lambda line: "received SUBACK" in line, "SUBACK")

    def next_message(self):
        """The next line of formatted message output (debug lines start with these words)."""
        return self._next(lambda line: not line.startswith(("Client ", "Subscribed (")),
                          "message")

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=TIMEOUT_S)
        self.reader.join(TIMEOUT_S)  # it ends at end of output; then the pipe can be closed
        self.proc.stdout.close()


@contextmanager
def mosquitto_sub(server, *args):
    sub = MosquittoSub(server, *args)
    try:
        yield sub
    finally:
        sub.close()


# --- paho-mqtt ------------------------------------------------------------------------------


class Paho:
    """A connected paho-mqtt client on its own network thread; callbacks feed events and queues."""

    def __init__(self, host, port, protocol=mqtt.MQTTv5, transport="tcp", ws_path="/mqtt",
                 will=None):
        self.client_id = f"pytest-{uuid.uuid4().hex[:16]}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=protocol, transport=transport)
        if will is not None:
            topic, payload = will
            self.client.will_set(topic, payload, qos=1, retain=True)
        if transport == "websockets":
            self.client.ws_set_options(path=ws_path)
        self.connack = queue.Queue()
        self.subacks = queue.Queue()
        self.pubacks = {}
        self.published = threading.Condition()
        self.messages = queue.Queue()
        self.disconnected = threading.Event()
        self.disconnect_reason = None
        self.client.on_connect = lambda _c, _u, _f, reason, _p: self.connack.put(reason)
        self.client.on_subscribe = lambda _c, _u, _m, reasons, _p: self.subacks.put(reasons)
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        try:
            reason = self.connack.get(timeout=TIMEOUT_S)
        except queue.Empty:
            self.close()
            pytest.fail(f"paho: no CONNACK within {TIMEOUT_S}s")
        assert not reason.is_failure, f"paho: connection refused: {reason}"

    def _on_publish(self, _client, _userdata, mid, reason, _properties):
        with self.published:
            self.pubacks[mid] = reason
            self.published.notify_all()

    def _on_disconnect(self, client, _userdata, _flags, reason, _properties):
        with self.published:
            # The first: disconnecting below calls back again, with a normal disconnection.
            if self.disconnect_reason is None:
                self.disconnect_reason = reason
            self.disconnected.set()
            self.published.notify_all()
        client.disconnect()  # no automatic reconnect: a test sees the first connection only

    def subscribe(self, topic, qos=1):
        result, _ = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        try:
            reasons = self.subacks.get(timeout=TIMEOUT_S)
        except queue.Empty:
            pytest.fail(f"paho: no SUBACK for {topic} within {TIMEOUT_S}s")
        assert not any(r.is_failure for r in reasons), f"subscription to {topic} refused: {reasons}"

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        """Publishes; at QoS 1 returns the PUBACK's reason code, or None if the connection ended
        first."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"paho could not send the publish: {info.rc}"
        if qos == 0:
            return None
        with self.published:
            self.published.wait_for(lambda: info.mid in self.pubacks or self.disconnected.is_set(),
                                    timeout=TIMEOUT_S)
            return self.pubacks.get(info.mid)

    def publish_many(self, messages, qos=1, retain=True):
        """Publishes [(topic, payload)] without waiting in between, then waits for every PUBACK;
        returns their reason codes."""
        mids = [self.client.publish(topic, payload, qos=qos, retain=retain).mid
                for topic, payload in messages]
        with self.published:
            self.published.wait_for(
                lambda: all(m in self.pubacks for m in mids) or self.disconnected.is_set(),
                timeout=TIMEOUT_S * 3)
            return [self.pubacks.get(m) for m in mids]

    def next_message(self):
        try:
            return self.messages.get(timeout=TIMEOUT_S)
        except queue.Empty:
            pytest.fail(f"paho: no message within {TIMEOUT_S}s")

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def paho(server, protocol=mqtt.MQTTv5, transport="tcp", will=None):
    if transport == "websockets":
        client = Paho(server.ws_host, server.ws_port, protocol, transport, server.ws_path,
                      will=will)
    else:
        client = Paho(server.mqtt_host, server.mqtt_port, protocol, will=will)
    try:
        yield client
    finally:
        client.close()


# --- MQTT in, HTTP out ------------------------------------------------------------------------


def test_mosquitto_pub_retained_message_is_served_over_http(server, client):
    before = now_ms()
    mosquitto("mosquitto_pub", server, "-V", "mqttv5", "-t", "devices/t1/config",
              "-m", '{"target": 21.5}', "-r", "-q", "1",
              "-D", "publish", "user-property", "owner", "ops",
              "-D", "publish", "user-property", "site", "b1")
    after = now_ms()

    message = client.get_retained_message(topic="devices/t1/config")
    assert (message["topic"], message["payload"], message["qos"]) == \
        ("devices/t1/config", b'{"target": 21.5}', 1)
    assert json.loads(message["userProperties"]) == [{"owner": "ops"}, {"site": "b1"}]
    assert before <= message["lastModifiedTime"] <= after
    assert [m["topic"] for m in list_all(client)] == ["devices/t1/config"]


def test_mosquitto_pub_v311_retained_message_has_no_user_properties(server, client):
    mosquitto("mosquitto_pub", server, "-V", "mqttv311", "-t", "a/b", "-m", "v3", "-r", "-q", "1")
    message = client.get_retained_message(topic="a/b")
    assert (message["payload"], message["qos"]) == (b"v3", 1)
    assert "userProperties" not in message


def test_empty_retained_payload_from_mosquitto_pub_deletes(server, client):
    mosquitto("mosquitto_pub", server, "-t", "a/b", "-m", "x", "-r", "-q", "1")
    assert client.get_retained_message(topic="a/b")["payload"] == b"x"

    mosquitto("mosquitto_pub", server, "-t", "a/b", "-n", "-r", "-q", "1")
    assert_not_found(client, "a/b")
    assert list_all(client) == []


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["3.1.1", "5"])
def test_paho_over_websocket_retains_and_receives_on_subscribe(server, client, protocol):
    with paho(server, protocol, "websockets") as publisher:
        reason = publisher.publish("ws/t1", b"over websocket", qos=1, retain=True)
        assert reason is not None and not reason.is_failure, f"PUBACK: {reason}"

    with paho(server, protocol, "websockets") as subscriber:
        subscriber.subscribe("ws/#", qos=1)
        message = subscriber.next_message()
    assert (message.topic, message.payload, message.qos) == ("ws/t1", b"over websocket", 1)
    assert message.retain

    stored = client.get_retained_message(topic="ws/t1")
    assert (stored["payload"], stored["qos"]) == (b"over websocket", 1)


def test_retained_mqtt5_properties_are_kept_for_new_subscribers(server, client):
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = [("k", "v"), ("k", "w")]
    properties.ContentType = "text/plain"
    properties.ResponseTopic = "replies/t"
    properties.CorrelationData = b"corr-1"
    properties.PayloadFormatIndicator = 1
    with paho(server) as publisher:
        reason = publisher.publish("props/t", b"text", qos=1, retain=True, properties=properties)
        assert reason is not None and not reason.is_failure, f"PUBACK: {reason}"

    with paho(server) as subscriber:
        subscriber.subscribe("props/#", qos=1)
        message = subscriber.next_message()
    assert (message.topic, message.payload, message.retain) == ("props/t", b"text", True)
    got = {name: getattr(message.properties, name, None) for name in (
        "UserProperty", "ContentType", "ResponseTopic", "CorrelationData",
        "PayloadFormatIndicator")}
    assert got == {
        "UserProperty": [("k", "v"), ("k", "w")],
        "ContentType": "text/plain",
        "ResponseTopic": "replies/t",
        "CorrelationData": b"corr-1",
        "PayloadFormatIndicator": 1,
    }
    stored = client.get_retained_message(topic="props/t")
    assert json.loads(stored["userProperties"]) == [{"k": "v"}, {"k": "w"}]


def test_retained_publish_to_dollar_topic_is_refused(server, client):
    with paho(server) as publisher:
        reason = publisher.publish("$aws/things/t1", b"x", qos=1, retain=True)
        assert reason == TOPIC_NAME_INVALID, f"PUBACK reason {reason}"
    assert list_all(client) == []


def test_payload_format_utf8_with_invalid_utf8_is_refused(server, client):
    properties = Properties(PacketTypes.PUBLISH)
    properties.PayloadFormatIndicator = 1
    with paho(server) as publisher:
        reason = publisher.publish("a/b", b"\xff\xfe", qos=1, retain=True, properties=properties)
        assert reason == PAYLOAD_FORMAT_INVALID, f"PUBACK reason {reason}"
    assert_not_found(client, "a/b")


def test_many_retained_messages_are_all_delivered_on_subscribe(server, client):
    # More than any page the broker reads the store in, so delivery crosses page boundaries.
    count = 1200
    messages = [(f"many/{n:04}", str(n).encode()) for n in range(count)]
    with paho(server) as publisher:
        reasons = publisher.publish_many(messages)
    assert all(r is not None and not r.is_failure for r in reasons)

    out = mosquitto("mosquitto_sub", server, "-q", "1", "-t", "many/#", "-C", str(count),
                    "-W", str(TIMEOUT_S - 1), "-F", "%r %t %p")
    assert sorted(out.splitlines()) == [f"1 {topic} {payload.decode()}"
                                        for topic, payload in messages]
    assert len(list_all(client, page_size=200)) == count


# --- HTTP in, MQTT out ------------------------------------------------------------------------

HTTP_PUBLISH = dict(
    topic="devices/t1/events", payload=b'{"t":21.5}', qos=1, retain=False,
    userProperties=[{"deviceName": "alpha"}, {"deviceCnt": "45"}],
    contentType="application/json", responseTopic="replies/t1",
    correlationData=base64.b64encode(b"req-42").decode(), payloadFormatIndicator="UTF8_DATA",
    messageExpiry=3600,
)


def test_http_publish_reaches_paho_with_every_mqtt5_property(server, client):
    with paho(server) as subscriber:
        subscriber.subscribe("devices/+/events", qos=1)
        assert_ok(client.publish(**HTTP_PUBLISH))
        message = subscriber.next_message()

    assert (message.topic, message.payload, message.qos) == \
        ("devices/t1/events", b'{"t":21.5}', 1)
    assert not message.retain
    properties = message.properties
    got = {name: getattr(properties, name, None) for name in (
        "UserProperty", "ContentType", "ResponseTopic", "CorrelationData",
        "PayloadFormatIndicator")}
    assert got == {
        "UserProperty": [("deviceName", "alpha"), ("deviceCnt", "45")],
        "ContentType": "application/json",
        "ResponseTopic": "replies/t1",
        "CorrelationData": b"req-42",
        "PayloadFormatIndicator": 1,
    }
    # What is left of the expiry interval when it was sent on.
    assert 3600 - TIMEOUT_S <= getattr(properties, "MessageExpiryInterval", -1) <= 3600
    assert_not_found(client, "devices/t1/events")


def test_http_publish_reaches_mosquitto_sub_with_its_properties(server, client):
    with mosquitto_sub(server, "-V", "mqttv5", "-q", "1", "-t", "devices/#", "-F", "%j") as sub:
        sub.wait_subscribed()
        assert_ok(client.publish(**HTTP_PUBLISH))
        got = json.loads(sub.next_message())

    assert (got["topic"], got["qos"], got["retain"], got["payload"]) == \
        ("devices/t1/events", 1, 0, '{"t":21.5}')
    expiry = got["properties"].pop("message-expiry-interval", None)
    assert got["properties"] == {
        "user-properties": {"deviceName": "alpha", "deviceCnt": "45"},
        "content-type": "application/json",
        "response-topic": "replies/t1",
        "correlation-data": "req-42",
        "payload-format-indicator": 1,
    }
    assert expiry is not None and 3600 - TIMEOUT_S <= expiry <= 3600


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_http_retained_message_is_delivered_to_mosquitto_sub_on_subscribe(server, client,
                                                                           version):
    retain(client, "devices/t1/config", b"hello retained", qos=1)
    out = mosquitto("mosquitto_sub", server, "-V", version, "-q", "1", "-t", "devices/+/config",
                    "-C", "1", "-W", "5", "-F", "%r %t %p")
    assert out == "1 devices/t1/config hello retained\n"


def test_wildcard_subscription_receives_only_matching_retained_messages(server, client):
    for topic in ("a", "a/b", "a/c/d", "b/x", "ab/x", "b/a"):
        retain(client, topic, f"payload of {topic}".encode())

    with mosquitto_sub(server, "-q", "1", "-t", "a/#", "-F", "%r %t %p") as sub:
        sub.wait_subscribed()
        retained = {sub.next_message() for _ in range(3)}
        # A live message published after the three retained ones arrived: anything the filter
        # wrongly matched would have come first, in the same retained stream.
        assert_ok(client.publish(topic="a/end", payload=b"end", qos=1))
        after = sub.next_message()

    # "a/#" also matches "a" itself [MQTT-4.7.1-2].
    assert retained == {"1 a payload of a", "1 a/b payload of a/b", "1 a/c/d payload of a/c/d"}
    assert after == "0 a/end end"


# --- invalid publishes ------------------------------------------------------------------------


def _remaining_length(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(value):
    return struct.pack("!H", len(value)) + value


def _packet(first_byte, body):
    return bytes([first_byte]) + _remaining_length(len(body)) + body


def _connect(version):
    properties = b"\x00" if version == 5 else b""  # v5: empty property list
    return _packet(0x10, _string(b"MQTT") + bytes([version, 0x02]) + struct.pack("!H", 30)
                   + properties + _string(f"pytest-{uuid.uuid4().hex[:16]}".encode()))


def _publish(version, topic, payload):
    properties = b"\x00" if version == 5 else b""
    return _packet(0x31, _string(topic) + properties + payload)  # QoS 0, RETAIN=1


def _read_packets_until_closed(sock):
    """Every packet the server sends until it closes the connection: [(first byte, body)]."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        except socket.timeout:
            pytest.fail(f"connection still open {TIMEOUT_S}s after the invalid publish; "
                        f"received {data!r}")
        if not chunk:
            break
        data += chunk
    packets = []
    while data:
        length, multiplier, i = 0, 1, 1
        while True:
            length += (data[i] & 0x7F) * multiplier
            multiplier *= 128
            i += 1
            if not data[i - 1] & 0x80:
                break
        packets.append((data[0], data[i:i + length]))
        data = data[i + length:]
    return packets


INVALID_TOPICS = {
    "plus": b"a/+/b",
    "hash": b"a/#",
    "bare plus": b"+",
    "9 levels": b"/".join([b"l"] * 9),  # --max-topic-levels 8
    "257 bytes": b"t" * 257,  # --max-topic-bytes 256
}


@pytest.mark.parametrize("topic", INVALID_TOPICS.values(), ids=INVALID_TOPICS.keys())
@pytest.mark.parametrize("version", [4, 5], ids=["3.1.1", "5"])
def test_invalid_publish_topic_disconnects_and_stores_nothing(server, client, version, topic):
    # paho refuses to send wildcards (ValueError), and it drops the reason code of a DISCONNECT
    # without properties, so the packets are written and read by hand.
    with socket.create_connection((server.mqtt_host, server.mqtt_port), timeout=TIMEOUT_S) as sock:
        sock.sendall(_connect(version))
        connack = sock.recv(65536)
        assert connack[0] == 0x20 and connack[3] == 0x00, f"CONNACK: {connack!r}"
        sock.sendall(_publish(version, topic, b"x"))
        packets = _read_packets_until_closed(sock)

    if version == 5:  # DISCONNECT 0x90 Topic Name invalid, then close [MQTT-3.3.2-2]
        assert [(p[0], p[1][:1]) for p in packets] == [(0xE0, bytes([TOPIC_NAME_INVALID]))]
    else:  # 3.1.1 has no way to say why: the connection is closed [MQTT-4.8.0-1]
        assert packets == []
    assert list_all(client) == []


@pytest.mark.parametrize("topic", ["/".join(["l"] * 9), "t" * 257], ids=["9 levels", "257 bytes"])
def test_paho_qos1_publish_over_topic_limits_gets_puback_0x90_and_stores_nothing(server, client,
                                                                                 topic):
    with paho(server) as publisher:
        reason = publisher.publish(topic, b"x", qos=1, retain=True)
        assert reason == TOPIC_NAME_INVALID, (
            f"PUBACK reason {reason}" if reason is not None else
            "the connection ended without a PUBACK")
        # The connection stays usable.
        assert not publisher.publish("ok/after", b"y", qos=1, retain=True).is_failure
    assert [m["topic"] for m in list_all(client)] == ["ok/after"]


# --- DeleteConnection: boto3 disconnects a paho client -----------------------------------------


def test_boto3_delete_connection_disconnects_a_paho_client_and_publishes_its_will(server, client):
    with paho(server, will=("status/kept-will", b"offline")) as device:
        assert_ok(client.delete_connection(clientId=device.client_id))
        assert device.disconnected.wait(TIMEOUT_S), "paho was not disconnected"
        assert device.disconnect_reason == 0x98, device.disconnect_reason  # Administrative action
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            will = client.get_retained_message(topic="status/kept-will")
            break
        except client.exceptions.ResourceNotFoundException:
            assert time.monotonic() < deadline, "the Will was not published"
            time.sleep(0.05)
    assert will["payload"] == b"offline"


def test_boto3_delete_connection_can_keep_the_will_back_and_404s_once_gone(server, client):
    with paho(server, will=("status/no-will", b"offline")) as device:
        assert_ok(client.delete_connection(clientId=device.client_id, cleanSession=True,
                                           preventWillMessage=True))
        assert device.disconnected.wait(TIMEOUT_S), "paho was not disconnected"
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            client.delete_connection(clientId=device.client_id)
    assert_not_found(client, "status/no-will")
    with pytest.raises(client.exceptions.InvalidRequestException):
        client.delete_connection(clientId="$reserved")
