#!/usr/bin/env python3
"""A watch-style client: follow one session over SSE and resume exactly after a disconnect.

Standard library only, to show how little a client needs::

    python examples/watch_client.py SESSION_ID [--state-dir DIR] [--url URL --token TOKEN]

It prints one line per event. When the connection drops it reconnects with ``Last-Event-ID`` set
to the last event it printed (backoff 0.5 s doubling to 10 s), so nothing is shown twice and
nothing is skipped; if the daemon answers with a snapshot instead, it prints a summary of it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def sse_frames(response: http.client.HTTPResponse) -> Iterator[dict[str, str]]:
    """Parse an SSE byte stream into frames ``{"id", "event", "data"}``."""
    fields: dict[str, str] = {}
    for raw in response:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if "data" in fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def follow(
    url: str, token: str, session_id: str, last_id: str | None = None
) -> Iterator[tuple[str | None, str, dict[str, Any]]]:
    """Yield ``(id, event, data)`` forever, reconnecting with the last id seen."""
    parts = urlsplit(url)
    delay = 0.5
    while True:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        try:
            conn.request("GET", f"/v1/sessions/{session_id}/events", headers=headers)
            response = conn.getresponse()
            if response.status != 200:
                raise SystemExit(f"error {response.status}: {response.read().decode()}")
            delay = 0.5
            for frame in sse_frames(response):
                last_id = frame.get("id") or last_id
                yield last_id, frame.get("event", "message"), json.loads(frame["data"])
        except (OSError, http.client.HTTPException) as exc:
            print(
                f"-- disconnected ({exc}); resuming from {last_id} in {delay:.1f}s", file=sys.stderr
            )
        finally:
            conn.close()
        time.sleep(delay)
        delay = min(delay * 2, 10.0)


def describe(event: str, data: dict[str, Any]) -> str:
    if event == "snapshot":
        snap = data["snapshot"]
        info = snap["session"]
        items = len(snap["items"])
        return f"[snapshot {data['reason']}] {info['title']!r} {info['status']}, {items} items"
    body = data["event"]
    kind = body["type"]
    if kind == "text.delta":
        return str(body["text"])
    if kind == "permission.requested":
        tool_input = json.dumps(body["input"])[:120]
        return f"\n[needs approval] {body['tool_name']}: {tool_input} ({body['request_id']})"
    details = {k: v for k, v in body.items() if k != "type" and v not in (None, "", [], {})}
    return f"\n[{kind}] {json.dumps(details)[:160]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("session_id")
    parser.add_argument(
        "--state-dir", type=Path, default=Path.home() / ".local/state/sidecode-trio"
    )
    parser.add_argument("--url", help="daemon URL (default: from STATE_DIR/daemon.json)")
    parser.add_argument("--token", help="access token (default: STATE_DIR/token)")
    parser.add_argument("--since", help="resume from this event id (epoch:cursor)")
    args = parser.parse_args()
    url = args.url or json.loads((args.state_dir / "daemon.json").read_text())["http"]
    token = args.token or (args.state_dir / "token").read_text().strip()
    try:
        for _, event, data in follow(url, token, args.session_id, args.since):
            print(describe(event, data), end="", flush=True)
    except KeyboardInterrupt:
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
