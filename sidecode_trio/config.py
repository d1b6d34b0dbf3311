"""The daemon's configuration: typed, frozen, validated once at the edge.

Sources, later ones winning: built-in defaults, ``<state-dir>/config.toml`` (or ``--config``), then
command-line flags. Every problem is reported with the path of the bad value, e.g.
``bad value @ $.port: must be between 0 and 65535``, and stops the daemon before it starts.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs

from .bridge.settings import BridgeSettings
from .claude.messages import PERMISSION_MODES
from .defaults import DEFAULT_PORT as DEFAULT_PORT
from .defaults import default_state_dir as default_state_dir
from .errors import ConfigError
from .host.addresses import LOOPBACK_NAMES
from .host.addresses import is_loopback as is_loopback  # re-exported (tests, callers)
from .host.awake import parse_setting
from .notify.settings import DEFAULT_SUBJECT
from .notify.settings import problems as notify_problems
from .rtc.settings import RtcSettings
from .wire.converter import structure


@attrs.frozen
class DaemonConfig:
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    claude: str = "claude"
    allowed_roots: tuple[Path, ...] = ()
    ready_file: Path | None = None
    idle_timeout: float = 600.0  #: seconds before an idle CLI is stopped (resumed on demand)
    #: CLIs started ahead of a message when a client opens a session whose CLI was stopped
    #: (0: none); each stops again after min(120 s, idle_timeout) without a message
    warm_limit: int = 3
    sse_keepalive: float = 15.0  #: seconds between SSE keep-alive comments
    client_queue: int = 4096  #: events buffered per client link before it is dropped
    retain_events: int = 50_000  #: events per session kept for exact replay
    max_body: int = 24 * 1024 * 1024  #: bytes accepted in a request body (images are big)
    claude_env: dict[str, str] = attrs.field(factory=dict)  #: extra environment for the CLI
    claude_args: tuple[str, ...] = ()  #: extra arguments for the CLI
    keystore: Literal["auto", "keyring", "file"] = "auto"  #: where the identity key lives
    pairing_ttl: float = 300.0  #: seconds a pairing code stays valid
    #: UDP port of the WebTransport endpoint: None = the HTTP port's number, 0 = any, -1 = off
    quic_port: int | None = None
    #: seconds a permission request waits for an answer before it is denied (None: it waits)
    permission_timeout: float | None = None
    #: permission modes a paired device may put a session in (the local owner may use any)
    remote_modes: tuple[str, ...] = ("default", "acceptEdits", "plan", "dontAsk", "auto")
    #: keep the computer awake while a session runs or waits: "auto", "off", or a command
    keep_awake: str = "auto"
    #: notifications (PROTOCOL.md "Notifications"): a webhook to POST to, e.g. an ntfy topic URL
    notify_webhook: str | None = None
    notify_format: Literal["auto", "ntfy", "json"] = "auto"  #: auto: ntfy when the host says so
    notify_headers: dict[str, str] = attrs.field(factory=dict)  #: e.g. Authorization for ntfy
    notify_details: Literal["full", "minimal"] = "full"  #: minimal: no command, title or folder
    notify_on: tuple[str, ...] = ("approval", "finished", "failed")
    notify_hold: float = 1.0  #: seconds a burst of events is gathered into one notification
    notify_cooldown: float = 30.0  #: at most one notification per session and kind this often
    push_subject: str = DEFAULT_SUBJECT  #: the VAPID contact push services see (mailto:/https:)
    push_allow_loopback: bool = False  #: accept push endpoints on this computer (tests)
    #: relay the account's Claude Code Remote Control sessions (off: nothing goes to Anthropic)
    remote_control: bool = False
    remote: BridgeSettings = BridgeSettings()  #: the bridge's URLs and timings (``[remote]``)
    rtc: RtcSettings = RtcSettings()  #: the WebRTC path (``[rtc]``, ``serve --rendezvous``)

    https: bool | None = None  #: None: HTTPS exactly when the bind is not loopback
    #: where devices reach the daemon through a reverse proxy or tunnel with a real certificate
    #: (e.g. ``https://laptop.tailnet.ts.net``): listed first in pairing offers, its host name
    #: accepted in ``Host`` on a loopback bind
    public_urls: tuple[str, ...] = ()
    #: where the exported web app is hosted (``web export``); pairing links open it there
    web_origin: str | None = None

    @property
    def tls(self) -> bool:
        """Non-loopback binds serve HTTPS with the identity-signed certificate."""
        return self.https if self.https is not None else not is_loopback(self.host)

    @property
    def token_path(self) -> Path:
        return self.state_dir / "token"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "events.sqlite3"

    @property
    def daemon_file(self) -> Path:
        """Where a running daemon says how to reach it (read by ``sessions`` and ``doctor``)."""
        return self.state_dir / "daemon.json"


def public_host(url: str) -> str | None:
    """The ``Host`` header a request through ``url`` carries, or None if ``url`` is not the
    base URL of a host (``https://name[:port]``, nothing after it but ``/``)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return host if port is None else f"{host}:{port}"


def _web_origin_ok(url: str) -> bool:
    """An https URL of a page (a static host), or http on loopback (a secure context too)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return False
    if parts.query or parts.fragment or parts.username or not parts.hostname:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname))


def _problems(config: DaemonConfig) -> list[str]:
    problems = []
    if not 0 <= config.port <= 65535:
        problems.append(f"bad value @ $.port: must be between 0 and 65535, got {config.port}")
    if config.quic_port is not None and not -1 <= config.quic_port <= 65535:
        problems.append(
            f"bad value @ $.quic_port: -1 (off) or between 0 and 65535, got {config.quic_port}"
        )
    if config.host not in LOOPBACK_NAMES:
        try:
            ipaddress.ip_address(config.host)
        except ValueError:
            problems.append(
                f"bad value @ $.host: {config.host!r} is not an IP address "
                "(e.g. 127.0.0.1, ::1, 0.0.0.0 for every interface) or localhost"
            )
    for i, url in enumerate(config.public_urls):
        if public_host(url) is None:
            problems.append(
                f"bad value @ $.public_urls[{i}]: {url!r} is not an http(s) URL of a host "
                "(no path, query or fragment), e.g. https://laptop.tailnet.ts.net"
            )
    if config.web_origin is not None and not _web_origin_ok(config.web_origin):
        problems.append(
            f"bad value @ $.web_origin: {config.web_origin!r} is not an https:// URL (http:// "
            "only on loopback), without query or fragment, e.g. https://me.github.io/sidecode/"
        )
    if not 10 <= config.pairing_ttl <= 3600:
        problems.append("bad value @ $.pairing_ttl: between 10 and 3600 seconds")
    if config.idle_timeout <= 0:
        problems.append("bad value @ $.idle_timeout: must be > 0 seconds")
    if not 0 <= config.warm_limit <= 64:
        problems.append("bad value @ $.warm_limit: between 0 and 64 CLIs")
    if config.sse_keepalive <= 0:
        problems.append("bad value @ $.sse_keepalive: must be > 0 seconds")
    if config.client_queue < 16:
        problems.append("bad value @ $.client_queue: must be at least 16")
    if config.retain_events < 100:
        problems.append("bad value @ $.retain_events: must be at least 100")
    if config.permission_timeout is not None and config.permission_timeout <= 0:
        problems.append("bad value @ $.permission_timeout: must be > 0 seconds (or absent)")
    for i, mode in enumerate(config.remote_modes):
        if mode not in PERMISSION_MODES:
            problems.append(
                f"bad value @ $.remote_modes[{i}]: {mode!r} is not one of "
                + ", ".join(PERMISSION_MODES)
            )
    try:
        parse_setting(config.keep_awake)
    except ValueError as exc:
        problems.append(f"bad value @ $.keep_awake: {exc}")
    problems.extend(config.remote.problems())
    problems.extend(config.rtc.problems())
    if config.max_body < 1024:
        problems.append("bad value @ $.max_body: must be at least 1024 bytes")
    for i, root in enumerate(config.allowed_roots):
        if not root.is_absolute():
            problems.append(f"bad value @ $.allowed_roots[{i}]: {str(root)!r} is not absolute")
        elif not root.is_dir():
            problems.append(f"bad value @ $.allowed_roots[{i}]: {root} is not a directory")
    problems.extend(notify_problems(config))
    return problems


def load_config(overrides: Mapping[str, Any], config_file: Path | None = None) -> DaemonConfig:
    """Merge the config file (if any) under ``overrides`` and validate the result."""
    state_dir = Path(overrides.get("state_dir") or default_state_dir()).expanduser()
    path = config_file or state_dir / "config.toml"
    data: dict[str, Any] = {}
    if config_file is not None or path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    known = {field.name for field in attrs.fields(DaemonConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) @ $: {', '.join(unknown)} (in {path})")
    for table, settings in (("remote", BridgeSettings), ("rtc", RtcSettings)):
        given = data.get(table)
        names = {field.name for field in attrs.fields(settings)}
        unknown = sorted(set(given) - names) if isinstance(given, dict) else []
        if unknown:
            raise ConfigError(f"unknown setting(s) @ $.{table}: {', '.join(unknown)} ({path})")
    rtc_flags = {k: v for k, v in (overrides.get("rtc") or {}).items() if v is not None}
    data.update({k: v for k, v in overrides.items() if v is not None and k != "rtc"})
    if rtc_flags:  # flags win over the [rtc] table, setting by setting
        rtc_table = data.get("rtc")
        data["rtc"] = {**(rtc_table if isinstance(rtc_table, dict) else {}), **rtc_flags}
    data["state_dir"] = str(state_dir)
    if not data.get("allowed_roots"):
        data["allowed_roots"] = [str(Path.home())]
    data["allowed_roots"] = [
        str(Path(root).expanduser()) if isinstance(root, str) else root
        for root in data["allowed_roots"]
    ]  # relative roots are refused below rather than resolved against an accidental cwd
    try:
        config = structure(data, DaemonConfig)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    problems = _problems(config)
    if problems:
        raise ConfigError("; ".join(problems))
    return config
