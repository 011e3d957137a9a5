"""Observation operators H: model grid -> observations, differentiable (torch).

Contract (`ObservationOperator`): `H(state, obs)` takes a channel-stacked state
(*leading, channel, lat, lon) in physical units (the schema's `StateLayout`)
and returns (*leading, n_obs) on the state's device and dtype. Gradients flow
to the state. Rows whose variable has no channel in the state are NaN (QC flags
them `no_operator`); users select passing rows before using H.

`GridInterpolator` is linear in the state, so it is prepared once per batch as a
sparse stencil (8 grid values and weights per observation) and applied as a
gather + weighted sum:
- horizontal: bilinear in (longitude, latitude) on the regular lat/lon grid,
  longitudes periodic (the cell between the last column and 360° + the first
  wraps across the date line);
- poles: poleward of the outermost latitude row, the point lies on the meridian
  great circle through the pole between the outermost row at λ and at λ + 180°;
  we interpolate linearly along that arc (distance ratio (φ - φ_N) / (2 (90° - φ_N))),
  each end bilinear in longitude. The result is continuous at the outermost row
  and at the pole itself equals the mean of two antipodal points;
- vertical: linear in ln p between the two bracketing state levels (upper-air);
  beyond the outermost levels the value is that of the outermost level (QC flags
  such rows `outside_domain`); surface variables read their own channel;
- exact selection: an observation on a grid point and a state level (within
  1e-9 of the cell/level spacing) gets weight exactly 1 on that value, so a
  random grid mask returns the state values bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from align_da_ops.errors import SchemaError
from align_da_ops.grid import LAT, LON, VARIABLES, StateLayout
from align_da_ops.obs.batch import ObsBatch

_SNAP = 1e-9  # fraction of a cell/layer below which a weight snaps to the grid point


@runtime_checkable
class ObservationOperator(Protocol):
    """H(x): (*leading, channel, lat, lon) state -> (*leading, n_obs), differentiable, device of the state."""

    def __call__(self, state: torch.Tensor, obs: ObsBatch) -> torch.Tensor: ...


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedOperator:
    """H for one batch: value_i = sum_k weight[i, k] * state.flatten(-3)[..., index[i, k]]."""

    index: torch.Tensor  # (n_obs, 8) int64 into channel*lat*lon
    weight: torch.Tensor  # (n_obs, 8) float64
    valid: torch.Tensor  # (n_obs,) bool: the state has a channel for this row
    state_shape: tuple[int, int, int]

    def __call__(self, state: torch.Tensor) -> torch.Tensor:
        if tuple(state.shape[-3:]) != self.state_shape:
            raise SchemaError(
                f"state (channel, lat, lon) shape {tuple(state.shape[-3:])} != operator's {self.state_shape}"
            )
        index = self.index.to(state.device)
        weight = self.weight.to(device=state.device, dtype=state.dtype)
        flat = state.flatten(-3)
        picked = flat.index_select(-1, index.reshape(-1)).unflatten(-1, tuple(index.shape))
        out = (picked * weight).sum(-1)
        nan = torch.full((), float("nan"), dtype=state.dtype, device=state.device)
        return torch.where(self.valid.to(state.device), out, nan)

    def __len__(self) -> int:
        return int(self.index.shape[0])


class GridInterpolator:
    """Bilinear-on-the-sphere × log-pressure H for states on a regular lat/lon grid (see module doc)."""

    def __init__(self, layout: StateLayout, latitudes, longitudes):
        lat, lon = np.asarray(latitudes, dtype=np.float64), np.asarray(longitudes, dtype=np.float64)
        if lat.ndim != 1 or len(lat) < 2 or np.any(np.diff(lat) <= 0) or lat[0] < -90 or lat[-1] > 90:
            raise SchemaError(
                f"latitudes must be ascending within [-90, 90] with >= 2 rows; got {lat[:3]}...{lat[-3:]}"
            )
        if lon.ndim != 1 or len(lon) < 2 or np.any(np.diff(lon) <= 0) or lon[-1] - lon[0] >= 360.0:
            raise SchemaError(f"longitudes must be ascending and span < 360°; got {lon[:3]}...{lon[-3:]}")
        self.layout, self.lat, self.lon = layout, lat, lon
        self._lon_ext = np.append(lon, lon[0] + 360.0)
        self._log_p = np.log(np.asarray(layout.levels, dtype=np.float64) * 100.0)

    @classmethod
    def for_dataset(cls, layout: StateLayout, ds) -> GridInterpolator:
        return cls(layout, ds[LAT].values, ds[LON].values)

    @property
    def state_shape(self) -> tuple[int, int, int]:
        return (self.layout.n_channels, len(self.lat), len(self.lon))

    def supported(self, obs: ObsBatch) -> np.ndarray:
        """Rows whose variable has a channel in the state (surface or upper-air as the variable is)."""
        have = set(self.layout.surface) | (set(self.layout.upper_air) if self.layout.levels else set())
        ok = np.isin(obs.variable, sorted(have)) if len(obs) else np.zeros(0, bool)
        upper = np.isin(obs.variable, [v for v in VARIABLES if VARIABLES[v].upper_air])
        return ok & (upper != obs.is_surface)

    def within_levels(self, obs: ObsBatch, tolerance: float = 0.0) -> np.ndarray:
        """Surface rows, and upper-air rows with ln p inside the state's levels ± `tolerance` (in ln p)."""
        if not len(self._log_p):
            return obs.is_surface.copy()
        with np.errstate(invalid="ignore", divide="ignore"):
            lp = np.log(obs.pressure)
        inside = (lp >= self._log_p[0] - tolerance) & (lp <= self._log_p[-1] + tolerance)
        return obs.is_surface | inside

    # -- stencil ----------------------------------------------------------------------------
    def _lon_weights(self, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(i0, i1, s): columns either side of `lon` (periodic) and the weight of i1."""
        nlon = len(self.lon)
        shifted = self.lon[0] + np.mod(lon - self.lon[0], 360.0)
        i0 = np.clip(np.searchsorted(self._lon_ext, shifted, side="right") - 1, 0, nlon - 1)
        s = (shifted - self._lon_ext[i0]) / (self._lon_ext[i0 + 1] - self._lon_ext[i0])
        s = _snap(s)
        return i0, (i0 + 1) % nlon, s

    def _horizontal(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat (lat*lon) indices (n, 4) and weights (n, 4) of the bilinear / across-pole stencil."""
        nlat, nlon = len(self.lat), len(self.lon)
        j0 = np.clip(np.searchsorted(self.lat, lat, side="right") - 1, 0, nlat - 2)
        t = _snap((lat - self.lat[j0]) / (self.lat[j0 + 1] - self.lat[j0]))
        ja, jb, lon_b = j0, j0 + 1, lon
        north, south = lat > self.lat[-1], lat < self.lat[0]
        if north.any() or south.any():
            ja, jb, lon_b, t = ja.copy(), jb.copy(), lon.copy(), t.copy()
            for mask, row in ((north, nlat - 1), (south, 0)):
                edge = self.lat[row]
                ja[mask] = jb[mask] = row
                lon_b[mask] = lon[mask] + 180.0
                t[mask] = np.abs(lat[mask] - edge) / (2.0 * (90.0 - abs(edge)))
        a0, a1, sa = self._lon_weights(lon)
        b0, b1, sb = self._lon_weights(lon_b)
        index = np.stack([ja * nlon + a0, ja * nlon + a1, jb * nlon + b0, jb * nlon + b1], axis=1)
        weight = np.stack([(1 - t) * (1 - sa), (1 - t) * sa, t * (1 - sb), t * sb], axis=1)
        return index, weight

    def _vertical(self, obs: ObsBatch, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(channel below, channel above, weight of above) per row; surface rows use their channel twice."""
        n = len(obs)
        c0, c1, r = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n)
        channels = self.layout.channels
        surface = obs.is_surface
        for name in set(obs.variable[valid].tolist()):
            rows = valid & (obs.variable == name)
            if VARIABLES[name].upper_air:
                lp = np.log(obs.pressure[rows])
                nlev = len(self._log_p)
                k0 = np.clip(np.searchsorted(self._log_p, lp, side="right") - 1, 0, max(nlev - 2, 0))
                k1 = np.minimum(k0 + 1, nlev - 1)
                span = np.where(k1 > k0, self._log_p[k1] - self._log_p[k0], 1.0)
                w = np.clip((lp - self._log_p[k0]) / span, 0.0, 1.0) * (k1 > k0)
                first = channels.index(f"{name}_{self.layout.levels[0]}")
                c0[rows], c1[rows], r[rows] = first + k0, first + k1, _snap(w)
            else:
                c0[rows] = c1[rows] = self.layout.channel_index(name)
        r[surface] = 0.0
        return c0, c1, r

    def prepare(self, obs: ObsBatch, device: torch.device | str = "cpu") -> PreparedOperator:
        """Stencil for `obs` (computed in float64 on the CPU, then moved to `device`)."""
        valid = self.supported(obs)
        hidx, hw = self._horizontal(obs.latitude, obs.longitude)
        c0, c1, r = self._vertical(obs, valid)
        plane = len(self.lat) * len(self.lon)
        index = np.concatenate([c0[:, None] * plane + hidx, c1[:, None] * plane + hidx], axis=1)
        weight = np.concatenate([(1 - r)[:, None] * hw, r[:, None] * hw], axis=1)
        weight[~valid] = 0.0
        index[~valid] = 0
        return PreparedOperator(
            torch.as_tensor(index, dtype=torch.int64, device=device),
            torch.as_tensor(weight, dtype=torch.float64, device=device),
            torch.as_tensor(valid, device=device),
            self.state_shape,
        )

    def __call__(self, state: torch.Tensor, obs: ObsBatch) -> torch.Tensor:
        return self.prepare(obs, state.device)(state)


def _snap(w: np.ndarray) -> np.ndarray:
    """Weights within `_SNAP` of 0 or 1 become exactly 0 or 1 (exact selection on grid points)."""
    w = np.where(np.abs(w) < _SNAP, 0.0, w)
    return np.where(np.abs(1.0 - w) < _SNAP, 1.0, w)
