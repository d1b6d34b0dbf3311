"""The :class:`~.broker.Rendezvous` over ntfy (ntfy.sh or self-hosted), Trio-native over httpx.

Selected by the URL's scheme: ``ntfy+https://ntfy.sh`` (or ``ntfy+http://host:port`` for a
self-hosted server on a trusted network; a path after the host is the server's base path;
``user:password@`` or ``:token@`` before the host are credentials). ntfy's
own API (docs.ntfy.sh, "Publishing" and "Subscribe via API"):

* **publish**: ``POST <base>/<topic>`` with the message as the body; the reply (200, the stored
  message as JSON) is the broker's acknowledgement. We send ``Firebase: no``: on ntfy.sh a
  message is otherwise also forwarded to Google's FCM for Android subscribers (it is sealed
  either way; nobody needs it there);
* **subscribe**: one streaming ``GET <base>/<t1>,<t2>,.../json``: newline-delimited JSON,
  first an ``open`` event, then ``message`` events (``{"id", "time", "event", "topic",
  "message"}``) and a ``keepalive`` every 45 s by default. A change of the topic set opens a
  new stream *before* closing the old one (no gap; a message seen on both is delivered once, by
  its ``id``); a dropped stream is re-opened with ``since=<last id>`` (ntfy caches messages for
  12 h by default), so nothing published meanwhile is lost.

Two of ntfy's limits shape the payloads:

* **topic names** are ``[-_A-Za-z0-9]{1,64}``: signaling's ``sidecode/<hex>`` is sent as
  ``sidecode_<hex>`` (:func:`ntfy_topic`), and mapped back on receipt;
* **a message is at most 4,096 bytes of UTF-8** (``message-size-limit``); a longer body becomes
  an attachment, which a self-hosted server refuses unless attachments are configured. A sealed
  offer with many candidates can pass that, so a payload that is longer, not ASCII, or starts
  with ``~`` is sent base64url-encoded in parts: ``~<id>:<i>:<n>:<part>`` (``id`` 16 hex
  digits, ``i`` from 0), reassembled in order on receipt with bounded state (:class:`Parts`).

A server that lets nobody in without credentials (``auth-default-access: deny-all``) gets them
in every request's ``Authorization`` header (:mod:`.auth`: ``Bearer <token>``, or HTTP basic for
a user and password), never in the URL; its refusal (401: credentials it does not take, 403: none,
or too few rights) is a :class:`~.broker.RendezvousError` that says which.

Why MQTT stays the default choice (README "Use it from anywhere"): see :mod:`.broker`.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import httpx
import trio

from ..errors import ConfigError
from .auth import Credentials, redact, split_url
from .broker import INBOX_SIZE, RendezvousError

log = logging.getLogger(__name__)

SCHEMES: Final = {"ntfy+http": "http", "ntfy+https": "https"}
MESSAGE_LIMIT: Final = 4096  # ntfy's default message-size-limit (bytes of UTF-8)
PART_CHARS: Final = 4000  # base64 characters per part (the header fits in the rest)
MAX_PARTS: Final = 24  # parts of one payload, at most (~70 KiB: a sealed message is <= 64 KiB)
MAX_ASSEMBLING: Final = 32  # payloads being reassembled at once; the oldest is dropped past it
SEEN_IDS: Final = 1024  # message ids remembered to deliver a message seen on two streams once
#: a stream's line, at most (a message event of a 4,096-byte message, JSON-escaped, is < 30 KiB):
#: a longer one is skipped, never buffered whole (the server is trusted with sealed bytes only)
MAX_LINE: Final = 64 * 1024
REPLY_LIMIT: Final = 64 * 1024  # bytes of a publication's reply read (ntfy's: < 1 KiB of JSON)
READ_TIMEOUT: Final = 120.0  # seconds of silence on a stream (ntfy says keepalive every 45 s)
RETRY_MAX: Final = 30.0  # seconds between attempts to re-open a dropped stream, at most
_TOPIC: Final = re.compile(r"^[-_A-Za-z0-9]{1,64}$")
_PART: Final = re.compile(r"^~([0-9a-f]{16}):(\d{1,3}):(\d{1,3}):([-_A-Za-z0-9=]*)$")


def parse_url(url: str) -> str:
    """The server's base URL (``https://ntfy.sh``) of an ``ntfy+http(s)://`` rendezvous URL,
    without the credentials it may carry (:func:`.auth.split_url` gives those)."""
    bare, _credentials = split_url(url)
    parts = urllib.parse.urlsplit(bare)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise ConfigError(f"bad rendezvous URL {redact(url)!r}: use ntfy+https://host[/path]")
    if parts.query or parts.fragment:
        raise ConfigError(f"bad rendezvous URL {redact(url)!r}: no query or fragment")
    return f"{SCHEMES[parts.scheme]}://{parts.netloc}{parts.path.rstrip('/')}"


def ntfy_topic(topic: str) -> str:
    """Signaling's topic name as ntfy accepts it (``/`` is not allowed there)."""
    name = topic.replace("/", "_")
    if not _TOPIC.match(name):
        raise RendezvousError(f"{topic!r} cannot be an ntfy topic")
    return name


