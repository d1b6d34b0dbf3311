"""Install a pinned real Claude Code CLI binary for end-to-end tests.

Only the npm registry is contacted.  Instead of the ``@anthropic-ai/claude-code``
wrapper (whose postinstall hard-links a platform binary and which declares
``engines.node >= 22`` from 2.1.198 on) we install the per-platform package
directly, with ``--ignore-scripts``::

    npm install --ignore-scripts --no-audit --no-fund --prefix DEST \\
        @anthropic-ai/claude-code-linux-x64@VERSION

The binary then lives at
``DEST/node_modules/@anthropic-ai/claude-code-<platform>/claude`` (a Bun-compiled
executable that does not need node at run time).  Both 2.1.329 and 2.1.197 are
published in this form for linux x64/arm64 (glibc and musl), darwin and win32.

Usage::

    python tests/claude_install.py [--version 2.1.329] --dest /tmp/claude-cli/2.1.329

The last line on stdout is the absolute path of the binary.  Importable as
``install(version, dest) -> Path``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

DEFAULT_VERSION = "2.1.329"
NPM_SCOPE = "@anthropic-ai"
INSTALL_TIMEOUT_S = 600.0
VERSION_TIMEOUT_S = 30.0


class InstallError(RuntimeError):
    """The CLI could not be installed or does not report the expected version."""


def _is_musl() -> bool:
    if glob.glob("/lib/ld-musl-*.so.1") or glob.glob("/usr/lib/ld-musl-*.so.1"):
        return True
    libc, _ = platform.libc_ver()
    return libc == "" and Path("/etc/alpine-release").exists()


def _arch() -> str:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "x64"
    if machine in ("aarch64", "arm64"):
        return "arm64"
    raise InstallError(f"unsupported CPU architecture: {platform.machine()!r}")


def platform_suffix() -> str:
    """The platform part of the npm package name, e.g. ``linux-x64-musl``."""
    arch = _arch()
    system = platform.system().lower()
    if system == "linux":
        return f"linux-{arch}-musl" if _is_musl() else f"linux-{arch}"
    if system == "darwin":
        return f"darwin-{arch}"
    if system == "windows":
        return f"win32-{arch}"
    raise InstallError(f"unsupported platform: {system!r}")


def package_name() -> str:
    """The npm package holding the native binary for this machine."""
    return f"{NPM_SCOPE}/claude-code-{platform_suffix()}"


def binary_path(dest: Path) -> Path:
    """Where the binary lands after installing into ``dest``."""
    exe = "claude.exe" if platform.system() == "Windows" else "claude"
    return dest / "node_modules" / package_name() / exe


def installed_version(dest: Path) -> str | None:
    """The version recorded in the installed package.json, if any."""
    manifest = dest / "node_modules" / package_name() / "package.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    version = data.get("version") if isinstance(data, dict) else None
    return version if isinstance(version, str) else None


def _npm_install(version: str, dest: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise InstallError("npm not found on PATH")
    dest.mkdir(parents=True, exist_ok=True)
    argv = [
        npm,
        "install",
        "--ignore-scripts",
        "--no-audit",
        "--no-fund",
        "--no-save",
        "--prefix",
        str(dest),
        f"{package_name()}@{version}",
    ]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
    )
    if proc.returncode != 0:
        raise InstallError(f"npm install failed ({proc.returncode}):\n{proc.stderr}")


def cli_version(binary: Path) -> str:
    """Run ``claude --version`` offline and return its first line."""
    env = dict(os.environ)
    env.update(
        DISABLE_AUTOUPDATER="1", DISABLE_TELEMETRY="1", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1"
    )
    proc = subprocess.run(
        [str(binary), "--version"],
        capture_output=True,
        text=True,
        timeout=VERSION_TIMEOUT_S,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0:
        raise InstallError(f"{binary} --version exited {proc.returncode}: {proc.stderr}")
    return proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""


def install(version: str = DEFAULT_VERSION, dest: Path | str = ".") -> Path:
    """Install ``version`` into ``dest`` (no-op if present) and return the binary path."""
    dest = Path(dest).resolve()
    binary = binary_path(dest)
    if installed_version(dest) != version or not binary.exists():
        _npm_install(version, dest)
    if not binary.exists():
        raise InstallError(f"binary missing after install: {binary}")
    reported = cli_version(binary)
    if not reported.startswith(f"{version} "):
        raise InstallError(f"{binary} reports {reported!r}, expected {version}")
    return binary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=DEFAULT_VERSION)
    parser.add_argument("--dest", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        binary = install(args.version, args.dest)
    except (InstallError, subprocess.TimeoutExpired) as exc:
        print(f"claude_install: {exc}", file=sys.stderr)
        return 1
    print(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
