"""The pure views: diffs checked against real files and ``patch``, tool titles and details, and the
WatchCode-compatible watch feed.

Diffs are checked three ways: against the file an edit really leaves on disk, against a hunk list
built from ``difflib`` the way the CLI's jsdiff writes ``structuredPatch``, and by applying the
unified text with ``patch -p1`` (skipped where ``patch`` is not installed).
"""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecode_trio.views import diff as diffs
from sidecode_trio.views import tools, watch
from sidecode_trio.views.diff import (
    Diff,
    apply_edit,
    from_result,
    from_structured_patch,
    from_texts,
    proposed,
)
from sidecode_trio.views.tools import (
    describe,
    finished_title,
    permission_summary,
    started_title,
    suggestion_label,
)
from sidecode_trio.views.watch import WatchEvent, WatchProjection
from sidecode_trio.wire import events as ev
from sidecode_trio.wire import snapshot as snap
from sidecode_trio.wire import tools as wt
from sidecode_trio.wire.converter import structure, unstructure

MINUS = "\N{MINUS SIGN}"
T0 = 1_700_000_000.0
T0_ISO = "2023-11-14T22:13:20.000Z"

# -- helpers -------------------------------------------------------------------------------------


def read_exact(path: Path) -> str:
    """The file's text with its line endings as they are (read_text would turn CRLF into LF)."""
    return path.read_bytes().decode()


def write_exact(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())


def keepends(text: str) -> list[str]:
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def structured(old: str, new: str) -> list[dict[str, Any]]:
    """``difflib``'s hunks as jsdiff's ``structuredPatch`` holds them: lines without newlines, a
    "\\ No newline" line after a last line without one, and an empty range's start one higher
    than the unified header writes it."""
    hunks: list[dict[str, Any]] = []
    for line in difflib.unified_diff(keepends(old), keepends(new), n=3):
        if line.startswith(("---", "+++")):
            continue
        match = _HEADER.match(line)
        if match:
            old_start, old_lines, new_start, new_lines = (
                int(group) if group is not None else 1 for group in match.groups()
            )
            hunks.append(
                {
                    "oldStart": old_start + (old_lines == 0),
                    "oldLines": old_lines,
                    "newStart": new_start + (new_lines == 0),
                    "newLines": new_lines,
                    "lines": [],
                }
            )
            continue
        hunks[-1]["lines"].append(line.removesuffix("\n"))
        if not line.endswith("\n"):
            hunks[-1]["lines"].append("\\ No newline at end of file")
    return hunks


