"""An attacker on the framed control protocol (WebTransport's control stream, a WebRTC
DataChannel): every field of every client message with every wrong JSON kind, NaN and Infinity,
huge numbers, deep nesting, bytes that are not UTF-8, lone surrogates, unknown types, requests
before authentication. Each gets a clear error frame (or a close with a documented code) for
its own link; nothing raises out of the machine or the link, and other links carry on.

The sans-IO machine (``channel/control.py``) and the DataChannel keep-alive (``rtc/link.py``)
are fed directly here; the session driver against a real daemon is
``tests/test_attack_links.py``. The random-bytes fuzzing is ``tests/test_fuzz_frames.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecode_trio.channel import frames as fr
from sidecode_trio.channel.control import (
    MAX_ERRORS,
    Authenticate,
    Call,
    Cancel,
    Close,
    ControlProtocol,
    Open,
    Send,
)
from sidecode_trio.channel.frames import CloseCode
from sidecode_trio.rtc.link import Closed, LinkKeeper
from sidecode_trio.security.auth import Principal
from sidecode_trio.security.devices import Scope

WHO = Principal("dev_1", "phone", Scope.CHAT)
MAX_FRAME = 64 * 1024

#: one value of every JSON kind, and the awkward members of each
KINDS: dict[str, Any] = {
    "null": None,
    "true": True,
    "false": False,
    "zero": 0,
    "negative": -1,
    "huge": 10**400,
    "minus zero": -0.0,
    "float": 1.5,
    "empty string": "",
    "string": "x",
    "nul": "\x00",
    "surrogate": "\ud800",
    "empty list": [],
    "list": [1, "a"],
    "empty object": {},
    "object": {"type": "request"},
}
#: the kinds each field takes (the wire classes in ``wire/control.py``)
FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "hello": {"versions": (list,), "client": (str,)},
    "auth": {"device": (str,), "signature": (str,)},
    "request": {"id": (int,), "method": (str,), "path": (str,), "body": (dict, type(None))},
    "subscribe": {"id": (int,), "path": (str,), "since": (str, type(None))},
    "unsubscribe": {"id": (int,)},
}
VALID: dict[str, dict[str, Any]] = {
    "hello": {"type": "hello", "versions": [1], "client": "x"},
    "auth": {"type": "auth", "device": "dev_1", "signature": "x"},
    "request": {"type": "request", "id": 7, "method": "GET", "path": "/v1/info", "body": None},
    "subscribe": {"type": "subscribe", "id": 7, "path": "/v1/events", "since": None},
    "unsubscribe": {"type": "unsubscribe", "id": 7},
}
#: where each message is expected: the phase a machine is brought to before it
PHASE = {
    "hello": "fresh",
    "auth": "hello",
    "request": "ready",
    "subscribe": "ready",
    "unsubscribe": "ready",
}


def framed(message: Any) -> bytes:
    return fr.frame(json.dumps(message).encode("utf-8", "surrogatepass"))


def machine(phase: str) -> ControlProtocol:
    p = ControlProtocol(
        welcome=b'{"type":"welcome"}',
        max_frame=MAX_FRAME,
        now=100.0,
        open_routes={("GET", "/v1/info"), ("POST", "/v1/pair")},
    )
    if phase in ("hello", "ready"):
        p.receive(framed(VALID["hello"]), False)
    if phase == "ready":
        assert [type(a) for a in p.receive(framed(VALID["auth"]), False)] == [Authenticate]
        p.authenticated(WHO)
    assert p.phase.value == {"fresh": "hello", "hello": "auth", "ready": "ready"}[phase]
    return p


def sent(actions: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(a.payload) for a in actions if isinstance(a, Send)]


def is_kind(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def assert_error(actions: list[Any], code: str, request_id: int | None = None) -> dict[str, Any]:
    """Exactly one ``error`` frame with ``code`` (and the frame's id, if it had a good one)."""
    assert [type(a) for a in actions] == [Send], actions
    (error,) = sent(actions)
    assert error["type"] == "error" and error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["id"] == request_id, error
    return error


def only_close(actions: list[Any], code: CloseCode) -> Close:
    """The one action is a close with ``code``."""
    assert [type(a) for a in actions] == [Close], actions
    close = actions[0]
    assert isinstance(close, Close) and close.code is code, close
    return close


def assert_alive(p: ControlProtocol) -> None:
    """The machine still serves: a good request is a call, not an error nor a close."""
    request = {"type": "request", "id": 1, "method": "GET", "path": "/v1/sessions"}
    actions = p.receive(framed(request), False)
    assert [type(a) for a in actions] == [Call], actions


# -- every field, every wrong kind -------------------------------------------------------------

WRONG_FIELDS = [
    (kind, field, name, value)
    for kind, fields in FIELDS.items()
    for field, accepted in fields.items()
    for name, value in KINDS.items()
    if not is_kind(value, accepted)
]


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [pytest.param(k, f, v, id=f"{k}.{f}={n}") for k, f, n, v in WRONG_FIELDS],
)
def test_a_field_of_the_wrong_kind_is_an_invalid_field_error(
    kind: str, field: str, value: Any
) -> None:
    p = machine(PHASE[kind])
    message = {**VALID[kind], field: value}
    actions = p.receive(framed(message), False)
    if kind == "hello":  # the first frame must be a good hello: documented close
        assert "$." + field in only_close(actions, CloseCode.PROTOCOL_ERROR).message
        return
    good_id = message.get("id") if field != "id" else None
    error = assert_error(actions, "invalid_field", good_id)
    assert f"$.{field}" in error["message"], error  # the message names the bad field
    assert p.errors == 1 and not p.closed
    if kind != "auth":
        assert_alive(p)


