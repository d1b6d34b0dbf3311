"""WebTransport against a real daemon on 127.0.0.1: the example client, pinning, bounds, bad input.

The device side is ``examples/wt_client.py`` (on ``sidecode_trio.quic.client``), loaded as a module
so the tests drive exactly what a user runs.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import math
import os
import socket
import ssl
import sys
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent

from sidecode_trio.channel import frames as fr
from sidecode_trio.claude.translate import MAX_COALESCED
from sidecode_trio.config import DaemonConfig
from sidecode_trio.quic.client import (
    DeviceSession,
    PinError,
    QuicClient,
    RequestFailed,
    SessionClosed,
)
from sidecode_trio.quic.endpoint import Endpoint, unacknowledged
from sidecode_trio.security.pairing import RateLimiter

from helpers import Client, load_example, running_daemon

wt = load_example("wt_client")


async def offer(owner: Client, scope: str = "admin") -> dict[str, Any]:
    response = await owner.http.post("/v1/pairings", json={"scope": scope})
    assert response.status_code == 201, response.text
    payload: dict[str, Any] = response.json()["payload"]
    return payload


async def paired(owner: Client, scope: str = "admin", name: str = "laptop") -> Any:
    """A device paired over WebTransport from nothing but the pairing payload."""
    payload = await offer(owner, scope)
    async with trio.open_nursery() as nursery:
        credentials = await wt.pair(nursery, payload, name)
        nursery.cancel_scope.cancel()
    return wt.Device(credentials)


def endpoint(owner: Client) -> Endpoint:
    quic = owner.handle.quic
    assert isinstance(quic, Endpoint)
    return quic


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition of the daemon's state (no timing assertion: only a ceiling)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def next_event(stream: Any, *types: str) -> dict[str, Any]:
    with trio.fail_after(15):
        while True:
            message: dict[str, Any] = await stream.next()
            if message["type"] == "event" and message["data"]["event"]["type"] in types:
                return message


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


async def test_the_daemon_announces_its_webtransport_address(
    make_config: Callable[..., DaemonConfig], tmp_path: Path
) -> None:
    config = make_config(ready_file=tmp_path / "ready.json")
    async with running_daemon(config) as owner:
        port = owner.handle.quic_port
        url = f"https://127.0.0.1:{port}/v1/wt"
        assert port > 0
        assert json.loads((tmp_path / "ready.json").read_text())["quic"] == url
        assert (await owner.http.get("/v1/info")).json()["quic"] == [url]
        assert (await offer(owner))["quic"] == [url]
    async with running_daemon(make_config(quic_port=-1)) as owner:
        assert owner.handle.quic_port == 0
        assert (await owner.http.get("/v1/info")).json()["quic"] == []


async def test_python_client_drives_a_session_and_resumes_exactly(
    daemon: Client, work_dir: Path
) -> None:
    device = await paired(daemon)
    body = {"cwd": str(work_dir), "prompt": "[[bash:echo hi > hi.txt]]"}
    async with trio.open_nursery() as nursery:
        session = await device.connect(nursery)
        listed = await session.request("GET", "/v1/sessions")
        assert listed == {"sessions": []}
        audit = await session.request("GET", "/v1/audit?limit=1")  # the query reaches the route
        assert len(audit["entries"]) == 1
        status, refused = await session.call("GET", "/v1/events")
        assert (status, refused["error"]["code"]) == (400, "bad_request")  # subscribe to streams
        status, refused = await session.call("PUT", "/v1/sessions")
        assert (status, refused["error"]["code"]) == (405, "method_not_allowed")
        created = await session.request("POST", "/v1/sessions", body)
        session_id = created["session"]["id"]
        epoch = (await session.request("GET", f"/v1/sessions/{session_id}"))["epoch"]
        stream = await session.subscribe(f"/v1/sessions/{session_id}/events", f"{epoch}:0")
        asked = await next_event(stream, "permission.requested")
        request_id = asked["data"]["event"]["request_id"]
        path = f"/v1/sessions/{session_id}/permissions/{request_id}"
        assert await session.request("POST", path, {"behavior": "allow"}) == {"ok": True}
        status, again = await session.call("POST", path, {"behavior": "allow"})
        assert (status, again["error"]["code"]) == (409, "already_resolved")
        await next_event(stream, "turn.completed")
        assert (work_dir / "hi.txt").read_text() == "hi\n"
        await session.request(
            "POST", f"/v1/sessions/{session_id}/messages", {"text": "[[slow:30]]"}
        )
        await next_event(stream, "text.delta")
        await next_event(stream, "text.delta")
        last = stream.last_id
        assert last is not None
        await session.client.aclose()  # mid-turn, abruptly: no session close, the connection
        nursery.cancel_scope.cancel()

    await until(lambda: endpoint(daemon).statistics()["open"] == 0)
    resumed: list[dict[str, Any]] = []

    async def collect(_: DeviceSession, message: dict[str, Any]) -> bool:
        resumed.append(message)
        return bool(message.get("data", {}).get("event", {}).get("type") == "turn.completed")

    with trio.fail_after(20):
        final = await device.follow(session_id, collect, last)
    assert resumed[0]["type"] == "event", "an exact resume replays events, not a snapshot"
    cursors = [cursor(m) for m in resumed]
    assert cursors[0] == cursor({"id": last}) + 1
    assert cursors == list(range(cursors[0], cursors[0] + len(cursors)))  # no gap, no duplicate
    assert final == resumed[-1]["id"]
    async with daemon.events(session_id) as sse:  # the same events as HTTP/SSE delivers
        await sse.until(lambda e: e.id == final)
    by_sse = {e.id: e.data for e in sse.seen}
    assert all(by_sse[m["id"]] == m["data"] for m in resumed)


async def test_a_certificate_the_identity_did_not_sign_is_refused(
    make_config: Callable[..., DaemonConfig], tmp_path: Path
) -> None:
    async with (
        running_daemon(make_config()) as real,
        running_daemon(make_config(state_dir=tmp_path / "impostor")) as impostor,
    ):
        payload = await offer(real)
        # Someone else answers at the address the device knows: its certificate is signed by
        # another identity, so the client must refuse before anything secret is sent.
        payload["quic"] = [f"https://127.0.0.1:{impostor.handle.quic_port}/v1/wt"]
        async with trio.open_nursery() as nursery:
            with pytest.raises(PinError, match="not signed by the daemon's key"):
                await wt.pair(nursery, payload, "phone")
            nursery.cancel_scope.cancel()
        audit = (await impostor.http.get("/v1/audit")).json()["entries"]
        assert not [e for e in audit if e["kind"].startswith("pair")]  # no proof ever reached it


async def test_a_client_that_never_reads_is_dropped_with_bounded_memory(
    make_config: Callable[..., DaemonConfig], work_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecode_trio.channel.link")
    async with running_daemon(make_config(client_queue=64)) as owner:
        quic = endpoint(owner)
        quic.settings = attrs.evolve(
            quic.settings, link=attrs.evolve(quic.settings.link, high_water=64 * 1024)
        )
        limits = quic.settings.link.outbox
        device = await paired(owner)
        created = await owner.create(work_dir, "hello")
        session_id = created["session"]["id"]
        async with trio.open_nursery() as nursery:
            session = await device.connect(nursery)
            stream = await session.subscribe(f"/v1/sessions/{session_id}/events")
            assert (await stream.next())["type"] == "snapshot"
            session.client.stop_reading()  # the device's network stack stalls: no more acks
            # more than the bounds hold however the daemon coalesces it (see OVERFLOWING)
            await owner.send(session_id, OVERFLOWING)
            # a ceiling, not a timing: 20,000 deltas from a CLI slowed by a busy machine take time
            await until(
                lambda: quic.counts["connections"] == 2 and not quic.statistics()["open"], 90
            )
            nursery.cancel_scope.cancel()
        # dropped for lagging (not kept until the connection's idle timeout)
        drops = [r.getMessage() for r in caplog.records if "does not keep up" in r.getMessage()]
        assert len(drops) == 1, drops
        # Bounded: what the connection held unacknowledged stayed under the high-water mark
        # (plus one frame), and the outbox never held more than its limit per lane.
        assert quic.peak_buffered <= quic.settings.link.high_water + limits.inline_limit + 1024
        # It resumes exactly from what it last applied.
        resumed: list[dict[str, Any]] = []

        async def collect(_: DeviceSession, message: dict[str, Any]) -> bool:
            resumed.append(message)
            return bool(message.get("data", {}).get("event", {}).get("type") == "turn.completed")

        with trio.fail_after(30):
            await device.follow(session_id, collect, stream.last_id)
        assert cursor(resumed[0]) == cursor({"id": stream.last_id}) + 1
        cursors = [cursor(m) for m in resumed if m["type"] == "event"]
        assert cursors == list(range(cursors[0], cursors[0] + len(cursors)))


async def test_large_payloads_travel_on_their_own_streams(daemon: Client, work_dir: Path) -> None:
    device = await paired(daemon)
    big = "x" * 100_000
    created = await daemon.create(work_dir, big)
    async with trio.open_nursery() as nursery:
        session = await device.connect(nursery)
        stream = await session.subscribe(f"/v1/sessions/{created['session']['id']}/events")
        first = await stream.next()
        assert first["type"] == "snapshot"
        assert first["snapshot"]["items"][0]["text"] == big
        assert session.client.large_received == 1
        listed = await session.request("GET", "/v1/sessions")  # the control stream still flows
        assert len(listed["sessions"]) == 1
        await session.client.aclose()
        nursery.cancel_scope.cancel()


async def raw_session(nursery: trio.Nursery, owner: Client) -> QuicClient:
    return await QuicClient.connect(nursery, "127.0.0.1", owner.handle.quic_port)


async def test_bad_input_gets_error_frames_and_close_codes(daemon: Client) -> None:
    hello = {"type": "hello", "versions": [1]}
    async with trio.open_nursery() as nursery:
        # not hello first: closed
        client = await raw_session(nursery, daemon)
        client.send({"type": "auth", "device": "x", "signature": "y"})
        with pytest.raises(SessionClosed) as closed:
            await client.receive()
        assert closed.value.code == fr.CloseCode.PROTOCOL_ERROR
        # no version in common
        client = await raw_session(nursery, daemon)
        client.send({"type": "hello", "versions": [99]})
        assert (await client.receive())["code"] == "unsupported_version"
        with pytest.raises(SessionClosed) as closed:
            await client.receive()
        assert closed.value.code == fr.CloseCode.UNSUPPORTED_VERSION
        # requests before auth, bad JSON, unknown types: answered, and the session lives on
        client = await raw_session(nursery, daemon)
        client.send(hello)
        assert (await client.receive())["type"] == "welcome"
        client.send({"type": "request", "id": 7, "method": "GET", "path": "/v1/sessions"})
        reply = await client.receive()
        assert (reply["id"], reply["status"]) == (7, 401)
        client.send({"type": "subscribe", "id": 8, "path": "/v1/events"})
        assert (await client.receive())["status"] == 401
        client.send_raw(fr.frame(b"{not json"))
        assert (await client.receive())["code"] == "bad_frame"
        client.send({"type": "teleport", "id": 9})
        assert (await client.receive())["code"] == "unknown_type"
        client.send({"type": "request", "id": "x", "method": 1})
        assert (await client.receive())["code"] == "invalid_field"
        client.send({"type": "request", "id": 10, "method": "GET", "path": "/v1/info"})
        info = await client.receive()
        assert info["status"] == 200 and info["body"]["quic"]
        # a wrong signature: closed, unauthorized
        client.send({"type": "auth", "device": "dev_nobody", "signature": "AAAA"})
        assert (await client.receive())["code"] == "unauthorized"
        with pytest.raises(SessionClosed) as closed:
            await client.receive()
        assert closed.value.code == fr.CloseCode.UNAUTHORIZED
        # a frame over the limit: closed without reading it
        client = await raw_session(nursery, daemon)
        client.send(hello)
        await client.receive()
        client.send_raw(fr.HEADER.pack(1 << 30))
        with pytest.raises(SessionClosed) as closed:
            await client.receive()
        assert closed.value.code == fr.CloseCode.FRAME_TOO_LARGE
        # another path: refused before any session
        with pytest.raises(SessionClosed, match="status 404"):
            await QuicClient.connect(nursery, "127.0.0.1", daemon.handle.quic_port, path="/x")
        nursery.cancel_scope.cancel()
    assert (await daemon.http.get("/v1/info")).status_code == 200


async def test_junk_datagrams_and_abrupt_disconnects_leave_the_daemon_healthy(
    daemon: Client, work_dir: Path
) -> None:
    quic = endpoint(daemon)
    port = daemon.handle.quic_port
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
        for i in range(3000):
            size = (1, 20, 1200, 1500)[i % 4]
            await junk.sendto(os.urandom(size), ("127.0.0.1", port))
            await trio.sleep(0)  # let the daemon read (the kernel would drop a burst)
        # Long-header v1 INITIALs of garbage: a connection each, which never completes.
        for _ in range(20):
            await junk.sendto(b"\xc0\x00\x00\x00\x01\x08" + os.urandom(1300), ("127.0.0.1", port))
            await trio.sleep(0)
    await until(lambda: quic.counts["datagrams"] >= 2000)
    assert quic.counts["junk"] > 1000
    device = await paired(daemon)
    created = await daemon.create(work_dir, "[[slow:50]]")
    session_id = created["session"]["id"]
    with trio.fail_after(60):
        for _ in range(3):  # subscribe, then vanish without a word, three times
            async with trio.open_nursery() as nursery:
                session = await device.connect(nursery)
                stream = await session.subscribe(f"/v1/sessions/{session_id}/events")
                await stream.next()
                await session.client.aclose()
                nursery.cancel_scope.cancel()
        await until(lambda: not quic.statistics()["links"])  # every session ended, forgotten
        while (await daemon.http.get("/v1/status")).json()["log"]["subscribers"]:
            await trio.sleep(0.01)
        async with trio.open_nursery() as nursery:
            session = await device.connect(nursery)
            assert len((await session.request("GET", "/v1/sessions"))["sessions"]) == 1
            assert await session.ping() >= 0
            await session.client.aclose()
            nursery.cancel_scope.cancel()


async def test_revoking_a_device_closes_its_session(daemon: Client) -> None:
    device = await paired(daemon, "approve", "watch")
    async with trio.open_nursery() as nursery:
        session = await device.connect(nursery)
        stream = await session.subscribe("/v1/events")
        assert (await stream.next())["type"] == "sessions"
        status, body = await session.call("GET", "/v1/devices")
        assert (status, body["error"]["code"]) == (403, "scope_required")
        reply = (await daemon.http.delete(f"/v1/devices/{device.device_id}")).json()
        assert reply["closed_streams"] == 1
        with trio.fail_after(10):
            while session.client.closed is None or session.closing is None:
                await trio.sleep(0.01)
        assert session.client.closed[0] == fr.CloseCode.REVOKED
        assert session.closing["reason"] == "revoked"  # the last frame says why
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        with pytest.raises((RequestFailed, SessionClosed), match=r"unauthorized|401|revoked"):
            await device.connect(nursery)
        nursery.cancel_scope.cancel()


async def test_stopping_the_daemon_ends_streams_then_the_session(
    make_config: Callable[..., DaemonConfig], work_dir: Path
) -> None:
    async with running_daemon(make_config()) as owner:
        device = await paired(owner)
        created = await owner.create(work_dir, "hello")
        async with trio.open_nursery() as nursery:
            session = await device.connect(nursery)
            stream = await session.subscribe(f"/v1/sessions/{created['session']['id']}/events")
            await stream.next()
            owner.handle.stop.set()
            with trio.fail_after(15):
                while (await stream.next())["type"] != "end":
                    pass
                while session.client.closed is None:
                    await trio.sleep(0.01)
            assert session.client.closed[0] == fr.CloseCode.GOING_AWAY
            nursery.cancel_scope.cancel()


async def test_unacknowledged_bytes_are_what_the_connection_holds(daemon: Client) -> None:
    """The private aioquic state the bound rests on still means what we think it does."""
    async with trio.open_nursery() as nursery:
        client = await raw_session(nursery, daemon)
        assert client.control_stream is not None
        base = unacknowledged(client.quic)
        client.quic.send_stream_data(client.control_stream, b"z" * 5000)
        assert unacknowledged(client.quic) == base + 5000
        client.stop_reading()  # nothing will be acknowledged now
        client.send({"type": "hello", "versions": [1]})
        assert unacknowledged(client.quic) > base + 5000
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_the_example_command_line_pairs_and_lists(daemon: Client, work_dir: Path) -> None:
    link = (await daemon.http.post("/v1/pairings", json={"scope": "chat"})).json()["link"]
    await daemon.create(work_dir, "hello")
    store = work_dir.parent / "wt-credentials.json"
    example = str(Path(__file__).parent.parent / "examples" / "wt_client.py")
    base = [sys.executable, example, "--store", str(store)]
    with trio.fail_after(30):
        paired = await trio.run_process([*base, "pair", link, "--name", "cli"], capture_stdout=True)
        assert b"paired" in paired.stdout
        assert store.stat().st_mode & 0o777 == 0o600
        listed = await trio.run_process([*base, "sessions"], capture_stdout=True)
    assert b"hello" in listed.stdout  # the session, by its title


async def test_new_connections_get_the_rotated_certificate_announced_ahead(
    daemon: Client,
) -> None:
    device = await paired(daemon)
    store = endpoint(daemon).certificates
    assert store.current is not None
    first = store.current.sha256.hex()
    now = dt.datetime.now(dt.UTC)
    store.refresh(now + dt.timedelta(days=7, hours=1))  # a week left: the next one is made
    info = (await daemon.http.get("/v1/info")).json()
    announced = [c["sha256"] for c in info["certificates"]]
    assert announced[0] == first and len(announced) == 2  # clients learn the next hash now
    async with trio.open_nursery() as nursery:
        session = await device.connect(nursery)  # still the current certificate
        assert session.client.cert_sha256.hex() == first
        await session.client.aclose()
        store.refresh(now + dt.timedelta(days=12, hours=1))  # a day left: the next one takes over
        session = await device.connect(nursery)  # pinned and checked against the signed list
        assert session.client.cert_sha256.hex() == announced[1]
        assert session.welcome["cert"] == announced[1]
        await session.client.aclose()
        nursery.cancel_scope.cancel()


async def _refused_auth(owner: Client, device_id: str) -> str:
    """Authenticate a fresh WebTransport session as ``device_id`` with a junk signature; the
    error frame's message (the session is then closed as unauthorized)."""
    async with trio.open_nursery() as nursery:
        client = await raw_session(nursery, owner)
        client.send({"type": "hello", "versions": [1]})
        assert (await client.receive())["type"] == "welcome"
        client.send({"type": "auth", "device": device_id, "signature": "A" * 86})
        refused = await client.receive()
        assert refused["code"] == "unauthorized", refused
        with pytest.raises(SessionClosed) as closed:
            await client.receive()
        assert closed.value.code == fr.CloseCode.UNAUTHORIZED
        nursery.cancel_scope.cancel()
    return str(refused["message"])


