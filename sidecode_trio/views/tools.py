"""What a tool call is, in words a person reads on a phone: typed details, titles, summaries.

The CLI's tool input and ``tool_use_result`` are untrusted JSON (missing keys, ints where strings
are expected, strings instead of objects). Every function here takes them as they come, treats a
value of the wrong type as missing, and never raises.

* :func:`detail_of` turns the input into one frozen :class:`ToolDetail` per common tool (tagged by
  ``type`` on the wire through the one converter); anything else is :class:`Unknown`.
* :func:`started_title` / :func:`finished_title` are one-line titles ("Running `pytest -q`",
  "Edited app.py (+3 \N{MINUS SIGN}1)", with a real minus sign). A failure reads
  ``Failed: <action>``, a refusal ``Refused: <action>``, where ``<action>`` is the imperative
  that :func:`permission_summary` also starts with ("Run `pytest -q`", "Edit app.py"), so a
  prompt, its refusal and its failure read alike.
* Commands are cut to their first line and :data:`MAX_TITLE_CHARS`, files are named by their
  basename (the full path stays in the detail), URLs by their host.
* :func:`suggestion_label` words the CLI's ``permission_suggestions`` as button labels.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from ..wire.tools import (
    AskUserQuestion,
    Bash,
    Edit,
    ExitPlanMode,
    Glob,
    Grep,
    MultiEdit,
    NotebookEdit,
    Option,
    Question,
    Read,
    Task,
    Todo,
    TodoWrite,
    ToolDetail,
    Unknown,
    WebFetch,
    WebSearch,
    Write,
)
from ..wire.tools import ToolView as ToolView  # re-exported: callers name it tools.ToolView
from . import diff as diffs
from .diff import Diff

MAX_TITLE_CHARS: Final = 80
MAX_FIELD_CHARS: Final = 150  #: longer values are left out of Unknown.fields
MAX_UNKNOWN_FIELDS: Final = 8
GENERIC_SUGGESTION: Final = "Apply the suggested permission change"
MINUS: Final = "\N{MINUS SIGN}"  # as wide as the plus in "(+3 / -1)", unlike a hyphen


# -- lenient readers of untrusted JSON -----------------------------------------------------------


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def line_count(text: str) -> int:
    """Lines as an editor counts them: a final line without a newline still counts."""
    return text.count("\n") + (1 if text and not text.endswith("\n") else 0)


# -- building details ----------------------------------------------------------------------------


def _bash(input: Mapping[str, Any]) -> Bash:
    return Bash(
        command=_str(input.get("command")),
        description=_str(input.get("description")),
        timeout=_opt_int(input.get("timeout")),
        background=input.get("run_in_background") is True,
    )


def _read(input: Mapping[str, Any]) -> Read:
    return Read(
        _str(input.get("file_path")), _opt_int(input.get("offset")), _opt_int(input.get("limit"))
    )


def _write(input: Mapping[str, Any]) -> Write:
    content = _str(input.get("content"))
    return Write(_str(input.get("file_path")), chars=len(content), lines=line_count(content))


def _edit(input: Mapping[str, Any]) -> Edit:
    return Edit(_str(input.get("file_path")), replace_all=input.get("replace_all") is True)


def _multi_edit(input: Mapping[str, Any]) -> MultiEdit:
    return MultiEdit(_str(input.get("file_path")), edits=len(_list(input.get("edits"))))


def _grep(input: Mapping[str, Any]) -> Grep:
    return Grep(
        pattern=_str(input.get("pattern")),
        path=_opt_str(input.get("path")),
        glob=_opt_str(input.get("glob")),
        output_mode=_opt_str(input.get("output_mode")),
    )


def _glob(input: Mapping[str, Any]) -> Glob:
    return Glob(_str(input.get("pattern")), _opt_str(input.get("path")))


def _web_fetch(input: Mapping[str, Any]) -> WebFetch:
    return WebFetch(_str(input.get("url")), _str(input.get("prompt")))


def _web_search(input: Mapping[str, Any]) -> WebSearch:
    return WebSearch(_str(input.get("query")))


def _task(input: Mapping[str, Any]) -> Task:
    return Task(
        description=_str(input.get("description")),
        prompt=_str(input.get("prompt")),
        subagent_type=_opt_str(input.get("subagent_type")),
    )


def _todo_write(input: Mapping[str, Any]) -> TodoWrite:
    todos = [
        Todo(_str(item.get("content")), _str(item.get("status")), _str(item.get("activeForm")))
        for item in _list(input.get("todos"))
        if isinstance(item, Mapping)
    ]
    return TodoWrite(todos)


def _option(value: Mapping[str, Any]) -> Option:
    return Option(_str(value.get("label")), _str(value.get("description")))


def _question(value: Mapping[str, Any]) -> Question:
    return Question(
        question=_str(value.get("question")),
        header=_str(value.get("header")),
        multi_select=value.get("multiSelect") is True,
        options=[_option(o) for o in _list(value.get("options")) if isinstance(o, Mapping)],
    )


def _ask(input: Mapping[str, Any]) -> AskUserQuestion:
    questions = _list(input.get("questions"))
    return AskUserQuestion([_question(q) for q in questions if isinstance(q, Mapping)])


def _notebook_edit(input: Mapping[str, Any]) -> NotebookEdit:
    return NotebookEdit(
        notebook_path=_str(input.get("notebook_path")),
        edit_mode=_opt_str(input.get("edit_mode")) or "replace",
        cell_id=_opt_str(input.get("cell_id")),
        cell_type=_opt_str(input.get("cell_type")),
    )


def _exit_plan_mode(input: Mapping[str, Any]) -> ExitPlanMode:
    return ExitPlanMode(_str(input.get("plan")))


def _unknown(name: str, input: Mapping[str, Any]) -> Unknown:
    fields: dict[str, str] = {}
    for key, value in input.items():
        text = _scalar_text(value)
        if isinstance(key, str) and text is not None and len(text) <= MAX_FIELD_CHARS:
            fields[key] = text
        if len(fields) == MAX_UNKNOWN_FIELDS:
            break
    return Unknown(name, fields)


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        try:
            return json.dumps(value)
        except ValueError:  # an int too long to print (Python's 4300-digit limit)
            return None
    return None


_BUILDERS: Final[dict[str, Callable[[Mapping[str, Any]], ToolDetail]]] = {
    "Bash": _bash,
    "Read": _read,
    "Write": _write,
    "Edit": _edit,
    "MultiEdit": _multi_edit,
    "Grep": _grep,
    "Glob": _glob,
    "WebFetch": _web_fetch,
    "WebSearch": _web_search,
    "Task": _task,
    "Agent": _task,
    "TodoWrite": _todo_write,
    "AskUserQuestion": _ask,
    "NotebookEdit": _notebook_edit,
    "ExitPlanMode": _exit_plan_mode,
}


def detail_of(name: str, input: Mapping[str, Any]) -> ToolDetail:
    """The typed detail of a call of tool ``name``; :class:`Unknown` for tools not listed."""
    fields = input if isinstance(input, Mapping) else {}
    builder = _BUILDERS.get(name) if isinstance(name, str) else None
    return builder(fields) if builder is not None else _unknown(_str(name), fields)


# -- words ---------------------------------------------------------------------------------------


def clip(text: str, limit: int = MAX_TITLE_CHARS) -> str:
    """The first line of ``text``, at most ``limit`` characters; "…" marks anything cut."""
    whole = text.strip()
    first = whole.splitlines()[0].rstrip() if whole else ""  # any line break: \r, U+2028, ...
    cut = first != whole
    if len(first) > limit:
        first, cut = first[: limit - 1].rstrip(), True
    return first + "…" if cut else first


def _code(text: str) -> str:
    return f"`{clip(text)}`"


def basename(path: str) -> str:
    """The file's name without its directories (either slash); "a file" when there is none."""
    return clip(re.split(r"[\\/]", path.rstrip("/\\"))[-1]) or "a file"


