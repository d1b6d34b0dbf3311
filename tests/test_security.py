"""Pairing, device credentials, scopes, revocation, certificate pinning and the keystore.

The device side is ``examples/pair_client.py`` (PyNaCl + the standard library only), run in a
worker thread because it is blocking code; the daemon serves HTTPS on 127.0.0.1 with its own
identity-signed certificate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import json
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nacl.signing
import pytest
import trio

from sidecode_trio import web
from sidecode_trio.config import DaemonConfig
from sidecode_trio.errors import ConfigError, Unauthorized
from sidecode_trio.ops.front import open_routes
from sidecode_trio.security import identity as identity_module
from sidecode_trio.security.auth import AUTH_CONTEXT, LOCAL, Principal, check_token
from sidecode_trio.security.devices import DeviceStore, Scope
from sidecode_trio.security.guard import Credentials, Guard, is_loopback_peer
from sidecode_trio.security.identity import b64, fingerprint, load_identity
from sidecode_trio.security.pairing import (
    PairingProof,
    PairingRefused,
    Pairings,
    RateLimited,
    prove,
    transcript,
)
from sidecode_trio.security.tls import CertificateStore, make_certificate

from helpers import Client, load_example, running_daemon

pc = load_example("pair_client")


@pytest.fixture
async def secure(make_config: Callable[..., DaemonConfig]) -> AsyncIterator[Client]:
    async with running_daemon(make_config(https=True)) as client:
        assert client.handle.url.startswith("https://127.0.0.1:")
        yield client


async def offer(owner: Client, scope: str = "chat", ttl: float = 300) -> dict[str, Any]:
    response = await owner.http.post("/v1/pairings", json={"scope": scope, "ttl": ttl})
    assert response.status_code == 201, response.text
    return response.json()["payload"]  # type: ignore[no-any-return]


async def paired(owner: Client, scope: str = "chat", name: str = "phone") -> Any:
    payload = await offer(owner, scope)
    credentials = await trio.to_thread.run_sync(pc.pair, payload, name)
    return pc.Client(credentials)


async def call(device: Any, method: str, path: str, body: Any = None) -> Any:
    return await trio.to_thread.run_sync(device.call, method, path, body)


async def test_pairing_round_trip_over_pinned_https(secure: Client, work_dir: Path) -> None:
    info = (await secure.http.get("/v1/info")).json()
    assert info["fingerprint"] == secure.handle.fingerprint
    payload = await offer(secure)
    assert (
        payload["pk"] == info["public_key"] and payload["cert"] == info["certificates"][0]["sha256"]
    )
    link = (await secure.http.post("/v1/pairings", json={})).json()["link"]
    assert pc.parse_payload(link)["pk"] == info["public_key"]

    credentials = await trio.to_thread.run_sync(pc.pair, payload, "my phone")
    assert credentials["scope"] == "chat"
    device = pc.Client(credentials)
    await secure.create(work_dir, "hello from the owner")
    sessions = (await call(device, "GET", "/v1/sessions"))["sessions"]
    assert [s["title"] for s in sessions] == ["hello from the owner"]
    devices = (await secure.http.get("/v1/devices")).json()["devices"]
    assert [(d["name"], d["scope"]) for d in devices] == [("my phone", "chat")]
    assert devices[0]["last_seen"] is not None
    kinds = [e["kind"] for e in (await secure.http.get("/v1/audit")).json()["entries"]]
    assert "paired" in kinds


async def test_used_and_wrong_secrets_are_refused(secure: Client) -> None:
    payload = await offer(secure)
    await trio.to_thread.run_sync(pc.pair, payload, "first")
    with pytest.raises(RuntimeError, match=r"403.*pairing_refused"):
        await trio.to_thread.run_sync(pc.pair, payload, "again")  # one use only
    forged = {**(await offer(secure)), "secret": pc.b64(b"x" * 32)}
    with pytest.raises(RuntimeError, match="does not verify"):
        await trio.to_thread.run_sync(pc.pair, forged, "forger")
    assert len((await secure.http.get("/v1/devices")).json()["devices"]) == 1


async def pair_key(
    owner: Client, payload: dict[str, Any], name: str, key: nacl.signing.SigningKey
) -> Any:
    """``POST /v1/pair`` for ``payload`` with this device key (pc.pair makes a new one)."""
    device = bytes(key.verify_key)
    sid = payload["sid"].encode()
    message = b"".join(
        [pc.PAIR_CONTEXT, pc.unb64(payload["pk"]), device, name.encode(), b"\n", sid]
    )
    body = {
        "secret_id": payload["sid"],
        "device_public_key": pc.b64(device),
        "name": name,
        "mac": pc.b64(prove(pc.unb64(payload["secret"]), message)),
        "signature": pc.b64(key.sign(message).signature),
    }
    response = await owner.http.post("/v1/pair", json=body)
    assert response.status_code == 201, response.text
    return response.json()["device"]


async def test_a_key_pairing_again_takes_the_new_offers_scope_and_name(secure: Client) -> None:
    """The user just approved the new offer (its scope) and the phone sent its name: both win
    over the old pairing's, on the same record, and the audit says what changed."""
    key = nacl.signing.SigningKey.generate()
    first = await pair_key(secure, await offer(secure, "approve"), "watch", key)
    again = await pair_key(secure, await offer(secure, "admin"), "my phone", key)
    assert again["id"] == first["id"]
    assert (again["name"], again["scope"]) == ("my phone", "admin")
    devices = (await secure.http.get("/v1/devices")).json()["devices"]
    assert [(d["id"], d["name"], d["scope"]) for d in devices] == [
        (first["id"], "my phone", "admin")
    ]
    entries = (await secure.http.get("/v1/audit")).json()["entries"]
    newest = next(e for e in entries if e["kind"] == "paired")
    assert newest["device_id"] == first["id"]
    assert "'my phone' scope=admin" in newest["detail"]
    assert "was 'watch' scope=approve" in newest["detail"]


