"""Revisions and conditional publish (issue 17) with the clients people use: boto3's iot-data
client and plain `requests`, against a real retaind on SQLite and on Postgres.

boto3 parses only the fields its model names, so GetRetainedMessage's extra `revision` and
`writer` and ListRetainedMessages' extra `revision` must leave its answers as AWS would give
them; the `ETag` is in the raw response (`ResponseMetadata.HTTPHeaders`). boto3 has no
parameter for `If-Match`: a handler on botocore's `before-sign` event adds the header (signed,
with principals), and a 412 surfaces as a ClientError named by `x-amzn-ErrorType`.
"""

import base64
import json

import pytest
import requests
from botocore.exceptions import ClientError

from conftest import list_all


def etag_of(response):
    """The ETag of a boto3 response (botocore keeps every header, lower-cased)."""
    return response["ResponseMetadata"]["HTTPHeaders"].get("etag")


def revision_in(etag):
    assert etag.startswith('"') and etag.endswith('"') and etag[1:-1].isdigit(), etag
    return int(etag[1:-1])


def with_header(client, name, value):
    """Makes `client`'s Publish calls carry `name: value` (before signing, so SigV4 covers it)."""
    def add(request, **_):
        request.headers[name] = value
    client.meta.events.register("before-sign.iot-data.Publish", add)
    return add


def raw_get(server, topic):
    return requests.get(f"{server.url}/retainedMessage/{requests.utils.quote(topic, safe='')}",
                        timeout=10)


def raw_publish(server, topic, body, headers=None, retain=True):
    query = "?retain=true&qos=1" if retain else "?qos=1"
    return requests.post(f"{server.url}/topics/{requests.utils.quote(topic, safe='')}{query}",
                         data=body, headers=headers or {}, timeout=10)


@pytest.mark.parametrize("with_principals", [False, True], ids=["anonymous", "signed"])
def test_boto3_reads_messages_with_revisions_as_aws_shapes_them(server, client, with_principals):
    client.publish(topic="devices/t1/config", payload=b'{"v":1}', qos=1, retain=True,
                   userProperties='[{"owner":"ops"}]')
    message = client.get_retained_message(topic="devices/t1/config")
    metadata = message.pop("ResponseMetadata")
    # The five fields AWS defines, and nothing else: boto3 drops what its model does not name.
    assert set(message) == {"topic", "payload", "qos", "lastModifiedTime", "userProperties"}
    assert message["payload"] == b'{"v":1}'
    assert json.loads(message["userProperties"]) == [{"owner": "ops"}]
    revision = revision_in(metadata["HTTPHeaders"]["etag"])

    summaries = list_all(client)
    assert summaries == [{"topic": "devices/t1/config", "payloadSize": 7, "qos": 1,
                          "lastModifiedTime": message["lastModifiedTime"]}]

    if not with_principals:  # (`requests` does not sign)
        # What boto3 was given really carried the extension fields.
        raw = raw_get(server, "devices/t1/config").json()
        assert raw["revision"] == revision
        assert raw["writer"] == {"clientId": "HTTP"}


@pytest.mark.parametrize("with_principals", [False, True], ids=["anonymous", "signed"])
def test_boto3_publish_with_if_match(client, with_principals):
    client.publish(topic="cfg", payload=b"v1", qos=1, retain=True)
    first = etag_of(client.get_retained_message(topic="cfg"))

    handler = with_header(client, "If-Match", first)
    answer = client.publish(topic="cfg", payload=b"v2", qos=1, retain=True)
    second = etag_of(answer)
    assert revision_in(second) > revision_in(first)
    got = client.get_retained_message(topic="cfg")
    assert (got["payload"], etag_of(got)) == (b"v2", second)

    # The same If-Match again: the message has changed since, so nothing is stored.
    with pytest.raises(ClientError) as refused:
        client.publish(topic="cfg", payload=b"v3", qos=1, retain=True)
    error = refused.value.response
    assert error["Error"]["Code"] == "PreconditionFailedException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert "nothing was stored" in error["Error"]["Message"]
    got = client.get_retained_message(topic="cfg")
    assert (got["payload"], etag_of(got)) == (b"v2", second)

    client.meta.events.unregister("before-sign.iot-data.Publish", handler)
    with_header(client, "If-None-Match", "*")
    with pytest.raises(ClientError) as refused:
        client.publish(topic="cfg", payload=b"v4", qos=1, retain=True)
    assert refused.value.response["Error"]["Code"] == "PreconditionFailedException"
    client.publish(topic="other", payload=b"new", qos=1, retain=True)
    assert client.get_retained_message(topic="other")["payload"] == b"new"


