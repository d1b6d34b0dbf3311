"""The terminal client (issue 7, part 3): ``sidecode-trio attach`` and ``sidecode-trio send``.

Rendering and the SSE parser are fed in memory; reconnection is driven by a scripted stream;
then ``attach`` runs as a real process in a pseudo-terminal against a real daemon (fake CLI,
127.0.0.1, port 0), and ``send`` runs as a real process against the same kind of daemon.
"""

from __future__ import annotations

import json
import os
import pty
import sys
import termios
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from test_protocol import EVENT

from sidecode_trio.config import DaemonConfig
from sidecode_trio.errors import SidecodeError
from sidecode_trio.term.attach import STATUS_REWRITE, Attach, decode, follow
from sidecode_trio.term.client import DaemonAPI, locate, why_unreachable
from sidecode_trio.term.render import Malformed, Renderer
from sidecode_trio.term.sse import Frame, SSEParser
from sidecode_trio.wire import events as ev
from sidecode_trio.wire.converter import unstructure
from sidecode_trio.wire.snapshot import (
    AssistantItem,
    ErrorItem,
    MessageState,
    SessionInfo,
    Snapshot,
    ToolItem,
    ToolStatus,
    TurnEndItem,
    UserItem,
)

from helpers import running_daemon

SID = "0b5f8c2e-1111-4222-8333-944445555666"


def wire(value: object) -> dict[str, Any]:
    """An event or snapshot as the daemon writes it (the converter's JSON): what attach reads."""
    data: dict[str, Any] = unstructure(value)
    return data


def info(**changes: Any) -> SessionInfo:
    base = dict(
        id=SID,
        cwd="/work/app",
        title="fix the tests",
        model=None,
        permission_mode="default",
        status=ev.SessionStatus.RUNNING,
        cli=ev.CLIState.RUNNING,
        created_at=1.0,
        last_activity=2.0,
        cost_usd=0.25,
    )
    return SessionInfo(**{**base, **changes})


def bash_request(request_id: str = "req-1", **extra: Any) -> ev.PermissionRequested:
    return ev.PermissionRequested(
        request_id,
        "Bash",
        {"command": "rm -rf build"},
        summary="Run `rm -rf build`",
        description="clean up",
        **extra,
    )


# -- rendering (pure) ----------------------------------------------------------------------------


def test_streamed_text_tools_and_turn_end() -> None:
    r = Renderer(SID)
    out = r.event(wire(ev.MessageQueued("m1", "run the tests\nplease")))
    out += r.event(wire(ev.TextDelta("msg_1", 0, "I will ")))
    out += r.event(wire(ev.TextDelta("msg_1", 0, "run them.")))
    assert out.endswith("I will run them.")  # streamed, on one open line
    out += r.event(wire(ev.AssistantText("msg_1", 0, "I will run them.")))  # no duplicate
    out += r.event(wire(ev.ToolStarted("tu_1", "Bash", {"command": "pytest"}, "Running `pytest`")))
    out += r.event(wire(ev.ToolFinished("tu_1", True, "\nE   boom\nmore", title="Ran `pytest`")))
    out += r.event(wire(ev.AssistantText("msg_2", 0, "It failed.")))  # never streamed: whole
    out += r.event(
        wire(ev.TurnCompleted("m1", cost_usd=0.0123, total_cost_usd=0.5, duration_ms=1500))
    )
    out += r.event(wire(ev.StatusChanged(ev.SessionStatus.IDLE)))
    assert out.splitlines() == [
        "> run the tests",
        "  please",
        "I will run them.",
        "  ▸ Running `pytest`",
        "  ✗ Ran `pytest`",
        "    E boom",
        "It failed.",
        "✓ done in 1.5 s · $0.0123 (session $0.5000)",
        "· status: idle",
    ]
    failed = r.event(wire(ev.TurnFailed("m2", "cli_exited", "claude exited with code 1")))
    assert failed == "✗ failed (cli_exited: claude exited with code 1) · $0.0000\n"
    assert r.event(wire(ev.TurnInterrupted("m3", total_cost_usd=0.5))).startswith("■ interrupted")
    assert r.event(wire(ev.MessageDelivered("m4"))) == ""  # nothing new to say
    assert "mirrored to Remote Control as 'box'" in r.event(
        wire(ev.SessionMirror(True, "box", True))
    )


