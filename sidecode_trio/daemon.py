"""The daemon: state directory, the task tree, readiness and a bounded two-phase shutdown.

::

    daemon nursery
    ├── event-log writer          (group commit, fan-out, WAL checkpoints)
    └── services nursery
        ├── session registry      (one supervisor task per live session, each owning its CLI)
        ├── HTTP server           (hypercorn's trio worker; one task group per client link)
        └── QUIC endpoint         (WebTransport on one UDP socket; one nursery per connection)

Shutdown: stop accepting connections; stop the sessions (each CLI: close stdin, SIGTERM, SIGKILL,
bounded) so their last events are logged; commit; end the event streams (clients have seen how
their turns ended); let HTTP finish within its grace; exit.
"""

from __future__ import annotations

import fcntl
import gc
import json
import logging
import os
import secrets
import signal
import socket
import ssl
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import IO, Any, Final
from urllib.parse import urlsplit

import attrs
import hypercorn.config
import trio

from . import __version__
from .channel.frames import NONCE_BYTES
from .channel.link import Link, LinkSettings, link_settings
from .channel.routes import Requests
from .claude.leash import Records
from .claude.probe import CLIProbe
from .claude.process import Grace
from .config import DaemonConfig, public_host
from .errors import ConfigError, StoreError
from .eventlog.log import EventLog, LogLimits
from .eventlog.store import SQLiteStore
from .host.awake import KeepAwake, choose_inhibitor
from .host.private import read_private, write_atomic
from .http import push as notify_routes
from .http.app import HTTPSettings, create_app
from .http.direct import DirectEvents
from .http.direct import serve as serve_http
from .notify.service import WATCHED, Notifier
from .notify.settings import settings_for as notify_settings
from .notify.subscriptions import SubscriptionStore
from .notify.vapid import load_vapid
from .ops import Operations, Policy
from .ops.front import Front, open_routes, routes
from .security.devices import DeviceStore, Scope
from .security.guard import Guard
from .security.identity import load_identity
from .security.tls import CertificateStore
from .sessions.registry import SessionRegistry
from .sessions.supervisor import SupervisorSettings
from .wire.events import SessionStatus

log = logging.getLogger(__name__)

SHUTDOWN_GRACE: Final = Grace(close_stdin=0.5, terminate=2.0)
GC_GEN0_THRESHOLD: Final = 50_000
SIOCGIFADDR: Final = 0x8915  # Linux ioctl: an interface's IPv4 address
ROTATION_CHECK: Final = 3600.0  # seconds between certificate expiry checks
HTTP_GRACE: Final = 5.0  # seconds open requests get at shutdown (> the sessions' grace)
BUSY: Final = frozenset({SessionStatus.RUNNING, SessionStatus.REQUIRES_ACTION})  # keep awake
WARM_IDLE: Final = 120.0  # seconds a CLI started because a client opened its session waits


@attrs.frozen
class DaemonHandle:
    """What a started daemon reports: where it listens, and how to stop it."""

    url: str
    port: int
    token: str
    stop: trio.Event = attrs.field(eq=False)
    fingerprint: str = ""
    app: Any = attrs.field(default=None, eq=False, repr=False)  #: the HTTP app, for introspection
    quic_port: int = 0  #: the WebTransport endpoint's UDP port (0: not serving)
    quic: Any = attrs.field(default=None, eq=False, repr=False)  #: the endpoint, for introspection
    rtc: Any = attrs.field(default=None, eq=False, repr=False)  #: the WebRTC task (rtc/service.py)


def prepare_state_dir(state_dir: Path) -> None:
    """Create the state directory (0700); one we cannot write (a read-only mount) is a clear
    error, not a traceback."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(state_dir, 0o700)
    except OSError as exc:
        raise StoreError(f"cannot use the state directory {state_dir}: {exc.strerror}") from exc


def load_token(path: Path) -> str:
    """The local access token, created on first use; the file is kept 0600."""
    token = read_private(path)
    if token is not None and len(token) >= 32:
        return token
    token = secrets.token_urlsafe(32)
    write_atomic(path, token + "\n")
    return token


@contextmanager
def single_instance(state_dir: Path) -> Iterator[IO[str]]:
    """Hold an exclusive lock on the state directory for the daemon's lifetime."""
    path = state_dir / "daemon.lock"
    handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(
            f"another sidecode-trio daemon is using {state_dir} (see {state_dir / 'daemon.json'})"
        ) from None
    try:
        yield handle
    finally:
        handle.close()


