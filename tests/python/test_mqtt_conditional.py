"""Conditional publish over MQTT 5 (issue 17) from third-party clients.

paho-mqtt sends the user properties `retaind-if-match` (a revision) and `retaind-if-none-match`
(`*`) and reads each PUBACK's reason code and reason string; mosquitto_pub sends the README's
example. The revision a test matches is the ETag that boto3's GetRetainedMessage returns, copied
as it is (quotes included). Every refusal is checked against the stored state (snapshot) and
against what a subscriber receives.
"""

import json
import subprocess

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import snapshot
from test_mqtt_clients import TIMEOUT_S, Paho, mosquitto, mosquitto_tool

SUCCESS = 0x00
UNSPECIFIED_ERROR = 0x80
IMPLEMENTATION_SPECIFIC_ERROR = 0x83


class Conditional(Paho):
    """Paho that also keeps each PUBACK's properties, for its reason string."""

    def __init__(self, server):
        self.ack_properties = {}
        super().__init__(server.mqtt_host, server.mqtt_port, mqtt.MQTTv5)

    def _on_publish(self, client, userdata, mid, reason, properties):
        self.ack_properties[mid] = properties
        super()._on_publish(client, userdata, mid, reason, properties)

    def publish_if(self, topic, payload, user_properties, retain=True):
        """A QoS 1 publish with these user properties; returns the PUBACK's reason code and
        reason string (None without one)."""
        properties = Properties(PacketTypes.PUBLISH)
        properties.UserProperty = list(user_properties)
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        with self.published:
            self.published.wait_for(
                lambda: info.mid in self.pubacks or self.disconnected.is_set(), timeout=TIMEOUT_S)
        assert info.mid in self.pubacks, "no PUBACK"
        acked = self.ack_properties.get(info.mid)
        return self.pubacks[info.mid], getattr(acked, "ReasonString", None)


@pytest.fixture
def publisher(server):
    client = Conditional(server)
    yield client
    client.close()


@pytest.fixture
def subscriber(server):
    client = Paho(server.mqtt_host, server.mqtt_port, mqtt.MQTTv5)
    client.subscribe("cond/#")
    yield client
    client.close()


def etag(client, topic):
    """The ETag of the topic's retained message, as GetRetainedMessage sends it: "<revision>"."""
    response = client.get_retained_message(topic=topic)
    return response["ResponseMetadata"]["HTTPHeaders"]["etag"]


def assert_next_is_marker(client, subscriber):
    """Nothing reached the subscriber before a marker published now over HTTP."""
    client.publish(topic="cond/marker", payload=b"marker", qos=1)
    message = subscriber.next_message()
    assert (message.topic, message.payload) == ("cond/marker", b"marker")


def test_if_match_with_the_etag_stores_and_a_stale_one_is_refused(client, publisher, subscriber):
    client.publish(topic="cond/t", payload=b"v1", qos=1, retain=True)
    assert subscriber.next_message().payload == b"v1"
    first = etag(client, "cond/t")
    assert first.startswith('"') and first.endswith('"')

    reason, why = publisher.publish_if("cond/t", b"v2", [("retaind-if-match", first)])
    assert (reason, why) == (SUCCESS, None)
    assert subscriber.next_message().payload == b"v2"
    stored = client.get_retained_message(topic="cond/t")
    assert stored["payload"] == b"v2"
    assert stored["ResponseMetadata"]["HTTPHeaders"]["etag"] != first

    before = snapshot(client)
    reason, why = publisher.publish_if("cond/t", b"v3", [("retaind-if-match", first)])
    assert reason == UNSPECIFIED_ERROR
    assert why == f"precondition failed: the topic's revision is not {first.strip(chr(34))}"
    assert snapshot(client) == before
    assert_next_is_marker(client, subscriber)


