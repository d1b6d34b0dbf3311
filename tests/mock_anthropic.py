"""A stdlib mock of the Anthropic Messages API, good enough to drive the real Claude Code CLI.

Start it on a loopback port and point the CLI at it with ``ANTHROPIC_BASE_URL``::

    with MockAnthropic() as mock:
        env["ANTHROPIC_BASE_URL"] = mock.base_url
        ...
        assert mock.requests[-1]["path"] == "/v1/messages?beta=true"

Endpoints: ``POST /v1/messages`` (streaming SSE when ``"stream": true``, JSON otherwise),
``POST /v1/messages/count_tokens`` (``{"input_tokens": 10}``), ``HEAD /`` and ``GET /`` (200).
Anything else is a 404 with an Anthropic error body.

The "model" is a directive grammar
----------------------------------
The reply is chosen from the text of the LAST ``role: "user"`` message (its text blocks
concatenated; ``role: "system"`` entries are skipped; ``tool_result`` blocks are not used for
choosing; leading ``[Request interrupted by user…]`` markers and the blocks that the CLI injects,
``<system-reminder>`` and local-command transcripts such as ``<local-command-stdout>``, are
stripped).  The first directive in that text wins:

=============================  ==================================================================
``[[bash:CMD]]``               text "I will run a command." + ``tool_use`` ``Bash``
                               ``{"command": CMD, "description": "mock command"}``,
                               stop_reason ``tool_use``
``[[write:PATH|CONTENT]]``     same, tool ``Write`` ``{"file_path": PATH, "content": CONTENT}``
``[[edit:PATH|OLD|NEW]]``      same, tool ``Edit`` ``{"file_path", "old_string", "new_string"}``
``[[ask:QUESTION|A,B]]``       same, tool ``AskUserQuestion`` with one single-select question
                               (``header: "Question"``, options ``{"label": A, "description": ""}``)
``[[slow:N]]``                 N text deltas ``tick i `` (i = 0..N-1), 0.05 s apart
``[[fast:N]]``                 N text deltas ``tok ``
``[[error:STATUS]]``           HTTP STATUS with an Anthropic error body (400
                               ``invalid_request_error``, 401 ``authentication_error``, 529
                               ``overloaded_error``, anything else ``api_error``)
``[[sleep:SECONDS]]``          wait SECONDS before answering, then reply ``slept``
plain text                     ``You said: <text>``, streamed a few words per delta
=============================  ==================================================================

If the last user message contains a ``tool_result`` (the follow-up call of a tool round trip), the
reply is ``TOOL RESULT SEEN: <tool_result content text>`` with stop ``end_turn``, whatever else the
message says.  A directive whose argument does not parse (``[[slow:x]]``) counts as plain text.

Scripted replies given to :meth:`MockAnthropic.enqueue` take precedence over the grammar, one per
``/v1/messages`` call (except ``max_tokens: 1`` probes such as the CLI's ``set_model`` check)::

    {"blocks": [{"type": "text", "text": "hi"},
                {"type": "tool_use", "name": "Edit", "input": {...}}],   # "id" optional
     "stop_reason": "tool_use"}                                           # optional

Every response has an id ``msg_mock_<n>``, echoes the requested model, and carries plausible
``usage``.  Streams are sent with chunked transfer encoding, one chunk per SSE event, with
``TCP_NODELAY`` set, so the client sees each event as soon as it is produced.
"""

from __future__ import annotations

import http.server
import itertools
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypedDict

JsonObject = dict[str, Any]

SLOW_DELTA_INTERVAL_S = 0.05
WORDS_PER_DELTA = 3
TOOL_PREAMBLE = "I will run a command."
ERROR_TYPES: Mapping[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    529: "overloaded_error",
}