def test_a_line_interrupting_streamed_text_starts_on_a_new_line() -> None:
    r = Renderer(SID)
    out = r.event(wire(ev.TextDelta("msg_1", 0, "Let me check")))
    out += r.event(wire(ev.ToolStarted("tu_1", "Read", {}, "Reading app.py")))
    out += r.event(wire(ev.TextDelta("msg_1", 1, "Done")))
    assert out == "Let me check\n  ▸ Reading app.py\nDone"


def test_permission_prompt_and_keys() -> None:
    r = Renderer(SID)
    first = bash_request(suggestions=[{"type": "addRules"}], suggestion_labels=["Bash(rm *)"])
    out = r.event(wire(first))
    assert "┌ permission: Run `rm -rf build`" in out and "│ clean up" in out
    assert "[a] allow  [A] allow always: Bash(rm *)  [d] deny  [i] interrupt" in out
    path = f"/v1/sessions/{SID}/permissions/req-1"
    allow = r.key("a")
    assert allow is not None and (allow.method, allow.path, allow.body) == (
        "POST",
        path,
        {"behavior": "allow"},
    )
    always = r.key("A")
    assert always is not None and always.body == {"behavior": "allow", "suggestions": [0]}
    deny = r.key("d")
    assert deny is not None and deny.body == {"behavior": "deny"}
    interrupt = r.key("i")
    assert interrupt is not None and interrupt.path == f"/v1/sessions/{SID}/interrupt"
    assert r.key("x") is None
    r.event(wire(bash_request("req-2")))  # a second request waits behind the first
    resolved = r.event(
        wire(ev.PermissionResolved("req-1", ev.PermissionOutcome.ALLOWED, by="phone"))
    )
    assert resolved.startswith("  → allowed by phone\n┌ permission")  # then the next one
    second = r.key("a")
    assert second is not None and second.path.endswith("/req-2")
    assert r.key("A") is None  # no suggestion to remember
    r.event(wire(ev.PermissionResolved("req-2", ev.PermissionOutcome.WITHDRAWN)))
    assert r.key("a") is None and r.key("i") is not None


def test_ask_user_question_is_answered_with_a_digit() -> None:
    r = Renderer(SID)
    question = {"question": "Which one?", "options": [{"label": "red"}, {"label": "blue"}]}
    out = r.event(wire(ev.PermissionRequested("q1", "AskUserQuestion", {"questions": [question]})))
    assert "│ 1. red" in out and "│ 2. blue" in out and "[1-9] answer" in out
    call = r.key("2")
    assert call is not None and call.body == {
        "behavior": "allow",
        "answers": {"Which one?": "blue"},
    }
    assert r.key("3") is None and r.key("a") is None


def test_snapshot_shows_recent_history_and_pending_requests() -> None:
    items = [UserItem(f"m{i}", f"message {i}", MessageState.COMPLETED) for i in range(5)]
    tool = ToolItem("tu", "Bash", {}, ToolStatus.COMPLETED, title="Ran `ls`")
    partial = AssistantItem("msg_9", 0, "Half a sen", complete=False)
    snap = Snapshot("ep", 40, info(), [*items, tool, partial], [bash_request()])
    r = Renderer(SID, history=3)
    out = r.snapshot(wire(snap))
    lines = out.splitlines()
    assert lines[0] == "● fix the tests  /work/app"
    assert lines[1] == "running · default · $0.2500"
    assert "· 4 earlier items not shown" in lines
    assert "> message 4" in lines and "  ✓ Ran `ls`" in lines and "> message 3" not in lines
    assert "Half a sen" in lines and "┌ permission: Run `rm -rf build`" in lines
    assert r.key("a") is not None  # the snapshot's pending request is answerable
    # the half-written block continues where the snapshot left it (after the prompt's lines)
    assert r.event(wire(ev.TextDelta("msg_9", 0, "tence."))) == "tence."
    resync = r.snapshot(wire(snap), "compacted")
    assert "resynchronised from the daemon's state (compacted)" in resync


