"""Run the daemon as a login service: a systemd user unit on Linux, a LaunchAgent on macOS.

Without a service the daemon lives only as long as the terminal running ``sidecode-trio serve``;
close it, log out or reboot and the phone finds nothing. ``sidecode-trio service install`` writes a
service definition that runs the same ``serve`` command at login and after a crash.

The module has a pure core and a thin driver:

* the core renders the unit or plist from a frozen :class:`ServiceSpec` (the exact ``serve``
  command, the state directory, the environment captured at install: above all the ``PATH`` that
  finds ``claude``, which a service does not inherit from the login shell), parses an installed
  one back, diffs old against new, parses ``systemctl show`` / ``launchctl print`` output into a
  :class:`ServiceState`, and decides which commands to run;
* :class:`ServiceManager` runs those commands through an injectable :data:`Runner` (the real one
  is :func:`run_command`), writes and removes the file, and never decides anything itself.

State is never touched by ``uninstall``; ``--purge`` removes the state directory, and only one
that holds nothing but daemon state and no daemon is using.
"""

from __future__ import annotations

import difflib
import getpass
import json
import os
import plistlib
import re
import shutil
import subprocess
import sys
import xml.parsers.expat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import attrs

from ..errors import ServiceError
from .private import write_atomic

UNIT_NAME: Final = "sidecode-trio.service"
LABEL: Final = "com.sidecode-trio.daemon"  #: the LaunchAgent's label
CAPTURED_ENV: Final = ("PATH", "PYTHONPATH")  #: copied into the service at install, when set
STOP_GRACE: Final = 30  #: seconds between SIGTERM and SIGKILL: running turns end cleanly
#: files a daemon state directory may hold; ``--purge`` refuses a directory with anything else
STATE_NAMES: Final = re.compile(
    r"^(token|tls|config\.toml|daemon\.(json|lock)|\.[\w.-]+\.tmp"
    r"|[\w.-]+\.(sqlite3(-wal|-shm|-journal)?|key|json|pem))$"
)

System = Literal["linux", "darwin"]


# -- the spec and the host -----------------------------------------------------------------


@attrs.frozen
class ServiceSpec:
    """Everything the service runs, decided once at install."""

    argv: tuple[str, ...]  #: the full ``serve`` command, absolute paths only
    state_dir: Path
    env: tuple[tuple[str, str], ...]  #: (name, value), sorted
    log_file: Path  #: where launchd writes stdout/stderr (systemd uses the journal)


@attrs.frozen
class Host:
    """Where the service files live and which service manager runs them."""

    system: System
    home: Path
    uid: int
    user: str
    config_home: Path  #: $XDG_CONFIG_HOME (systemd looks for user units under it)

    @classmethod
    def current(cls, environ: Mapping[str, str] | None = None) -> Host:
        env = os.environ if environ is None else environ
        system: System
        if sys.platform == "darwin":
            system = "darwin"
        elif sys.platform == "linux":
            system = "linux"
        else:
            raise ServiceError(f"'service' supports Linux (systemd) and macOS, not {sys.platform}")
        home = Path(env.get("HOME") or Path.home())
        return cls(
            system=system,
            home=home,
            uid=os.getuid(),
            user=getpass.getuser(),
            config_home=Path(env.get("XDG_CONFIG_HOME") or home / ".config"),
        )

    @property
    def service_file(self) -> Path:
        if self.system == "linux":
            return self.config_home / "systemd" / "user" / UNIT_NAME
        return self.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"

    @property
    def log_file(self) -> Path:
        return self.home / "Library" / "Logs" / "sidecode-trio.log"

    @property
    def target(self) -> str:
        """launchd's name for the agent."""
        return f"gui/{self.uid}/{LABEL}"


