"""What the example devices over a framed link (``wt_client.py``: WebTransport, ``rtc_client.py``:
WebRTC) share, the part that does not depend on how the link was opened: the session commands they
offer, how a session's stream is printed, and how a permission request is answered. Both speak the
same protocol once connected (PROTOCOL.md §10), through the same ``DeviceSession``.

Not a script: ``python examples/wt_client.py ...`` finds it beside the script (Python puts the
script's folder first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import trio

from sidecode_trio.channel.client import DeviceSession


def add_session_commands(parser: argparse.ArgumentParser) -> Any:
    """``sessions``, ``new``, ``follow`` and ``send``; the subparsers, for a client's own."""
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("sessions", help="list sessions")
    new = commands.add_parser("new", help="start a session")
    new.add_argument("cwd")
    new.add_argument("prompt")
    follow = commands.add_parser("follow", help="stream a session, answering permission requests")
    follow.add_argument("session_id")
    follow.add_argument("--since", help="resume after this '<epoch>:<cursor>'")
    follow.add_argument("--approve", choices=["ask", "allow", "deny", "no"], default="ask")
    send = commands.add_parser("send", help="send a message")
    send.add_argument("session_id")
    send.add_argument("text")
    return commands


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if args.command == "new":
        args.cwd = str(Path(args.cwd).resolve())  # relative to the shell's directory
    return args


async def run_command(session: DeviceSession, args: argparse.Namespace) -> None:
    """``sessions``, ``new`` or ``send`` over an authenticated session."""
    if args.command == "sessions":
        for s in (await session.request("GET", "/v1/sessions"))["sessions"]:
            print(f"{s['id']}  {s['status']:15}  {s['title']}")
    elif args.command == "new":
        body = {"cwd": args.cwd, "prompt": args.prompt}
        print((await session.request("POST", "/v1/sessions", body))["session"]["id"])
    elif args.command == "send":
        path = f"/v1/sessions/{args.session_id}/messages"
        print(await session.request("POST", path, {"text": args.text}))


def describe(message: dict[str, Any]) -> str:
    """A stream message as ``follow`` prints it: text as it streams, other events by type."""
    if message["type"] == "snapshot":
        items = message["snapshot"]["items"]
        return f"[snapshot: {len(items)} transcript items, at {message['id']}]\n"
    event = message.get("data", {}).get("event", {})
    if event.get("type") == "text.delta":
        return str(event["text"])
    return f"\n[{event.get('type', message['type'])}]\n"


async def answer(session: DeviceSession, args: argparse.Namespace, message: dict[str, Any]) -> None:
    """Answer a permission request as ``--approve`` says (``ask``: on the terminal)."""
    event = message.get("data", {}).get("event", {})
    if event.get("type") != "permission.requested" or args.approve == "no":
        return
    behavior = args.approve
    if behavior == "ask":
        prompt = f"allow {event['tool_name']} {json.dumps(event['input'])}? [y/N] "
        line = await trio.to_thread.run_sync(input, prompt)
        behavior = "allow" if line.strip().lower().startswith("y") else "deny"
    path = f"/v1/sessions/{args.session_id}/permissions/{event['request_id']}"
    await session.request("POST", path, {"behavior": behavior})
