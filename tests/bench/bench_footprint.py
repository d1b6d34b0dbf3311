"""Scenarios 6-8: start-up time, memory with idle sessions and links, a long session's snapshot.

Each against the raw relay (:mod:`bench_relay`) in the same run:

6. **Start-up time to ready**: from spawning ``python -m sidecode_trio serve`` to its ready file
   (an empty state directory, then again holding the sessions of 7 and 8: a restart that loads
   and folds them); baseline: from spawning the relay to it printing its port (interpreter, Trio,
   a listening socket, the fake CLI spawned). Polled every 2 ms; the median of a few starts.
7. **Daemon RSS with idle sessions and open links**: ``--idle-timeout 1``; 50 sessions, each
   having run one turn (their CLIs then stop, as idle sessions' CLIs do), then 100 SSE streams
   held open (2 per session) by the client process; VmRSS of the daemon process only (the CLIs
   are separate processes). Baseline: the relay's VmRSS holding 100 streams.
8. **A long session's snapshot**: a session of many turns (a ``Write`` tool call with a diff,
   then a few hundred text deltas, alternately; ``acceptEdits``), then ``GET
   /v1/sessions/{id}`` (folded state → JSON) on a kept-alive connection: size and time per
   request. Baseline: the relay answering ``GET /blob`` with the same bytes.
"""

from __future__ import annotations

import statistics
import time
from functools import partial
from typing import Any, Final

import trio
from bench_harness import Layout, LineReader, child, client_argv, rss_mib
from bench_startup import commands, cpu_seconds, summary
from bench_targets import ChildDaemon, ChildRelay, child_daemon, child_relay
from bench_wt import KeepAlive

IDLE_SESSIONS: Final = 50
OPEN_LINKS: Final = 100
SNAPSHOT_REQUESTS: Final = 30
WAIT: Final = 120.0  # seconds for sessions to finish their turns
SETTLE: Final = 0.5  # seconds after ready before the RSS is read (the housekeeping tasks start)


async def _sessions(daemon: ChildDaemon) -> list[dict[str, Any]]:
    reply = await daemon.call("GET", "/v1/sessions?archived=all")
    assert isinstance(reply, dict)
    return list(reply["sessions"])


async def _wait_idle(daemon: ChildDaemon, ids: set[str], turns: int, cli_stopped: bool) -> None:
    """Until every session in ``ids`` has run ``turns`` turns and is idle (its CLI stopped)."""
    with trio.fail_after(WAIT):
        while True:
            done = {
                s["id"]
                for s in await _sessions(daemon)
                if s["id"] in ids
                and s["turns"] >= turns
                and s["status"] == "idle"
                and not s["queued_messages"]
                and (s["cli"] != "running" or not cli_stopped)
            }
            if done == ids:
                return
            await trio.sleep(0.1)


async def idle_sessions(daemon: ChildDaemon, layout: Layout, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        reply = await daemon.call(
            "POST", "/v1/sessions", {"cwd": str(layout.work), "prompt": "hello"}, 201
        )
        assert isinstance(reply, dict)
        ids.append(str(reply["session"]["id"]))
    await _wait_idle(daemon, set(ids), 1, cli_stopped=True)
    return ids


async def hold_links(
    layout: Layout, port: int, token: str, paths: list[str], cpu: int, measure: Any
) -> Any:
    """Hold ``OPEN_LINKS`` streams over ``paths`` open while ``measure()`` runs."""
    argv = client_argv("hold", port, ",".join(paths), cpu, token=token, clients=OPEN_LINKS)
    with layout.log("client").open("ab") as errors:
        async with child(argv, stdin=-1, stderr=errors) as process:
            with trio.fail_after(60):
                if (line := await LineReader(process.stdout).line()) != "ready":
                    raise RuntimeError(f"the hold client said {line!r}")
            await trio.sleep(1.0)  # let the server settle (buffers, subscriptions)
            result = await measure()
            assert process.stdin is not None
            await process.stdin.aclose()
            with trio.fail_after(10):
                await process.wait()
    return result


async def memory(
    daemon: ChildDaemon, relay: ChildRelay, layout: Layout, cpu: int, sessions: list[str]
) -> dict[str, Any]:
    paths = [f"/v1/sessions/{s}/events" for s in sessions]

    async def daemon_rss() -> tuple[float, int]:
        return rss_mib(daemon.pid), await daemon.subscribers()

    d_rss, links = await hold_links(layout, daemon.port, daemon.token, paths, cpu, daemon_rss)

    async def relay_rss() -> float:
        return rss_mib(relay.pid)

    relay_before = rss_mib(relay.pid)
    r_rss = await hold_links(layout, relay.port, "", ["/events"], cpu, relay_rss)
    return {
        "sessions": len(sessions),
        "links": links,
        "daemon_mib": d_rss,
        "relay_mib": r_rss,
        "relay_idle_mib": relay_before,
    }


async def long_session(daemon: ChildDaemon, layout: Layout, turns: int) -> str:
    body = {"cwd": str(layout.work), "permission_mode": "acceptEdits"}
    reply = await daemon.call("POST", "/v1/sessions", body, 201)
    assert isinstance(reply, dict)
    session_id = str(reply["session"]["id"])
    line = "a line of a file the model writes, long enough to look like code;"
    for start in range(0, turns, 10):
        for turn in range(start, min(turns, start + 10)):
            if turn % 2:
                text = "[[fast:300]]"
            else:
                content = "\\n".join(f"{turn}: {line}" for _ in range(20))
                text = f"[[write:notes/n{turn}.txt|{content}]]"
            path = f"/v1/sessions/{session_id}/messages"
            await daemon.call("POST", path, {"text": text}, 202)
        await _wait_idle(daemon, {session_id}, min(turns, start + 10), cli_stopped=False)
    return session_id


async def _timed_gets(http: KeepAlive, path: str, count: int) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(count):
        started = time.perf_counter()
        status, body = await http.call("GET", path)
        times.append((time.perf_counter() - started) * 1e3)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}")
        size = len(body)
    return times, size


