"""The web app over the WebRTC path (issue 17 #4), in the network lab (tests/netlab.py):
headless Chromium in the ``phone`` namespace, behind its NAT; the daemon's WebRTC task in
``home``, behind another; its HTTPS and QUIC listeners on the test's loopback, out of the
phone's reach. The app is the exported bundle (``web export``) on a static origin inside
``phone``: knowing only the pairing link, it pairs through the broker in ``inet`` (MQTT over
WebSocket), dials the daemon and drives a session with what pairing stored.

It streams a session, approves a tool, the link is dropped (the page closes its peer connection;
the NAT drops every UDP packet for a while; the browser says it is online again) and each time
the app dials anew and resumes exactly: no gap, no duplicate, no snapshot. The header says
"peer-to-peer" through cone NATs and "relayed" through symmetric ones with TURN. From the
daemon's own origin (relayed into ``phone`` by the test) the app goes direct over WebTransport,
switches to WebRTC when that path goes away and back when it returns.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from test_rtc_daemon import until
from test_rtc_lab import lab_daemon
from test_webapp_browser import (
    PHONE,
    STEP_TIMEOUT_MS,
    screenshot,
    send,
    ticks,
    transcript_stats,
    turn_text,
    wait_turn_ends,
)

from sidecode_trio.config import DaemonConfig
from sidecode_trio.web.export import CONNECT, export, meta_policy

import netlab
from helpers import chromium_args, chromium_or_skip, running_daemon, serve_folder

netlab.skip_unless_possible()
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[netlab.Lab]:
    with netlab.open_lab(tmp_path_factory.mktemp("netlab")) as lab:
        yield lab


@contextmanager
def static_site(lab: netlab.Lab, root: Path) -> Iterator[str]:
    """The exported app on http://127.0.0.1:<port> inside ``phone`` (loopback: a secure context).
    Its policy also lets the page reach the lab's broker, a plain ``ws:`` (a real one is
    ``wss:``, which the exported policy allows)."""
    with static_server(lab, root) as (url, _stop):
        yield url


@contextmanager
def static_server(lab: netlab.Lab, root: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    """:func:`static_site` and a function that stops it (the host goes away)."""
    export(root)
    index = root / "index.html"
    policy = meta_policy()
    opened = policy.replace(" ".join(CONNECT), " ".join([*CONNECT, netlab.MQTT_WS_URL]))
    index.write_text(index.read_text().replace(policy, opened))
    (root / "blank.html").write_text("<!doctype html><title>blank</title>")

    def in_phone(
        listen: Callable[[], http.server.ThreadingHTTPServer],
    ) -> http.server.ThreadingHTTPServer:
        with lab.inside("phone"):  # the listening socket stays in the namespace it was made in
            return listen()

    with serve_folder(root, in_phone) as served:
        yield served.url, served.stop


class Forwarder:
    """Makes the daemon's loopback ports reachable from ``phone``: 127.0.0.1:``tcp`` (HTTPS) and
    127.0.0.1:``udp`` (QUIC) there are relayed to the same here, until :meth:`cut` (the phone's
    direct path to the daemon goes away, and every relayed connection with it). Without
    ``relay_tcp`` the HTTPS port is only counted (``tcp_connections``) and closed, never relayed."""

    def __init__(self, lab: netlab.Lab, tcp: int, udp: int, relay_tcp: bool = True) -> None:
        self.ports = (tcp, udp)
        self.relay_tcp = relay_tcp
        self.tcp_connections = 0
        with lab.inside("phone"):  # these two stay in ``phone``
            self.tcp = socket.create_server(("127.0.0.1", tcp))
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("127.0.0.1", udp))
        self.stopped = False
        self.open: list[socket.socket] = []
        self.upstream: dict[Any, socket.socket] = {}
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._accept, self._udp)]
        for thread in self.threads:
            thread.start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for each in (source, sink):
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                phone, _ = self.tcp.accept()
                self.tcp_connections += 1
                if not self.relay_tcp:
                    phone.close()
                    continue
                daemon = socket.create_connection(("127.0.0.1", self.ports[0]))  # made here: root
                self.open += [phone, daemon]
                for a, b in ((phone, daemon), (daemon, phone)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _udp(self) -> None:
        self.udp.settimeout(0.1)  # a UDP socket blocked in recvfrom is not woken by close()
        with contextlib.suppress(OSError):
            while not self.stopped:
                try:
                    data, peer = self.udp.recvfrom(65536)
                except TimeoutError:
                    continue
                if peer not in self.upstream:
                    daemon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    daemon.connect(("127.0.0.1", self.ports[1]))
                    self.upstream[peer] = daemon
                    self.open.append(daemon)
                    threading.Thread(target=self._back, args=(daemon, peer), daemon=True).start()
                self.upstream[peer].send(data)

    def _back(self, daemon: socket.socket, peer: Any) -> None:
        daemon.settimeout(0.1)
        with contextlib.suppress(OSError):
            while not self.stopped:
                try:
                    self.udp.sendto(daemon.recv(65536), peer)
                except TimeoutError:
                    continue

    def cut(self) -> None:
        self.stopped = True
        for each in (self.tcp, self.udp, *self.open):
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)
            each.close()
        for thread in self.threads:
            thread.join(5)


#: Every Content-Security-Policy violation of a page, kept for :func:`violations`.
VIOLATIONS = """
window.violations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.violations.push(`${e.effectiveDirective} ${e.blockedURI}`);
});
"""


def violations(page: Any) -> list[str]:
    return list(page.evaluate("() => window.violations"))


@contextmanager
def phone_in_lab(
    lab: netlab.Lab, tmp_path: Path, problems: list[str], **options: Any
) -> Iterator[Any]:
    """A phone-sized page in Chromium running inside ``phone`` (``options``: the context's)."""
    wrapper = tmp_path / "chromium-in-phone"
    wrapper.write_text(
        f'#!/bin/sh\nexec ip netns exec {lab.ns["phone"]} {chromium_or_skip()} "$@"\n'
    )
    wrapper.chmod(0o700)
    # host candidates as addresses, not mDNS names (the lab has no mDNS; they are private
    # addresses behind the NAT anyway, so only the reflexive and relay ones can work)
    args = chromium_args("--disable-features=WebRtcHideLocalIpsWithMdns")
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(wrapper), headless=True, args=args)
        try:
            context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, **options)
            context.add_init_script(VIOLATIONS)
            page = context.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

            def on_console(message: Any) -> None:
                if message.type == "error" and "Refused to" in message.text:
                    problems.append(f"console: {message.text}")

            page.on("console", on_console)
            yield page
        finally:
            browser.close()