def host(url: str) -> str:
    try:
        name = urlsplit(url).hostname
    except ValueError:  # e.g. an unbalanced "[" in the host part
        name = None
    return name or clip(url) or "a page"


def display_name(name: str) -> str:
    """A tool name for people: ``mcp__github__create_issue`` reads ``github: create_issue``."""
    if name.startswith("mcp__"):
        server, _, tool = name[len("mcp__") :].partition("__")
        return clip(f"{server}: {tool}" if tool else server or name)
    return clip(name) or "a tool"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _action(detail: ToolDetail) -> str:
    """The imperative of a call: what approving it does, and what a failure failed to do."""
    match detail:
        case Bash(command=command):
            return f"Run {_code(command)}" if command.strip() else "Run a command"
        case Read(file_path=path):
            return f"Read {basename(path)}"
        case Write(file_path=path):
            return f"Write {basename(path)}"
        case Edit(file_path=path) | MultiEdit(file_path=path):
            return f"Edit {basename(path)}"
        case NotebookEdit(notebook_path=path):
            return f"Edit {basename(path)}"
        case Grep(pattern=pattern):
            return f"Search for {_code(pattern)}"
        case Glob(pattern=pattern):
            return f"Find {_code(pattern)}"
        case WebFetch(url=url):
            return f"Fetch {host(url)}"
        case WebSearch(query=query):
            return f"Search the web for {clip(query)}" if query.strip() else "Search the web"
        case Task(description=description):
            return f"Start agent: {clip(description)}" if description.strip() else "Start an agent"
        case TodoWrite():
            return "Update the todo list"
        case AskUserQuestion(questions=questions):
            first = _first_question(questions)
            return f"Answer: {clip(first)}" if first else "Answer a question"
        case ExitPlanMode():
            return "Leave plan mode"
        case Unknown(name=name):
            return f"Use {display_name(name)}"
    return "Use a tool"


