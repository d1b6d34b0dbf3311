"""Scenarios 1 and 3: live streaming from a :class:`~bench_targets.Target` to N clients.

1. Token-path latency: the fake CLI's ``[[stamp:N:RATE]]`` paces N deltas at RATE/s, each carrying
   ``time.monotonic_ns()`` taken right before its stdout line is written; the client process
   records when each arrived. The first ``warmup`` deltas of each client are not counted.
3. Throughput: ``[[stamp:N:0]]`` (no pacing) for ``turns`` turns queued at once, 20 clients;
   events and deltas per second from the first to the last ``text.delta`` received.
3b. The reader's own saturation (:func:`lines`): the same unpaced turns to one client, so that
   the fan-out costs next to nothing and the daemon's CLI reader (frame, parse, translate,
   coalesce, commit before delivery) is what limits; CLI text-delta lines/s and lines per server
   CPU-second. (One client, not none: the client is what sees the turns end.)

The server's CPU use is measured over each run (from the prompt to the last byte received).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

import attrs
from bench_harness import CpuMeter, Layout, client_argv, run_client
from bench_targets import Target

WARM_UP_TURN = "[[stamp:300:1000]]"  # spawns the CLI and warms the code paths; not measured


@attrs.frozen
class LivePlan:
    rate: int  #: deltas per second on the token path
    warmup: int  #: deltas per client not measured
    measured: int  #: deltas per client measured
    fanouts: tuple[int, ...]  #: clients per latency run
    max_deltas: int  #: deltas per unpaced turn (the fake CLI slows down past ~20k)
    max_turns: int  #: unpaced turns per throughput run
    max_clients: int = 20
    client_cpu: int = -1
    dump_dir: str = ""  #: if set, every run's deliveries go to a CSV there
    native: str = ""  #: the compiled C client (bench_client.c); empty: the Python epoll loop

    @property
    def paced(self) -> str:
        return f"[[stamp:{self.warmup + self.measured}:{self.rate}]]"

    @property
    def paced_seconds(self) -> float:
        return (self.warmup + self.measured) / self.rate


async def live_run(
    target: Target,
    layout: Layout,
    plan: LivePlan,
    *,
    clients: int,
    directive: str,
    warmup: int = 0,
    turns: int = 1,
    timeout: float = 60.0,
    around: Callable[[], AbstractAsyncContextManager[None]] | None = None,
) -> dict[str, Any]:
    """Open ``clients`` streams, start ``turns`` turns of ``directive``, and measure them.

    ``around``, if given, is entered once the streams are open and left when they are done
    (the profiler uses it, so that connection set-up is not in the profile).
    """
    dump = ""
    if plan.dump_dir:
        tag = directive.strip("[]").replace(":", "-")
        dump = f"{plan.dump_dir}/{target.name.replace(' ', '-')}-{clients}-{tag}.csv"
    argv = client_argv(
        "live",
        target.port,
        target.events_path(),
        plan.client_cpu,
        token=target.token,
        last_event_id=await target.last_event_id(),
        clients=clients,
        warmup=warmup,
        end_count=turns,
        timeout=timeout,
        dump=dump,
        native=plan.native,
    )
    meter = CpuMeter(target.pid)
    cpu: dict[str, float] = {}
    stack = AsyncExitStack()

    async def start() -> None:
        if around is not None:
            await stack.enter_async_context(around())
        meter.start()
        await target.start_turns(directive, turns)

    async def done() -> None:
        cpu["percent"], cpu["seconds"] = meter.percent(), meter.seconds()
        cpu.update(meter.busy())
        await stack.aclose()

    async with stack:
        result = await run_client(argv, timeout + 60, layout.log("client"), start, done)
    result["cpu_percent"] = cpu.pop("percent", float("nan"))
    result["cpu_seconds"] = cpu.pop("seconds", float("nan"))
    result["cpu_busy"] = cpu
    result["loadavg"] = os.getloadavg()[0]  # the machine's 1-minute load average, after the run
    await target.settle()
    return result


async def warm_up(target: Target, layout: Layout, plan: LivePlan) -> None:
    await live_run(target, layout, plan, clients=1, directive=WARM_UP_TURN)


async def latency(target: Target, layout: Layout, plan: LivePlan, clients: int) -> dict[str, Any]:
    """Scenario 1: one paced turn to ``clients`` clients."""
    return await live_run(
        target,
        layout,
        plan,
        clients=clients,
        directive=plan.paced,
        warmup=plan.warmup,
        timeout=plan.paced_seconds * 3 + 30,
    )


async def throughput(target: Target, layout: Layout, plan: LivePlan) -> dict[str, Any]:
    """Scenario 3: unpaced turns, ``max_clients`` clients."""
    return await live_run(
        target,
        layout,
        plan,
        clients=plan.max_clients,
        directive=f"[[stamp:{plan.max_deltas}:0]]",
        turns=plan.max_turns,
        timeout=60.0 * plan.max_turns,
    )


async def lines(target: Target, layout: Layout, plan: LivePlan) -> dict[str, Any]:
    """Scenario 3b: unpaced turns to one client (the reader's saturation, not the fan-out's)."""
    return await live_run(
        target,
        layout,
        plan,
        clients=1,
        directive=f"[[stamp:{plan.max_deltas}:0]]",
        turns=plan.max_turns,
        timeout=60.0 * plan.max_turns,
    )