_REGISTRATION = """async () => {
  const r = await navigator.serviceWorker.getRegistration();
  if (!r) return "no registration";
  return JSON.stringify({installing: r.installing?.state, waiting: r.waiting?.state,
                         active: r.active?.state});
}"""


def wait_controlled(page: Any) -> None:
    """Until the service worker controls the page. Its install fetches the whole shell, which
    on a loaded 2-core machine (Chromium, the daemon and the lab's forwarders on it) has taken
    more than Playwright's default 15 s once in CI; a failure says where the worker stood."""
    try:
        page.wait_for_function("() => navigator.serviceWorker.controller !== null", timeout=90_000)
    except Exception as exc:
        raise AssertionError(f"not controlled: {page.evaluate(_REGISTRATION)}") from exc


def header(page: Any) -> dict[str, Any]:
    """The connection indicator: its text, path, and whether it fits the phone's width."""
    return dict(
        page.evaluate(
            """() => {
              const conn = document.getElementById('conn');
              const label = document.getElementById('conn-label');
              const box = conn.getBoundingClientRect();
              return { text: label.textContent, path: conn.dataset.path,
                       transport: conn.dataset.transport,
                       name: conn.getAttribute('aria-label'),
                       fits: box.left >= 0 && box.right <= innerWidth
                             && label.scrollWidth <= label.clientWidth + 1
                             && document.documentElement.scrollWidth <= innerWidth,
                       height: box.height };
            }"""
        )
    )


def pair_in_app(page: Any, link: str) -> None:
    """Open the pairing link in the app and pair, as a person would."""
    page.goto(link)
    page.wait_for_selector("#pair-view:not([hidden])")
    page.fill("#pair-name", "Lab phone")
    page.click("#pair-button")
    page.wait_for_selector("body[data-paired='true']", timeout=60_000)


def open_session(page: Any, app: str, sid: str, transport: str) -> float:
    """Open the app afresh on session ``sid``; ms from page open to its first frame."""
    page.goto(f"{app}#s={sid}")
    page.reload()
    page.wait_for_selector(
        f"#conn[data-state='live'][data-transport='{transport}']", timeout=60_000
    )
    page.wait_for_function("() => window.sidecode.client.firstFrameAt !== null")
    return float(page.evaluate("() => window.sidecode.client.firstFrameAt"))