def make_spec(
    host: Host,
    state_dir: Path,
    serve_flags: Sequence[str],
    environ: Mapping[str, str],
    python: str = sys.executable,
) -> ServiceSpec:
    """The spec for ``python -m sidecode_trio serve --state-dir STATE_DIR *serve_flags``.

    The interpreter (not a console script) is named so that ``pip install -U`` in the same
    environment is what the next ``service restart`` runs.
    """
    for arg in serve_flags:
        if "\n" in arg or "\0" in arg:
            raise ServiceError(f"a serve flag holds a line break: {arg!r}")
    env = tuple(sorted((k, environ[k]) for k in CAPTURED_ENV if environ.get(k)))
    for name, value in env:
        if "\n" in value or "\0" in value:
            raise ServiceError(f"${name} holds a line break; a service cannot carry it")
    argv: tuple[str, ...] = (
        os.path.abspath(python),
        "-m",
        "sidecode_trio",
        "serve",
        "--state-dir",
        str(state_dir),
    )
    argv += tuple(serve_flags)
    return ServiceSpec(argv=argv, state_dir=state_dir, env=env, log_file=host.log_file)


# -- systemd: render and parse -------------------------------------------------------------

_PLAIN_WORD = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")


def _quote_word(word: str) -> str:
    """One ExecStart word, as systemd splits and unescapes it (``%`` and ``$`` are literal)."""
    if not _PLAIN_WORD.match(word):
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word.replace("%", "%%").replace("$", "$$")


