"""Authentication and authorization with boto3's own SigV4 signing, against a retaind started
with a principals file (conftest.AUTH_TOML), on SQLite and on Postgres.

Issue 5: wrong key or signature -> 403 ForbiddenException, no credentials -> 401
UnauthorizedException, a policy denial -> 403, and in every case nothing stored.
"""

import pytest
from botocore import UNSIGNED
from botocore.exceptions import ClientError

from conftest import ACCESS_KEY_ID, list_all, make_client


def error_of(excinfo):
    response = excinfo.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def test_signed_requests_use_all_three_operations(signed_client):
    response = signed_client.publish(topic="devices/t1/config", payload=b"21.5", qos=1,
                                     retain=True)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    message = signed_client.get_retained_message(topic="devices/t1/config")
    assert message["payload"] == b"21.5"
    assert message["qos"] == 1
    for i in range(5):
        signed_client.publish(topic=f"more/{i}", payload=b"x", retain=True)
    topics = [item["topic"] for item in list_all(signed_client, page_size=2)]
    assert topics == ["devices/t1/config"] + [f"more/{i}" for i in range(5)]


@pytest.mark.parametrize("topic", [
    "a/b",
    "with space/and%percent",
    "unicode/température/温度",
    "punctuation/!'()*~-_.:@,;=&$",
])
def test_topics_that_need_encoding_sign_correctly(signed_client, topic):
    # The canonical URI is the encoded path encoded again (a%2Fb is signed as a%252Fb).
    signed_client.publish(topic=topic, payload=b"v", retain=True)
    assert signed_client.get_retained_message(topic=topic)["payload"] == b"v"
    assert [item["topic"] for item in list_all(signed_client)] == [topic]


def test_a_wrong_secret_is_forbidden_and_stores_nothing(auth_server, signed_client):
    wrong = make_client(auth_server.url, ACCESS_KEY_ID, "not-the-secret")
    with pytest.raises(wrong.exceptions.ForbiddenException) as excinfo:
        wrong.publish(topic="a", payload=b"x", retain=True)
    assert error_of(excinfo) == (403, "ForbiddenException")
    with pytest.raises(wrong.exceptions.ForbiddenException):
        wrong.get_retained_message(topic="a")
    with pytest.raises(wrong.exceptions.ForbiddenException):
        wrong.list_retained_messages()
    assert list_all(signed_client) == []


def test_an_unknown_access_key_is_forbidden(auth_server, signed_client):
    unknown = make_client(auth_server.url, "AKIDUNKNOWN000000000", "whatever")
    with pytest.raises(unknown.exceptions.ForbiddenException):
        unknown.publish(topic="a", payload=b"x", retain=True)
    assert list_all(signed_client) == []


def test_no_credentials_are_unauthorized(auth_server, signed_client):
    anonymous = make_client(auth_server.url, signature_version=UNSIGNED)
    with pytest.raises(anonymous.exceptions.UnauthorizedException) as excinfo:
        anonymous.publish(topic="a", payload=b"x", retain=True)
    assert error_of(excinfo) == (401, "UnauthorizedException")
    with pytest.raises(anonymous.exceptions.UnauthorizedException):
        anonymous.get_retained_message(topic="a")
    with pytest.raises(anonymous.exceptions.UnauthorizedException):
        anonymous.list_retained_messages()
    assert list_all(signed_client) == []


def test_a_denied_retain_publish_is_forbidden_and_stores_nothing(signed_client):
    with pytest.raises(signed_client.exceptions.ForbiddenException) as excinfo:
        signed_client.publish(topic="secret/key", payload=b"x", retain=True)
    assert error_of(excinfo) == (403, "ForbiddenException")
    assert "iot:RetainPublish" in excinfo.value.response["Error"]["Message"]
    # iot:Publish alone is allowed there: a message that is not retained goes through.
    signed_client.publish(topic="secret/key", payload=b"live", retain=False)
    assert list_all(signed_client) == []
    with pytest.raises(signed_client.exceptions.ResourceNotFoundException):
        signed_client.get_retained_message(topic="secret/key")


def test_a_signed_request_over_the_payload_limit_is_too_large(signed_client):
    with pytest.raises(ClientError) as excinfo:
        signed_client.publish(topic="big", payload=b"x" * (128 * 1024 + 1), retain=True)
    assert error_of(excinfo) == (413, "RequestEntityTooLargeException")
    assert list_all(signed_client) == []
