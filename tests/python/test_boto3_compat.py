"""boto3's own iot-data client against a real retaind, on SQLite and on Postgres.

The contract is /shared/reference/aws-iot-data-plane.md: what boto3 sends must be accepted and
what retaind answers must parse into the same values AWS would give.
"""

import json
import random
import time

import pytest
from botocore.exceptions import ClientError

from conftest import list_all, now_ms, snapshot

COMPACT = {"separators": (",", ":")}
MAX_PAYLOAD = 131072


@pytest.fixture(params=[False, True], ids=["anonymous", "signed"])
def with_principals(request):
    """Every test here runs twice: anonymous, and signed with SigV4 against a server with
    principals (whose signature checks must then pass for every request boto3 makes)."""
    return request.param


def assert_ok(response):
    meta = response["ResponseMetadata"]
    assert meta["HTTPStatusCode"] == 200
    assert meta["RequestId"]


def assert_not_found(client, topic):
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_retained_message(topic=topic)


def retain(client, topic, payload, **kwargs):
    assert_ok(client.publish(topic=topic, payload=payload, retain=True, **kwargs))


# --- publish and get ------------------------------------------------------------------------


def test_publish_without_retain_stores_nothing(client):
    assert_ok(client.publish(topic="a/b", payload=b"hello", qos=1))
    assert_ok(client.publish(topic="a/b", payload=b"hello", qos=1, retain=False))
    assert_not_found(client, "a/b")
    assert list_all(client) == []


def test_retained_publish_is_returned_by_get_and_list(client):
    payload = b"\x00\x01 binary \xff\xfe"
    before = now_ms()
    retain(client, "devices/t1/config", payload, qos=1)
    after = now_ms()

    message = client.get_retained_message(topic="devices/t1/config")
    assert_ok(message)
    assert message["topic"] == "devices/t1/config"
    assert message["payload"] == payload
    assert message["qos"] == 1
    assert before <= message["lastModifiedTime"] <= after
    assert "userProperties" not in message

    assert list_all(client) == [{
        "topic": "devices/t1/config",
        "payloadSize": len(payload),
        "qos": 1,
        "lastModifiedTime": message["lastModifiedTime"],
    }]


def test_retained_publish_defaults_to_qos_0(client):
    retain(client, "a/b", b"x")
    assert client.get_retained_message(topic="a/b")["qos"] == 0


def test_qos_2_is_accepted_and_kept(unvalidated_client):
    retain(unvalidated_client, "a/b", b"x", qos=2)  # boto3's model allows 0..1
    assert unvalidated_client.get_retained_message(topic="a/b")["qos"] == 2


PROPERTIES = [{"deviceName": "alpha"}, {"deviceCnt": "45"}]
PROPERTIES_JSON = json.dumps(PROPERTIES, **COMPACT).encode()


@pytest.mark.parametrize("user_properties", [PROPERTIES, json.dumps(PROPERTIES)],
                         ids=["list", "json-string"])
def test_user_properties_come_back_as_json_array(client, user_properties):
    # boto3 JSON-encodes the value: a list becomes the array, a string (as boto3's docs show)
    # becomes a JSON string literal holding the array. Both must be stored as the array.
    retain(client, "a/b", b"x", userProperties=user_properties)
    assert client.get_retained_message(topic="a/b")["userProperties"] == PROPERTIES_JSON


def test_user_properties_keep_order_duplicates_and_unicode(client):
    properties = [{"k": "2"}, {"k": "1"}, {"ünï": "温度 °C"}, {"empty": ""}]
    retain(client, "a/b", b"x", userProperties=properties)
    got = client.get_retained_message(topic="a/b")["userProperties"]
    assert json.loads(got) == properties


def test_optional_publish_fields_are_accepted(client):
    retain(client, "a/b", b'{"t":21}', qos=1, contentType="application/json",
           responseTopic="replies/a b", correlationData="Y29ycmVsYXRpb24=",
           payloadFormatIndicator="UTF8_DATA", messageExpiry=3600)
    message = client.get_retained_message(topic="a/b")
    assert (message["payload"], message["qos"]) == (b'{"t":21}', 1)


@pytest.mark.parametrize("topic", [
    "a/b c",
    "ünï/cødé/温度",
    "100%",
    "already%2Fencoded%20",  # the server must decode exactly once
    "what?x=1&y=2",
    "semi;colon/at@sign/equals=",
    "a/$b",
    "/leading/and/trailing/",
    "a//b",
    "emoji/\U0001f600",
], ids=repr)
def test_topics_needing_percent_encoding_round_trip(client, topic):
    retain(client, topic, topic.encode())
    message = client.get_retained_message(topic=topic)
    assert (message["topic"], message["payload"]) == (topic, topic.encode())
    assert [m["topic"] for m in list_all(client)] == [topic]


