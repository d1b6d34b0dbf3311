"""A Server-Sent Events parser (pure): bytes in, complete frames out.

It follows the HTML ``EventSource`` rules the daemon's streams need: lines end with LF (CR LF and
CR are accepted), a blank line ends a frame, ``:`` starts a comment, ``data`` lines are joined
with newlines, and a frame without ``data`` carries nothing (but its ``id`` still counts).
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Frame:
    id: str | None
    event: str
    data: str


class SSEParser:
    def __init__(self) -> None:
        self._buffer = b""
        self._id: str | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[Frame]:
        self._buffer += chunk
        frames: list[Frame] = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                return frames
            end, skip = cut
            line = self._buffer[:end].decode("utf-8", "replace")
            self._buffer = self._buffer[end + skip :]
            frame = self._line(line)
            if frame is not None:
                frames.append(frame)

    def _line(self, line: str) -> Frame | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\x00" not in value:
            self._id = value
        return None

    def _dispatch(self) -> Frame | None:
        data, event = self._data, self._event or "message"
        self._data, self._event = [], ""
        if not data:
            return None
        return Frame(self._id, event, "\n".join(data))


def _line_end(buffer: bytes) -> tuple[int, int] | None:
    """Where the first line ends and how long its terminator is (a lone CR at the very end may
    still be the first half of CR LF: wait for more)."""
    lf, cr = buffer.find(b"\n"), buffer.find(b"\r")
    if cr == -1 or (lf != -1 and lf < cr):
        return None if lf == -1 else (lf, 1)
    if cr + 1 == len(buffer):
        return None
    return (cr, 2) if buffer[cr + 1 : cr + 2] == b"\n" else (cr, 1)