_DIRECTIVE_RE = re.compile(r"\[\[(bash|write|edit|ask|slow|fast|error|sleep):(.*?)\]\]", re.DOTALL)
_INTERRUPT_PREFIX_RE = re.compile(r"^(?:\s*\[Request interrupted by user[^\]]*\])+\s*")
# Blocks the CLI adds to user turns: reminders, and the transcript of a local command such as the
# /model run by ``set_model`` (2.1.197 merges that into the next user message).
_CLI_INJECTED_RE = re.compile(
    r"<(system-reminder|local-command-caveat|command-name|command-message|command-args"
    r"|local-command-stdout|local-command-stderr)>.*?</\1>",
    re.DOTALL,
)


class RecordedRequest(TypedDict):
    """One request as the mock received it (``body`` is ``None`` when not JSON)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


# ---------------------------------------------------------------------------------------------
# The reply model (pure: no I/O)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextBlock:
    """A text content block, delivered as the given delta chunks."""

    chunks: tuple[str, ...]

    @property
    def text(self) -> str:
        return "".join(self.chunks)


@dataclass(frozen=True)
class ToolUseBlock:
    """A tool_use content block."""

    id: str
    name: str
    input: JsonObject


Block = TextBlock | ToolUseBlock


@dataclass(frozen=True)
class Reply:
    """What the mock answers to one ``/v1/messages`` call."""

    blocks: tuple[Block, ...] = ()
    stop_reason: str = "end_turn"
    error_status: int | None = None
    delay_s: float = 0.0
    delta_interval_s: float = 0.0


@dataclass
class _UserTurn:
    text: str = ""
    tool_results: list[str] = field(default_factory=list)


def word_chunks(text: str, words: int = WORDS_PER_DELTA) -> tuple[str, ...]:
    """Split ``text`` on spaces into chunks of a few words; the chunks join back to ``text``."""
    pieces = text.split(" ")
    groups = [pieces[i : i + words] for i in range(0, len(pieces), words)]
    last = len(groups) - 1
    return tuple(" ".join(g) + (" " if i < last else "") for i, g in enumerate(groups))


def _block_text(block: Any) -> str:
    if isinstance(block, Mapping) and block.get("type") == "text":
        text = block.get("text")
        return text if isinstance(text, str) else ""
    return ""


def _tool_result_text(block: Mapping[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_block_text(b) for b in content if _block_text(b))
    return ""


def _last_user_turn(messages: Sequence[Any]) -> _UserTurn:
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return _parse_user_content(message.get("content"))
    return _UserTurn()


def _parse_user_content(content: Any) -> _UserTurn:
    if isinstance(content, str):
        return _UserTurn(text=content)
    turn = _UserTurn()
    if not isinstance(content, list):
        return turn
    texts: list[str] = []
    for block in content:
        if isinstance(block, Mapping) and block.get("type") == "tool_result":
            turn.tool_results.append(_tool_result_text(block))
        else:
            texts.append(_block_text(block))
    turn.text = "".join(texts)
    return turn


def prompt_text(raw: str) -> str:
    """The user's own words: CLI-injected reminders and interrupt markers removed."""
    text = _CLI_INJECTED_RE.sub("", raw)
    return _INTERRUPT_PREFIX_RE.sub("", text).strip()


