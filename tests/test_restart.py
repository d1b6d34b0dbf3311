"""The daemon as a real process: killed with SIGKILL mid-turn and restarted, stopped with SIGTERM.

These run ``python -m sidecode_trio serve`` exactly as a user would (port 0, a ready file) and
talk to it over loopback. Every process started here is killed in ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from sidecode_trio.claude import leash
from sidecode_trio.claude.messages import transcript_path
from sidecode_trio.daemon import DaemonHandle
from sidecode_trio.host.service import (
    STOP_GRACE,
    Host,
    make_spec,
    parse_unit,
    render_unit,
    split_words,
)

from faultkit import START_TIMEOUT, kill_leftovers
from helpers import Client, SSEEvent, cli_argvs, pid_alive

pytestmark = pytest.mark.trio


@asynccontextmanager
async def daemon_process(
    tmp_path: Path,
    fake_claude: Path,
    work_dir: Path,
    claude_env: dict[str, str],
    config: str = "",
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
    # warm_limit = 0: opening a session here must not start its CLI (what recovery records is
    # checked; warming has its own tests, test_warm.py)
    (tmp_path / "state" / "config.toml").write_text('keystore = "file"\nwarm_limit = 0\n' + config)
    proc = await trio.lowlevel.open_process(argv, env=env)
    try:
        with trio.fail_after(START_TIMEOUT):  # a deadline: imports alone take 5 s when busy
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


async def _mid_turn(
    client: Client, work_dir: Path
) -> tuple[Any, int, list[str | None], str | None]:
    """Start a slow turn and follow it to its fifth delta: the session, its CLI's pid, the ids
    of the events seen and the last one (where a client would resume)."""
    session = (await client.create(work_dir, "[[slow:400]]"))["session"]
    async with client.events(session["id"]) as stream:
        running = await stream.until(
            lambda e: e.type == "cli.state" and e.body["state"] == "running"
        )
        for _ in range(5):
            await stream.until_type("text.delta")
        pid: int = running.body["pid"]
        return session, pid, [e.id for e in stream.seen], stream.last_id


async def test_kill_9_mid_turn_then_restart(
    tmp_path: Path, fake_claude: Path, work_dir: Path, claude_env: dict[str, str], cli_log: Path
) -> None:
    start = partial(daemon_process, tmp_path, fake_claude, work_dir, claude_env)
    cli_pids: list[int] = []
    try:
        with trio.fail_after(150):
            async with start() as (proc, client):
                session, pid, seen_before, last_seen = await _mid_turn(client, work_dir)
                cli_pids.append(pid)
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
                with trio.fail_after(STOP_GRACE):  # before a service manager's SIGKILL
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
        with trio.fail_after(120):
            async with start() as (proc, client):
                session = (await client.create(work_dir, "[[slow:400]]"))["session"]
                async with client.events(session["id"]) as stream:
                    running = await stream.until(
                        lambda e: e.type == "cli.state" and e.body["state"] == "running"
                    )
                    cli_pid = running.body["pid"]
                    await stream.until_type("text.delta")
                    proc.send_signal(signal.SIGTERM)
                    # before a service manager's SIGKILL (a deadline: a busy machine is slow to
                    # stop); that the stop ended the 20 s turn, not its end, is asserted below
                    with trio.fail_after(STOP_GRACE):
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


async def test_service_restart_resumes_every_session(
    tmp_path: Path, fake_claude: Path, work_dir: Path, claude_env: dict[str, str], cli_log: Path
) -> None:
    """What ``service restart`` does after ``pip install -U``, with the command and environment
    the generated unit holds and nothing else: systemd's ``KillMode=mixed`` SIGTERMs the daemon,
    then starts the same ExecStart. A running turn ends (recorded, not lost), an idle mirrored
    session comes back mirrored, and every session resumes its CLI in the same epoch."""
    state_dir, ready = tmp_path / "state", tmp_path / "ready.json"
    state_dir.mkdir(mode=0o700)
    (state_dir / "config.toml").write_text('keystore = "file"\nkeep_awake = "off"\n')
    host = Host("linux", tmp_path, os.getuid(), "alice", tmp_path / ".config")
    flags = ["--port", "0", "--claude", str(fake_claude), "--allow-root", str(work_dir),
             "--ready-file", str(ready), "--log-level", "warning"]  # fmt: skip
    repo = str(Path(__file__).resolve().parent.parent)  # the project runs from its checkout
    spec = make_spec(host, state_dir, flags, {"PATH": os.environ["PATH"], "PYTHONPATH": repo})
    unit = parse_unit(render_unit(spec))["Service"]
    argv = split_words(unit["ExecStart"][0])
    unit_env = dict(w.split("=", 1) for e in unit["Environment"] for w in split_words(e))
    env = {**claude_env, **unit_env}  # a service gets no login shell's environment

    @asynccontextmanager
    async def service_process() -> AsyncIterator[tuple[trio.Process, Client]]:
        ready.unlink(missing_ok=True)
        proc = await trio.lowlevel.open_process(argv, env=env)
        try:
            with trio.fail_after(START_TIMEOUT):
                while not ready.exists():
                    assert proc.poll() is None, "the daemon exited during start-up"
                    await trio.sleep(0.05)
            info = json.loads(ready.read_text())
            token = (state_dir / "token").read_text().strip()
            handle = DaemonHandle(info["http"], httpx.URL(info["http"]).port or 0, token,
                                  trio.Event())  # fmt: skip
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=info["http"], headers=headers, timeout=10) as h:
                yield proc, Client(handle, h)
        finally:  # on a failure too, let the daemon stop its claude processes first
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(STOP_GRACE):
                    await proc.wait()
            if proc.returncode is None:
                proc.kill()
            with trio.move_on_after(5):
                await proc.wait()

    def session_argvs() -> list[list[str]]:
        return [a for a in cli_argvs(cli_log) if "-p" in a]

    with trio.fail_after(150):
        async with service_process() as (proc, client):
            mirrored = (await client.create(work_dir, "hello", title="mirrored"))["session"]["id"]
            async with client.events(mirrored) as stream:
                await stream.until_type("turn.completed")
                reply = await client.http.put(
                    f"/v1/sessions/{mirrored}/mirror", json={"enabled": True, "name": "kept"}
                )
                assert reply.status_code == 200, reply.text
                await stream.until(lambda e: e.type == "session.mirror" and e.body["confirmed"])
            busy = (await client.create(work_dir, "[[slow:400]]"))["session"]
            async with client.events(busy["id"]) as stream:
                await stream.until_type("text.delta")
                last_seen = stream.last_id
            epochs = {s: (await client.snapshot(s))["epoch"] for s in (mirrored, busy["id"])}
            proc.send_signal(signal.SIGTERM)  # systemctl --user restart, KillMode=mixed
            with trio.fail_after(STOP_GRACE):
                assert await proc.wait() == 0
        before = len(session_argvs())
        async with service_process() as (proc, client):
            listed = {s["id"] for s in (await client.http.get("/v1/sessions")).json()["sessions"]}
            assert listed == {mirrored, busy["id"]}
            async with client.events(busy["id"], last_seen) as stream:
                ended = await stream.until_type("turn.failed")
                assert stream.seen[0].event != "snapshot", "same epoch: the replay is exact"
            assert ended.body["reason"] == "daemon_stopped"  # SIGTERM ends a turn cleanly
            for sid, epoch in epochs.items():
                assert (await client.snapshot(sid))["epoch"] == epoch

            def confirmed_twice(event: SSEEvent) -> bool:
                confirmed = [e for e in stream.seen if e.type == "session.mirror"]
                return (
                    event.type == "session.mirror"
                    and sum(e.body["confirmed"] for e in confirmed) == 2
                )

            async with client.events(mirrored) as stream:
                await stream.until(confirmed_twice)  # before the restart, and again after it
            resumed = session_argvs()[before:]
            assert any(f"--resume={mirrored}" in a and "--remote-control=kept" in a
                       for a in resumed)  # fmt: skip
            async with client.events(busy["id"], from_start=False) as stream:
                await client.send(busy["id"], "still there?")
                done = await stream.until_type("turn.completed")
                assert done.body["result"] == "You said: still there?"
            assert f"--resume={busy['id']}" in session_argvs()[-1]
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(STOP_GRACE):
                assert await proc.wait() == 0


# -- no claude outlives its daemon (issue 13, item 1) -----------------------------------------


def session_clis(session_id: str) -> list[int]:
    """Live (not zombie) processes whose argv is a CLI of ``session_id``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stamp = leash.stamp(int(entry.name))
            if stamp is not None and leash.names_session(stamp.argv, session_id):
                found.append(int(entry.name))
    return found


