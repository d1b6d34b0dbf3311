"""Shared fixtures: a daemon on 127.0.0.1 port 0 driving the fake CLI, and an SSE reader.

Every test gets its own state directory, work directory and CLI home under ``tmp_path``; every
process a test starts is stopped by the daemon's own shutdown or by the test's ``finally``.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import settings

from sidecode_trio.config import DaemonConfig

from helpers import Client, running_daemon

TESTS = Path(__file__).parent

# Hypothesis budgets, chosen with HYPOTHESIS_PROFILE: "ci" (the nox tests session) keeps the
# default example counts but drops the per-example deadline (a shared 2-core runner is uneven)
# and prints a reproduction blob; "thorough" runs 20 times more examples, for a long local run.
# The fuzz tests scale their own budgets from the loaded profile (tests/test_fuzz_*.py).
settings.register_profile("ci", deadline=None, print_blob=True)
settings.register_profile("thorough", max_examples=2000, deadline=None)
if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
FAKE_CLAUDE = TESTS / "fake_claude.py"


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def cli_log(tmp_path: Path) -> Path:
    """Where the fake CLI records its argv and every stdin line (one JSON per line)."""
    return tmp_path / "fake-claude.log"


@pytest.fixture
def claude_env(tmp_path: Path, cli_log: Path) -> dict[str, str]:
    home = tmp_path / "claude-home"
    (home / "tmp").mkdir(parents=True)
    return {
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "TMPDIR": str(home / "tmp"),
        "FAKE_CLAUDE_LOG": str(cli_log),
    }


@pytest.fixture
def fake_claude(tmp_path: Path) -> Path:
    """An executable that runs the fake CLI with this interpreter."""
    wrapper = tmp_path / "claude"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_CLAUDE}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper


@pytest.fixture
def make_config(
    tmp_path: Path, work_dir: Path, fake_claude: Path, claude_env: dict[str, str]
) -> Callable[..., DaemonConfig]:
    def make(**changes: Any) -> DaemonConfig:
        config = DaemonConfig(
            state_dir=tmp_path / "state",
            port=0,
            claude=str(fake_claude),
            allowed_roots=(work_dir,),
            claude_env=claude_env,
            sse_keepalive=5.0,
            keystore="file",  # never touch the developer's real keychain
            keep_awake="off",  # tests that want it pass their own inhibitor command
        )
        return attrs.evolve(config, **changes)

    return make


@pytest.fixture
async def daemon(make_config: Callable[..., DaemonConfig]) -> AsyncIterator[Client]:
    async with running_daemon(make_config()) as client:
        yield client
