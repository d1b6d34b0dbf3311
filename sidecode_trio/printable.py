"""Text from clients, made safe to print and to log, and device names checked before they are kept.

A request path, a device name or a session title reaches the owner's terminal (the daemon's
stderr, ``sidecode-trio devices``) and the log files. Control characters there are commands to
the terminal (ESC starts an escape sequence, BEL rings, ``\\r`` rewrites a line) and a newline
forges a log line. :func:`escape` writes each such character as a visible escape (``\\x1b``,
``\\u202e``); :class:`EscapingFormatter` does it to every log record the daemon writes.
"""

from __future__ import annotations

import logging
import unicodedata
from typing import Final

from .errors import BadRequest

#: control, format (bidi overrides, zero-width), line and paragraph separators, lone surrogates
UNSAFE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
#: names the daemon itself puts where a device's name goes (``permission.resolved.by``)
RESERVED_NAMES: Final = frozenset({"local owner", "timeout"})
MAX_NAME: Final = 100


def unsafe(char: str) -> bool:
    return unicodedata.category(char) in UNSAFE_CATEGORIES


def escape(text: str, keep: str = "") -> str:
    """``text`` with every control, format and separator character written as an escape
    (characters in ``keep``, e.g. ``"\\n"`` for a traceback, stay as they are)."""
    if text.isprintable():  # the common case, at C speed
        return text
    return "".join(_escaped(c) if c not in keep and unsafe(c) else c for c in text)


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def device_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a device's name, or None. A name is shown to the owner and
    recorded as who answered a permission request, so it may not hold characters that drive a
    terminal or reorder text, nor be a name the daemon uses for itself."""
    if not 1 <= len(name) <= MAX_NAME or not name.strip():
        return f"a device name is 1 to {MAX_NAME} characters, not only spaces"
    bad = next((c for c in name if unsafe(c)), None)
    if bad is not None:
        return (
            f"a device name may not contain control or format characters "
            f"(found U+{ord(bad):04X} {unicodedata.name(bad, 'unnamed')})"
        )
    folded = " ".join(unicodedata.normalize("NFKC", name).casefold().split())
    if folded in RESERVED_NAMES:
        return f"{name.strip()!r} is a name the daemon uses for itself; choose another"
    return None


def kept_device_name(name: str, device_id: str) -> str:
    """A stored name as the daemon shows and records it: ``name`` if it passes
    :func:`device_name_problem`, else one that does. A name kept by a daemon from before names
    were checked has its control and format characters escaped (what it said stays visible),
    is cut to :data:`MAX_NAME`, and, blank or a name the daemon uses for itself, is marked as
    a device's (with its id, so that two of them are still told apart)."""
    if device_name_problem(name) is None:
        return name
    shown = " ".join(escape(name).split())  # what escape() leaves of spaces: one, between words
    if len(shown) > MAX_NAME:
        shown = shown[: MAX_NAME - 1] + "…"
    if device_name_problem(shown) is None:
        return shown
    marked = f"{shown} (device {device_id})" if shown else f"device {device_id}"
    return marked if device_name_problem(marked) is None else f"device {device_id}"[:MAX_NAME]


def check_device_name(name: str) -> None:
    """Refuse a device name (400 ``bad_device_name``); see :func:`device_name_problem`."""
    problem = device_name_problem(name)
    if problem is not None:
        raise BadRequest(problem, code="bad_device_name")


LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """The daemon's log: stderr, every record escaped (see :class:`EscapingFormatter`)."""
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])


class EscapingFormatter(logging.Formatter):
    """A formatter whose records cannot drive a terminal or forge a line: the message (with its
    arguments merged in) is escaped whole; a traceback keeps its line breaks but nothing else."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return escape(super().formatException(ei), keep="\n")

    def formatStack(self, stack_info: str) -> str:
        return escape(super().formatStack(stack_info), keep="\n")
