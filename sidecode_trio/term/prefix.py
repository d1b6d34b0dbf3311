"""Which session a command means: its id, or a unique prefix of it (pure; the plain ``send``
uses it without Trio, ``attach`` and ``send --wait`` through :class:`.client.DaemonAPI`)."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import SidecodeError


def match_session(prefix: str, ids: Sequence[str]) -> str:
    """The session whose id is ``prefix``, or the only one that starts with it."""
    if prefix in ids:
        return prefix
    found = [i for i in ids if prefix and i.startswith(prefix)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise SidecodeError(f"no session matches {prefix!r}", code="unknown_session")
    shown = ", ".join(found[:5])
    raise SidecodeError(f"{prefix!r} matches {len(found)} sessions: {shown}", code="ambiguous")