async def test_failed_pairing_is_rate_limited(secure: Client) -> None:
    body = {"secret_id": "nope", "device_public_key": pc.b64(b"k" * 32), "name": "x",
            "mac": pc.b64(b"m" * 32), "signature": pc.b64(b"s" * 64)}  # fmt: skip
    codes = [(await secure.http.post("/v1/pair", json=body)).status_code for _ in range(7)]
    assert codes[:5] == [403] * 5 and codes[5:] == [429, 429]


def test_pairing_secrets_expire_and_die_after_wrong_proofs() -> None:
    now = [1000.0]
    daemon = nacl.signing.SigningKey.generate()
    pairings = Pairings(bytes(daemon.verify_key), lambda: now[0])

    def proof(offer_id: str, secret: bytes, name: str = "dev") -> PairingProof:
        key = nacl.signing.SigningKey.generate()
        device = bytes(key.verify_key)
        message = transcript(bytes(daemon.verify_key), device, name, offer_id)
        mac, signature = prove(secret, message), key.sign(message).signature
        return PairingProof(offer_id, pc.b64(device), name, pc.b64(mac), pc.b64(signature))

    expiring = pairings.offer(Scope.APPROVE, ttl=300)
    now[0] += 301
    with pytest.raises(PairingRefused, match="expired"):
        pairings.redeem(proof(expiring.secret_id, expiring.secret), "a")
    guessed = pairings.offer(Scope.CHAT, ttl=300)
    for _ in range(3):
        with pytest.raises(PairingRefused):
            pairings.redeem(proof(guessed.secret_id, b"wrong" * 7), "b")
    with pytest.raises(PairingRefused, match="unknown, used or expired"):  # withdrawn
        pairings.redeem(proof(guessed.secret_id, guessed.secret), "c")
    good = pairings.offer(Scope.ADMIN, ttl=300)
    assert pairings.redeem(proof(good.secret_id, good.secret), "d").scope is Scope.ADMIN
    for _ in range(4):
        with pytest.raises(PairingRefused):
            pairings.redeem(proof("zz", b""), "e")
    with pytest.raises(PairingRefused):
        pairings.redeem(proof("zz", b""), "e")
    with pytest.raises(RateLimited):
        pairings.redeem(proof("zz", b""), "e")
    now[0] += 61
    with pytest.raises(PairingRefused):  # the window passed
        pairings.redeem(proof("zz", b""), "e")


