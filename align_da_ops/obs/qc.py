"""Quality control: each check flags rows of an `ObsBatch` (never drops them); the first failure wins.

Order in `run_qc` (cheap and certain first, the background check last):
missing -> blacklist -> time window -> gross limits -> no operator / outside the
state's levels -> duplicates -> thinning -> background check. Every check is
also a plain function usable on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import torch

from align_da_ops.errors import ObservationError
from align_da_ops.grid import VARIABLES
from align_da_ops.obs.batch import ObsBatch, QCFlag
from align_da_ops.obs.config import QCConfig
from align_da_ops.obs.operators import GridInterpolator

EARTH_RADIUS_KM = 6371.0


def check_missing(batch: ObsBatch) -> ObsBatch:
    """`missing`: no value, or no usable error std."""
    bad = ~np.isfinite(batch.value) | ~(batch.error > 0)
    return batch.flag(bad, QCFlag.MISSING)


def check_blacklist(batch: ObsBatch, stations: Iterable[str] = (), obs_types: Iterable[str] = ()) -> ObsBatch:
    """`blacklisted`: listed station ids or observation types."""
    bad = np.isin(batch.station, list(stations)) | np.isin(batch.obs_type, list(obs_types))
    return batch.flag(bad, QCFlag.BLACKLISTED)


def check_window(batch: ObsBatch, start: datetime | np.datetime64, end: datetime | np.datetime64) -> ObsBatch:
    """`outside_window`: time not in (start, end] (the usual half-open DA window)."""
    lo, hi = np.datetime64(start, "s"), np.datetime64(end, "s")
    if hi <= lo:
        raise ObservationError(f"window end {hi} is not after its start {lo}")
    return batch.flag((batch.time <= lo) | (batch.time > hi), QCFlag.OUTSIDE_WINDOW)


def window_of(cycle: datetime | np.datetime64, half_width: timedelta) -> tuple[np.datetime64, np.datetime64]:
    t = np.datetime64(cycle, "s")
    w = np.timedelta64(int(half_width.total_seconds()), "s")
    return t - w, t + w


def check_gross(batch: ObsBatch, limits: Mapping[str, tuple[float, float]] | None = None) -> ObsBatch:
    """`gross`: value outside the physical limits (default: grid.VARIABLES[...].valid_range)."""
    limits = {name: info.valid_range for name, info in VARIABLES.items()} | dict(limits or {})
    lo = np.asarray([limits[v][0] for v in batch.variable]) if len(batch) else np.zeros(0)
    hi = np.asarray([limits[v][1] for v in batch.variable]) if len(batch) else np.zeros(0)
    with np.errstate(invalid="ignore"):
        bad = (batch.value < lo) | (batch.value > hi)
    return batch.flag(bad, QCFlag.GROSS)


def check_operator(batch: ObsBatch, operator: GridInterpolator, tolerance_log_p: float = 0.05) -> ObsBatch:
    """`no_operator`: the state has no channel for the variable; `outside_domain`: pressure beyond its levels."""
    batch = batch.flag(~operator.supported(batch), QCFlag.NO_OPERATOR)
    return batch.flag(~operator.within_levels(batch, tolerance_log_p), QCFlag.OUTSIDE_DOMAIN)


def check_duplicates(batch: ObsBatch) -> ObsBatch:
    """`duplicate`: same station, type, time, variable, position (1e-4°) and pressure as an earlier passing row."""
    if not len(batch):
        return batch
    key = pd.DataFrame(
        {
            "station": batch.station,
            "obs_type": batch.obs_type,
            "time": batch.time,
            "variable": batch.variable,
            "lat": np.round(batch.latitude, 4),
            "lon": np.round(batch.longitude, 4),
            "p": np.nan_to_num(batch.pressure, nan=-1.0),
        }
    )
    dup = np.zeros(len(batch), bool)
    passing = batch.passed
    dup[passing] = key[passing].duplicated(keep="first").to_numpy()
    return batch.flag(dup, QCFlag.DUPLICATE)


def thinning_boxes(lat: np.ndarray, lon: np.ndarray, box_km: float) -> np.ndarray:
    """Equal-area-ish box id: latitude bands `box_km` tall, each cut into round(circumference / box_km) boxes."""
    dlat = np.degrees(box_km / EARTH_RADIUS_KM)
    band = np.floor((lat + 90.0) / dlat).astype(np.int64)
    centre = np.clip(-90.0 + (band + 0.5) * dlat, -90.0, 90.0)
    per_band = np.maximum(1, np.round(2 * np.pi * EARTH_RADIUS_KM * np.cos(np.radians(centre)) / box_km)).astype(
        np.int64
    )
    col = np.floor(np.mod(lon, 360.0) / 360.0 * per_band).astype(np.int64) % per_band
    return band * 100_000 + col


def thin(
    batch: ObsBatch, box_km: float, log_p_bin: float = 0.1, obs_types: Iterable[str] | None = None, centre=None
) -> ObsBatch:
    """`thinned`: keep one passing obs per (type, variable, box, ln-p bin); prefer the time closest to `centre`."""
    types = list(obs_types) if obs_types is not None else sorted(set(batch.obs_type))
    cand = batch.passed & np.isin(batch.obs_type, types)
    if not cand.any():
        return batch
    with np.errstate(invalid="ignore", divide="ignore"):
        level = np.where(batch.is_surface, -1, np.floor(np.log(batch.pressure) / log_p_bin)).astype(np.int64)
    t0 = np.datetime64(centre, "s") if centre is not None else batch.time[cand].min()
    df = pd.DataFrame(
        {
            "type": batch.obs_type,
            "var": batch.variable,
            "box": thinning_boxes(batch.latitude, batch.longitude, box_km),
            "level": level,
            "dt": np.abs((batch.time - t0).astype(np.int64)),
            "row": np.arange(len(batch)),
        }
    )[cand]
    keep = df.sort_values(["dt", "row"]).drop_duplicates(["type", "var", "box", "level"], keep="first")["row"]
    thinned = cand.copy()
    thinned[keep.to_numpy()] = False
    return batch.flag(thinned, QCFlag.THINNED)


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def background_check(
    batch: ObsBatch,
    hx_background,
    k: float = 5.0,
    sigma_b: Mapping[str, float] | np.ndarray | float | None = None,
    use_ensemble_spread: bool = True,
) -> ObsBatch:
    """`background_check`: |y - H(x_b)| > k sqrt(sigma_o^2 + sigma_b^2).

    `hx_background` is (n_obs,) or an ensemble (members, n_obs); with members > 1
    and `use_ensemble_spread`, sigma_b is the ensemble spread (std, ddof=1) and
    the departure is from the ensemble mean. Otherwise sigma_b comes from
    `sigma_b` (per variable, per row or one number; default 0).
    """
    hx = _as_numpy(hx_background)
    if hx.shape[-1] != len(batch) or hx.ndim not in (1, 2):
        raise ObservationError(f"H(x_b) has shape {hx.shape}; expected ({len(batch)},) or (members, {len(batch)})")
    if hx.ndim == 2 and hx.shape[0] > 1 and use_ensemble_spread:
        spread = hx.std(axis=0, ddof=1)
    elif isinstance(sigma_b, Mapping):
        spread = np.asarray([float(sigma_b.get(v, 0.0)) for v in batch.variable])
    else:
        spread = np.broadcast_to(np.asarray(0.0 if sigma_b is None else sigma_b, dtype=np.float64), (len(batch),))
    mean = hx.mean(axis=0) if hx.ndim == 2 else hx
    limit = k * np.sqrt(batch.error**2 + spread**2)
    with np.errstate(invalid="ignore"):
        bad = np.abs(batch.value - mean) > limit
    return batch.flag(bad & np.isfinite(mean), QCFlag.BACKGROUND_CHECK)


def run_qc(
    batch: ObsBatch,
    config: QCConfig,
    cycle: datetime | np.datetime64 | None = None,
    operator: GridInterpolator | None = None,
    hx_background=None,
) -> ObsBatch:
    """All checks in the documented order; window, operator and background checks need their inputs."""
    batch = check_missing(batch)
    batch = check_blacklist(batch, config.blacklist_stations, config.blacklist_types)
    if cycle is not None:
        batch = check_window(batch, *window_of(cycle, config.window_half_width))
    batch = check_gross(batch, config.gross_limits)
    if operator is not None:
        batch = check_operator(batch, operator, config.level_tolerance_log_p)
    batch = check_duplicates(batch)
    if config.thinning_km is not None:
        batch = thin(batch, config.thinning_km, config.thinning_log_p, config.thinning_types, centre=cycle)
    if hx_background is not None:
        batch = background_check(
            batch, hx_background, config.background_k, dict(config.background_sigma), config.use_ensemble_spread
        )
    return batch
