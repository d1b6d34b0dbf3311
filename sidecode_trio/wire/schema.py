"""Generate JSON Schemas (draft 2020-12) from the wire classes into ``protocol/schema/``.

``python -m sidecode_trio.wire.schema protocol/schema`` rewrites the files; a test fails when the
committed files differ from what the classes say, so the published schemas cannot drift.
"""

from __future__ import annotations

import enum
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import attrs

from . import requests as rq
from .events import EVENT_CLASSES, Event
from .snapshot import ITEM_CLASSES, Item, SessionInfo, Snapshot

SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"
UNIONS: dict[type[Any], list[type[Any]]] = {
    Event: list(EVENT_CLASSES.values()),
    Item: list(ITEM_CLASSES.values()),
}


class SchemaBuilder:
    """Definitions of the classes reached from the roots; ``prefix`` is where refs point (the
    OpenAPI document keeps them under ``#/components/schemas/``)."""

    def __init__(
        self,
        unions: dict[type[Any], list[type[Any]]] | None = None,
        prefix: str = "#/$defs/",
    ) -> None:
        self.defs: dict[str, Any] = {}
        self.unions = UNIONS if unions is None else unions
        self.prefix = prefix

    def ref(self, cls: type[Any]) -> dict[str, Any]:
        name = cls.__name__
        if name not in self.defs:
            self.defs[name] = {}  # placeholder against recursion
            self.defs[name] = self._define(cls)
        return {"$ref": f"{self.prefix}{name}"}

    def _define(self, cls: type[Any]) -> dict[str, Any]:
        if cls in self.unions:
            return {"oneOf": [self.ref(member) for member in self.unions[cls]]}
        hints = typing.get_type_hints(cls)
        properties: dict[str, Any] = {}
        required: list[str] = []
        tag = getattr(cls, "TYPE", "")
        if tag:
            properties["type"] = {"const": tag}
            required.append("type")
        for field in attrs.fields(cls):
            properties[field.name] = self.of(hints[field.name])
            if field.default is attrs.NOTHING:
                required.append(field.name)
        schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
        doc = (cls.__doc__ or "").strip()
        if doc and not doc.startswith(cls.__name__ + "("):
            schema["description"] = " ".join(doc.split())
        return schema

    def of(self, hint: Any) -> dict[str, Any]:
        origin = typing.get_origin(hint)
        if hint is Any:
            return {}
        if hint is type(None):
            return {"type": "null"}
        if origin in (Union, types.UnionType):
            return {"anyOf": [self.of(arg) for arg in typing.get_args(hint)]}
        if origin is Literal:
            return {"enum": list(typing.get_args(hint))}
        if origin is list:
            return {"type": "array", "items": self.of(typing.get_args(hint)[0])}
        if origin is dict:
            return {"type": "object", "additionalProperties": self.of(typing.get_args(hint)[1])}
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return {"enum": [member.value for member in hint]}
        if isinstance(hint, type) and (attrs.has(hint) or hint in self.unions):
            return self.ref(hint)
        simple = {str: "string", int: "integer", float: "number", bool: "boolean"}
        if hint in simple:
            return {"type": simple[hint]}
        raise TypeError(f"no JSON Schema for {hint!r}")


def schema_for(root: type[Any], title: str) -> dict[str, Any]:
    builder = SchemaBuilder()
    top = builder.ref(root)
    return {
        "$schema": SCHEMA_URI,
        "title": title,
        **top,
        "$defs": dict(sorted(builder.defs.items())),
    }


DOCUMENTS: dict[str, tuple[type[Any], str]] = {
    "event.json": (Event, "A domain event (the 'event' of an SSE data envelope)"),
    "snapshot.json": (Snapshot, "The folded state of a session"),
    "session-info.json": (SessionInfo, "One session's summary"),
    "create-session.json": (rq.CreateSession, "POST /v1/sessions body"),
    "send-message.json": (rq.SendMessage, "POST /v1/sessions/{id}/messages body"),
    "answer-permission.json": (
        rq.AnswerPermission,
        "POST /v1/sessions/{id}/permissions/{rid} body",
    ),
    "update-session.json": (rq.UpdateSession, "PATCH /v1/sessions/{id} body"),
    "error.json": (rq.ErrorReply, "Every error response"),
    "daemon-info.json": (rq.DaemonInfo, "GET /v1/info reply (no credentials needed)"),
    "pair-request.json": (rq.PairRequest, "POST /v1/pair body"),
    "pair-reply.json": (rq.PairReply, "POST /v1/pair reply"),
    "ticket-request.json": (rq.TicketRequest, "POST /v1/tickets body"),
    "push-subscription.json": (rq.PushSubscriptionRequest, "POST /v1/push/subscriptions body"),
    "push-subscriptions.json": (rq.PushSubscriptionList, "GET /v1/push/subscriptions reply"),
}


def render() -> dict[str, str]:
    """File name -> file text, for every published schema."""
    return {
        name: json.dumps(schema_for(root, title), indent=2, sort_keys=False) + "\n"
        for name, (root, title) in DOCUMENTS.items()
    }


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path("protocol/schema")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (out / name).write_text(text)
    print(f"wrote {len(DOCUMENTS)} schemas to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