def patch_applies(tmp_path: Path, relative: str, old: str | None, new: str) -> None:
    """Apply ``from_texts`` output with ``patch -p1`` and check the file it leaves."""
    if shutil.which("patch") is None:
        pytest.skip("`patch` is not installed; the other assertions of this test passed")
    root = tmp_path / "tree"
    root.mkdir()
    target = root / relative
    if old is not None:
        write_exact(target, old)
    unified = from_texts(relative, old, new).unified
    done = subprocess.run(
        ["patch", "-p1", "--batch", "--silent", "-d", str(root)],
        input=unified.encode(),
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert read_exact(target) == new


# -- diffs against real files --------------------------------------------------------------------

APP = "import os\n\n\ndef main():\n    print('hello')\n    return 0\n\n\nmain()\n"


def test_proposed_edit_equals_the_edit_made_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "app.py"
    write_exact(path, APP)
    edit = {"file_path": str(path), "old_string": "print('hello')", "new_string": "print('bye')"}

    before = proposed("Edit", edit, read_exact(path))
    write_exact(path, read_exact(path).replace(edit["old_string"], edit["new_string"], 1))
    after = from_texts(str(path), APP, read_exact(path))

    assert before == after
    assert before is not None
    assert (before.added, before.removed, before.created, before.truncated) == (1, 1, False, False)
    name = str(path).lstrip("/")
    assert before.unified == (
        f"--- a/{name}\n+++ b/{name}\n@@ -2,7 +2,7 @@\n \n \n def main():\n"
        "-    print('hello')\n+    print('bye')\n     return 0\n \n \n"
    )


def test_proposed_write_of_an_existing_file_equals_the_file_written(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    write_exact(path, "one\ntwo\nthree\n")
    write = {"file_path": str(path), "content": "one\n2\nthree\nfour\n"}
    before = proposed("Write", write, read_exact(path))
    old = read_exact(path)
    write_exact(path, write["content"])
    assert before == from_texts(str(path), old, read_exact(path))
    assert before is not None and (before.added, before.removed) == (2, 1)


CASES = {
    "middle": (APP, APP.replace("return 0", "return 1")),
    "two hunks": (
        "".join(f"line {i}\n" for i in range(40)),
        "".join(f"line {i}\n" if i not in (3, 30) else f"LINE {i}\n" for i in range(40)),
    ),
    "old lacks final newline": ("a\nb\nc", "a\nb\nc\nd\n"),
    "new lacks final newline": ("a\nb\nc\n", "a\nB\nc"),
    "neither has one": ("a\nb", "a\nc"),
    "crlf": ("a\r\nb\r\nc\r\n", "a\r\nB\r\nc\r\nd\r\n"),
    "from empty": ("", "x\ny\n"),
    "prepend": ("b\nc\nd\ne\nf\n", "a\nb\nc\nd\ne\nf\n"),
}


@pytest.mark.parametrize(("old", "new"), CASES.values(), ids=CASES.keys())
def test_unified_text_is_what_difflib_says_and_applies_with_patch(
    tmp_path: Path, old: str, new: str
) -> None:
    made = from_texts("pkg/app.py", old, new)
    # The same hunks as difflib, counts always written, and the no-newline marker added.
    expected = []
    for line in difflib.unified_diff(keepends(old), keepends(new), "a/pkg/app.py", "b/pkg/app.py"):
        if _HEADER.match(line):
            a, b, c, d = _HEADER.match(line).groups()  # type: ignore[union-attr]
            line = f"@@ -{a},{b or 1} +{c},{d or 1} @@\n"
        expected.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    assert made.unified == "".join(expected)
    plus = sum(1 for line in made.unified.splitlines() if line[:1] == "+" and line[:3] != "+++")
    minus = sum(1 for line in made.unified.splitlines() if line[:1] == "-" and line[:3] != "---")
    assert (made.added, made.removed) == (plus, minus)
    patch_applies(tmp_path, "pkg/app.py", old, new)


def test_created_file(tmp_path: Path) -> None:
    made = from_texts("/w/new.txt", None, "x\ny")
    assert made == Diff(
        "/w/new.txt",
        "--- /dev/null\n+++ b/w/new.txt\n@@ -0,0 +1,2 @@\n+x\n+y\n\\ No newline at end of file\n",
        added=2,
        removed=0,
        created=True,
    )
    assert proposed("Write", {"file_path": "/w/new.txt", "content": "x\ny"}, None) == made
    patch_applies(tmp_path, "sub/new.txt", None, "line 1\nline 2\n")


def test_unchanged_and_empty_created_file_have_no_text() -> None:
    assert from_texts("a", "same\n", "same\n") == Diff("a", "", 0, 0)
    assert from_texts("a", None, "") == Diff("a", "", 0, 0, created=True)


def test_no_final_newline_marks_the_right_side() -> None:
    assert from_texts("f", "a\n", "a").unified == (
        "--- a/f\n+++ b/f\n@@ -1,1 +1,1 @@\n-a\n+a\n\\ No newline at end of file\n"
    )
    assert from_texts("f", "a", "a\n").unified == (
        "--- a/f\n+++ b/f\n@@ -1,1 +1,1 @@\n-a\n\\ No newline at end of file\n+a\n"
    )


def test_crlf_edit_keeps_crlf_and_matches_lf_old_string(tmp_path: Path) -> None:
    path = tmp_path / "win.txt"
    write_exact(path, "alpha\r\nbeta\r\ngamma\r\n")
    # The model writes LF; the CLI matches it against the CRLF file and keeps CRLF.
    edit = {"file_path": str(path), "old_string": "alpha\nbeta", "new_string": "alpha\nBETA\nnew"}
    before = proposed("Edit", edit, read_exact(path))
    write_exact(path, "alpha\r\nBETA\r\nnew\r\ngamma\r\n")
    assert before == from_texts(str(path), "alpha\r\nbeta\r\ngamma\r\n", read_exact(path))
    assert before is not None and "-beta\r\n+BETA\r\n+new\r\n" in before.unified
    assert (before.added, before.removed) == (2, 1)
    # A lone "\r" is not a line break and a CRLF file does not split into empty lines.
    assert from_texts("f", "a\rb\n", "a\rc\n").removed == 1


def test_multiedit_applies_edits_in_order() -> None:
    original = "one\nkeep\n"
    chained = [
        {"old_string": "one", "new_string": "two"},
        {"old_string": "two", "new_string": "three"},
    ]
    made = proposed("MultiEdit", {"file_path": "/w/f", "edits": chained}, original)
    assert made == from_texts("/w/f", original, "three\nkeep\n")
    # In the other order the second edit no longer finds its text: no diff.
    reverse = {"file_path": "/w/f", "edits": chained[::-1]}
    assert proposed("MultiEdit", reverse, original) is None
    # A MultiEdit may create the file with an empty first old_string.
    create = [{"old_string": "", "new_string": "a\n"}, {"old_string": "a", "new_string": "b"}]
    created = proposed("MultiEdit", {"file_path": "/w/g", "edits": create}, None)
    assert created == from_texts("/w/g", None, "b\n")
    assert created is not None and created.created


def test_apply_edit_rules() -> None:
    assert apply_edit("a b a", "b", "c") == "a c a"
    assert apply_edit("a b a", "x", "c") is None  # not found
    assert apply_edit("a b a", "a", "c") is None  # ambiguous without replace_all
    assert apply_edit("a b a", "a", "c", replace_all=True) == "c b c"
    assert apply_edit("", "", "new") == "new"  # creating a file
    assert apply_edit("text", "", "new") is None
    assert apply_edit("x\r\ny\r\n", "x\ny", "z") == "z\r\n"


@pytest.mark.parametrize(
    ("name", "input", "original"),
    [
        ("Edit", {"file_path": "/w/f", "old_string": "absent", "new_string": "x"}, "text\n"),
        ("Edit", {"file_path": "/w/f", "old_string": "t", "new_string": "x"}, "t t\n"),
        ("Edit", {"file_path": "/w/f", "old_string": "x", "new_string": "y"}, None),
        ("Edit", {"file_path": "/w/f", "old_string": 3, "new_string": "y"}, "3"),
        ("Edit", {"old_string": "a", "new_string": "b"}, "a"),
        ("Write", {"file_path": "/w/f", "content": 12}, "a"),
        ("Write", {"file_path": 7, "content": "a"}, None),
        ("MultiEdit", {"file_path": "/w/f", "edits": []}, "a"),
        ("MultiEdit", {"file_path": "/w/f", "edits": ["a"]}, "a"),
        ("MultiEdit", {"file_path": "/w/f", "edits": "a"}, "a"),
        ("Bash", {"command": "ls", "file_path": "/w/f"}, "a"),
        ("Read", {"file_path": "/w/f"}, "a"),
    ],
)
def test_proposed_is_none_when_nothing_applies(
    name: str, input: dict[str, Any], original: str | None
) -> None:
    assert proposed(name, input, original) is None


# -- structuredPatch -----------------------------------------------------------------------------


@pytest.mark.parametrize(("old", "new"), CASES.values(), ids=CASES.keys())
def test_structured_patch_equals_from_texts(old: str, new: str) -> None:
    assert from_structured_patch("/w/app.py", structured(old, new)) == from_texts(
        "/w/app.py", old, new
    )


def test_structured_patch_of_the_real_cli() -> None:
    # tests/data/recorded/2.1.329/write_edit.jsonl: the Edit's tool_use_result.
    hunks = [
        {"oldStart": 1, "oldLines": 1, "newStart": 1, "newLines": 1, "lines": ["-hello", "+bye"]}
    ]
    made = from_structured_patch("/WORK/note.txt", hunks)
    assert made == from_texts("/WORK/note.txt", "hello\n", "bye\n")
    assert made is not None
    assert (
        made.unified == "--- a/WORK/note.txt\n+++ b/WORK/note.txt\n@@ -1,1 +1,1 @@\n-hello\n+bye\n"
    )
    # jsdiff keeps an empty range's start one higher than the header writes it.
    emptied = [{"oldStart": 1, "oldLines": 2, "newStart": 1, "newLines": 0, "lines": ["-a", "-b"]}]
    assert from_structured_patch("f", emptied) == from_texts("f", "a\nb\n", "")
    assert from_structured_patch("f", []) == Diff("f", "", 0, 0)


GOOD_HUNK = {
    "oldStart": 1,
    "oldLines": 2,
    "newStart": 1,
    "newLines": 2,
    "lines": [" a", "-b", "+c"],
}


@pytest.mark.parametrize(
    "hunks",
    [
        None,
        "@@ -1 +1 @@",
        {"0": GOOD_HUNK},
        [GOOD_HUNK, "x"],
        [{}],
        [{**GOOD_HUNK, "oldStart": "1"}],
        [{**GOOD_HUNK, "oldLines": True}],
        [{**GOOD_HUNK, "newStart": -1}],
        [{**GOOD_HUNK, "newLines": 2.0}],
        [{**GOOD_HUNK, "lines": " a"}],
        [{**GOOD_HUNK, "lines": [" a", "-b", 3]}],
        [{**GOOD_HUNK, "lines": [" a", "", "+c"]}],
        [{**GOOD_HUNK, "lines": [" a", "xb", "+c"]}],
        [{**GOOD_HUNK, "lines": [" a", "-b\n+x", "+c"]}],
        [{**GOOD_HUNK, "oldLines": 3}],  # counts disagree with the lines
        [{k: v for k, v in GOOD_HUNK.items() if k != "newLines"}],
    ],
)
def test_malformed_structured_patch_is_none(hunks: Any) -> None:
    assert from_structured_patch("f", [GOOD_HUNK]) is not None
    assert from_structured_patch("f", hunks) is None


# -- size cap ------------------------------------------------------------------------------------


def test_truncated_diff_keeps_exact_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    old = "".join(f"old line {i:06d}\n" for i in range(20_000))
    new = "".join(f"new line {i:06d}\n" for i in range(25_000))
    capped = from_texts("big.txt", old, new)
    assert capped.truncated
    assert (capped.added, capped.removed) == (25_000, 20_000)
    assert 0 < len(capped.unified) <= diffs.MAX_DIFF_CHARS
    assert capped.unified.endswith("\n")

    monkeypatch.setattr(diffs, "MAX_DIFF_CHARS", 10**9)
    whole = from_texts("big.txt", old, new)
    assert not whole.truncated and len(whole.unified) > len(capped.unified)
    assert whole.unified.startswith(capped.unified)  # cut at a line boundary
    assert whole.unified[len(capped.unified) - 1] == "\n"
    assert (whole.added, whole.removed) == (capped.added, capped.removed)


def test_truncated_structured_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diffs, "MAX_DIFF_CHARS", 100)
    lines = [f"+added line {i}" for i in range(50)]
    made = from_structured_patch(
        "f", [{"oldStart": 1, "oldLines": 0, "newStart": 1, "newLines": 50, "lines": lines}]
    )
    assert made is not None and made.truncated
    assert (made.added, made.removed) == (50, 0)
    assert len(made.unified) <= 100 and made.unified.endswith("\n")


# -- diffs from tool results ---------------------------------------------------------------------

EDIT_INPUT = {"file_path": "/WORK/note.txt", "old_string": "hello", "new_string": "bye"}
EDIT_RESULT = {
    "filePath": "/WORK/note.txt",
    "oldString": "hello",
    "newString": "bye",
    "originalFile": "hello\n",
    "structuredPatch": [
        {"oldStart": 1, "oldLines": 1, "newStart": 1, "newLines": 1, "lines": ["-hello", "+bye"]}
    ],
    "userModified": False,
    "replaceAll": False,
}
WRITE_CREATE_RESULT: dict[str, Any] = {
    "type": "create",
    "filePath": "/WORK/note.txt",
    "content": "hello\n",
    "structuredPatch": [],
    "originalFile": None,
    "userModified": False,
}


def test_from_result_uses_the_cli_result() -> None:
    expected = from_texts("/WORK/note.txt", "hello\n", "bye\n")
    assert from_result("Edit", EDIT_INPUT, EDIT_RESULT) == expected
    # Without structuredPatch, the original file plus the edit gives the same diff.
    bare = {k: v for k, v in EDIT_RESULT.items() if k != "structuredPatch"}
    assert from_result("Edit", EDIT_INPUT, bare) == expected
    broken = {**EDIT_RESULT, "structuredPatch": [{"oldStart": "x"}]}
    assert from_result("Edit", EDIT_INPUT, broken) == expected

    write = {"file_path": "/WORK/note.txt", "content": "hello\n"}
    created = from_result("Write", write, WRITE_CREATE_RESULT)
    assert created == from_texts("/WORK/note.txt", None, "hello\n")

    update = {"type": "update", "filePath": "/w/a", "content": "b\n", "originalFile": "a\n"}
    assert from_result("Write", {"file_path": "/w/a"}, update) == from_texts("/w/a", "a\n", "b\n")

    multi = {"file_path": "/w/m", "edits": [{"old_string": "a", "new_string": "b"}]}
    result = {"filePath": "/w/m", "originalFile": "a\nc\n", "structuredPatch": []}
    assert from_result("MultiEdit", multi, result) == from_texts("/w/m", "a\nc\n", "b\nc\n")


@pytest.mark.parametrize(
    ("name", "result"),
    [
        ("Edit", "Error: user said no"),
        ("Edit", None),
        ("Edit", {"filePath": "/w/f"}),
        ("Edit", {"originalFile": 3}),
        ("Write", {"type": "update", "content": "x"}),
        ("Bash", {"stdout": "hi", "stderr": ""}),
    ],
)
def test_from_result_is_none_without_anything_usable(name: str, result: Any) -> None:
    assert (
        from_result(name, {"file_path": "/w/f", "old_string": "a", "new_string": "b"}, result)
        is None
    )


# -- tool details --------------------------------------------------------------------------------

REALISTIC: list[tuple[str, dict[str, Any], wt.ToolDetail]] = [
    (
        "Bash",
        {"command": "pytest -q", "description": "Run tests", "timeout": 60000},
        wt.Bash("pytest -q", "Run tests", 60000),
    ),
    (
        "Bash",
        {"command": "npm run dev", "run_in_background": True},
        wt.Bash("npm run dev", background=True),
    ),
    (
        "Read",
        {"file_path": "/w/app.py", "offset": 10, "limit": 50},
        wt.Read("/w/app.py", 10, 50),
    ),
    ("Write", {"file_path": "/w/n.txt", "content": "a\nb\nc"}, wt.Write("/w/n.txt", 5, 3)),
    ("Edit", {**EDIT_INPUT, "replace_all": True}, wt.Edit("/WORK/note.txt", replace_all=True)),
    (
        "MultiEdit",
        {"file_path": "/w/a", "edits": [{"old_string": "a", "new_string": "b"}] * 3},
        wt.MultiEdit("/w/a", 3),
    ),
    (
        "Grep",
        {"pattern": "foo", "path": "/w", "glob": "*.py", "output_mode": "content", "-n": True},
        wt.Grep("foo", "/w", "*.py", "content"),
    ),
    ("Glob", {"pattern": "**/*.py"}, wt.Glob("**/*.py")),
    (
        "WebFetch",
        {"url": "https://example.com/a?b", "prompt": "Summarize"},
        wt.WebFetch("https://example.com/a?b", "Summarize"),
    ),
    ("WebSearch", {"query": "trio nursery"}, wt.WebSearch("trio nursery")),
    (
        "Task",
        {"description": "Find bugs", "prompt": "Look at x", "subagent_type": "general-purpose"},
        wt.Task("Find bugs", "Look at x", "general-purpose"),
    ),
    ("Agent", {"description": "Explore", "prompt": "p"}, wt.Task("Explore", "p")),
    (
        "TodoWrite",
        {
            "todos": [
                {"content": "Write tests", "status": "completed", "activeForm": "Writing tests"},
                {"content": "Ship", "status": "pending", "activeForm": "Shipping"},
            ]
        },
        wt.TodoWrite(
            [
                wt.Todo("Write tests", "completed", "Writing tests"),
                wt.Todo("Ship", "pending", "Shipping"),
            ]
        ),
    ),
    (
        "AskUserQuestion",
        {
            "questions": [
                {
                    "question": "Which color?",
                    "header": "Color",
                    "options": [{"label": "Red", "description": "warm"}, {"label": "Blue"}],
                    "multiSelect": False,
                }
            ]
        },
        wt.AskUserQuestion(
            [
                wt.Question(
                    "Which color?",
                    "Color",
                    False,
                    [wt.Option("Red", "warm"), wt.Option("Blue")],
                )
            ]
        ),
    ),
    (
        "NotebookEdit",
        {"notebook_path": "/w/a.ipynb", "new_source": "x", "cell_id": "c1", "edit_mode": "insert"},
        wt.NotebookEdit("/w/a.ipynb", "insert", "c1"),
    ),
    ("ExitPlanMode", {"plan": "# Plan\n1. do it"}, wt.ExitPlanMode("# Plan\n1. do it")),
    (
        "mcp__github__create_issue",
        {"title": "Bug", "count": 2, "draft": False, "body": "x" * 500, "labels": ["a"]},
        wt.Unknown("mcp__github__create_issue", {"title": "Bug", "count": "2", "draft": "false"}),
    ),
]


@pytest.mark.parametrize(("name", "input", "expected"), REALISTIC, ids=[r[0] for r in REALISTIC])
def test_detail_of_realistic_input(name: str, input: dict[str, Any], expected: Any) -> None:
    detail = tools.detail_of(name, input)
    assert detail == expected
    # The one converter writes the tag and reads the same detail back.
    data = unstructure(detail)
    assert data["type"] == type(expected).TYPE
    assert structure(data, wt.ToolDetail) == expected


GARBAGE: list[tuple[str, dict[str, Any], wt.ToolDetail]] = [
    (
        "Bash",
        {"command": 5, "timeout": "10", "run_in_background": "yes"},
        wt.Bash("", "", None, False),
    ),
    ("Bash", {"command": "ls", "timeout": True}, wt.Bash("ls")),
    ("Read", {"file_path": None, "offset": 1.5, "limit": "9"}, wt.Read("")),
    ("Write", {"content": ["a"]}, wt.Write("", 0, 0)),
    ("Edit", {"replace_all": 1}, wt.Edit("")),
    ("MultiEdit", {"edits": {"a": 1}}, wt.MultiEdit("", 0)),
    ("Grep", {"pattern": ["x"], "path": "", "glob": 3}, wt.Grep("")),
    ("WebFetch", {"url": {"href": "x"}}, wt.WebFetch("")),
    (
        "TodoWrite",
        {"todos": [1, {"content": 2, "status": None}, "x"]},
        wt.TodoWrite([wt.Todo("", "")]),
    ),
    (
        "AskUserQuestion",
        {"questions": [{"question": 1, "options": [{"label": None}, 5], "multiSelect": 1}, None]},
        wt.AskUserQuestion([wt.Question("", options=[wt.Option("")])]),
    ),
    ("AskUserQuestion", {"questions": "Which?"}, wt.AskUserQuestion([])),
    ("Unknown", {"a": None, "b": {"c": 1}, "d": "x"}, wt.Unknown("Unknown", {"d": "x"})),
]


@pytest.mark.parametrize(("name", "input", "expected"), GARBAGE, ids=[g[0] for g in GARBAGE])
def test_detail_of_garbage_input(name: str, input: dict[str, Any], expected: Any) -> None:
    assert tools.detail_of(name, input) == expected


def test_unknown_keeps_only_a_few_fields() -> None:
    detail = tools.detail_of("Whatever", {f"k{i}": "v" for i in range(20)})
    assert isinstance(detail, wt.Unknown)
    assert list(detail.fields) == [f"k{i}" for i in range(tools.MAX_UNKNOWN_FIELDS)]


# -- titles --------------------------------------------------------------------------------------

README_INPUT = {"file_path": "/w/README.md"}
STARTED = [
    ("Bash", {"command": "pytest -q"}, "Running `pytest -q`"),
    ("Bash", {"command": "npm run dev", "run_in_background": True}, "Starting `npm run dev`"),
    ("Bash", {}, "Running a command"),
    ("Edit", {"file_path": "/w/src/app.py"}, "Editing app.py"),
    ("MultiEdit", {"file_path": "C:\\w\\app.py", "edits": []}, "Editing app.py"),
    ("Write", {"file_path": "/w/notes.txt", "content": ""}, "Writing notes.txt"),
    ("Read", {"file_path": "/w/app.py"}, "Reading app.py"),
    ("Grep", {"pattern": "foo"}, "Searching for `foo`"),
    ("Glob", {"pattern": "**/*.py"}, "Finding `**/*.py`"),
    ("WebFetch", {"url": "https://example.com/docs?q=1"}, "Fetching example.com"),
    ("WebSearch", {"query": "trio memory channels"}, "Searching the web for trio memory channels"),
    ("AskUserQuestion", {"questions": [{"question": "Which color?"}]}, "Asking a question"),
    (
        "AskUserQuestion",
        {"questions": [{"question": "a"}, {"question": "b"}]},
        "Asking 2 questions",
    ),
    ("TodoWrite", {"todos": []}, "Updating the todo list"),
    ("Task", {"description": "Find the bug"}, "Starting agent: Find the bug"),
    ("Agent", {}, "Starting an agent"),
    ("ExitPlanMode", {"plan": "x"}, "Presenting a plan"),
    ("NotebookEdit", {"notebook_path": "/w/a.ipynb"}, "Editing a.ipynb"),
    ("mcp__github__create_issue", {}, "Using github: create_issue"),
    ("LS", {"path": "/w"}, "Using LS"),
]


@pytest.mark.parametrize(("name", "input", "title"), STARTED)
def test_started_title(name: str, input: dict[str, Any], title: str) -> None:
    assert started_title(name, input) == title


def test_titles_keep_commands_short() -> None:
    assert started_title("Bash", {"command": "cd /w\npytest -q"}) == "Running `cd /w…`"
    long = "echo " + "x" * 200
    title = started_title("Bash", {"command": long})
    assert title == "Running `" + long[:79] + "…`"
    assert started_title("WebFetch", {"url": "not a url"}) == "Fetching not a url"
    assert started_title("Read", {"file_path": "/"}) == "Reading a file"


FINISHED: list[tuple[str, dict[str, Any], Any, bool, str, str]] = [
    (
        "Bash",
        {"command": "pytest -q"},
        {"stdout": "ok", "stderr": ""},
        False,
        "ok",
        "Ran `pytest -q`",
    ),
    ("Edit", EDIT_INPUT, EDIT_RESULT, False, "", f"Edited note.txt (+1 {MINUS}1)"),
    ("Edit", {"file_path": "/w/app.py"}, None, False, "", "Edited app.py"),
    (
        "Write",
        {"file_path": "/w/notes.txt", "content": "x\n" * 12},
        {"type": "update", "content": "x\n" * 12},
        False,
        "",
        "Wrote notes.txt (12 lines)",
    ),
    (
        "Write",
        {"file_path": "/w/notes.txt", "content": "x\n" * 12},
        {"type": "create", "content": "x\n" * 12, "structuredPatch": []},
        False,
        "",
        "Created notes.txt (+12)",
    ),
    (
        "Read",
        {"file_path": "/w/app.py"},
        {"type": "text", "file": {"filePath": "/w/app.py", "numLines": 120}},
        False,
        "",
        "Read app.py (120 lines)",
    ),
    (
        "Read",
        {"file_path": "/w/app.py"},
        None,
        False,
        "     1→a\n     2→b\n",
        "Read app.py (2 lines)",
    ),
    (
        "Glob",
        {"pattern": "*.py"},
        {"filenames": ["a", "b", "c", "d"], "numFiles": 4},
        False,
        "",
        "Found 4 files",
    ),
    ("Glob", {"pattern": "*.py"}, {"filenames": [], "numFiles": 0}, False, "", "Found no files"),
    ("Grep", {"pattern": "foo"}, None, False, "", "Searched for `foo`"),
    (
        "Grep",
        {"pattern": "foo"},
        {"mode": "files_with_matches", "filenames": ["a"], "numFiles": 1},
        False,
        "",
        "Searched for `foo` (1 file)",
    ),
    ("WebFetch", {"url": "https://example.com/x"}, None, False, "", "Fetched example.com"),
    ("WebSearch", {"query": "trio"}, None, False, "", "Searched the web for trio"),
    (
        "AskUserQuestion",
        {"questions": [{"question": "Which color?"}]},
        {"questions": [], "answers": {"Which color?": "Blue"}},
        False,
        "",
        "Answered: Blue",
    ),
    (
        "AskUserQuestion",
        {"questions": [{"question": "Which color?"}]},
        None,
        False,
        'Your questions have been answered: "Which color?"="Blue". You can now continue.',
        "Answered: Blue",
    ),
    (
        "TodoWrite",
        {"todos": [{"status": "completed"}] * 2 + [{"status": "pending"}] * 3},
        None,
        False,
        "",
        "Updated todos (2/5 done)",
    ),
    ("Task", {"description": "Find the bug"}, None, False, "", "Finished agent: Find the bug"),
    ("mcp__x__y", {}, None, False, "", "Used x: y"),
    # Failures and refusals read "<Failed|Refused>: <what approving would have done>".
    (
        "Bash",
        {"command": "pytest -q"},
        {"stdout": ""},
        True,
        "Exit code 1\nFAILED",
        "Failed: Run `pytest -q`",
    ),
    (
        "Edit",
        {"file_path": "/w/app.py"},
        "Error: String to replace not found in file.",
        True,
        "<tool_use_error>String to replace not found in file.</tool_use_error>",
        "Failed: Edit app.py",
    ),
    (
        "Bash",
        {"command": "rm -rf build"},
        "Error: user said no",
        True,
        "user said no",
        "Refused: Run `rm -rf build`",
    ),
    (
        "Edit",
        {"file_path": "/w/app.py"},
        "User rejected tool use",
        True,
        "The user doesn't want to proceed with this tool use. The tool use was rejected.",
        "Refused: Edit app.py",
    ),
]


@pytest.mark.parametrize(("name", "input", "result", "is_error", "output", "title"), FINISHED)
def test_finished_title(
    name: str, input: dict[str, Any], result: Any, is_error: bool, output: str, title: str
) -> None:
    assert finished_title(name, input, result, is_error, output) == title


def test_refused_flag_wins_over_the_wording() -> None:
    assert (
        finished_title("Read", README_INPUT, None, True, "x", refused=True)
        == "Refused: Read README.md"
    )


PERMISSIONS = [
    ("Bash", {"command": "rm -rf build"}, "Run `rm -rf build`"),
    (
        "Bash",
        {"command": "npm start", "run_in_background": True},
        "Run `npm start` in the background",
    ),
    ("Write", {"file_path": "/w/notes.txt", "content": "x\n" * 12}, "Write notes.txt (12 lines)"),
    ("Write", {"file_path": "/w/one.txt", "content": "x"}, "Write one.txt (1 line)"),
    ("Edit", {"file_path": "/w/app.py"}, "Edit app.py"),
    ("Edit", {"file_path": "/w/app.py", "replace_all": True}, "Edit app.py (every occurrence)"),
    ("MultiEdit", {"file_path": "/w/app.py", "edits": [{}, {}]}, "Edit app.py (2 edits)"),
    ("WebFetch", {"url": "https://example.com/a/b"}, "Fetch https://example.com/a/b"),
    ("AskUserQuestion", {"questions": [{"question": "Which color?"}]}, "Answer: Which color?"),
    ("ExitPlanMode", {"plan": "## Add caching\n\n1. step"}, "Leave plan mode: Add caching"),
    ("Read", README_INPUT, "Read README.md"),
    ("mcp__db__query", {"sql": "select 1"}, "Use db: query"),
]


@pytest.mark.parametrize(("name", "input", "summary"), PERMISSIONS)
def test_permission_summary(name: str, input: dict[str, Any], summary: str) -> None:
    assert permission_summary(name, input) == summary


def test_describe_a_call_through_its_life() -> None:
    running = describe("toolu_1", "Edit", EDIT_INPUT)
    assert running == wt.ToolView(
        "toolu_1", "Edit", "Editing note.txt", wt.Edit("/WORK/note.txt"), "running"
    )
    done = describe("toolu_1", "Edit", EDIT_INPUT, status="completed", result=EDIT_RESULT)
    assert done.title == f"Edited note.txt (+1 {MINUS}1)"
    assert done.diff == from_texts("/WORK/note.txt", "hello\n", "bye\n")
    failed = describe(
        "toolu_1",
        "Edit",
        EDIT_INPUT,
        status="completed",
        is_error=True,
        output="boom",
        truncated=True,
    )
    assert (failed.status, failed.title, failed.diff, failed.truncated) == (
        "failed",
        "Failed: Edit note.txt",
        None,
        True,
    )
    assert structure(unstructure(done), wt.ToolView) == done


# -- permission suggestions ----------------------------------------------------------------------


def rules(destination: str, behavior: str = "allow", kind: str = "addRules") -> dict[str, Any]:
    return {
        "type": kind,
        "rules": [{"toolName": "Bash", "ruleContent": "git *"}],
        "behavior": behavior,
        "destination": destination,
    }


SUGGESTIONS: list[tuple[Any, str]] = [
    (rules("localSettings"), "Always allow `git *` in this project"),
    (rules("projectSettings"), "Always allow `git *` in this project"),
    (rules("userSettings"), "Always allow `git *`"),
    (rules("session"), "Allow `git *` for this session"),
    (rules("cliArg"), "Allow `git *` for this session"),
    (rules("session", "deny"), "Deny `git *` for this session"),
    (rules("userSettings", "ask"), "Always ask before `git *`"),
    (
        rules("localSettings", kind="replaceRules"),
        "Replace the allow rules with `git *` in this project",
    ),
    (rules("session", kind="removeRules"), "Stop allowing `git *` for this session"),
    (
        {
            "type": "addRules",
            "rules": [{"toolName": "Read", "ruleContent": "//w/**"}, {"toolName": "WebFetch"}],
            "behavior": "allow",
            "destination": "session",
        },
        "Allow Read `//w/**`, WebFetch for this session",
    ),
    (
        {"type": "setMode", "mode": "acceptEdits", "destination": "session"},
        "Switch to acceptEdits for this session",
    ),
    (
        {"type": "addDirectories", "directories": ["/w"], "destination": "session"},
        "Allow access to /w for this session",
    ),
    (
        {"type": "addDirectories", "directories": ["/a", "/b"], "destination": "localSettings"},
        "Always allow access to /a, /b in this project",
    ),
    (
        {"type": "removeDirectories", "directories": ["/w"], "destination": "session"},
        "Remove access to /w for this session",
    ),
    # Malformed or unknown: honest and generic, never an exception.
    (None, tools.GENERIC_SUGGESTION),
    ("addRules", tools.GENERIC_SUGGESTION),
    ({"type": "teleport"}, tools.GENERIC_SUGGESTION),
    ({"type": "addRules", "rules": "git *", "behavior": "allow"}, tools.GENERIC_SUGGESTION),
    (
        {"type": "addRules", "rules": [{"toolName": 1}], "behavior": "allow"},
        tools.GENERIC_SUGGESTION,
    ),
    ({**rules("session"), "behavior": "maybe"}, tools.GENERIC_SUGGESTION),
    ({"type": "setMode", "mode": 3}, tools.GENERIC_SUGGESTION),
    ({"type": "addDirectories", "directories": [None]}, tools.GENERIC_SUGGESTION),
    ({**rules("the moon")}, "Allow `git *`"),
]


@pytest.mark.parametrize(("suggestion", "label"), SUGGESTIONS)
def test_suggestion_label(suggestion: Any, label: str) -> None:
    assert suggestion_label(suggestion) == label


# -- never raising on untrusted JSON -------------------------------------------------------------

TOOL_NAMES = [
    "Bash",
    "Read",
    "Write",
    "Edit",
    "MultiEdit",
    "Grep",
    "Glob",
    "WebFetch",
    "WebSearch",
    "Task",
    "Agent",
    "TodoWrite",
    "AskUserQuestion",
    "NotebookEdit",
    "ExitPlanMode",
    "mcp__server__tool",
    "Unheard",
    "",
]
KEYS = [
    "command", "description", "timeout", "run_in_background", "file_path", "offset", "limit",
    "content", "old_string", "new_string", "replace_all", "edits", "pattern", "path", "glob",
    "output_mode", "url", "prompt", "query", "subagent_type", "todos", "questions", "question",
    "options", "label", "multiSelect", "plan", "notebook_path", "type", "filePath", "originalFile",
    "structuredPatch", "oldString", "newString", "file", "numLines", "numFiles", "filenames",
    "mode", "answers", "status", "oldStart", "oldLines", "newStart", "newLines", "lines",
]  # fmt: skip
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)
json_objects = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), json_values, max_size=8)


