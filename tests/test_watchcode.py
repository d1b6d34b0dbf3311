"""The WatchCode-compatible routes, driven exactly the way WatchCode's Swift watch client does.

``Services/RelayClient.swift`` (``reference/anchors-seeds.md`` §6.5): POST /api/connect, then
read the SSE stream's ``data:`` lines; send messages and interrupts with the connection id; on a
broken stream wait and re-POST /api/connect (keeping the events it already shows); DELETE the
connection when the view goes away. Every request carries ``x-watchcode-secret``.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio
import trio.testing

from sidecode_trio.eventlog.core import Position
from sidecode_trio.http import direct, watchcode
from sidecode_trio.http.watchcode import REWIND

from helpers import Client, SSEEvent, SSEStream, open_sse, running_daemon

pytestmark = pytest.mark.trio


async def watch_device(daemon: Client, scope: str = "chat", name: str = "Apple Watch") -> str:
    reply = await daemon.http.post("/v1/devices/watchcode", json={"name": name, "scope": scope})
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["device"]["kind"] == "secret" and body["device"]["scope"] == scope
    return str(body["secret"])


@asynccontextmanager
async def relay(
    daemon: Client, secret: str, timeout: float = 10
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that, like the watch, carries only the WatchCode secret."""
    headers = {"x-watchcode-secret": secret}
    url = daemon.handle.url
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout) as http:
        yield http


@asynccontextmanager
async def stream_of(
    daemon: Client, secret: str, session_id: str, connection_id: str, **headers: str
) -> AsyncIterator[SSEStream]:
    path = f"/api/sessions/{session_id}/events?connectionId={connection_id}"
    async with open_sse(daemon, path, {"x-watchcode-secret": secret, **headers}) as stream:
        opened = await stream.next()
        assert opened.data["type"] == "status" and opened.data["content"] == "SSE stream opened"
        yield stream


async def connect(http: httpx.AsyncClient, session_id: str) -> str:
    reply = await http.post("/api/connect", json={"sessionId": session_id})
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "connected"
    return str(reply.json()["connectionId"])


async def until_content(stream: SSEStream, kind: str, content: str) -> dict[str, Any]:
    event = await stream.until(lambda e: e.data["type"] == kind and e.data["content"] == content)
    return event.data


async def wait_streams(http: httpx.AsyncClient, connection_id: str, count: int) -> None:
    """Until the daemon has noticed the stream change (the watch waits 2 s; we ask instead)."""
    while True:
        connections = (await http.get("/api/status")).json()["connections"]
        mine = [c for c in connections if c["connectionId"] == connection_id]
        if (mine[0]["sseClients"] if mine else 0) == count:
            return
        await trio.sleep(0.02)


