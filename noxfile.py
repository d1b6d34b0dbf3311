"""Developer and CI sessions. ``nox`` alone runs the unit and integration tests.

The README's test command (also ``.ci/run``) runs ``tests lint typecheck e2e``; ``e2e`` installs
each pinned Claude Code CLI from npm (no global ``claude`` is used) and runs the real binary
against a mock Messages API on 127.0.0.1. ``bench`` is never part of the test run. ``tests``
includes a headless Chromium talking WebTransport to the daemon, WebKit (WebKitGTK under Xvfb)
driving the app over HTTP, and the WebRTC network lab
(tests/netlab.py: namespaces, mosquitto, coturn); under ``CI=true`` it installs the Debian
packages they need when they are missing (elsewhere those tests skip without them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.error_on_missing_interpreters = True

# The newest CLI we support and the oldest (the last release that installs on node 20 unpinned).
CLAUDE_VERSIONS = ("2.1.329", "2.1.197")
CLI_CACHE = Path(".nox") / "claude-cli"


@nox.session
def tests(session: nox.Session) -> None:
    """Unit, property and integration tests (fake CLI, loopback only; headless Chromium)."""
    _ensure_system_packages(session)
    session.install("-e", ".[test]")
    # Hypothesis budgets (tests/conftest.py): bounded and deadline-free unless the caller sets one
    profile = {"HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "ci")}
    session.run("pytest", "-m", "not e2e", *session.posargs, env=profile)


# command -> Debian package. chromium: the browser tests (test_quic_browser, test_webapp_browser,
# through Playwright's executable_path: Playwright's own browsers are never downloaded).
# WebKitWebDriver and Xvfb: the app in WebKit, Safari's engine (test_webkit_browser,
# tests/webkit.py; WebKitGTK has no headless mode). The rest: the WebRTC network lab
# (tests/netlab.py, test_rtc_lab.py), which runs as root in CI.
SYSTEM_PACKAGES = {
    "chromium": "chromium",
    "WebKitWebDriver": "webkit2gtk-driver",
    "Xvfb": "xvfb",
    "ip": "iproute2",
    "iptables": "iptables",
    "conntrack": "conntrack",
    "tcpdump": "tcpdump",
    "mosquitto": "mosquitto",
    "turnserver": "coturn",
}


def _ensure_system_packages(session: nox.Session) -> None:
    """CI installs the Debian packages the browser and network-lab tests need, if missing."""
    if os.environ.get("CI") != "true":
        return
    missing = sorted({pkg for cmd, pkg in SYSTEM_PACKAGES.items() if not shutil.which(cmd)})
    if not missing:
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    session.run("apt-get", "install", "-y", "-qq", *missing, external=True, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test]", "mypy>=1.10", "nox")
    session.run("mypy")


@nox.session
@nox.parametrize("cli", CLAUDE_VERSIONS)
def e2e(session: nox.Session, cli: str) -> None:
    """The real Claude Code CLI (pinned, from npm) against a mock Messages API."""
    session.install("-e", ".[test]")
    out = session.run(
        "python", "tests/claude_install.py", "--version", cli, "--dest", str(CLI_CACHE / cli),
        silent=True,
    )  # fmt: skip
    binary = str(out).strip().splitlines()[-1]
    session.log(f"claude {cli}: {binary}")
    session.run("pytest", "-m", "e2e", "tests/test_e2e.py", env={"CLAUDE_BIN": binary})


@nox.session
def contract(session: nox.Session) -> None:
    """Record the CLI's frames for the fixed scenarios and diff them against a pinned release.

    Needs npm and the network, so it is not part of CI. ``nox -s contract -- 2.1.340`` installs
    that release, records it into tests/data/recorded/2.1.340/ and prints its structural diff
    against the newest pinned CLI; with no argument it re-records the newest pinned one (a diff
    there means the recorder or the mock changed). Review the diff, then commit the recording
    and add the version to CLAUDE_VERSIONS.
    """
    session.install("-e", ".[test]")
    version = session.posargs[0] if session.posargs else CLAUDE_VERSIONS[0]
    out = Path(session.create_tmp()) / "recorded" / version if not session.posargs else None
    args = ["--version", version, "--diff-against", CLAUDE_VERSIONS[0]]
    session.run("python", "tests/record_frames.py", *args, *(["--out", str(out)] if out else []))


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks with baselines measured in the same run (``-- --quick`` for a short run;
    ``-- --profile`` adds a py-spy profile of the token path)."""
    session.install("-e", ".[test]", "py-spy>=0.3")  # py-spy: the --profile sampler
    session.run("python", "tests/bench/run.py", *session.posargs)
