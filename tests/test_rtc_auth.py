"""Credentials for a rendezvous that lets nobody in without them (``sidecode_trio/rtc/auth.py``):
read from a 0600 file (``serve --rendezvous-token-file``) or the URL's ``user:password@``, shown
nowhere (redacted in every URL logged, reported or put in a header), and presented to an MQTT
broker in CONNECT (a real mosquitto with ``allow_anonymous false`` here). The ntfy side is in
test_rtc_ntfy.py, against the fake ntfy server enforcing a token."""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from sidecode_trio.cli import main
from sidecode_trio.config import load_config
from sidecode_trio.errors import ConfigError
from sidecode_trio.rtc.auth import Credentials, device_url, parse_credentials, redact, split_url
from sidecode_trio.rtc.broker import RendezvousError
from sidecode_trio.rtc.reach import live_settings
from sidecode_trio.rtc.settings import RtcSettings, add_flags, overrides
from sidecode_trio.web import page_origins

from helpers import mosquitto_on_loopback


def token_file(tmp_path: Path, text: str = "tk_abc123", mode: int = 0o600) -> Path:
    path = tmp_path / f"rendezvous-{len(list(tmp_path.glob('rendezvous-*')))}.token"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def test_credentials_come_out_of_a_url_and_go_back_in_and_are_redacted_when_shown() -> None:
    assert split_url("ntfy+https://ntfy.example/base") == ("ntfy+https://ntfy.example/base", None)
    bare, found = split_url("ntfy+https://phil:p%40ss%3Aw@ntfy.example:8443/base")
    assert bare == "ntfy+https://ntfy.example:8443/base" and found == Credentials("phil", "p@ss:w")
    assert split_url("ntfy+https://:tk_abc@ntfy.example")[1] == Credentials("", "tk_abc")
    assert parse_credentials("tk_abc\n") == Credentials("", "tk_abc")  # a bare token
    assert parse_credentials("phil:pa:ss") == Credentials("phil", "pa:ss")
    assert Credentials("", "tk_abc").authorization() == "Bearer tk_abc"
    assert Credentials("phil", "pw").authorization() == "Basic cGhpbDpwdw=="
    assert "tk_abc" not in repr(Credentials("", "tk_abc"))
    # the form a device gets in the pairing payload reads back to the same credentials
    for given in (Credentials("", "tk_abc"), Credentials("phil", "p@ss:w/?#")):
        url = device_url("mqtts://broker.example:8883", given)
        assert split_url(url) == ("mqtts://broker.example:8883", given)
    assert device_url("ntfy+https://:tk_a@h", None) == "ntfy+https://:tk_a@h"
    assert device_url("ntfy+https://h", None) == "ntfy+https://h"
    assert redact("ntfy+https://phil:p@ss@ntfy.example/x?y") == "ntfy+https://***@ntfy.example/x?y"
    assert redact("wss://broker.example:8084/mqtt") == "wss://broker.example:8084/mqtt"
    assert redact(None) is None
    secret = "ntfy+https://:tk_abc@ntfy.example"
    assert "tk_abc" not in repr(RtcSettings(rendezvous=secret))
    # the web app's CSP names the broker's origin, never its credentials
    assert page_origins([], "wss://phil:pw@broker.example:8084/mqtt") == [
        "wss://broker.example:8084"
    ]


def test_a_password_the_url_cannot_hold_as_typed_is_still_never_shown() -> None:
    """A password with a ``/``, ``?`` or ``#`` not percent-encoded ends the URL's authority
    early, so the URL parses as a host ``phil`` with the port ``s3cr``: refused, and neither the
    URL shown with the refusal nor the port's complaint may hold the password."""
    for url in (
        "mqtts://phil:s3cr/et@broker.example:8883",
        "mqtts://phil:s3cr?et@broker.example",
        "wss://phil:s3cr#et@broker.example/mqtt",
        "ntfy+https://:s3cr/et@ntfy.example",
    ):
        found = RtcSettings(rendezvous=url).problems()
        assert len(found) == 1 and "$.rtc.rendezvous" in found[0], found
        assert "s3cr" not in found[0] and "***@" in found[0], found
        assert "s3cr" not in redact(url) and "s3cr" not in repr(RtcSettings(rendezvous=url))


