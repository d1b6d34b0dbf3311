"""The ``sidecode-trio`` command: ``serve``, ``sessions``, ``service`` and ``doctor``.

Start-up: the arguments are parsed before anything heavy is imported, and each command imports
only what it uses (``--version`` loads no Trio, no config, no TLS; ``sessions`` talks HTTP with the
standard library; only ``serve`` loads the daemon). tests/test_startup.py holds this.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import __version__
from .defaults import DEFAULT_PORT, default_state_dir
from .errors import ConfigError, SidecodeError

TYPE_CHECKING = False  # typing itself is 10 % of --version; mypy reads this name as usual
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final


def escape(text: str) -> str:
    """:func:`.printable.escape`, imported when first needed (it loads ``logging``)."""
    from .printable import escape as printable

    return printable(text)


def _parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The command line. Every command is listed (``--help``), but only ``command``'s own flags
    are added (every command's for ``"*"``, none for None: ``--version``): adding them all
    would cost ``--version`` more than the rest of it does, and ``serve``'s WebRTC flags load
    attrs."""
    parser = argparse.ArgumentParser(
        prog="sidecode-trio",
        description="Drive Claude Code sessions from a phone or a watch.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_flags) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        if command in ("*", name):
            add_flags(sub)
    return parser


def _serve_flags(serve: argparse.ArgumentParser) -> None:
    _state_dir_flag(serve)
    serve.add_argument("--config", type=Path, help="config file (default: STATE_DIR/config.toml)")
    serve.add_argument(
        "--host", help="address to listen on (0.0.0.0 or :: for every interface; default 127.0.0.1)"
    )
    serve.add_argument(
        "--port", type=int, help=f"TCP port; 0 picks a free one (default {DEFAULT_PORT})"
    )
    serve.add_argument(
        "--claude", metavar="PATH", help="the claude CLI to run (default: claude on PATH)"
    )
    serve.add_argument(
        "--allow-root",
        metavar="DIR",
        action="append",
        dest="allowed_roots",
        help="a folder sessions may run in (repeatable; default: your home directory)",
    )
    serve.add_argument(
        "--ready-file",
        metavar="PATH",
        type=Path,
        help='write {"http": URL, "pid": N} here once listening',
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        help="stop an idle CLI after this long (default 600)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    serve.add_argument(
        "--https",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve HTTPS with the identity-signed certificate (default: when not on loopback)",
    )
    serve.add_argument(
        "--public-url",
        action="append",
        metavar="URL",
        help="where devices reach this daemon through a reverse proxy or tunnel with a real "
        "certificate, e.g. https://laptop.tailnet.ts.net (repeatable; first in pairing offers)",
    )
    serve.add_argument(
        "--quic-port",
        type=int,
        metavar="N",
        help="UDP port for WebTransport; 0 picks a free one, -1 turns it off (default: --port)",
    )
    serve.add_argument(
        "--remote-control",
        action="store_true",
        default=None,
        help="relay this account's Claude Code Remote Control sessions (uses your Claude login; "
        "off by default)",
    )
    serve.add_argument(
        "--notify-webhook",
        metavar="URL",
        help="POST a notification here when a session needs an approval, finishes or fails "
        "(e.g. https://ntfy.sh/your-topic)",
    )
    serve.add_argument(
        "--notify-format",
        choices=["auto", "ntfy", "json"],
        help="the webhook's format (default auto: ntfy when the URL's host says ntfy, else json)",
    )
    serve.add_argument(
        "--notify-details",
        choices=["full", "minimal"],
        help="full (default): the command, session title and folder; minimal: only what happened",
    )

    serve.add_argument(
        "--web-origin",
        metavar="URL",
        help="where the exported web app is hosted (sidecode-trio web export): pairing links "
        "open it there, e.g. https://you.github.io/sidecode/",
    )
    from .rtc.settings import add_flags as add_rtc_flags  # attrs: only for serve and service

    add_rtc_flags(serve)


def _pair_flags(pair: argparse.ArgumentParser) -> None:
    _state_dir_flag(pair)
    pair.add_argument(
        "--scope",
        choices=["approve", "chat", "admin"],
        default="chat",
        help="what the device may do: approve (answer, interrupt), chat (default; what the "
        "WatchCode app needs), admin",
    )
    pair.add_argument("--ttl", type=float, default=300, metavar="SECONDS", help="valid for (300)")
    pair.add_argument(
        "--watchcode",
        action="store_true",
        help="make a device for the WatchCode watch/web apps: prints the relay URL and a secret",
    )
    pair.add_argument("--name", default="WatchCode", help="the device's name (--watchcode)")
    pair.add_argument("--json", action="store_true", help="print the payload as JSON only")


def _devices_flags(devices: argparse.ArgumentParser) -> None:
    _state_dir_flag(devices)
    devices.add_argument("--json", action="store_true", help="print JSON")
    devices.add_argument("--log", action="store_true", help="show the audit log instead")
    devices.add_argument("action", nargs="?", choices=["revoke", "scope"], help="what to change")
    devices.add_argument("device_id", nargs="?", help="the device (see the list)")
    devices.add_argument("scope", nargs="?", choices=["approve", "chat", "admin"])


def _sessions_flags(sessions: argparse.ArgumentParser) -> None:
    _state_dir_flag(sessions)
    sessions.add_argument("--json", action="store_true", help="print JSON")


def _attach_flags(attach: argparse.ArgumentParser) -> None:
    _state_dir_flag(attach)
    attach.add_argument("session", help="the session's id, or a unique prefix of it")
    attach.add_argument(
        "--history", type=int, default=20, metavar="N", help="transcript items shown first (20)"
    )
    attach.add_argument(
        "--color", action=argparse.BooleanOptionalAction, help="default: when printing to a TTY"
    )


def _send_flags(send: argparse.ArgumentParser) -> None:
    _state_dir_flag(send)
    send.add_argument("session", help="the session's id, or a unique prefix of it")
    send.add_argument("text", help="the message ('-' reads it from standard input)")
    send.add_argument(
        "--wait", action="store_true", help="wait for the turn to end and print its result"
    )


def _web_flags(web: argparse.ArgumentParser) -> None:
    web_actions = web.add_subparsers(dest="web_command", required=True)
    export = web_actions.add_parser(
        "export",
        help="write the app as a static bundle for any HTTPS host (GitHub Pages, ...)",
        description="Writes the web app, as the daemon serves it, into DIR (absent, empty, or "
        "an earlier export). It holds no secret and no daemon address: devices learn their "
        "daemon from the pairing link. Then run serve --web-origin URL-OF-DIR.",
    )
    export.add_argument("dir", type=Path, help="where to write it")


def _doctor_flags(doctor: argparse.ArgumentParser) -> None:
    _state_dir_flag(doctor)
    doctor.add_argument(
        "--claude", metavar="PATH", help="the claude CLI to check (default: claude on PATH)"
    )
    doctor.add_argument("--json", action="store_true", help="print JSON")


def _service_flags(service: argparse.ArgumentParser) -> None:
    actions = service.add_subparsers(dest="service_command", required=True)
    install = actions.add_parser(
        "install",
        help="install (or update) and start the service; serve flags go after --",
        description="e.g. sidecode-trio service install -- --host 0.0.0.0 --port 8765",
    )
    _state_dir_flag(install)
    install.add_argument("--dry-run", action="store_true", help="show the diff, change nothing")
    install.add_argument(
        "serve_args", nargs=argparse.REMAINDER, help="-- then the flags 'serve' should run with"
    )
    uninstall = actions.add_parser("uninstall", help="stop and remove it (state is kept)")
    _state_dir_flag(uninstall)
    uninstall.add_argument(
        "--purge", action="store_true", help="also delete the state directory (sessions, devices)"
    )
    status = actions.add_parser("status", help="installed, enabled, running, last exit")
    status.add_argument("--json", action="store_true", help="print JSON")
    actions.add_parser("restart", help="restart it (e.g. after pip install -U); sessions resume")
    logs = actions.add_parser("logs", help="show the service's log")
    logs.add_argument("-n", "--lines", type=int, default=200, help="how many lines (200)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    for sub in (status, actions.choices["restart"], logs):
        sub.set_defaults(state_dir=None)


#: each command: its line in ``--help``, and what adds its flags
COMMANDS: Final[dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]]] = {
    "serve": ("run the daemon in the foreground", _serve_flags),
    "pair": ("show a one-time pairing code for a new device", _pair_flags),
    "devices": ("list, revoke or re-scope paired devices", _devices_flags),
    "sessions": ("list the sessions of the running daemon", _sessions_flags),
    "attach": (
        "follow a session in this terminal and answer its permission requests",
        _attach_flags,
    ),
    "send": ("send a message to a session (for scripts)", _send_flags),
    "web": ("the phone web app", _web_flags),
    "doctor": ("check the claude CLI, the state directory and the daemon", _doctor_flags),
    "service": ("run the daemon at login (systemd user unit / macOS LaunchAgent)", _service_flags),
}


