"""An attacker on the HTTP routes, where the random fuzzing of ``tests/test_fuzz_http.py`` rarely
goes: a session that is running or waiting for an answer, and values that are JSON (or that
Python's parser takes as such) but that no client sends: lone surrogates, NaN and Infinity, a
string or an object where a list belongs, junk resume positions and query parameters.

Each is answered with a 4xx and the API's error shape, or served; never a 500, and never a
crash of the session's task (which ended the daemon) or a line the CLI cannot read.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from sidecode_trio.claude.messages import encode_line

from helpers import Client, read_cli_log


def check_error(response: httpx.Response, status: int, code: str | None = None) -> str:
    """``status`` with the v1 error shape (and ``code``); the error's message."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str), body
    assert code is None or body["error"]["code"] == code, body
    return str(body["error"]["message"])


def raw(value: Any) -> dict[str, Any]:
    """Request arguments for a JSON body written as is (NaN, lone surrogates as escapes)."""
    content = json.dumps(value, allow_nan=True) if not isinstance(value, bytes) else value
    return {"content": content, "headers": {"Content-Type": "application/json"}}


@attrs.frozen
class Waiting:
    """A session waiting for an answer to a permission request."""

    session_id: str
    request_id: str

    @property
    def answer_path(self) -> str:
        return f"/v1/sessions/{self.session_id}/permissions/{self.request_id}"


async def waiting_session(daemon: Client, work_dir: Path) -> Waiting:
    created = await daemon.create(work_dir, "[[bash:echo hi]]")
    sid = created["session"]["id"]
    async with daemon.events(sid) as stream:
        asked = await stream.until_type("permission.requested")
    return Waiting(sid, asked.body["request_id"])


async def until_idle(daemon: Client, session_id: str) -> dict[str, Any]:
    """The session's snapshot once its turn ended (a deadline only)."""
    with trio.fail_after(20):
        while True:
            snap = await daemon.snapshot(session_id)
            if snap["session"]["status"] in ("idle", "errored"):
                return snap
            await trio.sleep(0.05)


async def sent_to_cli(cli_log: Path, predicate: Any) -> list[dict[str, Any]]:
    """The lines the CLI logged that match, once there is one (it logs them from a thread of
    its own, after the daemon's write returned: waited for, with a deadline only)."""
    with trio.fail_after(10):
        while True:
            lines = [line for line in read_cli_log(cli_log) if predicate(line)]
            if lines:
                return lines
            await trio.sleep(0.02)


def answers_to(request_id: str) -> Any:
    return lambda line: (
        line.get("type") == "control_response" and line["response"].get("request_id") == request_id
    )


@pytest.fixture
async def live(daemon: Client) -> AsyncIterator[Client]:
    """The daemon; after the test, still serving (a crash of a session's task ended it)."""
    yield daemon
    assert (await daemon.http.get("/v1/info")).status_code == 200
    assert (await daemon.http.get("/v1/sessions")).status_code == 200


# -- lone surrogates: valid JSON escapes that are not text ------------------------------------


def test_a_line_for_the_cli_with_a_lone_surrogate_is_valid_json() -> None:
    """Requests refuse them (below), but a message may come from the log of an older daemon:
    the line is written with ASCII escapes, where encoding it raised in the session's task."""
    message = {"type": "user", "message": {"content": "a\ud800 🙂"}}
    line = encode_line(message)
    assert line.endswith(b"\n") and line.isascii()
    assert json.loads(line) == message
    assert encode_line({"content": "é 🙂"}) == '{"content":"é 🙂"}\n'.encode()  # as before