# --- listing --------------------------------------------------------------------------------

# Byte order differs from case-insensitive, locale and UTF-16 order on these.
ORDER_TOPICS = ["a", "B", "a/b", "a0", "a/b/c", "é", "\uff01", "\U0001f600", "Z", "a b", "_x",
                "A", "ä"]
BYTE_ORDER = sorted(ORDER_TOPICS, key=lambda t: t.encode("utf-8"))


@pytest.mark.parametrize("page_size", [1, 4, 200])
def test_paginator_returns_every_topic_once_in_byte_order(client, page_size):
    shuffled = ORDER_TOPICS[:]
    random.Random(7).shuffle(shuffled)
    for topic in shuffled:
        retain(client, topic, b"x")

    pages = list(client.get_paginator("list_retained_messages")
                 .paginate(PaginationConfig={"PageSize": page_size}))
    assert [[m["topic"] for m in p["retainedTopics"]] for p in pages] == \
        [BYTE_ORDER[i:i + page_size] for i in range(0, len(BYTE_ORDER), page_size)]
    assert all(p.get("nextToken") for p in pages[:-1])
    assert pages[-1].get("nextToken") is None


def test_list_page_size_defaults_to_50(client):
    topics = [f"t/{i:03}" for i in range(51)]
    for topic in topics:
        retain(client, topic, b"x")
    first = client.list_retained_messages()
    assert [m["topic"] for m in first["retainedTopics"]] == topics[:50]
    second = client.list_retained_messages(nextToken=first["nextToken"])
    assert [m["topic"] for m in second["retainedTopics"]] == topics[50:]
    assert "nextToken" not in second


def test_list_of_empty_store_has_no_token(client):
    response = client.list_retained_messages()
    assert_ok(response)
    assert response["retainedTopics"] == []
    assert "nextToken" not in response


def test_next_token_stays_valid_while_topics_change(client):
    for topic in "abcdef":
        retain(client, topic, b"x")
    first = client.list_retained_messages(maxResults=3)
    assert [m["topic"] for m in first["retainedTopics"]] == ["a", "b", "c"]

    retain(client, "c", b"")  # the last topic the token points past
    retain(client, "d", b"")
    retain(client, "bb", b"x")  # before the cursor: not seen on later pages
    retain(client, "e2", b"x")  # after the cursor: seen

    rest = client.list_retained_messages(maxResults=3, nextToken=first["nextToken"])
    assert [m["topic"] for m in rest["retainedTopics"]] == ["e", "e2", "f"]
    assert "nextToken" not in rest


# --- replace and delete ---------------------------------------------------------------------


def test_second_retained_publish_replaces_the_first(client):
    retain(client, "a/b", b"first", qos=1, userProperties=PROPERTIES)
    first = client.get_retained_message(topic="a/b")
    time.sleep(0.01)
    retain(client, "a/b", b"second!", qos=0)

    second = client.get_retained_message(topic="a/b")
    assert (second["payload"], second["qos"]) == (b"second!", 0)
    assert "userProperties" not in second  # the whole message is replaced, not merged
    assert second["lastModifiedTime"] > first["lastModifiedTime"]
    assert list_all(client) == [{"topic": "a/b", "payloadSize": 7, "qos": 0,
                                 "lastModifiedTime": second["lastModifiedTime"]}]


@pytest.mark.parametrize("payload", [{"payload": b""}, {}], ids=["empty", "omitted"])
def test_empty_retained_publish_deletes(client, payload):
    retain(client, "a/b", b"x")
    retain(client, "keep", b"y")
    assert_ok(client.publish(topic="a/b", retain=True, **payload))
    assert_not_found(client, "a/b")
    assert [m["topic"] for m in list_all(client)] == ["keep"]


def test_empty_retained_publish_to_unknown_topic_succeeds(client):
    retain(client, "nothing/here", b"")
    assert_not_found(client, "nothing/here")
    assert list_all(client) == []


def test_non_retained_publishes_leave_the_retained_message_alone(client):
    retain(client, "a/b", b"kept", qos=1)
    before = snapshot(client)
    assert_ok(client.publish(topic="a/b", payload=b"live", qos=0))
    assert_ok(client.publish(topic="a/b", payload=b"", retain=False))  # only retain deletes
    assert snapshot(client) == before


def test_message_expiry(client):
    retain(client, "short", b"x", messageExpiry=1)
    retain(client, "zero-means-never", b"x", messageExpiry=0)
    assert client.get_retained_message(topic="short")["payload"] == b"x"
    time.sleep(2.1)
    assert_not_found(client, "short")
    assert [m["topic"] for m in list_all(client)] == ["zero-means-never"]


# --- limits ---------------------------------------------------------------------------------


