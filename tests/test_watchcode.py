"""The WatchCode-compatible routes, driven exactly the way WatchCode's Swift watch client does.

``Services/RelayClient.swift`` (``reference/anchors-seeds.md`` §6.5): POST /api/connect, then
read the SSE stream's ``data:`` lines; send messages and interrupts with the connection id; on a
broken stream wait and re-POST /api/connect (keeping the events it already shows); DELETE the
connection when the view goes away. Every request carries ``x-watchcode-secret``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from helpers import Client, SSEStream, open_sse

pytestmark = pytest.mark.trio


async def watch_device(daemon: Client, scope: str = "chat", name: str = "Apple Watch") -> str:
    reply = await daemon.http.post("/v1/devices/watchcode", json={"name": name, "scope": scope})
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["device"]["kind"] == "secret" and body["device"]["scope"] == scope
    return str(body["secret"])


@asynccontextmanager
async def relay(daemon: Client, secret: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that, like the watch, carries only the WatchCode secret."""
    headers = {"x-watchcode-secret": secret}
    async with httpx.AsyncClient(base_url=daemon.handle.url, headers=headers, timeout=10) as http:
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
    daemon: Client, work_dir: Path
) -> None:
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
                before = [e.data for e in stream.seen]
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
