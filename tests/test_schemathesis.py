"""schemathesis against a live daemon: generated requests from protocol/openapi.json.

The daemon runs in this test (127.0.0.1, port 0, the fake CLI); schemathesis runs as its own
process (its CLI), so its synchronous HTTP client and Hypothesis engine never share the Trio
loop, and a hang is bounded by ``fail_after`` and its ``--request-timeout``. Checks: no 5xx, every
status is one the document lists, every body matches its schema and content type, and a request
the document says is invalid is refused (``negative_data_rejection``). Event streams
never end by themselves, so they are left out here (tests/test_fuzz_http.py covers their resume
inputs). ``SCHEMATHESIS_EXAMPLES`` raises the examples per operation for a longer local run,
``SCHEMATHESIS_SEED`` explores other inputs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from sidecode_trio.config import DaemonConfig

from helpers import running_daemon

OPENAPI = Path(__file__).parent.parent / "protocol" / "openapi.json"
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "8"))
SEED = os.environ.get("SCHEMATHESIS_SEED", "8")  # fixed in CI (reproducible); vary it locally
TIME_LIMIT = 150  # seconds; about 30 s on a 2-core machine at 8 examples an operation
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",  # a value the document forbids is refused, never ignored
)
# The event streams; and the pairing route, whose refusals are rate limited per address by
# design, so random proofs would mostly test the limiter (tests/test_security.py covers it).
EXCLUDED_PATHS = r"(/events$)|(^/v1/pair$)"


def _command(url: str, token: str, report: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        str(OPENAPI),
        "--url",
        url,
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        ",".join(CHECKS),
        "--exclude-path-regex",
        EXCLUDED_PATHS,
        "--max-examples",
        str(EXAMPLES),
        "--request-timeout",
        "10",
        "--workers",
        "1",
        "--seed",
        SEED,
        "--generation-database",
        "none",
        # Credentials are ours (the header above): generated ones would only fail, and enough
        # failures from one address are rate limited (429) by design.
        "--generation-with-security-parameters",
        "false",
        "--phases",
        "examples,coverage,fuzzing",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]


async def test_schemathesis_finds_no_server_error_or_schema_violation(
    make_config: Callable[..., DaemonConfig], tmp_path: Path
) -> None:
    report = tmp_path / "schemathesis.xml"
    with trio.fail_after(TIME_LIMIT):
        async with running_daemon(make_config()) as client:
            command = _command(client.handle.url, client.handle.token, report)
            result = await trio.run_process(  # in tmp_path: it keeps a cache in its cwd
                command, capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path
            )
            health = await client.http.get("/v1/sessions")
    output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    if "No module named schemathesis" in output:
        pytest.fail("schemathesis is not installed: pip install -e '.[test]'")
    assert result.returncode == 0, output[-20000:]
    assert health.status_code == 200, "the daemon is not healthy after the run"
    assert "passed" in output.lower(), output[-5000:]
