"""Markdown tables of the benchmark's results (pure: a results dict in, text out).

Every comparison row shows the daemon's figure, the baseline and a ratio oriented so that
**higher is worse** for the daemon: figure / baseline for times, baseline / figure for rates.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any, Final

import bench_startup

Row = Sequence[str]
TARGETS: Final = {
    "p99_20": 1000.0,  # µs
    "p99_100": 4000.0,  # µs
    "appends": 100_000.0,  # events/s
    "deliveries": 20_000.0,  # events/s to 20 clients, all clients together
    "replay": 25.0,  # ms
}


def table(headers: Row, rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def num(value: Any, digits: int = 0) -> str:
    if not isinstance(value, int | float) or math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def ratio(figure: Any, baseline: Any, rate: bool) -> str:
    try:
        value = baseline / figure if rate else figure / baseline
    except (TypeError, ZeroDivisionError):
        return "n/a"
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def compare(label: Row, figure: Any, baseline: Any, *, rate: bool, digits: int = 0) -> list[str]:
    how = "relay/daemon" if rate else "daemon/relay"
    return [*label, num(figure, digits), num(baseline, digits), ratio(figure, baseline, rate), how]


def met(value: Any, target: float, *, at_most: bool) -> str:
    if not isinstance(value, int | float) or math.isnan(value):
        return "not measured"
    return "met" if (value <= target if at_most else value >= target) else "**not met**"


def _get(results: dict[str, Any], *path: Any) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return math.nan
        node = node[key]
    return node


# -- sections ---------------------------------------------------------------------------------


def machine(results: dict[str, Any]) -> str:
    m = results["machine"]
    keys = ["cpu", "cores", "kernel", "python", "trio", "hypercorn", "quart", "quart-trio"]
    keys += ["h11", "sqlite"]
    text = "## Machine\n\n" + table(keys, [[str(m.get(k, "?")) for k in keys]])
    return text + f"\n{results['pinning']}\n"


def latency(results: dict[str, Any]) -> str:
    daemon, relay = results["latency"]["daemon"], results["latency"]["relay"]
    rows = []
    for n in sorted(daemon, key=int):
        for name, key in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("max", "max")):
            d, r = _get(daemon, n, "latency_us", key), _get(relay, n, "latency_us", key)
            rows.append(compare([str(n), name], d, r, rate=False))
        d, r = _get(daemon, n, "worst_client_us", "p99"), _get(relay, n, "worst_client_us", "p99")
        rows.append(compare([str(n), "worst-client p99"], d, r, rate=False))
        d, r = _get(daemon, n, "cpu_percent"), _get(relay, n, "cpu_percent")
        rows.append(compare([str(n), "server CPU % of a core"], d, r, rate=False, digits=1))
    headers = ["clients", "metric (µs)", "sidecode-trio", "raw relay", "ratio", "ratio is"]
    plan = results["plan"]
    intro = (
        f"## 1. Token-path added latency: CLI stdout line → SSE receipt (µs)\n\n"
        f"One session, `[[stamp:{plan['warmup'] + plan['measured']}:{plan['rate']}]]`: "
        f"{plan['rate']} deltas/s, the first {plan['warmup']} per client not counted, "
        f"{plan['measured']} measured per client. Every (delta, client) delivery counts; "
        "worst-client = per delta, the slowest client. Latencies include the client's own "
        "delay (from epoll returning to its recv of that socket, reported below), the same "
        "for both servers. The two servers run alternately, one run each per fan-out; "
        '"other load" below is CPU time on the server\'s core not used by the server (other '
        "jobs on the machine): where it is high, that run's tail is noise.\n\n"
    )
    return intro + table(headers, rows) + "\n" + _latency_details(daemon, relay, results)


def previous(results: dict[str, Any]) -> str:
    """The token path of this code against an earlier version's, in the same run."""
    now, before = results["latency"]["daemon"], results["latency"].get("previous") or {}
    if not before:
        return ""
    rows = []
    for n in sorted(before, key=int):
        for name, key in (("p50", "p50"), ("p90", "p90"), ("p99", "p99")):
            figure, baseline = _get(now, n, "latency_us", key), _get(before, n, "latency_us", key)
            rows.append(
                [str(n), f"{name} (µs)", num(figure), num(baseline), ratio(figure, baseline, False)]
            )
        figure, baseline = _cpu_per_event(now.get(n, {})), _cpu_per_event(before[n])
        rows.append(
            [
                str(n),
                "server CPU µs per delivery",
                num(figure, 1),
                num(baseline, 1),
                ratio(figure, baseline, False),
            ]
        )
    intro = (
        "## 1b. The token path before and after, same run\n\n"
        f"The daemon of `{results.get('previous_code')}` (the code before this change) joined "
        "the runs of section 1, alternating with the others. Ratio: now / before (below 1: "
        "faster now).\n\n"
    )
    headers = ["clients", "metric", "this code", "previous code", "ratio"]
    return intro + table(headers, rows)


