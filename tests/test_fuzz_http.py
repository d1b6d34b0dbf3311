"""Fuzzing a live daemon over HTTP: every route's body, query and path, and the SSE resume inputs.

One daemon (127.0.0.1, port 0, the fake CLI) serves the whole module from a thread of its own, so
Hypothesis drives it with a plain synchronous client and examples cost a request, not a daemon.
Bodies come in the right shape with wrong values, in wrong shapes, as huge or deeply nested JSON,
as invalid UTF-8, with lone surrogates and under the wrong content types. The properties: never a
5xx; every 4xx has the error shape of its API (``{"error": {"code", "message"}}``, or WatchCode's
``{"error": "<message>"}`` under ``/api/``); and the daemon still answers a normal request after
each test. Budgets follow the Hypothesis profile (HYPOTHESIS_PROFILE, tests/conftest.py).
"""

from __future__ import annotations

import base64
import json
import re
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import httpx
import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sidecode_trio.config import DaemonConfig
from sidecode_trio.daemon import DaemonHandle, serve
from sidecode_trio.ops.openapi import OPERATIONS, Op

from helpers import Client

TESTS = Path(__file__).parent
PROFILE = settings()  # the profile loaded in conftest.py
MAX_BODY = 1024 * 1024
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


def budget(share: float) -> settings:
    return settings(
        max_examples=max(10, int(PROFILE.max_examples * share)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@attrs.frozen
class Live:
    url: str
    token: str
    work: Path
    session_id: str
    epoch: str
    http: httpx.Client


def _config(root: Path) -> DaemonConfig:
    home, work = root / "home", root / "work"
    (home / "tmp").mkdir(parents=True)
    work.mkdir()
    claude = root / "claude"
    claude.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{TESTS / "fake_claude.py"}" "$@"\n')
    claude.chmod(claude.stat().st_mode | stat.S_IXUSR)
    return DaemonConfig(
        state_dir=root / "state",
        port=0,
        claude=str(claude),
        allowed_roots=(work,),
        claude_env={
            "HOME": str(home),
            "CLAUDE_CONFIG_DIR": str(home / ".claude"),
            "TMPDIR": str(home / "tmp"),
        },
        sse_keepalive=5.0,
        keystore="file",
        keep_awake="off",
    )


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A daemon in a thread for the whole module, with one session that ran a turn."""
    config = _config(tmp_path_factory.mktemp("fuzz-http"))
    started = threading.Event()
    box: dict[str, Any] = {}

    async def run() -> None:
        with trio.fail_after(600):  # the module's whole life, bounded
            async with trio.open_nursery() as nursery:
                box["handle"] = await nursery.start(serve, config)
                box["trio"] = trio.lowlevel.current_trio_token()
                started.set()

    def thread_main() -> None:
        try:
            trio.run(run)
        except BaseException as exc:  # reported by the fixture, not lost in the thread
            box["error"] = exc
            started.set()

    thread = threading.Thread(target=thread_main, name="fuzz-daemon", daemon=True)
    thread.start()
    assert started.wait(60) and "error" not in box, box.get("error")
    handle: DaemonHandle = box["handle"]
    headers = {"Authorization": f"Bearer {handle.token}"}
    try:
        with httpx.Client(base_url=handle.url, headers=headers, timeout=20) as http:
            work = config.allowed_roots[0]
            created = http.post("/v1/sessions", json={"cwd": str(work), "prompt": "hello"})
            assert created.status_code == 201, created.text
            session_id = created.json()["session"]["id"]
            epoch = http.get(f"/v1/sessions/{session_id}").json()["epoch"]
            yield Live(handle.url, handle.token, work, session_id, epoch, http)
    finally:
        trio.from_thread.run_sync(handle.stop.set, trio_token=box["trio"])
        thread.join(60)
        assert not thread.is_alive(), "the daemon did not stop"


def check_reply(path: str, response: httpx.Response) -> None:
    """No 5xx; a 4xx has its API's error shape."""
    assert response.status_code < 500, (path, response.status_code, response.text[:500])
    if response.status_code < 400 or (response.status_code == 404 and path.startswith("/app/")):
        return
    body = response.json()
    if path.startswith("/api/"):
        assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    else:
        error = body["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str), body


def assert_healthy(live: Live) -> None:
    response = live.http.get(f"/v1/sessions/{live.session_id}")
    assert response.status_code == 200, response.text
    assert live.http.get("/v1/info").status_code == 200


# -- bodies -------------------------------------------------------------------------------------

AWKWARD = st.sampled_from(
    ["", " ", "\x00", "\ud800", "\udfff", "é", "🙂", "\u202e", "..", "/", "/etc", "\n" * 3]
)
TEXT = st.text(max_size=30) | AWKWARD
SCALAR = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=10,
)
# Values a field of each kind might sensibly take, mixed with every other kind.
FIELD_VALUES = (
    TEXT
    | st.sampled_from(["default", "plan", "bypassPermissions", "allow", "deny", "chat", "admin"])
    | st.sampled_from(["image/png", "iVBORw0KGgo=", "claude-haiku-4-5", "/v1/events"])
    | JSON
)
FIELD_NAMES = [
    "cwd", "prompt", "model", "permission_mode", "client_id", "images", "title", "text",
    "behavior", "message", "updated_input", "updated_permissions", "interrupt", "suggestions",
    "answers", "archived", "path", "scope", "ttl", "name", "secret_id", "device_public_key",
    "mac", "signature", "sessionId", "content", "type", "media_type", "data",
]  # fmt: skip


def _encode(value: Any) -> bytes:
    return json.dumps(value).encode()  # ASCII escapes: lone surrogates go as "\ud800"


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@st.composite
def right_shape(draw: st.DrawFn, work: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=6, unique=True)):
        body[name] = draw(FIELD_VALUES)
    if "cwd" in body and draw(st.integers(0, 3)) == 0:
        body["cwd"] = draw(st.sampled_from([work, work + "/..", work + "/nope", "relative"]))
    if draw(st.booleans()):
        body["images"] = [
            {"media_type": draw(FIELD_VALUES), "data": draw(FIELD_VALUES)}
            for _ in range(draw(st.integers(0, 5)))
        ]
    return body


def raw_bodies(work: str) -> st.SearchStrategy[bytes]:
    return st.one_of(
        right_shape(work).map(_encode),
        JSON.map(_encode),
        st.binary(max_size=200),  # mostly invalid UTF-8
        st.integers(100, 5000).map(nested),
        st.sampled_from(
            [
                b"",
                b"{",
                b"null",
                b"[]",
                b'"text"',
                b'{"text": "\\ud800"}',
                b'{"text": "\xff\xfe"}',
                b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark
                b'{"text": ' + b'"' + b"x" * 300_000 + b'"}',  # over the 200,000-char text cap
                b'{"text": "' + b"y" * (MAX_BODY + 10) + b'"}',  # over the body limit
                b'{"a":' * 100_000,  # deep and truncated
                b"NaN",
                b'{"ttl": Infinity, "scope": "chat"}',
            ]
        ),
    )


CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=latin-1",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "",
        "\x7f",
    ]
)
BODY_OPERATIONS = [op for op in OPERATIONS if op.body is not None]