async def test_every_route_is_refused_without_credentials(secure: Client) -> None:
    open_routes = {("GET", "/v1/info"), ("POST", "/v1/pair")}
    checked = 0
    async with httpx.AsyncClient(base_url=secure.handle.url, verify=False) as anonymous:
        for rule in secure.handle.app.url_map.iter_rules():
            if rule.endpoint == "static":
                continue
            path = rule.rule.replace("<", "").replace(">", "")  # every parameter gets a value
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                if (method, rule.rule) in open_routes or web.is_public(method, rule.rule):
                    continue  # the web app's static shell is open by design (test_webapp.py)
                for headers in ({}, {"Authorization": "Sidecode e30.AAAA"},
                                {"Authorization": f"Bearer {secure.handle.token}x"}):  # fmt: skip
                    response = await anonymous.request(method, path, headers=headers, json={})
                    assert response.status_code == 401, (method, rule.rule, response.text)
                    checked += 1
    assert checked >= 3 * 15  # the test enumerated the app, not a fixed list


async def test_scopes_limit_what_a_device_may_do(secure: Client, work_dir: Path) -> None:
    watch = await paired(secure, "approve", "watch")
    phone = await paired(secure, "chat", "phone")
    laptop = await paired(secure, "admin", "laptop")
    session = (await secure.create(work_dir))["session"]
    sid = session["id"]
    assert (await call(watch, "GET", f"/v1/sessions/{sid}"))["session"]["id"] == sid
    with pytest.raises(RuntimeError, match=r"403.*scope_required"):
        await call(watch, "POST", f"/v1/sessions/{sid}/messages", {"text": "hi"})
    await call(phone, "PATCH", f"/v1/sessions/{sid}", {"permission_mode": "plan"})  # narrower
    with pytest.raises(RuntimeError, match=r"403.*admin"):
        await call(phone, "PATCH", f"/v1/sessions/{sid}", {"permission_mode": "acceptEdits"})
    with pytest.raises(RuntimeError, match="403"):
        await call(phone, "GET", "/v1/devices")
    updated = await call(laptop, "PATCH", f"/v1/sessions/{sid}", {"permission_mode": "acceptEdits"})
    assert updated["permission_mode"] == "acceptEdits"
    assert len((await call(laptop, "GET", "/v1/devices"))["devices"]) == 3
    watch_id = watch._device_id
    await call(laptop, "PATCH", f"/v1/devices/{watch_id}", {"scope": "chat"})
    await call(watch, "POST", f"/v1/sessions/{sid}/messages", {"text": "now I may"})


async def test_revoked_device_stream_is_closed_by_the_revocation(
    secure: Client, work_dir: Path
) -> None:
    phone = await paired(secure)
    session = (await secure.create(work_dir, "[[slow:400]]"))["session"]
    seen: list[str] = []
    started = threading.Event()

    def follow() -> None:
        for kind, _ in phone.follow(session["id"]):
            seen.append(kind)
            started.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: trio.to_thread.run_sync(follow, abandon_on_cancel=True))
        with trio.fail_after(10):
            while not started.is_set():
                await trio.sleep(0.01)
        device_id = phone._device_id
        reply = await secure.http.delete(f"/v1/devices/{device_id}")
        assert reply.status_code == 200 and reply.json()["closed_streams"] == 1
        # the revocation closed it (closed_streams, above): the follower sees its end, and ends
        # (a reconnect would be refused with 401, raised here). A deadline, not a timing: a
        # thread on a loaded machine can take longer than the second to be scheduled
        with trio.fail_after(10):
            while nursery.child_tasks:
                await trio.sleep(0.01)
    with pytest.raises(RuntimeError, match="401"):
        await call(phone, "GET", "/v1/sessions")


