"""``sidecode-trio service``: the generated unit and plist, and the command sequences.

The unit is checked by ``systemd-analyze verify`` where it exists and by our parser; the plist by
a plistlib round trip and the keys launchd needs. The commands run against the recorded
stand-ins of tests/fake_service_manager.py, put first on ``PATH`` (the real ``systemctl --user``
and ``launchctl`` need a user session manager this machine does not run).
"""

from __future__ import annotations

import getpass
import json
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecode_trio import cli
from sidecode_trio.errors import ServiceError
from sidecode_trio.host import service
from sidecode_trio.host.service import (
    Host,
    ServiceManager,
    ServiceSpec,
    make_spec,
    parse_launchctl_print,
    parse_systemctl_show,
    parse_unit,
    render_plist,
    render_unit,
    spec_from_plist,
    spec_from_unit,
    split_words,
)
from sidecode_trio.service_command import doctor_part

import fake_service_manager
from fake_service_manager import calls

NASTY = ["/opt/my tools/claude", 'say "hi"', "100%", "$HOME", "back\\slash", "it's", "a=b"]


def linux_host(tmp_path: Path) -> Host:
    home = tmp_path / "home"
    return Host("linux", home, os.getuid(), "alice", home / ".config")


def mac_host(tmp_path: Path) -> Host:
    return Host("darwin", tmp_path / "home", 501, "alice", tmp_path / "home" / ".config")


def spec_for(host: Host, tmp_path: Path, *flags: str) -> ServiceSpec:
    env = {"PATH": f"/usr/bin:{tmp_path}/my bin", "PYTHONPATH": "/src", "SECRET": "no"}
    return make_spec(host, tmp_path / "state dir", list(flags), env)


# -- the unit -------------------------------------------------------------------------------


def test_unit_renders_the_spec_and_parses_back(tmp_path: Path) -> None:
    host = linux_host(tmp_path)
    spec = spec_for(host, tmp_path, "--claude", NASTY[0], "--public-url", "https://x/%41", *NASTY)
    text = render_unit(spec)
    unit = parse_unit(text)
    assert unit["Service"]["Restart"] == ["on-failure"]
    assert unit["Service"]["KillMode"] == ["mixed"]  # the daemon stops its own claude processes
    assert unit["Install"]["WantedBy"] == ["default.target"]
    assert len(unit["Service"]["Environment"]) == 2  # PATH and PYTHONPATH, never other variables
    assert spec_from_unit(text, host) == spec
    assert spec.argv[1:6] == ("-m", "sidecode_trio", "serve", "--state-dir", str(spec.state_dir))
    assert render_unit(spec) == text, "the same spec always renders the same unit"


@given(st.lists(st.text(st.characters(exclude_characters="\n\r\0"), min_size=0), max_size=6))
def test_exec_words_round_trip(words: list[str]) -> None:
    line = " ".join(service._quote_word(w) for w in words)
    assert split_words(line) == words


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze here (the parser test covers the unit)")
    spec = spec_for(linux_host(tmp_path), tmp_path, "--port", "8765", "--allow-root", NASTY[0])
    good = tmp_path / "sidecode-trio.service"
    good.write_text(render_unit(spec))
    bad = tmp_path / "broken.service"  # the verifier must be able to say no, or it proves nothing
    bad.write_text(render_unit(spec).replace("ExecStart=/", "ExecStart=relative/"))
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0"}
    ok = subprocess.run([analyze, "verify", str(good)], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "sidecode-trio.service" not in ok.stderr, ok.stderr
    no = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True, env=env)
    assert no.returncode != 0 and "broken.service" in no.stderr


def test_a_broken_unit_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="line 1"):
        parse_unit("ExecStart=/bin/true\n")
    with pytest.raises(ServiceError, match="no --state-dir"):
        spec_from_unit("[Service]\nExecStart=/usr/bin/python -m x serve\n", linux_host(tmp_path))


# -- the plist ------------------------------------------------------------------------------