async def test_lone_surrogates_in_a_session_body_are_invalid_json(
    live: Client, work_dir: Path
) -> None:
    """A prompt's was encoded for the CLI's stdin in the session's task, and a model's went on
    its command line: UnicodeEncodeError ended the task, the registry and the daemon, for any
    device with the chat scope. A cwd's was a 500 (realpath)."""
    sid = (await live.create(work_dir, "hello"))["session"]["id"]
    await until_idle(live, sid)
    cwd = str(work_dir)
    for method, path, body in (
        ("POST", "/v1/sessions", {"cwd": cwd, "prompt": "a\ud800"}),
        ("POST", "/v1/sessions", {"cwd": cwd, "model": "m\ud800"}),
        ("POST", "/v1/sessions", {"cwd": cwd + "/\ud800"}),
        ("POST", "/v1/sessions", {"cwd": cwd, "title": "t\udfff", "client_id": "\ud800"}),
        ("POST", "/v1/sessions", {"cwd": cwd, "unknown field": "\ud800"}),
        ("POST", f"/v1/sessions/{sid}/messages", {"text": "b\udfff"}),
        ("PATCH", f"/v1/sessions/{sid}", {"model": "m\ud800"}),
        ("PATCH", f"/v1/sessions/{sid}", {"title": "\ud800"}),
        ("PUT", f"/v1/sessions/{sid}/mirror", {"enabled": False, "name": "n\ud800"}),
        ("POST", "/v1/pairings", {"scope": "chat", "\ud800": 1}),
    ):
        refused = await live.http.request(method, path, **raw(body))
        message = check_error(refused, 400, "invalid_json")
        assert "lone surrogate" in message, message
    watch = await live.http.post("/api/connect", **raw({"sessionId": "\ud800"}))
    assert watch.status_code == 400 and isinstance(watch.json()["error"], str), watch.text
    paired = "🙂 \ud83d\ude00"  # a surrogate pair is a character: served
    sent = await live.http.post(f"/v1/sessions/{sid}/messages", **raw({"text": paired}))
    assert sent.status_code == 202, sent.text


@pytest.mark.parametrize(
    "body",
    [
        {"cwd": "", "prompt": "hi", "model": "a\x00b"},
        {"cwd": "", "prompt": "hi", "model": "opus", "title": "x\x00"},
    ],
    ids=["model", "title"],
)
async def test_a_nul_where_a_name_goes_on_the_cli_command_line_is_400(
    live: Client, work_dir: Path, body: dict[str, Any]
) -> None:
    """A NUL in a model's name made the CLI's launch raise (embedded null byte), which ended
    the daemon; a mirror's name goes on the same command line."""
    check_error(await live.http.post("/v1/sessions", json={**body, "cwd": str(work_dir)}), 400)
    sid = (await live.create(work_dir, "hello"))["session"]["id"]
    check_error(await live.http.patch(f"/v1/sessions/{sid}", json={"model": "a\x00b"}), 400)
    mirror = {"enabled": False, "name": "n\x00"}
    check_error(await live.http.put(f"/v1/sessions/{sid}/mirror", json=mirror), 400)


@pytest.mark.parametrize(
    "answer",
    [
        {"behavior": "deny", "message": "no \ud800"},
        {"behavior": "allow", "updated_input": {"command": "echo \udfff"}},
        {"behavior": "allow", "updated_input": {"\ud800": 1, "command": "echo hi"}},
    ],
    ids=["deny message", "updated input", "updated input key"],
)
async def test_an_answer_with_lone_surrogates_is_invalid_json_and_can_be_given_again(
    live: Client, work_dir: Path, cli_log: Path, answer: dict[str, Any]
) -> None:
    """Was a 500 after the request had been resolved: the CLI never heard the answer."""
    waiting = await waiting_session(live, work_dir)
    check_error(await live.http.post(waiting.answer_path, **raw(answer)), 400, "invalid_json")
    good = await live.http.post(waiting.answer_path, json={"behavior": "deny", "message": "no"})
    assert good.status_code == 200, good.text
    (line,) = await sent_to_cli(cli_log, answers_to(waiting.request_id))
    assert line["response"]["response"] == {"behavior": "deny", "message": "no"}


# -- NaN and Infinity: not JSON ----------------------------------------------------------------

NOT_JSON = [
    b'{"scope": "chat", "ttl": NaN}',
    b'{"scope": "chat", "ttl": Infinity}',
    b'{"scope": "chat", "ttl": -Infinity}',
    b"NaN",
    b'{"scope": "chat", "name": "x", "extra": [NaN]}',
]


@pytest.mark.parametrize("body", NOT_JSON, ids=lambda b: b.decode())
async def test_nan_and_infinity_in_a_body_are_invalid_json(live: Client, body: bytes) -> None:
    for path in ("/v1/pairings", "/v1/devices/watchcode", "/v1/tickets", "/v1/pair"):
        message = check_error(await live.http.post(path, **raw(body)), 400, "invalid_json")
        assert "NaN" in message or "Infinity" in message, message
    watch = await live.http.post("/api/connect", **raw(body))  # WatchCode's shape
    assert watch.status_code == 400 and isinstance(watch.json()["error"], str), watch.text


