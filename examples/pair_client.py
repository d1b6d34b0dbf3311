#!/usr/bin/env python3
"""A paired-device client: pair from the QR payload, then talk to the daemon over pinned HTTPS.

Only PyNaCl and the standard library, to show everything a device has to do::

    python examples/pair_client.py pair 'sidecode-trio://pair#...' --name "my phone"
    python examples/pair_client.py pair 'sidecode-trio://pair#...' --via rendezvous
    python examples/pair_client.py sessions
    python examples/pair_client.py follow SESSION_ID
    python examples/pair_client.py send SESSION_ID "run the tests"

Trust: the pairing payload (scanned or pasted, never fetched) carries the daemon's Ed25519 key.
Before sending anything secret, the client hashes the TLS certificate the server presented and
checks that ``GET /v1/info`` lists that hash with a valid signature by the pinned key: no CA is
involved, and a man in the middle with another certificate cannot produce that signature. Every
request then carries a token signed by the device's own key, bound to that certificate, valid 5
minutes. Credentials are kept in ``~/.config/sidecode-trio-client.json`` (mode 0600).

When no address of the daemon answers (another network, no port opened) and the payload names a
broker (``"rv"``), ``pair`` sends the same request through the broker instead, sealed to the
daemon's key, and gets the reply sealed back and signed by the daemon (``--via rendezvous``
forces it; it needs the rtc extra). Then ``rtc_client.py`` reaches the daemon from anywhere.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import secrets
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nacl.exceptions
import nacl.signing

PAIR_CONTEXT = b"sidecode-trio pair v1\n"
RENDEZVOUS_CONTEXT = b"sidecode-trio rendezvous v1\n"  # the WebRTC path's broker topics
AUTH_CONTEXT = b"sidecode-trio auth v1\n"
CERT_CONTEXT = b"sidecode-trio cert v1\n"
DEFAULT_STORE = Path.home() / ".config" / "sidecode-trio-client.json"


class PinningError(Exception):
    """The server's certificate is not vouched for by the pinned daemon key."""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_payload(text: str) -> dict[str, Any]:
    text = text.strip()
    raw = text.encode() if text.startswith("{") else unb64(text.partition("#")[2])
    data: dict[str, Any] = json.loads(raw)
    if data.get("v") != 1:
        raise ValueError("not a sidecode-trio pairing payload")
    return data


def verify_certificate(cert_sha256: str, info: dict[str, Any], daemon_key: bytes) -> None:
    """Raise PinningError unless ``info`` lists ``cert_sha256`` signed by ``daemon_key``."""
    for entry in info.get("certificates", []):
        if entry.get("sha256") == cert_sha256:
            try:
                message = CERT_CONTEXT + bytes.fromhex(cert_sha256)
                nacl.signing.VerifyKey(daemon_key).verify(message, unb64(entry["signature"]))
            except (nacl.exceptions.BadSignatureError, ValueError, KeyError) as exc:
                raise PinningError(
                    f"certificate {cert_sha256[:16]}... is not signed by the daemon"
                ) from exc
            return
    raise PinningError(f"certificate {cert_sha256[:16]}... is not one the daemon vouches for")


