"""Processes and plumbing for the benchmark: temp layout, CPU pinning, child processes, HTTP.

Every child (daemon, relay, client, profiler) is started by an async context manager whose
``finally`` stops it: a polite signal, a bounded wait, then SIGKILL for it and whatever it left
behind (a daemon's fake CLI runs in its own process group). Everything listens on 127.0.0.1,
port 0; all state, and the fake CLI's HOME/TMPDIR/CLAUDE_CONFIG_DIR, live in one temp dir.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import IO, Any, Final

import attrs
import h11
import trio

BENCH: Final = Path(__file__).resolve().parent
TESTS: Final = BENCH.parent
FAKE_CLAUDE: Final = TESTS / "fake_claude.py"
PYTHON: Final = sys.executable
STOP_GRACE: Final = 15.0  # seconds a child gets to exit after SIGTERM/SIGINT
#: children that ignored their stop signal and were killed (``run.py`` reports them)
KILLED: list[str] = []


# -- layout and pinning -----------------------------------------------------------------------


@attrs.frozen
class Layout:
    """The temp dir: the daemon's state, the sessions' work dir, the fake CLI's home and logs."""

    root: Path
    cli_cpu: int

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def home(self) -> Path:
        return self.root / "claude-home"

    @property
    def wrapper(self) -> Path:
        return self.root / "claude"

    def state(self, name: str) -> Path:
        return self.root / f"state-{name}"

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def cli_env(self) -> dict[str, str]:
        """What the fake CLI needs (as ``tests/conftest.py`` sets it), for a child's env."""
        return {
            "HOME": str(self.home),
            "CLAUDE_CONFIG_DIR": str(self.home / ".claude"),
            "TMPDIR": str(self.home / "tmp"),
        }

    def create(self) -> Layout:
        for path in (self.work, self.home / "tmp", self.home / ".claude"):
            path.mkdir(parents=True, exist_ok=True)
        self.wrapper.write_text(_wrapper_source(self.cli_cpu))
        self.wrapper.chmod(0o755)
        return self


def _wrapper_source(cpu: int) -> str:
    """The ``claude`` the daemon and the relay run: pin to ``cpu``, then exec the fake CLI."""
    return (
        f"#!{PYTHON}\n"
        "import os, sys\n"
        f"if {cpu} >= 0 and hasattr(os, 'sched_setaffinity'):\n"
        f"    os.sched_setaffinity(0, {{{cpu}}})\n"
        f"os.execv({PYTHON!r}, [{PYTHON!r}, {str(FAKE_CLAUDE)!r}, *sys.argv[1:]])\n"
    )


def can_pin() -> bool:
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2


