"""Covariance localisation: the Gaspari–Cohn taper and the distances it is applied to.

`gaspari_cohn(r)` is the compactly supported fifth-order piecewise rational function of
Gaspari & Cohn (1999, QJRMS 125, eq. 4.10) of r = distance / c: 1 at r = 0, a correlation
function on the sphere, exactly 0 for r ≥ 2 (c is the half-width; the support radius is 2c).
"""

from __future__ import annotations

import numpy as np
import torch

EARTH_RADIUS_KM = 6371.0
SURFACE_PRESSURE_HPA = 1013.25  # vertical position of surface channels and of observations without a pressure


def gaspari_cohn(r: torch.Tensor) -> torch.Tensor:
    """Gaspari–Cohn taper of |r| (distance over half-width): 1 at 0, continuous, 0 from 2 on.

    The polynomials are evaluated on the support only (most entries of a global distance matrix are 0)."""
    r = r.abs()
    out = torch.zeros_like(r)
    inner, outer = r <= 1.0, (r > 1.0) & (r < 2.0)
    a = r[inner]
    out[inner] = ((-0.25 * a + 0.5) * a + 0.625) * a**3 - (5.0 / 3.0) * a**2 + 1.0
    b = r[outer]
    out[outer] = ((((b / 12.0 - 0.5) * b + 0.625) * b + 5.0 / 3.0) * b - 5.0) * b + 4.0 - 2.0 / (3.0 * b)
    return out


def _unit_vectors(lat, lon) -> torch.Tensor:
    lat, lon = (torch.deg2rad(torch.tensor(np.array(v, dtype=np.float64))) for v in (lat, lon))
    return torch.stack([torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon), torch.sin(lat)], -1)


def great_circle_km(lat1, lon1, lat2, lon2) -> torch.Tensor:
    """Great-circle distance (km) between every point 1 (rows) and every point 2 (columns), from the chord
    between unit vectors (one matrix product; accurate to ~1e-8 km at short range)."""
    u, v = _unit_vectors(lat1, lon1), _unit_vectors(lat2, lon2)
    chord2 = ((u * u).sum(-1)[:, None] + (v * v).sum(-1)[None, :] - 2.0 * (u @ v.T)).clamp(0.0, 4.0)
    return 2.0 * EARTH_RADIUS_KM * torch.asin(torch.sqrt(chord2) / 2.0)


def log_pressure(pressure_pa: np.ndarray) -> np.ndarray:
    """ln(p / hPa) of observations; rows without a pressure (surface) sit at `SURFACE_PRESSURE_HPA`."""
    p = np.asarray(pressure_pa, dtype=np.float64) / 100.0
    return np.log(np.where(np.isfinite(p) & (p > 0), p, SURFACE_PRESSURE_HPA))