def _first_question(questions: list[Question]) -> str:
    return questions[0].question.strip() if questions else ""


def started_title(name: str, input: Mapping[str, Any]) -> str:
    """The title of a call that is running: "Running `pytest -q`", "Editing app.py"."""
    detail = detail_of(name, input)
    match detail:
        case Bash(command=command, background=background):
            if not command.strip():
                return "Running a command"
            return f"Starting {_code(command)}" if background else f"Running {_code(command)}"
        case Read(file_path=path):
            return f"Reading {basename(path)}"
        case Write(file_path=path):
            return f"Writing {basename(path)}"
        case Edit(file_path=path) | MultiEdit(file_path=path):
            return f"Editing {basename(path)}"
        case NotebookEdit(notebook_path=path):
            return f"Editing {basename(path)}"
        case Grep(pattern=pattern):
            return f"Searching for {_code(pattern)}"
        case Glob(pattern=pattern):
            return f"Finding {_code(pattern)}"
        case WebFetch(url=url):
            return f"Fetching {host(url)}"
        case WebSearch(query=query):
            return f"Searching the web for {clip(query)}" if query.strip() else "Searching the web"
        case Task(description=description):
            return (
                f"Starting agent: {clip(description)}"
                if description.strip()
                else "Starting an agent"
            )
        case TodoWrite():
            return "Updating the todo list"
        case AskUserQuestion(questions=questions):
            return (
                "Asking a question" if len(questions) < 2 else f"Asking {len(questions)} questions"
            )
        case ExitPlanMode():
            return "Presenting a plan"
        case Unknown(name=name):
            return f"Using {display_name(name)}"
    return "Using a tool"


def permission_summary(name: str, input: Mapping[str, Any]) -> str:
    """What approving the request does: "Run `rm -rf build`", "Write notes.txt (12 lines)"."""
    detail = detail_of(name, input)
    match detail:
        case Bash(background=True) as bash if bash.command.strip():
            return f"{_action(bash)} in the background"
        case Write(file_path=path, lines=lines):
            return f"Write {basename(path)} ({_plural(lines, 'line')})"
        case Edit(file_path=path, replace_all=True):
            return f"Edit {basename(path)} (every occurrence)"
        case MultiEdit(file_path=path, edits=edits) if edits > 1:
            return f"Edit {basename(path)} ({edits} edits)"
        case WebFetch(url=url) if url.strip():
            return f"Fetch {clip(url)}"
        case ExitPlanMode(plan=plan) if _plan_line(plan):
            return f"Leave plan mode: {clip(_plan_line(plan))}"
    return _action(detail)


