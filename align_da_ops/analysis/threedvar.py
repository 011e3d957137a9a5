"""3D-Var with a static spectral B, minimised by conjugate gradients in control-variable space.

Incremental 3D-Var (Lorenc 1986; Courtier et al. 1998) with the control-variable
transform x = x_b + B^{1/2} v (Courtier et al. 1998, QJRMS 124):

    J(v) = ½ vᵀv + ½ (d − H B^{1/2} v)ᵀ R⁻¹ (d − H B^{1/2} v),   d = y − H(x_b),

R = diag(σ_o²) from `obs.error`. H is linear, so the minimiser solves the normal
equations (I + Uᵀ Hᵀ R⁻¹ H U) v = Uᵀ Hᵀ R⁻¹ d (U = B^{1/2}), a symmetric
positive-definite system with eigenvalues ≥ 1, by conjugate gradients
(Hestenes & Stiefel 1952). At convergence x_a is the BLUE
x_b + B Hᵀ (H B Hᵀ + R)⁻¹ d. All work happens on the background's device, in
the configured precision; the analysis is returned in the background's dtype.

Hᵀ: a `PreparedOperator` (sparse stencil) gets an exact scatter-add adjoint; any
other linear operator gets its adjoint from autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from align_da_ops.analysis.base import AnalysisResult
from align_da_ops.analysis.covariance import SpectralCovariance, SpectralOperator, channel_variable_level
from align_da_ops.errors import ObservationError, SchemaError
from align_da_ops.grid import SURFACE, UPPER_AIR
from align_da_ops.obs.batch import ObsBatch

# Background-error std per variable (schema units) for the parametric B: typical
# short-range forecast errors of global NWP (Bouttier & Courtier 2002, ECMWF lecture
# notes: ~10 m in 500-hPa height, ~1 K, ~2 m/s). Tune with NMC statistics.
DEFAULT_SIGMA_B: dict[str, float] = {
    "geopotential": 100.0,
    "temperature": 1.0,
    "u_component_of_wind": 2.0,
    "v_component_of_wind": 2.0,
    "specific_humidity": 1.0e-3,
    "10m_u_component_of_wind": 1.5,
    "10m_v_component_of_wind": 1.5,
    "2m_temperature": 1.0,
    "mean_sea_level_pressure": 100.0,
    "surface_pressure": 100.0,
}


class ThreeDVarConfig(BaseModel):
    """3D-Var analysis settings (no torch needed to validate)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["threedvar"] = "threedvar"
    covariance: Path | None = Field(
        default=None,
        description="B file (.npz from `SpectralCovariance.save`, e.g. an NMC estimate). "
        "None: the parametric Gaussian B from sigma_b / length_scale_km / vertical_length_lnp.",
    )
    sigma_b: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_SIGMA_B),
        description="Parametric B: background-error std per variable name or per channel name "
        "('<variable>_<level>' overrides the variable), schema units.",
    )
    length_scale_km: float = Field(
        default=800.0,
        gt=0,
        description="Parametric B: Gaussian horizontal correlation length L (km), corr ≈ exp(−d²/2L²). "
        "Several hundred km in global NWP (Hollingsworth & Lönnberg 1986); 800 km resolves on T21 (~600 km grid).",
    )
    vertical_length_lnp: float | None = Field(
        default=None,
        gt=0,
        description="Parametric B: vertical correlation length in ln p between levels of one variable; "
        "None: levels uncorrelated.",
    )
    truncation: int | None = Field(
        default=None, ge=0, description="Parametric B: spectral truncation T; None: the largest the grid allows."
    )
    b_scale: float = Field(default=1.0, gt=0, description="Multiplies B (variance inflation; NMC tuning factor).")
    length_factor: float = Field(
        default=1.0, gt=0,
        description="Multiplies B's horizontal correlation lengths (spectrum stretched in wavenumber, variances kept; "
        "`SpectralCovariance.length_scaled`); tuned on the validation period with b_scale.",
    )
    max_iterations: int = Field(default=200, ge=1, description="Conjugate-gradient iteration cap.")
    tolerance: float = Field(
        default=1e-6, gt=0, lt=1, description="Stop when the gradient norm falls below tolerance × its initial value."
    )
    precision: Literal["float32", "float64"] = Field(
        default="float64", description="Floating-point precision of the minimisation."
    )

    @field_validator("sigma_b")
    @classmethod
    def _sigma_keys(cls, value: dict[str, float]) -> dict[str, float]:
        upper, surface = UPPER_AIR, SURFACE
        for key, sigma in value.items():
            variable, _, level = key.rpartition("_")
            if key not in upper + surface and not (variable in upper and level.isdigit()):
                raise ValueError(
                    f"sigma_b key {key!r} is neither a variable {upper + surface} nor '<upper-air variable>_<hPa>'"
                )
            if not sigma >= 0:
                raise ValueError(f"sigma_b[{key!r}] must be >= 0; got {sigma}")
        return value


