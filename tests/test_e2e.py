"""End to end with the real Claude Code CLI against a mock Messages API on 127.0.0.1.

Run by ``nox -s e2e``, which installs pinned CLI versions and sets ``CLAUDE_BIN``; skipped
otherwise. The scenario is the one a phone drives: create a session, watch it stream, approve a
tool, interrupt, and resume (after the idle stop and after the CLI is killed).
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from sidecode_trio.config import DaemonConfig

from faultkit import kill_leftovers
from helpers import Client, running_daemon
from mock_anthropic import MockAnthropic
from record_frames import offline_env

CLAUDE_BIN = os.environ.get("CLAUDE_BIN")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not CLAUDE_BIN, reason="set CLAUDE_BIN (nox -s e2e installs the CLI)"),
]


@pytest.fixture
def mock_api() -> Iterator[MockAnthropic]:
    with MockAnthropic() as mock:
        yield mock


def real_config(tmp_path: Path, work_dir: Path, mock: MockAnthropic, idle: float) -> DaemonConfig:
    """A daemon running the real CLI offline (``reference/claude-code-cli.md`` §2)."""
    assert CLAUDE_BIN
    cli_root = tmp_path / "cli"
    for folder in ("home", "tmp"):
        (cli_root / folder).mkdir(parents=True, exist_ok=True)
    return DaemonConfig(
        state_dir=tmp_path / "state",
        port=0,
        claude=CLAUDE_BIN,
        allowed_roots=(work_dir,),
        claude_env=offline_env(cli_root, mock.base_url),
        idle_timeout=idle,
    )


@pytest.fixture
async def real(tmp_path: Path, work_dir: Path, mock_api: MockAnthropic) -> AsyncIterator[Client]:
    async with running_daemon(real_config(tmp_path, work_dir, mock_api, 60.0)) as client:
        yield client


def _history_lengths(mock: MockAnthropic) -> list[int]:
    return [
        len(r["body"]["messages"])
        for r in mock.requests
        if r["path"].startswith("/v1/messages")
        and "count_tokens" not in r["path"]
        and isinstance(r.get("body"), dict)
        and r["body"].get("stream")
    ]


async def test_create_stream_approve_interrupt_resume(
    real: Client, work_dir: Path, mock_api: MockAnthropic
) -> None:
    with trio.fail_after(90):
        session = (await real.create(work_dir, "[[bash:echo hi > hi.txt]]"))["session"]
        async with real.events(session["id"]) as stream:
            request = await stream.until_type("permission.requested", timeout=30)
            assert request.body["tool_name"] == "Bash"
            reply = await real.answer(session["id"], request.body["request_id"], behavior="allow")
            assert reply.status_code == 200
            done = await stream.until_type("turn.completed", "turn.failed", timeout=30)
            assert done.type == "turn.completed", done.body
            assert "TOOL RESULT SEEN" in done.body["result"]
            assert [e for e in stream.seen if e.type == "text.delta"], "tokens were streamed"
            assert (work_dir / "hi.txt").read_text() == "hi\n"

            await real.send(session["id"], "[[slow:400]]")
            await stream.until_type("text.delta", timeout=30)
            interrupted = await real.http.post(f"/v1/sessions/{session['id']}/interrupt")
            assert interrupted.json() == {"interrupted": True}
            ended = await stream.until_type("turn.interrupted", "turn.completed", "turn.failed")
            assert ended.type == "turn.interrupted", ended.body

            await real.send(session["id"], "after the interrupt")
            done = await stream.until_type("turn.completed", "turn.failed", timeout=30)
            assert done.body["result"] == "You said: after the interrupt"
        snap = await real.snapshot(session["id"])
        assert snap["session"]["cost_usd"] > 0 and snap["session"]["status"] == "idle"


async def test_denied_tool_and_mode_switch(real: Client, work_dir: Path) -> None:
    target = work_dir / "note.txt"
    with trio.fail_after(90):
        session = (await real.create(work_dir, f"[[write:{target}|nope]]"))["session"]
        async with real.events(session["id"]) as stream:
            request = await stream.until_type("permission.requested", timeout=30)
            assert request.body["summary"] == "Write note.txt (1 line)"
            assert request.body["diff"]["created"] and request.body["diff"]["added"] == 1
            await real.answer(
                session["id"], request.body["request_id"], behavior="deny", message="no"
            )
            finished = await stream.until_type("tool.finished", timeout=30)
            assert finished.body["is_error"]
            await stream.until_type("turn.completed", timeout=30)
            assert not target.exists()

            patched = await real.http.patch(
                f"/v1/sessions/{session['id']}", json={"permission_mode": "acceptEdits"}
            )
            assert patched.status_code == 200 and patched.json()["permission_mode"] == "acceptEdits"
            await real.send(session["id"], f"[[write:{target}|yes]]")
            done = await stream.until_type("turn.completed", "turn.failed", timeout=30)
            assert done.type == "turn.completed"
            asked = [e for e in stream.seen if e.type == "permission.requested"]
            assert asked == [request], "acceptEdits lets the second Write through unasked"
        assert target.read_text() == "yes"


async def test_resume_after_idle_stop_and_after_a_crash(
    tmp_path: Path, work_dir: Path, mock_api: MockAnthropic
) -> None:
    with trio.fail_after(120):
        async with running_daemon(real_config(tmp_path, work_dir, mock_api, 0.5)) as real:
            session = (await real.create(work_dir, "remember me"))["session"]
            async with real.events(session["id"]) as stream:
                await stream.until_type("turn.completed", timeout=30)
                await stream.until(lambda e: e.type == "cli.state" and e.body["state"] == "stopped")
                before = _history_lengths(mock_api)[-1]
                await real.send(session["id"], "are you there?")
                done = await stream.until_type("turn.completed", "turn.failed", timeout=30)
                assert done.body["result"] == "You said: are you there?"
                # the resumed CLI sent the earlier conversation to the API again
                assert _history_lengths(mock_api)[-1] > before

                await real.send(session["id"], "[[slow:400]]")
                running = [
                    e for e in stream.seen if e.type == "cli.state" and e.body["state"] == "running"
                ]
                await stream.until_type("text.delta", timeout=30)
                os.kill(running[-1].body["pid"], signal.SIGKILL)
                failed = await stream.until_type("turn.failed", timeout=30)
                assert failed.body["reason"] == "cli_exited"
                await real.send(session["id"], "back again")
                done = await stream.until_type("turn.completed", "turn.failed", timeout=30)
                assert done.body["result"] == "You said: back again"
        starts = [e for e in stream.seen if e.type == "cli.state" and e.body["state"] == "running"]
        assert len(starts) == 3  # first run, resumed after the idle stop, resumed after the kill


async def test_ask_user_question_and_an_allow_rule(real: Client, work_dir: Path) -> None:
    with trio.fail_after(90):
        session = (await real.create(work_dir, "[[ask:Which color?|Red,Blue]]"))["session"]
        async with real.events(session["id"]) as stream:
            request = await stream.until_type("permission.requested", timeout=30)
            assert request.body["tool_name"] == "AskUserQuestion"
            reply = await real.answer(
                session["id"],
                request.body["request_id"],
                behavior="allow",
                answers={"Which color?": "Blue"},
            )
            assert reply.status_code == 200, reply.text
            finished = await stream.until_type("tool.finished", timeout=30)
            assert "Blue" in finished.body["output"], finished.body
            await stream.until_type("turn.completed", timeout=30)

            await real.send(session["id"], "[[bash:touch one.txt]]")
            request = await stream.until_type("permission.requested", timeout=30)
            labels = request.body["suggestion_labels"]
            rule = next(i for i, label in enumerate(labels) if label.startswith("Always allow"))
            reply = await real.answer(
                session["id"], request.body["request_id"], behavior="allow", suggestions=[rule]
            )
            assert reply.status_code == 200, reply.text
            await stream.until_type("turn.completed", timeout=30)
            asked = len([e for e in stream.seen if e.type == "permission.requested"])
            (work_dir / "one.txt").unlink()
            await real.send(session["id"], "[[bash:touch one.txt]]")
            done = await stream.until_type(
                "turn.completed", "turn.failed", "permission.requested", timeout=30
            )
            if done.type == "permission.requested":
                # Observed: 2.1.197 suggests the rule `touch one.txt *` but does not apply it
                # to the bare command again; 2.1.329 does. The daemon sent the same answer.
                assert "2.1.197" in os.environ["CLAUDE_BIN"], done.body
                rid = done.body["request_id"]
                await real.answer(session["id"], rid, behavior="allow")
                done = await stream.until_type("turn.completed", "turn.failed", timeout=30)
            else:
                now = len([e for e in stream.seen if e.type == "permission.requested"])
                assert now == asked, "the rule applied from the phone let the command through"
            assert done.type == "turn.completed", done.body
        assert (work_dir / "one.txt").exists()


def _assistant_texts(body: dict[str, object]) -> list[str]:
    texts = []
    for message in body["messages"]:  # type: ignore[attr-defined]
        content = message.get("content")
        if message.get("role") == "assistant" and isinstance(content, list):
            texts += [b["text"] for b in content if b.get("type") == "text"]
    return texts


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists processes through /proc")
async def test_kill_9_of_the_daemon_mid_turn_leaves_no_claude_running(
    tmp_path: Path, work_dir: Path, mock_api: MockAnthropic
) -> None:
    """Issue 13, item 1, with the real CLI: a daemon killed with SIGKILL mid-turn takes its
    claude with it, and the next turn's request holds no text the log does not have."""
    from test_restart import daemon_process, session_clis  # a daemon as a real process

    assert CLAUDE_BIN
    cli_root = tmp_path / "cli"
    for folder in ("home", "tmp"):
        (cli_root / folder).mkdir(parents=True, exist_ok=True)
    env = offline_env(cli_root, mock_api.base_url)
    start = partial(daemon_process, tmp_path, Path(CLAUDE_BIN), work_dir, env)
    pids: list[int] = []
    try:
        with trio.fail_after(120):
            async with start() as (proc, client):
                session = (await client.create(work_dir, "[[slow:400]]"))["session"]
                async with client.events(session["id"]) as stream:
                    running = await stream.until(
                        lambda e: e.type == "cli.state" and e.body["state"] == "running",
                        timeout=30,
                    )
                    pids.append(running.body["pid"])
                    for _ in range(6):
                        await stream.until_type("text.delta", timeout=30)
                proc.kill()
                await proc.wait()
            async with start() as (proc, client):
                assert session_clis(session["id"]) == [], "a claude outlived its daemon"
                await client.send(session["id"], "what did you say?")
                async with client.events(session["id"]) as stream:
                    done = await stream.until(
                        lambda e: (
                            e.type in ("turn.completed", "turn.failed")
                            and e.body.get("result") == "You said: what did you say?"
                        ),
                        timeout=60,
                    )
                    assert done.type == "turn.completed", done.body
                snap = await client.snapshot(session["id"])
                logged = [i["text"] for i in snap["items"] if i["type"] == "assistant"]
                streamed = [
                    r["body"]
                    for r in mock_api.requests
                    if r["path"].startswith("/v1/messages")
                    and "count_tokens" not in r["path"]
                    and isinstance(r.get("body"), dict)
                    and r["body"].get("stream")
                ]
                context = _assistant_texts(streamed[-1])
                # the CLI's own filler for a turn that has no answer in its transcript
                context = [t for t in context if t != "No response requested."]
                unseen = [t for t in context if not any(text.startswith(t) for text in logged)]
                assert unseen == [], f"the model was sent text no client saw: {unseen}"
    finally:
        kill_leftovers(pids)
