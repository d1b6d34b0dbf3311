"""The baseline: a raw Trio SSE relay, "fake CLI stdout line → raw relay → N sockets".

No quart, no hypercorn, no h11, no SQLite, no event log: it does only the work any relay must do,
the way the daemon does it, so ``daemon / relay`` isolates the cost of the framework and the log.

* It runs the same fake CLI (same wrapper, same flags as the daemon) and reads its stdout in
  256 KiB reads, splits lines and ``json.loads`` each.
* The text deltas of one read are coalesced like ``sidecode_trio.claude.translate.coalesce``
  (same message and block, up to 1024 characters); each becomes the daemon's envelope
  (``session_id, epoch, cursor, at, event``) and SSE frame (``id``/``event``/``data``), encoded
  once, and is offered (``send_nowait``) to one bounded channel per client.
* One writer task per client takes everything queued (up to 256 frames), joins it, and writes one
  HTTP/1.1 chunk (``transfer-encoding: chunked``, as hypercorn does).
* A CLI ``result`` line becomes an ``event: turn.completed`` frame.
* ``GET /replay`` writes ``--replay-frames`` pre-encoded frames from memory, 256 per write.
* ``GET /blob`` answers with the bytes of the file last named by ``blob <path>`` (the baseline of
  the snapshot scenario: the same bytes, no work), on a kept-alive connection.

With ``--mode a0`` it is the **floor** instead ("A0" of ``/work/shared/reference/sse-fanout.md``):
no task per client and no coalescing. The CLI reader parses each stdout line, encodes each text
delta's envelope and frame once, and makes one non-blocking ``send()`` per client, from the reader
itself; bytes a full socket did not take wait in that client's backlog, and the reader drains the
backlogs (``wait_writable``) before it reads more of the CLI's stdout (backpressure). Each client's
own task only notices it leaving.

Control on stdin, one command a line: ``go <text>`` (a user message to the CLI), ``blob <path>``,
``quit``.
On start it prints ``{"port": N}`` on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any, Final

import trio

READ_SIZE: Final = 256 * 1024
CLIENT_QUEUE: Final = 4096  # the daemon's default client_queue
WRITE_FRAMES: Final = 256  # the daemon's REPLAY_CHUNK: frames joined into one write
MAX_COALESCED: Final = 1024  # characters, as the daemon's coalesce()
RESPONSE_HEAD: Final = (
    b"HTTP/1.1 200 \r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\n"
    b"x-accel-buffering: no\r\n"
    b"transfer-encoding: chunked\r\n"
    b"date: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n"
)
RETRY: Final = b"retry: 2000\n\n"


def chunk(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(body), body)


class Encoder:
    """Numbers events and encodes each once, in the daemon's envelope and SSE frame shape."""

    def __init__(self, session_id: str, epoch: str) -> None:
        self.session_id = session_id
        self.epoch = epoch
        self.cursor = 0

    def frame(self, event: dict[str, Any]) -> bytes:
        self.cursor += 1
        envelope = {
            "session_id": self.session_id,
            "epoch": self.epoch,
            "cursor": self.cursor,
            "at": round(time.time(), 6),
            "event": event,
        }
        data = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
        return b"id: %s:%d\nevent: %s\ndata: %s\n\n" % (
            self.epoch.encode(),
            self.cursor,
            str(event["type"]).encode(),
            data,
        )


def text_events(
    frames: list[dict[str, Any]], message_id: str, coalesce: bool = True
) -> Iterator[dict[str, Any]]:
    """The text deltas and turn ends of one read, deltas coalesced as the daemon does (unless
    ``coalesce`` is false: then one event per delta)."""
    pending: dict[str, Any] | None = None
    for frame in frames:
        kind = frame.get("type")
        if kind == "result":
            if pending is not None:
                yield pending
                pending = None
            yield {"type": "turn.completed", "turn_id": "", "result": ""}
            continue
        event = frame.get("event") if kind == "stream_event" else None
        if not isinstance(event, dict) or event.get("type") != "content_block_delta":
            continue
        delta, index = event.get("delta") or {}, event.get("index", 0)
        if delta.get("type") != "text_delta":
            continue
        text = str(delta.get("text", ""))
        if (
            coalesce
            and pending is not None
            and pending["index"] == index
            and len(pending["text"]) + len(text) <= MAX_COALESCED
        ):
            pending["text"] += text
            continue
        if pending is not None:
            yield pending
        pending = {"type": "text.delta", "message_id": message_id, "index": index, "text": text}
    if pending is not None:
        yield pending


