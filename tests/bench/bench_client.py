"""The benchmark's SSE client: one separate process holding every socket, with a tight epoll loop.

Run by ``run.py`` (never in the daemon's process: a client sharing the server's interpreter
distorts the numbers). It connects N sockets to one event stream, then its hot loop does only
``epoll.poll`` → ``recv`` → ``time.monotonic_ns()`` → append ``(t_poll, t_recv, fd, bytes)``, plus
a cheap substring count that says when a stream is done. HTTP de-chunking, SSE framing and JSON
parsing happen after the run (:mod:`bench_sse`), so the parsing cost never lands on a latency.

With ``--native BINARY`` (live mode), the hot loop is ``bench_client.c`` instead (built by
:func:`build_native` with the system C compiler): recv and a timestamp only, in C, so that the
client's own per-recv cost (~10-20 µs in Python at 100 clients) stays out of the latencies.

Modes:

* ``live``: connect, read the response head, print ``ready`` on stdout, then record until every
  stream has shown ``--end-count`` end markers (``event: turn.completed``), ended, or timed out.
* ``hold``: connect ``--clients`` streams, round robin over the comma-separated ``--path`` list,
  read each response head, print ``ready``, then hold them open (unread) until stdin ends.
* ``replay``: ``--repeat`` times: connect one socket, take ``t0``, send the request, and record
  until ``--frames`` event frames have arrived (time to first byte and to the last frame).

The result is one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import bench_sse

RECV_SIZE: Final = 256 * 1024  # one buffer, reused: recv(256 KiB) would mmap per call (+15 µs)
END_MARKER: Final = b"event: turn.completed"
FRAME_MARKER: Final = b"\nevent: "
CHUNKED_END: Final = b"\r\n0\r\n\r\n"  # the server ended the response (e.g. dropped a laggard)
CONNECT_TIMEOUT: Final = 10.0

Record = bench_sse.Record


def _request(args: argparse.Namespace, path: str = "") -> bytes:
    lines = [
        f"GET {path or args.path} HTTP/1.1",
        f"Host: {args.host}:{args.port}",
        "Accept: text/event-stream",
        "Cache-Control: no-cache",
    ]
    if args.token:
        lines.append(f"Authorization: Bearer {args.token}")
    if args.last_event_id:
        lines.append(f"Last-Event-ID: {args.last_event_id}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _connect(args: argparse.Namespace) -> socket.socket:
    sock = socket.create_connection((args.host, args.port), timeout=CONNECT_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_head(sock: socket.socket) -> tuple[int, bytes]:
    """Block until the response head is in; return ``(t_ns, bytes read so far)``."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError(f"the server closed the stream: {data[:200]!r}")
        data += more
    status = data.split(b"\r\n", 1)[0]
    if b" 200" not in status:
        raise ConnectionError(f"unexpected response: {data[:300]!r}")
    return time.monotonic_ns(), data


def pump(
    socks: Sequence[socket.socket], marker: bytes, target: int, deadline_ns: int
) -> list[Record]:
    """The hot loop: record every recv until each socket shows ``target`` markers or ends."""
    records: list[Record] = []
    append = records.append
    now = time.monotonic_ns
    poller = select.epoll()
    view = memoryview(bytearray(RECV_SIZE))
    recv: dict[int, Any] = {}
    counts: dict[int, int] = {}
    tails: dict[int, bytes] = {}
    keep = len(marker) - 1
    for sock in socks:
        sock.setblocking(False)
        fd = sock.fileno()
        poller.register(fd, select.EPOLLIN)
        recv[fd], counts[fd], tails[fd] = sock.recv_into, 0, b""
    remaining = len(socks)
    try:
        while remaining:
            timeout = (deadline_ns - now()) / 1e9
            if timeout <= 0:
                break
            ready = poller.poll(timeout)
            t_poll = now()  # every fd in ``ready`` had data by now: the client's own delay is
            for fd, _ in ready:  # t_recv - t_poll, the serial cost of the recvs before it
                try:
                    data = bytes(view[: recv[fd](view)])
                except BlockingIOError:
                    continue
                append((t_poll, now(), fd, data))
                found = counts[fd] + (tails[fd] + data).count(marker)
                counts[fd], tails[fd] = found, data[-keep:]
                if found >= target or not data or data.endswith(CHUNKED_END):
                    poller.unregister(fd)
                    remaining -= 1
    finally:
        poller.close()
    return records


