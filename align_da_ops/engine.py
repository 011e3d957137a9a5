"""`run_cycle`: the one recipe used by the CLI, the scheduler and replays.

Idempotent and restartable: the archive is the source of truth. A done cycle is
skipped (unless forced); the background of cycle t is the archived 6-h
forecast of cycle t-6h (the first cycle cold-starts; a cycled ensemble's background is the
archived analysis members of t-6h advanced 6 h, each by the forecast model); nothing is written until
the analysis has passed its checks; the archive writes data first and the
done flag last. Deterministic on CPU: seeds derive from (experiment, campaign seed, cycle, member), never
from the campaign's name, so campaigns that differ only in method are paired.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from align_da_ops.analysis.base import AnalysisResult
from align_da_ops.archive import CycleRecord
from align_da_ops.errors import ArchiveError, CycleFailedError
from align_da_ops.forecast.base import rollout
from align_da_ops.logs import get_logger
from align_da_ops.obs.monitoring import departure_statistics, departure_summary
from align_da_ops.obs.qc import run_qc
from align_da_ops.times import CycleTime
from align_da_ops.wiring import CycleContext, member_seed

log = get_logger(__name__)


@dataclasses.dataclass(frozen=True)
class CycleOutcome:
    cycle: CycleTime
    status: str  # "done", "skipped" (already done), "fallback" (background archived as analysis)
    wall_s: dict[str, float] = dataclasses.field(default_factory=dict)


class _Stopwatch:
    def __init__(self):
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = round(now - self._t, 4)
        self._t = now


def run_cycle(ctx: CycleContext, cycle: CycleTime, force: bool = False) -> CycleOutcome:
    """Observations -> QC -> background -> analysis -> forecasts -> archive, for one cycle.

    A failure is recorded in the archive (`failures/`, read by `align-da status`) and re-raised; the
    record goes when the cycle completes."""
    if ctx.archive.is_done(cycle) and not force:
        return CycleOutcome(cycle, "skipped")
    try:
        outcome = _run_cycle(ctx, cycle, force)
    except Exception as exc:
        log.error("cycle_failed", cycle=str(cycle), campaign=ctx.campaign.name, error=type(exc).__name__, message=str(exc))
        ctx.archive.record_failure(cycle, exc)
        raise
    ctx.archive.clear_failure(cycle)
    return outcome


def _run_cycle(ctx: CycleContext, cycle: CycleTime, force: bool) -> CycleOutcome:
    bound = log.bind(cycle=str(cycle), campaign=ctx.campaign.name)
    watch = _Stopwatch()
    background_members = _background_members(ctx, cycle) if ctx.cycles_ensemble else None
    background = background_members.mean(0) if background_members is not None else _background(ctx, cycle)
    watch.lap("background")
    obs = ctx.observations(cycle)
    pre_qc = obs.qc.copy()
    watch.lap("observations")
    obs, hx_b = _quality_control(ctx, cycle, obs, background if background_members is None else background_members)
    watch.lap("qc")
    used = obs.select(obs.passed)
    operator = ctx.interpolator.prepare(used, ctx.device)
    seeds = [member_seed(ctx.experiment.name, ctx.campaign.seed, cycle, m) for m in range(getattr(ctx.method, "members", 1))]
    generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
    if background_members is not None:
        result = ctx.method.analyse_members(background_members, used, operator, generators)
    else:
        result = ctx.method.analyse(background, used, operator, generators)
    watch.lap("analysis")
    result, flags = _check(ctx, cycle, background, result, background_members)
    forecasts = rollout(ctx.model, result.analysis[None], list(ctx.campaign.leads_hours))
    bad = [lead for lead, x in sorted(forecasts.items()) if not torch.isfinite(x).all()]
    if bad:
        raise CycleFailedError(f"cycle {cycle}: the {bad} h forecasts from the analysis have NaN/Inf "
                               "(check the forecast model); nothing archived")
    forecasts = {lead: x[0] for lead, x in forecasts.items()}
    watch.lap("forecast")
    hx_a = ctx.interpolator.prepare(obs, ctx.device)(result.analysis).cpu().numpy()
    monitoring = _monitoring(ctx, obs, hx_b, hx_a)
    departures = departure_summary(monitoring)
    provenance = {
        **ctx.provenance,
        "cycle": cycle.value.isoformat(),
        "seed": seeds[0],
        "member_seeds": seeds,
        "cold_start": cycle == ctx.campaign.first,
        "qc_counts": obs.flag_counts(),
        "n_obs_used": int(len(used)),
        "diagnostics": result.diagnostics,
        "departures": departures,
        **flags,
    }
    members = result.members.cpu() if result.members is not None else None
    if members is None and ctx.archive.ensemble:  # a fallback archives the background as every member
        members = result.analysis.cpu()[None].repeat(len(generators), 1, 1, 1)
    record = CycleRecord(cycle, background.cpu(), result.analysis.cpu(), {k: v.cpu() for k, v in forecasts.items()},
                         obs, hx_b, hx_a, monitoring, provenance,
                         spread=members.std(0) if members is not None else None,
                         members=members if ctx.archive.n_members else None, pre_qc=pre_qc)
    watch.lap("monitoring")
    record.provenance["wall_s"] = dict(watch.laps)
    ctx.archive.write_cycle(record, force=force)
    watch.lap("archive")
    bound.info("cycle_done", n_obs=len(obs), n_used=len(used),
               **{k: v for k, v in departures.items() if k.endswith("jo_per_n")},
               **{f"{k}_{var}": v for k in ("omb_rms", "oma_rms") for var, v in departures.get(k, {}).items()},
               **{f"s_{k}": v for k, v in watch.laps.items()})
    return CycleOutcome(cycle, "fallback" if flags.get("fallback") else "done", dict(watch.laps))


def _background(ctx: CycleContext, cycle: CycleTime) -> torch.Tensor:
    if cycle == ctx.campaign.first:
        return ctx.initial_state().to(ctx.device)
    previous = cycle.previous
    if not ctx.archive.is_done(previous):
        raise ArchiveError(f"cycle {cycle} needs the background from {previous}, which is not done; run cycles in order")
    return ctx.archive.read_state("forecast", previous, lead=6).to(ctx.device)


def _background_members(ctx: CycleContext, cycle: CycleTime) -> torch.Tensor:
    """The cycled ensemble's background (members, channel, lat, lon): the previous cycle's archived analysis
    members advanced 6 h by the forecast model (batched); at the first cycle, the perturbed cold start
    (seeded per member)."""
    if cycle == ctx.campaign.first:
        seeds = [member_seed(f"{ctx.experiment.name}|cold-start", ctx.campaign.seed, cycle, m) for m in range(ctx.method.members)]
        return ctx.initial_ensemble([torch.Generator(device="cpu").manual_seed(s) for s in seeds]).to(ctx.device)
    previous = cycle.previous
    if not ctx.archive.is_done(previous):
        raise ArchiveError(f"cycle {cycle} needs the members of {previous}, which is not done; run cycles in order")
    members = ctx.archive.read_state("members", previous).to(ctx.device)
    advanced = rollout(ctx.model, members, [6])[6]
    if not torch.isfinite(advanced).all():
        raise CycleFailedError(f"cycle {cycle}: the 6-h member forecasts from {previous} have NaN/Inf; nothing archived")
    return advanced


def _quality_control(ctx: CycleContext, cycle: CycleTime, obs, background):
    """H(x_b) for every row (NaN where no operator), then all QC checks once, the background check last.

    `background` is one state or an ensemble (members first): then the background check uses the members'
    mean and spread, and the returned H(x_b) is the members' mean."""
    hx_b = ctx.interpolator.prepare(obs, ctx.device)(background).cpu().numpy()
    obs = run_qc(obs, ctx.campaign.observations.qc, cycle.as_numpy(), ctx.interpolator, hx_background=hx_b)
    return obs, (hx_b.mean(0) if hx_b.ndim == 2 else hx_b)


