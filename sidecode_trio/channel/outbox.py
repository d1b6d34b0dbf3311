"""What a session still has to send, bounded, and in which order (pure).

aioquic buffers whatever it is given, without limit; this is where the bounds live. Frames wait
in **lanes**: lane 0 holds replies and protocol frames, and each subscription has its own lane, so
order holds within a lane and lanes take turns. The driver asks for at most ``budget`` bytes (the
room left under its high-water mark of bytes the QUIC connection holds unacknowledged) and writes
what :meth:`Outbox.pull` returns.

A payload over ``inline_limit`` bytes is not written on the control stream: a ``large``
placeholder takes its place there and the payload goes on its own unidirectional stream, in
chunks that take turns with the control stream, so a big snapshot or tool output never holds up
live events. A replay is queued lazily (its frames are produced as the client reads). When a
lane holds more than ``max_frames`` frames, or more than ``max_large`` large payloads wait, the
client is not keeping up: :class:`Overflow` is raised and the driver drops the client, which
reconnects and resumes exactly from the last event it applied.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Final

import attrs

from .frames import REF, frame, large

BATCH: Final = 64  # frames one lane may write before the next lane's turn


@attrs.frozen
class Limits:
    max_frames: int = 4096  #: frames waiting per lane
    max_large: int = 16  #: large payloads waiting or being written
    inline_limit: int = 16 * 1024  #: payloads over this many bytes get their own stream
    chunk: int = 64 * 1024  #: bytes of a large payload written per turn


class Overflow(Exception):
    """The client is not reading fast enough: too much is waiting for it."""


@attrs.frozen
class ControlWrite:
    data: bytes  #: whole frames, in order, for the control stream


@attrs.frozen
class StreamWrite:
    ref: int
    data: bytes
    first: bool  #: open the stream (``data`` starts with the ref)
    last: bool  #: then end it (FIN)


Write = ControlWrite | StreamWrite


@attrs.frozen
class _Large:
    payload: bytes


@attrs.define
class _Lazy:
    frames: Iterator[bytes]


@attrs.define
class _Blob:
    ref: int
    data: bytes
    offset: int = 0


_Item = bytes | _Large | _Lazy


class Outbox:
    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._lanes: dict[int, deque[_Item]] = {}
        self._turns: deque[int] = deque()  # lanes with something to send, in turn order
        self._blobs: deque[_Blob] = deque()
        self._large_waiting = 0
        self._next_ref = 0
        self.peak_frames = 0  #: the most frames one lane ever held (for the tests' bounds)
        self.written = 0

    # -- filling -----------------------------------------------------------------------------

    def push(self, lane: int, payload: bytes) -> None:
        if len(payload) > self.limits.inline_limit:
            if self._large_waiting + len(self._blobs) >= self.limits.max_large:
                raise Overflow(f"more than {self.limits.max_large} large payloads are waiting")
            self._large_waiting += 1
            self._add(lane, _Large(payload))
        else:
            self._add(lane, payload)

    def push_lazy(self, lane: int, frames: Iterator[bytes]) -> None:
        """Frames produced only as they are sent (a replay of thousands of events)."""
        self._add(lane, _Lazy(frames))

    def clear(self, lane: int) -> None:
        """Forget what a lane still had to send (an ended subscription)."""
        items = self._lanes.pop(lane, None)
        if items:
            self._large_waiting -= sum(isinstance(item, _Large) for item in items)
        if lane in self._turns:
            self._turns.remove(lane)

    def _add(self, lane: int, item: _Item) -> None:
        items = self._lanes.setdefault(lane, deque())
        if len(items) >= self.limits.max_frames:
            raise Overflow(f"more than {self.limits.max_frames} frames are waiting")
        items.append(item)
        self.peak_frames = max(self.peak_frames, len(items))
        if len(items) == 1:
            self._turns.append(lane)

    # -- draining ----------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        return bool(self._turns or self._blobs)

    def bypass(self, payload: bytes) -> bytes | None:
        """The control-stream bytes to write at once for ``payload`` instead of queueing it,
        when that keeps the order and the bounds: nothing waits in any lane and it goes
        inline (counted as written). None: :meth:`push` it."""
        if self._turns or self._blobs or len(payload) > self.limits.inline_limit:
            return None
        data = frame(payload)
        self.written += len(data)
        return data

    def pull(self, budget: int) -> list[Write]:
        """At most about ``budget`` bytes of writes (a frame is never split)."""
        control = bytearray()
        writes: list[Write] = []
        while budget > 0 and (self._turns or self._blobs):
            before = budget
            budget = self._control_round(control, budget)
            budget = self._blob_round(writes, budget)
            if budget == before:
                break  # nothing could move (only large payloads waiting for a free slot)
        if control:
            writes.insert(0, ControlWrite(bytes(control)))
        return writes

    def _control_round(self, out: bytearray, budget: int) -> int:
        for _ in range(len(self._turns)):
            if budget <= 0:
                break
            lane = self._turns.popleft()
            items = self._lanes[lane]
            sent = 0
            while items and budget > 0 and sent < BATCH:
                payload = self._next_payload(items)
                if payload is None:
                    continue
                data = self._inline(payload)
                if data is None:  # no slot for another large payload now: keep it, next lane
                    items.appendleft(_Large(payload))
                    self._large_waiting += 1
                    break
                out += data
                budget -= len(data)
                self.written += len(data)
                sent += 1
            if items:
                self._turns.append(lane)
            else:
                del self._lanes[lane]
        return budget

    def _next_payload(self, items: deque[_Item]) -> bytes | None:
        head = items[0]
        if isinstance(head, _Lazy):
            payload = next(head.frames, None)
            if payload is None:
                items.popleft()
            return payload
        items.popleft()
        if isinstance(head, _Large):
            self._large_waiting -= 1
            return head.payload
        return head

    def _inline(self, payload: bytes) -> bytes | None:
        """The control-stream bytes for ``payload``: itself, or a placeholder for a stream."""
        if len(payload) <= self.limits.inline_limit:
            return frame(payload)
        if len(self._blobs) >= self.limits.max_large:
            return None
        ref, self._next_ref = self._next_ref, self._next_ref + 1
        self._blobs.append(_Blob(ref, REF.pack(ref) + payload))
        return frame(large(ref, len(payload)))

    def _blob_round(self, writes: list[Write], budget: int) -> int:
        for _ in range(len(self._blobs)):
            if budget <= 0:
                break
            blob = self._blobs.popleft()
            size = min(self.limits.chunk, budget, len(blob.data) - blob.offset)
            chunk = blob.data[blob.offset : blob.offset + size]
            first, blob.offset = blob.offset == 0, blob.offset + size
            last = blob.offset >= len(blob.data)
            writes.append(StreamWrite(blob.ref, chunk, first, last))
            budget -= size
            self.written += size
            if not last:
                self._blobs.append(blob)
        return budget

    def statistics(self) -> dict[str, int]:
        return {
            "lanes": len(self._lanes),
            "frames": sum(len(items) for items in self._lanes.values()),
            "peak_frames": self.peak_frames,
            "large_waiting": self._large_waiting,
            "streams": len(self._blobs),
            "written": self.written,
        }
