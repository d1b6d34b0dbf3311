"""The wire protocol: message classes (frozen attrs) and the one cattrs converter.

Each class of the wire modules is ``@attrs.frozen(repr=False)``, and each module ends with
:func:`share_repr`: attrs would compile a ``__repr__`` for every class (a quarter of these
modules' import time, paid at each start of the daemon); they share one that writes the same text.
"""

from __future__ import annotations

from typing import Any

import attrs


def wire_repr(self: Any) -> str:
    """``Name(field=value, ...)``, every field shown: the text of attrs' own ``__repr__``."""
    cls = type(self)
    name = cls.__qualname__.rsplit(">.", 1)[-1]
    shown = ", ".join(f"{a.name}={getattr(self, a.name)!r}" for a in attrs.fields(cls) if a.repr)
    return f"{name}({shown})"


def share_repr(namespace: dict[str, Any]) -> None:
    """Give :func:`wire_repr` to the attrs classes a module defines (``namespace``: its globals)."""
    module = namespace["__name__"]
    for value in list(namespace.values()):
        if isinstance(value, type) and attrs.has(value) and value.__module__ == module:
            value.__repr__ = wire_repr  # type: ignore[method-assign]