async def test_a_watchcode_device_id_is_just_unauthorized_on_every_transport(
    daemon: Client,
) -> None:
    created = await daemon.http.post("/v1/devices/watchcode", json={"name": "wrist"})
    assert created.status_code == 201, created.text
    device_id = created.json()["device"]["id"]
    with trio.fail_after(20):
        assert "unknown or revoked" in await _refused_auth(daemon, device_id)
    payload = base64.urlsafe_b64encode(
        json.dumps({"dev": device_id, "iat": 1, "exp": 2, "cert": ""}).encode()
    ).decode()
    response = await daemon.http.get(
        "/v1/sessions", headers={"Authorization": f"Sidecode {payload}.AAAA"}
    )
    assert response.status_code == 401, response.text
    audit = (await daemon.http.get("/v1/audit")).json()["entries"]
    failed = [e["detail"] for e in audit if e["kind"] == "auth_failed"]
    assert any("on WebTransport" in detail for detail in failed), failed
    assert any("on /v1/sessions" in detail for detail in failed), failed


async def test_failures_on_both_transports_count_in_one_limit_and_never_lock_out_a_key(
    daemon: Client,
) -> None:
    device = await paired(daemon)
    guard = endpoint(daemon)._guard
    guard.auth_failures = RateLimiter(limit=4, window=3600.0, clock=trio.current_time)
    wrong = {"Authorization": "Bearer wrong"}
    with trio.fail_after(30):
        for _ in range(2):
            assert (await daemon.http.get("/v1/sessions", headers=wrong)).status_code == 401
        for _ in range(2):
            assert "does not verify" in await _refused_auth(daemon, device.device_id)
        # the limit is the address's, whichever transport spent it
        assert "too many failed attempts" in await _refused_auth(daemon, device.device_id)
        assert (await daemon.http.get("/v1/sessions", headers=wrong)).status_code == 429
        # credentials that verify still work from that address, on both transports
        assert (await daemon.http.get("/v1/sessions")).status_code == 200
        async with trio.open_nursery() as nursery:
            session = await device.connect(nursery)
            assert (await session.request("GET", "/v1/sessions")) == {"sessions": []}
            await session.client.aclose()
            nursery.cancel_scope.cancel()


