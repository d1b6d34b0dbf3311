"""The bench's py-spy profile table (tests/bench/bench_profile.py): each sample is attributed to
the stage of the token path its stack names, by the frames' function names. Its markers must
name functions the daemon has (a marker left behind by a refactor silently moves that stage's
time to the stage around it: direct writes were counted as "fold + fan-out" after ``_Sink``
became the feed's ``SessionFeed._offer``)."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).parent / "bench"
sys.path.insert(0, str(BENCH))

from bench_profile import STAGES, names, self_time  # noqa: E402

ROOT = Path(__file__).parent.parent


def _qualnames(tree: ast.AST) -> set[str]:
    """Every function's qualified name in a module (``Class.method``, ``function``)."""
    found: set[str] = set()

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                found.add(prefix + child.name)
                walk(child, f"{prefix}{child.name}.<locals>.")

    walk(tree, "")
    return found


def _package(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


def test_every_stage_marker_names_a_function_of_the_profiled_code() -> None:
    functions: set[str] = set()
    for package in (ROOT / "sidecode_trio", _package("trio"), _package("hypercorn"),
                    _package("quart")):  # fmt: skip
        for path in package.rglob("*.py"):
            functions |= _qualnames(ast.parse(path.read_text(), str(path)))
    for marker, stage in STAGES:
        if marker.endswith("*"):
            continue  # a native symbol (the interpreter's)
        assert any(names(marker, name) for name in functions), (marker, stage)


def test_samples_are_attributed_to_the_stage_their_stack_names(tmp_path: Path) -> None:
    run = "unrolled_run (trio/_core/_run.py:2557)"
    publish = (
        f"{run};ClaudeProcess._read_stdout (sidecode_trio/claude/process.py:150);"
        "EventLog._leave_inline (sidecode_trio/eventlog/log.py:230);"
        "EventLog._commit_now (sidecode_trio/eventlog/log.py:290);"
        "EventLog._publish (sidecode_trio/eventlog/log.py:313)"
    )
    raw = tmp_path / "profile.raw"
    raw.write_text(
        "\n".join(
            [
                # a direct write, made by the publisher: its own stage, not fan-out
                f"{publish};SessionFeed._offer (sidecode_trio/feed/session.py:193);"
                "_SocketDirect.write (sidecode_trio/http/direct.py:273);send (libc.so.6) 50",
                f"{publish};_Session.fold (sidecode_trio/eventlog/fold.py:80) 20",
                f"{publish};EventLog._commit_now (sidecode_trio/eventlog/log.py:283);"
                "SQLiteStore.commit (sidecode_trio/eventlog/store.py:120);pwrite64 (libc.so.6) 10",
                f"{run};DirectEvents._fast (sidecode_trio/http/direct.py:226);send (libc.so.6) 8",
                # a name that merely contains a marker is not it (Link._pumped is not _pump)
                f"{run};Link._pumped (sidecode_trio/channel/link.py:442) 4",
                f"{run};TCPServer.run (hypercorn/trio/tcp_server.py:41) 3",
                f"{run};ASGIHTTPConnection._send_response (quart/asgi.py:115) 2",
                "gc_collect_main (python3.11) 2",
                f"{run};checkpoint (trio/_core/_run.py:2700) 1",
                # trio's run() waits in epoll outside unrolled_run
                "<module> (sidecode_trio/__main__.py:3);_serve (sidecode_trio/cli.py:329);"
                "run (trio/_core/_run.py:2535);EpollIOManager.get_events (trio/_core/_io_epoll.py"
                ":243);epoll_wait (libc.so.6) 6",
            ]
        )
        + "\n"
    )
    stages = dict(self_time(raw)["stages"])
    total = 106
    direct = next(stage for marker, stage in STAGES if marker == "SessionFeed._offer")
    assert stages[direct] == 50 / total
    assert stages["fold + fan-out (offer to each subscriber)"] == 20 / total
    assert stages["SQLite group commit"] == 10 / total
    assert stages["SSE per client: writer task for what was queued (http/direct.py)"] == 8 / total
    scheduler = stages["trio scheduler (run loop, epoll, reschedule)"]
    assert scheduler == 11 / total  # Link._pumped, trio's checkpoint, the epoll wait
    assert stages["hypercorn connection tasks (reads, idle timer)"] == 3 / total
    assert stages["SSE per client: generator, quart, hypercorn, h11, send()"] == 2 / total
    assert stages["cyclic GC"] == 2 / total
