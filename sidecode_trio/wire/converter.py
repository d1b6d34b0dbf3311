"""The one cattrs converter: wire messages, stored events and config all go through it.

Messages are frozen attrs classes. Tagged unions (events, transcript items, tool details, the
WebTransport client messages) carry their tag in a ``type`` field that is a ``ClassVar`` on the
class; :func:`make_converter` configures every one of them in one place (:func:`register_union`
writes that tag and picks the class by it when reading), and :data:`converter` is built from it
once, at import: no module changes it afterwards. Errors from cattrs are flattened into one
readable line with the JSON path of the bad value (``bad value @ $.port: expected int``).
"""

from __future__ import annotations

import enum
import json
import re
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import cattrs
from cattrs.cols import list_structure_factory
from cattrs.errors import ClassValidationError, IterableValidationError
from cattrs.gen import make_dict_unstructure_fn
from cattrs.v import transform_error

from .control import CLIENT_MESSAGES, ClientMessage
from .events import EVENT_CLASSES, Event
from .signaling import SIGNALING_CLASSES, SignalingMessage
from .snapshot import ITEM_CLASSES, Item
from .tools import TOOL_DETAIL_CLASSES, ToolDetail

T = TypeVar("T")


def _strict(value: Any, kind: type[Any] | tuple[type[Any], ...], name: str) -> Any:
    # cattrs would turn 42 into "42" and "1" into 1; a client sending the wrong type is told.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise TypeError(f"expected {name}, got {type(value).__name__}")
    return value


def _enum(value: Any, cls: type[enum.Enum]) -> enum.Enum:
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"expected one of {choices}, got {value!r}") from None


def _text_or_texts(value: Any, _: Any) -> str | list[str]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return _strict(value, str, "a string or a list of strings")  # type: ignore[no-any-return]


def _strict_list(conv: cattrs.Converter, cls: Any) -> Callable[[Any, Any], list[Any]]:
    # cattrs builds a list from any iterable: "abc" became ["a", "b", "c"] and an object the list
    # of its keys (a permission rule sent where a list of them belongs reached the CLI as its
    # key names). A list is a JSON array (or a tuple, from Python).
    items = list_structure_factory(cls, conv)

    def structure(value: Any, kind: Any) -> list[Any]:
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        structured: list[Any] = items(value, kind)
        return structured

    return structure


def _is_list(kind: Any) -> bool:
    return kind is list or typing.get_origin(kind) is list


def make_converter() -> cattrs.Converter:
    """A converter with every hook and every tagged union of the wire, configured here only.

    The unions are registered in dependency order (events before the snapshot items that embed
    them), so a member's generated hook finds the tagged hook of a union it holds."""
    conv = cattrs.Converter(forbid_extra_keys=False, omit_if_default=False)
    conv.register_structure_hook(Path, lambda value, _: Path(_strict(value, str, "a string")))
    conv.register_structure_hook(str, lambda v, _: _strict(v, str, "a string"))
    conv.register_structure_hook(int, lambda v, _: _strict(v, int, "an integer"))
    conv.register_structure_hook(float, lambda v, _: float(_strict(v, (int, float), "a number")))
    conv.register_structure_hook(bool, lambda v, _: _strict(v, bool, "true or false"))
    conv.register_unstructure_hook(Path, str)
    # A StrEnum is a str: without its own hook (more specific than str in its MRO) the str hook
    # above would claim it and hand back plain strings, and `status is SessionStatus.IDLE` would
    # be false after a round trip through the log.
    conv.register_structure_hook(enum.StrEnum, _enum)
    conv.register_structure_hook(enum.Enum, _enum)
    conv.register_structure_hook_func(lambda t: t == str | list[str], _text_or_texts)
    conv.register_structure_hook_factory(_is_list, lambda t: _strict_list(conv, t))
    for base, classes in (
        (Event, EVENT_CLASSES),
        (Item, ITEM_CLASSES),
        (ToolDetail, TOOL_DETAIL_CLASSES),
        (ClientMessage, CLIENT_MESSAGES),
        (SignalingMessage, SIGNALING_CLASSES),
    ):
        register_union(conv, base, classes)
    return conv