async def offer_and_session(owner: Any, work_dir: Path) -> tuple[dict[str, Any], str]:
    """A pairing offer the daemon also listens for on the broker, and a session that waits for
    a tool's approval: (the offer, the session's id)."""
    service = owner.handle.rtc
    with trio.fail_after(30):
        await service.ready.wait()
        offer: dict[str, Any] = (
            await owner.http.post("/v1/pairings", json={"scope": "admin"})
        ).json()
        assert offer["payload"]["rv"] == netlab.MQTT_WS_URL  # a broker a browser can reach
        await until(lambda: service.pairing() == [offer["payload"]["sid"]])
    created = await owner.create(work_dir, "[[bash:echo hi > hi.txt]]")
    return offer, str(created["session"]["id"])


async def drive(
    lab: netlab.Lab,
    config: DaemonConfig,
    tmp_path: Path,
    work_dir: Path,
    scenario: Callable[[Any], None],
) -> list[str]:
    """The exported app on a static origin in ``phone`` pairs (through the broker: nothing else
    of the daemon answers there), opens a session that asks to run a tool, and runs
    ``scenario(page)``; returns the page's problems."""
    problems: list[str] = []
    async with running_daemon(config) as owner:
        offer, sid = await offer_and_session(owner, work_dir)
        fragment = offer["web_link"].split("#", 1)[1]

        def run() -> None:
            with (
                static_site(lab, tmp_path / "site") as site,
                phone_in_lab(lab, tmp_path, problems) as page,
            ):
                pair_in_app(page, f"{site}/#{fragment}")
                page.wait_for_selector("#conn[data-state='live'][data-transport='webrtc']")
                started = open_session(page, site + "/", sid, "webrtc")
                print(f"page open to first frame over WebRTC: {started:.0f} ms")
                scenario(page)
                assert violations(page) == []  # the broker client within the app's policy

        with trio.fail_after(240):
            await trio.to_thread.run_sync(run)
        assert (work_dir / "hi.txt").read_text() == "hi\n"
        assert owner.handle.rtc.refused == 0 and owner.handle.rtc.paired == 1
    return problems


def approve_the_tool(page: Any) -> None:
    card = page.wait_for_selector("#permissions .card")
    card.query_selector("[data-action='allow']").click()
    page.wait_for_selector("#permissions .card", state="detached")
    wait_turn_ends(page, 1)


def dropped_and_resumed(
    page: Any, turns: int, ticks_: int, drop: Callable[[], None], transport: str = "webrtc"
) -> str:
    """Start a slow turn, ``drop()`` the link mid-turn; the turn arrives whole on a new link
    over ``transport``. Returns why the old link ended."""
    send(page, f"[[slow:{ticks_}]]")
    page.wait_for_function("() => /tick 3 /.test(document.getElementById('transcript').innerText)")
    page.evaluate("() => { window.oldLink = window.sidecode.client.link; }")
    drop()
    page.wait_for_function("() => window.oldLink.closed")
    wait_turn_ends(page, turns)
    text = turn_text(page)
    assert ticks(text) == list(range(ticks_)), text  # each once, in order
    stats = transcript_stats(page)
    assert stats["duplicates"] == 0 and stats["snapshots"] == 1  # the first load's only
    page.wait_for_selector(f"#conn[data-state='live'][data-transport='{transport}']")
    assert page.evaluate("() => window.sidecode.client.link !== window.oldLink")
    return str(page.evaluate("() => window.oldLink.why"))


def daemon_ports(owner: Any, offer: dict[str, Any]) -> tuple[int, int]:
    """The daemon's HTTPS port, and the one QUIC port its pairing payload names."""
    port = int(owner.handle.url.rstrip("/").rsplit(":", 1)[1])
    (quic_port,) = {int(url.split("/")[2].rsplit(":", 1)[1]) for url in offer["payload"]["quic"]}
    return port, quic_port


def direct_path_goes_away(page: Any, direct: Forwarder) -> None:
    """The direct path is cut mid-turn: the app carries on peer-to-peer, resuming exactly."""

    def away() -> None:  # QUIC alone would wait for its 60 s idle timeout
        direct.cut()
        page.evaluate("() => window.sidecode.client.drop()")

    dropped_and_resumed(page, 2, 40, away, "webrtc")
    assert header(page)["text"] == "live · peer-to-peer"