def encode(payload: bytes) -> list[str]:
    """The message bodies that carry ``payload``: itself, or its parts (see the module doc)."""
    if len(payload) <= MESSAGE_LIMIT and payload.isascii() and not payload.startswith(b"~"):
        return [payload.decode()]
    text = base64.urlsafe_b64encode(payload).decode()
    chunks = [text[i : i + PART_CHARS] for i in range(0, len(text), PART_CHARS)]
    if len(chunks) > MAX_PARTS:
        raise RendezvousError(f"a {len(payload)}-byte payload is too large for the rendezvous")
    ident = secrets.token_hex(8)
    return [f"~{ident}:{i}:{len(chunks)}:{chunk}" for i, chunk in enumerate(chunks)]


@attrs.define
class _Assembly:
    total: int
    parts: list[str] = attrs.field(factory=list)


class Parts:
    """Reassembles payloads sent in parts (sans-IO). Parts of one payload come in order on one
    topic; a payload whose parts stop coming is dropped when ``MAX_ASSEMBLING`` others follow."""

    def __init__(self) -> None:
        self._pending: OrderedDict[tuple[str, str], _Assembly] = OrderedDict()
        self.dropped = 0

    def feed(self, topic: str, body: str) -> bytes | None:
        """The payload ``body`` completes (or is), or None while parts are missing."""
        if not body.startswith("~"):
            return body.encode()
        match = _PART.match(body)
        if match is None:
            self.dropped += 1
            return None
        ident, index, total, chunk = match[1], int(match[2]), int(match[3]), match[4]
        key = (topic, ident)
        if not 0 < total <= MAX_PARTS or index >= total:
            self.dropped += 1
            return None
        assembly = self._pending.get(key)
        if index == 0:
            assembly = self._pending[key] = _Assembly(total)
            while len(self._pending) > MAX_ASSEMBLING:
                self._pending.popitem(last=False)
                self.dropped += 1
        if assembly is None or assembly.total != total or len(assembly.parts) != index:
            self._pending.pop(key, None)  # a part out of order: this payload cannot complete
            self.dropped += 1
            return None
        assembly.parts.append(chunk)
        if len(assembly.parts) < total:
            return None
        del self._pending[key]
        try:
            return base64.urlsafe_b64decode("".join(assembly.parts))
        except ValueError:
            self.dropped += 1
            return None


