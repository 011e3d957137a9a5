"""Historical replays: cycles back to back, as fast as the hardware allows, resumable.

`replay` takes the archive lock for its whole run, skips cycles already done
(so rerunning the same command after a crash or Ctrl-C resumes at the first
cycle not done) and, with `force`, redoes every cycle of the period in order.
"""

from __future__ import annotations

from collections.abc import Callable

from align_da_ops.engine import CycleOutcome, run_cycle
from align_da_ops.times import CycleTime, cycle_range
from align_da_ops.wiring import CycleContext


def replay(
    ctx: CycleContext,
    start: CycleTime,
    end: CycleTime,
    force: bool = False,
    progress: Callable[[CycleOutcome, int, int], None] | None = None,
) -> list[CycleOutcome]:
    cycles = cycle_range(start, end)
    outcomes = []
    with ctx.archive.locked():
        for i, cycle in enumerate(cycles):
            outcome = run_cycle(ctx, cycle, force=force)
            outcomes.append(outcome)
            if progress:
                progress(outcome, i + 1, len(cycles))
    return outcomes
