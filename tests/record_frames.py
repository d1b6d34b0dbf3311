"""Record real Claude Code CLI stream-json frames for fixed scenarios, against MockAnthropic.

Usage::

    python tests/record_frames.py --claude PATH --out tests/data/recorded/2.1.329 \\
        [--scenario NAME ...]
    # a new release: install it from npm, record every scenario into
    # tests/data/recorded/<version>/, then print how its frames differ from a pinned one
    python tests/record_frames.py --version 2.1.340 --diff-against 2.1.329
    # compare two recordings already on disk (no CLI runs)
    python tests/record_frames.py --diff-only 2.1.197 2.1.329

The diff is structural (``tests/contract.py``): frame kinds and their order, key sets and JSON
types; never ids, timestamps, costs or text. ``--fail-on-diff`` exits 2 when there is one.

For each scenario the CLI runs as::

    claude -p --input-format stream-json --output-format stream-json --verbose \\
           --include-partial-messages --permission-prompt-tool stdio

in a fresh ``root/{home,work,tmp}`` with the offline environment (no network but the loopback
mock).  It writes

* ``OUT/<scenario>.jsonl`` - every stdout line that starts with ``{``, then a final
  ``{"type":"_recorder_exit","code":N}`` with the process exit code;
* ``OUT/<scenario>.stdin.jsonl`` - every line the recorder wrote to the CLI's stdin.

Temp paths are replaced by ``/WORK``, ``/HOME`` and ``/TMP`` (and the project slug derived from
the work dir by ``-WORK``; the CLI's pid in its socket path by ``PID``) so the files are stable
enough to commit.  Each scenario ends with
stdin EOF; every process started is killed on the way out, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contract
from claude_install import InstallError, install
from mock_anthropic import MockAnthropic

Frame = dict[str, Any]
FramePredicate = Callable[[Frame], bool]

WAIT_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 30.0
KILL_GRACE_S = 5.0
CLI_FLAGS = (
    "-p",
    "--input-format",
    "stream-json",
    "--output-format",
    "stream-json",
    "--verbose",
    "--include-partial-messages",
    "--permission-prompt-tool",
    "stdio",
)


class ScenarioError(RuntimeError):
    """A scenario did not see the frames it waited for."""


def offline_env(root: Path, base_url: str) -> dict[str, str]:
    """The environment of reference section 2: temp HOME/config/TMPDIR, mock API, no traffic."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(root / "home"),
        "CLAUDE_CONFIG_DIR": str(root / "home" / ".claude"),
        "TMPDIR": str(root / "tmp"),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "sk-test",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }


# ---------------------------------------------------------------------------------------------
# One CLI process
# ---------------------------------------------------------------------------------------------