async def test_before_authentication_frames_are_small(daemon: Client) -> None:
    device = await paired(daemon)
    big = {"cwd": "/nowhere", "prompt": "x" * (64 * 1024)}
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            client = await raw_session(nursery, daemon)
            client.send({"type": "hello", "versions": [1]})
            assert (await client.receive())["type"] == "welcome"
            client.send(
                {"type": "request", "id": 1, "method": "POST", "path": "/v1/pair", "body": big}
            )
            with pytest.raises(SessionClosed) as closed:
                await client.receive()
            assert closed.value.code == fr.CloseCode.FRAME_TOO_LARGE
            session = await device.connect(nursery)  # once authenticated, the big limit
            status, body = await session.call("POST", "/v1/sessions", big)
            assert (status, body["error"]["code"]) == (403, "path_not_allowed"), body
            await session.client.aclose()
            nursery.cancel_scope.cancel()


class BareQuic:
    """A QUIC client that does no more than a QUIC handshake (or only sends its INITIAL): what
    an attacker holding the endpoint's connection slots does."""

    def __init__(self, port: int) -> None:
        configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
        configuration.verify_mode = ssl.CERT_NONE
        self.quic = QuicConnection(configuration=configuration)
        self.quic.connect(("127.0.0.1", port), now=trio.current_time())
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.closed_with: int | None = None
        self.close = self.sock.close

    def initial(self) -> bytes:
        """The first datagram (a real, padded INITIAL)."""
        return self.quic.datagrams_to_send(now=trio.current_time())[0][0]

    async def _flush(self) -> None:
        for data, addr in self.quic.datagrams_to_send(now=trio.current_time()):
            await self.sock.sendto(data, addr)

    async def run_until(self, done: Callable[[QuicEvent], bool]) -> None:
        """Drive the connection until an event satisfies ``done``."""
        while True:
            await self._flush()
            timer = self.quic.get_timer()
            with trio.move_on_at(timer if timer is not None else math.inf):
                data, addr = await self.sock.recvfrom(65536)
                self.quic.receive_datagram(data, addr, now=trio.current_time())
            if timer is not None and trio.current_time() >= timer:
                self.quic.handle_timer(now=trio.current_time())
            while (event := self.quic.next_event()) is not None:
                if isinstance(event, ConnectionTerminated):
                    self.closed_with = event.error_code
                if done(event):
                    await self._flush()
                    return


