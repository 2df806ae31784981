"""Fixtures for the boto3 / AWS CLI compatibility tests and the third-party MQTT client tests.

Every test gets its own retaind process on a fresh, empty store, once on SQLite and once on
Postgres, so listings can be asserted exactly. It serves the HTTP API, MQTT over TCP and MQTT over
WebSocket, each on a free port (1883 may belong to another broker on the machine). Needs
RETAIND_BIN (the server binary) and RETAIND_TEST_DATABASE_URL (a Postgres database in which each
test creates its own schema); scripts/test.sh sets both.
"""

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass

import boto3
import pytest
from botocore.config import Config

# What retaind prints on stdout once each listener is bound; all three must appear.
READY_LINES = {
    "http": re.compile(r"^retaind: HTTP API on (http://\S+)$"),
    "mqtt": re.compile(r"^retaind: MQTT on mqtt://(\S+):(\d+)$"),
    "ws": re.compile(r"^retaind: MQTT over WebSocket on ws://(\S+):(\d+)(/\S*)$"),
}
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 15


def pytest_configure(config):
    missing = [v for v in ("RETAIND_BIN", "RETAIND_TEST_DATABASE_URL") if not os.environ.get(v)]
    if missing:
        raise pytest.UsageError(
            f"{' and '.join(missing)} not set. RETAIND_BIN is the retaind binary "
            "(target/debug/retaind); RETAIND_TEST_DATABASE_URL is a Postgres database the tests "
            "may create schemas in. ./scripts/test.sh sets both."
        )
    if not os.access(os.environ["RETAIND_BIN"], os.X_OK):
        raise pytest.UsageError(f"RETAIND_BIN={os.environ['RETAIND_BIN']} is not an executable")


def psql(url, sql):
    subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True,
                   capture_output=True, timeout=30)


