"""The package's layers, read from its import graph (static: every ``import`` in every module,
those inside functions and under ``TYPE_CHECKING`` included, since each is a dependency too).

* ``wire/`` is the bottom: it imports only ``wire/`` and ``errors``, and no I/O framework.
* No import cycle, between modules or between packages (``wire``, ``http``, ``config``, ...).
* A transport (``http``, ``quic``, and the next one) imports no other transport, and ``notify``
  imports none: a transport is an encoder plus a driver over the layers below it.
* The one converter is configured in one place (``wire.converter.make_converter``), not by
  whichever modules happened to be imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Final

import pytest

from sidecode_trio.bridge.remote import RemoteSession
from sidecode_trio.sessions.session import Remote, Session
from sidecode_trio.sessions.supervisor import SessionSupervisor
from sidecode_trio.wire import control
from sidecode_trio.wire import converter as wire
from sidecode_trio.wire import events as ev
from sidecode_trio.wire import snapshot as snap
from sidecode_trio.wire import tools as wt

PACKAGE = Path(__file__).resolve().parent.parent / "sidecode_trio"
TOP = PACKAGE.name
TRANSPORTS = frozenset({"http", "quic", "rtc", "webrtc", "p2p"})
WIRE_MAY_IMPORT = frozenset({"wire", "errors"})
IO_FRAMEWORKS = frozenset(
    {"trio", "quart", "quart_trio", "hypercorn", "aioquic", "httpx", "trio_websocket"}
)
CONVERTER_MUTATORS = frozenset(
    {
        "register_union",
        "register_structure_hook",
        "register_structure_hook_func",
        "register_structure_hook_factory",
        "register_unstructure_hook",
        "register_unstructure_hook_func",
        "register_unstructure_hook_factory",
        "configure_tagged_union",
    }
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


@cache
def _tree(module: str) -> ast.Module:
    return ast.parse(_modules()[module].read_text(), str(_modules()[module]))


def _imported(module: str) -> Iterator[str]:
    """Every module name ``module`` imports (absolute), wherever the import statement is."""
    path = _modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield target
            # ``from . import tools`` imports a module, not a name
            yield from (f"{target}.{alias.name}" for alias in node.names)


@cache
def _graph() -> dict[str, frozenset[str]]:
    """Module -> the package's modules it imports."""
    modules = _modules()
    return {
        module: frozenset(t for t in _imported(module) if t in modules and t != module)
        for module in modules
    }


def _area(module: str) -> str:
    """``sidecode_trio.wire.events`` -> ``wire``; a top-level module is its own area."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _is_parent(module: str, other: str) -> bool:
    return other.startswith(module + ".")


def test_the_walker_sees_every_kind_of_import() -> None:
    """Relative, absolute, in-function and TYPE_CHECKING imports all count (checked on modules
    known to hold each kind), so the tests below cannot pass by not seeing an import."""
    graph = _graph()
    assert len(graph) > 50
    assert f"{TOP}.wire.events" in graph[f"{TOP}.wire.tools"]  # from .events import FileDiff
    assert f"{TOP}.sessions.registry" in graph[f"{TOP}.bridge.remote"]  # under TYPE_CHECKING
    assert f"{TOP}.views.tools" in graph[f"{TOP}.views.watch"]  # from . import tools
    in_functions = [
        (module, node)
        for module in graph
        for function in ast.walk(_tree(module))
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
        if isinstance(node, ast.Import | ast.ImportFrom)
    ]
    assert in_functions, "no function-level import found: the walk would miss them"


def test_no_import_cycle_between_modules() -> None:
    graph = _graph()
    # A package's __init__ re-exporting its own children is not a cycle between layers.
    cycles = [
        c for c in _cycles(graph) if not all(any(_is_parent(m, o) for o in c) or any(
            _is_parent(o, m) for o in c) for m in c)
    ]  # fmt: skip
    assert cycles == []


def test_no_import_cycle_between_packages() -> None:
    areas: dict[str, set[str]] = {}
    why: dict[tuple[str, str], str] = {}
    for module, imported in _graph().items():
        for target in imported:
            a, b = _area(module), _area(target)
            if a and b and a != b:
                areas.setdefault(a, set()).add(b)
                areas.setdefault(b, set())
                why.setdefault((a, b), f"{module} -> {target}")
    graph = {area: frozenset(deps) for area, deps in areas.items()}
    cycles = _cycles(graph)
    edges = [why[(a, b)] for c in cycles for a in c for b in c if (a, b) in why]
    assert cycles == [], edges


def test_wire_imports_nothing_above_it() -> None:
    upward = [
        f"{module} -> {target}"
        for module, imported in _graph().items()
        if _area(module) == "wire"
        for target in imported
        if _area(target) not in WIRE_MAY_IMPORT
    ]
    assert upward == []
    frameworks = [
        f"{module} -> {name}"
        for module in _graph()
        if _area(module) == "wire"
        for name in _imported(module)
        if name.split(".")[0] in IO_FRAMEWORKS
    ]
    assert frameworks == []


def test_no_transport_imports_another() -> None:
    crossing = [
        f"{module} -> {target}"
        for module, imported in _graph().items()
        for target in imported
        if {_area(module), _area(target)} <= TRANSPORTS and _area(module) != _area(target)
    ]
    assert crossing == []


#: the calls that subscribe to the event log or the session list (Operations', EventLog's,
#: the registry's), and the log's feed classes: only the feed package uses them
SUBSCRIBING: Final = frozenset({"subscribe", "subscribe_sessions", "subscribe_list"})
FEED_INTERNALS: Final = frozenset({"Subscription", "Replay", "SnapshotRead"})
SUBSCRIBERS_BELOW: Final = frozenset({"ops", "eventlog", "sessions"})  # they define them
#: what an Operations, EventLog or SessionRegistry is called (other things have a ``subscribe``
#: of their own: MQTT clients, push subscriptions, the Remote Control bridge)
LOG_HOLDERS: Final = frozenset({"ops", "_ops", "log", "_log", "registry", "_registry"})


def _receiver(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def test_the_feed_is_the_only_subscriber_of_the_event_log() -> None:
    """No transport (nor anything above the feed) writes its own catch-up + live loop: every
    call that subscribes is in feed/, and no transport names the log's subscription classes."""
    outside = [
        f"{module}:{node.lineno} {node.func.attr}"
        for module in _graph()
        if _area(module) not in {"feed", *SUBSCRIBERS_BELOW}
        for node in ast.walk(_tree(module))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in SUBSCRIBING
        and _receiver(node.func.value) in LOG_HOLDERS
    ]
    assert outside == []
    named = [
        f"{module} -> {alias.name}"
        for module in _graph()
        if _area(module) in TRANSPORTS
        for node in ast.walk(_tree(module))
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("eventlog.log")
        for alias in node.names
        if alias.name in FEED_INTERNALS
    ]
    assert named == []
    feed = f"{TOP}.feed"
    assert not [m for m in _graph()[f"{feed}.session"] if _area(m) in TRANSPORTS]


