"""The daemon's answerer is the boundary for what the broker delivers: a message whose handling
fails in a way nobody foresaw costs that message, never the WebRTC task (every open link) or the
daemon (a review found four such crashes in one day: nested JSON, a NaN timestamp, a small-order
box key, a URL its driver refused). In memory: no broker, no aiortc (a hello needs neither)."""

from __future__ import annotations

import math
import time
from typing import cast

import nacl.signing
import pytest
import trio

from sidecode_trio.rtc.ice import IceServer
from sidecode_trio.rtc.peer import AsyncioThread
from sidecode_trio.rtc.rendezvous import Answerer
from sidecode_trio.rtc.signaling import SignalingBox, new_cid, topics
from sidecode_trio.wire.signaling import Hello, IceConfig

STUN = IceServer(urls=["stun:203.0.113.1:3478"])


class MemoryRendezvous:
    """A pub/sub in memory: what the answerer receives is what the test puts in."""

    def __init__(self) -> None:
        self.inbox_tx, self.inbox_rx = trio.open_memory_channel[tuple[str, bytes]](math.inf)
        self.published: list[tuple[str, bytes]] = []
        self.sent = trio.Event()

    async def subscribe(self, topic: str) -> None:
        pass

    async def unsubscribe(self, topic: str) -> None:
        pass

    async def publish(self, topic: str, payload: bytes) -> None:
        self.published.append((topic, payload))
        self.sent.set()

    async def receive(self) -> tuple[str, bytes]:
        return await self.inbox_rx.receive()


@pytest.mark.parametrize("where", ["other", "device_ice"])
async def test_a_message_whose_handling_fails_unforeseen_costs_that_message_only(
    where: str,
) -> None:
    daemon, device = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    device_pk, daemon_pk = bytes(device.verify_key), bytes(daemon.verify_key)
    the_topics = topics(b"t" * 32)
    broker = MemoryRendezvous()
    calls = 0

    def bug_once() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug nobody foresaw")

    async def other(_topic: str, _raw: bytes) -> bool:
        if where == "other":
            bug_once()
        return False

    def device_ice(_key: bytes, _now: float) -> list[IceServer]:
        if where == "device_ice":
            bug_once()
        return [STUN]

    answerer = Answerer(
        cast(AsyncioThread, None),  # a hello needs no peer connection
        broker,
        SignalingBox(daemon, lambda key: key == device_pk),
        daemon,
        lambda key: the_topics if key == device_pk else None,
        [STUN],
        device_ice,
        other=other,
    )
    phone = SignalingBox(device, lambda key: key == daemon_pk)
    first, second = Hello(new_cid()), Hello(new_cid())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(answerer.serve, lambda _link: trio.sleep_forever())
            for hello in (first, second):
                sealed = phone.seal(daemon_pk, hello, time.time())
                broker.inbox_tx.send_nowait((the_topics.to_daemon, sealed))
            await broker.sent.wait()  # the second hello is answered
            nursery.cancel_scope.cancel()
    assert answerer.failed == 1
    [(topic, payload)] = broker.published
    assert topic == the_topics.to_device
    reply = phone.open(payload, time.time()).message
    assert isinstance(reply, IceConfig)
    assert reply.cid == second.cid and reply.servers == [STUN]
