"""The WebRTC path's configuration (issue 17 #2): typed, frozen, validated at the edge, flags over
the ``[rtc]`` table; the TURN secret file must be 0600; off by default, and with it off the
daemon imports nothing of aiortc or paho. No broker or aiortc needed here."""

from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess
import sys
import textwrap
from pathlib import Path

import nacl.signing
import pytest

from sidecode_trio.cli import main
from sidecode_trio.config import load_config
from sidecode_trio.errors import ConfigError
from sidecode_trio.rtc.link import Closed, LinkKeeper, dtls_sha256
from sidecode_trio.rtc.service import RtcService, check_available
from sidecode_trio.rtc.settings import (
    DEFAULT_RENDEZVOUS,
    DEFAULT_STUN,
    RtcSettings,
    add_flags,
    overrides,
)
from sidecode_trio.security.devices import DeviceStore, Scope
from sidecode_trio.security.identity import b64
from sidecode_trio.security.pairing import PairingProof, PairingRefused, Pairings


def secret_file(tmp_path: Path, mode: int = 0o600, text: str = "s3cret-shared") -> Path:
    path = tmp_path / "turn.secret"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def test_off_by_default_with_public_stun(tmp_path: Path) -> None:
    config = load_config({"state_dir": tmp_path})
    assert not config.rtc.enabled and config.rtc.stun == DEFAULT_STUN and config.rtc.turn == ()


def test_the_default_broker_is_used_only_when_asked_for(tmp_path: Path) -> None:
    """``--rendezvous`` without a URL, or ``rendezvous = "default"``, is a public broker that needs
    no account and that browsers reach (MQTT over wss); without either the path stays off."""
    import argparse

    parser = argparse.ArgumentParser()
    add_flags(parser)
    assert overrides(parser.parse_args([]))["rendezvous"] is None
    bare = overrides(parser.parse_args(["--rendezvous"]))
    named = overrides(parser.parse_args(["--rendezvous", "mqtts://mine.example"]))
    assert load_config({"state_dir": tmp_path, "rtc": bare}).rtc.rendezvous == DEFAULT_RENDEZVOUS
    assert named["rendezvous"] == "mqtts://mine.example"
    (tmp_path / "config.toml").write_text('[rtc]\nrendezvous = "default"\n')
    config = load_config({"state_dir": tmp_path})
    assert config.rtc.enabled and config.rtc.rendezvous == DEFAULT_RENDEZVOUS
    assert DEFAULT_RENDEZVOUS.startswith("wss://")  # the web app speaks MQTT over WebSocket only
    assert not config.rtc.problems()


def test_flags_win_over_the_rtc_table_setting_by_setting(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[rtc]\nrendezvous = "mqtt://file.example"\nstun = ["stun:file.example:3478"]\n'
    )
    config = load_config({"state_dir": tmp_path, "rtc": {"rendezvous": "wss://flag.example/mqtt"}})
    assert config.rtc.rendezvous == "wss://flag.example/mqtt"
    assert config.rtc.stun == ("stun:file.example:3478",)


@pytest.mark.parametrize(
    ("rtc", "error"),
    [
        ({"rendezvous": "http://broker"}, r"bad value @ \$\.rtc\.rendezvous: an mqtt://"),
        ({"rendezvous": "mqtt://b", "stun": ["turn:x"]}, r"bad value @ \$\.rtc\.stun\[0\]"),
        ({"rendezvous": "mqtt://b", "turn": ["stun:x"]}, r"bad value @ \$\.rtc\.turn\[0\]"),
        ({"rendezvous": "mqtt://b", "turn": ["turn:x"]}, r"\$\.rtc\.turn: needs turn_secret_file"),
        ({"ping_misses": 0}, r"\$\.rtc\.ping_misses"),
    ],
)
def test_bad_values_name_their_path(tmp_path: Path, rtc: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_config({"state_dir": tmp_path, "rtc": rtc})


def test_unknown_rtc_settings_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[rtc]\nrendevous = "mqtt://typo"\n')
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) @ \$\.rtc: rendevous"):
        load_config({"state_dir": tmp_path})


def test_a_turn_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    loose = secret_file(tmp_path, 0o644)
    rtc = {"rendezvous": "mqtt://b", "turn": ["turn:t:3478"], "turn_secret_file": str(loose)}
    with pytest.raises(ConfigError, match=r"\$\.rtc\.turn_secret_file: .*readable by others"):
        load_config({"state_dir": tmp_path, "rtc": rtc})
    loose.chmod(0o600)
    assert load_config({"state_dir": tmp_path, "rtc": rtc}).rtc.turn_secret_file == loose
    empty = secret_file(tmp_path, text="")
    with pytest.raises(ConfigError, match="is empty"):
        load_config({"state_dir": tmp_path, "rtc": {**rtc, "turn_secret_file": str(empty)}})


