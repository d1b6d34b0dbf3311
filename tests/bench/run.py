"""sidecode-trio's benchmark suite; the single entry point (``nox -s bench`` runs it).

Usage: ``python tests/bench/run.py [--quick] [--profile] [--out PATH]`` (``--quick``: a smoke run of
about a minute; the full run takes a few minutes on a 2-core machine). No timing assertions: the
script reports and exits 0 unless something crashes.

What is measured, each against a baseline in the same run (see each module's docstring):

1. Token-path added latency, fake CLI stdout line → SSE receipt, with 1, 20 and 100 clients of one
   session at 200 deltas/s (:mod:`bench_live`); baselines: a raw Trio relay (:mod:`bench_relay`,
   a task per client) and the floor "A0" (``bench_relay.py --mode a0``: one non-blocking
   ``send()`` per client from the CLI reader, no task per client), each run ``--repeats`` times
   (the tables give the median and the min-max spread, and the machine's load average).
2. Durable log appends per second, ``EventLog.append`` + ``flush`` (:mod:`bench_lograte`);
   baseline: raw ``sqlite3`` ``executemany``.
3. The most events/s delivered to 20 clients, the fake CLI unpaced (:mod:`bench_live`); baselines:
   the raw relay and A0. 3b. The CLI reader's saturation: the same unpaced turns to one client,
   CLI text-delta lines/s and per server CPU-second, against ``--previous-code`` and A0.
4. Replay of 10,000 missed events, from memory and from SQLite (:mod:`bench_replay`); baseline:
   the raw relay writing pre-encoded frames.
5. WebTransport against HTTP/SSE: small-operation round trip, streamed-event latency, one-way
   large payload (:mod:`bench_wt`); baseline: the same daemon's HTTP/SSE.
6. Start-up time to ready, empty and with stored sessions; 7. daemon RSS with 50 idle sessions
   and 100 open links; 8. a long session's snapshot, size and time (:mod:`bench_footprint`);
   baseline: the raw relay (its start-up, its RSS holding 100 links, the same bytes served).

9. A message to an opened session whose CLI had stopped: POST → ``turn.started``, with warm CLIs
   and without (:mod:`bench_warm`).

10. Time from opening to the first event, by path (direct WebTransport, STUN-punched WebRTC,
    TURN), in the network lab of ``tests/netlab.py`` (:mod:`bench_rtc_open`, a child process
    as it moves its threads between namespaces); needs root: skipped, saying why, elsewhere.

``--only live,lines,log,replay,wt,footprint,warm,open`` runs some parts (for development; the report
then has gaps).

The daemon under test is the real one, ``python -m sidecode_trio serve`` in a child process
driving ``tests/fake_claude.py``; the clients are one separate process (:mod:`bench_client`), its
hot loop in C (``bench_client.c``, built with the system ``cc``) unless there is no C compiler or
``--client python``: then a Python epoll loop (the report says which).
Where the machine allows, the daemon (and the relay) run on CPU 0 and the clients, the fake CLI
and this orchestrator on CPU 1.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import trio
from bench_client import build_native
from bench_footprint import footprint
from bench_harness import BENCH, KILLED, Layout, can_pin, pin, rss_mib
from bench_live import LivePlan, latency, lines, throughput, warm_up
from bench_lograte import log_rates
from bench_profile import profile_token_path
from bench_replay import ReplayPlan, from_memory, from_relay, from_sqlite
from bench_report import render
from bench_rtc_open import render as render_first_event
from bench_startup import PACKAGE, compile_bytecode
from bench_targets import ChildRelay, DaemonSession, Target, child_daemon, child_relay
from bench_warm import warm_message
from bench_wt import compare as compare_webtransport
from bench_wt import render as render_webtransport

DEFAULT_OUT: Final = BENCH / "RESULTS.md"
RUN_BUDGET: Final = {"quick": 600.0, "full": 2700.0}  # seconds before the whole run is abandoned


@attrs.frozen
class Plan:
    live: LivePlan
    log_sizes: dict[int, int]  #: events per flush -> events appended
    log_repeat: int  #: runs of each size; the median is reported
    headline_batch: int
    replay_events: int
    replay_repeat: int
    repeats: int  #: live runs of each (target, fan-out); the tables show median and spread


def make_plan(
    quick: bool, client_cpu: int, dump_dir: Path | None, native: str = "", repeats: int = 0
) -> Plan:
    live = LivePlan(
        rate=200,
        warmup=100 if quick else 200,
        measured=1000 if quick else 2000,
        fanouts=(1, 20, 100),
        max_deltas=10_000,  # per turn: the fake CLI's text grows quadratically past ~20k
        max_turns=3 if quick else 10,
        client_cpu=client_cpu,
        dump_dir=str(dump_dir.resolve()) if dump_dir else "",
        native=native,
    )
    big = 20_000 if quick else 100_000
    sizes = {1: big // 10, 16: big, 256: big, 1000: big}
    repeats = repeats or (1 if quick else 3)
    return Plan(live, sizes, 1 if quick else 3, 1000, 10_000, 3 if quick else 7, repeats)


def machine_info() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    info = {
        "cpu": models[0] if models else platform.processor() or "?",
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }
    for package in ("trio", "hypercorn", "quart", "quart-trio", "h11"):
        info[package] = importlib.metadata.version(package)
    return info


def code_version() -> str:
    """The commit measured (read-only git queries), and whether the package had local edits."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=BENCH,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "sidecode_trio"],
            capture_output=True,
            text=True,
            check=True,
            cwd=BENCH.parent.parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head}" + (" with uncommitted changes in sidecode_trio/" if dirty else "")


