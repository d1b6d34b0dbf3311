"""The OpenAPI document: generated from the code, and listing exactly the app's routes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema

from sidecode_trio.ops import front
from sidecode_trio.ops.openapi import OPERATIONS, document, render

from helpers import Client

OPENAPI = Path(__file__).parent.parent / "protocol" / "openapi.json"
REGENERATE = "run: python -m sidecode_trio.ops.openapi protocol/openapi.json"
# Methods the framework adds by itself: HEAD to every GET, OPTIONS to every route.
AUTOMATIC = frozenset({"HEAD", "OPTIONS"})


def test_committed_openapi_matches_the_code() -> None:
    assert OPENAPI.read_text() == render(), f"protocol/openapi.json is out of date; {REGENERATE}"


def _template(rule: str) -> str:
    """Werkzeug's ``/v1/sessions/<session_id>`` (or ``<path:rest>``) as ``/v1/sessions/{...}``."""
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def app_routes(app: object) -> set[tuple[str, str]]:
    """(method, path template) of every route the running app serves."""
    routes: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():  # type: ignore[attr-defined]
        if rule.endpoint == "static":
            continue
        methods = set(rule.methods or ()) - AUTOMATIC or set(rule.methods or ())
        routes |= {(method, _template(rule.rule)) for method in methods - {"HEAD"}}
    return routes


async def test_every_route_of_the_app_is_documented_and_nothing_else(daemon: Client) -> None:
    served = app_routes(daemon.handle.app)
    documented = {(op.method, op.path) for op in OPERATIONS}
    missing, stale = sorted(served - documented), sorted(documented - served)
    assert not missing, (
        f"routes the app serves but protocol/openapi.json lacks: {missing}; add an Op line to "
        f"OPERATIONS in sidecode_trio/ops/openapi.py, then {REGENERATE}"
    )
    assert not stale, f"documented routes the app does not serve: {stale}; remove their Op lines"


def test_the_document_is_valid_openapi_31_with_resolvable_refs() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1")
    text = json.dumps(doc)
    for ref in set(re.findall(r'"\$ref": "#/([^"]+)"', text)):
        node = doc
        for part in ref.split("/"):
            assert part in node, f"dangling $ref #/{ref}"
            node = node[part]
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    schemes = doc["components"]["securitySchemes"]
    assert {"sidecode", "localToken", "ticket"} <= set(schemes)
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            for requirement in op["security"]:
                assert set(requirement) <= set(schemes), (method, path)


def test_errors_streams_and_open_routes_are_described() -> None:
    paths = document()["paths"]
    error = document()["components"]["responses"]["error400"]
    assert error["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorReply"
    }
    events = paths["/v1/sessions/{session_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert {p["name"] for p in events["parameters"]} >= {"since", "Last-Event-ID", "view"}
    assert {"ticket": []} in events["security"]
    assert paths["/v1/info"]["get"]["security"] == []
    assert (
        "text/event-stream"
        in paths["/api/sessions/{session_id}/events"]["get"]["responses"]["200"]["content"]
    )
    watch = document()["components"]["responses"]["watchcode404"]
    assert watch["content"]["application/json"]["schema"]["properties"]["error"] == {
        "type": "string"
    }


def test_the_operation_table_and_the_document_agree() -> None:
    """Every row of the operation table (ops/front.py: what HTTP registers and WebTransport
    dispatches into) is documented with the same body class, and every documented JSON v1
    operation (not an event stream) is a row: neither can drift from the other."""
    anything: Any = object()  # the handlers are only built here, never called
    table = {(r.method, r.path): r.body for r in front.routes(anything, anything)}
    documented = {
        (op.method, op.path): op.body
        for op in OPERATIONS
        if op.path.startswith("/v1/") and not op.stream
    }
    assert table == documented