def _plan_line(plan: str) -> str:
    """A plan's first meaningful line, without its heading marks."""
    for line in plan.splitlines():
        text = line.strip().lstrip("#").strip()
        if text:
            return text
    return ""


# -- finished calls ------------------------------------------------------------------------------


REFUSAL_PREFIX: Final = "The user doesn't want to proceed"
INTERRUPT_REFUSAL: Final = "User rejected tool use"


def looks_refused(result: Any, output: str) -> bool:
    """Whether a failed call was refused rather than run.

    The CLI words a refusal as "The user doesn't want to proceed…" (interrupt while asking) or
    answers with ``tool_use_result`` ``"Error: <the deny message>"`` while the model sees just the
    message; a tool that ran and failed instead shows more than that (``<tool_use_error>`` tags,
    an exit code). A caller that saw the permission answer passes ``refused=True`` instead.
    """
    if output.startswith(REFUSAL_PREFIX) or result == INTERRUPT_REFUSAL:
        return True
    return isinstance(result, str) and bool(output) and result == f"Error: {output}"


def finished_title(
    name: str,
    input: Mapping[str, Any],
    result: Any,
    is_error: bool,
    output: str = "",
    *,
    refused: bool = False,
    diff: Diff | None = None,
) -> str:
    """The title of a finished call: "Ran `pytest -q`", "Edited app.py (+3 \N{MINUS SIGN}1)",
    "Failed: Run `pytest -q`", "Refused: Edit app.py". ``diff``: the call's
    :func:`diffs.from_result`, when the caller has it already (it is not computed twice)."""
    detail = detail_of(name, input)
    output = _str(output)
    if refused or (is_error and looks_refused(result, output)):
        return f"Refused: {_action(detail)}"
    if is_error:
        return f"Failed: {_action(detail)}"
    return _done(detail, name, input, result, output, diff)


def _done(
    detail: ToolDetail,
    name: str,
    input: Mapping[str, Any],
    result: Any,
    output: str,
    diff: Diff | None,
) -> str:
    outcome = _map(result)
    match detail:
        case Bash(command=command, background=background):
            if not command.strip():
                return "Ran a command"
            if background:
                return f"Started {_code(command)} in the background"
            return f"Ran {_code(command)}"
        case Read(file_path=path):
            return _counted(f"Read {basename(path)}", _read_lines(outcome, output), "line")
        case Write():
            return _wrote(detail, outcome)
        case Edit(file_path=path) | MultiEdit(file_path=path):
            return _edited(basename(path), diff or diffs.from_result(name, input, result))
        case NotebookEdit(notebook_path=path):
            return f"Edited {basename(path)}"
        case Grep(pattern=pattern):
            return _searched(pattern, outcome)
        case Glob(pattern=pattern):
            return _found(pattern, outcome)
        case WebFetch(url=url):
            return f"Fetched {host(url)}"
        case WebSearch(query=query):
            return f"Searched the web for {clip(query)}" if query.strip() else "Searched the web"
        case Task(description=description):
            if not description.strip():
                return "Agent finished"
            return f"Finished agent: {clip(description)}"
        case TodoWrite(todos=todos):
            return _todos(todos)
        case AskUserQuestion():
            answers = _answers(outcome, output)
            return f"Answered: {clip(', '.join(answers))}" if answers else "Answered"
        case ExitPlanMode():
            return "Left plan mode"
        case Unknown(name=tool):
            return f"Used {display_name(tool)}"
    return "Done"


def _counted(title: str, count: int | None, noun: str) -> str:
    return title if count is None else f"{title} ({_plural(count, noun)})"


