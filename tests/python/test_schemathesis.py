"""schemathesis against the OpenAPI document retaind serves: requests generated from it must
never get a 5xx, and every answer must be one the document describes (status, content type,
headers, body schema). Requests valid by the document must be accepted and invalid ones
refused, so the document's parameter schemas say what the server really takes.

Bounded: MAX_EXAMPLES valid and as many invalid requests per operation, derandomized (the same
requests every run), on a fresh server, once on SQLite and once on Postgres.

schemathesis's own pytest integration (`from_fixture`) does not run on pytest 9, so the cases
come from its Hypothesis strategies, one operation at a time.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

MAX_EXAMPLES = 40

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    positive_data_acceptance,
    negative_data_rejection,
]


def operations(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    found = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in found} >= {
        "GET /retainedMessage", "GET /retainedMessage/{topic}", "POST /topics/{topic}"}
    return found


def within_what_a_schema_can_say(case):
    """Leaves out of a valid case what the document can only say in words."""
    query, headers = case.query or {}, case.headers or {}
    # A pagination token is the server's own, signed: one made up is rightly refused.
    query.pop("nextToken", None)
    # User properties are base64 of JSON; random base64 is not.
    headers.pop("x-amz-mqtt5-user-properties", None)
    # A condition names a revision the server gave (one made up is rightly 412), needs
    # retain=true and excludes the other: rules between parameters, beyond a schema.
    headers.pop("If-Match", None)
    headers.pop("If-None-Match", None)
    # Lengths are in UTF-8 bytes; JSON Schema counts characters.
    topics = [(case.path_parameters or {}).get("topic"), query.get("responseTopic")]
    assume(all(len(t.encode()) <= 256 for t in topics if isinstance(t, str)))
    # Retained messages cannot live on `$` topics; other publishes may go there.
    topic = (case.path_parameters or {}).get("topic")
    assume(not (query.get("retain") in (True, "true") and str(topic).startswith("$")))
    # UTF8_DATA promises a UTF-8 payload.
    if headers.get("x-amz-mqtt5-payload-format-indicator") == "UTF8_DATA":
        body = case.body if isinstance(case.body, (bytes, str)) else b""
        assume(isinstance(body, str) or is_utf8(body))


def is_utf8(data):
    try:
        data.decode()
        return True
    except UnicodeDecodeError:
        return False


def has_parameters(operation):
    return any(len(params) for params in (operation.path_parameters, operation.query,
                                          operation.headers)) or operation.body


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["valid", "invalid"])
def test_generated_requests_get_documented_answers(server, mode):
    for operation in operations(server):
        # A watch's answer is an event stream that does not end, which a case's call would
        # wait for forever; its refusals and events are tested in tests/http_watch.rs.
        if operation.label == "GET /retainedMessage-watch":
            continue
        if mode == GenerationMode.NEGATIVE and not has_parameters(operation):
            continue  # nothing to make invalid

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def answers_as_documented(case):
            if mode == GenerationMode.POSITIVE:
                within_what_a_schema_can_say(case)
            case.call_and_validate(base_url=server.url, checks=CHECKS)

        answers_as_documented()