def _quote_env(name: str, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{name}={escaped}"'


def render_unit(spec: ServiceSpec) -> str:
    """The systemd user unit for ``spec``; the same spec always gives the same text."""
    lines = [
        "# Written by 'sidecode-trio service install'; 'sidecode-trio service uninstall' removes",
        "# it (and keeps the state directory). Re-run install rather than editing this file.",
        "[Unit]",
        "Description=sidecode-trio: drive Claude Code sessions from a phone or a watch",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(_quote_word(w) for w in spec.argv),
        *(f"Environment={_quote_env(k, v)}" for k, v in spec.env),
        "Restart=on-failure",
        "RestartSec=2",
        # SIGTERM to the daemon only: it stops its claude processes itself, so running turns end
        # with a clean daemon_stopped instead of the CLI dying under them.
        "KillMode=mixed",
        f"TimeoutStopSec={STOP_GRACE}",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as ``{section: {key: [values...]}}`` (a key may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if not sep or current is None:
            raise ServiceError(f"unit file line {number} is not 'Key=value' in a section: {raw!r}")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def split_words(value: str) -> list[str]:
    """Split an ExecStart/Environment value the way systemd does for what we write: words by
    whitespace, double or single quotes, backslash escapes, ``%%``/``$$`` for ``%``/``$``."""
    value = value.replace("%%", "%").replace("$$", "$")
    words: list[str] = []
    word: list[str] = []
    in_word = False
    quote: str | None = None
    chars = iter(value)
    for char in chars:
        if quote is not None:
            if char == "\\" and quote == '"':
                word.append(next(chars, "\\"))
            elif char == quote:
                quote = None
            else:
                word.append(char)
        elif char.isspace():
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
        else:
            in_word = True
            if char in "\"'":
                quote = char
            elif char == "\\":
                word.append(next(chars, "\\"))
            else:
                word.append(char)
    if quote is not None:
        raise ServiceError(f"unbalanced quote in {value!r}")
    if in_word:
        words.append("".join(word))
    return words


def spec_from_unit(text: str, host: Host) -> ServiceSpec:
    """The spec an installed unit runs (so uninstall and status know its state directory)."""
    service = parse_unit(text).get("Service", {})
    if not service.get("ExecStart"):
        raise ServiceError(f"{host.service_file} has no ExecStart")
    argv = tuple(split_words(service["ExecStart"][-1]))
    env: list[tuple[str, str]] = []
    for value in service.get("Environment", []):
        for assignment in split_words(value):
            name, _, val = assignment.partition("=")
            env.append((name, val))
    return ServiceSpec(
        argv=argv, state_dir=_state_dir_of(argv), env=tuple(sorted(env)), log_file=host.log_file
    )


def _state_dir_of(argv: Sequence[str]) -> Path:
    for i, arg in enumerate(argv):
        if arg == "--state-dir" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--state-dir="):
            return Path(arg.partition("=")[2])
    raise ServiceError("the installed service names no --state-dir; reinstall it")


# -- launchd: render and parse -------------------------------------------------------------


def plist_dict(spec: ServiceSpec) -> dict[str, Any]:
    return {
        "Label": LABEL,
        "ProgramArguments": list(spec.argv),
        "EnvironmentVariables": dict(spec.env),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # restart after a crash, not after a clean stop
        "ThrottleInterval": 5,
        "ExitTimeOut": STOP_GRACE,
        "ProcessType": "Interactive",  # not throttled like a background job while a turn runs
        "StandardOutPath": str(spec.log_file),
        "StandardErrorPath": str(spec.log_file),
    }


def render_plist(spec: ServiceSpec) -> str:
    return plistlib.dumps(plist_dict(spec), sort_keys=True).decode()


def spec_from_plist(text: str, host: Host) -> ServiceSpec:
    try:
        data = plistlib.loads(text.encode())
        argv = tuple(str(a) for a in data["ProgramArguments"])
        env = tuple(
            sorted((str(k), str(v)) for k, v in data.get("EnvironmentVariables", {}).items())
        )
        log_file = Path(data.get("StandardOutPath") or host.log_file)
    except (
        plistlib.InvalidFileException,
        xml.parsers.expat.ExpatError,
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
    ) as exc:
        raise ServiceError(
            f"{host.service_file} is not a plist this command wrote: {exc}"
        ) from None
    return ServiceSpec(argv=argv, state_dir=_state_dir_of(argv), env=env, log_file=log_file)


def render(spec: ServiceSpec, host: Host) -> str:
    return render_unit(spec) if host.system == "linux" else render_plist(spec)


def parse_installed(text: str, host: Host) -> ServiceSpec:
    return spec_from_unit(text, host) if host.system == "linux" else spec_from_plist(text, host)


def diff(old: str | None, new: str, path: Path) -> str:
    """A unified diff of what install changes ('' when nothing does)."""
    before = (old or "").splitlines(keepends=True)
    after = new.splitlines(keepends=True)
    label = str(path)
    return "".join(
        difflib.unified_diff(before, after, f"{label} (installed)" if old else "/dev/null", label)
    )


# -- the service manager's view -------------------------------------------------------------


@attrs.frozen
class ServiceState:
    """What ``status`` and ``doctor`` show about the service."""

    installed: bool  #: the unit / plist file exists
    loaded: bool  #: the service manager knows it (launchd: bootstrapped)
    enabled: bool  #: it starts at login
    running: bool
    pid: int | None
    last_exit: str | None  #: e.g. "exited 0", "killed by signal 9"; None if it never exited
    detail: str = ""  #: the manager's own word when it is not running (e.g. "failed")


STATUS_PROPERTIES: Final = (
    "LoadState,UnitFileState,ActiveState,SubState,MainPID,ExecMainCode,ExecMainStatus,Result"
)
_CLD: Final = {"1": "exited", "2": "killed by signal", "3": "dumped core on signal"}


def parse_systemctl_show(text: str, installed: bool) -> ServiceState:
    """``systemctl --user show -p STATUS_PROPERTIES`` output as a :class:`ServiceState`."""
    props = dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)
    pid = int(props.get("MainPID") or 0) or None
    code = props.get("ExecMainCode", "0")
    last_exit = f"{_CLD[code]} {props.get('ExecMainStatus', '?')}" if code in _CLD else None
    active = props.get("ActiveState", "inactive")
    detail = "" if active == "active" else f"{active} ({props.get('SubState', '?')})"
    if props.get("Result") not in (None, "", "success"):
        detail += f"; last result: {props['Result']}"
    return ServiceState(
        installed=installed and props.get("LoadState") != "not-found",
        loaded=props.get("LoadState") == "loaded",
        enabled=props.get("UnitFileState") in ("enabled", "enabled-runtime", "linked"),
        running=active == "active" and props.get("SubState") == "running",
        pid=pid,
        last_exit=last_exit,
        detail=detail,
    )


def parse_launchctl_print(text: str | None, installed: bool, disabled: bool) -> ServiceState:
    """``launchctl print gui/UID/LABEL`` output (None: the agent is not loaded)."""
    if text is None:
        detail = "not loaded" if installed else ""
        return ServiceState(installed, False, installed and not disabled, False, None, None, detail)
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(" = ")
        if sep and line.startswith("\t") and not line.startswith("\t\t"):
            fields.setdefault(key, value.strip())
    pid = int(fields["pid"]) if fields.get("pid", "").isdigit() else None
    state = fields.get("state", "unknown")
    raw_exit = fields.get("last exit code", "")
    last_exit = None if not raw_exit or "never" in raw_exit else f"exited {raw_exit}"
    return ServiceState(
        installed=installed,
        loaded=True,
        enabled=installed and not disabled,
        running=state == "running",
        pid=pid,
        last_exit=last_exit,
        detail="" if state == "running" else state,
    )


def launchd_disabled(text: str) -> bool:
    """Is our label disabled in ``launchctl print-disabled gui/UID`` output?"""
    match = re.search(rf'"{re.escape(LABEL)}"\s*=>\s*(\w+)', text)
    return bool(match) and match.group(1) in ("disabled", "true")  # type: ignore[union-attr]


# -- decisions -------------------------------------------------------------------------------

Command = tuple[str, ...]


def install_commands(host: Host, changed: bool, state: ServiceState) -> list[Command]:
    """What makes the installed file the running service: nothing is restarted unless the file
    changed, so a second install with the same flags leaves the daemon (and its turns) alone."""
    if host.system == "linux":
        unit = UNIT_NAME
        cmds: list[Command] = [("systemctl", "--user", "daemon-reload")] if changed else []
        cmds.append(("systemctl", "--user", "enable", unit))
        verb = "restart" if changed and state.running else "start"
        cmds.append(("systemctl", "--user", verb, unit))
        return cmds
    domain = f"gui/{host.uid}"
    cmds = [("launchctl", "enable", host.target)]
    if not state.loaded:
        cmds.append(("launchctl", "bootstrap", domain, str(host.service_file)))
    elif changed:  # launchd reads the plist only when it is bootstrapped
        cmds.append(("launchctl", "bootout", host.target))
        cmds.append(("launchctl", "bootstrap", domain, str(host.service_file)))
    else:
        cmds.append(("launchctl", "kickstart", host.target))  # starts it if it is stopped
    return cmds


def stop_commands(host: Host) -> list[Command]:
    """Stop the service and keep it from starting at login (before its file is removed)."""
    if host.system == "linux":
        return [("systemctl", "--user", "disable", "--now", UNIT_NAME)]
    return [("launchctl", "bootout", host.target)]


def after_remove_commands(host: Host) -> list[Command]:
    if host.system == "linux":
        return [
            ("systemctl", "--user", "daemon-reload"),
            ("systemctl", "--user", "reset-failed", UNIT_NAME),
        ]
    return []


def restart_command(host: Host) -> Command:
    if host.system == "linux":
        return ("systemctl", "--user", "restart", UNIT_NAME)
    return ("launchctl", "kickstart", "-k", host.target)


def logs_command(host: Host, spec: ServiceSpec, lines: int, follow: bool) -> Command:
    if host.system == "linux":
        cmd: Command = ("journalctl", "--user", "-u", UNIT_NAME, "-n", str(lines), "--no-pager")
        return (*cmd, "-f") if follow else cmd
    return ("tail", "-n", str(lines), *(("-F",) if follow else ()), str(spec.log_file))


def daemon_pid(state_dir: Path) -> int | None:
    """The pid of a live daemon on ``state_dir`` (from its daemon.json), if there is one."""
    try:
        pid = int(json.loads((state_dir / "daemon.json").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, someone else's
    return pid


def conflict(state_dir: Path, daemon: int | None, state: ServiceState) -> str | None:
    """Why a service and a foreground daemon would fight over ``state_dir`` (None: they don't).

    The daemon locks its state directory, so the loser exits and ``Restart=``/``KeepAlive``
    brings it back to fail again, every few seconds, for as long as both are there."""
    if daemon is None or daemon == state.pid:
        return None
    return (
        f"a daemon not run by the service (pid {daemon}) is using {state_dir}: stop it "
        "(Ctrl-C in its terminal) so the service can run there"
    )


# -- the driver ------------------------------------------------------------------------------


@attrs.frozen
class Completed:
    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    def __call__(self, argv: Sequence[str], *, capture: bool = True) -> Completed: ...


def run_command(argv: Sequence[str], *, capture: bool = True) -> Completed:
    """Run a service manager command; ``capture=False`` gives it this terminal (logs -f)."""
    if shutil.which(argv[0]) is None:
        raise ServiceError(f"{argv[0]} not found on PATH: 'service' needs it on this system")
    try:
        done = subprocess.run(
            list(argv),
            capture_output=capture,
            text=True,
            check=False,
            timeout=60 if capture else None,
        )
    except subprocess.TimeoutExpired:
        raise ServiceError(f"'{' '.join(argv)}' did not answer within 60 s") from None
    except KeyboardInterrupt:
        return Completed(130, "", "")
    return Completed(done.returncode, done.stdout or "", done.stderr or "")


@attrs.frozen
class InstallResult:
    path: Path
    changed: bool
    diff: str
    commands: list[Command]
    warnings: list[str]


@attrs.frozen
class Status:
    path: Path
    state: ServiceState
    spec: ServiceSpec | None
    daemon_pid: int | None
    conflict: str | None
    linger: bool | None  #: Linux: does the user manager run while logged out (None: unknown)
    user: str


class ServiceManager:
    """Writes, removes and drives the service through ``runner``; decisions are the core's."""

    def __init__(self, host: Host, runner: Runner = run_command) -> None:
        self.host = host
        self.runner = runner

    def _run(self, argv: Command, *, check: bool = True) -> Completed:
        done = self.runner(argv)
        if check and done.returncode != 0:
            why = (done.stderr or done.stdout).strip()[:500]
            hint = ""
            if "bus" in why.lower() and self.host.system == "linux":
                hint = (
                    " (no systemd user manager reachable: log in graphically or over ssh with "
                    "'loginctl enable-linger', or run 'sidecode-trio serve' in the foreground)"
                )
            raise ServiceError(f"'{' '.join(argv)}' failed ({done.returncode}): {why}{hint}")
        return done

    def installed_text(self) -> str | None:
        try:
            return self.host.service_file.read_text()
        except FileNotFoundError:
            return None

    def installed_spec(self) -> ServiceSpec | None:
        text = self.installed_text()
        return None if text is None else parse_installed(text, self.host)

    def state(self) -> ServiceState:
        installed = self.host.service_file.exists()
        if self.host.system == "linux":
            query = ("systemctl", "--user", "show", UNIT_NAME, f"--property={STATUS_PROPERTIES}")
            try:
                done = self._run(query)
            except ServiceError:
                if installed:
                    raise
                # nothing installed: a machine without a user manager has nothing to report
                return ServiceState(False, False, False, False, None, None, "")
            return parse_systemctl_show(done.stdout, installed)
        printed = self._run(("launchctl", "print", self.host.target), check=False)
        disabled = self._run(("launchctl", "print-disabled", f"gui/{self.host.uid}"), check=False)
        text = printed.stdout if printed.returncode == 0 else None
        return parse_launchctl_print(text, installed, launchd_disabled(disabled.stdout))

    def install(self, spec: ServiceSpec, *, dry_run: bool = False) -> InstallResult:
        old = self.installed_text()
        new = render(spec, self.host)
        state = self.state()
        problem = conflict(spec.state_dir, daemon_pid(spec.state_dir), state)
        if problem:
            raise ServiceError(f"not installing a second daemon: {problem}")
        changed = old != new
        commands = install_commands(self.host, changed, state)
        warnings = []
        path = dict(spec.env).get("PATH")
        if shutil.which(_claude_of(spec.argv), path=path) is None:
            warnings.append(
                f"{_claude_of(spec.argv)!r} is not on the captured PATH: sessions will not start "
                "(pass --claude /path/to/claude after '--', or fix PATH and install again)"
            )
        result = InstallResult(
            self.host.service_file,
            changed,
            diff(old, new, self.host.service_file),
            commands,
            warnings,
        )
        if dry_run:
            return result
        if changed:
            self.host.service_file.parent.mkdir(parents=True, exist_ok=True)
            if self.host.system == "darwin":
                spec.log_file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.host.service_file, new)
        try:
            for command in commands:
                self._run(command)
        except ServiceError:
            if changed:  # leave the file as it was, so a failed install changes nothing on disk
                if old is None:
                    self.host.service_file.unlink()
                else:
                    write_atomic(self.host.service_file, old)
            raise
        return result

    def uninstall(self, *, purge: bool = False, state_dir: Path | None = None) -> list[str]:
        """Stop and remove the service; with ``purge`` also its state directory. Returns what
        was done, one line each."""
        done: list[str] = []
        try:
            spec = self.installed_spec()
        except ServiceError:  # edited by hand beyond reading: still ours to remove
            spec = None
        if self.host.service_file.exists():
            for command in stop_commands(self.host):
                self._run(command, check=False)  # not loaded / not running is fine
            self.host.service_file.unlink()
            for command in after_remove_commands(self.host):
                self._run(command, check=False)
            done.append(f"removed {self.host.service_file}")
        target = state_dir or (spec.state_dir if spec else None)
        if purge:
            if target is None:
                raise ServiceError("nothing to purge: no service is installed (pass --state-dir)")
            purge_state_dir(target)
            done.append(f"deleted the state directory {target}")
            if self.host.system == "darwin" and spec is not None and spec.log_file.exists():
                spec.log_file.unlink()
        elif target is not None and target.exists():
            done.append(f"kept the state directory {target} (sessions, identity, devices)")
        return done

    def restart(self) -> None:
        if not self.host.service_file.exists():
            raise ServiceError("no service is installed (run 'sidecode-trio service install')")
        self._run(restart_command(self.host))

    def status(self) -> Status:
        spec = self.installed_spec()
        state = self.state()
        pid = daemon_pid(spec.state_dir) if spec else None
        linger = None
        if self.host.system == "linux" and shutil.which("loginctl"):
            done = self.runner(("loginctl", "show-user", self.host.user, "--property=Linger"))
            if done.returncode == 0 and "Linger=" in done.stdout:
                linger = "Linger=yes" in done.stdout
        problem = conflict(spec.state_dir, pid, state) if spec else None
        return Status(self.host.service_file, state, spec, pid, problem, linger, self.host.user)

    def logs(self, lines: int, follow: bool) -> int:
        spec = self.installed_spec()
        if spec is None:
            raise ServiceError("no service is installed (run 'sidecode-trio service install')")
        return self.runner(logs_command(self.host, spec, lines, follow), capture=False).returncode


def _claude_of(argv: Sequence[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--claude" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--claude="):
            return arg.partition("=")[2]
    return "claude"


def purge_state_dir(state_dir: Path) -> None:
    """Delete a daemon's state directory: refused while a daemon uses it, or when it holds
    anything a daemon did not put there (a mistyped --state-dir must not delete a home)."""
    if not state_dir.exists():
        return
    if daemon_pid(state_dir) is not None:
        raise ServiceError(f"a daemon is still running on {state_dir}; stop it before --purge")
    if not (state_dir / "daemon.lock").exists() and not (state_dir / "token").exists():
        raise ServiceError(f"{state_dir} does not look like a sidecode-trio state directory")
    strangers = [p.name for p in state_dir.iterdir() if not STATE_NAMES.match(p.name)]
    if strangers:
        raise ServiceError(
            f"not deleting {state_dir}: it holds files the daemon did not write "
            f"({', '.join(sorted(strangers)[:5])}); delete it by hand if you mean it"
        )
    shutil.rmtree(state_dir)