def run_live(args: argparse.Namespace) -> dict[str, Any]:
    socks = [_connect(args) for _ in range(args.clients)]
    request = _request(args)
    heads: list[Record] = []
    try:
        for sock in socks:
            sock.sendall(request)
        for sock in socks:
            t, data = _read_head(sock)
            heads.append((t, t, sock.fileno(), data))
        print("ready", flush=True)
        deadline = time.monotonic_ns() + int(args.timeout * 1e9)
        records = pump(socks, END_MARKER, args.end_count, deadline)
        print("done", flush=True)
    finally:
        for sock in socks:
            sock.close()
    order = [head[2] for head in heads]  # fds as recorded (closed sockets say -1)
    result = bench_sse.analyse_live(heads + records, order, args.warmup, args.dump)
    return result | {"client": "Python"}


def build_native(dest: Path) -> Path | None:
    """Compile ``bench_client.c`` into ``dest`` with ``cc`` (or ``gcc``); None when there is no
    C compiler or the build fails (the caller falls back to the Python epoll loop)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source = Path(__file__).resolve().with_suffix(".c")
    binary = dest / "bench_client_native"
    built = subprocess.run(
        [compiler, "-O2", "-o", str(binary), str(source)], capture_output=True, text=True
    )
    if built.returncode != 0:
        print(built.stderr, file=sys.stderr)
        return None
    return binary


def read_native(path: Path) -> tuple[list[int], list[Record]]:
    """The connect order and the records ``bench_client.c`` wrote."""
    raw = path.read_bytes()
    if raw[:4] != b"SCR1":
        raise ValueError(f"{path}: not a native client's records")
    (count,) = struct.unpack_from("<I", raw, 4)
    order = list(struct.unpack_from(f"<{count}i", raw, 8))
    records: list[Record] = []
    pos, head = 8 + 4 * count, struct.Struct("<qqiI")
    while pos < len(raw):
        t_poll, t_recv, fd, size = head.unpack_from(raw, pos)
        pos += head.size
        records.append((t_poll, t_recv, fd, raw[pos : pos + size]))
        pos += size
    return order, records


def run_native(args: argparse.Namespace) -> dict[str, Any]:
    """Live mode through the C client; this process only waits, then analyses its records."""
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        request, out = Path(tmp) / "request", Path(tmp) / "records"
        request.write_bytes(_request(args))
        argv = [args.native, args.host, str(args.port), str(request), str(args.clients)]
        argv += [str(args.end_count), str(args.timeout), str(out)]
        subprocess.run(argv, check=True, stdout=sys.stdout)  # it says "ready", then "done"
        order, records = read_native(out)
    result = bench_sse.analyse_live(records, order, args.warmup, args.dump)
    return result | {"client": "C"}


def run_hold(args: argparse.Namespace) -> dict[str, Any]:
    paths = args.path.split(",")
    socks = [_connect(args) for _ in range(args.clients)]
    try:
        for number, sock in enumerate(socks):
            sock.sendall(_request(args, paths[number % len(paths)]))
        for sock in socks:
            _read_head(sock)
        print("ready", flush=True)
        sys.stdin.read()  # until the orchestrator closes our stdin
    finally:
        for sock in socks:
            sock.close()
    return {"held": len(socks)}


def _replay_once(args: argparse.Namespace, request: bytes) -> dict[str, Any]:
    sock = _connect(args)
    try:
        t0 = time.monotonic_ns()
        sock.sendall(request)
        records = pump([sock], FRAME_MARKER, args.frames, t0 + int(args.timeout * 1e9))
    finally:
        sock.close()
    return bench_sse.analyse_replay(t0, records, args.frames)


def run_replay(args: argparse.Namespace) -> dict[str, Any]:
    request = _request(args)
    runs = [_replay_once(args, request) for _ in range(args.repeat)]
    return {"runs": runs}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("mode", choices=["live", "replay", "hold"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--last-event-id", default="")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=0, help="deltas per client to ignore")
    parser.add_argument("--end-count", type=int, default=1, help="turns to wait for (live)")
    parser.add_argument("--frames", type=int, default=0, help="event frames to wait for (replay)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--cpu", type=int, default=-1, help="pin this process to one CPU")
    parser.add_argument("--dump", default="", help="live: write every delivery to this CSV")
    parser.add_argument("--native", default="", help="live: the compiled bench_client.c to use")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    modes = {"live": run_native if args.native else run_live, "replay": run_replay}
    modes["hold"] = run_hold
    result = modes[args.mode](args)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