class Relay:
    def __init__(self, encoder: Encoder, replay: list[bytes]) -> None:
        self.encoder = encoder
        self.replay = replay
        self.clients: set[trio.MemorySendChannel[bytes]] = set()
        self.message_id = "msg_relay"
        self.cli_stdin: trio.abc.SendStream | None = None
        self.blob = b"null"

    def publish(self, frames: list[dict[str, Any]]) -> None:
        for frame in frames:
            if frame.get("type") == "stream_event":
                event = frame.get("event") or {}
                if event.get("type") == "message_start":
                    self.message_id = str(event.get("message", {}).get("id", self.message_id))
        for event in text_events(frames, self.message_id):
            encoded = self.encoder.frame(event)
            for client in list(self.clients):
                try:
                    client.send_nowait(encoded)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    client.close()  # lagging or gone, as the daemon drops a subscriber
                    self.clients.discard(client)

    async def read_cli(self, stdout: trio.abc.ReceiveStream) -> None:
        rest = b""
        while data := await stdout.receive_some(READ_SIZE):
            *lines, rest = (rest + data).split(b"\n")
            frames = [json.loads(line) for line in lines if line.startswith(b"{")]
            if frames:
                self.publish(frames)

    async def handle(self, stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            more = await stream.receive_some(65536)
            if not more:
                return
            head += more
        path = head.split(b" ", 2)[1]
        if path.startswith(b"/blob"):
            await self.serve_blobs(stream, head.partition(b"\r\n\r\n")[2])
            return
        await stream.send_all(RESPONSE_HEAD + chunk(RETRY))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_eof, stream, nursery.cancel_scope)
            if path.startswith(b"/replay"):
                await self.write_replay(stream)
                await trio.sleep_forever()
            else:
                await self.follow(stream)
            nursery.cancel_scope.cancel()

    async def serve_blobs(self, stream: trio.SocketStream, rest: bytes) -> None:
        """Answer ``GET /blob`` requests (bodiless) on one connection until the client leaves."""
        while True:
            head = b"HTTP/1.1 200 \r\ncontent-type: application/json\r\n"
            await stream.send_all(head + b"content-length: %d\r\n\r\n" % len(self.blob) + self.blob)
            while b"\r\n\r\n" not in rest:
                more = await stream.receive_some(65536)
                if not more:
                    return
                rest += more
            rest = rest.partition(b"\r\n\r\n")[2]

    async def write_replay(self, stream: trio.SocketStream) -> None:
        frames = self.replay
        for start in range(0, len(frames), WRITE_FRAMES):
            await stream.send_all(chunk(b"".join(frames[start : start + WRITE_FRAMES])))

    async def follow(self, stream: trio.SocketStream) -> None:
        send, receive = trio.open_memory_channel[bytes](CLIENT_QUEUE)
        self.clients.add(send)
        try:
            async for first in receive:
                frames = [first]
                while len(frames) < WRITE_FRAMES:
                    try:
                        frames.append(receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await stream.send_all(chunk(b"".join(frames)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.clients.discard(send)
            send.close()


class FloorRelay(Relay):
    """A0, the floor: one non-blocking ``send()`` per client per event, from the CLI reader."""

    def __init__(self, encoder: Encoder, replay: list[bytes]) -> None:
        super().__init__(encoder, replay)
        self.socks: dict[socket.socket, bytearray] = {}  #: client -> bytes it has yet to take

    def publish(self, frames: list[dict[str, Any]]) -> None:
        for frame in frames:
            if frame.get("type") == "stream_event":
                event = frame.get("event") or {}
                if event.get("type") == "message_start":
                    self.message_id = str(event.get("message", {}).get("id", self.message_id))
        for event in text_events(frames, self.message_id, coalesce=False):
            data = chunk(self.encoder.frame(event))
            for sock, backlog in list(self.socks.items()):
                if backlog:
                    backlog += data
                    continue
                try:
                    sent = sock.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self.drop(sock)
                    continue
                if sent < len(data):
                    backlog += data[sent:]

    def drop(self, sock: socket.socket) -> None:
        if self.socks.pop(sock, None) is not None:
            trio.lowlevel.notify_closing(sock)  # wakes a drain() waiting on it
            sock.close()

    async def drain(self) -> None:
        """Backpressure: wait until every client took its backlog."""
        for sock, backlog in list(self.socks.items()):
            while backlog and sock in self.socks:
                try:
                    await trio.lowlevel.wait_writable(sock)
                except trio.ClosedResourceError:
                    break
                try:
                    sent = sock.send(backlog)
                except BlockingIOError:
                    continue
                except OSError:
                    self.drop(sock)
                    break
                del backlog[:sent]

    async def read_cli(self, stdout: trio.abc.ReceiveStream) -> None:
        rest = b""
        while data := await stdout.receive_some(READ_SIZE):
            *lines, rest = (rest + data).split(b"\n")
            frames = [json.loads(line) for line in lines if line.startswith(b"{")]
            if frames:
                self.publish(frames)
                await self.drain()

    async def follow(self, stream: trio.SocketStream) -> None:
        # a dup of the socket, for plain non-blocking send() calls (trio's is non-blocking too)
        sock = socket.fromfd(stream.socket.fileno(), socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        self.socks[sock] = bytearray()
        try:
            await trio.sleep_forever()  # _cancel_on_eof ends this when the client leaves
        finally:
            self.drop(sock)


async def _cancel_on_eof(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    try:
        while await stream.receive_some(65536):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()


def cli_argv(wrapper: str) -> list[str]:
    """The daemon's launch flags (``sidecode_trio.claude.messages.LaunchSpec.argv``)."""
    return [
        wrapper,
        *("-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose"),
        *("--include-partial-messages", "--permission-prompt-tool", "stdio"),
        *("--permission-mode", "default", f"--session-id={uuid.uuid4()}"),
    ]


def user_line(text: str) -> bytes:
    message = {
        "type": "user",
        "message": {"role": "user", "content": text},
        "parent_tool_use_id": None,
        "session_id": "default",
        "uuid": str(uuid.uuid4()),
    }
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


async def control(relay: Relay, stdin: trio.abc.ReceiveStream) -> None:
    """Commands from the orchestrator until ``quit`` or EOF."""
    rest = b""
    while data := await stdin.receive_some(65536):
        *lines, rest = (rest + data).split(b"\n")
        for line in lines:
            command, _, arg = line.decode().partition(" ")
            if command == "quit":
                return
            if command == "go" and relay.cli_stdin is not None:
                await relay.cli_stdin.send_all(user_line(arg))
            elif command == "blob":
                relay.blob = await trio.Path(arg).read_bytes()
                print("ok", flush=True)


def replay_frames(count: int, text_chars: int) -> list[bytes]:
    encoder = Encoder(str(uuid.uuid4()), "replayepoch0")
    event = {"type": "text.delta", "message_id": "msg_replay", "index": 0}
    return [encoder.frame(event | {"text": "7" * (text_chars - 1) + ";"}) for _ in range(count)]


async def serve(args: argparse.Namespace) -> None:
    kind = FloorRelay if args.mode == "a0" else Relay
    relay = kind(Encoder(str(uuid.uuid4()), "relayepoch01"), replay_frames(args.replay_frames, 14))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, relay.handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        process = await trio.lowlevel.open_process(
            cli_argv(args.cli),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=args.cwd,
        )
        stdin, stdout = process.stdin, process.stdout
        assert stdout is not None and stdin is not None
        try:
            relay.cli_stdin = stdin
            nursery.start_soon(relay.read_cli, stdout)
            print(json.dumps({"port": port}), flush=True)
            await control(relay, trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())))
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                await stdin.aclose()  # the CLI exits on EOF
                await process.wait()
            if process.returncode is None:
                process.kill()
        nursery.cancel_scope.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cli", required=True, help="the fake CLI wrapper")
    parser.add_argument("--cwd", required=True)
    parser.add_argument("--replay-frames", type=int, default=10_000)
    parser.add_argument("--cpu", type=int, default=-1)
    parser.add_argument("--mode", choices=["relay", "a0"], default="relay")
    args = parser.parse_args()
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    trio.run(serve, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