def test_requests_compare_and_set(server, client):
    first = raw_publish(server, "devices/t2/config", b"v1")
    assert first.status_code == 200, first.text
    etag = first.headers["ETag"]
    got = raw_get(server, "devices/t2/config")
    assert got.headers["ETag"] == etag
    assert got.json()["revision"] == revision_in(etag)
    assert got.json()["writer"] == {"clientId": "HTTP"}

    replaced = raw_publish(server, "devices/t2/config", b"v2", {"If-Match": etag})
    assert replaced.status_code == 200, replaced.text
    assert revision_in(replaced.headers["ETag"]) > revision_in(etag)

    stale = raw_publish(server, "devices/t2/config", b"v3", {"If-Match": etag})
    assert stale.status_code == 412
    assert stale.headers["x-amzn-ErrorType"] == "PreconditionFailedException"
    assert "ETag" not in stale.headers
    assert set(stale.json()) == {"message"}
    got = raw_get(server, "devices/t2/config").json()
    assert base64.b64decode(got["payload"]) == b"v2"
    assert got["revision"] == revision_in(replaced.headers["ETag"])

    created = raw_publish(server, "devices/t3/config", b"new", {"If-None-Match": "*"})
    assert created.status_code == 200 and "ETag" in created.headers
    again = raw_publish(server, "devices/t3/config", b"newer", {"If-None-Match": "*"})
    assert again.status_code == 412

    deleted = raw_publish(server, "devices/t2/config", b"", {"If-Match": replaced.headers["ETag"]})
    assert deleted.status_code == 200 and "ETag" not in deleted.headers
    assert raw_get(server, "devices/t2/config").status_code == 404

    # List items carry revisions too; boto3 reads the same listing without them.
    listed = requests.get(f"{server.url}/retainedMessage", timeout=10).json()["retainedTopics"]
    assert [(t["topic"], t["revision"]) for t in listed] == [
        ("devices/t3/config", revision_in(created.headers["ETag"]))]
    assert [t["topic"] for t in list_all(client)] == ["devices/t3/config"]


@pytest.mark.parametrize("headers", [
    {"If-Match": 'W/"1"'},
    {"If-Match": "1"},
    {"If-Match": '"1", "2"'},
    {"If-Match": '"x"'},
    {"If-None-Match": '"1"'},
    {"If-Match": '"1"', "If-None-Match": "*"},
], ids=["weak", "unquoted", "list", "non-digits", "if-none-match-tag", "both"])
def test_requests_malformed_conditions_are_400(server, headers):
    seeded = raw_publish(server, "cfg", b"v1")
    before = raw_get(server, "cfg").json()
    refused = raw_publish(server, "cfg", b"v2", headers)
    assert refused.status_code == 400
    assert refused.headers["x-amzn-ErrorType"] == "InvalidRequestException"
    assert raw_get(server, "cfg").json() == before
    assert seeded.status_code == 200


def test_requests_condition_without_retain_is_400(server):
    etag = raw_publish(server, "cfg", b"v1").headers["ETag"]
    refused = raw_publish(server, "cfg", b"v2", {"If-Match": etag}, retain=False)
    assert refused.status_code == 400
    assert refused.headers["x-amzn-ErrorType"] == "InvalidRequestException"
    assert raw_get(server, "cfg").headers["ETag"] == etag