def _state_dir_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir", type=Path, help=f"where state is kept (default {default_state_dir()})"
    )


def _command(argv: list[str]) -> str | None:
    """The command word (the top level has only ``-h`` and ``--version`` as options)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser(_command(argv)).parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "sessions":
            return _sessions(args)
        if args.command == "pair":
            return _pair(args)
        if args.command == "devices":
            return _devices(args)
        if args.command == "service":
            return _service(args)
        if args.command == "web":
            return _web_export(args.dir)
        if args.command == "send":
            args.text = _message_text(args.text)
            if not args.wait:
                return _send(args)
        if args.command in ("attach", "send"):
            from .term.main import run

            return run(args, *_daemon(args.state_dir or default_state_dir()))
        return _doctor(args)
    except SidecodeError as exc:
        print(f"sidecode-trio: {exc.message}", file=sys.stderr)
        return 2


# -- serve ---------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from .printable import configure_logging
    from .rtc.settings import overrides as rtc_overrides

    configure_logging(args.log_level)  # a request path or a device name cannot drive the tty
    overrides = {
        "state_dir": args.state_dir,
        "host": args.host,
        "port": args.port,
        "claude": args.claude,
        # a folder typed on the command line is relative to the shell's directory
        "allowed_roots": [str(Path(r).expanduser().resolve()) for r in args.allowed_roots or []],
        "ready_file": str(args.ready_file) if args.ready_file else None,
        "idle_timeout": args.idle_timeout,
        "https": args.https,
        "quic_port": args.quic_port,
        "public_urls": args.public_url,
        "remote_control": args.remote_control,
        "notify_webhook": args.notify_webhook,
        "notify_format": args.notify_format,
        "notify_details": args.notify_details,
        "rtc": rtc_overrides(args),
        "web_origin": args.web_origin,
    }
    import trio

    from .config import load_config
    from .daemon import serve

    config = load_config(overrides, args.config)
    trio.run(lambda: serve(config, handle_signals=True, show_pairing=True))
    return 0


def _web_export(target: Path) -> int:
    from .web.export import export

    written = export(target)
    print(f"wrote {len(written)} files to {target}; host them on any HTTPS origin, then run")
    print("  sidecode-trio serve --web-origin https://<where they are served>/")
    return 0


def _service(args: argparse.Namespace) -> int:
    from .service_command import run

    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return run(args, commands.choices["serve"])


# -- talking to a running daemon ------------------------------------------------------------


def _daemon(state_dir: Path) -> tuple[str, str]:
    """The URL and token of the daemon running on ``state_dir``."""
    import json

    try:
        info = json.loads((state_dir / "daemon.json").read_text())
        token = (state_dir / "token").read_text().strip()
    except (OSError, ValueError):
        raise ConfigError(
            f"no daemon is running on {state_dir} (start one with 'sidecode-trio serve')"
        ) from None
    return _local_url(str(info["http"])), token


def _call(
    url: str, token: str | None, method: str = "GET", body: Any = None, timeout: float = 5.0
) -> Any:
    """One request to the local daemon with the local token (it is accepted from loopback).

    HTTP/1.1 through h11 over a blocking socket: urllib (with the email and http.client modules
    it loads) was a third of ``sessions``'s start. The daemon's own certificate on this machine,
    at the address its 0600 daemon.json names, is not verified: there is no CA to check it
    against (devices pin the identity key instead)."""
    import json
    import socket
    import urllib.parse

    import h11

    parts = urllib.parse.urlsplit(url)
    tls = parts.scheme == "https"
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if tls else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = [("Host", parts.netloc), ("Connection", "close")]
    headers += [("Authorization", f"Bearer {token}")] if token else []
    data = b"" if body is None else json.dumps(body).encode()
    if body is not None:
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    conn = h11.Connection(h11.CLIENT)
    status, chunks = 0, []
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            sock = raw
            if tls:
                import ssl

                context = ssl.create_default_context()
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # see above
                sock = context.wrap_socket(raw, server_hostname=host)
            with sock:  # the TLS socket took over raw's descriptor: closing raw does not close it
                request = conn.send(h11.Request(method=method, target=target, headers=headers))
                sock.sendall((request or b"") + (conn.send(h11.Data(data=data)) if data else b""))
                sock.sendall(conn.send(h11.EndOfMessage()) or b"")
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(sock.recv(65536))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        break
        payload = b"".join(chunks)
        reply = json.loads(payload) if 200 <= status < 300 else None
    except (OSError, h11.ProtocolError, ValueError) as exc:
        raise SidecodeError(
            f"cannot reach the daemon at {url}: {exc}", code="unreachable"
        ) from None
    if 200 <= status < 300:
        return reply
    try:  # the daemon's own error: its code and message, as the other clients show them
        error = json.loads(payload)["error"]
        raise SidecodeError(str(error["message"]), code=str(error["code"])) from None
    except (ValueError, KeyError, TypeError):
        detail = payload.decode(errors="replace")[:300]
    raise SidecodeError(f"the daemon said {status}: {detail}", code="refused") from None


def _local_url(url: str) -> str:
    """The daemon's URL as seen from this machine (a wildcard bind is reached on loopback)."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.hostname in ("0.0.0.0", "::"):  # noqa: S104 - recognising the wildcard
        return f"{parts.scheme}://127.0.0.1:{parts.port}"
    return url


