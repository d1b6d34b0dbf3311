"""The CLI contract: recordings of the CLI's frames, normalized to structure and compared (pure).

A new Claude Code release changes frames in ways that matter to the daemon: a frame type that
appears or disappears, frames in another order, a key renamed, a value of another JSON type. It
also changes things that do not matter: ids, timestamps, costs, text and how the text is cut into
deltas. :func:`normalize` keeps the first kind and drops the second:

* a frame's **kind** is its ``type`` refined by what tells frames of that type apart
  (``system/init``, ``stream_event/content_block_delta/text_delta``, ``assistant[tool_use]``,
  ``control_request/can_use_tool``); consecutive frames of one kind collapse into ``kind +``
  (delta chunking differs from run to run and release to release);
* its **shape** is the set of its key paths with JSON types (``.message.usage.input_tokens:
  int``), list items merged under ``[]``; values are dropped, so ids and times never show.

:func:`diff_recordings` compares two recordings of one scenario and :func:`diff_dirs` every
scenario two directories share (``tests/data/recorded/<version>/``), giving a readable report:
the kind sequences as a unified diff, then per kind the key paths that appeared or went away.
``python tests/record_frames.py --diff-only OLD NEW`` prints it; ``--diff-against`` after a
recording.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

Frame = dict[str, Any]
RECORDED = Path(__file__).parent / "data" / "recorded"
# Keys whose names are data, not schema: their children are summarised as one ``{*}`` entry.
DATA_KEYED = frozenset(
    {"input", "updatedInput", "answers", "modelUsage", "model_usage_since_last_result", "by_type"}
)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"  # JSON has one number type: 0 and 0.5 are not a change of type
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "list"
    return "object"


def shape(value: Any, path: str = "") -> set[str]:
    """Key paths with JSON types: ``{".a.b: int", ".c[]: str", ...}`` (no values)."""
    paths = {f"{path or '.'}: {_json_type(value)}"} if path else set()
    if isinstance(value, dict):
        if path.rsplit(".", 1)[-1] in DATA_KEYED:
            return paths | {f"{path}.{{*}}: {_json_type(v)}" for v in value.values()}
        for key, inner in value.items():
            paths |= shape(inner, f"{path}.{key}")
    elif isinstance(value, list):
        for inner in value:
            paths |= shape(inner, f"{path}[]")
    return paths


def _blocks(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return ""
    kinds = [str(b.get("type")) for b in content if isinstance(b, dict)]
    return "[" + ",".join(kinds) + "]"


def kind(frame: Mapping[str, Any]) -> str:
    """What kind of frame this is, beyond its ``type``."""
    base = str(frame.get("type"))
    if base in ("assistant", "user"):
        return base + _blocks(frame.get("message"))
    if base == "stream_event":
        found = frame.get("event")
        event: Mapping[str, Any] = found if isinstance(found, dict) else {}
        name = f"{base}/{event.get('type')}"
        for inner in ("delta", "content_block"):
            part = event.get(inner)
            if isinstance(part, dict) and "type" in part:
                name += f"/{part['type']}"
        return name
    for inner in ("request", "response"):  # control_request / control_response
        part = frame.get(inner)
        if isinstance(part, dict) and "subtype" in part:
            return f"{base}/{part['subtype']}"
    for field in ("subtype", "state"):
        if isinstance(frame.get(field), str):
            return f"{base}/{frame[field]}"
    return base


@attrs.frozen
class Normalized:
    kinds: tuple[str, ...]  #: the message stream's frame kinds in order, runs as "kind +"
    controls: tuple[str, ...]  #: the control protocol's frame kinds in order
    shapes: Mapping[str, frozenset[str]]  #: kind -> union of its frames' key paths


def _append(kinds: list[str], name: str) -> None:
    if kinds and kinds[-1].removesuffix(" +") == name:
        kinds[-1] = f"{name} +"
    else:
        kinds.append(name)


def normalize(frames: Iterable[Mapping[str, Any]]) -> Normalized:
    """Control frames are a sequence of their own: the CLI interleaves them with the message
    stream as timing has it (a ``can_use_tool`` lands before or after ``message_delta`` from one
    run of one release to the next)."""
    kinds: list[str] = []
    controls: list[str] = []
    shapes: dict[str, set[str]] = {}
    for frame in frames:
        name = kind(frame)
        shapes.setdefault(name, set()).update(shape(dict(frame)))
        _append(controls if name.startswith("control_") else kinds, name)
    return Normalized(
        tuple(kinds), tuple(controls), {k: frozenset(v) for k, v in sorted(shapes.items())}
    )


def _outermost(paths: set[str]) -> list[str]:
    """The paths whose parent is not in the set too (a new object's keys are not news)."""
    names = {p.rsplit(": ", 1)[0] for p in paths}

    def parent_listed(path: str) -> bool:
        name = path.rsplit(": ", 1)[0]
        cut = max(name.rfind("."), name.rfind("[]"))
        while cut > 0:
            name = name[:cut]
            if name in names:
                return True
            cut = max(name.rfind("."), name.rfind("[]"))
        return False

    return sorted(p for p in paths if not parent_listed(p))


def _sequence_diff(before: Normalized, after: Normalized, label: str) -> list[str]:
    lines: list[str] = []
    for what, old, new in (
        ("frame kinds", before.kinds, after.kinds),
        ("control frames", before.controls, after.controls),
    ):
        lines += difflib.unified_diff(
            list(old), list(new), f"{label} (old) {what}", f"{label} (new) {what}", lineterm="", n=2
        )
    return lines


def _shape_diff(
    before: Mapping[str, frozenset[str]], after: Mapping[str, frozenset[str]]
) -> list[str]:
    lines: list[str] = []
    for name in sorted(set(before) & set(after)):  # kinds that came or went: sequence diffs
        gone, came = (
            _outermost(set(before[name] - after[name])),
            _outermost(set(after[name] - before[name])),
        )
        if gone or came:
            lines.append(f"{name}:")
            lines += [f"  - {path}" for path in gone]
            lines += [f"  + {path}" for path in came]
    return lines


def diff_recordings(old: Iterable[Frame], new: Iterable[Frame], label: str = "") -> list[str]:
    """Lines describing how ``new`` differs in structure from ``old``; empty when it does not."""
    before, after = normalize(old), normalize(new)
    return _sequence_diff(before, after, label) + _shape_diff(before.shapes, after.shapes)


def load(path: Path) -> list[Frame]:
    """A recording's frames, without the recorder's own exit marker."""
    frames = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    return [f for f in frames if f.get("type") != "_recorder_exit"]


def scenarios(directory: Path) -> dict[str, Path]:
    return {
        p.name.removesuffix(".jsonl"): p
        for p in sorted(directory.glob("*.jsonl"))
        if not p.name.endswith(".stdin.jsonl")
    }


def diff_dirs(old: Path, new: Path, only: Iterable[str] | None = None) -> list[str]:
    """The structural differences of every scenario recorded in both directories (and which
    scenarios only one of them has); ``only`` restricts it to those scenarios."""
    before, after = scenarios(old), scenarios(new)
    if only is not None:
        keep = set(only)
        before = {k: v for k, v in before.items() if k in keep}
        after = {k: v for k, v in after.items() if k in keep}
    lines = [f"only in {old}: {name}" for name in sorted(set(before) - set(after))]
    lines += [f"only in {new}: {name}" for name in sorted(set(after) - set(before))]
    shapes_before: dict[str, frozenset[str]] = {}
    shapes_after: dict[str, frozenset[str]] = {}
    for name in sorted(set(before) & set(after)):
        was, now = normalize(load(before[name])), normalize(load(after[name]))
        lines += _sequence_diff(was, now, name)
        for union, shapes in ((shapes_before, was.shapes), (shapes_after, now.shapes)):
            for kind_name, paths in shapes.items():
                union[kind_name] = union.get(kind_name, frozenset()) | paths
    shape_lines = _shape_diff(shapes_before, shapes_after)
    if shape_lines:
        lines += ["", "key paths that changed, per frame kind (all scenarios):", *shape_lines]
    return lines
