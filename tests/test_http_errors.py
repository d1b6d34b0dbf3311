"""Bad input gets a clear JSON error with the right status, and the daemon stays healthy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from sidecode_trio.config import DaemonConfig

from helpers import Client, running_daemon

pytestmark = pytest.mark.trio


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    return response.status_code, body["error"]["code"]


async def test_missing_or_wrong_token(daemon: Client) -> None:
    async with httpx.AsyncClient(base_url=daemon.handle.url) as anonymous:
        assert error_of(await anonymous.get("/v1/sessions")) == (401, "unauthorized")
        wrong = {"Authorization": "Bearer " + "x" * 43}
        assert error_of(await anonymous.get("/v1/sessions", headers=wrong)) == (401, "unauthorized")
        basic = {"Authorization": f"Basic {daemon.handle.token}"}
        assert error_of(await anonymous.get("/v1/sessions", headers=basic)) == (401, "unauthorized")
        events = await anonymous.get("/v1/events")
        assert error_of(events) == (401, "unauthorized")
        info = await anonymous.get("/v1/info")  # the one open route
        assert info.status_code == 200 and info.json()["protocol"] == 1


async def test_wrong_host_header_is_refused(daemon: Client) -> None:
    for host in ("evil.example", f"attacker.test:{daemon.handle.port}", "127.0.0.1:1"):
        response = await daemon.http.get("/v1/sessions", headers={"Host": host})
        assert error_of(response) == (403, "bad_host")
    ok = await daemon.http.get("/v1/sessions", headers={"Host": f"localhost:{daemon.handle.port}"})
    assert ok.status_code == 200


async def test_malformed_bodies(daemon: Client, work_dir: Path) -> None:
    post = daemon.http.post
    assert error_of(await post("/v1/sessions", content=b"{not json")) == (400, "invalid_json")
    assert error_of(await post("/v1/sessions", content=b"[1, 2]")) == (400, "invalid_json")
    assert error_of(await post("/v1/sessions", content=b"\xff\xfe")) == (400, "invalid_json")
    status, code = error_of(await post("/v1/sessions", json={"prompt": "no cwd"}))
    assert (status, code) == (400, "invalid_field")
    response = await post("/v1/sessions", json={"cwd": 42})
    assert (
        error_of(response) == (400, "invalid_field")
        and "cwd" in response.json()["error"]["message"]
    )
    response = await post("/v1/sessions", json={"cwd": str(work_dir), "permission_mode": "yolo"})
    assert error_of(response)[0] == 400
    response = await post("/v1/sessions", json={"cwd": str(work_dir), "prompt": "   "})
    assert error_of(response) == (400, "bad_request")
    session = (await daemon.create(work_dir))["session"]
    url = f"/v1/sessions/{session['id']}"
    assert error_of(await post(f"{url}/messages", json={"text": ""})) == (400, "bad_request")
    assert error_of(await post(f"{url}/messages", json={})) == (400, "invalid_field")
    long = {"text": "x" * (2 * 1024 * 1024)}
    assert error_of(await post(f"{url}/messages", json=long)) == (400, "too_long")
    huge = {"text": "x" * (25 * 1024 * 1024)}  # over the 24 MiB body limit
    assert error_of(await post(f"{url}/messages", json=huge))[0] == 413
    answer = await post(f"{url}/permissions/r1", json={"behavior": "maybe"})
    assert error_of(answer) == (400, "invalid_field")
    assert (await daemon.http.get("/v1/sessions")).status_code == 200  # still healthy


async def test_cwd_outside_allowed_roots(daemon: Client, work_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for cwd in (str(outside), "/", str(work_dir / ".." / "elsewhere")):
        response = await daemon.http.post("/v1/sessions", json={"cwd": cwd})
        assert error_of(response) == (403, "path_not_allowed")
    link = work_dir / "escape"
    link.symlink_to(outside)
    response = await daemon.http.post("/v1/sessions", json={"cwd": str(link)})
    assert error_of(response) == (403, "path_not_allowed")  # symlinks are resolved first
    response = await daemon.http.post("/v1/sessions", json={"cwd": "relative/path"})
    assert error_of(response) == (400, "bad_request")
    response = await daemon.http.post("/v1/sessions", json={"cwd": str(work_dir / "missing")})
    assert error_of(response) == (400, "not_a_directory")


async def test_unknown_session_and_request(daemon: Client, work_dir: Path) -> None:
    ghost = "/v1/sessions/00000000-0000-0000-0000-000000000000"
    assert error_of(await daemon.http.get(ghost)) == (404, "unknown_session")
    assert error_of(await daemon.http.get(f"{ghost}/events")) == (404, "unknown_session")
    response = await daemon.http.post(f"{ghost}/messages", json={"text": "hi"})
    assert error_of(response) == (404, "unknown_session")
    assert error_of(await daemon.http.post(f"{ghost}/interrupt")) == (404, "unknown_session")
    session = (await daemon.create(work_dir))["session"]
    response = await daemon.answer(session["id"], "no-such-request", behavior="allow")
    assert error_of(response) == (404, "unknown_request")
    assert error_of(await daemon.http.get("/v1/nothing-here"))[0] == 404
    assert error_of(await daemon.http.delete("/v1/sessions"))[0] == 405


async def test_a_public_url_is_accepted_as_host_and_offered_first(
    make_config: Callable[..., DaemonConfig],
) -> None:
    """Behind a reverse proxy with a real certificate (Caddy, ``tailscale serve``), requests
    carry the proxy's name in ``Host``; pairing offers name it first, the web link too, and
    WebTransport still goes to this host directly."""
    public = "https://laptop.tailnet.ts.net"
    async with running_daemon(make_config(public_urls=(public,))) as daemon:
        with trio.fail_after(10):
            proxied = await daemon.http.get(
                "/v1/sessions", headers={"Host": "Laptop.tailnet.ts.net"}
            )
            assert proxied.status_code == 200
            other = await daemon.http.get("/v1/sessions", headers={"Host": "evil.example"})
            assert error_of(other) == (403, "bad_host")
            offer = (await daemon.http.post("/v1/pairings", json={"scope": "chat"})).json()
    assert offer["payload"]["http"][0] == public
    assert offer["web_link"].startswith(f"{public}/app/#pair=")
    assert all("ts.net" not in url for url in offer["payload"]["quic"])


async def test_every_reply_says_nosniff(daemon: Client, work_dir: Path) -> None:
    """JSON replies, errors, the direct event stream (http/direct.py), its errors and the
    WatchCode routes all carry ``X-Content-Type-Options: nosniff``."""
    session = (await daemon.create(work_dir))["session"]
    async with httpx.AsyncClient(base_url=daemon.handle.url) as anonymous:
        replies = [
            await daemon.http.get("/v1/sessions"),
            await daemon.http.get("/v1/nothing-here"),
            await anonymous.get("/v1/sessions"),
            await anonymous.get("/v1/info"),
            await anonymous.get("/api/sessions"),  # WatchCode, no secret
            await anonymous.get(f"/v1/sessions/{session['id']}/events"),  # direct.py's 401
            await daemon.http.get("/v1/sessions", headers={"Host": "evil.example"}),
        ]
        async with daemon.http.stream("GET", f"/v1/sessions/{session['id']}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            replies.append(stream)
    for reply in replies:
        assert reply.headers.get("x-content-type-options") == "nosniff", reply.request.url


async def test_the_host_check_holds_with_https(make_config: Callable[..., DaemonConfig]) -> None:
    """``--https`` keeps the DNS-rebinding guard: loopback names, the served address and the
    ``--public-url`` names are accepted, any other ``Host`` is refused."""
    public = "https://laptop.tailnet.ts.net"
    async with running_daemon(make_config(https=True, public_urls=(public,))) as secure:
        port = secure.handle.port
        with trio.fail_after(10):
            for host in (f"localhost:{port}", f"127.0.0.1:{port}", "laptop.tailnet.ts.net"):
                ok = await secure.http.get("/v1/sessions", headers={"Host": host})
                assert ok.status_code == 200, host
            for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}"):
                refused = await secure.http.get("/v1/sessions", headers={"Host": host})
                assert error_of(refused) == (403, "bad_host"), host
            session = (await secure.http.get("/v1/sessions")).json()
            assert "sessions" in session


async def test_the_host_names_of_a_wildcard_bind_are_its_addresses() -> None:
    """Under ``--https --host 0.0.0.0`` the accepted ``Host`` values are those of the URLs the
    pairing offers name (each address of this host), loopback names and the public URLs; a
    default port may be left out."""
    from sidecode_trio.daemon import _public_hosts, reachable_urls

    served = reachable_urls("https://0.0.0.0:9000")
    hosts = _public_hosts(served)
    assert "127.0.0.1:9000" in hosts and all(h.endswith(":9000") for h in hosts)
    public = _public_hosts(["https://Laptop.example", "https://box.example:443", "http://[::1]:80"])
    assert public == {"laptop.example", "box.example:443", "box.example", "[::1]:80", "[::1]"}


async def _reply_to_a_partial_body(daemon: Client, head: str, body: bytes) -> bytes:
    """Send a request head and the start of its body, never the rest: the daemon's reply (a
    daemon that waited for the whole body would never answer)."""
    host = daemon.handle.url.removeprefix("http://")
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream("127.0.0.1", daemon.handle.port)
        async with stream:
            await stream.send_all(head.format(host=host).encode() + body)
            received = b""
            while b"\r\n\r\n" not in received:
                data = await stream.receive_some(65536)
                assert data, received
                received += data
    return received


async def test_open_routes_take_small_bodies_only(daemon: Client) -> None:
    declared = "POST /v1/pair HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1048576\r\n\r\n"
    reply = await _reply_to_a_partial_body(daemon, declared, b'{"secret_id": "')
    assert reply.startswith(b"HTTP/1.1 413"), reply
    chunked = "POST /v1/pair HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = b"".join(b"400\r\n" + b"x" * 1024 + b"\r\n" for _ in range(20))  # 20 KiB, no end
    reply = await _reply_to_a_partial_body(daemon, chunked, chunks)
    assert reply.startswith(b"HTTP/1.1 413"), reply
    async with httpx.AsyncClient(base_url=daemon.handle.url) as anonymous:
        small = await anonymous.post("/v1/pair", json={"secret_id": "x"})
        assert error_of(small)[0] == 400  # a small body is read and judged as before
    assert (await daemon.http.get("/v1/sessions")).status_code == 200


async def test_a_body_is_not_read_before_its_credentials_verify(daemon: Client) -> None:
    """Through the app's ASGI entry (what hypercorn calls): a refused request's body chunks
    are never pulled from the server; an authenticated one's are."""
    app = daemon.handle.app
    host = daemon.handle.url.removeprefix("http://").encode()

    async def post(authorization: bytes | None) -> tuple[int, int]:
        pulled = 0
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal pulled
            await trio.lowlevel.checkpoint()
            pulled += 1
            return {"type": "http.request", "body": b"x" * 65536, "more_body": pulled < 64}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        headers = [(b"host", host), (b"content-type", b"application/json")]
        if authorization is not None:
            headers.append((b"authorization", authorization))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/sessions",
            "raw_path": b"/v1/sessions",
            "query_string": b"",
            "root_path": "",
            "headers": [*headers, (b"transfer-encoding", b"chunked")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", daemon.handle.port),
            "extensions": {},
        }
        with trio.fail_after(20):
            await app(scope, receive, send)
        return status, pulled

    assert await post(None) == (401, 0)
    assert await post(b"Bearer wrong") == (401, 0)
    status, pulled = await post(b"Bearer " + daemon.handle.token.encode())
    assert status == 400 and pulled >= 64  # read whole (4 MiB, under the big limit), then judged


async def test_a_client_flooding_its_own_event_stream_is_disconnected(
    daemon: Client, work_dir: Path
) -> None:
    """What a client sends while its event stream runs is kept for its next request, up to a
    request head's worth; past that the connection ends instead of the daemon buffering it."""
    session = (await daemon.create(work_dir))["session"]
    host = daemon.handle.url.removeprefix("http://")
    head = (
        f"GET /v1/sessions/{session['id']}/events HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {daemon.handle.token}\r\n\r\n"
    )
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream("127.0.0.1", daemon.handle.port)
        async with stream:
            await stream.send_all(head.encode())
            received = b""
            while b"\r\n\r\n" not in received:
                received += await stream.receive_some(65536)
            assert received.startswith(b"HTTP/1.1 200")
            flood = b"x" * (1024 * 1024)
            try:
                await stream.send_all(flood)
                while await stream.receive_some(65536):
                    pass
            except trio.BrokenResourceError:
                pass  # closed while we were still sending: as good
    assert (await daemon.http.get("/v1/sessions")).status_code == 200
