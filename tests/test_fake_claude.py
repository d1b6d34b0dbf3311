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


def run_once(
    spawn: Spawn, *flags: str, stdin: str = "", env: dict[str, str] | None = None
) -> tuple[int, list[Frame], str]:
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
        code, _, stderr = run_once(spawn, *flags)
        assert code == 1
        assert "cannot be used with root/sudo privileges for security reasons" in stderr
    code, _, stderr = run_once(spawn, *flags, stdin="", env={"IS_SANDBOX": "1"})
    assert (code, stderr) == (0, "")


# ---------------------------------------------------------------------------------------------
# Turns
# ---------------------------------------------------------------------------------------------

TEXT_TURN = [
    "system/init",
    "system/status",
    "stream_event/message_start",
    "stream_event/content_block_start",
    "stream_event/content_block_delta",
    "stream_event/content_block_delta",
    "assistant",
    "stream_event/content_block_stop",
    "stream_event/message_delta",
    "stream_event/message_stop",
    "result/success",
]


def test_text_turn_with_partial_messages(spawn: Spawn, tmp_path: Path, work: Path) -> None:
    cli = spawn(PARTIAL)
    message_uuid = cli.user("hello from the test")
    frames = cli.until(is_type("result"))
    assert cli.finish() == 0
    labels = [label(f) for f in frames]
    assert labels == ["command_lifecycle/queued", "command_lifecycle/started", *TEXT_TURN]
    assert label(cli.seen[-1]) == "command_lifecycle/completed"
    init, status, start, *_ = frames[2:]
    assert init["cwd"] == str(work)
    assert init["claude_code_version"] == "2.1.329"
    assert init["model"] == "claude-opus-5-5"
    assert init["permissionMode"] == "default"
    assert "AskUserQuestion" not in init["tools"]
    assert status["status"] == "requesting"
    assert init["user_message_uuids"] == status["user_message_uuids"] == [message_uuid]
    assert start["user_message_uuid"] == message_uuid
    deltas = [
        f["event"]["delta"]["text"] for f in frames if label(f).endswith("content_block_delta")
    ]
    assert deltas == ["You said: hello ", "from the test"]
    assistant = next(f for f in frames if f["type"] == "assistant")
    assert assistant["message"]["stop_reason"] is None
    assert assistant["message"]["content"] == [
        {"type": "text", "text": "You said: hello from the test"}
    ]
    events = [f for f in frames if f["type"] == "stream_event"]
    assert {f["api_message_id"] for f in events} == {assistant["message"]["id"]}
    delta = next(f for f in events if f["event"]["type"] == "message_delta")
    assert delta["event"]["delta"]["stop_reason"] == "end_turn"
    result = frames[-1]
    assert next(iter(result)) == "duration_api_ms"
    assert result["is_error"] is False
    assert result["terminal_reason"] == "completed"
    assert result["result"] == "You said: hello from the test"
    assert result["num_turns"] == 1
    assert result["total_cost_usd"] == pytest.approx(0.0001)
    assert result["user_message_uuid"] == message_uuid
    assert result["result_index"] == 0
    session_id = result["session_id"]
    assert all(f.get("session_id") == session_id for f in frames)
    assert len({f["uuid"] for f in cli.seen}) == len(cli.seen)
    transcript = tmp_path / "config" / "projects" / str(work).replace("/", "-").replace("_", "-")
    assert (transcript / f"{session_id}.jsonl").is_file()


def test_text_turn_without_partial_messages(spawn: Spawn) -> None:
    cli = spawn()
    cli.user("[[fast:5]]", tagged=False)
    frames = cli.until(is_type("result"))
    assert [label(f) for f in frames] == ["system/init", "assistant", "result/success"]
    assert frames[1]["message"]["content"][0]["text"] == "tok " * 5
    assert "user_message_uuid" not in frames[2]
    assert cli.finish() == 0


