"""Tests for ``tests/fake_claude.py``: the fake Claude Code CLI must behave like reference §3-7.

Every test spawns the fake as a subprocess (``sys.executable tests/fake_claude.py``) with HOME,
CLAUDE_CONFIG_DIR and TMPDIR inside ``tmp_path`` and kills it on the way out.  Plain sync tests.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

FAKE = Path(__file__).resolve().parent / "fake_claude.py"
BASE_FLAGS = ("-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose")
PARTIAL = "--include-partial-messages"
STDIO = ("--permission-prompt-tool", "stdio")
TIMEOUT_S = 10.0

Frame = dict[str, Any]
Predicate = Callable[[Frame], bool]


def is_type(kind: str, subtype: str | None = None) -> Predicate:
    return lambda f: f.get("type") == kind and (subtype is None or f.get("subtype") == subtype)


def is_event(event_type: str) -> Predicate:
    return lambda f: f.get("type") == "stream_event" and f["event"]["type"] == event_type


def is_can_use_tool(frame: Frame) -> bool:
    return frame.get("type") == "control_request" and frame["request"]["subtype"] == "can_use_tool"


def label(frame: Frame) -> str:
    """A short name for a frame, e.g. ``stream_event/content_block_delta``."""
    kind = frame.get("type", "?")
    if kind == "stream_event":
        return f"stream_event/{frame['event']['type']}"
    if kind == "user":
        content = frame["message"]["content"]
        first = content[0] if isinstance(content, list) and content else {}
        return f"user/{first.get('type', 'str')}"
    if kind == "control_request":
        return f"control_request/{frame['request']['subtype']}"
    sub = frame.get("subtype") or frame.get("state")
    return f"{kind}/{sub}" if sub else str(kind)


class FakeCli:
    """One running fake: stdout frames through a queue, stderr drained, stdin written whole."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.frames: queue.Queue[Frame | None] = queue.Queue()
        self.seen: list[Frame] = []
        self.other_lines: list[bytes] = []
        self.stderr = b""
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self._stderr_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_thread.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if raw.startswith(b"{"):
                self.frames.put(json.loads(raw))
            else:
                self.other_lines.append(raw)
        self.frames.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    # -- writing ---------------------------------------------------------------------------------

    def send_raw(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def send(self, message: Frame) -> None:
        self.send_raw(json.dumps(message))

    def user(self, text: str, *, tagged: bool = True) -> str:
        message_uuid = str(uuid.uuid4())
        message: Frame = {"type": "user", "message": {"role": "user", "content": text}}
        message |= {"parent_tool_use_id": None, "session_id": "default"}
        self.send(message | ({"uuid": message_uuid} if tagged else {}))
        return message_uuid

    def control(self, subtype: str, **fields: Any) -> str:
        request_id = f"req_{uuid.uuid4().hex[:8]}"
        request = {"subtype": subtype} | fields
        self.send({"type": "control_request", "request_id": request_id, "request": request})
        return request_id

    def answer(self, request_id: str, payload: Frame) -> None:
        response = {"subtype": "success", "request_id": request_id, "response": payload}
        self.send({"type": "control_response", "response": response})

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    # -- reading ---------------------------------------------------------------------------------

    def expect(self, predicate: Predicate, timeout: float = TIMEOUT_S) -> Frame:
        """Consume frames until one matches; fail on timeout or stdout EOF."""
        while True:
            try:
                frame = self.frames.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"timed out; seen: {[label(f) for f in self.seen[-10:]]}")
            if frame is None:
                self.frames.put(None)
                pytest.fail(f"stdout closed; seen: {[label(f) for f in self.seen[-10:]]}")
            self.seen.append(frame)
            if predicate(frame):
                return frame

    def until(self, predicate: Predicate) -> list[Frame]:
        """The frames up to and including the first match."""
        start = len(self.seen)
        self.expect(predicate)
        return self.seen[start:]

    def result(self) -> Frame:
        return self.expect(is_type("result"))

    def finish(self) -> int:
        """Close stdin, wait for exit, then drain stdout; returns the exit code."""
        self.close_stdin()
        code = self.proc.wait(timeout=TIMEOUT_S)
        self.drain()
        return code

    def drain(self) -> list[Frame]:
        rest: list[Frame] = []
        while (frame := self.frames.get(timeout=TIMEOUT_S)) is not None:
            rest.append(frame)
        self.frames.put(None)
        self.seen += rest
        self._stderr_thread.join(timeout=TIMEOUT_S)
        return rest


Spawn = Callable[..., FakeCli]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def spawn(tmp_path: Path, work: Path) -> Iterator[Spawn]:
    """Start fakes (``spawn(*flags, env=...)``); all of them are killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []
    (tmp_path / "tmp").mkdir()

    def start(*flags: str, env: dict[str, str] | None = None, base: bool = True) -> FakeCli:
        environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
        environ |= {"CLAUDE_CONFIG_DIR": str(tmp_path / "config"), "TMPDIR": str(tmp_path / "tmp")}
        argv = [sys.executable, str(FAKE), *(BASE_FLAGS if base else ()), *flags]
        proc = subprocess.Popen(
            argv, cwd=work, env=environ | (env or {}),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        procs.append(proc)
        return FakeCli(proc)

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=TIMEOUT_S)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def run_once(spawn: Spawn, *flags: str, stdin: str = "", env: dict[str, str] | None = None) -> (
    tuple[int, list[Frame], str]
):
    """Feed ``stdin`` then EOF; returns (exit code, frames, stderr)."""
    cli = spawn(*flags, env=env)
    if stdin:
        assert cli.proc.stdin is not None
        cli.proc.stdin.write(stdin.encode())
    code = cli.finish()
    return code, cli.seen, cli.stderr.decode()


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def test_version(spawn: Spawn) -> None:
    cli = spawn("--version", base=False)
    assert cli.finish() == 0
    assert cli.other_lines == [b"2.1.329 (Claude Code)\n"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ("-p", "--input-format", "stream-json", "--output-format", "stream-json"),
            "Error: When using --print, --output-format=stream-json requires --verbose",
        ),
        (
            ("-p", "--input-format", "stream-json", "--verbose"),
            "Error: --input-format=stream-json requires output-format=stream-json.",
        ),
    ],
)
def test_argv_errors(spawn: Spawn, flags: tuple[str, ...], message: str) -> None:
    cli = spawn(*flags, base=False)
    assert cli.finish() == 1
    assert cli.stderr.decode().strip() == message
    assert cli.seen == []


def test_bypass_permissions_refused_as_root_unless_sandbox(spawn: Spawn) -> None:
    flags = ("--permission-mode", "bypassPermissions")
    if os.geteuid() == 0:
        code, frames, stderr = run_once(spawn, *flags)
        assert code == 1
        assert "cannot be used with root/sudo privileges for security reasons" in stderr
    code, frames, _ = run_once(spawn, *flags, stdin="", env={"IS_SANDBOX": "1"})
    assert code == 0