def transcript_texts(path: Path) -> list[str]:
    """The assistant texts a resumed CLI would put in the model's context."""
    texts = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("type") == "assistant":
            for block in record["message"]["content"]:
                if block.get("type") == "text":
                    texts.append(block["text"])
    return texts


@pytest.mark.skipif(sys.platform != "linux", reason="lists processes through /proc")
async def test_kill_9_mid_turn_leaves_no_claude_and_no_unseen_text(
    tmp_path: Path, fake_claude: Path, work_dir: Path, claude_env: dict[str, str]
) -> None:
    claude_env = {**claude_env, "FAKE_CLAUDE_KEEP_GOING": "1"}  # an orphan would finish
    start = partial(daemon_process, tmp_path, fake_claude, work_dir, claude_env)
    cli_pids: list[int] = []
    try:
        with trio.fail_after(120):
            async with start() as (proc, client):
                session, pid, _, _ = await _mid_turn(client, work_dir)
                cli_pids.append(pid)
                assert cli_pids[0] in session_clis(session["id"])  # with its leash watcher
                proc.kill()  # SIGKILL: the daemon cleans nothing up
                await proc.wait()
            async with start() as (proc, client):  # ready: its HTTP server answers
                assert session_clis(session["id"]) == [], "a claude outlived its daemon"
                await client.send(session["id"], "what did you say?")
                async with client.events(session["id"]) as stream:
                    await stream.until(
                        lambda e: (
                            e.type == "turn.completed"
                            and e.body["result"] == "You said: what did you say?"
                        )
                    )
                snap = await client.snapshot(session["id"])
                logged = [i["text"] for i in snap["items"] if i["type"] == "assistant"]
                transcript = transcript_path(session["cwd"], session["id"], claude_env)
                unseen = [t for t in transcript_texts(transcript) if t not in logged]
                assert unseen == [], "the model's context holds text no client saw"
    finally:
        kill_leftovers(cli_pids)


