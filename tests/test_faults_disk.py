"""The state directory's disk full or read-only: clear errors, no corruption, recovery after.

Two ways to make the disk fail, each saying what it proves:

* **At SQLite's boundary, in-process (runs everywhere).** The daemon's own connections to its
  stores get ``PRAGMA max_page_count`` pinned to the current size (every write that needs a page
  fails with ``SQLITE_FULL``, "database or disk is full", what a full disk gives) or
  ``PRAGMA query_only`` (``SQLITE_READONLY``, what a read-only file gives). The daemon's code
  above the connection runs unchanged. A read-only *re*mount cannot be made for real while the
  daemon holds its database open for writing (Linux answers ``EBUSY``), so this is the
  read-only test at run time.
* **For real, as root (skipped without ``CAP_SYS_ADMIN``; CI runs as root).** The state
  directory is a 12 MiB tmpfs that a filler file fills to ``ENOSPC`` under a daemon process, and
  a read-only bind mount under a daemon that is starting.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

import sidecode_trio.daemon
from sidecode_trio.config import DaemonConfig
from sidecode_trio.eventlog.log import EventLog
from sidecode_trio.eventlog.store import SQLiteStore
from sidecode_trio.security.devices import DeviceStore

from faultkit import Follower, Kit, check_log_integrity, daemon_process, kill_leftovers
from helpers import Client, load_example, running_daemon

pytestmark = pytest.mark.faults

pair_client = load_example("pair_client")


@pytest.fixture
def kit(tmp_path: Path, fake_claude: Path, work_dir: Path, claude_env: dict[str, str]) -> Kit:
    return Kit(tmp_path, fake_claude, work_dir, claude_env)


# -- failing the daemon's own connections -----------------------------------------------------


class Stores:
    """The daemon's store connections, captured as it opens them, and a switch to fail them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.connections: list[sqlite3.Connection] = []
        stores = self

        class EventStore(SQLiteStore):
            def __init__(self, path: Path) -> None:
                super().__init__(path)
                stores.connections.append(self._db)

        class Devices(DeviceStore):
            def __init__(self, path: Path) -> None:
                super().__init__(path)
                stores.connections.append(self._db)

        monkeypatch.setattr(sidecode_trio.daemon, "SQLiteStore", EventStore)
        monkeypatch.setattr(sidecode_trio.daemon, "DeviceStore", Devices)

    def fail(self, how: str) -> None:
        for db in self.connections:
            if how == "disk_full":
                pages = db.execute("PRAGMA page_count").fetchone()[0]
                db.execute(f"PRAGMA max_page_count = {pages}")
            else:
                db.execute("PRAGMA query_only = ON")

    def heal(self) -> None:
        for db in self.connections:
            db.execute("PRAGMA max_page_count = 4294967294")
            db.execute("PRAGMA query_only = OFF")


async def store_error(client: Client) -> str | None:
    status = (await client.http.get("/v1/status")).json()
    error: str | None = status["log"]["store_error"]
    return error


async def until_store_error(client: Client, present: bool) -> str | None:
    """Wait for the daemon to report (or clear) a failing store: a state, not a timing."""
    with trio.fail_after(20):
        while ((error := await store_error(client)) is not None) != present:
            await trio.sleep(0.05)
    return error


