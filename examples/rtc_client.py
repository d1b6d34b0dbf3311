#!/usr/bin/env python3
"""A paired device that reaches the daemon from anywhere: WebRTC through the signaling broker.

::

    python examples/pair_client.py pair 'sidecode-trio://pair#...' --name "my laptop"
    python examples/rtc_client.py sessions
    python examples/rtc_client.py new ~/project "run the tests"
    python examples/rtc_client.py follow SESSION_ID --approve ask     # or allow / deny / no
    python examples/rtc_client.py send SESSION_ID "now fix them"

Pair once with ``pair_client.py`` on the daemon's network (its credentials carry the broker's URL
and the device's rendezvous secret; the daemon must run with ``serve --rendezvous URL``). Then
this client needs no route to the daemon: it sends a sealed ``hello`` to the device's topic on
the broker, gets the ICE servers (STUN, TURN credentials minted for it), and exchanges an offer
and an answer whose DTLS fingerprints are signed by the device's and the daemon's keys. Over the
open DataChannel it speaks the same protocol as WebTransport (``wt_client.py``): hello, then
``auth`` signing the daemon's nonce and its DTLS certificate's hash. ``follow`` resumes exactly
after a dropped link. Needs the rtc extra (``pip install 'sidecode-trio[rtc]'``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nacl.signing
import trio
from _common import add_session_commands, answer, describe, parse_args, run_command

from sidecode_trio.rtc.client import DeviceSession, LinkCarrier, SessionClosed, open_session
from sidecode_trio.rtc.peer import RtcError, open_asyncio_thread
from sidecode_trio.rtc.pubsub import open_rendezvous
from sidecode_trio.rtc.rendezvous import dial
from sidecode_trio.rtc.signaling import SignalingBox, SignalingRefused, topics
from sidecode_trio.security.identity import unb64

DEFAULT_STORE = Path.home() / ".config" / "sidecode-trio-client.json"  # pair_client.py's
DIAL_TIMEOUT = 30.0  # ICE through two NATs, or over TURN, takes a few seconds at most
RECONNECT_DELAY = 1.0


class Device:
    """A paired device that dials the daemon through the broker."""

    def __init__(self, credentials: dict[str, Any]) -> None:
        rendezvous = credentials.get("rendezvous") or {}
        if not rendezvous.get("url"):
            raise SystemExit(
                "these credentials have no broker: the daemon runs without --rendezvous"
            )
        self.url: str = rendezvous["url"]
        self.topics = topics(unb64(rendezvous["secret"]))
        self.daemon_key = unb64(credentials["daemon"]["public_key"])
        self.device_id: str = credentials["device"]["id"]
        self.key = nacl.signing.SigningKey(unb64(credentials["device"]["seed"]))

    @asynccontextmanager
    async def connected(self) -> AsyncIterator[Any]:
        """The aiortc thread and the broker connection, for as many links as needed."""
        async with open_asyncio_thread() as aio, open_rendezvous(self.url) as broker:
            await broker.subscribe(self.topics.to_device)
            yield lambda nursery: self._connect(nursery, aio, broker)

    async def _connect(
        self, nursery: trio.Nursery, aio: Any, broker: Any
    ) -> tuple[DeviceSession, LinkCarrier]:
        daemon = self.daemon_key
        box = SignalingBox(self.key, lambda key: key == daemon)
        with trio.fail_after(DIAL_TIMEOUT):
            link = await dial(aio, broker, box, self.key, daemon, self.topics)
            session, carrier = await open_session(nursery, link, "rtc_client.py")
            try:
                await session.authenticate(self.device_id, self.key)
            except BaseException:
                await carrier.aclose()
                raise
        return session, carrier


async def follow(device: Device, args: argparse.Namespace) -> None:
    """Stream a session, answering permission requests; after a drop, dial again and resume
    from the last event printed (exactly: no gap, no duplicate)."""
    since: str | None = args.since
    async with device.connected() as connect:
        while True:
            async with trio.open_nursery() as nursery:  # this link's tasks
                try:
                    session, carrier = await connect(nursery)
                    path = f"/v1/sessions/{args.session_id}/events"
                    stream = await session.subscribe(path, since)
                    while True:
                        message = await stream.next()
                        since = stream.last_id or since
                        print(describe(message), end="", flush=True)
                        await answer(session, args, message)
                        if message["type"] == "end":
                            await carrier.aclose()
                            return
                except (SessionClosed, RtcError, SignalingRefused, trio.TooSlowError) as exc:
                    print(f"-- disconnected ({exc}); resuming from {since}", file=sys.stderr)
                finally:
                    nursery.cancel_scope.cancel()
            await trio.sleep(RECONNECT_DELAY)


async def run(args: argparse.Namespace) -> int:
    device = Device(json.loads(args.store.read_text()))
    if args.command == "follow":
        await follow(device, args)
        return 0
    async with device.connected() as connect, trio.open_nursery() as nursery:
        session, carrier = await connect(nursery)
        await run_command(session, args)
        await carrier.aclose()
        nursery.cancel_scope.cancel()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="a paired sidecode-trio device (WebRTC)")
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE, help="pair_client.py's file")
    add_session_commands(parser)
    return trio.run(run, parse_args(parser))


if __name__ == "__main__":
    raise SystemExit(main())