def sigma_for_channels(channels: Sequence[str], sigma_b: dict[str, float]) -> np.ndarray:
    """(C,) σ_b per channel: the channel's own entry, else its variable's; error naming what is missing."""
    out = []
    for name in channels:
        variable, _ = channel_variable_level(name)
        value = sigma_b.get(name, sigma_b.get(variable))
        if value is None:
            raise ValueError(
                f"sigma_b has no entry for channel {name!r} or variable {variable!r}; keys: {sorted(sigma_b)}"
            )
        if not value >= 0:
            raise ValueError(f"sigma_b[{name!r}] must be >= 0; got {value}")
        out.append(float(value))
    return np.asarray(out)


def covariance_from_config(cfg: ThreeDVarConfig, channels: Sequence[str], latitudes, longitudes) -> SpectralCovariance:
    """Load `cfg.covariance` (checked against channels and grid) or build the parametric B; apply
    `length_factor` and `b_scale`."""
    if cfg.covariance is not None:
        cov = SpectralCovariance.load(cfg.covariance)
        if cov.channels != tuple(channels):
            raise SchemaError(f"B file {cfg.covariance} has channels {cov.channels}; the state has {tuple(channels)}")
        lat, lon = np.asarray(latitudes, np.float64), np.asarray(longitudes, np.float64)
        same = cov.latitudes.shape == lat.shape and cov.longitudes.shape == lon.shape
        if not (same and np.allclose(cov.latitudes, lat, atol=1e-6) and np.allclose(cov.longitudes, lon, atol=1e-6)):
            raise SchemaError(f"B file {cfg.covariance} is on a {len(cov.latitudes)}x{len(cov.longitudes)} grid "
                              f"that differs from the state's {len(lat)}x{len(lon)}")
    else:
        cov = SpectralCovariance.gaussian(
            channels, latitudes, longitudes, sigma_for_channels(channels, cfg.sigma_b),
            cfg.length_scale_km * 1e3, cfg.truncation, cfg.vertical_length_lnp,
        )
    cov = cov.length_scaled(cfg.length_factor)
    return cov if cfg.b_scale == 1.0 else cov.scaled(cfg.b_scale)


# -- conjugate gradients ---------------------------------------------------------------------------
def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor, max_iterations: int, tolerance: float
) -> tuple[torch.Tensor, int, float]:
    """Solve A x = rhs (A symmetric positive definite) from x = 0; returns (x, iterations, |r|/|rhs|)."""
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    rr = float((r * r).sum())
    norm0 = math.sqrt(rr)
    if norm0 == 0.0:
        return x, 0, 0.0
    p = r.clone()
    iterations = 0
    while iterations < max_iterations and math.sqrt(rr) > tolerance * norm0:
        ap = matvec(p)
        alpha = rr / float((p * ap).sum())
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = float((r * r).sum())
        p = r + (rr_new / rr) * p
        rr = rr_new
        iterations += 1
    return x, iterations, math.sqrt(rr) / norm0