def test_bash_allow_then_deny(spawn: Spawn, work: Path) -> None:
    cli = spawn(PARTIAL, *STDIO)
    cli.user("[[bash:echo hi > hi.txt]]")
    request = cli.expect(is_can_use_tool)
    body = request["request"]
    assert body["tool_name"] == body["display_name"] == "Bash"
    assert body["input"] == {"command": "echo hi > hi.txt", "description": "mock command"}
    assert body["blocked_path"] == str(work / "hi.txt")
    rule = body["permission_suggestions"][0]["rules"][0]
    assert rule == {"toolName": "Bash", "ruleContent": "echo hi *"}
    assert body["permission_suggestions"][1]["directories"] == [str(work)]
    tool_use = next(f for f in cli.seen if f["type"] == "assistant" and
                    f["message"]["content"][0]["type"] == "tool_use")  # fmt: skip
    assert body["tool_use_id"] == tool_use["message"]["content"][0]["id"]
    cli.answer(request["request_id"], {"behavior": "allow", "updatedInput": body["input"]})
    frames = cli.until(is_type("result"))
    tool_result = next(f for f in frames if label(f) == "user/tool_result")
    assert tool_result["message"]["content"][0]["content"] == "(Bash completed with no output)"
    assert tool_result["tool_use_result"]["stdout"] == ""
    meta = tool_result["tool_result_meta"][0]
    assert meta["permission_decision"] == {"decision": "accept", "source": "user_temporary"}
    result = frames[-1]
    assert result["result"] == "TOOL RESULT SEEN: (Bash completed with no output)"
    assert result["num_turns"] == 2
    assert result["total_cost_usd"] == pytest.approx(0.0002)
    assert (work / "hi.txt").read_text() == "hi\n"

    cli.user("[[bash:echo no > no.txt]]")
    request = cli.expect(is_can_use_tool)
    cli.answer(request["request_id"], {"behavior": "deny", "message": "user said no"})
    frames = cli.until(is_type("result"))
    tool_result = next(f for f in frames if label(f) == "user/tool_result")
    block = tool_result["message"]["content"][0]
    assert (block["content"], block["is_error"]) == ("user said no", True)
    assert tool_result["tool_use_result"] == "Error: user said no"
    assert tool_result["tool_result_meta"][0]["non_execution_kind"] == "permission-rule"
    result = frames[-1]
    assert result["subtype"] == "success"
    assert result["result"] == "TOOL RESULT SEEN: user said no"
    assert [d["tool_name"] for d in result["permission_denials"]] == ["Bash"]
    assert result["result_index"] == 1
    assert not (work / "no.txt").exists()
    assert cli.finish() == 0


def test_queued_messages_run_in_order_with_lifecycle(spawn: Spawn) -> None:
    cli = spawn(PARTIAL)
    first, second = cli.user("first queued message"), cli.user("second queued message")
    results = [cli.result(), cli.result()]
    assert cli.finish() == 0
    assert [r["user_message_uuid"] for r in results] == [first, second]
    assert [r["result"] for r in results] == [
        "You said: first queued message", "You said: second queued message"
    ]  # fmt: skip
    assert [r["result_index"] for r in results] == [0, 1]
    assert [r["total_cost_usd"] for r in results] == pytest.approx([0.0001, 0.0002])
    for message_uuid in (first, second):
        states = [
            f["state"]
            for f in cli.seen
            if f["type"] == "command_lifecycle" and f["command_uuid"] == message_uuid
        ]
        assert states == ["queued", "started", "completed"]
    inits = [f for f in cli.seen if label(f) == "system/init"]
    assert [f["user_message_uuids"] for f in inits] == [[first], [second]]


# ---------------------------------------------------------------------------------------------
# Interrupts, signals, EOF
# ---------------------------------------------------------------------------------------------


def is_ack(request_id: str) -> Predicate:
    return lambda f: (
        f.get("type") == "control_response" and (f["response"]["request_id"] == request_id)
    )


def test_interrupt_mid_stream_then_queued_message_runs(spawn: Spawn) -> None:
    cli = spawn(PARTIAL)
    slow = cli.user("[[slow:40]]")
    for _ in range(3):
        cli.expect(is_event("content_block_delta"))
    queued = cli.user("after interrupt")
    cli.expect(lambda f: f.get("command_uuid") == queued)
    request_id = cli.control("interrupt")
    ack = cli.expect(is_ack(request_id))
    assert ack["response"] == {
        "subtype": "success", "request_id": request_id, "response": {"still_queued": [queued]}
    }  # fmt: skip
    frames = cli.until(is_type("result"))
    assert [label(f) for f in frames] == [
        "assistant",
        "user/text",
        "stream_event/content_block_stop",
        "stream_event/message_delta",
        "stream_event/message_stop",
        "result/error_during_execution",
    ]
    partial_text = frames[0]["message"]["content"][0]["text"]
    assert partial_text.startswith("tick 0 tick 1 tick 2 ")
    assert frames[0]["aborted"] is True
    assert frames[1]["message"]["content"] == [
        {"type": "text", "text": "[Request interrupted by user]"}
    ]
    assert frames[3]["event"]["delta"]["stop_reason"] is None
    msg_id = frames[0]["message"]["id"]
    assert frames[4]["abandoned_blocks"] == {"api_message_id": msg_id, "from_block_index": 1}
    result = frames[-1]
    assert (result["is_error"], result["terminal_reason"]) == (True, "aborted_streaming")
    assert result["stop_reason"] is None
    assert result["errors"][0].startswith("[ede_diagnostic]")
    assert result["user_message_uuid"] == slow
    lifecycle = cli.expect(lambda f: f.get("command_uuid") == slow)
    assert lifecycle["state"] == "cancelled"
    after = cli.result()
    assert (after["result"], after["user_message_uuid"]) == ("You said: after interrupt", queued)
    assert cli.finish() == 0