def test_if_none_match_creates_only(client, publisher, subscriber):
    condition = [("retaind-if-none-match", "*")]
    assert publisher.publish_if("cond/new", b"first", condition) == (SUCCESS, None)
    assert subscriber.next_message().payload == b"first"
    before = snapshot(client)
    reason, why = publisher.publish_if("cond/new", b"second", condition)
    assert (reason, why) == (UNSPECIFIED_ERROR,
                             "precondition failed: the topic has a retained message")
    assert snapshot(client) == before
    assert_next_is_marker(client, subscriber)


def test_a_delete_applies_only_with_the_current_etag(client, publisher):
    client.publish(topic="cond/t", payload=b"v1", qos=1, retain=True)
    current = etag(client, "cond/t")
    client.publish(topic="cond/t", payload=b"v2", qos=1, retain=True)
    reason, _ = publisher.publish_if("cond/t", b"", [("retaind-if-match", current)])
    assert reason == UNSPECIFIED_ERROR
    assert client.get_retained_message(topic="cond/t")["payload"] == b"v2"

    reason, _ = publisher.publish_if("cond/t", b"", [("retaind-if-match", etag(client, "cond/t"))])
    assert reason == SUCCESS
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_retained_message(topic="cond/t")


@pytest.mark.parametrize("properties, retain, why", [
    ([("retaind-if-match", "1"), ("retaind-if-none-match", "*")], True,
     "malformed condition: at most one retaind-if-match or retaind-if-none-match"),
    ([("retaind-if-match", "W/\"1\"")], True,
     "malformed condition: retaind-if-match must be a revision (decimal digits)"),
    ([("retaind-if-none-match", "1")], True,
     "malformed condition: retaind-if-none-match must be *"),
    ([("retaind-if-none-match", "*")], False,
     "malformed condition: a condition needs the RETAIN flag"),
], ids=["both", "weak-etag", "none-match-not-star", "not-retained"])
def test_a_malformed_condition_is_refused_with_0x83(client, publisher, subscriber, properties,
                                                    retain, why):
    client.publish(topic="cond/t", payload=b"v1", qos=1, retain=True)
    assert subscriber.next_message().payload == b"v1"
    before = snapshot(client)
    reason, said = publisher.publish_if("cond/t", b"v2", properties, retain=retain)
    assert (reason, said) == (IMPLEMENTATION_SPECIFIC_ERROR, why)
    assert snapshot(client) == before
    assert_next_is_marker(client, subscriber)


def test_the_condition_is_neither_stored_nor_delivered(client, publisher, subscriber):
    properties = [("site", "b1"), ("Retaind-If-None-Match", "*"), ("owner", "ops")]
    assert publisher.publish_if("cond/t", b"v1", properties) == (SUCCESS, None)
    delivered = subscriber.next_message()
    assert delivered.properties.UserProperty == [("site", "b1"), ("owner", "ops")]
    stored = client.get_retained_message(topic="cond/t")
    assert json.loads(stored["userProperties"]) == [{"site": "b1"}, {"owner": "ops"}]


def test_mosquitto_pub_publishes_if_match_as_the_readme_shows(client, server, subscriber):
    client.publish(topic="cond/t", payload=b"v1", qos=1, retain=True)
    assert subscriber.next_message().payload == b"v1"
    revision = etag(client, "cond/t").strip('"')
    mosquitto("mosquitto_pub", server, "-V", "mqttv5", "-q", "1", "-r", "-t", "cond/t",
              "-m", "v2", "-D", "publish", "user-property", "retaind-if-match", revision)
    assert client.get_retained_message(topic="cond/t")["payload"] == b"v2"
    assert subscriber.next_message().payload == b"v2"

    # The same revision again is stale: mosquitto_pub reports the 0x80 PUBACK.
    before = snapshot(client)
    command = [mosquitto_tool("mosquitto_pub"), "-h", server.mqtt_host, "-p",
               str(server.mqtt_port), "-V", "mqttv5", "-q", "1", "-r", "-t", "cond/t", "-m", "v3",
               "-D", "publish", "user-property", "retaind-if-match", revision]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert "Unspecified error" in result.stdout + result.stderr, result
    assert snapshot(client) == before
    assert_next_is_marker(client, subscriber)