def register_union(
    conv: cattrs.Converter, base: type[Any], classes: Mapping[str, type[Any]]
) -> None:
    """Read and write ``base`` (a union root) by the ``type`` tag of each class in ``classes``.

    Not cattrs' ``configure_tagged_union``: that one keys the hooks on a ``Union`` (our fields
    name the root class), writes the tag after the fields, raises ``KeyError`` for an unknown tag
    and leaves the tag off a member unstructured on its own; each would change the wire."""

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected an object, got {type(value).__name__}")
        tag = value.get("type")
        cls = classes.get(tag) if isinstance(tag, str) else None
        if cls is None:
            raise ValueError(f"unknown type {tag!r}")
        fields = {k: v for k, v in value.items() if k != "type"}
        return conv.structure(fields, cls)

    def unstructure(value: Any) -> Any:
        return conv.unstructure(value, unstructure_as=type(value))

    # Predicates, not singledispatch: a member class must not fall back to the union's hooks.
    conv.register_structure_hook_func(lambda t: t is base, structure)
    conv.register_unstructure_hook_func(lambda t: t is base, unstructure)
    # A member unstructured on its own (not through the base) still carries its tag. Its hook is
    # generated the first time a member of that class is written (cattrs caches it), not here:
    # generating all of them (resolving every member's annotations, compiling a function each)
    # was most of this module's import time, and a process writes few of the classes.
    members = frozenset(classes.values())
    conv.register_unstructure_hook_factory(
        lambda t: t in members, lambda cls: _tagged_unstructure(conv, cls)
    )


def _tagged_unstructure(conv: cattrs.Converter, cls: type[Any]) -> Callable[[Any], dict[str, Any]]:
    fn = make_dict_unstructure_fn(cls, conv)

    def unstructure(value: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"type": cls.TYPE}
        data.update(fn(value))
        return data

    return unstructure


#: The one converter, built once; nothing changes it after import.
converter = make_converter()


def describe_error(exc: Exception) -> str:
    """One line naming every bad value in ``exc`` by its JSON path."""
    if isinstance(exc, ClassValidationError | IterableValidationError):
        messages = transform_error(exc, path="$")
        return "; ".join(messages)
    return f"bad value @ $: {exc}"


def structure(data: Any, cls: type[T]) -> T:
    """Structure ``data`` as ``cls``; raises ``ValueError`` with a path-bearing message."""
    try:
        return converter.structure(data, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
        raise ValueError(describe_error(exc)) from None


def unstructure(value: Any) -> Any:
    return converter.unstructure(value)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_text(value: Any) -> None:
    """Raise ``ValueError`` if decoded JSON ``value`` holds a string with a lone surrogate.

    ``"\\ud800"`` is a valid JSON escape, and ``json.loads`` keeps it, but it is no text: it has
    no UTF-8 form, so it cannot reach a command line (a model's name made the CLI's launch
    raise, which ended the daemon), a file name (a ``cwd`` was a 500), the CLI's stdin or a
    notification. Walked without recursion (the value may be nested ~1000 deep)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode()
                except UnicodeEncodeError:
                    raise ValueError(
                        f"{item[:40]!r} holds a lone surrogate (an unpaired \\ud800-\\udfff "
                        "escape), which is not text"
                    ) from None
        elif isinstance(item, dict):
            stack += item
            stack += item.values()
        elif isinstance(item, list):
            stack += item


_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def as_text(value: str) -> str:
    """``value`` with each lone surrogate (see :func:`check_text`) shown as U+FFFD: text with a
    UTF-8 form, for where a string from the CLI must become bytes (a notification)."""
    if value.isascii():
        return value
    try:
        value.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", value)
    return value


def loads(data: bytes | str) -> Any:
    """``json.loads`` of a peer's JSON, without the ``NaN``, ``Infinity`` and ``-Infinity`` that
    Python's parser takes and JSON does not have (RFC 8259): a ``NaN`` in a request's body
    reached the operations, and the CLI's stdin as the invalid JSON ``NaN``. Raises
    ``ValueError`` (or ``RecursionError``, nested deeper than about 1000) like ``json.loads``."""
    return json.loads(data, parse_constant=_not_json)


# Built once: json.dumps(..., separators=...) constructs a new encoder on every call (~1 µs).
JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"))


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON of plain data.

    A lone surrogate (``"\\ud800"``: JSON from the CLI or a client may carry one as an escape, and
    ``json.loads`` keeps it) has no UTF-8 form; such a value is written with ASCII escapes
    instead, which every JSON parser reads back as the same string (found by fuzzing)."""
    text = JSON_ENCODER.encode(value)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return ASCII_ENCODER.encode(value).encode()


def dumps(value: Any) -> bytes:
    """Compact JSON bytes of an attrs value (or plain data)."""
    return json_bytes(converter.unstructure(value))
