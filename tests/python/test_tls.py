"""MQTT over TLS and HTTPS with third-party clients: paho-mqtt and mosquitto_pub with a username
and password over TLS (issue 5), boto3 over HTTPS on the same store, and a plain-TCP client on the
TLS port that must fail without disturbing the TLS sessions.

The CA and server certificate are made per test with the openssl command-line tool.
"""

import queue
import re
import socket
import subprocess
import threading
import uuid

import boto3
import paho.mqtt.client as mqtt
import pytest
from botocore.config import Config
from paho.mqtt.enums import CallbackAPIVersion

from conftest import hash_password, run_server
from test_mqtt_clients import mosquitto_tool

TIMEOUT_S = 10
PASSWORD = "tls-device-pass"
ACCESS_KEY_ID = "AKIDRETAINDTLS000001"
SECRET_ACCESS_KEY = "tlsSecretKeyForRetaindTests/000000000000"
TLS_LINES = {
    "mqtts": re.compile(r"^retaind: MQTT over TLS on mqtts://(\S+):(\d+)$"),
    "https": re.compile(r"^retaind: HTTPS API on (https://\S+)$"),
}


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def tls_files(tmp_path):
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    d = tmp_path / "tls"
    d.mkdir()
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=retaind test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
            cwd=d)
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                  "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
            cwd=d)
    return d


def auth_toml():
    hashed = hash_password(PASSWORD)
    return f'''
[[principals]]
name = "device"
mqtt_username = "device"
mqtt_password_hash = "{hashed}"
access_key_id = "{ACCESS_KEY_ID}"
secret_access_key = "{SECRET_ACCESS_KEY}"

[[principals.statements]]
effect = "Allow"
actions = ["iot:*"]
resources = ["*"]
'''


@pytest.fixture
def tls_server(database_url, tmp_path, tls_files):
    """retaind with principals, MQTT over TLS and HTTPS; yields (server, mqtts port, https url)."""
    config = tmp_path / "auth.toml"
    config.write_text(auth_toml())
    with run_server(database_url, tmp_path, "--principals", str(config),
                    "--mqtts-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0",
                    "--tls-cert", str(tls_files / "server.pem"),
                    "--tls-key", str(tls_files / "server.key")) as server:
        found = read_tls_lines(server.process)
        yield server, int(found["mqtts"][1]), found["https"][0]


def read_tls_lines(proc):
    """The TLS listeners' lines, printed after the ones conftest waits for."""
    found = {}
    timer = threading.Timer(TIMEOUT_S, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            for name, pattern in TLS_LINES.items():
                match = pattern.match(line.rstrip("\n"))
                if match:
                    found[name] = match.groups()
            if len(found) == len(TLS_LINES):
                return found
    finally:
        timer.cancel()
    pytest.fail(f"retaind did not print its TLS lines (got {found})")


def paho_tls(port, ca, password=PASSWORD):
    """A paho-mqtt 3.1.1 client over TLS; returns (client, the CONNACK's reason code)."""
    connacks = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"py-tls-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv311)
    client.tls_set(ca_certs=str(ca))
    client.username_pw_set("device", password)
    client.on_connect = lambda _c, _u, _f, reason_code, _p: connacks.put(reason_code)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        return client, connacks.get(timeout=TIMEOUT_S)
    except queue.Empty:
        client.loop_stop()
        pytest.fail("no CONNACK over TLS")


def https_client(url, ca):
    return boto3.client("iot-data", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY,
                        verify=str(ca), config=Config(retries={"total_max_attempts": 1}))


def publish_retained(client, topic, payload):
    info = client.publish(topic, payload, qos=1, retain=True)
    info.wait_for_publish(timeout=TIMEOUT_S)
    assert info.is_published()


def test_paho_over_tls_with_username_and_password(tls_server, tls_files):
    server, mqtts_port, https_url = tls_server
    client, reason = paho_tls(mqtts_port, tls_files / "ca.pem")
    try:
        assert not reason.is_failure, reason
        publish_retained(client, "tls/paho", b"over tls")
    finally:
        client.disconnect()
        client.loop_stop()
    # The same store, read over HTTPS with boto3 verifying the server against the test CA.
    message = https_client(https_url, tls_files / "ca.pem").get_retained_message(topic="tls/paho")
    assert message["payload"] == b"over tls"


def test_paho_over_tls_with_a_wrong_password_is_refused(tls_server, tls_files):
    _, mqtts_port, _ = tls_server
    client, reason = paho_tls(mqtts_port, tls_files / "ca.pem", password="wrong")
    client.loop_stop()
    assert reason.is_failure
    # 3.1.1 return code 4, which paho reports under its MQTT 5 name.
    assert str(reason) == "Bad user name or password", reason


def test_mosquitto_pub_over_tls(tls_server, tls_files):
    _, mqtts_port, https_url = tls_server
    command = [mosquitto_tool("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(mqtts_port),
               "--cafile", str(tls_files / "ca.pem"), "-u", "device", "-P", PASSWORD,
               "-t", "tls/mosquitto", "-m", "hello", "-r", "-q", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    client = https_client(https_url, tls_files / "ca.pem")
    assert client.get_retained_message(topic="tls/mosquitto")["payload"] == b"hello"


def test_plain_tcp_on_the_tls_port_fails_and_tls_sessions_carry_on(tls_server, tls_files):
    _, mqtts_port, https_url = tls_server
    client, reason = paho_tls(mqtts_port, tls_files / "ca.pem")
    try:
        assert not reason.is_failure, reason
        # A 3.1.1 CONNECT where a TLS ClientHello belongs.
        connect = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04oops"
        with socket.create_connection(("127.0.0.1", mqtts_port), timeout=TIMEOUT_S) as plain:
            plain.sendall(connect)
            answer = b""
            while chunk := plain.recv(4096):
                answer += chunk
        assert not answer.startswith(b"\x20"), f"a CONNACK over plain TCP: {answer!r}"
        assert answer == b"" or answer[0] == 0x15, f"expected a TLS alert: {answer!r}"
        publish_retained(client, "tls/still-here", b"yes")
    finally:
        client.disconnect()
        client.loop_stop()
    message = https_client(https_url, tls_files / "ca.pem").get_retained_message(
        topic="tls/still-here")
    assert message["payload"] == b"yes"