def _allowed_hosts(url: str) -> set[str]:
    port = urlsplit(url).port
    return {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")}


def _public_hosts(urls: Sequence[str]) -> set[str]:
    """The ``Host`` headers requests to these URLs carry (a proxy's name, a served address);
    at the scheme's default port a client may leave the port out."""
    found = set()
    for url in urls:
        host = public_host(url)
        if host is None:
            continue
        found.add(host.lower())
        default = {"https": ":443", "http": ":80"}.get(urlsplit(url).scheme, "")
        if default and host.endswith(default):
            found.add(host.removesuffix(default).lower())
    return found


async def serve(
    config: DaemonConfig,
    *,
    handle_signals: bool = False,
    show_pairing: bool = False,
    task_status: trio.TaskStatus[DaemonHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until ``DaemonHandle.stop`` is set (or SIGINT/SIGTERM, if handled)."""
    if config.rtc.enabled:  # before anything starts: a clear error without the rtc extra
        from .rtc.service import check_available

        check_available()
    prepare_state_dir(config.state_dir)
    with single_instance(config.state_dir):
        token = load_token(config.token_path)
        identity = load_identity(config.state_dir, config.keystore)
        certificates = CertificateStore(config.state_dir / "tls", identity, [config.host])
        certificates.refresh()
        devices = DeviceStore(config.state_dir / "devices.sqlite3")
        store = SQLiteStore(config.db_path)
        guard = Guard(identity, certificates, devices, token, open_routes=open_routes())
        pushes = SubscriptionStore(config.state_dir / "push.sqlite3")
        try:
            await _serve(
                config, store, guard, pushes, token, handle_signals, show_pairing, task_status
            )
        finally:
            store.close()
            pushes.close()
            devices.close()
            config.daemon_file.unlink(missing_ok=True)


class _HTTPConfig(hypercorn.config.Config):
    """Hypercorn's config, keeping the TLS context so certificate rotation can reload it."""

    def __init__(self, certificates: CertificateStore) -> None:
        super().__init__()
        self._certificates = certificates

    def create_ssl_context(self) -> ssl.SSLContext | None:
        context = super().create_ssl_context()
        self._certificates.context = context
        return context


def rtc_sessions(
    requests: Requests, ops: Operations, guard: Guard, settings: LinkSettings
) -> Callable[[Any, bytes, bytes, str], Link]:
    """How the WebRTC task serves a link: the shared session driver over the same front door,
    feed and guard as WebTransport, with WebTransport's limits except that nothing goes
    ``large`` (a DataChannel has no streams of ours); ``high_water`` bounds aiortc's
    ``bufferedAmount``."""
    from .rtc.link import NO_LARGE

    config = attrs.evolve(settings, outbox=attrs.evolve(settings.outbox, inline_limit=NO_LARGE))

    def make(transport: Any, cert: bytes, peer_key: bytes, remote: str) -> Link:
        return Link(
            transport,
            requests,
            ops,
            guard,
            config,
            nonce=secrets.token_bytes(NONCE_BYTES),
            cert_sha256=cert,
            version=__version__,
            remote=remote,
            kind="WebRTC",
            peer_key=peer_key,
        )

    return make


def _http_config(config: DaemonConfig, certificates: CertificateStore) -> hypercorn.config.Config:
    http_config = _HTTPConfig(certificates)
    host = f"[{config.host}]" if ":" in config.host else config.host
    http_config.bind = [f"{host}:{config.port}"]
    if config.tls and certificates.current is not None:
        http_config.certfile = str(certificates.current.cert_path)
        http_config.keyfile = str(certificates.current.key_path)
    http_config.accesslog = None
    http_config.errorlog = logging.getLogger("hypercorn.error")
    http_config.graceful_timeout = HTTP_GRACE
    http_config.include_server_header = False
    return http_config


async def _serve(
    config: DaemonConfig,
    store: SQLiteStore,
    guard: Guard,
    pushes: SubscriptionStore,
    token: str,
    handle_signals: bool,
    show_pairing: bool,
    task_status: trio.TaskStatus[DaemonHandle],
) -> None:
    event_log = EventLog(store, LogLimits(retain=config.retain_events))
    event_log.load()
    registry = SessionRegistry(
        event_log,
        SupervisorSettings(
            claude=config.claude,
            env=config.claude_env,
            idle_timeout=config.idle_timeout,
            grace=SHUTDOWN_GRACE,
            extra_args=config.claude_args,
            permission_timeout=config.permission_timeout,
            warm_idle_timeout=min(WARM_IDLE, config.idle_timeout),
            records=Records(config.state_dir / "cli"),
        ),
        config.allowed_roots,
        warm_limit=config.warm_limit,
    )
    awake = KeepAwake(choose_inhibitor(config.keep_awake))
    cli = CLIProbe(config.claude, config.claude_env)  # probed on first use, cached per binary
    event_log.on_commit(_busy_tracker(event_log, awake))
    notifier = Notifier(
        notify_settings(config),
        event_log,
        pushes,
        load_vapid(config.state_dir, config.keystore),
        guard.devices,
        lambda: guard.urls[0] if guard.urls else None,
    )
    event_log.watch(WATCHED, notifier.watched)  # only queues them: no wake-up per text delta
    guard.devices.on_revoke(notifier.device_revoked)
    bridge = None
    if config.remote_control:  # off by default: with it on, sessions are read from Anthropic
        from .bridge.remote import Bridge  # httpx, trio-websocket: only with Remote Control on

        bridge = Bridge(config.remote, event_log, registry, {**os.environ, **config.claude_env})
        registry.remote_factory = bridge.session_for
    guard.pairings.web_origin = config.web_origin
    rtc = None
    if config.rtc.rendezvous is not None:  # aiortc and paho: imported when its task starts
        from .rtc.auth import device_url
        from .rtc.service import RtcService

        # a device reaches the rendezvous as the daemon does: with its credentials, if any
        guard.pairings.rendezvous_url = device_url(config.rtc.rendezvous, config.rtc.credentials())
        rtc = RtcService(
            config.rtc, guard.identity.signing_key, guard.devices, pairings=guard.pairings
        )
    ops = Operations(
        registry,
        event_log,
        guard,
        Policy(frozenset(config.remote_modes)),
        probes={
            "keep_awake": awake.status,
            "notify": notifier.statistics,
            "claude": cli.status,
            "remote_control": bridge.status if bridge else lambda: {"enabled": False},
            "rtc": rtc.status if rtc else lambda: {"enabled": False},
        },
        cli=cli,
    )
    hosts: set[str] = set()
    settings = HTTPSettings(config.sse_keepalive, config.client_queue, config.max_body)
    # Checked with TLS too: a page on another name (DNS rebinding, a proxy's other vhost) is
    # refused before any credential is looked at.
    app = create_app(ops, guard, settings, lambda: hosts)
    notify_routes.add_routes(app, notifier)
    # session event streams skip the ASGI layers (the token path; see http/direct.py)
    direct = DirectEvents(ops, guard, settings, lambda: hosts)
    stop = trio.Event()

    async with trio.open_nursery() as daemon:
        await daemon.start(event_log.run)
        await daemon.start(awake.run)  # outlives the sessions: released when the daemon ends
        async with trio.open_nursery() as services:
            await services.start(registry.run)
            if bridge is not None:
                await services.start(bridge.run, stop)
            binds: list[str] = await services.start(
                partial(
                    serve_http,
                    app,
                    _http_config(config, guard.certificates),
                    direct,
                    shutdown_trigger=stop.wait,
                )
            )
            url = binds[0]
            direct_urls = reachable_urls(url)
            hosts.update(
                _allowed_hosts(url), _public_hosts(config.public_urls), _public_hosts(direct_urls)
            )
            guard.urls = [*config.public_urls, *direct_urls]
            endpoint, quic_port = None, 0
            front = Front(routes(ops, notifier))  # the operation table, without HTTP
            requests = front.dispatch
            if rtc is not None:  # a DataChannel serves the same session as WebTransport
                rtc.serve_with(
                    rtc_sessions(
                        requests,
                        ops,
                        guard,
                        link_settings(config.max_body, config.client_queue, config.sse_keepalive),
                    ),
                    pair=requests,  # pairing over the rendezvous: the same POST /v1/pair
                )
            if config.quic_port != -1:
                from .quic.endpoint import Endpoint, session_urls, settings_for  # aioquic

                endpoint = Endpoint(requests, ops, guard, guard.certificates, settings_for(config))
                quic_port = await services.start(partial(endpoint.run, shutdown_trigger=stop))
                # a proxy carries HTTP, not QUIC: WebTransport goes to this host directly
                guard.pairings.quic_urls = session_urls(direct_urls, quic_port)
            if rtc is not None:  # a broker down at start is retried, never fatal; at stop, its
                # links end as WebTransport's do (after their streams, with going_away)
                services.start_soon(rtc.supervise, stop)
            _announce(config, url, guard)
            async with trio.open_nursery() as housekeeping:  # lives exactly until stop
                housekeeping.start_soon(_rotate_certificates, guard.certificates)
                housekeeping.start_soon(_keep_streams_alive, event_log, config.sse_keepalive)
                # notifications end at stop: the turns a shutdown fails are not news
                await housekeeping.start(notifier.run)
                if handle_signals:
                    housekeeping.start_soon(_stop_on_signal, stop)
                if show_pairing and not guard.devices.active():
                    _offer_pairing(guard, config.pairing_ttl)
                gc.freeze()  # start-up objects never become garbage; keep them out of GC passes
                # Few cycles are made per event; at 100 clients the default gen-0 threshold
                # (700) ran ~500 collections/s and 8 ms gen-2 pauses (tests/bench/RESULTS.md).
                gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
                port = urlsplit(url).port or 0
                fingerprint = guard.identity.fingerprint
                task_status.started(
                    DaemonHandle(url, port, token, stop, fingerprint, app, quic_port, endpoint, rtc)
                )
                await stop.wait()
                housekeeping.cancel_scope.cancel()
            log.info("stopping: sessions first, so clients see how their turns ended")
            registry.stop()
            await registry.stopped.wait()
            await event_log.flush()
            event_log.close_subscriptions()
        await event_log.flush()
        daemon.cancel_scope.cancel()
    log.info("stopped")


def _offer_pairing(guard: Guard, ttl: float) -> None:
    """With no device paired yet, show a pairing code, but only to a person at a terminal: the
    code is a secret, and a redirected stdout is a log file (systemd, launchd, nohup)."""
    isatty = getattr(sys.stdout, "isatty", None)
    if callable(isatty) and isatty():
        from .security.qr import render_pairing  # segno: only for a terminal

        print(render_pairing(guard.offer(Scope.ADMIN, ttl)), flush=True)
    else:
        log.info("no device is paired yet: run 'sidecode-trio pair' to show a pairing code")


def _busy_tracker(event_log: EventLog, awake: KeepAwake) -> Callable[[set[str]], None]:
    """Keep the host awake while any session runs a turn or waits for an approval."""
    busy: set[str] = set()

    def track(session_ids: set[str]) -> None:
        for session_id in session_ids:
            if not event_log.has(session_id):
                busy.discard(session_id)  # removed
            elif event_log.fold(session_id).status in BUSY:
                busy.add(session_id)
            else:
                busy.discard(session_id)
        awake.set_busy(bool(busy))

    return track


async def _keep_streams_alive(event_log: EventLog, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        event_log.keepalive()


async def _rotate_certificates(certificates: CertificateStore) -> None:
    while True:
        await trio.sleep(ROTATION_CHECK)
        if certificates.refresh():
            log.info(
                "TLS certificate rotated; new connections use %s", certificates.info()[0].sha256
            )


def local_addresses() -> list[str]:
    """This host's IPv4 addresses, read from its interfaces (Linux) or its name; no traffic."""
    found: list[str] = []
    try:
        for _, name in socket.if_nameindex():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                request = struct.pack("256s", name.encode()[:15])
                try:
                    reply = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, request)
                except OSError:
                    continue  # no IPv4 address on this interface
                found.append(socket.inet_ntoa(reply[20:24]))
    except (OSError, AttributeError):
        pass
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        found.extend(str(info[4][0]) for info in infos)
    except OSError:
        pass
    return list(dict.fromkeys(found))


def reachable_urls(url: str) -> list[str]:
    """The URLs a device may use: the bound one, or each address of this host for a wildcard."""
    parts = urlsplit(url)
    if parts.hostname not in ("0.0.0.0", "::"):  # noqa: S104 - recognising the wildcard
        return [url]
    addresses = [a for a in local_addresses() if not a.startswith("127.")] + ["127.0.0.1"]
    return [f"{parts.scheme}://{f'[{a}]' if ':' in a else a}:{parts.port}" for a in addresses]


def _announce(config: DaemonConfig, url: str, guard: Guard) -> None:
    info: dict[str, Any] = {
        "http": url,
        "pid": os.getpid(),
        "state_dir": str(config.state_dir),
        "version": __version__,
        "fingerprint": guard.identity.fingerprint,
        "quic": guard.pairings.quic_urls[0] if guard.pairings.quic_urls else None,
    }
    text = json.dumps(info)
    write_atomic(config.daemon_file, text)
    if config.ready_file is not None:
        write_atomic(config.ready_file, text)
    log.info("listening on %s (pid %d, state in %s)", url, os.getpid(), config.state_dir)
    log.info(
        "identity %s (key in %s); %d paired device(s)",
        guard.identity.fingerprint,
        guard.identity.stored_in,
        len(guard.devices.active()),
    )


async def _stop_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("got %s", signal.Signals(signum).name)
            stop.set()
            return