def test_plist_round_trips_with_the_keys_launchd_needs(tmp_path: Path) -> None:
    host = mac_host(tmp_path)
    spec = spec_for(host, tmp_path, "--claude", NASTY[0])
    data = plistlib.loads(render_plist(spec).encode())
    assert data["Label"] == service.LABEL
    assert data["ProgramArguments"] == list(spec.argv)
    assert Path(data["ProgramArguments"][0]).is_absolute()
    assert data["RunAtLoad"] is True
    assert data["KeepAlive"] == {"SuccessfulExit": False}  # restarted after a crash only
    assert data["EnvironmentVariables"] == {"PATH": dict(spec.env)["PATH"], "PYTHONPATH": "/src"}
    assert data["StandardOutPath"] == data["StandardErrorPath"] == str(host.log_file)
    assert spec_from_plist(render_plist(spec), host) == spec
    with pytest.raises(ServiceError, match="not a plist"):
        spec_from_plist("<plist>nope", host)


# -- what the managers say ------------------------------------------------------------------


def test_systemctl_show_is_read_into_a_state() -> None:
    running = parse_systemctl_show(
        "LoadState=loaded\nUnitFileState=enabled\nActiveState=active\nSubState=running\n"
        "MainPID=321\nExecMainCode=0\nExecMainStatus=0\nResult=success\n",
        installed=True,
    )
    assert running == service.ServiceState(True, True, True, True, 321, None, "")
    crashed = parse_systemctl_show(
        "LoadState=loaded\nUnitFileState=disabled\nActiveState=activating\nSubState=auto-restart\n"
        "MainPID=0\nExecMainCode=1\nExecMainStatus=2\nResult=exit-code\n",
        installed=True,
    )
    assert (crashed.running, crashed.enabled, crashed.pid) == (False, False, None)
    assert crashed.last_exit == "exited 2"
    assert crashed.detail == "activating (auto-restart); last result: exit-code"
    killed = parse_systemctl_show("LoadState=loaded\nExecMainCode=2\nExecMainStatus=9\n", True)
    assert killed.last_exit == "killed by signal 9"
    gone = parse_systemctl_show("LoadState=not-found\nActiveState=inactive\n", installed=False)
    assert not gone.installed and not gone.loaded and not gone.running


def test_launchctl_print_is_read_into_a_state() -> None:
    text = (
        "gui/501/com.sidecode-trio.daemon = {\n\tactive count = 1\n\tstate = running\n"
        "\tpid = 777\n\tlast exit code = 1\n\tendpoints = {\n\t\tstate = other\n\t}\n}\n"
    )
    state = parse_launchctl_print(text, installed=True, disabled=False)
    assert state == service.ServiceState(True, True, True, True, 777, "exited 1", "")
    unloaded = parse_launchctl_print(None, installed=True, disabled=True)
    assert (unloaded.loaded, unloaded.enabled, unloaded.detail) == (False, False, "not loaded")
    assert service.launchd_disabled('"com.sidecode-trio.daemon" => disabled')
    assert not service.launchd_disabled('"com.sidecode-trio.daemon" => enabled')


# -- command sequences against the stand-ins -------------------------------------------------


@attrs.frozen
class Fakes:
    log: Path
    state: Path
    home: Path
    state_dir: Path

    def calls(self) -> list[list[str]]:
        """The commands that change something (not the status queries)."""
        queries = ("show", "print", "print-disabled", "show-user")
        return [c for c in calls(self.log) if not set(c[1:3]) & set(queries)]

    def clear(self) -> None:
        self.log.unlink(missing_ok=True)

    def st(self) -> dict[str, object]:
        return json.loads(self.state.read_text())  # type: ignore[no-any-return]