class _IdSource:
    """Thread-safe counters for message and tool-use ids."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages = itertools.count(1)
        self._tools = itertools.count(1)

    def message_id(self) -> str:
        with self._lock:
            return f"msg_mock_{next(self._messages)}"

    def tool_use_id(self) -> str:
        with self._lock:
            return f"toolu_mock_{next(self._tools):04d}"


def _tool_reply(ids: _IdSource, name: str, tool_input: JsonObject) -> Reply:
    blocks = (
        TextBlock(word_chunks(TOOL_PREAMBLE)),
        ToolUseBlock(ids.tool_use_id(), name, tool_input),
    )
    return Reply(blocks=blocks, stop_reason="tool_use")


def _text_reply(text: str) -> Reply:
    return Reply(blocks=(TextBlock(word_chunks(text)),))


def _ask_input(arg: str) -> JsonObject:
    question, _, options = arg.rpartition("|")
    if not question:
        raise ValueError("ask needs QUESTION|OPTIONS")
    labels = [o.strip() for o in options.split(",") if o.strip()]
    return {
        "questions": [
            {
                "question": question,
                "header": "Question",
                "options": [{"label": label, "description": ""} for label in labels],
                "multiSelect": False,
            }
        ]
    }


def _directive_reply(ids: _IdSource, name: str, arg: str) -> Reply:
    """Build the reply for one directive; raises ValueError if ``arg`` does not parse."""
    if name == "bash":
        return _tool_reply(ids, "Bash", {"command": arg, "description": "mock command"})
    if name == "write":
        path, sep, content = arg.partition("|")
        if not sep:
            raise ValueError("write needs PATH|CONTENT")
        return _tool_reply(ids, "Write", {"file_path": path, "content": content})
    if name == "edit":
        parts = arg.split("|", 2)
        if len(parts) != 3:
            raise ValueError("edit needs PATH|OLD|NEW")
        edit = {"file_path": parts[0], "old_string": parts[1], "new_string": parts[2]}
        return _tool_reply(ids, "Edit", edit)
    if name == "ask":
        return _tool_reply(ids, "AskUserQuestion", _ask_input(arg))
    if name == "slow":
        ticks = tuple(f"tick {i} " for i in range(int(arg)))
        return Reply(blocks=(TextBlock(ticks),), delta_interval_s=SLOW_DELTA_INTERVAL_S)
    if name == "fast":
        return Reply(blocks=(TextBlock(tuple("tok " for _ in range(int(arg)))),))
    if name == "error":
        return Reply(error_status=int(arg))
    if name == "sleep":
        return Reply(blocks=(TextBlock(("slept",)),), delay_s=float(arg))
    raise ValueError(f"unknown directive {name}")


def reply_for_messages(messages: Sequence[Any], ids: _IdSource) -> Reply:
    """Apply the directive grammar to a request's ``messages``."""
    turn = _last_user_turn(messages)
    if turn.tool_results:
        return _text_reply("TOOL RESULT SEEN: " + "\n".join(turn.tool_results))
    text = prompt_text(turn.text)
    match = _DIRECTIVE_RE.search(text)
    if match:
        try:
            return _directive_reply(ids, match.group(1), match.group(2))
        except ValueError:
            pass
    return _text_reply(f"You said: {text}")


def reply_from_script(script: Mapping[str, Any], ids: _IdSource) -> Reply:
    """Turn an enqueued ``{"blocks": [...], "stop_reason": ...}`` dict into a Reply."""
    blocks: list[Block] = []
    for raw in script.get("blocks", []):
        if raw.get("type") == "tool_use":
            blocks.append(
                ToolUseBlock(
                    str(raw.get("id") or ids.tool_use_id()),
                    str(raw["name"]),
                    dict(raw.get("input", {})),
                )
            )
        else:
            blocks.append(TextBlock(word_chunks(str(raw.get("text", "")))))
    has_tool = any(isinstance(b, ToolUseBlock) for b in blocks)
    default_stop = "tool_use" if has_tool else "end_turn"
    return Reply(blocks=tuple(blocks), stop_reason=str(script.get("stop_reason") or default_stop))


# ---------------------------------------------------------------------------------------------
# Rendering replies as Anthropic JSON / SSE (pure)
# ---------------------------------------------------------------------------------------------


def _input_tokens(body: Mapping[str, Any]) -> int:
    # Depends only on the conversation's shape so recordings stay stable across runs.
    messages = body.get("messages")
    return 8 + 12 * (len(messages) if isinstance(messages, list) else 0)


