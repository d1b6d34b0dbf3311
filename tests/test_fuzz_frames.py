"""Fuzzing the pure decoders of untrusted bytes: WebTransport control frames and the CLI's stdout.

Nothing here may raise on peer input. The WebTransport control machine must also never serve a
request before authentication (except the open routes), and stay closed once it closed. The CLI's
stdout framer must give the same frames however the bytes are split, and the translator must turn
any frame (recorded ones with mutations, or made up) into events that match the published event
schema. Budgets follow the Hypothesis profile (HYPOTHESIS_PROFILE, tests/conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecode_trio.channel import frames as fr
from sidecode_trio.channel.control import (
    Authenticate,
    Call,
    Cancel,
    Close,
    ControlProtocol,
    Open,
    Phase,
    Send,
)
from sidecode_trio.claude.framing import LineFramer
from sidecode_trio.claude.translate import Translator, coalesce
from sidecode_trio.eventlog.core import encode
from sidecode_trio.ops.front import open_routes
from sidecode_trio.security.auth import Principal
from sidecode_trio.security.devices import Scope
from sidecode_trio.wire import events as ev

ROOT = Path(__file__).parent.parent
RECORDED = Path(__file__).parent / "data" / "recorded"
EVENT_SCHEMA = json.loads((ROOT / "protocol" / "schema" / "event.json").read_text())
# One validator per event class: the schema's oneOf over every class is ~20 times slower.
VALIDATORS = {
    cls.TYPE: jsonschema.Draft202012Validator(
        {"$ref": f"#/$defs/{cls.__name__}", "$defs": EVENT_SCHEMA["$defs"]}
    )
    for cls in ev.EVENT_CLASSES.values()
}
OPEN_ROUTES = open_routes()  # the operation table's, as the daemon hands its guard
WHO = Principal("dev_1", "phone", Scope.CHAT)
MAX_FRAME = 16384
PROFILE = settings()  # the profile loaded in conftest.py
# Huge inputs are the point here; Hypothesis warns when it prints them (warnings are errors).
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


def budget(share: float) -> settings:
    """A share of the profile's examples (at least 10), without a per-example deadline."""
    return settings(max_examples=max(10, int(PROFILE.max_examples * share)), deadline=None)


# -- JSON values of every shape, including the awkward ones -----------------------------------

AWKWARD_TEXT = st.sampled_from(
    ["", " ", "\x00", "\ud800", "é", "🙂", "\u202e", "a" * 20_000, "\n", "{", "null", "-1"]
)
TEXT = st.text(max_size=40) | AWKWARD_TEXT
SCALAR = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


def nested(depth: int) -> Any:
    value: Any = "deep"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


DEEP = st.integers(min_value=50, max_value=400).map(nested)
# Deeper than json.loads can recurse (about 1000 levels): RecursionError, not ValueError.
TOO_DEEP = st.integers(min_value=900, max_value=5000).map(lambda n: b"[" * n + b"]" * n)


# -- WebTransport control frames ----------------------------------------------------------------

FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "hello": {"versions": st.lists(st.integers(-2, 3), max_size=3), "client": TEXT},
    "auth": {"device": TEXT, "signature": TEXT},
    "request": {
        "id": st.integers(-5, 2**40),
        "method": st.sampled_from(["GET", "POST", "get", "PATCH", "", "BREW"]),
        "path": st.sampled_from(["/v1/info", "/v1/pair", "/v1/sessions", "/v1/audit", "x", ""]),
        "body": st.none() | st.dictionaries(TEXT, JSON, max_size=3),
    },
    "subscribe": {
        "id": st.integers(-5, 2**40),
        "path": st.sampled_from(["/v1/events", "/v1/sessions/s/events", "/nope"]),
        "since": st.none() | TEXT,
    },
    "unsubscribe": {"id": st.integers(-5, 2**40)},
}


@st.composite
def message(draw: st.DrawFn) -> dict[str, Any]:
    """A client message: the right type with right or wrong fields, or any JSON object."""
    kind = draw(st.sampled_from([*FIELDS, "welcome", "nonsense", None]))
    fields = FIELDS.get(kind or "", {})
    body: dict[str, Any] = {"type": kind} if kind is not None else {}
    for name, strategy in fields.items():
        choice = draw(st.integers(0, 9))
        if choice < 7:
            body[name] = draw(strategy)
        elif choice < 9:
            body[name] = draw(JSON)  # the wrong type, most of the time
    body.update(draw(st.dictionaries(TEXT, JSON, max_size=2)))
    return body