def one_line(text: str) -> bool:
    return len(text.splitlines()) <= 1 and len(text) <= 200


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(TOOL_NAMES),
    input=json_objects,
    result=json_values,
    output=st.text(max_size=40),
    is_error=st.booleans(),
    original=st.none() | st.text(max_size=30),
)
def test_tool_views_never_raise(
    name: str, input: dict[str, Any], result: Any, output: str, is_error: bool, original: str | None
) -> None:
    assert one_line(started_title(name, input))
    assert one_line(finished_title(name, input, result, is_error, output))
    assert one_line(permission_summary(name, input))
    assert isinstance(watch.summarize_tool_input(name, input), str)
    for status in ("running", "completed", "failed"):
        view = describe(
            "id", name, input, status=status, output=output, result=result, is_error=is_error
        )
        assert one_line(view.title)
        assert structure(unstructure(view), wt.ToolView) == view
    for made in (proposed(name, input, original), from_result(name, input, result)):
        assert made is None or isinstance(made, Diff)


@settings(max_examples=200, deadline=None)
@given(suggestion=json_values | json_objects)
def test_suggestion_label_never_raises(suggestion: Any) -> None:
    assert one_line(suggestion_label(suggestion))


@settings(max_examples=200, deadline=None)
@given(hunks=json_values)
def test_structured_patch_never_raises(hunks: Any) -> None:
    made = from_structured_patch("f", hunks)
    assert made is None or made.added >= 0