def pinning_note(daemon_cpu: int, client_cpu: int, cli_cpu: int) -> str:
    if daemon_cpu < 0:
        return "Not pinned (`os.sched_setaffinity` unavailable or fewer than 2 CPUs)."
    cli = f"CPU {cli_cpu} (its wrapper pins it)" if cli_cpu >= 0 else "no CPU in particular"
    return (
        f"Pinned with `os.sched_setaffinity`: the daemon and the relay on CPU {daemon_cpu}; the "
        f"client process and the orchestrator on CPU {client_cpu}; the fake CLI on {cli}. The "
        "in-process parts (log appends; replay from memory) run in the orchestrator, moved to "
        f"CPU {daemon_cpu} meanwhile."
    )


class Runner:
    """Runs the parts in order, keeping what each produced even when a later one fails."""

    def __init__(self, args: argparse.Namespace, layout: Layout, plan: Plan, cpus: tuple[int, int]):
        self.args, self.layout, self.plan = args, layout, plan
        # every daemon started below loads the package from its bytecode, as an install does
        previous = [args.previous_code / "sidecode_trio"] if args.previous_code else []
        packages = [PACKAGE, *previous]
        self.bytecode = compile_bytecode(*packages)
        self.daemon_cpu, self.client_cpu = cpus
        self.results: dict[str, Any] = {
            "mode": "quick" if args.quick else "full",
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "code": code_version(),
            "machine": machine_info(),
            "pinning": pinning_note(*cpus, layout.cli_cpu),
            "cpu_names": {"daemon": f"cpu{cpus[0]}", "client": f"cpu{cpus[1]}"}
            if cpus[0] >= 0
            else {},
            "plan": attrs.asdict(plan.live)
            | {
                "headline_batch": plan.headline_batch,
                "replay_events": plan.replay_events,
                "replay_repeat": plan.replay_repeat,
            },
            "latency": {"daemon": {}, "relay": {}, "a0": {}, "previous": {}},
            "latency_runs": {"daemon": {}, "relay": {}, "a0": {}, "previous": {}},
            "throughput_runs": {},
            "lines_runs": {},
            "client": "C" if plan.live.native else "Python",
            "repeats": plan.repeats,
            "loadavg": {"start": os.getloadavg()},
            "previous_code": args.previous_code or "",
            "throughput": {},
            "replay": {},
            "rss_mib": {},
            "durations": {},
            "errors": [],
        }

    async def part(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            await body()
        except Exception as exc:  # report it, keep the other parts' results
            traceback.print_exc()
            self.results["errors"].append(f"{name}: {exc!r}")
        finally:
            self.results["durations"][name] = time.monotonic() - started

    async def log_appends(self) -> None:
        pin(0, self.daemon_cpu)
        try:
            self.results["log"] = await log_rates(
                self.layout.root, self.plan.log_sizes, self.plan.log_repeat
            )
        finally:
            pin(0, self.client_cpu)

    async def live(self) -> None:
        """Scenarios 1 and 3 (and 4's baseline), daemon and relay alternating run by run, so
        that slow drifts of the machine land on both alike."""
        live, reader = self.wants("live"), self.wants("lines")
        if not any(self.wants(part) for part in ("live", "lines", "replay", "footprint")):
            return
        async with AsyncExitStack() as stack:
            targets: dict[str, Any] = {}
            await self.part("start the relay", lambda: self.start_relay(stack, targets))
            if live or reader:
                await self.part("start A0", lambda: self.start_floor(stack, targets))
            await self.part("start the daemon", lambda: self.start_daemon(stack, targets))
            if self.args.previous_code and (live or reader):
                await self.part(
                    "start the previous daemon", lambda: self.start_previous(stack, targets)
                )
            for key, target in targets.items() if live or reader else ():
                await self.part(
                    f"warm-up ({key})", partial(warm_up, target, self.layout, self.plan.live)
                )
            for repeat in range(self.plan.repeats if live or reader else 0):
                for clients in self.plan.live.fanouts if live else ():
                    for key, target in targets.items():
                        await self.part(
                            f"1. latency, {clients} clients ({key}, run {repeat + 1})",
                            partial(self.latency, key, target, clients),
                        )
                for key, target in targets.items() if live else ():
                    await self.part(
                        f"3. max rate ({key}, run {repeat + 1})",
                        partial(self.throughput, key, target),
                    )
                for key, target in targets.items() if reader else ():
                    await self.part(
                        f"3b. reader saturation, 1 client ({key}, run {repeat + 1})",
                        partial(self.lines, key, target),
                    )
            if "relay" in targets and self.wants("replay"):
                await self.part("4. replay (relay)", partial(self.replay_relay, targets["relay"]))
            if "relay" in targets and self.wants("footprint"):
                await self.part(
                    "6-8. start-up, memory, snapshot", partial(self.footprint, targets["relay"])
                )
            if self.args.profile and "daemon" in targets and live:
                await self.part("profile", partial(self.profile, targets["daemon"]))
            if "daemon" in targets:
                self.results["rss_mib"]["main"] = rss_mib(targets["daemon"].pid)

    async def start_floor(self, stack: AsyncExitStack, targets: dict[str, Target]) -> None:
        floor = child_relay(self.layout, self.daemon_cpu, 0, mode="a0")
        targets["a0"] = await stack.enter_async_context(floor)

    async def start_daemon(self, stack: AsyncExitStack, targets: dict[str, Target]) -> None:
        daemon = await stack.enter_async_context(child_daemon(self.layout, "main", self.daemon_cpu))
        targets["daemon"] = DaemonSession(
            daemon, await daemon.create_session(str(self.layout.work))
        )

    async def start_previous(self, stack: AsyncExitStack, targets: dict[str, Target]) -> None:
        previous = child_daemon(
            self.layout, "previous", self.daemon_cpu, code=str(self.args.previous_code)
        )
        daemon = await stack.enter_async_context(previous)
        targets["previous"] = DaemonSession(
            daemon, await daemon.create_session(str(self.layout.work))
        )

    async def start_relay(self, stack: AsyncExitStack, targets: dict[str, Target]) -> None:
        relay = child_relay(self.layout, self.daemon_cpu, self.plan.replay_events)
        started = await stack.enter_async_context(relay)
        targets["relay"] = started
        self.results["relay_startup_s"] = started.startup_s

    async def latency(self, key: str, target: Target, clients: int) -> None:
        result = await latency(target, self.layout, self.plan.live, clients)
        runs = self.results["latency_runs"][key].setdefault(clients, [])
        runs.append(result)
        self.results["latency"][key][clients] = _median_run(runs, ("latency_us", "p50"))

    async def throughput(self, key: str, target: Target) -> None:
        result = await throughput(target, self.layout, self.plan.live)
        runs = self.results["throughput_runs"].setdefault(key, [])
        runs.append(result)
        self.results["throughput"][key] = _median_run(runs, ("events_per_s",))

    async def lines(self, key: str, target: Target) -> None:
        result = await lines(target, self.layout, self.plan.live)
        self.results["lines_runs"].setdefault(key, []).append(result)

    def wants(self, part: str) -> bool:
        return not self.args.only or part in self.args.only.split(",")

    async def footprint(self, relay: ChildRelay) -> None:
        cpus = (self.daemon_cpu, self.client_cpu)
        previous = str(self.args.previous_code or "")
        self.results["footprint"] = await footprint(
            self.layout, relay, cpus, self.args.quick, previous, self.bytecode
        )

    async def replay_relay(self, relay: Target) -> None:
        result = await from_relay(self.layout, self.replay_plan, relay.port)
        self.results["replay"]["relay"] = result

    async def profile(self, target: Target) -> None:
        raw = self.args.profile_raw or self.layout.root / "profile.raw"
        self.results["profile"] = await profile_token_path(target, self.layout, self.plan.live, raw)

    @property
    def replay_plan(self) -> ReplayPlan:
        plan = self.plan
        return ReplayPlan(plan.replay_events, plan.replay_repeat, self.daemon_cpu, self.client_cpu)

    async def replay(self) -> None:
        replay = self.results["replay"]
        replay["memory"], session_id, before = await from_memory(self.layout, self.replay_plan)
        if "note" in replay["memory"]:
            self.results["errors"].append("in-process daemon: " + replay["memory"].pop("note"))
        replay["sqlite"] = await from_sqlite(self.layout, self.replay_plan, session_id, before)
        self.results["rss_mib"]["replay"] = replay["sqlite"].pop("rss_mib")

    async def webtransport(self) -> None:
        async with child_daemon(self.layout, "wt", self.daemon_cpu) as daemon:
            ready = json.loads((self.layout.root / "ready-wt.json").read_text())
            port = urlsplit(ready["quic"]).port or 0
            work, quick = str(self.layout.work), self.args.quick
            self.results["webtransport"] = await compare_webtransport(daemon, port, work, quick)

    async def warm(self) -> None:
        self.results["warm"] = await warm_message(self.layout, self.daemon_cpu, self.args.quick)

    async def first_event(self) -> None:
        """Part 10 in a child process (it needs root for the namespaces; without, it reports
        why and the part is skipped, not failed)."""
        out = self.layout.root / "first-event.json"
        runs = "3" if self.args.quick else "7"
        argv = [sys.executable, str(BENCH / "bench_rtc_open.py"), "--runs", runs]
        argv += ["--json", str(out)]
        with self.layout.log("bench-rtc-open").open("ab") as log:
            await trio.run_process(argv, stdout=log, stderr=log, check=True)
        result = json.loads(out.read_text())
        if "skipped" in result:
            print(f"[bench] 10. skipped: {result['skipped']}", file=sys.stderr, flush=True)
        self.results["first_event"] = result

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        pin(0, self.client_cpu)
        with trio.move_on_after(RUN_BUDGET[self.results["mode"]]) as budget:
            if self.wants("log"):
                await self.part("2. log appends", self.log_appends)
            await self.part("1, 3: live runs", self.live)
            if self.wants("replay"):
                await self.part("4. replay (daemon)", self.replay)
            if self.wants("wt"):
                await self.part("5. WebTransport vs HTTP/SSE", self.webtransport)
            if self.wants("warm"):
                await self.part("9. message to an opened session", self.warm)
            if self.wants("open"):
                await self.part("10. opening to first event, by path", self.first_event)
        if budget.cancelled_caught:
            self.results["errors"].append("the run exceeded its time budget and was stopped")
        self.results["errors"].extend(KILLED)
        self.results["loadavg"]["end"] = os.getloadavg()
        self.results["durations"]["total"] = time.monotonic() - started
        return self.results


def _median_run(runs: list[dict[str, Any]], key: tuple[str, ...]) -> dict[str, Any]:
    """The run with the median ``key`` (the one the single-figure tables show)."""

    def value(run: dict[str, Any]) -> float:
        node: Any = run
        for part in key:
            node = node.get(part, float("nan")) if isinstance(node, dict) else float("nan")
        return float(node)

    return sorted(runs, key=value)[(len(runs) - 1) // 2]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    cpus = (0, 1) if can_pin() else (-1, -1)
    cli_cpu = {"client": cpus[1], "daemon": cpus[0], "none": -1}[args.cli_cpu]
    with tempfile.TemporaryDirectory(prefix="sidecode-bench-") as tmp:
        layout = Layout(Path(tmp), cli_cpu).create()
        if args.dump_dir:
            args.dump_dir.mkdir(parents=True, exist_ok=True)
        native = build_native(Path(tmp)) if args.client == "c" else None
        if native is None:
            print("[bench] clients: the Python epoll loop (no C compiler)", file=sys.stderr)
        plan = make_plan(args.quick, cpus[1], args.dump_dir, str(native or ""), args.repeats)
        return await Runner(args, layout, plan, cpus).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="sidecode-trio benchmark suite")
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run")
    parser.add_argument("--profile", action="store_true", help="also py-spy the token path")
    parser.add_argument("--profile-raw", type=Path, help="keep py-spy's raw stacks here")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report file")
    parser.add_argument(
        "--previous-code",
        type=Path,
        help="a directory with another sidecode_trio package (e.g. `git archive HEAD "
        "sidecode_trio | tar -x -C DIR`): its daemon joins the live and lines runs (before/after)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results (JSON) here")
    parser.add_argument(
        "--only", default="", help="comma list of live,lines,log,replay,wt,footprint,warm,open"
    )
    parser.add_argument("--dump-dir", type=Path, help="write every live run's deliveries (CSV)")
    parser.add_argument(
        "--client",
        choices=["c", "python"],
        default="c",
        help="the clients' hot loop: C (bench_client.c, built with cc; the default) or Python",
    )
    parser.add_argument(
        "--repeats", type=int, default=0, help="live runs per target and fan-out (quick 1, full 3)"
    )
    parser.add_argument(
        "--cli-cpu",
        choices=["client", "daemon", "none"],
        default="client",
        help="where the fake CLI runs: beside the clients (default), the daemon, or unpinned",
    )
    args = parser.parse_args(argv)
    results = trio.run(main_async, args)
    text = render(results) + render_webtransport(results.get("webtransport"))
    text += render_first_event(results.get("first_event"))
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(f"[bench] written to {args.out}", file=sys.stderr)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
