"""AWS CLI v1 (`aws iot-data ...`, from the test venv) against a real retaind.

CLI v1 sends a string --payload as raw bytes (v2's --cli-binary-format option does not exist
in v1) and passes --user-properties to botocore as a string, the double-encoded case.
"""

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

AWS = Path(sys.executable).parent / "aws"


@pytest.fixture
def aws(server, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))

    def run(*args, check=True):
        result = subprocess.run(
            [str(AWS), "iot-data", *args, "--endpoint-url", server.url, "--output", "json"],
            env=env, capture_output=True, text=True, timeout=60)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    return run


def test_cli_publish_get_and_list(aws):
    aws("publish", "--topic", "a/b", "--qos", "1", "--retain", "--payload", '{"x":1}',
        "--user-properties", '[{"deviceName":"alpha"}]')
    aws("publish", "--topic", "c d", "--retain", "--payload", "plain")
    aws("publish", "--topic", "not/retained", "--payload", "live")

    message = json.loads(aws("get-retained-message", "--topic", "a/b").stdout)
    assert message == {
        "topic": "a/b",
        "payload": base64.b64encode(b'{"x":1}').decode(),
        "qos": 1,
        "lastModifiedTime": message["lastModifiedTime"],
        "userProperties": base64.b64encode(b'[{"deviceName":"alpha"}]').decode(),
    }
    assert isinstance(message["lastModifiedTime"], int)

    # --page-size 1 makes the CLI follow nextToken page by page and merge the pages.
    listed = json.loads(aws("list-retained-messages", "--page-size", "1").stdout)
    assert [(m["topic"], m["payloadSize"], m["qos"]) for m in listed["retainedTopics"]] == \
        [("a/b", 7, 1), ("c d", 5, 0)]


def test_cli_reports_unknown_topic_by_error_name(aws):
    result = aws("get-retained-message", "--topic", "no/such", check=False)
    assert result.returncode == 255  # CLI v1's exit status for a service error
    assert "(ResourceNotFoundException)" in result.stderr


def test_cli_delete_connection_of_a_client_not_connected_is_resource_not_found(aws):
    # A connected client's disconnect is driven through boto3 with paho in
    # test_mqtt_clients.py; here the CLI's own argument names and its error report.
    result = aws("delete-connection", "--client-id", "nobody/here", "--clean-session",
                 "--no-prevent-will-message", check=False)
    assert result.returncode == 255
    assert "(ResourceNotFoundException)" in result.stderr
    assert "nobody/here" in result.stderr
