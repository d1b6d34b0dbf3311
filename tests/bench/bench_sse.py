"""Offline analysis of what the benchmark client recorded (pure: bytes and times in, numbers out).

A stream is HTTP/1.1: a response head, then a chunked body (hypercorn and the raw relay both
send ``transfer-encoding: chunked``) holding SSE frames separated by a blank line. Each frame gets
the receive time of the ``recv`` that completed it. For a ``text.delta`` frame every stamp in its
text (``<monotonic_ns>;`` from ``[[stamp]]``, several when deltas were coalesced) gives one
latency: receive time - stamp.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Final

TEXT_DELTA: Final = b"text.delta"
TURN_COMPLETED: Final = b"turn.completed"

Record = tuple[int, int, int, bytes]  # (t_poll_ns, t_recv_ns, fd, data)


class StreamParser:
    """Feed the raw bytes of one response; get back its complete SSE frames, in order."""

    def __init__(self) -> None:
        self._raw = bytearray()
        self._body = bytearray()
        self._head_done = False
        self._chunked = False
        self._chunk_left = 0  # data bytes left in the current chunk
        self._need_crlf = False  # the CRLF after a chunk's data is still to come
        self.ended = False  # the zero-size last chunk arrived
        self.status = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._raw += data
        if not self._head_done and not self._parse_head():
            return []
        if self._chunked:
            self._dechunk()
        else:
            self._body += self._raw
            self._raw.clear()
        return self._frames()

    def _parse_head(self) -> bool:
        end = self._raw.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._raw[:end]).lower()
        self.status = int(head.split(b" ", 2)[1])
        self._chunked = b"transfer-encoding: chunked" in head
        del self._raw[: end + 4]
        self._head_done = True
        return True

    def _dechunk(self) -> None:
        raw, pos = self._raw, 0
        while not self.ended:
            if self._need_crlf:
                if len(raw) - pos < 2:
                    break
                pos, self._need_crlf = pos + 2, False
            if self._chunk_left == 0:
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(raw[pos:eol].split(b";")[0], 16)
                pos = eol + 2
                if size == 0:
                    self.ended = True
                    break
                self._chunk_left = size
            take = min(self._chunk_left, len(raw) - pos)
            if take <= 0:
                break
            self._body += raw[pos : pos + take]
            pos += take
            self._chunk_left -= take
            self._need_crlf = self._chunk_left == 0
        del raw[:pos]

    def _frames(self) -> list[bytes]:
        body = self._body
        frames: list[bytes] = []
        start = 0
        while True:
            end = body.find(b"\n\n", start)
            if end < 0:
                break
            frames.append(bytes(body[start:end]))
            start = end + 2
        del body[:start]
        return frames


def frame_fields(frame: bytes) -> dict[bytes, bytes]:
    """``{field: value}`` of one SSE frame (comments skipped; ``data`` is one line here)."""
    fields: dict[bytes, bytes] = {}
    for line in frame.split(b"\n"):
        if line and not line.startswith(b":"):
            name, _, value = line.partition(b":")
            fields[name] = value[1:] if value.startswith(b" ") else value
    return fields


def stamps_of(data: bytes) -> list[int]:
    """The ``[[stamp]]`` stamps in a ``text.delta`` envelope's text."""
    text: str = json.loads(data)["event"]["text"]
    return [int(part) for part in text.split(";") if part.isdigit()]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted ``values`` (NaN when empty)."""
    if not values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[min(rank, len(values)) - 1]


def summary_us(values_ns: Iterable[int]) -> dict[str, float]:
    ordered = sorted(values_ns)
    result = {f"p{q:g}": percentile(ordered, q) / 1e3 for q in (50, 90, 99)}
    result["max"] = ordered[-1] / 1e3 if ordered else math.nan
    result["n"] = len(ordered)
    return result


def split_by_fd(records: Iterable[Record]) -> dict[int, list[Record]]:
    streams: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        streams[record[2]].append(record)
    return streams


class _ClientStats:
    """One client's deliveries: latencies per stamp, counts, first and last receive times."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.deltas = 0
        self.events = 0
        self.first_stamp = 0  # when the CLI wrote the first delta this client got
        self.last_ns = 0  # when the last delta arrived
        self.completed = False
        self.latency: dict[int, int] = {}  # stamp -> t_recv - stamp
        self.waits: list[int] = []  # t_recv - t_poll: the client's own serial cost

    def add_delta_frame(self, t_poll: int, t_recv: int, data: bytes) -> None:
        self.events += 1
        self.last_ns = t_recv
        for stamp in stamps_of(data):
            self.first_stamp = self.first_stamp or stamp
            self.deltas += 1
            if self.deltas > self.warmup:
                self.latency[stamp] = t_recv - stamp
                self.waits.append(t_recv - t_poll)