def test_limits_are_inclusive(client):
    payload = bytes(range(256)) * (MAX_PAYLOAD // 256)
    topics = ["t" * 256, "é" * 128, "1/2/3/4/5/6/7/8"]
    for topic in topics:
        retain(client, topic, payload)
    for topic in topics:
        assert client.get_retained_message(topic=topic)["payload"] == payload
    assert [(m["topic"], m["payloadSize"]) for m in list_all(client)] == \
        [(t, MAX_PAYLOAD) for t in sorted(topics, key=str.encode)]


# --- errors ---------------------------------------------------------------------------------

INVALID = "InvalidRequestException"

# (id, call, error code, HTTP status). Every call is made with boto3's parameter validation off,
# so the server, not the client, has to refuse; the bytes on the wire are what boto3 sends.
ERROR_CASES = [
    ("get unknown topic", lambda c: c.get_retained_message(topic="no/such"),
     "ResourceNotFoundException", 404),
    ("maxResults=500", lambda c: c.list_retained_messages(maxResults=500), INVALID, 400),
    ("maxResults=201", lambda c: c.list_retained_messages(maxResults=201), INVALID, 400),
    ("maxResults=0", lambda c: c.list_retained_messages(maxResults=0), INVALID, 400),
    ("bogus nextToken", lambda c: c.list_retained_messages(nextToken="bogus"), INVALID, 400),
    ("wildcard + topic", lambda c: c.publish(topic="a/+/b", payload=b"x", retain=True),
     INVALID, 400),
    ("wildcard # topic", lambda c: c.publish(topic="a/#", payload=b"x", retain=True),
     INVALID, 400),
    ("wildcard in get", lambda c: c.get_retained_message(topic="a/+"), INVALID, 400),
    ("retained $ topic", lambda c: c.publish(topic="$aws/x", payload=b"x", retain=True),
     INVALID, 400),
    ("topic of 257 bytes", lambda c: c.publish(topic="t" * 257, payload=b"x", retain=True),
     INVALID, 400),
    ("topic of 129 chars, 258 bytes",
     lambda c: c.publish(topic="é" * 129, payload=b"x", retain=True), INVALID, 400),
    ("topic of 9 levels",
     lambda c: c.publish(topic="1/2/3/4/5/6/7/8/9", payload=b"x", retain=True), INVALID, 400),
    ("topic with U+0000", lambda c: c.publish(topic="a\x00b", payload=b"x", retain=True),
     INVALID, 400),
    ("qos=3", lambda c: c.publish(topic="a/b", payload=b"new", qos=3, retain=True),
     INVALID, 400),
    ("user properties not JSON",
     lambda c: c.publish(topic="a/b", payload=b"new", retain=True, userProperties="not json"),
     INVALID, 400),
    ("user properties an object",
     lambda c: c.publish(topic="a/b", payload=b"new", retain=True, userProperties={"k": "v"}),
     INVALID, 400),
    ("wildcard responseTopic",
     lambda c: c.publish(topic="a/b", payload=b"new", retain=True, responseTopic="r/+"),
     INVALID, 400),
    ("unknown payloadFormatIndicator",
     lambda c: c.publish(topic="a/b", payload=b"new", retain=True,
                         payloadFormatIndicator="BOGUS"), INVALID, 400),
    ("payload of 131073 bytes",
     lambda c: c.publish(topic="a/b", payload=b"z" * (MAX_PAYLOAD + 1), retain=True),
     "RequestEntityTooLargeException", 413),
]


@pytest.mark.parametrize("call, code, status", [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_error_is_raised_as_its_class_and_changes_nothing(unvalidated_client, call, code, status):
    client = unvalidated_client
    retain(client, "a/b", b"old", qos=1, userProperties=PROPERTIES)
    retain(client, "seed/2", b"other")
    before = snapshot(client)

    with pytest.raises(getattr(client.exceptions, code)) as excinfo:
        call(client)
    response = excinfo.value.response
    assert isinstance(excinfo.value, ClientError)
    assert response["Error"]["Code"] == code
    assert response["Error"]["Message"]
    assert response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert response["ResponseMetadata"]["RequestId"]

    assert snapshot(client) == before


def test_max_results_500_is_refused_by_the_server_not_by_boto3(client):
    # The model only has min=1 checked client side, so a validating boto3 sends this as is.
    with pytest.raises(client.exceptions.InvalidRequestException):
        client.list_retained_messages(maxResults=500)


def test_every_response_has_a_distinct_request_id(client):
    responses = [
        client.publish(topic="a/b", payload=b"x", retain=True),
        client.get_retained_message(topic="a/b"),
        client.list_retained_messages(),
    ]
    ids = [r["ResponseMetadata"]["RequestId"] for r in responses]
    assert all(ids) and len(set(ids)) == len(ids)