def _path(op: Op, live: Live, ids: dict[str, str]) -> str:
    if op.method == "DELETE" and ids["session_id"] == live.session_id:
        ids = {**ids, "session_id": "0"}  # the shared session must outlive the module
    path = op.path
    for name, value in ids.items():
        path = path.replace("{" + name + "}", value)
    return path


def _ids(live: Live) -> st.SearchStrategy[dict[str, str]]:
    """Path parameters: the live session now and then, otherwise anything (URL-quoted)."""
    segment = st.text(min_size=1, max_size=40).map(lambda t: quote(t, safe=""))
    session = st.sampled_from([live.session_id, "0"]) | segment
    return st.fixed_dictionaries(
        {
            "session_id": session,
            "request_id": segment,
            "tool_use_id": segment,
            "device_id": segment,
            "connection_id": segment,
            "rest": segment,
            "name": segment,
        }
    )


@budget(1.5)
@given(data=st.data())
def test_any_body_on_any_route_is_refused_cleanly(live: Live, data: st.DataObject) -> None:
    op = data.draw(st.sampled_from(BODY_OPERATIONS), label="operation")
    path = _path(op, live, data.draw(_ids(live), label="ids"))
    content = data.draw(raw_bodies(str(live.work)), label="body")
    headers = {"Content-Type": data.draw(CONTENT_TYPES, label="content type")}
    response = live.http.request(op.method, path, content=content, headers=headers)
    check_reply(path, response)
    assert_healthy(live)


