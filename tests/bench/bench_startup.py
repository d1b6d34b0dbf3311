"""Scenario 6's details: what start-up costs by part, and the command line's commands.

* **Bytecode**: an installed package has its modules compiled (pip compiles them at install; an
  editable checkout writes ``__pycache__`` on first import). A machine that sets
  ``PYTHONDONTWRITEBYTECODE`` would make every start of the daemon compile ~120 modules (about
  0.3 s here), so :func:`compile_bytecode` compiles the measured packages first, as an install
  would (into their ``__pycache__``, which git ignores).
* **The CLI commands**, from spawning the process to its exit (``attach``: to its first output,
  the session's snapshot), run as the installed ``sidecode-trio`` script runs them, against the
  daemon holding the idle sessions of scenario 7; each alternating with the baselines
  ``python -c pass``, ``python -c "import trio"`` (the goal of issue 19 for ``sessions``,
  ``send`` and ``attach``) and ``python -c "import quart_trio"`` (what Quart's import alone
  costs: the daemon's web framework, kept), and the import of every library the default daemon
  loads (the floor of its start-up). With ``--previous-code``, that version's commands too.
"""

from __future__ import annotations

import os
import resource
import signal
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from bench_harness import BENCH, PYTHON

PACKAGE: Final = BENCH.parent.parent / "sidecode_trio"
#: what the installed ``sidecode-trio`` console script runs (no ``-m``: no runpy)
SCRIPT: Final = "import sys; from sidecode_trio.cli import main; sys.exit(main())"
BASELINES: Final = {
    "python -c pass": "pass",
    'python -c "import trio"': "import trio",
    'python -c "import quart_trio"': "import quart_trio",
    #: every library the default daemon loads before it is ready: the floor of its start-up
    "the daemon's libraries": (
        "import trio, quart_trio, hypercorn.trio, cryptography.x509, nacl.signing, sqlite3, "
        "cattrs, aioquic.h3.connection"
    ),
}
COMMAND_TIMEOUT: Final = 60.0
AFTER_SEND: Final = 2.0  # seconds for the turn a send starts to end before the next command


def compile_bytecode(*packages: Path) -> str:
    """Compile each package's modules (as installing it would); what the report says."""
    for package in packages:
        subprocess.run(
            [PYTHON, "-m", "compileall", "-q", str(package)],
            check=False,
            stdout=subprocess.DEVNULL,
        )
    return "compiled in advance (`compileall`), as an installed package has it"


