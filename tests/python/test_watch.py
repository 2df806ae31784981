"""docs/examples/watch.py, the watch example with plain `requests`, against the real server on
both stores: it mirrors a topic filter from the snapshot on, through puts and deletes written
with boto3, and leaves out topics outside its filter."""

import json
import pathlib
import queue
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest
import requests

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "examples" / "watch.py"
PATIENCE_S = 30


class Example:
    """The example as a process, its JSON lines read by a thread."""

    def __init__(self, url, topic_filter):
        self.process = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--url", url, "--topic-filter", topic_filter],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(json.loads(line))

    def next(self):
        try:
            return self.lines.get(timeout=PATIENCE_S)
        except queue.Empty:
            self.process.kill()
            pytest.fail(f"no event within {PATIENCE_S}s; stderr: {self.process.stderr.read()}")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


def revision(server, topic):
    quoted = urllib.parse.quote(topic, safe="")
    return requests.get(f"{server.url}/retainedMessage/{quoted}", timeout=10).json()["revision"]


def settled_past(server, at_least):
    """Waits until a watch would start at or past `at_least`. On Postgres the settled point is
    the whole server's: another transaction can hold it below a write just acknowledged, which a
    snapshot then rightly gives after `synced`, as a change."""
    deadline = time.monotonic() + PATIENCE_S
    while True:
        with requests.get(f"{server.url}/retainedMessage-watch",
                          params={"topicFilter": "settled/probe", "snapshot": "false"},
                          stream=True, timeout=(5, PATIENCE_S)) as response:
            assert response.status_code == 200, response.text
            line = next(l for l in response.iter_lines() if l.startswith(b"data:"))
        if json.loads(line[len(b"data:"):])["revision"] >= at_least:
            return
        assert time.monotonic() < deadline, f"the settled revision stayed below {at_least}"
        # Four probes a second, below the default rate of opening watches (10/s).
        time.sleep(0.25)


def test_the_example_mirrors_a_filter_from_the_snapshot_on(server, client):
    client.publish(topic="w/a", retain=True, payload=b"first")
    client.publish(topic="x/a", retain=True, payload=b"elsewhere")
    settled_past(server, revision(server, "x/a"))
    example = Example(server.url, "w/#")
    try:
        put = example.next()
        assert (put["event"], put["topic"], put["revision"]) == ("put", "w/a",
                                                                 revision(server, "w/a"))
        synced = example.next()
        assert synced["event"] == "synced" and synced["topics"] == 1

        client.publish(topic="x/b", retain=True, payload=b"not watched")
        client.publish(topic="w/b", retain=True, payload=b"second")
        client.publish(topic="w/a", retain=True, payload=b"")  # a delete
        put = example.next()
        assert (put["event"], put["topic"], put["topics"]) == ("put", "w/b", 2)
        assert put["revision"] == revision(server, "w/b")
        delete = example.next()
        assert (delete["event"], delete["topic"], delete["topics"]) == ("delete", "w/a", 1)
        assert delete["revision"] > put["revision"]
    finally:
        example.stop()


def test_the_example_reads_events_as_they_come(server):
    """The SSE reader with `requests` streaming hands over each event at once, not when a
    buffer fills: the first `synced` of an empty store is a few dozen bytes."""
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import watch
    finally:
        sys.path.pop(0)
    with requests.get(f"{server.url}/retainedMessage-watch", stream=True,
                      timeout=(5, PATIENCE_S)) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        name, event_id, data = next(watch.sse_events(response))
    assert name == "synced"
    assert event_id == str(json.loads(data)["revision"])