async def test_the_app_drives_a_session_over_webrtc_through_two_nats_and_resumes_after_drops(
    lab: netlab.Lab,
    make_config: Callable[..., DaemonConfig],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    work_dir: Path,
) -> None:
    chromium_or_skip()
    lab.nat("nath", "cone")
    lab.nat("natp", "cone")
    config = lab_daemon(lab, make_config, monkeypatch, tmp_path, rendezvous=netlab.MQTT_WS_URL)
    reasons: list[str] = []

    def scenario(page: Any) -> None:
        shown = header(page)
        assert shown["text"] == "live · peer-to-peer" and shown["path"] == "peer-to-peer"
        assert shown["name"] == "Connection: live · peer-to-peer (WebRTC)"
        assert shown["fits"] and shown["height"] >= 44, shown
        approve_the_tool(page)

        # the page closes its peer connection mid-turn
        reasons.append(
            dropped_and_resumed(page, 2, 40, lambda: page.evaluate(
                "() => window.sidecode.client.link.pc.close()"
            ))
        )  # fmt: skip

        # the phone's NAT drops every UDP packet until the app has noticed
        def blackhole() -> None:
            rule = ["FORWARD", "-p", "udp", "-j", "DROP"]
            lab.exec("natp", "iptables", "-I", *rule)
            try:
                page.wait_for_function("() => window.oldLink.closed")
            finally:
                lab.exec("natp", "iptables", "-D", *rule)

        reasons.append(dropped_and_resumed(page, 3, 40, blackhole))
        assert header(page)["text"] == "live · peer-to-peer"

        # the browser says it is online again (a new network): the app dials anew at once
        online = "() => window.dispatchEvent(new Event('online'))"
        reasons.append(dropped_and_resumed(page, 4, 20, lambda: page.evaluate(online)))

        # frames longer than a DataChannel message (16 KiB), both ways
        long = "long " + "0123456789" * 4000
        send(page, long)
        wait_turn_ends(page, 5)
        assert turn_text(page).count("0123456789") == 4000

        # the longest label fits a small phone's header too
        page.set_viewport_size({"width": 320, "height": 640})
        assert header(page)["fits"]
        screenshot(page, "phone-webrtc-320.png")

    problems = await drive(lab, config, tmp_path, work_dir, scenario)
    assert problems == []
    assert reasons[0] == "the DataChannel closed"
    # a dead path: the daemon's pings stop (1 s apart here), or ICE says so first
    assert reasons[1] in ("the daemon's pings stopped", "the peer connection stayed disconnected")
    assert reasons[2] == "the browser came back online"


async def test_through_symmetric_nats_the_app_is_relayed_by_turn_and_says_so(
    lab: netlab.Lab,
    make_config: Callable[..., DaemonConfig],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    work_dir: Path,
) -> None:
    chromium_or_skip()
    lab.nat("nath", "symmetric")
    lab.nat("natp", "symmetric")
    config = lab_daemon(
        lab, make_config, monkeypatch, tmp_path, turn=True, rendezvous=netlab.MQTT_WS_URL
    )

    def scenario(page: Any) -> None:
        shown = header(page)
        assert shown["text"] == "live · relayed" and shown["path"] == "relayed"
        assert shown["name"] == "Connection: live · relayed (WebRTC)" and shown["fits"], shown
        pair = page.evaluate("() => window.sidecode.client.link.pair")
        assert "relay" in (pair["local"], pair["remote"]), pair
        approve_the_tool(page)
        why = dropped_and_resumed(page, 2, 30, lambda: page.evaluate(
            "() => window.sidecode.client.link.pc.close()"
        ))  # fmt: skip
        assert why == "the DataChannel closed"
        assert header(page)["text"] == "live · relayed"  # the new link is relayed too

    try:
        problems = await drive(lab, config, tmp_path, work_dir, scenario)
    finally:
        lab.nat("nath", "cone")
        lab.nat("natp", "cone")
    assert problems == []