def _cpu_per_event(run: dict[str, Any]) -> Any:
    """Server CPU µs per SSE event delivered (one event to one client)."""
    events = _get(run, "events")
    return _get(run, "cpu_seconds") * 1e6 / events if events else math.nan


def _busy(run: dict[str, Any], results: dict[str, Any], role: str) -> Any:
    """How busy (%) the CPU of ``role`` ("daemon" or "client") was during ``run``."""
    cpu = results.get("cpu_names", {}).get(role)
    return _get(run, "cpu_busy", cpu) if cpu else math.nan


def _foreign(run: dict[str, Any], results: dict[str, Any]) -> Any:
    """Load on the server's CPU from anything but the server (other jobs on the machine)."""
    other = _busy(run, results, "daemon") - _get(run, "cpu_percent")
    return other if math.isnan(other) else max(0.0, other)


def _latency_details(daemon: dict[Any, Any], relay: dict[Any, Any], results: dict[str, Any]) -> str:
    rows = []
    for n in sorted(daemon, key=int):
        for name, run in (("sidecode-trio", daemon[n]), ("raw relay", relay.get(n, {}))):
            events, deltas = _get(run, "events"), _get(run, "deltas")
            rows.append(
                [
                    str(n),
                    name,
                    num(_get(run, "latency_us", "n")),
                    num(deltas / events if events else math.nan, 2),
                    f"{_get(run, 'completed')}/{n}",
                    num(_get(run, "client_wait_us", "p50"), 1),
                    num(_get(run, "client_wait_us", "p99"), 1),
                    num(_cpu_per_event(run), 1),
                    num(_busy(run, results, "client"), 1),
                    num(_foreign(run, results), 1),
                ]
            )
    headers = ["clients", "server", "deliveries measured", "deltas per SSE event"]
    headers += ["streams that saw turn.completed", "client's own delay p50 (µs)", "p99"]
    headers += ["server CPU µs per delivery", "client CPU busy %", "other load on server CPU %"]
    return table(headers, rows)


def log_rate(results: dict[str, Any]) -> str:
    rows = []
    for batch, pair in sorted(results["log"].items(), key=lambda item: int(item[0])):
        figure, baseline = pair["figure"], pair["baseline"]
        rows.append(
            compare(
                [str(batch), num(figure["events"]), num(figure["commits"])],
                figure["events_per_s"],
                baseline["events_per_s"],
                rate=True,
            )
        )
    headers = ["events per flush", "events", "writer commits", "EventLog append+flush ev/s"]
    headers += ["raw sqlite3 executemany ev/s", "ratio", "ratio is"]
    intro = (
        "## 2. Durable log appends (events/s)\n\n"
        "A fresh SQLite store per row; small `text.delta` events; `await flush()` after each "
        "batch. Baseline: the same pre-encoded rows, one `BEGIN; executemany; COMMIT` per "
        "batch.\n\n"
    )
    return intro + table(headers, rows)


