"""The daemon as a real process: killed with SIGKILL mid-turn and restarted, stopped with SIGTERM.

These run ``python -m sidecode_trio serve`` exactly as a user would (port 0, a ready file) and
talk to it over loopback. Every process started here is killed in ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from sidecode_trio.daemon import DaemonHandle

from helpers import Client, cli_argvs, pid_alive

pytestmark = pytest.mark.trio


@asynccontextmanager
async def daemon_process(
    tmp_path: Path, fake_claude: Path, work_dir: Path, claude_env: dict[str, str]
) -> AsyncIterator[tuple[trio.Process, Client]]:
    ready = tmp_path / f"ready-{os.urandom(4).hex()}.json"
    argv = [
        sys.executable, "-m", "sidecode_trio", "serve",
        "--state-dir", str(tmp_path / "state"), "--port", "0",
        "--claude", str(fake_claude), "--allow-root", str(work_dir),
        "--ready-file", str(ready), "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, **claude_env}
    (tmp_path / "state").mkdir(mode=0o700, exist_ok=True)
    (tmp_path / "state" / "config.toml").write_text('keystore = "file"\n')
    proc = await trio.lowlevel.open_process(argv, env=env)
    try:
        with trio.fail_after(15):
            while not ready.exists():
                assert proc.poll() is None, "the daemon exited during start-up"
                await trio.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["pid"] == proc.pid
        token = (tmp_path / "state" / "token").read_text().strip()
        url = httpx.URL(info["http"])
        handle = DaemonHandle(info["http"], url.port or 0, token, trio.Event())
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=info["http"], headers=headers, timeout=10) as http:
            yield proc, Client(handle, http)
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.move_on_after(5):
            await proc.wait()


async def test_kill_9_mid_turn_then_restart(
    tmp_path: Path, fake_claude: Path, work_dir: Path, claude_env: dict[str, str], cli_log: Path
) -> None:
    start = partial(daemon_process, tmp_path, fake_claude, work_dir, claude_env)
    cli_pids: list[int] = []
    try:
        with trio.fail_after(60):
            async with start() as (proc, client):
                session = (await client.create(work_dir, "[[slow:400]]"))["session"]
                async with client.events(session["id"]) as stream:
                    running = await stream.until(
                        lambda e: e.type == "cli.state" and e.body["state"] == "running"
                    )
                    cli_pids.append(running.body["pid"])
                    for _ in range(5):
                        await stream.until_type("text.delta")
                    seen_before = [e.id for e in stream.seen]
                    last_seen = stream.last_id
                proc.kill()  # SIGKILL: no clean-up of any kind
                await proc.wait()
            async with start() as (proc, client):
                async with client.events(session["id"], last_seen) as stream:
                    failed = await stream.until_type("turn.failed")
                    assert failed.body["reason"] == "daemon_restarted"
                    ids = [e.id for e in stream.seen]
                assert stream.seen[0].event != "snapshot", "same epoch: replay is exact"
                cursors = [int(i.split(":")[1]) for i in ids if i]
                first = int(last_seen.split(":")[1])  # type: ignore[union-attr]
                assert cursors == list(range(first + 1, first + 1 + len(cursors)))
                async with client.events(session["id"]) as full:
                    await full.until_type("turn.failed")
                    assert [e.id for e in full.seen][: len(seen_before)] == seen_before
                snap = await client.snapshot(session["id"])
                assert snap["session"]["status"] == "idle" and snap["active_turn"] is None
                assert snap["session"]["cli"] == "stopped"

                await client.send(session["id"], "still there?")
                async with client.events(session["id"], f"{snap['epoch']}:{snap['cursor']}") as s:
                    running = await s.until(
                        lambda e: e.type == "cli.state" and e.body["state"] == "running"
                    )
                    cli_pids.append(running.body["pid"])
                    done = await s.until_type("turn.completed")
                    assert done.body["result"] == "You said: still there?"
                argvs = cli_argvs(cli_log)
                assert f"--resume={session['id']}" in argvs[-1]

                proc.send_signal(signal.SIGTERM)
                with trio.fail_after(10):
                    assert await proc.wait() == 0
            for pid in cli_pids[1:]:
                assert not pid_alive(pid), "no claude outlives a clean shutdown"
    finally:
        for pid in cli_pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_sigterm_stops_a_running_turn_within_seconds(
    tmp_path: Path, fake_claude: Path, work_dir: Path, claude_env: dict[str, str]
) -> None:
    start = partial(daemon_process, tmp_path, fake_claude, work_dir, claude_env)
    cli_pid = None
    try:
        with trio.fail_after(40):
            async with start() as (proc, client):
                session = (await client.create(work_dir, "[[slow:400]]"))["session"]
                async with client.events(session["id"]) as stream:
                    running = await stream.until(
                        lambda e: e.type == "cli.state" and e.body["state"] == "running"
                    )
                    cli_pid = running.body["pid"]
                    await stream.until_type("text.delta")
                    proc.send_signal(signal.SIGTERM)
                    with trio.fail_after(8):
                        assert await proc.wait() == 0
                    # the stream ended with the daemon, after the turn's terminal event
                    with pytest.raises(EOFError):
                        await stream.until_type("never")
                failed = [e for e in stream.seen if e.type == "turn.failed"]
                assert failed and failed[0].body["reason"] == "daemon_stopped"
                assert not pid_alive(cli_pid)
            async with start() as (proc, client):
                snap = await client.snapshot(session["id"])
                ends = [i for i in snap["items"] if i["type"] == "turn_end"]
                assert [e["reason"] for e in ends] == ["daemon_stopped"]  # nothing to recover
                assert not (tmp_path / "state" / "daemon.json").exists() or proc.returncode is None
    finally:
        if cli_pid is not None and pid_alive(cli_pid):
            os.kill(cli_pid, signal.SIGKILL)