def _pair(args: argparse.Namespace) -> int:
    import json

    url, token = _daemon(args.state_dir or default_state_dir())
    if args.watchcode:
        body = {"name": args.name, "scope": args.scope}
        made = _call(f"{url}/v1/devices/watchcode", token, "POST", body)
        if args.json:
            print(json.dumps(made, indent=2))
            return 0
        device = made["device"]
        name, scope, device_id = escape(device["name"]), device["scope"], device["id"]
        print(f"WatchCode device {name!r} ({scope}), id {device_id}.")
        print("In the WatchCode app's settings, enter:")
        for relay in made["urls"]:
            print(f"  relay URL: {relay}")
        print(f"  secret:    {made['secret']}")
        revoke = f"sidecode-trio devices revoke {device['id']}"
        print(f"The secret is shown once; '{revoke}' disables it.")
        if device["scope"] == "approve":  # the watch app's mic posts /message: 403, unseen
            print("Scope 'approve' cannot send messages: the watch app's mic will do nothing.")
        return 0
    offer = _call(f"{url}/v1/pairings", token, "POST", {"scope": args.scope, "ttl": args.ttl})
    if args.json:
        print(json.dumps(offer["payload"], indent=2))
    else:
        from .security.qr import render_pairing

        print(render_pairing(offer))
    return 0