def test_interrupt_while_can_use_tool_pending(spawn: Spawn, work: Path) -> None:
    cli = spawn(PARTIAL, *STDIO)
    cli.user("[[bash:echo x > x.txt]]")
    request = cli.expect(is_can_use_tool)
    request_id = cli.control("interrupt")
    frames = cli.until(is_type("result"))
    assert [label(f) for f in frames] == [
        "control_cancel_request",
        "control_response",
        "user/tool_result",
        "user/text",
        "result/error_during_execution",
    ]
    assert frames[0]["request_id"] == request["request_id"]
    assert frames[1]["response"]["request_id"] == request_id
    refusal = frames[2]
    assert refusal["message"]["content"][0]["content"].startswith(
        "The user doesn't want to proceed with this tool use."
    )
    assert refusal["tool_result_meta"][0]["non_execution_kind"] == "user-rejected"
    assert (
        frames[3]["message"]["content"][0]["text"] == "[Request interrupted by user for tool use]"
    )
    result = frames[-1]
    assert (result["terminal_reason"], result["stop_reason"]) == ("aborted_tools", "tool_use")
    assert [d["tool_name"] for d in result["permission_denials"]] == ["Bash"]
    cli.answer(request["request_id"], {"behavior": "allow", "updatedInput": {}})  # late: ignored
    assert cli.finish() == 1
    assert not (work / "x.txt").exists()


def test_interrupt_when_idle_is_just_acked(spawn: Spawn) -> None:
    cli = spawn(PARTIAL)
    request_id = cli.control("interrupt")
    cli.expect(is_ack(request_id))
    assert cli.finish() == 0
    assert [label(f) for f in cli.seen] == ["control_response"]


def test_deny_with_interrupt_stops_the_turn(spawn: Spawn) -> None:
    cli = spawn(*STDIO)
    cli.user("[[bash:echo y > y.txt]]")
    request = cli.expect(is_can_use_tool)
    cli.answer(request["request_id"], {"behavior": "deny", "message": "no", "interrupt": True})
    frames = cli.until(is_type("result"))
    assert [label(f) for f in frames] == [
        "user/tool_result",
        "user/text",
        "result/error_during_execution",
    ]
    assert frames[-1]["terminal_reason"] == "aborted_tools"
    assert cli.finish() == 1


def test_eof_fails_pending_permission_and_turn_goes_on(spawn: Spawn) -> None:
    cli = spawn(*STDIO)
    cli.user("[[bash:echo z > z.txt]]")
    cli.expect(is_can_use_tool)
    cli.close_stdin()
    frames = cli.until(is_type("result"))
    tool_result = next(f for f in frames if label(f) == "user/tool_result")
    expected = (
        "Tool permission request failed: AbortError: Tool permission stream closed before "
        "response received"
    )
    assert tool_result["message"]["content"][0]["content"] == expected
    assert frames[-1]["subtype"] == "success"
    assert frames[-1]["result"] == f"TOOL RESULT SEEN: {expected}"
    assert cli.proc.wait(timeout=TIMEOUT_S) == 0


@pytest.mark.parametrize(("prompt", "code"), [(None, 0), ("hi", 0), ("[[error:500]]", 1)])
def test_eof_exit_code_follows_last_result(spawn: Spawn, prompt: str | None, code: int) -> None:
    cli = spawn(PARTIAL)
    if prompt is not None:
        cli.user(prompt)
    assert cli.finish() == code