def _fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, service_file: Path) -> Fakes:
    fakes = Fakes(tmp_path / "calls.log", tmp_path / "fake.json", tmp_path / "home",
                  tmp_path / "home" / ".local" / "state" / "sidecode-trio")  # fmt: skip
    env = fake_service_manager.install(tmp_path / "bin", fakes.log, fakes.state, service_file)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(fakes.home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    return fakes


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fakes:
    if not sys.platform.startswith("linux"):
        pytest.skip("the CLI picks the service manager of the OS it runs on")
    unit = tmp_path / "home" / ".config" / "systemd" / "user" / service.UNIT_NAME
    return _fakes(tmp_path, monkeypatch, unit)


def _state_dir(path: Path) -> None:
    """A state directory as a daemon leaves it."""
    path.mkdir(parents=True, mode=0o700)
    for name in ("token", "daemon.lock", "events.sqlite3", "devices.sqlite3", "identity.key"):
        (path / name).write_text("x")
    (path / "tls").mkdir()


UNIT = ["sidecode-trio.service"]


def test_install_twice_is_the_same_result(
    systemd: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    unit = systemd.home / ".config" / "systemd" / "user" / service.UNIT_NAME
    assert cli.main(["service", "install", "--", "--port", "8765"]) == 0
    first = capsys.readouterr().out
    assert "+ExecStart=" in first and "--port 8765" in first  # the diff against nothing
    assert systemd.calls() == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", *UNIT],
        ["systemctl", "--user", "start", *UNIT],
    ]
    assert "sidecode-trio pair" in first and "loginctl enable-linger" in first
    text = unit.read_text()
    assert oct(unit.stat().st_mode & 0o777) == "0o600"
    assert f'"PATH={os.environ["PATH"]}"' in text  # the PATH that finds claude, captured
    assert f"--state-dir {systemd.state_dir}" in text  # the default, pinned at install

    systemd.clear()
    assert cli.main(["service", "install", "--", "--port", "8765"]) == 0
    second = capsys.readouterr().out
    assert "already up to date" in second and "+ExecStart" not in second
    assert unit.read_text() == text
    assert systemd.calls() == [  # no reload, no restart: a running daemon is left alone
        ["systemctl", "--user", "enable", *UNIT],
        ["systemctl", "--user", "start", *UNIT],
    ]
    assert systemd.st()["starts"] == 1

    systemd.clear()
    assert cli.main(["service", "install", "--", "--port", "9000"]) == 0
    third = capsys.readouterr().out
    assert "\n-ExecStart=" in third and "--port 9000" in third and "--port 8765" in third
    assert systemd.calls() == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", *UNIT],
        ["systemctl", "--user", "restart", *UNIT],  # the new flags take effect now
    ]


def test_install_pins_serve_flags_as_absolute_canonical_flags(
    systemd: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "proj").mkdir()
    flags = ["--allow-root=proj", "--no-https", "--remote-control", "--claude", "nope-claude"]
    argv = ["service", "install", "--dry-run", "--state-dir", "st", "--", *flags]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert systemd.calls() == []
    assert not (systemd.home / ".config").exists(), "a dry run writes nothing"
    assert "would run: systemctl --user enable sidecode-trio.service" in out
    exec_line = next(line for line in out.splitlines() if line.startswith("+ExecStart="))
    argv_out = split_words(exec_line.removeprefix("+ExecStart="))
    assert argv_out[4:8] == ["--state-dir", str(tmp_path / "st"), "--claude", "nope-claude"]
    assert argv_out[8:] == [
        "--allow-root",
        str(tmp_path / "proj"),
        "--no-https",
        "--remote-control",
    ]
    assert "warning: 'nope-claude' is not on the captured PATH" in out
    # the canonical flags are what serve itself accepts
    parsed = cli._parser().parse_args(argv_out[3:])
    assert parsed.allowed_roots == [str(tmp_path / "proj")] and parsed.https is False


def test_install_rejects_bad_serve_flags_before_writing(
    systemd: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["service", "install", "--", "--port", "many"])
    assert exited.value.code == 2 and "invalid int value" in capsys.readouterr().err
    assert systemd.calls() == [] and not (systemd.home / ".config").exists()