def _devices(args: argparse.Namespace) -> int:
    import json

    url, token = _daemon(args.state_dir or default_state_dir())
    if args.action == "revoke" and args.device_id:
        reply = _call(f"{url}/v1/devices/{args.device_id}", token, "DELETE")
        name, closed = escape(reply["device"]["name"]), reply["closed_streams"]
        print(f"revoked {name!r}; closed {closed} stream(s)")
        return 0
    if args.action == "scope" and args.device_id and args.scope:
        body = {"scope": args.scope}
        device = _call(f"{url}/v1/devices/{args.device_id}", token, "PATCH", body)
        print(f"{escape(device['name'])!r} now has scope {device['scope']}")
        return 0
    if args.action:
        raise ConfigError("usage: devices revoke DEVICE_ID | devices scope DEVICE_ID SCOPE")
    what = "audit" if args.log else "devices"
    rows = _call(f"{url}/v1/{what}", token)["entries" if args.log else "devices"]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.log:
        for e in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"]))
            kind, device_id = escape(e["kind"]), escape(e["device_id"] or "-")
            print(f"{when}  {kind:14} {device_id:18} {escape(e['detail'])}")
    elif not rows:
        print("no paired devices (run 'sidecode-trio pair')")
    for d in [] if args.json or args.log else rows:
        seen = "never"
        if d["last_seen"]:
            seen = time.strftime("%Y-%m-%d %H:%M", time.localtime(d["last_seen"]))
        state = "REVOKED" if d["revoked_at"] else d["scope"]
        print(
            f"{escape(d['id']):18} {state:8} {escape(d['fingerprint'])}  last seen {seen:16}  "
            f"{escape(d['name'])}"
        )
    return 0


