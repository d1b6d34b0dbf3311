"""``sidecode-trio web export DIR``: the web app as a static bundle for any HTTPS origin.

The bundle is the app exactly as the daemon serves it (the same versioned files), so it can be
hosted on GitHub Pages, Netlify, S3 or any static host with a real certificate: there it can be
installed with a service worker and Web Push, and it opens when the computer is unreachable.

It carries **no configuration and no secret**: nothing about any daemon. The app learns a
daemon (its key, addresses, certificate hashes, broker) from the pairing link's fragment, which
browsers never send to the host; one bundle serves every daemon. What a static host cannot send
is the daemon's ``Content-Security-Policy`` header, so the page gets the same policy as a
``<meta>`` element, with ``connect-src`` opened to ``https:`` and ``wss:`` (a daemon's
WebTransport address and a rendezvous broker can be anywhere) instead of the daemon's own
endpoints. ``frame-ancestors`` cannot be set by a ``<meta>``; a host that can set headers should
send ``frame-ancestors 'none'`` (README "Use it from anywhere").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from .. import __version__
from ..errors import ConfigError
from . import INDEX, load_files, security_policy

MARKER: Final = "sidecode-export.json"  #: written last: what this directory holds
CONNECT: Final = ["https:", "wss:"]


def meta_policy() -> str:
    """The page's CSP as a ``<meta>`` can carry it (no ``frame-ancestors``)."""
    parts = security_policy(CONNECT).split("; ")
    return "; ".join(p for p in parts if not p.startswith("frame-ancestors"))


def with_meta_policy(index: bytes) -> bytes:
    tag = f'<meta http-equiv="Content-Security-Policy" content="{meta_policy()}">'
    head = b'<meta charset="utf-8">'
    if head not in index:
        raise ValueError("index.html has no <meta charset> to put the policy after")
    return index.replace(head, head + b"\n" + tag.encode(), 1)


def export(target: Path) -> list[str]:
    """Write the bundle into ``target`` (absent, empty, or an earlier export); the files."""
    if target.exists():
        if not target.is_dir():
            raise ConfigError(f"{target} exists and is not a directory")
        if any(target.iterdir()) and not (target / MARKER).exists():
            raise ConfigError(
                f"{target} is not empty and holds no earlier export: choose an empty directory"
            )
    files = load_files()
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, found in sorted(files.items()):
        body = with_meta_policy(found.body) if name == INDEX else found.body
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        written.append(name)
    (target / ".nojekyll").write_bytes(b"")  # GitHub Pages: serve the files as they are
    build = next(iter(files.values())).build
    manifest = {"app": "sidecode-trio", "version": __version__, "build": build, "files": written}
    (target / MARKER).write_text(json.dumps(manifest, indent=2) + "\n")
    return written
