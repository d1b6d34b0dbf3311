"""The example clients work against a real daemon."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from helpers import Client

pytestmark = pytest.mark.trio

EXAMPLES = Path(__file__).parent.parent / "examples"


async def test_watch_client_follows_a_session(daemon: Client, work_dir: Path) -> None:
    session = (await daemon.create(work_dir, "hello watch"))["session"]
    argv = [
        sys.executable, str(EXAMPLES / "watch_client.py"), session["id"],
        # --token=VALUE: a random token may start with "-", which argparse takes for a flag
        "--url", daemon.handle.url, f"--token={daemon.handle.token}",
        f"--since={(await daemon.snapshot(session['id']))['epoch']}:0",
    ]  # fmt: skip
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    output = b""
    try:
        assert proc.stdout is not None and proc.stderr is not None
        with trio.fail_after(15):
            while b"[turn.completed]" not in output:
                chunk = await proc.stdout.receive_some(4096)
                if not chunk:  # it exited: say why
                    errors = await proc.stderr.receive_some(65536)
                    code = await proc.wait()
                    raise AssertionError(
                        f"exit {code}: {output!r}\n{errors.decode(errors='replace')}"
                    )
                output += chunk
    finally:
        proc.kill()
        await proc.wait()
    text = output.decode()
    assert "[session.created]" in text and "You said: hello watch" in text
