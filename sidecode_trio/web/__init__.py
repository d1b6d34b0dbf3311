"""The phone web app (a PWA): static files the daemon serves at ``/app/`` without credentials.

Only the shell is open: HTML, scripts, styles, icons and the vendored libraries. Everything the
app shows comes from the v1 API, which it calls with its own device key (``static/auth.js``), so
serving the shell to anyone reveals nothing but the app's code. The files are read once, at the
first request for one (in a worker thread: reading, hashing and gzipping them takes tens of
milliseconds, which start-up no longer pays), and served from memory with an ETag and a strict
Content-Security-Policy.

Text files are gzipped once, at load, and sent compressed to a client that accepts it. The page
and its modules name each other with ``?v=<build>`` (a hash of every shipped file, added to the
references at load): a request carrying the current build is cached for a year (``immutable``),
since a new build means new URLs; anything else (``/app/`` itself, ``sw.js``, an old or missing
``v``) is ``no-cache`` and revalidated by ETag (the service worker keeps the offline copy).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import re
from collections.abc import Callable
from importlib import resources
from typing import Final

import attrs
import trio
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


#: worth compressing (images are compressed already)
COMPRESSIBLE: Final = ("text/", "application/manifest+json", "application/json", "image/svg+xml")
IMMUTABLE: Final = "public, max-age=31536000, immutable"
#: ``src="app.js"`` / ``href="style.css"`` in the page; ``from "./render.js"``,
#: ``import "./sw-push.js"``, ``import("./push.js")`` in a module: local references to version
_HTML_REF: Final = re.compile(
    rb'((?:src|href)=")([A-Za-z0-9_./-]+\.(?:js|css|svg|png|webmanifest))(")'
)
_SHELL_LIST: Final = re.compile(rb"const SHELL = \[[^\]]*\]")
_SHELL_ENTRY: Final = re.compile(rb'(")([A-Za-z0-9_./-]+\.(?:js|css|svg|png|webmanifest))(")')
_JS_IMPORT: Final = re.compile(rb'((?:\bfrom|\bimport)\s*\(?\s*")(\./[A-Za-z0-9_./-]+\.js)(")')


@attrs.frozen
class StaticFile:
    body: bytes
    content_type: str
    etag: str
    gzipped: bytes | None = None  #: the body gzipped, when that is smaller
    build: str = ""  #: the ``v`` that marks a URL of this build (long-lived caching)


def content_type(name: str) -> str | None:
    """The type a file is served as, or None for a file the app does not ship."""
    if name.endswith("LICENSE") or ".LICENSE" in name:
        return CONTENT_TYPES["LICENSE"]
    dot = name.rfind(".")
    return CONTENT_TYPES.get(name[dot:]) if dot > name.rfind("/") else None


def versioned(body: bytes, build: str, kind: str) -> bytes:
    """``body`` with its local references to other shipped files marked ``?v=<build>`` (and,
    in the service worker, the files it keeps: the same URLs the page asks for, so installing
    it downloads nothing twice)."""
    mark = b"?v=" + build.encode()
    if kind.startswith("text/html"):
        return _HTML_REF.sub(lambda m: m[1] + m[2] + mark + m[3], body)
    if kind.startswith("text/javascript"):
        body = _JS_IMPORT.sub(lambda m: m[1] + m[2] + mark + m[3], body)
        return _SHELL_LIST.sub(
            lambda m: _SHELL_ENTRY.sub(lambda e: e[1] + e[2] + mark + e[3], m[0]), body
        )
    return body


@functools.lru_cache(maxsize=128)
def compressed(body: bytes, kind: str) -> bytes | None:
    """The gzipped body (fixed mtime: the same bytes every start), or None when not worth it.
    Remembered per process: a daemon started again (the tests) does not pay twice."""
    if not kind.startswith(COMPRESSIBLE) or len(body) < 256:
        return None
    packed = gzip.compress(body, compresslevel=9, mtime=0)
    return packed if len(packed) < len(body) else None


def load_files() -> dict[str, StaticFile]:
    """Every servable file under ``static/``, keyed by its path relative to it: references
    versioned with the build, gzipped once."""
    raw: dict[str, tuple[bytes, str]] = {}
    root = resources.files(__package__).joinpath("static")

    def walk(node: resources.abc.Traversable, prefix: str) -> None:
        for child in node.iterdir():
            name = prefix + child.name
            if child.is_dir():
                walk(child, name + "/")
                continue
            kind = content_type(name)
            if kind is not None:
                raw[name] = (child.read_bytes(), kind)

    walk(root, "")
    digest = hashlib.sha256()
    for name in sorted(raw):
        digest.update(name.encode() + b"\0" + raw[name][0] + b"\0")
    build = digest.hexdigest()[:12]
    files: dict[str, StaticFile] = {}
    for name, (original, kind) in raw.items():
        body = versioned(original, build, kind)
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        files[name] = StaticFile(body, kind, etag, compressed(body, kind), build)
    return files


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value takes gzip (and does not refuse it with ``q=0``)."""
    for part in accept_encoding.lower().split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() in ("gzip", "*"):
            q = params.strip().removeprefix("q=")
            try:
                return not params.strip() or float(q) > 0
            except ValueError:
                return False
    return False


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
    """``https://host:port/v1/wt`` → ``https://host:port`` (CSP sources carry no path, nor
    the credentials a rendezvous URL may hold: ``wss://user:pass@host`` → ``wss://host``)."""
    out: list[str] = []
    for url in urls:
        scheme, _, rest = url.partition("://")
        origin = f"{scheme}://{rest.split('/', 1)[0].rpartition('@')[2]}"
        if origin not in out:
            out.append(origin)
    return out