def throughput(results: dict[str, Any]) -> str:
    d, r = results["throughput"]["daemon"], results["throughput"]["relay"]
    clients = results["plan"]["max_clients"]
    rows = [
        compare(
            ["SSE events/s per client"],
            _get(d, "events_per_s") / clients,
            _get(r, "events_per_s") / clients,
            rate=True,
        ),
        compare(
            ["SSE events/s, all clients"],
            _get(d, "events_per_s"),
            _get(r, "events_per_s"),
            rate=True,
        ),
        compare(
            ["deltas/s per client"],
            _get(d, "deltas_per_s") / clients,
            _get(r, "deltas_per_s") / clients,
            rate=True,
        ),
        compare(
            ["deltas/s, all clients"], _get(d, "deltas_per_s"), _get(r, "deltas_per_s"), rate=True
        ),
        compare(
            ["deltas per SSE event"],
            _deltas_per_event(d),
            _deltas_per_event(r),
            rate=False,
            digits=1,
        ),
        compare(
            ["latency p50 (µs, queue-bound)"],
            _get(d, "latency_us", "p50"),
            _get(r, "latency_us", "p50"),
            rate=False,
        ),
        compare(
            ["latency p99 (µs, queue-bound)"],
            _get(d, "latency_us", "p99"),
            _get(r, "latency_us", "p99"),
            rate=False,
        ),
        compare(
            ["server CPU % of a core"],
            _get(d, "cpu_percent"),
            _get(r, "cpu_percent"),
            rate=False,
            digits=1,
        ),
        compare(
            ["server CPU µs per event delivered"],
            _cpu_per_event(d),
            _cpu_per_event(r),
            rate=False,
            digits=1,
        ),
        compare(
            ["capacity: events/s at 100 % of a core, all clients"],
            1e6 / _cpu_per_event(d),
            1e6 / _cpu_per_event(r),
            rate=True,
        ),
        compare(["window (s)"], _get(d, "window_s"), _get(r, "window_s"), rate=False, digits=2),
        compare(
            ["client CPU busy % (clients + fake CLI)"],
            _busy(d, results, "client"),
            _busy(r, results, "client"),
            rate=False,
            digits=1,
        ),
        compare(
            ["other load on the server CPU %"],
            _foreign(d, results),
            _foreign(r, results),
            rate=False,
            digits=1,
        ),
    ]
    plan = results["plan"]
    intro = (
        f"## 3. Most events/s delivered to {plan['max_clients']} clients\n\n"
        f"`[[stamp:{plan['max_deltas']}:0]]` x {plan['max_turns']} turns queued at once (no "
        "pacing; the daemon and the relay coalesce the deltas of each stdout read). Window: "
        "from the CLI writing the first delta to the last delta received. The more the server "
        "lags, the bigger its reads, the more deltas per event. When the client CPU (the "
        "clients and the fake CLI share it) is near 100 %, the run is bound by them, not by "
        "the server.\n\n"
    )
    headers = ["metric", "sidecode-trio", "raw relay", "ratio", "ratio is"]
    return intro + table(headers, rows)


def _events_capacity(run: dict[str, Any]) -> float:
    cpu = _cpu_per_event(run)
    return float(1e6 / cpu) if cpu else math.nan


def _lines_per_cpu_second(run: dict[str, Any]) -> float:
    """CLI text-delta lines relayed per second of the server's CPU: what it could take with a
    core to itself (the unpaced runs are often bound by the clients and the fake CLI instead)."""
    lines = _get(run, "deltas") / max(1, _get(run, "clients"))
    seconds = _get(run, "cpu_seconds")
    return float(lines / seconds) if seconds else math.nan


def _lines_per_s(run: dict[str, Any]) -> Any:
    """CLI text-delta lines/s, from the first to the last delta one client received."""
    return _get(run, "deltas_per_s") / max(1, _get(run, "clients"))


def _deltas_per_event(run: dict[str, Any]) -> float:
    events = _get(run, "events")
    return float(_get(run, "deltas") / events) if events else math.nan


def replay(results: dict[str, Any]) -> str:
    rep = results["replay"]
    relay = rep.get("relay", {})
    rows = []
    for path, label in (
        ("memory", "in-memory tail (live daemon)"),
        ("sqlite", "SQLite (restarted daemon)"),
    ):
        for key, name in (
            ("total_ms", "all frames, median"),
            ("total_ms_best", "all, best"),
            ("total_ms_first", "all, first connection (cold)"),
            ("ttfb_ms", "first byte, median"),
            ("first_frame_ms", "first frame, median"),
        ):
            rows.append(
                compare([label, name], _get(rep, path, key), _get(relay, key), rate=False, digits=2)
            )
    plan = results["plan"]
    intro = (
        f"## 4. Replay of {plan['replay_events']:,} missed events (ms from the request)\n\n"
        f"One client, `Last-Event-ID` just before the {plan['replay_events']:,} events, "
        f"{plan['replay_repeat']} fresh connections each. Baseline: the raw relay writing "
        "pre-encoded frames of the same size from memory, 256 per write.\n\n"
    )
    headers = ["served from", "metric", "sidecode-trio", "raw relay", "ratio", "ratio is"]
    return intro + table(headers, rows)


def startup_report(results: dict[str, Any]) -> str:
    return bench_startup.report(results)