@dataclass
class CliSession:
    """A running CLI with a stdout reader thread, a stderr drain and a locked stdin writer."""

    proc: subprocess.Popen[bytes]
    stdout_lines: list[str] = field(default_factory=list)
    stdin_lines: list[str] = field(default_factory=list)
    stderr_chunks: list[bytes] = field(default_factory=list)
    _frames: queue.Queue[Frame | None] = field(default_factory=queue.Queue)
    _write_lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _request_counter: int = 0
    seen: list[Frame] = field(default_factory=list)

    @classmethod
    def spawn(cls, claude: Path, cwd: Path, env: Mapping[str, str]) -> CliSession:
        proc = subprocess.Popen(
            [str(claude), *CLI_FLAGS],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        session = cls(proc)
        session._start_thread(session._read_stdout, "stdout")
        session._start_thread(session._drain_stderr, "stderr")
        return session

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=f"cli-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _read_stdout(self) -> None:
        stream: IO[bytes] | None = self.proc.stdout
        assert stream is not None
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if not line.startswith("{"):
                continue
            self.stdout_lines.append(line)
            try:
                self._frames.put(json.loads(line))
            except ValueError:
                continue
        self._frames.put(None)

    def _drain_stderr(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        for chunk in iter(lambda: stream.read(4096), b""):
            self.stderr_chunks.append(chunk)

    # -- writing ---------------------------------------------------------------------------------

    def send(self, message: Mapping[str, Any]) -> None:
        line = json.dumps(message, separators=(",", ":"))
        stdin = self.proc.stdin
        assert stdin is not None
        with self._write_lock:
            self.stdin_lines.append(line)
            stdin.write(line.encode() + b"\n")
            stdin.flush()

    def send_user(self, text: str) -> str:
        message_uuid = str(uuid.uuid4())
        self.send(
            {
                "type": "user",
                "message": {"role": "user", "content": text},
                "parent_tool_use_id": None,
                "session_id": "default",
                "uuid": message_uuid,
            }
        )
        return message_uuid

    def send_control(self, request: Mapping[str, Any]) -> str:
        self._request_counter += 1
        request_id = f"req_{self._request_counter}_{uuid.uuid4().hex[:8]}"
        self.send({"type": "control_request", "request_id": request_id, "request": dict(request)})
        return request_id

    def answer(self, request_id: str, response: Mapping[str, Any]) -> None:
        self.send(
            {
                "type": "control_response",
                "response": {
                    "subtype": "success",
                    "request_id": request_id,
                    "response": dict(response),
                },
            }
        )

    def close_stdin(self) -> None:
        stdin = self.proc.stdin
        with self._write_lock:
            if stdin is not None and not stdin.closed:
                with contextlib.suppress(BrokenPipeError):
                    stdin.close()

    # -- reading ---------------------------------------------------------------------------------

    def expect(
        self, predicate: FramePredicate, what: str, timeout: float = WAIT_TIMEOUT_S
    ) -> Frame:
        """Consume frames until one matches ``predicate``; raise ScenarioError on timeout/EOF."""
        while True:
            try:
                frame = self._frames.get(timeout=timeout)
            except queue.Empty:
                raise ScenarioError(f"timed out after {timeout}s waiting for {what}") from None
            if frame is None:
                self._frames.put(None)
                raise ScenarioError(f"stdout closed while waiting for {what}")
            self.seen.append(frame)
            if predicate(frame):
                return frame

    def expect_result(self) -> Frame:
        return self.expect(lambda f: f.get("type") == "result", "result")

    def expect_can_use_tool(self, tool_name: str) -> Frame:
        return self.expect(
            lambda f: (
                f.get("type") == "control_request"
                and f.get("request", {}).get("subtype") == "can_use_tool"
                and f.get("request", {}).get("tool_name") == tool_name
            ),
            f"can_use_tool {tool_name}",
        )

    def expect_ack(self, request_id: str) -> Frame:
        return self.expect(
            lambda f: (
                f.get("type") == "control_response"
                and f.get("response", {}).get("request_id") == request_id
            ),
            f"control_response {request_id}",
        )

    # -- shutdown --------------------------------------------------------------------------------

    def finish(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        """Close stdin and wait for exit; escalate to SIGTERM then SIGKILL. Returns the code."""
        self.close_stdin()
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = self.kill()
        for thread in self._threads:
            thread.join(timeout=KILL_GRACE_S)
        return code

    def kill(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                return self.proc.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.wait()


# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------


def _allow(session: CliSession, request: Frame, extra: Mapping[str, Any] | None = None) -> None:
    tool_input = dict(request["request"]["input"]) | dict(extra or {})
    session.answer(request["request_id"], {"behavior": "allow", "updatedInput": tool_input})


def _is_text_delta(frame: Frame) -> bool:
    event = frame.get("event", {}) if frame.get("type") == "stream_event" else {}
    return bool(
        event.get("type") == "content_block_delta"
        and event.get("delta", {}).get("type") == "text_delta"
    )


def scenario_text(s: CliSession, work: Path) -> None:
    s.send_user("hello from the recorder")
    s.expect_result()


def scenario_initialize(s: CliSession, work: Path) -> None:
    s.expect_ack(s.send_control({"subtype": "initialize", "hooks": None}))
    s.send_user("hello after initialize")
    s.expect_result()


# A read-only command such as ``echo hi`` is auto-allowed by the CLI (no can_use_tool), so the
# permission scenarios use an output redirection into the work dir, which always asks.


def scenario_bash_readonly(s: CliSession, work: Path) -> None:
    s.send_user("[[bash:echo hi]]")
    s.expect_result()


def scenario_bash_allow(s: CliSession, work: Path) -> None:
    s.send_user("[[bash:echo hi > hi.txt]]")
    _allow(s, s.expect_can_use_tool("Bash"))
    s.expect_result()


def scenario_bash_deny(s: CliSession, work: Path) -> None:
    s.send_user("[[bash:echo hi > hi.txt]]")
    request = s.expect_can_use_tool("Bash")
    s.answer(request["request_id"], {"behavior": "deny", "message": "user said no"})
    s.expect_result()


def scenario_interrupt_stream(s: CliSession, work: Path) -> None:
    s.send_user("[[slow:40]]")
    for _ in range(3):
        s.expect(_is_text_delta, "text_delta")
    request_id = s.send_control({"subtype": "interrupt"})
    s.expect_ack(request_id)
    s.expect_result()


def scenario_interrupt_permission(s: CliSession, work: Path) -> None:
    s.send_user("[[bash:echo x > x.txt]]")
    s.expect_can_use_tool("Bash")
    request_id = s.send_control({"subtype": "interrupt"})
    s.expect_ack(request_id)
    s.expect_result()


def scenario_queued(s: CliSession, work: Path) -> None:
    s.send_user("first queued message")
    s.send_user("second queued message")
    s.expect_result()
    s.expect_result()


def scenario_set_mode_model(s: CliSession, work: Path) -> None:
    s.expect_ack(s.send_control({"subtype": "set_permission_mode", "mode": "acceptEdits"}))
    s.expect_ack(s.send_control({"subtype": "set_model", "model": "claude-haiku-4-5"}))
    s.send_user("hello after mode and model change")
    s.expect_result()


def scenario_write_edit(s: CliSession, work: Path) -> None:
    path = work / "note.txt"
    s.send_user(f"[[write:{path}|hello\n]]")
    _allow(s, s.expect_can_use_tool("Write"))
    s.expect_result()
    s.send_user(f"[[edit:{path}|hello|bye]]")
    _allow(s, s.expect_can_use_tool("Edit"))
    s.expect_result()


def scenario_api_error(s: CliSession, work: Path) -> None:
    s.send_user("[[error:400]]")
    s.expect_result()


def scenario_ask(s: CliSession, work: Path) -> None:
    s.send_user("[[ask:Which color?|Red,Blue]]")
    request = s.expect_can_use_tool("AskUserQuestion")
    _allow(s, request, {"answers": {"Which color?": "Blue"}})
    s.expect_result()


Scenario = Callable[[CliSession, Path], None]
SCENARIOS: dict[str, Scenario] = {
    "text": scenario_text,
    "initialize": scenario_initialize,
    "bash_readonly": scenario_bash_readonly,
    "bash_allow": scenario_bash_allow,
    "bash_deny": scenario_bash_deny,
    "interrupt_stream": scenario_interrupt_stream,
    "interrupt_permission": scenario_interrupt_permission,
    "queued": scenario_queued,
    "set_mode_model": scenario_set_mode_model,
    "write_edit": scenario_write_edit,
    "api_error": scenario_api_error,
    "ask": scenario_ask,
}


# ---------------------------------------------------------------------------------------------
# Running and writing
# ---------------------------------------------------------------------------------------------


def project_slug(path: Path) -> str:
    """The CLI's per-project directory name: every non-alphanumeric character becomes ``-``."""
    return "".join(c if c.isalnum() else "-" for c in str(path))


def placeholders(root: Path, base_url: str, pid: int) -> list[tuple[str, str]]:
    """(temp string, placeholder) pairs, longest first so nested paths are replaced first."""
    pairs = {
        f"/cc-socks/{pid}.sock": "/cc-socks/PID.sock",
        str(root / "work"): "/WORK",
        str(root / "home"): "/HOME",
        str(root / "tmp"): "/TMP",
        project_slug(root / "work"): "-WORK",
        base_url: "http://127.0.0.1:MOCK",
    }
    return sorted(pairs.items(), key=lambda kv: len(kv[0]), reverse=True)


def scrub(line: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        line = line.replace(old, new)
    return line


@dataclass(frozen=True)
class Recording:
    name: str
    frames: list[str]
    stdin: list[str]
    exit_code: int
    error: str | None
    stderr: str


def run_scenario(claude: Path, name: str, scenario: Scenario) -> Recording:
    root = Path(tempfile.mkdtemp(prefix=f"rec-{name}-")).resolve()
    for sub in ("home", "work", "tmp"):
        (root / sub).mkdir()
    try:
        with MockAnthropic() as mock:
            session = CliSession.spawn(claude, root / "work", offline_env(root, mock.base_url))
            pairs = placeholders(root, mock.base_url, session.proc.pid)
            error: str | None = None
            try:
                scenario(session, root / "work")
            except (ScenarioError, OSError) as exc:
                error = str(exc)
            finally:
                code = session.finish() if error is None else session.kill()
            stderr = b"".join(session.stderr_chunks).decode("utf-8", "replace")
            exit_line = json.dumps({"type": "_recorder_exit", "code": code}, separators=(",", ":"))
            return Recording(
                name=name,
                frames=[scrub(x, pairs) for x in session.stdout_lines] + [exit_line],
                stdin=[scrub(x, pairs) for x in session.stdin_lines],
                exit_code=code,
                error=error,
                stderr=scrub(stderr, pairs),
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def write_recording(out: Path, recording: Recording) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{recording.name}.jsonl").write_text("\n".join(recording.frames) + "\n", "utf-8")
    (out / f"{recording.name}.stdin.jsonl").write_text(
        "".join(line + "\n" for line in recording.stdin), "utf-8"
    )


CLI_CACHE = Path(__file__).resolve().parent.parent / ".nox" / "claude-cli"


def recorded_dir(name: str) -> Path:
    """A version (``2.1.329``: ``tests/data/recorded/2.1.329``) or a directory path."""
    as_version = contract.RECORDED / name
    return as_version if as_version.is_dir() else Path(name)


def show_diff(old: Path, new: Path, only: list[str] | None = None) -> bool:
    """Print the structural diff of two recording directories; True when they differ."""
    lines = contract.diff_dirs(old, new, only)
    print(f"--- frames of {old}\n+++ frames of {new}")
    print("\n".join(lines) if lines else "no structural difference")
    return bool(lines)


def record(claude: Path, out: Path, names: list[str]) -> int:
    failures = 0
    for name in names:
        recording = run_scenario(claude, name, SCENARIOS[name])
        write_recording(out, recording)
        status = "ok" if recording.error is None else f"FAILED: {recording.error}"
        print(f"{name}: {len(recording.frames)} lines, exit {recording.exit_code}, {status}")
        if recording.stderr.strip():
            print(f"  stderr: {recording.stderr.strip()[:500]}", file=sys.stderr)
        failures += recording.error is not None
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claude", type=Path, help="the CLI binary to record")
    parser.add_argument("--version", help="install this CLI release from npm and record it")
    parser.add_argument("--out", type=Path, help="default with --version: tests/data/recorded/V")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="record only these (repeatable); default: all",
    )
    parser.add_argument("--diff-against", metavar="VERSION_OR_DIR")
    parser.add_argument("--diff-only", nargs=2, metavar=("OLD", "NEW"))
    parser.add_argument("--fail-on-diff", action="store_true")
    args = parser.parse_args(argv)
    if args.diff_only:
        differs = show_diff(recorded_dir(args.diff_only[0]), recorded_dir(args.diff_only[1]))
        return 2 if differs and args.fail_on_diff else 0
    claude = args.claude
    if args.version and claude is None:
        try:
            claude = install(args.version, CLI_CACHE / args.version)
        except (InstallError, subprocess.TimeoutExpired) as exc:
            parser.error(f"cannot install claude {args.version}: {exc}")
    out = args.out or (contract.RECORDED / args.version if args.version else None)
    if claude is None or out is None:
        parser.error("give --claude and --out, or --version")
    names = args.scenario or list(SCENARIOS)
    if record(claude, out, names):
        return 1
    if args.diff_against and show_diff(recorded_dir(args.diff_against), out, names):
        return 2 if args.fail_on_diff else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
