#!/usr/bin/env python3
"""A stdlib fake of the Claude Code CLI 2.1.329 in stream-json mode, for the daemon's tests.

Run it like the real binary::

    python3 tests/fake_claude.py -p --input-format stream-json --output-format stream-json \\
        --verbose [--include-partial-messages] [--permission-prompt-tool stdio] \\
        [--permission-mode M] [--model M] [--resume=ID] [--session-id=UUID]

It speaks the protocol of ``/work/shared/reference/claude-code-cli.md`` (sections 3-7): NDJSON on
stdin (``user``, ``control_request``, ``control_response``), NDJSON frames on stdout with the real
CLI's shapes and key order, human errors on stderr, the real exit codes (0, 1, 143), transcripts
under ``${CLAUDE_CONFIG_DIR:-$HOME/.claude}/projects/<slug>/<session_id>.jsonl`` and ``--resume``.

The "model" is the directive grammar of ``tests/mock_anthropic.py`` (the first directive wins; one
whose argument does not parse counts as plain text):

=============================  ==================================================================
plain text                     ``You said: <text>``, a few words per text delta
``[[bash:CMD]]``               "I will run a command." + tool_use ``Bash`` ``{"command": CMD,
                               "description": "mock command"}``; permission; run with
                               ``/bin/sh -c`` in the cwd; then ``TOOL RESULT SEEN: <result>``
``[[write:PATH|CONTENT]]``     same with ``Write`` (relative PATH joined to the cwd)
``[[edit:PATH|OLD|NEW]]``      same with ``Edit`` (old_string/new_string)
``[[ask:QUESTION|A,B=DESC]]``  same with ``AskUserQuestion`` (one single-select question; an
                               option may carry a description after ``=``)
``[[plan:MARKDOWN]]``          same with ``ExitPlanMode`` ``{"plan": MARKDOWN}`` (``\\n``: a
                               newline); allowed without a ``setMode``, it leaves plan for default
``[[slow:N]]``                 N text deltas ``tick i `` 0.05 s apart (interruptible)
``[[fast:N]]``                 N text deltas ``tok `` as fast as possible
``[[fast:N:CHARS]]``           the same with deltas of CHARS characters (``abc...``): bulk volume
``[[doc:KB:RATE]]``            a markdown document of about KB kilobytes (headings, paragraphs,
                               code blocks, lists) in 24-character deltas, RATE per second
``[[stamp:N:RATE]]``           N text deltas ``<time.monotonic_ns()>;`` stamped right before the
                               line is written, RATE deltas per second (0 = no pacing: written
                               256 lines at a time, stamped as each is built)
``[[error:STATUS]]``           synthetic API-error assistant + ``result`` (is_error, api_error)
``[[crash]]``/``[[crash:C]]``  one text delta, then exit with code 1 (or C), no result
``[[sleep:SECONDS]]``          wait SECONDS (interruptible), then reply ``slept``
=============================  ==================================================================

Each API call costs a fixed ``COST_PER_CALL_USD`` (``total_cost_usd`` is cumulative, restored on
``--resume``); API errors cost nothing.  Bash, Write and Edit need permission in ``default`` mode
(``acceptEdits`` auto-accepts Write/Edit, ``bypassPermissions`` everything but AskUserQuestion).

Environment knobs:

* ``FAKE_CLAUDE_DELAY`` - seconds between two text deltas (default 0; ``slow``/``stamp`` pace
  themselves).
* ``FAKE_CLAUDE_LOG`` - a file to append ``{"argv": [...]}`` to at start-up, then every stdin line
  received (verbatim), so tests can assert what the daemon sent.
* ``FAKE_CLAUDE_KEEP_GOING=1`` - when stdout breaks (its reader died), go on with the turn and
  write the transcript, unheard, as the real CLI does; by default the fake exits at once.
* ``FAKE_CLAUDE_AUTO_ALLOW_READONLY=1`` - auto-allow simple read-only Bash commands (``echo hi``,
  ``ls``...) like the real CLI does (``permission_decision`` ``config``/``subcommandResults``).
  Off by default: every Bash call asks.
* ``FAKE_CLAUDE_REMOTE_CONTROL`` - ``absent``: an older CLI without ``--remote-control [name]``
  (not in ``--help``; the flag is an unknown option); ``unavailable``: the flag is accepted but
  ``initialize`` answers ``remote_control_available: false``. Unset: like 2.1.329, whose
  ``initialize`` says ``true`` when started with ``--remote-control``.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import signal
import string
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

JsonObject = dict[str, Any]

VERSION = "2.1.329"
DEFAULT_MODEL = "claude-opus-5-5"
COST_PER_CALL_USD = 0.0001
WORDS_PER_DELTA = 3
SLOW_DELTA_INTERVAL_S = 0.05
STAMP_BURST = 256  #: unpaced ``[[stamp]]`` lines per write
WAIT_SLICE_S = 0.1
TOOL_PREAMBLE = "I will run a command."
MODES = ("acceptEdits", "auto", "bypassPermissions", "default", "dontAsk", "manual", "plan")
REFUSAL = (
    "The user doesn't want to proceed with this tool use. The tool use was rejected (eg. if it "
    "was a file edit, the new_string was NOT written to the file). STOP what you are doing and "
    "wait for the user to tell you how to proceed."
)
INTERRUPTED = "[Request interrupted by user]"
INTERRUPTED_TOOL = "[Request interrupted by user for tool use]"
STREAM_CLOSED = "AbortError: Tool permission stream closed before response received"
FILE_STATE_NOTE = "(file state is current in your context \u2014 no need to Read it back)"
PROMPT_ONLY_TOOLS = ("AskUserQuestion", "EnterPlanMode", "ExitPlanMode")
TOOLS = (
    "Task", "AskUserQuestion", "Bash", "CronCreate", "CronDelete", "CronList", "Edit",
    "EnterPlanMode", "EnterWorktree", "ExitPlanMode", "ExitWorktree", "ListAgents", "Monitor",
    "NotebookEdit", "Read", "ReportFindings", "ScheduleWakeup", "SendMessage", "Skill",
    "TaskStop", "ToolSearch", "WebFetch", "WebSearch", "Workflow", "Write",
)  # fmt: skip
SLASH_COMMANDS = (
    "debug", "code-review", "simplify", "batch", "doctor", "loop", "agents", "clear", "compact",
    "config", "context", "effort", "init", "mcp", "model", "rename", "security-review", "usage",
)  # fmt: skip
AGENTS = ("claude", "Explore", "general-purpose", "Plan", "statusline-setup")
CAPABILITIES = (
    "interrupt_receipt_v1", "interrupt_cancel_queued_v1", "msg_lifecycle_v1",
    "request_marker_lists_v1", "ask_user_question_unanswered_v1",
)  # fmt: skip
READONLY_COMMANDS = frozenset({"echo", "ls", "pwd", "cat", "head", "tail", "wc", "true", "date"})
VALUE_FLAGS = frozenset({
    "--input-format", "--output-format", "--permission-mode", "--model", "--resume", "-r",
    "--session-id", "--permission-prompt-tool", "--max-turns", "--allowedTools",
    "--allowed-tools", "--disallowedTools", "--disallowed-tools", "--system-prompt",
    "--append-system-prompt", "--settings", "--mcp-config", "--add-dir", "--fallback-model",
    "--setting-sources", "--permission-prompts", "--max-budget-usd", "--effort", "--agents",
    "--json-schema", "--remote-control-session-name-prefix",
})  # fmt: skip

_DIRECTIVE_RE = re.compile(
    r"\[\[(bash|write|edit|ask|plan|doc|slow|fast|stamp|error|crash|sleep)(?::(.*?))?\]\]",
    re.DOTALL,
)
_INTERRUPT_PREFIX_RE = re.compile(r"^(?:\s*\[Request interrupted by user[^\]]*\])+\s*")
_CLI_INJECTED_RE = re.compile(
    r"<(system-reminder|local-command-caveat|command-name|command-message|command-args"
    r"|local-command-stdout|local-command-stderr)>.*?</\1>",
    re.DOTALL,
)
_REDIRECT_RE = re.compile(r"(?:^|[^0-9&<>])>>?\s*([^\s;&|<>]+)")
_OPERATOR_RE = re.compile(r"[<>|;&]")


def new_uuid() -> str:
    return str(uuid.uuid4())


def timestamp() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` on stderr and leave at once (stdout is flushed first)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    os._exit(code)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


@dataclass
class Options:
    """What the command line asked for (unknown flags are ignored)."""

    print_mode: bool = False
    input_format: str = "text"
    output_format: str = "text"
    verbose: bool = False
    partial: bool = False
    prompt_tool: str | None = None
    permission_mode: str = "default"
    model: str | None = None
    resume: str | None = None
    session_id: str | None = None
    version: bool = False
    help: bool = False
    remote_control: bool = False  #: ``--remote-control [name]``: mirror to claude.ai
    remote_control_name: str | None = None


def parse_argv(argv: list[str]) -> Options:
    """Parse ``argv`` (without the program name); ``--flag=value`` and ``--flag value`` forms."""
    opts = Options()
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, eq, inline = arg.partition("=")
        if not name.startswith("--"):
            name, eq = arg, ""
        value: str | None = None
        if name in VALUE_FLAGS:
            value = inline if eq else (args.pop(0) if args else "")
        elif name == "--remote-control":  # an optional value: a next word not starting with -
            opts.remote_control = True
            if eq or (args and not args[0].startswith("-")):
                opts.remote_control_name = inline if eq else args.pop(0)
            continue
        _apply_flag(opts, name, value)
    return opts


def _apply_flag(opts: Options, name: str, value: str | None) -> None:
    if name in ("-p", "--print"):
        opts.print_mode = True
    elif name in ("-v", "--version"):
        opts.version = True
    elif name in ("-h", "--help"):
        opts.help = True
    elif name == "--verbose":
        opts.verbose = True
    elif name == "--include-partial-messages":
        opts.partial = True
    elif name == "--dangerously-skip-permissions":
        opts.permission_mode = "bypassPermissions"
    elif value is None:
        return
    elif name == "--input-format":
        opts.input_format = value
    elif name == "--output-format":
        opts.output_format = value
    elif name == "--permission-prompt-tool":
        opts.prompt_tool = value
    elif name == "--permission-mode":
        opts.permission_mode = value
    elif name == "--model":
        opts.model = value
    elif name in ("--resume", "-r"):
        opts.resume = value
    elif name == "--session-id":
        opts.session_id = value


def validate(opts: Options) -> None:
    """Exit like the real CLI on a bad command line (messages from reference sections 1-2)."""
    if opts.remote_control and os.environ.get("FAKE_CLAUDE_REMOTE_CONTROL") == "absent":
        fail("error: unknown option '--remote-control'")
    if opts.output_format == "stream-json" and not opts.verbose:
        fail("Error: When using --print, --output-format=stream-json requires --verbose")
    if opts.input_format == "stream-json" and opts.output_format != "stream-json":
        fail("Error: --input-format=stream-json requires output-format=stream-json.")
    if not (opts.print_mode and opts.input_format == "stream-json"):
        fail("fake_claude: only -p --input-format stream-json --output-format stream-json works")
    if opts.permission_mode not in MODES:
        fail(
            f"error: option '--permission-mode <mode>' argument '{opts.permission_mode}' is "
            f"invalid. Allowed choices are {', '.join(MODES)}."
        )
    if opts.permission_mode == "bypassPermissions" and _refuse_bypass():
        fail(
            "--dangerously-skip-permissions cannot be used with root/sudo privileges for "
            "security reasons"
        )
    if opts.session_id is not None and not _is_uuid(opts.session_id):
        fail("Error: Invalid session ID. Must be a valid UUID.")


def _refuse_bypass() -> bool:
    return os.geteuid() == 0 and os.environ.get("IS_SANDBOX") != "1"


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Output: one lock for stdout writes and for the shared session state
# ---------------------------------------------------------------------------------------------


class Output:
    """Compact NDJSON on stdout, flushed per line, serialised by one re-entrant lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._stream = sys.stdout.buffer
        self._reader_gone = False

    def write(self, frame: JsonObject) -> None:
        line = json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
        self.write_line(line + "\n")

    def write_line(self, line: str) -> None:
        data = line.encode("utf-8", "backslashreplace")
        with self.lock:
            if self._reader_gone:
                return
            try:
                self._stream.write(data)
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                if not os.environ.get("FAKE_CLAUDE_KEEP_GOING"):
                    os._exit(1)
                self._reader_gone = True  # like the real CLI: the turn goes on, unread

    def write_unless(self, stop: threading.Event, frame: JsonObject) -> bool:
        """Write ``frame`` unless ``stop`` is set (checked under the lock); True if written."""
        with self.lock:
            if stop.is_set():
                return False
            self.write(frame)
            return True


