"""The text-delta fast path (``LineFramer.feed_frames``, ``Translator.feed_all``) means exactly what
the general path (``json.loads``, ``Translator.feed``, ``coalesce``) does, for any line."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from sidecode_trio.claude.framing import LineFramer, TextDeltaLine, fast_delta
from sidecode_trio.claude.translate import MAX_COALESCED, Translator, coalesce
from sidecode_trio.wire import events as ev

HEAD = b'{"type":"stream_event","event":{"type":"content_block_delta","index":0,'
HEAD += b'"delta":{"type":"text_delta","text":"'
TAIL = b'"}},"session_id":"f085633c-3c93-4b2f-af1f-dfdbe6b65bba","parent_tool_use_id":null,'
TAIL += b'"uuid":"0cf01814-d94a-40c9-8f48-46a08d67caf7","api_message_id":"msg_01"}'

ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=40)  # surrogates included
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=6,
)


@st.composite
def delta_frame(draw: st.DrawFn) -> dict[str, Any]:
    """A stream-event text delta as the CLI writes it, or with odd values and extra fields."""
    frame: dict[str, Any] = {
        "type": "stream_event",
        "event": {
            "type": "content_block_delta",
            "index": draw(st.integers(-3, 10**20) | st.just(0)),
            "delta": {"type": "text_delta", "text": draw(ANY_TEXT)},
        },
        "session_id": draw(st.uuids().map(str) | ANY_TEXT),
        "parent_tool_use_id": draw(st.none() | st.uuids().map(str) | ANY_TEXT),
        "uuid": draw(st.uuids().map(str) | ANY_TEXT),
    }
    if draw(st.booleans()):
        frame["api_message_id"] = draw(st.sampled_from(["msg_01", "msg_02", ""]) | ANY_TEXT)
    for key, value in draw(st.dictionaries(ANY_TEXT, JSON_VALUE, max_size=2)).items():
        frame.setdefault(key, value)  # extra fields, at the end
    if draw(st.booleans()):
        frame["event"]["delta"]["extra"] = draw(JSON_VALUE)
    return frame


def serialise(frame: dict[str, Any], ascii_only: bool, compact: bool) -> bytes:
    separators = (",", ":") if compact else None
    text = json.dumps(frame, ensure_ascii=ascii_only, separators=separators)
    return text.encode("utf-8", "surrogatepass")


def slow_events(data: bytes) -> list[ev.Event]:
    translator = Translator()
    events: list[ev.Event] = []
    for frame in LineFramer().feed(data):
        events.extend(translator.feed(frame))
    return coalesce(events, MAX_COALESCED)


def fast_events(data: bytes) -> list[ev.Event]:
    return Translator().feed_all(LineFramer().feed_frames(data))


def check_one_line(line: bytes) -> None:
    """The fast path takes ``line`` only when ``json.loads`` reads the same three values."""
    taken = fast_delta(line)
    try:
        frame = json.loads(line)
    except (ValueError, RecursionError):
        assert taken is None
        return
    if taken is not None:
        event = frame["event"]
        assert taken == TextDeltaLine(
            frame.get("api_message_id", ""), event["index"], event["delta"]["text"]
        )
    assert fast_events(line + b"\n") == slow_events(line + b"\n")


@given(frame=delta_frame(), ascii_only=st.booleans(), compact=st.booleans())
def test_any_text_delta_line_means_the_same_on_both_paths(
    frame: dict[str, Any], ascii_only: bool, compact: bool
) -> None:
    check_one_line(serialise(frame, ascii_only, compact))


PIECES = st.sampled_from(
    [
        *(b"a", b"\xc3\xa9", b"\xf0\x9f\x98\x80", b"\xed\xa0\x80", b"\xc3", b"\xff", b"\\n"),
        *(b'\\"', b"\\\\", b"\\/", b"\\u00e9", b"\\ud83d\\ude00", b"\\ud800", b"\\udc00x"),
        *(b"\\x", b"\\u12", b"\\", b'"', b"\x1f", b"\x7f", b"\t", b" ", b'"}},', b"\\u0000"),
        b"\\U0041",
    ]
)


@given(
    pieces=st.lists(PIECES, max_size=12), index=st.sampled_from([b"0", b"7", b"-1", b"01", b"1e2"])
)
def test_raw_escapes_and_bytes_in_the_text_mean_the_same_on_both_paths(
    pieces: list[bytes], index: bytes
) -> None:
    """Escapes, unicode, lone surrogates (escaped and raw), bad UTF-8, control characters."""
    line = HEAD.replace(b'"index":0,', b'"index":' + index + b",") + b"".join(pieces) + TAIL
    check_one_line(line)


@given(
    frames=st.lists(
        delta_frame()
        | st.builds(
            lambda text: {
                "type": "stream_event",
                "event": {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "text_delta", "text": text},
                },
                "uuid": "u",
                "session_id": "s",
                "parent_tool_use_id": None,
            },
            st.text(max_size=700),
        )
        | st.sampled_from(
            [
                {"type": "system", "subtype": "init", "model": "m", "uuid": "u"},
                {"type": "stream_event", "event": {"type": "content_block_start", "index": 0}},
                {
                    "type": "assistant",
                    "message": {"id": "msg_01", "content": [{"type": "text", "text": "x"}]},
                },
                {"type": "result", "subtype": "success", "result": "r"},
            ]
        ),
        max_size=30,
    ),
    ascii_only=st.booleans(),
    cuts=st.lists(st.integers(0, 5000), max_size=4),
)
def test_a_read_of_many_lines_coalesces_the_same_on_both_paths(
    frames: list[dict[str, Any]], ascii_only: bool, cuts: list[int]
) -> None:
    """Runs of deltas (fast and general mixed), other frames between, however the bytes arrive."""
    data = b"".join(serialise(frame, ascii_only, True) + b"\n" for frame in frames)
    assert fast_events(data) == slow_events(data)
    # the same bytes in pieces: each read's events agree
    slow_framer, fast_framer = LineFramer(), LineFramer()
    slow_translator, fast_translator = Translator(), Translator()
    bounds = [0, *sorted(cut % (len(data) + 1) for cut in cuts), len(data)]
    for start, end in itertools.pairwise(bounds):
        piece = data[start:end]
        slow: list[ev.Event] = []
        for frame in slow_framer.feed(piece):
            slow.extend(slow_translator.feed(frame))
        assert fast_translator.feed_all(fast_framer.feed_frames(piece)) == coalesce(slow)
    assert slow_framer.skipped == fast_framer.skipped


def test_the_cli_s_own_delta_lines_take_the_fast_path() -> None:
    """Recorded 2.1.329 shape (without ``api_message_id``) and the fake CLI's (with it)."""
    for line in (
        HEAD + b'hello \\"w\\u00e9rld\\"\\n' + TAIL,
        HEAD + b"h\xc3\xa9" + TAIL.replace(b',"api_message_id":"msg_01"', b""),
    ):
        assert fast_delta(line) is not None
    assert fast_delta(HEAD + b"x" + TAIL) == TextDeltaLine("msg_01", 0, "x")