def cpu_seconds(pid: int) -> float:
    """The CPU time ``pid`` has used (user + system): how much work its start-up was, which a
    busy machine stretches far less than the wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _env(code: str) -> dict[str, str]:
    env = dict(os.environ)
    if code:
        env["PYTHONPATH"] = code
    return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(argv: Sequence[str], env: dict[str, str], cwd: Path, first_output: bool) -> float:
    """Milliseconds from spawning ``argv`` to its exit, or to its first byte of output. The
    working directory holds no package: ``python -c`` puts it first on ``sys.path``."""
    started = time.perf_counter()
    if not first_output:
        done = subprocess.run(
            argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, timeout=COMMAND_TIMEOUT, check=False,
        )  # fmt: skip
        elapsed = (time.perf_counter() - started) * 1e3
        if done.returncode != 0:
            raise RuntimeError(f"{argv[3:]} exited {done.returncode}: {done.stderr[-500:]!r}")
        return elapsed
    with subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    ) as process:  # fmt: skip
        assert process.stdout is not None
        first = process.stdout.read(1)
        elapsed = (time.perf_counter() - started) * 1e3
        process.send_signal(signal.SIGTERM)  # attach stops on it as on 'q'
        try:
            process.wait(COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if not first:
        raise RuntimeError(f"{argv[3:]} printed nothing")
    return elapsed


def commands(
    state_dir: Path, session_id: str, repeats: int, cwd: Path, previous: str = ""
) -> dict[str, list[float]]:
    """Each command's and baseline's wall times (ms), alternating run by run; and, for those
    measured to their exit, their CPU time (``<label> cpu``: steadier on a busy machine)."""
    runs: list[tuple[str, list[str], dict[str, str], bool]] = [
        (label, [PYTHON, "-c", code], _env(""), False) for label, code in BASELINES.items()
    ]
    state = ["--state-dir", str(state_dir)]
    for suffix, code in [("", ""), *([(" (previous)", previous)] if previous else [])]:
        env = _env(code)
        for label, args, first in (
            ("--version", ["--version"], False),
            ("sessions", ["sessions", *state], False),
            ("send", ["send", *state, session_id, "hello from the bench"], False),
            ("attach (to the snapshot)", ["attach", *state, session_id], True),
        ):
            runs.append((label + suffix, [PYTHON, "-c", SCRIPT, *args], env, first))
    times: dict[str, list[float]] = {label: [] for label, *_ in runs}
    for _ in range(repeats):
        for label, argv, env, first in runs:
            cpu = _children_cpu()
            times[label].append(_timed(argv, env, cwd, first))
            if not first:
                times.setdefault(label + " cpu", []).append((_children_cpu() - cpu) * 1e3)
            if label.startswith("send"):
                time.sleep(AFTER_SEND)  # its turn (a fake CLI started) is not the next one's load
    return times


def summary(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        label: {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms)}
        for label, ms in times.items()
        if ms
    }


def report(results: dict[str, Any]) -> str:
    """The commands' section of the report."""
    fp = results.get("footprint") or {}
    cmds = fp.get("commands")
    if not cmds:
        return ""
    trio_ms = cmds.get('python -c "import trio"', {}).get("median_ms", float("nan"))
    trio_cpu = cmds.get('python -c "import trio" cpu', {}).get("median_ms", float("nan"))
    rows = []
    for label, figure in cmds.items():
        if label.endswith(" cpu"):
            continue
        ratio = figure["median_ms"] / trio_ms if trio_ms == trio_ms else float("nan")
        cpu = cmds.get(label + " cpu")
        cpu_cells = (
            f"{cpu['median_ms']:.1f} | {cpu['median_ms'] / trio_cpu:.2f}" if cpu else "n/a | "
        )
        rows.append(
            f"| {label} | {figure['median_ms']:.1f} | {figure['min_ms']:.1f}-"
            f"{figure['max_ms']:.1f} | {ratio:.2f} | {cpu_cells} |"
        )
    starts = []
    for key, label in (
        ("fresh", "default (QUIC on)"),
        ("noquic", "QUIC off (`--quic-port -1`)"),
        ("previous", "the previous code (QUIC on)"),
        ("loaded", "a restart holding the sessions of 7-8 (QUIC on)"),
        ("relay", "the raw relay (baseline)"),
    ):
        if fp.get(f"startup_{key}_s"):
            ms = [s * 1e3 for s in fp[f"startup_{key}_s"]]
            cpu = [s * 1e3 for s in fp.get(f"cpu_{key}_s") or [float("nan")]]
            rss = fp.get(f"rss_{key}_runs_mib") or fp.get(f"rss_{key}_mib") or [float("nan")]
            rss = rss if isinstance(rss, list) else [rss]
            starts.append(
                f"| {label} | {statistics.median(ms):.0f} | {min(ms):.0f}-{max(ms):.0f} | "
                f"{statistics.median(cpu):.0f} | {statistics.median(rss):.1f} |"
            )
    return (
        "## 6b. Start-up by part, and the command line\n\n"
        f"Bytecode: {fp.get('bytecode', 'as found')}. Start-up to ready with an empty state, "
        "alternating run by run; the CPU time it had used at ready, and its RSS 0.5 s later:\n\n"
        "| daemon | wall ms, median | min-max | CPU ms at ready, median | RSS MiB, median |\n"
        "|---|---|---|---|---|\n"
        + "\n".join(starts)
        + "\n\nCommands (wall ms from spawning the process to its exit; `attach` to its first "
        "output), run as the installed script runs them, against the daemon holding the idle "
        "sessions above, alternating with the baselines:\n\n"
        "| command | wall ms, median | min-max | / `import trio` | CPU ms, median | "
        "/ `import trio` |\n|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