# ---------------------------------------------------------------------------------------------
# Transcripts
# ---------------------------------------------------------------------------------------------


def config_dir() -> Path:
    configured = os.environ.get("CLAUDE_CONFIG_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("HOME") or str(Path.home())) / ".claude"


def project_slug(cwd: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "-", cwd)


@dataclass
class SavedState:
    """What ``--resume`` restores from a transcript."""

    total_cost_usd: float = 0.0
    duration_api_ms: int = 0
    model: str | None = None
    model_usage: dict[str, JsonObject] = field(default_factory=dict)
    api_messages: int = 0


class Transcript:
    """``<config>/projects/<slug>/<session_id>.jsonl``, one JSON record per line."""

    def __init__(self, cwd: str, session_id: str) -> None:
        self.path = config_dir() / "projects" / project_slug(cwd) / f"{session_id}.jsonl"
        self.session_id = session_id
        self.cwd = cwd

    def exists(self) -> bool:
        return self.path.is_file()

    def append(self, record: JsonObject) -> None:
        record = record | {"sessionId": self.session_id, "cwd": self.cwd, "version": VERSION}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")

    def load(self) -> SavedState:
        state = SavedState()
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            if record.get("type") in ("user", "assistant"):
                state.api_messages += 1
            elif record.get("type") == "cost-state":
                state.total_cost_usd = float(record.get("total_cost_usd", 0.0))
                state.duration_api_ms = int(record.get("duration_api_ms", 0))
                state.model = record.get("model") or state.model
                state.model_usage = dict(record.get("modelUsage") or {})
        return state


# ---------------------------------------------------------------------------------------------
# The "model": directive grammar -> replies (pure)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextBlock:
    """A text block streamed as ``chunks``; ``stamp`` = (count, rate) for ``[[stamp]]``."""

    chunks: tuple[str, ...]
    stamp: tuple[int, float] | None = None


@dataclass(frozen=True)
class ToolBlock:
    id: str
    name: str
    input: JsonObject


@dataclass(frozen=True)
class Reply:
    """What one API call answers."""

    blocks: tuple[TextBlock | ToolBlock, ...] = ()
    stop_reason: str = "end_turn"
    interval_s: float | None = None
    delay_s: float = 0.0
    error_status: int | None = None
    crash_code: int | None = None

    @property
    def tool(self) -> ToolBlock | None:
        return next((b for b in self.blocks if isinstance(b, ToolBlock)), None)


def word_chunks(text: str, words: int = WORDS_PER_DELTA) -> tuple[str, ...]:
    """Split on spaces into chunks of a few words that join back to ``text``."""
    pieces = text.split(" ")
    groups = [pieces[i : i + words] for i in range(0, len(pieces), words)]
    last = len(groups) - 1
    return tuple(" ".join(g) + (" " if i < last else "") for i, g in enumerate(groups))


def json_pieces(value: JsonObject) -> list[str]:
    """``json.dumps(value)`` cut at top-level members, as the mock streams input_json_delta."""
    members = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()]
    if not members:
        return ["{}"]
    pieces = ["{" + members[0]] + [", " + m for m in members[1:]]
    pieces[-1] += "}"
    return pieces


def prompt_text(raw: str) -> str:
    """The user's own words: CLI-injected blocks and interrupt markers removed."""
    return _INTERRUPT_PREFIX_RE.sub("", _CLI_INJECTED_RE.sub("", raw)).strip()


def text_reply(text: str) -> Reply:
    return Reply(blocks=(TextBlock(word_chunks(text)),))


def follow_up_reply(tool_result: str) -> Reply:
    return text_reply("TOOL RESULT SEEN: " + tool_result)


def _tool_reply(name: str, tool_input: JsonObject) -> Reply:
    tool = ToolBlock("toolu_" + uuid.uuid4().hex[:24], name, tool_input)
    return Reply(blocks=(TextBlock(word_chunks(TOOL_PREAMBLE)), tool), stop_reason="tool_use")


def _ask_input(arg: str) -> JsonObject:
    question, _, options = arg.rpartition("|")
    if not question:
        raise ValueError("ask needs QUESTION|OPTIONS")
    labels = [o.strip().partition("=") for o in options.split(",") if o.strip()]
    options_json = [{"label": label, "description": text} for label, _, text in labels]
    item = {"question": question, "header": "Question", "options": options_json}
    return {"questions": [item | {"multiSelect": False}]}


def _directive_reply(name: str, arg: str | None, cwd: str) -> Reply:
    """The reply for one directive; raises ValueError when ``arg`` does not parse."""
    if name == "crash":
        code = int(arg) if arg else 1
        return Reply(blocks=(TextBlock(("crashing ", "now")),), crash_code=code)
    if arg is None:
        raise ValueError(f"{name} needs an argument")
    if name == "bash":
        return _tool_reply("Bash", {"command": arg, "description": "mock command"})
    if name == "write":
        path, sep, content = arg.partition("|")
        if not sep:
            raise ValueError("write needs PATH|CONTENT")
        return _tool_reply("Write", {"file_path": os.path.join(cwd, path), "content": content})
    if name == "edit":
        parts = arg.split("|", 2)
        if len(parts) != 3:
            raise ValueError("edit needs PATH|OLD|NEW")
        path = os.path.join(cwd, parts[0])
        return _tool_reply(
            "Edit", {"file_path": path, "old_string": parts[1], "new_string": parts[2]}
        )
    if name == "ask":
        return _tool_reply("AskUserQuestion", _ask_input(arg))
    if name == "plan":
        return _tool_reply("ExitPlanMode", {"plan": arg.replace("\\n", "\n")})
    return _timing_reply(name, arg)