@budget(1.0)
@given(data=st.data())
def test_any_query_and_path_on_any_route_is_refused_cleanly(
    live: Live, data: st.DataObject
) -> None:
    op = data.draw(st.sampled_from([op for op in OPERATIONS if not op.stream]), label="operation")
    path = _path(op, live, data.draw(_ids(live), label="ids"))
    names = [p.name for p in op.query if p.location == "query"] + ["limit", "x"]
    query = data.draw(
        st.dictionaries(st.sampled_from(names), TEXT | st.sampled_from(["-1", "0", "1e9", "²"]))
    )
    # Percent-encoded by hand: a lone surrogate goes as the invalid UTF-8 bytes it stands for.
    encoded = "&".join(
        f"{name}={quote(value.encode('utf-8', 'surrogatepass'), safe='')}"
        for name, value in query.items()
    )
    response = live.http.request(op.method, f"{path}?{encoded}")
    check_reply(path, response)


# -- SSE resume inputs --------------------------------------------------------------------------


def positions(epoch: str) -> st.SearchStrategy[str]:
    cursor = st.integers(-5, 2**70).map(str) | st.sampled_from(["", "²", "1.5", "0x10", " 3"])
    other = st.text(min_size=1, max_size=20).filter(lambda e: e != epoch)
    return st.one_of(
        st.builds(lambda c: f"{epoch}:{c}", cursor),  # our epoch, any cursor
        st.builds(lambda e, c: f"{e}:{c}", other, cursor),  # another epoch
        st.text(max_size=60),  # garbage
        st.sampled_from([":", f"{epoch}:", ":5", f"{epoch}:{'9' * 18}", "x" * 4000]),
    )


def _header_safe(value: str) -> bool:
    return not re.search(r"[\x00-\x1f\x7f]", value) and value == value.strip()


def read_stream_start(response: httpx.Response) -> list[str]:
    """The first data-carrying frame of an SSE response (its lines), then stop reading."""
    lines: list[str] = []
    frame: list[str] = []
    for line in response.iter_lines():
        if line:
            frame.append(line)
            continue
        if any(part.startswith("data:") for part in frame):
            return frame
        lines += frame
        frame = []
    return frame


@budget(0.6)
@given(data=st.data())
def test_sse_resume_positions_are_replayed_snapshotted_or_refused(
    live: Live, data: st.DataObject
) -> None:
    position = data.draw(positions(live.epoch), label="position")
    as_header = data.draw(st.booleans(), label="as Last-Event-ID") and _header_safe(position)
    view = data.draw(st.sampled_from(["full", "watch"]), label="view")
    params = {"view": view} if as_header else {"view": view, "since": position}
    headers = {b"Last-Event-ID": position.encode("utf-8", "replace")} if as_header else {}
    path = f"/v1/sessions/{live.session_id}/events"
    with live.http.stream("GET", path, params=params, headers=headers) as response:
        if response.status_code != 200:
            response.read()
            check_reply(path, response)
            assert response.status_code in (400, 431), response.text
            event(f"refused {response.status_code}")
            return
        assert response.headers["content-type"].startswith("text/event-stream")
        frame = read_stream_start(response)
    fields = dict(line.split(": ", 1) for line in frame if ": " in line)
    event(f"{view}: {fields.get('event')}")
    assert fields.get("event") in {"snapshot", "history", "watch"} or "." in fields["event"]
    json.loads(fields["data"])
    if "id" in fields:
        epoch, _, cursor = fields["id"].rpartition(":")
        assert epoch == live.epoch and int(cursor) >= 0


