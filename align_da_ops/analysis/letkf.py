"""LETKF: the local ensemble transform Kalman filter (Hunt, Kostelich & Szunyogh 2007, Physica D 230).

With k background members, perturbations X_b = x_b^i − x̄_b (state) and Y_b = H(x_b^i) − ȳ_b
(observation space), each analysis point (grid column × vertical slot: every pressure level and the
surface) solves, in ensemble space,

    P̃_a = [ (k−1) I / ρ + Y_bᵀ (R⁻¹ ∘ ℓ) Y_b ]⁻¹,      w̄ = P̃_a Y_bᵀ (R⁻¹ ∘ ℓ) (y − ȳ_b),
    W_a = [ (k−1) P̃_a ]^{1/2}  (symmetric square root),   x_a^i = x̄_b + X_b (w̄ + W_a[:, i]),

and updates every channel at that slot (multivariate through the ensemble covariances). ℓ is the
observation-space localisation (R-localisation): Gaspari–Cohn in great-circle distance (half-width
`horizontal_length_km`, zero beyond twice it) times Gaspari–Cohn in |ln p_obs − ln p_slot| (half-width
`vertical_length_lnp`). ρ is multiplicative prior inflation (Hunt et al. §2.3). After the update,
relaxation to prior spread (RTPS, Whitaker & Hamill 2012) sets σ_a ← σ_a + α (σ_b − σ_a) per channel
and grid point. Without localisation and with ρ = 1, α = 0 this is the ETKF: the analysis mean and
covariance equal the Kalman filter with the sample covariance X_b X_bᵀ/(k−1).

Batched in torch on the members' device: observations are grouped by pressure (the vertical taper
depends on the class only), so the k×k matrices of all slots of a chunk of columns come from one dense
product per pressure class, and all k×k problems of a chunk are solved by one `torch.linalg.eigh`.
Deterministic: the generators are not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from align_da_ops.analysis.base import AnalysisResult
from align_da_ops.analysis.covariance import channel_variable_level
from align_da_ops.analysis.localisation import SURFACE_PRESSURE_HPA, gaspari_cohn, great_circle_km, log_pressure
from align_da_ops.config import Frozen
from align_da_ops.errors import ObservationError, SchemaError
from align_da_ops.obs.batch import ObsBatch


class LETKFConfig(Frozen):
    """LETKF settings (no torch needed to validate)."""

    kind: Literal["letkf"] = "letkf"
    members: int = Field(default=20, ge=2, le=512, description="Ensemble size k (each member cycled by the forecast model).")
    horizontal_length_km: float | None = Field(
        default=2000.0, gt=0, le=20000,
        description="Gaspari–Cohn half-width (km): an observation's weight is 0 beyond twice this distance. "
        "None: no horizontal localisation.",
    )
    vertical_length_lnp: float | None = Field(
        default=1.0, gt=0, le=50,
        description="Gaspari–Cohn half-width in ln p between an observation and a level (surface at 1013.25 hPa). "
        "None: no vertical localisation.",
    )
    rtps: float = Field(default=0.5, ge=0, le=1, description="Relaxation to prior spread α (Whitaker & Hamill 2012); 0: off.")
    inflation: float = Field(default=1.0, ge=1, le=10, description="Multiplicative prior inflation ρ; 1: off.")
    column_chunk: int = Field(default=256, ge=1, le=1_000_000, description="Grid columns solved per batch (memory bound).")
    precision: Literal["float32", "float64"] = Field(default="float64", description="Precision of the ensemble-space algebra.")


class LETKF:
    """`EnsembleAnalysisMethod`: updates a cycled background ensemble (see module doc)."""

    name = "letkf"

    def __init__(self, config: LETKFConfig, channels: Sequence[str], levels: Sequence[int], latitudes, longitudes):
        self.config = config
        self.members = config.members
        self.channels = tuple(channels)
        slot_hpa = [float(p) for p in levels] + [SURFACE_PRESSURE_HPA]
        self.slot_lnp = torch.log(torch.tensor(slot_hpa, dtype=torch.float64))
        self.channel_slot = torch.tensor([_slot(name, list(levels)) for name in self.channels], dtype=torch.long)
        lat, lon = np.meshgrid(np.asarray(latitudes, np.float64), np.asarray(longitudes, np.float64), indexing="ij")
        self.column_lat, self.column_lon = lat.ravel(), lon.ravel()

    def provenance(self) -> dict[str, str]:
        return {"config": self.config.model_dump_json()}

    def analyse_members(self, members: torch.Tensor, obs: ObsBatch, operator, generators=None) -> AnalysisResult:
        """members: (k, channel, lat, lon) background ensemble -> analysis mean and members (same dtype)."""
        k = self.config.members
        if members.ndim != 4 or members.shape[0] != k or members.shape[1] != len(self.channels) \
                or members.shape[2] * members.shape[3] != len(self.column_lat):
            raise SchemaError(f"background ensemble shape {tuple(members.shape)} != ({k}, {len(self.channels)}, lat, lon)")
        if not torch.isfinite(members).all():
            raise ValueError(f"background ensemble has {int((~torch.isfinite(members)).sum())} NaN/Inf values")
        dtype = torch.float64 if self.config.precision == "float64" else torch.float32
        with torch.no_grad():
            xa, diagnostics = self._update(members.to(dtype), obs, operator)
        xa = xa.to(members.dtype)
        return AnalysisResult(analysis=xa.mean(0), members=xa, diagnostics=diagnostics)

    def _update(self, xb: torch.Tensor, obs: ObsBatch, operator) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, k = self.config, xb.shape[0]
        device, dtype = xb.device, xb.dtype
        mean = xb.mean(0)
        xb_pert = (xb - mean).flatten(2)  # (k, C, P)
        sigma_b = xb_pert.std(0)
        if len(obs) == 0:
            return xb.clone(), {"n_obs": 0.0, "local_obs_mean": 0.0, "spread_background": float(sigma_b.mean()),
                                "spread_analysis": float(sigma_b.mean())}
        y, error = _observations(obs)
        hx = operator(xb)
        if hx.shape != (k, len(obs)) or not torch.isfinite(hx).all():
            raise ObservationError(f"H(x_b) of the members has shape {tuple(hx.shape)} with non-finite values; "
                                   f"expected ({k}, {len(obs)}) finite (pass only QC-passed, supported rows)")
        y_mean = hx.mean(0)
        yb = (hx - y_mean).T.contiguous()  # (n, k)
        d = torch.tensor(y, dtype=dtype, device=device) - y_mean
        rinv = torch.as_tensor(1.0 / error**2, dtype=dtype, device=device)
        # Observations in classes of equal ln p (sonde and model levels, the surface): the vertical taper is a
        # function of the class, so A[c, s] = Σ_q ℓ_v[s, q] Σ_{m ∈ q} ℓ_h[c, m] R⁻¹_m y_m y_mᵀ costs one dense
        # product per class instead of one per slot.
        order, bounds, class_lnp = _pressure_classes(log_pressure(obs.pressure))
        order_t = torch.as_tensor(order, device=device)
        yb, d, rinv = yb[order_t], d[order_t], rinv[order_t]
        lat, lon = np.asarray(obs.latitude)[order], np.asarray(obs.longitude)[order]
        outer = (rinv[:, None, None] * yb[:, :, None] * yb[:, None, :]).flatten(1)  # (n, k*k)
        innov = (rinv * d)[:, None] * yb  # (n, k)
        if cfg.vertical_length_lnp is None:
            vertical = torch.ones(len(self.slot_lnp), len(class_lnp), dtype=dtype, device=device)
        else:
            diff = torch.as_tensor(class_lnp)[None, :] - self.slot_lnp[:, None]
            vertical = gaspari_cohn(diff / cfg.vertical_length_lnp).to(device, dtype)  # (S, Q)
        slot = self.channel_slot.to(device)
        identity = torch.eye(k, dtype=dtype, device=device) * ((k - 1) / cfg.inflation)
        out = torch.empty_like(xb_pert)
        local_total = 0.0
        n_columns = len(self.column_lat)
        for start in range(0, n_columns, cfg.column_chunk):
            cols = slice(start, min(start + cfg.column_chunk, n_columns))
            horizontal = self._horizontal(cols, lat, lon, device, dtype)  # (c, n)
            local_total += float(horizontal.sum())
            classes = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
            a = vertical @ torch.stack([horizontal[:, q] @ outer[q] for q in classes], 1)  # (c, S, k*k)
            a = a.unflatten(-1, (k, k)) + identity
            rhs = vertical @ torch.stack([horizontal[:, q] @ innov[q] for q in classes], 1)  # (c, S, k)
            weight = torch.stack([horizontal[:, q].sum(1) for q in classes], 1) @ vertical.T  # (c, S)
            w_mean, w_pert = _transforms(a, rhs, weight > 0, k, cfg.inflation)
            transform = (w_pert + w_mean)[:, slot]  # (c, C, k, k): column j = weights of member j
            local = xb_pert[:, :, cols].permute(2, 1, 0)[..., None, :]  # (c, C, 1, k)
            out[:, :, cols] = (local @ transform)[..., 0, :].permute(2, 1, 0)
        analysis_pert = out - out.mean(0)  # exact zero mean (w_pert has it analytically)
        increment = out.mean(0)
        sigma_a = analysis_pert.std(0)
        if cfg.rtps > 0:
            factor = torch.where(sigma_a > 0, 1.0 + cfg.rtps * (sigma_b - sigma_a) / torch.where(sigma_a > 0, sigma_a, 1.0), 1.0)
            analysis_pert = analysis_pert * factor
        xa = (mean.flatten(1) + increment)[None] + analysis_pert
        diagnostics = {
            "n_obs": float(len(obs)),
            "local_obs_mean": local_total / n_columns,
            "spread_background": float(sigma_b.mean()),
            "spread_analysis": float(analysis_pert.std(0).mean()),
            "omb_rms": float(torch.sqrt((d**2).mean())),
        }
        return xa.reshape(xb.shape), diagnostics

    def _horizontal(self, cols: slice, lat: np.ndarray, lon: np.ndarray, device, dtype) -> torch.Tensor:
        """Horizontal taper (c, n) between the chunk's columns and every observation."""
        length = self.config.horizontal_length_km
        if length is None:
            return torch.ones(cols.stop - cols.start, len(lat), dtype=dtype, device=device)
        dist = great_circle_km(self.column_lat[cols], self.column_lon[cols], lat, lon)
        return gaspari_cohn(dist / length).to(device, dtype)


