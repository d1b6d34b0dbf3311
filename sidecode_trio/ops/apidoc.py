"""What the OpenAPI document says of an operation beyond its classes: the shared vocabulary.

The operation table (``ops/front.py``) describes each row with these: who may call it
(:data:`OPEN`, :data:`DEVICE`, ...), its query parameters (:class:`Param`) and the few replies
that are plain JSON rather than a wire class. ``ops/openapi.py`` renders the document from the
table and from its own short list of the routes that are not operations (event streams,
WatchCode's ``/api``, the web app), which use the same vocabulary.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

#: Who may call a route: the names of security requirements (``ops/openapi.SECURITY_SCHEMES``).
OPEN: Final[tuple[str, ...]] = ()
DEVICE: Final = ("sidecode", "localToken")
STREAM: Final = ("sidecode", "localToken", "ticket")
WATCHCODE: Final = ("watchcodeSecret", "watchcodeSecretQuery", "sidecode", "localToken")

#: Client errors of a route that reads a body: malformed (400), too large (413).
BODY_ERRORS: Final = (400, 413)


@attrs.frozen
class Param:
    """A query (or header) parameter, as the document lists it."""

    name: str
    schema: dict[str, Any]
    description: str
    location: str = "query"


FLAG_VALUES: Final = ["1", "true", "yes", "0", "false", "no", ""]  # "": the default


def flag_param(name: str, what: str) -> Param:
    """A true/false parameter (``front.flag`` reads it)."""
    return Param(name, {"type": "string", "enum": FLAG_VALUES}, what)


def text_param(name: str, what: str) -> Param:
    return Param(name, {"type": "string"}, what)


LIMIT: Final = Param("limit", {"type": "integer", "minimum": 1}, "At most this many entries.")

#: Replies that are plain JSON, not a wire class.
OK_REPLY: Final = {
    "type": "object",
    "properties": {"ok": {"const": True}},
    "required": ["ok"],
}
FREE_OBJECT: Final = {"type": "object", "description": "Diagnostic; not a stable shape."}
PAIRING_OFFER: Final = {
    "type": "object",
    "properties": {
        "payload": {"type": "object", "description": "What the QR code carries (section 2)."},
        "link": {"type": "string"},
        "web_link": {"type": ["string", "null"], "description": "The web app's pairing page."},
        "expires_at": {"type": "number"},
    },
    "required": ["payload", "link", "expires_at"],
}
