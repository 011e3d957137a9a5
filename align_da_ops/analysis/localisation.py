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
    """Gaspari–Cohn taper of |r| (distance over half-width): 1 at 0, continuous, 0 from 2 on."""
    r = r.abs()
    inner = ((-0.25 * r + 0.5) * r + 0.625) * r**3 - (5.0 / 3.0) * r**2 + 1.0
    safe = torch.where(r > 0, r, torch.ones_like(r))
    outer = ((((r / 12.0 - 0.5) * r + 0.625) * r + 5.0 / 3.0) * r - 5.0) * r + 4.0 - 2.0 / (3.0 * safe)
    return torch.where(r <= 1.0, inner, torch.where(r < 2.0, outer, torch.zeros_like(r)))


def great_circle_km(lat1, lon1, lat2, lon2) -> torch.Tensor:
    """Great-circle distance (km) between every point 1 (rows) and every point 2 (columns); haversine."""
    lat1, lon1, lat2, lon2 = (torch.deg2rad(torch.tensor(np.array(v, dtype=np.float64))) for v in (lat1, lon1, lat2, lon2))
    dlat = lat2[None, :] - lat1[:, None]
    dlon = lon2[None, :] - lon1[:, None]
    h = torch.sin(dlat / 2) ** 2 + torch.cos(lat1)[:, None] * torch.cos(lat2)[None, :] * torch.sin(dlon / 2) ** 2
    return 2.0 * EARTH_RADIUS_KM * torch.asin(torch.sqrt(h.clamp(0.0, 1.0)))


def log_pressure(pressure_pa: np.ndarray) -> np.ndarray:
    """ln(p / hPa) of observations; rows without a pressure (surface) sit at `SURFACE_PRESSURE_HPA`."""
    p = np.asarray(pressure_pa, dtype=np.float64) / 100.0
    return np.log(np.where(np.isfinite(p) & (p > 0), p, SURFACE_PRESSURE_HPA))