async def test_the_app_goes_direct_when_it_can_and_switches_paths_without_losing_an_event(
    lab: netlab.Lab,
    make_config: Callable[..., DaemonConfig],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    work_dir: Path,
) -> None:
    """The app loaded from the daemon itself (its HTTP relayed into ``phone``) goes direct over
    WebTransport; the direct path goes away mid-turn and the app carries on over WebRTC; it comes
    back, the browser says "online", and the app goes direct again. Every subscription resumes
    exactly across both switches."""
    chromium_or_skip()
    lab.nat("nath", "cone")
    lab.nat("natp", "cone")
    config = lab_daemon(lab, make_config, monkeypatch, tmp_path, rendezvous=netlab.MQTT_WS_URL)
    # served over plain HTTP on loopback: a secure context that may use the lab's ws: broker
    # (an HTTPS page may not; a real broker is wss:)
    config = attrs.evolve(config, https=False)
    problems: list[str] = []
    async with running_daemon(config) as owner:
        offer, sid = await offer_and_session(owner, work_dir)
        port, quic_port = daemon_ports(owner, offer)
        app = owner.handle.url.rstrip("/") + "/app/"
        assert offer["web_link"].startswith(app)

        def run() -> None:
            direct = Forwarder(lab, port, quic_port)
            try:
                with phone_in_lab(lab, tmp_path, problems) as page:
                    pair_in_app(page, offer["web_link"])  # POST /v1/pair on the daemon's origin
                    started = open_session(page, app, sid, "webtransport")
                    print(
                        f"page open to first frame over WebTransport (relayed in): {started:.0f} ms"
                    )
                    assert header(page)["text"] == "live · direct"
                    approve_the_tool(page)
                    direct_path_goes_away(page, direct)

                    def back() -> None:
                        nonlocal direct
                        direct = Forwarder(lab, port, quic_port)
                        page.evaluate("() => window.dispatchEvent(new Event('online'))")

                    why = dropped_and_resumed(page, 3, 40, back, "webtransport")
                    assert why == "the browser came back online"
                    assert header(page)["text"] == "live · direct"
            finally:
                direct.cut()

        with trio.fail_after(240):
            await trio.to_thread.run_sync(run)
        assert (work_dir / "hi.txt").read_text() == "hi\n"
    assert problems == []


async def test_from_another_origin_the_app_goes_direct_then_peer_to_peer_and_opens_offline(
    lab: netlab.Lab,
    make_config: Callable[..., DaemonConfig],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    work_dir: Path,
) -> None:
    """The exported app on a static origin in ``phone``, the daemon's QUIC port relayed there
    and its HTTPS port counted but never answered: it pairs over WebTransport, keeps the
    certificates it pins, and drives a session "live · direct" without one connection to the
    daemon's HTTPS. The direct path goes away: it carries on peer-to-peer, exactly. Its host goes
    away: it opens from its service worker's cache and dials again. MQTT.js runs within the
    app's policy (no blob: worker refused)."""
    chromium_or_skip()
    lab.nat("nath", "cone")
    lab.nat("natp", "cone")
    config = lab_daemon(lab, make_config, monkeypatch, tmp_path, rendezvous=netlab.MQTT_WS_URL)
    problems: list[str] = []
    async with running_daemon(config) as owner:
        offer, sid = await offer_and_session(owner, work_dir)
        port, quic_port = daemon_ports(owner, offer)
        fragment = offer["web_link"].split("#", 1)[1]
        counted: list[int] = []

        def run() -> None:
            direct = Forwarder(lab, port, quic_port, relay_tcp=False)
            try:
                with (
                    static_server(lab, tmp_path / "site") as (site, stop_site),
                    phone_in_lab(lab, tmp_path, problems) as page,
                ):
                    pair_in_app(page, f"{site}/#{fragment}")  # over WebTransport
                    started = open_session(page, site + "/", sid, "webtransport")
                    print(f"page open to first frame, direct from another origin: {started:.0f} ms")
                    assert header(page)["text"] == "live · direct"
                    record = page.evaluate(
                        "async () => (await (await import('./auth.js')).loadDevice()).daemon"
                    )
                    pinned = [cert["sha256"] for cert in record["certs"]]
                    assert pinned[0] == offer["payload"]["cert"], record
                    # refreshed over the link: signed, with an expiry (the payload has none)
                    assert all(cert["not_after"] for cert in record["certs"]), record
                    assert record["quic"] == offer["payload"]["quic"]
                    approve_the_tool(page)
                    counted.append(direct.tcp_connections)
                    direct_path_goes_away(page, direct)

                    # the static host goes away; the app opens from its cache and dials
                    wait_controlled(page)
                    stop_site()
                    page.reload()
                    page.wait_for_selector("#conn[data-state='live'][data-transport='webrtc']")
                    wait_turn_ends(page, 2)
                    assert header(page)["text"] == "live · peer-to-peer"
                    assert violations(page) == []
                    counted.append(direct.tcp_connections)
            finally:
                direct.cut()

        with trio.fail_after(240):
            await trio.to_thread.run_sync(run)
        assert (work_dir / "hi.txt").read_text() == "hi\n"
    assert counted == [0, 0]  # never a connection to the daemon's HTTPS
    assert problems == []