async def test_nan_in_an_answer_never_reaches_the_cli(
    live: Client, work_dir: Path, cli_log: Path
) -> None:
    """``updated_input`` takes any JSON: a NaN in it was written to the CLI's stdin as ``NaN``,
    which the real CLI's JSON parser refuses (and one bad line ends it)."""
    waiting = await waiting_session(live, work_dir)
    for value in ("NaN", "Infinity", "-Infinity", "[1, NaN]"):
        body = b'{"behavior": "allow", "updated_input": {"command": %s}}' % value.encode()
        check_error(await live.http.post(waiting.answer_path, **raw(body)), 400, "invalid_json")
    assert (await live.http.post(waiting.answer_path, json={"behavior": "deny"})).status_code == 200
    (answer,) = await sent_to_cli(cli_log, answers_to(waiting.request_id))
    assert answer["response"]["response"]["behavior"] == "deny"
    for line in cli_log.read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} sent to the CLI"))


# -- a list's place: a string or an object is not a list --------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("updated_permissions", "addRules"),
        ("updated_permissions", {"type": "addRules", "behavior": "allow", "rules": []}),
        ("suggestions", {"0": 0}),
        ("suggestions", "0"),
    ],
)
async def test_a_string_or_an_object_where_a_list_belongs_is_invalid_field(
    live: Client, work_dir: Path, cli_log: Path, field: str, value: Any
) -> None:
    """cattrs made a list of any iterable: "addRules" became ["a", "d", ...] and a rule object
    the list of its keys, which went to the CLI as the session's permission updates."""
    waiting = await waiting_session(live, work_dir)
    reply = await live.http.post(waiting.answer_path, json={"behavior": "allow", field: value})
    assert f"$.{field}" in check_error(reply, 400, "invalid_field")
    assert (await live.http.post(waiting.answer_path, json={"behavior": "deny"})).status_code == 200
    (answer,) = await sent_to_cli(cli_log, answers_to(waiting.request_id))  # that one only
    assert answer["response"]["response"]["behavior"] == "deny"
    for path, body in (
        (f"/v1/sessions/{waiting.session_id}/messages", {"text": "hi", "images": {}}),
        (f"/v1/sessions/{waiting.session_id}/messages", {"text": "hi", "images": "ab"}),
        ("/v1/sessions", {"cwd": str(work_dir), "images": {"media_type": "image/png"}}),
    ):
        check_error(await live.http.post(path, json=body), 400, "invalid_field")


# -- resume positions and query parameters ------------------------------------------------------

POSITIONS = [
    "a:b",
    ":-1",
    ":1",
    "epoch:99999999999999999999",
    "epoch:-1",
    "epoch:1e3",
    "epoch:NaN",
    "epoch:²",
    "no colon",
    "x" * 5000,
]


async def test_junk_resume_positions_are_400(live: Client, work_dir: Path) -> None:
    sid = (await live.create(work_dir, "hello"))["session"]["id"]
    path = f"/v1/sessions/{sid}/events"
    for position in POSITIONS:
        refused = await live.http.get(path, params={"since": position})
        assert "event id" in check_error(refused, 400, "bad_request")
        refused = await live.http.get(path, headers={b"Last-Event-ID": position.encode()})
        assert "event id" in check_error(refused, 400, "bad_request")
    # not UTF-8: another epoch (a stream that starts with a snapshot), not a 500
    headers = {b"Last-Event-ID": b"\xff\xfe:1"}
    async with live.http.stream("GET", path, headers=headers) as latin:
        assert latin.status_code == 200
        assert latin.headers["content-type"].startswith("text/event-stream")


QUERIES = [
    ("/v1/audit", {"limit": "NaN"}),
    ("/v1/audit", {"limit": "1e400"}),
    ("/v1/audit", {"limit": "9" * 5000}),
    ("/v1/audit", {"limit": "-0"}),
    ("/v1/audit", {"limit": "\x00"}),
    ("/v1/sessions", {"limit": "Infinity"}),
    ("/v1/sessions", {"archived": "NaN"}),
    ("/v1/sessions", {"status": "[]"}),
    ("/v1/sessions", {"status": "idle,\x00"}),
    ("/v1/folders", {"hidden": "2"}),
]


async def test_junk_query_parameters_are_400(live: Client) -> None:
    for path, params in QUERIES:
        check_error(await live.http.get(path, params=params), 400, "bad_request")
    for path in ("/v1/folders?path=../../../etc", "/v1/folders?path=%00", "/v1/folders?path=/"):
        response = await live.http.get(path)
        check_error(response, response.status_code)
        assert response.status_code in (400, 403, 404), response.text
