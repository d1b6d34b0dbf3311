"""What the installed ``claude`` CLI can do, read from its ``--version`` and ``--help``.

The parsing is pure (:func:`parse_version`, :func:`parse_help`, :func:`support_from`); the runner
(:class:`CLIProbe`) runs the two commands in a worker thread and caches the answer per binary:
the key is the resolved path with its size and modification time, so upgrading Claude Code in
place is noticed without probing on every request. Today the probe answers one question: does
this CLI have ``--remote-control [name]`` (Claude Code's own Remote Control mode, which the
daemon uses to mirror a local session to claude.ai on demand)?
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import trio

REMOTE_CONTROL: Final = "--remote-control"
NAME_PREFIX: Final = "--remote-control-session-name-prefix"
PROBE_TIMEOUT: Final = 20.0  # seconds for each of --version and --help

_VERSION_RE: Final = re.compile(r"\b(\d+\.\d+\.\d+[\w.+-]*)")
_FLAG_RE: Final = re.compile(r"(--?[A-Za-z0-9][\w-]*)(?:[ =]([\[<][^\]>]*[\]>]))?")
_SECTION_RE: Final = re.compile(r"^[A-Z][\w ]*:\s*$")


@attrs.frozen
class CLISupport:
    """The probe's answer for one binary."""

    path: str  #: the resolved executable ("" when it was not found)
    version: str | None = None
    remote_control: bool = False  #: ``--remote-control [name]`` is listed in ``--help``
    remote_control_name: bool = False  #: the flag takes a session name
    name_prefix: bool = False  #: ``--remote-control-session-name-prefix`` is listed
    error: str = ""  #: why the probe could not tell (not found, failed to run)
    probed_at: float = 0.0

    def status(self) -> dict[str, Any]:
        """The part of ``/v1/status`` and ``doctor`` about the CLI."""
        return {
            "path": self.path or None,
            "version": self.version,
            "remote_control": self.remote_control,
            "remote_control_name": self.remote_control_name,
            "error": self.error or None,
            "probed_at": self.probed_at,
        }


def parse_version(text: str) -> str | None:
    """``2.1.329 (Claude Code)`` -> ``2.1.329``; None when there is no version number."""
    found = _VERSION_RE.search(text)
    return found.group(1) if found else None


def parse_help(text: str) -> dict[str, str | None]:
    """The flags listed under ``Options:`` in commander-style help, each with its argument hint
    (``[name]`` optional, ``<prefix>`` required, None for a switch)."""
    flags: dict[str, str | None] = {}
    in_options = False
    for line in text.splitlines():
        if _SECTION_RE.match(line):
            in_options = line.strip().lower() == "options:"
            continue
        stripped = line.lstrip()
        # an option's own line starts with a dash after a short indent; descriptions and their
        # continuation lines start with a word, or sit in the far right column
        if not in_options or not stripped.startswith("-") or len(line) - len(stripped) > 4:
            continue
        spec = re.split(r"\s{2,}", stripped, maxsplit=1)[0]
        for part in spec.split(","):
            match = _FLAG_RE.match(part.strip())
            if match:
                flags[match.group(1)] = match.group(2)
    return flags


def support_from(path: str, version_output: str, help_output: str, now: float) -> CLISupport:
    flags = parse_help(help_output)
    hint = flags.get(REMOTE_CONTROL)
    return CLISupport(
        path=path,
        version=parse_version(version_output),
        remote_control=REMOTE_CONTROL in flags,
        remote_control_name=hint is not None,
        name_prefix=NAME_PREFIX in flags,
        probed_at=now,
    )


Runner = Callable[[list[str], Mapping[str, str]], str]


def run_command(argv: list[str], env: Mapping[str, str]) -> str:
    """Run one informational command; its stdout, or :class:`OSError` saying why not."""
    try:
        done = subprocess.run(  # the configured claude binary, fixed arguments
            argv,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
            check=False,
            env=dict(env),
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise OSError(f"{' '.join(argv[1:])} did not answer within {PROBE_TIMEOUT:g} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        raise OSError(f"{' '.join(argv[1:])} exited with {done.returncode}: {tail[0][:200]}")
    return done.stdout


class CLIProbe:
    """Probes one configured ``claude`` (with the environment sessions get), cached per binary."""

    def __init__(
        self,
        claude: str,
        env: Mapping[str, str] | None = None,
        runner: Runner = run_command,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.claude = claude
        self._env = {**os.environ, **(env or {})}
        self._runner = runner
        self._clock = clock
        self._cache: dict[tuple[str, int, int], CLISupport] = {}
        self._last: CLISupport | None = None
        self._lock = threading.Lock()  # one probe at a time; a second caller gets its answer

    def _key(self) -> tuple[str, int, int] | None:
        path = shutil.which(self.claude, path=self._env.get("PATH"))
        if path is None:
            return None
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return os.path.realpath(path), stat.st_mtime_ns, stat.st_size

    def check(self) -> CLISupport:
        """Probe (blocking) unless this very binary was probed already."""
        with self._lock:
            key = self._key()
            if key is None:
                found = CLISupport("", error=f"{self.claude!r} not found", probed_at=self._clock())
                self._last = found
                return found
            cached = self._cache.get(key)
            if cached is None:
                cached = self._probe(key[0])
                if not cached.error:
                    self._cache = {key: cached}  # only the current binary is worth keeping
            self._last = cached
            return cached

    def _probe(self, path: str) -> CLISupport:
        try:
            version = self._runner([path, "--version"], self._env)
            helptext = self._runner([path, "--help"], self._env)
        except OSError as exc:
            return CLISupport(path, error=f"cannot run {path}: {exc}", probed_at=self._clock())
        return support_from(path, version, helptext, self._clock())

    async def check_async(self) -> CLISupport:
        return await trio.to_thread.run_sync(self.check)

    def status(self) -> dict[str, Any]:
        """The last answer, without probing (``/v1/status`` is polled; probing runs processes)."""
        if self._last is None:
            return {"probed": False, "detail": "probed when mirroring is first asked for"}
        return {"probed": True, **self._last.status()}