_NUMBERED_LINE: Final = re.compile(r"^\s*\d+[→\t]", re.MULTILINE)


def _read_lines(outcome: Mapping[str, Any], output: str) -> int | None:
    """Lines read: the result's ``file.numLines``, else the line-numbered lines of the output."""
    lines = _opt_int(_map(outcome.get("file")).get("numLines"))
    if lines is not None:
        return lines
    numbered = len(_NUMBERED_LINE.findall(output))
    return numbered or None


def _wrote(detail: Write, outcome: Mapping[str, Any]) -> str:
    content = outcome.get("content")
    lines = line_count(content) if isinstance(content, str) else detail.lines
    name = basename(detail.file_path)
    if outcome.get("type") == "create":
        return f"Created {name} (+{lines})"
    return f"Wrote {name} ({_plural(lines, 'line')})"


def _edited(name: str, diff: Diff | None) -> str:
    if diff is None:
        return f"Edited {name}"
    return f"Edited {name} (+{diff.added} {MINUS}{diff.removed})"


def _searched(pattern: str, outcome: Mapping[str, Any]) -> str:
    title = f"Searched for {_code(pattern)}"
    mode = outcome.get("mode")
    if mode == "content":
        return _counted(title, _opt_int(outcome.get("numLines")), "line")
    if mode == "count":
        return _counted(title, _opt_int(outcome.get("numMatches")), "match")
    return _counted(title, _opt_int(outcome.get("numFiles")), "file")


def _found(pattern: str, outcome: Mapping[str, Any]) -> str:
    count = _opt_int(outcome.get("numFiles"))
    filenames = outcome.get("filenames")
    if count is None and isinstance(filenames, list):
        count = len(filenames)
    if count is None:
        return f"Searched for {_code(pattern)}"
    return "Found no files" if count == 0 else f"Found {_plural(count, 'file')}"


def _todos(todos: list[Todo]) -> str:
    if not todos:
        return "Cleared the todo list"
    done = sum(1 for todo in todos if todo.status == "completed")
    return f"Updated todos ({done}/{len(todos)} done)"


_ANSWER_IN_OUTPUT: Final = re.compile(r'"[^"]*"="([^"]*)"')


def _answers(outcome: Mapping[str, Any], output: str) -> list[str]:
    """The chosen labels: the result's ``answers`` map, else parsed from the model's text."""
    answers: list[str] = []
    for value in _map(outcome.get("answers")).values():
        if isinstance(value, str):
            answers.append(value)
        elif isinstance(value, list):
            answers.extend(item for item in value if isinstance(item, str))
    return answers or _ANSWER_IN_OUTPUT.findall(output)


# -- one call as a whole -------------------------------------------------------------------------


def describe(
    tool_use_id: str,
    name: str,
    input: Mapping[str, Any],
    *,
    status: str = "running",
    output: str = "",
    result: Any = None,
    is_error: bool = False,
    truncated: bool = False,
    refused: bool = False,
    diff: Diff | None = None,
) -> ToolView:
    """The view of one call. ``is_error`` (or ``refused``) makes a finished call ``failed``; the
    diff comes from the CLI's result, so only a completed Write/Edit/MultiEdit has one."""
    failed = status != "running" and (is_error or refused or status == "failed")
    if failed:
        status = "failed"
    if status == "completed" and diff is None:
        diff = diffs.from_result(name, input, result)
    elif status != "completed":
        diff = None
    if status == "running":
        title = started_title(name, input)
    else:
        title = finished_title(name, input, result, failed, output, refused=refused, diff=diff)
    return ToolView(
        tool_use_id,
        name,
        title,
        detail_of(name, input),
        status,
        diff=diff,
        output=output,
        truncated=truncated,
    )


# -- permission suggestions ----------------------------------------------------------------------


_SCOPES: Final[dict[str, tuple[bool, str]]] = {
    # destination -> (kept after this session, how the label says where)
    "session": (False, " for this session"),
    "cliArg": (False, " for this session"),
    "localSettings": (True, " in this project"),
    "projectSettings": (True, " in this project"),
    "userSettings": (True, ""),
}
_VERBS: Final = {"allow": "allow", "deny": "deny", "ask": "ask before"}
_STOPPING: Final = {"allow": "allowing", "deny": "denying", "ask": "asking before"}