def test_api_error_result(spawn: Spawn) -> None:
    cli = spawn()
    cli.user("[[error:400]]")
    frames = cli.until(is_type("result"))
    assistant, result = frames[-2], frames[-1]
    assert assistant["message"]["model"] == "<synthetic>"
    assert assistant["is_api_error_message"] is True
    assert assistant["api_error_status"] == 400
    assert assistant["message"]["content"][0]["text"].startswith("API Error: 400")
    assert (result["subtype"], result["is_error"]) == ("success", True)
    assert (result["terminal_reason"], result["api_error_status"]) == ("api_error", 400)
    assert result["total_cost_usd"] == 0
    assert cli.finish() == 1


def test_sigterm_exits_143_without_result(spawn: Spawn) -> None:
    cli = spawn(PARTIAL)
    cli.user("[[slow:100]]")
    cli.expect(is_event("content_block_delta"))
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.proc.wait(timeout=TIMEOUT_S) == 143
    assert not any(f["type"] == "result" for f in cli.drain())


def test_sigint_interrupts_writes_result_and_exits_0(spawn: Spawn) -> None:
    cli = spawn(PARTIAL)
    cli.user("[[slow:100]]")
    cli.expect(is_event("content_block_delta"))
    cli.proc.send_signal(signal.SIGINT)
    result = cli.result()
    assert result["terminal_reason"] == "aborted_streaming"
    assert cli.proc.wait(timeout=TIMEOUT_S) == 0


def test_crash_directive_exits_without_result(spawn: Spawn) -> None:
    cli = spawn(PARTIAL)
    cli.user("[[crash:3]]")
    assert cli.proc.wait(timeout=TIMEOUT_S) == 3
    rest = cli.drain()
    assert [label(f) for f in rest][-1] == "stream_event/content_block_delta"


# ---------------------------------------------------------------------------------------------
# Bad stdin (reference section 7)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "this is not json",
            "Error parsing streaming input line (type=unknown, 16 chars): SyntaxError",
        ),
        ('{"type":"user"}', "Error: Expected message role 'user', got 'undefined'"),
        (
            '{"type":"user","message":{"role":"assistant","content":"x"}}',
            "Error: Expected message role 'user', got 'assistant'",
        ),
        (
            '{"type":"control_request","request_id":"r1"}',
            "Error: Missing request on control_request",
        ),
    ],
)
def test_bad_stdin_line_kills_the_process(spawn: Spawn, line: str, message: str) -> None:
    cli = spawn()
    cli.send_raw(line)
    assert cli.proc.wait(timeout=TIMEOUT_S) == 1
    cli.drain()
    assert cli.stderr.decode().strip() == message


def test_ignored_stdin_lines_keep_the_process_usable(spawn: Spawn) -> None:
    cli = spawn()
    for line in (
        "",
        "[1, 2]",
        '{"type":"mystery"}',
        '{"type":"user","message":{"role":"user","content":123}}',
        '{"type":"control_response","response":{"subtype":"success","request_id":"nope"}}',
    ):
        cli.send_raw(line)
    cli.send({"type": "user", "message": {"role": "user", "content": [
        {"type": "text", "text": "still "}, {"type": "text", "text": "alive"}
    ]}})  # fmt: skip
    assert cli.result()["result"] == "You said: still alive"
    assert cli.finish() == 0
    assert cli.stderr == b""


# ---------------------------------------------------------------------------------------------
# Sessions and resume
# ---------------------------------------------------------------------------------------------


def test_resume_unknown_session(spawn: Spawn) -> None:
    code, frames, stderr = run_once(spawn, "--resume=4b1d2a4e-0000-4000-8000-000000000000")
    message = "No conversation found with session ID: 4b1d2a4e-0000-4000-8000-000000000000"
    assert code == 1
    assert stderr.strip() == message
    [result] = frames
    assert (result["type"], result["subtype"]) == ("result", "error_during_execution")
    assert (result["is_error"], result["num_turns"], result["errors"]) == (True, 0, [message])


def test_session_id_in_use(spawn: Spawn) -> None:
    session_id = str(uuid.uuid4())
    code, frames, _ = run_once(spawn, f"--session-id={session_id}", stdin=user_line("hi"))
    assert code == 0
    assert frames[-1]["session_id"] == session_id
    code, _, stderr = run_once(spawn, "--session-id", session_id, stdin=user_line("again"))
    assert code == 1
    assert stderr.strip() == f"Error: Session ID {session_id} is already in use."


def user_line(text: str) -> str:
    return json.dumps({"type": "user", "message": {"role": "user", "content": text}}) + "\n"


