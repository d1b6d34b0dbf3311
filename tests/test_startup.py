"""Start-up cost: a command imports only what it uses, the daemon only what its features need.

Each check runs in a fresh interpreter (this one has imported everything) and looks at
``sys.modules``; no timings are asserted (tests/bench/ measures them).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from werkzeug.routing import Rule

from sidecode_trio.config import DaemonConfig
from sidecode_trio.http.app import HTTPSettings, create_app

from helpers import running_daemon

ROOT = Path(__file__).resolve().parent.parent

#: what neither ``--version`` nor a command talking to a running daemon may load
HEAVY = ("trio", "quart", "hypercorn", "aioquic", "httpx", "ssl", "sidecode_trio.config", "keyring")


def loaded_after(code: str, wanted: tuple[str, ...], tmp_path: Path) -> list[str]:
    """Run ``code`` in a fresh interpreter; which of ``wanted`` it imported."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {wanted!r} if m in sys.modules]))"
    )
    env = {"PYTHONPATH": str(ROOT), "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    found: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def test_version_loads_nothing_heavy(tmp_path: Path) -> None:
    """Nor attrs (``serve``'s WebRTC flags load it; only ``serve``'s parser adds them)."""
    code = (
        "import contextlib, io\n"
        "from sidecode_trio import cli\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    cli.main(['--version'])"
    )
    wanted = (*HEAVY, "attr", "sidecode_trio.rtc.settings")
    assert loaded_after(code, wanted, tmp_path) == []


@pytest.mark.parametrize("argv", [["sessions"], ["sessions", "--json"]])
def test_sessions_loads_nothing_heavy_before_it_calls_the_daemon(
    tmp_path: Path, argv: list[str]
) -> None:
    """No daemon runs on the state dir: the command ends with its clear error, having loaded
    neither Trio nor the daemon's stack (it talks HTTP with the standard library)."""
    state = tmp_path / "state"
    code = (
        "import contextlib, io\n"
        "from sidecode_trio import cli\n"
        "with contextlib.redirect_stderr(io.StringIO()) as err:\n"
        f"    assert cli.main({[*argv, '--state-dir', str(state)]!r}) == 2\n"
        "assert 'no daemon is running' in err.getvalue()"
    )
    assert loaded_after(code, ("quart", "hypercorn", "aioquic", "httpx", "trio"), tmp_path) == []


@pytest.mark.parametrize(
    ("argv", "trio"),
    [
        (["send", "abc", "hi"], False),
        (["send", "abc", "hi", "--wait"], True),
        (["attach", "abc"], True),
    ],
)
def test_send_and_attach_load_no_http_library_nor_the_daemon(
    tmp_path: Path, argv: list[str], trio: bool
) -> None:
    """A plain ``send`` is two calls made like ``sessions``'s: no Trio. ``send --wait`` and
    ``attach`` run on Trio, talking HTTP/1.1 with h11: no httpx (with the rich and pygments its
    import drags in), no config module, nothing of the daemon's stack; ``send --wait`` not even
    the attach module's renderer (only the wire classes, when it reads events)."""
    state = tmp_path / "state"
    code = (
        "import contextlib, io\n"
        "from sidecode_trio import cli\n"
        "with contextlib.redirect_stderr(io.StringIO()) as err:\n"
        f"    assert cli.main({[argv[0], '--state-dir', str(state), *argv[1:]]!r}) == 2\n"
        "assert 'no daemon is running' in err.getvalue()\n"
        + (f"import sidecode_trio.term.{argv[0]}" if trio else "")  # what the command runs
    )
    wanted: tuple[str, ...] = ("httpx", "rich", "quart", "hypercorn", "aioquic", "trio")
    wanted += ("sidecode_trio.config", *WIRE)
    if argv[0] == "send":
        wanted += ("sidecode_trio.term.attach",)
    assert loaded_after(code, wanted, tmp_path) == (["trio"] if trio else [])


#: the converter and the wire classes: ``attach`` and ``send --wait`` read the events' JSON
WIRE = (
    "sidecode_trio.wire.converter",
    "cattrs",
    "sidecode_trio.wire.events",
    "sidecode_trio.wire.snapshot",
)
SNAPSHOT = {
    "epoch": "ep", "cursor": 2, "items": [], "pending_permissions": [],
    "session": {"title": "t", "cwd": "/w", "status": "idle", "permission_mode": "default",
                "cost_usd": 0.0},
}  # fmt: skip
DELTA = {"type": "text.delta", "message_id": "m", "index": 0, "text": "hi"}
DONE = {"type": "turn.completed", "turn_id": "m", "result": "done"}


def test_attach_and_send_wait_follow_a_stream_without_the_converter(tmp_path: Path) -> None:
    """Frames of a stream as the daemon sends them, through what ``attach`` shows and what
    ``send --wait`` reads: neither loads the converter (cattrs) nor a wire class, which were
    most of ``attach``'s start-up beyond Trio."""
    stream = "".join(
        f"id: ep:{n}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"
        for n, kind, data in (
            (2, "snapshot", {"reason": "new_client", "snapshot": SNAPSHOT}),
            (3, "text.delta", {"event": DELTA}),
            (4, "turn.completed", {"event": DONE}),
        )
    )
    code = (
        "import io\n"
        "from sidecode_trio.term.attach import Attach, decode\n"
        "from sidecode_trio.term.client import DaemonAPI\n"
        "from sidecode_trio.term.render import Renderer\n"
        "from sidecode_trio.term.send import _turn_event\n"
        "from sidecode_trio.term.sse import SSEParser\n"
        "out = []\n"
        "api = DaemonAPI('http://127.0.0.1:1', 't')\n"
        "run = Attach(api, Renderer('s'), out.append, keys=False)\n"
        f"frames = SSEParser().feed({stream.encode()!r})\n"
        "for frame in frames:\n"
        "    run._show(frame)\n"
        "assert out[0].startswith('● t') and 'hi' in out and '✓ done' in out[-1], out\n"
        "result = io.StringIO()\n"
        "assert _turn_event(decode(frames[-1]), 'm', result, print) == 0\n"
        "assert result.getvalue() == 'done\\n'"
    )
    assert loaded_after(code, WIRE, tmp_path) == []


@pytest.mark.trio
async def test_the_commands_that_call_the_daemon_once_use_a_socket_not_urllib(
    tmp_path: Path, make_config: Callable[..., DaemonConfig], work_dir: Path
) -> None:
    """``sessions`` and a plain ``send`` against a running daemon (plain HTTP on loopback):
    h11 over a socket, without urllib, http.client, ssl or Trio."""
    config = make_config()
    async with running_daemon(config) as owner:
        sid = (await owner.create(work_dir))["session"]["id"]
        state = str(config.state_dir)
        code = (
            "import contextlib, io\n"
            "from sidecode_trio import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            f"    assert cli.main(['sessions', '--state-dir', {state!r}]) == 0\n"
            f"    assert cli.main(['send', '--state-dir', {state!r}, {sid[:8]!r}, 'hi']) == 0\n"
            f"assert {sid!r} in out.getvalue()"
        )
        wanted = ("urllib.request", "http.client", "ssl", "trio", "sidecode_trio.config")
        with trio.fail_after(60):
            found = await trio.to_thread.run_sync(loaded_after, code, wanted, tmp_path)
        assert found == []


def serve_once(tmp_path: Path, fake_claude: Path, **settings: object) -> str:
    """Code that starts the daemon (``settings`` over a minimal config), waits until it is
    ready and stops it."""
    fields = "".join(f"{name}={value!r}, " for name, value in settings.items())
    return f"""
from pathlib import Path
import trio
from sidecode_trio.config import DaemonConfig
from sidecode_trio.daemon import serve

config = DaemonConfig(
    state_dir=Path({str(tmp_path / "state")!r}), port=0, claude={str(fake_claude)!r},
    allowed_roots=(Path({str(tmp_path)!r}),), {fields}
)

async def main():
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, config)
        handle.stop.set()

trio.run(main)
"""


def test_the_daemon_without_remote_control_or_quic_never_loads_them(
    tmp_path: Path, fake_claude: Path
) -> None:
    """Remote Control off (the default) and QUIC off: no bridge, trio-websocket or aioquic; the
    identity key in a file: no keyring; no terminal: no QR code renderer."""
    code = serve_once(tmp_path, fake_claude, quic_port=-1, keystore="file", keep_awake="off")
    wanted = ("sidecode_trio.bridge.remote", "trio_websocket", "aioquic", "keyring", "segno")
    assert loaded_after(code, wanted, tmp_path) == []


def test_the_default_daemon_loads_no_http_client_nor_optional_paths(
    tmp_path: Path, fake_claude: Path
) -> None:
    """The default configuration (QUIC on, no push subscription, no webhook, Remote Control and
    WebRTC off): httpx (and the rich/pygments its import drags in) waits for the first
    notification; the bridge and the WebRTC path are never loaded."""
    code = serve_once(tmp_path, fake_claude, quic_port=0)
    wanted = (
        "httpx",
        "httpcore",
        "rich",
        "pygments",
        "sidecode_trio.notify.transport",
        "sidecode_trio.bridge.remote",
        "trio_websocket",
        "sidecode_trio.rtc.service",
        "aiortc",
        "paho",
    )
    assert loaded_after(code, wanted, tmp_path) == []


def test_the_app_compiles_no_url_builder_until_one_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Werkzeug compiles two URL builders (generated code, for ``url_for``) per rule as it is
    added: most of what the app's routes cost at start-up. They wait for a first build, which
    gives the URL it gave before."""
    compiled: list[str] = []
    real = Rule._compile_builder

    def counted(rule: Rule, append_unknown: bool = True) -> Any:
        compiled.append(rule.rule)
        return real(rule, append_unknown)

    monkeypatch.setattr(Rule, "_compile_builder", counted)
    unserved: Any = object()  # routes only registered here, never served
    app = create_app(unserved, unserved, HTTPSettings(), lambda: None)
    rules = [rule for rule in app.url_map.iter_rules() if rule.endpoint != "static"]
    assert len(rules) > 30 and compiled == []
    urls = app.url_map.bind("localhost")
    for rule in rules:
        method = next(iter(rule.methods or {"GET"}))
        values = {name: "a b" for name in rule.arguments}
        expected = re.sub(r"<(?:\w+:)?\w+>", "a%20b", rule.rule)
        assert urls.build(rule.endpoint, values, method=method) == expected
    assert len(compiled) == len(rules)  # the one each build needed
