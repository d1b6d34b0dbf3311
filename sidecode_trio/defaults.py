"""Defaults the command line shows before it loads anything (``sidecode-trio --help`` and
``--version`` import this, not :mod:`.config`)."""

from __future__ import annotations

import os
from pathlib import Path

TYPE_CHECKING = False  # not typing: the command line's --version does without it
if TYPE_CHECKING:
    from typing import Final

DEFAULT_PORT: Final = 8765


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sidecode-trio"
