"""The OpenAPI document: generated from the code, and listing exactly the app's routes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema

from sidecode_trio.ops import front
from sidecode_trio.ops.openapi import OPERATIONS, OTHER_ROUTES, document, render

from helpers import Client

OPENAPI = Path(__file__).parent.parent / "protocol" / "openapi.json"
UNSERVED: Any = object()  # the handlers are only built here, never called
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
        f"routes the app serves but protocol/openapi.json lacks: {missing}; add a row to "
        f"ops/front.py (an operation) or to OTHER_ROUTES in ops/openapi.py, then {REGENERATE}"
    )
    assert not stale, f"documented routes the app does not serve: {stale}; remove their rows"


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


def test_the_document_describes_each_operation_from_its_row_of_the_table() -> None:
    """The operation table (ops/front.py: what HTTP registers and WebTransport dispatches into)
    is the one source of the v1 operations' descriptions: each row's summary, statuses, body,
    parameters and credentials are what the document says, and the routes described elsewhere
    are only those that are not operations (event streams, WatchCode, the web app)."""
    paths = document()["paths"]
    table = front.described_routes()
    for route in table:
        op = paths[route.path][route.method.lower()]
        where = f"{route.method} {route.path}"
        assert op["summary"] == route.summary, where
        assert str(route.status) in op["responses"], where
        assert {str(s) for s in route.errors} <= set(op["responses"]), where
        assert [{name: []} for name in route.security] == op["security"], where
        names = {p["name"] for p in op.get("parameters", ()) if p["in"] != "path"}
        assert names == {p.name for p in route.query}, where
        assert ("requestBody" in op) == (route.body is not None), where
    rows = {(r.method, r.path) for r in table}
    for other in OTHER_ROUTES:
        assert (other.method, other.path) not in rows
        assert other.stream or not other.path.startswith("/v1/"), (
            f"{other.method} {other.path} is a v1 operation: make it a row of ops/front.py"
        )


def test_the_open_routes_are_the_table_rows_described_without_credentials() -> None:
    """One source: the rows marked ``security=OPEN`` are what the guard lets in without
    credentials (every transport asks it), and they are exactly the identity and pairing."""
    open_rows = {(r.method, r.path) for r in front.described_routes() if r.security == ()}
    assert open_rows == front.open_routes() == {("GET", "/v1/info"), ("POST", "/v1/pair")}
    served = front.routes(UNSERVED, UNSERVED)
    assert front.open_routes(served) == front.open_routes()


def test_the_daemon_serves_the_described_table() -> None:
    """``described_routes`` is the table the daemon builds (push routes included)."""
    served = front.routes(UNSERVED, UNSERVED)
    described = front.described_routes()
    strip = [(r.method, r.path, r.body, r.summary, r.reply, r.status) for r in served]
    assert strip == [(r.method, r.path, r.body, r.summary, r.reply, r.status) for r in described]