def _encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


PAYLOAD = (
    message().map(_encode)
    | JSON.map(_encode)
    | DEEP.map(_encode)
    | TOO_DEEP
    | st.binary(max_size=64)
    | st.sampled_from([b"", b"{", b'{"type":', b"\xff\xfe", b'{"type":"hello"}' * 2])
)
# What arrives on the control stream: framed payloads, now and then a raw or oversize header.
WIRE_PIECE = (
    PAYLOAD.map(fr.frame)
    | st.binary(max_size=16)
    | st.integers(MAX_FRAME + 1, 2**32 - 1).map(lambda n: fr.HEADER.pack(n))
)
HELLO = fr.frame(b'{"type":"hello","versions":[1]}')
AUTH = fr.frame(b'{"type":"auth","device":"dev_1","signature":"x"}')


def _check_actions(protocol: ControlProtocol, actions: list[Any], authenticated: bool) -> None:
    for action in actions:
        assert isinstance(action, Send | Close | Authenticate | Call | Open | Cancel), action
        if isinstance(action, Send):
            sent = json.loads(action.payload)
            assert isinstance(sent, dict) and isinstance(sent.get("type"), str)
        if isinstance(action, Call) and not authenticated:
            # Never a request served before authentication, except the open routes.
            request = action.request
            assert action.principal is None
            assert (request.method.upper(), request.path) in OPEN_ROUTES
        if isinstance(action, Open):
            assert authenticated


@budget(2.0)
@given(
    start=st.sampled_from(["fresh", "hello", "ready"]),
    pieces=st.lists(WIRE_PIECE, max_size=25),
    splits=st.lists(st.integers(1, 64), min_size=1, max_size=8),
    verdicts=st.lists(st.booleans(), max_size=5),
)
def test_control_stream_survives_any_bytes(
    start: str, pieces: list[bytes], splits: list[int], verdicts: list[bool]
) -> None:
    protocol = ControlProtocol(
        welcome=b'{"type":"welcome"}',
        max_frame=MAX_FRAME,
        now=100.0,
        open_routes=OPEN_ROUTES,
        max_errors=8,
    )
    prefix = {"fresh": b"", "hello": HELLO, "ready": HELLO + AUTH}[start]
    data = prefix + b"".join(pieces)
    authenticated = False
    closed_seen = False
    offset, turn = 0, 0
    while offset < len(data):
        size = splits[turn % len(splits)]
        chunk, offset, turn = data[offset : offset + size], offset + size, turn + 1
        actions = protocol.receive(chunk, ended=False)
        if closed_seen:
            assert actions == [], "a closed control stream must ignore what follows"
        _check_actions(protocol, actions, authenticated)
        for action in actions:
            if isinstance(action, Authenticate):
                ok = verdicts.pop(0) if verdicts else True
                reply = protocol.authenticated(WHO) if ok else protocol.auth_failed("no")
                authenticated = authenticated or (ok and protocol.phase is Phase.READY)
                _check_actions(protocol, reply, authenticated)
        closed_seen = closed_seen or protocol.closed
        if protocol.closed:
            assert protocol.timer() is None
    assert protocol.errors <= 8 + 1
    timeout = protocol.handle_timer(10_000.0)
    _check_actions(protocol, timeout, authenticated)
    if not authenticated:  # the handshake deadline has passed: closed, whatever came before
        assert protocol.closed
    ended = protocol.receive(b"", ended=True)
    assert protocol.closed or ended == []


