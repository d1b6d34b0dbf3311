"""The CLI contract's normalizer and differ (tests/contract.py), on the recorded frames."""

from __future__ import annotations

import copy
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from contract import RECORDED, diff_dirs, diff_recordings, kind, load, normalize, scenarios
from record_frames import SCENARIOS, main

KIND_KEYS = frozenset({"type", "subtype", "state"})  # what names a frame's kind, not data
VERSIONS = sorted(p.name for p in RECORDED.iterdir() if p.is_dir())


def _rewrite_values(value: Any) -> Any:
    """Every id, time, text and number replaced by another of the same JSON type."""
    if isinstance(value, dict):
        return {k: v if k in KIND_KEYS else _rewrite_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite_values(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return value + 7
    return str(uuid.uuid4()) if isinstance(value, str) else value


@pytest.mark.parametrize("version", VERSIONS)
def test_every_scenario_is_recorded_for_every_pinned_version(version: str) -> None:
    assert set(scenarios(RECORDED / version)) == set(SCENARIOS)


@pytest.mark.parametrize("version", VERSIONS)
def test_ids_times_and_text_are_not_differences(version: str) -> None:
    for name, path in scenarios(RECORDED / version).items():
        frames = load(path)
        assert diff_recordings(frames, [_rewrite_values(f) for f in frames], name) == []
    assert diff_dirs(RECORDED / version, RECORDED / version) == []


def test_delta_chunking_and_control_timing_are_not_differences() -> None:
    frames = load(RECORDED / "2.1.329" / "bash_allow.jsonl")
    deltas = [i for i, f in enumerate(frames) if kind(f).endswith("text_delta")]
    more_deltas = frames[: deltas[0]] + [frames[deltas[0]]] * 5 + frames[deltas[0] :]
    assert diff_recordings(frames, more_deltas) == []
    request = next(i for i, f in enumerate(frames) if f["type"] == "control_request")
    moved = frames[:request] + frames[request + 1 :]
    moved.insert(request + 1, frames[request])
    assert normalize(moved).controls == normalize(frames).controls
    assert diff_recordings(frames, moved) == []


def test_a_renamed_key_a_new_type_and_a_new_frame_kind_are_reported() -> None:
    frames = load(RECORDED / "2.1.329" / "bash_allow.jsonl")
    changed = copy.deepcopy(frames)
    init = next(f for f in changed if kind(f) == "system/init")
    init["working_dir"] = init.pop("cwd")
    result = next(f for f in changed if f["type"] == "result")
    result["num_turns"] = str(result["num_turns"])
    changed.insert(3, {"type": "system", "subtype": "hook_started", "hook": "x"})
    report = "\n".join(diff_recordings(frames, changed, "bash_allow"))
    assert "+system/hook_started" in report
    assert "system/init:\n  - .cwd: str\n  + .working_dir: str" in report
    assert "  - .num_turns: number\n  + .num_turns: str" in report


def test_the_two_pinned_versions_differ_as_recorded() -> None:
    """2.1.329 added command_lifecycle frames and user_message_uuid stamps over 2.1.197: the
    report names them, and nothing about ids."""
    report = "\n".join(diff_dirs(RECORDED / "2.1.197", RECORDED / "2.1.329"))
    assert "+command_lifecycle/queued" in report
    assert "+ .user_message_uuid: str" in report
    assert "session_id: str" not in report  # present in both: not a difference
    assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-", report), "an id leaked into the report"


def test_the_recorder_prints_the_diff_of_two_recorded_versions(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["--diff-only", "2.1.329", "2.1.329", "--fail-on-diff"]) == 0
    assert "no structural difference" in capsys.readouterr().out
    assert main(["--diff-only", "2.1.197", "2.1.329", "--fail-on-diff"]) == 2
    assert "command_lifecycle" in capsys.readouterr().out
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    for path in (RECORDED / "2.1.329").iterdir():
        (copy_dir / path.name).write_text(path.read_text())
    text = load(copy_dir / "text.jsonl")
    text[-1]["new_key"] = 1
    (copy_dir / "text.jsonl").write_text("\n".join(json.dumps(f) for f in text) + "\n")
    assert main(["--diff-only", "2.1.329", str(copy_dir), "--fail-on-diff"]) == 2
    assert "+ .new_key: number" in capsys.readouterr().out
