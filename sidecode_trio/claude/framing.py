"""NDJSON framing of the CLI's stdout, on bytes (pure).

The CLI writes one JSON object per ``\\n``-terminated line; lines can be large (a ``Write`` echoes
the whole file), some builds print non-JSON debug lines, and a crashing process can leave a
truncated line behind. :class:`LineFramer` splits bytes into parsed objects and counts what it had
to skip instead of failing.
"""

from __future__ import annotations

import json
from typing import Any, Final

DEFAULT_MAX_LINE: Final = 64 * 1024 * 1024  # 64 MiB: far above any frame seen, bounded all the same


class LineFramer:
    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._max_line = max_line
        self._buffer = bytearray()
        self._discarding = False  # inside an oversize line: drop bytes until its newline
        self.skipped = 0  #: lines dropped: not JSON objects, invalid JSON, or oversize
        self.oversize = 0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add ``data``; return every complete frame it finished, in order."""
        frames: list[dict[str, Any]] = []
        buffer = self._buffer
        buffer += data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            if self._discarding:
                self._discarding = False
            elif end - start > self._max_line:
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