@contextlib.contextmanager
def postgres_schema():
    """The URL of a new, empty schema in the run's Postgres database, dropped afterwards."""
    base = os.environ["RETAIND_TEST_DATABASE_URL"]
    schema = f"t_{uuid.uuid4().hex}"
    psql(base, f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-c%20search_path%3D{schema}"
    finally:
        psql(base, f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    """A URL of an empty store; a Postgres schema is dropped again after the test."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path}/store/retaind.db"
        return
    with postgres_schema() as url:
        yield url


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    mqtt_host: str
    mqtt_port: int
    ws_host: str
    ws_port: int
    ws_path: str


@pytest.fixture
def with_principals():
    """Whether `server` runs with AUTH_TOML as its --principals (and `client` signs with its
    credentials). A test module can override this fixture to run its tests both ways."""
    return False


@pytest.fixture
def server(database_url, tmp_path, with_principals):
    """A running retaind on a free port; stopped with SIGTERM, which must end it cleanly."""
    args = ("--principals", str(write_auth_config(tmp_path))) if with_principals else ()
    with run_server(database_url, tmp_path, *args) as running:
        yield running


@contextlib.contextmanager
def run_server(database_url, tmp_path, *extra_args):
    """Starts retaind (with `extra_args` after the usual flags), yields its Server, stops it."""
    stderr_path = tmp_path / "retaind.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [os.environ["RETAIND_BIN"], "--http-addr", "127.0.0.1:0",
             "--mqtt-addr", "127.0.0.1:0", "--database-url", database_url,
             # The AWS-like request rates (10 lists/s) would throttle the paginator tests, whose
             # clients do not retry; throttling has its own tests (tests/http_throttle.rs).
             "--rate-get-retained-message", "0", "--rate-list-retained-messages", "0",
             "--rate-publish", "0", *extra_args],
            stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, text=True,
        )
    try:
        ready = _wait_until_ready(proc, stderr_path)
        mqtt_host, mqtt_port = ready["mqtt"]
        ws_host, ws_port, ws_path = ready["ws"]
        yield Server(ready["http"][0], proc, mqtt_host, int(mqtt_port), ws_host, int(ws_port),
                     ws_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail(f"retaind did not stop within {STOP_TIMEOUT_S}s of SIGTERM")
        proc.stdout.close()
    assert proc.returncode == 0, (
        f"retaind exited with {proc.returncode} after SIGTERM; stderr:\n{stderr_path.read_text()}"
    )


def _wait_until_ready(proc, stderr_path):
    """Reads stdout up to the last ready line; a timer kills a server that never gets there.

    Returns each ready line's captured groups by name ("http", "mqtt", "ws")."""
    found = {}
    timer = threading.Timer(START_TIMEOUT_S, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            for name, pattern in READY_LINES.items():
                match = pattern.match(line.rstrip("\n"))
                if match:
                    found[name] = match.groups()
            if len(found) == len(READY_LINES):
                return found
    finally:
        timer.cancel()
    proc.wait(timeout=5)
    missing = ", ".join(p.pattern for n, p in READY_LINES.items() if n not in found)
    pytest.fail(f"retaind ended (status {proc.returncode}) before printing its ready lines "
                f"(missing: {missing}; startup timeout {START_TIMEOUT_S}s); "
                f"stderr:\n{stderr_path.read_text()}")


def make_client(endpoint_url, access_key_id="testing", secret_access_key="testing", **config):
    # No retries: a 5xx from the server must surface as-is, not be hidden by a retry.
    return boto3.client(
        "iot-data",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=Config(retries={"total_max_attempts": 1}, **config),
    )


def credentials(with_principals):
    """The principal's keys with principals; without, anything (retaind does not check)."""
    return (ACCESS_KEY_ID, SECRET_ACCESS_KEY) if with_principals else ("testing", "testing")


@pytest.fixture
def client(server, with_principals):
    return make_client(server.url, *credentials(with_principals))


@pytest.fixture
def unvalidated_client(server, with_principals):
    """Sends what boto3 would refuse client side (qos=3, maxResults=0, ...)."""
    return make_client(server.url, *credentials(with_principals), parameter_validation=False)


def list_all(client, page_size=None):
    """Every summary, through boto3's own paginator."""
    config = {"PageSize": page_size} if page_size else {}
    pages = client.get_paginator("list_retained_messages").paginate(PaginationConfig=config)
    return [item for page in pages for item in page["retainedTopics"]]


def snapshot(client):
    """The whole stored state: every summary, and every message as GetRetainedMessage returns it."""
    summaries = list_all(client)
    messages = []
    for summary in summaries:
        response = client.get_retained_message(topic=summary["topic"])
        response.pop("ResponseMetadata")
        messages.append(response)
    return summaries, messages


def now_ms():
    return time.time_ns() // 1_000_000


# --- with principals (--principals) ------------------------------------------------------------

ACCESS_KEY_ID = "AKIDRETAINDTEST00001"
# '/' and '+' as real AWS secrets have them.
SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYRETAINDKEY"

# One principal: all three operations on every topic, except keeping retained messages under
# secret/ (an explicit deny wins over the allow).
AUTH_TOML = f'''
[[principals]]
name = "app"
access_key_id = "{ACCESS_KEY_ID}"
secret_access_key = "{SECRET_ACCESS_KEY}"

[[principals.statements]]
effect = "Allow"
actions = ["iot:Publish", "iot:RetainPublish", "iot:GetRetainedMessage", "iot:ListRetainedMessages"]
resources = ["*"]

[[principals.statements]]
effect = "Deny"
actions = ["iot:RetainPublish"]
resources = ["topic/secret/#"]
'''


def hash_password(password):
    """An MQTT password hash for a config file, as `retaind hash-password` makes it."""
    return subprocess.run([os.environ["RETAIND_BIN"], "hash-password"], input=password + "\n",
                          capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def write_auth_config(tmp_path):
    path = tmp_path / "auth.toml"
    path.write_text(AUTH_TOML)
    return path


@pytest.fixture
def auth_server(database_url, tmp_path):
    """A running retaind with AUTH_TOML as its --principals."""
    with run_server(database_url, tmp_path, "--principals", str(write_auth_config(tmp_path))) as running:
        yield running


@pytest.fixture
def signed_client(auth_server):
    """boto3 with the principal's credentials: every request is signed with SigV4."""
    return make_client(auth_server.url, ACCESS_KEY_ID, SECRET_ACCESS_KEY)