def _message_text(text: str) -> str:
    """``send``'s message (``-``: standard input); an empty one is refused before any call."""
    text = sys.stdin.read() if text == "-" else text
    if not text.strip():
        raise ConfigError("the message is empty")
    return text


def _send(args: argparse.Namespace) -> int:
    """``send`` without ``--wait``: two calls made like ``sessions``'s, without Trio (``--wait``
    follows the turn's events: ``term.send`` on Trio)."""
    import urllib.parse
    import uuid

    from .term.prefix import match_session

    url, token = _daemon(args.state_dir or default_state_dir())
    listed = _call(f"{url}/v1/sessions?archived=all", token)["sessions"]
    session_id = match_session(args.session, [str(s["id"]) for s in listed])
    path = f"{url}/v1/sessions/{urllib.parse.quote(session_id, safe='')}/messages"
    body = {"text": args.text, "client_id": str(uuid.uuid4())}  # a retry cannot send it twice
    print(_call(path, token, "POST", body)["message_id"])
    return 0


def _sessions(args: argparse.Namespace) -> int:
    import json

    url, token = _daemon(args.state_dir or default_state_dir())
    sessions = _call(f"{url}/v1/sessions", token)["sessions"]
    if args.json:
        print(json.dumps(sessions, indent=2))
        return 0
    if not sessions:
        print("no sessions")
        return 0
    print(f"{'ID':36}  {'STATUS':15}  {'COST':>8}  {'LAST ACTIVITY':19}  TITLE")
    for s in sessions:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["last_activity"]))
        print(
            f"{escape(s['id']):36}  {escape(s['status']):15}  ${s['cost_usd']:7.4f}  {when:19}  "
            f"{escape(s['title'])}  ({escape(s['cwd'])})"
        )
    return 0


# -- doctor --------------------------------------------------------------------------------


def _check_claude(claude: str) -> dict[str, Any]:
    import shutil
    import subprocess

    path = shutil.which(claude)
    if path is None:
        return {
            "ok": False,
            "detail": f"{claude!r} not found on PATH (install Claude Code, or pass --claude)",
        }
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"ok": False, "path": path, "detail": f"cannot run it: {exc}"}
    version = out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
    return {
        "ok": out.returncode == 0,
        "path": path,
        "version": version,
        "detail": out.stderr.strip()[:200],
    }


def _check_mirroring(claude: str, env: dict[str, str]) -> dict[str, Any]:
    """Can a session be mirrored to Remote Control (``--remote-control`` in ``claude --help``)?
    Optional: a CLI without it fails nothing, mirroring just answers ``unsupported``."""
    from .claude.probe import CLIProbe

    support = CLIProbe(claude, env).check()
    part: dict[str, Any] = {"ok": True, "supported": support.remote_control}
    if support.error:
        part["detail"] = support.error
    elif not support.remote_control:
        part["detail"] = "this claude has no --remote-control: update Claude Code to mirror"
    return part