def test_the_other_events_and_items_it_shows() -> None:
    """The events and snapshot items not shown above, read from their wire form, print what
    they printed when the renderer read the wire classes."""
    r = Renderer(SID)
    items = [
        TurnEndItem("m1", "failed", "api_error", "overloaded", 0.5),
        TurnEndItem("m2", "interrupted"),
        ErrorItem("cli_exited", "boom"),
        ToolItem("t1", "Bash", {}, ToolStatus.RUNNING),
        ToolItem("t2", "Edit", {}, ToolStatus.FAILED, title="Edit x"),
    ]
    diff = ev.FileDiff("a.py", "@@", 3, 1)
    edit = ev.PermissionRequested("r1", "Edit", {"file_path": "/w/a.py"}, diff=diff)
    status = dict(status=ev.SessionStatus.REQUIRES_ACTION, permission_mode="acceptEdits")
    snap = Snapshot("ep", 4, info(title="fix", cost_usd=1, **status), items, [edit])
    assert r.snapshot(wire(snap)).splitlines() == [
        "● fix  /work/app",
        "requires_action · acceptEdits · $1.0000",
        "✗ failed (api_error: overloaded) · $0.5000",
        "■ interrupted · $0.0000",
        "! boom",
        "  ▸ Bash",
        "  ✗ Edit x",
        "┌ permission: Edit",
        "│ a.py +3 -1",
        "└ [a] allow  [d] deny  [i] interrupt",
    ]
    crashed = ev.CLIStateChanged(ev.CLIState.CRASHED, 12, 1, "Traceback\n  boom")
    assert r.event(wire(crashed)) == "! claude crashed: Traceback boom\n"
    assert r.event(wire(ev.CLIStateChanged(ev.CLIState.STOPPED))) == ""
    assert r.event(wire(ev.SessionError("cli_exited", "it\nfailed"))) == "! it failed\n"
    updated = ev.SessionUpdated(model="opus", archived=True)
    assert r.event(wire(updated)) == "· model → opus, archived → True\n"
    mirror = ev.SessionMirror(False, detail="no flag")
    assert r.event(wire(mirror)) == "· not mirrored to Remote Control (no flag)\n"
    assert r.event(wire(ev.TurnStarted("m3"))) == ""
    assert not r.ended
    assert r.event(wire(ev.SessionDeleted())) == "· the session was deleted\n"
    assert r.ended


@given(st.lists(EVENT, max_size=8))
def test_no_event_the_daemon_writes_is_taken_for_malformed(events: list[ev.Event]) -> None:
    """Every field the renderer reads has the name and type of the wire class's: no valid
    event is skipped (Malformed would propagate here)."""
    r = Renderer(SID)
    for event in events:
        assert isinstance(r.event(wire(event)), str)


