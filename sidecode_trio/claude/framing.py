"""NDJSON framing of the CLI's stdout, on bytes (pure).

The CLI writes one JSON object per ``\\n``-terminated line; lines can be large (a ``Write`` echoes
the whole file), some builds print non-JSON debug lines, and a crashing process can leave a
truncated line behind. :class:`LineFramer` splits bytes into parsed objects and counts what it had
to skip instead of failing.

The fast path (:meth:`LineFramer.feed_frames`): nearly every line of a streamed answer is one text
delta in the CLI's exact shape (``DELTA_LINE``). Such a line becomes a :class:`TextDeltaLine` (the
three values the translator needs) without building its three dicts: one regex match over the
buffer, then the text is decoded (``json``'s C string scanner only when it holds escapes). A line
of any other shape, or one the regex accepts but whose text does not decode, goes the general way
(a :class:`TextDeltaLine` always means what ``json.loads`` of its line would: a property test holds
both paths equal, tests/test_fast_path.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from json import decoder
from typing import Any, Final, NamedTuple, cast

DEFAULT_MAX_LINE: Final = 64 * 1024 * 1024  # 64 MiB: far above any frame seen, bounded all the same

_scanstring: Final[Callable[[str, int, bool], tuple[str, int]]] = decoder.scanstring  # type: ignore[attr-defined]
_ASCII: Final = rb"[ !#-\[\]-~]*"  # printable ASCII but '"' and '\': needs no decoding, no escapes
#: a JSON string's body: plain characters, and any character escaped; unrolled (runs of plain
#: characters between escapes) rather than one alternation per character, which sre walks
#: 3-4x slower on a long text
_TEXT: Final = rb'[^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*'
#: a stream-event text-delta line exactly as the CLI writes it (key order and all); the unused
#: strings must be plain ASCII, so that a match is valid JSON whatever they hold
DELTA_LINE: Final = re.compile(
    rb'\{"type":"stream_event","event":\{"type":"content_block_delta","index":(-?(?:0|[1-9][0-9]*)),'
    rb'"delta":\{"type":"text_delta","text":"(' + _TEXT + rb')"\}\},'
    rb'"session_id":"' + _ASCII + rb'","parent_tool_use_id":(?:null|"' + _ASCII + rb'"),'
    rb'"uuid":"' + _ASCII + rb'"(?:,"api_message_id":"(' + _ASCII + rb')")?\}'
)


class TextDeltaLine(NamedTuple):
    """A stream-event text-delta line, parsed only as far as the translator needs."""

    message_id: str  #: ``api_message_id`` ("" when absent)
    block: int  #: the content block's ``index``
    text: str


Frame = dict[str, Any] | TextDeltaLine
_tuple_new: Final = tuple.__new__  # TextDeltaLine(*values) without its Python-level __new__


#: :data:`DELTA_LINE` and its newline, matched at a line's start in the framer's buffer: one
#: C call finds the line's end and takes its values (no ``find``, no slice); the body cannot hold
#: a newline, so a match is exactly the line, as ``fullmatch`` of it would be
_DELTA_LINE_NL: Final = re.compile(DELTA_LINE.pattern + rb"\n")


def fast_delta(
    line: bytes | bytearray, start: int = 0, end: int | None = None
) -> TextDeltaLine | None:
    """``line[start:end]`` as a :class:`TextDeltaLine`, or None if it is not exactly one."""
    match = DELTA_LINE.fullmatch(line, start, len(line) if end is None else end)
    if match is None:
        return None
    return _delta_of(*match.groups())


def _delta_of(index: bytes, raw: bytes, message_id: bytes | None) -> TextDeltaLine | None:
    """The values :data:`DELTA_LINE` matched, decoded as ``json.loads`` would; None if it would
    refuse them."""
    try:
        text = raw.decode("utf-8", "surrogatepass")  # as json.loads decodes bytes
        if b"\\" in raw:
            text = _scanstring(text + '"', 0, True)[0]
        block = int(index)  # ValueError past 4300 digits, as json.loads
    except ValueError:  # UnicodeDecodeError, or a bad escape: json.loads would refuse the line
        return None
    return _tuple_new(TextDeltaLine, (message_id.decode() if message_id else "", block, text))


class LineFramer:
    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._max_line = max_line
        self._buffer = bytearray()
        self._discarding = False  # inside an oversize line: drop bytes until its newline
        self.skipped = 0  #: lines dropped: not JSON objects, invalid JSON, or oversize
        self.oversize = 0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add ``data``; return every complete frame it finished, in order."""
        return cast("list[dict[str, Any]]", self._feed(data, False))

    def feed_frames(self, data: bytes) -> list[Frame]:
        """:meth:`feed`, but text-delta lines come as :class:`TextDeltaLine` (the fast path)."""
        return self._feed(data, True)

    def _feed(self, data: bytes, fast: bool) -> list[Frame]:
        frames: list[Frame] = []
        buffer = self._buffer
        buffer += data
        start = 0
        match = _DELTA_LINE_NL.match if fast else None
        max_line = self._max_line
        last_index: bytes | None = None
        last_id: bytes | None = None  # (with last_index None: the first line decodes them)
        block, message = 0, ""
        while True:
            # the fast path first: a text-delta line, whole and within the cap
            if match is not None and not self._discarding:
                found = match(buffer, start)
                if found is not None and found.end() - 1 - start <= max_line:
                    index, raw, message_id = found.groups()
                    # a read's lines share their block and message id: decode each once
                    if index != last_index or message_id != last_id:
                        head = _delta_of(index, b"", message_id)
                        if head is None:  # past int()'s digits: the general way decides
                            last_index = None
                        else:
                            last_index, last_id = index, message_id
                            block, message = head.block, head.message_id
                    text: str | None = None
                    if last_index is not None:
                        try:
                            text = raw.decode("utf-8", "surrogatepass")  # as json.loads does
                            if b"\\" in raw:
                                text = _scanstring(text + '"', 0, True)[0]
                        except ValueError:  # not UTF-8, or a bad escape: json.loads refuses it
                            text = None
                    if text is not None:
                        frames.append(_tuple_new(TextDeltaLine, (message, block, text)))
                        start = found.end()
                        continue
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            if self._discarding:
                self._discarding = False
            elif end - start > max_line:
                # Whole but over the cap: dropped like one that arrives in pieces, so a line's
                # fate never depends on how the pipe happened to split it (found by fuzzing).
                self.oversize += 1
                self.skipped += 1
            else:
                frame = self._parse(bytes(buffer[start:end]))
                if frame is not None:
                    frames.append(frame)
            start = end + 1
        del buffer[:start]
        if len(buffer) > self._max_line:
            if not self._discarding:
                self.oversize += 1
                self.skipped += 1
            self._discarding = True
            buffer.clear()
        return frames

    def close(self) -> list[dict[str, Any]]:
        """End of stream: a final line without a newline is still a frame if it parses."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        if self._discarding or not rest.strip():
            return []
        frame = self._parse(rest)
        return [frame] if frame is not None else []

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        line = line.strip()
        if not line.startswith(b"{"):
            if line:
                self.skipped += 1
            return None
        try:
            frame = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than ~1000
            self.skipped += 1
            return None
        if not isinstance(frame, dict):
            self.skipped += 1
            return None
        return frame
