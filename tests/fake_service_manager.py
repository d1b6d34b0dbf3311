"""Stand-ins for ``systemctl``, ``launchctl``, ``loginctl``, ``journalctl`` and ``tail``.

The real service managers need a user session manager this machine does not run. Each stand-in is
this file, installed under the tool's name in a ``bin`` directory put first on ``PATH``: it
appends its argv to ``$FAKE_SERVICE_LOG`` (one JSON list per line) and keeps what the real
manager would remember (loaded, enabled, running, pid) in ``$FAKE_SERVICE_STATE``, so a second
call sees what the first did. It refuses what the real tool refuses (``systemctl`` without
``--user``, ``enable`` of a unit with no file, ``launchctl bootstrap`` of a loaded agent).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

TOOLS = ("systemctl", "launchctl", "loginctl", "journalctl", "tail")


def install(bin_dir: Path, log: Path, state: Path, unit_file: Path) -> dict[str, str]:
    """Put the stand-ins in ``bin_dir``; returns the environment they need."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        path = bin_dir / tool
        path.write_text(f"#!{sys.executable}\n" + Path(__file__).read_text())
        path.chmod(0o755)
    return {
        "FAKE_SERVICE_LOG": str(log),
        "FAKE_SERVICE_STATE": str(state),
        "FAKE_SERVICE_FILE": str(unit_file),
    }


def calls(log: Path) -> list[list[str]]:
    """Every recorded argv, the tool's name first."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def _fail(message: str, code: int = 1) -> None:
    print(message, file=sys.stderr)
    sys.exit(code)


def _systemctl(args: list[str], st: dict[str, Any], unit_file: Path) -> None:
    if args[:1] != ["--user"]:
        _fail("the stand-in only knows --user")
    verb, rest = args[1], args[2:]
    if verb == "daemon-reload":
        st["reloads"] = st.get("reloads", 0) + 1
    elif verb == "enable":
        if not unit_file.exists():
            _fail(f"Failed to enable unit: Unit file {rest[-1]} does not exist.")
        st["enabled"] = True
    elif verb == "disable":
        st["enabled"] = False
        if "--now" in rest:
            st["running"] = False
    elif verb in ("start", "restart"):
        if not unit_file.exists():
            _fail(f"Failed to {verb} {rest[-1]}: Unit {rest[-1]} not found.", 5)
        if verb == "restart" or not st.get("running"):
            st["pid"] = st.get("pid", 4000) + 1
            st["starts"] = st.get("starts", 0) + 1
        st["running"] = True
    elif verb == "show":
        running = st.get("running", False)
        print(f"LoadState={'loaded' if unit_file.exists() else 'not-found'}")
        print(f"UnitFileState={'enabled' if st.get('enabled') else 'disabled'}")
        print(f"ActiveState={'active' if running else st.get('inactive', 'inactive')}")
        print(f"SubState={'running' if running else 'dead'}")
        print(f"MainPID={st.get('pid', 0) if running else 0}")
        print(f"ExecMainCode={st.get('exit_code', 0)}")
        print(f"ExecMainStatus={st.get('exit_status', 0)}")
        print(f"Result={st.get('result', 'success')}")
    elif verb != "reset-failed":
        _fail(f"unknown verb {verb}")


def _launchctl(args: list[str], st: dict[str, Any], plist: Path) -> None:
    verb, rest = args[0], args[1:]
    if verb == "enable":
        st["disabled"] = False
    elif verb == "bootstrap":
        if st.get("loaded"):
            _fail("Bootstrap failed: 5: Input/output error", 5)
        if not Path(rest[1]).exists():
            _fail("Bootstrap failed: 2: No such file or directory", 2)
        st.update(loaded=True, running=True, pid=st.get("pid", 5000) + 1)
        st["starts"] = st.get("starts", 0) + 1
    elif verb in ("bootout", "kickstart", "print") and not st.get("loaded"):
        _fail(f"Could not find service in domain for port: {rest[-1]}", 113)
    elif verb == "bootout":
        st.update(loaded=False, running=False)
    elif verb == "kickstart":
        if "-k" in rest or not st.get("running"):
            st.update(running=True, pid=st.get("pid", 5000) + 1)
            st["starts"] = st.get("starts", 0) + 1
    elif verb == "print":
        print(f"{rest[0]} = {{")
        print("\tactive count = 1")
        print(f"\tpath = {plist}")
        print(f"\tstate = {'running' if st.get('running') else 'not running'}")
        if st.get("running"):
            print(f"\tpid = {st['pid']}")
        print("\tlast exit code = (never exited)")
        print("\tenvironment = {")
        print("\t\tstate = nested, ignored")
        print("\t}")
        print("}")
    elif verb == "print-disabled":
        flag = "disabled" if st.get("disabled") else "enabled"
        print(f'disabled services = {{\n\t"com.sidecode-trio.daemon" => {flag}\n}}')
    else:
        _fail(f"unknown verb {verb}")


def main() -> None:
    tool, args = Path(sys.argv[0]).name, sys.argv[1:]
    with open(os.environ["FAKE_SERVICE_LOG"], "a") as log:
        log.write(json.dumps([tool, *args]) + "\n")
    state_path = Path(os.environ["FAKE_SERVICE_STATE"])
    st: dict[str, Any] = json.loads(state_path.read_text()) if state_path.exists() else {}
    unit_file = Path(os.environ["FAKE_SERVICE_FILE"])
    if tool == "systemctl":
        _systemctl(args, st, unit_file)
    elif tool == "launchctl":
        _launchctl(args, st, unit_file)
    elif tool == "loginctl":
        print(f"Linger={'yes' if st.get('linger') else 'no'}")
    else:
        print(f"{tool}: the service's log")
    state_path.write_text(json.dumps(st))


if __name__ == "__main__":
    main()