def test_a_malformed_event_or_snapshot_is_skipped_and_changes_nothing() -> None:
    """A field it shows missing or of the wrong type (a boolean is not a number): Malformed,
    the renderer as it was; attach writes nothing for that frame and goes on."""
    r = Renderer(SID)
    assert r.event(wire(ev.TextDelta("m", 0, "Hel"))) == "Hel"
    with pytest.raises(Malformed, match="index"):
        r.event({**wire(ev.TextDelta("n", 0, "x")), "index": "0"})
    with pytest.raises(Malformed, match="cost_usd"):
        r.event({**wire(ev.TurnCompleted("t")), "cost_usd": True})
    with pytest.raises(Malformed, match="text: missing"):
        r.event({"type": "message.queued", "message_id": "m"})
    assert r.event(wire(ev.TextDelta("m", 0, "lo"))) == "lo"  # still the same open line
    snap = wire(Snapshot("ep", 1, info(), [], [bash_request()]))
    snap["items"] = [{"type": "user", "message_id": "m", "text": 5, "state": "queued"}]
    with pytest.raises(Malformed, match="text"):
        r.snapshot(snap)
    assert r.key("a") is None  # the skipped snapshot's request was not taken
    out: list[str] = []
    run = Attach(DaemonAPI("http://127.0.0.1:1", "t"), r, out.append, keys=False)
    run._show(Frame("ep:2", "snapshot", json.dumps({"reason": "compacted", "snapshot": snap})))
    run._show(Frame("ep:3", "text.delta", '{"event": {"type": "text.delta", "text": "x"}}'))
    assert out == []
    run._show(Frame("ep:4", "text.delta", json.dumps({"event": wire(ev.TextDelta("m", 0, "!"))})))
    assert out == ["!"]


def test_colors_only_when_asked() -> None:
    assert "\x1b[" not in Renderer(SID).event(wire(ev.StatusChanged(ev.SessionStatus.IDLE)))
    colored = Renderer(SID, color=True).event(wire(ev.StatusChanged(ev.SessionStatus.IDLE)))
    assert colored == "\x1b[2m· status: idle\x1b[0m\n"


# -- the SSE parser and decoding (pure) ---------------------------------------------------------


def test_sse_parser_handles_any_split_and_line_ending() -> None:
    stream = (
        b'retry: 2000\n\n: keep-alive\n\nid: e:1\nevent: text.delta\ndata: {"a":\r\ndata: 1}\r\n'
        b"\r\nid: e:2\rdata: x\r\rdata: no id change\n\n"
    )
    for size in (1, 2, 3, 7, len(stream)):
        parser = SSEParser()
        frames: list[Frame] = []
        for start in range(0, len(stream), size):
            frames += parser.feed(stream[start : start + size])
        assert frames == [
            Frame("e:1", "text.delta", '{"a":\n1}'),
            Frame("e:2", "message", "x"),
            Frame("e:2", "message", "no id change"),
        ], size


def test_decode_skips_what_it_does_not_know() -> None:
    envelope = '{"event": {"type": "session.status", "status": "idle"}}'
    status = decode(Frame("e:1", "session.status", envelope))
    assert status == {"type": "session.status", "status": "idle"}
    assert Renderer(SID).event(status) == "· status: idle\n"
    newer = decode(Frame("e:2", "x.new", '{"event": {"type": "x.new"}}'))
    assert newer is not None and Renderer(SID).event(newer) == ""  # a newer type: nothing
    assert decode(Frame("e:3", "x", "not json")) is None
    assert decode(Frame("e:4", "x", '{"event": [1]}')) is None
    assert decode(Frame("e:5", "snapshot", '{"reason": "new_client"}')) is None


# -- reconnecting: the next request carries the last id seen ------------------------------------


class ScriptedStreams:
    """Each ``events()`` call plays the next script: its chunks, then a dropped connection."""

    def __init__(self, scripts: list[list[bytes]]) -> None:
        self.scripts = scripts
        self.since: list[str | None] = []
        self.chunks: list[bytes] = []

    @asynccontextmanager
    async def events(self, session_id: str, since: str | None) -> AsyncIterator[ScriptedStreams]:
        self.since.append(since)
        self.chunks = self.scripts.pop(0)
        yield self

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        raise SidecodeError("connection reset", code="unreachable")  # what DaemonAPI raises


async def test_follow_resumes_from_the_last_id_after_a_drop(autojump_clock: Any) -> None:
    streams = ScriptedStreams(
        [
            [b"id: ep:1\nevent: a\ndata: 1\n\nid: ep:2\nevent: a\ndata: 2\n\nid: ep:3\nda"],
            [b"id: ep:3\nevent: a\ndata: 3\n\n"],
        ]
    )
    drops: list[str] = []
    seen: list[str | None] = []
    with trio.fail_after(10):
        frames = follow(streams, SID, None, drops.append)
        async for frame in frames:
            seen.append(frame.id)
            if frame.id == "ep:3":
                break
        await frames.aclose()
    assert seen == ["ep:1", "ep:2", "ep:3"]  # the half-received third frame was not applied
    assert streams.since == [None, "ep:2"]
    assert len(drops) == 1 and "connection reset" in drops[0] and "0.5 s" in drops[0]


