"""Config validation errors, and the ``sessions`` / ``doctor`` commands."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from sidecode_trio.config import DaemonConfig, is_loopback, load_config
from sidecode_trio.errors import ConfigError

from helpers import running_daemon


def test_defaults_and_overrides(tmp_path: Path) -> None:
    config = load_config({"state_dir": tmp_path, "port": 0, "allowed_roots": [str(tmp_path)]})
    assert config.port == 0 and config.host == "127.0.0.1"
    assert config.allowed_roots == (tmp_path,)
    assert config.token_path == tmp_path / "token"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"port": 70000}, "bad value @ $.port: must be between 0 and 65535"),
        ({"port": "80"}, "$.port"),
        ({"host": "example.com"}, "bad value @ $.host"),
        ({"host": "300.1.2.3"}, "is not an IP address"),
        ({"idle_timeout": 0}, "bad value @ $.idle_timeout"),
        ({"allowed_roots": ["relative"]}, "@ $.allowed_roots[0]"),
        ({"allowed_roots": ["/definitely/not/here"]}, "is not a directory"),
        ({"public_urls": ["laptop.ts.net"]}, "bad value @ $.public_urls[0]"),
        ({"public_urls": ["https://ok.example", "https://x.example/app"]}, "$.public_urls[1]"),
        ({"public_urls": ["ftp://x.example"]}, "$.public_urls[0]"),
    ],
)
def test_bad_values_name_their_path(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"state_dir": tmp_path, **overrides})
    assert message in info.value.message


def test_config_file_is_read_and_checked(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(f'port = 9999\nallowed_roots = ["{tmp_path}"]\n')
    assert load_config({"state_dir": tmp_path}).port == 9999
    assert load_config({"state_dir": tmp_path, "port": 1234}).port == 1234  # flags win
    (tmp_path / "config.toml").write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config({"state_dir": tmp_path})
    (tmp_path / "config.toml").write_text("port = [\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config({"state_dir": tmp_path})


def test_loopback_detection() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "::1", "[::1]", "localhost", "127.8.9.10"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "example.com"]))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecode_trio", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_serve_refuses_bad_flags_clearly(tmp_path: Path) -> None:
    done = _cli("serve", "--state-dir", str(tmp_path), "--host", "my-laptop")
    assert done.returncode == 2 and "bad value @ $.host" in done.stderr


@pytest.mark.trio
@pytest.mark.parametrize("https", [False, True])
async def test_sessions_and_doctor_talk_to_the_running_daemon(
    make_config: Callable[..., DaemonConfig], work_dir: Path, fake_claude: Path, https: bool
) -> None:
    config = make_config(https=https)  # https: the daemon's own certificate, not verified
    async with running_daemon(config) as daemon:
        assert daemon.handle.url.startswith("https:" if https else "http:")
        await daemon.create(work_dir, "hello")
        state = str(config.state_dir)
        listing = await trio.to_thread.run_sync(_cli, "sessions", "--state-dir", state, "--json")
        assert listing.returncode == 0, listing.stderr
        (only,) = json.loads(listing.stdout)
        assert only["title"] == "hello" and only["cwd"] == str(work_dir)
        table = await trio.to_thread.run_sync(_cli, "sessions", "--state-dir", state)
        assert "hello" in table.stdout and only["id"] in table.stdout
        args = ("doctor", "--state-dir", state, "--claude", str(fake_claude), "--json")
        doctor = await trio.to_thread.run_sync(lambda: _cli(*args))
        report = json.loads(doctor.stdout)
        assert doctor.returncode == 0, report
        assert report["claude"]["version"] == "2.1.329 (Claude Code)"
        assert report["daemon"]["running"] and report["state_dir"]["sessions"] == 1
    assert not (config.state_dir / "daemon.json").exists()
    after = await trio.to_thread.run_sync(_cli, "sessions", "--state-dir", state)
    assert after.returncode == 2 and "no daemon is running" in after.stderr


def test_doctor_reports_a_missing_cli_and_loose_permissions(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "token").write_text("x" * 43)
    (tmp_path / "token").chmod(0o644)
    done = _cli("doctor", "--state-dir", str(tmp_path), "--claude", "no-such-claude-binary")
    assert done.returncode == 1
    assert "not found on PATH" in done.stdout
    assert "readable by others" in done.stdout and "accessible to other users" in done.stdout


@pytest.mark.trio
async def test_pair_and_devices_commands(make_config: Callable[..., DaemonConfig]) -> None:
    config = make_config()
    async with running_daemon(config) as owner:
        state = str(config.state_dir)
        shown = await trio.to_thread.run_sync(
            _cli, "pair", "--state-dir", state, "--scope", "approve"
        )
        assert shown.returncode == 0, shown.stderr
        assert "sidecode-trio://pair#" in shown.stdout and "█" in shown.stdout
        assert owner.handle.fingerprint in shown.stdout
        raw = await trio.to_thread.run_sync(_cli, "pair", "--state-dir", state, "--json")
        payload = json.loads(raw.stdout)
        assert payload["scope"] == "chat" and payload["fp"] == owner.handle.fingerprint

        from test_security import pc  # the example device client

        credentials = await trio.to_thread.run_sync(pc.pair, payload, "tablet")
        listed = await trio.to_thread.run_sync(_cli, "devices", "--state-dir", state)
        assert "tablet" in listed.stdout and credentials["device"]["id"] in listed.stdout
        device_id = credentials["device"]["id"]
        devices = ("devices", "--state-dir", state)
        changed = await trio.to_thread.run_sync(lambda: _cli(*devices, "scope", device_id, "admin"))
        assert "now has scope admin" in changed.stdout
        revoked = await trio.to_thread.run_sync(lambda: _cli(*devices, "revoke", device_id))
        assert revoked.returncode == 0 and "revoked 'tablet'" in revoked.stdout
        log = await trio.to_thread.run_sync(_cli, "devices", "--state-dir", state, "--log")
        assert all(kind in log.stdout for kind in ("paired", "scope_changed", "revoked"))
        doctor = await trio.to_thread.run_sync(_cli, "doctor", "--state-dir", state, "--json")
        identity = json.loads(doctor.stdout)["identity"]
        assert identity["fingerprint"] == owner.handle.fingerprint
        assert identity["keystore"] == "file" and identity["certificate_expires"]
        awake = json.loads(doctor.stdout)["keep_awake"]
        assert awake["setting"] == "auto" and awake["phase"] == "off"  # the live daemon: off

        watch = await trio.to_thread.run_sync(
            lambda: _cli("pair", "--state-dir", state, "--watchcode", "--name", "wrist")
        )
        assert watch.returncode == 0, watch.stderr
        secret = watch.stdout.split("secret:")[1].split()[0]
        assert secret.startswith("wc_") and owner.handle.url in watch.stdout
        devices = (await owner.http.get("/v1/devices")).json()["devices"]
        made = next(d for d in devices if d["name"] == "wrist")
        assert made["scope"] == "chat"  # the default lets the watch app's mic send (item 3)
        assert f"devices revoke {made['id']}'" in watch.stdout  # the id it tells you to use
        reply = await owner.http.get("/api/sessions", headers={"x-watchcode-secret": secret})
        assert reply.status_code == 200 and reply.json() == {"sessions": []}


def test_pairing_urls_name_this_hosts_addresses() -> None:
    from sidecode_trio.daemon import local_addresses, reachable_urls

    assert reachable_urls("http://127.0.0.1:8765") == ["http://127.0.0.1:8765"]
    urls = reachable_urls("https://0.0.0.0:9000")
    assert urls[-1] == "https://127.0.0.1:9000" and all(u.endswith(":9000") for u in urls)
    assert "127.0.0.1" in local_addresses()  # read from the interfaces, no traffic sent


async def test_a_call_over_https_closes_its_tls_socket(
    make_config: Callable[..., DaemonConfig],
) -> None:
    """``_call`` wraps its socket in TLS: the wrapped socket is closed too, not left to the
    garbage collector (a ResourceWarning in every in-process caller: doctor's live status)."""
    import gc
    import warnings

    from sidecode_trio import cli

    config = make_config(https=True)
    async with running_daemon(config) as daemon:
        url, token = cli._daemon(config.state_dir)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            status = await trio.to_thread.run_sync(cli._call, f"{url}/v1/status", token)
            gc.collect()
        assert daemon.handle.url.startswith("https:") and "sessions" in status
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
