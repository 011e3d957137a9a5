"""`align-da bench forecast`: the neural model against reference forecasts on the test split.

Scores: latitude-weighted RMSE (`verify.wrmse`, physical units) of z500, t850,
u500, v500 at each lead, averaged over start times every `every_hours` in the
test split (a start is used when its longest lead is still in the split).
References: persistence, climatology (the training-split time mean; the same
field at every lead) and the dynamical core started from the truth plus a
small perturbation (Gaussian, 0.1 x each channel's 6-h increment std: the
perfect-model reference, up to the pressure/sigma round trip). All forecasts
are rollouts of `step` (`forecast.base.rollout`), batched over the starts.
Stability: a 10-day rollout from the first test state must stay finite and
its global kinetic energy (area-weighted mean of (u²+v²)/2 over all levels) at
day 10 within `ke_tolerance` of the nature run's at the same valid time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from align_da_ops import grid
from align_da_ops.evaluation import HEADLINE
from align_da_ops.forecast.base import ForecastModel, rollout
from align_da_ops.forecast.training import load_split
from align_da_ops.verify import spatial_mean, wrmse

LEADS = (6, 24, 48)


class Climatology:
    """A fixed field at every lead (the training-split time mean): the no-skill reference."""

    name = "climatology"
    step_hours = 6

    def __init__(self, field: torch.Tensor):
        self.field = field

    def step(self, state: torch.Tensor) -> torch.Tensor:
        return self.field.to(state.device, state.dtype).expand_as(state).clone()


def starts_for(n_times: int, leads: Sequence[int], every_hours: int) -> list[int]:
    """Indices of 6-hourly states that start a forecast whose longest lead stays inside the series."""
    if every_hours <= 0 or every_hours % 6:
        raise ValueError(f"every_hours must be a positive multiple of 6; got {every_hours}")
    return list(range(0, n_times - max(leads) // 6, every_hours // 6))


def small_perturbation(series: torch.Tensor, amplitude: float = 0.1, seed: int = 0):
    """start -> start + Gaussian noise of `amplitude` x each channel's 6-h increment std (seeded, per call order)."""
    std = (series[1:] - series[:-1]).movedim(1, 0).reshape(series.shape[1], -1).std(1)[:, None, None]
    generator = torch.Generator().manual_seed(seed)

    def perturb(start: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(start.shape, generator=generator, dtype=torch.float64)
        return start + (amplitude * std * noise).to(start.dtype)

    return perturb


def forecast_scores(
    model: ForecastModel, series: torch.Tensor, starts: Sequence[int], layout, lat, leads=LEADS, batch: int = 16,
    perturb=None,
) -> dict[int, dict[str, float]]:
    """{lead: {"z500": mean WRMSE, ...}} of `model` started from series[starts] (perturbed by `perturb`) against series."""
    chans = {f"{grid.VARIABLES[v].short}{p}": layout.channel_index(v, p) for v, p in HEADLINE}
    sums = {lead: {k: 0.0 for k in chans} for lead in leads}
    for i in range(0, len(starts), batch):
        idx = list(starts[i : i + batch])
        start = series[idx] if perturb is None else perturb(series[idx])
        out = rollout(model, start, list(leads))
        for lead in leads:
            score = wrmse(out[lead].cpu(), series[[j + lead // 6 for j in idx]], lat)
            for k, c in chans.items():
                sums[lead][k] += float(score[:, c].sum())
    return {lead: {k: v / len(starts) for k, v in row.items()} for lead, row in sums.items()}


def seconds_per_step(model: ForecastModel, state: torch.Tensor, repeats: int = 3) -> float:
    """Best-of-`repeats` wall seconds of one `step` (after a warm-up), synchronised on CUDA."""
    model.step(state)
    best = float("inf")
    for _ in range(repeats):
        if state.device.type == "cuda":
            torch.cuda.synchronize(state.device)
        t0 = time.perf_counter()
        model.step(state)
        if state.device.type == "cuda":
            torch.cuda.synchronize(state.device)
        best = min(best, time.perf_counter() - t0)
    return best


def timings(neural, state: torch.Tensor, dynamical: ForecastModel | None = None) -> list[tuple[str, str, int, float]]:
    """(model, device, members, seconds per step): the neural model on CPU (and CUDA when present)."""
    rows = []
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        neural.to(device)
        for n in (1, 16):
            batch = state.expand(n, *state.shape[1:]).contiguous().to(device)
            rows.append(("neural", device, n, seconds_per_step(neural, batch)))
    neural.to("cpu")
    if dynamical is not None:
        rows.append(("dynamical_core", "cpu", 1, seconds_per_step(dynamical, state, repeats=1)))
    return rows


def kinetic_energy(state: torch.Tensor, layout, lat) -> torch.Tensor:
    """Area-weighted global mean of (u²+v²)/2 over all levels (m²/s²), per leading index."""
    n = len(layout.levels)
    iu, iv = layout.upper_air.index("u_component_of_wind"), layout.upper_air.index("v_component_of_wind")
    u, v = state[..., iu * n : (iu + 1) * n, :, :], state[..., iv * n : (iv + 1) * n, :, :]
    ke = 0.5 * (u.double() ** 2 + v.double() ** 2)
    return spatial_mean(ke, lat).mean(-1)


def long_rollout_check(model: ForecastModel, states, layout, lat, start, days: float = 10.0, ke_tolerance: float = 0.25) -> dict:
    """Roll `days` from the truth at `start`; finite everywhere and KE at the end near the truth's."""
    steps = int(round(days * 24 / model.step_hours))
    times = states[grid.TIME].values
    i0 = int(np.searchsorted(times, np.datetime64(start, "ns")))
    if i0 + steps >= len(times):
        raise ValueError(f"the data ends before {days:g} days after {start}")
    truth_start = layout.to_tensor(states.isel({grid.TIME: i0}).load())[0]
    truth_end = layout.to_tensor(states.isel({grid.TIME: i0 + steps}).load())[0]
    state, finite = truth_start[None], True
    for _ in range(steps):
        state = model.step(state)
        finite = finite and bool(torch.isfinite(state).all())
    ke_model, ke_truth = float(kinetic_energy(state[0].cpu(), layout, lat)), float(kinetic_energy(truth_end, layout, lat))
    ratio = ke_model / ke_truth
    return {"days": days, "finite": finite, "ke_model": ke_model, "ke_truth": ke_truth, "ke_ratio": ratio,
            "ok": finite and abs(ratio - 1.0) <= ke_tolerance}


def losses_to(scores: dict, model: str = "neural", references=("persistence", "climatology")) -> list[str]:
    """Where `model` does not beat every reference: "z500 +48 h vs climatology" entries (empty: it wins)."""
    return [f"{var} +{lead} h vs {ref}" for ref in references if ref in scores
            for lead, row in scores[model].items() for var, value in row.items() if not value < scores[ref][lead][var]]


def bench(models: Mapping[str, ForecastModel], states, layout, period, every_hours: int = 12, leads=LEADS,
          perturbed: Sequence[str] = (), amplitude: float = 0.1) -> dict:
    """Scores of every model on the split `period`; {name: {lead: {var: wrmse}}}. Models named in `perturbed`
    start from the truth plus a small perturbation (`small_perturbation`, the perfect-model reference)."""
    series = load_split(states, layout, period)
    lat = states[grid.LAT].values
    starts = starts_for(series.shape[0], leads, every_hours)
    if not starts:
        raise ValueError(f"the split holds {series.shape[0]} states: too short for a {max(leads)} h forecast")
    return {name: forecast_scores(m, series, starts, layout, lat, leads,
                                  perturb=small_perturbation(series, amplitude) if name in perturbed else None)
            for name, m in models.items()}