def test_a_delta_line_over_the_cap_is_dropped_on_the_fast_path_too() -> None:
    """The fast path matches a line at its start: one longer than the cap is still oversize."""
    framer = LineFramer(max_line=len(HEAD + TAIL) + 10)
    frames = framer.feed_frames(HEAD + b"x" * 20 + TAIL + b"\n" + HEAD + b"y" + TAIL + b"\n")
    assert (framer.oversize, framer.skipped) == (1, 1)
    assert frames == [TextDeltaLine("msg_01", 0, "y")]


def test_one_read_s_lines_keep_their_own_block_and_message() -> None:
    """The framer decodes a read's block and message id once while they repeat: a change in
    either, or an index json.loads refuses (past int's digits), is seen line by line."""
    other = TAIL.replace(b"msg_01", b"msg_02")
    huge = HEAD.replace(b'"index":0', b'"index":' + b"1" * 5000)
    lines = [
        HEAD + b"a" + TAIL,
        HEAD.replace(b'"index":0', b'"index":1') + b"b" + TAIL,
        HEAD + b"c" + other,
        huge + b"d" + TAIL,
        HEAD + b"e" + other,
    ]
    data = b"\n".join(lines) + b"\n"
    framer = LineFramer()
    assert framer.feed_frames(data) == [
        TextDeltaLine("msg_01", 0, "a"),
        TextDeltaLine("msg_01", 1, "b"),
        TextDeltaLine("msg_02", 0, "c"),
        TextDeltaLine("msg_02", 0, "e"),
    ]
    assert framer.skipped == 1  # the huge index: json.loads refuses it too
    assert fast_events(data) == slow_events(data)
