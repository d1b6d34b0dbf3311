"""The web app's static shell: served without credentials, with the right types and headers,
while every API route still needs them; the pairing offer carries the web app's link."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio

from sidecode_trio import web
from sidecode_trio.config import DaemonConfig
from sidecode_trio.errors import Forbidden
from sidecode_trio.security.auth import Principal
from sidecode_trio.security.devices import Scope
from sidecode_trio.security.identity import unb64
from sidecode_trio.security.qr import qr_text, render_pairing

from helpers import Client, running_daemon

STATIC = Path(web.__file__).parent / "static"


def anonymous(owner: Client) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=owner.handle.url, timeout=10, follow_redirects=False)


async def test_every_static_file_is_served_with_its_type_and_no_credentials(
    daemon: Client,
) -> None:
    files = web.load_files()
    on_disk = {str(p.relative_to(STATIC)) for p in STATIC.rglob("*") if p.is_file()}
    assert set(files) == on_disk  # nothing shipped is left unservable
    expected = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
    expected |= {".html": "text/html", ".svg": "image/svg+xml", ".md": "text/markdown"}
    expected |= {".webmanifest": "application/manifest+json"}
    with trio.fail_after(30):
        async with anonymous(daemon) as http:
            for name, static in files.items():
                response = await http.get(f"/app/{name}")
                assert response.status_code == 200, name
                assert response.content == static.body
                kind = response.headers["content-type"]
                suffix = Path(name).suffix
                wanted = expected.get(suffix, "text/plain")
                assert kind.startswith(wanted), (name, kind)
                assert response.headers["x-content-type-options"] == "nosniff"
                assert "script-src 'self'" in response.headers["content-security-policy"]
                assert response.headers["cache-control"] == "no-cache"
                etag = response.headers["etag"]
                again = await http.get(f"/app/{name}", headers={"If-None-Match": etag})
                assert again.status_code == 304 and again.content == b""


async def test_the_shell_is_open_and_the_api_is_not(daemon: Client) -> None:
    with trio.fail_after(10):
        async with anonymous(daemon) as http:
            index = await http.get("/app/")
            assert index.status_code == 200
            assert index.headers["content-type"] == "text/html; charset=utf-8"
            assert re.search(r'<script type="module" src="app\.js\?v=[0-9a-f]{12}">', index.text)
            csp = index.headers["content-security-policy"]
            # the WebTransport endpoint is reachable under the CSP; nothing else off-origin
            quic_urls = (await http.get("/v1/info")).json()["quic"]
            wt_origins = {re.sub(r"/v1/wt$", "", url) for url in quic_urls}
            assert all(origin in csp for origin in wt_origins) and "connect-src 'self'" in csp
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
            for path in ("/", "/app"):
                moved = await http.get(path)
                assert moved.status_code == 302 and moved.headers["location"] == "/app/"
            assert (await http.get("/app/nope.js")).status_code == 404
            assert (await http.get("/app/..%2Fpyproject.toml")).status_code == 404
            assert (await http.get("/app/vendor/../../web/__init__.py")).status_code != 200
            # the API keeps its credentials, including under the app's prefix for other methods
            for method, path in [("GET", "/v1/sessions"), ("GET", "/v1/events")]:
                refused = await http.request(method, path)
                assert refused.status_code == 401, path
                assert refused.json()["error"]["code"] == "unauthorized"
            assert (await http.post("/app/index.html", json={})).status_code == 401


async def test_the_pairing_offer_carries_a_web_link_with_the_payload_in_its_fragment(
    daemon: Client,
) -> None:
    with trio.fail_after(10):
        offer = (await daemon.http.post("/v1/pairings", json={"scope": "chat"})).json()
    link = offer["web_link"]
    base, _, fragment = link.partition("#pair=")
    assert base == daemon.handle.url.rstrip("/") + "/app/"
    assert json.loads(unb64(fragment)) == offer["payload"]
    assert "?" not in link  # nothing of the payload goes to a server


def test_the_page_may_reach_a_websocket_rendezvous_and_nothing_else_of_it() -> None:
    """The app dials the WebRTC path from the daemon's own origin too (when its addresses are
    out of reach): the CSP must let it reach a ws:/wss: broker; an mqtt:// one is not for
    browsers and a path is not an origin."""
    wt = ["https://127.0.0.1:8443/v1/wt"]
    assert web.page_origins(wt, "wss://broker.example:8884/mqtt") == [
        "https://127.0.0.1:8443",
        "wss://broker.example:8884",
    ]
    assert web.page_origins(wt, "mqtts://broker.example:8883") == ["https://127.0.0.1:8443"]
    assert web.page_origins(wt, None) == ["https://127.0.0.1:8443"]
    policy = web.security_policy(web.page_origins([], "ws://10.0.0.2:9001"))
    assert "connect-src 'self' ws://10.0.0.2:9001;" in policy


def test_the_service_worker_precaches_only_files_that_exist() -> None:
    source = (STATIC / "sw.js").read_text()
    shell = re.search(r"const SHELL = \[(.*?)\];", source, re.S)
    assert shell is not None
    names = re.findall(r'"([^"]+)"', shell.group(1))
    files = web.load_files()
    assert names and all(name == "./" or name in files for name in names)
    assert 'import "./sw-push.js";' in source and "sw-push.js" in files


def test_the_service_worker_precaches_every_module_the_app_imports() -> None:
    """The exported app opens when its host is unreachable and still dials the daemon: every
    module any page module imports, statically or when it dials or pairs, is in the shell."""
    source = (STATIC / "sw.js").read_text()
    shell = re.search(r"const SHELL = \[(.*?)\];", source, re.S)
    assert shell is not None
    names = set(re.findall(r'"([^"]+)"', shell.group(1)))
    imported = set()
    for module in STATIC.glob("*.js"):
        if module.name in ("sw.js", "sw-push.js"):
            continue  # the worker's own (the browser keeps a module worker's imports)
        text = module.read_text()
        found = re.findall(r'(?:from|import)\s*\(?\s*"\./([^"]+)"', text)
        imported |= set(found)
    assert {"pair-remote.js", "rtc-link.js", "framed.js", "vendor/mqtt.esm.js"} <= imported
    assert imported - names == set()


def test_vendored_libraries_are_recorded_with_their_licences() -> None:
    versions = (STATIC / "vendor" / "VERSIONS.md").read_text()
    for vendored in (STATIC / "vendor").glob("*.*"):
        if vendored.name != "VERSIONS.md":
            assert vendored.name in versions, vendored.name
    licences = {p.name for p in (STATIC / "vendor" / "licenses").iterdir()}
    libraries = [line for line in versions.splitlines() if line.startswith("| [")]
    assert len(licences) == len(libraries) == 5  # one licence text per library in the table


async def test_pair_prints_the_web_link_and_its_qr_code_carries_it(daemon: Client) -> None:
    with trio.fail_after(10):
        offer = (await daemon.http.post("/v1/pairings", json={"scope": "chat"})).json()
    shown = render_pairing(offer)
    assert f"or open in a browser: {offer['web_link']}" in shown
    assert qr_text(offer["web_link"]) in shown  # a phone's camera opens the web app
    assert offer["link"] in shown  # native clients keep their link


async def test_info_says_which_modes_a_paired_device_may_choose(
    make_config: Callable[..., DaemonConfig],
) -> None:
    """The app offers only what the daemon allows: ``remote_modes``, narrowest first."""
    async with running_daemon(make_config(remote_modes=("default", "plan", "acceptEdits"))) as d:
        with trio.fail_after(10):
            async with anonymous(d) as http:
                info = (await http.get("/v1/info")).json()
    assert info["remote_modes"] == ["plan", "default", "acceptEdits"]


def test_a_chat_device_comes_back_from_plan_but_does_not_widen_past_default() -> None:
    chat = Principal("dev_1", "phone", Scope.CHAT)
    chat.require_mode_change("default", "plan")
    chat.require_mode_change("plan", "default")  # back from plan: was refused (needed admin)
    chat.require_mode_change("plan", "dontAsk")
    for wanted in ("acceptEdits", "auto", "bypassPermissions"):
        with pytest.raises(Forbidden, match="admin"):
            chat.require_mode_change("plan", wanted)
    Principal("dev_2", "laptop", Scope.ADMIN).require_mode_change("plan", "acceptEdits")


async def test_the_shell_is_served_gzipped_and_versioned_files_are_cached_for_a_year(
    daemon: Client,
) -> None:
    files = web.load_files()
    build = files["app.js"].build
    plain = sum(len(f.body) for f in files.values())
    sent = 0
    with trio.fail_after(30):
        async with anonymous(daemon) as http:
            index = await http.get("/app/", headers={"Accept-Encoding": "gzip"})
            assert index.headers["content-encoding"] == "gzip"
            assert index.headers["cache-control"] == "no-cache"  # the page itself: revalidated
            assert index.headers["vary"] == "Accept-Encoding"
            # every local reference of the page and its modules carries the build
            refs = re.findall(r'(?:src|href)="([^"#]+)"', index.text)
            assert refs and all(ref.endswith(f"?v={build}") for ref in refs), refs
            assert f'from "./render.js?v={build}"' in files["session-view.js"].body.decode()
            # the service worker keeps the very URLs the page asks for: nothing is fetched twice
            assert f'"app.js?v={build}", "auth.js?v={build}"' in files["sw.js"].body.decode()
            for name, static in files.items():
                response = await http.get(
                    f"/app/{name}?v={build}", headers={"Accept-Encoding": "gzip, br"}
                )
                assert response.status_code == 200 and response.content == static.body, name
                if name != web.INDEX:
                    assert response.headers["cache-control"] == web.IMMUTABLE, name
                compressible = static.content_type.startswith(web.COMPRESSIBLE)
                if compressible and len(static.body) > 1024:
                    assert response.headers["content-encoding"] == "gzip", name
                gzipped = response.headers.get("content-encoding") == "gzip"
                sent += len(static.gzipped or b"") if gzipped else len(static.body)
            # an old build's URL, or none, is revalidated rather than trusted for a year
            stale = await http.get("/app/app.js?v=000000000000")
            assert stale.headers["cache-control"] == "no-cache"
            # a client that takes no gzip gets the plain bytes
            for refuse in ("identity", "gzip;q=0", ""):
                raw = await http.get("/app/app.js", headers={"Accept-Encoding": refuse})
                assert "content-encoding" not in raw.headers and raw.content == files["app.js"].body
    assert sent < plain * 0.45, (sent, plain)  # ~378 KB -> ~139 KB


async def test_the_files_are_loaded_once_at_the_first_request_not_at_start(
    make_config: Callable[..., DaemonConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start-up does not read, hash and gzip the shell (most starts serve no page soon); the
    first requests, even at once, share one load."""
    loads: list[int] = []

    def counted() -> dict[str, web.StaticFile]:
        loads.append(1)
        return load_files()

    load_files = web.load_files
    monkeypatch.setattr(web, "load_files", counted)
    async with running_daemon(make_config()) as owner:
        assert loads == []
        with trio.fail_after(30):
            async with anonymous(owner) as http, trio.open_nursery() as nursery:
                for name in ("", "app.js", "style.css", "nothing-here.js"):
                    nursery.start_soon(http.get, f"/app/{name}")
            async with anonymous(owner) as http:
                response = await http.get("/app/")
        assert response.status_code == 200 and b"<html" in response.content
        assert loads == [1]