def refused(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


async def pair(client: Client) -> str:
    """Pair a device over HTTP as the example client does; its error text on failure."""
    offer = await client.http.post("/v1/pairings", json={"scope": "chat"})
    assert offer.status_code == 201, offer.text
    try:
        await trio.to_thread.run_sync(pair_client.pair, offer.json()["payload"], "phone")
    except RuntimeError as exc:
        return str(exc)
    return "paired"


@pytest.mark.parametrize(
    ("how", "words"),
    [("disk_full", "database or disk is full"), ("read_only", "readonly database")],
)
async def test_a_failing_store_answers_503_loses_nothing_and_recovers(
    monkeypatch: pytest.MonkeyPatch,
    make_config: Callable[..., DaemonConfig],
    work_dir: Path,
    how: str,
    words: str,
) -> None:
    stores = Stores(monkeypatch)
    # a write waits 5 s (FLUSH_PATIENCE) for a failing store before its 503; 1 s here
    monkeypatch.setattr(EventLog.flush, "__defaults__", (1.0,))
    config = make_config()
    follower = Follower("phone", "")
    try:
        with trio.fail_after(60):
            async with running_daemon(config) as client:
                created = await client.create(work_dir, "before")
                follower.session_id = session_id = created["session"]["id"]
                await follower.connect(client, from_start=True)
                await follower.read_until(lambda f: bool(f.ends_of(created["message_id"])))

                # a long answer whose events cannot be written (so they are not delivered)
                await client.send(session_id, "[[fast:3000:200]]")
                stores.fail(how)
                error = await until_store_error(client, present=True)
                assert error is not None and words in error
                durable = (await client.snapshot(session_id))["cursor"]
                path = f"/v1/sessions/{session_id}/messages"
                late = await client.http.post(path, json={"text": "while broken"})
                # waits for the store (FLUSH_PATIENCE), then says why: and it is not done
                assert refused(late) == (503, "store_unavailable")
                assert "will not run" in late.json()["error"]["message"]
                keyed = await client.http.post(path, json={"text": "keyed", "client_id": "k1"})
                assert refused(keyed) == (503, "store_unavailable")
                body = {"cwd": str(work_dir), "prompt": "new", "client_id": "c1"}
                new = await client.http.post("/v1/sessions", json=body)
                assert refused(new) == (503, "store_unavailable")
                assert "not created" in new.json()["error"]["message"]
                paired = await pair(client)
                if how == "read_only" or paired != "paired":  # a pinned page count may still
                    assert "503" in paired and "store_unavailable" in paired, paired  # have room
                # reads still work, from the durable state, which has not moved meanwhile
                assert (await client.snapshot(session_id))["cursor"] == durable
                assert (await client.http.get("/v1/sessions")).status_code == 200

                stores.heal()
                assert await until_store_error(client, present=False) is None

                def queued(f: Follower) -> dict[str, str]:
                    return {
                        b["text"]: b["message_id"] for _, t, b in f.types if t == "message.queued"
                    }

                # what was accepted runs; what was refused is written as refused, and never ran
                await follower.read_until(
                    lambda f: len(queued(f)) == 4 and all(f.ends_of(m) for m in queued(f).values()),
                    timeout=30,
                )
                ids = queued(follower)
                assert list(ids) == ["before", "[[fast:3000:200]]", "while broken", "keyed"]
                ends = {text: follower.ends_of(m) for text, m in ids.items()}
                assert ends["before"] == ends["[[fast:3000:200]]"] == ["turn.completed"]
                assert ends["while broken"] == ends["keyed"] == ["turn.failed"]
                reasons = {
                    b["turn_id"]: b["reason"] for _, t, b in follower.types if t == "turn.failed"
                }
                assert reasons == {
                    ids["while broken"]: "store_unavailable",
                    ids["keyed"]: "store_unavailable",
                }
                assert not any(
                    t == "message.delivered" and b["message_id"] in reasons
                    for _, t, b in follower.types
                )
                assert [
                    s["id"] for s in (await client.http.get("/v1/sessions")).json()["sessions"]
                ] == [session_id]

                # a retry, with or without the same client id, runs once
                again = (await client.send(session_id, "while broken"))["message_id"]
                keyed_again = await client.send(session_id, "keyed", client_id="k1")
                assert keyed_again["created"] is True
                repeat = await client.send(session_id, "keyed", client_id="k1")
                assert (repeat["message_id"], repeat["created"]) == (
                    keyed_again["message_id"],
                    False,
                )
                await follower.read_until(
                    lambda f: bool(f.ends_of(again) and f.ends_of(keyed_again["message_id"])),
                    timeout=30,
                )
                assert follower.ends_of(again) == ["turn.completed"]
                assert follower.ends_of(keyed_again["message_id"]) == ["turn.completed"]
                recreated = await client.create(work_dir, "new", client_id="c1")
                assert recreated["created"] is True
                listed = (await client.http.get("/v1/sessions")).json()["sessions"]
                assert sorted(s["id"] for s in listed) == sorted(
                    [session_id, recreated["session"]["id"]]
                )
                await follower.check_fold(client)
                assert await pair(client) == "paired"
                check_log_integrity(config.db_path)
    finally:
        await follower.close()


# -- the real thing, as root ------------------------------------------------------------------


def _can_mount() -> bool:
    if sys.platform != "linux" or os.geteuid() != 0:
        return False
    probe = Path(f"/tmp/sidecode-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], check=True)
        return True
    except OSError:
        return False
    finally:
        probe.rmdir()


needs_mount = pytest.mark.skipif(
    not _can_mount(), reason="mounting a tmpfs needs root (CAP_SYS_ADMIN)"
)


@contextlib.contextmanager
def mounted(*args: str) -> Iterator[None]:
    target = args[-1]
    subprocess.run(["mount", *args], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", target], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system holding ``directory`` to the last byte (ENOSPC)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 65536, 4096, 512, 1):  # big writes, then the last partial blocks
            stopped_by: int | None = 0
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                stopped_by = exc.errno
            assert stopped_by == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


@needs_mount
async def test_a_full_tmpfs_under_a_daemon_process(kit: Kit) -> None:
    state = kit.state_dir
    state.mkdir(mode=0o700)
    follower = Follower("phone", "")
    pids: list[int] = []
    with mounted("-t", "tmpfs", "-o", "size=12m,mode=0700", "tmpfs", str(state)):
        try:
            with trio.fail_after(60):
                async with daemon_process(kit) as daemon:
                    client = daemon.client
                    created = await client.create(kit.work_dir, "before")
                    follower.session_id = session_id = created["session"]["id"]
                    await follower.connect(client, from_start=True)
                    await follower.read_until(lambda f: bool(f.ends_of(created["message_id"])))
                    filler = fill(state)
                    replies: dict[str, Any] = {}

                    async def post(text: str, **extra: str) -> None:
                        path = f"/v1/sessions/{session_id}/messages"
                        body = {"text": text, **extra}
                        replies[text] = await client.http.post(path, json=body)

                    async with trio.open_nursery() as posts:  # each waits 5 s, then 503
                        posts.start_soon(post, "[[fast:2000:200]]")
                        posts.start_soon(partial(post, "while full", client_id="k1"))
                    # SQLite may still commit into WAL pages it has (after a checkpoint reset):
                    # a message that became durable is accepted (202) and runs; one refused
                    # (503) is not done. Which it is depends on timing; what each means does not.
                    refused_texts = set()
                    for text, late in replies.items():
                        if late.status_code == 202:
                            continue
                        refused_texts.add(text)
                        assert refused(late) == (503, "store_unavailable")
                        assert "disk is full" in late.json()["error"]["message"]
                        assert "will not run" in late.json()["error"]["message"]
                    print("refused:", sorted(refused_texts))
                    error = await until_store_error(client, present=True)
                    assert error is not None and "disk is full" in error
                    assert (await client.http.get(f"/v1/sessions/{session_id}")).status_code == 200
                    paired = await pair(client)
                    assert "503" in paired and "store_unavailable" in paired, paired
                    filler.unlink()  # space again
                    assert await until_store_error(client, present=False) is None

                    def queued(f: Follower) -> dict[str, str]:
                        return {
                            b["text"]: b["message_id"]
                            for _, t, b in f.types
                            if t == "message.queued"
                        }

                    # wait for exactly what is asserted: both messages queued, and both ended
                    await follower.read_until(
                        lambda f: (
                            len(queued(f)) == 3 and all(f.ends_of(m) for m in queued(f).values())
                        ),
                        timeout=30,
                    )
                    ids = queued(follower)
                    texts = [b["text"] for _, t, b in follower.types if t == "message.queued"]
                    assert texts[0] == "before"  # and each message, once
                    assert sorted(texts[1:]) == ["[[fast:2000:200]]", "while full"]
                    failed = {
                        b["turn_id"]: b["reason"]
                        for _, t, b in follower.types
                        if t == "turn.failed"
                    }
                    assert failed == {ids[text]: "store_unavailable" for text in refused_texts}
                    for text in set(replies) - refused_texts:  # accepted: ran once
                        assert follower.ends_of(ids[text]) == ["turn.completed"]
                    assert not any(  # refused: they never ran
                        t in ("message.delivered", "turn.started")
                        and (b.get("message_id") or b.get("turn_id")) in failed
                        for _, t, b in follower.types
                    )
                    # the client retries what was refused, as a 503 invites: each runs once
                    retried = []
                    if "[[fast:2000:200]]" in refused_texts:
                        retried.append(
                            (await client.send(session_id, "[[fast:2000:200]]"))["message_id"]
                        )
                    keyed = await client.send(session_id, "while full", client_id="k1")
                    assert keyed["created"] is ("while full" in refused_texts)
                    if keyed["created"]:
                        retried.append(keyed["message_id"])
                    else:
                        assert keyed["message_id"] == ids["while full"]
                    await follower.read_until(
                        lambda f: all(f.ends_of(m) for m in retried), timeout=30
                    )
                    assert [follower.ends_of(m) for m in retried] == [["turn.completed"]] * len(
                        retried
                    )
                    await follower.check_fold(client)
                    assert await pair(client) == "paired"
                    pids = [
                        b["pid"] for _, t, b in follower.types if t == "cli.state" and b.get("pid")
                    ]
                    await follower.close()
                    await client.http.aclose()
                    daemon.proc.send_signal(signal.SIGTERM)
                    assert await daemon.proc.wait() == 0
                check_log_integrity(kit.db_path)
                async with daemon_process(kit) as daemon:  # and it all replays after a restart
                    fresh = Follower("fresh", session_id)
                    await fresh.connect(daemon.client, from_start=True)
                    await fresh.check_fold(daemon.client)
                    assert fresh.types[: len(follower.types)] == follower.types
                    await fresh.close()
        finally:
            await follower.close()
            kill_leftovers(pids)


@needs_mount
async def test_a_read_only_state_directory_is_a_clear_error_then_recovers(kit: Kit) -> None:
    state = kit.state_dir
    with trio.fail_after(60):
        async with daemon_process(kit) as daemon:
            created = await daemon.client.create(kit.work_dir, "before")
            session_id = created["session"]["id"]
            follower = Follower("phone", session_id)
            await follower.connect(daemon.client, from_start=True)
            await follower.read_until(lambda f: bool(f.ends_of(created["message_id"])))
            await follower.close()
            daemon.kill()
            await daemon.proc.wait()
        with mounted("--bind", str(state), str(state)):
            subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
            argv = [
                sys.executable, "-m", "sidecode_trio", "serve", "--state-dir", str(state),
                "--port", "0", "--allow-root", str(kit.work_dir),
            ]  # fmt: skip
            done = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False
            )
            assert done.returncode == 2
            assert done.stderr.decode().strip() == (
                f"sidecode-trio: cannot use the state directory {state}: Read-only file system"
            )
        check_log_integrity(kit.db_path)  # untouched
        async with daemon_process(kit) as daemon:  # writable again: it recovers and replays
            snapshots = follower.snapshots
            await follower.connect(daemon.client)
            await follower.check_fold(daemon.client)
            assert follower.snapshots == snapshots
            again = (await daemon.client.send(session_id, "after"))["message_id"]
            await follower.read_until(lambda f: bool(f.ends_of(again)))
            assert follower.ends_of(again) == ["turn.completed"]
            await follower.close()
