"""``sidecode-trio service install | uninstall | status | restart | logs`` and doctor's part.

The command-line face of :mod:`sidecode_trio.host.service`: turns the flags into a
:class:`~sidecode_trio.host.service.ServiceSpec`, asks the manager, prints what happened.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from .config import default_state_dir
from .errors import ServiceError
from .host.service import (
    Host,
    Runner,
    ServiceManager,
    ServiceSpec,
    Status,
    conflict,
    daemon_pid,
    make_spec,
    run_command,
)
from .rtc.auth import redact, split_url

#: serve flags naming a path: made absolute at install (the service runs elsewhere, later)
PATH_FLAGS = frozenset(
    {"allowed_roots", "config", "ready_file", "turn_secret_file", "rendezvous_token_file"}
)


def serve_flags(
    serve_parser: argparse.ArgumentParser, tokens: list[str]
) -> tuple[Path | None, list[str]]:
    """Check ``tokens`` as ``serve`` flags and write them back canonically: long names, absolute
    paths, defaults left out. Returns (the --state-dir among them, the other flags)."""
    if tokens[:1] == ["--"]:
        tokens = tokens[1:]
    parsed = serve_parser.parse_args(tokens)  # a bad flag exits 2 with serve's usage, as serve does
    url = getattr(parsed, "rendezvous", None)
    if url and split_url(url)[1] is not None:
        # the unit's command line is printed here (its diff) and is serve's argv at every login,
        # which any local user reads in the process list: the secret goes in a file instead
        raise ServiceError(
            f"--rendezvous {redact(url)}: credentials in the URL would be in the service's "
            "command line, which other users can read: put them (token, or user:password) in a "
            "0600 file and pass --rendezvous-token-file FILE"
        )
    out: list[str] = []
    for action in serve_parser._actions:
        if not action.option_strings or action.dest in ("help", "state_dir"):
            continue
        value = getattr(parsed, action.dest, None)
        if value is None or value == action.default:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            out.append(flag if value else action.option_strings[-1])
        elif action.nargs == 0:
            out.append(flag)
        else:
            for item in value if isinstance(value, list) else [value]:
                out += [flag, _absolute(action.dest, str(item))]
    state_dir = parsed.state_dir.expanduser().resolve() if parsed.state_dir else None
    return state_dir, out


def _absolute(dest: str, value: str) -> str:
    if dest in PATH_FLAGS or (dest == "claude" and ("/" in value or value.startswith("~"))):
        return str(Path(value).expanduser().resolve())
    return value


def run(
    args: argparse.Namespace,
    serve_parser: argparse.ArgumentParser,
    runner: Runner = run_command,
    environ: Mapping[str, str] | None = None,
) -> int:
    env = os.environ if environ is None else environ
    host = Host.current(env)
    manager = ServiceManager(host, runner)
    state_flag = args.state_dir.expanduser().resolve() if args.state_dir else None
    if args.service_command == "install":
        in_flags, flags = serve_flags(serve_parser, list(args.serve_args))
        if state_flag and in_flags and state_flag != in_flags:
            raise ServiceError("--state-dir given twice with different directories")
        state_dir = state_flag or in_flags or default_state_dir().resolve()
        return _install(manager, make_spec(host, state_dir, flags, env), args.dry_run)
    if args.service_command == "uninstall":
        for line in manager.uninstall(purge=args.purge, state_dir=state_flag):
            print(line)
        if not manager.host.service_file.exists() and not args.purge:
            print("the service is not installed")
        return 0
    if args.service_command == "restart":
        manager.restart()
        print("restarted: every session resumes where it was ('sidecode-trio service status')")
        return 0
    if args.service_command == "logs":
        return manager.logs(args.lines, args.follow)
    return _status(manager.status(), args.json)


def _install(manager: ServiceManager, spec: ServiceSpec, dry_run: bool) -> int:
    result = manager.install(spec, dry_run=dry_run)
    print(result.diff or f"{result.path} is already up to date")
    verb = "would run" if dry_run else "ran"
    for command in result.commands:
        print(f"{verb}: {' '.join(command)}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    if dry_run:
        return 0
    print(f"installed: the daemon now runs at login on {spec.state_dir}")
    print(_pair_hint(spec.state_dir))
    if manager.host.system == "linux":
        print(_linger_hint(manager.host.user))
    return 0


def _pair_hint(state_dir: Path) -> str:
    flag = "" if state_dir == default_state_dir().resolve() else f" --state-dir {state_dir}"
    return (
        f"a service shows no pairing QR code: pair a phone or watch with 'sidecode-trio pair{flag}'"
    )


def _linger_hint(user: str) -> str:
    return (
        "it stops when you log out; to keep it running while logged out (and from boot): "
        f"loginctl enable-linger {user}"
    )


def _status(status: Status, as_json: bool) -> int:
    state = status.state
    if as_json:
        body: dict[str, Any] = {
            "path": str(status.path),
            **attrs.asdict(state),
            "state_dir": str(status.spec.state_dir) if status.spec else None,
            "command": list(status.spec.argv) if status.spec else None,
            "daemon_pid": status.daemon_pid,
            "conflict": status.conflict,
            "linger": status.linger,
        }
        print(json.dumps(body, indent=2))
        return 0 if status.conflict is None else 1
    if not state.installed:
        print(f"not installed ({status.path}); 'sidecode-trio service install' runs it at login")
        return 0
    running = f"running (pid {state.pid})" if state.running else f"not running: {state.detail}"
    print(f"service:   {status.path}")
    print(f"           {'enabled' if state.enabled else 'NOT enabled'} at login, {running}")
    print(f"last exit: {state.last_exit or 'never exited'}")
    if status.spec is not None:
        print(f"state dir: {status.spec.state_dir}")
        print(f"command:   {' '.join(status.spec.argv)}")
        print(_pair_hint(status.spec.state_dir))
    if status.conflict:
        print(f"PROBLEM: {status.conflict}")
    if status.linger is False:
        print(_linger_hint(status.user))
    return 0 if status.conflict is None else 1


def doctor_part(state_dir: Path, runner: Runner = run_command) -> dict[str, Any]:
    """doctor's ``service`` line: installed, enabled, running, last exit, and whether a
    foreground daemon and the service fight over ``state_dir``."""
    foreground = daemon_pid(state_dir)
    try:
        manager = ServiceManager(Host.current(), runner)
        spec = manager.installed_spec()
    except ServiceError as exc:
        return {"ok": True, "installed": False, "detail": exc.message}
    part: dict[str, Any] = {"ok": True, "installed": spec is not None}
    if spec is None:
        if foreground is not None:
            part["foreground_pid"] = foreground
            part["detail"] = (
                f"a daemon runs in the foreground (pid {foreground}); "
                "'sidecode-trio service install' keeps one running at login"
            )
        return part
    try:
        state = manager.state()
    except ServiceError as exc:
        return part | {"ok": False, "detail": exc.message}
    part |= {
        "enabled": state.enabled,
        "running": state.running,
        "pid": state.pid,
        "last_exit": state.last_exit,
        "service_state_dir": str(spec.state_dir),
    }
    if spec.state_dir.resolve() != state_dir.resolve():
        part["detail"] = f"the service runs on another state directory, {spec.state_dir}"
        return part
    problem = conflict(state_dir, foreground, state)
    if problem:
        return part | {"ok": False, "foreground_pid": foreground, "detail": problem}
    if not state.running:
        part["detail"] = f"installed but not running: {state.detail or 'stopped'}"
    return part
