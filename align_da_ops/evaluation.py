"""Scores of an archive against the truth (OSSE) and against observations, over cycles and leads.

`archive_scores` returns the tidy table of `verify.scores_table`: one row per
(cycle_time, lead, method), lead 0 h the analysis and lead L the forecast from
that cycle valid L hours later (lead 6 h is the next cycle's background). Rows
exist only where the truth covers the valid time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import xarray as xr

from align_da_ops import grid, verify
from align_da_ops.archive import Archive
from align_da_ops.times import CycleTime

HEADLINE = (("geopotential", 500), ("temperature", 850), ("u_component_of_wind", 500), ("v_component_of_wind", 500))


def _truth_at(truth: xr.Dataset, layout: grid.StateLayout, when: np.datetime64) -> torch.Tensor | None:
    if when not in truth.indexes[grid.TIME]:
        return None
    return layout.to_tensor(truth.sel({grid.TIME: when}).load())[0]


def archive_scores(
    archive: Archive, truth: xr.Dataset, method: str, norm: grid.Normalization | None = None,
    climatology: torch.Tensor | None = None,
) -> pd.DataFrame:
    layout, lat = archive.layout, archive.lat
    analysis = archive.open_product("analysis")
    forecast = archive.open_product("forecast")
    records = []
    for cycle in archive.done_cycles():
        t = cycle.as_numpy()
        x_true = _truth_at(truth, layout, t)
        if x_true is not None:
            x_a = layout.to_tensor(analysis.sel({grid.TIME: t}).load())[0]
            records.append({"cycle_time": t, "lead": 0, "method": method,
                            **verify.state_scores(x_a, x_true, lat, layout.channels, norm=norm, climatology=climatology)})
        for lead in archive.leads:
            valid = t + np.timedelta64(lead, "h")
            y_true = _truth_at(truth, layout, valid)
            if y_true is None:
                continue
            x_f = layout.to_tensor(forecast.sel({grid.TIME: t, "lead": lead}).load())[0]
            records.append({"cycle_time": t, "lead": lead, "method": method,
                            **verify.state_scores(x_f, y_true, lat, layout.channels, norm=norm, climatology=climatology)})
    return verify.scores_table(records)


def climatology_of(truth: xr.Dataset, layout: grid.StateLayout, start, end) -> torch.Tensor:
    """Time mean of the truth over [start, end] as a (channel, lat, lon) tensor (the ACC reference)."""
    mean = truth.sel({grid.TIME: slice(start, end)}).mean(grid.TIME).load()
    return layout.to_tensor(mean)[0]


def headline(table: pd.DataFrame, lead_hours: int) -> dict[str, float]:
    """Mean over cycles of the headline WRMSEs (z500, t850, u500, v500) at one lead."""
    sel = table.xs(pd.Timedelta(hours=lead_hours), level="lead")
    return {f"{v}_{p}": float(sel[f"wrmse_{v}_{p}"].mean()) for v, p in HEADLINE}


def drift(table: pd.DataFrame, lead_hours: int = 0) -> dict[str, float]:
    """Ratio of the last third's mean analysis WRMSE to the middle third's (≈1: no drift)."""
    sel = table.xs(pd.Timedelta(hours=lead_hours), level="lead")
    n = len(sel)
    if n < 6:
        return {}
    middle, last = sel.iloc[n // 3 : 2 * n // 3], sel.iloc[2 * n // 3 :]
    return {f"{v}_{p}": float(last[f"wrmse_{v}_{p}"].mean() / middle[f"wrmse_{v}_{p}"].mean()) for v, p in HEADLINE}


def stage_seconds(archive: Archive) -> dict[str, float]:
    """Mean wall seconds per stage over the archive's done cycles (from their provenance)."""
    totals: dict[str, list[float]] = {}
    for cycle in archive.done_cycles():
        for stage, seconds in archive.provenance(cycle).get("wall_s", {}).items():
            totals.setdefault(stage, []).append(float(seconds))
    return {k: float(np.mean(v)) for k, v in totals.items()}


def observation_table(archive: Archive, cycles: list[CycleTime] | None = None) -> pd.DataFrame:
    """All archived O-B/O-A monitoring rows, with their cycle."""
    frames = []
    for cycle in cycles or archive.done_cycles():
        _, _, mon = archive.read_obs(cycle)
        mon.insert(0, "cycle", cycle.value)
        frames.append(mon)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