def test_only_http_imports_the_http_framework() -> None:
    """WebTransport (and any later transport) dispatches into the operation table
    (ops/front.py), never through Quart's request machinery."""
    users = sorted(
        f"{module} -> {name}"
        for module in _graph()
        if _area(module) not in {"http", "web"} and module != f"{TOP}.daemon"  # it configures
        for name in _imported(module)  # the HTTP server it starts
        if name.split(".")[0] in {"quart", "quart_trio", "hypercorn", "werkzeug"}
    )
    assert users == []


def test_notify_imports_no_transport() -> None:
    crossing = [
        f"{module} -> {target}"
        for module, imported in _graph().items()
        if _area(module) == "notify"
        for target in imported
        if _area(target) in TRANSPORTS
    ]
    assert crossing == []


def test_the_converter_is_configured_in_one_place() -> None:
    """No module but wire/converter.py registers hooks or unions: the converter is built by
    make_converter(), never changed by importing something."""
    outside = [
        f"{module}:{node.lineno} {node.func.attr if isinstance(node.func, ast.Attribute) else ''}"
        f"{node.func.id if isinstance(node.func, ast.Name) else ''}"
        for module in _graph()
        if module != f"{TOP}.wire.converter"
        for node in ast.walk(_tree(module))
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Attribute) and node.func.attr in CONVERTER_MUTATORS)
            or (isinstance(node.func, ast.Name) and node.func.id in CONVERTER_MUTATORS)
        )
    ]
    assert outside == []


@pytest.mark.parametrize(
    ("data", "cls", "expected"),
    [
        ({"type": "turn.started", "turn_id": "t1"}, ev.Event, ev.TurnStarted("t1")),
        ({"type": "error", "code": "c", "message": "m"}, snap.Item, snap.ErrorItem("c", "m")),
        ({"type": "web_search", "query": "q"}, wt.ToolDetail, wt.WebSearch("q")),
        ({"type": "unsubscribe", "id": 3}, control.ClientMessage, control.Unsubscribe(3)),
    ],
)
def test_a_new_converter_knows_every_union(
    data: dict[str, object], cls: type[object], expected: object
) -> None:
    """make_converter() alone (no other module's import) reads and writes every tagged union,
    with the tag first, as the module-level converter does."""
    fresh = wire.make_converter()
    assert fresh is not wire.converter
    assert fresh.structure(data, cls) == expected
    assert fresh.unstructure(expected, unstructure_as=cls) == wire.converter.unstructure(expected)
    assert next(iter(fresh.unstructure(expected, unstructure_as=cls))) == "type"


def _sessions_satisfy_the_protocols(
    local: SessionSupervisor, remote: RemoteSession
) -> tuple[Session, Session, Remote]:
    # Not a test: mypy (strict, over tests/ too) checks that both kinds of session satisfy the
    # protocols the registry holds them by, which no runtime check of a Protocol can.
    return local, remote, remote
