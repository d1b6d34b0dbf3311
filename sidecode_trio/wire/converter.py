"""The one cattrs converter: wire messages, stored events and config all go through it.

Messages are frozen attrs classes. Tagged unions (events, transcript items) carry their tag in a
``type`` field that is a ``ClassVar`` on the class; :func:`register_union` teaches the converter to
write that tag and to pick the class by it when reading. Errors from cattrs are flattened into one
readable line with the JSON path of the bad value (``bad value @ $.port: expected int``).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import cattrs
from cattrs.errors import ClassValidationError, IterableValidationError
from cattrs.gen import make_dict_unstructure_fn
from cattrs.v import transform_error

T = TypeVar("T")

converter = cattrs.Converter(forbid_extra_keys=False, omit_if_default=False)
converter.register_structure_hook(Path, lambda value, _: Path(_strict(value, str, "a string")))


def _strict(value: Any, kind: type[Any] | tuple[type[Any], ...], name: str) -> Any:
    # cattrs would turn 42 into "42" and "1" into 1; a client sending the wrong type is told.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise TypeError(f"expected {name}, got {type(value).__name__}")
    return value


converter.register_structure_hook(str, lambda v, _: _strict(v, str, "a string"))
converter.register_structure_hook(int, lambda v, _: _strict(v, int, "an integer"))
converter.register_structure_hook(float, lambda v, _: float(_strict(v, (int, float), "a number")))
converter.register_structure_hook(bool, lambda v, _: _strict(v, bool, "true or false"))
converter.register_unstructure_hook(Path, str)


def _enum(value: Any, cls: type[enum.Enum]) -> enum.Enum:
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"expected one of {choices}, got {value!r}") from None


# A StrEnum is a str: without its own hook (more specific than str in its MRO) the str hook
# above would claim it and hand back plain strings, and `status is SessionStatus.IDLE` would
# be false after a round trip through the log.
converter.register_structure_hook(enum.StrEnum, _enum)
converter.register_structure_hook(enum.Enum, _enum)


def _text_or_texts(value: Any, _: Any) -> str | list[str]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return _strict(value, str, "a string or a list of strings")  # type: ignore[no-any-return]


converter.register_structure_hook_func(lambda t: t == str | list[str], _text_or_texts)


def register_union(base: type[Any], classes: Mapping[str, type[Any]]) -> None:
    """Read and write ``base`` (a union root) by the ``type`` tag of each class in ``classes``."""

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected an object, got {type(value).__name__}")
        tag = value.get("type")
        cls = classes.get(tag) if isinstance(tag, str) else None
        if cls is None:
            raise ValueError(f"unknown type {tag!r}")
        fields = {k: v for k, v in value.items() if k != "type"}
        return converter.structure(fields, cls)

    def unstructure(value: Any) -> Any:
        return converter.unstructure(value, unstructure_as=type(value))

    # Predicates, not singledispatch: a member class must not fall back to the union's hooks.
    converter.register_structure_hook_func(lambda t: t is base, structure)
    converter.register_unstructure_hook_func(lambda t: t is base, unstructure)
    for cls in classes.values():
        # A member unstructured on its own (not through the base) still carries its tag.
        converter.register_unstructure_hook(cls, _tagged_unstructure(cls))


def _tagged_unstructure(cls: type[Any]) -> Callable[[Any], dict[str, Any]]:
    fn = make_dict_unstructure_fn(cls, converter)

    def unstructure(value: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"type": cls.TYPE}
        data.update(fn(value))
        return data

    return unstructure


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
