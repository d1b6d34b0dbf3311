"""The CLI's stdout reader (``claude/process.py``): what each line costs in task switches."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from sidecode_trio.claude.framing import Frame
from sidecode_trio.claude.messages import LaunchSpec
from sidecode_trio.claude.process import ClaudeProcess

# A CLI that answers each line of its stdin with one frame, written in one go.
ECHO_CLI = """#!/bin/sh
while read -r line; do
  printf '{"type":"system","subtype":"status"}\\n'
done
"""


class StepCounter(trio.abc.Instrument):
    """How many steps one task takes (each one a pass of the scheduler)."""

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def test_the_reader_takes_one_scheduler_step_per_read(tmp_path: Path) -> None:
    """One wake-up per delta: the reader parks until stdout is readable, reads once and hands
    the frames over, then parks again; no extra checkpoint (a pass of the run loop) per read."""
    cli = tmp_path / "claude"
    cli.write_text(ECHO_CLI)
    cli.chmod(0o700)
    received: list[Frame] = []
    arrived = trio.Event()

    def on_frames(frames: list[Frame]) -> None:
        received.extend(frames)
        arrived.set()

    spec = LaunchSpec(claude=str(cli), cwd=str(tmp_path), session_id="s", resume=False)
    process = ClaudeProcess(spec, on_frames)
    counter = StepCounter()
    async with trio.open_nursery() as nursery:
        await nursery.start(process.run)
        (counter.task,) = nursery.child_tasks  # the reader runs in process.run's task
        trio.lowlevel.add_instrument(counter)
        try:
            steps = []
            for n in range(5):
                arrived = trio.Event()
                await process.send({"n": n})
                with trio.fail_after(10):
                    await arrived.wait()
                await trio.testing.wait_all_tasks_blocked()
                steps.append(counter.steps)
                counter.steps = 0
        finally:
            trio.lowlevel.remove_instrument(counter)
        assert len(received) == 5
        assert steps == [1] * 5
        await process.close_stdin()
