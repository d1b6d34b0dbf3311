"""The wire protocol: published schemas are in sync with the classes, and values round-trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecode_trio.eventlog.core import decode_event, encode
from sidecode_trio.eventlog.fold import SessionFold
from sidecode_trio.wire import control, requests, signaling, snapshot, tools, wire_repr
from sidecode_trio.wire import converter as wire
from sidecode_trio.wire import events as ev
from sidecode_trio.wire.schema import render
from sidecode_trio.wire.snapshot import Snapshot

SCHEMA_DIR = Path(__file__).parent.parent / "protocol" / "schema"


def test_committed_schemas_match_the_classes() -> None:
    expected = render()
    committed = {p.name: p.read_text() for p in SCHEMA_DIR.glob("*.json")}
    stale = sorted(name for name in expected if committed.get(name) != expected[name])
    extra = sorted(set(committed) - set(expected))
    assert not stale and not extra, (
        f"protocol/schema is out of date ({stale or extra}); "
        "run: python -m sidecode_trio.wire.schema protocol/schema"
    )


def _schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / name).read_text())  # type: ignore[no-any-return]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
INPUTS = st.dictionaries(st.text(max_size=5), JSON, max_size=3)


def _event_strategy(cls: type[ev.Event]) -> st.SearchStrategy[ev.Event]:
    attrs.resolve_types(cls)  # Hypothesis reads the fields' types (strings until resolved)
    fields = {f.name for f in attrs.fields(cls)}
    overrides: dict[str, Any] = {"input": INPUTS} if "input" in fields else {}
    if cls is ev.ToolFinished:
        overrides["result"] = JSON
    return st.builds(cls, **overrides)


EVENT = st.one_of(*[_event_strategy(cls) for cls in ev.EVENT_CLASSES.values()])


@given(EVENT)
def test_events_round_trip_and_match_the_schema(event: ev.Event) -> None:
    stored = encode("s", "E", 7, 1.5, event)
    assert decode_event(stored) == event
    envelope = json.loads(stored.data)
    assert envelope["event"]["type"] == event.TYPE == stored.type
    jsonschema.validate(envelope["event"], _schema("event.json"))


def test_snapshot_matches_its_schema_and_round_trips() -> None:
    fold = SessionFold("s")
    for i, event in enumerate(
        [
            ev.SessionCreated("/w", "t"),
            ev.MessageQueued("m", "hi", "client-1"),
            ev.TurnStarted("m"),
            ev.TextDelta("a", 0, "hel"),
            ev.ToolStarted("t1", "Bash", {"command": "ls"}),
            ev.ToolFinished("t1", False, "out", {"stdout": "out"}),
            ev.PermissionRequested("r", "Write", {"file_path": "/w/x"}, "t2"),
            ev.SessionError("cli_exited", "boom"),
            ev.TurnFailed("m", "cli_exited", "boom"),
        ]
    ):
        fold.apply(event, float(i))
    snap = fold.snapshot("E", 9)
    data = json.loads(wire.dumps(snap))
    jsonschema.validate(data, _schema("snapshot.json"))
    assert wire.structure(data, Snapshot) == snap


def test_unknown_event_type_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown type 'nope'"):
        wire.structure({"type": "nope"}, ev.Event)


def test_enums_come_back_as_enums_after_a_round_trip() -> None:
    # A StrEnum is also a str; the strict str hook must not turn it into a plain string, or
    # identity checks such as `status is SessionStatus.ERRORED` fail after a daemon restart.
    stored = encode("s", "e", 1, 0.0, ev.StatusChanged(ev.SessionStatus.ERRORED))
    event = decode_event(stored)
    assert isinstance(event, ev.StatusChanged) and event.status is ev.SessionStatus.ERRORED
    with pytest.raises(ValueError, match=r"\$\.status"):
        wire.structure({"status": "sleepy"}, ev.StatusChanged)


def test_the_wire_classes_share_one_repr() -> None:
    """None compiles a ``__repr__`` of its own (a quarter of their modules' import time)."""
    modules = (control, ev, requests, signaling, snapshot, tools)
    classes = [
        value
        for module in modules
        for value in vars(module).values()
        if isinstance(value, type) and attrs.has(value) and value.__module__ == module.__name__
    ]
    assert len(classes) > 100
    assert [cls for cls in classes if cls.__repr__ is not wire_repr] == []


@given(EVENT)
def test_the_shared_repr_writes_what_attrs_would(event: ev.Event) -> None:
    """The same text as attrs' own ``__repr__`` of a class with the same fields and values."""
    cls = type(event)
    twin = attrs.make_class(cls.__name__, [field.name for field in attrs.fields(cls)], frozen=True)
    assert repr(event) == repr(twin(**attrs.asdict(event, recurse=False)))
    assert repr(requests.ErrorReply(requests.ErrorDetail("c", "it's"))) == (
        "ErrorReply(error=ErrorDetail(code='c', message=\"it's\"))"
    )
