"""Observation-space monitoring: O−B and O−A statistics as a tidy table the archive can store.

`departure_statistics(batch, hx, label)` groups the used (QC pass) observations
by observation type, variable and level band and returns one row per group:
count, mean, std (ddof=0), rms of d = y − H(x), and Jo/n = mean((d / sigma_o)^2)
(the normalised cost per observation; ≈ 1 + sigma_b²/sigma_o² for consistent
O−B statistics, < 1 for O−A). An ensemble H(x) (members, n) uses the ensemble mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from align_da_ops.errors import ObservationError
from align_da_ops.obs.batch import ObsBatch

DEFAULT_BANDS_HPA = (1100.0, 700.0, 300.0, 0.0)
STAT_COLUMNS = ("departure", "obs_type", "variable", "level_band", "count", "mean", "std", "rms", "jo_per_n")


def level_bands(pressure_pa: np.ndarray, edges_hpa: Sequence[float] = DEFAULT_BANDS_HPA) -> np.ndarray:
    """Band label per row: "surface" for NaN pressure, else "<hi>-<lo>hPa" for lo < p <= hi (descending edges)."""
    edges = np.asarray(edges_hpa, dtype=np.float64)
    labels = np.asarray([f"{hi:g}-{lo:g}hPa" for hi, lo in zip(edges[:-1], edges[1:])] + ["outside"])
    p = pressure_pa / 100.0
    with np.errstate(invalid="ignore"):
        idx = np.full(len(p), len(labels) - 1)
        for i, (hi, lo) in enumerate(zip(edges[:-1], edges[1:])):
            idx[(p <= hi) & (p > lo) & (idx == len(labels) - 1)] = i
    return np.where(np.isnan(p), "surface", labels[idx])


def departure_statistics(
    batch: ObsBatch,
    hx,
    label: str = "O-B",
    edges_hpa: Sequence[float] = DEFAULT_BANDS_HPA,
    used_only: bool = True,
) -> pd.DataFrame:
    """Tidy O−B / O−A table (columns `STAT_COLUMNS`), one row per (obs_type, variable, level_band)."""
    h = hx.detach().to("cpu", torch.float64).numpy() if isinstance(hx, torch.Tensor) else np.asarray(hx, np.float64)
    if h.ndim == 2:
        h = h.mean(axis=0)
    if h.shape != (len(batch),):
        raise ObservationError(f"H(x) has shape {h.shape}; expected ({len(batch)},) or (members, {len(batch)})")
    d = batch.value - h
    use = np.isfinite(d) & (batch.passed if used_only else True)
    df = pd.DataFrame(
        {
            "obs_type": batch.obs_type[use],
            "variable": batch.variable[use],
            "level_band": level_bands(batch.pressure[use], edges_hpa),
            "d": d[use],
            "d2": d[use] ** 2,
            "z2": (d[use] / batch.error[use]) ** 2,
        }
    )
    if df.empty:
        return pd.DataFrame(
            {
                c: pd.Series(dtype=("int64" if c == "count" else float if c in STAT_COLUMNS[4:] else str))
                for c in STAT_COLUMNS
            }
        )
    g = df.groupby(["obs_type", "variable", "level_band"], sort=True)
    out = g.agg(
        count=("d", "size"),
        mean=("d", "mean"),
        std=("d", lambda x: float(np.std(x))),
        ms=("d2", "mean"),
        jo_per_n=("z2", "mean"),
    )
    out["rms"] = np.sqrt(out.pop("ms"))
    out = out.reset_index()
    out.insert(0, "departure", label)
    return out[list(STAT_COLUMNS)]


def departure_summary(table: pd.DataFrame) -> dict:
    """One cycle's O−B/O−A in a few numbers (for logs, done flags and `align-da status`): per departure
    ("omb", "oma"), the count, Jo/n pooled over every used observation, and the RMS per variable pooled
    over observation types and level bands (count-weighted). Empty table: {}."""
    out: dict = {}
    for label, key in (("O-B", "omb"), ("O-A", "oma")):
        part = table[(table["departure"] == label) & (table["count"] > 0)]
        if part.empty:
            continue
        n = part["count"].astype(float)
        out[f"{key}_count"] = int(n.sum())
        out[f"{key}_jo_per_n"] = round(float((n * part["jo_per_n"]).sum() / n.sum()), 6)
        ss = (n * part["rms"] ** 2).groupby(part["variable"]).sum() / n.groupby(part["variable"]).sum()
        out[f"{key}_rms"] = {str(v): round(float(np.sqrt(x)), 6) for v, x in ss.items()}
    return out
