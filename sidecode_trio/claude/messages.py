"""What the daemon writes to the CLI, and how it launches it (pure).

One malformed stdin line kills the CLI (``reference/claude-code-cli.md`` §7), so every line is built
here from typed arguments and serialised by :func:`encode_line`, never concatenated by hand.
"""

from __future__ import annotations

import os
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..wire import converter as wire

PERMISSION_MODES = ("default", "acceptEdits", "plan", "bypassPermissions", "dontAsk", "auto")


@attrs.frozen
class LaunchSpec:
    """Everything needed to start one ``claude`` process for a session."""

    claude: str
    cwd: str
    session_id: str
    resume: bool  #: ``--resume`` an existing transcript, else create it with ``--session-id``
    model: str | None = None
    permission_mode: str = "default"
    env: Mapping[str, str] = attrs.field(factory=dict)
    extra_args: Sequence[str] = ()
    remote_control: bool = False  #: mirror to Remote Control (``--remote-control[=name]``)
    remote_control_name: str | None = None

    def argv(self) -> list[str]:
        args = [
            self.claude,
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
            "--include-partial-messages",
            "--permission-prompt-tool",
            "stdio",
            "--permission-mode",
            self.permission_mode,
        ]
        if self.model:
            args.append(f"--model={self.model}")
        # ``--flag=value`` form so an id can never be taken for a flag (as the SDK does).
        if self.resume:
            args.append(f"--resume={self.session_id}")
        else:
            args.append(f"--session-id={self.session_id}")
        if self.remote_control:
            name = self.remote_control_name
            args.append(f"--remote-control={name}" if name else "--remote-control")
        args.extend(self.extra_args)
        return args

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        # The CLI tailors itself to its host by this variable; we drive it exactly the way the
        # Python Agent SDK does (stream-json + control protocol), so we say what the SDK says.
        env.setdefault("CLAUDE_CODE_ENTRYPOINT", "sdk-py")
        return env


def transcript_path(cwd: str, session_id: str, env: Mapping[str, str]) -> Path:
    """Where the CLI keeps a session's transcript (``--resume`` needs it to exist)."""
    config = env.get("CLAUDE_CONFIG_DIR")
    base = Path(config) if config else Path(env.get("HOME") or Path.home()) / ".claude"
    slug = "".join(c if c.isalnum() else "-" for c in cwd)
    return base / "projects" / slug / f"{session_id}.jsonl"


def encode_line(message: Mapping[str, Any]) -> bytes:
    """One stdin line. A client's text may hold a lone surrogate (``"\\ud800"`` is valid JSON):
    it has no UTF-8 form, and raising here ended the session's task and with it the daemon (a
    prompt) or answered 500 after the permission was resolved (an answer); such a message is
    written with ASCII escapes instead, which the CLI's JSON parser reads as the same string."""
    return wire.json_bytes(message) + b"\n"


def user_message(
    text: str, message_uuid: str, images: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """A user turn; with images, ``content`` is a list of blocks (the images, then the text)."""
    content: str | list[Any] = text
    if images:
        content = [*(dict(block) for block in images), {"type": "text", "text": text}]
    return {
        "type": "user",
        "message": {"role": "user", "content": content},
        "parent_tool_use_id": None,
        "session_id": "default",
        "uuid": message_uuid,
    }


def control_request(request_id: str, request: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "control_request", "request_id": request_id, "request": dict(request)}


def control_success(request_id: str, response: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "control_response",
        "response": {"subtype": "success", "request_id": request_id, "response": dict(response)},
    }


def control_error(request_id: str, error: str) -> dict[str, Any]:
    return {
        "type": "control_response",
        "response": {"subtype": "error", "request_id": request_id, "error": error},
    }


def new_request_id(counter: int) -> str:
    return f"req_{counter}_{uuidlib.uuid4().hex[:8]}"


def permission_allow(
    original_input: Mapping[str, Any],
    updated_input: Mapping[str, Any] | None = None,
    updated_permissions: Sequence[Any] | None = None,
) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "behavior": "allow",
        "updatedInput": dict(updated_input if updated_input is not None else original_input),
    }
    if updated_permissions:
        answer["updatedPermissions"] = list(updated_permissions)
    return answer


def permission_deny(message: str, interrupt: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {"behavior": "deny", "message": message}
    if interrupt:
        answer["interrupt"] = True
    return answer