def _check_state(state_dir: Path) -> dict[str, Any]:
    import shutil
    import sqlite3

    problems = []
    if not state_dir.exists():
        return {"ok": True, "path": str(state_dir), "detail": "not created yet (serve creates it)"}
    if state_dir.stat().st_mode & 0o077:
        problems.append("the state directory is accessible to other users (want 0700)")
    for name in ("token", "events.sqlite3"):
        path = state_dir / name
        if path.exists() and path.stat().st_mode & 0o077:
            problems.append(f"{name} is readable by others (want 0600)")
    if not os.access(state_dir, os.W_OK):
        problems.append("the state directory is not writable")
    db = state_dir / "events.sqlite3"
    sessions = None
    if db.exists():
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                check = conn.execute("PRAGMA quick_check").fetchone()[0]
                sessions = conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
            finally:
                conn.close()
            if check != "ok":
                problems.append(f"database check failed: {check}")
        except sqlite3.Error as exc:
            problems.append(f"cannot read the database: {exc}")
    free = shutil.disk_usage(state_dir).free
    if free < 100 * 1024 * 1024:
        problems.append(f"only {free // (1024 * 1024)} MiB free on the state directory's disk")
    return {
        "ok": not problems,
        "path": str(state_dir),
        "sessions": sessions,
        "detail": "; ".join(problems),
    }


def _check_daemon(state_dir: Path) -> dict[str, Any]:
    try:
        url, token = _daemon(state_dir)
    except ConfigError:
        return {"ok": True, "running": False, "detail": "not running"}
    try:
        status = _call(f"{url}/v1/status", token, timeout=3)
    except SidecodeError as exc:
        return {
            "ok": False,
            "running": False,
            "url": url,
            "detail": f"daemon.json is stale: {exc.message}",
        }
    store_error = status["log"]["store_error"]
    return {
        "ok": store_error is None,
        "running": True,
        "url": url,
        "status": status,
        "detail": store_error or "",
    }


def _check_keep_awake(state_dir: Path) -> dict[str, Any]:
    """What keeps the host awake during a turn; a running daemon's live state if there is one."""
    import shutil

    from .config import load_config
    from .host.awake import choose_inhibitor

    try:
        setting = load_config({"state_dir": state_dir}).keep_awake
    except ConfigError as exc:
        return {"ok": False, "detail": exc.message}
    inhibitor = choose_inhibitor(setting)
    part: dict[str, Any] = {
        "ok": True,
        "setting": setting,
        "inhibitor": inhibitor.name if inhibitor else None,
        "command": " ".join(inhibitor.argv) if inhibitor else None,
    }
    if inhibitor is None and setting != "off":
        part["detail"] = "no caffeinate or systemd-inhibit found: the computer may sleep mid-turn"
    elif inhibitor is not None and shutil.which(inhibitor.argv[0]) is None:
        part |= {"ok": False, "detail": f"{inhibitor.argv[0]} is not on PATH"}
    live = _live_status(state_dir)
    if live is not None and "keep_awake" in live:
        state = live["keep_awake"]
        part["phase"] = state.get("phase")
        if state.get("error"):  # e.g. no logind in a container: a warning, not a failure
            part["detail"] = state["error"]
    return part


def _live_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        url, token = _daemon(state_dir)
        status: dict[str, Any] = _call(f"{url}/v1/status", token, timeout=3)
    except SidecodeError:
        return None
    return status