async def test_handshakes_that_never_authenticate_give_their_slots_back(
    daemon: Client,
) -> None:
    quic = endpoint(daemon)
    device = await paired(daemon)
    await until(lambda: not quic.statistics()["open"])
    port = daemon.handle.quic_port

    def bare_clients(count: int, closing: ExitStack) -> list[BareQuic]:
        clients = [BareQuic(port) for _ in range(count)]
        for bare in clients:
            closing.callback(bare.close)
        return clients

    with trio.fail_after(60), ExitStack() as closing:
        # one address holds at most max_per_address connections
        quic.settings = attrs.evolve(quic.settings, max_per_address=3, auth_timeout=60.0)
        held = bare_clients(3, closing)
        for bare in held:
            await bare.run_until(lambda e: isinstance(e, HandshakeCompleted))
        (extra,) = bare_clients(1, closing)
        await extra.sock.sendto(extra.initial(), ("127.0.0.1", port))
        await until(lambda: quic.counts["refused"] == 1)
        for bare in held:
            bare.quic.close()
            await bare.run_until(lambda e: isinstance(e, ConnectionTerminated))
        await until(lambda: not quic.statistics()["open"])
        # a connection that does not authenticate in time is closed (before: at the idle
        # timeout, 60 s, or never with pings)
        quic.settings = attrs.evolve(quic.settings, auth_timeout=1.0)
        idle = bare_clients(3, closing)
        async with trio.open_nursery() as nursery:  # each driven as a real client would be
            for bare in idle:
                await bare.run_until(lambda e: isinstance(e, HandshakeCompleted))
                nursery.start_soon(bare.run_until, lambda e: isinstance(e, ConnectionTerminated))
        assert [bare.closed_with for bare in idle] == [fr.CloseCode.UNAUTHORIZED] * 3
        assert quic.counts["unauthenticated"] == 3
        await until(lambda: not quic.statistics()["open"])
        # one that authenticated is kept past its deadline (8 s: a real device's handshake,
        # hello and auth must fit in it on a loaded machine too)
        quic.settings = attrs.evolve(quic.settings, auth_timeout=8.0)
        async with trio.open_nursery() as nursery:
            session = await device.connect(nursery)
            (connection,) = quic._connections
            await until(lambda: connection._auth_by == math.inf)  # the deadline came
            assert quic.counts["unauthenticated"] == 3
            assert await session.request("GET", "/v1/sessions") == {"sessions": []}
            await session.client.aclose()
            nursery.cancel_scope.cancel()


async def test_a_flood_of_initials_gets_retries_not_slots(daemon: Client) -> None:
    quic = endpoint(daemon)
    device = await paired(daemon)
    await until(lambda: not quic.statistics()["open"])
    port = daemon.handle.quic_port
    with trio.fail_after(60):
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
            for _ in range(400):
                seen = quic.counts["datagrams"]
                bare = BareQuic(port)
                bare.close()  # only its INITIAL is sent, from the flood's socket
                await flood.sendto(bare.initial(), ("127.0.0.1", port))
                await until(partial(lambda seen: quic.counts["datagrams"] > seen, seen))
        pending = quic.settings.retry_above
        assert len(quic._connections) <= pending  # before: every slot, for 10 s
        assert quic.counts["retries"] >= 400 - pending and quic.counts["refused"] == 0
        async with trio.open_nursery() as nursery:  # a real client answers the Retry
            session = await device.connect(nursery)
            assert await session.request("GET", "/v1/sessions") == {"sessions": []}
            await session.client.aclose()
            nursery.cancel_scope.cancel()
        assert quic.counts["retries"] > 400 - pending
