"""Bad frames on a live WebTransport session (the pure control machine is fuzzed in
tests/test_fuzz_frames.py): each gets an error frame and the session lives on, until too many
close it with a code; the daemon keeps serving other sessions and HTTP."""

from __future__ import annotations

import json
import random

import pytest
import trio

from sidecode_trio.channel import frames as fr
from sidecode_trio.channel.control import MAX_ERRORS
from sidecode_trio.quic.client import QuicClient, SessionClosed

from helpers import Client

HELLO = {"type": "hello", "versions": [1]}


def bad_payloads(seed: int) -> list[bytes]:
    """One error frame each, no more than the machine tolerates (MAX_ERRORS)."""
    rng = random.Random(seed)
    fixed = [
        b"{not json",
        b"\xff\xfe\x00",  # not UTF-8
        b"[" * 5000 + b"]" * 5000,  # deeper than json.loads recurses (was an uncaught error)
        b"null",
        b'"a string"',
        b"[1, 2]",
        b'{"type": "teleport", "id": 3}',
        b'{"type": "request", "id": "x", "method": 1}',
        b'{"type": "request", "id": 1, "method": [], "path": {}}',
        b'{"type": "subscribe", "id": 1.5, "path": null}',
        b'{"type": "hello", "versions": "1"}',
        b'{"type": "auth"}',
        b'{"type": "unsubscribe", "id": 4}',  # not expected before authentication
    ]
    noise = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) for _ in range(3)]
    payloads = fixed + [b"\xff" + n for n in noise]  # never valid JSON
    assert len(payloads) <= MAX_ERRORS
    return payloads


async def read_until_closed(client: QuicClient) -> None:
    while True:
        message = await client.receive()
        assert message["type"] in ("error", "close"), message


@pytest.mark.parametrize("seed", [1, 2])
async def test_bad_frames_on_a_live_session_are_answered_then_closed(
    daemon: Client, seed: int
) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            client = await QuicClient.connect(nursery, "127.0.0.1", daemon.handle.quic_port)
            client.send(HELLO)
            assert (await client.receive())["type"] == "welcome"
            for payload in bad_payloads(seed):
                client.send_raw(fr.frame(payload))
                answer = await client.receive()
                assert answer["type"] == "error", (payload[:40], answer)
                assert isinstance(answer["code"], str) and isinstance(answer["message"], str)
            client.send({"type": "request", "id": 99, "method": "GET", "path": "/v1/info"})
            reply = await client.receive()
            assert (reply["id"], reply["status"]) == (99, 200), "the session died early"
            for _ in range(MAX_ERRORS + 2):  # past the limit, whatever was counted so far
                client.send_raw(fr.frame(b"{"))
            with pytest.raises(SessionClosed) as closed:
                await read_until_closed(client)
            assert closed.value.code == fr.CloseCode.PROTOCOL_ERROR
            again = await QuicClient.connect(nursery, "127.0.0.1", daemon.handle.quic_port)
            again.send(HELLO)
            assert (await again.receive())["type"] == "welcome"
            await again.aclose()
            nursery.cancel_scope.cancel()
        info = await daemon.http.get("/v1/info")
        assert info.status_code == 200 and json.loads(info.text)["quic"]
