"""No ``claude`` outlives its daemon: a watchdog pipe at spawn, and a reaper at start-up.

**The leash.** Each CLI runs in its own session (its own process group, so a tool's children die
with it), which also means nothing kills it when the daemon dies. The daemon holds the write end
of one pipe that nobody ever writes to; each CLI is started through ``/bin/sh`` which forks a
watcher holding the read end, then ``exec``\\s the CLI (same pid, same process group). When the
daemon dies for any reason (``kill -9``, OOM, a crash) the kernel closes the write end, the
watcher's ``read`` sees EOF and SIGKILLs the whole group: the CLI and its tools. Portable (Linux
and macOS); ``PR_SET_PDEATHSIG`` is not used because it fires on the death of the *thread* that
forked, and Trio forks from a worker thread that exits after a few idle seconds.

The watcher's stdio is ``/dev/null`` so it never holds the CLI's pipes open; when the CLI exits
normally the daemon's last ``killpg(SIGKILL)`` (``process.py``) ends the watcher too.

**The reaper.** The daemon also records each CLI it starts (pid, the kernel's start time for that
pid, the session) in ``<state>/cli/<session>.json``. At start-up, before any session resumes,
every recorded process that is still *that* process (same start time, and its argv names the
session) is SIGKILLed with its group; a pid since reused by anything else is left alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import attrs
import trio

log = logging.getLogger(__name__)

SHELL: Final = "/bin/sh"
HAS_PROC: Final = os.path.exists("/proc/self/stat")  # Linux; elsewhere (macOS) ps(1) tells
REAP_WAIT: Final = 5.0  # seconds a killed orphan has to disappear before start-up goes on

# $0 is a label; "$@" is the CLI's argv. The watcher reads the leash through /dev/fd/N (POSIX
# shells only redirect single-digit descriptors; the inherited one may be any number).
_SCRIPT: Final = (
    '{ trap "" TERM INT HUP; read -r _ </dev/fd/%d; kill -s KILL 0; } '
    "</dev/null >/dev/null 2>&1 &\n"
    'exec "$@"\n'
)


class Leash:
    """The daemon's end of the watchdog pipe: made once per process, held until it exits."""

    _instance: Leash | None = None

    def __init__(self) -> None:
        # os.pipe() descriptors are not inheritable: only pass_fds hands the read end on, and
        # no child ever gets the write end (which would keep the pipe alive after we die).
        self.read_fd, self._write_fd = os.pipe()

    @classmethod
    def get(cls) -> Leash:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run on the leash: same pid, same argv once the shell has exec'd."""
        return [SHELL, "-c", _SCRIPT % self.read_fd, "sidecode-leash", *argv]


def executable(name: str, env_path: str | None) -> str | None:
    """Where ``name`` is, as ``exec`` would find it; None if it cannot be run."""
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name, path=env_path)


# -- the processes, as the system shows them ----------------------------------------------------


@attrs.frozen
class Stamp:
    """What identifies one process beyond its (reusable) pid."""

    start: str  #: the kernel's start time of the process (boot ticks on Linux, ``lstart``)
    argv: tuple[str, ...]


def stamp(pid: int) -> Stamp | None:
    """The start time and argv of ``pid`` now; None if there is no such (live) process."""
    if pid <= 0:
        return None
    return _stamp_proc(pid) if HAS_PROC else _stamp_ps(pid)


def _stamp_proc(pid: int) -> Stamp | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": state is field 3
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None  # a zombie has no argv and runs nothing
    argv = tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    return Stamp(fields[19], argv)  # field 22: starttime


def _stamp_ps(pid: int) -> Stamp | None:
    try:
        start = subprocess.run(
            ["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, check=False
        )
        command = subprocess.run(
            ["ps", "-ww", "-o", "command=", "-p", str(pid)],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    if start.returncode != 0 or not start.stdout.strip():
        return None
    return Stamp(start.stdout.strip(), tuple(command.stdout.split()))


def names_session(argv: Sequence[str], session_id: str) -> bool:
    """Whether ``argv`` is a CLI started for ``session_id`` (the daemon's own flag forms)."""
    return f"--session-id={session_id}" in argv or f"--resume={session_id}" in argv


# -- the records --------------------------------------------------------------------------------


@attrs.frozen
class Record:
    session_id: str
    pid: int
    start: str


class Records:
    """One file per running CLI under ``directory`` (0700; files 0600)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, session_id: str) -> Path:
        return self.directory / f"{session_id}.json"

    def add(self, session_id: str, pid: int) -> None:
        """Record a CLI just started. Best effort: the leash still holds if this fails."""
        found = stamp(pid)
        if found is None:
            return  # already gone
        data = json.dumps({"session_id": session_id, "pid": pid, "start": found.start})
        path = self._path(session_id)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            # no fsync: what would lose the file (the host going down) ends the CLI too
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot record claude pid %d for %s: %s", pid, session_id, exc)

    def remove(self, session_id: str, pid: int) -> None:
        path = self._path(session_id)
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == pid:
                path.unlink()

    def all(self) -> list[Record]:
        found: list[Record] = []
        try:
            paths = sorted(self.directory.glob("*.json"))
        except OSError:
            return found
        for path in paths:
            try:
                data = json.loads(path.read_text())
                found.append(Record(str(data["session_id"]), int(data["pid"]), str(data["start"])))
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("ignoring an unreadable claude record %s", path)
        return found

    def clear(self, record: Record) -> None:
        with contextlib.suppress(OSError):
            self._path(record.session_id).unlink()


def is_ours(record: Record, found: Stamp | None) -> bool:
    """Whether the live process ``found`` at ``record.pid`` is the CLI the record describes."""
    return (
        found is not None
        and found.start == record.start
        and names_session(found.argv, record.session_id)
    )


def _kill(pid: int) -> None:
    try:
        if os.getpgid(pid) == pid:  # it leads its own group (start_new_session): tools too
            os.killpg(pid, signal.SIGKILL)
            return
    except OSError:
        pass
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


async def reap(records: Records) -> list[Record]:
    """Kill every recorded CLI still running (only if it is that CLI), wait until each is gone,
    and clear the records. Returns the records whose process was killed."""
    killed: list[Record] = []
    for record in records.all():
        found = await trio.to_thread.run_sync(stamp, record.pid)
        if is_ours(record, found):
            log.warning(
                "stopping claude pid %d of session %s, left running by a daemon that died",
                record.pid,
                record.session_id,
            )
            _kill(record.pid)
            killed.append(record)
        records.clear(record)
    with trio.move_on_after(REAP_WAIT):
        for record in killed:  # polling another process: there is no event to wait on
            while is_ours(record, await trio.to_thread.run_sync(stamp, record.pid)):  # noqa: ASYNC110
                await trio.sleep(0.02)
    return killed
