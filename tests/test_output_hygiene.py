"""What the daemon prints, logs and records: nothing a client sends can drive the owner's
terminal or forge a log line, the pairing secret never lands in a log, and the events an owner
needs (a CLI crash, a turn recovered after a restart) are logged once, with the session id."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from sidecode_trio.cli import main
from sidecode_trio.config import DaemonConfig
from sidecode_trio.daemon import DaemonHandle, serve
from sidecode_trio.eventlog.log import EventLog
from sidecode_trio.eventlog.store import SQLiteStore
from sidecode_trio.printable import EscapingFormatter, device_name_problem, escape
from sidecode_trio.security.devices import DeviceStore, Scope
from sidecode_trio.sessions.supervisor import SessionSupervisor, SupervisorSettings
from sidecode_trio.term.render import Renderer
from sidecode_trio.wire import events as ev
from sidecode_trio.wire.converter import unstructure

from helpers import Client, load_example, running_daemon

pc = load_example("pair_client")
ATTACK_PATH = "/v1/x%1b]0;PWNED%07%0aFORGED-LINE"

pytestmark = pytest.mark.trio


async def test_a_cli_crash_is_logged_with_the_session_id(
    daemon: Client, work_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(20):
        session = (await daemon.create(work_dir, "[[crash:3]]"))["session"]
        async with daemon.events(session["id"]) as stream:
            await stream.until_type("session.error")
    crashes = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and session["id"] in r.getMessage()
    ]
    assert len(crashes) == 1, [r.getMessage() for r in caplog.records]
    assert "code 3" in crashes[0].getMessage()


async def test_recovering_an_interrupted_turn_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What a killed daemon left open (a running turn, a queued message, a pending request)
    is closed at start-up, and one INFO line says so with the session id."""
    store = SQLiteStore(tmp_path / "events.sqlite3")
    event_log = EventLog(store)
    event_log.load()
    event_log.create("s1")
    for event in (
        ev.SessionCreated(str(tmp_path), "t"),
        ev.MessageQueued("m1", "first"),
        ev.TurnStarted("m1"),
        ev.MessageQueued("m2", "second"),
    ):
        event_log.append("s1", event)
    event_log.commit()  # folded when committed, as a killed daemon left it on disk
    caplog.set_level(logging.INFO, logger="sidecode_trio.sessions")
    SessionSupervisor("s1", event_log, SupervisorSettings()).recover()
    store.close()
    lines = [r for r in caplog.records if "s1" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "m1" in lines[0].getMessage() and "1 queued" in lines[0].getMessage()


async def test_the_start_up_pairing_offer_is_never_written_to_a_non_terminal(
    make_config: Callable[..., DaemonConfig],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """stdout here is not a terminal (as under systemd or ``> daemon.log``): no pairing code,
    link or secret goes there or into the log; one log line says how to get one."""
    caplog.set_level(logging.INFO)
    config = make_config()
    async with trio.open_nursery() as nursery:
        handle: DaemonHandle = await nursery.start(partial(serve, config, show_pairing=True))
        handle.stop.set()
    out, err = capfd.readouterr()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for text in (out, err, logged):
        assert "pair#" not in text and "#pair=" not in text and '"secret"' not in text
        assert "sidecode-trio://" not in text
    assert "sidecode-trio pair" in logged


async def test_a_request_path_cannot_drive_the_terminal_or_forge_a_log_line(
    tmp_path: Path, fake_claude: Path, work_dir: Path, claude_env: dict[str, str]
) -> None:
    """The daemon as a user runs it (``serve``, logging to stderr): an unauthenticated request
    whose path holds ESC, BEL and a newline reaches neither stderr nor the audit log raw."""
    state, ready = tmp_path / "state", tmp_path / "ready.json"
    state.mkdir(mode=0o700)
    (state / "config.toml").write_text('keystore = "file"\n')
    argv = [
        sys.executable, "-m", "sidecode_trio", "serve", "--state-dir", str(state),
        "--port", "0", "--claude", str(fake_claude), "--allow-root", str(work_dir),
        "--ready-file", str(ready), "--log-level", "info",
    ]  # fmt: skip
    stderr = tmp_path / "stderr.txt"
    with stderr.open("wb") as sink:
        proc = await trio.lowlevel.open_process(
            argv, env={**os.environ, **claude_env}, stdout=sink, stderr=sink
        )
    try:
        with trio.fail_after(20):
            while not ready.exists():
                assert proc.poll() is None, stderr.read_text()
                await trio.sleep(0.05)
            url = json.loads(ready.read_text())["http"]
            token = (state / "token").read_text().strip()
            async with httpx.AsyncClient(base_url=url) as http:
                refused = await http.get(ATTACK_PATH)
                assert refused.status_code == 401
                owner = {"Authorization": f"Bearer {token}"}
                audit = (await http.get("/v1/audit", headers=owner)).json()["entries"]
            proc.terminate()
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    failed = [e["detail"] for e in audit if e["kind"] == "auth_failed"]
    assert len(failed) == 1 and "\\x1b]0;PWNED\\x07\\x0aFORGED-LINE" in failed[0]
    text = stderr.read_bytes()
    assert b"\x1b" not in text and b"\x07" not in text
    assert not any(line.startswith(b"FORGED-LINE") for line in text.splitlines())
    assert b"PWNED\\x07\\x0aFORGED-LINE" in text  # logged, escaped
    # stdout and stderr were a file: no device was paired, yet no pairing code went there
    assert b"pair#" not in text and b"#pair=" not in text and b"sidecode-trio pair" in text


async def test_the_log_formatter_escapes_messages_and_arguments() -> None:
    formatter = EscapingFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "a\x1b[2J %s \u202e", ("b\r\nFORGED\x07",), None
    )
    assert formatter.format(record) == "INFO a\\x1b[2J b\\x0d\\x0aFORGED\\x07 \\u202e"
    assert escape("plain text, ünïcode and emoji 🙂") == "plain text, ünïcode and emoji 🙂"


@pytest.mark.parametrize(
    "name",
    [
        "evil\x1b]0;PWNED\x07",
        "two\nlines",
        "bell\x07",
        "rtl\u202eenohp",  # a bidi override
        "zero\u200bwidth",  # a format character
        "line\u2028separator",
        "Local Owner",
        "  timeout ",
        "local\u00a0owner",  # a no-break space looks like a space
        "\uff34\uff29\uff2d\uff25\uff2f\uff35\uff34",  # fullwidth: folds to "timeout"
        "   ",
    ],
)
async def test_a_device_name_that_could_spoof_or_drive_a_terminal_is_refused(
    make_config: Callable[..., DaemonConfig], name: str
) -> None:
    """At pairing (before the one-time code is spent) and for a WatchCode device: 400
    ``bad_device_name``; the same code still pairs a device with a good name afterwards."""
    assert device_name_problem(name) is not None
    async with running_daemon(make_config(https=True)) as owner:
        with trio.fail_after(20):
            offer = await owner.http.post("/v1/pairings", json={"scope": "chat"})
            payload = offer.json()["payload"]
            with pytest.raises(RuntimeError, match=r"400.*bad_device_name"):
                await trio.to_thread.run_sync(pc.pair, payload, name)
            await trio.to_thread.run_sync(pc.pair, payload, "my phone")
            reply = await owner.http.post("/v1/devices/watchcode", json={"name": name})
            assert reply.status_code == 400 and reply.json()["error"]["code"] == "bad_device_name"
            devices = (await owner.http.get("/v1/devices")).json()["devices"]
    assert [d["name"] for d in devices] == ["my phone"]


async def test_cli_listings_print_names_and_titles_escaped(
    make_config: Callable[..., DaemonConfig],
    work_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``sessions``, ``devices`` and ``devices --log`` print what clients chose (a session
    title, a device name kept from before names were checked) with control characters escaped."""
    config = make_config()
    config.state_dir.mkdir(mode=0o700, parents=True)
    old = DeviceStore(config.state_dir / "devices.sqlite3")
    with sqlite3.connect(config.state_dir / "devices.sqlite3") as db:  # as an older daemon did
        db.execute(
            "INSERT INTO devices (id, name, public_key, fingerprint, scope, paired_at) "
            "VALUES ('dev_old', ?, 'k', 'f', 'chat', 1)",
            ("old\x1b]0;PWNED\x07phone",),
        )
    old.close()
    async with running_daemon(config) as owner:
        session = (await owner.create(work_dir))["session"]
        title = {"title": "title\x1b]0;PWNED\x07\x1b[2J"}
        assert (await owner.http.patch(f"/v1/sessions/{session['id']}", json=title)).is_success
        async with httpx.AsyncClient(base_url=owner.handle.url) as anonymous:
            assert (await anonymous.get(ATTACK_PATH)).status_code == 401
        state = ["--state-dir", str(config.state_dir)]
        for argv in (["sessions", *state], ["devices", *state], ["devices", "--log", *state]):
            assert await trio.to_thread.run_sync(main, argv) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "title\\x1b]0;PWNED\\x07\\x1b[2J" in out
    assert "old\\x1b]0;PWNED\\x07phone" in out
    assert not any(line.startswith("FORGED-LINE") for line in out.splitlines())


async def test_the_attach_renderer_escapes_names_titles_and_text() -> None:
    renderer = Renderer("s1")
    asked = ev.PermissionRequested("r1", "Bash", {"command": "ls"}, "t1")
    resolved = ev.PermissionResolved("r1", ev.PermissionOutcome.ALLOWED, "", "a\x1bb")
    updated = ev.SessionUpdated(title="new\x1b[2Jtitle")
    queued = ev.MessageQueued("m1", "hi\nthere\x1b]0;PWNED\x07")
    delta = ev.TextDelta("a1", 0, "quoted \x1b[31mred\x1b[0m\n\tok")
    shown = "".join(
        renderer.event(unstructure(e)) for e in (asked, resolved, updated, queued, delta)
    )
    assert "\x1b" not in shown
    assert "by a\\x1bb" in shown and "new\\x1b[2Jtitle" in shown
    assert "there\\x1b]0;PWNED\\x07" in shown and "quoted \\x1b[31mred\\x1b[0m\n\tok" in shown


# -- device names kept from before names were checked ------------------------------------------

OLD_NAMES = [
    "rtl\u202eenohp",  # a bidi override
    "old\x1b]0;PWNED\x07phone\nFORGED",
    "zero\u200bwidth",
    "timeout",
    "Local Owner",
    "\uff34\uff29\uff2d\uff25\uff2f\uff35\uff34",  # fullwidth "TIMEOUT"
    "   ",
    "",
    "x" * 150 + "\x1b",
]


def _rename(state_dir: Path, device_id: str, name: str) -> None:
    """What a daemon from before names were checked could have stored."""
    with sqlite3.connect(state_dir / "devices.sqlite3") as db:
        db.execute("UPDATE devices SET name = ? WHERE id = ?", (name, device_id))
    db.close()


async def test_a_stored_name_from_before_the_check_is_loaded_as_one_that_passes_it(
    tmp_path: Path,
) -> None:
    """Every path out (the device list, a token's principal: ``permission.resolved.by``, the
    audit log, the CLI) takes the name from the loaded device: it must pass the check, keep
    what it said visible (escaped), and never be a name the daemon uses for itself."""
    path = tmp_path / "devices.sqlite3"
    store = DeviceStore(path)
    ids = [store.add_secret(f"device {n}", Scope.CHAT)[0].id for n in range(len(OLD_NAMES))]
    store.close()
    for device_id, name in zip(ids, OLD_NAMES, strict=True):
        _rename(tmp_path, device_id, name)
    store = DeviceStore(path)
    shown = {device_id: store.get(device_id).name for device_id in ids}
    store.close()
    assert {n: device_name_problem(n) for n in shown.values()} == dict.fromkeys(shown.values())
    assert len(set(shown.values())) == len(ids)  # still told apart
    names = dict(zip(OLD_NAMES, shown.values(), strict=True))
    assert names["rtl\u202eenohp"] == "rtl\\u202eenohp"  # what was there, visible
    assert names["old\x1b]0;PWNED\x07phone\nFORGED"] == "old\\x1b]0;PWNED\\x07phone\\x0aFORGED"
    assert "timeout" in names["timeout"] and names["timeout"] != "timeout"


@pytest.mark.parametrize("name", ["rtl\u202eenohp", "timeout"])
async def test_a_device_with_a_name_from_before_the_check_is_shown_and_recorded_safely(
    make_config: Callable[..., DaemonConfig], work_dir: Path, name: str
) -> None:
    """A device paired by an older daemon under a name refused now: the device list, and the
    ``by`` its answer to a permission request records (every client shows it: a watch prints
    it as it is), say its name escaped, and never one the daemon uses for itself."""
    config = make_config(https=True)
    async with running_daemon(config) as owner:
        offer = await owner.http.post("/v1/pairings", json={"scope": "approve"})
        credentials = await trio.to_thread.run_sync(pc.pair, offer.json()["payload"], "phone")
    _rename(config.state_dir, credentials["device"]["id"], name)
    async with running_daemon(config) as owner:
        credentials["daemon"]["urls"] = [owner.handle.url]  # port 0: another port now
        device = pc.Client(credentials)
        with trio.fail_after(30):
            listed = (await owner.http.get("/v1/devices")).json()["devices"]
            sid = (await owner.create(work_dir, "[[bash:ls]]"))["session"]["id"]
            while not (snapshot := await owner.snapshot(sid))["pending_permissions"]:
                await trio.sleep(0.05)
            request_id = snapshot["pending_permissions"][0]["request_id"]
            path = f"/v1/sessions/{sid}/permissions/{request_id}"
            await trio.to_thread.run_sync(device.call, "POST", path, {"behavior": "allow"})

            def resolved() -> dict[str, Any]:
                events = device.follow(sid, f"{snapshot['epoch']}:0")
                try:
                    for _, data in events:
                        if data.get("event", {}).get("type") == "permission.resolved":
                            return data["event"]  # type: ignore[no-any-return]
                finally:
                    events.close()
                raise AssertionError("the stream ended")

            by = (await trio.to_thread.run_sync(resolved, abandon_on_cancel=True))["by"]
    assert [d["name"] for d in listed] == [by]
    assert device_name_problem(by) is None and by != name