def test_a_rendezvous_token_file_must_be_private_and_the_only_credentials(tmp_path: Path) -> None:
    url = "ntfy+https://ntfy.example"
    ok = RtcSettings(rendezvous=url, rendezvous_token_file=token_file(tmp_path))
    assert ok.problems() == [] and ok.credentials() == Credentials("", "tk_abc123")
    assert RtcSettings(rendezvous="ntfy+https://phil:pw@h").credentials() == Credentials(
        "phil", "pw"
    )
    cases = [
        (RtcSettings(rendezvous=url, rendezvous_token_file=token_file(tmp_path, mode=0o640)),
         "readable by others"),
        (RtcSettings(rendezvous=url, rendezvous_token_file=tmp_path / "missing"),
         "cannot read"),
        (RtcSettings(rendezvous=url, rendezvous_token_file=token_file(tmp_path, "  ")),
         "is empty"),
        (RtcSettings(rendezvous=url, rendezvous_token_file=token_file(tmp_path, "tk\x1bx")),
         "one line of printable ASCII"),
        (RtcSettings(rendezvous_token_file=token_file(tmp_path)), "without a rendezvous"),
        (RtcSettings(rendezvous="ntfy+https://:tk_x@h", rendezvous_token_file=token_file(tmp_path)),
         "give them in one place"),
    ]  # fmt: skip
    for settings, problem in cases:
        found = settings.problems()
        assert len(found) == 1 and "$.rtc.rendezvous_token_file" in found[0], found
        assert problem in found[0] and "tk_x" not in found[0]