def _pressure_classes(lnp: np.ndarray, max_classes: int = 128) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Observation order grouping equal ln p, class boundaries in that order, and each class's ln p.

    Exact for observations on a few pressures (levels, the surface); with more than `max_classes`
    distinct pressures (continuous aircraft reports), ln p is rounded to 0.01 first (a taper error
    below 1 % of its slope times 0.005 half-widths)."""
    values = np.unique(lnp)
    if len(values) > max_classes:
        lnp = np.round(lnp, 2)
    values, inverse = np.unique(lnp, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(values) + 1)).tolist()
    return order, bounds, values


def _transforms(a: torch.Tensor, rhs: torch.Tensor, observed: torch.Tensor, k: int, inflation: float):
    """Mean weights w̄ (c, S, k, 1) and symmetric square-root perturbation weights (c, S, k, k); points
    without any observation weight (observed False) get w̄ = 0 and W = √ρ I without an eigen-solve."""
    w_mean = torch.zeros(*a.shape[:-1], 1, dtype=a.dtype, device=a.device)
    w_pert = torch.eye(k, dtype=a.dtype, device=a.device).expand_as(a) * inflation**0.5
    w_pert = w_pert.clone()
    if observed.any():
        lam, vec = torch.linalg.eigh(a[observed])
        w_mean[observed] = vec @ ((vec.transpose(-1, -2) @ rhs[observed][..., None]) / lam[..., None])
        w_pert[observed] = (vec * torch.sqrt((k - 1) / lam)[..., None, :]) @ vec.transpose(-1, -2)
    return w_mean, w_pert


def _slot(channel: str, levels: list[int]) -> int:
    """Vertical slot of a channel: the index of its pressure level; surface channels after the last level."""
    _, level = channel_variable_level(channel)
    return len(levels) if level is None else levels.index(level)


def _observations(obs: ObsBatch) -> tuple[np.ndarray, np.ndarray]:
    bad = ~np.isfinite(obs.value) | ~(np.isfinite(obs.error) & (obs.error > 0))
    if not obs.passed.all() or bad.any():
        raise ObservationError(
            f"LETKF needs QC-passed rows with finite values and errors > 0; rows {np.flatnonzero(bad | ~obs.passed)[:10].tolist()} are not"
        )
    return np.array(obs.value, np.float64), np.array(obs.error, np.float64)