def pin(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid`` (0: this process) to ``cpu``; no-op when ``cpu < 0``."""
    if cpu < 0 or not hasattr(os, "sched_setaffinity"):
        return
    tasks = Path(f"/proc/{pid or os.getpid()}/task")
    tids = [int(t.name) for t in tasks.iterdir()] if tasks.exists() else [pid]
    for tid in tids:
        with suppress(ProcessLookupError):
            os.sched_setaffinity(tid, {cpu})


# -- /proc ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_ticks() -> dict[str, tuple[int, int]]:
    """``{"cpu0": (busy, total), ...}`` jiffies from /proc/stat (busy: not idle nor iowait)."""
    ticks = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            values = [int(field) for field in fields[:8]]
            total = sum(values)
            ticks[name] = (total - values[3] - values[4], total)
    return ticks


class CpuMeter:
    """Over a window: one process's CPU use (% of one core), and how busy each CPU was."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._cpu = self._wall = 0.0
        self._ticks: dict[str, tuple[int, int]] = {}

    def start(self) -> None:
        self._cpu, self._wall = cpu_seconds(self.pid), trio.current_time()
        self._ticks = cpu_ticks()

    def seconds(self) -> float:
        return cpu_seconds(self.pid) - self._cpu

    def percent(self) -> float:
        wall = trio.current_time() - self._wall
        return 100 * self.seconds() / wall if wall > 0 else float("nan")

    def busy(self) -> dict[str, float]:
        """Per CPU, the share of the window it was busy (any process), in %."""
        result = {}
        for name, (busy, total) in cpu_ticks().items():
            busy0, total0 = self._ticks.get(name, (busy, total))
            result[name] = 100 * (busy - busy0) / (total - total0) if total > total0 else 0.0
        return result


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (read from /proc before ``pid`` goes away)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


# -- child processes --------------------------------------------------------------------------


@asynccontextmanager
async def child(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: IO[Any] | int | None = None,
    stop_signal: int = signal.SIGTERM,
    cwd: Path | None = None,
) -> AsyncIterator[trio.Process]:
    """Run ``argv``; on exit: ``stop_signal``, a bounded wait, then SIGKILL it and its children."""
    process = await trio.lowlevel.open_process(
        list(argv),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            await _stop(process, stop_signal, " ".join(Path(arg).name for arg in argv[:4]))


async def _stop(process: trio.Process, stop_signal: int, label: str) -> None:
    leftovers = descendants(process.pid)
    if process.returncode is None:
        with suppress(ProcessLookupError):
            process.send_signal(stop_signal)
        with trio.move_on_after(STOP_GRACE):
            await process.wait()
    if process.returncode is None:
        if stop_signal != signal.SIGKILL:
            KILLED.append(
                f"`{label}` (pid {process.pid}) did not exit within {STOP_GRACE:g} s of "
                f"{signal.Signals(stop_signal).name}; killed"
            )
        process.kill()
        await process.wait()
    for pid in leftovers:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            await stream.aclose()


class LineReader:
    """Lines from a child's stdout."""

    def __init__(self, stream: trio.abc.ReceiveStream | None) -> None:
        assert stream is not None
        self._stream = stream
        self._buffer = b""

    async def line(self) -> str:
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some(65536)
            if not data:
                raise EOFError("the child closed its stdout")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()


async def wait_for_file(
    path: Path, process: trio.Process, timeout: float, poll: float = 0.02
) -> str:
    with trio.fail_after(timeout):
        while not path.exists():
            if process.returncode is not None:
                raise RuntimeError(f"the child exited with code {process.returncode}")
            await trio.sleep(poll)
    return path.read_text()


# -- HTTP -------------------------------------------------------------------------------------


async def http_call(
    port: int, token: str, method: str, path: str, body: Any = None, timeout: float = 15.0
) -> tuple[int, Any]:
    """One HTTP/1.1 request to 127.0.0.1:``port`` with the daemon's headers; JSON in and out."""
    payload = json.dumps(body).encode() if body is not None else b""
    headers = [
        ("Host", f"127.0.0.1:{port}"),
        ("Authorization", f"Bearer {token}"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(payload))),
        ("Connection", "close"),
    ]
    conn = h11.Connection(h11.CLIENT)
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            out = conn.send(h11.Request(method=method, target=path, headers=headers)) or b""
            if payload:
                out += conn.send(h11.Data(data=payload)) or b""
            await stream.send_all(out + (conn.send(h11.EndOfMessage()) or b""))
            return await _read_response(conn, stream)


async def _read_response(conn: h11.Connection, stream: trio.SocketStream) -> tuple[int, Any]:
    status, body = 0, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, json.loads(body or b"null")


def expect(status: int, reply: Any, wanted: int) -> Any:
    if status != wanted:
        raise RuntimeError(f"HTTP {status} (wanted {wanted}): {reply}")
    return reply


# -- the client process -----------------------------------------------------------------------


def client_argv(mode: str, port: int, path: str, cpu: int, **options: Any) -> list[str]:
    argv = [PYTHON, str(BENCH / "bench_client.py"), mode, "--port", str(port), "--path", path]
    argv += ["--cpu", str(cpu)]
    for name, value in options.items():
        if value not in (None, ""):  # --name=value: an epoch may start with "-"
            argv.append(f"--{name.replace('_', '-')}={value}")
    return argv


Callback = Callable[[], Awaitable[None]]


async def _expect_line(lines: LineReader, wanted: str) -> None:
    if (line := await lines.line()) != wanted:
        raise RuntimeError(f"the client said {line!r}, not {wanted!r}")


async def run_client(
    argv: Sequence[str],
    timeout: float,
    log: Path,
    on_ready: Callback | None = None,
    on_done: Callback | None = None,
) -> dict[str, Any]:
    """Run the client and return its JSON. Live mode: ``on_ready`` once its streams are open,
    ``on_done`` as soon as it stops receiving (before it analyses what it got)."""
    with log.open("ab") as errors:
        async with child(argv, stderr=errors, stop_signal=signal.SIGKILL) as process:
            lines = LineReader(process.stdout)
            try:
                with trio.fail_after(timeout):
                    if on_ready is not None:
                        await _expect_line(lines, "ready")
                        await on_ready()
                        await _expect_line(lines, "done")
                    if on_done is not None:
                        await on_done()
                    result: dict[str, Any] = json.loads(await lines.line())
            except (EOFError, trio.TooSlowError) as exc:
                tail = log.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"the client failed ({exc!r}): {tail}") from exc
            await process.wait()
    return result
