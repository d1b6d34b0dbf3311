"""The phone web app (a PWA): static files the daemon serves at ``/app/`` without credentials.

Only the shell is open: HTML, scripts, styles, icons and the vendored libraries. Everything the
app shows comes from the v1 API, which it calls with its own device key (``static/auth.js``), so
serving the shell to anyone reveals nothing but the app's code. The files are read once at start
and served from memory with an ETag, ``Cache-Control: no-cache`` (the service worker keeps the
offline copy) and a strict Content-Security-Policy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from importlib import resources
from typing import Final

import attrs
from quart import Response, redirect, request
from quart_trio import QuartTrio

PREFIX: Final = "/app/"
INDEX: Final = "index.html"

CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".webmanifest": "application/manifest+json",
    ".json": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    "LICENSE": "text/plain; charset=utf-8",
}


@attrs.frozen
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def content_type(name: str) -> str | None:
    """The type a file is served as, or None for a file the app does not ship."""
    if name.endswith("LICENSE") or ".LICENSE" in name:
        return CONTENT_TYPES["LICENSE"]
    dot = name.rfind(".")
    return CONTENT_TYPES.get(name[dot:]) if dot > name.rfind("/") else None


def load_files() -> dict[str, StaticFile]:
    """Every servable file under ``static/``, keyed by its path relative to it."""
    files: dict[str, StaticFile] = {}
    root = resources.files(__package__).joinpath("static")

    def walk(node: resources.abc.Traversable, prefix: str) -> None:
        for child in node.iterdir():
            name = prefix + child.name
            if child.is_dir():
                walk(child, name + "/")
                continue
            kind = content_type(name)
            if kind is not None:
                body = child.read_bytes()
                etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
                files[name] = StaticFile(body, kind, etag)

    walk(root, "")
    return files


def is_public(method: str, path: str) -> bool:
    """Requests that need no credentials: reading the app shell."""
    return method in ("GET", "HEAD") and (path in ("/", "/app") or path.startswith(PREFIX))


def security_policy(connect: list[str]) -> str:
    """The CSP: our own scripts only (no inline code, no eval), our origin plus the
    WebTransport endpoints (``connect``, e.g. ``https://127.0.0.1:8765``) for network access."""
    sources = " ".join(["'self'", *connect])
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            "font-src 'self'",
            f"connect-src {sources}",
            "manifest-src 'self'",
            "worker-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        ]
    )


def origins(urls: list[str]) -> list[str]:
    """``https://host:port/v1/wt`` → ``https://host:port`` (CSP sources carry no path)."""
    out: list[str] = []
    for url in urls:
        scheme, _, rest = url.partition("://")
        origin = f"{scheme}://{rest.split('/', 1)[0]}"
        if origin not in out:
            out.append(origin)
    return out


def add_routes(app: QuartTrio, quic_urls: Callable[[], list[str]]) -> None:
    """Serve the app under ``/app/``; ``quic_urls()`` names the WebTransport endpoints the CSP
    lets the page reach."""
    files = load_files()

    def serve(name: str) -> Response:
        found = files.get(name)
        if found is None:
            return Response(b"not found\n", status=404, mimetype="text/plain")
        headers = {
            "Cache-Control": "no-cache",
            "ETag": found.etag,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": security_policy(origins(quic_urls())),
            "Cross-Origin-Opener-Policy": "same-origin",
        }
        if found.etag in request.headers.get("If-None-Match", ""):
            return Response(b"", status=304, headers=headers)
        response = Response(found.body, status=200, headers=headers)
        response.headers["Content-Type"] = found.content_type
        return response

    @app.get("/")
    async def root() -> Response:
        return redirect(PREFIX)  # type: ignore[return-value]

    @app.get("/app")
    async def app_no_slash() -> Response:
        return redirect(PREFIX)  # type: ignore[return-value]

    @app.get(PREFIX)
    async def index() -> Response:
        return serve(INDEX)

    @app.get(PREFIX + "<path:name>")
    async def static_file(name: str) -> Response:
        return serve(name)