async def test_stream_tickets_are_single_use_and_single_path(
    secure: Client, work_dir: Path
) -> None:
    phone = await paired(secure, "approve")
    session = (await secure.create(work_dir))["session"]
    path = f"/v1/sessions/{session['id']}/events"
    ticket = (await call(phone, "POST", "/v1/tickets", {"path": path}))["ticket"]
    async with httpx.AsyncClient(base_url=secure.handle.url, verify=False) as browser:
        wrong = await browser.get("/v1/events", params={"ticket": ticket})
        assert wrong.status_code == 401  # bound to one path; and now spent
        ticket = (await call(phone, "POST", "/v1/tickets", {"path": path}))["ticket"]
        async with browser.stream("GET", path, params={"ticket": ticket}) as response:
            assert response.status_code == 200
        again = await browser.get(path, params={"ticket": ticket})
        assert again.status_code == 401
    with pytest.raises(RuntimeError, match="400"):
        await call(phone, "POST", "/v1/tickets", {"path": "/v1/devices"})


async def test_a_ticket_names_an_event_stream_exactly(secure: Client) -> None:
    phone = await paired(secure, "approve")
    for path in ["/v1/events", "/v1/sessions/abc/events"]:
        assert (await call(phone, "POST", "/v1/tickets", {"path": path}))["ticket"]
    for path in [
        "/v1/sessionsevents",  # ends with "events" under /v1/: what the old check let through
        "/v1/xevents",
        "/v1/devices/events",
        "/v1/sessions/abc/tools/events",
        "/v1/sessions//events",
        "/v1/events/",
        "/v1//events",
        "/v1/events?since=1",
        "v1/events",
        "/v2/events",
        "",
    ]:
        with pytest.raises(RuntimeError, match="400"):
            await call(phone, "POST", "/v1/tickets", {"path": path})