def test_install_refuses_a_second_daemon_on_the_state_dir(
    systemd: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    _state_dir(systemd.state_dir)
    # a live daemon not run by the service: this test process stands in for it
    (systemd.state_dir / "daemon.json").write_text(json.dumps({"pid": os.getpid()}))
    assert cli.main(["service", "install"]) == 2
    err = capsys.readouterr().err
    assert (
        f"not installing a second daemon: a daemon not run by the service (pid {os.getpid()})"
        in err
    )
    assert systemd.calls() == []
    assert not (systemd.home / ".config" / "systemd").exists()

    # the service's own daemon is not a second one: reinstalling over it is fine
    (systemd.state_dir / "daemon.json").unlink()
    assert cli.main(["service", "install"]) == 0
    (systemd.state_dir / "daemon.json").write_text(json.dumps({"pid": systemd.st()["pid"]}))
    assert cli.main(["service", "install", "--", "--port", "1234"]) == 0


def test_uninstall_keeps_state_and_purge_deletes_it(
    systemd: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    unit = systemd.home / ".config" / "systemd" / "user" / service.UNIT_NAME
    assert cli.main(["service", "install"]) == 0
    _state_dir(systemd.state_dir)
    systemd.clear()
    assert cli.main(["service", "uninstall"]) == 0
    out = capsys.readouterr().out
    assert not unit.exists() and "kept the state directory" in out
    kept = sorted(p.name for p in systemd.state_dir.iterdir())
    assert kept == sorted(["daemon.lock", "devices.sqlite3", "events.sqlite3", "identity.key",
                           "tls", "token"])  # fmt: skip
    assert systemd.calls() == [
        ["systemctl", "--user", "disable", "--now", *UNIT],
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "reset-failed", *UNIT],
    ]
    assert systemd.st()["running"] is False and systemd.st()["enabled"] is False
    assert cli.main(["service", "uninstall"]) == 0  # twice: nothing to do, no error
    assert "not installed" in capsys.readouterr().out

    assert cli.main(["service", "install"]) == 0
    assert cli.main(["service", "uninstall", "--purge"]) == 0
    assert "deleted the state directory" in capsys.readouterr().out
    assert not systemd.state_dir.exists() and not unit.exists()


def test_uninstall_removes_a_unit_edited_beyond_reading(
    systemd: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    unit = systemd.home / ".config" / "systemd" / "user" / service.UNIT_NAME
    assert cli.main(["service", "install"]) == 0
    unit.write_text("[Service]\nExecStart=/usr/bin/sleep 1000\n")  # no --state-dir
    assert cli.main(["service", "status"]) == 2
    assert "names no --state-dir" in capsys.readouterr().err
    assert cli.main(["service", "uninstall"]) == 0
    assert (
        not unit.exists() and ["systemctl", "--user", "disable", "--now", *UNIT] in systemd.calls()
    )


def test_purge_refuses_what_is_not_a_quiet_state_dir(systemd: Fakes, tmp_path: Path) -> None:
    home_like = tmp_path / "project"
    home_like.mkdir()
    (home_like / "token").write_text("x")
    (home_like / "notes.txt").write_text("mine")
    assert cli.main(["service", "uninstall", "--purge", "--state-dir", str(home_like)]) == 2
    assert (home_like / "notes.txt").exists()
    _state_dir(systemd.state_dir)
    (systemd.state_dir / "daemon.json").write_text(json.dumps({"pid": os.getpid()}))
    assert cli.main(["service", "uninstall", "--purge", "--state-dir", str(systemd.state_dir)]) == 2
    assert (systemd.state_dir / "token").exists()


def test_status_restart_and_logs(systemd: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["service", "status"]) == 0
    assert "not installed" in capsys.readouterr().out
    assert cli.main(["service", "restart"]) == 2
    assert cli.main(["service", "install", "--state-dir", str(systemd.state_dir)]) == 0
    capsys.readouterr()
    systemd.clear()
    assert cli.main(["service", "status"]) == 0
    out = capsys.readouterr().out
    assert "enabled at login, running (pid 4001)" in out and "never exited" in out
    assert f"sidecode-trio pair --state-dir {systemd.state_dir}" not in out  # the default dir
    assert "pair a phone or watch with 'sidecode-trio pair'" in out
    assert f"loginctl enable-linger {getpass.getuser()}" in out
    assert cli.main(["service", "status", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["running"] and body["enabled"] and body["linger"] is False
    assert body["state_dir"] == str(systemd.state_dir) and body["conflict"] is None

    systemd.clear()
    assert cli.main(["service", "restart"]) == 0
    assert systemd.calls() == [["systemctl", "--user", "restart", *UNIT]]
    assert systemd.st()["pid"] == 4002
    systemd.clear()
    assert cli.main(["service", "logs", "-n", "50", "-f"]) == 0
    assert systemd.calls() == [
        ["journalctl", "--user", "-u", *UNIT, "-n", "50", "--no-pager", "-f"]
    ]


def test_a_manager_that_refuses_is_a_clear_error(
    systemd: Fakes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bin" / "systemctl").write_text(
        "#!/bin/sh\necho 'Failed to connect to bus: No medium found' >&2\nexit 1\n"
    )
    assert cli.main(["service", "install"]) == 2
    err = capsys.readouterr().err
    assert "Failed to connect to bus" in err and "loginctl enable-linger" in err
    assert not (systemd.home / ".config" / "systemd" / "user" / service.UNIT_NAME).exists()
    # with nothing installed, status and doctor need no user manager to say so
    assert cli.main(["service", "status"]) == 0
    assert "not installed" in capsys.readouterr().out
    assert doctor_part(systemd.state_dir) == {"ok": True, "installed": False}


def test_launchd_sequences(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = mac_host(tmp_path)
    fakes = _fakes(tmp_path, monkeypatch, host.service_file)
    manager = ServiceManager(host)
    spec = make_spec(host, fakes.state_dir, [], os.environ)
    target, domain = "gui/501/com.sidecode-trio.daemon", "gui/501"
    plist = str(host.service_file)

    first = manager.install(spec)
    assert first.changed and host.log_file.parent.is_dir()
    assert fakes.calls() == [
        ["launchctl", "enable", target],
        ["launchctl", "bootstrap", domain, plist],
    ]
    assert plistlib.loads(host.service_file.read_bytes())["ProgramArguments"] == list(spec.argv)
    fakes.clear()
    again = manager.install(spec)
    assert not again.changed and again.diff == ""
    assert fakes.calls()[-1] == ["launchctl", "kickstart", target]  # no bootout: it keeps running
    assert fakes.st()["starts"] == 1
    fakes.clear()
    changed = manager.install(make_spec(host, fakes.state_dir, ["--port", "9"], os.environ))
    assert "--port" in changed.diff
    assert fakes.calls()[-2:] == [
        ["launchctl", "bootout", target],
        ["launchctl", "bootstrap", domain, plist],
    ]
    status = manager.status()
    assert status.state.running and status.state.enabled and status.state.pid == fakes.st()["pid"]
    fakes.clear()
    manager.restart()
    assert fakes.calls() == [["launchctl", "kickstart", "-k", target]]
    fakes.clear()
    assert manager.logs(10, follow=False) == 0
    assert fakes.calls() == [["tail", "-n", "10", str(host.log_file)]]

    _state_dir(fakes.state_dir)
    fakes.clear()
    kept = f"kept the state directory {fakes.state_dir} (sessions, identity, devices)"
    assert manager.uninstall() == [f"removed {plist}", kept]
    assert fakes.calls() == [["launchctl", "bootout", target]]
    assert not host.service_file.exists() and (fakes.state_dir / "token").exists()


# -- doctor ---------------------------------------------------------------------------------


def test_doctor_flags_a_foreground_daemon_and_a_fight(systemd: Fakes) -> None:
    _state_dir(systemd.state_dir)
    (systemd.state_dir / "daemon.json").write_text(json.dumps({"pid": os.getpid()}))
    alone = doctor_part(systemd.state_dir)
    assert alone["ok"] and not alone["installed"] and alone["foreground_pid"] == os.getpid()
    assert "runs in the foreground" in alone["detail"]

    (systemd.state_dir / "daemon.json").unlink()
    assert cli.main(["service", "install"]) == 0
    healthy = doctor_part(systemd.state_dir)
    assert healthy == {"ok": True, "installed": True, "enabled": True, "running": True,
                       "pid": 4001, "last_exit": None,
                       "service_state_dir": str(systemd.state_dir)}  # fmt: skip

    # the service crash-loops on the lock a foreground daemon holds
    fake = systemd.st() | {"running": False, "inactive": "activating", "exit_code": 1,
                           "exit_status": 2, "result": "exit-code"}  # fmt: skip
    systemd.state.write_text(json.dumps(fake))
    (systemd.state_dir / "daemon.json").write_text(json.dumps({"pid": os.getpid()}))
    fight = doctor_part(systemd.state_dir)
    assert not fight["ok"] and fight["last_exit"] == "exited 2"
    assert "not run by the service" in fight["detail"]
    assert cli.main(["service", "status"]) == 1


def test_readme_shows_the_commands_per_platform() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Run it at login\n", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```sh\n")[1:]
    assert len(blocks) == 2  # Linux, macOS
    for block in blocks:
        lines = [ln.split("#")[0].strip() for ln in block.split("```")[0].splitlines()]
        ours = [shlex.split(ln)[1:] for ln in lines if ln.startswith("sidecode-trio ")]
        assert ours and ours[0][:2] == ["service", "install"]
        for argv in ours:  # each is a command line the CLI accepts
            assert cli._parser().parse_args(argv).command == "service"