@pytest.mark.parametrize("value", [pytest.param(v, id=n) for n, v in KINDS.items()])
@pytest.mark.parametrize("phase", ["fresh", "hello", "ready"])
def test_a_type_of_any_kind_is_an_unknown_type_or_a_bad_first_frame(phase: str, value: Any) -> None:
    """``type`` as a list or an object was a TypeError (unhashable) out of the machine, which
    ended the connection (WebTransport) or the link's task (WebRTC) with no error frame."""
    p = machine(phase)
    frame = framed({"type": value, "id": 3})
    actions = p.receive(frame, False)
    if phase == "fresh":
        only_close(actions, CloseCode.PROTOCOL_ERROR)
        assert p.closed
        return
    assert_error(actions, "unknown_type", 3)
    assert not p.closed
    if phase == "ready":
        assert_alive(p)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"type": "request", "id": 1, "method": "GET", "path": "/v1/info", "body": {"a": NaN}}',
        b'{"type": "request", "id": 1, "method": "GET", "path": "/", "body": {"a": -Infinity}}',
        b'{"type": "subscribe", "id": Infinity, "path": "/v1/events"}',
        b'{"type": "request", "id": NaN, "method": "GET", "path": "/v1/info"}',
    ],
    ids=["NaN in a body", "-Infinity in a body", "Infinity id", "NaN id"],
)
def test_nan_and_infinity_are_not_json(payload: bytes) -> None:
    """JSON has no NaN nor Infinity (RFC 8259); Python's parser takes them, and a body carrying
    one reached the operations (and the CLI's stdin, as the invalid JSON ``NaN``)."""
    p = machine("ready")
    error = assert_error(p.receive(fr.frame(payload), False), "bad_frame")
    assert "NaN" in error["message"] or "Infinity" in error["message"], error
    assert_alive(p)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "bad_frame"),
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "bad_frame"),
        (
            b'{"type": "request", "id": 1, "body": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
            "bad_frame",
        ),
        (b"\xff\xfe\xfd", "bad_frame"),
        (b'{"type": "request", "path": "\xc3\x28"}', "bad_frame"),  # invalid UTF-8 in a string
        (b"", "bad_frame"),
        (b"null", "bad_frame"),
        (b"[]", "bad_frame"),
        (b'"request"', "bad_frame"),
        (b"12", "bad_frame"),
        (b'{"type": "request", "id": ' + b"9" * 5000 + b"}", "bad_frame"),  # past int() limits
        (b'{"id": 4}', "unknown_type"),
        (b'{"type": "Request", "id": 4}', "unknown_type"),
        (b'{"type": "request\\u0000", "id": 4}', "unknown_type"),
        (b'{"type": "welcome", "id": 4}', "unknown_type"),  # a server frame
        (b'{"type": "reply", "id": 4}', "unknown_type"),
    ],
    ids=lambda v: v[:40] if isinstance(v, bytes) else v,
)
def test_frames_that_are_not_messages_are_answered_and_the_link_lives(
    payload: bytes, code: str
) -> None:
    p = machine("ready")
    error = assert_error(
        p.receive(fr.frame(payload), False), code, 4 if b'"id": 4' in payload else None
    )
    assert error["type"] == "error"
    assert_alive(p)


