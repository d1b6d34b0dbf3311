"""Unified diffs of the file changes a tool proposes or made (pure: callers pass file contents in).

A :class:`Diff` is computed either *before* a tool runs, for a permission prompt
(:func:`proposed`: the current file plus the tool's input), or *after*, from the CLI's
``tool_use_result`` (:func:`from_result`: its ``structuredPatch`` when usable, else the original
file plus the edits). Both come out in the one format below, so a client renders one thing.

Format decisions, kept in one place:

* Headers are ``--- a/<path>`` / ``+++ b/<path>`` with a leading ``/`` of an absolute path dropped
  (``/w/app.py`` → ``a/w/app.py``, like ``git diff --no-index``); a created file has
  ``--- /dev/null``. ``Diff.path`` keeps the path as given.
* Hunk headers always carry both counts (``@@ -1,1 +1,2 @@``), like jsdiff and the CLI's own
  patches, so one regular expression parses every header.
* Lines are split on ``"\\n"`` only: a CRLF file keeps its ``"\\r"`` inside each line, so the text
  still applies with ``patch`` and a lone ``"\\r"`` or a form feed never starts a line. A last line
  without a newline is followed by ``\\ No newline at end of file``.
* ``unified`` is capped at :data:`MAX_DIFF_CHARS`, cut at a line boundary (``truncated`` is then
  set); ``added`` and ``removed`` always count the whole change.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

from ..wire.events import FileDiff

MAX_DIFF_CHARS: Final = 256 * 1024
NO_NEWLINE: Final = "\\ No newline at end of file\n"
_LINE_MARKS: Final = frozenset(" -+\\")
_HUNK_FIELDS: Final = ("oldStart", "oldLines", "newStart", "newLines")


# The diff is the wire's own class (it travels in ToolFinished, ToolItem, PermissionRequested):
# ``Diff(path, unified, added, removed, created=False, truncated=False)``; ``unified`` is ``""``
# when nothing changed, ``created`` says the file did not exist, ``truncated`` that ``unified`` was
# cut at MAX_DIFF_CHARS (the counts are still exact). One class, so nothing converts between them.
Diff = FileDiff


# -- from two texts ------------------------------------------------------------------------------


def from_texts(path: str, old: str | None, new: str, context: int = 3) -> Diff:
    """The diff from ``old`` to ``new``; ``old is None`` means the file is being created."""
    created = old is None
    before = _split_lines(old or "")
    after = _split_lines(new)
    if before == after:
        return Diff(path, "", 0, 0, created=created)
    # The same matcher and grouping as difflib.unified_diff, so the hunks are the ones it makes.
    groups = list(difflib.SequenceMatcher(None, before, after).get_grouped_opcodes(context))
    changes = [op for group in groups for op in group if op[0] != "equal"]
    removed = sum(i2 - i1 for _, i1, i2, _, _ in changes)
    added = sum(j2 - j1 for _, _, _, j1, j2 in changes)
    body = itertools.chain.from_iterable(_hunk(group, before, after) for group in groups)
    unified, truncated = _cap(_headers(path, created), body)
    return Diff(path, unified, added, removed, created=created, truncated=truncated)


def _split_lines(text: str) -> list[str]:
    """Lines with their ``"\\n"`` kept; only the last may lack one (no final newline)."""
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


def _hunk(
    group: Sequence[tuple[str, int, int, int, int]], a: list[str], b: list[str]
) -> Iterator[str]:
    first, last = group[0], group[-1]
    yield f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@\n"
    for tag, i1, i2, j1, j2 in group:
        if tag == "equal":
            yield from _marked(" ", a[i1:i2])
            continue
        yield from _marked("-", a[i1:i2])
        yield from _marked("+", b[j1:j2])


def _range(start: int, stop: int) -> str:
    # Unified format quirk: an empty range names the line *before* it (0 for the top of a file).
    length = stop - start
    return f"{start + 1 if length else start},{length}"


def _marked(prefix: str, lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        if line.endswith("\n"):
            yield prefix + line
        else:
            yield prefix + line + "\n"
            yield NO_NEWLINE


def _headers(path: str, created: bool) -> list[str]:
    name = path.lstrip("/")
    return ["--- /dev/null\n" if created else f"--- a/{name}\n", f"+++ b/{name}\n"]


def _cap(headers: list[str], body: Iterable[str]) -> tuple[str, bool]:
    """Join whole lines up to MAX_DIFF_CHARS; lines past the cap are never even generated."""
    out: list[str] = []
    size = 0
    for line in itertools.chain(headers, body):
        size += len(line)
        if size > MAX_DIFF_CHARS:
            return "".join(out), True
        out.append(line)
    return "".join(out), False


# -- from the CLI's structuredPatch --------------------------------------------------------------


def from_structured_patch(path: str, hunks: Any) -> Diff | None:
    """The CLI's ``structuredPatch`` (jsdiff hunks) as a :class:`Diff`; ``None`` if malformed.

    Every field is checked (the CLI's output is untrusted JSON): counts are non-negative ints,
    ``lines`` are strings starting with ``' '``, ``'-'``, ``'+'`` or ``'\\'`` without an embedded
    newline, and the line counts agree with ``oldLines``/``newLines``. An empty list is a valid
    patch that changes nothing.
    """
    if not isinstance(hunks, list) or not all(_valid_hunk(h) for h in hunks):
        return None
    lines = [line for hunk in hunks for line in hunk["lines"]]
    added = sum(1 for line in lines if line.startswith("+"))
    removed = sum(1 for line in lines if line.startswith("-"))
    if not hunks:
        return Diff(path, "", 0, 0)
    body = itertools.chain.from_iterable(_structured_hunk(hunk) for hunk in hunks)
    unified, truncated = _cap(_headers(path, created=False), body)
    return Diff(path, unified, added, removed, truncated=truncated)


def _valid_hunk(hunk: Any) -> bool:
    if not isinstance(hunk, Mapping):
        return False
    if not all(_count(hunk.get(field)) for field in _HUNK_FIELDS):
        return False
    lines = hunk.get("lines")
    if not isinstance(lines, list) or not all(_valid_line(line) for line in lines):
        return False
    old = sum(1 for line in lines if line[0] in " -")
    new = sum(1 for line in lines if line[0] in " +")
    return bool(old == hunk["oldLines"] and new == hunk["newLines"])


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _valid_line(line: Any) -> bool:
    return isinstance(line, str) and line[:1] in _LINE_MARKS and "\n" not in line


def _structured_hunk(hunk: Mapping[str, Any]) -> Iterator[str]:
    # jsdiff stores an empty range's start one higher than the unified format writes it (its
    # formatPatch subtracts one); a start already written as 0 stays 0.
    old = _structured_range(hunk["oldStart"], hunk["oldLines"])
    new = _structured_range(hunk["newStart"], hunk["newLines"])
    yield f"@@ -{old} +{new} @@\n"
    for line in hunk["lines"]:
        yield line + "\n"


def _structured_range(start: int, length: int) -> str:
    return f"{start if length else max(start - 1, 0)},{length}"


# -- applying Edit / MultiEdit -------------------------------------------------------------------


def apply_edit(
    original: str, old_string: str, new_string: str, replace_all: bool = False
) -> str | None:
    """``original`` with ``old_string`` replaced, as the CLI's Edit tool would do it.

    ``None`` when ``old_string`` is not in the file, or occurs more than once without
    ``replace_all``: the CLI refuses both, so there is no change to show. An empty
    ``old_string`` only applies to an empty (new) file, where it means "write ``new_string``".
    The CLI matches LF text against a CRLF file (it edits with normalised line endings and writes
    CRLF back), so when the text is not found as is, it is tried with CRLF line endings.
    """
    if old_string == "":
        return new_string if original == "" else None
    replaced = _replace(original, old_string, new_string, replace_all)
    if replaced is None and "\r\n" in original and "\n" in old_string:
        replaced = _replace(original, _crlf(old_string), _crlf(new_string), replace_all)
    return replaced


def _replace(original: str, old: str, new: str, replace_all: bool) -> str | None:
    count = original.count(old)
    if count == 0 or (count > 1 and not replace_all):
        return None
    return original.replace(old, new) if replace_all else original.replace(old, new, 1)


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def _edit_of(value: Any) -> tuple[str, str, bool] | None:
    """``(old_string, new_string, replace_all)`` of one edit object, or ``None`` if malformed."""
    if not isinstance(value, Mapping):
        return None
    old, new = value.get("old_string"), value.get("new_string")
    if not isinstance(old, str) or not isinstance(new, str):
        return None
    return old, new, value.get("replace_all") is True


def _edits_of(name: str, input: Mapping[str, Any]) -> list[tuple[str, str, bool]] | None:
    if name == "Edit":
        edit = _edit_of(input)
        return None if edit is None else [edit]
    raw = input.get("edits")
    if name != "MultiEdit" or not isinstance(raw, list) or not raw:
        return None
    edits = [_edit_of(item) for item in raw]
    return None if any(edit is None for edit in edits) else [e for e in edits if e is not None]


def _apply_all(original: str | None, edits: list[tuple[str, str, bool]]) -> str | None:
    """Apply ``edits`` in order, each to the result of the one before; a missing file is empty."""
    text: str | None = original or ""
    for old, new, replace_all in edits:
        if text is None:
            return None
        text = apply_edit(text, old, new, replace_all)
    return text


def _path_of(input: Mapping[str, Any]) -> str | None:
    path = input.get("file_path")
    return path if isinstance(path, str) and path else None


# -- before and after a tool runs ----------------------------------------------------------------


def proposed(name: str, input: Mapping[str, Any], original: str | None) -> Diff | None:
    """What Write, Edit or MultiEdit would change, given the file's current ``original`` text
    (``None``: the file does not exist). ``None`` for other tools, malformed input, or an edit
    that does not apply (the CLI would refuse it)."""
    path = _path_of(input)
    if path is None:
        return None
    if name == "Write":
        content = input.get("content")
        return from_texts(path, original, content) if isinstance(content, str) else None
    edits = _edits_of(name, input)
    if edits is None:
        return None
    new = _apply_all(original, edits)
    return None if new is None else from_texts(path, original, new)


def from_result(name: str, input: Mapping[str, Any], result: Any) -> Diff | None:
    """What Write, Edit or MultiEdit changed, from the CLI's ``tool_use_result``.

    Prefers the CLI's own ``structuredPatch``; a created file is diffed from its ``content``;
    otherwise ``originalFile`` plus the edit(s) is diffed. ``None`` when nothing usable is there
    (a refusal's result is a string such as ``"Error: user said no"``).
    """
    if name not in ("Write", "Edit", "MultiEdit") or not isinstance(result, Mapping):
        return None
    path = _path_of(input) or _path_of({"file_path": result.get("filePath")})
    if path is None:
        return None
    if name == "Write" and result.get("type") == "create":
        content = _first_str(result.get("content"), input.get("content"))
        return None if content is None else from_texts(path, None, content)
    patched = from_structured_patch(path, result.get("structuredPatch"))
    if patched is not None and patched.unified:
        return patched
    rebuilt = _rebuild(name, input, result, path)
    return rebuilt if rebuilt is not None else patched


def _rebuild(
    name: str, input: Mapping[str, Any], result: Mapping[str, Any], path: str
) -> Diff | None:
    original = result.get("originalFile")
    if original is not None and not isinstance(original, str):
        return None
    if name == "Write":
        content = _first_str(result.get("content"), input.get("content"))
        if content is None or original is None:
            return None
        return from_texts(path, original, content)
    # An Edit's result repeats the edit as the CLI applied it; the input is the fallback.
    repeated = _result_edit(result) if name == "Edit" else None
    edits = [repeated] if repeated is not None else _edits_of(name, input)
    if edits is None:
        return None
    new = _apply_all(original, edits)
    return None if new is None else from_texts(path, original, new)


def _result_edit(result: Mapping[str, Any]) -> tuple[str, str, bool] | None:
    return _edit_of(
        {
            "old_string": result.get("oldString"),
            "new_string": result.get("newString"),
            "replace_all": result.get("replaceAll"),
        }
    )


def _first_str(*values: Any) -> str | None:
    return next((value for value in values if isinstance(value, str)), None)