def test_serve_flags_reach_the_config_and_errors_are_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loose = secret_file(tmp_path, 0o640)
    argv = ["serve", "--state-dir", str(tmp_path), "--rendezvous", "mqtt://b"]
    code = main([*argv, "--turn", "turn:t:3478", "--turn-secret-file", str(loose)])
    assert code == 2
    assert "bad value @ $.rtc.turn_secret_file" in capsys.readouterr().err


def test_turn_credentials_are_minted_per_device_with_the_shared_secret(tmp_path: Path) -> None:
    settings = RtcSettings(
        rendezvous="mqtt://b",
        stun=("stun:s:3478",),
        turn=("turn:t:3478?transport=udp", "turn:t:3478?transport=tcp"),
        turn_secret_file=secret_file(tmp_path),
        turn_ttl=600,
    )
    devices = DeviceStore(tmp_path / "devices.sqlite3")
    try:
        device = devices.add("phone", b64(b"p" * 32), "fp", Scope.CHAT, b"r" * 32)
        service = RtcService(settings, nacl.signing.SigningKey.generate(), devices)
        stun, turn = service._device_ice(b"p" * 32, 1000.0)
        assert stun.urls == ["stun:s:3478"] and stun.username is None
        assert turn.urls == list(settings.turn)
        assert turn.username == f"1600:{device.id}"
        expected = hmac.new(b"s3cret-shared", turn.username.encode(), hashlib.sha1).digest()
        assert turn.credential == base64.b64encode(expected).decode()
        assert service._topics_for(b"p" * 32) is not None and service._is_paired(b"p" * 32)
        devices.revoke(device.id)
        assert service._topics_for(b"p" * 32) is None and not service._is_paired(b"p" * 32)
    finally:
        devices.close()


def test_without_the_extra_the_error_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "aiortc" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"needs the rtc extra \(aiortc missing\).*\[rtc\]"):
        check_available()


def test_a_daemon_with_the_path_off_imports_neither_aiortc_nor_paho(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys, trio
        from sidecode_trio.config import load_config
        from sidecode_trio.daemon import serve

        async def main():
            config = load_config({{"state_dir": {str(tmp_path / "state")!r}, "port": 0,
                                  "keystore": "file", "keep_awake": "off", "quic_port": -1}})
            async with trio.open_nursery() as nursery:
                handle = await nursery.start(serve, config)
                heavy = [m for m in ("aiortc", "av", "aioice", "paho") if m in sys.modules]
                handle.stop.set()
            assert not heavy, heavy

        trio.run(main)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_link_keeper_pings_closes_dead_links_and_refuses_text_that_is_not_a_pong() -> None:
    keeper = LinkKeeper(misses=2)
    assert keeper.ping() == '{"type": "ping", "n": 1}'
    assert keeper.received('{"type": "pong", "n": 1}') is None
    keeper.ping(), keeper.ping()
    assert keeper.received('{"type": "pong", "n": 7}') is None  # a pong never sent: ignored
    assert keeper.pongs == 1
    assert keeper.ping() == Closed("timeout", "2 pings went unanswered")
    # requests are framed binary messages; a text one is a client bug, said so
    refused = LinkKeeper(misses=2).received('{"type": "request", "id": 1, "path": "/v1/info"}')
    assert refused is not None and refused.code == "bad_frame"
    assert "binary messages" in refused.message
    assert LinkKeeper(misses=2).received("\ufffd not json") == refused


def test_auth_on_a_datachannel_signs_the_daemons_dtls_certificate_hash() -> None:
    fps = ["sha-1 00:11", "sha-256 AB:CD:EF"]
    assert dtls_sha256(fps) == bytes.fromhex("abcdef")
    with pytest.raises(ValueError, match="no sha-256"):
        dtls_sha256(["sha-1 00:11"])


def test_the_changes_waiting_for_the_broker_are_bounded_by_the_devices(tmp_path: Path) -> None:
    """While the broker is down nothing applies the changes: pair attempts (failed ones too)
    from ever new addresses, offers, pairings again and revocations leave one pending change
    per device and one for the offers, not one per event."""
    daemon = nacl.signing.SigningKey.generate()
    pairings = Pairings(bytes(daemon.verify_key), lambda: 1000.0)
    devices = DeviceStore(tmp_path / "devices.sqlite3")
    try:
        settings = RtcSettings(rendezvous="mqtt://127.0.0.1:9")
        service = RtcService(settings, daemon, devices, pairings=pairings)
        pairings.offer(Scope.CHAT, ttl=300)
        wrong = PairingProof("unknown", b64(b"k" * 32), "x", b64(b"m" * 32), b64(b"s" * 64))
        for n in range(1000):
            with pytest.raises(PairingRefused):
                pairings.redeem(wrong, f"10.0.{n // 256}.{n % 256}")
        phone = devices.add("phone", b64(b"p" * 32), "fp", Scope.CHAT, b"r" * 32)
        for n in range(10):  # the same key pairing again
            devices.add("phone", b64(b"p" * 32), "fp", Scope.CHAT, bytes([n]) * 32)
        devices.revoke(phone.id)
        assert service.pending_changes() == 2  # the phone, and the offers
    finally:
        devices.close()