# -- WatchCode's text rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("Before\n```python\nprint(1)\n```\nafter", "Before\n[code block]\nafter"),
        ("# Title\n### Sub\n####### seven", "Title\nSub\n####### seven"),
        ("a **bold** b", "a bold b"),
        ("an *italic* word", "an italic word"),
        ("__under__ and _lined_", "under and lined"),
        ("~~gone~~ still", "gone still"),
        ("run `ls -la` now", "run ls -la now"),
        ("* one\n+ two\n  - three", "- one\n- two\n- three"),
        ("1. first\n 22. second", "first\nsecond"),
        ("see [the docs](https://x.y/z) here", "see the docs here"),
        ("a\n\n\n\n\nb", "a\n\nb"),
        ("  \n padded \n ", "padded"),
        ("para\n\n- item", "para\n\n- item"),  # list rules do not eat the blank line above
    ],
)
def test_strip_markdown(text: str, plain: str) -> None:
    assert watch.strip_markdown(text) == plain


def test_summarize_text() -> None:
    assert watch.summarize_text("**Hi** there") == "Hi there"
    long = "word " * 100
    summary = watch.summarize_text(long)
    assert summary == long.strip()[:300] + "…"
    assert watch.summarize_text("abcdef", limit=3) == "abc…"
    assert watch.summarize_text("abc", limit=3) == "abc"