def page_origins(quic_urls: list[str], rendezvous: str | None) -> list[str]:
    """The off-origin places the page may connect to: the WebTransport endpoints, and the
    rendezvous broker when a browser can speak to it (MQTT over WebSocket, ``ws:``/``wss:``), so
    that the app dials the WebRTC path also when it was loaded from the daemon itself."""
    urls = list(quic_urls)
    if rendezvous and rendezvous.startswith(("ws://", "wss://")):
        urls.append(rendezvous)
    return origins(urls)


def add_routes(
    app: QuartTrio,
    quic_urls: Callable[[], list[str]],
    rendezvous: Callable[[], str | None] = lambda: None,
) -> None:
    """Serve the app under ``/app/``; ``quic_urls()`` names the WebTransport endpoints and
    ``rendezvous()`` the broker (or None) that the CSP lets the page reach."""
    files: dict[str, StaticFile] = {}
    loading = trio.Lock()

    async def serve(name: str) -> Response:
        if not files:
            async with loading:  # the first requests wait for one load
                if not files:
                    files.update(await trio.to_thread.run_sync(load_files))
        found = files.get(name)
        if found is None:
            return Response(b"not found\n", status=404, mimetype="text/plain")
        current = request.args.get("v") == found.build and name != INDEX
        accepted = request.headers.get("Accept-Encoding", "")
        gzipped = found.gzipped is not None and accepts_gzip(accepted)
        # the gzipped body is another representation: its own ETag
        etag = found.etag[:-1] + '-gz"' if gzipped else found.etag
        headers = {
            "Cache-Control": IMMUTABLE if current else "no-cache",
            "ETag": etag,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": security_policy(page_origins(quic_urls(), rendezvous())),
            "Cross-Origin-Opener-Policy": "same-origin",
        }
        if found.gzipped is not None:
            headers["Vary"] = "Accept-Encoding"
        if etag in request.headers.get("If-None-Match", ""):
            return Response(b"", status=304, headers=headers)
        body = found.body
        if gzipped and found.gzipped is not None:
            body = found.gzipped
            headers["Content-Encoding"] = "gzip"
        response = Response(body, status=200, headers=headers)
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
        return await serve(INDEX)

    @app.get(PREFIX + "<path:name>")
    async def static_file(name: str) -> Response:
        return await serve(name)