def _check(ctx: CycleContext, cycle: CycleTime, background: torch.Tensor, result: AnalysisResult,
           background_members: torch.Tensor | None = None):
    """NaN/Inf or a collapsed ensemble: fail before archiving, or fall back to the background (flagged;
    a cycled ensemble falls back to its background members). A non-finite background is never archived."""
    problem = None
    if not torch.isfinite(result.analysis).all():
        problem = "analysis has NaN/Inf"
    elif result.members is not None and not torch.isfinite(result.members).all():
        problem = "analysis members have NaN/Inf"
    elif result.members is not None and result.members.shape[0] > 1:
        spread = result.members.std(0).mean()
        if not spread > 1e-6 * result.analysis.abs().mean():
            problem = f"ensemble collapsed (mean spread {float(spread):.3g})"
    flags: dict = {}
    if result.diagnostics.get("n_obs", 1) == 0 or result.diagnostics.get("n_obs_used", 1) == 0:
        flags["no_observations"] = True
    if problem is None:
        return result, flags
    if ctx.campaign.on_failure == "fail":
        raise CycleFailedError(f"cycle {cycle}: {problem}; nothing archived")
    log.warning("cycle_fallback", cycle=str(cycle), reason=problem)
    flags.update(fallback="background", fallback_reason=problem)
    if not torch.isfinite(background).all():
        raise CycleFailedError(f"cycle {cycle}: {problem}, and the background has NaN/Inf too; nothing archived")
    members = background_members.clone() if background_members is not None else None
    return AnalysisResult(analysis=background.clone(), members=members, diagnostics=result.diagnostics), flags


def _monitoring(ctx: CycleContext, obs, hx_b: np.ndarray, hx_a: np.ndarray):
    import pandas as pd

    bands = ctx.campaign.observations.level_bands_hpa
    return pd.concat(
        [departure_statistics(obs, hx_b, "O-B", bands), departure_statistics(obs, hx_a, "O-A", bands)],
        ignore_index=True,
    )

