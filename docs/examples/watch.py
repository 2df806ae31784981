#!/usr/bin/env python3
"""Keeps a mirror of the retained messages matching a topic filter, with plain `requests`.

Follows retaind's watch (`GET /retainedMessage-watch`, Server-Sent Events): the snapshot, then
every change. After a lost connection it comes back with `Last-Event-ID` and misses nothing;
on `resync` it drops its mirror and starts over from a new snapshot. Prints one JSON line per
event it applies.

    python3 docs/examples/watch.py --url http://127.0.0.1:8080 --topic-filter 'devices/+/config'

With principals configured, pass `--token` (a bearer token of a principal allowed
`iot:GetRetainedMessage` on the topics); the watch shows only the topics the policy lets it get.
"""

import argparse
import json
import sys
import time

import requests

# A watch sends a keep-alive or progress event every --watch-progress-interval (10 s by
# default): a read that waits much longer than that is a dead connection.
READ_TIMEOUT_S = 60
RETRY_DELAY_S = 1


def sse_events(response):
    """Yields (event, id, data) for each event of a text/event-stream response."""
    name, event_id, data = None, None, []
    # chunk_size=None: hand over each chunk as it arrives instead of waiting for 512 bytes.
    for line in response.iter_lines(chunk_size=None, decode_unicode=True):
        if line == "":
            if name is not None or data:
                yield name or "message", event_id, "\n".join(data)
            name, event_id, data = None, None, []
        elif line.startswith(":"):
            continue  # a keep-alive comment
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "id":
                event_id = value
            elif field == "data":
                data.append(value)


def watch(url, topic_filter, token=None, on_event=None):
    """Follows the watch forever, keeping `mirror` (topic -> GetRetainedMessage JSON) current.

    Calls on_event(name, data, mirror) after applying each event."""
    mirror = {}
    last_id = None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    while True:
        request_headers = dict(headers)
        if last_id is not None:
            request_headers["Last-Event-ID"] = last_id
        else:
            mirror.clear()  # a snapshot follows: it is the whole matching set
        try:
            with requests.get(f"{url}/retainedMessage-watch",
                              params={"topicFilter": topic_filter},
                              headers=request_headers, stream=True,
                              timeout=(5, READ_TIMEOUT_S)) as response:
                if response.status_code in (429, 503):  # throttled, or the node is full
                    time.sleep(RETRY_DELAY_S)
                    continue
                response.raise_for_status()
                for name, event_id, data in sse_events(response):
                    body = json.loads(data)
                    if name == "resync":
                        last_id = None  # start over from a snapshot
                        break
                    if name == "put":
                        mirror[body["topic"]] = body
                    elif name in ("delete", "expire", "purge"):
                        mirror.pop(body["topic"], None)
                    # Snapshot events have no id: a cut during the snapshot starts it again.
                    if event_id:
                        last_id = event_id
                    if on_event:
                        on_event(name, body, mirror)
        except (requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError):
            time.sleep(RETRY_DELAY_S)  # resume from last_id


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--topic-filter", default="#")
    parser.add_argument("--token", help="a bearer token, when principals are configured")
    args = parser.parse_args()

    def report(name, body, mirror):
        line = {"event": name, "revision": body.get("revision"), "topics": len(mirror)}
        if "topic" in body:
            line["topic"] = body["topic"]
        print(json.dumps(line), flush=True)

    try:
        watch(args.url, args.topic_filter, args.token, report)
    except KeyboardInterrupt:
        return 0
    except requests.HTTPError as e:
        print(f"watch refused: {e.response.status_code} {e.response.text}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