class MovingDaemon:
    """A daemon that is down until ``daemon.json`` (read by ``relocate``) names its new port."""

    def __init__(self) -> None:
        self.url = "http://127.0.0.1:1"
        self.urls: list[str] = []
        self.stale = True

    @asynccontextmanager
    async def events(self, session_id: str, since: str | None) -> AsyncIterator[MovingDaemon]:
        self.urls.append(self.url)
        if self.url.endswith(":1"):
            raise SidecodeError("connection refused", code="unreachable")
        yield self

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        yield b"id: ep:1\nevent: a\ndata: 1\n\n"

    def relocate(self) -> str | None:  # what Attach._relocate does with daemon.json
        if len(self.urls) < 3:
            return "daemon.json is stale (pid 4242 is dead)"
        self.url = "http://127.0.0.1:2"  # restarted on another port
        return None


async def test_follow_finds_a_daemon_restarted_on_another_port(autojump_clock: Any) -> None:
    daemon, drops = MovingDaemon(), []  # type: tuple[MovingDaemon, list[str]]
    with trio.fail_after(60):
        frames = follow(daemon, SID, None, drops.append, daemon.relocate)
        first = await frames.__anext__()
        await frames.aclose()
    assert first.id == "ep:1"
    assert daemon.urls == ["http://127.0.0.1:1"] * 3 + ["http://127.0.0.1:2"]
    assert "connection refused" in drops[0]
    assert all("daemon.json is stale (pid 4242 is dead)" in drop for drop in drops[1:])


async def test_where_the_daemon_is_is_read_again_and_a_dead_pid_is_named(tmp_path: Path) -> None:
    dead = await trio.run_process(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_stdout=True
    )
    pid = int(dead.stdout)
    (tmp_path / "token").write_text("tok\n")
    (tmp_path / "daemon.json").write_text(f'{{"http": "http://0.0.0.0:7001", "pid": {pid}}}')
    location = locate(tmp_path)
    assert (location.url, location.token, location.pid) == ("http://127.0.0.1:7001", "tok", pid)
    assert why_unreachable(location) == f"daemon.json is stale (pid {pid} is dead)"
    alive = os.getpid()
    (tmp_path / "daemon.json").write_text(f'{{"http": "http://127.0.0.1:7002", "pid": {alive}}}')
    moved = locate(tmp_path)
    assert moved.url == "http://127.0.0.1:7002" and why_unreachable(moved) is None
    (tmp_path / "daemon.json").unlink()
    with pytest.raises(SidecodeError, match=r"daemon\.json is gone"):
        locate(tmp_path)


def test_reconnect_attempts_update_one_status_line() -> None:
    out: list[str] = []
    renderer = Renderer(SID, color=False)
    run = Attach(DaemonAPI("http://127.0.0.1:1", "t"), renderer, out.append, keys=True)
    for delay in ("0.5", "1", "2"):
        run._dropped(f"disconnected (refused); reconnecting in {delay} s")
    assert len(out) == 3 and out[0].count("\n") == 1
    assert all(line.startswith(STATUS_REWRITE) for line in out[1:])  # the same line, rewritten
    run.write("an event\n")
    run._dropped("disconnected (refused); reconnecting in 0.5 s")
    assert not out[-1].startswith(STATUS_REWRITE)  # under the event, a new line
    piped: list[str] = []
    run = Attach(DaemonAPI("http://127.0.0.1:1", "t"), renderer, piped.append, keys=False)
    for why in ("refused", "refused", "stale", "stale"):
        run._dropped(f"disconnected ({why}); reconnecting in 1 s")
    assert len(piped) == 2  # not a terminal: a line only when the reason changes