class NtfyRendezvous:
    """Signaling over one ntfy server. Make it with :func:`open_ntfy`."""

    def __init__(self, base: str, client: httpx.AsyncClient, nursery: trio.Nursery) -> None:
        self._base, self._client, self._nursery = base, client, nursery
        self._topics: dict[str, str] = {}  # ntfy topic -> signaling topic
        self._stream: trio.CancelScope | None = None  # the current stream's task
        self._changing = trio.Lock()
        self._last_id: str | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._parts = Parts()
        self._inbox_tx, self._inbox_rx = trio.open_memory_channel[tuple[str, bytes]](INBOX_SIZE)
        self.dropped = 0  #: messages dropped because the inbox was full
        self.reconnects = 0
        self.skipped_lines = 0  #: lines of the stream that were not JSON or over MAX_LINE

    # --- Rendezvous ----------------------------------------------------------------------------

    async def subscribe(self, topic: str) -> None:
        name = ntfy_topic(topic)
        async with self._changing:
            added = name not in self._topics
            self._topics[name] = topic
            try:
                await self._restream()
            except BaseException:
                if added:  # not subscribed: the stream still running does not carry it
                    del self._topics[name]
                raise

    async def unsubscribe(self, topic: str) -> None:
        async with self._changing:
            if self._topics.pop(ntfy_topic(topic), None) is not None:
                await self._restream()

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish and return when the server has stored the message (all parts, in order)."""
        url = f"{self._base}/{ntfy_topic(topic)}"
        headers = {"Firebase": "no", "Accept-Encoding": "identity"}
        for body in encode(payload):
            try:
                async with self._client.stream(
                    "POST", url, content=body.encode(), headers=headers
                ) as response:
                    # the reply (the stored message, or why not) is read up to REPLY_LIMIT only
                    said = await _first_bytes(response, REPLY_LIMIT)
            except httpx.HTTPError as exc:
                raise RendezvousError(f"cannot publish to {self._base}: {exc!r}") from None
            if response.status_code != 200:
                raise RendezvousError(
                    f"{self._base} refused a message: HTTP {response.status_code} "
                    f"{said[:200].decode(errors='replace').strip()}{self._auth_hint(response)}"
                )

    async def receive(self) -> tuple[str, bytes]:
        return await self._inbox_rx.receive()

    def _auth_hint(self, response: httpx.Response) -> str:
        """What to do about a refusal for want of access (ntfy: 401 for credentials it does not
        take, 403 for none or too few rights), said after the server's own words."""
        if response.status_code not in (401, 403):
            return ""
        if "authorization" in response.request.headers:
            return " (the server refused our credentials: check --rendezvous-token-file)"
        return " (the server wants credentials: serve --rendezvous-token-file F)"

    # --- the stream --------------------------------------------------------------------------

    async def _restream(self) -> None:
        """Open a stream for the current topics, then close the previous one (no gap). If the
        new one cannot be opened, the previous one stays."""
        old = self._stream
        if self._topics:
            self._stream = await self._nursery.start(self._follow, sorted(self._topics))
        else:
            self._stream = None
        if old is not None:
            old.cancel()

    async def _follow(
        self, names: list[str], *, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        """Read one topic set's stream; re-open it after a drop, asking for what was published
        meanwhile (``since`` the last message id, or the second of the drop)."""
        url = f"{self._base}/{','.join(names)}/json"
        delay = 1.0
        opened = fresh = False
        with trio.CancelScope() as scope:

            def on_open() -> None:
                nonlocal opened, fresh
                fresh = True
                if not opened:
                    opened = True
                    task_status.started(scope)

            since: str | None = None
            while True:
                fresh = False
                try:
                    await self._read(url, {"since": since} if since else {}, on_open)
                except (httpx.HTTPError, RendezvousError, ValueError) as exc:
                    if not opened:
                        raise RendezvousError(f"cannot subscribe at {self._base}: {exc}") from None
                    log.info("rtc: the ntfy stream dropped (%s); again in %.0fs", exc, delay)
                since = self._last_id or str(int(time.time()) - 1)
                self.reconnects += 1
                delay = 1.0 if fresh else delay  # it had opened: the server is back
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _read(self, url: str, params: dict[str, str], on_open: Callable[[], None]) -> None:
        timeout = httpx.Timeout(30.0, read=READ_TIMEOUT)
        # identity: a compressed stream could inflate a small read into a huge one
        headers = {"Accept-Encoding": "identity"}
        async with self._client.stream(
            "GET", url, params=params, headers=headers, timeout=timeout
        ) as response:
            if response.status_code != 200:
                said = await _first_bytes(response, 200)  # why, in its first bytes only
                raise RendezvousError(
                    f"HTTP {response.status_code} {said[:200].decode(errors='replace').strip()}"
                    f"{self._auth_hint(response)}"
                )
            partial, skipping = b"", False  # the line being read; past MAX_LINE: skip to its end
            async for chunk in response.aiter_raw():
                *lines, rest = (partial + chunk).split(b"\n")
                if skipping and lines:  # the over-long line ends in this chunk
                    lines, skipping = lines[1:], False
                partial = b"" if skipping else rest
                if len(partial) > MAX_LINE:
                    partial, skipping = b"", True
                    self.skipped_lines += 1
                for line in lines:
                    self._line(line, on_open)
        raise RendezvousError("the server ended the stream")

    def _line(self, line: bytes, on_open: Callable[[], None]) -> None:
        """One line of the stream: an event we act on, or junk we skip (never an exception:
        a line the server sends is not a reason to drop the stream or the task)."""
        if not line.strip():
            return
        try:
            message: Any = json.loads(line) if len(line) <= MAX_LINE else None
        except (ValueError, RecursionError):  # not JSON, or nested past the recursion limit
            message = None
        if message is None:
            self.skipped_lines += 1
            return
        if not isinstance(message, dict):
            return
        event = message.get("event")
        if event == "open":
            on_open()
        elif event == "message":
            self._message(message)

    def _message(self, message: dict[str, Any]) -> None:
        ident, name, body = message.get("id"), message.get("topic"), message.get("message")
        if not isinstance(ident, str) or not isinstance(name, str) or not isinstance(body, str):
            return
        if ident in self._seen:
            return  # already delivered by the stream this one replaced
        self._seen[ident] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        self._last_id = ident
        topic = self._topics.get(name)
        if topic is None:
            return  # a topic no longer subscribed
        payload = self._parts.feed(name, body)
        if payload is None:
            return
        try:
            self._inbox_tx.send_nowait((topic, payload))
        except trio.WouldBlock:
            self.dropped += 1


async def _first_bytes(response: httpx.Response, limit: int) -> bytes:
    """The start of ``response``'s body, up to about ``limit`` bytes (the whole of a short one,
    which lets its connection be used again); the rest is never read."""
    said = b""
    async for chunk in response.aiter_raw():  # the caller's ``stream`` block closes the rest
        said += chunk
        if len(said) >= limit:
            break
    return said


@asynccontextmanager
async def open_ntfy(
    url: str, credentials: Credentials | None = None
) -> AsyncIterator[NtfyRendezvous]:
    """An :class:`NtfyRendezvous` on the server ``url`` names; its streams end on exit. Nothing
    is sent until the first subscription or publication (``subscribe`` fails with
    :class:`~.broker.RendezvousError` when the server cannot be reached). ``credentials`` (or
    those in ``url``) go in every request's ``Authorization`` header, never in its URL."""
    base = parse_url(url)
    credentials = credentials or split_url(url)[1]
    headers = {"Authorization": credentials.authorization()} if credentials else {}
    try:
        async with (
            httpx.AsyncClient(timeout=30.0, follow_redirects=False, headers=headers) as client,
            trio.open_nursery() as nursery,
        ):
            yield NtfyRendezvous(base, client, nursery)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The streams' nursery wraps what the caller's body raised (a RendezvousError the
        # caller catches, as it does from the MQTT driver, which has no nursery): unwrap one.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


__all__ = ["NtfyRendezvous", "Parts", "encode", "ntfy_topic", "open_ntfy", "parse_url"]
