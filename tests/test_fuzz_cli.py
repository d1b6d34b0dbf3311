"""Garbage on a live CLI's stdout: the daemon must hold the session together.

A wrapper stands in for ``claude``: it runs the fake CLI and, before every line the fake writes,
writes a line of garbage of its own (invalid UTF-8, truncated copies of real frames, a 2 MB line,
nesting deeper than the JSON parser recurses, unknown types, real types in wrong shapes). The
turns must come out exactly as without the garbage: a tool approved and run, text completed, the
session idle, and the daemon healthy.
"""

from __future__ import annotations

import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from sidecode_trio.config import DaemonConfig

from helpers import running_daemon

TESTS = Path(__file__).parent
WRAPPER = """
import os, random, subprocess, sys
rng = random.Random(int(os.environ.get("GARBAGE_SEED", "0")))
GARBAGE = [
    lambda line: b"\\xff\\xfe not utf-8 \\xc3\\x28",
    lambda line: line[: max(1, len(line) // 2)],  # a real frame, cut short
    lambda line: b"x" * (2 * 1024 * 1024),
    lambda line: b"[" * 5000 + b"]" * 5000,
    lambda line: b'{"type": "mystery_frame", "payload": {"a": [1, 2, {"b": null}]}}',
    lambda line: b'{"type": "assistant", "message": "not an object"}',
    lambda line: b'{"type": "user", "message": {"content": 42}}',
    lambda line: b'{"type": "stream_event", "event": ["wrong"]}',
    lambda line: b'{"type": "system", "subtype": "status", "permissionMode": 7}',
    lambda line: b'{"type": "control_cancel_request", "request_id": 12}',
    lambda line: b"[1, 2, 3]",
    lambda line: b"null",
    lambda line: b"",
    lambda line: b"debug: some human text the CLI printed",
]
child = subprocess.Popen([sys.executable, sys.argv[1], *sys.argv[2:]], stdout=subprocess.PIPE)
out = sys.stdout.buffer
with open(os.environ["GARBAGE_LOG"], "a") as log:  # which garbage went out, for the test
    for line in child.stdout:
        which = rng.randrange(len(GARBAGE))
        out.write(GARBAGE[which](line.rstrip(b"\\n")) + b"\\n")
        out.write(line)
        out.flush()
        log.write(f"{which}\\n")
        log.flush()
sys.exit(child.wait())
"""


@pytest.fixture
def garbage_claude(tmp_path: Path) -> Path:
    script = tmp_path / "garbage_wrapper.py"
    script.write_text(WRAPPER)
    wrapper = tmp_path / "claude-garbage"
    wrapper.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{script}" "{TESTS / "fake_claude.py"}" "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_garbage_between_the_cli_frames_changes_nothing(
    make_config: Callable[..., DaemonConfig],
    garbage_claude: Path,
    claude_env: dict[str, str],
    work_dir: Path,
    seed: int,
) -> None:
    log = work_dir.parent / "garbage.log"
    env = {**claude_env, "GARBAGE_SEED": str(seed), "GARBAGE_LOG": str(log)}
    config = make_config(claude=str(garbage_claude), claude_env=env)
    with trio.fail_after(40):
        async with running_daemon(config) as daemon:
            created = await daemon.create(work_dir, "[[bash:echo hi > hi.txt]]")
            session_id = created["session"]["id"]
            async with daemon.events(session_id) as stream:
                request = await stream.until_type("permission.requested", timeout=30)
                assert request.body["input"]["command"] == "echo hi > hi.txt"
                reply = await daemon.answer(
                    session_id, request.body["request_id"], behavior="allow"
                )
                assert reply.status_code == 200, reply.text
                done = await stream.until_type("turn.completed", "turn.failed", timeout=30)
                assert done.type == "turn.completed", done.body
                assert done.body["result"].startswith("TOOL RESULT SEEN")
                await daemon.send(session_id, "plain words")
                second = await stream.until_type("turn.completed", "turn.failed", timeout=30)
                assert second.type == "turn.completed", second.body
            assert (work_dir / "hi.txt").read_text() == "hi\n"
            snapshot = await daemon.snapshot(session_id)
            assert snapshot["session"]["status"] == "idle"
            texts = [i["text"] for i in snapshot["items"] if i["type"] == "assistant"]
            assert any("You said: plain words" in t for t in texts), texts
            assert (await daemon.http.get("/v1/info")).status_code == 200
    sent = log.read_text().split()
    assert len(sent) > 20 and len(set(sent)) > 8, f"too little garbage went out: {sent}"