def test_resume_restores_cost_and_model(spawn: Spawn) -> None:
    cli = spawn()
    request_id = cli.control("set_model", model="claude-haiku-4-5")
    cli.expect(is_ack(request_id))
    cli.user("one")
    first = cli.result()
    assert cli.finish() == 0
    session_id = first["session_id"]
    code, frames, _ = run_once(spawn, "--resume", session_id, stdin=user_line("two"))
    assert code == 0
    init, result = frames[0], frames[-1]
    assert (init["session_id"], init["model"]) == (session_id, "claude-haiku-4-5")
    assert result["session_id"] == session_id
    assert result["total_cost_usd"] == pytest.approx(0.0002)
    assert result["result_index"] == 0


# ---------------------------------------------------------------------------------------------
# Control requests
# ---------------------------------------------------------------------------------------------


def test_control_requests(spawn: Spawn) -> None:
    cli = spawn()
    ack = cli.expect(is_ack(cli.control("initialize", hooks=None)))["response"]["response"]
    assert ack["claude_code_version"] == "2.1.329"
    assert (ack["current_permission_mode"], ack["session_state"]) == ("default", "idle")
    assert ack["pid"] == cli.proc.pid
    assert ack["commands"]
    assert ack["models"]

    request_id = cli.control("set_permission_mode", mode="acceptEdits")
    assert cli.expect(is_ack(request_id))["response"]["response"] == {"mode": "acceptEdits"}
    status = cli.expect(is_type("system", "status"))
    assert (status["status"], status["permissionMode"]) == (None, "acceptEdits")

    request_id = cli.control("set_model", model="claude-haiku-4-5")
    assert cli.expect(is_ack(request_id))["response"]["response"] == {"model": "claude-haiku-4-5"}
    replay = cli.expect(is_type("user"))
    assert replay["isReplay"] is True
    assert replay["message"]["content"] == (
        "<local-command-stdout>Set model to claude-haiku-4-5</local-command-stdout>"
    )

    request_id = cli.control("get_everything")
    assert cli.expect(is_ack(request_id))["response"] == {
        "subtype": "error",
        "request_id": request_id,
        "error": "Unsupported control request subtype: get_everything",
        "error_code": "unsupported_request",
    }
    cli.user("hi")
    init = cli.expect(is_type("system", "init"))
    assert (init["model"], init["permissionMode"]) == ("claude-haiku-4-5", "acceptEdits")
    assert cli.finish() == 0


# ---------------------------------------------------------------------------------------------
# Write / Edit / AskUserQuestion and permission updates
# ---------------------------------------------------------------------------------------------


def test_write_allow_set_mode_then_edit_auto_accepted(spawn: Spawn, work: Path) -> None:
    (work / "note.txt").write_text("a\nhello\nb\n")
    cli = spawn(PARTIAL, *STDIO)
    cli.user("[[write:new.txt|line one\n]]")
    request = cli.expect(is_can_use_tool)["request"]
    assert request["input"] == {"file_path": str(work / "new.txt"), "content": "line one\n"}
    assert request["description"] == "new.txt"
    suggestions = request["permission_suggestions"]
    assert suggestions == [{"type": "setMode", "mode": "acceptEdits", "destination": "session"}]
    answer = {"behavior": "allow", "updatedInput": request["input"]}
    cli.answer(cli.seen[-1]["request_id"], answer | {"updatedPermissions": suggestions})
    frames = cli.until(is_type("result"))
    assert frames[0]["permissionMode"] == "acceptEdits"
    written = next(f for f in frames if label(f) == "user/tool_result")["tool_use_result"]
    assert (written["type"], written["originalFile"], written["structuredPatch"]) == (
        "create", None, []
    )  # fmt: skip
    assert (work / "new.txt").read_text() == "line one\n"

    cli.user("[[edit:note.txt|hello|bye]]")
    frames = cli.until(is_type("result"))
    assert not any(is_can_use_tool(f) for f in frames)
    edited = next(f for f in frames if label(f) == "user/tool_result")
    decision = edited["tool_result_meta"][0]["permission_decision"]
    assert decision == {"decision": "accept", "source": "config", "reason_type": "mode"}
    patch = edited["tool_use_result"]["structuredPatch"]
    assert patch == [{"oldStart": 1, "oldLines": 3, "newStart": 1, "newLines": 3,
                      "lines": [" a", "-hello", "+bye", " b"]}]  # fmt: skip
    assert (work / "note.txt").read_text() == "a\nbye\nb\n"
    assert cli.finish() == 0


