"""The continuous service: cycles at 00/06/12/18 UTC after an observation cut-off, with catch-up.

What is due is read from the archive, never from the job store: at every tick
the service runs, in order, each cycle from the campaign start whose time plus
the cut-off has passed and which is not done. One job at a time (APScheduler
`max_instances=1`, coalesced), one engine per archive (the archive lock), and
SIGTERM/SIGINT finish the current cycle then stop. A `Clock` maps wall time to
simulated time, so OSSE demos and tests can run days in seconds.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from datetime import datetime, timedelta, timezone

from align_da_ops.archive import Archive
from align_da_ops.campaign import CampaignConfig
from align_da_ops.engine import CycleOutcome, run_cycle
from align_da_ops.logs import get_logger
from align_da_ops.times import CycleTime
from align_da_ops.wiring import CycleContext

log = get_logger(__name__)


@dataclasses.dataclass(frozen=True)
class Clock:
    """Simulated time = origin + factor × (wall time − wall start). factor 1 and no origin: real UTC."""

    factor: float = 1.0
    origin: datetime | None = None
    wall_start: float = dataclasses.field(default_factory=time.time)

    def now(self) -> datetime:
        if self.origin is None and self.factor == 1.0:
            return datetime.now(timezone.utc).replace(tzinfo=None)
        base = self.origin or datetime.now(timezone.utc).replace(tzinfo=None)
        return base + timedelta(seconds=self.factor * (time.time() - self.wall_start))


def due_cycles(campaign: CampaignConfig, archive: Archive, now: datetime) -> list[CycleTime]:
    """Cycles from the campaign start to the latest one past its cut-off (and its end), not yet done."""
    latest = CycleTime.latest_at_or_before(now - campaign.cutoff)
    last = campaign.last
    if last is not None and latest > last:
        latest = last
    if latest < campaign.first:
        return []
    done = set(archive.done_cycles())
    out, t = [], campaign.first
    while t <= latest:
        if t not in done:
            out.append(t)
        t = t.next
    return out


def catch_up(ctx: CycleContext, now: datetime, stop: threading.Event | None = None) -> list[CycleOutcome]:
    """Run every due cycle in order; stop early (between cycles) when `stop` is set."""
    outcomes = []
    for cycle in due_cycles(ctx.campaign, ctx.archive, now):
        if stop is not None and stop.is_set():
            break
        outcomes.append(run_cycle(ctx, cycle))
    return outcomes


def serve(ctx: CycleContext, clock: Clock = Clock(), tick_seconds: float | None = None, max_ticks: int | None = None) -> int:
    """Block and cycle until SIGTERM/SIGINT (or `max_ticks`); returns the number of cycles run.

    With the real clock, jobs fire at 00/06/12/18 UTC + cut-off; with an
    accelerated clock (or `tick_seconds`), every `tick_seconds` of wall time.
    """
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    from apscheduler.events import EVENT_JOB_MAX_INSTANCES

    stop, ticks, ran = threading.Event(), [0], [0]
    still_running = threading.Event()  # one "still running" line per busy tick, not one per skipped trigger

    def tick():
        if stop.is_set():
            return
        try:
            ran[0] += len(catch_up(ctx, clock.now(), stop))
        finally:
            still_running.clear()
        ticks[0] += 1
        if max_ticks is not None and ticks[0] >= max_ticks:
            stop.set()

    def skipped(_event):
        if not still_running.is_set():
            still_running.set()
            log.info("cycle_still_running", campaign=ctx.campaign.name, note="later triggers skipped until it ends")

    if tick_seconds is None and clock.factor == 1.0:
        minutes = int(ctx.campaign.cutoff.total_seconds() // 60)
        trigger = CronTrigger(hour=f"{minutes // 60}-23/6", minute=minutes % 60, timezone="UTC")
    else:
        trigger = IntervalTrigger(seconds=tick_seconds or 1.0)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    if threading.current_thread() is threading.main_thread():
        for s in previous:
            signal.signal(s, lambda *_: stop.set())
    scheduler = BackgroundScheduler(timezone="UTC")
    with ctx.archive.locked():
        log.info("service_start", campaign=ctx.campaign.name, factor=clock.factor)
        tick()  # catch up at once after downtime
        scheduler.add_listener(skipped, EVENT_JOB_MAX_INSTANCES)
        scheduler.add_job(tick, trigger, max_instances=1, coalesce=True, misfire_grace_time=None)
        scheduler.start()
        try:
            while not stop.wait(0.2):
                pass
        finally:
            scheduler.shutdown(wait=True)  # finishes the cycle in flight
            if threading.current_thread() is threading.main_thread():
                for s, handler in previous.items():
                    signal.signal(s, handler)
    log.info("service_stop", campaign=ctx.campaign.name, cycles_run=ran[0])
    return ran[0]