@pytest.mark.parametrize(
    ("name", "input", "detail"),
    [
        ("Bash", {"command": "ls -la"}, "$ ls -la"),
        ("Bash", {"command": "x" * 300}, "$ " + "x" * 200),
        ("Read", {"file_path": "/w/a.py"}, "/w/a.py"),
        ("Write", {"file_path": "/w/b.py", "content": "..."}, "/w/b.py"),
        ("Edit", {"file_path": "/w/c.py"}, "/w/c.py"),
        ("MultiEdit", {"file_path": "/w/d.py"}, "/w/d.py"),
        ("Glob", {"pattern": "*.py"}, "Pattern: *.py"),
        ("Grep", {"pattern": "foo"}, "Search: foo"),
        ("WebFetch", {"url": "https://x.y", "prompt": "p"}, "https://x.y"),
        ("WebSearch", {"query": "trio"}, "trio"),
        ("Agent", {"prompt": "p" * 300, "description": "d"}, "p" * 200),
        ("Subagent", {"description": "d"}, "d"),
        ("Task", {"prompt": "look", "description": "d"}, "look"),
        ("Other", {"a": "1", "b": 2, "c": "x" * 150, "d": "4"}, "a: 1, d: 4"),
        (
            "Other",
            {"k": "v" * 100, "l": "w" * 100, "m": "z"},
            ("k: " + "v" * 100 + ", l: " + "w" * 100)[:200],
        ),
        ("Other", {"n": 1, "deep": {"x": [1, 2]}}, '{"n":1,"deep":{"x":[1,2]}}'),
        (
            "Other",
            {"big": list(range(100))},
            ('{"big":' + str(list(range(100))).replace(" ", ""))[:150],
        ),
    ],
)
def test_summarize_tool_input(name: str, input: dict[str, Any], detail: str) -> None:
    assert watch.summarize_tool_input(name, input) == detail


