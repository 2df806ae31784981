"""The quota on stored retained messages as boto3 sees it: the documented exception class, not
retried, and nothing stored."""

import boto3
import pytest
from botocore.config import Config

from conftest import run_server, snapshot


@pytest.fixture
def quota_client(database_url, tmp_path):
    with run_server(database_url, tmp_path, "--max-retained-messages", "2") as server:
        # Standard retry mode, as the AWS CLI v2 uses: it retries throttles, and must not retry
        # this.
        yield boto3.client(
            "iot-data", endpoint_url=server.url, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
            config=Config(retries={"mode": "standard", "max_attempts": 3}),
        )


def test_a_retained_publish_over_the_quota_raises_invalid_request(quota_client):
    quota_client.publish(topic="q/a", payload=b"1", retain=True, qos=1)
    quota_client.publish(topic="q/b", payload=b"1", retain=True, qos=1)
    before = snapshot(quota_client)
    with pytest.raises(quota_client.exceptions.InvalidRequestException) as raised:
        quota_client.publish(topic="q/c", payload=b"1", retain=True, qos=1)
    message = raised.value.response["Error"]["Message"]
    assert "at most 2 retained messages" in message
    assert "nothing was stored" in message
    # Sent once: a full quota is not a throttle.
    assert raised.value.response["ResponseMetadata"]["RetryAttempts"] == 0
    assert snapshot(quota_client) == before
    with pytest.raises(quota_client.exceptions.ResourceNotFoundException):
        quota_client.get_retained_message(topic="q/c")


def test_at_the_quota_rewrites_and_deletes_still_work(quota_client):
    quota_client.publish(topic="q/a", payload=b"1", retain=True)
    quota_client.publish(topic="q/b", payload=b"1", retain=True)
    quota_client.publish(topic="q/a", payload=b"2", retain=True)
    assert quota_client.get_retained_message(topic="q/a")["payload"] == b"2"
    quota_client.publish(topic="q/b", payload=b"", retain=True)
    quota_client.publish(topic="q/c", payload=b"1", retain=True)
    summaries, _ = snapshot(quota_client)
    assert [s["topic"] for s in summaries] == ["q/a", "q/c"]