def _execd(found: leash.Stamp | None, session_id: str) -> bool:
    """Whether ``found`` is the fake CLI itself (this interpreter), started for ``session_id``."""
    return (
        found is not None
        and leash.names_session(found.argv, session_id)
        and Path(found.argv[0]).name == Path(sys.executable).name
    )


@pytest.mark.parametrize("source", ["proc", "ps"])
async def test_the_start_up_reaper_kills_only_a_recorded_claude(
    tmp_path: Path,
    fake_claude: Path,
    work_dir: Path,
    claude_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    """A CLI off the leash (as if a daemon died while starting it) is stopped before its
    session resumes; a recorded pid that now belongs to another process is left alone.
    ``ps``: how macOS identifies processes (no /proc), checked here too."""
    if source == "proc" and not leash.HAS_PROC:
        pytest.skip("no /proc here")
    monkeypatch.setattr(leash, "HAS_PROC", source == "proc")
    session_id = str(uuid.uuid4())
    records = leash.Records(tmp_path / "state" / "cli")
    env = {**os.environ, **claude_env}
    argv = [str(fake_claude), "-p", "--input-format", "stream-json", "--output-format"]
    argv += ["stream-json", "--verbose", f"--session-id={session_id}"]
    orphan = await trio.lowlevel.open_process(
        argv, cwd=work_dir, env=env, stdin=subprocess.PIPE, start_new_session=True
    )
    other = await trio.lowlevel.open_process(["sleep", "60"], start_new_session=True)
    try:
        with trio.fail_after(30):
            # until the wrapper has exec'd the fake CLI: the shell's argv names the session too,
            # and a reap that reads /proc/<pid>/cmdline in the middle of that exec finds no argv
            # (seen once in CI on a loaded machine: nothing killed)
            while not _execd(leash.stamp(orphan.pid), session_id):
                await trio.sleep(0.02)
            records.add(session_id, orphan.pid)
            # a recycled pid: the record names a session, the process there is something else
            recycled = str(uuid.uuid4())
            records.add(recycled, other.pid)
            # and a pid whose start time is not the recorded one
            stale = leash.Record(str(uuid.uuid4()), other.pid, "1")
            records.directory.joinpath(f"{stale.session_id}.json").write_text(
                json.dumps({"session_id": stale.session_id, "pid": other.pid, "start": "1"})
            )
            assert len(records.all()) == 3
            killed = await leash.reap(records)
            assert [r.pid for r in killed] == [orphan.pid], (leash.stamp(orphan.pid), orphan.poll())
            assert await orphan.wait() == -signal.SIGKILL
            assert other.poll() is None, "a process that is not our claude was killed"
            assert records.all() == []
    finally:
        for process in (orphan, other):
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(5):
                await process.wait()


async def test_a_daemon_starting_stops_an_orphan_before_resuming_its_session(
    tmp_path: Path, fake_claude: Path, work_dir: Path, claude_env: dict[str, str]
) -> None:
    start = partial(daemon_process, tmp_path, fake_claude, work_dir, claude_env)
    env = {**os.environ, **claude_env}
    orphan: trio.Process | None = None
    try:
        with trio.fail_after(120):
            async with start() as (proc, client):
                session = (await client.create(work_dir, "hello"))["session"]
                async with client.events(session["id"]) as stream:
                    await stream.until_type("turn.completed")
                proc.kill()
                await proc.wait()
            # an orphan of that session, off the leash, recorded as the dead daemon would have
            argv = [str(fake_claude), "-p", "--input-format", "stream-json", "--output-format"]
            argv += ["stream-json", "--verbose", f"--resume={session['id']}"]
            orphan = await trio.lowlevel.open_process(
                argv, cwd=work_dir, env=env, stdin=subprocess.PIPE, start_new_session=True
            )
            while not session_clis(session["id"]):
                await trio.sleep(0.02)
            leash.Records(tmp_path / "state" / "cli").add(session["id"], orphan.pid)
            async with start() as (proc, client):
                assert orphan.poll() == -signal.SIGKILL  # reaped by us: it was killed
                await client.send(session["id"], "again")
                async with client.events(session["id"]) as stream:
                    await stream.until_type("turn.completed")
    finally:
        if orphan is not None and orphan.returncode is None:
            orphan.kill()
            with trio.move_on_after(5):
                await orphan.wait()


# -- client ids survive a restart (issue 13, item 2) ------------------------------------------


@pytest.mark.parametrize("how", ["kill", "term"])
async def test_a_retried_send_or_create_after_a_restart_runs_once(
    tmp_path: Path, fake_claude: Path, work_dir: Path, claude_env: dict[str, str], how: str
) -> None:
    start = partial(daemon_process, tmp_path, fake_claude, work_dir, claude_env)
    with trio.fail_after(120):
        async with start() as (proc, client):
            created = await client.create(work_dir, "first", client_id="create-1")
            bare = await client.create(work_dir, None, client_id="create-2")  # no prompt
            session_id = created["session"]["id"]
            sent = await client.send(session_id, "second", client_id="send-1")
            async with client.events(session_id) as stream:
                await stream.until(
                    lambda e: e.type == "turn.completed" and e.body["turn_id"] == sent["message_id"]
                )
            if how == "kill":
                proc.kill()
            else:
                proc.send_signal(signal.SIGTERM)
            await proc.wait()
        async with start() as (proc, client):
            before = await client.snapshot(session_id)
            again = await client.http.post(
                "/v1/sessions",
                json={"cwd": str(work_dir), "prompt": "first", "client_id": "create-1"},
            )
            assert again.json()["created"] is False
            assert again.json()["session"]["id"] == session_id
            assert again.json()["message_id"] == created["message_id"]
            bare_again = await client.http.post(
                "/v1/sessions", json={"cwd": str(work_dir), "client_id": "create-2"}
            )
            assert bare_again.json()["created"] is False
            assert bare_again.json()["session"]["id"] == bare["session"]["id"]
            resent = await client.send(session_id, "second", client_id="send-1")
            assert (resent["message_id"], resent["created"]) == (sent["message_id"], False)
            listed = (await client.http.get("/v1/sessions")).json()["sessions"]
            assert len(listed) == 2  # no second session
            after = await client.snapshot(session_id)
            assert after["cursor"] == before["cursor"]  # nothing queued, nothing ran
            assert after["session"]["turns"] == 2
            fresh = await client.send(session_id, "third", client_id="send-2")
            assert fresh["created"] is True


async def test_a_bare_create_retried_after_its_creation_was_compacted_runs_once(
    tmp_path: Path, fake_claude: Path, work_dir: Path, claude_env: dict[str, str]
) -> None:
    """A create without a prompt keeps its client_id only in ``session.created``; once
    compaction dropped that event, the stored snapshot must still carry it, or a create
    retried after a restart makes a second session."""
    start = partial(
        daemon_process, tmp_path, fake_claude, work_dir, claude_env, "retain_events = 100\n"
    )
    with trio.fail_after(120):
        async with start() as (proc, client):
            bare = await client.create(work_dir, None, client_id="create-bare")
            session_id = bare["session"]["id"]
            await client.send(session_id, "[[fast:200:2000]]")  # 200 events: compacted
            while True:  # until a read from the start gets the snapshot that replaced it
                async with client.events(session_id) as stream:
                    first = await stream.next()
                if first.type == "snapshot" and first.body["reason"] == "compacted":
                    break
                await trio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
        async with start() as (proc, client):
            again = await client.http.post(
                "/v1/sessions", json={"cwd": str(work_dir), "client_id": "create-bare"}
            )
            assert again.json()["created"] is False
            assert again.json()["session"]["id"] == session_id
            listed = (await client.http.get("/v1/sessions")).json()["sessions"]
            assert [s["id"] for s in listed] == [session_id]
