#!/usr/bin/env python3
"""A paired device over WebTransport (HTTP/3 over QUIC): everything from the pairing payload on.

::

    python examples/wt_client.py pair 'sidecode-trio://pair#...' --name "my laptop"
    python examples/wt_client.py sessions
    python examples/wt_client.py new ~/project "run the tests"
    python examples/wt_client.py follow SESSION_ID --approve ask     # or allow / deny / no
    python examples/wt_client.py send SESSION_ID "now fix them"

Trust, as with HTTPS (``pair_client.py``): the payload carries the daemon's Ed25519 key. After
the QUIC handshake and before anything secret is sent, the client checks that ``GET /v1/info``
lists the certificate the server presented, signed by that key. Authentication then signs the
daemon's one-time nonce together with that certificate's hash, so it is good for this connection
only. ``follow`` resumes exactly after a dropped connection: it sends back the ``(epoch, cursor)``
of the last event it printed. Credentials are kept in ``~/.config/sidecode-trio-wt.json`` (0600).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nacl.signing
import trio
from _common import add_session_commands, answer, describe, parse_args, run_command

from sidecode_trio.quic.client import DeviceSession, QuicClient, SessionClosed
from sidecode_trio.security.identity import b64, unb64

PAIR_CONTEXT = b"sidecode-trio pair v1\n"
DEFAULT_STORE = Path.home() / ".config" / "sidecode-trio-wt.json"
RECONNECT_DELAY = 1.0


def parse_payload(text: str) -> dict[str, Any]:
    text = text.strip()
    raw = text.encode() if text.startswith("{") else unb64(text.partition("#")[2])
    data: dict[str, Any] = json.loads(raw)
    if data.get("v") != 1 or not data.get("quic"):
        raise ValueError("not a sidecode-trio pairing payload with a WebTransport address")
    return data


async def open_session(nursery: trio.Nursery, url: str, daemon_key: bytes) -> DeviceSession:
    """Connect, say hello, and check the certificate against the pinned key."""
    parts = urlsplit(url)
    client = await QuicClient.connect(
        nursery, parts.hostname or "127.0.0.1", parts.port or 443, path=parts.path
    )
    try:
        session = await DeviceSession.open(nursery, client, "wt_client.py")
        await session.verify_identity(daemon_key)  # raises PinError before anything secret
    except BaseException:
        await client.aclose()
        raise
    return session


async def pair(nursery: trio.Nursery, payload: dict[str, Any], name: str) -> dict[str, Any]:
    """Pair over WebTransport; returns the credentials to store."""
    daemon_key = unb64(payload["pk"])
    device_key = nacl.signing.SigningKey.generate()
    device_public = bytes(device_key.verify_key)
    transcript = b"".join(
        [PAIR_CONTEXT, daemon_key, device_public, name.encode(), b"\n", payload["sid"].encode()]
    )
    body = {
        "secret_id": payload["sid"],
        "device_public_key": b64(device_public),
        "name": name,
        "mac": b64(hmac.new(unb64(payload["secret"]), transcript, hashlib.sha256).digest()),
        "signature": b64(device_key.sign(transcript).signature),
    }
    session = await open_session(nursery, payload["quic"][0], daemon_key)
    try:
        reply = await session.request("POST", "/v1/pair", body)
    finally:
        await session.client.aclose()
    return {
        "daemon": {
            "public_key": payload["pk"],
            "fingerprint": payload["fp"],
            "quic": payload["quic"],
        },
        "device": {"id": reply["device"]["id"], "seed": b64(bytes(device_key))},
        "scope": reply["device"]["scope"],
    }


class Device:
    """A paired device: connects and authenticates with its own key."""

    def __init__(self, credentials: dict[str, Any]) -> None:
        self.daemon_key = unb64(credentials["daemon"]["public_key"])
        self.urls: list[str] = credentials["daemon"]["quic"]
        self.device_id: str = credentials["device"]["id"]
        self.key = nacl.signing.SigningKey(unb64(credentials["device"]["seed"]))

    async def connect(self, nursery: trio.Nursery) -> DeviceSession:
        session = await open_session(nursery, self.urls[0], self.daemon_key)
        try:
            await session.authenticate(self.device_id, self.key)
        except BaseException:
            await session.client.aclose()
            raise
        return session

    async def follow(
        self,
        session_id: str,
        on_event: Callable[[DeviceSession, dict[str, Any]], Awaitable[bool]],
        since: str | None = None,
        connected: Callable[[DeviceSession], None] = lambda _: None,
    ) -> str | None:
        """Stream a session's events to ``on_event`` (return True to stop), reconnecting and
        resuming exactly after a drop. Returns the last position seen."""
        while True:
            async with trio.open_nursery() as nursery:  # this connection's background tasks
                try:
                    session = await self.connect(nursery)
                    connected(session)
                    stream = await session.subscribe(f"/v1/sessions/{session_id}/events", since)
                    while True:
                        message = await stream.next()
                        since = stream.last_id or since
                        if message["type"] == "end" or await on_event(session, message):
                            await session.client.aclose()
                            return since
                except (SessionClosed, OSError) as exc:  # caught here, not out of the nursery
                    print(f"-- disconnected ({exc}); resuming from {since}", file=sys.stderr)
                finally:
                    nursery.cancel_scope.cancel()
            await trio.sleep(RECONNECT_DELAY)


def _save(path: Path, credentials: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(credentials, handle, indent=2)


async def run(args: argparse.Namespace) -> int:
    if args.command == "pair":
        payload = parse_payload(args.payload)
        print(f"pairing with daemon {payload['fp']} over {payload['quic'][0]} ...")
        async with trio.open_nursery() as nursery:
            _save(args.store, await pair(nursery, payload, args.name))
            nursery.cancel_scope.cancel()
        print(f"paired; credentials saved in {args.store}")
        return 0
    device = Device(json.loads(args.store.read_text()))
    if args.command == "follow":

        async def show(session: DeviceSession, message: dict[str, Any]) -> bool:
            print(describe(message), end="", flush=True)
            await answer(session, args, message)
            return False

        await device.follow(args.session_id, show, args.since)
        return 0
    async with trio.open_nursery() as nursery:
        session = await device.connect(nursery)
        await run_command(session, args)
        await session.client.aclose()
        nursery.cancel_scope.cancel()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="a paired sidecode-trio device (WebTransport)")
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE, help="credentials file")
    commands = add_session_commands(parser)
    pairing = commands.add_parser("pair", help="pair from a QR link or JSON payload")
    pairing.add_argument("payload")
    pairing.add_argument("--name", default="wt client")
    return trio.run(run, parse_args(parser))


if __name__ == "__main__":
    raise SystemExit(main())
