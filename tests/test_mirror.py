"""Mirroring a local session to Claude Code's Remote Control on demand (issue 6, part 4).

The probe's parsing is fed help texts in memory; the toggle runs a real daemon on 127.0.0.1 with
the fake CLI, which lists ``--remote-control [name]`` in its ``--help`` (or not, with
``FAKE_CLAUDE_REMOTE_CONTROL=absent``) and records every argv it was started with.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from sidecode_trio.claude.messages import LaunchSpec
from sidecode_trio.claude.probe import CLIProbe, parse_help, parse_version, support_from
from sidecode_trio.config import DaemonConfig

from helpers import Client, cli_argvs, load_example, read_cli_log, running_daemon

REAL_HELP = """Usage: claude [options] [command] [prompt]

Options:
  --add-dir <directories...>            More directories Claude can access
  --allowedTools, --allowed-tools <tools...>
      Comma or space-separated list of tool names to allow (e.g. "Bash(git *)
      Edit")
  -p, --print                           Print response and exit (useful for
                                        pipes). Note: -r is not --remote-control
  --remote-control [name]               Start an interactive session with Remote
                                        Control enabled (optionally named)
  --remote-control-session-name-prefix <prefix>
      Prefix for auto-generated Remote Control session names (default: hostname)
  -r, --resume [value]                  Resume a conversation by session ID

Commands:
  remote-control [options]              Serve sessions to --remote-control
"""


# -- the probe (pure, and its cache) ------------------------------------------------------------


def test_help_parsing_finds_flags_and_their_arguments() -> None:
    flags = parse_help(REAL_HELP)
    assert flags["--remote-control"] == "[name]"
    assert flags["--remote-control-session-name-prefix"] == "<prefix>"
    assert flags["--allowed-tools"] == "<tools...>" and flags["--allowedTools"] is None
    assert flags["-p"] is None and flags["--resume"] == "[value]"
    assert "--add-dir" in flags and "remote-control" not in flags  # a command is not a flag
    support = support_from("/bin/claude", "2.1.329 (Claude Code)\n", REAL_HELP, 5.0)
    assert (support.version, support.remote_control, support.remote_control_name) == (
        "2.1.329",
        True,
        True,
    )
    older = REAL_HELP.replace("--remote-control [name]", "--replay-user-messages")
    older = older.replace("--remote-control-session-name-prefix", "--restricted")
    assert not support_from("/bin/claude", "2.0.1", older, 5.0).remote_control
    # descriptions mentioning the flag, and the commands section, do not count
    text = "Options:\n  -p  see --remote-control\nCommands:\n  --remote-control x"
    assert parse_help(text) == {"-p": None}
    assert parse_version("claude 2.1.197 (Claude Code)") == "2.1.197"
    assert parse_version("no version here") is None


def test_probe_is_cached_per_binary_path_and_mtime(tmp_path: Path) -> None:
    binary = tmp_path / "claude"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    calls: list[list[str]] = []

    def runner(argv: list[str], env: Mapping[str, str]) -> str:
        calls.append(argv[1:])
        return "2.1.329 (Claude Code)" if argv[1] == "--version" else REAL_HELP

    probe = CLIProbe(str(binary), {}, runner, clock=lambda: 42.0)
    assert probe.status() == {
        "probed": False,
        "detail": "probed when mirroring is first asked for",
    }
    first = probe.check()
    assert first.remote_control and first.path == str(binary) and first.probed_at == 42.0
    assert probe.check() == first and calls == [["--version"], ["--help"]]
    os.utime(binary, ns=(1, 1))  # Claude Code updated in place: probe again
    probe.check()
    assert len(calls) == 4
    assert probe.status()["remote_control"] is True and probe.status()["probed"] is True
    missing = CLIProbe(str(tmp_path / "nope"), {}, runner).check()
    assert not missing.remote_control and "not found" in missing.error


def test_probe_of_a_binary_that_fails(tmp_path: Path) -> None:
    binary = tmp_path / "claude"
    binary.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    binary.chmod(0o755)
    support = CLIProbe(str(binary)).check()
    assert not support.remote_control and "exited with 3: broken" in support.error


def test_launch_spec_adds_the_flag_with_its_name() -> None:
    spec = LaunchSpec("claude", "/w", "sid", resume=True)
    assert not any(a.startswith("--remote-control") for a in spec.argv())
    named = attrs.evolve(spec, remote_control=True, remote_control_name="-odd name")
    assert named.argv()[-1] == "--remote-control=-odd name"  # '=': a name is never a flag
    assert attrs.evolve(spec, remote_control=True).argv()[-1] == "--remote-control"


# -- the toggle against a real daemon and the fake CLI ---------------------------------------


def session_argvs(cli_log: Path) -> list[list[str]]:
    """The argvs of session processes (not of ``--version``/``--help`` probes)."""
    return [argv for argv in cli_argvs(cli_log) if "-p" in argv]


async def put_mirror(client: Client, session_id: str, **body: Any) -> Any:
    return await client.http.put(f"/v1/sessions/{session_id}/mirror", json=body)


async def finish_turn(client: Client, session_id: str, text: str) -> None:
    async with client.events(session_id, from_start=False) as stream:
        await client.send(session_id, text)
        done = await stream.until_type("turn.completed")
        assert done.body["result"] == f"You said: {text}"


async def test_mirror_on_off_on_restarts_and_resumes_the_cli(
    daemon: Client, work_dir: Path, cli_log: Path
) -> None:
    with trio.fail_after(30):
        created = await daemon.create(work_dir, title="mirror me")
        sid = created["session"]["id"]
        await finish_turn(daemon, sid, "first")
        before = (await daemon.snapshot(sid))["session"]

        reply = await put_mirror(daemon, sid, enabled=True, name="my mirror")
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert (body["enabled"], body["name"], body["changed"]) == (True, "my mirror", True)
        assert body["session"]["mirrored"] is True and body["session"]["cli"] == "running"
        argv = session_argvs(cli_log)[-1]
        assert "--remote-control=my mirror" in argv and f"--resume={sid}" in argv
        sent = [e for e in read_cli_log(cli_log) if "argv" not in e]
        assert any(e.get("request", {}).get("subtype") == "initialize" for e in sent)

        again = (await put_mirror(daemon, sid, enabled=True)).json()  # same name: nothing to do
        assert (again["enabled"], again["changed"]) == (True, False)
        await finish_turn(daemon, sid, "while mirrored")  # the same conversation carries on

        off = (await put_mirror(daemon, sid, enabled=False)).json()
        assert (off["enabled"], off["name"], off["changed"]) == (False, None, True)
        argv = session_argvs(cli_log)[-1]
        assert not any(a.startswith("--remote-control") for a in argv)
        assert f"--resume={sid}" in argv

        on = (await put_mirror(daemon, sid, enabled=True)).json()
        assert (on["enabled"], on["name"]) == (True, "mirror me")  # named after the title
        assert session_argvs(cli_log)[-1][-1] == "--remote-control=mirror me"
        assert len(session_argvs(cli_log)) == 4  # first, on, off, on: one restart each

        snap = await daemon.snapshot(sid)
        assert snap["session"]["mirrored"] is True and snap["session"]["mirror_name"] == "mirror me"
        assert snap["session"]["cost_usd"] > before["cost_usd"]  # resumed, cost carried over
        async with daemon.events(sid) as stream:
            await stream.until(lambda e: e.id == f"{snap['epoch']}:{snap['cursor']}")
        mirrors = [e.body for e in stream.seen if e.type == "session.mirror"]
        assert [(m["enabled"], m["name"], m["confirmed"]) for m in mirrors] == [
            (True, "my mirror", True),
            (False, None, True),
            (True, "mirror me", True),
        ]
        assert all(m["detail"] == "" for m in mirrors)
        types = [e.type for e in stream.seen]
        # each change: the old CLI stopped, the new one started, then the confirmation
        last = len(types) - 1 - types[::-1].index("session.mirror")
        states = [e.body["state"] for e in stream.seen[:last] if e.type == "cli.state"][-3:]
        assert states == ["stopped", "starting", "running"]


async def test_mirror_refused_while_a_turn_runs_or_a_permission_waits(
    daemon: Client, work_dir: Path
) -> None:
    with trio.fail_after(30):
        session = (await daemon.create(work_dir))["session"]
        sid = session["id"]
        async with daemon.events(sid, from_start=False) as stream:
            await daemon.send(sid, "[[slow:400]]")
            await stream.until_type("text.delta")
            busy = await put_mirror(daemon, sid, enabled=True)
            assert busy.status_code == 409
            assert busy.json()["error"]["code"] == "session_busy"
            assert "idle" in busy.json()["error"]["message"]
            await daemon.http.post(f"/v1/sessions/{sid}/interrupt")
            await stream.until_type("turn.interrupted")
            await daemon.send(sid, "[[bash:echo hi]]")
            await stream.until_type("permission.requested")
            waiting = await put_mirror(daemon, sid, enabled=True)
            assert waiting.status_code == 409, waiting.text
            await daemon.http.post(f"/v1/sessions/{sid}/interrupt")
            await stream.until_type("turn.interrupted")
        assert (await daemon.snapshot(sid))["session"]["mirrored"] is False


async def test_mirror_bad_requests(daemon: Client, work_dir: Path) -> None:
    with trio.fail_after(20):
        unknown = await put_mirror(daemon, "no-such-session", enabled=True)
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "unknown_session"
        sid = (await daemon.create(work_dir))["session"]["id"]
        missing = await daemon.http.put(f"/v1/sessions/{sid}/mirror", json={})
        assert missing.status_code == 400
        bad_name = await put_mirror(daemon, sid, enabled=True, name="two\nlines")
        assert bad_name.status_code == 400
        off = (await put_mirror(daemon, sid, enabled=False)).json()  # already off: no restart
        assert (off["enabled"], off["changed"]) == (False, False)


async def test_mirror_unsupported_by_the_cli(
    make_config: Callable[..., DaemonConfig],
    claude_env: dict[str, str],
    work_dir: Path,
    cli_log: Path,
) -> None:
    config = make_config(claude_env={**claude_env, "FAKE_CLAUDE_REMOTE_CONTROL": "absent"})
    with trio.fail_after(30):
        async with running_daemon(config) as client:
            status = (await client.http.get("/v1/status")).json()["claude"]
            assert status["probed"] is False  # polling the status never runs the CLI
            sid = (await client.create(work_dir))["session"]["id"]
            refused = await put_mirror(client, sid, enabled=True)
            assert refused.status_code == 422
            assert refused.json()["error"]["code"] == "unsupported"
            assert "--remote-control" in refused.json()["error"]["message"]
            status = (await client.http.get("/v1/status")).json()["claude"]
            assert status["probed"] is True and status["remote_control"] is False
            assert status["version"] == "2.1.329"
            assert (await put_mirror(client, sid, enabled=False)).status_code == 200
            assert session_argvs(cli_log) == []  # nothing was started for it


async def test_a_cli_that_fails_with_the_flag_leaves_mirroring_off(
    make_config: Callable[..., DaemonConfig], tmp_path: Path, work_dir: Path
) -> None:
    """The probe said yes, but the CLI started for it refuses the flag: the request fails
    clearly, the session is not mirrored, and the next message runs without the flag."""
    wrapper = tmp_path / "claude-lying"  # its --help lists the flag; a real start refuses it
    fake = Path(__file__).parent / "fake_claude.py"
    wrapper.write_text(
        '#!/bin/sh\ncase "$1" in --help|--version) ;; *) export FAKE_CLAUDE_REMOTE_CONTROL=absent'
        f';; esac\nexec "{sys.executable}" "{fake}" "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    with trio.fail_after(30):
        async with running_daemon(make_config(claude=str(wrapper))) as client:
            sid = (await client.create(work_dir))["session"]["id"]
            failed = await put_mirror(client, sid, enabled=True)
            assert failed.status_code == 502, failed.text
            error = failed.json()["error"]
            assert error["code"] == "mirror_failed" and "unknown option" in error["message"]
            snap = await client.snapshot(sid)
            assert snap["session"]["mirrored"] is False
            async with client.events(sid) as stream:
                event = await stream.until_type("session.mirror")
            assert (event.body["enabled"], event.body["confirmed"]) == (False, False)
            await finish_turn(client, sid, "still works")


async def test_mirror_comes_back_after_a_daemon_restart(
    make_config: Callable[..., DaemonConfig], work_dir: Path, cli_log: Path
) -> None:
    config = make_config()
    with trio.fail_after(40):
        async with running_daemon(config) as client:
            sid = (await client.create(work_dir, "hello", title="kept"))["session"]["id"]
            async with client.events(sid) as stream:
                await stream.until_type("turn.completed")
            reply = await put_mirror(client, sid, enabled=True, name="kept mirror")
            assert reply.status_code == 200, reply.text
        before = len(session_argvs(cli_log))
        async with running_daemon(config) as client:
            async with client.events(sid) as stream:
                confirmed = await stream.until(
                    lambda e: (
                        e.type == "session.mirror"
                        and sum(x.type == "session.mirror" for x in stream.seen) == 2
                    )
                )
            assert confirmed.body["confirmed"] is True and len(session_argvs(cli_log)) > before
            assert confirmed.body["name"] == "kept mirror"
            argv = session_argvs(cli_log)[-1]
            assert "--remote-control=kept mirror" in argv and f"--resume={sid}" in argv
            info = (await client.snapshot(sid))["session"]
            assert info["mirrored"] is True and info["cli"] == "running"
            await finish_turn(client, sid, "after the restart")


async def test_a_watch_may_not_mirror(
    make_config: Callable[..., DaemonConfig], work_dir: Path
) -> None:
    pc = load_example("pair_client")
    with trio.fail_after(30):
        async with running_daemon(make_config(https=True)) as owner:
            offer = await owner.http.post("/v1/pairings", json={"scope": "approve"})
            payload = offer.json()["payload"]
            credentials = await trio.to_thread.run_sync(pc.pair, payload, "watch")
            watch = pc.Client(credentials)
            sid = (await owner.create(work_dir))["session"]["id"]
            body = {"enabled": True}
            with pytest.raises(RuntimeError, match=r"403.*scope_required"):
                await trio.to_thread.run_sync(watch.call, "PUT", f"/v1/sessions/{sid}/mirror", body)


def test_fake_cli_help_lists_the_flag_like_the_real_one() -> None:
    import fake_claude

    assert parse_help(fake_claude.help_text(True))["--remote-control"] == "[name]"
    assert "--remote-control" not in parse_help(fake_claude.help_text(False))


async def test_a_phone_mirrors_over_webtransport(daemon: Client, work_dir: Path) -> None:
    """WebTransport requests run through the HTTP API's own routes: the same operation."""
    wt = load_example("wt_client")
    payload = (await daemon.http.post("/v1/pairings", json={"scope": "chat"})).json()["payload"]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            phone = wt.Device(await wt.pair(nursery, payload, "phone"))
            session = await phone.connect(nursery)
            sid = (await daemon.create(work_dir))["session"]["id"]
            reply = await session.request("PUT", f"/v1/sessions/{sid}/mirror", {"enabled": True})
            assert (reply["enabled"], reply["session"]["mirrored"]) == (True, True)
            nursery.cancel_scope.cancel()