class Connection:
    """One pinned connection to the daemon (HTTPS, or plain HTTP on loopback)."""

    def __init__(self, url: str, daemon_key: bytes, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port
        if parts.scheme == "https":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # no CA: the pinned key vouches instead, below
            self.http: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=context
            )
        else:
            self.http = http.client.HTTPConnection(host, port, timeout=timeout)
        self.http.connect()
        der = None
        if isinstance(self.http.sock, ssl.SSLSocket):  # taken before anything is sent
            der = self.http.sock.getpeercert(binary_form=True)
            if der is None:
                raise PinningError("the server presented no certificate")
        info = self._request("GET", "/v1/info", None, {})
        if parts.scheme == "https":
            if der is None:
                raise PinningError("expected TLS")
            self.cert = hashlib.sha256(der).hexdigest()
        else:  # plain HTTP (loopback): bind tokens to the current certificate all the same
            self.cert = info["certificates"][0]["sha256"]
        verify_certificate(self.cert, info, daemon_key)
        self.info = info

    def _request(self, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers = {**headers, "Content-Type": "application/json"}
        self.http.request(method, path, body=data, headers=headers)
        response = self.http.getresponse()
        payload = json.loads(response.read() or b"null")
        if response.status >= 400:
            raise RuntimeError(f"{method} {path}: {response.status} {payload}")
        return payload

    def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        headers = {"Authorization": f"Sidecode {token}"} if token else {}
        return self._request(method, path, body, headers)

    def close(self) -> None:
        self.http.close()


def pair_request(payload: dict[str, Any], name: str) -> tuple[dict[str, Any], Any, bytes]:
    """The ``POST /v1/pair`` body for ``payload``, the new device key and the transcript."""
    daemon_key = unb64(payload["pk"])
    device_key = nacl.signing.SigningKey.generate()
    device_public = bytes(device_key.verify_key)
    transcript = b"".join(
        [PAIR_CONTEXT, daemon_key, device_public, name.encode(), b"\n", payload["sid"].encode()]
    )
    body = {
        "secret_id": payload["sid"],
        "device_public_key": b64(device_public),
        "name": name,
        "mac": b64(hmac.new(unb64(payload["secret"]), transcript, hashlib.sha256).digest()),
        "signature": b64(device_key.sign(transcript).signature),
    }
    return body, device_key, transcript


def _credentials(
    payload: dict[str, Any], device_key: Any, transcript: bytes, reply: Any, urls: list[str]
) -> dict[str, Any]:
    # the rendezvous secret (PROTOCOL.md "Rendezvous"): the daemon computes the same one
    # and derives this device's broker topics from it; "rv" names the broker, if one is on
    rendezvous = hmac.new(unb64(payload["secret"]), RENDEZVOUS_CONTEXT + transcript, "sha256")
    return {
        "daemon": {"public_key": payload["pk"], "fingerprint": payload["fp"], "urls": urls},
        "device": {"id": reply["device"]["id"], "seed": b64(bytes(device_key))},
        "scope": reply["device"]["scope"],
        "rendezvous": {"url": payload.get("rv"), "secret": b64(rendezvous.digest())},
    }


def pair(payload: dict[str, Any], name: str) -> dict[str, Any]:
    """Pair with the daemon the payload names, over pinned HTTPS; returns the credentials."""
    daemon_key = unb64(payload["pk"])
    body, device_key, transcript = pair_request(payload, name)
    errors = []
    for url in payload["http"]:
        try:
            conn = Connection(url, daemon_key)
        except (OSError, PinningError) as exc:
            errors.append(f"{url}: {exc}")
            continue
        try:
            reply = conn.request("POST", "/v1/pair", body)
        finally:
            conn.close()
        return _credentials(payload, device_key, transcript, reply, [url])
    raise SystemExit("could not reach the daemon: " + "; ".join(errors))


async def pair_over_rendezvous(
    payload: dict[str, Any], name: str, setup: Any = None, timeout: float = 30.0
) -> dict[str, Any]:
    """Pair through the payload's broker (``"rv"``) when no address of the daemon is reachable
    (PROTOCOL.md "Pairing over the rendezvous"): the request is sealed to the daemon's key from a
    fresh X25519 key, and the reply comes back sealed to it and signed by the daemon. Needs the
    rtc extra (paho-mqtt); ``setup`` runs first on the broker's thread (the tests' namespaces).
    The broker's credentials, when the daemon's has any, are in ``rv`` (``user:password@``)."""
    import nacl.public
    import trio

    from sidecode_trio.rtc.pairing import request_pairing
    from sidecode_trio.rtc.pubsub import open_rendezvous

    if not payload.get("rv"):
        raise SystemExit("this pairing code names no broker: the daemon runs without --rendezvous")
    body, device_key, transcript = pair_request(payload, name)
    box_key = nacl.public.PrivateKey.generate()
    with trio.fail_after(timeout):
        async with open_rendezvous(payload["rv"], setup) as broker:  # MQTT or ntfy
            status, reply = await request_pairing(broker, payload, body, box_key)
    if status != 201:
        error = (reply or {}).get("error", {}) if isinstance(reply, dict) else {}
        raise RuntimeError(f"pairing refused: {status} {error.get('message', reply)}")
    return _credentials(payload, device_key, transcript, reply, list(payload.get("http", [])))


class Client:
    """A paired device talking to its daemon."""

    def __init__(self, credentials: dict[str, Any]) -> None:
        self._daemon_key = unb64(credentials["daemon"]["public_key"])
        self._url = credentials["daemon"]["urls"][0]
        self._device_id = credentials["device"]["id"]
        self._key = nacl.signing.SigningKey(unb64(credentials["device"]["seed"]))

    def connect(self) -> Connection:
        return Connection(self._url, self._daemon_key)

    def token(self, conn: Connection, lifetime: float = 300.0) -> str:
        now = int(time.time())
        body = {"dev": self._device_id, "iat": now, "exp": now + int(lifetime), "cert": conn.cert,
                "n": secrets.token_hex(8)}  # fmt: skip
        payload = b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{b64(self._key.sign(AUTH_CONTEXT + payload.encode()).signature)}"

    def call(self, method: str, path: str, body: Any = None) -> Any:
        conn = self.connect()
        try:
            return conn.request(method, path, body, self.token(conn))
        finally:
            conn.close()

    def follow(
        self, session_id: str, last_id: str | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(event type, data)``; resumes with Last-Event-ID after a drop."""
        while True:
            conn = self.connect()
            headers = {"Authorization": f"Sidecode {self.token(conn)}"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            try:
                conn.http.request("GET", f"/v1/sessions/{session_id}/events", headers=headers)
                response = conn.http.getresponse()
                if response.status != 200:
                    raise RuntimeError(f"{response.status} {response.read()!r}")
                fields: dict[str, str] = {}
                for raw in response:
                    line = raw.decode().rstrip("\r\n")
                    if line:
                        name, _, value = line.partition(":")
                        if name:
                            fields[name] = value.removeprefix(" ")
                        continue
                    if "data" in fields:
                        last_id = fields.get("id", last_id)
                        yield fields.get("event", "message"), json.loads(fields["data"])
                    fields = {}
                return  # the daemon ended the stream (shutdown or revocation)
            except OSError as exc:
                print(f"-- disconnected ({exc}); resuming from {last_id}", file=sys.stderr)
                time.sleep(1.0)
            finally:
                conn.close()


def _save(path: Path, credentials: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(credentials, handle, indent=2)


def _pair_via_broker(payload: dict[str, Any], name: str) -> dict[str, Any]:
    import trio

    credentials: dict[str, Any] = trio.run(pair_over_rendezvous, payload, name)
    return credentials


def main() -> int:
    parser = argparse.ArgumentParser(description="a paired sidecode-trio device")
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE, help="credentials file")
    commands = parser.add_subparsers(dest="command", required=True)
    pairing = commands.add_parser("pair", help="pair from a QR link or JSON payload")
    pairing.add_argument("payload")
    pairing.add_argument("--name", default="example client")
    pairing.add_argument(
        "--via",
        choices=("auto", "https", "rendezvous"),
        default="auto",
        help="https: the daemon's addresses; rendezvous: its broker (rtc extra); "
        "auto: https, then the broker when the payload names one",
    )
    commands.add_parser("sessions", help="list sessions")
    follow = commands.add_parser("follow", help="stream a session's events")
    follow.add_argument("session_id")
    send = commands.add_parser("send", help="send a message")
    send.add_argument("session_id")
    send.add_argument("text")
    args = parser.parse_args()

    if args.command == "pair":
        payload = parse_payload(args.payload)
        print(f"pairing with daemon {payload['fp']} ...")
        if args.via == "rendezvous":
            credentials = _pair_via_broker(payload, args.name)
        else:
            try:
                credentials = pair(payload, args.name)
            except SystemExit:
                if args.via == "https" or not payload.get("rv"):
                    raise
                print("no address answered; pairing through the broker ...")
                credentials = _pair_via_broker(payload, args.name)
        _save(args.store, credentials)
        print(f"paired; credentials saved in {args.store}")
        return 0
    client = Client(json.loads(args.store.read_text()))
    if args.command == "sessions":
        for session in client.call("GET", "/v1/sessions")["sessions"]:
            print(f"{session['id']}  {session['status']:15}  {session['title']}")
    elif args.command == "send":
        print(client.call("POST", f"/v1/sessions/{args.session_id}/messages", {"text": args.text}))
    else:
        for kind, data in client.follow(args.session_id):
            event = data.get("event", {})
            print(
                event.get("text", "") if kind == "text.delta" else f"\n[{kind}]", end="", flush=True
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