@pytest.mark.parametrize(
    ("text", "summary"),
    [
        ("", "Done"),
        ("  \n", "Done"),
        ("short output", "short output"),
        ("x" * 119, "x" * 119),
        ("".join(f"{i:6d}→line {i} of the file here\n" for i in range(1, 8)), "7 lines"),
        ("a" * 50 + "\n" + "b" * 50 + "\n\n" + "c" * 50 + "\n" + "d" * 50, "4 lines of output"),
        ("y" * 200, "y" * 120 + "…"),
        ("a" * 60 + "\n" + "b" * 60 + "\n" + "c" * 60, "a" * 60 + "\n" + "b" * 59 + "…"),
    ],
)
def test_summarize_tool_result(text: str, summary: str) -> None:
    assert watch.summarize_tool_result(text) == summary


@pytest.mark.parametrize(
    ("at", "iso"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (T0, T0_ISO),
        (T0 + 0.1239, "2023-11-14T22:13:20.123Z"),  # truncated like a JS Date, not rounded
        (T0 + 59.9999, "2023-11-14T22:14:19.999Z"),
    ],
)
def test_timestamp_format(at: float, iso: str) -> None:
    assert watch.iso_time(at) == iso


# -- the watch projection ------------------------------------------------------------------------


def event(type: str, content: str, **fields: Any) -> WatchEvent:
    return WatchEvent(type, content, T0_ISO, **fields)


def feed_all(projection: WatchProjection, *events: ev.Event) -> list[WatchEvent]:
    return [out for e in events for out in projection.feed(e, T0)]