async def test_a_watch_session_round_trip_without_duplicates(
    daemon: Client, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = WallClock(monkeypatch)
    secret = await watch_device(daemon)
    created = await daemon.create(work_dir, "hello watch")
    sid = created["session"]["id"]
    with trio.fail_after(30):
        async with relay(daemon, secret) as http:
            sessions = (await http.get("/api/sessions")).json()["sessions"]
            assert [(s["id"], s["title"]) for s in sessions] == [(sid, "hello watch")]
            assert {"status", "model", "createdAt", "updatedAt"} <= set(sessions[0])
            cid = await connect(http, sid)
            async with stream_of(daemon, secret, sid, cid) as stream:
                await until_content(stream, "user", "hello watch")  # the history
                await until_content(stream, "assistant", "You said: hello watch")
                # the first turn's end: a message sent during it is queued, and its turn then
                # starts with no "Running" of its own (the session never stopped running)
                await until_content(stream, "status", "Idle")
                sent = await http.post(
                    f"/api/sessions/{sid}/message",
                    json={"content": "[[slow:400]]", "connectionId": cid},
                )
                assert sent.json() == {"status": "sent"}
                await until_content(stream, "user", "[[slow:400]]")
                await stream.until(
                    lambda e: e.data["type"] == "status" and e.data["content"] == "Running"
                )
                interrupted = await http.post(
                    f"/api/sessions/{sid}/control", json={"type": "interrupt", "connectionId": cid}
                )
                assert interrupted.json() == {"status": "sent"}
                await until_content(stream, "status", "Interrupted")
                # the last frame before the break: one written later may not have been read,
                # and the retry would rightly repeat it (its first frame would not be "after")
                await until_content(stream, "status", "Idle")
                before = [e.data for e in stream.seen]
                # it read all that long ago: the retry steps back less (REWIND)
                await clock.advance(100)
            # The stream broke (the watch lost signal); it re-connects, as RelayClient does.
            await wait_streams(http, cid, 0)
            again = await connect(http, sid)
            async with stream_of(daemon, secret, sid, again) as stream:
                await http.post(
                    f"/api/sessions/{sid}/message", json={"content": "after", "connectionId": again}
                )
                first = await stream.next()
                assert (first.data["type"], first.data["content"]) == ("user", "after")
                await until_content(stream, "assistant", "You said: after")
            # A user-initiated disconnect, then connect: the whole history again (the watch
            # cleared its list first).
            gone = await http.delete(f"/api/connections/{again}")
            assert gone.json() == {"status": "disconnected"}
            fresh = await connect(http, sid)
            async with stream_of(daemon, secret, sid, fresh) as stream:
                history = await until_content(stream, "user", "hello watch")
                assert history["timestamp"].endswith("Z")
        texts = [d["content"] for d in before if d["type"] == "user"]
        assert texts == ["hello watch", "[[slow:400]]"]  # each once


async def test_two_watches_on_one_session_do_not_kick_each_other(
    daemon: Client, work_dir: Path
) -> None:
    first_secret = await watch_device(daemon, name="left wrist")
    second_secret = await watch_device(daemon, name="right wrist")
    sid = (await daemon.create(work_dir))["session"]["id"]
    with trio.fail_after(20):
        async with relay(daemon, first_secret) as one, relay(daemon, second_secret) as two:
            first_cid, second_cid = await connect(one, sid), await connect(two, sid)
            async with (
                stream_of(daemon, first_secret, sid, first_cid) as left,
                stream_of(daemon, second_secret, sid, second_cid) as right,
            ):
                await one.post(f"/api/sessions/{sid}/message", json={"content": "both see this"})
                for stream in (left, right):
                    await until_content(stream, "assistant", "You said: both see this")
            # Each device sees only its own connections; the second one cannot close the first's.
            mine = (await one.get("/api/status")).json()["connections"]
            assert [c["connectionId"] for c in mine] == [first_cid]
            assert (await two.delete(f"/api/connections/{first_cid}")).status_code == 404


async def test_last_event_id_resumes_an_event_source_exactly(
    daemon: Client, work_dir: Path
) -> None:
    secret = await watch_device(daemon)
    sid = (await daemon.create(work_dir, "one"))["session"]["id"]
    with trio.fail_after(20):
        async with relay(daemon, secret) as http:
            cid = await connect(http, sid)
            async with stream_of(daemon, secret, sid, cid) as stream:
                await until_content(stream, "assistant", "You said: one")
                await until_content(stream, "status", "Idle")
                last = stream.last_id
            assert last is not None
            await daemon.send(sid, "two")
            async with stream_of(daemon, secret, sid, cid, **{"Last-Event-ID": last}) as stream:
                first = await stream.next()
                assert (first.data["type"], first.data["content"]) == ("user", "two")


async def test_watchcode_auth_and_errors(daemon: Client, work_dir: Path) -> None:
    secret = await watch_device(daemon, scope="approve")
    sid = (await daemon.create(work_dir))["session"]["id"]
    url = daemon.handle.url
    async with httpx.AsyncClient(base_url=url, timeout=10) as anonymous:
        for headers in ({}, {"x-watchcode-secret": "wc_wrong"}):
            reply = await anonymous.get("/api/sessions", headers=headers)
            assert reply.status_code == 401 and reply.json() == {"error": "Unauthorized"}
        by_query = await anonymous.get("/api/sessions", params={"secret": secret})
        assert by_query.status_code == 200  # EventSource clients put it in the query
        preflight = await anonymous.options("/api/connect")
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert "x-watchcode-secret" in preflight.headers["access-control-allow-headers"]
        # the secret opens the WatchCode routes only, never the v1 API
        v1 = await anonymous.get("/v1/sessions", headers={"x-watchcode-secret": secret})
        assert v1.status_code == 401
    async with relay(daemon, secret) as http:
        missing = await http.post("/api/connect", json={})
        assert missing.status_code == 400 and "sessionId" in missing.json()["error"]
        unknown = await http.post("/api/connect", json={"sessionId": "nope"})
        assert unknown.status_code == 404
        no_conn = await http.get(f"/api/sessions/{sid}/events", params={"connectionId": "x"})
        assert no_conn.status_code == 404 and "POST /api/connect first" in no_conn.json()["error"]
        # an approve-scope watch may interrupt but not chat
        denied = await http.post(f"/api/sessions/{sid}/message", json={"content": "hi"})
        assert denied.status_code == 403 and "scope" in denied.json()["error"]
        control = await http.post(f"/api/sessions/{sid}/control", json={"type": "interrupt"})
        assert control.json() == {"status": "sent"}
        odd = await http.post(f"/api/sessions/{sid}/control", json={"type": "dance"})
        assert odd.status_code == 400
        devices = (await daemon.http.get("/v1/devices")).json()["devices"]
        await daemon.http.delete(f"/v1/devices/{devices[0]['id']}")
        assert (await http.get("/api/sessions")).status_code == 401  # revoked
    audit = (await daemon.http.get("/v1/audit")).json()["entries"]
    assert any(e["kind"] == "auth_failed" and "WatchCode secret" in e["detail"] for e in audit)
    assert secret not in str(audit)  # never logged


# -- streams on real networks (issue 14): cuts, resets and silent drops --------------------------


class RawWatch:
    """One ``/api`` stream on its own socket, read like ``RelayClient.swift`` reads it (each
    ``data:`` line is appended to the watch's list). ``drop()`` stops reading and never closes
    (a Wi-Fi to LTE handover: no RST reaches the daemon); ``reset()`` closes with an RST."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.conn = stream, h11.Connection(h11.CLIENT)
        self.buffer, self.events = b"", []  # type: tuple[bytes, list[dict[str, Any]]]
        self.last_id: str | None = None  #: the last ``id:`` read (an EventSource's Last-Event-ID)

    @classmethod
    async def open(
        cls,
        daemon: Client,
        secret: str,
        sid: str,
        cid: str,
        last_event_id: str | None = None,
        receive_buffer: int | None = None,
    ) -> RawWatch:
        """``receive_buffer``: a small socket buffer, so that a large frame the watch does not
        read stays in the daemon's write, untaken by the socket."""
        host, port = daemon.handle.url.split("//")[1].rsplit(":", 1)
        if receive_buffer is None:
            watch = cls(await trio.open_tcp_stream(host, int(port)))
        else:
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            await sock.connect((host, int(port)))
            watch = cls(trio.SocketStream(sock))
        target = f"/api/sessions/{sid}/events?connectionId={cid}"
        headers = [("host", f"{host}:{port}"), ("x-watchcode-secret", secret)]
        if last_event_id is not None:
            headers.append(("last-event-id", last_event_id))
        request = h11.Request(method="GET", target=target, headers=headers)
        await watch.stream.send_all(watch.conn.send(request) or b"")
        return watch

    def count(self, kind: str, content: str, after: str | None = None) -> int:
        """Such frames the watch has (only those after the first frame saying ``after``)."""
        events = self.events
        if after is not None:
            said = [e["content"] for e in events]
            events = events[said.index(after) + 1 :] if after in said else []
        return sum(e["type"] == kind and e["content"] == content for e in events)

    async def until(
        self, kind: str, content: str, count: int = 1, after: str | None = None
    ) -> None:
        while self.count(kind, content, after) < count:
            await self._read()

    async def until_partial(self, marker: bytes) -> None:
        """Until ``marker`` is in a frame read only in part (its end not read yet)."""
        while marker not in self.buffer:
            await self._read()

    async def _read(self) -> None:
        event = self.conn.next_event()
        if event is h11.NEED_DATA:
            self.conn.receive_data(await self.stream.receive_some(65536))
        elif isinstance(event, h11.Data):
            self.buffer += bytes(event.data)
            *frames, self.buffer = self.buffer.split(b"\n\n")
            for frame in frames:
                for line in frame.split(b"\n"):
                    if line.startswith(b"data: "):
                        self.events.append(json.loads(line[6:]))
                    elif line.startswith(b"id: "):
                        self.last_id = line[4:].decode()
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            raise AssertionError(f"the stream ended: {self.events}")

    def reset(self) -> None:
        self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.stream.socket.close()


class WallClock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1_000_000.0
        monkeypatch.setattr(watchcode, "wall_clock", lambda: self.now, raising=False)

    async def advance(self, seconds: float) -> None:
        """Move the clock once the daemon did all it could: a stream notes what its socket
        took only when it runs again after the write, which may be after the client read it."""
        await trio.testing.wait_all_tasks_blocked()
        self.now += seconds


def idle(event: SSEEvent) -> bool:
    return event.type == "session.status" and event.body["status"] == "idle"


def texts(events: list[dict[str, Any]], kind: str) -> list[str]:
    return [e["content"] for e in events if e["type"] == kind]


@pytest.mark.parametrize("moment", ["before", "during", "after"])
@pytest.mark.parametrize("how", ["reset", "silent", "silent-then-reset"])
async def test_a_broken_stream_retried_like_the_watch_loses_and_repeats_nothing(
    daemon: Client, work_dir: Path, monkeypatch: pytest.MonkeyPatch, moment: str, how: str
) -> None:
    """The watch (its list kept) re-POSTs /api/connect after its stream broke, by a reset or
    silently (the old socket stays open, the daemon writes into it). The daemon cannot know
    what the dead connection delivered; the new stream steps back to what was written REWIND
    before the retry (the watch noticed within URLSession's idle timeout) and goes on from there.
    Here the watch read everything written before the break, so nothing repeats either."""
    clock = WallClock(monkeypatch)
    secret = await watch_device(daemon)
    sid = (await daemon.create(work_dir, "one"))["session"]["id"]
    prompt = "[[write:x.txt|hi]]" if moment == "during" else "two"
    with trio.fail_after(30):
        async with relay(daemon, secret) as http:
            old_cid = await connect(http, sid)
            old = await RawWatch.open(daemon, secret, sid, old_cid)
            await old.until("status", "Idle")  # the history (or the first turn), to its end
            async with daemon.events(sid) as v1:
                # v1 replays from cursor 0: read past the first turn's idle, so that each
                # v1.until(idle) below is a later turn's end ("three" must not join that turn)
                await v1.until(idle)
                if moment != "before":
                    await http.post(f"/api/sessions/{sid}/message", json={"content": prompt})
                    if moment == "during":
                        await old.until("status", "Waiting for approval")
                    else:
                        await old.until("assistant", "You said: two")
                        await v1.until(idle)
                        await old.until("status", "Idle", 2)
                # the break: what is written from now on, the watch never gets
                await clock.advance(1000)
                if how == "reset":
                    old.reset()
                if moment == "before":
                    await http.post(f"/api/sessions/{sid}/message", json={"content": prompt})
                if moment == "during":
                    request = await v1.until_type("permission.requested")
                    await daemon.answer(sid, request.body["request_id"], behavior="allow")
                if moment != "after":
                    await v1.until(idle)  # "three" must not join this turn
                if how == "silent-then-reset":  # the dead socket resets only now (the lost turn)
                    old.reset()
                    await wait_streams(http, old_cid, 0)
                await clock.advance(8)  # the watch's 2 s back-off and a little more
                again = await RawWatch.open(daemon, secret, sid, await connect(http, sid))
                await http.post(f"/api/sessions/{sid}/message", json={"content": "three"})
                # three's own Idle: a replayed turn's Idle may come before it
                await again.until("status", "Idle", after="You said: three")
                await trio.aclose_forcefully(again.stream)
                if how == "silent":
                    await trio.aclose_forcefully(old.stream)
        watch = old.events + again.events  # RelayClient's list: kept, then appended to
    users = texts(watch, "user")
    assert users == ["one", prompt, "three"]  # each once, in order
    replies = texts(watch, "assistant")
    assert replies.count("You said: one") == 1 and replies[-1] == "You said: three"
    assert len(replies) == len(set(replies))
    assert texts(watch, "status").count("Idle") == len(users)  # one Idle per turn, none lost


async def test_a_fresh_connect_after_a_silent_drop_gets_the_history_once(
    daemon: Client, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old "empty feed": the stream dropped silently, the watch retried, the user left
    (DELETE) and the dead socket reset only then; reopening the session (connect() empties the
    watch's list) must show the whole history, not continue where the dead stream was."""
    clock = WallClock(monkeypatch)
    secret = await watch_device(daemon)
    sid = (await daemon.create(work_dir, "one"))["session"]["id"]
    with trio.fail_after(30):
        async with relay(daemon, secret) as http:
            old = await RawWatch.open(daemon, secret, sid, await connect(http, sid))
            await old.until("status", "Idle")
            await clock.advance(5)
            retry = await connect(http, sid)
            again = await RawWatch.open(daemon, secret, sid, retry)
            await http.post(f"/api/sessions/{sid}/message", json={"content": "two"})
            await again.until("assistant", "You said: two")
            assert (await http.delete(f"/api/connections/{retry}")).json() == {
                "status": "disconnected"
            }
            old.reset()
            await trio.aclose_forcefully(again.stream)
            fresh = await RawWatch.open(daemon, secret, sid, await connect(http, sid))
            await fresh.until("assistant", "You said: two")
            await trio.aclose_forcefully(fresh.stream)
    assert texts(fresh.events, "user") == ["one", "two"]


BIG = "[[fast:50:100000]]"  # a 5 MB answer: more than the socket buffers on both sides hold


@pytest.mark.parametrize("how", ["silent", "silent-then-reset"])
async def test_a_frame_the_socket_never_took_is_sent_again_after_a_retry(
    daemon: Client, work_dir: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A slow link: the daemon built the frame of a long answer, but the socket never took all
    of it before the link died, while the watch went on receiving (the frames before it) for
    longer than REWIND - the idle timeout. Built long enough ago is not written: the retry sends
    it again, or the watch never shows the answer."""
    clock = WallClock(monkeypatch)
    secret = await watch_device(daemon)
    sid = (await daemon.create(work_dir, "one"))["session"]["id"]
    with trio.fail_after(60):
        async with relay(daemon, secret) as http:
            old_cid = await connect(http, sid)
            old = await RawWatch.open(daemon, secret, sid, old_cid, receive_buffer=4096)
            await old.until("status", "Idle")
            await http.post(f"/api/sessions/{sid}/message", json={"content": BIG})
            await old.until("status", "Running", after=BIG)
            await old.until_partial(b'"assistant"')  # the answer's frame was built, and began
            async with daemon.events(sid) as v1:
                await v1.until(idle)
                await v1.until(idle)  # the long turn ended ("three" must not join it)
            # the watch goes on getting bits of it for 30 s (a slow link), then loses the link
            await clock.advance(80)
            if how == "silent-then-reset":  # the dead link's socket resets later
                old.reset()
                await wait_streams(http, old_cid, 0)
            await clock.advance(16)  # URLSession's 60 s idle timeout and the back-off
            again = await RawWatch.open(daemon, secret, sid, await connect(http, sid))
            await http.post(f"/api/sessions/{sid}/message", json={"content": "three"})
            await again.until("status", "Idle", after="You said: three")
            await trio.aclose_forcefully(again.stream)
            if how == "silent":
                await trio.aclose_forcefully(old.stream)
    watch = old.events + again.events
    assert texts(watch, "user") == ["one", BIG, "three"]
    answers = texts(watch, "assistant")
    assert [len(a) for a in answers[1:-1]] == [5_000_000]  # the long answer, once
    assert answers[0] == "You said: one" and answers[-1] == "You said: three"
    assert texts(watch, "status").count("Idle") == 3


async def test_a_retry_whose_stream_never_opened_is_still_a_retry(
    daemon: Client, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch's retry reached the daemon (POST /api/connect) but its stream request did not
    (the link failed again), so it retries once more: that is a retry too, which repeats no
    more than the first would have (never the whole history: the watch kept its list)."""
    clock = WallClock(monkeypatch)
    secret = await watch_device(daemon)
    sid = (await daemon.create(work_dir, "one"))["session"]["id"]
    with trio.fail_after(30):
        async with relay(daemon, secret) as http:
            old_cid = await connect(http, sid)
            old = await RawWatch.open(daemon, secret, sid, old_cid)
            await old.until("status", "Idle")
            await clock.advance(1000)  # read long ago
            old.reset()
            await wait_streams(http, old_cid, 0)
            await clock.advance(8)
            await connect(http, sid)  # its GET never arrives
            await clock.advance(4)  # RelayClient's second attempt
            again = await RawWatch.open(daemon, secret, sid, await connect(http, sid))
            await http.post(f"/api/sessions/{sid}/message", json={"content": "two"})
            await again.until("status", "Idle", after="You said: two")
            await trio.aclose_forcefully(again.stream)
    watch = old.events + again.events
    assert texts(watch, "user") == ["one", "two"]
    assert texts(watch, "status").count("Idle") == 2


@pytest.mark.parametrize("proved", ["less", "more"])
async def test_a_retry_steps_back_to_what_a_last_event_id_proved(
    daemon: Client, work_dir: Path, monkeypatch: pytest.MonkeyPatch, proved: str
) -> None:
    """A client resumes a retry's connection with ``Last-Event-ID``, proving where it is; its
    link dies before that stream wrote anything long ago. The next retry starts where the proof
    said, not where the retry's connection was to start without proof: the proof says ``less``
    (the daemon's guess was too far: starting there loses a turn), or ``more`` (starting there
    repeats a turn the client proved it had)."""
    clock = WallClock(monkeypatch)
    secret = await watch_device(daemon)
    sid = (await daemon.create(work_dir, "one"))["session"]["id"]
    with trio.fail_after(30):
        async with relay(daemon, secret) as http:
            old = await RawWatch.open(daemon, secret, sid, await connect(http, sid))
            await old.until("status", "Idle")
            if proved == "more":
                # "two" is written just before the break: the guess is "one"
                await clock.advance(1000)
            await http.post(f"/api/sessions/{sid}/message", json={"content": "two"})
            async with daemon.events(sid) as v1:
                await v1.until(idle)
                await v1.until(idle)  # "two"'s turn is written to the old stream
            if proved == "more":
                await old.until("status", "Idle", after="You said: two")
            else:  # written long before the break (the guess is "two"), but never read
                await clock.advance(1000)
            last = old.last_id
            assert last is not None
            old.reset()
            await clock.advance(8)
            cid = await connect(http, sid)
            proving = await RawWatch.open(daemon, secret, sid, cid, last_event_id=last)
            await proving.until("status", "SSE stream opened")
            proving.reset()  # what the stream wrote after the proof, the client never read
            await wait_streams(http, cid, 0)
            await clock.advance(8)
            again = await RawWatch.open(daemon, secret, sid, await connect(http, sid))
            await http.post(f"/api/sessions/{sid}/message", json={"content": "three"})
            await again.until("status", "Idle", after="You said: three")
            await trio.aclose_forcefully(again.stream)
    watch = old.events + proving.events + again.events
    assert texts(watch, "user") == ["one", "two", "three"]
    assert texts(watch, "status").count("Idle") == 3


async def test_deleting_an_unknown_connection_names_it(daemon: Client) -> None:
    secret = await watch_device(daemon)
    async with relay(daemon, secret) as http:
        reply = await http.delete("/api/connections/c0ffee")
    assert reply.status_code == 404
    assert reply.json() == {"error": "No active connection c0ffee"}


async def test_an_api_stream_outlives_the_idle_timeout(
    make_config: Any, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The /api stream is served by hypercorn, whose reads were cut after the idle timeout even
    while keep-alives flowed (60 s in production; shortened here). Five timeouts, one stream.
    Keep-alives every 0.1 s against a 1.5 s timeout: a loaded machine that does not schedule the
    daemon for most of a second does not end the stream (a keep-alive is late, not missing)."""
    monkeypatch.setattr(direct, "IDLE_READ_TIMEOUT", 1.5)
    async with running_daemon(make_config(sse_keepalive=0.1)) as daemon:
        secret = await watch_device(daemon)
        sid = (await daemon.create(work_dir, "one"))["session"]["id"]
        with trio.fail_after(30):
            async with relay(daemon, secret) as http:
                cid = await connect(http, sid)
                async with stream_of(daemon, secret, sid, cid) as stream:
                    await until_content(stream, "status", "Idle")
                    for turn in range(5):
                        await trio.sleep(1.8)  # longer than the idle timeout, keep-alives only
                        # each POST on its own connection: a pooled one idle past the (shortened)
                        # timeout may be closed by the daemon just as the client reuses it
                        await http.post(
                            f"/api/sessions/{sid}/message",
                            json={"content": f"{turn}"},
                            headers={"Connection": "close"},
                        )
                        await until_content(stream, "assistant", f"You said: {turn}")
                    users = [e.data["content"] for e in stream.seen if e.data["type"] == "user"]
        assert users == ["one", "0", "1", "2", "3", "4"]


async def test_a_quick_retry_repeats_only_the_last_rewind_seconds(
    daemon: Client, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without proof, a retry cannot know what the last seconds delivered: it repeats what was
    written in the REWIND before it (the turn just read), never the older history, and loses
    nothing."""
    clock = WallClock(monkeypatch)
    secret = await watch_device(daemon)
    sid = (await daemon.create(work_dir, "one"))["session"]["id"]
    with trio.fail_after(30):
        async with relay(daemon, secret) as http:
            old_cid = await connect(http, sid)
            old = await RawWatch.open(daemon, secret, sid, old_cid)
            await old.until("status", "Idle")
            await clock.advance(10 * REWIND)
            await http.post(f"/api/sessions/{sid}/message", json={"content": "two"})
            await old.until("status", "Idle", 2)
            await clock.advance(5)
            old.reset()
            await wait_streams(http, old_cid, 0)
            again = await RawWatch.open(daemon, secret, sid, await connect(http, sid))
            await again.until("status", "Idle")
            await trio.aclose_forcefully(again.stream)
    assert texts(old.events, "user") == ["one", "two"]
    assert texts(again.events, "user") == ["two"]  # the recent turn again; "one" not repeated


def reply_to(text: str) -> Callable[[SSEEvent], bool]:
    return lambda event: event.data["content"] == f"You said: {text}"


async def test_a_watchcode_stream_held_five_minutes_of_mixed_activity(
    make_config: Any, work_dir: Path, mock_clock: Any
) -> None:
    """One /api stream through more than five minutes of the daemon's (Trio) time: turns,
    interrupted turns and silences longer than the 60 s idle timeout, nothing lost or repeated.
    Trio's clock runs 20 times faster than the wall clock, so this takes seconds."""
    mock_clock.rate = 20
    wait = 600.0  # Trio seconds (30 s of wall time): a deadline only
    async with running_daemon(make_config()) as daemon:
        # httpx's timeouts run on Trio's clock too: 10 would be half a second of wall time
        daemon.http.timeout = httpx.Timeout(wait)
        secret = await watch_device(daemon)
        sid = (await daemon.create(work_dir, "turn 0"))["session"]["id"]
        async with relay(daemon, secret, timeout=wait) as http:
            cid = await connect(http, sid)
            async with stream_of(daemon, secret, sid, cid) as stream:
                opened, sent, turn = trio.current_time(), ["turn 0"], 0
                await stream.until(lambda e: e.data["content"] == "You said: turn 0", wait)
                while trio.current_time() - opened < 330:
                    turn += 1
                    await trio.sleep(45 + 10 * (turn % 3))  # silences of 45-65 s: keep-alives
                    text = f"turn {turn}" if turn % 3 else "[[slow:400]]"
                    body = {"content": text, "connectionId": cid}
                    assert (await http.post(f"/api/sessions/{sid}/message", json=body)).is_success
                    sent.append(text)
                    if turn % 3:
                        await stream.until(reply_to(text), wait)
                    else:  # a long turn, interrupted from the watch
                        await stream.until(lambda e: e.data["content"] == "Running", wait)
                        body = {"type": "interrupt", "connectionId": cid}
                        await http.post(f"/api/sessions/{sid}/control", json=body)
                        await stream.until(lambda e: e.data["content"] == "Interrupted", wait)
                    await stream.until(lambda e: e.data["content"] == "Idle", wait)
                held = trio.current_time() - opened
                seen = [e.data for e in stream.seen]
    assert held > 300 and turn >= 5
    assert [d["content"] for d in seen if d["type"] == "user"] == sent  # each once, in order
    replies = [d["content"] for d in seen if d["type"] == "assistant"]
    said = [reply for reply in replies if reply.startswith("You said: ")]
    assert said == [f"You said: {text}" for text in sent if not text.startswith("[[")]
    statuses = [d["content"] for d in seen if d["type"] == "status"]
    assert statuses.count("Interrupted") == sum(text.startswith("[[") for text in sent)
    assert [d for d in seen if d["content"] == "SSE stream opened"] == [seen[0]]  # one stream


async def test_tool_rows_and_status_read_like_watchcode(daemon: Client, work_dir: Path) -> None:
    """The collapsed tool row shows ``tool_result.summary``: WatchCode summarised the output
    there; and ``wsState`` is the WebSocket readyState number (1: open), as WatchCode gave it."""
    for n in range(8):
        (work_dir / f"a-file-with-a-longer-name-{n}.txt").write_text("x\n")
    secret = await watch_device(daemon)
    sid = (await daemon.create(work_dir, "[[bash:ls]]"))["session"]["id"]
    with trio.fail_after(20):
        async with relay(daemon, secret) as http:
            cid = await connect(http, sid)
            async with stream_of(daemon, secret, sid, cid) as stream:
                request = (await daemon.snapshot(sid))["pending_permissions"]
                while not request:
                    await trio.sleep(0.02)
                    request = (await daemon.snapshot(sid))["pending_permissions"]
                await daemon.answer(sid, request[0]["request_id"], behavior="allow")
                result = (await stream.until(lambda e: e.data["type"] == "tool_result")).data
                status = (await http.get("/api/status")).json()["connections"]
    assert result["summary"] == "8 lines of output"  # ls of the eight files
    assert result["detail"] and result["detail"] != result["summary"]  # our title ("Ran `ls`")
    assert [c["wsState"] for c in status] == [1]


async def test_a_replayed_answer_says_what_it_answered(daemon: Client, work_dir: Path) -> None:
    """Resumed (``Last-Event-ID``) after the prompt, the "Allowed" line still carries the
    request's summary, as the live one does."""
    secret = await watch_device(daemon)
    sid = (await daemon.create(work_dir, "[[write:x.txt|hi]]"))["session"]["id"]
    with trio.fail_after(20):
        async with relay(daemon, secret) as http:
            cid = await connect(http, sid)
            async with stream_of(daemon, secret, sid, cid) as stream:
                asked = await stream.until(lambda e: e.data["content"].startswith("Allow Write?"))
                await stream.until(lambda e: e.id is not None)  # where it is now (history's end)
                last = stream.last_id
            assert last is not None
            pending = (await daemon.snapshot(sid))["pending_permissions"]
            await daemon.answer(sid, pending[0]["request_id"], behavior="allow")
            async with stream_of(daemon, secret, sid, cid, **{"Last-Event-ID": last}) as stream:
                allowed = await until_content(stream, "status", "Allowed")
    assert allowed["summary"] and allowed["summary"] == pending[0]["summary"]
    assert asked.data["content"].endswith(allowed["summary"])


async def test_history_is_what_live_frames_were_with_their_times(
    daemon: Client, work_dir: Path
) -> None:
    """A fresh connect's history shows a finished turn as a live watch saw it: its Running and
    permission lines, and each frame at its own event's time (not one time for all)."""
    secret = await watch_device(daemon)
    sid = (await daemon.create(work_dir, "[[write:x.txt|hi]]"))["session"]["id"]
    with trio.fail_after(20):
        async with daemon.events(sid) as v1:
            request = await v1.until_type("permission.requested")
            await trio.sleep(0.01)  # the answer comes later than the question
            await daemon.answer(sid, request.body["request_id"], behavior="allow")
            await v1.until(idle)
        async with relay(daemon, secret) as http:
            cid = await connect(http, sid)
            async with stream_of(daemon, secret, sid, cid) as stream:
                await until_content(stream, "status", "Idle")
                history = [e.data for e in stream.seen[1:]]
    statuses = [d["content"] for d in history if d["type"] == "status"]
    assert "Running" in statuses and "Allowed" in statuses
    assert any(s.startswith("Allow Write?") for s in statuses)
    asked = next(d for d in history if d["content"].startswith("Allow Write?"))
    allowed = next(d for d in history if d["content"] == "Allowed")
    assert asked["timestamp"] < allowed["timestamp"]  # their own times, in order
    kinds = [d["type"] for d in history]
    assert kinds.count("user") == 1 and kinds.count("tool_result") == 1


async def test_a_connection_remembers_only_the_marks_a_retry_can_need(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = WallClock(monkeypatch)
    start = Position("e", 3)
    connection = watchcode.Connection("c", "s", "d", clock.now, start)
    assert connection.written_before(clock.now) == start  # nothing written yet
    for cursor in range(4, 1004):  # one event a second for 1000 s
        clock.now += 1
        connection.written.mark(Position("e", cursor))
    assert len(connection.written.marks) <= REWIND + 2  # not 1000
    assert connection.written_before(clock.now + 5 - REWIND) == Position("e", 1003 - 85)
    assert connection.written_before(clock.now - 10_000) == start
