"""Where a campaign stands: cycles by state, gaps, lag, fallbacks, failures and O−B/O−A per cycle.

Read-only and lock-free (it may run beside the engine). States of an expected cycle:
done, fallback (done, background archived as analysis), failed (a failure record and not done),
pending (neither). Expected cycles run from the campaign start to its end (replay) or to the
latest cycle past its cut-off at `now` (continuous, or a campaign without an end).

Health, also the exit code of `align-da status` (usable as a health check):
healthy (0) every expected cycle done; behind (13) some expected cycle not done and none failing;
failing (14) the first cycle not done has a failure record, or the last `FALLBACK_RUN` done cycles all fell back.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from pathlib import Path

from align_da_ops.archive import Archive
from align_da_ops.errors import ArchiveError, InputDataError
from align_da_ops.times import CYCLE, CycleTime, cycle_range

HEALTH_EXIT_CODES = {"healthy": 0, "behind": 13, "failing": 14}
FALLBACK_RUN = 3


@dataclasses.dataclass(frozen=True)
class Expectation:
    """Which cycles should exist: `first`..`last` (None: up to the latest past `cutoff` at `now`)."""

    name: str
    first: CycleTime
    last: CycleTime | None
    cutoff: timedelta
    continuous: bool


def expectation_for(path: Path) -> tuple[Archive | None, Expectation]:
    """A campaign file or an archive directory -> its archive (None: not created yet) and what it should
    hold. An archive alone uses the campaign file its provenance names when that still exists, else its
    own first cycle."""
    from align_da_ops.campaign import load_campaign

    path = Path(path)
    if path.is_file():
        campaign, _ = load_campaign(path)
        exists = (Path(campaign.archive) / "archive.json").exists()
        return (Archive.open(campaign.archive) if exists else None), _from_campaign(campaign)
    if not (path / "archive.json").exists():
        raise InputDataError(f"{path} is neither a campaign file nor an archive directory (no archive.json)")
    archive = Archive.open(path)
    done = archive.done_cycles()
    source = archive.provenance(done[-1]).get("campaign_file") if done else None
    if source and Path(source).is_file():
        campaign, _ = load_campaign(source)
        if Path(campaign.archive).resolve() == path.resolve():
            return archive, _from_campaign(campaign)
    first = CycleTime.parse(archive.meta["first_cycle"]) if "first_cycle" in archive.meta else (done[0] if done else None)
    if first is None:
        raise ArchiveError(f"{path} holds no cycle and names no first cycle")
    return archive, Expectation(archive.meta["experiment"], first, done[-1] if done else first, timedelta(hours=1), False)


def _from_campaign(campaign) -> Expectation:
    return Expectation(campaign.name, campaign.first, campaign.last, campaign.cutoff,
                       campaign.mode == "continuous" or campaign.last is None)


def campaign_status(archive: Archive | None, expect: Expectation, now: datetime | None = None, last_n: int = 8) -> dict:
    """The status report as a JSON-ready dict (see module docstring for states and health); no archive: nothing done."""
    now = now or datetime.now(timezone.utc).replace(tzinfo=None)
    horizon = expect.last
    if expect.continuous:
        due = CycleTime.latest_at_or_before(now - expect.cutoff)
        horizon = due if horizon is None or due < horizon else horizon
    expected = cycle_range(expect.first, horizon) if horizon is not None and horizon >= expect.first else []
    flags = {c: archive.provenance(c) for c in archive.done_cycles()} if archive else {}
    failures = archive.failures() if archive else {}
    states = {}
    for cycle in sorted(set(expected) | set(flags) | set(failures)):
        if cycle in flags:
            states[cycle] = "fallback" if flags[cycle].get("fallback") else "done"
        else:
            states[cycle] = "failed" if cycle in failures else "pending"
    not_done = [c for c in expected if c not in flags]
    done_sorted = sorted(flags)
    recent = [states[c] for c in done_sorted[-FALLBACK_RUN:]]
    if (not_done and not_done[0] in failures) or (len(recent) == FALLBACK_RUN and set(recent) == {"fallback"}):
        health = "failing"
    elif not_done:
        health = "behind"
    else:
        health = "healthy"
    last_done = done_sorted[-1] if done_sorted else None
    lag_hours = None
    if expect.continuous and horizon is not None:
        reference = last_done or expect.first.previous
        lag_hours = max(0.0, (horizon.value - reference.value) / timedelta(hours=1))
    shown = [c for c in sorted(states) if states[c] != "pending"][-last_n:] if last_n > 0 else []
    return {
        "campaign": expect.name,
        "archive": str(archive.root) if archive else None,
        "now": now.isoformat(timespec="seconds"),
        "mode": "continuous" if expect.continuous else "replay",
        "first": str(expect.first),
        "last": str(horizon) if horizon is not None else None,
        "expected": len(expected),
        "counts": {s: sum(v == s for v in states.values()) for s in ("done", "fallback", "failed", "pending")},
        "last_done": str(last_done) if last_done else None,
        "latest_due": str(horizon) if expect.continuous and horizon is not None else None,
        "lag_hours": lag_hours,
        "gaps": _gaps(done_sorted),
        "health": health,
        "exit_code": HEALTH_EXIT_CODES[health],
        "fallbacks": [{"cycle": str(c), "reason": flags[c].get("fallback_reason", "")}
                      for c in done_sorted if states[c] == "fallback"],
        "failures": [{"cycle": str(c), **{k: r.get(k) for k in ("error", "message", "exit_code", "at")}}
                     for c, r in failures.items()],
        "cycles": [_cycle_row(archive, c, states[c], flags.get(c), failures.get(c)) for c in shown],
    }


def _gaps(done: list[CycleTime]) -> list[dict]:
    """Runs of missing cycles between the first and the last done cycle."""
    gaps = []
    for a, b in zip(done, done[1:]):
        if b.value - a.value > CYCLE:
            gaps.append({"from": str(a.next), "to": str(b.previous), "cycles": int((b.value - a.value) / CYCLE) - 1})
    return gaps


def _cycle_row(archive: Archive, cycle: CycleTime, state: str, flag: dict | None, failure: dict | None) -> dict:
    row = {"cycle": str(cycle), "state": state}
    if flag is not None:
        departures = flag.get("departures")
        if departures is None:  # archives from before departures were kept in the done flag
            from align_da_ops.obs.monitoring import departure_summary

            departures = departure_summary(archive.read_obs(cycle)[2])
        row.update(n_obs_used=flag.get("n_obs_used"), seconds=round(sum(flag.get("wall_s", {}).values()), 3), **departures)
        if state == "fallback":
            row["reason"] = flag.get("fallback_reason", "")
    if failure is not None:
        row.update(error=failure.get("error"), reason=failure.get("message", ""))
    return row