def footprint(results: dict[str, Any]) -> str:
    fp = results.get("footprint")
    if not fp:
        return ""
    median = statistics.median
    relay_start = median(fp["relay_startup_s"]) * 1e3
    mem, snap = fp.get("memory", {}), fp.get("snapshot", {})
    loaded = fp.get("startup_loaded_s") or [math.nan]
    rows = [
        compare(
            ["start-up to ready, empty state (ms, median)"],
            median(fp["startup_fresh_s"]) * 1e3,
            relay_start,
            rate=False,
        ),
        compare(
            [f"start-up to ready, {_get(mem, 'sessions') + 1} stored sessions (ms, median)"],
            median(loaded) * 1e3,
            relay_start,
            rate=False,
        ),
        compare(
            ["RSS just started (MiB)"],
            _get(fp, "rss_fresh_mib"),
            _get(mem, "relay_idle_mib"),
            rate=False,
            digits=1,
        ),
        compare(
            [f"RSS, {_get(mem, 'sessions')} idle sessions + {_get(mem, 'links')} open links (MiB)"],
            _get(mem, "daemon_mib"),
            _get(mem, "relay_mib"),
            rate=False,
            digits=1,
        ),
        compare(
            [
                f"snapshot of a long session ({num(_get(snap, 'events'))} events, "
                f"{num(_get(snap, 'bytes') / 1024, 0)} KiB): GET, ms, median"
            ],
            _get(snap, "daemon_ms"),
            _get(snap, "relay_ms"),
            rate=False,
            digits=2,
        ),
        compare(
            ["snapshot GET, ms, best"],
            _get(snap, "daemon_ms_best"),
            _get(snap, "relay_ms_best"),
            rate=False,
            digits=2,
        ),
    ]
    intro = (
        "## 6-8. Start-up, memory with idle sessions and open links, a long session's snapshot"
        "\n\nStart-up: spawning `python -m sidecode_trio serve` to its ready file (the "
        "stored-sessions case is a restart holding the sessions below); baseline: spawning the "
        "raw relay to its port. Memory: the daemon's VmRSS (its CLIs are other processes and "
        "had stopped: `--idle-timeout 1`) with every session having run one turn and 100 SSE "
        "streams held open; baseline: the relay's VmRSS holding 100 streams. Snapshot: "
        "`GET /v1/sessions/{id}` on a kept-alive connection (fold → JSON), against the relay "
        f"answering the same bytes; the session alternates a `Write` tool call and 300 text "
        f"deltas per turn, {num(_get(snap, 'items'))} items in its snapshot.\n\n"
    )
    headers = ["metric", "sidecode-trio", "raw relay", "ratio", "ratio is"]
    return intro + table(headers, rows)


def warm_section(results: dict[str, Any]) -> str:
    warm = results.get("warm")
    if not warm:
        return ""
    rows = []
    for key, label in (("warm", "warm CLIs (warm_limit = 3)"), ("cold", "off (warm_limit = 0)")):
        run = warm[key]
        spread = f"{run['median_ms']:.1f} [{run['min_ms']:.1f}-{run['max_ms']:.1f}]"
        delivered = num(run.get("delivered_median_ms"), 1)
        rows.append([label, str(len(run["ms"])), delivered, spread])
    intro = (
        "## 9. A message to an opened session whose CLI had stopped (ms, POST → turn.started)\n\n"
        "`--idle-timeout 3`; the client opens the session's event stream (with warm CLIs it then "
        "waits for `cli.state: running`), waits 1 s (the user reading), POSTs a message and times "
        "`message.delivered` (on the CLI's stdin) and `turn.started` (the CLI's first frame). "
        "The fake CLI answers at once: no API latency is included. Median [min-max].\n\n"
    )
    headers = ["warm CLIs", "repeats", "POST → message.delivered (ms, median)"]
    return intro + table([*headers, "POST → turn.started (ms)"], rows)


def _target_row(name: str, unit: str, figure: Any, baseline: Any, key: str, at_most: bool) -> Row:
    digits = 1 if unit == "ms" else 0
    return [
        name,
        f"{num(figure, digits)} {unit}",
        f"{num(baseline, digits)} {unit}",
        met(figure, TARGETS[key], at_most=at_most),
    ]


def summary(results: dict[str, Any]) -> str:
    lat, rep = results["latency"], results["replay"]
    batch = results["plan"]["headline_batch"]
    rows = [
        _target_row(
            f"p99 ≤ {bound} at {n} clients (200 deltas/s)",
            "µs",
            _get(lat, "daemon", n, "latency_us", "p99"),
            _get(lat, "relay", n, "latency_us", "p99"),
            key,
            True,
        )
        for n, bound, key in ((20, "1 ms", "p99_20"), (100, "4 ms", "p99_100"))
    ]
    rows.append(
        _target_row(
            f"≥ 100,000 durable log appends/s ({batch} per flush; baseline: raw sqlite3)",
            "/s",
            _get(results, "log", batch, "figure", "events_per_s"),
            _get(results, "log", batch, "baseline", "events_per_s"),
            "appends",
            False,
        )
    )
    rows.append(
        _target_row(
            "≥ 20,000 events/s delivered to 20 clients (all clients together)",
            "/s",
            _get(results, "throughput", "daemon", "events_per_s"),
            _get(results, "throughput", "relay", "events_per_s"),
            "deliveries",
            False,
        )
    )
    for path, label in (("memory", "from memory"), ("sqlite", "from SQLite after a restart")):
        rows.append(
            _target_row(
                f"10,000 events replayed in ≤ 25 ms ({label}, median)",
                "ms",
                _get(rep, path, "total_ms"),
                _get(rep, "relay", "total_ms"),
                "replay",
                True,
            )
        )
    rss = results.get("rss_mib", {})
    text = "## Summary against the issue's targets\n\n"
    text += table(["target", "sidecode-trio", "baseline (raw relay / raw sqlite3)", "status"], rows)
    text += f"\nDaemon RSS at the end of its runs: {num(_get(rss, 'main'), 1)} MiB "
    text += f"(restarted replay daemon: {num(_get(rss, 'replay'), 1)} MiB).\n"
    return text