def _client_stats(records: list[Record], warmup: int) -> _ClientStats:
    stats = _ClientStats(warmup)
    parser = StreamParser()
    for t_poll, t_recv, _, data in records:
        for frame in parser.feed(data):
            fields = frame_fields(frame)
            if fields.get(b"event") == TEXT_DELTA:
                stats.add_delta_frame(t_poll, t_recv, fields[b"data"])
    # the client stops reading inside the (large) turn.completed frame: look at the raw tail
    tail = b"".join(record[3] for record in records[-4:])
    stats.completed = b"event: " + TURN_COMPLETED in tail
    return stats


def analyse_live(
    records: list[Record], order: list[int], warmup: int, dump: str = ""
) -> dict[str, Any]:
    """Latency and throughput of a live run over every client's stream.

    ``dump``: a CSV file to write every measured delivery to (``client,stamp_ns,latency_ns``).
    """
    streams = split_by_fd(records)
    clients = [_client_stats(streams.get(fd, []), warmup) for fd in order]
    if dump:
        write_deliveries(dump, clients)
    worst: dict[int, int] = {}
    for client in clients:
        for stamp, latency in client.latency.items():
            worst[stamp] = max(latency, worst.get(stamp, latency))
    # from the CLI writing the first delta to the last delta received by the slowest client
    first = min((c.first_stamp for c in clients if c.first_stamp), default=0)
    last = max((c.last_ns for c in clients), default=0)
    window = max(last - first, 1) / 1e9
    events = sum(c.events for c in clients)
    deltas = sum(c.deltas for c in clients)
    return {
        "clients": len(clients),
        "completed": sum(c.completed for c in clients),
        "events": events,
        "deltas": deltas,
        "deltas_min": min((c.deltas for c in clients), default=0),
        "window_s": window,
        "events_per_s": events / window,
        "deltas_per_s": deltas / window,
        "latency_us": summary_us(lat for c in clients for lat in c.latency.values()),
        "worst_client_us": summary_us(worst.values()),
        "client_wait_us": summary_us(w for c in clients for w in c.waits),
    }


def write_deliveries(path: str, clients: list[_ClientStats]) -> None:
    with open(path, "w") as out:
        out.write("client,stamp_ns,latency_ns\n")
        for number, client in enumerate(clients):
            out.writelines(f"{number},{s},{lat}\n" for s, lat in client.latency.items())


def analyse_replay(t0: int, records: list[Record], frames: int) -> dict[str, Any]:
    """Times (ms after ``t0``, the request) to the first byte, first frame and ``frames``-th."""
    parser = StreamParser()
    seen = 0
    first_frame = done = 0
    size = 0
    for _, t_recv, _, data in records:
        size += len(data)
        for frame in parser.feed(data):
            if b"\nevent: " in frame or frame.startswith(b"event: "):
                seen += 1
                first_frame = first_frame or t_recv
                if seen == frames:
                    done = t_recv
    ttfb = records[0][1] - t0 if records else 0
    return {
        "frames": seen,
        "bytes": size,
        "ttfb_ms": ttfb / 1e6,
        "first_frame_ms": (first_frame - t0) / 1e6 if first_frame else math.nan,
        "total_ms": (done - t0) / 1e6 if done else math.nan,
    }