def test_parallel_tools_pair_by_id_not_by_order() -> None:
    projection = WatchProjection()
    out = feed_all(
        projection,
        ev.ToolStarted("toolu_a", "Read", {"file_path": "/w/app.py"}),
        ev.ToolStarted("toolu_b", "Bash", {"command": "ls"}),
        ev.ToolFinished("toolu_b", False, "app.py\n", {"stdout": "app.py"}),
        ev.ToolFinished("toolu_a", False, "     1→import os\n     2→main()\n"),
    )
    assert out == [
        event("tool_use", "Read", summary="Reading app.py", detail="/w/app.py", ref="toolu_a"),
        event("tool_use", "Bash", summary="Running `ls`", detail="$ ls", ref="toolu_b"),
        event("tool_result", "app.py\n", summary="Ran `ls`", detail="app.py\n", ref="toolu_b"),
        event(
            "tool_result",
            "     1→import os\n     2→main()\n",
            summary="Read app.py (2 lines)",
            detail="     1→import os\n     2→main()\n",
            ref="toolu_a",
        ),
    ]


def test_event_mapping() -> None:
    projection = WatchProjection()
    cases: list[tuple[ev.Event, list[WatchEvent]]] = [
        (
            ev.MessageQueued("m1", "Fix **the** bug"),
            [event("user", "Fix **the** bug", summary="Fix the bug", ref="m1")],
        ),
        (ev.MessageDelivered("m1"), []),
        (ev.TurnStarted("m1"), []),
        (ev.TextDelta("msg", 0, "Hel"), []),
        (
            ev.AssistantText("msg", 0, "# Done\nAll `good`"),
            [event("assistant", "# Done\nAll `good`", summary="Done\nAll good")],
        ),
        (ev.AssistantText("msg", 1, "   "), []),
        (
            ev.AssistantText("msg", 2, "API Error: 500", is_api_error=True),
            [event("error", "API Error: 500", summary="API Error: 500")],
        ),
        (
            ev.TurnCompleted("m1", cost_usd=0.01234),
            [event("status", "Done · $0.0123", ref="m1")],
        ),
        (ev.TurnCompleted("m1"), [event("status", "Done", ref="m1")]),
        (
            ev.TurnFailed("m1", "api_error", "overloaded"),
            [event("error", "api_error: overloaded", ref="m1")],
        ),
        (ev.TurnFailed("m1", "max_turns"), [event("error", "max_turns", ref="m1")]),
        (ev.TurnInterrupted("m1"), [event("status", "Interrupted", ref="m1")]),
        (ev.SessionError("cli_stderr", "boom"), [event("error", "boom", detail="cli_stderr")]),
        (
            ev.CLIStateChanged(ev.CLIState.CRASHED, exit_code=1, detail="segfault"),
            [event("error", "Claude Code crashed (exit 1)", detail="segfault")],
        ),
        (ev.CLIStateChanged(ev.CLIState.RUNNING, pid=4), []),
        (ev.StatusChanged(ev.SessionStatus.RUNNING), [event("status", "Running")]),
        (
            ev.StatusChanged(ev.SessionStatus.REQUIRES_ACTION),
            [event("status", "Waiting for approval")],
        ),
        (ev.StatusChanged(ev.SessionStatus.IDLE), [event("status", "Idle")]),
        (ev.StatusChanged(ev.SessionStatus.ERRORED), [event("status", "Error")]),
        (ev.SessionUpdated(permission_mode="plan"), [event("status", "Mode: plan")]),
        (
            ev.SessionUpdated(title="New name", model="opus"),
            [event("status", "Model: opus · Renamed: New name")],
        ),
        (ev.SessionUpdated(), []),
        (ev.SessionCreated("/w", "t"), []),
    ]
    for domain, expected in cases:
        assert projection.feed(domain, T0) == expected, domain


def test_permission_prompt_answer_and_refused_result() -> None:
    projection = WatchProjection()
    out = feed_all(
        projection,
        ev.ToolStarted("toolu_1", "Bash", {"command": "rm -rf build"}),
        ev.PermissionRequested("req_1", "Bash", {"command": "rm -rf build"}, "toolu_1"),
        ev.PermissionResolved("req_1", ev.PermissionOutcome.DENIED, "not now"),
        ev.ToolFinished("toolu_1", True, "not now", "Error: not now"),
    )
    assert out[1:] == [
        event(
            "permission",
            "Allow Bash?",
            summary="Run `rm -rf build`",
            detail="$ rm -rf build",
            ref="req_1",
            allow_label="Allow",
            deny_label="Deny",
        ),
        event("status", "Denied", summary="Run `rm -rf build`", detail="not now", ref="req_1"),
        event(
            "tool_result",
            "not now",
            summary="Refused: Run `rm -rf build`",
            detail="not now",
            ref="toolu_1",
        ),
    ]


def test_withdrawn_request_marks_the_call_refused_even_when_worded_like_a_failure() -> None:
    projection = WatchProjection()
    out = feed_all(
        projection,
        ev.ToolStarted("toolu_1", "Read", {"file_path": "/w/a"}),
        ev.PermissionRequested("req_1", "Read", {"file_path": "/w/a"}, "toolu_1"),
        ev.PermissionResolved("req_1", ev.PermissionOutcome.WITHDRAWN),
        ev.ToolFinished("toolu_1", True, "<tool_use_error>stopped</tool_use_error>"),
    )
    assert [(o.content, o.summary) for o in out[2:]] == [
        ("Withdrawn", "Read a"),
        ("<tool_use_error>stopped</tool_use_error>", "Refused: Read a"),
    ]


def test_allowed_then_failed_is_a_failure() -> None:
    projection = WatchProjection()
    out = feed_all(
        projection,
        ev.ToolStarted("toolu_1", "Bash", {"command": "make"}),
        ev.PermissionRequested("req_1", "Bash", {"command": "make"}, "toolu_1"),
        ev.PermissionResolved("req_1", ev.PermissionOutcome.ALLOWED),
        ev.ToolFinished("toolu_1", True, "Exit code 2", {"stdout": "", "stderr": "err"}),
    )
    assert [o.summary for o in out] == [
        "Running `make`",
        "Run `make`",
        "Run `make`",
        "Failed: Run `make`",
    ]
    assert out[2].content == "Allowed" and out[2].detail is None


def test_ask_user_question_prompt_offers_the_options() -> None:
    question = {
        "questions": [
            {
                "question": "Which color?",
                "header": "Color",
                "options": [{"label": "Red", "description": ""}, {"label": "Blue"}],
                "multiSelect": False,
            }
        ]
    }
    requested = ev.PermissionRequested(
        "req_9", "AskUserQuestion", question, "toolu_9", requires_user_interaction=True
    )
    (prompt,) = WatchProjection().feed(requested, T0)
    assert prompt == event(
        "permission",
        "Which color?",
        summary="Answer: Which color?",
        detail=watch.summarize_tool_input("AskUserQuestion", question),
        ref="req_9",
        allow_label=None,
        deny_label="Deny",
        options=["Red", "Blue"],
    )


def test_plan_prompt_has_plan_labels() -> None:
    requested = ev.PermissionRequested("req_2", "ExitPlanMode", {"plan": "Do it"})
    (prompt,) = WatchProjection().feed(requested, T0)
    assert (prompt.summary, prompt.allow_label, prompt.deny_label) == (
        "Leave plan mode: Do it",
        "Approve",
        "Keep planning",
    )


