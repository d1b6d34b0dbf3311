"""The aiortc bridge (sidecode_trio/rtc/peer.py) and the broker driver's edges, without a network:
aiortc is imported only when used, the aioice workaround holds, and the Trio <-> asyncio bridge
returns results, raises errors and cancels across the thread boundary."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading

import attrs
import nacl.signing
import pytest
import trio

from sidecode_trio.errors import ConfigError
from sidecode_trio.rtc.broker import RendezvousError, _parse_url, open_mqtt
from sidecode_trio.rtc.peer import STUN_RETRY, RtcError, open_asyncio_thread
from sidecode_trio.rtc.rendezvous import _checked_answer
from sidecode_trio.rtc.signaling import Answer, Offer, Refused, SignalingRefused, sign_fingerprints

import netlab

netlab.skip_unless_possible(lab=False)


def test_importing_the_rtc_package_does_not_import_aiortc_or_paho() -> None:
    code = (
        "import sys, sidecode_trio.rtc.rendezvous, sidecode_trio.daemon\n"
        "heavy = [m for m in ('aiortc', 'av', 'aioice', 'paho') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_the_asyncio_thread_applies_the_stun_retransmit_workaround() -> None:
    async with open_asyncio_thread():
        import aioice.stun

        assert aioice.stun.RETRY_RTO == STUN_RETRY


async def test_the_bridge_runs_coroutines_on_its_own_thread_and_returns_their_result() -> None:
    async def where(x: int) -> tuple[str, int]:
        await asyncio.sleep(0)
        return threading.current_thread().name, x * 2

    async with open_asyncio_thread() as aio:
        assert await aio.run(where, 21) == ("aiortc", 42)


async def test_an_error_on_the_asyncio_side_is_raised_in_trio() -> None:
    async def fails() -> None:
        raise ValueError("from asyncio")

    async with open_asyncio_thread() as aio:
        with pytest.raises(ValueError, match="from asyncio"):
            await aio.run(fails)


async def test_cancelling_the_trio_side_cancels_the_asyncio_task() -> None:
    started, cancelled = trio.Event(), trio.Event()

    async def forever() -> None:
        aio.to_trio(started.set)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            aio.to_trio(cancelled.set)
            raise

    async with open_asyncio_thread() as aio:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(aio.run, forever)
                await started.wait()
                nursery.cancel_scope.cancel()
            await cancelled.wait()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker.example:1884", ("mqtt", "broker.example", 1884, "/mqtt")),
        ("mqtts://broker.example", ("mqtts", "broker.example", 8883, "/mqtt")),
        ("wss://broker.example/ws", ("wss", "broker.example", 443, "/ws")),
    ],
)
def test_rendezvous_urls_are_parsed(url: str, expected: tuple[str, str, int, str]) -> None:
    assert _parse_url(url) == expected


@pytest.mark.parametrize("url", ["http://broker.example", "mqtt://", "broker.example:1883"])
def test_a_bad_rendezvous_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="rendezvous URL"):
        _parse_url(url)


def test_the_phone_refuses_an_answer_whose_fingerprints_the_daemon_did_not_sign() -> None:
    daemon = nacl.signing.SigningKey.generate()
    offer_sdp = "v=0\r\na=fingerprint:sha-256 01:02\r\n"
    offer = Offer("cid", offer_sdp, ["sha-256 01:02"], "unused")
    answer_sdp = "v=0\r\na=fingerprint:sha-256 AA:BB\r\n"
    fps, sig = sign_fingerprints(daemon, "daemon", "cid", answer_sdp, offer_sdp)
    good = Answer("cid", answer_sdp, fps, sig)
    assert _checked_answer(good, bytes(daemon.verify_key), offer) == good
    swapped = attrs.evolve(good, sdp=answer_sdp.replace("AA:BB", "AA:BC"))  # a MITM's cert
    stranger = nacl.signing.SigningKey.generate()
    _, stranger_sig = sign_fingerprints(stranger, "daemon", "cid", answer_sdp, offer_sdp)
    for bad in (swapped, attrs.evolve(good, fp_sig=stranger_sig)):
        with pytest.raises(SignalingRefused) as caught:
            _checked_answer(bad, bytes(daemon.verify_key), offer)
        assert caught.value.code == "fingerprint"
    with pytest.raises(SignalingRefused) as caught:
        _checked_answer(Refused("cid", "replayed", "no"), bytes(daemon.verify_key), offer)
    assert caught.value.code == "replayed"


async def test_an_unreachable_rendezvous_is_a_clear_error() -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with trio.fail_after(30), pytest.raises(RendezvousError, match="cannot reach"):
        async with open_mqtt(f"mqtt://127.0.0.1:{port}"):
            pass


async def test_a_failing_thread_setup_is_a_clear_error_not_a_hang() -> None:
    def fails() -> None:
        raise OSError("no such network namespace")

    with trio.fail_after(30), pytest.raises(RtcError, match="no such network namespace"):
        async with open_asyncio_thread(fails):
            pass
