"""``sidecode-trio attach`` and ``send`` from parsed arguments: terminal checks, then Trio."""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial

import trio

from ..defaults import default_state_dir


def wants_color(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    tty = bool(isatty()) if callable(isatty) else False
    return tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def run(args: argparse.Namespace, url: str, token: str) -> int:
    if args.command == "send":  # the attach module (the wire classes, the renderer) not needed
        from .send import send

        # args.text: the message, read and checked by the command line (cli.py)
        job = partial(
            send, url, token, args.session, args.text, sys.stdout, sys.stderr, wait=args.wait
        )
        return trio.run(job)
    from .attach import attach

    keys = sys.stdin.fileno() if sys.stdin.isatty() else None  # keys only from a terminal
    color = wants_color(sys.stdout) if args.color is None else args.color
    job = partial(
        attach,
        url,
        token,
        args.session,
        sys.stdout,
        keys_fd=keys,
        color=color,
        history=args.history,
        state_dir=args.state_dir or default_state_dir(),
    )
    return trio.run(job)