def suggestion_label(suggestion: Any) -> str:
    """A button label for one of the CLI's ``permission_suggestions``.

    "Always allow `git *` in this project" (local or project settings), "Always allow `git *`"
    (user settings), "Allow `git *` for this session", "Switch to acceptEdits for this session",
    "Allow access to /w for this session". Anything not understood gets a generic label that
    still says a permission change will be applied.
    """
    if not isinstance(suggestion, Mapping):
        return GENERIC_SUGGESTION
    kind = suggestion.get("type")
    label = _SUGGESTION_LABELS.get(kind) if isinstance(kind, str) else None
    return (label(suggestion) if label is not None else None) or GENERIC_SUGGESTION


def _scope(suggestion: Mapping[str, Any]) -> tuple[bool, str]:
    destination = suggestion.get("destination")
    return _SCOPES.get(destination, (False, "")) if isinstance(destination, str) else (False, "")


def _rules_text(rules: Any) -> str | None:
    parts = [_rule_text(rule) for rule in _list(rules)]
    words = [part for part in parts if part]
    return clip(", ".join(words)) if words else None


def _rule_text(rule: Any) -> str | None:
    rule = _map(rule)
    tool, content = _opt_str(rule.get("toolName")), _opt_str(rule.get("ruleContent"))
    if content is None:
        return tool
    # Bash rules are commands; other tools' rules need the tool's name to mean anything.
    return f"`{content}`" if tool in (None, "Bash") else f"{tool} `{content}`"


def _add_rules(suggestion: Mapping[str, Any]) -> str | None:
    rules, verb = _rules_text(suggestion.get("rules")), _VERBS.get(_str(suggestion.get("behavior")))
    if rules is None or verb is None:
        return None
    kept, where = _scope(suggestion)
    return f"Always {verb} {rules}{where}" if kept else f"{verb.capitalize()} {rules}{where}"


def _replace_rules(suggestion: Mapping[str, Any]) -> str | None:
    rules, behavior = _rules_text(suggestion.get("rules")), _str(suggestion.get("behavior"))
    if rules is None or behavior not in _VERBS:
        return None
    return f"Replace the {behavior} rules with {rules}{_scope(suggestion)[1]}"


def _remove_rules(suggestion: Mapping[str, Any]) -> str | None:
    rules = _rules_text(suggestion.get("rules"))
    stopping = _STOPPING.get(_str(suggestion.get("behavior")))
    if rules is None or stopping is None:
        return None
    return f"Stop {stopping} {rules}{_scope(suggestion)[1]}"


def _set_mode(suggestion: Mapping[str, Any]) -> str | None:
    mode = _opt_str(suggestion.get("mode"))
    return None if mode is None else f"Switch to {clip(mode)}{_scope(suggestion)[1]}"


def _directories_text(suggestion: Mapping[str, Any]) -> str | None:
    directories = [d for d in _list(suggestion.get("directories")) if isinstance(d, str) and d]
    return clip(", ".join(directories)) if directories else None


def _add_directories(suggestion: Mapping[str, Any]) -> str | None:
    directories = _directories_text(suggestion)
    if directories is None:
        return None
    kept, where = _scope(suggestion)
    return f"{'Always allow' if kept else 'Allow'} access to {directories}{where}"


def _remove_directories(suggestion: Mapping[str, Any]) -> str | None:
    directories = _directories_text(suggestion)
    return None if directories is None else f"Remove access to {directories}{_scope(suggestion)[1]}"


_SUGGESTION_LABELS: Final[dict[str, Callable[[Mapping[str, Any]], str | None]]] = {
    "addRules": _add_rules,
    "replaceRules": _replace_rules,
    "removeRules": _remove_rules,
    "setMode": _set_mode,
    "addDirectories": _add_directories,
    "removeDirectories": _remove_directories,
}