def test_memory_is_bounded() -> None:
    projection = WatchProjection(memory=2)
    feed_all(
        projection,
        *(ev.ToolStarted(f"toolu_{i}", "Bash", {"command": f"echo {i}"}) for i in range(3)),
    )
    # The oldest call was forgotten: its result still shows, titled without the call.
    (forgotten,) = projection.feed(ev.ToolFinished("toolu_0", False, "0"), T0)
    assert (forgotten.ref, forgotten.summary) == ("toolu_0", "Used a tool")
    (kept,) = projection.feed(ev.ToolFinished("toolu_2", False, "2"), T0)
    assert kept.summary == "Ran `echo 2`"


def session_info(status: ev.SessionStatus) -> snap.SessionInfo:
    return snap.SessionInfo(
        id="s1",
        cwd="/w",
        title="t",
        model=None,
        permission_mode="default",
        status=status,
        cli=ev.CLIState.RUNNING,
        created_at=T0,
        last_activity=T0,
        cost_usd=0.0,
    )


def test_history_from_a_snapshot_then_live_events() -> None:
    pending = ev.PermissionRequested(
        "req_1", "Write", {"file_path": "/w/n.txt", "content": "a\n"}, "toolu_3"
    )
    snapshot = snap.Snapshot(
        epoch="e",
        cursor=12,
        session=session_info(ev.SessionStatus.REQUIRES_ACTION),
        items=[
            snap.UserItem("m1", "List files", snap.MessageState.COMPLETED),
            snap.AssistantItem("msg1", 0, "Sure.", complete=True),
            snap.ToolItem(
                "toolu_1", "Bash", {"command": "ls"}, snap.ToolStatus.COMPLETED, "a\nb\n"
            ),
            snap.AssistantItem("msg1", 1, "half a thought", complete=False),
            snap.TurnEndItem("m1", "completed", cost_usd=0.5),
            snap.UserItem("m2", "Write n.txt", snap.MessageState.STARTED),
            snap.ErrorItem("cli_stderr", "warning: x"),
            snap.ToolItem("toolu_2", "Read", {"file_path": "/w/app.py"}, snap.ToolStatus.RUNNING),
            snap.ToolItem("toolu_3", "Write", pending.input, snap.ToolStatus.RUNNING),
            snap.AssistantItem("msg2", 0, "Writing it n", complete=False),
        ],
        pending_permissions=[pending],
        active_turn="m2",
    )
    projection = WatchProjection()
    backlog = projection.history(snapshot, T0)
    assert [(e.type, e.content, e.summary, e.ref) for e in backlog] == [
        ("user", "List files", "List files", "m1"),
        ("assistant", "Sure.", "Sure.", None),
        ("tool_use", "Bash", "Running `ls`", "toolu_1"),
        ("tool_result", "a\nb\n", "Ran `ls`", "toolu_1"),
        ("status", "Done · $0.5000", None, "m1"),
        ("user", "Write n.txt", "Write n.txt", "m2"),
        ("error", "warning: x", None, None),
        ("tool_use", "Read", "Reading app.py", "toolu_2"),
        ("tool_use", "Write", "Writing n.txt", "toolu_3"),
        ("assistant", "Writing it n", "Writing it n", None),  # partial, but the last item
        ("permission", "Allow Write?", "Write n.txt (1 line)", "req_1"),
        ("status", "Waiting for approval", None, None),
    ]
    assert all(e.timestamp == T0_ISO for e in backlog)
    # The snapshot seeded the tool memory: live results pair with calls made before it.
    live = feed_all(
        projection,
        ev.PermissionResolved("req_1", ev.PermissionOutcome.ALLOWED),
        ev.ToolFinished("toolu_3", False, "ok", {"type": "create", "content": "a\n"}),
        ev.ToolFinished("toolu_2", False, "     1→x\n"),
    )
    assert [(e.content, e.summary) for e in live] == [
        ("Allowed", "Write n.txt (1 line)"),
        ("ok", "Created n.txt (+1)"),
        ("     1→x\n", "Read app.py (1 line)"),
    ]


def test_history_turn_ends_and_api_errors() -> None:
    snapshot = snap.Snapshot(
        epoch="e",
        cursor=3,
        session=session_info(ev.SessionStatus.IDLE),
        items=[
            snap.AssistantItem("msg", 0, "API Error: 400 bad", complete=True, is_api_error=True),
            snap.TurnEndItem("m1", "failed", reason="api_error", message="bad request"),
            snap.TurnEndItem("m2", "interrupted"),
            snap.ToolItem(
                "toolu_9", "Bash", {"command": "false"}, snap.ToolStatus.FAILED, "Exit code 1"
            ),
        ],
        pending_permissions=[],
    )
    backlog = WatchProjection().history(snapshot, T0)
    assert [(e.type, e.content, e.summary) for e in backlog] == [
        ("error", "API Error: 400 bad", "API Error: 400 bad"),
        ("error", "api_error: bad request", None),
        ("status", "Interrupted", None),
        ("tool_use", "Bash", "Running `false`"),
        ("tool_result", "Exit code 1", "Failed: Run `false`"),
        ("status", "Idle", None),
    ]


def test_watch_events_serialize_like_watchcode() -> None:
    (user,) = WatchProjection().feed(ev.MessageQueued("m1", "hi"), T0 + 0.5)
    assert unstructure(user) == {
        "type": "user",
        "content": "hi",
        "timestamp": "2023-11-14T22:13:20.500Z",
        "summary": "hi",
        "detail": None,
        "ref": "m1",
        "allow_label": None,
        "deny_label": None,
        "options": None,
    }


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(TOOL_NAMES),
    input=json_objects,
    result=json_values,
    output=st.text(max_size=40),
    is_error=st.booleans(),
    same_id=st.booleans(),
)
def test_projection_never_raises_on_untrusted_tool_json(
    name: str, input: dict[str, Any], result: Any, output: str, is_error: bool, same_id: bool
) -> None:
    projection = WatchProjection()
    started = projection.feed(ev.ToolStarted("t1", name, input), T0)
    asked = projection.feed(ev.PermissionRequested("r1", name, input, "t1"), T0)
    finished_id = "t1" if same_id else "t2"
    finished = projection.feed(ev.ToolFinished(finished_id, is_error, output, result), T0)
    assert [e.type for e in started + asked + finished] == ["tool_use", "permission", "tool_result"]
    assert finished[0].ref == finished_id


def test_a_remote_sessions_upstream_link_is_told_to_the_watch() -> None:
    projection = WatchProjection()
    out = feed_all(
        projection,
        ev.UpstreamConnected(),
        ev.UpstreamDisconnected("closed", retry_in=4.2),
        ev.UpstreamConnected(reconnect=True, recovered=3),
        ev.UpstreamDisconnected("unfollowed"),
        ev.UpstreamDisconnected(
            "unauthorized", code="upstream_unauthorized", message="Log in to Claude again"
        ),
    )
    assert [(o.type, o.content, o.detail) for o in out] == [
        ("status", "Connected to Remote Control", None),
        ("status", "Remote Control disconnected · retrying in 4 s", None),
        ("status", "Reconnected to Remote Control · 3 missed events recovered", None),
        ("error", "Log in to Claude again", "upstream_unauthorized"),
    ]
