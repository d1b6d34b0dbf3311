"""The bench's part 10 (tests/bench/bench_rtc_open.py): where the network lab cannot be built
(no root, no mosquitto/coturn) it reports why instead of failing ``nox -s bench``; its table
gives each path's median, spread and ratio to the direct path. The measurement itself runs in
the bench (it builds the lab; tests/test_rtc_lab.py covers the paths it times)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent / "bench"
sys.path.insert(0, str(BENCH))

import bench_rtc_open  # noqa: E402

import netlab  # noqa: E402


def test_without_root_the_part_is_skipped_with_the_reason_and_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    why = netlab.missing()  # no root (or no aiortc, said first)
    assert why is not None
    out = tmp_path / "open.json"
    code = (
        "import os, runpy, sys\n"
        "os.geteuid = lambda: 1000  # as an ordinary user\n"
        f"sys.argv = ['bench_rtc_open.py', '--runs', '1', '--json', {str(out)!r}]\n"
        f"runpy.run_path({str(BENCH / 'bench_rtc_open.py')!r}, run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text()) == {"skipped": why}
    assert f"Not measured: {why}." in done.stdout
    section = bench_rtc_open.render(json.loads(out.read_text()))
    assert section.startswith("\n## 10. Time from opening to the first event, by path")
    assert f"Not measured: {why}." in section


def test_the_table_gives_median_spread_and_the_ratio_to_direct() -> None:
    results = {
        "runs": 3,
        "paths": {
            "direct": bench_rtc_open.summary([10.0, 30.0, 20.0]) | {"pairs": ["quic"] * 3},
            "stun": bench_rtc_open.summary([150.0, 140.0, 160.0]) | {"pairs": ["host/srflx"] * 3},
            "turn": bench_rtc_open.summary([200.0, 190.0, 400.0])
            | {"pairs": ["relay/prflx", "relay/relay", "relay/prflx"]},
        },
    }
    rows = bench_rtc_open.table(results).splitlines()[2:]
    assert rows == [
        "| direct: WebTransport to the daemon's address, same LAN | 20 ms [10-30] | 3 | 1.0 "
        "| quic |",
        "| STUN-punched: WebRTC through two cone NATs | 150 ms [140-160] | 3 | 7.5 | host/srflx |",
        "| TURN: WebRTC through two symmetric NATs, relayed | 200 ms [190-400] | 3 | 10.0 "
        "| relay/prflx, relay/relay |",
    ]