def _pair(
    figure: Any, baseline: Any, unit: str, digits: int = 0, rate: bool = False, floor: Any = None
) -> Row:
    shown = [f"{num(value, digits)} {unit}" for value in (figure, baseline)]
    if floor is None:
        return [*shown, ratio(figure, baseline, rate), "", ""]
    beside = [f"{num(floor, digits)} {unit}", ratio(figure, floor, rate)]
    return [*shown, ratio(figure, baseline, rate), *beside]


def _spread(values: Sequence[float], digits: int = 0) -> str:
    """``median [min-max]`` of the repeats (just the value when there is one)."""
    values = [v for v in values if isinstance(v, int | float) and not math.isnan(v)]
    if not values:
        return "n/a"
    middle = num(statistics.median(values), digits)
    if len(values) == 1:
        return middle
    return f"{middle} [{num(min(values), digits)}-{num(max(values), digits)}]"


def _runs(results: dict[str, Any], key: str, n: Any) -> list[dict[str, Any]]:
    runs = results.get("latency_runs", {}).get(key, {})
    return list(runs.get(n) or runs.get(str(n)) or [])


def _median_of(runs: list[dict[str, Any]], pick: Callable[[dict[str, Any]], Any]) -> float:
    values = [v for v in map(pick, runs) if isinstance(v, int | float) and not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def load_note(results: dict[str, Any]) -> str:
    load = results.get("loadavg") or {}
    start, end = load.get("start"), load.get("end")
    if not start:
        return ""
    text = f"Load average (1/5/15 min) at the start: {' / '.join(f'{v:.1f}' for v in start)}"
    if end:
        text += f"; at the end: {' / '.join(f'{v:.1f}' for v in end)}"
    return text + f" (on {results['machine']['cores']} cores).\n"


def floor(results: dict[str, Any]) -> str:
    """Each server against A0 (the floor), median of the repeats with their min-max spread."""
    if not results["latency"].get("a0"):
        return ""
    names: tuple[tuple[str, str], ...] = (("daemon", "sidecode-trio"),)
    if results["latency"].get("previous"):
        names += (("previous", "previous code"),)
    names += (("relay", "raw relay"), ("a0", "A0 floor"))
    compared = [key for key, _ in names if key != "a0"]
    picks: tuple[tuple[str, Callable[[dict[str, Any]], Any], int], ...] = (
        ("p50 (µs)", lambda run: _get(run, "latency_us", "p50"), 0),
        ("p99 (µs)", lambda run: _get(run, "latency_us", "p99"), 0),
        ("server CPU µs per delivery", _cpu_per_event, 1),
        ("load average during the run", lambda run: _get(run, "loadavg"), 1),
    )
    rows = []
    for n in sorted(results["latency"]["daemon"], key=int):
        floor_runs = _runs(results, "a0", n)
        for label, pick, digits in picks:
            row = [str(n), label]
            for key, _ in names:
                row.append(_spread([pick(run) for run in _runs(results, key, n)], digits))
            for key in compared:
                if label.startswith("load"):
                    row.append("")
                    continue
                row.append(
                    ratio(
                        _median_of(_runs(results, key, n), pick),
                        _median_of(floor_runs, pick),
                        False,
                    )
                )
            rows.append(row)
    through = results.get("throughput_runs") or {}
    for label, pick, rate in (
        ("unpaced: SSE events/s, all clients", lambda run: _get(run, "events_per_s"), True),
        ("unpaced: server CPU µs per SSE event delivered", _cpu_per_event, False),
        ("unpaced: CLI lines per server CPU-second (capacity)", _lines_per_cpu_second, True),
        (
            "unpaced: CLI deltas/s",
            lambda run: _get(run, "deltas_per_s") / max(1, _get(run, "clients")),
            True,
        ),
        ("unpaced: deltas per SSE event", _deltas_per_event, False),
    ):
        row = [str(results["plan"]["max_clients"]), label]
        for key, _ in names:
            row.append(_spread([pick(run) for run in through.get(key, [])], 1 if not rate else 0))
        for key in compared:
            mine = _median_of(through.get(key, []), pick)
            row.append(ratio(mine, _median_of(through.get("a0", []), pick), rate))
        rows.append(row)
    headers = ["clients", "metric", *(name for _, name in names)]
    headers += [f"{name} / A0" for key, name in names if key != "a0"]
    intro = (
        "## 0. Against the floor (A0), median [min-max] of "
        f"{results.get('repeats', 1)} run(s) each\n\n"
        "A0: the fake CLI's stdout read and parsed, each text delta's envelope encoded, one "
        "non-blocking `send()` per client from the reader; no task per client, no coalescing, no "
        "log. Ratios: median / median, oriented so that above 1 is slower than the floor (rates: "
        f"A0 / figure). Clients: the {results.get('client', 'Python')} client"
        + (
            " (`bench_client.c`: recv and a timestamp only)"
            if results.get("client") == "C"
            else " (a Python epoll loop: no C compiler)"
        )
        + ".\n\n"
        + load_note(results)
        + "\n"
    )
    return intro + table(headers, rows)


def reader_saturation(results: dict[str, Any]) -> str:
    """3b: the CLI reader's own saturation, unpaced turns to one client, each target's repeats;
    ratios to the previous code (issue 19's "at least 2x today's CLI lines/s")."""
    runs = results.get("lines_runs") or {}
    if not runs:
        return ""

    def rate(run: dict[str, Any]) -> Any:
        return _get(run, "deltas_per_s")

    def cpu_us(run: dict[str, Any]) -> Any:
        lines = _get(run, "deltas")
        return _get(run, "cpu_seconds") * 1e6 / lines if lines else math.nan

    measures: tuple[tuple[str, Callable[[dict[str, Any]], Any], bool, int], ...] = (
        ("CLI text-delta lines/s", rate, True, 0),
        ("lines per server CPU-second", _lines_per_cpu_second, True, 0),
        ("server CPU µs per line", cpu_us, False, 2),
        ("server CPU %", lambda run: _get(run, "cpu_percent"), False, 0),
        ("load average (1 min) after the run", lambda run: _get(run, "loadavg"), False, 1),
    )
    names = {"daemon": "sidecode-trio", "previous": "previous code", "a0": "A0", "relay": "relay"}
    keys = [key for key in names if runs.get(key)]
    rows: list[Row] = []
    for label, pick, is_rate, digits in measures:
        row = [label, *(_spread([pick(run) for run in runs[key]], digits) for key in keys)]
        if "previous" in keys and not label.startswith(("load", "server CPU %")):
            mine = _median_of(runs["daemon"], pick)
            before = _median_of(runs["previous"], pick)
            row.append(ratio(before, mine, is_rate))
        elif "previous" in keys:
            row.append("")
        rows.append(row)
    headers = ["metric", *(names[key] for key in keys)]
    if "previous" in keys:
        headers.append("sidecode-trio vs previous (above 1: faster)")
    plan = results["plan"]
    return (
        "## 3b. The CLI reader's saturation: unpaced, 1 client, median [min-max] of "
        f"{max(len(r) for r in runs.values())} run(s)\n\n"
        f"The fake CLI writes {plan['max_turns']} turns of {plan['max_deltas']:,} text-delta "
        "lines as fast as it can; one client, so the fan-out costs next to nothing and the "
        "daemon's reader (frame, parse, translate, coalesce, commit before delivery) is the limit. "
        "Lines/s: from the first to the last delta received; per CPU-second: the lines over the "
        "daemon's CPU time (user + system) from the prompt to the last byte received. "
        f"Previous code: `{results.get('previous_code') or 'none'}`.\n\n"
        + load_note(results)
        + "\n"
        + table(headers, rows)
    )


def performance(results: dict[str, Any]) -> str:
    """One table for the README: each figure, its same-run baseline, the ratio (higher is
    worse for the daemon: figure/baseline for times and sizes, baseline/figure for rates)."""
    lat, rep, fp = results["latency"], results["replay"], results.get("footprint") or {}
    rows: list[Row] = []
    for n in sorted(lat["daemon"], key=int):
        d, r = lat["daemon"][n], lat["relay"].get(n, {})
        a0 = _runs(results, "a0", n)
        dr, rr = _runs(results, "daemon", n) or [d], _runs(results, "relay", n) or [r]
        for key in ("p50", "p99"):
            name = f"token path, CLI stdout → SSE, {n} client{'s' if n != 1 else ''}, {key}"

            def pick(run: dict[str, Any], key: str = key) -> Any:
                return _get(run, "latency_us", key)

            figure, base = _median_of(dr, pick), _median_of(rr, pick)
            rows.append([name, *_pair(figure, base, "µs", floor=_median_of(a0, pick))])
        name = f"token path, {n} client{'s' if n != 1 else ''}, server CPU per delivery"
        figure, base = _median_of(dr, _cpu_per_event), _median_of(rr, _cpu_per_event)
        rows.append([name, *_pair(figure, base, "µs", 1, floor=_median_of(a0, _cpu_per_event))])
    through = results.get("throughput_runs") or {}
    if through.get("daemon"):

        def events(run: dict[str, Any]) -> Any:
            return _get(run, "events_per_s")

        def lines(run: dict[str, Any]) -> Any:
            return _get(run, "deltas_per_s") / max(1, _get(run, "clients"))

        for label, measure in (
            ("SSE events/s to 20 clients, CLI unpaced", events),
            ("CLI text-delta lines/s relayed, unpaced", lines),
            ("capacity: CLI lines per server CPU-second, unpaced", _lines_per_cpu_second),
            ("capacity: SSE events/s at 100 % of a core, 20 clients", _events_capacity),
        ):
            figure = _median_of(through["daemon"], measure)
            base = _median_of(through["relay"], measure)
            floor_value = _median_of(through.get("a0", []), measure)
            rows.append([label, *_pair(figure, base, "/s", rate=True, floor=floor_value)])
    reader = results.get("lines_runs") or {}
    if reader.get("daemon"):
        for label, measure in (
            ("the reader's saturation: CLI lines/s, unpaced, 1 client", _lines_per_s),
            ("the reader's saturation: CLI lines per server CPU-second", _lines_per_cpu_second),
        ):
            figure = _median_of(reader["daemon"], measure)
            base = _median_of(reader.get("relay", []), measure)
            floor_value = _median_of(reader.get("a0", []), measure)
            rows.append([label, *_pair(figure, base, "/s", rate=True, floor=floor_value)])
    batch = results["plan"]["headline_batch"]
    log = _get(results, "log", batch)
    rows.append(
        [
            f"durable events/s (SQLite, {batch} per commit)",
            *_pair(
                _get(log, "figure", "events_per_s"),
                _get(log, "baseline", "events_per_s"),
                "/s",
                rate=True,
            ),
        ]
    )
    for path, label in (("memory", "memory tail"), ("sqlite", "SQLite, after a restart")):
        name = f"replay of {results['plan']['replay_events']:,} events ({label})"
        rows.append(
            [name, *_pair(_get(rep, path, "total_ms"), _get(rep, "relay", "total_ms"), "ms", 1)]
        )
    snap, mem = fp.get("snapshot", {}), fp.get("memory", {})
    if snap:
        name = (
            f"snapshot of a long session ({num(_get(snap, 'events'))} events, "
            f"{num(_get(snap, 'bytes') / 1024)} KiB), GET"
        )
        rows.append([name, *_pair(_get(snap, "daemon_ms"), _get(snap, "relay_ms"), "ms", 2)])
    if mem:
        name = f"RSS, {_get(mem, 'sessions')} idle sessions + {_get(mem, 'links')} open links"
        rows.append([name, *_pair(_get(mem, "daemon_mib"), _get(mem, "relay_mib"), "MiB", 1)])
    if fp:
        relay_start = statistics.median(fp["relay_startup_s"]) * 1e3
        for key, label in (("startup_fresh_s", "empty state"), ("startup_loaded_s", "restart")):
            if fp.get(key):
                figure = statistics.median(fp[key]) * 1e3
                rows.append([f"start-up to ready ({label})", *_pair(figure, relay_start, "ms")])
        if fp.get("startup_noquic_s"):
            figure = statistics.median(fp["startup_noquic_s"]) * 1e3
            rows.append(["start-up to ready (empty, QUIC off)", *_pair(figure, relay_start, "ms")])
        cmds = fp.get("commands") or {}
        trio_ms = _get(cmds, 'python -c "import trio"', "median_ms")
        for label, base_label in (
            ("--version", "python -c pass"),
            ("sessions", 'python -c "import trio"'),
            ("send", 'python -c "import trio"'),
            ("attach (to the snapshot)", 'python -c "import trio"'),
        ):
            if label in cmds:
                name = f"`sidecode-trio {label}` (baseline: `{base_label}`)"
                base = _get(cmds, base_label, "median_ms")
                rows.append([name, *_pair(_get(cmds, label, "median_ms"), base, "ms", 1)])
        if 'python -c "import quart_trio"' in cmds:
            quart = _get(cmds, 'python -c "import quart_trio"', "median_ms")
            rows.append(["`import quart_trio` alone (baseline: `import trio`)",
                         *_pair(quart, trio_ms, "ms", 1)])  # fmt: skip
    warm = results.get("warm") or {}
    if warm:
        rows.append(
            [
                "message to an opened session whose CLI had stopped: POST → turn.started "
                "(baseline: warm CLIs off)",
                *_pair(_get(warm, "warm", "median_ms"), _get(warm, "cold", "median_ms"), "ms", 1),
            ]
        )
    wt = results.get("webtransport") or {}
    if wt:
        rt = wt["round_trip_us"]
        rows.append(
            [
                "WebTransport round trip (baseline: HTTP/1.1 keep-alive), p50",
                *_pair(rt["webtransport"]["p50"], rt["http"]["p50"], "µs"),
            ]
        )
    m = results["machine"]
    text = (
        "## Performance (the README table)\n\n"
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, Linux {m['kernel']}; "
        f"{results['mode']} run of `nox -s bench` on {results['date']}. Baseline: the same "
        "work in the same run by a raw Trio relay of the same bytes (raw `sqlite3` for the "
        "appends, HTTP/1.1 for WebTransport). Ratio: figure / baseline (rates: baseline / "
        "figure); above 1 the daemon is slower.\n\n"
    )
    headers = ["measure", "sidecode-trio", "baseline (raw relay)", "ratio", "A0 floor"]
    text += table([*headers, "ratio to A0"], rows)
    return text + _noise(results) + load_note(results)


def _noise(results: dict[str, Any]) -> str:
    """How much other work shared the machine during the latency runs (a quiet run: ~0 %)."""
    runs = [run for by_n in results["latency"].values() for run in by_n.values()]
    other = [_foreign(run, results) for run in runs]
    other = [value for value in other if not math.isnan(value)]
    if not other:
        return ""
    return (
        f"\nOther load on the server's CPU during the latency runs: {min(other):.0f} to "
        f"{max(other):.0f} % of a core (a quiet machine: near 0). Where it is high, tails "
        "(p99) are the machine's, not the daemon's; CPU per delivery and the ratios hold "
        "better.\n"
    )


def profile(results: dict[str, Any]) -> str:
    prof = results.get("profile")
    if not prof:
        return ""
    rows = [[name, f"{share:.1%}"] for name, share in prof["top"]]
    layers = [[name, f"{share:.1%}"] for name, share in prof["layers"]]
    stages = [[name, f"{share:.1%}"] for name, share in prof["stages"]]
    return (
        f"## Profile of the token path (py-spy, 20 clients, {prof['samples']:,} samples)\n\n"
        "Self time of the daemon's non-idle samples (a separate paced run; py-spy pauses the "
        "process to sample, so that run's latencies are not reported; "
        f"{prof['idle']:,} samples of threads blocked on a lock were left out).\n\n"
        + table(["function (leaf frame)", "self"], rows)
        + "\nBy stage of the token path (where in the pipeline the time went):\n\n"
        + table(["stage", "share"], stages)
        + "\nBy the innermost Python frame's package (who asked for the time):\n\n"
        + table(["layer", "self"], layers)
    )


def durations(results: dict[str, Any]) -> str:
    rows = [[name, f"{seconds:.1f}"] for name, seconds in results["durations"].items()]
    return "## Durations (s)\n\n" + table(["part", "seconds"], rows)


def errors(results: dict[str, Any]) -> str:
    if not results["errors"]:
        return ""
    return "## Errors\n\n" + "".join(f"- {error}\n" for error in results["errors"])


SECTIONS: Final[list[Callable[[dict[str, Any]], str]]] = [
    performance,
    floor,
    reader_saturation,
    summary,
    latency,
    previous,
    log_rate,
    throughput,
    replay,
    footprint,
    startup_report,
    warm_section,
    profile,
    machine,
    durations,
    errors,
]


def render(results: dict[str, Any]) -> str:
    head = f"# sidecode-trio benchmark ({results['mode']} run, {results['date']})\n\n"
    head += f"Code measured: `{results.get('code', 'unknown')}`.\n"
    parts = [head]
    for section in SECTIONS:
        try:
            text = section(results)
        except (KeyError, TypeError, ValueError) as exc:
            text = f"_({section.__name__}: not available: {exc!r})_\n"
        if text:
            parts.append(text)
    return "\n".join(parts)