async def snapshot(
    daemon: ChildDaemon, relay: ChildRelay, layout: Layout, session_id: str
) -> dict[str, Any]:
    path = f"/v1/sessions/{session_id}"
    stream = await trio.open_tcp_stream("127.0.0.1", daemon.port)
    http = KeepAlive(stream, daemon.port, daemon.token)
    try:
        status, body = await http.call("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}")
        blob = layout.root / "snapshot.json"
        blob.write_bytes(body)
        await relay.command(f"blob {blob}")
        with trio.fail_after(10):
            await relay.lines.line()  # "ok"
        relay_stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        relay_http = KeepAlive(relay_stream, relay.port, "unused")
        try:
            d_times, r_times, size = [], [], 0
            for _ in range(SNAPSHOT_REQUESTS // 10):  # alternate: drifts land on both
                times, size = await _timed_gets(http, path, 10)
                d_times += times
                r_times += (await _timed_gets(relay_http, "/blob", 10))[0]
        finally:
            await relay_http.aclose()
    finally:
        await http.aclose()
    session = await daemon.call("GET", "/v1/sessions/" + session_id)
    assert isinstance(session, dict)
    return {
        "events": session["cursor"],
        "items": len(session["items"]),
        "bytes": size,
        "daemon_ms": statistics.median(d_times),
        "daemon_ms_best": min(d_times),
        "relay_ms": statistics.median(r_times),
        "relay_ms_best": min(r_times),
    }


async def _start(
    layout: Layout, name: str, cpu: int, results: dict[str, Any], key: str, **how: Any
) -> None:
    """One start-up with an empty state: its time, and its RSS once settled."""
    async with child_daemon(layout, name, cpu, **how) as fresh:
        results.setdefault(f"startup_{key}_s", []).append(fresh.startup_s)
        results.setdefault(f"cpu_{key}_s", []).append(cpu_seconds(fresh.pid))
        await trio.sleep(SETTLE)
        results.setdefault(f"rss_{key}_mib", []).append(rss_mib(fresh.pid))


async def footprint(
    layout: Layout,
    relay: ChildRelay,
    cpus: tuple[int, int],
    quick: bool,
    previous: str = "",
    bytecode: str = "",
) -> dict[str, Any]:
    """Scenarios 7 and 8 on one daemon, and the commands against it; then 6 (start-ups) with
    empty and with that state; with ``previous`` (a code dir), its start-ups alternating."""
    daemon_cpu, client_cpu = cpus
    results: dict[str, Any] = {"relay_startup_s": [relay.startup_s], "bytecode": bytecode}
    await _start(layout, "fresh", daemon_cpu, results, "fresh")
    results["rss_fresh_mib"] = results["rss_fresh_mib"][0]
    extra = ["--idle-timeout", "1"]
    async with child_daemon(layout, "footprint", daemon_cpu, extra) as daemon:
        sessions = await idle_sessions(daemon, layout, IDLE_SESSIONS)
        results["memory"] = await memory(daemon, relay, layout, client_cpu, sessions)
        state = layout.state("footprint")
        measure = partial(commands, state, sessions[0], 3 if quick else 7, layout.root, previous)
        results["commands"] = summary(await trio.to_thread.run_sync(measure))
        session_id = await long_session(daemon, layout, 40 if quick else 200)
        results["snapshot"] = await snapshot(daemon, relay, layout, session_id)
    quic_off = ["--quic-port", "-1"]
    for run in range(2 if quick else 4):
        await _start(layout, f"fresh-{run}", daemon_cpu, results, "fresh_all")
        await _start(layout, f"noquic-{run}", daemon_cpu, results, "noquic", extra=quic_off)
        if previous:
            await _start(layout, f"previous-{run}", daemon_cpu, results, "previous", code=previous)
        async with child_relay(layout, daemon_cpu, 0) as another:
            results["relay_startup_s"].append(another.startup_s)
            results.setdefault("cpu_relay_s", []).append(cpu_seconds(another.pid))
    results["startup_relay_s"] = results["relay_startup_s"]
    results["startup_fresh_s"] += results.pop("startup_fresh_all_s")
    results["cpu_fresh_s"] += results.pop("cpu_fresh_all_s")
    results["rss_fresh_runs_mib"] = [results["rss_fresh_mib"], *results.pop("rss_fresh_all_mib")]
    results["startup_loaded_s"] = []
    for _ in range(3 if quick else 5):  # a restart: load and fold every stored session
        async with child_daemon(layout, "footprint", daemon_cpu, extra) as loaded:
            results["startup_loaded_s"].append(loaded.startup_s)
            results.setdefault("cpu_loaded_s", []).append(cpu_seconds(loaded.pid))
    return results