# -- attach in a pseudo-terminal, send as a script, against a live daemon --------------------


def cli_argv(config: DaemonConfig, *args: str) -> list[str]:
    return [sys.executable, "-m", "sidecode_trio", args[0], "--state-dir", str(config.state_dir)]


class Terminal:
    """The controlling side of a pseudo-terminal: everything the client printed, and keys."""

    def __init__(self, master: int) -> None:
        self.stream = trio.lowlevel.FdStream(master)
        self.text = ""

    async def expect(self, wanted: str, timeout: float = 15.0) -> None:
        with trio.fail_after(timeout):
            while wanted not in self.text:
                try:
                    data = await self.stream.receive_some(65536)
                except OSError:  # EIO: the client exited and closed the terminal
                    data = b""
                if not data:
                    raise AssertionError(f"{wanted!r} never came; got:\n{self.text}")
                self.text += data.decode(errors="replace")

    async def press(self, keys: str) -> None:
        await self.stream.send_all(keys.encode())


async def test_attach_in_a_pty_streams_and_answers_a_permission_with_a_key(
    make_config: Callable[..., DaemonConfig], work_dir: Path
) -> None:
    config = make_config()
    async with running_daemon(config) as client:
        sid = (await client.create(work_dir, title="pty session"))["session"]["id"]
        master, slave = pty.openpty()
        before = termios.tcgetattr(slave)
        argv = [*cli_argv(config, "attach"), sid[:8]]
        env = {**os.environ, "TERM": "dumb"}
        proc = await trio.lowlevel.open_process(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        terminal = Terminal(master)
        try:
            with trio.fail_after(40):
                await terminal.expect("● pty session")  # the snapshot: attached, keys live
                await terminal.expect("keys: a allow")
                await client.send(sid, "[[bash:echo from-the-tool]]")
                await terminal.expect("I will run a command.")  # streamed text
                await terminal.expect("[a] allow")
                await terminal.press("a")
                await terminal.expect("→ allowed by local owner")
                await terminal.expect("✓ Ran")
                await terminal.expect("TOOL RESULT SEEN")
                await terminal.expect("✓ done")
                await terminal.press("q")
                assert await proc.wait() == 0
            after = termios.tcgetattr(slave)
            assert after == before  # echo and line mode are back
            assert after[3] & termios.ECHO and after[3] & termios.ICANON
        finally:
            if proc.returncode is None:
                proc.kill()
                with trio.move_on_after(5):
                    await proc.wait()
            await terminal.stream.aclose()
            os.close(slave)


async def test_send_for_scripts(make_config: Callable[..., DaemonConfig], work_dir: Path) -> None:
    config = make_config(max_body=1024)
    async with running_daemon(config) as client:
        sid = (await client.create(work_dir))["session"]["id"]
        with trio.fail_after(40):
            waited = await trio.run_process(
                [*cli_argv(config, "send"), sid[:6], "hello there", "--wait"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert waited.returncode == 0, waited.stderr
            assert waited.stdout.decode() == "You said: hello there\n"

            queued = await trio.run_process(
                [*cli_argv(config, "send"), sid, "and again"], capture_stdout=True, check=False
            )
            assert queued.returncode == 0
            message_id = queued.stdout.decode().strip()
            snap = await client.snapshot(sid)
            assert message_id in [i.get("message_id") for i in snap["items"]]

            unknown = await trio.run_process(
                [*cli_argv(config, "send"), "ffffffff", "hi"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert unknown.returncode == 2 and unknown.stdout == b""
            assert unknown.stderr.decode() == "sidecode-trio: no session matches 'ffffffff'\n"

            # a refusal shows the daemon's own message (the plain send: no Trio, urllib)
            too_big = await trio.run_process(
                [*cli_argv(config, "send"), sid, "-"],
                stdin=b"x" * 2048,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert too_big.returncode == 2 and too_big.stdout == b""
            error = too_big.stderr.decode()
            assert error.startswith("sidecode-trio: ") and "the daemon said" not in error, error


async def test_send_without_a_daemon(tmp_path: Path) -> None:
    with trio.fail_after(20):
        done = await trio.run_process(
            [sys.executable, "-m", "sidecode_trio", "send", "--state-dir", str(tmp_path), "x", "y"],
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 2 and b"no daemon is running" in done.stderr


# -- the HTTP/1.1 client (h11 on Trio, no httpx) --------------------------------------------------


@pytest.mark.parametrize("https", [False, True])
async def test_the_client_calls_and_streams_over_http_and_https(
    make_config: Callable[..., DaemonConfig], work_dir: Path, https: bool
) -> None:
    """Calls, the daemon's own errors (its code and message), and an event stream read across
    many receives, over plain HTTP and over TLS with the daemon's own certificate."""
    async with running_daemon(make_config(https=https)) as client:
        sid = (await client.create(work_dir))["session"]["id"]
        api = DaemonAPI(client.handle.url, client.handle.token)
        assert api.url.startswith("https://" if https else "http://")
        with trio.fail_after(30):
            assert await api.resolve(sid[:8]) == sid
            with pytest.raises(SidecodeError) as refused:
                await api.call("GET", "/v1/sessions/nope")
            assert refused.value.code == "unknown_session" and "nope" in refused.value.message
            with pytest.raises(SidecodeError) as missing:
                await api.resolve("ffffffff")
            assert missing.value.code == "unknown_session"
            frames = follow(api, sid, None, lambda why: None)
            seen: list[str] = []
            async with aclosing(frames):
                async for frame in frames:
                    item = decode(frame)
                    seen.append(frame.event)
                    if len(seen) == 1:  # the stream is open: now the turn (sent before it, a
                        # turn could end before a TLS handshake on a loaded machine, inside
                        # the opening snapshot, and no turn.completed event would come)
                        path = f"/v1/sessions/{sid}/messages"
                        sent = await api.call("POST", path, {"text": "hi"})
                        assert sent["message_id"]
                    if item is not None and item.get("type") == "turn.completed":
                        break
            assert seen[0] == "snapshot" and "turn.completed" in seen
        await api.aclose()


async def test_the_client_says_when_the_daemon_cannot_be_reached_or_breaks_off() -> None:
    """Nothing listening: ``unreachable``. A server that sends a response head and then drops
    the connection mid-body: ``unreachable`` too (follow() reconnects on it)."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _half_a_reply, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(20):
            with pytest.raises(SidecodeError) as broke:
                await DaemonAPI(f"http://127.0.0.1:{port}", "t").call("GET", "/v1/status")
            assert broke.value.code == "unreachable" and "broke" in broke.value.message
            nursery.cancel_scope.cancel()
    closed = trio.socket.socket()
    await closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # a port nothing listens on
    with trio.fail_after(20), pytest.raises(SidecodeError) as refused:
        await DaemonAPI(f"http://127.0.0.1:{port}", "t").call("GET", "/v1/status")
    assert refused.value.code == "unreachable"
    assert "cannot reach the daemon" in refused.value.message


async def _half_a_reply(stream: trio.SocketStream) -> None:
    await stream.receive_some(65536)
    await stream.send_all(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial":')
    await stream.aclose()


async def test_a_tls_handshake_that_fails_closes_its_connection() -> None:
    """``attach`` re-connects while a daemon restarts: a TLS handshake that fails (the peer
    closed, or the deadline passed) closes the TCP connection under it, rather than leaving one
    socket per attempt to the garbage collector."""
    import gc
    import warnings

    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, hang_up, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            with trio.fail_after(20), pytest.raises(SidecodeError) as refused:
                await DaemonAPI(f"https://127.0.0.1:{port}", "t").call("GET", "/v1/status")
            code = refused.value.code
            del refused  # its traceback holds the frames that held the connection
            gc.collect()
        nursery.cancel_scope.cancel()
    assert code == "unreachable"
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