def test_add_rules_auto_allows_later_matching_calls(spawn: Spawn) -> None:
    cli = spawn(*STDIO)
    cli.user("[[bash:echo one > one.txt]]")
    request = cli.expect(is_can_use_tool)
    rules = request["request"]["permission_suggestions"][:1]
    answer = {"behavior": "allow", "updatedInput": request["request"]["input"]}
    cli.answer(request["request_id"], answer | {"updatedPermissions": rules})
    cli.result()
    cli.user("[[bash:echo one more]]")
    frames = cli.until(is_type("result"))
    assert not any(is_can_use_tool(f) for f in frames)
    meta = next(f for f in frames if label(f) == "user/tool_result")["tool_result_meta"][0]
    assert meta["permission_decision"]["source"] == "config"
    assert frames[-1]["result"] == "TOOL RESULT SEEN: one more"
    assert cli.finish() == 0


def test_permission_error_response_continues_the_turn(spawn: Spawn) -> None:
    cli = spawn(*STDIO)
    cli.user("[[bash:echo e > e.txt]]")
    request_id = cli.expect(is_can_use_tool)["request_id"]
    error = {"subtype": "error", "request_id": request_id, "error": "boom"}
    cli.send({"type": "control_response", "response": error})
    result = cli.result()
    assert result["result"] == "TOOL RESULT SEEN: Tool permission request failed: Error: boom"
    assert cli.finish() == 0


def test_ask_user_question(spawn: Spawn) -> None:
    cli = spawn(*STDIO)
    cli.user("[[ask:Which color?|Red,Blue]]")
    assert "AskUserQuestion" in cli.expect(is_type("system", "init"))["tools"]
    request = cli.expect(is_can_use_tool)
    body = request["request"]
    assert (body["tool_name"], body["requires_user_interaction"]) == ("AskUserQuestion", True)
    question = body["input"]["questions"][0]
    assert [o["label"] for o in question["options"]] == ["Red", "Blue"]
    answers = {"answers": {"Which color?": "Blue"}}
    cli.answer(
        request["request_id"], {"behavior": "allow", "updatedInput": body["input"] | answers}
    )
    assert cli.result()["result"] == (
        'TOOL RESULT SEEN: Your questions have been answered: "Which color?"="Blue". '
        "You can now continue with these answers in mind."
    )
    assert cli.finish() == 0


def test_without_prompt_tool_permission_is_denied(spawn: Spawn, work: Path) -> None:
    cli = spawn()
    cli.user("[[write:denied.txt|nope]]")
    frames = cli.until(is_type("result"))
    denied = next(f for f in frames if label(f) == "system/permission_denied")
    assert denied["tool_name"] == "Write"
    assert frames[-1]["subtype"] == "success"
    assert [d["tool_name"] for d in frames[-1]["permission_denials"]] == ["Write"]
    assert not (work / "denied.txt").exists()
    assert cli.finish() == 0


# ---------------------------------------------------------------------------------------------
# Knobs
# ---------------------------------------------------------------------------------------------


def test_stamp_deltas_carry_monotonic_ns(spawn: Spawn) -> None:
    cli = spawn(PARTIAL)
    cli.user("[[stamp:20:0]]")
    frames = cli.until(is_type("result"))
    deltas = [f for f in frames if label(f) == "stream_event/content_block_delta"]
    stamps = [int(f["event"]["delta"]["text"].rstrip(";")) for f in deltas]
    assert len(stamps) == 20
    assert stamps == sorted(stamps)
    assert all(f["api_message_id"] == deltas[0]["api_message_id"] for f in deltas)
    assert cli.finish() == 0


def test_log_knob_records_argv_and_stdin(spawn: Spawn, tmp_path: Path) -> None:
    log = tmp_path / "stdin.log"
    cli = spawn(PARTIAL, env={"FAKE_CLAUDE_LOG": str(log)})
    cli.user("logged", tagged=False)
    cli.result()
    assert cli.finish() == 0
    first, second = log.read_text().splitlines()
    assert json.loads(first) == {"argv": [*BASE_FLAGS, PARTIAL]}
    assert json.loads(second)["message"]["content"] == "logged"


def test_sleep_is_interruptible(spawn: Spawn) -> None:
    cli = spawn()
    cli.user("[[sleep:30]]")
    cli.expect(is_type("system", "init"))
    cli.expect(is_ack(cli.control("interrupt")))
    frames = cli.until(is_type("result"))
    assert [label(f) for f in frames] == ["user/text", "result/error_during_execution"]
    assert cli.finish() == 1
