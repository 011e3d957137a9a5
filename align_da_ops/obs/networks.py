"""Synthetic observing networks drawn from a truth trajectory (the OSSE).

Each network first lays out a skeleton (where, when, which variable, error std,
report ids), then `_observe` fills values: y = H(x_true)(t) + noise (+ gross
error), with x_true linear in time between the stored truth times that bracket
the observation time, and H the same `GridInterpolator` the analysis uses.
Missing reports stay in the batch with NaN values and flag `missing`.

Randomness: one numpy Generator per (experiment, seed, cycle time, network spec)
(`network_rng`), drawn on the CPU, so a draw is bit-reproducible and does not
depend on other networks, devices or batch order. The experiment is the
experiment config's name, never a campaign's: campaigns that differ only in
their analysis method assimilate bitwise-identical observations (paired
experiments, DESIGN.md §6).

Networks:
- `random_mask` (Align-DA §4): a fraction of grid points, every channel, on the grid;
- `stations`: surface stations and radiosondes at `stations.csv` (off-grid,
  land-biased); sondes report at `levels_hpa`, without balloon drift. The truth
  has flat orography, so station elevation is recorded but not used by H;
- `swath`: a polar orbiter's ground track (circular orbit, Earth rotating under
  it, node precessing sun-synchronously) with footprints across the swath; it
  moves from cycle to cycle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import datetime, timedelta

import numpy as np
import torch
import xarray as xr

from align_da_ops import grid
from align_da_ops.errors import ObservationError
from align_da_ops.obs.batch import COLUMNS, ObsBatch, QCFlag
from align_da_ops.obs.config import NetworkConfig, ObservationsConfig, RandomMaskNetwork, StationNetwork, SwathNetwork
from align_da_ops.obs.operators import GridInterpolator
from align_da_ops.obs.stations import load_stations

EARTH_RADIUS_KM = 6371.0
SIDEREAL_DAY_S = 86164.0905
TROPICAL_YEAR_S = 365.2422 * 86400.0
ORBIT_EPOCH = np.datetime64("2000-01-01T00:00:00", "s")


def network_rng(experiment: str, cycle: datetime | np.datetime64, network: NetworkConfig, seed: int = 0) -> np.random.Generator:
    """The one generator for (experiment, seed, cycle, network spec): a hash of them, so order never matters.

    The spec is the network's whole validated config (kind, label, errors, rates, ...): the same
    spec in two campaigns gives the same draw; any change to it gives an independent one.
    """
    spec = json.dumps(network.model_dump(mode="json"), sort_keys=True)
    key = f"{experiment}|{int(seed)}|{np.datetime64(cycle, 's')}|{spec}".encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:16], "little"))


@dataclasses.dataclass(frozen=True, eq=False)
class Truth:
    """Truth states (time, channel, lat, lon), float64 on the CPU, with their times and grid."""

    states: torch.Tensor
    times: np.ndarray
    layout: grid.StateLayout
    latitudes: np.ndarray
    longitudes: np.ndarray

    @classmethod
    def from_dataset(cls, ds: xr.Dataset, member: int = 0) -> Truth:
        """From a schema dataset with a time dim (e.g. a nature run); the layout is what it holds."""
        if grid.MEMBER in ds.dims:
            ds = ds.isel({grid.MEMBER: member})
        upper = tuple(v for v in grid.UPPER_AIR if v in ds.data_vars)
        surface = tuple(v for v in grid.SURFACE if v in ds.data_vars)
        levels = tuple(int(p) for p in ds[grid.LEVEL].values) if upper else ()
        layout = grid.StateLayout(upper, surface, levels)
        if grid.TIME not in ds.dims:
            raise ObservationError(f"truth dataset needs a {grid.TIME!r} dimension; has {tuple(ds.dims)}")
        tensor, lead = layout.to_tensor(ds, dtype=torch.float64)
        if lead != (grid.TIME,):
            raise ObservationError(f"truth leading dims must be ({grid.TIME!r},); got {lead}")
        times = ds[grid.TIME].values.astype("datetime64[s]")
        return cls(tensor, times, layout, ds[grid.LAT].values, ds[grid.LON].values)

    def around(self, cycle, half_width: timedelta) -> Truth:
        """The stored times that bracket the window (cycle ± half_width)."""
        t0, w = np.datetime64(cycle, "s"), np.timedelta64(int(half_width.total_seconds()), "s")
        lo = max(int(np.searchsorted(self.times, t0 - w, side="right")) - 1, 0)
        hi = min(int(np.searchsorted(self.times, t0 + w, side="left")) + 1, len(self.times))
        if lo >= hi:
            raise ObservationError(f"truth has no times near {t0}; it covers {self.times[0]} .. {self.times[-1]}")
        return dataclasses.replace(self, states=self.states[lo:hi], times=self.times[lo:hi])

    def values_at(self, obs: ObsBatch) -> np.ndarray:
        """H(x_true) per row, linear in time between bracketing truth times (clamped at the ends)."""
        h = GridInterpolator(self.layout, self.latitudes, self.longitudes)(self.states, obs).numpy()
        if len(self.times) == 1:
            return h[0]
        secs = (self.times - self.times[0]).astype(np.int64).astype(np.float64)
        t = np.clip((obs.time - self.times[0]).astype(np.int64).astype(np.float64), secs[0], secs[-1])
        k0 = np.clip(np.searchsorted(secs, t, side="right") - 1, 0, len(secs) - 2)
        a = (t - secs[k0]) / (secs[k0 + 1] - secs[k0])
        rows = np.arange(len(obs))
        return np.where(a == 0.0, h[k0, rows], (1 - a) * h[k0, rows] + a * h[k0 + 1, rows])


@dataclasses.dataclass(frozen=True)
class SyntheticDraw:
    """A synthetic batch and what made it: the true values and which rows got a gross error."""

    batch: ObsBatch
    truth_values: np.ndarray
    gross: np.ndarray


# -- skeletons ---------------------------------------------------------------------------------
def _times(rng, n: int, cycle: np.datetime64, spread: timedelta | None) -> np.ndarray:
    """Report times: the cycle time, or uniform in (cycle - spread, cycle + spread] to the second."""
    if spread is None or n == 0:
        return np.full(n, cycle)
    s = int(spread.total_seconds())
    return cycle + rng.integers(-s + 1, s + 1, n).astype("timedelta64[s]")


def _pairs(variables, levels_pa) -> list[tuple[str, float]]:
    return [(v, p) for v in variables for p in levels_pa]


def _expand(report_cols: dict, pairs: list[tuple[str, float]]) -> dict:
    """Report table (one row per report) -> observation rows for every (variable, pressure) pair."""
    n = len(report_cols["latitude"])
    rep = np.repeat(np.arange(n), len(pairs))
    out = {k: np.asarray(v)[rep] for k, v in report_cols.items()}
    out["variable"] = np.tile(np.asarray([v for v, _ in pairs], dtype=str), n)
    out["pressure"] = np.tile(np.asarray([p for _, p in pairs], dtype=np.float64), n)
    out["report"] = rep
    return out


def _random_mask(cfg: RandomMaskNetwork, truth: Truth, rng, cycle, half: timedelta) -> dict:
    nlat, nlon = len(truth.latitudes), len(truth.longitudes)
    n = max(1, int(round(cfg.fraction * nlat * nlon)))
    flat = np.sort(rng.choice(nlat * nlon, n, replace=False))
    j, i = np.divmod(flat, nlon)
    reports = {
        "latitude": truth.latitudes[j],
        "longitude": truth.longitudes[i],
        "time": _times(rng, n, cycle, half if cfg.time_spread else None),
        "station": np.asarray([f"grid{f}" for f in flat], dtype=str),
        "elevation": np.full(n, np.nan),
    }
    lay = truth.layout
    return _expand(reports, _pairs(lay.upper_air, [100.0 * p for p in lay.levels]) + _pairs(lay.surface, [np.nan]))


def _stations(cfg: StationNetwork, truth: Truth, rng, cycle, half: timedelta) -> dict:
    table = load_stations()
    if cfg.max_stations is not None and cfg.max_stations < len(table):
        seed = int.from_bytes(hashlib.sha256(cfg.label.encode()).digest()[:8], "little")
        table = table.iloc[np.sort(np.random.default_rng(seed).permutation(len(table))[: cfg.max_stations])]
    parts = []
    for kind, rows in (("synop", table[table.surface]), ("temp", table[table.upper_air])):
        variables = cfg.surface_variables if kind == "synop" else cfg.upper_air_variables
        if not variables or rows.empty:
            continue
        spread = (half if cfg.time_spread else None) if kind == "synop" else cfg.sonde_time_jitter
        reports = {
            "latitude": rows.latitude.to_numpy(),
            "longitude": rows.longitude.to_numpy(),
            "time": _times(rng, len(rows), cycle, spread),
            "station": rows.station_id.to_numpy(dtype=str),
            "elevation": rows.elevation_m.to_numpy(dtype=float),
        }
        levels = [np.nan] if kind == "synop" else [100.0 * p for p in cfg.levels_hpa]
        cols = _expand(reports, _pairs(variables, levels))
        cols["obs_type"] = np.full(len(cols["variable"]), kind)
        parts.append(cols)
    return _merge(parts)


def swath_footprints(cfg: SwathNetwork, start: np.datetime64, end: np.datetime64) -> dict:
    """Footprint (lat, lon, time) of every satellite between start and end (see module doc)."""
    period = cfg.orbit_minutes * 60.0
    ground_speed = 2 * np.pi * EARTH_RADIUS_KM / period  # km/s along the track
    step = cfg.along_track_km / ground_speed
    t = np.arange(0.0, float((end - start).astype(np.int64)), step)
    times = start + np.round(t).astype("timedelta64[s]")
    since = (times - ORBIT_EPOCH).astype(np.int64).astype(np.float64)
    inc = np.radians(cfg.inclination_deg)
    offsets = (
        np.linspace(-0.5, 0.5, cfg.across_track) * cfg.swath_width_km / EARTH_RADIUS_KM
        if cfg.across_track > 1
        else np.zeros(1)
    )
    lats, lons, when, sat = [], [], [], []
    for s in range(cfg.satellites):
        u = 2 * np.pi * (since / period + s / cfg.satellites)
        node = 2 * np.pi * since / TROPICAL_YEAR_S  # sun-synchronous precession of the node
        r = np.stack(
            [
                np.cos(node) * np.cos(u) - np.sin(node) * np.sin(u) * np.cos(inc),
                np.sin(node) * np.cos(u) + np.cos(node) * np.sin(u) * np.cos(inc),
                np.sin(u) * np.sin(inc),
            ],
            -1,
        )
        v = np.stack(
            [
                -np.cos(node) * np.sin(u) - np.sin(node) * np.cos(u) * np.cos(inc),
                -np.sin(node) * np.sin(u) + np.cos(node) * np.cos(u) * np.cos(inc),
                np.cos(u) * np.sin(inc),
            ],
            -1,
        )
        c = np.cross(r, v)
        p = r[:, None, :] * np.cos(offsets)[None, :, None] + c[:, None, :] * np.sin(offsets)[None, :, None]
        earth = 2 * np.pi * since / SIDEREAL_DAY_S
        lats.append(np.degrees(np.arcsin(np.clip(p[..., 2], -1, 1))).ravel())
        lons.append(np.mod(np.degrees(np.arctan2(p[..., 1], p[..., 0]) - earth[:, None]), 360.0).ravel())
        when.append(np.repeat(times, len(offsets)))
        sat.append(np.full(p.shape[0] * p.shape[1], s))
    return {
        "latitude": np.concatenate(lats),
        "longitude": np.concatenate(lons),
        "time": np.concatenate(when),
        "satellite": np.concatenate(sat),
    }


def _swath(cfg: SwathNetwork, truth: Truth, rng, cycle, half: timedelta) -> dict:
    w = np.timedelta64(int(half.total_seconds()), "s")
    fp = swath_footprints(cfg, cycle - w + np.timedelta64(1, "s"), cycle + w + np.timedelta64(1, "s"))
    reports = {
        "latitude": fp["latitude"],
        "longitude": fp["longitude"],
        "time": fp["time"],
        "station": np.asarray([f"{cfg.label}{s}" for s in fp["satellite"]], dtype=str),
        "elevation": np.full(len(fp["time"]), np.nan),
    }
    return _expand(reports, _pairs(cfg.variables, [100.0 * p for p in cfg.levels_hpa]))


def _merge(parts: list[dict]) -> dict:
    parts = [p for p in parts if len(p.get("variable", ()))]
    if not parts:
        return {}
    offset, merged = 0, {k: [] for k in parts[0]}
    for p in parts:
        for k in merged:
            merged[k].append(p[k] + offset if k == "report" else p[k])
        offset += int(p["report"].max()) + 1
    return {k: np.concatenate(v) for k, v in merged.items()}


_BUILDERS = {"random_mask": _random_mask, "stations": _stations, "swath": _swath}
_OBS_TYPE = {"random_mask": "grid", "stations": None, "swath": "swath"}


# -- values ------------------------------------------------------------------------------------
def _check_variables(cols: dict, truth: Truth) -> None:
    have = set(truth.layout.upper_air) | set(truth.layout.surface)
    absent = sorted(set(cols["variable"].tolist()) - have)
    if absent:
        raise ObservationError(f"network asks for {absent}, which the truth does not hold; it has {sorted(have)}")


def _observe(cfg: NetworkConfig, cols: dict, truth: Truth, rng) -> SyntheticDraw:
    """Fill values: truth (time-interpolated) + noise + gross errors; missing reports flagged."""
    n = len(cols["variable"])
    error = np.asarray([cfg.error_std(v) for v in cols["variable"]])
    skeleton = ObsBatch.from_columns(**cols, value=np.zeros(n), error=error)
    true = truth.values_at(skeleton)
    noise = rng.standard_normal(n) * error if cfg.noise else np.zeros(n)
    gross = rng.random(n) < cfg.gross_error_rate
    lo, hi = cfg.gross_error_sigmas
    size = rng.choice([-1.0, 1.0], n) * rng.uniform(lo, hi, n) * error
    value = true + noise + np.where(gross, size, 0.0)
    missing_report = rng.random(int(skeleton.report.max()) + 1 if n else 0) < cfg.missing_rate
    missing = missing_report[skeleton.report] if n else np.zeros(0, bool)
    value[missing] = np.nan
    qc = np.where(missing, int(QCFlag.MISSING), int(QCFlag.PASS))
    return SyntheticDraw(skeleton.replace(value=value, qc=qc), true, gross & ~missing)


def draw_network(
    cfg: NetworkConfig,
    truth: Truth,
    cycle,
    half_width: timedelta = timedelta(hours=3),
    experiment: str = "osse",
    seed: int = 0,
) -> SyntheticDraw:
    """One network's synthetic observations for the window cycle ± half_width (see `network_rng`)."""
    cycle = np.datetime64(cycle, "s")
    rng = network_rng(experiment, cycle, cfg, seed)
    cols = _BUILDERS[cfg.kind](cfg, truth, rng, cycle, half_width)
    if not cols:
        empty = ObsBatch.empty()
        return SyntheticDraw(empty, np.zeros(0), np.zeros(0, bool))
    _check_variables(cols, truth)
    n = len(cols["variable"])
    if _OBS_TYPE[cfg.kind] is not None:
        cols["obs_type"] = np.full(n, _OBS_TYPE[cfg.kind])
    cols = {k: v for k, v in cols.items() if k in COLUMNS}
    return _observe(cfg, cols, truth.around(cycle, half_width), rng)


def simulate(config: ObservationsConfig, truth: Truth, cycle, experiment: str = "osse", seed: int = 0) -> SyntheticDraw:
    """Every configured network, concatenated in config order."""
    draws = [draw_network(n, truth, cycle, config.qc.window_half_width, experiment, seed) for n in config.networks]
    batch = ObsBatch.concat([d.batch for d in draws])
    keep = [d for d in draws if len(d.batch)]
    true = np.concatenate([d.truth_values for d in keep]) if keep else np.zeros(0)
    gross = np.concatenate([d.gross for d in keep]) if keep else np.zeros(0, bool)
    return SyntheticDraw(batch, true, gross)
