"""Frame -> domain event translation, fed with frames recorded from the real CLI.

``tests/data/recorded/<version>/<scenario>.jsonl`` was captured by ``tests/record_frames.py`` from
the real ``claude`` binary talking to ``tests/mock_anthropic.py``; the ``.stdin.jsonl`` beside it is
what the recorder wrote. Replaying them checks the translator against what the CLI really says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecode_trio.claude.translate import Translator, coalesce
from sidecode_trio.wire import events as ev

RECORDED = Path(__file__).parent / "data" / "recorded"
VERSIONS = sorted(p.name for p in RECORDED.iterdir() if p.is_dir())


def _load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def replay(version: str, scenario: str) -> tuple[list[ev.Event], list[str]]:
    """Feed a recording like the daemon would: one message delivered at a time."""
    frames = _load(RECORDED / version / f"{scenario}.jsonl")
    stdin = _load(RECORDED / version / f"{scenario}.stdin.jsonl")
    messages = [m["uuid"] for m in stdin if m.get("type") == "user"]
    translator = Translator()
    waiting = list(messages)
    translator.delivered = waiting.pop(0) if waiting else None
    out: list[ev.Event] = []
    for frame in frames:
        out.extend(translator.feed(frame))
        if frame.get("type") == "result" and waiting:
            translator.delivered = waiting.pop(0)
    return out, messages


def types(events: list[ev.Event]) -> list[str]:
    return [e.TYPE for e in events]


def squash(names: list[str]) -> list[str]:
    """Collapse runs of the same type: ``a a a b`` -> ``a b``."""
    return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]


@pytest.mark.parametrize("version", VERSIONS)
def test_text_turn(version: str) -> None:
    events, (message,) = replay(version, "text")
    assert squash(types(events)) == [
        "turn.started",
        "text.delta",
        "assistant.text",
        "turn.completed",
    ]
    started, *_, done = events
    assert isinstance(started, ev.TurnStarted) and started.turn_id == message
    assert isinstance(done, ev.TurnCompleted) and done.turn_id == message
    deltas = "".join(e.text for e in events if isinstance(e, ev.TextDelta))
    block = next(e for e in events if isinstance(e, ev.AssistantText))
    assert deltas == block.text and block.text.startswith("You said:")
    assert done.result == block.text
    assert done.cost_usd > 0 and done.total_cost_usd == done.cost_usd
    assert done.usage.output_tokens > 0


@pytest.mark.parametrize("version", VERSIONS)
def test_bash_tool_allowed(version: str) -> None:
    events, _ = replay(version, "bash_allow")
    request = next(e for e in events if isinstance(e, ev.PermissionRequested))
    assert request.tool_name == "Bash"
    assert request.input["command"] == "echo hi > hi.txt"
    assert request.suggestions, "the CLI offers rules to apply"
    started = next(e for e in events if isinstance(e, ev.ToolStarted))
    finished = next(e for e in events if isinstance(e, ev.ToolFinished))
    assert started.tool_use_id == finished.tool_use_id == request.tool_use_id
    assert not finished.is_error
    assert isinstance(events[-1], ev.TurnCompleted)
    assert events[-1].num_turns == 2


@pytest.mark.parametrize("version", VERSIONS)
def test_bash_tool_denied_turn_goes_on(version: str) -> None:
    events, _ = replay(version, "bash_deny")
    finished = next(e for e in events if isinstance(e, ev.ToolFinished))
    assert finished.is_error and "user said no" in finished.output
    assert isinstance(events[-1], ev.TurnCompleted)


@pytest.mark.parametrize("version", VERSIONS)
def test_interrupt_mid_stream(version: str) -> None:
    events, (message,) = replay(version, "interrupt_stream")
    assert isinstance(events[-1], ev.TurnInterrupted) and events[-1].turn_id == message
    assert "turn.completed" not in types(events)


@pytest.mark.parametrize("version", VERSIONS)
def test_interrupt_while_permission_pending(version: str) -> None:
    events, _ = replay(version, "interrupt_permission")
    request = next(e for e in events if isinstance(e, ev.PermissionRequested))
    withdrawn = next(e for e in events if isinstance(e, ev.PermissionResolved))
    assert withdrawn.request_id == request.request_id
    assert withdrawn.outcome is ev.PermissionOutcome.WITHDRAWN
    assert isinstance(events[-1], ev.TurnInterrupted)


@pytest.mark.parametrize("version", VERSIONS)
def test_two_queued_messages_each_get_their_turn(version: str) -> None:
    events, messages = replay(version, "queued")
    starts = [e.turn_id for e in events if isinstance(e, ev.TurnStarted)]
    ends = [e.turn_id for e in events if isinstance(e, ev.TurnCompleted)]
    assert starts == ends == messages


@pytest.mark.parametrize("version", VERSIONS)
def test_api_error_is_a_failed_turn(version: str) -> None:
    events, (message,) = replay(version, "api_error")
    failed = events[-1]
    assert isinstance(failed, ev.TurnFailed) and failed.turn_id == message
    assert failed.reason == "api_error"
    assert "400" in failed.message


@pytest.mark.parametrize("version", VERSIONS)
def test_mode_change_is_reported(version: str) -> None:
    events, _ = replay(version, "set_mode_model")
    modes = [e.permission_mode for e in events if isinstance(e, ev.SessionUpdated)]
    assert "acceptEdits" in modes


@pytest.mark.parametrize("version", VERSIONS)
def test_write_and_edit_results_carry_structured_patches(version: str) -> None:
    events, _ = replay(version, "write_edit")
    tools = {e.tool_use_id: e.name for e in events if isinstance(e, ev.ToolStarted)}
    assert sorted(tools.values()) == ["Edit", "Write"]
    results = [e for e in events if isinstance(e, ev.ToolFinished)]
    assert len(results) == 2 and all(not r.is_error for r in results)
    edit = next(r for r in results if tools[r.tool_use_id] == "Edit")
    assert isinstance(edit.result, dict) and "structuredPatch" in edit.result


@pytest.mark.parametrize("version", VERSIONS)
def test_ask_user_question_is_a_permission_request(version: str) -> None:
    events, _ = replay(version, "ask")
    request = next(e for e in events if isinstance(e, ev.PermissionRequested))
    assert request.tool_name == "AskUserQuestion"
    assert request.input["questions"][0]["question"] == "Which color?"


def test_lenient_parsing_skips_unknown_and_tolerates_missing_fields() -> None:
    translator = Translator()
    translator.delivered = "m1"
    frames: list[dict[str, Any]] = [
        {"type": "brand_new_frame", "x": 1},
        {"type": "system", "subtype": "future_subtype"},
        {"type": "system", "subtype": "init"},
        {"type": "stream_event"},
        {"type": "stream_event", "event": {"type": "content_block_delta", "delta": "bad"}},
        {"type": "assistant", "message": {"content": "not a list"}},
        {"type": "assistant", "message": {"id": "msg", "content": [{"type": "tool_use"}]}},
        {"type": "user", "message": {"content": [{"type": "tool_result"}]}},
        {"type": "control_request", "request": {"subtype": "can_use_tool"}},
        {"type": "result", "total_cost_usd": "free", "usage": None},
    ]
    events = [e for f in frames for e in translator.feed(f)]
    assert types(events) == ["turn.started", "turn.completed"]
    assert isinstance(events[1], ev.TurnCompleted) and events[1].turn_id == "m1"


def test_cost_is_a_delta_of_the_cumulative_total() -> None:
    translator = Translator(total_cost_usd=1.0)  # resumed session: the CLI restores its total
    translator.delivered = "m"
    (done,) = translator.feed({"type": "result", "subtype": "success", "total_cost_usd": 1.25})
    assert isinstance(done, ev.TurnCompleted)
    assert done.cost_usd == pytest.approx(0.25) and done.total_cost_usd == 1.25


def test_coalesce_merges_runs_of_the_same_block_only() -> None:
    a1, a2 = ev.TextDelta("m", 0, "Hel"), ev.TextDelta("m", 0, "lo")
    b = ev.TextDelta("m", 1, "!")
    other = ev.ToolStarted("t", "Bash", {})
    merged = coalesce([a1, a2, b, other, ev.TextDelta("m", 1, "?"), ev.TextDelta("m", 1, "?")])
    assert merged == [ev.TextDelta("m", 0, "Hello"), b, other, ev.TextDelta("m", 1, "??")]


def test_coalesce_respects_the_size_cap() -> None:
    chunks = [ev.TextDelta("m", 0, "x" * 100) for _ in range(25)]
    merged = coalesce(list(chunks), max_chars=1000)
    assert [len(e.text) for e in merged if isinstance(e, ev.TextDelta)] == [1000, 1000, 500]
