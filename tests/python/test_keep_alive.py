"""Connection reuse after a refused publish, at the socket level.

boto3 (urllib3) keeps connections open and sends a request's headers and its body in separate
writes, so retaind may refuse a publish from its path or query before the body has arrived.
The next request on that pooled connection must still be answered: HTTP/1.1 lets a server close
after a response only if it said `Connection: close` in it (RFC 9112, section 9.6).
"""

import select
import socket

import pytest


def read_response(sock):
    """One HTTP/1.1 response with a Content-Length body: (status line, headers dict, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed mid-response after {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return status, headers, body


@pytest.mark.parametrize("path", [
    "/topics/a%2F%2B%2Fb?retain=true",      # wildcard topic
    "/topics/%24aws%2Fx?retain=true",       # retained publish to a $ topic
    "/topics/" + "t" * 257 + "?retain=true",  # topic too long
    "/topics/a%2Fb?retain=true&qos=3",      # bad qos
], ids=["wildcard", "dollar", "257 bytes", "qos=3"])
def test_refused_publish_leaves_the_connection_usable(server, path):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\n\r\n".encode())
        answered_early = select.select([sock], [], [], 1.0)[0]  # like boto3: body sent apart
        if answered_early:
            status, headers, _ = read_response(sock)
        try:
            sock.sendall(b"x")
            if not answered_early:
                status, headers, _ = read_response(sock)
        except OSError as e:
            pytest.fail(f"retaind dropped the connection while the body was being sent: {e!r}")
        assert status.startswith("HTTP/1.1 400 ")
        if headers.get("connection", "").lower() == "close":
            return  # announced: clients will not reuse this connection
        try:
            sock.sendall(f"GET /retainedMessage HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            status, _, _ = read_response(sock)
        except OSError as e:
            pytest.fail("retaind answered 400 without 'Connection: close', then dropped the "
                        f"connection (answered before the body: {bool(answered_early)}): {e!r}")
        assert status.startswith("HTTP/1.1 200 ")
