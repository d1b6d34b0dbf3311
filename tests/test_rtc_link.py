"""The framed protocol over a DataChannel (issue 17 #1), against the whole daemon and a real
mosquitto on loopback: a phone paired over HTTPS dials through the broker, authenticates on the
pinned link, drives a session of the fake CLI (a tool approved), drops the link mid-turn and
resumes exactly; a link cannot authenticate as another device than the one whose key pinned it;
revoking the device cuts its link; a phone that stops reading is dropped (``bufferedAmount`` is
the back-pressure) and resumes exactly. The same over two NATs, STUN and TURN: test_rtc_lab.py.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from test_rtc_daemon import broker, until

from sidecode_trio import daemon as daemon_module
from sidecode_trio.channel import frames as fr
from sidecode_trio.channel.client import Subscription
from sidecode_trio.claude.translate import MAX_COALESCED
from sidecode_trio.config import DaemonConfig
from sidecode_trio.rtc.broker import open_mqtt
from sidecode_trio.rtc.client import DeviceSession, LinkCarrier, SessionClosed, open_session
from sidecode_trio.rtc.peer import AsyncioThread, open_asyncio_thread
from sidecode_trio.rtc.rendezvous import dial
from sidecode_trio.rtc.settings import RtcSettings
from sidecode_trio.rtc.signaling import topics
from sidecode_trio.security.identity import unb64

from helpers import Client, Phone, load_example, running_daemon

__all__ = ["broker"]  # the fixture, imported
EXAMPLES = Path(__file__).parent.parent / "examples"
pc = load_example("pair_client")


@attrs.define
class Dialer:
    """A paired phone with its own aiortc thread and broker connection."""

    phone: Phone
    aio: AsyncioThread
    broker: Any

    @property
    def device_id(self) -> str:
        return str(self.phone.credentials["device"]["id"])

    async def connect(
        self, nursery: trio.Nursery, authenticate: bool = True
    ) -> tuple[DeviceSession, LinkCarrier]:
        the_topics = topics(unb64(self.phone.credentials["rendezvous"]["secret"]))
        link = await dial(
            self.aio, self.broker, self.phone.box(), self.phone.key, self.phone.daemon_key,
            the_topics,
        )  # fmt: skip
        session, carrier = await open_session(nursery, link, "test")
        if authenticate:
            await session.authenticate(self.device_id, self.phone.key)
        return session, carrier


@asynccontextmanager
async def phone_of(
    owner: Client,
    broker_url: str,
    scope: str = "admin",
    setup: Callable[[], None] | None = None,
) -> AsyncIterator[Dialer]:
    """A phone paired over HTTPS; ``setup`` runs first on its aiortc and MQTT threads (the
    network lab moves them into the phone's namespace)."""
    offer = (await owner.http.post("/v1/pairings", json={"scope": scope})).json()
    phone = Phone(await trio.to_thread.run_sync(pc.pair, offer["payload"], "phone"))
    the_topics = topics(unb64(phone.credentials["rendezvous"]["secret"]))
    async with open_asyncio_thread(setup) as aio, open_mqtt(broker_url, setup) as phone_broker:
        await phone_broker.subscribe(the_topics.to_device)
        yield Dialer(phone, aio, phone_broker)


def rtc_config(make_config: Callable[..., DaemonConfig], broker_url: str) -> DaemonConfig:
    rtc = RtcSettings(rendezvous=broker_url, stun=(), ping_interval=1.0, ping_misses=30)
    return make_config(https=True, rtc=rtc)


async def next_event(stream: Any, *types: str) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = await stream.next()
        if message["type"] == "event" and message["data"]["event"]["type"] in types:
            return message


def turn_completed(message: dict[str, Any]) -> bool:
    return bool(message.get("data", {}).get("event", {}).get("type") == "turn.completed")


# A turn that overflows a stalled client's bounds (the connection's high-water mark and the
# queues of ``client_queue`` frames) however its deltas arrive: the daemon coalesces the text
# deltas of one read into events of up to MAX_COALESCED characters, and on a loaded machine it
# reads the CLI's output in large pieces. 20,000 deltas of "tok " (80 KB) then made as few as
# ~120 events, which the bounds held: no drop for lagging, and the stalled client stayed until
# its connection timed out. 800 KB of text is at least ~780 events, whatever the pieces.
OVERFLOWING = "[[fast:20000:40]]"
assert 20_000 * 40 // MAX_COALESCED > 700


def cursor(message: dict[str, Any]) -> int:
    return int(message["id"].rpartition(":")[2])


async def approved_turn(
    session: DeviceSession, work_dir: Path, prompt: str
) -> tuple[str, Subscription]:
    """Over a link: create a session in `work_dir` with `prompt` (one that asks for a tool),
    follow its events from the start, allow the tool and wait until the turn completed.
    Returns the session's id and its stream, still open for what comes next."""
    body = {"cwd": str(work_dir), "prompt": prompt}
    created = await session.request("POST", "/v1/sessions", body)
    session_id: str = created["session"]["id"]
    epoch = (await session.request("GET", f"/v1/sessions/{session_id}"))["epoch"]
    stream = await session.subscribe(f"/v1/sessions/{session_id}/events", f"{epoch}:0")
    asked = await next_event(stream, "permission.requested")
    request_id = asked["data"]["event"]["request_id"]
    permission = f"/v1/sessions/{session_id}/permissions/{request_id}"
    assert await session.request("POST", permission, {"behavior": "allow"}) == {"ok": True}
    await next_event(stream, "turn.completed")
    return session_id, stream


async def revoked_while_following(
    owner: Client, device_id: str, session: DeviceSession, carrier: LinkCarrier, session_id: str
) -> None:
    """The device following `session_id` over its link is revoked: the daemon cuts the link as
    "revoked", and the session can ask nothing more."""
    stream = await session.subscribe(f"/v1/sessions/{session_id}/events")
    assert (await stream.next())["type"] == "snapshot"
    response = await owner.http.delete(f"/v1/devices/{device_id}")
    assert response.status_code == 200, response.text
    service = owner.handle.rtc
    await until(lambda: carrier.closed is not None)
    await until(lambda: service.links() == 0)
    assert service.closed[-1].code == "revoked"
    with pytest.raises(SessionClosed):
        await session.request("GET", "/v1/sessions")


async def output_until_turn_completed(proc: trio.Process) -> bytes:
    """What `rtc_client.py follow` printed up to its `[turn.completed]` line; the process is
    ended either way."""
    output = b""
    try:
        assert proc.stdout is not None
        while b"[turn.completed]" not in output:
            chunk = await proc.stdout.receive_some(4096)
            assert chunk, output
            output += chunk
    finally:
        proc.terminate()
        await proc.wait()
    return output


async def test_a_phone_drives_a_session_over_the_datachannel_and_resumes_exactly(
    make_config: Callable[..., DaemonConfig], broker: str, work_dir: Path
) -> None:
    async with running_daemon(rtc_config(make_config, broker)) as owner:
        service = owner.handle.rtc
        with trio.fail_after(60):
            async with phone_of(owner, broker) as phone:
                await until(lambda: service.subscribed() == [phone.device_id])
                async with trio.open_nursery() as nursery:
                    session, carrier = await phone.connect(nursery)
                    assert session.welcome["inline_limit"] > 1 << 30  # no "large" frames here
                    assert await session.request("GET", "/v1/sessions") == {"sessions": []}
                    prompt = "[[bash:echo hi > hi.txt]]"
                    session_id, stream = await approved_turn(session, work_dir, prompt)
                    assert (work_dir / "hi.txt").read_text() == "hi\n"
                    text = {"text": "[[slow:30]]"}
                    await session.request("POST", f"/v1/sessions/{session_id}/messages", text)
                    await next_event(stream, "text.delta")
                    await next_event(stream, "text.delta")
                    last = stream.last_id
                    assert last is not None
                    await carrier.aclose()  # mid-turn, abruptly: the peer connection goes
                    nursery.cancel_scope.cancel()
                await until(lambda: service.links() == 0)
                assert service.closed[-1].code == "closed"

                resumed: list[dict[str, Any]] = []
                async with trio.open_nursery() as nursery:
                    session, carrier = await phone.connect(nursery)
                    stream = await session.subscribe(f"/v1/sessions/{session_id}/events", last)
                    while True:
                        message = await stream.next()
                        resumed.append(message)
                        if turn_completed(message):
                            break
                    await carrier.aclose()
                    nursery.cancel_scope.cancel()
        assert resumed[0]["type"] == "event", "an exact resume replays events, not a snapshot"
        cursors = [cursor(m) for m in resumed]
        assert cursors[0] == cursor({"id": last}) + 1
        assert cursors == list(range(cursors[0], cursors[0] + len(cursors)))  # no gap, no dup


async def test_a_link_authenticates_only_as_the_device_whose_key_pinned_it(
    make_config: Callable[..., DaemonConfig], broker: str
) -> None:
    async with running_daemon(rtc_config(make_config, broker)) as owner:
        with trio.fail_after(60):
            async with phone_of(owner, broker) as phone, phone_of(owner, broker) as other:
                await until(lambda: len(owner.handle.rtc.subscribed()) == 2)
                async with trio.open_nursery() as nursery:
                    session, carrier = await phone.connect(nursery, authenticate=False)
                    # the other device's own key and id: a valid signature, the wrong link
                    with pytest.raises(Exception, match="another device's key"):
                        await session.authenticate(other.device_id, other.phone.key)
                    await until(lambda: carrier.closed is not None)
                    nursery.cancel_scope.cancel()
        audit = (await owner.http.get("/v1/audit?limit=5")).json()["entries"]
        assert any("on WebRTC" in str(entry) for entry in audit), audit


async def test_revoking_a_device_cuts_its_authenticated_link(
    make_config: Callable[..., DaemonConfig], broker: str, work_dir: Path
) -> None:
    async with running_daemon(rtc_config(make_config, broker)) as owner:
        service = owner.handle.rtc
        created = await owner.create(work_dir, "hello")
        session_id = created["session"]["id"]
        with trio.fail_after(60):
            async with phone_of(owner, broker) as phone:
                await until(lambda: service.subscribed() == [phone.device_id])
                async with trio.open_nursery() as nursery:
                    session, carrier = await phone.connect(nursery)
                    await revoked_while_following(
                        owner, phone.device_id, session, carrier, session_id
                    )
                    nursery.cancel_scope.cancel()


async def test_stopping_the_daemon_ends_streams_then_closes_the_link_going_away(
    make_config: Callable[..., DaemonConfig], broker: str, work_dir: Path
) -> None:
    """As WebTransport (test_quic): the device sees its turns end, then ``going_away``, and
    knows to dial again at once rather than wait for the keep-alive to give up."""
    async with running_daemon(rtc_config(make_config, broker)) as owner:
        service = owner.handle.rtc
        created = await owner.create(work_dir, "hello")
        with trio.fail_after(60):
            async with phone_of(owner, broker) as phone:
                await until(lambda: service.subscribed() == [phone.device_id])
                async with trio.open_nursery() as nursery:
                    session, carrier = await phone.connect(nursery)
                    stream = await session.subscribe(
                        f"/v1/sessions/{created['session']['id']}/events"
                    )
                    assert (await stream.next())["type"] == "snapshot"
                    owner.handle.stop.set()
                    while (await stream.next())["type"] != "end":
                        pass
                    await until(lambda: carrier.closed is not None)
                    assert carrier.closed == (fr.CloseCode.GOING_AWAY, "going_away")
                    await until(lambda: bool(service.closed))
                    assert [closed.code for closed in service.closed] == ["going_away"]
                    nursery.cancel_scope.cancel()


async def test_a_phone_that_stops_reading_is_dropped_and_resumes_exactly(
    make_config: Callable[..., DaemonConfig],
    broker: str,
    work_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Back-pressure is aiortc's ``bufferedAmount``: a phone whose network stack stalls (its
    aiortc loop blocked: no SCTP acknowledgements) fills the daemon's queue, which is bounded;
    the link is dropped with ``lagging`` and the phone resumes exactly."""
    config = attrs.evolve(rtc_config(make_config, broker), client_queue=64)
    serving = daemon_module.rtc_sessions

    def small_high_water(requests: Any, ops: Any, guard: Any, settings: Any) -> Any:
        # a smaller bound fills sooner (as in test_quic)
        return serving(requests, ops, guard, attrs.evolve(settings, high_water=64 * 1024))

    monkeypatch.setattr(daemon_module, "rtc_sessions", small_high_water)
    async with running_daemon(config) as owner:
        service = owner.handle.rtc
        created = await owner.create(work_dir, "hello")
        session_id = created["session"]["id"]
        unblock = threading.Event()
        with trio.fail_after(120):
            async with phone_of(owner, broker) as phone:
                await until(lambda: service.subscribed() == [phone.device_id])
                try:
                    async with trio.open_nursery() as nursery:
                        session, carrier = await phone.connect(nursery)
                        stream = await session.subscribe(f"/v1/sessions/{session_id}/events")
                        assert (await stream.next())["type"] == "snapshot"
                        phone.aio.call_soon(unblock.wait, 100)  # the phone's stack stalls
                        # more than the bounds hold, however coalesced (see OVERFLOWING)
                        await owner.send(session_id, OVERFLOWING)
                        await until(lambda: bool(service.closed))
                        nursery.cancel_scope.cancel()
                finally:
                    unblock.set()
                assert service.closed[-1].code == "lagging", service.closed
                first_drop = stream.last_id
                assert first_drop is not None
                # the phone resumes from where it was, again after each drop: on a loaded machine
                # the turn may still be streaming faster than the resumed phone reads, and the
                # daemon drops it for lagging again, which is the bound doing its job
                resumed: list[dict[str, Any]] = []
                last: str | None = first_drop
                while not resumed or not turn_completed(resumed[-1]):
                    async with trio.open_nursery() as nursery:
                        session, carrier = await phone.connect(nursery)
                        stream = await session.subscribe(f"/v1/sessions/{session_id}/events", last)
                        with contextlib.suppress(SessionClosed):
                            while not resumed or not turn_completed(resumed[-1]):
                                message = await stream.next()
                                assert message["type"] != "snapshot", "a resume is exact"
                                if message["type"] == "event":
                                    resumed.append(message)
                        last = stream.last_id
                        await carrier.aclose()
                        nursery.cancel_scope.cancel()
        assert cursor(resumed[0]) == cursor({"id": first_drop}) + 1
        cursors = [cursor(m) for m in resumed]
        assert cursors == list(range(cursors[0], cursors[0] + len(cursors)))


async def test_the_example_rtc_client_drives_a_session_knowing_only_its_pairing(
    make_config: Callable[..., DaemonConfig], broker: str, work_dir: Path, tmp_path: Path
) -> None:
    async with running_daemon(rtc_config(make_config, broker)) as owner:
        offer = (await owner.http.post("/v1/pairings", json={"scope": "admin"})).json()
        credentials = await trio.to_thread.run_sync(pc.pair, offer["payload"], "laptop")
        store = tmp_path / "client.json"
        store.write_text(json.dumps(credentials))
        await until(lambda: len(owner.handle.rtc.subscribed()) == 1)
        example = [sys.executable, str(EXAMPLES / "rtc_client.py"), "--store", str(store)]
        with trio.fail_after(90):
            created = await trio.run_process(
                [*example, "new", str(work_dir), "[[bash:echo hi > hi.txt]]"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert created.returncode == 0, created.stderr.decode()
            session_id = created.stdout.decode().strip()
            epoch = (await owner.http.get(f"/v1/sessions/{session_id}")).json()["epoch"]
            # it follows until the stream ends: stopped once the turn completed
            proc = await trio.lowlevel.open_process(
                [*example, "follow", session_id, "--approve", "allow", f"--since={epoch}:0"],
                stdout=subprocess.PIPE,
            )
            output = await output_until_turn_completed(proc)
        assert b"[permission.requested]" in output
        assert (work_dir / "hi.txt").read_text() == "hi\n"  # the tool ran: it was approved
