"""The Trio driver of ``sidecode-trio attach`` (thin: the printing is :mod:`.render`'s, the
parsing :mod:`.sse`'s), and the stream following that ``send --wait`` (:mod:`.send`) shares.

``attach`` runs two tasks in one nursery: one follows the session's event stream, reconnecting
with ``Last-Event-ID`` after a drop (so the daemon replays exactly what was missed), one reads
keys from a terminal (cbreak mode: one key at a time, no echo; restored on every exit path,
signals included) and makes the HTTP call each key asks for.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import termios
import tty
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, aclosing, contextmanager
from pathlib import Path
from typing import Any, Final, Protocol, TextIO

import trio

from ..errors import SidecodeError
from .client import DaemonAPI, locate, why_unreachable
from .render import KEYS_HELP, Call, Malformed, Renderer
from .sse import Frame, SSEParser

RETRY_FIRST: Final = 0.5  # seconds before the first reconnect; doubles up to RETRY_MAX
RETRY_MAX: Final = 10.0
FATAL: Final = frozenset({"unknown_session", "unauthorized", "forbidden", "scope_required"})
QUIT_KEYS: Final = frozenset({"q", "\x04"})  # q, Ctrl-D
STATUS_REWRITE: Final = "\x1b[1A\x1b[2K"  # cursor up one line, clear it: the status line again

Write = Callable[[str], None]


class ByteStream(Protocol):
    def aiter_bytes(self) -> AsyncIterator[bytes]: ...


class EventSource(Protocol):
    """Where event streams come from (:class:`DaemonAPI`; tests pass their own)."""

    def events(
        self, session_id: str, since: str | None
    ) -> AbstractAsyncContextManager[ByteStream]: ...


def writer(out: TextIO) -> Write:
    def write(text: str) -> None:
        if text:
            out.write(text)
            out.flush()

    return write


async def follow(
    api: EventSource,
    session_id: str,
    since: str | None,
    on_drop: Callable[[str], None],
    relocate: Callable[[], str | None] | None = None,
) -> AsyncGenerator[Frame, None]:
    """The session's frames, forever: after a drop, reconnect from the last id seen.

    ``relocate`` runs before each reconnect: it re-reads where the daemon is (a daemon that
    restarted may listen on another port) and may give a better reason for a failed one."""
    delay, better = RETRY_FIRST, None
    while True:
        try:
            async with api.events(session_id, since) as response:
                delay = RETRY_FIRST
                parser = SSEParser()
                chunks = response.aiter_bytes()
                try:
                    async for chunk in chunks:
                        for frame in parser.feed(chunk):
                            since = frame.id or since
                            yield frame
                finally:
                    if inspect.isasyncgen(chunks):  # the consumer may stop mid-stream
                        await chunks.aclose()
            why = "the daemon ended the stream"
        except SidecodeError as exc:  # the client's errors, a broken connection's included
            if exc.code in FATAL:
                raise
            why = exc.message
            if exc.code == "unreachable" and better:
                why = better
        on_drop(f"disconnected ({why}); reconnecting in {delay:g} s")
        await trio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)
        if relocate is not None:
            try:
                better = relocate()
            except SidecodeError as exc:  # daemon.json is gone: say so if the retry fails
                better = exc.message


def _reason(status: str) -> str:
    return status.partition("; reconnecting in")[0]


def decode(frame: Frame) -> dict[str, Any] | None:
    """A frame's snapshot (``frame.event == "snapshot"``) or event, the JSON object the daemon
    wrote (:mod:`.render` reads it: no converter, no wire classes); None if it carries none."""
    try:
        data = json.loads(frame.data)
        item = data["snapshot" if frame.event == "snapshot" else "event"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    return item if isinstance(item, dict) else None


def snapshot_reason(frame: Frame) -> str:
    try:
        return str(json.loads(frame.data).get("reason", ""))
    except (ValueError, AttributeError, RecursionError):
        return ""


class Attach:
    """One ``attach``: the renderer, where it writes, and why it stopped."""

    def __init__(
        self,
        api: DaemonAPI,
        renderer: Renderer,
        write: Write,
        keys: bool,
        state_dir: Path | None = None,
    ) -> None:
        self.api, self.renderer, self._write = api, renderer, write
        self._help = keys  # shown once, under the first snapshot
        self._interactive = keys  # a terminal: the status line is rewritten in place
        self._state_dir = state_dir
        self._status: str | None = None  #: the connection status line last written, if last
        self.stop = trio.Event()
        self.error: SidecodeError | None = None

    def write(self, text: str) -> None:
        if text:
            self._status = None
        self._write(text)

    async def run(self, keys_fd: int | None) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow)
            nursery.start_soon(self._signals)
            if keys_fd is not None:
                nursery.start_soon(self._keys, keys_fd, nursery)
            await self.stop.wait()
            nursery.cancel_scope.cancel()

    async def _follow(self) -> None:
        relocate = self._relocate if self._state_dir is not None else None
        frames = follow(self.api, self.renderer.session_id, None, self._dropped, relocate)
        try:
            async with aclosing(frames):
                async for frame in frames:
                    self._show(frame)
                    if self.renderer.ended:
                        break
        except SidecodeError as exc:
            self.error = exc
        self.stop.set()

    def _show(self, frame: Frame) -> None:
        """A frame's text; nothing for one this client cannot read (not JSON, a field of the
        wrong type) or does not know (a newer event type)."""
        item = decode(frame)
        if item is None:
            return
        try:
            if frame.event != "snapshot":
                self.write(self.renderer.event(item))
                return
            self.write(self.renderer.snapshot(item, snapshot_reason(frame)))
        except Malformed:
            return
        if self._help:
            self.write(self.renderer.note(KEYS_HELP))
            self._help = False

    def _dropped(self, why: str) -> None:
        """One status line for a run of failed reconnects: rewritten in place on a terminal
        (cursor up, clear line), elsewhere written again only when the reason changes."""
        line = self.renderer.note(why)
        if self._status is not None:
            if not self._interactive:
                if _reason(why) == _reason(self._status):
                    return
            else:
                line = STATUS_REWRITE + line
        self._write(line)
        self._status = why

    def _relocate(self) -> str | None:
        """Before a reconnect: where ``daemon.json`` says the daemon is now, and why the last
        attempt failed if its pid is dead."""
        assert self._state_dir is not None
        location = locate(self._state_dir)
        self.api.move(location)
        return why_unreachable(location)

    async def _keys(self, fd: int, nursery: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(fd)
            data = os.read(fd, 64)
            for key in data.decode(errors="ignore") if data else "\x04":
                if key in QUIT_KEYS:
                    self.stop.set()
                    return
                call = self.renderer.key(key)
                if call is not None:
                    nursery.start_soon(self._call, call)  # keys stay live while it is sent
                elif key in "?h":
                    self.write(self.renderer.note(KEYS_HELP))

    async def _call(self, call: Call) -> None:
        try:
            await self.api.call(call.method, call.path, call.body)
        except SidecodeError as exc:
            self.write(self.renderer.note(f"{call.what}: {exc.message}"))

    async def _signals(self) -> None:
        # Ctrl-C, a closed terminal, kill: stop through the same path as 'q', so the terminal
        # is restored by the code that changed it
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for _ in signals:
                self.stop.set()
                return


@contextmanager
def cbreak(fd: int) -> Iterator[None]:
    """Keys one at a time, not echoed; the terminal's settings come back on any exit."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def attach(
    url: str,
    token: str,
    session: str,
    out: TextIO,
    *,
    keys_fd: int | None,
    color: bool,
    history: int,
    state_dir: Path | None = None,
) -> int:
    api = DaemonAPI(url, token)
    try:
        try:
            session_id = await api.resolve(session)
        except SidecodeError as exc:  # after a kill -9, say so rather than "cannot reach"
            stale = why_unreachable(locate(state_dir)) if state_dir is not None else None
            if exc.code != "unreachable" or stale is None:
                raise
            raise SidecodeError(stale, code="unreachable") from None
        renderer = Renderer(session_id, color=color, history=history)
        keys = keys_fd is not None
        run = Attach(api, renderer, writer(out), keys=keys, state_dir=state_dir)
        if keys_fd is None:
            await run.run(None)
        else:
            with cbreak(keys_fd):
                await run.run(keys_fd)
    finally:
        await api.aclose()
    if run.error is not None:
        raise run.error
    return 0