@pytest.fixture
def impostor(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], str]]:
    """An HTTPS server on 127.0.0.1 with its own certificate that answers /v1/info as told."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(info: dict[str, Any]) -> str:
        now = dt.datetime.now(dt.UTC)
        cert = make_certificate(tmp_path / "impostor", "current", ["127.0.0.1"], now)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(info).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert.cert_path, cert.key_path)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"https://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _peer_hash(url: str) -> str:
    host, port = url.removeprefix("https://").split(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


async def test_a_pinned_client_rejects_another_certificate(
    secure: Client, impostor: Callable[[dict[str, Any]], str]
) -> None:
    real_info = (await secure.http.get("/v1/info")).json()
    pinned = pc.unb64(real_info["public_key"])
    # a relay that replays the daemon's own (validly signed) info over its own certificate
    relay = impostor(real_info)
    with pytest.raises(pc.PinningError, match="not one the daemon vouches for"):
        await trio.to_thread.run_sync(pc.Connection, relay, pinned)
    # an impostor that signs its own certificate hash with another key
    other = nacl.signing.SigningKey.generate()
    forged = {"certificates": [{"sha256": "", "signature": ""}]}  # filled in below
    fake_url = impostor(forged)
    probe = await trio.to_thread.run_sync(_peer_hash, fake_url)
    signature = other.sign(b"sidecode-trio cert v1\n" + bytes.fromhex(probe)).signature
    forged["certificates"][0].update(sha256=probe, signature=pc.b64(signature))
    with pytest.raises(pc.PinningError, match="not signed by the daemon"):
        await trio.to_thread.run_sync(pc.Connection, fake_url, pinned)
    # the real daemon passes the same check
    conn = await trio.to_thread.run_sync(pc.Connection, secure.handle.url, pinned)
    conn.close()


def test_guard_refuses_the_local_token_from_elsewhere(tmp_path: Path) -> None:
    assert is_loopback_peer("127.0.0.1") and is_loopback_peer("::1")
    assert not is_loopback_peer("192.0.2.7") and not is_loopback_peer(None)
    identity = load_identity(tmp_path, "file")
    certs = CertificateStore(tmp_path / "tls", identity, ["127.0.0.1"])
    certs.refresh()
    devices = DeviceStore(tmp_path / "devices.sqlite3")
    guard = Guard(identity, certs, devices, "t" * 43, open_routes=open_routes())
    assert (
        guard.authenticate("Bearer " + "t" * 43, None, "/v1/sessions", "127.0.0.1").scope
        is Scope.ADMIN
    )
    with pytest.raises(Unauthorized, match="this computer only"):
        guard.authenticate("Bearer " + "t" * 43, None, "/v1/sessions", "192.0.2.7")
    assert [e.kind for e in devices.audit_log()] == ["auth_failed"]
    devices.close()


def test_the_guard_lets_in_exactly_the_open_rows_of_the_table(tmp_path: Path) -> None:
    identity = load_identity(tmp_path, "file")
    devices = DeviceStore(tmp_path / "devices.sqlite3")
    certs = CertificateStore(tmp_path / "tls", identity, ["127.0.0.1"])
    guard = Guard(identity, certs, devices, "t" * 43, open_routes=open_routes())
    assert guard.is_open("GET", "/v1/info") and guard.is_open("post", "/v1/pair")
    closed = [("POST", "/v1/info"), ("GET", "/v1/pair"), ("GET", "/v1/info/")]
    closed += [("GET", "/v1/info?x=1"), ("GET", "/v1/sessions"), ("GET", "/")]
    for method, path in closed:
        assert not guard.is_open(method, path), (method, path)
    devices.close()


def test_keystore_falls_back_to_a_private_file_and_survives_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(identity_module, "keyring_usable", lambda: False)  # a headless machine
    first = load_identity(tmp_path, "auto")
    again = load_identity(tmp_path, "auto")
    assert first.public_key == again.public_key and first.stored_in.endswith("identity.key")
    assert (tmp_path / "identity.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigError, match="no usable keyring"):
        load_identity(tmp_path / "elsewhere", "keyring")


async def test_state_files_are_private(make_config: Callable[..., DaemonConfig]) -> None:
    config = make_config(https=True)
    async with running_daemon(config):
        pass
    state = config.state_dir
    assert state.stat().st_mode & 0o777 == 0o700
    for name in ("token", "identity.key", "devices.sqlite3", "events.sqlite3", "tls/current.key"):
        assert (state / name).stat().st_mode & 0o777 == 0o600, name


def test_certificates_rotate_with_an_overlapping_next_one(tmp_path: Path) -> None:
    identity = load_identity(tmp_path, "file")
    store = CertificateStore(tmp_path / "tls", identity, ["127.0.0.1"])
    start = dt.datetime.now(dt.UTC)
    assert store.refresh(start) is False
    not_yet = store.next  # a local, so the check below does not narrow store.next for mypy
    assert not_yet is None
    first = store.current
    assert first is not None
    assert first.not_after - first.not_before <= dt.timedelta(days=14)  # WebTransport's limit
    store.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    store.refresh(start + dt.timedelta(days=6, hours=1))
    upcoming = store.next
    assert upcoming is not None  # made a week ahead: clients learn its hash early
    hashes = [c.sha256 for c in store.info()]
    assert hashes == [first.sha256.hex(), upcoming.sha256.hex()]
    for entry in store.info():
        message = b"sidecode-trio cert v1\n" + bytes.fromhex(entry.sha256)
        nacl.signing.VerifyKey(identity.public_key).verify(message, pc.unb64(entry.signature))
    assert store.refresh(start + dt.timedelta(days=12, hours=2)) is True  # a day before expiry
    assert store.current is not None and store.current.sha256 == upcoming.sha256
    reloaded = CertificateStore(tmp_path / "tls", identity, ["127.0.0.1"])
    reloaded.refresh(start + dt.timedelta(days=12, hours=2))
    assert reloaded.current is not None and reloaded.current.sha256 == upcoming.sha256


async def test_remote_mode_policy_bounds_what_a_device_may_choose(
    make_config: Callable[..., DaemonConfig], work_dir: Path
) -> None:
    async with running_daemon(make_config(https=True, remote_modes=("default", "plan"))) as owner:
        admin = await paired(owner, "admin", "admin phone")
        sid = (await owner.create(work_dir))["session"]["id"]
        with pytest.raises(RuntimeError, match=r"403.*mode_not_allowed"):
            await call(admin, "PATCH", f"/v1/sessions/{sid}", {"permission_mode": "acceptEdits"})
        body = {"cwd": str(work_dir), "permission_mode": "bypassPermissions"}
        with pytest.raises(RuntimeError, match=r"403.*mode_not_allowed"):
            await call(admin, "POST", "/v1/sessions", body)
        plan = await call(admin, "PATCH", f"/v1/sessions/{sid}", {"permission_mode": "plan"})
        assert plan["permission_mode"] == "plan"
        # the owner on this computer is not bound by the policy
        mine = await owner.http.patch(
            f"/v1/sessions/{sid}", json={"permission_mode": "acceptEdits"}
        )
        assert mine.status_code == 200 and mine.json()["permission_mode"] == "acceptEdits"


def _signed(key: nacl.signing.SigningKey, payload_json: str) -> str:
    """A device token over exactly ``payload_json`` (so NaN, Infinity, strings can be sent)."""
    payload = b64(payload_json.encode())
    signature = key.sign(AUTH_CONTEXT + payload.encode()).signature
    return f"{payload}.{b64(signature)}"


def test_a_device_token_lives_at_most_ten_minutes_whatever_its_numbers_say(
    tmp_path: Path,
) -> None:
    devices = DeviceStore(tmp_path / "devices.sqlite3")
    key = nacl.signing.SigningKey.generate()
    public = b64(bytes(key.verify_key))
    device = devices.add("phone", public, fingerprint(bytes(key.verify_key)), Scope.CHAT)
    now, cert = 1_000_000.0, "ab" * 32

    def token(iat: str, exp: str) -> str:
        text = f'{{"dev": "{device.id}", "iat": {iat}, "exp": {exp}, "cert": "{cert}"}}'
        return _signed(key, text)

    assert check_token(token(str(now), str(now + 300)), devices, {cert}, now).id == device.id
    for iat, exp in (
        ("NaN", "Infinity"),
        ("NaN", "NaN"),
        (str(now), "Infinity"),
        ("-Infinity", str(now + 300)),
        ('"nan"', '"inf"'),
        (f'"{now}"', f'"{now + 300}"'),  # numbers as strings
        ("true", str(now + 300)),
        (str(now), "1e999"),
        (str(now), "1" + "0" * 400),  # an integer no float holds
        (str(now), str(now)),  # lives no time at all
        (str(now + 300), str(now)),  # ends before it starts
        (str(now - 100), str(now + 600)),  # 700 s
        ("null", str(now + 300)),
    ):
        with pytest.raises(Unauthorized):
            check_token(token(iat, exp), devices, {cert}, now)
    devices.close()


def test_failures_never_lock_out_a_credential_that_verifies(tmp_path: Path) -> None:
    identity = load_identity(tmp_path, "file")
    certs = CertificateStore(tmp_path / "tls", identity, ["127.0.0.1"])
    certs.refresh()
    devices = DeviceStore(tmp_path / "devices.sqlite3")
    now = [1_000_000.0]
    guard = Guard(
        identity, certs, devices, "t" * 43, open_routes=open_routes(), clock=lambda: now[0]
    )
    key = nacl.signing.SigningKey.generate()
    device = devices.add("phone", b64(bytes(key.verify_key)), "f", Scope.CHAT)
    cert = next(iter(certs.hashes()))

    def token(signer: nacl.signing.SigningKey) -> str:
        body = {"dev": device.id, "iat": now[0], "exp": now[0] + 300, "cert": cert}
        return "Sidecode " + _signed(signer, json.dumps(body))

    forged = token(nacl.signing.SigningKey.generate())  # names the phone, signed by another key
    codes = []
    for attempt in range(130):  # from the owner's own address, as a web page could make it
        wrong = "Bearer wrong" if attempt % 2 else forged
        with pytest.raises((Unauthorized, RateLimited)) as refused:
            guard.authenticate(wrong, None, "/v1/sessions", "127.0.0.1")
        codes.append(refused.value.status)
    assert codes[:120] == [401] * 120 and set(codes[120:]) == {429}
    assert guard.authenticate("Bearer " + "t" * 43, None, "/v1/x", "127.0.0.1") is LOCAL
    assert guard.authenticate(token(key), None, "/v1/x", "127.0.0.1").device_id == device.id
    audited = [e for e in devices.audit_log(500) if e.kind == "auth_failed"]
    assert len(audited) == 120  # past the limit, failures are not audited one by one
    devices.close()


def test_links_and_requests_share_one_authentication_path(tmp_path: Path) -> None:
    """A link that proves a device key once (WebTransport today, a WebRTC link bound to its
    signed fingerprint next) goes through Guard.admit_signed: the signature binds the link's
    own message, failures count in the same limiter as requests' (one quota for an attacker,
    whatever the transport) and are audited; Guard.current re-checks revocation and scope."""
    identity = load_identity(tmp_path, "file")
    certs = CertificateStore(tmp_path / "tls", identity, ["127.0.0.1"])
    certs.refresh()
    devices = DeviceStore(tmp_path / "devices.sqlite3")
    guard = Guard(identity, certs, devices, "t" * 43, open_routes=open_routes())
    key = nacl.signing.SigningKey.generate()
    device = devices.add("phone", b64(bytes(key.verify_key)), "f", Scope.CHAT)
    message = b"link nonce and certificate" + device.id.encode()
    signature = b64(key.sign(message).signature)
    who = guard.admit_signed(device.id, signature, message, "192.0.2.7", "WebRTC")
    assert (who.device_id, who.scope) == (device.id, Scope.CHAT)
    with pytest.raises(Unauthorized, match="does not verify"):  # another link's message
        guard.admit_signed(device.id, signature, message + b"x", "192.0.2.7", "WebRTC")
    with pytest.raises(Unauthorized, match="malformed"):
        guard.admit_signed(device.id, "a", message, "192.0.2.7", "WebRTC")
    for _ in range(118):  # the same address, now over requests: one quota for both
        with pytest.raises(Unauthorized):
            guard.admit(Credentials("/v1/sessions", "192.0.2.7", "Bearer wrong"))
    with pytest.raises(RateLimited):
        guard.admit_signed(device.id, "a", message, "192.0.2.7", "WebRTC")
    failures = [e.detail for e in devices.audit_log(500) if e.kind == "auth_failed"]
    assert len(failures) == 120 and "on WebRTC" in failures[-1]  # newest first
    devices.set_scope(device.id, Scope.ADMIN)
    assert guard.current(who) == Principal(device.id, "phone", Scope.ADMIN)  # at once
    devices.revoke(device.id)
    assert guard.current(who) is None
    assert guard.current(LOCAL) is LOCAL
    devices.close()