def _output_tokens(reply: Reply) -> int:
    total = 0
    for block in reply.blocks:
        size = len(block.text) if isinstance(block, TextBlock) else len(json.dumps(block.input))
        total += max(1, size // 4)
    return max(1, total)


def start_usage(input_tokens: int) -> JsonObject:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
        "service_tier": "standard",
    }


def _block_json(block: Block) -> JsonObject:
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}


def message_json(reply: Reply, msg_id: str, model: str, input_tokens: int) -> JsonObject:
    """A complete non-streaming Messages API response."""
    usage = start_usage(input_tokens) | {"output_tokens": _output_tokens(reply)}
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [_block_json(b) for b in reply.blocks],
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def error_json(status: int) -> JsonObject:
    error_type = ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": error_type, "message": "mock error"}}


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event, to be sent after waiting ``delay_s``."""

    name: str
    data: JsonObject
    delay_s: float = 0.0

    def encode(self) -> bytes:
        payload = json.dumps(self.data, separators=(",", ":"))
        return f"event: {self.name}\ndata: {payload}\n\n".encode()


def json_pieces(value: JsonObject) -> list[str]:
    """``json.dumps(value)`` cut at top-level member boundaries (values are never split)."""
    members = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()]
    if not members:
        return ["{}"]
    pieces = ["{" + members[0]] + [", " + m for m in members[1:]]
    pieces[-1] += "}"
    return pieces


def _block_events(index: int, block: Block, interval: float) -> Iterator[SseEvent]:
    if isinstance(block, TextBlock):
        yield SseEvent(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "text", "text": ""},
            },
        )
        for n, chunk in enumerate(block.chunks):
            delta = {"type": "text_delta", "text": chunk}
            yield SseEvent(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
                interval if n else 0.0,
            )
    else:
        start = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
        yield SseEvent(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        )
        for piece in json_pieces(block.input):
            delta = {"type": "input_json_delta", "partial_json": piece}
            yield SseEvent(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
    yield SseEvent("content_block_stop", {"type": "content_block_stop", "index": index})


def sse_events(reply: Reply, msg_id: str, model: str, input_tokens: int) -> Iterator[SseEvent]:
    """The full SSE event sequence for a streamed reply."""
    start = message_json(reply, msg_id, model, input_tokens)
    start.update(content=[], stop_reason=None, usage=start_usage(input_tokens))
    yield SseEvent("message_start", {"type": "message_start", "message": start})
    yield SseEvent("ping", {"type": "ping"})
    for index, block in enumerate(reply.blocks):
        yield from _block_events(index, block, reply.delta_interval_s)
    delta = {"stop_reason": reply.stop_reason, "stop_sequence": None}
    usage = {"output_tokens": _output_tokens(reply)}
    yield SseEvent("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
    yield SseEvent("message_stop", {"type": "message_stop"})


# ---------------------------------------------------------------------------------------------
# The HTTP server
# ---------------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MockAnthropic/1.0"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self.server.mock.record(self._recorded(None))
        self._send_bytes(200, b"", "text/plain", head_only=True)

    def do_GET(self) -> None:
        self.server.mock.record(self._recorded(None))
        if self._route() == "/":
            self._send_bytes(200, b"ok", "text/plain")
        else:
            self._send_json(
                404,
                {
                    "type": "error",
                    "error": {"type": "not_found_error", "message": "mock: no such path"},
                },
            )

    def do_POST(self) -> None:
        body = self._read_json()
        self.server.mock.record(self._recorded(body))
        route = self._route()
        if route == "/v1/messages/count_tokens":
            self._send_json(200, {"input_tokens": 10})
        elif route == "/v1/messages" and isinstance(body, dict):
            self._answer_messages(body)
        else:
            self._send_json(
                404,
                {
                    "type": "error",
                    "error": {"type": "not_found_error", "message": "mock: no such path"},
                },
            )

    # -- helpers ------------------------------------------------------------------------------

    def _route(self) -> str:
        return self.path.split("?", 1)[0]

    def _recorded(self, body: Any) -> RecordedRequest:
        headers = {k.lower(): v for k, v in self.headers.items()}
        return {"method": self.command, "path": self.path, "headers": headers, "body": body}

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _read_json(self) -> Any:
        raw = self._read_body()
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def _answer_messages(self, body: JsonObject) -> None:
        mock = self.server.mock
        reply = mock.next_reply(body)
        if reply.delay_s and mock.wait_stopping(reply.delay_s):
            return
        if reply.error_status is not None:
            self._send_json(reply.error_status, error_json(reply.error_status))
            return
        msg_id = mock.ids.message_id()
        model = str(body.get("model", "claude-mock"))
        tokens = _input_tokens(body)
        if body.get("stream"):
            self._stream(sse_events(reply, msg_id, model, tokens))
        else:
            self._send_json(200, message_json(reply, msg_id, model, tokens))

    def _common_headers(self, content_type: str) -> None:
        self.send_header("Content-Type", content_type)
        self.send_header("request-id", self.server.mock.request_id())
        self.send_header("anthropic-organization-id", "mock-org")

    def _send_bytes(
        self, status: int, data: bytes, content_type: str, head_only: bool = False
    ) -> None:
        self.send_response(status)
        self._common_headers(content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head_only:
            self.wfile.write(data)
        self.wfile.flush()

    def _send_json(self, status: int, payload: JsonObject) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json")

    def _stream(self, events: Iterator[SseEvent]) -> None:
        self.send_response(200)
        self._common_headers("text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        mock = self.server.mock
        try:
            for event in events:
                if event.delay_s and mock.wait_stopping(event.delay_s):
                    break
                self._write_chunk(event.encode())
            self._write_chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            # The client went away (e.g. the CLI was interrupted mid-stream).
            self.close_connection = True

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    mock: MockAnthropic


class MockAnthropic:
    """A mock Messages API on ``127.0.0.1`` (port 0 by default), served from a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._scripts: deque[Mapping[str, Any]] = deque()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._request_ids = itertools.count(1)
        self.ids = _IdSource()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> MockAnthropic:
        if self._server is not None:
            raise RuntimeError("MockAnthropic already started")
        self._stopping.clear()
        server = _Server(self._address, _Handler)
        server.mock = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="mock-anthropic",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> MockAnthropic:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("MockAnthropic not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- test API ------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def messages_requests(self) -> list[RecordedRequest]:
        """Only the ``POST /v1/messages`` calls (not count_tokens, HEAD, ...)."""
        return [
            r
            for r in self.requests
            if r["method"] == "POST" and r["path"].split("?", 1)[0] == "/v1/messages"
        ]

    def reset(self) -> None:
        """Forget recorded requests and pending scripted replies."""
        with self._lock:
            self._requests.clear()
            self._scripts.clear()

    def enqueue(self, reply: Mapping[str, Any]) -> None:
        """Script the next ``/v1/messages`` reply (FIFO); see the module docstring."""
        with self._lock:
            self._scripts.append(reply)

    # -- used by the handler ---------------------------------------------------------------------

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def request_id(self) -> str:
        with self._lock:
            return f"req_mock_{next(self._request_ids)}"

    def next_reply(self, body: Mapping[str, Any]) -> Reply:
        is_probe = body.get("max_tokens") == 1
        with self._lock:
            script = self._scripts.popleft() if self._scripts and not is_probe else None
        if script is not None:
            return reply_from_script(script, self.ids)
        messages = body.get("messages")
        return reply_for_messages(messages if isinstance(messages, list) else [], self.ids)

    def wait_stopping(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if the server is shutting down meanwhile."""
        return self._stopping.wait(seconds)


def _serve_forever() -> None:
    """``python tests/mock_anthropic.py`` runs the mock until Ctrl-C (handy for manual probing)."""
    with MockAnthropic() as mock:
        print(mock.base_url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    _serve_forever()