def _check_identity(state_dir: Path) -> dict[str, Any]:
    import json

    from cryptography import x509

    from .security.identity import KEY_FILE, keyring_usable

    key_file = state_dir / KEY_FILE
    store = (
        "file" if key_file.exists() else ("keyring" if keyring_usable() else "file (no keyring)")
    )
    report: dict[str, Any] = {"ok": True, "keystore": store}
    try:
        report["fingerprint"] = json.loads((state_dir / "daemon.json").read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        report["fingerprint"] = None  # shown by a running daemon
    if key_file.exists() and key_file.stat().st_mode & 0o077:
        report.update(ok=False, detail=f"{key_file} is readable by others (want 0600)")
    cert = state_dir / "tls" / "current.pem"
    if cert.exists():
        expires = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc
        report["certificate_expires"] = expires.isoformat(timespec="minutes")
    return report


def _check_remote_control(state_dir: Path) -> dict[str, Any]:
    """Is the bridge on, is there a Claude login for it (where; never the token itself), and
    did the running daemon's last call upstream succeed?"""
    from .bridge.credentials import discover, organization
    from .config import load_config

    try:
        config = load_config({"state_dir": state_dir})
    except ConfigError as exc:
        return {"ok": False, "detail": exc.message}
    env = {**os.environ, **config.claude_env}
    source = discover(env, config.remote)
    part: dict[str, Any] = {
        "ok": True,
        "enabled": config.remote_control,
        "credentials": source.name if source else None,
        "organization": organization(env, config.remote) is not None,
    }
    if source is None:
        part["detail"] = "no Claude login found (run `claude` and log in)"
        part["ok"] = not config.remote_control
    live = _live_status(state_dir)
    error = (live or {}).get("remote_control", {}).get("error")
    if error:
        part |= {"ok": False, "detail": f"{error['code']}: {error['message']}"}
    return part


def _check_reachability(state_dir: Path) -> dict[str, Any]:
    """Which paths a device would get: direct addresses, NAT type (STUN), rendezvous, TURN."""
    import trio

    from .config import load_config
    from .rtc.reach import check

    try:
        config = load_config({"state_dir": state_dir})
    except ConfigError as exc:
        return {"ok": False, "detail": exc.message}
    live = _daemon_file(state_dir)
    direct = list(config.public_urls)
    settings = config.rtc
    if live is not None:
        from .daemon import reachable_urls
        from .rtc.reach import live_settings

        direct += reachable_urls(live)
        # serve's flags are not in the config file: probe what the running daemon uses
        settings = live_settings((_live_status(state_dir) or {}).get("rtc"), settings)
    return trio.run(check, settings, direct)


def _daemon_file(state_dir: Path) -> str | None:
    """The URL the running daemon bound (a wildcard kept: it serves every address)."""
    import json

    try:
        return str(json.loads((state_dir / "daemon.json").read_text())["http"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_service(state_dir: Path) -> dict[str, Any]:
    from .service_command import doctor_part

    return doctor_part(state_dir)


def _doctor(args: argparse.Namespace) -> int:
    import json

    from .config import DaemonConfig, load_config

    state_dir = args.state_dir or default_state_dir()
    claude = args.claude
    env: dict[str, str] = {}
    try:
        config = load_config({"state_dir": state_dir})
        claude, env = claude or config.claude, dict(config.claude_env)
    except ConfigError:
        claude = claude or DaemonConfig(state_dir=state_dir).claude
    report = {
        "claude": _check_claude(claude),
        "mirroring": _check_mirroring(claude, env),
        "state_dir": _check_state(state_dir),
        "identity": _check_identity(state_dir),
        "daemon": _check_daemon(state_dir),
        "keep_awake": _check_keep_awake(state_dir),
        "remote_control": _check_remote_control(state_dir),
        "reachability": _check_reachability(state_dir),
        "service": _check_service(state_dir),
    }
    ok = all(part["ok"] for part in report.values())
    if args.json:
        print(json.dumps({"ok": ok, **report}, indent=2))
    else:
        for name, part in report.items():
            mark = "ok " if part["ok"] else "FAIL"
            facts = ", ".join(
                f"{k}={v}"
                for k, v in part.items()
                if k not in ("ok", "detail", "status") and v is not None
            )
            print(
                f"[{mark}] {name}: {facts}"
                + (f" -- {part['detail']}" if part.get("detail") else "")
            )
    return 0 if ok else 1