def operator_adjoint(operator, state_shape: tuple[int, ...], dtype, device) -> Callable[[torch.Tensor], torch.Tensor]:
    """Hᵀ: (n_obs,) -> (C, lat, lon). Exact scatter-add for stencil operators, autograd otherwise."""
    index, weight = getattr(operator, "index", None), getattr(operator, "weight", None)
    if isinstance(index, torch.Tensor) and isinstance(weight, torch.Tensor):
        idx = index.to(device).reshape(-1)
        w = weight.to(device=device, dtype=dtype)
        size = int(np.prod(state_shape))

        def adjoint(r: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(size, dtype=dtype, device=device)
            return out.index_add_(0, idx, (w * r[:, None]).reshape(-1)).reshape(state_shape)

        return adjoint

    def adjoint_autograd(r: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.zeros(state_shape, dtype=dtype, device=device, requires_grad=True)
            (g,) = torch.autograd.grad(operator(x), x, grad_outputs=r.clone())
        return g

    return adjoint_autograd


# -- the method ----------------------------------------------------------------------------------------
class ThreeDVar:
    """`AnalysisMethod`: 3D-Var with a static `SpectralCovariance` (see module doc)."""

    name = "threedvar"

    def __init__(self, covariance: SpectralCovariance, config: ThreeDVarConfig | None = None):
        self.covariance = covariance
        self.config = config or ThreeDVarConfig()
        self.covariance_hash = covariance.content_hash()
        self._operators: dict[tuple[torch.device, torch.dtype], SpectralOperator] = {}

    @classmethod
    def from_config(cls, cfg: ThreeDVarConfig, channels: Sequence[str], latitudes, longitudes) -> "ThreeDVar":
        return cls(covariance_from_config(cfg, channels, latitudes, longitudes), cfg)

    def provenance(self) -> dict[str, str]:
        """What the archive records about this method: B content hash and the resolved config."""
        return {"covariance_hash": self.covariance_hash, "config": self.config.model_dump_json()}

    def _b(self, device: torch.device, dtype: torch.dtype) -> SpectralOperator:
        key = (device, dtype)
        if key not in self._operators:
            self._operators[key] = self.covariance.operator(device, dtype)
        return self._operators[key]

    def analyse(self, background: torch.Tensor, obs: ObsBatch, operator, generators=None) -> AnalysisResult:
        if tuple(background.shape) != self.covariance.grid_shape:
            raise SchemaError(
                f"background shape {tuple(background.shape)} != B's (channel, lat, lon) {self.covariance.grid_shape}"
            )
        if not torch.isfinite(background).all():
            raise ValueError(f"background has {int((~torch.isfinite(background)).sum())} NaN/Inf values")
        if len(obs) == 0:
            return AnalysisResult(analysis=background.clone(), diagnostics=_empty_diagnostics())
        with torch.no_grad():
            return self._solve(background, obs, operator)

    def _solve(self, background: torch.Tensor, obs: ObsBatch, operator) -> AnalysisResult:
        device = background.device
        dtype = torch.float64 if self.config.precision == "float64" else torch.float32
        b = self._b(device, dtype)
        xb = background.to(dtype)
        y, rinv = _observations(obs, dtype, device)
        hxb = operator(xb)
        if hxb.shape != y.shape or not torch.isfinite(hxb).all():
            raise ObservationError(
                f"H(x_b) has shape {tuple(hxb.shape)} with {int((~torch.isfinite(hxb)).sum())} non-finite values; "
                f"expected ({len(obs)},) finite (pass only QC-passed, supported rows)"
            )
        d = y - hxb
        h_adj = operator_adjoint(operator, tuple(xb.shape), dtype, device)

        def hessian(v: torch.Tensor) -> torch.Tensor:
            return v + b.sqrt_adjoint(h_adj(rinv * operator(b.sqrt(v))))

        rhs = b.sqrt_adjoint(h_adj(rinv * d))
        v, iterations, reduction = conjugate_gradient(hessian, rhs, self.config.max_iterations, self.config.tolerance)
        xa = xb + b.sqrt(v)
        da = y - operator(xa)
        n = len(obs)
        jo_b, jo_a = float((rinv * d * d).sum()), float((rinv * da * da).sum())
        diagnostics = {
            "n_obs": float(n),
            "iterations": float(iterations),
            "converged": float(reduction <= self.config.tolerance),
            "grad_norm_reduction": reduction,
            "j_initial": 0.5 * jo_b,
            "j_final": 0.5 * float((v * v).sum()) + 0.5 * jo_a,
            "jo_per_n_background": jo_b / n,
            "jo_per_n_analysis": jo_a / n,
        }
        return AnalysisResult(analysis=xa.to(background.dtype), diagnostics=diagnostics)


def _observations(obs: ObsBatch, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """y and R⁻¹ = 1/σ_o² as tensors; errors name the offending rows."""
    if not obs.passed.all():
        raise ObservationError(f"{int((~obs.passed).sum())} observations have not passed QC; select passing rows first")
    bad = ~np.isfinite(obs.value) | ~(np.isfinite(obs.error) & (obs.error > 0))
    if bad.any():
        raise ObservationError(
            f"observations need finite values and errors > 0; rows {np.flatnonzero(bad)[:10].tolist()} "
            f"have value {obs.value[bad][:3].tolist()}, error {obs.error[bad][:3].tolist()}"
        )
    y = torch.as_tensor(np.array(obs.value), dtype=dtype, device=device)
    rinv = torch.as_tensor(1.0 / obs.error**2, dtype=dtype, device=device)
    return y, rinv


def _empty_diagnostics() -> dict[str, float]:
    nan = float("nan")
    return {"n_obs": 0.0, "iterations": 0.0, "converged": 1.0, "grad_norm_reduction": 0.0, "j_initial": 0.0,
            "j_final": 0.0, "jo_per_n_background": nan, "jo_per_n_analysis": nan}