def test_huge_numbers_and_strings_within_the_frame_limit_are_taken_as_sent() -> None:
    """A request id of 10**400 is an integer: echoed as sent (``%d``), not an error; a long
    path is the router's business (404), not the machine's."""
    p = machine("ready")
    request = {"type": "request", "id": 10**400, "method": "GET", "path": "/v1/" + "x" * 60_000}
    (call,) = p.receive(framed(request), False)
    assert isinstance(call, Call) and call.request.id == 10**400
    assert json.loads(fr.reply_json(call.request.id, 404, b"{}"))["id"] == 10**400
    bad = {"type": "request", "id": -(10**400), "method": [], "path": "/"}
    assert_error(p.receive(framed(bad), False), "invalid_field", -(10**400))
    assert_alive(p)


def test_a_frame_over_the_limit_closes_with_frame_too_large() -> None:
    p = machine("ready")
    actions = p.receive(fr.HEADER.pack(MAX_FRAME + 1) + b"{", False)
    only_close(actions, CloseCode.FRAME_TOO_LARGE)
    assert p.receive(framed(VALID["request"]), False) == []  # closed: nothing more is read


# -- order: before authentication, twice, unknown ids ------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/v1/sessions", "/v1/devices", "/v1/info/../devices", "/v1/pair/../audit", "/v1/status"],
)
def test_requests_before_authentication_are_401_except_the_open_routes(path: str) -> None:
    p = machine("hello")
    for method in ("GET", "POST", "get", "DELETE"):
        actions = p.receive(framed({**VALID["request"], "method": method, "path": path}), False)
        (reply,) = sent(actions)
        assert (reply["type"], reply["id"], reply["status"]) == ("reply", 7, 401), reply
        assert reply["body"]["error"]["code"] == "unauthorized"
        assert not any(isinstance(a, Call) for a in actions)
    opened = p.receive(framed({**VALID["request"], "path": "/v1/info"}), False)
    assert [type(a) for a in opened] == [Call]
    assert isinstance(opened[0], Call) and opened[0].principal is None


def test_subscriptions_and_unsubscriptions_before_authentication_are_refused() -> None:
    p = machine("hello")
    (reply,) = sent(p.receive(framed(VALID["subscribe"]), False))
    assert (reply["status"], reply["body"]["error"]["code"]) == (401, "unauthorized")
    assert_error(p.receive(framed(VALID["unsubscribe"]), False), "unexpected_frame")
    fresh = machine("fresh")
    actions = fresh.receive(framed(VALID["request"]), False)  # not even a hello yet
    only_close(actions, CloseCode.PROTOCOL_ERROR)


def test_hello_and_auth_again_are_unexpected() -> None:
    p = machine("ready")
    assert_error(p.receive(framed(VALID["hello"]), False), "unexpected_frame")
    assert_error(p.receive(framed(VALID["auth"]), False), "unexpected_frame")
    assert p.principal == WHO
    assert_alive(p)