@budget(1.0)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=12),
    cuts=st.lists(st.integers(0, 4000), max_size=10),
)
def test_frame_decoder_gives_the_same_frames_however_the_bytes_are_split(
    payloads: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(fr.frame(p) for p in payloads)
    decoder = fr.FrameDecoder(max_frame=300)
    out: list[bytes] = []
    previous = 0
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        out += decoder.feed(data[previous:cut])
        previous = cut
    assert out == payloads
    assert decoder.buffered == 0


@given(size=st.integers(301, 2**32 - 1), tail=st.binary(max_size=20))
def test_frame_decoder_refuses_an_oversize_header_before_buffering_it(
    size: int, tail: bytes
) -> None:
    decoder = fr.FrameDecoder(max_frame=300)
    try:
        decoder.feed(fr.HEADER.pack(size) + tail)
    except fr.FrameTooLarge:
        return
    raise AssertionError("an oversize frame was accepted")


# -- the CLI's stdout ---------------------------------------------------------------------------

LINE = (
    st.binary(max_size=80).map(lambda b: b.replace(b"\n", b""))
    | JSON.map(_encode)
    | message().map(_encode)
    | DEEP.map(_encode)
    | TOO_DEEP.map(lambda deep: b'{"type":"assistant","message":' + deep + b"}")
    | st.just(b'{"type": "result", "subtype": "success", "result": "ok"')  # truncated JSON
    | st.just(b'{"type": "assistant", "message": "not an object"}')  # valid JSON, wrong shape
    | st.just(b"x" * 20_000)  # over the framer's cap in this test
    | st.just(b"{" * 3000)  # deep nesting that is not even valid
)


@budget(2.0)
@given(lines=st.lists(LINE, max_size=30), cuts=st.lists(st.integers(0, 20_000), max_size=12))
def test_line_framer_is_lenient_and_independent_of_how_the_bytes_arrive(
    lines: list[bytes], cuts: list[int]
) -> None:
    data = b"\n".join(lines) + b"\n"
    whole = LineFramer(max_line=16384)
    expected = whole.feed(data) + whole.close()
    split = LineFramer(max_line=16384)
    got: list[dict[str, Any]] = []
    previous = 0
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        got += split.feed(data[previous:cut])
        previous = cut
    got += split.close()
    assert got == expected
    assert all(isinstance(frame, dict) for frame in got)
    assert (split.skipped, split.oversize) == (whole.skipped, whole.oversize)


def _events_are_valid(events: list[ev.Event]) -> None:
    for event in [*events, *coalesce(list(events))]:
        assert isinstance(event, ev.Event)
        stored = encode("s", "E", 1, 1.0, event)
        envelope = json.loads(stored.data)
        errors = list(VALIDATORS[event.TYPE].iter_errors(envelope["event"]))
        assert not errors, (event, errors[0].message)


TYPES = [
    "system",
    "assistant",
    "user",
    "result",
    "stream_event",
    "control_request",
    "control_response",
    "control_cancel_request",
    "command_lifecycle",
    "rate_limit_event",
    "unknown_type",
]
KEYS = [
    "subtype",
    "message",
    "event",
    "request",
    "request_id",
    "content",
    "usage",
    "result",
    "is_error",
    "total_cost_usd",
    "uuid",
    "user_message_uuid",
    "api_message_id",
    "tool_use_result",
    "model",
    "permissionMode",
    "terminal_reason",
    "errors",
    "state",
    "command_uuid",
]


@st.composite
def cli_frame(draw: st.DrawFn) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": draw(st.sampled_from(TYPES))}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=6, unique=True)):
        frame[key] = draw(JSON)
    return frame


@budget(1.0)
@given(frames=st.lists(cli_frame(), max_size=20))
def test_translator_turns_any_frame_into_valid_events(frames: list[dict[str, Any]]) -> None:
    translator = Translator()
    for frame in frames:
        _events_are_valid(translator.feed(frame))
    translator.take_outputs()


def _recorded() -> list[list[dict[str, Any]]]:
    scenarios = []
    for path in sorted(RECORDED.glob("*/*.jsonl")):
        if not path.name.endswith(".stdin.jsonl"):
            lines = path.read_text().splitlines()
            scenarios.append([json.loads(line) for line in lines if line.strip()])
    return scenarios


RECORDINGS = _recorded()


def _paths(value: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path inside a frame (dict keys and list indexes)."""
    found = [here] if here else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*here, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _paths(inner, (*here, index))
    return found


def _mutate(frame: dict[str, Any], path: tuple[Any, ...], value: Any, drop: bool) -> None:
    parent: Any = frame
    for step in path[:-1]:
        parent = parent[step]
    if drop and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


@budget(0.5)
@given(
    scenario=st.integers(0, len(RECORDINGS) - 1),
    mutations=st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 10_000), JSON, st.booleans()),
        min_size=1,
        max_size=6,
    ),
)
def test_translator_survives_recorded_frames_with_wrong_shapes(
    scenario: int, mutations: list[tuple[int, int, Any, bool]]
) -> None:
    frames = json.loads(json.dumps(RECORDINGS[scenario]))  # a deep copy to mutate
    for which, where, value, drop in mutations:
        frame = frames[which % len(frames)]
        paths = _paths(frame)
        if paths:
            _mutate(frame, paths[where % len(paths)], value, drop)
    translator = Translator()
    for frame in frames:
        _events_are_valid(translator.feed(frame))