@budget(0.3)
@given(position=st.text(max_size=40).filter(_header_safe))
def test_watchcode_stream_resume_header_is_refused_or_followed(live: Live, position: str) -> None:
    connected = live.http.post("/api/connect", json={"sessionId": live.session_id})
    assert connected.status_code == 200, connected.text
    connection = connected.json()["connectionId"]
    path = f"/api/sessions/{live.session_id}/events"
    headers = {b"Last-Event-ID": position.encode("utf-8", "replace")} if position else {}
    try:
        with live.http.stream(
            "GET", path, params={"connectionId": connection}, headers=headers
        ) as response:
            if response.status_code != 200:
                response.read()
                check_reply(path, response)
                return
            assert read_stream_start(response)
    finally:
        closed = live.http.delete(f"/api/connections/{connection}")
        assert closed.status_code == 200, closed.text


def test_the_daemon_is_healthy_and_the_session_still_works_after_fuzzing(live: Live) -> None:
    reply = live.http.post(f"/v1/sessions/{live.session_id}/messages", json={"text": "again"})
    assert reply.status_code == 202, reply.text
    assert_healthy(live)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


WRONG_TYPES = json.dumps({"dev": [], "iat": {}, "exp": None, "cert": 1}).encode()
WRONG_VALUES = b'{"dev": "d", "iat": 1e400, "exp": "nan", "cert": ""}'
NASTY_CREDENTIALS = [
    "",
    "Bearer",
    "Bearer \u00e9",
    "Basic dXNlcjpwYXNz",
    "Sidecode",
    "Sidecode .",
    "Sidecode !!!.???",
    f"Sidecode {_b64(b'[' * 9000)}.x",  # nested deeper than json.loads recurses (was a 500)
    f"Sidecode {_b64(b'null')}.x",
    f"Sidecode {_b64(b'[]')}.x",
    f"Sidecode {_b64(b'{}')}.x",
    "Sidecode " + _b64(WRONG_TYPES) + ".x",
    "Sidecode " + _b64(WRONG_VALUES) + ".x",
    f"Sidecode {_b64(bytes(range(256)))}.{_b64(bytes(range(256)))}",
    "Sidecode " + "A" * 12_000,
]


async def test_nasty_credentials_are_refused_with_401(daemon: Client) -> None:
    """Malformed tokens, pre-authentication: a clean 401 each (a separate daemon, because
    enough failures from one address are rate limited by design)."""
    with trio.fail_after(30):
        for credential in NASTY_CREDENTIALS:  # (h11 refuses to send one ending in a space)
            headers = {b"Authorization": credential.encode("utf-8")}
            reply = await daemon.http.get("/v1/sessions", headers=headers)
            assert reply.status_code == 401, (credential[:40], reply.text)
            assert reply.json()["error"]["code"] == "unauthorized"
        for ticket in ("", "%ED%A0%80", "x" * 5000, "../../v1/info"):
            reply = await daemon.http.get(
                f"/v1/events?ticket={ticket}", headers={"Authorization": ""}
            )
            assert reply.status_code == 401, (ticket[:40], reply.text)
        healthy = await daemon.http.get("/v1/sessions")
        assert healthy.status_code == 200, healthy.text