def _timing_reply(name: str, arg: str) -> Reply:
    if name == "slow":
        ticks = tuple(f"tick {i} " for i in range(int(arg)))
        return Reply(blocks=(TextBlock(ticks),), interval_s=SLOW_DELTA_INTERVAL_S)
    if name == "fast":
        count, _, chars = arg.partition(":")
        token = (string.ascii_lowercase * (int(chars) // 26 + 1))[: int(chars)] if chars else "tok "
        return Reply(blocks=(TextBlock((token,) * int(count)),), interval_s=0.0)
    if name == "stamp":
        count, _, rate = arg.partition(":")
        return Reply(blocks=(TextBlock((), stamp=(int(count), float(rate or 0))),))
    if name == "doc":
        size, _, rate = arg.partition(":")
        text = markdown_document(int(size) * 1024)
        chunks = tuple(text[i : i + 24] for i in range(0, len(text), 24))
        return Reply(blocks=(TextBlock(chunks),), interval_s=1 / float(rate or 100))
    if name == "error":
        return Reply(error_status=int(arg))
    if name == "sleep":
        return Reply(blocks=(TextBlock(("slept",)),), delay_s=float(arg))
    raise ValueError(f"unknown directive {name}")


def markdown_document(size: int) -> str:
    """About ``size`` characters of the markdown a long answer has (for ``[[doc]]``)."""
    parts: list[str] = []
    total = 0
    section = 0
    while total < size:
        part = (
            f"## Step {section}\n\nThe parser reads **token {section}** and checks"
            f" `state_{section}` before it moves on; a failure here means the input was cut"
            " short, so it says where and stops.\n\n"
            f"```python\ndef step_{section}(state, token):\n    if token is None:\n"
            f"        raise ValueError('cut short at {section}')\n"
            "    return state + [token]\n```\n\n"
            f"- keeps the order of step {section}\n- never reads past the end\n\n"
        )
        parts.append(part)
        total += len(part)
        section += 1
    return "".join(parts)


def reply_for_prompt(raw: str, cwd: str) -> Reply:
    """Apply the directive grammar to the user's text (the first directive wins)."""
    text = prompt_text(raw)
    match = _DIRECTIVE_RE.search(text)
    if match:
        try:
            return _directive_reply(match.group(1), match.group(2), cwd)
        except ValueError:
            pass
    return text_reply(f"You said: {text}")


def output_tokens(reply: Reply) -> int:
    total = 0
    for block in reply.blocks:
        if isinstance(block, ToolBlock):
            total += max(1, len(json.dumps(block.input)) // 4)
        else:
            size = block.stamp[0] * 20 if block.stamp else len("".join(block.chunks))
            total += max(1, size // 4)
    return max(1, total)


# ---------------------------------------------------------------------------------------------
# Tools: really run them in the cwd
# ---------------------------------------------------------------------------------------------


@dataclass
class ToolOutcome:
    """A tool's ``tool_result`` content, error flag and ``tool_use_result`` payload."""

    content: str
    is_error: bool = False
    tool_use_result: Any = None
    interrupted: bool = False


def _tool_error(message: str) -> ToolOutcome:
    return ToolOutcome(f"<tool_use_error>{message}</tool_use_error>", True, f"Error: {message}")


def structured_patch(old: str, new: str) -> list[JsonObject]:
    """Unified-diff hunks (3 lines of context) in the CLI's ``structuredPatch`` shape."""
    a, b = old.splitlines(), new.splitlines()
    hunks: list[JsonObject] = []
    for group in difflib.SequenceMatcher(None, a, b).get_grouped_opcodes(3):
        lines: list[str] = []
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                lines += [" " + line for line in a[i1:i2]]
                continue
            lines += ["-" + line for line in a[i1:i2]]
            lines += ["+" + line for line in b[j1:j2]]
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        hunks.append(
            {"oldStart": i1 + 1, "oldLines": i2 - i1, "newStart": j1 + 1, "newLines": j2 - j1}
            | {"lines": lines}
        )
    return hunks


def run_bash(command: str, cwd: str, stop: threading.Event) -> ToolOutcome:
    """``/bin/sh -c command`` in ``cwd`` (stdin closed); killed if ``stop`` gets set."""
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    while True:
        try:
            out, err = proc.communicate(timeout=WAIT_SLICE_S)
            break
        except subprocess.TimeoutExpired:
            if stop.is_set():
                proc.kill()
                out, err = proc.communicate()
                break
    out, err = out.rstrip("\n"), err.rstrip("\n")
    interrupted = stop.is_set() and proc.returncode != 0
    payload = {"stdout": out, "stderr": err, "interrupted": interrupted, "isImage": False}
    payload["noOutputExpected"] = False
    text = "\n".join(part for part in (out, err) if part)
    if interrupted:
        return ToolOutcome(text + "\n" + INTERRUPTED_TOOL, True, payload, interrupted=True)
    if proc.returncode != 0:
        message = f"Exit code {proc.returncode}" + (f"\n{text}" if text else "")
        return ToolOutcome(message, True, f"Error: {message}")
    return ToolOutcome(text or "(Bash completed with no output)", False, payload)


def run_write(tool_input: JsonObject) -> ToolOutcome:
    path, content = str(tool_input.get("file_path", "")), str(tool_input.get("content", ""))
    target = Path(path)
    try:
        original = target.read_text(encoding="utf-8") if target.is_file() else None
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    except OSError as exc:
        return _tool_error(str(exc))
    if original is None:
        text = f"File created successfully at: {path} {FILE_STATE_NOTE}"
        payload: JsonObject = {"type": "create", "filePath": path, "content": content}
        payload["structuredPatch"] = []
    else:
        text = f"The file {path} has been updated successfully. {FILE_STATE_NOTE}"
        payload = {"type": "update", "filePath": path, "content": content}
        payload["structuredPatch"] = structured_patch(original, content)
    return ToolOutcome(text, False, payload | {"originalFile": original, "userModified": False})


def run_edit(tool_input: JsonObject) -> ToolOutcome:
    path = str(tool_input.get("file_path", ""))
    old, new = str(tool_input.get("old_string", "")), str(tool_input.get("new_string", ""))
    replace_all = bool(tool_input.get("replace_all", False))
    try:
        original = Path(path).read_text(encoding="utf-8")
    except OSError:
        return _tool_error("File does not exist.")
    count = original.count(old) if old else 0
    if count == 0:
        return _tool_error(f"String to replace not found in file.\nString: {old}")
    if count > 1 and not replace_all:
        return _tool_error(
            f"Found {count} matches of the string to replace, but replace_all is false. To "
            "replace all occurrences, set replace_all to true.\nString: " + old
        )
    updated = original.replace(old, new) if replace_all else original.replace(old, new, 1)
    try:
        Path(path).write_text(updated, encoding="utf-8")
    except OSError as exc:
        return _tool_error(str(exc))
    payload: JsonObject = {"filePath": path, "oldString": old, "newString": new}
    payload |= {"originalFile": original}
    payload |= {"structuredPatch": structured_patch(original, updated), "userModified": False}
    text = f"The file {path} has been updated successfully. {FILE_STATE_NOTE}"
    return ToolOutcome(text, False, payload | {"replaceAll": replace_all})


def run_ask(tool_input: JsonObject) -> ToolOutcome:
    answers = tool_input.get("answers")
    questions = tool_input.get("questions")
    if not isinstance(answers, dict) or not answers:
        return ToolOutcome(
            "The user did not answer the questions.", False, {"questions": questions}
        )
    pairs = ", ".join(f'"{q}"="{a}"' for q, a in answers.items())
    text = f"Your questions have been answered: {pairs}. You can now continue with these "
    text += "answers in mind."
    return ToolOutcome(text, False, {"questions": questions, "answers": answers})


def run_tool(name: str, tool_input: JsonObject, cwd: str, stop: threading.Event) -> ToolOutcome:
    if name == "Bash":
        return run_bash(str(tool_input.get("command", "")), cwd, stop)
    if name == "Write":
        return run_write(tool_input)
    if name == "Edit":
        return run_edit(tool_input)
    if name == "AskUserQuestion":
        return run_ask(tool_input)
    if name == "ExitPlanMode":
        return ToolOutcome("User has approved your plan. You can now start coding.", False, {})
    return _tool_error(f"No such tool available: {name}")


# ---------------------------------------------------------------------------------------------
# Permissions: what a tool call needs, and the can_use_tool request for it
# ---------------------------------------------------------------------------------------------


def bash_prefix(command: str) -> str:
    """The command's leading words (at most two) before any shell operator: ``echo hi``."""
    head = _OPERATOR_RE.split(command, maxsplit=1)[0]
    return " ".join(head.split()[:2])


def blocked_path(command: str, cwd: str) -> str | None:
    match = _REDIRECT_RE.search(command)
    return os.path.join(cwd, match.group(1)) if match else None


def is_readonly(command: str) -> bool:
    words = command.split()
    return bool(words) and words[0] in READONLY_COMMANDS and not _OPERATOR_RE.search(command)


def rule_matches(rule: tuple[str, str | None], name: str, tool_input: JsonObject) -> bool:
    tool_name, content = rule
    if tool_name != name:
        return False
    if content is None:
        return True
    command = str(tool_input.get("command", ""))
    if content.endswith(" *"):
        prefix = content[:-2]
        return command == prefix or command.startswith(prefix + " ")
    return command == content


def permission_request(name: str, tool_input: JsonObject, tool_use_id: str, cwd: str) -> JsonObject:
    """The ``request`` body of a ``can_use_tool`` control request (reference section 6.2)."""
    request: JsonObject = {"subtype": "can_use_tool", "tool_name": name, "display_name": name}
    request["input"] = tool_input
    if name == "Bash":
        command = str(tool_input.get("command", ""))
        rule = {"toolName": "Bash", "ruleContent": f"{bash_prefix(command)} *"}
        request["description"] = tool_input.get("description", command)
        request["permission_suggestions"] = [
            {"type": "addRules", "rules": [rule], "behavior": "allow"}
            | {"destination": "localSettings"},
            {"type": "addDirectories", "directories": [cwd], "destination": "session"},
        ]
        path = blocked_path(command, cwd)
        if path is not None:
            request["blocked_path"] = path
    elif name in ("Write", "Edit"):
        request["description"] = os.path.basename(str(tool_input.get("file_path", "")))
        request["permission_suggestions"] = [
            {"type": "setMode", "mode": "acceptEdits", "destination": "session"}
        ]
    request["tool_use_id"] = tool_use_id
    if name == "AskUserQuestion":
        request["requires_user_interaction"] = True
    return request


def denied_message(name: str, tool_input: JsonObject, cwd: str) -> str:
    """What ``system/permission_denied`` says when nobody can be asked."""
    if name == "Bash":
        path = blocked_path(str(tool_input.get("command", "")), cwd)
        if path is not None:
            return (
                f"Output redirection to '{path}' needs approval. Claude requested permissions "
                "to use Bash, but you haven't granted it yet."
            )
    if name in ("Write", "Edit"):
        path = str(tool_input.get("file_path", ""))
        return f"Claude requested permissions to write to {path}, but you haven't granted it yet."
    return f"Claude requested permissions to use {name}, but you haven't granted it yet."


# ---------------------------------------------------------------------------------------------
# One turn: the API calls for one user message, its tool round trip and its result
# ---------------------------------------------------------------------------------------------


@dataclass
class QueuedMessage:
    text: str
    content: Any
    uuid: str | None


@dataclass
class PendingPermission:
    """A ``can_use_tool`` request waiting for the host's ``control_response``."""

    request_id: str
    event: threading.Event = field(default_factory=threading.Event)
    response: JsonObject | None = None
    error: str | None = None
    cancelled: bool = False


@dataclass
class StreamState:
    """Where one API call's stream is, so an interrupt can close it like the real CLI."""

    msg_id: str
    usage: JsonObject
    request_id: str = field(default_factory=lambda: "req_" + uuid.uuid4().hex[:24])
    started: bool = False
    index: int = 0
    open_block: bool = False
    assistant_sent: bool = False
    text: str = ""
    delta_sent: bool = False


def _edit_input(tool: ToolBlock, for_assistant: bool) -> JsonObject:
    """The CLI adds ``replace_all`` to Edit inputs (first in ``assistant``, last elsewhere)."""
    if tool.name != "Edit" or "replace_all" in tool.input:
        return dict(tool.input)
    if for_assistant:
        return {"replace_all": False} | tool.input
    return tool.input | {"replace_all": False}


def _ede(stop_reason: str | None) -> list[str]:
    reason = "null" if stop_reason is None else stop_reason
    return [f"[ede_diagnostic] result_type=user last_content_type=n/a stop_reason={reason}"]


class Turn:
    """Runs one user message on the main thread; the stdin thread may interrupt it."""

    def __init__(self, session: Session, message: QueuedMessage) -> None:
        self.s = session
        self.msg = message
        self.stop = threading.Event()
        self.pending: PendingPermission | None = None
        self.calls = 0
        self.denials: list[JsonObject] = []
        self.usage: JsonObject = {"input_tokens": 0, "output_tokens": 0}
        self.model_usage: dict[str, JsonObject] = {}
        self.started = time.monotonic()
        self.tag_start = self.tag_assistant = message.uuid is not None

    def tags(self, single: bool) -> JsonObject:
        if self.msg.uuid is None:
            return {}
        many: JsonObject = {"user_message_uuids": [self.msg.uuid]}
        return {"user_message_uuid": self.msg.uuid} | many if single else many

    # -- the turn ----------------------------------------------------------------------------------

    def run(self) -> JsonObject:
        s = self.s
        if self.msg.uuid is not None:
            s.lifecycle(self.msg.uuid, "started")
        s.out.write(s.init_frame() | self.tags(False))
        s.record_prompt(self.msg)
        reply = reply_for_prompt(self.msg.text, s.cwd)
        while True:
            text, result = self.call(reply)
            if result is not None:
                return result
            tool = reply.tool
            if tool is None:
                return self.result("success", False, "completed", "end_turn", text=text)
            outcome = self.use_tool(tool)
            if outcome.interrupted:
                s.emit_message(s.user_text_frame(INTERRUPTED_TOOL))
                return self.result(
                    "error_during_execution", True, "aborted_tools", "tool_use",
                    errors=_ede("tool_use"), num_turns=self.calls + 2,
                )  # fmt: skip
            reply = follow_up_reply(outcome.content)

    def call(self, reply: Reply) -> tuple[str, JsonObject | None]:
        """One API call; returns (final text, None) or ("", result) when the turn ends here."""
        s = self.s
        if s.opts.partial:
            status: JsonObject = {"type": "system", "subtype": "status", "status": "requesting"}
            status |= {"session_id": s.session_id, "uuid": new_uuid()}
            s.out.write(status | self.tags(False))
        t0 = time.monotonic()
        try:
            if self.stop.wait(reply.delay_s) if reply.delay_s else self.stop.is_set():
                return "", self.interrupted(None)
            if reply.error_status is not None:
                return "", self.api_error(reply.error_status)
            self.calls += 1
            in_tokens = 8 + 12 * (s.api_messages + 1)
            state = StreamState("msg_" + uuid.uuid4().hex[:24], s.start_usage(in_tokens))
            s.charge(self, in_tokens, output_tokens(reply))
            if not self.stream(reply, state):
                return "", self.interrupted(state)
            return state.text, None
        finally:
            s.add_api_time(time.monotonic() - t0)

    # -- streaming ---------------------------------------------------------------------------------

    def event(
        self, state: StreamState, event: JsonObject, before: JsonObject | None = None,
        after: JsonObject | None = None,
    ) -> bool:  # fmt: skip
        """Write a live ``stream_event`` (only with partial messages); False once interrupted."""
        if not self.s.opts.partial:
            return not self.stop.is_set()
        frame = self.s.stream_frame(state.msg_id, event, before, after)
        return self.s.out.write_unless(self.stop, frame)

    def stream(self, reply: Reply, state: StreamState) -> bool:
        message: JsonObject = {"id": state.msg_id, "type": "message", "role": "assistant"}
        message |= {"model": self.s.model, "content": [], "stop_reason": None}
        message |= {"stop_sequence": None, "usage": state.usage}
        before: JsonObject = {"ttft_ms": 1, "thinking_display": "updates"}
        after: JsonObject | None = None
        if self.tag_start:
            after, self.tag_start = self.tags(True) | {"owed_rows": []}, False
        if not self.event(state, {"type": "message_start", "message": message}, before, after):
            return False
        state.started = True
        for state.index, block in enumerate(reply.blocks):
            ok = (
                self.stream_tool(state, block)
                if isinstance(block, ToolBlock)
                else (self.stream_text(state, block, reply))
            )
            if not ok:
                return False
        delta = {"stop_reason": reply.stop_reason, "stop_sequence": None}
        usage = {"output_tokens": output_tokens(reply)}
        if not self.event(state, {"type": "message_delta", "delta": delta, "usage": usage}):
            return False
        state.delta_sent = True
        return self.event(state, {"type": "message_stop"})

    def open_block(self, state: StreamState, block: JsonObject) -> bool:
        start = {"type": "content_block_start", "index": state.index, "content_block": block}
        state.text, state.assistant_sent = "", False
        state.open_block = self.event(state, start)
        return state.open_block

    def close_block(self, state: StreamState, content: JsonObject) -> bool:
        """The block's ``assistant`` frame, then its ``content_block_stop`` (2.1.329 order)."""
        frame = self.assistant_frame(state, content)
        if not self.s.out.write_unless(self.stop, frame):
            return False
        self.s.record(frame)
        state.assistant_sent = True
        if not self.event(state, {"type": "content_block_stop", "index": state.index}):
            return False
        state.open_block = False
        return True

    def stream_text(self, state: StreamState, block: TextBlock, reply: Reply) -> bool:
        if not self.open_block(state, {"type": "text", "text": ""}):
            return False
        if block.stamp is not None:
            if not self.stream_stamps(state, *block.stamp):
                return False
            return self.close_block(state, {"type": "text", "text": state.text})
        interval = self.s.delta_delay if reply.interval_s is None else reply.interval_s
        for n, chunk in enumerate(block.chunks):
            if n and interval and self.stop.wait(interval):
                return False
            delta = {"type": "text_delta", "text": chunk}
            event = {"type": "content_block_delta", "index": state.index, "delta": delta}
            if not self.event(state, event):
                return False
            state.text += chunk
            if reply.crash_code is not None:
                fail("fake_claude: simulated crash ([[crash]])", reply.crash_code)
        return self.close_block(state, {"type": "text", "text": state.text})

    def stream_stamps(self, state: StreamState, count: int, rate: float) -> bool:
        """``[[stamp:N:RATE]]``: lean, pre-serialised lines stamped right before each write."""
        s, out = self.s, self.s.out
        head = '{"type":"stream_event","event":{"type":"content_block_delta","index":'
        head += f'{state.index},"delta":{{"type":"text_delta","text":"'
        tail = f'"}}}},"session_id":"{s.session_id}","parent_tool_use_id":null,"uuid":"'
        end = f'","api_message_id":"{state.msg_id}"}}\n'
        if rate <= 0:
            return self.burst_stamps(state, count, head, tail, end)
        t0 = time.monotonic()
        for i in range(count):
            if rate > 0:
                wait = t0 + i / rate - time.monotonic()
                if wait > 0 and self.stop.wait(wait):
                    return False
            frame_uuid = new_uuid()
            with out.lock:
                if self.stop.is_set():
                    return False
                stamp = f"{time.monotonic_ns()};"
                if s.opts.partial:
                    out.write_line(head + stamp + tail + frame_uuid + end)
            state.text += stamp
        return True

    def burst_stamps(self, state: StreamState, count: int, head: str, tail: str, end: str) -> bool:
        """Unpaced ``[[stamp:N:0]]``: the same lines, written STAMP_BURST at a time, so that
        the CLI outruns its reader (one write and flush per line capped it at ~80k lines/s,
        below the daemon's reader: the bench's unpaced runs measured this process instead)."""
        s, out = self.s, self.s.out
        texts: list[str] = []
        base = new_uuid()[:24]  # each line's uuid: this one's first groups and a counter (unique,
        # the same shape, a fraction of uuid4's cost)
        for first in range(0, count, STAMP_BURST):
            lines = []
            with out.lock:
                if self.stop.is_set():
                    return False
                for i in range(first, min(first + STAMP_BURST, count)):
                    stamp = f"{time.monotonic_ns()};"
                    lines.append(f"{head}{stamp}{tail}{base}{i:012x}{end}")
                    texts.append(stamp)
                if s.opts.partial:
                    out.write_line("".join(lines))
        state.text += "".join(texts)
        return True

    def stream_tool(self, state: StreamState, tool: ToolBlock) -> bool:
        start = {"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}}
        if not self.open_block(state, start):
            return False
        for piece in json_pieces(tool.input):
            delta = {"type": "input_json_delta", "partial_json": piece}
            event = {"type": "content_block_delta", "index": state.index, "delta": delta}
            if not self.event(state, event):
                return False
        content = {"type": "tool_use", "id": tool.id, "name": tool.name}
        return self.close_block(state, content | {"input": _edit_input(tool, True)})

    def assistant_frame(
        self, state: StreamState, content: JsonObject, aborted: bool = False
    ) -> JsonObject:
        s = self.s
        message: JsonObject = {
            "id": state.msg_id,
            "type": "message",
            "role": "assistant",
            "model": s.model,
        }
        message |= {"content": [content], "stop_reason": None, "stop_sequence": None}
        message |= {"usage": state.usage, "context_management": None}
        frame: JsonObject = {"type": "assistant", "message": message, "parent_tool_use_id": None}
        frame |= {"session_id": s.session_id, "uuid": new_uuid(), "timestamp": timestamp()}
        frame["request_id"] = state.request_id
        if aborted:
            frame["aborted"] = True
        if self.tag_assistant:
            frame |= self.tags(True)
            self.tag_assistant = False
        return frame

    # -- ending a call early -----------------------------------------------------------------------

    def interrupted(self, state: StreamState | None) -> JsonObject:
        """Close the stream the way 2.1.329 does after an interrupt (reference section 6.4)."""
        s = self.s
        if state is not None and state.open_block and state.text and not state.assistant_sent:
            s.emit_message(self.assistant_frame(state, {"type": "text", "text": state.text}, True))
        s.emit_message(s.user_text_frame(INTERRUPTED))
        if state is not None and state.started and s.opts.partial:
            if state.open_block:
                event = {"type": "content_block_stop", "index": state.index}
                s.out.write(s.stream_frame(state.msg_id, event))
            if not state.delta_sent:
                delta = {"container": None, "stop_details": None, "stop_reason": None}
                closing: JsonObject = {"type": "message_delta", "context_management": None}
                closing |= {"delta": delta | {"stop_sequence": None}, "usage": state.usage}
                s.out.write(s.stream_frame(state.msg_id, closing))
            start_index = state.index + 1 if state.open_block else state.index
            abandoned = {"api_message_id": state.msg_id, "from_block_index": start_index}
            after = {"abandoned_blocks": abandoned}
            s.out.write(s.stream_frame(state.msg_id, {"type": "message_stop"}, None, after))
        return self.result(
            "error_during_execution", True, "aborted_streaming", None,
            errors=_ede(None), num_turns=self.calls + 1,
        )  # fmt: skip

    def api_error(self, status: int) -> JsonObject:
        s = self.s
        text = f"API Error: {status} mock error"
        error_type = {400: "invalid_request_error", 401: "authentication_error"}.get(
            status, "overloaded_error" if status == 529 else "api_error"
        )
        kind = {401: "authentication_failed", 429: "rate_limit"}.get(
            status, "server_error" if status >= 500 else "unknown"
        )
        usage = s.start_usage(0) | {"output_tokens": 0}
        message: JsonObject = {"diagnostics": None, "id": new_uuid(), "container": None}
        message["model"] = "<synthetic>"
        message |= {"role": "assistant", "stop_details": None, "stop_reason": "stop_sequence"}
        message |= {"stop_sequence": "", "type": "message", "usage": usage}
        message |= {"content": [{"type": "text", "text": text}], "context_management": None}
        frame: JsonObject = {"type": "assistant", "message": message, "parent_tool_use_id": None}
        frame |= {"session_id": s.session_id, "uuid": new_uuid(), "timestamp": timestamp()}
        frame |= {"error": kind, "request_id": "req_" + uuid.uuid4().hex[:24]}
        frame |= {"is_api_error_message": True, "api_error_status": status}
        frame |= {"api_error_type": error_type} | self.tags(True)
        s.emit_message(frame)
        return self.result(
            "success", True, "api_error", "stop_sequence", text=text,
            api_error=(status, error_type), num_turns=self.calls + 1,
        )  # fmt: skip

    def result(
        self,
        subtype: str,
        is_error: bool,
        terminal_reason: str,
        stop_reason: str | None,
        *,
        text: str | None = None,
        errors: list[str] | None = None,
        api_error: tuple[int, str] | None = None,
        num_turns: int | None = None,
    ) -> JsonObject:
        """The ``result`` frame, keys in the real CLI's order (``type`` near the end)."""
        s = self.s
        with s.out.lock:
            frame: JsonObject = {"duration_api_ms": s.duration_api_ms, "stop_reason": stop_reason}
            frame |= {"session_id": s.session_id, "total_cost_usd": s.total_cost_usd}
            frame |= {"usage": s.full_usage(self.usage), "modelUsage": json_copy(s.model_usage)}
            frame |= {"permission_denials": self.denials, "terminal_reason": terminal_reason}
            frame |= {"fast_mode_state": "off", "is_error": is_error}
            frame |= {"num_turns": self.calls if num_turns is None else num_turns}
            frame["subtype"] = subtype
            elapsed_ms = int((time.monotonic() - self.started) * 1000)
            if errors is not None:  # 2.1.329 splits the two tags around type/duration/uuid here
                tags = self.tags(True)
                frame |= {"errors": errors}
                frame |= {k: v for k, v in tags.items() if k == "user_message_uuid"}
                frame |= {"type": "result", "duration_ms": elapsed_ms, "uuid": new_uuid()}
                frame |= {k: v for k, v in tags.items() if k == "user_message_uuids"}
            else:
                frame["api_error_status"] = api_error[0] if api_error else None
                if api_error:
                    frame["api_error_type"] = api_error[1]
                frame |= {"result": text, "type": "result", "duration_ms": elapsed_ms}
                frame |= {"uuid": new_uuid()} | self.tags(True)
            frame |= {"queued_turn_count": 0, "result_index": s.result_index}
            frame["model_usage_since_last_result"] = json_copy(self.model_usage)
        return frame

    # -- tools and permissions ---------------------------------------------------------------------

    def use_tool(self, tool: ToolBlock) -> ToolOutcome:
        """Decide, maybe ask the host, run the tool and emit its ``tool_result`` frame."""
        s = self.s
        tool_input = _edit_input(tool, False)
        if self.stop.is_set():
            return self.refuse(tool, tool_input)
        decision = s.auto_decision(tool.name, tool_input)
        if decision is not None:
            return self.execute(tool, tool_input, decision)
        if s.opts.prompt_tool is None or s.mode == "dontAsk":
            return self.auto_deny(tool, tool_input)
        return self.answer(tool, tool_input, self.ask(tool, tool_input))

    def ask(self, tool: ToolBlock, tool_input: JsonObject) -> PendingPermission:
        s = self.s
        pending = PendingPermission(new_uuid())
        request = permission_request(tool.name, tool_input, tool.id, s.cwd)
        with s.out.lock:
            self.pending = pending
            s.out.write(
                {"type": "control_request", "request_id": pending.request_id} | {"request": request}
            )
            if s.eof:
                pending.error = STREAM_CLOSED
                pending.event.set()
            elif self.stop.is_set():
                s.cancel_permission(pending)
        while not pending.event.wait(WAIT_SLICE_S):
            pass
        with s.out.lock:
            self.pending = None
        return pending

    def answer(
        self, tool: ToolBlock, tool_input: JsonObject, pending: PendingPermission
    ) -> ToolOutcome:
        if pending.cancelled:
            return self.refuse(tool, tool_input)
        response = pending.response or {}
        behavior = response.get("behavior")
        if pending.error is None and behavior == "allow":
            updated = response.get("updatedInput")
            final = updated if isinstance(updated, dict) else tool_input
            self.s.apply_permission_updates(response.get("updatedPermissions"))
            if tool.name == "ExitPlanMode" and self.s.mode == "plan":
                self.s.set_mode("default")  # an approved plan leaves plan mode
            return self.execute(tool, final, {"decision": "accept", "source": "user_temporary"})
        if pending.error is None and behavior == "deny":
            if response.get("interrupt"):
                return self.refuse(tool, tool_input)
            message = str(response.get("message") or "Permission denied")
            return self.deny(tool, tool_input, message, "user_reject")
        error = pending.error or "Error: Invalid permission response"
        message = f"Tool permission request failed: {error}"
        outcome = ToolOutcome(message, True, f"Error: {message}")
        self.emit_tool_result(tool, outcome, {"id": tool.id})
        return outcome

    def execute(self, tool: ToolBlock, tool_input: JsonObject, decision: JsonObject) -> ToolOutcome:
        outcome = run_tool(tool.name, tool_input, self.s.cwd, self.stop)
        self.emit_tool_result(tool, outcome, {"id": tool.id, "permission_decision": decision})
        return outcome

    def deny(
        self, tool: ToolBlock, tool_input: JsonObject, message: str, source: str
    ) -> ToolOutcome:
        self.add_denial(tool, tool_input)
        outcome = ToolOutcome(message, True, f"Error: {message}")
        decision: JsonObject = {"decision": "reject", "source": source}
        if source == "config":
            decision["reason_type"] = "mode"
        meta = {"id": tool.id, "non_execution_kind": "permission-rule"}
        self.emit_tool_result(tool, outcome, meta | {"permission_decision": decision})
        return outcome

    def auto_deny(self, tool: ToolBlock, tool_input: JsonObject) -> ToolOutcome:
        """No prompt tool (or ``dontAsk``): ``system/permission_denied`` and an error result."""
        s = self.s
        message = denied_message(tool.name, tool_input, s.cwd)
        frame: JsonObject = {
            "type": "system",
            "subtype": "permission_denied",
            "tool_name": tool.name,
        }
        frame |= {"tool_use_id": tool.id, "message": message}
        s.out.write(frame | {"session_id": s.session_id, "uuid": new_uuid()})
        return self.deny(tool, tool_input, message, "config")

    def refuse(self, tool: ToolBlock, tool_input: JsonObject) -> ToolOutcome:
        """The interrupt refusal: the turn stops after this tool result."""
        self.add_denial(tool, tool_input)
        outcome = ToolOutcome(REFUSAL, True, "User rejected tool use", interrupted=True)
        self.emit_tool_result(tool, outcome, {"id": tool.id, "non_execution_kind": "user-rejected"})
        return outcome

    def add_denial(self, tool: ToolBlock, tool_input: JsonObject) -> None:
        denial = {"tool_name": tool.name, "tool_use_id": tool.id, "tool_input": tool_input}
        self.denials.append(denial)

    def emit_tool_result(self, tool: ToolBlock, outcome: ToolOutcome, meta: JsonObject) -> None:
        s = self.s
        block: JsonObject = {"tool_use_id": tool.id, "type": "tool_result"}
        block["content"] = outcome.content
        if outcome.is_error or tool.name == "Bash":
            block["is_error"] = outcome.is_error
        frame = s.user_frame([block])
        frame |= {"tool_use_result": outcome.tool_use_result, "tool_result_meta": [meta]}
        s.emit_message(frame)
        s.count_api_message()


# ---------------------------------------------------------------------------------------------
# The session: shared state, stdin handling, the turn queue
# ---------------------------------------------------------------------------------------------


def json_copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _usage_entry() -> JsonObject:
    entry: JsonObject = {"inputTokens": 0, "outputTokens": 0, "cacheReadInputTokens": 0}
    entry |= {"cacheCreationInputTokens": 0, "webSearchRequests": 0, "costUSD": 0.0}
    return entry | {"contextWindow": 1000000, "maxOutputTokens": 128000}


def _add_usage(table: dict[str, JsonObject], model: str, tokens: tuple[int, int]) -> None:
    entry = table.setdefault(model, _usage_entry())
    entry["inputTokens"] += tokens[0]
    entry["outputTokens"] += tokens[1]
    entry["costUSD"] = round(entry["costUSD"] + COST_PER_CALL_USD, 10)


class TurnQueue:
    """FIFO of user messages; ``get`` returns None once closed (stdin EOF) and drained."""

    def __init__(self) -> None:
        self._items: deque[QueuedMessage] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, message: QueuedMessage) -> None:
        with self._cond:
            self._items.append(message)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def uuids(self) -> list[str]:
        with self._cond:
            return [m.uuid for m in self._items if m.uuid is not None]

    def get(self) -> QueuedMessage | None:
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait(WAIT_SLICE_S)
            return self._items.popleft() if self._items else None


class Session:
    """Process-wide state. ``out.lock`` guards it as well as stdout (one re-entrant lock)."""

    def __init__(self, opts: Options, out: Output) -> None:
        self.opts = opts
        self.out = out
        self.cwd = os.getcwd()
        self.session_id = opts.session_id or opts.resume or new_uuid()
        self.transcript = Transcript(self.cwd, self.session_id)
        self.mode = opts.permission_mode
        self.model = _resolve_model(opts.model)
        self.rules: list[tuple[str, str | None]] = []
        self.queue = TurnQueue()
        self.current: Turn | None = None
        self.eof = self.last_is_error = False
        self.sigint = threading.Event()
        self.total_cost_usd = 0.0
        self.duration_api_ms = 0
        self.model_usage: dict[str, JsonObject] = {}
        self.api_messages = 0
        self.result_index = 0
        self.parent_uuid: str | None = None
        self.delta_delay = float(os.environ.get("FAKE_CLAUDE_DELAY") or 0)
        self.readonly_bash = os.environ.get("FAKE_CLAUDE_AUTO_ALLOW_READONLY") == "1"

    # -- start-up: --session-id / --resume ---------------------------------------------------------

    def prepare(self) -> None:
        if self.opts.session_id is not None and self.transcript.exists():
            fail(f"Error: Session ID {self.opts.session_id} is already in use.")
        if self.opts.resume is None:
            return
        source = Transcript(self.cwd, self.opts.resume)
        if not source.exists():
            self.resume_failed(f"No conversation found with session ID: {self.opts.resume}")
        state = source.load()
        self.total_cost_usd, self.duration_api_ms = state.total_cost_usd, state.duration_api_ms
        self.model_usage, self.api_messages = state.model_usage, state.api_messages
        if self.opts.model is None and state.model:
            self.model = state.model

    def resume_failed(self, message: str) -> NoReturn:
        frame: JsonObject = {"type": "result", "subtype": "error_during_execution"}
        frame |= {"duration_ms": 0, "duration_api_ms": 0, "is_error": True, "num_turns": 0}
        frame |= {"stop_reason": None, "session_id": self.session_id, "total_cost_usd": 0}
        frame |= {"usage": self.full_usage({"input_tokens": 0, "output_tokens": 0})}
        frame |= {"modelUsage": {}, "permission_denials": [], "errors": [message]}
        self.out.write(frame | {"uuid": new_uuid()})
        fail(message)

    # -- frames ------------------------------------------------------------------------------------

    def init_frame(self) -> JsonObject:
        tools = [t for t in TOOLS if self.opts.prompt_tool or t not in PROMPT_ONLY_TOOLS]
        key_source = "ANTHROPIC_API_KEY" if os.environ.get("ANTHROPIC_API_KEY") else "none"
        memory = config_dir() / "projects" / project_slug(self.cwd) / "memory"
        socket_dir = os.environ.get("TMPDIR") or "/tmp"
        frame: JsonObject = {"type": "system", "subtype": "init", "cwd": self.cwd}
        frame |= {"session_id": self.session_id, "tools": tools, "mcp_servers": []}
        frame |= {"model": self.model, "permissionMode": self.mode}
        frame |= {"slash_commands": list(SLASH_COMMANDS), "apiKeySource": key_source}
        frame |= {"claude_code_version": VERSION, "output_style": "default"}
        frame |= {"agents": list(AGENTS), "skills": [], "plugins": []}
        frame |= {"capabilities": list(CAPABILITIES), "uuid": new_uuid()}
        frame |= {"memory_paths": {"auto": f"{memory}/"}, "original_cwd": self.cwd}
        frame |= {"additional_directories": []}
        frame["messaging_socket_path"] = f"{socket_dir.rstrip('/')}/cc-socks/{os.getpid()}.sock"
        return frame | {"fast_mode_state": "off"}

    def stream_frame(
        self, msg_id: str, event: JsonObject, before: JsonObject | None = None,
        after: JsonObject | None = None,
    ) -> JsonObject:  # fmt: skip
        frame: JsonObject = {"type": "stream_event", "event": event, "session_id": self.session_id}
        frame |= {"parent_tool_use_id": None, "uuid": new_uuid()} | (before or {})
        return frame | {"api_message_id": msg_id} | (after or {})

    def user_frame(self, content: Any) -> JsonObject:
        frame: JsonObject = {"type": "user", "message": {"role": "user", "content": content}}
        frame |= {"parent_tool_use_id": None, "session_id": self.session_id}
        return frame | {"uuid": new_uuid(), "timestamp": timestamp()}

    def user_text_frame(self, text: str) -> JsonObject:
        return self.user_frame([{"type": "text", "text": text}])

    def lifecycle(self, command_uuid: str, state: str) -> None:
        frame = {"type": "command_lifecycle", "command_uuid": command_uuid, "state": state}
        self.out.write(frame | {"uuid": new_uuid(), "session_id": self.session_id})

    def status_mode_frame(self) -> None:
        frame: JsonObject = {"type": "system", "subtype": "status", "status": None}
        frame |= {"permissionMode": self.mode, "uuid": new_uuid(), "session_id": self.session_id}
        self.out.write(frame)

    def start_usage(self, input_tokens: int) -> JsonObject:
        usage = {"input_tokens": input_tokens, "cache_creation_input_tokens": 0}
        return usage | {
            "cache_read_input_tokens": 0,
            "output_tokens": 1,
            "service_tier": "standard",
        }

    def full_usage(self, usage: JsonObject) -> JsonObject:
        full: JsonObject = {"input_tokens": usage["input_tokens"], "cache_creation_input_tokens": 0}
        full |= {"cache_read_input_tokens": 0, "output_tokens": usage["output_tokens"]}
        full["server_tool_use"] = {"web_search_requests": 0, "web_fetch_requests": 0}
        return full | {"service_tier": "standard"}

    # -- transcript and accounting -----------------------------------------------------------------

    def record(self, frame: JsonObject) -> None:
        record: JsonObject = {
            "parentUuid": self.parent_uuid,
            "isSidechain": False,
            "type": frame["type"],
        }
        record |= {"message": frame["message"], "uuid": frame["uuid"]}
        record["timestamp"] = frame.get("timestamp") or timestamp()
        if "tool_use_result" in frame:
            record["toolUseResult"] = frame["tool_use_result"]
        self.transcript.append(record)
        self.parent_uuid = frame["uuid"]

    def emit_message(self, frame: JsonObject) -> None:
        self.out.write(frame)
        self.record(frame)

    def record_prompt(self, message: QueuedMessage) -> None:
        frame = self.user_frame(message.content)
        if message.uuid is not None:
            frame["uuid"] = message.uuid
        self.record(frame)
        self.count_api_message()

    def count_api_message(self) -> None:
        with self.out.lock:
            self.api_messages += 1

    def charge(self, turn: Turn, input_tokens: int, output_tokens: int) -> None:
        """One API call: fixed cost, cumulative per model and per turn."""
        with self.out.lock:
            self.total_cost_usd = round(self.total_cost_usd + COST_PER_CALL_USD, 10)
            _add_usage(self.model_usage, self.model, (input_tokens, output_tokens))
            _add_usage(turn.model_usage, self.model, (input_tokens, output_tokens))
            turn.usage["input_tokens"] += input_tokens
            turn.usage["output_tokens"] += output_tokens
            self.api_messages += 1

    def add_api_time(self, seconds: float) -> None:
        with self.out.lock:
            self.duration_api_ms += int(seconds * 1000)

    def save_cost_state(self) -> None:
        if not self.transcript.exists():
            return
        record: JsonObject = {"type": "cost-state", "total_cost_usd": self.total_cost_usd}
        record |= {"duration_api_ms": self.duration_api_ms, "model": self.model}
        self.transcript.append(record | {"modelUsage": self.model_usage, "timestamp": timestamp()})

    # -- permissions state -------------------------------------------------------------------------

    def auto_decision(self, name: str, tool_input: JsonObject) -> JsonObject | None:
        """A ``permission_decision`` when mode/rules settle the call without asking, else None."""
        by_config: JsonObject = {"decision": "accept", "source": "config"}
        with self.out.lock:
            if name in ("AskUserQuestion", "ExitPlanMode"):
                return None
            if self.mode == "bypassPermissions" or (
                self.mode == "acceptEdits" and name in ("Write", "Edit")
            ):
                return by_config | {"reason_type": "mode"}
            if any(rule_matches(rule, name, tool_input) for rule in self.rules):
                return by_config | {"reason_type": "rule"}
        if name == "Bash" and self.readonly_bash and is_readonly(str(tool_input.get("command"))):
            return by_config | {"reason_type": "subcommandResults"}
        return None if name in ("Bash", "Write", "Edit") else by_config

    def set_mode(self, mode: str) -> None:
        with self.out.lock:
            self.mode = mode
            self.status_mode_frame()

    def apply_permission_updates(self, updates: Any) -> None:
        for update in updates if isinstance(updates, list) else []:
            if not isinstance(update, dict):
                continue
            if update.get("type") == "setMode" and update.get("mode") in MODES:
                self.set_mode(str(update["mode"]))
            elif update.get("type") == "addRules" and update.get("behavior", "allow") == "allow":
                for rule in update.get("rules") or []:
                    if isinstance(rule, dict) and rule.get("toolName"):
                        content = rule.get("ruleContent")
                        with self.out.lock:
                            self.rules.append((str(rule["toolName"]), content and str(content)))

    def cancel_permission(self, pending: PendingPermission) -> None:
        """Withdraw our own ``can_use_tool`` (caller holds the lock)."""
        self.out.write({"type": "control_cancel_request", "request_id": pending.request_id})
        pending.cancelled = True
        pending.event.set()

    # -- stdin (reader thread) ---------------------------------------------------------------------

    def read_stdin(self) -> None:
        log_path = os.environ.get("FAKE_CLAUDE_LOG")
        log = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115
        try:
            for raw in sys.stdin.buffer:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if log is not None:
                    log.write(line + "\n")
                    log.flush()
                self.handle_line(line)
        finally:
            if log is not None:
                log.close()
        self.on_eof()

    def handle_line(self, line: str) -> None:
        """Dispatch one stdin line; malformed input ends the process like the real CLI (s. 7)."""
        if not line.strip():
            return
        try:
            message = json.loads(line)
        except ValueError:
            fail(
                f"Error parsing streaming input line (type=unknown, {len(line)} chars): SyntaxError"
            )
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind == "user":
            self.on_user(message)
        elif kind == "control_request":
            self.on_control_request(message)
        elif kind == "control_response":
            self.on_control_response(message)

    def on_user(self, message: JsonObject) -> None:
        body = message.get("message")
        role = body.get("role", "undefined") if isinstance(body, dict) else "undefined"
        if role != "user":
            fail(f"Error: Expected message role 'user', got '{role}'")
        assert isinstance(body, dict)
        content = body.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = "".join(
                str(b.get("text", ""))
                for b in content
                if isinstance(b, dict) and b.get("type") == "text"
            )
        else:
            return
        message_uuid = message.get("uuid") if isinstance(message.get("uuid"), str) else None
        with self.out.lock:
            if self.sigint.is_set():
                return
            self.queue.put(QueuedMessage(text, content, message_uuid))
            if message_uuid is not None:
                self.lifecycle(message_uuid, "queued")

    def on_control_response(self, message: JsonObject) -> None:
        """An answer to our ``can_use_tool``; unknown or stale request ids are ignored."""
        response = message.get("response")
        if not isinstance(response, dict):
            return
        with self.out.lock:
            pending = self.current.pending if self.current is not None else None
            if pending is None or pending.event.is_set():
                return
            if pending.request_id != response.get("request_id"):
                return
            if response.get("subtype") == "error":
                pending.error = f"Error: {response.get('error')}"
            else:
                payload = response.get("response")
                pending.response = payload if isinstance(payload, dict) else {}
            pending.event.set()

    def on_eof(self) -> None:
        with self.out.lock:
            self.eof = True
            pending = self.current.pending if self.current is not None else None
            if pending is not None and not pending.event.is_set():
                pending.error = STREAM_CLOSED
                pending.event.set()
        self.queue.close()

    # -- control requests --------------------------------------------------------------------------

    def respond(self, request_id: Any, payload: JsonObject) -> None:
        response = {"subtype": "success", "request_id": request_id, "response": payload}
        self.out.write({"type": "control_response", "response": response})

    def respond_error(self, request_id: Any, error: str, code: str | None = None) -> None:
        response = {"subtype": "error", "request_id": request_id, "error": error}
        if code is not None:
            response["error_code"] = code
        self.out.write({"type": "control_response", "response": response})

    def on_control_request(self, message: JsonObject) -> None:
        request = message.get("request")
        if not isinstance(request, dict):
            fail("Error: Missing request on control_request")
        request_id = message.get("request_id")
        subtype = request.get("subtype")
        handlers: dict[Any, Callable[[Any, JsonObject], None]] = {
            "initialize": self.on_initialize,
            "interrupt": lambda rid, _req: self.interrupt(rid),
            "set_permission_mode": self.on_set_permission_mode,
            "set_model": self.on_set_model,
            "mcp_status": lambda rid, _req: self.respond(rid, {"mcpServers": []}),
        }
        handler = handlers.get(subtype)
        if handler is None:
            error = f"Unsupported control request subtype: {subtype}"
            self.respond_error(request_id, error, "unsupported_request")
            return
        handler(request_id, request)

    def on_initialize(self, request_id: Any, request: JsonObject) -> None:
        commands = [
            {"name": name, "description": f"/{name}", "argumentHint": "", "builtin": True}
            for name in SLASH_COMMANDS
        ]
        models = [
            {"value": value, "resolvedModel": resolved, "displayName": value.capitalize()}
            for value, resolved in (
                ("default", DEFAULT_MODEL), ("opus", DEFAULT_MODEL), ("fable", "claude-fable-5-2"),
                ("sonnet", "claude-sonnet-5-5"), ("haiku", "claude-haiku-5-5"),
            )
        ]  # fmt: skip
        key_source = "ANTHROPIC_API_KEY" if os.environ.get("ANTHROPIC_API_KEY") else "none"
        with self.out.lock:
            payload: JsonObject = {"commands": commands}
            payload |= {"agents": [{"name": a, "description": a} for a in AGENTS]}
            payload |= {"output_style": "default", "available_output_styles": ["default"]}
            payload |= {"user_output_styles_dir": str(config_dir() / "output-styles")}
            payload |= {"models": models, "pid": os.getpid(), "claude_code_version": VERSION}
            account = {"tokenSource": "none", "apiKeySource": key_source}
            payload["account"] = account | {"apiProvider": "firstParty"}
            payload |= {"current_permission_mode": self.mode, "hook_on_failure_supported": True}
            payload |= {"hooks_when_unanswered_kept": 0, "other_hook_ask_outranks_host": True}
            payload |= {"feedback_mode": {"kind": "disabled"}, "analytics_disabled": True}
            available = self.opts.remote_control
            available &= not os.environ.get("FAKE_CLAUDE_REMOTE_CONTROL")
            payload |= {"remote_control_available": available, "fast_mode_state": "off"}
            payload["session_state"] = "idle" if self.current is None else "running"
            payload["capabilities"] = list(CAPABILITIES)
            response = {"subtype": "success", "request_id": request_id, "response": payload}
            response |= {"pending_permission_requests": [], "pending_user_dialog_requests": []}
            self.out.write({"type": "control_response", "response": response})

    def interrupt(self, request_id: Any) -> None:
        """Stop the running turn (cancelling a pending ``can_use_tool`` first), then ack."""
        with self.out.lock:
            turn = self.current
            if turn is not None:
                pending = turn.pending
                if pending is not None and not pending.event.is_set():
                    self.cancel_permission(pending)
                turn.stop.set()
            if request_id is not None:
                self.respond(request_id, {"still_queued": self.queue.uuids()})

    def on_set_permission_mode(self, request_id: Any, request: JsonObject) -> None:
        mode = request.get("mode")
        if mode not in MODES:
            self.respond_error(request_id, f"Invalid permission mode: {mode}")
            return
        with self.out.lock:
            self.respond(request_id, {"mode": mode})
            self.set_mode(str(mode))

    def on_set_model(self, request_id: Any, request: JsonObject) -> None:
        requested = request.get("model")
        with self.out.lock:
            self.model = _resolve_model(requested if isinstance(requested, str) else None)
            self.respond(request_id, {"model": requested})
            stdout = f"<local-command-stdout>Set model to {self.model}</local-command-stdout>"
            self.out.write(self.user_frame(stdout) | {"isReplay": True})
            self.save_cost_state()

    # -- the main loop -----------------------------------------------------------------------------

    def serve(self) -> int:
        """Run queued turns one at a time until stdin EOF; returns the exit code."""
        threading.Thread(target=self.read_stdin, name="stdin", daemon=True).start()
        while True:
            message = self.queue.get()
            with self.out.lock:
                if message is None or self.sigint.is_set():
                    return 0 if self.sigint.is_set() or not self.last_is_error else 1
                turn = self.current = Turn(self, message)
            self.finish(turn, turn.run())
            if self.sigint.is_set():
                return 0

    def finish(self, turn: Turn, result: JsonObject) -> None:
        with self.out.lock:
            self.out.write(result)
            self.current = None
            self.result_index += 1
            self.last_is_error = bool(result["is_error"])
            if turn.msg.uuid is not None:
                state = "cancelled" if result["is_error"] else "completed"
                self.lifecycle(turn.msg.uuid, state)
            self.save_cost_state()

    def on_sigint(self) -> None:
        """SIGINT: like an interrupt; the process exits 0 once the turn's result is written."""
        with self.out.lock:
            self.sigint.set()
            idle = self.current is None
            if not idle:
                self.interrupt(None)
        if idle:
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()
            os._exit(0)


def _resolve_model(model: str | None) -> str:
    if model is None or model in ("default", "opus"):
        return DEFAULT_MODEL
    return model


def help_text(remote_control: bool) -> str:
    """``--help`` in the real CLI's commander layout, listing the options this fake knows."""
    options = [
        ("--input-format <format>", "Input format: text or stream-json"),
        ("--include-partial-messages", "Include partial message chunks as they arrive"),
        ("--model <model>", "Model for the current session"),
        ("--output-format <format>", "Output format: text, json or stream-json"),
        ("-p, --print", "Print response and exit (useful for pipes)"),
        ("--permission-mode <mode>", f"Permission mode ({', '.join(MODES)})"),
        ("--permission-prompt-tool <tool>", "MCP tool (or stdio) for permission prompts"),
        ("-r, --resume [value]", "Resume a conversation by session ID"),
        ("--session-id <uuid>", "Use a specific session ID for the conversation"),
        ("--verbose", "Override verbose mode setting from config"),
        ("-v, --version", "Output the version number"),
        ("-h, --help", "Display help for command"),
    ]
    if remote_control:
        options[5:5] = [
            ("--remote-control [name]", "Start an interactive session with Remote Control"),
            ("--remote-control-session-name-prefix <prefix>", "Prefix for session names"),
        ]
    lines = ["Usage: claude [options] [command] [prompt]", "", "Options:"]
    for spec, text in options:
        lines.append(f"  {spec:<36}  {text}" if len(spec) <= 36 else f"  {spec}\n      {text}")
    commands = ["", "Commands:", f"  {'doctor':<36}  Check the health of the installation"]
    return "\n".join(lines + commands)


def _log_argv(argv: list[str]) -> None:
    log_path = os.environ.get("FAKE_CLAUDE_LOG")
    if log_path:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"argv": argv}) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    _log_argv(args)
    opts = parse_argv(args)
    if opts.version:
        print(f"{VERSION} (Claude Code)")
        return 0
    if opts.help:
        print(help_text(os.environ.get("FAKE_CLAUDE_REMOTE_CONTROL") != "absent"))
        return 0
    validate(opts)
    session = Session(opts, Output())
    session.prepare()
    signal.signal(signal.SIGTERM, lambda _sig, _frame: os._exit(143))
    signal.signal(
        signal.SIGINT,
        lambda _sig, _frame: threading.Thread(target=session.on_sigint, daemon=True).start(),
    )
    return session.serve()


if __name__ == "__main__":
    exit_code = main()
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    os._exit(exit_code)
