"""The tool-call views' wire classes: typed tool details and one call as a whole.

What a client receives about a tool call (``ToolStarted.detail``, ``GET .../tools/{id}``). The
projection from the CLI's untrusted JSON to these classes is ``views/tools.py``; the classes live
here, at the bottom layer, so the OpenAPI and JSON Schema generators and the converter read them
without importing the projection. :class:`ToolDetail` is a tagged union (``type``), configured
with the others in :func:`sidecode_trio.wire.converter.make_converter`.
"""

from __future__ import annotations

from typing import ClassVar

import attrs

from . import share_repr
from .events import FileDiff

# -- typed details -------------------------------------------------------------------------------


@attrs.frozen(repr=False)
class ToolDetail:
    """Base of the typed tool details; the ``type`` tag tells them apart on the wire."""

    TYPE: ClassVar[str] = ""


@attrs.frozen(repr=False)
class Bash(ToolDetail):
    TYPE: ClassVar[str] = "bash"
    command: str
    description: str = ""
    timeout: int | None = None  #: milliseconds, as the CLI takes it
    background: bool = False


@attrs.frozen(repr=False)
class Read(ToolDetail):
    TYPE: ClassVar[str] = "read"
    file_path: str
    offset: int | None = None
    limit: int | None = None


@attrs.frozen(repr=False)
class Write(ToolDetail):
    TYPE: ClassVar[str] = "write"
    file_path: str
    chars: int
    lines: int


@attrs.frozen(repr=False)
class Edit(ToolDetail):
    TYPE: ClassVar[str] = "edit"
    file_path: str
    replace_all: bool = False


@attrs.frozen(repr=False)
class MultiEdit(ToolDetail):
    TYPE: ClassVar[str] = "multi_edit"
    file_path: str
    edits: int


@attrs.frozen(repr=False)
class Grep(ToolDetail):
    TYPE: ClassVar[str] = "grep"
    pattern: str
    path: str | None = None
    glob: str | None = None
    output_mode: str | None = None


@attrs.frozen(repr=False)
class Glob(ToolDetail):
    TYPE: ClassVar[str] = "glob"
    pattern: str
    path: str | None = None


@attrs.frozen(repr=False)
class WebFetch(ToolDetail):
    TYPE: ClassVar[str] = "web_fetch"
    url: str
    prompt: str = ""


@attrs.frozen(repr=False)
class WebSearch(ToolDetail):
    TYPE: ClassVar[str] = "web_search"
    query: str


@attrs.frozen(repr=False)
class Task(ToolDetail):
    """A subagent (the tool is called ``Task`` or ``Agent`` depending on the CLI version)."""

    TYPE: ClassVar[str] = "task"
    description: str
    prompt: str = ""
    subagent_type: str | None = None


@attrs.frozen(repr=False)
class Todo:
    content: str
    status: str  #: "pending" | "in_progress" | "completed" (open set)
    active_form: str = ""


@attrs.frozen(repr=False)
class TodoWrite(ToolDetail):
    TYPE: ClassVar[str] = "todo_write"
    todos: list[Todo] = attrs.field(factory=list)


@attrs.frozen(repr=False)
class Option:
    label: str
    description: str = ""


@attrs.frozen(repr=False)
class Question:
    question: str
    header: str = ""
    multi_select: bool = False
    options: list[Option] = attrs.field(factory=list)


@attrs.frozen(repr=False)
class AskUserQuestion(ToolDetail):
    TYPE: ClassVar[str] = "ask_user_question"
    questions: list[Question] = attrs.field(factory=list)


@attrs.frozen(repr=False)
class NotebookEdit(ToolDetail):
    TYPE: ClassVar[str] = "notebook_edit"
    notebook_path: str
    edit_mode: str = "replace"
    cell_id: str | None = None
    cell_type: str | None = None


@attrs.frozen(repr=False)
class ExitPlanMode(ToolDetail):
    """The model asks to leave plan mode with ``plan``; approving it starts the work."""

    TYPE: ClassVar[str] = "exit_plan_mode"
    plan: str


@attrs.frozen(repr=False)
class Unknown(ToolDetail):
    """Any other tool (MCP tools included): its short scalar fields, as text."""

    TYPE: ClassVar[str] = "unknown"
    name: str
    fields: dict[str, str] = attrs.field(factory=dict)


TOOL_DETAIL_CLASSES: dict[str, type[ToolDetail]] = {
    cls.TYPE: cls
    for cls in (
        Bash,
        Read,
        Write,
        Edit,
        MultiEdit,
        Grep,
        Glob,
        WebFetch,
        WebSearch,
        Task,
        TodoWrite,
        AskUserQuestion,
        NotebookEdit,
        ExitPlanMode,
        Unknown,
    )
}


@attrs.frozen(repr=False)
class ToolView:
    """One tool call as a client shows it."""

    tool_use_id: str
    name: str
    title: str  #: one line
    detail: ToolDetail
    status: str  #: "running" | "completed" | "failed"
    diff: FileDiff | None = None
    output: str = ""
    truncated: bool = False  #: ``output`` was cut; the full text is fetchable elsewhere


share_repr(globals())  # one __repr__ for all, not one compiled per class (see __init__)