def test_the_serve_flag_reaches_the_config_and_a_loose_file_stops_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    path = token_file(tmp_path)
    given = overrides(parser.parse_args(["--rendezvous", "mqtt://b", "--rendezvous-token-file",
                                         str(path)]))  # fmt: skip
    config = load_config({"state_dir": tmp_path, "rtc": given})
    assert config.rtc.rendezvous_token_file == path
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"\$\.rtc\.rendezvous_token_file: .*readable by"):
        load_config({"state_dir": tmp_path, "rtc": given})
    argv = ["serve", "--state-dir", str(tmp_path), "--rendezvous", "ntfy+https://:tk_x@h"]
    assert main([*argv, "--rendezvous-token-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bad value @ $.rtc.rendezvous_token_file" in err and "tk_x" not in err


def test_doctor_uses_the_config_files_credentials_when_the_running_daemon_shows_them_redacted(
    tmp_path: Path,
) -> None:
    configured = RtcSettings(rendezvous="ntfy+https://phil:pw@ntfy.example")
    status = {
        "enabled": True,
        "rendezvous": "ntfy+https://***@ntfy.example",
        "settings": {"stun": [], "turn": [], "rendezvous_token_file": None},
    }
    assert live_settings(status, configured).rendezvous == configured.rendezvous
    # run with other flags than the file's: probed without credentials it cannot see
    other = {**status, "rendezvous": "ntfy+https://***@other.example"}
    assert live_settings(other, configured).rendezvous == "ntfy+https://other.example"
    path = token_file(tmp_path)
    with_file = {**status, "rendezvous": "ntfy+https://ntfy.example"}
    with_file["settings"] = {"rendezvous_token_file": str(path)}
    assert live_settings(with_file, RtcSettings()).credentials() == Credentials("", "tk_abc123")


def test_a_service_install_pins_the_secret_files_as_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``service install -- --rendezvous-token-file tok`` runs serve later, elsewhere: the
    files' paths are made absolute as the other path flags are (the unit holds the path, never
    the secret)."""
    from sidecode_trio.service_command import serve_flags

    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", type=Path)
    add_flags(parser)
    given = ["--rendezvous", "ntfy+https://h", "--rendezvous-token-file", "tok"]
    given += ["--turn", "turn:t", "--turn-secret-file", "sec", "--rendezvous-token-keyring"]
    _state, flags = serve_flags(parser, given)
    assert flags[flags.index("--rendezvous-token-file") + 1] == str(tmp_path / "tok")
    assert flags[flags.index("--turn-secret-file") + 1] == str(tmp_path / "sec")
    assert "--rendezvous-token-keyring" in flags


def test_a_service_install_refuses_credentials_in_the_rendezvous_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The unit's command line is printed by ``install`` (its diff) and is every login's
    ``serve`` argv, which any local user reads in the process list: credentials in the URL are
    refused there, pointing to the token file, and the refusal does not repeat them."""
    from sidecode_trio.errors import ServiceError
    from sidecode_trio.service_command import serve_flags

    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", type=Path)
    add_flags(parser)
    for url in ("wss://phil:s3cret@broker.example/mqtt", "ntfy+https://:tk_s3cret@ntfy.example"):
        with pytest.raises(ServiceError) as refused:
            serve_flags(parser, ["--rendezvous", url])
        assert "--rendezvous-token-file" in refused.value.message
        assert "s3cret" not in refused.value.message and "***@" in refused.value.message
    _state, flags = serve_flags(parser, ["--rendezvous", "wss://broker.example/mqtt"])
    assert flags == ["--rendezvous", "wss://broker.example/mqtt"]
    # the whole command: nothing installed, nothing printed with the secret
    url = "wss://phil:s3cret@broker.example/mqtt"
    code = main(
        ["service", "install", "--dry-run", "--state-dir", str(tmp_path), "--", "--rendezvous", url]
    )
    out, err = capsys.readouterr()
    assert code != 0 and "s3cret" not in out + err and "--rendezvous-token-file" in err


def test_the_token_can_come_from_the_os_keychain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sidecode_trio.security import identity

    class Keychain:
        def __init__(self) -> None:
            self.entries: dict[tuple[str, str], str] = {}

        def get_password(self, service: str, account: str) -> str | None:
            return self.entries.get((service, account))

    keychain = Keychain()
    monkeypatch.setattr(identity, "keychain", lambda: keychain)
    settings = RtcSettings(rendezvous="ntfy+https://h", rendezvous_token_keyring=True)
    [problem] = settings.problems()
    assert "$.rtc.rendezvous_token_keyring: no entry" in problem
    assert "keyring set sidecode-trio rendezvous" in problem
    keychain.entries[("sidecode-trio", "rendezvous")] = "phil:pw\n"
    assert settings.problems() == [] and settings.credentials() == Credentials("phil", "pw")
    both = RtcSettings(rendezvous="ntfy+https://:tk@h", rendezvous_token_keyring=True)
    assert "give them in one place" in both.problems()[0]
    monkeypatch.setattr(identity, "keychain", lambda: None)  # a headless machine
    assert "no usable OS keychain" in settings.problems()[0]


# -- MQTT: a real mosquitto that lets nobody in without a password -------------------------------


@pytest.fixture
def closed_broker(tmp_path: Path) -> Iterator[str]:
    """A mosquitto on loopback with ``allow_anonymous false`` and one user, phil:pw."""
    if shutil.which("mosquitto") is None or shutil.which("mosquitto_passwd") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mosquitto is missing in CI")
        pytest.skip("needs mosquitto (apt-get install mosquitto)")
    pytest.importorskip("paho")
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "phil", "pw"], check=True)
    passwords.chmod(0o600)
    conf = (
        f"allow_anonymous false\npassword_file {passwords}\n"
        # as root it would drop to user "mosquitto", who cannot read our 0600 password file
        f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
    )
    with mosquitto_on_loopback(tmp_path, conf) as url:
        yield url


async def test_an_mqtt_broker_gets_the_user_and_password_in_connect(closed_broker: str) -> None:
    from sidecode_trio.rtc.pubsub import open_rendezvous

    topic = "sidecode/" + "ab" * 16
    with trio.fail_after(30):
        async with (
            open_rendezvous(closed_broker, credentials=Credentials("phil", "pw")) as daemon,
            open_rendezvous(device_url(closed_broker, Credentials("phil", "pw"))) as device,
        ):
            await device.subscribe(topic)
            await daemon.publish(topic, b"through a closed broker")
            assert await device.receive() == (topic, b"through a closed broker")
        for credentials in (None, Credentials("phil", "wrong")):
            with pytest.raises(RendezvousError, match="refused us: Not authorized") as refused:
                async with open_rendezvous(closed_broker, credentials=credentials):
                    pass
            assert "wrong" not in str(refused.value)