def test_duplicate_ids_and_unknown_unsubscriptions_go_to_the_link() -> None:
    """The machine passes them on (the link answers a subscription id in use with 409, and an
    unsubscription of an id it does not follow with an error frame): see test_attack_links."""
    p = machine("ready")
    twice = p.receive(framed(VALID["subscribe"]) + framed(VALID["subscribe"]), False)
    assert [type(a) for a in twice] == [Open, Open]
    assert [type(a) for a in p.receive(framed({"type": "unsubscribe", "id": -5}), False)] == [
        Cancel
    ]


def test_past_the_error_budget_the_session_closes_with_protocol_error() -> None:
    p = machine("ready")
    for _ in range(MAX_ERRORS):
        assert_error(p.receive(framed({"type": []}), False), "unknown_type")
    actions = p.receive(framed({"type": {}}), False)
    assert [type(a) for a in actions] == [Send, Close]
    assert isinstance(actions[1], Close) and actions[1].code is CloseCode.PROTOCOL_ERROR
    assert p.closed


# -- any message, any values: the machine answers, never raises --------------------------------

ANY_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(list(KINDS.values())),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(list(VALID)))
    message = dict(VALID[kind])
    for field in draw(st.lists(st.sampled_from(["type", *FIELDS[kind]]), max_size=3)):
        if draw(st.booleans()):
            message[field] = draw(ANY_JSON)
        else:
            message.pop(field, None)
    return message


@settings(deadline=None)
@given(start=st.sampled_from(["hello", "ready"]), batch=st.lists(messages(), max_size=12))
def test_any_message_gets_an_action_or_a_documented_answer(
    start: str, batch: list[dict[str, Any]]
) -> None:
    p = machine(start)
    for message in batch:
        payload = json.dumps(message, allow_nan=True).encode("utf-8", "surrogatepass")
        actions = p.receive(fr.frame(payload), False)
        if p.closed:
            assert isinstance(actions[-1], Close)
            assert actions[-1].code in (CloseCode.PROTOCOL_ERROR, CloseCode.UNAUTHORIZED)
            return
        for action in actions:
            assert isinstance(action, Send | Authenticate | Call | Open | Cancel), action
            if isinstance(action, Send):
                answer = json.loads(action.payload)
                assert answer["type"] in ("error", "reply"), answer
                if answer["type"] == "error":
                    assert answer["code"] in (
                        "bad_frame",
                        "unknown_type",
                        "invalid_field",
                        "unexpected_frame",
                    ), answer
                    assert answer["id"] is None or type(answer["id"]) is int
                else:
                    assert answer["status"] == 401  # before authentication
            if isinstance(action, Authenticate):
                p.authenticated(WHO)


# -- the DataChannel's keep-alive (text messages) ---------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "[" * 10_000 + "]" * 10_000,  # deeper than json.loads recurses: was a RecursionError
        '{"type": "pong", "n": ' + "[" * 10_000 + "]" * 10_000 + "}",
        '{"type": ["pong"], "n": 1}',
        '{"type": {"pong": 1}, "n": 1}',
        "NaN",
        "null",
        "",
        "\ud800",
        '{"type": "ping", "n": 1}',
    ],
    ids=lambda t: t[:30],
)
def test_a_text_message_other_than_a_pong_closes_the_link_as_bad_frame(text: str) -> None:
    keeper = LinkKeeper(misses=3)
    keeper.ping()
    closed = keeper.received(text)
    assert isinstance(closed, Closed) and closed.code == "bad_frame", closed


@pytest.mark.parametrize(
    "n", [None, True, 1.0, float("nan"), float("inf"), -1, 0, 2, 10**400, "1", [1], {"n": 1}]
)
def test_a_pong_with_a_wrong_number_counts_nothing_and_closes_nothing(n: Any) -> None:
    keeper = LinkKeeper(misses=3)
    keeper.ping()
    text = json.dumps({"type": "pong", "n": n}, allow_nan=True)
    assert keeper.received(text) is None
    assert keeper.pongs == 0
    assert keeper.received(json.dumps({"type": "pong", "n": 1})) is None and keeper.pongs == 1
